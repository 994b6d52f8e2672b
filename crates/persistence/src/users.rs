//! Users: accounts, roles, status and the stored balance.

use bigdecimal::BigDecimal;
use chrono::{DateTime, Utc};
use diesel::prelude::*;
use diesel_async::{AsyncPgConnection, RunQueryDsl};

use crate::schema::users;
use crate::{Page, Paged, StoreError};

#[derive(Debug, Clone, Queryable, Selectable)]
#[diesel(table_name = users)]
pub struct User {
    pub id: i64,
    pub email: String,
    pub password_hash: String,
    #[diesel(deserialize_as = crate::stored::Stored<domain::Role>)]
    pub role: domain::Role,
    #[diesel(deserialize_as = crate::stored::Stored<domain::UserStatus>)]
    pub status: domain::UserStatus,
    pub balance: BigDecimal,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    /// The sum of the user's open holds; `balance - held` is what a new call may reserve.
    pub held: BigDecimal,
    /// Raised by sign-out; part of the session token's stamp (gateway-api's `auth`).
    pub session_generation: i64,
}

#[derive(Debug, Insertable)]
#[diesel(table_name = users)]
pub struct NewUser<'a> {
    pub email: &'a str,
    pub password_hash: &'a str,
    pub role: &'a str,
}

/// The fields an admin may change; `None` leaves a column alone.
#[derive(Debug, Default, AsChangeset)]
#[diesel(table_name = users)]
pub struct UserChanges {
    pub role: Option<String>,
    pub status: Option<String>,
    pub password_hash: Option<String>,
    pub updated_at: Option<DateTime<Utc>>,
}

impl UserChanges {
    pub fn is_empty(&self) -> bool {
        self.role.is_none() && self.status.is_none() && self.password_hash.is_none()
    }
}

pub async fn insert(conn: &mut AsyncPgConnection, new: NewUser<'_>) -> Result<User, StoreError> {
    Ok(diesel::insert_into(users::table)
        .values(&new)
        .returning(User::as_returning())
        .get_result(conn)
        .await?)
}

pub async fn find(conn: &mut AsyncPgConnection, id: i64) -> Result<User, StoreError> {
    Ok(users::table
        .find(id)
        .select(User::as_select())
        .first(conn)
        .await?)
}

pub async fn find_by_email(
    conn: &mut AsyncPgConnection,
    email: &str,
) -> Result<Option<User>, StoreError> {
    Ok(users::table
        .filter(users::email.eq(email))
        .select(User::as_select())
        .first(conn)
        .await
        .optional()?)
}

pub async fn admin_exists(conn: &mut AsyncPgConnection) -> Result<bool, StoreError> {
    Ok(diesel::select(diesel::dsl::exists(
        users::table.filter(users::role.eq("admin")),
    ))
    .get_result(conn)
    .await?)
}

pub async fn list(conn: &mut AsyncPgConnection, page: Page) -> Result<Paged<User>, StoreError> {
    let rows = users::table
        .order((users::created_at.desc(), users::id.desc()))
        .limit(page.limit)
        .offset(page.offset)
        .select(User::as_select())
        .load(conn)
        .await?;
    let total = users::table.count().get_result(conn).await?;
    Ok(Paged { rows, total })
}

/// Ends every session token of the user (sign-out): their stamp no longer matches.
pub async fn end_sessions(conn: &mut AsyncPgConnection, id: i64) -> Result<User, StoreError> {
    Ok(diesel::update(users::table.find(id))
        .set((
            users::session_generation.eq(users::session_generation + 1),
            users::updated_at.eq(Utc::now()),
        ))
        .returning(User::as_returning())
        .get_result(conn)
        .await?)
}

pub async fn update(
    conn: &mut AsyncPgConnection,
    id: i64,
    mut changes: UserChanges,
) -> Result<User, StoreError> {
    if changes.is_empty() {
        return find(conn, id).await;
    }
    changes.updated_at = Some(Utc::now());
    Ok(diesel::update(users::table.find(id))
        .set(&changes)
        .returning(User::as_returning())
        .get_result(conn)
        .await?)
}
