//! Exit codes and messages a CI gate can use: `status --detailed-exitcode`, warnings that
//! point at the declaration.

mod support;

use support::{project, reconcile, run, test_db};

#[test]
fn status_detailed_exitcode_says_in_sync_pending_or_error() {
    let db = test_db();
    db.batch("CREATE TABLE t (a int)");
    let dir = project(&[(
        "views/v.kdl",
        "view \"v\" {\n    depends-on \"t\"\n    query \"SELECT a FROM t\"\n}\n",
    )]);
    let (code, stdout, stderr) = run(&db, dir.path(), &["status", "--detailed-exitcode"]);
    assert_eq!(code, 2, "not created yet:\n{stdout}{stderr}");
    reconcile(&db, dir.path());
    let (code, stdout, stderr) = run(&db, dir.path(), &["status", "--detailed-exitcode"]);
    assert_eq!(code, 0, "{stdout}{stderr}");
    db.batch("DROP VIEW v");
    let (code, stdout, stderr) = run(&db, dir.path(), &["status", "--detailed-exitcode"]);
    assert_eq!(code, 2, "missing:\n{stdout}{stderr}");
    std::fs::write(dir.path().join("views/v.kdl"), "view \"v\" {\n").expect("write");
    let (code, _, _) = run(&db, dir.path(), &["status", "--detailed-exitcode"]);
    assert_eq!(code, 1, "bad declarations are an error");
}

#[test]
fn dependency_warnings_carry_the_declarations_file_and_line() {
    let db = test_db();
    db.batch("CREATE TABLE t (a int); CREATE TABLE u (b int)");
    let dir = project(&[(
        "views/v.kdl",
        "view \"v\" {\n    depends-on \"t\"\n    depends-on \"u\"\n    query \"SELECT a FROM t\"\n}\n\
         view \"w\" {\n    depends-on \"u\"\n    query \"SELECT a FROM v, u\"\n}\n",
    )]);
    // `w` lists a depends-on that misses `v` (one without any would be inferred, unwarned).
    reconcile(&db, dir.path());
    let (_, stdout, _) = run(&db, dir.path(), &["plan"]);
    assert!(
        stdout.contains("declares depends-on public.u") && stdout.contains("v.kdl:3)"),
        "the stale depends-on entry's line:\n{stdout}"
    );
    assert!(
        stdout.contains("reads public.v, but its depends-on does not list it")
            && stdout.contains("v.kdl:6)"),
        "the declaration's line:\n{stdout}"
    );
    let (_, json, _) = run(&db, dir.path(), &["plan", "--format", "json"]);
    let json: serde_json::Value = serde_json::from_str(&json).expect("json");
    let locations: Vec<&str> = json["warnings"]
        .as_array()
        .expect("warnings")
        .iter()
        .filter_map(|w| w["location"].as_str())
        .collect();
    assert_eq!(locations.len(), 2, "{json}");
    assert!(locations.iter().all(|l| l.contains("v.kdl:")), "{json}");
}
