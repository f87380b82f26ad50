//! Issue 9, zero-downtime changes: a plain view whose new columns extend its live ones is
//! replaced in place (same OID, grants, comments, dependents untouched).
//!
//! Each test has a database of its own; roles are cluster-wide, created idempotently.

mod support;

use std::path::Path;

use support::{TestDb, ensure_role, oid, project, reconcile, run, test_db};

/// A table, a view over it, a middle view, a top view, and a materialized view on the
/// middle one: the chain whose OIDs must survive a compatible change of the middle view.
fn chain(middle_query: &str) -> String {
    format!(
        r#"
view "public.base" {{
    query "SELECT id, cat, amt FROM items"
}}
view "public.middle" {{
    query "{middle_query}"
    grant "SELECT" to="vk_reporting"
    comment "the middle of the chain"
}}
view "public.top" {{
    query "SELECT id, amt FROM middle WHERE amt > 20"
    grant "SELECT" to="vk_reporting"
}}
materialized-view "public.totals" {{
    query "SELECT count(*) AS n FROM middle"
}}
"#
    )
}

fn items_db() -> TestDb {
    let db = test_db();
    db.batch(
        "CREATE TABLE items (id integer PRIMARY KEY, cat integer NOT NULL, amt integer NOT NULL);
         INSERT INTO items SELECT i, i % 3, i * 10 FROM generate_series(1, 9) AS i;",
    );
    ensure_role(&db, "vk_reporting");
    db
}

fn oids(db: &TestDb) -> Vec<i64> {
    ["base", "middle", "top", "totals"]
        .iter()
        .map(|name| oid(db, name))
        .collect()
}

/// `plan --detailed-exitcode`: exit code and stdout.
fn plan(db: &TestDb, dir: &Path, extra: &[&str]) -> (i32, String) {
    let mut args = vec!["plan", "--detailed-exitcode"];
    args.extend_from_slice(extra);
    let (code, stdout, stderr) = run(db, dir, &args);
    assert_ne!(code, 1, "plan failed:\n{stdout}\n{stderr}");
    (code, stdout)
}

fn write(dir: &Path, text: &str) {
    std::fs::write(dir.join("views/chain.kdl"), text).expect("edit the declarations");
}

#[test]
fn appending_a_column_to_a_middle_view_replaces_it_in_place_and_keeps_every_oid() {
    let db = items_db();
    let dir = project(&[("views/chain.kdl", &chain("SELECT id, amt FROM base"))]);
    reconcile(&db, dir.path());
    db.batch("COMMENT ON COLUMN middle.amt IS 'made by hand, kept by an in-place change'");
    let before = oids(&db);

    // As if totals held real data: its last refresh took 4.2 s.
    db.batch(
        "INSERT INTO viewkeeper.refresh_log
             (schema_name, object_name, started_at, duration_ms, concurrent, outcome)
         VALUES ('public', 'totals', now(), 4200, false, 'ok')",
    );
    write(
        dir.path(),
        &chain("SELECT id, amt, cat, amt * 2 AS doubled FROM base"),
    );
    let (code, stdout) = plan(&db, dir.path(), &[]);
    assert_eq!(code, 2, "{stdout}");
    let actions: Vec<&str> = stdout
        .lines()
        .filter(|line| !line.starts_with(' ') && line.contains("public."))
        .collect();
    assert_eq!(
        actions,
        [
            "replace in place public.middle (view)",
            "refresh  public.totals (materialized view)"
        ],
        "one in-place replace, no rebuild above it, and the rows read from it refreshed:\n{stdout}"
    );
    assert!(
        stdout.contains("lock: ACCESS EXCLUSIVE for about 4.2 s"),
        "the cost is told, from the last build of totals:\n{stdout}"
    );
    assert!(
        stdout.contains("· adds columns cat integer, doubled integer"),
        "the plan names the appended columns, as PostgreSQL typed them:\n{stdout}"
    );

    let (code, json, stderr) = run(&db, dir.path(), &["plan", "--format", "json"]);
    assert_eq!(code, 0, "{stderr}");
    let json: serde_json::Value = serde_json::from_str(&json).expect("plan JSON");
    let changes: Vec<&str> = json["actions"]
        .as_array()
        .expect("actions")
        .iter()
        .filter_map(|action| action["change"].as_str())
        .collect();
    assert_eq!(changes, ["replace-in-place", "refresh"], "{json}");
    assert_eq!(json["actions"][0]["lock"], "ACCESS EXCLUSIVE", "{json}");
    assert_eq!(json["actions"][0]["hold"], "while-building", "{json}");
    assert_eq!(json["actions"][0]["hold_seconds"], 4.2, "{json}");

    let stdout = reconcile(&db, dir.path());
    assert_eq!(oids(&db), before, "no OID of the chain changed:\n{stdout}");
    assert_eq!(
        db.scalar_string("SELECT has_table_privilege('vk_reporting', 'middle', 'SELECT')::text")
            .as_deref(),
        Some("true"),
        "the grant is kept"
    );
    assert_eq!(
        db.scalar_string("SELECT obj_description('middle'::regclass, 'pg_class')")
            .as_deref(),
        Some("the middle of the chain")
    );
    assert_eq!(
        db.scalar_string("SELECT col_description('middle'::regclass, 2)")
            .as_deref(),
        Some("made by hand, kept by an in-place change")
    );
    assert_eq!(db.scalar_i64("SELECT sum(doubled) FROM middle"), 900);
    assert_eq!(db.scalar_i64("SELECT n FROM totals"), 9, "data kept");
    let (code, stdout) = plan(&db, dir.path(), &[]);
    assert_eq!(code, 0, "plan is clean afterwards:\n{stdout}");
}

#[test]
fn a_view_that_drops_or_retypes_a_column_is_rebuilt_with_what_is_above_it() {
    let db = items_db();
    let dir = project(&[("views/chain.kdl", &chain("SELECT id, amt FROM base"))]);
    reconcile(&db, dir.path());
    let before = oids(&db);

    // `amt` becomes bigint: PostgreSQL cannot replace that in place.
    write(dir.path(), &chain("SELECT id, amt::int8 AS amt FROM base"));
    let (code, stdout) = plan(&db, dir.path(), &[]);
    assert_eq!(code, 2, "{stdout}");
    assert!(stdout.contains("replace  public.middle (view)"), "{stdout}");
    assert!(stdout.contains("rebuild  public.top (view)"), "{stdout}");
    assert!(
        stdout.contains("rebuild  public.totals (materialized view)"),
        "{stdout}"
    );
    reconcile(&db, dir.path());
    let after = oids(&db);
    assert_eq!(after[0], before[0], "base is untouched");
    assert_ne!(after[1], before[1], "middle was rebuilt");
    assert_eq!(
        db.scalar_string(
            "SELECT format_type(atttypid, atttypmod) FROM pg_attribute
             WHERE attrelid = 'middle'::regclass AND attname = 'amt'"
        )
        .as_deref(),
        Some("bigint")
    );
    let (code, stdout) = plan(&db, dir.path(), &[]);
    assert_eq!(code, 0, "{stdout}");
}

#[test]
fn a_compatible_view_above_a_rebuilt_one_is_rebuilt_too() {
    let db = items_db();
    let dir = project(&[("views/chain.kdl", &chain("SELECT id, amt FROM base"))]);
    reconcile(&db, dir.path());

    // base changes incompatibly (a column removed), middle compatibly: middle cannot stay
    // in place, since base is dropped and recreated under it.
    let text = chain("SELECT id, amt, 1 AS one FROM base").replace(
        "SELECT id, cat, amt FROM items",
        "SELECT id, amt FROM items",
    );
    write(dir.path(), &text);
    let (code, stdout) = plan(&db, dir.path(), &[]);
    assert_eq!(code, 2, "{stdout}");
    assert!(stdout.contains("replace  public.base (view)"), "{stdout}");
    assert!(stdout.contains("replace  public.middle (view)"), "{stdout}");
    assert!(!stdout.contains("in place"), "{stdout}");
    reconcile(&db, dir.path());
    assert_eq!(db.scalar_i64("SELECT sum(one) FROM middle"), 9);
    let (code, stdout) = plan(&db, dir.path(), &[]);
    assert_eq!(code, 0, "{stdout}");
}

/// A view replaced in place changes the rows of a materialized view above it: reconcile
/// refreshes it, concurrently as it has a unique index, so a session reading it (and
/// holding its lock) does not make reconcile wait, and reconcile does not make it wait.
#[test]
fn a_materialized_view_above_a_view_replaced_in_place_is_refreshed_concurrently() {
    let db = items_db();
    let declarations = |middle: &str| {
        format!(
            r#"{}
materialized-view "public.by_cat" {{
    query "SELECT cat, sum(amt) AS total FROM middle GROUP BY cat"
    index "cat" unique=#true
}}
"#,
            chain(middle)
        )
    };
    let dir = project(&[(
        "views/chain.kdl",
        &declarations("SELECT id, amt, cat FROM base"),
    )]);
    reconcile(&db, dir.path());
    let by_cat = oid(&db, "by_cat");
    assert_eq!(db.scalar_i64("SELECT sum(total) FROM by_cat"), 450);

    write(
        dir.path(),
        &declarations("SELECT id, amt, cat, id * 2 AS twice FROM base WHERE amt > 40"),
    );
    let (code, stdout) = plan(&db, dir.path(), &[]);
    assert_eq!(code, 2, "{stdout}");
    assert!(
        stdout.contains("refresh  public.by_cat (materialized view)")
            && stdout.contains("lock: EXCLUSIVE (writers wait, readers do not)"),
        "{stdout}"
    );

    // A reader in the middle of a transaction on by_cat: a plain refresh would wait for it
    // (ACCESS EXCLUSIVE) and give up after lock-timeout; a concurrent one does not.
    let reader = db.second_session();
    db.block_on(reader.batch_execute("BEGIN; SELECT count(*) FROM by_cat;"))
        .expect("the reader holds by_cat");
    let (code, stdout, stderr) = run(&db, dir.path(), &["reconcile"]);
    assert_eq!(code, 0, "{stdout}{stderr}");
    let seen = db.block_on(reader.query_one("SELECT sum(total)::int8 FROM by_cat", &[]));
    assert_eq!(
        seen.expect("the reader reads on, in the same transaction")
            .get::<_, i64>(0),
        350,
        "the refreshed rows"
    );
    db.block_on(reader.batch_execute("COMMIT"))
        .expect("reader ends");

    assert_eq!(oid(&db, "by_cat"), by_cat, "refreshed, not rebuilt");
    assert_eq!(
        db.scalar_i64("SELECT sum(total) FROM by_cat"),
        db.scalar_i64("SELECT sum(amt) FROM items WHERE amt > 40"),
        "the rows follow the new view"
    );
    let (code, stdout) = plan(&db, dir.path(), &[]);
    assert_eq!(code, 0, "in sync afterwards:\n{stdout}");
}
