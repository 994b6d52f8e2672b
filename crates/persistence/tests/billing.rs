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
            held: money("0.5"),
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
                held: money("0.3"),
                balance_after: money("0.65")
            },
            Settlement::Settled {
                charged: money("0.2"),
                held: money("0.2"),
                balance_after: money("0.3")
            },
            Settlement::AlreadySettled,
            Settlement::AlreadySettled,
            Settlement::Settled {
                charged: money("0.05"),
                held: money("0"),
                balance_after: money("0.6")
            },
            Settlement::Settled {
                charged: money("0.3"),
                held: money("0"),
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

/// A batch writes one ledger row per user (the sum its charges took, the balance after the
/// last, the first request id as reference) and its usage rows name that row; a lone charge
/// keeps a row of its own; a charge that took nothing names none. The books still balance.
#[tokio::test(flavor = "multi_thread")]
async fn a_batch_writes_one_ledger_row_per_user_and_its_usage_rows_name_it() {
    use diesel::{ExpressionMethods, QueryDsl};
    use diesel_async::AsyncConnection;
    use persistence::schema::{balance_ledger, usage_logs};
    let pool = common::migrated_pool().await;
    let alice = user_with_balance(&pool, "1").await;
    let bob = user_with_balance(&pool, "1").await;
    let mut conn = pool.get().await.unwrap();
    let [lone, a1, a2, a3, free, b1] = [(); 6].map(|_| Uuid::new_v4());
    let lone_cost = money("0.1");
    billing::settle(&mut conn, &charge(lone, alice, &lone_cost))
        .await
        .unwrap();
    let (c1, c2, c3, zero, cb) = (
        money("0.1"),
        money("0.2"),
        money("0.3"),
        money("0"),
        money("0.4"),
    );
    let batch = [
        charge(a2, alice, &c2),
        charge(b1, bob, &cb),
        charge(a1, alice, &c1),
        charge(free, alice, &zero),
        charge(a3, alice, &c3),
    ];
    conn.transaction::<_, persistence::StoreError, _>(async |conn| {
        billing::settle_many(conn, &batch).await
    })
    .await
    .unwrap();

    type Row = (i64, BigDecimal, BigDecimal, String, Option<String>);
    let rows = async |conn: &mut persistence::AsyncPgConnection, user: i64| -> Vec<Row> {
        balance_ledger::table
            .filter(balance_ledger::user_id.eq(user))
            .filter(balance_ledger::kind.eq("charge"))
            .order(balance_ledger::id)
            .select((
                balance_ledger::id,
                balance_ledger::delta,
                balance_ledger::balance_after,
                balance_ledger::reference,
                balance_ledger::note,
            ))
            .load(conn)
            .await
            .unwrap()
    };
    let ledger_of = async |conn: &mut persistence::AsyncPgConnection, request: Uuid| {
        usage_logs::table
            .filter(usage_logs::request_id.eq(request))
            .select(usage_logs::ledger_id)
            .get_result::<Option<i64>>(conn)
            .await
            .unwrap()
    };
    let alice_rows = rows(&mut conn, alice).await;
    assert_eq!(alice_rows.len(), 2, "{alice_rows:?}");
    let (lone_row, batch_row) = (&alice_rows[0], &alice_rows[1]);
    assert_eq!(
        (&lone_row.1, &lone_row.2, &lone_row.3, &lone_row.4),
        (&dec("-0.1"), &dec("0.9"), &lone.to_string(), &None)
    );
    assert_eq!(
        (&batch_row.1, &batch_row.2, &batch_row.3, &batch_row.4),
        (
            &dec("-0.6"),
            &dec("0.3"),
            &a2.to_string(),
            &Some("3 calls settled together".to_owned())
        )
    );
    assert_eq!(ledger_of(&mut conn, lone).await, Some(lone_row.0));
    for request in [a1, a2, a3] {
        assert_eq!(ledger_of(&mut conn, request).await, Some(batch_row.0));
    }
    assert_eq!(ledger_of(&mut conn, free).await, None, "it took nothing");
    let bob_rows = rows(&mut conn, bob).await;
    assert_eq!(bob_rows.len(), 1);
    assert_eq!(
        (
            &bob_rows[0].1,
            &bob_rows[0].2,
            &bob_rows[0].3,
            &bob_rows[0].4
        ),
        (&dec("-0.4"), &dec("0.6"), &b1.to_string(), &None)
    );
    assert_eq!(ledger_of(&mut conn, b1).await, Some(bob_rows[0].0));
    drop(conn);
    books_balance(&pool).await;

    // A usage row naming the wrong one of alice's charge rows: her sums still agree, the rows
    // do not, and reconcile says so.
    let mut conn = pool.get().await.unwrap();
    diesel::sql_query(format!(
        "UPDATE usage_logs SET ledger_id = {} WHERE request_id = '{a1}'",
        lone_row.0
    ))
    .execute(&mut conn)
    .await
    .unwrap();
    let mismatches = billing::reconcile(&mut conn).await.unwrap();
    assert_eq!(mismatches.len(), 1, "{mismatches:?}");
    let m = &mismatches[0];
    assert_eq!(
        (m.user_id, m.unmatched_charge_rows),
        (alice, 2),
        "{mismatches:?}"
    );
    assert_eq!(m.usage_cost, m.ledger_charges);
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
    let holds: Count = prepared("%FROM place_holds(%")
        .get_result(&mut conn)
        .await
        .unwrap();
    let releases: Count = prepared("%SET status = 'released'%")
        .get_result(&mut conn)
        .await
        .unwrap();
    assert_eq!((holds.n, releases.n), (1, 1));
}

/// A usage row: (cost charged, priced cost, held amount).
async fn usage_row(
    conn: &mut persistence::AsyncPgConnection,
    request_id: Uuid,
) -> (BigDecimal, Option<BigDecimal>, Option<BigDecimal>) {
    use diesel::{ExpressionMethods, QueryDsl};
    use persistence::schema::usage_logs;
    usage_logs::table
        .filter(usage_logs::request_id.eq(request_id))
        .select((
            usage_logs::cost,
            usage_logs::priced_cost,
            usage_logs::held_amount,
        ))
        .get_result(conn)
        .await
        .unwrap()
}

fn dec(s: &str) -> BigDecimal {
    BigDecimal::from_str(s).unwrap()
}

/// (balance, held) of a user.
async fn balance_and_held(
    conn: &mut persistence::AsyncPgConnection,
    user: i64,
) -> (BigDecimal, BigDecimal) {
    let u = persistence::users::find(conn, user).await.unwrap();
    (u.balance, u.held)
}

#[tokio::test(flavor = "multi_thread")]
async fn a_charge_above_its_hold_takes_only_what_other_holds_leave_free() {
    let pool = common::migrated_pool().await;
    let user = user_with_balance(&pool, "1").await;
    let mut conn = pool.get().await.unwrap();
    let (overrun, other) = (Uuid::new_v4(), Uuid::new_v4());
    billing::place_hold(&mut conn, user, overrun, &money("0.3"), 600)
        .await
        .unwrap()
        .unwrap();
    billing::place_hold(&mut conn, user, other, &money("0.4"), 600)
        .await
        .unwrap()
        .unwrap();
    // Priced at 0.9: its own 0.3 plus the 0.3 nobody holds; the other call's 0.4 stays.
    let priced = money("0.9");
    let settled = billing::settle(&mut conn, &charge(overrun, user, &priced))
        .await
        .unwrap();
    assert_eq!(
        settled,
        Settlement::Settled {
            charged: money("0.6"),
            held: money("0.3"),
            balance_after: money("0.4")
        }
    );
    assert_eq!(
        balance_and_held(&mut conn, user).await,
        (dec("0.4"), dec("0.4"))
    );
    assert_eq!(
        usage_row(&mut conn, overrun).await,
        (dec("0.6"), Some(dec("0.9")), Some(dec("0.3"))),
        "cost is what was charged; the priced cost and the hold beside it"
    );
    // The other call's reserved money is still all there for its own charge.
    let other_cost = money("0.4");
    let settled = billing::settle(&mut conn, &charge(other, user, &other_cost))
        .await
        .unwrap();
    assert!(
        matches!(&settled, Settlement::Settled { charged, .. } if *charged == other_cost),
        "{settled:?}"
    );
    assert_eq!(
        usage_row(&mut conn, other).await,
        (dec("0.4"), Some(dec("0.4")), Some(dec("0.4")))
    );
    // A redelivery of the overrun changes nothing.
    assert_eq!(
        billing::settle(&mut conn, &charge(overrun, user, &priced))
            .await
            .unwrap(),
        Settlement::AlreadySettled
    );
    assert_eq!(
        balance_and_held(&mut conn, user).await,
        (dec("0"), dec("0"))
    );
    drop(conn);
    books_balance(&pool).await;
}

/// Racing real statements: calls with holds settle while charges without one (their holds were
/// released) overrun at the same time; every held call is charged in full, whatever the order,
/// and the overruns share only what nobody held.
#[tokio::test(flavor = "multi_thread")]
async fn concurrent_overruns_never_take_money_other_holds_reserve() {
    let pool = common::migrated_pool().await;
    let user = user_with_balance(&pool, "10").await;
    let mut conn = pool.get().await.unwrap();
    let mut held_calls = Vec::new();
    for _ in 0..20 {
        let request = Uuid::new_v4();
        billing::place_hold(&mut conn, user, request, &money("0.25"), 600)
            .await
            .unwrap()
            .unwrap();
        held_calls.push(request);
    }
    drop(conn);
    // 20 × 0.25 = 5 held; 5 free. 20 overruns priced at 1 each can share only those 5.
    let tasks = held_calls
        .iter()
        .map(|request| (*request, "0.25"))
        .chain((0..20).map(|_| (Uuid::new_v4(), "1")))
        .map(|(request, cost)| {
            let pool = pool.clone();
            tokio::spawn(async move {
                let mut conn = pool.get().await.unwrap();
                let cost = money(cost);
                billing::settle(&mut conn, &charge(request, user, &cost))
                    .await
                    .unwrap()
            })
        });
    let results: Vec<Settlement> = futures_util::future::join_all(tasks)
        .await
        .into_iter()
        .map(|r| r.unwrap())
        .collect();
    let charged = |r: &Settlement| match r {
        Settlement::Settled { charged, .. } => charged.as_decimal().clone(),
        Settlement::AlreadySettled => panic!("settled twice"),
    };
    for result in &results[..20] {
        assert_eq!(charged(result), dec("0.25"), "a held call charged in full");
    }
    let overruns: BigDecimal = results[20..].iter().map(charged).sum();
    assert_eq!(
        overruns,
        dec("5"),
        "the overruns took exactly what was free"
    );
    let mut conn = pool.get().await.unwrap();
    assert_eq!(
        balance_and_held(&mut conn, user).await,
        (dec("0"), dec("0"))
    );
    drop(conn);
    books_balance(&pool).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn overrunning_charges_of_one_user_in_one_batch_take_their_holds_and_what_is_free_in_order() {
    use diesel_async::AsyncConnection;
    let pool = common::migrated_pool().await;
    let alice = user_with_balance(&pool, "1").await;
    let bob = user_with_balance(&pool, "1").await;
    let mut conn = pool.get().await.unwrap();
    let [a1, a2, a_other, b1, b2, b_other] = [(); 6].map(|_| Uuid::new_v4());
    for (user, request, amount) in [
        (alice, a1, "0.2"),
        (alice, a2, "0.2"),
        (alice, a_other, "0.3"),
        (bob, b1, "0.5"),
        (bob, b_other, "0.5"),
    ] {
        billing::place_hold(&mut conn, user, request, &money(amount), 600)
            .await
            .unwrap()
            .unwrap();
    }
    let (c_a1, c_a2, c_b1, c_b2) = (money("0.5"), money("0.4"), money("0.1"), money("0.6"));
    let batch = [
        // Alice: 0.3 free. a1 takes its 0.2 and the 0.3 free; a2 only its own 0.2.
        charge(a1, alice, &c_a1),
        // Bob: nothing free. b1 leaves 0.4 of its hold unused, which b2 (no hold) then takes.
        charge(b1, bob, &c_b1),
        charge(a2, alice, &c_a2),
        charge(a1, alice, &c_a1), // a duplicate within the batch
        charge(b2, bob, &c_b2),
    ];
    let settle = async |conn: &mut persistence::AsyncPgConnection| {
        conn.transaction::<_, persistence::StoreError, _>(async |conn| {
            billing::settle_many(conn, &batch).await
        })
        .await
        .unwrap()
    };
    let settled = |charged: &str, held: &str, balance_after: &str| Settlement::Settled {
        charged: money(charged),
        held: money(held),
        balance_after: money(balance_after),
    };
    assert_eq!(
        settle(&mut conn).await,
        vec![
            settled("0.5", "0.2", "0.5"),
            settled("0.1", "0.5", "0.9"),
            settled("0.2", "0.2", "0.3"),
            Settlement::AlreadySettled,
            settled("0.4", "0", "0.5"),
        ]
    );
    for (request, row) in [
        (a1, ("0.5", "0.5", "0.2")),
        (a2, ("0.2", "0.4", "0.2")),
        (b1, ("0.1", "0.1", "0.5")),
        (b2, ("0.4", "0.6", "0")),
    ] {
        assert_eq!(
            usage_row(&mut conn, request).await,
            (dec(row.0), Some(dec(row.1)), Some(dec(row.2))),
            "{request}"
        );
    }
    // The other open holds keep what they reserve.
    assert_eq!(
        balance_and_held(&mut conn, alice).await,
        (dec("0.3"), dec("0.3"))
    );
    assert_eq!(
        balance_and_held(&mut conn, bob).await,
        (dec("0.5"), dec("0.5"))
    );
    // Redelivered, the whole batch changes nothing.
    assert!(
        settle(&mut conn)
            .await
            .iter()
            .all(|r| *r == Settlement::AlreadySettled)
    );
    assert_eq!(
        balance_and_held(&mut conn, alice).await,
        (dec("0.3"), dec("0.3"))
    );
    drop(conn);
    books_balance(&pool).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_charge_whose_hold_was_released_takes_only_the_free_balance() {
    let pool = common::migrated_pool().await;
    let user = user_with_balance(&pool, "1").await;
    let mut conn = pool.get().await.unwrap();
    let (late, other) = (Uuid::new_v4(), Uuid::new_v4());
    billing::place_hold(&mut conn, user, late, &money("0.5"), 600)
        .await
        .unwrap()
        .unwrap();
    assert!(billing::release_hold(&mut conn, late).await.unwrap());
    // Meanwhile another call holds 0.7 of the balance.
    billing::place_hold(&mut conn, user, other, &money("0.7"), 600)
        .await
        .unwrap()
        .unwrap();
    let priced = money("0.5");
    assert_eq!(
        billing::settle(&mut conn, &charge(late, user, &priced))
            .await
            .unwrap(),
        Settlement::Settled {
            charged: money("0.3"),
            held: money("0"),
            balance_after: money("0.7")
        }
    );
    assert_eq!(
        usage_row(&mut conn, late).await,
        (dec("0.3"), Some(dec("0.5")), Some(dec("0")))
    );
    // With nothing free left, a second late charge takes nothing and writes no ledger row.
    let broke = Uuid::new_v4();
    assert_eq!(
        billing::settle(&mut conn, &charge(broke, user, &priced))
            .await
            .unwrap(),
        Settlement::Settled {
            charged: money("0"),
            held: money("0"),
            balance_after: money("0.7")
        }
    );
    assert_eq!(
        usage_row(&mut conn, broke).await,
        (dec("0"), Some(dec("0.5")), Some(dec("0")))
    );
    let other_cost = money("0.7");
    billing::settle(&mut conn, &charge(other, user, &other_cost))
        .await
        .unwrap();
    assert_eq!(
        balance_and_held(&mut conn, user).await,
        (dec("0"), dec("0"))
    );

    // The overruns are listed for the admin, newest first; the fully held call is not.
    let page = persistence::Page {
        limit: 10,
        offset: 0,
    };
    let listed = persistence::usage::overruns(&mut conn, Some(user), page)
        .await
        .unwrap();
    assert_eq!(listed.total, 2);
    let ids: Vec<Uuid> = listed.rows.iter().map(|r| r.request_id).collect();
    assert_eq!(ids, [broke, late]);
    drop(conn);
    books_balance(&pool).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn an_expired_hold_older_than_the_grace_is_released_even_while_the_queue_is_busy() {
    use diesel::{ExpressionMethods, QueryDsl};
    use persistence::schema::balance_holds;

    let pool = common::migrated_pool().await;
    let user = user_with_balance(&pool, "10").await;
    let mut conn = pool.get().await.unwrap();
    // Expired 700 s and 100 s ago; one with its charge in the outbox; one still running.
    let [old, recent, parked, running] = [(); 4].map(|_| Uuid::new_v4());
    for (request, ttl) in [(old, -700), (recent, -100), (parked, -700), (running, 600)] {
        billing::place_hold(&mut conn, user, request, &money("1"), ttl)
            .await
            .unwrap()
            .unwrap();
    }
    billing::outbox_insert_many(&mut conn, &[(parked, "{}".to_owned())])
        .await
        .unwrap();
    let open = async |conn: &mut persistence::AsyncPgConnection| -> Vec<Uuid> {
        let mut open: Vec<Uuid> = balance_holds::table
            .filter(balance_holds::status.eq("open"))
            .select(balance_holds::request_id)
            .load(conn)
            .await
            .unwrap();
        open.sort();
        open
    };
    let sorted = |mut ids: Vec<Uuid>| {
        ids.sort();
        ids
    };

    // The queue was not seen empty: only what expired more than the grace (600 s) ago goes.
    assert_eq!(
        billing::release_expired_holds(&mut conn, 600, 100)
            .await
            .unwrap(),
        1
    );
    assert_eq!(open(&mut conn).await, sorted(vec![recent, parked, running]));
    assert_eq!(
        balance_and_held(&mut conn, user).await,
        (dec("10"), dec("3"))
    );
    // The queue was seen empty: every expired hold, but never one whose charge is parked.
    assert_eq!(
        billing::release_expired_holds(&mut conn, 0, 100)
            .await
            .unwrap(),
        1
    );
    assert_eq!(open(&mut conn).await, sorted(vec![parked, running]));
    assert_eq!(
        balance_and_held(&mut conn, user).await,
        (dec("10"), dec("2"))
    );
    drop(conn);
    books_balance(&pool).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn reconcile_checks_charged_usage_against_the_ledger() {
    let pool = common::migrated_pool().await;
    let user = user_with_balance(&pool, "1").await;
    let bystander = user_with_balance(&pool, "1").await;
    let mut conn = pool.get().await.unwrap();
    for (who, cost) in [(user, "0.25"), (user, "2"), (bystander, "0.1")] {
        let cost = money(cost);
        billing::settle(&mut conn, &charge(Uuid::new_v4(), who, &cost))
            .await
            .unwrap();
    }
    drop(conn);
    // The second charge overran (0.75 of 2 taken): usage records what was charged.
    books_balance(&pool).await;

    // A usage row that says more than the ledger charged (what the old settlement wrote).
    let mut conn = pool.get().await.unwrap();
    diesel::sql_query(format!(
        "UPDATE usage_logs SET cost = priced_cost WHERE user_id = {user} AND priced_cost = 2"
    ))
    .execute(&mut conn)
    .await
    .unwrap();
    let mismatches = billing::reconcile(&mut conn).await.unwrap();
    assert_eq!(mismatches.len(), 1, "{mismatches:?}");
    let m = &mismatches[0];
    assert_eq!(m.user_id, user);
    assert_eq!(
        (m.balance.clone(), m.ledger_sum.clone()),
        (dec("0"), dec("0"))
    );
    assert_eq!(
        (m.usage_cost.clone(), m.ledger_charges.clone()),
        (dec("2.25"), dec("1"))
    );

    // Put right, the books balance again.
    diesel::sql_query(format!(
        "UPDATE usage_logs SET cost = 0.75 WHERE user_id = {user} AND priced_cost = 2"
    ))
    .execute(&mut conn)
    .await
    .unwrap();
    assert!(billing::reconcile(&mut conn).await.unwrap().is_empty());
    // A usage row with no charge at all behind it.
    diesel::sql_query(format!(
        "INSERT INTO usage_logs (request_id, user_id, model_name, cost)
         VALUES (gen_random_uuid(), {bystander}, 'm', 0.01)"
    ))
    .execute(&mut conn)
    .await
    .unwrap();
    let mismatches = billing::reconcile(&mut conn).await.unwrap();
    assert_eq!(
        mismatches.iter().map(|m| m.user_id).collect::<Vec<_>>(),
        [bystander]
    );
}
