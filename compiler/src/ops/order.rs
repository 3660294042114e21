//! Ordering: stable `argsort`, `cumsum`, `logcumsumexp`, `searchsorted` (sort,
//! quantile and top-k are composed from these with `take_along_axis`, so their
//! gradients come free).

use super::{BinaryOp, Op, UnaryOp, arity, check_axis};
use crate::ir::{Graph, Handle, Ty};
use crate::kernels::{EvalResult, floats, split_axis};
use crate::value::{DType, Data, Tensor};

pub fn infer(op: &Op, args: &[&Ty]) -> Result<Ty, String> {
    if let Op::SearchSorted { .. } = op {
        return infer_search(args);
    }
    let name = op.name();
    arity(args, 1, &name)?;
    let x = args[0];
    match op {
        Op::Argsort { axis, .. } => {
            check_axis(*axis, x.rank(), &name)?;
            if x.dtype == DType::Bool {
                return Err("`argsort` needs numbers, got bool".into());
            }
            Ok(Ty::new(DType::I64, x.shape.clone()))
        }
        Op::Cumsum { axis, .. } => {
            check_axis(*axis, x.rank(), &name)?;
            if !x.dtype.is_float() {
                return Err(format!("`cumsum` needs a float value, got {}", x.dtype));
            }
            Ok(x.clone())
        }
        Op::LogCumSumExp { axis, .. } => {
            check_axis(*axis, x.rank(), &name)?;
            if !x.dtype.is_float() {
                return Err(format!(
                    "`logcumsumexp` needs a float value, got {}",
                    x.dtype
                ));
            }
            Ok(x.clone())
        }
        _ => unreachable!("not an ordering op"),
    }
}

/// The type rule of `searchsorted` (two arguments).
pub fn infer_search(args: &[&Ty]) -> Result<Ty, String> {
    arity(args, 2, "searchsorted")?;
    let (s, v) = (args[0], args[1]);
    if s.rank() != 1 {
        return Err(format!(
            "`searchsorted` needs a 1-D sorted sequence, got {s}"
        ));
    }
    if s.dtype != v.dtype || s.dtype == DType::Bool {
        return Err(format!(
            "`searchsorted` compares numbers of one dtype, got {} and {}",
            s.dtype, v.dtype
        ));
    }
    Ok(Ty::new(DType::I64, v.shape.clone()))
}

pub fn vjp(op: &Op, gr: &mut Graph, node: Handle, g: Handle) -> Vec<Option<Handle>> {
    let sp = gr.node(node).span;
    let g = {
        let shape = gr.ty(node).shape.clone();
        gr.broadcast_to(g, shape, sp)
    };
    match op {
        Op::Argsort { .. } => vec![None],
        Op::SearchSorted { .. } => vec![None, None],
        Op::LogCumSumExp { axis, reverse } => {
            // d out_i / d x_j = exp(x_j - out_i) for every i at or after j (in scan order).
            // Splitting g into its positive and negative parts keeps every sum in log space:
            // dx_j = exp(x_j + L⁺_j) - exp(x_j + L⁻_j), L± = rev-logcumsumexp(log g± - out),
            // and x_j + L±_j <= log Σ|g| never overflows. Entries where out = -inf carry nothing.
            let (axis, reverse) = (*axis, *reverse);
            let x = gr.node(node).args[0];
            let out = node;
            let zero = gr.float_like(0.0, x, sp);
            let ninf = gr.float_like(f64::NEG_INFINITY, x, sp);
            let fin = gr.unary(UnaryOp::IsFinite, out, sp);
            let part = |gr: &mut crate::ir::Graph, gpart: Handle| {
                let pos = gr.binary(BinaryOp::Gt, gpart, zero, sp);
                let one = gr.float_like(1.0, x, sp);
                let safe = gr.where_(pos, gpart, one, sp);
                let lg = gr.unary(UnaryOp::Log, safe, sp);
                let lg = gr.where_(pos, lg, ninf, sp);
                let t = gr.sub(lg, out, sp);
                let ok = gr.binary(BinaryOp::And, pos, fin, sp);
                let t = gr.where_(ok, t, ninf, sp);
                let l = gr.mk(
                    Op::LogCumSumExp {
                        axis,
                        reverse: !reverse,
                    },
                    vec![t],
                    sp,
                );
                let s = gr.add(x, l, sp);
                gr.unary(UnaryOp::Exp, s, sp)
            };
            let gp = gr.binary(BinaryOp::Maximum, g, zero, sp);
            let gn0 = gr.neg(g, sp);
            let gn = gr.binary(BinaryOp::Maximum, gn0, zero, sp);
            let a = part(gr, gp);
            let b = part(gr, gn);
            vec![Some(gr.sub(a, b, sp))]
        }
        Op::Cumsum { axis, reverse } => vec![Some(gr.mk(
            Op::Cumsum {
                axis: *axis,
                reverse: !reverse,
            },
            vec![g],
            sp,
        ))],
        _ => unreachable!("not an ordering op"),
    }
}

pub fn eval(op: &Op, args: &[&Tensor]) -> EvalResult {
    let x = args[0];
    match op {
        Op::LogCumSumExp { axis, reverse } => {
            let (outer, len, inner) = split_axis(&x.shape, *axis);
            let v = floats(x);
            let mut out = vec![0.0; v.len()];
            for o in 0..outer {
                for i in 0..inner {
                    let mut acc = f64::NEG_INFINITY;
                    for k in 0..len {
                        let kk = if *reverse { len - 1 - k } else { k };
                        let f = o * len * inner + kk * inner + i;
                        acc = logaddexp(acc, v[f]);
                        out[f] = acc;
                    }
                }
            }
            Ok(Tensor::from_f64(x.dtype, x.shape.clone(), out))
        }
        Op::SearchSorted { right } => {
            let s = x.to_f64_vec();
            let vals = args[1].to_f64_vec();
            // NaN sorts last, as in NumPy.
            let before = |a: f64, v: f64| -> bool {
                if v.is_nan() {
                    !a.is_nan()
                } else if *right {
                    a <= v
                } else {
                    a < v
                }
            };
            let out: Vec<i64> = vals
                .iter()
                .map(|&v| s.partition_point(|&a| before(a, v)) as i64)
                .collect();
            Ok(Tensor::from_i64(args[1].shape.clone(), out))
        }
        Op::Argsort { axis, descending } => {
            let (outer, len, inner) = split_axis(&x.shape, *axis);
            let v = x.to_f64_vec();
            // Integers compare as integers: above 2^53 distinct values can
            // share an f64 (NumPy and PyTorch compare them exactly).
            let ints = match &x.data {
                Data::I(v) => Some(v),
                _ => None,
            };
            let mut out = vec![0i64; x.len()];
            for o in 0..outer {
                for i in 0..inner {
                    let flat = |k: usize| o * len * inner + k * inner + i;
                    let at = |k: usize| v[flat(k)];
                    let mut order: Vec<usize> = (0..len).collect();
                    // Stable; NaN sorts last in both directions (as NumPy puts it last ascending).
                    order.sort_by(|&p, &q| {
                        if let Some(iv) = ints {
                            let c = iv[flat(p)].cmp(&iv[flat(q)]);
                            return if *descending { c.reverse() } else { c };
                        }
                        let (a, b) = (at(p), at(q));
                        match (a.is_nan(), b.is_nan()) {
                            (true, true) => std::cmp::Ordering::Equal,
                            (true, false) => std::cmp::Ordering::Greater,
                            (false, true) => std::cmp::Ordering::Less,
                            _ => {
                                let c = a.partial_cmp(&b).expect("no NaN here");
                                if *descending { c.reverse() } else { c }
                            }
                        }
                    });
                    for (k, &p) in order.iter().enumerate() {
                        out[o * len * inner + k * inner + i] = p as i64;
                    }
                }
            }
            Ok(Tensor::from_i64(x.shape.clone(), out))
        }
        Op::Cumsum { axis, reverse } => {
            let (outer, len, inner) = split_axis(&x.shape, *axis);
            let v = floats(x);
            let mut out = vec![0.0; v.len()];
            for o in 0..outer {
                for i in 0..inner {
                    let mut acc = 0.0;
                    for k in 0..len {
                        let kk = if *reverse { len - 1 - k } else { k };
                        let f = o * len * inner + kk * inner + i;
                        acc += v[f];
                        out[f] = acc;
                    }
                }
            }
            Ok(Tensor {
                dtype: x.dtype,
                shape: x.shape.clone(),
                data: Data::F(out),
            })
        }
        _ => unreachable!("not an ordering op"),
    }
}

/// log(exp(a) + exp(b)) without overflow; -inf is the identity.
pub fn logaddexp(a: f64, b: f64) -> f64 {
    if a == f64::NEG_INFINITY {
        return b;
    }
    if b == f64::NEG_INFINITY {
        return a;
    }
    let m = a.max(b);
    if m == f64::INFINITY {
        return m;
    }
    m + (-(a - b).abs()).exp().ln_1p()
}
