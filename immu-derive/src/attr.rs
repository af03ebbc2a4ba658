//! The `#[immu(...)]` attributes, read with darling. Unknown and duplicate keys are reported by
//! darling itself (with "did you mean" suggestions), values of the wrong kind by [`string`] and
//! [`flag`]; what the values mean (names, types) is checked in `valid.rs`.

use darling::util::Flag;
use darling::{Error, FromDeriveInput, FromField, FromMeta};
use syn::{Expr, Lit, LitInt, LitStr, Meta, Type, TypePath};

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
    /// `shape = 2`: the shape of the entity this struct writes (default 1), recorded with every
    /// version it writes.
    #[darling(with = integer)]
    pub(crate) shape: Option<LitInt>,
    /// `upcast = CustomerV1`: the entity of the same table that reads versions of older shapes;
    /// the struct converts from it (`From<CustomerV1>`).
    #[darling(with = entity_type)]
    pub(crate) upcast: Option<Type>,
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
    /// `references = Customer`: the field holds the `entity_id` of that entity.
    #[darling(with = entity_type)]
    pub(crate) references: Option<Type>,
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

/// A `key = 1` value: an integer literal.
fn integer(meta: &Meta) -> darling::Result<Option<LitInt>> {
    let key = key(meta);
    let Meta::NameValue(name_value) = meta else {
        return Err(Error::custom(format!("expected a number: `{key} = 2`")).with_span(meta));
    };
    let mut value = &name_value.value;
    while let Expr::Group(group) = value {
        value = &group.expr;
    }
    if let Expr::Lit(syn::ExprLit { lit: Lit::Int(i), .. }) = value {
        return Ok(Some(i.clone()));
    }
    Err(Error::custom(format!("expected a number without quotes: `{key} = 2`")).with_span(value))
}

/// A `key = Type` value: the path of an entity type (`Customer`, `crate::models::Customer`,
/// `Self`). A string gets its own message, as the natural mistake is to write the table name.
fn entity_type(meta: &Meta) -> darling::Result<Option<Type>> {
    let key = key(meta);
    let expected = || {
        format!(
            "expected the referenced entity's type: `{key} = Customer`, where `Customer` derives Immutable"
        )
    };
    let Meta::NameValue(name_value) = meta else {
        return Err(Error::custom(expected()).with_span(meta));
    };
    let mut value = &name_value.value;
    while let Expr::Group(group) = value {
        value = &group.expr;
    }
    match value {
        Expr::Path(path) if path.attrs.is_empty() => Ok(Some(Type::Path(TypePath {
            attrs: Vec::new(),
            qself: path.qself.clone(),
            path: path.path.clone(),
        }))),
        Expr::Lit(syn::ExprLit { lit: Lit::Str(s), .. }) => {
            Err(Error::custom(string_instead_of_type(&key, &s.value())).with_span(value))
        }
        _ => Err(Error::custom(expected()).with_span(value)),
    }
}

/// The message for `references = "..."`: the type without quotes, if that is what the string
/// holds, or else (a table name) the entity type instead.
fn string_instead_of_type(key: &str, value: &str) -> String {
    let is_type = syn::parse_str::<syn::Path>(value).is_ok_and(|path| {
        path.segments.last().is_some_and(|last| last.ident.to_string().starts_with(char::is_uppercase))
    });
    if is_type {
        format!("`{key}` takes a type, not a string: write `{key} = {value}` without quotes")
    } else {
        format!(
            "`{key}` takes the type of the referenced entity, not a table name: write `{key} = Customer`, \
             where `Customer` is the struct that derives Immutable for table {value:?}"
        )
    }
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
