//! Jobs' batched statements against a real Postgres: submission never admits more than the
//! balance covers, a job is claimed once however often it is named, completions are fenced.

#![allow(clippy::unwrap_used)]

use diesel::prelude::*;
use diesel_async::RunQueryDsl;
use domain::Money;
use persistence::billing;
use persistence::jobs::{self, Claim, Completion, Submission};
use persistence::schema::{async_jobs, billing_outbox, users};
use uuid::Uuid;

mod common;

use common::{books_balance, money, user_with_balance};

async fn image_model(pool: &persistence::Pool) -> i64 {
    use persistence::catalog::{self, NewModel, NewProvider};
    let mut conn = pool.get().await.unwrap();
    let name = format!("p-{}", Uuid::new_v4().simple());
    let provider = catalog::insert_provider(
        &mut conn,
        NewProvider {
            name: &name,
            kind: "openai",
            base_url: "http://127.0.0.1:1/v1",
            enabled: true,
        },
    )
    .await
    .unwrap();
    catalog::insert_model(
        &mut conn,
        NewModel {
            name: &name,
            provider_id: provider.id,
            upstream_model: "img",
            kind: "image",
            pricing: serde_json::json!({"per_image": "1"}),
            max_output_tokens: 1024,
            image_input_tokens: 1600,
            enabled: true,
        },
    )
    .await
    .unwrap()
    .id
}

fn submission(user_id: i64, model_id: i64, amount: &str) -> Submission {
    Submission {
        job_id: Uuid::new_v4(),
        job_type: domain::jobs::IMAGE_GENERATION.to_owned(),
        user_id,
        access_key_id: None,
        model_id,
        request_payload: serde_json::json!({"prompt": "p"}),
        callback_url: None,
        amount: money(amount),
    }
}

async fn held(pool: &persistence::Pool, user_id: i64) -> Money {
    let mut conn = pool.get().await.unwrap();
    let held: bigdecimal::BigDecimal = users::table
        .find(user_id)
        .select(users::held)
        .first(&mut conn)
        .await
        .unwrap();
    Money::from_db(held)
}

async fn job_count(pool: &persistence::Pool, user_id: i64) -> i64 {
    let mut conn = pool.get().await.unwrap();
    async_jobs::table
        .filter(async_jobs::user_id.eq(user_id))
        .count()
        .get_result(&mut conn)
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn one_batch_for_one_user_admits_exactly_what_the_balance_covers() {
    let pool = common::migrated_pool().await;
    let model = image_model(&pool).await;
    let user = user_with_balance(&pool, "6").await;
    let mut conn = pool.get().await.unwrap();
    // A lone submission (the single-statement path) is held and inserted PENDING.
    let lone = submission(user, model, "1");
    let admitted = jobs::submit_many(&mut conn, std::slice::from_ref(&lone), 900)
        .await
        .unwrap();
    assert_eq!(admitted, vec![true]);
    let (status, job_user): (String, i64) = async_jobs::table
        .filter(async_jobs::job_id.eq(lone.job_id))
        .select((async_jobs::status, async_jobs::user_id))
        .first(&mut conn)
        .await
        .unwrap();
    assert_eq!((status.as_str(), job_user), ("PENDING", user));
    assert_eq!(held(&pool, user).await, money("1"));

    let batch: Vec<Submission> = (0..20).map(|_| submission(user, model, "1")).collect();
    let admitted = jobs::submit_many(&mut conn, &batch, 900).await.unwrap();
    assert_eq!(admitted.len(), 20);
    assert_eq!(admitted.iter().filter(|a| **a).count(), 5);
    assert_eq!(job_count(&pool, user).await, 6);
    assert_eq!(held(&pool, user).await, money("6"));
    // Nothing left: a lone submission is refused and writes nothing.
    let more = jobs::submit_many(&mut conn, &[submission(user, model, "1")], 900)
        .await
        .unwrap();
    assert_eq!(more, vec![false]);
    assert_eq!(job_count(&pool, user).await, 6);
    assert_eq!(held(&pool, user).await, money("6"));
    books_balance(&pool).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn one_batch_of_several_users_and_amounts_admits_what_one_by_one_would() {
    let pool = common::migrated_pool().await;
    let model = image_model(&pool).await;
    let rich = user_with_balance(&pool, "100").await;
    let poor = user_with_balance(&pool, "5").await;
    let batch = vec![
        submission(poor, model, "3"),
        submission(rich, model, "40"),
        submission(poor, model, "1"),
        submission(poor, model, "3"),
        submission(rich, model, "60"),
        submission(poor, model, "1"),
        submission(rich, model, "1"),
        submission(poor, model, "1"),
    ];
    let mut conn = pool.get().await.unwrap();
    let admitted = jobs::submit_many(&mut conn, &batch, 900).await.unwrap();
    // poor: the three 1s fit (3 of 5), then a 3 would make 6; rich: 1 + 40 + 60 > 100, so
    // the cheapest two.
    assert_eq!(
        admitted,
        vec![false, true, true, false, false, true, true, true]
    );
    assert_eq!(held(&pool, poor).await, money("3"));
    assert_eq!(held(&pool, rich).await, money("41"));
    // Every refused job is dearer than what its user has left.
    assert_eq!(job_count(&pool, poor).await, 3);
    assert_eq!(job_count(&pool, rich).await, 2);
    books_balance(&pool).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn concurrent_batches_and_calls_never_admit_more_than_the_balance_nor_deadlock() {
    let pool = common::migrated_pool().await;
    let model = image_model(&pool).await;
    let user = user_with_balance(&pool, "50").await;
    let other = user_with_balance(&pool, "7").await;
    let batches = (0..10).map(|i| {
        let pool = pool.clone();
        tokio::spawn(async move {
            let batch: Vec<Submission> = (0..20)
                .map(|j| submission(if (i + j) % 3 == 0 { other } else { user }, model, "1"))
                .collect();
            let mut conn = pool.get().await.unwrap();
            jobs::submit_many(&mut conn, &batch, 900).await.unwrap()
        })
    });
    // Single calls' holds on the same users at the same time (they update the same rows).
    let calls = (0..20).map(|i| {
        let pool = pool.clone();
        tokio::spawn(async move {
            let mut conn = pool.get().await.unwrap();
            let who = if i % 2 == 0 { user } else { other };
            billing::place_hold(&mut conn, who, Uuid::new_v4(), &money("1"), 900)
                .await
                .unwrap()
                .is_some()
        })
    });
    // And lone submissions (the single-statement path), also at the same time.
    let lone = (0..20).map(|i| {
        let pool = pool.clone();
        tokio::spawn(async move {
            let who = if i % 2 == 0 { other } else { user };
            let mut conn = pool.get().await.unwrap();
            jobs::submit_many(&mut conn, &[submission(who, model, "1")], 900)
                .await
                .unwrap()
        })
    });
    let (batches, calls, lone) = tokio::join!(
        futures_util::future::join_all(batches),
        futures_util::future::join_all(calls),
        futures_util::future::join_all(lone)
    );
    let jobs_admitted: usize = batches
        .into_iter()
        .chain(lone)
        .map(|r| r.unwrap().into_iter().filter(|a| *a).count())
        .sum();
    let calls_admitted = calls.into_iter().filter(|r| *r.as_ref().unwrap()).count();
    assert_eq!(jobs_admitted + calls_admitted, 57);
    assert_eq!(held(&pool, user).await, money("50"));
    assert_eq!(held(&pool, other).await, money("7"));
    books_balance(&pool).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_batched_claim_takes_a_job_once_however_often_it_is_named() {
    let pool = common::migrated_pool().await;
    let model = image_model(&pool).await;
    let user = user_with_balance(&pool, "10").await;
    let (a, b) = (submission(user, model, "1"), submission(user, model, "1"));
    let mut conn = pool.get().await.unwrap();
    jobs::submit_many(&mut conn, &[a.clone(), b.clone()], 900)
        .await
        .unwrap();
    let unknown = Uuid::new_v4();
    let claims = jobs::claim_many(&mut conn, &[a.job_id, a.job_id, unknown, b.job_id], 60)
        .await
        .unwrap();
    assert!(
        matches!(&claims[0], Claim::Claimed(job) if job.job_id == a.job_id && job.attempts == 1)
    );
    assert!(matches!(claims[1], Claim::Busy { .. }), "{:?}", claims[1]);
    assert!(matches!(claims[2], Claim::Missing), "{:?}", claims[2]);
    assert!(matches!(&claims[3], Claim::Claimed(job) if job.job_id == b.job_id));
    // Claimed, so their message arrived: the sweeper's hint is set by the claim.
    let published: Vec<Option<chrono::DateTime<chrono::Utc>>> = async_jobs::table
        .filter(async_jobs::user_id.eq(user))
        .select(async_jobs::published_at)
        .load(&mut conn)
        .await
        .unwrap();
    assert!(published.iter().all(Option::is_some));

    // A's attempt completes; B's is fenced out by a later attempt number.
    let done = |job_id, attempts| Completion {
        job_id,
        attempts,
        result: serde_json::json!({"data": []}),
        cost: money("1"),
        charge: serde_json::json!({"request_id": job_id}),
    };
    let completed = jobs::complete_many(&mut conn, &[done(a.job_id, 1), done(b.job_id, 2)])
        .await
        .unwrap();
    assert_eq!(completed, vec![true, false]);
    // A duplicate message for a finished job: nothing to claim, nothing to redo.
    let again = jobs::claim_many(&mut conn, &[a.job_id], 60).await.unwrap();
    assert!(matches!(again[0], Claim::Finished), "{:?}", again[0]);
    // A completion repeated (e.g. retried after a lost answer) changes nothing more.
    let repeated = jobs::complete_many(&mut conn, &[done(a.job_id, 1)])
        .await
        .unwrap();
    assert_eq!(repeated, vec![false]);
    let parked: Vec<Uuid> = billing_outbox::table
        .select(billing_outbox::request_id)
        .load(&mut conn)
        .await
        .unwrap();
    assert_eq!(parked, vec![a.job_id]);
    billing::outbox_delete_requests(&mut conn, &[a.job_id, b.job_id])
        .await
        .unwrap();
    let left: i64 = billing_outbox::table
        .count()
        .get_result(&mut conn)
        .await
        .unwrap();
    assert_eq!(left, 0);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_submission_does_not_wait_for_a_concurrent_insert_that_references_its_user() {
    use diesel_async::AsyncConnection;
    let pool = common::migrated_pool().await;
    let model = image_model(&pool).await;
    let (a, b) = (
        user_with_balance(&pool, "10").await,
        user_with_balance(&pool, "10").await,
    );
    let mut settling = pool.get().await.unwrap();
    settling
        .transaction::<_, persistence::StoreError, _>(async |conn| {
            // What a settlement's usage-log insert takes on its user (the foreign key check);
            // waiting for it while holding another user's row is how a deadlock starts.
            diesel::sql_query("SELECT id FROM users WHERE id = $1 FOR KEY SHARE")
                .bind::<diesel::sql_types::BigInt, _>(b)
                .execute(conn)
                .await?;
            let mut submitting = pool.get().await.unwrap();
            let batch = [submission(a, model, "1"), submission(b, model, "1")];
            let admitted = tokio::time::timeout(
                std::time::Duration::from_secs(5),
                jobs::submit_many(&mut submitting, &batch, 900),
            )
            .await
            .expect("the submission waited for the settlement's row lock")?;
            assert_eq!(admitted, vec![true, true]);
            Ok(())
        })
        .await
        .unwrap();
    books_balance(&pool).await;
}

/// Sets a job's state and times `ago_seconds` in the past.
async fn age_job(pool: &persistence::Pool, job_id: Uuid, status: &str, ago_seconds: i64) {
    let mut conn = pool.get().await.unwrap();
    diesel::sql_query(
        "UPDATE async_jobs SET status = $2,
             created_at = now() - make_interval(secs => $3),
             updated_at = now() - make_interval(secs => $3),
             lease_expires_at = CASE WHEN $2 = 'PROCESSING'
                 THEN now() - make_interval(secs => $3) / 2 END
         WHERE job_id = $1",
    )
    .bind::<diesel::sql_types::Uuid, _>(job_id)
    .bind::<diesel::sql_types::Text, _>(status)
    .bind::<diesel::sql_types::Double, _>(ago_seconds as f64)
    .execute(&mut conn)
    .await
    .unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn a_stranded_job_is_re_published_once_per_window_not_on_every_sweep() {
    let pool = common::migrated_pool().await;
    let model = image_model(&pool).await;
    let user = user_with_balance(&pool, "10").await;
    let batch: Vec<Submission> = (0..4).map(|_| submission(user, model, "1")).collect();
    let mut conn = pool.get().await.unwrap();
    jobs::submit_many(&mut conn, &batch, 900).await.unwrap();
    let [fresh, pending, expired, leased] = [0, 1, 2, 3].map(|i| batch[i].job_id);
    age_job(&pool, pending, "PENDING", 120).await;
    age_job(&pool, expired, "PROCESSING", 120).await;
    age_job(&pool, leased, "PROCESSING", 120).await;
    diesel::sql_query(
        "UPDATE async_jobs SET lease_expires_at = now() + interval '1 minute' WHERE job_id = $1",
    )
    .bind::<diesel::sql_types::Uuid, _>(leased)
    .execute(&mut conn)
    .await
    .unwrap();

    let sorted = |mut ids: Vec<Uuid>| {
        ids.sort();
        ids
    };
    let expected = sorted(vec![pending, expired]);
    let first = sorted(jobs::stranded(&mut conn, 30, 10_000).await.unwrap());
    assert_eq!(
        first, expected,
        "not the fresh job {fresh}, nor the leased one"
    );
    for id in &first {
        jobs::mark_published(&mut conn, *id).await.unwrap();
    }
    // The next sweeps, within the window, leave them alone.
    assert!(sorted(jobs::stranded(&mut conn, 30, 10_000).await.unwrap()).is_empty());
    // A window later (their message lost too), they are re-published again.
    let again = sorted(jobs::stranded(&mut conn, 0, 10_000).await.unwrap());
    assert!(
        again.contains(&pending) && again.contains(&expired),
        "{again:?}"
    );
    assert!(!again.contains(&leased));
}

#[tokio::test(flavor = "multi_thread")]
async fn an_expired_hold_stays_while_its_job_runs_or_its_charge_waits_in_the_outbox() {
    let pool = common::migrated_pool().await;
    let model = image_model(&pool).await;
    let user = user_with_balance(&pool, "10").await;
    let mut conn = pool.get().await.unwrap();
    // A job, and a call whose charge is parked in the outbox, both past their holds' TTL.
    let job = submission(user, model, "3");
    assert_eq!(
        jobs::submit_many(&mut conn, std::slice::from_ref(&job), 0)
            .await
            .unwrap(),
        vec![true]
    );
    let call = Uuid::new_v4();
    billing::place_hold(&mut conn, user, call, &money("2"), 0)
        .await
        .unwrap()
        .unwrap();
    billing::outbox_insert_many(
        &mut conn,
        &[(call, serde_json::json!({"request_id": call}).to_string())],
    )
    .await
    .unwrap();
    tokio::time::sleep(std::time::Duration::from_millis(50)).await;

    // A worker outage or a broker outage longer than the TTL: both holds are kept.
    assert_eq!(common::release_expired(&mut conn).await, 0);
    assert_eq!(held(&pool, user).await, money("5"));
    // Once the charge has left the outbox (published), the call's hold expires as before; the
    // job's stays until the job ends.
    billing::outbox_delete_requests(&mut conn, &[call])
        .await
        .unwrap();
    assert_eq!(common::release_expired(&mut conn).await, 1);
    assert_eq!(held(&pool, user).await, money("3"));
    books_balance(&pool).await;
}
