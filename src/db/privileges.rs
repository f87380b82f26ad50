//! What a role lacks when PostgreSQL says `permission denied` (SQLSTATE 42501), and the
//! `GRANT` that gives it, for the hint under the message.

use std::sync::OnceLock;

use crate::sql::privileges::{On, as_typed, grant};

/// The role this process connected as, for the `GRANT … TO role` in hints. One process
/// connects as one role; the first connection sets it.
static CONNECTED_AS: OnceLock<String> = OnceLock::new();

pub(crate) fn connected_as(role: &str) {
    let _ = CONNECTED_AS.get_or_init(|| role.to_owned());
}

/// The hint for an `insufficient_privilege` error, from its message.
pub(crate) fn hint(message: &str) -> Option<String> {
    let role = CONNECTED_AS.get().map_or_else(
        || "the role viewkeeper connects as".to_owned(),
        |role| as_typed(role),
    );
    hint_for(message, &role)
}

/// PostgreSQL quotes some names in these messages (`database "shop"`) and not others.
fn unquoted(name: &str) -> &str {
    name.strip_prefix('"')
        .and_then(|name| name.strip_suffix('"'))
        .unwrap_or(name)
}

fn hint_for(message: &str, role: &str) -> Option<String> {
    if let Some(schema) = message.strip_prefix("permission denied for schema ") {
        let schema = unquoted(schema);
        return Some(format!(
            "{role} may not use schema {}. To read what is in it (viewkeeper's state \
             schema, or a schema a view reads), as its owner or a superuser: `{} {}`. \
             To create views in it: `{}`",
            as_typed(schema),
            grant("USAGE", On::Schema(schema), role),
            grant("SELECT", On::AllTablesIn(schema), role),
            grant("CREATE", On::Schema(schema), role),
        ));
    }
    if let Some(database) =
        message.strip_prefix("permission denied to create temporary tables in database ")
    {
        return Some(format!(
            "plan compiles every new query as a temporary view, which needs TEMPORARY on the \
             database: `{}`",
            grant("TEMPORARY", On::Database(unquoted(database)), role)
        ));
    }
    if let Some(database) = message.strip_prefix("permission denied for database ") {
        return Some(format!(
            "{role} may not create schemas in this database (the first reconcile creates the \
             state schema): `{}`, or create the schema for \
             it and `GRANT USAGE, CREATE ON SCHEMA … TO {role};`",
            grant("CREATE", On::Database(unquoted(database)), role)
        ));
    }
    for kind in ["table", "view", "materialized view", "relation", "sequence"] {
        if let Some(relation) = message.strip_prefix(&format!("permission denied for {kind} ")) {
            return Some(format!(
                "{role} may not read {kind} {}: `{}` (schema-qualify \
                 it), or for a whole schema `GRANT SELECT ON ALL TABLES IN SCHEMA … TO {role};`; \
                 reconcile also writes viewkeeper's state tables, which needs INSERT, UPDATE and \
                 DELETE on them",
                as_typed(unquoted(relation)),
                grant("SELECT", On::Relation(unquoted(relation)), role)
            ));
        }
    }
    if let Some(function) = message.strip_prefix("permission denied for function ") {
        return Some(format!(
            "a declared query calls {function}: `{}`",
            grant("EXECUTE", On::Function(function), role)
        ));
    }
    if let Some(object) = message.strip_prefix("must be owner of ") {
        return Some(format!(
            "only the owner of {object} (or a member of the owning role) may drop or change it: \
             run viewkeeper as that role, or `GRANT <owner> TO {role};`"
        ));
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_the_missing_right_and_its_grant() {
        let schema = hint_for("permission denied for schema viewkeeper", "app").unwrap_or_default();
        assert!(
            schema.contains("`GRANT USAGE ON SCHEMA viewkeeper TO app; GRANT SELECT ON ALL TABLES IN SCHEMA viewkeeper TO app;`"),
            "{schema}"
        );
        let temp = hint_for(
            "permission denied to create temporary tables in database \"shop\"",
            "app",
        )
        .unwrap_or_default();
        assert!(
            temp.contains("`GRANT TEMPORARY ON DATABASE shop TO app;`"),
            "{temp}"
        );
        let table =
            hint_for("permission denied for table managed_object", "\"App\"").unwrap_or_default();
        assert!(
            table.contains("`GRANT SELECT ON managed_object TO \"App\";`"),
            "{table}"
        );
        assert_eq!(hint_for("division by zero", "app"), None);
    }
}
