//! The `GRANT` statements that hints for `permission denied` suggest. They are shown to a
//! person, never run, so names are written as that person would type them.

use crate::name::is_plain_identifier;

/// A name as typed in SQL: bare when that reads the same, quoted otherwise.
pub(crate) fn as_typed(name: &str) -> String {
    if is_plain_identifier(name) {
        name.to_owned()
    } else {
        super::quote_ident(name)
    }
}

/// What a grant is on; each name is written [`as_typed`] (a function as PostgreSQL printed
/// it, with its arguments).
pub(crate) enum On<'a> {
    Schema(&'a str),
    AllTablesIn(&'a str),
    Database(&'a str),
    Relation(&'a str),
    Function(&'a str),
}

/// `GRANT privileges ON object TO role;`, where `role` is already as typed.
pub(crate) fn grant(privileges: &str, on: On<'_>, role: &str) -> String {
    let on = match on {
        On::Schema(schema) => format!("SCHEMA {}", as_typed(schema)),
        On::AllTablesIn(schema) => format!("ALL TABLES IN SCHEMA {}", as_typed(schema)),
        On::Database(database) => format!("DATABASE {}", as_typed(database)),
        On::Relation(relation) => as_typed(relation),
        On::Function(function) => format!("FUNCTION {function}"),
    };
    format!("GRANT {privileges} ON {on} TO {role};")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grants_type_names_as_a_person_would() {
        assert_eq!(
            grant("USAGE", On::Schema("viewkeeper"), "app"),
            "GRANT USAGE ON SCHEMA viewkeeper TO app;"
        );
        assert_eq!(
            grant("SELECT", On::AllTablesIn("Odd One"), "\"App\""),
            "GRANT SELECT ON ALL TABLES IN SCHEMA \"Odd One\" TO \"App\";"
        );
        assert_eq!(
            grant("EXECUTE", On::Function("f(integer)"), "app"),
            "GRANT EXECUTE ON FUNCTION f(integer) TO app;"
        );
    }
}
