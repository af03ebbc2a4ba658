// The derive refuses generics; the stub impl it emits next to the error keeps the code that uses
// the type free of further errors.
use immu_core::Immutable;

#[derive(Immutable)]
struct Wrapper<T> {
    value: T,
}

async fn read(pool: &sqlx::PgPool, id: uuid::Uuid) -> immu_core::Result<i64> {
    let wrapper = Wrapper::<i64>::find(pool, id).await?;
    Ok(wrapper.value)
}

fn main() {
    let _ = read;
}
