//! Integer money. One pico-USD (10⁻¹² USD) represents every per-token price that
//! providers publish (they quote at most six decimals per million tokens) exactly.

use serde::{Deserialize, Serialize};
use std::fmt;

/// An amount of money in pico-USD. Never negative; signed results use `i128`.
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize,
)]
pub struct PicoUsd(pub u128);

/// Pico-USD in one USD.
pub const PICO_PER_USD: u128 = 1_000_000_000_000;

/// The largest amount any single operation may carry: one trillion USD. Keeps every sum
/// of a realistic number of operations far below `u128::MAX` (3.4·10³⁸): 2⁴⁰ operations
/// of `AMOUNT_MAX` (10²⁴ < 2⁸⁰) still sum below 2¹²⁰.
pub const AMOUNT_MAX: PicoUsd = PicoUsd(1_000_000_000_000 * PICO_PER_USD);
const _: () = assert!(AMOUNT_MAX.0 < u128::MAX / (1 << 40));

impl PicoUsd {
    pub const ZERO: PicoUsd = PicoUsd(0);

    pub fn from_usd_whole(usd: u64) -> PicoUsd {
        PicoUsd(u128::from(usd) * PICO_PER_USD)
    }

    /// Parses a decimal USD string such as `"5"`, `"5.00"` or `"0.000000000001"`.
    /// Rejects signs, exponents, more than 12 fractional digits and amounts over
    /// [`AMOUNT_MAX`].
    pub fn parse_usd(text: &str) -> Result<PicoUsd, ParseUsdError> {
        let (whole, fraction) = match text.split_once('.') {
            Some((whole, fraction)) => (whole, fraction),
            None => (text, ""),
        };
        let digits = |part: &str| part.bytes().all(|b| b.is_ascii_digit());
        if whole.is_empty() || !digits(whole) || !digits(fraction) {
            return Err(ParseUsdError::Syntax);
        }
        if fraction.len() > 12 {
            return Err(ParseUsdError::TooPrecise);
        }
        if whole.len() > 13 {
            return Err(ParseUsdError::TooLarge);
        }
        let whole: u128 = whole.parse().map_err(|_| ParseUsdError::Syntax)?;
        let mut fraction_pico: u128 = 0;
        for (position, byte) in fraction.bytes().enumerate() {
            fraction_pico += u128::from(byte - b'0') * 10u128.pow(11 - position as u32);
        }
        let amount = PicoUsd(whole * PICO_PER_USD + fraction_pico);
        if amount > AMOUNT_MAX {
            return Err(ParseUsdError::TooLarge);
        }
        Ok(amount)
    }

    /// USD as a JSON-friendly float, for display fields such as `usage.cost` only.
    /// Never fed back into the ledger.
    pub fn to_usd_f64(self) -> f64 {
        self.0 as f64 / PICO_PER_USD as f64
    }

    pub fn checked_add(self, other: PicoUsd) -> Option<PicoUsd> {
        self.0.checked_add(other.0).map(PicoUsd)
    }

    pub fn saturating_sub(self, other: PicoUsd) -> PicoUsd {
        PicoUsd(self.0.saturating_sub(other.0))
    }
}

/// Formats as a decimal USD string with trailing zeros trimmed to at least two
/// decimals: `5.00`, `0.000150`, `0.000000000001`.
impl fmt::Display for PicoUsd {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        format_usd(f, false, self.0)
    }
}

/// Formats a signed pico-USD amount as decimal USD (see [`PicoUsd`]'s `Display`).
pub fn signed_usd(amount: i128) -> String {
    struct Signed(i128);
    impl fmt::Display for Signed {
        fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            format_usd(f, self.0 < 0, self.0.unsigned_abs())
        }
    }
    Signed(amount).to_string()
}

fn format_usd(f: &mut fmt::Formatter<'_>, negative: bool, pico: u128) -> fmt::Result {
    let whole = pico / PICO_PER_USD;
    let fraction = format!("{:012}", pico % PICO_PER_USD);
    let trimmed = fraction.trim_end_matches('0');
    let shown = if trimmed.len() < 2 { &fraction[..2] } else { trimmed };
    let sign = if negative { "-" } else { "" };
    write!(f, "{sign}{whole}.{shown}")
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum ParseUsdError {
    #[error("expected a decimal USD amount such as \"5.00\"")]
    Syntax,
    #[error("at most 12 decimal places (pico-USD) are allowed")]
    TooPrecise,
    #[error("amount exceeds the per-operation maximum of 1000000000000 USD")]
    TooLarge,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(text: &str, expected: Result<u128, ParseUsdError>) {
        assert_eq!(PicoUsd::parse_usd(text).map(|p| p.0), expected, "{text}");
    }

    #[test]
    fn parses_decimal_usd() {
        check("5", Ok(5 * PICO_PER_USD));
        check("5.00", Ok(5 * PICO_PER_USD));
        check("0.15", Ok(150_000_000_000));
        check("0.000000000001", Ok(1));
        check("0.0000000000001", Err(ParseUsdError::TooPrecise));
        check("-1", Err(ParseUsdError::Syntax));
        check("1e3", Err(ParseUsdError::Syntax));
        check("", Err(ParseUsdError::Syntax));
        check(".5", Err(ParseUsdError::Syntax));
        check("1.", Ok(PICO_PER_USD));
        check("1000000000000", Ok(AMOUNT_MAX.0));
        check("1000000000000.01", Err(ParseUsdError::TooLarge));
        check("99999999999999", Err(ParseUsdError::TooLarge));
    }

    #[test]
    fn formats_decimal_usd() {
        assert_eq!(PicoUsd(5 * PICO_PER_USD).to_string(), "5.00");
        assert_eq!(PicoUsd(150_000_000).to_string(), "0.00015");
        assert_eq!(PicoUsd(1).to_string(), "0.000000000001");
        assert_eq!(PicoUsd(1_230_000_000_000).to_string(), "1.23");
        assert_eq!(signed_usd(-1_500_000_000_000), "-1.50");
    }
}
