//! Faults under load: readers never deadlock with reconcile, and every wait for a lock is
//! bounded by `lock-timeout` with a message naming who holds it.

mod support;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use support::{TestDb, project, reconcile, run, test_db};

const CONFIG: &str = "lock-timeout \"300ms\"\n";

fn views(extra_column: bool) -> String {
    let column = if extra_column { ", 1 AS extra" } else { "" };
    format!(
        r#"
materialized-view "public.totals" {{
    depends-on "public.items"
    query "SELECT kind, count(*) AS n{column} FROM items GROUP BY kind"
}}
view "public.top_totals" {{
    depends-on "public.totals"
    query "SELECT kind, n FROM totals WHERE n > 1"
}}
"#
    )
}

fn setup() -> (TestDb, tempfile::TempDir) {
    let db = test_db();
    db.batch(
        "CREATE TABLE items (id int PRIMARY KEY, kind text);
         INSERT INTO items SELECT i, 'k' || (i % 5) FROM generate_series(1, 100) i;",
    );
    let dir = project(&[("viewkeeper.kdl", CONFIG), ("views/v.kdl", &views(false))]);
    reconcile(&db, dir.path());
    (db, dir)
}

/// `plan` sends its catalog queries together, in one transaction. When the one that deparses
/// a view gives up waiting for a lock, every query after it fails with the transaction; the
/// message is still the lock's, naming its holder, every time.
#[test]
fn plan_names_the_holder_of_a_lock_a_deparse_waits_for_whichever_query_answers_first() {
    let (db, dir) = setup();
    let pid = db.scalar_i64("SELECT pg_backend_pid()");
    db.batch("SET application_name = 'the_blocker'");
    // A recorded rule hash that no longer matches the view's: plan deparses it.
    db.batch(
        "UPDATE viewkeeper.managed_object SET applied_rule_hash = 'stale'
         WHERE object_name = 'top_totals'",
    );
    db.batch("BEGIN");
    db.batch("LOCK TABLE top_totals IN ACCESS EXCLUSIVE MODE");
    for _ in 0..6 {
        let (code, stdout, stderr) = run(&db, dir.path(), &["plan"]);
        assert_ne!(code, 0, "plan succeeded:\n{stdout}{stderr}");
        for expected in ["lock-timeout", &format!("pid {pid}"), "the_blocker"] {
            assert!(stderr.contains(expected), "no {expected:?} in\n{stderr}");
        }
    }
    db.batch("ROLLBACK");
}

/// A second session holding a lock makes each command that needs the locked object give up
/// after lock-timeout, naming the holder (pid, role, application_name, state, its query) and
/// the setting to change. A command that does not need it answers from the catalog.
#[test]
fn every_command_gives_up_after_lock_timeout_and_names_the_holder() {
    let (db, dir) = setup();
    let pid = db.scalar_i64("SELECT pg_backend_pid()");
    db.batch("SET application_name = 'the_blocker'");

    // Nothing changed: plan and status tell the locked view is as applied from its recorded
    // rule hash, without deparsing it (which would wait for the lock).
    db.batch("BEGIN");
    db.batch("LOCK TABLE top_totals IN ACCESS EXCLUSIVE MODE");
    for args in [&["plan", "--detailed-exitcode"][..], &["status"]] {
        let (code, stdout, stderr) = run(&db, dir.path(), args);
        assert_eq!(
            code, 0,
            "{args:?} under a lock it does not need:\n{stdout}{stderr}"
        );
    }
    db.batch("ROLLBACK");

    // A changed declaration that reads the locked relation: its query is compiled against
    // it, so every command waits, and gives up.
    db.batch("BEGIN");
    // (`LOCK TABLE` refuses materialized views; a refresh holds the same lock.)
    db.batch("REFRESH MATERIALIZED VIEW totals");
    std::fs::write(
        dir.path().join("views/v.kdl"),
        views(false).replace("WHERE n > 1", "WHERE n > 2"),
    )
    .expect("write");
    for args in [&["plan"][..], &["status"], &["reconcile"]] {
        let started = Instant::now();
        let (code, stdout, stderr) = run(&db, dir.path(), args);
        let took = started.elapsed();
        assert_ne!(code, 0, "{args:?} succeeded:\n{stdout}{stderr}");
        assert!(took < Duration::from_secs(5), "{args:?} took {took:?}");
        if args != ["reconcile"] {
            for expected in [
                "lock-timeout",
                &format!("pid {pid}"),
                "the_blocker",
                "idle in transaction",
                "REFRESH MATERIALIZED VIEW totals",
                "viewkeeper.kdl",
            ] {
                assert!(
                    stderr.contains(expected),
                    "{args:?}: no {expected:?} in\n{stderr}"
                );
            }
        }
    }
    db.batch("ROLLBACK");
    std::fs::write(dir.path().join("views/v.kdl"), views(false)).expect("write");

    // Reconcile's advisory lock held by another session: reconcile, plan and status give up.
    let key = viewkeeper::waits::lock_key("viewkeeper");
    db.batch("BEGIN");
    db.batch(&format!("SELECT pg_advisory_xact_lock({key})"));
    for args in [&["reconcile"][..], &["plan"], &["status"]] {
        let started = Instant::now();
        let (code, stdout, stderr) = run(&db, dir.path(), args);
        assert_ne!(code, 0, "{args:?} succeeded:\n{stdout}{stderr}");
        assert!(started.elapsed() < Duration::from_secs(5));
        for expected in ["lock-timeout", &format!("pid {pid}"), "advisory lock"] {
            assert!(
                stderr.contains(expected),
                "{args:?}: no {expected:?} in\n{stderr}"
            );
        }
    }
    // refresh takes the same lock in shared mode: it gives up too, within the bound.
    let started = Instant::now();
    let (code, _, stderr) = run(&db, dir.path(), &["refresh", "public.totals"]);
    assert_ne!(
        code, 0,
        "refresh succeeded under a held reconcile lock:\n{stderr}"
    );
    assert!(started.elapsed() < Duration::from_secs(5));
    db.batch("ROLLBACK");

    let (code, _, stderr) = run(&db, dir.path(), &["plan"]);
    assert_eq!(code, 0, "{stderr}");
}

/// A lock on one of viewkeeper's own tables: plan, status and reconcile give up within
/// lock-timeout and name the holder and the table; a lock on the restore-owed record only
/// costs its warning.
#[test]
fn a_lock_on_viewkeepers_own_tables_is_bounded_and_named() {
    let (db, dir) = setup();
    // Without the in-sync record, which would answer plan without reading the refresh log.
    db.batch("DROP TABLE viewkeeper.in_sync_v1");
    let pid = db.scalar_i64("SELECT pg_backend_pid()");
    db.batch("SET application_name = 'the_blocker'");
    for table in ["managed_object", "side_build", "refresh_log"] {
        db.batch("BEGIN");
        db.batch(&format!(
            "LOCK TABLE viewkeeper.{table} IN ACCESS EXCLUSIVE MODE"
        ));
        for args in [&["plan"][..], &["status"], &["reconcile"]] {
            let started = Instant::now();
            let (code, stdout, stderr) = run(&db, dir.path(), args);
            assert_ne!(code, 0, "{args:?} succeeded:\n{stdout}{stderr}");
            assert!(started.elapsed() < Duration::from_secs(5));
            for expected in [
                "lock-timeout",
                &format!("pid {pid}"),
                "the_blocker",
                &format!("viewkeeper.{table}"),
            ] {
                assert!(
                    stderr.contains(expected),
                    "{table}, {args:?}: no {expected:?} in\n{stderr}"
                );
            }
        }
        db.batch("ROLLBACK");
    }

    db.batch("BEGIN");
    db.batch("LOCK TABLE viewkeeper.restore_owed IN ACCESS EXCLUSIVE MODE");
    let started = Instant::now();
    let (code, stdout, stderr) = run(&db, dir.path(), &["plan", "--detailed-exitcode"]);
    assert_eq!(code, 0, "{stdout}{stderr}");
    assert!(started.elapsed() < Duration::from_secs(5));
    db.batch("ROLLBACK");
}

/// A reader holding a view that reconcile must rebuild: the DROP gives up after
/// lock-timeout, and the message names the reader and the setting to change.
#[test]
fn a_rebuild_blocked_by_a_reader_names_the_reader() {
    let (db, dir) = setup();
    let pid = db.scalar_i64("SELECT pg_backend_pid()");
    db.batch("SET application_name = 'the_reader'");
    db.batch("BEGIN");
    db.batch("SELECT count(*) FROM top_totals");
    std::fs::write(dir.path().join("views/v.kdl"), views(true)).expect("write");
    let started = Instant::now();
    let (code, stdout, stderr) = run(&db, dir.path(), &["reconcile"]);
    assert_eq!(code, 1, "{stdout}{stderr}");
    assert!(started.elapsed() < Duration::from_secs(5));
    for expected in [
        "lock-timeout",
        "a lock on public.",
        &format!("pid {pid}"),
        "the_reader",
        "SELECT count(*) FROM top_totals",
        "viewkeeper.kdl",
    ] {
        assert!(stderr.contains(expected), "no {expected:?} in\n{stderr}");
    }
    db.batch("ROLLBACK");
    reconcile(&db, dir.path());
}

/// 200 reconciles that drop and recreate views, against loops of plan, status and refresh:
/// not one deadlock, not one lost relation.
#[test]
fn readers_and_refreshes_never_fail_against_reconcile() {
    let (db, dir) = setup();
    std::fs::write(dir.path().join("viewkeeper.kdl"), "lock-timeout \"30s\"\n").expect("config");
    let stop = Arc::new(AtomicBool::new(false));
    let reads = Arc::new(AtomicUsize::new(0));
    let loops: Vec<_> = [&["plan"][..], &["status"], &["refresh", "public.totals"]]
        .into_iter()
        .map(|args| {
            let args: Vec<String> = args.iter().map(|a| a.to_string()).collect();
            let (url, path) = (db.url.clone(), dir.path().to_owned());
            let (stop, reads) = (stop.clone(), reads.clone());
            std::thread::spawn(move || {
                let mut failures = Vec::new();
                while !stop.load(Ordering::Relaxed) {
                    let output = assert_cmd::Command::cargo_bin("viewkeeper")
                        .expect("binary")
                        .arg("--project")
                        .arg(&path)
                        .args(&args)
                        .env("DATABASE_URL", &url)
                        .env("NO_COLOR", "1")
                        .output()
                        .expect("run");
                    reads.fetch_add(1, Ordering::Relaxed);
                    if !output.status.success() {
                        failures.push(String::from_utf8_lossy(&output.stderr).into_owned());
                    }
                }
                failures
            })
        })
        .collect();
    let started = Instant::now();
    let mut reconcile_failures = Vec::new();
    for round in 0..200 {
        // Written aside and renamed, so a reader never sees a half-written file.
        let aside = dir.path().join("v.kdl.new");
        std::fs::write(&aside, views(round % 2 == 0)).expect("write");
        std::fs::rename(&aside, dir.path().join("views/v.kdl")).expect("rename");
        let (code, stdout, stderr) = run(&db, dir.path(), &["reconcile"]);
        if code != 0 {
            reconcile_failures.push(format!("{stdout}{stderr}"));
        }
    }
    stop.store(true, Ordering::Relaxed);
    let reader_failures: Vec<String> = loops
        .into_iter()
        .flat_map(|handle| handle.join().expect("reader thread"))
        .collect();
    eprintln!(
        "200 reconciles against {} concurrent plan/status/refresh runs in {:?}",
        reads.load(Ordering::Relaxed),
        started.elapsed()
    );
    assert!(reconcile_failures.is_empty(), "{reconcile_failures:#?}");
    assert!(reader_failures.is_empty(), "{reader_failures:#?}");
    assert!(reads.load(Ordering::Relaxed) > 20, "the readers hardly ran");
}

/// Runs viewkeeper with `args` on another thread: exit code and stderr.
fn spawn_viewkeeper(
    db: &TestDb,
    dir: &std::path::Path,
    args: &[&str],
) -> std::thread::JoinHandle<(i32, String)> {
    let mut command = std::process::Command::new(assert_cmd::cargo::cargo_bin("viewkeeper"));
    command
        .arg("--project")
        .arg(dir)
        .args(args)
        .env("DATABASE_URL", &db.url)
        .env("NO_COLOR", "1");
    std::thread::spawn(move || {
        let output = command.output().expect("run viewkeeper");
        (
            output.status.code().unwrap_or(-1),
            String::from_utf8_lossy(&output.stderr).into_owned(),
        )
    })
}

/// The pid of the other backend that waits for a lock while running `query_prefix`.
fn waiting_backend(db: &TestDb, query_prefix: &str) -> Option<i64> {
    let mut pid = None;
    support::eventually(Duration::from_secs(10), || {
        pid = db
            .strings(&format!(
                "SELECT pid::text FROM pg_stat_activity
                 WHERE pid <> pg_backend_pid() AND wait_event_type = 'Lock'
                   AND query LIKE '{query_prefix}%'"
            ))
            .first()
            .and_then(|row| row.first().cloned().flatten())
            .and_then(|pid| pid.parse().ok());
        pid.is_some()
    });
    pid
}

/// A connection lost while COMMIT runs leaves the outcome unknown, and reconcile says so;
/// an error raised at COMMIT is a real rollback, and reconcile says nothing was changed.
#[test]
fn a_commit_whose_outcome_is_unknown_is_not_reported_as_a_rollback() {
    let (db, dir) = setup();
    // A deferred trigger on viewkeeper's state table makes COMMIT wait for a lock the test
    // holds (reconcile's lock-timeout does not apply inside it).
    db.batch(
        "CREATE FUNCTION wait_at_commit() RETURNS trigger LANGUAGE plpgsql AS $$
         BEGIN
             PERFORM set_config('lock_timeout', '0', true);
             PERFORM pg_advisory_lock_shared(4242);
             RETURN NULL;
         END $$;
         CREATE CONSTRAINT TRIGGER wait_at_commit AFTER INSERT OR UPDATE ON viewkeeper.managed_object
             DEFERRABLE INITIALLY DEFERRED FOR EACH ROW EXECUTE FUNCTION wait_at_commit();
         SELECT pg_advisory_lock(4242);",
    );
    std::fs::write(dir.path().join("views/v.kdl"), views(true)).expect("edit");
    let reconciling = spawn_viewkeeper(&db, dir.path(), &["reconcile"]);
    let pid = waiting_backend(&db, "COMMIT").expect("reconcile never waited in COMMIT");
    db.batch(&format!("SELECT pg_terminate_backend({pid})"));
    let (code, stderr) = reconciling.join().expect("reconcile thread");
    assert_eq!(code, 1, "{stderr}");
    assert!(
        stderr.contains("the connection was lost while committing")
            && stderr.contains("may or may not be applied")
            && stderr.contains("viewkeeper plan"),
        "{stderr}"
    );
    assert!(!stderr.contains("nothing was changed"), "{stderr}");
    db.batch("SELECT pg_advisory_unlock(4242)");

    // An error at COMMIT: PostgreSQL rolled back, and that is what reconcile says.
    db.batch(
        "CREATE OR REPLACE FUNCTION wait_at_commit() RETURNS trigger LANGUAGE plpgsql AS $$
         BEGIN RAISE EXCEPTION 'refused at commit'; END $$;",
    );
    let (code, _, stderr) = run(&db, dir.path(), &["reconcile"]);
    assert_eq!(code, 1, "{stderr}");
    assert!(
        stderr.contains("nothing was changed") && stderr.contains("refused at commit"),
        "{stderr}"
    );
    assert!(!stderr.contains("may or may not"), "{stderr}");
    assert_eq!(
        db.scalar_i64(
            "SELECT count(*) FROM pg_attribute WHERE attrelid = 'totals'::regclass AND attname = 'extra'"
        ),
        0
    );
    db.batch("DROP TRIGGER wait_at_commit ON viewkeeper.managed_object");
    reconcile(&db, dir.path());
}

/// A refresh whose connection is terminated says so, not "cannot read the catalog".
#[test]
fn a_connection_lost_during_refresh_is_reported_as_such() {
    let (db, _) = setup();
    let dir = project(&[("views/v.kdl", &views(false))]);
    // A reader holds the view: the refresh waits for it, and is terminated meanwhile.
    let reader = db.second_session();
    db.block_on(reader.batch_execute("BEGIN; SELECT count(*) FROM totals;"))
        .expect("read");
    let refreshing = spawn_viewkeeper(&db, dir.path(), &["refresh", "totals"]);
    let pid = waiting_backend(&db, "REFRESH").expect("refresh never waited");
    db.batch(&format!("SELECT pg_terminate_backend({pid})"));
    let (code, stderr) = refreshing.join().expect("refresh thread");
    db.block_on(reader.batch_execute("ROLLBACK"))
        .expect("rollback");
    assert_eq!(code, 1, "{stderr}");
    assert!(
        stderr.contains("lost the connection while refreshing public.totals"),
        "{stderr}"
    );
    assert!(!stderr.contains("cannot read the catalog"), "{stderr}");
}

/// Under a database default of repeatable read, a plan that waited for reconcile's lock
/// still plans against what that reconcile committed: its reads take their snapshot after
/// the lock is granted, not when it was asked for.
#[test]
fn a_plan_that_waited_for_reconcile_sees_what_it_committed_under_repeatable_read() {
    let (db, dir) = setup();
    std::fs::write(dir.path().join("viewkeeper.kdl"), "lock-timeout \"10s\"\n")
        .expect("write the settings");
    db.batch(&format!(
        "ALTER DATABASE {} SET default_transaction_isolation = 'repeatable read'",
        db.name
    ));
    // Only a new view: nothing the plan reads is dropped under it (which would make it read
    // again, in a new transaction).
    let added = format!(
        "{}\nview \"public.kinds\" {{\n    query \"SELECT DISTINCT kind FROM items\"\n}}\n",
        views(false)
    );
    std::fs::write(dir.path().join("views/v.kdl"), added).expect("write views");

    // The reconcile takes its lock, then waits to create what reads `items`.
    let blocker = db.second_session();
    db.block_on(blocker.batch_execute("BEGIN; LOCK TABLE items IN ACCESS EXCLUSIVE MODE"))
        .expect("lock items");
    let reconciling = spawn_viewkeeper(&db, dir.path(), &["reconcile"]);
    assert!(
        waiting_backend(&db, "CREATE").is_some(),
        "the reconcile never waited for items"
    );
    let planning = spawn_viewkeeper(&db, dir.path(), &["plan", "--detailed-exitcode"]);
    assert!(
        waiting_backend(&db, "SELECT pg_advisory").is_some(),
        "the plan never waited for reconcile's lock"
    );
    db.block_on(blocker.batch_execute("ROLLBACK"))
        .expect("unlock items");

    let (code, stderr) = reconciling.join().expect("reconcile thread");
    assert_eq!(code, 0, "{stderr}");
    let (code, stderr) = planning.join().expect("plan thread");
    assert_eq!(code, 0, "the plan must see the reconcile's work:\n{stderr}");
}

/// Proving a new query compiles it, which reads what it reads: under a lock held on a view
/// it reads, plan gives up after lock-timeout and names the holder, instead of saying
/// PostgreSQL rejects the query.
#[test]
fn a_proof_that_waits_for_a_lock_names_the_holder_not_the_query() {
    let (db, dir) = setup();
    let added = format!(
        "{}\nview \"public.top_kinds\" {{\n    query \"SELECT kind FROM top_totals\"\n}}\n",
        views(false)
    );
    std::fs::write(dir.path().join("views/v.kdl"), added).expect("write views");
    let pid = db.scalar_i64("SELECT pg_backend_pid()");
    db.batch("SET application_name = 'the_blocker'");
    db.batch("BEGIN");
    db.batch("LOCK TABLE top_totals IN ACCESS EXCLUSIVE MODE");
    let started = Instant::now();
    let (code, stdout, stderr) = run(&db, dir.path(), &["plan"]);
    assert!(started.elapsed() < Duration::from_secs(5));
    db.batch("ROLLBACK");
    assert_eq!(code, 1, "{stdout}{stderr}");
    assert!(
        stdout.contains("public.top_kinds"),
        "the plan is shown:\n{stdout}{stderr}"
    );
    assert!(!stderr.contains("rejects"), "{stderr}");
    for expected in [
        "lock-timeout",
        &format!("pid {pid}"),
        "the_blocker",
        "top_totals",
    ] {
        assert!(stderr.contains(expected), "no {expected:?} in\n{stderr}");
    }
    let (code, stdout, stderr) = run(&db, dir.path(), &["plan", "--detailed-exitcode"]);
    assert_eq!(code, 2, "proven once the lock is gone:\n{stdout}{stderr}");

    // A lock on a table a changed materialized view reads stops the catalog read itself:
    // named too.
    std::fs::write(dir.path().join("views/v.kdl"), views(true)).expect("write views");
    db.batch("BEGIN");
    db.batch("LOCK TABLE items IN ACCESS EXCLUSIVE MODE");
    let (code, stdout, stderr) = run(&db, dir.path(), &["plan"]);
    db.batch("ROLLBACK");
    assert_eq!(code, 1, "{stdout}{stderr}");
    for expected in [
        "cannot read the catalog",
        "lock-timeout",
        &format!("pid {pid}"),
        "AccessExclusiveLock on items",
    ] {
        assert!(stderr.contains(expected), "no {expected:?} in\n{stderr}");
    }
}
