//! Registration, login, password hashing and the bootstrap admin.

use domain::{Email, Password, Role};
use persistence::users::{self, NewUser, User};
use persistence::{AsyncPgConnection, Pool};
use secrecy::ExposeSecret;

use crate::auth::issue_token;
use crate::core::throttle;
use crate::error::ApiError;
use crate::settings::BootstrapSettings;
use crate::state::AppState;

/// bcrypt is slow on purpose: it runs off the async workers, at most
/// `abuse.hashes_in_flight` at once (see `throttle::HashGate`).
pub async fn hash_password(state: &AppState, password: &str) -> Result<String, ApiError> {
    let (password, cost) = (password.to_owned(), state.bcrypt_cost);
    state
        .guards
        .hashes
        .run(move || bcrypt::hash(password, cost))
        .await?
        .map_err(|e| ApiError::Internal(format!("bcrypt: {e}")))
}

/// Hashing at start-up (bootstrap admin, the dummy hash), before any request can compete.
pub async fn hash_password_at_start(password: &str, cost: u32) -> Result<String, ApiError> {
    let password = password.to_owned();
    tokio::task::spawn_blocking(move || bcrypt::hash(password, cost))
        .await
        .map_err(|e| ApiError::Internal(format!("hashing task: {e}")))?
        .map_err(|e| ApiError::Internal(format!("bcrypt: {e}")))
}

pub async fn verify_password(
    state: &AppState,
    password: &str,
    hash: &str,
) -> Result<bool, ApiError> {
    let (password, hash) = (password.to_owned(), hash.to_owned());
    state
        .guards
        .hashes
        .run(move || bcrypt::verify(password, &hash).unwrap_or(false))
        .await
}

/// Self-registration: at most `abuse.registrations_per_address` from one address before
/// backoff; the attempt is counted whatever its outcome.
pub async fn register(
    state: &AppState,
    client_address: &str,
    email: &str,
    password: &str,
) -> Result<User, ApiError> {
    parse_credentials(email, password)?;
    state
        .guards
        .registrations
        .attempt(client_address)
        .map_err(|wait| throttle::too_many("registrations from this address", wait))?;
    let mut conn = state.conn().await?;
    create_user(state, &mut conn, email, password, Role::User).await
}

pub fn parse_credentials(email: &str, password: &str) -> Result<Email, ApiError> {
    let email = Email::parse(email).map_err(|e| ApiError::InvalidRequest(e.to_string()))?;
    Password::validate(password).map_err(|e| ApiError::InvalidRequest(e.to_string()))?;
    Ok(email)
}

/// Creates an account; `role` is chosen by the caller (self-registration is always `user`).
pub async fn create_user(
    state: &AppState,
    conn: &mut AsyncPgConnection,
    email: &str,
    password: &str,
    role: Role,
) -> Result<User, ApiError> {
    let email = parse_credentials(email, password)?;
    let password_hash = hash_password(state, password).await?;
    Ok(users::insert(
        conn,
        NewUser {
            email: email.as_str(),
            password_hash: &password_hash,
            role: role.as_str(),
        },
    )
    .await?)
}

pub struct Session {
    pub token: String,
    pub user: User,
}

/// Wrong email, wrong password and a disabled account all answer the same 401. Every attempt
/// counts against the account (in Postgres, for every replica) and the client address (in this
/// process) until it succeeds; past their free attempts both back off exponentially (429 with
/// `Retry-After`, checked before any hashing). A success clears the account's count and takes
/// back this attempt from the address's.
pub async fn login(
    state: &AppState,
    client_address: &str,
    email: &str,
    password: &str,
) -> Result<Session, ApiError> {
    let account = email.trim().to_lowercase();
    let guards = &state.guards;
    guards
        .login_addresses
        .attempt(client_address)
        .map_err(|wait| throttle::too_many("failed sign-ins from this address", wait))?;
    // Counted for every replica at once (Postgres), before any hashing.
    let counted = async {
        let mut conn = state.conn().await?;
        guards
            .login_accounts
            .attempt(&mut conn, &account)
            .await?
            .map_err(|wait| throttle::too_many("failed sign-ins to this account", wait))
    }
    .await;
    if let Err(refused) = counted {
        guards.login_addresses.forgive_one(client_address);
        return Err(refused);
    }
    let session = check_password(state, email, password).await?;
    let mut conn = state.conn().await?;
    guards.login_accounts.clear(&mut conn, &account).await?;
    guards.login_addresses.forgive_one(client_address);
    Ok(session)
}

async fn check_password(
    state: &AppState,
    email: &str,
    password: &str,
) -> Result<Session, ApiError> {
    let refused = || ApiError::Unauthorized("invalid email or password".to_owned());
    let user = match Email::parse(email) {
        Ok(email) => {
            let mut conn = state.conn().await?;
            users::find_by_email(&mut conn, email.as_str()).await?
        }
        Err(_) => None,
    };
    // An unknown email is checked against a dummy hash, so timing does not reveal accounts.
    let hash = user
        .as_ref()
        .map_or(state.dummy_password_hash.as_str(), |u| {
            u.password_hash.as_str()
        });
    let password_ok = verify_password(state, password, hash).await?;
    match user {
        Some(user) if password_ok && user.status == domain::UserStatus::Active => {
            let token = issue_token(state, &user)?;
            Ok(Session { token, user })
        }
        _ => Err(refused()),
    }
}

/// Ends every session token of the user (this one included).
pub async fn sign_out(state: &AppState, user_id: i64) -> Result<(), ApiError> {
    let mut conn = state.conn().await?;
    users::end_sessions(&mut conn, user_id).await?;
    Ok(())
}

/// A user's own password change: the current password is checked (counted against the
/// account like a login, so a stolen session cannot guess it without limit), then every
/// session token ends, this one included (the stamp covers the password hash).
pub async fn change_password(
    state: &AppState,
    user: &User,
    current: &str,
    new: &str,
) -> Result<(), ApiError> {
    Password::validate(new).map_err(|e| ApiError::InvalidRequest(e.to_string()))?;
    let accounts = &state.guards.login_accounts;
    accounts
        .attempt(&mut *state.conn().await?, &user.email)
        .await?
        .map_err(|wait| throttle::too_many("failed password checks for this account", wait))?;
    if !verify_password(state, current, &user.password_hash).await? {
        return Err(ApiError::Forbidden(
            "the current password is wrong".to_owned(),
        ));
    }
    let mut conn = state.conn().await?;
    accounts.clear(&mut conn, &user.email).await?;
    let password_hash = hash_password(state, new).await?;
    users::update(
        &mut conn,
        user.id,
        users::UserChanges {
            password_hash: Some(password_hash),
            ..Default::default()
        },
    )
    .await?;
    Ok(())
}

/// Creates the configured admin when no admin exists yet; an email already taken by a normal
/// account is never promoted (whoever registered it would become admin).
pub async fn bootstrap_admin(
    pool: &Pool,
    bootstrap: &BootstrapSettings,
    bcrypt_cost: u32,
) -> Result<(), ApiError> {
    let (Some(email), Some(password)) = (&bootstrap.admin_email, &bootstrap.admin_password) else {
        return Ok(());
    };
    let mut conn = pool.get().await.map_err(persistence::StoreError::from)?;
    if users::admin_exists(&mut conn).await? {
        return Ok(());
    }
    let parsed = parse_credentials(email, password.expose_secret())?;
    if users::find_by_email(&mut conn, parsed.as_str())
        .await?
        .is_some()
    {
        tracing::error!(
            email = parsed.as_str(),
            "ADMIN_EMAIL belongs to a normal account; no admin bootstrapped"
        );
        return Ok(());
    }
    let password_hash = hash_password_at_start(password.expose_secret(), bcrypt_cost).await?;
    match users::insert(
        &mut conn,
        NewUser {
            email: parsed.as_str(),
            password_hash: &password_hash,
            role: Role::Admin.as_str(),
        },
    )
    .await
    {
        Ok(_) => tracing::info!(email = parsed.as_str(), "bootstrap admin created"),
        // Another replica bootstrapped it at the same moment.
        Err(persistence::StoreError::Unique(_)) => {}
        Err(other) => return Err(other.into()),
    }
    Ok(())
}
