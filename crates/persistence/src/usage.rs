//! Usage logs: one row per billed call (written by billing-worker, read by the API).

use bigdecimal::BigDecimal;
use chrono::{DateTime, Utc};
use diesel::prelude::*;
use diesel_async::{AsyncPgConnection, RunQueryDsl};
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
}

pub async fn list(
    conn: &mut AsyncPgConnection,
    user_id: Option<i64>,
    page: Page,
) -> Result<Paged<UsageLog>, StoreError> {
    let mut query = usage_logs::table.into_boxed();
    let mut count = usage_logs::table.into_boxed();
    if let Some(user_id) = user_id {
        query = query.filter(usage_logs::user_id.eq(user_id));
        count = count.filter(usage_logs::user_id.eq(user_id));
    }
    let rows = query
        .order((usage_logs::created_at.desc(), usage_logs::id.desc()))
        .limit(page.limit)
        .offset(page.offset)
        .select(UsageLog::as_select())
        .load(conn)
        .await?;
    let total = count.count().get_result(conn).await?;
    Ok(Paged { rows, total })
}

/// Overruns: billed calls that priced above what their reservation covered (so they took, at
/// most, what was free of the user's balance beside it), newest first, optionally of one user.
pub async fn overruns(
    conn: &mut AsyncPgConnection,
    user_id: Option<i64>,
    page: Page,
) -> Result<Paged<UsageLog>, StoreError> {
    // The same predicate as the partial index `usage_logs_overrun_idx`, so both use it.
    let overrun = usage_logs::priced_cost.gt(usage_logs::held_amount);
    let mut query = usage_logs::table.filter(overrun).into_boxed();
    let mut count = usage_logs::table.filter(overrun).into_boxed();
    if let Some(user_id) = user_id {
        query = query.filter(usage_logs::user_id.eq(user_id));
        count = count.filter(usage_logs::user_id.eq(user_id));
    }
    let rows = query
        .order((usage_logs::created_at.desc(), usage_logs::id.desc()))
        .limit(page.limit)
        .offset(page.offset)
        .select(UsageLog::as_select())
        .load(conn)
        .await?;
    let total = count.count().get_result(conn).await?;
    Ok(Paged { rows, total })
}
