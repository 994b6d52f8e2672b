//! Credentials: session tokens (JWT) and access keys, and the extractors that check them.

use std::future::Future;
use std::pin::Pin;

use actix_web::{FromRequest, HttpRequest, dev::Payload, web};
use chrono::Utc;
use domain::Role;
use jsonwebtoken::{Algorithm, Header, Validation};
use persistence::access_keys::AccessKey;
use persistence::users::User;
use serde::{Deserialize, Serialize};

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
}

pub fn issue_token(state: &AppState, user: &User) -> Result<String, ApiError> {
    let now = Utc::now().timestamp();
    let claims = Claims {
        sub: user.id.to_string(),
        role: user.role.clone(),
        iat: now,
        exp: now + state.jwt_ttl_seconds,
        iss: ISSUER.to_owned(),
    };
    jsonwebtoken::encode(&Header::new(Algorithm::HS256), &claims, &state.jwt_encoding)
        .map_err(|e| ApiError::Internal(format!("signing a token: {e}")))
}

/// Verifies signature (HS256 only: `none` and every other algorithm are refused), expiry and
/// issuer; returns the user id.
fn verify_token(state: &AppState, token: &str) -> Result<i64, ApiError> {
    let mut validation = Validation::new(Algorithm::HS256);
    validation.leeway = 5;
    validation.set_issuer(&[ISSUER]);
    validation.set_required_spec_claims(&["exp", "sub", "iss"]);
    let data = jsonwebtoken::decode::<Claims>(token, &state.jwt_decoding, &validation)
        .map_err(|_| invalid_token())?;
    data.claims.sub.parse().map_err(|_| invalid_token())
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
/// disabling a user or changing a role takes effect at once, whatever the token says.
pub struct SessionUser(pub User);

impl SessionUser {
    pub fn role(&self) -> Role {
        self.0.role.parse().unwrap_or(Role::User)
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
            let user_id = verify_token(&state, &token)?;
            let mut conn = state.conn().await?;
            let user = match persistence::users::find(&mut conn, user_id).await {
                Ok(user) => user,
                Err(persistence::StoreError::NotFound) => return Err(invalid_token()),
                Err(other) => return Err(other.into()),
            };
            if user.status != "active" {
                return Err(ApiError::Unauthorized(
                    "this account is disabled".to_owned(),
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

/// A model-call credential: `Authorization: Bearer sk-...` or `ACCESS-KEY: sk-...`; only a key
/// that is not revoked, not expired and whose owner is active. Looked up in Postgres on every
/// call, so a revocation takes effect on the very next request.
pub struct KeyHolder {
    pub key: AccessKey,
    pub user: User,
}

impl FromRequest for KeyHolder {
    type Error = ApiError;
    type Future = Pin<Box<dyn Future<Output = Result<Self, Self::Error>>>>;

    fn from_request(req: &HttpRequest, _: &mut Payload) -> Self::Future {
        let secret = req
            .headers()
            .get("access-key")
            .and_then(|v| v.to_str().ok())
            .map(str::trim)
            .or_else(|| bearer(req))
            .map(str::to_owned);
        let state = state(req);
        Box::pin(async move {
            let state = state?;
            let secret = secret.filter(|s| s.starts_with("sk-")).ok_or_else(|| {
                ApiError::Unauthorized(
                    "an access key is required (Authorization: Bearer sk-... or ACCESS-KEY)"
                        .to_owned(),
                )
            })?;
            let hash = hash_access_key(&secret);
            let mut conn = state.conn().await?;
            let (key, user) = persistence::access_keys::authenticate(&mut conn, &hash)
                .await?
                .ok_or_else(|| {
                    ApiError::Unauthorized("invalid, revoked or expired access key".to_owned())
                })?;
            // Record use at most once a minute per key, so the hot path rarely writes.
            let stale = chrono::Utc::now() - chrono::Duration::seconds(60);
            if key.last_used_at.is_none_or(|at| at < stale) {
                persistence::access_keys::touch(&mut conn, key.id).await?;
            }
            Ok(KeyHolder { key, user })
        })
    }
}
