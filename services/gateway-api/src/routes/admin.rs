//! `/v1/admin`: users, balances, providers, provider keys, models, and the global lists.

use actix_web::middleware::from_fn;
use actix_web::{HttpResponse, web};
use domain::{ModelKind, Money, Pricing, Role, UserStatus};
use persistence::catalog::{ModelRouteChanges, ProviderChanges, ProviderKeyChanges};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::auth::AdminUser;
use crate::core::catalog::{
    self, ModelInput, ModelRouteInput, ModelUpdate, ProviderInput, ProviderKeyInput,
    ProviderKeyTest,
};
use crate::core::statistics::{self, OverviewView};
use crate::core::{identity, orders, users};
use crate::error::{ApiError, ErrorBody};
use crate::middleware::{reload_routes_after_write, require_admin};
use crate::state::AppState;
use crate::views::{
    AdminListQuery, LedgerEntryView, ListQuery, ListResponse, ModelRouteView, ModelView, OrderView,
    OverrunView, OverviewQuery, ProviderKeyView, ProviderView, UsageLogView, UserView,
};

pub fn configure(cfg: &mut web::ServiceConfig) {
    // The role is checked by a middleware, before the handlers' extractors: those run
    // concurrently, so a bad body, path or query would otherwise answer a non-admin 400, not 403.
    let admin = |path: &str| web::resource(path).wrap(from_fn(require_admin));
    // Catalog writes also reload this replica's routes and key pools, so a model or key is
    // callable the moment the admin call returns.
    let catalog = |path: &str| {
        web::resource(path)
            .wrap(from_fn(reload_routes_after_write))
            .wrap(from_fn(require_admin))
    };
    cfg.service(
        admin("/v1/admin/users")
            .route(web::get().to(list_users))
            .route(web::post().to(create_user)),
    )
    .service(
        admin("/v1/admin/users/{id}")
            .route(web::get().to(get_user))
            .route(web::patch().to(update_user))
            .route(web::delete().to(disable_user)),
    )
    .service(
        admin("/v1/admin/users/{id}/balance-adjustments").route(web::post().to(adjust_balance)),
    )
    .service(
        catalog("/v1/admin/providers")
            .route(web::get().to(list_providers))
            .route(web::post().to(create_provider)),
    )
    .service(
        catalog("/v1/admin/providers/{id}")
            .route(web::get().to(get_provider))
            .route(web::patch().to(update_provider))
            .route(web::delete().to(delete_provider)),
    )
    .service(
        catalog("/v1/admin/providers/{id}/keys")
            .route(web::get().to(list_provider_keys))
            .route(web::post().to(create_provider_key)),
    )
    .service(
        catalog("/v1/admin/provider-keys/{id}")
            .route(web::patch().to(update_provider_key))
            .route(web::delete().to(delete_provider_key)),
    )
    .service(
        catalog("/v1/admin/models")
            .route(web::get().to(list_models))
            .route(web::post().to(create_model)),
    )
    .service(
        catalog("/v1/admin/models/{id}")
            .route(web::get().to(get_model))
            .route(web::patch().to(update_model))
            .route(web::delete().to(delete_model)),
    )
    .service(
        catalog("/v1/admin/models/{id}/routes")
            .route(web::get().to(list_model_routes))
            .route(web::post().to(create_model_route)),
    )
    .service(
        catalog("/v1/admin/model-routes/{id}")
            .route(web::patch().to(update_model_route))
            .route(web::delete().to(delete_model_route)),
    )
    .service(admin("/v1/admin/orders").route(web::get().to(list_orders)))
    .service(admin("/v1/admin/usage-logs").route(web::get().to(list_usage_logs)))
    .service(admin("/v1/admin/overview").route(web::get().to(overview)))
    .service(admin("/v1/admin/provider-keys/{id}/test").route(web::post().to(test_provider_key)))
    .service(admin("/v1/admin/overruns").route(web::get().to(list_overruns)));
}

// ---- users

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateUser {
    pub email: String,
    pub password: String,
    /// Defaults to `user`.
    pub role: Option<Role>,
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct UpdateUser {
    pub role: Option<Role>,
    pub status: Option<UserStatus>,
    pub password: Option<String>,
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct BalanceAdjustment {
    /// Signed: positive credits, negative debits; the balance never goes below zero.
    #[schema(value_type = String, example = "-5.25")]
    pub amount: Money,
    pub reason: String,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct BalanceAdjustmentResult {
    pub user: UserView,
    pub ledger_entry: LedgerEntryView,
}

/// All users, newest first.
#[utoipa::path(get, path = "/v1/admin/users", tag = "admin", security(("token" = [])),
    params(ListQuery), responses((status = 200, body = ListResponse<UserView>), (status = 403, body = ErrorBody)))]
pub async fn list_users(
    state: web::Data<AppState>,
    _admin: AdminUser,
    query: web::Query<ListQuery>,
) -> Result<HttpResponse, ApiError> {
    let page = query.page()?;
    let list = users::list(&state, page).await?;
    Ok(
        HttpResponse::Ok().json(ListResponse::from_page(list, page, |u| {
            Ok(UserView::from(u))
        })?),
    )
}

/// Create a user (or another admin).
#[utoipa::path(post, path = "/v1/admin/users", tag = "admin", security(("token" = [])),
    request_body = CreateUser,
    responses((status = 201, body = UserView), (status = 400, body = ErrorBody), (status = 409, body = ErrorBody)))]
pub async fn create_user(
    state: web::Data<AppState>,
    _admin: AdminUser,
    body: web::Json<CreateUser>,
) -> Result<HttpResponse, ApiError> {
    let mut conn = state.conn().await?;
    let role = body.role.unwrap_or(Role::User);
    let user = identity::create_user(&state, &mut conn, &body.email, &body.password, role).await?;
    Ok(HttpResponse::Created().json(UserView::from(user)))
}

#[utoipa::path(get, path = "/v1/admin/users/{id}", tag = "admin", security(("token" = [])),
    params(("id" = i64, Path)), responses((status = 200, body = UserView), (status = 404, body = ErrorBody)))]
pub async fn get_user(
    state: web::Data<AppState>,
    _admin: AdminUser,
    id: web::Path<i64>,
) -> Result<HttpResponse, ApiError> {
    Ok(HttpResponse::Ok().json(UserView::from(users::get(&state, *id).await?)))
}

/// Change a user's role, status or password.
#[utoipa::path(patch, path = "/v1/admin/users/{id}", tag = "admin", security(("token" = [])),
    params(("id" = i64, Path)), request_body = UpdateUser,
    responses((status = 200, body = UserView), (status = 404, body = ErrorBody), (status = 409, body = ErrorBody)))]
pub async fn update_user(
    state: web::Data<AppState>,
    admin: AdminUser,
    id: web::Path<i64>,
    body: web::Json<UpdateUser>,
) -> Result<HttpResponse, ApiError> {
    let body = body.into_inner();
    let update = users::UserUpdate {
        role: body.role,
        status: body.status,
        password: body.password,
    };
    let user = users::update(&state, admin.0.id, *id, update).await?;
    Ok(HttpResponse::Ok().json(UserView::from(user)))
}

/// Disable a user (history stays; their keys stop working at once).
#[utoipa::path(delete, path = "/v1/admin/users/{id}", tag = "admin", security(("token" = [])),
    params(("id" = i64, Path)), responses((status = 204), (status = 404, body = ErrorBody)))]
pub async fn disable_user(
    state: web::Data<AppState>,
    admin: AdminUser,
    id: web::Path<i64>,
) -> Result<HttpResponse, ApiError> {
    let update = users::UserUpdate {
        role: None,
        status: Some(UserStatus::Disabled),
        password: None,
    };
    users::update(&state, admin.0.id, *id, update).await?;
    Ok(HttpResponse::NoContent().finish())
}

/// Credit or debit a balance by hand, with its ledger row, in one transaction.
#[utoipa::path(post, path = "/v1/admin/users/{id}/balance-adjustments", tag = "admin",
    security(("token" = [])), params(("id" = i64, Path)), request_body = BalanceAdjustment,
    responses((status = 200, body = BalanceAdjustmentResult), (status = 404, body = ErrorBody),
        (status = 409, body = ErrorBody, description = "the balance would go below zero")))]
pub async fn adjust_balance(
    state: web::Data<AppState>,
    admin: AdminUser,
    id: web::Path<i64>,
    body: web::Json<BalanceAdjustment>,
) -> Result<HttpResponse, ApiError> {
    let (user, entry) =
        users::adjust_balance(&state, admin.0.id, *id, &body.amount, &body.reason).await?;
    Ok(HttpResponse::Ok().json(BalanceAdjustmentResult {
        user: user.into(),
        ledger_entry: entry.into(),
    }))
}

// ---- providers

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateProvider {
    pub name: String,
    /// `openai` (any OpenAI-compatible endpoint: chat, image and embedding models) or `anthropic`
    /// (Anthropic's Messages API, e.g. `https://api.anthropic.com/v1`: chat models; clients
    /// still call it in OpenAI's format).
    #[schema(example = "openai")]
    pub kind: String,
    #[schema(example = "https://api.openai.com/v1")]
    pub base_url: String,
    pub enabled: Option<bool>,
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct UpdateProvider {
    pub name: Option<String>,
    pub base_url: Option<String>,
    pub enabled: Option<bool>,
}

#[utoipa::path(get, path = "/v1/admin/providers", tag = "admin", security(("token" = [])),
    params(ListQuery), responses((status = 200, body = ListResponse<ProviderView>)))]
pub async fn list_providers(
    state: web::Data<AppState>,
    _admin: AdminUser,
    query: web::Query<ListQuery>,
) -> Result<HttpResponse, ApiError> {
    let page = query.page()?;
    let list = catalog::list_providers(&state, page).await?;
    Ok(
        HttpResponse::Ok().json(ListResponse::from_page(list, page, |p| {
            Ok(ProviderView::from(p))
        })?),
    )
}

#[utoipa::path(post, path = "/v1/admin/providers", tag = "admin", security(("token" = [])),
    request_body = CreateProvider,
    responses((status = 201, body = ProviderView), (status = 400, body = ErrorBody), (status = 409, body = ErrorBody)))]
pub async fn create_provider(
    state: web::Data<AppState>,
    _admin: AdminUser,
    body: web::Json<CreateProvider>,
) -> Result<HttpResponse, ApiError> {
    let body = body.into_inner();
    let provider = catalog::create_provider(
        &state,
        ProviderInput {
            name: body.name,
            kind: body.kind,
            base_url: body.base_url,
            enabled: body.enabled.unwrap_or(true),
        },
    )
    .await?;
    Ok(HttpResponse::Created().json(ProviderView::from(provider)))
}

#[utoipa::path(get, path = "/v1/admin/providers/{id}", tag = "admin", security(("token" = [])),
    params(("id" = i64, Path)), responses((status = 200, body = ProviderView), (status = 404, body = ErrorBody)))]
pub async fn get_provider(
    state: web::Data<AppState>,
    _admin: AdminUser,
    id: web::Path<i64>,
) -> Result<HttpResponse, ApiError> {
    Ok(HttpResponse::Ok().json(ProviderView::from(
        catalog::get_provider(&state, *id).await?,
    )))
}

#[utoipa::path(patch, path = "/v1/admin/providers/{id}", tag = "admin", security(("token" = [])),
    params(("id" = i64, Path)), request_body = UpdateProvider,
    responses((status = 200, body = ProviderView), (status = 404, body = ErrorBody)))]
pub async fn update_provider(
    state: web::Data<AppState>,
    _admin: AdminUser,
    id: web::Path<i64>,
    body: web::Json<UpdateProvider>,
) -> Result<HttpResponse, ApiError> {
    let body = body.into_inner();
    let changes = ProviderChanges {
        name: body.name,
        base_url: body.base_url,
        enabled: body.enabled,
        updated_at: None,
    };
    let provider = catalog::update_provider(&state, *id, changes).await?;
    Ok(HttpResponse::Ok().json(ProviderView::from(provider)))
}

/// Delete a provider and its keys; 409 while models use it.
#[utoipa::path(delete, path = "/v1/admin/providers/{id}", tag = "admin", security(("token" = [])),
    params(("id" = i64, Path)),
    responses((status = 204), (status = 404, body = ErrorBody), (status = 409, body = ErrorBody)))]
pub async fn delete_provider(
    state: web::Data<AppState>,
    _admin: AdminUser,
    id: web::Path<i64>,
) -> Result<HttpResponse, ApiError> {
    catalog::delete_provider(&state, *id).await?;
    Ok(HttpResponse::NoContent().finish())
}

// ---- provider keys

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateProviderKey {
    /// The upstream secret; stored encrypted, never shown again.
    pub api_key: String,
    pub name: Option<String>,
    /// 0..=1000, default 1; 0 keeps the key out of rotation.
    pub weight: Option<i32>,
    pub enabled: Option<bool>,
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct UpdateProviderKey {
    pub name: Option<String>,
    pub weight: Option<i32>,
    pub enabled: Option<bool>,
}

#[utoipa::path(get, path = "/v1/admin/providers/{id}/keys", tag = "admin", security(("token" = [])),
    params(("id" = i64, Path), ListQuery),
    responses((status = 200, body = ListResponse<ProviderKeyView>), (status = 404, body = ErrorBody)))]
pub async fn list_provider_keys(
    state: web::Data<AppState>,
    _admin: AdminUser,
    id: web::Path<i64>,
    query: web::Query<ListQuery>,
) -> Result<HttpResponse, ApiError> {
    let page = query.page()?;
    let list = catalog::list_provider_keys(&state, *id, page).await?;
    Ok(
        HttpResponse::Ok().json(ListResponse::from_page(list, page, |k| {
            Ok(ProviderKeyView::from(k))
        })?),
    )
}

#[utoipa::path(post, path = "/v1/admin/providers/{id}/keys", tag = "admin", security(("token" = [])),
    params(("id" = i64, Path)), request_body = CreateProviderKey,
    responses((status = 201, body = ProviderKeyView), (status = 400, body = ErrorBody), (status = 404, body = ErrorBody)))]
pub async fn create_provider_key(
    state: web::Data<AppState>,
    _admin: AdminUser,
    id: web::Path<i64>,
    body: web::Json<CreateProviderKey>,
) -> Result<HttpResponse, ApiError> {
    let body = body.into_inner();
    let key = catalog::create_provider_key(
        &state,
        *id,
        ProviderKeyInput {
            api_key: body.api_key,
            name: body.name.unwrap_or_default(),
            weight: body.weight.unwrap_or(1),
            enabled: body.enabled.unwrap_or(true),
        },
    )
    .await?;
    Ok(HttpResponse::Created().json(ProviderKeyView::from(key)))
}

#[utoipa::path(patch, path = "/v1/admin/provider-keys/{id}", tag = "admin", security(("token" = [])),
    params(("id" = i64, Path)), request_body = UpdateProviderKey,
    responses((status = 200, body = ProviderKeyView), (status = 404, body = ErrorBody)))]
pub async fn update_provider_key(
    state: web::Data<AppState>,
    _admin: AdminUser,
    id: web::Path<i64>,
    body: web::Json<UpdateProviderKey>,
) -> Result<HttpResponse, ApiError> {
    let body = body.into_inner();
    let changes = ProviderKeyChanges {
        name: body.name,
        weight: body.weight,
        enabled: body.enabled,
        updated_at: None,
    };
    let key = catalog::update_provider_key(&state, *id, changes).await?;
    Ok(HttpResponse::Ok().json(ProviderKeyView::from(key)))
}

#[utoipa::path(delete, path = "/v1/admin/provider-keys/{id}", tag = "admin", security(("token" = [])),
    params(("id" = i64, Path)), responses((status = 204), (status = 404, body = ErrorBody)))]
pub async fn delete_provider_key(
    state: web::Data<AppState>,
    _admin: AdminUser,
    id: web::Path<i64>,
) -> Result<HttpResponse, ApiError> {
    catalog::delete_provider_key(&state, *id).await?;
    Ok(HttpResponse::NoContent().finish())
}

/// Try a provider key with the smallest request its provider serves (listing its models) and
/// say how it went; the provider's address never appears in the answer.
#[utoipa::path(post, path = "/v1/admin/provider-keys/{id}/test", tag = "admin", security(("token" = [])),
    params(("id" = i64, Path)),
    responses((status = 200, body = ProviderKeyTest), (status = 403, body = ErrorBody),
        (status = 404, body = ErrorBody)))]
pub async fn test_provider_key(
    state: web::Data<AppState>,
    _admin: AdminUser,
    id: web::Path<i64>,
) -> Result<HttpResponse, ApiError> {
    Ok(HttpResponse::Ok().json(catalog::test_provider_key(&state, *id).await?))
}

// ---- model routes

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateModelRoute {
    /// A provider that serves the model's kind.
    pub provider_id: i64,
    /// The model's name at that provider.
    pub upstream_model: String,
    /// -1000..=1000, default 0 (the model's own provider has 0); higher is tried first.
    pub priority: Option<i32>,
    /// 0..=1000, default 1 (the model's own provider has 1).
    pub weight: Option<i32>,
    pub enabled: Option<bool>,
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct UpdateModelRoute {
    pub upstream_model: Option<String>,
    pub priority: Option<i32>,
    pub weight: Option<i32>,
    pub enabled: Option<bool>,
}

/// The model's further providers (its own provider is its first route, not listed).
#[utoipa::path(get, path = "/v1/admin/models/{id}/routes", tag = "admin", security(("token" = [])),
    params(("id" = i64, Path), ListQuery),
    responses((status = 200, body = ListResponse<ModelRouteView>), (status = 404, body = ErrorBody)))]
pub async fn list_model_routes(
    state: web::Data<AppState>,
    _admin: AdminUser,
    id: web::Path<i64>,
    query: web::Query<ListQuery>,
) -> Result<HttpResponse, ApiError> {
    let page = query.page()?;
    let list = catalog::list_model_routes(&state, *id, page).await?;
    Ok(
        HttpResponse::Ok().json(ListResponse::from_page(list, page, |r| {
            Ok(ModelRouteView::from(r))
        })?),
    )
}

/// Serve the model through one more provider, under that provider's model name; calls fail over
/// across the model's providers by priority and weight, at the model's price.
#[utoipa::path(post, path = "/v1/admin/models/{id}/routes", tag = "admin", security(("token" = [])),
    params(("id" = i64, Path)), request_body = CreateModelRoute,
    responses((status = 201, body = ModelRouteView), (status = 400, body = ErrorBody),
        (status = 404, body = ErrorBody), (status = 409, body = ErrorBody)))]
pub async fn create_model_route(
    state: web::Data<AppState>,
    _admin: AdminUser,
    id: web::Path<i64>,
    body: web::Json<CreateModelRoute>,
) -> Result<HttpResponse, ApiError> {
    let body = body.into_inner();
    let route = catalog::create_model_route(
        &state,
        *id,
        ModelRouteInput {
            provider_id: body.provider_id,
            upstream_model: body.upstream_model,
            priority: body.priority.unwrap_or(0),
            weight: body.weight.unwrap_or(1),
            enabled: body.enabled.unwrap_or(true),
        },
    )
    .await?;
    Ok(HttpResponse::Created().json(ModelRouteView::from(route)))
}

#[utoipa::path(patch, path = "/v1/admin/model-routes/{id}", tag = "admin", security(("token" = [])),
    params(("id" = i64, Path)), request_body = UpdateModelRoute,
    responses((status = 200, body = ModelRouteView), (status = 400, body = ErrorBody),
        (status = 404, body = ErrorBody), (status = 409, body = ErrorBody)))]
pub async fn update_model_route(
    state: web::Data<AppState>,
    _admin: AdminUser,
    id: web::Path<i64>,
    body: web::Json<UpdateModelRoute>,
) -> Result<HttpResponse, ApiError> {
    let body = body.into_inner();
    let changes = ModelRouteChanges {
        upstream_model: body.upstream_model,
        priority: body.priority,
        weight: body.weight,
        enabled: body.enabled,
        updated_at: None,
    };
    let route = catalog::update_model_route(&state, *id, changes).await?;
    Ok(HttpResponse::Ok().json(ModelRouteView::from(route)))
}

#[utoipa::path(delete, path = "/v1/admin/model-routes/{id}", tag = "admin", security(("token" = [])),
    params(("id" = i64, Path)), responses((status = 204), (status = 404, body = ErrorBody)))]
pub async fn delete_model_route(
    state: web::Data<AppState>,
    _admin: AdminUser,
    id: web::Path<i64>,
) -> Result<HttpResponse, ApiError> {
    catalog::delete_model_route(&state, *id).await?;
    Ok(HttpResponse::NoContent().finish())
}

// ---- models

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateModel {
    /// What clients send as `model`; unique.
    #[schema(example = "gpt-4o-mini")]
    pub name: String,
    pub provider_id: i64,
    /// The provider's own name for it; defaults to `name`.
    pub upstream_model: Option<String>,
    pub kind: ModelKind,
    #[schema(value_type = crate::views::PricingSchema)]
    pub pricing: Pricing,
    /// Default 4096.
    pub max_output_tokens: Option<i32>,
    /// Prompt tokens one image part of a chat prompt may cost on this model (1..1000000),
    /// used to size the hold of calls with images. Default 1600.
    pub image_input_tokens: Option<i32>,
    pub enabled: Option<bool>,
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct UpdateModel {
    pub name: Option<String>,
    pub provider_id: Option<i64>,
    pub upstream_model: Option<String>,
    #[schema(value_type = Option<crate::views::PricingSchema>)]
    pub pricing: Option<Pricing>,
    pub max_output_tokens: Option<i32>,
    pub image_input_tokens: Option<i32>,
    pub enabled: Option<bool>,
}

#[utoipa::path(get, path = "/v1/admin/models", tag = "admin", security(("token" = [])),
    params(ListQuery), responses((status = 200, body = ListResponse<ModelView>)))]
pub async fn list_models(
    state: web::Data<AppState>,
    _admin: AdminUser,
    query: web::Query<ListQuery>,
) -> Result<HttpResponse, ApiError> {
    let page = query.page()?;
    let list = catalog::list_models(&state, page).await?;
    Ok(HttpResponse::Ok().json(ListResponse::from_page(list, page, ModelView::try_from)?))
}

/// Register a model with its pricing (validated per kind).
#[utoipa::path(post, path = "/v1/admin/models", tag = "admin", security(("token" = [])),
    request_body = CreateModel,
    responses((status = 201, body = ModelView), (status = 400, body = ErrorBody),
        (status = 404, body = ErrorBody), (status = 409, body = ErrorBody)))]
pub async fn create_model(
    state: web::Data<AppState>,
    _admin: AdminUser,
    body: web::Json<CreateModel>,
) -> Result<HttpResponse, ApiError> {
    let body = body.into_inner();
    let model = catalog::create_model(
        &state,
        ModelInput {
            upstream_model: body.upstream_model.unwrap_or_else(|| body.name.clone()),
            name: body.name,
            provider_id: body.provider_id,
            kind: body.kind,
            pricing: body.pricing,
            max_output_tokens: body.max_output_tokens.unwrap_or(4096),
            image_input_tokens: body
                .image_input_tokens
                .unwrap_or(catalog::DEFAULT_IMAGE_INPUT_TOKENS),
            enabled: body.enabled.unwrap_or(true),
        },
    )
    .await?;
    Ok(HttpResponse::Created().json(ModelView::try_from(model)?))
}

#[utoipa::path(get, path = "/v1/admin/models/{id}", tag = "admin", security(("token" = [])),
    params(("id" = i64, Path)), responses((status = 200, body = ModelView), (status = 404, body = ErrorBody)))]
pub async fn get_model(
    state: web::Data<AppState>,
    _admin: AdminUser,
    id: web::Path<i64>,
) -> Result<HttpResponse, ApiError> {
    Ok(HttpResponse::Ok().json(ModelView::try_from(catalog::get_model(&state, *id).await?)?))
}

#[utoipa::path(patch, path = "/v1/admin/models/{id}", tag = "admin", security(("token" = [])),
    params(("id" = i64, Path)), request_body = UpdateModel,
    responses((status = 200, body = ModelView), (status = 400, body = ErrorBody), (status = 404, body = ErrorBody)))]
pub async fn update_model(
    state: web::Data<AppState>,
    _admin: AdminUser,
    id: web::Path<i64>,
    body: web::Json<UpdateModel>,
) -> Result<HttpResponse, ApiError> {
    let body = body.into_inner();
    let update = ModelUpdate {
        name: body.name,
        provider_id: body.provider_id,
        upstream_model: body.upstream_model,
        pricing: body.pricing,
        max_output_tokens: body.max_output_tokens,
        image_input_tokens: body.image_input_tokens,
        enabled: body.enabled,
    };
    let model = catalog::update_model(&state, *id, update).await?;
    Ok(HttpResponse::Ok().json(ModelView::try_from(model)?))
}

#[utoipa::path(delete, path = "/v1/admin/models/{id}", tag = "admin", security(("token" = [])),
    params(("id" = i64, Path)),
    responses((status = 204), (status = 404, body = ErrorBody), (status = 409, body = ErrorBody)))]
pub async fn delete_model(
    state: web::Data<AppState>,
    _admin: AdminUser,
    id: web::Path<i64>,
) -> Result<HttpResponse, ApiError> {
    catalog::delete_model(&state, *id).await?;
    Ok(HttpResponse::NoContent().finish())
}

// ---- global lists

/// Every order, optionally of one user.
#[utoipa::path(get, path = "/v1/admin/orders", tag = "admin", security(("token" = [])),
    params(AdminListQuery), responses((status = 200, body = ListResponse<OrderView>)))]
pub async fn list_orders(
    state: web::Data<AppState>,
    _admin: AdminUser,
    query: web::Query<AdminListQuery>,
) -> Result<HttpResponse, ApiError> {
    let page = query.page()?;
    let list = orders::list(&state, query.user_id, page).await?;
    Ok(
        HttpResponse::Ok().json(ListResponse::from_page(list, page, |o| {
            Ok(OrderView::from(o))
        })?),
    )
}

/// Every billed call, optionally filtered by user, key, model, time and status.
#[utoipa::path(get, path = "/v1/admin/usage-logs", tag = "admin", security(("token" = [])),
    params(statistics::UsageQuery), responses((status = 200, body = ListResponse<UsageLogView>),
        (status = 400, body = ErrorBody), (status = 403, body = ErrorBody)))]
pub async fn list_usage_logs(
    state: web::Data<AppState>,
    _admin: AdminUser,
    query: web::Query<statistics::UsageQuery>,
) -> Result<HttpResponse, ApiError> {
    let (list, page) = statistics::usage(&state, None, query.into_inner()).await?;
    Ok(
        HttpResponse::Ok().json(ListResponse::from_page(list, page, |u| {
            Ok(UsageLogView::from(u))
        })?),
    )
}

/// The platform over time: per hour or day, billed calls and spend, calls by outcome with
/// their latency, and the deepest queues sampled; and the queue depths now.
#[utoipa::path(get, path = "/v1/admin/overview", tag = "admin", security(("token" = [])),
    params(OverviewQuery), responses((status = 200, body = OverviewView),
        (status = 400, body = ErrorBody), (status = 403, body = ErrorBody)))]
pub async fn overview(
    state: web::Data<AppState>,
    _admin: AdminUser,
    query: web::Query<OverviewQuery>,
) -> Result<HttpResponse, ApiError> {
    let overview = statistics::overview(&state, query.from, query.to, query.bucket).await?;
    Ok(HttpResponse::Ok().json(overview))
}

/// Billed calls that priced above what their reservation covered (overruns), optionally of one
/// user: each took its reservation and at most what was free of the balance beside it.
#[utoipa::path(get, path = "/v1/admin/overruns", tag = "admin", security(("token" = [])),
    params(AdminListQuery),
    responses((status = 200, body = ListResponse<OverrunView>), (status = 403, body = ErrorBody)))]
pub async fn list_overruns(
    state: web::Data<AppState>,
    _admin: AdminUser,
    query: web::Query<AdminListQuery>,
) -> Result<HttpResponse, ApiError> {
    let page = query.page()?;
    let mut conn = state.conn().await?;
    let list = persistence::usage::overruns(&mut conn, query.user_id, page).await?;
    Ok(HttpResponse::Ok().json(ListResponse::from_page(list, page, OverrunView::try_from)?))
}
