//! `Op`: THE list of primitives. Each family file keeps, per op, its type rule
//! (`infer`), its vector-Jacobian product (`vjp`) and its reference kernel
//! (`eval`) side by side. Every `match` on `Op` is exhaustive, so a new op does
//! not compile until every facet exists.
//!
//! Composite operations of the language (`mean`, `softmax`, `log_softmax`,
//! `logsumexp`, `normalize`, `sort`, `quantile`, `one_hot`…) are expanded into
//! these primitives by the checker, so they get gradients and every backend for free.

pub mod catalog;
pub mod control;
pub mod elementwise;
pub mod index;
pub mod layout;
pub mod linalg;
pub mod order;
pub mod reduce;
pub mod source;

use crate::dim::{Dim, Shape};
use crate::ir::Ty;
use crate::value::DType;
use std::hash::{Hash, Hasher};

pub use elementwise::{BinaryOp, UnaryOp};

/// A scalar constant. Hash/Eq by bits so that graphs can be hash-consed.
#[derive(Clone, Copy, Debug)]
pub enum Scalar {
    F(f64),
    I(i64),
    B(bool),
}

impl PartialEq for Scalar {
    fn eq(&self, o: &Scalar) -> bool {
        match (self, o) {
            (Scalar::F(a), Scalar::F(b)) => a.to_bits() == b.to_bits(),
            (Scalar::I(a), Scalar::I(b)) => a == b,
            (Scalar::B(a), Scalar::B(b)) => a == b,
            _ => false,
        }
    }
}
impl Eq for Scalar {}
impl Hash for Scalar {
    fn hash<H: Hasher>(&self, h: &mut H) {
        match self {
            Scalar::F(a) => (0u8, a.to_bits()).hash(h),
            Scalar::I(a) => (1u8, *a).hash(h),
            Scalar::B(a) => (2u8, *a).hash(h),
        }
    }
}

impl Scalar {
    pub fn as_f64(self) -> f64 {
        match self {
            Scalar::F(v) => v,
            Scalar::I(v) => v as f64,
            Scalar::B(v) => f64::from(u8::from(v)),
        }
    }

    /// Round-trip text: `{:?}` for floats keeps every bit.
    pub fn text(self) -> String {
        match self {
            Scalar::F(v) => format!("{v:?}"),
            Scalar::I(v) => v.to_string(),
            Scalar::B(v) => v.to_string(),
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum RandKind {
    /// Box–Muller normal of the counter-based generator (STDLIB.md, `ensloss`).
    Normal,
    /// `uniform(seed, step, i, 0)` in [0, 1).
    Uniform,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ReduceKind {
    Sum,
    Max,
    Min,
}

#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Op {
    // --- sources (source.rs)
    Input(usize),
    Param(usize),
    State(usize),
    Const(Scalar, DType),
    /// The run-time value of a symbolic dim, as an i64 scalar.
    DimSize(Dim),
    /// A tensor of the node's shape filled with one value.
    Fill(Scalar, DType, Shape),
    /// `arange(n)`: i64[n].
    Iota(Dim),
    /// Counter-based random numbers (args: seed i64, step i64), f64 of `shape`,
    /// element `i` in row-major order uses counter `i`.
    Rand(RandKind, Shape),
    // --- elementwise (elementwise.rs), NumPy broadcasting for binary ops
    Unary(UnaryOp),
    Binary(BinaryOp),
    // --- control (control.rs)
    /// `where(c, a, b)`, broadcasting.
    Where,
    Cast(DType),
    /// Identity on values; blocks gradients.
    StopGrad,
    // --- reductions (reduce.rs)
    Reduce {
        kind: ReduceKind,
        axes: Vec<usize>,
        keepdims: bool,
    },
    /// Index of the first maximum (ties to the lowest index), axis removed.
    ArgMax(usize),
    ArgMin(usize),
    /// Euclidean norm over `axes`; its gradient at 0 is 0 (not NaN).
    Norm {
        axes: Vec<usize>,
        keepdims: bool,
    },
    // --- layout (layout.rs)
    Reshape(Shape),
    BroadcastTo(Shape),
    Transpose(Vec<usize>),
    /// Elements `start, start+step, …` (`len` of them) along `axis`.
    Slice {
        axis: usize,
        start: Dim,
        len: Dim,
        step: i64,
    },
    /// The adjoint of `Slice`: places the argument into zeros of length `full`.
    Pad {
        axis: usize,
        start: Dim,
        full: Dim,
        step: i64,
    },
    Reverse(usize),
    Concat(usize),
    // --- indexing (index.rs)
    /// `take_along_axis(x, idx, axis)`: out has idx's shape; other axes must match.
    TakeAlong(usize),
    /// Adjoint of `TakeAlong`: `base` plus `values` added at `idx` along `axis`.
    ScatterAddAlong(usize),
    /// NumPy `take(x, idx, axis)`: out = x.shape[:a] + idx.shape + x.shape[a+1:].
    IndexSelect(usize),
    /// Adjoint of `IndexSelect`: `base` with `values` added at `idx` along `axis`.
    IndexAdd(usize),
    /// `base` with `values` written at `idx` along `axis` (ids must be unique).
    ScatterSet(usize),
    /// `one_hot(idx, depth)`: f32, `-1` gives a zero row; other out-of-range ids are errors.
    OneHot(Dim),
    // --- linear algebra (linalg.rs)
    MatMul,
    // --- ordering (order.rs)
    /// Stable argsort along `axis` (ties keep the lower index first).
    Argsort {
        axis: usize,
        descending: bool,
    },
    Cumsum {
        axis: usize,
        reverse: bool,
    },
    /// log Σ exp along an axis, cumulative, evaluated with a running maximum so
    /// that no entry is exponentiated far from its own prefix's scale.
    LogCumSumExp {
        axis: usize,
        reverse: bool,
    },
    /// NumPy `searchsorted(sorted, values, side)`: for each value, the first
    /// position of the 1-D ascending `sorted` whose entry is `>=` it (`> ` with `right`).
    SearchSorted {
        right: bool,
    },
}

/// How an op passes gradients, for the differentiability analysis.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum GradKind {
    /// No float inputs to differentiate (sources).
    Source,
    Smooth,
    /// Piecewise smooth (kinks): `abs relu maximum where clamp max`.
    Kink,
    /// Float-valued but zero gradient almost everywhere (`floor round sign`): a warning on a path.
    PiecewiseConstant,
    /// Discrete output: comparisons, argmax, casts to int/bool.
    Cut,
    /// `stop_grad`.
    Stop,
}

impl Op {
    pub fn name(&self) -> String {
        match self {
            Op::Input(_) => "input".into(),
            Op::Param(_) => "param".into(),
            Op::State(_) => "state".into(),
            Op::Const(..) => "const".into(),
            Op::DimSize(_) => "dim".into(),
            Op::Fill(..) => "fill".into(),
            Op::Iota(_) => "iota".into(),
            Op::Rand(RandKind::Normal, _) => "rand_normal".into(),
            Op::Rand(RandKind::Uniform, _) => "rand_uniform".into(),
            Op::Unary(u) => u.name().into(),
            Op::Binary(b) => b.name().into(),
            Op::Where => "where".into(),
            Op::Cast(_) => "cast".into(),
            Op::StopGrad => "stop_grad".into(),
            Op::Reduce { kind, .. } => match kind {
                ReduceKind::Sum => "sum".into(),
                ReduceKind::Max => "max".into(),
                ReduceKind::Min => "min".into(),
            },
            Op::ArgMax(_) => "argmax".into(),
            Op::ArgMin(_) => "argmin".into(),
            Op::Norm { .. } => "norm".into(),
            Op::Reshape(_) => "reshape".into(),
            Op::BroadcastTo(_) => "broadcast_to".into(),
            Op::Transpose(_) => "transpose".into(),
            Op::Slice { .. } => "slice".into(),
            Op::Pad { .. } => "pad".into(),
            Op::Reverse(_) => "reverse".into(),
            Op::Concat(_) => "concat".into(),
            Op::TakeAlong(_) => "take_along".into(),
            Op::ScatterAddAlong(_) => "scatter_add_along".into(),
            Op::IndexSelect(_) => "index_select".into(),
            Op::IndexAdd(_) => "index_add".into(),
            Op::ScatterSet(_) => "scatter".into(),
            Op::OneHot(_) => "one_hot".into(),
            Op::MatMul => "matmul".into(),
            Op::Argsort { .. } => "argsort".into(),
            Op::Cumsum { .. } => "cumsum".into(),
            Op::LogCumSumExp { .. } => "logcumsumexp".into(),
            Op::SearchSorted { .. } => "searchsorted".into(),
        }
    }

    /// How the op is written in a `.loss` file, for messages.
    pub fn surface(&self) -> String {
        match self {
            Op::Binary(b) => match b {
                BinaryOp::Add => "+",
                BinaryOp::Sub => "-",
                BinaryOp::Mul => "*",
                BinaryOp::Div => "/",
                BinaryOp::Pow => "**",
                BinaryOp::Lt => "<",
                BinaryOp::Le => "<=",
                BinaryOp::Gt => ">",
                BinaryOp::Ge => ">=",
                BinaryOp::Eq => "==",
                BinaryOp::Ne => "!=",
                BinaryOp::And => "&",
                BinaryOp::Or => "|",
                BinaryOp::Maximum => "maximum",
                BinaryOp::Minimum => "minimum",
                BinaryOp::FloorDiv => "floordiv",
            }
            .into(),
            Op::Unary(UnaryOp::Neg) => "-".into(),
            Op::Unary(UnaryOp::Not) => "!".into(),
            Op::Cast(d) => format!("{d}(...)"),
            Op::MatMul => "@".into(),
            Op::TakeAlong(_) | Op::IndexSelect(_) => "take".into(),
            op => op.name(),
        }
    }

    pub fn grad_kind(&self) -> GradKind {
        match self {
            Op::Input(_)
            | Op::Param(_)
            | Op::State(_)
            | Op::Const(..)
            | Op::DimSize(_)
            | Op::Fill(..)
            | Op::Iota(_)
            | Op::Rand(..) => GradKind::Source,
            Op::Unary(u) => u.grad_kind(),
            Op::Binary(b) => b.grad_kind(),
            Op::Where => GradKind::Kink,
            Op::Cast(d) => {
                if d.is_float() {
                    GradKind::Smooth
                } else {
                    GradKind::Cut
                }
            }
            Op::StopGrad => GradKind::Stop,
            Op::Reduce { kind, .. } => match kind {
                ReduceKind::Sum => GradKind::Smooth,
                ReduceKind::Max | ReduceKind::Min => GradKind::Kink,
            },
            Op::ArgMax(_) | Op::ArgMin(_) | Op::Argsort { .. } | Op::OneHot(_) => GradKind::Cut,
            Op::Norm { .. } => GradKind::Kink,
            Op::Reshape(_)
            | Op::BroadcastTo(_)
            | Op::Transpose(_)
            | Op::Slice { .. }
            | Op::Pad { .. }
            | Op::Reverse(_)
            | Op::Concat(_)
            | Op::TakeAlong(_)
            | Op::ScatterAddAlong(_)
            | Op::IndexSelect(_)
            | Op::IndexAdd(_)
            | Op::ScatterSet(_)
            | Op::MatMul
            | Op::Cumsum { .. }
            | Op::LogCumSumExp { .. } => GradKind::Smooth,
            Op::SearchSorted { .. } => GradKind::Cut,
        }
    }

    /// Which arguments are integer indices (never differentiated, range-checked at run time).
    pub fn index_args(&self) -> &'static [usize] {
        match self {
            Op::TakeAlong(_) | Op::IndexSelect(_) => &[1],
            Op::ScatterAddAlong(_) | Op::IndexAdd(_) | Op::ScatterSet(_) => &[1],
            Op::OneHot(_) => &[0],
            _ => &[],
        }
    }

    /// Type rule: the result type of this op applied to arguments of these types.
    pub fn infer(&self, args: &[&Ty]) -> Result<Ty, String> {
        match self {
            Op::Input(_)
            | Op::Param(_)
            | Op::State(_)
            | Op::Const(..)
            | Op::DimSize(_)
            | Op::Fill(..)
            | Op::Iota(_)
            | Op::Rand(..) => source::infer(self, args),
            Op::Unary(u) => elementwise::infer_unary(*u, args),
            Op::Binary(b) => elementwise::infer_binary(*b, args),
            Op::Where | Op::Cast(_) | Op::StopGrad => control::infer(self, args),
            Op::Reduce { .. } | Op::ArgMax(_) | Op::ArgMin(_) | Op::Norm { .. } => {
                reduce::infer(self, args)
            }
            Op::Reshape(_)
            | Op::BroadcastTo(_)
            | Op::Transpose(_)
            | Op::Slice { .. }
            | Op::Pad { .. }
            | Op::Reverse(_)
            | Op::Concat(_) => layout::infer(self, args),
            Op::TakeAlong(_)
            | Op::ScatterAddAlong(_)
            | Op::IndexSelect(_)
            | Op::IndexAdd(_)
            | Op::ScatterSet(_)
            | Op::OneHot(_) => index::infer(self, args),
            Op::MatMul => linalg::infer(args),
            Op::Argsort { .. }
            | Op::Cumsum { .. }
            | Op::LogCumSumExp { .. }
            | Op::SearchSorted { .. } => order::infer(self, args),
        }
    }
}

/// Checks the argument count of a type rule.
pub(crate) fn arity(args: &[&Ty], n: usize, op: &str) -> Result<(), String> {
    if args.len() == n {
        Ok(())
    } else {
        Err(format!("`{op}` takes {n} arguments, got {}", args.len()))
    }
}

pub(crate) fn check_axis(axis: usize, rank: usize, op: &str) -> Result<(), String> {
    if axis < rank {
        Ok(())
    } else {
        Err(format!(
            "`{op}`: axis {axis} is out of range for a value of rank {rank}"
        ))
    }
}

/// NumPy broadcasting of symbolic shapes: `N` meets `N` or `1`.
pub fn broadcast_shapes(a: &[Dim], b: &[Dim]) -> Result<Shape, String> {
    let r = a.len().max(b.len());
    let mut out = Vec::with_capacity(r);
    for i in 0..r {
        let da = (i + a.len()).checked_sub(r).map(|j| &a[j]);
        let db = (i + b.len()).checked_sub(r).map(|j| &b[j]);
        out.push(match (da, db) {
            (Some(x), None) | (None, Some(x)) => x.clone(),
            (Some(x), Some(y)) if x == y => x.clone(),
            (Some(x), Some(y)) if x.is_one() => y.clone(),
            (Some(x), Some(y)) if y.is_one() => x.clone(),
            (Some(x), Some(y)) => {
                return Err(format!(
                    "dims `{x}` and `{y}` do not broadcast (axis {i} of the result)"
                ));
            }
            (None, None) => unreachable!("axis within the longer rank"),
        });
    }
    Ok(out)
}

impl Op {
    /// The vector-Jacobian product: the cotangent of each argument given the
    /// cotangent `g` of `node` (`None`: no gradient flows to that argument).
    pub fn vjp(
        &self,
        gr: &mut crate::ir::Graph,
        node: crate::ir::Handle,
        g: crate::ir::Handle,
    ) -> Vec<Option<crate::ir::Handle>> {
        match self {
            Op::Input(_)
            | Op::Param(_)
            | Op::State(_)
            | Op::Const(..)
            | Op::DimSize(_)
            | Op::Fill(..)
            | Op::Iota(_) => vec![],
            Op::Rand(..) => vec![None, None],
            Op::Unary(u) => elementwise::vjp_unary(*u, gr, node, g),
            Op::Binary(b) => elementwise::vjp_binary(*b, gr, node, g),
            Op::Where | Op::Cast(_) | Op::StopGrad => control::vjp(self, gr, node, g),
            Op::Reduce { .. } | Op::ArgMax(_) | Op::ArgMin(_) | Op::Norm { .. } => {
                reduce::vjp(self, gr, node, g)
            }
            Op::Reshape(_)
            | Op::BroadcastTo(_)
            | Op::Transpose(_)
            | Op::Slice { .. }
            | Op::Pad { .. }
            | Op::Reverse(_)
            | Op::Concat(_) => layout::vjp(self, gr, node, g),
            Op::TakeAlong(_)
            | Op::ScatterAddAlong(_)
            | Op::IndexSelect(_)
            | Op::IndexAdd(_)
            | Op::ScatterSet(_)
            | Op::OneHot(_) => index::vjp(self, gr, node, g),
            Op::MatMul => linalg::vjp(gr, node, g),
            Op::Argsort { .. }
            | Op::Cumsum { .. }
            | Op::LogCumSumExp { .. }
            | Op::SearchSorted { .. } => order::vjp(self, gr, node, g),
        }
    }

    /// The reference kernel. Declared values (inputs, params, state) are bound
    /// by the interpreter, not here.
    pub fn eval(
        &self,
        args: &[&crate::value::Tensor],
        env: crate::dim::DimEnv,
    ) -> crate::kernels::EvalResult {
        match self {
            Op::Input(_)
            | Op::Param(_)
            | Op::State(_)
            | Op::Const(..)
            | Op::DimSize(_)
            | Op::Fill(..)
            | Op::Iota(_)
            | Op::Rand(..) => source::eval(self, args, env),
            Op::Unary(u) => elementwise::eval_unary(*u, args[0]),
            Op::Binary(b) => elementwise::eval_binary(*b, args[0], args[1]),
            Op::Where | Op::Cast(_) | Op::StopGrad => control::eval(self, args),
            Op::Reduce { .. } | Op::ArgMax(_) | Op::ArgMin(_) | Op::Norm { .. } => {
                reduce::eval(self, args)
            }
            Op::Reshape(_)
            | Op::BroadcastTo(_)
            | Op::Transpose(_)
            | Op::Slice { .. }
            | Op::Pad { .. }
            | Op::Reverse(_)
            | Op::Concat(_) => layout::eval(self, args, env),
            Op::TakeAlong(_)
            | Op::ScatterAddAlong(_)
            | Op::IndexSelect(_)
            | Op::IndexAdd(_)
            | Op::ScatterSet(_)
            | Op::OneHot(_) => index::eval(self, args, env),
            Op::MatMul => linalg::eval(args),
            Op::Argsort { .. }
            | Op::Cumsum { .. }
            | Op::LogCumSumExp { .. }
            | Op::SearchSorted { .. } => order::eval(self, args),
        }
    }

    /// Ops whose result has no gradient with respect to any argument, by name.
    pub const NO_GRADIENT: &'static [&'static str] = &[
        "argmax",
        "argmin",
        "argsort",
        "one_hot",
        "sign",
        "floor",
        "round",
        "floordiv",
        "not",
        "isfinite",
        "lt",
        "le",
        "gt",
        "ge",
        "eq",
        "ne",
        "and",
        "or",
        "stop_grad",
        "searchsorted",
    ];
}
