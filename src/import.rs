//! `viewkeeper import`: declarations for the views and materialized views already in the
//! database, one file per object. Pure: (catalog, filters) → files to write; the command
//! writes them. Right after an import, `plan` finds everything in sync (the queries are
//! PostgreSQL's own text, so they normalise to the live definitions) and reconcile adopts
//! the objects without rebuilding them.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;

use crate::catalog::{Catalog, LiveIndex, Relation};
use crate::name::{QualifiedName, is_plain_identifier};
use crate::project::{Grantee, Kind};

/// A declaration file to write.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImportedFile {
    pub object: QualifiedName,
    /// File name inside the declaration folder.
    pub file_name: String,
    pub text: String,
}

/// One file per view or materialized view in `schemas` (all non-system schemas when empty),
/// leaving out `skip` (already declared).
pub fn import(
    catalog: &Catalog,
    schemas: &[String],
    skip: &BTreeSet<QualifiedName>,
    with_depends_on: bool,
) -> Vec<ImportedFile> {
    catalog
        .relations
        .iter()
        .filter(|(name, _)| schemas.is_empty() || schemas.contains(&name.schema))
        .filter(|(name, _)| !skip.contains(*name))
        .map(|(name, relation)| ImportedFile {
            object: name.clone(),
            file_name: file_name(name),
            text: declaration(name, relation, catalog.reads.get(name), with_depends_on),
        })
        .collect()
}

/// How many of the objects `import` would consider in `schemas` are left alone because
/// they are already declared.
pub fn left_alone(
    catalog: &Catalog,
    schemas: &[String],
    declared: &BTreeSet<QualifiedName>,
) -> usize {
    catalog
        .relations
        .keys()
        .filter(|name| schemas.is_empty() || schemas.contains(&name.schema))
        .filter(|name| declared.contains(*name))
        .count()
}

/// `public.sales_summary.kdl`, with anything unusual in a file name replaced by `_`.
fn file_name(name: &QualifiedName) -> String {
    let safe = |part: &str| -> String {
        part.chars()
            .map(|c| {
                if c.is_alphanumeric() || c == '_' || c == '-' {
                    c
                } else {
                    '_'
                }
            })
            .collect()
    };
    format!("{}.{}.kdl", safe(&name.schema), safe(&name.name))
}

fn declaration(
    name: &QualifiedName,
    relation: &Relation,
    reads: Option<&BTreeSet<QualifiedName>>,
    with_depends_on: bool,
) -> String {
    let mut text = String::new();
    let _ = writeln!(
        text,
        "// Imported from the database by `viewkeeper import`."
    );
    let _ = writeln!(
        text,
        "{} {} {{",
        relation.kind.keyword(),
        kdl_string(&name.to_string())
    );
    let dependencies: Vec<String> = reads
        .into_iter()
        .flatten()
        .filter(|read| !matches!(read.schema.as_str(), "pg_catalog" | "information_schema"))
        .map(|read| kdl_string(&read.to_string()))
        .collect();
    // Without the flag, `depends-on` is written only for a query the parser cannot read.
    let inferable = crate::project::infer::relations_read(&relation.definition).is_ok();
    if !dependencies.is_empty() && (with_depends_on || !inferable) {
        let _ = writeln!(text, "    depends-on {}", dependencies.join(" "));
    }
    let _ = writeln!(
        text,
        "    query {}",
        multiline(&query_text(&relation.definition))
    );
    if !relation.options.is_empty() {
        let options: Vec<String> = relation
            .options
            .iter()
            .map(|(key, value)| match value.as_str() {
                "true" | "on" => format!("{key}=#true"),
                "false" | "off" => format!("{key}=#false"),
                _ => format!("{key}={}", kdl_string(value)),
            })
            .collect();
        let _ = writeln!(text, "    with {}", options.join(" "));
    }
    if relation.kind == Kind::MaterializedView {
        for (index_name, index) in &relation.indexes {
            if !index.declarable {
                let _ = writeln!(
                    text,
                    "    // {index_name} has settings a declaration cannot express yet (INCLUDE, DESC, \
                     an operator class or NULLS NOT DISTINCT): reconcile would recreate it without \
                     them. It is: {}",
                    index.definition
                );
            }
            let _ = writeln!(text, "    {}", index_node(index_name, index));
        }
        if !relation.populated {
            let _ = writeln!(text, "    populate #false");
        }
    }
    let mut grants: BTreeMap<&Grantee, Vec<&str>> = BTreeMap::new();
    for (grantee, privilege) in &relation.grants {
        grants.entry(grantee).or_default().push(privilege);
    }
    for (grantee, privileges) in grants {
        let privileges: Vec<String> = privileges.iter().map(|p| kdl_string(p)).collect();
        let _ = writeln!(
            text,
            "    grant {} to={}",
            privileges.join(" "),
            kdl_string(&grantee.to_string())
        );
    }
    if let Some(comment) = &relation.comment {
        let _ = writeln!(text, "    comment {}", kdl_string(comment));
    }
    let _ = writeln!(text, "    owner {}", kdl_string(&relation.owner));
    text.push_str("}\n");
    text
}

/// `pg_get_viewdef` text without its final `;`. Nothing else changes: indentation inside a
/// multi-line string literal is part of the query.
fn query_text(definition: &str) -> String {
    definition.trim_end().trim_end_matches(';').to_owned()
}

fn index_node(name: &str, index: &LiveIndex) -> String {
    let elements: Vec<String> = index
        .elements
        .iter()
        .map(|element| {
            if is_plain_identifier(element) || element.starts_with('(') {
                kdl_string(element)
            } else {
                // An expression: parenthesised, as CREATE INDEX needs for most of them.
                kdl_string(&format!("({element})"))
            }
        })
        .collect();
    let mut node = format!("index {}", elements.join(" "));
    if index.unique {
        node.push_str(" unique=#true");
    }
    let _ = write!(node, " name={}", kdl_string(name));
    if index.method != "btree" {
        let _ = write!(node, " using={}", kdl_string(&index.method));
    }
    if let Some(predicate) = &index.predicate {
        let _ = write!(node, " where={}", kdl_string(predicate));
    }
    node
}

/// A KDL 2.0 quoted string with the escapes KDL defines.
fn kdl_string(text: &str) -> String {
    let mut quoted = String::with_capacity(text.len() + 2);
    quoted.push('"');
    for c in text.chars() {
        match c {
            '"' => quoted.push_str("\\\""),
            '\\' => quoted.push_str("\\\\"),
            '\n' => quoted.push_str("\\n"),
            '\r' => quoted.push_str("\\r"),
            '\t' => quoted.push_str("\\t"),
            c if c.is_control() => {
                let _ = write!(quoted, "\\u{{{:x}}}", u32::from(c));
            }
            c => quoted.push(c),
        }
    }
    quoted.push('"');
    quoted
}

/// A raw multi-line KDL string (`#"""…"""#`): SQL keeps its quotes and backslashes as they
/// are, and each line sits indented inside the declaration.
fn multiline(text: &str) -> String {
    let mut hashes = 1;
    while text.contains(&format!("\"\"\"{}", "#".repeat(hashes))) {
        hashes += 1;
    }
    let hashes = "#".repeat(hashes);
    let mut block = format!("{hashes}\"\"\"\n");
    for line in text.lines() {
        if line.is_empty() {
            block.push('\n');
        } else {
            let _ = writeln!(block, "        {line}");
        }
    }
    let _ = write!(block, "        \"\"\"{hashes}");
    block
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escapes_kdl_strings() {
        assert_eq!(kdl_string("say \"hi\"\\n"), "\"say \\\"hi\\\"\\\\n\"");
        assert_eq!(kdl_string("a\tb\n"), "\"a\\tb\\n\"");
    }

    #[test]
    fn writes_queries_as_raw_multiline_strings() {
        assert_eq!(
            multiline("SELECT 'a\"\"\"#'\nFROM t"),
            "##\"\"\"\n        SELECT 'a\"\"\"#'\n        FROM t\n        \"\"\"##"
        );
        assert_eq!(
            query_text(" SELECT a,\n    b\n   FROM t;"),
            " SELECT a,\n    b\n   FROM t"
        );
    }
}
