//! The reference interpreter: evaluates a graph node by node with each op's
//! reference kernel, floats in f64. It is the oracle every backend is checked
//! against: obviously correct before fast.

use super::{Graph, Handle};
use crate::kernels::EvalError;
use crate::ops::Op;
use crate::value::Tensor;
use std::collections::BTreeMap;

/// Concrete values for a graph's declared inputs, params and state, and the dims they bind.
#[derive(Clone, Debug, Default)]
pub struct Env {
    pub inputs: Vec<Tensor>,
    pub params: Vec<Tensor>,
    pub state: Vec<Tensor>,
    pub dims: BTreeMap<String, i64>,
}

/// A kernel failure, with the node it happened at.
#[derive(Clone, Debug)]
pub struct NodeError {
    pub node: Handle,
    pub error: EvalError,
}

/// Evaluates the nodes needed for `roots` and returns their values.
pub fn eval(g: &Graph, env: &Env, roots: &[Handle]) -> Result<Vec<Tensor>, NodeError> {
    eval_with(g, env, roots, &BTreeMap::new())
}

/// Like `eval`, with some nodes' values replaced (record/replay of frozen
/// values for finite differences).
pub fn eval_with(
    g: &Graph,
    env: &Env,
    roots: &[Handle],
    overrides: &BTreeMap<Handle, Tensor>,
) -> Result<Vec<Tensor>, NodeError> {
    let mut need = vec![false; g.len()];
    for r in roots {
        need[r.index()] = true;
    }
    for i in (0..g.len()).rev() {
        if need[i] && !overrides.contains_key(&Handle(i as u32)) {
            for a in &g.nodes[i].args {
                need[a.index()] = true;
            }
        }
    }
    // Free each value after its last use: the oracle still runs at realistic sizes.
    let mut last_use = vec![0usize; g.len()];
    for (i, n) in g.nodes.iter().enumerate() {
        if need[i] {
            for a in &n.args {
                last_use[a.index()] = i;
            }
        }
    }
    for r in roots {
        last_use[r.index()] = usize::MAX;
    }
    let dimenv = |s: &str| env.dims.get(s).copied();
    let mut vals: Vec<Option<Tensor>> = vec![None; g.len()];
    for i in 0..g.len() {
        if !need[i] {
            continue;
        }
        let n = &g.nodes[i];
        if let Some(v) = overrides.get(&Handle(i as u32)) {
            vals[i] = Some(v.clone());
            continue;
        }
        let v = match &n.op {
            Op::Input(k) => env.inputs[*k].clone(),
            Op::Param(k) => env.params[*k].clone(),
            Op::State(k) => env.state[*k].clone(),
            op => {
                let args: Vec<&Tensor> = n
                    .args
                    .iter()
                    .map(|a| {
                        vals[a.index()]
                            .as_ref()
                            .expect("argument evaluated before use")
                    })
                    .collect();
                op.eval(&args, &dimenv).map_err(|error| NodeError {
                    node: Handle(i as u32),
                    error,
                })?
            }
        };
        vals[i] = Some(v);
        for a in &n.args {
            if last_use[a.index()] == i {
                vals[a.index()] = None;
            }
        }
    }
    Ok(roots
        .iter()
        .map(|r| vals[r.index()].clone().expect("roots are kept"))
        .collect())
}
