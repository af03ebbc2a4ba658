//! Scenario 12: bad and unusual input through the API: typed errors, exact round trips, never a
//! panic, and a failed call never changes the row count.

use std::future::Future;

use chrono::{DateTime, Duration, Utc};
use immu_core::sea_query::ExprTrait;
use immu_core::{Error, Immutable, Versioned};
use immu_tests::models::{Account, Line, Order, Status};
use immu_tests::reliability::{self, History, Kind, Outcome};
use sqlx::PgPool;
use uuid::Uuid;

use crate::{BoxError, Env, Verdict, account_rows};

/// Runs `fut` in a task of its own: `Err` carries a panic's message instead of unwinding.
async fn probe<T, F>(fut: F) -> Result<immu_core::Result<T>, String>
where
    F: Future<Output = immu_core::Result<T>> + Send + 'static,
    T: Send + 'static,
{
    tokio::spawn(fut).await.map_err(|join| {
        let panic = join.try_into_panic().ok();
        let message = panic.as_ref().and_then(|p| {
            p.downcast_ref::<String>().cloned().or_else(|| p.downcast_ref::<&str>().map(|s| s.to_string()))
        });
        format!("PANIC: {}", message.unwrap_or_else(|| "cancelled".into()))
    })
}

fn describe<T>(result: &Result<immu_core::Result<Versioned<T>>, String>) -> String {
    match result {
        Ok(Ok(v)) if v.is_deleted() => format!("tombstone v{}", v.version),
        Ok(Ok(v)) => format!("v{}", v.version),
        Ok(Err(err)) => reliability::error_name(err),
        Err(panic) => panic.clone(),
    }
}

async fn order_rows(pool: &PgPool) -> sqlx::Result<i64> {
    sqlx::query_scalar(r#"SELECT count(*) FROM "order""#).fetch_one(pool).await
}

pub(crate) async fn bad_input(env: Env) -> Result<Verdict, BoxError> {
    let mut verdict = Verdict::new(
        "unknown/deleted/live entities, stale and future versions, as-of edges (MIN_UTC/MAX_UTC), 5 MB and 2 MB \
         payloads, quotes/backslashes/unicode, NUL bytes, keyword names: typed errors, exact round trips",
    );
    let mut history = History::new();
    let pool = env.pool.clone();
    let mut probes = 0;

    // Unknown entity: every write and read is NotFound, nothing written.
    let a = history.push(reliability::insert(&pool, "ada", 100).await).ok_or("insert failed")?;
    let ghost = Uuid::now_v7();
    let rows = account_rows(&pool).await?;
    let kinds = [
        Kind::Update { balance: 1 },
        Kind::Modify { delta: 1 },
        Kind::UpdateIfVersion { expected: 1, balance: 1 },
        Kind::Delete,
        Kind::Undelete,
    ];
    for (k, kind) in kinds.into_iter().enumerate() {
        let op = reliability::write(&pool, ghost, kind, format!("ghost-{k}")).await;
        let ok = matches!(op.outcome.error(), Some(Error::NotFound { entity_id, version: None, .. }) if *entity_id == ghost);
        verdict.expect(ok, || format!("{kind:?} of an unknown entity: {:?}", op.outcome));
        history.push(op);
        probes += 1;
    }
    for (what, result) in [
        ("find", Account::find(&pool, ghost).await.map(drop)),
        ("find_as_of", Account::find_as_of(&pool, ghost, Utc::now()).await.map(drop)),
        ("find_version", Account::find_version(&pool, ghost, 1).await.map(drop)),
        ("history", Account::history(&pool, ghost).await.map(drop)),
    ] {
        verdict.expect(matches!(result, Err(Error::NotFound { .. })), || {
            format!("{what} of an unknown entity: {result:?}")
        });
        probes += 1;
    }
    verdict.expect(account_rows(&pool).await? == rows, || {
        "writes to an unknown entity changed the row count".into()
    });

    // A deleted entity refuses update, modify, update_if_version and delete; a live one undelete.
    let b = history.push(reliability::insert(&pool, "bob", 5).await).ok_or("insert failed")?;
    let tomb = history
        .push(reliability::write(&pool, b.entity_id, Kind::Delete, "bob-delete").await)
        .ok_or("delete failed")?;
    let rows = account_rows(&pool).await?;
    let kinds = [
        Kind::Update { balance: 1 },
        Kind::Modify { delta: 1 },
        Kind::UpdateIfVersion { expected: 2, balance: 1 },
        Kind::UpdateIfVersion { expected: 1, balance: 1 },
        Kind::Delete,
    ];
    for (k, kind) in kinds.into_iter().enumerate() {
        let op = reliability::write(&pool, b.entity_id, kind, format!("deleted-{k}")).await;
        let ok = matches!(op.outcome.error(), Some(Error::Deleted { version: 2, deleted_at, .. }) if Some(*deleted_at) == tomb.deleted_at);
        verdict.expect(ok, || format!("{kind:?} of a deleted entity: {:?}", op.outcome));
        history.push(op);
        probes += 1;
    }
    let op = reliability::write(&pool, a.entity_id, Kind::Undelete, "undelete-live").await;
    verdict.expect(matches!(op.outcome.error(), Some(Error::NotDeleted { version: 1, .. })), || {
        format!("undelete of a live entity: {:?}", op.outcome)
    });
    history.push(op);
    verdict.expect(account_rows(&pool).await? == rows, || "refused writes changed the row count".into());

    // Expected versions too old, in the future, absurd: VersionConflict with the actual version.
    history.push(reliability::write(&pool, a.entity_id, Kind::Update { balance: 101 }, "ada-2").await);
    let rows = account_rows(&pool).await?;
    for (k, expected) in [1, 0, -1, 3, 4, i64::MAX, i64::MIN].into_iter().enumerate() {
        let op = reliability::write(
            &pool,
            a.entity_id,
            Kind::UpdateIfVersion { expected, balance: 0 },
            format!("stale-{k}"),
        )
        .await;
        let ok = matches!(op.outcome.error(),
            Some(Error::VersionConflict { expected: Some(e), actual: Some(2), .. }) if *e == expected);
        verdict.expect(ok, || format!("update_if_version({expected}) at version 2: {:?}", op.outcome));
        history.push(op);
        probes += 1;
    }
    for version in [0, -1, 3, i64::MAX, i64::MIN] {
        let result = Account::find_version(&pool, a.entity_id, version).await;
        verdict
            .expect(matches!(result, Err(Error::NotFound { version: Some(v), .. }) if v == version), || {
                format!("find_version({version}): {result:?}")
            });
        probes += 1;
    }
    verdict.expect(account_rows(&pool).await? == rows, || "conflicting writes changed the row count".into());

    // As of: before creation, exactly at valid_from, between versions, far future, chrono's limits.
    let v1 = Account::find_version(&pool, a.entity_id, 1).await?;
    let v2 = Account::find_version(&pool, a.entity_id, 2).await?;
    let id = a.entity_id;
    let micro = Duration::microseconds(1);
    let nano = Duration::nanoseconds(1);
    let cases: [(&str, DateTime<Utc>, &str); 7] = [
        ("1 µs before creation", v1.valid_from - micro, "NotFound"),
        ("1 ns before creation", v1.valid_from - nano, "NotFound"),
        ("exactly at v1.valid_from", v1.valid_from, "v1"),
        ("1 ns before v2", v2.valid_from - nano, "v1"),
        ("exactly at v2.valid_from", v2.valid_from, "v2"),
        ("1000 years ahead", Utc::now() + Duration::days(365_250), "v2"),
        ("tombstone instant of another entity", tomb.valid_from, "-"),
    ];
    for (what, at, expected) in cases {
        if expected == "-" {
            let result = probe({
                let pool = pool.clone();
                let id = b.entity_id;
                async move { Account::find_as_of(&pool, id, at).await }
            })
            .await;
            verdict.expect(describe(&result) == "Deleted", || {
                format!("find_as_of at {what}: {}", describe(&result))
            });
            continue;
        }
        let result = probe({
            let pool = pool.clone();
            async move { Account::find_as_of(&pool, id, at).await }
        })
        .await;
        verdict.expect(describe(&result) == expected, || {
            format!("find_as_of {what}: {} (expected {expected})", describe(&result))
        });
        probes += 1;
    }
    for (what, at) in [
        ("DateTime::<Utc>::MIN_UTC", DateTime::<Utc>::MIN_UTC),
        ("DateTime::<Utc>::MAX_UTC", DateTime::<Utc>::MAX_UTC),
    ] {
        let one = probe({
            let pool = pool.clone();
            async move { Account::find_as_of(&pool, id, at).await }
        })
        .await;
        let list = probe({
            let pool = pool.clone();
            async move { Account::query().as_of(at).fetch_all(&pool).await }
        })
        .await;
        let list = match &list {
            Ok(Ok(rows)) => format!("{} rows", rows.len()),
            Ok(Err(err)) => reliability::error_name(err),
            Err(panic) => panic.clone(),
        };
        let described = describe(&one);
        verdict.count(format!("as of {what}: find_as_of -> {described}, query -> {list}"));
        for answer in [&described, &list] {
            verdict.expect(!answer.starts_with("PANIC"), || format!("as of {what}: {answer}"));
            verdict.expect(!answer.starts_with("Database"), || {
                format!("as of {what} gives an untyped Error::{answer}")
            });
        }
        probes += 2;
    }

    // Large payloads: a 5 MB owner (twice), a 2 MB JSON column.
    let big = |c: char| format!("big-{c}-{}", c.to_string().repeat(5 << 20));
    let big_a = history.push(reliability::insert(&pool, big('x'), 1).await);
    verdict.expect(big_a.is_some(), || "insert of a 5 MB owner failed".into());
    if let Some(big_a) = &big_a {
        let updated = history
            .push(reliability::write(&pool, big_a.entity_id, Kind::Update { balance: 2 }, big('y')).await);
        verdict.expect(updated.is_some(), || "update to a 5 MB owner failed".into());
        let read = Account::history(&pool, big_a.entity_id).await?;
        verdict.expect(read.len() == 2 && read[0].owner == big('x') && read[1].owner == big('y'), || {
            "5 MB owners do not round-trip".into()
        });
    }
    let lines: Vec<Line> =
        (0..45_000).map(|i| Line { sku: format!("sku-{i:08}-\"q\"\\é"), qty: i }).collect();
    let json_len = serde_json::to_string(&lines)?.len();
    let order = Order {
        customer: "O'Brien \"the\" café — 東京 \\ 🎉".into(),
        r#select: i32::MIN,
        note: Some("line\nbreak\ttab".into()),
        lines,
        status: Status::Shipped,
        payload: (0..=255).collect(),
        // chrono's latest instant, at PostgreSQL's precision (microseconds).
        due: Some(DateTime::<Utc>::MAX_UTC - Duration::nanoseconds(999)),
    };
    let inserted = Order::insert(&pool, order.clone()).await;
    match &inserted {
        Ok(v) => {
            let read = Order::find(&pool, v.entity_id).await?;
            let fields = [
                ("customer", read.customer == order.customer),
                ("select", read.r#select == order.r#select),
                ("note", read.note == order.note),
                ("lines", read.lines == order.lines),
                ("status", read.status == order.status),
                ("payload", read.payload == order.payload),
                ("due", read.due == order.due),
                ("meta", (read.id, read.version, read.valid_from) == (v.id, v.version, v.valid_from)),
            ];
            let differ: Vec<&str> = fields.iter().filter(|f| !f.1).map(|f| f.0).collect();
            verdict.expect(differ.is_empty(), || {
                format!(
                    "a {json_len}-byte JSON order does not round-trip: {differ:?} differ ({:?} vs {:?})",
                    read.due, order.due
                )
            });
            verdict.count(format!("{:.1} MB JSON order round-trips", json_len as f64 / 1e6));
        }
        Err(err) => verdict.fail(format!("insert of a {json_len}-byte JSON order: {err:?}")),
    }

    // A timestamp finer than PostgreSQL's microseconds: what the write acknowledges vs what it stored.
    let mut fine = order.clone();
    fine.lines.truncate(1);
    fine.due = Some(DateTime::<Utc>::MAX_UTC);
    let acked = Order::insert(&pool, fine).await?;
    let stored = Order::find(&pool, acked.entity_id).await?;
    verdict.expect(stored == acked, || {
        format!("Order::insert acknowledges due = {:?} but stores and reads back {:?}", acked.due, stored.due)
    });
    verdict.count("a sub-microsecond timestamp: the acknowledged version is the stored one".to_owned());

    // Quotes, backslashes, non-ASCII: exact round trips, findable by value.
    let strange = [
        "O'Brien \"quoted\" `tick`",
        "back\\slash \\\\ \\x00 \\n",
        "naïve café — 東京 🎉 \u{200B}zero-width \u{202E}rtl",
        "  leading and trailing  ",
        "'; DROP TABLE accounts; --",
        "$1 $2 %s {} ?",
    ];
    for (i, owner) in strange.iter().enumerate() {
        let v = history.push(reliability::insert(&pool, *owner, i as i64).await);
        let Some(v) = v else {
            verdict.fail(format!("insert of {owner:?} failed"));
            continue;
        };
        let read = Account::find(&pool, v.entity_id).await?;
        verdict.expect(read.owner == *owner, || format!("{owner:?} read back as {:?}", read.owner));
        let found = Account::query().filter(Account::OWNER.eq(*owner)).fetch_all(&pool).await?;
        verdict.expect(found.len() == 1 && found[0].entity_id == v.entity_id, || {
            format!("filter by {owner:?}: {} rows", found.len())
        });
        let tag = format!("{owner} (updated)");
        let updated = history
            .push(reliability::write(&pool, v.entity_id, Kind::Update { balance: 9 }, tag.clone()).await);
        verdict.expect(updated.is_some_and(|u| u.owner == tag), || format!("update to {tag:?} failed"));
        probes += 1;
    }

    // NUL bytes: InvalidValue, nothing written, in every write path and in the Order model.
    let rows = account_rows(&pool).await?;
    let op = reliability::insert(&pool, "nul\0insert", 0).await;
    expect_invalid_value(&mut verdict, &op.outcome, "insert with a NUL byte");
    history.push(op);
    for (k, kind) in [
        Kind::Update { balance: 0 },
        Kind::Modify { delta: 0 },
        Kind::UpdateIfVersion { expected: 2, balance: 0 },
    ]
    .into_iter()
    .enumerate()
    {
        let op = reliability::write(&pool, a.entity_id, kind, format!("nul\0{k}")).await;
        expect_invalid_value(&mut verdict, &op.outcome, &format!("{kind:?} with a NUL byte"));
        history.push(op);
        probes += 1;
    }
    verdict.expect(account_rows(&pool).await? == rows, || "NUL-byte writes changed the row count".into());
    let orders = order_rows(&pool).await?;
    let mut bad = order.clone();
    bad.lines.truncate(2);
    bad.note = Some("nul\0note".into());
    let result = Order::insert(&pool, bad.clone()).await;
    verdict.expect(matches!(result, Err(Error::InvalidValue { .. })), || {
        format!("order with a NUL note: {result:?}")
    });
    bad.note = None;
    bad.lines[0].sku = "nul\0json".into();
    let result = Order::insert(&pool, bad).await;
    verdict.expect(matches!(result, Err(Error::InvalidValue { .. })), || {
        format!("order with a NUL in JSON: {result:?}")
    });
    verdict.expect(order_rows(&pool).await? == orders, || "refused orders changed the row count".into());

    // Keyword names (table "order", columns "user" and "select"): the full write path.
    if let Ok(v1) = &inserted {
        let v2 = Order::modify(&pool, v1.entity_id, |o| {
            o.r#select = i32::MAX;
            o.customer = "user".into();
            o.lines.truncate(1);
        })
        .await?;
        let tomb = Order::delete(&pool, v1.entity_id).await?;
        let back = Order::undelete(&pool, v1.entity_id).await?;
        let all = Order::history(&pool, v1.entity_id).await?;
        verdict.expect(all.iter().map(|v| v.version).collect::<Vec<_>>() == [1, 2, 3, 4], || {
            "order history is not 1..4".into()
        });
        verdict.expect(tomb.data == v2.data && back.data == v2.data && back.r#select == i32::MAX, || {
            "order tombstone/undelete do not copy the data".into()
        });
        let listed = Order::query().fetch_all(&pool).await?;
        let mine: Vec<_> = listed.iter().filter(|o| o.entity_id == v1.entity_id).collect();
        verdict.expect(mine.len() == 1 && *mine[0] == back, || {
            "the order list does not show the undeleted order".into()
        });
    }
    verdict.count(format!("{probes} probes"));
    verdict.report = Some(reliability::check(&pool, &history).await?);
    Ok(verdict)
}

fn expect_invalid_value(verdict: &mut Verdict, outcome: &Outcome, what: &str) {
    verdict.expect(matches!(outcome, Outcome::Failed(Error::InvalidValue { .. })), || {
        format!("{what}: expected InvalidValue, got {outcome:?}")
    });
}
