//! Single-entity reads: current, as of an instant (at the boundaries), by version, history.

use chrono::{DateTime, Duration, Utc};
use immu_core::{Error, Immutable, OptionalExt};
use immu_tests::harness::{Db, TestResult};
use immu_tests::models::{Account, Line, Order, Status};
use uuid::Uuid;

immu_tests::tests![
    find_returns_the_current_version,
    find_tells_never_existed_from_deleted,
    optional_maps_not_found_and_deleted_to_none,
    as_of_resolves_the_version_current_at_each_instant,
    as_of_a_deleted_interval_is_deleted_not_the_tombstone_data,
    find_version_returns_each_version_including_tombstones,
    history_lists_every_version_in_order,
    history_of_unknown_entity_is_not_found,
    find_each_as_of_answers_what_find_as_of_optional_answers,
    lists_answer_with_what_they_find_and_single_reads_with_errors,
    reads_inside_a_transaction_see_its_writes,
    all_column_kinds_round_trip,
    versioned_serializes_flat,
    as_of_the_extremes_of_time_is_not_an_error,
];

const MICROSECOND: Duration = Duration::microseconds(1);

async fn find_returns_the_current_version(db: Db) -> TestResult {
    let v1 = Account::insert(&db.pool, Account::new("ada", 1)).await?;
    assert_eq!(Account::find(&db.pool, v1.entity_id).await?, v1);
    let v2 = Account::modify(&db.pool, v1.entity_id, |a| a.balance = 2).await?;
    let current = Account::find(&db.pool, v1.entity_id).await?;
    assert_eq!(current, v2);
    // Deref to the entity's own fields.
    assert_eq!(current.balance, 2);
    Ok(())
}

async fn find_tells_never_existed_from_deleted(db: Db) -> TestResult {
    let ghost = Uuid::now_v7();
    let err = Account::find(&db.pool, ghost).await.unwrap_err();
    assert!(matches!(err, Error::NotFound { entity_id, .. } if entity_id == ghost), "{err:?}");
    let v1 = Account::insert(&db.pool, Account::new("ada", 1)).await?;
    let tomb = Account::delete(&db.pool, v1.entity_id).await?;
    let err = Account::find(&db.pool, v1.entity_id).await.unwrap_err();
    assert!(
        matches!(err, Error::Deleted { version: 2, deleted_at, .. } if Some(deleted_at) == tomb.deleted_at),
        "{err:?}"
    );
    assert!(err.to_string().contains("deleted"), "{err}");
    Ok(())
}

async fn optional_maps_not_found_and_deleted_to_none(db: Db) -> TestResult {
    assert_eq!(Account::find(&db.pool, Uuid::now_v7()).await.optional()?, None);
    let v1 = Account::insert(&db.pool, Account::new("ada", 1)).await?;
    assert_eq!(Account::find(&db.pool, v1.entity_id).await.optional()?, Some(v1.clone()));
    Account::delete(&db.pool, v1.entity_id).await?;
    assert_eq!(Account::find(&db.pool, v1.entity_id).await.optional()?, None);
    Ok(())
}

async fn as_of_resolves_the_version_current_at_each_instant(db: Db) -> TestResult {
    let v1 = Account::insert(&db.pool, Account::new("ada", 1)).await?;
    tokio::time::sleep(std::time::Duration::from_millis(2)).await;
    let v2 = Account::modify(&db.pool, v1.entity_id, |a| a.balance = 2).await?;
    tokio::time::sleep(std::time::Duration::from_millis(2)).await;
    let v3 = Account::modify(&db.pool, v1.entity_id, |a| a.balance = 3).await?;
    let id = v1.entity_id;
    let at = |t: DateTime<Utc>| Account::find_as_of(&db.pool, id, t);

    // Before creation: nothing; one microsecond before version 1: still nothing.
    assert!(at(v1.valid_from - Duration::days(365)).await.unwrap_err().is_not_found());
    assert!(at(v1.valid_from - MICROSECOND).await.unwrap_err().is_not_found());
    // Exactly at valid_from a version is current; one microsecond before, its predecessor.
    assert_eq!(at(v1.valid_from).await?, v1);
    assert_eq!(at(v2.valid_from - MICROSECOND).await?, v1);
    assert_eq!(at(v2.valid_from).await?, v2);
    assert_eq!(at(v3.valid_from - MICROSECOND).await?, v2);
    assert_eq!(at(v3.valid_from).await?, v3);
    // Far future: the current version.
    assert_eq!(at(v3.valid_from + Duration::days(365 * 100)).await?, v3);
    Ok(())
}

async fn as_of_a_deleted_interval_is_deleted_not_the_tombstone_data(db: Db) -> TestResult {
    let v1 = Account::insert(&db.pool, Account::new("ada", 1)).await?;
    tokio::time::sleep(std::time::Duration::from_millis(2)).await;
    let tomb = Account::delete(&db.pool, v1.entity_id).await?;
    tokio::time::sleep(std::time::Duration::from_millis(2)).await;
    let back = Account::undelete(&db.pool, v1.entity_id).await?;
    let id = v1.entity_id;
    let at = |t: DateTime<Utc>| Account::find_as_of(&db.pool, id, t);

    assert_eq!(at(tomb.valid_from - MICROSECOND).await?, v1);
    let err = at(tomb.valid_from).await.unwrap_err();
    assert!(matches!(err, Error::Deleted { version: 2, .. }), "{err:?}");
    let err = at(back.valid_from - MICROSECOND).await.unwrap_err();
    assert!(err.is_deleted(), "{err:?}");
    assert_eq!(at(back.valid_from).await?, back);
    assert_eq!(at(back.valid_from + Duration::days(1)).await?, back);
    Ok(())
}

async fn find_version_returns_each_version_including_tombstones(db: Db) -> TestResult {
    let v1 = Account::insert(&db.pool, Account::new("ada", 1)).await?;
    let v2 = Account::modify(&db.pool, v1.entity_id, |a| a.balance = 2).await?;
    let v3 = Account::delete(&db.pool, v1.entity_id).await?;
    assert_eq!(Account::find_version(&db.pool, v1.entity_id, 1).await?, v1);
    assert_eq!(Account::find_version(&db.pool, v1.entity_id, 2).await?, v2);
    assert_eq!(Account::find_version(&db.pool, v1.entity_id, 3).await?, v3);
    for missing in [0, 4, -1, i64::MAX] {
        let err = Account::find_version(&db.pool, v1.entity_id, missing).await.unwrap_err();
        assert!(matches!(err, Error::NotFound { version: Some(v), .. } if v == missing), "{err:?}");
    }
    Ok(())
}

async fn history_lists_every_version_in_order(db: Db) -> TestResult {
    let v1 = Account::insert(&db.pool, Account::new("ada", 1)).await?;
    let other = Account::insert(&db.pool, Account::new("bob", 1)).await?;
    let v2 = Account::modify(&db.pool, v1.entity_id, |a| a.balance = 2).await?;
    Account::modify(&db.pool, other.entity_id, |a| a.balance = 2).await?;
    let v3 = Account::delete(&db.pool, v1.entity_id).await?;
    let v4 = Account::undelete(&db.pool, v1.entity_id).await?;
    let history = Account::history(&db.pool, v1.entity_id).await?;
    assert_eq!(history, vec![v1, v2.into(), v3, v4]);
    assert!(history.windows(2).all(|w| w[0].valid_from <= w[1].valid_from));
    Ok(())
}

async fn history_of_unknown_entity_is_not_found(db: Db) -> TestResult {
    let err = Account::history(&db.pool, Uuid::now_v7()).await.unwrap_err();
    assert!(err.is_not_found(), "{err:?}");
    Ok(())
}

async fn find_each_as_of_answers_what_find_as_of_optional_answers(db: Db) -> TestResult {
    let v1 = Account::insert(&db.pool, Account::new("ada", 1)).await?;
    let v2 = Account::modify(&db.pool, v1.entity_id, |a| a.balance = 2).await?;
    let tomb = Account::delete(&db.pool, v1.entity_id).await?;
    let back = Account::undelete(&db.pool, v1.entity_id).await?;
    let other = Account::insert(&db.pool, Account::new("bob", 5)).await?;
    let instants: Vec<DateTime<Utc>> = [&v1, &v2, &tomb, &back, &other]
        .iter()
        .flat_map(|v| [v.valid_from - MICROSECOND, v.valid_from, v.valid_from + MICROSECOND])
        .chain([DateTime::<Utc>::MIN_UTC, DateTime::<Utc>::MAX_UTC])
        .collect();
    let mut refs = Vec::new();
    for id in [v1.entity_id, other.entity_id, Uuid::now_v7()] {
        refs.extend(instants.iter().map(|at| (id, *at)));
    }
    let batch = Account::find_each_as_of(&db.pool, refs.clone()).await?;
    assert_eq!(batch.len(), refs.len());
    for ((id, at), found) in refs.into_iter().zip(batch) {
        let single = Account::find_as_of(&db.pool, id, at).await.optional()?;
        assert_eq!(found, single, "{id} at {at}");
    }
    // The deleted interval: None in the batch, Deleted for the single read.
    let found = Account::find_each_as_of(&db.pool, [(v1.entity_id, tomb.valid_from)]).await?;
    assert_eq!(found, [None]);
    assert!(Account::find_as_of(&db.pool, v1.entity_id, tomb.valid_from).await.unwrap_err().is_deleted());
    Ok(())
}

async fn lists_answer_with_what_they_find_and_single_reads_with_errors(db: Db) -> TestResult {
    let live = Account::insert(&db.pool, Account::new("live", 1)).await?;
    let gone = Account::insert(&db.pool, Account::new("gone", 1)).await?;
    let tomb = Account::delete(&db.pool, gone.entity_id).await?;
    let ghost = Uuid::now_v7();
    let ids = [live.entity_id, gone.entity_id, ghost];

    // A list: what it finds. The unknown entity is absent, the deleted one too unless asked for.
    assert_eq!(Account::query().ids(ids).fetch_all(&db.pool).await?, vec![live.clone()]);
    let mut with_deleted = Account::query().with_deleted().ids(ids).fetch_all(&db.pool).await?;
    with_deleted.sort_by_key(|v| v.entity_id);
    assert_eq!(with_deleted, [live.clone(), tomb.clone()]);
    assert_eq!(Account::query().ids([ghost]).count(&db.pool).await?, 0);
    assert!(!Account::query().ids([ghost, gone.entity_id]).exists(&db.pool).await?);
    assert_eq!(Account::query().ids([ghost]).fetch_optional(&db.pool).await?, None);
    assert_eq!(Account::query().as_of(live.valid_from - MICROSECOND).ids(ids).count(&db.pool).await?, 0);
    // Stored versions (history mode) include tombstones.
    assert_eq!(Account::query().all_versions().ids(ids).count(&db.pool).await?, 3);

    // One entity: an error for what is not there.
    assert!(Account::find(&db.pool, ghost).await.unwrap_err().is_not_found());
    assert!(Account::find(&db.pool, gone.entity_id).await.unwrap_err().is_deleted());
    assert!(Account::history(&db.pool, ghost).await.unwrap_err().is_not_found());
    assert!(Account::find_version(&db.pool, ghost, 1).await.unwrap_err().is_not_found());
    // Stored versions of one entity: the tombstone is a version like the others.
    assert_eq!(Account::history(&db.pool, gone.entity_id).await?, [gone.clone(), tomb.clone()]);
    assert_eq!(Account::find_version(&db.pool, gone.entity_id, 2).await?, tomb);
    // A yes-or-no question: None is no.
    assert_eq!(Account::find_write(&db.pool, ghost, Uuid::now_v7()).await?, None);
    assert_eq!(Account::find_write(&db.pool, gone.entity_id, tomb.id).await?, Some(tomb));
    Ok(())
}

async fn reads_inside_a_transaction_see_its_writes(db: Db) -> TestResult {
    let v1 = Account::insert(&db.pool, Account::new("ada", 1)).await?;
    let mut tx = db.pool.begin().await?;
    let v2 = Account::modify(&mut tx, v1.entity_id, |a| a.balance = 2).await?;
    assert_eq!(Account::find(&mut *tx, v1.entity_id).await?, v2);
    assert_eq!(Account::history(&mut *tx, v1.entity_id).await?.len(), 2);
    assert_eq!(Account::find(&db.pool, v1.entity_id).await?, v1);
    tx.rollback().await?;
    assert_eq!(Account::history(&db.pool, v1.entity_id).await?, vec![v1]);
    Ok(())
}

fn sample_order() -> Order {
    Order {
        customer: "O'Brien \"the\" café — 東京".to_owned(),
        r#select: -7,
        note: None,
        lines: vec![Line { sku: "a'b\"c".to_owned(), qty: 2 }, Line { sku: "ü".to_owned(), qty: 0 }],
        status: Status::Open,
        payload: vec![0, 1, 2, 255],
        due: Some("2024-02-29T12:34:56.789012Z".parse().expect("timestamp")),
    }
}

async fn all_column_kinds_round_trip(db: Db) -> TestResult {
    let order = sample_order();
    let v1 = Order::insert(&db.pool, order.clone()).await?;
    assert_eq!(v1.data, order);
    assert_eq!(Order::find(&db.pool, v1.entity_id).await?, v1);
    let v2 = Order::modify(&db.pool, v1.entity_id, |o| {
        o.note = Some("rush".into());
        o.status = Status::Shipped;
        o.lines.push(Line { sku: "x".into(), qty: 9 });
        o.due = None;
    })
    .await?;
    let read = Order::find(&db.pool, v1.entity_id).await?;
    assert_eq!(read, v2);
    assert_eq!(read.status, Status::Shipped);
    assert_eq!(read.lines.len(), 3);
    // The JSON column holds JSON, the enum column the PostgreSQL enum.
    let (lines, status): (serde_json::Value, String) =
        sqlx::query_as(r#"SELECT "lines", "status"::text FROM "order" WHERE entity_id = $1 AND version = 2"#)
            .bind(v1.entity_id)
            .fetch_one(&db.pool)
            .await?;
    assert_eq!(lines[2]["sku"], "x");
    assert_eq!(status, "shipped");
    let tomb = Order::delete(&db.pool, v1.entity_id).await?;
    assert_eq!(tomb.data, v2.data);
    Ok(())
}

async fn versioned_serializes_flat(db: Db) -> TestResult {
    let v1 = Account::insert(&db.pool, Account::new("ada", 1)).await?;
    let json = serde_json::to_value(&v1)?;
    assert_eq!(json["version"], 1);
    assert_eq!(json["owner"], "ada");
    assert_eq!(json["entity_id"], v1.entity_id.to_string());
    assert!(json["deleted_at"].is_null());
    let back: immu_core::Versioned<Account> = serde_json::from_value(json)?;
    assert_eq!(back, v1);
    Ok(())
}

async fn as_of_the_extremes_of_time_is_not_an_error(db: Db) -> TestResult {
    let v1 = Account::insert(&db.pool, Account::new("ada", 1)).await?;
    // Before PostgreSQL's earliest timestamp: nothing existed yet.
    let err = Account::find_as_of(&db.pool, v1.entity_id, DateTime::<Utc>::MIN_UTC).await.unwrap_err();
    assert!(err.is_not_found(), "{err:?}");
    assert_eq!(Account::query().as_of(DateTime::<Utc>::MIN_UTC).count(&db.pool).await?, 0);
    // chrono's latest instant is within PostgreSQL's range: the current version.
    assert_eq!(Account::find_as_of(&db.pool, v1.entity_id, DateTime::<Utc>::MAX_UTC).await?, v1);
    assert_eq!(Account::query().as_of(DateTime::<Utc>::MAX_UTC).count(&db.pool).await?, 1);
    let found = Account::find_each_as_of(
        &db.pool,
        [(v1.entity_id, DateTime::<Utc>::MIN_UTC), (v1.entity_id, DateTime::<Utc>::MAX_UTC)],
    )
    .await?;
    assert_eq!(found, vec![None, Some(v1.clone())]);
    let all = Account::query()
        .changed_between(DateTime::<Utc>::MIN_UTC, DateTime::<Utc>::MAX_UTC)
        .count(&db.pool)
        .await?;
    assert_eq!(all, 1);
    Ok(())
}
