//! The derive input as immu sees it: a struct with named fields and the `#[immu(...)]`
//! attributes read. Errors of shape and attributes are recorded and parsing goes on, so that
//! every error of the input is reported at once.

use darling::{FromDeriveInput, FromField};
use proc_macro2::Span;
use quote::quote;
use syn::ext::IdentExt;
use syn::{Data, DeriveInput, Fields, Ident, LitStr, Type};

use crate::attr::{ContainerAttrs, FieldAttrs};
use crate::errors::Errors;
use crate::names::{constant_name, snake_case};

/// The message for anything that is not a struct with named fields.
pub(crate) const SHAPE_ERROR: &str = "#[derive(Immutable)] needs a struct with named fields";

/// A struct deriving `Immutable`.
pub(crate) struct Entity<'a> {
    /// The input as written.
    pub(crate) input: &'a DeriveInput,
    /// The path to `immu_core` (`#[immu(crate = "...")]`), `None` for `::immu_core`.
    pub(crate) krate: Option<syn::Path>,
    /// The table name.
    pub(crate) table: Name,
    /// The name of the Rust type (`TableDef::rust_name`).
    pub(crate) rust_name: String,
    /// The fields, in declaration order; empty if the input is not a struct with named fields.
    pub(crate) fields: Vec<Field<'a>>,
    /// The fields left out of [`fields`](Self::fields) because their attributes could not be
    /// read (the stub impl still gives them a column constant).
    pub(crate) unread: Vec<&'a Ident>,
    /// `#[immu(shape = N)]`.
    pub(crate) shape: Option<syn::LitInt>,
    /// `#[immu(upcast = Type)]`.
    pub(crate) upcast: Option<Type>,
}

/// A field of the struct: one column.
pub(crate) struct Field<'a> {
    /// The field's identifier, as written (possibly raw: `r#type`).
    pub(crate) member: &'a Ident,
    /// The field's type.
    pub(crate) ty: &'a Type,
    /// The column name.
    pub(crate) column: Name,
    /// The field name without `r#` (`ColumnDef::field`).
    pub(crate) field_name: String,
    /// `#[immu(json)]`.
    pub(crate) json: bool,
    /// `#[immu(sql_type = "...")]`.
    pub(crate) sql_type: Option<LitStr>,
    /// `#[immu(references = Type)]`: the entity whose `entity_id` the field holds.
    pub(crate) references: Option<Type>,
    /// The name of the field's column constant (`Account::OWNER`): the field name without `r#`
    /// in SCREAMING_SNAKE_CASE.
    pub(crate) constant: String,
}

/// A table or column name and where it comes from, for error messages.
pub(crate) struct Name {
    /// The name.
    pub(crate) value: String,
    /// The string literal of the attribute, or the identifier it is derived from.
    pub(crate) span: Span,
    /// Whether it was given in an attribute (`table = "..."`, `rename = "..."`).
    pub(crate) from_attr: bool,
}

impl Name {
    fn from_lit(lit: &LitStr) -> Name {
        Name { value: lit.value(), span: lit.span(), from_attr: true }
    }
}

impl<'a> Entity<'a> {
    /// Reads `input`, recording in `errors` every problem of shape (not a struct with named
    /// fields, generics) or attribute syntax.
    pub(crate) fn from_syn(input: &'a DeriveInput, errors: &mut Errors) -> Entity<'a> {
        let attrs = errors.handle(ContainerAttrs::from_derive_input(input));
        let (table, krate, shape, upcast) = match attrs {
            Some(attrs) => (attrs.table, attrs.krate, attrs.shape, attrs.upcast),
            None => (None, crate_only(input), None, None),
        };
        let krate = krate.and_then(|lit| match lit.parse::<syn::Path>() {
            Ok(path) => Some(path),
            Err(_) => {
                errors.at(
                    lit.span(),
                    format!(
                        "`crate` must be a path to immu_core, such as \"::immu_core\" or \"my_crate::immu\", not {:?}",
                        lit.value()
                    ),
                );
                None
            }
        });

        let ident = &input.ident;
        let rust_name = ident.unraw().to_string();
        let table = match &table {
            Some(lit) => Name::from_lit(lit),
            None => Name { value: snake_case(&rust_name), span: ident.span(), from_attr: false },
        };

        if !input.generics.params.is_empty() {
            errors.spanned(
                &input.generics,
                "#[derive(Immutable)] does not support generic structs: a versioned table stores one concrete type",
            );
        }

        let mut unread = Vec::new();
        let fields = match &input.data {
            Data::Struct(data) => match &data.fields {
                Fields::Named(named) => named
                    .named
                    .iter()
                    .filter_map(|f| {
                        let field = Field::from_syn(f, errors);
                        if field.is_none() {
                            unread.extend(&f.ident);
                        }
                        field
                    })
                    .collect(),
                Fields::Unnamed(unnamed) => {
                    errors.spanned(unnamed, format!("{SHAPE_ERROR}, not a tuple struct"));
                    Vec::new()
                }
                Fields::Unit => {
                    let (token, semi) = (&data.struct_token, &data.semi_token);
                    errors.spanned(quote!(#token #ident #semi), format!("{SHAPE_ERROR}, not a unit struct"));
                    Vec::new()
                }
            },
            Data::Enum(data) => {
                let token = &data.enum_token;
                errors.spanned(quote!(#token #ident), format!("{SHAPE_ERROR}, not an enum"));
                Vec::new()
            }
            Data::Union(data) => {
                let token = &data.union_token;
                errors.spanned(quote!(#token #ident), format!("{SHAPE_ERROR}, not a union"));
                Vec::new()
            }
        };

        Entity { input, krate, table, rust_name, fields, unread, shape, upcast }
    }

    /// Whether the input is a struct with named fields (the only shape that gets column
    /// constants, also in the stub impl: an enum's variants could clash with them).
    pub(crate) fn is_named_struct(&self) -> bool {
        matches!(&self.input.data, Data::Struct(data) if matches!(data.fields, Fields::Named(_)))
    }

    /// The path to `immu_core` in generated code.
    pub(crate) fn krate(&self) -> syn::Path {
        self.krate.clone().unwrap_or_else(|| syn::parse_quote!(::immu_core))
    }
}

impl<'a> Field<'a> {
    /// Reads one named field; `None` (with the errors recorded) if its attributes are invalid.
    fn from_syn(field: &'a syn::Field, errors: &mut Errors) -> Option<Field<'a>> {
        let attrs = errors.handle(FieldAttrs::from_field(field))?;
        let member = field.ident.as_ref()?;
        let field_name = member.unraw().to_string();
        let column = match &attrs.rename {
            Some(lit) => Name::from_lit(lit),
            None => Name { value: field_name.clone(), span: member.span(), from_attr: false },
        };
        Some(Field {
            member,
            ty: &field.ty,
            column,
            json: attrs.json.is_present(),
            sql_type: attrs.sql_type,
            references: attrs.references,
            constant: constant_name(&field_name),
            field_name,
        })
    }
}

/// `#[immu(crate = "...")]` read on its own, when darling refused the struct's attributes: the
/// stub impl emitted next to that error must use the right path, or it would add an error about
/// a missing `::immu_core`. Best effort: anything malformed was already reported by darling.
fn crate_only(input: &DeriveInput) -> Option<LitStr> {
    let mut found = None;
    for attr in input.attrs.iter().filter(|attr| attr.path().is_ident("immu")) {
        let _ = attr.parse_nested_meta(|meta| {
            if meta.path.is_ident("crate") {
                found = Some(meta.value()?.parse::<LitStr>()?);
            } else if meta.input.peek(syn::Token![=]) {
                meta.value()?.parse::<syn::Expr>()?;
            } else if !meta.input.is_empty() && !meta.input.peek(syn::Token![,]) {
                meta.input.parse::<proc_macro2::TokenTree>()?;
            }
            Ok(())
        });
    }
    found
}

/// Whether `ty` is written as `Option<..>` (also `std::option::Option`, `core::option::Option`,
/// with or without a leading `::`). Used for the nullability of `sql_type` columns, whose type
/// has no `ColumnType` to ask.
pub(crate) fn is_option(ty: &Type) -> bool {
    let ty = match ty {
        Type::Group(group) => return is_option(&group.elem),
        Type::Paren(paren) => return is_option(&paren.elem),
        Type::Path(path) if path.qself.is_none() => path,
        _ => return false,
    };
    let segments: Vec<_> = ty.path.segments.iter().collect();
    let Some((last, prefix)) = segments.split_last() else {
        return false;
    };
    let prefix_ok = match prefix {
        [] => ty.path.leading_colon.is_none(),
        [krate, module] => {
            (krate.ident == "std" || krate.ident == "core")
                && module.ident == "option"
                && krate.arguments.is_none()
                && module.arguments.is_none()
        }
        _ => false,
    };
    let one_type_arg = match &last.arguments {
        syn::PathArguments::AngleBracketed(args) => {
            args.args.len() == 1 && matches!(args.args.first(), Some(syn::GenericArgument::Type(_)))
        }
        _ => false,
    };
    prefix_ok && last.ident == "Option" && one_type_arg
}

#[cfg(test)]
mod tests {
    use super::*;
    use syn::parse_quote;

    #[test]
    fn option_is_recognised_syntactically() {
        let yes: [Type; 6] = [
            parse_quote!(Option<i64>),
            parse_quote!(std::option::Option<i64>),
            parse_quote!(::std::option::Option<i64>),
            parse_quote!(core::option::Option<Vec<u8>>),
            parse_quote!(::core::option::Option<String>),
            parse_quote!((Option<i64>)),
        ];
        for ty in &yes {
            assert!(is_option(ty), "{}", quote!(#ty));
        }
        let no: [Type; 7] = [
            parse_quote!(i64),
            parse_quote!(Vec<Option<i64>>),
            parse_quote!(my::Option<i64>),
            parse_quote!(::Option<i64>),
            parse_quote!(Option),
            parse_quote!(<T as Tr>::Option<i64>),
            parse_quote!(&Option<i64>),
        ];
        for ty in &no {
            assert!(!is_option(ty), "{}", quote!(#ty));
        }
    }
}
