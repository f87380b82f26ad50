//! The pg_cron export loaded into a server with a real pg_cron preloaded: the jobs it
//! registers run and refresh the views, and a sub-minute policy on a pg_cron older than 1.5
//! stops the script with a clear message before anything changes.
//!
//! Needs pg_cron for the server in use (Debian: `apt-get install postgresql-15-cron`, which
//! .ci/run does). Without it the test says so on stderr and passes, unless
//! `VIEWKEEPER_REQUIRE_PG_CRON` is set (as in CI), where it fails.

use std::path::Path;
use std::time::{Duration, Instant};

use tokio_postgres::NoTls;
use viewkeeper::sandbox::{Sandbox, find_bindir};

fn viewkeeper(url: &str, project: &Path, args: &[&str]) -> (i32, String, String) {
    let output = assert_cmd::Command::cargo_bin("viewkeeper")
        .expect("the viewkeeper binary")
        .arg("--project")
        .arg(project)
        .args(args)
        .env("DATABASE_URL", url)
        .env("NO_COLOR", "1")
        .output()
        .expect("run viewkeeper");
    (
        output.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

const VIEWS: &str = r#"materialized-view "sales_summary" {
    depends-on "invoices"
    query "SELECT seller, sum(amount) AS total FROM invoices GROUP BY seller"
    index "seller" unique=#true
    refresh every="1m" concurrently=#true
}
materialized-view "sales_rank" {
    depends-on "sales_summary"
    query "SELECT seller, rank() OVER (ORDER BY total DESC) AS position FROM sales_summary"
    refresh with-upstream=#true
}
"#;

#[test]
fn pg_cron_runs_the_exported_jobs() {
    let bindir = find_bindir().expect("PostgreSQL server binaries");
    let library = bindir.join("../lib/pg_cron.so");
    if !library.exists() {
        let why = format!(
            "pg_cron is not installed for the server in {} (no {}): install it \
             (Debian: apt-get install postgresql-15-cron) to run this test",
            bindir.display(),
            library.display()
        );
        assert!(
            std::env::var_os("VIEWKEEPER_REQUIRE_PG_CRON").is_none_or(|value| value.is_empty()),
            "{why}"
        );
        eprintln!("\n*** SKIPPED pg_cron_runs_the_exported_jobs: {why} ***\n");
        return;
    }
    let sandbox = Sandbox::start_with_settings(&[
        ("shared_preload_libraries", "pg_cron"),
        ("cron.database_name", "postgres"),
    ])
    .expect("a sandbox with pg_cron preloaded");
    let url = sandbox.url("postgres");
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let client = runtime.block_on(async {
        let (client, connection) = tokio_postgres::connect(&url, NoTls).await.expect("connect");
        tokio::spawn(connection);
        client
    });
    let query = |sql: &str| -> Vec<String> {
        runtime
            .block_on(client.simple_query(sql))
            .unwrap_or_else(|err| panic!("{sql}: {err:?}"))
            .into_iter()
            .filter_map(|message| match message {
                tokio_postgres::SimpleQueryMessage::Row(row) => {
                    Some(row.get(0).unwrap_or("").to_owned())
                }
                _ => None,
            })
            .collect()
    };
    query(
        "CREATE EXTENSION pg_cron;
         CREATE TABLE invoices (seller text NOT NULL, amount numeric NOT NULL);
         INSERT INTO invoices VALUES ('ann', 10), ('bob', 5);",
    );
    let installed = query("SELECT extversion FROM pg_extension WHERE extname = 'pg_cron'");

    let dir = tempfile::tempdir().expect("project folder");
    std::fs::create_dir(dir.path().join("views")).expect("views folder");
    std::fs::write(dir.path().join("views/sales.kdl"), VIEWS).expect("write views");
    let (code, stdout, stderr) = viewkeeper(&url, dir.path(), &["reconcile"]);
    assert_eq!(code, 0, "{stdout}{stderr}");

    let (code, script, stderr) = viewkeeper(&url, dir.path(), &["schedule", "--emit", "pg-cron"]);
    assert_eq!(code, 0, "{stderr}");
    assert!(
        !script.contains("DO $viewkeeper$"),
        "no check needed:\n{script}"
    );
    query(&script);
    assert_eq!(
        query("SELECT jobname FROM cron.job ORDER BY jobname"),
        ["viewkeeper:public.sales_summary"]
    );

    // New rows; the minute job refreshes both views, upstream first.
    query("INSERT INTO invoices VALUES ('cat', 100)");
    let deadline = Instant::now() + Duration::from_secs(150);
    loop {
        let rank = query("SELECT seller FROM sales_rank WHERE position = 1");
        if rank == ["cat"] {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "pg_cron did not refresh the views within 150 s; runs: {:?}",
            query(
                "SELECT status || ': ' || coalesce(return_message, '') FROM cron.job_run_details"
            )
        );
        std::thread::sleep(Duration::from_secs(2));
    }
    assert!(
        query("SELECT status FROM cron.job_run_details")
            .iter()
            .any(|status| status == "succeeded")
    );

    // A policy under a minute: older pg_cron stops with a clear message, nothing changes.
    std::fs::write(
        dir.path().join("views/sales.kdl"),
        VIEWS.replace("every=\"1m\"", "every=\"5s\""),
    )
    .expect("rewrite views");
    let (code, script, stderr) = viewkeeper(&url, dir.path(), &["schedule", "--emit", "pg-cron"]);
    assert_eq!(code, 0, "{stderr}");
    let loaded = runtime.block_on(client.simple_query(&script));
    let old = installed[0]
        .split('.')
        .map(|p| p.parse::<u32>().unwrap_or(0))
        .collect::<Vec<_>>()
        < vec![1, 5];
    if old {
        let error = loaded.expect_err("pg_cron < 1.5 must refuse '5 seconds'");
        let message = error
            .as_db_error()
            .map(|e| e.message().to_owned())
            .unwrap_or_default();
        assert!(
            message.contains("needs pg_cron 1.5 or newer; installed: ")
                && message.contains("public.sales_summary"),
            "{message}"
        );
        runtime.block_on(client.simple_query("ROLLBACK")).ok();
        assert_eq!(
            query("SELECT schedule FROM cron.job"),
            ["* * * * *"],
            "the old job stays"
        );
    } else {
        loaded.expect("pg_cron 1.5+ takes '5 seconds'");
        assert_eq!(query("SELECT schedule FROM cron.job"), ["5 seconds"]);
    }
    sandbox.stop();
}
