//! The stub impl emitted next to the errors of an invalid input (as thiserror does): the type
//! still implements `Immutable`, so the code that uses it (`Account::insert(...)`, ...) raises no
//! further errors and the user sees only the derive's own.

use proc_macro2::TokenStream;
use quote::quote;

use crate::ast::Entity;

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

    quote! {
        const _: () = {
            #[automatically_derived]
            impl #impl_generics #krate::Immutable for #ident #ty_generics #where_clause {
                const TABLE: #krate::TableDef = #krate::TableDef {
                    name: "",
                    rust_name: #rust_name,
                    columns: &[],
                };

                fn __sql() -> &'static #private::Sql {
                    ::core::unreachable!()
                }

                fn __decode(
                    _: &#private::PgRow,
                    _: usize,
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
