//! An incremental Server-Sent Events parser: bytes in, events out.
//!
//! Follows the WHATWG event-stream grammar (lines end with CRLF, LF or CR; `:` starts a
//! comment; `field: value` with one optional space; a blank line dispatches) and accepts
//! arbitrary chunk boundaries, including a CRLF split across two chunks and a UTF-8
//! character split across two chunks: lines are cut on ASCII bytes only and decoded
//! whole, so a split character is always reassembled before decoding. Line ends and the
//! field's colon are found with `memchr` (SIMD), not a byte-at-a-time loop: the parser
//! reads every byte of every stream the gateway relays.
//!
//! Memory is bounded: one event (its pending line plus its accumulated `data`) may hold
//! at most [`SSE_EVENT_BYTES_MAX`] bytes; past that the parser fails rather than grow.

use std::borrow::Cow;

/// The largest event the parser buffers, in bytes. Recorded provider events are at most
/// a few KiB; the headroom is for providers that stream a whole inline image or a large
/// tool-call argument in one event. With this bound a stream can never hold more than
/// 8 MiB of parser state, however long or malicious the upstream.
pub const SSE_EVENT_BYTES_MAX: usize = 8 * 1024 * 1024;

/// One dispatched event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SseEvent {
    /// The `event:` field, if the event had one (absent means the default, `message`).
    pub event: Option<String>,
    /// The `data:` lines joined with `\n`.
    pub data: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum SseError {
    #[error("server-sent event exceeds {SSE_EVENT_BYTES_MAX} bytes")]
    EventTooLarge,
}

/// Incremental parser state for one stream.
#[derive(Debug, Default)]
pub struct SseParser {
    /// Bytes of the current, not yet terminated line.
    line: Vec<u8>,
    event: Option<String>,
    data: String,
    /// Whether any `data:` field was seen (an event with an empty data line still
    /// dispatches, one without data lines does not).
    has_data: bool,
    /// The previous chunk ended with CR: a LF at the start of the next one belongs to it.
    skip_lf: bool,
    failed: bool,
}

impl SseParser {
    pub fn new() -> SseParser {
        SseParser::default()
    }

    /// Feeds bytes; appends every event completed by them to `out`. After an error the
    /// parser stays failed.
    pub fn feed(&mut self, mut bytes: &[u8], out: &mut Vec<SseEvent>) -> Result<(), SseError> {
        if self.failed {
            return Err(SseError::EventTooLarge);
        }
        while !bytes.is_empty() {
            if self.skip_lf {
                self.skip_lf = false;
                if bytes[0] == b'\n' {
                    bytes = &bytes[1..];
                    continue;
                }
            }
            let Some(end) = memchr::memchr2(b'\n', b'\r', bytes) else {
                self.line.extend_from_slice(bytes);
                return self.check_size();
            };
            self.skip_lf = bytes[end] == b'\r';
            if self.line.is_empty() {
                self.process_line(&bytes[..end], out);
            } else {
                let mut line = std::mem::take(&mut self.line);
                line.extend_from_slice(&bytes[..end]);
                self.process_line(&line, out);
                line.clear();
                self.line = line;
            }
            self.check_size()?;
            bytes = &bytes[end + 1..];
        }
        Ok(())
    }

    /// The stream ended. A final line or event without its terminating blank line is
    /// still processed: some providers omit the last blank line, and dropping their
    /// final event (often the one carrying usage) would lose billing data.
    pub fn finish(&mut self, out: &mut Vec<SseEvent>) -> Result<(), SseError> {
        if self.failed {
            return Err(SseError::EventTooLarge);
        }
        if !self.line.is_empty() {
            let line = std::mem::take(&mut self.line);
            self.process_line(&line, out);
        }
        self.process_line(b"", out);
        Ok(())
    }

    fn check_size(&mut self) -> Result<(), SseError> {
        if self.line.len() + self.data.len() > SSE_EVENT_BYTES_MAX {
            self.failed = true;
            return Err(SseError::EventTooLarge);
        }
        Ok(())
    }

    fn process_line(&mut self, line: &[u8], out: &mut Vec<SseEvent>) {
        if line.is_empty() {
            self.dispatch(out);
            return;
        }
        if line[0] == b':' {
            return;
        }
        let (field, value) = match memchr::memchr(b':', line) {
            Some(colon) => {
                let value = &line[colon + 1..];
                (&line[..colon], value.strip_prefix(b" ").unwrap_or(value))
            }
            None => (line, &b""[..]),
        };
        // Invalid UTF-8 is replaced, as the spec's decoder does, rather than rejected:
        // a provider's stray byte must not abort a stream the client is paying for.
        match field {
            b"data" => {
                if self.has_data {
                    self.data.push('\n');
                }
                self.data.push_str(&lossy(value));
                self.has_data = true;
            }
            b"event" => self.event = Some(lossy(value).into_owned()),
            // `id` and `retry` serve reconnection, which the gateway never does (a
            // completion cannot be resumed), and unknown fields are ignored by spec.
            _ => {}
        }
    }

    fn dispatch(&mut self, out: &mut Vec<SseEvent>) {
        let event = self.event.take();
        if !self.has_data {
            return;
        }
        self.has_data = false;
        out.push(SseEvent { event, data: std::mem::take(&mut self.data) });
    }
}

/// `bytes` as text, invalid UTF-8 replaced. `from_utf8` checks a word of ASCII at a time
/// where `from_utf8_lossy` walks byte by byte, and a provider's bytes are valid.
fn lossy(bytes: &[u8]) -> Cow<'_, str> {
    match std::str::from_utf8(bytes) {
        Ok(text) => Cow::Borrowed(text),
        Err(_) => String::from_utf8_lossy(bytes),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn parse_whole(input: &[u8]) -> Vec<SseEvent> {
        let mut parser = SseParser::new();
        let mut out = Vec::new();
        parser.feed(input, &mut out).unwrap();
        parser.finish(&mut out).unwrap();
        out
    }

    fn event(name: Option<&str>, data: &str) -> SseEvent {
        SseEvent { event: name.map(str::to_owned), data: data.to_owned() }
    }

    fn check(input: &str, expected: &[SseEvent]) {
        assert_eq!(parse_whole(input.as_bytes()), expected, "{input:?}");
    }

    #[test]
    fn parses_the_event_stream_grammar() {
        check("data: a\n\n", &[event(None, "a")]);
        check("data:a\r\n\r\n", &[event(None, "a")]);
        check("data: a\r\rdata: b\r\r", &[event(None, "a"), event(None, "b")]);
        check("event: ping\ndata: x\ndata:  y\n\n", &[event(Some("ping"), "x\n y")]);
        check(": keep-alive\n\ndata: a\n\n", &[event(None, "a")]);
        check("event: only\n\ndata: b\n\n", &[event(None, "b")]);
        check("data\n\n", &[event(None, "")]);
        check("id: 7\nretry: 10\nfoo: bar\ndata: z\n\n", &[event(None, "z")]);
        check("data: trailing", &[event(None, "trailing")]);
        check("data: é€😀\n\n", &[event(None, "é€😀")]);
        check("", &[]);
        // A stray byte is replaced, not fatal.
        let replaced = [event(Some("e\u{fffd}"), "a\u{fffd}b")];
        assert_eq!(parse_whole(b"event: e\xff\ndata: a\xffb\n\n"), replaced);
    }

    #[test]
    fn rejects_an_event_past_the_limit() {
        let mut parser = SseParser::new();
        let mut out = Vec::new();
        let big = vec![b'x'; SSE_EVENT_BYTES_MAX / 2];
        parser.feed(b"data: ", &mut out).unwrap();
        parser.feed(&big, &mut out).unwrap();
        parser.feed(b"\ndata: ", &mut out).unwrap();
        assert_eq!(parser.feed(&big, &mut out), Err(SseError::EventTooLarge));
        assert_eq!(parser.feed(b"\n\n", &mut out), Err(SseError::EventTooLarge));
        assert!(out.is_empty());
    }

    fn arbitrary_stream() -> impl Strategy<Value = Vec<u8>> {
        let piece = prop_oneof![
            Just("data: ".to_owned()),
            Just("event: x".to_owned()),
            Just(": c".to_owned()),
            Just("\n".to_owned()),
            Just("\r".to_owned()),
            Just("\r\n".to_owned()),
            Just("é😀".to_owned()),
            "[a-z :]{0,8}",
        ];
        proptest::collection::vec(piece, 0..40).prop_map(|pieces| pieces.concat().into_bytes())
    }

    proptest! {
        #[test]
        fn splitting_never_changes_events(input in arbitrary_stream(), cuts in proptest::collection::vec(any::<prop::sample::Index>(), 0..8)) {
            let expected = parse_whole(&input);
            let mut positions: Vec<usize> = cuts.iter().map(|cut| cut.index(input.len() + 1)).collect();
            positions.sort_unstable();
            let mut parser = SseParser::new();
            let mut out = Vec::new();
            let mut start = 0;
            for position in positions {
                parser.feed(&input[start..position], &mut out).unwrap();
                start = position;
            }
            parser.feed(&input[start..], &mut out).unwrap();
            parser.finish(&mut out).unwrap();
            prop_assert_eq!(out, expected);
        }

        #[test]
        fn arbitrary_bytes_never_panic(input in proptest::collection::vec(any::<u8>(), 0..512), split in any::<prop::sample::Index>()) {
            let mut parser = SseParser::new();
            let mut out = Vec::new();
            let split = split.index(input.len() + 1);
            parser.feed(&input[..split], &mut out).unwrap();
            parser.feed(&input[split..], &mut out).unwrap();
            parser.finish(&mut out).unwrap();
        }
    }
}
