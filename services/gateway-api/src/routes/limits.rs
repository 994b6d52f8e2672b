//! Limits (see `core::limits`): a key's owner changes its limits; admins manage every key's,
//! each user's, each model's and the platform default.

use actix_web::middleware::from_fn;
use actix_web::{HttpResponse, web};
use persistence::limits::{LimitValues, Scope};

use crate::auth::SessionUser;
use crate::core::access_keys::{self, AccessKeyInput};
use crate::error::{ApiError, ErrorBody};
use crate::middleware::{reload_routes_after_write, require_admin};
use crate::state::AppState;
use crate::views::{
    AccessKeyView, CreatedAccessKeyView, LimitsInput, LimitsView, ListQuery, ListResponse,
};

pub fn configure(cfg: &mut web::ServiceConfig) {
    let admin = |path: &str| web::resource(path).wrap(from_fn(require_admin));
    // A change of the platform's or a model's limits reloads this replica's copy at once.
    let shared = |path: &str| {
        web::resource(path)
            .wrap(from_fn(reload_routes_after_write))
            .wrap(from_fn(require_admin))
    };
    cfg.route(
        "/v1/me/access-keys/{id}",
        web::patch().to(update_own_access_key),
    )
    .service(
        admin("/v1/admin/users/{id}/access-keys")
            .route(web::get().to(list_user_access_keys))
            .route(web::post().to(create_user_access_key)),
    )
    .service(admin("/v1/admin/access-keys/{id}").route(web::patch().to(update_access_key)))
    .service(
        admin("/v1/admin/users/{id}/limits")
            .route(web::get().to(get_user_limits))
            .route(web::put().to(set_user_limits)),
    )
    .service(
        shared("/v1/admin/models/{id}/limits")
            .route(web::get().to(get_model_limits))
            .route(web::put().to(set_model_limits)),
    )
    .service(
        shared("/v1/admin/limits")
            .route(web::get().to(get_platform_limits))
            .route(web::put().to(set_platform_limits)),
    );
}

/// Change the name or limits of one of your keys (a limit left out stays, `null` removes it).
#[utoipa::path(patch, path = "/v1/me/access-keys/{id}", tag = "me", security(("token" = [])),
    params(("id" = i64, Path)), request_body = AccessKeyInput,
    responses((status = 200, body = AccessKeyView), (status = 400, body = ErrorBody),
        (status = 404, body = ErrorBody)))]
pub async fn update_own_access_key(
    state: web::Data<AppState>,
    session: SessionUser,
    id: web::Path<i64>,
    body: web::Json<AccessKeyInput>,
) -> Result<HttpResponse, ApiError> {
    let key = access_keys::update(&state, Some(session.0.id), id.into_inner(), &body).await?;
    Ok(HttpResponse::Ok().json(key))
}

/// A user's access keys, with their limits.
#[utoipa::path(get, path = "/v1/admin/users/{id}/access-keys", tag = "admin",
    security(("token" = [])), params(("id" = i64, Path), ListQuery),
    responses((status = 200, body = ListResponse<AccessKeyView>), (status = 404, body = ErrorBody)))]
pub async fn list_user_access_keys(
    state: web::Data<AppState>,
    id: web::Path<i64>,
    query: web::Query<ListQuery>,
) -> Result<HttpResponse, ApiError> {
    let page = query.page()?;
    let user_id = existing_user(&state, id.into_inner()).await?;
    let keys = access_keys::list(&state, user_id, page).await?;
    Ok(HttpResponse::Ok().json(ListResponse::from_page(keys, page, Ok)?))
}

/// Mint an access key for a user (its secret is in this response only).
#[utoipa::path(post, path = "/v1/admin/users/{id}/access-keys", tag = "admin",
    security(("token" = [])), params(("id" = i64, Path)), request_body = AccessKeyInput,
    responses((status = 201, body = CreatedAccessKeyView), (status = 400, body = ErrorBody),
        (status = 404, body = ErrorBody)))]
pub async fn create_user_access_key(
    state: web::Data<AppState>,
    id: web::Path<i64>,
    body: web::Json<AccessKeyInput>,
) -> Result<HttpResponse, ApiError> {
    let user_id = existing_user(&state, id.into_inner()).await?;
    let created = access_keys::create(&state, user_id, &body).await?;
    Ok(HttpResponse::Created().json(created))
}

/// Change the name or limits of any access key.
#[utoipa::path(patch, path = "/v1/admin/access-keys/{id}", tag = "admin",
    security(("token" = [])), params(("id" = i64, Path)), request_body = AccessKeyInput,
    responses((status = 200, body = AccessKeyView), (status = 400, body = ErrorBody),
        (status = 404, body = ErrorBody)))]
pub async fn update_access_key(
    state: web::Data<AppState>,
    id: web::Path<i64>,
    body: web::Json<AccessKeyInput>,
) -> Result<HttpResponse, ApiError> {
    let key = access_keys::update(&state, None, id.into_inner(), &body).await?;
    Ok(HttpResponse::Ok().json(key))
}

/// A user's own limits (over all the user's keys together).
#[utoipa::path(get, path = "/v1/admin/users/{id}/limits", tag = "admin",
    security(("token" = [])), params(("id" = i64, Path)),
    responses((status = 200, body = LimitsView), (status = 404, body = ErrorBody)))]
pub async fn get_user_limits(
    state: web::Data<AppState>,
    id: web::Path<i64>,
) -> Result<HttpResponse, ApiError> {
    let user_id = existing_user(&state, id.into_inner()).await?;
    let values = stored(&state, Scope::User, user_id).await?;
    Ok(HttpResponse::Ok().json(LimitsView::from(&values)))
}

/// Change a user's limits (a limit left out stays, `null` removes it).
#[utoipa::path(put, path = "/v1/admin/users/{id}/limits", tag = "admin",
    security(("token" = [])), params(("id" = i64, Path)), request_body = LimitsInput,
    responses((status = 200, body = LimitsView), (status = 400, body = ErrorBody),
        (status = 404, body = ErrorBody)))]
pub async fn set_user_limits(
    state: web::Data<AppState>,
    id: web::Path<i64>,
    body: web::Json<LimitsInput>,
) -> Result<HttpResponse, ApiError> {
    let user_id = existing_user(&state, id.into_inner()).await?;
    let values = change(&state, Scope::User, user_id, Some(user_id), &body).await?;
    state.key_cache.forget_user(user_id);
    Ok(HttpResponse::Ok().json(LimitsView::from(&values)))
}

/// A model's limits, over all users together.
#[utoipa::path(get, path = "/v1/admin/models/{id}/limits", tag = "admin",
    security(("token" = [])), params(("id" = i64, Path)),
    responses((status = 200, body = LimitsView), (status = 404, body = ErrorBody)))]
pub async fn get_model_limits(
    state: web::Data<AppState>,
    id: web::Path<i64>,
) -> Result<HttpResponse, ApiError> {
    let model_id = existing_model(&state, id.into_inner()).await?;
    let values = stored(&state, Scope::Model, model_id).await?;
    Ok(HttpResponse::Ok().json(LimitsView::from(&values)))
}

/// Change a model's limits: requests, tokens and calls in flight of all users together.
#[utoipa::path(put, path = "/v1/admin/models/{id}/limits", tag = "admin",
    security(("token" = [])), params(("id" = i64, Path)), request_body = LimitsInput,
    responses((status = 200, body = LimitsView), (status = 400, body = ErrorBody),
        (status = 404, body = ErrorBody)))]
pub async fn set_model_limits(
    state: web::Data<AppState>,
    id: web::Path<i64>,
    body: web::Json<LimitsInput>,
) -> Result<HttpResponse, ApiError> {
    let model_id = existing_model(&state, id.into_inner()).await?;
    let values = change(&state, Scope::Model, model_id, None, &body).await?;
    Ok(HttpResponse::Ok().json(LimitsView::from(&values)))
}

/// The platform default: the limits of every access key without a value of its own, and the
/// pending jobs per user.
#[utoipa::path(get, path = "/v1/admin/limits", tag = "admin", security(("token" = [])),
    responses((status = 200, body = LimitsView)))]
pub async fn get_platform_limits(state: web::Data<AppState>) -> Result<HttpResponse, ApiError> {
    let values = stored(&state, Scope::Platform, 0).await?;
    Ok(HttpResponse::Ok().json(LimitsView::from(&values)))
}

/// Change the platform default (a limit left out stays, `null` removes it).
#[utoipa::path(put, path = "/v1/admin/limits", tag = "admin", security(("token" = [])),
    request_body = LimitsInput,
    responses((status = 200, body = LimitsView), (status = 400, body = ErrorBody)))]
pub async fn set_platform_limits(
    state: web::Data<AppState>,
    body: web::Json<LimitsInput>,
) -> Result<HttpResponse, ApiError> {
    let values = change(&state, Scope::Platform, 0, None, &body).await?;
    Ok(HttpResponse::Ok().json(LimitsView::from(&values)))
}

async fn stored(state: &AppState, scope: Scope, subject: i64) -> Result<LimitValues, ApiError> {
    let mut conn = state.conn().await?;
    Ok(persistence::limits::load(&mut conn, &[(scope, subject)])
        .await?
        .into_iter()
        .next()
        .map(|(_, _, values)| values)
        .unwrap_or_default())
}

async fn change(
    state: &AppState,
    scope: Scope,
    subject: i64,
    owner: Option<i64>,
    input: &LimitsInput,
) -> Result<LimitValues, ApiError> {
    let next = input.apply(&stored(state, scope, subject).await?, scope)?;
    let mut conn = state.conn().await?;
    persistence::limits::set(&mut conn, scope, subject, owner, &next).await?;
    Ok(next)
}

async fn existing_user(state: &AppState, id: i64) -> Result<i64, ApiError> {
    let mut conn = state.conn().await?;
    match persistence::users::find(&mut conn, id).await {
        Ok(user) => Ok(user.id),
        Err(persistence::StoreError::NotFound) => {
            Err(ApiError::NotFound("user not found".to_owned()))
        }
        Err(error) => Err(error.into()),
    }
}

async fn existing_model(state: &AppState, id: i64) -> Result<i64, ApiError> {
    let mut conn = state.conn().await?;
    match persistence::catalog::find_model(&mut conn, id).await {
        Ok(model) => Ok(model.id),
        Err(persistence::StoreError::NotFound) => {
            Err(ApiError::NotFound("model not found".to_owned()))
        }
        Err(error) => Err(error.into()),
    }
}
