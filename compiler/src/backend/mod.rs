//! Backends. The reference interpreter (`ir::eval`) is always there; the
//! Cranelift JIT and the candle tensor backend are separate components that
//! consume the optimised graph and are checked against the interpreter.

use crate::ir::eval::{Env, NodeError};
use crate::ir::{Graph, Handle};
use crate::value::Tensor;
use std::fmt;

/// Something that evaluates a program's results. Every backend implements it;
/// `Program::run_with` binds the data, calls it, and checks the results, so
/// all backends share one path for validation, state and errors.
pub trait Executor: Send + Sync {
    /// The backend's name (`interp`, `jit`, `candle`).
    fn name(&self) -> &str;

    /// The values of `roots` — always a subset of `g.roots()` (loss, checks,
    /// reports, state updates, gradients) — for the data in `env`. Data-dependent
    /// failures (an index out of range) name the node they happened at.
    fn eval(&self, g: &Graph, env: &Env, roots: &[Handle]) -> Result<Vec<Tensor>, NodeError>;
}

/// The reference interpreter as an executor.
pub struct Interp;

impl Executor for Interp {
    fn name(&self) -> &str {
        "interp"
    }

    fn eval(&self, g: &Graph, env: &Env, roots: &[Handle]) -> Result<Vec<Tensor>, NodeError> {
        crate::ir::eval::eval(g, env, roots)
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Backend {
    Interp,
    Jit,
    Candle,
}

impl Backend {
    pub fn parse(s: &str) -> Option<Backend> {
        match s {
            "interp" => Some(Backend::Interp),
            "jit" => Some(Backend::Jit),
            "candle" => Some(Backend::Candle),
            _ => None,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Backend::Interp => "interp",
            Backend::Jit => "jit",
            Backend::Candle => "candle",
        }
    }
}

impl fmt::Display for Backend {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}
