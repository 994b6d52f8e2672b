//! A user's access keys: minted once, listed without secrets, revoked at once.

use chrono::{DateTime, Utc};
use persistence::access_keys::{self, NewAccessKey};
use persistence::{Page, Paged};

use crate::error::ApiError;
use crate::secrets::generate_access_key;
use crate::state::AppState;
use crate::views::{AccessKeyView, CreatedAccessKeyView};

pub async fn create(
    state: &AppState,
    user_id: i64,
    name: &str,
    expires_at: Option<DateTime<Utc>>,
) -> Result<CreatedAccessKeyView, ApiError> {
    let name = name.trim();
    if name.is_empty() || name.chars().count() > 100 {
        return Err(ApiError::InvalidRequest(
            "name must be 1 to 100 characters".to_owned(),
        ));
    }
    if expires_at.is_some_and(|at| at <= Utc::now()) {
        return Err(ApiError::InvalidRequest(
            "expires_at must be in the future".to_owned(),
        ));
    }
    let minted = generate_access_key().map_err(|e| ApiError::Internal(e.to_string()))?;
    let mut conn = state.conn().await?;
    let key = access_keys::insert(
        &mut conn,
        NewAccessKey {
            user_id,
            name,
            prefix: &minted.prefix,
            key_hash: &minted.hash,
            expires_at,
        },
    )
    .await?;
    Ok(CreatedAccessKeyView {
        access_key: key.into(),
        key: minted.secret,
    })
}

pub async fn list(
    state: &AppState,
    user_id: i64,
    page: Page,
) -> Result<Paged<persistence::access_keys::AccessKey>, ApiError> {
    let mut conn = state.conn().await?;
    Ok(access_keys::list_for_user(&mut conn, user_id, page).await?)
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

pub fn view(key: persistence::access_keys::AccessKey) -> Result<AccessKeyView, ApiError> {
    Ok(key.into())
}
