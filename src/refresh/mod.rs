//! Refreshing materialized views: dependency order, one refresh at a time, and the
//! scheduler ([`schedule`]) and pg_cron export ([`pg_cron`]) built on it.
//!
//! Each refresh runs in its own transaction, so a long chain never holds every view's lock
//! until the last one ends. Every refresh takes a per-view advisory lock, so `refresh` and
//! any number of `schedule` processes never refresh one view twice at once, and a shared
//! hold on reconcile's lock, so a reconcile never rebuilds a view under a running refresh.

pub mod pg_cron;
pub mod schedule;

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use miette::Diagnostic;
use tokio_postgres::{Client, GenericClient};

use crate::catalog::Catalog;
use crate::catalog::read::dependency_names;
use crate::db::describe;
use crate::graph::Cycle;
use crate::name::QualifiedName;
use crate::project::{Kind, Project};
use crate::sql::{self, session, session::LockMode};
use crate::state::{self, RefreshHistory};
use crate::waits::lock_key;

/// One materialized view to refresh.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RefreshTarget {
    pub name: QualifiedName,
    /// Declared `concurrently=#true` (used once the view holds data).
    pub concurrently: bool,
    /// `statement_timeout` for the refresh: the view's own, else the project's.
    pub statement_timeout: Option<Duration>,
    /// The project's `lock-timeout`: bounds the wait for the advisory locks.
    pub lock_timeout: Duration,
}

impl RefreshTarget {
    /// The target for a declared materialized view, with its policy's settings.
    pub fn of(project: &Project, declaration: &crate::project::Declaration) -> Self {
        let policy = declaration.refresh.as_ref();
        Self {
            name: declaration.name.clone(),
            concurrently: policy.is_some_and(|p| p.concurrently),
            statement_timeout: policy
                .and_then(|p| p.statement_timeout)
                .or(project.config.statement_timeout),
            lock_timeout: project.config.lock_timeout,
        }
    }
}

/// Why nothing could be refreshed.
#[derive(Debug, thiserror::Error, Diagnostic)]
#[non_exhaustive]
pub enum RefreshError {
    #[error("`{0}` is not declared")]
    #[diagnostic(help("refresh takes the names of declared materialized views"))]
    NotDeclared(String),
    #[error("`{0}` is a view, not a materialized view")]
    #[diagnostic(help(
        "views hold no data; add --downstream to refresh the materialized views built on it"
    ))]
    NotMaterialized(String),
    #[error("`{0}` is not in the database")]
    #[diagnostic(help("run `viewkeeper reconcile` first"))]
    Missing(String),
    #[error(transparent)]
    Cycle(#[from] Cycle),
    #[error("cannot read the catalog: {0}")]
    Database(String),
    #[error("lost the connection while refreshing {view}: {message}")]
    #[diagnostic(help(
        "the refresh may or may not have completed: `viewkeeper status` shows when each view was last refreshed"
    ))]
    ConnectionLost { view: String, message: String },
    #[error("cannot refresh {view}: {message}")]
    Interrupted { view: String, message: String },
    #[error("{failed} of {total} refreshes failed")]
    Failed { failed: usize, total: usize },
}

/// The outcome of one refresh.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    Refreshed {
        took: Duration,
        concurrently: bool,
        /// Server time the refresh started: the anchor of the next period.
        started_at: DateTime<Utc>,
    },
    /// PostgreSQL refused or cancelled the refresh; recorded in the history.
    Failed(String),
    Skipped(Skip),
}

/// Why a refresh was not attempted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Skip {
    /// Something it reads failed to refresh.
    UpstreamFailed(QualifiedName),
    /// Another process is refreshing it right now.
    Busy,
    /// A reconcile is running.
    Reconciling,
    /// Another process refreshed it since it was found due.
    NoLongerDue,
    /// It is not in the database (a reconcile will restore it).
    Missing,
}

/// What the refresh loop reports as it goes.
#[derive(Debug)]
pub enum Event<'a> {
    Started(&'a RefreshTarget),
    Finished(&'a RefreshTarget, &'a Outcome),
}

/// Whether to queue for locks (`refresh`) or to skip when someone else holds them
/// (`schedule`, which will come back on its next pass).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Wait {
    Block,
    Skip,
}

/// Which materialized views to refresh, dependencies first. Pure.
pub fn refresh_order(
    project: &Project,
    catalog: &Catalog,
    requested: &[QualifiedName],
    downstream: bool,
) -> Result<Vec<RefreshTarget>, RefreshError> {
    let graph = catalog.graph_of(project);
    for name in requested {
        let declaration = project
            .declarations
            .get(name)
            .ok_or_else(|| RefreshError::NotDeclared(name.to_string()))?;
        if declaration.kind != Kind::MaterializedView && !downstream {
            return Err(RefreshError::NotMaterialized(name.to_string()));
        }
    }
    let selected: BTreeSet<QualifiedName> = if requested.is_empty() {
        project.declarations.keys().cloned().collect()
    } else if downstream {
        graph.with_dependents(requested)
    } else {
        requested.iter().cloned().collect()
    };
    let mut targets = Vec::new();
    for name in graph.topological_order()? {
        let Some(declaration) = project.declarations.get(&name) else {
            continue;
        };
        if !selected.contains(&name) || declaration.kind != Kind::MaterializedView {
            continue;
        }
        if !catalog.relations.contains_key(&name) {
            return Err(RefreshError::Missing(name.to_string()));
        }
        targets.push(RefreshTarget::of(project, declaration));
    }
    Ok(targets)
}

/// Refreshes `requested` (all declared materialized views when empty), each in its own
/// transaction, waiting for locks, recording each in the refresh history when the state
/// schema exists. A failure skips what reads the failed view and carries on with the rest.
pub async fn refresh(
    client: &mut Client,
    project: &Project,
    requested: &[QualifiedName],
    downstream: bool,
    mut on_event: impl FnMut(Event<'_>),
) -> Result<usize, RefreshError> {
    let schema = &project.config.state_schema;
    let timeout = project.config.lock_timeout;
    let catalog =
        match crate::waits::introspect(client, &dependency_names(project), schema, timeout).await {
            Ok(catalog) => catalog,
            Err(error) => {
                return Err(RefreshError::Database(
                    crate::waits::explain(client, &error, timeout, schema).await,
                ));
            }
        };
    let targets = refresh_order(project, &catalog, requested, downstream)?;
    let graph = catalog.graph_of(project);
    let mut failed: Vec<QualifiedName> = Vec::new();
    for target in &targets {
        let upstream_failed = failed
            .iter()
            .find(|f| graph.with_dependents([*f]).contains(&target.name))
            .cloned();
        let outcome = match upstream_failed {
            Some(upstream) => Outcome::Skipped(Skip::UpstreamFailed(upstream)),
            None => {
                on_event(Event::Started(target));
                let refreshed = refresh_one(
                    client,
                    schema,
                    target,
                    catalog.state.is_some(),
                    Wait::Block,
                    None,
                )
                .await;
                match refreshed {
                    Ok(outcome) => outcome,
                    Err(error) => {
                        let view = target.name.to_string();
                        let message = describe(&error);
                        return Err(if client.is_closed() {
                            RefreshError::ConnectionLost { view, message }
                        } else {
                            RefreshError::Interrupted { view, message }
                        });
                    }
                }
            }
        };
        if !matches!(outcome, Outcome::Refreshed { .. }) {
            failed.push(target.name.clone());
        }
        on_event(Event::Finished(target, &outcome));
    }
    if failed.is_empty() {
        Ok(targets.len())
    } else {
        Err(RefreshError::Failed {
            failed: failed.len(),
            total: targets.len(),
        })
    }
}

/// The per-view advisory lock key, distinct from reconcile's.
pub fn view_lock_key(name: &QualifiedName) -> i64 {
    lock_key(&format!("refresh:{}.{}", name.schema, name.name))
}

/// The savepoint that keeps a failed refresh's transaction (and lock) alive.
const SAVEPOINT: &str = "viewkeeper_refresh";

/// Decides, under the view's lock and with fresh history, whether a refresh is still due.
pub type StillDue<'a> = &'a (dyn Fn(&RefreshHistory, DateTime<Utc>) -> bool + Sync);

/// Refreshes one materialized view in its own transaction, under its advisory lock and a
/// shared hold on reconcile's lock. `still_due`, when given, is asked again under the lock,
/// so two schedulers never refresh one due period twice. Errors from PostgreSQL about the
/// refresh itself become [`Outcome::Failed`] (and are recorded); only connection problems
/// are returned as errors.
pub async fn refresh_one(
    client: &mut Client,
    state_schema: &str,
    target: &RefreshTarget,
    record: bool,
    wait: Wait,
    still_due: Option<StillDue<'_>>,
) -> Result<Outcome, tokio_postgres::Error> {
    let transaction = client.transaction().await?;
    crate::waits::bound(&transaction, target.lock_timeout).await?;
    if !advisory_lock(&transaction, lock_key(state_schema), true, wait).await? {
        return Ok(Outcome::Skipped(Skip::Reconciling));
    }
    if !advisory_lock(&transaction, view_lock_key(&target.name), false, wait).await? {
        return Ok(Outcome::Skipped(Skip::Busy));
    }
    let row = transaction
        .query_opt(sql::refresh::CLOCK_AND_POPULATED, &[&target.name.to_sql()])
        .await?;
    let Some(row) = row else {
        return Ok(Outcome::Skipped(Skip::Missing));
    };
    let started_at: DateTime<Utc> = row.get(0);
    let populated: bool = row.get(1);
    if let Some(still_due) = still_due {
        let history = state::read_history(&transaction, state_schema, Some(&target.name))
            .await?
            .remove(&target.name)
            .unwrap_or_default();
        if !still_due(&history, started_at) {
            return Ok(Outcome::Skipped(Skip::NoLongerDue));
        }
    }
    if let Some(timeout) = target.statement_timeout {
        transaction
            .batch_execute(&session::set_local_statement_timeout(timeout))
            .await?;
        // A refresh waits for the view's readers: it may wait as long as it may run.
        crate::waits::bound(&transaction, timeout).await?;
    }
    // PostgreSQL refuses CONCURRENTLY on a view that holds no data yet.
    let concurrently = target.concurrently && populated;
    let sql = sql::ddl::refresh(&target.name, concurrently);
    let started = Instant::now();
    // A savepoint keeps the transaction, and with it the view's lock, alive after a failure,
    // so the failure is on record before another scheduler may try: backoff holds for all.
    transaction
        .batch_execute(&session::savepoint(SAVEPOINT))
        .await?;
    let result = transaction.batch_execute(&sql).await;
    let outcome = match result {
        Ok(()) => Outcome::Refreshed {
            took: started.elapsed(),
            concurrently,
            started_at,
        },
        Err(error) if error.as_db_error().is_some() => {
            transaction
                .batch_execute(&session::rollback_to(SAVEPOINT))
                .await?;
            Outcome::Failed(describe(&error))
        }
        Err(error) => return Err(error),
    };
    if record {
        let error = match &outcome {
            Outcome::Failed(message) => Some(message.as_str()),
            _ => None,
        };
        state::log_refresh(
            &transaction,
            state_schema,
            &target.name,
            started_at,
            concurrently,
            error,
        )
        .await?;
    }
    transaction.commit().await?;
    Ok(outcome)
}

/// Takes a transaction-level advisory lock, shared or exclusive; with [`Wait::Skip`],
/// returns false instead of waiting when it is held.
async fn advisory_lock(
    client: &impl GenericClient,
    key: i64,
    shared: bool,
    wait: Wait,
) -> Result<bool, tokio_postgres::Error> {
    let mode = if shared {
        LockMode::Shared
    } else {
        LockMode::Exclusive
    };
    let row = client
        .query_one(
            session::advisory_xact_lock(mode, wait == Wait::Skip),
            &[&key],
        )
        .await?;
    // The blocking functions return void (text ""), the others a boolean.
    Ok(row.get::<_, String>(0) != "false")
}
