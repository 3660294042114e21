//! Which backends this build of lossc contains, and how to get an executor
//! for a compiled program. Never a silent fallback: a backend that is not
//! built is an error that says so.

use losslang_compiler::backend::{Backend, Executor, Interp};
use losslang_compiler::program::{Program, RunError};

/// Whether this build contains the backend.
pub fn available(b: Backend) -> bool {
    match b {
        Backend::Interp => true,
        Backend::Jit | Backend::Candle => false,
    }
}

pub fn not_built(b: Backend) -> RunError {
    let what = match b {
        Backend::Jit => "the Cranelift JIT backend",
        Backend::Candle => "the candle backend",
        Backend::Interp => "the interpreter",
    };
    RunError {
        code: "L5002",
        message: format!("`{}` is not built yet: this version of lossc does not contain {what}", b.name()),
        help: Some("run with --backend interp (the reference interpreter); losslang never falls back silently".into()),
    }
}

/// An executor for `p` on backend `b` (`device` is for candle: `cpu` or `cuda[:i]`).
pub fn executor(b: Backend, p: &Program, device: &str) -> Result<Box<dyn Executor>, RunError> {
    let _ = (p, device);
    match b {
        Backend::Interp => Ok(Box::new(Interp)),
        Backend::Jit | Backend::Candle => Err(not_built(b)),
    }
}
