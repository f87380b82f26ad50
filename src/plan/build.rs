//! The plans: reconcile's ([`plan`]), `run --drop-first`'s ([`drop_managed`]) and
//! healing's ([`restore_missing`]), each one ordered list of steps. Pure.

use std::collections::{BTreeMap, BTreeSet};

use crate::catalog::Catalog;
use crate::graph::DependencyGraph;
use crate::name::QualifiedName;
use crate::objects::{BuiltIndex, ManagedObject, Record, SideBuild, State};
use crate::project::{Declaration, Kind, Project, Rebuild};
use crate::sql::ddl;

use super::verdict::{self, Status};
use super::{
    Blocker, Change, DeclaredQuery, Fill, IndexSource, Op, Plan, PlanError, Step, Warning,
    attributes,
};

/// Computes reconcile's plan. Pure: the same project and catalog always give the same plan.
pub fn plan(project: &Project, catalog: &Catalog) -> Result<Plan, PlanError> {
    let empty = State::default();
    let state = catalog.state.as_ref().unwrap_or(&empty);
    verdict::check_dependencies_exist(project, catalog)?;
    let mut statuses = verdict::statuses(project, catalog, state);

    // Managed before, no longer declared: dropped if still there, forgotten either way.
    let undeclared: Vec<&ManagedObject> = state
        .objects
        .values()
        .filter(|managed| !project.declarations.contains_key(&managed.name))
        .collect();
    let to_drop: BTreeSet<QualifiedName> = undeclared
        .iter()
        .filter(|managed| catalog.relations.contains_key(&managed.name))
        .map(|managed| managed.name.clone())
        .collect();
    let graphs = Graphs::new(project, catalog, &to_drop, &mut statuses)?;

    let rebuilt: BTreeSet<QualifiedName> = statuses
        .iter()
        .filter(|(name, status)| {
            matches!(status, Status::Replace { .. } | Status::Rebuild { .. })
                && catalog.relations.contains_key(*name)
        })
        .map(|(name, _)| name.clone())
        .collect();
    verdict::check_blockers(
        catalog,
        &project.declarations,
        &statuses,
        &rebuilt,
        &to_drop,
    )?;
    verdict::check_losses(catalog, &rebuilt)?;

    let mut builder = Builder::new(project, catalog);
    builder.drops(&graphs.drop_order, state, &to_drop, &rebuilt);
    for managed in undeclared.iter().filter(|m| !to_drop.contains(&m.name)) {
        let forget = Head::new(
            &managed.name,
            managed.kind,
            Change::Forget,
            "no longer declared, and already gone from the database",
        );
        builder.push(&forget, Op::Forget);
    }
    builder.creates(&graphs, &statuses, state);
    builder.drop_unused_builds(state);
    Ok(builder.finish())
}

/// The three views of the dependencies a plan needs.
struct Graphs {
    /// Drops follow what the database holds now: only the catalog's edges. Empty when
    /// nothing is dropped.
    drop_order: Vec<QualifiedName>,
    /// Creates follow the declared edges, plus the live edges of views whose query is not
    /// changing (their reads stay true), so reversing a dependency is not a cycle.
    create_graph: DependencyGraph,
    create_order: Vec<QualifiedName>,
}

impl Graphs {
    /// Also marks for rebuild every declared object that depends on a replaced one, along
    /// both the declared and the live edges.
    fn new(
        project: &Project,
        catalog: &Catalog,
        to_drop: &BTreeSet<QualifiedName>,
        statuses: &mut BTreeMap<QualifiedName, Status>,
    ) -> Result<Graphs, PlanError> {
        let declarations = &project.declarations;
        let declared_graph = project.graph();
        let with_live_reads = |graph: DependencyGraph| {
            let mut graph = graph;
            for name in declarations.keys().chain(to_drop) {
                graph.add_node(name);
            }
            catalog.add_reads(&mut graph);
            graph
        };
        // Only a replaced object makes others rebuild, and the drop order matters only when
        // something is dropped: a plan that replaces nothing (most of them) skips both graphs.
        if statuses
            .values()
            .any(|status| matches!(status, Status::Replace { .. }))
        {
            verdict::mark_rebuilds(&with_live_reads(declared_graph.clone()), statuses);
        }
        let drops_something = !to_drop.is_empty()
            || statuses
                .values()
                .any(|status| matches!(status, Status::Replace { .. } | Status::Rebuild { .. }));
        let drop_order = if drops_something {
            with_live_reads(DependencyGraph::default()).topological_order()?
        } else {
            Vec::new()
        };

        let mut create_graph = declared_graph;
        for (reader, reads) in &catalog.reads {
            if matches!(
                statuses.get(reader),
                Some(Status::Keep | Status::Rebuild { .. })
            ) {
                // The create graph's nodes are the declared objects: a read of anything
                // else is no edge.
                for read in reads.iter().filter(|read| *read != reader) {
                    create_graph.add_edge_between_nodes(read, reader);
                }
            }
        }
        Ok(Graphs {
            drop_order,
            create_order: create_graph.topological_order()?,
            create_graph,
        })
    }
}

/// The object, change and reason the next steps belong to.
struct Head {
    object: QualifiedName,
    kind: Kind,
    change: Change,
    reason: String,
}

impl Head {
    fn new(object: &QualifiedName, kind: Kind, change: Change, reason: &str) -> Head {
        Head {
            object: object.clone(),
            kind,
            change,
            reason: reason.to_owned(),
        }
    }
}

/// Collects steps in planning order; [`Builder::finish`] puts them in execution order.
struct Builder<'a> {
    project: &'a Project,
    catalog: &'a Catalog,
    steps: Vec<Step>,
    warnings: Vec<Warning>,
    /// Materialized views (and views reading them) whose data comes only with the refresh
    /// steps: a materialized view reading one is created empty and refreshed after it.
    filled_later: BTreeSet<QualifiedName>,
    /// Objects kept in place whose rows change: views replaced in place, and what reads
    /// them; a populated materialized view above one is refreshed.
    rows_change: BTreeSet<QualifiedName>,
    /// Refreshes, and whether each may run concurrently.
    refreshes: Vec<(Head, bool)>,
    /// Where the drop of each rebuilt object's old version is, to join it to its rebuild.
    old_version_drops: BTreeMap<QualifiedName, usize>,
    /// Side-by-side copies this plan swaps in.
    used_builds: BTreeSet<QualifiedName>,
    /// Materialized views rebuilt in reconcile's transaction, and why not side by side.
    in_place: BTreeMap<QualifiedName, String>,
}

impl<'a> Builder<'a> {
    fn new(project: &'a Project, catalog: &'a Catalog) -> Builder<'a> {
        Builder {
            project,
            catalog,
            steps: Vec::new(),
            warnings: Vec::new(),
            filled_later: BTreeSet::new(),
            rows_change: BTreeSet::new(),
            refreshes: Vec::new(),
            old_version_drops: BTreeMap::new(),
            used_builds: BTreeSet::new(),
            in_place: BTreeMap::new(),
        }
    }

    fn push(&mut self, head: &Head, op: Op) {
        self.steps.push(Step {
            object: head.object.clone(),
            kind: head.kind,
            change: head.change,
            reason: head.reason.clone(),
            op,
        });
    }

    /// Refreshes after everything else, then the state's records; within a phase, the
    /// order they were planned in.
    fn finish(mut self) -> Plan {
        for (head, concurrently) in std::mem::take(&mut self.refreshes) {
            self.push(&head, Op::Refresh { concurrently });
        }
        self.steps.sort_by_key(Step::phase);
        // How long the builds the plan makes took last time, for what it costs readers.
        let last_builds = match &self.catalog.state {
            Some(state) => self
                .steps
                .iter()
                .filter(|step| step.builds_data())
                .filter_map(|step| {
                    let took = state.last_builds.get(&step.object)?;
                    Some((step.object.clone(), *took))
                })
                .collect(),
            None => BTreeMap::new(),
        };
        Plan {
            last_builds,
            steps: self.steps,
            warnings: self.warnings,
            declared: self.project.declarations.len(),
        }
    }

    /// Drops of undeclared objects and of the old versions of rebuilt ones, dependents
    /// first.
    fn drops(
        &mut self,
        drop_order: &[QualifiedName],
        state: &State,
        to_drop: &BTreeSet<QualifiedName>,
        rebuilt: &BTreeSet<QualifiedName>,
    ) {
        for name in drop_order.iter().rev() {
            let live = self.catalog.relations.get(name);
            if let Some(managed) = state.objects.get(name)
                && to_drop.contains(name)
            {
                let kind = live.map_or(managed.kind, |r| r.kind);
                let head = Head::new(name, kind, Change::Drop, "no longer declared");
                let destroys_data =
                    live.is_some_and(|r| r.kind == Kind::MaterializedView && r.populated);
                self.push(&head, Op::Drop { destroys_data });
                self.push(&head, Op::Forget);
            } else if rebuilt.contains(name)
                && let Some(live) = live
            {
                // Belongs to the object's replace or rebuild, planned with its create.
                let head = Head::new(name, live.kind, Change::Replace, "");
                self.old_version_drops
                    .insert(name.clone(), self.steps.len());
                self.push(
                    &head,
                    Op::Drop {
                        destroys_data: false,
                    },
                );
            }
        }
    }

    /// Creates, replacements and alterations, dependencies first.
    fn creates(
        &mut self,
        graphs: &Graphs,
        statuses: &BTreeMap<QualifiedName, Status>,
        state: &State,
    ) {
        for name in &graphs.create_order {
            let (Some(declaration), Some(status)) =
                (self.project.declarations.get(name), statuses.get(name))
            else {
                continue;
            };
            let live = self.catalog.relations.get(name);
            match (status, live) {
                (
                    Status::ReplaceInPlace {
                        reason,
                        diff,
                        added,
                    },
                    Some(live),
                ) => {
                    let head = Head::new(name, declaration.kind, Change::ReplaceInPlace, reason);
                    self.replace_in_place(&head, declaration, live, added, diff.clone());
                    self.rows_change.insert(name.clone());
                    self.warn_about_dependencies(declaration);
                }
                (Status::Keep | Status::Adopt, Some(live)) => {
                    let adopt = matches!(status, Status::Adopt);
                    self.keep(declaration, live, state.objects.get(name), adopt, graphs);
                    self.warn_about_dependencies(declaration);
                }
                (Status::Create { reason }, _) => {
                    let head = Head::new(name, declaration.kind, Change::Create, reason);
                    self.create(&head, declaration, None, graphs);
                }
                (Status::Replace { reason, diff }, _) => {
                    let head = Head::new(name, declaration.kind, Change::Replace, reason);
                    self.adopt_drop(&head);
                    self.rebuild(&head, declaration, diff.clone(), statuses, graphs, state);
                }
                (Status::Rebuild { because }, _) => {
                    let reason = format!("depends on {because}, which is rebuilt");
                    let head = Head::new(name, declaration.kind, Change::Rebuild, &reason);
                    self.adopt_drop(&head);
                    // Its query is unchanged, so what the catalog says it reads still holds.
                    self.warn_about_dependencies(declaration);
                    self.rebuild(&head, declaration, None, statuses, graphs, state);
                }
                (Status::ReplaceInPlace { .. } | Status::Keep | Status::Adopt, None) => {}
            }
        }
    }

    /// A new version of an existing object: built side by side and swapped in where it
    /// can be, else created in reconcile's transaction.
    fn rebuild(
        &mut self,
        head: &Head,
        declaration: &Declaration,
        diff: Option<String>,
        statuses: &BTreeMap<QualifiedName, Status>,
        graphs: &Graphs,
        state: &State,
    ) {
        match self.side_by_side(declaration, statuses, graphs) {
            Ok(()) => self.swap(head, declaration, diff, state),
            Err(why) => {
                if declaration.kind == Kind::MaterializedView {
                    self.in_place.insert(declaration.name.clone(), why);
                }
                self.create(head, declaration, diff, graphs);
            }
        }
    }

    /// Whether a rebuilt materialized view can be built beside the old one: its data, and
    /// everything it reads, must be there before reconcile's transaction starts. If not,
    /// why (in the plan's words).
    fn side_by_side(
        &self,
        declaration: &Declaration,
        statuses: &BTreeMap<QualifiedName, Status>,
        graphs: &Graphs,
    ) -> Result<(), String> {
        let name = &declaration.name;
        let live = self.catalog.relations.get(name);
        if declaration.kind != Kind::MaterializedView
            || !declaration.populate
            || !live.is_some_and(|live| live.kind == Kind::MaterializedView && live.populated)
        {
            return Err("it holds no data".to_owned());
        }
        if declaration.rebuild.unwrap_or(self.project.config.rebuild) == Rebuild::InPlace {
            return Err("rebuild \"in-place\" is set".to_owned());
        }
        // What it reads must stay as it is, or be there only after the swap.
        for dependency in graphs.create_graph.dependencies(name) {
            let stays = match statuses.get(&dependency) {
                None => true,
                Some(Status::Keep | Status::Adopt) => !self.filled_later.contains(&dependency),
                Some(_) => false,
            };
            if !stays {
                return Err(format!(
                    "it reads {dependency}, which changes in the same swap"
                ));
            }
        }
        Ok(())
    }

    /// A materialized view built side by side (unless a copy of exactly this version is
    /// built already), then swapped in: the old version is dropped and the copy renamed,
    /// with its indexes, in reconcile's short transaction.
    fn swap(
        &mut self,
        head: &Head,
        declaration: &Declaration,
        diff: Option<String>,
        state: &State,
    ) {
        let name = &declaration.name;
        let query_sha256 = declaration.query_sha256.clone();
        let temp = temporary_name(declaration, &query_sha256);
        let indexes: Vec<BuiltIndex> = declaration
            .indexes
            .iter()
            .enumerate()
            .map(|(position, index)| BuiltIndex {
                name: index.name.clone(),
                temp: format!("{}_{position}", temp.name),
                sql: ddl::create_index(name, index),
            })
            .collect();
        let build = SideBuild {
            temp: temp.clone(),
            target: name.clone(),
            query_sha256,
            indexes,
        };
        let ready = state.builds.get(&temp) == Some(&build)
            && self
                .catalog
                .built
                .get(&temp)
                .is_some_and(|copy| copy.kind == Kind::MaterializedView && copy.populated);
        self.used_builds.insert(temp.clone());
        let query = DeclaredQuery {
            text: declaration.query.text.clone(),
            origin: Some(declaration.query.origin.clone()),
        };
        if !ready {
            self.push(
                head,
                Op::Build {
                    build: build.clone(),
                    query,
                    options: declaration.options.clone(),
                    size_bytes: self
                        .catalog
                        .relations
                        .get(name)
                        .map_or(0, |live| live.size_bytes),
                },
            );
            for (index, built) in declaration.indexes.iter().zip(&build.indexes) {
                let mut temporary = index.clone();
                temporary.name.clone_from(&built.temp);
                self.push(
                    head,
                    Op::BuildIndex {
                        temp: temp.clone(),
                        index: temporary,
                    },
                );
            }
            self.push(head, Op::RecordBuild(build.clone()));
        }
        self.push(
            head,
            Op::Swap {
                temp: temp.clone(),
                built: ready,
                diff,
            },
        );
        for built in &build.indexes {
            self.push(
                head,
                Op::RenameIndex {
                    temp: built.temp.clone(),
                    name: built.name.clone(),
                },
            );
        }
        let owner = self.owner_of(declaration);
        let mut without_indexes = declaration.clone();
        without_indexes.indexes.clear();
        for op in attributes::for_create(&without_indexes, self.catalog, owner) {
            self.push(head, op);
        }
        self.push(head, Op::Record(record(declaration)));
        self.push(head, Op::ForgetBuild { temp });
    }

    /// Side-by-side copies recorded in the state that this plan does not swap in: dropped
    /// (if they exist) and forgotten.
    fn drop_unused_builds(&mut self, state: &State) {
        for build in state.builds.values() {
            if self.used_builds.contains(&build.temp) {
                continue;
            }
            let head = Head::new(
                &build.temp,
                Kind::MaterializedView,
                Change::Drop,
                &format!(
                    "a side-by-side build of {} that is not swapped in (left by an interrupted \
                     reconcile, or its declaration changed since)",
                    build.target
                ),
            );
            if self.catalog.built.contains_key(&build.temp) {
                self.push(
                    &head,
                    Op::DropBuild {
                        temp: build.temp.clone(),
                    },
                );
            }
            self.push(
                &head,
                Op::ForgetBuild {
                    temp: build.temp.clone(),
                },
            );
        }
    }

    /// The drop planned in [`Builder::drops`] becomes part of `head`'s replace or rebuild.
    fn adopt_drop(&mut self, head: &Head) {
        if let Some(step) = self
            .old_version_drops
            .get(&head.object)
            .and_then(|at| self.steps.get_mut(*at))
        {
            step.change = head.change;
            step.reason.clone_from(&head.reason);
        }
    }

    /// A new object (or a new version of one) with all its attributes, then its record. A
    /// rebuilt object without a declared owner keeps the owner it had.
    fn create(
        &mut self,
        head: &Head,
        declaration: &Declaration,
        diff: Option<String>,
        graphs: &Graphs,
    ) {
        let name = &declaration.name;
        // Upstream is full by now (created earlier in this phase, or kept), so the create
        // fills the view itself: cheaper than an empty create and a refresh, which builds
        // the heap again and rebuilds every index.
        let upstream_empty = self.reads_filled_later(&graphs.create_graph, name);
        let fill = if declaration.kind != Kind::MaterializedView || !declaration.populate {
            Fill::None
        } else if upstream_empty {
            self.refreshes.push((
                Head::new(
                    name,
                    declaration.kind,
                    Change::Refresh,
                    "created without data: filling it",
                ),
                false,
            ));
            Fill::Later
        } else {
            Fill::AtCreate
        };
        if upstream_empty || fill == Fill::Later {
            self.filled_later.insert(name.clone());
        }
        let in_place = self.in_place.remove(name);
        self.push(
            head,
            Op::Create {
                query: DeclaredQuery {
                    text: declaration.query.text.clone(),
                    origin: Some(declaration.query.origin.clone()),
                },
                options: declaration.options.clone(),
                fill,
                diff,
                in_place,
            },
        );
        let owner = self.owner_of(declaration);
        for op in attributes::for_create(declaration, self.catalog, owner) {
            self.push(head, op);
        }
        self.push(head, Op::Record(record(declaration)));
    }

    /// Who owns a new version: the declared owner, else the old version's, else the role
    /// that runs reconcile.
    fn owner_of<'d>(&'d self, declaration: &'d Declaration) -> &'d str {
        let live_owner = self
            .catalog
            .relations
            .get(&declaration.name)
            .map(|r| r.owner.as_str());
        declaration
            .owner
            .as_deref()
            .or(live_owner)
            .unwrap_or(&self.catalog.current_user)
    }

    /// `CREATE OR REPLACE VIEW` with the declared query and options, then the attributes
    /// brought in line as for a kept view.
    fn replace_in_place(
        &mut self,
        head: &Head,
        declaration: &Declaration,
        live: &crate::catalog::Relation,
        added: &[String],
        diff: Option<String>,
    ) {
        self.push(
            head,
            Op::ReplaceInPlace {
                query: DeclaredQuery {
                    text: declaration.query.text.clone(),
                    origin: Some(declaration.query.origin.clone()),
                },
                options: declaration.options.clone(),
                added: added.to_vec(),
                diff,
            },
        );
        // CREATE OR REPLACE sets the options to the ones it names.
        let replaced = crate::catalog::Relation {
            options: declaration.options.clone(),
            ..live.clone()
        };
        for op in attributes::to_alter(declaration, &replaced, None, self.catalog) {
            self.push(head, op);
        }
        self.push(head, Op::Record(record(declaration)));
    }

    /// An object that stays: its attributes brought in line, recorded when adopted or
    /// altered, and refreshed when it holds no data.
    fn keep(
        &mut self,
        declaration: &Declaration,
        live: &crate::catalog::Relation,
        managed: Option<&ManagedObject>,
        adopt: bool,
        graphs: &Graphs,
    ) {
        let name = &declaration.name;
        let alterations = attributes::to_alter(declaration, live, managed, self.catalog);
        if !alterations.is_empty() {
            let head = Head::new(
                name,
                declaration.kind,
                Change::Alter,
                "attributes differ from the declaration",
            );
            for op in alterations {
                self.push(&head, op);
            }
            if !adopt {
                self.push(&head, Op::Record(record(declaration)));
            }
        }
        if adopt {
            let adopted = Head::new(name, declaration.kind, Change::Adopt, "");
            self.push(&adopted, Op::Record(record(declaration)));
        }
        let stale_read = if self.rows_change.is_empty() {
            None
        } else {
            graphs
                .create_graph
                .dependencies(name)
                .into_iter()
                .find(|dependency| self.rows_change.contains(dependency))
        };
        if declaration.kind == Kind::MaterializedView && declaration.populate && !live.populated {
            self.refreshes.push((
                Head::new(
                    name,
                    declaration.kind,
                    Change::Refresh,
                    "not populated: it holds no data",
                ),
                false,
            ));
            self.filled_later.insert(name.clone());
        } else if declaration.kind == Kind::View
            && self.reads_filled_later(&graphs.create_graph, name)
        {
            self.filled_later.insert(name.clone());
        } else if let Some(dependency) = stale_read {
            self.rows_change.insert(name.clone());
            if declaration.kind == Kind::MaterializedView && declaration.populate {
                // Its rows came from the old version. Readers keep reading them while a
                // concurrent refresh runs; that needs a unique index on plain columns.
                let concurrently = declaration
                    .indexes
                    .iter()
                    .any(crate::project::Index::allows_concurrent_refresh);
                let reason = format!("reads {dependency}, whose rows change: refreshing its data");
                self.refreshes.push((
                    Head::new(name, declaration.kind, Change::Refresh, &reason),
                    concurrently,
                ));
            }
        }
    }

    /// True when `name` directly reads an object whose data comes with the refreshes.
    fn reads_filled_later(&self, graph: &DependencyGraph, name: &QualifiedName) -> bool {
        !self.filled_later.is_empty()
            && graph
                .dependencies(name)
                .iter()
                .any(|dependency| self.filled_later.contains(dependency))
    }

    /// Warns when `depends-on` and the catalog disagree about what a view reads.
    fn warn_about_dependencies(&mut self, declaration: &Declaration) {
        if declaration.depends_on.is_empty() {
            // Nothing declared: the dependencies are inferred, and PostgreSQL's are
            // authoritative.
            return;
        }
        let empty = BTreeSet::new();
        let reads = self.catalog.reads.get(&declaration.name).unwrap_or(&empty);
        // A few names each: a scan costs less than building a set per object.
        let declared = |name: &QualifiedName| {
            declaration
                .depends_on
                .iter()
                .any(|dependency| dependency.name == *name)
        };
        for read in reads {
            if !declared(read)
                && !matches!(read.schema.as_str(), "pg_catalog" | "information_schema")
            {
                self.warnings.push(Warning {
                    object: declaration.name.clone(),
                    message: format!("reads {read}, but its depends-on does not list it"),
                    location: file_line(declaration, declaration.name_span),
                });
            }
        }
        for dependency in &declaration.depends_on {
            if !reads.contains(&dependency.name) {
                self.warnings.push(Warning {
                    object: declaration.name.clone(),
                    message: format!(
                        "declares depends-on {}, but the database shows no such dependency (stale?)",
                        dependency.name
                    ),
                    location: file_line(declaration, dependency.span),
                });
            }
        }
    }
}

/// The name a side-by-side copy is built under, in the target's schema: the same for the
/// same declared version (query, indexes, options), so a copy left by an interrupted
/// reconcile is found again, and never a name anyone declares by hand.
fn temporary_name(declaration: &Declaration, query_sha256: &str) -> QualifiedName {
    use sha2::Digest;
    let mut hasher = sha2::Sha256::new();
    for part in [
        &declaration.name.schema,
        &declaration.name.name,
        query_sha256,
    ] {
        hasher.update(part.as_bytes());
        hasher.update([0]);
    }
    for index in &declaration.indexes {
        hasher.update(ddl::create_index(&declaration.name, index).as_bytes());
        hasher.update([0]);
    }
    hasher.update(ddl::options_list(&declaration.options).as_bytes());
    let digest: String = hasher
        .finalize()
        .iter()
        .take(10)
        .map(|byte| format!("{byte:02x}"))
        .collect();
    QualifiedName::new(
        declaration.name.schema.clone(),
        format!("viewkeeper_build_{digest}"),
    )
}

/// `path:line` of a span in a declaration's file.
fn file_line(declaration: &Declaration, span: miette::SourceSpan) -> String {
    let (line, _) = declaration.file.line_col(span.offset());
    format!("{}:{line}", declaration.file.path.display())
}

/// What the state records of an applied declaration.
fn record(declaration: &Declaration) -> Record {
    Record {
        name: declaration.name.clone(),
        kind: declaration.kind,
        query: declaration.query.text.clone(),
        indexes: declaration
            .indexes
            .iter()
            .map(|index| {
                (
                    index.name.clone(),
                    ddl::create_index(&declaration.name, index),
                )
            })
            .collect(),
    }
}

/// Drops every managed object that exists, dependents first, keeping them managed so the
/// next reconcile restores them. Refuses when an unmanaged view reads one of them. Pure.
pub fn drop_managed(project: &Project, catalog: &Catalog) -> Result<Plan, PlanError> {
    let mut builder = Builder::new(project, catalog);
    let Some(state) = &catalog.state else {
        return Ok(builder.finish());
    };
    let managed: BTreeSet<QualifiedName> = state
        .objects
        .keys()
        .filter(|name| catalog.relations.contains_key(*name))
        .cloned()
        .collect();
    let mut blockers = Vec::new();
    for object in &managed {
        for reader in catalog.readers_of(object) {
            if !managed.contains(reader) {
                blockers.push(Blocker {
                    object: object.clone(),
                    change: Change::Drop,
                    dependent: reader.clone(),
                    dependent_kind: catalog.relations.get(reader).map_or(Kind::View, |r| r.kind),
                    dependent_declared: false,
                });
            }
        }
    }
    if !blockers.is_empty() {
        return Err(PlanError::Blocked(blockers));
    }
    let mut graph = DependencyGraph::default();
    for name in &managed {
        graph.add_node(name);
    }
    catalog.add_reads(&mut graph);
    for name in graph.topological_order()?.iter().rev() {
        let Some(live) = catalog.relations.get(name) else {
            continue;
        };
        let head = Head::new(
            name,
            live.kind,
            Change::Drop,
            "dropped before the migration; the reconcile after it restores it",
        );
        builder.push(
            &head,
            Op::Drop {
                destroys_data: false,
            },
        );
    }
    Ok(builder.finish())
}

/// `schedule`'s healing: recreates the managed objects that are missing from the database,
/// as viewkeeper last applied them, and nothing else. Pure.
///
/// The query and the index statements come from the state (what was applied); grants,
/// comment, owner, options and `populate` come from the declaration, as the state does not
/// record them. A declaration whose query changed since it was applied stays a pending
/// change for the next reconcile, as does everything about objects that still exist.
/// Objects no longer declared are left gone: the next reconcile forgets them.
pub fn restore_missing(project: &Project, catalog: &Catalog) -> Result<Plan, PlanError> {
    let mut builder = Builder::new(project, catalog);
    let Some(state) = &catalog.state else {
        return Ok(builder.finish());
    };
    let missing: BTreeMap<&QualifiedName, (&ManagedObject, &Declaration)> = state
        .objects
        .values()
        .filter(|managed| !catalog.relations.contains_key(&managed.name))
        .filter_map(|managed| {
            let declaration = project.declarations.get(&managed.name)?;
            Some((&managed.name, (managed, declaration)))
        })
        .collect();
    for name in applied_order(project, &missing)? {
        let Some((managed, declared)) = missing.get(&name) else {
            continue;
        };
        builder.restore(managed, declared);
    }
    Ok(builder.finish())
}

/// The missing objects ordered by what their applied queries read (and the declared
/// depends-on), which may differ from what the edited declarations read.
fn applied_order(
    project: &Project,
    missing: &BTreeMap<&QualifiedName, (&ManagedObject, &Declaration)>,
) -> Result<Vec<QualifiedName>, PlanError> {
    let mut graph = DependencyGraph::default();
    for name in missing.keys() {
        graph.add_node(name);
    }
    let is_missing = |name: &QualifiedName| missing.contains_key(name);
    for (name, (managed, declaration)) in missing {
        let inferred = crate::project::infer::relations_read(&managed.query)
            .map(|reads| {
                crate::project::infer::resolve(&reads, &project.config.search_path, &is_missing)
            })
            .unwrap_or_default();
        for read in declaration
            .depends_on
            .iter()
            .map(|dependency| &dependency.name)
            .chain(&inferred)
        {
            if read != *name && is_missing(read) {
                graph.add_edge(read, name);
            }
        }
    }
    Ok(graph.topological_order()?)
}

impl Builder<'_> {
    /// One missing object, as last applied: created empty (a refresh fills it), with its
    /// recorded index statements and its declared grants, comment and owner.
    fn restore(&mut self, managed: &ManagedObject, declared: &Declaration) {
        let name = &managed.name;
        let pending = managed.query_sha256 != declared.query_sha256;
        let reason = if pending {
            "dropped outside viewkeeper: restored as last applied; the declaration's change \
             waits for reconcile"
        } else {
            "dropped outside viewkeeper: restored as last applied"
        };
        let head = Head::new(name, managed.kind, Change::Create, reason);
        self.push(
            &head,
            Op::Create {
                query: DeclaredQuery {
                    text: managed.query.clone(),
                    // The file no longer holds this text: no file:line:col to point at.
                    origin: (!pending).then(|| declared.query.origin.clone()),
                },
                options: declared.options.clone(),
                fill: Fill::Later,
                diff: None,
                in_place: None,
            },
        );
        for index in &managed.applied_indexes {
            self.push(
                &head,
                Op::CreateIndex {
                    index: IndexSource::Applied {
                        name: index.name.clone(),
                        sql: index.sql.clone(),
                    },
                    why: None,
                    recreates: false,
                },
            );
        }
        // Index statements are run as recorded; the declared ones may be pending changes.
        let mut applied = declared.clone();
        applied.kind = managed.kind;
        applied.indexes.clear();
        let owner = declared
            .owner
            .as_deref()
            .unwrap_or(&self.catalog.current_user);
        for op in attributes::for_create(&applied, self.catalog, owner) {
            self.push(&head, op);
        }
        self.push(
            &head,
            Op::Record(Record {
                name: name.clone(),
                kind: managed.kind,
                query: managed.query.clone(),
                indexes: managed
                    .applied_indexes
                    .iter()
                    .map(|index| (index.name.clone(), index.sql.clone()))
                    .collect(),
            }),
        );
        if managed.kind == Kind::MaterializedView && declared.populate {
            self.refreshes.push((
                Head::new(
                    name,
                    Kind::MaterializedView,
                    Change::Refresh,
                    "created without data: filling it",
                ),
                false,
            ));
        }
    }
}
