//! The library API on the caller's buffers: inputs and state are read where
//! they lie, gradients and new state are written into arrays the caller owns
//! and reuses across steps. Only the scalar loss, the reports and the
//! schedule's own intermediates (O(rows) for a row loss) are allocated.
//!
//! `Program::run_with` with a `Jit` gives the same numbers through tensors;
//! this path exists because converting every array to and from `Tensor` on
//! each call costs more than a memory-bound loss itself.

use crate::array::{ArrayMut, View};
use crate::exec::{Bound, Ext, Kernels, Sink, run_bound};
use crate::{Jit, JitError};
use losslang_compiler::ir::Handle;
use losslang_compiler::ops::Scalar;
use losslang_compiler::program::{Program, RunError, Shaped};
use losslang_compiler::value::Tensor;
use std::collections::BTreeMap;

/// What one call reads. Inputs and state are named as in the signature; a
/// missing param takes its default, a missing state its initial value.
#[derive(Clone, Debug, Default)]
pub struct Args<'a> {
    pub inputs: Vec<(&'a str, View<'a>)>,
    pub params: Vec<(String, Scalar)>,
    pub state: Vec<(&'a str, View<'a>)>,
    /// Sizes no input or state binds (rarely needed).
    pub dims: BTreeMap<String, i64>,
}

/// Where one call writes. `grads` holds one array per `diff` input in
/// declaration order, or nothing for a call without gradients; `state` one
/// array per state in declaration order (the state after the call), or
/// nothing for a loss without state.
#[derive(Debug, Default)]
pub struct Outs<'a> {
    pub grads: Vec<ArrayMut<'a>>,
    pub state: Vec<ArrayMut<'a>>,
}

/// What one call returns besides the arrays it wrote.
#[derive(Clone, Debug)]
pub struct Called {
    pub loss: f64,
    pub reports: Vec<(String, Tensor)>,
}

fn shaped<'v>(v: &'v [(&str, View)]) -> Vec<Shaped<'v>> {
    v.iter()
        .map(|(n, a)| Shaped {
            name: n,
            dtype: a.data.dtype(),
            shape: a.shape,
        })
        .collect()
}

/// A program compiled by the JIT, called on borrowed arrays.
pub struct JitLoss {
    program: Program,
    jit: Jit,
}

fn misuse(message: String, help: &str) -> RunError {
    RunError {
        code: "L6114",
        message,
        help: Some(help.to_string()),
    }
}

impl JitLoss {
    pub fn new(program: Program) -> Result<JitLoss, JitError> {
        let jit = Jit::new(&program.opt)?;
        Ok(JitLoss { program, jit })
    }

    /// Like `new`, bypassing the process's compile cache (to measure what a
    /// first compilation costs).
    pub fn new_uncached(program: Program) -> Result<JitLoss, JitError> {
        let jit = Jit::new_uncached(&program.opt)?;
        Ok(JitLoss { program, jit })
    }

    /// Splits the batch loops across `n` threads (the same bits for a given `n`).
    pub fn with_threads(mut self, n: usize) -> JitLoss {
        self.jit = self.jit.with_threads(n);
        self
    }

    pub fn program(&self) -> &Program {
        &self.program
    }

    /// The state before the first call, for these params and dims.
    pub fn init_state(
        &self,
        params: &[(String, Scalar)],
        dims: &BTreeMap<String, i64>,
    ) -> Result<Vec<Tensor>, RunError> {
        let p = self.program.bind_params(params)?;
        self.program.init_state(&p, dims)
    }

    /// One call: validates every array against the signature, runs the
    /// kernels and writes gradients and new state into `outs`.
    pub fn call(&self, args: &Args, outs: &mut Outs) -> Result<Called, RunError> {
        let p = &self.program;
        let g = &p.opt;
        let dims = p.bind_dims(&shaped(&args.inputs), &shaped(&args.state), &args.dims)?;
        let params = p.bind_params(&args.params)?;
        let need_init = g
            .states
            .iter()
            .any(|d| !args.state.iter().any(|(n, _)| *n == d.name));
        let inits = if need_init {
            p.init_state(&params, &dims)?
        } else {
            vec![]
        };
        let mut state = Vec::with_capacity(g.states.len());
        for (k, decl) in g.states.iter().enumerate() {
            let ext = match args.state.iter().find(|(n, _)| *n == decl.name) {
                Some((_, v)) if v.data.dtype() == decl.ty.dtype => Ext::Array(*v),
                Some((_, v)) => {
                    return Err(misuse(
                        format!(
                            "state `{}` is {}, but the loss declares {}",
                            decl.name,
                            v.data.dtype(),
                            decl.ty
                        ),
                        "pass the state in its declared dtype",
                    ));
                }
                None => Ext::Tensor(&inits[k]),
            };
            state.push(ext);
        }
        let inputs = g
            .inputs
            .iter()
            .map(|decl| {
                let (_, v) = args
                    .inputs
                    .iter()
                    .rev()
                    .find(|(n, _)| *n == decl.name)
                    .expect("bind_dims found every input");
                Ext::Array(*v)
            })
            .collect();
        let bound = Bound {
            inputs,
            params: params.iter().map(Ext::Tensor).collect(),
            state,
            dims: &dims,
        };
        let want_grads = !outs.grads.is_empty();
        if want_grads && outs.grads.len() != g.grads.len() {
            return Err(misuse(
                format!(
                    "{} gradient arrays were given; `{}` has {} diff inputs",
                    outs.grads.len(),
                    g.name,
                    g.grads.len()
                ),
                "give one array per diff input, in declaration order, or none",
            ));
        }
        if outs.state.len() != g.states.len() {
            return Err(misuse(
                format!(
                    "{} state arrays were given; `{}` has {} states",
                    outs.state.len(),
                    g.name,
                    g.states.len()
                ),
                "give one array per state, in declaration order, for the state after the call",
            ));
        }
        let mut roots: Vec<Handle> = vec![g.loss()];
        roots.extend(g.checks.iter().map(|c| c.cond));
        roots.extend(g.reports.iter().map(|(_, h)| *h));
        let n_tensors = roots.len();
        let mut sinks: Vec<Sink> = roots.iter().map(|_| Sink::Tensor).collect();
        // A state without an update keeps its value: copied after the call.
        let mut updated = vec![false; g.states.len()];
        let mut state_outs: Vec<Option<&mut ArrayMut>> = outs.state.iter_mut().map(Some).collect();
        for u in &g.updates {
            if let Some(a) = state_outs[u.state].take() {
                roots.push(u.value);
                sinks.push(Sink::Array(a.reborrow()));
                updated[u.state] = true;
            }
        }
        for ((_, h), a) in g.grads.iter().zip(outs.grads.iter_mut()) {
            roots.push(*h);
            sinks.push(Sink::Array(a.reborrow()));
        }
        let vals = self.run(&bound, &roots, &mut sinks)?;
        drop(sinks);
        let mut it = vals
            .into_iter()
            .take(n_tensors)
            .map(|t| t.expect("a tensor sink"));
        let loss_t = it.next().expect("the loss");
        for c in &g.checks {
            let v = it.next().expect("a check");
            if v.scalar_f64() != Some(1.0) {
                return Err(p.check_failed(c));
            }
        }
        let reports = g
            .reports
            .iter()
            .map(|(n, _)| (n.clone(), it.next().expect("a report")))
            .collect();
        for (k, out) in outs.state.iter_mut().enumerate() {
            if updated[k] {
                continue;
            }
            let ok = match (&bound.state[k], out) {
                (Ext::Array(v), out) => out.copy_from(&v.data),
                (Ext::Tensor(t), out) => out.copy_from_tensor(t),
            };
            if !ok {
                return Err(misuse(
                    format!(
                        "the array for the new state `{}` does not match its {}",
                        g.states[k].name, g.states[k].ty
                    ),
                    "give an array of the state's dtype and number of elements",
                ));
            }
        }
        Ok(Called {
            loss: loss_t.scalar_f64().unwrap_or(f64::NAN),
            reports,
        })
    }

    fn run(
        &self,
        b: &Bound,
        roots: &[Handle],
        sinks: &mut [Sink],
    ) -> Result<Vec<Option<Tensor>>, RunError> {
        let c = self
            .jit
            .compiled(roots)
            .map_err(|e| misuse(e.to_string(), "this is a bug in losslang"))?;
        let k = Kernels {
            schedule: &c.schedule,
            fns: c.fns(),
            parallel: c.parallel(),
        };
        run_bound(
            &self.program.opt,
            &k,
            b,
            roots,
            sinks,
            self.jit.arena(),
            self.jit.threads(),
        )
        .map_err(|e| self.program.node_error(e))
    }
}
