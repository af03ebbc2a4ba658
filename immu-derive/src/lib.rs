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
//! errors, next to the column constants. Each step records every error it finds (spanned on the
//! offending token) and goes on.
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
/// (`TABLE`), the cached SQL statements, and the decoding and encoding of the fields as columns;
/// and gives the struct one typed column constant per column (`Account::BALANCE`).
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
///     #[immu(references = Customer)]
///     customer: uuid::Uuid,                            // "customer" uuid NOT NULL, FK to Customer
/// }
/// ```
///
/// Every field is one column, in field order, after the columns immu adds to every versioned
/// table (`id`, `entity_id`, `version`, `valid_from`, `deleted_at`, `immu_shape`; every name
/// starting with `immu_` is reserved). A field's column type comes
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
/// | `#[immu(shape = 2)]`                  | struct | the shape of the struct, recorded in every version it writes (`immu_shape`); default 1. Raise it when the struct changes in a way old versions cannot be read as (see `upcast`) |
/// | `#[immu(upcast = PersonV1)]`          | struct | versions of an older shape are read as that entity type (same table, older `shape`) and converted with `From<PersonV1>`; needs `shape` |
/// | `#[immu(references = Customer)]`      | field  | the field holds the `entity_id` of another entity (a `uuid::Uuid`, or `Option<Uuid>` for an optional reference): `ColumnDef::references` names its table, and the DDL adds a foreign key. The value is the entity's type, not a string: `Customer`, `crate::crm::Customer`, or `Self` for the entity itself (a tree). Not with `json` |
///
/// Attributes can be combined in one `#[immu(...)]` or spread over several.
///
/// # Column constants
///
/// The derive gives the struct an associated constant of type `immu_core::Column<Self>` for
/// every field, named after the field in SCREAMING_SNAKE_CASE (`balance` → `BALANCE`,
/// `r#type` → `TYPE`, `createdAt` → `CREATED_AT`) and holding its column (after `rename`), and
/// one for each column immu adds: `ID`, `ENTITY_ID`, `VERSION`, `VALID_FROM`, `DELETED_AT`. They
/// have the struct's visibility and turn into sea-query expressions, qualified with the table:
///
/// ```ignore
/// use immu_core::sea_query::ExprTrait;
///
/// let rich = Account::BALANCE.gt(100).and(Account::DELETED_AT.is_null());
/// // "accounts"."bal" > 100 AND "accounts"."deleted_at" IS NULL
/// ```
///
/// So two fields cannot share a constant name (`a_b` and `aB`), and a field cannot take one of
/// the reserved columns' (`entityId`, or `version` even with its column renamed).
///
/// # References
///
/// A reference reads the referenced entity's table name at compile time. Entities may reference
/// each other (an employee's department, a department's manager) and themselves
/// (`references = Self`, or the struct's own name).
///
/// # Names
///
/// Table and column names must be non-empty, use only ASCII letters, digits and `_`, and not
/// start with a digit; columns are limited to 63 bytes (PostgreSQL's limit) and tables to 48
/// (so that the index names immu derives from them, such as `<table>_current_pkey`, fit in 63).
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
/// - two fields with the same column name, or the same column constant (see above);
/// - an empty `sql_type`;
/// - `references` with a value that is not a type (such as a table name in quotes), or together
///   with `json`.
///
/// A field type that has no `ColumnType` (and no `sql_type` or `json`), or that sqlx cannot
/// encode or decode, is reported by the compiler on the field's type; so is a `references`
/// field whose type is not a uuid. A `references` type that does not implement `Immutable` is
/// reported on the type; a path that ends in the struct's own name (`crate::tree::Category`) is
/// taken as the entity itself, and reported if it is another type.
#[proc_macro_derive(Immutable, attributes(immu))]
pub fn derive_immutable(input: TokenStream) -> TokenStream {
    let input = parse_macro_input!(input as DeriveInput);
    expand::derive(&input).into()
}
