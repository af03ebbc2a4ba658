//! The `impl Immutable` generated for a valid entity, and its column constants.

use proc_macro2::{Group, Ident, Literal, Span, TokenStream, TokenTree};
use quote::{quote, quote_spanned};
use syn::spanned::Spanned;
use syn::{DeriveInput, Type};

use crate::ast::{Entity, Field, is_option};
use crate::errors::Errors;
use crate::fallback;
use crate::names::{RESERVED_COLUMNS, constant_ident, constant_name};

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
    let uuid_checks = entity.fields.iter().filter_map(|f| references_uuid_check(f, &krate));
    let decode = entity.fields.iter().enumerate().map(|(i, f)| decode_field(i, f, &private));
    let encode = entity.fields.iter().map(|f| encode_field(f, &private));
    let (unused_row, unused_args) = if entity.fields.is_empty() {
        (quote!(let _ = (row, columns);), quote!(let _ = args;))
    } else {
        (TokenStream::new(), TokenStream::new())
    };
    let shape = match &entity.shape {
        Some(shape) => {
            let n = Literal::i32_unsuffixed(shape.base10_parse::<i32>().unwrap_or(1));
            quote!(#n)
        }
        None => quote!(1),
    };
    let (upcast, upcast_decode, upcast_checks) = match &entity.upcast {
        Some(source) => {
            let span = source.span();
            let krate_spanned = respan(quote!(#krate), span);
            let message = format!(
                "`upcast = {}` must name an entity of the same table ({:?}) with an older (smaller) shape",
                quote!(#source),
                table
            );
            (
                quote_spanned!(span=> ::core::option::Option::Some(&<#source as #krate_spanned::Immutable>::TABLE)),
                quote_spanned! {span=>
                    if let ::core::option::Option::Some(older) =
                        #private::upcast::<Self, #source>(row, columns)?
                    {
                        return ::core::result::Result::Ok(<Self as ::core::convert::From<#source>>::from(older));
                    }
                },
                quote_spanned! {span=>
                    const _: () = ::core::assert!(
                        #private::same_str(<#source as #krate_spanned::Immutable>::TABLE.name, #table)
                            && <#source as #krate_spanned::Immutable>::TABLE.shape < #shape,
                        #message,
                    );
                },
            )
        }
        None => (quote!(::core::option::Option::None), TokenStream::new(), TokenStream::new()),
    };

    let constants = entity.fields.iter().map(|field| {
        let ident = constant_ident(&field.constant, field.member.span())
            .expect("validated: the constant name is an identifier");
        (ident, field.column.value.as_str(), field.field_name.as_str())
    });
    let constants = column_constants(entity, &krate, constants.collect());

    quote! {
        #constants

        const _: () = {
            #(#uuid_checks)*
            #upcast_checks

            #[automatically_derived]
            impl #krate::Immutable for #ident #where_clause {
                const __TABLE_NAME: &'static str = #table;

                const TABLE: #krate::TableDef = #krate::TableDef {
                    name: #table,
                    rust_name: #rust_name,
                    columns: &[#(#columns),*],
                    shape: #shape,
                    upcast: #upcast,
                };

                fn __sql() -> &'static #private::Sql {
                    static SQL: #private::OnceLock<#private::Sql> = #private::OnceLock::new();
                    SQL.get_or_init(|| #private::Sql::new(&<Self as #krate::Immutable>::TABLE))
                }

                fn __decode(
                    row: &#private::PgRow,
                    columns: #private::RowLayout,
                ) -> ::core::result::Result<Self, #private::sqlx::Error> {
                    #unused_row
                    #upcast_decode
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
    let references = match &field.references {
        Some(target) => {
            let table = referenced_table(target, krate);
            quote!(::core::option::Option::Some(#table))
        }
        None => quote!(::core::option::Option::None),
    };
    quote! {
        #krate::ColumnDef {
            name: #name,
            field: #field_name,
            sql_type: #sql_type,
            nullable: #nullable,
            json: #json,
            references: #references,
        }
    }
}

/// The table name of the entity `target` of `#[immu(references = target)]`, for `ColumnDef`:
/// `<Customer as Immutable>::__TABLE_NAME`, spanned on the path so that a type that is not an
/// entity is reported there. `__TABLE_NAME` does not depend on `TABLE`, so entities may reference
/// themselves and each other without a cycle.
fn referenced_table(target: &Type, krate: &syn::Path) -> TokenStream {
    let span = target.span();
    let krate = respan(quote!(#krate), span);
    quote_spanned!(span=> <#target as #krate::Immutable>::__TABLE_NAME)
}

/// For a `references` field whose type gives its column type (`ColumnType`), a compile-time check
/// that the column is a uuid: it holds an `entity_id`, and PostgreSQL would refuse the foreign key
/// from any other type. Spanned on the field's type.
fn references_uuid_check(field: &Field<'_>, krate: &syn::Path) -> Option<TokenStream> {
    if field.references.is_none() || field.json || field.sql_type.is_some() {
        return None;
    }
    let ty = field.ty;
    let span = ty.span();
    let krate = respan(quote!(#krate), span);
    let message = format!(
        "field `{}` has #[immu(references = ...)]: its column holds the referenced entity's \
         `entity_id`, so its type must be uuid::Uuid or Option<uuid::Uuid>",
        field.field_name
    );
    Some(quote_spanned! {span=>
        const _: () = ::core::assert!(
            ::core::matches!(<#ty as #krate::ColumnType>::SQL_TYPE.as_bytes(), b"uuid"),
            #message,
        );
    })
}

/// The inherent impl with the column constants: `Account::OWNER` for each field, from
/// `constants` (identifier, column name, field name), and one for each reserved column (`Account::ID`,
/// `Account::ENTITY_ID`, ...). They have the struct's visibility, and live outside the
/// `const _` block so that users can name them.
pub(crate) fn column_constants(
    entity: &Entity<'_>,
    krate: &syn::Path,
    constants: Vec<(Ident, &str, &str)>,
) -> TokenStream {
    let input = entity.input;
    let (ident, vis, table) = (&input.ident, &input.vis, &entity.table.value);
    let (impl_generics, ty_generics, where_clause) = input.generics.split_for_impl();
    let own = constants.into_iter().map(|(ident, column, field)| {
        (ident, column, format!("Column `{column}` of `{table}` (field `{field}`)."))
    });
    let reserved = RESERVED_COLUMNS.iter().zip(RESERVED_MEANINGS).map(|(&column, meaning)| {
        let ident = Ident::new(&constant_name(column), Span::call_site());
        let doc =
            format!("Column `{column}` of `{table}`: {meaning} (immu adds it to every versioned table).");
        (ident, column, doc)
    });
    let constants = own.chain(reserved).map(|(name, column, doc)| {
        quote! {
            #[doc = #doc]
            #vis const #name: #krate::Column<Self> = #krate::Column::new(#table, #column);
        }
    });
    quote! {
        #[automatically_derived]
        impl #impl_generics #ident #ty_generics #where_clause {
            #(#constants)*
        }
    }
}

/// What each of [`RESERVED_COLUMNS`] holds, for the doc of its constant.
const RESERVED_MEANINGS: [&str; 11] = [
    "the id of one version row",
    "the id of the entity, the same in all its versions",
    "the version number: 1, 2, 3, ... without gaps",
    "when the version became current",
    "set only on a tombstone, the version a delete appends",
    "who wrote the version (the actor of its `Audit`, or `immu.actor`)",
    "why the version was written (the reason of its `Audit`, or `immu.reason`)",
    "the context of the write (JSON, from its `Audit`, or `immu.context`)",
    "the database user of the session that wrote the version",
    "the `application_name` of the session that wrote the version",
    "the version whose data a revert restored",
];

/// The column index of the `i`th own column in `row`, as `columns` locates it.
fn index(i: usize, field: &Field<'_>) -> TokenStream {
    let i = Literal::usize_unsuffixed(i);
    let name = &field.column.value;
    quote!(columns.index(row, #i, #name)?)
}

/// `member: <decoded column>` for `Self { .. }` in `__decode`.
fn decode_field(i: usize, field: &Field<'_>, private: &TokenStream) -> TokenStream {
    let (member, ty) = (field.member, field.ty);
    let private = respan(private.clone(), ty.span());
    let index = index(i, field);
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
