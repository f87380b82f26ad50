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
    /// Byte offset of each line's first character, so a position is found without rescanning
    /// the file (a file of thousands of declarations asks for thousands of positions).
    line_starts: Vec<usize>,
}

impl SourceFile {
    pub fn new(path: PathBuf, text: String) -> Self {
        let line_starts = std::iter::once(0)
            .chain(text.match_indices('\n').map(|(at, _)| at + 1))
            .collect();
        Self {
            path,
            text: Arc::new(text),
            line_starts,
        }
    }

    pub(crate) fn named_source(&self) -> NamedSource<Arc<String>> {
        NamedSource::new(self.path.display().to_string(), Arc::clone(&self.text))
            .with_language("kdl")
    }

    /// Length in bytes of 1-based `line`, without its newline.
    fn line_len(&self, line: usize) -> usize {
        let start = self.line_starts.get(line - 1).copied().unwrap_or(0);
        let end = self
            .line_starts
            .get(line)
            .map_or(self.text.len(), |next| next - 1);
        end.saturating_sub(start)
    }

    /// 1-based line and column of a byte offset.
    pub fn line_col(&self, offset: usize) -> (usize, usize) {
        let mut offset = offset.min(self.text.len());
        while !self.text.is_char_boundary(offset) {
            offset -= 1;
        }
        let line = self.line_starts.partition_point(|start| *start <= offset);
        let line_start = self.line_starts[line - 1];
        let col = self.text[line_start..offset].chars().count() + 1;
        (line, col)
    }
}

/// Lines longer than this are not quoted in messages.
const MAX_QUOTED_LINE: usize = 500;

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
    /// For [`Problem::omitted`]: how many further problems were counted but not kept.
    omitted: usize,
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
        // A quoted line is printed whole: past a screenful, say where instead of quoting it.
        let quotable = file.line_len(line) <= MAX_QUOTED_LINE;
        let message = if quotable {
            message.into()
        } else {
            format!("{}:{line}:{col}: {}", file.path.display(), message.into())
        };
        Self {
            message,
            source_code: quotable.then(|| file.named_source()),
            span: quotable.then_some(span),
            label: label.into(),
            help: None,
            location: Some((file.path.clone(), line, col)),
            omitted: 0,
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
            omitted: 0,
        }
    }

    /// Stands for `count` further problems that were found but not kept, so a broken file
    /// cannot flood the output.
    pub(crate) fn omitted(count: usize) -> Self {
        Self {
            message: String::new(),
            source_code: None,
            span: None,
            label: String::new(),
            help: None,
            location: None,
            omitted: count,
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
#[error("{} in the declarations", count(self.total))]
#[diagnostic(code(viewkeeper::invalid_project))]
pub struct Problems {
    /// The first [`MAX_SHOWN`] problems, then one saying how many more there are.
    #[related]
    pub problems: Vec<Problem>,
    /// Every problem found, shown or not.
    pub total: usize,
}

/// More problems than this are counted, not shown: past a hundred, more lines do not help.
pub const MAX_SHOWN: usize = 100;

impl Problems {
    /// Sorted by file and position so output is the same on every run.
    pub(crate) fn new(problems: Vec<Problem>) -> Self {
        let mut omitted: usize = problems.iter().map(|problem| problem.omitted).sum();
        let mut problems: Vec<Problem> = problems
            .into_iter()
            .filter(|problem| problem.omitted == 0)
            .collect();
        problems.sort_by(|a, b| a.sort_key().cmp(&b.sort_key()));
        let total = problems.len() + omitted;
        if problems.len() > MAX_SHOWN {
            omitted += problems.len() - MAX_SHOWN;
            problems.truncate(MAX_SHOWN);
        }
        if omitted > 0 {
            problems.push(Problem {
                message: format!("… and {omitted} more"),
                ..Problem::omitted(0)
            });
        }
        Self { problems, total }
    }
}

fn count(n: usize) -> String {
    if n == 1 {
        "1 problem".to_owned()
    } else {
        format!("{n} problems")
    }
}
