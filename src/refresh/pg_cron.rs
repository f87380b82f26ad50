//! `viewkeeper schedule --emit pg-cron`: the refresh policies as SQL that registers them
//! with pg_cron, for teams that schedule inside the database. Pure.
//!
//! A view refreshed `with-upstream` joins the job of each scheduled view it reads: the job
//! calls a procedure that refreshes the chain in order and commits between steps. A plain
//! multi-statement job string would run as one transaction and hold every view's lock until
//! the last refresh ended.

use std::time::Duration;

use miette::Diagnostic;

use crate::graph::DependencyGraph;
use crate::name::QualifiedName;
use crate::project::{Kind, Project, RefreshTrigger};
use crate::sql::pg_cron as statements;

/// Job names start with this, so viewkeeper's jobs can be told apart and replaced.
pub const JOB_PREFIX: &str = "viewkeeper:";

/// A policy pg_cron cannot run as declared.
#[derive(Debug, thiserror::Error, Diagnostic)]
#[error("{view}: {message}")]
#[diagnostic(code(viewkeeper::pg_cron))]
pub struct PgCronError {
    pub view: QualifiedName,
    pub message: String,
    #[help]
    pub help: Option<String>,
}

/// The SQL for every policy, or the first policy pg_cron cannot express.
pub fn emit(project: &Project) -> Result<String, PgCronError> {
    let graph = project.graph();
    let order = graph.topological_order().unwrap_or_default();
    let materialized = |name: &QualifiedName| {
        project
            .declarations
            .get(name)
            .filter(|d| d.kind == Kind::MaterializedView)
    };
    let schema = &project.config.state_schema;
    let mut sql = String::from(statements::SCRIPT_START);
    // Where the pg_cron version check goes, once we know whether a schedule needs it.
    let check_at = sql.len();
    sql.push_str(&statements::unschedule_jobs(JOB_PREFIX));
    let mut procedures = false;
    let mut needs_seconds: Option<QualifiedName> = None;
    for name in &order {
        let Some(declaration) = materialized(name) else {
            continue;
        };
        let Some(policy) = &declaration.refresh else {
            continue;
        };
        let schedule = match &policy.trigger {
            RefreshTrigger::WithUpstream => continue,
            RefreshTrigger::Every(interval) => {
                let schedule = every_to_cron(name, *interval)?;
                if interval.as_secs() < 60 && needs_seconds.is_none() {
                    needs_seconds = Some(name.clone());
                }
                schedule
            }
            RefreshTrigger::Cron {
                expression,
                timezone,
            } => {
                if let Some(zone) = timezone.filter(|zone| *zone != chrono_tz::UTC) {
                    return Err(PgCronError {
                        view: name.clone(),
                        message: format!("pg_cron cannot run a schedule in time zone {zone}"),
                        help: Some(
                            "pg_cron uses its own cron.timezone setting (GMT by default): \
                             write the expression in that zone and drop timezone="
                                .to_owned(),
                        ),
                    });
                }
                expression.clone()
            }
        };
        let chain = chain_of(&graph, &order, name, project);
        let command = if chain.len() == 1 {
            refresh_statement(project, name)
        } else {
            if !procedures {
                sql.push_str(&statements::create_schema(schema));
                procedures = true;
            }
            let procedure = statements::procedure(schema, &procedure_name(name));
            let steps: Vec<String> = chain
                .iter()
                .map(|step| refresh_statement(project, step))
                .collect();
            sql.push_str(&statements::create_procedure(&procedure, &steps));
            statements::call(&procedure)
        };
        sql.push_str(&statements::schedule_job(
            &format!("{JOB_PREFIX}{name}"),
            &schedule,
            &command,
        ));
    }
    sql.push_str(statements::SCRIPT_END);
    if let Some(view) = needs_seconds {
        sql.insert_str(check_at, &seconds_version_check(&view));
    }
    Ok(sql)
}

/// The first pg_cron release that accepts `'N seconds'` schedules; older ones reject them
/// and the whole script would roll back with a bare "invalid schedule".
const SECONDS_SINCE: &str = "1.5";

/// A DO block, run before any change, that stops the script with a clear message when the
/// installed pg_cron is older than [`SECONDS_SINCE`].
fn seconds_version_check(view: &QualifiedName) -> String {
    let message = format!(
        "{view} refreshes more often than once a minute, which needs pg_cron {SECONDS_SINCE} or \
         newer; installed: %. Upgrade pg_cron (ALTER EXTENSION pg_cron UPDATE) or declare \
         every=\"1m\" or longer"
    );
    statements::require_version(SECONDS_SINCE, &message)
}

/// `root`, then every `with-upstream` view that reads it (directly, through views, or
/// through other chained views), in dependency order.
fn chain_of(
    graph: &DependencyGraph,
    order: &[QualifiedName],
    root: &QualifiedName,
    project: &Project,
) -> Vec<QualifiedName> {
    let downstream = graph.with_dependents([root]);
    let mut chain = vec![root.clone()];
    for name in order {
        if name == root || !downstream.contains(name) {
            continue;
        }
        let chained = project.declarations.get(name).is_some_and(|d| {
            d.kind == Kind::MaterializedView
                && d.refresh
                    .as_ref()
                    .is_some_and(|p| p.trigger == RefreshTrigger::WithUpstream)
        });
        // Only views reached through the chain itself, not through another scheduled view.
        let reached = graph
            .dependencies(name)
            .iter()
            .any(|dependency| graph.with_dependencies([dependency]).contains(root));
        if chained && reached {
            chain.push(name.clone());
        }
    }
    chain
}

fn refresh_statement(project: &Project, name: &QualifiedName) -> String {
    let concurrently = project
        .declarations
        .get(name)
        .and_then(|d| d.refresh.as_ref())
        .is_some_and(|p| p.concurrently);
    crate::sql::ddl::refresh(name, concurrently)
}

/// `refresh_public_sales_summary_1a2b3c4d`: readable, within PostgreSQL's 63-byte limit,
/// and distinct for every view (`a_b.c` and `a.b_c`, or two long names with one prefix,
/// differ in the hash).
fn procedure_name(name: &QualifiedName) -> String {
    let hash = crate::objects::query_hash(Kind::MaterializedView, &name.to_sql());
    let mut readable = format!("refresh_{}_{}", name.schema, name.name);
    let limit = 63 - 9;
    while readable.len() > limit {
        readable.pop();
    }
    format!("{readable}_{}", &hash[..8])
}

/// An interval as a pg_cron schedule: pg_cron knows "N seconds" (1–59) and five-field cron,
/// so intervals must divide a minute, an hour or a day.
fn every_to_cron(view: &QualifiedName, interval: Duration) -> Result<String, PgCronError> {
    let seconds = interval.as_secs();
    let refuse = || PgCronError {
        view: view.clone(),
        message: format!(
            "every=\"{}\" cannot be expressed by pg_cron",
            humantime::format_duration(interval)
        ),
        help: Some(
            "pg_cron runs every 1–59 seconds, every N minutes or hours that divide an hour or a \
             day, or daily: pick such an interval, or write cron=\"…\""
                .to_owned(),
        ),
    };
    if interval.subsec_nanos() != 0 || seconds == 0 {
        return Err(refuse());
    }
    let schedule = match seconds {
        1..=59 => format!("{seconds} seconds"),
        60 => "* * * * *".to_owned(),
        s if s % 60 == 0 && s < 3600 && 60 % (s / 60) == 0 => format!("*/{} * * * *", s / 60),
        3600 => "0 * * * *".to_owned(),
        s if s % 3600 == 0 && s < 86_400 && 24 % (s / 3600) == 0 => {
            format!("0 */{} * * *", s / 3600)
        }
        86_400 => "0 0 * * *".to_owned(),
        _ => return Err(refuse()),
    };
    Ok(schedule)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cron(seconds: u64) -> Result<String, String> {
        every_to_cron(
            &QualifiedName::new("public", "v"),
            Duration::from_secs(seconds),
        )
        .map_err(|error| error.message)
    }

    #[test]
    fn converts_intervals_pg_cron_can_express() {
        assert_eq!(cron(30), Ok("30 seconds".to_owned()));
        assert_eq!(cron(60), Ok("* * * * *".to_owned()));
        assert_eq!(cron(15 * 60), Ok("*/15 * * * *".to_owned()));
        assert_eq!(cron(3600), Ok("0 * * * *".to_owned()));
        assert_eq!(cron(6 * 3600), Ok("0 */6 * * *".to_owned()));
        assert_eq!(cron(86_400), Ok("0 0 * * *".to_owned()));
    }

    #[test]
    fn the_version_check_names_the_view_and_the_release() {
        let check = seconds_version_check(&QualifiedName::new("public", "v"));
        assert!(check.starts_with("DO $viewkeeper$"), "{check}");
        assert!(check.contains("needs pg_cron 1.5 or newer"), "{check}");
        assert!(check.contains("public.v"), "{check}");
    }

    #[test]
    fn procedure_names_are_distinct_and_short() {
        let a = procedure_name(&QualifiedName::new("a_b", "c"));
        let b = procedure_name(&QualifiedName::new("a", "b_c"));
        assert_ne!(a, b);
        let long = "x".repeat(60);
        let c = procedure_name(&QualifiedName::new("public", format!("{long}1")));
        let d = procedure_name(&QualifiedName::new("public", format!("{long}2")));
        assert_ne!(c, d);
        assert!(c.len() <= 63);
    }

    #[test]
    fn refuses_intervals_pg_cron_cannot_express() {
        assert!(cron(45 * 60).is_err());
        assert!(cron(90).is_err());
        assert!(cron(5 * 3600).is_err());
        assert!(cron(2 * 86_400).is_err());
    }
}
