//! Generated gRPC envelope (see `proto/raft.proto` and `build.rs`).
#![allow(clippy::all, clippy::pedantic, reason = "generated code")]

tonic::include_proto!("solrouter.raft");
