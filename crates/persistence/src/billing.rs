//! The money path of model calls: holds (admission), settlement (exactly-once charging), the
//! outbox for charges the broker could not take, the expired-hold sweeper and reconciliation.

use bigdecimal::BigDecimal;
use diesel::prelude::*;
use diesel::sql_types::{BigInt, Int4, Numeric, Text, Uuid as SqlUuid};
use diesel_async::{AsyncConnection, AsyncPgConnection, RunQueryDsl};
use domain::{Money, Usage};
use uuid::Uuid;

use crate::StoreError;
use crate::prepared::Prepared;
use crate::schema::billing_outbox;

#[derive(QueryableByName)]
struct IdRow {
    #[diesel(sql_type = BigInt)]
    id: i64,
}

/// One call to admit: hold `amount` for `request_id` against `user_id`'s balance.
#[derive(Debug, Clone)]
pub struct HoldRequest {
    pub user_id: i64,
    pub request_id: Uuid,
    pub amount: Money,
}

#[derive(QueryableByName)]
struct HeldRow {
    #[diesel(sql_type = SqlUuid)]
    request_id: Uuid,
    #[diesel(sql_type = BigInt)]
    hold_id: i64,
}

/// Admits many calls in ONE conditional statement (the SQL function `place_holds`, one round
/// trip that also commits): each is held only if its user is active and the hold fits in
/// `balance - held`; calls of one user are admitted cheapest first while the running sum of
/// their holds fits, so the admitted holds never exceed the balance, also with concurrent
/// batches (each locks its users, in id order, before reading their balances). Answers, per
/// request, its hold id, or `None` when its balance does not cover it (nothing is written
/// for it). This is THE admission rule of holds: a lone call ([`place_hold`]) and job
/// submissions (`submit_jobs`) go through it too.
pub async fn place_holds(
    conn: &mut AsyncPgConnection,
    requests: &[HoldRequest],
    ttl_seconds: i64,
) -> Result<Vec<Option<i64>>, StoreError> {
    use diesel::sql_types::Array;
    use std::collections::HashMap;

    enum PlaceHolds {}
    let held: Vec<HeldRow> = Prepared::<PlaceHolds>::new(
        "SELECT request_id, hold_id FROM place_holds($1, $2, $3, $4, $5)",
    )
    .bind::<Array<BigInt>, _>((0..requests.len() as i64).collect::<Vec<_>>())
    .bind::<Array<BigInt>, _>(requests.iter().map(|r| r.user_id).collect::<Vec<_>>())
    .bind::<Array<SqlUuid>, _>(requests.iter().map(|r| r.request_id).collect::<Vec<_>>())
    .bind::<Array<Numeric>, _>(
        requests
            .iter()
            .map(|r| r.amount.as_decimal().clone())
            .collect::<Vec<_>>(),
    )
    .bind::<BigInt, _>(ttl_seconds)
    .load(conn)
    .await?;
    let mut held: HashMap<Uuid, i64> = held
        .into_iter()
        .map(|h| (h.request_id, h.hold_id))
        .collect();
    Ok(requests
        .iter()
        .map(|r| held.remove(&r.request_id))
        .collect())
}

/// Reserves `amount` for one call by the one admission rule, `place_holds` (a batch of one):
/// admitted only if the user is active and `balance - held >= amount`; concurrent calls
/// serialise on the user row, so the sum of admitted holds never exceeds the balance. `None`
/// means "not enough balance".
pub async fn place_hold(
    conn: &mut AsyncPgConnection,
    user_id: i64,
    request_id: Uuid,
    amount: &Money,
    ttl_seconds: i64,
) -> Result<Option<i64>, StoreError> {
    let request = HoldRequest {
        user_id,
        request_id,
        amount: amount.clone(),
    };
    Ok(
        place_holds(conn, std::slice::from_ref(&request), ttl_seconds)
            .await?
            .into_iter()
            .next()
            .flatten(),
    )
}

/// Releases an open hold (the call failed, so it costs nothing). Returns whether one was open.
pub async fn release_hold(
    conn: &mut AsyncPgConnection,
    request_id: Uuid,
) -> Result<bool, StoreError> {
    enum ReleaseHold {}
    let released = Prepared::<ReleaseHold>::new(
        "WITH released AS (
             UPDATE balance_holds SET status = 'released', closed_at = now()
             WHERE request_id = $1 AND closed_at IS NULL
             RETURNING user_id, amount)
         UPDATE users u SET held = u.held - r.amount FROM released r WHERE u.id = r.user_id",
    )
    .bind::<SqlUuid, _>(request_id)
    .execute(conn)
    .await?;
    Ok(released > 0)
}

/// Releases up to `limit` holds whose call never finished and that expired more than
/// `expired_for_seconds` ago; returns how many. (billing-worker's sweeper passes 0 once no charge
/// can still be waiting in the queue, else its grace: see its `HoldRelease`.)
///
/// A hold whose charge is known to be coming is kept past its expiry, so the user cannot
/// spend that money meanwhile and the charge is not cut short when it settles: a hold with a
/// charge waiting in the outbox, and the hold of a job, which the job releases when it fails
/// and its charge settles when it completes, however long the job waited in the queue (a
/// worker outage longer than the TTL used to release the holds of every queued job). A charge
/// that still arrives after its hold was released takes only what is free and is recorded as
/// an overrun (see [`settle_many`]).
pub async fn release_expired_holds(
    conn: &mut AsyncPgConnection,
    expired_for_seconds: i64,
    limit: i64,
) -> Result<usize, StoreError> {
    let released: Vec<IdRow> = diesel::sql_query(
        "WITH expired AS (
             SELECT h.id FROM balance_holds h
             WHERE h.status = 'open' AND h.expires_at < now() - make_interval(secs => $1)
               AND NOT EXISTS (SELECT 1 FROM billing_outbox o WHERE o.request_id = h.request_id)
               AND NOT EXISTS (SELECT 1 FROM async_jobs j
                               WHERE j.job_id = h.request_id AND j.status <> 'FAILED')
             ORDER BY h.expires_at LIMIT $2 FOR UPDATE OF h SKIP LOCKED),
         released AS (
             UPDATE balance_holds h SET status = 'released', closed_at = now()
             FROM expired e WHERE h.id = e.id
             RETURNING h.user_id, h.amount),
         per_user AS (SELECT user_id, sum(amount) AS amount, count(*) AS n FROM released GROUP BY user_id),
         -- The users in id order, as settlement locks them (this now runs under traffic).
         ordered AS (SELECT u.id FROM users u JOIN per_user p ON p.user_id = u.id
                     ORDER BY u.id FOR NO KEY UPDATE OF u)
         UPDATE users u SET held = u.held - p.amount
         FROM per_user p JOIN ordered o ON o.id = p.user_id
         WHERE u.id = p.user_id
         RETURNING p.n AS id",
    )
    .bind::<BigInt, _>(expired_for_seconds)
    .bind::<BigInt, _>(limit)
    .load(conn)
    .await?;
    Ok(released.iter().map(|r| r.id as usize).sum())
}

/// One call's charge, as the billing message carries it.
#[derive(Debug, Clone)]
pub struct Charge<'a> {
    pub request_id: Uuid,
    pub user_id: i64,
    pub access_key_id: Option<i64>,
    pub model_id: Option<i64>,
    pub model_name: &'a str,
    pub usage: Usage,
    /// What the usage priced at (the gateway sends the hold's amount for usage it cannot price).
    pub cost: &'a Money,
    /// The credit lease the call was admitted against (its cost is taken from there), if any.
    pub lease_id: Option<Uuid>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Settlement {
    /// Charged now. `held` is what the call's reservation covered (its hold, or the part of its
    /// lease it took; zero when the reservation was gone). `charged` is below the priced cost
    /// only for an overrun (cost above `held`) that the free balance could not cover.
    Settled {
        charged: Money,
        held: Money,
        balance_after: Money,
    },
    /// This request id was settled before: nothing changed.
    AlreadySettled,
}

fn tokens(value: u64) -> i64 {
    i64::try_from(value).unwrap_or(i64::MAX)
}

#[derive(QueryableByName)]
struct RequestRow {
    #[diesel(sql_type = SqlUuid)]
    request_id: Uuid,
}

#[derive(QueryableByName)]
struct HoldRow {
    #[diesel(sql_type = SqlUuid)]
    request_id: Uuid,
    #[diesel(sql_type = Numeric)]
    amount: BigDecimal,
}

#[derive(QueryableByName)]
struct ChargedRow {
    #[diesel(sql_type = Numeric)]
    amount: BigDecimal,
    #[diesel(sql_type = Numeric)]
    balance_after: BigDecimal,
}

/// Settles many charges with a fixed number of statements, whatever their count; run it inside
/// a transaction. Charge by charge in the given order: a request id already logged (before,
/// or earlier in this batch) is `AlreadySettled` and changes nothing; otherwise its hold is
/// deleted (or its cost taken from its lease), the balance debited, the ledger written and the
/// usage logged with what was charged. A charge may take what its own reservation covered plus
/// the free balance (balance minus every other open hold and lease), never money another
/// reservation keeps; the unused part of a reservation is free for the user's later charges of
/// the batch. A charge above its reservation is an overrun: its usage row keeps the priced cost
/// and the held amount beside what was charged. User rows are locked only by the last statement
/// (the `settle_usage` function), in id order, so calls being admitted for the same users wait
/// as little as possible (the caller commits right after).
pub async fn settle_many(
    conn: &mut AsyncPgConnection,
    charges: &[Charge<'_>],
) -> Result<Vec<Settlement>, StoreError> {
    use diesel::sql_types::{Array, Nullable as N};
    use std::collections::{HashMap, HashSet};

    // Request ids settled before. Only read here: the usage rows are written by the last
    // statement, with what was charged; a concurrent settlement of the same id makes that
    // insert fail on the unique request id, and the charge is settled again (and found).
    enum SettledBefore {}
    let logged: Vec<RequestRow> = Prepared::<SettledBefore>::new(
        "SELECT u.request_id FROM usage_logs u
         JOIN unnest($1::uuid[]) AS r(request_id) ON u.request_id = r.request_id",
    )
    .bind::<Array<SqlUuid>, _>(charges.iter().map(|c| c.request_id).collect::<Vec<_>>())
    .load(conn)
    .await?;
    let logged: HashSet<Uuid> = logged.into_iter().map(|r| r.request_id).collect();
    let mut fresh: HashSet<Uuid> = charges
        .iter()
        .map(|c| c.request_id)
        .filter(|id| !logged.contains(id))
        .collect();
    if fresh.is_empty() {
        return Ok(vec![Settlement::AlreadySettled; charges.len()]);
    }
    // A call admitted against a lease has no hold of its own.
    let leased: HashSet<Uuid> = charges
        .iter()
        .filter(|c| c.lease_id.is_some())
        .map(|c| c.request_id)
        .collect();
    let fresh_ids: Vec<Uuid> = fresh
        .iter()
        .filter(|id| !leased.contains(*id))
        .copied()
        .collect();
    enum CloseHolds {}
    // A settled hold is deleted, not kept with a status: the usage log and the ledger row
    // already record the call, one row per call would otherwise pile up for ever, and a
    // delete writes no new row version and no index entries (a status update is never HOT:
    // the status is in the partial indexes' predicates). Released holds (failed calls, expired
    // holds) stay: they are the only trace of those.
    // A join with the ids rather than `= ANY($1)`: the generic plan Postgres settles on for a
    // prepared `= ANY` scans the whole open-holds index; this one looks up each id. And
    // `closed_at IS NULL` (the same as status 'open', a CHECK says so) rather than the status:
    // a plan made while the table was small otherwise picked the open-holds partial index and
    // walked every entry it ever had (it keeps dead ones until a vacuum).
    let holds: Vec<HoldRow> = if fresh_ids.is_empty() {
        Vec::new()
    } else {
        Prepared::<CloseHolds>::new(
            "DELETE FROM balance_holds h
             USING unnest($1::uuid[]) AS r(request_id)
             WHERE h.request_id = r.request_id AND h.closed_at IS NULL
             RETURNING h.request_id, h.amount",
        )
        .bind::<Array<SqlUuid>, _>(fresh_ids)
        .load(conn)
        .await?
    };
    let mut released: HashMap<Uuid, BigDecimal> = holds
        .into_iter()
        .map(|h| (h.request_id, h.amount))
        .collect();
    // Charges of calls admitted against a credit lease take their cost from the lease, at most
    // what it still reserves; that part is released from `held` like a hold.
    take_from_leases(conn, charges, &fresh, &mut released).await?;

    // The charges to apply, in the given order; a second copy of a request id is a duplicate.
    let mut applied = Vec::new();
    let mut results: Vec<Option<Settlement>> = Vec::with_capacity(charges.len());
    for charge in charges {
        if fresh.remove(&charge.request_id) {
            applied.push(charge);
            results.push(None);
        } else {
            results.push(Some(Settlement::AlreadySettled));
        }
    }
    let held: Vec<BigDecimal> = applied
        .iter()
        .map(|c| {
            released
                .remove(&c.request_id)
                .unwrap_or_else(|| BigDecimal::from(0))
        })
        .collect();
    // One call (the SQL function `settle_usage`, see its migration) locks the users in id
    // order, charges them, releases their reservations, writes the ledger and logs the usage;
    // the transaction commits right after it, so an admission for the same user waits for one
    // statement and the commit, not for the whole batch.
    enum SettleUsage {}
    let settled: Vec<ChargedRow> = Prepared::<SettleUsage>::new(
        "SELECT amount, balance_after
         FROM settle_usage($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12) ORDER BY ord",
    )
    .bind::<Array<BigInt>, _>((0..applied.len() as i64).collect::<Vec<_>>())
    .bind::<Array<BigInt>, _>(applied.iter().map(|c| c.user_id).collect::<Vec<_>>())
    .bind::<Array<Numeric>, _>(
        applied
            .iter()
            .map(|c| c.cost.as_decimal().clone())
            .collect::<Vec<_>>(),
    )
    .bind::<Array<Numeric>, _>(held.clone())
    .bind::<Array<SqlUuid>, _>(applied.iter().map(|c| c.request_id).collect::<Vec<_>>())
    .bind::<Array<N<BigInt>>, _>(applied.iter().map(|c| c.access_key_id).collect::<Vec<_>>())
    .bind::<Array<N<BigInt>>, _>(applied.iter().map(|c| c.model_id).collect::<Vec<_>>())
    .bind::<Array<Text>, _>(
        applied
            .iter()
            .map(|c| c.model_name.to_owned())
            .collect::<Vec<_>>(),
    )
    .bind::<Array<BigInt>, _>(
        applied
            .iter()
            .map(|c| tokens(c.usage.prompt_tokens))
            .collect::<Vec<_>>(),
    )
    .bind::<Array<BigInt>, _>(
        applied
            .iter()
            .map(|c| tokens(c.usage.completion_tokens))
            .collect::<Vec<_>>(),
    )
    .bind::<Array<BigInt>, _>(
        applied
            .iter()
            .map(|c| tokens(c.usage.cached_prompt_tokens))
            .collect::<Vec<_>>(),
    )
    .bind::<Array<Int4>, _>(
        applied
            .iter()
            .map(|c| i32::try_from(c.usage.images).unwrap_or(i32::MAX))
            .collect::<Vec<_>>(),
    )
    .load(conn)
    .await?;
    if settled.len() != applied.len() {
        // Unreachable: the function refuses a charge of a user that does not exist.
        return Err(StoreError::NotFound);
    }
    // The keys and users with a spend limit count what was charged (their rows are locked
    // with the users above, so no admission under their limit reads a half-settled batch).
    let charged: Vec<(i64, Option<i64>, BigDecimal)> = applied
        .iter()
        .zip(&settled)
        .map(|(c, row)| (c.user_id, c.access_key_id, row.amount.clone()))
        .collect();
    crate::limits::add_spend(conn, &charged).await?;
    let mut settled = settled.into_iter().zip(held);
    for (slot, charge) in results.iter_mut().filter(|r| r.is_none()).zip(&applied) {
        let (row, held) = settled.next().ok_or(StoreError::NotFound)?;
        let (charged, held) = (Money::from_db(row.amount), Money::from_db(held));
        if *charge.cost > held {
            tracing::warn!(request_id = %charge.request_id, user_id = charge.user_id,
                cost = %charge.cost, %held, %charged, "charge above its reservation (overrun)");
        }
        *slot = Some(Settlement::Settled {
            charged,
            held,
            balance_after: Money::from_db(row.balance_after),
        });
    }
    results
        .into_iter()
        .map(|r| r.ok_or(StoreError::NotFound))
        .collect()
}

#[derive(QueryableByName)]
struct TakenRow {
    #[diesel(sql_type = SqlUuid)]
    lease_id: Uuid,
    #[diesel(sql_type = Numeric)]
    taken: BigDecimal,
}

/// Takes the costs of the fresh charges admitted against leases from those leases (each lease
/// gives at most what it holds, locked before the users are), and records per charge, in the
/// given order, the part its lease covered as what settling it releases from `held`.
async fn take_from_leases(
    conn: &mut AsyncPgConnection,
    charges: &[Charge<'_>],
    fresh: &std::collections::HashSet<Uuid>,
    released: &mut std::collections::HashMap<Uuid, BigDecimal>,
) -> Result<(), StoreError> {
    use diesel::sql_types::Array;
    use std::collections::{HashMap, HashSet};

    let mut seen = HashSet::new();
    let leased: Vec<(&Charge<'_>, Uuid)> = charges
        .iter()
        .filter(|c| fresh.contains(&c.request_id) && seen.insert(c.request_id))
        .filter_map(|c| c.lease_id.map(|lease| (c, lease)))
        .collect();
    if leased.is_empty() {
        return Ok(());
    }
    enum TakeFromLeases {}
    let taken: Vec<TakenRow> = Prepared::<TakeFromLeases>::new(
        "WITH wanted AS (
             SELECT lease_id, sum(cost) AS total
             FROM unnest($1::uuid[], $2::numeric[]) AS w(lease_id, cost) GROUP BY lease_id),
         locked AS (
             SELECT l.id, least(l.amount, w.total) AS taken
             FROM credit_leases l JOIN wanted w ON w.lease_id = l.id
             WHERE l.closed_at IS NULL
             ORDER BY l.id FOR NO KEY UPDATE OF l),
         shrunk AS (
             UPDATE credit_leases l SET amount = l.amount - k.taken
             FROM locked k WHERE l.id = k.id)
         SELECT id AS lease_id, taken FROM locked",
    )
    .bind::<Array<SqlUuid>, _>(leased.iter().map(|(_, lease)| *lease).collect::<Vec<_>>())
    .bind::<Array<Numeric>, _>(
        leased
            .iter()
            .map(|(c, _)| c.cost.as_decimal().clone())
            .collect::<Vec<_>>(),
    )
    .load(conn)
    .await?;
    let mut left: HashMap<Uuid, BigDecimal> =
        taken.into_iter().map(|t| (t.lease_id, t.taken)).collect();
    let zero = BigDecimal::from(0);
    for (charge, lease) in leased {
        let Some(remaining) = left.get_mut(&lease) else {
            continue; // the lease was released already: the charge takes only what is free
        };
        let part = charge
            .cost
            .as_decimal()
            .min(&*remaining)
            .clone()
            .max(zero.clone());
        *remaining -= &part;
        *released
            .entry(charge.request_id)
            .or_insert_with(|| zero.clone()) += part;
    }
    Ok(())
}

/// Settles one charge in its own transaction (see [`settle_many`]).
pub async fn settle(
    conn: &mut AsyncPgConnection,
    charge: &Charge<'_>,
) -> Result<Settlement, StoreError> {
    let mut settled = conn
        .transaction::<_, StoreError, _>(async |conn| {
            settle_many(conn, std::slice::from_ref(charge)).await
        })
        .await?;
    settled.pop().ok_or(StoreError::NotFound)
}

/// Keeps charges the broker could not take, in one statement (a request id already there is
/// left as it is); billing-worker's sweeper settles them. Each payload is the charge's JSON
/// text: Postgres parses it into `jsonb` as it would a binary `jsonb` parameter, and the caller
/// serialises it once, without building a `serde_json::Value` first.
pub async fn outbox_insert_many(
    conn: &mut AsyncPgConnection,
    charges: &[(Uuid, String)],
) -> Result<(), StoreError> {
    use diesel::sql_types::{Array, Text};

    enum InsertOutboxMany {}
    Prepared::<InsertOutboxMany>::new(
        "INSERT INTO billing_outbox (request_id, payload)
         SELECT request_id, payload::jsonb FROM unnest($1::uuid[], $2::text[]) AS c (request_id, payload)
         ON CONFLICT (request_id) DO NOTHING",
    )
    .bind::<Array<SqlUuid>, _>(charges.iter().map(|(id, _)| *id).collect::<Vec<_>>())
    .bind::<Array<Text>, _>(charges.iter().map(|(_, p)| p.as_str()).collect::<Vec<_>>())
    .execute(conn)
    .await?;
    Ok(())
}

/// Up to `limit` outbox rows, locked (skipping rows another sweeper holds); call in a transaction.
pub async fn outbox_take(
    conn: &mut AsyncPgConnection,
    limit: i64,
) -> Result<Vec<(i64, serde_json::Value)>, StoreError> {
    Ok(billing_outbox::table
        .order(billing_outbox::id)
        .limit(limit)
        .for_update()
        .skip_locked()
        .select((billing_outbox::id, billing_outbox::payload))
        .load(conn)
        .await?)
}

/// Removes the outbox rows of these requests: settled by the sweeper, or confirmed by the
/// broker (losing that delete only makes the sweeper settle them again, which changes nothing).
pub async fn outbox_delete_requests(
    conn: &mut AsyncPgConnection,
    request_ids: &[Uuid],
) -> Result<(), StoreError> {
    use diesel::sql_types::Array;

    enum DeleteOutboxRequests {}
    Prepared::<DeleteOutboxRequests>::new(
        "DELETE FROM billing_outbox o USING unnest($1::uuid[]) AS r(request_id)
         WHERE o.request_id = r.request_id",
    )
    .bind::<Array<SqlUuid>, _>(request_ids.to_vec())
    .execute(conn)
    .await?;
    Ok(())
}

/// Open holds: how many and their total, for the operators' gauges.
pub async fn open_holds(conn: &mut AsyncPgConnection) -> Result<(i64, BigDecimal), StoreError> {
    use crate::schema::balance_holds;
    let (count, sum): (i64, Option<BigDecimal>) = balance_holds::table
        .filter(balance_holds::status.eq("open"))
        .select((
            diesel::dsl::count_star(),
            diesel::dsl::sum(balance_holds::amount),
        ))
        .first(conn)
        .await?;
    Ok((count, sum.unwrap_or_else(|| BigDecimal::from(0))))
}

pub async fn outbox_len(conn: &mut AsyncPgConnection) -> Result<i64, StoreError> {
    Ok(billing_outbox::table.count().get_result(conn).await?)
}

/// Vacuums the users table, whose balance rows every call and settlement update: under load
/// it gathers dead row versions much faster than autovacuum (about once a minute, if on at
/// all) removes them, and every hold and settlement then walks them. SKIP_LOCKED: a vacuum
/// already running elsewhere is not waited for. Needs to own the table (the migrating user);
/// otherwise Postgres only warns.
pub async fn vacuum_balances(conn: &mut AsyncPgConnection) -> Result<(), StoreError> {
    diesel::sql_query("VACUUM (SKIP_LOCKED) users")
        .execute(conn)
        .await?;
    Ok(())
}

/// A user whose books do not add up.
#[derive(Debug, Clone, QueryableByName)]
pub struct Mismatch {
    #[diesel(sql_type = BigInt)]
    pub user_id: i64,
    #[diesel(sql_type = Numeric)]
    pub balance: BigDecimal,
    #[diesel(sql_type = Numeric)]
    pub ledger_sum: BigDecimal,
    #[diesel(sql_type = Numeric)]
    pub held: BigDecimal,
    #[diesel(sql_type = Numeric)]
    pub open_holds: BigDecimal,
    /// The sum of the user's `usage_logs.cost` (what their calls were charged).
    #[diesel(sql_type = Numeric)]
    pub usage_cost: BigDecimal,
    /// What the user's ledger rows of kind `charge` took (minus the sum of their deltas).
    #[diesel(sql_type = Numeric)]
    pub ledger_charges: BigDecimal,
    /// The user's ledger charge rows that took something else than the sum of the usage rows
    /// naming them (`usage_logs.ledger_id`; one charge row per user and settlement batch).
    #[diesel(sql_type = BigInt)]
    pub unmatched_charge_rows: i64,
}

/// Every user whose balance differs from the sum of their ledger, whose `held` differs from
/// the sum of their open holds and open credit leases, whose usage rows' charged amounts
/// differ from what their ledger's charge rows took, or who has a ledger charge row that took
/// something else than the sum of the usage rows naming it. Empty when the books are right.
/// (Charge rows written before usage rows named them, one per charge, are checked by the
/// per-user sums only.)
pub async fn reconcile(conn: &mut AsyncPgConnection) -> Result<Vec<Mismatch>, StoreError> {
    Ok(diesel::sql_query(
        "SELECT u.id AS user_id, u.balance, COALESCE(l.sum, 0) AS ledger_sum, u.held,
                COALESCE(h.sum, 0) AS open_holds, COALESCE(g.sum, 0) AS usage_cost,
                COALESCE(l.charges, 0) AS ledger_charges,
                COALESCE(x.n, 0) AS unmatched_charge_rows
         FROM users u
         LEFT JOIN (SELECT user_id, sum(delta) AS sum,
                           -sum(delta) FILTER (WHERE kind = 'charge') AS charges
                    FROM balance_ledger GROUP BY user_id) l
             ON l.user_id = u.id
         LEFT JOIN (SELECT user_id, sum(amount) AS sum
                    FROM (SELECT user_id, amount FROM balance_holds WHERE status = 'open'
                          UNION ALL
                          SELECT user_id, amount FROM credit_leases WHERE closed_at IS NULL) r
                    GROUP BY user_id) h ON h.user_id = u.id
         LEFT JOIN (SELECT user_id, sum(cost) AS sum FROM usage_logs GROUP BY user_id) g
             ON g.user_id = u.id
         LEFT JOIN (SELECT b.user_id, count(*) AS n
                    FROM balance_ledger b
                    JOIN (SELECT ledger_id, sum(cost) AS cost FROM usage_logs
                          WHERE ledger_id IS NOT NULL GROUP BY ledger_id) n
                        ON n.ledger_id = b.id
                    WHERE b.kind <> 'charge' OR -b.delta <> n.cost
                    GROUP BY b.user_id) x ON x.user_id = u.id
         WHERE u.balance <> COALESCE(l.sum, 0) OR u.held <> COALESCE(h.sum, 0)
            OR COALESCE(g.sum, 0) <> COALESCE(l.charges, 0) OR x.n IS NOT NULL
         ORDER BY u.id",
    )
    .load(conn)
    .await?)
}
