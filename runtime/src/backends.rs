//! Which backends this build of lossc contains, and how to get an executor
//! for a compiled program. Never a silent fallback: a backend that is not
//! built is an error that says so.

use losslang_compiler::backend::{Backend, Executor, Interp};
use losslang_compiler::program::{Program, RunError};

/// Whether this build contains the backend.
pub fn available(b: Backend) -> bool {
    match b {
        Backend::Interp | Backend::Jit => true,
        Backend::Candle => true,
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
        Backend::Jit => jit(p, 1),
        Backend::Candle => {
            // `cuda` without the `cuda` feature is an error that says so.
            let dev = losslang_candle::device(device).map_err(|e| RunError {
                code: "L5002",
                message: e.to_string(),
                help: Some(
                    if cfg!(feature = "cuda") {
                        "this lossc has CUDA: the device needs the NVIDIA driver (R580 or newer) \
                         and the CUDA 13 cuBLAS and cuRAND libraries (docs/candle.md); or run \
                         with --device cpu"
                    } else {
                        "run with --device cpu, or build lossc with `--features cuda` (docs/candle.md)"
                    }
                    .into(),
                ),
            })?;
            match losslang_candle::CandleExec::for_program(p, dev) {
                Ok(e) => Ok(Box::new(e)),
                Err(e) => Err(RunError {
                    code: "L5005",
                    message: e.to_string(),
                    help: Some("run this program with --device cpu".into()),
                }),
            }
        }
    }
}

/// The Cranelift JIT for `p`, splitting batch loops across `threads` threads.
pub fn jit(p: &Program, threads: usize) -> Result<Box<dyn Executor>, RunError> {
    match losslang_clif::Jit::new(&p.opt) {
        Ok(j) => Ok(Box::new(j.with_threads(threads))),
        Err(e) => Err(RunError {
            code: "L5004",
            message: e.to_string(),
            help: Some(
                "this is a bug in losslang; run with --backend interp meanwhile and report it with the .loss file"
                    .into(),
            ),
        }),
    }
}
