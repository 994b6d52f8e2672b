//! Each user's own job-webhook signing secret: created or rotated by its user, shown once,
//! stored sealed under the master key (like provider keys), opened only by invocation-worker
//! to sign the user's webhooks. Neither the user nor an admin can read it back.

use chrono::{DateTime, Utc};
use persistence::webhook_secrets;

use crate::error::ApiError;
use crate::secrets::generate_webhook_secret;
use crate::state::AppState;

/// Mints a new secret for the user, replacing any previous one at once: from now on every
/// webhook of the user's jobs (also those already queued) is signed with it.
pub async fn rotate(state: &AppState, user_id: i64) -> Result<(String, DateTime<Utc>), ApiError> {
    let secret = generate_webhook_secret().map_err(|e| ApiError::Internal(e.to_string()))?;
    let sealed = state
        .secret_box
        .seal(&secret)
        .map_err(|e| ApiError::Internal(e.to_string()))?;
    let mut conn = state.conn().await?;
    let created_at = webhook_secrets::put(&mut conn, user_id, &sealed).await?;
    Ok((secret, created_at))
}

/// When the user's current secret was created; `None` when the user has none.
pub async fn created_at(state: &AppState, user_id: i64) -> Result<Option<DateTime<Utc>>, ApiError> {
    let mut conn = state.conn().await?;
    Ok(webhook_secrets::created_at(&mut conn, user_id).await?)
}

/// A job asking for a webhook needs its user to have a secret to sign it with: refused at
/// submission (400 naming it), so no unsigned or unsendable webhook is ever queued.
pub async fn require(state: &AppState, user_id: i64) -> Result<(), ApiError> {
    if created_at(state, user_id).await?.is_none() {
        return Err(ApiError::invalid(
            "callback_url needs a webhook signing secret: create one with POST /v1/me/webhook-secret",
        ));
    }
    Ok(())
}
