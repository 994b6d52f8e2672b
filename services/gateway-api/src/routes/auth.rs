//! `/v1/auth`: registration and login.

use actix_web::{HttpRequest, HttpResponse, web};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::auth::SessionUser;
use crate::core::identity;
use crate::error::{ApiError, ErrorBody};
use crate::state::AppState;
use crate::views::UserView;

pub fn configure(cfg: &mut web::ServiceConfig) {
    cfg.route("/v1/auth/register", web::post().to(register))
        .route("/v1/auth/login", web::post().to(login))
        .route("/v1/auth/logout", web::post().to(logout))
        .route("/v1/auth/password", web::post().to(change_password));
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
    Ok(HttpResponse::Ok().json(LoginResponse {
        access_token: session.token,
        token_type: "Bearer",
        expires_in: state.jwt_ttl_seconds,
        user: session.user.into(),
    }))
}

/// Sign out everywhere: every session token of this user stops working at once (on every
/// replica: the check reads the user row).
#[utoipa::path(post, path = "/v1/auth/logout", tag = "auth", security(("token" = [])),
    responses((status = 204), (status = 401, body = ErrorBody)))]
pub async fn logout(
    state: web::Data<AppState>,
    session: SessionUser,
) -> Result<HttpResponse, ApiError> {
    identity::sign_out(&state, session.0.id).await?;
    Ok(HttpResponse::NoContent().finish())
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PasswordChange {
    pub current_password: String,
    /// 8 to 72 bytes.
    pub new_password: String,
}

/// Change the signed-in user's password; every session token ends, this one included.
#[utoipa::path(post, path = "/v1/auth/password", tag = "auth", security(("token" = [])),
    request_body = PasswordChange,
    responses((status = 204), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody),
        (status = 403, description = "the current password is wrong", body = ErrorBody),
        (status = 429, description = "too many wrong current passwords; see `Retry-After`", body = ErrorBody)))]
pub async fn change_password(
    state: web::Data<AppState>,
    session: SessionUser,
    body: web::Json<PasswordChange>,
) -> Result<HttpResponse, ApiError> {
    identity::change_password(
        &state,
        &session.0,
        &body.current_password,
        &body.new_password,
    )
    .await?;
    Ok(HttpResponse::NoContent().finish())
}
