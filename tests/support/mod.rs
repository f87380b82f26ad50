//! Shared support for the integration tests: a PostgreSQL server, a fresh database per test,
//! a project folder and a command line for the `viewkeeper` binary.
//!
//! The server is the one named by `VIEWKEEPER_TEST_DATABASE_URL` when that is set, otherwise
//! one throwaway [`Sandbox`] per test binary, started on first use. Tests never skip: if no
//! server can be had, they fail saying why.

// Each test binary compiles this module and uses only some of it.
#![allow(dead_code)]

use std::fmt::Write as _;
use std::future::Future;
use std::path::Path;
use std::sync::OnceLock;
use std::sync::atomic::{AtomicU32, Ordering};

use tokio::runtime::Runtime;
use tokio_postgres::error::SqlState;
use tokio_postgres::{Client, NoTls, SimpleQueryMessage};
use viewkeeper::sandbox::Sandbox;

/// Names a server to run the tests against instead of starting a sandbox.
const DATABASE_URL_VAR: &str = "VIEWKEEPER_TEST_DATABASE_URL";

/// The server the tests of this binary share.
enum Server {
    /// A cluster we started; never dropped (statics are not), its watchdog removes it when
    /// the test binary exits.
    Sandbox { sandbox: Sandbox, admin_url: String },
    /// A server given by `VIEWKEEPER_TEST_DATABASE_URL`; we drop our databases there.
    External { admin_url: String },
}

impl Server {
    fn admin_url(&self) -> &str {
        match self {
            Server::Sandbox { admin_url, .. } | Server::External { admin_url } => admin_url,
        }
    }
}

/// The shared server, or why there is none (kept so every test fails with the same reason).
static SERVER: OnceLock<Result<Server, String>> = OnceLock::new();

/// Numbers the databases this process creates.
static NEXT_DATABASE: AtomicU32 = AtomicU32::new(1);

fn server() -> &'static Server {
    let server = SERVER.get_or_init(|| match std::env::var(DATABASE_URL_VAR) {
        Ok(url) => Ok(Server::External { admin_url: url }),
        Err(_) => match Sandbox::start() {
            Ok(sandbox) => {
                let admin_url = sandbox.url("postgres");
                Ok(Server::Sandbox { sandbox, admin_url })
            }
            Err(err) => Err(format!(
                "could not start a throwaway PostgreSQL cluster for the tests: {}\n\
                 (install the PostgreSQL server packages, or set {DATABASE_URL_VAR} to a server \
                 where the tests may create databases)",
                error_chain(&err)
            )),
        },
    });
    match server {
        Ok(server) => server,
        Err(why) => panic!("{why}"),
    }
}

/// A fresh database of its own for one test, with a connected client.
pub(crate) struct TestDb {
    /// Connection URL of this database.
    pub(crate) url: String,
    /// Its name, `vk_test_<pid>_<counter>`.
    pub(crate) name: String,
    /// Set when the database lives on an external server and must be dropped afterwards.
    admin_url: Option<String>,
    client: Option<Client>,
    runtime: Runtime,
}

/// Creates a new, empty database (from `template0`) and connects to it.
pub(crate) fn test_db() -> TestDb {
    let server = server();
    let admin_url = server.admin_url();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap_or_else(|err| panic!("could not build a tokio runtime: {err}"));

    let name = runtime.block_on(async {
        let admin = connect(admin_url).await;
        loop {
            let name = format!(
                "vk_test_{}_{}",
                std::process::id(),
                NEXT_DATABASE.fetch_add(1, Ordering::Relaxed)
            );
            // The name is ours and made of [a-z0-9_]: no quoting needed.
            let created = admin
                .batch_execute(&format!("CREATE DATABASE {name} TEMPLATE template0"))
                .await;
            match created {
                Ok(()) => break name,
                // Left over from an earlier run whose process had the same id: take the next.
                Err(err) if err.code() == Some(&SqlState::DUPLICATE_DATABASE) => continue,
                Err(err) => panic!(
                    "could not create test database {name} on {}: {}",
                    redacted(admin_url),
                    describe_error(&err)
                ),
            }
        }
    });

    let url = with_database(admin_url, &name);
    let client = runtime.block_on(connect(&url));
    TestDb {
        url,
        name,
        admin_url: match server {
            Server::Sandbox { .. } => None,
            Server::External { admin_url } => Some(admin_url.clone()),
        },
        client: Some(client),
        runtime,
    }
}

impl TestDb {
    /// The connected client, for queries the helpers don't cover (run them with `block_on`).
    pub(crate) fn client(&self) -> &Client {
        match &self.client {
            Some(client) => client,
            None => unreachable!("the client is only taken in drop"),
        }
    }

    /// Another connection to this database, e.g. to hold a lock while viewkeeper runs.
    pub(crate) fn second_session(&self) -> Client {
        self.runtime.block_on(connect(&self.url))
    }

    /// Runs a future on this database's runtime, e.g. a library call taking the client.
    pub(crate) fn block_on<F: Future>(&self, future: F) -> F::Output {
        self.runtime.block_on(future)
    }

    /// Runs one or more statements; panics with the server's message if one fails.
    pub(crate) fn batch(&self, sql: &str) {
        if let Err(why) = self.try_batch(sql) {
            panic!("SQL failed: {why}\n--- SQL ---\n{sql}");
        }
    }

    /// Runs one or more statements; returns the server's message if one fails.
    pub(crate) fn try_batch(&self, sql: &str) -> Result<(), String> {
        self.block_on(self.client().batch_execute(sql))
            .map_err(|err| describe_error(&err))
    }

    /// The single value of a query returning one row, as an integer (any integer type).
    pub(crate) fn scalar_i64(&self, sql: &str) -> i64 {
        let Some(text) = self.scalar_string(sql) else {
            panic!("expected an integer, got NULL from: {sql}");
        };
        text.parse()
            .unwrap_or_else(|_| panic!("expected an integer, got {text:?} from: {sql}"))
    }

    /// The first column of the single row of a query, in PostgreSQL's text form.
    pub(crate) fn scalar_string(&self, sql: &str) -> Option<String> {
        let mut rows = self.strings(sql);
        if rows.len() != 1 {
            panic!("expected one row, got {} from: {sql}", rows.len());
        }
        let row = rows.remove(0);
        match row.into_iter().next() {
            Some(value) => value,
            None => panic!("expected a column, got none from: {sql}"),
        }
    }

    /// All rows of a query, every value in PostgreSQL's text form (`None` for NULL).
    ///
    /// Runs through the simple query protocol, which returns any type as text.
    pub(crate) fn strings(&self, sql: &str) -> Vec<Vec<Option<String>>> {
        let messages = self
            .block_on(self.client().simple_query(sql))
            .unwrap_or_else(|err| {
                panic!("SQL failed: {}\n--- SQL ---\n{sql}", describe_error(&err))
            });
        messages
            .iter()
            .filter_map(|message| match message {
                SimpleQueryMessage::Row(row) => Some(
                    (0..row.len())
                        .map(|i| row.get(i).map(str::to_owned))
                        .collect(),
                ),
                _ => None,
            })
            .collect()
    }
}

impl Drop for TestDb {
    fn drop(&mut self) {
        // Close our session first: a database cannot be dropped while in use.
        drop(self.client.take());
        // A sandbox's databases vanish with it; on an external server, clean up (best effort).
        if let Some(admin_url) = &self.admin_url {
            let sql = format!("DROP DATABASE IF EXISTS {} WITH (FORCE)", self.name);
            self.runtime.block_on(async {
                if let Ok((admin, connection)) = tokio_postgres::connect(admin_url, NoTls).await {
                    tokio::spawn(connection);
                    let _ = admin.batch_execute(&sql).await;
                }
            });
        }
    }
}

/// Writes a project folder: each entry is a relative path and its contents.
pub(crate) fn project(files: &[(&str, &str)]) -> tempfile::TempDir {
    let dir = tempfile::Builder::new()
        .prefix("viewkeeper-project-")
        .tempdir()
        .unwrap_or_else(|err| panic!("could not create a project folder: {err}"));
    for (relative, contents) in files {
        assert!(
            Path::new(relative).is_relative(),
            "project file paths must be relative: {relative}"
        );
        let path = dir.path().join(relative);
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent)
                .unwrap_or_else(|err| panic!("could not create {}: {err}", parent.display()));
        }
        std::fs::write(&path, contents)
            .unwrap_or_else(|err| panic!("could not write {}: {err}", path.display()));
    }
    dir
}

/// The `viewkeeper` binary with `--project <dir>`, pointed at `db`, without colours.
pub(crate) fn viewkeeper(db: &TestDb, project: &Path) -> assert_cmd::Command {
    let mut cmd = assert_cmd::Command::cargo_bin("viewkeeper")
        .unwrap_or_else(|err| panic!("could not find the viewkeeper binary: {err}"));
    cmd.arg("--project")
        .arg(project)
        .env("DATABASE_URL", &db.url)
        .env("NO_COLOR", "1")
        .env_remove("CLICOLOR_FORCE");
    cmd
}

/// Runs viewkeeper with `args` in `project`: exit code, stdout and stderr.
pub(crate) fn run(db: &TestDb, project: &Path, args: &[&str]) -> (i32, String, String) {
    let output = viewkeeper(db, project)
        .args(args)
        .output()
        .unwrap_or_else(|err| panic!("could not run viewkeeper: {err}"));
    (
        output.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

/// `viewkeeper reconcile`, which must succeed; returns its stdout.
pub(crate) fn reconcile(db: &TestDb, project: &Path) -> String {
    let (code, stdout, stderr) = run(db, project, &["reconcile"]);
    assert_eq!(code, 0, "reconcile failed:\n{stdout}\n{stderr}");
    stdout
}

/// Creates a role unless it exists: roles are cluster-wide, shared by every test.
pub(crate) fn ensure_role(db: &TestDb, role: &str) {
    db.batch(&format!(
        "DO $$ BEGIN CREATE ROLE {role} NOLOGIN; \
         EXCEPTION WHEN duplicate_object OR unique_violation THEN NULL; END $$;"
    ));
}

/// The OID of `relation` (which must exist).
pub(crate) fn oid(db: &TestDb, relation: &str) -> i64 {
    db.scalar_i64(&format!("SELECT '{relation}'::regclass::oid::int8"))
}

/// Whether `relation` exists.
pub(crate) fn exists(db: &TestDb, relation: &str) -> bool {
    db.scalar_i64(&format!(
        "SELECT count(*) FROM pg_class WHERE oid = to_regclass('{relation}')"
    )) == 1
}

async fn connect(url: &str) -> Client {
    let (client, connection) = tokio_postgres::connect(url, NoTls)
        .await
        .unwrap_or_else(|err| {
            panic!(
                "could not connect to {}: {}",
                redacted(url),
                error_chain(&err)
            )
        });
    // Drives the socket whenever the runtime runs (each `block_on`).
    tokio::spawn(async move {
        if let Err(err) = connection.await {
            eprintln!("connection to the test database ended: {err}");
        }
    });
    client
}

/// `base` with its database replaced by `database`.
///
/// Handles URLs (`postgresql://user@host:port/db?options`) and key-value strings
/// (`host=… dbname=…`, where a later key wins).
pub(crate) fn with_database(base: &str, database: &str) -> String {
    match url::Url::parse(base) {
        Ok(mut url) if matches!(url.scheme(), "postgres" | "postgresql") => {
            url.set_path(&format!("/{database}"));
            url.into()
        }
        _ => format!("{base} dbname={database}"),
    }
}

/// `url` without its password, for messages.
fn redacted(url: &str) -> String {
    match url::Url::parse(url) {
        Ok(mut parsed) if parsed.password().is_some() => {
            let _ = parsed.set_password(Some("***"));
            parsed.into()
        }
        Ok(_) => url.to_owned(),
        // A key-value string may hold `password=…`: say less rather than leak it.
        Err(_) => "the server of VIEWKEEPER_TEST_DATABASE_URL".to_owned(),
    }
}

/// A tokio-postgres error with the server's message, detail, hint and position; its
/// `Display` alone is just "db error".
fn describe_error(err: &tokio_postgres::Error) -> String {
    let Some(db) = err.as_db_error() else {
        return error_chain(err);
    };
    let mut text = format!("{}: {} ({})", db.severity(), db.message(), db.code().code());
    if let Some(detail) = db.detail() {
        let _ = write!(text, "\nDETAIL: {detail}");
    }
    if let Some(hint) = db.hint() {
        let _ = write!(text, "\nHINT: {hint}");
    }
    if let Some(position) = db.position() {
        let _ = write!(text, "\nPOSITION: {position:?}");
    }
    text
}

/// An error and its causes, joined with ": ".
pub(crate) fn error_chain(err: &dyn std::error::Error) -> String {
    let mut text = err.to_string();
    let mut source = err.source();
    while let Some(cause) = source {
        let _ = write!(text, ": {cause}");
        source = cause.source();
    }
    text
}

#[allow(dead_code)]
/// A `viewkeeper schedule` child process, killed when dropped.
pub(crate) struct Scheduler {
    child: std::process::Child,
    log: std::path::PathBuf,
}

impl Scheduler {
    pub(crate) fn start(db: &TestDb, dir: &Path, name: &str, extra: &[&str]) -> Scheduler {
        let log = dir.join(format!("{name}.log"));
        let file = std::fs::File::create(&log).expect("log file");
        let errors = file.try_clone().expect("log file");
        let child = std::process::Command::new(assert_cmd::cargo::cargo_bin("viewkeeper"))
            .arg("--project")
            .arg(dir)
            .arg("schedule")
            .args(extra)
            .env("DATABASE_URL", &db.url)
            .env("NO_COLOR", "1")
            .stdin(std::process::Stdio::null())
            .stdout(file)
            .stderr(errors)
            .spawn()
            .expect("start viewkeeper schedule");
        Scheduler { child, log }
    }

    pub(crate) fn pid(&self) -> i32 {
        i32::try_from(self.child.id()).expect("pid")
    }

    pub(crate) fn signal(&self, signal: nix::sys::signal::Signal) {
        nix::sys::signal::kill(nix::unistd::Pid::from_raw(self.pid()), signal).expect("signal");
    }

    /// Waits for the process to exit, up to `limit`.
    pub(crate) fn wait(&mut self, limit: std::time::Duration) -> Option<std::process::ExitStatus> {
        let started = std::time::Instant::now();
        while started.elapsed() < limit {
            if let Some(status) = self.child.try_wait().expect("wait") {
                return Some(status);
            }
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
        None
    }

    pub(crate) fn output(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

#[allow(dead_code)]
impl Drop for Scheduler {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Polls `condition` every 100 ms for up to `limit`.
pub(crate) fn eventually(limit: std::time::Duration, mut condition: impl FnMut() -> bool) -> bool {
    let started = std::time::Instant::now();
    while started.elapsed() < limit {
        if condition() {
            return true;
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    condition()
}

/// The server folder's psql, else the one on PATH (the npm server builds ship none).
pub(crate) fn psql() -> String {
    let path = viewkeeper::sandbox::find_bindir()
        .expect("PostgreSQL binaries")
        .join("psql");
    if path.is_file() {
        path.display().to_string()
    } else {
        "psql".to_owned()
    }
}
