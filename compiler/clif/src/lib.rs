//! Cranelift JIT backend.

pub mod math;
