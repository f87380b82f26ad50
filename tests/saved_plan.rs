//! A saved plan is applied exactly, or not at all (`plan --out`, `reconcile --plan`).

mod support;

use support::{exists, project, reconcile, run, test_db};

const FIRST: &str = "materialized-view \"m\" {\n    depends-on \"t\"\n    query \"SELECT a FROM t\"\n}\n\
                     view \"v\" {\n    depends-on \"m\"\n    query \"SELECT a FROM m\"\n}\n";

fn saved_statements(path: &std::path::Path) -> Vec<String> {
    let text = std::fs::read_to_string(path).expect("plan file");
    let json: serde_json::Value = serde_json::from_str(&text).expect("json");
    assert_eq!(json["format_version"], 1);
    assert!(json["fingerprint"]["schema"].is_string(), "{json}");
    json["statements"]
        .as_array()
        .expect("statements")
        .iter()
        .map(|s| s["sql"].as_str().expect("sql").to_owned())
        .collect()
}

#[test]
fn a_saved_plan_is_applied_as_saved() {
    let db = test_db();
    db.batch("CREATE TABLE t (a int); INSERT INTO t VALUES (1), (2)");
    let dir = project(&[("views/v.kdl", FIRST)]);
    let file = dir.path().join("plan.json");
    let (code, stdout, stderr) = run(
        &db,
        dir.path(),
        &[
            "plan",
            "--out",
            file.to_str().expect("path"),
            "--detailed-exitcode",
        ],
    );
    assert_eq!(code, 2, "{stdout}{stderr}");
    let statements = saved_statements(&file);
    assert!(
        statements
            .iter()
            .any(|s| s.starts_with("CREATE MATERIALIZED VIEW"))
    );
    let (code, stdout, stderr) = run(
        &db,
        dir.path(),
        &["reconcile", "--plan", file.to_str().expect("path")],
    );
    assert_eq!(code, 0, "{stdout}{stderr}");
    assert_eq!(db.scalar_i64("SELECT count(*) FROM v"), 2);
    let (code, _, _) = run(&db, dir.path(), &["plan", "--detailed-exitcode"]);
    assert_eq!(code, 0);
    // Applied once: the same file now describes a database that has moved on.
    let (code, _, stderr) = run(
        &db,
        dir.path(),
        &["reconcile", "--plan", file.to_str().expect("path")],
    );
    assert_eq!(code, 1);
    assert!(
        stderr.contains("the database changed since the plan was made"),
        "{stderr}"
    );
}

#[test]
fn a_stale_saved_plan_is_refused_and_nothing_changes() {
    let db = test_db();
    db.batch("CREATE TABLE t (a int, b int); INSERT INTO t VALUES (1, 1)");
    let dir = project(&[("views/v.kdl", FIRST)]);
    reconcile(&db, dir.path());
    std::fs::write(
        dir.path().join("views/v.kdl"),
        FIRST.replace("SELECT a FROM m", "SELECT a, a * 2 AS twice FROM m"),
    )
    .expect("write");
    let file = dir.path().join("plan.json");
    let path = file.to_str().expect("path");
    let (code, _, stderr) = run(&db, dir.path(), &["plan", "--out", path]);
    assert_eq!(code, 0, "{stderr}");

    // A migration runs in between.
    db.batch("ALTER TABLE t DROP COLUMN b");
    let before = db.scalar_string("SELECT pg_get_viewdef('v'::regclass)");
    let (code, stdout, stderr) = run(&db, dir.path(), &["reconcile", "--plan", path]);
    assert_eq!(code, 1, "{stdout}{stderr}");
    assert!(
        stderr.contains("the database changed since the plan was made")
            && stderr.contains("columns of a table or view changed")
            && stderr.contains("plan again"),
        "{stderr}"
    );
    assert_eq!(
        db.scalar_string("SELECT pg_get_viewdef('v'::regclass)"),
        before
    );

    // Someone drops the view.
    let (code, _, _) = run(&db, dir.path(), &["plan", "--out", path]);
    assert_eq!(code, 0);
    db.batch("DROP VIEW v");
    let (code, _, stderr) = run(&db, dir.path(), &["reconcile", "--plan", path]);
    assert_eq!(code, 1);
    assert!(stderr.contains("public.v"), "{stderr}");

    // The declarations change after the plan was made.
    let (code, _, _) = run(&db, dir.path(), &["plan", "--out", path]);
    assert_eq!(code, 0);
    std::fs::write(dir.path().join("views/v.kdl"), FIRST).expect("write");
    let (code, _, stderr) = run(&db, dir.path(), &["reconcile", "--plan", path]);
    assert_eq!(code, 1);
    assert!(stderr.contains("declaration files changed"), "{stderr}");
    assert!(!exists(&db, "v"), "nothing was applied");
}

#[test]
fn an_edited_saved_plan_is_refused() {
    let db = test_db();
    db.batch("CREATE TABLE t (a int); CREATE TABLE victim (x int)");
    let dir = project(&[("views/v.kdl", FIRST)]);
    let file = dir.path().join("plan.json");
    let path = file.to_str().expect("path");
    let (code, _, _) = run(&db, dir.path(), &["plan", "--out", path]);
    assert_eq!(code, 0);
    let text = std::fs::read_to_string(&file).expect("read");
    // The SQL of a statement, of a step, or a step taken away: each is refused.
    for list in ["statements", "steps", "steps-removed"] {
        let mut json: serde_json::Value = serde_json::from_str(&text).expect("json");
        if list == "steps-removed" {
            let steps = json["steps"].as_array_mut().expect("steps");
            assert!(steps.len() > 1, "{text}");
            steps.pop();
        } else {
            json[list][0]["sql"] = serde_json::Value::from("DROP TABLE victim");
        }
        std::fs::write(&file, json.to_string()).expect("write");
        let (code, _, stderr) = run(&db, dir.path(), &["reconcile", "--plan", path]);
        assert_eq!(code, 1, "{list}");
        assert!(stderr.contains("does not match"), "{list}: {stderr}");
        assert!(exists(&db, "victim"));
        assert!(!exists(&db, "m"));
    }
}

#[test]
fn a_saved_plan_that_destroys_data_still_needs_allow_drop() {
    let db = test_db();
    db.batch("CREATE TABLE t (a int); INSERT INTO t VALUES (1)");
    let dir = project(&[("views/v.kdl", FIRST)]);
    reconcile(&db, dir.path());
    std::fs::write(
        dir.path().join("views/v.kdl"),
        "view \"w\" {\n    depends-on \"t\"\n    query \"SELECT a FROM t\"\n}\n",
    )
    .expect("write");
    let file = dir.path().join("plan.json");
    let path = file.to_str().expect("path");
    let (code, _, stderr) = run(&db, dir.path(), &["plan", "--out", path]);
    assert_eq!(code, 0, "{stderr}");
    let (code, _, stderr) = run(&db, dir.path(), &["reconcile", "--plan", path]);
    assert_eq!(code, 1);
    assert!(stderr.contains("hold data"), "{stderr}");
    assert!(exists(&db, "m"));
    let (code, stdout, stderr) = run(
        &db,
        dir.path(),
        &["reconcile", "--plan", path, "--allow-drop"],
    );
    assert_eq!(code, 0, "{stdout}{stderr}");
    assert!(!exists(&db, "m") && exists(&db, "w"));
}

/// The search path decides what an unqualified name reads: a plan reviewed under one is
/// not applied under another, though its statements read the same.
#[test]
fn a_saved_plan_is_refused_after_the_search_path_changed() {
    let db = test_db();
    db.batch(
        "CREATE TABLE t (a int); INSERT INTO t VALUES (1);
         CREATE SCHEMA other; CREATE TABLE other.t (a int); INSERT INTO other.t VALUES (1), (2)",
    );
    let dir = project(&[
        ("viewkeeper.kdl", "search-path \"public\"\n"),
        (
            "views/v.kdl",
            "view \"v\" {\n    query \"SELECT a FROM t\"\n}\n",
        ),
    ]);
    let file = dir.path().join("plan.json");
    let path = file.to_str().expect("path");
    let (code, stdout, stderr) = run(&db, dir.path(), &["plan", "--out", path]);
    assert_eq!(code, 0, "{stdout}{stderr}");
    std::fs::write(
        dir.path().join("viewkeeper.kdl"),
        "search-path \"other, public\"\n",
    )
    .expect("write");
    let (code, stdout, stderr) = run(&db, dir.path(), &["reconcile", "--plan", path]);
    assert_eq!(code, 1, "{stdout}{stderr}");
    assert!(
        stderr.contains("the database changed since the plan was made"),
        "{stderr}"
    );
    assert!(!exists(&db, "public.v"));
}
