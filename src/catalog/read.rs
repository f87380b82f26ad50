//! Reading the catalog for planning: introspection, then PostgreSQL's own reading of the
//! declared queries that might be adopted as they are (the normaliser).

use std::collections::BTreeMap;

use tokio_postgres::Transaction;

use super::Catalog;
use crate::db::describe;
use crate::name::QualifiedName;
use crate::objects::Kind;
use crate::project::Project;

/// Reads the catalog for planning: introspection, then PostgreSQL's own reading of the
/// declared queries that might be adopted as they are, inside a savepoint that is rolled
/// back so nothing is left behind. Constant queries; up to three more when there are
/// candidates.
pub async fn read_catalog(
    transaction: &mut Transaction<'_>,
    project: &Project,
) -> Result<Catalog, tokio_postgres::Error> {
    let live = super::read_live(&*transaction, &project.config.state_schema).await?;
    complete(transaction, live, project).await
}

/// [`read_catalog`] after [`super::read_live`]: what the declarations name, the sizes of
/// what may be rebuilt side by side, the normaliser.
pub async fn complete(
    transaction: &mut Transaction<'_>,
    mut catalog: Catalog,
    project: &Project,
) -> Result<Catalog, tokio_postgres::Error> {
    super::look_up_named(&*transaction, &mut catalog, &dependency_names(project)).await?;
    let rebuilt = may_rebuild_side_by_side(project, &catalog);
    super::read_sizes(&*transaction, &mut catalog, &rebuilt).await?;
    let candidates = crate::plan::normalisation_candidates(project, &catalog);
    // A view replaced in place must keep every live column: read those of the views whose
    // declared query is compiled next.
    let views: Vec<&QualifiedName> = candidates
        .iter()
        .map(|(name, _)| name)
        .filter(|name| {
            catalog
                .relations
                .get(*name)
                .is_some_and(|live| live.kind == Kind::View)
        })
        .collect();
    super::read_columns(&*transaction, &mut catalog, &views).await?;
    if !candidates.is_empty() {
        let savepoint = transaction.savepoint("viewkeeper_normalise").await?;
        // Normalising needs temporary objects; without that right (or on a read-only
        // replica) objects are simply not adopted, and the plan says what it would do.
        match normalise_both_sides(&savepoint, &catalog, &candidates).await {
            Ok((normalised, columns)) => {
                catalog.normalised = normalised;
                catalog.compiled_columns = columns;
            }
            // A wait for a lock on what a declared query reads is bounded, and reported
            // with who holds it, like any other wait.
            Err(error) if crate::waits::timed_out(&error) => return Err(error),
            Err(error) => tracing::info!(
                "cannot compare declared queries with live ones, so nothing is adopted: {}",
                describe(&error)
            ),
        }
        savepoint.rollback().await?;
    }
    Ok(catalog)
}

/// The declared materialized views a plan may rebuild side by side, whose size it shows:
/// live materialized views that are not managed, or whose declared query or live definition
/// differs from what was applied (a superset of those the planner replaces; a rebuild
/// forced by an upstream change is never side by side).
fn may_rebuild_side_by_side<'p>(project: &'p Project, catalog: &Catalog) -> Vec<&'p QualifiedName> {
    let managed = |name| {
        catalog
            .state
            .as_ref()
            .and_then(|state| state.objects.get(name))
    };
    project
        .declarations
        .values()
        .filter(|declaration| declaration.kind == Kind::MaterializedView)
        .filter(|declaration| {
            let Some(live) = catalog.relations.get(&declaration.name) else {
                return false;
            };
            live.kind == Kind::MaterializedView
                && managed(&declaration.name).is_none_or(|managed| {
                    managed.query_sha256 != declaration.query_sha256
                        || live.definition != managed.applied_definition
                })
        })
        .map(|declaration| &declaration.name)
        .collect()
}

/// How PostgreSQL prints each candidate's declared query. `pg_get_viewdef` is not always a
/// fixed point (a `NATURAL JOIN` with no common column prints as `ON TRUE`, which prints
/// back as `ON (true)`), so where the declared query prints differently from the live
/// definition, the live definition is put through the same round trip; when both sides
/// then print the same, the declared query counts as the live one. Also gives the columns of
/// each compiled declared query.
async fn normalise_both_sides(
    client: &Transaction<'_>,
    catalog: &Catalog,
    candidates: &[(QualifiedName, String)],
) -> Result<
    (
        BTreeMap<QualifiedName, String>,
        BTreeMap<QualifiedName, Vec<String>>,
    ),
    tokio_postgres::Error,
> {
    let compiled = super::read_back(client, candidates).await?;
    let mut columns = BTreeMap::new();
    let mut normalised = BTreeMap::new();
    for (name, compiled) in compiled {
        columns.insert(name.clone(), compiled.columns);
        normalised.insert(name, compiled.definition);
    }
    let differing: Vec<_> = normalised
        .iter()
        .filter_map(|(name, declared)| {
            let live = catalog.relations.get(name)?;
            (*declared != live.definition).then(|| (name.clone(), live.definition.clone()))
        })
        .collect();
    for (name, live) in super::normalise(client, &differing).await? {
        if normalised.get(&name) == Some(&live)
            && let Some(relation) = catalog.relations.get(&name)
        {
            normalised.insert(name, relation.definition.clone());
        }
    }
    Ok((normalised, columns))
}

/// The relations `depends-on` entries name that are not declared, for the catalog to look
/// up whatever their kind (a declared one is found among the views, or is to be created).
pub fn dependency_names(project: &Project) -> Vec<QualifiedName> {
    let mut names: Vec<_> = project
        .declarations
        .values()
        .flat_map(|declaration| &declaration.depends_on)
        .map(|dependency| &dependency.name)
        .filter(|name| !project.declarations.contains_key(*name))
        .cloned()
        .collect();
    names.sort();
    names.dedup();
    names
}
