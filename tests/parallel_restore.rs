//! Issue 10, restore in parallel: missing objects built on several sessions, each committed
//! on its own, end in the same state as a serial restore; one that fails is left out with
//! what reads it, and the others stay.

mod support;

use std::fmt::Write as _;

use support::{TestDb, ensure_role, exists, project, reconcile, run, test_db};

/// Two branches over one table, each a materialized view with a unique index, a grant and a
/// comment, read by a view and a materialized view; the second branch's unique index is the
/// one a later row can break.
fn declarations() -> String {
    let mut text = String::new();
    for branch in ["a", "b"] {
        let _ = write!(
            text,
            r#"
materialized-view "public.{branch}_totals" {{
    query "SELECT cat, sum(amt) AS total, count(*) AS n FROM items WHERE cat IS NOT NULL GROUP BY cat"
    index "cat" unique=#true
    grant "SELECT" to="vk_reporting"
    comment "totals of branch {branch}"
}}
view "public.{branch}_top" {{
    query "SELECT cat, total FROM {branch}_totals ORDER BY total DESC LIMIT 2"
    grant "SELECT" to="vk_reporting"
}}
materialized-view "public.{branch}_top_sum" {{
    query "SELECT sum(total) AS total FROM {branch}_top"
    index "total" unique=#true
}}
"#
        );
    }
    text.push_str(
        r#"
materialized-view "public.amounts" {
    query "SELECT amt FROM items"
    index "amt" unique=#true
}
view "public.big_amounts" {
    query "SELECT amt FROM amounts WHERE amt > 50"
}
"#,
    );
    text
}

fn items_db() -> TestDb {
    let db = test_db();
    db.batch(
        "CREATE TABLE items (id integer PRIMARY KEY, cat integer, amt integer NOT NULL);
         INSERT INTO items SELECT i, i % 4, i * 10 FROM generate_series(1, 40) AS i;",
    );
    ensure_role(&db, "vk_reporting");
    db
}

/// Everything a restore must bring back, without OIDs or times: definitions, indexes,
/// grants, comments, rows, and viewkeeper's records.
fn end_state(db: &TestDb) -> Vec<Vec<Option<String>>> {
    let mut rows = db.strings(
        "SELECT c.relname::text, c.relkind::text, pg_get_viewdef(c.oid),
                coalesce(c.relacl::text, ''), coalesce(obj_description(c.oid, 'pg_class'), ''),
                c.relispopulated::text,
                (SELECT string_agg(pg_get_indexdef(i.indexrelid), '; ' ORDER BY 1)
                 FROM pg_index i WHERE i.indrelid = c.oid)
         FROM pg_class c
         WHERE c.relnamespace = 'public'::regnamespace AND c.relkind IN ('v', 'm')
         ORDER BY 1",
    );
    rows.extend(db.strings(
        "SELECT object_name, kind || ' ' || query_sha256 || ' ' || applied_definition
                || ' ' || applied_indexes::text
         FROM viewkeeper.managed_object ORDER BY 1",
    ));
    for view in ["a_totals", "b_top_sum", "amounts", "big_amounts"] {
        rows.push(vec![
            Some(view.to_owned()),
            Some(
                db.scalar_i64(&format!("SELECT count(*) FROM {view}"))
                    .to_string(),
            ),
        ]);
    }
    rows
}

#[test]
fn a_parallel_restore_ends_as_a_serial_one() {
    let db = items_db();
    let dir = project(&[("views/v.kdl", &declarations())]);
    reconcile(&db, dir.path());
    let serial = end_state(&db);

    // Everything gone, as after a CASCADE.
    let (code, _, stderr) = run(&db, dir.path(), &["drop-managed"]);
    assert_eq!(code, 0, "{stderr}");
    assert!(!exists(&db, "a_totals") && !exists(&db, "amounts"));

    let (code, stdout, stderr) = run(&db, dir.path(), &["reconcile", "--jobs", "3"]);
    assert_eq!(code, 0, "{stdout}{stderr}");
    assert_eq!(
        end_state(&db),
        serial,
        "the same end state as a serial restore"
    );
    let (code, stdout, _) = run(&db, dir.path(), &["plan", "--detailed-exitcode"]);
    assert_eq!(code, 0, "in sync, the restore owed settled:\n{stdout}");
    assert_eq!(
        db.scalar_i64("SELECT count(*) FROM viewkeeper.restore_owed"),
        0
    );
}

#[test]
fn an_object_that_fails_is_left_out_with_its_readers_and_the_rest_is_committed() {
    left_out_and_committed("2");
}

/// One session takes every ready object in one transaction: the failing one rolls back
/// the others with it, and they go again without it.
#[test]
fn a_failure_in_a_shared_transaction_does_not_take_the_others_down() {
    left_out_and_committed("1");
}

fn left_out_and_committed(jobs: &str) {
    let db = items_db();
    let dir = project(&[("views/v.kdl", &declarations())]);
    reconcile(&db, dir.path());
    let (code, _, stderr) = run(&db, dir.path(), &["drop-managed"]);
    assert_eq!(code, 0, "{stderr}");
    // A duplicate amount: the unique index of `amounts` cannot be built any more.
    db.batch("INSERT INTO items VALUES (41, 1, 10)");

    let (code, stdout, stderr) = run(&db, dir.path(), &["reconcile", "--jobs", jobs]);
    assert_eq!(code, 1, "{stdout}{stderr}");
    assert!(stderr.contains("public.amounts"), "{stderr}");
    assert!(
        stdout.contains("Reconciled: 6 created"),
        "what was left out is not reported as created:\n{stdout}"
    );
    assert!(!exists(&db, "amounts") && !exists(&db, "big_amounts"));
    for view in [
        "a_totals",
        "a_top",
        "a_top_sum",
        "b_totals",
        "b_top",
        "b_top_sum",
    ] {
        assert!(exists(&db, view), "{view} is restored:\n{stdout}{stderr}");
    }
    assert_eq!(
        db.scalar_i64(
            "SELECT count(*) FROM viewkeeper.managed_object
             WHERE object_name IN ('amounts', 'big_amounts')"
        ),
        2,
        "the records of what was left out stay, so the next reconcile restores it"
    );
    assert_eq!(
        db.scalar_i64("SELECT count(*) FROM viewkeeper.restore_owed"),
        1,
        "what failed is still owed"
    );

    db.batch("DELETE FROM items WHERE id = 41");
    let (code, stdout, stderr) = run(&db, dir.path(), &["reconcile", "--jobs", jobs]);
    assert_eq!(code, 0, "{stdout}{stderr}");
    assert!(exists(&db, "big_amounts"));
}

/// A plan that changes something that exists is not a restore: `--jobs` runs it in one
/// transaction, all or nothing.
#[test]
fn a_plan_that_changes_existing_objects_stays_one_transaction() {
    let db = items_db();
    let dir = project(&[("views/v.kdl", &declarations())]);
    reconcile(&db, dir.path());
    let edited = declarations()
        .replace("WHERE amt > 50", "WHERE amt > 60")
        .replace(
            "ORDER BY total DESC LIMIT 2",
            "ORDER BY total DESC LIMIT 2 OFFSET nope",
        );
    std::fs::write(dir.path().join("views/v.kdl"), edited).expect("edit");
    let before = end_state(&db);
    let (code, stdout, stderr) = run(&db, dir.path(), &["reconcile", "--jobs", "3"]);
    assert_eq!(code, 1, "{stdout}{stderr}");
    assert_eq!(end_state(&db), before, "nothing changed");
}

/// A session holding a lock on the table every object reads: the restore gives up after
/// lock-timeout, once, naming the holder, as a serial reconcile does, instead of waiting
/// again for each object.
#[test]
fn a_held_lock_makes_the_restore_give_up_after_lock_timeout() {
    let db = items_db();
    let dir = project(&[
        ("viewkeeper.kdl", "lock-timeout \"1s\"\n"),
        ("views/v.kdl", &declarations()),
    ]);
    reconcile(&db, dir.path());
    let (code, _, stderr) = run(&db, dir.path(), &["drop-managed"]);
    assert_eq!(code, 0, "{stderr}");
    let holder = db.second_session();
    db.block_on(holder.batch_execute(
        "SET application_name = 'the_holder'; BEGIN; LOCK TABLE items IN ACCESS EXCLUSIVE MODE;",
    ))
    .expect("the holder locks items");

    let started = std::time::Instant::now();
    let (code, stdout, stderr) = run(&db, dir.path(), &["reconcile", "--jobs", "3"]);
    // A bound on a hang, not a speed check: 8 objects each waiting 1 s in turn take longer.
    assert!(
        started.elapsed() < std::time::Duration::from_secs(6),
        "{stdout}{stderr}"
    );
    assert_eq!(code, 1, "{stdout}{stderr}");
    assert!(stderr.contains("lock-timeout"), "{stderr}");
    assert!(stderr.contains("the_holder"), "names the holder:\n{stderr}");

    db.block_on(holder.batch_execute("ROLLBACK"))
        .expect("the holder ends");
    let (code, stdout, stderr) = run(&db, dir.path(), &["reconcile", "--jobs", "3"]);
    assert_eq!(code, 0, "{stdout}{stderr}");
    let (code, stdout, _) = run(&db, dir.path(), &["plan", "--detailed-exitcode"]);
    assert_eq!(code, 0, "in sync:\n{stdout}");
}

/// The restore commits object by object. When the transaction that then records them fails
/// (here it waits on a lock on the refresh log past lock-timeout), the message names what
/// was restored instead of saying nothing was changed, and the next reconcile adopts it.
#[test]
fn a_failure_after_a_parallel_restore_names_what_it_restored() {
    let db = items_db();
    let dir = project(&[
        ("viewkeeper.kdl", "lock-timeout \"300ms\"\n"),
        ("views/v.kdl", &declarations()),
    ]);
    reconcile(&db, dir.path());
    let (code, _, stderr) = run(&db, dir.path(), &["drop-managed"]);
    assert_eq!(code, 0, "{stderr}");

    // Reads of the log go on; the restore's record of its fills waits.
    let blocker = db.second_session();
    db.block_on(blocker.batch_execute("BEGIN; LOCK TABLE viewkeeper.refresh_log IN SHARE MODE"))
        .expect("lock the refresh log");
    let (code, stdout, stderr) = run(&db, dir.path(), &["reconcile", "--jobs", "2"]);
    assert_eq!(code, 1, "{stdout}{stderr}");
    assert!(!stderr.contains("nothing was changed"), "{stderr}");
    assert!(
        stderr.contains("but these were restored before it stopped")
            && stderr.contains("public.amounts"),
        "{stderr}"
    );
    // The wait that failed names who holds the log.
    assert!(
        stderr.contains("lock-timeout") && stderr.contains("ShareLock on viewkeeper.refresh_log"),
        "{stderr}"
    );
    assert!(exists(&db, "amounts") && exists(&db, "a_top_sum"));

    db.block_on(blocker.batch_execute("ROLLBACK"))
        .expect("unlock");
    reconcile(&db, dir.path());
    let (code, stdout, _) = run(&db, dir.path(), &["plan", "--detailed-exitcode"]);
    assert_eq!(code, 0, "in sync:\n{stdout}");
}
