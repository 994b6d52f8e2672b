//! The API dialects of providers the gateway can call.

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::pricing::ModelKind;

/// Which API a provider speaks. Clients always speak OpenAI's; the gateway translates.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum ProviderKind {
    /// OpenAI's API and the many compatible ones (chat completions, image generations).
    #[serde(rename = "openai")]
    OpenAi,
    /// Anthropic's Messages API (chat only).
    Anthropic,
}

text_enum!(ProviderKind, "provider kind", { OpenAi => "openai", Anthropic => "anthropic" });

impl ProviderKind {
    /// Whether a model of `kind` can be served by a provider of this kind.
    pub fn serves(self, kind: ModelKind) -> bool {
        match self {
            Self::OpenAi => true,
            Self::Anthropic => kind == ModelKind::Chat,
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn wire_text_and_serde_agree() {
        for &kind in ProviderKind::ALL {
            let json = serde_json::to_string(&kind).unwrap();
            assert_eq!(json, format!("\"{}\"", kind.as_str()));
            assert_eq!(kind.as_str().parse::<ProviderKind>().unwrap(), kind);
        }
        assert!("OpenAI".parse::<ProviderKind>().is_err());
    }

    #[test]
    fn anthropic_serves_chat_only() {
        assert!(ProviderKind::OpenAi.serves(ModelKind::Image));
        assert!(ProviderKind::Anthropic.serves(ModelKind::Chat));
        assert!(!ProviderKind::Anthropic.serves(ModelKind::Image));
    }
}
