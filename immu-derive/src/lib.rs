//! `#[derive(Immutable)]`, the derive macro of [immu](https://docs.rs/immu-core): append-only,
//! versioned PostgreSQL tables for sqlx.
//!
//! Use it through `immu_core` (`use immu_core::Immutable;`), which re-exports it next to the trait
//! of the same name and provides everything the generated code refers to. See the
//! [`Immutable`](derive@Immutable) derive for the attributes and the errors it reports.
//!
//! The crate is organised like thiserror's implementation crate: `attr.rs` reads the
//! `#[immu(...)]` attributes (darling), `ast.rs` builds the entity from the input, `valid.rs`
//! checks it, `expand.rs` generates the impl and `fallback.rs` the stub impl emitted next to
//! errors. Each step records every error it finds (spanned on the offending token) and goes on.
#![forbid(unsafe_code)]

extern crate proc_macro;

mod ast;
mod attr;
mod errors;
mod expand;
mod fallback;
mod names;
mod valid;

#[cfg(test)]
mod tests;

use proc_macro::TokenStream;
use syn::{DeriveInput, parse_macro_input};

/// Implements `immu_core::Immutable` for a struct with named fields: the table description
/// (`TABLE`), the cached SQL statements, and the decoding and encoding of the fields as columns.
///
/// ```ignore
/// use immu_core::Immutable;
///
/// #[derive(Debug, Clone, Immutable)]
/// #[immu(table = "accounts")]
/// struct Account {
///     owner: String,                                   // "owner"   text NOT NULL
///     #[immu(rename = "bal")]
///     balance: i64,                                    // "bal"     bigint NOT NULL
///     note: Option<String>,                            // "note"    text
///     #[immu(json)]
///     tags: Vec<String>,                               // "tags"    jsonb NOT NULL (serde)
///     #[immu(sql_type = "numeric(12,2)")]
///     amount: rust_decimal::Decimal,                   // "amount"  numeric(12,2) NOT NULL
/// }
/// ```
///
/// Every field is one column, in field order, after the columns immu adds to every versioned
/// table (`id`, `entity_id`, `version`, `valid_from`, `deleted_at`). A field's column type comes
/// from `immu_core::ColumnType`, implemented for the types sqlx supports out of the box
/// (`Option<T>` is the nullable column of `T`); for any other type, use `sql_type` or `json`.
///
/// # Attributes
///
/// | attribute                             | on     | effect                                                            |
/// |---------------------------------------|--------|-------------------------------------------------------------------|
/// | `#[immu(table = "accounts")]`         | struct | table name; default: the struct name in snake_case (`LedgerEntry` → `ledger_entry`) |
/// | `#[immu(crate = "path::to::immu")]`   | struct | path to `immu_core` in the generated code, if you renamed or re-exported it; default `::immu_core` |
/// | `#[immu(rename = "col")]`             | field  | column name; default: the field name (`r#type` → `type`)          |
/// | `#[immu(json)]`                       | field  | stored as `jsonb` through serde (`sqlx::types::Json`); the type must be `Serialize` and `Deserialize`; an `Option` is stored as JSON `null`, so the column is `NOT NULL` |
/// | `#[immu(sql_type = "numeric(12,2)")]` | field  | column type in the generated DDL, for types without `ColumnType` (your `#[derive(sqlx::Type)]` enums, decimals, ...); nullable if the field is written `Option<..>`. With `json`, replaces `jsonb` (e.g. `"json"`) |
///
/// Attributes can be combined in one `#[immu(...)]` or spread over several.
///
/// # Names
///
/// Table and column names must be non-empty, use only ASCII letters, digits and `_`, and not
/// start with a digit; columns are limited to 63 bytes (PostgreSQL's limit) and tables to 48
/// (so that the index names immu derives from them, such as `<table>_as_of_idx`, fit in 63).
/// SQL keywords (`order`, `user`, `select`, ...) are fine: immu quotes every identifier.
///
/// # Compile errors
///
/// The derive reports all of these at once, each on the offending token:
///
/// - the input is not a struct with named fields (an enum, a union, a tuple or unit struct);
/// - the struct has generic parameters (types, lifetimes or consts);
/// - an unknown or duplicated `#[immu(...)]` key, or a value of the wrong kind;
/// - an invalid table or column name (see above), including one derived from the struct or
///   field name;
/// - a column named like one of immu's own columns (`id`, `entity_id`, `version`, `valid_from`,
///   `deleted_at`), or a case variant of one (`Version`);
/// - two fields with the same column name;
/// - an empty `sql_type`.
///
/// A field type that has no `ColumnType` (and no `sql_type` or `json`), or that sqlx cannot
/// encode or decode, is reported by the compiler on the field's type.
#[proc_macro_derive(Immutable, attributes(immu))]
pub fn derive_immutable(input: TokenStream) -> TokenStream {
    let input = parse_macro_input!(input as DeriveInput);
    expand::derive(&input).into()
}
