//! Asynchronous jobs: submission with its hold, the worker's claim with a lease, the terminal
//! transitions (each with its money effect in the same transaction), and webhook deliveries.

use std::collections::HashSet;

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

#[derive(Debug, Clone, Queryable, QueryableByName, Selectable)]
#[diesel(table_name = async_jobs)]
pub struct Job {
    pub id: i64,
    pub job_id: Uuid,
    pub job_type: String,
    pub user_id: i64,
    pub access_key_id: Option<i64>,
    pub model_id: i64,
    #[diesel(deserialize_as = crate::stored::Stored<JobStatus>)]
    pub status: JobStatus,
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

/// A job to submit (see [`submit_many`]).
#[derive(Debug, Clone)]
pub struct Submission {
    pub job_id: Uuid,
    pub job_type: String,
    pub user_id: i64,
    pub access_key_id: Option<i64>,
    pub model_id: i64,
    pub request_payload: serde_json::Value,
    pub callback_url: Option<String>,
    /// The hold: the most the job may cost.
    pub amount: Money,
}

#[derive(QueryableByName)]
struct JobIdRow {
    #[diesel(sql_type = diesel::sql_types::Uuid)]
    job_id: Uuid,
}

/// Submits many jobs in one call of the SQL function `submit_jobs` (one round trip, which
/// also commits): each job is admitted only if its hold fits in its user's balance minus open
/// holds, and then held (request id = job id) and inserted PENDING; answers, per job, whether
/// it was admitted (nothing is written for the others). Several jobs of one user are admitted
/// cheapest first while the running sum of their holds fits, which is what admitting them one
/// by one in that order would do, so never more than the balance covers. Run it on a durable
/// connection: the caller answers 202 with the job id right after.
///
/// The function locks the users' rows in id order (the order settlements lock them in) by a
/// statement of its own, and only as strongly as updating `held` needs: NO KEY UPDATE, which
/// does not wait for a concurrent insert that merely references a user (a usage log being
/// settled). Its next statement then reads balances no one else can change until the commit.
/// Locking and updating in one statement would update from that statement's older snapshot,
/// which re-locks a row another transaction changed meanwhile, and that can deadlock with a
/// third one waiting for it.
pub async fn submit_many(
    conn: &mut AsyncPgConnection,
    jobs: &[Submission],
    hold_ttl_seconds: i64,
) -> Result<Vec<bool>, StoreError> {
    use diesel::sql_types::{Array, BigInt, Jsonb, Nullable, Numeric, Text, Uuid as SqlUuid};

    enum SubmitJobs {}
    let admitted: Vec<JobIdRow> = Prepared::<SubmitJobs>::new(
        "SELECT job_id FROM submit_jobs($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)",
    )
    .bind::<Array<BigInt>, _>((0..jobs.len() as i64).collect::<Vec<_>>())
    .bind::<Array<SqlUuid>, _>(jobs.iter().map(|j| j.job_id).collect::<Vec<_>>())
    .bind::<Array<BigInt>, _>(jobs.iter().map(|j| j.user_id).collect::<Vec<_>>())
    .bind::<Array<Numeric>, _>(
        jobs.iter()
            .map(|j| j.amount.as_decimal().clone())
            .collect::<Vec<_>>(),
    )
    .bind::<Array<Text>, _>(jobs.iter().map(|j| j.job_type.clone()).collect::<Vec<_>>())
    .bind::<Array<Nullable<BigInt>>, _>(jobs.iter().map(|j| j.access_key_id).collect::<Vec<_>>())
    .bind::<Array<BigInt>, _>(jobs.iter().map(|j| j.model_id).collect::<Vec<_>>())
    .bind::<Array<Jsonb>, _>(
        jobs.iter()
            .map(|j| j.request_payload.clone())
            .collect::<Vec<_>>(),
    )
    .bind::<Array<Nullable<Text>>, _>(
        jobs.iter()
            .map(|j| j.callback_url.clone())
            .collect::<Vec<_>>(),
    )
    .bind::<BigInt, _>(hold_ttl_seconds)
    .load::<JobIdRow>(conn)
    .await?;
    let admitted: HashSet<Uuid> = admitted.into_iter().map(|r| r.job_id).collect();
    Ok(jobs.iter().map(|j| admitted.contains(&j.job_id)).collect())
}

/// One job through [`submit_many`]'s statement (the one admission rule): held only if the user
/// is active and `balance - held` covers it, then inserted PENDING; `false`, with nothing
/// written, if not.
pub(crate) async fn submit_one(
    conn: &mut AsyncPgConnection,
    job: &Submission,
    hold_ttl_seconds: i64,
) -> Result<bool, StoreError> {
    Ok(
        submit_many(conn, std::slice::from_ref(job), hold_ttl_seconds)
            .await?
            .into_iter()
            .any(|admitted| admitted),
    )
}

/// Records that the sweeper re-published a job, so it waits a whole window before the next
/// re-publish (see [`stranded`]).
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

/// Takes jobs with ONE conditional update (the deliveries a worker has in flight): each that
/// is PENDING, or PROCESSING whose lease expired (its worker died), becomes PROCESSING with a
/// new lease and attempts + 1; answers per requested id. A job named twice is claimed once:
/// its first request gets it, the other sees it `Busy`.
/// Claiming also records that the job's message arrived (`published_at`), so the submit path
/// needs no write of its own for that.
pub async fn claim_many(
    conn: &mut AsyncPgConnection,
    job_ids: &[Uuid],
    lease_seconds: i64,
) -> Result<Vec<Claim>, StoreError> {
    use diesel::sql_types::{Array, BigInt, Uuid as SqlUuid};
    use std::collections::HashMap;

    enum ClaimJobs {}
    // A join with the ids rather than `= ANY($1)`, and the state test as a CASE, which the
    // planner cannot match with the partial index of open jobs: otherwise it may scan every
    // open job (and, before vacuum, every job ever finished) instead of looking each id up.
    let claimed: Vec<Job> = Prepared::<ClaimJobs>::new(
        "UPDATE async_jobs j SET status = 'PROCESSING', attempts = j.attempts + 1,
             lease_expires_at = now() + make_interval(secs => $2), updated_at = now(),
             published_at = COALESCE(j.published_at, now())
         FROM (SELECT DISTINCT job_id FROM unnest($1::uuid[]) AS i(job_id)) i
         WHERE j.job_id = i.job_id
           AND CASE j.status WHEN 'PENDING' THEN true
                             WHEN 'PROCESSING' THEN j.lease_expires_at < now()
                             ELSE false END
         RETURNING j.*",
    )
    .bind::<Array<SqlUuid>, _>(job_ids.to_vec())
    .bind::<BigInt, _>(lease_seconds)
    .load(conn)
    .await?;
    let mut claimed: HashMap<Uuid, Job> = claimed.into_iter().map(|j| (j.job_id, j)).collect();
    let mut answers: Vec<Option<Claim>> = job_ids
        .iter()
        .map(|id| claimed.remove(id).map(|job| Claim::Claimed(Box::new(job))))
        .collect();
    let missed: Vec<Uuid> = job_ids
        .iter()
        .zip(&answers)
        .filter(|(_, answer)| answer.is_none())
        .map(|(id, _)| *id)
        .collect();
    if !missed.is_empty() {
        // Rare: a duplicate message, a job held by another worker, or one already finished.
        let current: HashMap<Uuid, (String, Option<DateTime<Utc>>)> = async_jobs::table
            .filter(async_jobs::job_id.eq_any(&missed))
            .select((
                async_jobs::job_id,
                async_jobs::status,
                async_jobs::lease_expires_at,
            ))
            .load::<(Uuid, String, Option<DateTime<Utc>>)>(conn)
            .await?
            .into_iter()
            .map(|(id, status, lease)| (id, (status, lease)))
            .collect();
        for (id, answer) in job_ids.iter().zip(answers.iter_mut()) {
            if answer.is_some() {
                continue;
            }
            *answer = Some(match current.get(id) {
                None => Claim::Missing,
                Some((status, lease)) if status == JobStatus::Processing.as_str() => Claim::Busy {
                    lease_expires_at: lease.unwrap_or_else(Utc::now),
                },
                Some((status, _)) if status == JobStatus::Pending.as_str() => Claim::Busy {
                    // Handed back meanwhile (a retry is scheduled): look again shortly.
                    lease_expires_at: Utc::now(),
                },
                Some(_) => Claim::Finished,
            });
        }
    }
    Ok(answers
        .into_iter()
        .map(|a| a.unwrap_or(Claim::Missing))
        .collect())
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

/// A successful attempt's outcome (see [`complete_many`]).
#[derive(Debug, Clone)]
pub struct Completion {
    pub job_id: Uuid,
    /// The attempt number it was claimed with (the fence).
    pub attempts: i32,
    pub result: serde_json::Value,
    pub cost: Money,
    /// The billing message, parked in the outbox with the result.
    pub charge: serde_json::Value,
}

/// Marks jobs COMPLETED with their result and cost, and parks each charge in the outbox (and
/// queues the webhook, if the job has one), in ONE statement, so in one round trip and one
/// commit: once a job says COMPLETED its charge cannot be lost (the caller then publishes it
/// and, once confirmed, removes the outbox row; the sweeper settles it otherwise). Fenced by
/// `attempts`: answers, per job, whether this attempt still held it (`false`: its lease was
/// taken over, and nothing was written for it).
pub async fn complete_many(
    conn: &mut AsyncPgConnection,
    completions: &[Completion],
) -> Result<Vec<bool>, StoreError> {
    use diesel::sql_types::{Array, Int4, Jsonb, Numeric, Uuid as SqlUuid};

    enum CompleteJobs {}
    // The state test as a CASE for the same reason as in `claim_many`.
    let done: Vec<JobIdRow> = Prepared::<CompleteJobs>::new(
        "WITH c AS (
             SELECT * FROM unnest($1::uuid[], $2::int4[], $3::jsonb[], $4::numeric[], $5::jsonb[])
                 AS c(job_id, attempts, result, cost, charge)),
         done AS (
             UPDATE async_jobs j SET status = 'COMPLETED', result_payload = c.result,
                 cost = c.cost, lease_expires_at = NULL, updated_at = now()
             FROM c
             WHERE j.job_id = c.job_id
               AND CASE j.status WHEN 'PROCESSING' THEN j.attempts = c.attempts ELSE false END
             RETURNING j.job_id, j.callback_url, c.charge),
         parked AS (
             INSERT INTO billing_outbox (request_id, payload) SELECT job_id, charge FROM done
             ON CONFLICT (request_id) DO NOTHING),
         hooked AS (
             INSERT INTO webhook_deliveries (job_id, url)
             SELECT job_id, callback_url FROM done WHERE callback_url IS NOT NULL
             ON CONFLICT (job_id) DO NOTHING)
         SELECT job_id FROM done",
    )
    .bind::<Array<SqlUuid>, _>(completions.iter().map(|c| c.job_id).collect::<Vec<_>>())
    .bind::<Array<Int4>, _>(completions.iter().map(|c| c.attempts).collect::<Vec<_>>())
    .bind::<Array<Jsonb>, _>(
        completions
            .iter()
            .map(|c| c.result.clone())
            .collect::<Vec<_>>(),
    )
    .bind::<Array<Numeric>, _>(
        completions
            .iter()
            .map(|c| c.cost.as_decimal().clone())
            .collect::<Vec<_>>(),
    )
    .bind::<Array<Jsonb>, _>(
        completions
            .iter()
            .map(|c| c.charge.clone())
            .collect::<Vec<_>>(),
    )
    .load(conn)
    .await?;
    // Each completed job answers once, to its first request.
    let mut done: HashSet<Uuid> = done.into_iter().map(|r| r.job_id).collect();
    Ok(completions.iter().map(|c| done.remove(&c.job_id)).collect())
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

/// Jobs that may have no message in flight: PENDING with no change and no (re-)publish for
/// `idle_seconds`, or PROCESSING with a lease that expired with no re-publish since (or none
/// for `idle_seconds`). The sweeper re-publishes them and records it in `published_at` (which
/// the first claim also sets; a submission does not), so a job waiting in a long queue gets
/// one more message per `idle_seconds`, not one per sweep.
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
                .and(async_jobs::updated_at.lt(idle_since))
                .and(
                    async_jobs::published_at
                        .is_null()
                        .or(async_jobs::published_at.lt(idle_since)),
                )
                .or(async_jobs::status
                    .eq(JobStatus::Processing.as_str())
                    .and(async_jobs::lease_expires_at.lt(Utc::now()))
                    .and(
                        async_jobs::published_at
                            .is_null()
                            .or(async_jobs::published_at.lt(async_jobs::lease_expires_at))
                            .or(async_jobs::published_at.lt(idle_since)),
                    )),
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
        status: job.status,
        result: job
            .result_payload
            .clone()
            .filter(|_| job.status == JobStatus::Completed),
        error: job
            .error_message
            .clone()
            .filter(|_| job.status == JobStatus::Failed),
        cost: job.cost.clone().map(Money::from_db),
        created_at: job.created_at,
        updated_at: job.updated_at,
    }
}

/// The Job object as job lists show it: without `result` (a result can be megabytes of image
/// data; a page of 200 would be an easy way to make the API do a lot of work). The single-job
/// GET keeps it.
pub fn summary(job: &Job, model: &str) -> domain::JobView {
    domain::JobView {
        result: None,
        ..view(job, model)
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
