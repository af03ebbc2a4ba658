//! The stub impl emitted next to the errors of an invalid input (as thiserror does): the type
//! still implements `Immutable` and has its column constants, so the code that uses it
//! (`Account::insert(...)`, `Account::OWNER`, ...) raises no further errors and the user sees
//! only the derive's own.

use std::collections::HashSet;

use proc_macro2::TokenStream;
use quote::quote;
use syn::ext::IdentExt;

use crate::ast::Entity;
use crate::expand::column_constants;
use crate::names::{constant_ident, constant_name, reserved_constant};

/// An `impl Immutable` whose items are never run (the crate does not compile).
pub(crate) fn expand(entity: &Entity<'_>) -> TokenStream {
    let krate = entity.krate();
    let private = quote!(#krate::__private);
    let input = entity.input;
    let ident = &input.ident;
    let rust_name = &entity.rust_name;
    let (impl_generics, ty_generics, where_clause) = input.generics.split_for_impl();
    // A generic type may not meet the trait's supertraits for every parameter; say so in the
    // where clause instead of raising errors about it. (A non-generic type needs no such clause,
    // which rustc would reject if it were false.)
    let where_clause = if input.generics.params.is_empty() {
        quote!(#where_clause)
    } else {
        let predicates = where_clause.into_iter().flat_map(|w| w.predicates.iter());
        quote! {
            where
                #(#predicates,)*
                Self: ::core::marker::Send + ::core::marker::Sync + ::core::marker::Unpin + 'static
        }
    };

    let constants =
        if entity.is_named_struct() { stub_constants(entity, &krate) } else { TokenStream::new() };

    quote! {
        #constants

        const _: () = {
            #[automatically_derived]
            impl #impl_generics #krate::Immutable for #ident #ty_generics #where_clause {
                const __TABLE_NAME: &'static str = "";

                const TABLE: #krate::TableDef = #krate::TableDef {
                    name: "",
                    rust_name: #rust_name,
                    columns: &[],
                    shape: 1,
                    upcast: ::core::option::Option::None,
                };

                fn __sql() -> &'static #private::Sql {
                    ::core::unreachable!()
                }

                fn __decode(
                    _: &#private::PgRow,
                    _: #private::RowLayout,
                ) -> ::core::result::Result<Self, #private::sqlx::Error> {
                    ::core::unreachable!()
                }

                fn __encode(
                    &self,
                    _: &mut #private::PgArguments,
                ) -> ::core::result::Result<(), #private::BoxDynError> {
                    ::core::unreachable!()
                }
            }
        };
    }
}

/// The column constants of an invalid struct: one per field whose constant the derive could
/// generate (a field whose constant is taken, or not an identifier, is left out: the error about
/// it is enough), and the reserved columns'.
fn stub_constants(entity: &Entity<'_>, krate: &syn::Path) -> TokenStream {
    let read = entity.fields.iter().map(|f| (f.member, f.constant.clone(), &f.column.value, &f.field_name));
    let unread: Vec<_> = entity.unread.iter().map(|&member| (member, member.unraw().to_string())).collect();
    let unread = unread.iter().map(|(member, name)| (*member, constant_name(name), name, name));
    let mut seen = HashSet::new();
    let constants = read
        .chain(unread)
        .filter(|(_, constant, ..)| reserved_constant(constant).is_none() && seen.insert(constant.clone()))
        .filter_map(|(member, constant, column, field)| {
            Some((constant_ident(&constant, member.span())?, column.as_str(), field.as_str()))
        })
        .collect();
    column_constants(entity, krate, constants)
}
