//! The rule hash: a digest of everything `pg_get_viewdef` prints a view from, read without
//! deparsing the view. Recorded when a view is applied, it tells an unchanged view from a
//! changed one, so a no-op plan deparses only the views whose hash moved.
//!
//! What goes in, and why each part:
//! - the `_RETURN` rule's oid and row version (`xmin`, `ctid`): `CREATE OR REPLACE` writes
//!   a new row version;
//! - each object the rule depends on (`pg_depend`), by its current name: relations with
//!   their schema and whether `search_path` reaches them (which decides whether the name is
//!   printed qualified), everything else as `pg_describe_object` prints it (functions,
//!   operators, types, collations: qualified exactly when not visible);
//! - every live column (number and name) of every relation it reads: a renamed column
//!   changes what is printed, and one the query does not name can too (join aliases);
//!   `pg_depend` names a relation by its columns alone when the query names any;
//! - the view's own column names (a renamed view column prints as a new alias);
//! - the settings that change how names and constants print, and the server version.
//!
//! Names and columns are summed as 64-bit hashes, so no sort is needed. What it cannot see:
//! a new function or operator overload that makes an unqualified call resolve elsewhere
//! (deparsing would then qualify the name) while the called one stays visible.

/// A scalar expression: the rule hash of the view or materialized view `c` (a `pg_class`
/// row in scope), NULL for any other relation.
macro_rules! rule_hash_sql {
    () => {
        "(SELECT md5(concat_ws(' ', r.oid, r.xmin, r.ctid,
        (SELECT coalesce(sum(hashtextextended(
                    CASE WHEN d.refclassid = 'pg_class'::regclass
                         THEN concat_ws('.', rn.nspname, rc.relname, pg_table_is_visible(rc.oid),
                                        d.refobjsubid)
                         ELSE pg_describe_object(d.refclassid, d.refobjid, d.refobjsubid) END,
                    0)), 0)
         FROM pg_depend d
         LEFT JOIN pg_class rc ON d.refclassid = 'pg_class'::regclass AND rc.oid = d.refobjid
         LEFT JOIN pg_namespace rn ON rn.oid = rc.relnamespace
         WHERE d.classid = 'pg_rewrite'::regclass AND d.objid = r.oid),
        (SELECT coalesce(sum(hashtextextended(concat_ws('.', ra.attrelid, ra.attnum, ra.attname), 1)), 0)
         FROM pg_attribute ra
         WHERE ra.attrelid IN (SELECT d.refobjid FROM pg_depend d
                               WHERE d.classid = 'pg_rewrite'::regclass AND d.objid = r.oid
                                 AND d.refclassid = 'pg_class'::regclass
                                 AND d.refobjid <> r.ev_class)
           AND ra.attnum > 0 AND NOT ra.attisdropped),
        (SELECT coalesce(sum(hashtextextended(va.attname, va.attnum)), 0)
         FROM pg_attribute va
         WHERE va.attrelid = r.ev_class AND va.attnum > 0 AND NOT va.attisdropped),
        current_setting('server_version'), current_setting('search_path'),
        current_setting('DateStyle'), current_setting('IntervalStyle'),
        current_setting('TimeZone'), current_setting('extra_float_digits'),
        current_setting('bytea_output'), current_setting('lc_monetary'),
        current_setting('quote_all_identifiers'),
        current_setting('standard_conforming_strings')))
 FROM pg_rewrite r
 WHERE r.ev_class = c.oid AND r.rulename = '_RETURN')"
    };
}
pub(crate) use rule_hash_sql;
