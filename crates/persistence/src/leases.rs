//! Credit leases (see the `credit_leases` migration): granting a slice of a balance to one
//! gateway process, topping it up, giving back what it did not use, renewing it while it runs,
//! and releasing the leases of processes that died. Each statement moves `users.held` and the
//! lease's amount together, so `held` stays the sum of open holds and open leases.

use bigdecimal::BigDecimal;
use diesel::prelude::*;
use diesel::sql_types::{Array, BigInt, Int4, Numeric, Uuid as SqlUuid};
use diesel_async::{AsyncConnection, AsyncPgConnection, RunQueryDsl};
use domain::Money;
use uuid::Uuid;

use crate::StoreError;
use crate::prepared::Prepared;

#[derive(QueryableByName)]
struct AmountRow {
    #[diesel(sql_type = Numeric)]
    amount: BigDecimal,
}

/// What a grant or top-up asks for.
#[derive(Debug, Clone)]
pub struct LeaseRequest {
    pub user_id: i64,
    /// The most to reserve (sized by the caller from the user's recent spend).
    pub desired: Money,
    /// Reserve nothing unless at least this much can be had (a lease too small to admit a
    /// few calls would only split the balance between processes).
    pub minimum: Money,
    /// At most this share of what is free (`balance - held`), in percent.
    pub max_percent: u32,
    pub ttl_seconds: i64,
}

/// THE sizing rule of a lease, one conditional statement on the user's row: adds to `held` the
/// least of `$2` (desired) and `$4` percent of what is free, if that is at least `$3` (and
/// above zero) and the user (`$1`) is active; returns the user's id and that amount. `$5` is
/// the lease's lifetime. (A macro so that both statements embed the same text.)
///
/// The size is read without a lock; the update then re-checks, on the row it locks, that the
/// amount still fits in what is free (a concurrent change can only make the share a little
/// larger than `$4` percent of what is free now, never more than what is free). Locking the
/// row in the read as well deadlocked against the batched holds of `place_holds`.
macro_rules! carve {
    () => {
        "UPDATE users u
         SET held = u.held + s.amount
         FROM (SELECT id, least($2::numeric, trunc((balance - held) * $4 / 100, 8)) AS amount
               FROM users WHERE id = $1) s
         WHERE u.id = s.id AND u.status = 'active' AND s.amount >= $3 AND s.amount > 0
           AND u.balance - u.held >= s.amount
         RETURNING u.id, s.amount"
    };
}

/// Binds `$1`..`$5` of a statement built on [`carve!`].
trait BindLeaseRequest: Sized {
    fn bind_lease_request(self, request: &LeaseRequest) -> Self;
}

impl<Tag: 'static> BindLeaseRequest for Prepared<'_, Tag> {
    fn bind_lease_request(self, request: &LeaseRequest) -> Self {
        self.bind::<BigInt, _>(request.user_id)
            .bind::<Numeric, _>(request.desired.as_decimal().clone())
            .bind::<Numeric, _>(request.minimum.as_decimal().clone())
            .bind::<Int4, _>(i32::try_from(request.max_percent).unwrap_or(100).min(100))
            .bind::<BigInt, _>(request.ttl_seconds)
    }
}

/// Grants a new lease `lease_id` to `holder` in ONE conditional statement: the least of
/// `desired` and `max_percent` of the free balance, if that is at least `minimum` and the user
/// is active. Answers the amount reserved, or `None` (nothing written).
pub async fn grant(
    conn: &mut AsyncPgConnection,
    lease_id: Uuid,
    holder: Uuid,
    request: &LeaseRequest,
) -> Result<Option<Money>, StoreError> {
    enum GrantLease {}
    let rows: Vec<AmountRow> = Prepared::<GrantLease>::new(concat!(
        "WITH carved AS (",
        carve!(),
        ") INSERT INTO credit_leases (id, user_id, holder, amount, expires_at)
         SELECT $6, id, $7, amount, now() + make_interval(secs => $5) FROM carved
         RETURNING amount"
    ))
    .bind_lease_request(request)
    .bind::<SqlUuid, _>(lease_id)
    .bind::<SqlUuid, _>(holder)
    .load(conn)
    .await?;
    Ok(rows.into_iter().next().map(|r| Money::from_db(r.amount)))
}

/// Adds to an open lease, on the same terms as [`grant`] (and renews it). Locks the lease row
/// before the user's row, the order settlement takes them in. `None` when nothing was added.
pub async fn top_up(
    conn: &mut AsyncPgConnection,
    lease_id: Uuid,
    request: &LeaseRequest,
) -> Result<Option<Money>, StoreError> {
    let lease_id_copy = lease_id;
    let request = request.clone();
    conn.transaction::<_, StoreError, _>(async move |conn| {
        enum LockLease {}
        let open: Vec<AmountRow> = Prepared::<LockLease>::new(
            "SELECT amount FROM credit_leases WHERE id = $1 AND closed_at IS NULL
             FOR NO KEY UPDATE",
        )
        .bind::<SqlUuid, _>(lease_id_copy)
        .load(conn)
        .await?;
        if open.is_empty() {
            return Ok(None);
        }
        enum TopUpLease {}
        let rows: Vec<AmountRow> = Prepared::<TopUpLease>::new(concat!(
            "WITH carved AS (",
            carve!(),
            ") UPDATE credit_leases l
             SET amount = l.amount + c.amount, expires_at = now() + make_interval(secs => $5)
             FROM carved c WHERE l.id = $6
             RETURNING c.amount"
        ))
        .bind_lease_request(&request)
        .bind::<SqlUuid, _>(lease_id_copy)
        .load(conn)
        .await?;
        Ok(rows.into_iter().next().map(|r| Money::from_db(r.amount)))
    })
    .await
}

/// Gives back up to `amount` of a lease (what its holder did not use): the lease keeps the
/// rest for the charges of its finished calls that have not settled yet. Answers what was
/// given back (less than `amount` only if settlement took more than its holder counted).
pub async fn give_back(
    conn: &mut AsyncPgConnection,
    lease_id: Uuid,
    amount: &Money,
) -> Result<Money, StoreError> {
    enum GiveBack {}
    let rows: Vec<AmountRow> = Prepared::<GiveBack>::new(
        "WITH lease AS (
             SELECT id, user_id, least(amount, $2) AS back FROM credit_leases
             WHERE id = $1 AND closed_at IS NULL FOR NO KEY UPDATE),
         shrunk AS (
             UPDATE credit_leases l SET amount = l.amount - lease.back
             FROM lease WHERE l.id = lease.id
             RETURNING lease.user_id, lease.back)
         UPDATE users u SET held = u.held - s.back FROM shrunk s WHERE u.id = s.user_id
         RETURNING s.back AS amount",
    )
    .bind::<SqlUuid, _>(lease_id)
    .bind::<Numeric, _>(amount.as_decimal())
    .load(conn)
    .await?;
    Ok(rows
        .into_iter()
        .next()
        .map_or_else(Money::zero, |r| Money::from_db(r.amount)))
}

/// Extends the expiry of these open leases (their holder is alive and using them).
pub async fn renew(
    conn: &mut AsyncPgConnection,
    lease_ids: &[Uuid],
    ttl_seconds: i64,
) -> Result<usize, StoreError> {
    enum RenewLeases {}
    Ok(Prepared::<RenewLeases>::new(
        // Locked in id order, as settlement locks them: in any other order a renewal and a
        // settlement touching the same two leases could deadlock.
        "UPDATE credit_leases l SET expires_at = now() + make_interval(secs => $2)
         FROM (SELECT id FROM credit_leases WHERE id = ANY($1) AND closed_at IS NULL
               ORDER BY id FOR NO KEY UPDATE) r
         WHERE l.id = r.id",
    )
    .bind::<Array<SqlUuid>, _>(lease_ids.to_vec())
    .bind::<BigInt, _>(ttl_seconds)
    .execute(conn)
    .await?)
}

#[derive(QueryableByName)]
struct CountRow {
    #[diesel(sql_type = BigInt)]
    n: i64,
}

/// Releases up to `limit` open leases that expired more than `grace_seconds` ago (their holder
/// stopped renewing them: it died, or it gave them back and stopped): what they still reserve
/// goes back to the balance and they close. Returns how many. Call it under the same rule as
/// expired holds: only once no charge against them can still arrive.
pub async fn release_expired(
    conn: &mut AsyncPgConnection,
    grace_seconds: i64,
    limit: i64,
) -> Result<usize, StoreError> {
    let released: Vec<CountRow> = diesel::sql_query(
        "WITH expired AS (
             SELECT id, user_id, amount FROM credit_leases
             WHERE closed_at IS NULL AND expires_at < now() - make_interval(secs => $1)
               -- A charge against it waiting in the outbox still takes from it.
               AND NOT EXISTS (SELECT 1 FROM billing_outbox o
                               WHERE o.payload ->> 'lease_id' = credit_leases.id::text)
             ORDER BY expires_at LIMIT $2 FOR NO KEY UPDATE SKIP LOCKED),
         closed AS (
             UPDATE credit_leases l SET amount = 0, closed_at = now()
             FROM expired e WHERE l.id = e.id
             RETURNING e.user_id, e.amount),
         per_user AS (SELECT user_id, sum(amount) AS amount, count(*) AS n FROM closed GROUP BY user_id),
         -- The users in id order, as settlement locks them.
         ordered AS (SELECT u.id FROM users u JOIN per_user p ON p.user_id = u.id
                     ORDER BY u.id FOR NO KEY UPDATE OF u)
         UPDATE users u SET held = u.held - p.amount
         FROM per_user p JOIN ordered o ON o.id = p.user_id
         WHERE u.id = p.user_id
         RETURNING p.n",
    )
    .bind::<BigInt, _>(grace_seconds)
    .bind::<BigInt, _>(limit)
    .load(conn)
    .await?;
    Ok(released.iter().map(|r| r.n as usize).sum())
}
