//! The one place passwords are hidden before anything reaches a person: a connection target
//! is shown rebuilt from its parsed keywords (never as the text given), and a message that
//! may echo a password has every known password replaced by `***`.

use std::borrow::Cow;

use super::conninfo;

/// What a message shows of a connection target: `postgresql://user:***@host:port/db`, with
/// `?sslmode=…&sslrootcert=…` when those were given.
pub(crate) struct Shown<'a> {
    pub(crate) user: Option<&'a str>,
    pub(crate) has_password: bool,
    /// `host:port` each.
    pub(crate) hosts: &'a [String],
    pub(crate) dbname: Option<&'a str>,
    pub(crate) sslmode: Option<&'a str>,
    pub(crate) sslrootcert: Option<Cow<'a, str>>,
}

impl Shown<'_> {
    /// The masked URL: a password shows as `***` whatever it is.
    pub(crate) fn render(&self) -> String {
        let mut text = String::from("postgresql://");
        if let Some(user) = self.user {
            text.push_str(user);
            if self.has_password {
                text.push_str(":***");
            }
            text.push('@');
        }
        text.push_str(&self.hosts.join(","));
        if let Some(dbname) = self.dbname {
            text.push('/');
            text.push_str(dbname);
        }
        let mut query = Vec::new();
        if let Some(mode) = self.sslmode {
            query.push(format!("sslmode={mode}"));
        }
        if let Some(root) = &self.sslrootcert {
            query.push(format!("sslrootcert={root}"));
        }
        if !query.is_empty() {
            text.push('?');
            text.push_str(&query.join("&"));
        }
        text
    }
}

/// The connection target for messages and logs, rebuilt from the parsed string so no form
/// of connection string (URL, multi-host, socket, `key=value`, quoted or percent-encoded
/// values) can leak its password: a password shows as `***`, and a string that cannot be
/// parsed as a whole shows as `<database URL>`. `sslmode` and `sslrootcert` show when given.
pub fn mask_password(url: &str) -> String {
    let Ok(info) = conninfo::parse(url) else {
        return "<database URL>".to_owned();
    };
    let list = |key: &str| -> Vec<&str> {
        info.get(key)
            .map(|value| value.split(',').collect())
            .unwrap_or_default()
    };
    let ports = list("port");
    let hosts = if info.get("host").is_some() {
        list("host")
    } else {
        list("hostaddr")
    };
    let hosts: Vec<String> = hosts
        .iter()
        .enumerate()
        .map(|(i, host)| {
            let host = if host.contains(':') && !host.starts_with('/') {
                format!("[{host}]")
            } else {
                (*host).to_owned()
            };
            match ports.get(i).or(ports.first()).filter(|p| !p.is_empty()) {
                Some(port) => format!("{host}:{port}"),
                None => host,
            }
        })
        .collect();
    Shown {
        user: info.get("user"),
        has_password: info.get("password").is_some(),
        hosts: &hosts,
        dbname: info.get("dbname"),
        sslmode: info.get("sslmode"),
        sslrootcert: info.get("sslrootcert").map(Into::into),
    }
    .render()
}

/// `message` with every one of `secrets` (the passwords tried) replaced by `***`, for
/// messages that come from elsewhere and may echo one.
pub(crate) fn hide_secrets(message: &str, secrets: &[String]) -> String {
    secrets
        .iter()
        .filter(|secret| !secret.is_empty())
        .fold(message.to_owned(), |text, secret| {
            text.replace(secret.as_str(), "***")
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn assert_masked(input: &str, expected: &str) {
        let masked = mask_password(input);
        assert_eq!(masked, expected, "{input}");
        assert!(!masked.contains("s3cret"), "{input}: {masked}");
    }

    #[test]
    fn masks_passwords_in_every_form_of_connection_string() {
        for (input, expected) in [
            (
                "postgresql://app:s3cret@db.example.com:5432/shop",
                "postgresql://app:***@db.example.com:5432/shop",
            ),
            (
                "postgres://app@host/db?password=s3cret&sslmode=require",
                "postgresql://app:***@host/db?sslmode=require",
            ),
            (
                "postgresql://app:s3cret@h/db?sslmode=verify-full&sslrootcert=/etc/ca.pem",
                "postgresql://app:***@h/db?sslmode=verify-full&sslrootcert=/etc/ca.pem",
            ),
            (
                "host=::1 port=1 user=app password=s3cret",
                "postgresql://app:***@[::1]:1",
            ),
            (
                "postgresql://app:s3cret@10.0.0.1:1,10.0.0.2:2/db",
                "postgresql://app:***@10.0.0.1:1,10.0.0.2:2/db",
            ),
            (
                "postgres://app:s3cret@/db?host=/var/run/postgresql",
                "postgresql://app:***@/var/run/postgresql/db",
            ),
            ("hostaddr=10.0.0.9 password=s3cret", "postgresql://10.0.0.9"),
            ("postgresql://app:s3cret@h:notaport/db", "<database URL>"),
            ("postgresql://app@host/db", "postgresql://app@host/db"),
            ("postgresql://app:s3cret/db", "<database URL>"),
        ] {
            assert_masked(input, expected);
        }
    }

    #[test]
    fn masks_passwords_in_url_userinfo() {
        // An unencoded '@' in the password: the last '@' ends the userinfo.
        assert_masked(
            "postgresql://app:s3cret@x@db/shop",
            "postgresql://app:***@db/shop",
        );
        // A colon inside the password: only the first one separates the user.
        assert_masked(
            "postgresql://app:s3cret:more@db/shop",
            "postgresql://app:***@db/shop",
        );
        // An empty password is still a password.
        assert_masked("postgresql://app:@db/shop", "postgresql://app:***@db/shop");
    }

    #[test]
    fn masks_percent_encoded_passwords() {
        for input in [
            "postgresql://app:s3cret%40%3A%2F%25@db/shop",
            "postgresql://app@db/shop?password=s3cret%26x%3Dy",
            "postgresql://app:%73%33%63%72%65%74@db/shop",
        ] {
            assert_masked(input, "postgresql://app:***@db/shop");
            assert!(!mask_password(input).contains("%73"), "{input}");
        }
        // Percent-encoding that is not UTF-8 cannot be parsed: nothing of it shows.
        assert_masked("postgresql://app:s3cret%FF@db/shop", "<database URL>");
    }

    #[test]
    fn masks_key_value_passwords_with_quotes_and_escapes() {
        for input in [
            "host=db user=app password='it\\'s s3cret' dbname=shop",
            "host=db user=app password = 's3cret with spaces' dbname=shop",
            "host=db user=app password=s3cret\\ and\\ escapes dbname=shop",
            "host=db user=app password='back\\\\slash s3cret' dbname=shop",
            "password=first host=db user=app password=s3cret dbname=shop",
        ] {
            assert_masked(input, "postgresql://app:***@db/shop");
        }
        // An unterminated quote or an unquoted space: the string is not shown at all.
        assert_masked("host=db password='s3cret", "<database URL>");
        assert_masked("host=db password=two s3cret", "<database URL>");
    }

    #[test]
    fn hides_every_password_tried_in_messages() {
        let secrets = ["s3cret".to_owned(), String::new(), "other".to_owned()];
        assert_eq!(
            hide_secrets("bad s3cret, bad other, s3cret again", &secrets),
            "bad ***, bad ***, *** again"
        );
        // An empty password hides nothing (it would match everywhere).
        assert_eq!(hide_secrets("unchanged", &[String::new()]), "unchanged");
    }
}
