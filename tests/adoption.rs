//! Adoption survives PostgreSQL's own printing quirks: whatever PostgreSQL prints and reads
//! back, `import` then `plan` is in sync.

mod support;

use support::{project, reconcile, run, test_db};

/// Views written in many styles, each one a known or likely non-fixed point of
/// `pg_get_viewdef`.
const VIEWS: &str = r#"
CREATE SCHEMA other;
CREATE TABLE a (id int PRIMARY KEY, name text, amount numeric, at timestamptz DEFAULT now());
CREATE TABLE b (code int, label text);
CREATE TABLE other.a (id int, extra text);
INSERT INTO a (id, name, amount) VALUES (1, 'x', 1.5), (2, 'y', 2.5);
INSERT INTO b VALUES (1, 'one');
CREATE VIEW natural_no_common AS SELECT * FROM a NATURAL LEFT JOIN b;
CREATE VIEW natural_join AS SELECT * FROM a NATURAL JOIN other.a;
CREATE VIEW using_join AS SELECT id, a.name, o.extra FROM a JOIN other.a o USING (id);
CREATE VIEW using_alias AS SELECT j.id FROM a JOIN other.a o USING (id) AS j;
CREATE VIEW row_constructors AS SELECT ROW(id, name) IS NOT NULL AS r, (id, amount) = (1, 1.5) AS eq, (ROW(id, name)::text) AS rt FROM a;
CREATE VIEW renamed (ident, nm) AS SELECT id, name FROM a;
CREATE VIEW overlapping AS SELECT a.id, o.id AS other_id, a.name AS id_name FROM a, other.a o WHERE a.id = o.id;
CREATE VIEW special_syntax AS SELECT
    EXTRACT(year FROM at) AS y,
    OVERLAY(name PLACING 'zz' FROM 1 FOR 1) AS o,
    name IS NORMALIZED AS n,
    name IS NFC NORMALIZED AS nfc,
    COLLATION FOR (name) AS c,
    TRIM(BOTH 'x' FROM name) AS t,
    SUBSTRING(name FROM 1 FOR 1) AS s,
    POSITION('x' IN name) AS p,
    CAST(amount AS int) AS i,
    amount::text COLLATE "C" AS collated,
    CURRENT_DATE AS d,
    at AT TIME ZONE 'UTC' AS utc,
    name SIMILAR TO 'x%' AS sim,
    id BETWEEN SYMMETRIC 2 AND 1 AS btw,
    NULLIF(id, 1) AS nul,
    COALESCE(name, 'n') AS coal,
    GREATEST(id, 2) AS g,
    ARRAY[id, 2] AS arr,
    id IS DISTINCT FROM 2 AS dist,
    CASE WHEN id > 1 THEN 'big' ELSE 'small' END AS size
FROM a;
CREATE VIEW grouped AS SELECT name, sum(amount) FILTER (WHERE id > 0) AS total,
    count(*) OVER (PARTITION BY name) AS w
    FROM a GROUP BY GROUPING SETS ((name), ()), id;
CREATE VIEW set_ops AS SELECT id FROM a UNION SELECT code FROM b EXCEPT SELECT 3 ORDER BY 1 LIMIT 5;
CREATE VIEW with_cte AS WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < 3)
    SELECT i, (SELECT max(id) FROM a) AS m FROM n WHERE EXISTS (SELECT 1 FROM b) AND i IN (SELECT id FROM a);
CREATE VIEW values_view AS VALUES (1, 'one'), (2, 'two');
CREATE VIEW lateral_view AS SELECT a.id, x.v FROM a, LATERAL (SELECT a.amount * 2 AS v) x;
CREATE MATERIALIZED VIEW mat_natural AS SELECT * FROM a NATURAL LEFT JOIN b;
CREATE VIEW on_view AS SELECT * FROM natural_no_common NATURAL FULL JOIN special_syntax;
"#;

#[test]
fn import_then_plan_is_in_sync_for_views_in_many_styles() {
    let db = test_db();
    db.batch(VIEWS);
    let dir = project(&[("viewkeeper.kdl", "search-path \"public\"\n")]);
    let (code, stdout, stderr) = run(&db, dir.path(), &["import"]);
    assert_eq!(code, 0, "{stdout}{stderr}");
    let (code, stdout, stderr) = run(&db, dir.path(), &["plan", "--detailed-exitcode"]);
    assert_eq!(code, 0, "import must be in sync:\n{stdout}{stderr}");
    // Reconcile records them as managed without touching them, and stays in sync.
    let oid = db.scalar_i64("SELECT 'natural_no_common'::regclass::oid::bigint");
    reconcile(&db, dir.path());
    assert_eq!(
        db.scalar_i64("SELECT 'natural_no_common'::regclass::oid::bigint"),
        oid,
        "adopted, not rebuilt"
    );
    let (code, stdout, stderr) = run(&db, dir.path(), &["plan", "--detailed-exitcode"]);
    assert_eq!(code, 0, "{stdout}{stderr}");
}
