//! Plans and reconcile progress as text (coloured by the caller's stream), JSON, or
//! Markdown for a pull-request comment.
//!
//! Renderers write ANSI styles unconditionally into any `io::Write`; the binary wraps
//! stdout in `anstream`, which strips them when stdout is not a terminal or `NO_COLOR` is
//! set, so tests and pipes see plain text.

use std::io::{self, Write};
use std::time::Duration;

use anstyle::{AnsiColor, Style};
use serde::Serialize;

use chrono::{DateTime, Utc};

use crate::name::QualifiedName;
use crate::plan::{Action, Change, Hold, Lock, Phase, Plan, Statement, Step, Warning};
use crate::project::{Kind, Project};
use crate::refresh::{Outcome, RefreshTarget, Skip};
use crate::status::ObjectStatus;

const BOLD: Style = Style::new().bold();
const DIM: Style = Style::new().dimmed();
const GREEN: Style = AnsiColor::Green.on_default();
const RED: Style = AnsiColor::Red.on_default();
const YELLOW: Style = AnsiColor::Yellow.on_default();
const CYAN: Style = AnsiColor::Cyan.on_default();

/// Whether summaries name everything (`--verbose`). A presentation choice of the whole
/// process, set once from the command line, as anstream's colour choice is.
static VERBOSE: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// Lists every name in summaries from now on (`--verbose`).
pub fn set_verbose(verbose: bool) {
    VERBOSE.store(verbose, std::sync::atomic::Ordering::Relaxed);
}

/// How many names a summary shows before `… and N more`.
const SUMMARY_NAMES: usize = 3;

/// `a, b, c … and 151 more`, or every name with `--verbose` (or when there are few).
pub fn summarise_names(names: &[String]) -> String {
    // Naming the fourth costs no more room than counting it.
    if VERBOSE.load(std::sync::atomic::Ordering::Relaxed) || names.len() <= SUMMARY_NAMES + 1 {
        return names.join(", ");
    }
    format!(
        "{} … and {} more; --verbose lists all",
        names[..SUMMARY_NAMES].join(", "),
        names.len() - SUMMARY_NAMES
    )
}

fn change_style(change: Change) -> Style {
    match change {
        Change::Create => GREEN,
        Change::Drop | Change::Forget => RED,
        Change::Replace | Change::ReplaceInPlace | Change::Rebuild | Change::Alter => YELLOW,
        Change::Refresh => CYAN,
        Change::Adopt => Style::new(),
    }
}

/// The plan's first line, as a headline (`Plan:`, `In sync:`) and the rest.
fn summary_line(plan: &Plan) -> (&'static str, String) {
    if plan.is_empty() {
        let plural = if plan.declared == 1 { "" } else { "s" };
        return (
            "In sync:",
            format!("{} declared object{plural}, nothing to do.", plan.declared),
        );
    }
    let summary: Vec<String> = plan
        .summary()
        .iter()
        .map(|(change, count)| format!("{count} to {}", change.verb()))
        .collect();
    ("Plan:", format!("{}.", summary.join(", ")))
}

/// The plan for people: a summary line, then each action with its reason and diff.
pub fn plan_text(plan: &Plan, out: &mut impl Write) -> io::Result<()> {
    let (headline, rest) = summary_line(plan);
    writeln!(out, "{BOLD}{headline}{BOLD:#} {rest}")?;
    if !plan.is_empty() {
        writeln!(out)?;
        for action in &plan.actions() {
            action_text(action, out)?;
        }
    }
    adopted_text(plan, "recorded as managed by the next reconcile", out)?;
    warnings_text(&plan.warnings, out)
}

fn action_text(action: &Action, out: &mut impl Write) -> io::Result<()> {
    let style = change_style(action.change);
    writeln!(
        out,
        "{style}{:<8}{style:#} {BOLD}{}{BOLD:#} {DIM}({}){DIM:#}",
        action.change.verb(),
        action.object,
        action.kind.words()
    )?;
    writeln!(out, "         {}", action.reason)?;
    if action.destroys_data {
        writeln!(
            out,
            "         {RED}destroys data:{RED:#} its rows are lost for good (reconcile needs --allow-drop)"
        )?;
    }
    writeln!(out, "         {DIM}lock: {}{DIM:#}", lock_words(action))?;
    if let Some(cost) = side_by_side_words(action) {
        writeln!(out, "         {DIM}{cost}{DIM:#}")?;
    }
    for detail in &action.details {
        // `·`, not `-`: a dash reads as "removed" next to diffs.
        writeln!(out, "         · {detail}")?;
    }
    if let Some(diff) = &action.diff {
        for line in diff.lines() {
            let style = if line.starts_with("+++") || line.starts_with("---") {
                BOLD
            } else if line.starts_with('+') {
                GREEN
            } else if line.starts_with('-') {
                RED
            } else if line.starts_with("@@") {
                CYAN
            } else {
                Style::new()
            };
            writeln!(out, "         {style}{line}{style:#}")?;
        }
    }
    Ok(())
}

/// The lock an action takes and how long readers wait for it: `ACCESS EXCLUSIVE, brief`.
pub fn lock_words(action: &Action) -> String {
    let Some(lock) = action.lock else {
        return "none".to_owned();
    };
    let lock = match lock {
        Lock::Exclusive => "EXCLUSIVE (writers wait, readers do not)",
        lock => lock.words(),
    };
    match action.hold {
        Hold::None | Hold::Brief => format!("{lock}, brief"),
        Hold::WhileBuilding { known, unrecorded } if known.is_zero() => format!(
            "{lock} while {} filled in its transaction (no build recorded yet)",
            if unrecorded == 1 {
                "a materialized view is"
            } else {
                "materialized views are"
            }
        ),
        Hold::WhileBuilding { known, unrecorded } => {
            let unrecorded = match unrecorded {
                0 => String::new(),
                1 => " plus a build never recorded".to_owned(),
                n => format!(" plus {n} builds never recorded"),
            };
            format!(
                "{lock} for about {}{unrecorded} (the last builds of what its transaction fills)",
                format_duration(known)
            )
        }
    }
}

/// What a side-by-side build costs, in words, for an action that has one.
pub fn side_by_side_words(action: &Action) -> Option<String> {
    let cost = action.side_by_side?;
    let took = cost
        .took_last
        .map_or("no build recorded yet".to_owned(), |took| {
            format!("its last build took {}", format_duration(took))
        });
    // A size of 0 is one the catalog did not give: nothing worth saying.
    Some(if cost.size_bytes > 0 {
        format!(
            "build: {took}; the copy needs about {} more disk until the swap",
            format_bytes(cost.size_bytes)
        )
    } else {
        format!("build: {took}")
    })
}

/// `0 B`, `8.0 kB`, `1.2 GB`: in steps of 1024, as PostgreSQL's `pg_size_pretty` counts.
pub fn format_bytes(bytes: i64) -> String {
    let mut size = bytes.max(0) as f64;
    for unit in ["B", "kB", "MB", "GB"] {
        if size < 1024.0 {
            return if unit == "B" {
                format!("{size} {unit}")
            } else {
                format!("{size:.1} {unit}")
            };
        }
        size /= 1024.0;
    }
    format!("{size:.1} TB")
}

/// Objects that already match their declarations, named once (they need no change).
fn adopted_text(plan: &Plan, what_happens: &str, out: &mut impl Write) -> io::Result<()> {
    let adopted = plan.adopted();
    if adopted.is_empty() {
        return Ok(());
    }
    let names: Vec<String> = adopted.iter().map(ToString::to_string).collect();
    writeln!(
        out,
        "{DIM}{} existing object{} already match{} the declarations ({}): {what_happens}, without rebuilding.{DIM:#}",
        names.len(),
        if names.len() == 1 { "" } else { "s" },
        if names.len() == 1 { "es" } else { "" },
        summarise_names(&names)
    )
}

fn warnings_text(warnings: &[Warning], out: &mut impl Write) -> io::Result<()> {
    if !warnings.is_empty() {
        writeln!(out)?;
    }
    for warning in warnings {
        writeln!(
            out,
            "{YELLOW}warning:{YELLOW:#} {}: {} {DIM}({}){DIM:#}",
            warning.object, warning.message, warning.location
        )?;
    }
    Ok(())
}

/// The JSON document `plan --format json` prints. Its shape is a documented contract
/// (README, "JSON plan"); `format_version` changes if a field ever changes meaning.
#[derive(Serialize)]
struct PlanDocument<'p> {
    format_version: u32,
    in_sync: bool,
    summary: std::collections::BTreeMap<Change, usize>,
    /// Every step, in the order reconcile takes them: the plan itself.
    steps: Vec<StepDocument<'p>>,
    /// Per object: the change, its reason, diff and details (gathered from `steps`).
    actions: Vec<Action>,
    /// The SQL of the steps that run one, in order.
    statements: Vec<Statement>,
    adopted: Vec<&'p crate::name::QualifiedName>,
    warnings: &'p [Warning],
    /// Only in files written by `plan --out`.
    #[serde(skip_serializing_if = "Option::is_none")]
    fingerprint: Option<&'p crate::saved_plan::Fingerprint>,
}

/// One step in the JSON plan.
#[derive(Serialize)]
struct StepDocument<'p> {
    object: &'p crate::name::QualifiedName,
    kind: crate::project::Kind,
    change: Change,
    phase: crate::plan::Phase,
    summary: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    sql: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    lock: Option<&'static str>,
}

impl<'p> StepDocument<'p> {
    fn new(step: &'p Step) -> StepDocument<'p> {
        StepDocument {
            object: &step.object,
            kind: step.kind,
            change: step.change,
            phase: step.phase(),
            summary: step.summary(),
            sql: step.statement().map(|statement| statement.sql),
            lock: step.lock().map(Lock::words),
        }
    }
}

/// The `format_version` of the JSON plan.
pub const PLAN_FORMAT_VERSION: u32 = 1;

/// The plan as one JSON document.
pub fn plan_json(plan: &Plan, out: &mut impl Write) -> io::Result<()> {
    plan_json_with(plan, None, out)
}

/// The plan as one JSON document, with the fingerprint of what it was made from.
pub fn plan_json_with(
    plan: &Plan,
    fingerprint: Option<&crate::saved_plan::Fingerprint>,
    out: &mut impl Write,
) -> io::Result<()> {
    let document = PlanDocument {
        format_version: PLAN_FORMAT_VERSION,
        fingerprint,
        in_sync: plan.is_empty(),
        summary: plan.summary(),
        steps: plan.steps.iter().map(StepDocument::new).collect(),
        actions: plan.actions(),
        statements: plan.statements(),
        adopted: plan.adopted(),
        warnings: &plan.warnings,
    };
    serde_json::to_writer_pretty(&mut *out, &document).map_err(io::Error::from)?;
    writeln!(out)
}

/// The plan as Markdown for a pull-request comment: a summary line, a table of actions,
/// each query diff and the SQL in collapsible blocks, warnings last. Plain text only (no
/// styles, no timestamps), so the same plan always gives the same comment.
pub fn plan_markdown(plan: &Plan, out: &mut impl Write) -> io::Result<()> {
    let (headline, rest) = summary_line(plan);
    writeln!(out, "**{headline}** {rest}")?;
    if !plan.is_empty() {
        writeln!(out)?;
        writeln!(out, "| Object | Change | Reason | Lock |")?;
        writeln!(out, "| --- | --- | --- | --- |")?;
        let actions = plan.actions();
        for action in &actions {
            let mut reason = table_cell(&action.reason);
            if action.destroys_data {
                reason.push_str("<br>**destroys its data**");
            }
            for detail in &action.details {
                reason.push_str("<br>");
                reason.push_str(&table_cell(detail));
            }
            if let Some(cost) = side_by_side_words(action) {
                reason.push_str("<br>");
                reason.push_str(&table_cell(&cost));
            }
            writeln!(
                out,
                "| `{}` ({}) | {} | {reason} | {} |",
                action.object,
                action.kind.words(),
                action.change.verb(),
                table_cell(&lock_words(action))
            )?;
        }
        for action in &actions {
            if let Some(diff) = &action.diff {
                writeln!(out)?;
                let summary = format!("Query diff of <code>{}</code>", action.object);
                collapsible(&summary, "diff", diff, out)?;
            }
        }
        let statements = plan.statements();
        if !statements.is_empty() {
            writeln!(out)?;
            let sql: Vec<String> = statements
                .iter()
                .map(|statement| {
                    format!(
                        "-- {}: {}\n{};",
                        statement.object,
                        statement.summary.replace('\n', " "),
                        statement.sql
                    )
                })
                .collect();
            let transactions = if statements.iter().any(|s| s.phase == Phase::Build) {
                "the side-by-side builds in a transaction of their own, then the rest in one"
            } else {
                "in one transaction"
            };
            let summary = format!(
                "SQL ({} statement{}, in order, {transactions})",
                statements.len(),
                if statements.len() == 1 { "" } else { "s" }
            );
            collapsible(&summary, "sql", &sql.join("\n\n"), out)?;
        }
    }
    let adopted = plan.adopted();
    if !adopted.is_empty() {
        let names: Vec<String> = adopted.iter().map(|name| format!("`{name}`")).collect();
        writeln!(out)?;
        writeln!(
            out,
            "Already matching the declarations, recorded as managed without rebuilding: {}.",
            names.join(", ")
        )?;
    }
    if !plan.warnings.is_empty() {
        writeln!(out)?;
        writeln!(out, "**Warnings**")?;
        writeln!(out)?;
        for warning in &plan.warnings {
            writeln!(
                out,
                "- `{}`: {} ({})",
                warning.object,
                warning.message.replace('\n', " "),
                warning.location
            )?;
        }
    }
    Ok(())
}

/// Text fit for one Markdown table cell: one line, pipes escaped.
fn table_cell(text: &str) -> String {
    text.replace('\n', " ").replace('|', "\\|")
}

/// A `<details>` block holding a fenced code block; the fence is longer than any run of
/// backticks in the code, so no declared query can close it early.
fn collapsible(summary: &str, language: &str, code: &str, out: &mut impl Write) -> io::Result<()> {
    let mut longest = 0;
    let mut run = 0;
    for c in code.chars() {
        run = if c == '`' { run + 1 } else { 0 };
        longest = longest.max(run);
    }
    let fence = "`".repeat(longest.max(2) + 1);
    writeln!(out, "<details><summary>{summary}</summary>")?;
    writeln!(out)?;
    writeln!(out, "{fence}{language}")?;
    writeln!(out, "{}", code.trim_end_matches('\n'))?;
    writeln!(out, "{fence}")?;
    writeln!(out)?;
    writeln!(out, "</details>")
}

/// One line per executed statement: what was done to which object, and how long it took.
/// `width` is the longest object name to expect, so the columns line up.
pub fn statement_done(
    statement: &Statement,
    took: Duration,
    width: usize,
    out: &mut impl Write,
) -> io::Result<()> {
    let style = match statement.phase {
        Phase::Drop | Phase::DropIndex => RED,
        Phase::Create | Phase::Build => GREEN,
        Phase::Refresh => CYAN,
        Phase::Index | Phase::Options | Phase::Grant | Phase::Comment | Phase::Owner => YELLOW,
        Phase::State => Style::new(),
    };
    writeln!(
        out,
        "  {:<width$} {style}{}{style:#}  {DIM}{}{DIM:#}",
        statement.object.to_string(),
        statement.summary,
        format_duration(took)
    )
}

/// The closing line of a reconcile.
pub fn reconcile_done(plan: &Plan, took: Duration, out: &mut impl Write) -> io::Result<()> {
    if plan.is_empty() {
        writeln!(
            out,
            "{BOLD}In sync:{BOLD:#} {} declared object{}, nothing to do ({}).",
            plan.declared,
            if plan.declared == 1 { "" } else { "s" },
            format_duration(took)
        )?;
    } else {
        let summary: Vec<String> = plan
            .summary()
            .iter()
            .map(|(change, count)| format!("{count} {}", past(*change)))
            .collect();
        writeln!(
            out,
            "{BOLD}Reconciled:{BOLD:#} {} in {}.",
            summary.join(", "),
            format_duration(took)
        )?;
    }
    adopted_text(plan, "recorded as managed", out)?;
    warnings_text(&plan.warnings, out)
}

fn past(change: Change) -> &'static str {
    match change {
        Change::Drop => "dropped",
        Change::Forget => "forgotten",
        Change::Create => "created",
        Change::Replace => "replaced",
        Change::ReplaceInPlace => "replaced in place",
        Change::Rebuild => "rebuilt",
        Change::Alter => "altered",
        Change::Refresh => "refreshed",
        Change::Adopt => "adopted",
    }
}

/// The warning every command prints first while a killed `run --drop-first` owes a restore.
pub fn restore_owed(since: DateTime<Utc>) -> String {
    format!(
        "warning: a restore is owed since {}: `viewkeeper run --drop-first` did not finish; run `viewkeeper reconcile`",
        since.format("%Y-%m-%d %H:%M:%S UTC")
    )
}

/// `850 µs`, `12 ms`, `4.0 s`; a minute or more as an interval (`2m 5s`).
pub fn format_duration(duration: Duration) -> String {
    let micros = duration.as_micros();
    if micros < 1_000 {
        format!("{micros} µs")
    } else if micros < 1_000_000 {
        format!("{} ms", micros / 1_000)
    } else if duration.as_secs() < 60 {
        format!("{:.1} s", duration.as_secs_f64())
    } else {
        format_interval(duration)
    }
}

/// An interval as people write it, to the second: `7d`, `1h 30m`, `15m`, `45s`, `0s`.
pub fn format_interval(duration: Duration) -> String {
    let mut left = duration.as_secs();
    let mut parts = Vec::new();
    for (unit, seconds) in [("d", 86_400), ("h", 3_600), ("m", 60), ("s", 1)] {
        if left >= seconds {
            parts.push(format!("{}{unit}", left / seconds));
            left %= seconds;
        }
    }
    if parts.is_empty() {
        "0s".to_owned()
    } else {
        parts.join(" ")
    }
}

/// One line about a finished refresh.
pub fn refresh_outcome(target: &RefreshTarget, outcome: &Outcome) -> String {
    let name = &target.name;
    match outcome {
        Outcome::Refreshed {
            took, concurrently, ..
        } => format!(
            "refreshed {name}{} in {}",
            if *concurrently { " (concurrently)" } else { "" },
            format_duration(*took)
        ),
        Outcome::Failed(message) => format!("failed    {name}: {message}"),
        Outcome::Skipped(skip) => {
            let why = match skip {
                Skip::UpstreamFailed(upstream) => format!("{upstream} failed"),
                Skip::Busy => "another process is refreshing it".to_owned(),
                Skip::Reconciling => "a reconcile is running".to_owned(),
                Skip::NoLongerDue => "another process just refreshed it".to_owned(),
                Skip::Missing => "not in the database".to_owned(),
            };
            format!("skipped   {name}: {why}")
        }
    }
}

/// After a migration PostgreSQL stopped from changing a column's type under a view.
pub fn suggest_drop_first(command: &[String]) -> String {
    format!(
        "viewkeeper: the migration changes the type of a column that a view reads, which \
         PostgreSQL refuses; run it as `viewkeeper run --drop-first -- {}`: the managed views are \
         dropped first and restored after it",
        command
            .iter()
            .map(|word| {
                if word.is_empty()
                    || word.contains(|c: char| c.is_whitespace() || "'\"\\$`".contains(c))
                {
                    format!("'{}'", word.replace('\'', "'\\''"))
                } else {
                    word.clone()
                }
            })
            .collect::<Vec<_>>()
            .join(" ")
    )
}

/// `schedule`'s first log line: what it watches and how to steer it.
pub fn schedule_started(policies: usize, views_dir: &std::path::Path, heal: bool) -> String {
    format!(
        "schedule started: {policies} materialized view{} with a refresh policy in {}, re-read \
         every few seconds and on SIGHUP; {}; SIGINT or SIGTERM stops it",
        if policies == 1 { "" } else { "s" },
        views_dir.display(),
        if heal {
            "restores dropped views when the guard reports them"
        } else {
            "healing off (--no-heal)"
        }
    )
}

/// The status table: one row per object, widths fitted to the content.
pub fn status_text(
    rows: &[ObjectStatus],
    now: DateTime<Utc>,
    out: &mut impl Write,
) -> io::Result<()> {
    if rows.is_empty() {
        return writeln!(out, "Nothing declared or managed.");
    }
    let time = |at: Option<DateTime<Utc>>| {
        at.map_or_else(
            || "-".to_owned(),
            |at| at.format("%Y-%m-%d %H:%M:%S").to_string(),
        )
    };
    const HEADERS: [&str; 7] = [
        "OBJECT",
        "KIND",
        "REFRESH POLICY",
        "LAST REFRESH (UTC)",
        "AGE",
        "NEXT DUE (UTC)",
        "STATE",
    ];
    let table: Vec<[String; 7]> = rows
        .iter()
        .map(|row| {
            let mut state = match &row.reason {
                Some(reason) => format!("{}: {reason}", row.sync),
                None => row.sync.clone(),
            };
            if let Some(error) = &row.last_error {
                state = format!("{state}; refresh failed: {error}");
            }
            // One line per row, whatever PostgreSQL's message looked like.
            let state = state.split_whitespace().collect::<Vec<_>>().join(" ");
            let policy = match (&row.policy, row.populated) {
                (Some(policy), _) => policy.clone(),
                (None, Some(false)) => "none (no data)".to_owned(),
                (None, _) => "-".to_owned(),
            };
            let age = row.age_seconds.map_or_else(
                || "-".to_owned(),
                |seconds| format_interval(Duration::from_secs(seconds.unsigned_abs())),
            );
            [
                row.object.to_string(),
                row.kind.words().to_owned(),
                policy,
                time(row.last_refresh),
                age,
                time(row.next_due),
                state,
            ]
        })
        .collect();
    let mut widths = HEADERS.map(str::len);
    for cells in &table {
        for (width, cell) in widths.iter_mut().zip(cells) {
            *width = (*width).max(cell.chars().count());
        }
    }
    let line = |cells: [&str; 7]| {
        let mut text = String::new();
        for (i, cell) in cells.iter().enumerate() {
            if i + 1 == cells.len() {
                text.push_str(cell);
            } else {
                text.push_str(&format!("{cell:<width$}  ", width = widths[i]));
            }
        }
        text
    };
    writeln!(out, "{BOLD}{}{BOLD:#}", line(HEADERS))?;
    for (row, cells) in rows.iter().zip(&table) {
        let style = if row.last_error.is_some() {
            RED
        } else if row.sync != "in-sync" {
            YELLOW
        } else {
            Style::new()
        };
        let cells: [&str; 7] = std::array::from_fn(|i| cells[i].as_str());
        writeln!(out, "{style}{}{style:#}", line(cells))?;
    }
    writeln!(
        out,
        "{DIM}as of {} UTC{DIM:#}",
        now.format("%Y-%m-%d %H:%M:%S")
    )
}

/// The status rows as JSON: `{"format_version": 1, "objects": [...]}`, and `problems`
/// (each `file:line:col: message`) when no plan could be made.
pub fn status_json(
    rows: &[ObjectStatus],
    problems: &[String],
    out: &mut impl Write,
) -> io::Result<()> {
    let mut document = serde_json::json!({ "format_version": 1, "objects": rows });
    if !problems.is_empty() {
        document["problems"] = serde_json::json!(problems);
    }
    serde_json::to_writer_pretty(&mut *out, &document).map_err(io::Error::from)?;
    writeln!(out)
}

/// Why no plan could be made, one located line per problem.
pub fn plan_problems(error: &crate::plan::PlanError) -> Vec<String> {
    match error {
        crate::plan::PlanError::Declarations(problems) => problems
            .problems
            .iter()
            .map(|problem| match problem.location() {
                Some(location) => one_line(&format!("{location}: {}", problem.message)),
                None => one_line(&problem.message),
            })
            .collect(),
        other => vec![other.to_string()],
    }
}

/// Problems in the declarations on one line, for a log: `2 problems in the declarations:
/// views/a.kdl:3:5: unknown node `x`; …`.
pub fn problems_line(problems: &crate::project::Problems) -> String {
    let listed: Vec<String> = problems
        .problems
        .iter()
        .map(|problem| match problem.location() {
            Some(location) => format!("{location}: {}", problem.message),
            None => problem.message.clone(),
        })
        .collect();
    one_line(&format!("{problems}: {}", listed.join("; ")))
}

/// Text on one line, whatever line breaks and indentation it had.
pub fn one_line(text: &str) -> String {
    text.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// How `viewkeeper graph` draws the dependency graph.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GraphStyle {
    Text,
    Dot,
    Mermaid,
}

/// The declared objects and the relations they read, as text, Graphviz DOT or Mermaid.
/// Edges point from what is read to what reads it.
pub fn graph(project: &Project, style: GraphStyle, out: &mut impl Write) -> io::Result<()> {
    let graph = project.graph();
    let order = graph.topological_order().unwrap_or_default();
    // Everything named: declared objects, then the tables and other relations they read.
    let mut external: std::collections::BTreeSet<&QualifiedName> = Default::default();
    for declaration in project.declarations.values() {
        for dependency in declaration.reads() {
            if !project.declarations.contains_key(dependency) {
                external.insert(dependency);
            }
        }
    }
    let kind_of = |name: &QualifiedName| project.declarations.get(name).map(|d| d.kind);
    // (read, reader, inferred from the query rather than listed in `depends-on`)
    let edges: Vec<(&QualifiedName, &QualifiedName, bool)> = order
        .iter()
        .filter_map(|name| project.declarations.get(name))
        .flat_map(|declaration| {
            declaration.reads().map(move |dependency| {
                let inferred = declaration.is_inferred(dependency);
                (dependency, &declaration.name, inferred)
            })
        })
        .collect();
    match style {
        GraphStyle::Text => {
            for name in &order {
                let Some(declaration) = project.declarations.get(name) else {
                    continue;
                };
                writeln!(out, "{name} ({})", declaration.kind.words())?;
                for dependency in declaration.reads() {
                    let what = kind_of(dependency).map_or("relation", Kind::words);
                    let how = if declaration.is_inferred(dependency) {
                        ", inferred"
                    } else {
                        ""
                    };
                    writeln!(out, "  reads {dependency} ({what}{how})")?;
                }
            }
            Ok(())
        }
        GraphStyle::Dot => {
            writeln!(out, "digraph viewkeeper {{")?;
            writeln!(out, "    rankdir=LR;")?;
            writeln!(out, "    node [fontname=\"Helvetica\"];")?;
            for name in external {
                writeln!(out, "    {} [shape=cylinder];", dot_id(name))?;
            }
            for name in &order {
                let shape = match kind_of(name) {
                    Some(Kind::MaterializedView) => "box3d",
                    _ => "box",
                };
                writeln!(out, "    {} [shape={shape}];", dot_id(name))?;
            }
            for (from, to, inferred) in edges {
                let style = if inferred { " [style=dashed]" } else { "" };
                writeln!(out, "    {} -> {}{style};", dot_id(from), dot_id(to))?;
            }
            writeln!(out, "}}")
        }
        GraphStyle::Mermaid => {
            writeln!(out, "flowchart LR")?;
            let ids: std::collections::BTreeMap<&QualifiedName, String> = external
                .iter()
                .copied()
                .chain(order.iter())
                .enumerate()
                .map(|(i, name)| (name, format!("n{i}")))
                .collect();
            for (name, id) in &ids {
                let label = name.to_string().replace('"', "#quot;");
                let node = match kind_of(name) {
                    Some(Kind::MaterializedView) => format!("{id}[[\"{label}\"]]"),
                    Some(Kind::View) => format!("{id}[\"{label}\"]"),
                    None => format!("{id}[(\"{label}\")]"),
                };
                writeln!(out, "    {node}")?;
            }
            for (from, to, inferred) in edges {
                if let (Some(from), Some(to)) = (ids.get(from), ids.get(to)) {
                    let arrow = if inferred { "-.->" } else { "-->" };
                    writeln!(out, "    {from} {arrow} {to}")?;
                }
            }
            Ok(())
        }
    }
}

/// A DOT identifier: the name in double quotes, escaped.
fn dot_id(name: &QualifiedName) -> String {
    format!(
        "\"{}\"",
        name.to_string().replace('\\', "\\\\").replace('"', "\\\"")
    )
}

/// `reconcile --format json`: what was applied, what failed and what was left alone.
pub fn reconciled_json(
    reconciled: &crate::apply::Reconciled,
    out: &mut impl Write,
) -> io::Result<()> {
    #[derive(Serialize)]
    struct Failed<'r> {
        object: &'r crate::name::QualifiedName,
        error: &'r str,
        #[serde(skip_serializing_if = "Option::is_none")]
        location: Option<&'r str>,
    }
    #[derive(Serialize)]
    struct Skipped<'r> {
        object: &'r crate::name::QualifiedName,
        because: &'r crate::name::QualifiedName,
    }
    #[derive(Serialize)]
    struct Document<'r> {
        format_version: u32,
        applied: Vec<Action>,
        adopted: Vec<&'r crate::name::QualifiedName>,
        failed: Vec<Failed<'r>>,
        skipped: Vec<Skipped<'r>>,
    }
    let document = Document {
        format_version: PLAN_FORMAT_VERSION,
        applied: reconciled.plan.actions(),
        adopted: reconciled.plan.adopted(),
        failed: reconciled
            .failed
            .iter()
            .map(|(object, error)| Failed {
                object,
                error: &error.message,
                location: error.location.as_deref(),
            })
            .collect(),
        skipped: reconciled
            .skipped
            .iter()
            .map(|(object, because)| Skipped { object, because })
            .collect(),
    };
    serde_json::to_writer_pretty(&mut *out, &document).map_err(io::Error::from)?;
    writeln!(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn markdown_marks_lost_data_keeps_fences_closed_and_lists_warnings_last() {
        let object = QualifiedName::new("public", "old_summary");
        let step = |object: &QualifiedName, kind, change, reason: &str, op| crate::plan::Step {
            object: object.clone(),
            kind,
            change,
            reason: reason.to_owned(),
            op,
        };
        let quoted = QualifiedName::new("public", "quoted");
        let query = crate::plan::DeclaredQuery {
            text: "SELECT '```' AS fence".to_owned(),
            origin: None,
        };
        let plan = Plan {
            steps: vec![
                step(
                    &object,
                    Kind::MaterializedView,
                    Change::Drop,
                    "no longer declared",
                    crate::plan::Op::Drop {
                        destroys_data: true,
                    },
                ),
                step(
                    &quoted,
                    Kind::View,
                    Change::Replace,
                    "declared query changed",
                    crate::plan::Op::Drop {
                        destroys_data: false,
                    },
                ),
                step(
                    &quoted,
                    Kind::View,
                    Change::Replace,
                    "declared query changed",
                    crate::plan::Op::Create {
                        query,
                        options: Default::default(),
                        fill: crate::plan::Fill::None,
                        diff: Some("-SELECT 1\n+SELECT '```' AS fence\n".to_owned()),
                        in_place: None,
                    },
                ),
            ],
            warnings: vec![Warning {
                object: object.clone(),
                message: "reads public.t, but its depends-on does not list it".to_owned(),
                location: "views/a.kdl:3".to_owned(),
            }],
            ..Plan::default()
        };
        let mut out = Vec::new();
        plan_markdown(&plan, &mut out).expect("write");
        let markdown = String::from_utf8(out).expect("utf-8");
        assert!(
            markdown.contains(
                "| `public.old_summary` (materialized view) | drop | no longer declared<br>**destroys its data** | ACCESS EXCLUSIVE, brief |"
            ),
            "{markdown}"
        );
        assert!(markdown.contains("````diff\n"), "{markdown}");
        assert!(
            markdown.ends_with(
                "**Warnings**\n\n- `public.old_summary`: reads public.t, but its depends-on does not list it (views/a.kdl:3)\n"
            ),
            "{markdown}"
        );
    }
}
