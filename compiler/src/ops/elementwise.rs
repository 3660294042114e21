//! Elementwise unary and binary ops (binary ops broadcast like NumPy).
//! Per op: type rule, VJP, kernel.

use super::{GradKind, arity, broadcast_shapes};
use crate::ir::{Graph, Handle, Ty};
use crate::kernels::{EvalError, EvalResult, broadcast, broadcast_offsets};
use crate::value::{DType, Data, Tensor};

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum UnaryOp {
    Neg,
    Exp,
    Log,
    Log1p,
    Expm1,
    Sqrt,
    Rsqrt,
    Abs,
    Sign,
    Floor,
    Round,
    Tanh,
    Sigmoid,
    LogSigmoid,
    Softplus,
    Relu,
    Sin,
    Cos,
    Atanh,
    Asinh,
    Not,
    IsFinite,
}

impl UnaryOp {
    pub const ALL: [UnaryOp; 22] = [
        UnaryOp::Neg,
        UnaryOp::Exp,
        UnaryOp::Log,
        UnaryOp::Log1p,
        UnaryOp::Expm1,
        UnaryOp::Sqrt,
        UnaryOp::Rsqrt,
        UnaryOp::Abs,
        UnaryOp::Sign,
        UnaryOp::Floor,
        UnaryOp::Round,
        UnaryOp::Tanh,
        UnaryOp::Sigmoid,
        UnaryOp::LogSigmoid,
        UnaryOp::Softplus,
        UnaryOp::Relu,
        UnaryOp::Sin,
        UnaryOp::Cos,
        UnaryOp::Atanh,
        UnaryOp::Asinh,
        UnaryOp::Not,
        UnaryOp::IsFinite,
    ];

    pub fn name(self) -> &'static str {
        match self {
            UnaryOp::Neg => "neg",
            UnaryOp::Exp => "exp",
            UnaryOp::Log => "log",
            UnaryOp::Log1p => "log1p",
            UnaryOp::Expm1 => "expm1",
            UnaryOp::Sqrt => "sqrt",
            UnaryOp::Rsqrt => "rsqrt",
            UnaryOp::Abs => "abs",
            UnaryOp::Sign => "sign",
            UnaryOp::Floor => "floor",
            UnaryOp::Round => "round",
            UnaryOp::Tanh => "tanh",
            UnaryOp::Sigmoid => "sigmoid",
            UnaryOp::LogSigmoid => "log_sigmoid",
            UnaryOp::Softplus => "softplus",
            UnaryOp::Relu => "relu",
            UnaryOp::Sin => "sin",
            UnaryOp::Cos => "cos",
            UnaryOp::Atanh => "atanh",
            UnaryOp::Asinh => "asinh",
            UnaryOp::Not => "not",
            UnaryOp::IsFinite => "isfinite",
        }
    }

    pub fn grad_kind(self) -> GradKind {
        match self {
            UnaryOp::Neg
            | UnaryOp::Exp
            | UnaryOp::Log
            | UnaryOp::Log1p
            | UnaryOp::Expm1
            | UnaryOp::Sqrt
            | UnaryOp::Rsqrt
            | UnaryOp::Tanh
            | UnaryOp::Sigmoid
            | UnaryOp::LogSigmoid
            | UnaryOp::Softplus
            | UnaryOp::Sin
            | UnaryOp::Cos
            | UnaryOp::Atanh
            | UnaryOp::Asinh => GradKind::Smooth,
            UnaryOp::Abs | UnaryOp::Relu => GradKind::Kink,
            UnaryOp::Sign | UnaryOp::Floor | UnaryOp::Round => GradKind::PiecewiseConstant,
            UnaryOp::Not | UnaryOp::IsFinite => GradKind::Cut,
        }
    }

    /// The scalar function on f64 (the reference kernel).
    pub fn apply(self, x: f64) -> f64 {
        match self {
            UnaryOp::Neg => -x,
            UnaryOp::Exp => x.exp(),
            UnaryOp::Log => x.ln(),
            UnaryOp::Log1p => x.ln_1p(),
            UnaryOp::Expm1 => x.exp_m1(),
            UnaryOp::Sqrt => x.sqrt(),
            UnaryOp::Rsqrt => 1.0 / x.sqrt(),
            UnaryOp::Abs => x.abs(),
            UnaryOp::Sign => sign0(x),
            UnaryOp::Floor => x.floor(),
            UnaryOp::Round => x.round_ties_even(),
            UnaryOp::Tanh => x.tanh(),
            UnaryOp::Sigmoid => sigmoid(x),
            UnaryOp::LogSigmoid => -softplus(-x),
            UnaryOp::Softplus => softplus(x),
            UnaryOp::Relu => {
                if x > 0.0 || x.is_nan() {
                    x
                } else {
                    0.0
                }
            }
            UnaryOp::Sin => x.sin(),
            UnaryOp::Cos => x.cos(),
            UnaryOp::Atanh => atanh(x),
            UnaryOp::Asinh => asinh(x),
            UnaryOp::Not | UnaryOp::IsFinite => {
                unreachable!("bool-valued ops are evaluated in eval_unary")
            }
        }
    }
}

/// `sign` with `sign(0) = 0` (torch), NaN stays NaN.
pub fn sign0(x: f64) -> f64 {
    if x > 0.0 {
        1.0
    } else if x < 0.0 {
        -1.0
    } else {
        x * 0.0
    }
}

pub fn sigmoid(x: f64) -> f64 {
    if x >= 0.0 {
        1.0 / (1.0 + (-x).exp())
    } else {
        let e = x.exp();
        e / (1.0 + e)
    }
}

/// `log(1 + exp(x))` without overflow.
pub fn softplus(x: f64) -> f64 {
    if x > 0.0 {
        x + (-x).exp().ln_1p()
    } else {
        x.exp().ln_1p()
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum BinaryOp {
    Add,
    Sub,
    Mul,
    Div,
    Pow,
    Maximum,
    Minimum,
    FloorDiv,
    Lt,
    Le,
    Gt,
    Ge,
    Eq,
    Ne,
    And,
    Or,
}

impl BinaryOp {
    pub const ALL: [BinaryOp; 16] = [
        BinaryOp::Add,
        BinaryOp::Sub,
        BinaryOp::Mul,
        BinaryOp::Div,
        BinaryOp::Pow,
        BinaryOp::Maximum,
        BinaryOp::Minimum,
        BinaryOp::FloorDiv,
        BinaryOp::Lt,
        BinaryOp::Le,
        BinaryOp::Gt,
        BinaryOp::Ge,
        BinaryOp::Eq,
        BinaryOp::Ne,
        BinaryOp::And,
        BinaryOp::Or,
    ];

    pub fn name(self) -> &'static str {
        match self {
            BinaryOp::Add => "add",
            BinaryOp::Sub => "sub",
            BinaryOp::Mul => "mul",
            BinaryOp::Div => "div",
            BinaryOp::Pow => "pow",
            BinaryOp::Maximum => "maximum",
            BinaryOp::Minimum => "minimum",
            BinaryOp::FloorDiv => "floordiv",
            BinaryOp::Lt => "lt",
            BinaryOp::Le => "le",
            BinaryOp::Gt => "gt",
            BinaryOp::Ge => "ge",
            BinaryOp::Eq => "eq",
            BinaryOp::Ne => "ne",
            BinaryOp::And => "and",
            BinaryOp::Or => "or",
        }
    }

    pub fn grad_kind(self) -> GradKind {
        match self {
            BinaryOp::Add | BinaryOp::Sub | BinaryOp::Mul | BinaryOp::Div | BinaryOp::Pow => {
                GradKind::Smooth
            }
            BinaryOp::Maximum | BinaryOp::Minimum => GradKind::Kink,
            BinaryOp::FloorDiv => GradKind::PiecewiseConstant,
            BinaryOp::Lt
            | BinaryOp::Le
            | BinaryOp::Gt
            | BinaryOp::Ge
            | BinaryOp::Eq
            | BinaryOp::Ne
            | BinaryOp::And
            | BinaryOp::Or => GradKind::Cut,
        }
    }

    pub fn is_comparison(self) -> bool {
        matches!(
            self,
            BinaryOp::Lt | BinaryOp::Le | BinaryOp::Gt | BinaryOp::Ge | BinaryOp::Eq | BinaryOp::Ne
        )
    }

    pub fn is_logical(self) -> bool {
        matches!(self, BinaryOp::And | BinaryOp::Or)
    }
}

pub fn infer_unary(u: UnaryOp, args: &[&Ty]) -> Result<Ty, String> {
    arity(args, 1, u.name())?;
    let x = args[0];
    match u {
        UnaryOp::Not => {
            if x.dtype != DType::Bool {
                return Err(format!("`not` needs a bool value, got {}", x.dtype));
            }
            Ok(x.clone())
        }
        UnaryOp::IsFinite => {
            if !x.dtype.is_float() {
                return Err(format!("`isfinite` needs a float value, got {}", x.dtype));
            }
            Ok(Ty::new(DType::Bool, x.shape.clone()))
        }
        UnaryOp::Neg | UnaryOp::Abs | UnaryOp::Sign => {
            if x.dtype == DType::Bool {
                return Err(format!("`{}` needs a number, got bool", u.name()));
            }
            Ok(x.clone())
        }
        _ => {
            if !x.dtype.is_float() {
                return Err(format!(
                    "`{}` needs a float value (f32 or f64), got {}",
                    u.name(),
                    x.dtype
                ));
            }
            Ok(x.clone())
        }
    }
}

pub fn infer_binary(b: BinaryOp, args: &[&Ty]) -> Result<Ty, String> {
    arity(args, 2, b.name())?;
    let (x, y) = (args[0], args[1]);
    if x.dtype != y.dtype {
        return Err(format!(
            "`{}` needs operands of one dtype, got {} and {}",
            b.name(),
            x.dtype,
            y.dtype
        ));
    }
    let shape = broadcast_shapes(&x.shape, &y.shape)?;
    let d = x.dtype;
    let out = if b.is_comparison() {
        if d == DType::Bool && !matches!(b, BinaryOp::Eq | BinaryOp::Ne) {
            return Err(format!("`{}` cannot order bool values", b.name()));
        }
        DType::Bool
    } else if b.is_logical() {
        if d != DType::Bool {
            return Err(format!("`{}` needs bool operands, got {}", b.name(), d));
        }
        DType::Bool
    } else {
        match (b, d) {
            (_, DType::Bool) => {
                return Err(format!("`{}` needs numbers, got bool", b.name()));
            }
            (BinaryOp::Div | BinaryOp::Pow, DType::I64) => {
                return Err(format!("`{}` needs float operands, got i64", b.name()));
            }
            _ => d,
        }
    };
    Ok(Ty::new(out, shape))
}

/// Vector-Jacobian products. `node` is the forward node, `g` the cotangent of its output.
pub fn vjp_unary(u: UnaryOp, gr: &mut Graph, node: Handle, g: Handle) -> Vec<Option<Handle>> {
    let n = gr.node(node).clone();
    let (x, y, sp) = (n.args[0], node, n.span);
    let one = gr.float_like(1.0, x, sp);
    let dx = match u {
        UnaryOp::Neg => gr.neg(g, sp),
        UnaryOp::Exp => gr.mul(g, y, sp),
        UnaryOp::Log => gr.div(g, x, sp),
        UnaryOp::Log1p => {
            let d = gr.add(one, x, sp);
            gr.div(g, d, sp)
        }
        UnaryOp::Expm1 => {
            let e = gr.add(y, one, sp);
            gr.mul(g, e, sp)
        }
        UnaryOp::Sqrt => {
            let half = gr.float_like(0.5, x, sp);
            let t = gr.div(half, y, sp);
            gr.mul(g, t, sp)
        }
        UnaryOp::Rsqrt => {
            // d/dx x^-1/2 = -1/2 · y³
            let c = gr.float_like(-0.5, x, sp);
            let y2 = gr.mul(y, y, sp);
            let y3 = gr.mul(y2, y, sp);
            let t = gr.mul(c, y3, sp);
            gr.mul(g, t, sp)
        }
        UnaryOp::Abs => {
            let s = gr.unary(UnaryOp::Sign, x, sp);
            gr.mul(g, s, sp)
        }
        UnaryOp::Sign | UnaryOp::Floor | UnaryOp::Round | UnaryOp::Not | UnaryOp::IsFinite => {
            return vec![None];
        }
        UnaryOp::Tanh => {
            let y2 = gr.mul(y, y, sp);
            let t = gr.sub(one, y2, sp);
            gr.mul(g, t, sp)
        }
        UnaryOp::Sigmoid => {
            let t = gr.sub(one, y, sp);
            let t = gr.mul(y, t, sp);
            gr.mul(g, t, sp)
        }
        UnaryOp::LogSigmoid => {
            let nx = gr.neg(x, sp);
            let s = gr.unary(UnaryOp::Sigmoid, nx, sp);
            gr.mul(g, s, sp)
        }
        UnaryOp::Softplus => {
            let s = gr.unary(UnaryOp::Sigmoid, x, sp);
            gr.mul(g, s, sp)
        }
        UnaryOp::Relu => {
            // relu'(0) = 0
            let z = gr.float_like(0.0, x, sp);
            let m = gr.binary(BinaryOp::Gt, x, z, sp);
            gr.mask(m, g, sp)
        }
        UnaryOp::Sin => {
            let c = gr.unary(UnaryOp::Cos, x, sp);
            gr.mul(g, c, sp)
        }
        UnaryOp::Cos => {
            let s = gr.unary(UnaryOp::Sin, x, sp);
            let t = gr.mul(g, s, sp);
            gr.neg(t, sp)
        }
        UnaryOp::Atanh => {
            let x2 = gr.mul(x, x, sp);
            let d = gr.sub(one, x2, sp);
            gr.div(g, d, sp)
        }
        UnaryOp::Asinh => {
            let x2 = gr.mul(x, x, sp);
            let d = gr.add(one, x2, sp);
            let r = gr.unary(UnaryOp::Rsqrt, d, sp);
            gr.mul(g, r, sp)
        }
    };
    vec![Some(dx)]
}

pub fn vjp_binary(b: BinaryOp, gr: &mut Graph, node: Handle, g: Handle) -> Vec<Option<Handle>> {
    let n = gr.node(node).clone();
    let (x, z, y, sp) = (n.args[0], n.args[1], node, n.span);
    let xs = gr.ty(x).shape.clone();
    let zs = gr.ty(z).shape.clone();
    let (dx, dz) = match b {
        BinaryOp::Add => (Some(g), Some(g)),
        BinaryOp::Sub => (Some(g), Some(gr.neg(g, sp))),
        BinaryOp::Mul => (Some(gr.mul(g, z, sp)), Some(gr.mul(g, x, sp))),
        BinaryOp::Div => {
            let dx = gr.div(g, z, sp);
            let t = gr.mul(dx, y, sp);
            (Some(dx), Some(gr.neg(t, sp)))
        }
        BinaryOp::Pow => {
            // torch's conventions: d/dx is 0 where the exponent is 0, d/dz is 0 where x = 0.
            let zero = gr.float_like(0.0, x, sp);
            let one = gr.float_like(1.0, x, sp);
            let zm1 = gr.sub(z, one, sp);
            let p = gr.binary(BinaryOp::Pow, x, zm1, sp);
            let t = gr.mul(z, p, sp);
            let t = gr.mul(g, t, sp);
            let zz = gr.binary(BinaryOp::Eq, z, zero, sp);
            let dx = gr.where_(zz, zero, t, sp);
            let xz = gr.binary(BinaryOp::Eq, x, zero, sp);
            let xsafe = gr.where_(xz, one, x, sp);
            let l = gr.unary(UnaryOp::Log, xsafe, sp);
            let t = gr.mul(y, l, sp);
            let t = gr.mul(g, t, sp);
            let dz = gr.where_(xz, zero, t, sp);
            (Some(dx), Some(dz))
        }
        BinaryOp::Maximum | BinaryOp::Minimum => {
            // Ties go to the first operand.
            let cmp = if b == BinaryOp::Maximum {
                BinaryOp::Ge
            } else {
                BinaryOp::Le
            };
            let m = gr.binary(cmp, x, z, sp);
            let zero = gr.float_like(0.0, x, sp);
            let gb = gr.broadcast_to(g, gr.ty(node).shape.clone(), sp);
            (
                Some(gr.where_(m, gb, zero, sp)),
                Some(gr.where_(m, zero, gb, sp)),
            )
        }
        BinaryOp::FloorDiv
        | BinaryOp::Lt
        | BinaryOp::Le
        | BinaryOp::Gt
        | BinaryOp::Ge
        | BinaryOp::Eq
        | BinaryOp::Ne
        | BinaryOp::And
        | BinaryOp::Or => (None, None),
    };
    vec![
        dx.map(|d| gr.sum_to(d, &xs, sp)),
        dz.map(|d| gr.sum_to(d, &zs, sp)),
    ]
}

pub fn eval_unary(u: UnaryOp, x: &Tensor) -> EvalResult {
    let shape = x.shape.clone();
    Ok(match (&x.data, u) {
        (Data::B(v), UnaryOp::Not) => Tensor::from_bool(shape, v.iter().map(|b| !b).collect()),
        (Data::F(v), UnaryOp::IsFinite) => {
            Tensor::from_bool(shape, v.iter().map(|a| a.is_finite()).collect())
        }
        (Data::I(v), UnaryOp::Neg) => {
            Tensor::from_i64(shape, v.iter().map(|a| a.wrapping_neg()).collect())
        }
        (Data::I(v), UnaryOp::Abs) => {
            Tensor::from_i64(shape, v.iter().map(|a| a.wrapping_abs()).collect())
        }
        (Data::I(v), UnaryOp::Sign) => {
            Tensor::from_i64(shape, v.iter().map(|a| a.signum()).collect())
        }
        (Data::F(v), _) => {
            Tensor::from_f64(x.dtype, shape, v.iter().map(|&a| u.apply(a)).collect())
        }
        _ => {
            return Err(EvalError::Other(format!(
                "internal: `{}` on {}",
                u.name(),
                x.dtype
            )));
        }
    })
}

fn cmp<T: PartialOrd>(b: BinaryOp, x: T, y: T) -> bool {
    match b {
        BinaryOp::Lt => x < y,
        BinaryOp::Le => x <= y,
        BinaryOp::Gt => x > y,
        BinaryOp::Ge => x >= y,
        BinaryOp::Eq => x == y,
        BinaryOp::Ne => x != y,
        _ => unreachable!("not a comparison"),
    }
}

pub fn apply_f(b: BinaryOp, x: f64, y: f64) -> f64 {
    match b {
        BinaryOp::Add => x + y,
        BinaryOp::Sub => x - y,
        BinaryOp::Mul => x * y,
        BinaryOp::Div => x / y,
        BinaryOp::Pow => x.powf(y),
        // NaN propagates, as in torch.maximum.
        BinaryOp::Maximum => {
            if x.is_nan() || y.is_nan() {
                f64::NAN
            } else if x >= y {
                x
            } else {
                y
            }
        }
        BinaryOp::Minimum => {
            if x.is_nan() || y.is_nan() {
                f64::NAN
            } else if x <= y {
                x
            } else {
                y
            }
        }
        BinaryOp::FloorDiv => (x / y).floor(),
        _ => unreachable!("not an arithmetic op"),
    }
}

fn apply_i(b: BinaryOp, x: i64, y: i64) -> Result<i64, EvalError> {
    Ok(match b {
        BinaryOp::Add => x.wrapping_add(y),
        BinaryOp::Sub => x.wrapping_sub(y),
        BinaryOp::Mul => x.wrapping_mul(y),
        BinaryOp::Maximum => x.max(y),
        BinaryOp::Minimum => x.min(y),
        BinaryOp::FloorDiv => {
            if y == 0 {
                return Err(EvalError::Other("integer division by zero".into()));
            }
            x.wrapping_div_euclid(y) - i64::from(y < 0 && x.wrapping_rem_euclid(y) != 0)
        }
        _ => unreachable!("not an integer op"),
    })
}

pub fn eval_binary(b: BinaryOp, x: &Tensor, y: &Tensor) -> EvalResult {
    let shape = broadcast(&[&x.shape, &y.shape])?;
    let offs = broadcast_offsets(&[&x.shape, &y.shape], &shape);
    let (ox, oy) = (&offs[0], &offs[1]);
    let n = ox.len();
    Ok(match (&x.data, &y.data) {
        (Data::F(a), Data::F(c)) => {
            if b.is_comparison() {
                Tensor::from_bool(shape, (0..n).map(|i| cmp(b, a[ox[i]], c[oy[i]])).collect())
            } else {
                Tensor::from_f64(
                    x.dtype,
                    shape,
                    (0..n).map(|i| apply_f(b, a[ox[i]], c[oy[i]])).collect(),
                )
            }
        }
        (Data::I(a), Data::I(c)) => {
            if b.is_comparison() {
                Tensor::from_bool(shape, (0..n).map(|i| cmp(b, a[ox[i]], c[oy[i]])).collect())
            } else {
                let v: Result<Vec<i64>, EvalError> =
                    (0..n).map(|i| apply_i(b, a[ox[i]], c[oy[i]])).collect();
                Tensor::from_i64(shape, v?)
            }
        }
        (Data::B(a), Data::B(c)) => Tensor::from_bool(
            shape,
            (0..n)
                .map(|i| {
                    let (p, q) = (a[ox[i]], c[oy[i]]);
                    match b {
                        BinaryOp::And => p && q,
                        BinaryOp::Or => p || q,
                        BinaryOp::Eq => p == q,
                        BinaryOp::Ne => p != q,
                        _ => unreachable!("checked by the type rule"),
                    }
                })
                .collect(),
        ),
        _ => {
            return Err(EvalError::Other(format!(
                "internal: `{}` on {} and {}",
                b.name(),
                x.dtype,
                y.dtype
            )));
        }
    })
}

/// Integer forms of `neg`, `abs`, `sign` for constant folding.
pub fn apply_f_unary_int(u: UnaryOp, x: i64) -> i64 {
    match u {
        UnaryOp::Neg => x.wrapping_neg(),
        UnaryOp::Abs => x.wrapping_abs(),
        UnaryOp::Sign => x.signum(),
        _ => unreachable!("only neg, abs and sign fold on integers"),
    }
}

/// atanh accurate on both sides: Rust's f64 `atanh` loses digits near -1.
pub fn atanh(x: f64) -> f64 {
    let a = x.abs();
    let r = 0.5 * (2.0 * a / (1.0 - a)).ln_1p();
    if x.is_sign_negative() { -r } else { r }
}

/// asinh without overflow for huge |x| (Rust's f64 `asinh` overflows above MAX / 2).
pub fn asinh(x: f64) -> f64 {
    let a = x.abs();
    let r = if a > 1e150 {
        a.ln() + std::f64::consts::LN_2
    } else {
        x.abs().asinh()
    };
    if x.is_sign_negative() { -r } else { r }
}
