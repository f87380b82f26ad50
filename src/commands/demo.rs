//! `viewkeeper demo`: the invoices scenario end to end on a throwaway server.
//!
//! It loads the repository's own `views/` declarations (bundled into the binary, so the demo
//! runs from anywhere), reconciles, lets a Django-style migration drop everything with
//! CASCADE, shows what `plan` says was lost and why, and puts it all back.

use std::io::Write;

use super::{Status, ignore_broken_pipe, run_reconcile, show_plan, stdout};
use crate::cli::PlanFormat;
use crate::db;
use crate::error::Error;
use crate::project::Project;
use crate::sandbox::Sandbox;

/// The declarations, as in the repository's `views/` folder.
const DECLARATIONS: &[(&str, &str)] = &[
    (
        "views/invoices.kdl",
        include_str!("../../views/invoices.kdl"),
    ),
    (
        "views/sales_by_seller.sql",
        include_str!("../../views/sales_by_seller.sql"),
    ),
];

// language=SQL
const SETUP: &str = "
CREATE ROLE reporting NOLOGIN;
CREATE TABLE invoices_invoice (
    id serial PRIMARY KEY,
    seller_no integer NOT NULL,
    invoice_date date NOT NULL,
    invoice_amt numeric(13,2) NOT NULL
);
INSERT INTO invoices_invoice (seller_no, invoice_date, invoice_amt)
SELECT 1 + i % 25, CURRENT_DATE - (i % 90), round((10 + (i * 7919) % 990)::numeric, 2)
FROM generate_series(1, 20000) AS i;";

// What Django runs for an AlterField on a column that views read: PostgreSQL refuses to
// change the type under a view, so the migration drops the view first, with CASCADE.
// language=SQL
const MIGRATION: &str = "
DROP MATERIALIZED VIEW sales_summary CASCADE;
ALTER TABLE invoices_invoice ALTER COLUMN invoice_amt TYPE numeric(15,2);";

// language=SQL
const INSPECT: &str = "
SELECT c.relname::text,
       CASE c.relkind WHEN 'm' THEN 'materialized view' ELSE 'view' END,
       CASE WHEN c.relkind = 'm' AND c.relispopulated THEN
           (xpath('/row/n/text()', query_to_xml(
               format('SELECT count(*) AS n FROM %s', c.oid::regclass), false, true, '')))[1]::text
           || ' rows'
           WHEN c.relkind = 'm' THEN 'no data' ELSE '' END,
       coalesce((SELECT string_agg(i.relname, ', ') FROM pg_index x
                 JOIN pg_class i ON i.oid = x.indexrelid WHERE x.indrelid = c.oid), ''),
       coalesce(array_to_string(c.relacl, ' '), ''),
       coalesce(obj_description(c.oid, 'pg_class'), '')
FROM pg_class c
WHERE c.relnamespace = 'public'::regnamespace AND c.relkind IN ('v', 'm')
ORDER BY c.relname";

pub(crate) async fn run() -> Result<Status, Error> {
    let mut out = stdout();
    let bold = anstyle::Style::new().bold();
    let mut say = |text: &str| ignore_broken_pipe(writeln!(out, "\n{bold}== {text}{bold:#}"));

    say("Starting a throwaway PostgreSQL server")?;
    let sandbox = Sandbox::start()?;
    let project_dir = tempfile::tempdir().map_err(|source| Error::Io {
        context: "cannot create a folder for the demo project".to_owned(),
        source,
    })?;
    for (path, text) in DECLARATIONS {
        let path = project_dir.path().join(path);
        let written = path
            .parent()
            .map_or(Ok(()), std::fs::create_dir_all)
            .and_then(|()| std::fs::write(&path, text));
        written.map_err(|source| Error::Io {
            context: format!("cannot write {}", path.display()),
            source,
        })?;
    }
    let project = Project::load(project_dir.path())?;
    // The throwaway server is fully described by its URL: the caller's PG* variables
    // (PGSSLMODE, PGPASSWORD, …) are meant for their own databases, not this one.
    let mut client = db::connect_with(
        &sandbox.url("postgres"),
        &project.config.search_path,
        &db::Environment::from_vars(std::iter::empty::<(String, String)>()),
    )
    .await?;
    let sql = |error: tokio_postgres::Error| Error::Catalog(db::describe(&error));

    say("A table of 20,000 invoices and a `reporting` role")?;
    client.batch_execute(SETUP).await.map_err(sql)?;

    say("$ viewkeeper plan        (declarations: views/invoices.kdl)")?;
    show_plan(&project, &mut client, PlanFormat::Text).await?;

    say("$ viewkeeper reconcile")?;
    run_reconcile(&project, &mut client, &crate::apply::Intent::UNATTENDED).await?;
    inspect(&client).await?;

    say("$ viewkeeper guard install        (records who drops a managed view, and how)")?;
    crate::guard::install(&mut client, &project.config.state_schema, false).await?;

    say(
        "A Django migration changes invoice_amt's type: DROP MATERIALIZED VIEW sales_summary CASCADE",
    )?;
    client.batch_execute(MIGRATION).await.map_err(sql)?;
    inspect(&client).await?;

    say("$ viewkeeper plan        (what the migration took away, and why)")?;
    show_plan(&project, &mut client, PlanFormat::Text).await?;

    say("$ viewkeeper reconcile")?;
    run_reconcile(&project, &mut client, &crate::apply::Intent::UNATTENDED).await?;

    say("Everything is back: views, index, grant, comment and data")?;
    inspect(&client).await?;

    say("$ viewkeeper plan")?;
    show_plan(&project, &mut client, PlanFormat::Text).await?;
    drop(client);
    sandbox.stop();
    Ok(Status::Done)
}

/// Prints the views in `public` with their data, indexes, grants and comments.
async fn inspect(client: &tokio_postgres::Client) -> Result<(), Error> {
    let rows = client
        .query(INSPECT, &[])
        .await
        .map_err(|error| Error::Catalog(db::describe(&error)))?;
    let mut out = stdout();
    if rows.is_empty() {
        ignore_broken_pipe(writeln!(out, "  (no views left in schema public)"))?;
    }
    for row in rows {
        let mut parts = vec![format!("{:<16}", row.get::<_, String>(0)), row.get(1)];
        for (label, column) in [("", 2), ("index: ", 3), ("grants: ", 4), ("comment: ", 5)] {
            let value: String = row.get(column);
            if !value.is_empty() {
                parts.push(format!("{label}{value}"));
            }
        }
        ignore_broken_pipe(writeln!(out, "  {}", parts.join("  |  ")))?;
    }
    Ok(())
}
