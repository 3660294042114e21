//! PyTorch lowering: one arm per op, family by family. `_F` is the working float
//! dtype (f32, or f64 when every float input is f64) and `_dev` the inputs'
//! device, so the same module runs on CPU and CUDA.

use super::plan::Plan;
use super::pyfmt::{dim_py, ints_tuple, scalar_py, shape_tuple};
use super::{Lower, inline_text_of};
use crate::ir::Handle;
use crate::ops::{BinaryOp, Op, RandKind, ReduceKind, UnaryOp};
use crate::value::DType;

pub struct Torch;

fn dt(d: DType) -> &'static str {
    match d {
        DType::F32 => "_F",
        DType::F64 => "torch.float64",
        DType::I64 => "torch.int64",
        DType::Bool => "torch.bool",
    }
}

fn unary(u: UnaryOp, x: &str) -> String {
    let f = match u {
        UnaryOp::Neg => return format!("-{x}"),
        UnaryOp::Exp => "torch.exp",
        UnaryOp::Log => "torch.log",
        UnaryOp::Log1p => "torch.log1p",
        UnaryOp::Expm1 => "torch.expm1",
        UnaryOp::Sqrt => "torch.sqrt",
        UnaryOp::Rsqrt => "torch.rsqrt",
        UnaryOp::Abs => "torch.abs",
        UnaryOp::Sign => "torch.sign",
        UnaryOp::Floor => "torch.floor",
        // half to even, as the compiler rounds
        UnaryOp::Round => "torch.round",
        UnaryOp::Tanh => "torch.tanh",
        UnaryOp::Sigmoid => "torch.sigmoid",
        UnaryOp::LogSigmoid => "torch.nn.functional.logsigmoid",
        // log(1 + exp(x)) without overflow and without torch's linear cut-off at 20
        UnaryOp::Softplus => return format!("torch.logaddexp({x}, torch.zeros_like({x}))"),
        UnaryOp::Relu => "torch.relu",
        UnaryOp::Sin => "torch.sin",
        UnaryOp::Cos => "torch.cos",
        UnaryOp::Atanh => "torch.atanh",
        UnaryOp::Asinh => "torch.asinh",
        UnaryOp::Not => "torch.logical_not",
        UnaryOp::IsFinite => "torch.isfinite",
    };
    format!("{f}({x})")
}

fn is_literal(p: &Plan, h: Handle) -> bool {
    matches!(p.g.node(h).op, Op::Const(..) | Op::DimSize(_))
}

fn binary(p: &Plan, h: Handle, b: BinaryOp, a: &str, c: &str) -> String {
    let n = p.g.node(h);
    let float = p.g.ty(n.args[0]).dtype.is_float() || p.g.ty(n.args[1]).dtype.is_float();
    let op = match b {
        BinaryOp::Add => "+",
        BinaryOp::Sub => "-",
        BinaryOp::Mul => "*",
        BinaryOp::Div => "/",
        BinaryOp::Pow => "**",
        BinaryOp::Maximum | BinaryOp::Minimum => {
            let f = if b == BinaryOp::Maximum {
                ("torch.maximum", "torch.clamp_min")
            } else {
                ("torch.minimum", "torch.clamp_max")
            };
            // torch.maximum takes two tensors; a Python number goes through clamp
            return if is_literal(p, n.args[1]) {
                format!("{}({a}, {c})", f.1)
            } else if is_literal(p, n.args[0]) {
                format!("{}({c}, {a})", f.1)
            } else {
                format!("{}({a}, {c})", f.0)
            };
        }
        BinaryOp::FloorDiv => {
            return if float {
                format!("torch.floor({a} / {c})")
            } else {
                format!("torch.div({a}, {c}, rounding_mode=\"floor\")")
            };
        }
        BinaryOp::Lt => "<",
        BinaryOp::Le => "<=",
        BinaryOp::Gt => ">",
        BinaryOp::Ge => ">=",
        BinaryOp::Eq => "==",
        BinaryOp::Ne => "!=",
        BinaryOp::And => "&",
        BinaryOp::Or => "|",
    };
    format!("{a} {op} {c}")
}

impl Lower for Torch {
    fn materialize(&self, lit: &str, dtype: DType) -> String {
        format!("torch.tensor({lit}, dtype={}, device=_dev)", dt(dtype))
    }

    fn inline_ok(&self, p: &Plan, user: Handle) -> bool {
        // torch functions take tensors; operators and `where` take Python numbers
        // as long as one operand is a tensor.
        let n = p.g.node(user);
        matches!(n.op, Op::Binary(_) | Op::Where) && n.args.iter().any(|&a| !is_literal(p, a))
    }

    fn expr(&self, p: &Plan, h: Handle, op: &Op, a: &[String]) -> String {
        let n = p.g.node(h);
        let names = &p.dim_names;
        match op {
            // ---- sources
            Op::Input(_) | Op::Param(_) | Op::State(_) => p.name(h).to_string(),
            Op::Const(..) | Op::DimSize(_) => self.materialize(&inline_text_of(p, h), n.ty.dtype),
            Op::Fill(v, d, s) => format!(
                "torch.full({}, {}, dtype={}, device=_dev)",
                shape_tuple(s, names),
                scalar_py(*v),
                dt(*d)
            ),
            Op::Iota(d) => format!("torch.arange({}, device=_dev)", dim_py(d, names)),
            Op::Rand(k, s) => format!(
                "{}({}, {}, {}, _dev)",
                match k {
                    RandKind::Normal => "_rand_normal",
                    RandKind::Uniform => "_rand_uniform",
                },
                a[0],
                a[1],
                shape_tuple(s, names)
            ),
            // ---- elementwise
            Op::Unary(u) => unary(*u, &a[0]),
            Op::Binary(b) => binary(p, h, *b, &a[0], &a[1]),
            // ---- control
            Op::Where => format!("torch.where({}, {}, {})", a[0], a[1], a[2]),
            Op::Cast(d) => format!("{}.to({})", a[0], dt(*d)),
            // the gradient is the compiler's, so stop_grad is the identity here
            Op::StopGrad => a[0].clone(),
            // ---- reductions
            Op::Reduce {
                kind,
                axes,
                keepdims,
            } => {
                if axes.is_empty() {
                    return a[0].clone();
                }
                let dims = ints_tuple(axes);
                let k = if *keepdims { "True" } else { "False" };
                match kind {
                    ReduceKind::Sum => format!("torch.sum({}, dim={dims}, keepdim={k})", a[0]),
                    ReduceKind::Max => format!("_amax({}, {dims}, {k})", a[0]),
                    ReduceKind::Min => format!("_amin({}, {dims}, {k})", a[0]),
                }
            }
            Op::ArgMax(ax) => format!("torch.argmax({}, dim={ax})", a[0]),
            Op::ArgMin(ax) => format!("torch.argmin({}, dim={ax})", a[0]),
            Op::Norm { axes, keepdims } => format!(
                "torch.linalg.vector_norm({}, dim={}, keepdim={})",
                a[0],
                ints_tuple(axes),
                if *keepdims { "True" } else { "False" }
            ),
            // ---- layout
            Op::Reshape(s) => format!("{}.reshape({})", a[0], shape_tuple(s, names)),
            Op::BroadcastTo(s) => {
                format!("torch.broadcast_to({}, {})", a[0], shape_tuple(s, names))
            }
            Op::Transpose(perm) => format!("{}.permute({})", a[0], ints_tuple(perm)),
            Op::Slice {
                axis,
                start,
                len,
                step,
            } => format!(
                "_slice({}, {axis}, {}, {}, {step})",
                a[0],
                dim_py(start, names),
                dim_py(len, names)
            ),
            Op::Pad {
                axis,
                start,
                full,
                step,
            } => format!(
                "_pad({}, {axis}, {}, {}, {step})",
                a[0],
                dim_py(start, names),
                dim_py(full, names)
            ),
            Op::Reverse(ax) => format!("torch.flip({}, ({ax},))", a[0]),
            Op::Concat(ax) => format!("torch.cat(({},), dim={ax})", a.join(", ")),
            // ---- indexing
            Op::TakeAlong(ax) => format!("torch.take_along_dim({}, {}, dim={ax})", a[0], a[1]),
            Op::ScatterAddAlong(ax) => {
                format!("{}.scatter_add({ax}, {}, {})", a[0], a[1], a[2])
            }
            Op::IndexSelect(ax) => format!("_index_select({}, {ax}, {})", a[0], a[1]),
            Op::IndexAdd(ax) => format!("_index_add({}, {ax}, {}, {})", a[0], a[1], a[2]),
            Op::ScatterSet(ax) => format!("_scatter_set({}, {ax}, {}, {})", a[0], a[1], a[2]),
            Op::OneHot(d) => format!("_one_hot({}, {}, _F)", a[0], dim_py(d, names)),
            // ---- linear algebra
            Op::MatMul => format!("{} @ {}", a[0], a[1]),
            // ---- ordering
            Op::Argsort { axis, descending } => format!(
                "_argsort({}, {axis}, {})",
                a[0],
                if *descending { "True" } else { "False" }
            ),
            Op::Cumsum { axis, reverse } => format!(
                "_cumsum({}, {axis}, {})",
                a[0],
                if *reverse { "True" } else { "False" }
            ),
            Op::LogCumSumExp { axis, reverse } => format!(
                "_logcumsumexp({}, {axis}, {})",
                a[0],
                if *reverse { "True" } else { "False" }
            ),
            Op::SearchSorted { right } => format!(
                "_searchsorted({}, {}, {})",
                a[0],
                a[1],
                if *right { "True" } else { "False" }
            ),
        }
    }
}
