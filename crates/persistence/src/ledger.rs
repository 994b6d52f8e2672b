//! The balance ledger: every balance change goes through `apply`, which moves the balance and
//! writes its ledger row in the caller's transaction.

use bigdecimal::BigDecimal;
use chrono::{DateTime, Utc};
use diesel::prelude::*;
use diesel_async::{AsyncPgConnection, RunQueryDsl};
use domain::{LedgerKind, Money};

use crate::schema::{balance_ledger, users};
use crate::users::User;
use crate::{Page, Paged, StoreError};

#[derive(Debug, Clone, Queryable, Selectable)]
#[diesel(table_name = balance_ledger)]
pub struct LedgerEntry {
    pub id: i64,
    pub user_id: i64,
    pub delta: BigDecimal,
    pub balance_after: BigDecimal,
    pub kind: String,
    pub reference: String,
    pub note: Option<String>,
    pub actor_user_id: Option<i64>,
    pub created_at: DateTime<Utc>,
}

#[derive(Insertable)]
#[diesel(table_name = balance_ledger)]
struct NewLedgerEntry<'a> {
    user_id: i64,
    delta: &'a BigDecimal,
    balance_after: &'a BigDecimal,
    kind: &'a str,
    reference: &'a str,
    note: Option<&'a str>,
    actor_user_id: Option<i64>,
}

/// What a balance change is and why; `(kind, reference)` is unique in the ledger.
#[derive(Debug, Clone)]
pub struct BalanceChange<'a> {
    pub user_id: i64,
    pub delta: &'a Money,
    pub kind: LedgerKind,
    pub reference: &'a str,
    pub note: Option<&'a str>,
    pub actor_user_id: Option<i64>,
}

/// Moves a balance by `delta` in one conditional UPDATE (a debit never below the money held
/// by open holds, so never below zero) and records the
/// ledger row. Must run inside the caller's transaction so both commit or neither does.
pub async fn apply(
    conn: &mut AsyncPgConnection,
    change: BalanceChange<'_>,
) -> Result<(User, LedgerEntry), StoreError> {
    if change.delta.is_zero() {
        return Err(StoreError::StateConflict(
            "a balance change cannot be zero".into(),
        ));
    }
    let delta = change.delta.as_decimal();
    // A debit may not reach into money reserved by open holds (floor = held); a credit only has
    // to keep the balance non-negative (floor = 0).
    let floor_factor = BigDecimal::from(i32::from(change.delta.is_negative()));
    let target = users::table
        .find(change.user_id)
        .filter((users::balance + delta).ge(users::held * floor_factor));
    let user: Option<User> = diesel::update(target)
        .set((
            users::balance.eq(users::balance + delta),
            users::updated_at.eq(diesel::dsl::now),
        ))
        .returning(User::as_returning())
        .get_result(conn)
        .await
        .optional()?;
    let user = match user {
        Some(user) => user,
        None => {
            // Tell "no such user" from "would go negative".
            crate::users::find(conn, change.user_id).await?;
            return Err(StoreError::InsufficientBalance);
        }
    };
    let entry = diesel::insert_into(balance_ledger::table)
        .values(NewLedgerEntry {
            user_id: change.user_id,
            delta,
            balance_after: &user.balance,
            kind: change.kind.as_str(),
            reference: change.reference,
            note: change.note,
            actor_user_id: change.actor_user_id,
        })
        .returning(LedgerEntry::as_returning())
        .get_result(conn)
        .await?;
    Ok((user, entry))
}

pub async fn list_for_user(
    conn: &mut AsyncPgConnection,
    user_id: i64,
    page: Page,
) -> Result<Paged<LedgerEntry>, StoreError> {
    let rows = balance_ledger::table
        .filter(balance_ledger::user_id.eq(user_id))
        .order((balance_ledger::created_at.desc(), balance_ledger::id.desc()))
        .limit(page.limit)
        .offset(page.offset)
        .select(LedgerEntry::as_select())
        .load(conn)
        .await?;
    let total = balance_ledger::table
        .filter(balance_ledger::user_id.eq(user_id))
        .count()
        .get_result(conn)
        .await?;
    Ok(Paged { rows, total })
}

/// Sum of a user's ledger deltas; equals the stored balance when the books are right.
pub async fn sum_for_user(
    conn: &mut AsyncPgConnection,
    user_id: i64,
) -> Result<BigDecimal, StoreError> {
    let sum: Option<BigDecimal> = balance_ledger::table
        .filter(balance_ledger::user_id.eq(user_id))
        .select(diesel::dsl::sum(balance_ledger::delta))
        .first(conn)
        .await?;
    Ok(sum.unwrap_or_else(|| BigDecimal::from(0)))
}
