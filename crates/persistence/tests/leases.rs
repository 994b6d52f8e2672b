//! Credit leases against a real Postgres: a lease is carved from the free balance by one
//! conditional statement and counts in `held`, so leases plus holds never exceed a balance.

#![allow(clippy::unwrap_used)]

use std::str::FromStr;

use bigdecimal::BigDecimal;
use diesel_async::RunQueryDsl;
use domain::Money;
use persistence::leases::{self, LeaseRequest};
use uuid::Uuid;

mod common;

use common::{money, user_with_balance};

fn request(user_id: i64, desired: &str, minimum: &str, max_percent: u32) -> LeaseRequest {
    LeaseRequest {
        user_id,
        desired: money(desired),
        minimum: money(minimum),
        max_percent,
        ttl_seconds: 600,
    }
}

async fn held(pool: &persistence::Pool, user_id: i64) -> BigDecimal {
    let mut conn = pool.get().await.unwrap();
    persistence::users::find(&mut conn, user_id)
        .await
        .unwrap()
        .held
}

fn dec(s: &str) -> BigDecimal {
    BigDecimal::from_str(s).unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn a_lease_takes_at_most_its_share_of_what_is_free_and_counts_as_held() {
    let pool = common::migrated_pool().await;
    let user = user_with_balance(&pool, "10").await;
    let holder = Uuid::new_v4();
    let mut conn = pool.get().await.unwrap();
    // Wants 8, but 25% of the free 10 is 2.5.
    let first = Uuid::new_v4();
    let granted = leases::grant(&mut conn, first, holder, &request(user, "8", "1", 25))
        .await
        .unwrap();
    assert_eq!(granted, Some(money("2.5")));
    assert_eq!(held(&pool, user).await, dec("2.5"));
    // Now 25% of the free 7.5: 1.875; below a minimum of 2 nothing is written.
    let refused = leases::grant(
        &mut conn,
        Uuid::new_v4(),
        holder,
        &request(user, "8", "2", 25),
    )
    .await
    .unwrap();
    assert_eq!(refused, None);
    assert_eq!(held(&pool, user).await, dec("2.5"));
    // A top-up on the same terms; giving back returns at most what the lease holds.
    let added = leases::top_up(&mut conn, first, &request(user, "1", "0.5", 25))
        .await
        .unwrap();
    assert_eq!(added, Some(money("1")));
    assert_eq!(held(&pool, user).await, dec("3.5"));
    let back = leases::give_back(&mut conn, first, &money("5"))
        .await
        .unwrap();
    assert_eq!(back, money("3.5"), "no more than the lease holds");
    assert_eq!(held(&pool, user).await, dec("0"));
    // A disabled user gets no lease.
    diesel::sql_query("UPDATE users SET status = 'disabled' WHERE id = $1")
        .bind::<diesel::sql_types::BigInt, _>(user)
        .execute(&mut conn)
        .await
        .unwrap();
    let none = leases::grant(
        &mut conn,
        Uuid::new_v4(),
        holder,
        &request(user, "1", "0.1", 25),
    )
    .await
    .unwrap();
    assert_eq!(none, None);
    common::books_balance(&pool).await;
}

/// Many processes asking at once for a lease of half of what is free, while calls place holds:
/// whatever the interleaving, holds plus leases never exceed the balance.
#[tokio::test(flavor = "multi_thread")]
async fn concurrent_grants_and_holds_never_reserve_more_than_the_balance() {
    let pool = common::migrated_pool().await;
    let user = user_with_balance(&pool, "1").await;
    let grants = (0..16).map(|_| {
        let pool = pool.clone();
        tokio::spawn(async move {
            let mut conn = pool.get().await.unwrap();
            leases::grant(
                &mut conn,
                Uuid::new_v4(),
                Uuid::new_v4(),
                &request(user, "1", "0.00000001", 50),
            )
            .await
            .unwrap()
        })
    });
    let holds = (0..16).map(|_| {
        let pool = pool.clone();
        tokio::spawn(async move {
            let mut conn = pool.get().await.unwrap();
            persistence::billing::place_hold(&mut conn, user, Uuid::new_v4(), &money("0.1"), 600)
                .await
                .unwrap()
        })
    });
    let (grants, holds) = tokio::join!(
        futures_util::future::join_all(grants),
        futures_util::future::join_all(holds)
    );
    let leased: BigDecimal = grants
        .into_iter()
        .filter_map(|g| g.unwrap())
        .map(Money::into_decimal)
        .sum();
    let held_by_holds = BigDecimal::from(
        holds
            .into_iter()
            .filter(|h| h.as_ref().unwrap().is_some())
            .count() as i64,
    ) * dec("0.1");
    assert!(
        leased.clone() + held_by_holds.clone() <= dec("1"),
        "{leased} + {held_by_holds}"
    );
    assert_eq!(held(&pool, user).await, leased + held_by_holds);
    common::books_balance(&pool).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn an_expired_lease_is_released_only_after_its_grace_and_a_renewed_one_not_at_all() {
    let pool = common::migrated_pool().await;
    let user = user_with_balance(&pool, "10").await;
    let mut conn = pool.get().await.unwrap();
    let (dead, alive) = (Uuid::new_v4(), Uuid::new_v4());
    for id in [dead, alive] {
        leases::grant(&mut conn, id, Uuid::new_v4(), &request(user, "1", "1", 50))
            .await
            .unwrap()
            .unwrap();
    }
    // Both expired a minute ago; the living holder renews its own.
    diesel::sql_query("UPDATE credit_leases SET expires_at = now() - interval '60 seconds'")
        .execute(&mut conn)
        .await
        .unwrap();
    assert_eq!(leases::renew(&mut conn, &[alive], 600).await.unwrap(), 1);
    assert_eq!(
        leases::release_expired(&mut conn, 120, 100).await.unwrap(),
        0,
        "not within the grace"
    );
    assert_eq!(
        leases::release_expired(&mut conn, 30, 100).await.unwrap(),
        1
    );
    assert_eq!(
        held(&pool, user).await,
        dec("1"),
        "only the living lease is held"
    );
    // A released lease takes no renewal and gives nothing back.
    assert_eq!(leases::renew(&mut conn, &[dead], 600).await.unwrap(), 0);
    assert_eq!(
        leases::give_back(&mut conn, dead, &money("1"))
            .await
            .unwrap(),
        money("0")
    );
    common::books_balance(&pool).await;
}

/// A small deterministic generator (xorshift), so a failing sequence can be replayed by seed.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

/// One gateway process of the model: its lease (if any) and its account of it.
#[derive(Default)]
struct Process {
    lease: Option<(Uuid, domain::LeaseAccount)>,
}

struct Call {
    process: usize,
    request_id: Uuid,
    reserved: Money,
    lease: Option<Uuid>,
}

struct Pending {
    request_id: Uuid,
    cost: Money,
    lease: Option<Uuid>,
}

/// Random interleavings of admit (against a lease or by a hold), finish, fail, settle (with
/// redeliveries), grant, top-up, give-back, crash and expiry, by two processes sharing one user.
/// After every step: the books balance (`held` = open holds + open leases), holds plus leases
/// never exceed the balance, each live lease row covers what its process may still admit plus
/// its calls in flight plus its charges not yet settled, and every charge settles exactly once
/// at its full cost.
#[tokio::test(flavor = "multi_thread")]
async fn the_lease_protocol_keeps_its_invariants_under_random_interleavings() {
    for seed in [
        0x9E37_79B9_7F4A_7C15_u64,
        0xD1B5_4A32_D192_ED03,
        0x2545_F491_4F6C_DD1D,
    ] {
        run_protocol(seed, 400).await;
    }
}

async fn run_protocol(seed: u64, steps: usize) {
    use persistence::billing::{self, Charge, Settlement};

    let pool = common::migrated_pool().await;
    let user = user_with_balance(&pool, "10").await;
    let mut conn = pool.get().await.unwrap();
    let mut rng = Rng(seed);
    let mut processes = [Process::default(), Process::default()];
    let mut calls: Vec<Call> = Vec::new();
    let mut pending: Vec<Pending> = Vec::new();
    let mut settled: std::collections::HashMap<Uuid, Money> = Default::default();
    let mut orphaned_leases: Vec<Uuid> = Vec::new();
    let mut orphaned_holds: Vec<Uuid> = Vec::new();
    let units = |m: &Money| m.units();
    let mut leased_admits = 0;

    for step in 0..steps {
        let p = rng.below(2) as usize;
        match rng.below(10) {
            // Admit.
            0..=2 => {
                let reserved =
                    Money::from_units(1_000_000 + i128::from(rng.below(50_000_000) as u32))
                        .unwrap();
                let request_id = Uuid::new_v4();
                let leased = processes[p]
                    .lease
                    .as_mut()
                    .and_then(|(id, account)| account.admit(units(&reserved)).then_some(*id));
                let admitted = match leased {
                    Some(_) => true,
                    None => billing::place_hold(&mut conn, user, request_id, &reserved, 600)
                        .await
                        .unwrap()
                        .is_some(),
                };
                if admitted {
                    leased_admits += usize::from(leased.is_some());
                    calls.push(Call {
                        process: p,
                        request_id,
                        reserved,
                        lease: leased,
                    });
                }
            }
            // Finish: the charge is durable (pending settlement); the process accounts for it.
            3 | 4 if !calls.is_empty() => {
                let call = calls.swap_remove(rng.below(calls.len() as u64) as usize);
                let cost = Money::from_units(
                    units(&call.reserved) * i128::from(rng.below(101) as u32) / 100,
                )
                .unwrap();
                if let (Some(lease), Some((id, account))) =
                    (call.lease, processes[call.process].lease.as_mut())
                    && lease == *id
                {
                    account.finish(units(&call.reserved), units(&cost));
                }
                pending.push(Pending {
                    request_id: call.request_id,
                    cost,
                    lease: call.lease,
                });
            }
            // Fail: costs nothing.
            5 if !calls.is_empty() => {
                let call = calls.swap_remove(rng.below(calls.len() as u64) as usize);
                match call.lease {
                    Some(lease) => {
                        if let Some((id, account)) = processes[call.process].lease.as_mut()
                            && *id == lease
                        {
                            account.finish(units(&call.reserved), 0);
                        }
                    }
                    None => {
                        billing::release_hold(&mut conn, call.request_id)
                            .await
                            .unwrap();
                    }
                }
            }
            // Settle some pending charges, sometimes delivering one twice.
            6 if !pending.is_empty() => {
                let n = 1 + rng.below(pending.len() as u64) as usize;
                let mut batch: Vec<Pending> = pending.drain(..n).collect();
                if rng.below(3) == 0
                    && let Some((id, cost)) = settled.iter().next().map(|(i, c)| (*i, c.clone()))
                {
                    batch.push(Pending {
                        request_id: id,
                        cost,
                        lease: None,
                    });
                }
                let charges: Vec<Charge<'_>> = batch
                    .iter()
                    .map(|c| Charge {
                        request_id: c.request_id,
                        user_id: user,
                        access_key_id: None,
                        model_id: None,
                        model_name: "m",
                        usage: domain::Usage::default(),
                        cost: &c.cost,
                        lease_id: c.lease,
                    })
                    .collect();
                let results =
                    diesel_async::AsyncConnection::transaction::<_, persistence::StoreError, _>(
                        &mut *conn,
                        async |conn| billing::settle_many(conn, &charges).await,
                    )
                    .await
                    .unwrap();
                for (charge, result) in batch.iter().zip(results) {
                    match result {
                        Settlement::Settled { charged, .. } => {
                            assert_eq!(
                                charged, charge.cost,
                                "seed {seed:#x} step {step}: charged in full"
                            );
                            assert!(
                                settled
                                    .insert(charge.request_id, charge.cost.clone())
                                    .is_none(),
                                "settled twice"
                            );
                        }
                        Settlement::AlreadySettled => {
                            assert!(
                                settled.contains_key(&charge.request_id),
                                "seed {seed:#x} step {step}"
                            );
                        }
                    }
                }
            }
            // Grant or top up.
            7 => {
                let desired = Money::from_units(i128::from(rng.below(300_000_000) as u32)).unwrap();
                let request = LeaseRequest {
                    user_id: user,
                    desired,
                    minimum: Money::from_units(1).unwrap(),
                    max_percent: 50,
                    ttl_seconds: 600,
                };
                match processes[p].lease.as_mut() {
                    Some((id, account)) => {
                        if let Some(added) = leases::top_up(&mut conn, *id, &request).await.unwrap()
                        {
                            account.top_up(units(&added));
                        }
                    }
                    None => {
                        let id = Uuid::new_v4();
                        if let Some(granted) =
                            leases::grant(&mut conn, id, Uuid::new_v4(), &request)
                                .await
                                .unwrap()
                        {
                            processes[p].lease =
                                Some((id, domain::LeaseAccount::new(units(&granted))));
                        }
                    }
                }
            }
            // Give back what is unused (the user went idle), keeping the lease row for the
            // charges still to settle.
            8 => {
                if let Some((id, account)) = processes[p].lease.as_mut()
                    && account.calls() == 0
                {
                    let unused = Money::from_units(account.take_unused()).unwrap();
                    let back = leases::give_back(&mut conn, *id, &unused).await.unwrap();
                    assert_eq!(back, unused, "seed {seed:#x} step {step}: the row had it");
                    orphaned_leases.push(*id);
                    processes[p].lease = None;
                }
            }
            // Crash: the process forgets its lease and its calls in flight (never answered,
            // never charged); their holds and the lease wait for expiry.
            9 => {
                if let Some((id, _)) = processes[p].lease.take() {
                    orphaned_leases.push(id);
                }
                calls.retain(|c| {
                    if c.process == p && c.lease.is_none() {
                        orphaned_holds.push(c.request_id);
                    }
                    c.process != p
                });
            }
            _ => {}
        }
        // Expiry, once every charge that could arrive for them has settled.
        if pending.is_empty() && !orphaned_leases.is_empty() && rng.below(4) == 0 {
            for id in orphaned_leases.drain(..) {
                diesel::sql_query("UPDATE credit_leases SET expires_at = now() - interval '1 second' WHERE id = $1")
                    .bind::<diesel::sql_types::Uuid, _>(id)
                    .execute(&mut conn)
                    .await
                    .unwrap();
            }
            leases::release_expired(&mut conn, 0, 100).await.unwrap();
        }
        check(
            &pool, &mut conn, user, &processes, &calls, &pending, seed, step,
        )
        .await;
    }
    // Everything ends: calls finish, charges settle, leases go back, holds of crashed calls
    // expire; then nothing is held and the balance lost exactly what was charged.
    for call in calls.drain(..) {
        match call.lease {
            Some(_) => {}
            None => {
                billing::release_hold(&mut conn, call.request_id)
                    .await
                    .unwrap();
            }
        }
    }
    for pending in pending.drain(..) {
        let charge = Charge {
            request_id: pending.request_id,
            user_id: user,
            access_key_id: None,
            model_id: None,
            model_name: "m",
            usage: domain::Usage::default(),
            cost: &pending.cost,
            lease_id: pending.lease,
        };
        billing::settle(&mut conn, &charge).await.unwrap();
        settled.insert(pending.request_id, pending.cost.clone());
    }
    diesel::sql_query("UPDATE credit_leases SET expires_at = now() - interval '1 second'")
        .execute(&mut conn)
        .await
        .unwrap();
    leases::release_expired(&mut conn, 0, 1000).await.unwrap();
    diesel::sql_query("UPDATE balance_holds SET expires_at = now() - interval '1 second'")
        .execute(&mut conn)
        .await
        .unwrap();
    common::release_expired(&mut conn).await;
    assert!(
        leased_admits >= 15,
        "seed {seed:#x}: only {leased_admits} calls admitted by lease"
    );
    assert!(
        settled.len() >= 30,
        "seed {seed:#x}: only {} charges settled",
        settled.len()
    );
    let row = persistence::users::find(&mut conn, user).await.unwrap();
    assert_eq!(
        row.held,
        dec("0"),
        "seed {seed:#x}: nothing held at the end"
    );
    let charged: BigDecimal = settled.values().map(|m| m.as_decimal().clone()).sum();
    assert_eq!(row.balance, dec("10") - charged, "seed {seed:#x}");
    common::books_balance(&pool).await;
}

#[allow(clippy::too_many_arguments)]
async fn check(
    pool: &persistence::Pool,
    conn: &mut persistence::AsyncPgConnection,
    user: i64,
    processes: &[Process; 2],
    calls: &[Call],
    pending: &[Pending],
    seed: u64,
    step: usize,
) {
    let row = persistence::users::find(conn, user).await.unwrap();
    assert!(
        row.held <= row.balance,
        "seed {seed:#x} step {step}: held {} > balance {}",
        row.held,
        row.balance
    );
    assert!(row.balance >= dec("0"));
    for (index, process) in processes.iter().enumerate() {
        let Some((id, account)) = &process.lease else {
            continue;
        };
        #[derive(diesel::QueryableByName)]
        struct Amount {
            #[diesel(sql_type = diesel::sql_types::Numeric)]
            amount: BigDecimal,
        }
        let amount: Amount = diesel::sql_query("SELECT amount FROM credit_leases WHERE id = $1")
            .bind::<diesel::sql_types::Uuid, _>(*id)
            .get_result(conn)
            .await
            .unwrap();
        let unsettled: i128 = pending
            .iter()
            .filter(|c| c.lease == Some(*id))
            .map(|c| c.cost.units())
            .sum();
        let in_flight: i128 = calls
            .iter()
            .filter(|c| c.process == index && c.lease == Some(*id))
            .map(|c| c.reserved.units())
            .sum();
        assert_eq!(in_flight, account.in_flight());
        // With no overruns the row is exactly what the process counts on: what it may still
        // admit, its calls in flight, and its charges not yet settled.
        let covered =
            Money::from_units(account.available() + account.in_flight() + unsettled).unwrap();
        assert_eq!(
            amount.amount,
            *covered.as_decimal(),
            "seed {seed:#x} step {step}: lease row differs from what its process counts on"
        );
    }
    let mismatches = persistence::billing::reconcile(conn).await.unwrap();
    assert!(
        mismatches.is_empty(),
        "seed {seed:#x} step {step}: {mismatches:?}"
    );
    let _ = pool;
}
