//! A user's access keys: minted once, listed without secrets, revoked at once.

use chrono::{DateTime, Utc};
use persistence::access_keys::{self, NewAccessKey};
use persistence::{Page, Paged};

use crate::error::ApiError;
use crate::secrets::generate_access_key;
use crate::state::AppState;
use crate::views::{AccessKeyView, CreatedAccessKeyView, LimitsInput};
use diesel_async::AsyncConnection;
use persistence::limits::{LimitValues, Scope};
use serde::Deserialize;
use std::collections::HashMap;
use utoipa::ToSchema;

/// Mints a key for `user_id` with its limits (checked) applied, in one transaction.
pub async fn create(
    state: &AppState,
    user_id: i64,
    input: &AccessKeyInput,
) -> Result<CreatedAccessKeyView, ApiError> {
    let name = input
        .name
        .as_deref()
        .ok_or_else(|| ApiError::InvalidRequest("name is required".to_owned()))?;
    let expires_at = input.expires_at;
    let limits = input.limits().apply(&LimitValues::default(), Scope::Key)?;
    let name = checked_name(name)?;
    let name = name.as_str();
    if expires_at.is_some_and(|at| at <= Utc::now()) {
        return Err(ApiError::InvalidRequest(
            "expires_at must be in the future".to_owned(),
        ));
    }
    let minted = generate_access_key().map_err(|e| ApiError::Internal(e.to_string()))?;
    let mut conn = state.conn().await?;
    let stored = limits.clone();
    let key = conn
        .transaction::<_, persistence::StoreError, _>(async move |conn| {
            let key = access_keys::insert(
                conn,
                NewAccessKey {
                    user_id,
                    name,
                    prefix: &minted.prefix,
                    key_hash: &minted.hash,
                    expires_at,
                },
            )
            .await?;
            if !stored.is_empty() {
                persistence::limits::set(conn, Scope::Key, key.id, Some(user_id), &stored).await?;
            }
            Ok(key)
        })
        .await?;
    Ok(CreatedAccessKeyView {
        access_key: AccessKeyView::new(key, &limits),
        key: minted.secret,
    })
}

/// A page of the user's keys, each with its limits.
pub async fn list(
    state: &AppState,
    user_id: i64,
    page: Page,
) -> Result<Paged<AccessKeyView>, ApiError> {
    let mut conn = state.conn().await?;
    let keys = access_keys::list_for_user(&mut conn, user_id, page).await?;
    let subjects: Vec<(Scope, i64)> = keys.rows.iter().map(|k| (Scope::Key, k.id)).collect();
    let mut limits: HashMap<i64, LimitValues> = persistence::limits::load(&mut conn, &subjects)
        .await?
        .into_iter()
        .map(|(_, id, values)| (id, values))
        .collect();
    Ok(Paged {
        rows: keys
            .rows
            .into_iter()
            .map(|key| {
                let values = limits.remove(&key.id).unwrap_or_default();
                AccessKeyView::new(key, &values)
            })
            .collect(),
        total: keys.total,
    })
}

/// Changes a key's limits (and name); `user_id` None: an admin, any user's key. Another
/// user's key is 404 like a key that does not exist. Applies at once on this replica and
/// within `calls.key_cache_ttl_ms` on the others.
pub async fn update(
    state: &AppState,
    user_id: Option<i64>,
    key_id: i64,
    change: &AccessKeyInput,
) -> Result<AccessKeyView, ApiError> {
    if change.expires_at.is_some() {
        return Err(ApiError::InvalidRequest(
            "expires_at is set when a key is created; create a new key instead".to_owned(),
        ));
    }
    let not_found = || ApiError::NotFound("access key not found".to_owned());
    let name = match &change.name {
        Some(name) => Some(checked_name(name)?),
        None => None,
    };
    let mut conn = state.conn().await?;
    let key = access_keys::get(&mut conn, key_id)
        .await?
        .filter(|key| user_id.is_none_or(|owner| key.user_id == owner))
        .ok_or_else(not_found)?;
    let current = persistence::limits::load(&mut conn, &[(Scope::Key, key.id)])
        .await?
        .into_iter()
        .next()
        .map(|(_, _, values)| values)
        .unwrap_or_default();
    let next = change.limits().apply(&current, Scope::Key)?;
    let owner = key.user_id;
    let stored = next.clone();
    let key = conn
        .transaction::<_, persistence::StoreError, _>(async move |conn| {
            let key = match name {
                Some(name) => access_keys::rename(conn, key.id, &name).await?,
                None => key,
            };
            persistence::limits::set(conn, Scope::Key, key.id, Some(owner), &stored).await?;
            Ok(key)
        })
        .await?;
    state.key_cache.forget_key(key.id);
    Ok(AccessKeyView::new(key, &next))
}

fn checked_name(name: &str) -> Result<String, ApiError> {
    let name = name.trim();
    if name.is_empty() || name.chars().count() > 100 {
        return Err(ApiError::InvalidRequest(
            "name must be 1 to 100 characters".to_owned(),
        ));
    }
    Ok(name.to_owned())
}

pub async fn revoke(state: &AppState, user_id: i64, id: i64) -> Result<(), ApiError> {
    let mut conn = state.conn().await?;
    access_keys::revoke(&mut conn, user_id, id)
        .await
        .map_err(|e| match e {
            persistence::StoreError::NotFound => {
                ApiError::NotFound("access key not found".to_owned())
            }
            other => other.into(),
        })?;
    state.key_cache.forget_key(id);
    Ok(())
}

/// The body of `POST` (name required) and `PATCH` (every field optional) of an access key:
/// a limit left out stays as it is (none on creation), `null` removes it.
#[derive(Debug, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct AccessKeyInput {
    #[schema(example = "laptop")]
    pub name: Option<String>,
    pub expires_at: Option<DateTime<Utc>>,
    #[serde(default, deserialize_with = "crate::views::present")]
    #[schema(value_type = Option<i64>, minimum = 1)]
    pub rpm_limit: Option<Option<i64>>,
    #[serde(default, deserialize_with = "crate::views::present")]
    #[schema(value_type = Option<i64>, minimum = 1)]
    pub tpm_limit: Option<Option<i64>>,
    #[serde(default, deserialize_with = "crate::views::present")]
    #[schema(value_type = Option<i64>, minimum = 1)]
    pub max_concurrency: Option<Option<i64>>,
    #[serde(default, deserialize_with = "crate::views::present")]
    #[schema(value_type = Option<String>, example = "25.00")]
    pub spend_limit: Option<Option<String>>,
    #[schema(value_type = Option<String>, example = "month")]
    pub spend_limit_period: Option<String>,
}

impl AccessKeyInput {
    fn limits(&self) -> LimitsInput {
        LimitsInput {
            rpm_limit: self.rpm_limit,
            tpm_limit: self.tpm_limit,
            max_concurrency: self.max_concurrency,
            spend_limit: self.spend_limit.clone(),
            spend_limit_period: self.spend_limit_period.clone(),
            max_pending_jobs: None,
        }
    }
}
