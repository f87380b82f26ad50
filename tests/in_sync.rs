//! The in-sync record: after a reconcile, `plan` answers from it without reading views or
//! parsing declarations, and only while nothing it would read has changed. Every kind of
//! change (in the files, the catalog, viewkeeper's state, the roles, the session's
//! settings) must send `plan` back to the catalog.
//!
//! The tests take turns: roles are shared by the whole cluster, and a role one test
//! creates or renames is a change for every other test's record.

mod support;

use std::sync::Mutex;

use support::{TestDb, ensure_role, project, reconcile, test_db, viewkeeper};

static ONE_AT_A_TIME: Mutex<()> = Mutex::new(());

/// What `VIEWKEEPER_LOG=debug` prints when the record answers.
const ANSWERED: &str = "the plan is the one recorded then";

const SUMMARY: &str = r#"
materialized-view "public.sales_summary" {
    query """
        SELECT seller_no, 'seller ' || seller_no AS label,
               sum(invoice_amt)::numeric(13,2) AS sales_amt
        FROM invoices_invoice
        GROUP BY seller_no
        """
    index "seller_no" unique=#true name="sales_summary_key"
    grant "SELECT" to="in_sync_reader"
    comment "Sales per seller"
}

view "public.top_sellers" {
    query-file "top_sellers.sql"
}
"#;

const TOP_SELLERS_SQL: &str =
    "SELECT seller_no, sales_amt FROM sales_summary ORDER BY sales_amt DESC LIMIT 3\n";

fn invoices_db() -> TestDb {
    let db = test_db();
    db.batch(
        "CREATE TABLE invoices_invoice (
             id serial PRIMARY KEY,
             seller_no integer NOT NULL,
             invoice_amt numeric(13,2) NOT NULL);
         INSERT INTO invoices_invoice (seller_no, invoice_amt)
         SELECT 1 + i % 7, (i % 100) + 0.5 FROM generate_series(1, 500) AS i;
         CREATE FUNCTION in_sync_double(numeric) RETURNS numeric
             LANGUAGE sql IMMUTABLE AS 'SELECT $1 * 2';",
    );
    db
}

fn invoices_project() -> tempfile::TempDir {
    project(&[
        ("views/sales.kdl", SUMMARY),
        ("views/top_sellers.sql", TOP_SELLERS_SQL),
    ])
}

/// `viewkeeper plan` with the debug log: exit code, stdout, and whether the record answered.
fn plan(db: &TestDb, dir: &std::path::Path, args: &[&str]) -> (i32, String, bool) {
    let output = viewkeeper(db, dir)
        .env("VIEWKEEPER_LOG", "viewkeeper=debug")
        .arg("plan")
        .args(args)
        .output()
        .expect("viewkeeper runs");
    let stderr = String::from_utf8_lossy(&output.stderr);
    (
        output.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&output.stdout).into_owned(),
        stderr.contains(ANSWERED),
    )
}

fn setup() -> std::sync::MutexGuard<'static, ()> {
    let turn = ONE_AT_A_TIME
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    let db = test_db();
    ensure_role(&db, "in_sync_reader");
    turn
}

#[test]
fn a_plan_after_reconcile_answers_from_the_record_and_prints_what_planning_prints() {
    let _turn = setup();
    let db = invoices_db();
    // Counting statements needs the extension, which must be there before the record.
    db.try_batch("CREATE SCHEMA stats; CREATE EXTENSION pg_stat_statements SCHEMA stats")
        .unwrap_or_else(|err| panic!("pg_stat_statements must be preloaded: {err}"));
    let dir = invoices_project();
    reconcile(&db, dir.path());

    db.batch("SELECT stats.pg_stat_statements_reset()");
    let (code, answered_text, answered) = plan(&db, dir.path(), &["--detailed-exitcode"]);
    assert_eq!(code, 0, "{answered_text}");
    assert!(answered, "the record did not answer:\n{answered_text}");
    assert!(answered_text.contains("In sync"), "{answered_text}");
    let (_, answered_json, answered) = plan(&db, dir.path(), &["--format", "json"]);
    assert!(answered);
    let (_, answered_markdown, answered) = plan(&db, dir.path(), &["--format", "markdown"]);
    assert!(answered);
    // Counted by the server: no view was deparsed, no index or grant read.
    let read_views = db.scalar_i64(
        "SELECT coalesce(sum(calls), 0)::bigint FROM stats.pg_stat_statements
         WHERE dbid = (SELECT oid FROM pg_database WHERE datname = current_database())
           AND (query LIKE '%pg_get_viewdef%' OR query LIKE '%aclexplode%'
                OR query LIKE '%pg_get_indexdef%')",
    );
    assert_eq!(read_views, 0, "the answered plans read the catalog");

    // A change that is nothing to the plan, but is to the catalog: plan reads it all.
    db.batch("CREATE TABLE unrelated (id int)");
    let (code, read_text, answered) = plan(&db, dir.path(), &["--detailed-exitcode"]);
    assert_eq!(code, 0, "{read_text}");
    assert!(!answered, "a new table did not count as a change");
    assert_eq!(read_text, answered_text);
    // The count above can fail: planned from the catalog, the same plan reads views.
    let read_views = db.scalar_i64(
        "SELECT coalesce(sum(calls), 0)::bigint FROM stats.pg_stat_statements
         WHERE dbid = (SELECT oid FROM pg_database WHERE datname = current_database())
           AND query LIKE '%pg_get_indexdef%'",
    );
    assert!(read_views > 0, "the catalog's plan was not counted");
    let (_, read_json, _) = plan(&db, dir.path(), &["--format", "json"]);
    assert_eq!(read_json, answered_json);
    let (_, read_markdown, _) = plan(&db, dir.path(), &["--format", "markdown"]);
    assert_eq!(read_markdown, answered_markdown);
}

/// `plan --project .` in the project folder: paths shown relative to it.
fn plan_in_folder(db: &TestDb, dir: &std::path::Path) -> (String, bool) {
    let output = assert_cmd::Command::cargo_bin("viewkeeper")
        .expect("binary")
        .current_dir(dir)
        .env("DATABASE_URL", &db.url)
        .env("NO_COLOR", "1")
        .env("VIEWKEEPER_LOG", "viewkeeper=debug")
        .args(["--project", ".", "plan"])
        .output()
        .expect("viewkeeper runs");
    (
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).contains(ANSWERED),
    )
}

#[test]
fn the_record_answers_wherever_the_project_is_read_from() {
    let _turn = setup();
    let db = invoices_db();
    let dir = invoices_project();
    // Recorded with the project given by its full path, read as `.` from inside it.
    reconcile(&db, dir.path());
    let (stdout, answered) = plan_in_folder(&db, dir.path());
    assert!(answered, "{stdout}");
    assert!(stdout.contains("In sync"), "{stdout}");
}

#[test]
fn warnings_are_recorded_with_the_plan() {
    let _turn = setup();
    let db = invoices_db();
    // `depends-on` that leaves out what the query reads: a warning, not an error.
    let dir = project(&[(
        "views/a.kdl",
        r#"
view "public.sellers" {
    depends-on "public.invoices_invoice"
    query "SELECT DISTINCT seller_no FROM invoices_invoice"
}
view "public.seller_count" {
    depends-on "public.invoices_invoice"
    query "SELECT count(*) AS sellers FROM sellers"
}
"#,
    )]);
    reconcile(&db, dir.path());
    let (_, answered_text, answered) = plan(&db, dir.path(), &[]);
    assert!(answered);
    assert!(
        answered_text.contains("does not list it"),
        "no warning: {answered_text}"
    );
    // From inside the folder, warnings show other paths: planned from the catalog.
    let (inside_text, answered) = plan_in_folder(&db, dir.path());
    assert!(!answered, "{inside_text}");
    assert!(inside_text.contains("views/a.kdl"), "{inside_text}");
    assert!(
        !inside_text.contains(&dir.path().display().to_string()),
        "{inside_text}"
    );
    db.batch("CREATE TABLE unrelated (id int)");
    let (_, read_text, answered) = plan(&db, dir.path(), &[]);
    assert!(!answered);
    assert_eq!(read_text, answered_text);
}

/// Each change, made after a reconcile, must be planned from the catalog; `changes_plan`
/// says whether the plan then says something else than "in sync" (a change the plan does
/// not show still must not be answered from the record).
#[test]
fn every_kind_of_change_is_planned_from_the_catalog() {
    let _turn = setup();
    let db = invoices_db();
    let dir = invoices_project();
    let cases: &[(&str, &str, bool)] = &[
        ("dropped view", "DROP VIEW top_sellers", true),
        (
            "replaced view",
            "CREATE OR REPLACE VIEW top_sellers AS SELECT seller_no, sales_amt FROM sales_summary ORDER BY sales_amt DESC LIMIT 4",
            true,
        ),
        (
            "comment",
            "COMMENT ON MATERIALIZED VIEW sales_summary IS 'changed'",
            true,
        ),
        (
            "revoked grant",
            "REVOKE SELECT ON sales_summary FROM in_sync_reader",
            true,
        ),
        ("dropped index", "DROP INDEX sales_summary_key", true),
        (
            "emptied materialized view",
            "REFRESH MATERIALIZED VIEW sales_summary WITH NO DATA",
            true,
        ),
        (
            "state record",
            "DELETE FROM viewkeeper.managed_object WHERE object_name = 'top_sellers'",
            true,
        ),
        (
            "column comment",
            "COMMENT ON COLUMN top_sellers.seller_no IS 'who'",
            false,
        ),
        (
            "a function renamed",
            "ALTER FUNCTION in_sync_double(numeric) RENAME TO in_sync_twice",
            false,
        ),
    ];
    reconcile(&db, dir.path());
    for (what, change, changes_plan) in cases {
        let (_, in_sync, answered) = plan(&db, dir.path(), &[]);
        assert!(answered, "before the {what}: the record did not answer");
        db.batch(change);
        let (_, stdout, answered) = plan(&db, dir.path(), &[]);
        assert!(!answered, "{what}: answered from the record:\n{stdout}");
        assert_eq!(stdout != in_sync, *changes_plan, "{what}: {stdout}");
        reconcile(&db, dir.path());
    }
}

/// What changes nothing a plan reads keeps the record: refreshes (which write the data
/// anew, with a new TOAST table for the text column), other sessions' temporary tables,
/// ANALYZE and VACUUM.
#[test]
fn refreshes_and_temporary_tables_keep_the_record() {
    let _turn = setup();
    let db = invoices_db();
    let dir = invoices_project();
    reconcile(&db, dir.path());
    let other = db.second_session();
    for (what, change) in [
        ("refresh", "REFRESH MATERIALIZED VIEW sales_summary"),
        (
            "concurrent refresh",
            "REFRESH MATERIALIZED VIEW CONCURRENTLY sales_summary",
        ),
        ("analyze", "ANALYZE"),
        ("vacuum", "VACUUM invoices_invoice"),
        (
            "temporary table of another session",
            "CREATE TEMPORARY TABLE scratch (id int PRIMARY KEY, note text)",
        ),
    ] {
        db.block_on(other.batch_execute(change))
            .unwrap_or_else(|err| panic!("{what}: {err}"));
        let (code, stdout, answered) = plan(&db, dir.path(), &["--detailed-exitcode"]);
        assert_eq!(code, 0, "{what}: {stdout}");
        assert!(answered, "after the {what}, the record did not answer");
    }
}

#[test]
fn a_renamed_column_under_a_view_is_planned_from_the_catalog() {
    let _turn = setup();
    let db = invoices_db();
    let dir = invoices_project();
    reconcile(&db, dir.path());
    db.batch("ALTER TABLE invoices_invoice RENAME COLUMN invoice_amt TO amount");
    let (code, stdout, answered) = plan(&db, dir.path(), &["--detailed-exitcode"]);
    assert!(!answered);
    // The declared query names the old column, so the plan cannot be proven: exit 1.
    assert_eq!(code, 1, "a renamed column read by a view: {stdout}");
    assert!(stdout.contains("drifted"), "{stdout}");
    db.batch("ALTER TABLE invoices_invoice RENAME COLUMN amount TO invoice_amt");
    let (code, stdout, answered) = plan(&db, dir.path(), &["--detailed-exitcode"]);
    assert!(!answered, "the record was made before the renames");
    assert_eq!(code, 0, "{stdout}");
}

#[test]
fn every_kind_of_file_change_is_planned_from_the_files() {
    let _turn = setup();
    let db = invoices_db();
    let dir = invoices_project();
    let root = dir.path();
    reconcile(&db, root);
    let write = |path: &str, text: &str| std::fs::write(root.join(path), text).expect("write");
    type Change<'a> = Box<dyn Fn() + 'a>;
    let cases: Vec<(&str, Change, bool)> = vec![
        (
            "declaration file",
            Box::new(|| {
                write(
                    "views/sales.kdl",
                    &SUMMARY.replace("per seller", "by seller"),
                )
            }),
            true,
        ),
        (
            "query file",
            Box::new(|| write("views/top_sellers.sql", &TOP_SELLERS_SQL.replace("3", "5"))),
            true,
        ),
        (
            "new declaration file",
            Box::new(|| {
                write(
                    "views/more/extra.kdl",
                    r#"view "public.extra" { query "SELECT 1 AS one" }"#,
                )
            }),
            true,
        ),
        (
            "comment in a declaration file",
            Box::new(|| {
                let text = std::fs::read_to_string(root.join("views/sales.kdl")).expect("read");
                write("views/sales.kdl", &format!("{text}// reviewed\n"));
            }),
            false,
        ),
        (
            "settings",
            Box::new(|| write("viewkeeper.kdl", "lock-timeout \"7s\"\n")),
            false,
        ),
    ];
    std::fs::create_dir_all(root.join("views/more")).expect("mkdir");
    for (what, change, changes_plan) in cases {
        let (_, _, answered) = plan(&db, root, &[]);
        assert!(answered, "before the {what}: the record did not answer");
        change();
        let (code, stdout, answered) = plan(&db, root, &["--detailed-exitcode"]);
        assert!(!answered, "{what}: answered from the record:\n{stdout}");
        assert_eq!(code, if changes_plan { 2 } else { 0 }, "{what}: {stdout}");
        reconcile(&db, root);
    }
    // Another role's plan, or other settings of the session, are planned from the catalog.
    let (_, _, answered) = plan(&db, root, &[]);
    assert!(answered);
    let output = viewkeeper(&db, root)
        .env("VIEWKEEPER_LOG", "viewkeeper=debug")
        .env("PGOPTIONS", "-c DateStyle=German")
        .arg("plan")
        .output()
        .expect("viewkeeper runs");
    assert!(output.status.success());
    assert!(!String::from_utf8_lossy(&output.stderr).contains(ANSWERED));
}

#[test]
fn a_state_schema_made_before_the_record_gains_it_at_the_next_reconcile() {
    let _turn = setup();
    let db = invoices_db();
    let dir = invoices_project();
    reconcile(&db, dir.path());
    db.batch("DROP TABLE viewkeeper.in_sync_v1");
    let (code, stdout, answered) = plan(&db, dir.path(), &["--detailed-exitcode"]);
    assert_eq!(code, 0, "{stdout}");
    assert!(!answered);
    reconcile(&db, dir.path());
    let (_, _, answered) = plan(&db, dir.path(), &[]);
    assert!(answered, "a no-op reconcile made no record");
}

#[test]
fn a_reconcile_that_leaves_something_to_do_is_not_answered_from_the_record() {
    let _turn = setup();
    let db = invoices_db();
    let dir = invoices_project();
    reconcile(&db, dir.path());
    assert_eq!(
        db.scalar_i64("SELECT count(*) FROM viewkeeper.in_sync_v1"),
        1
    );
    // A declaration that cannot be applied: the keep-going reconcile applies the rest.
    std::fs::write(
        dir.path().join("views/broken.kdl"),
        r#"view "public.broken" { query "SELECT missing_column FROM invoices_invoice" }"#,
    )
    .expect("write");
    let output = viewkeeper(&db, dir.path())
        .args(["reconcile", "--keep-going"])
        .output()
        .expect("viewkeeper runs");
    assert!(!output.status.success());
    let (code, stdout, answered) = plan(&db, dir.path(), &["--detailed-exitcode"]);
    assert!(!answered);
    assert_ne!(code, 0, "{stdout}");
}

#[test]
fn a_query_file_linked_from_outside_the_project_is_not_read() {
    let _turn = setup();
    let db = invoices_db();
    let dir = invoices_project();
    reconcile(&db, dir.path());
    // The same text, through a link that leaves the project folder.
    let outside = tempfile::tempdir().expect("folder");
    let target = outside.path().join("top_sellers.sql");
    std::fs::write(&target, TOP_SELLERS_SQL).expect("write");
    let link = dir.path().join("views/top_sellers.sql");
    std::fs::remove_file(&link).expect("remove");
    std::os::unix::fs::symlink(&target, &link).expect("symlink");
    let output = viewkeeper(&db, dir.path())
        .env("VIEWKEEPER_LOG", "viewkeeper=debug")
        .arg("plan")
        .output()
        .expect("viewkeeper runs");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!stderr.contains(ANSWERED), "{stderr}");
    assert_eq!(output.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("outside the project folder"), "{stderr}");
}

/// What a materialized view's index prints from, beyond the view: enum labels in its
/// predicate, the columns of a type its expression names, viewkeeper's own columns.
#[test]
fn what_indexes_and_viewkeepers_tables_print_from_is_planned_from_the_catalog() {
    let _turn = setup();
    let db = test_db();
    db.batch(
        "CREATE TYPE mood AS ENUM ('a', 'b');
         CREATE TYPE pair AS (x int, k text);
         CREATE TABLE t (id int, kind mood);
         INSERT INTO t VALUES (1, 'a'), (2, 'b');",
    );
    let dir = project(&[(
        "views/a.kdl",
        r#"
materialized-view "public.moods" {
    query "SELECT id, kind, ROW(id, kind::text)::pair AS p FROM t"
    index "id" unique=#true where="kind = 'a'" name="moods_a"
    index "((p).x)" name="moods_px"
}
"#,
    )]);
    for (what, change, undo) in [
        (
            "enum label",
            "ALTER TYPE mood RENAME VALUE 'a' TO 'z'",
            "ALTER TYPE mood RENAME VALUE 'z' TO 'a'",
        ),
        (
            "column of a type an index names",
            "ALTER TYPE pair RENAME ATTRIBUTE x TO xx",
            "ALTER TYPE pair RENAME ATTRIBUTE xx TO x",
        ),
        (
            "column of viewkeeper's own table",
            "ALTER TABLE viewkeeper.managed_object RENAME COLUMN query_sha256 TO renamed",
            "ALTER TABLE viewkeeper.managed_object RENAME COLUMN renamed TO query_sha256",
        ),
    ] {
        reconcile(&db, dir.path());
        let (_, _, answered) = plan(&db, dir.path(), &[]);
        assert!(answered, "before the {what}: the record did not answer");
        db.batch(change);
        let (code, stdout, answered) = plan(&db, dir.path(), &["--detailed-exitcode"]);
        assert!(!answered, "{what}: answered from the record:\n{stdout}");
        assert_ne!(code, 0, "{what}: {stdout}");
        db.batch(undo);
    }
}
