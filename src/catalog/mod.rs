//! The live database → [`Catalog`], in a fixed number of queries whatever the number of
//! views (never one query per view).
//!
//! All catalog SQL lives here, with bound parameters for values.

pub mod prove;
pub mod read;

use std::collections::{BTreeMap, BTreeSet};

use serde::Deserialize;
use tokio_postgres::GenericClient;
use tokio_postgres::types::{ToSql, Type};

use crate::graph::DependencyGraph;
use crate::name::QualifiedName;
use crate::objects::{Grantee, Kind, State};
use crate::project::Project;
use crate::state;

/// What the database holds right now. Deserialisable, so planner tests can state a catalog
/// as JSON (`tests/planner/`); every field may be left out.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Catalog {
    /// `server_version_num`, for version-dependent privilege lists.
    pub server_version: i32,
    /// Views and materialized views outside the system schemas and the state schema.
    pub relations: BTreeMap<QualifiedName, Relation>,
    /// Other relations (tables, …) named by a `depends-on`, with their `relkind`.
    pub named_relations: BTreeMap<QualifiedName, char>,
    /// For each view or materialized view, the relations its query reads (`pg_depend`).
    pub reads: BTreeMap<QualifiedName, BTreeSet<QualifiedName>>,
    /// The role this session runs as: the owner of everything it creates.
    pub current_user: String,
    /// Grants PostgreSQL adds by itself to relations `current_user` creates
    /// (`ALTER DEFAULT PRIVILEGES`), by schema; `""` holds the ones for every schema.
    pub default_grants: BTreeMap<String, BTreeSet<(Grantee, String)>>,
    /// How PostgreSQL prints some declared queries (`pg_get_viewdef` of a throwaway view made
    /// from them), to tell an equivalent query from a changed one; the live definition
    /// itself where the live one, printed again, reads the same. Filled by [`normalise`].
    pub normalised: BTreeMap<QualifiedName, String>,
    /// The columns PostgreSQL gives some declared queries (those of [`Self::normalised`]),
    /// compiled on their own: a plain view whose new columns extend its live ones can be
    /// replaced in place. Filled by [`read_back`].
    pub compiled_columns: BTreeMap<QualifiedName, Vec<String>>,
    /// [`schema_fingerprint`], when a saved plan needs it.
    pub schema_digest: Option<String>,
    /// The latest drop the guard recorded for each object (empty without the guard).
    pub drops: BTreeMap<QualifiedName, crate::guard::DropRecord>,
    /// viewkeeper's records; `None` when the state schema does not exist yet.
    pub state: Option<State>,
    /// Side-by-side copies recorded in the state that exist, by temporary name. They are
    /// not in [`Self::relations`]: nobody declared them, and nothing may treat them as
    /// objects of their own.
    pub built: BTreeMap<QualifiedName, Relation>,
    /// Whether the state table has the rule-hash column (a table made by an older
    /// viewkeeper gains it at the next reconcile that writes).
    pub state_records_rule_hashes: bool,
    /// Managed objects whose live definition reads as applied but whose recorded rule hash
    /// is missing or stale (an older viewkeeper, a server upgrade, a changed setting):
    /// reconcile records the current one, so the next plan need not deparse them.
    pub stale_rule_hashes: Vec<QualifiedName>,
    /// How many queries introspection issued (constant, checked by tests and the benchmark).
    pub queries_issued: usize,
}

/// A live view or materialized view. Only `kind`, `owner` and `definition` are required
/// when deserialised; a relation is populated unless it says otherwise.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Relation {
    #[serde(default)]
    pub oid: u32,
    pub kind: Kind,
    pub owner: String,
    /// `pg_get_viewdef` under the session's `search_path`.
    pub definition: String,
    #[serde(default = "populated_by_default")]
    pub populated: bool,
    #[serde(default)]
    pub comment: Option<String>,
    /// `reloptions`: storage and security options such as `security_invoker`.
    #[serde(default)]
    pub options: BTreeMap<String, String>,
    /// Triggers, rules, column privileges and column comments: kept by an in-place change,
    /// lost by a rebuild, and not expressible in a declaration.
    #[serde(default)]
    pub undeclarable: Vec<String>,
    /// Each column as `name type collation-oid`, in order ([`column_sql`]). Read only for
    /// the views a plan may replace in place ([`read_columns`]); empty otherwise.
    #[serde(default)]
    pub columns: Vec<String>,
    #[serde(default)]
    pub indexes: BTreeMap<String, LiveIndex>,
    /// Privileges granted to roles other than the owner.
    #[serde(default)]
    pub grants: BTreeSet<(Grantee, String)>,
    /// `pg_total_relation_size` of a materialized view (heap, indexes, TOAST); 0 for a view.
    #[serde(default)]
    pub size_bytes: i64,
}

/// An index on a materialized view.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LiveIndex {
    /// `pg_get_indexdef`.
    pub definition: String,
    #[serde(default)]
    pub unique: bool,
    /// Access method (`btree`, …).
    #[serde(default = "btree")]
    pub method: String,
    /// Each key column or expression, as PostgreSQL prints it.
    #[serde(default)]
    pub elements: Vec<String>,
    /// The `WHERE` of a partial index.
    #[serde(default)]
    pub predicate: Option<String>,
    /// False when it has settings a declaration cannot express (INCLUDE, DESC, operator
    /// classes, NULLS NOT DISTINCT): such an index is never taken for a declared one.
    #[serde(default = "declarable_by_default")]
    pub declarable: bool,
}

// Defaults for deserialised catalogs: what PostgreSQL reports for the common case.
fn populated_by_default() -> bool {
    true
}

fn btree() -> String {
    "btree".to_owned()
}

fn declarable_by_default() -> bool {
    true
}

impl Catalog {
    /// The views and materialized views that read `name`, sorted.
    pub fn readers_of(&self, name: &QualifiedName) -> Vec<&QualifiedName> {
        self.reads
            .iter()
            .filter(|(_, reads)| reads.contains(name))
            .map(|(reader, _)| reader)
            .collect()
    }

    /// Adds an edge for every relation a node of `graph` really reads, when that relation is
    /// a node too: the order of work follows the catalog even where `depends-on` is silent.
    pub fn add_reads(&self, graph: &mut DependencyGraph) {
        for (reader, reads) in &self.reads {
            if graph.contains(reader) {
                for read in reads.iter().filter(|read| *read != reader) {
                    graph.add_edge_between_nodes(read, reader);
                }
            }
        }
    }

    /// The declared graph plus the catalog's edges between declared objects.
    pub fn graph_of(&self, project: &Project) -> DependencyGraph {
        let mut graph = project.graph();
        self.add_reads(&mut graph);
        graph
    }

    /// True when `name` is any relation the catalog knows (view, table, …).
    pub fn has_relation(&self, name: &QualifiedName) -> bool {
        self.relations.contains_key(name) || self.named_relations.contains_key(name)
    }
}

/// Schemas never inspected: PostgreSQL's own.
const SYSTEM_SCHEMAS: &[&str] = &["pg_catalog", "information_schema"];

// language=SQL
const SESSION: &str = "SELECT current_setting('server_version_num')::int4, to_regclass($1) IS NOT NULL, current_user::text, to_regclass($2) IS NOT NULL,
       EXISTS (SELECT 1 FROM pg_attribute WHERE attrelid = to_regclass($1) AND attname = $3 AND NOT attisdropped),
       to_regclass($4) IS NOT NULL";

// Default privileges of the current role on tables (views and materialized views count as
// tables here), per schema or global (namespace 0).
// language=SQL
const DEFAULT_GRANTS: &str = "
SELECT coalesce(n.nspname::text, ''), a.privilege_type::text,
       CASE WHEN a.grantee = 0 THEN NULL ELSE pg_get_userbyid(a.grantee)::text END
FROM pg_default_acl d
LEFT JOIN pg_namespace n ON n.oid = d.defaclnamespace
CROSS JOIN LATERAL aclexplode(d.defaclacl) a
WHERE d.defaclrole = (SELECT oid FROM pg_roles WHERE rolname = current_user)
  AND d.defaclobjtype = 'r' AND a.grantee <> d.defaclrole";

/// One column of `pg_attribute a` as `name type collation-oid`: what `CREATE OR REPLACE
/// VIEW` requires to stay the same for every existing column.
macro_rules! column_sql {
    () => {
        "a.attname::text || ' ' || format_type(a.atttypid, a.atttypmod) || ' ' || a.attcollation::text"
    };
}

// The two halves of the relations query, around the derived table of the rule hashes
// recorded when each view was applied ([`crate::sql::state::applied_rule_hashes`]); see
// [`relations_sql`].
// language=SQL
const RELATIONS: [&str; 2] = [
    "
SELECT c.oid, n.nspname::text, c.relname::text, c.relkind::text, pg_get_userbyid(c.relowner)::text,
       -- Deparsed only when the rule hash differs from the one recorded when the view was
       -- applied (or none was): deparsing dominates introspection, and it waits for any
       -- lock on what the view reads. NULL otherwise: the recorded definition stands.
       CASE WHEN NOT rule.unchanged THEN pg_get_viewdef(c.oid) END,
       c.relispopulated, comment.description,
       coalesce(c.reloptions, '{}')::text[],
       coalesce(undeclarable.items, '{}'),
       rule.unchanged,
       -- Every relation the view's query reads (its `_RETURN` rule's pg_depend rows).
       coalesce(live_rule.read_schemas, '{}'), coalesce(live_rule.read_names, '{}')
FROM pg_class c
JOIN pg_namespace n ON n.oid = c.relnamespace
LEFT JOIN pg_description comment ON comment.classoid = 'pg_class'::regclass
                              AND comment.objoid = c.oid AND comment.objsubid = 0
-- What a rebuild would lose and a declaration cannot express: triggers and rules by name,
-- then column privileges and column comments by column. Joined once, not looked up per view.
LEFT JOIN (SELECT x.relid, array_agg(x.item ORDER BY x.kind, x.attnum, x.name COLLATE \"C\") AS items
           FROM (SELECT t.tgrelid AS relid, 1 AS kind, 0 AS attnum, t.tgname::text AS name,
                        'trigger ' || t.tgname AS item
                 FROM pg_trigger t WHERE NOT t.tgisinternal
                 UNION ALL
                 SELECT r.ev_class, 2, 0, r.rulename::text, 'rule ' || r.rulename
                 FROM pg_rewrite r WHERE r.rulename <> '_RETURN'
                 UNION ALL
                 SELECT a.attrelid, 3, a.attnum, a.attname::text,
                        'column privileges on ' || a.attname
                 FROM pg_attribute a WHERE a.attacl IS NOT NULL
                 UNION ALL
                 SELECT d.objoid, 4, a.attnum, a.attname::text, 'comment on column ' || a.attname
                 FROM pg_description d
                 JOIN pg_attribute a ON a.attrelid = d.objoid AND a.attnum = d.objsubid
                 WHERE d.classoid = 'pg_class'::regclass AND d.objsubid > 0) x
           GROUP BY x.relid) undeclarable ON undeclarable.relid = c.oid
LEFT JOIN ",
    concat!(
        " AS applied ON applied.schema_name = n.nspname AND applied.object_name = c.relname
LEFT JOIN ",
    crate::sql::rule_hash::rule_hashes_sql!(),
    " live_rule ON live_rule.ev_class = c.oid
CROSS JOIN LATERAL (SELECT coalesce(live_rule.hash = applied.rule_hash, false) AS unchanged) rule
WHERE c.relkind IN ('v', 'm')
  AND n.nspname <> ALL($1::text[]) AND n.nspname NOT LIKE 'pg\\_%'"
    ),
];

/// The relations query, joined with the recorded rule hashes (`applied`, a derived table).
fn relations_sql(applied: &str) -> String {
    [RELATIONS[0], applied, RELATIONS[1]].concat()
}

// `pg_get_indexdef` costs a catalog-cache lookup per index and per key, most of a no-op
// plan's time on a new connection. An index of plain columns in their own collation and
// default operator class (without options), ascending, with no INCLUDE, predicate, storage
// options or NULLS NOT DISTINCT, prints as the `format` below (the same quoting:
// `quote_identifier`), and a key that is a column prints as its name; tests/catalog.rs
// compares the two over every kind of index. Any other index is deparsed. The keys of all
// indexes are read in one join, not per index. `NULLS_NOT_DISTINCT` is the column of
// PostgreSQL 15+, or `false` before it.
// language=SQL
const INDEXES: &str = "
SELECT indrelid, index_name::text,
       CASE WHEN plain
            THEN format('CREATE %sINDEX %I ON %I.%I USING %I (%s)',
                        CASE WHEN indisunique THEN 'UNIQUE ' END, index_name, nspname, relname,
                        amname, array_to_string(elements, ', '))
            ELSE pg_get_indexdef(indexrelid) END,
       indisunique, amname::text,
       CASE WHEN columns_only THEN elements
            ELSE ARRAY(SELECT pg_get_indexdef(indexrelid, position, true)
                       FROM generate_series(1, indnkeyatts::int) AS position
                       ORDER BY position) END,
       pg_get_expr(indpred, indrelid, true),
       -- Settings a declaration cannot express yet: INCLUDE columns, DESC / NULLS FIRST,
       -- non-default operator classes, NULLS NOT DISTINCT.
       has_include OR has_settings OR nulls_not_distinct
FROM (SELECT i.indexrelid, i.indrelid, i.indisunique, i.indpred, i.indnkeyatts,
             ic.relname AS index_name, am.amname, n.nspname, t.relname,
             key.elements, key.columns_only, key.has_settings OR class_options.any AS has_settings,
             i.indnatts > i.indnkeyatts AS has_include,
             NULLS_NOT_DISTINCT AS nulls_not_distinct,
             key.plain AND i.indnatts = i.indnkeyatts AND i.indpred IS NULL
                 AND ic.reloptions IS NULL AND NOT NULLS_NOT_DISTINCT AND NOT class_options.any
                 AS plain
      FROM pg_index i
      JOIN pg_class ic ON ic.oid = i.indexrelid
      JOIN pg_am am ON am.oid = ic.relam
      JOIN pg_class t ON t.oid = i.indrelid
      JOIN pg_namespace n ON n.oid = t.relnamespace
      JOIN (SELECT k.indexrelid,
                   -- Each key as PostgreSQL prints it (NULL for an expression).
                   array_agg(quote_ident(a.attname::text) ORDER BY k.position) AS elements,
                   bool_and(a.attnum IS NOT NULL) AS columns_only,
                   bool_and(a.attnum IS NOT NULL AND a.attcollation = k.collation
                            AND k.option = 0 AND oc.opcdefault AND oc.opcintype = a.atttypid)
                       AS plain,
                   coalesce(bool_or(k.option <> 0 OR NOT oc.opcdefault), false) AS has_settings
            FROM (SELECT i.indexrelid, i.indrelid, key.column_number, key.position,
                         i.indcollation[key.position - 1] AS collation,
                         i.indclass[key.position - 1] AS class,
                         i.indoption[key.position - 1] AS option
                  FROM pg_index i
                  JOIN pg_class t ON t.oid = i.indrelid AND t.relkind = 'm'
                  CROSS JOIN LATERAL unnest(i.indkey) WITH ORDINALITY AS key(column_number, position)
                  WHERE key.position <= i.indnkeyatts) k
            -- Looked up through pg_attribute's index (`OFFSET 0` keeps the planner from
            -- hashing all of pg_attribute, which grows with every table in the database).
            LEFT JOIN LATERAL (SELECT a.attname, a.attnum, a.attcollation, a.atttypid
                               FROM pg_attribute a
                               WHERE a.attrelid = k.indrelid AND a.attnum = k.column_number
                                 AND k.column_number <> 0
                               OFFSET 0) a ON true
            LEFT JOIN pg_opclass oc ON oc.oid = k.class
            GROUP BY k.indexrelid) key ON key.indexrelid = i.indexrelid
      -- Operator class options (`tsvector_ops (siglen = 200)`) are the index columns' own.
      CROSS JOIN LATERAL (SELECT EXISTS (SELECT 1 FROM pg_attribute ia
                                         WHERE ia.attrelid = i.indexrelid
                                           AND ia.attoptions IS NOT NULL) AS any) class_options
      WHERE t.relkind = 'm'
        AND n.nspname <> ALL($1::text[]) AND n.nspname NOT LIKE 'pg\\_%') index";

/// [`INDEXES`] for a server of `server_version` (`server_version_num`).
fn indexes_sql(server_version: i32) -> String {
    let nulls_not_distinct = if server_version >= 150_000 {
        "i.indnullsnotdistinct"
    } else {
        "false"
    };
    INDEXES.replace("NULLS_NOT_DISTINCT", nulls_not_distinct)
}

// The owner's own privileges are implicit in ownership, so they are left out.
// language=SQL
const GRANTS: &str = "
SELECT c.oid, a.privilege_type::text,
       CASE WHEN a.grantee = 0 THEN NULL ELSE pg_get_userbyid(a.grantee)::text END
FROM pg_class c
JOIN pg_namespace n ON n.oid = c.relnamespace
CROSS JOIN LATERAL aclexplode(c.relacl) a
WHERE c.relkind IN ('v', 'm') AND c.relacl IS NOT NULL AND a.grantee <> c.relowner
  AND n.nspname <> ALL($1::text[]) AND n.nspname NOT LIKE 'pg\\_%'";

// The room the materialized views named by `$1` (schemas) and `$2` (names) take, which a
// side-by-side rebuild needs a second time. Each size opens the relation (and waits for
// any lock on it), so only the ones a plan may rebuild are asked for.
// language=SQL
const SIZES: &str = "
SELECT n.nspname::text, c.relname::text, pg_total_relation_size(c.oid)
FROM unnest($1::text[], $2::text[]) AS w(schema_name, relation_name)
JOIN pg_namespace n ON n.nspname = w.schema_name
JOIN pg_class c ON c.relnamespace = n.oid AND c.relname = w.relation_name AND c.relkind = 'm'";

// language=SQL
const NAMED_RELATIONS: &str = "
SELECT n.nspname::text, c.relname::text, c.relkind::text
FROM unnest($1::text[], $2::text[]) AS w(schema_name, relation_name)
JOIN pg_namespace n ON n.nspname = w.schema_name
JOIN pg_class c ON c.relnamespace = n.oid AND c.relname = w.relation_name";

/// Reads the catalog. `named` are the relations `depends-on` entries mention, looked up
/// whatever their kind; `state_schema` is left out of the inspection and read for state.
pub async fn introspect(
    client: &impl GenericClient,
    named: &[QualifiedName],
    state_schema: &str,
) -> Result<Catalog, tokio_postgres::Error> {
    let mut catalog = read_live(client, state_schema).await?;
    look_up_named(client, &mut catalog, named).await?;
    Ok(catalog)
}

/// Reads all of the catalog that does not depend on the declarations: the state, the
/// views and materialized views with their indexes, grants and reads, the guard's log.
pub async fn read_live(
    client: &impl GenericClient,
    state_schema: &str,
) -> Result<Catalog, tokio_postgres::Error> {
    let mut catalog = Catalog::default();
    let client = CountingClient::new(client);
    let excluded: Vec<&str> = SYSTEM_SCHEMAS
        .iter()
        .copied()
        .chain(std::iter::once(state_schema))
        .collect();
    let excluded = [(&excluded as &(dyn ToSql + Sync), Type::TEXT_ARRAY)];

    let state_table = crate::sql::state::table(state_schema, crate::sql::state::OBJECTS_TABLE);
    let drop_table = crate::guard::log_table(state_schema);
    let builds_table = crate::sql::state::table(state_schema, crate::sql::state::BUILDS_TABLE);
    let session = client
        .query_typed_one(
            SESSION,
            &[
                (&state_table, Type::TEXT),
                (&drop_table, Type::TEXT),
                (&crate::sql::state::RULE_HASH_COLUMN, Type::TEXT),
                (&builds_table, Type::TEXT),
            ],
        )
        .await?;
    catalog.server_version = session.get(0);
    let state_exists: bool = session.get(1);
    catalog.current_user = session.get(2);
    let guard_log_exists: bool = session.get(3);
    catalog.state_records_rule_hashes = session.get(4);
    // A state schema made by an older viewkeeper has no builds table: nothing was built.
    let builds_table_exists: bool = session.get(5);

    // Everything else is sent at once (typed queries need no round trip to prepare), so the
    // server runs the queries back to back while the answers already in are decoded.
    let relations_sql = relations_sql(&crate::sql::state::applied_rule_hashes(
        state_schema,
        catalog.state_records_rule_hashes,
    ));
    let indexes_sql = indexes_sql(catalog.server_version);
    let (state, default_grants, relations, indexes, grants, drops) = tokio::join!(
        async {
            if !state_exists {
                return Ok(None);
            }
            client.count();
            state::read(client.inner, state_schema, builds_table_exists)
                .await
                .map(Some)
        },
        client.query_typed(DEFAULT_GRANTS, &[]),
        async {
            // Decoded while the server runs the queries after it.
            let rows = client.query_typed(&relations_sql, &excluded).await?;
            Ok(rows.iter().map(LiveRelation::from_row).collect::<Vec<_>>())
        },
        client.query_typed(&indexes_sql, &excluded),
        client.query_typed(GRANTS, &excluded),
        async {
            if !guard_log_exists {
                return Ok(Vec::new());
            }
            client.count();
            crate::guard::query_log(client.inner, state_schema, true, i64::MAX).await
        },
    );
    // Every answer is awaited before any error is reported: see `Cause`.
    let mut cause = Cause::default();
    let state = cause.settle(state);
    let default_grants = cause.settle(default_grants);
    let relations = cause.settle(relations);
    let indexes = cause.settle(indexes);
    let grants = cause.settle(grants);
    let drops = cause.settle(drops);
    if let Some(error) = cause.0 {
        return Err(error);
    }
    catalog.state = state;
    catalog.drops = drops
        .into_iter()
        .map(|record| (record.object.clone(), record))
        .collect();

    for row in default_grants {
        let grantee = row
            .get::<_, Option<String>>(2)
            .map_or(Grantee::Public, Grantee::Role);
        catalog
            .default_grants
            .entry(row.get(0))
            .or_default()
            .insert((grantee, row.get(1)));
    }

    let mut names_by_oid: BTreeMap<u32, QualifiedName> = BTreeMap::new();
    for LiveRelation {
        name,
        mut relation,
        unchanged,
        deparsed,
        reads,
    } in relations
    {
        if !reads.is_empty() {
            catalog.reads.insert(name.clone(), reads);
        }
        let applied = catalog
            .state
            .as_ref()
            .and_then(|state| state.objects.get(&name));
        let definition = match applied {
            // The rule is the one recorded when it was applied: it prints as it did then.
            Some(applied) if unchanged => Some(applied.applied_definition.clone()),
            // NULL when the view was dropped while this query ran (migrations do not
            // take viewkeeper's lock): an empty definition reads as drift, not a crash.
            _ => deparsed,
        };
        if !unchanged
            && let (Some(applied), Some(definition)) = (applied, &definition)
            && applied.applied_definition == *definition
        {
            catalog.stale_rule_hashes.push(name.clone());
        }
        relation.definition = definition.unwrap_or_default();
        names_by_oid.insert(relation.oid, name.clone());
        catalog.relations.insert(name, relation);
    }

    for row in indexes {
        let Some(relation) = relation_by_oid(&mut catalog, &names_by_oid, row.get(0)) else {
            continue;
        };
        relation.indexes.insert(
            row.get(1),
            LiveIndex {
                definition: row.get::<_, Option<String>>(2).unwrap_or_default(),
                unique: row.get(3),
                method: row.get(4),
                elements: row
                    .get::<_, Vec<Option<String>>>(5)
                    .into_iter()
                    .flatten()
                    .collect(),
                predicate: row.get(6),
                declarable: !row.get::<_, bool>(7),
            },
        );
    }

    for row in grants {
        let Some(relation) = relation_by_oid(&mut catalog, &names_by_oid, row.get(0)) else {
            continue;
        };
        let grantee = row
            .get::<_, Option<String>>(2)
            .map_or(Grantee::Public, Grantee::Role);
        relation.grants.insert((grantee, row.get(1)));
    }

    if let Some(state) = &catalog.state {
        for temp in state.builds.keys() {
            catalog.reads.remove(temp);
            if let Some(copy) = catalog.relations.remove(temp) {
                catalog.built.insert(temp.clone(), copy);
            }
        }
    }
    catalog.queries_issued = client.issued.get();
    Ok(catalog)
}

/// Fills [`Catalog::named_relations`]: the kind of each relation in `named`, in one query.
pub async fn look_up_named(
    client: &impl GenericClient,
    catalog: &mut Catalog,
    named: &[QualifiedName],
) -> Result<(), tokio_postgres::Error> {
    catalog.queries_issued += 1;
    for (name, row) in query_named(client, NAMED_RELATIONS, named).await? {
        let relkind = row.get::<_, String>(2).chars().next().unwrap_or('?');
        catalog.named_relations.insert(name, relkind);
    }
    Ok(())
}

/// Fills [`Relation::size_bytes`] of the materialized views `names`, in one query (none
/// when `names` is empty); introspection leaves every size at 0.
pub async fn read_sizes(
    client: &impl GenericClient,
    catalog: &mut Catalog,
    names: &[&QualifiedName],
) -> Result<(), tokio_postgres::Error> {
    fill_named(client, catalog, SIZES, names, |relation, row| {
        relation.size_bytes = row.get::<_, Option<i64>>(2).unwrap_or(0);
    })
    .await
}

/// Fills [`Relation::columns`] of the relations `names`, in one query (none when `names` is
/// empty). Only a view a plan may replace in place needs them; formatting every column of
/// every relation took a third of introspection at 5,000 views.
pub async fn read_columns(
    client: &impl GenericClient,
    catalog: &mut Catalog,
    names: &[&QualifiedName],
) -> Result<(), tokio_postgres::Error> {
    fill_named(client, catalog, COLUMNS, names, |relation, row| {
        relation.columns = row.get(2);
    })
    .await
}

/// Runs `sql` on the relations `names` (`$1` schemas, `$2` names; each row starts with a
/// relation's schema and name) and hands each row to `fill` with the relation it names.
/// No query when `names` is empty.
async fn fill_named(
    client: &impl GenericClient,
    catalog: &mut Catalog,
    sql: &str,
    names: &[&QualifiedName],
    fill: impl Fn(&mut Relation, &tokio_postgres::Row),
) -> Result<(), tokio_postgres::Error> {
    if names.is_empty() {
        return Ok(());
    }
    catalog.queries_issued += 1;
    for (name, row) in query_named(client, sql, names.iter().copied()).await? {
        if let Some(relation) = catalog.relations.get_mut(&name) {
            fill(relation, &row);
        }
    }
    Ok(())
}

/// Runs `sql` on the relations `names` (`$1` schemas, `$2` names, as arrays), each row
/// paired with the relation its first two columns name. Typed: no round trip to prepare
/// it, on the way from the catalog to the plan.
async fn query_named<'n>(
    client: &impl GenericClient,
    sql: &str,
    names: impl IntoIterator<Item = &'n QualifiedName>,
) -> Result<Vec<(QualifiedName, tokio_postgres::Row)>, tokio_postgres::Error> {
    let (schemas, relations): (Vec<&str>, Vec<&str>) = names
        .into_iter()
        .map(|name| (name.schema.as_str(), name.name.as_str()))
        .unzip();
    let rows = client
        .query_typed(
            sql,
            &[(&schemas, Type::TEXT_ARRAY), (&relations, Type::TEXT_ARRAY)],
        )
        .await?;
    Ok(rows
        .into_iter()
        .map(|row| {
            let name = QualifiedName::new(row.get::<_, String>(0), row.get::<_, String>(1));
            (name, row)
        })
        .collect())
}

// The columns of the relations named by `$1` (schemas) and `$2` (names).
// language=SQL
const COLUMNS: &str = concat!(
    "
SELECT n.nspname::text, c.relname::text,
       ARRAY(SELECT ",
    column_sql!(),
    " FROM pg_attribute a
             WHERE a.attrelid = c.oid AND a.attnum > 0 AND NOT a.attisdropped ORDER BY a.attnum)
FROM unnest($1::text[], $2::text[]) AS w(schema_name, relation_name)
JOIN pg_namespace n ON n.nspname = w.schema_name
JOIN pg_class c ON c.relnamespace = n.oid AND c.relname = w.relation_name"
);

/// Counts the queries sent, so tests and the benchmark can check the count stays constant.
struct CountingClient<'c, C> {
    inner: &'c C,
    issued: std::cell::Cell<usize>,
}

impl<'c, C: GenericClient> CountingClient<'c, C> {
    fn new(inner: &'c C) -> Self {
        Self {
            inner,
            issued: std::cell::Cell::new(0),
        }
    }

    fn count(&self) {
        self.issued.set(self.issued.get() + 1);
    }

    async fn query_typed(
        &self,
        sql: &str,
        params: &[(&(dyn ToSql + Sync), Type)],
    ) -> Result<Vec<tokio_postgres::Row>, tokio_postgres::Error> {
        self.count();
        self.inner.query_typed(sql, params).await
    }

    async fn query_typed_one(
        &self,
        sql: &str,
        params: &[(&(dyn ToSql + Sync), Type)],
    ) -> Result<tokio_postgres::Row, tokio_postgres::Error> {
        self.count();
        self.inner.query_typed_one(sql, params).await
    }
}

/// The error to report from queries sent together in one transaction. The first that fails
/// aborts the transaction, and every one after it answers "current transaction is aborted":
/// the cause is the first other error, in the order the queries were sent. (A lock timeout
/// or a relation dropped mid-read must reach `waits`, which names the holder or reads again.)
#[derive(Default)]
struct Cause(Option<tokio_postgres::Error>);

impl Cause {
    /// The value of `result`, or an empty one once its error is noted.
    fn settle<T: Default>(&mut self, result: Result<T, tokio_postgres::Error>) -> T {
        result.unwrap_or_else(|error| {
            let aborted = |error: &tokio_postgres::Error| {
                error.code() == Some(&tokio_postgres::error::SqlState::IN_FAILED_SQL_TRANSACTION)
            };
            if self
                .0
                .as_ref()
                .is_none_or(|noted| aborted(noted) && !aborted(&error))
            {
                self.0 = Some(error);
            }
            T::default()
        })
    }
}

/// A row of the relations query, decoded; its definition is filled in once the state is read.
struct LiveRelation {
    name: QualifiedName,
    relation: Relation,
    /// The rule hash is the one recorded when the view was applied.
    unchanged: bool,
    /// `pg_get_viewdef`, read only when the rule hash differs.
    deparsed: Option<String>,
    /// The relations its query reads.
    reads: BTreeSet<QualifiedName>,
}

impl LiveRelation {
    fn from_row(row: &tokio_postgres::Row) -> LiveRelation {
        let kind = if row.get::<_, &str>(3) == "m" {
            Kind::MaterializedView
        } else {
            Kind::View
        };
        LiveRelation {
            name: QualifiedName::new(row.get::<_, String>(1), row.get::<_, String>(2)),
            relation: Relation {
                oid: row.get(0),
                kind,
                owner: row.get(4),
                definition: String::new(),
                populated: row.get(6),
                comment: row.get(7),
                options: row
                    .get::<_, Vec<&str>>(8)
                    .iter()
                    .filter_map(|option| option.split_once('='))
                    .map(|(key, value)| (key.to_owned(), value.to_owned()))
                    .collect(),
                undeclarable: row.get(9),
                columns: Vec::new(),
                indexes: BTreeMap::new(),
                grants: BTreeSet::new(),
                size_bytes: 0,
            },
            unchanged: row.get(10),
            deparsed: row.get(5),
            reads: row
                .get::<_, Vec<String>>(11)
                .into_iter()
                .zip(row.get::<_, Vec<String>>(12))
                .map(|(schema, name)| QualifiedName::new(schema, name))
                .collect(),
        }
    }
}

fn relation_by_oid<'c>(
    catalog: &'c mut Catalog,
    names_by_oid: &BTreeMap<u32, QualifiedName>,
    oid: u32,
) -> Option<&'c mut Relation> {
    let name = names_by_oid.get(&oid)?;
    catalog.relations.get_mut(name)
}

/// Lets PostgreSQL print each declared query the way it prints a live view, by creating it
/// as a temporary view. Creates objects: run it inside a savepoint or transaction that is
/// rolled back. A query PostgreSQL rejects gets no entry.
///
/// Each declared text reaches the server as exactly one statement through the extended
/// protocol (`CREATE TEMPORARY VIEW … AS <query>`), which PostgreSQL refuses to run when the
/// text holds a second statement: nothing a declaration smuggles in after a `;` is ever
/// executed. The statements are pipelined on the connection (sent without waiting for each
/// answer), so thousands of queries cost a few round trips, not one each.
pub async fn normalise(
    client: &impl GenericClient,
    queries: &[(QualifiedName, String)],
) -> Result<BTreeMap<QualifiedName, String>, tokio_postgres::Error> {
    Ok(read_back(client, queries)
        .await?
        .into_iter()
        .map(|(name, compiled)| (name, compiled.definition))
        .collect())
}

/// What PostgreSQL makes of a query compiled as a temporary view.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Compiled {
    /// `pg_get_viewdef` of the temporary view.
    pub definition: String,
    /// Its columns, as [`Relation::columns`] gives a live relation's.
    pub columns: Vec<String>,
}

/// [`normalise`], with the column list of each compiled query.
pub async fn read_back(
    client: &impl GenericClient,
    queries: &[(QualifiedName, String)],
) -> Result<BTreeMap<QualifiedName, Compiled>, tokio_postgres::Error> {
    if queries.is_empty() {
        return Ok(BTreeMap::new());
    }
    client.execute(NORMALISE_SAVEPOINT, &[]).await?;
    let creates: Vec<String> = queries
        .iter()
        .map(|(_, query)| format!("CREATE TEMPORARY VIEW {NORMALISE_VIEW} AS\n{query}"))
        .collect();
    // Requests go out in the order the futures are first polled, which `join_all` does in
    // order: for each query, create, read back, roll back. Each future is one request, so
    // none waits for an answer before the next is sent.
    let requests = creates.iter().flat_map(|create| {
        [create.as_str(), NORMALISE_READ_BACK, NORMALISE_UNDO]
            .map(|sql| client.query_typed(sql, &[]))
    });
    let mut answers = futures_util::future::join_all(requests).await.into_iter();
    let mut compiled = BTreeMap::new();
    for (name, _) in queries {
        let (Some(created), Some(read), Some(undone)) =
            (answers.next(), answers.next(), answers.next())
        else {
            break;
        };
        undone?;
        if let Err(error) = created {
            // Not a rejected query: a wait for a lock on what it reads, which the caller
            // bounds and reports.
            if crate::waits::timed_out(&error) {
                return Err(error);
            }
            tracing::debug!("PostgreSQL rejects the declared query of {name}: {error}");
            continue;
        }
        let read = read?;
        let Some(row) = read.first() else {
            continue;
        };
        if let Some(definition) = row.get::<_, Option<String>>(0) {
            compiled.insert(
                name.clone(),
                Compiled {
                    definition,
                    columns: row.get(1),
                },
            );
        }
    }
    Ok(compiled)
}

const NORMALISE_VIEW: &str = "pg_temp.viewkeeper_normalise";
const NORMALISE_SAVEPOINT: &str = "SAVEPOINT viewkeeper_normalise_each";
// `to_regclass` at run time: a `'…'::regclass` literal would be resolved when the statement
// is parsed, before the view exists.
// language=SQL
const NORMALISE_READ_BACK: &str = concat!(
    "SELECT pg_get_viewdef(to_regclass('pg_temp.viewkeeper_normalise')),
            ARRAY(SELECT ",
    column_sql!(),
    " FROM pg_attribute a
                  WHERE a.attrelid = to_regclass('pg_temp.viewkeeper_normalise')
                    AND a.attnum > 0 AND NOT a.attisdropped ORDER BY a.attnum)"
);
const NORMALISE_UNDO: &str = "ROLLBACK TO SAVEPOINT viewkeeper_normalise_each";

// Every column of every user relation: changes whenever a migration adds, drops, renames
// or retypes a column, or creates or drops a relation.
// language=SQL
const SCHEMA_FINGERPRINT: &str = "
SELECT md5(coalesce(string_agg(c.oid::text || ':' || a.attname || ':' || a.atttypid::text
                               || ':' || a.atttypmod::text, ',' ORDER BY c.oid, a.attnum), ''))
FROM pg_class c
JOIN pg_namespace n ON n.oid = c.relnamespace
JOIN pg_attribute a ON a.attrelid = c.oid
WHERE c.relkind IN ('r', 'p', 'v', 'm', 'f') AND a.attnum > 0 AND NOT a.attisdropped
  AND n.nspname <> ALL($1::text[]) AND n.nspname NOT LIKE 'pg\\_%'";

/// A digest of the shape of every user relation, to notice that the schema changed.
pub async fn schema_fingerprint(
    client: &impl GenericClient,
) -> Result<String, tokio_postgres::Error> {
    let row = client
        .query_one(SCHEMA_FINGERPRINT, &[&SYSTEM_SCHEMAS])
        .await?;
    Ok(row.get(0))
}
