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

/// The URL with any password replaced by `***`, for every message and log line.
pub fn mask_password(url: &str) -> String {
    if let Ok(mut parsed) = url::Url::parse(url)
        && matches!(parsed.scheme(), "postgres" | "postgresql")
    {
        if parsed.password().is_some() && parsed.set_password(Some("***")).is_err() {
            return "<database URL>".to_owned();
        }
        // Query parameters may also carry a password (`?password=…`).
        let pairs: Vec<(String, String)> = parsed
            .query_pairs()
            .map(|(k, v)| {
                let v = if k == "password" {
                    "***".to_owned()
                } else {
                    v.into_owned()
                };
                (k.into_owned(), v)
            })
            .collect();
        if !pairs.is_empty() {
            parsed.query_pairs_mut().clear().extend_pairs(pairs);
        }
        return parsed.to_string();
    }
    // key=value form: mask the value of `password`, quoted or not.
    let mut masked = String::new();
    let mut rest = url;
    while let Some(start) = rest.find("password") {
        let (before, after) = rest.split_at(start);
        masked.push_str(before);
        let after_key = &after["password".len()..];
        let trimmed = after_key.trim_start();
        if let Some(value) = trimmed.strip_prefix('=') {
            let value = value.trim_start();
            let end = if let Some(quoted) = value.strip_prefix('\'') {
                quoted.find('\'').map_or(value.len(), |i| i + 2)
            } else {
                value.find(char::is_whitespace).unwrap_or(value.len())
            };
            masked.push_str("password=***");
            rest = &value[end..];
        } else {
            masked.push_str("password");
            rest = after_key;
        }
    }
    masked.push_str(rest);
    masked
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
    fn masks_passwords_in_urls_and_key_value_strings() {
        assert_eq!(
            mask_password("postgresql://app:s3cret@db.example.com:5432/shop"),
            "postgresql://app:***@db.example.com:5432/shop"
        );
        assert_eq!(
            mask_password("postgres://app@host/db?password=s3cret&sslmode=require"),
            "postgres://app@host/db?password=***&sslmode=require"
        );
        assert_eq!(
            mask_password("host=db user=app password=s3cret dbname=shop"),
            "host=db user=app password=*** dbname=shop"
        );
        assert_eq!(
            mask_password("host=db password = 'a b' dbname=shop"),
            "host=db password=*** dbname=shop"
        );
        assert_eq!(
            mask_password("postgresql://app@host/db"),
            "postgresql://app@host/db"
        );
    }
}
