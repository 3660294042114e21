//! Structural checks of a graph: handles in range and earlier than their
//! users (topological order), every node's type equal to its op's type rule,
//! results and state updates of the declared types. Run after lowering,
//! after autodiff and after every pass.

use super::{Graph, Handle, Ty};

pub fn verify(g: &Graph) -> Result<(), String> {
    for (i, n) in g.nodes.iter().enumerate() {
        for a in &n.args {
            if a.index() >= i {
                return Err(format!(
                    "%{i} ({}) uses %{} which does not precede it",
                    n.op.name(),
                    a.0
                ));
            }
        }
        let tys: Vec<&Ty> = n.args.iter().map(|a| g.ty(*a)).collect();
        match &n.op {
            crate::ops::Op::Input(k) => {
                let d = g.inputs.get(*k).ok_or(format!("%{i}: no input {k}"))?;
                if d.ty != n.ty {
                    return Err(format!("%{i}: input type {} != {}", n.ty, d.ty));
                }
            }
            crate::ops::Op::Param(k) => {
                let d = g.params.get(*k).ok_or(format!("%{i}: no param {k}"))?;
                if n.ty != Ty::scalar(d.dtype) {
                    return Err(format!("%{i}: param type {}", n.ty));
                }
            }
            crate::ops::Op::State(k) => {
                let d = g.states.get(*k).ok_or(format!("%{i}: no state {k}"))?;
                if d.ty != n.ty {
                    return Err(format!("%{i}: state type {} != {}", n.ty, d.ty));
                }
            }
            op => {
                let t = op
                    .infer(&tys)
                    .map_err(|e| format!("%{i} ({}): {e}", op.name()))?;
                if t != n.ty {
                    return Err(format!(
                        "%{i} ({}): recorded type {} but the rule gives {}",
                        op.name(),
                        n.ty,
                        t
                    ));
                }
            }
        }
    }
    let in_range = |h: Handle| h.index() < g.len();
    for r in g.roots() {
        if !in_range(r) {
            return Err(format!("root {r} out of range"));
        }
    }
    if let Some(l) = g.loss {
        let t = g.ty(l);
        if !t.shape.is_empty() || !t.dtype.is_float() {
            return Err(format!("the loss is {t}, not a float scalar"));
        }
    }
    for u in &g.updates {
        let st = &g.states[u.state];
        if g.ty(u.value) != &st.ty {
            return Err(format!(
                "update of `{}` is {} but the state is {}",
                st.name,
                g.ty(u.value),
                st.ty
            ));
        }
    }
    for (k, h) in &g.grads {
        if g.ty(*h) != &g.inputs[*k].ty {
            return Err(format!(
                "gradient of `{}` is {} but the input is {}",
                g.inputs[*k].name,
                g.ty(*h),
                g.inputs[*k].ty
            ));
        }
    }
    Ok(())
}
