//! The compiler's front door: `compile` checks a source, lowers, derives
//! gradients and optimises; `Program::run` binds concrete data to the
//! signature (naming the input, axis and value of every mismatch) and
//! evaluates with the reference interpreter.

use crate::autodiff::differentiate;
use crate::diag::Diagnostic;
use crate::dim::Dim;
use crate::ir::eval::{Env, NodeError, eval};
use crate::ir::graph::Check;
use crate::ir::verify::verify;
use crate::ir::{Graph, Handle};
use crate::kernels::EvalError;
use crate::ops::{Op, Scalar};
use crate::sema::{Binding, Loader, Options, Source, check_program};
use crate::value::{DType, Data, Tensor};
use std::collections::BTreeMap;
use std::fmt;

#[derive(Clone, Debug, Default)]
pub struct CompileOptions {
    /// Which `loss` item (default: the one named like the file, else the only one).
    pub loss: Option<String>,
    /// Turn off the stability rewrites.
    pub no_rewrite: bool,
}

/// A checked, differentiated and optimised program.
pub struct Program {
    pub sources: Vec<Source>,
    /// After checking and lowering.
    pub ir: Graph,
    /// With the gradient graph appended.
    pub grad: Graph,
    /// Optimised (what backends consume).
    pub opt: Graph,
    pub bindings: Vec<Binding>,
    /// Warnings and notes (errors stop compilation).
    pub diags: Vec<Diagnostic>,
}

/// Compilation failed: the diagnostics (at least one error) and the sources they point into.
pub struct Failed {
    pub sources: Vec<Source>,
    pub diags: Vec<Diagnostic>,
}

pub fn compile(
    main: Source,
    loader: &dyn Loader,
    opts: &CompileOptions,
) -> Result<Program, Failed> {
    let mut sources = vec![main];
    let checked = check_program(
        &mut sources,
        opts.loss.as_deref(),
        loader,
        Options {
            rewrite: !opts.no_rewrite,
        },
    );
    if checked.diags.iter().any(|d| d.is_error()) || checked.graph.loss.is_none() {
        let mut diags = checked.diags;
        if !diags.iter().any(|d| d.is_error()) {
            diags.push(
                Diagnostic::error(
                    "L3010",
                    0,
                    losslang_grammar::Span::new(0, 0),
                    "the loss has no value",
                )
                .help("end the loss body with its value"),
            );
        }
        return Err(Failed { sources, diags });
    }
    let internal = |stage: &str, e: String, sources: &[Source]| Failed {
        sources: sources.to_vec(),
        diags: vec![
            Diagnostic::error(
                "L5001",
                0,
                losslang_grammar::Span::new(0, 0),
                format!("internal compiler error after {stage}: {e}"),
            )
            .help("this is a bug in losslang; please report it with the .loss file"),
        ],
    };
    // `ir` is the graph as checked (bindings point into it); later stages drop dead nodes.
    let ir = checked.graph;
    verify(&ir).map_err(|e| internal("lowering", e, &sources))?;
    let mut grad = crate::opt::dce(&ir);
    differentiate(&mut grad);
    verify(&grad).map_err(|e| internal("autodiff", e, &sources))?;
    let opt = crate::opt::optimize(&grad).map_err(|e| internal("optimisation", e, &sources))?;
    Ok(Program {
        sources,
        ir,
        grad,
        opt,
        bindings: checked.bindings,
        diags: checked.diags,
    })
}

/// A run-time failure: the data does not fit the program, or an index is out of range.
#[derive(Clone, Debug, PartialEq)]
pub struct RunError {
    pub code: &'static str,
    pub message: String,
    pub help: Option<String>,
}

impl RunError {
    fn new(code: &'static str, message: impl Into<String>, help: impl Into<String>) -> Self {
        RunError {
            code,
            message: message.into(),
            help: Some(help.into()),
        }
    }
}

impl fmt::Display for RunError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for RunError {}

impl miette::Diagnostic for RunError {
    fn code<'a>(&'a self) -> Option<Box<dyn fmt::Display + 'a>> {
        Some(Box::new(self.code))
    }
    fn help<'a>(&'a self) -> Option<Box<dyn fmt::Display + 'a>> {
        self.help
            .as_ref()
            .map(|h| Box::new(h) as Box<dyn fmt::Display>)
    }
}

/// Results of one call.
#[derive(Clone, Debug)]
pub struct Outputs {
    pub loss: f64,
    /// Gradient of each `diff` input, in declaration order.
    pub grads: Vec<(String, Tensor)>,
    pub reports: Vec<(String, Tensor)>,
    /// The state after the call, in declaration order.
    pub state: Vec<(String, Tensor)>,
}

/// The dtype and shape of one array bound by name (an input or a state).
#[derive(Clone, Copy, Debug)]
pub struct Shaped<'a> {
    pub name: &'a str,
    pub dtype: DType,
    pub shape: &'a [usize],
}

fn shaped(v: &[(String, Tensor)]) -> Vec<Shaped<'_>> {
    v.iter()
        .map(|(n, t)| Shaped {
            name: n,
            dtype: t.dtype,
            shape: &t.shape,
        })
        .collect()
}

/// What a run is given. Missing params take their defaults; missing state its initial value.
#[derive(Clone, Debug, Default)]
pub struct Call {
    pub inputs: Vec<(String, Tensor)>,
    pub params: Vec<(String, Scalar)>,
    pub state: Vec<(String, Tensor)>,
    pub dims: BTreeMap<String, i64>,
    pub grads: bool,
    pub check_finite: bool,
}

fn shape_txt(s: &[usize]) -> String {
    format!(
        "[{}]",
        s.iter()
            .map(|d| d.to_string())
            .collect::<Vec<_>>()
            .join(", ")
    )
}

impl Program {
    pub fn graph(&self) -> &Graph {
        &self.opt
    }

    /// Resolves params against the signature (defaults for the missing ones).
    pub fn bind_params(&self, given: &[(String, Scalar)]) -> Result<Vec<Tensor>, RunError> {
        let g = &self.opt;
        for (n, _) in given {
            if g.param_index(n).is_none() {
                let have: Vec<&str> = g.params.iter().map(|p| p.name.as_str()).collect();
                return Err(RunError::new(
                    "L6101",
                    format!("unknown param `{n}`"),
                    if have.is_empty() {
                        format!("`{}` has no params", g.name)
                    } else {
                        format!("the params of `{}` are: {}", g.name, have.join(", "))
                    },
                ));
            }
        }
        g.params
            .iter()
            .map(|p| {
                let v = given
                    .iter()
                    .rev()
                    .find(|(n, _)| n == &p.name)
                    .map(|(_, v)| *v)
                    .unwrap_or(p.default);
                if let Some(d) = &p.domain
                    && !d.contains(v.as_f64())
                {
                    return Err(RunError::new(
                        "L6115",
                        format!(
                            "param `{}` = {} is outside its domain {d}",
                            p.name,
                            v.text()
                        ),
                        format!("give `{}` a value in {d}", p.name),
                    ));
                }
                let t = match (p.dtype, v) {
                    (DType::I64, Scalar::I(i)) => Tensor::from_i64(vec![], vec![i]),
                    (DType::I64, Scalar::F(f)) if f.fract() == 0.0 && f.abs() < 9.0e15 => {
                        Tensor::from_i64(vec![], vec![f as i64])
                    }
                    (DType::Bool, Scalar::B(b)) => Tensor::from_bool(vec![], vec![b]),
                    (DType::Bool, Scalar::I(i)) if i == 0 || i == 1 => {
                        Tensor::from_bool(vec![], vec![i == 1])
                    }
                    (d @ (DType::F32 | DType::F64), Scalar::F(f)) => {
                        Tensor::scalar_f(d, round_to(d, f))
                    }
                    (d @ (DType::F32 | DType::F64), Scalar::I(i)) => {
                        Tensor::scalar_f(d, round_to(d, i as f64))
                    }
                    (d, v) => {
                        return Err(RunError::new(
                            "L6102",
                            format!(
                                "param `{}` is {d}, but the value given is `{}`",
                                p.name,
                                v.text()
                            ),
                            match d {
                                DType::I64 => "give an integer",
                                DType::Bool => "give true or false",
                                _ => "give a number",
                            },
                        ));
                    }
                };
                Ok(t)
            })
            .collect()
    }

    /// Binds inputs, dims and state to the signature; every mismatch names the input (or
    /// state key), the axis and the sizes.
    pub fn bind(&self, call: &Call) -> Result<Env, RunError> {
        let g = &self.opt;
        let dims = self.bind_dims(&shaped(&call.inputs), &shaped(&call.state), &call.dims)?;
        let mut inputs = Vec::with_capacity(g.inputs.len());
        for decl in &g.inputs {
            let (_, t) = call
                .inputs
                .iter()
                .rev()
                .find(|(n, _)| n == &decl.name)
                .expect("bind_dims found every input");
            if call.check_finite {
                check_finite(t, &format!("input `{}`", decl.name))?;
            }
            inputs.push(t.clone());
        }
        let params = self.bind_params(&call.params)?;
        let mut env = Env {
            inputs,
            params,
            state: vec![],
            dims,
        };
        let init_vals = self.init_state(&env.params, &env.dims)?;
        for (decl, init) in g.states.iter().zip(init_vals) {
            let v = match call.state.iter().find(|(n, _)| n == &decl.name) {
                Some((_, t)) => convert_state(t, decl.ty.dtype, &decl.name)?,
                None => init,
            };
            env.state.push(v);
        }
        Ok(env)
    }

    /// The initial value of every state, for these params (as `bind_params`
    /// resolves them) and dims. Initial values use only params and constants.
    pub fn init_state(
        &self,
        params: &[Tensor],
        dims: &BTreeMap<String, i64>,
    ) -> Result<Vec<Tensor>, RunError> {
        let g = &self.opt;
        let env = Env {
            inputs: vec![],
            params: params.to_vec(),
            state: vec![],
            dims: dims.clone(),
        };
        let inits: Vec<Handle> = g.states.iter().map(|s| s.init).collect();
        eval(g, &env, &inits).map_err(|e| self.node_error(e))
    }

    /// Checks the dtypes and ranks of the arrays a call binds by name against
    /// the signature and resolves every dim from their shapes (and `given`).
    /// Every mismatch names the input (or state key), the axis and the sizes.
    pub fn bind_dims(
        &self,
        inputs: &[Shaped],
        state: &[Shaped],
        given: &BTreeMap<String, i64>,
    ) -> Result<BTreeMap<String, i64>, RunError> {
        let g = &self.opt;
        let mut dims: BTreeMap<String, i64> = given.clone();
        let mut bound_by: BTreeMap<String, String> = dims
            .keys()
            .map(|k| (k.clone(), "--dims".to_string()))
            .collect();
        for Shaped { name: n, .. } in inputs {
            if g.input_index(n).is_none() {
                let have: Vec<&str> = g.inputs.iter().map(|i| i.name.as_str()).collect();
                return Err(RunError::new(
                    "L6103",
                    format!("unknown input `{n}`"),
                    format!("the inputs of `{}` are: {}", g.name, have.join(", ")),
                ));
            }
        }
        for decl in &g.inputs {
            let Some(t) = inputs.iter().rev().find(|t| t.name == decl.name) else {
                return Err(RunError::new(
                    "L6104",
                    format!("missing input `{}` ({})", decl.name, decl.ty),
                    format!(
                        "pass --input {0}=FILE.npy, or put {0}.npy in the --inputs folder",
                        decl.name
                    ),
                ));
            };
            if t.dtype != decl.ty.dtype {
                let hint = match decl.ty.dtype {
                    DType::F32 => "np.float32",
                    DType::F64 => "np.float64",
                    DType::I64 => "np.int64",
                    DType::Bool => "bool",
                };
                return Err(RunError::new(
                    "L6105",
                    format!(
                        "input `{}` is {}, but the loss declares {}",
                        decl.name, t.dtype, decl.ty
                    ),
                    format!("convert it, e.g. x.astype({hint}) in NumPy"),
                ));
            }
            if t.shape.len() != decl.ty.shape.len() {
                return Err(RunError::new(
                    "L6106",
                    format!(
                        "input `{}` has rank {} (shape {}), but the loss declares {}",
                        decl.name,
                        t.shape.len(),
                        shape_txt(t.shape),
                        decl.ty
                    ),
                    "reshape the array to the declared rank",
                ));
            }
            for (ax, (d, &n)) in decl.ty.shape.iter().zip(t.shape).enumerate() {
                bind_dim(
                    d,
                    n as i64,
                    &decl.name,
                    ax,
                    &mut dims,
                    &mut bound_by,
                    "input",
                )?;
            }
        }
        for Shaped { name: n, .. } in state {
            if g.state_index(n).is_none() {
                let have: Vec<&str> = g.states.iter().map(|s| s.name.as_str()).collect();
                return Err(RunError::new(
                    "L6107",
                    format!("the state file has an unknown key `{n}`"),
                    if have.is_empty() {
                        format!("`{}` has no state", g.name)
                    } else {
                        format!("the state of `{}` is: {}", g.name, have.join(", "))
                    },
                ));
            }
        }
        for decl in &g.states {
            if let Some(t) = state.iter().find(|t| t.name == decl.name) {
                if t.shape.len() != decl.ty.shape.len() {
                    return Err(RunError::new(
                        "L6108",
                        format!(
                            "state `{}` has shape {}, but the loss declares {}",
                            decl.name,
                            shape_txt(t.shape),
                            decl.ty
                        ),
                        "fix the state file, or delete the key to start from the initial value",
                    ));
                }
                for (ax, (d, &n)) in decl.ty.shape.iter().zip(t.shape).enumerate() {
                    bind_dim(
                        d,
                        n as i64,
                        &decl.name,
                        ax,
                        &mut dims,
                        &mut bound_by,
                        "state",
                    )?;
                }
            }
        }
        for decl in g
            .inputs
            .iter()
            .map(|i| &i.ty)
            .chain(g.states.iter().map(|s| &s.ty))
        {
            for d in &decl.shape {
                let mut syms = vec![];
                d.symbols(&mut syms);
                for s in syms {
                    if !dims.contains_key(&s) {
                        return Err(RunError::new(
                            "L6109",
                            format!("the size `{s}` is not bound by any input or state"),
                            format!(
                                "pass it with --dims {s}=..., or give the state in a --state file"
                            ),
                        ));
                    }
                }
            }
        }
        // A state table's size comes from `--dims` or a state file, not from data the
        // caller holds: refuse one that cannot be allocated instead of aborting in `init`.
        for decl in &g.states {
            let mut numel: Option<usize> = Some(1);
            for d in &decl.ty.shape {
                let v = d.eval(&|s: &str| dims.get(s).copied());
                numel = match v {
                    Some(v) if v >= 0 => numel.and_then(|n| n.checked_mul(v as usize)),
                    _ => None,
                };
            }
            // The interpreter holds floats as f64; a failed trial reservation (freed at
            // once) means the real one would abort the process.
            let fits = numel.is_some_and(|n| {
                n <= MAX_STATE_ELEMS && Vec::<f64>::new().try_reserve_exact(n).is_ok()
            });
            if !fits {
                let sizes: Vec<String> = {
                    let mut syms = vec![];
                    for d in &decl.ty.shape {
                        d.symbols(&mut syms);
                    }
                    syms.dedup();
                    syms.iter()
                        .map(|s| {
                            let by = bound_by.get(s).cloned().unwrap_or_default();
                            format!(
                                "{s} = {} (bound by {by})",
                                dims.get(s).copied().unwrap_or(0)
                            )
                        })
                        .collect()
                };
                return Err(RunError::new(
                    "L6113",
                    format!(
                        "state `{}` ({}) would have {} elements with {}: more than can be allocated (limit {MAX_STATE_ELEMS})",
                        decl.name,
                        decl.ty,
                        numel.map_or_else(|| "more than 2^64".to_string(), |n| n.to_string()),
                        sizes.join(", ")
                    ),
                    "check the --dims (a state table has one row per training example)",
                ));
            }
        }
        Ok(dims)
    }

    /// Evaluates one call with the reference interpreter.
    pub fn run(&self, call: &Call) -> Result<Outputs, RunError> {
        let env = self.bind(call)?;
        self.run_env(&env, call.grads, call.check_finite)
    }

    pub fn run_env(&self, env: &Env, grads: bool, check: bool) -> Result<Outputs, RunError> {
        self.run_with(&crate::backend::Interp, env, grads, check)
    }

    /// One call on a backend: evaluates the results and assembles loss, reports,
    /// new state and gradients (rounded to their declared dtypes).
    pub fn run_with(
        &self,
        exec: &dyn crate::backend::Executor,
        env: &Env,
        grads: bool,
        check: bool,
    ) -> Result<Outputs, RunError> {
        let g = &self.opt;
        let mut roots = vec![g.loss()];
        roots.extend(g.checks.iter().map(|c| c.cond));
        roots.extend(g.reports.iter().map(|(_, h)| *h));
        roots.extend(g.updates.iter().map(|u| u.value));
        if grads {
            roots.extend(g.grads.iter().map(|(_, h)| *h));
        }
        let vals = exec.eval(g, env, &roots).map_err(|e| self.node_error(e))?;
        if vals.len() != roots.len() {
            return Err(RunError::new(
                "L5003",
                format!(
                    "internal: the `{}` backend returned {} values for {} results",
                    exec.name(),
                    vals.len(),
                    roots.len()
                ),
                "this is a bug in losslang",
            ));
        }
        let mut it = vals.into_iter();
        let loss_t = it.next().expect("loss");
        for c in &g.checks {
            let v = it.next().expect("check");
            if v.scalar_f64() != Some(1.0) {
                return Err(self.check_failed(c));
            }
        }
        let reports: Vec<(String, Tensor)> = g
            .reports
            .iter()
            .map(|(n, _)| (n.clone(), it.next().expect("report")))
            .collect();
        let mut state: Vec<(String, Tensor)> = g
            .states
            .iter()
            .zip(&env.state)
            .map(|(s, v)| (s.name.clone(), v.clone()))
            .collect();
        for u in &g.updates {
            state[u.state].1 = it.next().expect("update");
        }
        let grads: Vec<(String, Tensor)> = if grads {
            g.grads
                .iter()
                .map(|(k, _)| (g.inputs[*k].name.clone(), it.next().expect("grad")))
                .collect()
        } else {
            vec![]
        };
        // Results take their declared dtype (the loss stays f64: the oracle's full precision).
        let reports: Vec<(String, Tensor)> = reports
            .into_iter()
            .map(|(n, t)| (n, to_declared(t)))
            .collect();
        let state: Vec<(String, Tensor)> = state
            .into_iter()
            .map(|(n, t)| (n, to_declared(t)))
            .collect();
        let grads: Vec<(String, Tensor)> = grads
            .into_iter()
            .map(|(n, t)| (n, to_declared(t)))
            .collect();
        let loss = loss_t.scalar_f64().unwrap_or(f64::NAN);
        if check {
            if !loss.is_finite() {
                return Err(RunError::new(
                    "L6111",
                    format!("the loss is {loss}"),
                    "inspect the inputs for extreme values, and the params for values at the edge of their range (a division by beta = 0): a param domain (`in (0, inf)`) rejects them before the run; run without --check-finite to see every output",
                ));
            }
            for (n, t) in &grads {
                check_finite(t, &format!("the gradient of `{n}`"))?;
            }
            for (n, t) in &state {
                check_finite(t, &format!("the new state `{n}`"))?;
            }
        }
        Ok(Outputs {
            loss,
            grads,
            reports,
            state,
        })
    }

    /// The error for an `assert` the data does not satisfy.
    pub fn check_failed(&self, c: &Check) -> RunError {
        let (line, _) = self.line_of(c.span);
        RunError::new(
            "L6110",
            format!("{} (line {line})", c.message),
            "the data does not satisfy an `assert` of the program",
        )
    }

    fn line_of(&self, span: losslang_grammar::Span) -> (usize, usize) {
        let text = &self.sources[0].text;
        let upto = &text[..span.start.min(text.len())];
        let line = upto.matches('\n').count() + 1;
        let col = upto.len() - upto.rfind('\n').map_or(0, |p| p + 1) + 1;
        (line, col)
    }

    /// Turns a kernel failure into a message that names the data at fault.
    pub fn node_error(&self, e: NodeError) -> RunError {
        let g = &self.opt;
        let node = g.node(e.node);
        let at = self.error_site(e.node);
        match e.error {
            EvalError::Index {
                value,
                size,
                position,
            } => {
                let idx_arg = node.op.index_args().first().map(|&i| node.args[i]);
                let axis_dim = match &node.op {
                    Op::TakeAlong(a)
                    | Op::IndexSelect(a)
                    | Op::ScatterSet(a)
                    | Op::ScatterAddAlong(a)
                    | Op::IndexAdd(a) => Some(g.ty(node.args[0]).shape[*a].clone()),
                    Op::OneHot(d) => Some(d.clone()),
                    _ => None,
                };
                let dim_txt = match axis_dim {
                    Some(d) if d.as_const().is_none() => format!("{d}={size}"),
                    _ => format!("size {size}"),
                };
                let who = idx_arg.and_then(|h| self.trace_input(h, &position));
                let pos = match who {
                    Some((name, p)) => format!(
                        "{name}[{}]",
                        p.iter()
                            .map(|x| x.to_string())
                            .collect::<Vec<_>>()
                            .join(", ")
                    ),
                    None => format!(
                        "index position [{}]",
                        position
                            .iter()
                            .map(|x| x.to_string())
                            .collect::<Vec<_>>()
                            .join(", ")
                    ),
                };
                RunError::new(
                    "L6201",
                    format!("index {value} out of range for {dim_txt} at {pos} {at}"),
                    "indices must lie in 0..size; mask invalid ones first, e.g. take(x, where(valid, target, 0), axis=1)",
                )
            }
            EvalError::Duplicate { value, position } => {
                let idx_arg = node.op.index_args().first().map(|&i| node.args[i]);
                let who = idx_arg.and_then(|h| self.trace_input(h, &position));
                let pos = match who {
                    Some((name, p)) => format!(
                        "{name}[{}]",
                        p.iter()
                            .map(|x| x.to_string())
                            .collect::<Vec<_>>()
                            .join(", ")
                    ),
                    None => format!("position {position:?}"),
                };
                RunError::new(
                    "L6202",
                    format!("id {value} appears twice (again at {pos}) {at}"),
                    "ids of a state-table update must be unique within a call",
                )
            }
            EvalError::Shape(m) => RunError::new(
                "L6203",
                format!("{m} {at}"),
                "the data's sizes do not fit the program; check the --dims and the inputs' shapes",
            ),
            EvalError::Other(m) => RunError::new("L6204", format!("{m} {at}"), "check the inputs"),
        }
    }

    /// The `in `snippet` (line L, column C)` part of a data error at `node`.
    pub fn error_site(&self, node: Handle) -> String {
        let span = self.opt.node(node).span;
        let (line, col) = self.line_of(span);
        let snippet: String = self.sources[0]
            .text
            .get(span.start..span.end)
            .unwrap_or("")
            .chars()
            .take(60)
            .collect();
        format!("in `{snippet}` (line {line}, column {col})")
    }

    /// The input an index value is read from (through reshapes, casts, `where` and
    /// arithmetic), the one a data error names.
    pub fn index_source(&self, h: Handle) -> Option<usize> {
        let g = &self.opt;
        let mut cur = h;
        for _ in 0..64 {
            let n = g.node(cur);
            match &n.op {
                Op::Input(k) => return Some(*k),
                Op::Reshape(_) | Op::Cast(_) | Op::StopGrad | Op::BroadcastTo(_) => cur = n.args[0],
                Op::Where => {
                    let a = n.args[1];
                    let b = n.args[2];
                    cur = if reaches_input(g, a) { a } else { b };
                }
                Op::Binary(_) => {
                    let a = n.args[0];
                    cur = if reaches_input(g, a) { a } else { n.args[1] };
                }
                _ => return None,
            }
        }
        None
    }

    /// Follows an index value back to the input it was read from, mapping the position.
    fn trace_input(&self, h: Handle, position: &[usize]) -> Option<(String, Vec<usize>)> {
        let g = &self.opt;
        let decl = &g.inputs[self.index_source(h)?];
        // Same element count up to unit axes: the flat position carries over.
        let idx_shape: Vec<Dim> = g.ty(h).shape.clone();
        let flat_ok = idx_shape.iter().filter(|d| !d.is_one()).count()
            == decl.ty.shape.iter().filter(|d| !d.is_one()).count();
        let p = if flat_ok {
            let mut it = position
                .iter()
                .zip(&idx_shape)
                .filter(|(_, d)| !d.is_one())
                .map(|(p, _)| *p);
            decl.ty
                .shape
                .iter()
                .map(|d| {
                    if d.is_one() {
                        0
                    } else {
                        it.next().unwrap_or(0)
                    }
                })
                .collect()
        } else {
            position.to_vec()
        };
        Some((decl.name.clone(), p))
    }
}

/// Most elements of one state value (2^32: 32 GiB as the interpreter's f64). State sizes
/// come from `--dims` or a state file, so a typo must not become a terabyte allocation.
pub const MAX_STATE_ELEMS: usize = 1 << 32;

fn reaches_input(g: &Graph, h: Handle) -> bool {
    let mut st = vec![h];
    let mut n = 0;
    while let Some(x) = st.pop() {
        n += 1;
        if n > 256 {
            return false;
        }
        let node = g.node(x);
        if matches!(node.op, Op::Input(_)) {
            return true;
        }
        st.extend(node.args.iter().copied());
    }
    false
}

/// Rounds the f64 values of an f32 tensor to f32.
fn to_declared(mut t: Tensor) -> Tensor {
    if t.dtype == DType::F32
        && let Data::F(v) = &mut t.data
    {
        for x in v.iter_mut() {
            *x = f64::from(*x as f32);
        }
    }
    t
}

fn round_to(d: DType, v: f64) -> f64 {
    if d == DType::F32 {
        f64::from(v as f32)
    } else {
        v
    }
}

fn bind_dim(
    d: &Dim,
    n: i64,
    who: &str,
    axis: usize,
    dims: &mut BTreeMap<String, i64>,
    bound_by: &mut BTreeMap<String, String>,
    kind: &str,
) -> Result<(), RunError> {
    if let Some(c) = d.as_const() {
        if c != n {
            return Err(RunError::new(
                "L6106",
                format!("{kind} `{who}` axis {axis} has size {n}, but the loss declares {c}"),
                "give an array of the declared size",
            ));
        }
        return Ok(());
    }
    let mut syms = vec![];
    d.symbols(&mut syms);
    if let (1, Some(name)) = (
        syms.len(),
        d.terms.first().and_then(|(a, k)| match a {
            crate::dim::Atom::Sym(s) if *k == 1 && d.constant == 0 => Some(s.clone()),
            _ => None,
        }),
    ) {
        match dims.get(&name) {
            Some(&have) if have != n => {
                let src = bound_by.get(&name).cloned().unwrap_or_default();
                return Err(RunError::new(
                    "L6106",
                    format!(
                        "{kind} `{who}` axis {axis} has size {n}, but {name} = {have} (bound by {src})"
                    ),
                    format!("every use of {name} must have the same size"),
                ));
            }
            Some(_) => {}
            None => {
                dims.insert(name.clone(), n);
                bound_by.insert(name, format!("`{who}` axis {axis}"));
            }
        }
    }
    Ok(())
}

fn check_finite(t: &Tensor, what: &str) -> Result<(), RunError> {
    if let Data::F(v) = &t.data
        && let Some(i) = v.iter().position(|x| !x.is_finite())
    {
        let pos = crate::kernels::unravel(i, &t.shape);
        return Err(RunError::new(
            "L6112",
            format!(
                "{what} is {} at [{}]",
                v[i],
                pos.iter()
                    .map(|x| x.to_string())
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
            if what.starts_with("input") {
                "--check-finite rejects NaN and Inf; clean the data or drop the flag"
            } else {
                "the inputs are finite, so the program computed it: look for a division, log or sqrt at the edge of a param's range (beta = 0) and declare the param's domain (`in (0, inf)`) or guard the term with where; `lossc emit FILE --stage opt` shows the gradient graph"
            },
        ));
    }
    Ok(())
}

/// Converts a state value read from JSON (floats) to the declared dtype.
fn convert_state(t: &Tensor, d: DType, name: &str) -> Result<Tensor, RunError> {
    let v = t.to_f64_vec();
    let bad = |i: usize, what: &str| {
        RunError::new(
            "L6108",
            format!(
                "state `{name}` is {d}, but entry [{}] is {} ({what})",
                crate::kernels::unravel(i, &t.shape)
                    .iter()
                    .map(|x| x.to_string())
                    .collect::<Vec<_>>()
                    .join(", "),
                v[i]
            ),
            "fix the state file",
        )
    };
    Ok(match d {
        DType::F32 | DType::F64 => Tensor::from_f64(
            d,
            t.shape.clone(),
            v.iter().map(|&x| round_to(d, x)).collect(),
        ),
        DType::I64 => {
            if let Some(i) = v.iter().position(|x| x.fract() != 0.0 || !x.is_finite()) {
                return Err(bad(i, "not an integer"));
            }
            match &t.data {
                Data::I(iv) => Tensor::from_i64(t.shape.clone(), iv.clone()),
                _ => Tensor::from_i64(t.shape.clone(), v.iter().map(|&x| x as i64).collect()),
            }
        }
        DType::Bool => {
            if let Some(i) = v.iter().position(|x| *x != 0.0 && *x != 1.0) {
                return Err(bad(i, "not a bool"));
            }
            Tensor::from_bool(t.shape.clone(), v.iter().map(|&x| x != 0.0).collect())
        }
    })
}
