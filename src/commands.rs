//! What each command does, at the IO edge: load, connect, call the pure stages, print.

use std::io::{self, Write};
use std::path::Path;
use std::time::Instant;

use crate::apply::{self, dependency_names};
use crate::catalog;
use crate::cli::{Cli, Command, Format};
use crate::db;
use crate::error::Error;
use crate::name::QualifiedName;
use crate::plan;
use crate::project::Project;
use crate::refresh::{self, Outcome};
use crate::render;

/// How a successful command ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Status {
    /// Exit 0.
    Done,
    /// Exit 2: `plan --detailed-exitcode` found changes.
    ChangesPending,
}

impl From<Status> for std::process::ExitCode {
    fn from(status: Status) -> Self {
        match status {
            Status::Done => std::process::ExitCode::SUCCESS,
            Status::ChangesPending => std::process::ExitCode::from(2),
        }
    }
}

/// Runs one command line.
pub fn run(cli: Cli) -> Result<Status, Error> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|source| Error::Io {
            context: "cannot start the async runtime".to_owned(),
            source,
        })?;
    runtime.block_on(dispatch(cli))
}

async fn dispatch(cli: Cli) -> Result<Status, Error> {
    let url = cli.connect.database_url.as_deref();
    match cli.command {
        Command::Check => check(&cli.project),
        Command::Plan {
            format,
            detailed_exitcode,
        } => plan(&cli.project, url, format, detailed_exitcode).await,
        Command::Reconcile => reconcile(&cli.project, url).await,
        Command::Refresh { views, downstream } => {
            refresh(&cli.project, url, &views, downstream).await
        }
        Command::Demo => crate::demo::run().await,
    }
}

fn check(root: &Path) -> Result<Status, Error> {
    let project = Project::load(root)?;
    let views = project.declarations.len();
    let materialized = project
        .declarations
        .values()
        .filter(|d| d.kind == crate::project::Kind::MaterializedView)
        .count();
    let order = project
        .graph()
        .topological_order()
        .map_err(plan::PlanError::from)?;
    let mut out = stdout();
    ignore_broken_pipe(writeln!(
        out,
        "ok: {views} declaration{} ({materialized} materialized) in {}, dependency order: {}",
        if views == 1 { "" } else { "s" },
        crate::project::display_path(&root.join(&project.config.views_dir)).display(),
        order
            .iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>()
            .join(", ")
    ))?;
    Ok(Status::Done)
}

async fn plan(
    root: &Path,
    url: Option<&str>,
    format: Format,
    detailed_exitcode: bool,
) -> Result<Status, Error> {
    let project = Project::load(root)?;
    let client = connect(url, &project).await?;
    let plan = show_plan(&project, &client, format).await?;
    Ok(if detailed_exitcode && !plan.is_empty() {
        Status::ChangesPending
    } else {
        Status::Done
    })
}

/// Reads the catalog, plans, and prints the plan to stdout.
pub(crate) async fn show_plan(
    project: &Project,
    client: &tokio_postgres::Client,
    format: Format,
) -> Result<plan::Plan, Error> {
    let catalog = catalog::introspect(
        client,
        &dependency_names(project),
        &project.config.state_schema,
    )
    .await
    .map_err(|error| Error::Catalog(db::describe(&error)))?;
    let plan = plan::plan(project, &catalog)?;
    let mut out = stdout();
    ignore_broken_pipe(match format {
        Format::Text => render::plan_text(&plan, &mut out),
        Format::Json => render::plan_json(&plan, &mut out),
    })?;
    Ok(plan)
}

async fn reconcile(root: &Path, url: Option<&str>) -> Result<Status, Error> {
    let project = Project::load(root)?;
    let mut client = connect(url, &project).await?;
    run_reconcile(&project, &mut client).await?;
    Ok(Status::Done)
}

/// Reconciles, printing each statement as it completes and a summary at the end.
pub(crate) async fn run_reconcile(
    project: &Project,
    client: &mut tokio_postgres::Client,
) -> Result<apply::Reconciled, Error> {
    let mut out = stdout();
    let mut write_error = None;
    let reconciled = apply::reconcile(client, project, |statement, took| {
        if let Err(error) = render::statement_done(statement, took, &mut out) {
            write_error.get_or_insert(error);
        }
    })
    .await?;
    if let Some(error) = write_error {
        ignore_broken_pipe(Err(error))?;
    }
    ignore_broken_pipe(render::reconcile_done(
        &reconciled.plan,
        reconciled.elapsed,
        &mut out,
    ))?;
    Ok(reconciled)
}

async fn refresh(
    root: &Path,
    url: Option<&str>,
    views: &[String],
    downstream: bool,
) -> Result<Status, Error> {
    let project = Project::load(root)?;
    let names = views
        .iter()
        .map(|view| {
            QualifiedName::parse(view, "public").map_err(|error| Error::InvalidName {
                name: view.clone(),
                message: error.to_string(),
            })
        })
        .collect::<Result<Vec<_>, _>>()?;
    let mut client = connect(url, &project).await?;
    let mut out = stdout();
    let started = Instant::now();
    let count = refresh::refresh(
        &mut client,
        &project,
        &names,
        downstream,
        |target, outcome| {
            let line = match outcome {
                Outcome::Refreshed(took) => format!(
                    "refreshed {}{}  {}",
                    target.name,
                    if target.concurrently {
                        " (concurrently)"
                    } else {
                        ""
                    },
                    render::format_duration(*took)
                ),
                Outcome::Failed(message) => format!("failed    {}: {message}", target.name),
                Outcome::Skipped(upstream) => {
                    format!("skipped   {}: {upstream} failed", target.name)
                }
            };
            let _ = writeln!(out, "{line}");
        },
    )
    .await?;
    ignore_broken_pipe(writeln!(
        out,
        "Refreshed {count} materialized view{} in {}.",
        if count == 1 { "" } else { "s" },
        render::format_duration(started.elapsed())
    ))?;
    Ok(Status::Done)
}

async fn connect(url: Option<&str>, project: &Project) -> Result<tokio_postgres::Client, Error> {
    let url = url.ok_or(db::ConnectError::MissingUrl)?;
    Ok(db::connect(url, &project.config.search_path).await?)
}

/// Stdout that keeps colour on a terminal and drops it when piped or when `NO_COLOR` is set.
pub(crate) fn stdout() -> anstream::AutoStream<io::Stdout> {
    anstream::AutoStream::auto(io::stdout())
}

/// A closed pipe (`viewkeeper plan | head`) is not a failure.
pub(crate) fn ignore_broken_pipe(result: io::Result<()>) -> Result<(), Error> {
    match result {
        Err(error) if error.kind() != io::ErrorKind::BrokenPipe => Err(Error::Io {
            context: "cannot write the output".to_owned(),
            source: error,
        }),
        _ => Ok(()),
    }
}
