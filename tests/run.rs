//! `viewkeeper run [--drop-first] -- COMMAND`: migrations that change a column's type under
//! managed views succeed, failing migrations still get their views back, and the command's
//! exit status is passed on.

mod support;

use support::{TestDb, exists, project, psql, reconcile, run, test_db};

const DECLARATIONS: &str = r#"
materialized-view "totals" {
    depends-on "orders"
    query "SELECT customer, sum(amount) AS total FROM orders GROUP BY customer"
    index "customer" unique=#true
}
view "big_customers" {
    depends-on "totals"
    query "SELECT customer FROM totals WHERE total > 10"
}
"#;

fn orders_db() -> TestDb {
    let db = test_db();
    db.batch(
        "CREATE TABLE orders (id int PRIMARY KEY, customer int NOT NULL, amount numeric(6,2) NOT NULL);
         INSERT INTO orders SELECT i, i % 5, i FROM generate_series(1, 50) i;",
    );
    db
}

#[test]
fn drop_first_lets_a_type_change_through_and_restores_everything() {
    let db = orders_db();
    let dir = project(&[
        ("views/orders.kdl", DECLARATIONS),
        (
            "migration.sql",
            "ALTER TABLE orders ALTER COLUMN amount TYPE numeric(12,2);\n",
        ),
    ]);
    reconcile(&db, dir.path());
    // Without --drop-first PostgreSQL refuses the migration.
    let migration = dir.path().join("migration.sql").display().to_string();
    let psql = psql();
    let (code, _, stderr) = run(
        &db,
        dir.path(),
        &[
            "run",
            "--",
            &psql,
            "-X",
            "-q",
            "-v",
            "ON_ERROR_STOP=1",
            "-d",
            &db.url,
            "-f",
            &migration,
        ],
    );
    assert_eq!(code, 3, "psql's own exit status is passed on: {stderr}");
    assert!(
        stderr.contains("cannot alter type of a column used by a view or rule"),
        "{stderr}"
    );

    let (code, stdout, stderr) = run(
        &db,
        dir.path(),
        &[
            "run",
            "--drop-first",
            "--",
            &psql,
            "-X",
            "-q",
            "-v",
            "ON_ERROR_STOP=1",
            "-d",
            &db.url,
            "-f",
            &migration,
        ],
    );
    assert_eq!(code, 0, "{stdout}{stderr}");
    assert_eq!(
        db.scalar_string("SELECT format_type(atttypid, atttypmod) FROM pg_attribute WHERE attrelid = 'orders'::regclass AND attname = 'amount'")
            .as_deref(),
        Some("numeric(12,2)")
    );
    assert!(exists(&db, "totals") && exists(&db, "big_customers"));
    assert_eq!(db.scalar_i64("SELECT count(*) FROM totals"), 5);
    let (code, _, _) = run(&db, dir.path(), &["plan", "--detailed-exitcode"]);
    assert_eq!(code, 0);
}

#[test]
fn a_failing_migration_still_gets_its_views_back_and_its_status_out() {
    let db = orders_db();
    let dir = project(&[
        ("views/orders.kdl", DECLARATIONS),
        (
            "broken.sql",
            "ALTER TABLE orders ADD COLUMN note text;\nSELECT 1/0;\n",
        ),
    ]);
    reconcile(&db, dir.path());
    let migration = dir.path().join("broken.sql").display().to_string();
    let psql = psql();
    let (code, stdout, stderr) = run(
        &db,
        dir.path(),
        &[
            "run",
            "--drop-first",
            "--",
            &psql,
            "-X",
            "-q",
            "-1",
            "-v",
            "ON_ERROR_STOP=1",
            "-d",
            &db.url,
            "-f",
            &migration,
        ],
    );
    assert_eq!(code, 3, "{stdout}{stderr}");
    assert!(
        stderr.contains("division by zero"),
        "the command's output streams through: {stderr}"
    );
    assert!(exists(&db, "totals") && exists(&db, "big_customers"));
    assert_eq!(db.scalar_i64("SELECT count(*) FROM totals"), 5);
}

#[test]
fn a_command_that_cannot_start_exits_127() {
    let db = orders_db();
    let dir = project(&[("views/orders.kdl", DECLARATIONS)]);
    reconcile(&db, dir.path());
    let (code, _, stderr) = run(&db, dir.path(), &["run", "--", "/nonexistent/migrate"]);
    assert_eq!(code, 127, "{stderr}");
    assert!(exists(&db, "totals"));
}

#[test]
fn an_interrupted_migration_still_gets_its_views_back() {
    let db = orders_db();
    let dir = project(&[("views/orders.kdl", DECLARATIONS)]);
    reconcile(&db, dir.path());
    let mut child = std::process::Command::new(assert_cmd::cargo::cargo_bin("viewkeeper"))
        .arg("--project")
        .arg(dir.path())
        .args(["run", "--drop-first", "--", "sleep", "5"])
        .env("DATABASE_URL", &db.url)
        .spawn()
        .expect("start");
    assert!(
        support::eventually(std::time::Duration::from_secs(5), || !exists(&db, "totals")),
        "the views were not dropped first"
    );
    let pid = nix::unistd::Pid::from_raw(i32::try_from(child.id()).expect("pid"));
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGINT).expect("signal");
    let status = child.wait().expect("wait");
    assert_eq!(
        status.code(),
        Some(130),
        "the migration's own status (killed by SIGINT)"
    );
    assert!(exists(&db, "totals") && exists(&db, "big_customers"));
    assert_eq!(db.scalar_i64("SELECT count(*) FROM totals"), 5);
}

#[test]
fn a_blocked_drop_first_does_not_run_the_migration() {
    let db = orders_db();
    let dir = project(&[
        ("views/orders.kdl", DECLARATIONS),
        ("marker.sql", "CREATE TABLE ran (x int);\n"),
    ]);
    reconcile(&db, dir.path());
    db.batch("CREATE VIEW hand_made AS SELECT * FROM totals");
    let marker = dir.path().join("marker.sql").display().to_string();
    let psql = psql();
    let (code, _, stderr) = run(
        &db,
        dir.path(),
        &[
            "run",
            "--drop-first",
            "--",
            &psql,
            "-X",
            "-q",
            "-d",
            &db.url,
            "-f",
            &marker,
        ],
    );
    assert_eq!(code, 1);
    assert!(
        stderr.contains("the migration did not run") && stderr.contains("public.hand_made"),
        "{stderr}"
    );
    assert!(!exists(&db, "ran"));
    assert!(exists(&db, "totals"));
}

const KILLED_DECLARATIONS: &str = r#"
materialized-view "totals" {
    depends-on "orders"
    query "SELECT customer, sum(amount) AS total FROM orders GROUP BY customer"
    index "customer" unique=#true
    grant "SELECT" to="run_killed_reader"
}
view "big_customers" {
    depends-on "totals"
    query "SELECT customer FROM totals WHERE total > 10"
    grant "SELECT" to="run_killed_reader"
}
"#;

#[test]
fn a_killed_drop_first_leaves_a_restore_owed_that_the_next_reconcile_settles() {
    use std::os::unix::process::CommandExt;
    let db = orders_db();
    db.batch(
        "DO $$ BEGIN CREATE ROLE run_killed_reader NOLOGIN;
         EXCEPTION WHEN duplicate_object OR unique_violation THEN NULL; END $$;",
    );
    let dir = project(&[("views/orders.kdl", KILLED_DECLARATIONS)]);
    reconcile(&db, dir.path());
    let (_, stdout, stderr) = run(&db, dir.path(), &["status"]);
    assert!(
        !stderr.contains("restore is owed") && !stdout.contains("restore is owed"),
        "{stderr}"
    );
    // Its own process group, so viewkeeper and the migration die together, as on a lost runner.
    let mut child = std::process::Command::new(assert_cmd::cargo::cargo_bin("viewkeeper"))
        .arg("--project")
        .arg(dir.path())
        .args(["run", "--drop-first", "--", "sh", "-c", "sleep 30"])
        .env("DATABASE_URL", &db.url)
        .stdout(std::process::Stdio::null())
        .process_group(0)
        .spawn()
        .expect("start");
    assert!(
        support::eventually(std::time::Duration::from_secs(10), || !exists(
            &db, "totals"
        )),
        "the views were not dropped first"
    );
    let group = nix::unistd::Pid::from_raw(-i32::try_from(child.id()).expect("pid"));
    nix::sys::signal::kill(group, nix::sys::signal::Signal::SIGKILL).expect("signal");
    let status = child.wait().expect("wait");
    assert_eq!(status.code(), None, "killed by a signal");
    assert!(!exists(&db, "totals") && !exists(&db, "big_customers"));
    assert_eq!(
        db.scalar_i64("SELECT count(*) FROM viewkeeper.restore_owed"),
        1
    );

    for command in [&["plan"][..], &["status"][..], &["refresh"][..]] {
        let (_, _, stderr) = run(&db, dir.path(), command);
        let first = stderr.lines().next().unwrap_or_default();
        assert!(
            first.starts_with("warning: a restore is owed since ")
                && first.contains("`viewkeeper run --drop-first` did not finish")
                && first.contains("run `viewkeeper reconcile`"),
            "{command:?} does not say first that a restore is owed: {stderr}"
        );
    }
    // plan only reads: the record is still there, and the views still missing.
    assert!(!exists(&db, "totals"));

    let (code, _, stderr) = run(&db, dir.path(), &["reconcile"]);
    assert_eq!(code, 0, "{stderr}");
    assert!(exists(&db, "totals") && exists(&db, "big_customers"));
    assert_eq!(db.scalar_i64("SELECT count(*) FROM totals"), 5);
    assert_eq!(
        db.scalar_i64("SELECT count(*) FROM pg_indexes WHERE indexname = 'totals_customer_key'"),
        1
    );
    for view in ["totals", "big_customers"] {
        assert_eq!(
            db.scalar_string(&format!(
                "SELECT has_table_privilege('run_killed_reader', '{view}', 'SELECT')::text"
            ))
            .as_deref(),
            Some("true")
        );
    }
    assert_eq!(
        db.scalar_i64("SELECT count(*) FROM viewkeeper.restore_owed"),
        0
    );
    let (code, _, stderr) = run(&db, dir.path(), &["plan"]);
    assert_eq!(code, 0, "{stderr}");
    assert!(!stderr.contains("restore is owed"), "{stderr}");
}

#[test]
fn a_finished_drop_first_owes_nothing() {
    let db = orders_db();
    let dir = project(&[("views/orders.kdl", DECLARATIONS)]);
    reconcile(&db, dir.path());
    let (code, _, stderr) = run(&db, dir.path(), &["run", "--drop-first", "--", "true"]);
    assert_eq!(code, 0, "{stderr}");
    assert!(exists(&db, "totals"));
    assert_eq!(
        db.scalar_i64("SELECT count(*) FROM viewkeeper.restore_owed"),
        0
    );
    let (_, _, stderr) = run(&db, dir.path(), &["status"]);
    assert!(!stderr.contains("restore is owed"), "{stderr}");
}

#[test]
fn drop_managed_drops_the_views_and_owes_a_restore_that_reconcile_settles() {
    let db = orders_db();
    let dir = project(&[("views/orders.kdl", DECLARATIONS)]);
    reconcile(&db, dir.path());
    let (code, stdout, stderr) = run(&db, dir.path(), &["drop-managed"]);
    assert_eq!(code, 0, "{stdout}\n{stderr}");
    assert!(stdout.contains("Dropped 2 managed objects"), "{stdout}");
    assert!(!exists(&db, "totals") && !exists(&db, "big_customers"));
    assert_eq!(
        db.scalar_i64("SELECT count(*) FROM viewkeeper.restore_owed"),
        1
    );
    // What run --drop-first allows: a type change under the views.
    db.batch("ALTER TABLE orders ALTER COLUMN amount TYPE numeric(12,2)");
    let (_, _, stderr) = run(&db, dir.path(), &["status"]);
    assert!(stderr.contains("a restore is owed"), "{stderr}");

    let (code, _, stderr) = run(&db, dir.path(), &["reconcile", "--keep-going"]);
    assert_eq!(code, 0, "{stderr}");
    assert!(exists(&db, "totals") && exists(&db, "big_customers"));
    assert_eq!(db.scalar_i64("SELECT count(*) FROM totals"), 5);
    assert_eq!(
        db.scalar_i64("SELECT count(*) FROM viewkeeper.restore_owed"),
        0
    );
}
