//! losslang's compiler: checks a `.loss` program (shapes, dtypes,
//! differentiability), lowers it to a typed tensor graph, derives gradients,
//! optimises, and evaluates it with the reference interpreter. It does no I/O:
//! source text in, values and diagnostics out.

pub mod autodiff;
pub mod backend;
pub mod diag;
pub mod dim;
pub mod export;
pub mod gradcheck;
pub mod ir;
pub mod kernels;
pub mod ops;
pub mod opt;
pub mod program;
pub mod sema;
pub mod shard;
pub mod value;

pub use program::{CompileOptions, Program, compile};
