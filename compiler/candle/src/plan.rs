//! The lowered program as data: one candle call per step, grouped by the IR
//! node it implements, with a stable text form (`lossc emit --stage candle`).
//!
//! Shapes stay symbolic (`Dim`s) and are resolved from the call's sizes when
//! the plan runs, so one plan serves every batch size.

use losslang_compiler::dim::{Dim, Shape, shape_str};
use losslang_compiler::ir::print::attrs;
use losslang_compiler::ir::{Graph, Handle};
use losslang_compiler::ops::{Op, RandKind, Scalar};
use losslang_compiler::value::DType;
use std::fmt::{self, Write};

/// A value register of the plan.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Slot(pub u32);

impl Slot {
    pub fn index(self) -> usize {
        self.0 as usize
    }
}

impl fmt::Display for Slot {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "${}", self.0)
    }
}

/// Where a declared value comes from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Source {
    Input(usize),
    Param(usize),
    State(usize),
}

/// candle's elementwise unary ops.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Unary {
    Neg,
    Exp,
    Log,
    Sin,
    Cos,
    Tanh,
    Abs,
    Sqrt,
    Sqr,
    Recip,
    Floor,
    /// Half away from zero (candle's `round`).
    Round,
    /// `sign` with `sign(NaN) = 0` (candle's).
    Sign,
}

/// candle's broadcasting binary ops (`broadcast_add`…).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Binary {
    Add,
    Sub,
    Mul,
    Div,
    Maximum,
    Minimum,
}

/// candle's broadcasting comparisons; the result is u8.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Cmp {
    Eq,
    Ne,
    Lt,
    Le,
    Gt,
    Ge,
}

/// One candle call. Calls marked *custom* are candle `CustomOp`s of this
/// crate (`kernels.rs`) with a CPU implementation only; the CUDA lowering
/// never emits them.
#[derive(Clone, Debug, PartialEq)]
pub enum Call {
    /// A declared input, param or state value.
    Load(Source),
    /// `Tensor::new(v)`: a rank-0 tensor of the dtype.
    Scalar(Scalar, DType),
    /// The run-time value of a symbolic size, as an i64 scalar.
    DimValue(Dim),
    /// `Tensor::arange(0, n)` (i64).
    Arange(Dim),
    Unary(Unary),
    Binary(Binary),
    Cmp(Cmp),
    /// `pred.where_cond(on_true, on_false)`; the three have one shape.
    WhereCond,
    ToDType(DType),
    /// Identity on values; `detach()` on the tracked path (`stop_grad`).
    Detach,
    BroadcastAs(Shape),
    Reshape(Shape),
    Permute(Vec<usize>),
    /// `narrow(axis, start, len)`; the range is checked against the axis first.
    Narrow {
        axis: usize,
        start: Dim,
        len: Dim,
    },
    /// The i64 positions `start + step·k` (k < len) of a strided slice of an
    /// axis of length `full`, checked to lie inside it.
    SlicePositions {
        start: Dim,
        len: Dim,
        step: i64,
        full: Dim,
    },
    /// `pad_with_zeros(axis, left, right)`.
    PadWithZeros {
        axis: usize,
        left: Dim,
        right: Dim,
    },
    /// `flip(&[axis])`.
    Flip(usize),
    SumKeepdim(Vec<usize>),
    MaxKeepdim(usize),
    MinKeepdim(usize),
    /// `Tensor::cat(args, axis)`.
    Cat(usize),
    Matmul,
    /// `x.gather(idx, axis)`; the other axes of idx must equal x's.
    Gather(usize),
    /// `base.scatter_add(idx, src, axis)`.
    ScatterAdd(usize),
    /// `x.index_select(idx, axis)` with a 1-D index.
    IndexSelect(usize),
    /// `base.index_add(idx, src, axis)` with a 1-D index.
    IndexAdd(usize),
    /// `base.scatter(idx, src, axis)` (set).
    Scatter(usize),
    /// `cumsum(axis)` (candle's: a matmul with a triangular matrix).
    Cumsum(usize),
    /// Fails unless axis `axis` of the argument is non-empty (or nothing is
    /// reduced); passes the argument through.
    NonEmptyAxis {
        axis: usize,
        op: &'static str,
    },
    /// Checks the i64 index (first argument) against axis `axis` of the
    /// second argument (or against `depth` for `one_hot`) and passes the index
    /// through. `-1` is allowed when `minus_one` (a `one_hot` "no class").
    /// Reads one scalar back from the device.
    CheckIndex {
        axis: usize,
        depth: Option<Dim>,
        minus_one: bool,
    },
    /// Fails if an i64 id repeats (the position of the first repeat is
    /// reported, as the interpreter does); passes the ids through. `custom`
    /// selects the CPU kernel, else a pairwise comparison on the device.
    CheckUnique {
        custom: bool,
    },
    /// Fails if the integer divisor (the argument) has a zero; passes it through.
    CheckNonZero,
    /// *custom*: stable argsort along an axis, NaN last in both directions.
    ArgsortStable {
        axis: usize,
        descending: bool,
    },
    /// *custom*: a sequential scan along an axis (f32 or f64).
    CumsumScan {
        axis: usize,
        reverse: bool,
    },
    /// *custom*: a sequential log-add-exp scan along an axis (accumulated in f64).
    LogCumSumExpScan {
        axis: usize,
        reverse: bool,
    },
    /// *custom*: binary search of each value (second argument) in the 1-D
    /// ascending sequence (first argument), NaN last.
    SearchSorted {
        right: bool,
    },
    /// *custom*: `powf` per element (computed in f64), arguments of one shape.
    Powf,
    /// *custom*: the counter-based generator (args: seed, step), f64.
    Rand(RandKind, Shape),
}

impl Call {
    pub fn name(&self) -> String {
        let list = |v: &[usize]| {
            v.iter()
                .map(|a| a.to_string())
                .collect::<Vec<_>>()
                .join(",")
        };
        match self {
            Call::Load(s) => match s {
                Source::Input(k) => format!("load[input #{k}]"),
                Source::Param(k) => format!("load[param #{k}]"),
                Source::State(k) => format!("load[state #{k}]"),
            },
            Call::Scalar(v, d) => format!("new[{}:{}]", v.text(), d),
            Call::DimValue(d) => format!("dim[{d}]"),
            Call::Arange(n) => format!("arange[{n}]"),
            Call::Unary(u) => match u {
                Unary::Neg => "neg",
                Unary::Exp => "exp",
                Unary::Log => "log",
                Unary::Sin => "sin",
                Unary::Cos => "cos",
                Unary::Tanh => "tanh",
                Unary::Abs => "abs",
                Unary::Sqrt => "sqrt",
                Unary::Sqr => "sqr",
                Unary::Recip => "recip",
                Unary::Floor => "floor",
                Unary::Round => "round",
                Unary::Sign => "sign",
            }
            .to_string(),
            Call::Binary(b) => match b {
                Binary::Add => "broadcast_add",
                Binary::Sub => "broadcast_sub",
                Binary::Mul => "broadcast_mul",
                Binary::Div => "broadcast_div",
                Binary::Maximum => "broadcast_maximum",
                Binary::Minimum => "broadcast_minimum",
            }
            .to_string(),
            Call::Cmp(c) => match c {
                Cmp::Eq => "broadcast_eq",
                Cmp::Ne => "broadcast_ne",
                Cmp::Lt => "broadcast_lt",
                Cmp::Le => "broadcast_le",
                Cmp::Gt => "broadcast_gt",
                Cmp::Ge => "broadcast_ge",
            }
            .to_string(),
            Call::WhereCond => "where_cond".into(),
            Call::ToDType(d) => format!("to_dtype[{}]", candle_dtype_name(*d)),
            Call::Detach => "detach".into(),
            Call::BroadcastAs(s) => format!("broadcast_as[{}]", shape_str(s)),
            Call::Reshape(s) => format!("reshape[{}]", shape_str(s)),
            Call::Permute(p) => format!("permute[{}]", list(p)),
            Call::Narrow { axis, start, len } => {
                format!("narrow[axis={axis}, start={start}, len={len}]")
            }
            Call::SlicePositions {
                start,
                len,
                step,
                full,
            } => format!("slice_positions[start={start}, len={len}, step={step}, full={full}]"),
            Call::PadWithZeros { axis, left, right } => {
                format!("pad_with_zeros[axis={axis}, left={left}, right={right}]")
            }
            Call::Flip(a) => format!("flip[{a}]"),
            Call::SumKeepdim(a) => format!("sum_keepdim[{}]", list(a)),
            Call::MaxKeepdim(a) => format!("max_keepdim[{a}]"),
            Call::MinKeepdim(a) => format!("min_keepdim[{a}]"),
            Call::Cat(a) => format!("cat[{a}]"),
            Call::Matmul => "matmul".into(),
            Call::Gather(a) => format!("gather[{a}]"),
            Call::ScatterAdd(a) => format!("scatter_add[{a}]"),
            Call::IndexSelect(a) => format!("index_select[{a}]"),
            Call::IndexAdd(a) => format!("index_add[{a}]"),
            Call::Scatter(a) => format!("scatter[{a}]"),
            Call::Cumsum(a) => format!("cumsum[{a}]"),
            Call::NonEmptyAxis { axis, op } => format!("check_non_empty[axis={axis}, {op}]"),
            Call::CheckIndex {
                axis,
                depth,
                minus_one,
            } => match depth {
                Some(d) => format!(
                    "check_index[depth={d}{}]",
                    if *minus_one { ", -1 ok" } else { "" }
                ),
                None => format!("check_index[axis={axis}]"),
            },
            Call::CheckUnique { custom } => {
                if *custom {
                    "custom:check_unique".into()
                } else {
                    "check_unique[pairwise]".into()
                }
            }
            Call::CheckNonZero => "check_nonzero".into(),
            Call::ArgsortStable { axis, descending } => format!(
                "custom:argsort_stable[axis={axis}{}]",
                if *descending { ", descending" } else { "" }
            ),
            Call::CumsumScan { axis, reverse } => format!(
                "custom:cumsum_scan[axis={axis}{}]",
                if *reverse { ", reverse" } else { "" }
            ),
            Call::LogCumSumExpScan { axis, reverse } => format!(
                "custom:logcumsumexp_scan[axis={axis}{}]",
                if *reverse { ", reverse" } else { "" }
            ),
            Call::SearchSorted { right } => format!(
                "custom:searchsorted[{}]",
                if *right { "right" } else { "left" }
            ),
            Call::Powf => "custom:powf".into(),
            Call::Rand(k, s) => format!(
                "custom:rand[{}, {}]",
                match k {
                    RandKind::Normal => "normal",
                    RandKind::Uniform => "uniform",
                },
                shape_str(s)
            ),
        }
    }
}

/// The candle dtype that holds a losslang dtype (bool is u8).
pub fn candle_dtype_name(d: DType) -> &'static str {
    match d {
        DType::F32 => "f32",
        DType::F64 => "f64",
        DType::I64 => "i64",
        DType::Bool => "u8",
    }
}

/// The static type of a slot: losslang dtype and symbolic shape.
#[derive(Clone, Debug, PartialEq)]
pub struct SlotTy {
    pub dtype: DType,
    pub shape: Shape,
}

impl fmt::Display for SlotTy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let d = candle_dtype_name(self.dtype);
        if self.shape.is_empty() {
            write!(f, "{d}")
        } else {
            write!(f, "{d}{}", shape_str(&self.shape))
        }
    }
}

#[derive(Clone, Debug, PartialEq)]
pub struct Step {
    pub out: Slot,
    pub call: Call,
    pub args: Vec<Slot>,
}

/// How gradients pass through a node on the tracked path (`CandleProgram::forward`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum GradRule {
    /// The node's candle calls run on the tracked tensors; candle's own
    /// backward of those calls equals the compiler's VJP of the op.
    Native,
    /// The calls run on detached values and a link op carries the compiler's
    /// VJP of the op into candle's backward (kinks, NaN-safe compositions,
    /// custom kernels, and ops whose candle backward differs).
    Vjp,
    /// `stop_grad`: the value is detached.
    Stop,
    /// No float gradient (sources, integer and bool results).
    None,
}

impl GradRule {
    fn label(self) -> &'static str {
        match self {
            GradRule::Native => "candle",
            GradRule::Vjp => "vjp",
            GradRule::Stop => "stop",
            GradRule::None => "none",
        }
    }
}

/// The steps of one IR node.
#[derive(Clone, Debug, PartialEq)]
pub struct NodePlan {
    pub node: Handle,
    /// `steps[first..end]` of the plan.
    pub first: usize,
    pub end: usize,
    /// The node's value.
    pub out: Slot,
    pub grad: GradRule,
}

/// Which kernels the lowering may use.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Target {
    /// The CPU: candle primitives plus this crate's CPU custom ops.
    Cpu,
    /// Any device (CUDA): candle primitives only.
    Portable,
}

/// A lowered graph.
#[derive(Clone, Debug)]
pub struct Plan {
    pub target: Target,
    pub steps: Vec<Step>,
    pub types: Vec<SlotTy>,
    /// One entry per lowered node, in graph order.
    pub nodes: Vec<NodePlan>,
    /// The slot of each graph node (`None`: not lowered).
    pub slot_of: Vec<Option<Slot>>,
}

impl Plan {
    pub fn slot(&self, h: Handle) -> Slot {
        self.slot_of[h.index()].expect("every graph node is lowered")
    }

    /// The node plan of `h`, if the node has one (cast to its own dtype and
    /// similar identities share the argument's slot and have none).
    pub fn node_plan(&self, h: Handle) -> Option<&NodePlan> {
        self.nodes
            .binary_search_by_key(&h, |n| n.node)
            .ok()
            .map(|i| &self.nodes[i])
    }
}

/// The stable text form: the graph's signature, then per IR node its line as
/// a comment and its candle calls, then the results.
pub fn print(g: &Graph, plan: &Plan) -> String {
    let mut s = String::new();
    let _ = writeln!(
        s,
        "; losslang candle v1 ({})",
        match plan.target {
            Target::Cpu => "cpu",
            Target::Portable => "portable",
        }
    );
    let _ = writeln!(s, "loss {}", g.name);
    for i in &g.inputs {
        let _ = writeln!(
            s,
            "  input {}: {}{}",
            i.name,
            i.ty,
            if i.diff { " diff" } else { "" }
        );
    }
    for p in &g.params {
        let _ = writeln!(s, "  param {}: {} = {}", p.name, p.dtype, p.default.text());
    }
    for st in &g.states {
        let _ = writeln!(s, "  state {}: {} = {}", st.name, st.ty, plan.slot(st.init));
    }
    for np in &plan.nodes {
        let n = g.node(np.node);
        let a = attrs(&n.op);
        let head = if a.is_empty() {
            n.op.name()
        } else {
            format!("{}[{a}]", n.op.name())
        };
        let label = match &n.op {
            Op::Input(k) => format!(" {}", g.inputs[*k].name),
            Op::Param(k) => format!(" {}", g.params[*k].name),
            Op::State(k) => format!(" {}", g.states[*k].name),
            _ => String::new(),
        };
        let args: Vec<String> = n.args.iter().map(|a| a.to_string()).collect();
        let sep = if args.is_empty() { "" } else { " " };
        let _ = writeln!(
            s,
            "; {} = {head}{label}{sep}{} : {}  (grad: {})",
            np.node,
            args.join(", "),
            n.ty,
            np.grad.label()
        );
        for st in &plan.steps[np.first..np.end] {
            let label = match st.call {
                Call::Load(Source::Input(k)) if k < g.inputs.len() => {
                    format!(" {}", g.inputs[k].name)
                }
                Call::Load(Source::Param(k)) if k < g.params.len() => {
                    format!(" {}", g.params[k].name)
                }
                Call::Load(Source::State(k)) if k < g.states.len() => {
                    format!(" {}", g.states[k].name)
                }
                _ => String::new(),
            };
            let args: Vec<String> = st.args.iter().map(|a| a.to_string()).collect();
            let sep = if args.is_empty() { "" } else { " " };
            let _ = writeln!(
                s,
                "{} = {}{label}{sep}{} : {}",
                st.out,
                st.call.name(),
                args.join(", "),
                plan.types[st.out.index()]
            );
        }
    }
    if let Some(l) = g.loss {
        let _ = writeln!(s, "result loss = {}", plan.slot(l));
    }
    for (n, h) in &g.reports {
        let _ = writeln!(s, "report {n} = {}", plan.slot(*h));
    }
    for u in &g.updates {
        let _ = writeln!(
            s,
            "update {} <- {}",
            g.states[u.state].name,
            plan.slot(u.value)
        );
    }
    for c in &g.checks {
        let _ = writeln!(s, "check {} \"{}\"", plan.slot(c.cond), c.message);
    }
    for (k, h) in &g.grads {
        let _ = writeln!(s, "grad {} = {}", g.inputs[*k].name, plan.slot(*h));
    }
    s
}
