//! Bounded waits: every lock a command waits for gives up after `lock-timeout`, and readers
//! of the catalog hold reconcile's advisory lock in shared mode.
//!
//! Lock order, the same in every command so no wait cycle can form: reconcile's advisory
//! lock (readers and refreshes shared, reconcile exclusive) first, then a refresh's per-view
//! advisory lock, then relation locks.

use std::time::Duration;

use sha2::{Digest, Sha256};
use tokio_postgres::GenericClient;
use tokio_postgres::error::SqlState;
use tokio_postgres::types::Type;

use crate::sql::{self, session, session::LockMode};

/// The advisory lock key that keeps reconciles of one state schema from interleaving.
pub fn lock_key(state_schema: &str) -> i64 {
    let digest = Sha256::digest(format!("viewkeeper:{state_schema}").as_bytes());
    let mut bytes = [0u8; 8];
    bytes.copy_from_slice(&digest[..8]);
    i64::from_be_bytes(bytes)
}

/// `SET LOCAL lock_timeout`: bounds every later wait in the transaction, advisory locks
/// taken with `pg_advisory_xact_lock` included.
pub async fn bound(
    client: &impl GenericClient,
    timeout: Duration,
) -> Result<(), tokio_postgres::Error> {
    client
        .batch_execute(&session::set_local_lock_timeout(timeout))
        .await
}

/// Holds reconcile's advisory lock in shared mode until the transaction ends, so a read of
/// the catalog never sees (or locks) views a reconcile is dropping and recreating.
pub async fn share_reconcile_lock(
    client: &impl GenericClient,
    state_schema: &str,
) -> Result<(), tokio_postgres::Error> {
    // Typed: no round trip to prepare it (this runs before every plan).
    client
        .query_typed(
            session::advisory_xact_lock(LockMode::Shared, false),
            &[(&lock_key(state_schema), Type::INT8)],
        )
        .await
        .map(drop)
}

/// [`share_reconcile_lock`] without waiting: false when a reconcile holds it.
pub async fn try_share_reconcile_lock(
    client: &impl GenericClient,
    state_schema: &str,
) -> Result<bool, tokio_postgres::Error> {
    let row = client
        .query_typed_one(
            session::advisory_xact_lock(LockMode::Shared, true),
            &[(&lock_key(state_schema), Type::INT8)],
        )
        .await?;
    Ok(row.get::<_, String>(0) == "true")
}

/// True when `error` is `lock_timeout` expiring.
pub fn timed_out(error: &tokio_postgres::Error) -> bool {
    error.code() == Some(&SqlState::LOCK_NOT_AVAILABLE)
}

/// True when a relation disappeared while it was being read (a concurrent drop): the read
/// is worth repeating.
pub fn lost_relation(error: &tokio_postgres::Error) -> bool {
    error.as_db_error().is_some_and(|db| {
        db.code() == &SqlState::UNDEFINED_TABLE
            || db.message().starts_with("could not open relation with OID")
            || db.message().starts_with("cache lookup failed for relation")
    })
}

/// Who holds the locks reading the catalog waits for: sessions holding viewkeeper's
/// advisory locks, an exclusive lock on a table, view or materialized view, or a lock that
/// blocks writing viewkeeper's own tables; with role, application, state, since when and
/// the first line of their query. Read on `client` once its own wait is over.
pub async fn holders(
    client: &impl GenericClient,
    state_schema: &str,
) -> Result<Vec<String>, tokio_postgres::Error> {
    let own = vec![
        state_schema.to_owned(),
        sql::guard::guard_schema(state_schema),
    ];
    sessions(client, sql::waits::HOLDERS, &[&own]).await
}

/// The message for compiling `object`'s query (plan's proof) that gave up waiting: what it
/// waits for is a lock on what the query reads, which only an exclusive one blocks.
pub async fn compile_gave_up(
    client: &impl GenericClient,
    object: &crate::name::QualifiedName,
    timeout: Duration,
) -> String {
    let holders = strong_holders(client).await.unwrap_or_default();
    gave_up(
        &format!("a lock on what {object} reads (compiling its query)"),
        timeout,
        &holders,
    )
}

/// What reading the catalog waits for, as [`gave_up`] names it.
pub const CATALOG_WAITS_FOR: &str =
    "reconcile's advisory lock, a lock on a view, on what it reads, or on viewkeeper's own tables";

/// Who holds any lock on `relation`: what a DROP or an ALTER, which need it alone, waits for.
pub async fn holders_of(
    client: &impl GenericClient,
    relation: &crate::name::QualifiedName,
) -> Result<Vec<String>, tokio_postgres::Error> {
    sessions(
        client,
        sql::waits::RELATION_HOLDERS,
        &[&relation.schema, &relation.name],
    )
    .await
}

/// Who holds a strong lock on any table or view: what a statement that reads tables may
/// have waited for, when nothing holds its own object.
pub async fn strong_holders(
    client: &impl GenericClient,
) -> Result<Vec<String>, tokio_postgres::Error> {
    sessions(client, sql::waits::STRONG_HOLDERS, &[]).await
}

async fn sessions(
    client: &impl GenericClient,
    sql: &str,
    params: &[&(dyn tokio_postgres::types::ToSql + Sync)],
) -> Result<Vec<String>, tokio_postgres::Error> {
    let rows = client.query(sql, params).await?;
    Ok(rows
        .iter()
        .map(|row| {
            let seconds: f64 = row.get(4);
            format!(
                "pid {} (role {}, application_name '{}', {} for {:.0}s) holds {}: {}",
                row.get::<_, i32>(0),
                row.get::<_, String>(1),
                row.get::<_, String>(2),
                row.get::<_, String>(3),
                seconds,
                row.get::<_, String>(6),
                row.get::<_, String>(5),
            )
        })
        .collect())
}

/// The message for a wait that gave up: what was waited for, who holds it, what to change.
pub fn gave_up(what: &str, timeout: Duration, holders: &[String]) -> String {
    let who = if holders.is_empty() {
        "the holder has ended since".to_owned()
    } else {
        holders.join("; ")
    };
    format!(
        "gave up after lock-timeout ({} ms) waiting for {what}; {who}. End that session, or raise `lock-timeout` in viewkeeper.kdl",
        timeout.as_millis()
    )
}

/// [`crate::catalog::introspect`] in a transaction that holds reconcile's lock in shared
/// mode, bounded by `timeout`, read again (up to three times) when a relation disappeared
/// under the read (a drop outside viewkeeper). The transaction is rolled back.
pub async fn introspect(
    client: &tokio_postgres::Client,
    dependencies: &[crate::name::QualifiedName],
    state_schema: &str,
    timeout: Duration,
) -> Result<crate::catalog::Catalog, tokio_postgres::Error> {
    let mut attempt = 1;
    loop {
        client.batch_execute(session::BEGIN).await?;
        let read = async {
            bound(client, timeout).await?;
            share_reconcile_lock(client, state_schema).await?;
            crate::catalog::introspect(client, dependencies, state_schema).await
        }
        .await;
        client.batch_execute(session::ROLLBACK).await?;
        match read {
            Err(error) if lost_relation(&error) && attempt < 3 => attempt += 1,
            read => return read,
        }
    }
}

/// The message for `error`: who holds the lock when lock-timeout expired, else the server's.
pub async fn explain(
    client: &tokio_postgres::Client,
    error: &tokio_postgres::Error,
    timeout: Duration,
    state_schema: &str,
) -> String {
    if !timed_out(error) {
        return crate::db::describe(error);
    }
    let holders = holders(client, state_schema).await.unwrap_or_default();
    gave_up(CATALOG_WAITS_FOR, timeout, &holders)
}
