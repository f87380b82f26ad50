//! viewkeeper's own tables: the DDL that creates them and every read and write of them.
//! State's SELECTs live here too (not with the catalog): they read viewkeeper's tables, whose
//! names are built from the configured schema.

use super::quote_ident;

/// Table of managed objects, inside the configured state schema.
pub(crate) const OBJECTS_TABLE: &str = "managed_object";
/// Table of refreshes, inside the configured state schema.
pub(crate) const REFRESH_TABLE: &str = "refresh_log";
/// At most one row: `run --drop-first` dropped the managed views and no reconcile has
/// restored them yet. Written in the transaction of the drops, cleared in the one that
/// restores, so a killed run leaves a record the next command reports.
pub(crate) const RESTORE_OWED_TABLE: &str = "restore_owed";
/// Materialized views built side by side under a temporary name, waiting for their swap.
/// A row is written in the transaction that builds the copy and deleted in the one that
/// swaps it in (or drops it), so a killed reconcile leaves only recorded copies.
pub(crate) const BUILDS_TABLE: &str = "side_build";

/// Whether the relation named by `$1` (quoted, as [`table`] gives it) exists.
pub(crate) const EXISTS: &str = "SELECT to_regclass($1) IS NOT NULL";

/// `"schema"."table"` for a state table.
pub(crate) fn table(schema: &str, table: &str) -> String {
    format!("{}.{}", quote_ident(schema), quote_ident(table))
}

/// The column of [`OBJECTS_TABLE`] holding each view's rule hash as applied
/// ([`super::rule_hash`]); a table made by an older viewkeeper lacks it.
pub(crate) const RULE_HASH_COLUMN: &str = "applied_rule_hash";

/// DDL creating the state schema and its tables when missing; with `add_rule_hash_column`,
/// also the rule-hash column of a managed-object table made by an older viewkeeper. (Only
/// when missing: `ALTER TABLE` locks the table, which the guard reads in other sessions.)
pub(crate) fn create_schema(schema: &str, add_rule_hash_column: bool) -> String {
    let objects = table(schema, OBJECTS_TABLE);
    let refreshes = table(schema, REFRESH_TABLE);
    let restore_owed = table(schema, RESTORE_OWED_TABLE);
    let builds = table(schema, BUILDS_TABLE);
    let add_column = if add_rule_hash_column {
        format!("\nALTER TABLE {objects} ADD COLUMN IF NOT EXISTS {RULE_HASH_COLUMN} text;")
    } else {
        String::new()
    };
    format!(
        "CREATE SCHEMA IF NOT EXISTS {schema};
CREATE TABLE IF NOT EXISTS {objects} (
    schema_name text NOT NULL,
    object_name text NOT NULL,
    kind text NOT NULL,
    query text NOT NULL,
    query_sha256 text NOT NULL,
    applied_definition text NOT NULL,
    applied_indexes jsonb NOT NULL DEFAULT '[]',
    applied_at timestamptz NOT NULL DEFAULT now(),
    applied_rule_hash text,
    PRIMARY KEY (schema_name, object_name)
);{add_column}
CREATE TABLE IF NOT EXISTS {refreshes} (
    id bigserial PRIMARY KEY,
    schema_name text NOT NULL,
    object_name text NOT NULL,
    started_at timestamptz NOT NULL,
    duration_ms bigint NOT NULL,
    concurrent boolean NOT NULL,
    outcome text NOT NULL,
    error text
);
CREATE INDEX IF NOT EXISTS refresh_log_object_idx ON {refreshes} (schema_name, object_name, started_at);
CREATE TABLE IF NOT EXISTS {restore_owed} (
    single boolean PRIMARY KEY DEFAULT true CHECK (single),
    since timestamptz NOT NULL DEFAULT now()
);
CREATE TABLE IF NOT EXISTS {builds} (
    temp_schema text NOT NULL,
    temp_name text NOT NULL,
    build jsonb NOT NULL,
    started_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (temp_schema, temp_name)
);
{in_sync}",
        schema = quote_ident(schema),
        in_sync = super::in_sync::create_table(schema)
    )
}

/// Every managed object's record. Unordered: the reader keys them by name, and a
/// sequential scan is a third of the cost of reading in key order.
pub(crate) fn select_objects(schema: &str) -> String {
    // language=SQL
    format!(
        "SELECT schema_name, object_name, kind, query, query_sha256, applied_definition,
                applied_indexes::text, applied_at
         FROM {}",
        table(schema, OBJECTS_TABLE)
    )
}

/// A derived table `(schema_name, object_name, rule_hash)` of the managed objects' rule
/// hashes as applied, for the catalog to join; empty when the table has no such column
/// (`with_rule_hashes` false: made by an older viewkeeper, or missing).
pub(crate) fn applied_rule_hashes(schema: &str, with_rule_hashes: bool) -> String {
    if with_rule_hashes {
        format!(
            "(SELECT schema_name, object_name, {RULE_HASH_COLUMN} AS rule_hash FROM {})",
            table(schema, OBJECTS_TABLE)
        )
    } else {
        "(SELECT NULL::text AS schema_name, NULL::text AS object_name, NULL::text AS rule_hash \
         WHERE false)"
            .to_owned()
    }
}

/// Deletes the records of the objects named by `$1` (schemas) and `$2` (names).
pub(crate) fn delete_objects(schema: &str) -> String {
    delete_named(&table(schema, OBJECTS_TABLE), "schema_name", "object_name")
}

/// `DELETE` of the rows of `table` whose (`schema_column`, `name_column`) pair is one of
/// `$1` (schemas) and `$2` (names), parallel arrays: one statement for any number.
fn delete_named(table: &str, schema_column: &str, name_column: &str) -> String {
    // language=SQL
    format!(
        "DELETE FROM {table} t USING unnest($1::text[], $2::text[]) AS d(s, n)
         WHERE t.{schema_column} = d.s AND t.{name_column} = d.n"
    )
}

/// Inserts or replaces the records given as parallel arrays `$1`–`$6` (schema, name, kind,
/// query, query hash, index list as JSON), with the definitions and rule hashes PostgreSQL
/// reports now, read in the same statement that stores them.
pub(crate) fn upsert_objects(schema: &str) -> String {
    // language=SQL
    format!(
        "INSERT INTO {} AS o (schema_name, object_name, kind, query, query_sha256,
                             applied_definition, applied_indexes, applied_at,
                             applied_rule_hash)
         SELECT r.s, r.n, r.kind, r.query, r.sha, pg_get_viewdef(c.oid),
                coalesce((SELECT jsonb_agg(jsonb_build_object(
                              'name', i->>'name', 'sql', i->>'sql',
                              'definition', pg_get_indexdef(ic.oid)))
                          FROM jsonb_array_elements(r.indexes::jsonb) AS i
                          -- Found by a scalar subquery, through pg_class's index on
                          -- (name, schema): as a join, the planner scans pg_class for
                          -- each object (most of 89 ms for 500 objects).
                          CROSS JOIN LATERAL (
                              SELECT (SELECT ic.oid FROM pg_class ic
                                      WHERE ic.relnamespace = c.relnamespace
                                        AND ic.relname = (i->>'name')::name
                                        AND ic.relkind = 'i') AS oid) ic
                          WHERE ic.oid IS NOT NULL), '[]'::jsonb),
                now(), rule.hash
         FROM unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::text[], $6::text[])
              AS r(s, n, kind, query, sha, indexes)
         JOIN pg_namespace ns ON ns.nspname = r.s
         JOIN pg_class c ON c.relnamespace = ns.oid AND c.relname = r.n
         LEFT JOIN {} rule ON rule.ev_class = c.oid
         ON CONFLICT (schema_name, object_name) DO UPDATE SET
             kind = excluded.kind, query = excluded.query, query_sha256 = excluded.query_sha256,
             applied_definition = excluded.applied_definition,
             applied_indexes = excluded.applied_indexes, applied_at = excluded.applied_at,
             applied_rule_hash = excluded.applied_rule_hash",
        table(schema, OBJECTS_TABLE),
        super::rule_hash::rule_hashes_sql!()
    )
}

/// Records the current rule hash of the objects named by `$1` (schemas) and `$2` (names),
/// already recorded as applied, where the live definition still is the applied one.
pub(crate) fn update_rule_hashes(schema: &str) -> String {
    // language=SQL
    format!(
        "UPDATE {} o SET applied_rule_hash = rule.hash
         FROM unnest($1::text[], $2::text[]) AS r(s, n)
         JOIN pg_namespace ns ON ns.nspname = r.s
         JOIN pg_class c ON c.relnamespace = ns.oid AND c.relname = r.n
         JOIN {} rule ON rule.ev_class = c.oid
         WHERE o.schema_name = r.s AND o.object_name = r.n
           -- Read again here: a view changed since the plan read it keeps no hash.
           AND pg_get_viewdef(c.oid) = o.applied_definition",
        table(schema, OBJECTS_TABLE),
        super::rule_hash::rule_hashes_sql!()
    )
}

/// How long the last successful build or refresh of each object took.
pub(crate) fn select_last_builds(schema: &str) -> String {
    // language=SQL
    format!(
        "SELECT DISTINCT ON (schema_name, object_name) schema_name, object_name, duration_ms
         FROM {} WHERE outcome = 'ok'
         ORDER BY schema_name, object_name, started_at DESC",
        table(schema, REFRESH_TABLE)
    )
}

/// Every recorded side-by-side copy, as its JSON document.
pub(crate) fn select_builds(schema: &str) -> String {
    format!("SELECT build::text FROM {}", table(schema, BUILDS_TABLE))
}

/// Deletes the records of the copies named by `$1` (schemas) and `$2` (temporary names).
pub(crate) fn delete_builds(schema: &str) -> String {
    delete_named(&table(schema, BUILDS_TABLE), "temp_schema", "temp_name")
}

/// Records the copies given as parallel arrays `$1`–`$3` (schema, temporary name, JSON).
pub(crate) fn upsert_builds(schema: &str) -> String {
    // language=SQL
    format!(
        "INSERT INTO {} (temp_schema, temp_name, build)
         SELECT s, n, b::jsonb FROM unnest($1::text[], $2::text[], $3::text[]) AS r(s, n, b)
         ON CONFLICT (temp_schema, temp_name) DO UPDATE
             SET build = excluded.build, started_at = now()",
        table(schema, BUILDS_TABLE)
    )
}

/// Records a restore owed; an older record keeps its time.
pub(crate) fn owe_restore(schema: &str) -> String {
    format!(
        "INSERT INTO {} DEFAULT VALUES ON CONFLICT DO NOTHING",
        table(schema, RESTORE_OWED_TABLE)
    )
}

/// Clears the record of a restore owed.
pub(crate) fn settle_restore(schema: &str) -> String {
    format!("DELETE FROM {}", table(schema, RESTORE_OWED_TABLE))
}

/// Since when a restore is owed: no row when none is.
pub(crate) fn restore_owed_since(schema: &str) -> String {
    format!("SELECT since FROM {}", table(schema, RESTORE_OWED_TABLE))
}

/// Appends one refresh: `$1` schema, `$2` name, `$3` start (its duration runs to now, on
/// the server's clock), `$4` concurrently, `$5` outcome, `$6` error.
pub(crate) fn log_refresh(schema: &str) -> String {
    // language=SQL
    format!(
        "INSERT INTO {} (schema_name, object_name, started_at, duration_ms, concurrent, outcome, error)
         VALUES ($1, $2, $3, (extract(epoch FROM clock_timestamp() - $3) * 1000)::int8, $4, $5, $6)",
        table(schema, REFRESH_TABLE)
    )
}

/// Appends successful refreshes given as parallel arrays `$1`–`$4` (schema, name, start,
/// duration in milliseconds).
pub(crate) fn log_refreshes(schema: &str) -> String {
    // language=SQL
    format!(
        "INSERT INTO {} (schema_name, object_name, started_at, duration_ms, concurrent, outcome)
         SELECT s, n, started, duration, false, 'ok'
         FROM unnest($1::text[], $2::text[], $3::timestamptz[], $4::int8[])
              AS r(s, n, started, duration)",
        table(schema, REFRESH_TABLE)
    )
}

/// Per view (or only the one named by `$1`, `$2`): the last success, the last attempt, its
/// duration and error, and the failures since the last success.
pub(crate) fn select_history(schema: &str) -> String {
    let log = table(schema, REFRESH_TABLE);
    // language=SQL
    format!(
        "WITH latest AS (
             SELECT DISTINCT ON (schema_name, object_name)
                    schema_name, object_name, started_at, duration_ms, outcome, error
             FROM {log}
             WHERE $1::text IS NULL OR (schema_name = $1 AND object_name = $2)
             ORDER BY schema_name, object_name, started_at DESC, id DESC),
         last_ok AS (
             SELECT schema_name, object_name, max(started_at) AS at
             FROM {log}
             WHERE outcome = 'ok' AND ($1::text IS NULL OR (schema_name = $1 AND object_name = $2))
             GROUP BY schema_name, object_name)
         SELECT l.schema_name, l.object_name, o.at, l.started_at, l.duration_ms,
                CASE WHEN l.outcome = 'failed' THEN coalesce(l.error, 'failed') END,
                (SELECT count(*) FROM {log} f
                 WHERE f.schema_name = l.schema_name AND f.object_name = l.object_name
                   AND f.outcome = 'failed' AND f.started_at > coalesce(o.at, '-infinity'))::int4
         FROM latest l LEFT JOIN last_ok o USING (schema_name, object_name)"
    )
}

/// Keeps the newest `$1` refreshes of each view.
pub(crate) fn prune_history(schema: &str) -> String {
    let log = table(schema, REFRESH_TABLE);
    // language=SQL
    format!(
        "DELETE FROM {log} WHERE id IN (
             SELECT id FROM (
                 SELECT id, row_number() OVER (PARTITION BY schema_name, object_name
                                               ORDER BY started_at DESC, id DESC) AS position
                 FROM {log}) ranked
             WHERE position > $1)"
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn state_tables_are_quoted_in_every_statement() {
        assert_eq!(table("My \"vk\"", "t"), "\"My \"\"vk\"\"\".\"t\"");
        let ddl = create_schema("Odd", false);
        assert!(
            ddl.starts_with("CREATE SCHEMA IF NOT EXISTS \"Odd\";"),
            "{ddl}"
        );
        assert!(ddl.contains("\"Odd\".\"managed_object\""), "{ddl}");
        assert!(!ddl.contains("ALTER TABLE"), "{ddl}");
        let upgrade = create_schema("Odd", true);
        assert!(
            upgrade.contains(
                "ALTER TABLE \"Odd\".\"managed_object\" ADD COLUMN IF NOT EXISTS applied_rule_hash"
            ),
            "{upgrade}"
        );
        assert_eq!(settle_restore("vk"), "DELETE FROM \"vk\".\"restore_owed\"");
    }
}
