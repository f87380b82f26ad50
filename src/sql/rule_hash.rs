//! The rule hash: a digest of everything `pg_get_viewdef` prints a view from, read without
//! deparsing the view. Recorded when a view is applied, it tells an unchanged view from a
//! changed one, so a no-op plan deparses only the views whose hash moved.
//!
//! What goes in, and why each part:
//! - the `_RETURN` rule's oid and row version (`xmin`, `ctid`): `CREATE OR REPLACE` writes
//!   a new row version;
//! - each object the rule depends on (`pg_depend`), by its current name: relations with
//!   their schema, whether `search_path` reaches them (which decides whether the name is
//!   printed qualified) and all their live columns (a renamed column changes what is
//!   printed, and one the query does not name can too, through join aliases); everything
//!   else as `pg_describe_object` prints it (functions, operators, types, collations:
//!   qualified exactly when not visible);
//! - the view's own column names (a renamed view column prints as a new alias);
//! - the settings that change how names and constants print, and the server version.
//!
//! Names and columns are summed as 64-bit hashes (each bound to its relation's oid), so no
//! sort is needed. What it cannot see:
//! a new function or operator overload that makes an unqualified call resolve elsewhere
//! (deparsing would then qualify the name) while the called one stays visible.

/// A derived table `(ev_class, hash, read_schemas, read_names)`: the rule hash of every view
/// and materialized view, and the relations its query reads (NULL when none), to join on
/// `ev_class = pg_class.oid`. Set-based (a few hash joins over the catalogs, the
/// settings read once), which costs a fraction of deparsing every view.
macro_rules! rule_hashes_sql {
    () => {
        "(WITH columns AS (
     SELECT a.attrelid,
            sum(hashtextextended(a.attname, (a.attrelid::int8 << 16) + a.attnum)) AS hash
     FROM pg_attribute a
     WHERE a.attnum > 0 AND NOT a.attisdropped
       -- Only relations with rules (views) and what rules read: hashing every table's
       -- columns would make the query grow with the whole schema, not with the views.
       AND a.attrelid IN (SELECT r.ev_class FROM pg_rewrite r
                          UNION ALL
                          SELECT d.refobjid FROM pg_depend d
                          WHERE d.classid = 'pg_rewrite'::regclass
                            AND d.refclassid = 'pg_class'::regclass)
     GROUP BY a.attrelid)
 SELECT r.ev_class,
        md5(concat_ws(' ', r.oid, r.xmin, r.ctid, coalesce(other.names, 0),
                      coalesce(reads.names, 0), own.hash,
                      (SELECT concat_ws(' ', current_setting('server_version'),
                                        current_setting('search_path'),
                                        current_setting('DateStyle'),
                                        current_setting('IntervalStyle'),
                                        current_setting('TimeZone'),
                                        current_setting('extra_float_digits'),
                                        current_setting('bytea_output'),
                                        current_setting('lc_monetary'),
                                        current_setting('quote_all_identifiers'),
                                        current_setting('standard_conforming_strings'))))) AS hash,
        reads.read_schemas, reads.read_names
 FROM pg_rewrite r
 LEFT JOIN columns own ON own.attrelid = r.ev_class
 LEFT JOIN (SELECT d.objid,
                   sum(hashtextextended(pg_describe_object(d.refclassid, d.refobjid, d.refobjsubid),
                                        0)) AS names
            FROM pg_depend d
            WHERE d.classid = 'pg_rewrite'::regclass AND d.refclassid <> 'pg_class'::regclass
            GROUP BY d.objid) other ON other.objid = r.oid
 LEFT JOIN (SELECT pairs.objid,
                   sum(hashtextextended(concat_ws('.', rc.oid, rn.nspname, rc.relname,
                                                  pg_table_is_visible(rc.oid)), 0)
                       + coalesce(read.hash, 0)) AS names,
                   -- What the view reads, for the catalog's edges (aligned arrays).
                   array_agg(rn.nspname::text) AS read_schemas,
                   array_agg(rc.relname::text) AS read_names
            FROM (SELECT DISTINCT d.objid, d.refobjid
                  FROM pg_depend d
                  JOIN pg_rewrite pr ON pr.oid = d.objid AND pr.ev_class <> d.refobjid
                  WHERE d.classid = 'pg_rewrite'::regclass
                    AND d.refclassid = 'pg_class'::regclass) pairs
            JOIN pg_class rc ON rc.oid = pairs.refobjid
            JOIN pg_namespace rn ON rn.oid = rc.relnamespace
            LEFT JOIN columns read ON read.attrelid = rc.oid
            GROUP BY pairs.objid) reads ON reads.objid = r.oid
 WHERE r.rulename = '_RETURN')"
    };
}
pub(crate) use rule_hashes_sql;
