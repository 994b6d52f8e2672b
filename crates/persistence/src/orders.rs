//! Top-up orders and their one-time completion, which credits the balance through the ledger.

use bigdecimal::BigDecimal;
use chrono::{DateTime, Utc};
use diesel::prelude::*;
use diesel_async::{AsyncConnection, AsyncPgConnection, RunQueryDsl};
use domain::{LedgerKind, Money, OrderStatus};

use crate::ledger::{self, BalanceChange, LedgerEntry};
use crate::schema::{orders, payment_events};
use crate::users::User;
use crate::{Page, Paged, StoreError};

#[derive(Debug, Clone, Queryable, Selectable)]
#[diesel(table_name = orders)]
pub struct Order {
    pub id: i64,
    pub order_no: String,
    pub user_id: i64,
    pub amount: BigDecimal,
    #[diesel(deserialize_as = crate::stored::Stored<OrderStatus>)]
    pub status: OrderStatus,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    pub completed_at: Option<DateTime<Utc>>,
}

#[derive(Insertable)]
#[diesel(table_name = orders)]
struct NewOrder<'a> {
    order_no: &'a str,
    user_id: i64,
    amount: &'a BigDecimal,
}

pub async fn create(
    conn: &mut AsyncPgConnection,
    user_id: i64,
    order_no: &str,
    amount: &Money,
) -> Result<Order, StoreError> {
    Ok(diesel::insert_into(orders::table)
        .values(NewOrder {
            order_no,
            user_id,
            amount: amount.as_decimal(),
        })
        .returning(Order::as_returning())
        .get_result(conn)
        .await?)
}

pub async fn find_by_no(conn: &mut AsyncPgConnection, order_no: &str) -> Result<Order, StoreError> {
    Ok(orders::table
        .filter(orders::order_no.eq(order_no))
        .select(Order::as_select())
        .first(conn)
        .await?)
}

/// Who completes an order: an admin by hand, or a verified payment-provider callback.
#[derive(Debug, Clone)]
pub enum Completion<'a> {
    Admin {
        actor_user_id: i64,
    },
    Payment {
        event_id: &'a str,
        amount: &'a Money,
    },
}

#[derive(Debug)]
pub struct CompletedOrder {
    pub order: Order,
    pub user: User,
    pub ledger_entry: LedgerEntry,
}

/// Completes a PENDING order and credits its amount exactly once, in one transaction: a
/// conditional UPDATE from PENDING (concurrent callers serialise on the row lock and all but
/// one find it no longer PENDING), the balance credit and its ledger row.
pub async fn complete(
    conn: &mut AsyncPgConnection,
    order_no: &str,
    completion: Completion<'_>,
) -> Result<CompletedOrder, StoreError> {
    conn.transaction::<_, StoreError, _>(async |conn| {
        if let Completion::Payment { event_id, .. } = completion {
            // Unknown orders are reported as such before the event is recorded.
            find_by_no(conn, order_no).await?;
            diesel::insert_into(payment_events::table)
                .values((
                    payment_events::event_id.eq(event_id),
                    payment_events::order_no.eq(order_no),
                ))
                .execute(conn)
                .await?;
        }
        let target = orders::table
            .filter(orders::order_no.eq(order_no))
            .filter(orders::status.eq(OrderStatus::Pending.as_str()));
        let now = Utc::now();
        let changes = (
            orders::status.eq(OrderStatus::Completed.as_str()),
            orders::completed_at.eq(Some(now)),
            orders::updated_at.eq(now),
        );
        let updated: Option<Order> = match completion {
            Completion::Payment { amount, .. } => {
                diesel::update(target.filter(orders::amount.eq(amount.as_decimal())))
                    .set(changes)
                    .returning(Order::as_returning())
                    .get_result(conn)
                    .await
                    .optional()?
            }
            Completion::Admin { .. } => diesel::update(target)
                .set(changes)
                .returning(Order::as_returning())
                .get_result(conn)
                .await
                .optional()?,
        };
        let order = match updated {
            Some(order) => order,
            None => {
                let current = find_by_no(conn, order_no).await?;
                if current.status != OrderStatus::Pending {
                    return Err(StoreError::StateConflict(format!(
                        "order {order_no} is {}, not PENDING",
                        current.status
                    )));
                }
                return Err(StoreError::StateConflict(format!(
                    "the paid amount does not match order {order_no}"
                )));
            }
        };
        let amount = Money::from_db(order.amount.clone());
        let actor_user_id = match completion {
            Completion::Admin { actor_user_id } => Some(actor_user_id),
            Completion::Payment { .. } => None,
        };
        let (user, ledger_entry) = ledger::apply(
            conn,
            BalanceChange {
                user_id: order.user_id,
                delta: &amount,
                kind: LedgerKind::Topup,
                reference: order_no,
                note: None,
                actor_user_id,
            },
        )
        .await?;
        Ok(CompletedOrder {
            order,
            user,
            ledger_entry,
        })
    })
    .await
}

/// Fails a PENDING order (the payment did not happen) exactly once: a conditional UPDATE from
/// PENDING, so of concurrent callers (or a completion racing it) one wins and the others find it
/// no longer PENDING (`StateConflict`). Nothing is credited.
pub async fn fail(conn: &mut AsyncPgConnection, order_no: &str) -> Result<Order, StoreError> {
    let updated = diesel::update(
        orders::table
            .filter(orders::order_no.eq(order_no))
            .filter(orders::status.eq(OrderStatus::Pending.as_str())),
    )
    .set((
        orders::status.eq(OrderStatus::Failed.as_str()),
        orders::updated_at.eq(Utc::now()),
    ))
    .returning(Order::as_returning())
    .get_result(conn)
    .await
    .optional()?;
    match updated {
        Some(order) => Ok(order),
        None => {
            let current = find_by_no(conn, order_no).await?;
            Err(StoreError::StateConflict(format!(
                "order {order_no} is {}, not PENDING",
                current.status
            )))
        }
    }
}

pub async fn list(
    conn: &mut AsyncPgConnection,
    user_id: Option<i64>,
    page: Page,
) -> Result<Paged<Order>, StoreError> {
    let mut query = orders::table.into_boxed();
    let mut count = orders::table.into_boxed();
    if let Some(user_id) = user_id {
        query = query.filter(orders::user_id.eq(user_id));
        count = count.filter(orders::user_id.eq(user_id));
    }
    let rows = query
        .order((orders::created_at.desc(), orders::id.desc()))
        .limit(page.limit)
        .offset(page.offset)
        .select(Order::as_select())
        .load(conn)
        .await?;
    let total = count.count().get_result(conn).await?;
    Ok(Paged { rows, total })
}
