//! Criterion benchmarks of the hot path live in `benches/`.
#![forbid(unsafe_code)]
