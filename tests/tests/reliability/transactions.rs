//! Scenarios 3, 4 and 5: transfers inside the caller's own transactions, under READ COMMITTED,
//! REPEATABLE READ and SERIALIZABLE.

use immu_core::Immutable;
use immu_tests::models::Account;
use immu_tests::reliability::{self, History, Kind, Op, Rng, TxEnd};
use sqlx::Connection;
use uuid::Uuid;

use crate::{BoxError, Env, Verdict, reads_agree};

pub(crate) async fn read_committed(env: Env) -> Result<Verdict, BoxError> {
    transfers(env, None).await
}

pub(crate) async fn repeatable_read(env: Env) -> Result<Verdict, BoxError> {
    transfers(env, Some("REPEATABLE READ")).await
}

pub(crate) async fn serializable(env: Env) -> Result<Verdict, BoxError> {
    transfers(env, Some("SERIALIZABLE")).await
}

const ACCOUNTS: usize = 6;
const WORKERS: usize = 8;
const INITIAL: i64 = 1_000;
/// Attempts per transfer before giving up on it (it then counts as failed, which is allowed).
const ATTEMPTS: usize = 100;

/// What one worker saw.
#[derive(Default)]
struct Tally {
    groups: Vec<(u64, Vec<Op>, TxEnd)>,
    committed: usize,
    rolled_back_on_purpose: usize,
    retries: usize,
    gave_up: usize,
    unexpected: Vec<String>,
}

/// Transfers between random pairs of accounts, two `modify` calls in the caller's transaction,
/// some rolled back on purpose, retried on retryable errors.
async fn transfers(env: Env, isolation: Option<&'static str>) -> Result<Verdict, BoxError> {
    let per_worker = env.scaled(30);
    let level = isolation.unwrap_or("READ COMMITTED");
    let mut verdict = Verdict::new(&format!(
        "{WORKERS} workers x {per_worker} transfers in caller txs ({level}), retried: sum preserved, \
         both legs or neither"
    ));
    let mut history = History::new();
    let mut ids = Vec::new();
    for i in 0..ACCOUNTS {
        let v = history.push(reliability::insert(&env.pool, format!("init-{i}"), INITIAL).await);
        ids.push(v.ok_or("insert failed")?.entity_id);
    }
    let mut handles = Vec::new();
    for w in 0..WORKERS {
        let mut conn = env.connect().await?;
        let ids = ids.clone();
        handles.push(tokio::spawn(async move {
            let mut tally = Tally::default();
            let mut rng = Rng::new(0x3000 + w as u64);
            for t in 0..per_worker {
                let a = rng.index(ids.len());
                let b = (a + 1 + rng.index(ids.len() - 1)) % ids.len();
                let amount = 1 + rng.below(50) as i64;
                let on_purpose = rng.chance(10);
                let mut done = false;
                for attempt in 0..ATTEMPTS {
                    let group = (w as u64) << 40 | (t as u64) << 16 | attempt as u64;
                    let tag = format!("w{w}-t{t}-a{attempt}");
                    match transfer(&mut conn, isolation, (ids[a], ids[b]), amount, &tag, on_purpose).await {
                        Ok((ops, end, retry)) => {
                            let surprise = match &end {
                                TxEnd::Unknown(reason) => {
                                    Some(format!("{tag}: unknown commit outcome: {reason}"))
                                }
                                TxEnd::RolledBack(reason) if !retry && !on_purpose => {
                                    Some(format!("{tag}: rolled back: {reason}"))
                                }
                                _ => None,
                            };
                            let committed = matches!(end, TxEnd::Committed);
                            tally.groups.push((group, ops, end));
                            if let Some(surprise) = surprise {
                                tally.unexpected.push(surprise);
                                done = true;
                                break;
                            }
                            if committed {
                                tally.committed += 1;
                                done = true;
                                break;
                            }
                            if !retry {
                                tally.rolled_back_on_purpose += 1;
                                done = true;
                                break;
                            }
                            tally.retries += 1;
                            tokio::time::sleep(std::time::Duration::from_micros(rng.below(2_000))).await;
                        }
                        Err(err) => {
                            tally.unexpected.push(format!("transfer {tag}: {err}"));
                            done = true;
                            break;
                        }
                    }
                }
                if !done {
                    tally.gave_up += 1;
                }
            }
            tally
        }));
    }
    let (mut committed, mut on_purpose, mut retries, mut gave_up) = (0, 0, 0, 0);
    for handle in handles {
        let tally = handle.await?;
        for (group, ops, end) in tally.groups {
            history.settle(group, ops, &end);
        }
        committed += tally.committed;
        on_purpose += tally.rolled_back_on_purpose;
        retries += tally.retries;
        gave_up += tally.gave_up;
        for u in tally.unexpected.into_iter().take(5) {
            verdict.fail(u);
        }
    }
    verdict.count(format!(
        "{committed} committed, {on_purpose} rolled back on purpose, {retries} retries, {gave_up} given up"
    ));
    let failures = history.failures_by_kind();
    verdict.count(failures.iter().map(|(name, n)| format!("{n} {name}")).collect::<Vec<_>>().join(", "));
    // Every failure is typed (serialization failures are Error::SerializationFailure).
    let untyped: Vec<String> = history
        .ops
        .iter()
        .filter_map(|op| match op.outcome.error() {
            Some(err @ immu_core::Error::Database(_)) => Some(format!("{err}")),
            _ => None,
        })
        .collect();
    if let Some(sample) = untyped.first() {
        verdict.fail(format!(
            "{} writes in {level} transactions failed with an untyped Error::Database, e.g. \"{sample}\"",
            untyped.len()
        ));
    }
    verdict.expect(committed > 0, || "no transfer committed".to_owned());
    if isolation.is_none() {
        verdict.expect(retries == 0, || format!("{retries} retries under READ COMMITTED (expected none)"));
    }

    // The sum of balances is preserved; each balance follows from the committed transfers.
    let current = Account::query().fetch_all(&env.pool).await?;
    let sum: i64 = current.iter().map(|v| v.balance).sum();
    verdict.expect(current.len() == ACCOUNTS, || format!("{} accounts listed", current.len()));
    verdict.expect(sum == INITIAL * ACCOUNTS as i64, || {
        format!("sum of balances {sum}, expected {}", INITIAL * ACCOUNTS as i64)
    });
    for id in &ids {
        let expected: i64 = INITIAL
            + history
                .ops
                .iter()
                .filter(|op| op.entity == Some(*id) && op.outcome.is_ok())
                .map(|op| if let Kind::Modify { delta } = op.kind { delta } else { 0 })
                .sum::<i64>();
        let balance = current.iter().find(|v| v.entity_id == *id).map(|v| v.balance);
        verdict.expect(balance == Some(expected), || {
            format!("{id}: balance {balance:?}, committed transfers give {expected}")
        });
    }
    reads_agree(&env.pool, &mut verdict).await?;
    verdict.report = Some(reliability::check(&env.pool, &history).await?);
    Ok(verdict)
}

/// One attempt: returns the recorded legs, how the transaction ended, and whether to retry.
async fn transfer(
    conn: &mut sqlx::PgConnection,
    isolation: Option<&str>,
    (from, to): (Uuid, Uuid),
    amount: i64,
    tag: &str,
    roll_back: bool,
) -> Result<(Vec<Op>, TxEnd, bool), BoxError> {
    let mut tx = conn.begin().await?;
    if let Some(level) = isolation {
        sqlx::raw_sql(sqlx::AssertSqlSafe(format!("SET TRANSACTION ISOLATION LEVEL {level}")))
            .execute(&mut *tx)
            .await?;
    }
    // Both legs lock in entity order, so that two transfers never wait for each other in a cycle.
    let mut legs = [(from, -amount, "debit"), (to, amount, "credit")];
    legs.sort_by_key(|leg| leg.0);
    let mut ops = Vec::new();
    for (entity, delta, leg) in legs {
        let op = reliability::write(&mut *tx, entity, Kind::Modify { delta }, format!("{tag}-{leg}")).await;
        let failed = match &op.outcome {
            immu_tests::reliability::Outcome::Failed(err) => {
                Some((err.is_retryable(), format!("{leg} failed: {err}")))
            }
            immu_tests::reliability::Outcome::Unknown(reason) => {
                return Err(format!("{leg}: unknown outcome inside a transaction: {reason}").into());
            }
            _ => None,
        };
        ops.push(op);
        if let Some((retryable, reason)) = failed {
            tx.rollback().await?;
            if !retryable {
                return Err(format!("{tag}: non-retryable failure: {reason}").into());
            }
            return Ok((ops, TxEnd::RolledBack(reason), true));
        }
    }
    if roll_back {
        tx.rollback().await?;
        return Ok((ops, TxEnd::RolledBack("rolled back on purpose".to_owned()), false));
    }
    let commit = tx.commit().await;
    // A serialization failure at commit (SERIALIZABLE) rolled the transaction back: retry it.
    let retry = commit
        .as_ref()
        .err()
        .and_then(|err| err.as_database_error())
        .and_then(|db| db.code())
        .is_some_and(|code| code == "40001" || code == "40P01");
    Ok((ops, TxEnd::of_commit(commit), retry))
}
