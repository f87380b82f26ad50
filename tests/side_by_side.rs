//! Issue 9, side-by-side rebuilds: a materialized view whose query changed is built under a
//! temporary name while the old one keeps serving, then swapped in by a short transaction
//! that also rebuilds the views above it and reapplies grants, comment and indexes. A
//! build interrupted by kill -9 or a swap that gives up on a reader leaves only a recorded
//! copy, which the next reconcile swaps in without building again.
//!
//! Each test has a database of its own; roles are cluster-wide, created idempotently.

mod support;

use std::path::Path;
use std::time::Duration;

use support::{TestDb, ensure_role, eventually, exists, oid, project, reconcile, run, test_db};

/// An MV with a unique index, a grant and a comment; a view on it and a view on that.
fn chain(totals_query: &str, settings: &str) -> Vec<(&'static str, String)> {
    vec![
        ("viewkeeper.kdl", format!("lock-timeout \"1s\"\n{settings}")),
        (
            "views/chain.kdl",
            format!(
                r#"
materialized-view "public.totals" {{
    query "{totals_query}"
    index "cat" unique=#true
    grant "SELECT" to="vk_reporting"
    comment "totals per category"
}}
view "public.report" {{
    query "SELECT cat, total FROM totals"
    grant "SELECT" to="vk_reporting"
}}
view "public.top" {{
    query "SELECT cat FROM report WHERE total > 100"
}}
"#
            ),
        ),
    ]
}

const FIRST: &str = "SELECT cat, sum(amt) AS total FROM items GROUP BY cat";
const SECOND: &str = "SELECT cat, sum(amt) AS total, count(*) AS n FROM items GROUP BY cat";

fn items_db() -> TestDb {
    let db = test_db();
    db.batch(
        "CREATE TABLE items (id integer PRIMARY KEY, cat integer NOT NULL, amt integer NOT NULL);
         INSERT INTO items SELECT i, i % 5, i FROM generate_series(1, 1000) AS i;",
    );
    ensure_role(&db, "vk_reporting");
    db
}

fn write(dir: &Path, files: &[(&str, String)]) {
    for (path, text) in files {
        std::fs::write(dir.join(path), text).expect("write a project file");
    }
}

fn setup(settings: &str) -> (TestDb, tempfile::TempDir) {
    let db = items_db();
    let files = chain(FIRST, settings);
    let borrowed: Vec<(&str, &str)> = files.iter().map(|(p, t)| (*p, t.as_str())).collect();
    let dir = project(&borrowed);
    reconcile(&db, dir.path());
    (db, dir)
}

/// Copies of side-by-side builds in the database (by the temporary name's prefix).
fn copies(db: &TestDb) -> i64 {
    db.scalar_i64(
        "SELECT count(*) FROM pg_class WHERE relkind = 'm' AND relname LIKE 'viewkeeper\\_build\\_%'",
    )
}

fn recorded_builds(db: &TestDb) -> i64 {
    db.scalar_i64("SELECT count(*) FROM viewkeeper.side_build")
}

/// What the swapped-in view must have: new column, renamed unique index, grant, comment,
/// the views above it, and every object managed in sync.
fn assert_swapped_in(db: &TestDb, dir: &Path) {
    assert_eq!(db.scalar_i64("SELECT sum(n) FROM totals"), 1000);
    assert_eq!(
        db.scalar_i64(
            "SELECT count(*) FROM pg_indexes WHERE tablename = 'totals' AND indexname = 'totals_cat_key'"
        ),
        1,
        "the copy's index is renamed to the declared name"
    );
    assert_eq!(
        db.scalar_string("SELECT obj_description('totals'::regclass, 'pg_class')")
            .as_deref(),
        Some("totals per category")
    );
    for relation in ["totals", "report"] {
        assert_eq!(
            db.scalar_i64(&format!(
                "SELECT has_table_privilege('vk_reporting', '{relation}', 'SELECT')::int"
            )),
            1,
            "grant on {relation}"
        );
    }
    assert_eq!(db.scalar_i64("SELECT count(*) FROM top"), 5);
    assert_eq!(copies(db), 0, "no copy is left");
    assert_eq!(recorded_builds(db), 0, "no build is left recorded");
    let (code, stdout, stderr) = run(db, dir, &["plan", "--detailed-exitcode"]);
    assert_eq!(code, 0, "plan is clean afterwards:\n{stdout}{stderr}");
}

#[test]
fn a_changed_materialized_view_is_built_beside_the_old_one_and_swapped_in() {
    let (db, dir) = setup("");
    write(dir.path(), &chain(SECOND, ""));
    let (code, stdout, _) = run(&db, dir.path(), &["plan", "--detailed-exitcode"]);
    assert_eq!(code, 2, "{stdout}");
    assert!(
        stdout.contains("built side by side as public.viewkeeper_build_"),
        "{stdout}"
    );
    // Its size is read (only for what may be rebuilt): the plan says what the copy needs.
    assert!(
        stdout.contains("the copy needs about"),
        "the size of the rebuilt materialized view:\n{stdout}"
    );
    assert_eq!(copies(&db), 0, "plan builds nothing");

    let stdout = reconcile(&db, dir.path());
    assert!(stdout.contains("build side by side"), "{stdout}");
    assert_swapped_in(&db, dir.path());
}

/// A reader holds the chain while reconcile runs: the build goes ahead beside it; the swap
/// gives up after lock-timeout, naming the reader, and leaves the old version serving and
/// the copy recorded. Once the reader is gone, the next reconcile swaps the same copy in.
#[test]
fn a_swap_that_gives_up_on_a_reader_keeps_the_copy_for_the_next_reconcile() {
    let (db, dir) = setup("");
    write(dir.path(), &chain(SECOND, ""));
    let reader = db.second_session();
    db.block_on(async {
        reader
            .batch_execute("SET application_name = 'dashboard'; BEGIN; SELECT count(*) FROM top;")
            .await
    })
    .expect("reader holds the chain");

    let (code, stdout, stderr) = run(&db, dir.path(), &["reconcile"]);
    assert_eq!(code, 1, "the swap must give up:\n{stdout}{stderr}");
    assert!(stderr.contains("dashboard"), "names the reader:\n{stderr}");
    assert!(stderr.contains("lock-timeout"), "{stderr}");
    // It says what it leaves: not "nothing was changed", but the copy, by name.
    assert!(!stderr.contains("nothing was changed"), "{stderr}");
    assert!(
        stderr.contains("the declared objects are unchanged")
            && stderr.contains("public.viewkeeper_build_"),
        "{stderr}"
    );
    assert_eq!(copies(&db), 1, "the copy stays, built");
    assert_eq!(recorded_builds(&db), 1, "and recorded");
    let copy_oid =
        db.scalar_i64("SELECT oid::int8 FROM pg_class WHERE relkind = 'm' AND relname LIKE 'viewkeeper\\_build\\_%'");
    // The old version still serves, unchanged.
    assert_eq!(
        db.scalar_i64(
            "SELECT count(*) FROM information_schema.columns WHERE table_name = 'totals' AND column_name = 'n'"
        ),
        0
    );
    assert_eq!(db.scalar_i64("SELECT count(*) FROM top"), 5);

    // plan shows the copy as built, not as an object of its own.
    let (code, stdout, _) = run(&db, dir.path(), &["plan", "--detailed-exitcode"]);
    assert_eq!(code, 2);
    assert!(stdout.contains("already built side by side"), "{stdout}");
    assert!(!stdout.contains("build side by side as"), "{stdout}");
    let (_, status, _) = run(&db, dir.path(), &["status"]);
    assert!(!status.contains("viewkeeper_build_"), "{status}");

    db.block_on(reader.batch_execute("ROLLBACK"))
        .expect("reader ends");
    let stdout = reconcile(&db, dir.path());
    assert!(
        !stdout.contains("build side by side"),
        "not built again:\n{stdout}"
    );
    assert_eq!(
        oid(&db, "totals"),
        copy_oid,
        "the copy itself is swapped in"
    );
    assert_swapped_in(&db, dir.path());
}

/// kill -9 while the swap waits: the copy is committed and recorded; nothing declared is
/// half-swapped, and the next reconcile finishes the job.
#[test]
fn a_reconcile_killed_between_build_and_swap_leaves_only_a_recorded_copy() {
    let (db, dir) = setup("");
    write(
        dir.path(),
        &chain(SECOND, "")
            .into_iter()
            .map(|(path, text)| {
                // A long wait, so the process is surely killed while waiting to swap.
                (
                    path,
                    text.replace("lock-timeout \"1s\"", "lock-timeout \"60s\""),
                )
            })
            .collect::<Vec<_>>(),
    );
    let before = oid(&db, "totals");
    let reader = db.second_session();
    db.block_on(reader.batch_execute("BEGIN; SELECT count(*) FROM top;"))
        .expect("reader holds the chain");
    let mut child = std::process::Command::new(assert_cmd::cargo::cargo_bin("viewkeeper"))
        .arg("--project")
        .arg(dir.path())
        .arg("reconcile")
        .env("DATABASE_URL", &db.url)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("start reconcile");
    let waiting = eventually(Duration::from_secs(30), || {
        db.scalar_i64(
            "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() \
             AND wait_event_type = 'Lock' AND query LIKE 'DROP%'",
        ) > 0
    });
    assert!(waiting, "reconcile never reached the swap");
    child.kill().expect("kill -9");
    child.wait().expect("reaped");
    db.block_on(reader.batch_execute("ROLLBACK"))
        .expect("reader ends");

    assert_eq!(oid(&db, "totals"), before, "the old version is untouched");
    assert_eq!(copies(&db), 1);
    assert_eq!(recorded_builds(&db), 1);
    let (code, stdout, _) = run(&db, dir.path(), &["plan", "--detailed-exitcode"]);
    assert_eq!(code, 2);
    assert!(stdout.contains("already built side by side"), "{stdout}");
    reconcile(&db, dir.path());
    assert_swapped_in(&db, dir.path());
}

/// A copy left behind for a query that changed again is dropped, and the new version is
/// built beside the old one.
#[test]
fn a_copy_of_an_outdated_version_is_dropped() {
    let (db, dir) = setup("");
    write(dir.path(), &chain(SECOND, ""));
    let reader = db.second_session();
    db.block_on(reader.batch_execute("BEGIN; SELECT count(*) FROM top;"))
        .expect("reader holds the chain");
    let (code, _, _) = run(&db, dir.path(), &["reconcile"]);
    assert_eq!(code, 1);
    db.block_on(reader.batch_execute("ROLLBACK"))
        .expect("reader ends");
    assert_eq!(copies(&db), 1);

    let third =
        "SELECT cat, sum(amt) AS total, count(*) AS n, max(amt) AS top_amt FROM items GROUP BY cat";
    write(dir.path(), &chain(third, ""));
    let (_, stdout, _) = run(&db, dir.path(), &["plan"]);
    assert!(stdout.contains("not swapped in"), "{stdout}");
    reconcile(&db, dir.path());
    assert_eq!(db.scalar_i64("SELECT max(top_amt) FROM totals"), 1000);
    assert_swapped_in(&db, dir.path());
}

/// A build that fails leaves the database as it was: no copy, no record.
#[test]
fn a_failed_build_leaves_nothing_behind() {
    let (db, dir) = setup("");
    let failing = "SELECT cat, sum(amt) AS total, count(*) / (count(*) - count(*)) AS n FROM items GROUP BY cat";
    write(dir.path(), &chain(failing, ""));
    let (code, _, stderr) = run(&db, dir.path(), &["reconcile"]);
    assert_eq!(code, 1, "{stderr}");
    assert!(stderr.contains("division by zero"), "{stderr}");
    assert!(stderr.contains("views/chain.kdl"), "located: {stderr}");
    assert_eq!(copies(&db), 0);
    assert_eq!(recorded_builds(&db), 0);
    assert_eq!(db.scalar_i64("SELECT count(*) FROM top"), 5);
}

/// `rebuild "in-place"` in viewkeeper.kdl: the old way, said in the plan.
#[test]
fn rebuild_in_place_keeps_the_old_way() {
    let (db, dir) = setup("rebuild \"in-place\"\n");
    write(dir.path(), &chain(SECOND, "rebuild \"in-place\"\n"));
    let (_, stdout, _) = run(&db, dir.path(), &["plan"]);
    assert!(
        stdout.contains("readers wait for its build: rebuild \"in-place\" is set"),
        "{stdout}"
    );
    let stdout = reconcile(&db, dir.path());
    assert!(!stdout.contains("side by side"), "{stdout}");
    assert!(!exists(&db, "viewkeeper.side_build") || recorded_builds(&db) == 0);
    assert_swapped_in(&db, dir.path());
}
