//! Refreshing materialized views in dependency order.
//!
//! Each refresh runs in its own transaction, so a long chain never holds every view's lock
//! until the last one ends; a failure skips what depends on the failed view and carries on
//! with the rest.

use std::collections::BTreeSet;
use std::time::{Duration, Instant, SystemTime};

use miette::Diagnostic;
use tokio_postgres::Client;

use crate::apply::dependency_names;
use crate::catalog::{self, Catalog};
use crate::db::describe;
use crate::graph::{Cycle, DependencyGraph};
use crate::name::QualifiedName;
use crate::project::{Kind, Project};
use crate::state;

/// One materialized view to refresh.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RefreshTarget {
    pub name: QualifiedName,
    /// `CONCURRENTLY`: declared so, and the view already holds data (PostgreSQL refuses a
    /// concurrent refresh of an unpopulated view).
    pub concurrently: bool,
}

/// Why nothing could be refreshed.
#[derive(Debug, thiserror::Error, Diagnostic)]
#[non_exhaustive]
pub enum RefreshError {
    #[error("`{0}` is not declared")]
    #[diagnostic(help("refresh takes the names of declared materialized views"))]
    NotDeclared(String),
    #[error("`{0}` is a view, not a materialized view")]
    #[diagnostic(help(
        "views hold no data; add --downstream to refresh the materialized views built on it"
    ))]
    NotMaterialized(String),
    #[error("`{0}` is not in the database")]
    #[diagnostic(help("run `viewkeeper reconcile` first"))]
    Missing(String),
    #[error(transparent)]
    Cycle(#[from] Cycle),
    #[error("cannot read the catalog: {0}")]
    Database(String),
    #[error("{failed} of {total} refreshes failed")]
    Failed { failed: usize, total: usize },
}

/// The outcome of one refresh, for progress output.
#[derive(Debug)]
pub enum Outcome {
    Refreshed(Duration),
    Failed(String),
    /// Not attempted because something it reads failed to refresh.
    Skipped(QualifiedName),
}

/// Which materialized views to refresh, dependencies first. Pure.
pub fn refresh_order(
    project: &Project,
    catalog: &Catalog,
    requested: &[QualifiedName],
    downstream: bool,
) -> Result<Vec<RefreshTarget>, RefreshError> {
    let graph = work_graph(project, catalog);
    for name in requested {
        let declaration = project
            .declarations
            .get(name)
            .ok_or_else(|| RefreshError::NotDeclared(name.to_string()))?;
        if declaration.kind != Kind::MaterializedView && !downstream {
            return Err(RefreshError::NotMaterialized(name.to_string()));
        }
    }
    let selected: BTreeSet<QualifiedName> = if requested.is_empty() {
        project.declarations.keys().cloned().collect()
    } else if downstream {
        graph.with_dependents(requested)
    } else {
        requested.iter().cloned().collect()
    };
    let mut targets = Vec::new();
    for name in graph.topological_order()? {
        let Some(declaration) = project.declarations.get(&name) else {
            continue;
        };
        if !selected.contains(&name) || declaration.kind != Kind::MaterializedView {
            continue;
        }
        let Some(live) = catalog.relations.get(&name) else {
            return Err(RefreshError::Missing(name.to_string()));
        };
        let declared_concurrently = declaration
            .refresh
            .as_ref()
            .is_some_and(|policy| policy.concurrently);
        targets.push(RefreshTarget {
            name,
            concurrently: declared_concurrently && live.populated,
        });
    }
    Ok(targets)
}

/// Declared edges plus what the catalog shows each view reads.
fn work_graph(project: &Project, catalog: &Catalog) -> DependencyGraph {
    let mut graph = project.graph();
    for (reader, reads) in &catalog.reads {
        if graph.contains(reader) {
            for read in reads {
                if graph.contains(read) && read != reader {
                    graph.add_edge(read, reader);
                }
            }
        }
    }
    graph
}

/// Refreshes `requested` (all declared materialized views when empty), each in its own
/// transaction, recording each in the refresh history when the state schema exists.
pub async fn refresh(
    client: &mut Client,
    project: &Project,
    requested: &[QualifiedName],
    downstream: bool,
    mut on_done: impl FnMut(&RefreshTarget, &Outcome),
) -> Result<usize, RefreshError> {
    let schema = &project.config.state_schema;
    let catalog = catalog::introspect(&*client, &dependency_names(project), schema)
        .await
        .map_err(|error| RefreshError::Database(describe(&error)))?;
    let targets = refresh_order(project, &catalog, requested, downstream)?;
    let graph = work_graph(project, &catalog);
    let mut failed: Vec<QualifiedName> = Vec::new();
    for target in &targets {
        let blocked_by = failed
            .iter()
            .find(|f| graph.with_dependents([*f]).contains(&target.name))
            .cloned();
        if let Some(upstream) = blocked_by {
            on_done(target, &Outcome::Skipped(upstream));
            failed.push(target.name.clone());
            continue;
        }
        let sql = format!(
            "REFRESH MATERIALIZED VIEW {}{}",
            if target.concurrently {
                "CONCURRENTLY "
            } else {
                ""
            },
            target.name.to_sql()
        );
        let started_at = SystemTime::now();
        let started = Instant::now();
        let result = client.batch_execute(&sql).await;
        let took = started.elapsed();
        let error = result.err().map(|error| describe(&error));
        if catalog.state.is_some() {
            // History is best effort: a refresh that worked must not be reported as failed.
            if let Err(log_error) = state::log_refresh(
                &*client,
                schema,
                &target.name,
                started_at,
                took,
                target.concurrently,
                error.as_deref(),
            )
            .await
            {
                tracing::warn!(
                    "cannot record the refresh of {}: {}",
                    target.name,
                    describe(&log_error)
                );
            }
        }
        match error {
            None => on_done(target, &Outcome::Refreshed(took)),
            Some(message) => {
                on_done(target, &Outcome::Failed(message));
                failed.push(target.name.clone());
            }
        }
    }
    if failed.is_empty() {
        Ok(targets.len())
    } else {
        Err(RefreshError::Failed {
            failed: failed.len(),
            total: targets.len(),
        })
    }
}
