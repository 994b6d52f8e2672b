//! The admin catalog: providers, provider keys (encrypted at rest), priced models and the
//! further providers (routes) serving a model.

use domain::{ModelKind, Pricing, ProviderKind};
use persistence::catalog::{
    self, Model, ModelChanges, ModelRoute, ModelRouteChanges, NewModel, NewModelRoute, NewProvider,
    NewProviderKey, Provider, ProviderChanges, ProviderKey, ProviderKeyChanges,
};
use persistence::{Page, Paged, StoreError};

use crate::error::ApiError;
use crate::state::AppState;
use ::catalog::key_hint;

fn not_found(what: &'static str) -> impl Fn(StoreError) -> ApiError {
    move |e| match e {
        StoreError::NotFound => ApiError::NotFound(format!("{what} not found")),
        other => other.into(),
    }
}

fn check_text(field: &str, value: &str, max: usize) -> Result<(), ApiError> {
    let length = value.trim().chars().count();
    if length == 0 || length > max || value.trim() != value {
        return Err(ApiError::InvalidRequest(format!(
            "{field} must be 1 to {max} characters without surrounding spaces"
        )));
    }
    Ok(())
}

fn check_base_url(base_url: &str) -> Result<(), ApiError> {
    let parsed = url::Url::parse(base_url).map_err(|_| {
        ApiError::InvalidRequest("base_url must be an absolute http(s) URL".to_owned())
    })?;
    if !matches!(parsed.scheme(), "http" | "https")
        || parsed.host().is_none()
        || base_url.len() > 2048
    {
        return Err(ApiError::InvalidRequest(
            "base_url must be an absolute http(s) URL".to_owned(),
        ));
    }
    Ok(())
}

fn check_weight(weight: i32) -> Result<(), ApiError> {
    if !(0..=1000).contains(&weight) {
        return Err(ApiError::InvalidRequest(
            "weight must be between 0 and 1000".to_owned(),
        ));
    }
    Ok(())
}

fn check_model_name(name: &str) -> Result<(), ApiError> {
    let valid = !name.is_empty()
        && name.len() <= 128
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "._:/-@".contains(c));
    if !valid {
        return Err(ApiError::InvalidRequest(
            "name must be 1 to 128 characters of letters, digits and . _ : / - @".to_owned(),
        ));
    }
    Ok(())
}

fn check_max_output_tokens(tokens: i32) -> Result<(), ApiError> {
    if !(1..=10_000_000).contains(&tokens) {
        return Err(ApiError::InvalidRequest(
            "max_output_tokens must be between 1 and 10000000".to_owned(),
        ));
    }
    Ok(())
}

/// What a model's image part is held for unless its admin says otherwise (Anthropic's
/// largest image, above GPT-4o's 1,445; the column's default too).
pub const DEFAULT_IMAGE_INPUT_TOKENS: i32 = 1_600;

fn check_image_input_tokens(tokens: i32) -> Result<(), ApiError> {
    if !(1..=1_000_000).contains(&tokens) {
        return Err(ApiError::InvalidRequest(
            "image_input_tokens must be between 1 and 1000000".to_owned(),
        ));
    }
    Ok(())
}

fn pricing_json(pricing: &Pricing, kind: ModelKind) -> Result<serde_json::Value, ApiError> {
    pricing
        .validate(kind)
        .map_err(|e| ApiError::InvalidRequest(format!("pricing: {e}")))?;
    serde_json::to_value(pricing).map_err(|e| ApiError::Internal(format!("pricing json: {e}")))
}

/// A model of `kind` may only be sold through a provider that can serve it.
fn check_provider_serves(provider: &Provider, kind: ModelKind) -> Result<(), ApiError> {
    let provider_kind: ProviderKind = provider.kind.parse().map_err(|_| {
        ApiError::Internal(format!(
            "provider {} has kind {}",
            provider.id, provider.kind
        ))
    })?;
    if !provider_kind.serves(kind) {
        return Err(ApiError::InvalidRequest(format!(
            "provider {} is of kind {provider_kind}, which serves no {kind} models",
            provider.id
        )));
    }
    Ok(())
}

// ---- providers

pub struct ProviderInput {
    pub name: String,
    pub kind: String,
    pub base_url: String,
    pub enabled: bool,
}

pub async fn create_provider(state: &AppState, input: ProviderInput) -> Result<Provider, ApiError> {
    check_text("name", &input.name, 100)?;
    input
        .kind
        .parse::<ProviderKind>()
        .map_err(|e| ApiError::InvalidRequest(format!("kind: {e}")))?;
    check_base_url(&input.base_url)?;
    let mut conn = state.conn().await?;
    Ok(catalog::insert_provider(
        &mut conn,
        NewProvider {
            name: &input.name,
            kind: &input.kind,
            base_url: &input.base_url,
            enabled: input.enabled,
        },
    )
    .await?)
}

pub async fn list_providers(state: &AppState, page: Page) -> Result<Paged<Provider>, ApiError> {
    let mut conn = state.conn().await?;
    Ok(catalog::list_providers(&mut conn, page).await?)
}

pub async fn get_provider(state: &AppState, id: i64) -> Result<Provider, ApiError> {
    let mut conn = state.conn().await?;
    catalog::find_provider(&mut conn, id)
        .await
        .map_err(not_found("provider"))
}

pub async fn update_provider(
    state: &AppState,
    id: i64,
    changes: ProviderChanges,
) -> Result<Provider, ApiError> {
    if let Some(name) = &changes.name {
        check_text("name", name, 100)?;
    }
    if let Some(base_url) = &changes.base_url {
        check_base_url(base_url)?;
    }
    let mut conn = state.conn().await?;
    catalog::update_provider(&mut conn, id, changes)
        .await
        .map_err(not_found("provider"))
}

pub async fn delete_provider(state: &AppState, id: i64) -> Result<(), ApiError> {
    let mut conn = state.conn().await?;
    catalog::delete_provider(&mut conn, id)
        .await
        .map_err(|e| match e {
            StoreError::ForeignKey(_) => ApiError::Conflict(
                "models still use this provider; delete or move them first, or disable it"
                    .to_owned(),
            ),
            other => not_found("provider")(other),
        })
}

// ---- provider keys

pub struct ProviderKeyInput {
    pub api_key: String,
    pub name: String,
    pub weight: i32,
    pub enabled: bool,
}

pub async fn create_provider_key(
    state: &AppState,
    provider_id: i64,
    input: ProviderKeyInput,
) -> Result<ProviderKey, ApiError> {
    if input.api_key.is_empty()
        || input.api_key.len() > 4096
        || input
            .api_key
            .chars()
            .any(|c| c.is_whitespace() || c.is_control())
    {
        return Err(ApiError::InvalidRequest(
            "api_key must be 1 to 4096 characters without spaces".to_owned(),
        ));
    }
    if input.name.chars().count() > 100 {
        return Err(ApiError::InvalidRequest(
            "name must be at most 100 characters".to_owned(),
        ));
    }
    check_weight(input.weight)?;
    let sealed = state
        .secret_box
        .seal(&input.api_key)
        .map_err(|e| ApiError::Internal(e.to_string()))?;
    let mut conn = state.conn().await?;
    catalog::find_provider(&mut conn, provider_id)
        .await
        .map_err(not_found("provider"))?;
    Ok(catalog::insert_provider_key(
        &mut conn,
        NewProviderKey {
            provider_id,
            name: &input.name,
            secret_ciphertext: &sealed,
            key_hint: &key_hint(&input.api_key),
            weight: input.weight,
            enabled: input.enabled,
        },
    )
    .await?)
}

pub async fn list_provider_keys(
    state: &AppState,
    provider_id: i64,
    page: Page,
) -> Result<Paged<ProviderKey>, ApiError> {
    let mut conn = state.conn().await?;
    catalog::find_provider(&mut conn, provider_id)
        .await
        .map_err(not_found("provider"))?;
    Ok(catalog::list_provider_keys(&mut conn, provider_id, page).await?)
}

pub async fn update_provider_key(
    state: &AppState,
    id: i64,
    changes: ProviderKeyChanges,
) -> Result<ProviderKey, ApiError> {
    if let Some(weight) = changes.weight {
        check_weight(weight)?;
    }
    if changes
        .name
        .as_ref()
        .is_some_and(|n| n.chars().count() > 100)
    {
        return Err(ApiError::InvalidRequest(
            "name must be at most 100 characters".to_owned(),
        ));
    }
    let mut conn = state.conn().await?;
    catalog::update_provider_key(&mut conn, id, changes)
        .await
        .map_err(not_found("provider key"))
}

pub async fn delete_provider_key(state: &AppState, id: i64) -> Result<(), ApiError> {
    let mut conn = state.conn().await?;
    catalog::delete_provider_key(&mut conn, id)
        .await
        .map_err(not_found("provider key"))
}

/// How long a provider key test waits for the provider.
const KEY_TEST_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

/// The outcome of testing a provider key (`POST /v1/admin/provider-keys/{id}/test`).
#[derive(Debug, serde::Serialize, utoipa::ToSchema)]
pub struct ProviderKeyTest {
    /// The provider accepted the key.
    pub ok: bool,
    /// The provider's HTTP status; null when it did not answer (timeout, no connection).
    pub status: Option<u16>,
    /// How long the provider took to answer (or to fail).
    pub latency_ms: u64,
    /// Why the test failed, as a client of a model call would be told (never the provider's
    /// address); null when ok.
    pub error: Option<String>,
}

/// Lists the provider's models with the key (the cheapest request every provider kind serves:
/// no tokens), whether or not the key or provider is enabled.
pub async fn test_provider_key(state: &AppState, id: i64) -> Result<ProviderKeyTest, ApiError> {
    let (key, provider) = {
        let mut conn = state.conn().await?;
        let key = catalog::find_provider_key(&mut conn, id)
            .await
            .map_err(not_found("provider key"))?;
        let provider = catalog::find_provider(&mut conn, key.provider_id).await?;
        (key, provider)
    };
    let kind: ProviderKind = provider
        .kind
        .parse()
        .map_err(|e: domain::UnknownVariant| ApiError::Internal(e.to_string()))?;
    let api_key = state
        .secret_box
        .open(&key.secret_ciphertext)
        .map_err(|e| ApiError::Internal(format!("opening provider key {id}: {e}")))?;
    let target = upstream::Target {
        kind,
        base_url: provider.base_url,
        api_key,
        upstream_model: String::new(),
        public_model: String::new(),
    };
    let started = std::time::Instant::now();
    let outcome = state.upstream.list_models(&target, KEY_TEST_TIMEOUT).await;
    let latency_ms = u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX);
    Ok(match outcome {
        Ok(status) => ProviderKeyTest {
            ok: true,
            status: Some(status),
            latency_ms,
            error: None,
        },
        Err(error) => ProviderKeyTest {
            ok: false,
            status: error.provider_status(),
            latency_ms,
            error: Some(crate::core::call::upstream_error(error).to_string()),
        },
    })
}

// ---- models

pub struct ModelInput {
    pub name: String,
    pub provider_id: i64,
    pub upstream_model: String,
    pub kind: ModelKind,
    pub pricing: Pricing,
    pub max_output_tokens: i32,
    pub image_input_tokens: i32,
    pub enabled: bool,
}

pub async fn create_model(state: &AppState, input: ModelInput) -> Result<Model, ApiError> {
    check_model_name(&input.name)?;
    check_text("upstream_model", &input.upstream_model, 256)?;
    check_max_output_tokens(input.max_output_tokens)?;
    check_image_input_tokens(input.image_input_tokens)?;
    let pricing = pricing_json(&input.pricing, input.kind)?;
    let mut conn = state.conn().await?;
    let provider = catalog::find_provider(&mut conn, input.provider_id)
        .await
        .map_err(not_found("provider"))?;
    check_provider_serves(&provider, input.kind)?;
    Ok(catalog::insert_model(
        &mut conn,
        NewModel {
            name: &input.name,
            provider_id: input.provider_id,
            upstream_model: &input.upstream_model,
            kind: input.kind.as_str(),
            pricing,
            max_output_tokens: input.max_output_tokens,
            image_input_tokens: input.image_input_tokens,
            enabled: input.enabled,
        },
    )
    .await?)
}

pub async fn list_models(state: &AppState, page: Page) -> Result<Paged<Model>, ApiError> {
    let mut conn = state.conn().await?;
    Ok(catalog::list_models(&mut conn, page).await?)
}

pub async fn get_model(state: &AppState, id: i64) -> Result<Model, ApiError> {
    let mut conn = state.conn().await?;
    catalog::find_model(&mut conn, id)
        .await
        .map_err(not_found("model"))
}

pub struct ModelUpdate {
    pub name: Option<String>,
    pub provider_id: Option<i64>,
    pub upstream_model: Option<String>,
    pub pricing: Option<Pricing>,
    pub max_output_tokens: Option<i32>,
    pub image_input_tokens: Option<i32>,
    pub enabled: Option<bool>,
}

pub async fn update_model(
    state: &AppState,
    id: i64,
    update: ModelUpdate,
) -> Result<Model, ApiError> {
    if let Some(name) = &update.name {
        check_model_name(name)?;
    }
    if let Some(upstream) = &update.upstream_model {
        check_text("upstream_model", upstream, 256)?;
    }
    if let Some(tokens) = update.max_output_tokens {
        check_max_output_tokens(tokens)?;
    }
    if let Some(tokens) = update.image_input_tokens {
        check_image_input_tokens(tokens)?;
    }
    let mut conn = state.conn().await?;
    let current = catalog::find_model(&mut conn, id)
        .await
        .map_err(not_found("model"))?;
    let kind: ModelKind = current
        .kind
        .parse()
        .map_err(|_| ApiError::Internal(format!("model {id} has kind {}", current.kind)))?;
    let pricing = match &update.pricing {
        Some(pricing) => Some(pricing_json(pricing, kind)?),
        None => None,
    };
    if let Some(provider_id) = update.provider_id {
        let provider = catalog::find_provider(&mut conn, provider_id)
            .await
            .map_err(not_found("provider"))?;
        check_provider_serves(&provider, kind)?;
    }
    let changes = ModelChanges {
        name: update.name,
        provider_id: update.provider_id,
        upstream_model: update.upstream_model,
        pricing,
        max_output_tokens: update.max_output_tokens,
        image_input_tokens: update.image_input_tokens,
        enabled: update.enabled,
        updated_at: None,
    };
    catalog::update_model(&mut conn, id, changes)
        .await
        .map_err(not_found("model"))
}

pub async fn delete_model(state: &AppState, id: i64) -> Result<(), ApiError> {
    let mut conn = state.conn().await?;
    catalog::delete_model(&mut conn, id)
        .await
        .map_err(|e| match e {
            StoreError::ForeignKey(_) => ApiError::Conflict(
                "jobs reference this model; disable it instead of deleting it".to_owned(),
            ),
            other => not_found("model")(other),
        })
}

pub async fn list_enabled_models(state: &AppState) -> Result<Vec<Model>, ApiError> {
    let mut conn = state.conn().await?;
    Ok(catalog::list_enabled_models(&mut conn).await?)
}

// ---- model routes

pub struct ModelRouteInput {
    pub provider_id: i64,
    pub upstream_model: String,
    pub priority: i32,
    pub weight: i32,
    pub enabled: bool,
}

fn check_priority(priority: i32) -> Result<(), ApiError> {
    if !(-1000..=1000).contains(&priority) {
        return Err(ApiError::InvalidRequest(
            "priority must be between -1000 and 1000".to_owned(),
        ));
    }
    Ok(())
}

/// Adds a provider to a model; the provider must serve the model's kind. What users pay stays
/// the model's price.
pub async fn create_model_route(
    state: &AppState,
    model_id: i64,
    input: ModelRouteInput,
) -> Result<ModelRoute, ApiError> {
    check_text("upstream_model", &input.upstream_model, 256)?;
    check_priority(input.priority)?;
    check_weight(input.weight)?;
    let mut conn = state.conn().await?;
    let model = catalog::find_model(&mut conn, model_id)
        .await
        .map_err(not_found("model"))?;
    let kind: ModelKind = model
        .kind
        .parse()
        .map_err(|_| ApiError::Internal(format!("model {model_id} has kind {}", model.kind)))?;
    let provider = catalog::find_provider(&mut conn, input.provider_id)
        .await
        .map_err(not_found("provider"))?;
    check_provider_serves(&provider, kind)?;
    catalog::insert_model_route(
        &mut conn,
        NewModelRoute {
            model_id,
            provider_id: input.provider_id,
            upstream_model: &input.upstream_model,
            priority: input.priority,
            weight: input.weight,
            enabled: input.enabled,
        },
    )
    .await
    .map_err(|error| match error {
        StoreError::Unique(_) => ApiError::Conflict(
            "this model already has a route to this provider and upstream model".to_owned(),
        ),
        other => other.into(),
    })
}

pub async fn list_model_routes(
    state: &AppState,
    model_id: i64,
    page: Page,
) -> Result<Paged<ModelRoute>, ApiError> {
    let mut conn = state.conn().await?;
    catalog::find_model(&mut conn, model_id)
        .await
        .map_err(not_found("model"))?;
    Ok(catalog::list_model_routes(&mut conn, model_id, page).await?)
}

pub async fn update_model_route(
    state: &AppState,
    id: i64,
    changes: ModelRouteChanges,
) -> Result<ModelRoute, ApiError> {
    if let Some(upstream_model) = &changes.upstream_model {
        check_text("upstream_model", upstream_model, 256)?;
    }
    if let Some(priority) = changes.priority {
        check_priority(priority)?;
    }
    if let Some(weight) = changes.weight {
        check_weight(weight)?;
    }
    let mut conn = state.conn().await?;
    catalog::update_model_route(&mut conn, id, changes)
        .await
        .map_err(|error| match error {
            StoreError::Unique(_) => ApiError::Conflict(
                "this model already has a route to this provider and upstream model".to_owned(),
            ),
            other => not_found("model route")(other),
        })
}

pub async fn delete_model_route(state: &AppState, id: i64) -> Result<(), ApiError> {
    let mut conn = state.conn().await?;
    catalog::delete_model_route(&mut conn, id)
        .await
        .map_err(not_found("model route"))
}
