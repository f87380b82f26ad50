//! Schema-qualified relation names, parsed the way PostgreSQL reads identifiers.

use std::fmt;

use serde::{Deserialize, Serialize};

use crate::sql::quote_ident;

/// PostgreSQL silently truncates identifiers longer than this (NAMEDATALEN - 1), which
/// would make the name in the catalog differ from the declared one.
const MAX_IDENTIFIER_BYTES: usize = 63;

/// A relation's schema and name, as they are stored in the catalog (already case-folded).
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct QualifiedName {
    pub schema: String,
    pub name: String,
}

/// Why a name could not be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum NameError {
    #[error("the name is empty")]
    Empty,
    #[error("`{0}` is not a valid identifier")]
    InvalidIdentifier(String),
    #[error("an unterminated double quote")]
    UnterminatedQuote,
    #[error("too many dots: a name is `schema.name` or `name`")]
    TooManyParts,
    #[error("`{0}` is longer than PostgreSQL's 63-byte identifier limit")]
    TooLong(String),
    #[error("`{0}` has no schema: write `schema.name`")]
    Unqualified(String),
}

impl QualifiedName {
    pub fn new(schema: impl Into<String>, name: impl Into<String>) -> Self {
        Self {
            schema: schema.into(),
            name: name.into(),
        }
    }

    /// Reads `schema.name` or `name` (schema `default_schema`). Unquoted parts fold to
    /// lower case as in SQL; double-quoted parts are taken exactly (`"Sales"."Q1"`).
    pub fn parse(text: &str, default_schema: &str) -> Result<Self, NameError> {
        let parts = split_identifiers(text)?;
        match parts.as_slice() {
            [name] => Ok(Self::new(default_schema, name.clone())),
            [schema, name] => Ok(Self::new(schema.clone(), name.clone())),
            [] => Err(NameError::Empty),
            _ => Err(NameError::TooManyParts),
        }
    }

    /// The name as SQL: both parts quoted.
    pub fn to_sql(&self) -> String {
        format!("{}.{}", quote_ident(&self.schema), quote_ident(&self.name))
    }
}

/// Serialised as its display form (`public.sales`), the string JSON consumers compare.
impl Serialize for QualifiedName {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

/// Read back from its display form, schema required (`public.sales`, `public."Big"`):
/// catalog snapshots key relations by name.
impl<'de> Deserialize<'de> for QualifiedName {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        text.parse().map_err(serde::de::Error::custom)
    }
}

impl std::str::FromStr for QualifiedName {
    type Err = NameError;

    /// The inverse of `Display`: both parts required, since no default schema applies.
    fn from_str(text: &str) -> Result<Self, NameError> {
        match split_identifiers(text)?.as_slice() {
            [schema, name] => Ok(Self::new(schema.clone(), name.clone())),
            [_] => Err(NameError::Unqualified(text.to_owned())),
            _ => Err(NameError::TooManyParts),
        }
    }
}

impl fmt::Display for QualifiedName {
    /// Readable form for messages and plans: quotes only where SQL would need them.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}.{}",
            display_identifier(&self.schema),
            display_identifier(&self.name)
        )
    }
}

/// An identifier as PostgreSQL prints it: bare when it can be, quoted otherwise.
pub(crate) fn display_identifier(part: &str) -> String {
    if is_plain_identifier(part) {
        part.to_owned()
    } else {
        quote_ident(part)
    }
}

/// True for identifiers SQL reads back unchanged without quotes.
pub(crate) fn is_plain_identifier(text: &str) -> bool {
    let mut chars = text.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_lowercase() || c == '_')
        && chars.all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_' || c == '$')
}

/// Reads a single identifier with the same folding rules as [`QualifiedName::parse`].
pub fn parse_identifier(text: &str) -> Result<String, NameError> {
    let parts = split_identifiers(text)?;
    match parts.as_slice() {
        [one] => Ok(one.clone()),
        [] => Err(NameError::Empty),
        _ => Err(NameError::TooManyParts),
    }
}

fn split_identifiers(text: &str) -> Result<Vec<String>, NameError> {
    let text = text.trim();
    if text.is_empty() {
        return Err(NameError::Empty);
    }
    let mut parts = Vec::new();
    let mut chars = text.chars().peekable();
    loop {
        let part = if chars.peek() == Some(&'"') {
            chars.next();
            let mut part = String::new();
            loop {
                match chars.next() {
                    Some('"') if chars.peek() == Some(&'"') => {
                        chars.next();
                        part.push('"');
                    }
                    Some('"') => break,
                    Some(c) => part.push(c),
                    None => return Err(NameError::UnterminatedQuote),
                }
            }
            if part.is_empty() {
                return Err(NameError::InvalidIdentifier("\"\"".into()));
            }
            part
        } else {
            let mut raw = String::new();
            while let Some(&c) = chars.peek() {
                if c == '.' {
                    break;
                }
                raw.push(c);
                chars.next();
            }
            let folded = raw.to_lowercase();
            if !is_plain_identifier(&folded) {
                return Err(if raw.is_empty() {
                    NameError::Empty
                } else {
                    NameError::InvalidIdentifier(raw)
                });
            }
            folded
        };
        if part.len() > MAX_IDENTIFIER_BYTES {
            return Err(NameError::TooLong(part));
        }
        parts.push(part);
        match chars.next() {
            None => return Ok(parts),
            Some('.') => {}
            Some(_) => return Err(NameError::InvalidIdentifier(text.to_owned())),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_qualified_and_unqualified_names() {
        assert_eq!(
            QualifiedName::parse("sales_summary", "public"),
            Ok(QualifiedName::new("public", "sales_summary"))
        );
        assert_eq!(
            QualifiedName::parse("Reporting.Sales", "public"),
            Ok(QualifiedName::new("reporting", "sales"))
        );
        assert_eq!(
            QualifiedName::parse("\"Reporting\".\"Q1 \"\"x\"\"\"", "public"),
            Ok(QualifiedName::new("Reporting", "Q1 \"x\""))
        );
    }

    #[test]
    fn rejects_bad_names() {
        assert_eq!(QualifiedName::parse("", "public"), Err(NameError::Empty));
        assert_eq!(
            QualifiedName::parse("a.b.c", "public"),
            Err(NameError::TooManyParts)
        );
        assert!(QualifiedName::parse("sales summary", "public").is_err());
        assert!(QualifiedName::parse("1abc", "public").is_err());
        assert!(QualifiedName::parse("\"open", "public").is_err());
        assert!(QualifiedName::parse(&"x".repeat(64), "public").is_err());
    }

    #[test]
    fn displays_with_quotes_only_when_needed() {
        assert_eq!(QualifiedName::new("public", "a").to_string(), "public.a");
        assert_eq!(
            QualifiedName::new("public", "Big").to_string(),
            "public.\"Big\""
        );
        assert_eq!(
            QualifiedName::new("public", "a").to_sql(),
            "\"public\".\"a\""
        );
    }

    #[test]
    fn reads_back_its_display_form() {
        for name in [
            QualifiedName::new("public", "sales"),
            QualifiedName::new("Reporting", "Q1 \"x\""),
        ] {
            assert_eq!(name.to_string().parse::<QualifiedName>(), Ok(name.clone()));
            let json = serde_json::to_string(&name).expect("a name serialises");
            assert_eq!(
                serde_json::from_str::<QualifiedName>(&json).expect("and reads back"),
                name
            );
        }
        assert_eq!(
            "sales".parse::<QualifiedName>(),
            Err(NameError::Unqualified("sales".to_owned()))
        );
    }
}
