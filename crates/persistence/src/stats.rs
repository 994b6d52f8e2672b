//! Operating statistics of the admin overview: calls per minute (`call_stats`, added to by every
//! gateway-api replica) and sampled queue depths (`queue_samples`). No money here.

use chrono::{DateTime, Utc};
use diesel::prelude::*;
use diesel::sql_types::{BigInt, Nullable, Text, Timestamptz};
use diesel_async::{AsyncConnection, AsyncPgConnection, RunQueryDsl};

use crate::StoreError;
use crate::schema::{async_jobs, billing_outbox, call_stats, queue_samples};

/// Calls counted by one replica since its last flush, all put in one minute.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Insertable)]
#[diesel(table_name = call_stats)]
pub struct CallCounts {
    pub minute: DateTime<Utc>,
    pub ok: i64,
    pub client_errors: i64,
    pub provider_errors: i64,
    pub refused: i64,
    pub latency_ms_sum: i64,
    pub latency_ms_max: i64,
}

/// Adds one replica's counts to its minute's row: one statement, whatever the number of calls.
pub async fn add_calls(
    conn: &mut AsyncPgConnection,
    counts: &CallCounts,
) -> Result<(), StoreError> {
    use diesel::upsert::excluded;
    diesel::insert_into(call_stats::table)
        .values(counts)
        .on_conflict(call_stats::minute)
        .do_update()
        .set((
            call_stats::ok.eq(call_stats::ok + excluded(call_stats::ok)),
            call_stats::client_errors
                .eq(call_stats::client_errors + excluded(call_stats::client_errors)),
            call_stats::provider_errors
                .eq(call_stats::provider_errors + excluded(call_stats::provider_errors)),
            call_stats::refused.eq(call_stats::refused + excluded(call_stats::refused)),
            call_stats::latency_ms_sum
                .eq(call_stats::latency_ms_sum + excluded(call_stats::latency_ms_sum)),
            call_stats::latency_ms_max.eq(diesel::dsl::sql::<BigInt>(
                "GREATEST(call_stats.latency_ms_max, excluded.latency_ms_max)",
            )),
        ))
        .execute(conn)
        .await?;
    Ok(())
}

/// The depths of the queues at one moment; a broker queue is `None` when the broker did not
/// answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Insertable, Queryable, Selectable)]
#[diesel(table_name = queue_samples)]
pub struct QueueSample {
    pub sampled_at: DateTime<Utc>,
    pub invocation_queue: Option<i64>,
    pub billing_queue: Option<i64>,
    pub outbox: i64,
    pub pending_jobs: i64,
}

/// Charges waiting in the outbox and jobs not yet claimed, now.
pub async fn backlog(conn: &mut AsyncPgConnection) -> Result<(i64, i64), StoreError> {
    let outbox = billing_outbox::table.count().get_result(conn).await?;
    let pending = async_jobs::table
        .filter(async_jobs::status.eq(domain::JobStatus::Pending.as_str()))
        .count()
        .get_result(conn)
        .await?;
    Ok((outbox, pending))
}

/// The key of the advisory lock that makes one replica at a time the sampler.
const SAMPLER_LOCK: i64 = 0x5155_4555_4553; // "QUEUES"

/// Stores a sample of the queues (the broker's depths from `broker`: invocation, billing; the
/// outbox and pending jobs counted here), unless another replica holds the sampler's lock or
/// took a sample less than `min_gap` ago; also deletes statistics older than `keep_since`.
/// Returns whether a sample was stored. `broker` runs inside the lock's transaction, only when
/// a sample is due, so it must be short (a passive declare per queue).
pub async fn sample_queues(
    conn: &mut AsyncPgConnection,
    min_gap: chrono::Duration,
    keep_since: DateTime<Utc>,
    broker: impl Future<Output = (Option<i64>, Option<i64>)> + Send,
) -> Result<bool, StoreError> {
    conn.transaction::<_, StoreError, _>(async |conn| {
        let locked: bool = diesel::select(diesel::dsl::sql::<diesel::sql_types::Bool>(&format!(
            "pg_try_advisory_xact_lock({SAMPLER_LOCK})"
        )))
        .get_result(conn)
        .await?;
        if !locked {
            return Ok(false);
        }
        let last: Option<DateTime<Utc>> = queue_samples::table
            .select(diesel::dsl::max(queue_samples::sampled_at))
            .get_result(conn)
            .await?;
        if last.is_some_and(|last| Utc::now() - last < min_gap) {
            return Ok(false);
        }
        let (invocation_queue, billing_queue) = broker.await;
        let (outbox, pending_jobs) = backlog(conn).await?;
        let taken = QueueSample {
            sampled_at: Utc::now(),
            invocation_queue,
            billing_queue,
            outbox,
            pending_jobs,
        };
        diesel::insert_into(queue_samples::table)
            .values(&taken)
            .on_conflict_do_nothing()
            .execute(conn)
            .await?;
        diesel::delete(queue_samples::table.filter(queue_samples::sampled_at.lt(keep_since)))
            .execute(conn)
            .await?;
        diesel::delete(call_stats::table.filter(call_stats::minute.lt(keep_since)))
            .execute(conn)
            .await?;
        Ok(true)
    })
    .await
}

/// Calls per bucket (`hour` or `day`, UTC) from `from` (inclusive) to `to` (exclusive).
#[derive(Debug, Clone, QueryableByName)]
pub struct BucketCalls {
    #[diesel(sql_type = Timestamptz)]
    pub bucket: DateTime<Utc>,
    #[diesel(sql_type = BigInt)]
    pub ok: i64,
    #[diesel(sql_type = BigInt)]
    pub client_errors: i64,
    #[diesel(sql_type = BigInt)]
    pub provider_errors: i64,
    #[diesel(sql_type = BigInt)]
    pub refused: i64,
    #[diesel(sql_type = BigInt)]
    pub latency_ms_sum: i64,
    #[diesel(sql_type = BigInt)]
    pub latency_ms_max: i64,
}

pub async fn calls_by_bucket(
    conn: &mut AsyncPgConnection,
    bucket: &'static str,
    from: DateTime<Utc>,
    to: DateTime<Utc>,
) -> Result<Vec<BucketCalls>, StoreError> {
    Ok(diesel::sql_query(
        "SELECT date_trunc($1, minute, 'UTC') AS bucket, sum(ok)::int8 AS ok, \
                sum(client_errors)::int8 AS client_errors, \
                sum(provider_errors)::int8 AS provider_errors, sum(refused)::int8 AS refused, \
                sum(latency_ms_sum)::int8 AS latency_ms_sum, \
                max(latency_ms_max) AS latency_ms_max \
         FROM call_stats WHERE minute >= $2 AND minute < $3 GROUP BY 1 ORDER BY 1",
    )
    .bind::<Text, _>(bucket)
    .bind::<Timestamptz, _>(from)
    .bind::<Timestamptz, _>(to)
    .load(conn)
    .await?)
}

/// The deepest sample of each queue per bucket (`hour` or `day`, UTC).
#[derive(Debug, Clone, QueryableByName)]
pub struct BucketDepths {
    #[diesel(sql_type = Timestamptz)]
    pub bucket: DateTime<Utc>,
    #[diesel(sql_type = Nullable<BigInt>)]
    pub invocation_queue: Option<i64>,
    #[diesel(sql_type = Nullable<BigInt>)]
    pub billing_queue: Option<i64>,
    #[diesel(sql_type = BigInt)]
    pub outbox: i64,
    #[diesel(sql_type = BigInt)]
    pub pending_jobs: i64,
}

pub async fn depths_by_bucket(
    conn: &mut AsyncPgConnection,
    bucket: &'static str,
    from: DateTime<Utc>,
    to: DateTime<Utc>,
) -> Result<Vec<BucketDepths>, StoreError> {
    Ok(diesel::sql_query(
        "SELECT date_trunc($1, sampled_at, 'UTC') AS bucket, \
                max(invocation_queue) AS invocation_queue, max(billing_queue) AS billing_queue, \
                max(outbox) AS outbox, max(pending_jobs) AS pending_jobs \
         FROM queue_samples WHERE sampled_at >= $2 AND sampled_at < $3 GROUP BY 1 ORDER BY 1",
    )
    .bind::<Text, _>(bucket)
    .bind::<Timestamptz, _>(from)
    .bind::<Timestamptz, _>(to)
    .load(conn)
    .await?)
}
