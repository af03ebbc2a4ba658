//! The `#[immu(...)]` attributes, read with darling. Unknown and duplicate keys are reported by
//! darling itself (with "did you mean" suggestions), values of the wrong kind by [`string`] and
//! [`flag`]; what the values mean (names, types) is checked in `valid.rs`.

use darling::util::Flag;
use darling::{Error, FromDeriveInput, FromField, FromMeta};
use syn::{Expr, Lit, LitStr, Meta};

/// `#[immu(...)]` on the struct.
#[derive(FromDeriveInput)]
#[darling(attributes(immu))]
pub(crate) struct ContainerAttrs {
    /// `table = "accounts"`: the table name (default: the struct name in snake_case).
    #[darling(with = string)]
    pub(crate) table: Option<LitStr>,
    /// `crate = "path::to::immu_core"`: where the generated code finds `immu_core`.
    #[darling(rename = "crate", with = string)]
    pub(crate) krate: Option<LitStr>,
}

/// `#[immu(...)]` on a field.
#[derive(FromField)]
#[darling(attributes(immu))]
pub(crate) struct FieldAttrs {
    /// `rename = "col"`: the column name (default: the field name, without `r#`).
    #[darling(with = string)]
    pub(crate) rename: Option<LitStr>,
    /// `json`: store the field as JSON through serde (`jsonb` unless `sql_type` says otherwise).
    #[darling(with = flag)]
    pub(crate) json: Flag,
    /// `sql_type = "numeric(12,2)"`: the column type in the generated DDL.
    #[darling(with = string)]
    pub(crate) sql_type: Option<LitStr>,
}

/// The name of an attribute key, for messages.
fn key(meta: &Meta) -> String {
    let path = meta.path();
    path.get_ident().map_or_else(|| quote::quote!(#path).to_string(), ToString::to_string)
}

/// A `key = "string"` value. darling's own message for anything else ("Unexpected type `path`")
/// does not say what to write instead; this one does.
fn string(meta: &Meta) -> darling::Result<Option<LitStr>> {
    let key = key(meta);
    let Meta::NameValue(name_value) = meta else {
        return Err(Error::custom(format!("expected a string: `{key} = \"...\"`")).with_span(meta));
    };
    let mut value = &name_value.value;
    while let Expr::Group(group) = value {
        value = &group.expr;
    }
    if let Expr::Lit(syn::ExprLit { lit: Lit::Str(s), .. }) = value {
        return Ok(Some(s.clone()));
    }
    Err(Error::custom(format!("expected a string in quotes: `{key} = \"...\"`")).with_span(value))
}

/// A flag: the bare key (`json`), with no value.
fn flag(meta: &Meta) -> darling::Result<Flag> {
    match meta {
        Meta::Path(_) => Flag::from_meta(meta),
        _ => {
            let key = key(meta);
            Err(Error::custom(format!("`{key}` takes no value: write `#[immu({key})]`")).with_span(meta))
        }
    }
}
