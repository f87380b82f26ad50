//! From a connection string and the environment to the settings of a connection, the way
//! libpq does it: the string wins, the `PG*` variables fill in what it leaves out, and
//! libpq's defaults fill in the rest.
//!
//! [`resolve`] is pure: everything it reads from outside is in the [`Environment`] it is
//! given, so tests can hand it any environment they like.

use std::collections::BTreeMap;
use std::fmt;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::str::FromStr;

use super::ConnectError;
use super::conninfo::{self, Conninfo, KEYWORDS, Use, keyword};
use super::mask::{Shown, mask_password};

/// libpq's port (the `port` keyword's default).
const DEFAULT_PORT: u16 = 5432;

/// Where libpq looks for a local server's socket when no host is given, in order.
pub const DEFAULT_SOCKET_DIRS: &[&str] = &["/var/run/postgresql", "/tmp"];

/// What connecting reads from outside the connection string: environment variables, the
/// OS user's name, and which server sockets exist in the default socket folders.
#[derive(Debug, Clone, Default)]
pub struct Environment {
    vars: BTreeMap<String, String>,
    os_user: Option<String>,
    sockets: Vec<PathBuf>,
}

impl Environment {
    /// This process's environment, user and default sockets.
    pub fn from_process() -> Environment {
        let vars = std::env::vars_os()
            .filter_map(|(key, value)| Some((key.into_string().ok()?, value.into_string().ok()?)))
            .collect();
        let os_user = nix::unistd::User::from_uid(nix::unistd::geteuid())
            .ok()
            .flatten()
            .map(|user| user.name);
        let sockets = DEFAULT_SOCKET_DIRS
            .iter()
            .flat_map(|dir| std::fs::read_dir(dir).into_iter().flatten().flatten())
            .filter(|entry| {
                let name = entry.file_name();
                let name = name.to_string_lossy();
                name.starts_with(".s.PGSQL.") && !name.ends_with(".lock")
            })
            .map(|entry| entry.path())
            .collect();
        let mut env = Environment {
            vars,
            os_user: None,
            sockets,
        };
        env.os_user = os_user.or_else(|| env.var("USER").map(str::to_owned));
        if env.var("HOME").is_none()
            && let Ok(Some(user)) = nix::unistd::User::from_uid(nix::unistd::geteuid())
        {
            env.vars
                .insert("HOME".to_owned(), user.dir.to_string_lossy().into_owned());
        }
        env
    }

    /// An environment with just these variables, no known OS user and no local sockets.
    pub fn from_vars<I, K, V>(vars: I) -> Environment
    where
        I: IntoIterator<Item = (K, V)>,
        K: Into<String>,
        V: Into<String>,
    {
        Environment {
            vars: vars
                .into_iter()
                .map(|(k, v)| (k.into(), v.into()))
                .collect(),
            os_user: None,
            sockets: Vec::new(),
        }
    }

    /// Sets the OS user's name, the default role.
    #[must_use]
    pub fn with_os_user(mut self, user: impl Into<String>) -> Environment {
        self.os_user = Some(user.into());
        self
    }

    /// Records a server socket file, such as `/var/run/postgresql/.s.PGSQL.5432`.
    #[must_use]
    pub fn with_socket(mut self, socket: impl Into<PathBuf>) -> Environment {
        self.sockets.push(socket.into());
        self
    }

    /// A variable's value; an empty value counts as unset.
    pub fn var(&self, name: &str) -> Option<&str> {
        self.vars
            .get(name)
            .map(String::as_str)
            .filter(|v| !v.is_empty())
    }

    /// The connection string to use: the one given (`--database-url` or `DATABASE_URL`), or
    /// an empty one meaning "from the `PG*` variables" when any variable that names a server,
    /// a role or how to reach it is set.
    pub fn database_url(&self, given: Option<&str>) -> Result<String, ConnectError> {
        match given {
            Some(url) => Ok(url.to_owned()),
            None if KEYWORDS
                .iter()
                .filter(|keyword| keyword.names_target)
                .filter_map(|keyword| keyword.env)
                .any(|name| self.var(name).is_some()) =>
            {
                Ok(String::new())
            }
            None => Err(ConnectError::MissingUrl),
        }
    }
}

/// libpq's `sslmode`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SslMode {
    /// No TLS.
    Disable,
    /// Plain first; TLS if the server turns a plain connection down.
    Allow,
    /// TLS if the server offers it, else plain (the default).
    Prefer,
    /// TLS; the certificate is checked only against a root certificate at hand.
    Require,
    /// TLS, and a certificate chain to a trusted root.
    VerifyCa,
    /// TLS, a certificate chain to a trusted root, and the host name.
    VerifyFull,
}

impl SslMode {
    fn as_str(self) -> &'static str {
        match self {
            SslMode::Disable => "disable",
            SslMode::Allow => "allow",
            SslMode::Prefer => "prefer",
            SslMode::Require => "require",
            SslMode::VerifyCa => "verify-ca",
            SslMode::VerifyFull => "verify-full",
        }
    }
}

impl fmt::Display for SslMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for SslMode {
    type Err = String;

    fn from_str(text: &str) -> Result<SslMode, String> {
        Ok(match text {
            "disable" => SslMode::Disable,
            "allow" => SslMode::Allow,
            "prefer" => SslMode::Prefer,
            "require" => SslMode::Require,
            "verify-ca" => SslMode::VerifyCa,
            "verify-full" => SslMode::VerifyFull,
            _ => {
                return Err(format!(
                    "invalid sslmode \"{text}\": use disable, allow, prefer, require, verify-ca \
                     or verify-full"
                ));
            }
        })
    }
}

/// Where trusted root certificates come from (`sslrootcert`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RootCert {
    /// A PEM file of one or more certificates.
    File(PathBuf),
    /// `sslrootcert=system`: the system's trusted roots.
    System,
}

/// Where a server is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Host {
    /// A host name or IP address.
    Tcp(String),
    /// A folder holding the server's Unix socket.
    Unix(PathBuf),
}

/// One server to try.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    pub host: Host,
    /// The address to connect to instead of looking `host` up (`hostaddr`).
    pub hostaddr: Option<IpAddr>,
    pub port: u16,
}

impl Target {
    /// The host names this target matches in the password file: libpq matches a socket
    /// with `localhost`.
    pub fn pgpass_hosts(&self) -> Vec<&str> {
        match &self.host {
            Host::Tcp(name) => vec![name.as_str()],
            Host::Unix(path) => {
                let mut hosts = vec!["localhost"];
                if let Some(path) = path.to_str() {
                    hosts.push(path);
                }
                hosts
            }
        }
    }
}

impl fmt::Display for Target {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.host {
            Host::Tcp(name) if name.contains(':') => write!(f, "[{name}]:{}", self.port),
            Host::Tcp(name) => write!(f, "{name}:{}", self.port),
            Host::Unix(path) => write!(f, "{}:{}", path.display(), self.port),
        }
    }
}

/// A password that never shows in `Debug`.
#[derive(Clone, PartialEq, Eq)]
struct Secret(String);

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("***")
    }
}

/// Everything needed to connect, resolved from a connection string and an [`Environment`].
///
/// Its `Display` is the masked form used in messages: `postgresql://user:***@host:port/db`,
/// with `?sslmode=…&sslrootcert=…` when those were given.
#[derive(Debug, Clone)]
pub struct Settings {
    /// The servers to try, in order.
    pub targets: Vec<Target>,
    pub user: String,
    pub dbname: String,
    password: Option<Secret>,
    /// The password file to consult when no password is given.
    pub passfile: Option<PathBuf>,
    pub sslmode: SslMode,
    /// Whether `sslmode` was given rather than the default.
    sslmode_given: bool,
    /// `sslrootcert`, when given.
    pub sslrootcert: Option<RootCert>,
    /// `~/.postgresql/root.crt`, used like `sslrootcert` when it exists and none is given.
    pub default_rootcert: Option<PathBuf>,
    pub application_name: String,
    /// `load_balance_hosts=random`: try the servers in a random order.
    pub load_balance: bool,
    /// Variables that libpq would read but viewkeeper ignores.
    pub ignored_vars: Vec<&'static str>,
    /// The other settings, for tokio-postgres (user, database, timeouts, options…).
    pub(crate) config: tokio_postgres::Config,
}

impl Settings {
    /// The password given in the connection string or `PGPASSWORD`.
    pub fn password(&self) -> Option<&str> {
        self.password.as_ref().map(|secret| secret.0.as_str())
    }
}

impl fmt::Display for Settings {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let hosts: Vec<String> = self.targets.iter().map(Target::to_string).collect();
        f.write_str(
            &Shown {
                user: Some(&self.user),
                has_password: self.password.is_some(),
                hosts: &hosts,
                dbname: Some(&self.dbname),
                sslmode: self.sslmode_given.then(|| self.sslmode.as_str()),
                sslrootcert: self.sslrootcert.as_ref().map(|root| match root {
                    RootCert::File(path) => path.to_string_lossy(),
                    RootCert::System => "system".into(),
                }),
            }
            .render(),
        )
    }
}

/// Resolves a connection string (a URL, a `key=value` string, or empty for "from the
/// environment only") against `env`, as libpq would.
pub fn resolve(url: &str, env: &Environment) -> Result<Settings, ConnectError> {
    let given = Given::parse(url, env)?;
    let targets = given.targets()?;
    let load_balance = given.load_balance()?;
    let login = given.login()?;
    let tls = given.tls()?;
    let application_name = given
        .value("application_name")
        .or(given.info.get("fallback_application_name"))
        .or_else(|| keyword("fallback_application_name").and_then(|k| k.default))
        .unwrap_or_default()
        .to_owned();
    let mut config = given.passed_on()?;
    config
        .user(&login.user)
        .dbname(&login.dbname)
        .application_name(&application_name);
    Ok(Settings {
        targets,
        user: login.user,
        dbname: login.dbname,
        password: login.password,
        passfile: login.passfile,
        sslmode: tls.mode,
        sslmode_given: tls.mode_given,
        sslrootcert: tls.rootcert,
        default_rootcert: tls.default_rootcert,
        application_name,
        load_balance,
        ignored_vars: given.ignored_vars(),
        config,
    })
}

/// A parsed connection string and the environment that fills in what it leaves out.
struct Given<'a> {
    url: &'a str,
    info: Conninfo,
    env: &'a Environment,
}

/// The role, database and password.
struct Login {
    user: String,
    dbname: String,
    password: Option<Secret>,
    passfile: Option<PathBuf>,
}

/// How to set up TLS.
struct Tls {
    mode: SslMode,
    mode_given: bool,
    rootcert: Option<RootCert>,
    default_rootcert: Option<PathBuf>,
}

impl<'a> Given<'a> {
    fn parse(url: &'a str, env: &'a Environment) -> Result<Given<'a>, ConnectError> {
        let mut given = Given {
            url,
            info: Conninfo::default(),
            env,
        };
        given.info = conninfo::parse(url).map_err(|message| given.invalid(message))?;
        Ok(given)
    }

    /// The error for a bad connection string or variable, showing the string masked.
    fn invalid(&self, message: String) -> ConnectError {
        ConnectError::InvalidUrl {
            url: if self.url.trim().is_empty() {
                "(none: the PG* environment variables)".to_owned()
            } else {
                mask_password(self.url)
            },
            message,
        }
    }

    /// An option's value: the connection string's, else its environment variable's. Empty
    /// values count as not given, as they do in libpq for most options.
    fn value(&self, key: &str) -> Option<&str> {
        self.info
            .get(key)
            .filter(|v| !v.is_empty())
            .or_else(|| env_var(key).and_then(|var| self.env.var(var)))
    }

    /// " (from PGPORT)" when a value came from the environment, for messages.
    fn from(&self, key: &str) -> String {
        match self.info.get(key).filter(|v| !v.is_empty()) {
            Some(_) => String::new(),
            None => env_var(key).map_or_else(String::new, |var| format!(" (from {var})")),
        }
    }

    /// The servers to try: `host`, `hostaddr` and `port` lists matched up, and libpq's
    /// default host where none is given.
    fn targets(&self) -> Result<Vec<Target>, ConnectError> {
        let hosts = split_list(self.value("host"));
        let hostaddrs = self.hostaddrs()?;
        if !hosts.is_empty() && !hostaddrs.is_empty() && hosts.len() != hostaddrs.len() {
            return Err(self.invalid(format!(
                "could not match {} host names to {} hostaddr values",
                hosts.len(),
                hostaddrs.len()
            )));
        }
        let count = hosts.len().max(hostaddrs.len()).max(1);
        let ports = self.ports()?;
        if ports.len() > 1 && ports.len() != count {
            return Err(self.invalid(format!(
                "could not match {} port numbers to {count} hosts",
                ports.len()
            )));
        }
        let targets = (0..count).map(|i| {
            let port = ports
                .get(i)
                .or(ports.first())
                .copied()
                .unwrap_or(DEFAULT_PORT);
            let hostaddr = hostaddrs.get(i).copied();
            let host = match (hosts.get(i).filter(|h| !h.is_empty()), hostaddr) {
                (Some(host), _) if host.starts_with('/') => Host::Unix(PathBuf::from(host)),
                (Some(host), _) => Host::Tcp((*host).to_owned()),
                (None, Some(addr)) => Host::Tcp(addr.to_string()),
                (None, None) => default_host(self.env, port),
            };
            Target {
                host,
                hostaddr,
                port,
            }
        });
        Ok(targets.collect())
    }

    fn hostaddrs(&self) -> Result<Vec<IpAddr>, ConnectError> {
        split_list(self.value("hostaddr"))
            .into_iter()
            .map(|addr| {
                addr.parse::<IpAddr>().map_err(|_| {
                    self.invalid(format!(
                        "invalid IP address in hostaddr{}",
                        self.from("hostaddr")
                    ))
                })
            })
            .collect()
    }

    /// The port list; an empty entry is the default port.
    fn ports(&self) -> Result<Vec<u16>, ConnectError> {
        split_list(self.value("port"))
            .into_iter()
            .map(|port| match port {
                "" => Ok(DEFAULT_PORT),
                port => port
                    .parse::<u16>()
                    .ok()
                    .filter(|port| *port != 0)
                    .ok_or_else(|| {
                        self.invalid(format!("invalid port number{}", self.from("port")))
                    }),
            })
            .collect()
    }

    /// `load_balance_hosts=random`: try the servers in a random order.
    fn load_balance(&self) -> Result<bool, ConnectError> {
        match self.value("load_balance_hosts") {
            None | Some("disable") => Ok(false),
            Some("random") => Ok(true),
            Some(other) => Err(self.invalid(format!(
                "invalid load_balance_hosts \"{other}\": use disable or random"
            ))),
        }
    }

    /// The role (the OS user's name by default), the database (the role's name by
    /// default), the password, and the password file (`~/.pgpass` by default).
    fn login(&self) -> Result<Login, ConnectError> {
        let user = match self.value("user") {
            Some(user) => user.to_owned(),
            None => self.env.os_user.clone().ok_or_else(|| {
                self.invalid(
                    "no user name: set PGUSER or put a user in the connection string".to_owned(),
                )
            })?,
        };
        Ok(Login {
            dbname: self.value("dbname").unwrap_or(&user).to_owned(),
            password: self.value("password").map(|p| Secret(p.to_owned())),
            passfile: self
                .value("passfile")
                .map(PathBuf::from)
                .or_else(|| self.home().map(|home| home.join(".pgpass"))),
            user,
        })
    }

    fn home(&self) -> Option<&Path> {
        self.env.var("HOME").map(Path::new)
    }

    /// `sslmode` and the root certificates, checked against each other and against
    /// `sslnegotiation` as libpq checks them.
    fn tls(&self) -> Result<Tls, ConnectError> {
        let rootcert = self.value("sslrootcert").map(|root| match root {
            "system" => RootCert::System,
            path => RootCert::File(PathBuf::from(path)),
        });
        let given_mode = self
            .value("sslmode")
            .map(str::parse::<SslMode>)
            .transpose()
            .map_err(|message| self.invalid(message))?;
        let mode = match (given_mode, &rootcert) {
            (None, Some(RootCert::System)) => SslMode::VerifyFull,
            (Some(mode), Some(RootCert::System)) if mode != SslMode::VerifyFull => {
                return Err(self.invalid(format!(
                    "weak sslmode \"{mode}\" may not be used with sslrootcert=system (use \"verify-full\")"
                )));
            }
            (mode, _) => mode.unwrap_or(SslMode::Prefer),
        };
        if self.value("sslnegotiation") == Some("direct")
            && matches!(mode, SslMode::Disable | SslMode::Allow | SslMode::Prefer)
        {
            return Err(self.invalid(format!(
                "weak sslmode \"{mode}\" may not be used with sslnegotiation=direct \
                 (use \"require\", \"verify-ca\", or \"verify-full\")"
            )));
        }
        Ok(Tls {
            mode,
            mode_given: given_mode.is_some(),
            rootcert,
            default_rootcert: self
                .home()
                .map(|home| home.join(".postgresql").join("root.crt")),
        })
    }

    /// The options tokio-postgres takes as they are, in its `Config`, which checks them.
    fn passed_on(&self) -> Result<tokio_postgres::Config, ConnectError> {
        let passed: Vec<String> = KEYWORDS
            .iter()
            .filter(|keyword| keyword.used == Use::Passed)
            .filter_map(|keyword| {
                let value = self.value(keyword.name)?;
                Some(format!("{}={}", keyword.name, conninfo::quote(value)))
            })
            .collect();
        tokio_postgres::Config::from_str(&passed.join(" "))
            .map_err(|error| self.invalid(super::describe(&error)))
    }

    /// The variables of unsupported keywords that are set, for a warning.
    fn ignored_vars(&self) -> Vec<&'static str> {
        KEYWORDS
            .iter()
            .filter(|keyword| keyword.used == Use::Unsupported)
            .filter_map(|keyword| keyword.env)
            .filter(|var| self.env.var(var).is_some())
            .collect()
    }
}

/// The environment variable for an option.
fn env_var(key: &str) -> Option<&'static str> {
    keyword(key).and_then(|keyword| keyword.env)
}

fn split_list(value: Option<&str>) -> Vec<&str> {
    value.map(|v| v.split(',').collect()).unwrap_or_default()
}

/// libpq's default host: a local server's socket folder, else `localhost`.
fn default_host(env: &Environment, port: u16) -> Host {
    let socket = format!(".s.PGSQL.{port}");
    DEFAULT_SOCKET_DIRS
        .iter()
        .map(Path::new)
        .find(|dir| env.sockets.iter().any(|s| *s == dir.join(&socket)))
        .map_or_else(
            || Host::Tcp("localhost".to_owned()),
            |dir| Host::Unix(dir.to_owned()),
        )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(vars: &[(&str, &str)]) -> Environment {
        Environment::from_vars(vars.iter().copied()).with_os_user("alice")
    }

    fn resolved(url: &str, vars: &[(&str, &str)]) -> Settings {
        resolve(url, &env(vars)).expect("resolves")
    }

    fn tcp(name: &str, port: u16) -> Target {
        Target {
            host: Host::Tcp(name.to_owned()),
            hostaddr: None,
            port,
        }
    }

    #[test]
    fn libpq_defaults_when_nothing_is_given() {
        let settings = resolved("", &[("HOME", "/home/alice")]);
        assert_eq!(settings.targets, vec![tcp("localhost", 5432)]);
        assert_eq!(settings.user, "alice");
        assert_eq!(settings.dbname, "alice");
        assert_eq!(settings.password(), None);
        assert_eq!(
            settings.passfile,
            Some(PathBuf::from("/home/alice/.pgpass"))
        );
        assert_eq!(settings.sslmode, SslMode::Prefer);
        assert_eq!(settings.sslrootcert, None);
        assert_eq!(
            settings.default_rootcert,
            Some(PathBuf::from("/home/alice/.postgresql/root.crt"))
        );
        assert_eq!(settings.application_name, "viewkeeper");
        assert_eq!(
            settings.to_string(),
            "postgresql://alice@localhost:5432/alice"
        );
    }

    #[test]
    fn a_local_socket_is_the_default_host() {
        let env = env(&[("PGPORT", "5433")])
            .with_socket("/tmp/.s.PGSQL.5433")
            .with_socket("/var/run/postgresql/.s.PGSQL.5432");
        let settings = resolve("", &env).expect("resolves");
        assert_eq!(
            settings.targets,
            vec![Target {
                host: Host::Unix(PathBuf::from("/tmp")),
                hostaddr: None,
                port: 5433
            }]
        );
        let settings = resolve("port=5432", &env).expect("resolves");
        assert_eq!(
            settings.targets[0].host,
            Host::Unix(PathBuf::from("/var/run/postgresql"))
        );
        assert_eq!(
            settings.targets[0].pgpass_hosts(),
            vec!["localhost", "/var/run/postgresql"]
        );
    }

    #[test]
    fn variables_fill_in_what_the_string_leaves_out() {
        let vars = [
            ("PGHOST", "/var/run/postgresql"),
            ("PGPORT", "6543"),
            ("PGUSER", "bob"),
            ("PGPASSWORD", "from-env"),
            ("PGDATABASE", "shop"),
            ("PGSSLMODE", "require"),
            ("PGSSLROOTCERT", "/etc/ca.pem"),
            ("PGAPPNAME", "nightly"),
            ("PGPASSFILE", "/run/pgpass"),
        ];
        let settings = resolved("", &vars);
        assert_eq!(
            settings.targets,
            vec![Target {
                host: Host::Unix(PathBuf::from("/var/run/postgresql")),
                hostaddr: None,
                port: 6543
            }]
        );
        assert_eq!(
            (settings.user.as_str(), settings.dbname.as_str()),
            ("bob", "shop")
        );
        assert_eq!(settings.password(), Some("from-env"));
        assert_eq!(settings.sslmode, SslMode::Require);
        assert_eq!(
            settings.sslrootcert,
            Some(RootCert::File(PathBuf::from("/etc/ca.pem")))
        );
        assert_eq!(settings.application_name, "nightly");
        assert_eq!(settings.passfile, Some(PathBuf::from("/run/pgpass")));
        assert_eq!(
            settings.to_string(),
            "postgresql://bob:***@/var/run/postgresql:6543/shop?sslmode=require&sslrootcert=/etc/ca.pem"
        );

        // The string wins over every variable.
        let settings = resolved(
            "postgresql://carol:pw@db.example.com:7000/sales?sslmode=disable&application_name=x",
            &vars,
        );
        assert_eq!(settings.targets, vec![tcp("db.example.com", 7000)]);
        assert_eq!(
            (settings.user.as_str(), settings.dbname.as_str()),
            ("carol", "sales")
        );
        assert_eq!(settings.password(), Some("pw"));
        assert_eq!(settings.sslmode, SslMode::Disable);
        assert_eq!(settings.application_name, "x");
        // The port comes from PGPORT when the URL has none.
        let settings = resolved("postgresql://db.example.com/sales", &vars);
        assert_eq!(settings.targets, vec![tcp("db.example.com", 6543)]);
    }

    #[test]
    fn several_hosts_and_ports() {
        let settings = resolved(
            "host=a,b,c port=1,,3 hostaddr=10.0.0.1,10.0.0.2,10.0.0.3",
            &[],
        );
        assert_eq!(
            settings
                .targets
                .iter()
                .map(|t| (t.to_string(), t.hostaddr.map(|a| a.to_string())))
                .collect::<Vec<_>>(),
            vec![
                ("a:1".to_owned(), Some("10.0.0.1".to_owned())),
                ("b:5432".to_owned(), Some("10.0.0.2".to_owned())),
                ("c:3".to_owned(), Some("10.0.0.3".to_owned())),
            ]
        );
        let settings = resolved("host=a,b port=7", &[]);
        assert_eq!(settings.targets, vec![tcp("a", 7), tcp("b", 7)]);
        assert!(resolve("host=a,b port=1,2,3", &env(&[])).is_err());
        assert!(resolve("host=a,b hostaddr=10.0.0.1", &env(&[])).is_err());
        let settings = resolved("hostaddr=::1", &[]);
        assert_eq!(settings.targets[0].to_string(), "[::1]:5432");
    }

    #[test]
    fn ssl_modes_and_root_certificates() {
        for mode in [
            "disable",
            "allow",
            "prefer",
            "require",
            "verify-ca",
            "verify-full",
        ] {
            let settings = resolved(&format!("host=h sslmode={mode}"), &[]);
            assert_eq!(settings.sslmode.to_string(), mode);
            assert!(settings.to_string().ends_with(&format!("?sslmode={mode}")));
        }
        let error = resolve("host=h sslmode=verify", &env(&[])).expect_err("invalid");
        assert!(
            error.to_string().contains("invalid sslmode \"verify\""),
            "{error}"
        );

        // sslrootcert=system asks for verify-full, and refuses weaker modes.
        let settings = resolved("host=h sslrootcert=system", &[]);
        assert_eq!(settings.sslmode, SslMode::VerifyFull);
        assert_eq!(settings.sslrootcert, Some(RootCert::System));
        let error =
            resolve("host=h sslrootcert=system sslmode=require", &env(&[])).expect_err("weak mode");
        assert!(
            error.to_string().contains("weak sslmode \"require\""),
            "{error}"
        );
    }

    #[test]
    fn errors_name_the_variable_a_bad_value_came_from() {
        let error = resolve("", &env(&[("PGPORT", "54x")])).expect_err("bad port");
        assert_eq!(
            error.to_string(),
            "invalid database URL (none: the PG* environment variables): invalid port number \
             (from PGPORT)"
        );
        let error = resolve("host=h port=0", &env(&[])).expect_err("bad port");
        assert_eq!(
            error.to_string(),
            "invalid database URL postgresql://h:0: invalid port number"
        );
        let error = resolve("host=h sslnegotiation=direct", &env(&[])).expect_err("weak");
        assert!(
            error.to_string().contains("weak sslmode \"prefer\""),
            "{error}"
        );
        assert!(resolve("host=h sslnegotiation=direct sslmode=require", &env(&[])).is_ok());
    }

    #[test]
    fn passed_through_options_are_checked() {
        let settings = resolved(
            "host=h connect_timeout=5 target_session_attrs=read-write",
            &[],
        );
        assert_eq!(
            settings.config.get_connect_timeout(),
            Some(&std::time::Duration::from_secs(5))
        );
        let error = resolve("host=h password=s3cret channel_binding=maybe", &env(&[]))
            .expect_err("invalid");
        let text = error.to_string();
        assert!(text.contains("channel_binding"), "{text}");
        assert!(!text.contains("s3cret"), "{text}");
    }

    #[test]
    fn without_a_user_name_it_says_so() {
        let error = resolve(
            "host=h",
            &Environment::from_vars(Vec::<(String, String)>::new()),
        )
        .expect_err("no user");
        assert!(error.to_string().contains("PGUSER"), "{error}");
    }

    #[test]
    fn a_url_is_needed_unless_pg_variables_are_set() {
        let none = Environment::from_vars([("HOME", "/root"), ("PGAPPNAME", "x")]);
        assert!(matches!(
            none.database_url(None),
            Err(ConnectError::MissingUrl)
        ));
        assert_eq!(
            none.database_url(Some("postgresql://h/db")).expect("given"),
            "postgresql://h/db"
        );
        let some = Environment::from_vars([("PGHOST", "db")]);
        assert_eq!(some.database_url(None).expect("from variables"), "");
        let empty = Environment::from_vars([("PGHOST", "")]);
        assert!(empty.database_url(None).is_err());
    }

    #[test]
    fn ignored_variables_are_listed() {
        let settings = resolved("host=h", &[("PGSSLCERT", "/x.crt"), ("PGSERVICE", "s")]);
        assert_eq!(settings.ignored_vars, vec!["PGSERVICE", "PGSSLCERT"]);
    }

    #[test]
    fn the_keyword_tables_defaults_are_the_ones_used() {
        let default = |name: &str| keyword(name).and_then(|keyword| keyword.default);
        let settings = resolved("", &[]);
        assert_eq!(
            default("port"),
            Some(settings.targets[0].port.to_string().as_str())
        );
        assert_eq!(default("sslmode"), Some(settings.sslmode.as_str()));
        assert_eq!(
            default("fallback_application_name"),
            Some(settings.application_name.as_str())
        );
        assert_eq!(default("load_balance_hosts"), Some("disable"));
        assert!(!settings.load_balance);
        // Every variable of a keyword that names a target is enough on its own.
        for keyword in KEYWORDS.iter().filter(|keyword| keyword.names_target) {
            let var = keyword.env.unwrap_or_default();
            let env = Environment::from_vars([(var, "x")]);
            assert_eq!(env.database_url(None).expect(var), "");
        }
        let env = Environment::from_vars([("PGAPPNAME", "x"), ("PGOPTIONS", "x")]);
        assert!(env.database_url(None).is_err());
    }
}
