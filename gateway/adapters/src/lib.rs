//! The provider adapters and the wire formats they read, as a crate with no async runtime,
//! HTTP client or ledger in its dependencies, so that Cargo enforces what the adapters
//! promise: pure translation, never I/O, never money.
//!
//! * `providers` — one adapter per provider wire format (OpenAI-compatible hosts,
//!   Anthropic, Google Gemini, Cohere; embeddings), the registry of hosts with their base
//!   URLs and keys, and the upstream error classification.
//! * `sse` — the incremental Server-Sent Events parser the streamed translations read.
//! * `json_text` — reading and splicing JSON objects as text (the client's request bytes
//!   forwarded with the gateway's fields spliced in).
//! * `controls` — the request parameters a model takes or refuses (from the catalogue).
//!
//! The gateway crate (`solrouter-gateway`) re-exports these modules under its own root, so
//! `solrouter_gateway::providers` and `solrouter_adapters::providers` are the same.
#![forbid(unsafe_code)]

pub mod controls;
pub mod json_text;
pub mod providers;
pub mod sse;
