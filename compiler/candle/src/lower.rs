//! Lowering: every IR op becomes candle calls (one exhaustive `match` over
//! `Op`). The semantics are the interpreter's (`compiler/src/ops`), including
//! its NaN rules and tie-breaks; where candle's primitive differs (rounding,
//! `pow`, `maximum` with NaN, `sign(NaN)`), the op is composed from
//! primitives that agree. Ops candle lacks are composed too, or use the CPU
//! custom kernels of `kernels.rs` on `Target::Cpu` only.

use crate::plan::{
    Binary, Call, Cmp, GradRule, NodePlan, Plan, Slot, SlotTy, Source, Step, Target, Unary,
};
use losslang_compiler::dim::{Dim, Shape};
use losslang_compiler::ir::{Graph, Handle};
use losslang_compiler::ops::{
    BinaryOp, Op, RandKind, ReduceKind, Scalar, UnaryOp, broadcast_shapes,
};
use losslang_compiler::value::DType;
use std::fmt;

/// A node that this target cannot lower.
#[derive(Clone, Debug, PartialEq)]
pub struct LowerError {
    pub node: Handle,
    pub message: String,
}

impl fmt::Display for LowerError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "node {}: {}", self.node, self.message)
    }
}

impl std::error::Error for LowerError {}

/// Lowers every node of `g`.
pub fn lower(g: &Graph, target: Target) -> Result<Plan, LowerError> {
    let mut b = Builder {
        target,
        steps: vec![],
        types: vec![],
    };
    let mut slot_of: Vec<Option<Slot>> = vec![None; g.len()];
    let mut nodes = Vec::with_capacity(g.len());
    for (i, n) in g.nodes.iter().enumerate() {
        let h = Handle(i as u32);
        let args: Vec<Slot> = n
            .args
            .iter()
            .map(|a| slot_of[a.index()].expect("arguments come first"))
            .collect();
        let first = b.steps.len();
        let out =
            lower_node(&mut b, g, h, &args).map_err(|message| LowerError { node: h, message })?;
        debug_assert_eq!(
            b.ty(out).dtype,
            n.ty.dtype,
            "{} lowers to its dtype",
            n.op.name()
        );
        slot_of[i] = Some(out);
        nodes.push(NodePlan {
            node: h,
            first,
            end: b.steps.len(),
            out,
            grad: grad_rule(g, h),
        });
    }
    Ok(Plan {
        target,
        steps: b.steps,
        types: b.types,
        nodes,
        slot_of,
    })
}

/// How the tracked path differentiates a node (see `GradRule`).
pub fn grad_rule(g: &Graph, h: Handle) -> GradRule {
    let n = g.node(h);
    let float_arg = n.args.iter().any(|a| g.ty(*a).dtype.is_float());
    if !n.ty.dtype.is_float() || !float_arg {
        return GradRule::None;
    }
    match &n.op {
        Op::StopGrad => GradRule::Stop,
        // candle's backward of these calls is the compiler's VJP, kinks included.
        Op::Unary(
            UnaryOp::Neg
            | UnaryOp::Exp
            | UnaryOp::Log
            | UnaryOp::Sin
            | UnaryOp::Cos
            | UnaryOp::Tanh
            | UnaryOp::Sqrt,
        )
        | Op::Binary(BinaryOp::Add | BinaryOp::Sub | BinaryOp::Mul | BinaryOp::Div)
        | Op::Where
        | Op::Cast(_)
        | Op::Reduce {
            kind: ReduceKind::Sum,
            ..
        }
        | Op::Reshape(_)
        | Op::BroadcastTo(_)
        | Op::Transpose(_)
        | Op::Slice { .. }
        | Op::Pad { .. }
        | Op::Reverse(_)
        | Op::Concat(_)
        | Op::TakeAlong(_)
        | Op::IndexSelect(_)
        | Op::IndexAdd(_)
        | Op::MatMul => GradRule::Native,
        // Kinks with the compiler's tie rules, NaN-safe compositions whose
        // unused branches must not leak into the gradient, custom kernels,
        // and candle ops whose backward differs from the op (candle's
        // `scatter_add` and `scatter` give the base the other one's gradient).
        Op::Unary(_)
        | Op::Binary(_)
        | Op::Reduce { .. }
        | Op::Norm { .. }
        | Op::ScatterAddAlong(_)
        | Op::ScatterSet(_)
        | Op::Cumsum { .. }
        | Op::LogCumSumExp { .. } => GradRule::Vjp,
        // Integer- or bool-valued, or sources: handled by the dtype test above.
        Op::Input(_)
        | Op::Param(_)
        | Op::State(_)
        | Op::Const(..)
        | Op::DimSize(_)
        | Op::Fill(..)
        | Op::Iota(_)
        | Op::Rand(..)
        | Op::ArgMax(_)
        | Op::ArgMin(_)
        | Op::OneHot(_)
        | Op::Argsort { .. }
        | Op::SearchSorted { .. } => GradRule::None,
    }
}

struct Builder {
    target: Target,
    steps: Vec<Step>,
    types: Vec<SlotTy>,
}

type R = Result<Slot, String>;

impl Builder {
    fn ty(&self, s: Slot) -> &SlotTy {
        &self.types[s.index()]
    }

    fn dtype(&self, s: Slot) -> DType {
        self.ty(s).dtype
    }

    fn shape(&self, s: Slot) -> Shape {
        self.ty(s).shape.clone()
    }

    fn emit(&mut self, call: Call, args: &[Slot], dtype: DType, shape: Shape) -> Slot {
        let out = Slot(u32::try_from(self.types.len()).expect("fewer than 2^32 slots"));
        self.types.push(SlotTy { dtype, shape });
        self.steps.push(Step {
            out,
            call,
            args: args.to_vec(),
        });
        out
    }

    fn scalar(&mut self, v: Scalar, d: DType) -> Slot {
        self.emit(Call::Scalar(stored(v, d), d), &[], d, vec![])
    }

    /// A float scalar of `like`'s dtype.
    fn f(&mut self, v: f64, like: Slot) -> Slot {
        let d = self.dtype(like);
        self.scalar(Scalar::F(v), d)
    }

    fn unary(&mut self, u: Unary, x: Slot) -> Slot {
        let ty = self.ty(x).clone();
        self.emit(Call::Unary(u), &[x], ty.dtype, ty.shape)
    }

    fn bin(&mut self, op: Binary, x: Slot, y: Slot) -> R {
        let s = broadcast_shapes(&self.shape(x), &self.shape(y))?;
        let d = self.dtype(x);
        Ok(self.emit(Call::Binary(op), &[x, y], d, s))
    }

    fn cmp(&mut self, c: Cmp, x: Slot, y: Slot) -> R {
        let s = broadcast_shapes(&self.shape(x), &self.shape(y))?;
        Ok(self.emit(Call::Cmp(c), &[x, y], DType::Bool, s))
    }

    /// Compares with a scalar of x's dtype.
    fn cmp_s(&mut self, c: Cmp, x: Slot, v: Scalar) -> R {
        let d = self.dtype(x);
        let s = self.scalar(v, d);
        self.cmp(c, x, s)
    }

    fn isnan(&mut self, x: Slot) -> R {
        self.cmp(Cmp::Ne, x, x)
    }

    fn and(&mut self, x: Slot, y: Slot) -> R {
        self.bin(Binary::Minimum, x, y)
    }

    fn or(&mut self, x: Slot, y: Slot) -> R {
        self.bin(Binary::Maximum, x, y)
    }

    fn not(&mut self, x: Slot) -> R {
        self.cmp_s(Cmp::Eq, x, Scalar::B(false))
    }

    fn broadcast_to(&mut self, x: Slot, shape: &Shape) -> Slot {
        if &self.shape(x) == shape {
            return x;
        }
        let d = self.dtype(x);
        self.emit(Call::BroadcastAs(shape.clone()), &[x], d, shape.clone())
    }

    fn reshape(&mut self, x: Slot, shape: &Shape) -> Slot {
        if &self.shape(x) == shape {
            return x;
        }
        let d = self.dtype(x);
        self.emit(Call::Reshape(shape.clone()), &[x], d, shape.clone())
    }

    /// `where(c, a, b)` with NumPy broadcasting of all three.
    fn where_(&mut self, c: Slot, a: Slot, b: Slot) -> R {
        let s = broadcast_shapes(&self.shape(c), &self.shape(a))?;
        let s = broadcast_shapes(&s, &self.shape(b))?;
        let c = self.broadcast_to(c, &s);
        let a = self.broadcast_to(a, &s);
        let b = self.broadcast_to(b, &s);
        let d = self.dtype(a);
        Ok(self.emit(Call::WhereCond, &[c, a, b], d, s))
    }

    fn cast(&mut self, x: Slot, d: DType) -> Slot {
        if self.dtype(x) == d {
            return x;
        }
        let s = self.shape(x);
        self.emit(Call::ToDType(d), &[x], d, s)
    }

    /// NaN where `x` or `y` is NaN, else `r` (`x + y` is NaN exactly then).
    fn nan_of2(&mut self, r: Slot, x: Slot, y: Slot) -> R {
        let nx = self.isnan(x)?;
        let ny = self.isnan(y)?;
        let n = self.or(nx, ny)?;
        let s = self.bin(Binary::Add, x, y)?;
        self.where_(n, s, r)
    }

    /// Kahan's `log1p`: `log(u)·x/(u-1)` with `u = 1 + x`, exact where `u = 1`.
    fn log1p(&mut self, x: Slot) -> R {
        let one = self.f(1.0, x);
        let u = self.bin(Binary::Add, one, x)?;
        let d = self.bin(Binary::Sub, u, one)?;
        let l = self.unary(Unary::Log, u);
        let q = self.bin(Binary::Div, x, d)?;
        let r = self.bin(Binary::Mul, l, q)?;
        let tiny = self.cmp_s(Cmp::Eq, d, Scalar::F(0.0))?;
        let r = self.where_(tiny, x, r)?;
        // `x = inf` makes the quotient inf/inf.
        let inf = self.cmp_s(Cmp::Eq, x, Scalar::F(f64::INFINITY))?;
        self.where_(inf, x, r)
    }

    /// Kahan's `expm1`: `(u-1)·x/log(u)` with `u = exp(x)`.
    fn expm1(&mut self, x: Slot) -> R {
        let u = self.unary(Unary::Exp, x);
        let one = self.f(1.0, x);
        let d = self.bin(Binary::Sub, u, one)?;
        let l = self.unary(Unary::Log, u);
        let q = self.bin(Binary::Div, x, l)?;
        let r = self.bin(Binary::Mul, d, q)?;
        let m1 = self.f(-1.0, x);
        let low = self.cmp(Cmp::Eq, d, m1)?;
        let r = self.where_(low, m1, r)?;
        let tiny = self.cmp(Cmp::Eq, u, one)?;
        let r = self.where_(tiny, x, r)?;
        let inf = self.cmp_s(Cmp::Eq, u, Scalar::F(f64::INFINITY))?;
        self.where_(inf, u, r)
    }

    /// `max(x, 0) + log1p(exp(-|x|))`: the interpreter's overflow-free softplus.
    fn softplus(&mut self, x: Slot) -> R {
        let a = self.unary(Unary::Abs, x);
        let na = self.unary(Unary::Neg, a);
        let e = self.unary(Unary::Exp, na);
        let l = self.log1p(e)?;
        let zero = self.f(0.0, x);
        let pos = self.cmp(Cmp::Gt, x, zero)?;
        let m = self.where_(pos, x, zero)?;
        self.bin(Binary::Add, m, l)
    }

    /// The index of the first `hit` along `axis` (hit has x's shape), axis removed.
    fn first_hit(&mut self, hit: Slot, axis: usize, out_shape: &Shape) -> R {
        let shape = self.shape(hit);
        let len = shape[axis].clone();
        let iota = self.emit(
            Call::Arange(len.clone()),
            &[],
            DType::I64,
            vec![len.clone()],
        );
        let mut s1: Shape = vec![Dim::lit(1); shape.len()];
        s1[axis] = len.clone();
        let iota = self.reshape(iota, &s1);
        let n = self.emit(Call::DimValue(len), &[], DType::I64, vec![]);
        let pos = self.where_(hit, iota, n)?;
        let mut ks = shape.clone();
        ks[axis] = Dim::lit(1);
        let m = self.emit(Call::MinKeepdim(axis), &[pos], DType::I64, ks);
        Ok(self.reshape(m, out_shape))
    }

    /// Flattens an index tensor to 1-D.
    fn flat(&mut self, idx: Slot) -> Slot {
        let n = self.shape(idx).iter().fold(Dim::lit(1), |a, d| a.mul(d));
        self.reshape(idx, &vec![n])
    }

    fn check_index(&mut self, idx: Slot, x: Slot, axis: usize) -> Slot {
        let s = self.shape(idx);
        self.emit(
            Call::CheckIndex {
                axis,
                depth: None,
                minus_one: false,
            },
            &[idx, x],
            DType::I64,
            s,
        )
    }
}

/// A scalar as the interpreter stores it in a tensor of dtype `d`.
fn stored(v: Scalar, d: DType) -> Scalar {
    match (v, d) {
        (Scalar::B(b), DType::Bool) => Scalar::B(b),
        (v, DType::Bool) => Scalar::B(v.as_f64() != 0.0),
        (Scalar::I(i), DType::I64) => Scalar::I(i),
        (v, DType::I64) => Scalar::I(v.as_f64() as i64),
        (v, DType::F32) => Scalar::F(f64::from(v.as_f64() as f32)),
        (v, DType::F64) => Scalar::F(v.as_f64()),
    }
}

fn lower_node(b: &mut Builder, g: &Graph, h: Handle, args: &[Slot]) -> R {
    let n = g.node(h);
    let ty = n.ty.clone();
    let (d, shape) = (ty.dtype, ty.shape.clone());
    let a0 = args.first().copied();
    let x = || a0.expect("the op has an argument");
    match &n.op {
        Op::Input(k) => Ok(b.emit(Call::Load(Source::Input(*k)), &[], d, shape)),
        Op::Param(k) => Ok(b.emit(Call::Load(Source::Param(*k)), &[], d, shape)),
        Op::State(k) => Ok(b.emit(Call::Load(Source::State(*k)), &[], d, shape)),
        Op::Const(v, cd) => Ok(b.scalar(*v, *cd)),
        Op::DimSize(dim) => Ok(b.emit(Call::DimValue(dim.clone()), &[], DType::I64, vec![])),
        Op::Fill(v, fd, s) => {
            let c = b.scalar(*v, *fd);
            Ok(b.broadcast_to(c, s))
        }
        Op::Iota(len) => Ok(b.emit(Call::Arange(len.clone()), &[], DType::I64, shape)),
        Op::Rand(kind, s) => match b.target {
            Target::Cpu => Ok(b.emit(Call::Rand(*kind, s.clone()), args, DType::F64, shape)),
            Target::Portable => Err(format!(
                "`{}` (the counter-based generator) needs 64-bit integer bit operations, which \
                 candle has only in this crate's CPU kernel; run this program on the CPU device",
                match kind {
                    RandKind::Normal => "rand_normal",
                    RandKind::Uniform => "rand_uniform",
                }
            )),
        },
        Op::Unary(u) => lower_unary(b, *u, x()),
        Op::Binary(op) => lower_binary(b, *op, args[0], args[1]),
        Op::Where => b.where_(args[0], args[1], args[2]),
        Op::Cast(to) => {
            let from = b.dtype(x());
            Ok(match (from, *to) {
                (f, t) if f == t => x(),
                (_, DType::Bool) => {
                    let z = b.scalar(Scalar::F(0.0), from);
                    b.cmp(Cmp::Ne, x(), z)?
                }
                // float→int truncates toward zero and saturates (NaN → 0), like `as`.
                _ => b.cast(x(), *to),
            })
        }
        Op::StopGrad => Ok(b.emit(Call::Detach, &[x()], d, shape)),
        Op::Reduce { kind, axes, .. } => {
            let xs = b.shape(x());
            let ks = Graph::keepdims_shape(&xs, axes);
            let r = match kind {
                ReduceKind::Sum => b.emit(Call::SumKeepdim(axes.clone()), &[x()], d, ks),
                ReduceKind::Max | ReduceKind::Min => {
                    // candle reduces one axis at a time; an extreme (and the
                    // presence of a NaN) does not depend on the order.
                    let mut m = x();
                    let mut any = if d.is_float() {
                        Some(b.isnan(x())?)
                    } else {
                        None
                    };
                    let mut cur = xs.clone();
                    for &axis in axes {
                        cur[axis] = Dim::lit(1);
                        let call = if *kind == ReduceKind::Max {
                            Call::MaxKeepdim(axis)
                        } else {
                            Call::MinKeepdim(axis)
                        };
                        m = b.emit(call, &[m], d, cur.clone());
                        any = any.map(|a| {
                            b.emit(Call::MaxKeepdim(axis), &[a], DType::Bool, cur.clone())
                        });
                    }
                    match any {
                        // NaN propagates (candle's max skips it).
                        Some(any) => {
                            let nanv = b.f(f64::NAN, m);
                            b.where_(any, nanv, m)?
                        }
                        None => m,
                    }
                }
            };
            Ok(b.reshape(r, &shape))
        }
        Op::ArgMax(axis) | Op::ArgMin(axis) => {
            let axis = *axis;
            let xv = b.emit(
                Call::NonEmptyAxis {
                    axis,
                    op: if matches!(n.op, Op::ArgMax(_)) {
                        "argmax"
                    } else {
                        "argmin"
                    },
                },
                &[x()],
                b.dtype(x()),
                b.shape(x()),
            );
            let mut ks = b.shape(xv);
            ks[axis] = Dim::lit(1);
            let call = if matches!(n.op, Op::ArgMax(_)) {
                Call::MaxKeepdim(axis)
            } else {
                Call::MinKeepdim(axis)
            };
            let m = b.emit(call, &[xv], b.dtype(xv), ks.clone());
            let eq = b.cmp(Cmp::Eq, xv, m)?;
            let hit = if b.dtype(xv).is_float() {
                // NaN wins: the first NaN, if any.
                let nan = b.isnan(xv)?;
                let any = b.emit(Call::MaxKeepdim(axis), &[nan], DType::Bool, ks);
                b.where_(any, nan, eq)?
            } else {
                eq
            };
            b.first_hit(hit, axis, &shape)
        }
        Op::Norm { axes, .. } => {
            let xs = b.shape(x());
            let sq = b.unary(Unary::Sqr, x());
            let s = b.emit(
                Call::SumKeepdim(axes.clone()),
                &[sq],
                d,
                Graph::keepdims_shape(&xs, axes),
            );
            let r = b.unary(Unary::Sqrt, s);
            Ok(b.reshape(r, &shape))
        }
        Op::Reshape(s) => Ok(b.emit(Call::Reshape(s.clone()), &[x()], d, shape)),
        Op::BroadcastTo(s) => Ok(b.emit(Call::BroadcastAs(s.clone()), &[x()], d, shape)),
        Op::Transpose(perm) => Ok(b.emit(Call::Permute(perm.clone()), &[x()], d, shape)),
        Op::Slice {
            axis,
            start,
            len,
            step,
        } => {
            if *step == 1 {
                Ok(b.emit(
                    Call::Narrow {
                        axis: *axis,
                        start: start.clone(),
                        len: len.clone(),
                    },
                    &[x()],
                    d,
                    shape,
                ))
            } else {
                let full = b.shape(x())[*axis].clone();
                let pos = b.emit(
                    Call::SlicePositions {
                        start: start.clone(),
                        len: len.clone(),
                        step: *step,
                        full,
                    },
                    &[],
                    DType::I64,
                    vec![len.clone()],
                );
                Ok(b.emit(Call::IndexSelect(*axis), &[x(), pos], d, shape))
            }
        }
        Op::Pad {
            axis,
            start,
            full,
            step,
        } => {
            let len = b.shape(x())[*axis].clone();
            if *step == 1 {
                Ok(b.emit(
                    Call::PadWithZeros {
                        axis: *axis,
                        left: start.clone(),
                        right: full.sub(start).sub(&len),
                    },
                    &[x()],
                    d,
                    shape,
                ))
            } else {
                let pos = b.emit(
                    Call::SlicePositions {
                        start: start.clone(),
                        len: len.clone(),
                        step: *step,
                        full: full.clone(),
                    },
                    &[],
                    DType::I64,
                    vec![len],
                );
                let z = b.scalar(Scalar::F(0.0), d);
                let z = b.broadcast_to(z, &shape);
                Ok(b.emit(Call::IndexAdd(*axis), &[z, pos, x()], d, shape))
            }
        }
        Op::Reverse(axis) => Ok(b.emit(Call::Flip(*axis), &[x()], d, shape)),
        Op::Concat(axis) => Ok(b.emit(Call::Cat(*axis), args, d, shape)),
        Op::TakeAlong(axis) => {
            let idx = b.check_index(args[1], args[0], *axis);
            Ok(b.emit(Call::Gather(*axis), &[args[0], idx], d, shape))
        }
        Op::ScatterAddAlong(axis) => {
            let idx = b.check_index(args[1], args[0], *axis);
            Ok(b.emit(Call::ScatterAdd(*axis), &[args[0], idx, args[2]], d, shape))
        }
        Op::IndexSelect(axis) => {
            let idx = b.check_index(args[1], args[0], *axis);
            let flat = b.flat(idx);
            let mut s = b.shape(args[0]);
            s[*axis] = b.shape(flat)[0].clone();
            let r = b.emit(Call::IndexSelect(*axis), &[args[0], flat], d, s);
            Ok(b.reshape(r, &shape))
        }
        Op::IndexAdd(axis) => {
            let idx = b.check_index(args[1], args[0], *axis);
            let flat = b.flat(idx);
            let mut s = b.shape(args[0]);
            s[*axis] = b.shape(flat)[0].clone();
            let v = b.reshape(args[2], &s);
            Ok(b.emit(Call::IndexAdd(*axis), &[args[0], flat, v], d, shape))
        }
        Op::ScatterSet(axis) => {
            // The interpreter reports a repeated id before an out-of-range one.
            let ids = b.shape(args[1]);
            let uniq = b.emit(
                Call::CheckUnique {
                    custom: b.target == Target::Cpu,
                },
                &[args[1]],
                DType::I64,
                ids,
            );
            let idx = b.check_index(uniq, args[0], *axis);
            let flat = b.flat(idx);
            let m = b.shape(flat)[0].clone();
            let mut s = b.shape(args[0]);
            s[*axis] = m.clone();
            let v = b.reshape(args[2], &s);
            let mut s1 = vec![Dim::lit(1); s.len()];
            s1[*axis] = m;
            let i = b.reshape(flat, &s1);
            let i = b.broadcast_to(i, &s);
            Ok(b.emit(Call::Scatter(*axis), &[args[0], i, v], d, shape))
        }
        Op::OneHot(depth) => {
            let idx = b.shape(x());
            let idx = b.emit(
                Call::CheckIndex {
                    axis: 0,
                    depth: Some(depth.clone()),
                    minus_one: true,
                },
                &[x()],
                DType::I64,
                idx,
            );
            let mut s = b.shape(idx);
            s.push(Dim::lit(1));
            let col = b.reshape(idx, &s);
            let classes = b.emit(
                Call::Arange(depth.clone()),
                &[],
                DType::I64,
                vec![depth.clone()],
            );
            let hit = b.cmp(Cmp::Eq, col, classes)?;
            Ok(b.cast(hit, DType::F32))
        }
        Op::MatMul => Ok(b.emit(Call::Matmul, args, d, shape)),
        Op::Argsort { axis, descending } => match b.target {
            Target::Cpu => Ok(b.emit(
                Call::ArgsortStable {
                    axis: *axis,
                    descending: *descending,
                },
                &[x()],
                DType::I64,
                shape,
            )),
            Target::Portable => argsort_by_rank(b, x(), *axis, *descending),
        },
        Op::Cumsum { axis, reverse } => match b.target {
            Target::Cpu => Ok(b.emit(
                Call::CumsumScan {
                    axis: *axis,
                    reverse: *reverse,
                },
                &[x()],
                d,
                shape,
            )),
            Target::Portable => {
                let mut v = x();
                if *reverse {
                    v = b.emit(Call::Flip(*axis), &[v], d, shape.clone());
                }
                v = b.emit(Call::Cumsum(*axis), &[v], d, shape.clone());
                if *reverse {
                    v = b.emit(Call::Flip(*axis), &[v], d, shape);
                }
                Ok(v)
            }
        },
        Op::LogCumSumExp { axis, reverse } => match b.target {
            Target::Cpu => Ok(b.emit(
                Call::LogCumSumExpScan {
                    axis: *axis,
                    reverse: *reverse,
                },
                &[x()],
                d,
                shape,
            )),
            Target::Portable => logcumsumexp_pairwise(b, x(), *axis, *reverse),
        },
        Op::SearchSorted { right } => match b.target {
            Target::Cpu => Ok(b.emit(
                Call::SearchSorted { right: *right },
                args,
                DType::I64,
                shape,
            )),
            Target::Portable => searchsorted_by_count(b, args[0], args[1], *right),
        },
    }
}

/// `log Σ_{j ≤ i} exp(x_j)` (j ≥ i reversed) as a masked logsumexp over an
/// [.., len, len] matrix, shifted by each row's max. O(len²) per row.
fn logcumsumexp_pairwise(b: &mut Builder, x: Slot, axis: usize, reverse: bool) -> R {
    let shape = b.shape(x);
    let r = shape.len();
    let last = r - 1;
    let mut perm: Vec<usize> = (0..r).filter(|&i| i != axis).collect();
    perm.push(axis);
    let mut inv = vec![0; r];
    for (i, &p) in perm.iter().enumerate() {
        inv[p] = i;
    }
    let ts: Shape = perm.iter().map(|&p| shape[p].clone()).collect();
    let d = b.dtype(x);
    let xt = b.emit(Call::Permute(perm), &[x], d, ts.clone());
    let len = ts[last].clone();
    let mut sj = ts.clone();
    sj.insert(last, Dim::lit(1));
    let xj = b.reshape(xt, &sj);
    let iota = b.emit(
        Call::Arange(len.clone()),
        &[],
        DType::I64,
        vec![len.clone()],
    );
    let pi = b.reshape(iota, &vec![len.clone(), Dim::lit(1)]);
    let pj = b.reshape(iota, &vec![Dim::lit(1), len.clone()]);
    let inside = b.cmp(if reverse { Cmp::Ge } else { Cmp::Le }, pj, pi)?;
    let ninf = b.f(f64::NEG_INFINITY, x);
    let m = b.where_(inside, xj, ninf)?;
    let mut ks = b.shape(m);
    ks[last + 1] = Dim::lit(1);
    let mx = b.emit(Call::MaxKeepdim(last + 1), &[m], d, ks.clone());
    // An all -inf row (or one with +inf) must not shift by a non-finite max.
    let z = b.bin(Binary::Sub, mx, mx)?;
    let fin = b.cmp_s(Cmp::Eq, z, Scalar::F(0.0))?;
    let zero = b.f(0.0, x);
    let shift = b.where_(fin, mx, zero)?;
    let t = b.bin(Binary::Sub, m, shift)?;
    let e = b.unary(Unary::Exp, t);
    let s = b.emit(Call::SumKeepdim(vec![last + 1]), &[e], d, ks);
    let l = b.unary(Unary::Log, s);
    let out = b.bin(Binary::Add, shift, l)?;
    let out = b.reshape(out, &ts);
    Ok(b.emit(Call::Permute(inv), &[out], d, shape))
}

/// `searchsorted` as a count: for an ascending `sorted` (NaN last), the first
/// position not before v is the number of entries before it. O(len·n).
fn searchsorted_by_count(b: &mut Builder, sorted: Slot, vals: Slot, right: bool) -> R {
    let vs = b.shape(vals);
    let mut col = vs.clone();
    col.push(Dim::lit(1));
    let v = b.reshape(vals, &col);
    let before = b.cmp(if right { Cmp::Le } else { Cmp::Lt }, sorted, v)?;
    let before = if b.dtype(sorted).is_float() {
        // Every number sorts before a NaN value.
        let vn = b.isnan(v)?;
        let an = b.isnan(sorted)?;
        let num = b.not(an)?;
        b.where_(vn, num, before)?
    } else {
        before
    };
    let before = b.cast(before, DType::I64);
    let r = vs.len();
    let mut ks = b.shape(before);
    ks[r] = Dim::lit(1);
    let c = b.emit(Call::SumKeepdim(vec![r]), &[before], DType::I64, ks);
    Ok(b.reshape(c, &vs))
}

fn lower_unary(b: &mut Builder, u: UnaryOp, x: Slot) -> R {
    let d = b.dtype(x);
    match u {
        UnaryOp::Neg => {
            if d == DType::I64 {
                // candle has no integer `neg`.
                let z = b.scalar(Scalar::I(0), d);
                b.bin(Binary::Sub, z, x)
            } else {
                Ok(b.unary(Unary::Neg, x))
            }
        }
        UnaryOp::Exp => Ok(b.unary(Unary::Exp, x)),
        UnaryOp::Log => Ok(b.unary(Unary::Log, x)),
        UnaryOp::Log1p => b.log1p(x),
        UnaryOp::Expm1 => b.expm1(x),
        UnaryOp::Sqrt => Ok(b.unary(Unary::Sqrt, x)),
        UnaryOp::Rsqrt => {
            let s = b.unary(Unary::Sqrt, x);
            Ok(b.unary(Unary::Recip, s))
        }
        UnaryOp::Abs => Ok(b.unary(Unary::Abs, x)),
        UnaryOp::Sign => {
            let s = b.unary(Unary::Sign, x);
            if d.is_float() {
                let nan = b.isnan(x)?;
                b.where_(nan, x, s)
            } else {
                Ok(s)
            }
        }
        UnaryOp::Floor => Ok(b.unary(Unary::Floor, x)),
        UnaryOp::Round => {
            // Ties to even: candle rounds them away from zero; a tie is |r - x| = 1/2
            // (exact below 2^52), and then 2·round(x/2) is the even neighbour.
            let r = b.unary(Unary::Round, x);
            let diff = b.bin(Binary::Sub, r, x)?;
            let ad = b.unary(Unary::Abs, diff);
            let tie = b.cmp_s(Cmp::Eq, ad, Scalar::F(0.5))?;
            let half = b.f(0.5, x);
            let h = b.bin(Binary::Mul, x, half)?;
            let h = b.unary(Unary::Round, h);
            let two = b.f(2.0, x);
            let even = b.bin(Binary::Mul, h, two)?;
            b.where_(tie, even, r)
        }
        UnaryOp::Tanh => Ok(b.unary(Unary::Tanh, x)),
        UnaryOp::Sigmoid => {
            // 1/(1+e) for x ≥ 0 and e/(1+e) below, with e = exp(-|x|) ≤ 1.
            let a = b.unary(Unary::Abs, x);
            let na = b.unary(Unary::Neg, a);
            let e = b.unary(Unary::Exp, na);
            let one = b.f(1.0, x);
            let den = b.bin(Binary::Add, one, e)?;
            let p = b.unary(Unary::Recip, den);
            let q = b.bin(Binary::Div, e, den)?;
            let zero = b.f(0.0, x);
            let pos = b.cmp(Cmp::Ge, x, zero)?;
            b.where_(pos, p, q)
        }
        UnaryOp::LogSigmoid => {
            let nx = b.unary(Unary::Neg, x);
            let s = b.softplus(nx)?;
            Ok(b.unary(Unary::Neg, s))
        }
        UnaryOp::Softplus => b.softplus(x),
        UnaryOp::Relu => {
            // NaN stays NaN (`NaN <= 0` is false).
            let zero = b.f(0.0, x);
            let le = b.cmp(Cmp::Le, x, zero)?;
            b.where_(le, zero, x)
        }
        UnaryOp::Sin => Ok(b.unary(Unary::Sin, x)),
        UnaryOp::Cos => Ok(b.unary(Unary::Cos, x)),
        UnaryOp::Atanh => {
            // The interpreter's odd form: ½·log1p(2a / (1 - a)) with a = |x|, signed.
            let a = b.unary(Unary::Abs, x);
            let one = b.f(1.0, x);
            let two = b.f(2.0, x);
            let half = b.f(0.5, x);
            let num = b.bin(Binary::Mul, two, a)?;
            let den = b.bin(Binary::Sub, one, a)?;
            let q = b.bin(Binary::Div, num, den)?;
            let l = b.log1p(q)?;
            let r = b.bin(Binary::Mul, half, l)?;
            let zero = b.f(0.0, x);
            let neg = b.cmp(Cmp::Lt, x, zero)?;
            let nr = b.unary(Unary::Neg, r);
            b.where_(neg, nr, r)
        }
        UnaryOp::Asinh => {
            // Rust's `asinh` of |x|: log1p(a + a/(hypot(1, 1/a) + 1/a)), then the sign of x.
            let a = b.unary(Unary::Abs, x);
            let ia = b.unary(Unary::Recip, a);
            let ia2 = b.unary(Unary::Sqr, ia);
            let one = b.f(1.0, x);
            let h = b.bin(Binary::Add, one, ia2)?;
            let h = b.unary(Unary::Sqrt, h);
            let den = b.bin(Binary::Add, h, ia)?;
            let q = b.bin(Binary::Div, a, den)?;
            let s = b.bin(Binary::Add, a, q)?;
            let r = b.log1p(s)?;
            // Past 1e150 the interpreter takes log(a) + log 2 (no overflow in f64).
            let la = b.unary(Unary::Log, a);
            let ln2 = b.f(std::f64::consts::LN_2, x);
            let big_r = b.bin(Binary::Add, la, ln2)?;
            let big = b.cmp_s(Cmp::Gt, a, Scalar::F(1e150))?;
            let r = b.where_(big, big_r, r)?;
            let zero = b.f(0.0, x);
            let neg = b.cmp(Cmp::Lt, x, zero)?;
            let nr = b.unary(Unary::Neg, r);
            b.where_(neg, nr, r)
        }
        UnaryOp::Not => b.not(x),
        UnaryOp::IsFinite => {
            // x - x is 0 for finite x and NaN for ±inf and NaN.
            let z = b.bin(Binary::Sub, x, x)?;
            b.cmp_s(Cmp::Eq, z, Scalar::F(0.0))
        }
    }
}

fn lower_binary(b: &mut Builder, op: BinaryOp, x: Slot, y: Slot) -> R {
    let d = b.dtype(x);
    match op {
        BinaryOp::Add => b.bin(Binary::Add, x, y),
        BinaryOp::Sub => b.bin(Binary::Sub, x, y),
        BinaryOp::Mul => b.bin(Binary::Mul, x, y),
        BinaryOp::Div => b.bin(Binary::Div, x, y),
        BinaryOp::Pow => match b.target {
            // libm's powf per element (in f64), as the interpreter: `x ** 2` is `x * x`.
            Target::Cpu => {
                let s = broadcast_shapes(&b.shape(x), &b.shape(y))?;
                let xb = b.broadcast_to(x, &s);
                let yb = b.broadcast_to(y, &s);
                Ok(b.emit(Call::Powf, &[xb, yb], d, s))
            }
            Target::Portable => pow(b, x, y),
        },
        BinaryOp::Maximum | BinaryOp::Minimum => {
            let c = if op == BinaryOp::Maximum {
                Cmp::Ge
            } else {
                Cmp::Le
            };
            let m = b.cmp(c, x, y)?;
            let r = b.where_(m, x, y)?;
            if d.is_float() {
                b.nan_of2(r, x, y)
            } else {
                Ok(r)
            }
        }
        BinaryOp::FloorDiv => {
            if d.is_float() {
                let q = b.bin(Binary::Div, x, y)?;
                Ok(b.unary(Unary::Floor, q))
            } else {
                // Floor division from candle's truncating one. MIN / -1 wraps to
                // MIN as in the interpreter (x / 1 gives that without overflow).
                let y = b.emit(Call::CheckNonZero, &[y], d, b.shape(y));
                let min = b.cmp_s(Cmp::Eq, x, Scalar::I(i64::MIN))?;
                let m1 = b.cmp_s(Cmp::Eq, y, Scalar::I(-1))?;
                let wrap = b.and(min, m1)?;
                let one = b.scalar(Scalar::I(1), d);
                let ys = b.where_(wrap, one, y)?;
                let q = b.bin(Binary::Div, x, ys)?;
                let qy = b.bin(Binary::Mul, q, ys)?;
                let r = b.bin(Binary::Sub, x, qy)?;
                let rnz = b.cmp_s(Cmp::Ne, r, Scalar::I(0))?;
                let rneg = b.cmp_s(Cmp::Lt, r, Scalar::I(0))?;
                let yneg = b.cmp_s(Cmp::Lt, ys, Scalar::I(0))?;
                let differ = b.cmp(Cmp::Ne, rneg, yneg)?;
                let adj = b.and(rnz, differ)?;
                let adj = b.cast(adj, DType::I64);
                b.bin(Binary::Sub, q, adj)
            }
        }
        BinaryOp::Lt => b.cmp(Cmp::Lt, x, y),
        BinaryOp::Le => b.cmp(Cmp::Le, x, y),
        BinaryOp::Gt => b.cmp(Cmp::Gt, x, y),
        BinaryOp::Ge => b.cmp(Cmp::Ge, x, y),
        BinaryOp::Eq => b.cmp(Cmp::Eq, x, y),
        BinaryOp::Ne => b.cmp(Cmp::Ne, x, y),
        BinaryOp::And => b.and(x, y),
        BinaryOp::Or => b.or(x, y),
    }
}

/// Portable `powf` with IEEE rules: `exp(y·log|x|)`, the sign of an odd integer power
/// of a negative base, NaN for a negative base and a fractional exponent, and
/// 1 for `x^0` and `1^y`.
fn pow(b: &mut Builder, x: Slot, y: Slot) -> R {
    let a = b.unary(Unary::Abs, x);
    let la = b.unary(Unary::Log, a);
    let t = b.bin(Binary::Mul, y, la)?;
    let r = b.unary(Unary::Exp, t);
    let fy = b.unary(Unary::Floor, y);
    let is_int = b.cmp(Cmp::Eq, fy, y)?;
    let half = b.f(0.5, y);
    let hy = b.bin(Binary::Mul, y, half)?;
    let fh = b.unary(Unary::Floor, hy);
    let two = b.f(2.0, y);
    let ev = b.bin(Binary::Mul, fh, two)?;
    let odd = b.cmp(Cmp::Ne, ev, y)?;
    let odd = b.and(is_int, odd)?;
    let nr = b.unary(Unary::Neg, r);
    let signed = b.where_(odd, nr, r)?;
    let nan = b.f(f64::NAN, x);
    let neg_base = b.where_(is_int, signed, nan)?;
    // A negative base, -0.0 included (1/-0 = -inf).
    let zero = b.f(0.0, x);
    let lt = b.cmp(Cmp::Lt, x, zero)?;
    let rx = b.unary(Unary::Recip, x);
    let nz = b.cmp(Cmp::Lt, rx, zero)?;
    let neg = b.or(lt, nz)?;
    let res = b.where_(neg, neg_base, r)?;
    // Correctly rounded where exp(y·log|x|) may miss by an ulp: `x ** 2` must
    // equal `x * x`, and `x ** -1` must equal `1 / x`.
    let sq = b.bin(Binary::Mul, x, x)?;
    let y2 = b.cmp_s(Cmp::Eq, y, Scalar::F(2.0))?;
    let res = b.where_(y2, sq, res)?;
    let rc = b.unary(Unary::Recip, x);
    let ym1 = b.cmp_s(Cmp::Eq, y, Scalar::F(-1.0))?;
    let res = b.where_(ym1, rc, res)?;
    let y1 = b.cmp_s(Cmp::Eq, y, Scalar::F(1.0))?;
    let res = b.where_(y1, x, res)?;
    let y0 = b.cmp_s(Cmp::Eq, y, Scalar::F(0.0))?;
    let x1 = b.cmp_s(Cmp::Eq, x, Scalar::F(1.0))?;
    let unit = b.or(y0, x1)?;
    let one = b.f(1.0, x);
    b.where_(unit, one, res)
}

/// Stable argsort without a sort primitive: the rank of element i is the
/// number of elements ordered before it (NaN last, ties by position), and
/// the permutation scatters each position to its rank. O(len²) per row.
fn argsort_by_rank(b: &mut Builder, x: Slot, axis: usize, descending: bool) -> R {
    let shape = b.shape(x);
    let r = shape.len();
    let last = r - 1;
    let mut perm: Vec<usize> = (0..r).filter(|&i| i != axis).collect();
    perm.push(axis);
    let mut inv = vec![0; r];
    for (i, &p) in perm.iter().enumerate() {
        inv[p] = i;
    }
    let ts: Shape = perm.iter().map(|&p| shape[p].clone()).collect();
    let d = b.dtype(x);
    let xt = b.emit(Call::Permute(perm), &[x], d, ts.clone());
    let len = ts[last].clone();
    let mut si = ts.clone();
    si.push(Dim::lit(1));
    let mut sj = ts.clone();
    sj.insert(last, Dim::lit(1));
    let xi = b.reshape(xt, &si);
    let xj = b.reshape(xt, &sj);
    let (nan_i, nan_j) = if d.is_float() {
        (Some(b.isnan(xi)?), Some(b.isnan(xj)?))
    } else {
        (None, None)
    };
    let lt = b.cmp(if descending { Cmp::Gt } else { Cmp::Lt }, xj, xi)?;
    let eq = b.cmp(Cmp::Eq, xj, xi)?;
    let iota = b.emit(
        Call::Arange(len.clone()),
        &[],
        DType::I64,
        vec![len.clone()],
    );
    let pi = b.reshape(iota, &vec![len.clone(), Dim::lit(1)]);
    let pj = b.reshape(iota, &vec![Dim::lit(1), len.clone()]);
    let earlier = b.cmp(Cmp::Lt, pj, pi)?;
    let (lt, eq) = match (nan_i, nan_j) {
        (Some(ni), Some(nj)) => {
            // j before i: a number before a NaN; two NaNs tie.
            let not_nj = b.not(nj)?;
            let num_first = b.and(not_nj, ni)?;
            let lt = b.or(lt, num_first)?;
            let both = b.and(ni, nj)?;
            let eq = b.or(eq, both)?;
            (lt, eq)
        }
        _ => (lt, eq),
    };
    let tie = b.and(eq, earlier)?;
    let before = b.or(lt, tie)?;
    let before = b.cast(before, DType::I64);
    let rank = b.emit(Call::SumKeepdim(vec![last + 1]), &[before], DType::I64, si);
    let rank = b.reshape(rank, &ts);
    let mut s1 = vec![Dim::lit(1); r];
    s1[last] = len;
    let pos = b.reshape(iota, &s1);
    let pos = b.broadcast_to(pos, &ts);
    let z = b.scalar(Scalar::I(0), DType::I64);
    let z = b.broadcast_to(z, &ts);
    let sorted = b.emit(Call::Scatter(last), &[z, rank, pos], DType::I64, ts);
    Ok(b.emit(Call::Permute(inv), &[sorted], DType::I64, shape))
}
