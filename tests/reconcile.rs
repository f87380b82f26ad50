//! End-to-end scenarios of the invoices example against a real PostgreSQL: the acceptance
//! points of the core issue (create, restore after CASCADE, edits, drops, blockers, SQL
//! errors, concurrency, constant catalog queries).

mod support;

use support::{TestDb, ensure_role, exists, oid, project, reconcile, run, test_db};

const SUMMARY: &str = r#"
materialized-view "public.sales_summary" {
    depends-on "public.invoices_invoice"
    query """
        SELECT seller_no, invoice_date, sum(invoice_amt)::numeric(13,2) AS sales_amt
        FROM invoices_invoice
        GROUP BY seller_no, invoice_date
        """
    index "seller_no" "invoice_date" unique=#true name="sales_summary_key"
    grant "SELECT" to="reporting"
    comment "Sales per seller and day"
    refresh every="15m" concurrently=#true
}
"#;

const BY_SELLER: &str = r#"
view "public.sales_by_seller" {
    depends-on "public.sales_summary"
    query-file "sales_by_seller.sql"
}
"#;

const BY_SELLER_SQL: &str = "SELECT seller_no, sum(sales_amt) AS total_sales
FROM sales_summary
GROUP BY seller_no
";

const TOP_SELLERS: &str = r#"
view "public.top_sellers" {
    depends-on "public.sales_by_seller"
    query """
        SELECT seller_no, total_sales
        FROM sales_by_seller
        ORDER BY total_sales DESC
        LIMIT 10
        """
}
"#;

/// The summary with a real change to its query (only positive amounts).
fn edit_summary() -> String {
    SUMMARY.replace(
        "        GROUP BY seller_no, invoice_date",
        "        WHERE invoice_amt > 0\n        GROUP BY seller_no, invoice_date",
    )
}

/// A database with the invoices table, some rows and the `reporting` role.
fn invoices_db() -> TestDb {
    let db = test_db();
    ensure_role(&db, "reporting");
    db.batch(
        "CREATE TABLE invoices_invoice (
             id serial PRIMARY KEY,
             seller_no integer NOT NULL,
             invoice_date date NOT NULL,
             invoice_amt numeric(13,2) NOT NULL);
         INSERT INTO invoices_invoice (seller_no, invoice_date, invoice_amt)
         SELECT 1 + i % 7, DATE '2026-01-01' + (i % 30), (i % 100) + 0.5
         FROM generate_series(1, 1000) AS i;",
    );
    db
}

fn invoices_project(top_sellers: &str, summary: &str) -> tempfile::TempDir {
    project(&[
        ("views/sales.kdl", &format!("{summary}{BY_SELLER}")),
        ("views/sales_by_seller.sql", BY_SELLER_SQL),
        ("views/reports.kdl", top_sellers),
    ])
}

fn assert_everything_in_place(db: &TestDb) {
    for relation in ["sales_summary", "sales_by_seller", "top_sellers"] {
        assert!(exists(db, relation), "{relation} is missing");
    }
    assert!(
        db.scalar_i64("SELECT count(*) FROM sales_summary") > 0,
        "sales_summary has no rows"
    );
    assert_eq!(
        db.scalar_string(
            "SELECT pg_get_indexdef(indexrelid) FROM pg_index WHERE indrelid = 'sales_summary'::regclass"
        )
        .as_deref(),
        Some("CREATE UNIQUE INDEX sales_summary_key ON public.sales_summary USING btree (seller_no, invoice_date)")
    );
    assert_eq!(
        db.scalar_string(
            "SELECT has_table_privilege('reporting', 'sales_summary', 'SELECT')::text"
        )
        .as_deref(),
        Some("true")
    );
    assert_eq!(
        db.scalar_string("SELECT obj_description('sales_summary'::regclass, 'pg_class')")
            .as_deref(),
        Some("Sales per seller and day")
    );
    assert_eq!(
        db.scalar_i64("SELECT count(*) FROM top_sellers"),
        7,
        "top_sellers reads through sales_by_seller"
    );
}

#[test]
fn a_first_reconcile_creates_everything_then_plan_is_in_sync() {
    let db = invoices_db();
    let dir = invoices_project(TOP_SELLERS, SUMMARY);
    let (code, stdout, _) = run(&db, dir.path(), &["plan", "--detailed-exitcode"]);
    assert_eq!(code, 2, "{stdout}");
    assert_eq!(stdout.matches("create   ").count(), 3, "{stdout}");
    insta::assert_snapshot!("first_plan", stdout);

    reconcile(&db, dir.path());
    let (code, stdout, _) = run(&db, dir.path(), &["plan", "--detailed-exitcode"]);
    assert_eq!(code, 0, "{stdout}");
    assert!(stdout.contains("In sync: 3 declared objects"), "{stdout}");
    assert_everything_in_place(&db);
}

#[test]
fn b_restores_everything_dropped_by_cascade_and_a_type_change() {
    let db = invoices_db();
    let dir = invoices_project(TOP_SELLERS, SUMMARY);
    reconcile(&db, dir.path());
    db.batch(
        "DROP MATERIALIZED VIEW sales_summary CASCADE;
         ALTER TABLE invoices_invoice ALTER COLUMN invoice_amt TYPE numeric(15,2);",
    );
    let (code, stdout, _) = run(&db, dir.path(), &["plan", "--detailed-exitcode"]);
    assert_eq!(code, 2);
    assert_eq!(
        stdout
            .matches("not in the database: dropped outside viewkeeper")
            .count(),
        3,
        "{stdout}"
    );
    reconcile(&db, dir.path());
    assert_everything_in_place(&db);
    let (code, _, _) = run(&db, dir.path(), &["plan", "--detailed-exitcode"]);
    assert_eq!(code, 0);
}

#[test]
fn c_editing_a_leaf_replaces_only_the_leaf() {
    let db = invoices_db();
    let dir = invoices_project(TOP_SELLERS, SUMMARY);
    reconcile(&db, dir.path());
    let (summary, by_seller, top) = (
        oid(&db, "sales_summary"),
        oid(&db, "sales_by_seller"),
        oid(&db, "top_sellers"),
    );

    std::fs::write(
        dir.path().join("views/reports.kdl"),
        TOP_SELLERS.replace("LIMIT 10", "LIMIT 3"),
    )
    .expect("edit");
    let (code, stdout, _) = run(&db, dir.path(), &["plan", "--detailed-exitcode"]);
    assert_eq!(code, 2);
    insta::assert_snapshot!("leaf_edit_plan", stdout);

    reconcile(&db, dir.path());
    assert_eq!(oid(&db, "sales_summary"), summary);
    assert_eq!(oid(&db, "sales_by_seller"), by_seller);
    // Same columns: replaced in place.
    assert_eq!(oid(&db, "top_sellers"), top);
    assert_eq!(db.scalar_i64("SELECT count(*) FROM top_sellers"), 3);
}

#[test]
fn d_editing_the_root_rebuilds_its_dependents_in_order() {
    let db = invoices_db();
    let dir = invoices_project(TOP_SELLERS, SUMMARY);
    reconcile(&db, dir.path());
    let edited = edit_summary();
    std::fs::write(
        dir.path().join("views/sales.kdl"),
        format!("{edited}{BY_SELLER}"),
    )
    .expect("edit");

    let (code, stdout, _) = run(
        &db,
        dir.path(),
        &["plan", "--format", "json", "--detailed-exitcode"],
    );
    assert_eq!(code, 2);
    let plan: serde_json::Value = serde_json::from_str(&stdout).expect("json plan");
    let actions: Vec<(String, String)> = plan["actions"]
        .as_array()
        .expect("actions")
        .iter()
        .map(|a| {
            (
                a["change"].as_str().unwrap_or("").to_owned(),
                a["object"].as_str().unwrap_or("").to_owned(),
            )
        })
        .collect();
    let expected = [
        ("replace", "public.sales_summary"),
        ("rebuild", "public.sales_by_seller"),
        ("rebuild", "public.top_sellers"),
    ];
    assert_eq!(
        actions,
        expected.map(|(c, o)| (c.to_owned(), o.to_owned())).to_vec()
    );
    let statements: Vec<String> = plan["statements"]
        .as_array()
        .expect("statements")
        .iter()
        .filter(|s| matches!(s["phase"].as_str(), Some("drop" | "create")))
        .map(|s| {
            format!(
                "{} {}",
                s["phase"].as_str().unwrap_or(""),
                s["object"].as_str().unwrap_or("")
            )
        })
        .collect();
    assert_eq!(
        statements,
        [
            "drop public.top_sellers",
            "drop public.sales_by_seller",
            "drop public.sales_summary",
            "create public.sales_summary",
            "create public.sales_by_seller",
            "create public.top_sellers",
        ]
    );
    reconcile(&db, dir.path());
    assert_everything_in_place(&db);
}

#[test]
fn e_a_removed_declaration_is_dropped_and_nothing_else_is_touched() {
    let db = invoices_db();
    db.batch("CREATE VIEW hand_made AS SELECT seller_no FROM invoices_invoice");
    let dir = invoices_project(TOP_SELLERS, SUMMARY);
    reconcile(&db, dir.path());
    let (table, hand_made) = (oid(&db, "invoices_invoice"), oid(&db, "hand_made"));

    std::fs::remove_file(dir.path().join("views/reports.kdl")).expect("remove");
    let (code, stdout, _) = run(&db, dir.path(), &["plan", "--detailed-exitcode"]);
    assert_eq!(code, 2);
    assert!(stdout.contains("drop     public.top_sellers"), "{stdout}");
    assert_eq!(
        stdout.matches("\ndrop").count() + usize::from(stdout.starts_with("drop")),
        1,
        "{stdout}"
    );
    reconcile(&db, dir.path());
    assert!(!exists(&db, "top_sellers"));
    assert!(exists(&db, "sales_by_seller"));
    assert_eq!(oid(&db, "invoices_invoice"), table);
    assert_eq!(oid(&db, "hand_made"), hand_made);
    assert_eq!(db.scalar_i64("SELECT count(*) FROM invoices_invoice"), 1000);
    let (code, _, _) = run(&db, dir.path(), &["plan", "--detailed-exitcode"]);
    assert_eq!(code, 0);
}

#[test]
fn f_an_unmanaged_dependent_blocks_a_rebuild() {
    let db = invoices_db();
    let dir = invoices_project(TOP_SELLERS, SUMMARY);
    reconcile(&db, dir.path());
    db.batch("CREATE VIEW hand_report AS SELECT * FROM sales_summary");
    let summary = oid(&db, "sales_summary");
    let edited = edit_summary();
    std::fs::write(
        dir.path().join("views/sales.kdl"),
        format!("{edited}{BY_SELLER}"),
    )
    .expect("edit");

    for command in [&["plan", "--detailed-exitcode"][..], &["reconcile"][..]] {
        let (code, stdout, stderr) = run(&db, dir.path(), command);
        assert_eq!(code, 1, "{command:?}: {stdout}{stderr}");
        assert!(
            stderr.contains("public.sales_summary") && stderr.contains("public.hand_report"),
            "{command:?} must name both objects: {stderr}"
        );
    }
    assert_eq!(oid(&db, "sales_summary"), summary);
    assert!(exists(&db, "hand_report"));
}

#[test]
fn g_an_sql_error_rolls_back_and_points_at_the_file_and_line() {
    let db = invoices_db();
    let dir = invoices_project(TOP_SELLERS, SUMMARY);
    reconcile(&db, dir.path());
    let before = snapshot(&db);

    // Line 6 of reports.kdl holds the bad column; the root is also edited so the failing
    // statement comes after several successful drops and creates.
    let broken = TOP_SELLERS.replace(
        "SELECT seller_no, total_sales",
        "SELECT seller_no, total_sale",
    );
    std::fs::write(dir.path().join("views/reports.kdl"), &broken).expect("edit");
    let edited = edit_summary();
    std::fs::write(
        dir.path().join("views/sales.kdl"),
        format!("{edited}{BY_SELLER}"),
    )
    .expect("edit");
    let line = broken
        .lines()
        .position(|l| l.contains("total_sale"))
        .expect("line")
        + 1;

    let (code, stdout, stderr) = run(&db, dir.path(), &["reconcile"]);
    assert_eq!(code, 1, "{stdout}{stderr}");
    assert!(
        stderr.contains(&format!("reports.kdl:{line}:")),
        "must point at reports.kdl:{line}: {stderr}"
    );
    assert!(stderr.contains("total_sale"), "{stderr}");
    assert_eq!(
        snapshot(&db),
        before,
        "the database must be exactly as before"
    );
}

/// OIDs of every view and the state rows, to prove a failed reconcile changed nothing.
fn snapshot(db: &TestDb) -> Vec<Vec<Option<String>>> {
    let mut rows = db.strings(
        "SELECT relname::text, oid::text FROM pg_class WHERE relnamespace = 'public'::regnamespace AND relkind IN ('v', 'm', 'i') ORDER BY 1",
    );
    rows.extend(db.strings(
        "SELECT object_name, query_sha256 || applied_definition || applied_at::text FROM viewkeeper.managed_object ORDER BY 1",
    ));
    rows
}

#[test]
fn i_concurrent_reconciles_both_succeed() {
    let db = invoices_db();
    let dir = invoices_project(TOP_SELLERS, SUMMARY);
    let spawn = || {
        let mut command = std::process::Command::new(assert_cmd::cargo::cargo_bin("viewkeeper"));
        command
            .arg("--project")
            .arg(dir.path())
            .arg("reconcile")
            .env("DATABASE_URL", &db.url)
            .env("NO_COLOR", "1")
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped());
        command.spawn().expect("spawn")
    };
    let (first, second) = (spawn(), spawn());
    for child in [first, second] {
        let output = child.wait_with_output().expect("wait");
        assert!(
            output.status.success(),
            "{}{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
    }
    assert_everything_in_place(&db);
    let (code, _, _) = run(&db, dir.path(), &["plan", "--detailed-exitcode"]);
    assert_eq!(code, 0);
}

#[test]
fn j_a_no_op_reconcile_issues_no_ddl() {
    let db = invoices_db();
    let dir = invoices_project(TOP_SELLERS, SUMMARY);
    std::fs::write(
        dir.path().join("viewkeeper.kdl"),
        "lock-timeout \"300ms\"\n",
    )
    .expect("config");
    reconcile(&db, dir.path());
    // Another session holds EXCLUSIVE locks on every managed view (LOCK TABLE refuses
    // materialized views; an open concurrent REFRESH holds the same lock on those). They
    // let readers through, as reading the catalog is, but any DDL, grant, comment or
    // refresh would wait and then fail on lock_timeout.
    db.batch(
        "BEGIN;
         LOCK TABLE sales_by_seller, top_sellers IN EXCLUSIVE MODE;
         REFRESH MATERIALIZED VIEW CONCURRENTLY sales_summary;",
    );
    let stdout = reconcile(&db, dir.path());
    assert!(stdout.contains("In sync"), "{stdout}");
    db.batch("ROLLBACK");
}

#[test]
fn j_catalog_queries_do_not_grow_with_the_number_of_views() {
    let (small, _) = catalog_queries_for(10);
    let (large, _) = catalog_queries_for(1000);
    eprintln!("catalog statements: {small} for 10 views, {large} for 1,000");
    assert!(small > 0, "the server counted no catalog queries");
    assert_eq!(small, large, "catalog queries for 10 views vs 1,000");
}

/// Declares `count` views in a tree, reconciles, and returns how many statements the server
/// ran for the catalog reading of a no-op plan (counted by `pg_stat_statements`, which the
/// test sandbox preloads), and how many of them printed view definitions.
fn catalog_queries_for(count: usize) -> (usize, usize) {
    let db = invoices_db();
    let mut declarations = String::new();
    for i in 0..count {
        let (source, depends) = if i == 0 {
            (
                "invoices_invoice".to_owned(),
                "public.invoices_invoice".to_owned(),
            )
        } else {
            (
                format!("v{}", (i - 1) / 2),
                format!("public.v{}", (i - 1) / 2),
            )
        };
        declarations.push_str(&format!(
            "view \"public.v{i}\" {{\n    depends-on \"{depends}\"\n    query \"SELECT seller_no, invoice_date FROM {source}\"\n}}\n"
        ));
    }
    let dir = project(&[("views/tree.kdl", &declarations)]);
    reconcile(&db, dir.path());
    // In a schema of its own, so its views stay out of the way of the catalog reading.
    db.try_batch("CREATE SCHEMA stats; CREATE EXTENSION pg_stat_statements SCHEMA stats")
        .unwrap_or_else(|err| {
            panic!("this test counts statements with pg_stat_statements, which must be in shared_preload_libraries: {err}")
        });
    db.batch("SELECT stats.pg_stat_statements_reset()");
    let project = viewkeeper::project::Project::load(dir.path()).expect("project");
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    runtime.block_on(async {
        let client = viewkeeper::db::connect(&db.url, &project.config.search_path)
            .await
            .expect("connect");
        let catalog = viewkeeper::catalog::introspect(
            &client,
            &viewkeeper::catalog::read::dependency_names(&project),
            &project.config.state_schema,
        )
        .await
        .expect("introspect");
        let plan = viewkeeper::plan::plan(&project, &catalog).expect("plan");
        assert!(
            plan.is_empty(),
            "{count} views should be in sync: {:?}",
            plan.actions().first()
        );
        let views = catalog
            .relations
            .keys()
            .filter(|name| name.schema == "public");
        assert_eq!(views.count(), count);
    });
    // Every statement run in this database since the reset, except the reset and this count.
    let count = |filter: &str| {
        db.scalar_i64(&format!(
            "SELECT coalesce(sum(calls), 0)::bigint FROM stats.pg_stat_statements
             WHERE dbid = (SELECT oid FROM pg_database WHERE datname = current_database())
               AND query NOT LIKE '%pg_stat_statements%' {filter}"
        )) as usize
    };
    (count(""), count("AND query LIKE '%pg_get_viewdef%'"))
}

#[test]
fn k_a_rewritten_but_equivalent_query_is_recorded_without_a_rebuild() {
    let db = invoices_db();
    let dir = invoices_project(TOP_SELLERS, SUMMARY);
    reconcile(&db, dir.path());
    let summary = oid(&db, "sales_summary");
    // Same query for PostgreSQL: positional GROUP BY and different layout.
    let rewritten = SUMMARY.replace(
        "GROUP BY seller_no, invoice_date",
        "GROUP BY 1,\n                 2",
    );
    std::fs::write(
        dir.path().join("views/sales.kdl"),
        format!("{rewritten}{BY_SELLER}"),
    )
    .expect("edit");
    let (code, stdout, stderr) = run(&db, dir.path(), &["plan", "--detailed-exitcode"]);
    assert_eq!(code, 0, "{stdout}{stderr}");
    assert!(
        stdout.contains("already matches the declarations (public.sales_summary)"),
        "{stdout}"
    );
    reconcile(&db, dir.path());
    assert_eq!(oid(&db, "sales_summary"), summary);
    let (code, stdout, _) = run(&db, dir.path(), &["plan", "--detailed-exitcode"]);
    assert_eq!(code, 0);
    assert!(
        !stdout.contains("already match"),
        "recorded, so nothing left to adopt: {stdout}"
    );
}

#[test]
fn l_plan_as_markdown_for_a_pull_request_comment() {
    let db = invoices_db();
    let dir = invoices_project(TOP_SELLERS, SUMMARY);
    reconcile(&db, dir.path());
    let (code, stdout, stderr) = run(&db, dir.path(), &["plan", "--format", "markdown"]);
    assert_eq!(code, 0, "{stderr}");
    assert_eq!(stdout, "**In sync:** 3 declared objects, nothing to do.\n");

    // A query edit (a diff) and an attribute edit (an alteration with a lock).
    std::fs::write(
        dir.path().join("views/reports.kdl"),
        TOP_SELLERS.replace("LIMIT 10", "LIMIT 3"),
    )
    .expect("edit");
    std::fs::write(
        dir.path().join("views/sales.kdl"),
        format!(
            "{}{BY_SELLER}",
            SUMMARY.replace("Sales per seller and day", "Sales | per seller")
        ),
    )
    .expect("edit");
    let (code, markdown, stderr) = run(&db, dir.path(), &["plan", "--format", "markdown"]);
    assert_eq!(code, 0, "{stderr}");
    insta::assert_snapshot!("markdown_plan", markdown);

    // Every statement the JSON plan lists is in the comment, in the same order.
    let (_, json, _) = run(&db, dir.path(), &["plan", "--format", "json"]);
    let json: serde_json::Value = serde_json::from_str(&json).expect("JSON plan");
    let statements = json["statements"].as_array().expect("statements");
    assert!(!statements.is_empty());
    let mut from = 0;
    for statement in statements {
        let sql = statement["sql"].as_str().expect("sql");
        let at = markdown[from..]
            .find(sql)
            .unwrap_or_else(|| panic!("{sql} missing or out of order in:\n{markdown}"));
        from += at + sql.len();
    }
}
