//! Roles, user, order and job statuses: closed sets with their stored text. Orders and jobs move
//! only by conditional updates in `persistence` (`orders::complete`, `jobs::claim_many`,
//! `jobs::complete_many`, `jobs::fail`, `jobs::requeue`), where their transitions are written
//! and enforced.

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

/// Text that names none of a closed set's variants (e.g. a role "root").
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown {what} \"{value}\"; expected one of: {}", expected.join(", "))]
pub struct UnknownVariant {
    /// What was being parsed, e.g. "role".
    pub what: &'static str,
    /// The text refused.
    pub value: String,
    /// The accepted texts.
    pub expected: &'static [&'static str],
}

/// What a user may do: admins manage the platform, users call models.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    Admin,
    User,
}

text_enum!(Role, "role", { Admin => "admin", User => "user" });

/// Whether a user may log in and call models.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum UserStatus {
    Active,
    Disabled,
}

text_enum!(UserStatus, "user status", { Active => "active", Disabled => "disabled" });

/// What became of a billed call's price: `charged` in full from its reservation, or an
/// `overrun` (it priced above what its reservation covered, so it took at most what was free of
/// the balance beside it; see API.md's Overrun).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum UsageStatus {
    Charged,
    Overrun,
}

text_enum!(UsageStatus, "usage status", { Charged => "charged", Overrun => "overrun" });

/// A top-up order: PENDING until completed (credited once) or failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum OrderStatus {
    Pending,
    Completed,
    Failed,
}

text_enum!(OrderStatus, "order status", {
    Pending => "PENDING",
    Completed => "COMPLETED",
    Failed => "FAILED",
});

/// An async job: PENDING, claimed as PROCESSING (re-claimable when its lease expired), then
/// COMPLETED or FAILED. The transitions are conditional updates in `persistence::jobs`, the
/// only place that moves a job (claim, complete, fail), tested there against Postgres.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum JobStatus {
    Pending,
    Processing,
    Completed,
    Failed,
}

text_enum!(JobStatus, "job status", {
    Pending => "PENDING",
    Processing => "PROCESSING",
    Completed => "COMPLETED",
    Failed => "FAILED",
});

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use std::str::FromStr;

    #[test]
    fn roles_and_user_statuses_use_lowercase_text() {
        assert_eq!(Role::Admin.as_str(), "admin");
        assert_eq!(Role::User.to_string(), "user");
        assert_eq!(Role::from_str("admin").unwrap(), Role::Admin);
        assert_eq!("user".parse::<Role>().unwrap(), Role::User);
        assert_eq!(serde_json::to_string(&Role::Admin).unwrap(), "\"admin\"");
        assert_eq!(
            serde_json::from_str::<Role>("\"user\"").unwrap(),
            Role::User
        );
        assert!(serde_json::from_str::<Role>("\"Admin\"").is_err());
        assert_eq!(UserStatus::Disabled.as_str(), "disabled");
        assert_eq!(
            serde_json::to_string(&UserStatus::Active).unwrap(),
            "\"active\""
        );
        assert_eq!(
            "disabled".parse::<UserStatus>().unwrap(),
            UserStatus::Disabled
        );
    }

    #[test]
    fn unknown_text_is_refused_with_a_readable_error() {
        let err = "root".parse::<Role>().unwrap_err();
        assert_eq!(
            err.to_string(),
            "unknown role \"root\"; expected one of: admin, user"
        );
        assert!("ADMIN".parse::<Role>().is_err());
        assert!("".parse::<UserStatus>().is_err());
        assert!("pending".parse::<OrderStatus>().is_err());
        assert!("DONE".parse::<JobStatus>().is_err());
    }

    #[test]
    fn every_variant_round_trips_through_text_and_json() {
        fn check<T>(all: &[T])
        where
            T: Copy + PartialEq + std::fmt::Debug + FromStr + Serialize + for<'de> Deserialize<'de>,
            T: std::fmt::Display,
            <T as FromStr>::Err: std::fmt::Debug,
        {
            for &v in all {
                let text = v.to_string();
                assert_eq!(text.parse::<T>().unwrap(), v);
                assert_eq!(serde_json::to_string(&v).unwrap(), format!("\"{text}\""));
                assert_eq!(
                    serde_json::from_str::<T>(&format!("\"{text}\"")).unwrap(),
                    v
                );
            }
        }
        check(Role::ALL);
        check(UserStatus::ALL);
        check(OrderStatus::ALL);
        check(JobStatus::ALL);
        check(UsageStatus::ALL);
        assert_eq!(OrderStatus::Pending.as_str(), "PENDING");
        assert_eq!(JobStatus::Processing.as_str(), "PROCESSING");
        assert_eq!(
            serde_json::to_string(&JobStatus::Completed).unwrap(),
            "\"COMPLETED\""
        );
    }
}
