//! The DDL text of a plan's steps: every statement reconcile runs on a view or a
//! materialized view is written here, from typed values, with identifiers and literals
//! quoted by the helpers in [`super`]. A declared query is embedded as it was written; the
//! caller learns where it starts so an error position maps back to the file.

use std::collections::BTreeMap;

use crate::name::{QualifiedName, parse_identifier};
use crate::project::{Grantee, Index, Kind};

use super::{quote_ident, quote_literal};

/// A statement that embeds a declared query, and where (in characters) the query starts.
pub(crate) struct WithQuery {
    pub(crate) sql: String,
    pub(crate) query_offset: usize,
}

/// How a created materialized view gets its rows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Data {
    /// `WITH DATA`: the create fills it.
    With,
    /// `WITH NO DATA`.
    Without,
}

/// `CREATE [MATERIALIZED] VIEW name [WITH (options)] AS query [WITH [NO] DATA]`.
pub(crate) fn create(
    kind: Kind,
    name: &QualifiedName,
    options: &BTreeMap<String, String>,
    query: &str,
    data: Data,
) -> WithQuery {
    let prefix = format!(
        "CREATE {} {}{} AS\n",
        kind.sql(),
        name.to_sql(),
        with_options(options)
    );
    let suffix = match (kind, data) {
        (Kind::View, _) => "",
        (Kind::MaterializedView, Data::With) => "\nWITH DATA",
        (Kind::MaterializedView, Data::Without) => "\nWITH NO DATA",
    };
    embed(prefix, query, suffix)
}

/// `CREATE OR REPLACE VIEW`, which also sets the options to the ones it names.
pub(crate) fn replace_view(
    name: &QualifiedName,
    options: &BTreeMap<String, String>,
    query: &str,
) -> WithQuery {
    let prefix = format!(
        "CREATE OR REPLACE VIEW {}{} AS\n",
        name.to_sql(),
        with_options(options)
    );
    embed(prefix, query, "")
}

/// `CREATE TEMPORARY VIEW pg_temp.<name>`: plan's compile step. `temp_name` is already
/// quoted.
pub(crate) fn create_temporary_view(
    temp_name: &str,
    options: &BTreeMap<String, String>,
    query: &str,
) -> WithQuery {
    let prefix = format!(
        "CREATE TEMPORARY VIEW pg_temp.{temp_name}{} AS\n",
        with_options(options)
    );
    embed(prefix, query, "")
}

fn embed(prefix: String, query: &str, suffix: &str) -> WithQuery {
    WithQuery {
        query_offset: prefix.chars().count(),
        sql: format!("{prefix}{query}{suffix}"),
    }
}

fn with_options(options: &BTreeMap<String, String>) -> String {
    if options.is_empty() {
        String::new()
    } else {
        format!(" WITH ({})", options_list(options))
    }
}

/// `security_invoker='true', check_option='local'`: keys were checked to be plain words
/// when the files were read; values are quoted.
pub(crate) fn options_list(options: &BTreeMap<String, String>) -> String {
    options
        .iter()
        .map(|(key, value)| format!("{key}={}", quote_literal(value)))
        .collect::<Vec<_>>()
        .join(", ")
}

/// `DROP [MATERIALIZED] VIEW name`. Never CASCADE: anything else reading the object was
/// checked before planning.
pub(crate) fn drop(kind: Kind, name: &QualifiedName) -> String {
    format!("DROP {} {}", kind.sql(), name.to_sql())
}

/// `CREATE [UNIQUE] INDEX` for a declared index; plain column names are quoted, anything
/// else is an index element written in SQL by the user.
pub(crate) fn create_index(relation: &QualifiedName, index: &Index) -> String {
    let elements: Vec<String> = index
        .elements
        .iter()
        .map(|element| match parse_identifier(element) {
            Ok(column) => quote_ident(&column),
            Err(_) => element.clone(),
        })
        .collect();
    let mut sql = format!(
        "CREATE {}INDEX {} ON {}",
        if index.unique { "UNIQUE " } else { "" },
        quote_ident(&index.name),
        relation.to_sql()
    );
    if let Some(method) = &index.using {
        // Access methods are identifiers: `using="BTREE"` means btree, as in SQL.
        let method = parse_identifier(method).unwrap_or_else(|_| method.clone());
        sql.push_str(&format!(" USING {}", quote_ident(&method)));
    }
    sql.push_str(&format!(" ({})", elements.join(", ")));
    if let Some(predicate) = &index.predicate {
        sql.push_str(&format!(" WHERE {predicate}"));
    }
    sql
}

/// `ALTER [MATERIALIZED] VIEW name RENAME TO new_name` (same schema).
pub(crate) fn rename(kind: Kind, name: &QualifiedName, new_name: &str) -> String {
    format!(
        "ALTER {} {} RENAME TO {}",
        kind.sql(),
        name.to_sql(),
        quote_ident(new_name)
    )
}

/// `ALTER INDEX schema.index RENAME TO new_name`.
pub(crate) fn rename_index(schema: &str, index: &str, new_name: &str) -> String {
    format!(
        "ALTER INDEX {}.{} RENAME TO {}",
        quote_ident(schema),
        quote_ident(index),
        quote_ident(new_name)
    )
}

/// `DROP INDEX schema.index` (an index lives in its relation's schema).
pub(crate) fn drop_index(relation: &QualifiedName, index: &str) -> String {
    format!(
        "DROP INDEX {}.{}",
        quote_ident(&relation.schema),
        quote_ident(index)
    )
}

/// `GRANT privileges ON name TO grantee`.
pub(crate) fn grant(name: &QualifiedName, grantee: &Grantee, privileges: &[String]) -> String {
    format!(
        "GRANT {} ON {} TO {}",
        privileges.join(", "),
        name.to_sql(),
        grantee_sql(grantee)
    )
}

/// `REVOKE privileges ON name FROM grantee`.
pub(crate) fn revoke(name: &QualifiedName, grantee: &Grantee, privileges: &[String]) -> String {
    format!(
        "REVOKE {} ON {} FROM {}",
        privileges.join(", "),
        name.to_sql(),
        grantee_sql(grantee)
    )
}

fn grantee_sql(grantee: &Grantee) -> String {
    match grantee {
        Grantee::Public => "PUBLIC".to_owned(),
        Grantee::Role(role) => quote_ident(role),
    }
}

/// `ALTER [MATERIALIZED] VIEW name SET (options)`.
pub(crate) fn set_options(
    kind: Kind,
    name: &QualifiedName,
    options: &BTreeMap<String, String>,
) -> String {
    format!(
        "ALTER {} {} SET ({})",
        kind.sql(),
        name.to_sql(),
        options_list(options)
    )
}

/// `ALTER [MATERIALIZED] VIEW name RESET (keys)`; keys are plain words (checked on read).
pub(crate) fn reset_options(kind: Kind, name: &QualifiedName, keys: &[String]) -> String {
    format!(
        "ALTER {} {} RESET ({})",
        kind.sql(),
        name.to_sql(),
        keys.join(", ")
    )
}

/// `COMMENT ON … IS 'text'`, or `IS NULL` to remove it.
pub(crate) fn comment(kind: Kind, name: &QualifiedName, comment: Option<&str>) -> String {
    let text = comment.map_or_else(|| "NULL".to_owned(), quote_literal);
    format!("COMMENT ON {} {} IS {text}", kind.sql(), name.to_sql())
}

/// `ALTER … OWNER TO role`.
pub(crate) fn owner(kind: Kind, name: &QualifiedName, owner: &str) -> String {
    format!(
        "ALTER {} {} OWNER TO {}",
        kind.sql(),
        name.to_sql(),
        quote_ident(owner)
    )
}

/// `REFRESH MATERIALIZED VIEW [CONCURRENTLY] name`.
pub(crate) fn refresh(name: &QualifiedName, concurrently: bool) -> String {
    format!(
        "REFRESH MATERIALIZED VIEW {}{}",
        if concurrently { "CONCURRENTLY " } else { "" },
        name.to_sql()
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn name(text: &str) -> QualifiedName {
        QualifiedName::new("public", text)
    }

    #[test]
    fn embeds_the_query_and_says_where_it_starts() {
        let options = BTreeMap::from([("security_invoker".to_owned(), "true".to_owned())]);
        let created = create(
            Kind::View,
            &name("Odd \"v\""),
            &options,
            "SELECT 1",
            Data::With,
        );
        assert_eq!(
            created.sql,
            "CREATE VIEW \"public\".\"Odd \"\"v\"\"\" WITH (security_invoker='true') AS\nSELECT 1"
        );
        assert_eq!(&created.sql[created.query_offset..], "SELECT 1");
        let filled = create(
            Kind::MaterializedView,
            &name("m"),
            &BTreeMap::new(),
            "SELECT 1",
            Data::Without,
        );
        assert!(
            filled.sql.ends_with("SELECT 1\nWITH NO DATA"),
            "{}",
            filled.sql
        );
    }

    #[test]
    fn quotes_roles_comments_and_index_columns() {
        let role = Grantee::Role("Report \"ers\"".to_owned());
        assert_eq!(
            grant(&name("v"), &role, &["SELECT".to_owned()]),
            "GRANT SELECT ON \"public\".\"v\" TO \"Report \"\"ers\"\"\""
        );
        assert_eq!(
            comment(Kind::MaterializedView, &name("m"), Some("it's")),
            "COMMENT ON MATERIALIZED VIEW \"public\".\"m\" IS 'it''s'"
        );
        let index = Index {
            name: "m_key".to_owned(),
            unique: true,
            // Unquoted names fold to lower case, as in SQL.
            elements: vec!["Seller".to_owned(), "lower(region)".to_owned()],
            using: Some("BTREE".to_owned()),
            predicate: Some("total > 0".to_owned()),
            span: (0, 0).into(),
        };
        assert_eq!(
            create_index(&name("m"), &index),
            "CREATE UNIQUE INDEX \"m_key\" ON \"public\".\"m\" USING \"btree\" (\"seller\", lower(region)) WHERE total > 0"
        );
        assert_eq!(
            refresh(&name("m"), true),
            "REFRESH MATERIALIZED VIEW CONCURRENTLY \"public\".\"m\""
        );
    }
}
