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

use serde::Serialize;

use crate::name::QualifiedName;
use crate::objects::Record;
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
}

/// A note about the declarations that does not block the plan.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
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
    /// The strongest lock the action takes on an existing object, where known.
    #[serde(skip)]
    pub lock: Option<Lock>,
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
        // Per object and change: its steps, and the position of its last step (its record,
        // forget or refresh), which is where it stands in the dependency order.
        let mut groups: Vec<(Vec<&Step>, usize)> = Vec::new();
        let mut group_of: BTreeMap<(&QualifiedName, Change), usize> = BTreeMap::new();
        for (position, step) in self.steps.iter().enumerate() {
            if step.change == Change::Adopt {
                continue;
            }
            let at = *group_of
                .entry((&step.object, step.change))
                .or_insert_with(|| {
                    groups.push((Vec::new(), position));
                    groups.len() - 1
                });
            groups[at].0.push(step);
            groups[at].1 = position;
        }
        let rank = |change: Change| match change {
            Change::Drop | Change::Forget => 0,
            Change::Refresh => 2,
            _ => 1,
        };
        groups.sort_by_key(|(steps, last)| (steps.first().map(|s| rank(s.change)), *last));
        groups
            .iter()
            .filter_map(|(steps, _)| action(steps))
            .collect()
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

    /// The actions that lose data for good: drops of materialized views that hold data.
    pub fn data_losses(&self) -> Vec<Action> {
        self.actions()
            .into_iter()
            .filter(|action| action.destroys_data)
            .collect()
    }
}

fn action(steps: &[&Step]) -> Option<Action> {
    let first = steps.first()?;
    // The last step is of the object as it will be (a drop is of the object as it was).
    let last = steps.last()?;
    Some(Action {
        change: first.change,
        object: first.object.clone(),
        kind: last.kind,
        reason: first.reason.clone(),
        diff: steps.iter().find_map(|step| step.diff()).map(str::to_owned),
        details: steps.iter().filter_map(|step| step.detail()).collect(),
        destroys_data: steps.iter().any(|step| step.destroys_data()),
        lock: steps.iter().filter_map(|step| step.lock()).max(),
    })
}
