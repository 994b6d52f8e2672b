//! The admin catalog: providers, their (encrypted) keys, the models sold with their pricing, and
//! the further providers (routes) that serve a model.

use chrono::{DateTime, Utc};
use diesel::prelude::*;
use diesel_async::{AsyncPgConnection, RunQueryDsl};

use crate::schema::{llm_models, model_routes, provider_keys, providers};
use crate::{Page, Paged, StoreError};

#[derive(Debug, Clone, Queryable, Selectable)]
#[diesel(table_name = providers)]
pub struct Provider {
    pub id: i64,
    pub name: String,
    pub kind: String,
    pub base_url: String,
    pub enabled: bool,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

#[derive(Debug, Insertable)]
#[diesel(table_name = providers)]
pub struct NewProvider<'a> {
    pub name: &'a str,
    pub kind: &'a str,
    pub base_url: &'a str,
    pub enabled: bool,
}

#[derive(Debug, Default, AsChangeset)]
#[diesel(table_name = providers)]
pub struct ProviderChanges {
    pub name: Option<String>,
    pub base_url: Option<String>,
    pub enabled: Option<bool>,
    pub updated_at: Option<DateTime<Utc>>,
}

#[derive(Debug, Clone, Queryable, Selectable)]
#[diesel(table_name = provider_keys)]
pub struct ProviderKey {
    pub id: i64,
    pub provider_id: i64,
    pub name: String,
    pub secret_ciphertext: Vec<u8>,
    pub key_hint: String,
    pub weight: i32,
    pub enabled: bool,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

#[derive(Debug, Insertable)]
#[diesel(table_name = provider_keys)]
pub struct NewProviderKey<'a> {
    pub provider_id: i64,
    pub name: &'a str,
    pub secret_ciphertext: &'a [u8],
    pub key_hint: &'a str,
    pub weight: i32,
    pub enabled: bool,
}

#[derive(Debug, Default, AsChangeset)]
#[diesel(table_name = provider_keys)]
pub struct ProviderKeyChanges {
    pub name: Option<String>,
    pub weight: Option<i32>,
    pub enabled: Option<bool>,
    pub updated_at: Option<DateTime<Utc>>,
}

#[derive(Debug, Clone, Queryable, Selectable)]
#[diesel(table_name = llm_models)]
pub struct Model {
    pub id: i64,
    pub name: String,
    pub provider_id: i64,
    pub upstream_model: String,
    pub kind: String,
    pub pricing: serde_json::Value,
    pub max_output_tokens: i32,
    pub enabled: bool,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    /// Prompt tokens one image part of a chat prompt may cost (sizes the hold).
    pub image_input_tokens: i32,
}

#[derive(Debug, Insertable)]
#[diesel(table_name = llm_models)]
pub struct NewModel<'a> {
    pub name: &'a str,
    pub provider_id: i64,
    pub upstream_model: &'a str,
    pub kind: &'a str,
    pub pricing: serde_json::Value,
    pub max_output_tokens: i32,
    pub enabled: bool,
    pub image_input_tokens: i32,
}

#[derive(Debug, Default, AsChangeset)]
#[diesel(table_name = llm_models)]
pub struct ModelChanges {
    pub name: Option<String>,
    pub provider_id: Option<i64>,
    pub upstream_model: Option<String>,
    pub pricing: Option<serde_json::Value>,
    pub max_output_tokens: Option<i32>,
    pub enabled: Option<bool>,
    pub image_input_tokens: Option<i32>,
    pub updated_at: Option<DateTime<Utc>>,
}

/// Another provider serving a model, under its own upstream name.
#[derive(Debug, Clone, Queryable, Selectable)]
#[diesel(table_name = model_routes)]
pub struct ModelRoute {
    pub id: i64,
    pub model_id: i64,
    pub provider_id: i64,
    pub upstream_model: String,
    pub priority: i32,
    pub weight: i32,
    pub enabled: bool,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

#[derive(Debug, Insertable)]
#[diesel(table_name = model_routes)]
pub struct NewModelRoute<'a> {
    pub model_id: i64,
    pub provider_id: i64,
    pub upstream_model: &'a str,
    pub priority: i32,
    pub weight: i32,
    pub enabled: bool,
}

#[derive(Debug, Default, AsChangeset)]
#[diesel(table_name = model_routes)]
pub struct ModelRouteChanges {
    pub upstream_model: Option<String>,
    pub priority: Option<i32>,
    pub weight: Option<i32>,
    pub enabled: Option<bool>,
    pub updated_at: Option<DateTime<Utc>>,
}

// ---- providers

pub async fn insert_provider(
    conn: &mut AsyncPgConnection,
    new: NewProvider<'_>,
) -> Result<Provider, StoreError> {
    Ok(diesel::insert_into(providers::table)
        .values(&new)
        .returning(Provider::as_returning())
        .get_result(conn)
        .await?)
}

pub async fn find_provider(conn: &mut AsyncPgConnection, id: i64) -> Result<Provider, StoreError> {
    Ok(providers::table
        .find(id)
        .select(Provider::as_select())
        .first(conn)
        .await?)
}

pub async fn list_providers(
    conn: &mut AsyncPgConnection,
    page: Page,
) -> Result<Paged<Provider>, StoreError> {
    let rows = providers::table
        .order(providers::id.desc())
        .limit(page.limit)
        .offset(page.offset)
        .select(Provider::as_select())
        .load(conn)
        .await?;
    let total = providers::table.count().get_result(conn).await?;
    Ok(Paged { rows, total })
}

pub async fn update_provider(
    conn: &mut AsyncPgConnection,
    id: i64,
    mut changes: ProviderChanges,
) -> Result<Provider, StoreError> {
    changes.updated_at = Some(Utc::now());
    Ok(diesel::update(providers::table.find(id))
        .set(&changes)
        .returning(Provider::as_returning())
        .get_result(conn)
        .await?)
}

/// Deletes a provider and its keys; refused (foreign key) while a model still uses it.
pub async fn delete_provider(conn: &mut AsyncPgConnection, id: i64) -> Result<(), StoreError> {
    let deleted = diesel::delete(providers::table.find(id))
        .execute(conn)
        .await?;
    if deleted == 0 {
        return Err(StoreError::NotFound);
    }
    Ok(())
}

// ---- provider keys

pub async fn insert_provider_key(
    conn: &mut AsyncPgConnection,
    new: NewProviderKey<'_>,
) -> Result<ProviderKey, StoreError> {
    Ok(diesel::insert_into(provider_keys::table)
        .values(&new)
        .returning(ProviderKey::as_returning())
        .get_result(conn)
        .await?)
}

pub async fn list_provider_keys(
    conn: &mut AsyncPgConnection,
    provider_id: i64,
    page: Page,
) -> Result<Paged<ProviderKey>, StoreError> {
    let rows = provider_keys::table
        .filter(provider_keys::provider_id.eq(provider_id))
        .order(provider_keys::id.desc())
        .limit(page.limit)
        .offset(page.offset)
        .select(ProviderKey::as_select())
        .load(conn)
        .await?;
    let total = provider_keys::table
        .filter(provider_keys::provider_id.eq(provider_id))
        .count()
        .get_result(conn)
        .await?;
    Ok(Paged { rows, total })
}

pub async fn find_provider_key(
    conn: &mut AsyncPgConnection,
    id: i64,
) -> Result<ProviderKey, StoreError> {
    Ok(provider_keys::table
        .find(id)
        .select(ProviderKey::as_select())
        .first(conn)
        .await?)
}

pub async fn update_provider_key(
    conn: &mut AsyncPgConnection,
    id: i64,
    mut changes: ProviderKeyChanges,
) -> Result<ProviderKey, StoreError> {
    changes.updated_at = Some(Utc::now());
    Ok(diesel::update(provider_keys::table.find(id))
        .set(&changes)
        .returning(ProviderKey::as_returning())
        .get_result(conn)
        .await?)
}

pub async fn delete_provider_key(conn: &mut AsyncPgConnection, id: i64) -> Result<(), StoreError> {
    let deleted = diesel::delete(provider_keys::table.find(id))
        .execute(conn)
        .await?;
    if deleted == 0 {
        return Err(StoreError::NotFound);
    }
    Ok(())
}

// ---- models

pub async fn insert_model(
    conn: &mut AsyncPgConnection,
    new: NewModel<'_>,
) -> Result<Model, StoreError> {
    Ok(diesel::insert_into(llm_models::table)
        .values(&new)
        .returning(Model::as_returning())
        .get_result(conn)
        .await?)
}

pub async fn find_model(conn: &mut AsyncPgConnection, id: i64) -> Result<Model, StoreError> {
    Ok(llm_models::table
        .find(id)
        .select(Model::as_select())
        .first(conn)
        .await?)
}

pub async fn list_models(
    conn: &mut AsyncPgConnection,
    page: Page,
) -> Result<Paged<Model>, StoreError> {
    let rows = llm_models::table
        .order(llm_models::id.desc())
        .limit(page.limit)
        .offset(page.offset)
        .select(Model::as_select())
        .load(conn)
        .await?;
    let total = llm_models::table.count().get_result(conn).await?;
    Ok(Paged { rows, total })
}

pub async fn update_model(
    conn: &mut AsyncPgConnection,
    id: i64,
    mut changes: ModelChanges,
) -> Result<Model, StoreError> {
    changes.updated_at = Some(Utc::now());
    Ok(diesel::update(llm_models::table.find(id))
        .set(&changes)
        .returning(Model::as_returning())
        .get_result(conn)
        .await?)
}

/// Deletes a model; refused (foreign key) while jobs reference it: disable it instead.
pub async fn delete_model(conn: &mut AsyncPgConnection, id: i64) -> Result<(), StoreError> {
    let deleted = diesel::delete(llm_models::table.find(id))
        .execute(conn)
        .await?;
    if deleted == 0 {
        return Err(StoreError::NotFound);
    }
    Ok(())
}

/// What `GET /v1/models` lists: enabled models of enabled providers.
pub async fn list_enabled_models(conn: &mut AsyncPgConnection) -> Result<Vec<Model>, StoreError> {
    Ok(llm_models::table
        .inner_join(providers::table)
        .filter(llm_models::enabled.eq(true))
        .filter(providers::enabled.eq(true))
        .order(llm_models::name.asc())
        .select(Model::as_select())
        .load(conn)
        .await?)
}

/// Everything the call path routes by: every model with its provider.
pub async fn load_routes(
    conn: &mut AsyncPgConnection,
) -> Result<Vec<(Model, Provider)>, StoreError> {
    Ok(llm_models::table
        .inner_join(providers::table)
        .select((Model::as_select(), Provider::as_select()))
        .load(conn)
        .await?)
}

/// Every enabled key of every provider (the key pools are built from these).
pub async fn load_enabled_keys(
    conn: &mut AsyncPgConnection,
) -> Result<Vec<ProviderKey>, StoreError> {
    Ok(provider_keys::table
        .filter(provider_keys::enabled.eq(true))
        .order(provider_keys::id)
        .select(ProviderKey::as_select())
        .load(conn)
        .await?)
}

// ---- model routes

pub async fn insert_model_route(
    conn: &mut AsyncPgConnection,
    new: NewModelRoute<'_>,
) -> Result<ModelRoute, StoreError> {
    Ok(diesel::insert_into(model_routes::table)
        .values(&new)
        .returning(ModelRoute::as_returning())
        .get_result(conn)
        .await?)
}

pub async fn find_model_route(
    conn: &mut AsyncPgConnection,
    id: i64,
) -> Result<ModelRoute, StoreError> {
    Ok(model_routes::table
        .find(id)
        .select(ModelRoute::as_select())
        .first(conn)
        .await?)
}

pub async fn list_model_routes(
    conn: &mut AsyncPgConnection,
    model_id: i64,
    page: Page,
) -> Result<Paged<ModelRoute>, StoreError> {
    let rows = model_routes::table
        .filter(model_routes::model_id.eq(model_id))
        .order(model_routes::id.desc())
        .limit(page.limit)
        .offset(page.offset)
        .select(ModelRoute::as_select())
        .load(conn)
        .await?;
    let total = model_routes::table
        .filter(model_routes::model_id.eq(model_id))
        .count()
        .get_result(conn)
        .await?;
    Ok(Paged { rows, total })
}

pub async fn update_model_route(
    conn: &mut AsyncPgConnection,
    id: i64,
    mut changes: ModelRouteChanges,
) -> Result<ModelRoute, StoreError> {
    changes.updated_at = Some(Utc::now());
    Ok(diesel::update(model_routes::table.find(id))
        .set(&changes)
        .returning(ModelRoute::as_returning())
        .get_result(conn)
        .await?)
}

pub async fn delete_model_route(conn: &mut AsyncPgConnection, id: i64) -> Result<(), StoreError> {
    let deleted = diesel::delete(model_routes::table.find(id))
        .execute(conn)
        .await?;
    if deleted == 0 {
        return Err(StoreError::NotFound);
    }
    Ok(())
}

/// Every enabled route of an enabled provider, with its provider (the call path's extra
/// routes).
pub async fn load_enabled_model_routes(
    conn: &mut AsyncPgConnection,
) -> Result<Vec<(ModelRoute, Provider)>, StoreError> {
    Ok(model_routes::table
        .inner_join(providers::table)
        .filter(model_routes::enabled.eq(true))
        .filter(providers::enabled.eq(true))
        .order(model_routes::id)
        .select((ModelRoute::as_select(), Provider::as_select()))
        .load(conn)
        .await?)
}
