//! Knowing that nothing changed since the database was last found in sync, without reading
//! its views or parsing a declaration.
//!
//! A reconcile ends by planning once more, in a transaction of its own. When that plan has
//! nothing to do, it records in the state schema what the plan was made from: a digest of
//! every declaration and query file (with viewkeeper's version and settings), and the
//! catalog's fingerprint ([`crate::sql::in_sync`]), taken before the catalog was read (so
//! whatever changes after is seen as a change) and again after (so is a change made and
//! undone meanwhile). A later `plan` that finds the same files and the same fingerprint
//! prints the recorded plan, with its warnings. Anything else (another file, a migration,
//! another role or setting) plans as usual; a refresh does not count.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};
use tokio_postgres::Client;
use tokio_postgres::types::Type;

use crate::plan::{Plan, Warning};
use crate::project::{Config, Project, SourceFile, display_path};
use crate::sql::{in_sync as sql, session, state};
use crate::waits;

/// The digest of one file: its path inside the project folder, and its contents'. (Inside
/// the folder, so a plan run from another folder, or another checkout, finds the record.)
type FileDigest = (PathBuf, [u8; 32]);

/// What the digest of the sources starts with: what else decides a plan on the client.
fn header(config: &Config) -> String {
    format!(
        "viewkeeper {} {PLANNER_VERSION}\n{config:?}\n",
        env!("CARGO_PKG_VERSION")
    )
}

/// Changed with any change to what a plan makes of the same files and catalog, so that no
/// record made by another build (of the same version number) answers for this one.
const PLANNER_VERSION: u32 = 1;

/// The digest of everything a plan reads on the client: `declaration_files` as
/// [`Project::load`] finds them, and the query files they name.
fn sources_digest(
    config: &Config,
    declaration_files: &[FileDigest],
    query_files: &[FileDigest],
) -> String {
    let mut digest = Sha256::new();
    digest.update(header(config).as_bytes());
    for (list, (path, contents)) in std::iter::repeat_n(0u8, declaration_files.len())
        .chain(std::iter::repeat_n(1, query_files.len()))
        .zip(declaration_files.iter().chain(query_files))
    {
        let path = path.to_string_lossy();
        digest.update([list]);
        digest.update((path.len() as u64).to_le_bytes());
        digest.update(path.as_bytes());
        digest.update(contents);
    }
    format!("{:x}", digest.finalize())
}

/// The project folder `root` as messages show it.
fn shown(root: &Path) -> String {
    display_path(root).to_string_lossy().into_owned()
}

/// `path` (as shown in messages) inside the project folder `root` (as given).
fn inside(root: &Path, path: &Path) -> PathBuf {
    let (root, path) = (display_path(root), display_path(path));
    path.strip_prefix(&root)
        .map_or_else(|_| path.clone(), Path::to_path_buf)
}

/// The sources of a loaded project: its digest, and the query files it read (inside the
/// project folder).
fn project_sources(project: &Project) -> (String, Vec<String>) {
    let digest_of = |file: &SourceFile| -> FileDigest {
        (
            inside(&project.root, &file.path),
            Sha256::digest(file.text.as_bytes()).into(),
        )
    };
    let declaration_files: Vec<FileDigest> =
        project.files.iter().map(|file| digest_of(file)).collect();
    // A set, not a scan of the files per declaration: thousands of each are common.
    let read: std::collections::HashSet<&Path> = project
        .files
        .iter()
        .map(|file| file.path.as_path())
        .collect();
    let query_files: BTreeMap<PathBuf, [u8; 32]> = project
        .declarations
        .values()
        .map(|declaration| &declaration.query.origin.file)
        .filter(|file| !read.contains(file.path.as_path()))
        .map(|file| digest_of(file))
        .collect();
    let names = query_files
        .keys()
        .map(|path| path.to_string_lossy().into_owned())
        .collect();
    let query_files: Vec<FileDigest> = query_files.into_iter().collect();
    (
        sources_digest(&project.config, &declaration_files, &query_files),
        names,
    )
}

/// The declaration files of the project at `root`, read and digested on a thread of their
/// own while the command connects.
pub struct Sources {
    root: PathBuf,
    reader: Option<std::thread::JoinHandle<Option<Vec<FileDigest>>>>,
}

impl Sources {
    /// Starts reading the declaration files under `config`'s folder.
    pub fn start(root: &Path, config: &Config) -> Self {
        let views_dir = root.join(&config.views_dir);
        let thread_root = root.to_path_buf();
        let reader = std::thread::Builder::new()
            .name("source-digest".to_owned())
            .spawn(move || {
                let paths = crate::project::declaration_paths(&views_dir)?;
                paths
                    .iter()
                    .map(|path| digest_file(&thread_root, path))
                    .collect()
            })
            .ok();
        Self {
            root: root.to_path_buf(),
            reader,
        }
    }

    fn wait(self) -> Option<Vec<FileDigest>> {
        self.reader?.join().ok().flatten()
    }
}

/// The digest of the query file at `path` inside `root`, read only where loading the
/// project would read it: inside the project folder once links are resolved.
fn query_file_digest(root: &Path, path: &str) -> Option<FileDigest> {
    let shown = display_path(&root.join(path));
    let resolved = shown.canonicalize().ok()?;
    if !resolved.starts_with(root.canonicalize().ok()?) {
        return None;
    }
    digest_file(root, &shown)
}

/// The digest of a regular file of the project at `root` (never a FIFO, which would block);
/// `None` when it cannot be read.
fn digest_file(root: &Path, path: &Path) -> Option<FileDigest> {
    if !std::fs::metadata(path).ok()?.is_file() {
        return None;
    }
    let contents = std::fs::read(path).ok()?;
    Some((inside(root, path), Sha256::digest(&contents).into()))
}

/// The plan recorded when the database was last found in sync, when neither the files
/// nor the catalog changed since; `None` (after a rollback) when anything did, when a
/// reconcile is running, or when the record cannot be read: then the caller plans.
pub async fn recorded_plan(client: &Client, config: &Config, sources: Sources) -> Option<Plan> {
    let read = read_record(client, config, sources).await;
    // Read-only, and rolled back either way.
    let ended = client.batch_execute(session::ROLLBACK).await;
    match (read, ended) {
        (Ok(plan), Ok(())) => plan,
        (Err(error), _) | (_, Err(error)) => {
            tracing::debug!(
                "cannot read the in-sync record: {}",
                crate::db::describe(&error)
            );
            None
        }
    }
}

/// What the record holds, read by column name: `None` for a row this viewkeeper did not
/// write (a changed table).
struct Recorded {
    sources: String,
    query_files: Vec<String>,
    declared: usize,
    warnings: Vec<Warning>,
    shown_root: String,
    catalog: String,
    recorded_at: String,
}

impl Recorded {
    fn from_row(row: &tokio_postgres::Row) -> Option<Self> {
        Some(Self {
            sources: row.try_get("sources").ok()?,
            query_files: row.try_get("query_files").ok()?,
            declared: usize::try_from(row.try_get::<_, i32>("declared").ok()?).ok()?,
            warnings: serde_json::from_str(row.try_get("warnings").ok()?).ok()?,
            shown_root: row.try_get("shown_root").ok()?,
            catalog: row.try_get("catalog").ok()?,
            recorded_at: row.try_get("recorded_at").ok()?,
        })
    }
}

async fn read_record(
    client: &Client,
    config: &Config,
    sources: Sources,
) -> Result<Option<Plan>, tokio_postgres::Error> {
    let schema = &config.state_schema;
    // Never a long wait: a lock on what the record is checked against sends the plan to
    // the catalog, which waits for it as bounded as ever.
    client
        .batch_execute(&format!(
            "{}; {}",
            session::BEGIN,
            session::set_local_lock_timeout(LOCK_TIMEOUT.min(config.lock_timeout))
        ))
        .await?;
    let table = state::table(schema, sql::TABLE);
    let ready = client
        .query_typed_one(
            sql::LOCKED_AND_PRESENT,
            &[(&waits::lock_key(schema), Type::INT8), (&table, Type::TEXT)],
        )
        .await?;
    // A reconcile at work (plan as usual, which waits for it), or no record table.
    if !(ready.get::<_, bool>(0) && ready.get::<_, bool>(1)) {
        return Ok(None);
    }
    // The record, the catalog's fingerprint and the files' digests, all at once: the server
    // takes the fingerprint while the files are read.
    let root = sources.root.clone();
    let (select_record, select_fingerprint) =
        (sql::select(schema), sql::select_fingerprint(schema));
    let (row, catalog, declaration_files) = tokio::join!(
        client.query_typed_opt(&select_record, &[]),
        client.query_typed_one(&select_fingerprint, &[]),
        tokio::task::spawn_blocking(move || sources.wait()),
    );
    let (Some(row), catalog) = (row?, catalog?.try_get::<_, String>(0)?) else {
        return Ok(None);
    };
    let (Some(recorded), Ok(Some(declaration_files))) =
        (Recorded::from_row(&row), declaration_files)
    else {
        return Ok(None);
    };
    let Some(query_files) = recorded
        .query_files
        .iter()
        .map(|path| query_file_digest(&root, path))
        .collect::<Option<Vec<_>>>()
    else {
        return Ok(None);
    };
    if sources_digest(config, &declaration_files, &query_files) != recorded.sources
        || catalog != recorded.catalog
    {
        return Ok(None);
    }
    // Warnings name files as the recording reconcile showed them.
    if !recorded.warnings.is_empty() && recorded.shown_root != shown(&root) {
        return Ok(None);
    }
    tracing::debug!(
        "nothing changed since {}, when a reconcile found the database in sync: \
         the plan is the one recorded then",
        recorded.recorded_at
    );
    Ok(Some(Plan {
        steps: Vec::new(),
        warnings: recorded.warnings,
        declared: recorded.declared,
        last_builds: BTreeMap::new(),
    }))
}

/// How long `plan` waits for a lock before it leaves the record and plans.
const LOCK_TIMEOUT: std::time::Duration = std::time::Duration::from_millis(50);

/// After a reconcile: plans again, in a transaction of its own, and records what the plan
/// was made from when it has nothing to do (or forgets the record when it has). The
/// catalog's fingerprint is taken before and after the plan reads it: a change made
/// meanwhile counts as a change. Does nothing when the record still holds, or while
/// another reconcile is at work (it records when done).
pub async fn record(client: &mut Client, project: &Project) -> Result<(), tokio_postgres::Error> {
    let config = &project.config;
    let schema = &config.state_schema;
    let table = state::table(schema, sql::TABLE);
    let mut transaction = client.transaction().await?;
    waits::bound(&transaction, config.lock_timeout).await?;
    // Another reconcile at work records when it is done.
    if !waits::try_share_reconcile_lock(&transaction, schema).await? {
        return transaction.rollback().await;
    }
    let state_exists: bool = transaction
        .query_typed_one(
            state::EXISTS,
            &[(&state::table(schema, state::OBJECTS_TABLE), Type::TEXT)],
        )
        .await?
        .get(0);
    if !state_exists {
        return transaction.rollback().await;
    }
    let record_exists: bool = transaction
        .query_typed_one(state::EXISTS, &[(&table, Type::TEXT)])
        .await?
        .get(0);
    if !record_exists {
        transaction
            .batch_execute(&sql::create_table(schema))
            .await?;
    }
    let fingerprint: String = transaction
        .query_typed_one(&sql::select_fingerprint(schema), &[])
        .await?
        .get(0);
    let (sources, query_files) = project_sources(project);
    let recorded = transaction
        .query_typed_opt(
            &sql::select_matching(schema),
            &[(&sources, Type::TEXT), (&fingerprint, Type::TEXT)],
        )
        .await?;
    if recorded.is_some() {
        return transaction.rollback().await;
    }
    let catalog = crate::catalog::read::read_catalog(&mut transaction, project).await?;
    let in_sync = match crate::plan::plan(project, &catalog) {
        Ok(plan) if plan.steps.is_empty() => Some(plan),
        _ => None,
    };
    // Each statement reads the catalog as committed when it starts: a change committed
    // during the read (or one made and undone) may be in the plan and not in the
    // fingerprint. Only a catalog that stayed the same throughout is recorded.
    let after: String = transaction
        .query_typed_one(&sql::select_fingerprint(schema), &[])
        .await?
        .get(0);
    let in_sync = in_sync.filter(|_| after == fingerprint);
    let recordable = in_sync.and_then(|plan| {
        let warnings = serde_json::to_string(&plan.warnings).ok()?;
        let declared = i32::try_from(plan.declared).ok()?;
        Some((warnings, declared))
    });
    match recordable {
        Some((warnings, declared)) => {
            transaction
                .query_typed(
                    &sql::upsert(schema),
                    &[
                        (&sources, Type::TEXT),
                        (&fingerprint, Type::TEXT),
                        (&query_files, Type::TEXT_ARRAY),
                        (&declared, Type::INT4),
                        (&warnings, Type::TEXT),
                        (&shown(&project.root), Type::TEXT),
                    ],
                )
                .await?;
        }
        None => {
            transaction.batch_execute(&sql::delete(schema)).await?;
        }
    }
    transaction.commit().await
}
