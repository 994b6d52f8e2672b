//! Holds, settlement and reconciliation against a real Postgres: the money invariants.

#![allow(clippy::unwrap_used)]

use std::str::FromStr;

use bigdecimal::BigDecimal;
use diesel_async::RunQueryDsl;
use domain::{LedgerKind, Money, Usage};
use persistence::billing::{self, Charge, Settlement};
use persistence::ledger::{self, BalanceChange};
use uuid::Uuid;

mod common;

use common::{books_balance, money, user_with_balance};

fn charge(request_id: Uuid, user_id: i64, cost: &Money) -> Charge<'_> {
    Charge {
        request_id,
        user_id,
        access_key_id: None,
        model_id: None,
        model_name: "m",
        usage: Usage {
            prompt_tokens: 10,
            completion_tokens: 5,
            ..Usage::default()
        },
        cost,
        lease_id: None,
    }
}

/// One batch of calls of several users, and concurrent batches of the same user: each call is
/// held only while its user's holds fit in the balance; nothing is written for the others.
#[tokio::test(flavor = "multi_thread")]
async fn batched_holds_admit_what_each_balance_covers_cheapest_first() {
    use billing::HoldRequest;

    let pool = common::migrated_pool().await;
    let alice = user_with_balance(&pool, "1").await;
    let bob = user_with_balance(&pool, "0.5").await;
    let request = |user_id, amount: &str| HoldRequest {
        user_id,
        request_id: Uuid::new_v4(),
        amount: money(amount),
    };
    // Alice's (balance 1), one by one from the cheapest: 0.2, 0.3, 0.4 fit (0.9), 0.7 does not.
    // Bob's (balance 0.5): 0.5 fits, 0.6 does not.
    let batch = vec![
        request(alice, "0.7"),
        request(bob, "0.6"),
        request(alice, "0.4"),
        request(alice, "0.2"),
        request(bob, "0.5"),
        request(alice, "0.3"),
    ];
    let mut conn = pool.get().await.unwrap();
    let held = billing::place_holds(&mut conn, &batch, 600).await.unwrap();
    let admitted: Vec<bool> = held.iter().map(Option::is_some).collect();
    assert_eq!(admitted, [false, false, true, true, true, true]);
    let ids: std::collections::HashSet<i64> = held.iter().flatten().copied().collect();
    assert_eq!(ids.len(), 4, "one hold id per admitted call");
    let alice_row = persistence::users::find(&mut conn, alice).await.unwrap();
    assert_eq!(alice_row.held, BigDecimal::from_str("0.9").unwrap());
    let bob_row = persistence::users::find(&mut conn, bob).await.unwrap();
    assert_eq!(bob_row.held, BigDecimal::from_str("0.5").unwrap());

    // Concurrent batches of the same user never hold more than what is left (0.1 of Alice's).
    let batches = (0..8).map(|_| {
        let pool = pool.clone();
        tokio::spawn(async move {
            let mut conn = pool.get().await.unwrap();
            let batch: Vec<HoldRequest> = (0..10).map(|_| request(alice, "0.01")).collect();
            billing::place_holds(&mut conn, &batch, 600).await.unwrap()
        })
    });
    let admitted: usize = futures_util::future::join_all(batches)
        .await
        .into_iter()
        .map(|held| held.unwrap().iter().flatten().count())
        .sum();
    assert_eq!(admitted, 10);
    let alice_row = persistence::users::find(&mut conn, alice).await.unwrap();
    assert_eq!(alice_row.held, BigDecimal::from(1));
    books_balance(&pool).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn two_hundred_concurrent_holds_admit_exactly_what_the_balance_covers() {
    let pool = common::migrated_pool().await;
    let user = user_with_balance(&pool, "5").await;
    let attempts = (0..200).map(|_| {
        let pool = pool.clone();
        tokio::spawn(async move {
            let mut conn = pool.get().await.unwrap();
            billing::place_hold(&mut conn, user, Uuid::new_v4(), &money("0.1"), 600)
                .await
                .unwrap()
        })
    });
    let results = futures_util::future::join_all(attempts).await;
    let admitted = results
        .into_iter()
        .filter(|r| r.as_ref().unwrap().is_some())
        .count();
    assert_eq!(admitted, 50);
    let mut conn = pool.get().await.unwrap();
    let u = persistence::users::find(&mut conn, user).await.unwrap();
    assert_eq!(u.held, BigDecimal::from(5));
    books_balance(&pool).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn settlement_charges_once_and_replaces_the_hold() {
    let pool = common::migrated_pool().await;
    let user = user_with_balance(&pool, "1").await;
    let mut conn = pool.get().await.unwrap();
    let request = Uuid::new_v4();
    billing::place_hold(&mut conn, user, request, &money("0.5"), 600)
        .await
        .unwrap()
        .unwrap();
    let cost = money("0.12345678");
    let first = billing::settle(&mut conn, &charge(request, user, &cost))
        .await
        .unwrap();
    assert_eq!(
        first,
        Settlement::Settled {
            charged: cost.clone(),
            balance_after: money("0.87654322")
        }
    );
    // A redelivered message: nothing changes.
    let again = billing::settle(&mut conn, &charge(request, user, &cost))
        .await
        .unwrap();
    assert_eq!(again, Settlement::AlreadySettled);
    let u = persistence::users::find(&mut conn, user).await.unwrap();
    assert_eq!(u.balance, BigDecimal::from_str("0.87654322").unwrap());
    assert_eq!(u.held, BigDecimal::from(0));
    // The settled hold is gone (the usage log and the ledger record the call).
    use diesel::{ExpressionMethods, QueryDsl};
    use persistence::schema::balance_holds;
    let holds: i64 = balance_holds::table
        .filter(balance_holds::request_id.eq(request))
        .count()
        .get_result(&mut conn)
        .await
        .unwrap();
    assert_eq!(holds, 0);
    drop(conn);
    books_balance(&pool).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn concurrent_redeliveries_settle_once() {
    let pool = common::migrated_pool().await;
    let user = user_with_balance(&pool, "10").await;
    let request = Uuid::new_v4();
    let tasks = (0..20).map(|_| {
        let pool = pool.clone();
        tokio::spawn(async move {
            let mut conn = pool.get().await.unwrap();
            let cost = money("1.5");
            billing::settle(&mut conn, &charge(request, user, &cost)).await
        })
    });
    let results = futures_util::future::join_all(tasks).await;
    let settled = results
        .iter()
        .filter(|r| matches!(r.as_ref().unwrap(), Ok(Settlement::Settled { .. })))
        .count();
    // Losers either see the log (AlreadySettled) or hit the unique key and will be redelivered.
    assert_eq!(settled, 1);
    let mut conn = pool.get().await.unwrap();
    assert_eq!(
        persistence::users::find(&mut conn, user)
            .await
            .unwrap()
            .balance,
        BigDecimal::from_str("8.5").unwrap()
    );
    drop(conn);
    books_balance(&pool).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn released_and_expired_holds_cost_nothing() {
    let pool = common::migrated_pool().await;
    let user = user_with_balance(&pool, "1").await;
    let mut conn = pool.get().await.unwrap();
    let failed = Uuid::new_v4();
    billing::place_hold(&mut conn, user, failed, &money("1"), 600)
        .await
        .unwrap()
        .unwrap();
    // Everything is held: another call is refused.
    assert!(
        billing::place_hold(&mut conn, user, Uuid::new_v4(), &money("0.00000001"), 600)
            .await
            .unwrap()
            .is_none()
    );
    assert!(billing::release_hold(&mut conn, failed).await.unwrap());
    assert!(
        !billing::release_hold(&mut conn, failed).await.unwrap(),
        "a hold is released once"
    );

    let crashed = Uuid::new_v4();
    billing::place_hold(&mut conn, user, crashed, &money("0.7"), 0)
        .await
        .unwrap()
        .unwrap();
    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    assert_eq!(common::release_expired(&mut conn).await, 1);
    assert_eq!(common::release_expired(&mut conn).await, 0);
    let u = persistence::users::find(&mut conn, user).await.unwrap();
    assert_eq!(u.balance, BigDecimal::from(1));
    assert_eq!(u.held, BigDecimal::from(0));
    // A late charge for the expired call is still billed (nothing is lost).
    let cost = money("0.25");
    billing::settle(&mut conn, &charge(crashed, user, &cost))
        .await
        .unwrap();
    assert_eq!(
        persistence::users::find(&mut conn, user)
            .await
            .unwrap()
            .balance,
        BigDecimal::from_str("0.75").unwrap()
    );
    drop(conn);
    books_balance(&pool).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_debit_adjustment_cannot_take_held_money_and_reconcile_finds_tampering() {
    let pool = common::migrated_pool().await;
    let user = user_with_balance(&pool, "2").await;
    let mut conn = pool.get().await.unwrap();
    billing::place_hold(&mut conn, user, Uuid::new_v4(), &money("1.5"), 600)
        .await
        .unwrap()
        .unwrap();
    let debit = ledger::apply(
        &mut conn,
        BalanceChange {
            user_id: user,
            delta: &money("-1"),
            kind: LedgerKind::Adjustment,
            reference: "adj",
            note: None,
            actor_user_id: None,
        },
    )
    .await;
    assert!(
        matches!(debit, Err(persistence::StoreError::InsufficientBalance)),
        "{debit:?}"
    );
    drop(conn);
    books_balance(&pool).await;

    let mut conn = pool.get().await.unwrap();
    diesel::sql_query(format!(
        "UPDATE users SET balance = balance + 1 WHERE id = {user}"
    ))
    .execute(&mut conn)
    .await
    .unwrap();
    let mismatches = billing::reconcile(&mut conn).await.unwrap();
    assert_eq!(mismatches.len(), 1);
    assert_eq!(mismatches[0].user_id, user);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_batch_settles_like_one_by_one_with_duplicates_and_short_balances() {
    use diesel_async::AsyncConnection;
    let pool = common::migrated_pool().await;
    let alice = user_with_balance(&pool, "1").await;
    let bob = user_with_balance(&pool, "0.5").await;
    let mut conn = pool.get().await.unwrap();
    let (a1, a2, b1, b2, old) = (
        Uuid::new_v4(),
        Uuid::new_v4(),
        Uuid::new_v4(),
        Uuid::new_v4(),
        Uuid::new_v4(),
    );
    billing::place_hold(&mut conn, alice, a1, &money("0.3"), 600)
        .await
        .unwrap()
        .unwrap();
    billing::place_hold(&mut conn, bob, b1, &money("0.2"), 600)
        .await
        .unwrap()
        .unwrap();
    // Settled before the batch: a redelivery inside it changes nothing.
    let old_cost = money("0.1");
    billing::settle(&mut conn, &charge(old, alice, &old_cost))
        .await
        .unwrap();

    let (c_a1, c_a2, c_b1, c_b2) = (money("0.25"), money("0.05"), money("0.2"), money("0.4"));
    let batch = [
        charge(a1, alice, &c_a1),
        charge(b1, bob, &c_b1),
        charge(a1, alice, &c_a1), // a duplicate within the batch
        charge(old, alice, &old_cost),
        charge(a2, alice, &c_a2),
        charge(b2, bob, &c_b2), // bob has 0.3 left: capped
    ];
    let results = conn
        .transaction::<_, persistence::StoreError, _>(async |conn| {
            billing::settle_many(conn, &batch).await
        })
        .await
        .unwrap();
    assert_eq!(
        results,
        vec![
            Settlement::Settled {
                charged: money("0.25"),
                balance_after: money("0.65")
            },
            Settlement::Settled {
                charged: money("0.2"),
                balance_after: money("0.3")
            },
            Settlement::AlreadySettled,
            Settlement::AlreadySettled,
            Settlement::Settled {
                charged: money("0.05"),
                balance_after: money("0.6")
            },
            Settlement::Settled {
                charged: money("0.3"),
                balance_after: money("0")
            },
        ]
    );
    // The same batch again: nothing more.
    let again = conn
        .transaction::<_, persistence::StoreError, _>(async |conn| {
            billing::settle_many(conn, &batch).await
        })
        .await
        .unwrap();
    assert!(again.iter().all(|r| *r == Settlement::AlreadySettled));
    let a = persistence::users::find(&mut conn, alice).await.unwrap();
    let b = persistence::users::find(&mut conn, bob).await.unwrap();
    assert_eq!(
        (a.balance, a.held),
        (BigDecimal::from_str("0.6").unwrap(), BigDecimal::from(0))
    );
    assert_eq!(
        (b.balance, b.held),
        (BigDecimal::from(0), BigDecimal::from(0))
    );
    drop(conn);
    books_balance(&pool).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn holds_run_as_prepared_statements_reused_by_the_connection() {
    #[derive(diesel::QueryableByName)]
    struct Count {
        #[diesel(sql_type = diesel::sql_types::BigInt)]
        n: i64,
    }
    let pool = common::migrated_pool().await;
    let user_id = user_with_balance(&pool, "10").await;
    let mut conn = pool.get().await.unwrap();
    for _ in 0..3 {
        let request_id = Uuid::new_v4();
        billing::place_hold(&mut conn, user_id, request_id, &money("1"), 60)
            .await
            .unwrap()
            .unwrap();
        assert!(billing::release_hold(&mut conn, request_id).await.unwrap());
    }
    // Named statements of this session: one per statement however often it ran (an unnamed,
    // unprepared statement would not be listed, and would be parsed and planned every time).
    let prepared = |pattern: &'static str| {
        diesel::sql_query(
            "SELECT count(*) AS n FROM pg_prepared_statements WHERE statement LIKE $1",
        )
        .bind::<diesel::sql_types::Text, _>(pattern)
    };
    let holds: Count = prepared("%INSERT INTO balance_holds%")
        .get_result(&mut conn)
        .await
        .unwrap();
    let releases: Count = prepared("%SET status = 'released'%")
        .get_result(&mut conn)
        .await
        .unwrap();
    assert_eq!((holds.n, releases.n), (1, 1));
}
