//! End-to-end scenarios beyond the invoices example: alterations in place, drift, undeclared
//! and unknown dependencies, refresh, password masking, the JSON plan, unpopulated
//! materialized views and forgotten declarations.
//!
//! Each test has a database of its own; roles are cluster-wide, so they are created
//! idempotently and never dropped.

mod support;

use std::path::Path;

use support::{TestDb, ensure_role, exists, oid, project, reconcile, run, test_db};

// ---------------------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------------------

/// `plan --detailed-exitcode`: exit code and stdout (stderr is added to failure messages).
fn plan(db: &TestDb, dir: &Path) -> (i32, String) {
    let (code, stdout, stderr) = run(db, dir, &["plan", "--detailed-exitcode"]);
    assert_ne!(code, 1, "plan failed:\n{stdout}\n{stderr}");
    (code, stdout)
}

/// Asserts that a plan now finds nothing to do.
fn assert_in_sync(db: &TestDb, dir: &Path) {
    let (code, stdout) = plan(db, dir);
    assert_eq!(code, 0, "expected a plan in sync:\n{stdout}");
    assert!(stdout.contains("In sync"), "{stdout}");
}

fn count(db: &TestDb, relation: &str) -> i64 {
    db.scalar_i64(&format!("SELECT count(*) FROM {relation}"))
}

fn has_select(db: &TestDb, role: &str, relation: &str) -> bool {
    db.scalar_string(&format!(
        "SELECT has_table_privilege('{role}', '{relation}', 'SELECT')::text"
    ))
    .as_deref()
        == Some("true")
}

/// Names of the indexes on `relation`, sorted, comma-separated.
fn index_names(db: &TestDb, relation: &str) -> String {
    db.scalar_string(&format!(
        "SELECT coalesce(string_agg(c.relname::text, ',' ORDER BY c.relname), '')
         FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid
         WHERE i.indrelid = '{relation}'::regclass"
    ))
    .unwrap_or_default()
}

/// The lines of a text plan that start an action (`create   public.x (view)`, …).
fn action_lines(stdout: &str) -> Vec<&str> {
    const VERBS: [&str; 7] = [
        "drop ", "forget ", "create ", "replace ", "rebuild ", "alter ", "refresh ",
    ];
    stdout
        .lines()
        .filter(|line| VERBS.iter().any(|verb| line.starts_with(verb)))
        .collect()
}

/// Position of the first line of `text` that starts with `prefix`.
fn line_index(text: &str, prefix: &str) -> Option<usize> {
    text.lines().position(|line| line.starts_with(prefix))
}

/// The `warning: …` lines of a text plan.
fn warnings(stdout: &str) -> Vec<&str> {
    stdout
        .lines()
        .filter(|line| line.starts_with("warning: "))
        .collect()
}

/// A database with table `items(id, cat, amt)` holding a few rows.
fn items_db() -> TestDb {
    let db = test_db();
    db.batch(
        "CREATE TABLE items (id integer PRIMARY KEY, cat integer NOT NULL, amt integer NOT NULL);
         INSERT INTO items SELECT i, i % 3, i * 10 FROM generate_series(1, 9) AS i;",
    );
    db
}

// ---------------------------------------------------------------------------------------
// 1. Alterations in place
// ---------------------------------------------------------------------------------------

const ALTER_BEFORE: &str = r#"
materialized-view "public.m" {
    depends-on "public.items"
    query "SELECT cat, sum(amt) AS total FROM items GROUP BY cat"
    index "cat" unique=#true name="m_cat_key"
    grant "SELECT" to="vk_reporting"
    comment "first comment"
}
"#;

const ALTER_AFTER: &str = r#"
materialized-view "public.m" {
    depends-on "public.items"
    query "SELECT cat, sum(amt) AS total FROM items GROUP BY cat"
    index "cat" unique=#true name="m_cat_key"
    index "total" name="m_total_idx"
    grant "SELECT" to="vk_auditor"
    comment "second comment"
    owner "vk_owner"
}
"#;

#[test]
fn a_grant_comment_index_and_owner_change_alters_in_place_and_keeps_the_oid() {
    let db = items_db();
    for role in ["vk_reporting", "vk_auditor", "vk_owner"] {
        ensure_role(&db, role);
    }
    let dir = project(&[("views/m.kdl", ALTER_BEFORE)]);
    reconcile(&db, dir.path());
    let before = oid(&db, "m");
    let first_owner = db
        .scalar_string(
            "SELECT pg_get_userbyid(relowner)::text FROM pg_class WHERE oid = 'm'::regclass",
        )
        .expect("owner");
    assert!(has_select(&db, "vk_reporting", "m"));
    assert_eq!(index_names(&db, "m"), "m_cat_key");

    std::fs::write(dir.path().join("views/m.kdl"), ALTER_AFTER).expect("edit");
    let (code, stdout) = plan(&db, dir.path());
    assert_eq!(code, 2, "{stdout}");
    assert_eq!(
        action_lines(&stdout),
        ["alter    public.m (materialized view)"],
        "exactly one alter action:\n{stdout}"
    );
    assert!(stdout.starts_with("Plan: 1 to alter."), "{stdout}");
    for detail in [
        "· create index m_total_idx".to_owned(),
        "· revoke SELECT from vk_reporting".to_owned(),
        "· grant SELECT to vk_auditor".to_owned(),
        "· set comment 'second comment'".to_owned(),
        format!("· change owner from {first_owner} to vk_owner"),
    ] {
        assert!(
            stdout
                .lines()
                .any(|line| line.trim_start().starts_with(&detail)),
            "the alter action must list `{detail}`:\n{stdout}"
        );
    }

    reconcile(&db, dir.path());
    assert_eq!(oid(&db, "m"), before, "altered in place, not recreated");
    assert!(
        has_select(&db, "vk_auditor", "m"),
        "SELECT granted to vk_auditor"
    );
    assert!(
        !has_select(&db, "vk_reporting", "m"),
        "SELECT revoked from vk_reporting"
    );
    assert_eq!(
        db.scalar_string("SELECT obj_description('m'::regclass, 'pg_class')")
            .as_deref(),
        Some("second comment")
    );
    assert_eq!(
        db.scalar_string(
            "SELECT pg_get_userbyid(relowner)::text FROM pg_class WHERE oid = 'm'::regclass"
        )
        .as_deref(),
        Some("vk_owner")
    );
    assert_eq!(index_names(&db, "m"), "m_cat_key,m_total_idx");
    assert_eq!(count(&db, "m"), 3, "the data is still there");
    assert_in_sync(&db, dir.path());
}

#[test]
fn b_an_index_added_by_hand_on_a_managed_materialized_view_is_dropped() {
    let db = items_db();
    ensure_role(&db, "vk_reporting");
    let dir = project(&[("views/m.kdl", ALTER_BEFORE)]);
    reconcile(&db, dir.path());
    let before = oid(&db, "m");
    db.batch("CREATE INDEX m_by_hand ON m (total)");

    let (code, stdout) = plan(&db, dir.path());
    assert_eq!(code, 2, "{stdout}");
    assert_eq!(
        action_lines(&stdout),
        ["alter    public.m (materialized view)"],
        "{stdout}"
    );
    assert!(
        stdout
            .lines()
            .any(|line| line.trim_start().starts_with("· drop index m_by_hand")),
        "the plan must say the hand-made index is dropped:\n{stdout}"
    );

    reconcile(&db, dir.path());
    assert_eq!(index_names(&db, "m"), "m_cat_key");
    assert_eq!(oid(&db, "m"), before);
    assert_in_sync(&db, dir.path());
}

// ---------------------------------------------------------------------------------------
// 2. Drift
// ---------------------------------------------------------------------------------------

/// One view over `items`: what the drift scenarios change things under.
const V_OVER_ITEMS: &str = r#"
view "public.v" {
    depends-on "public.items"
    query "SELECT id, amt FROM items WHERE amt > 7"
}
"#;

#[test]
fn c_a_renamed_column_under_a_view_is_drift() {
    let db = items_db();
    let dir = project(&[("views/v.kdl", V_OVER_ITEMS)]);
    reconcile(&db, dir.path());
    assert_in_sync(&db, dir.path());
    // The stored query tree does not change, what PostgreSQL prints does.
    db.batch("ALTER TABLE items RENAME COLUMN amt TO amount");
    // The declared query no longer compiles, so the plan stops, after saying why.
    let (_, stdout, stderr) = run(&db, dir.path(), &["plan"]);
    assert!(stdout.contains("drifted"), "{stdout}{stderr}");
    assert!(
        stdout.contains("amount"),
        "the diff shows the new name:\n{stdout}"
    );
}

#[test]
fn c_a_renamed_table_under_a_view_is_drift() {
    let db = items_db();
    let dir = project(&[("views/v.kdl", V_OVER_ITEMS)]);
    reconcile(&db, dir.path());
    assert_in_sync(&db, dir.path());
    // Like a renamed column: the stored query tree is the same, its printed text is not.
    // A new `items` keeps the declaration valid: only the live view tells the difference.
    db.batch(
        "ALTER TABLE items RENAME TO goods;
         CREATE TABLE items (id integer PRIMARY KEY, cat integer NOT NULL, amt integer NOT NULL);",
    );
    let (code, stdout) = plan(&db, dir.path());
    assert_eq!(code, 2, "{stdout}");
    assert!(stdout.contains("drifted"), "{stdout}");
    assert!(
        stdout.contains("goods"),
        "the diff shows the new name:\n{stdout}"
    );
}

/// Everything that changes how PostgreSQL prints a view without changing its stored rule
/// reads as drift, and undoing it reads as in sync again.
#[test]
fn c_what_changes_a_printed_view_without_touching_it_is_drift() {
    let db = items_db();
    db.batch("CREATE FUNCTION twice(integer) RETURNS integer LANGUAGE sql IMMUTABLE RETURN $1 * 2");
    let dir = project(&[(
        "views/v.kdl",
        r#"
view "public.v" {
    depends-on "public.items"
    query "SELECT id, twice(amt) AS doubled FROM items WHERE DATE '2020-01-02' > DATE '2019-12-31'"
}
"#,
    )]);
    reconcile(&db, dir.path());
    assert_in_sync(&db, dir.path());
    let database = db
        .scalar_string("SELECT quote_ident(current_database())")
        .expect("the database's name");
    for (change, undo) in [
        (
            "ALTER FUNCTION twice(integer) RENAME TO twofold".to_owned(),
            "ALTER FUNCTION twofold(integer) RENAME TO twice".to_owned(),
        ),
        (
            "ALTER TABLE items RENAME COLUMN id TO item_id".to_owned(),
            "ALTER TABLE items RENAME COLUMN item_id TO id".to_owned(),
        ),
        (
            "ALTER VIEW v RENAME COLUMN doubled TO twofold".to_owned(),
            "ALTER VIEW v RENAME COLUMN twofold TO doubled".to_owned(),
        ),
    ] {
        db.batch(&change);
        let (code, stdout, stderr) = run(&db, dir.path(), &["plan", "--detailed-exitcode"]);
        assert_ne!(code, 0, "after {change}:\n{stdout}{stderr}");
        db.batch(&undo);
        assert_in_sync(&db, dir.path());
    }
    // Constants print in the session's date style: the live view and the declared query
    // both print in the new one, which is no change.
    db.batch(&format!(
        "ALTER DATABASE {database} SET DateStyle = 'SQL, DMY'"
    ));
    assert_in_sync(&db, dir.path());
}

/// A state table made before viewkeeper recorded rule hashes: plan reads it as before
/// (deparsing every view), and the next reconcile adds the column and fills it.
#[test]
fn c_a_state_table_without_rule_hashes_still_works() {
    let db = items_db();
    let declared = |bound: i32| {
        format!(
            r#"
view "public.v" {{
    depends-on "public.items"
    query "SELECT id, amt FROM items WHERE amt > {bound}"
}}
view "public.w" {{
    depends-on "public.items"
    query "SELECT id FROM items"
}}
"#
        )
    };
    let dir = project(&[("views/v.kdl", &declared(7))]);
    reconcile(&db, dir.path());
    db.batch("ALTER TABLE viewkeeper.managed_object DROP COLUMN applied_rule_hash");
    assert_in_sync(&db, dir.path());

    // Drift is still seen without the hashes.
    db.batch("CREATE OR REPLACE VIEW v AS SELECT id, amt FROM items WHERE amt > 1000");
    let (code, stdout) = plan(&db, dir.path());
    assert_eq!(code, 2, "{stdout}");
    assert!(stdout.contains("drifted"), "{stdout}");

    reconcile(&db, dir.path());
    assert_eq!(
        db.scalar_i64(
            "SELECT count(*) FROM viewkeeper.managed_object WHERE applied_rule_hash IS NOT NULL"
        ),
        2,
        "the column is back, filled for the view reconcile restored and the one in sync"
    );
    assert_in_sync(&db, dir.path());
    std::fs::write(dir.path().join("views/v.kdl"), declared(8)).expect("write");
    let (code, stdout) = plan(&db, dir.path());
    assert_eq!(code, 2, "{stdout}");
    reconcile(&db, dir.path());
    assert_in_sync(&db, dir.path());
}

/// A recorded hash that no longer matches a view still printed as applied (here: blanked
/// by hand) is recorded again by the next reconcile, which changes nothing else.
#[test]
fn c_a_stale_rule_hash_is_recorded_again() {
    let db = items_db();
    let dir = project(&[("views/v.kdl", V_OVER_ITEMS)]);
    reconcile(&db, dir.path());
    let hash = "SELECT applied_rule_hash FROM viewkeeper.managed_object";
    let recorded = db.scalar_string(hash);
    assert!(
        recorded.is_some(),
        "a hash is recorded when a view is applied"
    );
    db.batch("UPDATE viewkeeper.managed_object SET applied_rule_hash = 'stale'");
    assert_in_sync(&db, dir.path());
    let before = oid(&db, "v");
    reconcile(&db, dir.path());
    assert_eq!(oid(&db, "v"), before);
    assert_eq!(db.scalar_string(hash), recorded);
    assert_in_sync(&db, dir.path());
}

#[test]
fn c_a_hand_edited_view_is_reported_as_drift_and_restored() {
    let db = items_db();
    let dir = project(&[("views/v.kdl", V_OVER_ITEMS)]);
    reconcile(&db, dir.path());
    let declared = db.scalar_string("SELECT pg_get_viewdef('v'::regclass)");
    assert_eq!(count(&db, "v"), 9);

    // Same columns, same types: CREATE OR REPLACE accepts it.
    db.batch("CREATE OR REPLACE VIEW v AS SELECT id, amt FROM items WHERE amt > 1000");
    assert_eq!(count(&db, "v"), 0);

    let (code, stdout) = plan(&db, dir.path());
    assert_eq!(code, 2, "{stdout}");
    assert_eq!(
        action_lines(&stdout),
        ["replace in place public.v (view)"],
        "same columns: restored in place\n{stdout}"
    );
    assert!(
        stdout.contains("drifted"),
        "must say the definition drifted:\n{stdout}"
    );
    let diff: Vec<&str> = stdout.lines().map(str::trim_start).collect();
    assert!(
        diff.iter().any(|l| l.starts_with("---")) && diff.iter().any(|l| l.starts_with("+++")),
        "must show a unified diff:\n{stdout}"
    );
    assert!(
        diff.iter()
            .any(|l| l.starts_with('+') && !l.starts_with("+++") && l.contains("amt > 7")),
        "the diff reads live → declared: reconcile adds back the applied condition:\n{stdout}"
    );
    assert!(
        diff.iter()
            .any(|l| l.starts_with('-') && !l.starts_with("---") && l.contains("amt > 1000")),
        "and removes the hand-edited one:\n{stdout}"
    );

    let before = oid(&db, "v");
    reconcile(&db, dir.path());
    assert_eq!(oid(&db, "v"), before, "restored in place");
    assert_eq!(
        db.scalar_string("SELECT pg_get_viewdef('v'::regclass)"),
        declared,
        "the declared query is back"
    );
    assert_eq!(count(&db, "v"), 9);
    assert_in_sync(&db, dir.path());
}

// ---------------------------------------------------------------------------------------
// 3. Undeclared real dependencies
// ---------------------------------------------------------------------------------------

const BASE_A: &str = r#"
view "public.a" {
    depends-on "public.items"
    query "SELECT id, cat, amt FROM items"
}
"#;

/// Reads `public.a` but only declares the table (which it does not read directly).
const READER_B: &str = r#"
view "public.b" {
    depends-on "public.items"
    query "SELECT id, amt FROM a WHERE cat = 1"
}
"#;

#[test]
fn d_an_undeclared_dependency_orders_rebuilds_and_is_warned_about() {
    let db = items_db();
    let dir = project(&[("views/a.kdl", BASE_A), ("views/b.kdl", READER_B)]);
    reconcile(&db, dir.path());
    assert_eq!(count(&db, "b"), 3);

    // In sync, but the declarations disagree with the catalog.
    let (code, stdout) = plan(&db, dir.path());
    assert_eq!(code, 0, "{stdout}");
    let found = warnings(&stdout);
    assert!(
        found.iter().any(|w| w.starts_with("warning: public.b:")
            && w.contains("public.a")
            && w.contains("depends-on")),
        "must warn that b's depends-on misses public.a:\n{stdout}"
    );
    assert!(
        found.iter().any(|w| w.starts_with("warning: public.b:")
            && w.contains("public.items")
            && w.contains("stale")),
        "must warn that b's depends-on public.items is stale:\n{stdout}"
    );

    // Editing a rebuilds b, after a, although b does not declare it.
    let b_before = oid(&db, "b");
    std::fs::write(
        dir.path().join("views/a.kdl"),
        BASE_A.replace(
            "SELECT id, cat, amt",
            // Retypes `amt`: no in-place replace, so b must be rebuilt.
            "SELECT id, cat, amt::int8 AS amt, amt * 2 AS double_amt",
        ),
    )
    .expect("edit");
    let (code, stdout) = plan(&db, dir.path());
    assert_eq!(code, 2, "{stdout}");
    assert_eq!(
        action_lines(&stdout),
        ["replace  public.a (view)", "rebuild  public.b (view)"],
        "{stdout}"
    );
    let rebuild = line_index(&stdout, "rebuild  public.b").expect("rebuild line");
    let reason = stdout.lines().nth(rebuild + 1).unwrap_or("");
    assert!(
        reason.contains("public.a"),
        "b is rebuilt because of a:\n{stdout}"
    );
    // Checked at the end, so the rest of the scenario runs whatever this says.
    let rebuild_plan = stdout;

    let (code, stdout, stderr) = run(&db, dir.path(), &["plan", "--format", "json"]);
    assert_eq!(code, 0, "{stderr}");
    let json: serde_json::Value = serde_json::from_str(&stdout).expect("json plan");
    let ddl: Vec<&str> = json["statements"]
        .as_array()
        .expect("statements")
        .iter()
        .filter(|s| matches!(s["phase"].as_str(), Some("drop" | "create")))
        .map(|s| s["object"].as_str().unwrap_or(""))
        .collect();
    assert_eq!(
        ddl,
        ["public.b", "public.a", "public.a", "public.b"],
        "drop b, drop a, create a, create b:\n{stdout}"
    );

    reconcile(&db, dir.path());
    assert_ne!(oid(&db, "b"), b_before, "b was rebuilt");
    assert_eq!(count(&db, "b"), 3);
    assert_eq!(
        db.scalar_i64(
            "SELECT count(*) FROM information_schema.columns
             WHERE table_name = 'a' AND column_name = 'double_amt'"
        ),
        1,
        "a has the new column"
    );
    assert_in_sync(&db, dir.path());

    assert!(
        warnings(&rebuild_plan)
            .iter()
            .any(|w| w.starts_with("warning: public.b:")
                && w.contains("public.a")
                && w.contains("depends-on")),
        "the plan that rebuilds b must warn that its depends-on misses public.a:\n{rebuild_plan}"
    );
}

#[test]
fn e_an_undeclared_dependency_on_a_first_reconcile_is_inferred_and_warned_about() {
    // `report` sorts before `source` and declares only the table: the order comes from its
    // query (inferred), and the plan says its depends-on is incomplete.
    let db = items_db();
    let dir = project(&[(
        "views/report.kdl",
        r#"
view "public.report" {
    depends-on "public.items"
    query "SELECT cat, count(*) AS n FROM source GROUP BY cat"
}
view "public.source" {
    depends-on "public.items"
    query "SELECT id, cat FROM items"
}
"#,
    )]);
    let (code, stdout, stderr) = run(&db, dir.path(), &["reconcile"]);
    assert_eq!(code, 0, "{stdout}\n{stderr}");
    assert_eq!(count(&db, "report"), 3);
    let (code, stdout) = plan(&db, dir.path());
    assert_eq!(code, 0, "{stdout}");
    assert!(
        warnings(&stdout)
            .iter()
            .any(|w| w.starts_with("warning: public.report:")
                && w.contains("public.source")
                && w.contains("depends-on")),
        "the declared depends-on is cross-checked:\n{stdout}"
    );
}

// ---------------------------------------------------------------------------------------
// 4. Unknown dependency
// ---------------------------------------------------------------------------------------

#[test]
fn f_a_depends_on_naming_nothing_fails_at_its_file_line_and_column() {
    let db = items_db();
    let text = "view \"public.v\" {\n    depends-on \"public.items\"\n    depends-on \"public.ghost\"\n    query \"SELECT id FROM items\"\n}\n";
    let dir = project(&[("views/bad.kdl", text)]);
    // Line 3, column 16: where the string "public.ghost" starts.
    for command in [&["plan", "--detailed-exitcode"][..], &["reconcile"][..]] {
        let (code, stdout, stderr) = run(&db, dir.path(), command);
        assert_eq!(code, 1, "{command:?}:\n{stdout}\n{stderr}");
        assert!(
            stderr.contains("bad.kdl:3:16"),
            "{command:?} must point at bad.kdl:3:16:\n{stderr}"
        );
        assert!(stderr.contains("public.ghost"), "{command:?}:\n{stderr}");
    }
    assert!(!exists(&db, "v"), "nothing created");
    assert_eq!(
        db.scalar_i64("SELECT count(*) FROM pg_namespace WHERE nspname = 'viewkeeper'"),
        0,
        "not even the state schema"
    );
}

// ---------------------------------------------------------------------------------------
// 5. Refresh
// ---------------------------------------------------------------------------------------

const CHAIN: &str = r#"
materialized-view "public.m1" {
    depends-on "public.items"
    query "SELECT id, cat FROM items"
    index "id" unique=#true name="m1_id_key"
    refresh every="1h" concurrently=#true
}
view "public.v" {
    depends-on "public.m1"
    query "SELECT id, cat FROM m1"
}
materialized-view "public.m2" {
    depends-on "public.v"
    query "SELECT id FROM v"
}
"#;

/// The `refreshed …` lines of a refresh's stdout.
fn refreshed(stdout: &str) -> Vec<&str> {
    stdout
        .lines()
        .filter(|line| line.starts_with("refreshed "))
        .collect()
}

fn refresh_log(db: &TestDb, object: &str) -> i64 {
    db.scalar_i64(&format!(
        "SELECT count(*) FROM viewkeeper.refresh_log WHERE object_name = '{object}' AND outcome = 'ok'"
    ))
}

fn insert_items(db: &TestDb, from: i64, to: i64) {
    db.batch(&format!(
        "INSERT INTO items SELECT i, i % 3, i * 10 FROM generate_series({from}, {to}) AS i"
    ));
}

#[test]
fn g_refresh_follows_the_chain_only_when_asked() {
    let db = items_db();
    let dir = project(&[("views/chain.kdl", CHAIN)]);
    reconcile(&db, dir.path());
    assert_eq!((count(&db, "m1"), count(&db, "m2")), (9, 9));
    let (log_m1, log_m2) = (refresh_log(&db, "m1"), refresh_log(&db, "m2"));
    // Each create filled its view: logged as a refresh, so `schedule` counts from it.
    assert_eq!((log_m1, log_m2), (1, 1));

    // Only m1: m2 stays stale.
    insert_items(&db, 10, 11);
    let (code, stdout, stderr) = run(&db, dir.path(), &["refresh", "public.m1"]);
    assert_eq!(code, 0, "{stdout}\n{stderr}");
    let lines = refreshed(&stdout);
    assert_eq!(lines.len(), 1, "{stdout}");
    assert!(
        lines[0].starts_with("refreshed public.m1 (concurrently)"),
        "declared concurrently=#true with a unique index:\n{stdout}"
    );
    assert_eq!((count(&db, "m1"), count(&db, "m2")), (11, 9));

    // Downstream: m1, then m2 (through the plain view v).
    let (code, stdout, stderr) = run(&db, dir.path(), &["refresh", "public.m1", "--downstream"]);
    assert_eq!(code, 0, "{stdout}\n{stderr}");
    let lines = refreshed(&stdout);
    assert_eq!(lines.len(), 2, "{stdout}");
    assert!(lines[0].starts_with("refreshed public.m1"), "{stdout}");
    assert!(lines[1].starts_with("refreshed public.m2"), "{stdout}");
    assert_eq!((count(&db, "m1"), count(&db, "m2")), (11, 11));

    // No names: every materialized view, in dependency order.
    insert_items(&db, 12, 14);
    let (code, stdout, stderr) = run(&db, dir.path(), &["refresh"]);
    assert_eq!(code, 0, "{stdout}\n{stderr}");
    let lines = refreshed(&stdout);
    assert_eq!(lines.len(), 2, "{stdout}");
    assert!(lines[0].starts_with("refreshed public.m1"), "{stdout}");
    assert!(lines[1].starts_with("refreshed public.m2"), "{stdout}");
    assert_eq!((count(&db, "m1"), count(&db, "m2")), (14, 14));

    // History: three refreshes of m1 (all concurrent), two of m2.
    assert_eq!(refresh_log(&db, "m1") - log_m1, 3);
    assert_eq!(refresh_log(&db, "m2") - log_m2, 2);
    assert_eq!(
        db.scalar_i64(
            "SELECT count(*) FROM (SELECT concurrent FROM viewkeeper.refresh_log
             WHERE object_name = 'm1' ORDER BY id DESC LIMIT 3) AS last WHERE concurrent"
        ),
        3,
        "m1's refreshes were recorded as concurrent"
    );
}

#[test]
fn h_refresh_refuses_plain_views_and_unknown_names() {
    let db = items_db();
    let dir = project(&[("views/chain.kdl", CHAIN)]);
    reconcile(&db, dir.path());

    let (code, stdout, stderr) = run(&db, dir.path(), &["refresh", "public.v"]);
    assert_eq!(code, 1, "{stdout}\n{stderr}");
    assert!(
        stderr.contains("public.v") && stderr.contains("not a materialized view"),
        "must say public.v is a plain view:\n{stderr}"
    );
    assert!(refreshed(&stdout).is_empty(), "{stdout}");

    let (code, stdout, stderr) = run(&db, dir.path(), &["refresh", "public.nope"]);
    assert_eq!(code, 1, "{stdout}\n{stderr}");
    assert!(
        stderr.contains("public.nope") && stderr.contains("not declared"),
        "must name the unknown view:\n{stderr}"
    );
    assert!(refreshed(&stdout).is_empty(), "{stdout}");
}

// ---------------------------------------------------------------------------------------
// 6. Password masking
// ---------------------------------------------------------------------------------------

#[test]
fn i_a_connection_failure_never_shows_the_password() {
    const URL: &str = "postgresql://postgres:SuperSecret123@127.0.0.1:1/postgres";
    const MASKED: &str = "postgresql://postgres:***@127.0.0.1:1/postgres";
    let dir = project(&[(
        "views/v.kdl",
        "view \"public.v\" {\n    query \"SELECT 1 AS x\"\n}\n",
    )]);
    let from_env = || {
        let mut cmd = assert_cmd::Command::cargo_bin("viewkeeper").expect("binary");
        cmd.arg("--project")
            .arg(dir.path())
            .arg("plan")
            .env("DATABASE_URL", URL)
            .env("NO_COLOR", "1")
            .env_remove("CLICOLOR_FORCE");
        cmd
    };
    let from_flag = || {
        let mut cmd = assert_cmd::Command::cargo_bin("viewkeeper").expect("binary");
        cmd.arg("--project")
            .arg(dir.path())
            .arg("--database-url")
            .arg(URL)
            .arg("plan")
            .env_remove("DATABASE_URL")
            .env("NO_COLOR", "1")
            .env_remove("CLICOLOR_FORCE");
        cmd
    };
    for (how, mut cmd) in [
        ("DATABASE_URL", from_env()),
        ("--database-url", from_flag()),
    ] {
        let output = cmd.output().expect("run viewkeeper");
        let stdout = String::from_utf8_lossy(&output.stdout);
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert_eq!(output.status.code(), Some(1), "{how}:\n{stdout}\n{stderr}");
        assert!(
            !stdout.contains("SuperSecret123") && !stderr.contains("SuperSecret123"),
            "{how}: the password leaked:\n{stdout}\n{stderr}"
        );
        assert!(
            stderr.contains(MASKED),
            "{how}: stderr must name the masked URL {MASKED}:\n{stderr}"
        );
    }
}

// ---------------------------------------------------------------------------------------
// 7. JSON plan
// ---------------------------------------------------------------------------------------

const JSON_PROJECT: &str = r#"
materialized-view "public.m" {
    depends-on "public.items"
    query "SELECT id, cat, amt FROM items"
    index "id" unique=#true name="m_id_key"
    grant "SELECT" to="vk_reporting"
    comment "All items"
    owner "vk_owner"
    refresh every="15m" concurrently=#true
}
view "public.v" {
    depends-on "public.m"
    query "SELECT id, amt FROM m WHERE cat = 1"
    grant "SELECT" to="vk_reporting"
    comment "Category one"
}
"#;

#[test]
fn j_the_json_plan_of_a_fresh_database_has_the_documented_shape() {
    let db = items_db();
    ensure_role(&db, "vk_reporting");
    ensure_role(&db, "vk_owner");
    // A materialized view is refreshed with its owner's privileges.
    db.batch("GRANT SELECT ON items TO vk_owner");
    let dir = project(&[("views/items.kdl", JSON_PROJECT)]);
    let (code, stdout, stderr) = run(
        &db,
        dir.path(),
        &["plan", "--format", "json", "--detailed-exitcode"],
    );
    assert_eq!(code, 2, "{stdout}\n{stderr}");
    let plan: serde_json::Value = serde_json::from_str(&stdout).expect("the plan is JSON");

    assert_eq!(plan["format_version"], 1, "{stdout}");
    assert_eq!(plan["in_sync"], false, "{stdout}");
    assert_eq!(
        plan["summary"],
        serde_json::json!({ "create": 2 }),
        "{stdout}"
    );
    let actions: Vec<(&str, &str, &str)> = plan["actions"]
        .as_array()
        .expect("actions")
        .iter()
        .map(|a| {
            assert!(
                a["reason"].as_str().is_some_and(|r| !r.is_empty()),
                "every action has a reason: {a}"
            );
            (
                a["change"].as_str().unwrap_or(""),
                a["object"].as_str().unwrap_or(""),
                a["kind"].as_str().unwrap_or(""),
            )
        })
        .collect();
    assert_eq!(
        actions,
        [
            ("create", "public.m", "materialized-view"),
            ("create", "public.v", "view"),
        ]
    );

    const PHASES: [&str; 7] = [
        "drop", "create", "index", "grant", "comment", "owner", "refresh",
    ];
    let statements = plan["statements"].as_array().expect("statements");
    let phases: Vec<usize> = statements
        .iter()
        .map(|s| {
            assert!(
                s["object"].as_str().is_some() && s["sql"].as_str().is_some(),
                "every statement has an object and SQL: {s}"
            );
            let phase = s["phase"].as_str().unwrap_or("");
            PHASES
                .iter()
                .position(|p| *p == phase)
                .unwrap_or_else(|| panic!("unknown phase {phase:?}"))
        })
        .collect();
    assert!(
        phases.windows(2).all(|w| w[0] <= w[1]),
        "statements must run phase by phase ({PHASES:?}):\n{stdout}"
    );
    // No refresh: a new materialized view is filled by its create (`WITH DATA`).
    for phase in &PHASES[1..PHASES.len() - 1] {
        assert!(
            statements.iter().any(|s| s["phase"] == *phase),
            "a fresh plan has a {phase} statement:\n{stdout}"
        );
    }
    assert!(
        statements.iter().any(|s| s["sql"]
            .as_str()
            .is_some_and(|sql| sql.ends_with("WITH DATA"))),
        "the materialized view is created with its data:\n{stdout}"
    );
    assert_eq!(plan["warnings"], serde_json::json!([]), "{stdout}");

    insta::assert_snapshot!("fresh_plan_json", stdout);

    // And the plan is what reconcile does.
    reconcile(&db, dir.path());
    assert_in_sync(&db, dir.path());
}

// ---------------------------------------------------------------------------------------
// 8. populate #false
// ---------------------------------------------------------------------------------------

#[test]
fn k_a_materialized_view_declared_populate_false_stays_empty_and_in_sync() {
    let db = items_db();
    let dir = project(&[(
        "views/m.kdl",
        r#"
materialized-view "public.lazy" {
    depends-on "public.items"
    query "SELECT id, amt FROM items"
    populate #false
}
"#,
    )]);
    let (code, stdout) = plan(&db, dir.path());
    assert_eq!(code, 2, "{stdout}");
    assert_eq!(
        action_lines(&stdout),
        ["create   public.lazy (materialized view)"],
        "no refresh for populate #false:\n{stdout}"
    );

    reconcile(&db, dir.path());
    assert!(exists(&db, "lazy"));
    assert_eq!(
        db.scalar_string("SELECT relispopulated::text FROM pg_class WHERE oid = 'lazy'::regclass")
            .as_deref(),
        Some("false")
    );
    assert_in_sync(&db, dir.path());
}

#[test]
fn k_a_new_view_over_an_emptied_one_is_filled_after_it() {
    let db = items_db();
    let first = r#"
materialized-view "public.m1" {
    depends-on "public.items"
    query "SELECT id, cat FROM items"
}
"#;
    let dir = project(&[("views/m.kdl", first)]);
    reconcile(&db, dir.path());
    // Emptied outside viewkeeper; a view created over it now cannot be filled at its create.
    db.batch("REFRESH MATERIALIZED VIEW m1 WITH NO DATA");
    let second = format!(
        "{first}
materialized-view \"public.m2\" {{
    depends-on \"public.m1\"
    query \"SELECT id FROM m1\"
}}
"
    );
    std::fs::write(dir.path().join("views/m.kdl"), second).expect("edit");
    let (code, stdout) = plan(&db, dir.path());
    assert_eq!(code, 2, "{stdout}");
    assert_eq!(
        action_lines(&stdout),
        [
            "create   public.m2 (materialized view)",
            "refresh  public.m1 (materialized view)",
            "refresh  public.m2 (materialized view)",
        ],
        "{stdout}"
    );
    reconcile(&db, dir.path());
    assert_eq!((count(&db, "m1"), count(&db, "m2")), (9, 9));
    assert_in_sync(&db, dir.path());
}

// ---------------------------------------------------------------------------------------
// 9. Forget
// ---------------------------------------------------------------------------------------

const TWO_VIEWS: &str = r#"
view "public.keep" {
    depends-on "public.items"
    query "SELECT id FROM items"
}
view "public.gone" {
    depends-on "public.items"
    query "SELECT amt FROM items"
}
"#;

const ONE_VIEW: &str = r#"
view "public.keep" {
    depends-on "public.items"
    query "SELECT id FROM items"
}
"#;

fn managed(db: &TestDb, object: &str) -> i64 {
    db.scalar_i64(&format!(
        "SELECT count(*) FROM viewkeeper.managed_object WHERE schema_name = 'public' AND object_name = '{object}'"
    ))
}

#[test]
fn l_a_removed_declaration_whose_view_is_already_gone_is_forgotten() {
    let db = items_db();
    let dir = project(&[("views/views.kdl", TWO_VIEWS)]);
    reconcile(&db, dir.path());
    assert_eq!((managed(&db, "keep"), managed(&db, "gone")), (1, 1));

    std::fs::write(dir.path().join("views/views.kdl"), ONE_VIEW).expect("edit");
    db.batch("DROP VIEW gone");
    let keep = oid(&db, "keep");

    let (code, stdout) = plan(&db, dir.path());
    assert_eq!(code, 2, "{stdout}");
    assert_eq!(
        action_lines(&stdout),
        ["forget   public.gone (view)"],
        "{stdout}"
    );

    reconcile(&db, dir.path());
    assert_eq!(managed(&db, "gone"), 0, "the state row is gone");
    assert_eq!(managed(&db, "keep"), 1);
    assert_eq!(oid(&db, "keep"), keep, "keep is untouched");
    assert_in_sync(&db, dir.path());
}
