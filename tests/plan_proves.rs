//! `plan` proves that reconcile will succeed: it compiles every new and changed query on the
//! server, in reconcile's order, in a transaction it rolls back.

mod support;

use std::path::Path;
use std::time::{Duration, Instant};

use support::{TestDb, exists, oid, project, reconcile, run, test_db};

fn orders_db() -> TestDb {
    let db = test_db();
    db.batch(
        "CREATE SCHEMA reporting;
         CREATE TABLE orders (id int PRIMARY KEY, amount numeric, placed date);
         INSERT INTO orders SELECT i, i * 1.5, date '2026-01-01' + i FROM generate_series(1, 20) i;",
    );
    db
}

fn write(dir: &Path, file: &str, text: &str) {
    std::fs::write(dir.join(file), text).expect("write declaration");
}

/// Runs plan; when it exits 0 or 2, reconcile must succeed; when 1, reconcile must fail too.
fn plan_agrees_with_reconcile(db: &TestDb, dir: &Path) -> (i32, String) {
    let (plan_code, stdout, stderr) = run(db, dir, &["plan", "--detailed-exitcode"]);
    let (code, out, err) = run(db, dir, &["reconcile"]);
    match plan_code {
        0 | 2 => assert_eq!(
            code, 0,
            "plan approved, reconcile failed:\n{stdout}{stderr}\n{out}{err}"
        ),
        _ => assert_eq!(
            code, 1,
            "plan refused, reconcile succeeded:\n{stderr}\n{out}"
        ),
    }
    (plan_code, format!("{stdout}{stderr}"))
}

#[test]
fn a_typo_in_a_new_view_fails_plan_at_its_file_line_and_column() {
    let db = orders_db();
    let dir = project(&[(
        "views/v.kdl",
        "view \"totals\" {\n    depends-on \"orders\"\n    query \"\"\"\n        SELECT id,\n               amuont\n        FROM orders\n        \"\"\"\n}\n",
    )]);
    let (code, stdout, stderr) = run(&db, dir.path(), &["plan", "--detailed-exitcode"]);
    assert_eq!(code, 1, "{stdout}{stderr}");
    assert!(stderr.contains("v.kdl:5:16"), "{stderr}");
    assert!(stderr.contains("amuont"), "{stderr}");
    assert!(stderr.contains("PostgreSQL points here"), "{stderr}");
    assert!(!exists(&db, "totals"), "plan changed nothing");
    // Nothing is left behind, not even in another session's view of pg_temp.
    assert_eq!(
        db.scalar_i64("SELECT count(*) FROM pg_class WHERE relname = 'totals'"),
        0
    );
}

#[test]
fn a_typo_in_a_changed_view_and_in_a_query_file_fail_plan() {
    let db = orders_db();
    let dir = project(&[
        (
            "views/v.kdl",
            "view \"totals\" {\n    depends-on \"orders\"\n    query \"SELECT id FROM orders\"\n}\n\
             materialized-view \"reporting.daily\" {\n    depends-on \"orders\"\n    query-file \"daily.sql\"\n}\n",
        ),
        (
            "views/daily.sql",
            "SELECT placed, sum(amount) AS total\nFROM orders\nGROUP BY placed\n",
        ),
    ]);
    reconcile(&db, dir.path());
    write(
        dir.path(),
        "views/v.kdl",
        "view \"totals\" {\n    depends-on \"orders\"\n    query \"SELECT id, amount * 2 AS doubled FROM ordrs\"\n}\n\
         materialized-view \"reporting.daily\" {\n    depends-on \"orders\"\n    query-file \"daily.sql\"\n}\n",
    );
    let (code, stderr) = plan_agrees_with_reconcile(&db, dir.path());
    assert_eq!(code, 1);
    assert!(stderr.contains("v.kdl:3:"), "{stderr}");
    assert!(
        stderr.contains("relation \"ordrs\" does not exist"),
        "{stderr}"
    );

    write(
        dir.path(),
        "views/v.kdl",
        "view \"totals\" {\n    depends-on \"orders\"\n    query \"SELECT id FROM orders\"\n}\n\
         materialized-view \"reporting.daily\" {\n    depends-on \"orders\"\n    query-file \"daily.sql\"\n}\n",
    );
    write(
        dir.path(),
        "views/daily.sql",
        "SELECT placed, sum(amount) AS total\nFROM orders\nGROUP BY placd\n",
    );
    let (code, stderr) = plan_agrees_with_reconcile(&db, dir.path());
    assert_eq!(code, 1);
    assert!(stderr.contains("daily.sql:3:10"), "{stderr}");
}

#[test]
fn a_missing_depends_on_between_two_new_views_fails_plan_with_the_fix() {
    let db = orders_db();
    // `a_report` sorts first and reads `b_base`, but does not say so, in a query the SQL
    // parser cannot read (`ROWS FROM`), so nothing is inferred.
    let dir = project(&[(
        "views/v.kdl",
        "view \"b_base\" {\n    depends-on \"orders\"\n    query \"SELECT id, amount FROM orders\"\n}\n\
         view \"a_report\" {\n    depends-on \"orders\"\n    query \"SELECT sum(amount) AS total FROM ROWS FROM (generate_series(1, 1)) AS g, b_base\"\n}\n",
    )]);
    let (code, output) = plan_agrees_with_reconcile(&db, dir.path());
    assert_eq!(code, 1, "{output}");
    assert!(
        output.contains("depends-on \"public.b_base\""),
        "the help names the missing depends-on:\n{output}"
    );
    assert!(!exists(&db, "a_report") && !exists(&db, "b_base"));
}

#[test]
fn dependents_compile_against_the_new_upstream_even_when_schema_qualified() {
    let db = orders_db();
    let dir = project(&[(
        "views/v.kdl",
        "materialized-view \"reporting.base\" {\n    depends-on \"orders\"\n    query \"SELECT id FROM orders\"\n}\n\
         view \"reporting.top\" {\n    depends-on \"reporting.base\"\n    query \"SELECT id FROM reporting.base\"\n}\n",
    )]);
    reconcile(&db, dir.path());
    // The upstream gains a column, and its dependent reads it through a qualified name.
    write(
        dir.path(),
        "views/v.kdl",
        "materialized-view \"reporting.base\" {\n    depends-on \"orders\"\n    query \"SELECT id, amount FROM orders\"\n}\n\
         view \"reporting.top\" {\n    depends-on \"reporting.base\"\n    query \"SELECT id, Reporting.Base.amount FROM REPORTING.base\"\n}\n",
    );
    let (code, output) = plan_agrees_with_reconcile(&db, dir.path());
    assert_eq!(code, 2, "{output}");
    assert_eq!(
        db.scalar_string("SELECT amount::text FROM reporting.top WHERE id = 2")
            .as_deref(),
        Some("3.0")
    );
    // And a dependent that reads a column the upstream loses fails plan, located.
    write(
        dir.path(),
        "views/v.kdl",
        "materialized-view \"reporting.base\" {\n    depends-on \"orders\"\n    query \"SELECT id FROM orders\"\n}\n\
         view \"reporting.top\" {\n    depends-on \"reporting.base\"\n    query \"SELECT id, reporting.base.amount FROM reporting.base\"\n}\n",
    );
    let (code, output) = plan_agrees_with_reconcile(&db, dir.path());
    assert_eq!(code, 1, "{output}");
    assert!(output.contains("v.kdl:7:"), "{output}");
}

#[test]
fn plan_does_not_wait_for_writers_and_gives_up_on_an_exclusive_lock() {
    let db = orders_db();
    let dir = project(&[
        ("viewkeeper.kdl", "lock-timeout \"1s\"\n"),
        (
            "views/v.kdl",
            "view \"totals\" {\n    depends-on \"orders\"\n    query \"SELECT id FROM orders\"\n}\n",
        ),
    ]);
    let before = oid(&db, "orders");
    let holder = db.second_session();
    // A writer: plan's reads and compiles must not wait for it.
    db.block_on(async {
        holder
            .batch_execute("BEGIN; LOCK TABLE orders IN ROW EXCLUSIVE MODE")
            .await
    })
    .expect("lock");
    let (code, stdout, stderr) = run(&db, dir.path(), &["plan", "--detailed-exitcode"]);
    assert_eq!(code, 2, "{stdout}{stderr}");
    db.block_on(async { holder.batch_execute("ROLLBACK").await })
        .expect("rollback");
    // Someone holds the table exclusively: plan gives up after lock-timeout.
    db.block_on(async {
        holder
            .batch_execute("BEGIN; LOCK TABLE orders IN ACCESS EXCLUSIVE MODE")
            .await
    })
    .expect("lock");
    let started = Instant::now();
    let (code, stdout, stderr) = run(&db, dir.path(), &["plan"]);
    assert_eq!(code, 1, "{stdout}{stderr}");
    assert!(
        started.elapsed() < Duration::from_secs(30),
        "plan must not hang"
    );
    // It names who holds the table, not the query.
    assert!(
        stderr.contains("lock-timeout") && stderr.contains("AccessExclusiveLock on orders"),
        "{stderr}"
    );
    assert!(!stderr.contains("rejects"), "{stderr}");
    db.block_on(async { holder.batch_execute("ROLLBACK").await })
        .expect("rollback");
    assert_eq!(oid(&db, "orders"), before);
}

/// A compiled view of another schema must not shadow the table an unqualified name means.
#[test]
fn a_view_named_like_a_table_in_another_schema_does_not_fool_plan() {
    let db = orders_db();
    db.batch("CREATE SCHEMA aaa");
    let dir = project(&[(
        "views/v.kdl",
        "view \"aaa.orders\" {\n    depends-on \"public.orders\"\n    query \"SELECT id, amount, 'x'::text AS note FROM public.orders\"\n}\n\
         view \"public.summary\" {\n    depends-on \"public.orders\"\n    query \"SELECT id, note FROM orders\"\n}\n",
    )]);
    let (code, output) = plan_agrees_with_reconcile(&db, dir.path());
    assert_eq!(code, 1, "{output}");
    assert!(output.contains("note"), "{output}");
}
