//! The stable text form of a graph: a header line, the signature, one line
//! per node (`%n = op[attrs] args : type`), then the results. Dense `%n`
//! numbering, no hash-map iteration, floats printed round-trip.

use super::Graph;
use crate::dim::shape_str;
use crate::ops::{Op, RandKind, ReduceKind};
use std::fmt::Write;

pub fn attrs(op: &Op) -> String {
    let list = |v: &[usize]| {
        v.iter()
            .map(|a| a.to_string())
            .collect::<Vec<_>>()
            .join(",")
    };
    match op {
        Op::Input(k) | Op::Param(k) | Op::State(k) => format!("#{k}"),
        Op::Const(v, d) => format!("{}:{d}", v.text()),
        Op::DimSize(d) => d.to_string(),
        Op::Fill(v, d, s) => format!("{}:{d}, {}", v.text(), shape_str(s)),
        Op::Iota(n) => n.to_string(),
        Op::Rand(k, s) => format!(
            "{}, {}",
            match k {
                RandKind::Normal => "normal",
                RandKind::Uniform => "uniform",
            },
            shape_str(s)
        ),
        Op::Unary(_) | Op::Binary(_) | Op::Where | Op::StopGrad | Op::MatMul => String::new(),
        Op::Cast(d) => d.to_string(),
        Op::Reduce {
            kind,
            axes,
            keepdims,
        } => format!(
            "{}axes={}{}",
            match kind {
                ReduceKind::Sum | ReduceKind::Max | ReduceKind::Min => "",
            },
            list(axes),
            if *keepdims { ", keepdims" } else { "" }
        ),
        Op::ArgMax(a) | Op::ArgMin(a) | Op::Reverse(a) | Op::Concat(a) => format!("axis={a}"),
        Op::Norm { axes, keepdims } => format!(
            "axes={}{}",
            list(axes),
            if *keepdims { ", keepdims" } else { "" }
        ),
        Op::Reshape(s) | Op::BroadcastTo(s) => shape_str(s),
        Op::Transpose(p) => format!("perm={}", list(p)),
        Op::Slice {
            axis,
            start,
            len,
            step,
        } => format!("axis={axis}, start={start}, len={len}, step={step}"),
        Op::Pad {
            axis,
            start,
            full,
            step,
        } => format!("axis={axis}, start={start}, full={full}, step={step}"),
        Op::TakeAlong(a)
        | Op::ScatterAddAlong(a)
        | Op::IndexSelect(a)
        | Op::IndexAdd(a)
        | Op::ScatterSet(a) => {
            format!("axis={a}")
        }
        Op::OneHot(d) => format!("depth={d}"),
        Op::Argsort { axis, descending } => format!(
            "axis={axis}{}",
            if *descending { ", descending" } else { "" }
        ),
        Op::Cumsum { axis, reverse } | Op::LogCumSumExp { axis, reverse } => {
            format!("axis={axis}{}", if *reverse { ", reverse" } else { "" })
        }
        Op::SearchSorted { right } => (if *right { "right" } else { "left" }).to_string(),
    }
}

pub fn print(g: &Graph, stage: &str) -> String {
    let mut s = String::new();
    let _ = writeln!(s, "; losslang {stage} v1");
    let _ = writeln!(s, "loss {}", g.name);
    for i in &g.inputs {
        let _ = writeln!(
            s,
            "  input {}: {}{}",
            i.name,
            i.ty,
            if i.diff { " diff" } else { "" }
        );
    }
    for p in &g.params {
        let _ = writeln!(s, "  param {}: {} = {}", p.name, p.dtype, p.default.text());
    }
    for st in &g.states {
        let _ = writeln!(s, "  state {}: {} = {}", st.name, st.ty, st.init);
    }
    for (i, n) in g.nodes.iter().enumerate() {
        let name = n.op.name();
        let a = attrs(&n.op);
        let head = if a.is_empty() {
            name
        } else {
            format!("{name}[{a}]")
        };
        let label = match &n.op {
            Op::Input(k) => format!(" {}", g.inputs[*k].name),
            Op::Param(k) => format!(" {}", g.params[*k].name),
            Op::State(k) => format!(" {}", g.states[*k].name),
            _ => String::new(),
        };
        let args: Vec<String> = n.args.iter().map(|a| a.to_string()).collect();
        let sep = if args.is_empty() { "" } else { " " };
        let _ = writeln!(s, "%{i} = {head}{label}{sep}{} : {}", args.join(", "), n.ty);
    }
    if let Some(l) = g.loss {
        let _ = writeln!(s, "result loss = {l}");
    }
    for (n, h) in &g.reports {
        let _ = writeln!(s, "report {n} = {h}");
    }
    for u in &g.updates {
        let _ = writeln!(s, "update {} <- {}", g.states[u.state].name, u.value);
    }
    for c in &g.checks {
        let _ = writeln!(s, "check {} \"{}\"", c.cond, c.message);
    }
    for (k, h) in &g.grads {
        let _ = writeln!(s, "grad {} = {h}", g.inputs[*k].name);
    }
    s
}
