//! Ordering: stable `argsort` and `cumsum` (sort, quantile and top-k are
//! composed from these with `take_along_axis`, so their gradients come free).

use super::{Op, arity, check_axis};
use crate::ir::{Graph, Handle, Ty};
use crate::kernels::{EvalResult, floats, split_axis};
use crate::value::{DType, Data, Tensor};

pub fn infer(op: &Op, args: &[&Ty]) -> Result<Ty, String> {
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
        _ => unreachable!("not an ordering op"),
    }
}

pub fn vjp(op: &Op, gr: &mut Graph, node: Handle, g: Handle) -> Vec<Option<Handle>> {
    let sp = gr.node(node).span;
    match op {
        Op::Argsort { .. } => vec![None],
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
        Op::Argsort { axis, descending } => {
            let (outer, len, inner) = split_axis(&x.shape, *axis);
            let v = x.to_f64_vec();
            let mut out = vec![0i64; x.len()];
            for o in 0..outer {
                for i in 0..inner {
                    let at = |k: usize| v[o * len * inner + k * inner + i];
                    let mut order: Vec<usize> = (0..len).collect();
                    // Stable; NaN sorts last in both directions (as NumPy puts it last ascending).
                    order.sort_by(|&p, &q| {
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
