//! The project on disk: `viewkeeper.kdl` and the declaration files → [`Project`].
//!
//! Loading reads every file, reports every problem in one [`Problems`] value (never just
//! the first), and checks the declared dependency graph for cycles. Nothing here talks to
//! the database.

mod config;
mod declaration;
mod diagnostic;
mod fast_kdl;
pub mod infer;
mod reader;
mod scan;
mod statement;

use std::borrow::Cow;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use indexmap::IndexMap;
use miette::SourceSpan;

pub use config::Config;
pub(crate) use declaration::{all_privileges, parse_cron};
pub use diagnostic::{MAX_SHOWN, Problem, Problems, SourceFile};

use crate::graph::DependencyGraph;
use crate::name::QualifiedName;
pub use crate::objects::{Grantee, Kind, query_hash};

/// Name of the optional project settings file at the project root.
pub const CONFIG_FILE: &str = "viewkeeper.kdl";

/// Everything declared in a project, validated.
#[derive(Debug, Clone)]
pub struct Project {
    pub config: Config,
    /// Declarations keyed by name, in file order then position within the file.
    pub declarations: IndexMap<QualifiedName, Declaration>,
    /// The project's folder, as given (or found).
    pub root: PathBuf,
    /// The folder the declarations were read from.
    pub views_dir: PathBuf,
    /// Every declaration file read, with or without declarations in it (query files are
    /// each declaration's own).
    pub files: Vec<Arc<SourceFile>>,
}

/// How a materialized view whose query changed (or whose upstream did) is rebuilt.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Rebuild {
    /// Built under a temporary name while the old one keeps serving, then swapped in by a
    /// short transaction: readers wait only for the swap. Needs room for a second copy.
    #[default]
    SideBySide,
    /// Dropped and built again in reconcile's transaction: readers wait for the whole build.
    InPlace,
}

impl Rebuild {
    /// The words of `rebuild "…"` in files.
    pub fn keyword(self) -> &'static str {
        match self {
            Rebuild::SideBySide => "side-by-side",
            Rebuild::InPlace => "in-place",
        }
    }

    pub(crate) fn parse(text: &str) -> Option<Rebuild> {
        [Rebuild::SideBySide, Rebuild::InPlace]
            .into_iter()
            .find(|rebuild| rebuild.keyword() == text)
    }
}

/// One `view` or `materialized-view` node.
#[derive(Debug, Clone)]
pub struct Declaration {
    pub kind: Kind,
    pub name: QualifiedName,
    pub depends_on: Vec<Dependency>,
    /// What the query reads, found by the SQL parser; `None` when the parser cannot read
    /// it, and PostgreSQL's `pg_depend` is the only answer.
    pub inferred: Option<Vec<QualifiedName>>,
    /// What the query names, as the parser read it with the declaration; resolved into
    /// `inferred` once every declaration is known, and dropped then.
    pub(crate) names_read: Option<infer::NamesRead>,
    pub query: Query,
    /// [`crate::objects::query_hash`] of the kind and query: computed once, with the
    /// declaration, since a plan compares it with the recorded one several times.
    pub query_sha256: String,
    pub indexes: Vec<Index>,
    pub grants: Vec<Grant>,
    pub comment: Option<String>,
    pub owner: Option<String>,
    /// False for `populate #false`: created `WITH NO DATA` and never refreshed by reconcile.
    pub populate: bool,
    /// `rebuild "in-place"` or `"side-by-side"`; `None` follows `viewkeeper.kdl`.
    pub rebuild: Option<Rebuild>,
    pub refresh: Option<RefreshPolicy>,
    /// `with` options (PostgreSQL's `reloptions`), such as `security_invoker` → `true`.
    pub options: std::collections::BTreeMap<String, String>,
    /// The file and the span of the whole node, for diagnostics.
    pub file: Arc<SourceFile>,
    pub span: SourceSpan,
    /// The span of the name argument.
    pub name_span: SourceSpan,
}

impl Declaration {
    /// Everything this declaration reads: its `depends-on` and what its query names.
    pub fn reads(&self) -> impl Iterator<Item = &QualifiedName> {
        let mut names: Vec<&QualifiedName> = self.depends_on.iter().map(|d| &d.name).collect();
        names.extend(self.inferred.iter().flatten());
        names.sort();
        names.dedup();
        names.into_iter()
    }

    /// Whether `name` is read only by inference, not listed in `depends-on`.
    pub fn is_inferred(&self, name: &QualifiedName) -> bool {
        !self.depends_on.iter().any(|d| &d.name == name)
    }
}

/// A `depends-on` entry.
#[derive(Debug, Clone)]
pub struct Dependency {
    pub name: QualifiedName,
    pub span: SourceSpan,
}

/// A declared query and where its text lives, to map PostgreSQL error positions back.
#[derive(Debug, Clone)]
pub struct Query {
    /// Normalised: line endings `\n`, trailing blanks and a final `;` removed.
    pub text: String,
    pub origin: QueryOrigin,
}

/// Where line 1 of a query's text sits in a file.
#[derive(Debug, Clone)]
pub struct QueryOrigin {
    pub file: Arc<SourceFile>,
    /// 1-based line of the query's first line in `file`.
    pub first_line: usize,
    /// For a one-line inline string, the 1-based column of its first character; `None`
    /// when the query's lines are whole lines of the file (multi-line strings, `.sql` files).
    pub first_column: Option<usize>,
    /// False when escapes (`\n`, `\t`, `\"`) make the text's positions differ from the
    /// file's: errors then point at the query's first line only.
    pub exact: bool,
}

/// A place in a declaration or query file, found from a place in a query's text.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileSpot {
    /// 1-based line and column in the file.
    pub line: usize,
    pub column: usize,
    /// The token there, as a span of the file's bytes.
    pub span: SourceSpan,
}

impl QueryOrigin {
    /// Maps a 0-based line and character column of the query `text` (as it came from this
    /// origin) to the file. `None` when escapes make the positions inexact.
    pub fn spot(
        &self,
        text: &str,
        line_in_query: usize,
        column_in_line: usize,
    ) -> Option<FileSpot> {
        if !self.exact {
            return None;
        }
        let query_line = text.lines().nth(line_in_query)?;
        let file = &self.file;
        let line = self.first_line + line_in_query;
        let file_line = file.text.lines().nth(line.checked_sub(1)?)?;
        // Multi-line strings lose their indentation when KDL dedents them, and query lines
        // lose trailing blanks: the file line is the query line with that indentation in
        // front.
        let column = match self.first_column {
            Some(first) if line_in_query == 0 => first + column_in_line,
            _ => {
                file_line
                    .trim_end()
                    .chars()
                    .count()
                    .saturating_sub(query_line.chars().count())
                    + column_in_line
                    + 1
            }
        };
        // Byte offsets from the text itself, so `\r\n` line ends count as two bytes.
        let line_start: usize = file
            .text
            .split_inclusive('\n')
            .take(line - 1)
            .map(str::len)
            .sum();
        let column_bytes: usize = file_line.chars().take(column - 1).map(char::len_utf8).sum();
        let rest = &file_line[column_bytes.min(file_line.len())..];
        let token_len = rest
            .find(|c: char| c.is_whitespace() || c == ',' || c == ')')
            .unwrap_or(rest.len())
            .max(1);
        Some(FileSpot {
            line,
            column,
            span: SourceSpan::new((line_start + column_bytes).into(), token_len),
        })
    }
}

/// An `index` entry of a materialized view.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Index {
    /// The name PostgreSQL will show: declared with `name=` or derived from the columns.
    pub name: String,
    /// Index elements as written: a plain column name, or SQL such as `(lower(email))`.
    pub elements: Vec<String>,
    pub unique: bool,
    pub using: Option<String>,
    pub predicate: Option<String>,
    pub span: SourceSpan,
}

impl Index {
    /// A unique index on plain columns without a predicate: what `REFRESH … CONCURRENTLY`
    /// requires of a materialized view.
    pub fn allows_concurrent_refresh(&self) -> bool {
        self.unique
            && self.predicate.is_none()
            && self
                .elements
                .iter()
                .all(|element| crate::name::parse_identifier(element).is_ok())
    }
}

/// A `grant` entry: privileges on the object to one role (or `PUBLIC`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Grant {
    /// Upper-case privilege names; `ALL` stays `ALL` until the plan knows the server version.
    pub privileges: Vec<String>,
    pub role: Grantee,
}

/// When `schedule` refreshes a materialized view.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RefreshPolicy {
    pub trigger: RefreshTrigger,
    pub concurrently: bool,
    /// `statement_timeout` for this view's refreshes, overriding the project's.
    pub statement_timeout: Option<Duration>,
    pub span: SourceSpan,
}

/// What makes a refresh due.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RefreshTrigger {
    Every(Duration),
    /// A five-field cron expression, in UTC unless a time zone is given.
    Cron {
        expression: String,
        timezone: Option<chrono_tz::Tz>,
    },
    /// Right after any upstream materialized view is refreshed.
    WithUpstream,
}

impl Project {
    /// Reads and validates the project in `root`: all problems at once, or the project.
    /// Read on a thread with a large stack ([`reader_thread`]).
    pub fn load(root: &Path) -> Result<Project, Problems> {
        std::thread::scope(|scope| {
            let reader = reader_thread().spawn_scoped(scope, || Self::load_here(root));
            match reader {
                Ok(reader) => reader
                    .join()
                    .unwrap_or_else(|panic| std::panic::resume_unwind(panic)),
                Err(_) => Self::load_here(root),
            }
        })
    }

    fn load_here(root: &Path) -> Result<Project, Problems> {
        let mut problems = Vec::new();
        let config = Config::load(root, &mut problems);
        Self::load_with(root, config, problems)
    }

    /// The declarations under `config`, with the problems already found in it.
    fn load_with(
        root: &Path,
        config: Config,
        mut problems: Vec<Problem>,
    ) -> Result<Project, Problems> {
        let views_dir = root.join(&config.views_dir);
        let files = declaration_files(&views_dir, &mut problems);
        let mut declarations: IndexMap<QualifiedName, Declaration> = IndexMap::new();
        let mut files_read = Vec::with_capacity(files.len());
        for path in files {
            let Some(file) = read_source(&path, &mut problems) else {
                continue;
            };
            files_read.push(Arc::clone(&file));
            for declaration in declaration::parse_file(&file, root, &mut problems) {
                if let Some(first) = declarations.get(&declaration.name) {
                    let (line, col) = first.file.line_col(first.name_span.offset());
                    problems.push(
                        Problem::at(
                            &declaration.file,
                            declaration.name_span,
                            format!("`{}` is declared twice", declaration.name),
                            "second declaration",
                        )
                        .with_help(format!(
                            "the first is at {}:{line}:{col}; each view is declared once",
                            first.file.path.display()
                        )),
                    );
                } else {
                    declarations.insert(declaration.name.clone(), declaration);
                }
            }
        }
        for declaration in declarations.values() {
            if declaration.name.schema == config.state_schema {
                problems.push(
                    Problem::at(
                        &declaration.file,
                        declaration.name_span,
                        format!(
                            "`{}` is in `{}`, viewkeeper's own state schema",
                            declaration.name, config.state_schema
                        ),
                        "reserved schema",
                    )
                    .with_help(
                        "declare it in another schema, or set `state-schema` in viewkeeper.kdl",
                    ),
                );
            }
        }
        infer_dependencies(&mut declarations, &config.search_path);
        check_dependencies(&declarations, &mut problems);
        if problems.is_empty() {
            Ok(Project {
                config,
                declarations,
                root: root.to_path_buf(),
                views_dir,
                files: files_read,
            })
        } else {
            Err(Problems::new(problems))
        }
    }

    /// A digest of everything declared, to notice that the declarations changed.
    pub fn fingerprint(&self) -> String {
        let mut text = String::new();
        for declaration in self.declarations.values() {
            text.push_str(&format!(
                "{}|{}|{}|{:?}\n",
                declaration.name,
                declaration.query_sha256,
                declaration.owner.as_deref().unwrap_or(""),
                declaration
                    .depends_on
                    .iter()
                    .map(|d| d.name.to_string())
                    .collect::<Vec<_>>(),
            ));
        }
        query_hash(Kind::View, &text)
    }

    /// The graph of declared objects and the `depends-on` edges between them.
    pub fn graph(&self) -> DependencyGraph {
        declared_graph(&self.declarations)
    }
}

/// The thread declarations are read on. The KDL parser recurses; the pre-scan keeps nesting
/// shallow, and a generous stack (reserved, not used unless needed) is a second guard for
/// input the pre-scan reads differently from the parser.
fn reader_thread() -> std::thread::Builder {
    const READER_STACK: usize = 256 * 1024 * 1024;
    std::thread::Builder::new()
        .name("project-reader".to_owned())
        .stack_size(READER_STACK)
}

/// A project whose settings are read and whose declarations are being read on a thread of
/// their own, so a command can connect and read the catalog meanwhile (reading thousands of
/// declarations takes about as long as the catalog queries).
pub struct ProjectLoad<'p> {
    config: Config,
    source: Source<'p>,
}

enum Source<'p> {
    Reading {
        reader: std::thread::JoinHandle<Result<Project, Problems>>,
        /// Told (or dropped, on a panic) when the reader is done; `None` once heard.
        done: Option<tokio::sync::oneshot::Receiver<()>>,
    },
    Ready(Box<Cow<'p, Project>>),
    /// Read at once (no thread could be started), with mistakes.
    Failed(Problems),
    /// Settings read, declarations not yet: [`ProjectLoad::begin`] starts them.
    Later(PathBuf),
}

impl<'p> ProjectLoad<'p> {
    /// Reads `viewkeeper.kdl` and starts reading the declarations. A mistake in the settings
    /// is reported at once, with any in the declarations.
    pub fn start(root: &Path) -> Result<Self, Problems> {
        let mut load = Self::later(root)?;
        load.begin();
        Ok(load)
    }

    /// Reads `viewkeeper.kdl` only (a mistake in it is reported at once, with any in the
    /// declarations); [`Self::begin`] starts reading the declarations, as does waiting.
    pub fn later(root: &Path) -> Result<Self, Problems> {
        let mut problems = Vec::new();
        let config = Config::load(root, &mut problems);
        if !problems.is_empty() {
            // Reported with the declarations' own, read as `load` reads them.
            return Project::load(root).map(|project| Self::ready(Cow::Owned(project)));
        }
        Ok(Self {
            config,
            source: Source::Later(root.to_path_buf()),
        })
    }

    /// Starts reading the declarations, unless they are read or being read.
    pub fn begin(&mut self) {
        if let Source::Later(root) = &self.source {
            let root = root.clone();
            self.source = Self::reading(&root, &self.config);
        }
    }

    fn reading(root: &Path, config: &Config) -> Source<'p> {
        let (thread_root, thread_config) = (root.to_path_buf(), config.clone());
        let (tell_done, done) = tokio::sync::oneshot::channel();
        match reader_thread().spawn(move || {
            let project = Project::load_with(&thread_root, thread_config, Vec::new());
            let _ = tell_done.send(());
            project
        }) {
            Ok(reader) => Source::Reading {
                reader,
                done: Some(done),
            },
            Err(_) => match Project::load(root) {
                Ok(project) => Source::Ready(Box::new(Cow::Owned(project))),
                Err(problems) => Source::Failed(problems),
            },
        }
    }

    /// A project already read.
    pub fn ready(project: Cow<'p, Project>) -> Self {
        Self {
            config: project.config.clone(),
            source: Source::Ready(Box::new(project)),
        }
    }

    /// The settings, known before the declarations are.
    pub fn config(&self) -> &Config {
        &self.config
    }

    /// Until the declarations are read (at once if they are), without blocking the thread.
    pub async fn read(&mut self) {
        self.begin();
        if let Source::Reading { done, .. } = &mut self.source
            && let Some(receiver) = done.take()
        {
            let _ = receiver.await;
        }
    }

    /// The project, once its declarations are read; or their problems.
    pub fn wait(mut self) -> Result<Cow<'p, Project>, Problems> {
        self.begin();
        match self.source {
            Source::Reading { reader, .. } => reader
                .join()
                .unwrap_or_else(|panic| std::panic::resume_unwind(panic))
                .map(Cow::Owned),
            Source::Ready(project) => Ok(*project),
            Source::Failed(problems) => Err(problems),
            Source::Later(root) => Project::load(&root).map(Cow::Owned),
        }
    }
}

/// Fills each declaration's `inferred` from its query text.
fn infer_dependencies(
    declarations: &mut IndexMap<QualifiedName, Declaration>,
    search_path: &[String],
) {
    let declared: std::collections::BTreeSet<QualifiedName> =
        declarations.keys().cloned().collect();
    let is_declared = |name: &QualifiedName| declared.contains(name);
    for declaration in declarations.values_mut() {
        let names_read = declaration
            .names_read
            .take()
            .unwrap_or_else(|| infer::relations_read(&declaration.query.text));
        declaration.inferred = match names_read {
            Ok(reads) => Some(
                infer::resolve(&reads, search_path, &is_declared)
                    .into_iter()
                    .filter(|name| name != &declaration.name)
                    .collect(),
            ),
            Err(error) => {
                tracing::debug!("cannot infer what `{}` reads: {error}", declaration.name);
                None
            }
        };
    }
}

fn declared_graph(declarations: &IndexMap<QualifiedName, Declaration>) -> DependencyGraph {
    let mut graph = DependencyGraph::default();
    for name in declarations.keys() {
        graph.add_node(name);
    }
    for declaration in declarations.values() {
        for dependency in declaration.reads() {
            if declarations.contains_key(dependency) {
                graph.add_edge(dependency, &declaration.name);
            }
        }
    }
    graph
}

/// Cycles among declared objects, each reported once with its whole path.
fn check_dependencies(
    declarations: &IndexMap<QualifiedName, Declaration>,
    problems: &mut Vec<Problem>,
) {
    for cycle in declared_graph(declarations).cycles() {
        let Some(first) = cycle.first().and_then(|name| declarations.get(name)) else {
            continue;
        };
        let next = cycle.get(1).unwrap_or(&first.name);
        let span = first
            .depends_on
            .iter()
            .find(|dependency| &dependency.name == next)
            .map_or(first.span, |dependency| dependency.span);
        let message = if cycle.len() == 1 {
            format!("{} `{}` depends on itself", first.kind.words(), first.name)
        } else {
            let path: Vec<String> = cycle
                .iter()
                .chain(std::iter::once(&first.name))
                .map(ToString::to_string)
                .collect();
            format!(
                "{} `{}` has a circular dependency: {}",
                first.kind.words(),
                first.name,
                path.join(" -> ")
            )
        };
        problems.push(
            Problem::at(
                &first.file,
                span,
                message,
                "this dependency closes the cycle",
            )
            .with_help("views are created in dependency order, so their dependencies cannot loop"),
        );
    }
}

/// Reads a project file: only a regular file (a FIFO would block, a device never end), and
/// only UTF-8 text, else a problem at the first byte that is not.
pub(super) fn read_source(path: &Path, problems: &mut Vec<Problem>) -> Option<Arc<SourceFile>> {
    let shown = display_path(path);
    match std::fs::metadata(path) {
        Ok(metadata) if metadata.is_file() => {}
        Ok(_) => {
            problems.push(Problem::in_file(
                &shown,
                "not a regular file (a pipe, socket or device?), so it is not read",
            ));
            return None;
        }
        Err(error) => {
            problems.push(Problem::in_file(
                &shown,
                format!("cannot read the file: {error}"),
            ));
            return None;
        }
    }
    let bytes = match std::fs::read(path) {
        Ok(bytes) => bytes,
        Err(error) => {
            problems.push(Problem::in_file(
                &shown,
                format!("cannot read the file: {error}"),
            ));
            return None;
        }
    };
    match String::from_utf8(bytes) {
        Ok(text) => Some(Arc::new(SourceFile::new(shown, text))),
        Err(error) => {
            let valid = error.utf8_error().valid_up_to();
            let text = String::from_utf8_lossy(error.as_bytes()).into_owned();
            let file = SourceFile::new(shown, text);
            problems.push(
                Problem::at(
                    &file,
                    SourceSpan::from((valid, 1)),
                    "the file is not UTF-8 text",
                    "not UTF-8",
                )
                .with_help("save the file as UTF-8"),
            );
            None
        }
    }
}

/// The `.kdl` files under the declaration folder, as [`Project::load`] finds them; `None`
/// when a folder cannot be read.
pub(crate) fn declaration_paths(views_dir: &Path) -> Option<Vec<PathBuf>> {
    let mut problems = Vec::new();
    let files = declaration_files(views_dir, &mut problems);
    problems.is_empty().then_some(files)
}

/// All `.kdl` files under the declaration folder, sorted so runs are reproducible. Symbolic
/// links are followed, but each folder and file is visited once, so a link loop ends.
fn declaration_files(dir: &Path, problems: &mut Vec<Problem>) -> Vec<PathBuf> {
    let mut files = Vec::new();
    let mut visited = std::collections::HashSet::new();
    let mut pending = vec![dir.to_path_buf()];
    while let Some(folder) = pending.pop() {
        let canonical_folder = std::fs::canonicalize(&folder).ok();
        if let Some(canonical) = &canonical_folder
            && !visited.insert(canonical.clone())
        {
            continue;
        }
        let entries = match std::fs::read_dir(&folder) {
            Ok(entries) => entries,
            Err(error) => {
                problems.push(
                    Problem::in_file(
                        &display_path(&folder),
                        format!("cannot read the declaration folder: {error}"),
                    )
                    .with_help("set `views-dir` in viewkeeper.kdl, or pass --project"),
                );
                continue;
            }
        };
        for entry in entries.flatten() {
            let path = entry.path();
            let link = entry.file_type().is_ok_and(|kind| kind.is_symlink());
            let is_dir = if link {
                path.is_dir()
            } else {
                entry.file_type().is_ok_and(|kind| kind.is_dir())
            };
            if is_dir {
                pending.push(path);
            } else if path.extension().is_some_and(|ext| ext == "kdl") {
                // A file reached through two links is read once. Only links need resolving:
                // any other file's real path is its real folder's and its name.
                let canonical = if link {
                    std::fs::canonicalize(&path).ok()
                } else {
                    canonical_folder
                        .as_ref()
                        .map(|folder| folder.join(entry.file_name()))
                };
                if canonical.is_none_or(|canonical| visited.insert(canonical)) {
                    files.push(path);
                }
            }
        }
    }
    files.sort();
    files
}

/// `./views/a.kdl` → `views/a.kdl`: paths in messages as a user would type them.
pub(crate) fn display_path(path: &Path) -> PathBuf {
    path.strip_prefix(".")
        .map(Path::to_path_buf)
        .unwrap_or_else(|_| path.to_path_buf())
}

/// Reads a duration such as `5s`, `15m`, `1h 30m` or `1d`.
pub(crate) fn parse_duration(text: &str) -> Result<Duration, String> {
    humantime::parse_duration(text).map_err(|error| error.to_string())
}
