//! Connecting to PostgreSQL, and turning its errors into readable messages with the
//! password masked.

use std::str::FromStr;

use tokio_postgres::{Client, NoTls};

use crate::sql::quote_ident;

/// Could not reach or talk to the database.
#[derive(Debug, thiserror::Error, miette::Diagnostic)]
#[non_exhaustive]
pub enum ConnectError {
    #[error("no database to connect to")]
    #[diagnostic(help("pass --database-url URL or set DATABASE_URL"))]
    MissingUrl,
    #[error("invalid database URL {url}: {message}")]
    InvalidUrl { url: String, message: String },
    #[error("cannot connect to {url}: {message}")]
    Connect { url: String, message: String },
}

/// Connects and sets the session's `search_path`, so unqualified names in queries, and the
/// definitions PostgreSQL reports back, mean the same thing on every run.
pub async fn connect(url: &str, search_path: &[String]) -> Result<Client, ConnectError> {
    let masked = mask_password(url);
    let mut config =
        tokio_postgres::Config::from_str(url).map_err(|error| ConnectError::InvalidUrl {
            url: masked.clone(),
            message: strip_secrets(&error.to_string(), url),
        })?;
    config.application_name("viewkeeper");
    let (client, connection) =
        config
            .connect(NoTls)
            .await
            .map_err(|error| ConnectError::Connect {
                url: masked.clone(),
                message: describe(&error),
            })?;
    tokio::spawn(async move {
        if let Err(error) = connection.await {
            tracing::debug!("connection closed: {error}");
        }
    });
    let path: Vec<String> = search_path
        .iter()
        .map(|schema| quote_ident(schema))
        .collect();
    client
        .batch_execute(&format!("SET search_path TO {}", path.join(", ")))
        .await
        .map_err(|error| ConnectError::Connect {
            url: masked,
            message: describe(&error),
        })?;
    Ok(client)
}

/// The connection target for messages and logs, rebuilt from the parsed settings so no
/// form of connection string (URL, multi-host, socket, `key=value`, quoted values) can leak
/// its password: a password shows as `***`, and a string that cannot be parsed as a whole
/// shows as `<database URL>`.
pub fn mask_password(url: &str) -> String {
    let Ok(config) = tokio_postgres::Config::from_str(url) else {
        return "<database URL>".to_owned();
    };
    let mut text = String::from("postgresql://");
    if let Some(user) = config.get_user() {
        text.push_str(user);
        if config.get_password().is_some() {
            text.push_str(":***");
        }
        text.push('@');
    }
    let ports = config.get_ports();
    let hosts: Vec<String> = config
        .get_hosts()
        .iter()
        .enumerate()
        .map(|(i, host)| {
            let host = match host {
                tokio_postgres::config::Host::Tcp(name) => name.clone(),
                tokio_postgres::config::Host::Unix(path) => path.display().to_string(),
            };
            match ports.get(i).or(ports.first()) {
                Some(port) => format!("{host}:{port}"),
                None => host,
            }
        })
        .collect();
    text.push_str(&hosts.join(","));
    if let Some(dbname) = config.get_dbname() {
        text.push('/');
        text.push_str(dbname);
    }
    text
}

fn strip_secrets(message: &str, url: &str) -> String {
    match url::Url::parse(url)
        .ok()
        .and_then(|u| u.password().map(str::to_owned))
    {
        Some(password) if !password.is_empty() => message.replace(&password, "***"),
        _ => message.to_owned(),
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn masks_passwords_in_every_form_of_connection_string() {
        for (input, expected) in [
            (
                "postgresql://app:s3cret@db.example.com:5432/shop",
                "postgresql://app:***@db.example.com:5432/shop",
            ),
            (
                "postgres://app@host/db?password=s3cret&sslmode=require",
                "postgresql://app:***@host:5432/db",
            ),
            (
                "postgresql://app:s3cret@10.0.0.1:1,10.0.0.2:2/db",
                "postgresql://app:***@10.0.0.1:1,10.0.0.2:2/db",
            ),
            (
                "postgres://app:s3cret@/db?host=/var/run/postgresql",
                "postgresql://app:***@/var/run/postgresql/db",
            ),
            (
                "host=db user=app password='it\\'s s3cret' dbname=shop",
                "postgresql://app:***@db/shop",
            ),
            ("postgresql://app:s3cret@h:notaport/db", "<database URL>"),
            ("postgresql://app@host/db", "postgresql://app@host:5432/db"),
        ] {
            let masked = mask_password(input);
            assert_eq!(masked, expected, "{input}");
            assert!(!masked.contains("s3cret"));
        }
    }
}
