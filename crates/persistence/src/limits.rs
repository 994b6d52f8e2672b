//! Limits (see the `limits` migration and docs/LIMITS.md): the stored limits of keys, users,
//! models and the platform default, and the shared counters that make them hold across
//! replicas: rate windows lent out in slices, concurrency slots, and spend totals.

use bigdecimal::BigDecimal;
use diesel::prelude::*;
use diesel::sql_types::{
    Array, BigInt, Bool, Int2, Int4, Nullable, Numeric, Text, Timestamptz, Uuid as SqlUuid,
};
use diesel_async::{AsyncConnection, AsyncPgConnection, RunQueryDsl};
use domain::Money;
use uuid::Uuid;

use crate::StoreError;
use crate::prepared::Prepared;

/// Whose limit a row is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Scope {
    /// The default of every access key without a value of its own (subject 0).
    Platform,
    Key,
    User,
    /// All users of a model together.
    Model,
}

impl Scope {
    pub fn code(self) -> i16 {
        match self {
            Scope::Platform => 0,
            Scope::Key => 1,
            Scope::User => 2,
            Scope::Model => 3,
        }
    }

    fn from_code(code: i16) -> Option<Scope> {
        Some(match code {
            0 => Scope::Platform,
            1 => Scope::Key,
            2 => Scope::User,
            3 => Scope::Model,
            _ => return None,
        })
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Scope::Platform => "platform",
            Scope::Key => "key",
            Scope::User => "user",
            Scope::Model => "model",
        }
    }
}

/// The period a spend limit counts in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Period {
    #[default]
    Total,
    Day,
    Month,
}

impl Period {
    pub fn as_str(self) -> &'static str {
        match self {
            Period::Total => "total",
            Period::Day => "day",
            Period::Month => "month",
        }
    }

    pub fn parse(text: &str) -> Option<Period> {
        Some(match text {
            "total" => Period::Total,
            "day" => Period::Day,
            "month" => Period::Month,
            _ => return None,
        })
    }
}

/// The limits of one subject; `None` = no limit (or, for a key, the platform default).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct LimitValues {
    pub rpm_limit: Option<i32>,
    pub tpm_limit: Option<i64>,
    pub max_concurrency: Option<i32>,
    pub spend_limit: Option<Money>,
    pub spend_limit_period: Period,
    pub max_pending_jobs: Option<i32>,
}

impl LimitValues {
    pub fn is_empty(&self) -> bool {
        self.rpm_limit.is_none()
            && self.tpm_limit.is_none()
            && self.max_concurrency.is_none()
            && self.spend_limit.is_none()
            && self.max_pending_jobs.is_none()
    }

    /// These values, each missing one taken from `default`.
    pub fn or(&self, default: &LimitValues) -> LimitValues {
        let (spend_limit, spend_limit_period) = match &self.spend_limit {
            Some(limit) => (Some(limit.clone()), self.spend_limit_period),
            None => (default.spend_limit.clone(), default.spend_limit_period),
        };
        LimitValues {
            rpm_limit: self.rpm_limit.or(default.rpm_limit),
            tpm_limit: self.tpm_limit.or(default.tpm_limit),
            max_concurrency: self.max_concurrency.or(default.max_concurrency),
            spend_limit,
            spend_limit_period,
            max_pending_jobs: self.max_pending_jobs.or(default.max_pending_jobs),
        }
    }
}

#[derive(QueryableByName)]
struct LimitRow {
    #[diesel(sql_type = Int2)]
    scope: i16,
    #[diesel(sql_type = BigInt)]
    subject: i64,
    #[diesel(sql_type = Nullable<Int4>)]
    rpm_limit: Option<i32>,
    #[diesel(sql_type = Nullable<BigInt>)]
    tpm_limit: Option<i64>,
    #[diesel(sql_type = Nullable<Int4>)]
    max_concurrency: Option<i32>,
    #[diesel(sql_type = Nullable<Numeric>)]
    spend_limit: Option<BigDecimal>,
    #[diesel(sql_type = Text)]
    spend_limit_period: String,
    #[diesel(sql_type = Nullable<Int4>)]
    max_pending_jobs: Option<i32>,
}

impl LimitRow {
    fn into_entry(self) -> Option<(Scope, i64, LimitValues)> {
        Some((
            Scope::from_code(self.scope)?,
            self.subject,
            LimitValues {
                rpm_limit: self.rpm_limit,
                tpm_limit: self.tpm_limit,
                max_concurrency: self.max_concurrency,
                spend_limit: self.spend_limit.map(Money::from_db),
                spend_limit_period: Period::parse(&self.spend_limit_period).unwrap_or_default(),
                max_pending_jobs: self.max_pending_jobs,
            },
        ))
    }
}

const COLUMNS: &str = "scope, subject, rpm_limit, tpm_limit, max_concurrency, spend_limit, \
                       spend_limit_period, max_pending_jobs";

/// The limits of the given subjects that have any (one statement).
pub async fn load(
    conn: &mut AsyncPgConnection,
    subjects: &[(Scope, i64)],
) -> Result<Vec<(Scope, i64, LimitValues)>, StoreError> {
    enum LoadLimits {}
    let rows: Vec<LimitRow> = Prepared::<LoadLimits>::new(
        "SELECT l.scope, l.subject, l.rpm_limit, l.tpm_limit, l.max_concurrency, l.spend_limit,
                l.spend_limit_period, l.max_pending_jobs
         FROM limits l JOIN unnest($1::smallint[], $2::bigint[]) AS s(scope, subject)
           ON l.scope = s.scope AND l.subject = s.subject",
    )
    .bind::<Array<Int2>, _>(subjects.iter().map(|(s, _)| s.code()).collect::<Vec<_>>())
    .bind::<Array<BigInt>, _>(subjects.iter().map(|(_, id)| *id).collect::<Vec<_>>())
    .load(conn)
    .await?;
    Ok(rows.into_iter().filter_map(LimitRow::into_entry).collect())
}

/// The platform default and every model's limits (what each replica keeps in memory).
pub async fn load_shared(
    conn: &mut AsyncPgConnection,
) -> Result<Vec<(Scope, i64, LimitValues)>, StoreError> {
    let sql = format!("SELECT {COLUMNS} FROM limits WHERE scope IN (0, 3)");
    let rows: Vec<LimitRow> = diesel::sql_query(sql).load(conn).await?;
    Ok(rows.into_iter().filter_map(LimitRow::into_entry).collect())
}

/// Sets a subject's limits (all of them: the caller merges a partial change). A spend limit's
/// total for the current period is counted again from the usage log, under the owner's row
/// lock so that no settlement of that owner runs meanwhile (`owner`: the user the key or user
/// scope belongs to). Subjects without any limit lose their row.
pub async fn set(
    conn: &mut AsyncPgConnection,
    scope: Scope,
    subject: i64,
    owner: Option<i64>,
    values: &LimitValues,
) -> Result<(), StoreError> {
    let values = values.clone();
    conn.transaction::<_, StoreError, _>(async move |conn| {
        if let Some(owner) = owner {
            diesel::sql_query("SELECT 1 FROM users WHERE id = $1 FOR NO KEY UPDATE")
                .bind::<BigInt, _>(owner)
                .execute(conn)
                .await?;
        }
        if values.is_empty() && scope != Scope::Platform {
            diesel::sql_query("DELETE FROM limits WHERE scope = $1 AND subject = $2")
                .bind::<Int2, _>(scope.code())
                .bind::<BigInt, _>(subject)
                .execute(conn)
                .await?;
            return Ok(());
        }
        diesel::sql_query(
            "INSERT INTO limits (scope, subject, rpm_limit, tpm_limit, max_concurrency,
                                 spend_limit, spend_limit_period, max_pending_jobs)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8)
             ON CONFLICT (scope, subject) DO UPDATE SET
                 rpm_limit = EXCLUDED.rpm_limit, tpm_limit = EXCLUDED.tpm_limit,
                 max_concurrency = EXCLUDED.max_concurrency, spend_limit = EXCLUDED.spend_limit,
                 spend_limit_period = EXCLUDED.spend_limit_period,
                 max_pending_jobs = EXCLUDED.max_pending_jobs, updated_at = now()",
        )
        .bind::<Int2, _>(scope.code())
        .bind::<BigInt, _>(subject)
        .bind::<Nullable<Int4>, _>(values.rpm_limit)
        .bind::<Nullable<BigInt>, _>(values.tpm_limit)
        .bind::<Nullable<Int4>, _>(values.max_concurrency)
        .bind::<Nullable<Numeric>, _>(values.spend_limit.as_ref().map(Money::as_decimal))
        .bind::<Text, _>(values.spend_limit_period.as_str())
        .bind::<Nullable<Int4>, _>(values.max_pending_jobs)
        .execute(conn)
        .await?;
        if values.spend_limit.is_some() && matches!(scope, Scope::Key | Scope::User) {
            let column = if scope == Scope::Key {
                "access_key_id"
            } else {
                "user_id"
            };
            let sql = format!(
                "INSERT INTO spend_totals (scope, subject, period_start, spent)
                 SELECT $1, $2, limit_period_start($3), COALESCE(sum(cost), 0)
                 FROM usage_logs WHERE {column} = $2 AND created_at >= limit_period_start($3)
                 ON CONFLICT (scope, subject, period_start) DO UPDATE SET spent = EXCLUDED.spent"
            );
            diesel::sql_query(sql)
                .bind::<Int2, _>(scope.code())
                .bind::<BigInt, _>(subject)
                .bind::<Text, _>(values.spend_limit_period.as_str())
                .execute(conn)
                .await?;
        }
        Ok(())
    })
    .await
}

/// A rate window's unit.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Unit {
    Requests,
    Tokens,
}

impl Unit {
    fn code(self) -> i16 {
        match self {
            Unit::Requests => 1,
            Unit::Tokens => 2,
        }
    }
}

#[derive(QueryableByName)]
struct BorrowRow {
    #[diesel(sql_type = BigInt)]
    granted: i64,
    #[diesel(sql_type = BigInt)]
    used: i64,
}

/// What a borrow from a rate window gave.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Borrowed {
    /// 0 when the window could not give what was needed.
    pub granted: i64,
    /// What the window has lent out in all, after this borrow.
    pub used: i64,
}

/// Borrows up to `want` (at least `need`) of a subject's window starting at `window`, for this
/// replica to admit against in memory. All replicas together never borrow more than `limit`.
#[allow(clippy::too_many_arguments)]
pub async fn borrow_rate(
    conn: &mut AsyncPgConnection,
    scope: Scope,
    subject: i64,
    unit: Unit,
    window: chrono::DateTime<chrono::Utc>,
    need: i64,
    want: i64,
    limit: i64,
) -> Result<Borrowed, StoreError> {
    enum BorrowRate {}
    let rows: Vec<BorrowRow> = Prepared::<BorrowRate>::new(
        "SELECT granted, used FROM borrow_rate($1, $2, $3, $4, $5, $6, $7)",
    )
    .bind::<Int2, _>(scope.code())
    .bind::<BigInt, _>(subject)
    .bind::<Int2, _>(unit.code())
    .bind::<Timestamptz, _>(window)
    .bind::<BigInt, _>(need)
    .bind::<BigInt, _>(want)
    .bind::<BigInt, _>(limit)
    .load(conn)
    .await?;
    let row = rows.into_iter().next().ok_or(StoreError::NotFound)?;
    Ok(Borrowed {
        granted: row.granted,
        used: row.used,
    })
}

#[derive(QueryableByName)]
struct AcquiredRow {
    #[diesel(sql_type = Bool)]
    acquired: bool,
}

/// Takes one of a subject's `limit` concurrency slots for a call until `expires_at` (its
/// deadline, past which a slot whose release was lost stops counting); `false` when all are
/// taken, across replicas.
pub async fn acquire_slot(
    conn: &mut AsyncPgConnection,
    scope: Scope,
    subject: i64,
    limit: i32,
    id: Uuid,
    expires_at: chrono::DateTime<chrono::Utc>,
) -> Result<bool, StoreError> {
    enum AcquireSlot {}
    let rows: Vec<AcquiredRow> =
        Prepared::<AcquireSlot>::new("SELECT acquire_slot($1, $2, $3, $4, $5) AS acquired")
            .bind::<Int2, _>(scope.code())
            .bind::<BigInt, _>(subject)
            .bind::<Int4, _>(limit)
            .bind::<SqlUuid, _>(id)
            .bind::<Timestamptz, _>(expires_at)
            .load(conn)
            .await?;
    Ok(rows.iter().any(|r| r.acquired))
}

/// Frees the slots of a finished call.
pub async fn release_slots(conn: &mut AsyncPgConnection, ids: &[Uuid]) -> Result<(), StoreError> {
    enum ReleaseSlots {}
    Prepared::<ReleaseSlots>::new("DELETE FROM concurrency_slots WHERE id = ANY($1)")
        .bind::<Array<SqlUuid>, _>(ids.to_vec())
        .execute(conn)
        .await?;
    Ok(())
}

/// Forgets rate windows long past and slots whose call is over; any replica may run it.
pub async fn forget_old(conn: &mut AsyncPgConnection) -> Result<(), StoreError> {
    diesel::sql_query("DELETE FROM rate_windows WHERE window_start < now() - interval '5 minutes'")
        .execute(conn)
        .await?;
    diesel::sql_query("DELETE FROM concurrency_slots WHERE expires_at < now()")
        .execute(conn)
        .await?;
    Ok(())
}

/// A spend limit an admission must respect.
#[derive(Debug, Clone, PartialEq)]
pub struct SpendCap {
    /// `Scope::Key` (with the key's id) or `Scope::User` (with the user's id).
    pub scope: Scope,
    pub subject: i64,
    pub limit: Money,
    pub period: Period,
}

#[derive(QueryableByName)]
struct CommittedRow {
    #[diesel(sql_type = Numeric)]
    committed: BigDecimal,
}

/// The spend limit `cap` would pass if `amount` more were reserved. Read in one statement (one
/// snapshot): what was charged in the period plus what open holds reserve (a key: its own
/// holds; a user: everything the user has reserved, leases included). A settlement moves an
/// amount from the holds to the total in one commit, so the sum never misses it.
async fn fits(
    conn: &mut AsyncPgConnection,
    cap: &SpendCap,
    amount: &Money,
) -> Result<bool, StoreError> {
    let reserved = match cap.scope {
        Scope::Key => {
            "(SELECT COALESCE(sum(amount), 0) FROM balance_holds
              WHERE access_key_id = $2 AND closed_at IS NULL)"
        }
        _ => "(SELECT held FROM users WHERE id = $2)",
    };
    let sql = format!(
        "SELECT COALESCE((SELECT spent FROM spend_totals WHERE scope = $1 AND subject = $2
                          AND period_start = limit_period_start($3)), 0)
                + COALESCE({reserved}, 0) AS committed"
    );
    let rows: Vec<CommittedRow> = diesel::sql_query(sql)
        .bind::<Int2, _>(cap.scope.code())
        .bind::<BigInt, _>(cap.subject)
        .bind::<Text, _>(cap.period.as_str())
        .load(conn)
        .await?;
    let committed = rows
        .into_iter()
        .next()
        .map(|r| Money::from_db(r.committed))
        .unwrap_or_else(Money::zero);
    Ok(committed
        .checked_add(amount)
        .is_ok_and(|total| total <= cap.limit))
}

/// What a capped admission reserves, by the usual admission rule.
pub enum Reserve<'a> {
    /// A call's hold (`billing::place_hold`).
    Hold { ttl_seconds: i64 },
    /// A job's hold and row (the job submission's statement).
    Job {
        submission: &'a crate::jobs::Submission,
        ttl_seconds: i64,
    },
}

/// How a capped admission ended.
#[derive(Debug, Clone, PartialEq)]
pub enum Capped {
    Reserved,
    /// The balance did not cover it.
    Balance,
    /// This spend limit would be passed.
    Spend(SpendCap),
}

/// An admission under spend limits: the user's capped admissions take turns (an advisory lock
/// per user, held to the commit), each cap is checked against what is spent and reserved, then
/// the hold is placed by the usual admission rule on the same transaction and marked with its
/// key, so that it counts against the key's limit. Nothing is written unless all of it passes.
pub async fn reserve_capped(
    conn: &mut AsyncPgConnection,
    user_id: i64,
    key_id: Option<i64>,
    request_id: Uuid,
    amount: &Money,
    caps: &[SpendCap],
    reserve: Reserve<'_>,
) -> Result<Capped, StoreError> {
    conn.transaction::<_, StoreError, _>(async move |conn| {
        diesel::sql_query("SELECT pg_advisory_xact_lock(hashtextextended('spend:' || $1, 0))")
            .bind::<BigInt, _>(user_id)
            .execute(conn)
            .await?;
        for cap in caps {
            if !fits(conn, cap, amount).await? {
                return Ok(Capped::Spend(cap.clone()));
            }
        }
        let reserved = match reserve {
            Reserve::Hold { ttl_seconds } => {
                crate::billing::place_hold(conn, user_id, request_id, amount, ttl_seconds)
                    .await?
                    .is_some()
            }
            Reserve::Job {
                submission,
                ttl_seconds,
            } => crate::jobs::submit_one(conn, submission, ttl_seconds).await?,
        };
        if !reserved {
            return Ok(Capped::Balance);
        }
        if key_id.is_some() {
            diesel::sql_query(
                "UPDATE balance_holds SET access_key_id = $2
                 WHERE request_id = $1 AND closed_at IS NULL",
            )
            .bind::<SqlUuid, _>(request_id)
            .bind::<Nullable<BigInt>, _>(key_id)
            .execute(conn)
            .await?;
        }
        Ok(Capped::Reserved)
    })
    .await
}

/// Adds settled charges to the spend totals of the keys and users that have a spend limit
/// (part of the settlement's transaction, after the users were locked).
pub async fn add_spend(
    conn: &mut AsyncPgConnection,
    charged: &[(i64, Option<i64>, BigDecimal)],
) -> Result<(), StoreError> {
    if charged.is_empty() {
        return Ok(());
    }
    enum AddSpend {}
    Prepared::<AddSpend>::new(
        "INSERT INTO spend_totals (scope, subject, period_start, spent)
         SELECT l.scope, l.subject, limit_period_start(l.spend_limit_period), sum(c.amount)
         FROM unnest($1::bigint[], $2::bigint[], $3::numeric[]) AS c(user_id, key_id, amount)
         JOIN limits l ON l.spend_limit IS NOT NULL
            AND ((l.scope = 1 AND l.subject = c.key_id) OR (l.scope = 2 AND l.subject = c.user_id))
         GROUP BY l.scope, l.subject, l.spend_limit_period
         ORDER BY l.scope, l.subject
         ON CONFLICT (scope, subject, period_start)
         DO UPDATE SET spent = spend_totals.spent + EXCLUDED.spent",
    )
    .bind::<Array<BigInt>, _>(charged.iter().map(|c| c.0).collect::<Vec<_>>())
    .bind::<Array<Nullable<BigInt>>, _>(charged.iter().map(|c| c.1).collect::<Vec<_>>())
    .bind::<Array<Numeric>, _>(charged.iter().map(|c| c.2.clone()).collect::<Vec<_>>())
    .execute(conn)
    .await?;
    Ok(())
}

#[derive(QueryableByName)]
struct CountRow {
    #[diesel(sql_type = BigInt)]
    count: i64,
}

/// Jobs of a user not finished yet (PENDING or PROCESSING), counted up to `cap`.
pub async fn pending_jobs(
    conn: &mut AsyncPgConnection,
    user_id: i64,
    cap: i32,
) -> Result<i64, StoreError> {
    enum PendingJobs {}
    let rows: Vec<CountRow> = Prepared::<PendingJobs>::new(
        "SELECT count(*) AS count FROM (
             SELECT 1 FROM async_jobs
             WHERE user_id = $1 AND status IN ('PENDING', 'PROCESSING') LIMIT $2) open",
    )
    .bind::<BigInt, _>(user_id)
    .bind::<BigInt, _>(i64::from(cap))
    .load(conn)
    .await?;
    Ok(rows.iter().map(|r| r.count).sum())
}
