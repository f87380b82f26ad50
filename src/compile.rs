//! Plan → the statements that prove it: every query the plan creates, compiled on the
//! server as a temporary view, in the order reconcile creates them. Pure: no IO.
//!
//! Temporary views live in `pg_temp`, which PostgreSQL searches first for unqualified
//! names, so a view that reads another view of the plan reads its new, compiled version.
//! Schema-qualified references to those views are redirected to `pg_temp` token by token.
//! Materialized views are compiled as plain views: PostgreSQL has no temporary materialized
//! views, and the column list and the errors of the query are the same. Nothing here takes
//! a lock that blocks readers or writers of existing objects.

use std::collections::BTreeMap;

use sqlparser::dialect::PostgreSqlDialect;
use sqlparser::tokenizer::{Token, Tokenizer};

use crate::name::QualifiedName;
use crate::plan::{EmbeddedQuery, Op, Phase, Plan, Statement};
use crate::project::{Kind, Project};
use crate::sql::{ddl, quote_ident};

/// The compile statements for every create in `plan`, in plan order.
pub fn compile_statements(plan: &Plan, project: &Project) -> Vec<Statement> {
    let mut compiled: BTreeMap<QualifiedName, String> = BTreeMap::new();
    let mut statements = Vec::new();
    for step in &plan.steps {
        let (Op::Create { query, options, .. }
        | Op::ReplaceInPlace { query, options, .. }
        | Op::Build { query, options, .. }) = &step.op
        else {
            continue;
        };
        let Some(origin) = &query.origin else {
            continue;
        };
        let first_schema = project.config.search_path.first().map(String::as_str);
        let temp_name = temporary_name(&step.object, &compiled, first_schema);
        // Materialized views are compiled as plain views, which take no storage options.
        let no_options = BTreeMap::new();
        let options = if step.kind == Kind::View {
            options
        } else {
            &no_options
        };
        let (text, shifts) = redirect(&query.text, &compiled);
        let temporary = ddl::create_temporary_view(&temp_name, options, &text);
        statements.push(Statement {
            phase: Phase::Create,
            object: step.object.clone(),
            summary: format!("compile {}", step.kind.words()),
            sql: temporary.sql,
            query: Some(EmbeddedQuery {
                offset_chars: temporary.query_offset,
                text: query.text.clone(),
                origin: origin.clone(),
                shifts,
            }),
            fills: false,
        });
        compiled.insert(step.object.clone(), temp_name);
    }
    statements
}

/// The name in `pg_temp`. An unqualified reference means an object of the first
/// `search-path` schema, so only such an object keeps its own name there (and so is what
/// later unqualified references read). Any other gets a name no query uses, so it cannot
/// shadow a relation of the same name that an unqualified reference really means; the
/// qualified references to it are redirected.
fn temporary_name(
    name: &QualifiedName,
    compiled: &BTreeMap<QualifiedName, String>,
    first_schema: Option<&str>,
) -> String {
    let own = quote_ident(&name.name);
    if first_schema == Some(name.schema.as_str()) && compiled.values().all(|taken| *taken != own) {
        return own;
    }
    let mut n = compiled.len();
    loop {
        let candidate = quote_ident(&format!("viewkeeper_compiled_{n}"));
        if compiled.values().all(|taken| *taken != candidate) {
            return candidate;
        }
        n += 1;
    }
}

/// A stretch of the query text replaced by another of a different length, so that error
/// positions in the sent text map back to the declared text.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Shift {
    /// Character index in the sent text where the replacement starts.
    pub at: usize,
    pub old_len: usize,
    pub new_len: usize,
}

/// Maps a character index of the sent text back to the declared text.
pub fn unshift(shifts: &[Shift], mut index: usize) -> usize {
    for shift in shifts.iter().rev() {
        if index >= shift.at + shift.new_len {
            index = index - shift.new_len + shift.old_len;
        } else if index >= shift.at {
            index = shift.at;
        }
    }
    index
}

/// Rewrites `schema.name` references to views compiled earlier into `pg_temp.<name>`.
fn redirect(text: &str, compiled: &BTreeMap<QualifiedName, String>) -> (String, Vec<Shift>) {
    if compiled.is_empty() {
        return (text.to_owned(), Vec::new());
    }
    let dialect = PostgreSqlDialect {};
    let Ok(tokens) = Tokenizer::new(&dialect, text)
        .with_unescape(false)
        .tokenize_with_location()
    else {
        return (text.to_owned(), Vec::new());
    };
    let significant: Vec<_> = tokens
        .iter()
        .filter(|t| !matches!(t.token, Token::Whitespace(_)))
        .collect();
    let line_starts: Vec<usize> = std::iter::once(0)
        .chain(text.match_indices('\n').map(|(i, _)| i + 1))
        .collect();
    let char_index = |line: u64, column: u64| -> Option<usize> {
        let start = *line_starts.get(usize::try_from(line).ok()?.checked_sub(1)?)?;
        let before = text[..start].chars().count();
        Some(before + usize::try_from(column).ok()?.checked_sub(1)?)
    };
    let mut out = String::with_capacity(text.len());
    let mut shifts = Vec::new();
    let chars: Vec<char> = text.chars().collect();
    let mut copied = 0;
    let mut delta: isize = 0;
    for window in significant.windows(3) {
        let [schema, dot, name] = window else {
            continue;
        };
        let (Token::Word(schema_word), Token::Period, Token::Word(name_word)) =
            (&schema.token, &dot.token, &name.token)
        else {
            continue;
        };
        let folded = |word: &sqlparser::tokenizer::Word| match word.quote_style {
            Some(_) => word.value.clone(),
            None => word.value.to_lowercase(),
        };
        let target = QualifiedName {
            schema: folded(schema_word),
            name: folded(name_word),
        };
        let Some(temp_name) = compiled.get(&target) else {
            continue;
        };
        let (Some(start), Some(end)) = (
            char_index(schema.span.start.line, schema.span.start.column),
            char_index(name.span.end.line, name.span.end.column),
        ) else {
            continue;
        };
        if start < copied || end > chars.len() {
            continue;
        }
        out.extend(&chars[copied..start]);
        let replacement = format!("pg_temp.{temp_name}");
        let new_len = replacement.chars().count();
        shifts.push(Shift {
            at: usize::try_from(isize::try_from(start).unwrap_or(0) + delta).unwrap_or(0),
            old_len: end - start,
            new_len,
        });
        delta += isize::try_from(new_len).unwrap_or(0) - isize::try_from(end - start).unwrap_or(0);
        out.push_str(&replacement);
        copied = end;
    }
    out.extend(&chars[copied..]);
    (out, shifts)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn name(schema: &str, name: &str) -> QualifiedName {
        QualifiedName {
            schema: schema.into(),
            name: name.into(),
        }
    }

    #[test]
    fn redirects_qualified_references_to_compiled_views() {
        let compiled = BTreeMap::from([
            (name("reporting", "sales"), "sales".to_owned()),
            (name("public", "Mixed"), "\"Mixed\"".to_owned()),
        ]);
        let (text, shifts) = redirect(
            "SELECT s.a, reporting.sales.b FROM Reporting.Sales s\nJOIN public.\"Mixed\" m ON true JOIN other.sales o ON true",
            &compiled,
        );
        assert_eq!(
            text,
            "SELECT s.a, pg_temp.sales.b FROM pg_temp.sales s\nJOIN pg_temp.\"Mixed\" m ON true JOIN other.sales o ON true"
        );
        assert_eq!(shifts.len(), 3);
        // `other` in the sent text maps back to `other` in the declared one.
        let declared = "SELECT s.a, reporting.sales.b FROM Reporting.Sales s\nJOIN public.\"Mixed\" m ON true JOIN other.sales o ON true";
        let sent_at = text.find("other").expect("other");
        let declared_at = declared.find("other").expect("other");
        assert_eq!(unshift(&shifts, sent_at), declared_at);
        // Inside a replacement, the start of what it replaced.
        let inside = text.find("pg_temp.sales s").expect("from") + 3;
        let original = declared.find("Reporting.Sales").expect("from");
        assert_eq!(unshift(&shifts, inside), original);
    }

    #[test]
    fn leaves_strings_comments_and_other_names_alone() {
        let compiled = BTreeMap::from([(name("public", "v"), "v".to_owned())]);
        let text = "SELECT 'public.v', a.public, x.v /* public.v */ FROM t -- public.v";
        assert_eq!(redirect(text, &compiled), (text.to_owned(), Vec::new()));
    }
}
