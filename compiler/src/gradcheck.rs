//! Finite-difference check of the compiled gradient, in f64 on the
//! interpreter. Values the program freezes on purpose (`stop_grad`, and the
//! discrete results of comparisons, argmax, sorts) are recorded at the base
//! point and replayed, so the check differentiates exactly what autodiff does.

use crate::ir::Handle;
use crate::ir::eval::{Env, eval, eval_with};
use crate::ops::GradKind;
use crate::program::{Program, RunError};
use crate::value::{Data, Tensor};
use std::collections::BTreeMap;

#[derive(Clone, Debug)]
pub struct InputCheck {
    pub name: String,
    pub checked: usize,
    pub max_abs_err: f64,
    pub worst: Option<(Vec<usize>, f64, f64)>,
    pub passed: bool,
}

#[derive(Clone, Debug)]
pub struct Report {
    pub loss: f64,
    pub inputs: Vec<InputCheck>,
}

impl Report {
    pub fn passed(&self) -> bool {
        self.inputs.iter().all(|i| i.passed)
    }
}

pub fn gradcheck(p: &Program, env: &Env, per_input: usize) -> Result<Report, RunError> {
    let g = &p.opt;
    let loss = g.loss();
    // Freeze every stop/cut node: their values are constants to autodiff.
    let frozen: Vec<Handle> = (0..g.len())
        .map(|i| Handle(i as u32))
        .filter(|h| {
            matches!(
                g.node(*h).op.grad_kind(),
                GradKind::Stop | GradKind::Cut | GradKind::PiecewiseConstant
            )
        })
        .collect();
    let mut roots = vec![loss];
    roots.extend(g.grads.iter().map(|(_, h)| *h));
    roots.extend(frozen.iter().copied());
    let vals = eval(g, env, &roots).map_err(|e| p.node_error(e))?;
    let base = vals[0].scalar_f64().unwrap_or(f64::NAN);
    let grads: Vec<Tensor> = vals[1..1 + g.grads.len()].to_vec();
    let overrides: BTreeMap<Handle, Tensor> = frozen
        .iter()
        .copied()
        .zip(vals[1 + g.grads.len()..].iter().cloned())
        .collect();
    let mut out = Vec::new();
    for ((k, _), gt) in g.grads.iter().zip(&grads) {
        let n = env.inputs[*k].len();
        let picks: Vec<usize> = if n <= per_input {
            (0..n).collect()
        } else {
            (0..per_input).map(|j| j * n / per_input).collect()
        };
        let gv = gt.to_f64_vec();
        let mut chk = InputCheck {
            name: g.inputs[*k].name.clone(),
            checked: 0,
            max_abs_err: 0.0,
            worst: None,
            passed: true,
        };
        for &i in &picks {
            let x0 = match &env.inputs[*k].data {
                Data::F(v) => v[i],
                _ => continue,
            };
            let h = 1e-6 * x0.abs().max(1.0);
            let f = |delta: f64| -> Result<f64, RunError> {
                let mut e2 = env.clone();
                if let Data::F(v) = &mut e2.inputs[*k].data {
                    v[i] = x0 + delta;
                }
                let r = eval_with(g, &e2, &[loss], &overrides).map_err(|e| p.node_error(e))?;
                Ok(r[0].scalar_f64().unwrap_or(f64::NAN))
            };
            let fd = (f(h)? - f(-h)?) / (2.0 * h);
            let a = gv[i];
            let err = (a - fd).abs();
            let tol = 1e-6 * base.abs().max(1.0) + 1e-4 * fd.abs().max(a.abs());
            chk.checked += 1;
            if err > chk.max_abs_err || !err.is_finite() {
                chk.max_abs_err = if err.is_finite() { err } else { f64::INFINITY };
                chk.worst = Some((crate::kernels::unravel(i, &env.inputs[*k].shape), a, fd));
            }
            if err.is_nan() || err > tol {
                chk.passed = false;
            }
        }
        out.push(chk);
    }
    Ok(Report {
        loss: base,
        inputs: out,
    })
}
