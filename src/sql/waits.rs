//! Who holds the locks viewkeeper waits for: pid, role, application, state, seconds in
//! the transaction, the first line of the query, and what is held.

/// The holder's session, in the column order `sessions` reads (then what is held).
macro_rules! session_columns {
    () => {
        "SELECT DISTINCT a.pid, coalesce(a.usename::text, ''), coalesce(a.application_name, ''),
                    coalesce(a.state, ''),
                    coalesce(extract(epoch FROM now() - coalesce(a.xact_start, a.query_start)), 0)::float8,
                    split_part(coalesce(a.query, ''), E'\\n', 1),
"
    };
}

/// Sessions holding viewkeeper's advisory locks (exclusively), a strong lock on a table, a
/// view or a materialized view (what reading the catalog may wait for: deparsing a view
/// locks what it reads), or a lock that blocks writing a table in the schemas `$1`
/// (viewkeeper's own); in the row order `sessions` reads.
// language=SQL
pub(crate) const HOLDERS: &str = concat!(
    session_columns!(),
    "                    CASE WHEN l.locktype = 'advisory' THEN 'an advisory lock'
                         ELSE format('%s on %s', l.mode, l.relation::regclass) END
             FROM pg_locks l
             JOIN pg_stat_activity a ON a.pid = l.pid
             LEFT JOIN pg_class c ON c.oid = l.relation
             LEFT JOIN pg_namespace n ON n.oid = c.relnamespace
             WHERE l.granted AND l.pid <> pg_backend_pid()
               AND a.datname = current_database()
               AND ((l.locktype = 'advisory' AND l.mode = 'ExclusiveLock')
                    OR (l.locktype = 'relation' AND c.relkind IN ('v', 'm')
                        AND l.mode IN ('AccessExclusiveLock', 'ExclusiveLock'))
                    -- A table blocks a read only held alone: not another session's own
                    -- temporary table, nor a system catalog.
                    OR (l.locktype = 'relation' AND c.relkind IN ('r', 'p', 'f')
                        AND l.mode = 'AccessExclusiveLock' AND c.relpersistence <> 't'
                        AND n.nspname <> 'information_schema' AND n.nspname NOT LIKE 'pg\\_%')
                    OR (l.locktype = 'relation' AND n.nspname = ANY($1::text[])
                        AND l.mode IN ('AccessExclusiveLock', 'ExclusiveLock',
                                       'ShareRowExclusiveLock', 'ShareLock')))
             ORDER BY a.pid"
);

/// Sessions holding any lock on the relation `$1`.`$2`.
// language=SQL
pub(crate) const RELATION_HOLDERS: &str = concat!(
    session_columns!(),
    "                    format('%s on %s', l.mode, l.relation::regclass)
             FROM pg_locks l
             JOIN pg_stat_activity a ON a.pid = l.pid
             JOIN pg_class c ON c.oid = l.relation
             JOIN pg_namespace n ON n.oid = c.relnamespace
             WHERE l.granted AND l.pid <> pg_backend_pid()
               AND a.datname = current_database()
               AND n.nspname = $1 AND c.relname = $2
             ORDER BY a.pid"
);

/// Sessions holding an ACCESS EXCLUSIVE or EXCLUSIVE lock on any table, view or
/// materialized view: what a create waits for when it reads a locked table.
// language=SQL
pub(crate) const STRONG_HOLDERS: &str = concat!(
    session_columns!(),
    "                    format('%s on %s', l.mode, l.relation::regclass)
             FROM pg_locks l
             JOIN pg_stat_activity a ON a.pid = l.pid
             JOIN pg_class c ON c.oid = l.relation
             WHERE l.granted AND l.pid <> pg_backend_pid()
               AND a.datname = current_database()
               AND c.relkind IN ('r', 'p', 'f', 'v', 'm')
               AND c.relnamespace <> 'pg_catalog'::regnamespace
               AND l.mode IN ('AccessExclusiveLock', 'ExclusiveLock')
             ORDER BY a.pid"
);
