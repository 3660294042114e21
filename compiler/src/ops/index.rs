//! Data-dependent indexing. Every index read from data is range-checked here;
//! an out-of-range index is an error naming its position, never a wild read.

use super::{Op, arity, check_axis};
use crate::dim::{DimEnv, size};
use crate::ir::{Graph, Handle, Ty};
use crate::kernels::{EvalError, EvalResult, check_index, floats, ints, split_axis, unravel};
use crate::value::{DType, Data, Tensor};

pub fn infer(op: &Op, args: &[&Ty]) -> Result<Ty, String> {
    let name = op.name();
    match op {
        Op::TakeAlong(axis) => {
            arity(args, 2, &name)?;
            let (x, idx) = (args[0], args[1]);
            check_idx(idx, &name)?;
            check_axis(*axis, x.rank(), &name)?;
            if idx.rank() != x.rank() {
                return Err(format!(
                    "`take_along_axis`: the index has rank {} but the value has rank {}",
                    idx.rank(),
                    x.rank()
                ));
            }
            for i in 0..x.rank() {
                if i != *axis && idx.shape[i] != x.shape[i] {
                    return Err(format!(
                        "`take_along_axis`: index axis {i} is `{}` but the value's is `{}`",
                        idx.shape[i], x.shape[i]
                    ));
                }
            }
            Ok(Ty::new(x.dtype, idx.shape.clone()))
        }
        Op::ScatterAddAlong(axis) => {
            arity(args, 3, &name)?;
            let (base, idx, v) = (args[0], args[1], args[2]);
            check_idx(idx, &name)?;
            check_axis(*axis, base.rank(), &name)?;
            if v.shape != idx.shape || v.dtype != base.dtype || idx.rank() != base.rank() {
                return Err(format!("internal: bad `{name}` operands"));
            }
            Ok(base.clone())
        }
        Op::IndexSelect(axis) => {
            arity(args, 2, &name)?;
            let (x, idx) = (args[0], args[1]);
            check_idx(idx, &name)?;
            check_axis(*axis, x.rank(), &name)?;
            let mut s = x.shape[..*axis].to_vec();
            s.extend(idx.shape.iter().cloned());
            s.extend(x.shape[axis + 1..].iter().cloned());
            Ok(Ty::new(x.dtype, s))
        }
        Op::IndexAdd(axis) | Op::ScatterSet(axis) => {
            arity(args, 3, &name)?;
            let (base, idx, v) = (args[0], args[1], args[2]);
            check_idx(idx, &name)?;
            check_axis(*axis, base.rank(), &name)?;
            let mut s = base.shape[..*axis].to_vec();
            s.extend(idx.shape.iter().cloned());
            s.extend(base.shape[axis + 1..].iter().cloned());
            if v.shape != s {
                return Err(format!(
                    "`{name}`: the values have shape {} but the indexed positions have shape {}",
                    crate::dim::shape_str(&v.shape),
                    crate::dim::shape_str(&s)
                ));
            }
            if v.dtype != base.dtype {
                return Err(format!(
                    "`{name}`: the values are {} but the target is {}",
                    v.dtype, base.dtype
                ));
            }
            Ok(base.clone())
        }
        Op::OneHot(depth) => {
            arity(args, 1, &name)?;
            check_idx(args[0], &name)?;
            let mut s = args[0].shape.clone();
            s.push(depth.clone());
            Ok(Ty::new(DType::F32, s))
        }
        _ => unreachable!("not an index op"),
    }
}

fn check_idx(idx: &Ty, op: &str) -> Result<(), String> {
    if idx.dtype == DType::I64 {
        Ok(())
    } else {
        Err(format!("`{op}` needs i64 indices, got {}", idx.dtype))
    }
}

pub fn vjp(op: &Op, gr: &mut Graph, node: Handle, g: Handle) -> Vec<Option<Handle>> {
    let n = gr.node(node).clone();
    let sp = n.span;
    match op {
        Op::TakeAlong(axis) => {
            let (x, idx) = (n.args[0], n.args[1]);
            let z = gr.zeros_like(x, sp);
            vec![
                Some(gr.mk(Op::ScatterAddAlong(*axis), vec![z, idx, g], sp)),
                None,
            ]
        }
        Op::ScatterAddAlong(axis) => {
            let idx = n.args[1];
            vec![
                Some(g),
                None,
                Some(gr.mk(Op::TakeAlong(*axis), vec![g, idx], sp)),
            ]
        }
        Op::IndexSelect(axis) => {
            let (x, idx) = (n.args[0], n.args[1]);
            let z = gr.zeros_like(x, sp);
            vec![Some(gr.mk(Op::IndexAdd(*axis), vec![z, idx, g], sp)), None]
        }
        Op::IndexAdd(axis) => {
            let idx = n.args[1];
            vec![
                Some(g),
                None,
                Some(gr.mk(Op::IndexSelect(*axis), vec![g, idx], sp)),
            ]
        }
        Op::ScatterSet(axis) => {
            let (idx, v) = (n.args[1], n.args[2]);
            let zv = gr.zeros_like(v, sp);
            vec![
                Some(gr.mk(Op::ScatterSet(*axis), vec![g, idx, zv], sp)),
                None,
                Some(gr.mk(Op::IndexSelect(*axis), vec![g, idx], sp)),
            ]
        }
        Op::OneHot(_) => vec![None],
        _ => unreachable!("not an index op"),
    }
}

/// Flat source offset for each element of a take-along result.
fn along_offsets(x_shape: &[usize], idx: &Tensor, axis: usize) -> Result<Vec<usize>, EvalError> {
    let iv = ints(idx);
    let xst = crate::kernels::strides(x_shape);
    let size = x_shape[axis];
    iv.iter()
        .enumerate()
        .map(|(f, &v)| {
            let k = check_index(v, size, f, &idx.shape)?;
            let mut pos = unravel(f, &idx.shape);
            pos[axis] = k;
            Ok(pos.iter().zip(&xst).map(|(a, b)| a * b).sum())
        })
        .collect()
}

/// For IndexSelect-shaped value tensors: the flat base offset of each value element.
fn select_offsets(
    base_shape: &[usize],
    idx: &Tensor,
    axis: usize,
) -> Result<Vec<usize>, EvalError> {
    let iv = ints(idx);
    let (outer, size, inner) = split_axis(base_shape, axis);
    let checked: Vec<usize> = iv
        .iter()
        .enumerate()
        .map(|(f, &v)| check_index(v, size, f, &idx.shape))
        .collect::<Result<_, _>>()?;
    let mut out = Vec::with_capacity(outer * checked.len() * inner);
    for o in 0..outer {
        for &k in &checked {
            for i in 0..inner {
                out.push(o * size * inner + k * inner + i);
            }
        }
    }
    Ok(out)
}

pub fn eval(op: &Op, args: &[&Tensor], env: DimEnv) -> EvalResult {
    match op {
        Op::TakeAlong(axis) => {
            let (x, idx) = (args[0], args[1]);
            for i in 0..x.shape.len() {
                if i != *axis && x.shape[i] != idx.shape[i] {
                    return Err(EvalError::Shape(format!(
                        "index axis {i} has size {} but the value's has {}",
                        idx.shape[i], x.shape[i]
                    )));
                }
            }
            let offs = along_offsets(&x.shape, idx, *axis)?;
            let map: Vec<Option<usize>> = offs.into_iter().map(Some).collect();
            Ok(crate::kernels::gather_from(x, idx.shape.clone(), &map))
        }
        Op::ScatterAddAlong(axis) => {
            let (base, idx, v) = (args[0], args[1], args[2]);
            let offs = along_offsets(&base.shape, idx, *axis)?;
            let mut out = floats(base).to_vec();
            for (o, &val) in offs.iter().zip(floats(v)) {
                out[*o] += val;
            }
            Ok(Tensor::from_f64(base.dtype, base.shape.clone(), out))
        }
        Op::IndexSelect(axis) => {
            let (x, idx) = (args[0], args[1]);
            let offs = select_offsets(&x.shape, idx, *axis)?;
            let mut s = x.shape[..*axis].to_vec();
            s.extend(idx.shape.iter().cloned());
            s.extend(x.shape[axis + 1..].iter().cloned());
            let map: Vec<Option<usize>> = offs.into_iter().map(Some).collect();
            Ok(crate::kernels::gather_from(x, s, &map))
        }
        Op::IndexAdd(axis) => {
            let (base, idx, v) = (args[0], args[1], args[2]);
            let offs = select_offsets(&base.shape, idx, *axis)?;
            let mut out = floats(base).to_vec();
            for (o, &val) in offs.iter().zip(floats(v)) {
                out[*o] += val;
            }
            Ok(Tensor::from_f64(base.dtype, base.shape.clone(), out))
        }
        Op::ScatterSet(axis) => {
            let (base, idx, v) = (args[0], args[1], args[2]);
            let iv = ints(idx);
            let mut seen = std::collections::HashMap::new();
            for (f, &k) in iv.iter().enumerate() {
                if let Some(_first) = seen.insert(k, f) {
                    return Err(EvalError::Duplicate {
                        value: k,
                        position: unravel(f, &idx.shape),
                    });
                }
            }
            let offs = select_offsets(&base.shape, idx, *axis)?;
            let mut out = base.clone();
            match (&mut out.data, &v.data) {
                (Data::F(o), Data::F(src)) => offs.iter().zip(src).for_each(|(&i, &s)| o[i] = s),
                (Data::I(o), Data::I(src)) => offs.iter().zip(src).for_each(|(&i, &s)| o[i] = s),
                (Data::B(o), Data::B(src)) => offs.iter().zip(src).for_each(|(&i, &s)| o[i] = s),
                _ => return Err(EvalError::Other("internal: scatter of mixed dtypes".into())),
            }
            Ok(out)
        }
        Op::OneHot(depth) => {
            let idx = args[0];
            let c = size(depth, env)?;
            let iv = ints(idx);
            let mut out = vec![0.0; iv.len() * c];
            for (f, &v) in iv.iter().enumerate() {
                // -1 is "no class": an all-zero row.
                if v == -1 {
                    continue;
                }
                let k = check_index(v, c, f, &idx.shape)?;
                out[f * c + k] = 1.0;
            }
            let mut s = idx.shape.clone();
            s.push(c);
            Ok(Tensor::from_f64(DType::F32, s, out))
        }
        _ => unreachable!("not an index op"),
    }
}
