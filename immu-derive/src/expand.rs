//! The `impl Immutable` generated for a valid entity.

use proc_macro2::{Group, Literal, Span, TokenStream, TokenTree};
use quote::{quote, quote_spanned};
use syn::DeriveInput;
use syn::spanned::Spanned;

use crate::ast::{Entity, Field, is_option};
use crate::errors::Errors;
use crate::fallback;

/// The whole expansion of `#[derive(Immutable)]` on `input`: the impl, or every error followed by
/// a stub impl (so that the user sees the errors of the derive, not errors about the missing impl).
pub(crate) fn derive(input: &DeriveInput) -> TokenStream {
    let mut errors = Errors::default();
    let entity = Entity::from_syn(input, &mut errors);
    entity.validate(&mut errors);
    if errors.is_empty() {
        impl_immutable(&entity)
    } else {
        let mut tokens = errors.into_compile_errors();
        tokens.extend(fallback::expand(&entity));
        tokens
    }
}

/// The impl for a validated entity.
fn impl_immutable(entity: &Entity<'_>) -> TokenStream {
    let krate = entity.krate();
    let private = quote!(#krate::__private);
    let ident = &entity.input.ident;
    let where_clause = &entity.input.generics.where_clause;
    let table = &entity.table.value;
    let rust_name = &entity.rust_name;

    let columns = entity.fields.iter().map(|f| column_def(f, &krate));
    let decode = entity.fields.iter().enumerate().map(|(i, f)| decode_field(i, f, &private));
    let encode = entity.fields.iter().map(|f| encode_field(f, &private));
    let (unused_row, unused_args) = if entity.fields.is_empty() {
        (quote!(let _ = (row, first);), quote!(let _ = args;))
    } else {
        (TokenStream::new(), TokenStream::new())
    };

    quote! {
        const _: () = {
            #[automatically_derived]
            impl #krate::Immutable for #ident #where_clause {
                const TABLE: #krate::TableDef = #krate::TableDef {
                    name: #table,
                    rust_name: #rust_name,
                    columns: &[#(#columns),*],
                };

                fn __sql() -> &'static #private::Sql {
                    static SQL: #private::OnceLock<#private::Sql> = #private::OnceLock::new();
                    SQL.get_or_init(|| #private::Sql::new(&<Self as #krate::Immutable>::TABLE))
                }

                fn __decode(
                    row: &#private::PgRow,
                    first: usize,
                ) -> ::core::result::Result<Self, #private::sqlx::Error> {
                    #unused_row
                    ::core::result::Result::Ok(Self { #(#decode),* })
                }

                fn __encode(
                    &self,
                    args: &mut #private::PgArguments,
                ) -> ::core::result::Result<(), #private::BoxDynError> {
                    #unused_args
                    #(#encode)*
                    ::core::result::Result::Ok(())
                }
            }
        };
    }
}

/// The `ColumnDef` of a field. Type-dependent parts carry the field type's span (see [`respan`]),
/// so that a type without `ColumnType` is reported on the field.
fn column_def(field: &Field<'_>, krate: &syn::Path) -> TokenStream {
    let ty = field.ty;
    let span = ty.span();
    let name = &field.column.value;
    let field_name = &field.field_name;
    let json = field.json;
    let (sql_type, nullable) = match (&field.sql_type, json) {
        (Some(sql_type), _) => {
            // An Option stored as JSON is a JSON `null`, never SQL NULL.
            let nullable = !json && is_option(ty);
            (quote!(#sql_type), quote!(#nullable))
        }
        (None, true) => (quote!("jsonb"), quote!(false)),
        (None, false) => {
            let krate = respan(quote!(#krate), span);
            (
                quote_spanned!(span=> <#ty as #krate::ColumnType>::SQL_TYPE),
                quote_spanned!(span=> <#ty as #krate::ColumnType>::NULLABLE),
            )
        }
    };
    quote! {
        #krate::ColumnDef {
            name: #name,
            field: #field_name,
            sql_type: #sql_type,
            nullable: #nullable,
            json: #json,
        }
    }
}

/// The column index of the `i`th own column: `first`, `first + 1`, ...
fn index(i: usize) -> TokenStream {
    if i == 0 {
        quote!(first)
    } else {
        let i = Literal::usize_unsuffixed(i);
        quote!(first + #i)
    }
}

/// `member: <decoded column>` for `Self { .. }` in `__decode`.
fn decode_field(i: usize, field: &Field<'_>, private: &TokenStream) -> TokenStream {
    let (member, ty) = (field.member, field.ty);
    let private = respan(private.clone(), ty.span());
    let index = index(i);
    let value = if field.json {
        quote_spanned! {ty.span()=>
            <#private::PgRow as #private::Row>::try_get::<#private::Json<#ty>, usize>(row, #index)?.0
        }
    } else {
        quote_spanned! {ty.span()=>
            <#private::PgRow as #private::Row>::try_get::<#ty, usize>(row, #index)?
        }
    };
    quote!(#member: #value)
}

/// The bind of one field in `__encode`.
///
/// The bound type is named in a turbofish spanned on the field's type, so that a type sqlx
/// cannot encode is reported there; the value expression keeps the derive's span, so that lints
/// about it (a needless borrow of a `Copy` field, ...) are not blamed on the user's code.
fn encode_field(field: &Field<'_>, private: &TokenStream) -> TokenStream {
    let (member, ty) = (field.member, field.ty);
    let spanned = respan(private.clone(), ty.span());
    let (bound, value) = if field.json {
        (quote_spanned!(ty.span()=> #spanned::Json<&#ty>), quote!(#private::Json(&self.#member)))
    } else {
        (quote_spanned!(ty.span()=> &#ty), quote!(&self.#member))
    };
    quote_spanned! {ty.span()=>
        <#spanned::PgArguments as #spanned::Arguments>::add::<#bound>(args, #value)?;
    }
}

/// `tokens` with every span set to `span`.
///
/// The code that depends on a field's type (its `ColumnType`, decoding, encoding) is spanned on
/// that type, paths included: rustc reports an unsatisfied trait bound on the span of the whole
/// expression, and one that mixes the derive's spans with the field's falls back to the derive.
/// Respanned, "`Settings: Serialize` is not satisfied" points at the field's `Settings`.
fn respan(tokens: TokenStream, span: Span) -> TokenStream {
    tokens
        .into_iter()
        .map(|token| match token {
            TokenTree::Group(group) => {
                let mut respanned = Group::new(group.delimiter(), respan(group.stream(), span));
                respanned.set_span(span);
                TokenTree::Group(respanned)
            }
            mut other => {
                other.set_span(span);
                other
            }
        })
        .collect()
}
