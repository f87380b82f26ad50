//! Why no plan could be made, and the refusals reconcile makes before running one.

use miette::Diagnostic;

use crate::graph::Cycle;
use crate::name::QualifiedName;
use crate::project::{Kind, Problems, Project};

use super::{Action, Change, Plan};

/// Why no plan could be made; nothing has been changed.
#[derive(Debug, thiserror::Error, Diagnostic)]
#[non_exhaustive]
pub enum PlanError {
    #[error(transparent)]
    #[diagnostic(transparent)]
    Declarations(#[from] Problems),
    #[error("{}", blocked_message(.0))]
    #[diagnostic(
        code(viewkeeper::blocked),
        help("{}", blocked_help(.0))
    )]
    Blocked(Vec<Blocker>),
    #[error("{}", losses_message(.0))]
    #[diagnostic(
        code(viewkeeper::would_lose),
        help(
            "declarations cannot express these yet: remove them before the rebuild and add them back after, or keep the query as it is"
        )
    )]
    WouldLose(Vec<(QualifiedName, Vec<String>)>),
    #[error("no declarations found in {folder}; refusing to drop {managed} managed objects")]
    #[diagnostic(
        code(viewkeeper::no_declarations),
        help(
            "check --project and views-dir; to drop every managed view on purpose, pass --allow-drop"
        )
    )]
    NoDeclarations { folder: String, managed: usize },
    #[error(
        "refusing to drop materialized views that hold data: {}",
        names_list(.0)
    )]
    #[diagnostic(
        code(viewkeeper::destroys_data),
        help(
            "their data cannot be brought back; pass --allow-drop to drop them, or keep their declarations"
        )
    )]
    DestroysData(Vec<QualifiedName>),
    #[error(transparent)]
    #[diagnostic(transparent)]
    SavedPlan(#[from] crate::saved_plan::SavedPlanError),
    #[error("the declared and the live dependencies form a cycle: {0}")]
    #[diagnostic(code(viewkeeper::cycle))]
    Cycle(#[from] Cycle),
}

/// Refuses a plan that drops managed objects while nothing at all is declared: that is far
/// more often a wrong folder than an intent, so it takes `--allow-drop`.
pub fn refuse_dropping_everything(
    project: &Project,
    plan: &Plan,
    allow_drop: bool,
) -> Result<(), PlanError> {
    let managed = plan
        .actions()
        .iter()
        .filter(|action| matches!(action.change, Change::Drop | Change::Forget))
        .count();
    if allow_drop || !project.declarations.is_empty() || managed == 0 {
        return Ok(());
    }
    Err(PlanError::NoDeclarations {
        folder: crate::project::display_path(&project.views_dir)
            .display()
            .to_string(),
        managed,
    })
}

/// Refuses a plan that destroys data unless the user said so (`--allow-drop`) or, on a
/// terminal, `confirm` (shown the losses) agrees.
pub fn refuse_data_loss(
    plan: &Plan,
    allow_drop: bool,
    confirm: &dyn Fn(&[Action]) -> bool,
) -> Result<(), PlanError> {
    let losses = plan.data_losses();
    if allow_drop || losses.is_empty() || confirm(&losses) {
        return Ok(());
    }
    Err(PlanError::DestroysData(
        losses.iter().map(|action| action.object.clone()).collect(),
    ))
}

/// An object viewkeeper must drop or rebuild, and one it does not manage that reads it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Blocker {
    pub object: QualifiedName,
    pub change: Change,
    pub dependent: QualifiedName,
    pub dependent_kind: Kind,
    /// The dependent is declared but would lose the object it reads.
    pub dependent_declared: bool,
}

fn names_list(names: &[QualifiedName]) -> String {
    names
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join(", ")
}

fn losses_message(losses: &[(QualifiedName, Vec<String>)]) -> String {
    losses
        .iter()
        .map(|(object, lost)| format!("rebuilding {object} would lose its {}", lost.join(", ")))
        .collect::<Vec<_>>()
        .join("\n")
}

/// What to do: a declared reader is already rebuilt by viewkeeper, so declaring it does not
/// help; its query, or the drop, has to change.
fn blocked_help(blockers: &[Blocker]) -> String {
    let mut help = Vec::new();
    if blockers.iter().any(|b| b.dependent_declared) {
        help.push(
            "edit the declared query that still reads the dropped view, or restore the dropped \
             view's declaration",
        );
    }
    if blockers.iter().any(|b| !b.dependent_declared) {
        help.push(
            "viewkeeper never uses CASCADE: declare the dependent view so it is rebuilt too, or \
             drop it yourself",
        );
    }
    help.join("; ")
}

fn blocked_message(blockers: &[Blocker]) -> String {
    let lines: Vec<String> = blockers
        .iter()
        .map(|b| {
            if b.dependent_declared {
                format!(
                    "cannot drop {}: declared {} {} still reads it; remove that read or keep declaring {}",
                    b.object,
                    b.dependent_kind.words(),
                    b.dependent,
                    b.object
                )
            } else {
                format!(
                    "cannot {} {}: {} {}, which viewkeeper does not manage, depends on it",
                    b.change.verb(),
                    b.object,
                    b.dependent_kind.words(),
                    b.dependent
                )
            }
        })
        .collect();
    lines.join("\n")
}
