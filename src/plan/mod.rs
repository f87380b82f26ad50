//! (declarations, catalog) → [`Plan`]: what reconcile would do, and why. Pure: no IO.
//!
//! A plan is one ordered list of typed [`Step`]s. `plan` renders that list (text, JSON,
//! Markdown, `--out` files) and `reconcile` runs the very same list, so what a reviewer
//! approved is what runs.
//!
//! - [`verdict`] decides what happens to each object (create, replace, replace in place,
//!   rebuild, adopt, keep, drop, forget);
//! - [`attributes`] computes the steps that bring indexes, grants, options, comment and
//!   owner in line;
//! - [`build`] orders the steps: drops dependents first, creates dependencies first, then
//!   refreshes and the state's records.

mod attributes;
mod build;
mod error;
mod step;
mod verdict;

use std::collections::BTreeMap;
use std::time::Duration;

use serde::Serialize;

use crate::name::QualifiedName;
use crate::objects::Record;
use crate::objects::SideBuild;
use crate::project::Kind;

pub use build::{drop_managed, plan, restore_missing};
pub use error::{Blocker, PlanError, refuse_data_loss, refuse_dropping_everything};
pub use step::{
    Change, DeclaredQuery, EmbeddedQuery, Fill, IndexSource, Lock, Op, Phase, Statement, Step,
};
pub use verdict::normalisation_candidates;

/// The ordered work reconcile would do.
#[derive(Debug, Clone, Default)]
pub struct Plan {
    /// Every step, in the order reconcile takes them.
    pub steps: Vec<Step>,
    /// Things worth knowing that do not stop the plan.
    pub warnings: Vec<Warning>,
    /// How many objects are declared (for the "in sync" summary).
    pub declared: usize,
    /// How long the last build or refresh of each materialized view the plan fills took,
    /// from the refresh history: what its build will cost this time, about.
    pub last_builds: BTreeMap<QualifiedName, Duration>,
}

/// A note about the declarations that does not block the plan.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, serde::Deserialize)]
pub struct Warning {
    pub object: QualifiedName,
    pub message: String,
    /// `file:line` of the declaration (or of the `depends-on` entry) it is about.
    pub location: String,
}

/// What happens to one object, gathered from its steps: what the plan shows per object.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Action {
    pub change: Change,
    pub object: QualifiedName,
    pub kind: Kind,
    pub reason: String,
    /// Unified diff of the query (applied → declared) or of a drifted definition (live →
    /// what reconcile restores): `+` lines are what reconcile brings.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub diff: Option<String>,
    /// Alterations made in place (indexes, grants, comment, owner).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub details: Vec<String>,
    /// The drop of a materialized view that holds data: the data is lost for good (a
    /// rebuild refills it, a drop does not). Reconcile asks for intent.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub destroys_data: bool,
    /// The strongest lock the action takes on an existing object, if any.
    #[serde(serialize_with = "lock_words")]
    pub lock: Option<Lock>,
    /// How long readers would wait for that lock.
    #[serde(flatten)]
    pub hold: Hold,
    /// For a materialized view built side by side: what the build costs.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub side_by_side: Option<SideBySideCost>,
}

fn lock_words<S: serde::Serializer>(lock: &Option<Lock>, out: S) -> Result<S::Ok, S::Error> {
    out.serialize_str(lock.map_or("none", Lock::words))
}

fn seconds<S: serde::Serializer>(took: &Duration, out: S) -> Result<S::Ok, S::Error> {
    out.serialize_f64((took.as_secs_f64() * 10.0).round() / 10.0)
}

fn optional_seconds<S: serde::Serializer>(
    took: &Option<Duration>,
    out: S,
) -> Result<S::Ok, S::Error> {
    match took {
        Some(took) => seconds(took, out),
        None => out.serialize_none(),
    }
}

/// Builds that took less than this last time do not make a lock's hold worth a number.
const BRIEF: Duration = Duration::from_millis(100);

/// How long a plan holds its lock on an object: until its transaction ends, so through
/// every materialized view filled after it in that transaction.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize)]
#[serde(tag = "hold", rename_all = "kebab-case")]
pub enum Hold {
    /// No lock anyone waits for: a new object, grants, options.
    #[default]
    None,
    /// Only statements that take no time to speak of run while it is held.
    Brief,
    /// Held while materialized views are filled in the same transaction: `known` is what
    /// their last builds took; `unrecorded` of them have no recorded build.
    WhileBuilding {
        #[serde(rename = "hold_seconds", serialize_with = "seconds")]
        known: Duration,
        #[serde(rename = "unrecorded_builds")]
        unrecorded: usize,
    },
}

/// What a side-by-side build costs: time (its last build) and room (a second copy).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct SideBySideCost {
    #[serde(rename = "build_seconds", serialize_with = "optional_seconds")]
    pub took_last: Option<Duration>,
    /// The size of the old version on disk: the copy needs about as much while both exist.
    pub size_bytes: i64,
}

impl Plan {
    /// True when reconcile has nothing to change (adoptions are only recorded).
    pub fn is_empty(&self) -> bool {
        self.steps.iter().all(|step| step.change == Change::Adopt)
    }

    /// How many objects of each change, in a fixed order.
    pub fn summary(&self) -> BTreeMap<Change, usize> {
        let mut summary = BTreeMap::new();
        for action in self.actions() {
            *summary.entry(action.change).or_insert(0) += 1;
        }
        summary
    }

    /// One action per object and change, in the order plans list them: drops and
    /// forgets, then creates, replaces and alterations in dependency order, then refreshes.
    pub fn actions(&self) -> Vec<Action> {
        // Per object and change: its steps with their positions; the last one (its record,
        // forget or refresh) is where it stands in the dependency order.
        let mut groups: Vec<Vec<(usize, &Step)>> = Vec::new();
        let mut group_of: BTreeMap<(&QualifiedName, Change), usize> = BTreeMap::new();
        for (position, step) in self.steps.iter().enumerate() {
            if step.change == Change::Adopt {
                continue;
            }
            let at = *group_of
                .entry((&step.object, step.change))
                .or_insert_with(|| {
                    groups.push(Vec::new());
                    groups.len() - 1
                });
            groups[at].push((position, step));
        }
        let rank = |change: Change| match change {
            Change::Drop | Change::Forget => 0,
            Change::Refresh => 2,
            _ => 1,
        };
        groups.sort_by_key(|steps| {
            let first = steps.first().map(|(_, step)| rank(step.change));
            (first, steps.last().map(|(position, _)| *position))
        });
        let holds = self.holds();
        groups
            .iter()
            .filter_map(|steps| action(steps, &holds, &self.last_builds))
            .collect()
    }

    /// For each step, how long a lock taken there would be held: the builds that run
    /// after it in reconcile's transaction (side-by-side builds run before, in their own).
    fn holds(&self) -> Vec<Hold> {
        let mut holds = vec![Hold::Brief; self.steps.len()];
        let mut known = Duration::ZERO;
        let mut unrecorded = 0;
        for (position, step) in self.steps.iter().enumerate().rev() {
            if step.builds_data() && step.phase() != Phase::Build {
                match self.last_builds.get(&step.object).copied() {
                    Some(took) => known += took,
                    None => unrecorded += 1,
                }
            }
            if known >= BRIEF || unrecorded > 0 {
                holds[position] = Hold::WhileBuilding { known, unrecorded };
            }
        }
        holds
    }

    /// The statements, in the order they run.
    pub fn statements(&self) -> Vec<Statement> {
        self.steps.iter().filter_map(Step::statement).collect()
    }

    /// The records to write to the state after the statements.
    pub fn records(&self) -> Vec<&Record> {
        self.steps
            .iter()
            .filter_map(|step| match &step.op {
                Op::Record(record) => Some(record),
                _ => None,
            })
            .collect()
    }

    /// The objects to remove from the state.
    pub fn forgotten(&self) -> Vec<&QualifiedName> {
        self.steps
            .iter()
            .filter(|step| matches!(step.op, Op::Forget))
            .map(|step| &step.object)
            .collect()
    }

    /// Objects that exist with a query equivalent to the declaration: recorded as managed
    /// without any change to the database.
    pub fn adopted(&self) -> Vec<&QualifiedName> {
        self.steps
            .iter()
            .filter(|step| step.change == Change::Adopt)
            .map(|step| &step.object)
            .collect()
    }

    /// True when some materialized view is built side by side first.
    pub fn builds_side_by_side(&self) -> bool {
        self.steps.iter().any(|step| step.phase() == Phase::Build)
    }

    /// The side-by-side copies to record once built.
    pub fn recorded_builds(&self) -> Vec<&SideBuild> {
        self.steps
            .iter()
            .filter_map(|step| match &step.op {
                Op::RecordBuild(build) => Some(build),
                _ => None,
            })
            .collect()
    }

    /// The side-by-side copies whose records go: swapped in, dropped or gone.
    pub fn forgotten_builds(&self) -> Vec<&QualifiedName> {
        self.steps
            .iter()
            .filter_map(|step| match &step.op {
                Op::ForgetBuild { temp } => Some(temp),
                _ => None,
            })
            .collect()
    }

    /// The actions that lose data for good: drops of materialized views that hold data.
    pub fn data_losses(&self) -> Vec<Action> {
        self.actions()
            .into_iter()
            .filter(|action| action.destroys_data)
            .collect()
    }
}

fn action(
    steps: &[(usize, &Step)],
    holds: &[Hold],
    last_builds: &BTreeMap<QualifiedName, Duration>,
) -> Option<Action> {
    let (_, first) = steps.first()?;
    // The last step is of the object as it will be (a drop is of the object as it was).
    let (_, last) = steps.last()?;
    let lock = steps.iter().filter_map(|(_, step)| step.lock()).max();
    // The lock is held from the first step that takes one until the transaction ends.
    let hold = steps
        .iter()
        .find(|(_, step)| step.lock().is_some())
        .and_then(|(position, _)| holds.get(*position))
        .copied()
        .unwrap_or_default();
    let side_by_side = steps.iter().find_map(|(_, step)| match &step.op {
        Op::Build { size_bytes, .. } => Some(SideBySideCost {
            took_last: last_builds.get(&step.object).copied(),
            size_bytes: *size_bytes,
        }),
        _ => None,
    });
    Some(Action {
        change: first.change,
        object: first.object.clone(),
        kind: last.kind,
        reason: first.reason.clone(),
        diff: steps
            .iter()
            .find_map(|(_, step)| step.diff())
            .map(str::to_owned),
        details: steps.iter().filter_map(|(_, step)| step.detail()).collect(),
        destroys_data: steps.iter().any(|(_, step)| step.destroys_data()),
        lock,
        hold: if lock.is_some() { hold } else { Hold::None },
        side_by_side,
    })
}
