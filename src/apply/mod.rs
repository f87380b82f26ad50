//! Executes a [`Plan`] in one transaction, under an advisory lock, with `lock_timeout` set.
//!
//! The lock is taken first and the catalog is read and planned *inside* the same
//! transaction, so a reconcile that waited for another one plans against what that one
//! left. An error rolls that transaction back. What commits on its own before it (copies
//! built side by side, objects a parallel restore brought back) stays, and the error says so
//! ([`ApplyError::AfterCommit`]).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::StreamExt as _;
use futures_util::stream::FuturesOrdered;
use miette::{Diagnostic, NamedSource, SourceSpan};
use tokio_postgres::error::{ErrorPosition, SqlState};
use tokio_postgres::{Client, Transaction};

use crate::catalog::read::read_catalog;
use crate::catalog::{self, Catalog};
use crate::db::describe;
use crate::graph::DependencyGraph;
use crate::name::QualifiedName;
use crate::plan::{self, EmbeddedQuery, Phase, Plan, PlanError, Statement};
use crate::project::Project;
use crate::sql::session;
use crate::state;
use crate::waits::lock_key;

mod parallel;
pub use parallel::{Workers, default_jobs};

/// Reconcile failed; its transaction was rolled back.
#[derive(Debug, thiserror::Error, Diagnostic)]
#[non_exhaustive]
pub enum ApplyError {
    #[error(transparent)]
    #[diagnostic(transparent)]
    Plan(#[from] PlanError),
    #[error("{context}: {message}")]
    Database {
        context: &'static str,
        message: String,
    },
    #[error(transparent)]
    #[diagnostic(transparent)]
    Statement(Box<StatementError>),
    /// COMMIT was sent and no answer came back: the server may have committed or not.
    #[error(
        "the connection was lost while committing: the change may or may not be applied ({message})"
    )]
    #[diagnostic(
        code(viewkeeper::commit_outcome_unknown),
        help("run `viewkeeper plan` to see what the database holds now")
    )]
    CommitOutcomeUnknown { message: String },
    /// A failure after part of the work committed on its own ([`Committed`]).
    #[error("{error}")]
    #[diagnostic(forward(error))]
    AfterCommit {
        error: Box<ApplyError>,
        committed: Committed,
    },
}

/// A planned statement failed (and was rolled back).
#[derive(Debug, thiserror::Error, Diagnostic)]
#[error("{object}{}: {message}", location.as_ref().map(|l| format!(" ({l})")).unwrap_or_default())]
#[diagnostic(code(viewkeeper::statement_failed))]
pub struct StatementError {
    pub object: String,
    pub message: String,
    /// `file:line:col` of the failing spot of the declared query, when PostgreSQL gave one.
    pub location: Option<String>,
    #[source_code]
    source_code: Option<NamedSource<Arc<String>>>,
    #[label("PostgreSQL points here")]
    span: Option<SourceSpan>,
    #[help]
    help: String,
    /// The failure says nothing about the declarations (a lock timeout, a cancel, a lost
    /// connection): the same reconcile may well work a moment later.
    pub transient: bool,
}

impl ApplyError {
    /// Whether trying again unchanged may work: true for lock timeouts, cancels, deadlocks
    /// and connection trouble; false when the declarations do not fit the database.
    pub fn is_transient(&self) -> bool {
        match self {
            ApplyError::Plan(_) => false,
            ApplyError::Database { .. } | ApplyError::CommitOutcomeUnknown { .. } => true,
            ApplyError::Statement(error) => error.transient,
            ApplyError::AfterCommit { error, .. } => error.is_transient(),
        }
    }

    /// What a failed reconcile leaves changed, to follow "reconcile failed, ".
    pub fn what_changed(&self) -> String {
        let ApplyError::AfterCommit { committed, .. } = self else {
            return "nothing was changed".to_owned();
        };
        let mut said = Vec::new();
        if !committed.copies.is_empty() {
            let copies: Vec<String> = committed
                .copies
                .iter()
                .map(|(target, copy)| format!("{target} (as {copy})"))
                .collect();
            said.push(format!(
                "the declared objects are unchanged, but the copies built side by side stay \
                 for the next reconcile, which swaps them in (or drops them if their \
                 declarations change): {}",
                copies.join(", ")
            ));
        }
        if !committed.restored.is_empty() {
            let restored: Vec<String> =
                committed.restored.iter().map(ToString::to_string).collect();
            said.push(format!(
                "but these were restored before it stopped, and the next reconcile adopts \
                 them: {}",
                restored.join(", ")
            ));
        }
        said.join("; ")
    }
}

/// An object that keep-going left out, and why.
pub type Failure = (QualifiedName, StatementError);

/// What a reconcile did.
#[derive(Debug)]
pub struct Reconciled {
    pub plan: Plan,
    pub catalog_queries: usize,
    pub elapsed: Duration,
    /// With keep-going: the objects that failed, with why (nothing of them was applied).
    pub failed: Vec<(QualifiedName, StatementError)>,
    /// With keep-going: objects left alone because of a failed one (named second).
    pub skipped: Vec<(QualifiedName, QualifiedName)>,
}

/// Plans and applies in one transaction. `on_statement` hears about each statement after it
/// ran, with its duration (for progress output).
///
/// Unless `allow_drop`, a project with no declarations at all may not drop managed objects
/// (see [`plan::refuse_dropping_everything`]).
///
/// Drops of materialized views that hold data need `allow_drop` too, or `confirm` to agree
/// when shown them (a prompt on a terminal).
///
/// With `intent.saved`, the plan is applied only if the catalog, the schema and the
/// declarations are what the saved plan was made from, and only if it is the saved plan.
pub async fn reconcile(
    client: &mut Client,
    project: &Project,
    intent: &Intent<'_>,
    on_statement: impl FnMut(&Statement, Duration),
) -> Result<Reconciled, ApplyError> {
    let planner = |project: &Project, catalog: &Catalog, pass: Pass| {
        let plan = plan::plan(project, catalog)?;
        match (intent.saved, pass) {
            (Some(saved), Pass::First) => {
                let schema = catalog.schema_digest.clone().unwrap_or_default();
                let now = crate::saved_plan::fingerprint(project, catalog, schema);
                crate::saved_plan::check(saved, &now, &plan)?;
            }
            // The database now holds the copies this very reconcile built (under its lock
            // until then): the rest of the saved plan must still be what runs.
            (Some(saved), Pass::AfterBuild) => crate::saved_plan::check_steps(saved, &plan, true)?,
            (None, _) => {}
        }
        plan::refuse_dropping_everything(project, &plan, intent.allow_drop)?;
        plan::refuse_data_loss(&plan, intent.allow_drop, intent.confirm)?;
        Ok(plan)
    };
    let reconciled = apply_with(
        client,
        project,
        planner,
        &How {
            read_schema_digest: intent.saved.is_some(),
            keep_going: intent.keep_going,
            workers: intent.workers,
            restore_owed: RestoreOwed::Settle,
        },
        on_statement,
    )
    .await?;
    // What is done is committed: a record that cannot be made only means the next plan
    // reads the catalog.
    if reconciled.failed.is_empty()
        && let Err(error) = crate::in_sync::record(client, project).await
    {
        tracing::debug!(
            "cannot record that the database is in sync: {}",
            describe(&error)
        );
    }
    Ok(reconciled)
}

/// What the user allowed a reconcile to do.
pub struct Intent<'a> {
    /// `--allow-drop`: drops that lose data, or that empty the database of managed objects.
    pub allow_drop: bool,
    /// Asked, with the drops that lose data, when `allow_drop` is not given.
    pub confirm: &'a dyn Fn(&[plan::Action]) -> bool,
    /// `--plan FILE`: apply this saved plan or nothing.
    pub saved: Option<&'a crate::saved_plan::SavedPlan>,
    /// `--keep-going`: apply every object that can be applied, each in its own savepoint;
    /// leave alone (and report) the ones that fail and what depends on them.
    pub keep_going: bool,
    /// Extra sessions for a plan that only restores missing objects: they are built in
    /// parallel, each committed on its own (see [`Workers`]). `None`: one transaction.
    pub workers: Option<&'a Workers>,
}

impl Intent<'_> {
    /// Nobody to ask and nothing allowed beyond the safe: `schedule`'s healing, `run`.
    pub const UNATTENDED: Intent<'static> = Intent {
        allow_drop: false,
        confirm: &|_| false,
        saved: None,
        keep_going: false,
        workers: None,
    };

    /// Bring back whatever can be brought back, nothing destructive: `run` after a
    /// migration, `schedule`'s healing.
    pub const RESTORE: Intent<'static> = Intent {
        keep_going: true,
        ..Intent::UNATTENDED
    };
}

/// Drops every managed view and materialized view, dependents first, in one transaction
/// (`run --drop-first`): they stay managed, so the next reconcile restores them.
pub async fn drop_managed(
    client: &mut Client,
    project: &Project,
    on_statement: impl FnMut(&Statement, Duration),
) -> Result<Reconciled, ApplyError> {
    apply_with(
        client,
        project,
        |project: &Project, catalog: &Catalog, _: Pass| plan::drop_managed(project, catalog),
        &How {
            read_schema_digest: false,
            keep_going: false,
            workers: None,
            restore_owed: RestoreOwed::Owe,
        },
        on_statement,
    )
    .await
}

/// Recreates the managed objects that are missing, as last applied, each in its own
/// savepoint (`schedule`'s healing; see [`plan::restore_missing`]). Pending declaration
/// changes are left to the next reconcile.
pub async fn restore_missing(
    client: &mut Client,
    project: &Project,
    workers: Option<&Workers>,
    on_statement: impl FnMut(&Statement, Duration),
) -> Result<Reconciled, ApplyError> {
    apply_with(
        client,
        project,
        |project: &Project, catalog: &Catalog, _: Pass| plan::restore_missing(project, catalog),
        &How {
            read_schema_digest: false,
            keep_going: true,
            workers,
            // What healing restores is what a killed `run --drop-first` owes.
            restore_owed: RestoreOwed::Settle,
        },
        on_statement,
    )
    .await
}

/// How an apply goes about its plan.
struct How<'w> {
    /// Read the schema's fingerprint, to check a saved plan against.
    read_schema_digest: bool,
    /// Leave out objects that fail (and what depends on them), apply the rest.
    keep_going: bool,
    /// Sessions for a plan that only restores missing objects.
    workers: Option<&'w Workers>,
    restore_owed: RestoreOwed,
}

/// What an apply does to the record of a restore owed after `run --drop-first`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum RestoreOwed {
    /// The drops of `--drop-first`: record it with them, so a killed run is noticed.
    Owe,
    /// A reconcile: once it restores everything declared, its commit clears the record.
    Settle,
}

/// Locks, reads the catalog, makes a plan with `planner` and applies it, all in one
/// transaction.
async fn apply_with(
    client: &mut Client,
    project: &Project,
    planner: impl Fn(&Project, &Catalog, Pass) -> Result<Plan, PlanError>,
    how: &How<'_>,
    on_statement: impl FnMut(&Statement, Duration),
) -> Result<Reconciled, ApplyError> {
    let mut committed = Committed::default();
    apply_passes(client, project, planner, how, on_statement, &mut committed)
        .await
        .map_err(|error| match error {
            ApplyError::CommitOutcomeUnknown { .. } => error,
            error if !committed.is_empty() => ApplyError::AfterCommit {
                error: Box::new(error),
                committed,
            },
            error => error,
        })
}

/// What a reconcile committed before the transaction that failed.
#[derive(Debug, Default)]
pub struct Committed {
    /// Copies built side by side, recorded, not swapped in: (declared object, copy).
    pub copies: Vec<(QualifiedName, QualifiedName)>,
    /// Missing objects a parallel restore brought back.
    pub restored: Vec<QualifiedName>,
}

impl Committed {
    fn is_empty(&self) -> bool {
        self.copies.is_empty() && self.restored.is_empty()
    }
}

/// [`apply_with`]; `committed` gets what commits on its own, as it commits.
async fn apply_passes(
    client: &mut Client,
    project: &Project,
    planner: impl Fn(&Project, &Catalog, Pass) -> Result<Plan, PlanError>,
    how: &How<'_>,
    mut on_statement: impl FnMut(&Statement, Duration),
    committed: &mut Committed,
) -> Result<Reconciled, ApplyError> {
    let &How {
        read_schema_digest,
        keep_going,
        workers,
        restore_owed,
    } = how;
    let started = Instant::now();
    let config = &project.config;
    let mut transaction = client
        .transaction()
        .await
        .map_err(database("cannot start a transaction"))?;
    if let Err(error) = prepare(&transaction, config).await {
        transaction
            .rollback()
            .await
            .map_err(database("cannot end the transaction"))?;
        return Err(prepare_failed(client, config, error).await);
    }
    let mut catalog = match read_catalog(&mut transaction, project).await {
        Ok(catalog) => catalog,
        Err(error) => {
            transaction
                .rollback()
                .await
                .map_err(database("cannot end the transaction"))?;
            return Err(catalog_failed(client, config, &error).await);
        }
    };
    if read_schema_digest {
        catalog.schema_digest = Some(
            catalog::schema_fingerprint(&transaction)
                .await
                .map_err(database("cannot read the catalog"))?,
        );
    }
    // Someone restored by hand, or the drops found nothing: only the record needs clearing.
    let owed_record = if restore_owed == RestoreOwed::Settle {
        state::restore_owed_since(&transaction, &config.state_schema)
            .await
            .map_err(database("cannot read viewkeeper's state"))?
    } else {
        None
    };
    let graph = catalog.graph_of(project);
    let mut left_out = LeftOut::default();
    let mut schema_ready = false;
    let mut pass = Pass::First;
    // Fills made by a parallel restore's sessions, logged with the records below.
    let mut restored_fills = Vec::new();
    // One attempt, or with keep-going one more per object that fails: each attempt plans
    // without what failed before, and runs in a savepoint that a failure rolls back.
    let plan = loop {
        let plan = if left_out.is_empty() {
            planner(project, &catalog, pass)
        } else {
            let (project, catalog) = left_out.apply(project, &catalog);
            planner(&project, &catalog, pass)
        };
        let plan = match plan {
            Ok(plan) => plan,
            // Leaving a failed object alone can keep an upstream that reads into it from
            // being rebuilt (viewkeeper never uses CASCADE): leave that upstream alone too.
            Err(PlanError::Blocked(blockers)) if keep_going && !left_out.is_empty() => {
                for blocker in blockers {
                    left_out.skip(&blocker.object, &blocker.dependent);
                }
                continue;
            }
            Err(error) => return Err(error.into()),
        };
        if plan.is_empty()
            && plan.records().is_empty()
            && left_out.is_empty()
            && owed_record.is_none()
            && catalog.stale_rule_hashes.is_empty()
        {
            // Nothing to do: no DDL, no lock on any view, nothing written.
            transaction
                .rollback()
                .await
                .map_err(database("cannot end the transaction"))?;
            return Ok(Reconciled {
                plan,
                catalog_queries: catalog.queries_issued,
                elapsed: started.elapsed(),
                failed: Vec::new(),
                skipped: Vec::new(),
            });
        }
        if !schema_ready {
            transaction
                .batch_execute(&crate::sql::state::create_schema(
                    &config.state_schema,
                    !catalog.state_records_rule_hashes,
                ))
                .await
                .map_err(database("cannot create viewkeeper's state schema"))?;
            schema_ready = true;
        }
        // The state tables are this transaction's (made above if new): the restore's
        // sessions never touch them, so nothing they do waits for this one.
        if let Some(workers) = workers
            && pass == Pass::First
            && left_out.is_empty()
            && let Some(fills) = parallel::restore(
                &plan,
                &graph,
                config,
                workers,
                &mut left_out,
                &mut committed.restored,
                &mut on_statement,
            )
            .await?
        {
            restored_fills = fills;
            if left_out.is_empty() {
                break plan;
            }
            // What was applied is the plan without what was left out: report and record that.
            let (project, catalog) = left_out.apply(project, &catalog);
            break planner(&project, &catalog, pass).unwrap_or(plan);
        }
        if pass == Pass::First && plan.builds_side_by_side() {
            // The builds commit on their own, before the swap: readers keep using the old
            // versions meanwhile. Then everything is read and planned again, and the plan
            // now swaps the copies in (built copies are part of the catalog). A declared
            // query PostgreSQL rejects is found first, by the compile step, so a failing
            // reconcile leaves no copies behind.
            if !keep_going
                && let Err(refusal) = prove_before_building(&transaction, project, &plan).await?
            {
                if !refusal.timed_out() {
                    return Err(refusal.into_error());
                }
                // Named once our own transaction is gone, so the holders listed are the others.
                let object = refusal.statement().object.clone();
                transaction
                    .rollback()
                    .await
                    .map_err(database("cannot end the transaction"))?;
                let mut failure = refusal.into_statement_error();
                failure.message =
                    crate::waits::compile_gave_up(&*client, &object, config.lock_timeout).await;
                return Err(ApplyError::Statement(Box::new(failure)));
            }
            let built = build_side_by_side(
                &transaction,
                &plan,
                config,
                keep_going,
                &graph,
                &mut left_out,
                &mut on_statement,
            )
            .await
            .map_err(|failure| failure.into_error())?;
            if let Err(error) = transaction.commit().await {
                return Err(commit_error(client, error));
            }
            committed.copies.extend(built);
            transaction = client
                .transaction()
                .await
                .map_err(database("cannot start a transaction"))?;
            if let Err(error) = prepare(&transaction, config).await {
                transaction
                    .rollback()
                    .await
                    .map_err(database("cannot end the transaction"))?;
                return Err(prepare_failed(client, config, error).await);
            }
            catalog = match read_catalog(&mut transaction, project).await {
                Ok(catalog) => catalog,
                Err(error) => {
                    transaction
                        .rollback()
                        .await
                        .map_err(database("cannot end the transaction"))?;
                    return Err(catalog_failed(client, config, &error).await);
                }
            };
            pass = Pass::AfterBuild;
            continue;
        }
        let statements = plan.statements();
        if !keep_going {
            if let Err((index, error)) =
                run_statements(&transaction, &statements, config, &mut on_statement).await
            {
                let statement = &statements[index];
                let mut failure = statement_error(&statements, index, &error);
                // A lock wait that gave up: say who holds the lock (read once our own
                // transaction is gone, so the list is of the sessions still there).
                if crate::waits::timed_out(&error) {
                    transaction
                        .rollback()
                        .await
                        .map_err(database("cannot end the transaction"))?;
                    failure.message = lock_wait_given_up(&*client, statement, &graph, config).await;
                }
                return Err(ApplyError::Statement(Box::new(failure)));
            }
            break plan;
        }
        transaction
            .batch_execute(&session::savepoint("viewkeeper_attempt"))
            .await
            .map_err(database("cannot start a savepoint"))?;
        // Progress is told once the attempt stands, so nothing rolled back is reported.
        let mut done = Vec::new();
        let outcome = run_statements(&transaction, &statements, config, &mut |statement, took| {
            done.push((statement.clone(), took));
        })
        .await;
        match outcome {
            Ok(()) => {
                for (statement, took) in &done {
                    on_statement(statement, *took);
                }
                break plan;
            }
            // A lost connection is not the object's fault: nothing more can be done.
            Err((_, error)) if error.as_db_error().is_none() => {
                return Err(database("lost the connection")(error));
            }
            Err((index, error)) => {
                let statement = &statements[index];
                let failure = statement_error(&statements, index, &error);
                transaction
                    .batch_execute(&session::rollback_to("viewkeeper_attempt"))
                    .await
                    .map_err(database("cannot roll back to a savepoint"))?;
                left_out.fail(&statement.object, failure, &graph);
            }
        }
    };
    let written = write_state(
        &transaction,
        config,
        &plan,
        &catalog.stale_rule_hashes,
        &restored_fills,
        restore_owed,
        left_out.is_empty(),
    )
    .await;
    if let Err(error) = written {
        // Said once our own transaction is gone, so the holders listed are the others.
        transaction
            .rollback()
            .await
            .map_err(database("cannot end the transaction"))?;
        return Err(ApplyError::Database {
            context: "cannot record what was applied",
            message: crate::waits::explain(
                client,
                &error,
                config.lock_timeout,
                &config.state_schema,
            )
            .await,
        });
    }
    if let Err(error) = transaction.commit().await {
        return Err(commit_error(client, error));
    }
    let (failed, skipped) = left_out.into_report();
    Ok(Reconciled {
        plan,
        catalog_queries: catalog.queries_issued,
        elapsed: started.elapsed(),
        failed,
        skipped,
    })
}

/// What a statement that gave up waiting for a lock says: who holds a lock on its object or
/// on anything the object reads (a create waits for the tables it reads).
async fn lock_wait_given_up(
    client: &Client,
    statement: &Statement,
    graph: &DependencyGraph,
    config: &crate::project::Config,
) -> String {
    let mut holders = Vec::new();
    let mut relations = vec![statement.object.clone()];
    relations.extend(graph.dependencies(&statement.object));
    for relation in &relations {
        for holder in crate::waits::holders_of(client, relation)
            .await
            .unwrap_or_default()
        {
            if !holders.contains(&holder) {
                holders.push(holder);
            }
        }
    }
    if holders.is_empty() {
        // The graph knows declared objects; a table read by the query may be the one held.
        holders = crate::waits::strong_holders(client)
            .await
            .unwrap_or_default();
    }
    crate::waits::gave_up(
        &format!(
            "a lock on {} or what it reads ({})",
            statement.object, statement.summary
        ),
        config.lock_timeout,
        &holders,
    )
}

/// The state's side of an applied plan, in its transaction: the records (those of objects
/// that are not there, left out, are not written), the side-by-side copies, the rule hashes
/// of unchanged views recorded by an older viewkeeper, the fills a parallel restore made,
/// and the restore owed after `run --drop-first`.
async fn write_state(
    transaction: &Transaction<'_>,
    config: &crate::project::Config,
    plan: &Plan,
    stale_rule_hashes: &[QualifiedName],
    restored_fills: &[state::LoggedRefresh],
    restore_owed: RestoreOwed,
    all_applied: bool,
) -> Result<(), tokio_postgres::Error> {
    let schema = &config.state_schema;
    if !restored_fills.is_empty() {
        state::log_refreshes(transaction, schema, restored_fills).await?;
    }
    state::write(transaction, schema, &plan.records(), &plan.forgotten()).await?;
    state::write_builds(
        transaction,
        schema,
        &plan.recorded_builds(),
        &plan.forgotten_builds(),
    )
    .await?;
    state::write_rule_hashes(transaction, schema, stale_rule_hashes).await?;
    match restore_owed {
        RestoreOwed::Owe if !plan.is_empty() => state::owe_restore(transaction, schema).await,
        RestoreOwed::Owe => Ok(()),
        // With keep-going, what failed is still owed.
        RestoreOwed::Settle if all_applied => state::settle_restore(transaction, schema).await,
        RestoreOwed::Settle => Ok(()),
    }
}

/// Which planning of one apply: the first, or the one after side-by-side builds committed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pass {
    First,
    AfterBuild,
}

/// Why a transaction could not be given reconcile's settings and lock.
enum PrepareError {
    /// Another session holds reconcile's advisory lock past `lock-timeout`.
    LockTimedOut,
    Database {
        context: &'static str,
        error: tokio_postgres::Error,
    },
}

/// Makes `transaction` wait at most `lock-timeout` for any lock, takes reconcile's advisory
/// lock, and marks the transaction as viewkeeper's own for the guard. On failure the caller
/// rolls back, then asks [`prepare_failed`] for the error.
async fn prepare(
    transaction: &Transaction<'_>,
    config: &crate::project::Config,
) -> Result<(), PrepareError> {
    let failed = |context| move |error| PrepareError::Database { context, error };
    // Set first, so lock_timeout bounds the wait for the advisory lock too.
    session_settings(transaction, config)
        .await
        .map_err(failed("cannot set up the session"))?;
    // Waits for a concurrent reconcile (or reader) to finish; released by commit or
    // rollback, so it cannot leak (unlike a session lock on an early return).
    if let Err(error) = transaction
        .execute(
            session::advisory_xact_lock(session::LockMode::Exclusive, false),
            &[&lock_key(&config.state_schema)],
        )
        .await
    {
        if crate::waits::timed_out(&error) {
            return Err(PrepareError::LockTimedOut);
        }
        return Err(failed("cannot take viewkeeper's advisory lock")(error));
    }
    Ok(())
}

/// The settings of every transaction that changes views: `lock_timeout`, and the mark the
/// guard knows viewkeeper's own statements by.
async fn session_settings(
    transaction: &Transaction<'_>,
    config: &crate::project::Config,
) -> Result<(), tokio_postgres::Error> {
    // Give up instead of queueing behind a long-running query that holds a view: waiting
    // would also block every reader queued behind our own ACCESS EXCLUSIVE request.
    crate::waits::bound(transaction, config.lock_timeout).await?;
    // viewkeeper's own drops are not "dropped outside viewkeeper": the guard skips them.
    transaction
        .batch_execute(&session::set_local_on(crate::guard::APPLYING_SETTING))
        .await
}

/// The error for a transaction [`prepare`] failed on (rolled back by now): names who
/// holds the lock it gave up on.
async fn prepare_failed(
    client: &Client,
    config: &crate::project::Config,
    error: PrepareError,
) -> ApplyError {
    match error {
        PrepareError::Database { context, error } => database(context)(error),
        PrepareError::LockTimedOut => {
            let holders = crate::waits::holders(client, &config.state_schema)
                .await
                .unwrap_or_default();
            ApplyError::Database {
                context: "cannot take viewkeeper's advisory lock",
                message: crate::waits::gave_up("it", config.lock_timeout, &holders),
            }
        }
    }
}

/// The error for a catalog read that failed (its transaction rolled back by now): a lock
/// wait that gave up names who holds the lock.
async fn catalog_failed(
    client: &Client,
    config: &crate::project::Config,
    error: &tokio_postgres::Error,
) -> ApplyError {
    ApplyError::Database {
        context: "cannot read the catalog",
        message: crate::waits::explain(client, error, config.lock_timeout, &config.state_schema)
            .await,
    }
}

/// A failed build phase.
struct BuildFailure(ApplyError);

impl BuildFailure {
    fn into_error(self) -> ApplyError {
        self.0
    }
}

/// The compile step of `plan`, run in a savepoint rolled back afterwards: the plan's
/// queries, compiled as temporary views, all apply.
async fn prove_before_building(
    transaction: &Transaction<'_>,
    project: &Project,
    plan: &Plan,
) -> Result<Result<(), crate::catalog::prove::Refusal>, ApplyError> {
    let run = |sql: String| async move {
        transaction
            .batch_execute(&sql)
            .await
            .map_err(database("cannot use a savepoint"))
    };
    run(session::savepoint("viewkeeper_prove")).await?;
    if let Err(refusal) = crate::catalog::prove::prove(transaction, project, plan).await {
        return Ok(Err(refusal));
    }
    run(session::rollback_to("viewkeeper_prove")).await?;
    Ok(Ok(()))
}

/// Runs the plan's side-by-side builds and records them, in `transaction` (which the caller
/// commits). With keep-going, each object's build runs in a savepoint: one that fails is
/// rolled back and left out, and the others are kept.
async fn build_side_by_side(
    transaction: &Transaction<'_>,
    plan: &Plan,
    config: &crate::project::Config,
    keep_going: bool,
    graph: &DependencyGraph,
    left_out: &mut LeftOut,
    on_statement: &mut impl FnMut(&Statement, Duration),
) -> Result<Vec<(QualifiedName, QualifiedName)>, BuildFailure> {
    let steps: Vec<&crate::plan::Step> = plan
        .steps
        .iter()
        .filter(|step| step.phase() == Phase::Build)
        .collect();
    let mut objects: Vec<&QualifiedName> = steps.iter().map(|step| &step.object).collect();
    objects.dedup();
    let mut recorded = Vec::new();
    for object in objects {
        let of_object = || steps.iter().filter(|step| step.object == *object);
        let statements: Vec<Statement> = of_object().filter_map(|step| step.statement()).collect();
        if keep_going {
            transaction
                .batch_execute(&session::savepoint("viewkeeper_build"))
                .await
                .map_err(|error| BuildFailure(database("cannot start a savepoint")(error)))?;
        }
        match run_statements(transaction, &statements, config, on_statement).await {
            Ok(()) => recorded.extend(of_object().filter_map(|step| match &step.op {
                crate::plan::Op::RecordBuild(build) => Some(build),
                _ => None,
            })),
            Err((index, error)) if keep_going && error.as_db_error().is_some() => {
                let failure = statement_error(&statements, index, &error);
                transaction
                    .batch_execute(&session::rollback_to("viewkeeper_build"))
                    .await
                    .map_err(|error| {
                        BuildFailure(database("cannot roll back to a savepoint")(error))
                    })?;
                left_out.fail(object, failure, graph);
            }
            Err((index, error)) => {
                return Err(BuildFailure(ApplyError::Statement(Box::new(
                    statement_error(&statements, index, &error),
                ))));
            }
        }
    }
    state::write_builds(transaction, &config.state_schema, &recorded, &[])
        .await
        .map_err(|error| BuildFailure(database("cannot record the builds")(error)))?;
    Ok(recorded
        .iter()
        .map(|build| (build.target.clone(), build.temp.clone()))
        .collect())
}

/// Runs the plan's statements in order; on failure, the index of the failing one.
async fn run_statements(
    transaction: &Transaction<'_>,
    statements: &[Statement],
    config: &crate::project::Config,
    on_statement: &mut impl FnMut(&Statement, Duration),
) -> Result<(), (usize, tokio_postgres::Error)> {
    // Refreshes made here (and creates that fill) count in the history, so `schedule` starts
    // its periods from them. The server's clock is read once; each start is offset from it.
    let fills = |statement: &Statement| statement.phase == Phase::Refresh || statement.fills;
    let clock = match statements.iter().position(fills) {
        Some(first) => {
            let row = transaction
                .query_one(session::CLOCK, &[])
                .await
                .map_err(|error| (first, error))?;
            Some((
                row.get::<_, chrono::DateTime<chrono::Utc>>(0),
                Instant::now(),
            ))
        }
        None => None,
    };
    // The extended protocol runs exactly one statement: a declared query cannot smuggle
    // in a second one (`SELECT …; DROP TABLE …`) or end the transaction early. Unnamed and
    // untyped (one round trip each, where a prepared statement takes two), and pipelined:
    // all are sent in order without waiting, the server runs them one at a time, and the
    // answers come back in order. After a failure the rest fail at once (the transaction is
    // aborted); the first failure is the one reported, once every answer is in. Each
    // statement's time runs from the previous answer to its own: the server's time on it.
    let mut answers: FuturesOrdered<_> = statements
        .iter()
        .map(|statement| transaction.query_typed(&statement.sql, &[]))
        .collect();
    let mut refreshes = Vec::new();
    let mut failure = None;
    let mut previous_answer = Instant::now();
    for (index, statement) in statements.iter().enumerate() {
        let Some(answer) = answers.next().await else {
            break;
        };
        let answered = Instant::now();
        let statement_started = previous_answer;
        let took = answered.saturating_duration_since(statement_started);
        previous_answer = answered;
        if failure.is_some() {
            continue;
        }
        if let Err(error) = answer {
            failure = Some((index, error));
            continue;
        }
        if let Some((server_time, read_at)) = clock
            && fills(statement)
        {
            let offset = statement_started.saturating_duration_since(read_at);
            let started_at = server_time + chrono::TimeDelta::from_std(offset).unwrap_or_default();
            refreshes.push(state::LoggedRefresh {
                name: statement.object.clone(),
                started_at,
                duration: took,
            });
        }
        on_statement(statement, took);
    }
    if let Some(failure) = failure {
        return Err(failure);
    }
    if let Some(last) = statements.len().checked_sub(1)
        && !refreshes.is_empty()
    {
        state::log_refreshes(transaction, &config.state_schema, &refreshes)
            .await
            .map_err(|error| (last, error))?;
    }
    Ok(())
}

/// With keep-going: the objects left as they are, because they failed or because they
/// depend on (or are read by) one that did.
#[derive(Default)]
struct LeftOut {
    failed: Vec<(QualifiedName, StatementError)>,
    /// Each with the object that made it so.
    skipped: BTreeMap<QualifiedName, QualifiedName>,
}

impl LeftOut {
    fn is_empty(&self) -> bool {
        self.failed.is_empty() && self.skipped.is_empty()
    }

    fn contains(&self, name: &QualifiedName) -> bool {
        self.skipped.contains_key(name) || self.failed.iter().any(|(failed, _)| failed == name)
    }

    fn fail(&mut self, name: &QualifiedName, error: StatementError, graph: &DependencyGraph) {
        self.skipped.remove(name);
        self.failed.push((name.clone(), error));
        for dependent in graph.with_dependents(std::slice::from_ref(name)) {
            if dependent != *name {
                self.skip(&dependent, name);
            }
        }
    }

    fn skip(&mut self, name: &QualifiedName, because: &QualifiedName) {
        if !self.contains(name) {
            self.skipped.insert(name.clone(), because.clone());
        }
    }

    /// The project and catalog as the planner should see them: the left-out objects are
    /// neither declared nor managed, so it neither changes nor drops them.
    fn apply(&self, project: &Project, catalog: &Catalog) -> (Project, Catalog) {
        let mut project = project.clone();
        project.declarations.retain(|name, _| !self.contains(name));
        let mut catalog = catalog.clone();
        if let Some(state) = catalog.state.as_mut() {
            state.objects.retain(|name, _| !self.contains(name));
        }
        (project, catalog)
    }

    fn into_report(self) -> (Vec<Failure>, Vec<(QualifiedName, QualifiedName)>) {
        (self.failed, self.skipped.into_iter().collect())
    }
}

/// A failed COMMIT: a plain error (a deferred constraint, a serialization failure) means the
/// server rolled back; a lost connection or a fatal error means nobody can say.
fn commit_error(client: &Client, error: tokio_postgres::Error) -> ApplyError {
    let fatal = error
        .as_db_error()
        .is_none_or(|db| matches!(db.severity(), "FATAL" | "PANIC"));
    if fatal || client.is_closed() {
        ApplyError::CommitOutcomeUnknown {
            message: describe(&error),
        }
    } else {
        database("cannot commit")(error)
    }
}

fn database(context: &'static str) -> impl Fn(tokio_postgres::Error) -> ApplyError {
    move |error| ApplyError::Database {
        context,
        message: describe(&error),
    }
}

/// Whether `error` says nothing about the statement (trying again may work): SQLSTATE
/// classes 08 (connection), 40 (rollback: deadlock, serialization), 53 (resources), 55 (lock
/// not available), 57 (cancelled, shutdown), or no SQLSTATE at all (a lost connection).
pub(crate) fn is_transient(error: &tokio_postgres::Error) -> bool {
    error
        .code()
        .is_none_or(|code| matches!(&code.code()[..2], "08" | "40" | "53" | "55" | "57"))
}

/// The error of `statements[index]`, located in its declaration file where it can be.
pub(crate) fn statement_error(
    statements: &[Statement],
    index: usize,
    error: &tokio_postgres::Error,
) -> StatementError {
    let statement = &statements[index];
    let message = describe(error);
    let transient = is_transient(error);
    let position = match error.as_db_error().and_then(|db| db.position()) {
        Some(ErrorPosition::Original(position)) => Some(*position as usize),
        _ => None,
    };
    let spot = statement
        .query
        .as_ref()
        .and_then(|query| position.and_then(|p| locate(query, p)));
    let declared_in = statement.query.as_ref().map(|query| {
        format!(
            "{}:{}",
            query.origin.file.path.display(),
            query.origin.first_line
        )
    });
    let help = match (
        missing_declared_dependency(&statements[index..], error),
        &declared_in,
    ) {
        (Some(missing), _) => format!(
            "{} reads {missing}, which is declared but created after it: add `depends-on \"{missing}\"` \
             to its declaration so it is created first",
            statement.object
        ),
        (None, _) if error.code() == Some(&SqlState::INSUFFICIENT_PRIVILEGE) => {
            "grant the right named above, then run again".to_owned()
        }
        (None, Some(_)) => "fix the declared query".to_owned(),
        (None, None) => format!("the failing statement was:\n{}", statement.sql),
    };
    match spot {
        Some(spot) => StatementError {
            object: statement.object.to_string(),
            message,
            location: Some(format!("{}:{}:{}", spot.path, spot.line, spot.column)),
            source_code: Some(spot.source),
            span: Some(spot.span),
            help,
            transient,
        },
        None => StatementError {
            object: statement.object.to_string(),
            message,
            location: declared_in,
            source_code: None,
            span: None,
            help,
            transient,
        },
    }
}

/// For `relation "x" does not exist` while creating a view: the declared object `x` that
/// the plan creates later, because no `depends-on` told it to come first.
/// `statements` starts with the failing one.
fn missing_declared_dependency(
    statements: &[Statement],
    error: &tokio_postgres::Error,
) -> Option<QualifiedName> {
    if error.code() != Some(&SqlState::UNDEFINED_TABLE) {
        return None;
    }
    let message = error.as_db_error()?.message();
    let quoted = message
        .strip_prefix("relation \"")?
        .strip_suffix("\" does not exist")?;
    let missing = QualifiedName::parse(quoted, "public").ok()?;
    statements
        .iter()
        .any(|later| later.phase == Phase::Create && later.object == missing)
        .then_some(missing)
}

/// A spot in a declaration file.
struct Spot {
    path: String,
    line: usize,
    column: usize,
    source: NamedSource<Arc<String>>,
    span: SourceSpan,
}

/// Maps PostgreSQL's 1-based character position in the statement to the file and line of
/// the declared query.
fn locate(query: &EmbeddedQuery, position: usize) -> Option<Spot> {
    let index = position.checked_sub(1)?.checked_sub(query.offset_chars)?;
    let index = crate::compile::unshift(&query.shifts, index);
    let before: String = query.text.chars().take(index).collect();
    if before.chars().count() < index {
        return None;
    }
    let line_in_query = before.matches('\n').count();
    let column_in_line = before.rsplit('\n').next().map_or(0, |l| l.chars().count());
    let origin = &query.origin;
    let spot = origin.spot(&query.text, line_in_query, column_in_line)?;
    let file = &origin.file;
    Some(Spot {
        path: file.path.display().to_string(),
        line: spot.line,
        column: spot.column,
        source: NamedSource::new(file.path.display().to_string(), Arc::clone(&file.text)),
        span: spot.span,
    })
}
