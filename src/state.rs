//! viewkeeper's own schema: which objects it manages, what it applied, and refresh history.
//!
//! The schema is created on first use by `reconcile`, idempotently, inside the same
//! transaction as the DDL it describes, so the record can never disagree with the database.
//! `plan` only reads: a missing schema simply means nothing is managed yet.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use tokio_postgres::GenericClient;

use crate::name::QualifiedName;
use crate::project::Kind;
pub use crate::project::query_hash;
use crate::sql::quote_ident;

/// Table of managed objects, inside the configured state schema.
pub const OBJECTS_TABLE: &str = "managed_object";
/// Table of refreshes, inside the configured state schema.
pub const REFRESH_TABLE: &str = "refresh_log";
/// At most one row: `run --drop-first` dropped the managed views and no reconcile has
/// restored them yet. Written in the transaction of the drops, cleared in the one that
/// restores, so a killed run leaves a record the next command reports.
pub const RESTORE_OWED_TABLE: &str = "restore_owed";

/// What viewkeeper recorded about one object the last time it applied it.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ManagedObject {
    pub name: QualifiedName,
    pub kind: Kind,
    /// The declared query as applied (normalised text).
    pub query: String,
    pub query_sha256: String,
    /// `pg_get_viewdef` right after viewkeeper applied it: a different live definition means
    /// someone changed the object outside viewkeeper.
    pub applied_definition: String,
    #[serde(default)]
    pub applied_indexes: Vec<AppliedIndex>,
    #[serde(default)]
    pub applied_at: DateTime<Utc>,
}

/// An index as viewkeeper created it: the statement it ran and what PostgreSQL reported.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AppliedIndex {
    pub name: String,
    pub sql: String,
    pub definition: String,
}

/// Everything in the state table, by name.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(transparent)]
pub struct State {
    pub objects: BTreeMap<QualifiedName, ManagedObject>,
}

/// `"schema"."table"` for a state table.
pub(crate) fn table(schema: &str, table: &str) -> String {
    format!("{}.{}", quote_ident(schema), quote_ident(table))
}

/// DDL creating the state schema and its tables when missing.
pub(crate) fn ensure_schema_sql(schema: &str) -> String {
    let objects = table(schema, OBJECTS_TABLE);
    let refreshes = table(schema, REFRESH_TABLE);
    let restore_owed = table(schema, RESTORE_OWED_TABLE);
    format!(
        "CREATE SCHEMA IF NOT EXISTS {schema};
CREATE TABLE IF NOT EXISTS {objects} (
    schema_name text NOT NULL,
    object_name text NOT NULL,
    kind text NOT NULL,
    query text NOT NULL,
    query_sha256 text NOT NULL,
    applied_definition text NOT NULL,
    applied_indexes jsonb NOT NULL DEFAULT '[]',
    applied_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (schema_name, object_name)
);
CREATE TABLE IF NOT EXISTS {refreshes} (
    id bigserial PRIMARY KEY,
    schema_name text NOT NULL,
    object_name text NOT NULL,
    started_at timestamptz NOT NULL,
    duration_ms bigint NOT NULL,
    concurrent boolean NOT NULL,
    outcome text NOT NULL,
    error text
);
CREATE INDEX IF NOT EXISTS refresh_log_object_idx ON {refreshes} (schema_name, object_name, started_at);
CREATE TABLE IF NOT EXISTS {restore_owed} (
    single boolean PRIMARY KEY DEFAULT true CHECK (single),
    since timestamptz NOT NULL DEFAULT now()
);",
        schema = quote_ident(schema)
    )
}

/// Reads the state table; call only when it exists.
pub(crate) async fn read(
    client: &impl GenericClient,
    schema: &str,
) -> Result<State, tokio_postgres::Error> {
    // language=SQL
    let sql = format!(
        "SELECT schema_name, object_name, kind, query, query_sha256, applied_definition,
                applied_indexes::text, applied_at
         FROM {} ORDER BY schema_name, object_name",
        table(schema, OBJECTS_TABLE)
    );
    let rows = client.query(&sql, &[]).await?;
    let mut state = State::default();
    for row in rows {
        let name = QualifiedName::new(row.get::<_, String>(0), row.get::<_, String>(1));
        let kind = if row.get::<_, String>(2) == Kind::MaterializedView.keyword() {
            Kind::MaterializedView
        } else {
            Kind::View
        };
        // A hand-edited or future-format index list only costs a rebuild of those indexes.
        let applied_indexes = serde_json::from_str(&row.get::<_, String>(6)).unwrap_or_default();
        state.objects.insert(
            name.clone(),
            ManagedObject {
                name,
                kind,
                query: row.get(3),
                query_sha256: row.get(4),
                applied_definition: row.get(5),
                applied_indexes,
                applied_at: row.get(7),
            },
        );
    }
    Ok(state)
}

/// One object's new record, written after its DDL ran.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    pub name: QualifiedName,
    pub kind: Kind,
    pub query: String,
    /// `(index name, statement)` for each declared index.
    pub indexes: Vec<(String, String)>,
}

/// Writes `records` (reading back what PostgreSQL now reports for each) and deletes
/// `forget`, in two statements whatever the number of objects.
pub(crate) async fn write(
    client: &impl GenericClient,
    schema: &str,
    records: &[&Record],
    forget: &[&QualifiedName],
) -> Result<(), tokio_postgres::Error> {
    let objects = table(schema, OBJECTS_TABLE);
    if !forget.is_empty() {
        let schemas: Vec<&str> = forget.iter().map(|n| n.schema.as_str()).collect();
        let names: Vec<&str> = forget.iter().map(|n| n.name.as_str()).collect();
        // language=SQL
        let sql = format!(
            "DELETE FROM {objects} o USING unnest($1::text[], $2::text[]) AS f(s, n)
             WHERE o.schema_name = f.s AND o.object_name = f.n"
        );
        client.execute(&sql, &[&schemas, &names]).await?;
    }
    if records.is_empty() {
        return Ok(());
    }
    let schemas: Vec<&str> = records.iter().map(|r| r.name.schema.as_str()).collect();
    let names: Vec<&str> = records.iter().map(|r| r.name.name.as_str()).collect();
    let kinds: Vec<&str> = records.iter().map(|r| r.kind.keyword()).collect();
    let queries: Vec<&str> = records.iter().map(|r| r.query.as_str()).collect();
    let hashes: Vec<String> = records
        .iter()
        .map(|r| query_hash(r.kind, &r.query))
        .collect();
    let index_lists: Vec<String> = records
        .iter()
        .map(|r| {
            let list: Vec<serde_json::Value> = r
                .indexes
                .iter()
                .map(|(name, sql)| serde_json::json!({ "name": name, "sql": sql }))
                .collect();
            serde_json::Value::Array(list).to_string()
        })
        .collect();
    // The definitions PostgreSQL reports now, read in the same statement that stores them.
    // language=SQL
    let sql = format!(
        "INSERT INTO {objects} AS o (schema_name, object_name, kind, query, query_sha256,
                                     applied_definition, applied_indexes, applied_at)
         SELECT r.s, r.n, r.kind, r.query, r.sha, pg_get_viewdef(c.oid),
                coalesce((SELECT jsonb_agg(jsonb_build_object(
                              'name', i->>'name', 'sql', i->>'sql',
                              'definition', pg_get_indexdef(ic.oid)))
                          FROM jsonb_array_elements(r.indexes::jsonb) AS i
                          JOIN pg_class ic ON ic.relnamespace = c.relnamespace
                                          AND ic.relname = i->>'name'
                                          AND ic.relkind = 'i'), '[]'::jsonb),
                now()
         FROM unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::text[], $6::text[])
              AS r(s, n, kind, query, sha, indexes)
         JOIN pg_namespace ns ON ns.nspname = r.s
         JOIN pg_class c ON c.relnamespace = ns.oid AND c.relname = r.n
         ON CONFLICT (schema_name, object_name) DO UPDATE SET
             kind = excluded.kind, query = excluded.query, query_sha256 = excluded.query_sha256,
             applied_definition = excluded.applied_definition,
             applied_indexes = excluded.applied_indexes, applied_at = excluded.applied_at"
    );
    client
        .execute(
            &sql,
            &[&schemas, &names, &kinds, &queries, &hashes, &index_lists],
        )
        .await?;
    Ok(())
}

/// Records that the managed views were dropped and are owed a restore; an older record
/// keeps its time.
pub(crate) async fn owe_restore(
    client: &impl GenericClient,
    schema: &str,
) -> Result<(), tokio_postgres::Error> {
    // language=SQL
    let sql = format!(
        "INSERT INTO {} DEFAULT VALUES ON CONFLICT DO NOTHING",
        table(schema, RESTORE_OWED_TABLE)
    );
    client.execute(&sql, &[]).await.map(drop)
}

/// Clears the record of an owed restore, if any (the caller checks the table exists).
pub(crate) async fn settle_restore(
    client: &impl GenericClient,
    schema: &str,
) -> Result<(), tokio_postgres::Error> {
    // language=SQL
    let sql = format!("DELETE FROM {}", table(schema, RESTORE_OWED_TABLE));
    client.execute(&sql, &[]).await.map(drop)
}

/// Since when a restore is owed, if one is. Reads nothing when the state schema (or this
/// table, in a schema made by an older viewkeeper) does not exist.
pub(crate) async fn restore_owed_since(
    client: &impl GenericClient,
    schema: &str,
) -> Result<Option<DateTime<Utc>>, tokio_postgres::Error> {
    let name = table(schema, RESTORE_OWED_TABLE);
    let exists: bool = client
        .query_one("SELECT to_regclass($1) IS NOT NULL", &[&name])
        .await?
        .get(0);
    if !exists {
        return Ok(None);
    }
    // language=SQL
    let sql = format!("SELECT since FROM {name}");
    Ok(client.query_opt(&sql, &[]).await?.map(|row| row.get(0)))
}

/// Appends one refresh to the history (the caller checks the schema exists). Times are the
/// server's, so several hosts running `schedule` agree on them.
pub(crate) async fn log_refresh(
    client: &impl GenericClient,
    schema: &str,
    name: &QualifiedName,
    started_at: DateTime<Utc>,
    concurrently: bool,
    error: Option<&str>,
) -> Result<(), tokio_postgres::Error> {
    let outcome = if error.is_some() { "failed" } else { "ok" };
    // language=SQL
    let sql = format!(
        "INSERT INTO {} (schema_name, object_name, started_at, duration_ms, concurrent, outcome, error)
         VALUES ($1, $2, $3, (extract(epoch FROM clock_timestamp() - $3) * 1000)::int8, $4, $5, $6)",
        table(schema, REFRESH_TABLE)
    );
    client
        .execute(
            &sql,
            &[
                &name.schema,
                &name.name,
                &started_at,
                &concurrently,
                &outcome,
                &error,
            ],
        )
        .await?;
    Ok(())
}

/// A successful refresh made by reconcile, to be logged.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct LoggedRefresh {
    pub name: QualifiedName,
    pub started_at: DateTime<Utc>,
    pub duration: std::time::Duration,
}

/// Appends `refreshes` to the history in one statement (the caller checks the schema
/// exists).
pub(crate) async fn log_refreshes(
    client: &impl GenericClient,
    schema: &str,
    refreshes: &[LoggedRefresh],
) -> Result<(), tokio_postgres::Error> {
    let schemas: Vec<&str> = refreshes.iter().map(|r| r.name.schema.as_str()).collect();
    let names: Vec<&str> = refreshes.iter().map(|r| r.name.name.as_str()).collect();
    let starts: Vec<DateTime<Utc>> = refreshes.iter().map(|r| r.started_at).collect();
    let durations: Vec<i64> = refreshes
        .iter()
        .map(|r| i64::try_from(r.duration.as_millis()).unwrap_or(i64::MAX))
        .collect();
    // language=SQL
    let sql = format!(
        "INSERT INTO {} (schema_name, object_name, started_at, duration_ms, concurrent, outcome)
         SELECT s, n, started, duration, false, 'ok'
         FROM unnest($1::text[], $2::text[], $3::timestamptz[], $4::int8[])
              AS r(s, n, started, duration)",
        table(schema, REFRESH_TABLE)
    );
    client
        .execute(&sql, &[&schemas, &names, &starts, &durations])
        .await?;
    Ok(())
}

/// What the refresh history says about one materialized view.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RefreshHistory {
    /// Start of the last successful refresh.
    pub last_success: Option<DateTime<Utc>>,
    /// Start of the last refresh, successful or not.
    pub last_attempt: Option<DateTime<Utc>>,
    /// How long the last refresh took.
    pub last_duration_ms: Option<i64>,
    /// The last refresh's error, when it failed.
    pub last_error: Option<String>,
    /// Failures since the last success.
    pub consecutive_failures: u32,
}

/// The history of every view that has one (or only of `only`), in one query.
pub(crate) async fn read_history(
    client: &impl GenericClient,
    schema: &str,
    only: Option<&QualifiedName>,
) -> Result<BTreeMap<QualifiedName, RefreshHistory>, tokio_postgres::Error> {
    let log = table(schema, REFRESH_TABLE);
    // language=SQL
    let sql = format!(
        "WITH latest AS (
             SELECT DISTINCT ON (schema_name, object_name)
                    schema_name, object_name, started_at, duration_ms, outcome, error
             FROM {log}
             WHERE $1::text IS NULL OR (schema_name = $1 AND object_name = $2)
             ORDER BY schema_name, object_name, started_at DESC, id DESC),
         last_ok AS (
             SELECT schema_name, object_name, max(started_at) AS at
             FROM {log}
             WHERE outcome = 'ok' AND ($1::text IS NULL OR (schema_name = $1 AND object_name = $2))
             GROUP BY schema_name, object_name)
         SELECT l.schema_name, l.object_name, o.at, l.started_at, l.duration_ms,
                CASE WHEN l.outcome = 'failed' THEN coalesce(l.error, 'failed') END,
                (SELECT count(*) FROM {log} f
                 WHERE f.schema_name = l.schema_name AND f.object_name = l.object_name
                   AND f.outcome = 'failed' AND f.started_at > coalesce(o.at, '-infinity'))::int4
         FROM latest l LEFT JOIN last_ok o USING (schema_name, object_name)"
    );
    let schema_filter = only.map(|name| name.schema.as_str());
    let name_filter = only.map(|name| name.name.as_str());
    let mut history = BTreeMap::new();
    for row in client.query(&sql, &[&schema_filter, &name_filter]).await? {
        let name = QualifiedName::new(row.get::<_, String>(0), row.get::<_, String>(1));
        history.insert(
            name,
            RefreshHistory {
                last_success: row.get(2),
                last_attempt: row.get(3),
                last_duration_ms: row.get(4),
                last_error: row.get(5),
                consecutive_failures: u32::try_from(row.get::<_, i32>(6)).unwrap_or(0),
            },
        );
    }
    Ok(history)
}

/// Keeps the newest `keep` refreshes of each view, so a one-second schedule does not grow
/// the history without bound.
pub(crate) async fn prune_history(
    client: &impl GenericClient,
    schema: &str,
    keep: i64,
) -> Result<u64, tokio_postgres::Error> {
    let log = table(schema, REFRESH_TABLE);
    // language=SQL
    let sql = format!(
        "DELETE FROM {log} WHERE id IN (
             SELECT id FROM (
                 SELECT id, row_number() OVER (PARTITION BY schema_name, object_name
                                               ORDER BY started_at DESC, id DESC) AS position
                 FROM {log}) ranked
             WHERE position > $1)"
    );
    client.execute(&sql, &[&keep]).await
}
