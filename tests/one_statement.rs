//! A declared query reaches the server as exactly one statement, and only files inside the
//! project are read: the attacks from issue 7 against a real server.

mod support;

use std::path::Path;

use support::{exists, project, reconcile, run, test_db};
use viewkeeper::name::QualifiedName;

const FIRST: &str = "view \"v\" {\n    query \"SELECT 1 AS a\"\n}\n";

fn attack(marker: &Path) -> String {
    format!(
        "view \"v\" {{\n    query \"SELECT 1 AS a; COPY (SELECT 'x') TO PROGRAM 'id > {}'; SELECT nextval('s')\"\n}}\n",
        marker.display()
    )
}

fn marker_path(name: &str) -> std::path::PathBuf {
    // /tmp, so that the server's OS user could write it if the program ever ran.
    std::env::temp_dir().join(format!("viewkeeper-{name}-{}", std::process::id()))
}

#[test]
fn a_second_statement_in_a_changed_query_never_runs() {
    let db = test_db();
    db.batch("CREATE SEQUENCE s; CREATE TABLE victim (x int)");
    let dir = project(&[("views/v.kdl", FIRST)]);
    reconcile(&db, dir.path());

    let marker = marker_path("pwned");
    let _ = std::fs::remove_file(&marker);
    std::fs::write(dir.path().join("views/v.kdl"), attack(&marker)).expect("write declaration");
    for command in [&["check"][..], &["plan"], &["reconcile"], &["status"]] {
        let (code, stdout, stderr) = run(&db, dir.path(), command);
        assert_eq!(code, 1, "{command:?} must refuse:\n{stdout}{stderr}");
        assert!(
            stderr.contains("v.kdl:2:25"),
            "{command:?} names the `;` that starts the second statement:\n{stderr}"
        );
        assert!(stderr.contains("one statement"), "{stderr}");
    }
    assert!(!marker.exists(), "the program ran: {}", marker.display());
    assert_eq!(
        db.scalar_string("SELECT last_value::text || is_called::text FROM s")
            .as_deref(),
        Some("1false"),
        "the sequence moved"
    );
    // The applied query is still the first one.
    assert_eq!(
        db.scalar_string("SELECT pg_get_viewdef('v'::regclass)")
            .map(|text| text.trim().to_owned())
            .as_deref(),
        Some("SELECT 1 AS a;")
    );

    // DROP TABLE, in a query-file this time.
    std::fs::write(
        dir.path().join("views/v.kdl"),
        "view \"v\" {\n    query-file \"v.sql\"\n}\n",
    )
    .expect("write declaration");
    std::fs::write(
        dir.path().join("views/v.sql"),
        "SELECT 1 AS a\nFROM victim\n  ;DROP TABLE victim\n",
    )
    .expect("write query file");
    let (code, _, stderr) = run(&db, dir.path(), &["plan"]);
    assert_eq!(code, 1, "{stderr}");
    assert!(stderr.contains("v.sql:3:3"), "{stderr}");
    assert!(exists(&db, "victim"), "the table must survive");
}

#[test]
fn strings_dollar_quotes_and_comments_may_hold_semicolons() {
    let db = test_db();
    let dir = project(&[(
        "views/v.kdl",
        "view \"v\" {\n    query #\"\"\"\n        SELECT ';' AS a, $x$;$x$ AS b, 1 AS \";\" -- ; not a statement\n        /* ; /* nested ; */ ; */ ;  -- a final semicolon is fine\n        \"\"\"#\n}\n\
         materialized-view \"m\" {\n    query \"SELECT 2 AS b; -- trailing comment after the final semicolon\"\n}\n",
    )]);
    let (code, stdout, stderr) = run(&db, dir.path(), &["check"]);
    assert_eq!(code, 0, "{stdout}{stderr}");
    reconcile(&db, dir.path());
    assert_eq!(db.scalar_string("SELECT b FROM v").as_deref(), Some(";"));
    assert_eq!(db.scalar_i64("SELECT b FROM m"), 2);
    let (code, stdout, stderr) = run(&db, dir.path(), &["plan", "--detailed-exitcode"]);
    assert_eq!(code, 0, "in sync after reconcile:\n{stdout}{stderr}");
}

/// The server side holds even if the offline check had a hole: the normaliser sends each
/// declared text as one extended-protocol statement, which PostgreSQL refuses to split.
#[test]
fn the_normaliser_refuses_a_second_statement_on_its_own() {
    let db = test_db();
    db.batch("CREATE SEQUENCE s; CREATE TABLE victim (x int)");
    let marker = marker_path("normaliser");
    let _ = std::fs::remove_file(&marker);
    let name = |n: &str| QualifiedName::parse(n, "public").expect("name");
    let queries = vec![
        (name("good"), "SELECT 1 AS a".to_owned()),
        (
            name("copy"),
            format!(
                "SELECT 1 AS a; COPY (SELECT 'x') TO PROGRAM 'id > {}'",
                marker.display()
            ),
        ),
        (name("drop"), "SELECT 1 AS a; DROP TABLE victim".to_owned()),
        (
            name("sequence"),
            "SELECT 1 AS a; SELECT nextval('s')".to_owned(),
        ),
        (name("broken"), "SELECT no_such_column".to_owned()),
        (name("also_good"), "SELECT 2 AS b".to_owned()),
    ];
    let normalised = db.block_on(async {
        db.client().execute("BEGIN", &[]).await.expect("begin");
        let normalised = viewkeeper::catalog::normalise(db.client(), &queries)
            .await
            .expect("normalise");
        db.client()
            .execute("ROLLBACK", &[])
            .await
            .expect("rollback");
        normalised
    });
    let names: Vec<String> = normalised.keys().map(ToString::to_string).collect();
    assert_eq!(names, ["public.also_good", "public.good"]);
    assert!(normalised[&name("good")].contains("1 AS a"));
    assert!(normalised[&name("also_good")].contains("2 AS b"));
    assert!(!marker.exists(), "the program ran");
    assert!(exists(&db, "victim"));
    assert_eq!(
        db.scalar_string("SELECT is_called::text FROM s").as_deref(),
        Some("false")
    );
}

#[test]
fn many_queries_are_normalised_each_to_its_own_text() {
    let db = test_db();
    let name = |i: usize| QualifiedName::parse(&format!("v{i}"), "public").expect("name");
    let queries: Vec<_> = (0..500)
        .map(|i| {
            // Every seventh query is rejected, so failures interleave with successes.
            let query = if i % 7 == 3 {
                format!("SELECT {i} AS n FROM no_such_table")
            } else {
                format!("SELECT {i} AS n")
            };
            (name(i), query)
        })
        .collect();
    let normalised = db.block_on(async {
        db.client().execute("BEGIN", &[]).await.expect("begin");
        let normalised = viewkeeper::catalog::normalise(db.client(), &queries)
            .await
            .expect("normalise");
        db.client()
            .execute("ROLLBACK", &[])
            .await
            .expect("rollback");
        normalised
    });
    for i in 0..500 {
        match normalised.get(&name(i)) {
            Some(text) => {
                assert_ne!(i % 7, 3, "v{i} should have been rejected");
                assert!(text.contains(&format!("{i} AS n")), "v{i}: {text}");
            }
            None => assert_eq!(i % 7, 3, "v{i} is missing"),
        }
    }
}

#[test]
fn query_files_outside_the_project_are_never_read() {
    let db = test_db();
    let outside = tempfile::tempdir().expect("temp dir");
    let secret = outside.path().join("secret.sql");
    std::fs::write(&secret, "SELECT 'hunter2' AS password").expect("write secret");
    let relative = pathdiff(outside.path().join("secret.sql"));
    let dir = project(&[(
        "views/v.kdl",
        &format!("view \"v\" {{\n    query-file \"{relative}\"\n}}\n"),
    )]);
    // And through a symlink inside the project.
    std::os::unix::fs::symlink(&secret, dir.path().join("views/link.sql")).expect("symlink");
    std::fs::write(
        dir.path().join("views/w.kdl"),
        "view \"w\" {\n    query-file \"link.sql\"\n}\n",
    )
    .expect("write declaration");
    for command in ["check", "plan"] {
        let (code, stdout, stderr) = run(&db, dir.path(), &[command]);
        assert_eq!(code, 1, "{stdout}{stderr}");
        assert!(
            !stderr.contains("hunter2") && !stdout.contains("hunter2"),
            "{stderr}"
        );
        assert!(stderr.contains("outside the project"), "{stderr}");
        assert!(stderr.contains("v.kdl:2:"), "{stderr}");
        assert!(stderr.contains("w.kdl:2:"), "{stderr}");
    }
}

/// `../../…/secret.sql` from the project's views folder.
fn pathdiff(target: std::path::PathBuf) -> String {
    let depth = std::env::temp_dir().components().count() + 4;
    format!(
        "{}{}",
        "../".repeat(depth),
        target.display().to_string().trim_start_matches('/')
    )
}
