//! Layout: reshape, broadcast, transpose, slice (and its adjoint pad), reverse, concat.

use super::{Op, arity, broadcast_shapes, check_axis};
use crate::dim::{Dim, DimEnv, size, sizes};
use crate::ir::{Graph, Handle, Ty};
use crate::kernels::{EvalError, EvalResult, gather_from, split_axis, strides, unravel};
use crate::value::Tensor;

fn non_unit(s: &[Dim]) -> Vec<&Dim> {
    s.iter().filter(|d| !d.is_one()).collect()
}

pub fn infer(op: &Op, args: &[&Ty]) -> Result<Ty, String> {
    let name = op.name();
    match op {
        Op::Reshape(shape) => {
            arity(args, 1, &name)?;
            let x = args[0];
            let prod = |s: &[Dim]| s.iter().fold(Dim::lit(1), |a, d| a.mul(d));
            if non_unit(&x.shape) != non_unit(shape) && prod(&x.shape) != prod(shape) {
                return Err(format!(
                    "cannot reshape {} to {}",
                    crate::dim::shape_str(&x.shape),
                    crate::dim::shape_str(shape)
                ));
            }
            Ok(Ty::new(x.dtype, shape.clone()))
        }
        Op::BroadcastTo(shape) => {
            arity(args, 1, &name)?;
            let b = broadcast_shapes(&args[0].shape, shape)?;
            if &b != shape {
                return Err(format!(
                    "cannot broadcast {} to {}",
                    crate::dim::shape_str(&args[0].shape),
                    crate::dim::shape_str(shape)
                ));
            }
            Ok(Ty::new(args[0].dtype, shape.clone()))
        }
        Op::Transpose(perm) => {
            arity(args, 1, &name)?;
            let x = args[0];
            let mut seen = perm.clone();
            seen.sort_unstable();
            if seen != (0..x.rank()).collect::<Vec<_>>() {
                return Err(format!(
                    "`transpose`: {perm:?} is not a permutation of the {} axes",
                    x.rank()
                ));
            }
            Ok(Ty::new(
                x.dtype,
                perm.iter().map(|&p| x.shape[p].clone()).collect(),
            ))
        }
        Op::Slice {
            axis, len, step, ..
        } => {
            arity(args, 1, &name)?;
            check_axis(*axis, args[0].rank(), &name)?;
            if *step == 0 {
                return Err("slice step cannot be zero".into());
            }
            let mut s = args[0].shape.clone();
            s[*axis] = len.clone();
            Ok(Ty::new(args[0].dtype, s))
        }
        Op::Pad { axis, full, .. } => {
            arity(args, 1, &name)?;
            check_axis(*axis, args[0].rank(), &name)?;
            let mut s = args[0].shape.clone();
            s[*axis] = full.clone();
            Ok(Ty::new(args[0].dtype, s))
        }
        Op::Reverse(axis) => {
            arity(args, 1, &name)?;
            check_axis(*axis, args[0].rank(), &name)?;
            Ok(args[0].clone())
        }
        Op::Concat(axis) => {
            let first = args.first().ok_or("`concat` needs at least one value")?;
            check_axis(*axis, first.rank(), &name)?;
            let mut total = Dim::lit(0);
            for (k, a) in args.iter().enumerate() {
                if a.dtype != first.dtype || a.rank() != first.rank() {
                    return Err(format!(
                        "`concat`: value {k} is {a}, but value 0 is {first}"
                    ));
                }
                for i in 0..a.rank() {
                    if i != *axis && a.shape[i] != first.shape[i] {
                        return Err(format!(
                            "`concat`: value {k} has `{}` on axis {i} where value 0 has `{}`",
                            a.shape[i], first.shape[i]
                        ));
                    }
                }
                total = total.add(&a.shape[*axis]);
            }
            let mut s = first.shape.clone();
            s[*axis] = total;
            Ok(Ty::new(first.dtype, s))
        }
        _ => unreachable!("not a layout op"),
    }
}

pub fn vjp(op: &Op, gr: &mut Graph, node: Handle, g: Handle) -> Vec<Option<Handle>> {
    let n = gr.node(node).clone();
    let sp = n.span;
    let xs = gr.ty(n.args[0]).shape.clone();
    match op {
        Op::Reshape(_) => vec![Some(gr.reshape(g, xs, sp))],
        Op::BroadcastTo(_) => vec![Some(gr.sum_to(g, &xs, sp))],
        Op::Transpose(perm) => {
            let mut inv = vec![0; perm.len()];
            for (i, &p) in perm.iter().enumerate() {
                inv[p] = i;
            }
            vec![Some(gr.mk(Op::Transpose(inv), vec![g], sp))]
        }
        Op::Slice {
            axis, start, step, ..
        } => vec![Some(gr.mk(
            Op::Pad {
                axis: *axis,
                start: start.clone(),
                full: xs[*axis].clone(),
                step: *step,
            },
            vec![g],
            sp,
        ))],
        Op::Pad {
            axis, start, step, ..
        } => vec![Some(gr.mk(
            Op::Slice {
                axis: *axis,
                start: start.clone(),
                len: xs[*axis].clone(),
                step: *step,
            },
            vec![g],
            sp,
        ))],
        Op::Reverse(axis) => vec![Some(gr.mk(Op::Reverse(*axis), vec![g], sp))],
        Op::Concat(axis) => {
            let mut start = Dim::lit(0);
            let mut out = Vec::new();
            for a in n.args.clone() {
                let len = gr.ty(a).shape[*axis].clone();
                out.push(Some(gr.mk(
                    Op::Slice {
                        axis: *axis,
                        start: start.clone(),
                        len: len.clone(),
                        step: 1,
                    },
                    vec![g],
                    sp,
                )));
                start = start.add(&len);
            }
            out
        }
        _ => unreachable!("not a layout op"),
    }
}

/// Positions along an axis selected by a slice; errors if any falls outside `0..full`.
fn slice_positions(
    start: i64,
    len: usize,
    step: i64,
    full: usize,
) -> Result<Vec<usize>, EvalError> {
    (0..len)
        .map(|k| {
            let p = start + step * k as i64;
            if p >= 0 && (p as u64) < full as u64 {
                Ok(p as usize)
            } else {
                Err(EvalError::Shape(format!(
                    "slice position {p} is outside an axis of length {full}"
                )))
            }
        })
        .collect()
}

pub fn eval(op: &Op, args: &[&Tensor], env: DimEnv) -> EvalResult {
    let x = args[0];
    match op {
        Op::Reshape(shape) => {
            let s = sizes(shape, env)?;
            if s.iter().product::<usize>() != x.len() {
                return Err(EvalError::Shape(format!(
                    "cannot reshape {:?} to {:?}",
                    x.shape, s
                )));
            }
            let mut t = x.clone();
            t.shape = s;
            Ok(t)
        }
        Op::BroadcastTo(shape) => {
            let s = sizes(shape, env)?;
            let b = crate::kernels::broadcast(&[&x.shape, &s])?;
            if b != s {
                return Err(EvalError::Shape(format!(
                    "cannot broadcast {:?} to {:?}",
                    x.shape, s
                )));
            }
            let offs = crate::kernels::broadcast_offsets(&[&x.shape], &s);
            let map: Vec<Option<usize>> = offs[0].iter().map(|&o| Some(o)).collect();
            Ok(gather_from(x, s, &map))
        }
        Op::Transpose(perm) => {
            let out: Vec<usize> = perm.iter().map(|&p| x.shape[p]).collect();
            let st = strides(&x.shape);
            let n = x.len();
            let map: Vec<Option<usize>> = (0..n)
                .map(|f| {
                    let idx = unravel(f, &out);
                    Some(idx.iter().enumerate().map(|(i, &k)| k * st[perm[i]]).sum())
                })
                .collect();
            Ok(gather_from(x, out, &map))
        }
        Op::Slice {
            axis,
            start,
            len,
            step,
        } => {
            let start = start
                .eval(env)
                .ok_or_else(|| EvalError::Shape(format!("unbound `{start}`")))?;
            let len = size(len, env)?;
            let (outer, full, inner) = split_axis(&x.shape, *axis);
            let pos = slice_positions(start, len, *step, full)?;
            let mut map = Vec::with_capacity(outer * len * inner);
            for o in 0..outer {
                for &p in &pos {
                    for i in 0..inner {
                        map.push(Some(o * full * inner + p * inner + i));
                    }
                }
            }
            let mut s = x.shape.clone();
            s[*axis] = len;
            Ok(gather_from(x, s, &map))
        }
        Op::Pad {
            axis,
            start,
            full,
            step,
        } => {
            let start = start
                .eval(env)
                .ok_or_else(|| EvalError::Shape(format!("unbound `{start}`")))?;
            let full = size(full, env)?;
            let (outer, len, inner) = split_axis(&x.shape, *axis);
            let pos = slice_positions(start, len, *step, full)?;
            let mut src = vec![None; full];
            for (k, &p) in pos.iter().enumerate() {
                src[p] = Some(k);
            }
            let mut map = Vec::with_capacity(outer * full * inner);
            for o in 0..outer {
                for s in &src {
                    for i in 0..inner {
                        map.push(s.map(|k| o * len * inner + k * inner + i));
                    }
                }
            }
            let mut s = x.shape.clone();
            s[*axis] = full;
            Ok(gather_from(x, s, &map))
        }
        Op::Reverse(axis) => {
            let (outer, len, inner) = split_axis(&x.shape, *axis);
            let mut map = Vec::with_capacity(x.len());
            for o in 0..outer {
                for k in 0..len {
                    for i in 0..inner {
                        map.push(Some(o * len * inner + (len - 1 - k) * inner + i));
                    }
                }
            }
            Ok(gather_from(x, x.shape.clone(), &map))
        }
        Op::Concat(axis) => {
            let (outer, _, inner) = split_axis(&x.shape, *axis);
            let lens: Vec<usize> = args.iter().map(|a| a.shape[*axis]).collect();
            let total: usize = lens.iter().sum();
            let mut s = x.shape.clone();
            s[*axis] = total;
            // Concatenate by gathering from a stacked flat buffer.
            let mut flat = (*args[0]).clone();
            flat.shape = vec![flat.len()];
            let mut bases = vec![0usize];
            for a in &args[1..] {
                bases.push(flat.len());
                let mut f = (*a).clone();
                f.shape = vec![f.len()];
                flat = append(&flat, &f)?;
            }
            let mut map = Vec::with_capacity(outer * total * inner);
            for o in 0..outer {
                for (ai, &l) in lens.iter().enumerate() {
                    for k in 0..l {
                        for i in 0..inner {
                            map.push(Some(bases[ai] + o * l * inner + k * inner + i));
                        }
                    }
                }
            }
            Ok(gather_from(&flat, s, &map))
        }
        _ => unreachable!("not a layout op"),
    }
}

fn append(a: &Tensor, b: &Tensor) -> EvalResult {
    use crate::value::Data;
    let data = match (&a.data, &b.data) {
        (Data::F(x), Data::F(y)) => Data::F([x.as_slice(), y].concat()),
        (Data::I(x), Data::I(y)) => Data::I([x.as_slice(), y].concat()),
        (Data::B(x), Data::B(y)) => Data::B([x.as_slice(), y].concat()),
        _ => return Err(EvalError::Other("internal: concat of mixed dtypes".into())),
    };
    Ok(Tensor {
        dtype: a.dtype,
        shape: vec![a.len() + b.len()],
        data,
    })
}
