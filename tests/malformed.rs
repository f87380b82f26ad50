//! Malformed project files never crash, hang or flood: regression cases found by fuzzing
//! `check`, snapshots of KDL mistakes reported in the user's words, and a bounded seeded
//! fuzz run over the declaration reader and `viewkeeper.kdl`.

mod support;

use std::path::Path;
use std::time::Duration;

use assert_cmd::Command;
use support::project;
use viewkeeper::project::{MAX_SHOWN, Project};

/// A hang guard only, not a performance assertion: a case that hangs fails instead of
/// stalling the suite.
const HANG_GUARD: Duration = Duration::from_secs(30);

/// Runs `check` on `dir`; (exit code, stderr). A crash (signal) or a timeout is `-1`.
fn check(dir: &Path) -> (i32, String) {
    let output = Command::cargo_bin("viewkeeper")
        .expect("binary")
        .arg("--project")
        .arg(dir)
        .arg("check")
        .env("NO_COLOR", "1")
        .env_remove("DATABASE_URL")
        .timeout(HANG_GUARD)
        .output()
        .expect("run");
    let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
    (output.status.code().unwrap_or(-1), stderr)
}

/// `check` fails cleanly (exit 1, not a crash or a timeout) with a problem at `location`.
fn assert_refused(dir: &Path, location: &str, message: &str) -> String {
    let (code, stderr) = check(dir);
    assert_eq!(code, 1, "{stderr}");
    assert!(stderr.contains(location), "expected {location}:\n{stderr}");
    assert!(stderr.contains(message), "expected `{message}`:\n{stderr}");
    stderr
}

/// Stderr with the temporary folder's path taken out, for snapshots.
fn rendered(dir: &Path) -> String {
    let (code, stderr) = check(dir);
    assert_eq!(code, 1, "{stderr}");
    stderr.replace(&format!("{}/", dir.display()), "")
}

#[test]
fn deep_block_nesting_is_refused_not_a_stack_overflow() {
    let dir = project(&[("views/a.kdl", &"a {".repeat(1_269))]);
    assert_refused(
        dir.path(),
        "views/a.kdl:1:195",
        "blocks are nested more than 64 deep",
    );
}

#[test]
fn deeply_nested_comments_are_refused_not_a_stack_overflow() {
    let dir = project(&[("views/a.kdl", &"/*".repeat(3_595))]);
    assert_refused(
        dir.path(),
        "views/a.kdl:1:129",
        "comments are nested more than 64 deep",
    );
}

#[test]
fn a_line_of_stray_braces_is_one_problem() {
    let dir = project(&[("views/a.kdl", &"}".repeat(4_000))]);
    let stderr = assert_refused(dir.path(), "views/a.kdl:1:1", "this `}` closes no block");
    assert!(stderr.contains("1 problem in the declarations"), "{stderr}");
}

#[test]
fn thousands_of_problems_are_counted_not_all_printed() {
    let declarations: String = (0..500)
        .map(|i| format!("view \"v{i}\" {{\n  query \"SELECT 1\"\n  colour \"red\"\n}}\n"))
        .collect();
    let dir = project(&[("views/a.kdl", &declarations)]);
    let (code, stderr) = check(dir.path());
    assert_eq!(code, 1, "{stderr}");
    assert!(
        stderr.contains("500 problems in the declarations"),
        "{stderr}"
    );
    assert_eq!(
        stderr.matches("views/a.kdl:").count(),
        MAX_SHOWN,
        "{stderr}"
    );
    assert!(stderr.contains("… and 400 more"), "{stderr}");
}

#[cfg(unix)]
#[test]
fn symlink_loops_are_followed_once() {
    let dir = project(&[("views/a.kdl", "view \"a\" {\n  query \"SELECT 1\"\n}\n")]);
    let views = dir.path().join("views");
    std::os::unix::fs::symlink(".", views.join("here")).expect("symlink");
    std::os::unix::fs::symlink(".", views.join("again")).expect("symlink");
    std::os::unix::fs::symlink("a.kdl", views.join("b.kdl")).expect("symlink");
    let (code, stderr) = check(dir.path());
    assert_eq!(code, 0, "{stderr}");
}

#[cfg(unix)]
#[test]
fn a_fifo_is_reported_not_opened() {
    let dir = project(&[("views/a.kdl", "view \"a\" {\n  query \"SELECT 1\"\n}\n")]);
    let fifo = dir.path().join("views/p.kdl");
    let status = std::process::Command::new("mkfifo")
        .arg(&fifo)
        .status()
        .expect("mkfifo");
    assert!(status.success());
    assert_refused(dir.path(), "views/p.kdl", "not a regular file");
}

#[test]
fn non_utf8_is_reported_at_its_line_and_column() {
    let dir = project(&[]);
    let views = dir.path().join("views");
    std::fs::create_dir_all(&views).expect("views");
    std::fs::write(
        views.join("a.kdl"),
        b"view \"a\" {\n  query \"SELECT '\xff'\"\n}\n",
    )
    .expect("write");
    assert_refused(dir.path(), "views/a.kdl:2:18", "the file is not UTF-8 text");
}

#[test]
fn a_broken_viewkeeper_kdl_is_refused_too() {
    let dir = project(&[
        ("viewkeeper.kdl", &"lock-timeout {".repeat(500)),
        ("views/a.kdl", "view \"a\" {\n  query \"SELECT 1\"\n}\n"),
    ]);
    assert_refused(
        dir.path(),
        "viewkeeper.kdl:1:",
        "blocks are nested more than 64 deep",
    );
}

#[test]
fn an_unquoted_value_with_letters_says_to_quote_it() {
    let dir = project(&[(
        "views/a.kdl",
        "materialized-view \"m\" {\n  query \"SELECT 1 AS x\"\n  refresh every=15s\n}\n",
    )]);
    insta::assert_snapshot!("unquoted_value", rendered(dir.path()));
}

#[test]
fn an_unclosed_multiline_string_is_one_problem_at_its_opening() {
    let mut text = "view \"v\" {\n  query \"\"\"\n    SELECT 1\n".to_owned();
    for i in 0..300 {
        text.push_str(&format!("    , {i}\n"));
    }
    text.push_str("}\n");
    let dir = project(&[("views/a.kdl", &text)]);
    insta::assert_snapshot!("unclosed_string", rendered(dir.path()));
}

#[test]
fn a_bare_true_leads_with_the_kdl_2_hint() {
    let dir = project(&[(
        "views/a.kdl",
        "materialized-view \"m\" {\n  query \"SELECT 1 AS x\"\n  populate true\n}\n",
    )]);
    insta::assert_snapshot!("bare_true", rendered(dir.path()));
}

/// Real declaration files to mutate.
fn seeds() -> Vec<String> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut seeds: Vec<String> = [
        "views/invoices.kdl",
        "examples/django/views/reports.kdl",
        "examples/rails/views/orders.kdl",
        "examples/flyway/views/payments.kdl",
    ]
    .iter()
    .map(|path| std::fs::read_to_string(root.join(path)).expect("seed file"))
    .collect();
    seeds.push(
        "materialized-view \"s.m\" {\n  depends-on \"s.t\"\n  query #\"\"\"\n    SELECT 1 AS id\n    \"\"\"#\n  index \"id\" unique=#true\n  refresh every=\"15m\" concurrently=#true\n  grant \"SELECT\" to=\"app\"\n}\n"
            .to_owned(),
    );
    seeds
}

/// One mutation of `text`: bytes flipped, inserted, deleted or duplicated, KDL tokens
/// spliced in, deep nesting or a long line appended.
fn mutate(rng: &mut fastrand::Rng, text: &str) -> Vec<u8> {
    const TOKENS: &[&str] = &[
        "{", "}", "\"", "\"\"\"", "#\"", "\"#", "/*", "*/", "//", "/-", "=", ";", "\\", "#true",
        "true", "15s", "0x", "(", ")", "\n", "#", "-", "é", "\u{feff}",
    ];
    let mut bytes = text.as_bytes().to_vec();
    for _ in 0..rng.usize(1..8) {
        let at = rng.usize(..=bytes.len());
        match rng.u8(..8) {
            0 => bytes.insert(at, rng.u8(..)),
            1 if at < bytes.len() => {
                bytes.remove(at);
            }
            2 | 3 => {
                let token = TOKENS[rng.usize(..TOKENS.len())];
                bytes.splice(at..at, token.bytes());
            }
            4 => {
                let end = (at + rng.usize(..64)).min(bytes.len());
                let copy = bytes[at..end].to_vec();
                bytes.splice(at..at, copy);
            }
            5 => {
                let token = ["a {", "/*", "}", "(", "\"", "x=1 "][rng.usize(..6)];
                let repeat = token.repeat(rng.usize(1..3_000));
                bytes.splice(at..at, repeat.bytes());
            }
            6 => {
                let end = (at + rng.usize(..16)).min(bytes.len());
                bytes.drain(at..end);
            }
            _ => {
                let random: Vec<u8> = (0..rng.usize(..256)).map(|_| rng.u8(..)).collect();
                bytes.splice(at..at, random);
            }
        }
    }
    bytes
}

/// Loads a project holding `declarations` and `config`; never panics, reports a bounded
/// number of problems, each at a file:line:col, when it refuses the input.
fn assert_reader_survives(declarations: &[u8], config: Option<&[u8]>) {
    let dir = project(&[]);
    let views = dir.path().join("views");
    std::fs::create_dir_all(&views).expect("views");
    std::fs::write(views.join("a.kdl"), declarations).expect("write");
    if let Some(config) = config {
        std::fs::write(dir.path().join("viewkeeper.kdl"), config).expect("write");
    }
    let Err(problems) = Project::load(dir.path()) else {
        return;
    };
    assert!(!problems.problems.is_empty());
    assert!(problems.problems.len() <= MAX_SHOWN + 1);
    for problem in &problems.problems {
        // The count of problems left out, and a `views-dir` mutated to a missing folder.
        if problem.message.starts_with("… and ")
            || problem
                .message
                .contains("cannot read the declaration folder")
        {
            continue;
        }
        let location = problem.location().unwrap_or_default();
        let mut parts = location.rsplitn(3, ':');
        let located = parts.next().is_some_and(|col| col.parse::<usize>().is_ok())
            && parts
                .next()
                .is_some_and(|line| line.parse::<usize>().is_ok());
        assert!(
            located,
            "`{}` has no line and column: {location}",
            problem.message
        );
    }
}

/// A fixed number of seeded cases, so CI runs the same bounded set every time; set
/// VIEWKEEPER_FUZZ_CASES to run more locally.
#[test]
fn mutated_declaration_files_never_crash_or_flood() {
    let cases: usize = std::env::var("VIEWKEEPER_FUZZ_CASES")
        .ok()
        .and_then(|cases| cases.parse().ok())
        .unwrap_or(300);
    let seeds = seeds();
    let config = "lock-timeout \"2s\"\nstate-schema \"viewkeeper\"\nstatement-timeout \"1m\"\n";
    let mut rng = fastrand::Rng::with_seed(87);
    for case in 0..cases {
        let seed = &seeds[case % seeds.len()];
        let declarations = mutate(&mut rng, seed);
        let mutated_config = (case % 3 == 0).then(|| mutate(&mut rng, config));
        if std::env::var_os("VIEWKEEPER_FUZZ_DUMP").is_some() {
            let config = mutated_config.as_deref().unwrap_or_default();
            std::fs::write("/tmp/fuzz_case.kdl", &declarations).ok();
            std::fs::write("/tmp/fuzz_config.kdl", config).ok();
        }
        let result = std::panic::catch_unwind(|| {
            assert_reader_survives(&declarations, mutated_config.as_deref());
        });
        assert!(
            result.is_ok(),
            "case {case} failed on:\n{}\n-- viewkeeper.kdl:\n{}",
            String::from_utf8_lossy(&declarations),
            String::from_utf8_lossy(mutated_config.as_deref().unwrap_or_default()),
        );
    }
}

#[test]
fn random_bytes_never_crash_or_flood() {
    let mut rng = fastrand::Rng::with_seed(132);
    for _ in 0..100 {
        let bytes: Vec<u8> = (0..rng.usize(..4_096)).map(|_| rng.u8(..)).collect();
        assert_reader_survives(&bytes, None);
    }
}

#[test]
fn a_megabyte_line_of_mistakes_is_not_quoted_back_whole() {
    let dir = project(&[("views/a.kdl", &format!("a {}", "true ".repeat(200_000)))]);
    let stderr = assert_refused(dir.path(), "views/a.kdl:1:3", "`true` is written `#true`");
    assert!(stderr.contains("… and 199900 more"), "{stderr}");
    assert!(stderr.len() < 100_000, "{} bytes of output", stderr.len());
}
