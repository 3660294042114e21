//! The optimiser: a fixed list of passes, each rebuilding the graph in
//! topological order (so handles stay dense and printers stay stable), with
//! `verify` after every pass.
//!
//! - `simplify`: constant folding of scalar arithmetic, algebraic identities
//!   (x·1, x+0, x−0, x/1, stop_grad(stop_grad x), casts to the same dtype),
//!   and CSE for free through the builder's hash-consing;
//! - `dce`: drops nodes no result depends on.

use crate::ir::verify::verify;
use crate::ir::{Graph, Handle};
use crate::ops::{BinaryOp, Op, ReduceKind, Scalar, UnaryOp};

pub fn optimize(g: &Graph) -> Result<Graph, String> {
    let g = simplify(g);
    verify(&g).map_err(|e| format!("after simplify: {e}"))?;
    let g = dce(&g);
    verify(&g).map_err(|e| format!("after dce: {e}"))?;
    Ok(g)
}

fn const_of(g: &Graph, h: Handle) -> Option<f64> {
    match &g.node(h).op {
        Op::Const(Scalar::F(v), _) => Some(*v),
        Op::Const(Scalar::I(v), _) => Some(*v as f64),
        _ => None,
    }
}

/// `sum(scatter_add_along(zeros, idx, v), axis)` is `sum(v, axis)` (`v` itself
/// for one index per line), also under a negation. The gradient of every
/// `take_along`-based loss (cross-entropy and its weighted kin) has this
/// shape inside the log-softmax VJP; without the rule the JIT spends a whole
/// pass over each row summing a one-hot row. Applied only where a
/// `take_along` on the same indices and axis exists, so a bad index is still
/// reported by that gather.
fn sum_of_scatter(
    out: &mut Graph,
    node: &crate::ir::Node,
    x: Handle,
    axes: &[usize],
    keepdims: bool,
) -> Option<Handle> {
    let (inner, negate) = match &out.node(x).op {
        Op::Unary(UnaryOp::Neg) => (out.node(x).args[0], true),
        _ => (x, false),
    };
    let n = out.node(inner);
    let Op::ScatterAddAlong(axis) = n.op else {
        return None;
    };
    let (base, idx, vals) = (n.args[0], n.args[1], n.args[2]);
    let zero_base = matches!(out.node(base).op, Op::Fill(Scalar::F(z), ..) if z == 0.0);
    let gathered = out
        .nodes
        .iter()
        .any(|m| matches!(m.op, Op::TakeAlong(a) if a == axis) && m.args[1] == idx);
    if axes != [axis] || !zero_base || !gathered {
        return None;
    }
    let sum = if out.ty(vals) == &node.ty {
        vals
    } else {
        let op = Op::Reduce {
            kind: ReduceKind::Sum,
            axes: axes.to_vec(),
            keepdims,
        };
        let h = out.push(op, vec![vals], node.span).ok()?;
        if out.ty(h) != &node.ty {
            return None;
        }
        h
    };
    if negate {
        out.push(Op::Unary(UnaryOp::Neg), vec![sum], node.span).ok()
    } else {
        Some(sum)
    }
}

/// Rebuilds `g` keeping only live nodes, in their original order.
pub fn dce(g: &Graph) -> Graph {
    let mut live = vec![false; g.len()];
    for r in g.roots() {
        live[r.index()] = true;
    }
    for i in (0..g.len()).rev() {
        if live[i] {
            for a in &g.nodes[i].args {
                live[a.index()] = true;
            }
        }
    }
    rebuild(g, |_, _, _| None, &live)
}

/// Rebuilds `g`, letting `rewrite` replace a node (given its new args) by an existing new handle.
fn rebuild(
    g: &Graph,
    rewrite: impl Fn(&mut Graph, &crate::ir::Node, &[Handle]) -> Option<Handle>,
    keep: &[bool],
) -> Graph {
    let mut out = Graph {
        name: g.name.clone(),
        doc: g.doc.clone(),
        inputs: g.inputs.clone(),
        params: g.params.clone(),
        states: g.states.clone(),
        ..Graph::default()
    };
    let mut map: Vec<Option<Handle>> = vec![None; g.len()];
    for (i, node) in g.nodes.iter().enumerate() {
        if !keep[i] {
            continue;
        }
        let args: Vec<Handle> = node
            .args
            .iter()
            .map(|a| map[a.index()].expect("args precede their users"))
            .collect();
        let h = match rewrite(&mut out, node, &args) {
            Some(h) => h,
            None => out.push_typed(node.op.clone(), args, node.ty.clone(), node.span),
        };
        map[i] = Some(h);
    }
    out.loss = g.loss;
    out.reports = g.reports.clone();
    out.updates = g.updates.clone();
    out.checks = g.checks.clone();
    out.grads = g.grads.clone();
    out.map_roots(&|h| map[h.index()].expect("roots are kept"));
    out
}

pub fn simplify(g: &Graph) -> Graph {
    let keep = vec![true; g.len()];
    rebuild(
        g,
        |out, node, args| match &node.op {
            Op::Binary(b) => {
                let (x, y) = (args[0], args[1]);
                let same_shape = |out: &Graph, a: Handle| out.ty(a) == &node.ty;
                let (cx, cy) = (const_of(out, x), const_of(out, y));
                if let (Some(a), Some(c), true) = (cx, cy, node.ty.dtype.is_float())
                    && matches!(
                        b,
                        BinaryOp::Add | BinaryOp::Sub | BinaryOp::Mul | BinaryOp::Div
                    )
                {
                    let v = crate::ops::elementwise::apply_f(*b, a, c);
                    return Some(out.constant(Scalar::F(v), node.ty.dtype, node.span));
                }
                match b {
                    BinaryOp::Mul if cy == Some(1.0) && same_shape(out, x) => Some(x),
                    BinaryOp::Mul if cx == Some(1.0) && same_shape(out, y) => Some(y),
                    BinaryOp::Add if cy == Some(0.0) && same_shape(out, x) => Some(x),
                    BinaryOp::Add if cx == Some(0.0) && same_shape(out, y) => Some(y),
                    BinaryOp::Sub if cy == Some(0.0) && same_shape(out, x) => Some(x),
                    BinaryOp::Div if cy == Some(1.0) && same_shape(out, x) => Some(x),
                    _ => None,
                }
            }
            Op::StopGrad
                if matches!(
                    out.node(args[0]).op,
                    Op::StopGrad | Op::Const(..) | Op::Fill(..)
                ) =>
            {
                Some(args[0])
            }
            Op::Reduce {
                kind: ReduceKind::Sum,
                axes,
                keepdims,
            } => sum_of_scatter(out, node, args[0], axes, *keepdims),
            Op::Cast(d) if out.ty(args[0]).dtype == *d => Some(args[0]),
            Op::Reshape(s) | Op::BroadcastTo(s) if &out.ty(args[0]).shape == s => Some(args[0]),
            _ => None,
        },
        &keep,
    )
}
