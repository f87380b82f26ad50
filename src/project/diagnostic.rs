//! Problems found in the project's files, each pointing at a file, line and column.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use miette::{Diagnostic, NamedSource, SourceSpan};

/// A file read from the project, kept whole so diagnostics can quote it.
#[derive(Debug, PartialEq, Eq)]
pub struct SourceFile {
    /// The path as the user would type it (relative to the current directory when possible).
    pub path: PathBuf,
    pub text: Arc<String>,
}

impl SourceFile {
    pub fn new(path: PathBuf, text: String) -> Self {
        Self {
            path,
            text: Arc::new(text),
        }
    }

    pub(crate) fn named_source(&self) -> NamedSource<Arc<String>> {
        NamedSource::new(self.path.display().to_string(), Arc::clone(&self.text))
            .with_language("kdl")
    }

    /// 1-based line and column of a byte offset.
    pub fn line_col(&self, offset: usize) -> (usize, usize) {
        let before = &self.text[..offset.min(self.text.len())];
        let line = before.matches('\n').count() + 1;
        let col = before
            .rsplit('\n')
            .next()
            .map_or(0, |last| last.chars().count())
            + 1;
        (line, col)
    }
}

/// One problem in the project's files.
#[derive(Debug, thiserror::Error, Diagnostic)]
#[error("{message}")]
pub struct Problem {
    pub message: String,
    #[source_code]
    source_code: Option<NamedSource<Arc<String>>>,
    #[label("{label}")]
    span: Option<SourceSpan>,
    label: String,
    #[help]
    help: Option<String>,
    /// Where the problem is, for sorting and for tests that want `file:line:col`.
    location: Option<(PathBuf, usize, usize)>,
}

impl Problem {
    /// A problem at `span` in `file`.
    pub(crate) fn at(
        file: &SourceFile,
        span: SourceSpan,
        message: impl Into<String>,
        label: impl Into<String>,
    ) -> Self {
        let (line, col) = file.line_col(span.offset());
        Self {
            message: message.into(),
            source_code: Some(file.named_source()),
            span: Some(span),
            label: label.into(),
            help: None,
            location: Some((file.path.clone(), line, col)),
        }
    }

    /// A problem with a path but no position inside it (an unreadable file, a missing folder).
    pub(crate) fn in_file(path: &Path, message: impl Into<String>) -> Self {
        Self {
            message: format!("{}: {}", path.display(), message.into()),
            source_code: None,
            span: None,
            label: String::new(),
            help: None,
            location: Some((path.to_path_buf(), 0, 0)),
        }
    }

    pub(crate) fn with_help(mut self, help: impl Into<String>) -> Self {
        self.help = Some(help.into());
        self
    }

    /// `path:line:col`, or just the path when there is no position.
    pub fn location(&self) -> Option<String> {
        self.location.as_ref().map(|(path, line, col)| {
            if *line == 0 {
                path.display().to_string()
            } else {
                format!("{}:{line}:{col}", path.display())
            }
        })
    }

    fn sort_key(&self) -> (Option<&PathBuf>, usize, usize) {
        match &self.location {
            Some((path, line, col)) => (Some(path), *line, *col),
            None => (None, 0, 0),
        }
    }
}

/// Every problem found in one run over the project's files.
#[derive(Debug, thiserror::Error, Diagnostic)]
#[error("{} in the declarations", count(self.problems.len()))]
#[diagnostic(code(viewkeeper::invalid_project))]
pub struct Problems {
    #[related]
    pub problems: Vec<Problem>,
}

impl Problems {
    /// Sorted by file and position so output is the same on every run.
    pub(crate) fn new(mut problems: Vec<Problem>) -> Self {
        problems.sort_by(|a, b| a.sort_key().cmp(&b.sort_key()));
        Self { problems }
    }
}

fn count(n: usize) -> String {
    if n == 1 {
        "1 problem".to_owned()
    } else {
        format!("{n} problems")
    }
}
