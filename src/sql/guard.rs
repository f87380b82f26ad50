//! The guard's statements: its schema, log, trigger functions and event triggers, and the
//! reads and writes of its tables. The names of its objects live here too.

use super::state::{OBJECTS_TABLE, table};
use super::{quote_ident, quote_literal};

/// Table of recorded drops, inside the guard's schema.
pub const DROP_TABLE: &str = "drop_log";
/// The channel the guard notifies on, with `schema.name` as payload.
pub const CHANNEL: &str = "viewkeeper_dropped";
/// Set to `on` for the length of viewkeeper's own transactions, so its drops go unrecorded.
pub const APPLYING_SETTING: &str = "viewkeeper.applying";
/// Set to `on` (through `PGOPTIONS`) in the sessions of a migration that `viewkeeper run`
/// starts: a protecting guard lets them drop managed views, which viewkeeper restores after.
pub const MIGRATING_SETTING: &str = "viewkeeper.migrating";
/// The `sql_drop` event trigger, which [`installed`] looks for by name (`$1`).
pub(crate) const TRIGGER: &str = "viewkeeper_guard";
const FUNCTION: &str = "record_drop";
/// With `--protect`: the event trigger that notes what viewkeeper creates, its function, and
/// the table of managed views (by OID) it keeps in the guard's own schema.
const CREATE_TRIGGER: &str = "viewkeeper_guard_create";
const CREATE_FUNCTION: &str = "record_create";
const PROTECTED_TABLE: &str = "protected_object";

/// The guard's own schema, `<state-schema>_guard`. It is kept apart from the state schema,
/// which the application role owns: the trigger function runs with its installer's rights
/// (a superuser), so nothing it touches may be changeable by anyone else.
pub fn guard_schema(state_schema: &str) -> String {
    format!("{state_schema}_guard")
}

/// `"<state>_guard"."drop_log"`.
pub fn log_table(state_schema: &str) -> String {
    table(&guard_schema(state_schema), DROP_TABLE)
}

/// While the installer runs, nothing in the application's schemas is looked up.
pub(crate) const SAFE_SEARCH_PATH: &str = "SET LOCAL search_path = pg_catalog, pg_temp";

/// The owner of schema `$1`, and the current user.
pub(crate) const SCHEMA_OWNER: &str = "SELECT pg_get_userbyid(nspowner)::text, current_user::text FROM pg_namespace WHERE nspname = $1";

/// Whether the event trigger named `$1` exists and is enabled.
// language=SQL
pub(crate) const INSTALLED: &str =
    "SELECT count(*) > 0 FROM pg_event_trigger WHERE evtname = $1 AND evtenabled <> 'D'";

/// SQL creating the guard's schema, log table, trigger function and event trigger. The
/// function reads nothing but PostgreSQL's own list of dropped objects, the session's
/// settings and the guard's own tables, and writes only to those tables, so it cannot be
/// steered by tables other roles own.
///
/// With `protect`, a second event trigger notes the views viewkeeper creates (its sessions
/// set [`APPLYING_SETTING`]), and a drop outside viewkeeper and `viewkeeper run` that would
/// remove one of them raises, which aborts the dropping transaction. The settings are the
/// sessions' own, so this keeps accidents out (a migration's CASCADE), not a role that
/// wants to drop: such a role can set them, as it could drop the guard's views anyway.
pub(crate) fn install(state_schema: &str, protect: bool) -> String {
    let schema = quote_ident(&guard_schema(state_schema));
    let log = log_table(state_schema);
    let protected = table(&guard_schema(state_schema), PROTECTED_TABLE);
    let function = format!("{schema}.{}", quote_ident(FUNCTION));
    let create_function = format!("{schema}.{}", quote_ident(CREATE_FUNCTION));
    // Dropped views leave the protected list, so a reused OID is never protected by mistake.
    let forget_own = if protect {
        format!(
            "DELETE FROM {protected} p USING pg_catalog.pg_event_trigger_dropped_objects() d
        WHERE p.relid = d.objid;"
        )
    } else {
        String::new()
    };
    let refuse = if protect {
        format!(
                "IF coalesce(current_setting({migrating}, true), '') <> 'on' THEN
        SELECT string_agg(pg_catalog.quote_ident(d.schema_name) || '.' ||
                          pg_catalog.quote_ident(d.object_name), ', '
                          ORDER BY d.schema_name, d.object_name)
        INTO lost
        FROM pg_catalog.pg_event_trigger_dropped_objects() d
        JOIN {protected} p ON p.relid = d.objid;
        IF lost IS NOT NULL THEN
            RAISE EXCEPTION 'viewkeeper''s guard refuses to drop managed views: %', lost
                USING ERRCODE = 'dependent_objects_still_exist',
                      HINT = 'run the migration through `viewkeeper run -- COMMAND`, which restores them after it; or SET {migrating_name} = on in this session, drop, and run `viewkeeper reconcile` after';
        END IF;
    END IF;
    {forget_own}",
                migrating = quote_literal(MIGRATING_SETTING),
                migrating_name = MIGRATING_SETTING,
            )
    } else {
        String::new()
    };
    let body = format!(
        "
DECLARE
    dropped record;
    lost text;
BEGIN
    IF current_setting({applying}, true) = 'on' THEN
        {forget_own}
        RETURN;
    END IF;
    {refuse}
    FOR dropped IN
        SELECT d.schema_name, d.object_name, d.object_type
        FROM pg_catalog.pg_event_trigger_dropped_objects() d
        WHERE d.object_type IN ('view', 'materialized view') AND NOT d.is_temporary
    LOOP
        INSERT INTO {log} (role_name, schema_name, object_name, object_type, statement)
        VALUES (session_user, dropped.schema_name, dropped.object_name, dropped.object_type,
                pg_catalog.current_query());
        PERFORM pg_catalog.pg_notify({channel}, dropped.schema_name || '.' || dropped.object_name);
    END LOOP;
END
",
        applying = quote_literal(APPLYING_SETTING),
        channel = quote_literal(CHANNEL),
    );
    format!(
        "CREATE SCHEMA IF NOT EXISTS {schema};
GRANT USAGE ON SCHEMA {schema} TO PUBLIC;
CREATE TABLE IF NOT EXISTS {log} (
    id bigserial PRIMARY KEY,
    dropped_at timestamptz NOT NULL DEFAULT clock_timestamp(),
    role_name text NOT NULL,
    schema_name text NOT NULL,
    object_name text NOT NULL,
    object_type text NOT NULL,
    statement text
);
-- Every role may read who dropped what; only the trigger function writes.
GRANT SELECT ON {log} TO PUBLIC;
-- Runs as its owner so any role's drop can be recorded; a fixed search_path keeps it safe.
CREATE OR REPLACE FUNCTION {function}() RETURNS event_trigger
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp
AS {body};
REVOKE ALL ON FUNCTION {function}() FROM PUBLIC;
DROP EVENT TRIGGER IF EXISTS {trigger};
CREATE EVENT TRIGGER {trigger} ON sql_drop EXECUTE FUNCTION {function}();
DROP EVENT TRIGGER IF EXISTS {create_trigger};
DROP FUNCTION IF EXISTS {create_function}();
{protection}",
        body = quote_literal(&body),
        trigger = quote_ident(TRIGGER),
        create_trigger = quote_ident(CREATE_TRIGGER),
        protection = if protect {
            protection(state_schema)
        } else {
            String::new()
        },
    )
}

/// The table of managed views by OID, and the trigger that adds what viewkeeper creates.
fn protection(state_schema: &str) -> String {
    let schema = quote_ident(&guard_schema(state_schema));
    let protected = table(&guard_schema(state_schema), PROTECTED_TABLE);
    let function = format!("{schema}.{}", quote_ident(CREATE_FUNCTION));
    let body = format!(
        "
BEGIN
    IF current_setting({applying}, true) = 'on' THEN
        INSERT INTO {protected} (relid)
        SELECT c.objid FROM pg_catalog.pg_event_trigger_ddl_commands() c
        WHERE c.object_type IN ('view', 'materialized view')
        ON CONFLICT DO NOTHING;
    END IF;
END
",
        applying = quote_literal(APPLYING_SETTING),
    );
    format!(
        "CREATE TABLE IF NOT EXISTS {protected} (relid oid PRIMARY KEY);
GRANT SELECT ON {protected} TO PUBLIC;
TRUNCATE {protected};
CREATE FUNCTION {function}() RETURNS event_trigger
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp
AS {body};
REVOKE ALL ON FUNCTION {function}() FROM PUBLIC;
CREATE EVENT TRIGGER {trigger} ON ddl_command_end
    WHEN TAG IN ('CREATE VIEW', 'CREATE MATERIALIZED VIEW') EXECUTE FUNCTION {function}();",
        body = quote_literal(&body),
        trigger = quote_ident(CREATE_TRIGGER),
    )
}

/// The state table of managed objects, for [`protect_managed`] and its lock.
pub(crate) fn managed_objects(state_schema: &str) -> String {
    table(state_schema, OBJECTS_TABLE)
}

/// Holds `table` (as [`managed_objects`] names it) against changes until commit.
pub(crate) fn lock_for_reading(table: &str) -> String {
    format!("LOCK TABLE {table} IN ACCESS SHARE MODE")
}

/// Whether the relation `$1` is a plain table with text `schema_name` and `object_name`
/// columns: reading it can then run no code its owner wrote (a view's functions, a cast).
// language=SQL
pub(crate) const IS_PLAIN_STATE_TABLE: &str = "SELECT c.relkind = 'r' AND NOT c.relrowsecurity
                    AND (SELECT count(*) FROM pg_catalog.pg_attribute a
                         WHERE a.attrelid = c.oid AND NOT a.attisdropped
                           AND a.attname IN ('schema_name', 'object_name')
                           AND a.atttypid = 'pg_catalog.text'::pg_catalog.regtype) = 2
             FROM pg_catalog.pg_class c WHERE c.oid = to_regclass($1)";

/// Adds the views the state table lists to the protected ones.
pub(crate) fn protect_managed(state_schema: &str) -> String {
    let protected = table(&guard_schema(state_schema), PROTECTED_TABLE);
    let objects = managed_objects(state_schema);
    // language=SQL
    format!(
        "INSERT INTO {protected} (relid)
                 SELECT c.oid FROM {objects} m
                 JOIN pg_catalog.pg_namespace n ON n.nspname = m.schema_name
                 JOIN pg_catalog.pg_class c ON c.relnamespace = n.oid AND c.relname = m.object_name
                 WHERE c.relkind IN ('v', 'm')
                 ON CONFLICT DO NOTHING"
    )
}

/// Removes the event triggers and their functions; the log stays.
pub(crate) fn uninstall(state_schema: &str) -> String {
    let guard = quote_ident(&guard_schema(state_schema));
    format!(
        "DROP EVENT TRIGGER IF EXISTS {};\nDROP FUNCTION IF EXISTS {guard}.{}();
DROP EVENT TRIGGER IF EXISTS {};\nDROP FUNCTION IF EXISTS {guard}.{}();",
        quote_ident(TRIGGER),
        quote_ident(FUNCTION),
        quote_ident(CREATE_TRIGGER),
        quote_ident(CREATE_FUNCTION)
    )
}

/// Recorded drops, newest first, at most `$1`; with `latest_only`, the newest per object.
pub(crate) fn select_log(state_schema: &str, latest_only: bool) -> String {
    let log = log_table(state_schema);
    // language=SQL
    if latest_only {
        format!(
            "SELECT * FROM (SELECT DISTINCT ON (schema_name, object_name)
                    schema_name, object_name, dropped_at, role_name, coalesce(statement, '')
                FROM {log} ORDER BY schema_name, object_name, dropped_at DESC, id DESC) latest
             ORDER BY dropped_at DESC LIMIT $1"
        )
    } else {
        format!(
            "SELECT schema_name, object_name, dropped_at, role_name, coalesce(statement, '')
             FROM {log} ORDER BY dropped_at DESC, id DESC LIMIT $1"
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_guard_lives_in_its_own_quoted_schema() {
        assert_eq!(log_table("Odd"), "\"Odd_guard\".\"drop_log\"");
        let sql = install("Odd", false);
        assert!(
            sql.starts_with("CREATE SCHEMA IF NOT EXISTS \"Odd_guard\";"),
            "{sql}"
        );
        assert!(!sql.contains("protected_object"), "{sql}");
        let protecting = install("Odd", true);
        assert!(
            protecting.contains("CREATE EVENT TRIGGER \"viewkeeper_guard_create\""),
            "{protecting}"
        );
        assert!(
            uninstall("Odd").contains("DROP FUNCTION IF EXISTS \"Odd_guard\".\"record_drop\"();")
        );
    }
}
