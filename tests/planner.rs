//! The planner without a server: one folder per case under `tests/planner/`, holding a
//! project (`viewkeeper.kdl`, `views/*.kdl`) and `catalog.json`, what the database holds.
//! Each case's plan, rendered as Markdown (or why planning failed), is an `insta` snapshot
//! `tests/snapshots/planner__plan@<case>.snap`. Adding a case is adding a folder.
//!
//! `catalog.json` is a [`Catalog`] with every field optional. Two fields the database always
//! holds together are filled in here when left out, so fixtures stay short: a state record's
//! `name` (and a drop record's `object`) is its key, and a record's `query_sha256` is the
//! hash of its `query`, as reconcile writes them.

use std::path::{Path, PathBuf};

use miette::Diagnostic;
use serde_json::Value;
use viewkeeper::catalog::Catalog;
use viewkeeper::plan;
use viewkeeper::project::{Kind, Problems, Project, query_hash};
use viewkeeper::render;

#[test]
fn plan() {
    let cases_dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/planner");
    let mut cases: Vec<PathBuf> = std::fs::read_dir(&cases_dir)
        .expect("tests/planner exists")
        .map(|entry| entry.expect("tests/planner is readable").path())
        .filter(|path| path.join("catalog.json").is_file())
        .collect();
    cases.sort();
    assert!(
        !cases.is_empty(),
        "no case folders in {}",
        cases_dir.display()
    );
    // Every case runs, and the failures are listed together, as `insta::glob!` would.
    let failed: Vec<String> = cases
        .iter()
        .filter_map(|case| {
            let name = case.file_name()?.to_str()?.to_owned();
            let passed = std::panic::catch_unwind(|| {
                insta::with_settings!({
                    snapshot_suffix => name.as_str(),
                    input_file => case.join("catalog.json"),
                    omit_expression => true,
                }, {
                    insta::assert_snapshot!("plan", outcome(case));
                });
            })
            .is_ok();
            (!passed).then_some(name)
        })
        .collect();
    assert!(failed.is_empty(), "cases whose plan changed: {failed:?}");
}

/// The rendered plan for the case in `case`, or why there is none.
fn outcome(case: &Path) -> String {
    // Paths in messages as a user would see them from the repository root (cargo runs
    // integration tests there), not as this machine's absolute paths.
    let root = case
        .strip_prefix(env!("CARGO_MANIFEST_DIR"))
        .unwrap_or(case);
    let project = match Project::load(root) {
        Ok(project) => project,
        Err(problems) => return format!("the project does not load:\n{}", located(&problems)),
    };
    let catalog = read_catalog(&case.join("catalog.json"));
    match plan::plan(&project, &catalog) {
        Ok(plan) => {
            let mut out = Vec::new();
            render::plan_markdown(&plan, &mut out).expect("rendering to memory cannot fail");
            String::from_utf8(out).expect("the rendered plan is UTF-8")
        }
        Err(plan::PlanError::Declarations(problems)) => format!("no plan:\n{}", located(&problems)),
        Err(error) => {
            let mut text = format!("no plan:\n{}", render::plan_problems(&error).join("\n"));
            if let Some(help) = error.help() {
                text.push_str(&format!("\nhelp: {help}"));
            }
            text
        }
    }
}

/// Each problem at its `file:line:col`, with its help.
fn located(problems: &Problems) -> String {
    let mut lines = Vec::new();
    for problem in &problems.problems {
        lines.push(match problem.location() {
            Some(location) => format!("{location}: {}", problem.message),
            None => problem.message.clone(),
        });
        if let Some(help) = problem.help() {
            lines.push(format!("  help: {help}"));
        }
    }
    lines.join("\n")
}

fn read_catalog(path: &Path) -> Catalog {
    let text = std::fs::read_to_string(path)
        .unwrap_or_else(|error| panic!("cannot read {}: {error}", path.display()));
    let mut json: Value = serde_json::from_str(&text)
        .unwrap_or_else(|error| panic!("{} is not JSON: {error}", path.display()));
    fill_derived_fields(&mut json);
    serde_json::from_value(json)
        .unwrap_or_else(|error| panic!("{} is not a catalog: {error}", path.display()))
}

/// Fills in what the state table always derives: the record's name, and its query's hash.
fn fill_derived_fields(json: &mut Value) {
    if let Some(objects) = json.get_mut("state").and_then(Value::as_object_mut) {
        for (name, record) in objects.iter_mut() {
            let Some(record) = record.as_object_mut() else {
                continue;
            };
            record
                .entry("name")
                .or_insert_with(|| Value::String(name.clone()));
            if !record.contains_key("query_sha256") {
                let kind = match record.get("kind").and_then(Value::as_str) {
                    Some("materialized-view") => Kind::MaterializedView,
                    _ => Kind::View,
                };
                let query = record.get("query").and_then(Value::as_str).unwrap_or("");
                record.insert(
                    "query_sha256".to_owned(),
                    Value::String(query_hash(kind, query)),
                );
            }
        }
    }
    if let Some(drops) = json.get_mut("drops").and_then(Value::as_object_mut) {
        for (name, record) in drops.iter_mut() {
            if let Some(record) = record.as_object_mut() {
                record
                    .entry("object")
                    .or_insert_with(|| Value::String(name.clone()));
            }
        }
    }
}
