//! `where`, `cast`, `stop_grad`.

use super::{Op, arity, broadcast_shapes};
use crate::ir::{Graph, Handle, Ty};
use crate::kernels::{EvalError, EvalResult, broadcast, broadcast_offsets};
use crate::value::{DType, Data, Tensor};

pub fn infer(op: &Op, args: &[&Ty]) -> Result<Ty, String> {
    match op {
        Op::Where => {
            arity(args, 3, "where")?;
            if args[0].dtype != DType::Bool {
                return Err(format!(
                    "the condition of `where` must be bool, got {}",
                    args[0].dtype
                ));
            }
            if args[1].dtype != args[2].dtype {
                return Err(format!(
                    "the branches of `where` have different dtypes: {} and {}",
                    args[1].dtype, args[2].dtype
                ));
            }
            let s = broadcast_shapes(&args[0].shape, &args[1].shape)?;
            let s = broadcast_shapes(&s, &args[2].shape)?;
            Ok(Ty::new(args[1].dtype, s))
        }
        Op::Cast(d) => {
            arity(args, 1, "cast")?;
            Ok(Ty::new(*d, args[0].shape.clone()))
        }
        Op::StopGrad => {
            arity(args, 1, "stop_grad")?;
            Ok(args[0].clone())
        }
        _ => unreachable!("not a control op"),
    }
}

pub fn vjp(op: &Op, gr: &mut Graph, node: Handle, g: Handle) -> Vec<Option<Handle>> {
    let n = gr.node(node).clone();
    let sp = n.span;
    match op {
        Op::Where => {
            let (c, a, b) = (n.args[0], n.args[1], n.args[2]);
            let out = gr.ty(node).shape.clone();
            let gb = gr.broadcast_to(g, out, sp);
            let zero = gr.float_like(0.0, g, sp);
            let ga = gr.where_(c, gb, zero, sp);
            let gbb = gr.where_(c, zero, gb, sp);
            let (sa, sb) = (gr.ty(a).shape.clone(), gr.ty(b).shape.clone());
            vec![
                None,
                Some(gr.sum_to(ga, &sa, sp)),
                Some(gr.sum_to(gbb, &sb, sp)),
            ]
        }
        Op::Cast(d) => {
            let x = n.args[0];
            let xd = gr.ty(x).dtype;
            if d.is_float() && xd.is_float() {
                vec![Some(gr.cast(g, xd, sp))]
            } else {
                vec![None]
            }
        }
        Op::StopGrad => vec![None],
        _ => unreachable!("not a control op"),
    }
}

pub fn eval(op: &Op, args: &[&Tensor]) -> EvalResult {
    match op {
        Op::Where => {
            let (c, a, b) = (args[0], args[1], args[2]);
            let shape = broadcast(&[&c.shape, &a.shape, &b.shape])?;
            let offs = broadcast_offsets(&[&c.shape, &a.shape, &b.shape], &shape);
            let cv = crate::kernels::bools(c);
            let pick = |i: usize| cv[offs[0][i]];
            let n = offs[0].len();
            let data = match (&a.data, &b.data) {
                (Data::F(x), Data::F(y)) => Data::F(
                    (0..n)
                        .map(|i| {
                            if pick(i) {
                                x[offs[1][i]]
                            } else {
                                y[offs[2][i]]
                            }
                        })
                        .collect(),
                ),
                (Data::I(x), Data::I(y)) => Data::I(
                    (0..n)
                        .map(|i| {
                            if pick(i) {
                                x[offs[1][i]]
                            } else {
                                y[offs[2][i]]
                            }
                        })
                        .collect(),
                ),
                (Data::B(x), Data::B(y)) => Data::B(
                    (0..n)
                        .map(|i| {
                            if pick(i) {
                                x[offs[1][i]]
                            } else {
                                y[offs[2][i]]
                            }
                        })
                        .collect(),
                ),
                _ => return Err(EvalError::Other("internal: where on mixed dtypes".into())),
            };
            Ok(Tensor {
                dtype: a.dtype,
                shape,
                data,
            })
        }
        Op::Cast(d) => Ok(cast(args[0], *d)),
        Op::StopGrad => Ok(args[0].clone()),
        _ => unreachable!("not a control op"),
    }
}

/// Casts like NumPy `astype`: float→int truncates toward zero (NaN → 0,
/// saturating), anything→bool is `!= 0`.
pub fn cast(x: &Tensor, d: DType) -> Tensor {
    let shape = x.shape.clone();
    match d {
        DType::F32 | DType::F64 => {
            let mut v = x.to_f64_vec();
            if d == DType::F32 && x.dtype != DType::F32 {
                // Rounding to f32 is part of a cast's meaning.
                for e in &mut v {
                    *e = f64::from(*e as f32);
                }
            }
            Tensor::from_f64(d, shape, v)
        }
        DType::I64 => {
            let v = match &x.data {
                Data::F(v) => v.iter().map(|&a| a as i64).collect(),
                Data::I(v) => v.clone(),
                Data::B(v) => v.iter().map(|&a| i64::from(a)).collect(),
            };
            Tensor::from_i64(shape, v)
        }
        DType::Bool => {
            let v = match &x.data {
                Data::F(v) => v.iter().map(|&a| a != 0.0).collect(),
                Data::I(v) => v.iter().map(|&a| a != 0).collect(),
                Data::B(v) => v.clone(),
            };
            Tensor::from_bool(shape, v)
        }
    }
}
