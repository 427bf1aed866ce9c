//! The one encoding of everything this crate stores or sends: a 4-byte header (the magic
//! `SRL` and a format version byte) followed by the value in postcard 1 (serde; a stable,
//! documented wire format, maintained; chosen over bincode by the figures in
//! `docs/storage.md`).
//!
//! On disk this covers the log entries, the vote, the committed and purged log ids, the
//! snapshot record (its metadata) and the snapshot payload (the ledger); on the wire, every
//! Raft RPC and `LedgerService` payload. A value whose header is missing or names a
//! version this build does not read is refused with [`CodecError`], never decoded as
//! something else.
//!
//! Changing the layout of any stored type (the ledger's commands, replies, `Ledger`, or
//! openraft's) means a new [`FORMAT_VERSION`]: add it to [`FORMAT_VERSIONS_SUPPORTED`]
//! only with a decoder for the older ones.

use serde::de::DeserializeOwned;
use serde::Serialize;

/// The first bytes of every encoded value.
pub const FORMAT_MAGIC: [u8; 3] = *b"SRL";
/// The version this build writes. 2: the ledger keeps ended holds for a bounded time
/// instead of every request record (those moved to the history store). 3: a request
/// record says whether its charge was waived (`RequestRecord::waived`).
pub const FORMAT_VERSION: u8 = 3;
/// The versions this build reads.
pub const FORMAT_VERSIONS_SUPPORTED: &[u8] = &[FORMAT_VERSION];
/// Magic plus version.
pub const HEADER_BYTES: usize = FORMAT_MAGIC.len() + 1;

#[derive(Debug, thiserror::Error)]
pub enum CodecError {
    #[error("not a SolRouter ledger record: expected magic {FORMAT_MAGIC:?}, found {found:?}")]
    MissingMagic { found: Vec<u8> },
    #[error(
        "unsupported ledger format version {found}; this build reads versions \
         {FORMAT_VERSIONS_SUPPORTED:?}"
    )]
    UnsupportedVersion { found: u8 },
    #[error("malformed ledger record (format version {FORMAT_VERSION}): {0}")]
    Malformed(String),
    #[error("unencodable ledger record: {0}")]
    Unencodable(postcard::Error),
}

pub fn encode<T: Serialize + ?Sized>(value: &T) -> Result<Vec<u8>, CodecError> {
    let mut header = Vec::with_capacity(HEADER_BYTES);
    header.extend_from_slice(&FORMAT_MAGIC);
    header.push(FORMAT_VERSION);
    postcard::to_extend(value, header).map_err(CodecError::Unencodable)
}

/// The length of what [`encode`] writes for `value`, header included, without writing it.
pub fn encoded_len<T: Serialize + ?Sized>(value: &T) -> Result<usize, CodecError> {
    let body = postcard::serialize_with_flavor(value, postcard::ser_flavors::Size::default())
        .map_err(CodecError::Unencodable)?;
    Ok(HEADER_BYTES + body)
}

/// Decodes a value written by [`encode`] with a supported version; trailing bytes are
/// refused like any other malformation.
pub fn decode<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, CodecError> {
    let (magic, rest) = bytes.split_at(bytes.len().min(FORMAT_MAGIC.len()));
    if magic != FORMAT_MAGIC {
        return Err(CodecError::MissingMagic { found: magic.to_vec() });
    }
    let Some((&version, body)) = rest.split_first() else {
        return Err(CodecError::Malformed("no format version after the magic".into()));
    };
    if !FORMAT_VERSIONS_SUPPORTED.contains(&version) {
        return Err(CodecError::UnsupportedVersion { found: version });
    }
    let (value, trailing) =
        postcard::take_from_bytes(body).map_err(|e| CodecError::Malformed(e.to_string()))?;
    if !trailing.is_empty() {
        return Err(CodecError::Malformed(format!("{} trailing bytes", trailing.len())));
    }
    Ok(value)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::types::{Entry, LogId, SnapshotMeta, StoredMembership};
    use openraft::{CommittedLeaderId, EntryPayload, Membership, Vote};
    use solrouter_ledger::{
        AccountId, Batch, Command, HoldId, KeyId, Ledger, Op, OpId, PicoUsd, RequestRecord,
    };
    use std::collections::{BTreeMap, BTreeSet};
    use std::fmt::Debug;

    fn round_trip<T: Serialize + DeserializeOwned + PartialEq + Debug>(value: &T) {
        let bytes = encode(value).unwrap();
        assert_eq!(encoded_len(value).unwrap(), bytes.len());
        assert_eq!(bytes[..HEADER_BYTES], [b'S', b'R', b'L', FORMAT_VERSION]);
        assert_eq!(&decode::<T>(&bytes).unwrap(), value);
    }

    fn log_id(term: u64, index: u64) -> LogId {
        LogId::new(CommittedLeaderId::new(term, 1), index)
    }

    fn batch() -> Batch {
        let account = AccountId(7);
        let record = RequestRecord { model: "m".into(), status: 200, ..RequestRecord::default() };
        let ops = [
            Op::CreateAccount { account, name: "acme".into() },
            Op::Credit { account, amount: PicoUsd(u128::MAX / 3) },
            Op::CreateKey { account, key: KeyId(1), name: "k".into(), hash: [9; 32] },
            Op::Reserve { account, key: KeyId(1), hold: HoldId(3), amount: PicoUsd(5), ttl_ms: 9 },
            Op::Settle { account, hold: HoldId(3), actual: PicoUsd(4), record },
        ];
        let commands = ops
            .into_iter()
            .enumerate()
            .map(|(i, op)| Command { id: OpId(u128::MAX - i as u128), op })
            .collect();
        Batch { stamp_ms: 1_764_000_000_000, commands }
    }

    fn membership() -> StoredMembership {
        let voters = vec![BTreeSet::from([1, 2, 3])];
        StoredMembership::new(Some(log_id(2, 5)), Membership::new(voters, None))
    }

    #[test]
    fn every_stored_kind_round_trips() {
        round_trip(&Entry { log_id: log_id(3, 10), payload: EntryPayload::Normal(batch()) });
        round_trip(&Entry { log_id: log_id(3, 11), payload: EntryPayload::Blank });
        let membership_entry = Membership::new(vec![BTreeSet::from([1, 2])], None);
        let entry =
            Entry { log_id: log_id(3, 12), payload: EntryPayload::Membership(membership_entry) };
        round_trip(&entry);
        round_trip(&Vote::new_committed(4, 2));
        round_trip(&Some(log_id(4, 99)));
        round_trip(&SnapshotMeta {
            last_log_id: Some(log_id(4, 99)),
            last_membership: membership(),
            snapshot_id: "4-99".into(),
        });
        let mut ledger = Ledger::new();
        ledger.apply(&batch());
        assert_eq!(ledger.n_ended_holds_remembered(), 1, "the batch settled hold 3");
        round_trip(&ledger);
        round_trip(&BTreeMap::from([(1u64, "127.0.0.1:1".to_owned())]));
    }

    #[test]
    fn an_unknown_version_is_refused_by_name() {
        let mut bytes = encode(&batch()).unwrap();
        bytes[FORMAT_MAGIC.len()] = 99;
        let error = decode::<Batch>(&bytes).unwrap_err();
        assert!(matches!(error, CodecError::UnsupportedVersion { found: 99 }), "{error:?}");
        assert_eq!(
            error.to_string(),
            "unsupported ledger format version 99; this build reads versions [3]"
        );
    }

    #[test]
    fn missing_magic_truncation_and_trailing_bytes_are_refused() {
        let bytes = encode(&batch()).unwrap();
        let check = |bytes: &[u8], expected: &str| {
            let error = decode::<Batch>(bytes).unwrap_err().to_string();
            assert!(error.contains(expected), "{error}");
        };
        check(&[], "expected magic");
        check(&bytes[1..], "expected magic");
        check(&bytes[..FORMAT_MAGIC.len()], "no format version");
        check(&bytes[..bytes.len() - 1], "malformed");
        let mut longer = bytes.clone();
        longer.push(0);
        check(&longer, "1 trailing bytes");
    }
}
