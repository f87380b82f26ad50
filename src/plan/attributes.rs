//! The attributes of an object beside its query (indexes, grants, options, comment,
//! owner): the steps that give a new object all of them, and the steps that bring an
//! existing one in line. Pure.

use std::collections::{BTreeMap, BTreeSet};

use crate::catalog::{Catalog, LiveIndex, Relation};
use crate::name::parse_identifier;
use crate::objects::ManagedObject;
use crate::project::{Declaration, Grantee, Index};
use crate::sql::ddl;

use super::{IndexSource, Op};

/// Everything a new object needs after its create: indexes, grants (taking back what
/// `ALTER DEFAULT PRIVILEGES` adds at the create), comment and owner.
pub(super) fn for_create(declaration: &Declaration, catalog: &Catalog, owner: &str) -> Vec<Op> {
    let name = &declaration.name;
    let mut ops: Vec<Op> = declaration
        .indexes
        .iter()
        .map(|index| Op::CreateIndex {
            index: IndexSource::Declared(index.clone()),
            why: None,
            recreates: false,
        })
        .collect();
    let declared = declared_grants(declaration, catalog.server_version, owner);
    let defaults: BTreeSet<(Grantee, String)> = ["", name.schema.as_str()]
        .iter()
        .filter_map(|schema| catalog.default_grants.get(*schema))
        .flatten()
        .filter(|grant| !declared.contains(*grant))
        .cloned()
        .collect();
    ops.extend(revokes(&defaults, true));
    ops.extend(grants(&declared));
    if let Some(comment) = &declaration.comment {
        ops.push(Op::Comment {
            comment: Some(comment.clone()),
        });
    }
    if owner != catalog.current_user {
        ops.push(Op::Owner {
            from: None,
            to: owner.to_owned(),
        });
    }
    ops
}

/// The steps that bring an existing object's attributes in line with its declaration.
pub(super) fn to_alter(
    declaration: &Declaration,
    live: &Relation,
    managed: Option<&ManagedObject>,
    catalog: &Catalog,
) -> Vec<Op> {
    let mut ops = indexes_to_alter(declaration, live, managed);

    let owner = declaration.owner.as_deref().unwrap_or(&live.owner);
    let declared = declared_grants(declaration, catalog.server_version, owner);
    let to_revoke: BTreeSet<(Grantee, String)> =
        live.grants.difference(&declared).cloned().collect();
    let to_grant: BTreeSet<(Grantee, String)> =
        declared.difference(&live.grants).cloned().collect();
    // Revokes first, so a privilege moving between roles never exists twice.
    ops.extend(revokes(&to_revoke, false));
    ops.extend(grants(&to_grant));

    let sets: BTreeMap<String, String> = declaration
        .options
        .iter()
        .filter(|(key, value)| live.options.get(*key) != Some(*value))
        .map(|(key, value)| (key.clone(), value.clone()))
        .collect();
    if !sets.is_empty() {
        ops.push(Op::SetOptions { options: sets });
    }
    let resets: Vec<String> = live
        .options
        .keys()
        .filter(|key| !declaration.options.contains_key(*key))
        .cloned()
        .collect();
    if !resets.is_empty() {
        ops.push(Op::ResetOptions { keys: resets });
    }

    if declaration.comment != live.comment {
        ops.push(Op::Comment {
            comment: declaration.comment.clone(),
        });
    }
    if let Some(owner) = &declaration.owner
        && owner != &live.owner
    {
        ops.push(Op::Owner {
            from: Some(live.owner.clone()),
            to: owner.clone(),
        });
    }
    ops
}

/// Declared indexes that are missing or differ (recreated), and live ones not declared
/// (dropped). An index viewkeeper applied is compared by its statement and its live
/// definition; one it did not create, part by part ([`same_index`]).
fn indexes_to_alter(
    declaration: &Declaration,
    live: &Relation,
    managed: Option<&ManagedObject>,
) -> Vec<Op> {
    let applied: BTreeMap<&str, _> = managed
        .map(|m| {
            m.applied_indexes
                .iter()
                .map(|i| (i.name.as_str(), i))
                .collect()
        })
        .unwrap_or_default();
    let mut ops = Vec::new();
    for index in &declaration.indexes {
        let live_index = live.indexes.get(&index.name);
        let why = match (live_index, applied.get(index.name.as_str())) {
            (None, _) => Some("missing"),
            (Some(live_index), Some(applied))
                if applied.sql == ddl::create_index(&declaration.name, index) =>
            {
                (live_index.definition != applied.definition)
                    .then_some("changed outside viewkeeper")
            }
            (Some(_), Some(_)) => Some("declaration changed"),
            (Some(live_index), None) => {
                (!same_index(live_index, index)).then_some("not created by viewkeeper")
            }
        };
        if let Some(why) = why {
            if live_index.is_some() {
                ops.push(Op::DropIndex {
                    index: index.name.clone(),
                    why: None,
                });
            }
            ops.push(Op::CreateIndex {
                index: IndexSource::Declared(index.clone()),
                why: Some(why),
                recreates: live_index.is_some(),
            });
        }
    }
    for index_name in live.indexes.keys() {
        if !declaration
            .indexes
            .iter()
            .any(|index| &index.name == index_name)
        {
            ops.push(Op::DropIndex {
                index: index_name.clone(),
                why: Some("not declared"),
            });
        }
    }
    ops
}

/// One GRANT per grantee.
fn grants(pairs: &BTreeSet<(Grantee, String)>) -> Vec<Op> {
    grouped(pairs)
        .into_iter()
        .map(|(grantee, privileges)| Op::Grant {
            grantee,
            privileges,
        })
        .collect()
}

/// One REVOKE per grantee.
fn revokes(pairs: &BTreeSet<(Grantee, String)>, default: bool) -> Vec<Op> {
    grouped(pairs)
        .into_iter()
        .map(|(grantee, privileges)| Op::Revoke {
            grantee,
            privileges,
            default,
        })
        .collect()
}

/// The `(grantee, privilege)` pairs a declaration asks for, with `ALL` spelled out for the
/// server's version (PostgreSQL 17 added MAINTAIN). Grants to the owner are left out: an
/// owner holds every privilege, and the catalog never lists them as grants.
fn declared_grants(
    declaration: &Declaration,
    server_version: i32,
    owner: &str,
) -> BTreeSet<(Grantee, String)> {
    let all = crate::project::all_privileges(server_version);
    let mut pairs = BTreeSet::new();
    for grant in declaration
        .grants
        .iter()
        .filter(|grant| grant.role != Grantee::Role(owner.to_owned()))
    {
        for privilege in &grant.privileges {
            if privilege == "ALL" {
                pairs.extend(all.iter().map(|p| (grant.role.clone(), (*p).to_owned())));
            } else {
                pairs.insert((grant.role.clone(), privilege.clone()));
            }
        }
    }
    pairs
}

fn grouped(pairs: &BTreeSet<(Grantee, String)>) -> BTreeMap<Grantee, Vec<String>> {
    let mut groups: BTreeMap<Grantee, Vec<String>> = BTreeMap::new();
    for (grantee, privilege) in pairs {
        groups
            .entry(grantee.clone())
            .or_default()
            .push(privilege.clone());
    }
    groups
}

/// Whether an existing index viewkeeper did not create is the declared one, part by part:
/// uniqueness, access method, key columns or expressions (as PostgreSQL prints them, which
/// is what `import` writes) and predicate. Lets adoption keep indexes as they are.
fn same_index(live: &LiveIndex, declared: &Index) -> bool {
    let method = declared.using.as_deref().map_or_else(
        || "btree".to_owned(),
        |m| parse_identifier(m).unwrap_or_else(|_| m.to_owned()),
    );
    let element = |text: &str| -> String {
        match parse_identifier(text) {
            Ok(column) => column,
            Err(_) => strip_parens(text).to_owned(),
        }
    };
    live.declarable
        && live.unique == declared.unique
        && live.method == method
        && live.predicate.as_deref().map(strip_parens)
            == declared.predicate.as_deref().map(strip_parens)
        && live.elements.len() == declared.elements.len()
        && live
            .elements
            .iter()
            .zip(&declared.elements)
            .all(|(live, declared)| element(live) == element(declared))
}

/// `(expr)` → `expr`, once, when the outer parentheses enclose the whole text
/// (`(a) + (b)` stays as it is).
fn strip_parens(text: &str) -> &str {
    let text = text.trim();
    let Some(inner) = text.strip_prefix('(').and_then(|t| t.strip_suffix(')')) else {
        return text;
    };
    let mut depth = 0i32;
    for c in inner.chars() {
        depth += match c {
            '(' => 1,
            ')' => -1,
            _ => 0,
        };
        if depth < 0 {
            return text;
        }
    }
    if depth == 0 { inner } else { text }
}
