//! Column constants: one per field, named after the field in SCREAMING_SNAKE_CASE and holding its
//! column (after `rename`), and one per reserved column. They have the struct's visibility and
//! are documented, so `missing_docs` and dead-code lints stay quiet.
#![deny(warnings, missing_docs)]

use immu_core::sea_query::{ExprTrait, PostgresQueryBuilder, Query};
use immu_core::{Column, Immutable};

/// A public entity in a public module: public constants.
pub mod bank {
    /// An account.
    #[derive(immu_core::Immutable)]
    #[immu(table = "accounts")]
    #[allow(non_snake_case)]
    pub struct Account {
        /// Who owns it.
        pub owner: String,
        /// In cents.
        #[immu(rename = "bal")]
        pub balance: i64,
        /// A raw identifier: `Account::TYPE`.
        pub r#type: String,
        /// camelCase: `Account::OPENED_ON`.
        pub openedOn: Option<chrono::NaiveDate>,
    }

    pub(crate) mod internal {
        /// A `pub(crate)` entity: `pub(crate)` constants, usable anywhere in the crate.
        #[derive(immu_core::Immutable)]
        pub(crate) struct Audit {
            pub(crate) note: String,
        }

        /// A private entity, whose constants are private.
        #[derive(immu_core::Immutable)]
        struct Private {
            value: i64,
        }

        pub(crate) fn private_constant() -> &'static str {
            Private::VALUE.name()
        }

        /// A private entity whose constants are never used: no dead-code warning.
        #[derive(immu_core::Immutable)]
        struct Unused {
            value: i64,
        }
    }
}

use bank::Account;
use bank::internal::Audit;

fn main() {
    // Field constants hold the column name, qualified with the table.
    let balance: Column<Account> = Account::BALANCE;
    assert_eq!((balance.table(), balance.name()), ("accounts", "bal"));
    assert_eq!(Account::OWNER.name(), "owner");
    assert_eq!(Account::TYPE.name(), "type");
    assert_eq!(Account::OPENED_ON.name(), "openedOn");
    assert_eq!(Audit::NOTE, Column::<Audit>::new("audit", "note"));
    assert_eq!(bank::internal::private_constant(), "value");

    // Reserved columns.
    let reserved: Vec<&str> = [
        Account::ID,
        Account::ENTITY_ID,
        Account::VERSION,
        Account::VALID_FROM,
        Account::DELETED_AT,
        Account::IMMU_ACTOR,
        Account::IMMU_REASON,
        Account::IMMU_CONTEXT,
        Account::IMMU_DB_USER,
        Account::IMMU_APPLICATION,
        Account::IMMU_REVERT_OF,
    ]
    .iter()
    .map(|c| c.name())
    .collect();
    assert_eq!(reserved, immu_core::RESERVED_COLUMNS);
    assert_eq!(Audit::ENTITY_ID.table(), "audit");

    // They are constants.
    const BALANCE: Column<Account> = Account::BALANCE;
    assert_eq!(BALANCE.name(), Account::TABLE.columns[1].name);

    // In expressions.
    let sql = Query::select()
        .column(Account::OWNER)
        .from(Account::TABLE.name)
        .and_where(Account::BALANCE.gt(100).and(Account::TYPE.eq("savings")))
        .and_where(Account::DELETED_AT.is_null())
        .to_string(PostgresQueryBuilder);
    assert_eq!(
        sql,
        r#"SELECT "accounts"."owner" FROM "accounts" WHERE "accounts"."bal" > 100 AND "accounts"."type" = 'savings' AND "accounts"."deleted_at" IS NULL"#
    );
    let _ = Account::ENTITY_ID.eq(uuid::Uuid::nil());
}
