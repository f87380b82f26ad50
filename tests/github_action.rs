//! scripts/github-action (the logic of action.yml) against a real database, with
//! GITHUB_STEP_SUMMARY pointed at a temporary file.

mod support;

use std::path::Path;
use std::process::Command;

use support::{TestDb, project, reconcile, test_db};

/// Runs the action's script: exit code, and what it wrote to the job summary.
fn action(db: &TestDb, dir: &Path, fail_on_drift: bool) -> (i32, String) {
    let summary = tempfile::NamedTempFile::new().expect("summary file");
    let output = Command::new(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/scripts/github-action"
    ))
    .env("VIEWKEEPER_BIN", env!("CARGO_BIN_EXE_viewkeeper"))
    .env("VIEWKEEPER_PROJECT", dir)
    .env("DATABASE_URL", &db.url)
    .env("GITHUB_STEP_SUMMARY", summary.path())
    .env("VIEWKEEPER_FAIL_ON_DRIFT", fail_on_drift.to_string())
    .env("NO_COLOR", "1")
    .output()
    .expect("run scripts/github-action");
    let written = std::fs::read_to_string(summary.path()).expect("read the summary");
    eprintln!("{}", String::from_utf8_lossy(&output.stderr));
    (output.status.code().unwrap_or(-1), written)
}

#[test]
fn the_action_writes_the_plan_to_the_summary_and_fails_on_drift_when_asked() {
    let db = test_db();
    db.batch("CREATE TABLE items (id int PRIMARY KEY)");
    let dir = project(&[(
        "views/items.kdl",
        "view \"item_ids\" {\n    depends-on \"items\"\n    query \"SELECT id FROM items\"\n}\n",
    )]);

    let (code, summary) = action(&db, dir.path(), false);
    assert_eq!(code, 0, "drift alone does not fail by default:\n{summary}");
    assert!(summary.contains("public.item_ids"), "{summary}");
    assert!(summary.contains("create"), "{summary}");

    let (code, _) = action(&db, dir.path(), true);
    assert_eq!(code, 2, "fail-on-drift");

    reconcile(&db, dir.path());
    let (code, summary) = action(&db, dir.path(), true);
    assert_eq!(code, 0, "in sync:\n{summary}");
    assert!(!summary.contains("create"), "{summary}");

    std::fs::write(
        dir.path().join("views/items.kdl"),
        "view \"item_ids\" {\n    query\n}\n",
    )
    .expect("break the declaration");
    let (code, summary) = action(&db, dir.path(), false);
    assert_eq!(code, 1);
    assert!(
        summary.contains("`viewkeeper check` found invalid declarations"),
        "{summary}"
    );
}
