//! Messages in the user's words (issue 13.2): each one rendered as a user sees it (the real
//! binary with colours off, or the renderer itself where no server is needed), snapshotted.

mod support;

use std::io::{self, Write};
use std::path::Path;
use std::time::Duration;

use support::{TestDb, ensure_role, project, reconcile, run, test_db};
use viewkeeper::name::QualifiedName;
use viewkeeper::objects::Record;
use viewkeeper::plan::{Change, Op, Phase, Plan, Statement, Step};
use viewkeeper::project::{Grantee, Kind};
use viewkeeper::render;

/// The viewkeeper binary without a database, colours off, in `dir`.
fn offline(dir: &Path) -> assert_cmd::Command {
    let mut cmd = assert_cmd::Command::cargo_bin("viewkeeper").expect("viewkeeper binary");
    cmd.current_dir(dir)
        .env("NO_COLOR", "1")
        .env_remove("FORCE_COLOR")
        .env_remove("CLICOLOR_FORCE")
        .env_remove("DATABASE_URL");
    cmd
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// What renderers write, with colours off as on a pipe.
fn plain(bytes: &[u8]) -> String {
    anstream::adapter::strip_str(&text(bytes)).to_string()
}

/// Durations vary from run to run.
fn without_durations(text: &str) -> String {
    text.lines()
        .map(|line| match line.rfind("  ") {
            _ if line.starts_with("Reconciled:") => match line.rfind(" in ") {
                Some(at) => format!("{} in [took].", &line[..at]),
                None => line.to_owned(),
            },
            Some(at) if ends_with_duration(&line[at..]) => format!("{}  [took]", &line[..at]),
            _ => line.to_owned(),
        })
        .collect::<Vec<_>>()
        .join("\n")
}

fn ends_with_duration(tail: &str) -> bool {
    let tail = tail.trim();
    ["µs", "ms", " s"].iter().any(|unit| tail.ends_with(unit))
        && tail.starts_with(|c: char| c.is_ascii_digit())
}

fn many_views(count: usize) -> Vec<(String, String)> {
    (1..=count)
        .map(|i| {
            (
                format!("views/v{i:03}.kdl"),
                format!("view \"v{i:03}\" {{ query \"SELECT {i} AS x\" }}\n"),
            )
        })
        .collect()
}

#[test]
fn check_summarises_a_long_dependency_order_and_lists_it_with_verbose() {
    let files = many_views(154);
    let files: Vec<(&str, &str)> = files
        .iter()
        .map(|(p, t)| (p.as_str(), t.as_str()))
        .collect();
    let dir = project(&files);
    let output = offline(dir.path())
        .args(["--project", "."])
        .arg("check")
        .output()
        .expect("run");
    assert!(output.status.success(), "{}", text(&output.stderr));
    insta::assert_snapshot!("check_summary", text(&output.stdout));
    let output = offline(dir.path())
        .args(["--project", ".", "check", "--verbose"])
        .output()
        .expect("run");
    let verbose = text(&output.stdout);
    assert!(verbose.contains("public.v001, public.v002") && verbose.contains("public.v154\n"));
    assert!(!verbose.contains("more"), "{verbose}");
}

#[test]
fn offline_commands_do_not_offer_database_url() {
    let dir = project(&[("views/a.kdl", "view \"a\" { query \"SELECT 1 AS x\" }\n")]);
    for command in ["check", "graph", "init", "completions"] {
        let output = offline(dir.path())
            .args([command, "--help"])
            .output()
            .expect("run");
        let help = text(&output.stdout);
        assert!(!help.contains("--database-url"), "{command}: {help}");
        assert!(help.contains("--color"), "{command}: {help}");
    }
    let output = offline(dir.path())
        .args(["plan", "--help"])
        .output()
        .expect("run");
    assert!(text(&output.stdout).contains("--database-url"));
    for help in [&["guard", "install", "--help"][..], &["--help"]] {
        let output = offline(dir.path()).args(help).output().expect("run");
        assert!(text(&output.stdout).contains("--database-url"), "{help:?}");
    }
    // Not taken either: a usage error.
    let output = offline(dir.path())
        .args([
            "check",
            "--database-url",
            "postgresql://nowhere/x",
            "--project",
            ".",
        ])
        .output()
        .expect("run");
    assert_eq!(output.status.code(), Some(1), "{}", text(&output.stderr));
    let output = offline(dir.path())
        .args(["completions", "bash"])
        .output()
        .expect("run");
    let script = text(&output.stdout);
    let check_options = script
        .split("viewkeeper__subcmd__check)")
        .nth(1)
        .and_then(|rest| rest.split(";;").next())
        .unwrap_or_default();
    assert!(!check_options.is_empty(), "{script}");
    assert!(!check_options.contains("--database-url"), "{check_options}");
}

#[test]
fn init_writes_statement_timeout_commented_out() {
    let dir = project(&[]);
    let output = offline(dir.path()).arg("init").output().expect("run");
    assert!(output.status.success(), "{}", text(&output.stderr));
    let config = std::fs::read_to_string(dir.path().join("viewkeeper.kdl")).expect("config");
    insta::assert_snapshot!("init_config", config);
    // Uncommented, it is a valid setting.
    std::fs::write(
        dir.path().join("viewkeeper.kdl"),
        config.replace("// statement-timeout", "statement-timeout"),
    )
    .expect("write");
    let output = offline(dir.path()).arg("check").output().expect("run");
    assert!(output.status.success(), "{}", text(&output.stderr));
}

#[test]
fn colour_follows_the_flag_no_color_and_force_color() {
    let dir = project(&[("views/a.kdl", "view \"a\" { query \"SELECT 1 AS x\" }\n")]);
    // Debug logs on a pipe: no escape codes.
    let output = offline(dir.path())
        .env("VIEWKEEPER_LOG", "debug")
        .env_remove("NO_COLOR")
        .args(["--project", ".", "check"])
        .output()
        .expect("run");
    assert!(
        !text(&output.stderr).contains('\u{1b}'),
        "{}",
        text(&output.stderr)
    );
    // An error report: plain by default on a pipe, coloured when forced.
    let broken = project(&[("views/a.kdl", "view \"a\" { frobnicate }\n")]);
    let plain = offline(broken.path())
        .args(["--project", ".", "check"])
        .output()
        .expect("run");
    assert!(!text(&plain.stderr).contains('\u{1b}'));
    for (flag, vars) in [
        ("--color=always", vec![("NO_COLOR", "1")]),
        ("--color=auto", vec![("FORCE_COLOR", "1")]),
        ("--color=auto", vec![("CLICOLOR_FORCE", "1")]),
    ] {
        let mut cmd = offline(broken.path());
        cmd.env_remove("NO_COLOR");
        for (name, value) in &vars {
            cmd.env(name, value);
        }
        let output = cmd
            .args([flag, "--project", ".", "check"])
            .output()
            .expect("run");
        assert!(text(&output.stderr).contains('\u{1b}'), "{flag} {vars:?}");
    }
    let mut cmd = offline(broken.path());
    let output = cmd
        .env("FORCE_COLOR", "1")
        .args(["--color=never", "--project", ".", "check"])
        .output()
        .expect("run");
    assert!(!text(&output.stderr).contains('\u{1b}'));
}

/// A writer whose reader has gone, as `| head` leaves it.
struct ClosedPipe;

impl Write for ClosedPipe {
    fn write(&mut self, _: &[u8]) -> io::Result<usize> {
        Err(io::ErrorKind::BrokenPipe.into())
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

#[test]
fn json_renderers_keep_a_closed_pipe_recognisable() {
    let error = render::status_json(&[], &[], &mut ClosedPipe).expect_err("cannot write");
    assert_eq!(error.kind(), io::ErrorKind::BrokenPipe);
    let error = render::plan_json(&Plan::default(), &mut ClosedPipe).expect_err("cannot write");
    assert_eq!(error.kind(), io::ErrorKind::BrokenPipe);
}

/// Runs the binary with stdout a pipe whose reader is already closed: never an error.
fn into_closed_pipe(mut cmd: std::process::Command) {
    let (reader, writer) = io::pipe().expect("pipe");
    drop(reader);
    let output = cmd
        .stdout(writer)
        .stderr(std::process::Stdio::piped())
        .output()
        .expect("run");
    assert!(
        output.status.success() && output.stderr.is_empty(),
        "{:?}: {}",
        output.status,
        text(&output.stderr)
    );
}

fn binary(dir: &Path) -> std::process::Command {
    let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_viewkeeper"));
    cmd.current_dir(dir)
        .env("NO_COLOR", "1")
        .env_remove("DATABASE_URL");
    cmd
}

#[test]
fn a_closed_pipe_is_not_an_error_offline() {
    let dir = project(&[("views/a.kdl", "view \"a\" { query \"SELECT 1 AS x\" }\n")]);
    for args in [
        &["--project", ".", "check"][..],
        &["--project", ".", "graph", "--format", "dot"],
        &["completions", "bash"],
    ] {
        let mut cmd = binary(dir.path());
        cmd.args(args);
        into_closed_pipe(cmd);
    }
}

#[test]
fn durations_read_as_people_write_them() {
    let shown: Vec<String> = [
        Duration::from_micros(850),
        Duration::from_millis(12),
        Duration::from_millis(999),
        Duration::from_millis(4017),
        Duration::from_secs(125),
    ]
    .into_iter()
    .map(render::format_duration)
    .chain(
        [7 * 86_400, 90 * 60, 15 * 60, 45, 86_400 + 3_600]
            .into_iter()
            .map(|seconds| render::format_interval(Duration::from_secs(seconds))),
    )
    .collect();
    insta::assert_snapshot!("durations", shown.join("\n"));
}

fn name(text: &str) -> QualifiedName {
    QualifiedName::new("public", text)
}

#[test]
fn plan_text_bullets_alter_details_and_summarises_adopted_objects() {
    let altered = name("sales_by_seller_and_region_per_quarter");
    let alter = |op| Step {
        object: altered.clone(),
        kind: Kind::View,
        change: Change::Alter,
        reason: "attributes differ from the declaration".to_owned(),
        op,
    };
    let mut steps = vec![
        alter(Op::Grant {
            grantee: Grantee::Role("reporting".to_owned()),
            privileges: vec!["SELECT".to_owned()],
        }),
        alter(Op::Revoke {
            grantee: Grantee::Role("intern".to_owned()),
            privileges: vec!["SELECT".to_owned()],
            default: false,
        }),
    ];
    steps.extend((1..=154).map(|i| {
        let object = name(&format!("report_{i:03}"));
        Step {
            object: object.clone(),
            kind: Kind::View,
            change: Change::Adopt,
            reason: String::new(),
            op: Op::Record(Record {
                name: object,
                kind: Kind::View,
                query: "SELECT 1".to_owned(),
                indexes: Vec::new(),
            }),
        }
    }));
    let plan = Plan {
        steps,
        declared: 155,
        ..Plan::default()
    };
    let mut out = Vec::new();
    render::plan_text(&plan, &mut out).expect("render");
    insta::assert_snapshot!("plan_alter_and_adopted", plain(&out));
}

#[test]
fn progress_lines_line_up_for_long_names() {
    let mut out = Vec::new();
    for (object, summary) in [
        ("a", "create view"),
        (
            "sales_by_seller_and_region_per_quarter",
            "create materialized view",
        ),
        ("sales_by_seller_and_region_per_quarter", "refresh"),
    ] {
        let statement = Statement {
            phase: if summary == "refresh" {
                Phase::Refresh
            } else {
                Phase::Create
            },
            object: name(object),
            summary: summary.to_owned(),
            sql: String::new(),
            query: None,
            fills: false,
        };
        render::statement_done(&statement, Duration::from_millis(4017), 45, &mut out)
            .expect("render");
    }
    insta::assert_snapshot!("progress_lines", plain(&out));
}

#[test]
fn schedule_logs_say_what_they_watch_and_stay_on_one_line() {
    let dir = project(&[(
        "views/a.kdl",
        "view \"a\" {\n  frobnicate\n}\nview \"a\" { query \"SELECT 1\" }\n",
    )]);
    let problems = viewkeeper::project::Project::load(dir.path()).expect_err("invalid");
    let line = render::problems_line(&problems);
    let line = line.replace(&dir.path().display().to_string(), "[project]");
    let started = render::schedule_started(3, Path::new("views"), true);
    let no_heal = render::schedule_started(1, Path::new("views"), false);
    insta::assert_snapshot!("schedule_log", format!("{started}\n{no_heal}\n{line}"));
}

// With a server.

const SHOP: &str =
    "CREATE TABLE orders (id int PRIMARY KEY, customer int NOT NULL, amount numeric(6,2) NOT NULL);
     INSERT INTO orders SELECT i, i % 5, i FROM generate_series(1, 50) i;";

/// `url` with another user.
fn as_user(url: &str, user: &str) -> String {
    let mut parsed = url::Url::parse(url).expect("test URLs are URLs");
    parsed.set_username(user).expect("set user");
    parsed.into()
}

fn run_as(db: &TestDb, dir: &Path, user: &str, args: &[&str]) -> (i32, String, String) {
    let output = support::viewkeeper(db, dir)
        .env("DATABASE_URL", as_user(&db.url, user))
        .args(args)
        .output()
        .expect("run");
    (
        output.status.code().unwrap_or(-1),
        text(&output.stdout),
        text(&output.stderr),
    )
}

#[test]
fn a_role_without_rights_is_told_which_grant_it_needs() {
    let db = test_db();
    db.batch(SHOP);
    let dir = project(&[(
        "views/a.kdl",
        "view \"totals\" { query \"SELECT customer, sum(amount) AS total FROM orders GROUP BY customer\" }\n",
    )]);
    reconcile(&db, dir.path());
    ensure_role(&db, "app");
    db.batch("ALTER ROLE app LOGIN");
    let (code, _, stderr) = run_as(&db, dir.path(), "app", &["plan"]);
    assert_eq!(code, 1, "{stderr}");
    insta::assert_snapshot!("no_usage_on_state_schema", stderr);

    // With USAGE and SELECT on the state, plan gets as far as compiling: TEMP is next.
    db.batch(&format!(
        "GRANT USAGE ON SCHEMA viewkeeper TO app; GRANT SELECT ON ALL TABLES IN SCHEMA viewkeeper TO app;
         GRANT SELECT ON orders TO app; REVOKE TEMPORARY ON DATABASE \"{}\" FROM PUBLIC;",
        db.name
    ));
    std::fs::write(
        dir.path().join("views/a.kdl"),
        "view \"totals\" { query \"SELECT customer, sum(amount) AS total, count(*) AS n FROM orders GROUP BY customer\" }\n",
    )
    .expect("write");
    let (code, _, stderr) = run_as(&db, dir.path(), "app", &["plan"]);
    assert_eq!(code, 1, "{stderr}");
    let stderr = stderr
        .replace(&db.name, "[database]")
        .replace(&dir.path().display().to_string(), "[project]");
    let help = stderr
        .lines()
        .skip_while(|line| !line.contains("permission denied"))
        .collect::<Vec<_>>()
        .join("\n");
    insta::assert_snapshot!("no_temp_on_database", help);
}

#[test]
fn status_without_the_tables_lists_the_problems_once() {
    let db = test_db();
    let dir = project(&[
        (
            "views/a.kdl",
            "view \"a\" {\n  depends-on \"orders\"\n  query \"SELECT 1 AS x\"\n}\n",
        ),
        (
            "views/b.kdl",
            "view \"b\" {\n  depends-on \"customers\"\n  query \"SELECT 1 AS x\"\n}\n",
        ),
    ]);
    let (code, stdout, stderr) = run(&db, dir.path(), &["status"]);
    assert_eq!(code, 1, "{stdout}{stderr}");
    let stdout: String = stdout
        .lines()
        .filter(|l| !l.starts_with("as of"))
        .collect::<Vec<_>>()
        .join("\n");
    let stderr = stderr.replace(&dir.path().display().to_string(), "[project]");
    insta::assert_snapshot!("status_unknown", format!("{stdout}\n---- stderr\n{stderr}"));
    let (code, stdout, _) = run(&db, dir.path(), &["status", "--format", "json"]);
    assert_eq!(code, 1);
    let document: serde_json::Value = serde_json::from_str(&stdout).expect("json");
    assert_eq!(
        document["problems"].as_array().map(Vec::len),
        Some(2),
        "{stdout}"
    );
}

#[test]
fn a_closed_pipe_is_not_an_error_with_a_server() {
    let db = test_db();
    db.batch(SHOP);
    let dir = project(&[(
        "views/a.kdl",
        "view \"totals\" { query \"SELECT customer, sum(amount) AS total FROM orders GROUP BY customer\" }\n",
    )]);
    reconcile(&db, dir.path());
    // The URL after the command, before it, or from the environment; one given on the
    // command line wins over the environment.
    let nowhere = "postgresql://nobody@127.0.0.1:1/none";
    for (args, from_env) in [
        (
            &["status", "--format", "json", "--database-url", &db.url][..],
            nowhere,
        ),
        (&["--database-url", &db.url, "status"], nowhere),
        (&["plan", "--format", "json"], db.url.as_str()),
        (&["plan", "--database-url", &db.url], nowhere),
    ] {
        let mut cmd = binary(dir.path());
        cmd.env("DATABASE_URL", from_env)
            .arg("--project")
            .arg(dir.path())
            .args(args);
        into_closed_pipe(cmd);
    }
}

#[test]
fn import_counts_only_what_it_left_alone() {
    let db = test_db();
    db.batch(&format!(
        "{SHOP}
         CREATE VIEW one AS SELECT 1 AS x; CREATE VIEW two AS SELECT 2 AS x; CREATE VIEW three AS SELECT 3 AS x;"
    ));
    let dir = project(&[
        (
            "views/one.kdl",
            "view \"one\" { query \"SELECT 1 AS x\" }\n",
        ),
        (
            "views/other.kdl",
            "view \"other_schema_view\" { query \"SELECT 1 AS x\" }\nview \"not_yet\" { query \"SELECT 4 AS x\" }\n",
        ),
    ]);
    let (code, stdout, stderr) = run(&db, dir.path(), &["import"]);
    assert_eq!(code, 0, "{stderr}");
    let stdout = stdout.replace(&dir.path().display().to_string(), "[project]");
    insta::assert_snapshot!("import_left_alone", stdout);
}

#[test]
fn a_declared_reader_of_a_dropped_view_says_what_to_change() {
    let db = test_db();
    let dir = project(&[
        ("views/a.kdl", "view \"base\" { query \"SELECT 1 AS x\" }\n"),
        (
            "views/b.kdl",
            "view \"reader\" { query \"SELECT x FROM base\" }\n",
        ),
    ]);
    reconcile(&db, dir.path());
    std::fs::remove_file(dir.path().join("views/a.kdl")).expect("remove");
    let (code, _, stderr) = run(&db, dir.path(), &["plan"]);
    assert_eq!(code, 1, "{stderr}");
    let stderr = stderr.replace(&dir.path().display().to_string(), "[project]");
    insta::assert_snapshot!("declared_reader_of_dropped", stderr);
}

#[test]
fn reconcile_lines_up_long_names() {
    let db = test_db();
    let dir = project(&[
        ("views/a.kdl", "view \"a\" { query \"SELECT 1 AS x\" }\n"),
        (
            "views/b.kdl",
            "materialized-view \"sales_by_seller_and_region_per_quarter\" { query \"SELECT 1 AS x\" }\n",
        ),
    ]);
    let (code, stdout, stderr) = run(&db, dir.path(), &["reconcile"]);
    assert_eq!(code, 0, "{stderr}");
    insta::assert_snapshot!("reconcile_long_names", without_durations(&stdout));
}

fn psql() -> String {
    support::psql()
}

#[test]
fn a_type_change_under_a_view_suggests_drop_first() {
    let db = test_db();
    db.batch(SHOP);
    let dir = project(&[
        (
            "views/a.kdl",
            "view \"totals\" { query \"SELECT customer, sum(amount) AS total FROM orders GROUP BY customer\" }\n",
        ),
        (
            "migration.sql",
            "ALTER TABLE orders ALTER COLUMN amount TYPE numeric(12,2);\n",
        ),
        ("other.sql", "SELECT 1/0;\n"),
    ]);
    reconcile(&db, dir.path());
    let psql = psql();
    let migrate = |file: &str| {
        let migration = dir.path().join(file).display().to_string();
        run(
            &db,
            dir.path(),
            &[
                "run",
                "--",
                &psql,
                "-X",
                "-q",
                "-v",
                "ON_ERROR_STOP=1",
                "-d",
                &db.url,
                "-f",
                &migration,
            ],
        )
    };
    let (code, _, stderr) = migrate("migration.sql");
    assert_eq!(code, 3, "{stderr}");
    // psql's own message streams through unchanged, then viewkeeper's suggestion.
    let stderr = stderr
        .replace(&dir.path().display().to_string(), "[project]")
        .replace(&db.url, "[url]");
    // A full path to psql (the server's own) reads as psql on PATH does.
    let stderr = match psql.rsplit_once('/') {
        Some((folder, _)) => stderr.replace(&format!("{folder}/"), ""),
        None => stderr,
    };
    insta::assert_snapshot!("suggest_drop_first", stderr);
    // Another failure suggests nothing.
    let (code, _, stderr) = migrate("other.sql");
    assert_eq!(code, 3, "{stderr}");
    assert!(stderr.contains("division by zero"), "{stderr}");
    assert!(!stderr.contains("--drop-first"), "{stderr}");
}

#[test]
fn schedule_starts_its_log_with_what_it_watches_and_logs_problems_on_one_line() {
    let db = test_db();
    let dir = project(&[(
        "views/a.kdl",
        "materialized-view \"m\" {\n  query \"SELECT 1 AS x\"\n  refresh every=\"1h\"\n}\n",
    )]);
    reconcile(&db, dir.path());
    let mut scheduler = support::Scheduler::start(&db, dir.path(), "schedule", &["--no-heal"]);
    assert!(
        support::eventually(Duration::from_secs(20), || scheduler
            .output()
            .contains("schedule started")),
        "{}",
        scheduler.output()
    );
    // Broken declarations while it runs: kept the previous ones, said so on one line.
    std::fs::write(
        dir.path().join("views/a.kdl"),
        "materialized-view \"m\" {\n  frobnicate\n}\n",
    )
    .expect("write");
    scheduler.signal(nix::sys::signal::Signal::SIGHUP);
    assert!(
        support::eventually(Duration::from_secs(20), || scheduler
            .output()
            .contains("keeping the previous declarations")),
        "{}",
        scheduler.output()
    );
    scheduler.signal(nix::sys::signal::Signal::SIGTERM);
    assert!(scheduler.wait(Duration::from_secs(20)).is_some());
    let log = scheduler
        .output()
        .replace(&dir.path().display().to_string(), "[project]");
    // Timestamps vary: the first 25 characters of each line.
    let log: Vec<&str> = log
        .lines()
        .map(|line| line.get(25..).unwrap_or(line))
        .filter(|line| !line.starts_with("refreshed"))
        .collect();
    insta::assert_snapshot!("schedule_log_lines", log.join("\n"));
}

#[test]
fn plan_reports_mistakes_in_the_declarations_before_an_unreachable_database() {
    // `plan` connects while it reads the declarations; their mistakes still come first.
    let dir = project(&[
        ("viewkeeper.kdl", ""),
        (
            "views/bad.kdl",
            "view \"public.bad\" {\n    query \"SELECT 1; SELECT 2\"\n}\n",
        ),
    ]);
    let output = offline(dir.path())
        .args([
            "plan",
            "--database-url",
            "postgresql://nobody@127.0.0.1:1/none",
        ])
        .output()
        .expect("run");
    let stderr = text(&output.stderr);
    assert_eq!(output.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("bad.kdl:2:20"), "{stderr}");
    assert!(!stderr.contains("127.0.0.1"), "{stderr}");
}

/// A server that accepts connections and never answers: its address, and the connections
/// it holds (kept open while the returned listener lives).
fn silent_server() -> (std::net::SocketAddr, std::net::TcpListener) {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let address = listener.local_addr().expect("address");
    let accepting = listener.try_clone().expect("clone");
    std::thread::spawn(move || {
        let mut held = Vec::new();
        for stream in accepting.incoming() {
            held.push(stream);
        }
    });
    (address, listener)
}

#[test]
fn plan_does_not_wait_for_a_silent_server_to_report_mistakes_or_past_connect_timeout() {
    let (address, _listener) = silent_server();
    let bad = project(&[
        ("viewkeeper.kdl", ""),
        (
            "views/bad.kdl",
            "view \"public.bad\" {\n    query \"SELECT 1; SELECT 2\"\n}\n",
        ),
    ]);
    // A hang guard only: without it a regression would stall the suite.
    let output = offline(bad.path())
        .args([
            "plan",
            "--database-url",
            &format!("postgresql://nobody@{address}/none"),
        ])
        .timeout(Duration::from_secs(30))
        .output()
        .expect("run");
    let stderr = text(&output.stderr);
    assert_eq!(output.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("bad.kdl:2:20"), "{stderr}");

    // libpq's connect_timeout bounds the whole connection, the server's silence included.
    let good = project(&[
        ("viewkeeper.kdl", ""),
        (
            "views/good.kdl",
            "view \"public.good\" {\n    query \"SELECT 1 AS x\"\n}\n",
        ),
    ]);
    let output = offline(good.path())
        .args([
            "plan",
            "--database-url",
            &format!("postgresql://nobody@{address}/none?connect_timeout=1"),
        ])
        .timeout(Duration::from_secs(30))
        .output()
        .expect("run");
    let stderr = text(&output.stderr);
    assert_eq!(output.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("no answer within connect_timeout (1 s)"),
        "{stderr}"
    );
}
