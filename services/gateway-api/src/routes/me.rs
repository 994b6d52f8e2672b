//! `/v1/me`: the signed-in user's profile, access keys, orders, ledger and usage.

use actix_web::{HttpResponse, web};
use domain::Money;
use serde::Deserialize;
use utoipa::ToSchema;

use crate::auth::SessionUser;
use crate::core::access_keys::AccessKeyInput;
use crate::core::statistics::{self, SpendView};
use crate::core::{access_keys, orders, webhook_secrets};
use crate::error::{ApiError, ErrorBody};
use crate::state::AppState;
use crate::views::{
    AccessKeyView, CreatedAccessKeyView, LedgerEntryView, ListQuery, ListResponse, OrderView,
    SpendQuery, UsageLogView, UserView, WebhookSecretStatusView, WebhookSecretView,
};

pub fn configure(cfg: &mut web::ServiceConfig) {
    cfg.route("/v1/me", web::get().to(me))
        .route("/v1/me/access-keys", web::post().to(create_access_key))
        .route("/v1/me/access-keys", web::get().to(list_access_keys))
        .route(
            "/v1/me/access-keys/{id}",
            web::delete().to(revoke_access_key),
        )
        .route(
            "/v1/me/webhook-secret",
            web::post().to(rotate_webhook_secret),
        )
        .route("/v1/me/webhook-secret", web::get().to(webhook_secret))
        .route("/v1/me/orders", web::post().to(create_order))
        .route("/v1/me/orders", web::get().to(list_orders))
        .route("/v1/me/ledger", web::get().to(ledger))
        .route("/v1/me/usage", web::get().to(usage))
        .route("/v1/me/spend", web::get().to(spend));
}

/// The signed-in user, with the current balance.
#[utoipa::path(get, path = "/v1/me", tag = "me", security(("token" = [])),
    responses((status = 200, body = UserView), (status = 401, body = ErrorBody)))]
pub async fn me(session: SessionUser) -> HttpResponse {
    HttpResponse::Ok().json(UserView::from(session.0))
}

/// Mint an access key for model calls; the secret is in this response only.
#[utoipa::path(post, path = "/v1/me/access-keys", tag = "me", security(("token" = [])),
    request_body = AccessKeyInput,
    responses((status = 201, body = CreatedAccessKeyView), (status = 400, body = ErrorBody)))]
pub async fn create_access_key(
    state: web::Data<AppState>,
    session: SessionUser,
    body: web::Json<AccessKeyInput>,
) -> Result<HttpResponse, ApiError> {
    let created = access_keys::create(&state, session.0.id, &body).await?;
    Ok(HttpResponse::Created().json(created))
}

/// The user's access keys, never their secrets.
#[utoipa::path(get, path = "/v1/me/access-keys", tag = "me", security(("token" = [])),
    params(ListQuery), responses((status = 200, body = ListResponse<AccessKeyView>)))]
pub async fn list_access_keys(
    state: web::Data<AppState>,
    session: SessionUser,
    query: web::Query<ListQuery>,
) -> Result<HttpResponse, ApiError> {
    let page = query.page()?;
    let keys = access_keys::list(&state, session.0.id, page).await?;
    Ok(HttpResponse::Ok().json(ListResponse::from_page(keys, page, Ok)?))
}

/// Revoke a key at once; another user's key answers 404.
#[utoipa::path(delete, path = "/v1/me/access-keys/{id}", tag = "me", security(("token" = [])),
    params(("id" = i64, Path)),
    responses((status = 204), (status = 404, body = ErrorBody)))]
pub async fn revoke_access_key(
    state: web::Data<AppState>,
    session: SessionUser,
    id: web::Path<i64>,
) -> Result<HttpResponse, ApiError> {
    access_keys::revoke(&state, session.0.id, id.into_inner()).await?;
    Ok(HttpResponse::NoContent().finish())
}

/// Create or rotate the signing secret of the user's job webhooks. The secret is in this
/// response only; the one before stops signing at once (webhooks still queued are signed with
/// the new one when they are sent).
#[utoipa::path(post, path = "/v1/me/webhook-secret", tag = "me", security(("token" = [])),
    responses((status = 201, body = WebhookSecretView), (status = 401, body = ErrorBody)))]
pub async fn rotate_webhook_secret(
    state: web::Data<AppState>,
    session: SessionUser,
) -> Result<HttpResponse, ApiError> {
    let (secret, created_at) = webhook_secrets::rotate(&state, session.0.id).await?;
    Ok(HttpResponse::Created().json(WebhookSecretView { secret, created_at }))
}

/// Whether the user has a webhook signing secret, and since when; never the secret.
#[utoipa::path(get, path = "/v1/me/webhook-secret", tag = "me", security(("token" = [])),
    responses((status = 200, body = WebhookSecretStatusView), (status = 401, body = ErrorBody)))]
pub async fn webhook_secret(
    state: web::Data<AppState>,
    session: SessionUser,
) -> Result<HttpResponse, ApiError> {
    let created_at = webhook_secrets::created_at(&state, session.0.id).await?;
    Ok(HttpResponse::Ok().json(WebhookSecretStatusView {
        exists: created_at.is_some(),
        created_at,
    }))
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateOrder {
    /// More than 0, at most the configured maximum, at most 2 decimals.
    #[schema(value_type = String, example = "100.00")]
    pub amount: Money,
}

/// Open a top-up order (PENDING until paid).
#[utoipa::path(post, path = "/v1/me/orders", tag = "orders", security(("token" = [])),
    request_body = CreateOrder,
    responses((status = 201, body = OrderView), (status = 400, body = ErrorBody)))]
pub async fn create_order(
    state: web::Data<AppState>,
    session: SessionUser,
    body: web::Json<CreateOrder>,
) -> Result<HttpResponse, ApiError> {
    let order = orders::create(&state, session.0.id, &body.amount).await?;
    Ok(HttpResponse::Created().json(OrderView::from(order)))
}

/// The user's own orders, newest first.
#[utoipa::path(get, path = "/v1/me/orders", tag = "orders", security(("token" = [])),
    params(ListQuery), responses((status = 200, body = ListResponse<OrderView>)))]
pub async fn list_orders(
    state: web::Data<AppState>,
    session: SessionUser,
    query: web::Query<ListQuery>,
) -> Result<HttpResponse, ApiError> {
    let page = query.page()?;
    let list = orders::list(&state, Some(session.0.id), page).await?;
    Ok(
        HttpResponse::Ok().json(ListResponse::from_page(list, page, |o| {
            Ok(OrderView::from(o))
        })?),
    )
}

/// Every change of the user's balance, newest first.
#[utoipa::path(get, path = "/v1/me/ledger", tag = "me", security(("token" = [])),
    params(ListQuery), responses((status = 200, body = ListResponse<LedgerEntryView>)))]
pub async fn ledger(
    state: web::Data<AppState>,
    session: SessionUser,
    query: web::Query<ListQuery>,
) -> Result<HttpResponse, ApiError> {
    let page = query.page()?;
    let mut conn = state.conn().await?;
    let list = persistence::ledger::list_for_user(&mut conn, session.0.id, page).await?;
    Ok(
        HttpResponse::Ok().json(ListResponse::from_page(list, page, |e| {
            Ok(LedgerEntryView::from(e))
        })?),
    )
}

/// The user's billed calls, newest first, optionally filtered by key, model, time and status.
#[utoipa::path(get, path = "/v1/me/usage", tag = "me", security(("token" = [])),
    params(statistics::UsageQuery), responses((status = 200, body = ListResponse<UsageLogView>),
        (status = 400, body = ErrorBody, description = "a bad filter: an unparseable time, from not before to, an unknown status, or another user's access key")))]
pub async fn usage(
    state: web::Data<AppState>,
    session: SessionUser,
    query: web::Query<statistics::UsageQuery>,
) -> Result<HttpResponse, ApiError> {
    let (list, page) = statistics::usage(&state, Some(session.0.id), query.into_inner()).await?;
    Ok(
        HttpResponse::Ok().json(ListResponse::from_page(list, page, |u| {
            Ok(UsageLogView::from(u))
        })?),
    )
}

/// What the user spent per UTC day, per model, and per day and model, over a range of days.
#[utoipa::path(get, path = "/v1/me/spend", tag = "me", security(("token" = [])),
    params(SpendQuery), responses((status = 200, body = SpendView),
        (status = 400, body = ErrorBody, description = "a bad date, from after to, or more than 366 days")))]
pub async fn spend(
    state: web::Data<AppState>,
    session: SessionUser,
    query: web::Query<SpendQuery>,
) -> Result<HttpResponse, ApiError> {
    let spend = statistics::spend(&state, session.0.id, query.from, query.to).await?;
    Ok(HttpResponse::Ok().json(spend))
}
