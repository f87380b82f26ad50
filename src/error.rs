//! The error every command can end with: one variant per stage, each keeping its own
//! diagnostic (file, line and column where there is one).

use miette::Diagnostic;

use crate::apply::ApplyError;
use crate::db::ConnectError;
use crate::plan::PlanError;
use crate::project::Problems;
use crate::refresh::RefreshError;
use crate::sandbox::SandboxError;

#[derive(Debug, thiserror::Error, Diagnostic)]
#[non_exhaustive]
pub enum Error {
    #[error(transparent)]
    #[diagnostic(transparent)]
    Project(#[from] Problems),
    #[error(transparent)]
    #[diagnostic(transparent)]
    Connect(#[from] ConnectError),
    #[error("cannot read the catalog: {0}")]
    Catalog(String),
    #[error(transparent)]
    #[diagnostic(transparent)]
    Plan(#[from] PlanError),
    #[error("reconcile failed, {}", .0.what_changed())]
    #[diagnostic(forward(0))]
    Apply(#[source] ApplyError),
    /// Not a rollback: the change may be in the database.
    #[error(transparent)]
    #[diagnostic(transparent)]
    OutcomeUnknown(ApplyError),
    #[error(
        "reconcile applied what it could, but {} object{} failed{}",
        failed.len(),
        if failed.len() == 1 { "" } else { "s" },
        if skipped.is_empty() {
            String::new()
        } else {
            format!(
                "; left as they are because of them: {}",
                skipped.join(", ")
            )
        }
    )]
    #[diagnostic(
        code(viewkeeper::not_all_applied),
        help("fix the failing declarations and reconcile again; everything else was applied")
    )]
    NotAllApplied {
        #[related]
        failed: Vec<crate::apply::StatementError>,
        skipped: Vec<String>,
    },
    #[error("the plan cannot be applied: PostgreSQL rejects a declared query; nothing was changed")]
    #[diagnostic(forward(0))]
    Unprovable(#[source] ApplyError),
    /// Proving the plan waited for a lock past lock-timeout: not the queries' fault.
    #[error("cannot prove the plan applies: {0}")]
    ProofGaveUp(String),
    #[error(
        "could not drop the managed views before the migration; nothing was changed and the migration did not run"
    )]
    #[diagnostic(forward(0))]
    DropFirst(#[source] ApplyError),
    #[error(transparent)]
    #[diagnostic(transparent)]
    Refresh(#[from] RefreshError),
    #[error(transparent)]
    #[diagnostic(transparent)]
    PgCron(#[from] crate::refresh::pg_cron::PgCronError),
    #[error(transparent)]
    #[diagnostic(transparent)]
    Guard(#[from] crate::guard::GuardError),
    #[error(
        "no viewkeeper.kdl in {} or any folder above it",
        crate::project::display_path(searched_from).display()
    )]
    #[diagnostic(help(
        "run `viewkeeper init` to start a project here, or pass --project DIR to name one"
    ))]
    NoProject { searched_from: std::path::PathBuf },
    #[error("invalid view name `{name}`: {message}")]
    InvalidName { name: String, message: String },
    #[error(transparent)]
    Sandbox(#[from] SandboxError),
    #[error("{context}: {source}")]
    Io {
        context: String,
        #[source]
        source: std::io::Error,
    },
}

impl From<ApplyError> for Error {
    fn from(error: ApplyError) -> Self {
        match error {
            ApplyError::CommitOutcomeUnknown { .. } => Error::OutcomeUnknown(error),
            error => Error::Apply(error),
        }
    }
}

impl Error {
    /// `run --drop-first` could not drop the managed views (unless the commit's outcome is
    /// unknown: then they may be gone).
    pub fn drop_first(error: ApplyError) -> Self {
        match error {
            ApplyError::CommitOutcomeUnknown { .. } => Error::OutcomeUnknown(error),
            error => Error::DropFirst(error),
        }
    }
}
