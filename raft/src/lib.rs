//! Replication of the ledger (placeholder until the raft layer lands).
#![forbid(unsafe_code)]
