//! Destroying needs intent: the project folder is found as git finds its repository, and an
//! empty project does not turn into "drop everything".

mod support;

use std::path::Path;

use support::{TestDb, exists, project, reconcile, run, test_db};

const VIEWS: &str = "view \"a\" {\n    query \"SELECT 1 AS x\"\n}\n\
                     materialized-view \"m\" {\n    query \"SELECT 2 AS y\"\n}\n";

/// The binary run in `cwd` without `--project`.
fn run_in(db: &TestDb, cwd: &Path, args: &[&str]) -> (i32, String, String) {
    let output = assert_cmd::Command::cargo_bin("viewkeeper")
        .unwrap_or_else(|err| panic!("could not find the viewkeeper binary: {err}"))
        .current_dir(cwd)
        .env("DATABASE_URL", &db.url)
        .env("NO_COLOR", "1")
        .args(args)
        .output()
        .unwrap_or_else(|err| panic!("could not run viewkeeper: {err}"));
    (
        output.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

#[test]
fn the_project_is_found_from_a_subfolder() {
    let db = test_db();
    let dir = project(&[
        ("viewkeeper.kdl", "lock-timeout \"5s\"\n"),
        ("views/a.kdl", VIEWS),
        ("src/deep/er/.keep", ""),
    ]);
    let sub = dir.path().join("src/deep/er");
    let (code, stdout, stderr) = run_in(&db, &sub, &["reconcile"]);
    assert_eq!(code, 0, "{stdout}{stderr}");
    assert!(exists(&db, "a") && exists(&db, "m"));
    let (code, stdout, stderr) = run_in(&db, &sub, &["plan", "--detailed-exitcode"]);
    assert_eq!(code, 0, "in sync from the subfolder too:\n{stdout}{stderr}");
}

#[test]
fn without_a_project_database_commands_stop_and_say_how_to_start_one() {
    let db = test_db();
    let dir = project(&[("views/a.kdl", VIEWS)]);
    reconcile(&db, dir.path());
    // A folder with no viewkeeper.kdl anywhere above (temporary folders have none).
    let empty = tempfile::tempdir().expect("temp dir");
    std::fs::create_dir_all(empty.path().join("views")).expect("views");
    for command in [&["plan"][..], &["reconcile"], &["status"]] {
        let (code, stdout, stderr) = run_in(&db, empty.path(), command);
        assert_eq!(code, 1, "{command:?}:\n{stdout}{stderr}");
        assert!(stderr.contains("no viewkeeper.kdl"), "{stderr}");
        assert!(stderr.contains("viewkeeper init"), "{stderr}");
    }
    assert!(exists(&db, "a") && exists(&db, "m"), "nothing was dropped");
    // Offline commands still read the current folder.
    let (code, stdout, stderr) = run_in(&db, empty.path(), &["check"]);
    assert_eq!(code, 0, "{stdout}{stderr}");
}

#[test]
fn an_empty_project_may_not_drop_managed_objects_without_allow_drop() {
    let db = test_db();
    let dir = project(&[("views/a.kdl", VIEWS)]);
    reconcile(&db, dir.path());
    std::fs::remove_file(dir.path().join("views/a.kdl")).expect("remove declarations");
    for command in [&["plan"][..], &["reconcile"]] {
        let (code, stdout, stderr) = run(&db, dir.path(), command);
        assert_eq!(code, 1, "{command:?}:\n{stdout}{stderr}");
        assert!(
            stderr.contains("no declarations found in")
                && stderr.contains("refusing to drop 2 managed objects"),
            "{stderr}"
        );
        assert!(stderr.contains("--allow-drop"), "{stderr}");
    }
    assert!(exists(&db, "a") && exists(&db, "m"));

    let (code, stdout, stderr) = run(&db, dir.path(), &["plan", "--allow-drop"]);
    assert_eq!(code, 0, "{stdout}{stderr}");
    assert!(stdout.contains("2 to drop"), "{stdout}");
    let (code, stdout, stderr) = run(&db, dir.path(), &["reconcile", "--allow-drop"]);
    assert_eq!(code, 0, "{stdout}{stderr}");
    assert!(!exists(&db, "a") && !exists(&db, "m"));
}

#[test]
fn dropping_a_plain_view_that_is_no_longer_declared_needs_no_flag() {
    let db = test_db();
    let dir = project(&[("views/a.kdl", VIEWS)]);
    reconcile(&db, dir.path());
    std::fs::write(
        dir.path().join("views/a.kdl"),
        "materialized-view \"m\" {\n    query \"SELECT 2 AS y\"\n}\n",
    )
    .expect("write");
    reconcile(&db, dir.path());
    assert!(!exists(&db, "a") && exists(&db, "m"));
}

#[test]
fn dropping_a_materialized_view_that_holds_data_needs_intent() {
    let db = test_db();
    let dir = project(&[("views/a.kdl", VIEWS)]);
    reconcile(&db, dir.path());
    std::fs::write(
        dir.path().join("views/a.kdl"),
        "view \"a\" {\n    query \"SELECT 1 AS x\"\n}\n",
    )
    .expect("write");
    let (code, stdout, _) = run(&db, dir.path(), &["plan", "--detailed-exitcode"]);
    assert_eq!(code, 2);
    assert!(stdout.contains("destroys data"), "{stdout}");
    let (_, json, _) = run(&db, dir.path(), &["plan", "--format", "json"]);
    let json: serde_json::Value = serde_json::from_str(&json).expect("json");
    let drop = &json["actions"][0];
    assert_eq!(drop["object"], "public.m");
    assert_eq!(drop["destroys_data"], true, "{json}");

    // Without a terminal nobody can answer: refused, nothing changed.
    let (code, stdout, stderr) = run(&db, dir.path(), &["reconcile"]);
    assert_eq!(code, 1, "{stdout}{stderr}");
    assert!(
        stderr.contains("refusing to drop materialized views that hold data: public.m"),
        "{stderr}"
    );
    assert!(stderr.contains("--allow-drop"), "{stderr}");
    assert!(exists(&db, "m"));

    // On a terminal, anything but `yes` keeps the data.
    let (code, output) = reconcile_on_a_terminal(&db, dir.path(), "no\n");
    assert_ne!(code, 0, "{output}");
    assert!(
        output.contains("public.m"),
        "the prompt lists the loss:\n{output}"
    );
    assert!(exists(&db, "m"));
    let (code, output) = reconcile_on_a_terminal(&db, dir.path(), "yes\n");
    assert_eq!(code, 0, "{output}");
    assert!(!exists(&db, "m"));
}

#[test]
fn allow_drop_drops_data_and_a_rebuild_needs_no_flag() {
    let db = test_db();
    let dir = project(&[("views/a.kdl", VIEWS)]);
    reconcile(&db, dir.path());
    // A changed query rebuilds and refills: no data is lost, no flag needed.
    std::fs::write(
        dir.path().join("views/a.kdl"),
        VIEWS.replace("SELECT 2 AS y", "SELECT 3 AS y"),
    )
    .expect("write");
    let (_, stdout, _) = run(&db, dir.path(), &["plan"]);
    assert!(!stdout.contains("destroys data"), "{stdout}");
    reconcile(&db, dir.path());
    assert_eq!(db.scalar_i64("SELECT y FROM m"), 3);

    std::fs::write(
        dir.path().join("views/a.kdl"),
        "view \"a\" {\n    query \"SELECT 1 AS x\"\n}\n",
    )
    .expect("write");
    let (code, stdout, stderr) = run(&db, dir.path(), &["reconcile", "--allow-drop"]);
    assert_eq!(code, 0, "{stdout}{stderr}");
    assert!(!exists(&db, "m"));
}

/// Runs `reconcile` under a pseudo-terminal (util-linux `script`), typing `answer`.
fn reconcile_on_a_terminal(db: &TestDb, dir: &Path, answer: &str) -> (i32, String) {
    let binary = assert_cmd::cargo::cargo_bin("viewkeeper");
    let command = format!("{} --project {} reconcile", binary.display(), dir.display());
    let output = assert_cmd::Command::new("script")
        .args(["-qec", &command, "/dev/null"])
        .env("DATABASE_URL", &db.url)
        .env("NO_COLOR", "1")
        .write_stdin(answer)
        .timeout(std::time::Duration::from_secs(60))
        .output()
        .unwrap_or_else(|err| panic!("could not run script(1): {err}"));
    (
        output.status.code().unwrap_or(-1),
        format!(
            "{}{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        ),
    )
}
