//! Access keys: stored as SHA-256 hashes, looked up by hash on every model call.

use chrono::{DateTime, Utc};
use diesel::prelude::*;
use diesel_async::{AsyncPgConnection, RunQueryDsl};

use crate::schema::{access_keys, users};
use crate::users::User;
use crate::{Page, Paged, StoreError};

#[derive(Debug, Clone, Queryable, Selectable)]
#[diesel(table_name = access_keys)]
pub struct AccessKey {
    pub id: i64,
    pub user_id: i64,
    pub name: String,
    pub prefix: String,
    pub key_hash: Vec<u8>,
    pub created_at: DateTime<Utc>,
    pub expires_at: Option<DateTime<Utc>>,
    pub last_used_at: Option<DateTime<Utc>>,
    pub revoked_at: Option<DateTime<Utc>>,
}

#[derive(Debug, Insertable)]
#[diesel(table_name = access_keys)]
pub struct NewAccessKey<'a> {
    pub user_id: i64,
    pub name: &'a str,
    pub prefix: &'a str,
    pub key_hash: &'a [u8],
    pub expires_at: Option<DateTime<Utc>>,
}

pub async fn insert(
    conn: &mut AsyncPgConnection,
    new: NewAccessKey<'_>,
) -> Result<AccessKey, StoreError> {
    Ok(diesel::insert_into(access_keys::table)
        .values(&new)
        .returning(AccessKey::as_returning())
        .get_result(conn)
        .await?)
}

pub async fn list_for_user(
    conn: &mut AsyncPgConnection,
    user_id: i64,
    page: Page,
) -> Result<Paged<AccessKey>, StoreError> {
    let rows = access_keys::table
        .filter(access_keys::user_id.eq(user_id))
        .order((access_keys::created_at.desc(), access_keys::id.desc()))
        .limit(page.limit)
        .offset(page.offset)
        .select(AccessKey::as_select())
        .load(conn)
        .await?;
    let total = access_keys::table
        .filter(access_keys::user_id.eq(user_id))
        .count()
        .get_result(conn)
        .await?;
    Ok(Paged { rows, total })
}

/// Revokes one of the user's keys; revoking an already revoked key is a no-op.
/// Another user's key is `NotFound`, exactly like a key that does not exist.
pub async fn revoke(conn: &mut AsyncPgConnection, user_id: i64, id: i64) -> Result<(), StoreError> {
    let owned = access_keys::table
        .filter(access_keys::id.eq(id))
        .filter(access_keys::user_id.eq(user_id));
    diesel::update(owned.filter(access_keys::revoked_at.is_null()))
        .set(access_keys::revoked_at.eq(diesel::dsl::now))
        .execute(conn)
        .await?;
    owned.select(access_keys::id).first::<i64>(conn).await?;
    Ok(())
}

/// The lookup of every model call: the key by hash, only if not revoked, not expired and its
/// owner active. One indexed query; revocation takes effect on the next call.
pub async fn authenticate(
    conn: &mut AsyncPgConnection,
    key_hash: &[u8],
) -> Result<Option<(AccessKey, User)>, StoreError> {
    Ok(access_keys::table
        .inner_join(users::table)
        .filter(access_keys::key_hash.eq(key_hash))
        .filter(access_keys::revoked_at.is_null())
        .filter(
            access_keys::expires_at
                .is_null()
                .or(access_keys::expires_at.gt(diesel::dsl::now)),
        )
        .filter(users::status.eq(domain::UserStatus::Active.as_str()))
        .select((AccessKey::as_select(), User::as_select()))
        .first(conn)
        .await
        .optional()?)
}

/// Records use at most once a minute per key, so the hot path rarely writes.
pub async fn touch(conn: &mut AsyncPgConnection, id: i64) -> Result<(), StoreError> {
    let stale = Utc::now() - chrono::Duration::minutes(1);
    diesel::update(
        access_keys::table.find(id).filter(
            access_keys::last_used_at
                .is_null()
                .or(access_keys::last_used_at.lt(stale)),
        ),
    )
    .set(access_keys::last_used_at.eq(diesel::dsl::now))
    .execute(conn)
    .await?;
    Ok(())
}

/// One key by id, whoever owns it.
pub async fn get(conn: &mut AsyncPgConnection, id: i64) -> Result<Option<AccessKey>, StoreError> {
    Ok(access_keys::table
        .find(id)
        .select(AccessKey::as_select())
        .first(conn)
        .await
        .optional()?)
}

pub async fn rename(
    conn: &mut AsyncPgConnection,
    id: i64,
    name: &str,
) -> Result<AccessKey, StoreError> {
    Ok(diesel::update(access_keys::table.find(id))
        .set(access_keys::name.eq(name))
        .returning(AccessKey::as_returning())
        .get_result(conn)
        .await?)
}
