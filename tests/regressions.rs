//! Cases found in review: each once broke a safety rule or kept a plan from ever reaching
//! "in sync".

mod support;

use std::path::Path;

use support::{TestDb, ensure_role, exists, oid, project, reconcile, run, test_db};

fn table_db() -> TestDb {
    let db = test_db();
    db.batch(
        "CREATE TABLE t (a int PRIMARY KEY, b int);
         INSERT INTO t SELECT i, i % 3 FROM generate_series(1, 30) i;
         CREATE TABLE victim (x int);",
    );
    db
}

fn assert_in_sync(db: &TestDb, dir: &Path) {
    let (code, stdout, stderr) = run(db, dir, &["plan", "--detailed-exitcode"]);
    assert_eq!(code, 0, "expected in sync:\n{stdout}{stderr}");
}

#[test]
fn a_declared_query_cannot_run_a_second_statement() {
    let db = table_db();
    let dir = project(&[(
        "views/v.kdl",
        "view \"v\" {\n    depends-on \"t\"\n    query \"SELECT a FROM t; DROP TABLE victim\"\n}\n",
    )]);
    let (code, stdout, stderr) = run(&db, dir.path(), &["reconcile"]);
    assert_eq!(code, 1, "{stdout}{stderr}");
    assert!(exists(&db, "victim"), "the table must survive");
    assert!(!exists(&db, "v"));
    assert!(stderr.contains("one statement"), "{stderr}");
}

#[test]
fn grants_to_the_owner_and_empty_comments_converge() {
    let db = table_db();
    ensure_role(&db, "app_owner");
    db.batch("GRANT SELECT ON t TO app_owner");
    let dir = project(&[(
        "views/v.kdl",
        r#"view "v" {
    depends-on "t"
    query "SELECT a FROM t"
    owner "app_owner"
    grant "SELECT" to="app_owner"
    comment ""
}
view "w" {
    depends-on "t"
    query "SELECT b FROM t"
    grant "ALL" to="postgres"
}
"#,
    )]);
    reconcile(&db, dir.path());
    assert_in_sync(&db, dir.path());
    assert_eq!(
        db.scalar_string(
            "SELECT pg_get_userbyid(relowner)::text FROM pg_class WHERE oid = 'v'::regclass"
        )
        .as_deref(),
        Some("app_owner")
    );
}

#[test]
fn default_privileges_are_taken_back_when_not_declared() {
    let db = table_db();
    ensure_role(&db, "snooper");
    db.batch("ALTER DEFAULT PRIVILEGES IN SCHEMA public GRANT SELECT ON TABLES TO snooper");
    let dir = project(&[(
        "views/v.kdl",
        "view \"v\" {\n    depends-on \"t\"\n    query \"SELECT a FROM t\"\n}\n\
         materialized-view \"m\" {\n    depends-on \"t\"\n    query \"SELECT a FROM t\"\n}\n",
    )]);
    let stdout = reconcile(&db, dir.path());
    assert!(
        stdout.contains("revoke default SELECT from snooper"),
        "{stdout}"
    );
    assert_in_sync(&db, dir.path());
    assert_eq!(
        db.scalar_string("SELECT has_table_privilege('snooper', 'v', 'SELECT')::text")
            .as_deref(),
        Some("false")
    );
}

#[test]
fn reversing_a_dependency_between_two_views_works() {
    let db = table_db();
    let before = r#"view "a" {
    depends-on "t"
    query "SELECT a, b FROM t"
}
view "b" {
    depends-on "a"
    query "SELECT a, b FROM a"
}
"#;
    let after = r#"view "a" {
    depends-on "b"
    query "SELECT a, b FROM b"
}
view "b" {
    depends-on "t"
    query "SELECT a, b FROM t"
}
"#;
    let dir = project(&[("views/ab.kdl", before)]);
    reconcile(&db, dir.path());
    std::fs::write(dir.path().join("views/ab.kdl"), after).expect("edit");
    reconcile(&db, dir.path());
    assert_in_sync(&db, dir.path());
    assert!(
        db.scalar_string("SELECT pg_get_viewdef('a'::regclass)")
            .is_some_and(|definition| definition.contains("FROM b"))
    );
}

#[test]
fn a_rebuild_keeps_the_owner_when_none_is_declared() {
    let db = table_db();
    ensure_role(&db, "report_owner");
    db.batch("GRANT SELECT ON t TO report_owner");
    let declare =
        |query: &str| format!("view \"v\" {{\n    depends-on \"t\"\n    query \"{query}\"\n}}\n");
    let dir = project(&[("views/v.kdl", &declare("SELECT a FROM t"))]);
    reconcile(&db, dir.path());
    db.batch("ALTER VIEW v OWNER TO report_owner");
    let first = oid(&db, "v");
    std::fs::write(
        dir.path().join("views/v.kdl"),
        // Not a pure append of columns (that is replaced in place): a rebuild.
        declare("SELECT b, a FROM t"),
    )
    .expect("edit");
    reconcile(&db, dir.path());
    assert_ne!(oid(&db, "v"), first, "the view was rebuilt");
    assert_eq!(
        db.scalar_string(
            "SELECT pg_get_userbyid(relowner)::text FROM pg_class WHERE oid = 'v'::regclass"
        )
        .as_deref(),
        Some("report_owner")
    );
    assert_in_sync(&db, dir.path());
}

#[test]
fn a_declaration_in_the_state_schema_is_refused() {
    let dir = project(&[(
        "views/v.kdl",
        "view \"viewkeeper.report\" {\n    query \"SELECT 1 AS a\"\n}\n",
    )]);
    let db = table_db();
    let (code, _, stderr) = run(&db, dir.path(), &["check"]);
    assert_eq!(code, 1);
    assert!(
        stderr.contains("v.kdl:1:6") && stderr.contains("state schema"),
        "{stderr}"
    );
}

#[test]
fn usage_errors_exit_1_not_the_changes_pending_code() {
    let db = table_db();
    let dir = project(&[(
        "views/v.kdl",
        "view \"v\" {\n    query \"SELECT 1 AS a\"\n}\n",
    )]);
    let (code, _, stderr) = run(
        &db,
        dir.path(),
        &["plan", "--format", "yaml", "--detailed-exitcode"],
    );
    assert_eq!(code, 1, "{stderr}");
    let (code, _, _) = run(&db, dir.path(), &["--help"]);
    assert_eq!(code, 0);
}

#[test]
fn error_positions_survive_trailing_blanks_and_crlf() {
    let db = table_db();
    let dir = project(&[
        (
            "views/v.kdl",
            "view \"v\" {\r\n    depends-on \"t\"\r\n    query-file \"v.sql\"\r\n}\r\n",
        ),
        ("views/v.sql", "SELECT a,   \r\n       nope\r\nFROM t\r\n"),
    ]);
    let (code, _, stderr) = run(&db, dir.path(), &["reconcile"]);
    assert_eq!(code, 1);
    assert!(stderr.contains("v.sql:2:8"), "{stderr}");
}

#[test]
fn view_options_are_declared_created_and_altered_in_place() {
    let db = table_db();
    let declare = |with: &str| {
        format!(
            "view \"v\" {{\n    depends-on \"t\"\n    query \"SELECT a, b FROM t WHERE b > 0\"\n    {with}\n}}\n"
        )
    };
    let dir = project(&[(
        "views/v.kdl",
        &declare("with security_invoker=#true check_option=\"local\""),
    )]);
    reconcile(&db, dir.path());
    let options = |db: &TestDb| {
        db.scalar_string(
            "SELECT array_to_string(reloptions, ',') FROM pg_class WHERE oid = 'v'::regclass",
        )
    };
    assert_eq!(
        options(&db).as_deref(),
        Some("check_option=local,security_invoker=true")
    );
    assert_in_sync(&db, dir.path());

    let first = oid(&db, "v");
    std::fs::write(
        dir.path().join("views/v.kdl"),
        declare("with security_barrier=#true"),
    )
    .expect("edit");
    let (code, plan, _) = run(&db, dir.path(), &["plan", "--detailed-exitcode"]);
    assert_eq!(code, 2);
    assert!(
        plan.contains("set options (security_barrier='true')")
            && plan.contains("reset options (check_option, security_invoker)"),
        "{plan}"
    );
    reconcile(&db, dir.path());
    assert_eq!(oid(&db, "v"), first, "options change in place");
    assert_eq!(options(&db).as_deref(), Some("security_barrier=true"));
    assert_in_sync(&db, dir.path());

    let (code, _, stderr) = run(&db, dir.path(), &["check"]);
    assert_eq!(code, 0, "{stderr}");
    std::fs::write(
        dir.path().join("views/v.kdl"),
        declare("with fillfactor=70"),
    )
    .expect("edit");
    let (code, _, stderr) = run(&db, dir.path(), &["check"]);
    assert_eq!(code, 1);
    assert!(stderr.contains("unknown option `fillfactor`"), "{stderr}");
}

#[test]
fn import_keeps_security_options_and_flags_indexes_it_cannot_express() {
    let db = table_db();
    db.batch(
        "CREATE VIEW guarded WITH (security_invoker = true) AS SELECT a, b FROM t;
         CREATE MATERIALIZED VIEW sorted AS SELECT a, b FROM t;
         CREATE UNIQUE INDEX sorted_a ON sorted (a DESC);",
    );
    let dir = project(&[("viewkeeper.kdl", "")]);
    let (code, _, stderr) = run(&db, dir.path(), &["import"]);
    assert_eq!(code, 0, "{stderr}");
    let sorted = std::fs::read_to_string(dir.path().join("views/public.sorted.kdl")).expect("file");
    assert!(sorted.contains("cannot express yet"), "{sorted}");
    let guarded =
        std::fs::read_to_string(dir.path().join("views/public.guarded.kdl")).expect("file");
    assert!(guarded.contains("with security_invoker=#true"), "{guarded}");

    // The DESC index is not taken for the declared one: the plan says it would be recreated.
    let (code, plan, _) = run(&db, dir.path(), &["plan", "--detailed-exitcode"]);
    assert_eq!(code, 2, "{plan}");
    assert!(plan.contains("recreate index sorted_a"), "{plan}");
    assert!(
        !plan.contains("public.guarded (view)"),
        "the view itself is adopted: {plan}"
    );

    db.batch("DROP VIEW guarded");
    reconcile(&db, dir.path());
    assert_eq!(
        db.scalar_string(
            "SELECT array_to_string(reloptions, ',') FROM pg_class WHERE oid = 'guarded'::regclass"
        )
        .as_deref(),
        Some("security_invoker=true")
    );
}

#[test]
fn a_rebuild_that_would_lose_a_trigger_or_column_grant_is_refused() {
    let db = table_db();
    ensure_role(&db, "column_reader");
    let declare =
        |query: &str| format!("view \"v\" {{\n    depends-on \"t\"\n    query \"{query}\"\n}}\n");
    let dir = project(&[("views/v.kdl", &declare("SELECT a, b FROM t"))]);
    reconcile(&db, dir.path());
    db.batch(
        "CREATE FUNCTION v_insert() RETURNS trigger LANGUAGE plpgsql AS 'BEGIN RETURN NEW; END';
         CREATE TRIGGER v_insert INSTEAD OF INSERT ON v FOR EACH ROW EXECUTE FUNCTION v_insert();
         GRANT SELECT (a) ON v TO column_reader;",
    );
    let first = oid(&db, "v");
    std::fs::write(
        dir.path().join("views/v.kdl"),
        // Drops column b: no in-place replace, a rebuild.
        declare("SELECT a FROM t WHERE a > 0"),
    )
    .expect("edit");
    let (code, _, stderr) = run(&db, dir.path(), &["reconcile"]);
    assert_eq!(code, 1, "{stderr}");
    assert!(
        stderr.contains(
            "rebuilding public.v would lose its trigger v_insert, column privileges on a"
        ),
        "{stderr}"
    );
    assert_eq!(oid(&db, "v"), first);
}

#[test]
fn a_change_in_how_postgres_prints_a_view_is_not_a_reason_to_rebuild_it() {
    let db = test_db();
    db.batch("CREATE SCHEMA app; CREATE TABLE app.t (a int);");
    let dir = project(&[
        ("viewkeeper.kdl", "search-path \"app\"\n"),
        (
            "views/v.kdl",
            "view \"app.v\" {\n    depends-on \"app.t\"\n    query \"SELECT a FROM app.t\"\n}\n",
        ),
    ]);
    reconcile(&db, dir.path());
    let first = oid(&db, "app.v");
    // Under another search_path PostgreSQL prints the definition schema-qualified: the
    // applied and live texts differ, but the view is the same.
    std::fs::write(
        dir.path().join("viewkeeper.kdl"),
        "search-path \"public\"\n",
    )
    .expect("edit");
    let (code, plan, stderr) = run(&db, dir.path(), &["plan", "--detailed-exitcode"]);
    assert_eq!(code, 0, "{plan}{stderr}");
    assert!(
        plan.contains("already matches the declarations (app.v)"),
        "{plan}"
    );
    reconcile(&db, dir.path());
    assert_eq!(oid(&db, "app.v"), first);
    assert_in_sync(&db, dir.path());
}
