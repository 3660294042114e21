//! The checker. It resolves names (`use`, helper `fn`s inlined at each call),
//! and type-checks every expression by *building* it: each operation goes
//! through its op's type rule in `ops`, so checking and lowering to the IR
//! are one walk and the graph is the side table of types. Findings are
//! collected, not thrown: one run reports every error it can.

pub mod builtins;
pub mod ensemble;
pub mod expr;
pub mod gradflow;
pub mod range;
pub mod scope;

use crate::diag::Diagnostic;
use crate::dim::Dim;
use crate::ir::{Graph, Handle};
use losslang_grammar::Span;

/// A value during checking. Literals stay weakly typed until they meet a
/// tensor (`1 - p` is f32, `2 * target` is i64); integer expressions of dims
/// stay symbolic so they can size slices and fills.
#[derive(Clone, Debug)]
pub enum Val {
    T(Handle),
    Int(i64),
    Float(f64),
    Bool(bool),
    /// A static i64 scalar: an expression of dims (`N`, `(Q - 1) // 2`).
    Dim(Dim),
    List(Vec<(Val, Span)>),
    /// A function name (ensemble members).
    Fn(String),
    /// The value of something that already failed to check.
    Poison,
}

/// A `let` (or input, param, state) as shown by `check --explain`.
#[derive(Clone, Debug)]
pub struct Binding {
    pub kind: &'static str,
    pub name: String,
    pub file: usize,
    pub span: Span,
    pub value: Option<Handle>,
}

#[derive(Clone, Debug)]
pub struct Source {
    pub name: String,
    pub text: String,
}

/// Where `use` finds other files. The compiler does no I/O itself.
pub trait Loader {
    /// `path` is the module path of a `use` (`["std", "weighting"]`), `from`
    /// the name of the importing source.
    fn load(&self, path: &[String], from: &str) -> Result<Source, String>;
}

/// A loader that finds nothing (single-file programs).
pub struct NoLoader;

impl Loader for NoLoader {
    fn load(&self, path: &[String], _from: &str) -> Result<Source, String> {
        Err(format!("no module `{}` is available", path.join("::")))
    }
}

#[derive(Clone, Copy, Debug)]
pub struct Options {
    /// Apply the stability rewrites (`log(softmax)` → `log_softmax`, …).
    pub rewrite: bool,
}

impl Default for Options {
    fn default() -> Self {
        Options { rewrite: true }
    }
}

/// The result of checking one `loss`.
pub struct Checked {
    pub graph: Graph,
    pub bindings: Vec<Binding>,
    pub diags: Vec<Diagnostic>,
}

pub use scope::check_program;
