//! Connecting to PostgreSQL the way psql does, and turning its errors into readable
//! messages with the password masked.
//!
//! A connection string (a `postgresql://` URL or a libpq `key=value` string, or nothing at
//! all) is completed from the `PG*` environment variables and libpq's defaults
//! ([`settings`]), a password is looked up in the password file when none is given
//! ([`pgpass`]), and TLS follows libpq's `sslmode` over rustls.

mod conninfo;
mod mask;
pub mod pgpass;
mod privileges;
pub mod settings;
mod tls;

use std::hash::BuildHasher;

use tokio::sync::mpsc;
use tokio_postgres::{AsyncMessage, Client, Notification};

use mask::hide_secrets;
pub use mask::mask_password;
pub use settings::{Environment, Host, RootCert, Settings, SslMode, Target, resolve};

/// Could not reach or talk to the database.
#[derive(Debug, thiserror::Error, miette::Diagnostic)]
#[non_exhaustive]
pub enum ConnectError {
    #[error("no database to connect to")]
    #[diagnostic(help(
        "pass --database-url URL, set DATABASE_URL, or set the variables psql reads \
         (PGHOST, PGPORT, PGUSER, PGDATABASE…)"
    ))]
    MissingUrl,
    #[error("invalid database URL {url}: {message}")]
    InvalidUrl { url: String, message: String },
    #[error("cannot connect to {url}: {message}")]
    Connect { url: String, message: String },
}

/// The connection string to use for `--database-url` or `DATABASE_URL` (`given`): that one,
/// or an empty one ("from the environment") when any of the `PG*` variables that name a
/// server is set, as psql would; [`ConnectError::MissingUrl`] otherwise.
pub fn resolve_url(given: Option<&str>) -> Result<String, ConnectError> {
    Environment::from_process().database_url(given)
}

/// Connects and sets the session's `search_path`, so unqualified names in queries, and the
/// definitions PostgreSQL reports back, mean the same thing on every run; and its
/// transactions to read committed ([`crate::sql::session::READ_COMMITTED`]).
///
/// `url` is completed from this process's environment as libpq would; an empty `url` means
/// the environment alone.
pub async fn connect(url: &str, search_path: &[String]) -> Result<Client, ConnectError> {
    connect_with(url, search_path, &Environment::from_process()).await
}

/// [`connect`], reading the environment from `env` instead of the process.
pub async fn connect_with(
    url: &str,
    search_path: &[String],
    env: &Environment,
) -> Result<Client, ConnectError> {
    connect_inner(url, search_path, env, None).await
}

/// Where notifications go, for a listening connection.
type Listener<'a> = Option<&'a mpsc::UnboundedSender<Notification>>;

async fn connect_inner(
    url: &str,
    search_path: &[String],
    env: &Environment,
    listener: Listener<'_>,
) -> Result<Client, ConnectError> {
    let settings = resolve(url, env)?;
    for name in &settings.ignored_vars {
        tracing::warn!("{name} is set, but viewkeeper does not support it; ignoring it");
    }
    let client = open(&settings, listener).await?;
    privileges::connected_as(&settings.user);
    let mut session_sql = crate::sql::session::READ_COMMITTED.to_owned();
    if !search_path.is_empty() {
        session_sql.push_str("; ");
        session_sql.push_str(&crate::sql::session::set_search_path(search_path));
    }
    client
        .batch_execute(&session_sql)
        .await
        .map_err(|error| ConnectError::Connect {
            url: settings.to_string(),
            message: describe(&error),
        })?;
    Ok(client)
}

/// Connects like [`connect`], and hands over every `NOTIFY` the session receives (after
/// `LISTEN channel`) on the returned channel.
pub async fn connect_listening(
    url: &str,
    search_path: &[String],
) -> Result<(Client, mpsc::UnboundedReceiver<Notification>), ConnectError> {
    let (sender, receiver) = mpsc::unbounded_channel();
    let client = connect_inner(
        url,
        search_path,
        &Environment::from_process(),
        Some(&sender),
    )
    .await?;
    Ok((client, receiver))
}

/// Runs a connection until it closes, passing notifications on when someone listens.
async fn drive<S, T>(
    mut connection: tokio_postgres::Connection<S, T>,
    listener: Option<mpsc::UnboundedSender<Notification>>,
) where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
    T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    loop {
        match std::future::poll_fn(|cx| connection.poll_message(cx)).await {
            Some(Ok(AsyncMessage::Notification(notification))) => {
                if let Some(listener) = &listener {
                    let _ = listener.send(notification);
                }
            }
            Some(Ok(_)) => {}
            Some(Err(error)) => {
                tracing::debug!("connection closed: {error}");
                break;
            }
            None => break,
        }
    }
}

/// Asks the server to cancel the query running on the session `token` belongs to, over TLS
/// when that session used TLS (a cancel request only needs the channel encrypted, so the
/// certificate is not checked again).
pub async fn cancel(token: &tokio_postgres::CancelToken) -> Result<(), String> {
    let connector = tls::connector(tls::Check::Nothing, None)?;
    token
        .cancel_query(connector)
        .await
        .map_err(|error| describe(&error))
}

/// Tries each server in turn; the error lists why each one failed.
async fn open(settings: &Settings, listener: Listener<'_>) -> Result<Client, ConnectError> {
    let mut targets = settings.targets.clone();
    if settings.load_balance {
        shuffle(&mut targets);
    }
    let mut secrets: Vec<String> = settings.password().into_iter().map(str::to_owned).collect();
    let mut passfile: Option<Option<String>> = None;
    let mut failures = Vec::new();
    for target in &targets {
        let password = match settings.password() {
            Some(password) => Some(password.to_owned()),
            None => {
                let contents = passfile
                    .get_or_insert_with(|| settings.passfile.as_deref().and_then(pgpass::read));
                contents.as_deref().and_then(|contents| {
                    pgpass::lookup(
                        contents,
                        &pgpass::Lookup {
                            hosts: &target.pgpass_hosts(),
                            port: &target.port.to_string(),
                            dbname: &settings.dbname,
                            user: &settings.user,
                        },
                    )
                })
            }
        };
        secrets.extend(password.iter().cloned());
        let attempted = attempt(settings, target, password.as_deref(), listener);
        // libpq's connect_timeout bounds the whole attempt on a host, the startup and the
        // authentication included; tokio-postgres bounds only the socket's connect, so a
        // server that accepts and never answers would be waited for forever.
        let attempted = match settings.config.get_connect_timeout() {
            Some(limit) => tokio::time::timeout(*limit, attempted)
                .await
                .unwrap_or_else(|_| {
                    Err(Failure {
                        message: format!(
                            "no answer within connect_timeout ({} s)",
                            limit.as_secs()
                        ),
                        tls: false,
                        server: false,
                    })
                }),
            None => attempted.await,
        };
        match attempted {
            Ok(client) => return Ok(client),
            Err(failure) => failures.push((target.to_string(), failure.message)),
        }
    }
    let message = match failures.as_slice() {
        [(_, message)] => message.clone(),
        failures => failures
            .iter()
            .map(|(target, message)| format!("\n  {target}: {message}"))
            .collect(),
    };
    Err(ConnectError::Connect {
        url: settings.to_string(),
        message: hide_secrets(&message, &secrets),
    })
}

/// Why one attempt failed.
struct Failure {
    message: String,
    /// The TLS handshake failed (or the server would not do TLS).
    tls: bool,
    /// The server answered with an error (e.g. pg_hba.conf turned the connection down).
    server: bool,
}

/// Connects to one server with the `sslmode` semantics of libpq.
async fn attempt(
    settings: &Settings,
    target: &Target,
    password: Option<&str>,
    listener: Listener<'_>,
) -> Result<Client, Failure> {
    let mut config = settings.config.clone();
    match &target.host {
        Host::Tcp(name) => config.host(name),
        Host::Unix(path) => config.host_path(path),
    };
    if let Some(addr) = target.hostaddr {
        config.hostaddr(addr);
    }
    config.port(target.port);
    if let Some(password) = password.filter(|p| !p.is_empty()) {
        config.password(password);
    }
    use tokio_postgres::config::SslMode as Wire;
    let plain = || {
        once(
            settings,
            &config,
            Wire::Disable,
            tls::Check::Nothing,
            listener,
        )
    };
    // libpq never uses TLS over a Unix socket, whatever sslmode says.
    if matches!(target.host, Host::Unix(_)) {
        return plain().await;
    }
    // Without verify-*, a root certificate at hand still gets checked, as in libpq.
    let lenient = if rootcert(settings).is_some() {
        tls::Check::Chain
    } else {
        tls::Check::Nothing
    };
    match settings.sslmode {
        SslMode::Disable => plain().await,
        SslMode::Allow => match plain().await {
            Err(failure) if failure.server => {
                tracing::debug!("retrying with TLS: {}", failure.message);
                once(settings, &config, Wire::Require, lenient, listener).await
            }
            other => other,
        },
        SslMode::Prefer => match once(settings, &config, Wire::Prefer, lenient, listener).await {
            Err(failure) if failure.tls => {
                tracing::debug!("retrying without TLS: {}", failure.message);
                plain().await
            }
            other => other,
        },
        SslMode::Require => once(settings, &config, Wire::Require, lenient, listener).await,
        SslMode::VerifyCa => {
            once(
                settings,
                &config,
                Wire::Require,
                tls::Check::Chain,
                listener,
            )
            .await
        }
        SslMode::VerifyFull => {
            once(settings, &config, Wire::Require, tls::Check::Full, listener).await
        }
    }
}

/// The root certificates to check against: `sslrootcert`, else `~/.postgresql/root.crt`
/// when it exists.
fn rootcert(settings: &Settings) -> Option<RootCert> {
    settings.sslrootcert.clone().or_else(|| {
        settings
            .default_rootcert
            .as_ref()
            .filter(|path| path.is_file())
            .map(|path| RootCert::File(path.clone()))
    })
}

async fn once(
    settings: &Settings,
    config: &tokio_postgres::Config,
    mode: tokio_postgres::config::SslMode,
    check: tls::Check,
    listener: Listener<'_>,
) -> Result<Client, Failure> {
    let root = rootcert(settings);
    // The settings' display shows a given sslrootcert; name ~/.postgresql/root.crt here.
    let ssl_context = || match &root {
        Some(RootCert::File(path))
            if check != tls::Check::Nothing && settings.sslrootcert.is_none() =>
        {
            format!(
                "(sslmode={}, sslrootcert={})",
                settings.sslmode,
                path.display()
            )
        }
        _ => format!("(sslmode={})", settings.sslmode),
    };
    let connector = tls::connector(check, root.as_ref()).map_err(|message| Failure {
        message,
        tls: false,
        server: false,
    })?;
    let mut config = config.clone();
    config.ssl_mode(mode);
    match config.connect(connector).await {
        Ok((client, connection)) => {
            tokio::spawn(drive(connection, listener.cloned()));
            Ok(client)
        }
        Err(error) => {
            let tls = error
                .to_string()
                .starts_with("error performing TLS handshake");
            let message = match tls::certificate_failure(&error) {
                Some(reason) => format!("{reason} {}", ssl_context()),
                None if tls => format!("{} {}", describe(&error), ssl_context()),
                // tokio-postgres's words for libpq's "fe_sendauth: no password supplied".
                None if describe(&error) == "invalid configuration: password missing" => {
                    no_password(settings)
                }
                None => describe(&error),
            };
            Err(Failure {
                message,
                tls,
                server: error.as_db_error().is_some(),
            })
        }
    }
}

/// The server asked for a password and none was found.
fn no_password(settings: &Settings) -> String {
    let file = match &settings.passfile {
        Some(path) => format!(" or the password file {}", path.display()),
        None => String::new(),
    };
    format!("the server asks for a password and none was given (in the URL, PGPASSWORD{file})")
}

/// Shuffles the servers for `load_balance_hosts=random`.
fn shuffle<T>(items: &mut [T]) {
    let state = std::collections::hash_map::RandomState::new();
    for i in (1..items.len()).rev() {
        let j = (state.hash_one(i) % (i as u64 + 1)) as usize;
        items.swap(i, j);
    }
}

/// PostgreSQL's message, detail and hint (tokio-postgres's own `Display` says only "db error").
pub fn describe(error: &tokio_postgres::Error) -> String {
    match error.as_db_error() {
        Some(db) => {
            let mut text = db.message().to_owned();
            if let Some(detail) = db.detail() {
                text.push_str(&format!("\n  detail: {detail}"));
            }
            if let Some(hint) = db.hint() {
                text.push_str(&format!("\n  hint: {hint}"));
            }
            if db.code() == &tokio_postgres::error::SqlState::INSUFFICIENT_PRIVILEGE
                && let Some(hint) = privileges::hint(db.message())
            {
                text.push_str(&format!("\n  help: {hint}"));
            }
            text
        }
        None => {
            let mut text = error.to_string();
            let mut source = std::error::Error::source(error);
            while let Some(cause) = source {
                text.push_str(&format!(": {cause}"));
                source = cause.source();
            }
            text
        }
    }
}
