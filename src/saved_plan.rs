//! Saved plans (`plan --out`, `reconcile --plan`): a plan is applied exactly as reviewed, or
//! not at all. Pure: the file is read and written at the command-line edge.
//!
//! A saved plan carries a fingerprint of everything it was computed from: the declaration
//! files, the shape of every user relation (columns and types), and, per object, what the
//! catalog and the state said about it. `reconcile --plan` recomputes the fingerprint under
//! its lock and refuses when anything differs, then checks that the plan it would make is
//! statement for statement the saved one.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::catalog::Catalog;
use crate::plan::{Phase, Plan, Statement, Step};
use crate::project::Project;

/// What a plan was computed from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Fingerprint {
    /// Digest of every declaration file (path and text), the search path and the state schema.
    pub declarations: String,
    /// Digest of the columns of every user relation (a migration changes it).
    pub schema: String,
    /// Digest of what the catalog and the state hold about each object the plan looked at.
    pub objects: BTreeMap<String, String>,
}

/// The fingerprint of `project` and `catalog`; `schema` is
/// [`crate::catalog::schema_fingerprint`] read in the same transaction.
pub fn fingerprint(project: &Project, catalog: &Catalog, schema: String) -> Fingerprint {
    let mut files: BTreeMap<String, &str> = BTreeMap::new();
    for declaration in project.declarations.values() {
        files.insert(
            declaration.file.path.display().to_string(),
            &declaration.file.text,
        );
        let origin = &declaration.query.origin.file;
        files.insert(origin.path.display().to_string(), &origin.text);
    }
    let mut declarations = Sha256::new();
    // The session's search_path decides what unqualified names read, and the state schema
    // what is managed: a plan reviewed under other settings is not the same plan.
    declarations.update(
        format!(
            "{:?}\0{}\0",
            project.config.search_path, project.config.state_schema
        )
        .as_bytes(),
    );
    for (path, text) in &files {
        declarations.update(format!("{path}\0{}\0{text}\0", text.len()).as_bytes());
    }
    let mut objects: BTreeMap<String, String> = BTreeMap::new();
    let state = catalog.state.as_ref();
    let names = catalog
        .relations
        .keys()
        .chain(state.into_iter().flat_map(|state| state.objects.keys()));
    for name in names {
        let described = format!(
            "{:?}|{:?}|{:?}|{:?}",
            catalog.relations.get(name),
            state.and_then(|state| state.objects.get(name)),
            catalog.normalised.get(name),
            catalog.reads.get(name),
        );
        objects.insert(name.to_string(), hex(&Sha256::digest(described.as_bytes())));
    }
    Fingerprint {
        declarations: hex(&declarations.finalize()),
        schema,
        objects,
    }
}

/// What changed between the fingerprint a plan was made from and the one now, in words;
/// empty when nothing did.
pub fn differences(saved: &Fingerprint, now: &Fingerprint) -> Vec<String> {
    let mut changes = Vec::new();
    if saved.declarations != now.declarations {
        changes.push(
            "the declaration files changed (or the search-path or state-schema in viewkeeper.kdl)"
                .to_owned(),
        );
    }
    if saved.schema != now.schema {
        changes.push("the columns of a table or view changed (a migration ran?)".to_owned());
    }
    for (name, digest) in &saved.objects {
        match now.objects.get(name) {
            None => changes.push(format!("{name} is gone")),
            Some(current) if current != digest => changes.push(format!("{name} changed")),
            Some(_) => {}
        }
    }
    for name in now.objects.keys() {
        if !saved.objects.contains_key(name) {
            changes.push(format!("{name} appeared"));
        }
    }
    changes
}

/// The parts of a saved plan file that `reconcile --plan` uses.
#[derive(Debug, Clone, Deserialize)]
pub struct SavedPlan {
    pub format_version: u32,
    pub fingerprint: Fingerprint,
    pub statements: Vec<SavedStatement>,
    /// Every step, state records included.
    #[serde(default)]
    pub steps: Vec<SavedStep>,
}

#[derive(Debug, Clone, Deserialize)]
pub struct SavedStep {
    pub phase: Phase,
    pub object: String,
    pub summary: String,
    #[serde(default)]
    pub sql: Option<String>,
}

#[derive(Debug, Clone, Deserialize)]
pub struct SavedStatement {
    pub phase: Phase,
    pub object: String,
    pub sql: String,
}

/// Why a saved plan is not applied.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error, miette::Diagnostic)]
#[non_exhaustive]
pub enum SavedPlanError {
    #[error("the database changed since the plan was made: {}; plan again", .0.join(", "))]
    #[diagnostic(code(viewkeeper::stale_plan))]
    Stale(Vec<String>),
    #[error(
        "the saved plan does not match what the declarations produce ({0}); was the file edited? plan again"
    )]
    #[diagnostic(code(viewkeeper::edited_plan))]
    Edited(String),
}

/// Checks that `plan`, computed now from `now`, is the saved plan, made from the same state.
pub fn check(saved: &SavedPlan, now: &Fingerprint, plan: &Plan) -> Result<(), SavedPlanError> {
    let changes = differences(&saved.fingerprint, now);
    if !changes.is_empty() {
        return Err(SavedPlanError::Stale(changes));
    }
    check_steps(saved, plan, false)
}

/// Checks that `plan` is the saved plan, step by step; `builds_done` leaves out the
/// side-by-side builds, which this reconcile ran and committed before the rest.
pub fn check_steps(
    saved: &SavedPlan,
    plan: &Plan,
    builds_done: bool,
) -> Result<(), SavedPlanError> {
    let keep = |phase: Phase| !(builds_done && phase == Phase::Build);
    let statements: Vec<Statement> = plan
        .statements()
        .into_iter()
        .filter(|statement| keep(statement.phase))
        .collect();
    let saved_statements: Vec<&SavedStatement> = saved
        .statements
        .iter()
        .filter(|statement| keep(statement.phase))
        .collect();
    if saved_statements.len() != statements.len() {
        return Err(SavedPlanError::Edited(format!(
            "{} statements saved, {} planned",
            saved_statements.len(),
            statements.len()
        )));
    }
    for (index, (saved, planned)) in saved_statements.iter().zip(&statements).enumerate() {
        if saved.sql != planned.sql || saved.object != planned.object.to_string() {
            return Err(SavedPlanError::Edited(format!(
                "statement {} differs",
                index + 1
            )));
        }
    }
    let steps: Vec<&Step> = plan
        .steps
        .iter()
        .filter(|step| keep(step.phase()))
        .collect();
    let saved_steps: Vec<&SavedStep> = saved.steps.iter().filter(|step| keep(step.phase)).collect();
    if saved_steps.len() != steps.len() {
        return Err(SavedPlanError::Edited(format!(
            "{} steps saved, {} planned",
            saved_steps.len(),
            steps.len()
        )));
    }
    for (index, (saved, planned)) in saved_steps.iter().zip(&steps).enumerate() {
        let sql = planned.statement().map(|statement| statement.sql);
        if saved.object != planned.object.to_string()
            || saved.summary != planned.summary()
            || saved.sql != sql
        {
            return Err(SavedPlanError::Edited(format!(
                "step {} differs",
                index + 1
            )));
        }
    }
    Ok(())
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}
