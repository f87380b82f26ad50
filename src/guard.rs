//! `viewkeeper guard`: an event trigger on `sql_drop` that records every drop of a managed
//! object (when, by which role, and the statement) in the state schema and notifies
//! listeners, so `plan` and `status` can say why an object is missing and `schedule` can
//! put it back within seconds.

use chrono::{DateTime, Utc};
use miette::Diagnostic;
use tokio_postgres::GenericClient;
use tokio_postgres::error::SqlState;
use tokio_postgres::types::Type;

use crate::db::describe;
use crate::name::QualifiedName;
use crate::sql::guard as sql;

pub use crate::sql::guard::{
    APPLYING_SETTING, CHANNEL, DROP_TABLE, MIGRATING_SETTING, guard_schema, log_table,
};

/// A recorded drop.
#[derive(Debug, Clone, PartialEq, Eq, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DropRecord {
    pub object: QualifiedName,
    pub dropped_at: DateTime<Utc>,
    pub role: String,
    pub statement: String,
}

impl DropRecord {
    /// `dropped at 2026-11-26 21:40:05 UTC by role app: ALTER TABLE … CASCADE`
    pub fn describe(&self) -> String {
        format!(
            "dropped at {} by role {}: {}",
            self.dropped_at.format("%Y-%m-%d %H:%M:%S UTC"),
            self.role,
            one_line(&self.statement)
        )
    }
}

fn one_line(statement: &str) -> String {
    let words: Vec<&str> = statement.split_whitespace().collect();
    let text = words.join(" ");
    if text.chars().count() > 200 {
        format!("{}…", text.chars().take(200).collect::<String>())
    } else {
        text
    }
}

/// The guard could not be installed or read.
#[derive(Debug, thiserror::Error, Diagnostic)]
#[non_exhaustive]
pub enum GuardError {
    #[error("installing the guard needs a superuser: {0}")]
    #[diagnostic(help(
        "event triggers can only be created by a superuser (on Amazon RDS and Cloud SQL, \
         a member of rds_superuser / cloudsqlsuperuser); run `viewkeeper guard install` as one"
    ))]
    NotSuperuser(String),
    #[error("schema {schema} belongs to {owner}, not to the role installing the guard")]
    #[diagnostic(help(
        "the guard's trigger runs with its installer's rights, so its schema must belong to \
         that role: drop the schema or install as its owner"
    ))]
    ForeignSchema { schema: String, owner: String },
    #[error("{context}: {message}")]
    Database {
        context: &'static str,
        message: String,
    },
}

fn database(context: &'static str) -> impl Fn(tokio_postgres::Error) -> GuardError {
    move |error| GuardError::Database {
        context,
        message: describe(&error),
    }
}

/// Protects the views viewkeeper manages now, read from its state table. That table belongs
/// to the application role, so it is read only when it is a plain table with text name
/// columns: nothing in the read can run code that role wrote (a view's functions, a cast).
async fn protect_managed(
    transaction: &tokio_postgres::Transaction<'_>,
    state_schema: &str,
) -> Result<(), tokio_postgres::Error> {
    let objects = sql::managed_objects(state_schema);
    let exists: bool = transaction
        .query_one(crate::sql::state::EXISTS, &[&objects])
        .await?
        .get(0);
    if !exists {
        return Ok(());
    }
    // Held until commit, so the checks below stay true for the read.
    transaction
        .batch_execute(&sql::lock_for_reading(&objects))
        .await?;
    let plain: bool = transaction
        .query_one(sql::IS_PLAIN_STATE_TABLE, &[&objects])
        .await?
        .get(0);
    if !plain {
        return Ok(());
    }
    transaction
        .execute(&sql::protect_managed(state_schema), &[])
        .await?;
    Ok(())
}

/// Installs (or reinstalls) the guard, in one transaction. Refuses when the guard's schema
/// exists and belongs to another role, since that role could then change what the
/// superuser-run trigger does.
pub async fn install(
    client: &mut tokio_postgres::Client,
    schema: &str,
    protect: bool,
) -> Result<(), GuardError> {
    let transaction = client
        .transaction()
        .await
        .map_err(database("cannot start a transaction"))?;
    // Nothing in the application's schemas is looked up while the installer runs.
    transaction
        .batch_execute(sql::SAFE_SEARCH_PATH)
        .await
        .map_err(database("cannot set the search_path"))?;
    let owner = transaction
        .query_opt(sql::SCHEMA_OWNER, &[&guard_schema(schema)])
        .await
        .map_err(database("cannot read the guard's schema"))?;
    if let Some(row) = owner {
        let (owner, user): (String, String) = (row.get(0), row.get(1));
        if owner != user {
            return Err(GuardError::ForeignSchema {
                schema: guard_schema(schema),
                owner,
            });
        }
    }
    if let Err(error) = transaction
        .batch_execute(&sql::install(schema, protect))
        .await
    {
        if error.code() == Some(&SqlState::INSUFFICIENT_PRIVILEGE) {
            return Err(GuardError::NotSuperuser(describe(&error)));
        }
        return Err(database("cannot install the guard")(error));
    }
    if protect {
        protect_managed(&transaction, schema)
            .await
            .map_err(database("cannot read the managed views"))?;
    }
    transaction
        .commit()
        .await
        .map_err(database("cannot commit"))
}

/// Removes the event trigger and its function; the log of past drops stays.
pub async fn uninstall(
    client: &mut tokio_postgres::Client,
    schema: &str,
) -> Result<(), GuardError> {
    match client.batch_execute(&sql::uninstall(schema)).await {
        Err(error) if error.code() == Some(&SqlState::INSUFFICIENT_PRIVILEGE) => {
            Err(GuardError::NotSuperuser(describe(&error)))
        }
        other => other.map_err(database("cannot uninstall the guard")),
    }
}

/// Whether the event trigger is installed and enabled.
pub async fn installed(client: &impl GenericClient) -> Result<bool, tokio_postgres::Error> {
    let row = client.query_one(sql::INSTALLED, &[&sql::TRIGGER]).await?;
    Ok(row.get(0))
}

/// Recorded drops, newest first; `latest_only` keeps the newest per object. Empty when the
/// guard was never installed.
pub async fn read_log(
    client: &impl GenericClient,
    schema: &str,
    latest_only: bool,
    limit: i64,
) -> Result<Vec<DropRecord>, tokio_postgres::Error> {
    let log = log_table(schema);
    let exists: bool = client
        .query_one(crate::sql::state::EXISTS, &[&log])
        .await?
        .get(0);
    if !exists {
        return Ok(Vec::new());
    }
    query_log(client, schema, latest_only, limit).await
}

/// [`read_log`] for a caller that knows the table exists.
pub(crate) async fn query_log(
    client: &impl GenericClient,
    schema: &str,
    latest_only: bool,
    limit: i64,
) -> Result<Vec<DropRecord>, tokio_postgres::Error> {
    Ok(client
        .query_typed(
            &sql::select_log(schema, latest_only),
            &[(&limit, Type::INT8)],
        )
        .await?
        .into_iter()
        .map(|row| DropRecord {
            object: QualifiedName::new(row.get::<_, String>(0), row.get::<_, String>(1)),
            dropped_at: row.get(2),
            role: row.get(3),
            statement: row.get(4),
        })
        .collect())
}
