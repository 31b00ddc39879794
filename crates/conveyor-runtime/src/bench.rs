//! Benchmarks (todo).
