//! Reconcile on Pagila, a real-world schema nobody here wrote (`tests/fixtures/pagila`, a copy of the shared fixture):
//! taking over one of its materialized views, adding views of our own beside its seven
//! unmanaged ones, and restoring after a CASCADE, without touching anything undeclared.

mod support;

use std::path::{Path, PathBuf};
use std::process::Command;

use support::{TestDb, project, test_db};

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/pagila")
        .join(name)
}

fn psql(db: &TestDb, file: &Path) {
    let bindir = viewkeeper::sandbox::find_bindir().expect("PostgreSQL binaries");
    // The npm server builds (VIEWKEEPER_PG_BINDIR) ship no psql: take the one on PATH.
    let psql = Some(bindir.join("psql"))
        .filter(|path| path.is_file())
        .unwrap_or_else(|| "psql".into());
    let output = Command::new(psql)
        .args(["-X", "-q", "-v", "ON_ERROR_STOP=1", "-d", &db.url, "-f"])
        .arg(file)
        .output()
        .expect("run psql");
    assert!(
        output.status.success(),
        "psql -f {} failed: {}",
        file.display(),
        String::from_utf8_lossy(&output.stderr)
    );
}

fn pagila_db() -> TestDb {
    let db = test_db();
    psql(&db, &fixture("pagila-schema.sql"));
    psql(&db, &fixture("pagila-data.sql"));
    db.batch("REFRESH MATERIALIZED VIEW rental_by_category");
    db
}

const DECLARATIONS: &str = r#"
// Pagila's own materialized view, now declared.
materialized-view "public.rental_by_category" {
    depends-on "public.payment" "public.rental" "public.inventory" "public.film" "public.film_category" "public.category"
    query """
        SELECT c.name AS category, sum(p.amount) AS total_sales
        FROM payment p
        JOIN rental r ON p.rental_id = r.rental_id
        JOIN inventory i ON r.inventory_id = i.inventory_id
        JOIN film f ON i.film_id = f.film_id
        JOIN film_category fc ON f.film_id = fc.film_id
        JOIN category c ON fc.category_id = c.category_id
        GROUP BY c.name
        ORDER BY sum(p.amount) DESC
        """
    index "category" unique=#true name="rental_category"
    refresh every="1h" concurrently=#true
}

view "public.category_sales_rank" {
    depends-on "public.rental_by_category"
    query "SELECT category, total_sales, rank() OVER (ORDER BY total_sales DESC) AS position FROM rental_by_category"
    comment "Categories by sales"
}

materialized-view "public.film_rentals" {
    depends-on "public.rental" "public.inventory" "public.film"
    query """
        SELECT f.film_id, f.title, count(*) AS rentals
        FROM rental r
        JOIN inventory i ON r.inventory_id = i.inventory_id
        JOIN film f ON i.film_id = f.film_id
        GROUP BY f.film_id, f.title
        """
    index "film_id" unique=#true
    grant "SELECT" to="PUBLIC"
}
"#;

const UNMANAGED: [&str; 7] = [
    "actor_info",
    "customer_list",
    "film_list",
    "nicer_but_slower_film_list",
    "sales_by_film_category",
    "sales_by_store",
    "staff_list",
];

fn unmanaged_oids(db: &TestDb) -> Vec<i64> {
    UNMANAGED
        .iter()
        .map(|view| db.scalar_i64(&format!("SELECT '{view}'::regclass::oid::int8")))
        .collect()
}

/// Exit code and everything printed.
fn run(db: &TestDb, dir: &Path, args: &[&str]) -> (i32, String) {
    let (code, stdout, stderr) = support::run(db, dir, args);
    (code, format!("{stdout}{stderr}"))
}

fn assert_restored(db: &TestDb) {
    assert_eq!(db.scalar_i64("SELECT count(*) FROM rental_by_category"), 16);
    assert_eq!(
        db.scalar_string("SELECT sum(total_sales)::text FROM rental_by_category"),
        db.scalar_string("SELECT sum(total_sales)::text FROM sales_by_film_category"),
    );
    assert_eq!(
        db.scalar_i64("SELECT count(*) FROM category_sales_rank"),
        16
    );
    assert_eq!(
        db.scalar_i64("SELECT count(*) FROM film_rentals"),
        db.scalar_i64(
            "SELECT count(DISTINCT i.film_id) FROM rental r JOIN inventory i USING (inventory_id)"
        )
    );
    assert_eq!(
        db.scalar_string("SELECT pg_get_indexdef('rental_category'::regclass)")
            .as_deref(),
        Some(
            "CREATE UNIQUE INDEX rental_category ON public.rental_by_category USING btree (category)"
        )
    );
    assert_eq!(
        db.scalar_string("SELECT has_table_privilege('public', 'film_rentals', 'SELECT')::text")
            .as_deref(),
        Some("true")
    );
}

#[test]
fn takes_over_and_restores_views_on_pagila_without_touching_the_rest() {
    let db = pagila_db();
    let before = unmanaged_oids(&db);
    let tables = db.scalar_i64("SELECT sum(oid::int8) FROM pg_class WHERE relkind IN ('r', 'p') AND relnamespace = 'public'::regnamespace");
    let dir = project(&[("views/pagila.kdl", DECLARATIONS)]);

    let (code, plan) = run(&db, dir.path(), &["plan", "--detailed-exitcode"]);
    assert_eq!(code, 2, "{plan}");
    // Pagila's materialized view reads exactly as declared: adopted, not rebuilt.
    assert!(
        plan.contains(
            "1 existing object already matches the declarations (public.rental_by_category)"
        ),
        "{plan}"
    );
    assert!(
        !plan.contains("public.rental_by_category (materialized view)"),
        "{plan}"
    );
    assert!(plan.contains("create   public.film_rentals"), "{plan}");
    let adopted = db.scalar_i64("SELECT 'rental_by_category'::regclass::oid::int8");

    let (code, output) = run(&db, dir.path(), &["reconcile"]);
    assert_eq!(code, 0, "{output}");
    assert_eq!(
        db.scalar_i64("SELECT 'rental_by_category'::regclass::oid::int8"),
        adopted,
        "adopting must not rebuild"
    );
    assert_restored(&db);
    let (code, plan) = run(&db, dir.path(), &["plan", "--detailed-exitcode"]);
    assert_eq!(code, 0, "{plan}");

    // A migration drops Pagila's materialized view and, with it, our view on top.
    db.batch("DROP MATERIALIZED VIEW rental_by_category CASCADE");
    let (code, plan) = run(&db, dir.path(), &["plan", "--detailed-exitcode"]);
    assert_eq!(code, 2);
    assert_eq!(
        plan.matches("dropped outside viewkeeper").count(),
        2,
        "{plan}"
    );
    let (code, output) = run(&db, dir.path(), &["reconcile"]);
    assert_eq!(code, 0, "{output}");
    assert_restored(&db);

    assert_eq!(
        unmanaged_oids(&db),
        before,
        "Pagila's own views must keep their OIDs"
    );
    assert_eq!(
        db.scalar_i64("SELECT sum(oid::int8) FROM pg_class WHERE relkind IN ('r', 'p') AND relnamespace = 'public'::regnamespace"),
        tables
    );
}

/// Every view's definition, indexes, grants, comment and owner, to compare before and after.
fn view_catalog(db: &TestDb) -> Vec<Vec<Option<String>>> {
    db.strings(
        "SELECT c.relname::text, c.relkind::text, pg_get_viewdef(c.oid),
                (SELECT string_agg(pg_get_indexdef(i.indexrelid), '; ' ORDER BY 1)
                 FROM pg_index i WHERE i.indrelid = c.oid),
                c.relacl::text, obj_description(c.oid, 'pg_class'),
                pg_get_userbyid(c.relowner)::text, c.relispopulated::text
         FROM pg_class c
         WHERE c.relnamespace = 'public'::regnamespace AND c.relkind IN ('v', 'm')
         ORDER BY 1",
    )
}

#[test]
fn import_then_restore_every_pagila_view() {
    let db = pagila_db();
    db.batch(
        "DO $$ BEGIN CREATE ROLE pagila_reader NOLOGIN; EXCEPTION WHEN duplicate_object OR unique_violation THEN NULL; END $$;
         GRANT SELECT ON film_list, rental_by_category TO pagila_reader;
         COMMENT ON VIEW actor_info IS 'Actors with their films, by category';",
    );
    let before = view_catalog(&db);
    let dir = project(&[("viewkeeper.kdl", "")]);

    let (code, output) = run(&db, dir.path(), &["import"]);
    assert_eq!(code, 0, "{output}");
    assert!(output.contains("Imported 8 objects"), "{output}");
    let (code, plan) = run(&db, dir.path(), &["plan", "--detailed-exitcode"]);
    assert_eq!(code, 0, "right after an import, plan is in sync:\n{plan}");
    let (code, output) = run(&db, dir.path(), &["reconcile"]);
    assert_eq!(code, 0, "{output}");
    assert_eq!(
        view_catalog(&db),
        before,
        "adopting must not change anything"
    );

    // Everything dropped by hand, with CASCADE: reconcile brings every view back.
    db.batch(
        "DROP VIEW actor_info, customer_list, film_list, nicer_but_slower_film_list,
                   sales_by_film_category, sales_by_store, staff_list CASCADE;
         DROP MATERIALIZED VIEW rental_by_category CASCADE;",
    );
    let (code, plan) = run(&db, dir.path(), &["plan", "--detailed-exitcode"]);
    assert_eq!(code, 2);
    assert_eq!(
        plan.matches("dropped outside viewkeeper").count(),
        8,
        "{plan}"
    );
    let (code, output) = run(&db, dir.path(), &["reconcile"]);
    assert_eq!(code, 0, "{output}");
    assert_eq!(
        view_catalog(&db),
        before,
        "definitions, indexes, grants and comments restored"
    );
    let (code, plan) = run(&db, dir.path(), &["plan", "--detailed-exitcode"]);
    assert_eq!(code, 0, "{plan}");
}
