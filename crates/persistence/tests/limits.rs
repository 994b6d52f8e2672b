//! The shared counters of limits against a real Postgres: rate windows lent out in slices never
//! exceed their limit under concurrent borrowers, a dead process's concurrency slots stop
//! counting at their deadline, and a spend limit holds against racing reservations.

#![allow(clippy::unwrap_used)]

use chrono::{Duration, TimeZone, Utc};
use persistence::limits::{self, Capped, LimitValues, Period, Reserve, Scope, SpendCap, Unit};
use uuid::Uuid;

mod common;

use common::{money, user_with_balance};

#[tokio::test(flavor = "multi_thread")]
async fn concurrent_borrowers_never_get_more_than_the_window_allows() {
    let pool = common::migrated_pool().await;
    let window = Utc.timestamp_opt(1_800_000_000, 0).single().unwrap();
    // 8 "replicas" borrowing slices of 1 to 7 until the window is spent.
    let borrowers = (0..8).map(|i| {
        let pool = pool.clone();
        async move {
            let mut conn = pool.get().await.unwrap();
            let mut got = 0;
            loop {
                let want = 1 + (i % 7);
                let borrowed = limits::borrow_rate(
                    &mut conn,
                    Scope::Key,
                    42,
                    Unit::Requests,
                    window,
                    1,
                    want,
                    100,
                )
                .await
                .unwrap();
                if borrowed.granted == 0 {
                    assert_eq!(borrowed.used, 100);
                    return got;
                }
                assert!(borrowed.granted <= want && borrowed.used <= 100);
                got += borrowed.granted;
            }
        }
    });
    let total: i64 = futures_util::future::join_all(borrowers).await.iter().sum();
    assert_eq!(total, 100, "every unit lent once, none twice");
    // Another window, another subject or unit: counted apart.
    let mut conn = pool.get().await.unwrap();
    let next = window + Duration::minutes(1);
    let fresh = limits::borrow_rate(&mut conn, Scope::Key, 42, Unit::Requests, next, 5, 5, 100)
        .await
        .unwrap();
    assert_eq!((fresh.granted, fresh.used), (5, 5));
    let tokens = limits::borrow_rate(&mut conn, Scope::Key, 42, Unit::Tokens, window, 50, 50, 100)
        .await
        .unwrap();
    assert_eq!(tokens.granted, 50);
    // A need larger than what is left is refused whole, not granted in part.
    let big = limits::borrow_rate(&mut conn, Scope::Key, 42, Unit::Tokens, window, 60, 60, 100)
        .await
        .unwrap();
    assert_eq!(big.granted, 0);
}

#[tokio::test(flavor = "multi_thread")]
async fn slots_of_a_dead_process_stop_counting_at_their_deadline() {
    let pool = common::migrated_pool().await;
    let mut conn = pool.get().await.unwrap();
    // A process died holding a slot whose call's deadline has passed: it no longer counts.
    let dead = Uuid::new_v4();
    assert!(
        limits::acquire_slot(
            &mut conn,
            Scope::User,
            7,
            1,
            dead,
            Utc::now() + Duration::milliseconds(300)
        )
        .await
        .unwrap()
    );
    assert!(
        !limits::acquire_slot(
            &mut conn,
            Scope::User,
            7,
            1,
            Uuid::new_v4(),
            Utc::now() + Duration::minutes(5)
        )
        .await
        .unwrap(),
        "a live slot counts"
    );
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    loop {
        let free = limits::acquire_slot(
            &mut conn,
            Scope::User,
            7,
            1,
            Uuid::new_v4(),
            Utc::now() + Duration::minutes(5),
        )
        .await
        .unwrap();
        if free {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the dead slot still counts"
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    // Concurrent acquirers of a limit of 3: exactly 3 win.
    let won = futures_util::future::join_all((0..12).map(|_| {
        let pool = pool.clone();
        async move {
            let mut conn = pool.get().await.unwrap();
            limits::acquire_slot(
                &mut conn,
                Scope::Key,
                9,
                3,
                Uuid::new_v4(),
                Utc::now() + Duration::minutes(5),
            )
            .await
            .unwrap()
        }
    }))
    .await;
    assert_eq!(won.iter().filter(|w| **w).count(), 3);
}

#[tokio::test(flavor = "multi_thread")]
async fn racing_reservations_under_a_spend_limit_never_pass_it() {
    let pool = common::migrated_pool().await;
    let user = user_with_balance(&pool, "100").await;
    let mut conn = pool.get().await.unwrap();
    let values = LimitValues {
        spend_limit: Some(money("1")),
        spend_limit_period: Period::Day,
        ..LimitValues::default()
    };
    limits::set(&mut conn, Scope::User, user, Some(user), &values)
        .await
        .unwrap();
    let cap = SpendCap {
        scope: Scope::User,
        subject: user,
        limit: money("1"),
        period: Period::Day,
    };
    // 20 reservations of 0.3 at once: at most 3 fit in 1.
    let outcomes = futures_util::future::join_all((0..20).map(|_| {
        let pool = pool.clone();
        let cap = cap.clone();
        async move {
            let mut conn = pool.get().await.unwrap();
            limits::reserve_capped(
                &mut conn,
                user,
                None,
                Uuid::now_v7(),
                &money("0.3"),
                &[cap],
                Reserve::Hold { ttl_seconds: 600 },
            )
            .await
            .unwrap()
        }
    }))
    .await;
    let reserved = outcomes.iter().filter(|o| **o == Capped::Reserved).count();
    assert_eq!(reserved, 3, "{outcomes:?}");
    assert!(
        outcomes
            .iter()
            .all(|o| matches!(o, Capped::Reserved | Capped::Spend(_)))
    );
}
