//! The per-request script: a directive written anywhere in the request's text,
//! `[[mock knob knob …]]` (syntax in the module doc of `mock`), found in the raw body
//! bytes so it survives any SDK and any translation between wire formats.

use http::StatusCode;
use std::fmt;
use std::ops::Range;
use std::time::Duration;

/// What opens a directive.
const OPEN: &[u8] = b"[[mock";
/// What closes it.
const CLOSE: &[u8] = b"]]";
/// The longest directive read, brackets included: every knob at once fits in a
/// quarter of it, and a stray `[[mock` in a long prompt fails fast instead of
/// swallowing text.
pub const DIRECTIVE_BYTES_MAX: usize = 256;
/// The most words `words=N` generates: a streamed answer costs about 150 bytes per
/// word, so this bounds one response near 15 MB.
pub const WORDS_MAX: u64 = 100_000;
/// The longest `pause_ms`: ten minutes, beyond any upstream timeout worth rehearsing.
pub const PAUSE_MS_MAX: u64 = 600_000;
/// The largest `usage=over:F` factor; larger ones are what `usage=absurd` is for.
pub const OVER_FACTOR_MAX: f64 = 1_000_000.0;

/// How usage is reported (`usage=…`).
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub enum UsageMode {
    /// Where and as the provider reports it.
    #[default]
    Full,
    /// Nowhere.
    Drop,
    /// The input and the first event's output tokens only; the final usage is missing.
    Partial,
    /// Every reported count multiplied by the factor, rounded up.
    Over(f64),
    /// 10^19 output tokens in the final usage.
    Absurd,
}

/// One request's script; the default is a well-behaved provider.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Script {
    /// Answer with this many filler words instead of the echo.
    pub words: Option<u64>,
    /// Close the connection abruptly after this many events (a plain body: after half
    /// of it).
    pub cut_after: Option<u64>,
    /// Stall before the event with this 0-based index (after that many events).
    pub pause: Option<Pause>,
    pub usage: UsageMode,
    /// Answer the whole length whatever the completion limit says.
    pub ignore_max_tokens: bool,
    /// Answer this error status in the format's error shape.
    pub status: Option<StatusCode>,
    /// Read the request, then never answer.
    pub hang: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Pause {
    pub duration: Duration,
    pub after_events: u64,
}

/// A directive that does not parse: names the offending knob.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DirectiveError {
    pub directive: String,
    pub reason: &'static str,
}

impl fmt::Display for DirectiveError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "invalid mock directive `{}`: {}", self.directive, self.reason)
    }
}

/// Where the first directive lies in `bytes` (brackets included), if there is one.
/// `[[mock` followed by anything but whitespace or `]]` (`[[mockery`) is no directive.
pub fn locate(bytes: &[u8]) -> Result<Option<Range<usize>>, DirectiveError> {
    let mut from = 0;
    while let Some(found) = find(&bytes[from..], OPEN) {
        let start = from + found;
        let after = &bytes[start + OPEN.len()..];
        if !(after.first().is_some_and(u8::is_ascii_whitespace) || after.starts_with(CLOSE)) {
            from = start + OPEN.len();
            continue;
        }
        let window = &bytes[start..bytes.len().min(start + DIRECTIVE_BYTES_MAX)];
        return match find(window, CLOSE) {
            Some(close) => Ok(Some(start..start + close + CLOSE.len())),
            None => Err(DirectiveError {
                directive: String::from_utf8_lossy(&window[..window.len().min(40)]).into_owned(),
                reason: "no closing `]]` within 256 bytes",
            }),
        };
    }
    Ok(None)
}

/// The script of a request body: its first directive, or the default script.
pub fn read(body: &[u8]) -> Result<Script, DirectiveError> {
    match locate(body)? {
        None => Ok(Script::default()),
        Some(range) => parse(&body[range.start + OPEN.len()..range.end - CLOSE.len()]),
    }
}

/// `text` with its first directive (and the whitespace after it) removed.
pub fn strip(text: &str) -> Option<String> {
    let range = locate(text.as_bytes()).ok()??;
    let rest = text[range.end..].trim_start();
    Some(format!("{}{rest}", &text[..range.start]))
}

/// Parses the knobs between `[[mock` and `]]`.
fn parse(inside: &[u8]) -> Result<Script, DirectiveError> {
    let mut script = Script::default();
    let mut seen: Vec<&[u8]> = Vec::new();
    let mut pause_ms = None;
    let mut pause_after = None;
    for knob in inside.split(u8::is_ascii_whitespace).filter(|knob| !knob.is_empty()) {
        let fail = |reason| DirectiveError {
            directive: String::from_utf8_lossy(knob).into_owned(),
            reason,
        };
        let (key, value) = match knob.iter().position(|&byte| byte == b'=') {
            Some(equals) => (&knob[..equals], Some(&knob[equals + 1..])),
            None => (knob, None),
        };
        if seen.contains(&key) {
            return Err(fail("given twice"));
        }
        seen.push(key);
        let number = |max: u64| -> Result<u64, DirectiveError> {
            let value = value.ok_or_else(|| fail("needs `=N`"))?;
            let text = std::str::from_utf8(value).map_err(|_| fail("not a whole number"))?;
            let number: u64 = text.parse().map_err(|_| fail("not a whole number"))?;
            if number > max {
                return Err(fail("too large"));
            }
            Ok(number)
        };
        let flag = |script_flag: &mut bool| match value {
            None => {
                *script_flag = true;
                Ok(())
            }
            Some(_) => Err(fail("takes no value")),
        };
        match key {
            b"words" => script.words = Some(number(WORDS_MAX)?),
            b"cut_after" => script.cut_after = Some(number(u64::MAX)?),
            b"pause_ms" => pause_ms = Some(number(PAUSE_MS_MAX)?),
            b"pause_after" => pause_after = Some(number(u64::MAX)?),
            b"usage" => {
                script.usage = usage_mode(value)
                    .ok_or_else(|| fail("expected full, drop, partial, over:F or absurd"))?
            }
            b"ignore_max_tokens" => flag(&mut script.ignore_max_tokens)?,
            b"hang" => flag(&mut script.hang)?,
            b"status" => {
                let code = number(599)?;
                let status = u16::try_from(code)
                    .ok()
                    .filter(|code| (400..=599).contains(code))
                    .and_then(|code| StatusCode::from_u16(code).ok())
                    .ok_or_else(|| fail("expected an error status, 400 to 599"))?;
                script.status = Some(status);
            }
            _ => return Err(fail("unknown knob")),
        }
    }
    script.pause = match (pause_ms, pause_after) {
        (Some(ms), after) => {
            Some(Pause { duration: Duration::from_millis(ms), after_events: after.unwrap_or(0) })
        }
        (None, Some(after)) => {
            return Err(DirectiveError {
                directive: format!("pause_after={after}"),
                reason: "needs pause_ms",
            })
        }
        (None, None) => None,
    };
    Ok(script)
}

fn usage_mode(value: Option<&[u8]>) -> Option<UsageMode> {
    let value = std::str::from_utf8(value?).ok()?;
    Some(match value {
        "full" => UsageMode::Full,
        "drop" => UsageMode::Drop,
        "partial" => UsageMode::Partial,
        "absurd" => UsageMode::Absurd,
        _ => {
            let factor: f64 = value.strip_prefix("over:")?.parse().ok()?;
            if !(factor.is_finite() && factor > 0.0 && factor <= OVER_FACTOR_MAX) {
                return None;
            }
            UsageMode::Over(factor)
        }
    })
}

/// The first position of `needle` (not empty) in `haystack`. Scans for the first byte,
/// which a request without a directive rarely contains, then compares.
fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    let mut from = 0;
    while let Some(found) = haystack[from..].iter().position(|&byte| byte == needle[0]) {
        let at = from + found;
        if haystack[at..].starts_with(needle) {
            return Some(at);
        }
        from = at + 1;
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(text: &str, expected: Result<Script, (&str, &'static str)>) {
        let expected = expected.map_err(|(directive, reason)| DirectiveError {
            directive: directive.to_owned(),
            reason,
        });
        let parsed = read(text.as_bytes());
        match (&parsed, &expected) {
            (Err(got), Err(want)) => {
                assert_eq!(got.directive, want.directive, "{text}");
                assert!(got.reason.contains(want.reason), "{text}: {got}");
            }
            _ => assert_eq!(parsed, expected, "{text}"),
        }
    }

    #[test]
    fn directives_parse() {
        check("no directive here", Ok(Script::default()));
        check("[[mockery]] is not one", Ok(Script::default()));
        check("[[mock]]", Ok(Script::default()));
        check(
            r#"{"content":"hi [[mock words=200 cut_after=5 usage=drop]] there"}"#,
            Ok(Script {
                words: Some(200),
                cut_after: Some(5),
                usage: UsageMode::Drop,
                ..Script::default()
            }),
        );
        check(
            "[[mock pause_ms=250 pause_after=3 usage=over:1.5 ignore_max_tokens status=429 hang]]",
            Ok(Script {
                pause: Some(Pause { duration: Duration::from_millis(250), after_events: 3 }),
                usage: UsageMode::Over(1.5),
                ignore_max_tokens: true,
                status: Some(StatusCode::TOO_MANY_REQUESTS),
                hang: true,
                ..Script::default()
            }),
        );
        check(
            "[[mock pause_ms=10]]",
            Ok(Script {
                pause: Some(Pause { duration: Duration::from_millis(10), after_events: 0 }),
                ..Script::default()
            }),
        );
        check(
            "[[mock usage=partial]]",
            Ok(Script { usage: UsageMode::Partial, ..Script::default() }),
        );
        check(
            "[[mock usage=absurd]]",
            Ok(Script { usage: UsageMode::Absurd, ..Script::default() }),
        );
        check(
            "first [[mock words=1]] then [[mock words=2]]",
            Ok(Script { words: Some(1), ..Script::default() }),
        );
    }

    #[test]
    fn invalid_directives_name_the_knob() {
        check("[[mock words=lots]]", Err(("words=lots", "whole number")));
        check("[[mock words=100001]]", Err(("words=100001", "too large")));
        check("[[mock words]]", Err(("words", "needs `=N`")));
        check("[[mock hang=yes]]", Err(("hang=yes", "takes no value")));
        check("[[mock cut_after=1 cut_after=2]]", Err(("cut_after=2", "twice")));
        check("[[mock explode]]", Err(("explode", "unknown knob")));
        check("[[mock usage=some]]", Err(("usage=some", "expected full")));
        check("[[mock usage=over:0]]", Err(("usage=over:0", "expected full")));
        check("[[mock usage=over:inf]]", Err(("usage=over:inf", "expected full")));
        check("[[mock status=200]]", Err(("status=200", "error status")));
        check("[[mock status=600]]", Err(("status=600", "too large")));
        check("[[mock pause_after=2]]", Err(("pause_after=2", "needs pause_ms")));
        check("[[mock words=2", Err(("[[mock words=2", "no closing")));
    }

    #[test]
    fn strip_removes_the_directive() {
        assert_eq!(strip("[[mock words=3]] hello world").as_deref(), Some("hello world"));
        assert_eq!(strip("say [[mock hang]]").as_deref(), Some("say "));
        assert_eq!(strip("nothing to strip"), None);
    }
}
