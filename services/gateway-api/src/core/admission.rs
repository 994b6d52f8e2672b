//! Admission of model calls, the one place that decides whether a call may start and what
//! reserves its maximum cost: this process's credit lease of the user, in memory, when it has
//! one that covers the call; else a hold of the call's own (one conditional statement, batched
//! with the holds of calls arriving meanwhile).
//!
//! Leases (see `persistence::leases` and `domain::LeaseAccount`): a user who keeps calling gets
//! a slice of the free balance reserved for this process, sized from the user's recent demand
//! and capped at `calls.lease_max_percent` of what is free; the process admits calls against it
//! without Postgres, tops it up before it runs dry, renews it while it is used, and gives the
//! unused part back when the user goes idle and on shutdown. A lease's row counts in the
//! user's `held` like a hold, so holds plus leases never exceed the balance. A lease that its
//! process stopped renewing (a crash) is released by billing-worker's sweeper after it expired,
//! by when every call admitted against it has ended (calls end by their deadline, which the
//! lease's validity leaves room for) and its charge is durable.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError, Weak};
use std::time::Duration;

use chrono::Datelike;
use domain::{LeaseAccount, Money};
use persistence::Pool;
use persistence::leases::LeaseRequest;
use persistence::limits::{Capped, Period, Reserve, SpendCap};
use tokio::time::Instant;
use uuid::Uuid;

use crate::core::limits::{Ask, CallerLimits, Permit};
use crate::error::{ApiError, Limited};
use crate::state::{AppState, Background, CallPath};

/// What reserves an admitted call's maximum cost.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reservation {
    /// A hold of its own, found by the call's request id.
    Hold,
    /// This process's lease of the user.
    Lease(Uuid),
}

/// An admitted call's reservation and what it took of the limits: released when the call
/// fails, finished when it is billed.
#[derive(Debug)]
pub struct Admission {
    pub user_id: i64,
    pub request_id: Uuid,
    pub reservation: Reservation,
    /// The maximum cost reserved.
    pub reserved: Money,
    permit: Mutex<Permit>,
}

/// Admits a call that may cost up to `max_cost`, or refuses it with nothing reserved or taken:
/// 429 over a rate, concurrency or spend limit (see `core::limits`), 402 when the balance
/// does not cover it. Under a spend limit the call gets an exact hold of its own, checked
/// against the limit; else this process's lease of the user when it covers the call; else a
/// hold.
pub async fn admit(
    state: &AppState,
    call_path: &CallPath,
    limits: &CallerLimits,
    ask: &Ask,
    request_id: Uuid,
    max_cost: &Money,
) -> Result<Admission, ApiError> {
    let mut permit = state.limits.admit(ask, limits).await?;
    match reserve(state, call_path, limits, ask, request_id, max_cost).await {
        Ok(reservation) => Ok(Admission {
            user_id: ask.user_id,
            request_id,
            reservation,
            reserved: max_cost.clone(),
            permit: Mutex::new(permit),
        }),
        Err(error) => {
            permit.give_back();
            Err(error)
        }
    }
}

async fn reserve(
    state: &AppState,
    call_path: &CallPath,
    limits: &CallerLimits,
    ask: &Ask,
    request_id: Uuid,
    max_cost: &Money,
) -> Result<Reservation, ApiError> {
    let short = || {
        ApiError::InsufficientBalance(format!(
            "this call may cost up to {max_cost}; top up or lower max_tokens"
        ))
    };
    let caps = state.limits.spend_caps(ask, limits);
    if !caps.is_empty() {
        let mut conn = call_path
            .reservations
            .get()
            .await
            .map_err(persistence::StoreError::from)?;
        let capped = persistence::limits::reserve_capped(
            &mut conn,
            ask.user_id,
            Some(ask.key_id),
            request_id,
            max_cost,
            &caps,
            Reserve::Hold {
                ttl_seconds: state.hold_ttl_seconds,
            },
        )
        .await?;
        return match capped {
            Capped::Reserved => Ok(Reservation::Hold),
            Capped::Balance => Err(short()),
            Capped::Spend(cap) => Err(spend_refusal(&cap, max_cost)),
        };
    }
    if let Some(lease) = state.leases.admit(ask.user_id, max_cost) {
        return Ok(Reservation::Lease(lease));
    }
    let held = call_path
        .holds
        .call(persistence::billing::HoldRequest {
            user_id: ask.user_id,
            request_id,
            amount: max_cost.clone(),
        })
        .await?;
    match held {
        Some(_) => Ok(Reservation::Hold),
        None => Err(short()),
    }
}

/// The 429 of a spend limit that `amount` more would pass.
pub fn spend_refusal(cap: &SpendCap, amount: &Money) -> ApiError {
    let now = chrono::Utc::now();
    let retry_after = match cap.period {
        Period::Total => None,
        Period::Day => {
            let next = (now.date_naive() + chrono::Days::new(1)).and_time(chrono::NaiveTime::MIN);
            Some((next.and_utc() - now).num_seconds().max(1) as u64)
        }
        Period::Month => {
            let first = now.date_naive().with_day(1).unwrap_or(now.date_naive());
            let next = first
                .checked_add_months(chrono::Months::new(1))
                .unwrap_or(first)
                .and_time(chrono::NaiveTime::MIN);
            Some((next.and_utc() - now).num_seconds().max(1) as u64)
        }
    };
    ApiError::Limited(Box::new(Limited::spend(
        format!(
            "this {} has a spend limit of {} per {}; this call may cost up to {amount}, which \
             would pass it",
            cap.scope.as_str(),
            cap.limit,
            match cap.period {
                Period::Total => "lifetime",
                Period::Day => "day (UTC)",
                Period::Month => "month (UTC)",
            }
        ),
        retry_after,
    )))
}

impl Admission {
    fn permit(&self) -> MutexGuard<'_, Permit> {
        self.permit.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The call failed (or its charge could not be kept): it costs nothing, and what it took
    /// of the rate limits is given back.
    pub async fn release(&self, state: &AppState, reservations: &Pool) {
        self.permit().give_back();
        match self.reservation {
            Reservation::Hold => {
                crate::core::billing::release(reservations, self.request_id).await;
            }
            Reservation::Lease(lease) => {
                state
                    .leases
                    .finish(self.user_id, lease, &self.reserved, &Money::zero());
            }
        }
    }

    /// The call's charge of `cost` is durable: settlement will take it from the reservation.
    /// `tokens` (prompt and completion) correct the token limits' estimate.
    pub fn billed(&self, state: &AppState, cost: &Money, tokens: u64) {
        self.permit().used_tokens(tokens);
        if let Reservation::Lease(lease) = self.reservation {
            state
                .leases
                .finish(self.user_id, lease, &self.reserved, cost);
        }
    }
}

/// How leases are sized and kept (`calls.lease_*`).
#[derive(Debug, Clone)]
pub struct LeaseSettings {
    /// A lease takes at most this share of the user's free balance; 0 turns leases off.
    pub max_percent: u32,
    /// A lease is granted only if it covers at least this many calls like the one asking.
    pub min_calls: u32,
    /// Demand is measured over windows of this length; a lease covers about two of them.
    pub horizon: Duration,
    /// A lease unused this long is given back.
    pub idle: Duration,
    /// The lease row's lifetime, renewed while it is used (`calls.hold_ttl_seconds`).
    pub ttl_seconds: i64,
    /// How long after its last renewal this process may admit against a lease: the row's
    /// lifetime minus the longest call, so every call admitted ends before the row expires.
    pub valid_for: Duration,
}

/// Calls of a user within one demand window before a lease is asked for.
const CALLS_BEFORE_LEASE: u32 = 4;
/// After a refused grant or top-up, how long before the next attempt for that user.
const GRANT_BACKOFF: Duration = Duration::from_secs(1);

/// This process's leases, one per user at most.
pub struct Leases {
    holder: Uuid,
    pool: Pool,
    settings: LeaseSettings,
    users: Mutex<HashMap<i64, UserLease>>,
    background: Background,
    /// To hand the background tasks a handle to `self`.
    me: Weak<Leases>,
}

#[derive(Default)]
struct UserLease {
    lease: Option<OpenLease>,
    /// A grant, top-up or give-back is running.
    busy: bool,
    /// No grant before this (the last one was refused).
    retry_after: Option<Instant>,
    demand: Demand,
    last_used: Option<Instant>,
}

struct OpenLease {
    id: Uuid,
    account: LeaseAccount,
    valid_until: Instant,
}

/// Reserved amounts admitted per window: this window's and the last full one's.
#[derive(Default)]
struct Demand {
    window_start: Option<Instant>,
    current: i128,
    calls: u32,
    previous: i128,
}

impl Demand {
    fn record(&mut self, now: Instant, horizon: Duration, units: i128) {
        match self.window_start {
            Some(start) if now.duration_since(start) < horizon => {}
            Some(start) if now.duration_since(start) < horizon * 2 => {
                self.previous = self.current;
                self.window_start = Some(now);
                self.current = 0;
                self.calls = 0;
            }
            _ => {
                self.previous = 0;
                self.window_start = Some(now);
                self.current = 0;
                self.calls = 0;
            }
        }
        self.current = self.current.saturating_add(units);
        self.calls = self.calls.saturating_add(1);
    }

    /// What a lease should hold: about two windows of the recent demand.
    fn wanted(&self) -> i128 {
        self.current.max(self.previous).saturating_mul(2)
    }
}

fn units_money(units: i128) -> Money {
    Money::from_units(units.max(0)).unwrap_or_else(|_| Money::max_value())
}

impl Leases {
    pub fn new(
        pool: Pool,
        settings: LeaseSettings,
        background: Background,
        holder: Uuid,
    ) -> Arc<Leases> {
        Arc::new_cyclic(|me| Leases {
            holder,
            pool,
            settings,
            users: Mutex::new(HashMap::new()),
            background,
            me: me.clone(),
        })
    }

    fn users(&self) -> MutexGuard<'_, HashMap<i64, UserLease>> {
        self.users.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Admits a call against the user's lease if it covers `max_cost`; asks for a lease, or a
    /// top-up, in the background when the user's demand calls for it.
    pub fn admit(&self, user_id: i64, max_cost: &Money) -> Option<Uuid> {
        if self.settings.max_percent == 0 {
            return None;
        }
        let now = Instant::now();
        let units = max_cost.units();
        let mut users = self.users();
        let user = users.entry(user_id).or_default();
        user.demand.record(now, self.settings.horizon, units);
        user.last_used = Some(now);
        let wanted = user
            .demand
            .wanted()
            .max(units.saturating_mul(i128::from(self.settings.min_calls)));
        let admitted = user
            .lease
            .as_mut()
            .filter(|open| now < open.valid_until)
            .and_then(|open| open.account.admit(units).then_some(open.id));
        if !user.busy && user.retry_after.is_none_or(|t| now >= t) {
            let action = match &user.lease {
                Some(open) if open.account.available() < wanted / 2 => {
                    let add = wanted - open.account.available().max(0);
                    Some(Grant::TopUp(open.id, add))
                }
                Some(_) => None,
                None if user.demand.calls >= CALLS_BEFORE_LEASE => Some(Grant::New(wanted)),
                None => None,
            };
            if let Some(action) = action {
                user.busy = true;
                let minimum = match action {
                    Grant::New(_) => units.saturating_mul(i128::from(self.settings.min_calls)),
                    Grant::TopUp(..) => units,
                };
                self.spawn_grant(user_id, action, minimum);
            }
        }
        admitted
    }

    /// A call admitted against `lease` with `reserved` ended; `cost` is what its settlement
    /// takes from the lease (zero for a failed call).
    pub fn finish(&self, user_id: i64, lease: Uuid, reserved: &Money, cost: &Money) {
        let mut users = self.users();
        if let Some(open) = users
            .get_mut(&user_id)
            .and_then(|u| u.lease.as_mut())
            .filter(|open| open.id == lease)
        {
            open.account.finish(reserved.units(), cost.units());
        }
    }

    fn spawn_grant(&self, user_id: i64, action: Grant, minimum: i128) {
        let Some(me) = self.me.upgrade() else { return };
        self.background.spawn(async move {
            me.grant(user_id, action, minimum).await;
        });
    }

    async fn grant(&self, user_id: i64, action: Grant, minimum: i128) {
        let desired = match action {
            Grant::New(units) | Grant::TopUp(_, units) => units,
        };
        let request = LeaseRequest {
            user_id,
            desired: units_money(desired),
            minimum: units_money(minimum),
            max_percent: self.settings.max_percent,
            ttl_seconds: self.settings.ttl_seconds,
        };
        let started = Instant::now();
        let granted = match self.pool.get().await {
            Ok(mut conn) => match action {
                Grant::New(_) => {
                    let id = Uuid::new_v4();
                    persistence::leases::grant(&mut conn, id, self.holder, &request)
                        .await
                        .map(|amount| amount.map(|amount| (id, amount)))
                }
                Grant::TopUp(id, _) => persistence::leases::top_up(&mut conn, id, &request)
                    .await
                    .map(|amount| amount.map(|amount| (id, amount))),
            },
            Err(error) => Err(persistence::StoreError::from(error)),
        };
        let mut users = self.users();
        let user = users.entry(user_id).or_default();
        user.busy = false;
        match granted {
            Ok(Some((id, amount))) => {
                let kind = if matches!(action, Grant::New(_)) {
                    "grant"
                } else {
                    "top_up"
                };
                metrics::counter!("leases_total", "kind" => kind).increment(1);
                user.retry_after = None;
                let valid_until = started + self.settings.valid_for;
                match &mut user.lease {
                    Some(open) if open.id == id => {
                        open.account.top_up(amount.units());
                        open.valid_until = valid_until;
                    }
                    _ => {
                        user.lease = Some(OpenLease {
                            id,
                            account: LeaseAccount::new(amount.units()),
                            valid_until,
                        })
                    }
                }
            }
            Ok(None) => {
                metrics::counter!("leases_refused_total").increment(1);
                user.retry_after = Some(Instant::now() + GRANT_BACKOFF);
            }
            Err(error) => {
                tracing::warn!(%error, user_id, "lease grant failed; calls use holds");
                user.retry_after = Some(Instant::now() + GRANT_BACKOFF);
            }
        }
    }

    /// Renews the leases in use and gives back those whose user went idle (all of them with
    /// `everything`, at shutdown, once no call is in flight). Runs every second.
    pub async fn maintain(&self, everything: bool) {
        let now = Instant::now();
        let mut idle: Vec<(i64, Uuid, i128)> = Vec::new();
        let mut renew: Vec<Uuid> = Vec::new();
        {
            let mut users = self.users();
            users.retain(|user_id, user| {
                let quiet = user
                    .last_used
                    .is_none_or(|t| now.duration_since(t) >= self.settings.idle);
                match &mut user.lease {
                    Some(open)
                        if (quiet || everything) && open.account.calls() == 0 && !user.busy =>
                    {
                        idle.push((*user_id, open.id, open.account.take_unused()));
                        user.lease = None;
                    }
                    Some(open) => renew.push(open.id),
                    None => {}
                }
                // Forget users who went quiet and hold nothing.
                user.lease.is_some() || user.busy || !quiet
            });
        }
        if idle.is_empty() && renew.is_empty() {
            return;
        }
        let mut conn = match self.pool.get().await {
            Ok(conn) => conn,
            Err(error) => {
                // Unreturned leases stay reserved until they expire; nothing is lost.
                tracing::warn!(%error, "lease upkeep skipped: no connection");
                return;
            }
        };
        for (user_id, lease, unused) in idle {
            match persistence::leases::give_back(&mut conn, lease, &units_money(unused)).await {
                Ok(_) => metrics::counter!("leases_total", "kind" => "give_back").increment(1),
                Err(error) => {
                    tracing::warn!(%error, user_id, %lease, "giving a lease back failed; it expires")
                }
            }
        }
        if renew.is_empty() {
            return;
        }
        let started = Instant::now();
        match persistence::leases::renew(&mut conn, &renew, self.settings.ttl_seconds).await {
            Ok(_) => {
                let valid_until = started + self.settings.valid_for;
                let mut users = self.users();
                for user in users.values_mut() {
                    if let Some(open) = user.lease.as_mut().filter(|o| renew.contains(&o.id)) {
                        open.valid_until = valid_until;
                    }
                }
            }
            // The leases stop admitting at their `valid_until`; calls then use holds.
            Err(error) => tracing::warn!(%error, "renewing leases failed"),
        }
    }
}

#[derive(Debug, Clone, Copy)]
enum Grant {
    /// A new lease of about this many units.
    New(i128),
    /// Add about this many units to this lease.
    TopUp(Uuid, i128),
}

/// Keeps this process's leases renewed and returns idle ones, every second, until `leases`
/// is gone.
pub fn spawn_upkeep(leases: &Arc<Leases>) {
    let leases = Arc::downgrade(leases);
    tokio::spawn(async move {
        let mut ticks = tokio::time::interval(Duration::from_secs(1));
        loop {
            ticks.tick().await;
            let Some(leases) = leases.upgrade() else {
                break;
            };
            leases.maintain(false).await;
        }
    });
}
