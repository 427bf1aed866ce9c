//! The gateway (being written).
#![forbid(unsafe_code)]
