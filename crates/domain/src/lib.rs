//! Pure domain types of the gateway: money, pricing, roles and state machines, identities and bus messages; no IO.

/// Gives a closed, fieldless enum its wire text: `as_str()`, `Display` and a `FromStr` that refuses unknown text.
macro_rules! text_enum {
    ($ty:ident, $what:literal, { $($variant:ident => $text:literal),+ $(,)? }) => {
        impl $ty {
            /// Every variant, in declaration order.
            pub const ALL: &'static [$ty] = &[$($ty::$variant),+];

            /// The text stored in Postgres and sent over the wire.
            pub fn as_str(self) -> &'static str {
                match self {
                    $($ty::$variant => $text),+
                }
            }
        }

        impl ::std::fmt::Display for $ty {
            fn fmt(&self, f: &mut ::std::fmt::Formatter<'_>) -> ::std::fmt::Result {
                f.write_str(self.as_str())
            }
        }

        impl ::std::str::FromStr for $ty {
            type Err = $crate::status::UnknownVariant;

            fn from_str(s: &str) -> Result<Self, Self::Err> {
                match s {
                    $($text => Ok($ty::$variant),)+
                    _ => Err($crate::status::UnknownVariant {
                        what: $what,
                        value: s.to_owned(),
                        expected: &[$($text),+],
                    }),
                }
            }
        }
    };
}

pub mod identity;
pub mod jobs;
pub mod lease;
pub mod ledger;
pub mod messages;
pub mod money;
pub mod pricing;
pub mod provider;
pub mod signature;
pub mod status;

pub use identity::{Email, IdentityError, Password};
pub use jobs::JobView;
pub use lease::LeaseAccount;
pub use ledger::LedgerKind;
pub use messages::{BillingBatch, BillingMessage, InvocationMessage};
pub use money::{Money, MoneyError};
pub use pricing::{ModelKind, PriceTier, Pricing, PricingError, Usage};
pub use provider::ProviderKind;
pub use status::{JobStatus, OrderStatus, Role, UnknownVariant, UsageStatus, UserStatus};
