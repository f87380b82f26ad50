//! (declarations, catalog) → [`Plan`]: what reconcile would do, and why. Pure: no IO.
//!
//! `plan` renders this value and `reconcile` executes the very same value, so what a
//! reviewer approved is what runs.

use std::collections::{BTreeMap, BTreeSet};

use miette::Diagnostic;
use serde::Serialize;
use similar::TextDiff;

use crate::catalog::{Catalog, LiveIndex, Relation};
use crate::graph::{Cycle, DependencyGraph};
use crate::name::{QualifiedName, parse_identifier};
use crate::project::{Declaration, Grantee, Index, Kind, Problem, Problems, Project, QueryOrigin};
use crate::sql::{quote_ident, quote_literal};
use crate::state::{ManagedObject, Record, State, query_hash};

/// The ordered work reconcile would do.
#[derive(Debug, Clone, Default)]
pub struct Plan {
    /// One entry per object that changes, in execution order, each with its reason.
    pub actions: Vec<Action>,
    /// The statements, in the order they run.
    pub statements: Vec<Statement>,
    /// Records to write to the state table after the statements.
    pub records: Vec<Record>,
    /// Objects to remove from the state table.
    pub forget: Vec<QualifiedName>,
    /// Objects that exist with a query equivalent to the declaration: recorded as managed
    /// without any change to the database (not a pending change).
    pub adopted: Vec<QualifiedName>,
    /// Things worth knowing that do not stop the plan.
    pub warnings: Vec<Warning>,
    /// How many objects are declared (for the "in sync" summary).
    pub declared: usize,
}

impl Plan {
    /// True when reconcile has nothing to do.
    pub fn is_empty(&self) -> bool {
        self.actions.is_empty()
    }

    /// How many actions of each change, in a fixed order.
    pub fn summary(&self) -> BTreeMap<Change, usize> {
        let mut summary = BTreeMap::new();
        for action in &self.actions {
            *summary.entry(action.change).or_insert(0) += 1;
        }
        summary
    }
}

/// What happens to one object.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Action {
    pub change: Change,
    pub object: QualifiedName,
    pub kind: Kind,
    pub reason: String,
    /// Unified diff of the query (applied → declared) or of a drifted definition (live →
    /// what reconcile restores): `+` lines are what reconcile brings.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub diff: Option<String>,
    /// Alterations made in place (indexes, grants, comment, owner).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub details: Vec<String>,
    /// The drop of a materialized view that holds data: the data is lost for good (a
    /// rebuild refills it, a drop does not). Reconcile asks for intent.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub destroys_data: bool,
}

/// The kinds of action, in the order plans list them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Change {
    Drop,
    Forget,
    Create,
    Replace,
    /// `CREATE OR REPLACE VIEW`: the view keeps its OID, grants, comments and dependents.
    ReplaceInPlace,
    Rebuild,
    Alter,
    Refresh,
}

impl Change {
    pub fn verb(self) -> &'static str {
        match self {
            Change::Drop => "drop",
            Change::Forget => "forget",
            Change::Create => "create",
            Change::Replace => "replace",
            Change::ReplaceInPlace => "replace in place",
            Change::Rebuild => "rebuild",
            Change::Alter => "alter",
            Change::Refresh => "refresh",
        }
    }
}

/// Statement phases, in execution order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Phase {
    /// Indexes of kept materialized views, dropped first so a name can move between views.
    DropIndex,
    Drop,
    Create,
    Index,
    /// Storage and security options of kept objects (`ALTER … SET/RESET (…)`).
    Options,
    Grant,
    Comment,
    Owner,
    Refresh,
}

/// The table locks plan statements take, weakest first (PostgreSQL's names).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Lock {
    ShareUpdateExclusive,
    Share,
    AccessExclusive,
}

impl Lock {
    pub fn words(self) -> &'static str {
        match self {
            Lock::ShareUpdateExclusive => "SHARE UPDATE EXCLUSIVE",
            Lock::Share => "SHARE",
            Lock::AccessExclusive => "ACCESS EXCLUSIVE",
        }
    }
}

impl Phase {
    /// The lock a statement of this phase takes on its object, where known: readers of an
    /// ACCESS EXCLUSIVE object wait until the transaction ends. `None` for statements whose
    /// lock depends on the option or is not a table lock (grants).
    pub fn lock(self) -> Option<Lock> {
        match self {
            Phase::DropIndex | Phase::Drop | Phase::Owner | Phase::Refresh => {
                Some(Lock::AccessExclusive)
            }
            Phase::Index => Some(Lock::Share),
            Phase::Comment => Some(Lock::ShareUpdateExclusive),
            Phase::Create | Phase::Options | Phase::Grant => None,
        }
    }
}

/// One SQL statement of the plan.
#[derive(Debug, Clone, Serialize)]
pub struct Statement {
    pub phase: Phase,
    pub object: QualifiedName,
    /// A few words for progress output: `index sales_summary_key`, `grant SELECT to reporting`.
    pub summary: String,
    pub sql: String,
    /// For statements that embed a declared query: where it starts in `sql` (in characters)
    /// and where it came from, so an error position maps back to the declaration file.
    #[serde(skip)]
    pub query: Option<EmbeddedQuery>,
    /// A create that fills a materialized view (`WITH DATA`): recorded as a refresh, so
    /// `schedule` starts its periods from it.
    #[serde(skip)]
    pub fills: bool,
}

/// A declared query inside a statement.
#[derive(Debug, Clone)]
pub struct EmbeddedQuery {
    pub offset_chars: usize,
    pub text: String,
    pub origin: QueryOrigin,
    /// Where the text sent differs in length from `text` (see [`crate::compile`]).
    pub shifts: Vec<crate::compile::Shift>,
}

/// A note about the declarations that does not block the plan.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Warning {
    pub object: QualifiedName,
    pub message: String,
    /// `file:line` of the declaration (or of the `depends-on` entry) it is about.
    pub location: String,
}

/// Why no plan could be made; nothing has been changed.
#[derive(Debug, thiserror::Error, Diagnostic)]
#[non_exhaustive]
pub enum PlanError {
    #[error(transparent)]
    #[diagnostic(transparent)]
    Declarations(#[from] Problems),
    #[error("{}", blocked_message(.0))]
    #[diagnostic(
        code(viewkeeper::blocked),
        help("{}", blocked_help(.0))
    )]
    Blocked(Vec<Blocker>),
    #[error("{}", losses_message(.0))]
    #[diagnostic(
        code(viewkeeper::would_lose),
        help(
            "declarations cannot express these yet: remove them before the rebuild and add them back after, or keep the query as it is"
        )
    )]
    WouldLose(Vec<(QualifiedName, Vec<String>)>),
    #[error("no declarations found in {folder}; refusing to drop {managed} managed objects")]
    #[diagnostic(
        code(viewkeeper::no_declarations),
        help(
            "check --project and views-dir; to drop every managed view on purpose, pass --allow-drop"
        )
    )]
    NoDeclarations { folder: String, managed: usize },
    #[error(
        "refusing to drop materialized views that hold data: {}",
        names_list(.0)
    )]
    #[diagnostic(
        code(viewkeeper::destroys_data),
        help(
            "their data cannot be brought back; pass --allow-drop to drop them, or keep their declarations"
        )
    )]
    DestroysData(Vec<QualifiedName>),
    #[error(transparent)]
    #[diagnostic(transparent)]
    SavedPlan(#[from] crate::saved_plan::SavedPlanError),
    #[error("the declared and the live dependencies form a cycle: {0}")]
    #[diagnostic(code(viewkeeper::cycle))]
    Cycle(#[from] Cycle),
}

/// Refuses a plan that drops managed objects while nothing at all is declared: that is far
/// more often a wrong folder than an intent, so it takes `--allow-drop`.
pub fn refuse_dropping_everything(
    project: &Project,
    plan: &Plan,
    allow_drop: bool,
) -> Result<(), PlanError> {
    let managed = plan
        .actions
        .iter()
        .filter(|action| matches!(action.change, Change::Drop | Change::Forget))
        .count();
    if allow_drop || !project.declarations.is_empty() || managed == 0 {
        return Ok(());
    }
    Err(PlanError::NoDeclarations {
        folder: crate::project::display_path(&project.views_dir)
            .display()
            .to_string(),
        managed,
    })
}

impl Plan {
    /// The actions that lose data for good: drops of materialized views that hold data.
    pub fn data_losses(&self) -> Vec<&Action> {
        self.actions.iter().filter(|a| a.destroys_data).collect()
    }
}

/// Refuses a plan that destroys data unless the user said so (`--allow-drop`) or, on a
/// terminal, `confirm` (shown the losses) agrees.
pub fn refuse_data_loss(
    plan: &Plan,
    allow_drop: bool,
    confirm: &dyn Fn(&[&Action]) -> bool,
) -> Result<(), PlanError> {
    let losses = plan.data_losses();
    if allow_drop || losses.is_empty() || confirm(&losses) {
        return Ok(());
    }
    Err(PlanError::DestroysData(
        losses.iter().map(|action| action.object.clone()).collect(),
    ))
}

/// An object viewkeeper must drop or rebuild, and one it does not manage that reads it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Blocker {
    pub object: QualifiedName,
    pub change: Change,
    pub dependent: QualifiedName,
    pub dependent_kind: Kind,
    /// The dependent is declared but would lose the object it reads.
    pub dependent_declared: bool,
}

fn names_list(names: &[QualifiedName]) -> String {
    names
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join(", ")
}

fn losses_message(losses: &[(QualifiedName, Vec<String>)]) -> String {
    losses
        .iter()
        .map(|(object, lost)| format!("rebuilding {object} would lose its {}", lost.join(", ")))
        .collect::<Vec<_>>()
        .join("\n")
}

/// What to do: a declared reader is already rebuilt by viewkeeper, so declaring it does not
/// help; its query, or the drop, has to change.
fn blocked_help(blockers: &[Blocker]) -> String {
    let mut help = Vec::new();
    if blockers.iter().any(|b| b.dependent_declared) {
        help.push(
            "edit the declared query that still reads the dropped view, or restore the dropped \
             view's declaration",
        );
    }
    if blockers.iter().any(|b| !b.dependent_declared) {
        help.push(
            "viewkeeper never uses CASCADE: declare the dependent view so it is rebuilt too, or \
             drop it yourself",
        );
    }
    help.join("; ")
}

fn blocked_message(blockers: &[Blocker]) -> String {
    let lines: Vec<String> = blockers
        .iter()
        .map(|b| {
            if b.dependent_declared {
                format!(
                    "cannot drop {}: declared {} {} still reads it; remove that read or keep declaring {}",
                    b.object,
                    b.dependent_kind.words(),
                    b.dependent,
                    b.object
                )
            } else {
                format!(
                    "cannot {} {}: {} {}, which viewkeeper does not manage, depends on it",
                    b.change.verb(),
                    b.object,
                    b.dependent_kind.words(),
                    b.dependent
                )
            }
        })
        .collect();
    lines.join("\n")
}

/// Where a declared object stands against the database.
#[derive(Debug, Clone)]
enum Status {
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

/// Computes the plan. Pure: the same project and catalog always give the same plan.
pub fn plan(project: &Project, catalog: &Catalog) -> Result<Plan, PlanError> {
    let empty = State::default();
    let state = catalog.state.as_ref().unwrap_or(&empty);
    let declarations = &project.declarations;

    check_dependencies_exist(project, catalog)?;

    let mut statuses: BTreeMap<QualifiedName, Status> = declarations
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
        .collect();

    // Managed before, no longer declared: dropped if still there, forgotten either way.
    let undeclared: Vec<&ManagedObject> = state
        .objects
        .values()
        .filter(|managed| !declarations.contains_key(&managed.name))
        .collect();
    let to_drop: BTreeSet<QualifiedName> = undeclared
        .iter()
        .filter(|managed| catalog.relations.contains_key(&managed.name))
        .map(|managed| managed.name.clone())
        .collect();

    // Three views of the dependencies:
    // - drops follow what the database holds now: only the catalog's edges;
    // - what must be rebuilt follows both the declared and the live edges;
    // - creates follow the declared edges, plus the live edges of views whose query is not
    //   changing (their reads stay true), so reversing a dependency is not a cycle.
    let mut live_graph = DependencyGraph::default();
    let mut union_graph = project.graph();
    for name in declarations.keys().chain(&to_drop) {
        live_graph.add_node(name);
        union_graph.add_node(name);
    }
    catalog.add_reads(&mut live_graph);
    catalog.add_reads(&mut union_graph);
    mark_rebuilds(&union_graph, &mut statuses);

    let mut create_graph = project.graph();
    for (reader, reads) in &catalog.reads {
        if matches!(
            statuses.get(reader),
            Some(Status::Keep | Status::Rebuild { .. })
        ) {
            for read in reads
                .iter()
                .filter(|read| declarations.contains_key(*read) && *read != reader)
            {
                create_graph.add_edge(read, reader);
            }
        }
    }
    let drop_order = live_graph.topological_order()?;
    let order = create_graph.topological_order()?;

    let rebuilt: BTreeSet<QualifiedName> = statuses
        .iter()
        .filter(|(name, status)| {
            matches!(status, Status::Replace { .. } | Status::Rebuild { .. })
                && catalog.relations.contains_key(*name)
        })
        .map(|(name, _)| name.clone())
        .collect();
    check_blockers(catalog, declarations, &statuses, &rebuilt, &to_drop)?;
    // Never lose silently what a rebuild cannot bring back.
    let losses: Vec<(QualifiedName, Vec<String>)> = rebuilt
        .iter()
        .filter_map(|name| {
            let live = catalog.relations.get(name)?;
            (!live.undeclarable.is_empty()).then(|| (name.clone(), live.undeclarable.clone()))
        })
        .collect();
    if !losses.is_empty() {
        return Err(PlanError::WouldLose(losses));
    }

    let mut plan = Plan {
        declared: declarations.len(),
        ..Plan::default()
    };

    // Drops, dependents first.
    for name in drop_order.iter().rev() {
        if let Some(managed) = state.objects.get(name)
            && to_drop.contains(name)
        {
            let live = catalog.relations.get(name);
            let kind = live.map_or(managed.kind, |r| r.kind);
            plan.actions.push(Action {
                change: Change::Drop,
                object: name.clone(),
                kind,
                reason: "no longer declared".to_owned(),
                diff: None,
                details: Vec::new(),
                destroys_data: live
                    .is_some_and(|r| r.kind == Kind::MaterializedView && r.populated),
            });
            plan.forget.push(name.clone());
            plan.push(
                Phase::Drop,
                name,
                format!("drop {}", kind.words()),
                drop_sql(kind, name),
            );
        } else if rebuilt.contains(name)
            && let Some(live) = catalog.relations.get(name)
        {
            plan.push(
                Phase::Drop,
                name,
                format!("drop {}", live.kind.words()),
                drop_sql(live.kind, name),
            );
        }
    }
    for managed in &undeclared {
        if !to_drop.contains(&managed.name) {
            plan.actions.push(Action {
                change: Change::Forget,
                object: managed.name.clone(),
                kind: managed.kind,
                reason: "no longer declared, and already gone from the database".to_owned(),
                diff: None,
                details: Vec::new(),
                destroys_data: false,
            });
            plan.forget.push(managed.name.clone());
        }
    }

    // Creates and alterations, dependencies first.
    let mut refreshes = Vec::new();
    // Objects whose data comes only with the refresh phase (directly or through views): a
    // materialized view reading one is created empty and refreshed after it.
    let mut filled_later: BTreeSet<QualifiedName> = BTreeSet::new();
    for name in &order {
        let (Some(declaration), Some(status)) = (declarations.get(name), statuses.get(name)) else {
            continue;
        };
        let live = catalog.relations.get(name);
        let (change, reason, diff) = match status {
            Status::Create { reason } => (Change::Create, reason.clone(), None),
            Status::Replace { reason, diff } => (Change::Replace, reason.clone(), diff.clone()),
            Status::ReplaceInPlace {
                reason,
                diff,
                added,
            } => {
                let Some(live) = live else { continue };
                plan.replace_in_place(declaration, live, added, reason, diff.clone(), catalog);
                plan.records.push(record(declaration));
                warn_about_dependencies(&mut plan, declaration, catalog);
                continue;
            }
            Status::Rebuild { because } => (
                Change::Rebuild,
                format!("depends on {because}, which is rebuilt"),
                None,
            ),
            Status::Keep | Status::Adopt => {
                let Some(live) = live else { continue };
                let adopt = matches!(status, Status::Adopt);
                if adopt {
                    plan.adopted.push(name.clone());
                }
                let details =
                    plan.alter_in_place(declaration, live, state.objects.get(name), catalog);
                let altered = !details.is_empty();
                if altered {
                    plan.actions.push(Action {
                        change: Change::Alter,
                        object: name.clone(),
                        kind: declaration.kind,
                        reason: "attributes differ from the declaration".to_owned(),
                        diff: None,
                        details,
                        destroys_data: false,
                    });
                }
                if adopt || altered {
                    plan.records.push(record(declaration));
                }
                if declaration.kind == Kind::MaterializedView
                    && declaration.populate
                    && !live.populated
                {
                    refreshes.push((declaration, "not populated: it holds no data"));
                    filled_later.insert(name.clone());
                } else if declaration.kind == Kind::View
                    && reads_any(&create_graph, name, &filled_later)
                {
                    filled_later.insert(name.clone());
                }
                warn_about_dependencies(&mut plan, declaration, catalog);
                continue;
            }
        };
        // A rebuilt object's query is unchanged, so what the catalog says it reads still holds.
        if change == Change::Rebuild {
            warn_about_dependencies(&mut plan, declaration, catalog);
        }
        plan.actions.push(Action {
            change,
            object: name.clone(),
            kind: declaration.kind,
            reason,
            diff,
            details: Vec::new(),
            destroys_data: false,
        });
        // Upstream is full by now (created earlier in this phase, or kept), so the create
        // fills the view itself: cheaper than an empty create and a refresh, which builds
        // the heap again and rebuilds every index.
        let upstream_empty = reads_any(&create_graph, name, &filled_later);
        let fill = if declaration.kind != Kind::MaterializedView || !declaration.populate {
            Fill::None
        } else if upstream_empty {
            refreshes.push((declaration, "created without data: filling it"));
            Fill::Later
        } else {
            Fill::AtCreate
        };
        if upstream_empty || fill == Fill::Later {
            filled_later.insert(name.clone());
        }
        plan.create(
            declaration,
            catalog,
            live.map(|live| live.owner.as_str()),
            fill,
        );
        plan.records.push(record(declaration));
    }

    for (declaration, reason) in refreshes {
        plan.actions.push(Action {
            change: Change::Refresh,
            object: declaration.name.clone(),
            kind: declaration.kind,
            reason: reason.to_owned(),
            diff: None,
            details: Vec::new(),
            destroys_data: false,
        });
        plan.push(
            Phase::Refresh,
            &declaration.name,
            "refresh".to_owned(),
            format!("REFRESH MATERIALIZED VIEW {}", declaration.name.to_sql()),
        );
    }

    // Statements run phase by phase; within a phase, in the order they were planned.
    plan.statements.sort_by_key(|statement| statement.phase);
    Ok(plan)
}

/// True when `name` directly reads one of `names` in `graph`.
fn reads_any(
    graph: &DependencyGraph,
    name: &QualifiedName,
    names: &BTreeSet<QualifiedName>,
) -> bool {
    !names.is_empty()
        && graph
            .dependencies(name)
            .iter()
            .any(|dependency| names.contains(dependency))
}

/// How a created materialized view gets its data.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Fill {
    /// A view, or `populate #false`: `WITH NO DATA`, never filled by reconcile.
    None,
    /// `WITH DATA`: the create fills it.
    AtCreate,
    /// `WITH NO DATA`, then the refresh phase fills it (something it reads is filled there).
    Later,
}

/// Drops every managed object that exists, dependents first, keeping them managed so the
/// next reconcile restores them. Refuses when an unmanaged view reads one of them. Pure.
pub fn drop_managed(project: &Project, catalog: &Catalog) -> Result<Plan, PlanError> {
    let Some(state) = &catalog.state else {
        return Ok(Plan {
            declared: project.declarations.len(),
            ..Plan::default()
        });
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
    let mut plan = Plan {
        declared: project.declarations.len(),
        ..Plan::default()
    };
    for name in graph.topological_order()?.iter().rev() {
        let Some(live) = catalog.relations.get(name) else {
            continue;
        };
        plan.actions.push(Action {
            change: Change::Drop,
            object: name.clone(),
            kind: live.kind,
            reason: "dropped before the migration; the reconcile after it restores it".to_owned(),
            diff: None,
            details: Vec::new(),
            destroys_data: false,
        });
        plan.push(
            Phase::Drop,
            name,
            format!("drop {}", live.kind.words()),
            drop_sql(live.kind, name),
        );
    }
    Ok(plan)
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
    let mut plan = Plan {
        declared: project.declarations.len(),
        ..Plan::default()
    };
    let Some(state) = &catalog.state else {
        return Ok(plan);
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
    // Ordered by what the applied queries read (and the declared depends-on), which may
    // differ from what the edited declarations read.
    let mut graph = DependencyGraph::default();
    for name in missing.keys() {
        graph.add_node(name);
    }
    let is_missing = |name: &QualifiedName| missing.contains_key(name);
    for (name, (managed, declaration)) in &missing {
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
    let mut refreshes = Vec::new();
    for name in graph.topological_order()? {
        let Some((managed, declared)) = missing.get(&name) else {
            continue;
        };
        let pending = managed.query_sha256 != query_hash(declared.kind, &declared.query.text);
        let mut applied = (*declared).clone();
        applied.kind = managed.kind;
        applied.query.text = managed.query.clone();
        // Index statements are run as recorded; the declared ones may be pending changes.
        applied.indexes.clear();
        plan.actions.push(Action {
            change: Change::Create,
            object: name.clone(),
            kind: managed.kind,
            reason: if pending {
                "dropped outside viewkeeper: restored as last applied; the declaration's \
                 change waits for reconcile"
                    .to_owned()
            } else {
                "dropped outside viewkeeper: restored as last applied".to_owned()
            },
            diff: None,
            details: Vec::new(),
            destroys_data: false,
        });
        let first = plan.statements.len();
        // Empty (`WITH NO DATA`): the refreshes below fill it.
        plan.create(&applied, catalog, None, Fill::Later);
        if pending {
            // The file no longer holds this text: no file:line:col to point at.
            for statement in &mut plan.statements[first..] {
                statement.query = None;
            }
        }
        for index in &managed.applied_indexes {
            plan.push(
                Phase::Index,
                &name,
                format!("index {}", index.name),
                index.sql.clone(),
            );
        }
        plan.records.push(Record {
            name: name.clone(),
            kind: managed.kind,
            query: managed.query.clone(),
            indexes: managed
                .applied_indexes
                .iter()
                .map(|index| (index.name.clone(), index.sql.clone()))
                .collect(),
        });
        if managed.kind == Kind::MaterializedView && declared.populate {
            refreshes.push(name.clone());
        }
    }
    for name in refreshes {
        plan.actions.push(Action {
            change: Change::Refresh,
            object: name.clone(),
            kind: Kind::MaterializedView,
            reason: "created without data: filling it".to_owned(),
            diff: None,
            details: Vec::new(),
            destroys_data: false,
        });
        plan.push(
            Phase::Refresh,
            &name,
            "refresh".to_owned(),
            format!("REFRESH MATERIALIZED VIEW {}", name.to_sql()),
        );
    }
    plan.statements.sort_by_key(|statement| statement.phase);
    Ok(plan)
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
                    managed.query_sha256 != query_hash(declaration.kind, &declaration.query.text)
                        // Drifted: perhaps only PostgreSQL's printing changed (a major
                        // upgrade, another search_path), which is no reason to rebuild.
                        || live.is_some_and(|live| live.definition != managed.applied_definition)
                })
        })
        .map(|declaration| (declaration.name.clone(), declaration.query.text.clone()))
        .collect()
}

/// A `depends-on` must name a declared object or a relation that exists.
fn check_dependencies_exist(project: &Project, catalog: &Catalog) -> Result<(), Problems> {
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

fn status(
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
    let changed = managed.query_sha256 != query_hash(declaration.kind, &declaration.query.text);
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
fn in_place_if_compatible(
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
fn mark_rebuilds(graph: &DependencyGraph, statuses: &mut BTreeMap<QualifiedName, Status>) {
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
fn check_blockers(
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

/// Warns when `depends-on` and the catalog disagree about what a view reads.
fn warn_about_dependencies(plan: &mut Plan, declaration: &Declaration, catalog: &Catalog) {
    let empty = BTreeSet::new();
    let reads = catalog.reads.get(&declaration.name).unwrap_or(&empty);
    let declared: BTreeSet<&QualifiedName> =
        declaration.depends_on.iter().map(|d| &d.name).collect();
    if declared.is_empty() {
        // Nothing declared: the dependencies are inferred, and PostgreSQL's are authoritative.
        return;
    }
    for read in reads {
        if !declared.contains(read)
            && !matches!(read.schema.as_str(), "pg_catalog" | "information_schema")
        {
            plan.warnings.push(Warning {
                object: declaration.name.clone(),
                message: format!("reads {read}, but its depends-on does not list it"),
                location: file_line(declaration, declaration.name_span),
            });
        }
    }
    for dependency in &declaration.depends_on {
        if !reads.contains(&dependency.name) {
            plan.warnings.push(Warning {
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

/// `path:line` of a span in a declaration's file.
fn file_line(declaration: &Declaration, span: miette::SourceSpan) -> String {
    let (line, _) = declaration.file.line_col(span.offset());
    format!("{}:{line}", declaration.file.path.display())
}

fn record(declaration: &Declaration) -> Record {
    Record {
        name: declaration.name.clone(),
        kind: declaration.kind,
        query: declaration.query.text.clone(),
        indexes: declaration
            .indexes
            .iter()
            .map(|index| (index.name.clone(), index_sql(&declaration.name, index)))
            .collect(),
    }
}

impl Plan {
    fn push(&mut self, phase: Phase, object: &QualifiedName, summary: String, sql: String) {
        self.statements.push(Statement {
            phase,
            object: object.clone(),
            summary,
            sql,
            query: None,
            fills: false,
        });
    }

    /// One GRANT (or REVOKE) per grantee; returns what each does, in words
    /// (`grant SELECT to reporting`, `revoke default SELECT from app`).
    fn push_grants(
        &mut self,
        name: &QualifiedName,
        pairs: &BTreeSet<(Grantee, String)>,
        grant: bool,
        verb: &str,
    ) -> Vec<String> {
        let mut summaries = Vec::new();
        for (grantee, privileges) in grouped(pairs) {
            let preposition = if grant { "to" } else { "from" };
            let summary = format!("{verb} {} {preposition} {grantee}", privileges.join(", "));
            self.push(
                Phase::Grant,
                name,
                summary.clone(),
                grant_sql(name, &grantee, &privileges, grant),
            );
            summaries.push(summary);
        }
        summaries
    }

    /// Statements that create `declaration` from nothing, with all its attributes. A rebuilt
    /// object without a declared owner keeps the owner it had (`live_owner`).
    fn create(
        &mut self,
        declaration: &Declaration,
        catalog: &Catalog,
        live_owner: Option<&str>,
        fill: Fill,
    ) {
        let name = &declaration.name;
        let owner = declaration
            .owner
            .as_deref()
            .or(live_owner)
            .unwrap_or(&catalog.current_user);
        let with = if declaration.options.is_empty() {
            String::new()
        } else {
            format!(" WITH ({})", options_sql(&declaration.options))
        };
        let prefix = format!(
            "CREATE {} {}{with} AS\n",
            declaration.kind.sql(),
            name.to_sql()
        );
        let suffix = match (declaration.kind, fill) {
            (Kind::View, _) => "",
            (Kind::MaterializedView, Fill::AtCreate) => "\nWITH DATA",
            (Kind::MaterializedView, Fill::None | Fill::Later) => "\nWITH NO DATA",
        };
        self.statements.push(Statement {
            phase: Phase::Create,
            object: name.clone(),
            summary: format!("create {}", declaration.kind.words()),
            sql: format!("{prefix}{}{suffix}", declaration.query.text),
            query: Some(EmbeddedQuery {
                offset_chars: prefix.chars().count(),
                text: declaration.query.text.clone(),
                origin: declaration.query.origin.clone(),
                shifts: Vec::new(),
            }),
            fills: fill == Fill::AtCreate,
        });
        for index in &declaration.indexes {
            self.push(
                Phase::Index,
                name,
                format!("index {}", index.name),
                index_sql(name, index),
            );
        }
        let declared = declared_grants(declaration, catalog.server_version, owner);
        // ALTER DEFAULT PRIVILEGES adds grants of its own at CREATE: take back the undeclared.
        let defaults: BTreeSet<(Grantee, String)> = ["", name.schema.as_str()]
            .iter()
            .filter_map(|schema| catalog.default_grants.get(*schema))
            .flatten()
            .filter(|grant| !declared.contains(*grant))
            .cloned()
            .collect();
        self.push_grants(name, &defaults, false, "revoke default");
        self.push_grants(name, &declared, true, "grant");
        if let Some(comment) = &declaration.comment {
            self.push(
                Phase::Comment,
                name,
                "comment".to_owned(),
                comment_sql(declaration.kind, name, Some(comment)),
            );
        }
        if owner != catalog.current_user {
            self.push(
                Phase::Owner,
                name,
                format!("owner {owner}"),
                owner_sql(declaration.kind, name, owner),
            );
        }
    }

    /// `CREATE OR REPLACE VIEW` with the declared query and options, then the attributes
    /// brought in line as for a kept view.
    fn replace_in_place(
        &mut self,
        declaration: &Declaration,
        live: &Relation,
        added: &[String],
        reason: &str,
        diff: Option<String>,
        catalog: &Catalog,
    ) {
        let name = &declaration.name;
        // CREATE OR REPLACE sets the options to the ones it names (none when it names none).
        let with = if declaration.options.is_empty() {
            String::new()
        } else {
            format!(" WITH ({})", options_sql(&declaration.options))
        };
        let prefix = format!("CREATE OR REPLACE VIEW {}{with} AS\n", name.to_sql());
        self.statements.push(Statement {
            phase: Phase::Create,
            object: name.clone(),
            summary: "replace view in place".to_owned(),
            sql: format!("{prefix}{}", declaration.query.text),
            query: Some(EmbeddedQuery {
                offset_chars: prefix.chars().count(),
                text: declaration.query.text.clone(),
                origin: declaration.query.origin.clone(),
                shifts: Vec::new(),
            }),
            fills: false,
        });
        let replaced = Relation {
            options: declaration.options.clone(),
            ..live.clone()
        };
        let mut details = if added.is_empty() {
            vec!["keeps its columns".to_owned()]
        } else {
            vec![format!(
                "adds column{} {}",
                if added.len() == 1 { "" } else { "s" },
                added.join(", ")
            )]
        };
        details.extend(self.alter_in_place(declaration, &replaced, None, catalog));
        self.actions.push(Action {
            change: Change::ReplaceInPlace,
            object: name.clone(),
            kind: declaration.kind,
            reason: reason.to_owned(),
            diff,
            details,
            destroys_data: false,
        });
    }

    /// Statements that bring an existing object's attributes in line; returns what changes.
    fn alter_in_place(
        &mut self,
        declaration: &Declaration,
        live: &Relation,
        managed: Option<&ManagedObject>,
        catalog: &Catalog,
    ) -> Vec<String> {
        let name = &declaration.name;
        let mut details = Vec::new();

        let applied: BTreeMap<&str, _> = managed
            .map(|m| {
                m.applied_indexes
                    .iter()
                    .map(|i| (i.name.as_str(), i))
                    .collect()
            })
            .unwrap_or_default();
        for index in &declaration.indexes {
            let sql = index_sql(name, index);
            let verdict = match (
                live.indexes.get(&index.name),
                applied.get(index.name.as_str()),
            ) {
                (None, _) => Some("missing"),
                (Some(live_index), Some(applied)) if applied.sql == sql => (live_index.definition
                    != applied.definition)
                    .then_some("changed outside viewkeeper"),
                (Some(_), Some(_)) => Some("declaration changed"),
                (Some(live_index), None) => {
                    (!same_index(live_index, index)).then_some("not created by viewkeeper")
                }
            };
            if let Some(verdict) = verdict {
                if live.indexes.contains_key(&index.name) {
                    self.push(
                        Phase::DropIndex,
                        name,
                        format!("drop index {}", index.name),
                        drop_index_sql(name, &index.name),
                    );
                    details.push(format!("recreate index {} ({verdict})", index.name));
                } else {
                    details.push(format!("create index {} ({verdict})", index.name));
                }
                self.push(Phase::Index, name, format!("index {}", index.name), sql);
            }
        }
        for index_name in live.indexes.keys() {
            if !declaration
                .indexes
                .iter()
                .any(|index| &index.name == index_name)
            {
                self.push(
                    Phase::DropIndex,
                    name,
                    format!("drop index {index_name}"),
                    drop_index_sql(name, index_name),
                );
                details.push(format!("drop index {index_name} (not declared)"));
            }
        }

        let owner = declaration.owner.as_deref().unwrap_or(&live.owner);
        let declared = declared_grants(declaration, catalog.server_version, owner);
        let to_revoke: BTreeSet<(Grantee, String)> =
            live.grants.difference(&declared).cloned().collect();
        let to_grant: BTreeSet<(Grantee, String)> =
            declared.difference(&live.grants).cloned().collect();
        // Revokes first, so a privilege moving between roles never exists twice.
        details.extend(self.push_grants(name, &to_revoke, false, "revoke"));
        details.extend(self.push_grants(name, &to_grant, true, "grant"));

        let resets: Vec<&String> = live
            .options
            .keys()
            .filter(|key| !declaration.options.contains_key(*key))
            .collect();
        let sets: std::collections::BTreeMap<String, String> = declaration
            .options
            .iter()
            .filter(|(key, value)| live.options.get(*key) != Some(*value))
            .map(|(key, value)| (key.clone(), value.clone()))
            .collect();
        if !sets.is_empty() {
            let summary = format!("set options ({})", options_sql(&sets));
            details.push(summary.clone());
            self.push(
                Phase::Options,
                name,
                summary,
                format!(
                    "ALTER {} {} SET ({})",
                    declaration.kind.sql(),
                    name.to_sql(),
                    options_sql(&sets)
                ),
            );
        }
        if !resets.is_empty() {
            let keys: Vec<&str> = resets.iter().map(|key| key.as_str()).collect();
            let summary = format!("reset options ({})", keys.join(", "));
            details.push(summary.clone());
            self.push(
                Phase::Options,
                name,
                summary,
                format!(
                    "ALTER {} {} RESET ({})",
                    declaration.kind.sql(),
                    name.to_sql(),
                    keys.join(", ")
                ),
            );
        }

        if declaration.comment != live.comment {
            let summary = match &declaration.comment {
                Some(comment) => format!("set comment {}", quote_literal(comment)),
                None => "remove comment".to_owned(),
            };
            details.push(summary.clone());
            self.push(
                Phase::Comment,
                name,
                summary,
                comment_sql(declaration.kind, name, declaration.comment.as_deref()),
            );
        }

        if let Some(owner) = &declaration.owner
            && owner != &live.owner
        {
            let summary = format!("change owner from {} to {owner}", live.owner);
            details.push(summary.clone());
            self.push(
                Phase::Owner,
                name,
                summary,
                owner_sql(declaration.kind, name, owner),
            );
        }
        details
    }
}

/// The `(grantee, privilege)` pairs a declaration asks for, with `ALL` spelled out for the
/// server's version (PostgreSQL 17 added MAINTAIN). Grants to the owner are left out: an
/// owner holds every privilege, and the catalog never lists them as grants.
fn declared_grants(
    declaration: &Declaration,
    server_version: i32,
    owner: &str,
) -> BTreeSet<(Grantee, String)> {
    let all = crate::project::all_privileges(server_version);
    let mut pairs = BTreeSet::new();
    for grant in declaration
        .grants
        .iter()
        .filter(|grant| grant.role != Grantee::Role(owner.to_owned()))
    {
        for privilege in &grant.privileges {
            if privilege == "ALL" {
                pairs.extend(all.iter().map(|p| (grant.role.clone(), (*p).to_owned())));
            } else {
                pairs.insert((grant.role.clone(), privilege.clone()));
            }
        }
    }
    pairs
}

fn grouped(pairs: &BTreeSet<(Grantee, String)>) -> BTreeMap<Grantee, Vec<String>> {
    let mut groups: BTreeMap<Grantee, Vec<String>> = BTreeMap::new();
    for (grantee, privilege) in pairs {
        groups
            .entry(grantee.clone())
            .or_default()
            .push(privilege.clone());
    }
    groups
}

fn grantee_sql(grantee: &Grantee) -> String {
    match grantee {
        Grantee::Public => "PUBLIC".to_owned(),
        Grantee::Role(role) => quote_ident(role),
    }
}

fn grant_sql(
    name: &QualifiedName,
    grantee: &Grantee,
    privileges: &[String],
    grant: bool,
) -> String {
    let privileges = privileges.join(", ");
    if grant {
        format!(
            "GRANT {privileges} ON {} TO {}",
            name.to_sql(),
            grantee_sql(grantee)
        )
    } else {
        format!(
            "REVOKE {privileges} ON {} FROM {}",
            name.to_sql(),
            grantee_sql(grantee)
        )
    }
}

/// `security_invoker='true', check_option='local'`: keys were checked to be plain words
/// when the files were read; values are quoted.
pub(crate) fn options_sql(options: &std::collections::BTreeMap<String, String>) -> String {
    options
        .iter()
        .map(|(key, value)| format!("{key}={}", quote_literal(value)))
        .collect::<Vec<_>>()
        .join(", ")
}

fn drop_sql(kind: Kind, name: &QualifiedName) -> String {
    // Never CASCADE: anything else reading this object was checked before planning.
    format!("DROP {} {}", kind.sql(), name.to_sql())
}

fn comment_sql(kind: Kind, name: &QualifiedName, comment: Option<&str>) -> String {
    let text = comment.map_or_else(|| "NULL".to_owned(), quote_literal);
    format!("COMMENT ON {} {} IS {text}", kind.sql(), name.to_sql())
}

fn owner_sql(kind: Kind, name: &QualifiedName, owner: &str) -> String {
    format!(
        "ALTER {} {} OWNER TO {}",
        kind.sql(),
        name.to_sql(),
        quote_ident(owner)
    )
}

/// `CREATE [UNIQUE] INDEX` for a declared index; plain column names are quoted, anything
/// else is an index element written in SQL by the user.
pub(crate) fn index_sql(relation: &QualifiedName, index: &Index) -> String {
    let elements: Vec<String> = index
        .elements
        .iter()
        .map(|element| match parse_identifier(element) {
            Ok(column) => quote_ident(&column),
            Err(_) => element.clone(),
        })
        .collect();
    let mut sql = format!(
        "CREATE {}INDEX {} ON {}",
        if index.unique { "UNIQUE " } else { "" },
        quote_ident(&index.name),
        relation.to_sql()
    );
    if let Some(method) = &index.using {
        // Access methods are identifiers: `using="BTREE"` means btree, as in SQL.
        let method = parse_identifier(method).unwrap_or_else(|_| method.clone());
        sql.push_str(&format!(" USING {}", quote_ident(&method)));
    }
    sql.push_str(&format!(" ({})", elements.join(", ")));
    if let Some(predicate) = &index.predicate {
        sql.push_str(&format!(" WHERE {predicate}"));
    }
    sql
}

/// Whether an existing index viewkeeper did not create is the declared one, part by part:
/// uniqueness, access method, key columns or expressions (as PostgreSQL prints them, which
/// is what `import` writes) and predicate. Lets adoption keep indexes as they are.
fn same_index(live: &LiveIndex, declared: &Index) -> bool {
    let method = declared.using.as_deref().map_or_else(
        || "btree".to_owned(),
        |m| parse_identifier(m).unwrap_or_else(|_| m.to_owned()),
    );
    let element = |text: &str| -> String {
        match parse_identifier(text) {
            Ok(column) => column,
            Err(_) => strip_parens(text).to_owned(),
        }
    };
    live.declarable
        && live.unique == declared.unique
        && live.method == method
        && live.predicate.as_deref().map(strip_parens)
            == declared.predicate.as_deref().map(strip_parens)
        && live.elements.len() == declared.elements.len()
        && live
            .elements
            .iter()
            .zip(&declared.elements)
            .all(|(live, declared)| element(live) == element(declared))
}

/// `(expr)` → `expr`, once, when the outer parentheses enclose the whole text
/// (`(a) + (b)` stays as it is).
fn strip_parens(text: &str) -> &str {
    let text = text.trim();
    let Some(inner) = text.strip_prefix('(').and_then(|t| t.strip_suffix(')')) else {
        return text;
    };
    let mut depth = 0i32;
    for c in inner.chars() {
        depth += match c {
            '(' => 1,
            ')' => -1,
            _ => 0,
        };
        if depth < 0 {
            return text;
        }
    }
    if depth == 0 { inner } else { text }
}

fn drop_index_sql(relation: &QualifiedName, index: &str) -> String {
    format!(
        "DROP INDEX {}.{}",
        quote_ident(&relation.schema),
        quote_ident(index)
    )
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
