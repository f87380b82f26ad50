//! Connection strings as libpq reads them: `postgresql://` URLs and `key=value` strings,
//! split into libpq keywords before anything interprets them.
//!
//! Errors never quote the text they could not parse: a mistyped URL may put its password
//! anywhere.

/// How a connection keyword is used once read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Use {
    /// Read by viewkeeper to choose the servers to try, in which order.
    Servers,
    /// Read by viewkeeper: the role, database and password (tokio-postgres gets the result).
    Login,
    /// Read by viewkeeper to set up TLS over rustls.
    Tls,
    /// Handed to tokio-postgres as given, which checks it.
    Passed,
    /// A libpq keyword viewkeeper does not support: named in an error; its variable, when
    /// set, draws a warning.
    Unsupported,
}

/// A libpq connection keyword.
#[derive(Debug)]
pub(crate) struct Keyword {
    pub(crate) name: &'static str,
    /// The environment variable that gives it a default, as in libpq.
    pub(crate) env: Option<&'static str>,
    /// libpq's default when neither the string nor the variable gives it, when it is a
    /// constant (the computed ones, such as the OS user, are in `settings::resolve`).
    pub(crate) default: Option<&'static str>,
    /// Whether its variable alone is enough to connect without a URL, as in psql: it names
    /// a server, a role or how to reach it.
    pub(crate) names_target: bool,
    pub(crate) used: Use,
}

const fn kw(
    name: &'static str,
    env: Option<&'static str>,
    default: Option<&'static str>,
    names_target: bool,
    used: Use,
) -> Keyword {
    Keyword {
        name,
        env,
        default,
        names_target,
        used,
    }
}

/// Every libpq keyword viewkeeper knows, and what becomes of it.
#[rustfmt::skip]
pub(crate) const KEYWORDS: &[Keyword] = &[
    //  name                        variable                       default             target  used
    kw("host",                      Some("PGHOST"),                None,               true,  Use::Servers),
    kw("hostaddr",                  Some("PGHOSTADDR"),            None,               true,  Use::Servers),
    kw("port",                      Some("PGPORT"),                Some("5432"),       true,  Use::Servers),
    kw("load_balance_hosts",        Some("PGLOADBALANCEHOSTS"),    Some("disable"),    false, Use::Servers),
    kw("dbname",                    Some("PGDATABASE"),            None,               true,  Use::Login),
    kw("user",                      Some("PGUSER"),                None,               true,  Use::Login),
    kw("password",                  Some("PGPASSWORD"),            None,               true,  Use::Login),
    kw("passfile",                  Some("PGPASSFILE"),            None,               true,  Use::Login),
    kw("application_name",          Some("PGAPPNAME"),             None,               false, Use::Login),
    kw("fallback_application_name", None,                          Some("viewkeeper"), false, Use::Login),
    kw("sslmode",                   Some("PGSSLMODE"),             Some("prefer"),     true,  Use::Tls),
    kw("sslrootcert",               Some("PGSSLROOTCERT"),         None,               true,  Use::Tls),
    kw("options",                   Some("PGOPTIONS"),             None,               false, Use::Passed),
    kw("connect_timeout",           Some("PGCONNECT_TIMEOUT"),     None,               false, Use::Passed),
    kw("tcp_user_timeout",          None,                          None,               false, Use::Passed),
    kw("keepalives",                None,                          None,               false, Use::Passed),
    kw("keepalives_idle",           None,                          None,               false, Use::Passed),
    kw("keepalives_interval",       None,                          None,               false, Use::Passed),
    kw("keepalives_retries",        None,                          None,               false, Use::Passed),
    kw("target_session_attrs",      Some("PGTARGETSESSIONATTRS"),  None,               false, Use::Passed),
    kw("channel_binding",           Some("PGCHANNELBINDING"),      None,               false, Use::Passed),
    kw("sslnegotiation",            Some("PGSSLNEGOTIATION"),      None,               false, Use::Passed),
    kw("service",                   Some("PGSERVICE"),             None,               false, Use::Unsupported),
    kw("servicefile",               Some("PGSERVICEFILE"),         None,               false, Use::Unsupported),
    kw("sslcert",                   Some("PGSSLCERT"),             None,               false, Use::Unsupported),
    kw("sslkey",                    Some("PGSSLKEY"),              None,               false, Use::Unsupported),
    kw("sslpassword",               None,                          None,               false, Use::Unsupported),
    kw("sslcertmode",               None,                          None,               false, Use::Unsupported),
    kw("sslcrl",                    Some("PGSSLCRL"),              None,               false, Use::Unsupported),
    kw("sslcrldir",                 Some("PGSSLCRLDIR"),           None,               false, Use::Unsupported),
    kw("sslsni",                    None,                          None,               false, Use::Unsupported),
    kw("sslcompression",            None,                          None,               false, Use::Unsupported),
    kw("ssl_min_protocol_version",  None,                          None,               false, Use::Unsupported),
    kw("ssl_max_protocol_version",  None,                          None,               false, Use::Unsupported),
    kw("requiressl",                Some("PGREQUIRESSL"),          None,               false, Use::Unsupported),
    kw("require_auth",              Some("PGREQUIREAUTH"),         None,               false, Use::Unsupported),
    kw("requirepeer",               None,                          None,               false, Use::Unsupported),
    kw("gssencmode",                Some("PGGSSENCMODE"),          None,               false, Use::Unsupported),
    kw("gsslib",                    None,                          None,               false, Use::Unsupported),
    kw("gssdelegation",             None,                          None,               false, Use::Unsupported),
    kw("krbsrvname",                None,                          None,               false, Use::Unsupported),
    kw("replication",               None,                          None,               false, Use::Unsupported),
    kw("client_encoding",           None,                          None,               false, Use::Unsupported),
    kw("min_protocol_version",      None,                          None,               false, Use::Unsupported),
    kw("max_protocol_version",      None,                          None,               false, Use::Unsupported),
];

/// The keyword called `name`, supported or not.
pub(crate) fn keyword(name: &str) -> Option<&'static Keyword> {
    KEYWORDS.iter().find(|keyword| keyword.name == name)
}

/// A connection string split into keywords, in the order given; a later keyword wins.
#[derive(Clone, Default, PartialEq, Eq)]
pub(crate) struct Conninfo {
    pairs: Vec<(String, String)>,
}

impl std::fmt::Debug for Conninfo {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_map()
            .entries(self.pairs.iter().map(|(key, value)| {
                let value = if key == "password" { "***" } else { value };
                (key, value)
            }))
            .finish()
    }
}

impl Conninfo {
    /// The value of `key`, the last one when given several times.
    pub(crate) fn get(&self, key: &str) -> Option<&str> {
        self.pairs
            .iter()
            .rev()
            .find(|(k, _)| k == key)
            .map(|(_, value)| value.as_str())
    }

    fn push(&mut self, key: &str, value: impl Into<String>) -> Result<(), String> {
        match keyword(key) {
            Some(keyword) if keyword.used != Use::Unsupported => {}
            _ => return Err(unknown_keyword(key)),
        }
        self.pairs.push((key.to_owned(), value.into()));
        Ok(())
    }
}

/// The message for a keyword we do not know. Only keywords of libpq are quoted: anything else
/// may be a piece of a password whose spaces were not quoted.
fn unknown_keyword(key: &str) -> String {
    if keyword(key).is_some() {
        return format!("the connection option \"{key}\" is not supported");
    }
    let closest = KEYWORDS
        .iter()
        .filter(|known| known.used != Use::Unsupported)
        .map(|known| (edit_distance(key, known.name), known.name))
        .min()
        .filter(|(distance, _)| *distance <= 2);
    match closest {
        Some((_, known)) => format!("unknown connection option (did you mean \"{known}\"?)"),
        None => "unknown connection option (not shown: it may be part of a password; \
                 values with spaces must be in single quotes)"
            .to_owned(),
    }
}

/// Levenshtein distance, for suggestions.
fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut row: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut diagonal = row[0];
        row[0] = i + 1;
        for (j, cb) in b.iter().enumerate() {
            let above = row[j + 1];
            row[j + 1] = (above + 1)
                .min(row[j] + 1)
                .min(diagonal + usize::from(ca != *cb));
            diagonal = above;
        }
    }
    row[b.len()]
}

/// Parses a URL or a `key=value` string; an empty (or blank) string has no keywords.
pub(crate) fn parse(text: &str) -> Result<Conninfo, String> {
    let trimmed = text.trim();
    for prefix in ["postgresql://", "postgres://"] {
        if let Some(rest) = trimmed.strip_prefix(prefix) {
            return parse_url(rest);
        }
    }
    parse_key_values(text)
}

/// Quotes a value for a `key=value` string, as libpq (and tokio-postgres) read it back.
pub(crate) fn quote(value: &str) -> String {
    let mut quoted = String::with_capacity(value.len() + 2);
    quoted.push('\'');
    for c in value.chars() {
        if matches!(c, '\'' | '\\') {
            quoted.push('\\');
        }
        quoted.push(c);
    }
    quoted.push('\'');
    quoted
}

/// `[user[:password]@][host[:port][,...]][/dbname][?key=value[&...]]`, after the scheme.
fn parse_url(rest: &str) -> Result<Conninfo, String> {
    let mut info = Conninfo::default();
    let (before_query, query) = match rest.split_once('?') {
        Some((before, query)) => (before, Some(query)),
        None => (rest, None),
    };
    // The authority ends at the first '/' after the credentials (a socket path in the
    // authority must be percent-encoded, so the first '/' after the last '@' is the path).
    let (credentials, after_credentials) = match before_query.rfind('@') {
        Some(at) => (Some(&before_query[..at]), &before_query[at + 1..]),
        None => (None, before_query),
    };
    let (hostspec, path) = match after_credentials.split_once('/') {
        Some((hostspec, path)) => (hostspec, Some(path)),
        None => (after_credentials, None),
    };

    if let Some(credentials) = credentials {
        let (user, password) = match credentials.split_once(':') {
            Some((user, password)) => (user, Some(password)),
            None => (credentials, None),
        };
        if !user.is_empty() {
            info.push("user", decode(user, "the user name")?)?;
        }
        if let Some(password) = password {
            info.push("password", decode(password, "the password")?)?;
        }
    }

    if !hostspec.is_empty() {
        push_hosts(&mut info, hostspec)?;
    }

    if let Some(path) = path
        && !path.is_empty()
    {
        info.push("dbname", decode(path, "the database name")?)?;
    }

    if let Some(query) = query {
        for parameter in query.split('&').filter(|p| !p.is_empty()) {
            let Some((key, value)) = parameter.split_once('=') else {
                return Err("a URL parameter lacks '='".to_owned());
            };
            let key = decode(key, "a parameter name")?;
            let value = decode(value, "a parameter value")?;
            // JDBC's spelling, which libpq accepts too.
            if key == "ssl" && value == "true" {
                info.push("sslmode", "require")?;
            } else {
                info.push(&key, value)?;
            }
        }
    }
    Ok(info)
}

/// `host[:port],[v6]:port,…`: the URL's hosts and ports as the `host` and `port` lists.
fn push_hosts(info: &mut Conninfo, hostspec: &str) -> Result<(), String> {
    let mut hosts = Vec::new();
    let mut ports = Vec::new();
    for chunk in hostspec.split(',') {
        let (host, port) = if let Some(bracketed) = chunk.strip_prefix('[') {
            let Some((host, after)) = bracketed.split_once(']') else {
                return Err("an IPv6 address in the URL lacks its closing ']'".to_owned());
            };
            let port = match after {
                "" => None,
                _ => match after.strip_prefix(':') {
                    Some(port) => Some(port),
                    None => return Err("unexpected text after an IPv6 address".to_owned()),
                },
            };
            (host, port)
        } else {
            match chunk.split_once(':') {
                Some((host, port)) => (host, Some(port)),
                None => (chunk, None),
            }
        };
        hosts.push(decode(host, "a host name")?);
        let port = decode(port.unwrap_or(""), "a port")?;
        if !port.is_empty() && port.parse::<u16>().is_err() {
            return Err("invalid port number in the URL".to_owned());
        }
        ports.push(port);
    }
    if hosts.iter().any(|host| !host.is_empty()) {
        info.push("host", hosts.join(","))?;
    }
    if ports.iter().any(|port| !port.is_empty()) {
        info.push("port", ports.join(","))?;
    }
    Ok(())
}

fn decode(text: &str, what: &str) -> Result<String, String> {
    percent_decode(text).ok_or_else(|| format!("{what} in the URL is not valid UTF-8"))
}

/// Percent-decodes `text` (a `+` stays a `+`, as in libpq).
fn percent_decode(text: &str) -> Option<String> {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%'
            && let Some(hex) = bytes.get(i + 1..i + 3)
            && let Ok(hex) = std::str::from_utf8(hex)
            && let Ok(byte) = u8::from_str_radix(hex, 16)
        {
            out.push(byte);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

/// `key = value key='quoted \' value'`, as libpq reads it.
fn parse_key_values(text: &str) -> Result<Conninfo, String> {
    let mut info = Conninfo::default();
    let mut chars = text.chars().peekable();
    loop {
        while chars.next_if(|c| c.is_whitespace()).is_some() {}
        if chars.peek().is_none() {
            return Ok(info);
        }
        let mut key = String::new();
        while let Some(c) = chars.next_if(|c| !c.is_whitespace() && *c != '=') {
            key.push(c);
        }
        while chars.next_if(|c| c.is_whitespace()).is_some() {}
        if chars.next() != Some('=') {
            return Err("a word in the connection string has no \"=\" after it \
                        (values with spaces must be in single quotes)"
                .to_owned());
        }
        while chars.next_if(|c| c.is_whitespace()).is_some() {}
        let mut value = String::new();
        if chars.next_if_eq(&'\'').is_some() {
            loop {
                match chars.next() {
                    None => {
                        return Err(
                            "unterminated quoted string in the connection string".to_owned()
                        );
                    }
                    Some('\'') => break,
                    Some('\\') => {
                        if let Some(c) = chars.next() {
                            value.push(c);
                        }
                    }
                    Some(c) => value.push(c),
                }
            }
        } else {
            while let Some(c) = chars.next_if(|c| !c.is_whitespace()) {
                if c == '\\' {
                    if let Some(c) = chars.next() {
                        value.push(c);
                    }
                } else {
                    value.push(c);
                }
            }
        }
        info.push(&key, value)?;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pairs(text: &str) -> Vec<(String, String)> {
        parse(text).expect("parses").pairs
    }

    fn owned(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect()
    }

    #[test]
    fn reads_urls() {
        assert_eq!(
            pairs(
                "postgresql://app:p%40ss@db.example.com:6543/shop?sslmode=verify-full&sslrootcert=%2Fetc%2Fca.pem"
            ),
            owned(&[
                ("user", "app"),
                ("password", "p@ss"),
                ("host", "db.example.com"),
                ("port", "6543"),
                ("dbname", "shop"),
                ("sslmode", "verify-full"),
                ("sslrootcert", "/etc/ca.pem"),
            ])
        );
        assert_eq!(
            pairs("postgres://h1:1,[::1]:2,h3/db"),
            owned(&[("host", "h1,::1,h3"), ("port", "1,2,"), ("dbname", "db")])
        );
        assert_eq!(
            pairs("postgresql://%2Fvar%2Frun%2Fpostgresql/db"),
            owned(&[("host", "/var/run/postgresql"), ("dbname", "db")])
        );
        assert_eq!(
            pairs("postgresql:///db?host=/tmp&ssl=true"),
            owned(&[("dbname", "db"), ("host", "/tmp"), ("sslmode", "require")])
        );
        assert_eq!(pairs("postgresql://"), owned(&[]));
        // An unencoded '@' in the password: the last '@' ends the credentials.
        assert_eq!(
            pairs("postgresql://app:p@ss@host"),
            owned(&[("user", "app"), ("password", "p@ss"), ("host", "host")])
        );
    }

    #[test]
    fn reads_key_value_strings() {
        assert_eq!(
            pairs("host=db  port = 5433 user=app password='it\\'s s3cret' dbname=a\\ b"),
            owned(&[
                ("host", "db"),
                ("port", "5433"),
                ("user", "app"),
                ("password", "it's s3cret"),
                ("dbname", "a b"),
            ])
        );
        assert_eq!(pairs("   "), owned(&[]));
        assert_eq!(
            parse("host=a host=b").expect("parses").get("host"),
            Some("b")
        );
    }

    #[test]
    fn errors_never_quote_values() {
        for text in [
            "postgresql://app:s3cret/host",
            "host=db password='s3cret",
            "host=db s3cret",
            "postgresql://h/db?s3cret",
            "postgresql://h/db?password=%FF",
        ] {
            let error = parse(text).expect_err(text);
            assert!(!error.contains("s3cret"), "{text}: {error}");
        }
        assert!(
            parse("host=db sslpassword=x")
                .expect_err("unsupported")
                .contains("\"sslpassword\" is not supported")
        );
        assert!(
            parse("host=db sslmdoe=require")
                .expect_err("misspelt")
                .contains("did you mean \"sslmode\"")
        );
    }

    #[test]
    fn quotes_values_back() {
        let text = format!("password={}", quote("it's a \\ test"));
        assert_eq!(
            parse(&text).expect("parses").get("password"),
            Some("it's a \\ test")
        );
    }

    #[test]
    fn the_keyword_table_has_one_row_per_keyword_and_variable() {
        let mut names: Vec<&str> = KEYWORDS.iter().map(|keyword| keyword.name).collect();
        let mut vars: Vec<&str> = KEYWORDS.iter().filter_map(|keyword| keyword.env).collect();
        let (name_count, var_count) = (names.len(), vars.len());
        names.sort_unstable();
        names.dedup();
        vars.sort_unstable();
        vars.dedup();
        assert_eq!(names.len(), name_count, "a keyword is listed twice");
        assert_eq!(vars.len(), var_count, "a variable is listed twice");
        assert!(vars.iter().all(|var| var.starts_with("PG")), "{vars:?}");
        // Only variables of keywords viewkeeper reads itself are enough to connect.
        for keyword in KEYWORDS.iter().filter(|keyword| keyword.names_target) {
            assert!(keyword.env.is_some(), "{}", keyword.name);
            assert!(
                matches!(keyword.used, Use::Servers | Use::Login | Use::Tls),
                "{}",
                keyword.name
            );
        }
    }

    #[test]
    fn the_keyword_table_decides_what_a_string_may_say() {
        for keyword in KEYWORDS {
            let text = format!("{}=x", keyword.name);
            match keyword.used {
                Use::Unsupported => assert_eq!(
                    parse(&text).expect_err(&text),
                    format!(
                        "the connection option \"{}\" is not supported",
                        keyword.name
                    )
                ),
                _ => assert_eq!(parse(&text).expect(&text).get(keyword.name), Some("x")),
            }
        }
        // Suggestions come from the supported keywords only.
        assert!(
            parse("sslkeys=x")
                .expect_err("misspelt")
                .contains("not shown")
        );
    }

    #[test]
    fn tokio_postgres_knows_every_keyword_passed_on_to_it() {
        for keyword in KEYWORDS
            .iter()
            .filter(|keyword| keyword.used == Use::Passed)
        {
            if let Err(error) = format!("{}=x", keyword.name).parse::<tokio_postgres::Config>() {
                let text = crate::db::describe(&error);
                assert!(!text.contains("unknown option"), "{}: {text}", keyword.name);
            }
        }
    }
}
