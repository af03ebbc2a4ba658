//! The query builder: every resolution mode x filters, order, limit/offset, count, exists,
//! checked against an independent model computed in Rust from the raw table.

use std::collections::HashMap;

use chrono::{DateTime, Duration, Utc};
use futures_util::TryStreamExt;
use immu_core::sea_query::{ExprTrait, Order};
use immu_core::{Error, Immutable, Snapshot, Versioned};
use immu_tests::harness::{Counted, Db, TestResult};
use immu_tests::models::Account;
use uuid::Uuid;

immu_tests::tests![
    filters_apply_to_the_resolved_version_not_to_old_ones,
    every_mode_matches_the_model,
    tombstones_at_the_list_boundaries,
    all_versions_between_two_instants_lists_the_changes,
    order_limit_and_offset_page_stably,
    order_by_name_refuses_unknown_columns,
    ids_load_many_entities_in_one_query,
    stream_yields_every_version_in_order,
];

/// A deterministic pseudo-random sequence (no dependency, same data every run).
struct Lcg(u64);

impl Lcg {
    fn next(&mut self, n: u64) -> u64 {
        self.0 = self.0.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1_442_695_040_888_963_407);
        (self.0 >> 33) % n
    }
}

/// One stored row, read with raw SQL: what the model resolves from.
#[derive(Debug, Clone, PartialEq, sqlx::FromRow)]
struct Row {
    entity_id: Uuid,
    version: i64,
    valid_from: DateTime<Utc>,
    deleted: bool,
    balance: i64,
}

async fn raw_rows(db: &Db) -> sqlx::Result<Vec<Row>> {
    sqlx::query_as(
        "SELECT entity_id, version, valid_from, deleted_at IS NOT NULL AS deleted, balance FROM accounts",
    )
    .fetch_all(&db.pool)
    .await
}

/// The model: which rows a mode selects, computed without SQL.
fn model(rows: &[Row], at: Option<Option<DateTime<Utc>>>, deleted: bool) -> Vec<Row> {
    let Some(at) = at else {
        return rows.to_vec(); // all versions
    };
    let mut best: HashMap<Uuid, &Row> = HashMap::new();
    for row in rows.iter().filter(|r| at.is_none_or(|t| r.valid_from <= t)) {
        let slot = best.entry(row.entity_id).or_insert(row);
        if row.version > slot.version {
            *slot = row;
        }
    }
    best.into_values().filter(|r| deleted || !r.deleted).cloned().collect()
}

fn key(v: &Versioned<Account>) -> Row {
    Row {
        entity_id: v.entity_id,
        version: v.version,
        valid_from: v.valid_from,
        deleted: v.is_deleted(),
        balance: v.balance,
    }
}

fn sorted(mut rows: Vec<Row>) -> Vec<Row> {
    rows.sort_by_key(|r| (r.entity_id, r.version));
    rows
}

/// Builds a history: 24 accounts, 200 random updates, deletes and undeletes, and the instants
/// between batches of writes.
async fn scripted_history(db: &Db) -> Result<Vec<DateTime<Utc>>, Box<dyn std::error::Error + Send + Sync>> {
    let mut rng = Lcg(42);
    let mut ids = Vec::new();
    for i in 0..24 {
        ids.push(
            Account::insert(&db.pool, Account::new(&format!("owner {i}"), (rng.next(400) as i64) - 50))
                .await?
                .entity_id,
        );
    }
    let mut instants = Vec::new();
    for step in 0..200 {
        if step % 25 == 0 {
            instants.push(Snapshot::now(&db.pool).await?.instant());
        }
        let id = ids[rng.next(ids.len() as u64) as usize];
        let outcome = match rng.next(10) {
            0 => Account::delete(&db.pool, id).await.map(|_| ()),
            1 => Account::undelete(&db.pool, id).await.map(|_| ()),
            _ => {
                let balance = (rng.next(400) as i64) - 50;
                Account::modify(&db.pool, id, |a| a.balance = balance).await.map(|_| ())
            }
        };
        match outcome {
            Ok(()) | Err(Error::Deleted { .. } | Error::NotDeleted { .. }) => {}
            Err(err) => return Err(err.into()),
        }
    }
    instants.push(Snapshot::now(&db.pool).await?.instant());
    Ok(instants)
}

async fn filters_apply_to_the_resolved_version_not_to_old_ones(db: Db) -> TestResult {
    // The classic mistake of history libraries: filtering before resolving.
    let a = Account::insert(&db.pool, Account::new("a", 200)).await?;
    let t1 = Snapshot::now(&db.pool).await?;
    Account::modify(&db.pool, a.entity_id, |x| x.balance = 50).await?;
    let gone = Account::insert(&db.pool, Account::new("gone", 500)).await?;
    Account::delete(&db.pool, gone.entity_id).await?;
    let rich = || Account::BALANCE.gt(100);

    let now: Vec<_> = Account::query().filter(rich()).fetch_all(&db.pool).await?;
    assert!(now.is_empty(), "a's old version (200) must not match now: {now:?}");
    assert_eq!(Account::query().filter(rich()).count(&db.pool).await?, 0);
    assert!(!Account::query().filter(rich()).exists(&db.pool).await?);

    let then = Account::query().as_of(t1.instant()).filter(rich()).fetch_all(&db.pool).await?;
    assert_eq!(then.iter().map(|v| (v.entity_id, v.version)).collect::<Vec<_>>(), [(a.entity_id, 1)]);
    assert_eq!(t1.query::<Account>().filter(rich()).count(&db.pool).await?, 1);

    // With deleted: the tombstone (500) matches, as the resolved version, marked deleted.
    let with_deleted = Account::query().with_deleted().filter(rich()).fetch_all(&db.pool).await?;
    assert_eq!(with_deleted.len(), 1);
    assert!(with_deleted[0].is_deleted() && with_deleted[0].entity_id == gone.entity_id);

    // History: every version that ever matched.
    let history = Account::query().all_versions().filter(rich()).fetch_all(&db.pool).await?;
    assert_eq!(
        history.iter().map(|v| (v.entity_id, v.version)).collect::<Vec<_>>(),
        [(a.entity_id, 1), (gone.entity_id, 1), (gone.entity_id, 2)]
    );
    // A filter on a reserved column, in the current mode: the resolved version's number.
    let at_two = Account::query().filter(Account::VERSION.eq(2)).fetch_all(&db.pool).await?;
    assert_eq!(at_two.iter().map(|v| v.entity_id).collect::<Vec<_>>(), [a.entity_id]);
    Ok(())
}

async fn every_mode_matches_the_model(db: Db) -> TestResult {
    let instants = scripted_history(&db).await?;
    let rows = raw_rows(&db).await?;
    let first = rows.iter().map(|r| r.valid_from).min().expect("rows");
    let mut modes: Vec<(String, Option<Option<DateTime<Utc>>>)> =
        vec![("current".into(), Some(None)), ("all versions".into(), None)];
    for t in instants.iter().copied().chain([
        first - Duration::seconds(1),
        first,
        Utc::now() + Duration::days(3650),
    ]) {
        modes.push((format!("as of {t}"), Some(Some(t))));
    }
    let mut checked = 0;
    // Each mode twice: through the projection, and from the history alone (the canonical shapes).
    let modes: Vec<(String, _, bool)> = modes
        .into_iter()
        .flat_map(|(name, at)| [(name.clone(), at, false), (format!("{name}, from history"), at, true)])
        .collect();
    for (name, at, from_history) in &modes {
        for deleted in [false, true] {
            for threshold in [-1000, 0, 150, 10_000] {
                let mut query = match at {
                    Some(None) => Account::query(),
                    Some(Some(t)) => Account::query().as_of(*t),
                    None => Account::query().all_versions(),
                };
                if deleted {
                    query = query.with_deleted();
                }
                if *from_history {
                    query = query.from_history();
                }
                let query = query.filter(Account::BALANCE.gt(threshold));
                // all_versions always includes tombstones; the model's `deleted` flag is moot there.
                let expected: Vec<Row> = sorted(
                    model(&rows, *at, deleted).into_iter().filter(|r| r.balance > threshold).collect(),
                );
                let got = sorted(query.clone().fetch_all(&db.pool).await?.iter().map(key).collect());
                assert_eq!(got, expected, "{name}, deleted {deleted}, balance > {threshold}");
                assert_eq!(query.clone().count(&db.pool).await?, expected.len() as i64, "count: {name}");
                assert_eq!(query.clone().exists(&db.pool).await?, !expected.is_empty(), "exists: {name}");
                // Ordered and paged: the same rows in the model's order.
                let mut ordered = expected.clone();
                ordered.sort_by_key(|r| (std::cmp::Reverse(r.balance), r.entity_id, r.version));
                let page: Vec<Row> = ordered.iter().skip(2).take(5).cloned().collect();
                let got_page: Vec<Row> = query
                    .clone()
                    .order_by(Account::BALANCE, Order::Desc)
                    .offset(2)
                    .limit(5)
                    .fetch_all(&db.pool)
                    .await?
                    .iter()
                    .map(key)
                    .collect();
                assert_eq!(got_page, page, "page: {name}, deleted {deleted}, > {threshold}");
                let counted = query
                    .clone()
                    .order_by(Account::BALANCE, Order::Desc)
                    .offset(2)
                    .limit(5)
                    .count(&db.pool)
                    .await?;
                assert_eq!(counted, page.len() as i64, "count of a page: {name}");
                checked += 1;
            }
        }
    }
    assert_eq!(checked, modes.len() * 8);
    Ok(())
}

async fn tombstones_at_the_list_boundaries(db: Db) -> TestResult {
    let v1 = Account::insert(&db.pool, Account::new("a", 10)).await?;
    tokio::time::sleep(std::time::Duration::from_millis(2)).await;
    let tomb = Account::delete(&db.pool, v1.entity_id).await?;
    tokio::time::sleep(std::time::Duration::from_millis(2)).await;
    let back = Account::undelete(&db.pool, v1.entity_id).await?;
    let micro = Duration::microseconds(1);
    let versions_at = |t: DateTime<Utc>, deleted: bool| {
        let query =
            if deleted { Account::query().as_of(t).with_deleted() } else { Account::query().as_of(t) };
        let pool = db.pool.clone();
        async move { Ok::<_, Error>(query.fetch_all(&pool).await?.iter().map(|v| v.version).collect::<Vec<_>>()) }
    };
    assert_eq!(versions_at(v1.valid_from - micro, true).await?, Vec::<i64>::new(), "before creation");
    assert_eq!(versions_at(v1.valid_from, false).await?, [1], "exactly at valid_from");
    assert_eq!(versions_at(tomb.valid_from - micro, false).await?, [1], "just before the delete");
    assert_eq!(versions_at(tomb.valid_from, false).await?, Vec::<i64>::new(), "exactly at the delete");
    assert_eq!(versions_at(tomb.valid_from, true).await?, [2], "the tombstone, with deleted");
    assert_eq!(versions_at(back.valid_from - micro, false).await?, Vec::<i64>::new(), "still deleted");
    assert_eq!(versions_at(back.valid_from, false).await?, [3], "undeleted");
    assert_eq!(versions_at(back.valid_from + Duration::days(36500), false).await?, [3], "far future");
    Ok(())
}

async fn all_versions_between_two_instants_lists_the_changes(db: Db) -> TestResult {
    let a = Account::insert(&db.pool, Account::new("a", 1)).await?;
    let from = Snapshot::now(&db.pool).await?.instant();
    let a2 = Account::modify(&db.pool, a.entity_id, |x| x.balance = 2).await?;
    let b = Account::insert(&db.pool, Account::new("b", 1)).await?;
    let a3 = Account::delete(&db.pool, a.entity_id).await?;
    let until = Snapshot::now(&db.pool).await?.instant();
    Account::modify(&db.pool, b.entity_id, |x| x.balance = 3).await?;

    let changes = Account::query()
        .all_versions()
        .changed_between(from, until)
        .order_by_time()
        .fetch_all(&db.pool)
        .await?;
    let got: Vec<(Uuid, i64)> = changes.iter().map(|v| (v.entity_id, v.version)).collect();
    assert_eq!(got, [(a.entity_id, 2), (b.entity_id, 1), (a.entity_id, 3)]);
    assert_eq!(changes[0], a2);
    assert_eq!(changes[2], a3);
    assert!(changes.windows(2).all(|w| w[0].valid_from <= w[1].valid_from));
    // The same period, in (entity, version) order (the default for history).
    let by_entity = Account::query().all_versions().changed_between(from, until).fetch_all(&db.pool).await?;
    let mut expected = got.clone();
    expected.sort();
    assert_eq!(by_entity.iter().map(|v| (v.entity_id, v.version)).collect::<Vec<_>>(), expected);
    Ok(())
}

async fn order_limit_and_offset_page_stably(db: Db) -> TestResult {
    // Equal balances everywhere: only the tie-break on entity_id makes pages stable.
    let mut ids = Vec::new();
    for i in 0..10 {
        ids.push(Account::insert(&db.pool, Account::new(&format!("o{i}"), 7)).await?.entity_id);
    }
    ids.sort();
    let mut paged = Vec::new();
    for page in 0..4 {
        let rows = Account::query()
            .order_by(Account::BALANCE, Order::Desc)
            .limit(3)
            .offset(page * 3)
            .fetch_all(&db.pool)
            .await?;
        paged.extend(rows.into_iter().map(|v| v.entity_id));
    }
    assert_eq!(paged, ids);
    let first = Account::query().order_by(Account::OWNER, Order::Desc).fetch_optional(&db.pool).await?;
    assert_eq!(first.map(|v| v.data.owner), Some("o9".to_owned()));
    Ok(())
}

async fn order_by_name_refuses_unknown_columns(db: Db) -> TestResult {
    Account::insert(&db.pool, Account::new("b", 1)).await?;
    Account::insert(&db.pool, Account::new("a", 2)).await?;
    let by_owner = Account::query().order_by_name("owner", Order::Asc)?.fetch_all(&db.pool).await?;
    assert_eq!(by_owner.iter().map(|v| v.owner.as_str()).collect::<Vec<_>>(), ["a", "b"]);
    let by_version = Account::query().order_by_name("valid_from", Order::Desc)?.fetch_all(&db.pool).await?;
    assert_eq!(by_version[0].owner, "a");
    for bad in ["nope", "balance; DROP TABLE accounts", "\"owner\"", ""] {
        let err = Account::query().order_by_name(bad, Order::Asc).unwrap_err();
        assert!(
            matches!(&err, Error::UnknownColumn { table: "accounts", column } if column == bad),
            "{err:?}"
        );
    }
    Ok(())
}

async fn ids_load_many_entities_in_one_query(db: Db) -> TestResult {
    let mut ids = Vec::new();
    for i in 0..50 {
        ids.push(Account::insert(&db.pool, Account::new(&format!("o{i}"), i)).await?.entity_id);
    }
    Account::delete(&db.pool, ids[2]).await?;
    let t = Snapshot::now(&db.pool).await?;
    Account::modify(&db.pool, ids[4], |a| a.balance = -1).await?;
    let wanted: Vec<Uuid> = ids.iter().copied().step_by(2).chain([Uuid::now_v7()]).collect();

    let mut counted = Counted::new(&db).await?;
    let found = Account::query().ids(wanted.clone()).fetch_all(counted.exec()).await?;
    assert_eq!(counted.queries(), 1, "one query for the whole batch");
    assert_eq!(found.len(), 24, "unknown and deleted ids are absent");
    let then = t.query::<Account>().ids(wanted.clone()).fetch_all(counted.exec()).await?;
    assert_eq!(counted.queries(), 2);
    let then: HashMap<Uuid, Versioned<Account>> = then.into_iter().map(|v| (v.entity_id, v)).collect();
    assert_eq!(then[&ids[4]].balance, 4, "as of t: before the later change");
    assert!(!then.contains_key(&ids[2]), "deleted before t");
    assert_eq!(then.len(), 24);
    // The counter does see every statement: ten single reads are ten queries.
    for id in &wanted[..10] {
        let _found_or_deleted = Account::find(counted.exec(), *id).await;
    }
    assert_eq!(counted.queries(), 12);
    Ok(())
}

async fn stream_yields_every_version_in_order(db: Db) -> TestResult {
    let a = Account::insert(&db.pool, Account::new("a", 0)).await?;
    let mut tx = db.pool.begin().await?;
    for _ in 0..500 {
        Account::modify(&mut tx, a.entity_id, |x| x.balance += 1).await?;
    }
    tx.commit().await?;
    let mut stream = std::pin::pin!(Account::query().all_versions().fetch(&db.pool));
    let mut expected = 1;
    while let Some(v) = stream.try_next().await? {
        assert_eq!((v.version, v.balance), (expected, expected - 1));
        expected += 1;
    }
    assert_eq!(expected, 502);
    Ok(())
}
