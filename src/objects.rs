//! The plain data the layers share, with no IO: what kind a relation is, who a grant is
//! for, what viewkeeper recorded about the objects it manages, and the hash it records.
//! Declarations ([`crate::project`]), the catalog, the planner and the state tables all
//! speak these types; reading and writing them is [`crate::state`]'s job.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::name::QualifiedName;

/// What kind of relation a declaration makes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Kind {
    View,
    MaterializedView,
}

impl Kind {
    /// The words SQL uses for it (`DROP MATERIALIZED VIEW …`).
    pub fn sql(self) -> &'static str {
        match self {
            Kind::View => "VIEW",
            Kind::MaterializedView => "MATERIALIZED VIEW",
        }
    }

    /// The KDL node name, also used in plans and JSON.
    pub fn keyword(self) -> &'static str {
        match self {
            Kind::View => "view",
            Kind::MaterializedView => "materialized-view",
        }
    }

    /// Human words for messages.
    pub fn words(self) -> &'static str {
        match self {
            Kind::View => "view",
            Kind::MaterializedView => "materialized view",
        }
    }
}

/// Who a grant is for. Serialised as it is written in a grant: `PUBLIC` or the role name.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(from = "String", into = "String")]
pub enum Grantee {
    Public,
    Role(String),
}

/// `PUBLIC` in any case is everyone, as in a declaration (no role may be named `public`).
impl From<String> for Grantee {
    fn from(text: String) -> Self {
        if text.eq_ignore_ascii_case("public") {
            Grantee::Public
        } else {
            Grantee::Role(text)
        }
    }
}

impl From<Grantee> for String {
    fn from(grantee: Grantee) -> Self {
        grantee.to_string()
    }
}

impl std::fmt::Display for Grantee {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Grantee::Public => f.write_str("PUBLIC"),
            Grantee::Role(role) => f.write_str(role),
        }
    }
}

/// What viewkeeper recorded about one object the last time it applied it. Deserialisable,
/// so planner tests (`tests/planner/`) can state records as JSON.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ManagedObject {
    pub name: QualifiedName,
    pub kind: Kind,
    /// The declared query as applied (normalised text).
    pub query: String,
    pub query_sha256: String,
    /// `pg_get_viewdef` right after viewkeeper applied it: a different live definition means
    /// someone changed the object outside viewkeeper.
    pub applied_definition: String,
    #[serde(default)]
    pub applied_indexes: Vec<AppliedIndex>,
    #[serde(default)]
    pub applied_at: DateTime<Utc>,
}

/// An index as viewkeeper created it: the statement it ran and what PostgreSQL reported.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AppliedIndex {
    pub name: String,
    pub sql: String,
    pub definition: String,
}

/// Everything in the state tables, by name. Deserialised (in planner tests) from the map of
/// records alone.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(from = "BTreeMap<QualifiedName, ManagedObject>")]
pub struct State {
    pub objects: BTreeMap<QualifiedName, ManagedObject>,
    /// Side-by-side copies, by their temporary name.
    pub builds: BTreeMap<QualifiedName, SideBuild>,
    /// How long the last successful build or refresh of each object took.
    pub last_builds: BTreeMap<QualifiedName, std::time::Duration>,
}

impl From<BTreeMap<QualifiedName, ManagedObject>> for State {
    fn from(objects: BTreeMap<QualifiedName, ManagedObject>) -> State {
        State {
            objects,
            ..State::default()
        }
    }
}

/// A new version of a materialized view, built beside the old one under `temp` (same
/// schema) with its indexes, to be renamed to `target` by a short swap.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SideBuild {
    pub temp: QualifiedName,
    pub target: QualifiedName,
    /// [`query_hash`] of the query it was built from.
    pub query_sha256: String,
    pub indexes: Vec<BuiltIndex>,
}

/// An index of a side-by-side copy: built as `temp`, renamed to `name` by the swap.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BuiltIndex {
    pub name: String,
    pub temp: String,
    /// The declared index's statement (on the target), to tell a changed declaration.
    pub sql: String,
}

/// One object's new record, written after its DDL ran.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    pub name: QualifiedName,
    pub kind: Kind,
    pub query: String,
    /// `(index name, statement)` for each declared index.
    pub indexes: Vec<(String, String)>,
}

/// SHA-256 of a declared query, stored to detect changes without comparing long texts.
pub fn query_hash(kind: Kind, query: &str) -> String {
    let mut hasher = Sha256::new();
    hasher.update(kind.keyword().as_bytes());
    hasher.update(b"\n");
    hasher.update(query.as_bytes());
    format!("{:x}", hasher.finalize())
}
