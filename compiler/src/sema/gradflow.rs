//! Differentiability: for every value, which `diff` inputs it depends on
//! through a gradient-carrying path, and how (smooth or piecewise). An input
//! whose every path to the loss is cut is an error that points at the cutting
//! operation; a piecewise-constant op on a live gradient path is a warning.

use super::scope::Checker;
use crate::diag::Diagnostic;
use crate::ir::{Graph, Handle};
use crate::ops::{GradKind, Op};
use std::collections::BTreeMap;

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Status {
    Smooth,
    Piecewise,
}

/// Per node: status per diff input (index into `inputs`), and where paths were cut.
pub struct Flow {
    pub status: Vec<BTreeMap<usize, Status>>,
    pub cuts: Vec<BTreeMap<usize, Handle>>,
}

pub fn flow(g: &Graph) -> Flow {
    let n = g.len();
    let mut status: Vec<BTreeMap<usize, Status>> = vec![BTreeMap::new(); n];
    let mut cuts: Vec<BTreeMap<usize, Handle>> = vec![BTreeMap::new(); n];
    for i in 0..n {
        let node = g.node(Handle(i as u32));
        let mut st = BTreeMap::new();
        let mut ct = BTreeMap::new();
        for a in &node.args {
            for (k, c) in &cuts[a.index()] {
                ct.entry(*k).or_insert(*c);
            }
        }
        let merged = |st: &mut BTreeMap<usize, Status>, kink: bool| {
            for a in &node.args {
                for (k, s) in &status[a.index()] {
                    let s = if kink { Status::Piecewise } else { *s };
                    let e = st.entry(*k).or_insert(s);
                    *e = (*e).max(s);
                }
            }
        };
        match node.op.grad_kind() {
            GradKind::Source => {
                if let Op::Input(k) = node.op
                    && g.inputs[k].diff
                {
                    st.insert(k, Status::Smooth);
                }
            }
            GradKind::Smooth => merged(&mut st, false),
            GradKind::Kink => merged(&mut st, true),
            GradKind::PiecewiseConstant | GradKind::Cut | GradKind::Stop => {
                for a in &node.args {
                    for k in status[a.index()].keys() {
                        ct.entry(*k).or_insert(Handle(i as u32));
                    }
                }
            }
        }
        // Integer and bool values carry no gradient.
        if !node.ty.dtype.is_float() {
            for k in st.keys() {
                ct.entry(*k).or_insert(Handle(i as u32));
            }
            st.clear();
        }
        status[i] = st;
        cuts[i] = ct;
    }
    Flow { status, cuts }
}

fn cut_help(op: &Op) -> String {
    match op {
        Op::StopGrad => {
            "`stop_grad` blocks the gradient on purpose; remove it if the gradient should flow"
                .into()
        }
        Op::ArgMax(_) | Op::ArgMin(_) => {
            "argmax has no gradient; weight by softmax(x, axis) for a smooth choice".into()
        }
        Op::Argsort { .. } => {
            "an ordering has no gradient; sort(x) (which carries the values) does".into()
        }
        Op::Cast(_) => {
            "a cast to an integer or bool is a step function; keep the value as a float".into()
        }
        Op::Binary(b) if b.is_comparison() => {
            "a comparison is a step function; use sigmoid((a - b) / T) for a smooth mask".into()
        }
        Op::Unary(u) if u.grad_kind() == GradKind::PiecewiseConstant => {
            format!(
                "`{}` has zero gradient almost everywhere; use a smooth surrogate",
                u.name()
            )
        }
        _ => "this operation has no gradient".into(),
    }
}

pub fn analyse(ck: &mut Checker) {
    let Some(loss) = ck.g.loss else { return };
    let fl = flow(&ck.g);
    let ls = &fl.status[loss.index()];
    for (k, inp) in ck.g.inputs.clone().iter().enumerate() {
        if !inp.diff || ls.contains_key(&k) {
            continue;
        }
        let d = match fl.cuts[loss.index()].get(&k) {
            Some(c) => {
                let node = ck.g.node(*c).clone();
                Diagnostic::error(
                    "L4001",
                    ck.file,
                    node.span,
                    format!(
                        "no gradient reaches `{}`: its path to the loss is cut here",
                        inp.name
                    ),
                )
                .label(format!("`{}` has no gradient", node.op.surface()))
                .related(inp.span, "declared `diff` here")
                .help(cut_help(&node.op))
            }
            None => Diagnostic::error(
                "L4002",
                ck.file,
                inp.span,
                format!("the loss does not depend on `{}`", inp.name),
            )
            .label("marked `diff` but never used on a path to the loss")
            .help("use it in the loss, or remove `diff`"),
        };
        ck.diags.push(d);
    }
    // Live: nodes whose value reaches the loss through gradient-carrying edges.
    let n = ck.g.len();
    let mut live = vec![false; n];
    live[loss.index()] = true;
    for i in (0..n).rev() {
        if !live[i] {
            continue;
        }
        let node = ck.g.node(Handle(i as u32));
        if matches!(node.op.grad_kind(), GradKind::Stop | GradKind::Cut) {
            continue;
        }
        for a in &node.args {
            live[a.index()] = true;
        }
    }
    for (i, &is_live) in live.iter().enumerate() {
        let node = ck.g.node(Handle(i as u32)).clone();
        if node.op.grad_kind() != GradKind::PiecewiseConstant
            || !is_live
            || !node.ty.dtype.is_float()
        {
            continue;
        }
        let on_path = node.args.iter().any(|a| !fl.status[a.index()].is_empty());
        if on_path {
            ck.diags.push(
                Diagnostic::warning(
                    "L4101",
                    ck.file,
                    node.span,
                    format!(
                        "`{}` is piecewise constant: its gradient is zero almost everywhere",
                        node.op.name()
                    ),
                )
                .label("on a gradient path")
                .help("wrap it in stop_grad(...) if that is intended, or use a smooth surrogate"),
            );
        }
    }
}

/// One line of `check --explain`: the gradient status of a value.
pub fn describe(g: &Graph, fl: &Flow, h: Handle) -> String {
    let st = &fl.status[h.index()];
    if st.is_empty() {
        let cuts: Vec<String> = fl.cuts[h.index()]
            .iter()
            .map(|(k, c)| format!("{} (cut by `{}`)", g.inputs[*k].name, g.node(*c).op.name()))
            .collect();
        return if cuts.is_empty() {
            "constant".into()
        } else {
            format!("constant; {}", cuts.join(", "))
        };
    }
    let parts: Vec<String> = st
        .iter()
        .map(|(k, s)| {
            format!(
                "{} in {}",
                match s {
                    Status::Smooth => "smooth",
                    Status::Piecewise => "piecewise",
                },
                g.inputs[*k].name
            )
        })
        .collect();
    parts.join(", ")
}
