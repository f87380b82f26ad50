//! Knowing that nothing changed since the database was last found in sync, without reading
//! its views or parsing a declaration.
//!
//! A reconcile ends by planning once more, in a transaction of its own. When that plan has
//! nothing to do, it records in the state schema what the plan was made from: a digest of
//! every declaration and query file (with viewkeeper's version and settings), and the
//! catalog's fingerprint ([`crate::sql::in_sync`]), taken before the catalog was read, so
//! whatever changes after is seen as a change. A later `plan` that finds the same files
//! and the same fingerprint prints the recorded plan, with its warnings. Anything else
//! (another file, a migration, a refresh, another role or setting) plans as usual.

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
    format!("viewkeeper {}\n{config:?}\n", env!("CARGO_PKG_VERSION"))
}

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
    let query_files: BTreeMap<PathBuf, [u8; 32]> = project
        .declarations
        .values()
        .map(|declaration| &declaration.query.origin.file)
        .filter(|file| !project.files.iter().any(|read| read.path == file.path))
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

async fn read_record(
    client: &Client,
    config: &Config,
    sources: Sources,
) -> Result<Option<Plan>, tokio_postgres::Error> {
    let schema = &config.state_schema;
    client
        .batch_execute(&format!(
            "{}; {}",
            session::BEGIN,
            session::set_local_lock_timeout(config.lock_timeout)
        ))
        .await?;
    // A reconcile at work: plan as usual, which waits for it.
    if !waits::try_share_reconcile_lock(client, schema).await? {
        return Ok(None);
    }
    let table = state::table(schema, sql::TABLE);
    let exists: bool = client
        .query_typed_one(state::EXISTS, &[(&table, Type::TEXT)])
        .await?
        .get(0);
    if !exists {
        return Ok(None);
    }
    let Some(row) = client.query_typed_opt(&sql::select(schema), &[]).await? else {
        return Ok(None);
    };
    let catalog_unchanged: Option<bool> = row.get(4);
    if catalog_unchanged != Some(true) {
        return Ok(None);
    }
    let recorded_sources: String = row.get(0);
    let query_files: Vec<String> = row.get(1);
    let root = sources.root.clone();
    let Some(declaration_files) = sources.wait() else {
        return Ok(None);
    };
    let Some(query_files) = query_files
        .iter()
        .map(|path| digest_file(&root, &root.join(path)))
        .collect::<Option<Vec<_>>>()
    else {
        return Ok(None);
    };
    if sources_digest(config, &declaration_files, &query_files) != recorded_sources {
        return Ok(None);
    }
    let declared: i32 = row.get(2);
    let warnings: String = row.get(3);
    let Ok(warnings) = serde_json::from_str::<Vec<Warning>>(&warnings) else {
        return Ok(None);
    };
    // Warnings name files as the recording reconcile showed them.
    let shown_root: String = row.get(6);
    if !warnings.is_empty() && shown_root != shown(&root) {
        return Ok(None);
    }
    let recorded_at: String = row.get(5);
    tracing::debug!(
        "nothing changed since {recorded_at}, when a reconcile found the database in sync: \
         the plan is the one recorded then"
    );
    Ok(Some(Plan {
        steps: Vec::new(),
        warnings,
        declared: usize::try_from(declared).unwrap_or_default(),
        last_builds: BTreeMap::new(),
    }))
}

/// After a reconcile: plans again, in a transaction of its own, and records what the plan
/// was made from when it has nothing to do (or forgets the record when it has). The
/// catalog's fingerprint is taken first, so a change made while the plan reads counts as
/// a change. Does nothing when the record still holds.
pub async fn record(client: &mut Client, project: &Project) -> Result<(), tokio_postgres::Error> {
    let config = &project.config;
    let schema = &config.state_schema;
    let table = state::table(schema, sql::TABLE);
    let mut transaction = client.transaction().await?;
    waits::bound(&transaction, config.lock_timeout).await?;
    waits::share_reconcile_lock(&transaction, schema).await?;
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
    match in_sync {
        Some(plan) => {
            let warnings = serde_json::to_string(&plan.warnings).unwrap_or_else(|_| "[]".into());
            let declared = i32::try_from(plan.declared).unwrap_or(i32::MAX);
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
