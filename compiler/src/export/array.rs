//! NumPy and JAX lowering: jax.numpy mirrors NumPy's names, so one arm per op
//! serves both; what differs (scatters, the generator, integer widths without
//! x64) lives in helpers of the same name in each target's prelude.

use super::plan::Plan;
use super::pyfmt::{dim_py, ints_tuple, scalar_py, shape_tuple};
use super::{Lower, inline_text_of};
use crate::ir::Handle;
use crate::ops::{BinaryOp, Op, RandKind, ReduceKind, UnaryOp};
use crate::value::DType;

pub struct ArrayApi {
    /// The module alias: `np` or `jnp`.
    ns: &'static str,
    f64: &'static str,
    i64: &'static str,
}

impl ArrayApi {
    pub fn numpy() -> ArrayApi {
        ArrayApi {
            ns: "np",
            f64: "np.float64",
            i64: "np.int64",
        }
    }

    /// Without `jax_enable_x64`, JAX has no 64-bit types: `_f64()` and `_i64()`
    /// pick the widest available at trace time.
    pub fn jax() -> ArrayApi {
        ArrayApi {
            ns: "jnp",
            f64: "_f64()",
            i64: "_i64()",
        }
    }

    fn dt(&self, d: DType) -> String {
        match d {
            DType::F32 => "_F".into(),
            DType::F64 => self.f64.into(),
            DType::I64 => self.i64.into(),
            DType::Bool => "bool".into(),
        }
    }

    fn unary(&self, u: UnaryOp, x: &str) -> String {
        let ns = self.ns;
        let f = match u {
            UnaryOp::Neg => return format!("-{x}"),
            UnaryOp::Exp => "exp",
            UnaryOp::Log => "log",
            UnaryOp::Log1p => "log1p",
            UnaryOp::Expm1 => "expm1",
            UnaryOp::Sqrt => "sqrt",
            UnaryOp::Rsqrt => return format!("1.0 / {ns}.sqrt({x})"),
            UnaryOp::Abs => "abs",
            UnaryOp::Sign => "sign",
            UnaryOp::Floor => "floor",
            // half to even, as the compiler rounds
            UnaryOp::Round => "round",
            UnaryOp::Tanh => "tanh",
            UnaryOp::Sigmoid => return format!("_sigmoid({x})"),
            UnaryOp::LogSigmoid => return format!("-{ns}.logaddexp(0.0, -{x})"),
            UnaryOp::Softplus => return format!("{ns}.logaddexp({x}, 0.0)"),
            // NaN passes through, as in the compiler
            UnaryOp::Relu => return format!("{ns}.maximum({x}, 0)"),
            UnaryOp::Sin => "sin",
            UnaryOp::Cos => "cos",
            UnaryOp::Atanh => "arctanh",
            UnaryOp::Asinh => "arcsinh",
            UnaryOp::Not => "logical_not",
            UnaryOp::IsFinite => "isfinite",
        };
        format!("{ns}.{f}({x})")
    }

    fn binary(&self, p: &Plan, h: Handle, b: BinaryOp, a: &str, c: &str) -> String {
        let ns = self.ns;
        let n = p.g.node(h);
        let float = p.g.ty(n.args[0]).dtype.is_float() || p.g.ty(n.args[1]).dtype.is_float();
        let op = match b {
            BinaryOp::Add => "+",
            BinaryOp::Sub => "-",
            BinaryOp::Mul => "*",
            BinaryOp::Div => "/",
            BinaryOp::Pow => "**",
            BinaryOp::Maximum => return format!("{ns}.maximum({a}, {c})"),
            BinaryOp::Minimum => return format!("{ns}.minimum({a}, {c})"),
            BinaryOp::FloorDiv => {
                return if float {
                    format!("{ns}.floor({a} / {c})")
                } else {
                    format!("{ns}.floor_divide({a}, {c})")
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
}

fn flag(b: bool) -> &'static str {
    if b { "True" } else { "False" }
}

impl Lower for ArrayApi {
    fn materialize(&self, lit: &str, dtype: DType) -> String {
        format!("{}.asarray({lit}, dtype={})", self.ns, self.dt(dtype))
    }

    fn inline_ok(&self, p: &Plan, user: Handle) -> bool {
        // operators and ufuncs take Python numbers (as weakly typed scalars)
        let n = p.g.node(user);
        matches!(n.op, Op::Binary(_) | Op::Where | Op::Unary(_))
            && n.args
                .iter()
                .any(|&a| !matches!(p.g.node(a).op, Op::Const(..) | Op::DimSize(_)))
    }

    fn expr(&self, p: &Plan, h: Handle, op: &Op, a: &[String]) -> String {
        let ns = self.ns;
        let n = p.g.node(h);
        let names = &p.dim_names;
        match op {
            // ---- sources
            Op::Input(_) | Op::Param(_) | Op::State(_) => p.name(h).to_string(),
            Op::Const(..) | Op::DimSize(_) => self.materialize(&inline_text_of(p, h), n.ty.dtype),
            Op::Fill(v, d, s) => format!(
                "{ns}.full({}, {}, dtype={})",
                shape_tuple(s, names),
                scalar_py(*v),
                self.dt(*d)
            ),
            Op::Iota(d) => format!("{ns}.arange({}, dtype={})", dim_py(d, names), self.i64),
            Op::Rand(k, s) => format!(
                "{}({}, {}, {})",
                match k {
                    RandKind::Normal => "_rand_normal",
                    RandKind::Uniform => "_rand_uniform",
                },
                a[0],
                a[1],
                shape_tuple(s, names)
            ),
            // ---- elementwise
            Op::Unary(u) => self.unary(*u, &a[0]),
            Op::Binary(b) => self.binary(p, h, *b, &a[0], &a[1]),
            // ---- control
            Op::Where => format!("{ns}.where({}, {}, {})", a[0], a[1], a[2]),
            Op::Cast(d) => format!("{}.astype({})", a[0], self.dt(*d)),
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
                let ax = ints_tuple(axes);
                let k = flag(*keepdims);
                match kind {
                    ReduceKind::Sum => format!("{ns}.sum({}, axis={ax}, keepdims={k})", a[0]),
                    ReduceKind::Max => format!("_amax({}, {ax}, {k})", a[0]),
                    ReduceKind::Min => format!("_amin({}, {ax}, {k})", a[0]),
                }
            }
            Op::ArgMax(ax) => format!("{ns}.argmax({}, axis={ax})", a[0]),
            Op::ArgMin(ax) => format!("{ns}.argmin({}, axis={ax})", a[0]),
            Op::Norm { axes, keepdims } => format!(
                "{ns}.sqrt({ns}.sum({0} * {0}, axis={1}, keepdims={2}))",
                a[0],
                ints_tuple(axes),
                flag(*keepdims)
            ),
            // ---- layout
            Op::Reshape(s) => format!("{ns}.reshape({}, {})", a[0], shape_tuple(s, names)),
            Op::BroadcastTo(s) => {
                format!("{ns}.broadcast_to({}, {})", a[0], shape_tuple(s, names))
            }
            Op::Transpose(perm) => format!("{ns}.transpose({}, {})", a[0], ints_tuple(perm)),
            Op::Slice {
                axis,
                start,
                len,
                step,
            } => format!(
                "{ns}.take({}, {} + {step} * {ns}.arange({}), axis={axis})",
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
            Op::Reverse(ax) => format!("{ns}.flip({}, axis={ax})", a[0]),
            Op::Concat(ax) => format!("{ns}.concatenate(({},), axis={ax})", a.join(", ")),
            // ---- indexing
            Op::TakeAlong(ax) => format!("{ns}.take_along_axis({}, {}, axis={ax})", a[0], a[1]),
            Op::ScatterAddAlong(ax) => {
                format!("_scatter_add_along({}, {ax}, {}, {})", a[0], a[1], a[2])
            }
            Op::IndexSelect(ax) => format!("{ns}.take({}, {}, axis={ax})", a[0], a[1]),
            Op::IndexAdd(ax) => format!("_index_add({}, {ax}, {}, {})", a[0], a[1], a[2]),
            Op::ScatterSet(ax) => format!("_scatter_set({}, {ax}, {}, {})", a[0], a[1], a[2]),
            Op::OneHot(d) => format!(
                "({}[..., None] == {ns}.arange({})).astype(_F)",
                a[0],
                dim_py(d, names)
            ),
            // ---- linear algebra
            Op::MatMul => format!("{} @ {}", a[0], a[1]),
            // ---- ordering
            Op::Argsort { axis, descending } => {
                format!("_argsort({}, {axis}, {})", a[0], flag(*descending))
            }
            Op::Cumsum { axis, reverse } => {
                format!("_cumsum({}, {axis}, {})", a[0], flag(*reverse))
            }
            Op::LogCumSumExp { axis, reverse } => {
                format!("_logcumsumexp({}, {axis}, {})", a[0], flag(*reverse))
            }
            Op::SearchSorted { right } => {
                format!("_searchsorted({}, {}, {})", a[0], a[1], flag(*right))
            }
        }
    }
}
