//! Restoring missing objects on several sessions at once. Each object is built in a
//! transaction of its own and committed as soon as it is built; an object starts once every
//! object of the plan it reads is committed. Only plans that create or fill objects qualify
//! (after a CASCADE loss, in `run`, in healing): nothing that exists is touched, so the order
//! alone keeps each step correct.
//!
//! What it trades: objects appear one by one instead of all at once, and one that fails is
//! left out with what reads it while the others stay (as `--keep-going` does). The caller's
//! transaction keeps reconcile's advisory lock until every worker is done, so no other
//! reconcile interleaves.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::time::Duration;

use std::time::Instant;

use chrono::{DateTime, Utc};
use futures_util::stream::{FuturesOrdered, FuturesUnordered, StreamExt};
use tokio_postgres::Client;

use super::{ApplyError, LeftOut, database, statement_error};
use crate::graph::DependencyGraph;
use crate::name::QualifiedName;
use crate::plan::{Change, Phase, Plan, Statement};
use crate::project::Config;
use crate::sql::session;
use crate::state;

/// Where and how many extra sessions a restore may use.
#[derive(Debug, Clone)]
pub struct Workers {
    /// The connection string of the database being reconciled.
    pub url: String,
    /// How many sessions build objects at once.
    pub jobs: usize,
}

/// Restore sessions when none are asked for: one per CPU, at most 4 (beyond that the
/// server's own work, not viewkeeper's, is what limits a restore).
pub fn default_jobs() -> usize {
    std::thread::available_parallelism()
        .map_or(1, std::num::NonZero::get)
        .min(4)
}

/// One object of a restoring plan and its statements, in order.
struct Unit<'p> {
    object: &'p QualifiedName,
    statements: Vec<Statement>,
    /// The other units it reads, directly or through kept objects.
    reads: BTreeSet<&'p QualifiedName>,
}

/// The units of `plan` when it only creates and fills objects and has at least two of them;
/// `None` when it must run as one transaction.
fn units<'p>(plan: &'p Plan, graph: &DependencyGraph) -> Option<Vec<Unit<'p>>> {
    let restores_only = plan.steps.iter().all(|step| {
        matches!(
            step.change,
            Change::Create | Change::Refresh | Change::Adopt
        ) && step.phase() != Phase::Build
    });
    if !restores_only {
        return None;
    }
    let mut units: Vec<Unit<'p>> = Vec::new();
    let mut position: BTreeMap<&QualifiedName, usize> = BTreeMap::new();
    // Steps are in execution order, so each object's statements stay in theirs.
    for step in plan
        .steps
        .iter()
        .filter(|step| step.change != Change::Adopt)
    {
        let at = *position.entry(&step.object).or_insert_with(|| {
            units.push(Unit {
                object: &step.object,
                statements: Vec::new(),
                reads: BTreeSet::new(),
            });
            units.len() - 1
        });
        if let Some(statement) = step.statement() {
            units[at].statements.push(statement);
        }
    }
    if units.len() < 2 {
        return None;
    }
    let names: BTreeSet<&QualifiedName> = position.keys().copied().collect();
    for unit in &mut units {
        unit.reads = graph
            .with_dependencies(std::iter::once(unit.object))
            .iter()
            .filter_map(|name| names.get(name).copied())
            .filter(|name| *name != unit.object)
            .collect();
    }
    Some(units)
}

/// Builds the objects of `plan` on `workers.jobs` new sessions, when the plan only restores
/// (`None`, having done nothing, otherwise). Failures go to `left_out`, with everything that
/// reads the failed object; `restored` gets each object once committed. Returns the fills to
/// log; the caller writes them and the records in its own transaction (a restore killed
/// before that leaves objects the next reconcile adopts, as they match).
pub(super) async fn restore(
    plan: &Plan,
    graph: &DependencyGraph,
    config: &Config,
    workers: &Workers,
    left_out: &mut LeftOut,
    restored: &mut Vec<QualifiedName>,
    on_statement: &mut impl FnMut(&Statement, Duration),
) -> Result<Option<Vec<state::LoggedRefresh>>, ApplyError> {
    let Some(units) = units(plan, graph) else {
        return Ok(None);
    };
    // Opened at once: each connection is a few round trips of its own.
    let mut idle = futures_util::future::try_join_all(
        (0..workers.jobs.clamp(1, units.len()))
            .map(|_| crate::db::connect(&workers.url, &config.search_path)),
    )
    .await
    .map_err(|error| ApplyError::Database {
        context: "cannot open a session for the restore",
        message: error.to_string(),
    })?;
    let mut refreshes = Vec::new();
    // How many of its reads each unit still waits for, and who reads each unit: a unit is
    // ready when its count reaches 0. One that reads a failed unit never gets there (it is
    // reported as skipped).
    let mut waiting: Vec<usize> = units.iter().map(|unit| unit.reads.len()).collect();
    let mut readers: BTreeMap<&QualifiedName, Vec<usize>> = BTreeMap::new();
    for (position, unit) in units.iter().enumerate() {
        for read in &unit.reads {
            readers.entry(*read).or_default().push(position);
        }
    }
    let mut ready: VecDeque<usize> = (0..units.len()).filter(|&at| waiting[at] == 0).collect();
    let mut running = FuturesUnordered::new();
    loop {
        // Share the ready units among the free sessions.
        while !ready.is_empty() {
            let Some(client) = idle.pop() else {
                break;
            };
            let share = ready.len().div_ceil(idle.len() + 1).clamp(1, MAX_BATCH);
            let batch: Vec<usize> = ready.drain(..share).collect();
            let units = &units;
            running.push(async move {
                let of_batch: Vec<&Unit<'_>> = batch.iter().map(|&at| &units[at]).collect();
                let outcome = build(&client, &of_batch, graph, config).await;
                (client, batch, outcome)
            });
        }
        let Some((client, batch, outcome)) = running.next().await else {
            break;
        };
        idle.push(client);
        match outcome {
            Ok(built) => {
                for (&at, (took_each, mut logged)) in batch.iter().zip(built) {
                    let unit = &units[at];
                    // Told once committed, so nothing rolled back is reported.
                    for (statement, took) in unit.statements.iter().zip(took_each) {
                        on_statement(statement, took);
                    }
                    refreshes.append(&mut logged);
                    restored.push(unit.object.clone());
                    for &reader in readers.get(unit.object).into_iter().flatten() {
                        waiting[reader] = waiting[reader].saturating_sub(1);
                        if waiting[reader] == 0 {
                            ready.push_back(reader);
                        }
                    }
                }
            }
            Err(Built::Failed(failed, failure)) => {
                // The batch is rolled back: the failed unit is left out, the others go
                // again, in batches of their own.
                for (position, &at) in batch.iter().enumerate() {
                    if position != failed {
                        ready.push_back(at);
                    }
                }
                if let Some(&at) = batch.get(failed) {
                    left_out.fail(units[at].object, *failure, graph);
                }
            }
            // A session gone, or a commit whose outcome nobody knows: stop starting work,
            // let the others finish, and report it.
            Err(Built::Broken(error)) => {
                while running.next().await.is_some() {}
                return Err(error);
            }
        }
    }
    // Units never started read a failed one: `left_out.fail` listed them as skipped.
    Ok(Some(refreshes))
}

/// At most this many ready objects go in one transaction: fewer commits and round trips
/// than one each, while objects still appear a few at a time.
const MAX_BATCH: usize = 32;

/// Why a batch was not built.
enum Built {
    /// PostgreSQL refused a statement of the unit at this position of the batch: it is
    /// left out, the rest goes on.
    Failed(usize, Box<super::StatementError>),
    /// The session cannot go on.
    Broken(ApplyError),
}

/// What one built unit reports: each statement's time, and the fills to log.
type BuiltUnit = (Vec<Duration>, Vec<state::LoggedRefresh>);

/// A batch of units in one transaction, sent as one wave without waiting between
/// statements (tokio-postgres pipelines what is polled together): BEGIN, the settings, the
/// clock, the units' statements, COMMIT. After a failure the server fails the rest at once
/// (the transaction is aborted) and COMMIT rolls back; the first failure is the one
/// reported, with the position of its unit in the batch.
async fn build(
    client: &Client,
    batch: &[&Unit<'_>],
    graph: &DependencyGraph,
    config: &Config,
) -> Result<Vec<BuiltUnit>, Built> {
    let broken = |context| move |error| Built::Broken(database(context)(error));
    // Each statement with the position of its unit and its own within the unit.
    let statements: Vec<(usize, usize, &Statement)> = batch
        .iter()
        .enumerate()
        .flat_map(|(at, unit)| {
            unit.statements
                .iter()
                .enumerate()
                .map(move |(index, statement)| (at, index, statement))
        })
        .collect();
    let begin = client.query_typed(session::BEGIN, &[]);
    let settings = [
        session::set_local_lock_timeout(config.lock_timeout),
        session::set_local_on(crate::guard::APPLYING_SETTING),
    ];
    let settings =
        futures_util::future::try_join_all(settings.iter().map(|sql| client.query_typed(sql, &[])));
    let clock = client.query_one(session::CLOCK, &[]);
    let answers = async {
        let mut answers: FuturesOrdered<_> = statements
            .iter()
            .map(|(_, _, statement)| client.query_typed(&statement.sql, &[]))
            .collect();
        let mut took_each = Vec::new();
        let mut last = Instant::now();
        let mut failure = None;
        while let Some(answer) = answers.next().await {
            let now = Instant::now();
            match answer {
                Err(error) if failure.is_none() => failure = Some((took_each.len(), error)),
                _ => {}
            }
            took_each.push(now.saturating_duration_since(last));
            last = now;
        }
        match failure {
            Some(failure) => Err(failure),
            None => Ok(took_each),
        }
    };
    let commit = client.query_typed(session::COMMIT, &[]);
    let (begun, settings, clock, answers, committed) =
        tokio::join!(begin, settings, clock, answers, commit);
    begun.map_err(broken("cannot start a transaction"))?;
    let failed = |at: usize, index: usize, error: &tokio_postgres::Error| {
        let statements = batch.get(at).map_or(&[][..], |unit| &unit.statements[..]);
        Built::Failed(at, Box::new(statement_error(statements, index, error)))
    };
    let took_each = match answers {
        Ok(took_each) => took_each,
        Err((_, error)) if error.as_db_error().is_none() => {
            return Err(broken("lost the connection")(error));
        }
        Err((position, error)) => {
            let (at, index) = statements
                .get(position)
                .map_or((0, 0), |(at, index, _)| (*at, *index));
            // A lock wait that gave up is not the object's fault, and going on would wait
            // again for each object: the whole restore gives up, as a serial one does.
            if crate::waits::timed_out(&error)
                && let Some((_, _, statement)) = statements.get(position)
            {
                let mut failure = statement_error(
                    batch.get(at).map_or(&[][..], |unit| &unit.statements[..]),
                    index,
                    &error,
                );
                failure.message = super::lock_wait_given_up(client, statement, graph, config).await;
                return Err(Built::Broken(ApplyError::Statement(Box::new(failure))));
            }
            return Err(failed(at, index, &error));
        }
    };
    settings.map_err(broken("cannot set up the session"))?;
    let started_at: DateTime<Utc> = clock.map_err(broken("cannot read the clock"))?.get(0);
    if let Err(error) = committed {
        if error.as_db_error().is_none() || client.is_closed() {
            return Err(Built::Broken(super::commit_error(client, error)));
        }
        // A deferred check at COMMIT names no statement: it is told as the last one's.
        let at = batch.len().saturating_sub(1);
        let index = batch
            .last()
            .map_or(0, |unit| unit.statements.len().saturating_sub(1));
        return Err(failed(at, index, &error));
    }

    // Fills count in the refresh history, so `schedule` starts its periods from them.
    let mut built: Vec<BuiltUnit> = batch.iter().map(|_| (Vec::new(), Vec::new())).collect();
    let mut offset = Duration::ZERO;
    for ((at, _, statement), took) in statements.iter().zip(&took_each) {
        let Some((took_of_unit, refreshes)) = built.get_mut(*at) else {
            continue;
        };
        took_of_unit.push(*took);
        if statement.phase == Phase::Refresh || statement.fills {
            refreshes.push(state::LoggedRefresh {
                name: statement.object.clone(),
                started_at: started_at + chrono::TimeDelta::from_std(offset).unwrap_or_default(),
                duration: *took,
            });
        }
        offset += *took;
    }
    Ok(built)
}
