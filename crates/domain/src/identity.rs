//! Validated login identities: a normalized email address and a password bcrypt can hash faithfully.

use std::fmt;

use serde::{Deserialize, Serialize};

/// Why an email or password was refused; the messages are written for an API client.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IdentityError {
    /// Not of the shape `name@example.com`.
    #[error("email must look like name@example.com")]
    InvalidEmail,
    /// Longer than [`Email::MAX_LEN`] bytes.
    #[error("email must be at most 254 characters")]
    EmailTooLong,
    /// Fewer than [`Password::MIN_CHARS`] characters.
    #[error("password must be at least 8 characters")]
    PasswordTooShort,
    /// More than [`Password::MAX_BYTES`] bytes (bcrypt would silently ignore the rest).
    #[error("password must be at most 72 bytes")]
    PasswordTooLong,
    /// Only whitespace.
    #[error("password must not be only whitespace")]
    PasswordBlank,
}

/// An email address, trimmed and lowercased, of the shape `local@domain.tld`.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct Email(String);

impl Email {
    /// Longest accepted address, in bytes (RFC 5321 path limit minus the angle brackets).
    pub const MAX_LEN: usize = 254;

    /// Trims and lowercases `input`, then requires exactly one `@` between a non-empty local part
    /// and a domain of non-empty dot-separated labels (at least two), no whitespace or control
    /// characters, and at most 254 bytes.
    pub fn parse(input: &str) -> Result<Email, IdentityError> {
        let email = input.trim().to_lowercase();
        if email.len() > Self::MAX_LEN {
            return Err(IdentityError::EmailTooLong);
        }
        if email.chars().any(|c| c.is_whitespace() || c.is_control()) {
            return Err(IdentityError::InvalidEmail);
        }
        let Some((local, domain)) = email.split_once('@') else {
            return Err(IdentityError::InvalidEmail);
        };
        let domain_ok = domain.contains('.') && domain.split('.').all(|label| !label.is_empty());
        if local.is_empty() || domain.contains('@') || !domain_ok {
            return Err(IdentityError::InvalidEmail);
        }
        Ok(Email(email))
    }

    /// The normalized address.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The normalized address.
    pub fn into_string(self) -> String {
        self.0
    }
}

impl fmt::Display for Email {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl AsRef<str> for Email {
    fn as_ref(&self) -> &str {
        &self.0
    }
}

impl TryFrom<String> for Email {
    type Error = IdentityError;

    fn try_from(value: String) -> Result<Self, Self::Error> {
        Email::parse(&value)
    }
}

impl From<Email> for String {
    fn from(email: Email) -> String {
        email.0
    }
}

impl utoipa::PartialSchema for Email {
    fn schema() -> utoipa::openapi::RefOr<utoipa::openapi::schema::Schema> {
        use utoipa::openapi::schema::{KnownFormat, ObjectBuilder, SchemaFormat, Type};
        ObjectBuilder::new()
            .schema_type(Type::String)
            .format(Some(SchemaFormat::KnownFormat(KnownFormat::Email)))
            .max_length(Some(Email::MAX_LEN))
            .examples([serde_json::json!("alice@example.com")])
            .into()
    }
}

impl utoipa::ToSchema for Email {}

/// A password that passed [`Password::validate`]; its `Debug` never shows it.
#[derive(Clone, PartialEq, Eq)]
pub struct Password(String);

impl Password {
    /// Fewest characters accepted.
    pub const MIN_CHARS: usize = 8;
    /// Most bytes accepted: bcrypt ignores everything after the 72nd byte.
    pub const MAX_BYTES: usize = 72;

    /// Requires at least 8 characters, at most 72 bytes, and not only whitespace.
    pub fn validate(input: &str) -> Result<(), IdentityError> {
        if input.chars().count() < Self::MIN_CHARS {
            return Err(IdentityError::PasswordTooShort);
        }
        if input.len() > Self::MAX_BYTES {
            return Err(IdentityError::PasswordTooLong);
        }
        if input.chars().all(char::is_whitespace) {
            return Err(IdentityError::PasswordBlank);
        }
        Ok(())
    }

    /// [`Password::validate`]s `input` and keeps it, unchanged (never trimmed).
    pub fn parse(input: &str) -> Result<Password, IdentityError> {
        Password::validate(input)?;
        Ok(Password(input.to_owned()))
    }

    /// The password itself, to hash.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Password {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Password(<redacted>)")
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn email_is_trimmed_and_lowercased() {
        let email = Email::parse("  Alice.Smith+tag@Example.COM \n").unwrap();
        assert_eq!(email.as_str(), "alice.smith+tag@example.com");
        assert_eq!(email.to_string(), "alice.smith+tag@example.com");
        assert_eq!(Email::parse("a@b.co").unwrap().as_str(), "a@b.co");
    }

    #[test]
    fn malformed_emails_are_refused() {
        for bad in [
            "",
            "   ",
            "alice",
            "alice@",
            "@example.com",
            "alice@example",
            "alice@@example.com",
            "a@b@example.com",
            "alice@.com",
            "alice@example.",
            "alice@example..com",
            "al ice@example.com",
            "alice@exa mple.com",
            "alice\u{0}@example.com",
            "alice\t@example.com",
        ] {
            assert_eq!(
                Email::parse(bad),
                Err(IdentityError::InvalidEmail),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn email_length_is_bounded() {
        let at_limit = format!("{}@example.com", "a".repeat(254 - 12));
        assert_eq!(at_limit.len(), 254);
        assert!(Email::parse(&at_limit).is_ok());
        let over = format!("{}@example.com", "a".repeat(254 - 11));
        assert_eq!(Email::parse(&over), Err(IdentityError::EmailTooLong));
        assert_eq!(
            IdentityError::EmailTooLong.to_string(),
            "email must be at most 254 characters"
        );
    }

    #[test]
    fn email_json_is_validated() {
        let email: Email = serde_json::from_str("\"Bob@Example.com\"").unwrap();
        assert_eq!(email.as_str(), "bob@example.com");
        assert_eq!(
            serde_json::to_string(&email).unwrap(),
            "\"bob@example.com\""
        );
        let err = serde_json::from_str::<Email>("\"bob\"").unwrap_err();
        assert!(
            err.to_string()
                .contains("email must look like name@example.com")
        );
    }

    #[test]
    fn password_rules() {
        assert_eq!(Password::validate("12345678"), Ok(()));
        assert_eq!(
            Password::validate("1234567"),
            Err(IdentityError::PasswordTooShort)
        );
        assert_eq!(Password::validate(""), Err(IdentityError::PasswordTooShort));
        // 8 characters of 2 bytes each: counted as characters.
        assert_eq!(Password::validate("éééééééé"), Ok(()));
        assert_eq!(Password::validate(&"a".repeat(72)), Ok(()));
        assert_eq!(
            Password::validate(&"a".repeat(73)),
            Err(IdentityError::PasswordTooLong)
        );
        // 37 two-byte characters = 74 bytes: refused although only 37 characters.
        assert_eq!(
            Password::validate(&"é".repeat(37)),
            Err(IdentityError::PasswordTooLong)
        );
        assert_eq!(
            Password::validate("         "),
            Err(IdentityError::PasswordBlank)
        );
        assert_eq!(
            Password::validate(" \t \n    "),
            Err(IdentityError::PasswordBlank)
        );
        assert_eq!(Password::validate(" passw0rd "), Ok(()));
        assert_eq!(
            IdentityError::PasswordTooShort.to_string(),
            "password must be at least 8 characters"
        );
    }

    #[test]
    fn password_is_kept_unchanged_and_hidden_from_debug() {
        let password = Password::parse(" secret pass ").unwrap();
        assert_eq!(password.expose(), " secret pass ");
        assert_eq!(format!("{password:?}"), "Password(<redacted>)");
        assert!(Password::parse("short").is_err());
    }

    proptest! {
        #[test]
        fn parsed_emails_are_normalized_and_stable(local in "[A-Za-z0-9._%+-]{1,40}", domain in "[A-Za-z0-9-]{1,20}", tld in "[A-Za-z]{2,6}") {
            let input = format!(" {local}@{domain}.{tld} ");
            let email = Email::parse(&input).unwrap();
            prop_assert_eq!(email.as_str(), input.trim().to_lowercase());
            prop_assert_eq!(Email::parse(email.as_str()).unwrap(), email.clone());
        }

        #[test]
        fn password_validation_matches_its_rules(input in "\\PC{0,80}") {
            let expected = input.chars().count() >= 8 && input.len() <= 72 && !input.chars().all(char::is_whitespace);
            prop_assert_eq!(Password::validate(&input).is_ok(), expected);
        }
    }
}
