//! What a refresh runs besides the `REFRESH` itself (which is [`super::ddl::refresh`]).

/// The server's clock, and whether the materialized view `$1` (a `regclass` text) holds
/// data: no row when it is gone.
// language=SQL
pub(crate) const CLOCK_AND_POPULATED: &str =
    "SELECT clock_timestamp(), c.relispopulated FROM pg_class c
     WHERE c.oid = to_regclass($1) AND c.relkind = 'm'";
