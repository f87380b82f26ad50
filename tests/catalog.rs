//! What the catalog reading reports against what PostgreSQL itself prints.

mod support;

use support::test_db;

/// Indexes of every kind the declarations can and cannot express, on names that need
/// quoting, so the shortcut the index query takes for plain indexes is checked against
/// `pg_get_indexdef` wherever it applies and wherever it must not.
const INDEXED: &str = r#"
CREATE DOMAIN positive AS integer CHECK (VALUE > 0);
CREATE SCHEMA "Odd Schema";
CREATE MATERIALIZED VIEW "Odd Schema"."select" AS
SELECT i AS id, 'n' || i AS name, ('n' || i)::varchar(20) AS short_name,
       i::positive AS amount, int4range(i, i + 10) AS span, i % 7 AS "Mixed Case"
FROM generate_series(1, 50) AS i;
CREATE UNIQUE INDEX plain_unique ON "Odd Schema"."select" (id);
CREATE INDEX "My Index" ON "Odd Schema"."select" ("Mixed Case", name);
CREATE INDEX by_collation ON "Odd Schema"."select" (name COLLATE "C");
CREATE INDEX by_pattern ON "Odd Schema"."select" (name text_pattern_ops);
CREATE INDEX descending ON "Odd Schema"."select" (id DESC, name NULLS FIRST);
CREATE INDEX with_include ON "Odd Schema"."select" (id) INCLUDE (name);
CREATE INDEX partial ON "Odd Schema"."select" (id) WHERE id > 10;
CREATE INDEX expression ON "Odd Schema"."select" (lower(name));
CREATE INDEX mixed ON "Odd Schema"."select" (id, (lower(name)), "Mixed Case");
CREATE INDEX hashed ON "Odd Schema"."select" USING hash (name);
CREATE INDEX with_options ON "Odd Schema"."select" (id) WITH (fillfactor = 70);
CREATE INDEX on_varchar ON "Odd Schema"."select" (short_name);
CREATE INDEX on_domain ON "Odd Schema"."select" (amount);
CREATE INDEX ranges ON "Odd Schema"."select" USING gist (span);
CREATE INDEX blocks ON "Odd Schema"."select" USING brin (id);
CREATE INDEX with_class_options ON "Odd Schema"."select"
    USING gist (to_tsvector('simple', name) tsvector_ops (siglen = 200));
CREATE MATERIALIZED VIEW "Odd Schema".documents AS
SELECT i AS id, to_tsvector('simple', 'n' || i) AS words FROM generate_series(1, 20) AS i;
CREATE INDEX words ON "Odd Schema".documents USING gist (words tsvector_ops (siglen = 100));
CREATE INDEX words_default ON "Odd Schema".documents USING gist (words);
"#;

#[test]
fn index_definitions_and_elements_are_what_postgres_prints() {
    let db = test_db();
    db.batch(INDEXED);
    let nulls_not_distinct = db
        .try_batch(
            r#"CREATE UNIQUE INDEX distinct_nulls ON "Odd Schema"."select" (name) NULLS NOT DISTINCT"#,
        )
        .is_ok();
    let expected = db.strings(
        r#"SELECT t.relname, ic.relname, pg_get_indexdef(ic.oid),
                  ARRAY(SELECT pg_get_indexdef(ic.oid, k, true)
                        FROM generate_series(1, i.indnkeyatts) AS k ORDER BY k)::text
           FROM pg_index i JOIN pg_class ic ON ic.oid = i.indexrelid
           JOIN pg_class t ON t.oid = i.indrelid
           WHERE t.relnamespace = '"Odd Schema"'::regnamespace
           ORDER BY t.relname, ic.relname"#,
    );
    assert_eq!(expected.len(), 18 + usize::from(nulls_not_distinct));

    let catalog = db
        .block_on(viewkeeper::catalog::introspect(
            db.client(),
            &[],
            "viewkeeper",
        ))
        .expect("introspect");
    let relation = |name: &str| {
        catalog
            .relations
            .iter()
            .find(|(relation, _)| relation.schema == "Odd Schema" && relation.name == name)
            .map(|(_, relation)| relation)
            .unwrap_or_else(|| panic!("the materialized view {name} is read"))
    };
    for row in &expected {
        let [Some(table), Some(name), Some(definition), Some(elements)] = row.as_slice() else {
            panic!("unexpected row {row:?}");
        };
        let live = relation(table)
            .indexes
            .get(name)
            .unwrap_or_else(|| panic!("index {name} is read"));
        assert_eq!(&live.definition, definition, "definition of {name}");
        let elements_text = db
            .strings(&format!(
                "SELECT ARRAY[{}]::text[]::text",
                live.elements
                    .iter()
                    .map(|element| format!("$e${element}$e$"))
                    .collect::<Vec<_>>()
                    .join(", ")
            ))
            .remove(0)
            .remove(0);
        assert_eq!(
            elements_text.as_deref(),
            Some(elements.as_str()),
            "elements of {name}"
        );
    }
    assert_eq!(
        relation("select").indexes.len() + relation("documents").indexes.len(),
        expected.len()
    );

    // Which of them a declaration can stand for.
    let declarable: Vec<&str> = relation("select")
        .indexes
        .iter()
        .chain(&relation("documents").indexes)
        .filter(|(_, index)| index.declarable)
        .map(|(name, _)| name.as_str())
        .collect();
    assert_eq!(
        declarable,
        [
            "My Index",
            "blocks",
            "by_collation",
            "expression",
            "hashed",
            "mixed",
            "on_domain",
            "on_varchar",
            "partial",
            "plain_unique",
            "ranges",
            "with_options",
            "words_default",
        ]
    );
}
