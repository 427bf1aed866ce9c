//! Log entries encoded once. A leader encoded each entry for its log and again for every
//! AppendEntries that carried it, once per follower; a follower decoded an AppendEntries
//! and encoded each of its entries again for its own log (together 6–12 % of a loaded
//! node's CPU, docs/benchmarks.md, "Session 34"). Both now reuse the bytes:
//! [`EncodedEntries`] keeps the bodies (a value's encoding between `codec`'s header and
//! checksum) of a group's recent entries, by log id: what its log wrote, and what an
//! AppendEntries brought. [`EncodedEntries::encode_append_entries`] splices them into the
//! request, byte for byte what `codec::encode` of the whole request writes, and
//! [`decode_append_entries`] decodes a request as `codec::decode` does and returns each
//! entry's body beside it.
//!
//! A log id names one entry for good (a leader makes one entry per index in its term), so
//! a body kept under an entry's log id is that entry's encoding; a body under the same
//! index and another log id (an entry a new leader overwrote) is never used for it.

use crate::codec::{self, CodecError, Concat, FORMAT_VERSION};
use crate::incarnation::Stamped;
use crate::types::{Entry, LogId, NodeId, TypeConfig};
use bytes::Bytes;
use openraft::raft::AppendEntriesRequest;
use openraft::Vote;
use std::collections::BTreeMap;
use std::sync::{Mutex, MutexGuard};

/// Most entries, and most bytes of bodies, one group keeps: a leader sends an entry to its
/// followers right after its log took it, and a follower appends what an AppendEntries
/// brought right after it came, so only the last few are ever looked up; an entry sent
/// again later (a follower far behind) is encoded again.
pub const ENCODED_ENTRIES_MAX: usize = 256;
pub const ENCODED_BYTES_MAX: usize = 8 * 1024 * 1024;

/// The bodies of one group's recent log entries (see the module doc).
#[derive(Default)]
pub struct EncodedEntries {
    bodies: Mutex<Bodies>,
}

#[derive(Default)]
struct Bodies {
    by_index: BTreeMap<u64, (LogId, Bytes)>,
    bytes: usize,
}

impl Bodies {
    fn get(&self, log_id: &LogId) -> Option<Bytes> {
        match self.by_index.get(&log_id.index) {
            Some((kept, body)) if kept == log_id => Some(body.clone()),
            _ => None,
        }
    }

    /// Keeps `body` for `log_id`, and drops the lowest indexes' beyond the bounds.
    fn put(&mut self, log_id: LogId, body: Bytes) {
        self.bytes += body.len();
        if let Some((_, replaced)) = self.by_index.insert(log_id.index, (log_id, body)) {
            self.bytes -= replaced.len();
        }
        while self.by_index.len() > ENCODED_ENTRIES_MAX || self.bytes > ENCODED_BYTES_MAX {
            let Some((_, (_, dropped))) = self.by_index.pop_first() else { break };
            self.bytes -= dropped.len();
        }
    }
}

impl EncodedEntries {
    fn lock(&self) -> MutexGuard<'_, Bodies> {
        self.bodies.lock().expect("encoded entries lock poisoned")
    }

    /// What `codec::encode` writes for `entry`: framed from its body if one is kept,
    /// otherwise encoded, and its body kept for the AppendEntries that will carry it.
    pub fn encode(&self, entry: &Entry) -> Result<Vec<u8>, CodecError> {
        if let Some(body) = self.lock().get(&entry.log_id) {
            return Ok(codec::frame(&body));
        }
        let encoded = codec::encode(entry)?;
        let body = Bytes::copy_from_slice(codec::body_of(&encoded));
        self.lock().put(entry.log_id, body);
        Ok(encoded)
    }

    /// What `codec::encoded_len` gives for `entry`, from its body if one is kept.
    pub fn encoded_len(&self, entry: &Entry) -> Result<usize, CodecError> {
        match self.lock().get(&entry.log_id) {
            Some(body) => Ok(codec::HEADER_BYTES + body.len() + codec::CHECKSUM_BYTES),
            None => codec::encoded_len(entry),
        }
    }

    /// Keeps the bodies [`decode_append_entries`] returned with `entries`: slices of the
    /// request, not copies, so a request's buffer lives until the last of its bodies is
    /// dropped (its entries are consecutive, and bodies leave lowest index first, so at
    /// most one request's buffer is held beyond the bodies' bound).
    pub fn keep(&self, entries: &[Entry], bodies: Vec<Bytes>) {
        let mut kept = self.lock();
        for (entry, body) in entries.iter().zip(bodies) {
            kept.put(entry.log_id, body);
        }
    }

    /// `codec::encode(stamped)`, with the bodies kept for its entries copied in rather
    /// than encoded again.
    pub fn encode_append_entries(
        &self,
        stamped: &Stamped<&AppendEntriesRequest<TypeConfig>>,
    ) -> Result<Vec<u8>, CodecError> {
        let rpc = stamped.rpc;
        let bodies: Vec<Option<Bytes>> = {
            let kept = self.lock();
            rpc.entries.iter().map(|entry| kept.get(&entry.log_id)).collect()
        };
        let mut concat = Concat::new(bodies.iter().flatten().map(Bytes::len).sum());
        // The fields of `Stamped`, then those of `AppendEntriesRequest`, in their order.
        concat.push(&(stamped.from, stamped.from_incarnation, stamped.to_incarnation))?;
        concat.push(&(&rpc.vote, &rpc.prev_log_id, rpc.entries.len()))?;
        for (entry, body) in rpc.entries.iter().zip(&bodies) {
            match body {
                Some(body) => concat.push_body(body),
                None => concat.push(entry)?,
            }
        }
        concat.push(&rpc.leader_commit)?;
        Ok(concat.finish())
    }
}

/// The request [`EncodedEntries::encode_append_entries`] (or `codec::encode`) wrote, as
/// `codec::decode` reads it, and the body of each of its entries (slices of `bytes`): none
/// if it was written in an older version than this build's, whose bodies this build does
/// not write.
pub type DecodedAppendEntries = (Stamped<AppendEntriesRequest<TypeConfig>>, Vec<Bytes>);

pub fn decode_append_entries(bytes: &Bytes) -> Result<DecodedAppendEntries, CodecError> {
    let (version, body) = codec::open(bytes)?;
    let ((from, from_incarnation, to_incarnation), rest) = codec::take_first(body)?;
    type Head = (Vote<NodeId>, Option<LogId>, usize);
    let ((vote, prev_log_id, n_entries), mut rest): (Head, _) = codec::take_first(rest)?;
    // Every entry takes a byte at least: a length the bytes cannot hold reserves nothing.
    let mut entries = Vec::with_capacity(n_entries.min(rest.len()));
    let mut bodies = Vec::with_capacity(n_entries.min(rest.len()));
    for _ in 0..n_entries {
        let (entry, after): (Entry, _) = codec::take_first(rest)?;
        bodies.push(bytes.slice_ref(&rest[..rest.len() - after.len()]));
        entries.push(entry);
        rest = after;
    }
    let (leader_commit, rest) = codec::take_first(rest)?;
    if !rest.is_empty() {
        return Err(CodecError::Malformed(format!("{} trailing bytes", rest.len())));
    }
    if version != FORMAT_VERSION {
        bodies.clear();
    }
    let rpc = AppendEntriesRequest { vote, prev_log_id, entries, leader_commit };
    Ok((Stamped { from, from_incarnation, to_incarnation, rpc }, bodies))
}

#[cfg(test)]
mod tests {
    use super::*;
    use openraft::{CommittedLeaderId, EntryPayload, Membership};
    use solrouter_ledger::{AccountId, Batch, Command, Op, OpId, PicoUsd};
    use std::collections::BTreeSet;

    fn log_id(term: u64, index: u64) -> LogId {
        LogId::new(CommittedLeaderId::new(term, 1), index)
    }

    fn normal(term: u64, index: u64, n_commands: u64) -> Entry {
        let commands = (0..n_commands)
            .map(|i| Command {
                id: OpId(u128::from(index * 1000 + i)),
                op: Op::Credit { account: AccountId(i), amount: PicoUsd(7 + u128::from(i)) },
            })
            .collect();
        let batch = Batch { stamp_ms: 1_700_000_000_000 + index, commands };
        Entry { log_id: log_id(term, index), payload: EntryPayload::Normal(batch.into()) }
    }

    fn entries() -> Vec<Entry> {
        let membership = Membership::new(vec![BTreeSet::from([1, 2, 3])], None);
        vec![
            Entry { log_id: log_id(2, 1), payload: EntryPayload::Blank },
            Entry { log_id: log_id(2, 2), payload: EntryPayload::Membership(membership) },
            normal(2, 3, 1),
            normal(2, 4, 300),
            normal(2, 5, 0),
        ]
    }

    fn stamped(
        entries: Vec<Entry>,
        leader_commit: Option<LogId>,
    ) -> Stamped<AppendEntriesRequest<TypeConfig>> {
        let prev_log_id = entries.first().map(|entry| log_id(1, entry.log_id.index - 1));
        let rpc = AppendEntriesRequest {
            vote: Vote::new_committed(2, 1),
            prev_log_id,
            entries,
            leader_commit,
        };
        Stamped { from: 1, from_incarnation: u128::MAX - 5, to_incarnation: 300, rpc }
    }

    fn by_reference(
        stamped: &Stamped<AppendEntriesRequest<TypeConfig>>,
    ) -> Stamped<&AppendEntriesRequest<TypeConfig>> {
        Stamped {
            from: stamped.from,
            from_incarnation: stamped.from_incarnation,
            to_incarnation: stamped.to_incarnation,
            rpc: &stamped.rpc,
        }
    }

    /// The spliced request is `codec::encode`'s, with every, some or none of its entries'
    /// bodies kept, and with a body kept under another log id at an entry's index (which
    /// must not be used).
    #[test]
    fn a_spliced_request_is_the_encoded_request() {
        let requests = [
            stamped(vec![], None),
            stamped(vec![], Some(log_id(2, 9))),
            stamped(entries(), Some(log_id(2, 3))),
            stamped(entries()[2..4].to_vec(), None),
        ];
        for request in &requests {
            let expected = codec::encode(&by_reference(request)).unwrap();
            let none = EncodedEntries::default();
            assert_eq!(none.encode_append_entries(&by_reference(request)).unwrap(), expected);
            let all = EncodedEntries::default();
            for entry in &request.rpc.entries {
                assert_eq!(all.encode(entry).unwrap(), codec::encode(entry).unwrap());
            }
            assert_eq!(all.encode_append_entries(&by_reference(request)).unwrap(), expected);
            let some = EncodedEntries::default();
            for (i, entry) in request.rpc.entries.iter().enumerate() {
                let mut entry = entry.clone();
                if i % 2 == 0 {
                    entry.log_id.leader_id.term += 1;
                    entry.payload = EntryPayload::Blank;
                }
                some.encode(&entry).unwrap();
            }
            assert_eq!(some.encode_append_entries(&by_reference(request)).unwrap(), expected);
        }
    }

    #[test]
    fn a_decoded_request_is_codec_s_with_each_entry_s_body() {
        let request = stamped(entries(), Some(log_id(2, 4)));
        let bytes = Bytes::from(codec::encode(&by_reference(&request)).unwrap());
        let (decoded, bodies) = decode_append_entries(&bytes).unwrap();
        let reference: Stamped<AppendEntriesRequest<TypeConfig>> = codec::decode(&bytes).unwrap();
        assert_eq!(codec::encode(&by_reference(&decoded)).unwrap(), bytes);
        assert_eq!(codec::encode(&by_reference(&reference)).unwrap(), bytes);
        assert_eq!(bodies.len(), request.rpc.entries.len());
        for (entry, body) in request.rpc.entries.iter().zip(&bodies) {
            assert_eq!(codec::frame(body), codec::encode(entry).unwrap());
        }
        // What a follower keeps is what its log then writes, without encoding.
        let kept = EncodedEntries::default();
        kept.keep(&decoded.rpc.entries, bodies);
        for entry in &request.rpc.entries {
            let mut changed = entry.clone();
            changed.payload = EntryPayload::Blank;
            assert_eq!(kept.encode(&changed).unwrap(), codec::encode(entry).unwrap());
            assert_eq!(kept.encoded_len(&changed).unwrap(), codec::encoded_len(entry).unwrap());
        }
    }

    #[test]
    fn a_damaged_or_padded_request_is_refused() {
        let bytes = codec::encode(&by_reference(&stamped(entries(), None))).unwrap();
        let mut flipped = bytes.clone();
        flipped[40] ^= 1;
        let flipped = Bytes::from(flipped);
        assert!(matches!(decode_append_entries(&flipped), Err(CodecError::Corrupt { .. })));
        let mut padded = codec::body_of(&bytes).to_vec();
        padded.push(0);
        let padded = Bytes::from(codec::frame(&padded));
        assert!(matches!(decode_append_entries(&padded), Err(CodecError::Malformed(_))));
        let cut = Bytes::from(codec::frame(&codec::body_of(&bytes)[..200]));
        assert!(matches!(decode_append_entries(&cut), Err(CodecError::Malformed(_))));
    }

    #[test]
    fn bodies_are_kept_within_their_bounds_lowest_index_first() {
        let kept = EncodedEntries::default();
        for index in 1..=(ENCODED_ENTRIES_MAX as u64 + 10) {
            kept.encode(&normal(1, index, 1)).unwrap();
        }
        let bodies = kept.lock();
        assert_eq!(bodies.by_index.len(), ENCODED_ENTRIES_MAX);
        assert_eq!(bodies.by_index.first_key_value().unwrap().0, &11);
        assert_eq!(bodies.bytes, bodies.by_index.values().map(|(_, body)| body.len()).sum());
        drop(bodies);
        let name = "x".repeat(ENCODED_BYTES_MAX / 3);
        let op = Op::CreateAccount { account: AccountId(1), name };
        let batch = Batch { stamp_ms: 1, commands: vec![Command { id: OpId(1), op }] };
        let big = Entry { log_id: log_id(1, 1_000), payload: EntryPayload::Normal(batch.into()) };
        for index in 1_000..1_008 {
            let mut entry = big.clone();
            entry.log_id.index = index;
            kept.encode(&entry).unwrap();
        }
        let bodies = kept.lock();
        assert!(bodies.bytes <= ENCODED_BYTES_MAX);
        assert_eq!(bodies.by_index.last_key_value().unwrap().0, &1_007);
    }
}
