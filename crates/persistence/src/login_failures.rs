//! Failed sign-ins per account, shared by every gateway replica. The backoff rule itself is
//! gateway-api's (`core::throttle::Backoff`); this module only keeps each account's record
//! under a row lock and on the database's clock, so replicas agree on both.

use std::time::Duration;

use chrono::{DateTime, Utc};
use diesel::prelude::*;
use diesel::sql_types::Timestamptz;
use diesel_async::{AsyncConnection, AsyncPgConnection, RunQueryDsl};

use crate::StoreError;
use crate::schema::login_failures;

/// One key's attempts; times in milliseconds on the throttle's clock (here: since the Unix
/// epoch, by the database's clock).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Attempts {
    pub count: u32,
    pub blocked_until: Option<u64>,
    pub last: u64,
}

fn millis(at: DateTime<Utc>) -> u64 {
    u64::try_from(at.timestamp_millis()).unwrap_or(0)
}

fn time(millis: u64) -> DateTime<Utc> {
    DateTime::from_timestamp_millis(i64::try_from(millis).unwrap_or(i64::MAX))
        .unwrap_or(DateTime::<Utc>::MAX_UTC)
}

/// Counts one attempt on `account`: locks its record, asks `next` for the record after this
/// attempt at the database's now (or how long the account is blocked: then nothing changes)
/// and stores it. A new account's first attempt also sweeps a few records idle for longer
/// than `forget_after`, so the table holds only recent accounts.
pub async fn attempt(
    conn: &mut AsyncPgConnection,
    account: &str,
    forget_after: Duration,
    next: impl FnOnce(Option<Attempts>, u64) -> Result<Attempts, Duration> + Send,
) -> Result<Result<(), Duration>, StoreError> {
    conn.transaction::<_, StoreError, _>(async move |conn| {
        let now: DateTime<Utc> = diesel::select(diesel::dsl::sql::<Timestamptz>("now()"))
            .get_result(conn)
            .await?;
        diesel::insert_into(login_failures::table)
            .values((
                login_failures::account.eq(account),
                login_failures::attempts.eq(0),
                login_failures::last_attempt_at.eq(now),
            ))
            .on_conflict_do_nothing()
            .execute(conn)
            .await?;
        let (count, blocked_until, last): (i32, Option<DateTime<Utc>>, DateTime<Utc>) =
            login_failures::table
                .find(account)
                .select((
                    login_failures::attempts,
                    login_failures::blocked_until,
                    login_failures::last_attempt_at,
                ))
                .for_update()
                .first(conn)
                .await?;
        let before = (count > 0).then(|| Attempts {
            count: u32::try_from(count).unwrap_or(0),
            blocked_until: blocked_until.map(millis),
            last: millis(last),
        });
        let after = match next(before, millis(now)) {
            Ok(after) => after,
            Err(wait) => return Ok(Err(wait)),
        };
        diesel::update(login_failures::table.find(account))
            .set((
                login_failures::attempts.eq(i32::try_from(after.count).unwrap_or(i32::MAX)),
                login_failures::blocked_until.eq(after.blocked_until.map(time)),
                login_failures::last_attempt_at.eq(time(after.last)),
            ))
            .execute(conn)
            .await?;
        if before.is_none() {
            let cutoff =
                now - chrono::Duration::from_std(forget_after).unwrap_or(chrono::Duration::days(1));
            diesel::sql_query(
                "DELETE FROM login_failures WHERE account IN (
                     SELECT account FROM login_failures
                     WHERE last_attempt_at < $1 AND (blocked_until IS NULL OR blocked_until < $2)
                     LIMIT 100 FOR UPDATE SKIP LOCKED)",
            )
            .bind::<Timestamptz, _>(cutoff)
            .bind::<Timestamptz, _>(now)
            .execute(conn)
            .await?;
        }
        Ok(Ok(()))
    })
    .await
}

/// The account signed in: its record goes, on every replica at once.
pub async fn clear(conn: &mut AsyncPgConnection, account: &str) -> Result<(), StoreError> {
    diesel::delete(login_failures::table.find(account))
        .execute(conn)
        .await?;
    Ok(())
}
