//! Reverse-mode autodiff over the graph: one backward sweep in reverse
//! topological order, accumulating cotangents. It knows no op itself: each
//! op's VJP lives with the op (`ops`). Zeros are symbolic (`None`), so
//! branches that carry no gradient cost nothing.

use crate::ir::{Graph, Handle};
use crate::ops::{GradKind, Op};

/// Appends the gradient of the loss with respect to every `diff` input to the
/// graph and records them in `graph.grads` (a zero tensor where no path exists).
pub fn differentiate(g: &mut Graph) {
    let Some(loss) = g.loss else { return };
    let n = g.len();
    // Only nodes downstream of a diff input need cotangents.
    let mut needs = vec![false; n];
    for i in 0..n {
        let node = g.node(Handle(i as u32));
        needs[i] = match node.op {
            Op::Input(k) => g.inputs[k].diff,
            _ => {
                node.ty.dtype.is_float()
                    && node.op.grad_kind() != GradKind::Stop
                    && node.args.iter().any(|a| needs[a.index()])
            }
        };
    }
    let mut cot: Vec<Option<Handle>> = vec![None; n];
    if needs[loss.index()] {
        let sp = g.node(loss).span;
        let one = g.float_like(1.0, loss, sp);
        cot[loss.index()] = Some(one);
    }
    for i in (0..n).rev() {
        let Some(gi) = cot[i] else { continue };
        let h = Handle(i as u32);
        let node = g.node(h).clone();
        if !needs[i] || node.args.is_empty() {
            continue;
        }
        let grads = node.op.vjp(g, h, gi);
        for (a, ga) in node.args.iter().zip(grads) {
            let (Some(ga), true) = (ga, needs[a.index()]) else {
                continue;
            };
            let sp = node.span;
            let acc = match cot[a.index()] {
                None => ga,
                Some(prev) => g.add(prev, ga, sp),
            };
            cot[a.index()] = Some(acc);
        }
    }
    g.grads.clear();
    for (k, inp) in g.inputs.clone().iter().enumerate() {
        if !inp.diff {
            continue;
        }
        let x = g
            .nodes
            .iter()
            .position(|nd| nd.op == Op::Input(k))
            .map(|p| Handle(p as u32));
        let grad = match x.and_then(|x| cot.get(x.index()).copied().flatten()) {
            Some(gr) => {
                let sp = inp.span;
                let gr = g.cast(gr, inp.ty.dtype, sp);
                g.broadcast_to(gr, inp.ty.shape.clone(), sp)
            }
            None => {
                let sp = inp.span;
                g.fill(
                    crate::ops::Scalar::F(0.0),
                    inp.ty.dtype,
                    inp.ty.shape.clone(),
                    sp,
                )
            }
        };
        g.grads.push((k, grad));
    }
}
