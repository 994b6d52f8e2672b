//! `/v1/auth`: registration and login.

use actix_web::{HttpRequest, HttpResponse, web};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::core::identity;
use crate::error::{ApiError, ErrorBody};
use crate::state::AppState;
use crate::views::UserView;

pub fn configure(cfg: &mut web::ServiceConfig) {
    cfg.route("/v1/auth/register", web::post().to(register))
        .route("/v1/auth/login", web::post().to(login));
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Credentials {
    #[schema(example = "ada@example.com")]
    pub email: String,
    /// 8 to 72 bytes.
    #[schema(example = "correct horse battery")]
    pub password: String,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct UserEnvelope {
    pub user: UserView,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct LoginResponse {
    pub access_token: String,
    #[schema(example = "Bearer")]
    pub token_type: &'static str,
    /// Seconds until the token expires.
    pub expires_in: i64,
    pub user: UserView,
}

/// Create an account (always the `user` role).
#[utoipa::path(post, path = "/v1/auth/register", tag = "auth", request_body = Credentials,
    responses((status = 201, body = UserEnvelope), (status = 400, body = ErrorBody), (status = 409, body = ErrorBody),
        (status = 429, description = "too many registrations from this address, or too many password hashes in progress; see `Retry-After`", body = ErrorBody)))]
pub async fn register(
    state: web::Data<AppState>,
    req: HttpRequest,
    body: web::Json<Credentials>,
) -> Result<HttpResponse, ApiError> {
    let address = state.guards.address_of(&req);
    let user = identity::register(&state, &address, &body.email, &body.password).await?;
    Ok(HttpResponse::Created().json(UserEnvelope { user: user.into() }))
}

/// Exchange email and password for a session token.
#[utoipa::path(post, path = "/v1/auth/login", tag = "auth", request_body = Credentials,
    responses((status = 200, body = LoginResponse), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody),
        (status = 429, description = "too many failed sign-ins for this account or from this address; see `Retry-After`", body = ErrorBody)))]
pub async fn login(
    state: web::Data<AppState>,
    req: HttpRequest,
    body: web::Json<Credentials>,
) -> Result<HttpResponse, ApiError> {
    let address = state.guards.address_of(&req);
    let session = identity::login(&state, &address, &body.email, &body.password).await?;
    Ok(HttpResponse::Ok()
        .insert_header(no_store())
        .json(LoginResponse {
            access_token: session.token,
            token_type: "Bearer",
            expires_in: state.jwt_ttl_seconds,
            user: session.user.into(),
        }))
}

/// Responses that carry a credential must not be stored by any cache.
pub fn no_store() -> (actix_web::http::header::HeaderName, &'static str) {
    (actix_web::http::header::CACHE_CONTROL, "no-store")
}
