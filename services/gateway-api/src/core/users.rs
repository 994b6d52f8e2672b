//! Admin management of users and manual balance adjustments.

use diesel_async::AsyncConnection;
use domain::{LedgerKind, Money, Password, Role, UserStatus};
use persistence::ledger::{self, BalanceChange, LedgerEntry};
use persistence::users::{self, User, UserChanges};
use persistence::{Page, Paged, StoreError};

use crate::core::identity::hash_password;
use crate::error::ApiError;
use crate::state::AppState;

fn user_not_found(e: StoreError) -> ApiError {
    match e {
        StoreError::NotFound => ApiError::NotFound("user not found".to_owned()),
        other => other.into(),
    }
}

pub async fn list(state: &AppState, page: Page) -> Result<Paged<User>, ApiError> {
    let mut conn = state.conn().await?;
    Ok(users::list(&mut conn, page).await?)
}

pub async fn get(state: &AppState, id: i64) -> Result<User, ApiError> {
    let mut conn = state.conn().await?;
    users::find(&mut conn, id).await.map_err(user_not_found)
}

pub struct UserUpdate {
    pub role: Option<Role>,
    pub status: Option<UserStatus>,
    pub password: Option<String>,
}

/// An admin cannot lock themselves out (disable or demote their own account).
pub async fn update(
    state: &AppState,
    actor_id: i64,
    id: i64,
    update: UserUpdate,
) -> Result<User, ApiError> {
    if id == actor_id
        && (update.status == Some(UserStatus::Disabled) || update.role == Some(Role::User))
    {
        return Err(ApiError::Conflict(
            "an admin cannot disable or demote their own account".to_owned(),
        ));
    }
    let password_hash = match &update.password {
        Some(password) => {
            Password::validate(password).map_err(|e| ApiError::InvalidRequest(e.to_string()))?;
            Some(hash_password(state, password).await?)
        }
        None => None,
    };
    let changes = UserChanges {
        role: update.role.map(|r| r.as_str().to_owned()),
        status: update.status.map(|s| s.as_str().to_owned()),
        password_hash,
        updated_at: None,
    };
    let mut conn = state.conn().await?;
    let user = users::update(&mut conn, id, changes)
        .await
        .map_err(user_not_found)?;
    state.key_cache.forget_user(id);
    Ok(user)
}

/// Moves a balance by a signed amount, with its ledger row, in one transaction; a result below
/// zero is refused (409) and writes nothing.
pub async fn adjust_balance(
    state: &AppState,
    actor_id: i64,
    user_id: i64,
    amount: &Money,
    reason: &str,
) -> Result<(User, LedgerEntry), ApiError> {
    if amount.is_zero() {
        return Err(ApiError::InvalidRequest(
            "amount must not be zero".to_owned(),
        ));
    }
    let reason = reason.trim();
    if reason.is_empty() || reason.chars().count() > 500 {
        return Err(ApiError::InvalidRequest(
            "reason must be 1 to 500 characters".to_owned(),
        ));
    }
    let reference = format!("adj_{}", uuid::Uuid::new_v4().simple());
    let mut conn = state.conn().await?;
    conn.transaction::<_, StoreError, _>(async |conn| {
        ledger::apply(
            conn,
            BalanceChange {
                user_id,
                delta: amount,
                kind: LedgerKind::Adjustment,
                reference: &reference,
                note: Some(reason),
                actor_user_id: Some(actor_id),
            },
        )
        .await
    })
    .await
    .map_err(user_not_found)
}
