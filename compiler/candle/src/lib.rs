//! losslang's candle backend: lowers the optimised IR to candle-core tensor
//! operations, so a `.loss` program runs on a candle `Device` (the CPU
//! always, CUDA with the `cuda` feature) and plugs into a candle training loop.
//!
//! Two gradient paths, one lowering:
//! - [`CandleExec`] (an `Executor`) evaluates the compiler's own gradient
//!   graph (`Program.opt.grads`) as candle calls: the `--backend candle` of
//!   `lossc` and the conformance suite.
//! - [`CandleProgram::forward`] builds the forward graph on the caller's
//!   tracked tensors, so `loss.backward()` flows through the loss into the
//!   caller's model; each op's gradient there is the compiler's VJP.
//!
//! ```no_run
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! # let program: losslang_compiler::Program = todo!();
//! # let (logits, target): (candle_core::Var, candle_core::Tensor) = todo!();
//! let device = candle_core::Device::Cpu;
//! let prog = losslang_candle::CandleProgram::compile(&program, &device)?;
//! let mut state = prog.new_state();
//! let out = prog.forward(&[("logits", logits.as_tensor()), ("target", &target)], &mut state)?;
//! let grads = out.loss.backward()?;
//! let g = grads.get(logits.as_tensor());
//! # Ok(()) }
//! ```

pub mod exec;
pub mod kernels;
pub mod lower;
pub mod plan;
pub mod program;
pub mod run;
pub mod vjp;

pub use exec::{from_candle, to_candle};
pub use lower::{LowerError, lower};
pub use plan::{Plan, Target};
pub use program::{CandleExec, CandleProgram, CandleState, Error, Forward, device, target_for};

/// The text form of `g` lowered for `target` (`lossc emit --stage candle`).
pub fn emit_text(g: &losslang_compiler::ir::Graph, target: Target) -> Result<String, LowerError> {
    Ok(plan::print(g, &lower(g, target)?))
}
