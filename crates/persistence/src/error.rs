//! The persistence error, with database errors classified once (unique, foreign key, check).

use diesel::result::{DatabaseErrorKind, Error as DieselError};

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("not found")]
    NotFound,
    /// A unique constraint refused the write; carries the constraint name.
    #[error("unique constraint {0} violated")]
    Unique(String),
    /// A referenced row does not exist, or a row is still referenced.
    #[error("foreign key constraint {0} violated")]
    ForeignKey(String),
    /// A CHECK constraint refused the write (the schema's last line of defence for money).
    #[error("check constraint {0} violated")]
    Check(String),
    /// The balance would go below zero.
    #[error("insufficient balance")]
    InsufficientBalance,
    /// A conditional update found the row in another state.
    #[error("conflict: {0}")]
    StateConflict(String),
    /// Text Postgres cannot store (a NUL character): the caller's input, not a fault.
    #[error("text contains a character the database cannot store (NUL)")]
    InvalidText,
    #[error("database error: {0}")]
    Database(#[source] DieselError),
    #[error("connection pool: {0}")]
    Pool(String),
    /// Every connection of the pool stayed in use for the whole wait timeout: the database is
    /// reachable but the service is past its capacity.
    #[error("every database connection is busy")]
    Busy,
    #[error("migration failed: {0}")]
    Migration(String),
}

impl From<DieselError> for StoreError {
    fn from(error: DieselError) -> Self {
        match error {
            DieselError::NotFound => StoreError::NotFound,
            DieselError::DatabaseError(kind, ref info) => {
                let constraint = info.constraint_name().unwrap_or("unknown").to_owned();
                match kind {
                    DatabaseErrorKind::UniqueViolation => StoreError::Unique(constraint),
                    DatabaseErrorKind::ForeignKeyViolation => StoreError::ForeignKey(constraint),
                    DatabaseErrorKind::CheckViolation => StoreError::Check(constraint),
                    // SQLSTATE 22021 and 22P05, which diesel does not classify: a NUL in a text
                    // value, or `\u0000` in a JSONB one.
                    _ if info
                        .message()
                        .starts_with("invalid byte sequence for encoding")
                        || info
                            .message()
                            .starts_with("unsupported Unicode escape sequence") =>
                    {
                        StoreError::InvalidText
                    }
                    _ => StoreError::Database(error),
                }
            }
            other => StoreError::Database(other),
        }
    }
}

impl<E: std::fmt::Display> From<deadpool::managed::PoolError<E>> for StoreError {
    fn from(error: deadpool::managed::PoolError<E>) -> Self {
        use deadpool::managed::{PoolError, TimeoutType};
        match error {
            PoolError::Timeout(TimeoutType::Wait) => StoreError::Busy,
            other => StoreError::Pool(other.to_string()),
        }
    }
}
