//! Reductions: `sum`, `max`, `min` over axes, `argmax`/`argmin`, `norm`.

use super::{BinaryOp, Op, ReduceKind, arity, check_axis};
use crate::dim::Dim;
use crate::ir::{Graph, Handle, Ty};
use crate::kernels::{EvalError, EvalResult, floats, split_axis};
use crate::value::{DType, Data, Tensor};

fn reduced_shape(ty: &Ty, axes: &[usize], keepdims: bool) -> Vec<Dim> {
    ty.shape
        .iter()
        .enumerate()
        .filter_map(|(i, d)| {
            if axes.contains(&i) {
                keepdims.then(|| Dim::lit(1))
            } else {
                Some(d.clone())
            }
        })
        .collect()
}

fn check_axes(axes: &[usize], rank: usize, op: &str) -> Result<(), String> {
    for (k, &a) in axes.iter().enumerate() {
        check_axis(a, rank, op)?;
        if axes[..k].contains(&a) {
            return Err(format!("`{op}`: axis {a} is listed twice"));
        }
    }
    if !axes.windows(2).all(|w| w[0] < w[1]) {
        return Err(format!("`{op}`: axes must be sorted"));
    }
    Ok(())
}

pub fn infer(op: &Op, args: &[&Ty]) -> Result<Ty, String> {
    let name = op.name();
    arity(args, 1, &name)?;
    let x = args[0];
    match op {
        Op::Reduce { axes, keepdims, .. } => {
            check_axes(axes, x.rank(), &name)?;
            if x.dtype == DType::Bool {
                return Err(format!("`{name}` needs numbers, got bool"));
            }
            Ok(Ty::new(x.dtype, reduced_shape(x, axes, *keepdims)))
        }
        Op::ArgMax(a) | Op::ArgMin(a) => {
            check_axis(*a, x.rank(), &name)?;
            if x.dtype == DType::Bool {
                return Err(format!("`{name}` needs numbers, got bool"));
            }
            Ok(Ty::new(DType::I64, reduced_shape(x, &[*a], false)))
        }
        Op::Norm { axes, keepdims } => {
            check_axes(axes, x.rank(), &name)?;
            if !x.dtype.is_float() {
                return Err(format!("`norm` needs a float value, got {}", x.dtype));
            }
            Ok(Ty::new(x.dtype, reduced_shape(x, axes, *keepdims)))
        }
        _ => unreachable!("not a reduction"),
    }
}

pub fn vjp(op: &Op, gr: &mut Graph, node: Handle, g: Handle) -> Vec<Option<Handle>> {
    let n = gr.node(node).clone();
    let (x, sp) = (n.args[0], n.span);
    let xs = gr.ty(x).shape.clone();
    match op {
        Op::Reduce {
            kind,
            axes,
            keepdims,
        } => {
            let ks = Graph::keepdims_shape(&xs, axes);
            let gk = if *keepdims {
                g
            } else {
                gr.reshape(g, ks.clone(), sp)
            };
            let gb = gr.broadcast_to(gk, xs.clone(), sp);
            match kind {
                ReduceKind::Sum => vec![Some(gb)],
                ReduceKind::Max | ReduceKind::Min => {
                    // Every element equal to the extreme gets an equal share (as
                    // `torch.amax` and `jax.numpy.max`): a tie is symmetric, and the
                    // shares sum to the cotangent. A NaN extreme equals nothing, so
                    // no element gets a gradient there.
                    let yk = if *keepdims {
                        node
                    } else {
                        gr.reshape(node, ks, sp)
                    };
                    let hit = gr.binary(BinaryOp::Eq, x, yk, sp);
                    let d = gr.ty(x).dtype;
                    let hitf = gr.cast(hit, d, sp);
                    let cnt = gr.sum(hitf, axes.clone(), true, sp);
                    let share = gr.div(gk, cnt, sp);
                    let share = gr.broadcast_to(share, xs.clone(), sp);
                    vec![Some(gr.mask(hit, share, sp))]
                }
            }
        }
        Op::ArgMax(_) | Op::ArgMin(_) => vec![None],
        Op::Norm { axes, keepdims } => {
            // d‖x‖/dx = x/‖x‖, and 0 at x = 0 (not NaN).
            let ks = Graph::keepdims_shape(&xs, axes);
            let gk = if *keepdims {
                g
            } else {
                gr.reshape(g, ks.clone(), sp)
            };
            let nk = if *keepdims {
                node
            } else {
                gr.reshape(node, ks, sp)
            };
            let zero = gr.float_like(0.0, x, sp);
            let one = gr.float_like(1.0, x, sp);
            let pos = gr.binary(BinaryOp::Gt, nk, zero, sp);
            let safe = gr.where_(pos, nk, one, sp);
            let t = gr.div(gk, safe, sp);
            let t = gr.mask(pos, t, sp);
            vec![Some(gr.mul(x, t, sp))]
        }
        _ => unreachable!("not a reduction"),
    }
}

/// Reduces a row-major tensor over `axes` with `f` folding into `init`.
fn fold_axes(
    x: &[f64],
    shape: &[usize],
    axes: &[usize],
    init: f64,
    f: impl Fn(f64, f64) -> f64,
) -> (Vec<f64>, Vec<usize>) {
    let out_shape: Vec<usize> = shape
        .iter()
        .enumerate()
        .map(|(i, &d)| if axes.contains(&i) { 1 } else { d })
        .collect();
    let n_out: usize = out_shape.iter().product();
    let mut out = vec![init; n_out];
    let ost = crate::kernels::strides(&out_shape);
    let mut idx = vec![0usize; shape.len()];
    for &v in x {
        let o: usize = idx
            .iter()
            .enumerate()
            .map(|(i, &k)| if axes.contains(&i) { 0 } else { k * ost[i] })
            .sum();
        out[o] = f(out[o], v);
        for d in (0..shape.len()).rev() {
            idx[d] += 1;
            if idx[d] < shape[d] {
                break;
            }
            idx[d] = 0;
        }
    }
    (out, out_shape)
}

fn final_shape(shape: &[usize], axes: &[usize], keepdims: bool) -> Vec<usize> {
    shape
        .iter()
        .enumerate()
        .filter_map(|(i, &d)| {
            if axes.contains(&i) {
                keepdims.then_some(1)
            } else {
                Some(d)
            }
        })
        .collect()
}

pub fn eval(op: &Op, args: &[&Tensor]) -> EvalResult {
    let x = args[0];
    match op {
        Op::Reduce {
            kind,
            axes,
            keepdims,
        } => {
            let shape = final_shape(&x.shape, axes, *keepdims);
            match &x.data {
                Data::F(v) => {
                    let (out, _) = match kind {
                        // f64 accumulation: the oracle's sums are exact enough to judge others.
                        ReduceKind::Sum => fold_axes(v, &x.shape, axes, 0.0, |a, b| a + b),
                        ReduceKind::Max => {
                            fold_axes(v, &x.shape, axes, f64::NEG_INFINITY, |a, b| {
                                if a.is_nan() || b.is_nan() {
                                    f64::NAN
                                } else {
                                    a.max(b)
                                }
                            })
                        }
                        ReduceKind::Min => fold_axes(v, &x.shape, axes, f64::INFINITY, |a, b| {
                            if a.is_nan() || b.is_nan() {
                                f64::NAN
                            } else {
                                a.min(b)
                            }
                        }),
                    };
                    Ok(Tensor::from_f64(x.dtype, shape, out))
                }
                Data::I(v) => Ok(Tensor::from_i64(shape, fold_ints(v, &x.shape, axes, *kind))),
                Data::B(_) => Err(EvalError::Other("internal: reduce on bool".into())),
            }
        }
        Op::ArgMax(a) | Op::ArgMin(a) => {
            let is_max = matches!(op, Op::ArgMax(_));
            let (outer, len, inner) = split_axis(&x.shape, *a);
            if len == 0 && outer * inner > 0 {
                return Err(EvalError::Other(format!(
                    "`{}` over an empty axis",
                    op.name()
                )));
            }
            let vals: Vec<f64> = x.to_f64_vec();
            let mut out = Vec::with_capacity(outer * inner);
            for o in 0..outer {
                for i in 0..inner {
                    let mut best = 0usize;
                    let mut bv = vals[o * len * inner + i];
                    for k in 1..len {
                        let v = vals[o * len * inner + k * inner + i];
                        // NaN wins (as in NumPy); otherwise strict, so ties keep the lowest index.
                        let better = if bv.is_nan() {
                            false
                        } else if v.is_nan() {
                            true
                        } else if is_max {
                            v > bv
                        } else {
                            v < bv
                        };
                        if better {
                            best = k;
                            bv = v;
                        }
                    }
                    out.push(best as i64);
                }
            }
            Ok(Tensor::from_i64(final_shape(&x.shape, &[*a], false), out))
        }
        Op::Norm { axes, keepdims } => {
            let v = floats(x);
            let (out, _) = fold_axes(v, &x.shape, axes, 0.0, |a, b| a + b * b);
            Ok(Tensor::from_f64(
                x.dtype,
                final_shape(&x.shape, axes, *keepdims),
                out.into_iter().map(f64::sqrt).collect(),
            ))
        }
        _ => unreachable!("not a reduction"),
    }
}

fn fold_ints(vals: &[i64], shape: &[usize], axes: &[usize], kind: ReduceKind) -> Vec<i64> {
    let init = match kind {
        ReduceKind::Sum => 0i64,
        ReduceKind::Max => i64::MIN,
        ReduceKind::Min => i64::MAX,
    };
    let out_shape: Vec<usize> = shape
        .iter()
        .enumerate()
        .map(|(i, &d)| if axes.contains(&i) { 1 } else { d })
        .collect();
    let n_out: usize = out_shape.iter().product();
    let mut out = vec![init; n_out];
    let ost = crate::kernels::strides(&out_shape);
    let mut idx = vec![0usize; shape.len()];
    for &x in vals {
        let o: usize = idx
            .iter()
            .enumerate()
            .map(|(i, &k)| if axes.contains(&i) { 0 } else { k * ost[i] })
            .sum();
        out[o] = match kind {
            ReduceKind::Sum => out[o].wrapping_add(x),
            ReduceKind::Max => out[o].max(x),
            ReduceKind::Min => out[o].min(x),
        };
        for d in (0..shape.len()).rev() {
            idx[d] += 1;
            if idx[d] < shape[d] {
                break;
            }
            idx[d] = 0;
        }
    }
    out
}
