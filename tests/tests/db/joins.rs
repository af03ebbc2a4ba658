//! Joins in both directions, inner and left outer, resolved at one instant: checked against an
//! in-memory model built from the writes the test made (every version each write returned), at
//! every instant of the history (at each change and just before it), now, and in history mode.

use std::collections::BTreeMap;

use chrono::{DateTime, Duration, Utc};
use immu_core::sea_query::{ExprTrait, Order};
use immu_core::{Immutable, Query, Snapshot, Versioned};
use immu_tests::harness::{APP_ROLE, Db, TestResult, grant_application_role};
use immu_tests::models::{Customer, Invoice};
use uuid::Uuid;

immu_tests::tests![
    joins_in_both_directions_match_the_model_at_every_instant,
    outer_joins_keep_entities_without_a_counterpart,
    reverse_join_filters_orders_pages_and_counts_resolved_pairs,
    a_deleted_counterpart_is_absent_unless_with_deleted,
    joins_decode_an_upcasting_entity_on_either_side,
];

/// A person: referenced by [`Vault`], optionally.
#[derive(Debug, Clone, PartialEq, Eq, Immutable)]
#[immu(table = "people")]
struct Person {
    name: String,
}

/// A vault with an optional owner.
#[derive(Debug, Clone, PartialEq, Eq, Immutable)]
#[immu(table = "vaults")]
struct Vault {
    label: String,
    #[immu(references = Person)]
    owner_id: Option<Uuid>,
}

/// A note as first written.
#[derive(Debug, Clone, PartialEq, Eq, Immutable)]
#[immu(table = "notes")]
struct NoteV1 {
    words: String,
    #[immu(references = Customer)]
    customer_id: Uuid,
}

/// A note since `words` became `body`: a join selects the older shape's column too.
#[derive(Debug, Clone, PartialEq, Eq, Immutable)]
#[immu(table = "notes", shape = 2, upcast = NoteV1)]
struct Note {
    body: String,
    #[immu(references = Customer)]
    customer_id: Uuid,
}

impl From<NoteV1> for Note {
    fn from(old: NoteV1) -> Note {
        Note { body: old.words, customer_id: old.customer_id }
    }
}

/// Creates `people` and `vaults` (their migrations, as the owner) and grants the application role.
async fn migrate(db: &Db) -> TestResult {
    let mut owner = db.connect_owner().await?;
    for ddl in [immu_core::schema::create_table::<Person>()?, immu_core::schema::create_table::<Vault>()?] {
        sqlx::raw_sql(sqlx::AssertSqlSafe(ddl)).execute(&mut owner).await?;
    }
    grant_application_role(&mut owner, APP_ROLE).await?;
    Ok(())
}

/// How a query resolves, in the model and in the query.
#[derive(Debug, Clone, Copy)]
enum Mode {
    Current,
    AsOf(DateTime<Utc>),
    AllVersions,
}

/// Every version the test's writes returned, per entity, in version order.
struct Model<T> {
    versions: BTreeMap<Uuid, Vec<Versioned<T>>>,
}

impl<T: Clone> Model<T> {
    fn new() -> Self {
        Model { versions: BTreeMap::new() }
    }

    fn record(&mut self, version: &Versioned<T>) {
        let versions = self.versions.entry(version.entity_id).or_default();
        assert_eq!(versions.len() as i64 + 1, version.version, "versions recorded in order");
        versions.push(version.clone());
    }

    /// The entity's version at `at` (`None`: its latest), if it is present then: it exists, and
    /// is not deleted unless `deleted`.
    fn resolve(&self, entity: Uuid, at: Option<DateTime<Utc>>, deleted: bool) -> Option<Versioned<T>> {
        let versions = self.versions.get(&entity)?;
        let version = match at {
            None => versions.last(),
            Some(at) => versions.iter().rev().find(|v| v.valid_from <= at),
        }?;
        (deleted || !version.is_deleted()).then(|| version.clone())
    }

    /// The starting side of a query in `mode`: each entity's resolved version, or every version.
    fn rows(&self, mode: Mode, deleted: bool) -> Vec<Versioned<T>> {
        match mode {
            Mode::AllVersions => self.versions.values().flatten().cloned().collect(),
            Mode::Current => self.versions.keys().filter_map(|id| self.resolve(*id, None, deleted)).collect(),
            Mode::AsOf(at) => {
                self.versions.keys().filter_map(|id| self.resolve(*id, Some(at), deleted)).collect()
            }
        }
    }
}

/// Where the other side of a join resolves for a row of the starting side.
fn other_side_at<T>(mode: Mode, row: &Versioned<T>) -> Option<DateTime<Utc>> {
    match mode {
        Mode::Current => None,
        Mode::AsOf(at) => Some(at),
        Mode::AllVersions => Some(row.valid_from),
    }
}

/// A pair as compared: both versions, whole.
type Pair<L, R> = (Versioned<L>, Option<Versioned<R>>);

/// Sorts pairs by starting entity, version, and other entity.
fn sorted<L, R>(mut pairs: Vec<Pair<L, R>>) -> Vec<Pair<L, R>> {
    pairs.sort_by_key(|(l, r)| (l.entity_id, l.version, r.as_ref().map(|r| r.entity_id)));
    pairs
}

struct World {
    people: Model<Person>,
    vaults: Model<Vault>,
}

impl World {
    /// Vault -> its owner (`left`: vaults without one kept, with `None`).
    fn forward(&self, mode: Mode, deleted: bool, left: bool) -> Vec<Pair<Vault, Person>> {
        let pairs = self.vaults.rows(mode, deleted).into_iter().filter_map(|vault| {
            let owner = vault
                .owner_id
                .and_then(|owner| self.people.resolve(owner, other_side_at(mode, &vault), deleted));
            (left || owner.is_some()).then_some((vault, owner))
        });
        sorted(pairs.collect())
    }

    /// Person -> each vault that references them (`left`: people without one kept, with `None`).
    fn reverse(&self, mode: Mode, deleted: bool, left: bool) -> Vec<Pair<Person, Vault>> {
        let mut pairs = Vec::new();
        for person in self.people.rows(mode, deleted) {
            let at = other_side_at(mode, &person);
            let owned: Vec<Versioned<Vault>> = self
                .vaults
                .versions
                .keys()
                .filter_map(|id| self.vaults.resolve(*id, at, deleted))
                .filter(|vault| vault.owner_id == Some(person.entity_id))
                .collect();
            if owned.is_empty() && left {
                pairs.push((person.clone(), None));
            }
            pairs.extend(owned.into_iter().map(|vault| (person.clone(), Some(vault))));
        }
        sorted(pairs)
    }
}

fn query<T: Immutable>(mode: Mode, deleted: bool, from_history: bool) -> Query<T> {
    let mut query = T::query();
    query = match mode {
        Mode::Current => query,
        Mode::AsOf(at) => query.as_of(at),
        Mode::AllVersions => query.all_versions(),
    };
    if deleted {
        query = query.with_deleted();
    }
    if from_history {
        query = query.from_history();
    }
    query
}

fn inner<L, R>(pairs: Vec<(Versioned<L>, Versioned<R>)>) -> Vec<Pair<L, R>> {
    sorted(pairs.into_iter().map(|(l, r)| (l, Some(r))).collect())
}

/// Runs the four joins in `mode` (with and without `with_deleted`, from the projection and from
/// the history) and compares each with the model; `count` and `exists` too.
async fn check(db: &Db, world: &World, mode: Mode, what: &str) -> TestResult {
    for deleted in [false, true] {
        for from_history in [false, true] {
            let context = format!("{what}, {mode:?}, with_deleted {deleted}, from_history {from_history}");
            let q = || query::<Vault>(mode, deleted, from_history);
            let p = || query::<Person>(mode, deleted, from_history);

            let expected = world.forward(mode, deleted, false);
            let got = inner(q().join::<Person>(Vault::OWNER_ID).fetch_all(&db.pool).await?);
            assert_eq!(got, expected, "join: {context}");
            assert_eq!(q().join::<Person>(Vault::OWNER_ID).count(&db.pool).await?, expected.len() as i64);
            assert_eq!(q().join::<Person>(Vault::OWNER_ID).exists(&db.pool).await?, !expected.is_empty());

            let expected = world.forward(mode, deleted, true);
            let got = sorted(q().left_join::<Person>(Vault::OWNER_ID).fetch_all(&db.pool).await?);
            assert_eq!(got, expected, "left_join: {context}");
            assert_eq!(
                q().left_join::<Person>(Vault::OWNER_ID).count(&db.pool).await?,
                expected.len() as i64
            );

            let expected = world.reverse(mode, deleted, false);
            let got = inner(p().join_referencing::<Vault>(Vault::OWNER_ID).fetch_all(&db.pool).await?);
            assert_eq!(got, expected, "join_referencing: {context}");
            let count = p().join_referencing::<Vault>(Vault::OWNER_ID).count(&db.pool).await?;
            assert_eq!(count, expected.len() as i64, "join_referencing count: {context}");

            let expected = world.reverse(mode, deleted, true);
            let got = sorted(p().left_join_referencing::<Vault>(Vault::OWNER_ID).fetch_all(&db.pool).await?);
            assert_eq!(got, expected, "left_join_referencing: {context}");
            let exists = p().left_join_referencing::<Vault>(Vault::OWNER_ID).exists(&db.pool).await?;
            assert_eq!(exists, !expected.is_empty(), "left_join_referencing exists: {context}");
        }
    }
    Ok(())
}

async fn joins_in_both_directions_match_the_model_at_every_instant(db: Db) -> TestResult {
    migrate(&db).await?;
    let mut world = World { people: Model::new(), vaults: Model::new() };
    // Every change, in order, and the version it wrote.
    let mut changes: Vec<DateTime<Utc>> = Vec::new();
    macro_rules! person {
        ($write:expr) => {{
            let v: Versioned<Person> = $write.into();
            world.people.record(&v);
            changes.push(v.valid_from);
            v.entity_id
        }};
    }
    macro_rules! vault {
        ($write:expr) => {{
            let v: Versioned<Vault> = $write.into();
            world.vaults.record(&v);
            changes.push(v.valid_from);
            v.entity_id
        }};
    }
    let pool = &db.pool;
    let person = |name: &str| Person { name: name.to_owned() };
    let vault = |label: &str, owner_id: Option<Uuid>| Vault { label: label.to_owned(), owner_id };

    let ada = person!(Person::insert(pool, person("ada")).await?);
    let bob = person!(Person::insert(pool, person("bob")).await?);
    // Cy owns nothing until late; Eve never owns anything.
    let cy = person!(Person::insert(pool, person("cy")).await?);
    person!(Person::insert(pool, person("eve")).await?);
    let v1 = vault!(Vault::insert(pool, vault("v1", Some(ada))).await?);
    let v2 = vault!(Vault::insert(pool, vault("v2", Some(ada))).await?);
    let v3 = vault!(Vault::insert(pool, vault("v3", Some(bob))).await?);
    // No owner at all.
    let v4 = vault!(Vault::insert(pool, vault("v4", None)).await?);
    vault!(Vault::modify(pool, v1, |v| v.label = "v1'".into()).await?);
    // Re-pointed: v2 moves from Ada to Bob.
    vault!(Vault::modify(pool, v2, |v| v.owner_id = Some(bob)).await?);
    // Bob deleted: his vaults lose their owner while he is.
    person!(Person::delete(pool, bob).await?);
    vault!(Vault::delete(pool, v1).await?);
    person!(Person::undelete(pool, bob).await?);
    person!(Person::modify(pool, ada, |p| p.name = "ada l.".into()).await?);
    // v4 gets an owner.
    vault!(Vault::modify(pool, v4, |v| v.owner_id = Some(cy)).await?);
    // Dee arrives late, with a vault that is deleted at once.
    let dee = person!(Person::insert(pool, person("dee")).await?);
    let v5 = vault!(Vault::insert(pool, vault("v5", Some(dee))).await?);
    vault!(Vault::delete(pool, v5).await?);
    vault!(Vault::undelete(pool, v1).await?);
    // v3 loses its owner; Cy is deleted for good (v4 points at a deleted person).
    vault!(Vault::modify(pool, v3, |v| v.owner_id = None).await?);
    person!(Person::delete(pool, cy).await?);

    // The model itself, now: Ada owns v1, Bob v2; v3 has no owner, v4's owner Cy is deleted, v5
    // is deleted; Eve and Dee own nothing, Cy is absent.
    let names = |pairs: Vec<Pair<Vault, Person>>| -> Vec<(String, Option<String>)> {
        let mut names: Vec<_> =
            pairs.into_iter().map(|(v, p)| (v.data.label, p.map(|p| p.data.name))).collect();
        names.sort();
        names
    };
    let some = |label: &str, name: &str| (label.to_owned(), Some(name.to_owned()));
    let none = |label: &str| (label.to_owned(), None);
    assert_eq!(names(world.forward(Mode::Current, false, false)), [some("v1'", "ada l."), some("v2", "bob")]);
    assert_eq!(
        names(world.forward(Mode::Current, false, true)),
        [some("v1'", "ada l."), some("v2", "bob"), none("v3"), none("v4")]
    );
    let owners: Vec<(String, Option<Uuid>)> = world
        .reverse(Mode::Current, false, true)
        .into_iter()
        .map(|(p, v)| (p.data.name, v.map(|v| v.entity_id)))
        .collect();
    assert_eq!(owners.len(), 4, "{owners:?}");
    assert!(owners.contains(&("eve".to_owned(), None)) && owners.contains(&("dee".to_owned(), None)));
    assert!(
        owners.contains(&("ada l.".to_owned(), Some(v1))) && owners.contains(&("bob".to_owned(), Some(v2)))
    );

    check(&db, &world, Mode::Current, "now").await?;
    check(&db, &world, Mode::AllVersions, "history").await?;
    let first = changes[0];
    check(&db, &world, Mode::AsOf(first - Duration::days(1)), "before anything").await?;
    for (i, at) in changes.iter().enumerate() {
        check(&db, &world, Mode::AsOf(*at - Duration::microseconds(1)), &format!("just before change {i}"))
            .await?;
        check(&db, &world, Mode::AsOf(*at), &format!("at change {i}")).await?;
    }
    // A snapshot taken now sees what the current mode sees.
    let now = Snapshot::now(pool).await?;
    let snapshot =
        sorted(Vault::query().snapshot(&now).left_join::<Person>(Vault::OWNER_ID).fetch_all(pool).await?);
    assert_eq!(snapshot, world.forward(Mode::Current, false, true));
    Ok(())
}

async fn outer_joins_keep_entities_without_a_counterpart(db: Db) -> TestResult {
    migrate(&db).await?;
    let pool = &db.pool;
    let ada = Person::insert(pool, Person { name: "ada".into() }).await?;
    let lonely = Person::insert(pool, Person { name: "lonely".into() }).await?;
    let owned = Vault::insert(pool, Vault { label: "owned".into(), owner_id: Some(ada.entity_id) }).await?;
    let orphan = Vault::insert(pool, Vault { label: "orphan".into(), owner_id: None }).await?;

    let forward = sorted(Vault::query().left_join::<Person>(Vault::OWNER_ID).fetch_all(pool).await?);
    let expected = sorted(vec![(owned.clone(), Some(ada.clone())), (orphan.clone(), None)]);
    assert_eq!(forward, expected, "the vault without an owner is kept, with None");
    assert_eq!(
        Vault::query().join::<Person>(Vault::OWNER_ID).count(pool).await?,
        1,
        "inner: only the owned one"
    );

    let reverse =
        sorted(Person::query().left_join_referencing::<Vault>(Vault::OWNER_ID).fetch_all(pool).await?);
    let expected = sorted(vec![(ada.clone(), Some(owned.clone())), (lonely.clone(), None)]);
    assert_eq!(reverse, expected, "the person without a vault is kept, with None");
    // The entities without a counterpart, by a filter on the other side's entity id.
    let without = Person::query()
        .left_join_referencing::<Vault>(Vault::OWNER_ID)
        .filter(Vault::ENTITY_ID.is_null())
        .fetch_all(pool)
        .await?;
    assert_eq!(without, [(lonely, None)]);
    let without = Vault::query()
        .left_join::<Person>(Vault::OWNER_ID)
        .filter(Person::ENTITY_ID.is_null())
        .fetch_all(pool)
        .await?;
    assert_eq!(without, [(orphan, None)]);
    Ok(())
}

async fn reverse_join_filters_orders_pages_and_counts_resolved_pairs(db: Db) -> TestResult {
    let pool = &db.pool;
    let customer = |name: &str| Customer { name: name.to_owned(), tier: "silver".to_owned() };
    let invoice = |customer_id: Uuid, total: i64| Invoice { customer_id, total, status: "open".to_owned() };
    let ada = Customer::insert(pool, customer("Ada")).await?;
    let bob = Customer::insert(pool, customer("Bob")).await?;
    for total in [10, 20, 30] {
        Invoice::insert(pool, invoice(ada.entity_id, total)).await?;
    }
    let moved = Invoice::insert(pool, invoice(bob.entity_id, 40)).await?;
    let then = Snapshot::now(pool).await?;
    Customer::modify(pool, ada.entity_id, |c| c.name = "Ada L.".into()).await?;
    Invoice::modify(pool, moved.entity_id, |i| i.customer_id = ada.entity_id).await?;

    let join = || Customer::query().join_referencing::<Invoice>(Invoice::CUSTOMER_ID);
    // Filters apply to the resolved versions of both sides.
    assert_eq!(join().filter(Customer::NAME.eq("Ada L.")).count(pool).await?, 4);
    assert_eq!(join().filter(Customer::NAME.eq("Ada")).count(pool).await?, 0);
    let then_join = || then.query::<Customer>().join_referencing::<Invoice>(Invoice::CUSTOMER_ID);
    assert_eq!(then_join().filter(Customer::NAME.eq("Ada")).count(pool).await?, 3);
    assert!(!then_join().filter(Customer::NAME.eq("Ada L.")).exists(pool).await?);
    assert!(then_join().filter(Invoice::TOTAL.gt(35)).exists(pool).await?);
    let bobs_then: Vec<(String, i64)> = then_join()
        .filter(Customer::NAME.eq("Bob"))
        .fetch_all(pool)
        .await?
        .into_iter()
        .map(|(c, i)| (c.data.name, i.total))
        .collect();
    assert_eq!(bobs_then, [("Bob".to_owned(), 40)], "the invoice pointed at Bob then");

    // Ordered pages: the customer orders, the invoice breaks the ties; pages add up to the whole.
    let all = join().order_by(Customer::NAME, Order::Asc).fetch_all(pool).await?;
    assert_eq!(all.len(), 4);
    let mut paged = Vec::new();
    for page in 0..3 {
        let rows =
            join().order_by(Customer::NAME, Order::Asc).limit(2).offset(page * 2).fetch_all(pool).await?;
        paged.extend(rows);
    }
    assert_eq!(paged, all, "pages of a reverse join are stable");
    assert_eq!(join().limit(3).count(pool).await?, 3);
    let ids: Vec<Uuid> = all.iter().map(|(_, i)| i.entity_id).collect();
    let mut sorted_ids = ids.clone();
    sorted_ids.sort();
    assert_eq!(ids, sorted_ids, "ties broken by the referencing entity");

    // The SQL: both projections, the referencing column compared with the entity id.
    let sql = join().order_by(Customer::NAME, Order::Asc).to_sql();
    assert!(
        sql.contains(r#"INNER JOIN "invoices_current" AS "invoices" ON "invoices"."customer_id" = "customers"."entity_id""#),
        "{sql}"
    );
    assert!(
        sql.ends_with(
            r#"ORDER BY "customers"."name" ASC, "customers"."entity_id" ASC, "invoices"."entity_id" ASC"#
        ),
        "{sql}"
    );
    let sql = Customer::query()
        .as_of(then.instant())
        .left_join_referencing::<Invoice>(Invoice::CUSTOMER_ID)
        .to_sql();
    assert!(sql.contains("LEFT JOIN (SELECT"), "{sql}");
    assert!(sql.contains(r#"AS "invoices" ON "invoices"."customer_id" = "customers"."entity_id" AND "invoices"."deleted_at" IS NULL"#), "{sql}");
    Ok(())
}

async fn a_deleted_counterpart_is_absent_unless_with_deleted(db: Db) -> TestResult {
    let pool = &db.pool;
    let ada = Customer::insert(pool, Customer { name: "Ada".into(), tier: "gold".into() }).await?;
    let invoice =
        Invoice::insert(pool, Invoice { customer_id: ada.entity_id, total: 1, status: "open".into() })
            .await?;
    let before = Snapshot::now(pool).await?;
    let tomb = Customer::delete(pool, ada.entity_id).await?;

    // Forward, outer: the invoice stays, its customer is None (deleted now), the tombstone with_deleted.
    let now = Invoice::query().left_join::<Customer>(Invoice::CUSTOMER_ID).fetch_all(pool).await?;
    assert_eq!(now, [(invoice.clone(), None)]);
    let with =
        Invoice::query().with_deleted().left_join::<Customer>(Invoice::CUSTOMER_ID).fetch_all(pool).await?;
    assert_eq!(with, [(invoice.clone(), Some(tomb.clone()))]);
    let then = before.query::<Invoice>().left_join::<Customer>(Invoice::CUSTOMER_ID).fetch_all(pool).await?;
    assert_eq!(then, [(invoice.clone(), Some(ada.clone()))]);

    // Reverse: a deleted customer is absent as the starting side, inner or outer.
    let join = || Customer::query().left_join_referencing::<Invoice>(Invoice::CUSTOMER_ID);
    assert_eq!(join().count(pool).await?, 0);
    assert_eq!(Customer::query().join_referencing::<Invoice>(Invoice::CUSTOMER_ID).count(pool).await?, 0);
    let with = Customer::query()
        .with_deleted()
        .join_referencing::<Invoice>(Invoice::CUSTOMER_ID)
        .fetch_all(pool)
        .await?;
    assert_eq!(with, [(tomb.clone(), invoice.clone())]);

    // A deleted referencing entity: the customer is back, the invoice deleted.
    let back = Customer::undelete(pool, ada.entity_id).await?;
    let gone = Invoice::delete(pool, invoice.entity_id).await?;
    assert_eq!(join().fetch_all(pool).await?, [(back.clone(), None)]);
    let with = Customer::query()
        .with_deleted()
        .left_join_referencing::<Invoice>(Invoice::CUSTOMER_ID)
        .fetch_all(pool)
        .await?;
    assert_eq!(with, [(back, Some(gone))]);
    Ok(())
}

async fn joins_decode_an_upcasting_entity_on_either_side(db: Db) -> TestResult {
    let mut owner = db.connect_owner().await?;
    sqlx::raw_sql(sqlx::AssertSqlSafe(immu_core::schema::create_table::<NoteV1>()?))
        .execute(&mut owner)
        .await?;
    grant_application_role(&mut owner, APP_ROLE).await?;
    let pool = &db.pool;
    let ada = Customer::insert(pool, Customer { name: "Ada".into(), tier: "gold".into() }).await?;
    let old = NoteV1::insert(pool, NoteV1 { words: "old".into(), customer_id: ada.entity_id }).await?;
    sqlx::raw_sql(
        "ALTER TABLE notes ADD COLUMN body text, ALTER COLUMN words DROP NOT NULL;
         SELECT immu.sync_versioning('notes');",
    )
    .execute(&mut owner)
    .await?;
    let new = Note::insert(pool, Note { body: "new".into(), customer_id: ada.entity_id }).await?;

    // The upcasting entity first: the customer's columns come after the older shape's too.
    let mut pairs = Note::query().join::<Customer>(Note::CUSTOMER_ID).fetch_all(pool).await?;
    pairs.sort_by_key(|(n, _)| n.entity_id);
    let seen: Vec<(&str, &str)> = pairs.iter().map(|(n, c)| (n.body.as_str(), c.name.as_str())).collect();
    assert_eq!(seen, [("old", "Ada"), ("new", "Ada")]);
    assert_eq!(pairs[0].0.entity_id, old.entity_id);
    let outer = Note::query().left_join::<Customer>(Note::CUSTOMER_ID).fetch_all(pool).await?;
    assert!(outer.iter().all(|(_, c)| c.as_ref() == Some(&ada)), "{outer:?}");
    // And second.
    let mut notes =
        Customer::query().left_join_referencing::<Note>(Note::CUSTOMER_ID).fetch_all(pool).await?;
    notes.sort_by_key(|(_, n)| n.as_ref().map(|n| n.entity_id));
    let bodies: Vec<Option<&str>> = notes.iter().map(|(_, n)| n.as_ref().map(|n| n.body.as_str())).collect();
    assert_eq!(bodies, [Some("old"), Some("new")]);
    assert_eq!(notes[1].1.as_ref(), Some(&new));
    Ok(())
}
