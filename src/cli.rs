//! The command line (clap definitions only).

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand, ValueEnum};

/// Keep PostgreSQL views and materialized views equal to their declaration files,
/// whatever migrations do to them.
#[derive(Debug, Parser)]
#[command(name = "viewkeeper", version, about, max_term_width = 100)]
pub struct Cli {
    /// Project folder holding viewkeeper.kdl and the declarations folder [default: the
    /// nearest folder upward holding viewkeeper.kdl].
    #[arg(long, global = true, value_name = "DIR")]
    pub project: Option<PathBuf>,

    #[command(flatten)]
    pub connect: ConnectOpts,

    /// When to colour the output: auto (on a terminal, unless NO_COLOR is set; CLICOLOR_FORCE
    /// or FORCE_COLOR force it), always or never.
    #[arg(long, global = true, value_enum, default_value_t = ColorWhen::Auto, value_name = "WHEN")]
    pub color: ColorWhen,

    /// List every name in summaries (adopted objects, the dependency order) instead of the
    /// first few and a count.
    #[arg(long, short, global = true)]
    pub verbose: bool,

    #[command(subcommand)]
    pub command: Command,
}

/// How to reach the database, before the command (`viewkeeper --database-url URL plan`).
/// Not global: offline commands (check, graph, init, completions, demo) neither take nor
/// offer it; the commands that connect take it after their name too ([`Connect`]).
#[derive(Debug, Args)]
pub struct ConnectOpts {
    /// PostgreSQL connection URL (postgresql://user@host:port/db) or key=value string.
    #[arg(long, env = "DATABASE_URL", hide_env_values = true, value_name = "URL")]
    pub database_url: Option<String>,
}

/// `--database-url` after the name of a command that connects (and its subcommands). No
/// `env` here: the environment is read once, above, so an explicit URL before the command
/// is not overridden by `DATABASE_URL`.
#[derive(Debug, Args)]
pub struct Connect {
    /// PostgreSQL connection URL (postgresql://user@host:port/db) or key=value string
    /// [default: $DATABASE_URL].
    #[arg(long = "database-url", global = true, value_name = "URL")]
    pub database_url: Option<String>,
}

/// `--color`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum ColorWhen {
    Auto,
    Always,
    Never,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Validate the declarations offline: syntax, names, graph, cycles (exit 0 valid, 1 invalid).
    Check,
    /// Show what reconcile would do, with a diff of every changed query. Changes nothing.
    Plan {
        /// Output format (markdown: for a pull-request comment).
        #[arg(long, value_enum, default_value_t = PlanFormat::Text)]
        format: PlanFormat,
        /// Exit 0 when in sync, 2 when changes are pending, 1 on error.
        #[arg(long)]
        detailed_exitcode: bool,
        /// Plan drops even when no declaration is found at all.
        #[arg(long)]
        allow_drop: bool,
        /// Also save the plan, with a fingerprint of what it was made from, for
        /// `reconcile --plan FILE`.
        #[arg(long, value_name = "FILE")]
        out: Option<PathBuf>,
        #[command(flatten)]
        connect: Connect,
    },
    /// Apply the plan in one transaction (exit 0 done or nothing to do, 1 failed and rolled back).
    Reconcile {
        /// Allow drops that lose data (materialized views that hold data), or that remove
        /// every managed object because no declaration is found.
        #[arg(long)]
        allow_drop: bool,
        /// Apply this plan, saved by `plan --out`, exactly; refuse if the database or the
        /// declarations changed since.
        #[arg(long, value_name = "FILE")]
        plan: Option<PathBuf>,
        /// Apply each object in its own savepoint; one that fails is left as it is, with
        /// everything that depends on it, and the rest is applied (exit 1 lists what was not).
        #[arg(long)]
        keep_going: bool,
        /// When the plan only restores missing objects, build them on N sessions at once,
        /// each committed as soon as it is built (one that fails is left out, as with
        /// --keep-going). Any other plan runs in one transaction as usual.
        #[arg(long, value_name = "N", value_parser = clap::value_parser!(u16).range(1..=64))]
        jobs: Option<u16>,
        /// Output format: progress lines, or one JSON document of what was applied.
        #[arg(long, value_enum, default_value_t = Format::Text)]
        format: Format,
        #[command(flatten)]
        connect: Connect,
    },
    /// Refresh materialized views in dependency order (all declared ones when none is named).
    Refresh {
        /// Materialized views to refresh, such as public.sales_summary.
        #[arg(value_name = "VIEW")]
        views: Vec<String>,
        /// Also refresh the materialized views that depend on the named ones, transitively.
        #[arg(long)]
        downstream: bool,
        #[command(flatten)]
        connect: Connect,
    },
    /// Refresh materialized views on the schedules their declarations give, until stopped
    /// (SIGINT/SIGTERM: let a running refresh finish, then exit 0; SIGHUP: re-read the files).
    Schedule {
        /// Print SQL registering the schedules with pg_cron instead of running them.
        #[arg(long, value_enum, value_name = "TARGET")]
        emit: Option<Emit>,
        /// After SIGINT/SIGTERM, how long a running refresh may go on before it is cancelled.
        #[arg(long, default_value = "30s", value_parser = humantime::parse_duration)]
        grace: std::time::Duration,
        /// Do not reconcile when the guard reports a managed view dropped.
        #[arg(long)]
        no_heal: bool,
        #[command(flatten)]
        connect: Connect,
    },
    /// Show every managed object: in sync or not, last refresh, its age, next due, last error.
    Status {
        /// Output format.
        #[arg(long, value_enum, default_value_t = Format::Text)]
        format: Format,
        /// Exit 0 when everything is in sync, 2 when anything is pending or missing, 1 on error.
        #[arg(long)]
        detailed_exitcode: bool,
        #[command(flatten)]
        connect: Connect,
    },
    /// Run a migration command, then reconcile; exits with the command's status.
    ///
    /// Example: viewkeeper run --drop-first -- python manage.py migrate
    Run {
        /// Drop every managed view first (dependents first, one transaction), so migrations
        /// that change a column's type under a view succeed; reconcile restores them after.
        #[arg(long)]
        drop_first: bool,
        /// Sessions that restore missing views at once after the migration, each view
        /// committed as soon as it is built [default: the number of CPUs, at most 4].
        #[arg(long, value_name = "N", value_parser = clap::value_parser!(u16).range(1..=64))]
        jobs: Option<u16>,
        /// The migration command and its arguments, after `--`.
        #[arg(last = true, required = true, value_name = "COMMAND")]
        command: Vec<String>,
        #[command(flatten)]
        connect: Connect,
    },
    /// Drop every managed view (dependents first, one transaction) and record that a restore
    /// is owed: the next reconcile brings them back. For migration tools that run their own
    /// migrations, such as the Django app; `run --drop-first` does both steps.
    DropManaged {
        #[command(flatten)]
        connect: Connect,
    },
    /// Record every drop of a managed view (when, by whom, which statement) with an event
    /// trigger, so plan and status can say why it is missing and schedule can restore it.
    Guard {
        #[command(subcommand)]
        action: GuardAction,
        #[command(flatten)]
        connect: Connect,
    },
    /// Write declarations for the views and materialized views already in the database,
    /// one file per object, into the declaration folder.
    Import {
        /// Only objects in these schemas (repeatable; default: every non-system schema).
        #[arg(long = "schema", value_name = "NAME")]
        schemas: Vec<String>,
        /// Also write `depends-on`, even where it only repeats what the query shows.
        #[arg(long)]
        with_depends_on: bool,
        #[command(flatten)]
        connect: Connect,
    },
    /// Print the dependency graph of the declared views and the relations they read.
    Graph {
        /// Output format.
        #[arg(long, value_enum, default_value_t = GraphFormat::Text)]
        format: GraphFormat,
    },
    /// Start a project here: a viewkeeper.kdl and a views/ folder with one example.
    Init,
    /// Print a shell completion script.
    Completions {
        /// The shell to complete for.
        shell: clap_complete::Shell,
    },
    /// Run the invoices demo end to end on a throwaway PostgreSQL server.
    Demo,
}

/// `viewkeeper guard` actions.
#[derive(Debug, Subcommand)]
pub enum GuardAction {
    /// Install (or update) the event trigger; needs a superuser.
    Install {
        /// Also refuse, inside the dropping transaction, any drop that would remove a managed
        /// view, unless it runs under `viewkeeper run` or viewkeeper itself.
        #[arg(long)]
        protect: bool,
    },
    /// Remove the event trigger; the log of past drops stays.
    Uninstall,
    /// Show the recorded drops, newest first.
    Log {
        /// How many to show.
        #[arg(long, default_value_t = 50)]
        limit: i64,
    },
}

/// Formats of `viewkeeper graph`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum GraphFormat {
    /// An indented list in dependency order.
    Text,
    /// Graphviz DOT (`viewkeeper graph --format dot | dot -Tsvg`).
    Dot,
    /// A Mermaid flowchart, for Markdown docs.
    Mermaid,
}

/// What `schedule --emit` can print.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Emit {
    /// SQL for the pg_cron extension (`cron.schedule`).
    PgCron,
}

/// Output formats.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Format {
    Text,
    Json,
}

/// Formats of `viewkeeper plan`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum PlanFormat {
    Text,
    Json,
    Markdown,
}

impl Command {
    /// The `--database-url` given after the command's name, for commands that connect.
    pub fn connect(&self) -> Option<&Connect> {
        match self {
            Command::Plan { connect, .. }
            | Command::Reconcile { connect, .. }
            | Command::Refresh { connect, .. }
            | Command::Schedule { connect, .. }
            | Command::Status { connect, .. }
            | Command::Run { connect, .. }
            | Command::DropManaged { connect }
            | Command::Guard { connect, .. }
            | Command::Import { connect, .. } => Some(connect),
            Command::Check
            | Command::Graph { .. }
            | Command::Init
            | Command::Completions { .. }
            | Command::Demo => None,
        }
    }
}
