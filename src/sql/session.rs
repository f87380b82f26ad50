//! Session and transaction settings, advisory locks, savepoints and the server's clock.

use std::time::Duration;

use super::quote_literal;

/// A transaction on a plain client (one that cannot hand out a `Transaction`).
pub(crate) const BEGIN: &str = "BEGIN";
/// Ends a transaction begun with [`BEGIN`], changing nothing.
pub(crate) const ROLLBACK: &str = "ROLLBACK";
/// Ends a transaction begun with [`BEGIN`]; in a transaction a statement failed in, PostgreSQL
/// rolls back instead.
pub(crate) const COMMIT: &str = "COMMIT";

/// The server's clock, which moves during a transaction (unlike `now()`).
pub(crate) const CLOCK: &str = "SELECT clock_timestamp()";

/// PostgreSQL 14+ notices a closed client connection within a second and aborts its query.
pub(crate) const CHECK_CONNECTION_EVERY_SECOND: &str =
    "SET client_connection_check_interval = 1000";

/// `SET LOCAL lock_timeout`, at least one millisecond: zero would mean "wait forever".
pub(crate) fn set_local_lock_timeout(timeout: Duration) -> String {
    format!("SET LOCAL lock_timeout = {}", timeout.as_millis().max(1))
}

/// `SET LOCAL statement_timeout`, in milliseconds.
pub(crate) fn set_local_statement_timeout(timeout: Duration) -> String {
    format!("SET LOCAL statement_timeout = {}", timeout.as_millis())
}

/// `SET application_name`, which `pg_stat_activity` shows to operators.
pub(crate) fn set_application_name(name: &str) -> String {
    format!("SET application_name = {}", quote_literal(name))
}

/// Every transaction of a viewkeeper session reads committed data, whatever the database's
/// default: most read the catalog after waiting for reconcile's lock, and under repeatable
/// read their snapshot would date from before the wait, missing what that reconcile did.
pub(crate) const READ_COMMITTED: &str = "SET default_transaction_isolation = 'read committed'";

/// `SET search_path TO …`, each schema quoted.
pub(crate) fn set_search_path(schemas: &[String]) -> String {
    let path: Vec<String> = schemas
        .iter()
        .map(|schema| super::quote_ident(schema))
        .collect();
    format!("SET search_path TO {}", path.join(", "))
}

/// `SET LOCAL setting = 'on'` for one of viewkeeper's own custom settings (a constant).
pub(crate) fn set_local_on(setting: &'static str) -> String {
    format!("SET LOCAL {setting} = 'on'")
}

/// Who else may hold an advisory lock at the same time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum LockMode {
    Shared,
    Exclusive,
}

/// A transaction-level advisory lock on key `$1`, as text: waiting, it returns `""` (void);
/// with `try_only`, `"true"` or `"false"` without waiting.
pub(crate) fn advisory_xact_lock(mode: LockMode, try_only: bool) -> &'static str {
    match (try_only, mode) {
        (false, LockMode::Shared) => "SELECT pg_advisory_xact_lock_shared($1)::text",
        (false, LockMode::Exclusive) => "SELECT pg_advisory_xact_lock($1)::text",
        (true, LockMode::Shared) => "SELECT pg_try_advisory_xact_lock_shared($1)::text",
        (true, LockMode::Exclusive) => "SELECT pg_try_advisory_xact_lock($1)::text",
    }
}

/// `LISTEN channel`: the session hears every `NOTIFY` on it from then on.
pub(crate) fn listen(channel: &str) -> String {
    format!("LISTEN {}", super::quote_ident(channel))
}

/// `SAVEPOINT name`; names are viewkeeper's own constants, never a user's.
pub(crate) fn savepoint(name: &'static str) -> String {
    format!("SAVEPOINT {name}")
}

/// `ROLLBACK TO SAVEPOINT name`.
pub(crate) fn rollback_to(name: &'static str) -> String {
    format!("ROLLBACK TO SAVEPOINT {name}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timeouts_are_whole_milliseconds_and_lock_timeout_never_zero() {
        assert_eq!(
            set_local_lock_timeout(Duration::from_micros(10)),
            "SET LOCAL lock_timeout = 1"
        );
        assert_eq!(
            set_local_statement_timeout(Duration::from_secs(2)),
            "SET LOCAL statement_timeout = 2000"
        );
    }

    #[test]
    fn settings_quote_what_they_are_given() {
        assert_eq!(
            set_application_name("it's me"),
            "SET application_name = 'it''s me'"
        );
        assert_eq!(
            set_search_path(&["app".to_owned(), "Odd \"One\"".to_owned()]),
            "SET search_path TO \"app\", \"Odd \"\"One\"\"\""
        );
    }

    #[test]
    fn advisory_locks_pick_the_function_by_mode_and_wait() {
        assert_eq!(
            advisory_xact_lock(LockMode::Shared, false),
            "SELECT pg_advisory_xact_lock_shared($1)::text"
        );
        assert_eq!(
            advisory_xact_lock(LockMode::Exclusive, true),
            "SELECT pg_try_advisory_xact_lock($1)::text"
        );
    }
}
