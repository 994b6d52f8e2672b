//! The reasons a balance changes, one per `balance_ledger` row.

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

/// Why a ledger row moved a balance.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum LedgerKind {
    /// A completed order credited the balance.
    Topup,
    /// A billed call or job debited the balance.
    Charge,
    /// An admin changed the balance by hand.
    Adjustment,
    /// Money given back to the user.
    Refund,
}

text_enum!(LedgerKind, "ledger kind", {
    Topup => "topup",
    Charge => "charge",
    Adjustment => "adjustment",
    Refund => "refund",
});

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn kinds_use_lowercase_text() {
        let expected = ["topup", "charge", "adjustment", "refund"];
        for (&kind, text) in LedgerKind::ALL.iter().zip(expected) {
            assert_eq!(kind.as_str(), text);
            assert_eq!(text.parse::<LedgerKind>().unwrap(), kind);
            assert_eq!(serde_json::to_string(&kind).unwrap(), format!("\"{text}\""));
            assert_eq!(
                serde_json::from_str::<LedgerKind>(&format!("\"{text}\"")).unwrap(),
                kind
            );
        }
        assert_eq!(LedgerKind::ALL.len(), 4);
        assert!("Topup".parse::<LedgerKind>().is_err());
        assert!("withdrawal".parse::<LedgerKind>().is_err());
    }
}
