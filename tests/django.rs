//! The Django app (`viewkeeper.django`), for real: a virtualenv with Django and psycopg from
//! PyPI and this package built by `pip install .` (dev profile), the runnable project in
//! examples/django, and the throwaway server. It fails, saying why, when PyPI is unreachable.

mod support;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use support::{TestDb, ensure_role, exists, oid, test_db};

/// Django and a PostgreSQL driver: the oldest supported LTS to the newest release.
const REQUIREMENTS: &[&str] = &["django>=4.2,<5.3", "psycopg[binary]>=3.1,<4"];

/// The declarations before 0002_remove_region: sales_summary reads the column it removes.
const BEFORE_REMOVE_REGION: &str = r#"
materialized-view "public.sales_summary" {
    depends-on "public.invoices_invoice"
    query """
        SELECT seller_no, invoice_date, sum(invoice_amt) AS sales_amt, count(DISTINCT region) AS regions
        FROM invoices_invoice
        GROUP BY seller_no, invoice_date
        """
    index "seller_no" "invoice_date" unique=#true
    grant "SELECT" to="reporting"
    refresh every="15m" concurrently=#true
}

view "public.sales_by_seller" {
    depends-on "public.sales_summary"
    query "SELECT seller_no, sum(sales_amt) AS total_sales FROM sales_summary GROUP BY seller_no"
}
"#;

fn run(command: &mut Command) -> (i32, String) {
    let shown = format!("{command:?}");
    let output = command
        .output()
        .unwrap_or_else(|err| panic!("could not run {shown}: {err}"));
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    (output.status.code().unwrap_or(-1), text)
}

/// A virtualenv with Django, psycopg and this package; panics when pip fails.
fn virtualenv(dir: &Path) -> PathBuf {
    let venv = dir.join("venv");
    let (code, out) = run(Command::new("python3").arg("-m").arg("venv").arg(&venv));
    assert_eq!(
        code, 0,
        "python3 -m venv failed (install python3-venv):\n{out}"
    );
    let pip = venv.join("bin/pip");
    let (code, out) = run(Command::new(&pip)
        .args(["install", "--quiet", "--disable-pip-version-check"])
        .args(REQUIREMENTS));
    assert_eq!(
        code, 0,
        "pip could not install {REQUIREMENTS:?} from PyPI (is the network up, or PIP_INDEX_URL \
         set to a reachable index?):\n{out}"
    );
    let started = Instant::now();
    let (code, out) = run(Command::new(&pip)
        .args(["install", "--quiet", "--disable-pip-version-check"])
        .arg(env!("CARGO_MANIFEST_DIR"))
        .env("MATURIN_PEP517_ARGS", "--profile dev"));
    assert_eq!(code, 0, "pip install . failed:\n{out}");
    eprintln!("pip install . took {:.1?}", started.elapsed());
    venv
}

/// Copies the example project, as it was before 0002_remove_region.
fn example_project(dir: &Path) -> PathBuf {
    let project = dir.join("project");
    let example = Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/django");
    let (code, out) = run(Command::new("cp").arg("-R").arg(&example).arg(&project));
    assert_eq!(code, 0, "{out}");
    for later in ["0002_remove_region.py", "0003_widen_amount.py"] {
        std::fs::remove_file(project.join("invoices/migrations").join(later)).expect("remove");
    }
    std::fs::write(project.join("views/reports.kdl"), BEFORE_REMOVE_REGION).expect("write");
    project
}

fn restore_from_example(project: &Path, file: &str) {
    let example = Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/django");
    std::fs::copy(example.join(file), project.join(file))
        .unwrap_or_else(|err| panic!("copy {file}: {err}"));
}

/// `python manage.py ARGS` with the database given only by settings.py's SHOP_DB_* (no
/// DATABASE_URL, no PG*), and the virtualenv not on PATH: the app must find its own binary.
fn manage(
    venv: &Path,
    project: &Path,
    db: &TestDb,
    drop_first: bool,
    args: &[&str],
) -> (i32, String) {
    let rest = db
        .url
        .strip_prefix("postgresql://")
        .expect("a postgresql:// URL");
    let (credentials, address) = rest.split_once('@').expect("user@host");
    let (user, password) = credentials.split_once(':').unwrap_or((credentials, ""));
    let (host_port, _) = address.split_once('/').expect("host/db");
    let (host, port) = host_port.rsplit_once(':').expect("host:port");
    let mut command = Command::new(venv.join("bin/python"));
    command
        .arg("manage.py")
        .args(args)
        .current_dir(project)
        .env("SHOP_DB_NAME", &db.name)
        .env("SHOP_DB_HOST", host)
        .env("SHOP_DB_PORT", port)
        .env("SHOP_DB_USER", user)
        .env("SHOP_DB_PASSWORD", password)
        .env("SHOP_DROP_FIRST", if drop_first { "1" } else { "0" })
        .env("PATH", "/usr/bin:/bin")
        .env_remove("DATABASE_URL");
    for (var, _) in std::env::vars() {
        if var.starts_with("PG") {
            command.env_remove(var);
        }
    }
    run(&mut command)
}

fn assert_views_back(db: &TestDb, rows: i64) {
    assert!(exists(db, "sales_summary") && exists(db, "sales_by_seller"));
    assert_eq!(db.scalar_i64("SELECT count(*) FROM sales_summary"), rows);
    assert_eq!(
        db.scalar_i64(
            "SELECT count(*) FROM pg_indexes WHERE tablename = 'sales_summary' \
             AND indexdef LIKE 'CREATE UNIQUE INDEX%(seller_no, invoice_date)'"
        ),
        1,
        "the unique index is missing"
    );
    assert_eq!(
        db.scalar_string(
            "SELECT has_table_privilege('reporting', 'sales_summary', 'SELECT')::text"
        )
        .as_deref(),
        Some("true"),
        "the grant is missing"
    );
}

#[test]
fn migrate_keeps_the_views_of_a_django_project() {
    let started = Instant::now();
    let dir = tempfile::tempdir().expect("temp dir");
    let venv = virtualenv(dir.path());
    let project = example_project(dir.path());
    let db = test_db();
    ensure_role(&db, "reporting");

    // migrate creates the table, then the views.
    let (code, out) = manage(&venv, &project, &db, false, &["migrate"]);
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("viewkeeper reconcile"), "{out}");
    assert_views_back(&db, 0);
    db.batch(
        "INSERT INTO invoices_invoice (seller_no, invoice_date, invoice_amt, region)
         SELECT i % 4, date '2026-01-01' + i % 3, i, 'north' FROM generate_series(1, 60) i",
    );
    // manage.py viewkeeper: the binary with Django's connection, its exit status passed back.
    let (code, out) = manage(&venv, &project, &db, false, &["viewkeeper", "refresh"]);
    assert_eq!(code, 0, "{out}");
    assert_eq!(db.scalar_i64("SELECT count(*) FROM sales_summary"), 12);
    let (code, out) = manage(
        &venv,
        &project,
        &db,
        false,
        &["viewkeeper", "plan", "--detailed-exitcode"],
    );
    assert_eq!(code, 0, "in sync:\n{out}");
    db.batch("DROP VIEW sales_by_seller");
    let (code, out) = manage(
        &venv,
        &project,
        &db,
        false,
        &["viewkeeper", "plan", "--detailed-exitcode"],
    );
    assert_eq!(code, 2, "a change pending:\n{out}");
    // Django's own --settings is applied, not passed on.
    let (code, out) = manage(
        &venv,
        &project,
        &db,
        false,
        &["viewkeeper", "reconcile", "--settings", "shop.settings"],
    );
    assert_eq!(code, 0, "{out}");
    assert!(exists(&db, "sales_by_seller"));

    // 0002 removes the column with CASCADE: PostgreSQL drops both views; migrate brings them back.
    let before = oid(&db, "sales_summary");
    restore_from_example(&project, "invoices/migrations/0002_remove_region.py");
    restore_from_example(&project, "views/reports.kdl");
    let (code, out) = manage(&venv, &project, &db, false, &["migrate"]);
    assert_eq!(code, 0, "{out}");
    assert_ne!(
        oid(&db, "sales_summary"),
        before,
        "the CASCADE did not drop the view"
    );
    assert_views_back(&db, 12);

    // 0003 changes the type of a column under the view: refused without DROP_FIRST…
    restore_from_example(&project, "invoices/migrations/0003_widen_amount.py");
    let (code, out) = manage(&venv, &project, &db, false, &["migrate"]);
    assert_ne!(code, 0, "the AlterField should fail under a view:\n{out}");
    assert!(out.contains("sales_summary"), "{out}");
    assert_views_back(&db, 12);
    // …and goes through with it: dropped before, restored after, nothing owed.
    let (code, out) = manage(&venv, &project, &db, true, &["migrate"]);
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("viewkeeper drop-managed"), "{out}");
    assert_eq!(
        db.scalar_string(
            "SELECT format_type(atttypid, atttypmod) FROM pg_attribute \
             WHERE attrelid = 'invoices_invoice'::regclass AND attname = 'invoice_amt'"
        )
        .as_deref(),
        Some("numeric(15,2)")
    );
    assert_views_back(&db, 12);
    assert_eq!(
        db.scalar_i64("SELECT count(*) FROM viewkeeper.restore_owed"),
        0
    );

    // A view that cannot be created makes migrate fail, with viewkeeper's words.
    let broken = project.join("views/broken.kdl");
    std::fs::write(
        &broken,
        "view \"public.broken\" {\n    query \"SELECT no_such_column FROM invoices_invoice\"\n}\n",
    )
    .expect("write");
    let (code, out) = manage(&venv, &project, &db, false, &["migrate"]);
    assert_ne!(code, 0, "migrate should fail when reconcile does:\n{out}");
    assert!(
        out.contains("viewkeeper reconcile failed") && out.contains("no_such_column"),
        "{out}"
    );
    // Invalid declarations are system-check errors.
    std::fs::write(
        &broken,
        "view \"public.broken\" {\n    query \"SELECT 1\"\n    no-such-key 1\n}\n",
    )
    .expect("write");
    let (code, out) = manage(&venv, &project, &db, false, &["check"]);
    assert_ne!(code, 0, "{out}");
    assert!(
        out.contains("viewkeeper.E003") && out.contains("broken.kdl"),
        "{out}"
    );
    std::fs::remove_file(&broken).expect("remove");
    let (code, out) = manage(&venv, &project, &db, false, &["check"]);
    assert_eq!(code, 0, "{out}");

    // The test runner migrates its own database, and the views are there.
    let (code, out) = manage(
        &venv,
        &project,
        &db,
        true,
        &["test", "invoices", "--noinput"],
    );
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("Ran 1 test"), "{out}");
    eprintln!("the Django test took {:.1?}", started.elapsed());
}
