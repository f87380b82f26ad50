//! What a query reads, found from its text with a SQL parser (PostgreSQL dialect), so that
//! `depends-on` can be left out. PostgreSQL stays the authority: `plan` compares these
//! names with `pg_depend`, and a query the parser cannot read is left to the server.

use std::collections::BTreeSet;
use std::ops::ControlFlow;

use sqlparser::ast::{Ident, ObjectName, Query, TableFactor, Visit, Visitor};
use sqlparser::dialect::PostgreSqlDialect;
use sqlparser::parser::{Parser, ParserError};
use sqlparser::tokenizer::TokenWithSpan;

use crate::name::QualifiedName;

/// A relation named in a query's FROM clauses, as written: schema only when qualified.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct ReadName {
    pub schema: Option<String>,
    pub name: String,
}

/// What a query names, as [`relations_read`] gives it.
pub type NamesRead = Result<BTreeSet<ReadName>, String>;

/// The relations a query reads (CTE names, functions in FROM and VALUES left out), or the
/// parser's message when it cannot read the query.
pub fn relations_read(query: &str) -> NamesRead {
    let tokens =
        super::statement::tokenize(query).map_err(|error| ParserError::from(error).to_string())?;
    relations_read_in(tokens)
}

/// [`relations_read`] of a query already lexed.
pub(crate) fn relations_read_in(tokens: Vec<TokenWithSpan>) -> NamesRead {
    let statements = Parser::new(&PostgreSqlDialect {})
        .with_tokens_with_locations(tokens)
        .parse_statements()
        .map_err(|error| error.to_string())?;
    let mut collector = Collector::default();
    let _ = statements.visit(&mut collector);
    if let Some(problem) = collector.unreadable {
        return Err(problem);
    }
    // A CTE's name shadows a table of that name; a qualified name never refers to a CTE.
    Ok(collector
        .tables
        .into_iter()
        .filter(|read| read.schema.is_some() || !collector.ctes.contains(&read.name))
        .collect())
}

/// Resolves names as PostgreSQL would, offline: a qualified name as written; an unqualified
/// one to a declared object in the first `search_path` schema that has it, otherwise to the
/// first `search_path` schema (the catalog confirms it when `plan` runs).
pub fn resolve(
    reads: &BTreeSet<ReadName>,
    search_path: &[String],
    declared: &dyn Fn(&QualifiedName) -> bool,
) -> Vec<QualifiedName> {
    let mut names: Vec<QualifiedName> = reads
        .iter()
        .filter_map(|read| match &read.schema {
            Some(schema) => Some(QualifiedName::new(schema.clone(), read.name.clone())),
            None => search_path
                .iter()
                .map(|schema| QualifiedName::new(schema.clone(), read.name.clone()))
                .find(|candidate| declared(candidate))
                .or_else(|| {
                    search_path
                        .first()
                        .map(|schema| QualifiedName::new(schema.clone(), read.name.clone()))
                }),
        })
        .collect();
    names.sort();
    names.dedup();
    names
}

#[derive(Default)]
struct Collector {
    tables: BTreeSet<ReadName>,
    ctes: BTreeSet<String>,
    unreadable: Option<String>,
}

impl Visitor for Collector {
    type Break = ();

    fn pre_visit_query(&mut self, query: &Query) -> ControlFlow<()> {
        for cte in query.with.iter().flat_map(|with| &with.cte_tables) {
            self.ctes.insert(fold(&cte.alias.name));
        }
        ControlFlow::Continue(())
    }

    fn pre_visit_table_factor(&mut self, factor: &TableFactor) -> ControlFlow<()> {
        // `args` set means a function call in FROM (`generate_series(1, 3)`), not a relation.
        if let TableFactor::Table {
            name, args: None, ..
        } = factor
        {
            match read_name(name) {
                Some(read) => {
                    self.tables.insert(read);
                }
                None => self.unreadable = Some(format!("cannot read the relation name `{name}`")),
            }
        }
        ControlFlow::Continue(())
    }
}

fn read_name(name: &ObjectName) -> Option<ReadName> {
    let parts: Vec<String> = name
        .0
        .iter()
        .map(|part| part.as_ident().map(fold))
        .collect::<Option<_>>()?;
    match parts.as_slice() {
        [name] => Some(ReadName {
            schema: None,
            name: name.clone(),
        }),
        [schema, name] | [_, schema, name] => Some(ReadName {
            schema: Some(schema.clone()),
            name: name.clone(),
        }),
        _ => None,
    }
}

/// PostgreSQL folds unquoted identifiers to lower case and keeps quoted ones as written.
fn fold(ident: &Ident) -> String {
    match ident.quote_style {
        Some(_) => ident.value.clone(),
        None => ident.value.to_lowercase(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reads(query: &str) -> Vec<String> {
        relations_read(query)
            .expect("the test query parses")
            .into_iter()
            .map(|read| match read.schema {
                Some(schema) => format!("{schema}.{}", read.name),
                None => read.name,
            })
            .collect()
    }

    #[test]
    fn plain_joins_and_aliases() {
        assert_eq!(
            reads("SELECT o.id FROM orders o JOIN customers AS c ON c.id = o.customer_id"),
            ["customers", "orders"]
        );
    }

    #[test]
    fn cte_names_are_not_relations_but_their_bodies_are_read() {
        assert_eq!(
            reads("WITH recent AS (SELECT * FROM orders) SELECT * FROM recent"),
            ["orders"]
        );
    }

    #[test]
    fn recursive_cte() {
        assert_eq!(
            reads(
                "WITH RECURSIVE tree(id) AS (SELECT id FROM nodes WHERE parent IS NULL \
                 UNION ALL SELECT n.id FROM nodes n JOIN tree t ON n.parent = t.id) \
                 SELECT * FROM tree"
            ),
            ["nodes"]
        );
    }

    #[test]
    fn a_cte_shadows_a_table_but_not_a_qualified_name() {
        assert_eq!(
            reads("WITH orders AS (SELECT 1 AS id) SELECT * FROM orders, public.orders"),
            ["public.orders"]
        );
    }

    #[test]
    fn an_alias_named_like_a_table_is_not_read() {
        assert_eq!(
            reads("SELECT customers.id FROM orders AS customers"),
            ["orders"]
        );
    }

    #[test]
    fn subqueries_in_select_where_and_from() {
        assert_eq!(
            reads(
                "SELECT (SELECT max(x) FROM a), y FROM (SELECT y FROM b) s \
                 WHERE EXISTS (SELECT 1 FROM c) AND y IN (SELECT y FROM d)"
            ),
            ["a", "b", "c", "d"]
        );
    }

    #[test]
    fn lateral_and_set_operations() {
        assert_eq!(
            reads(
                "SELECT * FROM a, LATERAL (SELECT * FROM b WHERE b.id = a.id) l \
                 UNION SELECT * FROM c EXCEPT SELECT * FROM d"
            ),
            ["a", "b", "c", "d"]
        );
    }

    #[test]
    fn schema_qualified_and_quoted_names() {
        assert_eq!(
            reads(
                r#"SELECT * FROM Sales.Orders JOIN "Sales"."Big Table" ON true JOIN "MixedCase" ON true"#
            ),
            ["MixedCase", "Sales.Big Table", "sales.orders"]
        );
    }

    #[test]
    fn functions_in_from_and_values_are_not_relations() {
        assert_eq!(
            reads(
                "SELECT * FROM generate_series(1, 3) g, (VALUES (1), (2)) v(x), \
                 unnest(ARRAY[1]) u JOIN t ON true"
            ),
            ["t"]
        );
    }

    #[test]
    fn an_unreadable_query_is_an_error_not_a_guess() {
        assert!(relations_read("SELECT FROM WHERE (").is_err());
    }

    #[test]
    fn unqualified_names_resolve_to_declared_views_in_search_path_order() {
        let reads =
            relations_read("SELECT * FROM a JOIN b ON true JOIN x.c ON true").expect("parses");
        let path = ["app".to_owned(), "public".to_owned()];
        let declared = |name: &QualifiedName| name == &QualifiedName::new("public", "a");
        assert_eq!(
            resolve(&reads, &path, &declared),
            [
                QualifiedName::new("app", "b"),
                QualifiedName::new("public", "a"),
                QualifiedName::new("x", "c"),
            ]
        );
    }
}
