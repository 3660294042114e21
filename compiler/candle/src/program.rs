//! The public faces of the backend: `CandleExec` (the compiler's gradient
//! graph as candle calls, behind `Executor`) and `CandleProgram` (the forward
//! graph on the caller's tracked tensors, for candle's `backward()`).

use crate::exec::{Frame, candle_dtype, from_candle, to_candle};
use crate::lower::{LowerError, grad_rule, lower};
use crate::plan::{GradRule, Plan, Target, print};
use crate::run::{Tape, run_graph};
use crate::vjp::{VjpRule, vjp_rule};
use candle_core::{DType as CDType, Device, Tensor};
use losslang_compiler::backend::Executor;
use losslang_compiler::dim::Dim;
use losslang_compiler::ir::eval::{Env, NodeError};
use losslang_compiler::ir::{Graph, Handle};
use losslang_compiler::kernels::EvalError;
use losslang_compiler::ops::{Op, Scalar};
use losslang_compiler::program::{Program, RunError};
use losslang_compiler::value;
use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};

/// A failure of the candle backend.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The data does not fit the program, or an index is out of range: the
    /// interpreter's diagnostics.
    #[error("{0}")]
    Run(#[from] RunError),
    /// This target cannot run a node (the generator on CUDA).
    #[error("the candle backend cannot run this program on this device: {0}")]
    Lower(#[from] LowerError),
    #[error("candle: {0}")]
    Candle(#[from] candle_core::Error),
    /// A device that is not built or not present.
    #[error("{0}")]
    Device(String),
}

impl From<Error> for candle_core::Error {
    fn from(e: Error) -> Self {
        candle_core::Error::Msg(e.to_string())
    }
}

/// `cpu`, `cuda` or `cuda:i`.
pub fn device(spec: &str) -> Result<Device, Error> {
    let cuda_index = match spec {
        "cpu" => return Ok(Device::Cpu),
        "cuda" => Some(0),
        s => s
            .strip_prefix("cuda:")
            .and_then(|i| i.parse::<usize>().ok()),
    };
    let Some(i) = cuda_index else {
        return Err(Error::Device(format!(
            "unknown device `{spec}`: devices are cpu, cuda and cuda:N"
        )));
    };
    if !cfg!(feature = "cuda") {
        return Err(Error::Device(format!(
            "`{spec}` needs a build with CUDA: this build of the candle backend has only the cpu \
             device (build with `--features cuda`, see docs/candle.md)"
        )));
    }
    Device::new_cuda(i).map_err(|e| {
        Error::Device(format!(
            "cannot open `{spec}`: {}",
            crate::exec::candle_message(&e)
        ))
    })
}

/// The lowering target of a device: the CPU custom kernels only on the CPU.
pub fn target_for(device: &Device) -> Target {
    if device.is_cpu() {
        Target::Cpu
    } else {
        Target::Portable
    }
}

fn node_of(g: &Graph, op: &Op, fallback: Handle) -> Handle {
    g.nodes
        .iter()
        .position(|n| &n.op == op)
        .map_or(fallback, |i| Handle(i as u32))
}

fn same_graph(a: &Graph, b: &Graph) -> bool {
    a.len() == b.len()
        && a.inputs.len() == b.inputs.len()
        && a.nodes
            .iter()
            .zip(&b.nodes)
            .all(|(x, y)| x.op == y.op && x.args == y.args && x.ty == y.ty)
}

/// The compiler's gradient graph as candle calls (gradient path a).
pub struct CandleExec {
    device: Device,
    target: Target,
    cache: Mutex<Option<(Graph, Arc<Plan>)>>,
}

impl CandleExec {
    /// An executor on `device`, with the CPU kernels on the CPU.
    pub fn new(device: Device) -> CandleExec {
        let target = target_for(&device);
        CandleExec::with_target(device, target)
    }

    /// An executor that lowers for `target` (`Portable` on the CPU runs the
    /// calls the CUDA device runs).
    pub fn with_target(device: Device, target: Target) -> CandleExec {
        CandleExec {
            device,
            target,
            cache: Mutex::new(None),
        }
    }

    /// An executor for `p`, lowered now so that a node this device cannot
    /// run is an error before any data.
    pub fn for_program(p: &Program, device: Device) -> Result<CandleExec, Error> {
        let e = CandleExec::new(device);
        e.plan_for(&p.opt)?;
        Ok(e)
    }

    pub fn device(&self) -> &Device {
        &self.device
    }

    fn plan_for(&self, g: &Graph) -> Result<Arc<Plan>, LowerError> {
        let mut c = self.cache.lock().expect("the plan cache is never poisoned");
        if let Some((cg, p)) = c.as_ref()
            && same_graph(cg, g)
        {
            return Ok(p.clone());
        }
        let p = Arc::new(lower(g, self.target)?);
        *c = Some((g.clone(), p.clone()));
        Ok(p)
    }
}

impl Executor for CandleExec {
    fn name(&self) -> &str {
        "candle"
    }

    fn eval(
        &self,
        g: &Graph,
        env: &Env,
        roots: &[Handle],
    ) -> Result<Vec<value::Tensor>, NodeError> {
        let first = roots.first().copied().unwrap_or(Handle(0));
        let plan = self.plan_for(g).map_err(|e| NodeError {
            node: e.node,
            error: EvalError::Other(e.message),
        })?;
        let put = |ts: &[value::Tensor], mk: fn(usize) -> Op| {
            ts.iter()
                .enumerate()
                .map(|(k, t)| {
                    to_candle(t, &self.device).map_err(|e| NodeError {
                        node: node_of(g, &mk(k), first),
                        error: EvalError::Other(format!(
                            "candle: {}",
                            crate::exec::candle_message(&e)
                        )),
                    })
                })
                .collect::<Result<Vec<Tensor>, NodeError>>()
        };
        let inputs = put(&env.inputs, Op::Input)?;
        let params = put(&env.params, Op::Param)?;
        let state = put(&env.state, Op::State)?;
        let mut frame = Frame::new(&plan, &self.device, &env.dims, &inputs, &params, &state);
        let vals = run_graph(g, &plan, &mut frame, roots, &[], None)?;
        roots
            .iter()
            .zip(vals)
            .map(|(h, t)| {
                from_candle(&t, g.ty(*h).dtype).map_err(|e| NodeError {
                    node: *h,
                    error: EvalError::Other(format!("candle: {}", crate::exec::candle_message(&e))),
                })
            })
            .collect()
    }
}

/// The state of a program on the device, by declaration order. An entry is
/// `None` until the first call initialises it from the program's initial
/// value (which may need the sizes the inputs bind).
#[derive(Clone, Debug, Default)]
pub struct CandleState {
    pub values: Vec<(String, Option<Tensor>)>,
}

impl CandleState {
    pub fn get(&self, name: &str) -> Option<&Tensor> {
        self.values
            .iter()
            .find(|(n, _)| n == name)
            .and_then(|(_, t)| t.as_ref())
    }

    /// Replaces a state value (e.g. restored from a checkpoint).
    pub fn set(&mut self, name: &str, t: Tensor) -> bool {
        match self.values.iter_mut().find(|(n, _)| n == name) {
            Some(e) => {
                e.1 = Some(t);
                true
            }
            None => false,
        }
    }
}

/// The results of one call on the tracked path.
#[derive(Clone, Debug)]
pub struct Forward {
    /// The scalar loss, on the tape of the caller's tracked inputs.
    pub loss: Tensor,
    pub reports: Vec<(String, Tensor)>,
}

impl Forward {
    pub fn report(&self, name: &str) -> Option<&Tensor> {
        self.reports.iter().find(|(n, _)| n == name).map(|(_, t)| t)
    }
}

/// A program on a candle device for training loops (gradient path b).
pub struct CandleProgram {
    program: Program,
    plan: Plan,
    rules: HashMap<Handle, Arc<VjpRule>>,
    device: Device,
    params: Vec<Tensor>,
}

fn run_error(code: &'static str, message: String, help: &str) -> Error {
    Error::Run(RunError {
        code,
        message,
        help: Some(help.into()),
    })
}

impl CandleProgram {
    /// Lowers the forward graph of `program` for `device`, with default params.
    pub fn compile(program: &Program, device: &Device) -> Result<CandleProgram, Error> {
        CandleProgram::with_params(program, device, &[])
    }

    /// Like `compile`, with params set by name (the others take their defaults).
    pub fn with_params(
        program: &Program,
        device: &Device,
        params: &[(String, Scalar)],
    ) -> Result<CandleProgram, Error> {
        CandleProgram::for_target(program, device, params, target_for(device))
    }

    /// Like `with_params`, lowered for `target` (`Portable` on the CPU runs
    /// the calls the CUDA device runs).
    pub fn for_target(
        program: &Program,
        device: &Device,
        params: &[(String, Scalar)],
        target: Target,
    ) -> Result<CandleProgram, Error> {
        let g = &program.opt;
        let plan = lower(g, target)?;
        let mut rules = HashMap::new();
        for np in &plan.nodes {
            if np.grad == GradRule::Vjp {
                rules.insert(np.node, Arc::new(vjp_rule(g, np.node, target)?));
            }
        }
        debug_assert!(plan.nodes.iter().all(|np| np.grad == grad_rule(g, np.node)));
        let params = program
            .bind_params(params)?
            .iter()
            .map(|t| to_candle(t, device))
            .collect::<candle_core::Result<Vec<Tensor>>>()?;
        let program = Program {
            sources: program.sources.clone(),
            ir: program.ir.clone(),
            grad: program.grad.clone(),
            opt: program.opt.clone(),
            bindings: program.bindings.clone(),
            diags: program.diags.clone(),
        };
        Ok(CandleProgram {
            program,
            plan,
            rules,
            device: device.clone(),
            params,
        })
    }

    pub fn device(&self) -> &Device {
        &self.device
    }

    pub fn program(&self) -> &Program {
        &self.program
    }

    pub fn plan(&self) -> &Plan {
        &self.plan
    }

    /// The plan's text form.
    pub fn text(&self) -> String {
        print(&self.program.opt, &self.plan)
    }

    /// Every state entry, not yet initialised.
    pub fn new_state(&self) -> CandleState {
        CandleState {
            values: self
                .program
                .opt
                .states
                .iter()
                .map(|s| (s.name.clone(), None))
                .collect(),
        }
    }

    /// One call: binds the named inputs (tracked or not), evaluates the loss,
    /// reports and checks, and replaces the state with its update. The loss
    /// stays on the tape of the tracked inputs.
    pub fn forward(
        &self,
        inputs: &[(&str, &Tensor)],
        state: &mut CandleState,
    ) -> Result<Forward, Error> {
        let g = &self.program.opt;
        let mut dims: BTreeMap<String, i64> = BTreeMap::new();
        for (n, _) in inputs {
            if g.input_index(n).is_none() {
                let have: Vec<&str> = g.inputs.iter().map(|i| i.name.as_str()).collect();
                return Err(run_error(
                    "L6103",
                    format!("unknown input `{n}`"),
                    &format!("the inputs of `{}` are: {}", g.name, have.join(", ")),
                ));
            }
        }
        let mut bound = Vec::with_capacity(g.inputs.len());
        for decl in &g.inputs {
            let Some((_, t)) = inputs.iter().rev().find(|(n, _)| *n == decl.name) else {
                return Err(run_error(
                    "L6104",
                    format!("missing input `{}` ({})", decl.name, decl.ty),
                    "pass every declared input by name",
                ));
            };
            if t.dtype() != candle_dtype(decl.ty.dtype) {
                return Err(run_error(
                    "L6105",
                    format!(
                        "input `{}` is {:?}, but the loss declares {} (candle {:?})",
                        decl.name,
                        t.dtype(),
                        decl.ty,
                        candle_dtype(decl.ty.dtype)
                    ),
                    "convert it with `to_dtype`",
                ));
            }
            if !t.device().same_device(&self.device) {
                return Err(run_error(
                    "L6105",
                    format!(
                        "input `{}` is on {:?}, but the program runs on {:?}",
                        decl.name,
                        t.device().location(),
                        self.device.location()
                    ),
                    "move it with `to_device`",
                ));
            }
            bind_dims(&decl.ty.shape, t.dims(), &decl.name, "input", &mut dims)?;
            bound.push((*t).clone());
        }
        if state.values.len() != g.states.len() {
            *state = self.new_state();
        }
        for (decl, (_, v)) in g.states.iter().zip(&state.values) {
            if let Some(t) = v {
                bind_dims(&decl.ty.shape, t.dims(), &decl.name, "state", &mut dims)?;
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
                if let Some(s) = syms.into_iter().find(|s| !dims.contains_key(s)) {
                    return Err(run_error(
                        "L6109",
                        format!("the size `{s}` is not bound by any input or state"),
                        "set the state before the first call",
                    ));
                }
            }
        }
        let dims = Arc::new(dims);
        let node_err = |e: NodeError| Error::Run(self.program.node_error(e));
        // Missing state takes its initial value first (inits read params and sizes only).
        let missing: Vec<usize> = (0..g.states.len())
            .filter(|&k| state.values[k].1.is_none())
            .collect();
        if !missing.is_empty() {
            let roots: Vec<Handle> = missing.iter().map(|&k| g.states[k].init).collect();
            let mut frame = Frame::new(&self.plan, &self.device, &dims, &bound, &self.params, &[]);
            let vals = run_graph(g, &self.plan, &mut frame, &roots, &[], None).map_err(node_err)?;
            for (k, v) in missing.into_iter().zip(vals) {
                let v = v.broadcast_as(v.dims())?.contiguous()?;
                state.values[k].1 = Some(v);
            }
        }
        let st: Vec<Tensor> = state
            .values
            .iter()
            .map(|(_, v)| v.clone().expect("initialised above"))
            .collect();
        let mut roots = vec![g.loss()];
        roots.extend(g.checks.iter().map(|c| c.cond));
        roots.extend(g.reports.iter().map(|(_, h)| *h));
        roots.extend(g.updates.iter().map(|u| u.value));
        let tape = Tape {
            rules: &self.rules,
            dims: dims.clone(),
        };
        let mut frame = Frame::new(&self.plan, &self.device, &dims, &bound, &self.params, &st);
        let vals =
            run_graph(g, &self.plan, &mut frame, &roots, &[], Some(&tape)).map_err(node_err)?;
        let mut it = vals.into_iter();
        let loss = it.next().expect("loss");
        for c in &g.checks {
            let v = it.next().expect("check");
            if v.to_dtype(CDType::U8)?.flatten_all()?.to_vec1::<u8>()? != [1] {
                let text = &self.program.sources[0].text;
                let line = text[..c.span.start.min(text.len())].matches('\n').count() + 1;
                return Err(run_error(
                    "L6110",
                    format!("{} (line {line})", c.message),
                    "the data does not satisfy an `assert` of the program",
                ));
            }
        }
        let reports: Vec<(String, Tensor)> = g
            .reports
            .iter()
            .map(|(n, _)| (n.clone(), it.next().expect("report")))
            .collect();
        for u in &g.updates {
            let v = it.next().expect("update").detach();
            state.values[u.state].1 = Some(v);
        }
        Ok(Forward { loss, reports })
    }

    /// The state as host values (declared dtypes), e.g. to save it.
    pub fn state_values(&self, state: &CandleState) -> Result<Vec<(String, value::Tensor)>, Error> {
        let g = &self.program.opt;
        let mut out = vec![];
        for (decl, (n, v)) in g.states.iter().zip(&state.values) {
            if let Some(t) = v {
                out.push((n.clone(), from_candle(t, decl.ty.dtype)?));
            }
        }
        Ok(out)
    }
}

/// Binds (or checks) the sizes an input or state value gives its declared shape.
fn bind_dims(
    decl: &[Dim],
    dims_of: &[usize],
    who: &str,
    kind: &str,
    dims: &mut BTreeMap<String, i64>,
) -> Result<(), Error> {
    if decl.len() != dims_of.len() {
        return Err(run_error(
            "L6106",
            format!(
                "{kind} `{who}` has rank {} (shape {:?}), but the loss declares rank {}",
                dims_of.len(),
                dims_of,
                decl.len()
            ),
            "reshape the tensor to the declared rank",
        ));
    }
    for (axis, (d, &n)) in decl.iter().zip(dims_of).enumerate() {
        let n = n as i64;
        if let Some(c) = d.as_const() {
            if c != n {
                return Err(run_error(
                    "L6106",
                    format!("{kind} `{who}` axis {axis} has size {n}, but the loss declares {c}"),
                    "give a tensor of the declared size",
                ));
            }
            continue;
        }
        let mut syms = vec![];
        d.symbols(&mut syms);
        if syms.len() == 1 && *d == Dim::sym(&syms[0]) {
            match dims.get(&syms[0]) {
                Some(&have) if have != n => {
                    return Err(run_error(
                        "L6106",
                        format!(
                            "{kind} `{who}` axis {axis} has size {n}, but {} = {have}",
                            syms[0]
                        ),
                        &format!("every use of {} must have the same size", syms[0]),
                    ));
                }
                Some(_) => {}
                None => {
                    dims.insert(syms[0].clone(), n);
                }
            }
        }
    }
    Ok(())
}
