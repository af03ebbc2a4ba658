//! The `#[immu(...)]` attributes, read with darling. Unknown keys, duplicate keys and values of
//! the wrong kind are reported by darling itself (with "did you mean" suggestions); everything
//! else is checked in `valid.rs`.

use darling::util::Flag;
use darling::{FromDeriveInput, FromField};
use syn::LitStr;

/// `#[immu(...)]` on the struct.
#[derive(FromDeriveInput)]
#[darling(attributes(immu))]
pub(crate) struct ContainerAttrs {
    /// `table = "accounts"`: the table name (default: the struct name in snake_case).
    pub(crate) table: Option<LitStr>,
    /// `crate = "path::to::immu_core"`: where the generated code finds `immu_core`.
    #[darling(rename = "crate")]
    pub(crate) krate: Option<LitStr>,
}

/// `#[immu(...)]` on a field.
#[derive(FromField)]
#[darling(attributes(immu))]
pub(crate) struct FieldAttrs {
    /// `rename = "col"`: the column name (default: the field name, without `r#`).
    pub(crate) rename: Option<LitStr>,
    /// `json`: store the field as JSON through serde (`jsonb` unless `sql_type` says otherwise).
    pub(crate) json: Flag,
    /// `sql_type = "numeric(12,2)"`: the column type in the generated DDL.
    pub(crate) sql_type: Option<LitStr>,
}
