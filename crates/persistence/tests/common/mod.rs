//! Shared by the persistence tests: a fresh, migrated database per test.

#![allow(clippy::unwrap_used, dead_code)]

pub async fn migrated_pool() -> persistence::Pool {
    let (_, pool) = persistence::testing::migrated_database(16).await.unwrap();
    // Applying the migrations again is a no-op.
    persistence::run_migrations(&pool).await.unwrap();
    pool
}

pub fn money(s: &str) -> domain::Money {
    domain::Money::parse(s).unwrap()
}

/// A new user with `balance` credited through the ledger (so the books balance).
pub async fn user_with_balance(pool: &persistence::Pool, balance: &str) -> i64 {
    use persistence::ledger::{self, BalanceChange};
    let mut conn = pool.get().await.unwrap();
    let email = format!("{}@x.io", uuid::Uuid::new_v4().simple());
    let user = persistence::users::insert(
        &mut conn,
        persistence::users::NewUser {
            email: &email,
            password_hash: "h",
            role: "user",
        },
    )
    .await
    .unwrap();
    ledger::apply(
        &mut conn,
        BalanceChange {
            user_id: user.id,
            delta: &money(balance),
            kind: domain::LedgerKind::Topup,
            reference: &format!("seed-{}", user.id),
            note: None,
            actor_user_id: None,
        },
    )
    .await
    .unwrap();
    user.id
}

/// Every balance equals its ledger and every hold total its open holds.
pub async fn books_balance(pool: &persistence::Pool) {
    let mut conn = pool.get().await.unwrap();
    let mismatches = persistence::billing::reconcile(&mut conn).await.unwrap();
    assert!(
        mismatches.is_empty(),
        "books do not balance: {mismatches:?}"
    );
}

/// Runs the hold-expiry sweep (up to 100 holds); returns how many it released.
pub async fn release_expired(conn: &mut persistence::AsyncPgConnection) -> usize {
    persistence::billing::release_expired_holds(conn, 0, 100)
        .await
        .unwrap()
}
