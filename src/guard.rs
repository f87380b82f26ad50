//! `viewkeeper guard`: an event trigger on `sql_drop` that records every drop of a managed
//! object (when, by which role, and the statement) in the state schema and notifies
//! listeners, so `plan` and `status` can say why an object is missing and `schedule` can
//! put it back within seconds.

use chrono::{DateTime, Utc};
use miette::Diagnostic;
use tokio_postgres::GenericClient;
use tokio_postgres::error::SqlState;

use crate::db::describe;
use crate::name::QualifiedName;
use crate::sql::{quote_ident, quote_literal};
use crate::state;

/// Table of recorded drops, inside the state schema.
pub const DROP_TABLE: &str = "drop_log";
/// The channel the guard notifies on, with `schema.name` as payload.
pub const CHANNEL: &str = "viewkeeper_dropped";
/// Set to `on` for the length of viewkeeper's own transactions, so its drops go unrecorded.
pub const APPLYING_SETTING: &str = "viewkeeper.applying";
/// Set to `on` (through `PGOPTIONS`) in the sessions of a migration that `viewkeeper run`
/// starts: a protecting guard lets them drop managed views, which viewkeeper restores after.
pub const MIGRATING_SETTING: &str = "viewkeeper.migrating";
const TRIGGER: &str = "viewkeeper_guard";
const FUNCTION: &str = "record_drop";
/// With `--protect`: the event trigger that notes what viewkeeper creates, its function, and
/// the table of managed views (by OID) it keeps in the guard's own schema.
const CREATE_TRIGGER: &str = "viewkeeper_guard_create";
const CREATE_FUNCTION: &str = "record_create";
const PROTECTED_TABLE: &str = "protected_object";

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

/// The guard's own schema, `<state-schema>_guard`. It is kept apart from the state schema,
/// which the application role owns: the trigger function runs with its installer's rights
/// (a superuser), so nothing it touches may be changeable by anyone else.
pub fn guard_schema(state_schema: &str) -> String {
    format!("{state_schema}_guard")
}

/// `"<state>_guard"."drop_log"`.
pub fn log_table(state_schema: &str) -> String {
    state::table(&guard_schema(state_schema), DROP_TABLE)
}

/// SQL creating the guard's schema, log table, trigger function and event trigger. The
/// function reads nothing but PostgreSQL's own list of dropped objects, the session's
/// settings and the guard's own tables, and writes only to those tables, so it cannot be
/// steered by tables other roles own.
///
/// With `protect`, a second event trigger notes the views viewkeeper creates (its sessions
/// set [`APPLYING_SETTING`]), and a drop outside viewkeeper and `viewkeeper run` that would
/// remove one of them raises, which aborts the dropping transaction. The settings are the
/// sessions' own, so this keeps accidents out (a migration's CASCADE), not a role that
/// wants to drop: such a role can set them, as it could drop the guard's views anyway.
fn install_sql(state_schema: &str, protect: bool) -> String {
    let schema = quote_ident(&guard_schema(state_schema));
    let log = log_table(state_schema);
    let protected = state::table(&guard_schema(state_schema), PROTECTED_TABLE);
    let function = format!("{schema}.{}", quote_ident(FUNCTION));
    let create_function = format!("{schema}.{}", quote_ident(CREATE_FUNCTION));
    // Dropped views leave the protected list, so a reused OID is never protected by mistake.
    let forget_own = if protect {
        format!(
            "DELETE FROM {protected} p USING pg_catalog.pg_event_trigger_dropped_objects() d
        WHERE p.relid = d.objid;"
        )
    } else {
        String::new()
    };
    let refuse = if protect {
        format!(
                "IF coalesce(current_setting({migrating}, true), '') <> 'on' THEN
        SELECT string_agg(pg_catalog.quote_ident(d.schema_name) || '.' ||
                          pg_catalog.quote_ident(d.object_name), ', '
                          ORDER BY d.schema_name, d.object_name)
        INTO lost
        FROM pg_catalog.pg_event_trigger_dropped_objects() d
        JOIN {protected} p ON p.relid = d.objid;
        IF lost IS NOT NULL THEN
            RAISE EXCEPTION 'viewkeeper''s guard refuses to drop managed views: %', lost
                USING ERRCODE = 'dependent_objects_still_exist',
                      HINT = 'run the migration through `viewkeeper run -- COMMAND`, which restores them after it; or SET {migrating_name} = on in this session, drop, and run `viewkeeper reconcile` after';
        END IF;
    END IF;
    {forget_own}",
                migrating = quote_literal(MIGRATING_SETTING),
                migrating_name = MIGRATING_SETTING,
            )
    } else {
        String::new()
    };
    let body = format!(
        "
DECLARE
    dropped record;
    lost text;
BEGIN
    IF current_setting({applying}, true) = 'on' THEN
        {forget_own}
        RETURN;
    END IF;
    {refuse}
    FOR dropped IN
        SELECT d.schema_name, d.object_name, d.object_type
        FROM pg_catalog.pg_event_trigger_dropped_objects() d
        WHERE d.object_type IN ('view', 'materialized view') AND NOT d.is_temporary
    LOOP
        INSERT INTO {log} (role_name, schema_name, object_name, object_type, statement)
        VALUES (session_user, dropped.schema_name, dropped.object_name, dropped.object_type,
                pg_catalog.current_query());
        PERFORM pg_catalog.pg_notify({channel}, dropped.schema_name || '.' || dropped.object_name);
    END LOOP;
END
",
        applying = quote_literal(APPLYING_SETTING),
        channel = quote_literal(CHANNEL),
    );
    format!(
        "CREATE SCHEMA IF NOT EXISTS {schema};
GRANT USAGE ON SCHEMA {schema} TO PUBLIC;
CREATE TABLE IF NOT EXISTS {log} (
    id bigserial PRIMARY KEY,
    dropped_at timestamptz NOT NULL DEFAULT clock_timestamp(),
    role_name text NOT NULL,
    schema_name text NOT NULL,
    object_name text NOT NULL,
    object_type text NOT NULL,
    statement text
);
-- Every role may read who dropped what; only the trigger function writes.
GRANT SELECT ON {log} TO PUBLIC;
-- Runs as its owner so any role's drop can be recorded; a fixed search_path keeps it safe.
CREATE OR REPLACE FUNCTION {function}() RETURNS event_trigger
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp
AS {body};
REVOKE ALL ON FUNCTION {function}() FROM PUBLIC;
DROP EVENT TRIGGER IF EXISTS {trigger};
CREATE EVENT TRIGGER {trigger} ON sql_drop EXECUTE FUNCTION {function}();
DROP EVENT TRIGGER IF EXISTS {create_trigger};
DROP FUNCTION IF EXISTS {create_function}();
{protection}",
        body = quote_literal(&body),
        trigger = quote_ident(TRIGGER),
        create_trigger = quote_ident(CREATE_TRIGGER),
        protection = if protect {
            protection_sql(state_schema)
        } else {
            String::new()
        },
    )
}

/// The table of managed views by OID, and the trigger that adds what viewkeeper creates.
fn protection_sql(state_schema: &str) -> String {
    let schema = quote_ident(&guard_schema(state_schema));
    let protected = state::table(&guard_schema(state_schema), PROTECTED_TABLE);
    let function = format!("{schema}.{}", quote_ident(CREATE_FUNCTION));
    let body = format!(
        "
BEGIN
    IF current_setting({applying}, true) = 'on' THEN
        INSERT INTO {protected} (relid)
        SELECT c.objid FROM pg_catalog.pg_event_trigger_ddl_commands() c
        WHERE c.object_type IN ('view', 'materialized view')
        ON CONFLICT DO NOTHING;
    END IF;
END
",
        applying = quote_literal(APPLYING_SETTING),
    );
    format!(
        "CREATE TABLE IF NOT EXISTS {protected} (relid oid PRIMARY KEY);
GRANT SELECT ON {protected} TO PUBLIC;
TRUNCATE {protected};
CREATE FUNCTION {function}() RETURNS event_trigger
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp
AS {body};
REVOKE ALL ON FUNCTION {function}() FROM PUBLIC;
CREATE EVENT TRIGGER {trigger} ON ddl_command_end
    WHEN TAG IN ('CREATE VIEW', 'CREATE MATERIALIZED VIEW') EXECUTE FUNCTION {function}();",
        body = quote_literal(&body),
        trigger = quote_ident(CREATE_TRIGGER),
    )
}

/// Protects the views viewkeeper manages now, read from its state table. That table belongs
/// to the application role, so it is read only when it is a plain table with text name
/// columns: nothing in the read can run code that role wrote (a view's functions, a cast).
async fn protect_managed(
    transaction: &tokio_postgres::Transaction<'_>,
    state_schema: &str,
) -> Result<(), tokio_postgres::Error> {
    let objects = state::table(state_schema, state::OBJECTS_TABLE);
    let exists: bool = transaction
        .query_one("SELECT to_regclass($1) IS NOT NULL", &[&objects])
        .await?
        .get(0);
    if !exists {
        return Ok(());
    }
    // Held until commit, so the checks below stay true for the read.
    transaction
        .batch_execute(&format!("LOCK TABLE {objects} IN ACCESS SHARE MODE"))
        .await?;
    // language=SQL
    let plain: bool = transaction
        .query_one(
            "SELECT c.relkind = 'r' AND NOT c.relrowsecurity
                    AND (SELECT count(*) FROM pg_catalog.pg_attribute a
                         WHERE a.attrelid = c.oid AND NOT a.attisdropped
                           AND a.attname IN ('schema_name', 'object_name')
                           AND a.atttypid = 'pg_catalog.text'::pg_catalog.regtype) = 2
             FROM pg_catalog.pg_class c WHERE c.oid = to_regclass($1)",
            &[&objects],
        )
        .await?
        .get(0);
    if !plain {
        return Ok(());
    }
    let protected = state::table(&guard_schema(state_schema), PROTECTED_TABLE);
    // language=SQL
    transaction
        .execute(
            &format!(
                "INSERT INTO {protected} (relid)
                 SELECT c.oid FROM {objects} m
                 JOIN pg_catalog.pg_namespace n ON n.nspname = m.schema_name
                 JOIN pg_catalog.pg_class c ON c.relnamespace = n.oid AND c.relname = m.object_name
                 WHERE c.relkind IN ('v', 'm')
                 ON CONFLICT DO NOTHING"
            ),
            &[],
        )
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
        .batch_execute("SET LOCAL search_path = pg_catalog, pg_temp")
        .await
        .map_err(database("cannot set the search_path"))?;
    let owner = transaction
        .query_opt(
            "SELECT pg_get_userbyid(nspowner)::text, current_user::text FROM pg_namespace WHERE nspname = $1",
            &[&guard_schema(schema)],
        )
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
        .batch_execute(&install_sql(schema, protect))
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
    let guard = quote_ident(&guard_schema(schema));
    let sql = format!(
        "DROP EVENT TRIGGER IF EXISTS {};\nDROP FUNCTION IF EXISTS {guard}.{}();
DROP EVENT TRIGGER IF EXISTS {};\nDROP FUNCTION IF EXISTS {guard}.{}();",
        quote_ident(TRIGGER),
        quote_ident(FUNCTION),
        quote_ident(CREATE_TRIGGER),
        quote_ident(CREATE_FUNCTION)
    );
    match client.batch_execute(&sql).await {
        Err(error) if error.code() == Some(&SqlState::INSUFFICIENT_PRIVILEGE) => {
            Err(GuardError::NotSuperuser(describe(&error)))
        }
        other => other.map_err(database("cannot uninstall the guard")),
    }
}

/// Whether the event trigger is installed and enabled.
pub async fn installed(client: &impl GenericClient) -> Result<bool, tokio_postgres::Error> {
    let row = client
        .query_one(
            "SELECT count(*) > 0 FROM pg_event_trigger WHERE evtname = $1 AND evtenabled <> 'D'",
            &[&TRIGGER],
        )
        .await?;
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
        .query_one("SELECT to_regclass($1) IS NOT NULL", &[&log])
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
    let log = log_table(schema);
    // language=SQL
    let sql = if latest_only {
        format!(
            "SELECT * FROM (SELECT DISTINCT ON (schema_name, object_name)
                    schema_name, object_name, dropped_at, role_name, coalesce(statement, '')
                FROM {log} ORDER BY schema_name, object_name, dropped_at DESC, id DESC) latest
             ORDER BY dropped_at DESC LIMIT $1"
        )
    } else {
        format!(
            "SELECT schema_name, object_name, dropped_at, role_name, coalesce(statement, '')
             FROM {log} ORDER BY dropped_at DESC, id DESC LIMIT $1"
        )
    };
    Ok(client
        .query(&sql, &[&limit])
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
