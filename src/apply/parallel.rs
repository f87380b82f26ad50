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

use std::cell::RefCell;
use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use futures_util::stream::{FuturesUnordered, StreamExt};
use tokio_postgres::Client;

use super::{ApplyError, LeftOut, database, run_statements, session_settings, statement_error};
use crate::graph::DependencyGraph;
use crate::name::QualifiedName;
use crate::objects::Record;
use crate::plan::{Change, Op, Phase, Plan, Statement};
use crate::project::Config;
use crate::state;

/// Where and how many extra sessions a restore may use.
#[derive(Debug, Clone)]
pub struct Workers {
    /// The connection string of the database being reconciled.
    pub url: String,
    /// How many sessions build objects at once.
    pub jobs: usize,
}

/// One object of a restoring plan: its statements, in order, and its record.
struct Unit<'p> {
    object: &'p QualifiedName,
    statements: Vec<Statement>,
    record: Option<&'p Record>,
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
                record: None,
                reads: BTreeSet::new(),
            });
            units.len() - 1
        });
        if let Some(statement) = step.statement() {
            units[at].statements.push(statement);
        }
        if let Op::Record(record) = &step.op {
            units[at].record = Some(record);
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
/// Failures go to `left_out`, with everything that reads the failed object; the objects
/// restored are returned, their records written.
pub(super) async fn restore(
    plan: &Plan,
    graph: &DependencyGraph,
    config: &Config,
    workers: &Workers,
    left_out: &mut LeftOut,
    on_statement: &mut impl FnMut(&Statement, Duration),
) -> Result<BTreeSet<QualifiedName>, ApplyError> {
    let Some(units) = units(plan, graph) else {
        return Ok(BTreeSet::new());
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
    // The state tables must exist, committed, before any worker writes a record.
    if let Some(client) = idle.first() {
        client
            .batch_execute(&crate::sql::state::create_schema(&config.state_schema))
            .await
            .map_err(database("cannot create viewkeeper's state schema"))?;
    }

    let on_statement = RefCell::new(on_statement);
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
            let Some(mut client) = idle.pop() else {
                break;
            };
            started.insert(unit.object);
            let on_statement = &on_statement;
            running.push(async move {
                let outcome = build(&mut client, unit, config, on_statement).await;
                (client, unit, outcome)
            });
        }
        let Some((client, unit, outcome)) = running.next().await else {
            break;
        };
        match outcome {
            Ok(()) => {
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
    Ok(done.into_iter().cloned().collect())
}

/// Why a unit was not built.
enum Built {
    /// PostgreSQL refused one of its statements: it is left out, the rest goes on.
    Failed(Box<super::StatementError>),
    /// The session cannot go on.
    Broken(ApplyError),
}

/// One unit in its own transaction: its statements, its record and the refreshes it made,
/// then COMMIT.
async fn build(
    client: &mut Client,
    unit: &Unit<'_>,
    config: &Config,
    on_statement: &RefCell<&mut impl FnMut(&Statement, Duration)>,
) -> Result<(), Built> {
    let broken = |context| move |error| Built::Broken(database(context)(error));
    let transaction = client
        .transaction()
        .await
        .map_err(broken("cannot start a transaction"))?;
    session_settings(&transaction, config)
        .await
        .map_err(broken("cannot set up the session"))?;
    let mut took_each = Vec::new();
    let outcome = run_statements(
        &transaction,
        &unit.statements,
        config,
        &mut |statement, took| {
            took_each.push((statement.clone(), took));
        },
    )
    .await;
    if let Err((index, error)) = outcome {
        if error.as_db_error().is_none() {
            return Err(broken("lost the connection")(error));
        }
        return Err(Built::Failed(Box::new(statement_error(
            &unit.statements,
            index,
            &error,
        ))));
    }
    let records: Vec<&Record> = unit.record.into_iter().collect();
    state::write(&transaction, &config.state_schema, &records, &[])
        .await
        .map_err(broken("cannot record what was applied"))?;
    transaction
        .commit()
        .await
        .map_err(|error| Built::Broken(super::commit_error(client, error)))?;
    // Told once committed, so nothing rolled back is reported.
    let mut callback = on_statement.borrow_mut();
    for (statement, took) in &took_each {
        (*callback)(statement, *took);
    }
    Ok(())
}
