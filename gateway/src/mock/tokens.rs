//! Token counting and the answer: a token is a whitespace-separated word, so every count
//! is deterministic and a test can predict it from the text alone.

use super::script::{Script, UsageMode};
use serde_json::Value;

/// What `words=N` repeats: one word that common tokenizers also count as one token.
const FILLER_WORD: &str = "word";

/// Output tokens `usage=absurd` reports: 10^19, above any real context and close to
/// `u64::MAX`, so arithmetic on it must saturate.
pub const ABSURD_TOKENS: u64 = 10_000_000_000_000_000_000;

/// The mock's tokenizer: whitespace-separated words. The gateway counts mock models'
/// tokens with this same function (`tokens::count`), so its estimates are exact there.
pub fn word_count(text: &str) -> u64 {
    text.split_whitespace().count() as u64
}

/// Calls `visit` with each text fragment of a content value: the string itself, or the
/// `text` of each part of an array (OpenAI, Anthropic and Cohere content parts alike).
pub fn for_each_text(content: &Value, mut visit: impl FnMut(&str)) {
    match content {
        Value::String(text) => visit(text),
        Value::Array(parts) => {
            parts.iter().filter_map(|part| part.get("text").and_then(Value::as_str)).for_each(visit)
        }
        _ => {}
    }
}

/// Splits `text` into one piece per word, each piece ending with the whitespace that
/// follows its word (leading whitespace joins the first piece), so the pieces
/// concatenate to exactly `text`. Empty or blank text is one piece, matching the
/// minimum of one completion token.
pub fn word_pieces(text: &str) -> Vec<&str> {
    let mut pieces = Vec::new();
    let mut start = 0;
    let mut previous_is_space = false;
    let mut seen_word = false;
    for (byte_idx, character) in text.char_indices() {
        let is_space = character.is_whitespace();
        if !is_space && previous_is_space && seen_word {
            pieces.push(&text[start..byte_idx]);
            start = byte_idx;
        }
        seen_word |= !is_space;
        previous_is_space = is_space;
    }
    pieces.push(&text[start..]);
    pieces
}

/// The text to answer with before any limit: the echo of the last user message, or
/// `words=N` filler words.
pub fn source_text(last_user: String, script: &Script) -> String {
    match script.words {
        None => last_user,
        Some(n_words) => {
            let n_words = usize::try_from(n_words).expect("the parser bounds `words`");
            let mut text = String::with_capacity(n_words * (FILLER_WORD.len() + 1));
            for word_idx in 0..n_words {
                if word_idx > 0 {
                    text.push(' ');
                }
                text.push_str(FILLER_WORD);
            }
            text
        }
    }
}

/// How the answer ended, in the format-neutral sense each format names its own way.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Finish {
    /// The answer is complete (`stop`, `end_turn`, `STOP`, `COMPLETE`).
    Stop,
    /// The completion limit cut it (`length`, `max_tokens`, `MAX_TOKENS`).
    Length,
}

/// The answer as words, cut to the completion limit unless the script ignores it.
pub struct Answer<'a> {
    /// The pieces' concatenation: what a plain response carries.
    pub text: &'a str,
    pub pieces: Vec<&'a str>,
    pub finish: Finish,
}

impl<'a> Answer<'a> {
    pub fn new(source: &'a str, max_tokens: Option<u64>, script: &Script) -> Answer<'a> {
        let mut pieces = word_pieces(source);
        let limit = max_tokens.filter(|_| !script.ignore_max_tokens);
        let words = word_count(source);
        let finish = match limit {
            Some(limit) if words > limit => {
                // A limit of zero is refused when the request is read.
                let limit = usize::try_from(limit).unwrap_or(usize::MAX).max(1);
                pieces.truncate(limit);
                Finish::Length
            }
            _ => Finish::Stop,
        };
        let length: usize = pieces.iter().map(|piece| piece.len()).sum();
        Answer { text: &source[..length], pieces, finish }
    }

    pub fn completion_tokens(&self) -> u64 {
        self.pieces.len() as u64
    }
}

/// Token counts as reported on the wire.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Counts {
    pub prompt: u64,
    pub completion: u64,
}

impl Counts {
    pub fn total(&self) -> u64 {
        self.prompt.saturating_add(self.completion)
    }
}

/// The true counts of one exchange and how the script says to report them. Each format
/// asks for the usage of the place it reports usage in.
#[derive(Debug, Clone, Copy)]
pub struct Reported {
    prompt: u64,
    completion: u64,
    mode: UsageMode,
}

impl Reported {
    pub fn new(prompt_words: u64, completion_tokens: u64, mode: UsageMode) -> Reported {
        Reported { prompt: prompt_words.max(1), completion: completion_tokens.max(1), mode }
    }

    fn scaled(&self, prompt: u64, completion: u64) -> Counts {
        match self.mode {
            UsageMode::Over(factor) => {
                Counts { prompt: scale(prompt, factor), completion: scale(completion, factor) }
            }
            _ => Counts { prompt, completion },
        }
    }

    /// The usage when the message starts: the input and one output token, as
    /// Anthropic's `message_start` says it. Absent when usage is dropped.
    pub fn start(&self) -> Option<Counts> {
        match self.mode {
            UsageMode::Drop => None,
            _ => Some(self.scaled(self.prompt, 1)),
        }
    }

    /// The usage reported only at the start, where a format reports usage only at the
    /// end (OpenAI's usage chunk goes on the first chunk instead): `usage=partial`.
    pub fn early(&self) -> Option<Counts> {
        match self.mode {
            UsageMode::Partial => self.start(),
            _ => None,
        }
    }

    /// The final usage. Absent when usage is dropped or partial.
    pub fn end(&self) -> Option<Counts> {
        match self.mode {
            UsageMode::Drop | UsageMode::Partial => None,
            UsageMode::Absurd => Some(Counts { prompt: self.prompt, completion: ABSURD_TOKENS }),
            UsageMode::Full | UsageMode::Over(_) => Some(self.scaled(self.prompt, self.completion)),
        }
    }

    /// The usage of a format with one place for it (plain bodies, Cohere's
    /// `message-end`): the final usage, or under `usage=partial` the start's.
    pub fn whole(&self) -> Option<Counts> {
        self.end().or_else(|| self.early())
    }

    /// The cumulative usage after `produced` output tokens, `last` on the final event
    /// (Gemini's `usageMetadata` on every event): `usage=partial` reports only on the
    /// first event.
    pub fn running(&self, produced: u64, last: bool) -> Option<Counts> {
        match self.mode {
            UsageMode::Drop => None,
            UsageMode::Partial => (produced <= 1).then(|| self.start()).flatten(),
            _ if last => self.end(),
            _ => Some(self.scaled(self.prompt, produced)),
        }
    }
}

/// `count × factor`, rounded up, saturating.
fn scale(count: u64, factor: f64) -> u64 {
    // Float-to-int `as` saturates; the parser keeps `factor` finite and positive.
    (count as f64 * factor).ceil() as u64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn word_pieces_concatenate_to_the_text() {
        let check = |text: &str, expected: &[&str]| {
            let pieces = word_pieces(text);
            assert_eq!(pieces, expected, "{text:?}");
            assert_eq!(pieces.concat(), text);
            assert_eq!(pieces.len() as u64, word_count(text).max(1));
        };
        check("", &[""]);
        check("   ", &["   "]);
        check("one", &["one"]);
        check("hello  wide\nworld ", &["hello  ", "wide\n", "world "]);
        check(" lead é", &[" lead ", "é"]);
    }

    #[test]
    fn answers_honour_the_limit_unless_told_not_to() {
        let check = |source: &str, limit: Option<u64>, ignore: bool, text: &str, finish| {
            let script = Script { ignore_max_tokens: ignore, ..Script::default() };
            let answer = Answer::new(source, limit, &script);
            assert_eq!((answer.text, answer.finish), (text, finish), "{source:?} {limit:?}");
            assert_eq!(answer.completion_tokens(), answer.pieces.len() as u64);
        };
        check("one two three", None, false, "one two three", Finish::Stop);
        check("one two three", Some(3), false, "one two three", Finish::Stop);
        check("one two three", Some(2), false, "one two ", Finish::Length);
        check("one two three", Some(2), true, "one two three", Finish::Stop);
        check("", Some(1), false, "", Finish::Stop);
    }

    #[test]
    fn usage_modes_report_in_their_places() {
        type Places = (Option<Counts>, Option<Counts>, Option<Counts>, Option<Counts>);
        let counts = |prompt, completion| Some(Counts { prompt, completion });
        let check = |mode: UsageMode, expected: Places| {
            let reported = Reported::new(10, 4, mode);
            let places = (reported.start(), reported.early(), reported.end(), reported.whole());
            assert_eq!(places, expected, "{mode:?}");
        };
        check(UsageMode::Full, (counts(10, 1), None, counts(10, 4), counts(10, 4)));
        check(UsageMode::Drop, (None, None, None, None));
        check(UsageMode::Partial, (counts(10, 1), counts(10, 1), None, counts(10, 1)));
        check(UsageMode::Over(1.5), (counts(15, 2), None, counts(15, 6), counts(15, 6)));
        check(
            UsageMode::Absurd,
            (counts(10, 1), None, counts(10, ABSURD_TOKENS), counts(10, ABSURD_TOKENS)),
        );
        let running = Reported::new(10, 4, UsageMode::Partial);
        assert_eq!((running.running(1, false), running.running(2, true)), (counts(10, 1), None));
        let running = Reported::new(10, 4, UsageMode::Full);
        assert_eq!(
            (running.running(2, false), running.running(4, true)),
            (counts(10, 2), counts(10, 4))
        );
    }
}
