//! `viewkeeper check` on broken and valid projects: every problem reported in one run, each
//! with its file, line and column, exit 1, and never a panic.

mod support;

use assert_cmd::Command;
use support::project;

fn check(dir: &std::path::Path) -> (i32, String, String) {
    viewkeeper_offline(dir, &["check"])
}

fn assert_problem(stderr: &str, location: &str, message: &str) {
    assert!(
        stderr.contains(location),
        "expected a problem at {location}:\n{stderr}"
    );
    assert!(stderr.contains(message), "expected `{message}`:\n{stderr}");
}

#[test]
fn a_valid_project_passes() {
    let dir = project(&[
        (
            "viewkeeper.kdl",
            "views-dir \"declarations\"\nlock-timeout \"2s\"\n",
        ),
        (
            "declarations/a.kdl",
            "view \"b\" {\n  depends-on \"a\"\n  query \"SELECT 1\"\n}\nview \"a\" {\n  query \"SELECT 1\"\n}\n",
        ),
    ]);
    let (code, stdout, stderr) = check(dir.path());
    assert_eq!(code, 0, "{stderr}");
    assert!(
        stdout.contains("dependency order: public.a, public.b"),
        "{stdout}"
    );
}

#[test]
fn kdl_syntax_errors_point_at_the_spot_and_hint_at_kdl_2() {
    let dir = project(&[
        ("views/a.kdl", "view \"a\" {\n    query \"SELECT 1\n}\n"),
        (
            "views/b.kdl",
            "materialized-view \"b\" {\n    query \"SELECT 1 AS x\"\n    populate true\n}\n",
        ),
    ]);
    let (code, _, stderr) = check(dir.path());
    assert_eq!(code, 1);
    assert_problem(&stderr, "a.kdl:2:11", "Unexpected newline");
    assert_problem(&stderr, "b.kdl:3:14", "#true");
}

#[test]
fn every_semantic_problem_is_reported_in_one_run() {
    let dir = project(&[
        (
            "views/a.kdl",
            r#"view "public.a" {
    query "SELECT 1"
    frobnicate 1
}
view "public.a" {
    query "SELECT 2"
}
view "bad name!" {
    query "SELECT 1"
}
view "c" {
    query "SELECT 1"
    query-file "c.sql"
}
view "d" {
    depends-on "public.a"
}
view "e" {
    query-file "missing.sql"
}
view "f" {
    query "SELECT 1 AS x"
    index "x"
}
materialized-view "g" {
    query "SELECT 1 AS x"
    grant "SELECT" to="reporting" with="x"
    refresh every="soon"
}
materialized-view "h" {
    query "SELECT 1 AS x"
    index "x"
    refresh cron="61 * * * *" concurrently=#true
}
"#,
        ),
        ("views/c.sql", "SELECT 3"),
    ]);
    let (code, _, stderr) = check(dir.path());
    assert_eq!(code, 1, "{stderr}");
    assert_problem(&stderr, "a.kdl:3:5", "unknown node `frobnicate`");
    assert_problem(&stderr, "a.kdl:5:6", "`public.a` is declared twice");
    assert_problem(&stderr, "a.kdl:8:6", "invalid name `bad name!`");
    assert_problem(&stderr, "a.kdl:13:5", "has both `query` and `query-file`");
    assert_problem(&stderr, "a.kdl:15:1", "view `public.d` has no query");
    assert_problem(&stderr, "a.kdl:19:16", "cannot read query file");
    assert_problem(
        &stderr,
        "a.kdl:23:5",
        "`index` applies only to materialized views",
    );
    assert_problem(&stderr, "a.kdl:27:35", "unknown property `with`");
    assert_problem(&stderr, "a.kdl:28:13", "invalid duration `soon`");
    assert_problem(&stderr, "a.kdl:33:13", "invalid cron expression");
    assert!(!stderr.contains("panicked"), "{stderr}");
}

#[test]
fn cycles_are_reported_with_their_whole_path() {
    let dir = project(&[(
        "views/loop.kdl",
        r#"view "a" {
    depends-on "b"
    query "SELECT 1"
}
view "b" {
    depends-on "c"
    query "SELECT 1"
}
view "c" {
    depends-on "a"
    query "SELECT 1"
}
view "self" {
    depends-on "self"
    query "SELECT 1"
}
"#,
    )]);
    let (code, _, stderr) = check(dir.path());
    assert_eq!(code, 1);
    assert_problem(
        &stderr,
        "loop.kdl:2:16",
        "public.a -> public.b -> public.c -> public.a",
    );
    assert_problem(
        &stderr,
        "loop.kdl:14:16",
        "view `public.self` depends on itself",
    );
}

#[test]
fn concurrent_refresh_needs_a_unique_index_on_plain_columns() {
    let dir = project(&[(
        "views/m.kdl",
        r#"materialized-view "m" {
    query "SELECT 1 AS x"
    index "(x + 1)" unique=#true
    refresh every="1m" concurrently=#true
}
"#,
    )]);
    let (code, _, stderr) = check(dir.path());
    assert_eq!(code, 1);
    assert_problem(
        &stderr,
        "m.kdl:4:5",
        "refreshes concurrently but has no unique index on plain columns",
    );
}

#[test]
fn a_missing_declaration_folder_is_a_clear_error() {
    let dir = project(&[(
        "viewkeeper.kdl",
        "views-dir \"nowhere\"\nstate-schema \"vk\"\n",
    )]);
    let (code, _, stderr) = check(dir.path());
    assert_eq!(code, 1);
    assert!(
        stderr.contains("cannot read the declaration folder"),
        "{stderr}"
    );
    assert!(stderr.contains("nowhere"), "{stderr}");
}

#[test]
fn bad_settings_point_at_viewkeeper_kdl() {
    let dir = project(&[
        (
            "viewkeeper.kdl",
            "lock-timeout \"forever\"\ncolour \"blue\"\n",
        ),
        ("views/a.kdl", "view \"a\" {\n    query \"SELECT 1\"\n}\n"),
    ]);
    let (code, _, stderr) = check(dir.path());
    assert_eq!(code, 1);
    assert_problem(&stderr, "viewkeeper.kdl:1:14", "invalid duration `forever`");
    assert_problem(&stderr, "viewkeeper.kdl:2:1", "unknown setting `colour`");
}

#[test]
fn the_shipped_examples_and_demo_declarations_are_valid() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    for project in ["examples/django", "examples/rails", "examples/flyway", "."] {
        let (code, stdout, stderr) = check(&root.join(project));
        assert_eq!(code, 0, "{project}: {stdout}{stderr}");
    }
}

fn viewkeeper_offline(dir: &std::path::Path, args: &[&str]) -> (i32, String, String) {
    let output = Command::cargo_bin("viewkeeper")
        .expect("binary")
        .arg("--project")
        .arg(dir)
        .args(args)
        .env("NO_COLOR", "1")
        .env_remove("DATABASE_URL")
        .output()
        .expect("run");
    (
        output.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

#[test]
fn graph_renders_text_dot_and_mermaid() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let (code, dot, stderr) = viewkeeper_offline(root, &["graph", "--format", "dot"]);
    assert_eq!(code, 0, "{stderr}");
    insta::assert_snapshot!("graph_dot", dot);
    let (_, mermaid, _) = viewkeeper_offline(root, &["graph", "--format", "mermaid"]);
    insta::assert_snapshot!("graph_mermaid", mermaid);
    let (_, text, _) = viewkeeper_offline(root, &["graph"]);
    assert!(
        text.contains("public.top_sellers (view)\n  reads public.sales_by_seller (view)"),
        "{text}"
    );

    // Renders with Graphviz when it is installed (.ci/run installs it); says so when not.
    let Ok(mut child) = std::process::Command::new("dot")
        .arg("-Tsvg")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
    else {
        eprintln!(
            "WARNING: graph_renders_text_dot_and_mermaid did not check the DOT output with \
             Graphviz: `dot` is not installed (apt-get install graphviz)"
        );
        return;
    };
    use std::io::Write as _;
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(dot.as_bytes())
        .expect("write");
    let output = child.wait_with_output().expect("dot");
    assert!(output.status.success(), "dot rejected the graph");
    assert!(String::from_utf8_lossy(&output.stdout).contains("<svg"));
}

#[test]
fn init_starts_a_valid_project_and_never_overwrites() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (code, stdout, stderr) = viewkeeper_offline(dir.path(), &["init"]);
    assert_eq!(code, 0, "{stderr}");
    assert!(stdout.contains("created"), "{stdout}");
    let (code, _, stderr) = check(dir.path());
    assert_eq!(code, 0, "{stderr}");
    let (_, stdout, _) = viewkeeper_offline(dir.path(), &["init"]);
    assert!(
        stdout.contains("kept") && !stdout.contains("created"),
        "{stdout}"
    );
    let (code, script, _) = viewkeeper_offline(dir.path(), &["completions", "bash"]);
    assert_eq!(code, 0);
    assert!(script.contains("viewkeeper"));
}
