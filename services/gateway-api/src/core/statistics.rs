//! What the console charts: a user's usage (filtered) and spend per day and model, and the
//! admin overview over time (billed spend, calls by outcome with latency, queue depths).
//!
//! Calls by outcome are counted in memory by each replica ([`CallStats`], atomics only) and
//! added to `call_stats` with one upsert per `stats.flush_ms`, in the minute of the flush (a
//! call may land up to one interval late); a replica killed with SIGKILL loses at most that
//! interval of statistics, never money (charges go through billing).
//! Queue depths are sampled into `queue_samples` by one replica at a time.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicI64, Ordering};
use std::time::Duration;

use actix_web::http::StatusCode;
use actix_web::web;
use bigdecimal::BigDecimal;
use chrono::{DateTime, DurationRound, NaiveDate, TimeDelta, Utc};
use domain::{Money, UsageStatus};
use persistence::stats::{self, CallCounts};
use persistence::usage::{self, UsageFilter, UsageLog};
use persistence::{Page, Paged};
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

use crate::error::ApiError;
use crate::state::AppState;

// ---- calls by outcome, counted in memory

/// Model calls answered by this replica since the last flush, by outcome class. Every counter
/// is an atomic: recording a call takes no lock.
#[derive(Debug, Default)]
pub struct CallStats {
    ok: AtomicI64,
    client_errors: AtomicI64,
    provider_errors: AtomicI64,
    refused: AtomicI64,
    latency_ms_sum: AtomicI64,
    latency_ms_max: AtomicI64,
}

/// The routes that are model calls (by their pattern): what the overview counts.
const CALL_ROUTES: &[&str] = &[
    "/v1/chat/completions",
    "/v1/chat",
    "/v1/responses",
    "/v1/messages",
    "/v1/embeddings",
    "/v1/jobs/image-generation",
];

impl CallStats {
    /// Whether a request to `route` (its pattern) with `method` is a model call.
    pub fn counts(route: &str, method: &actix_web::http::Method) -> bool {
        method == actix_web::http::Method::POST && CALL_ROUTES.contains(&route)
    }

    /// Counts one call by its status: 2xx ok; 402 and 429 refused (balance or limits); other
    /// 4xx the client's error; 5xx the provider's (or ours). `elapsed` is the time to the
    /// response head (for a stream, to its first byte).
    pub fn record(&self, status: StatusCode, elapsed: Duration) {
        let class = match status.as_u16() {
            200..=299 => &self.ok,
            402 | 429 => &self.refused,
            400..=499 => &self.client_errors,
            _ => &self.provider_errors,
        };
        class.fetch_add(1, Ordering::Relaxed);
        let ms = i64::try_from(elapsed.as_millis()).unwrap_or(i64::MAX);
        self.latency_ms_sum.fetch_add(ms, Ordering::Relaxed);
        self.latency_ms_max.fetch_max(ms, Ordering::Relaxed);
    }

    /// Takes the counts so far (leaving zeros), as the counts of `minute`.
    fn take(&self, minute: DateTime<Utc>) -> CallCounts {
        CallCounts {
            minute,
            ok: self.ok.swap(0, Ordering::Relaxed),
            client_errors: self.client_errors.swap(0, Ordering::Relaxed),
            provider_errors: self.provider_errors.swap(0, Ordering::Relaxed),
            refused: self.refused.swap(0, Ordering::Relaxed),
            latency_ms_sum: self.latency_ms_sum.swap(0, Ordering::Relaxed),
            latency_ms_max: self.latency_ms_max.swap(0, Ordering::Relaxed),
        }
    }

    /// Puts back counts a failed flush could not write, for the next flush.
    fn give_back(&self, counts: &CallCounts) {
        self.ok.fetch_add(counts.ok, Ordering::Relaxed);
        self.client_errors
            .fetch_add(counts.client_errors, Ordering::Relaxed);
        self.provider_errors
            .fetch_add(counts.provider_errors, Ordering::Relaxed);
        self.refused.fetch_add(counts.refused, Ordering::Relaxed);
        self.latency_ms_sum
            .fetch_add(counts.latency_ms_sum, Ordering::Relaxed);
        self.latency_ms_max
            .fetch_max(counts.latency_ms_max, Ordering::Relaxed);
    }

    /// Adds what was counted since the last flush to its minute's row (nothing when idle).
    async fn flush(&self, pool: &persistence::Pool) {
        let minute = Utc::now()
            .duration_trunc(TimeDelta::minutes(1))
            .unwrap_or_else(|_| Utc::now());
        let counts = self.take(minute);
        if counts.ok + counts.client_errors + counts.provider_errors + counts.refused == 0 {
            return;
        }
        let written = match pool.get().await {
            Ok(mut conn) => stats::add_calls(&mut conn, &counts).await,
            Err(error) => Err(error.into()),
        };
        if let Err(error) = written {
            tracing::warn!(%error, "writing call statistics failed; kept for the next flush");
            self.give_back(&counts);
        }
    }
}

/// Flushes this replica's call counts every `stats.flush_ms`, and samples the queues about
/// every `stats.sample_ms` (when no other replica did); flushes once more when the
/// application stops.
pub fn spawn_statistics(state: &web::Data<AppState>, settings: &crate::settings::StatsSettings) {
    let flush_every = Duration::from_millis(settings.flush_ms);
    let sample_every = Duration::from_millis(settings.sample_ms);
    let retention = TimeDelta::days(i64::from(settings.retention_days));
    let closing = state.background.closing();
    let weak = std::sync::Arc::downgrade(&state.clone().into_inner());
    state.background.spawn(async move {
        let mut flushes = tokio::time::interval(flush_every);
        let mut samples = tokio::time::interval(sample_every);
        flushes.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        samples.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = flushes.tick() => {
                    let Some(state) = weak.upgrade() else { break };
                    state.call_stats.flush(&state.pool).await;
                }
                _ = samples.tick() => {
                    let Some(state) = weak.upgrade() else { break };
                    sample_queues(&state, sample_every, retention).await;
                }
                () = closing.cancelled() => {
                    if let Some(state) = weak.upgrade() {
                        state.call_stats.flush(&state.pool).await;
                    }
                    break;
                }
            }
        }
    });
}

async fn sample_queues(state: &AppState, every: Duration, retention: TimeDelta) {
    // A little under the interval, so that replicas' ticks drifting apart do not skip one.
    let min_gap = TimeDelta::from_std(every * 9 / 10).unwrap_or(TimeDelta::MAX);
    let sampled = match state.pool.get().await {
        Ok(mut conn) => {
            stats::sample_queues(
                &mut conn,
                min_gap,
                Utc::now() - retention,
                broker_depths(state),
            )
            .await
        }
        Err(error) => Err(error.into()),
    };
    if let Err(error) = sampled {
        tracing::warn!(%error, "sampling the queue depths failed");
    }
}

/// Ready messages in the invocation and the billing queue (each with its retry queue); `None`
/// for a queue the broker did not count.
async fn broker_depths(state: &AppState) -> (Option<i64>, Option<i64>) {
    let names = state.broker.queue_names();
    let depth = async |queue: &str| {
        tokio::time::timeout(Duration::from_secs(2), state.broker.waiting(queue))
            .await
            .ok()
            .and_then(Result::ok)
            .and_then(|n| i64::try_from(n).ok())
    };
    (
        depth(&names.model_invocation.work).await,
        depth(&names.billing_log.work).await,
    )
}

// ---- usage, filtered

/// The usage lists' page and filters (`GET /v1/me/usage`, `GET /v1/admin/usage-logs`).
#[derive(Debug, Default, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
pub struct UsageQuery {
    pub limit: Option<i64>,
    pub offset: Option<i64>,
    /// Calls of this user: the admin's list only (400 on `/v1/me/usage`).
    pub user_id: Option<i64>,
    /// Calls made with this access key (on `/v1/me/usage` one of the caller's, else 400).
    pub access_key_id: Option<i64>,
    /// Calls of this model (its public name).
    pub model: Option<String>,
    /// Calls at or after this time (RFC 3339).
    pub from: Option<DateTime<Utc>>,
    /// Calls before this time (RFC 3339); after `from`.
    pub to: Option<DateTime<Utc>>,
    /// `charged` or `overrun`.
    #[param(value_type = Option<String>)]
    pub status: Option<UsageStatus>,
}

/// Usage rows matching `query`; `own` is the signed-in user for `/v1/me/usage` (whose
/// `access_key_id` must then be one of theirs), `None` for the admin's list.
pub async fn usage(
    state: &AppState,
    own: Option<i64>,
    query: UsageQuery,
) -> Result<(Paged<UsageLog>, Page), ApiError> {
    let page = crate::views::page(query.limit, query.offset)?;
    if own.is_some() && query.user_id.is_some() {
        return Err(ApiError::invalid(
            "user_id filters the admin's usage list only",
        ));
    }
    if let (Some(from), Some(to)) = (query.from, query.to)
        && from >= to
    {
        return Err(ApiError::invalid("from must be before to"));
    }
    let mut conn = state.conn().await?;
    if let (Some(user_id), Some(key_id)) = (own, query.access_key_id) {
        let key = persistence::access_keys::get(&mut conn, key_id).await?;
        if key.is_none_or(|key| key.user_id != user_id) {
            return Err(ApiError::invalid(format!(
                "access_key_id {key_id} is not one of your access keys"
            )));
        }
    }
    let filter = UsageFilter {
        user_id: own.or(query.user_id),
        access_key_id: query.access_key_id,
        model_name: query.model,
        from: query.from,
        to: query.to,
        status: query.status,
    };
    Ok((usage::list(&mut conn, &filter, page).await?, page))
}

// ---- a user's spend per day and model

/// The longest range of the spend chart, in days.
pub const MAX_SPEND_DAYS: i64 = 366;
/// The default range of the spend chart, in days (ending today).
const DEFAULT_SPEND_DAYS: i64 = 30;

/// Spend and calls of a day, a model, or a day and a model.
#[derive(Debug, Serialize, ToSchema)]
pub struct SpendAmount {
    /// What was charged, a decimal string.
    #[schema(value_type = String, example = "0.0042")]
    pub spend: Money,
    /// Billed calls.
    pub calls: i64,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct DaySpend {
    /// A UTC day.
    #[schema(value_type = String, example = "2026-12-01")]
    pub day: NaiveDate,
    #[serde(flatten)]
    pub amount: SpendAmount,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct ModelSpend {
    pub model: String,
    #[serde(flatten)]
    pub amount: SpendAmount,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct DayModelSpend {
    #[schema(value_type = String, example = "2026-12-01")]
    pub day: NaiveDate,
    pub model: String,
    #[serde(flatten)]
    pub amount: SpendAmount,
}

/// A user's spend from `from` to `to` (UTC days, both included).
#[derive(Debug, Serialize, ToSchema)]
pub struct SpendView {
    #[schema(value_type = String, example = "2026-11-02")]
    pub from: NaiveDate,
    #[schema(value_type = String, example = "2026-12-01")]
    pub to: NaiveDate,
    pub total: SpendAmount,
    /// Every day of the range, oldest first; days without calls are zero.
    pub days: Vec<DaySpend>,
    /// Every model with calls in the range, most spent first.
    pub models: Vec<ModelSpend>,
    /// Each (day, model) with calls, by day then model: the stacks of the chart.
    pub series: Vec<DayModelSpend>,
}

/// Sums spend amounts exactly.
#[derive(Default)]
struct Sum {
    spend: BigDecimal,
    calls: i64,
}

impl Sum {
    fn add(&mut self, spend: &BigDecimal, calls: i64) {
        self.spend += spend;
        self.calls += calls;
    }

    fn amount(&self) -> SpendAmount {
        SpendAmount {
            spend: Money::from_db(self.spend.clone()),
            calls: self.calls,
        }
    }
}

pub async fn spend(
    state: &AppState,
    user_id: i64,
    from: Option<NaiveDate>,
    to: Option<NaiveDate>,
) -> Result<SpendView, ApiError> {
    let to = to.unwrap_or_else(|| Utc::now().date_naive());
    let from = match from {
        Some(from) => from,
        None => to
            .checked_sub_signed(TimeDelta::days(DEFAULT_SPEND_DAYS - 1))
            .ok_or_else(|| ApiError::invalid("to is out of range"))?,
    };
    if from > to {
        return Err(ApiError::invalid("from must not be after to"));
    }
    let days = (to - from).num_days() + 1;
    if days > MAX_SPEND_DAYS {
        return Err(ApiError::invalid(format!(
            "the range is {days} days; at most {MAX_SPEND_DAYS}"
        )));
    }
    let end = to
        .succ_opt()
        .ok_or_else(|| ApiError::invalid("to is out of range"))?;
    let mut conn = state.conn().await?;
    let rows = usage::spend_by_day_and_model(
        &mut conn,
        user_id,
        from.and_time(chrono::NaiveTime::MIN).and_utc(),
        end.and_time(chrono::NaiveTime::MIN).and_utc(),
    )
    .await?;
    let mut total = Sum::default();
    let mut per_day: BTreeMap<NaiveDate, Sum> = from
        .iter_days()
        .take_while(|day| *day <= to)
        .map(|day| (day, Sum::default()))
        .collect();
    let mut per_model: BTreeMap<&str, Sum> = BTreeMap::new();
    for row in &rows {
        total.add(&row.spend, row.calls);
        per_day
            .entry(row.day)
            .or_default()
            .add(&row.spend, row.calls);
        per_model
            .entry(&row.model_name)
            .or_default()
            .add(&row.spend, row.calls);
    }
    let mut models: Vec<ModelSpend> = per_model
        .iter()
        .map(|(model, sum)| ModelSpend {
            model: (*model).to_owned(),
            amount: sum.amount(),
        })
        .collect();
    models.sort_by(|a, b| b.amount.spend.cmp(&a.amount.spend));
    Ok(SpendView {
        from,
        to,
        total: total.amount(),
        days: per_day
            .iter()
            .map(|(day, sum)| DaySpend {
                day: *day,
                amount: sum.amount(),
            })
            .collect(),
        models,
        series: rows
            .iter()
            .map(|row| DayModelSpend {
                day: row.day,
                model: row.model_name.clone(),
                amount: SpendAmount {
                    spend: Money::from_db(row.spend.clone()),
                    calls: row.calls,
                },
            })
            .collect(),
    })
}

// ---- the admin overview

/// The width of one point of the overview.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum Bucket {
    Hour,
    Day,
}

impl Bucket {
    /// Postgres's `date_trunc` field.
    fn field(self) -> &'static str {
        match self {
            Bucket::Hour => "hour",
            Bucket::Day => "day",
        }
    }

    fn width(self) -> TimeDelta {
        match self {
            Bucket::Hour => TimeDelta::hours(1),
            Bucket::Day => TimeDelta::days(1),
        }
    }

    /// The most buckets one overview answers: 31 days of hours, 366 days.
    fn max_count(self) -> i64 {
        match self {
            Bucket::Hour => 31 * 24,
            Bucket::Day => 366,
        }
    }

    /// The default number of buckets, the current one last: 24 hours, or 30 days.
    fn default_count(self) -> i32 {
        match self {
            Bucket::Hour => 24,
            Bucket::Day => 30,
        }
    }
}

/// Queue depths at one moment (a broker queue null when the broker did not answer).
#[derive(Debug, Serialize, ToSchema)]
pub struct QueueDepths {
    /// Ready messages of model_invocation_queue (and its retry queue).
    pub invocation_queue: Option<i64>,
    /// Ready messages of billing_log_queue (and its retry queue).
    pub billing_queue: Option<i64>,
    /// Charges in the billing outbox, not yet published.
    pub outbox: Option<i64>,
    /// Jobs not yet claimed by a worker.
    pub pending_jobs: Option<i64>,
}

/// One bucket of the overview.
#[derive(Debug, Serialize, ToSchema)]
pub struct OverviewBucket {
    /// The bucket's start (UTC).
    pub start: DateTime<Utc>,
    /// Billed calls (usage rows) and what they were charged.
    #[schema(value_type = String, example = "12.5")]
    pub spend: Money,
    pub billed_calls: i64,
    /// Model calls answered, by outcome (from every replica's counts).
    pub ok: i64,
    pub client_errors: i64,
    pub provider_errors: i64,
    pub refused: i64,
    /// Mean and highest time to the response head of those calls; null without calls.
    pub latency_ms_avg: Option<i64>,
    pub latency_ms_max: Option<i64>,
    /// The deepest sample of each queue in the bucket; null without a sample.
    pub queues: QueueDepths,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct OverviewView {
    pub from: DateTime<Utc>,
    pub to: DateTime<Utc>,
    pub bucket: Bucket,
    /// Every bucket of the range, oldest first (zeros where nothing happened).
    pub buckets: Vec<OverviewBucket>,
    /// The depths now.
    pub current: QueueDepths,
}

pub async fn overview(
    state: &AppState,
    from: Option<DateTime<Utc>>,
    to: Option<DateTime<Utc>>,
    bucket: Option<Bucket>,
) -> Result<OverviewView, ApiError> {
    let bucket = bucket.unwrap_or(Bucket::Hour);
    let to = to.unwrap_or_else(Utc::now);
    let from = match from {
        Some(from) => from,
        // The current bucket and the ones before it.
        None => to
            .duration_trunc(bucket.width())
            .ok()
            .and_then(|end| end.checked_sub_signed(bucket.width() * (bucket.default_count() - 1)))
            .ok_or_else(|| ApiError::invalid("to is out of range"))?,
    };
    if from >= to {
        return Err(ApiError::invalid("from must be before to"));
    }
    let start = from
        .duration_trunc(bucket.width())
        .map_err(|_| ApiError::invalid("from is out of range"))?;
    let width = bucket.width().num_seconds();
    let count = ((to - start).num_seconds() + width - 1) / width;
    if count > bucket.max_count() {
        return Err(ApiError::invalid(format!(
            "the range has {count} {}s; at most {}",
            bucket.field(),
            bucket.max_count()
        )));
    }
    let mut conn = state.conn().await?;
    let field = bucket.field();
    let spend: BTreeMap<_, _> = usage::spend_by_bucket(&mut conn, field, start, to)
        .await?
        .into_iter()
        .map(|row| (row.bucket, row))
        .collect();
    let calls: BTreeMap<_, _> = stats::calls_by_bucket(&mut conn, field, start, to)
        .await?
        .into_iter()
        .map(|row| (row.bucket, row))
        .collect();
    let depths: BTreeMap<_, _> = stats::depths_by_bucket(&mut conn, field, start, to)
        .await?
        .into_iter()
        .map(|row| (row.bucket, row))
        .collect();
    let (outbox, pending_jobs) = stats::backlog(&mut conn).await?;
    drop(conn);
    let (invocation_queue, billing_queue) = broker_depths(state).await;
    let buckets = (0..count)
        .map_while(|i| {
            start.checked_add_signed(bucket.width() * i32::try_from(i).unwrap_or(i32::MAX))
        })
        .map(|at| {
            let billed = spend.get(&at);
            let counted = calls.get(&at);
            let answered = counted.map_or(0, |c| {
                c.ok + c.client_errors + c.provider_errors + c.refused
            });
            let depth = depths.get(&at);
            OverviewBucket {
                start: at,
                spend: billed.map_or_else(Money::zero, |b| Money::from_db(b.spend.clone())),
                billed_calls: billed.map_or(0, |b| b.calls),
                ok: counted.map_or(0, |c| c.ok),
                client_errors: counted.map_or(0, |c| c.client_errors),
                provider_errors: counted.map_or(0, |c| c.provider_errors),
                refused: counted.map_or(0, |c| c.refused),
                latency_ms_avg: counted
                    .filter(|_| answered > 0)
                    .map(|c| c.latency_ms_sum / answered),
                latency_ms_max: counted.filter(|_| answered > 0).map(|c| c.latency_ms_max),
                queues: QueueDepths {
                    invocation_queue: depth.and_then(|d| d.invocation_queue),
                    billing_queue: depth.and_then(|d| d.billing_queue),
                    outbox: depth.map(|d| d.outbox),
                    pending_jobs: depth.map(|d| d.pending_jobs),
                },
            }
        })
        .collect();
    Ok(OverviewView {
        from: start,
        to,
        bucket,
        buckets,
        current: QueueDepths {
            invocation_queue,
            billing_queue,
            outbox: Some(outbox),
            pending_jobs: Some(pending_jobs),
        },
    })
}
