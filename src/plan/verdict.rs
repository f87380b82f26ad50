//! What happens to each declared object: create, replace, replace in place, rebuild,
//! adopt or keep, decided from the declaration, the live catalog and the state. Pure.

use std::collections::{BTreeMap, BTreeSet};

use similar::TextDiff;

use crate::catalog::{Catalog, Relation};
use crate::graph::DependencyGraph;
use crate::name::QualifiedName;
use crate::objects::{ManagedObject, State};
use crate::project::{Declaration, Kind, Problem, Problems, Project};

use super::{Blocker, Change, PlanError};

/// Where a declared object stands against the database.
#[derive(Debug, Clone)]
pub(super) enum Status {
    Create {
        reason: String,
    },
    Replace {
        reason: String,
        diff: Option<String>,
    },
    /// A plain view whose new columns extend its live ones: `CREATE OR REPLACE VIEW`.
    ReplaceInPlace {
        reason: String,
        diff: Option<String>,
        /// The columns the new query appends.
        added: Vec<String>,
    },
    Rebuild {
        because: QualifiedName,
    },
    Keep,
    /// Exists with a query equivalent to the declared one: recorded, not rebuilt.
    Adopt,
}

/// Where each declared object stands against the database, before rebuilds are marked.
pub(super) fn statuses(
    project: &Project,
    catalog: &Catalog,
    state: &State,
) -> BTreeMap<QualifiedName, Status> {
    project
        .declarations
        .values()
        .map(|declaration| {
            let live = catalog.relations.get(&declaration.name);
            let status = status(
                declaration,
                live,
                state.objects.get(&declaration.name),
                catalog.normalised.get(&declaration.name),
                catalog.drops.get(&declaration.name),
            );
            let status = in_place_if_compatible(
                status,
                declaration,
                live,
                catalog.compiled_columns.get(&declaration.name),
            );
            (declaration.name.clone(), status)
        })
        .collect()
}

/// Never lose silently what a rebuild cannot bring back.
pub(super) fn check_losses(
    catalog: &Catalog,
    rebuilt: &BTreeSet<QualifiedName>,
) -> Result<(), PlanError> {
    let losses: Vec<(QualifiedName, Vec<String>)> = rebuilt
        .iter()
        .filter_map(|name| {
            let live = catalog.relations.get(name)?;
            (!live.undeclarable.is_empty()).then(|| (name.clone(), live.undeclarable.clone()))
        })
        .collect();
    if losses.is_empty() {
        Ok(())
    } else {
        Err(PlanError::WouldLose(losses))
    }
}

/// Declared queries worth asking PostgreSQL to normalise: those of live objects viewkeeper
/// does not manage yet, or whose declared text changed, where an equivalent query means the
/// object can be adopted instead of rebuilt. Pure.
pub fn normalisation_candidates(
    project: &Project,
    catalog: &Catalog,
) -> Vec<(QualifiedName, String)> {
    let managed = catalog.state.as_ref().map(|state| &state.objects);
    project
        .declarations
        .values()
        .filter(|declaration| {
            catalog
                .relations
                .get(&declaration.name)
                .is_some_and(|live| live.kind == declaration.kind)
        })
        .filter(|declaration| {
            let live = catalog.relations.get(&declaration.name);
            managed
                .and_then(|objects| objects.get(&declaration.name))
                .is_none_or(|managed| {
                    managed.query_sha256 != declaration.query_sha256
                        // Drifted: perhaps only PostgreSQL's printing changed (a major
                        // upgrade, another search_path), which is no reason to rebuild.
                        || live.is_some_and(|live| live.definition != managed.applied_definition)
                })
        })
        .map(|declaration| (declaration.name.clone(), declaration.query.text.clone()))
        .collect()
}

/// A `depends-on` must name a declared object or a relation that exists.
pub(super) fn check_dependencies_exist(
    project: &Project,
    catalog: &Catalog,
) -> Result<(), Problems> {
    let mut problems = Vec::new();
    for declaration in project.declarations.values() {
        for dependency in &declaration.depends_on {
            if !project.declarations.contains_key(&dependency.name)
                && !catalog.has_relation(&dependency.name)
            {
                problems.push(
                    Problem::at(
                        &declaration.file,
                        dependency.span,
                        format!(
                            "`{}` depends on `{}`, which is neither declared nor in the database",
                            declaration.name, dependency.name
                        ),
                        "unknown relation",
                    )
                    .with_help(
                        "check the name and schema, or run the migration that creates it first",
                    ),
                );
            }
        }
    }
    if problems.is_empty() {
        Ok(())
    } else {
        Err(Problems::new(problems))
    }
}

pub(super) fn status(
    declaration: &Declaration,
    live: Option<&Relation>,
    managed: Option<&ManagedObject>,
    normalised: Option<&String>,
    dropped: Option<&crate::guard::DropRecord>,
) -> Status {
    let Some(live) = live else {
        let reason = match (managed, dropped) {
            // The guard saw it go, after viewkeeper last applied it.
            (Some(managed), Some(drop)) if drop.dropped_at >= managed.applied_at => {
                format!("not in the database: {}", drop.describe())
            }
            (Some(_), _) => "not in the database: dropped outside viewkeeper".to_owned(),
            (None, _) => "new declaration".to_owned(),
        };
        return Status::Create { reason };
    };
    if live.kind != declaration.kind {
        return Status::Replace {
            reason: format!(
                "is a {} in the database but declared as a {}",
                live.kind.words(),
                declaration.kind.words()
            ),
            diff: None,
        };
    }
    // PostgreSQL reads the declared query exactly as the live one: nothing to rebuild.
    let equivalent = normalised.is_some_and(|text| *text == live.definition);
    let Some(managed) = managed else {
        if equivalent {
            return Status::Adopt;
        }
        return Status::Replace {
            reason: "exists, but viewkeeper did not create it, and its query differs from the \
                     declaration: replacing it"
                .to_owned(),
            diff: None,
        };
    };
    let changed = managed.query_sha256 != declaration.query_sha256;
    let drifted = live.definition != managed.applied_definition;
    if (changed || drifted) && equivalent {
        return Status::Adopt;
    }
    if changed {
        return Status::Replace {
            reason: "declared query changed".to_owned(),
            diff: Some(unified_diff(
                &managed.query,
                &declaration.query.text,
                &format!("{} (applied)", declaration.name),
                &format!("{} (declared)", declaration.name),
            )),
        };
    }
    if drifted {
        return Status::Replace {
            reason: "the live definition drifted from what viewkeeper applied".to_owned(),
            // In the direction of the change reconcile makes: `+` is what it brings back.
            diff: Some(unified_diff(
                &live.definition,
                &managed.applied_definition,
                &format!("{} (live)", declaration.name),
                &format!("{} (after reconcile)", declaration.name),
            )),
        };
    }
    Status::Keep
}

/// A plain view to replace whose new columns keep every live one (same name, type and
/// collation, same order) and only append: PostgreSQL replaces it in place, so it keeps
/// its OID, grants, comments and dependents. The new columns are what PostgreSQL made of
/// the declared query (`compiled`), never a reading of the SQL.
pub(super) fn in_place_if_compatible(
    status: Status,
    declaration: &Declaration,
    live: Option<&Relation>,
    compiled: Option<&Vec<String>>,
) -> Status {
    let (Status::Replace { reason, diff }, Some(live), Some(compiled)) = (&status, live, compiled)
    else {
        return status;
    };
    let compatible = declaration.kind == Kind::View
        && live.kind == Kind::View
        && !live.columns.is_empty()
        && compiled.starts_with(&live.columns);
    if !compatible {
        return status;
    }
    let added = compiled[live.columns.len()..]
        .iter()
        .map(|column| column_words(column))
        .collect();
    Status::ReplaceInPlace {
        reason: reason.clone(),
        diff: diff.clone(),
        added,
    }
}

/// `name type` of a catalog column (`name type collation-oid`).
fn column_words(column: &str) -> String {
    column
        .rsplit_once(' ')
        .map_or(column, |(words, _)| words)
        .to_owned()
}

/// Every declared object that depends, transitively, on a replaced one is rebuilt, and says
/// which of its direct dependencies made it so.
pub(super) fn mark_rebuilds(
    graph: &DependencyGraph,
    statuses: &mut BTreeMap<QualifiedName, Status>,
) {
    let replaced: Vec<QualifiedName> = statuses
        .iter()
        .filter(|(_, status)| matches!(status, Status::Replace { .. }))
        .map(|(name, _)| name.clone())
        .collect();
    let affected = graph.with_dependents(&replaced);
    for name in &affected {
        // Its upstream is dropped, and PostgreSQL drops no view with dependents: a view
        // that could have been replaced in place is rebuilt after all.
        if let Some(Status::ReplaceInPlace { reason, diff, .. }) = statuses.get(name) {
            let status = Status::Replace {
                reason: reason.clone(),
                diff: diff.clone(),
            };
            statuses.insert(name.clone(), status);
            continue;
        }
        if !matches!(statuses.get(name), Some(Status::Keep | Status::Adopt)) {
            continue;
        }
        if let Some(because) = graph
            .dependencies(name)
            .into_iter()
            .find(|dependency| affected.contains(dependency))
        {
            statuses.insert(name.clone(), Status::Rebuild { because });
        }
    }
}

/// Refuses to drop anything that a relation viewkeeper will not rebuild still reads.
pub(super) fn check_blockers(
    catalog: &Catalog,
    declarations: &indexmap::IndexMap<QualifiedName, Declaration>,
    statuses: &BTreeMap<QualifiedName, Status>,
    rebuilt: &BTreeSet<QualifiedName>,
    to_drop: &BTreeSet<QualifiedName>,
) -> Result<(), PlanError> {
    let mut blockers = Vec::new();
    for (object, change) in rebuilt
        .iter()
        .map(|name| {
            let change = match statuses.get(name) {
                Some(Status::Rebuild { .. }) => Change::Rebuild,
                _ => Change::Replace,
            };
            (name, change)
        })
        .chain(to_drop.iter().map(|name| (name, Change::Drop)))
    {
        for dependent in catalog.readers_of(object) {
            if rebuilt.contains(dependent) || to_drop.contains(dependent) {
                continue;
            }
            let dependent_kind = catalog
                .relations
                .get(dependent)
                .map_or(Kind::View, |r| r.kind);
            blockers.push(Blocker {
                object: object.clone(),
                change,
                dependent: dependent.clone(),
                dependent_kind,
                dependent_declared: declarations.contains_key(dependent),
            });
        }
    }
    if blockers.is_empty() {
        Ok(())
    } else {
        Err(PlanError::Blocked(blockers))
    }
}

/// Unified diff of two texts, line by line.
fn unified_diff(old: &str, new: &str, old_label: &str, new_label: &str) -> String {
    let old = format!("{old}\n");
    let new = format!("{new}\n");
    TextDiff::configure()
        .algorithm(similar::Algorithm::Patience)
        .diff_lines(&old, &new)
        .unified_diff()
        .context_radius(3)
        .header(old_label, new_label)
        .to_string()
}
