//! `viewkeeper schedule` and `status` against a real PostgreSQL, with one- and two-second
//! policies: refreshes on time, upstream before downstream, concurrent readers, two
//! schedulers sharing one database, failures, shutdown, and the pg_cron export.

mod support;

use std::time::{Duration, Instant};

use nix::sys::signal::Signal;
use support::{Scheduler, TestDb, eventually, project, reconcile, run, test_db};

fn items_db() -> TestDb {
    let db = test_db();
    db.batch(
        "CREATE TABLE items (id int PRIMARY KEY, x int NOT NULL);
         INSERT INTO items SELECT i, i FROM generate_series(1, 10) i;",
    );
    db
}

/// `(object, started_at epoch seconds, duration ms, outcome)` of every refresh, in order.
fn history(db: &TestDb) -> Vec<(String, f64, f64, String)> {
    db.strings(
        "SELECT object_name, extract(epoch FROM started_at)::text, duration_ms::text, outcome
         FROM viewkeeper.refresh_log ORDER BY started_at, id",
    )
    .into_iter()
    .map(|row| {
        let field = |i: usize| row[i].clone().unwrap_or_default();
        (
            field(0),
            field(1).parse().unwrap_or(0.0),
            field(2).parse().unwrap_or(0.0),
            field(3),
        )
    })
    .collect()
}

fn refreshing(db: &TestDb, application: &str) -> bool {
    db.scalar_i64(&format!(
        "SELECT count(*) FROM pg_stat_activity
         WHERE datname = current_database() AND state = 'active'
           AND query LIKE 'REFRESH MATERIALIZED VIEW%'
           AND application_name LIKE '{application}%'"
    )) > 0
}

#[test]
fn a_one_second_policy_picks_up_new_rows_and_status_shows_it() {
    let db = items_db();
    let dir = project(&[(
        "views/m.kdl",
        r#"materialized-view "item_count" {
    depends-on "items"
    query "SELECT count(*) AS n FROM items"
    refresh every="1s"
}
"#,
    )]);
    reconcile(&db, dir.path());
    let mut scheduler = Scheduler::start(&db, dir.path(), "schedule", &[]);
    db.batch("INSERT INTO items SELECT i, i FROM generate_series(11, 25) i");
    assert!(
        eventually(Duration::from_secs(8), || db
            .scalar_i64("SELECT n FROM item_count")
            == 25),
        "the new rows never appeared: {}",
        scheduler.output()
    );

    let (code, stdout, stderr) = run(&db, dir.path(), &["status", "--format", "json"]);
    assert_eq!(code, 0, "{stderr}");
    let status: serde_json::Value = serde_json::from_str(&stdout).expect("json");
    let row = &status["objects"][0];
    assert_eq!(row["object"], "public.item_count");
    assert_eq!(row["sync"], "in-sync");
    assert_eq!(row["policy"], "every 1s");
    assert!(row["last_refresh"].is_string(), "{stdout}");
    assert!(row["next_due"].is_string(), "{stdout}");
    let (_, text, _) = run(&db, dir.path(), &["status"]);
    assert!(
        text.contains("public.item_count") && text.contains("every 1s"),
        "{text}"
    );

    scheduler.signal(Signal::SIGTERM);
    let status = scheduler
        .wait(Duration::from_secs(5))
        .expect("schedule exits on SIGTERM");
    assert!(status.success(), "{}", scheduler.output());
    assert!(
        scheduler.output().contains("refreshed public.item_count"),
        "{}",
        scheduler.output()
    );
}

#[test]
fn a_with_upstream_view_is_refreshed_after_its_upstream_every_time() {
    let db = items_db();
    let dir = project(&[(
        "views/chain.kdl",
        r#"materialized-view "up" {
    depends-on "items"
    query "SELECT x FROM items"
    refresh every="1s"
}
view "middle" {
    depends-on "up"
    query "SELECT x FROM up"
}
materialized-view "down" {
    depends-on "middle"
    query "SELECT sum(x) AS total FROM middle"
    refresh with-upstream=#true
}
"#,
    )]);
    reconcile(&db, dir.path());
    let scheduler = Scheduler::start(&db, dir.path(), "schedule", &[]);
    assert!(
        eventually(Duration::from_secs(10), || {
            history(&db).iter().filter(|r| r.0 == "down").count() >= 4
        }),
        "down was not refreshed often enough: {}",
        scheduler.output()
    );
    drop(scheduler);
    let rows = history(&db);
    // Every refresh of `down` follows a refresh of `up` that came after the previous `down`.
    let mut up_since_down = false;
    for (object, _, _, outcome) in &rows {
        assert_eq!(outcome, "ok", "{rows:?}");
        match object.as_str() {
            "up" => up_since_down = true,
            "down" => {
                assert!(
                    up_since_down,
                    "down refreshed before its upstream: {rows:?}"
                );
                up_since_down = false;
            }
            _ => {}
        }
    }
}

#[test]
fn readers_are_not_blocked_by_a_concurrent_refresh() {
    let db = items_db();
    let dir = project(&[(
        "views/slow.kdl",
        r#"materialized-view "slow" {
    depends-on "items"
    query "SELECT id, x, pg_sleep(0.15) IS NOT NULL AS slept FROM items"
    index "id" unique=#true
    refresh every="1s" concurrently=#true
}
"#,
    )]);
    reconcile(&db, dir.path());
    let scheduler = Scheduler::start(&db, dir.path(), "schedule", &[]);
    assert!(
        eventually(Duration::from_secs(10), || refreshing(
            &db,
            "viewkeeper schedule"
        )),
        "no refresh started: {}",
        scheduler.output()
    );
    let started = Instant::now();
    db.batch("SET statement_timeout = '1s'");
    assert_eq!(db.scalar_i64("SELECT count(*) FROM slow"), 10);
    assert!(started.elapsed() < Duration::from_secs(1));
    assert!(
        refreshing(&db, "viewkeeper schedule"),
        "the read overlapped the refresh"
    );
    db.batch("RESET statement_timeout");
    drop(scheduler);
    assert!(history(&db).iter().all(|r| r.3 == "ok"));
}

#[test]
fn two_schedulers_share_the_work_and_survive_one_being_killed() {
    let db = items_db();
    let dir = project(&[(
        "views/m.kdl",
        r#"materialized-view "shared" {
    depends-on "items"
    query "SELECT id, x, pg_sleep(0.03) IS NOT NULL AS slept FROM items"
    refresh every="2s"
}
"#,
    )]);
    reconcile(&db, dir.path());
    let mut first = Scheduler::start(&db, dir.path(), "first", &[]);
    let second = Scheduler::start(&db, dir.path(), "second", &[]);
    std::thread::sleep(Duration::from_secs(5));

    // Kill the first one in the middle of a refresh if it gets one, else whenever.
    let first_application = format!("viewkeeper schedule {}", first.pid());
    eventually(Duration::from_secs(4), || {
        refreshing(&db, &first_application)
    });
    first.signal(Signal::SIGKILL);
    first.wait(Duration::from_secs(2));
    let killed_at: f64 = db
        .scalar_string("SELECT extract(epoch FROM clock_timestamp())::text")
        .and_then(|t| t.parse().ok())
        .unwrap_or(0.0);
    std::thread::sleep(Duration::from_secs(5));
    drop(second);

    let rows: Vec<_> = history(&db)
        .into_iter()
        .filter(|r| r.0 == "shared")
        .collect();
    assert!(rows.iter().all(|r| r.3 == "ok"), "errors: {rows:?}");
    // The first row is reconcile's; then one refresh per period, never overlapping.
    for pair in rows.windows(2) {
        let (previous, next) = (&pair[0], &pair[1]);
        assert!(
            next.1 - previous.1 >= 1.99,
            "refreshed twice within one 2s period: {rows:?}"
        );
        assert!(
            previous.1 + previous.2 / 1000.0 <= next.1 + 0.001,
            "overlapping refreshes: {rows:?}"
        );
    }
    assert!(rows.len() >= 5, "too few refreshes in ~10s: {rows:?}");
    assert!(
        rows.iter().filter(|r| r.1 > killed_at).count() >= 1,
        "nothing was refreshed after one scheduler died: {rows:?}"
    );
}

#[test]
fn a_failing_refresh_shows_in_status_and_others_keep_going() {
    let db = items_db();
    let dir = project(&[(
        "views/m.kdl",
        r#"materialized-view "fragile" {
    depends-on "items"
    query "SELECT id, 100 / (x - 50) AS ratio FROM items"
    refresh every="1s"
}
materialized-view "sturdy" {
    depends-on "items"
    query "SELECT count(*) AS n FROM items"
    refresh every="1s"
}
"#,
    )]);
    reconcile(&db, dir.path());
    db.batch("INSERT INTO items VALUES (50, 50)");
    let scheduler = Scheduler::start(&db, dir.path(), "schedule", &[]);
    assert!(
        eventually(Duration::from_secs(10), || db
            .scalar_i64("SELECT n FROM sturdy")
            == 11),
        "sturdy stopped refreshing: {}",
        scheduler.output()
    );
    assert!(
        eventually(Duration::from_secs(10), || {
            history(&db)
                .iter()
                .any(|r| r.0 == "fragile" && r.3 == "failed")
        }),
        "{}",
        scheduler.output()
    );
    let (_, stdout, _) = run(&db, dir.path(), &["status", "--format", "json"]);
    let status: serde_json::Value = serde_json::from_str(&stdout).expect("json");
    let fragile = status["objects"]
        .as_array()
        .and_then(|rows| rows.iter().find(|r| r["object"] == "public.fragile"))
        .expect("fragile row");
    assert!(
        fragile["last_error"]
            .as_str()
            .is_some_and(|e| e.contains("division by zero")),
        "{stdout}"
    );
    let (_, text, _) = run(&db, dir.path(), &["status"]);
    assert!(text.contains("refresh failed: division by zero"), "{text}");
    // Retried with backoff, not in a hot loop.
    std::thread::sleep(Duration::from_secs(3));
    let failures = history(&db)
        .iter()
        .filter(|r| r.0 == "fragile" && r.3 == "failed")
        .count();
    assert!(
        failures <= 4,
        "{failures} failures in a few seconds: no backoff"
    );
    assert!(
        scheduler.output().contains("retrying at"),
        "{}",
        scheduler.output()
    );
}

#[test]
fn sigterm_during_a_refresh_exits_0_and_leaves_no_session() {
    let db = items_db();
    let dir = project(&[(
        "views/m.kdl",
        r#"materialized-view "glacial" {
    depends-on "items"
    query "SELECT id, pg_sleep(0.6) IS NOT NULL AS slept FROM items"
    refresh every="1s"
}
"#,
    )]);
    reconcile(&db, dir.path());
    let mut scheduler = Scheduler::start(&db, dir.path(), "schedule", &["--grace", "1s"]);
    assert!(
        eventually(Duration::from_secs(10), || refreshing(
            &db,
            "viewkeeper schedule"
        )),
        "no refresh started: {}",
        scheduler.output()
    );
    let signalled = Instant::now();
    scheduler.signal(Signal::SIGTERM);
    let status = scheduler
        .wait(Duration::from_secs(5))
        .expect("exits after SIGTERM");
    assert!(status.success(), "{}", scheduler.output());
    assert!(
        signalled.elapsed() < Duration::from_secs(4),
        "took {:?}",
        signalled.elapsed()
    );
    assert!(
        eventually(Duration::from_secs(3), || {
            db.scalar_i64(
                "SELECT count(*) FROM pg_stat_activity
                 WHERE datname = current_database() AND application_name LIKE 'viewkeeper%'",
            ) == 0
        }),
        "a viewkeeper session is still on the server"
    );
}

#[test]
fn pg_cron_export() {
    let dir = project(&[(
        "views/jobs.kdl",
        r#"materialized-view "sales_summary" {
    depends-on "invoices"
    query "SELECT seller, sum(amount) AS total FROM invoices GROUP BY seller"
    index "seller" unique=#true
    refresh every="15m" concurrently=#true
}
view "sales_report" {
    depends-on "sales_summary"
    query "SELECT * FROM sales_summary"
}
materialized-view "sales_rank" {
    depends-on "sales_report"
    query "SELECT seller, rank() OVER (ORDER BY total DESC) AS position FROM sales_report"
    refresh with-upstream=#true
}
materialized-view "nightly" {
    depends-on "invoices"
    query "SELECT count(*) AS n FROM invoices"
    refresh cron="0 3 * * *"
}
materialized-view "ticker" {
    depends-on "invoices"
    query "SELECT max(amount) AS top FROM invoices"
    refresh every="30s"
}
"#,
    )]);
    let db = test_db();
    let (code, stdout, stderr) = run(&db, dir.path(), &["schedule", "--emit", "pg-cron"]);
    assert_eq!(code, 0, "{stderr}");
    insta::assert_snapshot!("pg_cron", stdout);

    std::fs::write(
        dir.path().join("views/odd.kdl"),
        "materialized-view \"odd\" {\n    query \"SELECT 1 AS a\"\n    refresh every=\"45m\"\n}\n",
    )
    .expect("write");
    let (code, _, stderr) = run(&db, dir.path(), &["schedule", "--emit", "pg-cron"]);
    assert_eq!(code, 1);
    assert!(
        stderr.contains("public.odd") && stderr.contains("cannot be expressed by pg_cron"),
        "{stderr}"
    );
}

#[test]
fn statement_timeouts_cut_slow_refreshes_and_new_declarations_are_picked_up() {
    let db = items_db();
    let slow = r#"materialized-view "slow" {
    depends-on "items"
    query "SELECT id, pg_sleep(0.05) IS NOT NULL AS slept FROM items"
    refresh every="1s" statement-timeout="100ms"
}
"#;
    let dir = project(&[("views/slow.kdl", slow)]);
    reconcile(&db, dir.path());
    let scheduler = Scheduler::start(&db, dir.path(), "schedule", &[]);
    assert!(
        eventually(Duration::from_secs(10), || {
            db.scalar_i64(
                "SELECT count(*) FROM viewkeeper.refresh_log
                 WHERE object_name = 'slow' AND error LIKE '%statement timeout%'",
            ) > 0
        }),
        "the timeout never cut the refresh: {}",
        scheduler.output()
    );

    // A declaration added and reconciled while the scheduler runs is scheduled too.
    std::fs::write(
        dir.path().join("views/fresh.kdl"),
        "materialized-view \"fresh\" {\n    depends-on \"items\"\n    query \"SELECT count(*) AS n FROM items\"\n    refresh every=\"1s\"\n}\n",
    )
    .expect("write");
    reconcile(&db, dir.path());
    scheduler.signal(Signal::SIGHUP);
    db.batch("INSERT INTO items VALUES (11, 11)");
    assert!(
        eventually(Duration::from_secs(10), || db
            .scalar_i64("SELECT n FROM fresh")
            == 11),
        "the new view was not scheduled: {}",
        scheduler.output()
    );
}
