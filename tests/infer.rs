//! `depends-on` left out: what a query reads is inferred from its text, confirmed by
//! PostgreSQL, and `import` no longer writes what can be inferred.

mod support;

use support::{project, reconcile, run, test_db};

/// `public.report` sorts first and reads `public.source`; neither lists `depends-on`.
const TWO_VIEWS: &str = r#"
view "public.report" {
    query "WITH by_cat AS (SELECT cat FROM source) SELECT cat, count(*) AS n FROM by_cat GROUP BY cat"
}
view "public.source" {
    query "SELECT id, cat FROM items"
}
"#;

#[test]
fn two_views_without_depends_on_check_plan_and_reconcile_in_order() {
    let db = test_db();
    db.batch(
        "CREATE TABLE items (id integer PRIMARY KEY, cat integer NOT NULL);
         INSERT INTO items SELECT i, i % 3 FROM generate_series(1, 9) AS i;",
    );
    let dir = project(&[("views/report.kdl", TWO_VIEWS)]);

    let (code, stdout, stderr) = run(&db, dir.path(), &["check"]);
    assert_eq!(code, 0, "{stdout}\n{stderr}");
    assert!(
        stdout.contains("dependency order: public.source, public.report"),
        "{stdout}"
    );

    let (code, stdout, stderr) = run(&db, dir.path(), &["graph"]);
    assert_eq!(code, 0, "{stderr}");
    assert!(
        stdout.contains("reads public.source (view, inferred)"),
        "{stdout}"
    );

    let (code, stdout, stderr) = run(&db, dir.path(), &["plan", "--detailed-exitcode"]);
    assert_eq!(code, 2, "{stdout}\n{stderr}");
    let source = stdout.find("public.source").expect("source in the plan");
    let report = stdout.find("public.report").expect("report in the plan");
    assert!(source < report, "source is created first:\n{stdout}");

    reconcile(&db, dir.path());
    assert_eq!(db.scalar_i64("SELECT count(*) FROM report"), 3);
    let (code, stdout, stderr) = run(&db, dir.path(), &["plan", "--detailed-exitcode"]);
    assert_eq!(
        code, 0,
        "in sync, without dependency warnings:\n{stdout}\n{stderr}"
    );
    assert!(!stdout.contains("warning"), "{stdout}");
}

#[test]
fn a_query_the_parser_cannot_read_is_left_to_the_server() {
    let db = test_db();
    // `ROWS FROM (…)` is PostgreSQL syntax the pure-Rust parser does not read.
    let dir = project(&[(
        "views/odd.kdl",
        r#"
view "public.odd" {
    query "SELECT * FROM ROWS FROM (generate_series(1, 2)) AS g"
}
"#,
    )]);
    let (code, stdout, stderr) = run(&db, dir.path(), &["check"]);
    assert_eq!(code, 0, "{stdout}\n{stderr}");
    assert!(
        stdout.contains("`public.odd`'s query; its dependencies will be taken from the server"),
        "{stdout}"
    );
    reconcile(&db, dir.path());
    assert_eq!(db.scalar_i64("SELECT count(*) FROM odd"), 2);
}

#[test]
fn import_leaves_out_inferable_depends_on_and_ignores_other_rules() {
    let db = test_db();
    db.batch(
        "CREATE TABLE items (id integer PRIMARY KEY);
         CREATE TABLE audit (id integer);
         CREATE VIEW listed AS SELECT id FROM items;
         CREATE RULE listed_insert AS ON INSERT TO listed DO INSTEAD INSERT INTO audit VALUES (NEW.id);",
    );
    let dir = project(&[("viewkeeper.kdl", "")]);
    let (code, _, stderr) = run(&db, dir.path(), &["import"]);
    assert_eq!(code, 0, "{stderr}");
    let file = dir.path().join("views/public.listed.kdl");
    let listed = std::fs::read_to_string(&file).expect("file");
    assert!(!listed.contains("depends-on"), "{listed}");

    std::fs::remove_file(&file).expect("remove");
    let (code, _, stderr) = run(&db, dir.path(), &["import", "--with-depends-on"]);
    assert_eq!(code, 0, "{stderr}");
    let listed = std::fs::read_to_string(&file).expect("file");
    assert!(listed.contains(r#"depends-on "public.items""#), "{listed}");
    assert!(
        !listed.contains("public.audit"),
        "the insert rule's table is not what the view reads: {listed}"
    );
    let (code, stdout, _) = run(&db, dir.path(), &["plan", "--detailed-exitcode"]);
    assert!(!stdout.contains("stale"), "{stdout}");
    assert_ne!(code, 1, "{stdout}");
}
