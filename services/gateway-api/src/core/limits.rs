//! Rate, concurrency and spend limits of access keys, users and models (docs/LIMITS.md).
//!
//! - **Requests and tokens per minute** count in calendar minutes (UTC) shared by every
//!   replica: a replica borrows a slice of a subject's minute from Postgres (one conditional
//!   statement, `persistence::limits::borrow_rate`) and admits against it in memory, the way it
//!   admits against a credit lease. The slices of all replicas never add up to more than the
//!   limit, so together they never admit more in a minute. A slice is at most 1/16 of the
//!   limit; below 64 a replica borrows exactly what each call needs. What a replica borrowed
//!   and did not use is lost at the end of the minute (so a limit may admit a little less than
//!   it allows, never more), and so is what a killed replica held.
//! - **Tokens** are counted at admission from the hold's estimate and corrected by the call's
//!   real usage in the replica's slice.
//! - **Concurrency**: one row per call in flight (`acquire_slot`), exact across replicas; the
//!   row of a call whose process died stops counting at the call's deadline.
//! - **Spend**: an admission under a spend limit is exact, a hold of its own checked against
//!   what was charged in the period plus what is reserved (`reserve_capped`), never a lease.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError, RwLock};

use chrono::{DateTime, TimeZone, Utc};
use persistence::Pool;
use persistence::limits::{LimitValues, Scope, SpendCap, Unit};
use uuid::Uuid;

use crate::error::{ApiError, Limited};

/// Below this limit a replica borrows exactly what each call needs.
const EXACT_BELOW: i64 = 64;
/// A slice is at most this fraction of the limit.
const SLICE_DIVISOR: i64 = 16;

/// The stored limits of a caller: its key's (before the platform default) and its user's.
#[derive(Debug, Clone, Default)]
pub struct CallerLimits {
    pub key: LimitValues,
    pub user: LimitValues,
}

/// What a call or job asks of the limits.
#[derive(Debug, Clone, Copy)]
pub struct Ask {
    pub user_id: i64,
    pub key_id: i64,
    pub model_id: i64,
    /// Tokens estimated at admission (0 for jobs).
    pub tokens: u64,
    /// When the call ends at the latest (its concurrency slots stop counting then).
    pub deadline: DateTime<Utc>,
}

#[derive(Debug, Default)]
struct Shared {
    platform: LimitValues,
    models: HashMap<i64, LimitValues>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
struct WindowKey {
    scope: Scope,
    subject: i64,
    unit: Unit,
}

/// This replica's slice of one subject's current minute.
#[derive(Debug, Default)]
struct Slice {
    minute: i64,
    /// Borrowed and not yet used here; below zero when real usage exceeded the estimates.
    remaining: i64,
    /// What all replicas had borrowed of the minute at this replica's last borrow.
    used_everywhere: i64,
}

pub struct Limits {
    pool: Pool,
    shared: RwLock<Shared>,
    slices: Mutex<HashMap<WindowKey, Slice>>,
    last_cleanup: Mutex<Option<std::time::Instant>>,
}

fn minute_of(now: DateTime<Utc>) -> i64 {
    now.timestamp().div_euclid(60)
}

fn seconds_left(now: DateTime<Utc>) -> u64 {
    (60 - now.timestamp().rem_euclid(60)).clamp(1, 60) as u64
}

impl Limits {
    pub fn new(pool: Pool) -> Limits {
        Limits {
            pool,
            shared: RwLock::new(Shared::default()),
            slices: Mutex::new(HashMap::new()),
            last_cleanup: Mutex::new(None),
        }
    }

    /// Reloads the platform default and the models' limits (with the routes: after an admin
    /// change and periodically), and about once a minute forgets past windows and slots.
    pub async fn reload(&self) -> Result<(), persistence::StoreError> {
        let mut conn = self.pool.get().await?;
        let rows = persistence::limits::load_shared(&mut conn).await?;
        let mut shared = Shared::default();
        for (scope, subject, values) in rows {
            match scope {
                Scope::Platform => shared.platform = values,
                Scope::Model => {
                    shared.models.insert(subject, values);
                }
                Scope::Key | Scope::User => {}
            }
        }
        *self.shared.write().unwrap_or_else(PoisonError::into_inner) = shared;
        let cleanup_due = {
            let mut last = self
                .last_cleanup
                .lock()
                .unwrap_or_else(PoisonError::into_inner);
            let due = last.is_none_or(|at| at.elapsed() >= std::time::Duration::from_secs(60));
            if due {
                *last = Some(std::time::Instant::now());
            }
            due
        };
        if cleanup_due {
            persistence::limits::forget_old(&mut conn).await?;
        }
        Ok(())
    }

    /// The platform default (every key without a value of its own takes it).
    pub fn platform(&self) -> LimitValues {
        self.shared
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .platform
            .clone()
    }

    /// The limits that apply to `ask`, by subject.
    fn applying(&self, ask: &Ask, caller: &CallerLimits) -> Vec<(Scope, i64, LimitValues)> {
        let shared = self.shared.read().unwrap_or_else(PoisonError::into_inner);
        let mut applying = vec![
            (Scope::Key, ask.key_id, caller.key.or(&shared.platform)),
            (Scope::User, ask.user_id, caller.user.clone()),
        ];
        if let Some(model) = shared.models.get(&ask.model_id) {
            applying.push((Scope::Model, ask.model_id, model.clone()));
        }
        applying
    }

    /// The spend limits an admission for `ask` must respect (empty: none, leases may serve).
    pub fn spend_caps(&self, ask: &Ask, caller: &CallerLimits) -> Vec<SpendCap> {
        self.applying(ask, caller)
            .into_iter()
            .filter_map(|(scope, subject, values)| {
                Some(SpendCap {
                    scope,
                    subject,
                    limit: values.spend_limit?,
                    period: values.spend_limit_period,
                })
            })
            .collect()
    }

    /// The most jobs a user may have pending (the user's own value, else the platform's).
    pub fn max_pending_jobs(&self, caller: &CallerLimits) -> Option<i32> {
        caller
            .user
            .max_pending_jobs
            .or(self.platform().max_pending_jobs)
    }

    /// Takes what `ask` needs of every rate and concurrency limit that applies, or refuses it
    /// (429) with nothing taken.
    pub async fn admit(
        self: &Arc<Self>,
        ask: &Ask,
        caller: &CallerLimits,
    ) -> Result<Permit, ApiError> {
        let mut permit = Permit {
            limits: Arc::clone(self),
            taken: Vec::new(),
            slots: Vec::new(),
            tokens: i64::try_from(ask.tokens).unwrap_or(i64::MAX),
        };
        let applying = self.applying(ask, caller);
        for (scope, subject, values) in &applying {
            let wants = [
                (Unit::Requests, values.rpm_limit.map(i64::from), 1),
                (Unit::Tokens, values.tpm_limit, permit.tokens),
            ];
            for (unit, limit, need) in wants {
                let Some(limit) = limit else { continue };
                let key = WindowKey {
                    scope: *scope,
                    subject: *subject,
                    unit,
                };
                match self.take(key, need, limit).await {
                    Ok(minute) => permit.taken.push((key, minute, need)),
                    Err(refusal) => {
                        permit.give_back();
                        return Err(refusal);
                    }
                }
            }
        }
        for (scope, subject, values) in &applying {
            let Some(limit) = values.max_concurrency else {
                continue;
            };
            let id = Uuid::new_v4();
            let acquired = match self.pool.get().await {
                Ok(mut conn) => {
                    persistence::limits::acquire_slot(
                        &mut conn,
                        *scope,
                        *subject,
                        limit,
                        id,
                        ask.deadline,
                    )
                    .await
                }
                Err(error) => Err(persistence::StoreError::from(error)),
            };
            match acquired {
                Ok(true) => permit.slots.push(id),
                Ok(false) => {
                    permit.give_back();
                    return Err(ApiError::Limited(Box::new(Limited::rate(
                        format!(
                            "this {} already has {limit} calls in flight (max_concurrency); \
                             retry when one ends",
                            scope.as_str()
                        ),
                        1,
                        Vec::new(),
                    ))));
                }
                Err(error) => {
                    permit.give_back();
                    return Err(error.into());
                }
            }
        }
        Ok(permit)
    }

    /// Takes `need` of a window, borrowing a slice when this replica's is short; answers the
    /// minute taken from.
    async fn take(&self, key: WindowKey, need: i64, limit: i64) -> Result<i64, ApiError> {
        let now = Utc::now();
        let minute = minute_of(now);
        if need > limit {
            // No minute can ever admit it: say so rather than invite retries.
            return Err(ApiError::Limited(Box::new(Limited::rate(
                format!(
                    "this call may use up to {need} tokens, more than this {}'s tpm_limit of \
                     {limit}; lower max_tokens or shorten the prompt",
                    key.scope.as_str()
                ),
                seconds_left(now),
                Vec::new(),
            ))));
        }
        let short = {
            let mut slices = self.slices.lock().unwrap_or_else(PoisonError::into_inner);
            let slice = slices.entry(key).or_default();
            if slice.minute != minute {
                *slice = Slice {
                    minute,
                    ..Slice::default()
                };
            }
            if slice.remaining >= need {
                slice.remaining -= need;
                return Ok(minute);
            }
            need - slice.remaining
        };
        let want = if limit < EXACT_BELOW {
            short
        } else {
            short.max((limit / SLICE_DIVISOR).min(need.saturating_mul(8)))
        };
        let window = Utc
            .timestamp_opt(minute * 60, 0)
            .single()
            .ok_or_else(|| ApiError::Internal("a minute out of range".to_owned()))?;
        let mut conn = self
            .pool
            .get()
            .await
            .map_err(persistence::StoreError::from)?;
        let borrowed = persistence::limits::borrow_rate(
            &mut conn,
            key.scope,
            key.subject,
            key.unit,
            window,
            short,
            want,
            limit,
        )
        .await?;
        let mut slices = self.slices.lock().unwrap_or_else(PoisonError::into_inner);
        let slice = slices.entry(key).or_default();
        if slice.minute != minute {
            *slice = Slice {
                minute,
                ..Slice::default()
            };
        }
        slice.used_everywhere = borrowed.used;
        if borrowed.granted == 0 {
            return Err(refusal(key, limit, borrowed.used, now));
        }
        slice.remaining += borrowed.granted - need;
        Ok(minute)
    }

    /// Returns `amount` to this replica's slice of `minute` (gone if the minute is over).
    fn give(&self, key: WindowKey, minute: i64, amount: i64) {
        let mut slices = self.slices.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(slice) = slices.get_mut(&key)
            && slice.minute == minute
        {
            slice.remaining += amount;
        }
    }

    fn release_slots(&self, slots: Vec<Uuid>) {
        if slots.is_empty() {
            return;
        }
        let pool = self.pool.clone();
        let release = async move {
            let released = match pool.get().await {
                Ok(mut conn) => persistence::limits::release_slots(&mut conn, &slots).await,
                Err(error) => Err(persistence::StoreError::from(error)),
            };
            if let Err(error) = released {
                // They stop counting at the call's deadline.
                tracing::warn!(%error, "releasing concurrency slots failed");
            }
        };
        match tokio::runtime::Handle::try_current() {
            Ok(runtime) => {
                runtime.spawn(release);
            }
            Err(_) => tracing::warn!("no runtime to release concurrency slots on"),
        }
    }
}

fn refusal(key: WindowKey, limit: i64, used: i64, now: DateTime<Utc>) -> ApiError {
    let reset = seconds_left(now);
    let unit = match key.unit {
        Unit::Requests => "requests",
        Unit::Tokens => "tokens",
    };
    let headers = vec![
        (format!("x-ratelimit-limit-{unit}"), limit.to_string()),
        (
            format!("x-ratelimit-remaining-{unit}"),
            (limit - used).max(0).to_string(),
        ),
        (format!("x-ratelimit-reset-{unit}"), format!("{reset}s")),
    ];
    let what = match key.unit {
        Unit::Requests => "rpm_limit",
        Unit::Tokens => "tpm_limit",
    };
    ApiError::Limited(Box::new(Limited::rate(
        format!(
            "this {} reached its {what} of {limit} {unit} per minute; retry in {reset}s",
            key.scope.as_str()
        ),
        reset,
        headers,
    )))
}

/// What an admitted call took of the limits. Its concurrency slots are released when it is
/// dropped (the call is over); its requests and tokens stay counted, corrected by
/// [`Permit::used_tokens`], unless the call is refused after all ([`Permit::give_back`]).
pub struct Permit {
    limits: Arc<Limits>,
    taken: Vec<(WindowKey, i64, i64)>,
    slots: Vec<Uuid>,
    /// The tokens estimated at admission.
    tokens: i64,
}

impl std::fmt::Debug for Permit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Permit")
            .field("taken", &self.taken.len())
            .field("slots", &self.slots.len())
            .finish()
    }
}

impl Permit {
    /// The call did not happen (refused later, or it failed before the provider took it):
    /// what it took is given back.
    pub fn give_back(&mut self) {
        for (key, minute, amount) in std::mem::take(&mut self.taken) {
            self.limits.give(key, minute, amount);
        }
        self.limits.release_slots(std::mem::take(&mut self.slots));
    }

    /// The call used `tokens` in fact: the token windows are corrected by the difference from
    /// the estimate (in this replica's slice of the minute it was admitted in).
    pub fn used_tokens(&mut self, tokens: u64) {
        let used = i64::try_from(tokens).unwrap_or(i64::MAX);
        let estimate = self.tokens;
        for (key, minute, amount) in &mut self.taken {
            if key.unit == Unit::Tokens {
                self.limits.give(*key, *minute, estimate - used);
                *amount = used;
            }
        }
        self.tokens = used;
    }
}

impl Drop for Permit {
    fn drop(&mut self) {
        self.limits.release_slots(std::mem::take(&mut self.slots));
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn the_reset_counts_to_the_next_minute() {
        let at = Utc.timestamp_opt(120, 0).single().unwrap();
        assert_eq!(seconds_left(at), 60);
        let at = Utc.timestamp_opt(179, 0).single().unwrap();
        assert_eq!(seconds_left(at), 1);
        assert_eq!(minute_of(at), 2);
    }

    #[test]
    fn a_key_without_values_takes_the_platform_default() {
        let platform = LimitValues {
            rpm_limit: Some(10),
            spend_limit: Some(domain::Money::parse("5").unwrap()),
            spend_limit_period: persistence::limits::Period::Day,
            ..LimitValues::default()
        };
        let own = LimitValues {
            rpm_limit: Some(3),
            ..LimitValues::default()
        };
        let merged = own.or(&platform);
        assert_eq!(merged.rpm_limit, Some(3));
        assert_eq!(merged.spend_limit, platform.spend_limit);
        assert_eq!(merged.spend_limit_period, persistence::limits::Period::Day);
    }
}
