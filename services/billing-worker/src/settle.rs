//! Settling charges: the queue handler, the batcher that settles many charges in one
//! transaction, and the sweeper that releases expired holds and settles the outbox.

use std::future::Future;
use std::pin::Pin;
use std::time::{Duration, Instant};

use diesel_async::AsyncConnection;
use domain::{BillingBatch, BillingMessage, Money};
use messaging::{Delivery, Handler, Outcome};
use persistence::batch::{Batcher, Linger};
use persistence::billing::{self, Charge, Settlement};
use persistence::{Pool, StoreError};

/// Retry delay for a charge whose settlement hit a transient database error.
const RETRY_AFTER: Duration = Duration::from_secs(2);

/// Settles a decoded charge, in a batch with whatever else arrived at the same time.
#[derive(Clone)]
pub struct Settler {
    batches: Batcher<BillingMessage, Settlement>,
}

impl Settler {
    /// Starts the batching task: up to `batch_max` charges per transaction, up to `in_flight`
    /// transactions at once, waiting for a batch to fill as `linger` says once the first charge
    /// arrived (at most its `max`, and no longer than its `idle` after the latest charge: once
    /// every delivery the consumer's prefetch allows is in, no more can come until this batch
    /// commits and acks them). Concurrent batches cannot deadlock: each locks its users in id order,
    /// in a statement of its own (see the `settle_charges` migration). A batch that fails is
    /// settled again charge by charge, so one bad charge cannot hold up the rest.
    pub fn start(pool: Pool, batch_max: usize, in_flight: usize, linger: Linger) -> Settler {
        let batches = Batcher::start_lingering(
            batch_max,
            in_flight,
            linger,
            move |messages: Vec<BillingMessage>| {
                let pool = pool.clone();
                async move { settle_batch(&pool, messages).await }
            },
        );
        Settler { batches }
    }

    pub async fn settle(&self, message: BillingMessage) -> Result<Settlement, StoreError> {
        self.batches.call(message).await
    }
}

fn charge_of(message: &BillingMessage) -> Charge<'_> {
    Charge {
        request_id: message.request_id,
        user_id: message.user_id,
        access_key_id: message.access_key_id,
        model_id: Some(message.model_id),
        model_name: &message.model_name,
        usage: message.usage,
        cost: &message.cost,
        lease_id: message.lease_id,
    }
}

/// One transaction for the whole batch, with a fixed number of statements (see
/// `billing::settle_many`), also for a lone charge (and for each charge of a failed batch, run
/// again alone).
async fn settle_batch(
    pool: &Pool,
    messages: Vec<BillingMessage>,
) -> Result<Vec<Settlement>, StoreError> {
    let started = Instant::now();
    let mut conn = pool.get().await?;
    let charges: Vec<Charge<'_>> = messages.iter().map(charge_of).collect();
    let results = conn
        .transaction::<_, StoreError, _>(async |conn| billing::settle_many(conn, &charges).await)
        .await?;
    for (message, result) in messages.iter().zip(&results) {
        record(message, result);
    }
    metrics::histogram!("billing_batch_size").record(messages.len() as f64);
    metrics::histogram!("billing_batch_seconds").record(started.elapsed().as_secs_f64());
    Ok(results)
}

fn record(message: &BillingMessage, result: &Settlement) {
    match result {
        Settlement::Settled { .. } => {
            metrics::counter!("billing_settlements_total", "outcome" => "settled").increment(1);
            let lag = chrono::Utc::now() - message.occurred_at;
            metrics::histogram!("billing_lag_seconds")
                .record(lag.to_std().unwrap_or_default().as_secs_f64());
        }
        Settlement::AlreadySettled => {
            metrics::counter!("billing_settlements_total", "outcome" => "duplicate").increment(1);
        }
    }
    record_overrun(message, result);
}

/// What an overrun left uncollected: `Some` when the charge priced above what its reservation
/// covered (`priced - charged`, zero when the free balance covered the rest), `None` otherwise.
fn overrun(priced: &Money, result: &Settlement) -> Option<Money> {
    match result {
        Settlement::Settled { charged, held, .. } if priced > held => Some(
            priced
                .checked_sub(charged)
                .unwrap_or_else(|_| Money::zero()),
        ),
        _ => None,
    }
}

/// Counts an overrun (see [`overrun`]) of a charge settled by the consumer or the sweeper.
fn record_overrun(message: &BillingMessage, result: &Settlement) {
    if let Some(uncollected) = overrun(&message.cost, result) {
        metrics::counter!("billing_overruns_total").increment(1);
        // For dashboards only (its sum is the money lost); money itself stays exact decimals.
        metrics::histogram!("billing_overrun_uncollected_amount")
            .record(bigdecimal::ToPrimitive::to_f64(uncollected.as_decimal()).unwrap_or(0.0));
    }
}

/// Whether a failed settlement may succeed later (database or connection trouble) or never
/// will (the charge itself is wrong, e.g. an unknown user).
fn is_permanent(error: &StoreError) -> bool {
    matches!(error, StoreError::ForeignKey(_) | StoreError::Check(_))
}

/// The `billing_log_queue` handler: decode, settle (batched), ack after the commit.
pub struct BillingHandler {
    pub settler: Settler,
}

impl Handler for BillingHandler {
    fn handle(&self, delivery: Delivery) -> Pin<Box<dyn Future<Output = Outcome> + Send + '_>> {
        Box::pin(async move {
            let batch = match BillingBatch::from_json_slice(&delivery.body) {
                Ok(batch) => batch,
                Err(error) => {
                    tracing::error!(%error, "undecodable billing message");
                    return Outcome::DeadLetter(format!("undecodable billing message: {error}"));
                }
            };
            let settled = futures_util::future::join_all(
                batch
                    .charges
                    .into_iter()
                    .map(|message| self.settle_one(message)),
            )
            .await;
            outcome_of(settled)
        })
    }
}

/// What became of one charge of a delivery.
#[derive(Debug, PartialEq)]
enum ChargeOutcome {
    Settled,
    /// It can never be settled (the charge itself is wrong): the reason.
    Refused(String),
    /// It may settle later (database trouble).
    Failed,
}

impl BillingHandler {
    async fn settle_one(&self, message: BillingMessage) -> ChargeOutcome {
        let request_id = message.request_id;
        if message.cost.is_negative() {
            tracing::error!(%request_id, "charge with a negative cost");
            return ChargeOutcome::Refused(format!("{request_id}: negative cost"));
        }
        match self.settler.settle(message).await {
            Ok(_) => ChargeOutcome::Settled,
            Err(error) if is_permanent(&error) => {
                tracing::error!(%error, %request_id, "charge cannot be settled");
                ChargeOutcome::Refused(format!("{request_id}: {error}"))
            }
            Err(error) => {
                tracing::warn!(%error, %request_id, "settlement failed; retrying");
                ChargeOutcome::Failed
            }
        }
    }
}

/// One outcome for a delivery of several charges. Each settled charge is committed already and
/// settling it again changes nothing, so the whole body may be retried or dead-lettered: a
/// refused charge dead-letters the body (an operator who replays it settles only what was
/// missing), a transient failure retries it; only a fully settled body is acked.
fn outcome_of(charges: Vec<ChargeOutcome>) -> Outcome {
    let refused: Vec<String> = charges
        .iter()
        .filter_map(|c| match c {
            ChargeOutcome::Refused(reason) => Some(reason.clone()),
            _ => None,
        })
        .collect();
    if !refused.is_empty() {
        Outcome::DeadLetter(refused.join("; "))
    } else if charges.contains(&ChargeOutcome::Failed) {
        Outcome::Retry(RETRY_AFTER)
    } else {
        Outcome::Ack
    }
}

/// Which expired holds (and credit leases) the sweeper may release.
///
/// A hold expires when its call's charge has not settled within the hold TTL. That charge may
/// still be on its way: published to `billing_log_queue` while every billing-worker was down,
/// or behind a backlog. Releasing its hold then would let the user spend that money before the
/// charge settles, and the charge would take only what is free (an overrun, the operator's
/// loss). So every expired hold is released at once only when the queue and its retry queue
/// were seen empty at two sweeps in a row: every charge published before the first of them has
/// been delivered by the second and, a batch settling in milliseconds, settled. Under steady
/// traffic the queue is never seen empty, so a hold is also released once it has been expired
/// for longer than the grace (`billing.hold_release_grace_seconds`): a call's charge is durable
/// before its answer, and every call ends before its hold expires, so by then its charge has
/// had the whole grace to settle; one that still comes later takes only what is free and is
/// recorded as an overrun. (Charges parked in the outbox keep their holds anyway, see
/// `billing::release_expired_holds`.) Without a grace, only the empty-queue rule applies.
#[derive(Debug, Default)]
pub struct HoldRelease {
    drained_before: bool,
    grace: Option<Duration>,
}

impl HoldRelease {
    /// The empty-queue rule, and the grace rule with `grace`.
    pub fn with_grace(grace: Duration) -> HoldRelease {
        HoldRelease {
            drained_before: false,
            grace: Some(grace),
        }
    }

    /// Records what this sweep found waiting in the queue (`None`: the broker could not be
    /// asked); answers how long a hold (or lease) must have been expired to be released now
    /// (zero: every expired one), or `None` when none may be.
    pub fn observe(&mut self, waiting: Option<u64>) -> Option<Duration> {
        let drained = waiting == Some(0);
        let open = drained && self.drained_before;
        self.drained_before = drained;
        if open {
            Some(Duration::ZERO)
        } else {
            self.grace
        }
    }
}

/// One pass of the sweeper: release holds and credit leases expired for longer than
/// `expired_for` (none when `None`, see [`HoldRelease`]), settle charges parked in the outbox
/// (each settled and deleted in one transaction, so a charge is settled once even if two
/// sweepers run) and vacuum the balance rows (see `billing::vacuum_balances`). Returns (holds
/// released, outbox charges settled).
pub async fn sweep(
    pool: &Pool,
    expired_for: Option<Duration>,
) -> Result<(usize, usize), StoreError> {
    let expired_for_seconds = expired_for.map(|d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX));
    let mut conn = pool.get().await?;
    let released = match expired_for_seconds {
        Some(seconds) => billing::release_expired_holds(&mut conn, seconds, 1000).await?,
        None => 0,
    };
    if released > 0 {
        metrics::counter!("billing_holds_expired_total").increment(released as u64);
        tracing::info!(released, "released expired holds");
    }
    let mut settled = 0;
    loop {
        let (taken, done) = conn
            .transaction::<_, StoreError, _>(async |conn| {
                let rows = billing::outbox_take(conn, 100).await?;
                let mut messages = Vec::with_capacity(rows.len());
                for (id, payload) in &rows {
                    let bytes = serde_json::to_vec(payload).unwrap_or_default();
                    match BillingMessage::from_json_slice(&bytes) {
                        Ok(message) => messages.push(message),
                        // Kept for an operator to inspect: dropping it would lose a charge.
                        Err(error) => tracing::error!(%error, id, "undecodable outbox charge"),
                    }
                }
                // Set-based, users locked in id order: two sweepers (or a sweeper and a
                // batch) cannot deadlock, as they could settling charge by charge.
                let charges: Vec<Charge<'_>> = messages.iter().map(charge_of).collect();
                let results = billing::settle_many(conn, &charges).await?;
                for (message, result) in messages.iter().zip(&results) {
                    record_overrun(message, result);
                }
                let ids: Vec<_> = messages.iter().map(|m| m.request_id).collect();
                billing::outbox_delete_requests(conn, &ids).await?;
                Ok((rows.len(), ids.len()))
            })
            .await?;
        settled += done;
        if taken < 100 || done == 0 {
            break;
        }
    }
    if let Some(seconds) = expired_for_seconds {
        // Leases whose process stopped renewing them (it died): what they still reserve goes
        // back to the balance, under the same rule as expired holds, after the outbox above.
        let leases = persistence::leases::release_expired(&mut conn, seconds, 1000).await?;
        if leases > 0 {
            metrics::counter!("billing_leases_expired_total").increment(leases as u64);
            tracing::info!(leases, "released expired credit leases");
        }
    }
    billing::vacuum_balances(&mut conn).await?;
    metrics::gauge!("billing_outbox_size").set(billing::outbox_len(&mut conn).await? as f64);
    let (holds, held) = billing::open_holds(&mut conn).await?;
    metrics::gauge!("billing_holds_open").set(holds as f64);
    // A gauge for dashboards only; money itself never leaves exact decimals.
    metrics::gauge!("billing_holds_open_amount")
        .set(bigdecimal::ToPrimitive::to_f64(&held).unwrap_or(0.0));
    Ok((released, settled))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn without_a_grace_expired_holds_are_released_only_after_two_sweeps_found_the_queue_empty() {
        let mut gate = HoldRelease::default();
        let all = Some(Duration::ZERO);
        assert_eq!(gate.observe(Some(0)), None, "one empty look is not enough");
        assert_eq!(gate.observe(Some(0)), all);
        assert_eq!(gate.observe(Some(0)), all);
        assert_eq!(gate.observe(Some(3)), None, "charges are waiting");
        assert_eq!(gate.observe(Some(0)), None);
        assert_eq!(gate.observe(None), None, "the broker could not tell");
        assert_eq!(gate.observe(Some(0)), None);
        assert_eq!(gate.observe(Some(0)), all);
    }

    #[test]
    fn under_steady_traffic_holds_expired_for_longer_than_the_grace_are_released() {
        let grace = Duration::from_secs(600);
        let mut gate = HoldRelease::with_grace(grace);
        // The queue is never seen empty: only holds expired for longer than the grace go.
        for waiting in [Some(5), Some(1), Some(12), None, Some(0), Some(7)] {
            assert_eq!(gate.observe(waiting), Some(grace), "{waiting:?}");
        }
        // The empty-queue fast path still releases every expired hold.
        assert_eq!(
            gate.observe(Some(0)),
            Some(grace),
            "one empty look is not enough"
        );
        assert_eq!(gate.observe(Some(0)), Some(Duration::ZERO));
        assert_eq!(gate.observe(Some(2)), Some(grace));
    }

    #[test]
    fn an_overrun_is_a_charge_priced_above_its_reservation() {
        let money = |s: &str| Money::parse(s).expect("an amount");
        let settled = |charged: &str, held: &str| Settlement::Settled {
            charged: money(charged),
            held: money(held),
            balance_after: money("1"),
        };
        assert_eq!(overrun(&money("0.3"), &settled("0.3", "0.5")), None);
        assert_eq!(overrun(&money("0.5"), &settled("0.5", "0.5")), None);
        assert_eq!(
            overrun(&money("0.8"), &settled("0.8", "0.5")),
            Some(money("0")),
            "covered by the free balance: an overrun, nothing lost"
        );
        assert_eq!(
            overrun(&money("0.8"), &settled("0.6", "0")),
            Some(money("0.2"))
        );
        assert_eq!(overrun(&money("0.8"), &Settlement::AlreadySettled), None);
    }

    #[test]
    fn a_body_is_acked_only_when_every_charge_settled() {
        use ChargeOutcome::*;
        assert!(matches!(outcome_of(vec![Settled, Settled]), Outcome::Ack));
        assert!(matches!(
            outcome_of(vec![Settled, Failed, Settled]),
            Outcome::Retry(_)
        ));
        match outcome_of(vec![
            Failed,
            Refused("a: bad".into()),
            Refused("b: worse".into()),
        ]) {
            Outcome::DeadLetter(reason) => assert_eq!(reason, "a: bad; b: worse"),
            other => panic!("expected a dead letter, got {other:?}"),
        }
    }
}
