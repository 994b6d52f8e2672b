//! Credentials: session tokens (JWT) and access keys, and the extractors that check them.

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use actix_web::{FromRequest, HttpRequest, dev::Payload, web};
use chrono::{DateTime, Utc};
use domain::{Role, UserStatus};
use jsonwebtoken::{Algorithm, Header, Validation};
use persistence::access_keys::AccessKey;
use persistence::limits::Scope;
use persistence::users::User;
use serde::{Deserialize, Serialize};

use crate::core::limits::CallerLimits;
use crate::error::ApiError;
use crate::secrets::hash_access_key;
use crate::state::AppState;

const ISSUER: &str = "ai-gateway";

#[derive(Debug, Serialize, Deserialize)]
pub struct Claims {
    /// The user id.
    pub sub: String,
    pub role: String,
    pub iat: i64,
    pub exp: i64,
    pub iss: String,
    /// Stamp of the password and session generation the token was issued under (see
    /// [`session_stamp`]); a token without it, or with another one, is refused.
    #[serde(default)]
    pub stamp: Option<String>,
}

/// A short keyed digest of the user's password hash and session generation, carried in the
/// session token: a new password (a new bcrypt hash, whose salt is random) or a sign-out (a new
/// generation) ends every session opened before it. Keyed, so the token, which its holder can
/// read, tells nothing about the hash.
pub fn session_stamp(state: &AppState, user: &User) -> String {
    let stamped = format!("{}:{}", user.session_generation, user.password_hash);
    let mut stamp =
        domain::signature::sign(&state.session_stamp_secret, "session", stamped.as_bytes());
    stamp.truncate(32);
    stamp
}

pub fn issue_token(state: &AppState, user: &User) -> Result<String, ApiError> {
    let now = Utc::now().timestamp();
    let claims = Claims {
        sub: user.id.to_string(),
        role: user.role.as_str().to_owned(),
        iat: now,
        exp: now + state.jwt_ttl_seconds,
        iss: ISSUER.to_owned(),
        stamp: Some(session_stamp(state, user)),
    };
    jsonwebtoken::encode(&Header::new(Algorithm::HS256), &claims, &state.jwt_encoding)
        .map_err(|e| ApiError::Internal(format!("signing a token: {e}")))
}

/// Verifies signature (HS256 only: `none` and every other algorithm are refused), expiry and
/// issuer; returns the claims, the user id parsed.
fn verify_token(state: &AppState, token: &str) -> Result<(i64, Claims), ApiError> {
    let mut validation = Validation::new(Algorithm::HS256);
    validation.leeway = 5;
    validation.set_issuer(&[ISSUER]);
    validation.set_required_spec_claims(&["exp", "sub", "iss"]);
    let data = jsonwebtoken::decode::<Claims>(token, &state.jwt_decoding, &validation)
        .map_err(|_| invalid_token())?;
    let user_id = data.claims.sub.parse().map_err(|_| invalid_token())?;
    Ok((user_id, data.claims))
}

fn invalid_token() -> ApiError {
    ApiError::Unauthorized("invalid or expired token".to_owned())
}

fn bearer(req: &HttpRequest) -> Option<&str> {
    let value = req.headers().get("authorization")?.to_str().ok()?;
    let (scheme, token) = value.split_once(' ')?;
    scheme.eq_ignore_ascii_case("bearer").then(|| token.trim())
}

fn state(req: &HttpRequest) -> Result<web::Data<AppState>, ApiError> {
    req.app_data::<web::Data<AppState>>()
        .cloned()
        .ok_or_else(|| ApiError::Internal("application state missing".to_owned()))
}

/// A signed-in, active user (from a session token). The user row is read on every request, so
/// disabling a user, changing a role or a password takes effect at once, whatever the token
/// says.
pub struct SessionUser(pub User);

impl SessionUser {
    pub fn role(&self) -> Role {
        self.0.role
    }
}

impl FromRequest for SessionUser {
    type Error = ApiError;
    type Future = Pin<Box<dyn Future<Output = Result<Self, Self::Error>>>>;

    fn from_request(req: &HttpRequest, _: &mut Payload) -> Self::Future {
        let token = bearer(req).map(str::to_owned);
        let state = state(req);
        Box::pin(async move {
            let state = state?;
            let token = token
                .ok_or_else(|| ApiError::Unauthorized("a bearer token is required".to_owned()))?;
            let (user_id, claims) = verify_token(&state, &token)?;
            let mut conn = state.conn().await?;
            let user = match persistence::users::find(&mut conn, user_id).await {
                Ok(user) => user,
                Err(persistence::StoreError::NotFound) => return Err(invalid_token()),
                Err(other) => return Err(other.into()),
            };
            if user.status != UserStatus::Active {
                return Err(ApiError::Unauthorized(
                    "this account is disabled".to_owned(),
                ));
            }
            let stamp = session_stamp(&state, &user);
            if claims.stamp.as_deref() != Some(stamp.as_str()) {
                return Err(ApiError::Unauthorized(
                    "this session ended (signed out, or the password changed); sign in again"
                        .to_owned(),
                ));
            }
            Ok(SessionUser(user))
        })
    }
}

/// A signed-in admin; a user's valid token answers 403.
pub struct AdminUser(pub User);

impl FromRequest for AdminUser {
    type Error = ApiError;
    type Future = Pin<Box<dyn Future<Output = Result<Self, Self::Error>>>>;

    fn from_request(req: &HttpRequest, payload: &mut Payload) -> Self::Future {
        let session = SessionUser::from_request(req, payload);
        Box::pin(async move {
            let session = session.await?;
            if session.role() != Role::Admin {
                return Err(ApiError::Forbidden(
                    "this route needs the admin role".to_owned(),
                ));
            }
            Ok(AdminUser(session.0))
        })
    }
}

/// A model-call credential: `Authorization: Bearer sk-...`, `ACCESS-KEY: sk-...` or
/// `x-api-key: sk-...` (how Anthropic's clients send it); only a key
/// that is not revoked, not expired and whose owner is active. Checked in Postgres, then
/// trusted for `calls.key_cache_ttl_ms` (see `KeyCache`).
#[derive(Debug, Clone)]
pub struct KeyHolder {
    pub key_id: i64,
    pub user_id: i64,
    /// The key's and its user's stored limits, as of the last check of the key.
    pub limits: Arc<CallerLimits>,
}

impl FromRequest for KeyHolder {
    type Error = ApiError;
    type Future = Pin<Box<dyn Future<Output = Result<Self, Self::Error>>>>;

    fn from_request(req: &HttpRequest, _: &mut Payload) -> Self::Future {
        let secret = req
            .headers()
            .get("access-key")
            .or_else(|| req.headers().get("x-api-key"))
            .and_then(|v| v.to_str().ok())
            .map(str::trim)
            .or_else(|| bearer(req))
            .filter(|s| s.starts_with("sk-"))
            .map(hash_access_key);
        let state = state(req);
        Box::pin(async move {
            let state = state?;
            let hash = secret.ok_or_else(|| {
                ApiError::Unauthorized(
                    "an access key is required (Authorization: Bearer sk-..., ACCESS-KEY or x-api-key)"
                        .to_owned(),
                )
            })?;
            let now = Utc::now();
            if let Some(hit) = state.key_cache.get(&hash, now) {
                if hit.refresh {
                    // Checked again off the request path while the entry is still trusted, so
                    // a key in steady use never makes its call wait for the lookup.
                    tokio::task::spawn_local(async move {
                        if let Err(error) = check_key(&state, hash, Utc::now()).await {
                            tracing::warn!(%error, "re-checking an access key failed");
                        }
                    });
                }
                return Ok(hit.holder);
            }
            if state.key_cache.is_known_unknown(&hash) {
                metrics::counter!("access_key_unknown_cached_total").increment(1);
                return Err(ApiError::Unauthorized(
                    "invalid, revoked or expired access key".to_owned(),
                ));
            }
            check_key(&state, hash, now).await?.ok_or_else(|| {
                ApiError::Unauthorized("invalid, revoked or expired access key".to_owned())
            })
        })
    }
}

/// Looks an access key up in Postgres and caches the answer; `None` (and the key forgotten)
/// when it is unknown, revoked, expired or its owner is disabled.
async fn check_key(
    state: &AppState,
    hash: [u8; 32],
    now: DateTime<Utc>,
) -> Result<Option<KeyHolder>, ApiError> {
    let mut conn = state.conn().await?;
    let Some((key, user)) = persistence::access_keys::authenticate(&mut conn, &hash).await? else {
        state.key_cache.forget_hash(&hash);
        state.key_cache.remember_unknown(hash);
        return Ok(None);
    };
    // Record use at most once a minute per key, so the hot path rarely writes.
    let stale = now - chrono::Duration::seconds(60);
    if key.last_used_at.is_none_or(|at| at < stale) {
        persistence::access_keys::touch(&mut conn, key.id).await?;
    }
    let mut limits = CallerLimits::default();
    let subjects = [(Scope::Key, key.id), (Scope::User, user.id)];
    for (scope, _, values) in persistence::limits::load(&mut conn, &subjects).await? {
        match scope {
            Scope::Key => limits.key = values,
            _ => limits.user = values,
        }
    }
    let limits = Arc::new(limits);
    state.key_cache.put(hash, &key, Arc::clone(&limits), now);
    Ok(Some(KeyHolder {
        key_id: key.id,
        user_id: user.id,
        limits,
    }))
}

/// Access keys checked recently, by hash: a call with a known key skips the Postgres lookup.
///
/// The bound on staleness is the TTL: a key revoked, expired or whose owner was disabled stops
/// working within it on every replica (the replica that makes the change forgets the key at
/// once, see `forget_key` and `forget_user`). The map holds at most `CAPACITY` keys.
///
/// A key that matched nothing (unknown, revoked, expired, owner disabled) is refused without a
/// lookup for `unknown_ttl`, so random `sk-...` strings cost no database round trip; a new key
/// is random, so it is never in that set. At most `UNKNOWN_CAPACITY` such keys are held.
pub struct KeyCache {
    ttl: Duration,
    entries: RwLock<HashMap<[u8; 32], Known>>,
    unknown_ttl: Duration,
    unknown: RwLock<HashMap<[u8; 32], Instant>>,
}

#[derive(Clone)]
struct Known {
    key_id: i64,
    user_id: i64,
    limits: Arc<CallerLimits>,
    expires_at: Option<DateTime<Utc>>,
    checked: Instant,
    /// A caller was told to check the key again (see `Hit::refresh`).
    refreshing: bool,
}

/// A trusted cache entry.
struct Hit {
    holder: KeyHolder,
    /// The entry is past half its TTL: this caller (only one per entry) should check the key
    /// again in the background, so that a key in steady use is never looked up on a call.
    refresh: bool,
}

impl KeyCache {
    const CAPACITY: usize = 100_000;
    const UNKNOWN_CAPACITY: usize = 50_000;

    pub fn new(ttl: Duration, unknown_ttl: Duration) -> KeyCache {
        KeyCache {
            ttl,
            entries: RwLock::new(HashMap::new()),
            unknown_ttl,
            unknown: RwLock::new(HashMap::new()),
        }
    }

    /// Whether this key matched nothing less than `unknown_ttl` ago.
    fn is_known_unknown(&self, hash: &[u8; 32]) -> bool {
        !self.unknown_ttl.is_zero()
            && self
                .unknown
                .read()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .get(hash)
                .is_some_and(|seen| seen.elapsed() < self.unknown_ttl)
    }

    fn remember_unknown(&self, hash: [u8; 32]) {
        if self.unknown_ttl.is_zero() {
            return;
        }
        let mut unknown = self
            .unknown
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if unknown.len() >= Self::UNKNOWN_CAPACITY {
            let ttl = self.unknown_ttl;
            unknown.retain(|_, seen| seen.elapsed() < ttl);
            if unknown.len() >= Self::UNKNOWN_CAPACITY {
                unknown.clear();
            }
        }
        unknown.insert(hash, Instant::now());
    }

    fn get(&self, hash: &[u8; 32], now: DateTime<Utc>) -> Option<Hit> {
        if self.ttl.is_zero() {
            return None;
        }
        let known = self.read().get(hash)?.clone();
        let age = known.checked.elapsed();
        let fresh = age < self.ttl && known.expires_at.is_none_or(|expires| expires > now);
        if !fresh {
            return None;
        }
        let refresh = age >= self.ttl / 2 && !known.refreshing && self.claim_refresh(hash);
        Some(Hit {
            holder: KeyHolder {
                key_id: known.key_id,
                user_id: known.user_id,
                limits: known.limits,
            },
            refresh,
        })
    }

    /// Whether this caller is the one to re-check the entry (no other caller was told).
    fn claim_refresh(&self, hash: &[u8; 32]) -> bool {
        match self.write().get_mut(hash) {
            Some(known) if !known.refreshing => {
                known.refreshing = true;
                true
            }
            _ => false,
        }
    }

    fn put(&self, hash: [u8; 32], key: &AccessKey, limits: Arc<CallerLimits>, now: DateTime<Utc>) {
        if self.ttl.is_zero() || key.expires_at.is_some_and(|expires| expires <= now) {
            return;
        }
        let known = Known {
            key_id: key.id,
            user_id: key.user_id,
            limits,
            expires_at: key.expires_at,
            checked: Instant::now(),
            refreshing: false,
        };
        let mut entries = self.write();
        if entries.len() >= Self::CAPACITY {
            let ttl = self.ttl;
            entries.retain(|_, k| k.checked.elapsed() < ttl);
            if entries.len() >= Self::CAPACITY {
                entries.clear();
            }
        }
        entries.insert(hash, known);
    }

    /// Forgets a key found invalid on a re-check.
    fn forget_hash(&self, hash: &[u8; 32]) {
        self.write().remove(hash);
    }

    /// Forgets a key at once (it was just revoked here).
    pub fn forget_key(&self, key_id: i64) {
        self.write().retain(|_, k| k.key_id != key_id);
    }

    /// Forgets every key of a user at once (the user was just changed here).
    pub fn forget_user(&self, user_id: i64) {
        self.write().retain(|_, k| k.user_id != user_id);
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, HashMap<[u8; 32], Known>> {
        // The map holds plain copies; a panic elsewhere cannot leave an entry half-written.
        self.entries
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, HashMap<[u8; 32], Known>> {
        self.entries
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(id: i64, user_id: i64, expires_at: Option<DateTime<Utc>>) -> AccessKey {
        AccessKey {
            id,
            user_id,
            name: "k".to_owned(),
            prefix: "sk-test".to_owned(),
            key_hash: vec![0; 32],
            created_at: Utc::now(),
            expires_at,
            last_used_at: None,
            revoked_at: None,
        }
    }

    #[test]
    fn a_cached_key_is_trusted_only_for_the_ttl() {
        let cache = KeyCache::new(Duration::from_millis(80), Duration::ZERO);
        let now = Utc::now();
        cache.put([1; 32], &key(7, 70, None), Arc::default(), now);
        let hit = cache
            .get(&[1; 32], now)
            .map(|h| (h.holder.key_id, h.holder.user_id));
        assert_eq!(hit, Some((7, 70)));
        assert!(cache.get(&[2; 32], now).is_none());
        std::thread::sleep(Duration::from_millis(100));
        assert!(cache.get(&[1; 32], now).is_none(), "stale entry served");
    }

    #[test]
    fn forgetting_a_key_or_a_user_takes_effect_at_once() {
        let cache = KeyCache::new(Duration::from_secs(60), Duration::ZERO);
        let now = Utc::now();
        cache.put([1; 32], &key(1, 10, None), Arc::default(), now);
        cache.put([2; 32], &key(2, 10, None), Arc::default(), now);
        cache.put([3; 32], &key(3, 30, None), Arc::default(), now);
        cache.forget_key(1);
        assert!(cache.get(&[1; 32], now).is_none());
        assert!(cache.get(&[2; 32], now).is_some());
        cache.forget_user(10);
        assert!(cache.get(&[2; 32], now).is_none());
        assert!(cache.get(&[3; 32], now).is_some());
    }

    #[test]
    fn an_expiring_key_is_not_served_past_its_expiry() {
        let cache = KeyCache::new(Duration::from_secs(60), Duration::ZERO);
        let now = Utc::now();
        cache.put(
            [1; 32],
            &key(1, 10, Some(now + chrono::Duration::seconds(5))),
            Arc::default(),
            now,
        );
        assert!(cache.get(&[1; 32], now).is_some());
        assert!(
            cache
                .get(&[1; 32], now + chrono::Duration::seconds(6))
                .is_none()
        );
        cache.put(
            [2; 32],
            &key(2, 10, Some(now - chrono::Duration::seconds(1))),
            Arc::default(),
            now,
        );
        assert!(cache.get(&[2; 32], now).is_none());
    }

    #[test]
    fn one_caller_is_told_to_recheck_a_key_past_half_its_ttl() {
        let cache = KeyCache::new(Duration::from_millis(200), Duration::ZERO);
        let now = Utc::now();
        cache.put([1; 32], &key(7, 70, None), Arc::default(), now);
        assert!(cache.get(&[1; 32], now).is_some_and(|h| !h.refresh));
        std::thread::sleep(Duration::from_millis(120));
        // Still trusted; the first caller re-checks, the others do not.
        assert!(cache.get(&[1; 32], now).is_some_and(|h| h.refresh));
        assert!(cache.get(&[1; 32], now).is_some_and(|h| !h.refresh));
        // The re-check stored a fresh entry: trusted again for a whole TTL.
        cache.put([1; 32], &key(7, 70, None), Arc::default(), now);
        std::thread::sleep(Duration::from_millis(120));
        assert!(cache.get(&[1; 32], now).is_some_and(|h| h.refresh));
        std::thread::sleep(Duration::from_millis(100));
        assert!(cache.get(&[1; 32], now).is_none(), "stale entry served");
        // A re-check that found the key revoked forgets it at once.
        cache.put([1; 32], &key(7, 70, None), Arc::default(), now);
        cache.forget_hash(&[1; 32]);
        assert!(cache.get(&[1; 32], now).is_none());
    }

    #[test]
    fn an_unknown_key_is_refused_from_memory_for_a_short_while() {
        let cache = KeyCache::new(Duration::from_secs(60), Duration::from_millis(80));
        assert!(!cache.is_known_unknown(&[9; 32]));
        cache.remember_unknown([9; 32]);
        assert!(cache.is_known_unknown(&[9; 32]));
        assert!(!cache.is_known_unknown(&[8; 32]));
        std::thread::sleep(Duration::from_millis(100));
        assert!(!cache.is_known_unknown(&[9; 32]), "stale negative entry");
        for i in 0..=KeyCache::UNKNOWN_CAPACITY {
            let mut hash = [0u8; 32];
            hash[..8].copy_from_slice(&(i as u64).to_le_bytes());
            cache.remember_unknown(hash);
        }
        let held = cache.unknown.read().map(|m| m.len()).unwrap_or(0);
        assert!(held <= KeyCache::UNKNOWN_CAPACITY, "{held}");
    }

    #[test]
    fn a_zero_ttl_caches_nothing() {
        let cache = KeyCache::new(Duration::ZERO, Duration::ZERO);
        let now = Utc::now();
        cache.put([1; 32], &key(1, 10, None), Arc::default(), now);
        assert!(cache.get(&[1; 32], now).is_none());
    }
}
