//! `viewkeeper guard`: drops of managed views are recorded with their statement and role,
//! reported by `plan` and `status`, never confused with viewkeeper's own rebuilds, and
//! installing without superuser gives a clear message.

mod support;

use std::time::Duration;

use support::{
    Scheduler, TestDb, ensure_role, eventually, exists, project, reconcile, run, test_db,
};

fn invoices_db() -> TestDb {
    let db = test_db();
    db.batch(
        "CREATE TABLE invoices_invoice (id int PRIMARY KEY, seller_no int, invoice_date date, amount numeric);
         INSERT INTO invoices_invoice SELECT i, i % 3, DATE '2026-01-01' + i, i FROM generate_series(1, 20) i;",
    );
    db
}

const DECLARATIONS: &str = r#"
materialized-view "sales_summary" {
    depends-on "invoices_invoice"
    query "SELECT seller_no, invoice_date, sum(amount) AS total FROM invoices_invoice GROUP BY 1, 2"
}
view "sales_by_seller" {
    depends-on "sales_summary"
    query "SELECT seller_no, sum(total) AS total FROM sales_summary GROUP BY 1"
}
"#;

#[test]
fn a_cascade_drop_is_reported_with_its_statement_and_role() {
    let db = invoices_db();
    let dir = project(&[("views/sales.kdl", DECLARATIONS)]);
    reconcile(&db, dir.path());
    let (code, stdout, stderr) = run(&db, dir.path(), &["guard", "install"]);
    assert_eq!(code, 0, "{stdout}{stderr}");

    // viewkeeper's own rebuilds are not recorded.
    std::fs::write(
        dir.path().join("views/sales.kdl"),
        DECLARATIONS.replace("sum(total) AS total", "sum(total) AS grand_total"),
    )
    .expect("edit");
    reconcile(&db, dir.path());
    let (_, log, _) = run(&db, dir.path(), &["guard", "log"]);
    assert!(log.contains("No drops recorded"), "{log}");

    db.batch("ALTER TABLE invoices_invoice DROP COLUMN invoice_date CASCADE");
    // The declared queries still read the dropped column: plan shows why the views are
    // missing, and fails, since reconcile cannot bring them back.
    let (code, plan, stderr) = run(&db, dir.path(), &["plan", "--detailed-exitcode"]);
    assert_eq!(code, 1, "{plan}{stderr}");
    assert!(stderr.contains("invoice_date"), "{stderr}");
    assert_eq!(
        plan.matches(
            "by role postgres: ALTER TABLE invoices_invoice DROP COLUMN invoice_date CASCADE"
        )
        .count(),
        2,
        "{plan}"
    );
    let (_, status, _) = run(&db, dir.path(), &["status", "--format", "json"]);
    assert!(
        status.contains("DROP COLUMN invoice_date CASCADE"),
        "{status}"
    );
    let (_, log, _) = run(&db, dir.path(), &["guard", "log"]);
    assert!(
        log.contains("public.sales_summary") && log.contains("public.sales_by_seller"),
        "{log}"
    );

    let (code, _, _) = run(&db, dir.path(), &["guard", "uninstall"]);
    assert_eq!(code, 0);
    assert_eq!(
        db.scalar_i64("SELECT count(*) FROM pg_event_trigger WHERE evtname = 'viewkeeper_guard'"),
        0
    );
}

#[test]
fn installing_without_superuser_says_so() {
    let db = invoices_db();
    ensure_role(&db, "plain_user");
    let database = db.scalar_string("SELECT current_database()").expect("name");
    db.batch(&format!(
        "ALTER ROLE plain_user LOGIN; GRANT CREATE ON DATABASE \"{database}\" TO plain_user;"
    ));
    let url = db.url.replacen("postgres@", "plain_user@", 1);
    let dir = project(&[("views/sales.kdl", DECLARATIONS)]);
    let (code, _, stderr) = run(
        &db,
        dir.path(),
        &["--database-url", &url, "guard", "install"],
    );
    assert_eq!(code, 1, "{stderr}");
    assert!(
        stderr.contains("installing the guard needs a superuser"),
        "{stderr}"
    );
    assert_eq!(db.scalar_i64("SELECT count(*) FROM pg_event_trigger"), 0);
}

const GUARDED: &str = r#"
materialized-view "sales_summary" {
    depends-on "invoices_invoice"
    query "SELECT seller_no, invoice_date, sum(amount) AS total FROM invoices_invoice GROUP BY 1, 2"
    index "seller_no" "invoice_date" unique=#true
    grant "SELECT" to="reporting"
}
view "sales_by_seller" {
    depends-on "sales_summary"
    query "SELECT seller_no, sum(total) AS total FROM sales_summary GROUP BY 1"
}
"#;

fn restored(db: &TestDb) -> bool {
    exists(db, "sales_summary")
        && exists(db, "sales_by_seller")
        && db.scalar_i64("SELECT count(*) FROM pg_class WHERE oid = to_regclass('sales_summary') AND relispopulated") == 1
        && db.scalar_i64("SELECT count(*) FROM pg_indexes WHERE indexname = 'sales_summary_seller_no_invoice_date_key'") == 1
        && db.scalar_string("SELECT has_table_privilege('reporting', 'sales_summary', 'SELECT')::text").as_deref() == Some("true")
}

#[test]
fn schedule_restores_a_dropped_view_within_seconds() {
    let db = invoices_db();
    ensure_role(&db, "reporting");
    let dir = project(&[("views/sales.kdl", GUARDED)]);
    reconcile(&db, dir.path());
    let (code, _, stderr) = run(&db, dir.path(), &["guard", "install"]);
    assert_eq!(code, 0, "{stderr}");
    let scheduler = Scheduler::start(&db, dir.path(), "schedule", &[]);
    std::thread::sleep(Duration::from_millis(1500));

    db.batch("DROP MATERIALIZED VIEW sales_summary CASCADE");
    assert!(
        eventually(Duration::from_secs(8), || restored(&db)),
        "not restored: {}",
        scheduler.output()
    );
    assert_eq!(db.scalar_i64("SELECT count(*) FROM sales_summary"), 20);
    assert!(
        scheduler.output().contains("restored dropped views"),
        "{}",
        scheduler.output()
    );
}

#[test]
fn an_impossible_restore_waits_for_a_change_instead_of_looping() {
    let db = invoices_db();
    ensure_role(&db, "reporting");
    let dir = project(&[("views/sales.kdl", GUARDED)]);
    reconcile(&db, dir.path());
    run(&db, dir.path(), &["guard", "install"]);
    let scheduler = Scheduler::start(&db, dir.path(), "schedule", &[]);
    std::thread::sleep(Duration::from_millis(1500));

    // The declared query reads invoice_date, which the migration removes.
    db.batch("ALTER TABLE invoices_invoice DROP COLUMN invoice_date CASCADE");
    assert!(
        eventually(Duration::from_secs(8), || scheduler
            .output()
            .contains("cannot restore")),
        "{}",
        scheduler.output()
    );
    std::thread::sleep(Duration::from_secs(4));
    assert_eq!(
        scheduler.output().matches("cannot restore").count(),
        1,
        "it must not retry while nothing changes: {}",
        scheduler.output()
    );
    assert!(!exists(&db, "sales_summary"));

    // The schema changes again (the column comes back): now it can be restored.
    db.batch("ALTER TABLE invoices_invoice ADD COLUMN invoice_date date NOT NULL DEFAULT DATE '2026-01-01'");
    assert!(
        eventually(Duration::from_secs(10), || restored(&db)),
        "not restored after the schema changed: {}",
        scheduler.output()
    );
}

#[test]
fn an_application_role_keeps_working_and_cannot_touch_the_guard() {
    let db = invoices_db();
    ensure_role(&db, "app_role");
    let database = db.scalar_string("SELECT current_database()").expect("name");
    db.batch(&format!(
        "ALTER ROLE app_role LOGIN;
         GRANT CREATE ON DATABASE \"{database}\" TO app_role;
         GRANT CREATE ON SCHEMA public TO app_role;
         GRANT SELECT ON invoices_invoice TO app_role;"
    ));
    let app_url = db.url.replacen("postgres@", "app_role@", 1);
    let dir = project(&[("views/sales.kdl", DECLARATIONS)]);
    let as_app = |args: &[&str]| {
        let mut all = vec!["--database-url", app_url.as_str()];
        all.extend_from_slice(args);
        run(&db, dir.path(), &all)
    };
    let (code, _, stderr) = as_app(&["reconcile"]);
    assert_eq!(code, 0, "{stderr}");
    // The superuser installs the guard after the application created its state schema.
    let (code, _, stderr) = run(&db, dir.path(), &["guard", "install"]);
    assert_eq!(code, 0, "{stderr}");

    db.batch("DROP MATERIALIZED VIEW sales_summary CASCADE");
    let (code, plan, stderr) = as_app(&["plan", "--detailed-exitcode"]);
    assert_eq!(code, 2, "{stderr}");
    assert!(
        plan.contains("by role postgres: DROP MATERIALIZED VIEW sales_summary CASCADE"),
        "{plan}"
    );
    let (code, _, stderr) = as_app(&["reconcile"]);
    assert_eq!(code, 0, "{stderr}");

    // The application role owns the state schema but cannot change what the
    // superuser-run trigger reads or writes.
    let app_client = format!("{} -X -q -v ON_ERROR_STOP=1 -d {app_url}", support::psql());
    for sql in [
        "CREATE VIEW viewkeeper_guard.sneaky AS SELECT 1",
        "INSERT INTO viewkeeper_guard.drop_log (role_name, schema_name, object_name, object_type) VALUES ('x', 'x', 'x', 'x')",
        "CREATE OR REPLACE FUNCTION viewkeeper_guard.record_drop() RETURNS event_trigger LANGUAGE plpgsql AS 'BEGIN END'",
    ] {
        let output = std::process::Command::new("sh")
            .arg("-c")
            .arg(format!("{app_client} -c \"{sql}\""))
            .output()
            .expect("psql");
        assert!(
            !output.status.success(),
            "the application role could run: {sql}"
        );
    }
}

#[test]
fn schedule_restores_what_went_missing_while_it_was_not_running_and_retries_lock_timeouts() {
    let db = invoices_db();
    ensure_role(&db, "reporting");
    let dir = project(&[
        ("views/sales.kdl", GUARDED),
        ("viewkeeper.kdl", "lock-timeout \"200ms\"\n"),
    ]);
    reconcile(&db, dir.path());
    run(&db, dir.path(), &["guard", "install"]);
    db.batch("DROP MATERIALIZED VIEW sales_summary CASCADE");
    // A long transaction holds the table: the first attempts time out on their lock.
    db.batch("BEGIN; LOCK TABLE invoices_invoice IN ACCESS EXCLUSIVE MODE;");
    let scheduler = Scheduler::start(&db, dir.path(), "schedule", &[]);
    assert!(
        eventually(Duration::from_secs(8), || scheduler
            .output()
            .contains("trying again shortly")),
        "{}",
        scheduler.output()
    );
    db.batch("ROLLBACK");
    assert!(
        eventually(Duration::from_secs(10), || restored(&db)),
        "not restored once the lock was gone: {}",
        scheduler.output()
    );
}

const RANKED: &str = r#"
view "top_sellers" {
    depends-on "sales_summary"
    query "SELECT seller_no, total FROM sales_summary ORDER BY total DESC, seller_no LIMIT 20"
    grant "SELECT" to="reporting"
    comment "best sellers"
}
"#;

#[test]
fn healing_restores_what_was_applied_and_leaves_pending_edits_to_reconcile() {
    let db = invoices_db();
    ensure_role(&db, "reporting");
    let dir = project(&[("views/sales.kdl", GUARDED), ("views/ranked.kdl", RANKED)]);
    reconcile(&db, dir.path());
    run(&db, dir.path(), &["guard", "install"]);
    // An edit nobody has reviewed or reconciled yet.
    std::fs::write(
        dir.path().join("views/ranked.kdl"),
        RANKED.replace("LIMIT 20", "LIMIT 5"),
    )
    .expect("edit");
    let scheduler = Scheduler::start(&db, dir.path(), "schedule", &[]);
    std::thread::sleep(Duration::from_millis(1500));

    // Someone drops the unrelated materialized view; CASCADE takes the edited view too.
    db.batch("DROP MATERIALIZED VIEW sales_summary CASCADE");
    assert!(
        eventually(Duration::from_secs(10), || restored(&db)
            && exists(&db, "top_sellers")),
        "not restored: {}",
        scheduler.output()
    );
    let definition = db
        .scalar_string("SELECT pg_get_viewdef('top_sellers'::regclass)")
        .unwrap_or_default();
    assert!(definition.contains("LIMIT 20"), "{definition}");
    assert_eq!(db.scalar_i64("SELECT count(*) FROM top_sellers"), 20);
    assert_eq!(
        db.scalar_string("SELECT obj_description('top_sellers'::regclass, 'pg_class')")
            .as_deref(),
        Some("best sellers")
    );
    assert_eq!(
        db.scalar_string("SELECT has_table_privilege('reporting', 'top_sellers', 'SELECT')::text")
            .as_deref(),
        Some("true")
    );
    let output = scheduler.output();
    assert!(
        output.contains("restored dropped views: create public.sales_summary")
            && output.contains("create public.top_sellers")
            && !output.contains("replace"),
        "{output}"
    );
    drop(scheduler);

    // The edit is still pending, and reconcile is what applies it.
    let (code, plan, stderr) = run(&db, dir.path(), &["plan", "--detailed-exitcode"]);
    assert_eq!(code, 2, "{plan}{stderr}");
    // The edit keeps the view's columns: it is replaced in place.
    assert!(
        plan.contains("replace in place public.top_sellers"),
        "{plan}"
    );
    assert!(plan.contains("Plan: 1 to replace in place."), "{plan}");
    let (code, status, stderr) = run(&db, dir.path(), &["status", "--detailed-exitcode"]);
    assert_eq!(code, 2, "{status}{stderr}");
    assert!(status.contains("top_sellers"), "{status}");
    reconcile(&db, dir.path());
    assert!(
        db.scalar_string("SELECT pg_get_viewdef('top_sellers'::regclass)")
            .unwrap_or_default()
            .contains("LIMIT 5")
    );
    assert_eq!(db.scalar_i64("SELECT count(*) FROM top_sellers"), 5);
}

const REBUILD_TABLE: &str = "DROP TABLE invoices_invoice CASCADE;
     CREATE TABLE invoices_invoice (id int PRIMARY KEY, seller_no int, invoice_date date, amount numeric);
     INSERT INTO invoices_invoice SELECT i, i % 3, DATE '2026-01-01' + i, i FROM generate_series(1, 20) i;";

#[test]
fn a_protecting_guard_refuses_a_cascade_and_lets_viewkeeper_run_through() {
    let db = invoices_db();
    ensure_role(&db, "reporting");
    let dir = project(&[("views/sales.kdl", GUARDED)]);
    reconcile(&db, dir.path());
    let (code, stdout, stderr) = run(&db, dir.path(), &["guard", "install", "--protect"]);
    assert_eq!(code, 0, "{stdout}{stderr}");
    let before = support::oid(&db, "sales_summary");

    // A migration's CASCADE from another session is refused, inside its transaction.
    let refused = db
        .try_batch(REBUILD_TABLE)
        .expect_err("the drop must be refused");
    assert!(
        refused.contains(
            "refuses to drop managed views: public.sales_by_seller, public.sales_summary"
        ) && refused.contains("viewkeeper run"),
        "{refused}"
    );
    assert!(restored(&db), "something was lost");
    assert_eq!(support::oid(&db, "sales_summary"), before);
    let direct = db
        .try_batch("DROP VIEW sales_by_seller")
        .expect_err("a direct drop must be refused too");
    assert!(direct.contains("public.sales_by_seller"), "{direct}");
    // Views viewkeeper does not manage can still be dropped.
    db.batch("CREATE VIEW scratch AS SELECT 1 AS one; DROP VIEW scratch;");

    // The same migration through `viewkeeper run` drops, and viewkeeper restores.
    let psql = support::psql();
    let psql = psql.as_str();
    let (code, stdout, stderr) = run(
        &db,
        dir.path(),
        &[
            "run",
            "--",
            psql,
            "-X",
            "-q",
            "-v",
            "ON_ERROR_STOP=1",
            "-d",
            &db.url,
            "-c",
            REBUILD_TABLE,
        ],
    );
    assert_eq!(code, 0, "{stdout}{stderr}");
    assert!(
        restored(&db),
        "not restored after the migration: {stdout}{stderr}"
    );
    assert_ne!(support::oid(&db, "sales_summary"), before);
    // What viewkeeper recreated is protected in turn.
    let again = db
        .try_batch("DROP MATERIALIZED VIEW sales_summary CASCADE")
        .expect_err("the recreated view must be protected");
    assert!(again.contains("public.sales_summary"), "{again}");

    // Without --protect, the guard records and notifies, and refuses nothing.
    let (code, _, stderr) = run(&db, dir.path(), &["guard", "install"]);
    assert_eq!(code, 0, "{stderr}");
    db.batch("DROP MATERIALIZED VIEW sales_summary CASCADE");
    let (_, log, _) = run(&db, dir.path(), &["guard", "log"]);
    assert!(log.contains("public.sales_summary"), "{log}");
}
