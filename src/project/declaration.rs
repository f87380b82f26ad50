//! Declaration files: `view` and `materialized-view` nodes → [`Declaration`]s.

use std::path::Path;
use std::sync::Arc;

use croner::parser::{CronParser, Seconds, Year};
use kdl::KdlNode;
use miette::SourceSpan;

use super::infer::{NamesRead, relations_read_in};
use super::reader::{NodeReader, parse_fully, prescan};
use super::statement::{Statements, single_statement, split_statements, tokenize};
use super::{
    Declaration, Dependency, Grant, Grantee, Index, Kind, Problem, Query, QueryOrigin,
    RefreshPolicy, RefreshTrigger, SourceFile, display_path,
};
use crate::name::{QualifiedName, is_plain_identifier, parse_identifier};

/// Unqualified names in declarations live in this schema.
const DEFAULT_SCHEMA: &str = "public";

/// Privileges `grant` accepts on views and materialized views: the table privileges
/// (`MAINTAIN` needs PostgreSQL 17) and `ALL`.
const PRIVILEGES: &[&str] = &[
    "SELECT",
    "INSERT",
    "UPDATE",
    "DELETE",
    "TRUNCATE",
    "REFERENCES",
    "TRIGGER",
    "MAINTAIN",
    "ALL",
];

/// The privileges `ALL` grants on a relation of a server with this `server_version_num`.
pub(crate) fn all_privileges(server_version: i32) -> &'static [&'static str] {
    // PRIVILEGES without ALL; MAINTAIN only from PostgreSQL 17 on.
    if server_version >= 170_000 {
        &PRIVILEGES[..8]
    } else {
        &PRIVILEGES[..7]
    }
}

const VIEW_CHILDREN: &[&str] = &[
    "depends-on",
    "query",
    "query-file",
    "grant",
    "comment",
    "owner",
    "with",
];

/// Options PostgreSQL accepts on views (`CREATE VIEW … WITH (…)`).
const VIEW_OPTIONS: &[&str] = &["security_barrier", "security_invoker", "check_option"];
const MATERIALIZED_CHILDREN: &[&str] = &[
    "depends-on",
    "query",
    "query-file",
    "index",
    "grant",
    "comment",
    "owner",
    "populate",
    "refresh",
    "rebuild",
    "with",
];

/// Every declaration in one file; problems go to `problems`.
pub(super) fn parse_file(
    file: &Arc<SourceFile>,
    root: &Path,
    problems: &mut Vec<Problem>,
) -> Vec<Declaration> {
    if !prescan(file, problems) {
        return Vec::new();
    }
    // The plain subset, node by node: a large file is never held as one tree.
    let reported = problems.len();
    let mut declarations = Vec::new();
    let fast = super::fast_kdl::each_node(&file.text, |node| {
        declarations.extend(parse_declaration(&node, file, root, problems));
    });
    if fast.is_some() {
        return declarations;
    }
    // Outside the subset: start again with the full parser.
    problems.truncate(reported);
    declarations.clear();
    let Some(document) = parse_fully(file, problems) else {
        return Vec::new();
    };
    document
        .nodes()
        .iter()
        .filter_map(|node| parse_declaration(node, file, root, problems))
        .collect()
}

fn parse_declaration(
    node: &KdlNode,
    file: &Arc<SourceFile>,
    root: &Path,
    problems: &mut Vec<Problem>,
) -> Option<Declaration> {
    let mut reader = NodeReader::new(node, file, problems);
    let kind = match reader.name() {
        "view" => Kind::View,
        "materialized-view" => Kind::MaterializedView,
        other => {
            reader.error_with_help(
                node.span(),
                format!("unknown node `{other}`"),
                "unknown node",
                "a declaration file holds `view` and `materialized-view` nodes",
            );
            return None;
        }
    };
    reader.allow_properties(&[]);
    let (name_text, name_span) =
        reader.single_string("the view's name, such as \"public.sales\"")?;
    let name = match QualifiedName::parse(&name_text, DEFAULT_SCHEMA) {
        Ok(name) => name,
        Err(error) => {
            reader.error_with_help(
                name_span,
                format!("invalid name `{name_text}`: {error}"),
                "invalid name",
                "names are `schema.name` or `name` (schema public); quote mixed case: \"\\\"Sales\\\"\"",
            );
            return None;
        }
    };

    let mut builder = Builder::new(kind, name, node.span());
    builder.name_span = name_span;
    match node.children() {
        Some(children) => {
            for child in children.nodes() {
                builder.child(NodeReader::new(child, file, problems));
            }
        }
        None => problems.push(Problem::at(
            file,
            node.span(),
            format!("{} `{}` has no body", kind.words(), builder.name),
            "needs a { … } block with a query",
        )),
    }
    builder.finish(file, root, problems)
}

/// Collects a declaration's children, remembering which singletons were seen.
struct Builder {
    kind: Kind,
    name: QualifiedName,
    span: SourceSpan,
    name_span: SourceSpan,
    depends_on: Vec<Dependency>,
    query: Option<(QueryText, SourceSpan)>,
    indexes: Vec<Index>,
    grants: Vec<Grant>,
    comment: Option<String>,
    owner: Option<String>,
    populate: bool,
    rebuild: Option<super::Rebuild>,
    refresh: Option<RefreshPolicy>,
    options: std::collections::BTreeMap<String, String>,
    seen: Vec<String>,
    /// The query could not be read (already reported): do not also say it is missing.
    query_failed: bool,
}

enum QueryText {
    Inline { text: String, span: SourceSpan },
    File { path: String, span: SourceSpan },
}

impl Builder {
    fn new(kind: Kind, name: QualifiedName, span: SourceSpan) -> Self {
        Self {
            kind,
            name,
            span,
            name_span: span,
            depends_on: Vec::new(),
            query: None,
            indexes: Vec::new(),
            grants: Vec::new(),
            comment: None,
            owner: None,
            populate: true,
            rebuild: None,
            refresh: None,
            options: std::collections::BTreeMap::new(),
            seen: Vec::new(),
            query_failed: false,
        }
    }

    fn child(&mut self, mut reader: NodeReader<'_, '_>) {
        let node = reader.node;
        let child = reader.name();
        let allowed = match self.kind {
            Kind::View => VIEW_CHILDREN,
            Kind::MaterializedView => MATERIALIZED_CHILDREN,
        };
        if !allowed.contains(&child) {
            if MATERIALIZED_CHILDREN.contains(&child) {
                reader.error_with_help(
                    node.span(),
                    format!(
                        "`{child}` applies only to materialized views; `{}` is a view",
                        self.name
                    ),
                    "not allowed on a view",
                    "declare it with `materialized-view` to store its rows",
                );
            } else {
                reader.error_with_help(
                    node.span(),
                    format!(
                        "unknown node `{child}` in {} `{}`",
                        self.kind.words(),
                        self.name
                    ),
                    "unknown node",
                    format!(
                        "{} declarations accept: {}",
                        self.kind.words(),
                        allowed.join(", ")
                    ),
                );
            }
            return;
        }
        reader.no_children();
        let singleton = matches!(
            child,
            "query" | "query-file" | "comment" | "owner" | "populate" | "refresh" | "rebuild"
        );
        if singleton {
            let conflicting = if matches!(child, "query" | "query-file") {
                self.seen
                    .iter()
                    .find(|s| *s == "query" || *s == "query-file")
            } else {
                self.seen.iter().find(|s| *s == child)
            };
            if let Some(previous) = conflicting {
                let message = if previous == child {
                    format!("`{child}` is given twice in `{}`", self.name)
                } else {
                    format!("`{}` has both `query` and `query-file`", self.name)
                };
                reader.error_with_help(
                    node.span(),
                    message,
                    "second one",
                    "a declaration has exactly one `query` or one `query-file`",
                );
                self.query_failed |= matches!(child, "query" | "query-file");
                return;
            }
            self.seen.push(child.to_owned());
        }
        match child {
            "depends-on" => {
                reader.allow_properties(&[]);
                for (text, span) in reader.string_arguments(1, "one or more relation names") {
                    match QualifiedName::parse(&text, DEFAULT_SCHEMA) {
                        Ok(name) => self.depends_on.push(Dependency { name, span }),
                        Err(error) => reader.error(
                            span,
                            format!("invalid name `{text}`: {error}"),
                            "invalid name",
                        ),
                    }
                }
            }
            "query" => {
                reader.allow_properties(&[]);
                match reader.single_string("the SQL query") {
                    Some((text, span)) => {
                        self.query = Some((QueryText::Inline { text, span }, span))
                    }
                    None => self.query_failed = true,
                }
            }
            "query-file" => {
                reader.allow_properties(&[]);
                match reader.single_string("a path to a .sql file") {
                    Some((path, span)) => self.query = Some((QueryText::File { path, span }, span)),
                    None => self.query_failed = true,
                }
            }
            "index" => self.index(reader),
            "with" => self.with(reader),
            "grant" => self.grant(reader),
            "comment" => {
                reader.allow_properties(&[]);
                // PostgreSQL stores an empty comment as no comment at all.
                self.comment = reader
                    .single_string("the comment text")
                    .map(|(text, _)| text)
                    .filter(|text| !text.is_empty());
            }
            "owner" => {
                reader.allow_properties(&[]);
                self.owner = reader.single_string("a role name").map(|(text, _)| text);
            }
            "populate" => {
                reader.allow_properties(&[]);
                match reader.arguments().as_slice() {
                    [entry] => match entry.value().as_bool() {
                        Some(populate) => self.populate = populate,
                        None => reader.error_with_help(
                            entry.span(),
                            "`populate` takes #true or #false",
                            "not a boolean",
                            "KDL 2.0 writes booleans as #true and #false",
                        ),
                    },
                    _ => reader.error(
                        node.span(),
                        "`populate` takes one argument: #true or #false",
                        "here",
                    ),
                }
            }
            "refresh" => self.refresh(reader),
            "rebuild" => {
                reader.allow_properties(&[]);
                if let Some((value, span)) =
                    reader.single_string("\"side-by-side\" or \"in-place\"")
                {
                    match super::Rebuild::parse(&value) {
                        Some(rebuild) => self.rebuild = Some(rebuild),
                        None => reader.error_with_help(
                            span,
                            format!("unknown rebuild `{value}`"),
                            "here",
                            "write rebuild \"side-by-side\" or rebuild \"in-place\"",
                        ),
                    }
                }
            }
            _ => {}
        }
    }

    fn index(&mut self, mut reader: NodeReader<'_, '_>) {
        reader.allow_properties(&["unique", "name", "using", "where"]);
        let elements: Vec<String> = reader
            .string_arguments(1, "one or more columns or expressions")
            .into_iter()
            .map(|(text, _)| text.trim().to_owned())
            .collect();
        let unique = reader.bool_property("unique").unwrap_or(false);
        let name = match reader.string_property("name") {
            Some((text, span)) => match parse_identifier(&text) {
                Ok(name) => name,
                Err(error) => {
                    reader.error(span, format!("invalid index name: {error}"), "here");
                    return;
                }
            },
            None => default_index_name(&self.name.name, &elements, unique),
        };
        let using = reader.string_property("using").map(|(text, _)| text);
        let predicate = reader.string_property("where").map(|(text, _)| text);
        if elements.is_empty() {
            return;
        }
        if let Some(previous) = self.indexes.iter().find(|index| index.name == name) {
            let _ = previous;
            reader.error_with_help(
                reader.node.span(),
                format!("index name `{name}` is used twice on `{}`", self.name),
                "same name",
                "give one of them a `name=`",
            );
            return;
        }
        self.indexes.push(Index {
            name,
            elements,
            unique,
            using,
            predicate,
            span: reader.node.span(),
        });
    }

    fn grant(&mut self, mut reader: NodeReader<'_, '_>) {
        reader.allow_properties(&["to"]);
        let mut privileges = Vec::new();
        for (text, span) in reader.string_arguments(1, "one or more privileges, such as \"SELECT\"")
        {
            let privilege = text.trim().to_uppercase();
            let privilege = if privilege == "ALL PRIVILEGES" {
                "ALL".to_owned()
            } else {
                privilege
            };
            if PRIVILEGES.contains(&privilege.as_str()) {
                privileges.push(privilege);
            } else {
                reader.error_with_help(
                    span,
                    format!("unknown privilege `{text}`"),
                    "unknown privilege",
                    format!("privileges are: {}", PRIVILEGES.join(", ")),
                );
            }
        }
        let role = match reader.string_property("to") {
            Some((role, _)) if role.eq_ignore_ascii_case("public") => Grantee::Public,
            Some((role, _)) => Grantee::Role(role),
            None => {
                reader.error_with_help(
                    reader.node.span(),
                    "`grant` needs a role: to=\"ROLE\"",
                    "no role",
                    "for example: grant \"SELECT\" to=\"reporting\"",
                );
                return;
            }
        };
        self.grants.push(Grant { privileges, role });
    }

    /// `with KEY=VALUE…`: storage and security options (`reloptions`).
    fn with(&mut self, mut reader: NodeReader<'_, '_>) {
        if !reader.arguments().is_empty() {
            reader.error_with_help(
                reader.node.span(),
                "`with` takes KEY=VALUE properties only",
                "here",
                "for example: with security_invoker=#true",
            );
        }
        for entry in reader.node.entries() {
            let Some(key) = entry.name() else { continue };
            let key = key.value().to_lowercase();
            let valid = match self.kind {
                Kind::View => VIEW_OPTIONS.contains(&key.as_str()),
                // Storage parameters: fillfactor, autovacuum_*, toast.*, parallel_workers, …
                Kind::MaterializedView => {
                    !key.is_empty()
                        && key.chars().all(|c| {
                            c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_' || c == '.'
                        })
                }
            };
            if !valid {
                let help = match self.kind {
                    Kind::View => format!("views take: {}", VIEW_OPTIONS.join(", ")),
                    Kind::MaterializedView => {
                        "materialized views take storage parameters such as fillfactor or \
                         autovacuum_enabled"
                            .to_owned()
                    }
                };
                reader.error_with_help(
                    entry.span(),
                    format!("unknown option `{key}`"),
                    "here",
                    help,
                );
                continue;
            }
            let value = match entry.value() {
                kdl::KdlValue::Bool(value) => value.to_string(),
                kdl::KdlValue::String(value) => value.clone(),
                kdl::KdlValue::Integer(value) => value.to_string(),
                kdl::KdlValue::Float(value) => value.to_string(),
                kdl::KdlValue::Null => {
                    reader.error(
                        entry.span(),
                        format!("option `{key}` needs a value"),
                        "here",
                    );
                    continue;
                }
            };
            if self.options.insert(key.clone(), value).is_some() {
                reader.error(
                    entry.span(),
                    format!("option `{key}` is given twice"),
                    "repeated",
                );
            }
        }
    }

    fn refresh(&mut self, mut reader: NodeReader<'_, '_>) {
        reader.allow_properties(&[
            "every",
            "cron",
            "timezone",
            "concurrently",
            "with-upstream",
            "statement-timeout",
        ]);
        let span = reader.node.span();
        if !reader.arguments().is_empty() {
            reader.error(
                span,
                "`refresh` takes properties only: every=, cron= or with-upstream=#true",
                "here",
            );
        }
        let concurrently = reader.bool_property("concurrently").unwrap_or(false);
        let every = reader.string_property("every");
        let cron = reader.string_property("cron");
        let timezone = reader.string_property("timezone");
        let with_upstream = reader.bool_property("with-upstream").unwrap_or(false);
        let statement_timeout = reader.duration_property("statement-timeout");
        let chosen =
            usize::from(every.is_some()) + usize::from(cron.is_some()) + usize::from(with_upstream);
        if chosen != 1 {
            reader.error_with_help(
                span,
                "`refresh` needs exactly one of every=, cron= or with-upstream=#true",
                "here",
                "for example: refresh every=\"15m\"",
            );
            return;
        }
        let timezone = match timezone {
            Some((_, zone_span)) if cron.is_none() => {
                reader.error(
                    zone_span,
                    "`timezone` applies only to cron= schedules",
                    "here",
                );
                return;
            }
            Some((zone, zone_span)) => match zone.parse::<chrono_tz::Tz>() {
                Ok(zone) => Some(zone),
                Err(_) => {
                    reader.error_with_help(
                        zone_span,
                        format!("unknown time zone `{zone}`"),
                        "here",
                        "use an IANA zone name such as \"Europe/Paris\" or \"America/New_York\"",
                    );
                    return;
                }
            },
            None => None,
        };
        let trigger = if every.is_some() {
            match reader.duration_property("every") {
                Some(duration) if !duration.is_zero() => RefreshTrigger::Every(duration),
                Some(_) => {
                    let value_span = every.map_or(span, |(_, value_span)| value_span);
                    reader.error(
                        value_span,
                        "a refresh interval must be longer than zero",
                        "here",
                    );
                    return;
                }
                None => return,
            }
        } else if let Some((expression, value_span)) = cron {
            if let Err(error) = parse_cron(&expression) {
                reader.error_with_help(
                    value_span,
                    format!("invalid cron expression `{expression}`: {error}"),
                    "here",
                    "five fields: minute hour day-of-month month day-of-week, such as \"*/15 * * * *\"",
                );
                return;
            }
            RefreshTrigger::Cron {
                expression,
                timezone,
            }
        } else {
            RefreshTrigger::WithUpstream
        };
        self.refresh = Some(RefreshPolicy {
            trigger,
            concurrently,
            statement_timeout,
            span,
        });
    }

    fn finish(
        self,
        file: &Arc<SourceFile>,
        root: &Path,
        problems: &mut Vec<Problem>,
    ) -> Option<Declaration> {
        let read = match self.query {
            Some((QueryText::Inline { text, span }, _)) => {
                one_statement(inline_query(file, span, &text), file, span, problems)
            }
            Some((QueryText::File { path, span }, _)) => {
                query_from_file(file, root, &path, span, problems)
                    .and_then(|query| one_statement(query, file, span, problems))
            }
            None => {
                if !self.query_failed {
                    problems.push(
                        Problem::at(
                            file,
                            self.span,
                            format!("{} `{}` has no query", self.kind.words(), self.name),
                            "no query",
                        )
                        .with_help("add `query \"SELECT …\"` or `query-file \"name.sql\"`"),
                    );
                }
                None
            }
        };
        if let Some(policy) = &self.refresh
            && policy.concurrently
            && !self.indexes.iter().any(Index::allows_concurrent_refresh)
        {
            problems.push(
                Problem::at(
                    file,
                    policy.span,
                    format!("`{}` refreshes concurrently but has no unique index on plain columns", self.name),
                    "concurrently=#true",
                )
                .with_help(
                    "PostgreSQL's REFRESH … CONCURRENTLY needs a unique index on columns, without WHERE: \
                     add index \"col\" unique=#true",
                ),
            );
        }
        let (query, names_read) = read?;
        Some(Declaration {
            kind: self.kind,
            name: self.name,
            depends_on: self.depends_on,
            inferred: None,
            names_read: Some(names_read),
            query_sha256: crate::objects::query_hash(self.kind, &query.text),
            query,
            indexes: self.indexes,
            grants: self.grants,
            comment: self.comment,
            owner: self.owner,
            populate: self.populate,
            rebuild: self.rebuild,
            refresh: self.refresh,
            options: self.options,
            file: Arc::clone(file),
            span: self.span,
            name_span: self.name_span,
        })
    }
}

/// An inline `query` string: KDL has already dedented multi-line strings, whose text starts
/// on the line after the opening quotes.
fn inline_query(file: &Arc<SourceFile>, span: SourceSpan, text: &str) -> Query {
    let entry_text = file
        .text
        .get(span.offset()..span.offset() + span.len())
        .unwrap_or("");
    let value_start = entry_text.find(['"', '#']).unwrap_or(0);
    let value_text = &entry_text[value_start..];
    let multiline = value_text.trim_start_matches('#').starts_with("\"\"\"");
    let (line, column) = file.line_col(span.offset() + value_start);
    let (text, skipped_lines) = normalise_query(text);
    let hashes = value_text.chars().take_while(|c| *c == '#').count();
    // Raw strings (`#"…"#`) hold no escapes; in other strings a backslash means one.
    let exact = hashes > 0 || !value_text.contains('\\');
    let origin = if multiline {
        QueryOrigin {
            file: Arc::clone(file),
            first_line: line + 1 + skipped_lines,
            first_column: None,
            exact,
        }
    } else {
        QueryOrigin {
            file: Arc::clone(file),
            first_line: line + skipped_lines,
            first_column: (skipped_lines == 0).then_some(column + hashes + 1),
            exact,
        }
    };
    Query { text, origin }
}

/// Refuses a query that holds more than one statement, pointing at the `;` that ends the
/// first; drops a final `;`. Also gives what the query names: the lexer's tokens serve both.
fn one_statement(
    query: Query,
    file: &Arc<SourceFile>,
    span: SourceSpan,
    problems: &mut Vec<Problem>,
) -> Option<(Query, NamesRead)> {
    let tokens = tokenize(&query.text);
    let statements = match &tokens {
        Ok(tokens) => split_statements(&query.text, tokens),
        Err(_) => single_statement(&query.text),
    };
    match statements {
        Statements::One { text } => {
            let names_read = tokens
                .map_err(|error| sqlparser::parser::ParserError::from(error).to_string())
                .and_then(relations_read_in);
            Some((Query { text, ..query }, names_read))
        }
        Statements::More { line, column } => {
            let problem = match query.origin.spot(&query.text, line, column) {
                Some(spot) => Problem::at(
                    &query.origin.file,
                    SourceSpan::new(spot.span.offset().into(), 1),
                    "a query must be one statement, but this `;` starts another",
                    "the first statement ends here",
                ),
                None => Problem::at(
                    file,
                    span,
                    "a query must be one statement, but it holds several",
                    "this query",
                ),
            };
            problems.push(problem.with_help(
                "a view is one SELECT (or VALUES, or WITH … SELECT); remove what follows the `;`",
            ));
            None
        }
    }
}

fn query_from_file(
    file: &Arc<SourceFile>,
    root: &Path,
    relative: &str,
    span: SourceSpan,
    problems: &mut Vec<Problem>,
) -> Option<Query> {
    let base = file.path.parent().unwrap_or(Path::new(""));
    let path = display_path(&base.join(relative));
    let cannot_read = |error: std::io::Error| {
        Problem::at(
            file,
            span,
            format!("cannot read query file {}: {error}", path.display()),
            "this file",
        )
        .with_help("query-file paths are relative to the .kdl file that names them")
    };
    // Only files inside the project: a declaration must not make viewkeeper read (and print
    // in an error) a file such as ~/.pgpass. Checked after `..` and symlinks are resolved.
    let resolved = match (path.canonicalize(), root.canonicalize()) {
        (Ok(resolved), Ok(root)) if resolved.starts_with(&root) => resolved,
        (Ok(_), Ok(root)) => {
            problems.push(
                Problem::at(
                    file,
                    span,
                    format!(
                        "query file {} is outside the project folder {}",
                        path.display(),
                        display_path(&root).display()
                    ),
                    "outside the project",
                )
                .with_help("keep query files inside the project folder; it was not read"),
            );
            return None;
        }
        (Err(error), _) | (_, Err(error)) => {
            problems.push(cannot_read(error));
            return None;
        }
    };
    match std::fs::read_to_string(&resolved) {
        Ok(text) => {
            let (query, skipped_lines) = normalise_query(&text);
            if query.is_empty() {
                problems.push(Problem::at(
                    file,
                    span,
                    format!("query file {} is empty", path.display()),
                    "empty file",
                ));
                return None;
            }
            Some(Query {
                text: query,
                origin: QueryOrigin {
                    file: Arc::new(SourceFile::new(path, text)),
                    first_line: 1 + skipped_lines,
                    first_column: None,
                    exact: true,
                },
            })
        }
        Err(error) => {
            problems.push(cannot_read(error));
            None
        }
    }
}

/// Parses a standard five-field cron expression (no seconds, no years).
pub(crate) fn parse_cron(expression: &str) -> Result<croner::Cron, croner::errors::CronError> {
    CronParser::builder()
        .seconds(Seconds::Disallowed)
        .year(Year::Disallowed)
        .build()
        .parse(expression)
}

/// Canonical query text (`\n` line endings, no leading blank lines, no trailing blanks or
/// final `;`) and how many leading lines were dropped.
pub(crate) fn normalise_query(text: &str) -> (String, usize) {
    let text = text.replace("\r\n", "\n");
    let mut lines: Vec<&str> = text.lines().map(str::trim_end).collect();
    let skipped = lines.iter().take_while(|line| line.is_empty()).count();
    lines.drain(..skipped);
    while lines.last().is_some_and(|line| line.is_empty()) {
        lines.pop();
    }
    let mut joined = lines.join("\n");
    while joined.ends_with(';') {
        joined.pop();
        let trimmed = joined.trim_end().len();
        joined.truncate(trimmed);
    }
    (joined, skipped)
}

/// PostgreSQL-style default index name: `sales_summary_seller_no_invoice_date_key`.
fn default_index_name(relation: &str, elements: &[String], unique: bool) -> String {
    let columns: Vec<String> = elements
        .iter()
        .map(|element| {
            let lowered = element.to_lowercase();
            if is_plain_identifier(&lowered) {
                lowered
            } else {
                "expr".to_owned()
            }
        })
        .collect();
    let suffix = if unique { "key" } else { "idx" };
    let mut name = format!("{relation}_{}_{suffix}", columns.join("_"));
    if name.len() > 63 {
        // Keep the suffix, as PostgreSQL does, so the kind of index stays visible.
        let mut keep = 63 - suffix.len() - 1;
        while !name.is_char_boundary(keep) {
            keep -= 1;
        }
        name = format!("{}_{suffix}", &name[..keep]);
    }
    name
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn normalises_query_text() {
        assert_eq!(
            normalise_query("\n\nSELECT 1;  \n\n"),
            ("SELECT 1".to_owned(), 2)
        );
        assert_eq!(
            normalise_query("SELECT 1\r\nFROM t ;"),
            ("SELECT 1\nFROM t".to_owned(), 0)
        );
    }

    #[test]
    fn all_privileges_follow_the_server_version() {
        assert_eq!(all_privileges(150_000).last(), Some(&"TRIGGER"));
        assert_eq!(all_privileges(170_000).last(), Some(&"MAINTAIN"));
        assert!(!all_privileges(170_000).contains(&"ALL"));
    }

    #[test]
    fn derives_index_names() {
        assert_eq!(
            default_index_name(
                "sales_summary",
                &["seller_no".into(), "invoice_date".into()],
                true
            ),
            "sales_summary_seller_no_invoice_date_key"
        );
        assert_eq!(
            default_index_name("t", &["(lower(x))".into()], false),
            "t_expr_idx"
        );
        assert!(default_index_name(&"a".repeat(60), &["b".into()], false).len() <= 63);
    }
}
