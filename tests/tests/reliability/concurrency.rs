//! Scenarios 1 and 2: many concurrent writers on separate connections.

use std::collections::HashMap;

use immu_core::{Error, Immutable};
use immu_tests::models::Account;
use immu_tests::reliability::{self, History, Kind, Op, Outcome, Rng};
use uuid::Uuid;

use crate::{BoxError, Env, Verdict, reads_agree};

/// 16 writers (a connection each), 40 entities, a few hundred random operations each: update,
/// modify, update_if_version with the version last seen, delete, undelete.
pub(crate) async fn mixed(env: Env) -> Result<Verdict, BoxError> {
    const WRITERS: usize = 16;
    const ENTITIES: usize = 40;
    let ops_per_writer = env.scaled(300);
    let mut verdict = Verdict::new(&format!(
        "{WRITERS} writers x {ops_per_writer} random ops on {ENTITIES} entities: every ack stored, 1..n, \
         typed refusals write nothing"
    ));
    let mut history = History::new();
    let mut ids = Vec::new();
    for i in 0..ENTITIES {
        let v = history.push(reliability::insert(&env.pool, format!("init-{i}"), 0).await);
        ids.push(v.ok_or("initial insert failed")?.entity_id);
    }

    // Digests taken while the writers commit: each must verify at the end.
    let digesting = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(true));
    let digester = {
        let (pool, digesting) = (env.pool.clone(), digesting.clone());
        tokio::spawn(async move {
            let mut digests = Vec::new();
            while digesting.load(std::sync::atomic::Ordering::Relaxed) {
                digests.push(immu_core::ledger::digest_table(&pool, "accounts").await?);
                tokio::time::sleep(std::time::Duration::from_millis(100)).await;
            }
            Ok::<_, Error>(digests)
        })
    };
    let mut handles = Vec::new();
    for w in 0..WRITERS {
        let mut conn = env.connect().await?;
        let ids = ids.clone();
        handles.push(tokio::spawn(async move {
            let mut rng = Rng::new(0x1000 + w as u64);
            let mut seen: HashMap<Uuid, i64> = ids.iter().map(|id| (*id, 1)).collect();
            let mut ops = Vec::new();
            let mut unexpected = Vec::new();
            for i in 0..ops_per_writer {
                let entity = ids[rng.index(ids.len())];
                let roll = rng.below(100);
                if roll >= 94 {
                    // A read refreshes the version this writer knows.
                    match Account::find(&mut conn, entity).await {
                        Ok(v) => {
                            seen.insert(entity, v.version);
                        }
                        Err(Error::Deleted { version, .. }) => {
                            seen.insert(entity, version);
                        }
                        Err(err) => unexpected.push(format!("find: {err}")),
                    }
                    continue;
                }
                let balance = rng.below(1_000_000) as i64;
                let kind = match roll {
                    0..15 => Kind::Modify { delta: 1 + rng.below(9) as i64 },
                    15..25 => Kind::Patch { delta: 1 + rng.below(9) as i64 },
                    25..45 => Kind::Update { balance },
                    45..77 => Kind::UpdateIfVersion { expected: seen[&entity], balance },
                    77..82 => Kind::Delete,
                    _ => Kind::Undelete,
                };
                let op = reliability::write(&mut conn, entity, kind, format!("w{w}-op{i}")).await;
                match &op.outcome {
                    Outcome::Ok(v) => {
                        seen.insert(entity, v.version);
                    }
                    Outcome::Failed(
                        Error::VersionConflict { actual: Some(version), .. }
                        | Error::Deleted { version, .. }
                        | Error::NotDeleted { version, .. },
                    ) => {
                        seen.insert(entity, *version);
                    }
                    Outcome::Failed(err) => unexpected.push(format!("{kind:?}: {err}")),
                    Outcome::Unknown(reason) => {
                        unexpected.push(format!("{kind:?}: unknown outcome: {reason}"))
                    }
                    Outcome::RolledBack(_) => {}
                }
                ops.push(op);
            }
            (ops, unexpected)
        }));
    }
    for handle in handles {
        let (ops, unexpected) = handle.await?;
        history.extend(ops);
        for u in unexpected.into_iter().take(5) {
            verdict.fail(format!("unexpected outcome: {u}"));
        }
    }
    let failures = history.failures_by_kind();
    verdict.count(
        failures.iter().map(|(name, n)| format!("{n} {name}")).collect::<Vec<_>>().join(", ").to_string(),
    );
    verdict.expect(failures.iter().any(|(n, _)| n == "VersionConflict"), || {
        "no VersionConflict at all: the optimistic writes never raced".to_owned()
    });
    verdict.expect(history.unknown() == 0, || {
        format!("{} unknown outcomes without any fault", history.unknown())
    });
    digesting.store(false, std::sync::atomic::Ordering::Relaxed);
    let digests = digester.await??;
    verdict.count(format!("{} digests taken while writing, verified", digests.len()));
    reads_agree(&env.pool, &mut verdict).await?;
    let mut report = reliability::check(&env.pool, &history).await?;
    reliability::check_digests(&env.pool, &digests, &mut report).await?;
    verdict.report = Some(report);
    Ok(verdict)
}

/// 32 writers (a pool of 32) on one entity, each doing `modify(+1)` (half of them) or `patch(balance + 1)` N times.
pub(crate) async fn hot_spot(env: Env) -> Result<Verdict, BoxError> {
    const WRITERS: usize = 32;
    let per_writer = env.scaled(40);
    let mut verdict = Verdict::new(&format!(
        "{WRITERS} writers x {per_writer} modify(+1) or patch(balance + 1) on one entity: final balance = acks, versions 1..n"
    ));
    let mut history = History::new();
    let id = history.push(reliability::insert(&env.pool, "hot", 0).await).ok_or("insert failed")?.entity_id;
    let pool = env.pool(WRITERS as u32).await?;
    let mut handles = Vec::new();
    for w in 0..WRITERS {
        let pool = pool.clone();
        handles.push(tokio::spawn(async move {
            let mut ops: Vec<Op> = Vec::new();
            // Half the writers read-modify-write, half patch (the database adds one).
            let kind = if w % 2 == 0 { Kind::Modify { delta: 1 } } else { Kind::Patch { delta: 1 } };
            for i in 0..per_writer {
                ops.push(reliability::write(&pool, id, kind, format!("w{w}-op{i}")).await);
            }
            ops
        }));
    }
    for handle in handles {
        history.extend(handle.await?);
    }
    pool.close().await;
    let acked = history.acknowledged() as i64 - 1;
    verdict.expect(acked == (WRITERS * per_writer) as i64, || {
        format!(
            "{acked} of {} increments acknowledged (failures: {:?})",
            WRITERS * per_writer,
            history.failures_by_kind()
        )
    });
    let current = Account::find(&env.pool, id).await?;
    verdict.expect(current.balance == acked, || {
        format!("final balance {} after {acked} acknowledged +1", current.balance)
    });
    verdict.expect(current.version == acked + 1, || {
        format!("current version {} after {acked} increments", current.version)
    });
    let mut versions: Vec<i64> =
        history.ops.iter().filter_map(|op| op.outcome.version().map(|v| v.version)).collect();
    versions.sort_unstable();
    verdict.expect(versions == (1..=acked + 1).collect::<Vec<_>>(), || {
        "acknowledged versions are not 1..n".to_owned()
    });
    verdict.count(format!("final balance {} at version {}", current.balance, current.version));
    reads_agree(&env.pool, &mut verdict).await?;
    verdict.report = Some(reliability::check(&env.pool, &history).await?);
    Ok(verdict)
}
