//! The schedule: plain data saying where each node's value lives (a buffer
//! slot, or registers inside the kernels that use it) and which kernels run,
//! in order, with their loop nests. `lower` turns each kernel into one
//! Cranelift function; `print` is the `--stage sched` text form.

use crate::abi::Storage;
use losslang_compiler::dim::{Dim, shape_str};
use losslang_compiler::ir::{Graph, Handle};
use losslang_compiler::ops::Op;
use losslang_compiler::value::DType;
use std::collections::BTreeSet;
use std::fmt::Write;

/// Where a node's value lives.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Place {
    /// Not needed for the requested results.
    Dead,
    /// Computed in registers where it is used (never stored).
    Inline,
    /// Stored in this slot.
    Slot(usize),
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SlotKind {
    Input(usize),
    Param(usize),
    State(usize),
    /// A node's value, written by the kernel that computes it.
    Node(Handle),
    /// Working memory of one kernel stage (accumulators, marks).
    Scratch,
}

#[derive(Clone, Debug)]
pub struct Slot {
    pub kind: SlotKind,
    pub storage: Storage,
    pub shape: Vec<Dim>,
}

/// One step of a kernel, run once per iteration of the kernel's outer loops.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Stage {
    /// One loop nest over the nodes' common shape (less the outer axes),
    /// storing each node; their inline producers are computed in registers.
    Map { nodes: Vec<Handle> },
    /// A reduction (`sum max min norm argmax argmin`) with its producer chain
    /// inlined; `acc` is a scratch accumulator when the reduced axes are not
    /// the innermost ones.
    Reduce { node: Handle, acc: Option<usize> },
    /// An op with a loop structure of its own (concat, scatters, one_hot,
    /// matmul, argsort, cumsum); `scratch` is its working memory.
    Special {
        node: Handle,
        scratch: Option<usize>,
    },
}

#[derive(Clone, Debug)]
pub struct Kernel {
    /// Loops shared by every stage; the first is the one split across threads.
    pub outer: Vec<Dim>,
    pub stages: Vec<Stage>,
    /// Whether the first outer loop may be split across threads (its
    /// iterations write disjoint rows and combine nothing).
    pub parallel: bool,
}

#[derive(Clone, Debug)]
pub struct Schedule {
    pub roots: Vec<Handle>,
    pub place: Vec<Place>,
    pub slots: Vec<Slot>,
    /// Every non-constant dim the kernels use, in a fixed order: the driver
    /// passes their values in this order.
    pub dims: Vec<Dim>,
    pub kernels: Vec<Kernel>,
}

pub fn storage(d: DType) -> Storage {
    match d {
        DType::F32 => Storage::F32,
        DType::F64 => Storage::F64,
        DType::I64 => Storage::I64,
        DType::Bool => Storage::U8,
    }
}

/// How an op is evaluated.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Class {
    /// Bound by the caller (inputs, params, state).
    External,
    /// A constant or run-time size: free to recompute anywhere.
    Leaf,
    /// Computable per output element from its arguments' elements.
    Elementwise,
    /// A reduction over axes.
    Reduction,
    /// Its own loop structure.
    Special,
}

pub fn class(op: &Op) -> Class {
    match op {
        Op::Input(_) | Op::Param(_) | Op::State(_) => Class::External,
        Op::Const(..) | Op::DimSize(_) | Op::Fill(..) | Op::Iota(_) => Class::Leaf,
        Op::Rand(..)
        | Op::Unary(_)
        | Op::Binary(_)
        | Op::Where
        | Op::Cast(_)
        | Op::StopGrad
        | Op::Reshape(_)
        | Op::BroadcastTo(_)
        | Op::Transpose(_)
        | Op::Slice { .. }
        | Op::Pad { .. }
        | Op::Reverse(_)
        | Op::TakeAlong(_)
        | Op::IndexSelect(_)
        | Op::SearchSorted { .. } => Class::Elementwise,
        Op::Reduce { .. } | Op::ArgMax(_) | Op::ArgMin(_) | Op::Norm { .. } => Class::Reduction,
        Op::Concat(_)
        | Op::ScatterAddAlong(_)
        | Op::IndexAdd(_)
        | Op::ScatterSet(_)
        | Op::OneHot(_)
        | Op::MatMul
        | Op::Argsort { .. }
        | Op::Cumsum { .. }
        | Op::LogCumSumExp { .. } => Class::Special,
    }
}

/// The axes a reduction node reduces.
pub fn reduced_axes(op: &Op) -> Vec<usize> {
    match op {
        Op::Reduce { axes, .. } | Op::Norm { axes, .. } => axes.clone(),
        Op::ArgMax(a) | Op::ArgMin(a) => vec![*a],
        _ => vec![],
    }
}

/// A reduction accumulates in registers when every axis from its first
/// reduced axis on is reduced (or has size 1): one accumulator per output
/// element, filled by one pass over contiguous memory. Argmax and argmin
/// always work per output element.
pub fn reduces_in_registers(g: &Graph, h: Handle) -> bool {
    let n = g.node(h);
    if matches!(n.op, Op::ArgMax(_) | Op::ArgMin(_)) {
        return true;
    }
    let axes = reduced_axes(&n.op);
    let xs = &g.ty(n.args[0]).shape;
    let Some(&m) = axes.first() else {
        return true;
    };
    (m..xs.len()).all(|a| axes.contains(&a) || xs[a].is_one())
}

/// Arguments that must be in a slot (contiguous, row-major) because a
/// runtime function or a scan over them reads memory directly.
pub fn needs_slot_args(op: &Op) -> &'static [usize] {
    match op {
        Op::MatMul => &[0, 1],
        Op::Argsort { .. } => &[0],
        Op::ScatterSet(_) => &[1],
        Op::SearchSorted { .. } => &[0],
        _ => &[],
    }
}

/// The needed nodes for `roots`.
pub fn needed(g: &Graph, roots: &[Handle]) -> Vec<bool> {
    let mut need = vec![false; g.len()];
    for r in roots {
        need[r.index()] = true;
    }
    for i in (0..g.len()).rev() {
        if need[i] {
            for a in &g.nodes[i].args {
                need[a.index()] = true;
            }
        }
    }
    need
}

struct Builder<'g> {
    g: &'g Graph,
    place: Vec<Place>,
    slots: Vec<Slot>,
}

impl Builder<'_> {
    fn slot(&mut self, kind: SlotKind, storage: Storage, shape: Vec<Dim>) -> usize {
        self.slots.push(Slot {
            kind,
            storage,
            shape,
        });
        self.slots.len() - 1
    }

    fn node_slot(&mut self, h: Handle) -> usize {
        let ty = self.g.ty(h).clone();
        let s = self.slot(SlotKind::Node(h), storage(ty.dtype), ty.shape);
        self.place[h.index()] = Place::Slot(s);
        s
    }

    fn scratch(&mut self, storage: Storage, shape: Vec<Dim>) -> usize {
        self.slot(SlotKind::Scratch, storage, shape)
    }
}

/// Scratch memory a reduction or special stage needs.
fn stage_for(b: &mut Builder, h: Handle) -> Stage {
    let g = b.g;
    let n = g.node(h);
    match class(&n.op) {
        Class::Reduction => {
            let acc = if reduces_in_registers(g, h) {
                None
            } else {
                let st = match (&n.op, n.ty.dtype) {
                    (Op::Reduce { kind, .. }, d)
                        if *kind != losslang_compiler::ops::ReduceKind::Sum =>
                    {
                        storage(d)
                    }
                    (_, DType::I64) => Storage::I64,
                    _ => Storage::F64,
                };
                Some(b.scratch(st, n.ty.shape.clone()))
            };
            Stage::Reduce { node: h, acc }
        }
        Class::Special => {
            let scratch = match &n.op {
                Op::ScatterSet(axis) => {
                    let size = g.ty(n.args[0]).shape[*axis].clone();
                    Some(b.scratch(Storage::U8, vec![size]))
                }
                Op::ScatterAddAlong(_) | Op::IndexAdd(_) if n.ty.dtype == DType::F32 => {
                    Some(b.scratch(Storage::F64, n.ty.shape.clone()))
                }
                _ => None,
            };
            Stage::Special { node: h, scratch }
        }
        Class::External | Class::Leaf | Class::Elementwise => Stage::Map { nodes: vec![h] },
    }
}

/// The unfused schedule: every needed node that is not a leaf gets a slot and
/// a kernel of its own.
pub fn build(g: &Graph, roots: &[Handle]) -> Schedule {
    let need = needed(g, roots);
    let mut b = Builder {
        g,
        place: vec![Place::Dead; g.len()],
        slots: vec![],
    };
    let mut roots_sorted: Vec<Handle> = roots.to_vec();
    roots_sorted.sort();
    roots_sorted.dedup();
    // Caller-bound values first, in declaration order.
    for (i, n) in g.nodes.iter().enumerate() {
        if !need[i] {
            continue;
        }
        let kind = match n.op {
            Op::Input(k) => SlotKind::Input(k),
            Op::Param(k) => SlotKind::Param(k),
            Op::State(k) => SlotKind::State(k),
            _ => continue,
        };
        let s = b.slot(kind, storage(n.ty.dtype), n.ty.shape.clone());
        b.place[i] = Place::Slot(s);
    }
    let mut must_slot = vec![false; g.len()];
    for r in &roots_sorted {
        must_slot[r.index()] = true;
    }
    for (i, n) in g.nodes.iter().enumerate() {
        if need[i] {
            for &a in needs_slot_args(&n.op) {
                must_slot[n.args[a].index()] = true;
            }
        }
    }
    let mut kernels = vec![];
    for (i, n) in g.nodes.iter().enumerate() {
        if !need[i] || b.place[i] != Place::Dead {
            continue;
        }
        let h = Handle(i as u32);
        if class(&n.op) == Class::Leaf && !must_slot[i] {
            b.place[i] = Place::Inline;
            continue;
        }
        b.node_slot(h);
        let stage = stage_for(&mut b, h);
        kernels.push(Kernel {
            outer: vec![],
            stages: vec![stage],
            parallel: false,
        });
    }
    finish(g, roots_sorted, b.place, b.slots, kernels)
}

/// The schedule the JIT uses.
pub fn fuse(g: &Graph, roots: &[Handle]) -> Schedule {
    build(g, roots)
}

fn op_dims(op: &Op, out: &mut BTreeSet<Dim>) {
    match op {
        Op::DimSize(d) | Op::Iota(d) | Op::OneHot(d) => {
            out.insert(d.clone());
        }
        Op::Fill(_, _, s) | Op::Rand(_, s) | Op::Reshape(s) | Op::BroadcastTo(s) => {
            out.extend(s.iter().cloned());
        }
        Op::Slice { start, len, .. } => {
            out.insert(start.clone());
            out.insert(len.clone());
        }
        Op::Pad { start, full, .. } => {
            out.insert(start.clone());
            out.insert(full.clone());
        }
        _ => {}
    }
}

/// The dims a kernel reads (constant ones included): shapes of every node it
/// touches (stored, inlined or read), op attributes, slot shapes and its outer loops.
pub fn kernel_dims(g: &Graph, s: &Schedule, k: &Kernel) -> BTreeSet<Dim> {
    let mut out: BTreeSet<Dim> = k.outer.iter().cloned().collect();
    let mut seen = vec![false; g.len()];
    let mut stack: Vec<Handle> = vec![];
    for st in &k.stages {
        match st {
            Stage::Map { nodes } => stack.extend(nodes.iter().copied()),
            Stage::Reduce { node, acc } => {
                stack.push(*node);
                if let Some(a) = acc {
                    out.extend(s.slots[*a].shape.iter().cloned());
                }
            }
            Stage::Special { node, scratch } => {
                stack.push(*node);
                if let Some(a) = scratch {
                    out.extend(s.slots[*a].shape.iter().cloned());
                }
            }
        }
    }
    // Stage nodes and inline nodes are computed here: their arguments are read
    // or inlined, so their shapes matter too.
    while let Some(h) = stack.pop() {
        if seen[h.index()] {
            continue;
        }
        seen[h.index()] = true;
        let n = g.node(h);
        out.extend(n.ty.shape.iter().cloned());
        op_dims(&n.op, &mut out);
        if s.place[h.index()] == Place::Inline || is_stage_node(k, h) {
            for &a in &n.args {
                out.extend(g.ty(a).shape.iter().cloned());
                stack.push(a);
            }
        }
    }
    out
}

fn is_stage_node(k: &Kernel, h: Handle) -> bool {
    k.stages.iter().any(|st| match st {
        Stage::Map { nodes } => nodes.contains(&h),
        Stage::Reduce { node, .. } | Stage::Special { node, .. } => *node == h,
    })
}

/// The slots a kernel touches (read or written).
pub fn kernel_slots(g: &Graph, s: &Schedule, k: &Kernel) -> BTreeSet<usize> {
    let mut out = BTreeSet::new();
    let mut seen = vec![false; g.len()];
    let mut stack: Vec<Handle> = vec![];
    for st in &k.stages {
        match st {
            Stage::Map { nodes } => stack.extend(nodes.iter().copied()),
            Stage::Reduce { node, acc } => {
                stack.push(*node);
                out.extend(*acc);
            }
            Stage::Special { node, scratch } => {
                stack.push(*node);
                out.extend(*scratch);
            }
        }
    }
    while let Some(h) = stack.pop() {
        if seen[h.index()] {
            continue;
        }
        seen[h.index()] = true;
        if let Place::Slot(sl) = s.place[h.index()] {
            out.insert(sl);
        }
        let computed_here = s.place[h.index()] == Place::Inline || is_stage_node(k, h);
        if computed_here {
            stack.extend(g.node(h).args.iter().copied());
        }
    }
    out
}

fn finish(
    g: &Graph,
    roots: Vec<Handle>,
    place: Vec<Place>,
    slots: Vec<Slot>,
    kernels: Vec<Kernel>,
) -> Schedule {
    let mut s = Schedule {
        roots,
        place,
        slots,
        dims: vec![],
        kernels,
    };
    let mut all = BTreeSet::new();
    for k in &s.kernels {
        all.extend(kernel_dims(g, &s, k));
    }
    for sl in &s.slots {
        all.extend(sl.shape.iter().cloned());
    }
    s.dims = all.into_iter().filter(|d| d.as_const().is_none()).collect();
    s
}

impl Schedule {
    pub fn dim_index(&self, d: &Dim) -> usize {
        self.dims
            .iter()
            .position(|x| x == d)
            .unwrap_or_else(|| panic!("internal: dim `{d}` is not in the dim table"))
    }

    pub fn slot_of(&self, h: Handle) -> Option<usize> {
        match self.place[h.index()] {
            Place::Slot(s) => Some(s),
            Place::Dead | Place::Inline => None,
        }
    }
}

/// The `--stage sched` text form: slots, then each kernel as a loop nest.
pub fn print(g: &Graph, s: &Schedule, title: &str) -> String {
    let mut o = String::new();
    let _ = writeln!(o, "; {title}");
    for (i, sl) in s.slots.iter().enumerate() {
        let what = match &sl.kind {
            SlotKind::Input(k) => format!("input {}", g.inputs[*k].name),
            SlotKind::Param(k) => format!("param {}", g.params[*k].name),
            SlotKind::State(k) => format!("state {}", g.states[*k].name),
            SlotKind::Node(h) => format!("{h}"),
            SlotKind::Scratch => "scratch".to_string(),
        };
        let _ = writeln!(
            o,
            "slot s{i} {}{} = {what}",
            sl.storage.name(),
            shape_str(&sl.shape)
        );
    }
    for (ki, k) in s.kernels.iter().enumerate() {
        let _ = writeln!(o, "kernel k{ki}:");
        let mut ind = 1;
        for (j, d) in k.outer.iter().enumerate() {
            let par = if j == 0 { " parallel" } else { "" };
            let _ = writeln!(o, "{}for o{j} in 0..{d}:{par}", "  ".repeat(ind));
            ind += 1;
        }
        for st in &k.stages {
            print_stage(g, s, k, st, ind, &mut o);
        }
    }
    o
}

fn inline_list(g: &Graph, s: &Schedule, roots: &[Handle]) -> Vec<Handle> {
    let mut seen = BTreeSet::new();
    let mut stack: Vec<Handle> = vec![];
    for r in roots {
        stack.extend(g.node(*r).args.iter().copied());
    }
    while let Some(h) = stack.pop() {
        if s.place[h.index()] == Place::Inline && seen.insert(h) {
            stack.extend(g.node(h).args.iter().copied());
        }
    }
    seen.into_iter().collect()
}

fn print_stage(g: &Graph, s: &Schedule, k: &Kernel, st: &Stage, ind: usize, o: &mut String) {
    let pad = |n: usize| "  ".repeat(n);
    let describe = |h: Handle| -> String {
        let n = g.node(h);
        let args: Vec<String> = n.args.iter().map(|a| a.to_string()).collect();
        let at = match s.place[h.index()] {
            Place::Slot(sl) => format!(" -> s{sl}"),
            Place::Inline | Place::Dead => " (registers)".into(),
        };
        format!("{h} = {} {}{at}", n.op.name(), args.join(", "))
    };
    match st {
        Stage::Map { nodes } => {
            let shape = &g.ty(nodes[0]).shape;
            let mut i = ind;
            for (a, d) in shape.iter().enumerate().skip(k.outer.len()) {
                if !d.is_one() {
                    let _ = writeln!(o, "{}for i{a} in 0..{d}:", pad(i));
                    i += 1;
                }
            }
            for h in inline_list(g, s, nodes) {
                let _ = writeln!(o, "{}{}", pad(i), describe(h));
            }
            for h in nodes {
                let _ = writeln!(o, "{}store {}", pad(i), describe(*h));
            }
        }
        Stage::Reduce { node, acc } => {
            let x = g.node(*node).args[0];
            let axes = reduced_axes(&g.node(*node).op);
            let xs = &g.ty(x).shape;
            let how = match acc {
                Some(a) => format!("accumulate in s{a}"),
                None => "accumulate in registers".into(),
            };
            let _ = writeln!(
                o,
                "{}reduce {} over axes {:?} of {} ({how}):",
                pad(ind),
                describe(*node),
                axes,
                shape_str(xs)
            );
            for h in inline_list(g, s, &[*node]) {
                let _ = writeln!(o, "{}{}", pad(ind + 1), describe(h));
            }
        }
        Stage::Special { node, scratch } => {
            let sc = scratch
                .map(|a| format!(" (scratch s{a})"))
                .unwrap_or_default();
            let _ = writeln!(
                o,
                "{}{} {}{sc}",
                pad(ind),
                g.node(*node).op.name(),
                describe(*node)
            );
            for h in inline_list(g, s, &[*node]) {
                let _ = writeln!(o, "{}{}", pad(ind + 1), describe(h));
            }
        }
    }
}
