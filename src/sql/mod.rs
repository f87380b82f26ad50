//! The SQL viewkeeper writes, in one place: small pure builders grouped by job (the DDL of a
//! plan's steps is [`ddl`]), and the one quoting helper they all use. Catalog SELECTs live
//! with the catalog.
//!
//! Every statement viewkeeper builds from user-controlled names goes through the two
//! helpers below, which wrap libpq's own escaping rules (`postgres-protocol`), so no code
//! path hand-writes quotes.

pub(crate) mod ddl;
pub(crate) mod guard;
pub(crate) mod in_sync;
pub(crate) mod pg_cron;
pub(crate) mod privileges;
pub(crate) mod refresh;
pub(crate) mod rule_hash;
pub(crate) mod session;
pub(crate) mod state;
pub(crate) mod waits;

use postgres_protocol::escape;

/// `name` as a double-quoted SQL identifier (`"Sales ""2024"""`).
pub(crate) fn quote_ident(name: &str) -> String {
    escape::escape_identifier(name)
}

/// `text` as a single-quoted SQL literal (switching to `E'…'` when it holds backslashes).
pub(crate) fn quote_literal(text: &str) -> String {
    escape::escape_literal(text)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quotes_identifiers_and_literals() {
        assert_eq!(quote_ident("sales"), "\"sales\"");
        assert_eq!(quote_ident("we\"ird"), "\"we\"\"ird\"");
        assert_eq!(quote_literal("it's"), "'it''s'");
    }
}
