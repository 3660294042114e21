//! Reverse-mode autodiff over the graph: one backward sweep in reverse
//! topological order, accumulating cotangents. It knows no op itself: each
//! op's VJP lives with the op (`ops`). Zeros are symbolic (`None`), so
//! branches that carry no gradient cost nothing.
//!
//! `where` never leaks its untaken side into a gradient (docs/language.md,
//! "where"): every cotangent that leaves a node of a branch's own elementwise
//! subgraph is masked to the positions where that branch is taken, so an
//! infinite or NaN derivative there (`log` at 0, `x / beta` at `beta = 0`)
//! meets a select, not a multiplication by zero.

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
    let guards = branch_guards(g);
    for i in (0..n).rev() {
        let Some(gi) = cot[i] else { continue };
        let h = Handle(i as u32);
        let node = g.node(h).clone();
        if !needs[i] || node.args.is_empty() {
            continue;
        }
        let sp = node.span;
        let guarded = &guards[i];
        // A guarded node's smaller arguments (a scalar `beta`) are broadcast
        // first, so their cotangents can be masked before they are summed.
        let widened = !guarded.is_empty()
            && node
                .args
                .iter()
                .any(|a| needs[a.index()] && g.ty(*a).shape != node.ty.shape);
        let at = if widened {
            let args: Vec<Handle> = node
                .args
                .iter()
                .map(|&a| {
                    if needs[a.index()] {
                        g.broadcast_to(a, node.ty.shape.clone(), sp)
                    } else {
                        a
                    }
                })
                .collect();
            g.mk(node.op.clone(), args, sp)
        } else {
            h
        };
        let grads = node.op.vjp(g, at, gi);
        for (a, ga) in node.args.iter().zip(grads) {
            let (Some(mut ga), true) = (ga, needs[a.index()]) else {
                continue;
            };
            for &(c, taken) in guarded {
                let zero = g.float_like(0.0, ga, sp);
                ga = if taken {
                    g.where_(c, ga, zero, sp)
                } else {
                    g.where_(c, zero, ga, sp)
                };
            }
            let ashape = g.ty(*a).shape.clone();
            let ga = g.sum_to(ga, &ashape, sp);
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

/// Where a `where` branch is taken: its condition, and whether the branch is
/// the first (`true`) or the second.
type Guard = (Handle, bool);

/// For every node, the `where` branches it lies inside: a node belongs to a
/// branch when it is elementwise (`Unary`, `Binary`, `Where`, `Cast`), the
/// branch's condition broadcasts into its shape, and every use of it is that
/// branch or another node belonging to it (never a result). Its cotangent is then zero wherever the
/// branch is not taken, so masking what it passes on to its arguments there
/// changes no finite gradient and drops the `0 * inf` and `0 / 0` of a
/// singular derivative. Nested branches collect every enclosing guard.
fn branch_guards(g: &Graph) -> Vec<Vec<Guard>> {
    let n = g.len();
    // `None`: no use seen yet; `Some(v)`: the guards common to every use so far.
    let mut acc: Vec<Option<Vec<Guard>>> = vec![None; n];
    for r in g.roots() {
        acc[r.index()] = Some(vec![]);
    }
    let mut out = vec![vec![]; n];
    for i in (0..n).rev() {
        let node = g.node(Handle(i as u32));
        let elementwise = node.ty.dtype.is_float()
            && match node.op {
                Op::Unary(_) | Op::Binary(_) | Op::Where | Op::Cast(_) => true,
                Op::Input(_)
                | Op::Param(_)
                | Op::State(_)
                | Op::Const(..)
                | Op::DimSize(_)
                | Op::Fill(..)
                | Op::Iota(_)
                | Op::Rand(..)
                | Op::StopGrad
                | Op::Reduce { .. }
                | Op::ArgMax(_)
                | Op::ArgMin(_)
                | Op::Norm { .. }
                | Op::Reshape(_)
                | Op::BroadcastTo(_)
                | Op::Transpose(_)
                | Op::Slice { .. }
                | Op::Pad { .. }
                | Op::Reverse(_)
                | Op::Concat(_)
                | Op::TakeAlong(_)
                | Op::ScatterAddAlong(_)
                | Op::IndexSelect(_)
                | Op::IndexAdd(_)
                | Op::ScatterSet(_)
                | Op::OneHot(_)
                | Op::MatMul
                | Op::Argsort { .. }
                | Op::Cumsum { .. }
                | Op::LogCumSumExp { .. }
                | Op::SearchSorted { .. } => false,
            };
        let mine = if elementwise {
            acc[i].take().unwrap_or_default()
        } else {
            vec![]
        };
        for (pos, &a) in node.args.iter().enumerate() {
            // A guard carries over to an argument when its condition broadcasts
            // into the argument's shape: then every position of the node that
            // an argument position feeds shares that position's condition
            // (always so for the scalar condition of an `if`).
            let ashape = &g.ty(a).shape;
            let fits = |c: Handle| {
                crate::ops::broadcast_shapes(&g.ty(c).shape, ashape).is_ok_and(|s| &s == ashape)
            };
            let implied: Vec<Guard> = if !elementwise || !g.ty(a).dtype.is_float() {
                vec![]
            } else {
                let mut v: Vec<Guard> = mine.iter().copied().filter(|&(c, _)| fits(c)).collect();
                if node.op == Op::Where && pos > 0 && a != node.args[0] && fits(node.args[0]) {
                    v.push((node.args[0], pos == 1));
                }
                v
            };
            let slot = &mut acc[a.index()];
            *slot = Some(match slot.take() {
                None => implied,
                Some(prev) => prev.into_iter().filter(|x| implied.contains(x)).collect(),
            });
        }
        out[i] = mine;
    }
    out
}
