//! Text columns of closed sets (statuses, roles) read straight into their `domain` enums, so
//! no code past the row compares status strings; a value no variant names fails the query.

use std::str::FromStr;

use diesel::deserialize::{self, FromSql, FromSqlRow};
use diesel::pg::{Pg, PgValue};
use diesel::sql_types::Text;
use domain::{JobStatus, OrderStatus, Role, UserStatus};

/// A text column parsed into `T` (see a row's `#[diesel(deserialize_as = Stored<T>)]`).
#[derive(Debug, FromSqlRow)]
pub struct Stored<T>(pub T);

impl<T> FromSql<Text, Pg> for Stored<T>
where
    T: FromStr,
    T::Err: std::error::Error + Send + Sync + 'static,
{
    fn from_sql(bytes: PgValue<'_>) -> deserialize::Result<Self> {
        let text = <String as FromSql<Text, Pg>>::from_sql(bytes)?;
        Ok(Stored(text.parse()?))
    }
}

macro_rules! unwrap_stored {
    ($($ty:ty),+) => {
        $(impl From<Stored<$ty>> for $ty {
            fn from(stored: Stored<$ty>) -> $ty {
                stored.0
            }
        })+
    };
}

unwrap_stored!(JobStatus, OrderStatus, Role, UserStatus);
