//! `reconcile --keep-going`: one broken declaration does not keep every other view down.

mod support;

use support::{TestDb, exists, project, reconcile, run, test_db};

fn customers_db() -> TestDb {
    let db = test_db();
    db.batch(
        "CREATE TABLE customers (id int PRIMARY KEY, name text, country text);
         INSERT INTO customers SELECT i, 'c' || i, CASE WHEN i % 2 = 0 THEN 'FR' ELSE 'DE' END
         FROM generate_series(1, 10) i;",
    );
    db
}

const VIEWS: &str = r#"view "wide" {
    depends-on "customers"
    query "SELECT * FROM customers"
}
materialized-view "wide_summary" {
    depends-on "wide"
    query "SELECT count(*) AS n FROM wide"
    index "n" unique=#true
    grant "SELECT" to="PUBLIC"
}
view "by_country" {
    depends-on "customers"
    query "SELECT country, count(*) AS n FROM customers GROUP BY country"
}
view "top_countries" {
    depends-on "by_country"
    query "SELECT country FROM by_country ORDER BY n DESC LIMIT 1"
}
"#;

fn managed(db: &TestDb) -> Vec<String> {
    db.strings("SELECT object_name FROM viewkeeper.managed_object ORDER BY object_name")
        .into_iter()
        .filter_map(|row| row.into_iter().next().flatten())
        .collect()
}

#[test]
fn a_stale_declaration_does_not_keep_the_others_down() {
    let db = customers_db();
    let dir = project(&[("views/v.kdl", VIEWS)]);
    reconcile(&db, dir.path());
    db.batch("ALTER TABLE customers DROP COLUMN country CASCADE");
    assert!(!exists(&db, "wide") && !exists(&db, "wide_summary") && !exists(&db, "by_country"));

    // All or nothing without the flag.
    let (code, _, stderr) = run(&db, dir.path(), &["reconcile"]);
    assert_eq!(code, 1, "{stderr}");
    assert!(!exists(&db, "wide"));

    let (code, stdout, stderr) = run(&db, dir.path(), &["reconcile", "--keep-going"]);
    assert_eq!(code, 1, "{stdout}{stderr}");
    assert!(
        exists(&db, "wide") && exists(&db, "wide_summary"),
        "{stdout}{stderr}"
    );
    assert_eq!(db.scalar_i64("SELECT n FROM wide_summary"), 10);
    assert!(!exists(&db, "by_country") && !exists(&db, "top_countries"));
    assert!(
        stderr.contains("1 object failed")
            && stderr.contains("top_countries (because of public.by_country)"),
        "{stderr}"
    );
    assert!(
        stderr.contains("v.kdl:13:"),
        "the failing declaration's line:\n{stderr}"
    );
    assert!(stderr.contains("country"), "{stderr}");
    // Progress shows only what was applied.
    assert!(!stdout.contains("by_country"), "{stdout}");
    // The state still holds every object; the failed ones keep their last applied record.
    assert_eq!(
        managed(&db),
        ["by_country", "top_countries", "wide", "wide_summary"]
    );
    // The rest is pending, and plan says it cannot be applied as declared.
    let (code, _, stderr) = run(&db, dir.path(), &["plan", "--detailed-exitcode"]);
    assert_eq!(code, 1, "{stderr}");

    let (code, json, _) = run(
        &db,
        dir.path(),
        &["reconcile", "--keep-going", "--format", "json"],
    );
    assert_eq!(code, 1);
    let json: serde_json::Value = serde_json::from_str(&json).expect("json");
    assert_eq!(json["failed"][0]["object"], "public.by_country", "{json}");
    assert!(
        json["failed"][0]["location"]
            .as_str()
            .is_some_and(|l| l.contains("v.kdl:13")),
        "{json}"
    );
    assert_eq!(
        json["skipped"][0]["object"], "public.top_countries",
        "{json}"
    );
    assert_eq!(
        json["applied"].as_array().map(Vec::len),
        Some(0),
        "nothing left to apply: {json}"
    );
}

#[test]
fn an_index_that_no_longer_fits_the_data_leaves_only_its_view_out() {
    let db = customers_db();
    let dir = project(&[(
        "views/v.kdl",
        r#"materialized-view "names" {
    depends-on "customers"
    query "SELECT name FROM customers"
    index "name" unique=#true
}
view "on_names" {
    depends-on "names"
    query "SELECT name FROM names"
}
view "plain" {
    depends-on "customers"
    query "SELECT id FROM customers"
}
"#,
    )]);
    reconcile(&db, dir.path());
    db.batch(
        "INSERT INTO customers VALUES (11, 'c1', 'FR');
         DROP MATERIALIZED VIEW names CASCADE; DROP VIEW plain;",
    );
    let (code, stdout, stderr) = run(&db, dir.path(), &["reconcile", "--keep-going"]);
    assert_eq!(code, 1, "{stdout}{stderr}");
    assert!(exists(&db, "plain"), "{stderr}");
    assert!(!exists(&db, "names") && !exists(&db, "on_names"));
    assert!(stderr.contains("could not create unique index"), "{stderr}");
}

#[test]
fn run_brings_back_what_it_can_after_a_migration() {
    let db = customers_db();
    let dir = project(&[("views/v.kdl", VIEWS)]);
    reconcile(&db, dir.path());
    let migration = format!(
        "psql -q -v ON_ERROR_STOP=1 '{}' -c 'ALTER TABLE customers DROP COLUMN country CASCADE'",
        db.url
    );
    let (code, stdout, stderr) = run(&db, dir.path(), &["run", "--", "sh", "-c", &migration]);
    assert_eq!(
        code, 1,
        "the migration succeeded, reconcile did not fully:\n{stdout}{stderr}"
    );
    assert!(
        exists(&db, "wide") && exists(&db, "wide_summary"),
        "{stdout}{stderr}"
    );
    assert!(stderr.contains("by_country"), "{stderr}");
}
