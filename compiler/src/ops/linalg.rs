//! `a @ b` for matrices.

use super::arity;
use crate::ir::{Graph, Handle, Ty};
use crate::kernels::{EvalError, EvalResult, floats};
use crate::ops::Op;
use crate::value::Tensor;

pub fn infer(args: &[&Ty]) -> Result<Ty, String> {
    arity(args, 2, "matmul")?;
    let (a, b) = (args[0], args[1]);
    if !a.dtype.is_float() || a.dtype != b.dtype {
        return Err(format!(
            "`@` needs two float matrices of one dtype, got {} and {}",
            a.dtype, b.dtype
        ));
    }
    if a.rank() != 2 || b.rank() != 2 {
        return Err(format!(
            "`@` multiplies matrices (rank 2), got {a} and {b}; use `sum(x * y, axis=...)` for other ranks"
        ));
    }
    if a.shape[1] != b.shape[0] {
        return Err(format!(
            "`@`: inner dims differ: {a} @ {b} (`{}` vs `{}`)",
            a.shape[1], b.shape[0]
        ));
    }
    Ok(Ty::new(
        a.dtype,
        vec![a.shape[0].clone(), b.shape[1].clone()],
    ))
}

pub fn vjp(gr: &mut Graph, node: Handle, g: Handle) -> Vec<Option<Handle>> {
    let n = gr.node(node).clone();
    let (a, b, sp) = (n.args[0], n.args[1], n.span);
    let bt = gr.mk(Op::Transpose(vec![1, 0]), vec![b], sp);
    let at = gr.mk(Op::Transpose(vec![1, 0]), vec![a], sp);
    vec![
        Some(gr.mk(Op::MatMul, vec![g, bt], sp)),
        Some(gr.mk(Op::MatMul, vec![at, g], sp)),
    ]
}

pub fn eval(args: &[&Tensor]) -> EvalResult {
    let (a, b) = (args[0], args[1]);
    let (m, k) = (a.shape[0], a.shape[1]);
    let (k2, n) = (b.shape[0], b.shape[1]);
    if k != k2 {
        return Err(EvalError::Shape(format!(
            "matmul inner sizes differ: {k} and {k2}"
        )));
    }
    let (av, bv) = (floats(a), floats(b));
    let mut out = vec![0.0; m * n];
    for i in 0..m {
        for p in 0..k {
            let x = av[i * k + p];
            for j in 0..n {
                out[i * n + j] += x * bv[p * n + j];
            }
        }
    }
    Ok(Tensor::from_f64(a.dtype, vec![m, n], out))
}
