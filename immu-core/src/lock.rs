//! The per-entity write lock: a transaction-scoped PostgreSQL advisory lock keyed on the table and
//! the entity. The write path takes it inside the table's `<table>_immu_latest` function (see
//! [`write`](crate::write)), with the key computed here.

use uuid::Uuid;

/// The 64-bit key of the advisory lock that serializes writes to one entity of one table.
///
/// It is FNV-1a (64 bit) over the table name's bytes, a zero byte, then the entity id's 16 bytes,
/// as a signed integer. The algorithm is fixed: every process computing it agrees, so your own
/// SQL can join the queue of immu's writers:
///
/// ```no_run
/// # async fn demo(tx: &mut sqlx::PgConnection, entity_id: uuid::Uuid) -> sqlx::Result<()> {
/// let key = immu_core::lock_key("accounts", entity_id);
/// sqlx::query("SELECT pg_advisory_xact_lock($1)").bind(key).execute(&mut *tx).await?;
/// # Ok(()) }
/// ```
pub fn lock_key(table: &str, entity_id: Uuid) -> i64 {
    const OFFSET: u64 = 0xcbf2_9ce4_8422_2325;
    const PRIME: u64 = 0x0000_0100_0000_01b3;
    let bytes = table.bytes().chain([0]).chain(entity_id.as_bytes().iter().copied());
    let hash = bytes.fold(OFFSET, |hash, byte| (hash ^ u64::from(byte)).wrapping_mul(PRIME));
    i64::from_ne_bytes(hash.to_ne_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_is_stable_and_namespaced_by_table() {
        let id = Uuid::from_u128(0x0192_3e4f_5a6b_7c8d_9e0f_1a2b_3c4d_5e6f);
        // Pinned: changing the algorithm would let old and new processes write concurrently.
        assert_eq!(lock_key("accounts", id), lock_key("accounts", id));
        assert_eq!(lock_key("accounts", id), 8_048_914_266_009_531_975);
        assert_ne!(lock_key("accounts", id), lock_key("customers", id));
        assert_ne!(lock_key("accounts", id), lock_key("accounts", Uuid::nil()));
    }
}
