//! `viewkeeper status`: for every managed object, whether it is in sync, and for
//! materialized views their refresh state. Pure: (project, catalog, plan, history) → rows.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use serde::Serialize;

use crate::catalog::Catalog;
use crate::name::QualifiedName;
use crate::plan::{Change, Plan};
use crate::project::{Kind, Project, RefreshTrigger};
use crate::refresh::schedule::{next_due, scheduled_views};
use crate::state::RefreshHistory;

/// One row of the status table.
/// The `sync` of an object that needs nothing.
pub const IN_SYNC: &str = "in-sync";

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ObjectStatus {
    pub object: QualifiedName,
    pub kind: Kind,
    /// `in-sync`, or the change reconcile would make.
    pub sync: String,
    /// Why it is not in sync.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub populated: Option<bool>,
    /// The refresh policy, in words.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub policy: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub last_refresh: Option<DateTime<Utc>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub age_seconds: Option<i64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub last_duration_ms: Option<i64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub next_due: Option<DateTime<Utc>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub last_error: Option<String>,
}

/// Rows for every declared object and every managed one no longer declared, by name.
/// `plan` is `None` when no plan could be made: every row is then `unknown`, and the caller
/// reports why once, not on every row.
pub fn status(
    project: &Project,
    catalog: &Catalog,
    plan: Option<&Plan>,
    history: &BTreeMap<QualifiedName, RefreshHistory>,
    now: DateTime<Utc>,
) -> Vec<ObjectStatus> {
    let mut names: Vec<(QualifiedName, Kind)> = project
        .declarations
        .values()
        .map(|d| (d.name.clone(), d.kind))
        .collect();
    if let Some(state) = &catalog.state {
        for (name, managed) in &state.objects {
            if !project.declarations.contains_key(name) {
                names.push((name.clone(), managed.kind));
            }
        }
    }
    names.sort();
    let scheduled: BTreeMap<QualifiedName, _> = scheduled_views(project, catalog)
        .into_iter()
        .map(|view| (view.target.name.clone(), view))
        .collect();
    let actions = plan.map(Plan::actions);
    names
        .into_iter()
        .map(|(name, kind)| {
            let (sync, reason) = match &actions {
                Some(actions) => {
                    // The first structural change wins over a refresh of the same object.
                    let action = actions
                        .iter()
                        .filter(|a| a.object == name)
                        .min_by_key(|a| a.change == Change::Refresh);
                    match action {
                        Some(action) => {
                            (action.change.verb().to_owned(), Some(action.reason.clone()))
                        }
                        None => (IN_SYNC.to_owned(), None),
                    }
                }
                None => ("unknown".to_owned(), None),
            };
            let own = history.get(&name);
            let policy = project
                .declarations
                .get(&name)
                .and_then(|d| d.refresh.as_ref())
                .map(|p| describe_policy(&p.trigger, p.concurrently));
            let next = scheduled.get(&name).and_then(|view| {
                let upstream = view
                    .upstream
                    .iter()
                    .filter_map(|u| history.get(u).and_then(|h| h.last_success))
                    .max();
                next_due(
                    &view.trigger,
                    own.cloned().as_ref().unwrap_or(&RefreshHistory::default()),
                    upstream,
                )
                .map(|due| due.max(now))
            });
            let last_refresh = own.and_then(|h| h.last_success);
            ObjectStatus {
                populated: catalog
                    .relations
                    .get(&name)
                    .filter(|r| r.kind == Kind::MaterializedView)
                    .map(|r| r.populated),
                policy,
                age_seconds: last_refresh.map(|at| (now - at).num_seconds().max(0)),
                last_refresh,
                last_duration_ms: own.and_then(|h| h.last_duration_ms),
                next_due: next,
                last_error: own.and_then(|h| h.last_error.clone()),
                object: name,
                kind,
                sync,
                reason,
            }
        })
        .collect()
}

fn describe_policy(trigger: &RefreshTrigger, concurrently: bool) -> String {
    let base = match trigger {
        RefreshTrigger::Every(interval) => {
            format!("every {}", crate::render::format_interval(*interval))
        }
        RefreshTrigger::Cron {
            expression,
            timezone: Some(zone),
        } => format!("cron {expression} ({zone})"),
        RefreshTrigger::Cron { expression, .. } => format!("cron {expression} (UTC)"),
        RefreshTrigger::WithUpstream => "with upstream".to_owned(),
    };
    if concurrently {
        format!("{base}, concurrently")
    } else {
        base
    }
}
