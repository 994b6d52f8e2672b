//! Words in and out, shared by the OpenAI and the Anthropic routes: a prompt token is a
//! whitespace-separated word, an answer is N words of lorem ipsum.

use std::fmt;

use serde::{Serialize, Serializer};

use crate::config::MockConfig;
use crate::faults::Directives;

/// Counts a text's words into a prompt's token count.
#[derive(Debug, Default, Clone, Copy)]
pub(crate) struct PromptTokens(usize);

impl PromptTokens {
    pub(crate) fn add(&mut self, text: &str) {
        self.0 = self.0.saturating_add(text.split_whitespace().count());
    }

    pub(crate) fn total(self) -> u32 {
        u32::try_from(self.0).unwrap_or(u32::MAX)
    }
}

/// How long an answer is: the configured length or `[[tokens:N]]`, capped by the request's limit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Length {
    pub tokens: u32,
    /// The cap cut the answer short (OpenAI's `length`, Anthropic's `max_tokens`).
    pub capped: bool,
}

impl Length {
    pub(crate) fn new(config: &MockConfig, directives: &Directives, cap: Option<u32>) -> Self {
        let wanted = directives.tokens.unwrap_or(config.completion_tokens);
        let tokens = cap.map_or(wanted, |cap| wanted.min(cap));
        Self {
            tokens,
            capped: tokens < wanted,
        }
    }
}

/// `[[cached:K]]`: K of the prompt's tokens were read from a cache, never more than it has.
pub(crate) fn cached_tokens(directives: &Directives, prompt_tokens: u32) -> Option<u32> {
    directives.cached.map(|cached| cached.min(prompt_tokens))
}

const WORDS: [&str; 8] = [
    "lorem",
    "ipsum",
    "dolor",
    "sit",
    "amet",
    "consectetur",
    "adipiscing",
    "elit",
];
/// The same words as stream deltas: every delta after the first starts with its space, so the
/// deltas concatenate to the non-streamed content.
const SPACED_WORDS: [&str; 8] = [
    " lorem",
    " ipsum",
    " dolor",
    " sit",
    " amet",
    " consectetur",
    " adipiscing",
    " elit",
];

/// The delta text of word `index` (0-based) of an answer.
pub(crate) fn word(index: u32) -> &'static str {
    let slot = index as usize % WORDS.len();
    if index == 0 {
        WORDS[slot]
    } else {
        SPACED_WORDS[slot]
    }
}

/// An answer of N words, serialized without building the string first.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Lorem(pub u32);

impl fmt::Display for Lorem {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        (0..self.0).try_for_each(|index| formatter.write_str(word(index)))
    }
}

impl Serialize for Lorem {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lorem_has_exactly_n_words() {
        for n in [0, 1, 8, 9, 100] {
            let text = Lorem(n).to_string();
            assert_eq!(text.split_whitespace().count(), n as usize);
            assert_eq!(text.split(' ').count(), (n as usize).max(1));
        }
        assert_eq!(Lorem(3).to_string(), "lorem ipsum dolor");
    }

    #[test]
    fn prompt_tokens_are_words() {
        let mut tokens = PromptTokens::default();
        tokens.add("You are  terse");
        tokens.add("general\nkenobi ");
        tokens.add("");
        assert_eq!(tokens.total(), 5);
    }

    #[test]
    fn the_length_is_capped() {
        let config = MockConfig {
            completion_tokens: 8,
            ..MockConfig::default()
        };
        let mut directives = Directives::default();
        let length = |directives: &Directives, cap| Length::new(&config, directives, cap);
        assert_eq!(
            length(&directives, None),
            Length {
                tokens: 8,
                capped: false
            }
        );
        assert_eq!(
            length(&directives, Some(8)),
            Length {
                tokens: 8,
                capped: false
            }
        );
        assert_eq!(
            length(&directives, Some(3)),
            Length {
                tokens: 3,
                capped: true
            }
        );
        directives.scan("[[tokens:100]] [[cached:7]]");
        assert_eq!(
            length(&directives, Some(40)),
            Length {
                tokens: 40,
                capped: true
            }
        );
        assert_eq!(cached_tokens(&directives, 100), Some(7));
        assert_eq!(cached_tokens(&directives, 5), Some(5));
        assert_eq!(cached_tokens(&Directives::default(), 5), None);
    }
}
