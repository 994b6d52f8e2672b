//! Money: an exact signed amount with 8 decimals, the product's one rounding rule, and its text and JSON forms.

use std::fmt;
use std::ops::Neg;
use std::str::FromStr;

use bigdecimal::num_bigint::{BigInt, Sign};
use bigdecimal::{BigDecimal, RoundingMode, ToPrimitive, Zero};
use serde::de::Error as _;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// Decimal places of every stored amount (Postgres `NUMERIC(28,8)`).
pub const SCALE: i64 = 8;

/// [`SCALE`] as a count of decimal places.
const MAX_DECIMALS: u32 = 8;

/// Digits allowed before the decimal point: every amount is strictly below 10^18 in absolute value.
const MAX_INTEGER_DIGITS: usize = 18;

/// 10^(18 + 8): the exclusive bound of an amount's mantissa at [`SCALE`].
const MANTISSA_LIMIT: i128 = 10_i128.pow(26);

/// An exact amount of money: a `BigDecimal` always held at [`SCALE`] decimals, with `|value| < 10^18`.
///
/// Built only through [`Money::parse`] (user text, never rounded), [`Money::from_decimal_rounded`]
/// (computed amounts, rounded once, half-up) or [`Money::from_db`] (values read back from Postgres).
/// Text and JSON carry it as a plain decimal string such as `"10.5"`.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Money(BigDecimal);

/// Why an amount was refused; the messages are written for an API client.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MoneyError {
    /// Not plain decimal text: empty, whitespace, `+`, exponent, `NaN`, `inf`, a lone `.` ...
    #[error("amount must be a decimal number like \"10.50\"")]
    Invalid,
    /// A JSON value of the wrong type (boolean, null, array, object).
    #[error("amount must be a decimal string like \"10.50\" or a number, not {found}")]
    WrongType {
        /// What was found, e.g. "a boolean".
        found: &'static str,
    },
    /// More significant decimal places than allowed; user input is refused, never rounded.
    #[error("amount must have at most {max} decimal places")]
    TooManyDecimals {
        /// The number of decimal places allowed.
        max: u32,
    },
    /// The absolute value is 10^18 or more.
    #[error("amount is out of range: its absolute value must be below 1000000000000000000")]
    OutOfRange,
    /// A usage claims more cached (read or written) prompt tokens than prompt tokens, so it
    /// cannot be priced.
    #[error(
        "usage is invalid: cached_prompt_tokens ({cached_prompt_tokens}) exceeds prompt_tokens ({prompt_tokens})"
    )]
    CachedTokensExceedPrompt {
        /// Cached prompt tokens reported (read from and written to the cache).
        cached_prompt_tokens: u64,
        /// Prompt tokens reported.
        prompt_tokens: u64,
    },
}

impl Money {
    /// Decimal places of every stored amount (Postgres `NUMERIC(28,8)`).
    pub const SCALE: i64 = SCALE;

    /// The largest absolute value an amount can have: every amount is strictly below 10^18.
    pub const MAX_ABS: &'static str = "999999999999999999.99999999";

    /// Zero, at [`SCALE`].
    pub fn zero() -> Money {
        Money(BigDecimal::new(BigInt::zero(), SCALE))
    }

    /// The largest amount, [`Money::MAX_ABS`].
    pub fn max_value() -> Money {
        Money(BigDecimal::new(BigInt::from(MANTISSA_LIMIT - 1), SCALE))
    }

    /// True when the amount is exactly zero.
    pub fn is_zero(&self) -> bool {
        self.0.is_zero()
    }

    /// True when the amount is above zero.
    pub fn is_positive(&self) -> bool {
        self.0.sign() == Sign::Plus
    }

    /// True when the amount is below zero.
    pub fn is_negative(&self) -> bool {
        self.0.sign() == Sign::Minus
    }

    /// Parses exact decimal text with at most 8 decimals: `-?[0-9]+(\.[0-9]+)?`.
    ///
    /// Refuses (never rounds) anything else: empty text, whitespace, `+`, exponents, `NaN`, `inf`,
    /// a leading or trailing `.`, more than 8 significant decimals, or an absolute value of 10^18
    /// or more. Trailing zeros are not significant (`"1.000000000"` is accepted as 1); `-0` is zero.
    pub fn parse(input: &str) -> Result<Money, MoneyError> {
        Money::parse_with_max_decimals(input, MAX_DECIMALS)
    }

    /// Like [`Money::parse`], allowing at most `max_decimals` significant decimals (capped at 8),
    /// e.g. 2 for order amounts.
    pub fn parse_with_max_decimals(input: &str, max_decimals: u32) -> Result<Money, MoneyError> {
        let max = max_decimals.min(MAX_DECIMALS);
        let (negative, unsigned) = match input.strip_prefix('-') {
            Some(rest) => (true, rest),
            None => (false, input),
        };
        let (int_part, frac_part) = match unsigned.split_once('.') {
            Some((int_part, frac_part)) => (int_part, Some(frac_part)),
            None => (unsigned, None),
        };
        if !is_digits(int_part) {
            return Err(MoneyError::Invalid);
        }
        let frac = match frac_part {
            Some(frac) if is_digits(frac) => frac.trim_end_matches('0'),
            Some(_) => return Err(MoneyError::Invalid),
            None => "",
        };
        if frac.len() > max as usize {
            return Err(MoneyError::TooManyDecimals { max });
        }
        let int_digits = int_part.trim_start_matches('0');
        if int_digits.len() > MAX_INTEGER_DIGITS {
            return Err(MoneyError::OutOfRange);
        }
        // At most 18 + 8 digits, so the mantissa fits an i128 without overflow.
        let padding = std::iter::repeat_n(b'0', MAX_DECIMALS as usize - frac.len());
        let magnitude = int_digits
            .bytes()
            .chain(frac.bytes())
            .chain(padding)
            .fold(0_i128, |acc, digit| acc * 10 + i128::from(digit - b'0'));
        let mantissa = if negative { -magnitude } else { magnitude };
        Ok(Money(BigDecimal::new(BigInt::from(mantissa), SCALE)))
    }

    /// THE rounding rule of the product: rounds half-up (away from zero at .5) to 8 decimals,
    /// then refuses an absolute value of 10^18 or more. Every computed amount goes through here.
    pub fn from_decimal_rounded(d: BigDecimal) -> Result<Money, MoneyError> {
        if d.is_zero() {
            return Ok(Money::zero());
        }
        // |d| < 10^int_digits; decide the extremes before rescaling, which could allocate a huge number.
        let (_, scale) = d.as_bigint_and_scale();
        let int_digits = i128::from(d.digits()) - i128::from(scale);
        if int_digits > MAX_INTEGER_DIGITS as i128 {
            return Err(MoneyError::OutOfRange);
        }
        if int_digits < -i128::from(MAX_DECIMALS) {
            // |d| < 10^-9, below half of the smallest unit.
            return Ok(Money::zero());
        }
        Money::checked(d.with_scale_round(SCALE, RoundingMode::HalfUp))
    }

    /// Wraps a `NUMERIC(28,8)` value read from Postgres without a range check (the column already
    /// bounds it); normalizes its scale to 8, rounding half-up should it ever carry more decimals.
    pub fn from_db(d: BigDecimal) -> Money {
        Money(d.with_scale_round(SCALE, RoundingMode::HalfUp))
    }

    /// The amount as a `BigDecimal` at scale 8.
    pub fn as_decimal(&self) -> &BigDecimal {
        &self.0
    }

    /// The amount as a `BigDecimal` at scale 8.
    pub fn into_decimal(self) -> BigDecimal {
        self.0
    }

    /// `self + other`, refused when out of range.
    pub fn checked_add(&self, other: &Money) -> Result<Money, MoneyError> {
        Money::checked(&self.0 + &other.0)
    }

    /// `self - other`, refused when out of range.
    pub fn checked_sub(&self, other: &Money) -> Result<Money, MoneyError> {
        Money::checked(&self.0 - &other.0)
    }

    /// The amount in units of 10^-8 (its mantissa at [`SCALE`]): exact integer arithmetic for
    /// hot paths that add and compare amounts many times (a credit lease's account).
    pub fn units(&self) -> i128 {
        let (mantissa, _) = self.0.with_scale(SCALE).into_bigint_and_exponent();
        // In range by construction: |mantissa| < 10^26 fits an i128.
        mantissa.to_i128().unwrap_or(if self.is_negative() {
            -(MANTISSA_LIMIT - 1)
        } else {
            MANTISSA_LIMIT - 1
        })
    }

    /// The amount of `units` of 10^-8, refused when out of range.
    pub fn from_units(units: i128) -> Result<Money, MoneyError> {
        if units.unsigned_abs() >= MANTISSA_LIMIT.unsigned_abs() {
            return Err(MoneyError::OutOfRange);
        }
        Ok(Money(BigDecimal::new(BigInt::from(units), SCALE)))
    }

    /// `-self` (always in range: the range is symmetric).
    pub fn neg(&self) -> Money {
        Money(-self.0.clone())
    }

    /// `|self|`.
    pub fn abs(&self) -> Money {
        Money(self.0.abs())
    }

    /// Wraps an exact value with at most 8 decimals, refusing it when out of range.
    fn checked(d: BigDecimal) -> Result<Money, MoneyError> {
        let d = d.with_scale(SCALE);
        let (mantissa, _) = d.as_bigint_and_scale();
        match mantissa.to_i128() {
            Some(m) if m.unsigned_abs() < MANTISSA_LIMIT.unsigned_abs() => Ok(Money(d)),
            _ => Err(MoneyError::OutOfRange),
        }
    }
}

fn is_digits(s: &str) -> bool {
    !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit())
}

impl Default for Money {
    fn default() -> Self {
        Money::zero()
    }
}

impl Neg for Money {
    type Output = Money;

    fn neg(self) -> Money {
        Money(-self.0)
    }
}

/// Whole units; every `u32` is in range.
impl From<u32> for Money {
    fn from(units: u32) -> Money {
        Money(BigDecimal::new(BigInt::from(units), 0).with_scale(SCALE))
    }
}

/// Whole units; every `i32` is in range.
impl From<i32> for Money {
    fn from(units: i32) -> Money {
        Money(BigDecimal::new(BigInt::from(units), 0).with_scale(SCALE))
    }
}

impl From<Money> for BigDecimal {
    fn from(money: Money) -> BigDecimal {
        money.0
    }
}

impl FromStr for Money {
    type Err = MoneyError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Money::parse(s)
    }
}

/// Plain decimal text without exponent, trailing zeros trimmed: "10.5", "0", "0.00000015", "-3".
impl fmt::Display for Money {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let width = MAX_DECIMALS as usize;
        let at_scale = self.0.with_scale(SCALE);
        let (mantissa, _) = at_scale.as_bigint_and_scale();
        let mut digits = mantissa.magnitude().to_str_radix(10);
        if digits.len() <= width {
            digits = format!("{digits:0>w$}", w = width + 1);
        }
        let (int_part, frac_part) = digits.split_at(digits.len() - width);
        let frac_part = frac_part.trim_end_matches('0');
        let mut text = String::with_capacity(digits.len() + 2);
        if mantissa.sign() == Sign::Minus {
            text.push('-');
        }
        text.push_str(int_part);
        if !frac_part.is_empty() {
            text.push('.');
            text.push_str(frac_part);
        }
        f.pad(&text)
    }
}

impl Serialize for Money {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

/// Accepts a JSON string or a JSON number, both parsed exactly by [`Money::parse`]'s rules.
///
/// Numbers rely on serde_json's `arbitrary_precision` (enabled workspace-wide): the literal text
/// is kept, so `10.25` is exact and `1e309` or `1.5e3` are refused like the same text would be.
impl<'de> Deserialize<'de> for Money {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        use serde_json::Value;
        let parsed = match Value::deserialize(deserializer)? {
            Value::String(text) => Money::parse(&text),
            Value::Number(number) => Money::parse(&number.to_string()),
            Value::Bool(_) => Err(MoneyError::WrongType { found: "a boolean" }),
            Value::Null => Err(MoneyError::WrongType { found: "null" }),
            Value::Array(_) => Err(MoneyError::WrongType { found: "an array" }),
            Value::Object(_) => Err(MoneyError::WrongType { found: "an object" }),
        };
        parsed.map_err(D::Error::custom)
    }
}

impl utoipa::PartialSchema for Money {
    fn schema() -> utoipa::openapi::RefOr<utoipa::openapi::schema::Schema> {
        use utoipa::openapi::schema::{ObjectBuilder, Type};
        ObjectBuilder::new()
            .schema_type(Type::String)
            .description(Some(
                "An exact decimal amount with at most 8 decimals, as a string (requests may also \
                 send a JSON number, parsed exactly; exponents are refused).",
            ))
            .pattern(Some(r"^-?[0-9]+(\.[0-9]+)?$"))
            .examples([serde_json::json!("10.50")])
            .into()
    }
}

impl utoipa::ToSchema for Money {}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn money(text: &str) -> Money {
        Money::parse(text).unwrap()
    }

    fn dec(text: &str) -> BigDecimal {
        BigDecimal::from_str(text).unwrap()
    }

    #[test]
    fn parses_plain_decimals_exactly() {
        assert_eq!(money("10.5").to_string(), "10.5");
        assert_eq!(money("10.50").to_string(), "10.5");
        assert_eq!(money("0").to_string(), "0");
        assert_eq!(money("0.00000015").to_string(), "0.00000015");
        assert_eq!(money("-3").to_string(), "-3");
        assert_eq!(money("007.10").to_string(), "7.1");
        assert_eq!(money("1.000000000000").to_string(), "1");
        assert_eq!(money("10.25").as_decimal(), &dec("10.25"));
        assert_eq!(money("10.25").as_decimal().fractional_digit_count(), 8);
        assert_eq!(money(Money::MAX_ABS), Money::max_value());
        assert_eq!(
            money("-999999999999999999.99999999").to_string(),
            "-999999999999999999.99999999"
        );
    }

    #[test]
    fn minus_zero_is_zero() {
        for text in ["-0", "-0.0", "-0.00000000", "0.0"] {
            let m = money(text);
            assert!(m.is_zero(), "{text}");
            assert!(!m.is_negative() && !m.is_positive(), "{text}");
            assert_eq!(m.to_string(), "0");
            assert_eq!(m, Money::zero());
        }
    }

    #[test]
    fn refuses_non_decimal_text() {
        for text in [
            "", " ", " 1", "1 ", "1\n", "+1", "--1", "-", ".", ".5", "5.", "-.5", "1.2.3", "1e5",
            "1E5", "1e309", "1.5e3", "NaN", "nan", "inf", "-inf", "Infinity", "1_000", "1,5",
            "0x10", "١", "abc", "1-", "- 1",
        ] {
            assert_eq!(Money::parse(text), Err(MoneyError::Invalid), "{text:?}");
        }
    }

    #[test]
    fn refuses_too_many_decimals_instead_of_rounding() {
        assert_eq!(
            Money::parse("0.000000001"),
            Err(MoneyError::TooManyDecimals { max: 8 })
        );
        assert_eq!(
            Money::parse("1.123456785"),
            Err(MoneyError::TooManyDecimals { max: 8 })
        );
        assert_eq!(
            Money::parse_with_max_decimals("10.505", 2),
            Err(MoneyError::TooManyDecimals { max: 2 })
        );
        assert_eq!(
            Money::parse_with_max_decimals("10.50", 2).unwrap(),
            money("10.5")
        );
        assert_eq!(
            Money::parse_with_max_decimals("10", 0).unwrap(),
            money("10")
        );
        assert_eq!(
            Money::parse_with_max_decimals("10.1", 0),
            Err(MoneyError::TooManyDecimals { max: 0 })
        );
        // Capped at the storage scale.
        assert_eq!(
            Money::parse_with_max_decimals("0.000000001", 12),
            Err(MoneyError::TooManyDecimals { max: 8 })
        );
    }

    #[test]
    fn refuses_out_of_range() {
        for text in [
            "1000000000000000000",
            "-1000000000000000000",
            "1000000000000000000.5",
            "99999999999999999999999999999",
        ] {
            assert_eq!(Money::parse(text), Err(MoneyError::OutOfRange), "{text}");
        }
        assert_eq!(
            money("0000000000000000000000999999999999999999").to_string(),
            "999999999999999999"
        );
    }

    #[test]
    fn rounds_half_up_at_the_ninth_decimal() {
        let cases = [
            ("0.000000005", "0.00000001"),
            ("0.000000004999", "0"),
            ("0.0000000049999999999999999999", "0"),
            ("-0.000000005", "-0.00000001"),
            ("-0.000000004999", "0"),
            ("1.234567885", "1.23456789"),
            ("1.234567884", "1.23456788"),
            ("2.5", "2.5"),
            ("0.000000015", "0.00000002"),
            ("0.000000025", "0.00000003"),
            ("-0.000000025", "-0.00000003"),
            (
                "999999999999999999.999999994",
                "999999999999999999.99999999",
            ),
            ("0.0000000000000000000000000000001", "0"),
            ("123", "123"),
        ];
        for (input, expected) in cases {
            let rounded = Money::from_decimal_rounded(dec(input)).unwrap();
            assert_eq!(rounded.to_string(), expected, "{input}");
            assert_eq!(rounded.as_decimal().fractional_digit_count(), 8, "{input}");
        }
    }

    #[test]
    fn rounding_refuses_out_of_range() {
        for input in [
            "1000000000000000000",
            "999999999999999999.999999995",
            "-999999999999999999.999999995",
            "1e40",
            "1e9000000000000000000",
        ] {
            assert_eq!(
                Money::from_decimal_rounded(dec(input)),
                Err(MoneyError::OutOfRange),
                "{input}"
            );
        }
        assert!(
            Money::from_decimal_rounded(dec("1e-9000000000000000000"))
                .unwrap()
                .is_zero()
        );
        assert_eq!(
            Money::from_decimal_rounded(dec("1.5e3"))
                .unwrap()
                .to_string(),
            "1500"
        );
    }

    #[test]
    fn from_db_normalizes_scale() {
        let m = Money::from_db(dec("12.3"));
        assert_eq!(m.as_decimal().fractional_digit_count(), 8);
        assert_eq!(m, money("12.3"));
        assert_eq!(Money::from_db(dec("1.000000005")).to_string(), "1.00000001");
        assert_eq!(Money::from_db(dec("1e2")).to_string(), "100");
        assert_eq!(money("0.1").into_decimal(), dec("0.10000000"));
    }

    #[test]
    fn checked_arithmetic_is_exact_and_bounded() {
        assert_eq!(
            money("0.1").checked_add(&money("0.2")).unwrap(),
            money("0.3")
        );
        assert_eq!(
            money("0.1").checked_sub(&money("0.30000001")).unwrap(),
            money("-0.20000001")
        );
        assert_eq!(
            Money::max_value().checked_add(&money("0.00000001")),
            Err(MoneyError::OutOfRange)
        );
        assert_eq!(
            Money::max_value().neg().checked_sub(&money("0.00000001")),
            Err(MoneyError::OutOfRange)
        );
        assert_eq!(
            Money::max_value().checked_sub(&Money::max_value()).unwrap(),
            Money::zero()
        );
        assert_eq!(money("5").neg(), money("-5"));
        assert_eq!(-money("-5"), money("5"));
        assert_eq!(money("-5").abs(), money("5"));
        assert_eq!(Money::from(1_000_000_u32), money("1000000"));
        assert_eq!(Money::from(-7_i32).to_string(), "-7");
        assert_eq!(Money::from(-7_i32).as_decimal().fractional_digit_count(), 8);
        assert!(money("0.00000001").is_positive());
        assert!(money("-0.00000001").is_negative());
        assert!(money("-1") < money("0.5"));
        assert!(money("10") > money("9.99999999"));
    }

    #[test]
    fn display_never_uses_an_exponent() {
        assert_eq!(Money::max_value().to_string(), Money::MAX_ABS);
        assert_eq!(money("0.00000001").to_string(), "0.00000001");
        assert_eq!(money("-0.00000001").to_string(), "-0.00000001");
        assert_eq!(
            money("100000000000000000").to_string(),
            "100000000000000000"
        );
        assert_eq!(
            Money::from_db(dec("1e17")).to_string(),
            "100000000000000000"
        );
        assert_eq!(Money::from_db(dec("1E-8")).to_string(), "0.00000001");
        assert_eq!(format!("{:>6}", money("1.5")), "   1.5");
    }

    #[test]
    fn serializes_as_a_string() {
        assert_eq!(serde_json::to_string(&money("10.50")).unwrap(), "\"10.5\"");
        assert_eq!(
            serde_json::to_string(&money("0.00000015")).unwrap(),
            "\"0.00000015\""
        );
    }

    #[test]
    fn deserializes_strings_and_exact_numbers() {
        let from = |json: &str| serde_json::from_str::<Money>(json);
        assert_eq!(from("\"10.25\"").unwrap(), money("10.25"));
        assert_eq!(from("10.25").unwrap(), money("10.25"));
        assert_eq!(from("10.25").unwrap().as_decimal(), &dec("10.25"));
        assert_eq!(from("0.1").unwrap(), money("0.1"));
        assert_eq!(
            from("12345678901234567.12345678").unwrap().to_string(),
            "12345678901234567.12345678"
        );
        assert_eq!(from("-0").unwrap(), Money::zero());
        assert_eq!(from("7").unwrap(), money("7"));
        for bad in [
            "1e309",
            "1.5e3",
            "1E2",
            "0.123456789",
            "\"abc\"",
            "\"1e5\"",
            "\" 1\"",
            "\"\"",
            "1000000000000000000",
        ] {
            assert!(from(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn deserialize_errors_are_readable() {
        let message = |json: &str| serde_json::from_str::<Money>(json).unwrap_err().to_string();
        assert!(
            message("true").contains("not a boolean"),
            "{}",
            message("true")
        );
        assert!(message("null").contains("not null"));
        assert!(message("{}").contains("not an object"));
        assert!(message("[]").contains("not an array"));
        assert_eq!(
            message("\"x\""),
            "amount must be a decimal number like \"10.50\""
        );
        assert_eq!(
            message("true"),
            "amount must be a decimal string like \"10.50\" or a number, not a boolean"
        );
        assert!(message("1e5").contains("decimal number"));
        assert!(message("0.123456789").contains("at most 8 decimal places"));
    }

    #[test]
    fn deserializes_inside_buffered_structures() {
        // Untagged enums and flatten buffer the input; numbers must stay exact through that path too.
        #[derive(Deserialize, Debug)]
        #[serde(untagged)]
        enum Either {
            Amount { amount: Money },
        }
        let Either::Amount { amount } =
            serde_json::from_str::<Either>(r#"{"amount": 0.30}"#).unwrap();
        assert_eq!(amount, money("0.3"));
        assert!(serde_json::from_str::<Either>(r#"{"amount": 3e-1}"#).is_err());
    }

    #[test]
    fn schema_is_a_string_with_an_example() {
        use utoipa::PartialSchema;
        let json = serde_json::to_value(Money::schema()).unwrap();
        assert_eq!(json["type"], "string");
        assert_eq!(json["examples"][0], "10.50");
        assert_eq!(<Money as utoipa::ToSchema>::name(), "Money");
    }

    /// Canonical text of `mantissa / 10^scale`, computed with integers only.
    fn canonical(mantissa: i64, scale: u32) -> String {
        let pow = 10_u64.pow(scale);
        let magnitude = mantissa.unsigned_abs();
        let int_part = magnitude / pow;
        let frac = magnitude % pow;
        let mut text = String::new();
        if mantissa < 0 {
            text.push('-');
        }
        text.push_str(&int_part.to_string());
        if frac != 0 {
            let digits = format!("{frac:0>w$}", w = scale as usize);
            text.push('.');
            text.push_str(digits.trim_end_matches('0'));
        }
        text
    }

    /// Text of `mantissa / 10^scale` keeping all `scale` decimals (trailing zeros included).
    fn padded(mantissa: i64, scale: u32) -> String {
        let magnitude = mantissa.unsigned_abs();
        let digits = format!("{magnitude:0>w$}", w = scale as usize + 1);
        let (int_part, frac) = digits.split_at(digits.len() - scale as usize);
        let sign = if mantissa < 0 { "-" } else { "" };
        if scale == 0 {
            format!("{sign}{int_part}")
        } else {
            format!("{sign}{int_part}.{frac}")
        }
    }

    fn small_money() -> impl Strategy<Value = Money> {
        any::<i64>().prop_map(|m| Money::from_db(BigDecimal::new(BigInt::from(m), SCALE)))
    }

    proptest! {
        #[test]
        fn parse_display_round_trip(mantissa in any::<i64>(), scale in 0_u32..=8) {
            let text = padded(mantissa, scale);
            let exact = BigDecimal::new(BigInt::from(mantissa), i64::from(scale));
            let in_range = mantissa.unsigned_abs() / 10_u64.pow(scale) < 10_u64.pow(18);
            match Money::parse(&text) {
                Ok(m) => {
                    prop_assert!(in_range);
                    prop_assert_eq!(m.as_decimal(), &exact);
                    let shown = m.to_string();
                    prop_assert_eq!(&shown, &canonical(mantissa, scale));
                    prop_assert!(!shown.contains(['e', 'E']));
                    prop_assert_eq!(Money::parse(&shown).unwrap(), m.clone());
                    let json = serde_json::to_string(&m).unwrap();
                    prop_assert_eq!(serde_json::from_str::<Money>(&json).unwrap(), m.clone());
                    // The same text as a JSON number is exact too.
                    prop_assert_eq!(serde_json::from_str::<Money>(&text).unwrap(), m);
                }
                Err(e) => {
                    prop_assert!(!in_range);
                    prop_assert_eq!(e, MoneyError::OutOfRange);
                }
            }
        }

        #[test]
        fn addition_is_exact_and_associative(a in small_money(), b in small_money(), c in small_money()) {
            let left = a.checked_add(&b).unwrap().checked_add(&c).unwrap();
            let right = a.checked_add(&b.checked_add(&c).unwrap()).unwrap();
            prop_assert_eq!(&left, &right);
            let exact = a.as_decimal() + b.as_decimal() + c.as_decimal();
            prop_assert_eq!(left.as_decimal(), &exact);
            prop_assert_eq!(a.checked_add(&b).unwrap().checked_sub(&b).unwrap(), a.clone());
            prop_assert_eq!(a.checked_sub(&b).unwrap(), b.checked_sub(&a).unwrap().neg());
            prop_assert_eq!(a.checked_add(&Money::neg(&a)).unwrap(), Money::zero());
        }

        #[test]
        fn rounding_is_half_up_at_the_ninth_decimal(mantissa in any::<i64>()) {
            // Oracle: integer half-up of mantissa / 10 (scale 9 -> 8).
            let magnitude = i128::from(mantissa).abs();
            let rounded = magnitude / 10 + i128::from(magnitude % 10 >= 5);
            let expected = if mantissa < 0 { -rounded } else { rounded };
            let m = Money::from_decimal_rounded(BigDecimal::new(BigInt::from(mantissa), 9)).unwrap();
            prop_assert_eq!(m.as_decimal(), &BigDecimal::new(BigInt::from(expected), 8));
        }

        #[test]
        fn rounding_keeps_exact_amounts(m in small_money()) {
            prop_assert_eq!(Money::from_decimal_rounded(m.as_decimal().clone()).unwrap(), m);
        }

        #[test]
        fn rounding_is_monotonic(a in any::<i64>(), b in any::<i64>(), scale in 1_i64..=20) {
            let (low, high) = if a <= b { (a, b) } else { (b, a) };
            let low = Money::from_decimal_rounded(BigDecimal::new(BigInt::from(low), scale)).unwrap();
            let high = Money::from_decimal_rounded(BigDecimal::new(BigInt::from(high), scale)).unwrap();
            prop_assert!(low <= high);
        }
    }
}
