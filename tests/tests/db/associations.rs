//! References between entities: foreign keys to identity tables, joins resolved at one instant,
//! and batch loading each referenced entity as of its referrer's instant.

use immu_core::sea_query::{ExprTrait, Order};
use immu_core::{Error, Immutable, Snapshot};
use immu_tests::harness::{Counted, Db, TestResult};
use immu_tests::models::{Customer, Invoice};
use uuid::Uuid;

immu_tests::tests![
    a_reference_to_an_unknown_entity_is_refused_by_the_database,
    projection_tables_refuse_direct_writes,
    join_as_of_an_instant_is_a_consistent_snapshot,
    join_hides_pairs_whose_target_is_deleted,
    join_in_history_mode_pairs_each_version_with_the_target_then,
    find_each_as_of_loads_each_target_at_its_referrers_instant_in_one_query,
];

fn customer(name: &str) -> Customer {
    Customer { name: name.to_owned(), tier: "silver".to_owned() }
}

fn invoice(customer_id: Uuid, total: i64) -> Invoice {
    Invoice { customer_id, total, status: "open".to_owned() }
}

async fn a_reference_to_an_unknown_entity_is_refused_by_the_database(db: Db) -> TestResult {
    let ghost = Uuid::now_v7();
    let err = Invoice::insert(&db.pool, invoice(ghost, 10)).await.unwrap_err();
    match &err {
        Error::UnknownReference { table, constraint, .. } => {
            assert_eq!((table.as_str(), constraint.as_str()), ("invoices", "invoices_customer_id_fkey"));
        }
        other => panic!("expected UnknownReference, got {other:?}"),
    }
    assert!(err.to_string().contains(&ghost.to_string()), "{err}");
    // A deleted customer is still a known entity: its invoices stay valid.
    let ada = Customer::insert(&db.pool, customer("Ada")).await?;
    Customer::delete(&db.pool, ada.entity_id).await?;
    Invoice::insert(&db.pool, invoice(ada.entity_id, 10)).await?;
    let count: i64 = sqlx::query_scalar("SELECT count(*) FROM invoices").fetch_one(&db.pool).await?;
    assert_eq!(count, 1);
    Ok(())
}

async fn projection_tables_refuse_direct_writes(db: Db) -> TestResult {
    let ada = Customer::insert(&db.pool, customer("Ada")).await?;
    Customer::modify(&db.pool, ada.entity_id, |c| c.tier = "gold".into()).await?;
    let rows: Vec<(Uuid, i64, String)> =
        sqlx::query_as("SELECT entity_id, version, tier FROM customers_current").fetch_all(&db.pool).await?;
    assert_eq!(rows, [(ada.entity_id, 2, "gold".to_owned())], "one row per entity: its latest version");
    for sql in [
        "UPDATE customers_current SET tier = 'platinum'",
        "DELETE FROM customers_current",
        "TRUNCATE customers_current CASCADE",
        "INSERT INTO customers_current (entity_id) SELECT entity_id FROM customers",
        // Even a statement that matches no row.
        "UPDATE customers_current SET tier = 'x' WHERE false",
    ] {
        // The owner (who has every privilege on it) is refused by the trigger; the application
        // role has no write privilege on it at all.
        let err = Error::from(sqlx::raw_sql(sql).execute(&db.owner).await.unwrap_err());
        assert!(
            matches!(&err, Error::AppendOnly { table, .. } if table == "customers_current"),
            "{sql}: {err:?}"
        );
        let err = Error::from(sqlx::raw_sql(sql).execute(&db.pool).await.unwrap_err());
        assert!(matches!(&err, Error::PermissionDenied { .. }), "{sql}: {err:?}");
    }
    let after: Vec<(Uuid, i64, String)> =
        sqlx::query_as("SELECT entity_id, version, tier FROM customers_current").fetch_all(&db.pool).await?;
    assert_eq!(after, rows, "nothing changed");
    Ok(())
}

async fn join_as_of_an_instant_is_a_consistent_snapshot(db: Db) -> TestResult {
    let ada = Customer::insert(&db.pool, customer("Ada")).await?;
    let bob = Customer::insert(&db.pool, customer("Bob")).await?;
    let i1 = Invoice::insert(&db.pool, invoice(ada.entity_id, 100)).await?;
    let i2 = Invoice::insert(&db.pool, invoice(bob.entity_id, 200)).await?;
    let then = Snapshot::now(&db.pool).await?;
    // After the snapshot: Ada is renamed, invoice 1 is paid, a new invoice appears.
    Customer::modify(&db.pool, ada.entity_id, |c| c.name = "Ada L.".into()).await?;
    Invoice::modify(&db.pool, i1.entity_id, |i| i.status = "paid".into()).await?;
    Invoice::insert(&db.pool, invoice(bob.entity_id, 300)).await?;

    let pairs = then
        .query::<Invoice>()
        .join::<Customer>(Invoice::CUSTOMER_ID)
        .order_by(Invoice::TOTAL, Order::Asc)
        .fetch_all(&db.pool)
        .await?;
    let seen: Vec<(i64, &str, &str)> =
        pairs.iter().map(|(i, c)| (i.total, i.status.as_str(), c.name.as_str())).collect();
    assert_eq!(seen, [(100, "open", "Ada"), (200, "open", "Bob")]);
    assert_eq!(pairs[0].0.entity_id, i1.entity_id);
    assert_eq!(pairs[1].0.entity_id, i2.entity_id);

    // Filters over both tables apply to the versions of the snapshot.
    let ada_then = then
        .query::<Invoice>()
        .join::<Customer>(Invoice::CUSTOMER_ID)
        .filter(Customer::NAME.eq("Ada"))
        .count(&db.pool)
        .await?;
    assert_eq!(ada_then, 1);
    let renamed_then = then
        .query::<Invoice>()
        .join::<Customer>(Invoice::CUSTOMER_ID)
        .filter(Customer::NAME.eq("Ada L."))
        .exists(&db.pool)
        .await?;
    assert!(!renamed_then, "the rename came after the snapshot");

    // Now: the current versions of both.
    let now = Invoice::query()
        .join::<Customer>(Invoice::CUSTOMER_ID)
        .order_by(Invoice::TOTAL, Order::Asc)
        .fetch_all(&db.pool)
        .await?;
    let seen: Vec<(i64, &str, &str)> =
        now.iter().map(|(i, c)| (i.total, i.status.as_str(), c.name.as_str())).collect();
    assert_eq!(seen, [(100, "paid", "Ada L."), (200, "open", "Bob"), (300, "open", "Bob")]);
    // Reading the same past instant again, after the later writes: the same answer.
    let again = then.query::<Invoice>().join::<Customer>(Invoice::CUSTOMER_ID).count(&db.pool).await?;
    assert_eq!(again, 2);
    Ok(())
}

async fn join_hides_pairs_whose_target_is_deleted(db: Db) -> TestResult {
    let ada = Customer::insert(&db.pool, customer("Ada")).await?;
    Invoice::insert(&db.pool, invoice(ada.entity_id, 100)).await?;
    let before = Snapshot::now(&db.pool).await?;
    Customer::delete(&db.pool, ada.entity_id).await?;
    let join = || Invoice::query().join::<Customer>(Invoice::CUSTOMER_ID);
    assert_eq!(join().count(&db.pool).await?, 0, "the customer is deleted now");
    assert_eq!(before.query::<Invoice>().join::<Customer>(Invoice::CUSTOMER_ID).count(&db.pool).await?, 1);
    let with_deleted =
        Invoice::query().with_deleted().join::<Customer>(Invoice::CUSTOMER_ID).fetch_all(&db.pool).await?;
    assert_eq!(with_deleted.len(), 1);
    assert!(with_deleted[0].1.is_deleted(), "the target is its tombstone, marked deleted");
    Ok(())
}

async fn join_in_history_mode_pairs_each_version_with_the_target_then(db: Db) -> TestResult {
    let ada = Customer::insert(&db.pool, customer("Ada")).await?;
    let i = Invoice::insert(&db.pool, invoice(ada.entity_id, 100)).await?;
    Customer::modify(&db.pool, ada.entity_id, |c| c.name = "Ada L.".into()).await?;
    Invoice::modify(&db.pool, i.entity_id, |x| x.total = 150).await?;
    let history =
        Invoice::query().all_versions().join::<Customer>(Invoice::CUSTOMER_ID).fetch_all(&db.pool).await?;
    let seen: Vec<(i64, i64, &str)> =
        history.iter().map(|(inv, c)| (inv.version, inv.total, c.name.as_str())).collect();
    assert_eq!(seen, [(1, 100, "Ada"), (2, 150, "Ada L.")]);
    Ok(())
}

async fn find_each_as_of_loads_each_target_at_its_referrers_instant_in_one_query(db: Db) -> TestResult {
    let ada = Customer::insert(&db.pool, customer("Ada")).await?;
    let first = Invoice::insert(&db.pool, invoice(ada.entity_id, 1)).await?;
    Customer::modify(&db.pool, ada.entity_id, |c| c.tier = "gold".into()).await?;
    let second = Invoice::insert(&db.pool, invoice(ada.entity_id, 2)).await?;
    Customer::delete(&db.pool, ada.entity_id).await?;
    let third = Invoice::insert(&db.pool, invoice(ada.entity_id, 3)).await?;
    let bob = Customer::insert(&db.pool, customer("Bob")).await?;

    let invoices = [&first, &second, &third];
    let mut refs: Vec<(Uuid, chrono::DateTime<chrono::Utc>)> =
        invoices.iter().map(|i| (i.customer_id, i.valid_from)).collect();
    refs.push((bob.entity_id, first.valid_from)); // Bob did not exist yet
    refs.push((Uuid::now_v7(), third.valid_from)); // never existed
    let mut counted = Counted::new(&db).await?;
    let found = Customer::find_each_as_of(counted.exec(), refs).await?;
    assert_eq!(counted.queries(), 1, "one query for the whole batch");
    assert_eq!(found.len(), 5, "aligned with the input");
    let tiers: Vec<Option<(&str, bool)>> =
        found.iter().map(|c| c.as_ref().map(|c| (c.tier.as_str(), c.is_deleted()))).collect();
    // Deleted at the third invoice's instant: None, as find_as_of(..).optional() answers.
    assert_eq!(tiers, [Some(("silver", false)), Some(("gold", false)), None, None, None]);

    // The current form: the customers of these invoices now, in one query.
    let ids: Vec<Uuid> = invoices.iter().map(|i| i.customer_id).chain([bob.entity_id]).collect();
    let now = Customer::query().ids(ids).fetch_all(counted.exec()).await?;
    assert_eq!(counted.queries(), 2);
    assert_eq!(now.into_iter().map(|c| c.data.name).collect::<Vec<_>>(), ["Bob"], "Ada is deleted now");
    Ok(())
}
