//! viewkeeper's own schema: which objects it manages, what it applied, and refresh history.
//!
//! The schema is created on first use by `reconcile`, idempotently, inside the same
//! transaction as the DDL it describes, so the record can never disagree with the database.
//! `plan` only reads: a missing schema simply means nothing is managed yet.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use tokio_postgres::GenericClient;
use tokio_postgres::types::Type;

use crate::name::QualifiedName;
use serde::{Deserialize, Serialize};

use crate::objects::{BuiltIndex, Kind, ManagedObject, Record, SideBuild, State, query_hash};
use crate::sql::state as sql;

/// Reads the state table; call only when it exists.
pub(crate) async fn read(
    client: &impl GenericClient,
    schema: &str,
    builds_table_exists: bool,
) -> Result<State, tokio_postgres::Error> {
    // Typed, so all three are sent at once, without a round trip to prepare each, and go
    // in the same pipeline as the rest of the catalog's queries. In one transaction the
    // first to fail (in the order sent) is the cause; the ones after it answer "aborted".
    let (select_objects, select_last_builds) =
        (sql::select_objects(schema), sql::select_last_builds(schema));
    let (objects, last_builds, builds) = tokio::join!(
        client.query_typed(&select_objects, &[]),
        client.query_typed(&select_last_builds, &[]),
        async {
            if !builds_table_exists {
                return Ok(Vec::new());
            }
            client.query_typed(&sql::select_builds(schema), &[]).await
        },
    );
    let (objects, last_builds, builds) = (objects?, last_builds?, builds?);
    let mut state = State::default();
    for row in objects {
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
    for row in last_builds {
        let name = QualifiedName::new(row.get::<_, String>(0), row.get::<_, String>(1));
        let millis = u64::try_from(row.get::<_, i64>(2)).unwrap_or(0);
        state
            .last_builds
            .insert(name, std::time::Duration::from_millis(millis));
    }
    for row in builds {
        // A row this version cannot read is left alone (and not used).
        if let Ok(row) = serde_json::from_str::<BuildRow>(&row.get::<_, String>(0)) {
            let build = SideBuild::from(row);
            state.builds.insert(build.temp.clone(), build);
        }
    }
    Ok(state)
}

/// A [`SideBuild`] as its row stores it.
#[derive(Serialize, Deserialize)]
struct BuildRow {
    schema: String,
    temp: String,
    target: String,
    query_sha256: String,
    indexes: Vec<BuiltIndex>,
}

impl From<&SideBuild> for BuildRow {
    fn from(build: &SideBuild) -> BuildRow {
        BuildRow {
            schema: build.temp.schema.clone(),
            temp: build.temp.name.clone(),
            target: build.target.name.clone(),
            query_sha256: build.query_sha256.clone(),
            indexes: build.indexes.clone(),
        }
    }
}

impl From<BuildRow> for SideBuild {
    fn from(row: BuildRow) -> SideBuild {
        SideBuild {
            temp: QualifiedName::new(row.schema.clone(), row.temp),
            target: QualifiedName::new(row.schema, row.target),
            query_sha256: row.query_sha256,
            indexes: row.indexes,
        }
    }
}

/// Records side-by-side copies just built (in the transaction that built them), and
/// deletes the records of `done` (swapped in or dropped).
pub(crate) async fn write_builds(
    client: &impl GenericClient,
    schema: &str,
    built: &[&SideBuild],
    done: &[&QualifiedName],
) -> Result<(), tokio_postgres::Error> {
    if !done.is_empty() {
        let schemas: Vec<&str> = done.iter().map(|n| n.schema.as_str()).collect();
        let names: Vec<&str> = done.iter().map(|n| n.name.as_str()).collect();
        client
            .execute(&sql::delete_builds(schema), &[&schemas, &names])
            .await?;
    }
    if !built.is_empty() {
        let schemas: Vec<&str> = built.iter().map(|b| b.temp.schema.as_str()).collect();
        let names: Vec<&str> = built.iter().map(|b| b.temp.name.as_str()).collect();
        let documents: Vec<String> = built
            .iter()
            .map(|b| serde_json::to_string(&BuildRow::from(*b)).unwrap_or_default())
            .collect();
        client
            .execute(&sql::upsert_builds(schema), &[&schemas, &names, &documents])
            .await?;
    }
    Ok(())
}

/// Writes `records` (reading back what PostgreSQL now reports for each) and deletes
/// `forget`, in two statements whatever the number of objects.
pub(crate) async fn write(
    client: &impl GenericClient,
    schema: &str,
    records: &[&Record],
    forget: &[&QualifiedName],
) -> Result<(), tokio_postgres::Error> {
    if !forget.is_empty() {
        let schemas: Vec<&str> = forget.iter().map(|n| n.schema.as_str()).collect();
        let names: Vec<&str> = forget.iter().map(|n| n.name.as_str()).collect();
        client
            .execute(&sql::delete_objects(schema), &[&schemas, &names])
            .await?;
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
    client
        .execute(
            &sql::upsert_objects(schema),
            &[&schemas, &names, &kinds, &queries, &hashes, &index_lists],
        )
        .await?;
    Ok(())
}

/// Records the current rule hash of `names`, objects already recorded as applied whose
/// live definition still reads as applied.
pub(crate) async fn write_rule_hashes(
    client: &impl GenericClient,
    schema: &str,
    names: &[QualifiedName],
) -> Result<(), tokio_postgres::Error> {
    if names.is_empty() {
        return Ok(());
    }
    let schemas: Vec<&str> = names.iter().map(|n| n.schema.as_str()).collect();
    let objects: Vec<&str> = names.iter().map(|n| n.name.as_str()).collect();
    client
        .execute(&sql::update_rule_hashes(schema), &[&schemas, &objects])
        .await
        .map(drop)
}

/// Records that the managed views were dropped and are owed a restore; an older record
/// keeps its time.
pub(crate) async fn owe_restore(
    client: &impl GenericClient,
    schema: &str,
) -> Result<(), tokio_postgres::Error> {
    client
        .execute(&sql::owe_restore(schema), &[])
        .await
        .map(drop)
}

/// Clears the record of an owed restore, if any (the caller checks the table exists).
pub(crate) async fn settle_restore(
    client: &impl GenericClient,
    schema: &str,
) -> Result<(), tokio_postgres::Error> {
    client
        .execute(&sql::settle_restore(schema), &[])
        .await
        .map(drop)
}

/// Since when a restore is owed, if one is. Reads nothing when the state schema (or this
/// table, in a schema made by an older viewkeeper) does not exist.
pub(crate) async fn restore_owed_since(
    client: &impl GenericClient,
    schema: &str,
) -> Result<Option<DateTime<Utc>>, tokio_postgres::Error> {
    let name = sql::table(schema, sql::RESTORE_OWED_TABLE);
    // Typed: no round trip to prepare either (this runs before every plan).
    let exists: bool = client
        .query_typed_one(sql::EXISTS, &[(&name, Type::TEXT)])
        .await?
        .get(0);
    if !exists {
        return Ok(None);
    }
    let since = client
        .query_typed_opt(&sql::restore_owed_since(schema), &[])
        .await?;
    Ok(since.map(|row| row.get(0)))
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
    client
        .execute(
            &sql::log_refresh(schema),
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
    client
        .execute(
            &sql::log_refreshes(schema),
            &[&schemas, &names, &starts, &durations],
        )
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
    let schema_filter = only.map(|name| name.schema.as_str());
    let name_filter = only.map(|name| name.name.as_str());
    let mut history = BTreeMap::new();
    for row in client
        .query(
            &sql::select_history(schema),
            &[&schema_filter, &name_filter],
        )
        .await?
    {
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
    client.execute(&sql::prune_history(schema), &[&keep]).await
}
