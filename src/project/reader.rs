//! Small typed accessors over KDL nodes that record a [`Problem`] instead of failing, so one
//! run reports every mistake in a file.

use std::sync::Arc;

use kdl::{KdlDocument, KdlEntry, KdlNode, KdlValue};
use miette::SourceSpan;

use super::{Problem, SourceFile};

/// Parses a KDL 2.0 document, turning syntax errors into problems in `file`.
pub(super) fn parse_document(
    file: &SourceFile,
    problems: &mut Vec<Problem>,
) -> Option<KdlDocument> {
    if !prescan(file, problems) {
        return None;
    }
    // The plain subset declarations are written in, read fast; anything else (and every
    // error) by the full parser.
    if let Some(document) = super::fast_kdl::parse(&file.text) {
        return Some(document);
    }
    parse_fully(file, problems)
}

/// Mistakes the parser reports in its own terms (or overflows its stack on), found first
/// and reported in ours; false when there were any.
pub(super) fn prescan(file: &SourceFile, problems: &mut Vec<Problem>) -> bool {
    let found = super::scan::prescan(file);
    let clean = found.is_empty();
    problems.extend(found);
    clean
}

/// Parses with the `kdl` crate, which reads all of KDL 2.0 and reports errors in full.
pub(super) fn parse_fully(file: &SourceFile, problems: &mut Vec<Problem>) -> Option<KdlDocument> {
    match KdlDocument::parse_v2(&file.text) {
        Ok(document) => Some(document),
        Err(error) => {
            let total = error.diagnostics.len();
            for diagnostic in error.diagnostics.into_iter().take(super::MAX_SHOWN) {
                let message = diagnostic
                    .message
                    .unwrap_or_else(|| "invalid KDL".to_owned());
                let label = diagnostic.label.unwrap_or_else(|| "here".to_owned());
                let mut problem = Problem::at(file, diagnostic.span, message, label);
                if let Some(help) = diagnostic.help {
                    problem = problem.with_help(help);
                }
                problems.push(problem);
            }
            if total > super::MAX_SHOWN {
                problems.push(Problem::omitted(total - super::MAX_SHOWN));
            }
            None
        }
    }
}

/// One node being read, with the file it came from and the list problems go to.
pub(super) struct NodeReader<'a, 'p> {
    pub node: &'a KdlNode,
    pub file: &'a Arc<SourceFile>,
    pub problems: &'p mut Vec<Problem>,
}

impl<'a, 'p> NodeReader<'a, 'p> {
    pub(super) fn new(
        node: &'a KdlNode,
        file: &'a Arc<SourceFile>,
        problems: &'p mut Vec<Problem>,
    ) -> Self {
        Self {
            node,
            file,
            problems,
        }
    }

    pub(super) fn name(&self) -> &'a str {
        self.node.name().value()
    }

    pub(super) fn error(&mut self, span: SourceSpan, message: impl Into<String>, label: &str) {
        self.problems
            .push(Problem::at(self.file, span, message, label));
    }

    pub(super) fn error_with_help(
        &mut self,
        span: SourceSpan,
        message: impl Into<String>,
        label: &str,
        help: impl Into<String>,
    ) {
        self.problems
            .push(Problem::at(self.file, span, message, label).with_help(help));
    }

    /// Positional entries.
    pub(super) fn arguments(&self) -> Vec<&'a KdlEntry> {
        self.node
            .entries()
            .iter()
            .filter(|entry| entry.name().is_none())
            .collect()
    }

    /// Reports properties other than `allowed` (and repeated ones).
    pub(super) fn allow_properties(&mut self, allowed: &[&str]) {
        let mut seen: Vec<&str> = Vec::new();
        let node_name = self.name();
        for entry in self.node.entries() {
            let Some(key) = entry.name() else { continue };
            let key = key.value();
            if !allowed.contains(&key) {
                let help = if allowed.is_empty() {
                    format!("`{node_name}` takes no properties")
                } else {
                    format!("`{node_name}` accepts: {}", allowed.join(", "))
                };
                self.error_with_help(
                    entry.span(),
                    format!("unknown property `{key}` on `{node_name}`"),
                    "unknown property",
                    help,
                );
            } else if seen.contains(&key) {
                self.error(
                    entry.span(),
                    format!("property `{key}` is given twice"),
                    "repeated",
                );
            }
            seen.push(key);
        }
    }

    /// All positional arguments as strings; at least `min` of them.
    pub(super) fn string_arguments(&mut self, min: usize, what: &str) -> Vec<(String, SourceSpan)> {
        let mut strings = Vec::new();
        for entry in self.arguments() {
            match entry.value() {
                KdlValue::String(text) => strings.push((text.clone(), entry.span())),
                other => self.error(
                    entry.span(),
                    format!("expected a string, found {}", describe(other)),
                    "not a string",
                ),
            }
        }
        if self.arguments().len() < min {
            let node_name = self.name();
            self.error(
                self.node.span(),
                format!("`{node_name}` needs {what}"),
                "missing argument",
            );
        }
        strings
    }

    /// Exactly one positional string argument.
    pub(super) fn single_string(&mut self, what: &str) -> Option<(String, SourceSpan)> {
        let arguments = self.arguments();
        if arguments.len() > 1 {
            let node_name = self.name();
            self.error(
                arguments[1].span(),
                format!("`{node_name}` takes one argument: {what}"),
                "extra argument",
            );
        }
        self.string_arguments(1, what).into_iter().next()
    }

    /// A string property.
    pub(super) fn string_property(&mut self, key: &str) -> Option<(String, SourceSpan)> {
        let entry = self.node.entry(key)?;
        match entry.value() {
            KdlValue::String(text) => Some((text.clone(), entry.span())),
            other => {
                self.error(
                    entry.span(),
                    format!("`{key}` must be a string, found {}", describe(other)),
                    "not a string",
                );
                None
            }
        }
    }

    /// A duration property such as `"15m"`; reports unreadable ones.
    pub(super) fn duration_property(&mut self, key: &str) -> Option<std::time::Duration> {
        let (text, span) = self.string_property(key)?;
        match super::parse_duration(&text) {
            Ok(duration) => Some(duration),
            Err(error) => {
                self.error_with_help(
                    span,
                    format!("invalid duration `{text}`: {error}"),
                    "here",
                    "write durations such as 500ms, 30s, 15m, 1h or 1d",
                );
                None
            }
        }
    }

    /// A boolean property (`#true` / `#false`).
    pub(super) fn bool_property(&mut self, key: &str) -> Option<bool> {
        let entry = self.node.entry(key)?;
        match entry.value() {
            KdlValue::Bool(value) => Some(*value),
            other => {
                self.error_with_help(
                    entry.span(),
                    format!("`{key}` must be #true or #false, found {}", describe(other)),
                    "not a boolean",
                    "KDL 2.0 writes booleans as #true and #false",
                );
                None
            }
        }
    }

    /// Reports children on a node that takes none.
    pub(super) fn no_children(&mut self) {
        if let Some(children) = self.node.children() {
            let node_name = self.name();
            self.error(
                children.span(),
                format!("`{node_name}` takes no children block"),
                "unexpected block",
            );
        }
    }
}

fn describe(value: &KdlValue) -> &'static str {
    match value {
        KdlValue::String(_) => "a string",
        KdlValue::Integer(_) => "a number",
        KdlValue::Float(_) => "a number",
        KdlValue::Bool(_) => "a boolean",
        KdlValue::Null => "#null",
    }
}
