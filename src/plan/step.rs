//! One step of a plan: what happens to which object, why, and the one statement (if any)
//! it runs. Everything that shows or runs a plan reads these.

use std::collections::BTreeMap;

use serde::Serialize;

use crate::name::QualifiedName;
use crate::objects::Record;
use crate::objects::SideBuild;
use crate::project::{Grantee, Index, Kind, QueryOrigin};
use crate::sql::{ddl, quote_literal};

/// One step of a plan. The steps of one object share its `change` and `reason`.
#[derive(Debug, Clone)]
pub struct Step {
    pub object: QualifiedName,
    pub kind: Kind,
    /// What happens to the object as a whole (the plan's summary counts these).
    pub change: Change,
    pub reason: String,
    pub op: Op,
}

/// What a step does. A closed set: every statement reconcile can run is one of these.
#[derive(Debug, Clone)]
pub enum Op {
    /// `DROP [MATERIALIZED] VIEW`, never CASCADE.
    Drop {
        /// A materialized view that holds data: its rows are lost for good.
        destroys_data: bool,
    },
    /// `CREATE [MATERIALIZED] VIEW … AS query`.
    Create {
        query: DeclaredQuery,
        options: BTreeMap<String, String>,
        fill: Fill,
        /// The query diff (applied → declared) or drift diff (live → restored).
        diff: Option<String>,
        /// For a materialized view rebuilt in reconcile's transaction: why not side by side.
        in_place: Option<String>,
    },
    /// `CREATE OR REPLACE VIEW`: keeps the OID, grants, comment and dependents.
    ReplaceInPlace {
        query: DeclaredQuery,
        options: BTreeMap<String, String>,
        /// `name type` of each column the new query appends.
        added: Vec<String>,
        diff: Option<String>,
    },
    DropIndex {
        index: String,
        /// Why, when the drop is a change of its own (not half of a recreate).
        why: Option<&'static str>,
    },
    CreateIndex {
        index: IndexSource,
        /// Why, when the object is altered rather than created.
        why: Option<&'static str>,
        /// An index of the same name was dropped first.
        recreates: bool,
    },
    SetOptions {
        options: BTreeMap<String, String>,
    },
    ResetOptions {
        keys: Vec<String>,
    },
    Grant {
        grantee: Grantee,
        privileges: Vec<String>,
    },
    Revoke {
        grantee: Grantee,
        privileges: Vec<String>,
        /// Taking back what `ALTER DEFAULT PRIVILEGES` granted at the create.
        default: bool,
    },
    Comment {
        comment: Option<String>,
    },
    Owner {
        /// The owner before, when an existing object changes hands.
        from: Option<String>,
        to: String,
    },
    Refresh {
        concurrently: bool,
    },
    /// Builds the new version of a materialized view under a temporary name, beside the
    /// old one, which keeps serving: `CREATE MATERIALIZED VIEW temp … WITH DATA`.
    Build {
        build: SideBuild,
        query: DeclaredQuery,
        options: BTreeMap<String, String>,
        /// The room the old version takes, which the copy needs too.
        size_bytes: i64,
    },
    /// An index of a side-by-side copy, under its temporary name.
    BuildIndex {
        temp: QualifiedName,
        index: Index,
    },
    /// Records a side-by-side copy in the state, in the transaction that builds it.
    RecordBuild(SideBuild),
    /// The swap: renames the copy built side by side to the declared name (the old version
    /// was dropped just before, in the same short transaction).
    Swap {
        temp: QualifiedName,
        /// Built by an earlier reconcile that did not get to swap it in.
        built: bool,
        diff: Option<String>,
    },
    /// Renames an index of a swapped-in copy to its declared name.
    RenameIndex {
        temp: String,
        name: String,
    },
    /// Drops a side-by-side copy that will not be swapped in (left by an interrupted
    /// reconcile, or for a query that changed since).
    DropBuild {
        temp: QualifiedName,
    },
    /// Removes a side-by-side copy's record: swapped in, dropped, or gone.
    ForgetBuild {
        temp: QualifiedName,
    },
    /// Writes the object's record to the state (what was applied).
    Record(Record),
    /// Removes the object's record from the state.
    Forget,
}

/// A declared query inside a create, with where it came from for error positions; no
/// origin when the text is not in any file (healing restores the last applied query).
#[derive(Debug, Clone)]
pub struct DeclaredQuery {
    pub text: String,
    pub origin: Option<QueryOrigin>,
}

/// An index to create: as declared, or as viewkeeper last applied it (healing).
#[derive(Debug, Clone)]
pub enum IndexSource {
    Declared(Index),
    Applied { name: String, sql: String },
}

impl IndexSource {
    pub fn name(&self) -> &str {
        match self {
            IndexSource::Declared(index) => &index.name,
            IndexSource::Applied { name, .. } => name,
        }
    }
}

/// How a created materialized view gets its data.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fill {
    /// A view, or `populate #false`: `WITH NO DATA`, never filled by reconcile.
    None,
    /// `WITH DATA`: the create fills it.
    AtCreate,
    /// `WITH NO DATA`, then a refresh step fills it (something it reads is filled there).
    Later,
}

/// What happens to an object, in the order plans list them.
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
    /// Exists as declared: only recorded as managed (not a pending change).
    Adopt,
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
            Change::Adopt => "adopt",
        }
    }
}

/// Step phases, in execution order: a plan's steps are sorted by phase, and keep the
/// order they were planned in within one.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Phase {
    /// Side-by-side builds, in a transaction of their own that commits before the rest:
    /// nobody waits for them.
    Build,
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
    /// viewkeeper's own records, written after every statement.
    State,
}

/// The table locks steps take, weakest first (PostgreSQL's names).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Lock {
    ShareUpdateExclusive,
    Share,
    /// Blocks writes, not reads (`REFRESH … CONCURRENTLY`).
    Exclusive,
    AccessExclusive,
}

impl Lock {
    pub fn words(self) -> &'static str {
        match self {
            Lock::ShareUpdateExclusive => "SHARE UPDATE EXCLUSIVE",
            Lock::Share => "SHARE",
            Lock::Exclusive => "EXCLUSIVE",
            Lock::AccessExclusive => "ACCESS EXCLUSIVE",
        }
    }
}

/// One SQL statement of the plan, as it runs.
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
    /// A create that fills a materialized view (`WITH DATA`), or a refresh: recorded in the
    /// refresh history, so `schedule` starts its periods from it.
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

impl Step {
    pub fn phase(&self) -> Phase {
        match self.op {
            Op::Build { .. } | Op::BuildIndex { .. } | Op::RecordBuild(_) => Phase::Build,
            Op::DropIndex { .. } => Phase::DropIndex,
            Op::Drop { .. } | Op::DropBuild { .. } => Phase::Drop,
            Op::Create { .. } | Op::ReplaceInPlace { .. } | Op::Swap { .. } => Phase::Create,
            Op::CreateIndex { .. } | Op::RenameIndex { .. } => Phase::Index,
            Op::SetOptions { .. } | Op::ResetOptions { .. } => Phase::Options,
            Op::Grant { .. } | Op::Revoke { .. } => Phase::Grant,
            Op::Comment { .. } => Phase::Comment,
            Op::Owner { .. } => Phase::Owner,
            Op::Refresh { .. } => Phase::Refresh,
            Op::Record(_) | Op::Forget | Op::ForgetBuild { .. } => Phase::State,
        }
    }

    /// The lock the step takes on its object, where known: readers of an ACCESS EXCLUSIVE
    /// object wait until the transaction ends. `None` for a new object (nobody can wait for
    /// it), for grants (no table lock) and for options (the lock depends on the option).
    pub fn lock(&self) -> Option<Lock> {
        if self.change == Change::Create {
            return None;
        }
        match self.op {
            Op::DropIndex { .. }
            | Op::Drop { .. }
            | Op::ReplaceInPlace { .. }
            | Op::Owner { .. }
            | Op::Swap { .. }
            | Op::Refresh {
                concurrently: false,
            } => Some(Lock::AccessExclusive),
            Op::Refresh { concurrently: true } => Some(Lock::Exclusive),
            Op::CreateIndex { .. } => Some(Lock::Share),
            Op::Comment { .. } => Some(Lock::ShareUpdateExclusive),
            Op::Create { .. }
            | Op::Build { .. }
            | Op::BuildIndex { .. }
            | Op::RecordBuild(_)
            | Op::RenameIndex { .. }
            | Op::DropBuild { .. }
            | Op::ForgetBuild { .. }
            | Op::SetOptions { .. }
            | Op::ResetOptions { .. }
            | Op::Grant { .. }
            | Op::Revoke { .. }
            | Op::Record(_)
            | Op::Forget => None,
        }
    }

    /// True for an object changed where it stands (its other steps describe the change).
    fn alters(&self) -> bool {
        matches!(self.change, Change::Alter | Change::ReplaceInPlace)
    }

    /// A few words on what the step does (`index m_key`, `grant SELECT to reporting`).
    pub fn summary(&self) -> String {
        match &self.op {
            Op::Drop { .. } => format!("drop {}", self.kind.words()),
            Op::Create { .. } => format!("create {}", self.kind.words()),
            Op::ReplaceInPlace { .. } => "replace view in place".to_owned(),
            Op::DropIndex { index, .. } => format!("drop index {index}"),
            Op::CreateIndex { index, .. } => format!("index {}", index.name()),
            Op::SetOptions { options } => format!("set options ({})", ddl::options_list(options)),
            Op::ResetOptions { keys } => format!("reset options ({})", keys.join(", ")),
            Op::Grant {
                grantee,
                privileges,
            } => format!("grant {} to {grantee}", privileges.join(", ")),
            Op::Revoke {
                grantee,
                privileges,
                default,
            } => format!(
                "revoke {}{} from {grantee}",
                if *default { "default " } else { "" },
                privileges.join(", ")
            ),
            Op::Comment { comment } => match (self.alters(), comment) {
                (false, _) => "comment".to_owned(),
                (true, Some(comment)) => format!("set comment {}", quote_literal(comment)),
                (true, None) => "remove comment".to_owned(),
            },
            Op::Owner { from, to } => match from {
                Some(from) if self.alters() => format!("change owner from {from} to {to}"),
                _ => format!("owner {to}"),
            },
            Op::Refresh { concurrently } => {
                if *concurrently {
                    "refresh concurrently".to_owned()
                } else {
                    "refresh".to_owned()
                }
            }
            Op::Build { build, .. } => format!("build side by side as {}", build.temp),
            Op::BuildIndex { index, .. } => format!("build index {}", index.name),
            Op::RecordBuild(build) => format!("record build {}", build.temp),
            Op::Swap { temp, .. } => format!("swap in {}", temp.name),
            Op::RenameIndex { name, .. } => format!("rename index to {name}"),
            Op::DropBuild { temp } => format!("drop unused build {temp}"),
            Op::ForgetBuild { temp } => format!("forget build {temp}"),
            Op::Record(_) => "record".to_owned(),
            Op::Forget => "forget".to_owned(),
        }
    }

    /// What the step changes about an object altered in place, in the plan's words; `None`
    /// for steps that are part of a create, a drop or a recreate.
    pub fn detail(&self) -> Option<String> {
        if let Op::Swap { temp, built, .. } = &self.op {
            return Some(if *built {
                format!("already built side by side as {temp}: swapped in under a brief lock")
            } else {
                format!(
                    "built side by side as {temp} while readers keep the old rows; swapped in \
                     under a brief lock"
                )
            });
        }
        if let Op::Create {
            in_place: Some(why),
            ..
        } = &self.op
        {
            return Some(format!(
                "rebuilt in reconcile's transaction, so readers wait for its build: {why}"
            ));
        }
        if !self.alters() {
            return None;
        }
        match &self.op {
            Op::ReplaceInPlace { added, .. } if added.is_empty() => {
                Some("keeps its columns".to_owned())
            }
            Op::ReplaceInPlace { added, .. } => Some(format!(
                "adds column{} {}",
                if added.len() == 1 { "" } else { "s" },
                added.join(", ")
            )),
            Op::DropIndex { index, why } => why.map(|why| format!("drop index {index} ({why})")),
            Op::CreateIndex {
                index,
                why,
                recreates,
            } => why.map(|why| {
                let verb = if *recreates { "recreate" } else { "create" };
                format!("{verb} index {} ({why})", index.name())
            }),
            Op::Record(_)
            | Op::Forget
            | Op::Drop { .. }
            | Op::Create { .. }
            | Op::Build { .. }
            | Op::BuildIndex { .. }
            | Op::RecordBuild(_)
            | Op::RenameIndex { .. }
            | Op::DropBuild { .. }
            | Op::ForgetBuild { .. } => None,
            _ => Some(self.summary()),
        }
    }

    /// The diff this step shows, if any.
    pub fn diff(&self) -> Option<&str> {
        match &self.op {
            Op::Create { diff, .. } | Op::ReplaceInPlace { diff, .. } | Op::Swap { diff, .. } => {
                diff.as_deref()
            }
            _ => None,
        }
    }

    /// True for a step that fills a materialized view with rows: its time is the build's.
    pub fn builds_data(&self) -> bool {
        matches!(
            self.op,
            Op::Build { .. }
                | Op::Refresh { .. }
                | Op::Create {
                    fill: Fill::AtCreate,
                    ..
                }
        )
    }

    pub fn destroys_data(&self) -> bool {
        matches!(
            self.op,
            Op::Drop {
                destroys_data: true
            }
        )
    }

    /// The statement this step runs; `None` for the state's records, which apply writes
    /// in one batch after the statements.
    pub fn statement(&self) -> Option<Statement> {
        let name = &self.object;
        let (sql, query) = match &self.op {
            Op::Drop { .. } => (ddl::drop(self.kind, name), None),
            Op::Create {
                query,
                options,
                fill,
                ..
            } => {
                let data = match fill {
                    Fill::AtCreate => ddl::Data::With,
                    Fill::None | Fill::Later => ddl::Data::Without,
                };
                let created = ddl::create(self.kind, name, options, &query.text, data);
                (created.sql, embedded(query, created.query_offset))
            }
            Op::ReplaceInPlace { query, options, .. } => {
                let replaced = ddl::replace_view(name, options, &query.text);
                (replaced.sql, embedded(query, replaced.query_offset))
            }
            Op::DropIndex { index, .. } => (ddl::drop_index(name, index), None),
            Op::CreateIndex { index, .. } => match index {
                IndexSource::Declared(index) => (ddl::create_index(name, index), None),
                IndexSource::Applied { sql, .. } => (sql.clone(), None),
            },
            Op::SetOptions { options } => (ddl::set_options(self.kind, name, options), None),
            Op::ResetOptions { keys } => (ddl::reset_options(self.kind, name, keys), None),
            Op::Grant {
                grantee,
                privileges,
            } => (ddl::grant(name, grantee, privileges), None),
            Op::Revoke {
                grantee,
                privileges,
                ..
            } => (ddl::revoke(name, grantee, privileges), None),
            Op::Comment { comment } => (ddl::comment(self.kind, name, comment.as_deref()), None),
            Op::Owner { to, .. } => (ddl::owner(self.kind, name, to), None),
            Op::Refresh { concurrently } => (ddl::refresh(name, *concurrently), None),
            Op::Build {
                build,
                query,
                options,
                ..
            } => {
                let built = ddl::create(
                    Kind::MaterializedView,
                    &build.temp,
                    options,
                    &query.text,
                    ddl::Data::With,
                );
                (built.sql, embedded(query, built.query_offset))
            }
            Op::BuildIndex { temp, index } => (ddl::create_index(temp, index), None),
            Op::Swap { temp, .. } => (ddl::rename(Kind::MaterializedView, temp, &name.name), None),
            Op::RenameIndex { temp, name: to } => (ddl::rename_index(&name.schema, temp, to), None),
            Op::DropBuild { temp } => (ddl::drop(Kind::MaterializedView, temp), None),
            Op::Record(_) | Op::Forget | Op::RecordBuild(_) | Op::ForgetBuild { .. } => {
                return None;
            }
        };
        Some(Statement {
            phase: self.phase(),
            object: name.clone(),
            summary: self.summary(),
            sql,
            query,
            fills: self.builds_data(),
        })
    }
}

fn embedded(query: &DeclaredQuery, offset_chars: usize) -> Option<EmbeddedQuery> {
    query.origin.as_ref().map(|origin| EmbeddedQuery {
        offset_chars,
        text: query.text.clone(),
        origin: origin.clone(),
        shifts: Vec::new(),
    })
}
