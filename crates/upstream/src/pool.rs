//! Provider keys: weighted picking, cooldown with exponential backoff, and failover across keys.

use std::collections::HashMap;
use std::fmt;
use std::future::Future;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, PoisonError, RwLock};
use std::time::{Duration, Instant};

use crate::error::UpstreamError;
use crate::settings::UpstreamSettings;

/// One key of a provider, as loaded from the database (secret decrypted).
#[derive(Clone, PartialEq, Eq)]
pub struct ProviderKey {
    pub id: i64,
    pub secret: String,
    /// Relative share of picks; 0 = never picked.
    pub weight: u32,
}

impl fmt::Debug for ProviderKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ProviderKey")
            .field("id", &self.id)
            .field("secret", &"<redacted>")
            .field("weight", &self.weight)
            .finish()
    }
}

/// A key chosen for one attempt; cloning it allocates nothing.
#[derive(Clone)]
pub struct PickedKey {
    pub id: i64,
    secret: Arc<str>,
}

impl PickedKey {
    pub fn secret(&self) -> &str {
        &self.secret
    }
}

impl fmt::Debug for PickedKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PickedKey")
            .field("id", &self.id)
            .field("secret", &"<redacted>")
            .finish()
    }
}

/// Health of one key, shared by every copy of the pool's key lists; updated without locks.
#[derive(Debug, Default)]
struct KeyHealth {
    consecutive_failures: AtomicU32,
    /// Milliseconds since the pool's epoch before which the key is not picked.
    cooling_until_ms: AtomicU64,
}

#[derive(Debug)]
struct Slot {
    id: i64,
    secret: Arc<str>,
    weight: u32,
    health: Arc<KeyHealth>,
}

#[derive(Debug, Default)]
struct PoolState {
    providers: HashMap<i64, Arc<[Slot]>>,
    health: HashMap<i64, Arc<KeyHealth>>,
}

/// The keys of every provider, with their health. Picks take a read lock and touch only atomics;
/// the write lock is taken only by [`KeyPool::replace_keys`].
#[derive(Debug)]
pub struct KeyPool {
    epoch: Instant,
    cooldown_base_ms: u64,
    cooldown_max_ms: u64,
    state: RwLock<PoolState>,
}

impl KeyPool {
    pub fn new(settings: &UpstreamSettings) -> Self {
        Self::with_cooldown(settings.cooldown_base(), settings.cooldown_max())
    }

    pub fn with_cooldown(base: Duration, max: Duration) -> Self {
        Self {
            epoch: Instant::now(),
            cooldown_base_ms: duration_ms(base),
            cooldown_max_ms: duration_ms(max),
            state: RwLock::new(PoolState::default()),
        }
    }

    /// Loads or refreshes a provider's keys. A key that keeps its id and secret keeps its health
    /// (a periodic reload does not end cooldowns); an empty list removes the provider.
    pub fn replace_keys(&self, provider_id: i64, keys: Vec<ProviderKey>) {
        let mut state = self.state.write().unwrap_or_else(PoisonError::into_inner);
        let old = state.providers.remove(&provider_id);
        let old_slots: &[Slot] = old.as_deref().unwrap_or(&[]);
        for slot in old_slots {
            state.health.remove(&slot.id);
        }
        let slots: Arc<[Slot]> = keys
            .into_iter()
            .map(|key| {
                let health = old_slots
                    .iter()
                    .find(|slot| slot.id == key.id && *slot.secret == *key.secret)
                    .map(|slot| Arc::clone(&slot.health))
                    .unwrap_or_default();
                state.health.insert(key.id, Arc::clone(&health));
                Slot {
                    id: key.id,
                    secret: Arc::from(key.secret),
                    weight: key.weight,
                    health,
                }
            })
            .collect();
        if !slots.is_empty() {
            state.providers.insert(provider_id, slots);
        }
    }

    /// A weighted random key of the provider that is neither excluded, cooling down, nor weight 0.
    pub fn pick(&self, provider_id: i64, exclude: &[i64]) -> Option<PickedKey> {
        let now = self.now_ms();
        let state = self.state.read().unwrap_or_else(PoisonError::into_inner);
        let slots = state.providers.get(&provider_id)?;
        let eligible = |slot: &&Slot| {
            slot.weight > 0
                && !exclude.contains(&slot.id)
                && slot.health.cooling_until_ms.load(Ordering::Relaxed) <= now
        };
        let total: u64 = slots
            .iter()
            .filter(eligible)
            .map(|slot| u64::from(slot.weight))
            .sum();
        if total == 0 {
            return None;
        }
        let mut point = fastrand::u64(0..total);
        let mut chosen = None;
        for slot in slots.iter().filter(eligible) {
            chosen = Some(slot);
            let weight = u64::from(slot.weight);
            if point < weight {
                break;
            }
            point -= weight;
        }
        // `chosen` is the last eligible key if one started cooling down between the two passes.
        chosen.map(|slot| PickedKey {
            id: slot.id,
            secret: Arc::clone(&slot.secret),
        })
    }

    /// Cools the key down for base × 2^(consecutive failures − 1), capped at the maximum.
    pub fn report_failure(&self, key_id: i64) {
        let Some(health) = self.health(key_id) else {
            return;
        };
        let failures = health
            .consecutive_failures
            .fetch_add(1, Ordering::Relaxed)
            .saturating_add(1);
        let doublings = failures.saturating_sub(1).min(32);
        let cooldown = self
            .cooldown_base_ms
            .saturating_mul(1u64 << doublings)
            .min(self.cooldown_max_ms);
        health
            .cooling_until_ms
            .fetch_max(self.now_ms().saturating_add(cooldown), Ordering::Relaxed);
    }

    /// The key worked: its backoff starts over and any cooldown ends.
    pub fn report_success(&self, key_id: i64) {
        let Some(health) = self.health(key_id) else {
            return;
        };
        if health.consecutive_failures.load(Ordering::Relaxed) != 0 {
            health.consecutive_failures.store(0, Ordering::Relaxed);
            health.cooling_until_ms.store(0, Ordering::Relaxed);
        }
    }

    /// Time left before the key may be picked again; `None` when it is not cooling down (or unknown).
    pub fn cooldown_remaining(&self, key_id: i64) -> Option<Duration> {
        let until = self
            .health(key_id)?
            .cooling_until_ms
            .load(Ordering::Relaxed);
        let now = self.now_ms();
        (until > now).then(|| Duration::from_millis(until - now))
    }

    fn health(&self, key_id: i64) -> Option<Arc<KeyHealth>> {
        let state = self.state.read().unwrap_or_else(PoisonError::into_inner);
        state.health.get(&key_id).cloned()
    }

    fn now_ms(&self) -> u64 {
        duration_ms(self.epoch.elapsed())
    }
}

fn duration_ms(duration: Duration) -> u64 {
    u64::try_from(duration.as_millis()).unwrap_or(u64::MAX)
}

/// Runs `call` with keys of the provider until one succeeds, the error is not the key's fault
/// (returned at once), `max_attempts` keys were tried, or no key is left. Then it returns the last
/// key failure, or [`UpstreamError::NoKeyAvailable`] when no key could be tried at all.
///
/// For a streaming call, `call` should resolve once the upstream answered its headers, so that
/// failover happens before any byte reaches the client.
pub async fn with_failover<T, F, Fut>(
    pool: &KeyPool,
    provider_id: i64,
    max_attempts: u32,
    mut call: F,
) -> Result<T, UpstreamError>
where
    F: FnMut(PickedKey) -> Fut,
    Fut: Future<Output = Result<T, UpstreamError>>,
{
    let provider = provider_id.to_string();
    let attempts = max_attempts.max(1);
    let mut tried: Vec<i64> = Vec::with_capacity(usize::try_from(attempts).unwrap_or(1));
    let mut last_error = None;
    for attempt in 0..attempts {
        let Some(key) = pool.pick(provider_id, &tried) else {
            break;
        };
        if attempt > 0 {
            metrics::counter!("upstream_failovers_total", "provider" => provider.clone())
                .increment(1);
        }
        let key_id = key.id;
        tried.push(key_id);
        let started = Instant::now();
        let result = call(key).await;
        metrics::histogram!("upstream_latency_seconds", "provider" => provider.clone())
            .record(started.elapsed().as_secs_f64());
        let outcome = result
            .as_ref()
            .map_or_else(UpstreamError::outcome, |_| "ok");
        metrics::counter!(
            "upstream_requests_total",
            "provider" => provider.clone(),
            "key" => key_id.to_string(),
            "outcome" => outcome,
        )
        .increment(1);
        match result {
            Ok(value) => {
                pool.report_success(key_id);
                return Ok(value);
            }
            Err(error) if error.is_key_failure() => {
                pool.report_failure(key_id);
                tracing::warn!(provider_id, key_id, error = %error, "provider key failed; cooling it down");
                last_error = Some(error);
            }
            Err(error) => return Err(error),
        }
    }
    Err(last_error.unwrap_or(UpstreamError::NoKeyAvailable))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Mutex;

    fn key(id: i64, weight: u32) -> ProviderKey {
        ProviderKey {
            id,
            secret: format!("sk-{id}"),
            weight,
        }
    }

    fn pool(base_ms: u64, max_ms: u64) -> KeyPool {
        KeyPool::with_cooldown(
            Duration::from_millis(base_ms),
            Duration::from_millis(max_ms),
        )
    }

    #[test]
    fn weights_are_respected() {
        let pool = pool(1000, 1000);
        pool.replace_keys(1, vec![key(10, 3), key(11, 1), key(12, 0)]);
        let mut heavy = 0;
        for _ in 0..4000 {
            match pool.pick(1, &[]).map(|k| k.id) {
                Some(10) => heavy += 1,
                Some(11) => {}
                other => panic!("picked {other:?}"),
            }
        }
        // Expect 3000 (75 %); ±5 % of the picks is over 7 standard deviations.
        assert!(
            (2800..=3200).contains(&heavy),
            "weight-3 key picked {heavy} of 4000 times"
        );
    }

    #[test]
    fn weight_zero_excluded_and_unknown_keys_are_never_picked() {
        let pool = pool(1000, 1000);
        pool.replace_keys(1, vec![key(10, 0), key(11, 1), key(12, 5)]);
        for _ in 0..1000 {
            assert_eq!(pool.pick(1, &[12]).map(|k| k.id), Some(11));
        }
        assert!(pool.pick(1, &[11, 12]).is_none());
        assert!(pool.pick(2, &[]).is_none());
        pool.replace_keys(1, vec![key(10, 0)]);
        assert!(pool.pick(1, &[]).is_none());
        pool.replace_keys(1, vec![]);
        assert!(pool.pick(1, &[]).is_none());
    }

    #[test]
    fn cooldown_backs_off_exponentially_up_to_the_cap_and_success_resets_it() {
        let pool = pool(1_000, 5_000);
        pool.replace_keys(1, vec![key(10, 1)]);
        let within = |expected_ms: u64| {
            let left = pool.cooldown_remaining(10).expect("cooling");
            let left = duration_ms(left);
            assert!(
                left <= expected_ms && left + 200 >= expected_ms,
                "{left} ms left, expected {expected_ms}"
            );
        };
        pool.report_failure(10);
        within(1_000);
        pool.report_failure(10);
        within(2_000);
        pool.report_failure(10);
        within(4_000);
        pool.report_failure(10);
        within(5_000);
        assert!(pool.pick(1, &[]).is_none());
        pool.report_success(10);
        assert_eq!(pool.cooldown_remaining(10), None);
        assert_eq!(pool.pick(1, &[]).map(|k| k.id), Some(10));
        pool.report_failure(10);
        within(1_000);
    }

    #[test]
    fn a_reload_keeps_cooldowns_unless_the_secret_changed() {
        let pool = pool(60_000, 60_000);
        pool.replace_keys(1, vec![key(10, 1), key(11, 1)]);
        pool.report_failure(10);
        pool.report_failure(11);
        pool.replace_keys(
            1,
            vec![
                key(10, 1),
                ProviderKey {
                    id: 11,
                    secret: "sk-rotated".into(),
                    weight: 1,
                },
            ],
        );
        assert!(pool.cooldown_remaining(10).is_some());
        assert_eq!(pool.cooldown_remaining(11), None);
        let picked = pool.pick(1, &[]).expect("key 11");
        assert_eq!((picked.id, picked.secret()), (11, "sk-rotated"));
    }

    #[tokio::test]
    async fn failover_gives_up_with_the_last_error_or_no_key() {
        let pool = pool(60_000, 60_000);
        pool.replace_keys(1, vec![key(10, 1), key(11, 1), key(12, 1)]);
        let tried = Mutex::new(Vec::new());
        let result: Result<(), _> = with_failover(&pool, 1, 2, |key| {
            tried.lock().expect("lock").push(key.id);
            async { Err(UpstreamError::Server { status: 503 }) }
        })
        .await;
        assert!(matches!(result, Err(UpstreamError::Server { status: 503 })));
        let tried = tried.into_inner().expect("lock");
        assert_eq!(tried.len(), 2, "max_attempts bounds the keys tried");
        assert_ne!(tried[0], tried[1], "a key is not retried in the same call");

        // The third key is the only one left; when it fails too, nothing is left to pick.
        let result: Result<(), _> =
            with_failover(&pool, 1, 5, |_| async { Err(UpstreamError::RateLimited) }).await;
        assert!(matches!(result, Err(UpstreamError::RateLimited)));
        let result: Result<(), _> = with_failover(&pool, 1, 5, |_| async { Ok(()) }).await;
        assert!(matches!(result, Err(UpstreamError::NoKeyAvailable)));
        assert_eq!(UpstreamError::NoKeyAvailable.http_status_for_client(), 503);
    }

    #[tokio::test]
    async fn non_key_failures_return_at_once_without_cooldown() {
        let pool = pool(60_000, 60_000);
        pool.replace_keys(1, vec![key(10, 1), key(11, 1)]);
        let mut calls = 0;
        let result: Result<(), _> = with_failover(&pool, 1, 3, |_| {
            calls += 1;
            async {
                Err(UpstreamError::BadRequest {
                    status: 400,
                    body: "no".into(),
                })
            }
        })
        .await;
        assert!(matches!(
            result,
            Err(UpstreamError::BadRequest { status: 400, .. })
        ));
        assert_eq!(calls, 1);
        assert_eq!(pool.cooldown_remaining(10), None);
        assert_eq!(pool.cooldown_remaining(11), None);
    }
}
