//! Scenarios 7, 9 and 10: a connection killed mid-transaction, lock and statement timeouts.

use std::time::{Duration, Instant};

use immu_core::{Error, Immutable};
use immu_tests::models::Account;
use immu_tests::reliability::{self, History, Kind, Outcome, TxEnd};
use sqlx::{Connection, PgConnection, PgPool};
use uuid::Uuid;

use crate::{BoxError, Env, Verdict, account_rows};

/// The backend pid of a connection (or of the connection under a transaction).
async fn backend_pid(conn: &mut PgConnection) -> sqlx::Result<i32> {
    sqlx::query_scalar("SELECT pg_backend_pid()").fetch_one(conn).await
}

/// Terminates backend `pid` and waits until it is gone.
async fn terminate(pool: &PgPool, pid: i32) -> Result<(), BoxError> {
    let done: bool = sqlx::query_scalar("SELECT pg_terminate_backend($1)").bind(pid).fetch_one(pool).await?;
    if !done {
        return Err(format!("pg_terminate_backend({pid}) returned false").into());
    }
    wait_until(pool, "SELECT NOT EXISTS (SELECT 1 FROM pg_stat_activity WHERE pid = $1)", pid).await
}

/// Polls a boolean query about backend `pid` until it holds (at most 10 s).
async fn wait_until(pool: &PgPool, sql: &'static str, pid: i32) -> Result<(), BoxError> {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !sqlx::query_scalar::<_, bool>(sql).bind(pid).fetch_one(pool).await? {
        if Instant::now() > deadline {
            return Err(format!("timed out waiting for backend {pid}: {sql}").into());
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    Ok(())
}

/// Waits until backend `pid` waits for a lock.
async fn wait_for_lock_wait(pool: &PgPool, pid: i32) -> Result<(), BoxError> {
    wait_until(
        pool,
        "SELECT EXISTS (SELECT 1 FROM pg_stat_activity WHERE pid = $1 AND wait_event_type = 'Lock')",
        pid,
    )
    .await
}

/// Whether a row carrying `tag` is stored.
async fn stored(pool: &PgPool, tag: &str) -> sqlx::Result<bool> {
    sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM accounts WHERE owner = $1)")
        .bind(tag)
        .fetch_one(pool)
        .await
}

/// A connection whose waits for a lock give up after `lock_timeout`.
async fn impatient(env: &Env, lock_timeout: &str) -> Result<PgConnection, BoxError> {
    let mut conn = env.connect().await?;
    sqlx::raw_sql(sqlx::AssertSqlSafe(format!("SET lock_timeout = '{lock_timeout}'")))
        .execute(&mut conn)
        .await?;
    Ok(conn)
}

/// Kills connections at four points: a writer between its write and its commit (in its own
/// transaction, then through a pool), a writer waiting for the entity's lock, and the lock holder
/// while writers queue behind it.
pub(crate) async fn killed_connection(env: Env) -> Result<Verdict, BoxError> {
    let rounds = env.scaled(3);
    let mut verdict = Verdict::new(&format!(
        "{rounds} rounds of pg_terminate_backend before commit / while waiting / while holding the lock: \
         no partial version, lock released, next version contiguous"
    ));
    let mut history = History::new();
    let mut terminated = 0;
    for round in 0..rounds {
        let id = history
            .push(reliability::insert(&env.pool, format!("r{round}-init"), 0).await)
            .ok_or("insert failed")?
            .entity_id;

        // (a) Killed between the append and the commit of the caller's transaction.
        let mut conn = env.connect().await?;
        let mut tx = conn.begin().await?;
        let op =
            reliability::write(&mut *tx, id, Kind::Modify { delta: 1 }, format!("r{round}-killed-tx")).await;
        verdict.expect(op.outcome.is_ok(), || format!("modify in the transaction: {:?}", op.outcome));
        let pid = backend_pid(&mut tx).await?;
        terminate(&env.pool, pid).await?;
        terminated += 1;
        let end = TxEnd::of_commit(tx.commit().await);
        verdict.expect(!matches!(end, TxEnd::Committed), || {
            "commit on a terminated connection succeeded".to_owned()
        });
        let group = history.group();
        history.settle(group, vec![op], &end);
        verdict.expect(!stored(&env.pool, &format!("r{round}-killed-tx")).await?, || {
            format!("round {round}: the killed transaction's version is stored")
        });
        let next =
            lock_is_free(&env, &mut history, id, &format!("r{round}-after-a"), 2, &mut verdict).await?;

        // (b) The same through a pool: the pool drops the dead connection and serves the next write.
        let pool = env.pool(2).await?;
        let mut tx = pool.begin().await?;
        let op =
            reliability::write(&mut *tx, id, Kind::Modify { delta: 1 }, format!("r{round}-killed-pooled"))
                .await;
        let pid = backend_pid(&mut tx).await?;
        terminate(&env.pool, pid).await?;
        terminated += 1;
        let end = TxEnd::of_commit(tx.commit().await);
        let group = history.group();
        history.settle(group, vec![op], &end);
        let mut version = next;
        for i in 0..5 {
            let op =
                reliability::write(&pool, id, Kind::Modify { delta: 1 }, format!("r{round}-pool-after-{i}"))
                    .await;
            version += 1;
            verdict.expect(op.outcome.version().map(|v| v.version) == Some(version), || {
                format!("round {round}: write {i} through the pool after the kill: {:?}", op.outcome)
            });
            history.push(op);
        }
        pool.close().await;

        // (c) Killed while waiting for the entity's lock.
        let mut holder = env.connect().await?;
        let mut holder_tx = holder.begin().await?;
        let held =
            reliability::write(&mut *holder_tx, id, Kind::Modify { delta: 1 }, format!("r{round}-holder"))
                .await;
        let mut waiter = env.connect().await?;
        let waiter_pid = backend_pid(&mut waiter).await?;
        let tag = format!("r{round}-killed-waiter");
        let waiting =
            tokio::spawn(
                async move { reliability::write(&mut waiter, id, Kind::Modify { delta: 1 }, tag).await },
            );
        wait_for_lock_wait(&env.pool, waiter_pid).await?;
        terminate(&env.pool, waiter_pid).await?;
        terminated += 1;
        let killed = waiting.await?;
        verdict
            .expect(!killed.outcome.is_ok(), || format!("round {round}: the killed waiter was acknowledged"));
        history.push(killed);
        let end = TxEnd::of_commit(holder_tx.commit().await);
        verdict
            .expect(matches!(end, TxEnd::Committed), || format!("round {round}: holder's commit: {end:?}"));
        let group = history.group();
        history.settle(group, vec![held], &end);
        verdict.expect(!stored(&env.pool, &format!("r{round}-killed-waiter")).await?, || {
            format!("round {round}: the killed waiter's version is stored")
        });

        // (d) The lock holder killed while three writers queue behind it: they proceed, in order.
        let mut holder = env.connect().await?;
        let mut holder_tx = holder.begin().await?;
        let held = reliability::write(
            &mut *holder_tx,
            id,
            Kind::Modify { delta: 1 },
            format!("r{round}-killed-holder"),
        )
        .await;
        let holder_pid = backend_pid(&mut holder_tx).await?;
        let mut queued = Vec::new();
        for q in 0..3 {
            let mut conn = env.connect().await?;
            let pid = backend_pid(&mut conn).await?;
            let tag = format!("r{round}-queued-{q}");
            queued.push(tokio::spawn(async move {
                reliability::write(&mut conn, id, Kind::Modify { delta: 1 }, tag).await
            }));
            wait_for_lock_wait(&env.pool, pid).await?;
        }
        terminate(&env.pool, holder_pid).await?;
        terminated += 1;
        let mut versions = Vec::new();
        for handle in queued {
            let op = tokio::time::timeout(Duration::from_secs(10), handle)
                .await
                .map_err(|_| "queued writer hung")??;
            verdict.expect(op.outcome.is_ok(), || format!("round {round}: queued writer: {:?}", op.outcome));
            versions.extend(op.outcome.version().map(|v| v.version));
            history.push(op);
        }
        let end = TxEnd::of_commit(holder_tx.commit().await);
        let group = history.group();
        history.settle(group, vec![held], &end);
        versions.sort_unstable();
        let current = Account::find(&env.pool, id).await?.version;
        verdict.expect(versions == [current - 2, current - 1, current], || {
            format!("round {round}: queued writers got versions {versions:?}, current is {current}")
        });
        verdict.expect(!stored(&env.pool, &format!("r{round}-killed-holder")).await?, || {
            format!("round {round}: the killed holder's version is stored")
        });
    }
    verdict.count(format!("{terminated} backends terminated"));
    verdict.report = Some(reliability::check(&env.pool, &history).await?);
    Ok(verdict)
}

/// Checks that the entity's lock is free (a write with a short lock_timeout succeeds) and that the
/// write gets `expected`; returns the version written.
async fn lock_is_free(
    env: &Env,
    history: &mut History,
    id: Uuid,
    tag: &str,
    expected: i64,
    verdict: &mut Verdict,
) -> Result<i64, BoxError> {
    let mut conn = impatient(env, "2s").await?;
    let op = reliability::write(&mut conn, id, Kind::Modify { delta: 1 }, tag).await;
    let version = op.outcome.version().map(|v| v.version);
    verdict.expect(version == Some(expected), || format!("write after the kill: {:?}", op.outcome));
    history.push(op);
    Ok(version.unwrap_or(expected))
}

/// Scenario 9: `lock_timeout` while another transaction holds the entity's lock.
pub(crate) async fn lock_timeout(env: Env) -> Result<Verdict, BoxError> {
    let mut history = History::new();
    let mut verdict = timeouts(&env, "lock_timeout", &mut history).await?;
    verdict.report = Some(reliability::check(&env.pool, &history).await?);
    Ok(verdict)
}

/// Scenario 10: `statement_timeout` while another transaction holds the entity's lock, and a
/// plain statement canceled by it.
pub(crate) async fn statement_timeout(env: Env) -> Result<Verdict, BoxError> {
    let mut history = History::new();
    let mut verdict = timeouts(&env, "statement_timeout", &mut history).await?;
    let mut conn = env.connect().await?;
    sqlx::raw_sql("SET statement_timeout = '100ms'").execute(&mut conn).await?;
    let err = Error::from(
        sqlx::query("SELECT pg_sleep(1)")
            .execute(&mut conn)
            .await
            .err()
            .ok_or("pg_sleep(1) was not canceled")?,
    );
    verdict.expect(matches!(err, Error::Canceled { .. }), || {
        format!("pg_sleep(1) under statement_timeout: {err:?}")
    });
    verdict.expect(err.is_retryable(), || "Canceled is not retryable".to_owned());

    // A writer waiting for the lock, canceled by pg_cancel_backend (not a timeout).
    let id = history
        .push(reliability::insert(&env.pool, "cancel-init", 0).await)
        .ok_or("insert failed")?
        .entity_id;
    let mut holder = env.connect().await?;
    let mut holder_tx = holder.begin().await?;
    let held = reliability::write(&mut *holder_tx, id, Kind::Modify { delta: 1 }, "cancel-holder").await;
    let mut waiter = env.connect().await?;
    let pid = backend_pid(&mut waiter).await?;
    let waiting = tokio::spawn(async move {
        reliability::write(&mut waiter, id, Kind::Modify { delta: 1 }, "canceled").await
    });
    wait_for_lock_wait(&env.pool, pid).await?;
    let _: bool = sqlx::query_scalar("SELECT pg_cancel_backend($1)").bind(pid).fetch_one(&env.pool).await?;
    let canceled = waiting.await?;
    match canceled.outcome.error() {
        Some(Error::Canceled { .. }) => {}
        _ => verdict.fail(format!("pg_cancel_backend of a lock waiter: {:?}", canceled.outcome)),
    }
    history.push(canceled);
    let end = TxEnd::of_commit(holder_tx.commit().await);
    let group = history.group();
    history.settle(group, vec![held], &end);
    verdict.report = Some(reliability::check(&env.pool, &history).await?);
    Ok(verdict)
}

/// Every kind of write on an entity whose lock another transaction holds, from a connection with
/// `setting = 100ms`, outside and inside a caller's transaction: `Error::LockTimeout`, nothing
/// written, the caller's transaction still usable; after the holder commits the write goes through.
async fn timeouts(env: &Env, setting: &str, history: &mut History) -> Result<Verdict, BoxError> {
    let rounds = env.scaled(2);
    let mut verdict = Verdict::new(&format!(
        "{rounds} rounds of every write kind against a held lock with {setting} = 100ms: LockTimeout, nothing \
         written, then the write succeeds"
    ));
    let mut timeouts = 0;
    for round in 0..rounds {
        let id = history
            .push(reliability::insert(&env.pool, format!("r{round}-init"), 0).await)
            .ok_or("insert failed")?
            .entity_id;
        let mut holder = env.connect().await?;
        let mut holder_tx = holder.begin().await?;
        let held =
            reliability::write(&mut *holder_tx, id, Kind::Modify { delta: 1 }, format!("r{round}-holder"))
                .await;
        verdict.expect(held.outcome.is_ok(), || format!("holder's modify: {:?}", held.outcome));

        let mut conn = env.connect().await?;
        sqlx::raw_sql(sqlx::AssertSqlSafe(format!("SET {setting} = '100ms'"))).execute(&mut conn).await?;
        let rows_before = account_rows(&env.pool).await?;
        let kinds = [
            Kind::Update { balance: 7 },
            Kind::Modify { delta: 7 },
            Kind::UpdateIfVersion { expected: 1, balance: 7 },
            Kind::Delete,
            Kind::Undelete,
        ];
        for (k, kind) in kinds.into_iter().enumerate() {
            let t0 = Instant::now();
            let op = reliability::write(&mut conn, id, kind, format!("r{round}-timeout-{k}")).await;
            let waited = t0.elapsed();
            expect_lock_timeout(&mut verdict, &op.outcome, id, &format!("{kind:?}"));
            verdict.expect(waited < Duration::from_secs(3), || format!("{kind:?} waited {waited:?}"));
            timeouts += usize::from(matches!(op.outcome.error(), Some(Error::LockTimeout { .. })));
            history.push(op);
        }
        // Inside a caller's transaction: the savepoint rolls back, the transaction goes on.
        let mut tx = conn.begin().await?;
        let op =
            reliability::write(&mut *tx, id, Kind::Modify { delta: 7 }, format!("r{round}-timeout-in-tx"))
                .await;
        expect_lock_timeout(&mut verdict, &op.outcome, id, "modify in a caller's transaction");
        timeouts += usize::from(matches!(op.outcome.error(), Some(Error::LockTimeout { .. })));
        history.push(op);
        let other = reliability::insert(&mut *tx, format!("r{round}-after-timeout-in-tx"), 1).await;
        verdict.expect(other.outcome.is_ok(), || {
            format!("the caller's transaction is unusable after LockTimeout: {:?}", other.outcome)
        });
        let end = TxEnd::of_commit(tx.commit().await);
        verdict.expect(matches!(end, TxEnd::Committed), || format!("commit after LockTimeout: {end:?}"));
        let group = history.group();
        history.settle(group, vec![other], &end);
        let rows_after = account_rows(&env.pool).await?;
        verdict.expect(rows_after == rows_before + 1, || {
            format!(
                "{} rows after the timed-out writes, {rows_before} before (+1 insert expected)",
                rows_after
            )
        });

        // The holder commits; the same connection's next write goes through at the next version.
        let end = TxEnd::of_commit(holder_tx.commit().await);
        let group = history.group();
        history.settle(group, vec![held], &end);
        let op =
            reliability::write(&mut conn, id, Kind::Modify { delta: 1 }, format!("r{round}-after")).await;
        verdict.expect(op.outcome.version().map(|v| v.version) == Some(3), || {
            format!("write after the holder committed: {:?}", op.outcome)
        });
        history.push(op);
    }
    verdict.count(format!("{timeouts} LockTimeout"));
    Ok(verdict)
}

fn expect_lock_timeout(verdict: &mut Verdict, outcome: &Outcome, id: Uuid, what: &str) {
    match outcome {
        Outcome::Failed(err @ Error::LockTimeout { entity_id, table: "accounts" }) if *entity_id == id => {
            verdict.expect(err.is_retryable(), || "LockTimeout is not retryable".to_owned());
        }
        other => verdict.fail(format!("{what}: expected LockTimeout, got {other:?}")),
    }
}

/// Scenario 13: writes abandoned by the caller (a dropped future, as `tokio::time::timeout` does)
/// at random points: before the lock, waiting for it, holding it, during the commit. Their outcome
/// is unknown; everything else must hold, and no entity may stay locked.
pub(crate) async fn cancelled_writes(env: Env) -> Result<Verdict, BoxError> {
    const TASKS: usize = 8;
    const ENTITIES: usize = 4;
    let per_task = env.scaled(150);
    let mut verdict = Verdict::new(&format!(
        "{TASKS} tasks x {per_task} writes through a pool, each abandoned after 0-2x the recent latency: unknown outcomes only, \
         no lost ack, no entity left locked"
    ));
    let mut history = History::new();
    let mut ids = Vec::new();
    for i in 0..ENTITIES {
        let v = history.push(reliability::insert(&env.pool, format!("init-{i}"), 0).await);
        ids.push(v.ok_or("insert failed")?.entity_id);
    }
    let pool = env.pool(TASKS as u32).await?;
    let mut handles = Vec::new();
    for t in 0..TASKS {
        let (pool, ids) = (pool.clone(), ids.clone());
        handles.push(tokio::spawn(async move {
            let mut rng = reliability::Rng::new(0xD000 + t as u64);
            let mut latency = Duration::from_millis(5);
            let mut ops = Vec::new();
            for i in 0..per_task {
                let entity = ids[rng.index(ids.len())];
                let kind = match rng.below(100) {
                    0..50 => Kind::Modify { delta: 1 },
                    50..70 => Kind::Update { balance: rng.below(1000) as i64 },
                    70..85 => Kind::UpdateIfVersion { expected: 1 + rng.below(40) as i64, balance: 5 },
                    85..92 => Kind::Delete,
                    _ => Kind::Undelete,
                };
                let tag = format!("t{t}-op{i}");
                // A budget between 0 and twice the recent latency: about half the writes are
                // abandoned, at every stage, however fast or loaded the machine is.
                let budget = Duration::from_micros(rng.below(2 * latency.as_micros() as u64 + 1));
                let started = Instant::now();
                let op =
                    match tokio::time::timeout(budget, reliability::write(&pool, entity, kind, tag.clone()))
                        .await
                    {
                        Ok(op) => {
                            latency = (latency * 4 + started.elapsed()) / 5;
                            op
                        }
                        Err(_) => {
                            latency = latency * 5 / 4;
                            reliability::Op {
                                entity: Some(entity),
                                kind,
                                tag,
                                group: None,
                                outcome: Outcome::Unknown(format!(
                                    "abandoned by the caller after {budget:?}"
                                )),
                            }
                        }
                    };
                ops.push(op);
            }
            ops
        }));
    }
    for handle in handles {
        history.extend(handle.await?);
    }
    // Returning the abandoned connections flushes their rollbacks; wait for all of them.
    tokio::time::timeout(Duration::from_secs(30), pool.close())
        .await
        .map_err(|_| "the pool did not close")?;
    let abandoned: Vec<&str> =
        history.ops.iter().filter(|op| op.outcome.is_unknown()).map(|op| op.tag.as_str()).collect();
    let rows = reliability::stored_rows(&env.pool).await?;
    let landed = rows.iter().filter(|r| abandoned.contains(&r.owner.as_str())).count();
    verdict.count(format!(
        "{} abandoned ({landed} of them stored anyway, as allowed), {} acknowledged",
        abandoned.len(),
        history.acknowledged()
    ));
    verdict.expect(!abandoned.is_empty(), || "no write was abandoned".to_owned());
    for (i, id) in ids.iter().enumerate() {
        let mut conn = impatient(&env, "2s").await?;
        let op = reliability::write(&mut conn, *id, Kind::Undelete, format!("after-undelete-{i}")).await;
        history.push(op);
        let op = reliability::write(&mut conn, *id, Kind::Modify { delta: 1 }, format!("after-{i}")).await;
        verdict.expect(op.outcome.is_ok(), || {
            format!("entity {i} after the abandoned writes: {:?}", op.outcome)
        });
        history.push(op);
    }

    // A dedicated connection (no pool) abandoned while waiting for the lock: once the holder
    // commits, that connection's session takes the lock; its rollback is only queued.
    let id = history
        .push(reliability::insert(&env.pool, "dedicated-init", 0).await)
        .ok_or("insert failed")?
        .entity_id;
    let mut holder = env.connect().await?;
    let mut holder_tx = holder.begin().await?;
    let held = reliability::write(&mut *holder_tx, id, Kind::Modify { delta: 1 }, "dedicated-holder").await;
    let mut dedicated = env.connect().await?;
    let pid = backend_pid(&mut dedicated).await?;
    {
        let write = reliability::write(&mut dedicated, id, Kind::Modify { delta: 1 }, "dedicated-abandoned");
        tokio::pin!(write);
        tokio::select! {
            op = &mut write => verdict.fail(format!("a write finished while another transaction held the lock: {:?}", op.outcome)),
            waiting = wait_for_lock_wait(&env.pool, pid) => waiting?,
        }
        // The write future is dropped here, while its session waits for the lock.
    }
    history.push(reliability::Op {
        entity: Some(id),
        kind: Kind::Modify { delta: 1 },
        tag: "dedicated-abandoned".into(),
        group: None,
        outcome: Outcome::Unknown("abandoned while waiting for the lock".into()),
    });
    let end = TxEnd::of_commit(holder_tx.commit().await);
    let group = history.group();
    history.settle(group, vec![held], &end);
    tokio::time::sleep(Duration::from_millis(50)).await;
    let mut other = impatient(&env, "500ms").await?;
    let probe = reliability::write(&mut other, id, Kind::Modify { delta: 1 }, "dedicated-probe").await;
    let state: Option<String> = sqlx::query_scalar("SELECT state FROM pg_stat_activity WHERE pid = $1")
        .bind(pid)
        .fetch_optional(&env.pool)
        .await?;
    // A known limitation of client-side cancellation (documented on `Immutable`): sqlx only queues the
    // ROLLBACK of a dropped future's transaction; a dedicated connection keeps the lock until its
    // next use, a pooled one releases it on return.
    verdict.count(format!(
        "abandoned dedicated waiter (session {state:?}): next write {} (documented limitation)",
        match probe.outcome.error() {
            Some(err) => reliability::error_name(err),
            None => format!("version {:?}", probe.outcome.version().map(|v| v.version)),
        }
    ));
    history.push(probe);
    // Using the connection again flushes the queued rollback and frees the lock.
    sqlx::query("SELECT 1").execute(&mut dedicated).await?;
    let after = reliability::write(&mut other, id, Kind::Modify { delta: 1 }, "dedicated-after").await;
    verdict.expect(after.outcome.is_ok(), || {
        format!("write after the dedicated connection was reused: {:?}", after.outcome)
    });
    history.push(after);

    verdict.report = Some(reliability::check(&env.pool, &history).await?);
    Ok(verdict)
}
