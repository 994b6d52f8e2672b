//! Model kinds, a model's prices, token usage, and the one formula that turns usage into a cost.

use bigdecimal::num_bigint::BigInt;
use bigdecimal::{BigDecimal, Zero};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::money::{Money, MoneyError};

/// What a model does, which decides the prices it needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum ModelKind {
    /// Chat completions, priced per token.
    Chat,
    /// Image generation, priced per image.
    Image,
    /// Embeddings, priced per input token.
    Embedding,
}

text_enum!(ModelKind, "model kind", { Chat => "chat", Image => "image", Embedding => "embedding" });

/// A model's prices; every one optional on input, and a missing price counts as 0.
///
/// Token prices are per million tokens. Stored as JSONB in `llm_models.pricing`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Pricing {
    /// Price of one million uncached prompt tokens.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub input_per_million: Option<Money>,
    /// Price of one million completion tokens.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub output_per_million: Option<Money>,
    /// Price of one million cached prompt tokens; when absent they cost `input_per_million`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cached_input_per_million: Option<Money>,
    /// Price of one generated image.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub per_image: Option<Money>,
    /// Flat price of every call.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub per_request: Option<Money>,
    /// Price of one million prompt tokens written to the provider's cache; when absent they
    /// cost `input_per_million`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cache_write_per_million: Option<Money>,
    /// Long-context tiers, by ascending threshold: once a call's prompt passes a tier's
    /// `above_prompt_tokens`, all its tokens are priced at that tier's token prices (a price the
    /// tier does not set stays the one below it).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub long_context: Vec<PriceTier>,
}

/// The token prices of a call whose prompt has more than `above_prompt_tokens` tokens.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PriceTier {
    /// The tier applies to prompts longer than this (at least 1).
    pub above_prompt_tokens: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub input_per_million: Option<Money>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub output_per_million: Option<Money>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cached_input_per_million: Option<Money>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cache_write_per_million: Option<Money>,
}

/// The per-million token prices one call is priced at (its tier's, else the base ones).
#[derive(Debug, Clone, Copy)]
struct TokenPrices<'a> {
    input: Option<&'a Money>,
    output: Option<&'a Money>,
    /// Cached and written prompt tokens fall back to the input price.
    cached_input: Option<&'a Money>,
    cache_write: Option<&'a Money>,
}

impl<'a> TokenPrices<'a> {
    fn over(self, tier: &'a PriceTier) -> TokenPrices<'a> {
        TokenPrices {
            input: tier.input_per_million.as_ref().or(self.input),
            output: tier.output_per_million.as_ref().or(self.output),
            cached_input: tier.cached_input_per_million.as_ref().or(self.cached_input),
            cache_write: tier.cache_write_per_million.as_ref().or(self.cache_write),
        }
    }

    /// Each price by name, a cached or written price falling back to the input price.
    fn effective(self) -> [(&'static str, Option<&'a Money>); 4] {
        [
            ("input_per_million", self.input),
            ("output_per_million", self.output),
            ("cached_input_per_million", self.cached_input.or(self.input)),
            ("cache_write_per_million", self.cache_write.or(self.input)),
        ]
    }
}

/// Why a pricing was refused; each message names the field.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PricingError {
    /// A price below zero.
    #[error("pricing.{field} must not be negative")]
    Negative {
        /// The offending field.
        field: &'static str,
    },
    /// A price above [`Pricing::MAX_PRICE`].
    #[error("pricing.{field} must be at most 1000000")]
    TooLarge {
        /// The offending field.
        field: &'static str,
    },
    /// A long-context tier that is out of order, sets no price, or lowers a price.
    #[error("pricing.long_context[{index}]: {reason}")]
    Tier {
        /// The tier's position.
        index: usize,
        /// What is wrong with it.
        reason: String,
    },
    /// A price the model's kind needs is absent.
    #[error("pricing.{field} is required for {kind} models")]
    Missing {
        /// The absent field.
        field: &'static str,
        /// The model's kind.
        kind: ModelKind,
    },
}

/// Token counts (and images) of one call, as reported by the upstream provider.
///
/// `cached_prompt_tokens` is the part of `prompt_tokens` served from the provider's cache and
/// `cache_write_prompt_tokens` the part written to it, so together they can never exceed
/// `prompt_tokens`. Missing fields read as 0.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize, ToSchema)]
#[serde(default)]
pub struct Usage {
    pub prompt_tokens: u64,
    pub completion_tokens: u64,
    pub cached_prompt_tokens: u64,
    pub images: u32,
    /// Left out of the wire shape when 0, so charges read the same to a billing-worker of the
    /// previous release during a rolling deploy.
    #[serde(skip_serializing_if = "is_zero")]
    pub cache_write_prompt_tokens: u64,
}

fn is_zero(count: &u64) -> bool {
    *count == 0
}

impl Pricing {
    /// The largest price accepted for any field.
    pub const MAX_PRICE: u32 = 1_000_000;

    /// Checks every price is within 0..=1,000,000 and the prices `kind` needs are present:
    /// a chat model needs input and output prices, an image model needs `per_image`, an
    /// embedding model `input_per_million`.
    pub fn validate(&self, kind: ModelKind) -> Result<(), PricingError> {
        for (field, price) in self.fields() {
            check_price(price).map_err(|too_large| match too_large {
                true => PricingError::TooLarge { field },
                false => PricingError::Negative { field },
            })?;
        }
        self.validate_tiers()?;
        let required: &[(&'static str, &Option<Money>)] = match kind {
            ModelKind::Chat => &[
                ("input_per_million", &self.input_per_million),
                ("output_per_million", &self.output_per_million),
            ],
            ModelKind::Image => &[("per_image", &self.per_image)],
            ModelKind::Embedding => &[("input_per_million", &self.input_per_million)],
        };
        match required.iter().find(|(_, price)| price.is_none()) {
            Some(&(field, _)) => Err(PricingError::Missing { field, kind }),
            None => Ok(()),
        }
    }

    /// Tiers ascend by threshold, each sets a valid price, and none lowers a price: a longer
    /// prompt never costs less per token, so a hold priced at a prompt's upper bound covers any
    /// shorter prompt's cost.
    fn validate_tiers(&self) -> Result<(), PricingError> {
        const MAX_TIERS: usize = 8;
        let tier_error = |index: usize, reason: String| PricingError::Tier { index, reason };
        if self.long_context.len() > MAX_TIERS {
            return Err(tier_error(MAX_TIERS, format!("at most {MAX_TIERS} tiers")));
        }
        let mut below = self.base_prices();
        let mut threshold = 0;
        for (index, tier) in self.long_context.iter().enumerate() {
            if tier.above_prompt_tokens <= threshold {
                return Err(tier_error(
                    index,
                    format!("above_prompt_tokens must be above {threshold}"),
                ));
            }
            threshold = tier.above_prompt_tokens;
            let prices = [
                ("input_per_million", &tier.input_per_million),
                ("output_per_million", &tier.output_per_million),
                ("cached_input_per_million", &tier.cached_input_per_million),
                ("cache_write_per_million", &tier.cache_write_per_million),
            ];
            if prices.iter().all(|(_, price)| price.is_none()) {
                return Err(tier_error(index, "sets no price".to_owned()));
            }
            for (field, price) in prices {
                if let Err(too_large) = check_price(price.as_ref()) {
                    let reason = match too_large {
                        true => format!("{field} must be at most {}", Self::MAX_PRICE),
                        false => format!("{field} must not be negative"),
                    };
                    return Err(tier_error(index, reason));
                }
            }
            let above = below.over(tier);
            for ((field, old), (_, new)) in below.effective().into_iter().zip(above.effective()) {
                let zero = Money::zero();
                if new.unwrap_or(&zero) < old.unwrap_or(&zero) {
                    return Err(tier_error(
                        index,
                        format!(
                            "{field} must not be below the price under it (a longer prompt never costs less per token)"
                        ),
                    ));
                }
            }
            below = above;
        }
        Ok(())
    }

    fn base_prices(&self) -> TokenPrices<'_> {
        TokenPrices {
            input: self.input_per_million.as_ref(),
            output: self.output_per_million.as_ref(),
            cached_input: self.cached_input_per_million.as_ref(),
            cache_write: self.cache_write_per_million.as_ref(),
        }
    }

    /// The token prices of a call with `prompt_tokens` prompt tokens: the highest tier it
    /// passes, else the base prices.
    fn prices_for(&self, prompt_tokens: u64) -> TokenPrices<'_> {
        self.long_context
            .iter()
            .take_while(|tier| prompt_tokens > tier.above_prompt_tokens)
            .fold(self.base_prices(), TokenPrices::over)
    }

    /// The cost of `usage`, computed exactly and rounded once (half-up to 8 decimals), at the
    /// token prices of the long-context tier its prompt reaches (else the base prices):
    ///
    /// (prompt - cached - written) × input / 10^6 + cached × (cached price, else input) / 10^6
    /// + written × (cache write price, else input) / 10^6 + completion × output / 10^6
    /// + images × per_image + per_request.
    ///
    /// Refuses a usage whose cached and written prompt tokens exceed its prompt tokens
    /// ([`MoneyError::CachedTokensExceedPrompt`]) and a result out of range ([`MoneyError::OutOfRange`]).
    /// Expects a validated pricing (non-negative prices).
    pub fn cost(&self, usage: &Usage) -> Result<Money, MoneyError> {
        let cache_tokens = usage
            .cached_prompt_tokens
            .checked_add(usage.cache_write_prompt_tokens)
            .filter(|cache| *cache <= usage.prompt_tokens)
            .ok_or(MoneyError::CachedTokensExceedPrompt {
                cached_prompt_tokens: usage
                    .cached_prompt_tokens
                    .saturating_add(usage.cache_write_prompt_tokens),
                prompt_tokens: usage.prompt_tokens,
            })?;
        let prices = self.prices_for(usage.prompt_tokens);
        let [_, _, (_, cached_input), (_, cache_write)] = prices.effective();
        let tokens = per_million(usage.prompt_tokens - cache_tokens, prices.input)
            + per_million(usage.cached_prompt_tokens, cached_input)
            + per_million(usage.cache_write_prompt_tokens, cache_write)
            + per_million(usage.completion_tokens, prices.output);
        Money::from_decimal_rounded(tokens + self.per_call(usage.images))
    }

    /// The most a call with these token counts can cost, however the provider splits its prompt
    /// between plain, cached and cache-written tokens: every prompt token at the highest of
    /// the three prices (of the tier the prompt reaches). What a hold reserves.
    pub fn max_cost(&self, usage: &Usage) -> Result<Money, MoneyError> {
        let prices = self.prices_for(usage.prompt_tokens);
        let [(_, input), _, (_, cached_input), (_, cache_write)] = prices.effective();
        let prompt_price = [input, cached_input, cache_write]
            .into_iter()
            .flatten()
            .max();
        let tokens = per_million(usage.prompt_tokens, prompt_price)
            + per_million(usage.completion_tokens, prices.output);
        Money::from_decimal_rounded(tokens + self.per_call(usage.images))
    }

    /// What a call costs besides its tokens: its images and the fee per request.
    fn per_call(&self, images: u32) -> BigDecimal {
        times(u64::from(images), self.per_image.as_ref(), 0)
            + times(1, self.per_request.as_ref(), 0)
    }

    fn fields(&self) -> [(&'static str, Option<&Money>); 6] {
        [
            ("input_per_million", self.input_per_million.as_ref()),
            ("output_per_million", self.output_per_million.as_ref()),
            (
                "cached_input_per_million",
                self.cached_input_per_million.as_ref(),
            ),
            ("per_image", self.per_image.as_ref()),
            ("per_request", self.per_request.as_ref()),
            (
                "cache_write_per_million",
                self.cache_write_per_million.as_ref(),
            ),
        ]
    }
}

/// `Err(true)` for a price above [`Pricing::MAX_PRICE`], `Err(false)` for a negative one.
fn check_price(price: Option<&Money>) -> Result<(), bool> {
    match price {
        Some(price) if price.is_negative() => Err(false),
        Some(price) if price > &Money::from(Pricing::MAX_PRICE) => Err(true),
        _ => Ok(()),
    }
}

/// `tokens × price / 10^6`, exact.
fn per_million(tokens: u64, price: Option<&Money>) -> BigDecimal {
    times(tokens, price, 6)
}

/// `count × price / 10^shift`, exact: the division only moves the decimal point.
fn times(count: u64, price: Option<&Money>, shift: i64) -> BigDecimal {
    match price {
        None => BigDecimal::zero(),
        Some(price) => {
            let (mantissa, scale) = price.as_decimal().as_bigint_and_scale();
            BigDecimal::new(mantissa.into_owned() * BigInt::from(count), scale + shift)
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn money(text: &str) -> Money {
        Money::parse(text).unwrap()
    }

    fn chat(input: &str, output: &str) -> Pricing {
        Pricing {
            input_per_million: Some(money(input)),
            output_per_million: Some(money(output)),
            ..Pricing::default()
        }
    }

    fn usage(prompt_tokens: u64, completion_tokens: u64) -> Usage {
        Usage {
            prompt_tokens,
            completion_tokens,
            ..Usage::default()
        }
    }

    #[test]
    fn model_kind_text() {
        assert_eq!(ModelKind::Chat.as_str(), "chat");
        assert_eq!("image".parse::<ModelKind>().unwrap(), ModelKind::Image);
        assert!("video".parse::<ModelKind>().is_err());
        assert_eq!(
            serde_json::to_string(&ModelKind::Image).unwrap(),
            "\"image\""
        );
        assert_eq!(
            serde_json::from_str::<ModelKind>("\"chat\"").unwrap(),
            ModelKind::Chat
        );
    }

    #[test]
    fn hand_computed_chat_cost() {
        // 1234 × 0.15 / 10^6 + 567 × 0.60 / 10^6 = 0.0001851 + 0.0003402
        let cost = chat("0.15", "0.60").cost(&usage(1234, 567)).unwrap();
        assert_eq!(cost.to_string(), "0.0005253");
        assert_eq!(cost, money("0.0005253"));
    }

    #[test]
    fn one_token_at_the_smallest_price() {
        let cost = chat("0.01", "0").cost(&usage(1, 0)).unwrap();
        assert_eq!(cost.to_string(), "0.00000001");
        // 1 token at 0.004/M = 0.000000004: below half a unit, rounds to zero.
        assert!(chat("0.004", "0").cost(&usage(1, 0)).unwrap().is_zero());
        // 1 token at 0.005/M = 0.000000005: exactly half a unit, rounds up.
        assert_eq!(
            chat("0.005", "0").cost(&usage(1, 0)).unwrap().to_string(),
            "0.00000001"
        );
    }

    #[test]
    fn rounds_once_at_the_end_not_per_term() {
        // Each term is 0.000000004 (would round to 0 alone); together 0.000000012 -> 0.00000001.
        let pricing = Pricing {
            input_per_million: Some(money("0.004")),
            output_per_million: Some(money("0.004")),
            cached_input_per_million: Some(money("0.004")),
            ..Pricing::default()
        };
        let mixed = Usage {
            prompt_tokens: 2,
            cached_prompt_tokens: 1,
            completion_tokens: 1,
            images: 0,
            cache_write_prompt_tokens: 0,
        };
        assert_eq!(pricing.cost(&mixed).unwrap().to_string(), "0.00000001");
        // 0.0000000025 × 2 = 0.000000005 -> rounds up only when summed first.
        let pricing = chat("0.0025", "0.0025");
        assert_eq!(
            pricing.cost(&usage(1, 1)).unwrap().to_string(),
            "0.00000001"
        );
    }

    #[test]
    fn cached_tokens_use_the_cached_price_or_the_input_price() {
        let mut pricing = chat("2", "8");
        let usage = Usage {
            prompt_tokens: 1_000_000,
            cached_prompt_tokens: 400_000,
            completion_tokens: 0,
            images: 0,
            cache_write_prompt_tokens: 0,
        };
        // Without a cached price, cached tokens cost the input price.
        assert_eq!(pricing.cost(&usage).unwrap(), money("2"));
        pricing.cached_input_per_million = Some(money("0.5"));
        // 600000 × 2/M + 400000 × 0.5/M = 1.2 + 0.2
        assert_eq!(pricing.cost(&usage).unwrap(), money("1.4"));
    }

    #[test]
    fn cached_tokens_above_prompt_tokens_are_refused() {
        let usage = Usage {
            prompt_tokens: 10,
            cached_prompt_tokens: 11,
            ..Usage::default()
        };
        let err = chat("1", "1").cost(&usage).unwrap_err();
        assert_eq!(
            err,
            MoneyError::CachedTokensExceedPrompt {
                cached_prompt_tokens: 11,
                prompt_tokens: 10
            }
        );
        assert_eq!(
            err.to_string(),
            "usage is invalid: cached_prompt_tokens (11) exceeds prompt_tokens (10)"
        );
    }

    #[test]
    fn image_and_request_prices() {
        let pricing = Pricing {
            per_image: Some(money("0.04")),
            per_request: Some(money("0.001")),
            ..Pricing::default()
        };
        let usage = Usage {
            images: 3,
            ..Usage::default()
        };
        assert_eq!(pricing.cost(&usage).unwrap(), money("0.121"));
        assert_eq!(pricing.cost(&Usage::default()).unwrap(), money("0.001"));
        assert!(Pricing::default().cost(&usage).unwrap().is_zero());
    }

    #[test]
    fn huge_usage_is_refused_not_wrapped() {
        let max = chat("1000000", "1000000");
        // 10^12 tokens at 1,000,000 per million = 10^12: large but in range.
        assert_eq!(
            max.cost(&usage(1_000_000_000_000, 0)).unwrap().to_string(),
            "1000000000000"
        );
        // 10^18 - 1 tokens: the largest whole amount.
        assert_eq!(
            max.cost(&usage(999_999_999_999_999_999, 0))
                .unwrap()
                .to_string(),
            "999999999999999999"
        );
        // 10^18 tokens (or 5 × 10^17 each way) reach 10^18: refused.
        assert_eq!(
            max.cost(&usage(1_000_000_000_000_000_000, 0)),
            Err(MoneyError::OutOfRange)
        );
        assert_eq!(
            max.cost(&usage(500_000_000_000_000_000, 500_000_000_000_000_000)),
            Err(MoneyError::OutOfRange)
        );
        assert_eq!(
            max.cost(&usage(u64::MAX, u64::MAX)),
            Err(MoneyError::OutOfRange)
        );
        let images = Pricing {
            per_image: Some(money("1000000")),
            ..Pricing::default()
        };
        let all_images = Usage {
            images: u32::MAX,
            ..Usage::default()
        };
        assert_eq!(
            images.cost(&all_images).unwrap().to_string(),
            "4294967295000000"
        );
    }

    #[test]
    fn validate_requires_the_prices_of_the_kind() {
        assert_eq!(chat("0.15", "0.6").validate(ModelKind::Chat), Ok(()));
        let no_output = Pricing {
            input_per_million: Some(money("1")),
            ..Pricing::default()
        };
        let err = no_output.validate(ModelKind::Chat).unwrap_err();
        assert_eq!(
            err,
            PricingError::Missing {
                field: "output_per_million",
                kind: ModelKind::Chat
            }
        );
        assert_eq!(
            err.to_string(),
            "pricing.output_per_million is required for chat models"
        );
        assert_eq!(
            Pricing::default().validate(ModelKind::Chat).unwrap_err(),
            PricingError::Missing {
                field: "input_per_million",
                kind: ModelKind::Chat
            }
        );
        let err = chat("1", "1").validate(ModelKind::Image).unwrap_err();
        assert_eq!(
            err.to_string(),
            "pricing.per_image is required for image models"
        );
        let image = Pricing {
            per_image: Some(money("0.04")),
            ..Pricing::default()
        };
        assert_eq!(image.validate(ModelKind::Image), Ok(()));
        let embedding = Pricing {
            input_per_million: Some(money("0.02")),
            ..Pricing::default()
        };
        assert_eq!(embedding.validate(ModelKind::Embedding), Ok(()));
        assert_eq!(
            image
                .validate(ModelKind::Embedding)
                .unwrap_err()
                .to_string(),
            "pricing.input_per_million is required for embedding models"
        );
        // Zero prices are allowed (a free model).
        assert_eq!(chat("0", "0").validate(ModelKind::Chat), Ok(()));
    }

    fn tier(above: u64, input: &str, output: &str) -> PriceTier {
        PriceTier {
            above_prompt_tokens: above,
            input_per_million: Some(money(input)),
            output_per_million: Some(money(output)),
            ..PriceTier::default()
        }
    }

    #[test]
    fn cache_writes_use_the_cache_write_price_or_the_input_price() {
        let mut pricing = chat("3", "15");
        pricing.cached_input_per_million = Some(money("0.3"));
        let usage = Usage {
            prompt_tokens: 1_000_000,
            cached_prompt_tokens: 200_000,
            cache_write_prompt_tokens: 300_000,
            ..Usage::default()
        };
        // 500000 × 3/M + 200000 × 0.3/M + 300000 × 3/M = 1.5 + 0.06 + 0.9
        assert_eq!(pricing.cost(&usage).unwrap(), money("2.46"));
        pricing.cache_write_per_million = Some(money("3.75"));
        // ... + 300000 × 3.75/M = 1.5 + 0.06 + 1.125
        assert_eq!(pricing.cost(&usage).unwrap(), money("2.685"));
        let too_many = Usage {
            prompt_tokens: 10,
            cached_prompt_tokens: 6,
            cache_write_prompt_tokens: 5,
            ..Usage::default()
        };
        assert_eq!(
            pricing.cost(&too_many),
            Err(MoneyError::CachedTokensExceedPrompt {
                cached_prompt_tokens: 11,
                prompt_tokens: 10
            })
        );
    }

    #[test]
    fn a_prompt_past_a_tier_prices_all_its_tokens_at_the_tier() {
        let mut pricing = chat("3", "15");
        pricing.cached_input_per_million = Some(money("0.3"));
        pricing.per_request = Some(money("0.01"));
        pricing.long_context = vec![
            PriceTier {
                cached_input_per_million: Some(money("0.6")),
                ..tier(200_000, "6", "22.5")
            },
            tier(1_000_000, "12", "45"),
        ];
        assert_eq!(pricing.validate(ModelKind::Chat), Ok(()));
        let at = |prompt_tokens: u64, cached: u64| Usage {
            prompt_tokens,
            cached_prompt_tokens: cached,
            completion_tokens: 1_000,
            ..Usage::default()
        };
        // At the threshold: base prices. 200000 × 3/M + 1000 × 15/M + 0.01
        assert_eq!(pricing.cost(&at(200_000, 0)).unwrap(), money("0.625"));
        // Past it: every token at the tier. 200001 × 6/M + 1000 × 22.5/M + 0.01
        assert_eq!(pricing.cost(&at(200_001, 0)).unwrap(), money("1.232506"));
        // The tier's cached price; 100001 × 6/M + 100000 × 0.6/M + 0.0225 + 0.01
        assert_eq!(
            pricing.cost(&at(200_001, 100_000)).unwrap(),
            money("0.692506")
        );
        // The second tier keeps the first tier's cached price (it sets none).
        // 1000001 × 12/M - 0 + 1000 × 45/M + 0.01 = 12.000012 + 0.045 + 0.01
        assert_eq!(pricing.cost(&at(1_000_001, 0)).unwrap(), money("12.055012"));
    }

    #[test]
    fn the_hold_prices_every_prompt_token_at_the_highest_prompt_price() {
        let mut pricing = chat("3", "15");
        pricing.cache_write_per_million = Some(money("3.75"));
        pricing.per_request = Some(money("0.5"));
        let usage = usage(1_000_000, 1_000_000);
        // 1000000 × 3.75/M + 1000000 × 15/M + 0.5
        assert_eq!(pricing.max_cost(&usage).unwrap(), money("19.25"));
        pricing.cache_write_per_million = None;
        assert_eq!(
            pricing.max_cost(&usage).unwrap(),
            pricing.cost(&usage).unwrap()
        );
        pricing.long_context = vec![tier(10, "4", "16")];
        assert_eq!(pricing.max_cost(&usage).unwrap(), money("20.5"));
    }

    #[test]
    fn tiers_are_validated_when_the_model_is_saved() {
        let base = chat("3", "15");
        let with = |tiers: Vec<PriceTier>| Pricing {
            long_context: tiers,
            ..base.clone()
        };
        let refused = [
            (
                vec![tier(0, "6", "22")],
                "long_context[0]: above_prompt_tokens must be above 0",
            ),
            (
                vec![tier(100, "6", "22"), tier(100, "7", "23")],
                "long_context[1]: above_prompt_tokens must be above 100",
            ),
            (
                vec![PriceTier {
                    above_prompt_tokens: 5,
                    ..PriceTier::default()
                }],
                "long_context[0]: sets no price",
            ),
            (
                vec![tier(100, "2", "22")],
                "long_context[0]: input_per_million must not be below the price under it",
            ),
            (
                vec![tier(100, "6", "22"), tier(200, "6", "21")],
                "long_context[1]: output_per_million must not be below",
            ),
            (
                vec![tier(100, "-1", "22")],
                "long_context[0]: input_per_million must not be negative",
            ),
            (
                vec![tier(100, "6", "1000001")],
                "long_context[0]: output_per_million must be at most 1000000",
            ),
            (
                (1..=9).map(|i| tier(i * 10, "6", "22")).collect(),
                "at most 8 tiers",
            ),
        ];
        for (tiers, message) in refused {
            let error = with(tiers)
                .validate(ModelKind::Chat)
                .unwrap_err()
                .to_string();
            assert!(
                error.starts_with(&format!("pricing.{message}")) || error.contains(message),
                "{error} should say {message}"
            );
        }
        // A cheaper cached price in a tier is refused too (it falls back to the input price).
        let mut cached = base.clone();
        cached.cached_input_per_million = Some(money("0.3"));
        cached.long_context = vec![PriceTier {
            cached_input_per_million: Some(money("0.2")),
            ..tier(100, "6", "22")
        }];
        assert!(cached.validate(ModelKind::Chat).is_err());
        let mut write = base.clone();
        write.cache_write_per_million = Some(money("-0.1"));
        assert_eq!(
            write.validate(ModelKind::Chat),
            Err(PricingError::Negative {
                field: "cache_write_per_million"
            })
        );
        // The JSON shape, with unknown tier fields refused.
        let parsed: Pricing = serde_json::from_value(serde_json::json!({
            "input_per_million": "3", "output_per_million": "15", "cache_write_per_million": "3.75",
            "long_context": [{"above_prompt_tokens": 200000, "input_per_million": "6", "output_per_million": "22.5"}]
        }))
        .unwrap();
        assert_eq!(parsed.long_context[0], tier(200_000, "6", "22.5"));
        assert!(
            serde_json::from_value::<Pricing>(serde_json::json!({
                "long_context": [{"above_prompt_tokens": 1, "inptu_per_million": "6"}]
            }))
            .is_err()
        );
    }

    #[test]
    fn validate_bounds_every_price() {
        let mut pricing = chat("1", "1");
        pricing.per_request = Some(money("-0.00000001"));
        let err = pricing.validate(ModelKind::Chat).unwrap_err();
        assert_eq!(
            err,
            PricingError::Negative {
                field: "per_request"
            }
        );
        assert_eq!(err.to_string(), "pricing.per_request must not be negative");

        let mut pricing = chat("1", "1");
        pricing.cached_input_per_million = Some(money("1000000.00000001"));
        let err = pricing.validate(ModelKind::Chat).unwrap_err();
        assert_eq!(
            err.to_string(),
            "pricing.cached_input_per_million must be at most 1000000"
        );
        assert_eq!(chat("1000000", "1000000").validate(ModelKind::Chat), Ok(()));
        assert_eq!(
            chat("-1", "1").validate(ModelKind::Chat),
            Err(PricingError::Negative {
                field: "input_per_million"
            })
        );
    }

    #[test]
    fn pricing_json_shape() {
        let pricing: Pricing =
            serde_json::from_str(r#"{"input_per_million": "0.15", "output_per_million": 0.60}"#)
                .unwrap();
        assert_eq!(pricing, chat("0.15", "0.6"));
        assert_eq!(
            serde_json::to_string(&pricing).unwrap(),
            r#"{"input_per_million":"0.15","output_per_million":"0.6"}"#
        );
        assert_eq!(serde_json::to_string(&Pricing::default()).unwrap(), "{}");
        let with_null: Pricing = serde_json::from_str(r#"{"per_image": null}"#).unwrap();
        assert_eq!(with_null, Pricing::default());
        let err = serde_json::from_str::<Pricing>(r#"{"input_per_milion": "1"}"#).unwrap_err();
        assert!(
            err.to_string().contains("unknown field `input_per_milion`"),
            "{err}"
        );
        assert!(serde_json::from_str::<Pricing>(r#"{"per_image": "1e3"}"#).is_err());
        assert!(serde_json::from_str::<Pricing>(r#"{"per_image": true}"#).is_err());
        // Read back from a JSONB value (persistence path), numbers stay exact.
        let value = serde_json::json!({"per_image": "0.04", "per_request": 0.1});
        let read: Pricing = serde_json::from_value(value).unwrap();
        assert_eq!(read.per_request, Some(money("0.1")));
        assert_eq!(read.per_image, Some(money("0.04")));
    }

    #[test]
    fn usage_json_defaults_missing_fields() {
        let usage: Usage = serde_json::from_str(r#"{"prompt_tokens": 5}"#).unwrap();
        assert_eq!(
            usage,
            Usage {
                prompt_tokens: 5,
                ..Usage::default()
            }
        );
        let text = serde_json::to_string(&usage).unwrap();
        assert_eq!(
            text,
            r#"{"prompt_tokens":5,"completion_tokens":0,"cached_prompt_tokens":0,"images":0}"#
        );
    }

    /// A price between 0 and 1,000,000 with up to 8 decimals, or absent; its mantissa at scale 8.
    fn price() -> impl Strategy<Value = Option<i128>> {
        prop::option::of(prop_oneof![
            0_i128..=1_000_000,
            0_i128..=100_000_000_000_000,
        ])
    }

    fn as_money(mantissa: Option<i128>) -> Option<Money> {
        mantissa.map(|m| Money::from_db(BigDecimal::new(BigInt::from(m), 8)))
    }

    fn tokens() -> impl Strategy<Value = u64> {
        prop_oneof![0_u64..=10_000, 0_u64..=10_000_000_000, any::<u64>()]
    }

    fn usage_strategy() -> impl Strategy<Value = Usage> {
        (tokens(), tokens(), tokens(), tokens(), any::<u32>()).prop_map(
            |(a, b, written, completion, images)| Usage {
                prompt_tokens: a.max(b),
                cached_prompt_tokens: a.min(b),
                cache_write_prompt_tokens: written.min(a.max(b) - a.min(b)),
                completion_tokens: completion,
                images,
            },
        )
    }

    fn pricing_strategy() -> impl Strategy<Value = Pricing> {
        (price(), price(), price(), price(), price(), price()).prop_map(|(i, o, c, img, req, w)| {
            Pricing {
                input_per_million: as_money(i),
                output_per_million: as_money(o),
                cached_input_per_million: as_money(c),
                per_image: as_money(img),
                per_request: as_money(req),
                cache_write_per_million: as_money(w),
                long_context: Vec::new(),
            }
        })
    }

    /// Oracle in integers: the exact cost in units of 10^-14, rounded half-up to 10^-8.
    fn oracle(p: &Pricing, u: &Usage) -> Result<Money, MoneyError> {
        let m = |price: &Option<Money>| -> i128 {
            price
                .as_ref()
                .map(|p| {
                    let (mantissa, _) = p.as_decimal().as_bigint_and_scale();
                    i128::try_from(mantissa.into_owned()).unwrap()
                })
                .unwrap_or(0)
        };
        let input = m(&p.input_per_million);
        let cached = if p.cached_input_per_million.is_some() {
            m(&p.cached_input_per_million)
        } else {
            input
        };
        let written = if p.cache_write_per_million.is_some() {
            m(&p.cache_write_per_million)
        } else {
            input
        };
        let total_e14 =
            i128::from(u.prompt_tokens - u.cached_prompt_tokens - u.cache_write_prompt_tokens)
                * input
                + i128::from(u.cached_prompt_tokens) * cached
                + i128::from(u.cache_write_prompt_tokens) * written
                + i128::from(u.completion_tokens) * m(&p.output_per_million)
                + i128::from(u.images) * m(&p.per_image) * 1_000_000
                + m(&p.per_request) * 1_000_000;
        let rounded_e8 = total_e14 / 1_000_000 + i128::from(total_e14 % 1_000_000 >= 500_000);
        if rounded_e8 >= 10_i128.pow(26) {
            return Err(MoneyError::OutOfRange);
        }
        Ok(Money::from_db(BigDecimal::new(BigInt::from(rounded_e8), 8)))
    }

    proptest! {
        #[test]
        fn cost_matches_the_integer_oracle(p in pricing_strategy(), u in usage_strategy()) {
            prop_assert_eq!(p.cost(&u), oracle(&p, &u));
        }

        #[test]
        fn zero_usage_costs_exactly_per_request(p in pricing_strategy()) {
            prop_assert_eq!(p.cost(&Usage::default()).unwrap(), p.per_request.clone().unwrap_or_else(Money::zero));
        }

        #[test]
        fn cost_is_monotonic_in_each_component(
            p in pricing_strategy(),
            prompt in 0_u64..=1_000_000_000,
            cached in 0_u64..=1_000_000_000,
            completion in 0_u64..=1_000_000_000,
            images in 0_u32..=1_000,
            extra in 1_u64..=1_000_000,
        ) {
            let base = Usage { prompt_tokens: prompt + cached, cached_prompt_tokens: cached, completion_tokens: completion, images, cache_write_prompt_tokens: 0 };
            let cost = p.cost(&base).unwrap();
            let more_prompt = Usage { prompt_tokens: base.prompt_tokens + extra, ..base };
            let more_cached = Usage { prompt_tokens: base.prompt_tokens + extra, cached_prompt_tokens: cached + extra, ..base };
            let more_completion = Usage { completion_tokens: completion + extra, ..base };
            let more_images = Usage { images: images + 1, ..base };
            for bigger in [more_prompt, more_cached, more_completion, more_images] {
                prop_assert!(p.cost(&bigger).unwrap() >= cost, "{:?} vs {:?}", bigger, base);
            }
        }

        #[test]
        fn cost_is_never_negative_and_has_at_most_8_decimals(p in pricing_strategy(), u in usage_strategy()) {
            if let Ok(cost) = p.cost(&u) {
                prop_assert!(!cost.is_negative());
                prop_assert_eq!(cost.as_decimal().fractional_digit_count(), 8);
                prop_assert_eq!(Money::parse(&cost.to_string()).unwrap(), cost);
            }
        }
    }
}
