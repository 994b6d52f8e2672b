//! Each user's job-webhook signing secret, sealed by the caller (catalog's `SecretBox`): this
//! crate only ever sees the ciphertext.

use chrono::{DateTime, Utc};
use diesel::prelude::*;
use diesel::upsert::excluded;
use diesel_async::{AsyncPgConnection, RunQueryDsl};

use crate::StoreError;
use crate::schema::webhook_secrets;

/// Stores the user's secret, replacing the one before (rotation); answers when it was created.
pub async fn put(
    conn: &mut AsyncPgConnection,
    user_id: i64,
    sealed: &[u8],
) -> Result<DateTime<Utc>, StoreError> {
    Ok(diesel::insert_into(webhook_secrets::table)
        .values((
            webhook_secrets::user_id.eq(user_id),
            webhook_secrets::sealed.eq(sealed),
            webhook_secrets::created_at.eq(diesel::dsl::now),
        ))
        .on_conflict(webhook_secrets::user_id)
        .do_update()
        .set((
            webhook_secrets::sealed.eq(excluded(webhook_secrets::sealed)),
            webhook_secrets::created_at.eq(excluded(webhook_secrets::created_at)),
        ))
        .returning(webhook_secrets::created_at)
        .get_result(conn)
        .await?)
}

/// When the user's secret was created, if there is one (never the secret).
pub async fn created_at(
    conn: &mut AsyncPgConnection,
    user_id: i64,
) -> Result<Option<DateTime<Utc>>, StoreError> {
    Ok(webhook_secrets::table
        .find(user_id)
        .select(webhook_secrets::created_at)
        .first(conn)
        .await
        .optional()?)
}

/// The user's sealed secret, for the worker that signs the user's webhooks.
pub async fn sealed(
    conn: &mut AsyncPgConnection,
    user_id: i64,
) -> Result<Option<Vec<u8>>, StoreError> {
    Ok(webhook_secrets::table
        .find(user_id)
        .select(webhook_secrets::sealed)
        .first(conn)
        .await
        .optional()?)
}
