//! A declared query must be exactly one statement: PostgreSQL's lexical rules (strings,
//! dollar quotes, quoted identifiers, nested comments) decide where a `;` really ends one.

use sqlparser::dialect::PostgreSqlDialect;
use sqlparser::tokenizer::{Token, TokenWithSpan, Tokenizer, TokenizerError, Whitespace};

/// What the lexer found after the first statement of a query.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Statements {
    /// One statement; `text` is the query without a final `;` (comments after it stay).
    One { text: String },
    /// A second statement starts after the `;` at this 0-based line and character column.
    More { line: usize, column: usize },
}

/// The tokens of `text` as the SQL parser reads them: lexed once, then split here and parsed
/// by [`super::infer`].
pub(crate) fn tokenize(text: &str) -> Result<Vec<TokenWithSpan>, TokenizerError> {
    Tokenizer::new(&PostgreSqlDialect {}, text).tokenize_with_location()
}

/// Splits `text` at its first top-level `;`, lexing it without decoding string escapes: the
/// fallback when [`tokenize`] fails, so the check never depends on decoding a string. A
/// text the lexer cannot read at all (an unclosed string, say) is returned as it is:
/// PostgreSQL rejects it with a located error, and the server refuses a second statement
/// in any case (extended protocol).
pub(crate) fn single_statement(text: &str) -> Statements {
    match Tokenizer::new(&PostgreSqlDialect {}, text)
        .with_unescape(false)
        .tokenize_with_location()
    {
        Ok(tokens) => split_statements(text, &tokens),
        Err(_) => Statements::One {
            text: text.to_owned(),
        },
    }
}

/// [`single_statement`] of `text` already lexed into `tokens` (by [`tokenize`]).
pub(crate) fn split_statements(text: &str, tokens: &[TokenWithSpan]) -> Statements {
    let Some(semicolon) = tokens.iter().position(|t| t.token == Token::SemiColon) else {
        return Statements::One {
            text: text.to_owned(),
        };
    };
    let location = tokens[semicolon].span.start;
    let line = usize::try_from(location.line)
        .unwrap_or(1)
        .saturating_sub(1);
    let column = usize::try_from(location.column)
        .unwrap_or(1)
        .saturating_sub(1);
    let trailing_only = tokens[semicolon + 1..].iter().all(|t| {
        matches!(
            t.token,
            Token::Whitespace(
                Whitespace::Space
                    | Whitespace::Newline
                    | Whitespace::Tab
                    | Whitespace::SingleLineComment { .. }
                    | Whitespace::MultiLineComment(_)
            ) | Token::SemiColon
                | Token::EOF
        )
    });
    if !trailing_only {
        return Statements::More { line, column };
    }
    // Blank out the final `;` (and any repeated ones) but keep the comments after it, so
    // positions in the text still match the file.
    let mut kept = text.to_owned();
    for token in &tokens[semicolon..] {
        if token.token == Token::SemiColon
            && let Some(at) = byte_index(text, token.span.start.line, token.span.start.column)
        {
            kept.replace_range(at..at + 1, " ");
        }
    }
    Statements::One {
        text: kept.trim_end().to_owned(),
    }
}

/// The byte index of a 1-based line and character column.
fn byte_index(text: &str, line: u64, column: u64) -> Option<usize> {
    let line = usize::try_from(line).ok()?.checked_sub(1)?;
    let column = usize::try_from(column).ok()?.checked_sub(1)?;
    let line_start: usize = text.split_inclusive('\n').take(line).map(str::len).sum();
    let in_line: usize = text[line_start..]
        .chars()
        .take(column)
        .map(char::len_utf8)
        .sum();
    let at = line_start + in_line;
    (text.get(at..at + 1) == Some(";")).then_some(at)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn more(text: &str) -> Option<(usize, usize)> {
        match single_statement(text) {
            Statements::More { line, column } => Some((line, column)),
            Statements::One { .. } => None,
        }
    }

    #[test]
    fn finds_a_second_statement() {
        assert_eq!(more("SELECT 1 AS a; DROP TABLE t"), Some((0, 13)));
        assert_eq!(
            more("SELECT 1\nFROM t;\nCOPY (SELECT 1) TO PROGRAM 'id'"),
            Some((1, 6))
        );
        assert_eq!(more("SELECT 1;;SELECT 2"), Some((0, 8)));
    }

    #[test]
    fn ignores_semicolons_inside_strings_identifiers_and_comments() {
        for text in [
            "SELECT ';' AS a",
            "SELECT E'\\';' AS a",
            "SELECT $x$;$x$ AS a",
            "SELECT $$ ; $$ AS a",
            "SELECT 1 AS \";\"",
            "SELECT 1 -- ; DROP TABLE t",
            "SELECT 1 /* ; /* nested ; */ ; */ AS a",
        ] {
            assert_eq!(more(text), None, "{text}");
        }
    }

    #[test]
    fn allows_a_final_semicolon_and_trailing_comments() {
        assert_eq!(
            single_statement("SELECT 1; -- the end"),
            Statements::One {
                text: "SELECT 1  -- the end".into()
            }
        );
        assert_eq!(
            single_statement("SELECT 1 /* x */;\n/* done */"),
            Statements::One {
                text: "SELECT 1 /* x */ \n/* done */".into()
            }
        );
        assert_eq!(
            single_statement("SELECT 'a;b'"),
            Statements::One {
                text: "SELECT 'a;b'".into()
            }
        );
    }
}
