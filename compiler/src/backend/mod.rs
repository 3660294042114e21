//! Backends. The reference interpreter (`ir::eval`) is always there; the
//! Cranelift JIT and the candle tensor backend are separate components that
//! consume the optimised graph and are checked against the interpreter.

use std::fmt;

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

    /// Whether this build contains the backend.
    pub fn available(self) -> bool {
        match self {
            Backend::Interp => true,
            Backend::Jit | Backend::Candle => false,
        }
    }
}

impl fmt::Display for Backend {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}
