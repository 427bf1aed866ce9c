//! The gateway: everything that speaks HTTP. It owns the customer APIs (OpenAI Chat Completions, Anthropic Messages),
//! the admin API, the request pipeline (auth, limits, routing, reserve, forward, settle),
//! the provider adapters and the mock provider, configuration and the `solrouter`
//! binary's roles.
//!
//! It must never compute balances or apply money rules itself: every amount it charges
//! is computed from the catalogue's prices and handed to the ledger through `bank`, the
//! only module that talks to the ledger. It must never store an API key in the clear,
//! and no input may make it panic or hold a connection without a deadline.
#![forbid(unsafe_code)]
// A request's whole path (server → pipeline → relay → bank → the ledger node's submit) is
// one nested future whose layout rustc computes at once, deeper than the default 128.
#![recursion_limit = "256"]

pub mod account;
pub mod admin;
pub mod api;
pub mod app;
pub mod attempt;
pub mod bank;
pub mod body;
pub mod catalog;
pub mod codec;
pub mod config;
pub mod context;
pub mod dev;
pub mod embeddings;
pub mod error;
pub mod gateway_mode;
pub mod health;
pub mod hold;
pub mod keys;
pub mod ledger_server;
pub mod messages;
pub mod mock;
pub mod parse;
pub mod payments;
pub mod pipeline;
pub mod relay;
pub mod respond;
pub mod responses;
pub mod routing;
pub mod server;
pub mod telemetry;
pub mod tokens;
pub mod upstream;
pub mod web;
pub mod wire;

// The adapters' crate, under the names its modules had when they lived here.
pub use solrouter_adapters::{json_text, providers, sse};
