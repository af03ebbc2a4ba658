//! Review of the change feed and the ledger (branch review-feed): each test is a finding (fails
//! on the reviewed commit) or a guarantee that was attacked and held (passes).

use std::collections::BTreeSet;
use std::time::Duration;

use immu_core::feed::{Change, ChangeKind, FeedError};
use immu_core::{Cursor, Error, Immutable};
use immu_tests::harness::{APP_ROLE, Db, TestResult, grant_application_role};
use immu_tests::models::Account;
use sqlx::{Acquire, Connection, PgPool};
use uuid::Uuid;

immu_tests::tests![
    // Findings (fail on the reviewed commit).
    feed_review_batch_size_usize_max_delivers_everything,
    feed_review_a_pool_of_one_connection_follows_live_writes,
    feed_review_two_feeds_on_a_pool_of_two_follow_live_writes,
    feed_review_an_import_at_minus_infinity_does_not_block_the_feed,
    feed_review_the_feed_refuses_a_shadow_table_on_the_search_path,
    feed_review_cursor_now_in_a_writing_transaction_delivers_its_writes,
    // Attacked, and held.
    feed_review_a_rolled_back_savepoint_is_never_delivered,
    feed_review_one_transaction_many_entities_and_kinds,
    feed_review_a_mid_batch_cursor_resumes_exactly,
    feed_review_fuzzed_cursors_are_typed_errors,
    feed_review_dropping_a_waiting_feed_frees_its_connection,
    feed_review_an_upcasting_entity_is_fed_in_its_new_shape,
    feed_review_an_import_is_delivered_once,
    feed_review_verify_table_takes_quoted_and_qualified_names,
    feed_review_verify_or_digest_in_a_callers_transaction_keeps_it_atomic,
    feed_review_the_readme_example_reports_a_removed_entity,
    feed_review_a_restored_history_ahead_of_the_cluster_is_not_redelivered,
    feed_review_poll_interval_max_still_follows,
    feed_review_stress_exactly_once_with_savepoints_and_restarts,
];

const HANG: Duration = Duration::from_secs(60);

use immu_tests::drain;

fn keys(changes: &[Change<Account>]) -> Vec<(Uuid, i64)> {
    changes.iter().map(|c| (c.entity_id, c.version)).collect()
}

async fn stored(pool: &PgPool) -> sqlx::Result<BTreeSet<(Uuid, i64)>> {
    let rows: Vec<(Uuid, i64)> =
        sqlx::query_as("SELECT entity_id, version FROM accounts").fetch_all(pool).await?;
    Ok(rows.into_iter().collect())
}

// ---------------------------------------------------------------------------------------------
// Findings
// ---------------------------------------------------------------------------------------------

/// `batch_size(usize::MAX)` ("no limit") overflows `self.batch_size + 1` in `Feed::statement`:
/// a panic in a debug build; in a release build the sum wraps to 0, the read runs with
/// `LIMIT 0`, returns an empty batch whose cursor is the read's whole snapshot, and every
/// version of the interval is skipped, silently.
async fn feed_review_batch_size_usize_max_delivers_everything(db: Db) -> TestResult {
    for i in 0..3 {
        Account::insert(&db.pool, Account::new("max", i)).await?;
    }
    let pool = db.pool.clone();
    // In a task, so that the panic of a debug build is reported as this test's failure.
    let got = tokio::spawn(async move {
        let mut feed = Account::feed(&pool).batch_size(usize::MAX);
        drain(&mut feed).await.map(|c| keys(&c))
    })
    .await
    .map_err(|e| format!("the feed panicked with batch_size(usize::MAX): {e}"))??;
    assert_eq!(got.into_iter().collect::<BTreeSet<_>>(), stored(&db.pool).await?);
    Ok(())
}

/// The feed's listener takes a connection of the feed's pool (`PgListener::connect_with`) and
/// keeps it for the feed's life; with a pool of one connection, the read it wakes for waits for a
/// connection that never comes back: `PoolTimedOut` after the pool's acquire timeout (30 s), on
/// every call. A pool of 1 is what a small consumer process (or a test) naturally uses.
async fn feed_review_a_pool_of_one_connection_follows_live_writes(db: Db) -> TestResult {
    let one = db.pool(1).await?;
    let mut feed = Account::feed(&one);
    assert!(drain(&mut feed).await?.is_empty());
    let waiting = tokio::spawn(async move {
        let batch = feed.next_batch().await;
        (feed, batch)
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    let a = Account::insert(&db.pool, Account::new("one", 1)).await?; // another pool
    let (_feed, batch) = tokio::time::timeout(HANG, waiting).await??;
    let batch = batch.map_err(|e| format!("a feed on a pool of 1 cannot read once it listens: {e:?}"))?;
    assert_eq!(keys(&batch.changes), [(a.entity_id, 1)]);
    Ok(())
}

/// The same starvation with N feeds on a pool of N: each listener holds one connection, and
/// none of the feeds (nor the application sharing the pool) can read any more.
async fn feed_review_two_feeds_on_a_pool_of_two_follow_live_writes(db: Db) -> TestResult {
    let two = db.pool(2).await?;
    let mut handles = Vec::new();
    for _ in 0..2 {
        let mut feed = Account::feed(&two).from(Cursor::now(&two).await?);
        handles.push(tokio::spawn(async move {
            let batch = feed.next_batch().await;
            (feed, batch)
        }));
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let a = Account::insert(&db.pool, Account::new("two", 1)).await?;
    for h in handles {
        let (_feed, batch) = tokio::time::timeout(HANG, h).await??;
        let batch = batch.map_err(|e| format!("two feeds on a pool of 2: {e:?}"))?;
        assert_eq!(keys(&batch.changes), [(a.entity_id, 1)]);
    }
    Ok(())
}

/// `immu.begin_import` accepts `valid_from = '-infinity'` (it is "not in the future"); no
/// `DateTime<Utc>` holds it, so every read of the feed whose page holds that version fails with a
/// decoding error, forever: the version is a poison pill that blocks the feed (and the consumer
/// cannot skip it: the cursor does not move on an error). Either the import refuses it, or the
/// feed delivers it.
async fn feed_review_an_import_at_minus_infinity_does_not_block_the_feed(db: Db) -> TestResult {
    let before = Account::insert(&db.pool, Account::new("before", 1)).await?;
    let mut feed = Account::feed(&db.pool).from(Cursor::now(&db.pool).await?);
    let mut tx = db.owner.begin().await?;
    sqlx::query("SELECT immu.begin_import('public.accounts')").execute(&mut *tx).await?;
    let imported = sqlx::raw_sql(
        "INSERT INTO public.accounts (id, entity_id, version, valid_from, owner, balance) \
         VALUES (gen_random_uuid(), gen_random_uuid(), 1, '-infinity', 'imported', 1)",
    )
    .execute(&mut *tx)
    .await;
    if let Err(e) = imported {
        eprintln!("REVIEW: -infinity import refused: {e}");
        return Ok(()); // refused: fine
    }
    sqlx::query("SELECT immu.finish_import('public.accounts')").execute(&mut *tx).await?;
    tx.commit().await?;
    let after = Account::insert(&db.pool, Account::new("after", 1)).await?;
    let got = drain(&mut feed).await.map_err(|e| {
        format!("the import of a version valid from -infinity was accepted, and the feed fails: {e:?}")
    })?;
    assert_eq!(got.len(), 2);
    assert!(keys(&got).contains(&(after.entity_id, 1)));
    let _ = before;
    Ok(())
}

/// The ledger resolves the table, refuses anything that is not a versioned table and pins
/// `search_path`; the feed reads `"accounts"` as the pool's `search_path` finds it, so a plain
/// (unversioned, trigger-less) table of the same name in a schema ahead of the real one on the
/// consumer's `search_path` is fed as if it were the history: versions nobody wrote through
/// immu, delivered as changes.
async fn feed_review_the_feed_refuses_a_shadow_table_on_the_search_path(db: Db) -> TestResult {
    Account::insert(&db.pool, Account::new("real", 1)).await?;
    let mut owner = db.connect_owner().await?;
    let dbname: String = sqlx::query_scalar("SELECT current_database()").fetch_one(&mut owner).await?;
    sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
        "CREATE SCHEMA shadow; GRANT USAGE ON SCHEMA shadow TO {APP_ROLE};
         CREATE TABLE shadow.accounts (LIKE public.accounts INCLUDING DEFAULTS);
         GRANT SELECT ON shadow.accounts TO {APP_ROLE};
         INSERT INTO shadow.accounts (id, entity_id, version, valid_from, owner, balance, immu_xid)
             VALUES (gen_random_uuid(), gen_random_uuid(), 1, now(), 'forged', 1000000, pg_current_xact_id()::text::bigint);
         ALTER DATABASE \"{dbname}\" SET search_path = shadow, public;"
    )))
    .execute(&mut owner)
    .await?;
    let pool = db.pool(2).await?; // new connections: the new search_path
    let path: String = sqlx::query_scalar("SHOW search_path").fetch_one(&pool).await?;
    assert_eq!(path, "shadow, public");
    // The ledger refuses the shadow table.
    let ledger = Account::verify(&pool).await;
    let mut feed = Account::feed(&pool);
    let fed = drain(&mut feed).await;
    match fed {
        Ok(changes) if changes.iter().any(|c| c.owner == "forged") => Err(format!(
            "the feed delivered a forged row of shadow.accounts as a change (the ledger said: {:?})",
            ledger.map(|r| r.to_string())
        )
        .into()),
        _ => Ok(()),
    }
}

/// `Cursor::now` in a transaction that has written versions: PostgreSQL leaves the transaction's
/// own id out of its snapshot's running list, so once any transaction with a later id has
/// completed (here: another writer's commit) the cursor counts the writing transaction as
/// committed, and a feed from it never delivers that transaction's versions, although they commit
/// after the cursor was taken ("only versions whose transactions commit later"). Without the other
/// writer the own id is >= xmax and the versions are delivered: the outcome depends on a race.
async fn feed_review_cursor_now_in_a_writing_transaction_delivers_its_writes(db: Db) -> TestResult {
    let mut conn = db.connect().await?;
    let mut tx = Connection::begin(&mut conn).await?;
    // Before the first write: a cursor where this transaction's state stops.
    let before = Cursor::now(&mut *tx).await?;
    let mine = Account::insert(&mut *tx, Account::new("mine", 1)).await?;
    Account::insert(&db.pool, Account::new("other", 1)).await?; // a later xid commits
    // After it: whether the transaction's own versions count as seen would depend on timing
    // (PostgreSQL leaves a transaction's own id out of its snapshot): refused.
    let err = Cursor::now(&mut *tx).await.unwrap_err();
    assert!(matches!(err, Error::Feed(immu_core::feed::FeedError::WritingTransaction)), "{err:?}");
    tx.commit().await?;
    let got = keys(&drain(&mut Account::feed(&db.pool).from(before.clone())).await?);
    assert!(got.contains(&(mine.entity_id, 1)), "{before}: {got:?}");
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Held
// ---------------------------------------------------------------------------------------------

async fn feed_review_a_rolled_back_savepoint_is_never_delivered(db: Db) -> TestResult {
    let a = Account::insert(&db.pool, Account::new("a", 1)).await?;
    let mut feed = Account::feed(&db.pool).from(Cursor::now(&db.pool).await?).batch_size(1);
    let mut conn = db.connect().await?;
    let mut tx = Connection::begin(&mut conn).await?;
    let kept = Account::insert(&mut *tx, Account::new("kept", 1)).await?;
    {
        let mut sp = Acquire::begin(&mut tx).await?;
        Account::insert(&mut *sp, Account::new("gone", 1)).await?;
        Account::modify(&mut *sp, a.entity_id, |x| x.balance = 99).await?;
        // Read while the savepoint's versions exist (uncommitted): nothing.
        assert!(drain(&mut feed).await?.is_empty());
        sp.rollback().await?;
    }
    let a2 = Account::modify(&mut *tx, a.entity_id, |x| x.balance = 2).await?;
    assert_eq!(a2.version, 2);
    tx.commit().await?;
    let got = drain(&mut feed).await?;
    let got: BTreeSet<_> = keys(&got).into_iter().collect();
    assert_eq!(got, BTreeSet::from([(kept.entity_id, 1), (a.entity_id, 2)]));
    Ok(())
}

async fn feed_review_one_transaction_many_entities_and_kinds(db: Db) -> TestResult {
    let a = Account::insert(&db.pool, Account::new("a", 1)).await?;
    let b = Account::insert(&db.pool, Account::new("b", 1)).await?;
    let cursor = Cursor::now(&db.pool).await?;
    let mut tx = db.pool.begin().await?;
    Account::modify(&mut *tx, a.entity_id, |x| x.balance = 2).await?;
    Account::delete(&mut *tx, b.entity_id).await?;
    Account::undelete(&mut *tx, b.entity_id).await?;
    Account::modify(&mut *tx, a.entity_id, |x| x.balance = 3).await?;
    Account::revert(&mut *tx, a.entity_id, 1).await?;
    Account::delete(&mut *tx, b.entity_id).await?;
    let c = Account::insert(&mut *tx, Account::new("c", 1)).await?;
    tx.commit().await?;
    for size in [1, 2, 3, 1000] {
        let got = drain(&mut Account::feed(&db.pool).from(cursor.clone()).batch_size(size)).await?;
        let kinds: Vec<(Uuid, i64, ChangeKind)> =
            got.iter().map(|c| (c.entity_id, c.version, c.kind)).collect();
        let mut expected = vec![
            (a.entity_id, 2, ChangeKind::Updated),
            (a.entity_id, 3, ChangeKind::Updated),
            (a.entity_id, 4, ChangeKind::Reverted),
            (b.entity_id, 2, ChangeKind::Deleted),
            (b.entity_id, 3, ChangeKind::Undeleted),
            (b.entity_id, 4, ChangeKind::Deleted),
            (c.entity_id, 1, ChangeKind::Inserted),
        ];
        expected.sort_by_key(|(e, v, _)| (*e, *v));
        assert_eq!(kinds, expected, "batch size {size}");
    }
    Ok(())
}

async fn feed_review_a_mid_batch_cursor_resumes_exactly(db: Db) -> TestResult {
    let mut tx = db.pool.begin().await?;
    for i in 0..7 {
        Account::insert(&mut *tx, Account::new("m", i)).await?;
    }
    tx.commit().await?;
    let mut feed = Account::feed(&db.pool).batch_size(5);
    let first = feed.next_batch().await?;
    assert_eq!(first.len(), 5);
    // The consumer stored the cursor of the 3rd change, and crashed.
    let stored_text = first.changes[2].cursor.to_string();
    drop(feed);
    // Concurrent writes meanwhile.
    let extra = Account::insert(&db.pool, Account::new("extra", 0)).await?;
    let rest = drain(&mut Account::feed(&db.pool).from(stored_text.parse()?).batch_size(2)).await?;
    let mut all = keys(&first.changes[..3]);
    all.extend(keys(&rest));
    let set: BTreeSet<_> = all.iter().copied().collect();
    assert_eq!(set.len(), all.len(), "a duplicate");
    assert_eq!(set, stored(&db.pool).await?);
    assert_eq!(rest.last().map(|c| c.entity_id), Some(extra.entity_id), "the later interval comes last");
    Ok(())
}

async fn feed_review_fuzzed_cursors_are_typed_errors(db: Db) -> TestResult {
    let mut tx = db.pool.begin().await?;
    for i in 0..3 {
        Account::insert(&mut *tx, Account::new("f", i)).await?;
    }
    tx.commit().await?;
    let changes = drain(&mut Account::feed(&db.pool).batch_size(1)).await?;
    let mut seeds: Vec<String> = changes.iter().map(|c| c.cursor.to_string()).collect();
    seeds.push(Cursor::beginning().to_string());
    let alphabet: Vec<char> = "v1/:,-+0123456789abcdef beginning\u{e9}\u{0}".chars().collect();
    let mut state: u64 = 0x9e37_79b9_7f4a_7c15;
    let mut next = move || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state
    };
    let mut parsed = 0;
    for round in 0..20_000 {
        let seed = &seeds[round % seeds.len()];
        let mut chars: Vec<char> = seed.chars().collect();
        for _ in 0..=(next() % 4) {
            let pos = (next() as usize) % (chars.len() + 1);
            match next() % 3 {
                0 if pos < chars.len() => {
                    chars.remove(pos);
                }
                1 if pos < chars.len() => chars[pos] = alphabet[(next() as usize) % alphabet.len()],
                _ => chars.insert(pos, alphabet[(next() as usize) % alphabet.len()]),
            }
        }
        let text: String = chars.into_iter().collect();
        let result = std::panic::catch_unwind(|| text.parse::<Cursor>());
        match result {
            Err(_) => return Err(format!("parsing {text:?} panicked").into()),
            Ok(Err(Error::Feed(FeedError::InvalidCursor { .. }))) => {}
            Ok(Err(other)) => return Err(format!("{text:?}: untyped error {other:?}").into()),
            Ok(Ok(cursor)) => {
                parsed += 1;
                // A cursor that parses round-trips...
                assert_eq!(cursor.to_string().parse::<Cursor>()?, cursor, "{text:?}");
                // ...and a read from it is Ok or a typed error, never a panic (a few of them).
                if parsed % 200 == 0 {
                    match Account::feed(&db.pool).from(cursor).read_batch().await {
                        Ok(_) | Err(Error::Feed(FeedError::CursorAhead { .. })) => {}
                        Err(other) => return Err(format!("{text:?}: read {other:?}").into()),
                    }
                }
            }
        }
    }
    // Extremes.
    let huge: Cursor = format!("v1/{0}:{0}:", u64::MAX).parse()?;
    assert!(matches!(
        Account::feed(&db.pool).from(huge).read_batch().await,
        Err(Error::Feed(FeedError::CursorAhead { .. }))
    ));
    Ok(())
}

async fn feed_review_dropping_a_waiting_feed_frees_its_connection(db: Db) -> TestResult {
    let two = db.pool(2).await?;
    let mut feed = Account::feed(&two).from(Cursor::now(&two).await?);
    // Starts listening, then gives up waiting.
    assert!(tokio::time::timeout(Duration::from_millis(700), feed.next_batch()).await.is_err());
    drop(feed);
    tokio::time::sleep(Duration::from_millis(300)).await;
    // Both connections can be had, and none listens any more.
    let mut c1 = tokio::time::timeout(Duration::from_secs(5), two.acquire()).await??;
    let mut c2 = tokio::time::timeout(Duration::from_secs(5), two.acquire()).await??;
    for c in [&mut c1, &mut c2] {
        let channels: Vec<String> =
            sqlx::query_scalar("SELECT pg_listening_channels()").fetch_all(&mut **c).await?;
        assert!(channels.is_empty(), "still listening on {channels:?}");
    }
    // And the stream too.
    drop((c1, c2));
    let stream = Account::feed(&two).from(Cursor::now(&two).await?).into_stream();
    let mut stream = Box::pin(stream);
    let _ =
        tokio::time::timeout(Duration::from_millis(700), futures_util::StreamExt::next(&mut stream)).await;
    drop(stream);
    tokio::time::sleep(Duration::from_millis(300)).await;
    let _c1 = tokio::time::timeout(Duration::from_secs(5), two.acquire()).await??;
    let _c2 = tokio::time::timeout(Duration::from_secs(5), two.acquire()).await??;
    Ok(())
}

/// A person as first written: one `name`.
#[derive(Debug, Clone, PartialEq, Immutable)]
#[immu(table = "people")]
struct PersonV1 {
    name: String,
}

/// Since the name was split.
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

async fn migrate(db: &Db, sql: &str) -> TestResult {
    let mut owner = db.connect_owner().await?;
    sqlx::raw_sql(sqlx::AssertSqlSafe(sql.to_owned())).execute(&mut owner).await?;
    grant_application_role(&mut owner, APP_ROLE).await?;
    Ok(())
}

async fn feed_review_an_upcasting_entity_is_fed_in_its_new_shape(db: Db) -> TestResult {
    migrate(&db, &immu_core::schema::create_table::<PersonV1>()?).await?;
    let ada = PersonV1::insert(&db.pool, PersonV1 { name: "Ada Byron".into() }).await?;
    PersonV1::delete(&db.pool, ada.entity_id).await?;
    migrate(
        &db,
        "ALTER TABLE people ADD COLUMN first_name text, ADD COLUMN last_name text, ALTER COLUMN name DROP NOT NULL;
         SELECT immu.sync_versioning('people');",
    )
    .await?;
    Person::undelete(&db.pool, ada.entity_id).await?;
    Person::modify(&db.pool, ada.entity_id, |p| p.last_name = "Lovelace".into()).await?;
    let mut feed = Person::feed(&db.pool).batch_size(2);
    let mut got = Vec::new();
    loop {
        let batch = feed.read_batch().await?;
        if batch.is_empty() {
            break;
        }
        got.extend(
            batch.changes.into_iter().map(|c| (c.version, c.kind, c.first_name.clone(), c.last_name.clone())),
        );
    }
    assert_eq!(
        got,
        [
            (1, ChangeKind::Inserted, "Ada".to_owned(), "Byron".to_owned()),
            (2, ChangeKind::Deleted, "Ada".to_owned(), "Byron".to_owned()),
            (3, ChangeKind::Undeleted, "Ada".to_owned(), "Byron".to_owned()),
            (4, ChangeKind::Updated, "Ada".to_owned(), "Lovelace".to_owned()),
        ]
    );
    Ok(())
}

async fn feed_review_an_import_is_delivered_once(db: Db) -> TestResult {
    let mut feed = Account::feed(&db.pool).from(Cursor::now(&db.pool).await?).batch_size(1);
    let entity = Uuid::now_v7();
    let mut tx = db.owner.begin().await?;
    sqlx::query("SELECT immu.begin_import('public.accounts')").execute(&mut *tx).await?;
    sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
        "INSERT INTO public.accounts (id, entity_id, version, valid_from, deleted_at, owner, balance) VALUES
           (gen_random_uuid(), '{entity}', 1, '2001-01-01Z', NULL, 'old', 1),
           (gen_random_uuid(), '{entity}', 2, '2002-01-01Z', '2002-01-01Z', 'old', 1),
           (gen_random_uuid(), '{entity}', 3, '2003-01-01Z', NULL, 'old', 1)"
    )))
    .execute(&mut *tx)
    .await?;
    sqlx::query("SELECT immu.finish_import('public.accounts')").execute(&mut *tx).await?;
    tx.commit().await?;
    let got: Vec<(i64, ChangeKind)> = drain(&mut feed).await?.iter().map(|c| (c.version, c.kind)).collect();
    assert_eq!(got, [(1, ChangeKind::Inserted), (2, ChangeKind::Deleted), (3, ChangeKind::Undeleted)]);
    Ok(())
}

async fn feed_review_verify_table_takes_quoted_and_qualified_names(db: Db) -> TestResult {
    use immu_core::ledger::{digest_table, verify_table};
    Account::insert(&db.pool, Account::new("v", 1)).await?;
    let digest = Account::digest(&db.pool).await?;
    for name in ["accounts", "public.accounts", "\"accounts\"", "public.\"accounts\"", digest.table.as_str()]
    {
        let report = verify_table(&db.pool, name).against(&digest).await?;
        assert!(report.is_intact(), "{name}: {report}");
    }
    let d2 = digest_table(&db.pool, "public.\"accounts\"").await?;
    assert_eq!(d2.table, digest.table);
    // Not a versioned table: a typed refusal.
    assert!(verify_table(&db.pool, "accounts_current").await.is_err());
    assert!(verify_table(&db.pool, "nope").await.is_err());
    assert!(verify_table(&db.pool, "a\"b; DROP TABLE accounts").await.is_err());
    let n: i64 = sqlx::query_scalar("SELECT count(*) FROM accounts").fetch_one(&db.pool).await?;
    assert_eq!(n, 1);
    Ok(())
}

/// `T::verify` and `T::digest` take any `Acquire`, so a caller's transaction compiles
/// (`&mut *tx`). There, their `begin_with("BEGIN ISOLATION LEVEL REPEATABLE READ, READ ONLY")`
/// fails with sqlx's `InvalidSavePointStatement`, and the failed `Transaction` (dropped `open`)
/// queues a ROLLBACK of the caller's transaction: everything the caller wrote before is gone,
/// and what it writes after autocommits statement by statement; the caller's own
/// `commit()`/`rollback()` then do nothing. Silent loss of atomicity, and of data.
async fn feed_review_verify_or_digest_in_a_callers_transaction_keeps_it_atomic(db: Db) -> TestResult {
    for (what, commit) in [("verify", true), ("digest", true), ("verify", false), ("digest", false)] {
        let mut conn = db.connect().await?;
        let mut tx = Connection::begin(&mut conn).await?;
        let before = Account::insert(&mut *tx, Account::new("before", 1)).await?;
        let result = match what {
            "verify" => Account::verify(&mut *tx).await.map(|r| r.to_string()),
            _ => Account::digest(&mut *tx).await.map(|d| d.to_string()),
        };
        let after = Account::insert(&mut *tx, Account::new("after", 1)).await?;
        if commit {
            tx.commit().await?;
        } else {
            tx.rollback().await?;
        }
        let exists = |id| {
            let pool = db.pool.clone();
            async move { Account::find(&pool, id).await.is_ok() }
        };
        let (b, a) = (exists(before.entity_id).await, exists(after.entity_id).await);
        assert_eq!(
            (b, a),
            (commit, commit),
            "{what} in the caller's transaction returned {result:?}; the caller then {}: its write before {what} \
             exists: {b}, its write after {what} exists: {a}",
            if commit { "committed" } else { "rolled back" }
        );
    }
    Ok(())
}

/// The README's "Proving history" example reports tampering only through `report.breaks`; a whole
/// entity removed by a superuser (history and projection rows) leaves every remaining chain
/// intact, so `breaks` is empty and the example prints nothing although `is_intact()` is false
/// (the digest's root does not match). Either list it as a break, or have the README print the
/// report (`eprintln!("{report}")`).
async fn feed_review_the_readme_example_reports_a_removed_entity(db: Db) -> TestResult {
    let a = Account::insert(&db.pool, Account::new("kept", 1)).await?;
    let gone = Account::insert(&db.pool, Account::new("gone", 1)).await?;
    Account::modify(&db.pool, a.entity_id, |x| x.balance = 2).await?;
    let digest: immu_core::ledger::Digest = Account::digest(&db.pool).await?.to_string().parse()?;
    db.tamper(
        "accounts",
        &format!(
            "DELETE FROM accounts WHERE entity_id = '{0}'; DELETE FROM accounts_current WHERE entity_id = '{0}'",
            gone.entity_id
        ),
    )
    .await?;
    let report = Account::verify(&db.pool).against(&digest).await?;
    assert!(!report.is_intact(), "{report}");
    // What the README example prints: the report, which names the digest's mismatch and its counts.
    let printed = report.to_string();
    assert!(
        printed.contains("DOES NOT MATCH") && printed.contains("it covered 3 versions of 2 entities"),
        "{printed}"
    );
    Ok(())
}

/// `poll_interval(Duration::MAX)` (never poll, rely on notifications) must not overflow.
async fn feed_review_poll_interval_max_still_follows(db: Db) -> TestResult {
    let pool = db.pool(3).await?;
    let mut feed = Account::feed(&pool).from(Cursor::now(&pool).await?).poll_interval(Duration::MAX);
    let waiting = tokio::spawn(async move { feed.next_batch().await.map(|b| keys(&b.changes)) });
    tokio::time::sleep(Duration::from_millis(300)).await;
    let a = Account::insert(&db.pool, Account::new("max", 1)).await?;
    let got = tokio::time::timeout(HANG, waiting).await???;
    assert_eq!(got, [(a.entity_id, 1)]);
    Ok(())
}

/// Stress: 6 writers (multi-entity transactions, rolled-back savepoints, whole transactions
/// rolled back, transactions held open across others' commits) while a consumer reads in tiny
/// batches, keeps only a random prefix of each batch, "crashes" and resumes from the cursor of
/// the last change it kept. Every committed version exactly once, each entity in version order.
async fn feed_review_stress_exactly_once_with_savepoints_and_restarts(db: Db) -> TestResult {
    let mut ids = Vec::new();
    for i in 0..6 {
        ids.push(Account::insert(&db.pool, Account::new("s", i)).await?.entity_id);
    }
    let writers_pool = db.pool(8).await?;
    let stop = std::time::Instant::now() + Duration::from_secs(6);
    let mut writers = Vec::new();
    for w in 0..6u64 {
        let pool = writers_pool.clone();
        let ids = ids.clone();
        writers.push(tokio::spawn(async move {
            let mut seed = w * 7919 + 1;
            let mut rnd = move || {
                seed = seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
                seed >> 33
            };
            while std::time::Instant::now() < stop {
                let mut tx = pool.begin().await?;
                let r: Result<(), Box<dyn std::error::Error + Send + Sync>> = async {
                    for _ in 0..(1 + rnd() % 3) {
                        match rnd() % 4 {
                            0 => {
                                Account::insert(&mut *tx, Account::new("n", 0)).await?;
                            }
                            1 => {
                                let mut sp = Acquire::begin(&mut tx).await?;
                                Account::insert(&mut *sp, Account::new("sp", 0)).await?;
                                if rnd() % 2 == 0 {
                                    sp.rollback().await?;
                                } else {
                                    sp.commit().await?;
                                }
                            }
                            _ => {
                                let id = ids[(rnd() % ids.len() as u64) as usize];
                                Account::modify(&mut *tx, id, |a| a.balance += 1).await?;
                            }
                        }
                    }
                    if rnd() % 5 == 0 {
                        tokio::time::sleep(Duration::from_millis(rnd() % 30)).await; // commits late
                    }
                    Ok(())
                }
                .await;
                // A deadlock between two writers' entity orders: rolled back, as an application would.
                if r.is_err() || rnd() % 7 == 0 {
                    tx.rollback().await?;
                } else {
                    tx.commit().await?;
                }
            }
            Ok::<(), Box<dyn std::error::Error + Send + Sync>>(())
        }));
    }
    let mut got: Vec<(Uuid, i64)> = Vec::new();
    let mut cursor = Cursor::beginning();
    let mut rnd_state = 12345u64;
    let done =
        |w: &Vec<tokio::task::JoinHandle<_>>| w.iter().all(|h: &tokio::task::JoinHandle<_>| h.is_finished());
    loop {
        let finished = done(&writers);
        let mut feed = Account::feed(&db.pool).from(cursor.clone()).batch_size(3);
        let batch = feed.read_batch().await?;
        if batch.is_empty() {
            if finished {
                break;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
            cursor = batch.cursor;
            continue;
        }
        rnd_state = rnd_state.wrapping_mul(6364136223846793005).wrapping_add(1);
        let keep = 1 + (rnd_state >> 33) as usize % batch.len();
        for c in &batch.changes[..keep] {
            got.push((c.entity_id, c.version));
        }
        // Through the text form, as a consumer stores it.
        cursor = batch.changes[keep - 1].cursor.to_string().parse()?;
    }
    for w in writers {
        w.await?.map_err(|e| e.to_string())?;
    }
    // A final drain after everything committed.
    got.extend(keys(&drain(&mut Account::feed(&db.pool).from(cursor)).await?));
    let set: BTreeSet<_> = got.iter().copied().collect();
    assert_eq!(set.len(), got.len(), "a version delivered twice");
    let mut last = std::collections::BTreeMap::new();
    for (e, v) in &got {
        let before = last.insert(*e, *v).unwrap_or(0);
        assert!(before < *v, "{e}: v{v} after v{before}");
    }
    let all = stored(&db.pool).await?;
    let missing: Vec<_> = all.difference(&set).collect();
    assert!(missing.is_empty(), "missed {} of {}: {missing:?}", missing.len(), all.len());
    assert_eq!(set, all);
    eprintln!("REVIEW stress: {} versions delivered exactly once", got.len());
    Ok(())
}

/// A history restored (`pg_dump`) into a cluster whose transaction counter is behind the source's
/// keeps its `immu_xid` values, ahead of every snapshot here (simulated: the superuser moves one
/// entity's `immu_xid` a million ahead, triggers off, as a restore leaves them). The feed's
/// recovery advice for that case ("start again from `Cursor::beginning`") then delivers those
/// versions in the first read, and again in every later read (`immu_xid >= cursor.xmax`) until the
/// counter passes them: duplicates without end (`drain` never returns). The ledger refuses this
/// state (`refuse_foreign_transactions`); the feed should too (or treat `immu_xid >=` the read's
/// `xmax` as seen by every cursor taken after it was first delivered).
async fn feed_review_a_restored_history_ahead_of_the_cluster_is_not_redelivered(db: Db) -> TestResult {
    let a = Account::insert(&db.pool, Account::new("restored", 1)).await?;
    let b = Account::insert(&db.pool, Account::new("plain", 1)).await?;
    db.tamper(
        "accounts",
        &format!("UPDATE accounts SET immu_xid = immu_xid + 1000000 WHERE entity_id = '{}'", a.entity_id),
    )
    .await?;
    let mut feed = Account::feed(&db.pool);
    let mut deliveries = Vec::new();
    for _ in 0..5 {
        match feed.read_batch().await {
            Ok(batch) => deliveries.extend(keys(&batch.changes)),
            Err(Error::Feed(_)) => return Ok(()), // refused: fine
            Err(other) => return Err(format!("{other:?}").into()),
        }
        // Other transactions move the counter, as any live cluster does.
        Account::modify(&db.pool, b.entity_id, |x| x.balance += 1).await?;
    }
    let of_a = deliveries.iter().filter(|(e, _)| *e == a.entity_id).count();
    assert_eq!(of_a, 1, "version 1 of the restored entity delivered {of_a} times in 5 reads: {deliveries:?}");
    Ok(())
}
