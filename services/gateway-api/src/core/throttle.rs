//! Defences against hostile clients on the anonymous routes: attempt throttles with
//! exponential backoff (failed logins per account and per address, registrations per address),
//! the cap on password hashes running at once, and the client address behind trusted proxies.
//!
//! Failed sign-ins per account are counted in Postgres, so every replica sees the same count
//! and a restart forgets nothing. The per-address throttles (sign-ins and registrations) live in
//! this process's memory: each replica counts on its own (an address spread over N replicas
//! gets N times its free attempts) and a restart forgets them. docs/SECURITY.md states why.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use actix_web::HttpRequest;
use ipnet::IpNet;

use persistence::AsyncPgConnection;
use persistence::login_failures::{self, Attempts};

use crate::error::{ApiError, Limited};
use crate::settings::AbuseSettings;

/// The backoff rule of every throttle: the `free`-th attempt on a key and each one after it (the
/// n-th) block the key for `base * 2^(n - free)`, at most `max`; a key left alone for
/// `forget_after` starts over. Written once, for the throttles in memory ([`Throttle`]) and the
/// one in Postgres ([`SharedThrottle`]).
#[derive(Debug, Clone, Copy)]
pub struct Backoff {
    free: u32,
    base: Duration,
    max: Duration,
    forget_after: Duration,
}

impl Backoff {
    pub fn new(free: u32, base: Duration, max: Duration, forget_after: Duration) -> Backoff {
        Backoff {
            free,
            base,
            max,
            forget_after,
        }
    }

    /// The key's record after one more attempt at `now`; `Err(wait)` while the key is blocked,
    /// and then nothing is counted.
    pub fn next(&self, before: Option<Attempts>, now: u64) -> Result<Attempts, Duration> {
        let mut count = 0;
        if let Some(before) = before {
            if let Some(until) = before.blocked_until.filter(|until| *until > now) {
                return Err(Duration::from_millis(until - now));
            }
            if u128::from(now.saturating_sub(before.last)) < self.forget_after.as_millis() {
                count = before.count;
            }
        }
        let count = count.saturating_add(1);
        Ok(Attempts {
            count,
            blocked_until: self.block_for(count).map(|wait| {
                now.saturating_add(u64::try_from(wait.as_millis()).unwrap_or(u64::MAX))
            }),
            last: now,
        })
    }

    /// The record after one attempt is taken back (it succeeded, but the key keeps the rest).
    pub fn forgive_one(&self, mut attempts: Attempts) -> Attempts {
        attempts.count = attempts.count.saturating_sub(1);
        if self.block_for(attempts.count).is_none() {
            attempts.blocked_until = None;
        }
        attempts
    }

    /// The block that the `count`-th attempt puts on its key.
    fn block_for(&self, count: u32) -> Option<Duration> {
        let over = count.checked_sub(self.free.max(1))?;
        let factor = 2u32.saturating_pow(over);
        Some(self.base.saturating_mul(factor).min(self.max))
    }
}

/// Counts attempts per key in this process's memory, by the rule of [`Backoff`].
pub struct Throttle {
    backoff: Backoff,
    /// The zero of this throttle's clock.
    epoch: Instant,
    entries: Mutex<HashMap<String, Attempts>>,
}

impl Throttle {
    /// Keys tracked at most; beyond it, idle keys are dropped, and if none is idle a new key
    /// is not tracked (memory stays bounded; see docs/SECURITY.md).
    const CAPACITY: usize = 100_000;

    pub fn new(backoff: Backoff) -> Throttle {
        Throttle {
            backoff,
            epoch: Instant::now(),
            entries: Mutex::new(HashMap::new()),
        }
    }

    /// Counts one attempt, before its outcome is known (so that concurrent attempts cannot all
    /// pass a check made before any of them failed); `Err(wait)` when the key is blocked, and
    /// then nothing is counted.
    pub fn attempt(&self, key: &str) -> Result<(), Duration> {
        self.attempt_at(key, Instant::now())
    }

    fn millis(&self, at: Instant) -> u64 {
        u64::try_from(at.saturating_duration_since(self.epoch).as_millis()).unwrap_or(u64::MAX)
    }

    fn attempt_at(&self, key: &str, now: Instant) -> Result<(), Duration> {
        let now = self.millis(now);
        let mut entries = self.lock();
        if let Some(entry) = entries.get_mut(key) {
            *entry = self.backoff.next(Some(*entry), now)?;
            return Ok(());
        }
        if entries.len() >= Self::CAPACITY {
            let forget_after = self.backoff.forget_after.as_millis();
            entries.retain(|_, e| {
                e.blocked_until.is_some_and(|until| until > now)
                    || u128::from(now.saturating_sub(e.last)) < forget_after
            });
            if entries.len() >= Self::CAPACITY {
                return Ok(());
            }
        }
        entries.insert(key.to_owned(), self.backoff.next(None, now)?);
        Ok(())
    }

    /// The attempt succeeded: the key starts over.
    pub fn clear(&self, key: &str) {
        self.lock().remove(key);
    }

    /// The attempt succeeded but the key keeps its history (an address that also fails on
    /// other accounts): only this attempt is taken back.
    pub fn forgive_one(&self, key: &str) {
        if let Some(entry) = self.lock().get_mut(key) {
            *entry = self.backoff.forgive_one(*entry);
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Attempts>> {
        // The map holds plain copies; a panic elsewhere cannot leave an entry half-written.
        self.entries
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

/// Counts attempts per key in Postgres (`login_failures`), by the rule of [`Backoff`] on the
/// database's clock, so every gateway replica sees the same count: used for failed sign-ins per
/// account. Costs one short transaction per attempt (an attempt also costs a bcrypt hash) and
/// one statement per success.
pub struct SharedThrottle {
    backoff: Backoff,
}

impl SharedThrottle {
    pub fn new(backoff: Backoff) -> SharedThrottle {
        SharedThrottle { backoff }
    }

    /// Like [`Throttle::attempt`], across replicas: the key's row is locked while it is
    /// counted. `Ok(Err(wait))` when the key is blocked.
    pub async fn attempt(
        &self,
        conn: &mut AsyncPgConnection,
        key: &str,
    ) -> Result<Result<(), Duration>, ApiError> {
        let backoff = self.backoff;
        Ok(
            login_failures::attempt(conn, key, backoff.forget_after, |before, now| {
                backoff.next(before, now)
            })
            .await?,
        )
    }

    /// The attempt succeeded: the key starts over, on every replica.
    pub async fn clear(&self, conn: &mut AsyncPgConnection, key: &str) -> Result<(), ApiError> {
        login_failures::clear(conn, key).await?;
        Ok(())
    }
}

/// Every defence of this module, built from `[abuse]`.
pub struct Guards {
    pub hashes: HashGate,
    /// Failed logins per account (the normalised email), shared by every replica.
    pub login_accounts: SharedThrottle,
    /// Failed logins per client address.
    pub login_addresses: Throttle,
    pub registrations: Throttle,
    pub trusted_proxies: Vec<IpNet>,
}

impl Guards {
    pub fn new(settings: &AbuseSettings) -> Guards {
        let forget_after = Duration::from_secs(settings.forget_after_seconds);
        let max = Duration::from_millis(settings.backoff_max_ms);
        let login = |free| {
            Backoff::new(
                free,
                Duration::from_millis(settings.backoff_base_ms),
                max,
                forget_after,
            )
        };
        Guards {
            hashes: HashGate::new(
                settings.hashes_in_flight,
                Duration::from_millis(settings.hash_wait_ms),
            ),
            login_accounts: SharedThrottle::new(login(settings.failures_per_account)),
            login_addresses: Throttle::new(login(settings.failures_per_address)),
            registrations: Throttle::new(Backoff::new(
                settings.registrations_per_address,
                Duration::from_millis(settings.registration_backoff_base_ms),
                max.max(Duration::from_millis(settings.registration_backoff_base_ms)),
                forget_after,
            )),
            // Checked by `Settings::validate`.
            trusted_proxies: parse_trusted_proxies(&settings.trusted_proxies).unwrap_or_default(),
        }
    }

    /// The throttle key of the request's client address.
    pub fn address_of(&self, req: &HttpRequest) -> String {
        address_key(client_address(req, &self.trusted_proxies))
    }
}

/// 429 `rate_limited` with `Retry-After` (whole seconds, rounded up).
pub fn too_many(what: &str, wait: Duration) -> ApiError {
    let seconds = wait.as_secs() + u64::from(wait.subsec_nanos() > 0);
    ApiError::Limited(Box::new(Limited::rate(
        format!("too many {what}; retry in {seconds} s"),
        seconds.max(1),
        Vec::new(),
    )))
}

/// Parses `server.trusted_proxies`: CIDRs (or single addresses) separated by commas.
pub fn parse_trusted_proxies(text: &str) -> Result<Vec<IpNet>, String> {
    text.split(',')
        .map(str::trim)
        .filter(|part| !part.is_empty())
        .map(|part| {
            part.parse::<IpNet>()
                .or_else(|_| part.parse::<IpAddr>().map(IpNet::from))
                .map_err(|_| format!("not a CIDR or address: {part:?}"))
        })
        .collect()
}

/// The client's address: the TCP peer, unless the peer is a trusted proxy; then the nearest
/// address in `X-Forwarded-For` (read right to left) that is not a trusted proxy. Headers sent
/// by a client that is not a trusted proxy are never read.
pub fn client_address(req: &HttpRequest, trusted: &[IpNet]) -> Option<IpAddr> {
    let peer = canonical(req.peer_addr()?.ip());
    Some(forwarded_client(peer, req, trusted))
}

fn forwarded_client(peer: IpAddr, req: &HttpRequest, trusted: &[IpNet]) -> IpAddr {
    let is_trusted = |ip: &IpAddr| trusted.iter().any(|net| net.contains(ip));
    if !is_trusted(&peer) {
        return peer;
    }
    let hops: Vec<&str> = req
        .headers()
        .get_all("x-forwarded-for")
        .filter_map(|value| value.to_str().ok())
        .flat_map(|value| value.split(','))
        .map(str::trim)
        .collect();
    let mut client = peer;
    for hop in hops.iter().rev() {
        // A malformed hop was written by someone we do not trust: stop at the last good one.
        let Ok(ip) = hop.parse::<IpAddr>().map(canonical) else {
            break;
        };
        client = ip;
        if !is_trusted(&ip) {
            break;
        }
    }
    client
}

/// IPv4-mapped IPv6 addresses count as the IPv4 address they carry.
fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        v4 => v4,
    }
}

/// The throttle key of an address: IPv4 as is, IPv6 by its /64 (one host usually owns a whole
/// /64, so counting single IPv6 addresses would give it 2^64 fresh ones).
pub fn address_key(ip: Option<IpAddr>) -> String {
    match ip {
        Some(IpAddr::V6(v6)) => {
            let s = v6.segments();
            format!("{:x}:{:x}:{:x}:{:x}::/64", s[0], s[1], s[2], s[3])
        }
        Some(v4) => v4.to_string(),
        None => "unknown".to_owned(),
    }
}

/// Caps the password hashes (bcrypt) running at once, so anonymous requests cannot take every
/// CPU; a hash that cannot start within `wait` is refused with 429 and `Retry-After`.
pub struct HashGate {
    permits: tokio::sync::Semaphore,
    wait: Duration,
}

impl HashGate {
    pub fn new(in_flight: usize, wait: Duration) -> HashGate {
        HashGate {
            permits: tokio::sync::Semaphore::new(in_flight.max(1)),
            wait,
        }
    }

    /// Runs `work` (a blocking bcrypt call) off the async workers once a permit is free.
    pub async fn run<T: Send + 'static>(
        &self,
        work: impl FnOnce() -> T + Send + 'static,
    ) -> Result<T, ApiError> {
        let permit = tokio::time::timeout(self.wait, self.permits.acquire())
            .await
            .map_err(|_| {
                metrics::counter!("password_hashes_refused_total").increment(1);
                too_many("sign-in attempts in progress", Duration::from_secs(1))
            })?
            .map_err(|e| ApiError::Internal(format!("hash gate closed: {e}")))?;
        let result = tokio::task::spawn_blocking(work)
            .await
            .map_err(|e| ApiError::Internal(format!("hashing task: {e}")));
        drop(permit);
        result
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn throttle() -> Throttle {
        Throttle::new(Backoff::new(
            3,
            Duration::from_secs(1),
            Duration::from_secs(8),
            Duration::from_secs(600),
        ))
    }

    #[test]
    fn attempts_past_the_free_ones_back_off_exponentially_up_to_the_cap() {
        let t = throttle();
        let start = Instant::now();
        for _ in 0..3 {
            assert!(t.attempt_at("a", start).is_ok());
        }
        // The 3rd attempt blocked the key for 1 s.
        assert_eq!(t.attempt_at("a", start), Err(Duration::from_secs(1)));
        // Another key is not affected.
        assert!(t.attempt_at("b", start).is_ok());
        let mut now = start + Duration::from_secs(1);
        let mut waits = Vec::new();
        for _ in 0..5 {
            assert!(t.attempt_at("a", now).is_ok());
            let wait = t.attempt_at("a", now).unwrap_err();
            waits.push(wait.as_secs());
            now += wait;
        }
        assert_eq!(waits, [2, 4, 8, 8, 8]);
    }

    #[test]
    fn a_success_clears_the_key_and_forgiving_lifts_the_block() {
        let t = throttle();
        let now = Instant::now();
        for _ in 0..3 {
            assert!(t.attempt_at("a", now).is_ok());
        }
        assert!(t.attempt_at("a", now).is_err());
        t.clear("a");
        assert!(t.attempt_at("a", now).is_ok());
        for _ in 0..3 {
            assert!(t.attempt_at("b", now).is_ok());
        }
        t.forgive_one("b");
        assert!(t.attempt_at("b", now).is_ok());
        assert!(t.attempt_at("b", now).is_err());
    }

    #[test]
    fn a_quiet_key_starts_over() {
        let t = throttle();
        let now = Instant::now();
        for _ in 0..3 {
            assert!(t.attempt_at("a", now).is_ok());
        }
        let later = now + Duration::from_secs(601);
        for _ in 0..3 {
            assert!(t.attempt_at("a", later).is_ok());
        }
    }

    #[test]
    fn forwarded_addresses_are_read_only_from_trusted_proxies() {
        let trusted = parse_trusted_proxies("10.0.0.0/8, 192.168.1.1").unwrap();
        let with_header = |value: &str| {
            actix_web::test::TestRequest::default()
                .insert_header(("x-forwarded-for", value))
                .to_http_request()
        };
        let req = with_header("1.2.3.4, 10.0.0.9");
        let direct: IpAddr = "203.0.113.7".parse().unwrap();
        assert_eq!(forwarded_client(direct, &req, &trusted), direct);
        let proxy: IpAddr = "10.1.2.3".parse().unwrap();
        assert_eq!(
            forwarded_client(proxy, &req, &trusted),
            "1.2.3.4".parse::<IpAddr>().unwrap()
        );
        // A client that prepends its own hops gets the address the proxy saw.
        let spoofed = with_header("9.9.9.9, 5.6.7.8");
        assert_eq!(
            forwarded_client(proxy, &spoofed, &trusted),
            "5.6.7.8".parse::<IpAddr>().unwrap()
        );
        let garbage = with_header("nonsense");
        assert_eq!(forwarded_client(proxy, &garbage, &trusted), proxy);
        assert!(parse_trusted_proxies("10.0.0.0/33").is_err());
    }

    #[test]
    fn ipv6_addresses_are_counted_by_their_64() {
        let a: IpAddr = "2001:db8:1:2:aaaa::1".parse().unwrap();
        let b: IpAddr = "2001:db8:1:2:bbbb::2".parse().unwrap();
        assert_eq!(address_key(Some(a)), address_key(Some(b)));
        let mapped: IpAddr = "::ffff:1.2.3.4".parse().unwrap();
        assert_eq!(address_key(Some(canonical(mapped))), "1.2.3.4");
    }
}
