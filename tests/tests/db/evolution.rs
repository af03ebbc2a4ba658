//! Changing an entity: each recipe of the README's "Changing an entity", run on a table with
//! history (every entity at 3 versions or more, a deleted and an undeleted entity, references),
//! with the struct before and after. After each step: as-of reads of instants before the change
//! return the old versions in the new shape, writes work at once (through the old struct too,
//! where the recipe says so), the projection equals the latest version of every entity column by
//! column (`immu.check_projection`), the history keeps its rules (`immu.check_history`) under
//! concurrent writers, and the drift check passes. And the natural mistakes (the sync forgotten,
//! a change applied to one table of the two) are caught: the next write fails with a typed error
//! naming the table, the difference and the fix.

use chrono::{DateTime, Utc};
use immu_core::{Error, Immutable, Versioned};
use immu_tests::harness::{APP_ROLE, Db, TestResult, grant_application_role};
use immu_tests::models::Customer;
use uuid::Uuid;

immu_tests::tests![
    add_a_nullable_field,
    add_a_field_with_a_default,
    rename_a_field,
    retire_a_field,
    change_a_columns_type,
    add_and_drop_a_reference,
    add_indexes,
    a_change_without_the_sync_is_caught,
    a_change_of_the_projection_alone_is_caught,
    a_change_sql_cannot_express_is_upcast_on_read,
];

/// A person as first written: one `name`.
#[derive(Debug, Clone, PartialEq, Immutable)]
#[immu(table = "people")]
struct PersonV1 {
    name: String,
}

/// A person since the name was split: versions written by shape 1 are converted on read.
#[derive(Debug, Clone, PartialEq, Immutable)]
#[immu(table = "people", shape = 2, upcast = PersonV1)]
struct Person {
    first_name: String,
    last_name: String,
}

impl From<PersonV1> for Person {
    fn from(old: PersonV1) -> Person {
        let (first, last) = old.name.split_once(' ').unwrap_or((&old.name, ""));
        Person { first_name: first.to_owned(), last_name: last.to_owned() }
    }
}

/// The entity before any change.
#[derive(Debug, Clone, PartialEq, Immutable)]
#[immu(table = "products")]
struct Product {
    name: String,
    price: i64,
    maker_id: Uuid,
}

/// `note text` added (nullable).
#[derive(Debug, Clone, PartialEq, Immutable)]
#[immu(table = "products")]
struct ProductNote {
    name: String,
    price: i64,
    maker_id: Uuid,
    note: Option<String>,
}

/// `currency text NOT NULL DEFAULT 'EUR'` added.
#[derive(Debug, Clone, PartialEq, Immutable)]
#[immu(table = "products")]
struct ProductCurrency {
    name: String,
    price: i64,
    maker_id: Uuid,
    currency: String,
}

/// `price` renamed to `amount`.
#[derive(Debug, Clone, PartialEq, Immutable)]
#[immu(table = "products")]
struct ProductAmount {
    name: String,
    amount: i64,
    maker_id: Uuid,
}

/// `price` retired: the struct no longer names it.
#[derive(Debug, Clone, PartialEq, Immutable)]
#[immu(table = "products")]
struct ProductNoPrice {
    name: String,
    maker_id: Uuid,
}

/// `price` retyped from cents (`bigint`) to units (`double precision`).
#[derive(Debug, Clone, PartialEq, Immutable)]
#[immu(table = "products")]
struct ProductUnits {
    name: String,
    price: f64,
    maker_id: Uuid,
}

/// `maker_id` references the maker (a customer): a foreign key to its projection.
#[derive(Debug, Clone, PartialEq, Immutable)]
#[immu(table = "products")]
struct ProductReferenced {
    name: String,
    price: i64,
    #[immu(references = Customer)]
    maker_id: Uuid,
}

/// The table's history: what the recipes start from.
struct Seeded {
    /// The products, by name: `a` (3 versions), `b` (4), `deleted` (3, the last a tombstone),
    /// `undeleted` (5: deleted and undeleted).
    ids: Vec<(String, Uuid)>,
    /// An instant after every seeded version.
    before_change: DateTime<Utc>,
    /// Every seeded version, as it was written.
    versions: Vec<Versioned<Product>>,
    maker: Uuid,
}

impl Seeded {
    fn id(&self, name: &str) -> Uuid {
        self.ids.iter().find(|(n, _)| n == name).map(|(_, id)| *id).expect("seeded product")
    }
}

/// Runs SQL as the tables' owner (migrations run as the owner).
async fn migrate(db: &Db, sql: &str) -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
    let mut owner = db.connect_owner().await?;
    sqlx::raw_sql(sqlx::AssertSqlSafe(sql.to_owned())).execute(&mut owner).await?;
    grant_application_role(&mut owner, APP_ROLE).await?;
    Ok(())
}

async fn seed(db: &Db) -> Result<Seeded, Box<dyn std::error::Error + Send + Sync>> {
    migrate(db, &immu_core::schema::create_table::<Product>()?).await?;
    let maker =
        Customer::insert(&db.pool, Customer { name: "Acme".into(), tier: "gold".into() }).await?.entity_id;
    let mut ids = Vec::new();
    let mut versions = Vec::new();
    for (name, updates) in [("a", 2), ("b", 3), ("deleted", 1), ("undeleted", 1)] {
        let v = Product::insert(&db.pool, Product { name: name.into(), price: 100, maker_id: maker }).await?;
        ids.push((name.to_owned(), v.entity_id));
        versions.push(v.clone());
        for i in 0..updates {
            versions.push(Product::modify(&db.pool, v.entity_id, |p| p.price += 10 * (i + 1)).await?.into());
        }
    }
    let deleted = ids[2].1;
    versions.push(Product::delete(&db.pool, deleted).await?);
    let undeleted = ids[3].1;
    versions.push(Product::delete(&db.pool, undeleted).await?);
    versions.push(Product::undelete(&db.pool, undeleted).await?);
    versions.push(Product::modify(&db.pool, undeleted, |p| p.name = "undeleted again".into()).await?.into());
    let before_change = immu_core::Snapshot::now(&db.pool).await?.instant();
    Ok(Seeded { ids, before_change, versions, maker })
}

/// The checks after every step: the projection, the history's rules under concurrent writers of
/// `T`, the drift check of `T`.
fn sound<T: Immutable>(db: &Db, busy: Uuid) -> BoxFuture<'_> {
    Box::pin(async move {
        let mut writers = Vec::new();
        for _ in 0..8 {
            let pool = db.pool.clone();
            writers.push(tokio::spawn(async move {
                let mut conn = pool.acquire().await?;
                for _ in 0..5 {
                    T::modify(&mut *conn, busy, |_| {}).await?;
                }
                Ok::<_, Error>(())
            }));
        }
        for writer in writers {
            writer.await??;
        }
        let projection: Vec<(Uuid, String)> =
            sqlx::query_as("SELECT entity_id, problem FROM immu.check_projection('products')")
                .fetch_all(&db.owner)
                .await?;
        assert_eq!(projection, [], "the projection equals the latest versions");
        let history: Vec<(Uuid, i64, String)> =
            sqlx::query_as("SELECT entity_id, version, problem FROM immu.check_history('products')")
                .fetch_all(&db.owner)
                .await?;
        assert_eq!(history, [], "the history keeps its rules");
        let mut conn = db.pool.acquire().await?;
        immu_core::schema::check::<T>(&mut *conn).await?;
        Ok(())
    })
}

/// The future of a generic check, boxed: a generic `async fn` called from the tests' futures runs
/// into rust-lang/rust#100013.
type BoxFuture<'a> = std::pin::Pin<Box<dyn std::future::Future<Output = TestResult> + Send + 'a>>;

/// Every seeded version, read as of its own instant with `T`, compared with `expect`.
fn old_versions_read<'a, T, F>(db: &'a Db, seeded: &'a Seeded, expect: F) -> BoxFuture<'a>
where
    T: Immutable + std::fmt::Debug + PartialEq,
    F: Fn(&Product) -> T + Send + 'a,
{
    Box::pin(async move {
        let mut conn = db.pool.acquire().await?;
        for old in &seeded.versions {
            if old.is_deleted() {
                continue;
            }
            let then = T::find_version(&mut *conn, old.entity_id, old.version).await?;
            assert_eq!(then.data, expect(&old.data), "version {} of {}", old.version, old.entity_id);
        }
        // The list as of the instant before the change, in the new shape.
        let listed = T::query().as_of(seeded.before_change).fetch_all(&mut *conn).await?;
        assert_eq!(listed.len(), 3, "a, b and undeleted were live: {listed:?}");
        Ok(())
    })
}

async fn add_a_nullable_field(db: Db) -> TestResult {
    let seeded = seed(&db).await?;
    migrate(&db, "ALTER TABLE products ADD COLUMN note text; SELECT immu.sync_versioning('products');")
        .await?;
    old_versions_read::<ProductNote, _>(&db, &seeded, |p| ProductNote {
        name: p.name.clone(),
        price: p.price,
        maker_id: p.maker_id,
        note: None,
    })
    .await?;
    let a = seeded.id("a");
    let v = ProductNote::modify(&db.pool, a, |p| p.note = Some("new".into())).await?;
    assert_eq!(v.note.as_deref(), Some("new"));
    // The old struct still writes (a running binary of before the change): the note it does not
    // know is kept, not reset.
    let old = Product::modify(&db.pool, a, |p| p.price = 1).await?;
    assert_eq!(ProductNote::find(&db.pool, a).await?.note.as_deref(), Some("new"));
    assert_eq!(old.version, v.version + 1);
    let new = ProductNote::insert(
        &db.pool,
        ProductNote { name: "c".into(), price: 1, maker_id: seeded.maker, note: None },
    )
    .await?;
    assert_eq!(new.version, 1);
    assert!(ProductNote::undelete(&db.pool, seeded.id("deleted")).await?.note.is_none());
    sound::<ProductNote>(&db, a).await
}

async fn add_a_field_with_a_default(db: Db) -> TestResult {
    let seeded = seed(&db).await?;
    migrate(
        &db,
        "ALTER TABLE products ADD COLUMN currency text NOT NULL DEFAULT 'EUR'; SELECT immu.sync_versioning('products');",
    )
    .await?;
    old_versions_read::<ProductCurrency, _>(&db, &seeded, |p| ProductCurrency {
        name: p.name.clone(),
        price: p.price,
        maker_id: p.maker_id,
        currency: "EUR".into(),
    })
    .await?;
    let b = seeded.id("b");
    let usd = ProductCurrency::modify(&db.pool, b, |p| p.currency = "USD".into()).await?;
    // Current reads (the projection) say what the history says: the bug this recipe used to hit.
    assert_eq!(ProductCurrency::find(&db.pool, b).await?.currency, "USD");
    assert_eq!(usd.currency, "USD");
    // An insert by the old struct gets the column's default.
    let old =
        Product::insert(&db.pool, Product { name: "c".into(), price: 1, maker_id: seeded.maker }).await?;
    assert_eq!(ProductCurrency::find(&db.pool, old.entity_id).await?.currency, "EUR");
    sound::<ProductCurrency>(&db, b).await
}

async fn rename_a_field(db: Db) -> TestResult {
    let seeded = seed(&db).await?;
    migrate(&db, "CREATE INDEX products_current_price ON products_current (price)").await?;
    migrate(
        &db,
        "ALTER TABLE products RENAME COLUMN price TO amount; SELECT immu.sync_versioning('products');",
    )
    .await?;
    old_versions_read::<ProductAmount, _>(&db, &seeded, |p| ProductAmount {
        name: p.name.clone(),
        amount: p.price,
        maker_id: p.maker_id,
    })
    .await?;
    // The projection's column was renamed, not dropped and added: its index followed.
    let index: String =
        sqlx::query_scalar("SELECT indexdef FROM pg_indexes WHERE indexname = 'products_current_price'")
            .fetch_one(&db.owner)
            .await?;
    assert!(index.contains("(amount)"), "{index}");
    let a = seeded.id("a");
    assert_eq!(ProductAmount::modify(&db.pool, a, |p| p.amount = 7).await?.amount, 7);
    assert_eq!(ProductAmount::find(&db.pool, a).await?.amount, 7);
    // The old struct names a column that is gone: its writes fail, typed, and write nothing.
    let err = Product::modify(&db.pool, a, |p| p.price = 1).await.unwrap_err();
    assert!(matches!(err, Error::MachineryMismatch { .. } | Error::Database(_)), "{err:?}");
    sound::<ProductAmount>(&db, a).await
}

async fn retire_a_field(db: Db) -> TestResult {
    let seeded = seed(&db).await?;
    // The struct stops naming `price`: it stays in the table with its history. Inserts by the new
    // struct leave it out, so it may no longer be NOT NULL (no sync needed: no column changed).
    migrate(&db, "ALTER TABLE products ALTER COLUMN price DROP NOT NULL").await?;
    old_versions_read::<ProductNoPrice, _>(&db, &seeded, |p| ProductNoPrice {
        name: p.name.clone(),
        maker_id: p.maker_id,
    })
    .await?;
    let a = seeded.id("a");
    let before: i64 = Product::find(&db.pool, a).await?.price;
    let v = ProductNoPrice::modify(&db.pool, a, |p| p.name = "a2".into()).await?;
    // An update keeps the retired column's latest value; the history keeps all of them.
    let price: Option<i64> =
        sqlx::query_scalar("SELECT price FROM products WHERE entity_id = $1 AND version = $2")
            .bind(a)
            .bind(v.version)
            .fetch_one(&db.pool)
            .await?;
    assert_eq!(price, Some(before));
    let new =
        ProductNoPrice::insert(&db.pool, ProductNoPrice { name: "c".into(), maker_id: seeded.maker }).await?;
    let price: Option<i64> = sqlx::query_scalar("SELECT price FROM products_current WHERE entity_id = $1")
        .bind(new.entity_id)
        .fetch_one(&db.pool)
        .await?;
    assert_eq!(price, None);
    assert!(ProductNoPrice::delete(&db.pool, a).await?.is_deleted());
    ProductNoPrice::undelete(&db.pool, a).await?;
    sound::<ProductNoPrice>(&db, seeded.id("b")).await
}

async fn change_a_columns_type(db: Db) -> TestResult {
    let seeded = seed(&db).await?;
    // Cents to units: the history's versions are rewritten by the cast (a type change rewrites
    // stored values); the projection is filled from the rewritten history, so it agrees whatever
    // the USING clause says.
    migrate(
        &db,
        "ALTER TABLE products ALTER COLUMN price TYPE double precision USING price / 100.0;
         SELECT immu.sync_versioning('products');",
    )
    .await?;
    old_versions_read::<ProductUnits, _>(&db, &seeded, |p| ProductUnits {
        name: p.name.clone(),
        price: p.price as f64 / 100.0,
        maker_id: p.maker_id,
    })
    .await?;
    let b = seeded.id("b");
    assert!((ProductUnits::find(&db.pool, b).await?.price - 1.6).abs() < 1e-9);
    assert!((ProductUnits::modify(&db.pool, b, |p| p.price += 0.25).await?.price - 1.85).abs() < 1e-9);
    sound::<ProductUnits>(&db, b).await
}

async fn add_and_drop_a_reference(db: Db) -> TestResult {
    let seeded = seed(&db).await?;
    // The struct declares a reference the table does not have yet: the drift check says so.
    let err = immu_core::schema::check::<ProductReferenced>(&db.pool).await.unwrap_err();
    assert!(err.to_string().contains("has no foreign key"), "{err}");
    migrate(
        &db,
        "ALTER TABLE products ADD CONSTRAINT products_maker_id_fkey FOREIGN KEY (maker_id) REFERENCES customers_current (entity_id)",
    )
    .await?;
    let err = ProductReferenced::insert(
        &db.pool,
        ProductReferenced { name: "x".into(), price: 1, maker_id: Uuid::now_v7() },
    )
    .await
    .unwrap_err();
    assert!(matches!(err, Error::UnknownReference { .. }), "{err:?}");
    ProductReferenced::insert(
        &db.pool,
        ProductReferenced { name: "x".into(), price: 1, maker_id: seeded.maker },
    )
    .await?;
    sound::<ProductReferenced>(&db, seeded.id("a")).await?;
    // And dropped again: the struct without it passes the check, the reference is not enforced.
    migrate(&db, "ALTER TABLE products DROP CONSTRAINT products_maker_id_fkey").await?;
    Product::insert(&db.pool, Product { name: "y".into(), price: 1, maker_id: Uuid::now_v7() }).await?;
    sound::<Product>(&db, seeded.id("a")).await
}

async fn add_indexes(db: Db) -> TestResult {
    let seeded = seed(&db).await?;
    // Indexes change no column: no sync.
    migrate(
        &db,
        "CREATE INDEX products_current_maker ON products_current (maker_id);
         CREATE INDEX products_maker ON products (maker_id, valid_from);",
    )
    .await?;
    let a = seeded.id("a");
    Product::modify(&db.pool, a, |p| p.price = 5).await?;
    sound::<Product>(&db, a).await
}

async fn a_change_without_the_sync_is_caught(db: Db) -> TestResult {
    let seeded = seed(&db).await?;
    let a = seeded.id("a");
    for (change, difference) in [
        (
            "ALTER TABLE products ADD COLUMN currency text NOT NULL DEFAULT 'EUR'",
            "column currency (text) of public.products was added",
        ),
        (
            "ALTER TABLE products RENAME COLUMN price TO amount",
            "column price (bigint) of public.products was dropped or renamed",
        ),
        (
            "ALTER TABLE products ALTER COLUMN price TYPE numeric",
            "column price of public.products changed type from bigint to numeric",
        ),
        (
            "ALTER TABLE products DROP COLUMN name",
            "column name (text) of public.products was dropped or renamed",
        ),
    ] {
        let before: Vec<String> =
            sqlx::query_scalar("SELECT p::text FROM products_current p ORDER BY entity_id")
                .fetch_all(&db.owner)
                .await?;
        let mut owner = db.connect_owner().await?;
        let mut tx = sqlx::Connection::begin(&mut owner).await?;
        sqlx::raw_sql(sqlx::AssertSqlSafe(change.to_owned())).execute(&mut *tx).await?;
        // The migration forgot `SELECT immu.sync_versioning('products')`: every write fails, typed,
        // whichever way it comes (immu's, or raw SQL).
        let err =
            Product::update(&mut *tx, a, Product { name: "x".into(), price: 1, maker_id: seeded.maker })
                .await
                .unwrap_err();
        match &err {
            Error::SchemaDrift { table, differences } => {
                assert_eq!(table, "products");
                assert!(differences.iter().any(|d| d.description == difference), "{change}: {differences:?}");
                assert!(
                    differences
                        .iter()
                        .all(|d| d.fix.contains("SELECT immu.sync_versioning('public.products');")),
                    "{differences:?}"
                );
            }
            other => panic!("{change}: expected SchemaDrift, got {other:?}"),
        }
        let raw = sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
            "INSERT INTO products (id, entity_id, version, maker_id) VALUES (gen_random_uuid(), gen_random_uuid(), 1, '{}')",
            seeded.maker
        )))
        .execute(&mut *tx)
        .await
        .unwrap_err();
        assert!(matches!(Error::from(raw), Error::SchemaDrift { .. }), "{change}: raw insert");
        // The drift check reports it too, with the fix.
        tx.rollback().await?;
        let after: Vec<String> =
            sqlx::query_scalar("SELECT p::text FROM products_current p ORDER BY entity_id")
                .fetch_all(&db.owner)
                .await?;
        assert_eq!(after, before, "{change}: nothing was written");
    }
    // Committed without the sync, the drift check lists it; the sync repairs it.
    migrate(&db, "ALTER TABLE products ADD COLUMN note text").await?;
    let err = immu_core::schema::check::<ProductNote>(&db.pool).await.unwrap_err();
    assert!(err.to_string().contains("column note (text) of public.products was added"), "{err}");
    assert!(err.to_string().contains("SELECT immu.sync_versioning('public.products');"), "{err}");
    migrate(&db, "SELECT immu.sync_versioning('products')").await?;
    ProductNote::modify(&db.pool, a, |p| p.note = Some("ok".into())).await?;
    sound::<ProductNote>(&db, a).await
}

async fn a_change_of_the_projection_alone_is_caught(db: Db) -> TestResult {
    let seeded = seed(&db).await?;
    let a = seeded.id("a");
    // The owner changes the projection instead of the history: writes stop, with the fix.
    migrate(&db, "ALTER TABLE products_current ADD COLUMN currency text").await?;
    let err = Product::modify(&db.pool, a, |p| p.price = 1).await.unwrap_err();
    assert!(
        matches!(&err, Error::SchemaDrift { differences, .. }
            if differences.iter().any(|d| d.description.contains("column currency (text) of public.products_current was added"))),
        "{err:?}"
    );
    // The sync brings the projection back to the history's shape.
    migrate(&db, "SELECT immu.sync_versioning('products')").await?;
    Product::modify(&db.pool, a, |p| p.price = 1).await?;
    // The same for both tables changed alike by hand: the machinery still lags; sync.
    migrate(
        &db,
        "ALTER TABLE products ADD COLUMN note text; ALTER TABLE products_current ADD COLUMN note text",
    )
    .await?;
    assert!(matches!(
        ProductNote::modify(&db.pool, a, |p| p.note = Some("x".into())).await.unwrap_err(),
        Error::SchemaDrift { .. }
    ));
    migrate(&db, "SELECT immu.sync_versioning('products')").await?;
    assert_eq!(
        ProductNote::modify(&db.pool, a, |p| p.note = Some("x".into())).await?.note.as_deref(),
        Some("x")
    );
    sound::<ProductNote>(&db, a).await
}

async fn a_change_sql_cannot_express_is_upcast_on_read(db: Db) -> TestResult {
    migrate(&db, &immu_core::schema::create_table::<PersonV1>()?).await?;
    let ada = PersonV1::insert(&db.pool, PersonV1 { name: "Ada Byron".into() }).await?;
    PersonV1::modify(&db.pool, ada.entity_id, |p| p.name = "Ada Lovelace".into()).await?;
    let grace = PersonV1::insert(&db.pool, PersonV1 { name: "Grace Hopper".into() }).await?;
    PersonV1::delete(&db.pool, grace.entity_id).await?;
    let before = immu_core::Snapshot::now(&db.pool).await?.instant();
    // Splitting a name is no SQL cast: the old versions stay as they were written, and record
    // that shape 1 wrote them.
    migrate(
        &db,
        "ALTER TABLE people ADD COLUMN first_name text, ADD COLUMN last_name text, ALTER COLUMN name DROP NOT NULL;
         SELECT immu.sync_versioning('people');",
    )
    .await?;
    let shapes: Vec<Option<i32>> =
        sqlx::query_scalar("SELECT immu_shape FROM people WHERE entity_id = $1 ORDER BY version")
            .bind(ada.entity_id)
            .fetch_all(&db.pool)
            .await?;
    assert_eq!(shapes, [Some(1), Some(1)]);
    // The drift check accepts the new struct: its columns are NULL only in versions of shape 1,
    // which PersonV1 reads.
    immu_core::schema::check::<Person>(&db.pool).await?;
    // Every read converts them.
    let now = Person::find(&db.pool, ada.entity_id).await?;
    assert_eq!((now.first_name.as_str(), now.last_name.as_str(), now.version), ("Ada", "Lovelace", 2));
    let history = Person::history(&db.pool, ada.entity_id).await?;
    assert_eq!(history.iter().map(|v| v.last_name.as_str()).collect::<Vec<_>>(), ["Byron", "Lovelace"]);
    let then = Person::query().as_of(before).fetch_all(&db.pool).await?;
    assert_eq!(then.len(), 1, "grace was deleted");
    assert_eq!(then[0].first_name, "Ada");
    let all = Person::query().with_deleted().all_versions().fetch_all(&db.pool).await?;
    assert_eq!(all.len(), 4);
    // Writes of shape 2, also on top of a shape-1 version.
    let v3 = Person::modify(&db.pool, ada.entity_id, |p| p.last_name = "King".into()).await?;
    assert_eq!((v3.first_name.as_str(), v3.last_name.as_str(), v3.version), ("Ada", "King", 3));
    let back = Person::undelete(&db.pool, grace.entity_id).await?;
    assert_eq!(
        (back.first_name.as_str(), back.last_name.as_str()),
        ("Grace", "Hopper"),
        "the undelete copies a shape-1 version"
    );
    let shapes: Vec<Option<i32>> =
        sqlx::query_scalar("SELECT immu_shape FROM people WHERE entity_id = $1 ORDER BY version")
            .bind(ada.entity_id)
            .fetch_all(&db.pool)
            .await?;
    assert_eq!(shapes, [Some(1), Some(1), Some(2)]);
    // The old versions are untouched, in the history as in what an old reader sees.
    assert_eq!(PersonV1::find_version(&db.pool, ada.entity_id, 1).await?.name, "Ada Byron");
    // A writer still running the old shape: its versions say so, and read right.
    PersonV1::update(&db.pool, ada.entity_id, PersonV1 { name: "Ada Countess".into() }).await?;
    let v5 = Person::find(&db.pool, ada.entity_id).await?;
    assert_eq!((v5.first_name.as_str(), v5.last_name.as_str()), ("Ada", "Countess"));
    // A partial update of a shape-1 version would change columns that version is not read by:
    // refused, nothing written; after a modify writes shape 2, it patches.
    let err = Person::patch(&db.pool, ada.entity_id).set(Person::LAST_NAME, "Lovelace").await.unwrap_err();
    assert!(matches!(err, immu_core::Error::OlderShape { version: 4, shape: 1, .. }), "{err:?}");
    assert_eq!(Person::find(&db.pool, ada.entity_id).await?.version, 4);
    let missing = Person::patch(&db.pool, Uuid::now_v7()).set(Person::LAST_NAME, "x").await.unwrap_err();
    assert!(missing.is_not_found(), "{missing:?}");
    Person::modify(&db.pool, ada.entity_id, |_| {}).await?;
    let patched = Person::patch(&db.pool, ada.entity_id).set(Person::LAST_NAME, "Lovelace").await?;
    assert_eq!(
        (patched.first_name.as_str(), patched.last_name.as_str(), patched.version),
        ("Ada", "Lovelace", 6)
    );
    let new =
        Person::insert(&db.pool, Person { first_name: "Alan".into(), last_name: "Turing".into() }).await?;
    assert_eq!(Person::find(&db.pool, new.entity_id).await?.data, new.data);
    let projection: i64 = sqlx::query_scalar("SELECT count(*) FROM immu.check_projection('people')")
        .fetch_one(&db.owner)
        .await?;
    assert_eq!(projection, 0);
    Ok(())
}
