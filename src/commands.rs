//! What each command does, at the IO edge: load, connect, call the pure stages, print.

mod demo;

use std::io::{self, IsTerminal, Write};
use std::path::{Path, PathBuf};
use std::time::Instant;

use crate::apply;
use crate::catalog;
use crate::cli::{Cli, Command, Emit, Format, GraphFormat, GuardAction, PlanFormat};
use crate::db;
use crate::error::Error;
use crate::in_sync;
use crate::name::QualifiedName;
use crate::plan;
use crate::project::{Config, Project, ProjectLoad};
use crate::refresh::{self, schedule::Event as ScheduleEvent};
use crate::render;
use crate::state;
use crate::waits;

/// How a successful command ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Status {
    /// Exit 0.
    Done,
    /// Exit 2: `plan --detailed-exitcode` found changes.
    ChangesPending,
    /// Another program's exit status, passed on (`run`).
    Code(u8),
}

impl From<Status> for std::process::ExitCode {
    fn from(status: Status) -> Self {
        match status {
            Status::Done => std::process::ExitCode::SUCCESS,
            Status::ChangesPending => std::process::ExitCode::from(2),
            Status::Code(code) => std::process::ExitCode::from(code),
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
    render::set_verbose(cli.verbose);
    // After the command's name, or before it (or $DATABASE_URL).
    let url = cli
        .command
        .connect()
        .and_then(|connect| connect.database_url.clone())
        .or(cli.connect.database_url);
    let url = url.as_deref();
    let touches_database = !matches!(
        cli.command,
        Command::Check
            | Command::Graph { .. }
            | Command::Init
            | Command::Completions { .. }
            | Command::Demo
    );
    let project = match (&cli.project, &cli.command) {
        (Some(dir), _) => dir.clone(),
        // `init` starts a project where it is run, never in a folder above.
        (None, Command::Init) => PathBuf::from("."),
        (None, _) => find_project(touches_database)?,
    };
    let project = project.as_path();
    match cli.command {
        Command::Check => check(project),
        Command::Plan {
            format,
            detailed_exitcode,
            allow_drop,
            out,
            ..
        } => {
            plan(
                project,
                url,
                format,
                detailed_exitcode,
                allow_drop,
                out.as_deref(),
            )
            .await
        }
        Command::Reconcile {
            allow_drop,
            plan: saved,
            keep_going,
            jobs,
            format,
            ..
        } => {
            let saved = match saved {
                Some(path) => Some(read_saved_plan(&path)?),
                None => None,
            };
            let workers = match jobs {
                Some(jobs) => Some(workers(url, usize::from(jobs))?),
                None => None,
            };
            let intent = apply::Intent {
                allow_drop,
                confirm: &confirm_data_loss,
                saved: saved.as_ref(),
                keep_going,
                workers: workers.as_ref(),
            };
            reconcile(project, url, &intent, format).await
        }
        Command::Refresh {
            views, downstream, ..
        } => refresh(project, url, &views, downstream).await,
        Command::Schedule {
            emit,
            grace,
            no_heal,
            ..
        } => schedule(project, url, emit, grace, !no_heal).await,
        Command::Status {
            format,
            detailed_exitcode,
            ..
        } => status(project, url, format, detailed_exitcode).await,
        Command::Run {
            drop_first,
            jobs,
            command,
            ..
        } => {
            let jobs = jobs.map_or_else(apply::default_jobs, usize::from);
            run_migration(project, url, drop_first, jobs, &command).await
        }
        Command::DropManaged { .. } => drop_managed(project, url).await,
        Command::Guard { action, .. } => guard(project, url, action).await,
        Command::Import {
            schemas,
            with_depends_on,
            ..
        } => import(project, url, &schemas, with_depends_on).await,
        Command::Graph { format, .. } => graph(project, format),
        Command::Init => init(project),
        Command::Completions { shell, .. } => {
            let mut command = <Cli as clap::CommandFactory>::command();
            // Written whole, then printed: `generate` panics on a closed pipe.
            let mut script = Vec::new();
            clap_complete::generate(shell, &mut command, "viewkeeper", &mut script);
            ignore_broken_pipe(io::stdout().write_all(&script))?;
            Ok(Status::Done)
        }
        Command::Demo => demo::run().await,
    }
}

/// The project folder, found as git finds its repository: the nearest folder upward from
/// the current one that holds `viewkeeper.kdl`. Without one, offline commands read the
/// current folder, and commands that touch a database refuse: a folder that happens to have
/// no declarations must not turn into "drop every managed view".
fn find_project(touches_database: bool) -> Result<PathBuf, Error> {
    let here = std::env::current_dir().map_err(|source| Error::Io {
        context: "cannot read the current folder".to_owned(),
        source,
    })?;
    if let Some(found) = here
        .ancestors()
        .find(|dir| dir.join(crate::project::CONFIG_FILE).is_file())
    {
        return Ok(found.to_path_buf());
    }
    if touches_database {
        Err(Error::NoProject {
            searched_from: here,
        })
    } else {
        Ok(PathBuf::from("."))
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
        render::summarise_names(&order.iter().map(ToString::to_string).collect::<Vec<_>>())
    ))?;
    for declaration in project.declarations.values() {
        if declaration.inferred.is_none() && declaration.depends_on.is_empty() {
            ignore_broken_pipe(writeln!(
                out,
                "note: the SQL parser cannot read `{}`'s query; its dependencies will be taken \
                 from the server when it is compiled",
                declaration.name
            ))?;
        }
    }
    Ok(Status::Done)
}

/// How long `plan` waits for its connection before it parses the declarations anyway (a
/// server slow to answer must not hold back a mistake in them).
const PARSE_WHILE_CONNECTING_AFTER: std::time::Duration = std::time::Duration::from_millis(250);

async fn plan(
    root: &Path,
    url: Option<&str>,
    format: PlanFormat,
    detailed_exitcode: bool,
    allow_drop: bool,
    out: Option<&Path>,
) -> Result<Status, Error> {
    // The declarations are parsed only when the in-sync record does not answer for them:
    // their files are digested meanwhile, which is much quicker.
    let mut load = ProjectLoad::later(root)?;
    let config = load.config().clone();
    let sources = out
        .is_none()
        .then(|| in_sync::Sources::start(root, &config));
    if sources.is_none() {
        // A saved plan is always made from the catalog.
        load.begin();
    }
    let connecting = connect(url, &config);
    tokio::pin!(connecting);
    // Mistakes in the declarations come first, as when nothing was connected yet: before a
    // connection error, and before a server that is slow to answer, or never does.
    let connected = tokio::select! {
        connected = &mut connecting => connected,
        () = tokio::time::sleep(PARSE_WHILE_CONNECTING_AFTER) => tokio::select! {
            connected = &mut connecting => connected,
            () = load.read() => {
                load = ProjectLoad::ready(load.wait()?);
                connecting.await
            }
        }
    };
    let mut client = match connected {
        Ok(client) => client,
        Err(error) => {
            load.wait()?;
            return Err(error);
        }
    };
    if let Some(sources) = sources
        && let Some(plan) = in_sync::recorded_plan(&client, &config, sources).await
    {
        print_plan(&plan, format)?;
        return Ok(Status::Done);
    }
    load.begin();
    let (plan, fingerprint) =
        proven_plan(&mut client, load, allow_drop, format, out.is_some()).await?;
    if let (Some(path), Some(fingerprint)) = (out, fingerprint) {
        let mut file = Vec::new();
        render::plan_json_with(&plan, Some(&fingerprint), &mut file)
            .and_then(|()| std::fs::write(path, file))
            .map_err(|source| Error::Io {
                context: format!("cannot write the plan to {}", path.display()),
                source,
            })?;
    }
    Ok(if detailed_exitcode && !plan.is_empty() {
        Status::ChangesPending
    } else {
        Status::Done
    })
}

/// Reads a plan saved by `plan --out`.
fn read_saved_plan(path: &Path) -> Result<crate::saved_plan::SavedPlan, Error> {
    let text = std::fs::read_to_string(path).map_err(|source| Error::Io {
        context: format!("cannot read the saved plan {}", path.display()),
        source,
    })?;
    let saved: crate::saved_plan::SavedPlan =
        serde_json::from_str(&text).map_err(|error| Error::Io {
            context: format!(
                "{} is not a plan saved by `viewkeeper plan --out`",
                path.display()
            ),
            source: io::Error::new(io::ErrorKind::InvalidData, error),
        })?;
    if saved.format_version != render::PLAN_FORMAT_VERSION {
        return Err(Error::Io {
            context: format!("cannot apply {}", path.display()),
            source: io::Error::new(
                io::ErrorKind::InvalidData,
                format!(
                    "it has format_version {}, this viewkeeper reads {}; plan again",
                    saved.format_version,
                    render::PLAN_FORMAT_VERSION
                ),
            ),
        });
    }
    Ok(saved)
}

/// Plans, and proves the plan applies, and prints it to stdout.
pub(crate) async fn show_plan(
    project: &Project,
    client: &mut tokio_postgres::Client,
    format: PlanFormat,
) -> Result<plan::Plan, Error> {
    let load = ProjectLoad::ready(std::borrow::Cow::Borrowed(project));
    Ok(proven_plan(client, load, false, format, false).await?.0)
}

/// Reads the catalog, plans, prints the plan, and compiles every query the plan creates,
/// all in one transaction that is rolled back: plan never leaves anything behind, and waits
/// for no lock longer than `lock-timeout`. The plan is printed before it is proven, so a
/// plan that cannot be applied still shows what it would do (and why objects are missing).
/// The live catalog is read while the declarations are still being read.
async fn proven_plan(
    client: &mut tokio_postgres::Client,
    load: ProjectLoad<'_>,
    allow_drop: bool,
    format: PlanFormat,
    with_fingerprint: bool,
) -> Result<(plan::Plan, Option<crate::saved_plan::Fingerprint>), Error> {
    let catalog_error = |error: tokio_postgres::Error| Error::Catalog(db::describe(&error));
    let timeout = load.config().lock_timeout;
    let state_schema = load.config().state_schema.clone();
    let read_live = async |transaction: &tokio_postgres::Transaction<'_>| {
        waits::bound(transaction, timeout).await?;
        // Never read views while a reconcile drops and recreates them.
        waits::share_reconcile_lock(transaction, &state_schema).await?;
        catalog::read_live(transaction, &state_schema).await
    };
    let mut transaction = match client.transaction().await {
        Ok(transaction) => transaction,
        // Mistakes in the declarations come first, as for a failed connection.
        Err(error) => {
            load.wait()?;
            return Err(catalog_error(error));
        }
    };
    let mut live = read_live(&transaction).await;
    let loaded = load.wait()?;
    let project = &*loaded;
    let mut attempt = 1;
    let catalog = loop {
        let read = match live {
            Ok(live) => catalog::read::complete(&mut transaction, live, project).await,
            Err(error) => Err(error),
        };
        match read {
            Ok(catalog) => break catalog,
            Err(error) => {
                transaction.rollback().await.map_err(catalog_error)?;
                if waits::lost_relation(&error) && attempt < 3 {
                    attempt += 1;
                    transaction = client.transaction().await.map_err(catalog_error)?;
                    live = read_live(&transaction).await;
                    continue;
                }
                return Err(Error::Catalog(
                    waits::explain(client, &error, timeout, &state_schema).await,
                ));
            }
        }
    };
    let plan = plan::plan(project, &catalog)?;
    plan::refuse_dropping_everything(project, &plan, allow_drop)?;
    let fingerprint = if with_fingerprint {
        let schema = catalog::schema_fingerprint(&transaction)
            .await
            .map_err(catalog_error)?;
        Some(crate::saved_plan::fingerprint(project, &catalog, schema))
    } else {
        None
    };
    print_plan(&plan, format)?;
    if let Err(refusal) = catalog::prove::prove(&transaction, project, &plan).await {
        // Ended before the process exits (the server would log a lost connection), and
        // before holders are named, so those listed are the others.
        transaction.rollback().await.map_err(catalog_error)?;
        if refusal.timed_out() {
            let object = &refusal.statement().object;
            let timeout = project.config.lock_timeout;
            return Err(Error::ProofGaveUp(
                waits::compile_gave_up(client, object, timeout).await,
            ));
        }
        return Err(match refusal.not_the_query() {
            Some(message) => Error::ProofGaveUp(message),
            None => Error::Unprovable(refusal.into_error()),
        });
    }
    transaction.rollback().await.map_err(catalog_error)?;
    // Every caller exits soon after: the exit frees the catalog and the project at once,
    // which dropping them string by string would not (several ms for thousands of views).
    std::mem::forget((catalog, loaded));
    Ok((plan, fingerprint))
}

fn print_plan(plan: &plan::Plan, format: PlanFormat) -> Result<(), Error> {
    let mut out = stdout();
    ignore_broken_pipe(match format {
        PlanFormat::Text => render::plan_text(plan, &mut out),
        PlanFormat::Json => render::plan_json(plan, &mut out),
        PlanFormat::Markdown => render::plan_markdown(plan, &mut out),
    })?;
    Ok(())
}

async fn reconcile(
    root: &Path,
    url: Option<&str>,
    intent: &apply::Intent<'_>,
    format: Format,
) -> Result<Status, Error> {
    let project = Project::load(root)?;
    let mut client = connect(url, &project.config).await?;
    let reconciled = match format {
        Format::Text => run_reconcile(&project, &mut client, intent).await?,
        Format::Json => {
            let reconciled = apply::reconcile(&mut client, &project, intent, |_, _| {}).await?;
            ignore_broken_pipe(render::reconciled_json(&reconciled, &mut stdout()))?;
            reconciled
        }
    };
    kept_going(reconciled)?;
    Ok(Status::Done)
}

/// A keep-going reconcile that left objects out is a failure, reported with each reason.
fn kept_going(reconciled: apply::Reconciled) -> Result<(), Error> {
    if reconciled.failed.is_empty() {
        return Ok(());
    }
    let skipped = reconciled
        .skipped
        .iter()
        .map(|(name, because)| format!("{name} (because of {because})"))
        .collect::<Vec<_>>();
    Err(Error::NotAllApplied {
        failed: reconciled
            .failed
            .into_iter()
            .map(|(_, error)| error)
            .collect(),
        skipped,
    })
}

/// On a terminal, lists the data a reconcile would destroy and asks for `yes`. Anywhere
/// else (CI, cron, a pipe) there is nobody to ask: the answer is no.
fn confirm_data_loss(losses: &[plan::Action]) -> bool {
    use std::io::{BufRead, IsTerminal};
    if !io::stdin().is_terminal() || !io::stderr().is_terminal() {
        return false;
    }
    let mut err = io::stderr().lock();
    let _ = writeln!(
        err,
        "Reconcile would drop these materialized views and lose their data:"
    );
    for action in losses {
        let _ = writeln!(err, "  {} ({})", action.object, action.reason);
    }
    let _ = write!(err, "Type yes to drop them: ");
    let _ = err.flush();
    let mut answer = String::new();
    io::stdin().lock().read_line(&mut answer).is_ok() && answer.trim() == "yes"
}

/// Reconciles, printing each statement as it completes and a summary at the end.
pub(crate) async fn run_reconcile(
    project: &Project,
    client: &mut tokio_postgres::Client,
    intent: &apply::Intent<'_>,
) -> Result<apply::Reconciled, Error> {
    let mut out = stdout();
    let mut write_error = None;
    let width = name_width(project);
    let mut progress = Progress::start("reconciling");
    let reconciled = apply::reconcile(client, project, intent, |statement, took| {
        progress.step(&statement.object);
        let written = progress.suspend(|| render::statement_done(statement, took, width, &mut out));
        if let Err(error) = written {
            write_error.get_or_insert(error);
        }
    })
    .await;
    progress.finish();
    let reconciled = reconciled?;
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
    let mut client = connect(url, &project.config).await?;
    let mut out = stdout();
    let started = Instant::now();
    let mut spinner = Spinner::none();
    let count = refresh::refresh(
        &mut client,
        &project,
        &names,
        downstream,
        |event| match event {
            refresh::Event::Started(target) => spinner = Spinner::start(&target.name),
            refresh::Event::Finished(target, outcome) => {
                std::mem::replace(&mut spinner, Spinner::none()).finish();
                let _ = writeln!(out, "{}", render::refresh_outcome(target, outcome));
            }
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

async fn schedule(
    root: &Path,
    url: Option<&str>,
    emit: Option<Emit>,
    grace: std::time::Duration,
    heal: bool,
) -> Result<Status, Error> {
    if let Some(Emit::PgCron) = emit {
        let project = Project::load(root)?;
        let sql = refresh::pg_cron::emit(&project)?;
        ignore_broken_pipe(stdout().write_all(sql.as_bytes()))?;
        return Ok(Status::Done);
    }
    let url = db::resolve_url(url)?;
    let mut out = stdout();
    // Say what is watched, so a quiet log does not look like a hung process.
    if let Ok(project) = Project::load(root) {
        let policies = project
            .declarations
            .values()
            .filter(|declaration| declaration.refresh.is_some())
            .count();
        let _ = writeln!(
            out,
            "{} {}",
            chrono::Utc::now().format("%Y-%m-%dT%H:%M:%S%.3fZ"),
            render::schedule_started(
                policies,
                &crate::project::display_path(&root.join(&project.config.views_dir)),
                heal
            )
        );
        let _ = out.flush();
    }
    let mut spinner = Spinner::none();
    let options = refresh::schedule::Options { grace, heal };
    refresh::schedule::run(root, &url, &options, |event| {
        let line = match event {
            ScheduleEvent::Started(target) => {
                spinner = Spinner::start(&target.name);
                return;
            }
            ScheduleEvent::Finished(target, outcome, retry_at) => {
                std::mem::replace(&mut spinner, Spinner::none()).finish();
                if matches!(outcome, refresh::Outcome::Skipped(_)) {
                    tracing::debug!("{}", render::refresh_outcome(target, outcome));
                    return;
                }
                match retry_at {
                    Some(at) => format!(
                        "{}; retrying at {}",
                        render::refresh_outcome(target, outcome),
                        at.format("%H:%M:%S")
                    ),
                    None => render::refresh_outcome(target, outcome),
                }
            }
            // A log holds one line per event: no boxes, no indented continuation lines.
            ScheduleEvent::Problem(message) => format!("problem: {}", render::one_line(&message)),
            ScheduleEvent::Healed(summary) => format!("restored dropped views: {summary}"),
            ScheduleEvent::Stopping => "stopping".to_owned(),
        };
        let now = chrono::Utc::now().format("%Y-%m-%dT%H:%M:%S%.3fZ");
        // One line per event, whatever PostgreSQL's message (detail, hint) looked like.
        let line = line.lines().map(str::trim).collect::<Vec<_>>().join(" ");
        let _ = writeln!(out, "{now} {line}");
        let _ = out.flush();
    })
    .await?;
    Ok(Status::Done)
}

async fn status(
    root: &Path,
    url: Option<&str>,
    format: Format,
    detailed_exitcode: bool,
) -> Result<Status, Error> {
    let project = Project::load(root)?;
    let mut client = connect(url, &project.config).await?;
    let schema = &project.config.state_schema;
    let catalog_error = |error: tokio_postgres::Error| Error::Catalog(db::describe(&error));
    let catalog = read_catalog(&mut client, &project).await?;
    let history = if catalog.state.is_some() {
        state::read_history(&client, schema, None)
            .await
            .map_err(catalog_error)?
    } else {
        Default::default()
    };
    let now: chrono::DateTime<chrono::Utc> = client
        .query_one(crate::sql::session::CLOCK, &[])
        .await
        .map_err(catalog_error)?
        .get(0);
    let plan = plan::plan(&project, &catalog);
    let rows = crate::status::status(&project, &catalog, plan.as_ref().ok(), &history, now);
    let problems = match &plan {
        Ok(_) => Vec::new(),
        Err(error) => render::plan_problems(error),
    };
    let mut out = stdout();
    ignore_broken_pipe(match format {
        Format::Text => render::status_text(&rows, now, &mut out),
        Format::Json => render::status_json(&rows, &problems, &mut out),
    })?;
    // Why the rows say `unknown`: the problems, once and located, on stderr with exit 1.
    let plan = plan?;
    let pending = !plan.is_empty() || rows.iter().any(|row| row.sync != crate::status::IN_SYNC);
    Ok(if detailed_exitcode && pending {
        Status::ChangesPending
    } else {
        Status::Done
    })
}

/// A spinner with the elapsed time while a refresh runs, when stdout is a terminal.
struct Spinner(Option<indicatif::ProgressBar>);

impl Spinner {
    fn none() -> Self {
        Spinner(None)
    }

    fn start(name: &QualifiedName) -> Self {
        if !io::stdout().is_terminal() {
            return Spinner(None);
        }
        let bar = indicatif::ProgressBar::new_spinner();
        if let Ok(style) =
            indicatif::ProgressStyle::with_template("{spinner} refreshing {msg} {elapsed}")
        {
            bar.set_style(style);
        }
        bar.set_message(name.to_string());
        bar.enable_steady_tick(std::time::Duration::from_millis(100));
        Spinner(Some(bar))
    }

    fn finish(self) {
        if let Some(bar) = self.0 {
            bar.finish_and_clear();
        }
    }
}

/// The width of the object column in reconcile's progress lines: the longest declared name
/// (an undeclared object being dropped may be longer, and then only its own line shifts).
fn name_width(project: &Project) -> usize {
    project
        .declarations
        .keys()
        .map(|name| name.to_string().chars().count())
        .max()
        .unwrap_or(0)
        .max(20)
}

/// A spinner with the elapsed time while reconcile works, when stdout is a terminal: a long
/// refresh inside the transaction shows the last object done and the time since.
struct Progress(Option<indicatif::ProgressBar>);

impl Progress {
    fn start(what: &'static str) -> Self {
        if !io::stdout().is_terminal() {
            return Progress(None);
        }
        let bar = indicatif::ProgressBar::new_spinner();
        if let Ok(style) = indicatif::ProgressStyle::with_template(&format!(
            "{{spinner}} {what}{{msg}} {{elapsed}}"
        )) {
            bar.set_style(style);
        }
        bar.enable_steady_tick(std::time::Duration::from_millis(100));
        Progress(Some(bar))
    }

    /// A statement on `object` finished; the next one starts now.
    fn step(&mut self, object: &QualifiedName) {
        if let Some(bar) = &self.0 {
            bar.set_message(format!(" (after {object})"));
            bar.reset_elapsed();
        }
    }

    /// Prints around the spinner, so lines and spinner do not overwrite each other.
    fn suspend<R>(&self, print: impl FnOnce() -> R) -> R {
        match &self.0 {
            Some(bar) => bar.suspend(print),
            None => print(),
        }
    }

    fn finish(self) {
        if let Some(bar) = self.0 {
            bar.finish_and_clear();
        }
    }
}

/// Sessions for a parallel restore of the database at `url`.
fn workers(url: Option<&str>, jobs: usize) -> Result<apply::Workers, Error> {
    Ok(apply::Workers {
        url: db::resolve_url(url)?,
        jobs,
    })
}

/// `run`: optionally drop the managed views, run the migration with its output streaming
/// through, then reconcile whether it worked or not, so the views always come back.
async fn run_migration(
    root: &Path,
    url: Option<&str>,
    drop_first: bool,
    jobs: usize,
    command: &[String],
) -> Result<Status, Error> {
    let project = Project::load(root)?;
    let Some((program, arguments)) = command.split_first() else {
        return Ok(Status::Done);
    };
    // Listening from the start: a SIGINT that comes while the views are dropped, before the
    // migration starts, is passed on to the migration as soon as it starts.
    let signals = Forwarded::listen();
    let mut client = connect(url, &project.config).await?;
    let mut out = stdout();
    if drop_first {
        let width = name_width(&project);
        let dropped = apply::drop_managed(&mut client, &project, |statement, took| {
            let _ = render::statement_done(statement, took, width, &mut out);
        })
        .await
        .map_err(Error::drop_first)?;
        ignore_broken_pipe(writeln!(
            out,
            "Dropped {} managed object{} before the migration.",
            dropped.plan.actions().len(),
            if dropped.plan.actions().len() == 1 {
                ""
            } else {
                "s"
            }
        ))?;
    }
    let _ = out.flush();
    // Nothing is left waiting on this connection while the migration runs (it may take long
    // enough for the server to close idle sessions): reconcile opens a fresh one.
    drop(client);
    // With --drop-first there is nothing to suggest, so the migration keeps its own stderr.
    let (code, type_change_blocked) = run_command(program, arguments, !drop_first, signals).await;
    if code != 0 {
        eprintln!("viewkeeper: {program} exited with status {code}; reconciling anyway");
    }
    let mut client = connect_quietly(url, &project.config).await?;
    let workers = workers(url, jobs)?;
    let intent = apply::Intent {
        workers: Some(&workers),
        ..apply::Intent::RESTORE
    };
    let reconciled = run_reconcile(&project, &mut client, &intent)
        .await
        .and_then(kept_going);
    if code != 0 && type_change_blocked {
        eprintln!("{}", render::suggest_drop_first(command));
    }
    match (code, reconciled) {
        (0, Ok(_)) => Ok(Status::Done),
        (0, Err(error)) => Err(error),
        (code, Ok(_)) => Ok(Status::Code(code)),
        (code, Err(error)) => {
            eprintln!("{:?}", miette::Report::new(error));
            Ok(Status::Code(code))
        }
    }
}

/// PostgreSQL's message when a migration changes the type of a column a view reads.
const TYPE_UNDER_VIEW: &[u8] = b"cannot alter type of a column used by a view or rule";

/// Copies the migration's stderr to ours byte for byte as it arrives, and says whether
/// PostgreSQL's "cannot alter type of a column used by a view" went by. Watching the text
/// is the only way to know: the failed migration's transaction is rolled back, so the
/// database looks exactly as before, and the exit status says only that something failed.
async fn pass_stderr_through(mut from: tokio::process::ChildStderr) -> bool {
    use tokio::io::AsyncReadExt;
    let mut seen = false;
    let mut window: Vec<u8> = Vec::new();
    let mut chunk = [0u8; 8192];
    loop {
        let read = match from.read(&mut chunk).await {
            Ok(0) | Err(_) => return seen,
            Ok(read) => read,
        };
        let mut err = io::stderr().lock();
        let _ = err.write_all(&chunk[..read]);
        let _ = err.flush();
        drop(err);
        if !seen {
            // The window keeps the end of the previous chunk, so a message split across two
            // reads is still found.
            window.extend_from_slice(&chunk[..read]);
            seen = window
                .windows(TYPE_UNDER_VIEW.len())
                .any(|part| part == TYPE_UNDER_VIEW);
            let keep = window.len().min(TYPE_UNDER_VIEW.len() - 1);
            window.drain(..window.len() - keep);
        }
    }
}

/// `drop-managed`: the first half of `run --drop-first`, for a migration tool that calls us.
async fn drop_managed(root: &Path, url: Option<&str>) -> Result<Status, Error> {
    let project = Project::load(root)?;
    let mut client = connect(url, &project.config).await?;
    let mut out = stdout();
    let width = name_width(&project);
    let dropped = apply::drop_managed(&mut client, &project, |statement, took| {
        let _ = render::statement_done(statement, took, width, &mut out);
    })
    .await
    .map_err(Error::drop_first)?;
    let count = dropped.plan.actions().len();
    ignore_broken_pipe(writeln!(
        out,
        "Dropped {count} managed object{}; `viewkeeper reconcile` restores them.",
        if count == 1 { "" } else { "s" }
    ))?;
    Ok(Status::Done)
}

/// Runs the migration with stdin, stdout and stderr inherited, so its output streams through
/// unchanged. Ctrl-C and SIGTERM go to the migration, not to viewkeeper, which must survive
/// to reconcile afterwards. Returns its exit status (127 when it cannot start), and, when
/// `watch_stderr`, whether its stderr showed a column type change blocked by a view.
async fn run_command(
    program: &str,
    arguments: &[String],
    watch_stderr: bool,
    signals: Option<Forwarded>,
) -> (u8, bool) {
    // The migration's sessions may drop managed views (a protecting guard lets them):
    // viewkeeper restores them right after.
    let options = match std::env::var("PGOPTIONS") {
        Ok(existing) if !existing.trim().is_empty() => {
            format!("{existing} -c {}=on", crate::guard::MIGRATING_SETTING)
        }
        _ => format!("-c {}=on", crate::guard::MIGRATING_SETTING),
    };
    let mut command = tokio::process::Command::new(program);
    command.args(arguments).env("PGOPTIONS", options);
    if watch_stderr {
        command.stderr(std::process::Stdio::piped());
    }
    let mut child = match command.spawn() {
        Ok(child) => child,
        Err(error) => {
            eprintln!("viewkeeper: cannot run {program}: {error}");
            return (127, false);
        }
    };
    let watcher = child
        .stderr
        .take()
        .map(|from| tokio::spawn(pass_stderr_through(from)));
    let code = match signals {
        Some(signals) => signals.wait_forwarding(&mut child).await,
        None => exit_code(child.wait().await),
    };
    let seen = match watcher {
        // A background process the migration started may hold its stderr open: wait for the
        // rest of the output a moment, not forever.
        Some(watcher) => tokio::time::timeout(std::time::Duration::from_secs(2), watcher)
            .await
            .is_ok_and(|seen| seen.unwrap_or(false)),
        None => false,
    };
    (code, seen)
}

/// SIGINT and SIGTERM, caught so viewkeeper survives them, to be passed on to the migration.
struct Forwarded {
    interrupt: tokio::signal::unix::Signal,
    terminate: tokio::signal::unix::Signal,
}

impl Forwarded {
    /// `None` when the signals cannot be caught (then they act as usual).
    fn listen() -> Option<Forwarded> {
        use tokio::signal::unix::{SignalKind, signal};
        Some(Forwarded {
            interrupt: signal(SignalKind::interrupt()).ok()?,
            terminate: signal(SignalKind::terminate()).ok()?,
        })
    }

    /// Waits for `child`, passing on each signal caught (also those caught before it started).
    async fn wait_forwarding(mut self, child: &mut tokio::process::Child) -> u8 {
        let forward = |child: &tokio::process::Child, sig: nix::sys::signal::Signal| {
            if let Some(pid) = child.id().and_then(|pid| i32::try_from(pid).ok()) {
                let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), sig);
            }
        };
        loop {
            tokio::select! {
                status = child.wait() => return exit_code(status),
                // A terminal's Ctrl-C already reached the migration (same process group); a
                // SIGINT sent to viewkeeper alone is passed on.
                _ = self.interrupt.recv() => forward(child, nix::sys::signal::Signal::SIGINT),
                _ = self.terminate.recv() => forward(child, nix::sys::signal::Signal::SIGTERM),
            }
        }
    }
}

fn exit_code(status: io::Result<std::process::ExitStatus>) -> u8 {
    match status {
        Ok(status) => status.code().map_or_else(
            // Killed by a signal: the shell convention 128 + signal number.
            || {
                use std::os::unix::process::ExitStatusExt;
                status
                    .signal()
                    .and_then(|signal| u8::try_from(128 + signal).ok())
                    .unwrap_or(1)
            },
            |code| u8::try_from(code).unwrap_or(1),
        ),
        Err(_) => 1,
    }
}

async fn guard(root: &Path, url: Option<&str>, action: GuardAction) -> Result<Status, Error> {
    let project = Project::load(root)?;
    let mut client = connect(url, &project.config).await?;
    let schema = &project.config.state_schema;
    let mut out = stdout();
    match action {
        GuardAction::Install { protect } => {
            crate::guard::install(&mut client, schema, protect).await?;
            ignore_broken_pipe(writeln!(
                out,
                "Guard installed: drops of views are recorded in {} and announced on channel {}.",
                crate::guard::log_table(schema),
                crate::guard::CHANNEL
            ))?;
            if protect {
                ignore_broken_pipe(writeln!(
                    out,
                    "Drops that would remove a managed view are refused, except under `viewkeeper run`."
                ))?;
            }
        }
        GuardAction::Uninstall => {
            crate::guard::uninstall(&mut client, schema).await?;
            ignore_broken_pipe(writeln!(
                out,
                "Guard removed; the log of past drops is kept."
            ))?;
        }
        GuardAction::Log { limit } => {
            let records = crate::guard::read_log(&client, schema, false, limit)
                .await
                .map_err(|error| Error::Catalog(db::describe(&error)))?;
            let installed = crate::guard::installed(&client)
                .await
                .map_err(|error| Error::Catalog(db::describe(&error)))?;
            if !installed {
                ignore_broken_pipe(writeln!(
                    out,
                    "The guard is not installed: run `viewkeeper guard install` as a superuser."
                ))?;
            }
            if records.is_empty() {
                ignore_broken_pipe(writeln!(out, "No drops recorded."))?;
            }
            for record in records {
                ignore_broken_pipe(writeln!(out, "{}  {}", record.object, record.describe()))?;
            }
        }
    }
    Ok(Status::Done)
}

async fn import(
    root: &Path,
    url: Option<&str>,
    schemas: &[String],
    with_depends_on: bool,
) -> Result<Status, Error> {
    let config = crate::project::Config::load_only(root)?;
    let views_dir = root.join(&config.views_dir);
    std::fs::create_dir_all(&views_dir).map_err(|source| Error::Io {
        context: format!("cannot create {}", views_dir.display()),
        source,
    })?;
    // Objects already declared are left alone; a broken project is reported first.
    let project = Project::load(root)?;
    let client = connect(url, &project.config).await?;
    let catalog = catalog::introspect(&client, &[], &project.config.state_schema)
        .await
        .map_err(|error| Error::Catalog(db::describe(&error)))?;
    let declared = project.declarations.keys().cloned().collect();
    let files = crate::import::import(&catalog, schemas, &declared, with_depends_on);
    let left_alone = crate::import::left_alone(&catalog, schemas, &declared);
    let mut out = stdout();
    let mut written = 0;
    for file in &files {
        let path = views_dir.join(&file.file_name);
        let shown = crate::project::display_path(&path);
        // Never overwrite: an existing file may hold someone's work.
        match std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&path)
        {
            Ok(mut handle) => {
                handle
                    .write_all(file.text.as_bytes())
                    .map_err(|source| Error::Io {
                        context: format!("cannot write {}", shown.display()),
                        source,
                    })?;
                written += 1;
                ignore_broken_pipe(writeln!(
                    out,
                    "wrote   {}  ({})",
                    shown.display(),
                    file.object
                ))?;
            }
            Err(error) if error.kind() == io::ErrorKind::AlreadyExists => {
                ignore_broken_pipe(writeln!(
                    out,
                    "skipped {}: the file exists ({})",
                    shown.display(),
                    file.object
                ))?;
            }
            Err(source) => {
                return Err(Error::Io {
                    context: format!("cannot write {}", shown.display()),
                    source,
                });
            }
        }
    }
    ignore_broken_pipe(writeln!(
        out,
        "Imported {written} object{}{}. Next: `viewkeeper plan` should find them in sync, and \
         `viewkeeper reconcile` records them as managed without rebuilding them.",
        if written == 1 { "" } else { "s" },
        if left_alone == 0 {
            String::new()
        } else {
            format!(" ({left_alone} already declared, left alone)")
        }
    ))?;
    Ok(Status::Done)
}

fn graph(root: &Path, format: GraphFormat) -> Result<Status, Error> {
    let project = Project::load(root)?;
    let style = match format {
        GraphFormat::Text => render::GraphStyle::Text,
        GraphFormat::Dot => render::GraphStyle::Dot,
        GraphFormat::Mermaid => render::GraphStyle::Mermaid,
    };
    ignore_broken_pipe(render::graph(&project, style, &mut stdout()))?;
    Ok(Status::Done)
}

/// The files `init` writes.
const INIT_CONFIG: &str = "// viewkeeper settings: every key is optional; these are the defaults.
views-dir \"views\"            // where declarations live
state-schema \"viewkeeper\"    // where viewkeeper keeps its own bookkeeping
lock-timeout \"5s\"            // every command gives up instead of queueing behind long locks
search-path \"public\"         // how unqualified names in queries resolve
// statement-timeout \"10m\"    // limit for each refresh by refresh and schedule (default: none)
";

const INIT_EXAMPLE: &str =
    "// One file may hold several declarations. `viewkeeper check` validates them offline,
// `viewkeeper plan` shows what reconcile would change. Replace this example with your own.
view \"public.example_view\" {
    query \"SELECT 1 AS answer\"
    comment \"An example: replace or delete me\"
}
";

fn init(root: &Path) -> Result<Status, Error> {
    let files = [
        (root.join(crate::project::CONFIG_FILE), INIT_CONFIG),
        (root.join("views").join("example.kdl"), INIT_EXAMPLE),
    ];
    let mut out = stdout();
    for (path, text) in files {
        let shown = crate::project::display_path(&path);
        if path.exists() {
            ignore_broken_pipe(writeln!(out, "kept    {} (exists)", shown.display()))?;
            continue;
        }
        let written = path
            .parent()
            .map_or(Ok(()), std::fs::create_dir_all)
            .and_then(|()| std::fs::write(&path, text));
        written.map_err(|source| Error::Io {
            context: format!("cannot write {}", shown.display()),
            source,
        })?;
        ignore_broken_pipe(writeln!(out, "created {}", shown.display()))?;
    }
    ignore_broken_pipe(writeln!(
        out,
        "Next: declare your views in views/, then `viewkeeper check` and `viewkeeper plan`."
    ))?;
    Ok(Status::Done)
}

/// The catalog as `plan` sees it, read in a transaction that is rolled back.
async fn read_catalog(
    client: &mut tokio_postgres::Client,
    project: &Project,
) -> Result<catalog::Catalog, Error> {
    let catalog_error = |error: tokio_postgres::Error| Error::Catalog(db::describe(&error));
    let timeout = project.config.lock_timeout;
    let mut attempt = 1;
    loop {
        let mut transaction = client.transaction().await.map_err(catalog_error)?;
        let read = async {
            waits::bound(&transaction, timeout).await?;
            // Never read views while a reconcile drops and recreates them.
            waits::share_reconcile_lock(&transaction, &project.config.state_schema).await?;
            catalog::read::read_catalog(&mut transaction, project).await
        }
        .await;
        transaction.rollback().await.map_err(catalog_error)?;
        match read {
            Ok(catalog) => return Ok(catalog),
            // A migration outside viewkeeper dropped a view under the read: read again.
            Err(error) if waits::lost_relation(&error) && attempt < 3 => attempt += 1,
            Err(error) if waits::timed_out(&error) => {
                let holders = waits::holders(&*client, &project.config.state_schema)
                    .await
                    .unwrap_or_default();
                return Err(Error::Catalog(waits::gave_up(
                    waits::CATALOG_WAITS_FOR,
                    timeout,
                    &holders,
                )));
            }
            Err(error) => return Err(catalog_error(error)),
        }
    }
}

/// Connects, and says first of all when a `run --drop-first` was killed before it restored
/// the views it dropped.
async fn connect(url: Option<&str>, config: &Config) -> Result<tokio_postgres::Client, Error> {
    let client = connect_quietly(url, config).await?;
    warn_restore_owed(&client, config).await;
    Ok(client)
}

/// Connects without the restore-owed warning: for `run`'s own reconcile after its drops.
async fn connect_quietly(
    url: Option<&str>,
    config: &Config,
) -> Result<tokio_postgres::Client, Error> {
    let url = db::resolve_url(url)?;
    Ok(db::connect(&url, &config.search_path).await?)
}

/// Prints the restore-owed warning to stderr when the state records one. The read waits
/// no longer than `lock-timeout` for a lock on the record (a `run` settling it holds one),
/// and a read that cannot be made is only logged: the command itself goes on.
pub(crate) async fn warn_restore_owed(client: &tokio_postgres::Client, config: &Config) {
    let read = async {
        client
            .batch_execute(&format!(
                "{}; {}",
                crate::sql::session::BEGIN,
                crate::sql::session::set_local_lock_timeout(config.lock_timeout)
            ))
            .await?;
        let since = state::restore_owed_since(client, &config.state_schema).await;
        client.batch_execute(crate::sql::session::ROLLBACK).await?;
        since
    };
    match read.await {
        Ok(Some(since)) => eprintln!("{}", render::restore_owed(since)),
        Ok(None) => {}
        Err(error) => {
            // Leaves no transaction open behind a failed read.
            let _ = client.batch_execute(crate::sql::session::ROLLBACK).await;
            tracing::debug!(
                "cannot read the restore-owed record: {}",
                db::describe(&error)
            );
        }
    }
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
