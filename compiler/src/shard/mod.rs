//! Sharding analysis: how the optimised graph runs when the batch is split over
//! ranks. Every node is either replicated (the same full value on every rank)
//! or local along one axis (each rank holds its own rows of a batch-sized axis).
//! Each op's rule picks the result's layout from its arguments' and says which
//! conversions its arguments need first — `gather` (all-gather a local value to
//! the full one) or `slice` (take this rank's rows of a replicated value, no
//! communication) — and whether the result is a partial value that an
//! `all_reduce` (sum, max, min) completes. Batch sums, means, counts and maxima
//! become all-reduces of their (small) results; only order-dependent and
//! pairwise terms gather rows. The plan is printed by `lossc emit --stage shard`
//! and checked by simulating ranks on the reference interpreter (`simulate`).

pub mod simulate;

use crate::dim::{Dim, Shape};
use crate::ir::{Graph, Handle};
use crate::ops::{Op, ReduceKind};
use std::fmt::Write;

/// Where a value lives: `None` replicated, `Some(axis)` local along `axis`.
pub type Layout = Option<usize>;

#[derive(Clone, Debug, PartialEq)]
pub struct NodeShard {
    /// The result's layout.
    pub out: Layout,
    /// The layout each argument is converted to before the op runs.
    pub want: Vec<Layout>,
    /// The op as each rank runs it: shape attributes use the local size on local axes.
    pub op: Op,
    /// The local result is partial: an all-reduce of this kind completes it.
    pub reduce: Option<ReduceKind>,
    /// `index_add` of local rows into a replicated base: each rank adds its rows
    /// into zeros, the sum over ranks is added to the base once.
    pub partial_add: bool,
}

pub struct ShardPlan {
    /// The batch dim's symbol (`N`).
    pub batch: String,
    /// The symbol of the rank's share of the batch.
    pub local: String,
    /// Per node (only nodes the results need are planned).
    pub nodes: Vec<Option<NodeShard>>,
    /// The local axis of each input (`None`: replicated).
    pub inputs: Vec<Layout>,
}

/// The batch dim: the leading dim of the first `diff` input, or `batch` when given.
pub fn batch_dim(g: &Graph, batch: Option<&str>) -> Option<String> {
    if let Some(b) = batch {
        return Some(b.to_string());
    }
    let first = g.inputs.iter().find(|i| i.diff)?;
    let d = first.ty.shape.first()?;
    let mut syms = vec![];
    d.symbols(&mut syms);
    (syms.len() == 1 && *d == Dim::sym(&syms[0])).then(|| syms[0].clone())
}

fn localize(shape: &Shape, axis: Layout, local: &str) -> Shape {
    let mut s = shape.clone();
    if let Some(a) = axis {
        s[a] = Dim::sym(local);
    }
    s
}

struct Cx<'g> {
    g: &'g Graph,
    b: Dim,
    out: Vec<Layout>,
}

impl Cx<'_> {
    fn is_b(&self, h: Handle, axis: usize) -> bool {
        self.g.ty(h).shape.get(axis) == Some(&self.b)
    }

    fn first_b(&self, shape: &Shape) -> Layout {
        shape.iter().position(|d| *d == self.b)
    }

    /// Elementwise with NumPy broadcasting: the first local argument decides the
    /// result's local axis; arguments aligned with it are sliced to it, the rest
    /// (broadcast along it) stay replicated.
    fn elementwise(&self, h: Handle) -> (Layout, Vec<Layout>) {
        let n = self.g.node(h);
        let rank = n.ty.shape.len();
        let mut out: Layout = None;
        for &a in &n.args {
            if let Some(ax) = self.out[a.index()] {
                let off = rank - self.g.ty(a).rank();
                let o = ax + off;
                if n.ty.shape[o] == self.b {
                    out = Some(o);
                    break;
                }
            }
        }
        let want = n
            .args
            .iter()
            .map(|&a| {
                let o = out?;
                let off = rank - self.g.ty(a).rank();
                let ax = o.checked_sub(off)?;
                self.is_b(a, ax).then_some(ax)
            })
            .collect();
        (out, want)
    }
}

/// Plans every node the program's results need.
pub fn analyze(g: &Graph, batch: Option<&str>) -> Option<ShardPlan> {
    let bname = batch_dim(g, batch)?;
    let b = Dim::sym(&bname);
    let local = format!("{bname}_local");
    let mut cx = Cx {
        g,
        b: b.clone(),
        out: vec![None; g.len()],
    };
    let inputs: Vec<Layout> = g.inputs.iter().map(|i| cx.first_b(&i.ty.shape)).collect();
    let mut nodes: Vec<Option<NodeShard>> = vec![None; g.len()];
    for (i, n) in g.nodes.iter().enumerate() {
        let h = Handle(i as u32);
        let lay = |a: Handle| cx.out[a.index()];
        let all_rep = vec![None; n.args.len()];
        let mut reduce = None;
        let mut partial_add = false;
        let mut op = n.op.clone();
        let (out, want): (Layout, Vec<Layout>) = match &n.op {
            Op::Input(k) => (inputs[*k], vec![]),
            // Sources are replicated; a consumer that needs their rows slices them.
            Op::Param(_)
            | Op::State(_)
            | Op::Const(..)
            | Op::DimSize(_)
            | Op::Fill(..)
            | Op::Iota(_)
            | Op::Rand(..) => (None, all_rep.clone()),
            Op::Unary(_) | Op::Binary(_) | Op::Where | Op::Cast(_) | Op::StopGrad => {
                cx.elementwise(h)
            }
            Op::Reduce {
                kind,
                axes,
                keepdims,
            } => {
                let a0 = n.args[0];
                match lay(a0) {
                    Some(ax) if axes.contains(&ax) => {
                        reduce = Some(*kind);
                        (None, vec![Some(ax)])
                    }
                    Some(ax) => {
                        let o = if *keepdims {
                            ax
                        } else {
                            ax - axes.iter().filter(|&&r| r < ax).count()
                        };
                        (Some(o), vec![Some(ax)])
                    }
                    None => (None, vec![None]),
                }
            }
            Op::Norm { axes, keepdims } => match lay(n.args[0]) {
                // the sum of squares is reduced over ranks, then the square root taken
                Some(ax) if axes.contains(&ax) => {
                    reduce = Some(ReduceKind::Sum);
                    (None, vec![Some(ax)])
                }
                Some(ax) => {
                    let o = if *keepdims {
                        ax
                    } else {
                        ax - axes.iter().filter(|&&r| r < ax).count()
                    };
                    (Some(o), vec![Some(ax)])
                }
                None => (None, vec![None]),
            },
            Op::ArgMax(axis) | Op::ArgMin(axis) => match lay(n.args[0]) {
                Some(ax) if ax != *axis => {
                    (Some(if ax > *axis { ax - 1 } else { ax }), vec![Some(ax)])
                }
                _ => (None, vec![None]),
            },
            Op::Reshape(shape) => {
                // Local rows survive a reshape that only adds or drops unit axes.
                let a0 = n.args[0];
                let strip =
                    |s: &Shape| -> Vec<Dim> { s.iter().filter(|d| !d.is_one()).cloned().collect() };
                let from = &g.ty(a0).shape;
                match lay(a0) {
                    Some(ax) if strip(from) == strip(shape) => {
                        let k = from[..ax].iter().filter(|d| !d.is_one()).count();
                        let o = shape
                            .iter()
                            .enumerate()
                            .filter(|(_, d)| !d.is_one())
                            .nth(k)
                            .map(|(j, _)| j);
                        match o {
                            Some(o) => {
                                op = Op::Reshape(localize(shape, Some(o), &local));
                                (Some(o), vec![Some(ax)])
                            }
                            None => (None, vec![None]),
                        }
                    }
                    _ => (None, vec![None]),
                }
            }
            Op::BroadcastTo(shape) => match lay(n.args[0]) {
                Some(ax) => {
                    let o = ax + shape.len() - g.ty(n.args[0]).rank();
                    op = Op::BroadcastTo(localize(shape, Some(o), &local));
                    (Some(o), vec![Some(ax)])
                }
                None => (None, vec![None]),
            },
            Op::Transpose(perm) => match lay(n.args[0]) {
                Some(ax) => (perm.iter().position(|&p| p == ax), vec![Some(ax)]),
                None => (None, vec![None]),
            },
            // Along the local axis these need every row; along another, rows stay local.
            Op::Slice { axis, .. }
            | Op::Pad { axis, .. }
            | Op::Reverse(axis)
            | Op::Argsort { axis, .. }
            | Op::Cumsum { axis, .. }
            | Op::LogCumSumExp { axis, .. } => match lay(n.args[0]) {
                Some(ax) if ax != *axis => (Some(ax), vec![Some(ax)]),
                _ => (None, vec![None]),
            },
            Op::Concat(axis) => {
                let first = n.args.iter().find_map(|&a| lay(a)).filter(|ax| ax != axis);
                match first {
                    Some(ax) if n.args.iter().all(|&a| cx.is_b(a, ax)) => {
                        (Some(ax), vec![Some(ax); n.args.len()])
                    }
                    _ => (None, all_rep.clone()),
                }
            }
            Op::TakeAlong(axis) | Op::ScatterAddAlong(axis) => {
                // Every argument has the same shape off `axis`: rows stay local together.
                let ax = n.args.iter().find_map(|&a| lay(a)).filter(|ax| ax != axis);
                match ax {
                    Some(ax) if n.args.iter().all(|&a| cx.is_b(a, ax)) => {
                        (Some(ax), vec![Some(ax); n.args.len()])
                    }
                    _ => (None, all_rep.clone()),
                }
            }
            Op::IndexSelect(axis) => {
                let (x, idx) = (n.args[0], n.args[1]);
                let ir = g.ty(idx).rank();
                match (lay(x), lay(idx)) {
                    // rows of a replicated table picked by local ids
                    (None, Some(b)) => (Some(axis + b), vec![None, Some(b)]),
                    (Some(ax), _) if ax != *axis => {
                        let o = if ax < *axis { ax } else { ax - 1 + ir };
                        (Some(o), vec![Some(ax), None])
                    }
                    _ => (None, vec![None, None]),
                }
            }
            Op::IndexAdd(axis) => {
                let (base, idx, v) = (n.args[0], n.args[1], n.args[2]);
                let ir = g.ty(idx).rank();
                match (lay(base), lay(idx), lay(v)) {
                    // the adjoint of picking table rows by local ids: every rank's
                    // rows add into the replicated table
                    (None, Some(bi), _) if cx.is_b(v, axis + bi) => {
                        partial_add = true;
                        (None, vec![None, Some(bi), Some(axis + bi)])
                    }
                    (Some(ax), _, _) if ax != *axis => {
                        let vo = if ax < *axis { ax } else { ax - 1 + ir };
                        if cx.is_b(v, vo) {
                            (Some(ax), vec![Some(ax), None, Some(vo)])
                        } else {
                            (None, vec![None; 3])
                        }
                    }
                    _ => (None, vec![None; 3]),
                }
            }
            Op::ScatterSet(axis) => {
                let (base, v) = (n.args[0], n.args[2]);
                let ir = g.ty(n.args[1]).rank();
                match lay(base) {
                    Some(ax) if ax != *axis => {
                        let vo = if ax < *axis { ax } else { ax - 1 + ir };
                        if cx.is_b(v, vo) {
                            (Some(ax), vec![Some(ax), None, Some(vo)])
                        } else {
                            (None, vec![None; 3])
                        }
                    }
                    // a replicated table updated from local rows: every rank applies
                    // every rank's rows, so the table stays identical
                    _ => (None, vec![None; 3]),
                }
            }
            Op::OneHot(_) => match lay(n.args[0]) {
                Some(ax) => (Some(ax), vec![Some(ax)]),
                None => (None, vec![None]),
            },
            Op::MatMul => {
                let (a, bm) = (n.args[0], n.args[1]);
                match (lay(a), lay(bm)) {
                    (Some(0), _) => (Some(0), vec![Some(0), None]),
                    (_, Some(1)) => (Some(1), vec![None, Some(1)]),
                    // a contraction over local rows: partial products summed over ranks
                    (Some(1), _) | (_, Some(0)) => {
                        reduce = Some(ReduceKind::Sum);
                        (None, vec![Some(1), Some(0)])
                    }
                    _ => (None, vec![None, None]),
                }
            }
            Op::SearchSorted { .. } => match lay(n.args[1]) {
                Some(ax) => (Some(ax), vec![None, Some(ax)]),
                None => (None, vec![None, None]),
            },
        };
        cx.out[i] = out;
        nodes[i] = Some(NodeShard {
            out,
            want,
            op,
            reduce,
            partial_add,
        });
    }
    Some(ShardPlan {
        batch: bname,
        local,
        nodes,
        inputs,
    })
}

fn lay_txt(l: Layout) -> String {
    match l {
        None => "rep".into(),
        Some(a) => format!("local@{a}"),
    }
}

/// The text form (`lossc emit --stage shard`): per node its layout, the
/// conversions of its arguments and its all-reduce; then what each result needs.
pub fn print(g: &Graph, plan: &ShardPlan) -> String {
    let mut s = String::new();
    let _ = writeln!(s, "; losslang shard v1");
    let _ = writeln!(
        s,
        "batch {} (each rank holds {} rows)",
        plan.batch, plan.local
    );
    for (k, i) in g.inputs.iter().enumerate() {
        let _ = writeln!(s, "input {} {}", i.name, lay_txt(plan.inputs[k]));
    }
    // Distinct gathers (a value gathered once serves every use).
    let mut gathered = std::collections::BTreeSet::new();
    let mut reduces = 0;
    for (i, n) in g.nodes.iter().enumerate() {
        let Some(p) = &plan.nodes[i] else { continue };
        let mut conv = vec![];
        for (j, (&a, want)) in n.args.iter().zip(&p.want).enumerate() {
            let have = plan.nodes[a.index()].as_ref().and_then(|q| q.out);
            if have != *want {
                let what = match (have, want) {
                    (Some(ax), None) => {
                        gathered.insert(a);
                        format!("gather@{ax}")
                    }
                    (None, Some(ax)) => format!("slice@{ax}"),
                    (Some(x), Some(y)) => {
                        gathered.insert(a);
                        format!("gather@{x} slice@{y}")
                    }
                    (None, None) => unreachable!("equal layouts need no conversion"),
                };
                conv.push(format!("arg{j} {what}"));
            }
        }
        let a = crate::ir::print::attrs(&p.op);
        let head = if a.is_empty() {
            p.op.name()
        } else {
            format!("{}[{a}]", p.op.name())
        };
        let args: Vec<String> = n.args.iter().map(|a| a.to_string()).collect();
        let sep = if args.is_empty() { "" } else { " " };
        let mut line = format!("%{i} = {head}{sep}{} : {}", args.join(", "), lay_txt(p.out));
        if !conv.is_empty() {
            let _ = write!(line, "  [{}]", conv.join(", "));
        }
        if let Some(k) = p.reduce {
            reduces += 1;
            let _ = write!(
                line,
                "  all_reduce({})",
                match k {
                    ReduceKind::Sum => "sum",
                    ReduceKind::Max => "max",
                    ReduceKind::Min => "min",
                }
            );
        }
        if p.partial_add {
            reduces += 1;
            line.push_str("  base + all_reduce(sum)");
        }
        let _ = writeln!(s, "{line}");
    }
    // What the results need: the loss and new state replicated, each gradient in
    // its input's layout (reports keep their layout: per-row reports are the rank's rows).
    let have = |h: Handle| plan.nodes[h.index()].as_ref().and_then(|q| q.out);
    for u in &g.updates {
        let v = have(u.value);
        if v.is_some() {
            gathered.insert(u.value);
        }
        let _ = writeln!(
            s,
            "update {} <- %{}{}",
            g.states[u.state].name,
            u.value.0,
            if v.is_some() { "  [gather]" } else { "" }
        );
    }
    for (k, h) in &g.grads {
        let (v, want) = (have(*h), plan.inputs[*k]);
        let conv = match (v, want) {
            (a, b) if a == b => String::new(),
            (None, Some(ax)) => format!("  [slice@{ax}]"),
            _ => {
                gathered.insert(*h);
                "  [gather, slice]".into()
            }
        };
        let _ = writeln!(s, "grad {} = %{}{conv}", g.inputs[*k].name, h.0);
    }
    let _ = writeln!(
        s,
        "collectives: {reduces} all_reduce, {} gather",
        gathered.len()
    );
    s
}
