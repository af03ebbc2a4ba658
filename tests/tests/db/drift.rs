//! The drift check (`immu_core::schema::check`): every kind of difference between an entity's
//! struct, its table and the machinery immu generated for it is reported, with the SQL that
//! fixes it.

use immu_core::schema::Difference;
use immu_core::{Error, Immutable};
use immu_tests::harness::{APP_ROLE, Db, TestResult, grant_application_role};
use immu_tests::models::{Account, Customer, Invoice, Order};
use uuid::Uuid;

immu_tests::tests![
    the_test_entities_match_their_tables,
    a_missing_table_or_immu_is_reported,
    differences_between_struct_and_table_are_reported,
    differences_in_the_machinery_are_reported,
];

/// The differences `check::<T>` reports (empty if none).
async fn differences<T: Immutable>(
    pool: &sqlx::PgPool,
) -> Result<Vec<Difference>, Box<dyn std::error::Error + Send + Sync>> {
    let mut conn = pool.acquire().await?;
    match immu_core::schema::check::<T>(&mut *conn).await {
        Ok(()) => Ok(Vec::new()),
        Err(Error::SchemaDrift { differences, .. }) => Ok(differences),
        Err(other) => Err(other.into()),
    }
}

fn has(differences: &[Difference], description: &str, fix: &str) -> bool {
    differences.iter().any(|d| d.description.contains(description) && d.fix.contains(fix))
}

async fn the_test_entities_match_their_tables(db: Db) -> TestResult {
    immu_core::schema::check::<Account>(&db.pool).await?;
    immu_core::schema::check::<Customer>(&db.pool).await?;
    immu_core::schema::check::<Invoice>(&db.pool).await?;
    immu_core::schema::check::<Order>(&db.pool).await?;
    Ok(())
}

async fn a_missing_table_or_immu_is_reported(db: Db) -> TestResult {
    let empty = db.empty_database().await?;
    let found = differences::<Account>(&empty).await?;
    assert!(has(&found, "immu's migrations have not run", "immu_core::MIGRATOR"), "{found:?}");
    assert!(
        has(&found, "table \"accounts\" does not exist", "SELECT immu.add_versioning('\"accounts\"');"),
        "{found:?}"
    );
    immu_core::MIGRATOR.run(&empty).await?;
    // A plain table of that name: not versioned.
    sqlx::raw_sql("CREATE TABLE accounts (owner text NOT NULL, balance bigint NOT NULL)")
        .execute(&empty)
        .await?;
    let found = differences::<Account>(&empty).await?;
    assert!(
        has(
            &found,
            "public.accounts is not a versioned table",
            "SELECT immu.add_versioning('public.accounts');"
        ),
        "{found:?}"
    );
    // A table of release 1's pasted DDL created after immu's migrations ran.
    sqlx::raw_sql(
        "CREATE TABLE legacy (owner text); CREATE TRIGGER immu_append_only BEFORE UPDATE ON legacy FOR EACH STATEMENT EXECUTE FUNCTION immu.refuse_change()",
    )
    .execute(&empty)
    .await?;
    #[derive(Immutable)]
    #[immu(table = "legacy")]
    struct Legacy {
        owner: Option<String>,
    }
    let found = differences::<Legacy>(&empty).await?;
    assert!(has(&found, "made versioned by release 1's DDL", "SELECT immu.upgrade();"), "{found:?}");
    empty.close().await;
    Ok(())
}

async fn differences_between_struct_and_table_are_reported(db: Db) -> TestResult {
    /// A struct that disagrees with `accounts` in every way a struct can.
    #[derive(Immutable)]
    #[immu(table = "accounts")]
    struct Wrong {
        // No `owner` (NOT NULL, no default): inserts would fail.
        balance: String,  // bigint in the table
        nickname: String, // no such column
        #[immu(references = Customer)]
        friend: Option<Uuid>, // no such column either
    }
    let found = differences::<Wrong>(&db.pool).await?;
    assert!(
        has(
            &found,
            "column balance of public.accounts is bigint; the struct declares text",
            "ALTER TABLE public.accounts ALTER COLUMN balance TYPE text"
        ),
        "{found:?}"
    );
    assert!(
        has(
            &found,
            "field column nickname (text) is missing from public.accounts",
            "ALTER TABLE public.accounts ADD COLUMN nickname text NOT NULL"
        ),
        "{found:?}"
    );
    assert!(
        has(
            &found,
            "column owner of public.accounts is NOT NULL without a default and the struct does not set it",
            "DROP NOT NULL"
        ),
        "{found:?}"
    );

    let mut owner = db.connect_owner().await?;
    sqlx::raw_sql(
        "CREATE TABLE gadgets (name text, maker uuid REFERENCES customers_current (entity_id), buddy uuid);
         SELECT immu.add_versioning('gadgets');",
    )
    .execute(&mut owner)
    .await?;
    grant_application_role(&mut owner, APP_ROLE).await?;
    /// Disagrees with `gadgets` on nullability and references.
    #[derive(Immutable)]
    #[immu(table = "gadgets")]
    struct Gadget {
        name: String,        // nullable in the table
        maker: Option<Uuid>, // has a foreign key the struct does not declare
        #[immu(references = Customer)]
        buddy: Option<Uuid>, // declares one the table lacks
    }
    let found = differences::<Gadget>(&db.pool).await?;
    assert!(
        has(
            &found,
            "column name of public.gadgets is nullable, and its field is not an Option",
            "SET NOT NULL"
        ),
        "{found:?}"
    );
    assert!(
        has(
            &found,
            "column maker of public.gadgets has the foreign key gadgets_maker_fkey to customers_current",
            "DROP CONSTRAINT gadgets_maker_fkey"
        ),
        "{found:?}"
    );
    assert!(
        has(
            &found,
            "field column buddy references customers_current",
            "ADD FOREIGN KEY (buddy) REFERENCES customers_current (entity_id)"
        ),
        "{found:?}"
    );
    assert_eq!(found.len(), 3, "{found:?}");
    // The error lists them all.
    let err = immu_core::schema::check::<Gadget>(&db.pool).await.unwrap_err();
    assert_eq!(err.to_string().matches("(fix: ").count(), 3, "{err}");
    Ok(())
}

async fn differences_in_the_machinery_are_reported(db: Db) -> TestResult {
    let mut owner = db.connect_owner().await?;
    // Columns changed without the sync.
    sqlx::raw_sql("ALTER TABLE accounts ADD COLUMN note text").execute(&mut owner).await?;
    let found = differences::<Account>(&db.pool).await?;
    assert!(
        has(
            &found,
            "column note (text) of public.accounts was added",
            "SELECT immu.sync_versioning('public.accounts');"
        ),
        "{found:?}"
    );
    sqlx::raw_sql("SELECT immu.sync_versioning('accounts')").execute(&mut owner).await?;
    assert_eq!(differences::<Account>(&db.pool).await?, []);
    // A disabled trigger, a trigger of someone else's, a role that may create triggers.
    sqlx::raw_sql(
        "ALTER TABLE accounts DISABLE TRIGGER immu_check_insert;
         CREATE FUNCTION public.mine() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN RETURN NEW; END $$;
         CREATE TRIGGER mine BEFORE INSERT ON accounts FOR EACH ROW EXECUTE FUNCTION public.mine();
         GRANT TRIGGER ON accounts_current TO immu_test_app;",
    )
    .execute(&mut owner)
    .await?;
    let found = differences::<Account>(&db.pool).await?;
    assert!(
        has(
            &found,
            "trigger immu_check_insert on public.accounts is not enabled ALWAYS",
            "immu.sync_versioning"
        ),
        "{found:?}"
    );
    assert!(
        has(&found, "trigger mine on public.accounts is not immu's", "DROP TRIGGER mine ON public.accounts;"),
        "{found:?}"
    );
    assert!(
        has(
            &found,
            "immu_test_app may create triggers on public.accounts_current",
            "REVOKE TRIGGER ON public.accounts_current FROM immu_test_app;"
        ),
        "{found:?}"
    );
    // The machinery of another release.
    sqlx::raw_sql("UPDATE immu.versioned_tables SET release = 1 WHERE table_name = 'accounts'::regclass")
        .execute(&mut owner)
        .await?;
    let found = differences::<Account>(&db.pool).await?;
    assert!(
        has(&found, "the machinery of public.accounts is from release 1 of immu", "SELECT immu.upgrade();"),
        "{found:?}"
    );
    // The fixes, in order, leave nothing.
    sqlx::raw_sql("DROP TRIGGER mine ON accounts; SELECT immu.upgrade();").execute(&mut owner).await?;
    assert_eq!(differences::<Account>(&db.pool).await?, []);
    Ok(())
}
