//! The gateway's integration tests, one module per area, in one test binary: each
//! binary of its own linked the whole gateway again (about 85 MB and several seconds of
//! linking each) and compiled the shared harnesses once per file. The harnesses are the
//! `*support` modules; every other module is one area's tests.

mod cluster_support;
mod providers_support;
mod support;
mod web_support;

mod browser;
mod cluster;
mod completions;
mod embeddings;
mod errors;
mod key_limits;
mod loom_breaker;
mod messages;
mod mock_upstream;
mod money;
mod openai_sdk;
mod providers_anthropic;
mod providers_cohere;
mod providers_compatible;
mod providers_embeddings;
mod providers_google;
mod providers_mock;
mod providers_openai;
mod responses;
mod restart;
mod routing;
mod sdk;
mod stream_fuzz;
mod web_security;
