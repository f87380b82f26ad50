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

use std::collections::{BTreeMap, BTreeSet};
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

/// Whether [`restore`] would take `plan`.
pub(super) fn qualifies(plan: &Plan, graph: &DependencyGraph) -> bool {
    units(plan, graph).is_some()
}

/// Builds the objects of `plan` (which [`qualifies`]) on `workers.jobs` new sessions.
/// Failures go to `left_out`, with everything that reads the failed object. Returns the
/// fills to log; the caller writes them and the records in its own transaction (a restore
/// killed before that leaves objects the next reconcile adopts, as they match).
pub(super) async fn restore(
    plan: &Plan,
    graph: &DependencyGraph,
    config: &Config,
    workers: &Workers,
    left_out: &mut LeftOut,
    on_statement: &mut impl FnMut(&Statement, Duration),
) -> Result<Vec<state::LoggedRefresh>, ApplyError> {
    let Some(units) = units(plan, graph) else {
        return Ok(Vec::new());
    };
    let mut idle = Vec::new();
    for _ in 0..workers.jobs.clamp(1, units.len()) {
        let client = crate::db::connect(&workers.url, &config.search_path)
            .await
            .map_err(|error| ApplyError::Database {
                context: "cannot open a session for the restore",
                message: error.to_string(),
            })?;
        idle.push(client);
    }
    let mut refreshes = Vec::new();
    let mut done: BTreeSet<&QualifiedName> = BTreeSet::new();
    let mut started: BTreeSet<&QualifiedName> = BTreeSet::new();
    let mut running = FuturesUnordered::new();
    loop {
        // Start every unit whose reads are all committed, while a session is free. A unit
        // reading a failed one is never started (it is reported as skipped).
        while !idle.is_empty() {
            let Some(unit) = units.iter().find(|unit| {
                !started.contains(unit.object) && unit.reads.iter().all(|read| done.contains(read))
            }) else {
                break;
            };
            let Some(client) = idle.pop() else {
                break;
            };
            started.insert(unit.object);
            running.push(async move {
                let outcome = build(&client, unit, config).await;
                (client, unit, outcome)
            });
        }
        let Some((client, unit, outcome)) = running.next().await else {
            break;
        };
        match outcome {
            Ok((took_each, mut logged)) => {
                // Told once committed, so nothing rolled back is reported.
                for (statement, took) in unit.statements.iter().zip(took_each) {
                    on_statement(statement, took);
                }
                refreshes.append(&mut logged);
                done.insert(unit.object);
                idle.push(client);
            }
            Err(Built::Failed(failure)) => {
                left_out.fail(unit.object, *failure, graph);
                idle.push(client);
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
    Ok(refreshes)
}

/// Why a unit was not built.
enum Built {
    /// PostgreSQL refused one of its statements: it is left out, the rest goes on.
    Failed(Box<super::StatementError>),
    /// The session cannot go on.
    Broken(ApplyError),
}

/// One unit in its own transaction, sent as one wave without waiting between statements
/// (tokio-postgres pipelines what is polled together): BEGIN, the settings, the clock, the
/// unit's statements, COMMIT. After a failure the server fails the rest at once (the
/// transaction is aborted) and COMMIT rolls back; the first failure is the one reported.
/// Returns what each statement took and the fills to log.
async fn build(
    client: &Client,
    unit: &Unit<'_>,
    config: &Config,
) -> Result<(Vec<Duration>, Vec<state::LoggedRefresh>), Built> {
    let broken = |context| move |error| Built::Broken(database(context)(error));
    let begin = client.query_typed(session::BEGIN, &[]);
    let settings = [
        session::set_local_lock_timeout(config.lock_timeout),
        session::set_local_on(crate::guard::APPLYING_SETTING),
    ];
    let settings =
        futures_util::future::try_join_all(settings.iter().map(|sql| client.query_typed(sql, &[])));
    let clock = client.query_one(session::CLOCK, &[]);
    let statements = async {
        let mut answers: FuturesOrdered<_> = unit
            .statements
            .iter()
            .map(|statement| client.query_typed(&statement.sql, &[]))
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
    let (begun, settings, clock, statements, committed) =
        tokio::join!(begin, settings, clock, statements, commit);
    begun.map_err(broken("cannot start a transaction"))?;
    let took_each = match statements {
        Ok(took_each) => took_each,
        Err((_, error)) if error.as_db_error().is_none() => {
            return Err(broken("lost the connection")(error));
        }
        Err((index, error)) => {
            return Err(Built::Failed(Box::new(statement_error(
                &unit.statements,
                index,
                &error,
            ))));
        }
    };
    settings.map_err(broken("cannot set up the session"))?;
    let started_at: DateTime<Utc> = clock.map_err(broken("cannot read the clock"))?.get(0);
    if let Err(error) = committed {
        if error.as_db_error().is_none() || client.is_closed() {
            return Err(Built::Broken(super::commit_error(client, error)));
        }
        // A deferred check at COMMIT: the unit is rolled back, like a failed statement.
        let last = unit.statements.len().saturating_sub(1);
        return Err(Built::Failed(Box::new(statement_error(
            &unit.statements,
            last,
            &error,
        ))));
    }

    // Fills count in the refresh history, so `schedule` starts its periods from them.
    let mut offset = Duration::ZERO;
    let mut refreshes = Vec::new();
    for (statement, took) in unit.statements.iter().zip(&took_each) {
        if statement.phase == Phase::Refresh || statement.fills {
            refreshes.push(state::LoggedRefresh {
                name: statement.object.clone(),
                started_at: started_at + chrono::TimeDelta::from_std(offset).unwrap_or_default(),
                duration: *took,
            });
        }
        offset += *took;
    }
    Ok((took_each, refreshes))
}
