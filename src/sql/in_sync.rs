//! The in-sync record ([`crate::in_sync`]): its table, and the catalog fingerprint it is
//! checked against.
//!
//! The fingerprint digests every row version (`ctid`, `xmin`) of the catalogs a plan reads:
//! any `CREATE`, `ALTER`, `DROP`, `COMMENT` or `GRANT` writes a new row version or removes
//! one, so equal fingerprints mean the catalog holds the very rows it held. Only in-place
//! updates escape it (statistics, frozen transaction ids), which no plan reads. Relations
//! are digested by the columns a plan reads, so a refresh is not a change.
//! `pg_depend` is left out (the largest catalog): its rows change only with the objects
//! they link, whose own rows are digested.

use super::quote_literal;
use super::state::{BUILDS_TABLE, OBJECTS_TABLE, RESTORE_OWED_TABLE, table};

/// The table of the in-sync record, inside the state schema: at most one row. Its name
/// carries the version of its shape: a viewkeeper that records differently makes a table
/// of its own rather than misreading another's.
pub(crate) const TABLE: &str = "in_sync_v1";

/// The catalogs whose rows a plan reads, directly or through the functions it calls
/// (`pg_get_viewdef`, `pg_get_indexdef`, `format_type`, `pg_describe_object`): columns,
/// rules, indexes, comments, triggers, grants, and every kind of object a view's query can
/// name; each with the rows that count. Rows that belong to a relation count only for the
/// `relevant` ones: views, materialized views (relations with rules) and what their queries
/// read, so a database of thousands of tables does not make the fingerprint slower than
/// the plan. Other sessions' temporary objects come and go, and no
/// view reads them.
const CATALOGS: &[(&str, &str)] = &[
    ("pg_attribute", "attrelid IN (SELECT oid FROM relevant)"),
    ("pg_rewrite", "true"),
    ("pg_index", "indrelid IN (SELECT oid FROM relevant)"),
    ("pg_trigger", "tgrelid IN (SELECT oid FROM relevant)"),
    (
        "pg_constraint",
        "conrelid = 0 OR conrelid IN (SELECT oid FROM relevant)",
    ),
    (
        "pg_description",
        "classoid <> 'pg_catalog.pg_class'::regclass
         OR objoid IN (SELECT oid FROM relevant)",
    ),
    // A session's first temporary table makes its temporary schemas, kept for the next
    // session in its slot.
    ("pg_namespace", "nspname !~ '^pg_(toast_)?temp_'"),
    // The row types of other relations go with their relations (digested below).
    (
        "pg_type",
        "(typrelid = 0 OR typrelid IN (SELECT oid FROM relevant))
         AND typnamespace NOT IN (SELECT oid FROM pg_catalog.pg_namespace
                                  WHERE nspname ~ '^pg_(toast_)?temp_')",
    ),
    ("pg_default_acl", "true"),
    ("pg_proc", "true"),
    ("pg_operator", "true"),
    ("pg_collation", "true"),
    ("pg_cast", "true"),
    ("pg_am", "true"),
    ("pg_opclass", "true"),
    ("pg_opfamily", "true"),
    ("pg_ts_config", "true"),
    ("pg_ts_dict", "true"),
    ("pg_extension", "true"),
    ("pg_event_trigger", "true"),
    ("pg_auth_members", "true"),
    // Enum labels print in index predicates and expressions (`'a'::mood`).
    ("pg_enum", "true"),
];

/// A row's version, as a number: its place (`ctid`) and the transaction that wrote it.
const ROW_VERSION: &str = "hashtidextended(ctid, xmin::text::int8)";

/// Settings that change how the catalog prints names and constants.
const SETTINGS: &[&str] = &[
    "server_version_num",
    "search_path",
    "DateStyle",
    "IntervalStyle",
    "TimeZone",
    "extra_float_digits",
    "bytea_output",
    "lc_monetary",
    "quote_all_identifiers",
    "standard_conforming_strings",
];

/// DDL creating the record's table when missing (part of the state schema's).
pub(crate) fn create_table(schema: &str) -> String {
    format!(
        "CREATE TABLE IF NOT EXISTS {} (
    single boolean PRIMARY KEY DEFAULT true CHECK (single),
    sources text NOT NULL,
    catalog text NOT NULL,
    query_files text[] NOT NULL,
    declared integer NOT NULL,
    warnings jsonb NOT NULL,
    shown_root text NOT NULL,
    recorded_at timestamptz NOT NULL DEFAULT now()
);",
        table(schema, TABLE)
    )
}

/// One expression: the fingerprint of the catalog as the statement sees it. Besides the
/// catalogs: viewkeeper's own tables (but not the record itself, nor the refresh history,
/// which a plan with nothing to do does not show), the roles (owners print by name), the
/// database's own privileges, the user, and the settings.
pub(crate) fn catalog_fingerprint(state_schema: &str) -> String {
    let row_versions = |relation: &str, rows: &str| {
        format!("(SELECT coalesce(bit_xor({ROW_VERSION}), 0) FROM {relation} WHERE {rows})")
    };
    let mut parts: Vec<String> = CATALOGS
        .iter()
        .map(|(catalog, rows)| row_versions(&format!("pg_catalog.{catalog}"), rows))
        .collect();
    // Materialized views and their indexes by what a plan reads of them, not by row
    // version: a refresh writes new versions (another file node, and another TOAST table,
    // left out with every TOAST table), and must not count as a change.
    parts.push(format!(
        "(SELECT coalesce(bit_xor(
                     CASE WHEN c.relkind = 'm' OR c.oid IN (SELECT oid FROM refreshed)
                          THEN hashtextextended((c.oid, c.relname, c.relnamespace, c.relkind,
                                                 c.relowner, c.relacl, c.reloptions,
                                                 c.relispopulated, c.relpersistence, c.relam,
                                                 c.reltablespace, c.reltype, c.relnatts)::text, 0)
                          ELSE {ROW_VERSION} END), 0)
          FROM pg_catalog.pg_class c
          WHERE c.relpersistence <> 't' AND c.relnamespace <> 'pg_toast'::regnamespace)"
    ));
    for own in [OBJECTS_TABLE, BUILDS_TABLE, RESTORE_OWED_TABLE] {
        parts.push(row_versions(&table(state_schema, own), "true"));
    }
    parts.push("(SELECT bit_xor(hashtextextended(r::text, 0)) FROM pg_catalog.pg_roles r)".into());
    parts.push(
        "(SELECT datdba::text || ' ' || coalesce(datacl::text, '') FROM pg_catalog.pg_database
          WHERE datname = current_database())"
            .into(),
    );
    parts.extend(
        SETTINGS
            .iter()
            .map(|setting| format!("current_setting('{setting}')")),
    );
    parts.push("current_user".into());
    format!(
        "(WITH refreshed AS MATERIALIZED (
              SELECT i.indexrelid AS oid FROM pg_catalog.pg_index i
              JOIN pg_catalog.pg_class t ON t.oid = i.indrelid AND t.relkind = 'm'),
          relevant AS MATERIALIZED (
              SELECT ev_class AS oid FROM pg_catalog.pg_rewrite
              UNION
              -- What views read.
              SELECT refobjid FROM pg_catalog.pg_depend
              WHERE classid = 'pg_catalog.pg_rewrite'::regclass
                AND refclassid = 'pg_catalog.pg_class'::regclass
              UNION
              -- Materialized views' indexes (their columns hold operator class options),
              -- and what their expressions name.
              SELECT oid FROM refreshed
              UNION
              SELECT d.refobjid FROM pg_catalog.pg_depend d
              JOIN refreshed ON refreshed.oid = d.objid
              WHERE d.classid = 'pg_catalog.pg_class'::regclass
                AND d.refclassid = 'pg_catalog.pg_class'::regclass
              UNION
              -- viewkeeper's own tables, whose columns a plan reads by name.
              SELECT c.oid FROM pg_catalog.pg_class c
              JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
              WHERE n.nspname IN ({}, {}))
          SELECT md5(concat_ws(' ', {})))",
        quote_literal(state_schema),
        quote_literal(&crate::guard::guard_schema(state_schema)),
        parts.join(",\n ")
    )
}

/// Whether reconcile's advisory lock (key `$1`) is free to share, taken then if it is,
/// and whether the record's table (`$2`, quoted) exists.
pub(crate) const LOCKED_AND_PRESENT: &str =
    "SELECT pg_try_advisory_xact_lock_shared($1), to_regclass($2) IS NOT NULL";

/// The record.
pub(crate) fn select(state_schema: &str) -> String {
    format!(
        "SELECT sources, query_files, declared, warnings::text, shown_root, catalog,
                recorded_at::text
         FROM {}",
        table(state_schema, TABLE)
    )
}

/// Replaces the record: `$1` sources, `$2` catalog fingerprint, `$3` query files,
/// `$4` declared, `$5` warnings (JSON), `$6` the project folder as warnings show it.
pub(crate) fn upsert(state_schema: &str) -> String {
    format!(
        "INSERT INTO {} (sources, catalog, query_files, declared, warnings, shown_root)
         VALUES ($1, $2, $3, $4, $5::text::jsonb, $6)
         ON CONFLICT (single) DO UPDATE
         SET sources = excluded.sources, catalog = excluded.catalog,
             query_files = excluded.query_files, declared = excluded.declared,
             warnings = excluded.warnings, shown_root = excluded.shown_root,
             recorded_at = now()",
        table(state_schema, TABLE)
    )
}

/// The record, when it is the one of sources `$1` and catalog fingerprint `$2`.
pub(crate) fn select_matching(state_schema: &str) -> String {
    format!(
        "SELECT 1 FROM {} WHERE sources = $1 AND catalog = $2",
        table(state_schema, TABLE)
    )
}

/// Removes the record (a reconcile that left something to do).
pub(crate) fn delete(state_schema: &str) -> String {
    format!("DELETE FROM {}", table(state_schema, TABLE))
}

/// `SELECT <fingerprint>`, taken before a plan reads the catalog.
pub(crate) fn select_fingerprint(state_schema: &str) -> String {
    format!("SELECT {}", catalog_fingerprint(state_schema))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_state_schema_is_quoted() {
        let fingerprint = select_fingerprint("Odd\"schema");
        assert!(
            fingerprint.contains("\"Odd\"\"schema\".\"managed_object\""),
            "{fingerprint}"
        );
        assert!(
            fingerprint.contains("IN ('Odd\"schema', 'Odd\"schema_guard')"),
            "{fingerprint}"
        );
        let record = select("Odd\"schema");
        assert!(
            record.contains("\"Odd\"\"schema\".\"in_sync_v1\""),
            "{record}"
        );
    }
}
