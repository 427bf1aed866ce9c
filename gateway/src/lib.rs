//! The gateway (being written).
#![forbid(unsafe_code)]

pub mod catalog;
pub mod mock;
pub mod providers;
pub mod sse;
