//! Rules for the SQL names the derive produces: the same rules as
//! `immu_core::schema::validate_table`, applied at compile time, and the names of the column
//! constants.

use proc_macro2::{Ident, Span};

/// The columns immu adds to every versioned table (`immu_core::RESERVED_COLUMNS`).
pub(crate) const RESERVED_COLUMNS: [&str; 11] = [
    "id",
    "entity_id",
    "version",
    "valid_from",
    "deleted_at",
    "immu_actor",
    "immu_reason",
    "immu_context",
    "immu_db_user",
    "immu_application",
    "immu_revert_of",
];

/// PostgreSQL's identifier length limit (`NAMEDATALEN - 1`).
pub(crate) const MAX_IDENTIFIER_LEN: usize = 63;

/// Longest table name: the index names immu derives from it (`<table>_current_pkey`, ...) must fit
/// in [`MAX_IDENTIFIER_LEN`] (`immu_core::schema::MAX_TABLE_NAME_LEN`).
pub(crate) const MAX_TABLE_NAME_LEN: usize = 48;

/// What a name is used for: tables have a shorter length limit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum NameKind {
    /// A table name.
    Table,
    /// A column name.
    Column,
}

impl NameKind {
    /// `"table"` or `"column"`.
    pub(crate) fn noun(self) -> &'static str {
        match self {
            NameKind::Table => "table",
            NameKind::Column => "column",
        }
    }
}

/// Why `name` cannot be a table or column name, or `None` if it can.
///
/// Allowed: non-empty, ASCII letters, digits and `_`, not starting with a digit, at most 63 bytes
/// (48 for tables). SQL keywords are fine: immu quotes every identifier.
pub(crate) fn identifier_problem(name: &str, kind: NameKind) -> Option<String> {
    if name.is_empty() {
        return Some("it is empty".to_owned());
    }
    if let Some(c) = name.chars().find(|&c| !(c.is_ascii_alphanumeric() || c == '_')) {
        return Some(format!("it contains {}; only ASCII letters, digits and `_` are allowed", describe(c)));
    }
    if name.starts_with(|c: char| c.is_ascii_digit()) {
        return Some("it starts with a digit".to_owned());
    }
    let len = name.len();
    match kind {
        NameKind::Table if len > MAX_TABLE_NAME_LEN => Some(format!(
            "it is {len} bytes long; table names are limited to {MAX_TABLE_NAME_LEN} bytes so that the \
             index names immu derives from them (`<table>_current_pkey`, ...) fit in PostgreSQL's \
             {MAX_IDENTIFIER_LEN}-byte limit"
        )),
        NameKind::Column if len > MAX_IDENTIFIER_LEN => Some(format!(
            "it is {len} bytes long; PostgreSQL truncates identifiers longer than {MAX_IDENTIFIER_LEN} bytes"
        )),
        _ => None,
    }
}

/// A readable description of a character that is not allowed in a name.
fn describe(c: char) -> String {
    match c {
        ' ' => "a space".to_owned(),
        '\0' => "a NUL character".to_owned(),
        c if c.is_control() || c.is_whitespace() => format!("the character `{}`", c.escape_default()),
        c if !c.is_ascii() => format!("the non-ASCII character `{c}`"),
        c => format!("`{c}`"),
    }
}

/// The reserved column that `name` is (`Exact`) or that it differs from only by ASCII case
/// (`CaseVariant`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Reserved {
    /// `name` is a reserved column.
    Exact(&'static str),
    /// `name` equals a reserved column ignoring case, e.g. `Version`.
    CaseVariant(&'static str),
    /// `name` starts with `immu_` (in any case): immu reserves those names for its own columns.
    Prefix,
}

/// The prefix of the names immu reserves for columns of its own, now and in later releases.
pub(crate) const RESERVED_PREFIX: &str = "immu_";

/// Whether `name` collides with one of the columns immu adds to every table.
pub(crate) fn reserved(name: &str) -> Option<Reserved> {
    let column = RESERVED_COLUMNS
        .iter()
        .find(|r| r.eq_ignore_ascii_case(name))
        .map(|&r| if r == name { Reserved::Exact(r) } else { Reserved::CaseVariant(r) });
    let prefixed = name.len() >= RESERVED_PREFIX.len()
        && name[..RESERVED_PREFIX.len()].eq_ignore_ascii_case(RESERVED_PREFIX);
    column.or(prefixed.then_some(Reserved::Prefix))
}

/// The default table name for a struct name: snake_case (`LedgerEntry` -> `ledger_entry`,
/// `HTTPRequest` -> `http_request`, `Account2` -> `account2`).
pub(crate) fn snake_case(name: &str) -> String {
    let chars: Vec<char> = name.chars().collect();
    let mut out = String::with_capacity(name.len() + 4);
    for (i, &c) in chars.iter().enumerate() {
        if c.is_uppercase() && i > 0 {
            let prev = chars[i - 1];
            let next_is_lower = chars.get(i + 1).is_some_and(|n| n.is_lowercase());
            let boundary =
                prev.is_lowercase() || prev.is_ascii_digit() || (prev.is_uppercase() && next_is_lower);
            if boundary && !out.ends_with('_') {
                out.push('_');
            }
        }
        out.extend(c.to_lowercase());
    }
    out
}

/// The name of a field's column constant: the field name (without `r#`) in SCREAMING_SNAKE_CASE
/// (`balance` -> `BALANCE`, `r#type` -> `TYPE`, `createdAt` -> `CREATED_AT`).
pub(crate) fn constant_name(field: &str) -> String {
    snake_case(field).to_uppercase()
}

/// The reserved column whose constant (`Account::ENTITY_ID`, ...) is named `constant`.
pub(crate) fn reserved_constant(constant: &str) -> Option<&'static str> {
    RESERVED_COLUMNS.iter().copied().find(|r| constant_name(r) == constant)
}

/// `name` as an identifier spanned on `span`, or `None` if it is not one (an uppercased
/// non-ASCII field name could in theory stop being one).
pub(crate) fn constant_ident(name: &str, span: Span) -> Option<Ident> {
    let mut ident = syn::parse_str::<Ident>(name).ok()?;
    ident.set_span(span);
    Some(ident)
}

/// Formats a name for an error message: quoted, with control characters escaped.
pub(crate) fn show(name: &str) -> String {
    format!("{name:?}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn snake_case_follows_word_boundaries() {
        for (input, expected) in [
            ("Account", "account"),
            ("LedgerEntry", "ledger_entry"),
            ("HTTPRequest", "http_request"),
            ("Account2", "account2"),
            ("V2Account", "v2_account"),
            ("ABC", "abc"),
            ("Order_Line", "order_line"),
            ("already_snake", "already_snake"),
            ("A", "a"),
        ] {
            assert_eq!(snake_case(input), expected, "{input}");
        }
    }

    #[test]
    fn constant_names_are_screaming_snake_case() {
        for (field, expected) in [
            ("balance", "BALANCE"),
            ("created_at", "CREATED_AT"),
            ("createdAt", "CREATED_AT"),
            ("type", "TYPE"),
            ("x1", "X1"),
            ("_private", "_PRIVATE"),
            ("größe", "GRÖSSE"),
        ] {
            assert_eq!(constant_name(field), expected, "{field}");
        }
        assert_eq!(constant_name("a_b"), constant_name("aB"));
        for name in RESERVED_COLUMNS {
            assert_eq!(reserved_constant(&name.to_uppercase()), Some(name));
        }
        assert_eq!(reserved_constant("VERSIONS"), None);
        assert!(constant_ident("GRÖSSE", Span::call_site()).is_some());
        assert!(constant_ident("A B", Span::call_site()).is_none());
    }

    #[test]
    fn valid_identifiers_pass() {
        for name in ["a", "_", "_x", "order", "user", "select", "type", "Mixed_Case_9", &"a".repeat(63)] {
            assert_eq!(identifier_problem(name, NameKind::Column), None, "{name}");
        }
        assert_eq!(identifier_problem(&"t".repeat(48), NameKind::Table), None);
    }

    #[test]
    fn invalid_identifiers_are_explained() {
        let problem = |name: &str, kind| identifier_problem(name, kind).unwrap();
        assert_eq!(problem("", NameKind::Table), "it is empty");
        assert!(problem("my table", NameKind::Table).starts_with("it contains a space;"));
        assert!(problem("my\"table", NameKind::Table).starts_with("it contains `\"`;"));
        assert!(problem("a-b", NameKind::Column).starts_with("it contains `-`;"));
        assert!(problem("a.b", NameKind::Column).starts_with("it contains `.`;"));
        assert!(problem("a\0b", NameKind::Column).starts_with("it contains a NUL character;"));
        assert!(problem("a\nb", NameKind::Column).starts_with("it contains the character `\\n`;"));
        assert!(problem("größe", NameKind::Column).starts_with("it contains the non-ASCII character `ö`;"));
        assert_eq!(problem("1st", NameKind::Column), "it starts with a digit");
        assert!(problem(&"t".repeat(49), NameKind::Table).starts_with("it is 49 bytes long; table names"));
        assert!(problem(&"c".repeat(64), NameKind::Column).starts_with("it is 64 bytes long; PostgreSQL"));
        // A 49-byte column is fine; only tables have the shorter limit.
        assert_eq!(identifier_problem(&"c".repeat(49), NameKind::Column), None);
    }

    #[test]
    fn reserved_columns_match_exactly_or_by_case() {
        assert_eq!(reserved("version"), Some(Reserved::Exact("version")));
        assert_eq!(reserved("Version"), Some(Reserved::CaseVariant("version")));
        assert_eq!(reserved("ENTITY_ID"), Some(Reserved::CaseVariant("entity_id")));
        assert_eq!(reserved("versions"), None);
        assert_eq!(reserved("ident"), None);
        for name in RESERVED_COLUMNS {
            assert_eq!(reserved(name), Some(Reserved::Exact(name)));
        }
    }
}
