//! How viewkeeper scales with the number of declared objects.
//!
//! For each N (default 100, 1,000 and 5,000), on one throwaway cluster ([`Sandbox`]) with one database
//! per N holding a 10,000-row `invoices_invoice` table, this writes a project declaring N
//! objects in a binary dependency tree (node i > 0 reads node (i-1)/2, node 0 reads the
//! table; every 10th node is a materialized view with a unique index, the rest are views) and
//! measures, with wall time and catalog queries issued:
//!
//! - the first reconcile, which creates, indexes and fills everything;
//! - the floor for that: the very same DDL run by the server alone, `psql -X -q -1 -f`, into
//!   a fresh database with the same table, and the ratio between the two;
//! - a no-op plan (`catalog::introspect` + `plan::plan` on the in-sync database) and a no-op
//!   reconcile, median of several runs;
//! - a reconcile after the query of one leaf changes (median of a few, alternating two
//!   variants of that leaf's query);
//! - restoring everything after it was all dropped (as a CASCADE would), in one
//!   transaction and on several sessions at once (`reconcile --jobs`), against the floor;
//! - the process's peak RSS (`VmHWM`).
//!
//! Under the table, one line per N says where the first reconcile's time went (per statement
//! phase, and the rest), splits the no-op plan into introspection and planning, and times a
//! no-op plan on a new connection, as `viewkeeper plan` runs it (cold backend caches). When
//! the `viewkeeper` binary of the same build exists (`cargo build --release`), it also times
//! `viewkeeper plan` as a process, start to exit, with the declarations in one file and in
//! one file each: planned from the catalog, and answered by the in-sync record a reconcile
//! leaves.
//!
//! Last, it times `check`'s work (reading the project and ordering it) on 8,000 declarations
//! in one file and in 8,000 files: it should be linear in the size of a file.
//!
//! Run it with `cargo run --release --example scale` (N = 100, 1,000 and 5,000; a few
//! minutes on 2 cores), or choose the sizes: `cargo run --release --example scale -- 100 500`.
//! `--all-materialized` makes every node a materialized view with a unique index (the tree of
//! materialized views the README compares with `psql -1 -f`); `--no-check` skips the `check`
//! timing. PostgreSQL's server binaries must be installed (see [`Sandbox::start`]); `psql` is
//! taken from the same folder, or PATH.

use std::collections::BTreeMap;
use std::error::Error;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use tokio_postgres::Client;
use viewkeeper::apply;
use viewkeeper::catalog;
use viewkeeper::catalog::read::dependency_names;
use viewkeeper::plan::{self, Phase};
use viewkeeper::project::Project;
use viewkeeper::sandbox::Sandbox;

type BoxError = Box<dyn Error>;

/// Sizes measured when none are given on the command line.
const DEFAULT_SIZES: &[usize] = &[100, 1000, 5000];
/// Declarations `check` reads, in one file and in as many files.
const CHECK_SIZE: usize = 8000;
/// Runs of each no-op measurement; the median is reported.
const NOOP_RUNS: usize = 5;
/// Runs of the leaf-change measurement; the median is reported.
const LEAF_RUNS: usize = 3;
/// Rows in the base table.
const ROWS: u32 = 10_000;

// language=SQL
const SETUP: &str = "
CREATE TABLE invoices_invoice (
    id serial PRIMARY KEY,
    seller_no integer NOT NULL,
    invoice_date date NOT NULL,
    invoice_amt numeric(13,2) NOT NULL
);
INSERT INTO invoices_invoice (seller_no, invoice_date, invoice_amt)
SELECT 1 + i % 25, DATE '2024-01-01' - (i % 90), round((10 + (i * 7919) % 990)::numeric, 2)
FROM generate_series(1, $ROWS) AS i;
ANALYZE invoices_invoice;";

/// One row of the table.
struct Measurement {
    n: usize,
    materialized: usize,
    first: Duration,
    first_queries: usize,
    first_statements: usize,
    /// Time in each phase of the first reconcile's statements.
    first_phases: BTreeMap<Phase, Duration>,
    psql: Duration,
    noop_plan: Duration,
    /// The introspection part of the no-op plan (the rest is `plan::plan`).
    noop_introspect: Duration,
    noop_plan_queries: usize,
    /// A no-op plan on a new connection each time, as `viewkeeper plan` runs: reading the
    /// project, connecting and the new backend's cold catalog caches included.
    noop_plan_cold: Duration,
    /// `viewkeeper plan` as a process (start to exit) on the in-sync database, with the
    /// declarations in one file and in one file each; `None` without the binary.
    noop_plan_process: Option<ProcessTimes>,
    noop_reconcile: Duration,
    noop_reconcile_queries: usize,
    leaf: Duration,
    leaf_queries: usize,
    leaf_statements: usize,
    /// Everything dropped, then restored: in one transaction, and on several sessions.
    restore_serial: Duration,
    restore_parallel: Duration,
    peak_rss_kib: Option<u64>,
}

/// A no-op `viewkeeper plan` process in each layout of the declarations.
struct ProcessTimes {
    /// Answered by the in-sync record the last reconcile made: one file, one file each.
    recorded: (Duration, Duration),
    /// Planned from the catalog (no record): one file, one file each.
    planned: (Duration, Duration),
}

/// What the command line asks for.
struct Options {
    sizes: Vec<usize>,
    /// Every node a materialized view, not every 10th.
    all_materialized: bool,
    check: bool,
}

fn main() -> Result<(), BoxError> {
    let options = options()?;
    let sizes = &options.sizes;
    let all_materialized = options.all_materialized;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let sandbox = Sandbox::start()?;
    let psql = psql_path(&sandbox);
    let result = runtime.block_on(run(&sandbox, &psql, sizes, all_materialized));
    sandbox.stop();
    let (rows, server_version, psql_overhead) = result?;

    println!();
    println!(
        "| N | first reconcile (ms) | psql -1 -f (ms) | ratio | no-op plan (ms) | no-op reconcile (ms) | leaf change (ms) | catalog queries (first / no-op plan / no-op reconcile / leaf) | peak RSS (MiB) |"
    );
    println!("|---:|---:|---:|---:|---:|---:|---:|:---:|---:|");
    for m in &rows {
        println!(
            "| {} | {} | {} | {:.2}x | {} | {} | {} | {} / {} / {} / {} | {} |",
            m.n,
            ms(m.first),
            ms(m.psql),
            m.first.as_secs_f64() / m.psql.as_secs_f64(),
            ms(m.noop_plan),
            ms(m.noop_reconcile),
            ms(m.leaf),
            m.first_queries,
            m.noop_plan_queries,
            m.noop_reconcile_queries,
            m.leaf_queries,
            m.peak_rss_kib.map_or_else(
                || "?".to_owned(),
                |kib| format!("{:.1}", kib as f64 / 1024.0)
            ),
        );
    }
    println!();
    let cpus = std::thread::available_parallelism().map_or(0, std::num::NonZero::get);
    println!(
        "Machine: {cpus} CPUs (nproc); PostgreSQL {server_version} (sandbox, fsync=off); \
         {ROWS} base rows; no-op figures are medians of {NOOP_RUNS} runs, leaf change of {LEAF_RUNS}."
    );
    println!(
        "psql -1 -f includes starting psql and connecting: {} ms for an empty file.",
        ms(psql_overhead)
    );
    for m in &rows {
        let phases: Vec<String> = m
            .first_phases
            .iter()
            .map(|(phase, time)| format!("{phase:?} {} ms", ms(*time)))
            .collect();
        let in_statements: Duration = m.first_phases.values().sum();
        println!(
            "N={}: {} objects ({} materialized); first reconcile ran {} statements: {} \
             (sum {} ms), the rest (introspection, plan, state schema and records, commit) {} ms; \
             no-op plan = introspection {} ms + planning {} ms, or {} ms reading the project \
             and on a new connection (as `viewkeeper plan` runs); \
             the leaf change ran {} statements.",
            m.n,
            m.n,
            m.materialized,
            m.first_statements,
            phases.join(", "),
            ms(in_statements),
            ms(m.first.saturating_sub(in_statements)),
            ms(m.noop_introspect),
            ms(m.noop_plan.saturating_sub(m.noop_introspect)),
            ms(m.noop_plan_cold),
            m.leaf_statements,
        );
    }
    for m in &rows {
        match &m.noop_plan_process {
            Some(times) => println!(
                "N={}: no-op `viewkeeper plan` process, start to exit: answered by the in-sync \
                 record, {} ms with one file, {} ms with {} files; planned from the catalog \
                 (no record), {} ms and {} ms.",
                m.n,
                ms(times.recorded.0),
                ms(times.recorded.1),
                m.n,
                ms(times.planned.0),
                ms(times.planned.1),
            ),
            None => println!(
                "N={}: no-op `viewkeeper plan` process not timed: build the binary first \
                 (`cargo build --release`).",
                m.n
            ),
        }
    }
    for m in &rows {
        println!(
            "N={}: restoring everything after it was dropped: {} ms in one transaction \
             ({:.2}x the psql -1 -f floor), {} ms on {} sessions at once ({:.2}x).",
            m.n,
            ms(m.restore_serial),
            m.restore_serial.as_secs_f64() / m.psql.as_secs_f64(),
            ms(m.restore_parallel),
            restore_jobs(),
            m.restore_parallel.as_secs_f64() / m.psql.as_secs_f64(),
        );
    }
    if options.check {
        let (one_file, many_files) = time_check()?;
        println!(
            "check, {CHECK_SIZE} declarations: {} ms in one file, {} ms in {CHECK_SIZE} files \
             ({:.2}x).",
            ms(one_file),
            ms(many_files),
            one_file.as_secs_f64() / many_files.as_secs_f64()
        );
    }
    Ok(())
}

/// `check`'s work (read the project, order it) on [`CHECK_SIZE`] declarations in one file,
/// then in one file each; the median of three runs of each.
fn time_check() -> Result<(Duration, Duration), BoxError> {
    let one = tempfile::tempdir()?;
    std::fs::create_dir_all(one.path().join("views"))?;
    let text = declarations(CHECK_SIZE, 0, false);
    std::fs::write(one.path().join("views").join("tree.kdl"), &text)?;
    let many = tempfile::tempdir()?;
    split_into_files(&text, many.path())?;
    let time = |root: &Path| -> Result<Duration, BoxError> {
        let mut times = Vec::new();
        for _ in 0..3 {
            let started = Instant::now();
            let project = Project::load(root).map_err(report)?;
            project
                .graph()
                .topological_order()
                .map_err(|cycle| format!("{cycle:?}"))?;
            times.push(started.elapsed());
        }
        Ok(median(times))
    };
    Ok((time(one.path())?, time(many.path())?))
}

/// Writes each declaration of `text` into a file of its own under `root/views`.
fn split_into_files(text: &str, root: &Path) -> Result<(), BoxError> {
    std::fs::create_dir_all(root.join("views"))?;
    let mut file = 0;
    let mut current = String::new();
    for line in text.lines() {
        current.push_str(line);
        current.push('\n');
        if line == "}" {
            std::fs::write(root.join("views").join(format!("{file:05}.kdl")), &current)?;
            current.clear();
            file += 1;
        }
    }
    Ok(())
}

/// The `viewkeeper` binary of the same build (`target/release/viewkeeper` beside
/// `target/release/examples/scale`), when it has been built.
fn viewkeeper_binary() -> Option<PathBuf> {
    let examples = std::env::current_exe().ok()?.parent()?.to_path_buf();
    let binary = examples.parent()?.join("viewkeeper");
    binary.is_file().then_some(binary)
}

/// `viewkeeper plan --detailed-exitcode` on an in-sync database, start to exit; the median
/// of [`NOOP_RUNS`]. Fails unless it reports nothing to do (exit 0).
fn time_plan_process(binary: &Path, root: &Path, url: &str) -> Result<Duration, BoxError> {
    let mut times = Vec::new();
    for _ in 0..NOOP_RUNS {
        let started = Instant::now();
        let output = Command::new(binary)
            .args(["--database-url", url, "plan", "--detailed-exitcode"])
            .current_dir(root)
            .stdin(Stdio::null())
            .output()
            .map_err(|error| format!("cannot run {}: {error}", binary.display()))?;
        times.push(started.elapsed());
        if !output.status.success() {
            return Err(format!(
                "`viewkeeper plan` in {} did not find the database in sync ({}): {}{}",
                root.display(),
                output.status,
                String::from_utf8_lossy(&output.stdout),
                String::from_utf8_lossy(&output.stderr)
            )
            .into());
        }
    }
    Ok(median(times))
}

/// The sizes to measure (the numbers on the command line, or [`DEFAULT_SIZES`]) and flags.
fn options() -> Result<Options, BoxError> {
    let mut all_materialized = false;
    let mut check = true;
    let sizes: Vec<usize> = std::env::args()
        .skip(1)
        .filter(|arg| match arg.as_str() {
            "--all-materialized" => {
                all_materialized = true;
                false
            }
            "--no-check" => {
                check = false;
                false
            }
            _ => true,
        })
        .map(|arg| {
            arg.parse::<usize>()
                .ok()
                .filter(|&n| n > 0)
                .ok_or_else(|| format!("expected positive object counts, got `{arg}`"))
        })
        .collect::<Result<_, _>>()?;
    Ok(Options {
        sizes: if sizes.is_empty() {
            DEFAULT_SIZES.to_vec()
        } else {
            sizes
        },
        all_materialized,
        check,
    })
}

/// Measures every size; returns the rows, the server version and psql's own overhead.
async fn run(
    sandbox: &Sandbox,
    psql: &Path,
    sizes: &[usize],
    all_materialized: bool,
) -> Result<(Vec<Measurement>, String, Duration), BoxError> {
    let admin = viewkeeper::db::connect(&sandbox.url("postgres"), &["public".to_owned()]).await?;
    let server_version: String = admin
        .query_one("SHOW server_version", &[])
        .await
        .map_err(sql)?
        .get(0);

    let scratch = tempfile::tempdir()?;
    let empty_sql = scratch.path().join("empty.sql");
    std::fs::write(&empty_sql, "")?;
    let psql_overhead = median(
        (0..3)
            .map(|_| run_psql(psql, &sandbox.url("postgres"), &empty_sql))
            .collect::<Result<_, _>>()?,
    );

    let mut rows = Vec::new();
    for &n in sizes {
        eprintln!("N={n}: measuring…");
        rows.push(measure(sandbox, &admin, psql, scratch.path(), n, all_materialized).await?);
    }
    Ok((rows, server_version, psql_overhead))
}

async fn measure(
    sandbox: &Sandbox,
    admin: &Client,
    psql: &Path,
    scratch: &Path,
    n: usize,
    all_materialized: bool,
) -> Result<Measurement, BoxError> {
    let database = format!("scale_{n}");
    let floor_database = format!("scale_{n}_psql");
    for name in [&database, &floor_database] {
        // Names made of [a-z0-9_]: no quoting needed.
        admin
            .batch_execute(&format!("DROP DATABASE IF EXISTS {name}"))
            .await
            .map_err(sql)?;
        admin
            .batch_execute(&format!("CREATE DATABASE {name} TEMPLATE template0"))
            .await
            .map_err(sql)?;
    }

    let project_dir = tempfile::tempdir()?;
    let tree = project_dir.path().join("views").join("tree.kdl");
    std::fs::create_dir_all(project_dir.path().join("views"))?;
    std::fs::write(&tree, declarations(n, 0, all_materialized))?;
    // Default settings; `viewkeeper plan` looks for this file to find the project.
    std::fs::write(project_dir.path().join("viewkeeper.kdl"), "")?;
    let project = Project::load(project_dir.path()).map_err(report)?;
    let search_path = &project.config.search_path;
    let state_schema = &project.config.state_schema;
    let materialized = (0..n)
        .filter(|&i| is_materialized(i, all_materialized))
        .count();

    let setup = SETUP.replace("$ROWS", &ROWS.to_string());
    let mut client = viewkeeper::db::connect(&sandbox.url(&database), search_path).await?;
    client.batch_execute(&setup).await.map_err(sql)?;
    let floor = viewkeeper::db::connect(&sandbox.url(&floor_database), search_path).await?;
    floor.batch_execute(&setup).await.map_err(sql)?;

    // The floor's SQL: what viewkeeper plans against a database holding only the table.
    let floor_catalog = catalog::introspect(&floor, &dependency_names(&project), state_schema)
        .await
        .map_err(sql)?;
    let floor_plan = plan::plan(&project, &floor_catalog).map_err(report)?;
    let mut floor_sql = String::new();
    for statement in &floor_plan.statements() {
        writeln!(floor_sql, "{};", statement.sql)?;
    }
    drop(floor);
    let floor_file = scratch.join(format!("floor_{n}.sql"));
    std::fs::write(&floor_file, floor_sql)?;

    // First reconcile: creates everything.
    let mut first_phases: BTreeMap<Phase, Duration> = BTreeMap::new();
    let started = Instant::now();
    let reconciled = apply::reconcile(
        &mut client,
        &project,
        &apply::Intent::UNATTENDED,
        |statement, took| {
            *first_phases.entry(statement.phase).or_default() += took;
        },
    )
    .await
    .map_err(report)?;
    let first = started.elapsed();
    let first_queries = reconciled.catalog_queries;
    let first_statements = reconciled.plan.statements().len();
    if first_statements != floor_plan.statements().len() {
        return Err(format!(
            "the first reconcile ran {first_statements} statements, the floor's plan has {}",
            floor_plan.statements().len()
        )
        .into());
    }

    let psql_time = run_psql(psql, &sandbox.url(&floor_database), &floor_file)?;

    // No-op plan: introspect and plan against the in-sync database.
    let mut plan_times = Vec::new();
    let mut introspect_times = Vec::new();
    let mut noop_plan_queries = 0;
    for _ in 0..NOOP_RUNS {
        let started = Instant::now();
        let catalog = catalog::introspect(&client, &dependency_names(&project), state_schema)
            .await
            .map_err(sql)?;
        introspect_times.push(started.elapsed());
        let plan = plan::plan(&project, &catalog).map_err(report)?;
        plan_times.push(started.elapsed());
        noop_plan_queries = catalog.queries_issued;
        if !plan.is_empty() {
            return Err(format!(
                "N={n}: the plan after the first reconcile is not empty: {} actions",
                plan.actions().len()
            )
            .into());
        }
    }

    // The same on a new connection each time.
    let mut cold_times = Vec::new();
    for _ in 0..NOOP_RUNS {
        let started = Instant::now();
        let project = Project::load(project_dir.path()).map_err(report)?;
        let fresh = viewkeeper::db::connect(&sandbox.url(&database), search_path).await?;
        let catalog = catalog::introspect(&fresh, &dependency_names(&project), state_schema)
            .await
            .map_err(sql)?;
        let plan = plan::plan(&project, &catalog).map_err(report)?;
        cold_times.push(started.elapsed());
        if !plan.is_empty() {
            return Err(format!("N={n}: the plan on a new connection is not empty").into());
        }
    }

    // The same as a process: `viewkeeper plan`, start to exit, in both layouts; first
    // planned from the catalog (the record removed), then answered by the record that a
    // no-op reconcile of that layout makes.
    let noop_plan_process = match viewkeeper_binary() {
        Some(binary) => {
            let many_files = tempfile::tempdir()?;
            split_into_files(&declarations(n, 0, all_materialized), many_files.path())?;
            std::fs::write(many_files.path().join("viewkeeper.kdl"), "")?;
            let url = sandbox.url(&database);
            let mut planned = Vec::new();
            let mut recorded = Vec::new();
            for root in [project_dir.path(), many_files.path()] {
                // The schema is the default, `viewkeeper`: no quoting needed.
                client
                    .batch_execute(&format!("DELETE FROM {state_schema}.in_sync_v1"))
                    .await
                    .map_err(sql)?;
                planned.push(time_plan_process(&binary, root, &url)?);
                let layout = Project::load(root).map_err(report)?;
                apply::reconcile(&mut client, &layout, &apply::Intent::UNATTENDED, |_, _| {})
                    .await
                    .map_err(report)?;
                recorded.push(time_plan_process(&binary, root, &url)?);
            }
            Some(ProcessTimes {
                recorded: (recorded[0], recorded[1]),
                planned: (planned[0], planned[1]),
            })
        }
        None => None,
    };

    // No-op reconcile.
    let mut reconcile_times = Vec::new();
    let mut noop_reconcile_queries = 0;
    for _ in 0..NOOP_RUNS {
        let started = Instant::now();
        let reconciled =
            apply::reconcile(&mut client, &project, &apply::Intent::UNATTENDED, |_, _| {})
                .await
                .map_err(report)?;
        reconcile_times.push(started.elapsed());
        noop_reconcile_queries = reconciled.catalog_queries;
        if !reconciled.plan.is_empty() {
            return Err(format!("N={n}: a no-op reconcile did something").into());
        }
    }

    // One leaf's query changes: rewrite the file, reload, reconcile.
    let mut leaf_times = Vec::new();
    let mut leaf_queries = 0;
    let mut leaf_statements = 0;
    for run in 0..LEAF_RUNS {
        std::fs::write(&tree, declarations(n, run % 2 + 1, all_materialized))?;
        let edited = Project::load(project_dir.path()).map_err(report)?;
        let started = Instant::now();
        let reconciled =
            apply::reconcile(&mut client, &edited, &apply::Intent::UNATTENDED, |_, _| {})
                .await
                .map_err(report)?;
        leaf_times.push(started.elapsed());
        leaf_queries = reconciled.catalog_queries;
        leaf_statements = reconciled.plan.statements().len();
        if reconciled.plan.actions().len() != 1 {
            return Err(format!(
                "N={n}: a leaf edit should change one object, the plan has {} actions",
                reconciled.plan.actions().len()
            )
            .into());
        }
    }
    // Everything lost, as after a CASCADE: restored in one transaction, then on several
    // sessions, each object committed on its own.
    let project = Project::load(project_dir.path()).map_err(report)?;
    let restore_serial = time_restore(&mut client, &project, None).await?;
    let workers = apply::Workers {
        url: sandbox.url(&database),
        jobs: restore_jobs(),
    };
    let restore_parallel = time_restore(&mut client, &project, Some(&workers)).await?;
    drop(client);

    for name in [&database, &floor_database] {
        admin
            .batch_execute(&format!("DROP DATABASE {name}"))
            .await
            .map_err(sql)?;
    }

    Ok(Measurement {
        n,
        materialized,
        first,
        first_queries,
        first_statements,
        first_phases,
        psql: psql_time,
        noop_plan: median(plan_times),
        noop_introspect: median(introspect_times),
        noop_plan_cold: median(cold_times),
        noop_plan_process,
        noop_plan_queries,
        noop_reconcile: median(reconcile_times),
        noop_reconcile_queries,
        leaf: median(leaf_times),
        leaf_queries,
        leaf_statements,
        restore_serial,
        restore_parallel,
        peak_rss_kib: peak_rss_kib(),
    })
}

/// Sessions of the parallel restore: `VIEWKEEPER_RESTORE_JOBS`, or one per CPU, at most 4,
/// as `viewkeeper run` uses.
fn restore_jobs() -> usize {
    std::env::var("VIEWKEEPER_RESTORE_JOBS")
        .ok()
        .and_then(|jobs| jobs.parse().ok())
        .unwrap_or_else(apply::default_jobs)
}

/// Drops every managed object (`drop-managed`), then times the reconcile that restores them.
async fn time_restore(
    client: &mut Client,
    project: &Project,
    workers: Option<&apply::Workers>,
) -> Result<Duration, BoxError> {
    apply::drop_managed(client, project, |_, _| {})
        .await
        .map_err(report)?;
    let intent = apply::Intent {
        workers,
        ..apply::Intent::UNATTENDED
    };
    let started = Instant::now();
    let reconciled = apply::reconcile(client, project, &intent, |_, _| {})
        .await
        .map_err(report)?;
    let took = started.elapsed();
    if !reconciled.failed.is_empty() || reconciled.plan.is_empty() {
        return Err("the restore did not restore everything".into());
    }
    Ok(took)
}

/// Every 10th node (0, 10, 20, …) is a materialized view, or every node.
fn is_materialized(i: usize, all: bool) -> bool {
    all || i.is_multiple_of(10)
}

/// `tree.kdl` for `n` objects. `leaf_variant` > 0 edits the query of the last node, a leaf.
///
/// Every node exposes `seller_no, invoice_date, invoice_amt`, so any node can read any other.
/// Materialized views sum by seller and day, unique on that pair; views filter.
fn declarations(n: usize, leaf_variant: usize, all_materialized: bool) -> String {
    let mut kdl = String::new();
    for i in 0..n {
        let parent = if i == 0 {
            "public.invoices_invoice".to_owned()
        } else {
            format!("public.{}", node_name((i - 1) / 2))
        };
        let mut query = if is_materialized(i, all_materialized) {
            format!(
                "SELECT seller_no, invoice_date, sum(invoice_amt)::numeric(13,2) AS invoice_amt \
                 FROM {parent} GROUP BY seller_no, invoice_date"
            )
        } else {
            format!(
                "SELECT seller_no, invoice_date, invoice_amt FROM {parent} WHERE invoice_amt >= {}",
                i % 7
            )
        };
        if i == n - 1 && leaf_variant > 0 {
            query = format!(
                "SELECT * FROM ({query}) AS q LIMIT {}",
                1_000_000 + leaf_variant
            );
        }
        let keyword = if is_materialized(i, all_materialized) {
            "materialized-view"
        } else {
            "view"
        };
        let _ = writeln!(kdl, "{keyword} \"public.{}\" {{", node_name(i));
        let _ = writeln!(kdl, "    depends-on \"{parent}\"");
        let _ = writeln!(kdl, "    query \"{query}\"");
        if is_materialized(i, all_materialized) {
            let _ = writeln!(kdl, "    index \"seller_no\" \"invoice_date\" unique=#true");
        }
        let _ = writeln!(kdl, "}}");
    }
    kdl
}

fn node_name(i: usize) -> String {
    format!("node_{i:05}")
}

/// `psql` next to the server binaries, else whatever PATH finds.
fn psql_path(sandbox: &Sandbox) -> PathBuf {
    let beside = sandbox.bindir().join("psql");
    if beside.is_file() {
        beside
    } else {
        PathBuf::from("psql")
    }
}

/// Runs `file` in one transaction with psql; returns the wall time, start to exit.
fn run_psql(psql: &Path, url: &str, file: &Path) -> Result<Duration, BoxError> {
    let started = Instant::now();
    let output = Command::new(psql)
        .args(["-X", "-q", "-1", "-v", "ON_ERROR_STOP=1", "-d", url, "-f"])
        .arg(file)
        .stdin(Stdio::null())
        .output()
        .map_err(|error| format!("cannot run {}: {error}", psql.display()))?;
    let took = started.elapsed();
    if !output.status.success() {
        return Err(format!(
            "psql failed ({}) on {}: {}",
            output.status,
            file.display(),
            String::from_utf8_lossy(&output.stderr).trim()
        )
        .into());
    }
    Ok(took)
}

/// The process's peak resident set size, from `/proc/self/status`.
fn peak_rss_kib() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    status
        .lines()
        .find_map(|line| line.strip_prefix("VmHWM:"))?
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse()
        .ok()
}

fn median(mut times: Vec<Duration>) -> Duration {
    times.sort();
    times.get(times.len() / 2).copied().unwrap_or_default()
}

fn ms(duration: Duration) -> String {
    format!("{:.1}", duration.as_secs_f64() * 1000.0)
}

/// PostgreSQL's message, detail and hint.
fn sql(error: tokio_postgres::Error) -> BoxError {
    viewkeeper::db::describe(&error).into()
}

/// A diagnostic with its labels and help, as the CLI would print it.
fn report(error: impl miette::Diagnostic + Send + Sync + 'static) -> BoxError {
    format!("{:?}", miette::Report::new(error)).into()
}
