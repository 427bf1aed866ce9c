//! The request history's value encoding (format 2, `history.rs`): a record with its payer,
//! or an aggregate's sums, as LEB128 varints and length-prefixed strings in a fixed field
//! order, then a CRC-32 (little-endian) of the bytes before it. About half the bytes of the
//! ledger codec's postcard of the same record (no header, the creation time is in the
//! table's key), and independent of the ledger's format version: a change to
//! [`RequestRecord`] does not compile until [`encode_record`] names the new field, and a
//! history whose layout changes gets a new `HISTORY_FORMAT_VERSION` (`history.rs`).

use crate::history::Usage;
use solrouter_ledger::{AccountId, KeyId, PicoUsd, RequestRecord};

/// Why a stored value could not be read: the history holds something this build did not
/// write.
#[derive(Debug, thiserror::Error)]
pub enum HistoryCodecError {
    #[error("checksum {stored:08x} stored, {computed:08x} computed over {n_bytes} bytes")]
    Corrupt { stored: u32, computed: u32, n_bytes: usize },
    #[error("malformed value: {0}")]
    Malformed(&'static str),
}

const CHECKSUM_BYTES: usize = 4;

/// Flag bits of a record (one byte after the payer).
const HAS_KEY: u8 = 1;
const HAS_TTFT: u8 = 1 << 1;
const STREAMED: u8 = 1 << 2;
const USAGE_ESTIMATED: u8 = 1 << 3;
const USAGE_CLAMPED: u8 = 1 << 4;
const WAIVED: u8 = 1 << 5;

/// Appends `account` and `record` (all of it but `created_ms`) to `out`, sealed.
pub fn encode_record(account: AccountId, record: &RequestRecord, out: &mut Vec<u8>) {
    // Every field named: a field added to `RequestRecord` is a compile error here.
    let RequestRecord {
        key,
        model,
        provider,
        prompt_tokens,
        completion_tokens,
        reasoning_tokens,
        cached_tokens,
        latency_ms,
        status,
        streamed,
        created_ms: _,
        usage_estimated,
        usage_clamped,
        waived,
        cost,
        written_off,
        ttft_ms,
    } = record;
    let start = out.len();
    put_varint(out, u128::from(account.0));
    let flag = |set: bool, bit: u8| if set { bit } else { 0 };
    out.push(
        flag(key.is_some(), HAS_KEY)
            | flag(ttft_ms.is_some(), HAS_TTFT)
            | flag(*streamed, STREAMED)
            | flag(*usage_estimated, USAGE_ESTIMATED)
            | flag(*usage_clamped, USAGE_CLAMPED)
            | flag(*waived, WAIVED),
    );
    if let Some(key) = key {
        put_varint(out, u128::from(key.0));
    }
    put_str(out, model);
    put_str(out, provider);
    for n in [*prompt_tokens, *completion_tokens, *reasoning_tokens, *cached_tokens, *latency_ms] {
        put_varint(out, u128::from(n));
    }
    put_varint(out, u128::from(*status));
    put_varint(out, cost.0);
    put_varint(out, written_off.0);
    if let Some(ttft_ms) = ttft_ms {
        put_varint(out, u128::from(*ttft_ms));
    }
    seal(out, start);
}

/// The payer and record [`encode_record`] wrote, created at `created_ms`.
pub fn decode_record(
    created_ms: u64,
    bytes: &[u8],
) -> Result<(AccountId, RequestRecord), HistoryCodecError> {
    let mut reader = Reader::open(bytes)?;
    let account = AccountId(reader.u64()?);
    let flags = reader.byte()?;
    if flags & !(HAS_KEY | HAS_TTFT | STREAMED | USAGE_ESTIMATED | USAGE_CLAMPED | WAIVED) != 0 {
        return Err(HistoryCodecError::Malformed("unknown record flags"));
    }
    let key = if flags & HAS_KEY != 0 { Some(KeyId(reader.u64()?)) } else { None };
    let model = reader.string()?;
    let provider = reader.string()?;
    let record = RequestRecord {
        key,
        model,
        provider,
        prompt_tokens: reader.u64()?,
        completion_tokens: reader.u64()?,
        reasoning_tokens: reader.u64()?,
        cached_tokens: reader.u64()?,
        latency_ms: reader.u64()?,
        status: u16::try_from(reader.varint()?)
            .map_err(|_| HistoryCodecError::Malformed("status out of range"))?,
        streamed: flags & STREAMED != 0,
        created_ms,
        usage_estimated: flags & USAGE_ESTIMATED != 0,
        usage_clamped: flags & USAGE_CLAMPED != 0,
        waived: flags & WAIVED != 0,
        cost: PicoUsd(reader.varint()?),
        written_off: PicoUsd(reader.varint()?),
        ttft_ms: if flags & HAS_TTFT != 0 { Some(reader.u64()?) } else { None },
    };
    reader.finish()?;
    Ok((account, record))
}

/// An aggregate's sums, sealed.
pub fn encode_usage(usage: &Usage) -> Vec<u8> {
    let Usage {
        requests,
        prompt_tokens,
        completion_tokens,
        reasoning_tokens,
        cached_tokens,
        cost,
        written_off,
    } = usage;
    let mut out = Vec::with_capacity(32);
    for n in [*requests, *prompt_tokens, *completion_tokens, *reasoning_tokens, *cached_tokens] {
        put_varint(&mut out, u128::from(n));
    }
    put_varint(&mut out, cost.0);
    put_varint(&mut out, written_off.0);
    seal(&mut out, 0);
    out
}

pub fn decode_usage(bytes: &[u8]) -> Result<Usage, HistoryCodecError> {
    let mut reader = Reader::open(bytes)?;
    let usage = Usage {
        requests: reader.u64()?,
        prompt_tokens: reader.u64()?,
        completion_tokens: reader.u64()?,
        reasoning_tokens: reader.u64()?,
        cached_tokens: reader.u64()?,
        cost: PicoUsd(reader.varint()?),
        written_off: PicoUsd(reader.varint()?),
    };
    reader.finish()?;
    Ok(usage)
}

fn put_varint(out: &mut Vec<u8>, mut n: u128) {
    while n >= 0x80 {
        out.push((n as u8) | 0x80);
        n >>= 7;
    }
    out.push(n as u8);
}

fn put_str(out: &mut Vec<u8>, text: &str) {
    put_varint(out, text.len() as u128);
    out.extend_from_slice(text.as_bytes());
}

/// Appends the CRC-32 of `out[start..]`.
fn seal(out: &mut Vec<u8>, start: usize) {
    let checksum = crc32fast::hash(&out[start..]);
    out.extend_from_slice(&checksum.to_le_bytes());
}

/// Reads a sealed value front to back.
struct Reader<'a> {
    bytes: &'a [u8],
}

impl<'a> Reader<'a> {
    /// Checks the seal; the reader then holds the bytes before it.
    fn open(bytes: &'a [u8]) -> Result<Reader<'a>, HistoryCodecError> {
        let Some(split) = bytes.len().checked_sub(CHECKSUM_BYTES) else {
            return Err(HistoryCodecError::Malformed("shorter than its checksum"));
        };
        let (body, stored) = bytes.split_at(split);
        let stored = u32::from_le_bytes(stored.try_into().expect("CHECKSUM_BYTES long"));
        let computed = crc32fast::hash(body);
        if stored != computed {
            return Err(HistoryCodecError::Corrupt { stored, computed, n_bytes: bytes.len() });
        }
        Ok(Reader { bytes: body })
    }

    fn byte(&mut self) -> Result<u8, HistoryCodecError> {
        let (&first, rest) =
            self.bytes.split_first().ok_or(HistoryCodecError::Malformed("truncated"))?;
        self.bytes = rest;
        Ok(first)
    }

    /// At most 19 bytes (128 bits); a non-canonical or overlong encoding is refused.
    fn varint(&mut self) -> Result<u128, HistoryCodecError> {
        let mut n = 0u128;
        for shift in (0..128).step_by(7) {
            let byte = self.byte()?;
            let part = u128::from(byte & 0x7f);
            if shift == 126 && part > 0b11 {
                return Err(HistoryCodecError::Malformed("varint past 128 bits"));
            }
            n |= part << shift;
            if byte & 0x80 == 0 {
                if byte == 0 && shift > 0 {
                    return Err(HistoryCodecError::Malformed("varint not minimal"));
                }
                return Ok(n);
            }
        }
        Err(HistoryCodecError::Malformed("varint past 128 bits"))
    }

    fn u64(&mut self) -> Result<u64, HistoryCodecError> {
        u64::try_from(self.varint()?).map_err(|_| HistoryCodecError::Malformed("past 64 bits"))
    }

    fn string(&mut self) -> Result<String, HistoryCodecError> {
        let len = usize::try_from(self.varint()?)
            .map_err(|_| HistoryCodecError::Malformed("string length"))?;
        if len > self.bytes.len() {
            return Err(HistoryCodecError::Malformed("truncated string"));
        }
        let (text, rest) = self.bytes.split_at(len);
        self.bytes = rest;
        String::from_utf8(text.to_vec()).map_err(|_| HistoryCodecError::Malformed("not UTF-8"))
    }

    fn finish(self) -> Result<(), HistoryCodecError> {
        match self.bytes.is_empty() {
            true => Ok(()),
            false => Err(HistoryCodecError::Malformed("trailing bytes")),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn full_record() -> RequestRecord {
        RequestRecord {
            key: Some(KeyId(u64::MAX)),
            model: "openai/gpt-4o-mini".into(),
            provider: "openai".into(),
            prompt_tokens: 1_234,
            completion_tokens: u64::MAX,
            reasoning_tokens: 7,
            cached_tokens: 0,
            latency_ms: 812,
            status: 502,
            streamed: true,
            created_ms: 1_764_000_000_000,
            usage_estimated: true,
            usage_clamped: false,
            waived: true,
            cost: PicoUsd(u128::MAX),
            written_off: PicoUsd(123_456_789),
            ttft_ms: Some(99),
        }
    }

    #[test]
    fn records_and_usage_round_trip() {
        for record in [full_record(), RequestRecord::default()] {
            let mut bytes = Vec::new();
            encode_record(AccountId(42), &record, &mut bytes);
            let decoded = decode_record(record.created_ms, &bytes).unwrap();
            assert_eq!(decoded, (AccountId(42), record));
        }
        let usage = Usage { requests: 3, cost: PicoUsd(u128::MAX), ..Usage::default() };
        assert_eq!(decode_usage(&encode_usage(&usage)).unwrap(), usage);
    }

    /// Every single-bit flip and every truncation of a record is refused, never decoded
    /// into another record.
    #[test]
    fn damaged_values_are_refused() {
        let mut bytes = Vec::new();
        encode_record(AccountId(42), &full_record(), &mut bytes);
        for bit in 0..bytes.len() * 8 {
            let mut flipped = bytes.clone();
            flipped[bit / 8] ^= 1 << (bit % 8);
            assert!(decode_record(0, &flipped).is_err(), "bit {bit}");
        }
        for len in 0..bytes.len() {
            assert!(decode_record(0, &bytes[..len]).is_err(), "{len} bytes");
        }
    }
}
