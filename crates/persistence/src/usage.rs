//! Usage logs: one row per billed call (written by billing-worker, read by the API).

use bigdecimal::BigDecimal;
use chrono::{DateTime, NaiveDate, Utc};
use diesel::prelude::*;
use diesel_async::{AsyncPgConnection, RunQueryDsl};
use domain::UsageStatus;
use uuid::Uuid;

use crate::schema::usage_logs;
use crate::{Page, Paged, StoreError};

#[derive(Debug, Clone, Queryable, Selectable)]
#[diesel(table_name = usage_logs)]
pub struct UsageLog {
    pub id: i64,
    pub request_id: Uuid,
    pub user_id: i64,
    pub access_key_id: Option<i64>,
    pub model_id: Option<i64>,
    pub model_name: String,
    pub prompt_tokens: i64,
    pub completion_tokens: i64,
    pub cached_prompt_tokens: i64,
    pub images: i32,
    /// What the call was charged.
    pub cost: BigDecimal,
    pub created_at: DateTime<Utc>,
    /// What the usage priced at; above `held_amount` for an overrun. `None` on rows settled
    /// before it was recorded.
    pub priced_cost: Option<BigDecimal>,
    /// What the call's reservation covered (its hold, or the part of its lease it took; zero
    /// when the reservation was gone). `None` on rows settled before it was recorded.
    pub held_amount: Option<BigDecimal>,
    /// The ledger row that took this call's cost, shared with the user's other calls settled
    /// in the same batch. `None` when nothing was charged, and on rows settled before ledger
    /// rows were shared (their ledger row's reference is their request id).
    pub ledger_id: Option<i64>,
}

impl UsageLog {
    /// `overrun` when the call priced above what its reservation covered (the predicate of
    /// [`overrun`], in Rust), else `charged`.
    pub fn status(&self) -> UsageStatus {
        match (&self.priced_cost, &self.held_amount) {
            (Some(priced), Some(held)) if priced > held => UsageStatus::Overrun,
            _ => UsageStatus::Charged,
        }
    }
}

/// Which usage rows a list shows; `None` fields do not filter.
#[derive(Debug, Clone, Default)]
pub struct UsageFilter {
    pub user_id: Option<i64>,
    pub access_key_id: Option<i64>,
    pub model_name: Option<String>,
    /// Inclusive.
    pub from: Option<DateTime<Utc>>,
    /// Exclusive.
    pub to: Option<DateTime<Utc>>,
    pub status: Option<UsageStatus>,
}

type BoxedUsage<'a> = usage_logs::BoxedQuery<'a, diesel::pg::Pg>;

/// The one SQL form of an overrun, the predicate of the partial index `usage_logs_overrun_idx`.
fn overrun() -> diesel::dsl::Gt<usage_logs::priced_cost, usage_logs::held_amount> {
    usage_logs::priced_cost.gt(usage_logs::held_amount)
}

impl UsageFilter {
    fn apply<'a>(&'a self, mut query: BoxedUsage<'a>) -> BoxedUsage<'a> {
        if let Some(user_id) = self.user_id {
            query = query.filter(usage_logs::user_id.eq(user_id));
        }
        if let Some(key) = self.access_key_id {
            query = query.filter(usage_logs::access_key_id.eq(key));
        }
        if let Some(model) = &self.model_name {
            query = query.filter(usage_logs::model_name.eq(model));
        }
        if let Some(from) = self.from {
            query = query.filter(usage_logs::created_at.ge(from));
        }
        if let Some(to) = self.to {
            query = query.filter(usage_logs::created_at.lt(to));
        }
        match self.status {
            Some(UsageStatus::Overrun) => query.filter(overrun()),
            // NULL columns (rows settled before they existed) are `charged`, as in `status`.
            Some(UsageStatus::Charged) => {
                query.filter(overrun().is_null().or(diesel::dsl::not(overrun())))
            }
            None => query,
        }
    }
}

/// Usage rows matching `filter`, newest first.
pub async fn list(
    conn: &mut AsyncPgConnection,
    filter: &UsageFilter,
    page: Page,
) -> Result<Paged<UsageLog>, StoreError> {
    let rows = filter
        .apply(usage_logs::table.into_boxed())
        .order((usage_logs::created_at.desc(), usage_logs::id.desc()))
        .limit(page.limit)
        .offset(page.offset)
        .select(UsageLog::as_select())
        .load(conn)
        .await?;
    let total = filter
        .apply(usage_logs::table.into_boxed())
        .count()
        .get_result(conn)
        .await?;
    Ok(Paged { rows, total })
}

/// What one user spent on one model on one UTC day.
#[derive(Debug, Clone, QueryableByName)]
pub struct DailyModelSpend {
    #[diesel(sql_type = diesel::sql_types::Date)]
    pub day: NaiveDate,
    #[diesel(sql_type = diesel::sql_types::Text)]
    pub model_name: String,
    #[diesel(sql_type = diesel::sql_types::Numeric)]
    pub spend: BigDecimal,
    #[diesel(sql_type = diesel::sql_types::BigInt)]
    pub calls: i64,
}

/// A user's charges from `from` (inclusive) to `to` (exclusive), summed per UTC day and model,
/// by day then model. Reads the range of the index `usage_logs_user_idx`.
pub async fn spend_by_day_and_model(
    conn: &mut AsyncPgConnection,
    user_id: i64,
    from: DateTime<Utc>,
    to: DateTime<Utc>,
) -> Result<Vec<DailyModelSpend>, StoreError> {
    use diesel::sql_types::{BigInt, Timestamptz};
    Ok(diesel::sql_query(
        "SELECT (created_at AT TIME ZONE 'UTC')::date AS day, model_name, \
                sum(cost) AS spend, count(*) AS calls \
         FROM usage_logs WHERE user_id = $1 AND created_at >= $2 AND created_at < $3 \
         GROUP BY 1, 2 ORDER BY 1, 2",
    )
    .bind::<BigInt, _>(user_id)
    .bind::<Timestamptz, _>(from)
    .bind::<Timestamptz, _>(to)
    .load(conn)
    .await?)
}

/// Billed calls and what they were charged in one bucket of time.
#[derive(Debug, Clone, QueryableByName)]
pub struct BucketSpend {
    #[diesel(sql_type = diesel::sql_types::Timestamptz)]
    pub bucket: DateTime<Utc>,
    #[diesel(sql_type = diesel::sql_types::Numeric)]
    pub spend: BigDecimal,
    #[diesel(sql_type = diesel::sql_types::BigInt)]
    pub calls: i64,
}

/// Every user's charges from `from` (inclusive) to `to` (exclusive) per UTC `hour` or `day`
/// (`bucket`, Postgres's `date_trunc` field), oldest first. Reads a range of the index
/// `usage_logs_created_idx`.
pub async fn spend_by_bucket(
    conn: &mut AsyncPgConnection,
    bucket: &'static str,
    from: DateTime<Utc>,
    to: DateTime<Utc>,
) -> Result<Vec<BucketSpend>, StoreError> {
    use diesel::sql_types::{Text, Timestamptz};
    Ok(diesel::sql_query(
        "SELECT date_trunc($1, created_at, 'UTC') AS bucket, sum(cost) AS spend, \
                count(*) AS calls \
         FROM usage_logs WHERE created_at >= $2 AND created_at < $3 GROUP BY 1 ORDER BY 1",
    )
    .bind::<Text, _>(bucket)
    .bind::<Timestamptz, _>(from)
    .bind::<Timestamptz, _>(to)
    .load(conn)
    .await?)
}

/// Overruns: billed calls that priced above what their reservation covered (so they took, at
/// most, what was free of the user's balance beside it), newest first, optionally of one user.
pub async fn overruns(
    conn: &mut AsyncPgConnection,
    user_id: Option<i64>,
    page: Page,
) -> Result<Paged<UsageLog>, StoreError> {
    let filter = UsageFilter {
        user_id,
        status: Some(UsageStatus::Overrun),
        ..UsageFilter::default()
    };
    list(conn, &filter, page).await
}
