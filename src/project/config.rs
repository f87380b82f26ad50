//! `viewkeeper.kdl`: project settings, every key optional.

use std::path::{Path, PathBuf};
use std::time::Duration;

use super::reader::{NodeReader, parse_document};
use super::{CONFIG_FILE, Problem, parse_duration};
use crate::name::parse_identifier;

/// Project settings with their defaults applied.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Config {
    /// Folder of declaration files, relative to the project root.
    pub views_dir: PathBuf,
    /// Schema holding viewkeeper's own bookkeeping.
    pub state_schema: String,
    /// How long reconcile waits for a lock before giving up instead of queueing.
    pub lock_timeout: Duration,
    /// Schemas in the `search_path` of every session, as SQL identifiers (already folded).
    pub search_path: Vec<String>,
    /// `statement_timeout` for refreshes (a view's own `refresh statement-timeout=` wins).
    pub statement_timeout: Option<Duration>,
    /// How materialized views are rebuilt (a declaration's own `rebuild` wins).
    pub rebuild: super::Rebuild,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            views_dir: PathBuf::from("views"),
            state_schema: "viewkeeper".to_owned(),
            lock_timeout: Duration::from_secs(5),
            search_path: vec!["public".to_owned()],
            statement_timeout: None,
            rebuild: super::Rebuild::SideBySide,
        }
    }
}

const KEYS: &[&str] = &[
    "views-dir",
    "state-schema",
    "lock-timeout",
    "search-path",
    "statement-timeout",
    "rebuild",
];

impl Config {
    /// Reads `viewkeeper.kdl` in `root` alone (before the declaration folder exists).
    pub fn load_only(root: &Path) -> Result<Config, super::Problems> {
        let mut problems = Vec::new();
        let config = Config::load(root, &mut problems);
        if problems.is_empty() {
            Ok(config)
        } else {
            Err(super::Problems::new(problems))
        }
    }

    /// Reads `viewkeeper.kdl` in `root` if it exists; problems go to `problems`.
    pub(super) fn load(root: &Path, problems: &mut Vec<Problem>) -> Config {
        let path = root.join(CONFIG_FILE);
        let mut config = Config::default();
        if matches!(std::fs::symlink_metadata(&path), Err(error) if error.kind() == std::io::ErrorKind::NotFound)
        {
            return config;
        }
        let Some(file) = super::read_source(&path, problems) else {
            return config;
        };
        let Some(document) = parse_document(&file, problems) else {
            return config;
        };
        let mut seen = Vec::new();
        for node in document.nodes() {
            let mut reader = NodeReader::new(node, &file, problems);
            let key = reader.name();
            reader.allow_properties(&[]);
            reader.no_children();
            if !KEYS.contains(&key) {
                reader.error_with_help(
                    node.span(),
                    format!("unknown setting `{key}`"),
                    "unknown setting",
                    format!("settings are: {}", KEYS.join(", ")),
                );
                continue;
            }
            if seen.contains(&key) {
                reader.error(node.span(), format!("`{key}` is set twice"), "repeated");
                continue;
            }
            seen.push(key);
            let Some((value, span)) = reader.single_string("a string value") else {
                continue;
            };
            match key {
                "views-dir" => config.views_dir = PathBuf::from(value),
                "state-schema" => match parse_identifier(&value) {
                    Ok(schema) => config.state_schema = schema,
                    Err(error) => {
                        reader.error(span, format!("invalid schema name: {error}"), "here")
                    }
                },
                "lock-timeout" | "statement-timeout" => match parse_duration(&value) {
                    // PostgreSQL takes whole milliseconds up to i32::MAX, and reads 0 as "no limit".
                    Ok(duration)
                        if duration.as_millis() < 1 || duration.as_millis() > i32::MAX as u128 =>
                    {
                        reader.error_with_help(
                            span,
                            format!("`{key}` must be between 1ms and 24 days"),
                            "here",
                            "write durations such as 500ms, 5s or 1m",
                        );
                    }
                    Ok(duration) if key == "lock-timeout" => config.lock_timeout = duration,
                    Ok(duration) => config.statement_timeout = Some(duration),
                    Err(error) => reader.error_with_help(
                        span,
                        format!("invalid duration `{value}`: {error}"),
                        "here",
                        "write durations such as 500ms, 5s or 1m",
                    ),
                },
                "rebuild" => match super::Rebuild::parse(&value) {
                    Some(rebuild) => config.rebuild = rebuild,
                    None => reader.error_with_help(
                        span,
                        format!("unknown rebuild `{value}`"),
                        "here",
                        "write rebuild \"side-by-side\" (the default) or rebuild \"in-place\"",
                    ),
                },
                "search-path" => {
                    let schemas: Result<Vec<String>, _> =
                        value.split(',').map(parse_identifier).collect();
                    match schemas {
                        Ok(schemas) => config.search_path = schemas,
                        Err(error) => reader.error_with_help(
                            span,
                            format!("invalid search path: {error}"),
                            "here",
                            "a comma-separated list of schemas, such as \"app, public\"",
                        ),
                    }
                }
                _ => {}
            }
        }
        config
    }
}
