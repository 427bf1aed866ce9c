//! The load-test harness (placeholder).
fn main() {}
