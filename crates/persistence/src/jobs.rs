//! Asynchronous jobs: submission with its hold, the worker's claim with a lease, the terminal
//! transitions (each with its money effect in the same transaction), and webhook deliveries.

use bigdecimal::BigDecimal;
use chrono::{DateTime, Utc};
use diesel::prelude::*;
use diesel_async::{AsyncConnection, AsyncPgConnection, RunQueryDsl};
use domain::{JobStatus, Money};
use uuid::Uuid;

use crate::billing;
use crate::prepared::Prepared;
use crate::schema::{async_jobs, llm_models, webhook_deliveries};
use crate::{Page, Paged, StoreError};

#[derive(Debug, Clone, Queryable, Selectable)]
#[diesel(table_name = async_jobs)]
pub struct Job {
    pub id: i64,
    pub job_id: Uuid,
    pub job_type: String,
    pub user_id: i64,
    pub access_key_id: Option<i64>,
    pub model_id: i64,
    pub status: String,
    pub request_payload: serde_json::Value,
    pub result_payload: Option<serde_json::Value>,
    pub error_message: Option<String>,
    pub attempts: i32,
    pub lease_expires_at: Option<DateTime<Utc>>,
    pub cost: Option<BigDecimal>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    pub callback_url: Option<String>,
    pub published_at: Option<DateTime<Utc>>,
}

/// The `count(*) AS n` that the single-statement job steps answer with.
#[derive(QueryableByName)]
struct CountRow {
    #[diesel(sql_type = diesel::sql_types::BigInt)]
    n: i64,
}

/// A job to submit (see [`submit`]).
#[derive(Debug)]
pub struct NewJob<'a> {
    pub job_id: Uuid,
    pub job_type: &'a str,
    pub user_id: i64,
    pub access_key_id: Option<i64>,
    pub model_id: i64,
    pub request_payload: &'a serde_json::Value,
    pub callback_url: Option<&'a str>,
}

/// Holds `amount` for the job (request id = job id) and inserts it PENDING, in ONE statement
/// (one round trip, one commit). `false` when the balance cannot cover the hold (nothing is
/// written). Run it on a durable connection: the caller answers 202 with the job id right after.
pub async fn submit(
    conn: &mut AsyncPgConnection,
    new: NewJob<'_>,
    amount: &Money,
    hold_ttl_seconds: i64,
) -> Result<bool, StoreError> {
    use diesel::sql_types::{BigInt, Jsonb, Nullable, Numeric, Text, Uuid as SqlUuid};

    enum SubmitJob {}
    let submitted: CountRow = Prepared::<SubmitJob>::new(concat!(
        crate::billing::hold_cte!(),
        ", job AS (
             INSERT INTO async_jobs (job_id, job_type, user_id, access_key_id, model_id,
                 request_payload, callback_url)
             SELECT $2, $5, user_id, $6, $7, $8, $9 FROM held
             RETURNING id)
         SELECT count(*) AS n FROM job"
    ))
    .bind::<BigInt, _>(new.user_id)
    .bind::<SqlUuid, _>(new.job_id)
    .bind::<Numeric, _>(amount.as_decimal())
    .bind::<BigInt, _>(hold_ttl_seconds)
    .bind::<Text, _>(new.job_type)
    .bind::<Nullable<BigInt>, _>(new.access_key_id)
    .bind::<BigInt, _>(new.model_id)
    .bind::<Jsonb, _>(new.request_payload)
    .bind::<Nullable<Text>, _>(new.callback_url)
    .get_result(conn)
    .await?;
    Ok(submitted.n == 1)
}

pub async fn mark_published(conn: &mut AsyncPgConnection, job_id: Uuid) -> Result<(), StoreError> {
    diesel::update(async_jobs::table.filter(async_jobs::job_id.eq(job_id)))
        .set(async_jobs::published_at.eq(diesel::dsl::now))
        .execute(conn)
        .await?;
    Ok(())
}

/// What a worker found when it tried to take a job.
#[derive(Debug)]
pub enum Claim {
    /// Taken: PROCESSING under this worker's lease; `attempts` fences later updates.
    Claimed(Box<Job>),
    /// Another worker holds an unexpired lease: try again after it.
    Busy { lease_expires_at: DateTime<Utc> },
    /// Already COMPLETED or FAILED: nothing to do.
    Finished,
    /// No such job (e.g. its message outlived it).
    Missing,
}

/// Takes a job with ONE conditional update: PENDING, or PROCESSING whose lease expired (its
/// worker died), becomes PROCESSING with a new lease and attempts + 1.
pub async fn claim(
    conn: &mut AsyncPgConnection,
    job_id: Uuid,
    lease_seconds: i64,
) -> Result<Claim, StoreError> {
    let lease = Utc::now() + chrono::Duration::seconds(lease_seconds);
    let claimable = async_jobs::status
        .eq(JobStatus::Pending.as_str())
        .or(async_jobs::status
            .eq(JobStatus::Processing.as_str())
            .and(async_jobs::lease_expires_at.lt(Utc::now())));
    let claimed: Option<Job> = diesel::update(
        async_jobs::table
            .filter(async_jobs::job_id.eq(job_id))
            .filter(claimable),
    )
    .set((
        async_jobs::status.eq(JobStatus::Processing.as_str()),
        async_jobs::attempts.eq(async_jobs::attempts + 1),
        async_jobs::lease_expires_at.eq(Some(lease)),
        async_jobs::updated_at.eq(diesel::dsl::now),
    ))
    .returning(Job::as_returning())
    .get_result(conn)
    .await
    .optional()?;
    if let Some(job) = claimed {
        return Ok(Claim::Claimed(Box::new(job)));
    }
    let current: Option<Job> = async_jobs::table
        .filter(async_jobs::job_id.eq(job_id))
        .select(Job::as_select())
        .first(conn)
        .await
        .optional()?;
    Ok(match current {
        None => Claim::Missing,
        Some(job) if job.status == JobStatus::Processing.as_str() => Claim::Busy {
            lease_expires_at: job.lease_expires_at.unwrap_or_else(Utc::now),
        },
        Some(_) => Claim::Finished,
    })
}

/// The job, only while this attempt still holds it: PROCESSING with the attempt number it
/// was claimed with (a takeover bumps it), so a worker that lost its lease changes nothing.
macro_rules! still_mine {
    ($job_id:expr, $attempts:expr) => {
        async_jobs::table
            .filter(async_jobs::job_id.eq($job_id))
            .filter(async_jobs::status.eq(JobStatus::Processing.as_str()))
            .filter(async_jobs::attempts.eq($attempts))
    };
}

fn lost_lease(job_id: Uuid) -> StoreError {
    StoreError::StateConflict(format!("job {job_id} is no longer held by this attempt"))
}

async fn queue_webhook(conn: &mut AsyncPgConnection, job: &Job) -> Result<(), StoreError> {
    if let Some(url) = &job.callback_url {
        diesel::insert_into(webhook_deliveries::table)
            .values((
                webhook_deliveries::job_id.eq(job.job_id),
                webhook_deliveries::url.eq(url),
            ))
            .on_conflict(webhook_deliveries::job_id)
            .do_nothing()
            .execute(conn)
            .await?;
    }
    Ok(())
}

/// COMPLETED with its result and cost, and the charge parked in the outbox (and the webhook
/// queued, if the job has one), in ONE statement, so in one round trip and one commit: once
/// the job says COMPLETED its charge cannot be lost (the caller then publishes it and, once
/// confirmed, removes the outbox row; the sweeper settles it otherwise). Fenced by `attempts`:
/// a worker whose lease was taken over changes nothing (`StateConflict`).
pub async fn complete(
    conn: &mut AsyncPgConnection,
    job_id: Uuid,
    attempts: i32,
    result: &serde_json::Value,
    cost: &Money,
    charge: &serde_json::Value,
) -> Result<(), StoreError> {
    use diesel::sql_types::{Int4, Jsonb, Numeric, Uuid as SqlUuid};

    enum CompleteJob {}
    let done: CountRow = Prepared::<CompleteJob>::new(
        "WITH done AS (
             UPDATE async_jobs SET status = 'COMPLETED', result_payload = $3, cost = $4,
                 lease_expires_at = NULL, updated_at = now()
             WHERE job_id = $1 AND status = 'PROCESSING' AND attempts = $2
             RETURNING job_id, callback_url),
         parked AS (
             INSERT INTO billing_outbox (request_id, payload) SELECT job_id, $5 FROM done
             ON CONFLICT (request_id) DO NOTHING),
         hooked AS (
             INSERT INTO webhook_deliveries (job_id, url)
             SELECT job_id, callback_url FROM done WHERE callback_url IS NOT NULL
             ON CONFLICT (job_id) DO NOTHING)
         SELECT count(*) AS n FROM done",
    )
    .bind::<SqlUuid, _>(job_id)
    .bind::<Int4, _>(attempts)
    .bind::<Jsonb, _>(result)
    .bind::<Numeric, _>(cost.as_decimal())
    .bind::<Jsonb, _>(charge)
    .get_result(conn)
    .await?;
    if done.n == 0 {
        return Err(lost_lease(job_id));
    }
    Ok(())
}

/// FAILED with a readable reason, and its hold released, in one transaction (fenced).
pub async fn fail(
    conn: &mut AsyncPgConnection,
    job_id: Uuid,
    attempts: i32,
    error_message: &str,
) -> Result<Job, StoreError> {
    conn.transaction::<_, StoreError, _>(async |conn| {
        let job: Job = diesel::update(still_mine!(job_id, attempts))
            .set((
                async_jobs::status.eq(JobStatus::Failed.as_str()),
                async_jobs::error_message.eq(Some(error_message)),
                async_jobs::lease_expires_at.eq(None::<DateTime<Utc>>),
                async_jobs::updated_at.eq(diesel::dsl::now),
            ))
            .returning(Job::as_returning())
            .get_result(conn)
            .await
            .optional()?
            .ok_or_else(|| lost_lease(job_id))?;
        billing::release_hold(conn, job_id).await?;
        queue_webhook(conn, &job).await?;
        Ok(job)
    })
    .await
}

/// Back to PENDING after a transient failure, to be claimed again when its retry arrives.
pub async fn requeue(
    conn: &mut AsyncPgConnection,
    job_id: Uuid,
    attempts: i32,
) -> Result<(), StoreError> {
    let updated = diesel::update(still_mine!(job_id, attempts))
        .set((
            async_jobs::status.eq(JobStatus::Pending.as_str()),
            async_jobs::lease_expires_at.eq(None::<DateTime<Utc>>),
            async_jobs::updated_at.eq(diesel::dsl::now),
        ))
        .execute(conn)
        .await?;
    if updated == 0 {
        return Err(lost_lease(job_id));
    }
    Ok(())
}

/// Jobs that may have no message in flight: PENDING and never published (or idle for
/// `idle_seconds`), or PROCESSING with an expired lease. The sweeper re-publishes them.
pub async fn stranded(
    conn: &mut AsyncPgConnection,
    idle_seconds: i64,
    limit: i64,
) -> Result<Vec<Uuid>, StoreError> {
    let idle_since = Utc::now() - chrono::Duration::seconds(idle_seconds);
    Ok(async_jobs::table
        .filter(
            async_jobs::status
                .eq(JobStatus::Pending.as_str())
                .and(
                    async_jobs::published_at
                        .is_null()
                        .or(async_jobs::updated_at.lt(idle_since)),
                )
                .and(async_jobs::created_at.lt(idle_since))
                .or(async_jobs::status
                    .eq(JobStatus::Processing.as_str())
                    .and(async_jobs::lease_expires_at.lt(Utc::now()))),
        )
        .order(async_jobs::id)
        .limit(limit)
        .select(async_jobs::job_id)
        .load(conn)
        .await?)
}

/// A job with its model's public name, for the API.
pub type JobWithModel = (Job, String);

/// The API's Job object of a stored job.
pub fn view(job: &Job, model: &str) -> domain::JobView {
    domain::JobView {
        job_id: job.job_id,
        job_type: job.job_type.clone(),
        model: model.to_owned(),
        status: job.status.parse().unwrap_or(JobStatus::Pending),
        result: job
            .result_payload
            .clone()
            .filter(|_| job.status == JobStatus::Completed.as_str()),
        error: job
            .error_message
            .clone()
            .filter(|_| job.status == JobStatus::Failed.as_str()),
        cost: job.cost.clone().map(Money::from_db),
        created_at: job.created_at,
        updated_at: job.updated_at,
    }
}

/// The job if it belongs to this user; another user's job is `NotFound`, like an unknown one.
pub async fn find_for_user(
    conn: &mut AsyncPgConnection,
    job_id: Uuid,
    user_id: i64,
) -> Result<JobWithModel, StoreError> {
    Ok(async_jobs::table
        .inner_join(llm_models::table)
        .filter(async_jobs::job_id.eq(job_id))
        .filter(async_jobs::user_id.eq(user_id))
        .select((Job::as_select(), llm_models::name))
        .first(conn)
        .await?)
}

pub async fn find(conn: &mut AsyncPgConnection, job_id: Uuid) -> Result<JobWithModel, StoreError> {
    Ok(async_jobs::table
        .inner_join(llm_models::table)
        .filter(async_jobs::job_id.eq(job_id))
        .select((Job::as_select(), llm_models::name))
        .first(conn)
        .await?)
}

pub async fn list(
    conn: &mut AsyncPgConnection,
    user_id: Option<i64>,
    page: Page,
) -> Result<Paged<JobWithModel>, StoreError> {
    let mut query = async_jobs::table.inner_join(llm_models::table).into_boxed();
    let mut count = async_jobs::table.into_boxed();
    if let Some(user_id) = user_id {
        query = query.filter(async_jobs::user_id.eq(user_id));
        count = count.filter(async_jobs::user_id.eq(user_id));
    }
    let rows = query
        .order((async_jobs::created_at.desc(), async_jobs::id.desc()))
        .limit(page.limit)
        .offset(page.offset)
        .select((Job::as_select(), llm_models::name))
        .load(conn)
        .await?;
    let total = count.count().get_result(conn).await?;
    Ok(Paged { rows, total })
}

#[derive(Debug, Clone, Queryable, QueryableByName, Selectable)]
#[diesel(table_name = webhook_deliveries)]
pub struct WebhookDelivery {
    pub id: i64,
    pub job_id: Uuid,
    pub url: String,
    pub attempts: i32,
    pub next_attempt_at: DateTime<Utc>,
    pub delivered_at: Option<DateTime<Utc>>,
    pub last_error: Option<String>,
    pub created_at: DateTime<Utc>,
}

/// Claims up to `limit` deliveries due now with fewer than `max_attempts` tries: their next
/// attempt moves `claim_seconds` ahead, so parallel sweepers do not send the same one twice.
pub async fn claim_due_webhooks(
    conn: &mut AsyncPgConnection,
    max_attempts: i32,
    limit: i64,
    claim_seconds: i64,
) -> Result<Vec<WebhookDelivery>, StoreError> {
    use diesel::sql_types::{BigInt, Int4};
    Ok(diesel::sql_query(
        "UPDATE webhook_deliveries SET next_attempt_at = now() + make_interval(secs => $3)
         WHERE id IN (SELECT id FROM webhook_deliveries
                      WHERE delivered_at IS NULL AND attempts < $1 AND next_attempt_at <= now()
                      ORDER BY next_attempt_at LIMIT $2 FOR UPDATE SKIP LOCKED)
         RETURNING *",
    )
    .bind::<Int4, _>(max_attempts)
    .bind::<BigInt, _>(limit)
    .bind::<BigInt, _>(claim_seconds)
    .load(conn)
    .await?)
}

/// Records one delivery attempt: delivered, or failed with the next try after `retry_in`.
pub async fn record_webhook_attempt(
    conn: &mut AsyncPgConnection,
    id: i64,
    outcome: Result<(), &str>,
    retry_in: chrono::Duration,
) -> Result<(), StoreError> {
    let target = webhook_deliveries::table.find(id);
    match outcome {
        Ok(()) => {
            diesel::update(target)
                .set((
                    webhook_deliveries::attempts.eq(webhook_deliveries::attempts + 1),
                    webhook_deliveries::delivered_at.eq(Some(Utc::now())),
                    webhook_deliveries::last_error.eq(None::<String>),
                ))
                .execute(conn)
                .await?
        }
        Err(error) => {
            diesel::update(target)
                .set((
                    webhook_deliveries::attempts.eq(webhook_deliveries::attempts + 1),
                    webhook_deliveries::next_attempt_at.eq(Utc::now() + retry_in),
                    webhook_deliveries::last_error.eq(Some(error)),
                ))
                .execute(conn)
                .await?
        }
    };
    Ok(())
}
