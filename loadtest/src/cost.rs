//! What a client saw it was charged: `usage.cost` read from a whole response or from a
//! stream's events, as the text of its JSON number converted exactly to pico-USD. No
//! float ever holds the amount, so the money check compares integers.

use serde::Deserialize;
use serde_json::value::RawValue;
use solrouter_ledger::PicoUsd;

/// Largest decimal exponent accepted in a cost: USD amounts the ledger can hold have at
/// most 13 integer digits and 12 decimals, so a larger shift is no amount at all.
const EXPONENT_ABS_MAX: i64 = 40;

/// Why a `usage.cost` could not be read as an exact amount.
#[derive(Debug, PartialEq, Eq)]
pub enum CostError {
    /// No `usage.cost` where one was expected.
    Missing,
    /// Not a non-negative JSON number, finer than a pico-dollar, or too large.
    Invalid(String),
}

impl CostError {
    /// The error kind reported for the request.
    pub fn kind(&self) -> &'static str {
        match self {
            CostError::Missing => "no usage.cost",
            CostError::Invalid(_) => "bad usage.cost",
        }
    }
}

#[derive(Deserialize)]
struct WithUsage<'a> {
    #[serde(borrow)]
    usage: Option<Usage<'a>>,
}

#[derive(Deserialize)]
struct Usage<'a> {
    #[serde(borrow)]
    cost: Option<&'a RawValue>,
}

/// The cost of a whole (non-streamed) response body.
pub fn of_completion(body: &[u8]) -> Result<PicoUsd, CostError> {
    match serde_json::from_slice::<WithUsage>(body) {
        Ok(WithUsage { usage: Some(Usage { cost: Some(cost) }) }) => parse_pico(cost.get()),
        Ok(_) => Err(CostError::Missing),
        Err(error) => Err(CostError::Invalid(format!("response is not JSON: {error}"))),
    }
}

/// The cost carried by the last event of an SSE body that has one (the gateway's final
/// usage chunk, or its error event when a stream fails after the first byte).
pub fn of_stream(body: &[u8]) -> Result<PicoUsd, CostError> {
    let text = std::str::from_utf8(body).map_err(|_| CostError::Invalid("not UTF-8".into()))?;
    let events = text.lines().rev().filter_map(|line| line.strip_prefix("data:"));
    for data in events.map(str::trim).filter(|data| *data != "[DONE]") {
        if let Ok(WithUsage { usage: Some(Usage { cost: Some(cost) }) }) =
            serde_json::from_str::<WithUsage>(data)
        {
            return parse_pico(cost.get());
        }
    }
    Err(CostError::Missing)
}

/// Whether an SSE body ended the way a complete stream ends: its last event is `[DONE]`.
pub fn stream_completed(body: &[u8]) -> bool {
    let text = String::from_utf8_lossy(body);
    let last = text.lines().rev().find(|line| !line.trim().is_empty());
    last.and_then(|line| line.strip_prefix("data:")).map(str::trim) == Some("[DONE]")
}

/// The text of a JSON number (`0.000007`, `7e-6`, `1.5E-3`, `2`) as an exact pico-USD
/// amount: the decimal point is shifted by the exponent in the text and the result parsed
/// by the ledger's own USD parser. Negative amounts and amounts finer than a pico-dollar
/// are refused, never rounded.
pub fn parse_pico(number: &str) -> Result<PicoUsd, CostError> {
    let invalid = |why: &str| CostError::Invalid(format!("{number:?}: {why}"));
    let (mantissa, exponent) = match number.split_once(['e', 'E']) {
        Some((mantissa, exponent)) => {
            let exponent = exponent.strip_prefix('+').unwrap_or(exponent);
            (mantissa, exponent.parse::<i64>().map_err(|_| invalid("bad exponent"))?)
        }
        None => (number, 0),
    };
    if !(-EXPONENT_ABS_MAX..=EXPONENT_ABS_MAX).contains(&exponent) {
        return Err(invalid("exponent out of range"));
    }
    let (whole, fraction) = mantissa.split_once('.').unwrap_or((mantissa, ""));
    let is_digits = |part: &str| part.bytes().all(|byte| byte.is_ascii_digit());
    if whole.is_empty() || !is_digits(whole) || !is_digits(fraction) || mantissa.ends_with('.') {
        return Err(invalid("not a non-negative decimal number"));
    }
    let digits = format!("{whole}{fraction}");
    // Where the decimal point falls in `digits` once the exponent is applied.
    let point = whole.len() as i64 + exponent;
    let (whole, fraction) = if point <= 0 {
        (String::from("0"), format!("{}{digits}", "0".repeat(point.unsigned_abs() as usize)))
    } else if point as usize >= digits.len() {
        (format!("{digits}{}", "0".repeat(point as usize - digits.len())), String::new())
    } else {
        let (whole, fraction) = digits.split_at(point as usize);
        (whole.to_owned(), fraction.to_owned())
    };
    let fraction = fraction.trim_end_matches('0');
    let decimal = if fraction.is_empty() { whole } else { format!("{whole}.{fraction}") };
    PicoUsd::parse_usd(&decimal).map_err(|error| invalid(&error.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(number: &str, expected: Option<u128>) {
        let parsed = parse_pico(number).ok().map(|amount| amount.0);
        assert_eq!(parsed, expected, "{number}");
    }

    #[test]
    fn parses_json_number_text_exactly() {
        check("0", Some(0));
        check("2", Some(2_000_000_000_000));
        check("0.000007", Some(7_000_000));
        check("7e-6", Some(7_000_000));
        check("7E-6", Some(7_000_000));
        check("1.5e-3", Some(1_500_000_000));
        check("1.5e+1", Some(15_000_000_000_000));
        check("1e-12", Some(1));
        check("0.000000000001", Some(1));
        check("0.0000000000010000", Some(1));
        check("123.456789012345", Some(123_456_789_012_345));
        // Digits an f64 cannot hold survive: 2^53 + 1 pico-USD.
        check("9007.199254740993", Some(9_007_199_254_740_993));
        check("9.007199254740993e3", Some(9_007_199_254_740_993));
        // Finer than a pico-dollar, negative, malformed or absurd: refused, not rounded.
        check("1e-13", None);
        check("0.0000000000015", None);
        check("-0.1", None);
        check("", None);
        check(".5", None);
        check("5.", None);
        check("0x10", None);
        check("1e", None);
        check("1e400", None);
        check("1e30", None);
        check("NaN", None);
    }

    #[test]
    fn reads_cost_of_completion_and_stream() {
        let completion = br#"{"id":"gen-1","usage":{"prompt_tokens":3,"cost":0.000012}}"#;
        assert_eq!(of_completion(completion), Ok(PicoUsd(12_000_000)));
        assert_eq!(of_completion(br#"{"usage":{"prompt_tokens":3}}"#), Err(CostError::Missing));
        assert_eq!(of_completion(br#"{"id":"x"}"#), Err(CostError::Missing));
        assert!(matches!(of_completion(b"oops"), Err(CostError::Invalid(_))));

        let stream = b"data: {\"choices\":[{\"delta\":{\"content\":\"a\"}}]}\n\n\
            data: {\"choices\":[],\"usage\":{\"cost\":1.2e-5}}\n\ndata: [DONE]\n\n";
        assert_eq!(of_stream(stream), Ok(PicoUsd(12_000_000)));
        assert!(stream_completed(stream));
        let failed = b"data: {\"choices\":[]}\n\n\
            data: {\"error\":{\"message\":\"cut\"},\"usage\":{\"cost\":0.000003}}\n\n";
        assert_eq!(of_stream(failed), Ok(PicoUsd(3_000_000)));
        assert!(!stream_completed(failed));
        assert_eq!(of_stream(b"data: {\"choices\":[]}\n\n"), Err(CostError::Missing));
    }
}
