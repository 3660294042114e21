//! The schedule: plain data saying where each node's value lives (a buffer
//! slot, or registers inside the kernels that use it) and which kernels run,
//! in order, with their loop nests. `lower` turns each kernel into one
//! Cranelift function; `print` is the `--stage sched` text form.
//!
//! Fusion (`fuse`): element-wise nodes are computed in registers wherever
//! they are used (a loss is memory-bound, so recomputing costs only
//! arithmetic) unless a consumer broadcasts an expensive one, a runtime
//! function needs it in memory, or it is a result. The remaining stages
//! (stored values, reductions, index checks) are grouped into *row kernels*:
//! one loop over the leading (batch) dim whose body runs every stage for that
//! row — row statistics (max, sum of exp, …) stay in registers for the
//! passes after them, reductions over the whole tensor leave one partial per
//! row (combined in row order afterwards, so the bits do not depend on the
//! thread count), and rows can be split across threads. A stage joins the
//! open row kernel when everything it reads from that kernel is in its own
//! row. A stage that cannot join goes to a kernel before it (when it needs
//! nothing the row kernel computes) or after it (when it does, e.g. a
//! gradient that needs a sum over all rows); the row kernel stays open for
//! the stages after that can still join it. Inside a kernel, values read at
//! fixed indices (outer-loop indices and zeros, after `index_deps`) are
//! computed once per row or once per call (`walk_stage`), and the
//! innermost loop runs 4 f32 lanes at a time when its body allows.

use crate::abi::Storage;
use losslang_compiler::dim::{Dim, shape_str};
use losslang_compiler::ir::{Graph, Handle};
use losslang_compiler::ops::{Op, ReduceKind, UnaryOp};
use losslang_compiler::value::DType;
use std::collections::{BTreeSet, HashMap, HashSet};
use std::fmt::Write;

/// Where a node's value lives.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Place {
    /// Not needed for the requested results.
    Dead,
    /// Computed in registers where it is used (never stored): element-wise
    /// nodes, and row statistics used only inside their own row kernel.
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
    /// Working memory of one stage (accumulators, per-row partials, marks).
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
    /// inlined. `acc`: a scratch accumulator when the reduced axes are not the
    /// innermost ones. `rows`: the reduction also spans the outer (row) axis;
    /// this stage leaves one partial per row there, and a `Finish` stage of a
    /// later kernel combines them.
    Reduce {
        node: Handle,
        acc: Option<usize>,
        rows: Option<usize>,
    },
    /// Combines the per-row partials of a reduction, in row order.
    Finish { node: Handle, rows: usize },
    /// Range-checks the index argument of an element-wise `one_hot` or
    /// `scatter_add_along` (their values need no memory access at the
    /// index, so the check is separate and runs once per index).
    Check { node: Handle },
    /// An op with a loop structure of its own (concat, scatters, matmul,
    /// argsort, scans); `scratch` is its working memory.
    Special {
        node: Handle,
        scratch: Option<usize>,
    },
}

#[derive(Clone, Debug)]
pub struct Kernel {
    /// Loops shared by every stage (empty, or the row loop).
    pub outer: Vec<Dim>,
    pub stages: Vec<Stage>,
    /// Whether the outer loop may be split across threads (rows are
    /// independent: every write is to the row's own elements).
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
    /// `index_deps` of every node.
    pub deps: Vec<u64>,
    /// For each slot, the first and last kernel that touch it (inclusive):
    /// slots whose spans do not meet may share memory. Caller-bound slots
    /// start at 0, results end after the last kernel.
    pub live: Vec<(usize, usize)>,
}

pub fn storage(d: DType) -> Storage {
    match d {
        DType::F32 => Storage::F32,
        DType::F64 => Storage::F64,
        DType::I64 => Storage::I64,
        DType::Bool => Storage::U8,
    }
}

/// How a node is evaluated.
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

pub fn class(g: &Graph, h: Handle) -> Class {
    let n = g.node(h);
    match &n.op {
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
        | Op::OneHot(_) => Class::Elementwise,
        Op::Reduce { .. } | Op::ArgMax(_) | Op::ArgMin(_) | Op::Norm { .. } => Class::Reduction,
        Op::ScatterAddAlong(a) => {
            if unit_scatter(g, h, *a) {
                Class::Elementwise
            } else {
                Class::Special
            }
        }
        Op::Concat(_)
        | Op::IndexAdd(_)
        | Op::ScatterSet(_)
        | Op::MatMul
        | Op::Argsort { .. }
        | Op::SearchSorted { .. }
        | Op::Cumsum { .. }
        | Op::LogCumSumExp { .. } => Class::Special,
    }
}

/// `scatter_add_along` with one index per line (the gradient of picking one
/// element per row): element-wise, `base + (idx == position ? value : 0)`.
pub fn unit_scatter(g: &Graph, h: Handle, axis: usize) -> bool {
    let n = g.node(h);
    g.ty(n.args[1]).shape[axis].is_one()
}

/// Whether a node's index argument is range-checked by a `Check` stage.
pub fn checked_separately(g: &Graph, h: Handle) -> bool {
    match g.node(h).op {
        Op::OneHot(_) => true,
        Op::ScatterAddAlong(a) => unit_scatter(g, h, a),
        _ => false,
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
/// runtime function or a scan reads their memory directly.
pub fn needs_slot_args(op: &Op) -> &'static [usize] {
    match op {
        Op::MatMul => &[0, 1],
        Op::Argsort { .. } => &[0],
        Op::ScatterSet(_) => &[1],
        Op::SearchSorted { .. } => &[0, 1],
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

/// A symbolic index component: how an element's index along one axis relates
/// to the loops of the stage that reads it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Ix {
    /// Always 0 (a unit axis).
    Zero,
    /// The `j`-th outer (row) loop index itself.
    Outer(usize),
    /// Anything else (an inner loop index, a shifted or data-dependent index).
    Other,
    /// The index of the innermost loop when it runs several lanes at once
    /// (only in the vectoriser's analysis).
    Lane,
}

/// The index at which an inline node reads argument `k`, given the index at
/// which the node is read; mirrors `lower::compute`. `None`: the argument is
/// not read element-wise here (never happens for inline nodes' arguments).
pub fn arg_index(g: &Graph, h: Handle, k: usize, idx: &[Ix]) -> Vec<Ix> {
    let n = g.node(h);
    let a = n.args[k];
    let ash = &g.ty(a).shape;
    let bcast = |idx: &[Ix]| -> Vec<Ix> {
        let lead = idx.len() - ash.len();
        ash.iter()
            .enumerate()
            .map(|(j, d)| if d.is_one() { Ix::Zero } else { idx[lead + j] })
            .collect()
    };
    match &n.op {
        Op::Unary(_) | Op::Cast(_) | Op::StopGrad => idx.to_vec(),
        Op::Binary(_) | Op::Where | Op::BroadcastTo(_) => bcast(idx),
        Op::Reshape(shape) => {
            let nu = |s: &[Dim]| {
                s.iter()
                    .filter(|d| !d.is_one())
                    .cloned()
                    .collect::<Vec<_>>()
            };
            if nu(ash) == nu(shape) {
                let mut it = shape
                    .iter()
                    .zip(idx)
                    .filter(|(d, _)| !d.is_one())
                    .map(|(_, i)| *i);
                ash.iter()
                    .map(|d| {
                        if d.is_one() {
                            Ix::Zero
                        } else {
                            it.next().unwrap_or(Ix::Other)
                        }
                    })
                    .collect()
            } else {
                vec![Ix::Other; ash.len()]
            }
        }
        Op::Transpose(perm) => {
            let mut out = vec![Ix::Other; ash.len()];
            for (i, &p) in perm.iter().enumerate() {
                out[p] = idx[i];
            }
            out
        }
        Op::Slice { axis, .. } | Op::Pad { axis, .. } | Op::Reverse(axis) => {
            let mut out = idx.to_vec();
            out[*axis] = Ix::Other;
            out
        }
        Op::TakeAlong(axis) => {
            let mut out = idx.to_vec();
            if k == 0 {
                out[*axis] = Ix::Other;
            }
            out
        }
        Op::IndexSelect(axis) => {
            let ir = g.ty(n.args[1]).rank();
            if k == 0 {
                let mut out = idx[..*axis].to_vec();
                out.push(Ix::Other);
                out.extend_from_slice(&idx[*axis + ir..]);
                out
            } else {
                idx[*axis..*axis + ir].to_vec()
            }
        }
        Op::OneHot(_) => idx[..idx.len() - 1].to_vec(),
        Op::ScatterAddAlong(axis) => {
            let mut out = idx.to_vec();
            if k > 0 {
                out[*axis] = Ix::Zero;
            }
            out
        }
        Op::Rand(..) => vec![],
        Op::Input(_)
        | Op::Param(_)
        | Op::State(_)
        | Op::Const(..)
        | Op::DimSize(_)
        | Op::Fill(..)
        | Op::Iota(_)
        | Op::Reduce { .. }
        | Op::ArgMax(_)
        | Op::ArgMin(_)
        | Op::Norm { .. }
        | Op::Concat(_)
        | Op::IndexAdd(_)
        | Op::ScatterSet(_)
        | Op::MatMul
        | Op::Argsort { .. }
        | Op::SearchSorted { .. }
        | Op::Cumsum { .. }
        | Op::LogCumSumExp { .. } => vec![Ix::Other; ash.len()],
    }
}

/// For each node, the axes its value can vary along (bit `j`: axis `j`),
/// given where values live. A stored value (or a row statistic) is taken to
/// vary along every non-unit axis; an inline value varies along the axes
/// through which it reads something that varies, plus the axes an op uses
/// itself (`arange`, `one_hot`, a slice position…). Reading an inline value
/// at an axis it does not vary along can use index 0 there instead, which
/// turns values broadcast along inner loops into loop invariants.
pub fn index_deps(g: &Graph, place: &[Place]) -> Vec<u64> {
    let mut deps = vec![0u64; g.len()];
    for (i, n) in g.nodes.iter().enumerate() {
        if place[i] == Place::Dead {
            continue;
        }
        let h = Handle(i as u32);
        let r = n.ty.rank().min(64);
        let nonunit: u64 = (0..r)
            .filter(|&j| !n.ty.shape[j].is_one())
            .fold(0, |m, j| m | (1 << j));
        let elementwise =
            place[i] == Place::Inline && matches!(class(g, h), Class::Leaf | Class::Elementwise);
        if !elementwise || n.ty.rank() > 64 {
            deps[i] = nonunit;
            continue;
        }
        let mut d: u64 = match &n.op {
            Op::Iota(_) => 1,
            Op::OneHot(_) => 1 << (r - 1),
            Op::ScatterAddAlong(a) | Op::Pad { axis: a, .. } => 1 << a,
            Op::Rand(..) => nonunit,
            _ => 0,
        };
        let labels: Vec<Ix> = (0..r).map(Ix::Outer).collect();
        for k in 0..n.args.len() {
            let a = n.args[k];
            let da = deps[a.index()];
            let aidx = arg_index(g, h, k, &labels);
            for (p, ix) in aidx.iter().enumerate() {
                if p >= 64 || da & (1 << p) == 0 {
                    continue;
                }
                match ix {
                    Ix::Outer(j) => d |= 1 << j,
                    Ix::Zero => {}
                    // A computed or data-dependent position: assume anything.
                    Ix::Other | Ix::Lane => d |= nonunit,
                }
            }
        }
        deps[i] = d & nonunit;
    }
    deps
}

/// The value a stage computes for its own node(s), and where it starts
/// reading: `(node, index pattern)` pairs for the walk over inline producers.
pub fn stage_reads(g: &Graph, st: &Stage, outer: usize) -> Vec<(Handle, Vec<Ix>)> {
    let pat = |rank: usize| -> Vec<Ix> {
        (0..rank)
            .map(|a| if a < outer { Ix::Outer(a) } else { Ix::Other })
            .collect()
    };
    let args_of = |h: Handle, idx: &[Ix]| -> Vec<(Handle, Vec<Ix>)> {
        let n = g.node(h);
        (0..n.args.len())
            .map(|k| (n.args[k], arg_index(g, h, k, idx)))
            .collect()
    };
    match st {
        Stage::Map { nodes } => nodes
            .iter()
            .flat_map(|&h| args_of(h, &pat(g.ty(h).rank())))
            .collect(),
        Stage::Reduce { node, .. } => {
            let x = g.node(*node).args[0];
            vec![(x, pat(g.ty(x).rank()))]
        }
        Stage::Check { node } => {
            let n = g.node(*node);
            let ix = match n.op {
                Op::OneHot(_) => n.args[0],
                _ => n.args[1],
            };
            vec![(ix, pat(g.ty(ix).rank()))]
        }
        Stage::Finish { .. } => vec![],
        Stage::Special { node, .. } => {
            let n = g.node(*node);
            n.args
                .iter()
                .map(|&a| (a, vec![Ix::Other; g.ty(a).rank()]))
                .collect()
        }
    }
}

/// The nodes a stage computes (stores, or keeps in registers).
pub fn stage_nodes(st: &Stage) -> Vec<Handle> {
    match st {
        Stage::Map { nodes } => nodes.clone(),
        Stage::Reduce { node, .. } | Stage::Finish { node, .. } | Stage::Special { node, .. } => {
            vec![*node]
        }
        Stage::Check { .. } => vec![],
    }
}

/// What a stage reads, split by where it is computed.
pub struct Walk {
    /// Values read at indices fixed for the whole stage (zeros and outer
    /// loop indices): computed once, before the stage's own loops.
    pub fixed: Vec<(Handle, Vec<Ix>)>,
    /// Inline values computed inside the stage's loops.
    pub inner: BTreeSet<Handle>,
}

/// Walks a stage's inline producers, canonicalising indices by
/// `index_deps`. With `kernel` (the nodes the kernel's stages produce),
/// only values that need neither an outer index nor anything the kernel
/// produces count as fixed: they can be computed before the row loop.
pub fn walk_stage(
    g: &Graph,
    s: &Schedule,
    st: &Stage,
    outer: usize,
    kernel: Option<&HashSet<Handle>>,
) -> Walk {
    let mut w = Walk {
        fixed: vec![],
        inner: BTreeSet::new(),
    };
    let mut stack = stage_reads(g, st, outer);
    let mut seen: HashSet<(Handle, Vec<Ix>)> = HashSet::new();
    while let Some((h, ix)) = stack.pop() {
        let d = s.deps[h.index()];
        let ix: Vec<Ix> = ix
            .iter()
            .enumerate()
            .map(|(j, i)| {
                if j < 64 && d & (1 << j) == 0 {
                    Ix::Zero
                } else {
                    *i
                }
            })
            .collect();
        if !seen.insert((h, ix.clone())) {
            continue;
        }
        let place = s.place[h.index()];
        let inline_elem =
            place == Place::Inline && matches!(class(g, h), Class::Leaf | Class::Elementwise);
        let fixed = ix.iter().all(|i| match i {
            Ix::Zero => true,
            Ix::Outer(_) => kernel.is_none(),
            Ix::Other | Ix::Lane => false,
        });
        if fixed
            && (inline_elem || matches!(place, Place::Slot(_)))
            && !kernel.is_some_and(|made| touches(g, s, h, made))
        {
            w.fixed.push((h, ix));
            continue;
        }
        if inline_elem {
            w.inner.insert(h);
            let n = g.node(h);
            for k in 0..n.args.len() {
                stack.push((n.args[k], arg_index(g, h, k, &ix)));
            }
        }
    }
    w
}

/// Whether computing `h` reads a value that one of `made` is.
fn touches(g: &Graph, s: &Schedule, h: Handle, made: &HashSet<Handle>) -> bool {
    let mut stack = vec![h];
    let mut seen = HashSet::new();
    while let Some(x) = stack.pop() {
        if !seen.insert(x) {
            continue;
        }
        if made.contains(&x) {
            return true;
        }
        if s.place[x.index()] == Place::Inline
            && matches!(class(g, x), Class::Leaf | Class::Elementwise)
        {
            stack.extend(g.node(x).args.iter().copied());
        }
    }
    false
}

/// The inline producers of a value (itself included when inline), in node order.
fn inline_closure(g: &Graph, s: &Schedule, roots: &[Handle]) -> BTreeSet<Handle> {
    let mut out = BTreeSet::new();
    let mut stack = roots.to_vec();
    while let Some(h) = stack.pop() {
        if s.place[h.index()] == Place::Inline
            && matches!(class(g, h), Class::Leaf | Class::Elementwise)
            && out.insert(h)
        {
            stack.extend(g.node(h).args.iter().copied());
        }
    }
    out
}

/// A read of a produced (not inline) value by a stage, with its index pattern.
struct Read {
    node: Handle,
    idx: Vec<Ix>,
}

/// Everything a stage reads that is not computed inline: walks the inline
/// producers from the stage's own reads.
fn produced_reads(
    g: &Graph,
    inline: &dyn Fn(Handle) -> bool,
    st: &Stage,
    outer: usize,
) -> Vec<Read> {
    let mut out = vec![];
    let mut seen: HashSet<(Handle, Vec<Ix>)> = HashSet::new();
    let mut stack = stage_reads(g, st, outer);
    while let Some((h, idx)) = stack.pop() {
        if !seen.insert((h, idx.clone())) {
            continue;
        }
        if inline(h) {
            let n = g.node(h);
            for k in 0..n.args.len() {
                stack.push((n.args[k], arg_index(g, h, k, &idx)));
            }
        } else {
            out.push(Read { node: h, idx });
        }
    }
    out
}

/// Rough cost of computing a node in registers, for the recompute-or-store choice.
fn op_cost(op: &Op) -> u32 {
    match op {
        Op::Unary(u) => match u {
            UnaryOp::Neg | UnaryOp::Abs | UnaryOp::Sign | UnaryOp::Relu | UnaryOp::Not => 1,
            UnaryOp::Floor | UnaryOp::Round | UnaryOp::Sqrt | UnaryOp::IsFinite => 2,
            UnaryOp::Rsqrt => 4,
            _ => 12,
        },
        Op::Binary(b) => match b {
            losslang_compiler::ops::BinaryOp::Div | losslang_compiler::ops::BinaryOp::FloorDiv => 4,
            losslang_compiler::ops::BinaryOp::Pow => 20,
            _ => 1,
        },
        Op::Rand(..) => 20,
        Op::TakeAlong(_) | Op::IndexSelect(_) | Op::Pad { .. } => 4,
        _ => 1,
    }
}

struct Plan<'g> {
    g: &'g Graph,
    need: Vec<bool>,
    /// Stored (a slot), as opposed to inline.
    stored: Vec<bool>,
    /// Scratch slots made so far (numbered after the node slots at the end).
    scratch: Vec<Slot>,
}

/// A scratch id before numbering: `SCRATCH_TAG + k` marks scratch `k`; the
/// scratch slots are numbered after the node slots once those are known.
const SCRATCH_TAG: usize = usize::MAX / 2;

impl Plan<'_> {
    fn scratch(&mut self, storage: Storage, shape: Vec<Dim>) -> usize {
        self.scratch.push(Slot {
            kind: SlotKind::Scratch,
            storage,
            shape,
        });
        SCRATCH_TAG + self.scratch.len() - 1
    }

    fn inline(&self, h: Handle) -> bool {
        !self.stored[h.index()] && matches!(class(self.g, h), Class::Leaf | Class::Elementwise)
    }

    /// The cost of recomputing `h` (through its inline producers).
    fn cost(&self, h: Handle, memo: &mut HashMap<Handle, u32>) -> u32 {
        if let Some(c) = memo.get(&h) {
            return *c;
        }
        let n = self.g.node(h);
        let mut c = op_cost(&n.op);
        for &a in &n.args {
            if self.inline(a) {
                c = c.saturating_add(self.cost(a, memo));
            }
        }
        memo.insert(h, c);
        c
    }

    /// The stage computing a stored or reduced node, with its scratch.
    fn stage_for(&mut self, h: Handle, split: bool) -> Stage {
        let g = self.g;
        let n = g.node(h);
        match class(g, h) {
            Class::Reduction => {
                let xs = g.ty(n.args[0]).shape.clone();
                let st = match (&n.op, g.ty(n.args[0]).dtype) {
                    (Op::Reduce { kind, .. }, d) if *kind != ReduceKind::Sum => storage(d),
                    (_, DType::I64) => Storage::I64,
                    _ => Storage::F64,
                };
                if split {
                    let rows = self.scratch(st, vec![xs[0].clone()]);
                    return Stage::Reduce {
                        node: h,
                        acc: None,
                        rows: Some(rows),
                    };
                }
                let acc = if reduces_in_registers(g, h) {
                    None
                } else {
                    Some(self.scratch(st, n.ty.shape.clone()))
                };
                Stage::Reduce {
                    node: h,
                    acc,
                    rows: None,
                }
            }
            Class::Special => {
                let scratch = match &n.op {
                    Op::ScatterSet(axis) => {
                        let size = g.ty(n.args[0]).shape[*axis].clone();
                        Some(self.scratch(Storage::U8, vec![size]))
                    }
                    Op::ScatterAddAlong(_) | Op::IndexAdd(_) if n.ty.dtype == DType::F32 => {
                        Some(self.scratch(Storage::F64, n.ty.shape.clone()))
                    }
                    _ => None,
                };
                Stage::Special { node: h, scratch }
            }
            Class::External | Class::Leaf | Class::Elementwise => Stage::Map { nodes: vec![h] },
        }
    }
}

/// How a stage node relates to a row loop over `d0`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum RowFit {
    /// Runs per row: its loop nest starts with `d0`.
    Row,
    /// A reduction over every axis, the row axis included: per-row partials.
    Split,
}

fn row_dim(g: &Graph, st: &Stage) -> Option<(Dim, RowFit)> {
    let lead = |h: Handle| g.ty(h).shape.first().filter(|d| !d.is_one()).cloned();
    match st {
        Stage::Map { nodes } => lead(nodes[0]).map(|d| (d, RowFit::Row)),
        Stage::Check { node } => {
            let n = g.node(*node);
            let ix = match n.op {
                Op::OneHot(_) => n.args[0],
                _ => n.args[1],
            };
            lead(ix).map(|d| (d, RowFit::Row))
        }
        Stage::Reduce { node, .. } => {
            let n = g.node(*node);
            let x = n.args[0];
            let d = lead(x)?;
            let axes = reduced_axes(&n.op);
            if !axes.contains(&0) {
                Some((d, RowFit::Row))
            } else if matches!(n.op, Op::Reduce { .. } | Op::Norm { .. })
                && axes.len() == g.ty(x).rank()
            {
                Some((d, RowFit::Split))
            } else {
                None
            }
        }
        Stage::Finish { .. } | Stage::Special { .. } => None,
    }
}

/// A kernel being built.
struct Building {
    outer: Option<Dim>,
    stages: Vec<Stage>,
    /// Nodes computed here (stored or in registers).
    produced: HashSet<Handle>,
    /// Split reductions whose values exist only after the finishing kernel.
    pending: Vec<(Handle, usize)>,
}

impl Building {
    fn new(outer: Option<Dim>) -> Building {
        Building {
            outer,
            stages: vec![],
            produced: HashSet::new(),
            pending: vec![],
        }
    }

    fn finish(self, out: &mut Vec<Kernel>) {
        let parallel = self.outer.is_some();
        out.push(Kernel {
            outer: self.outer.into_iter().collect(),
            stages: self.stages,
            parallel,
        });
        if !self.pending.is_empty() {
            out.push(Kernel {
                outer: vec![],
                stages: self
                    .pending
                    .into_iter()
                    .map(|(node, rows)| Stage::Finish { node, rows })
                    .collect(),
                parallel: false,
            });
        }
    }

    /// Whether `reads` only touch this kernel's values in the row being computed.
    fn reads_own_rows(&self, reads: &[Read]) -> bool {
        reads.iter().all(|r| {
            if self.pending.iter().any(|(h, _)| *h == r.node) {
                return false;
            }
            !self.produced.contains(&r.node) || r.idx.first() == Some(&Ix::Outer(0))
        })
    }

    fn depends_on(&self, reads: &[Read]) -> bool {
        reads.iter().any(|r| {
            self.produced.contains(&r.node) || self.pending.iter().any(|(h, _)| *h == r.node)
        })
    }

    /// Adds a stage, merging independent stores of one shape into one loop nest.
    fn push(&mut self, g: &Graph, st: Stage, reads: &[Read]) {
        let made = stage_nodes(&st);
        if let (Stage::Map { nodes }, Some(Stage::Map { nodes: last })) =
            (&st, self.stages.last_mut())
            && g.ty(last[0]).shape == g.ty(nodes[0]).shape
            && !reads.iter().any(|r| last.contains(&r.node))
        {
            last.extend(nodes.iter().copied());
        } else {
            if let Stage::Reduce {
                node,
                rows: Some(r),
                ..
            } = &st
            {
                self.pending.push((*node, *r));
            }
            self.stages.push(st);
        }
        for h in made {
            if !self.pending.iter().any(|(p, _)| *p == h) {
                self.produced.insert(h);
            }
        }
    }
}

/// The fused schedule the JIT runs.
pub fn fuse(g: &Graph, roots: &[Handle]) -> Schedule {
    plan(g, roots, true)
}

/// Every needed node stored and computed by a kernel of its own (the
/// reference point for fusion's correctness).
pub fn unfused(g: &Graph, roots: &[Handle]) -> Schedule {
    plan(g, roots, false)
}

fn plan(g: &Graph, roots: &[Handle], fusion: bool) -> Schedule {
    let need = needed(g, roots);
    let mut roots_sorted: Vec<Handle> = roots.to_vec();
    roots_sorted.sort();
    roots_sorted.dedup();
    let mut p = Plan {
        g,
        stored: vec![false; g.len()],
        need,
        scratch: vec![],
    };
    // What must be stored.
    for (i, n) in g.nodes.iter().enumerate() {
        if !p.need[i] {
            continue;
        }
        let h = Handle(i as u32);
        p.stored[i] |= match class(g, h) {
            Class::External | Class::Special | Class::Reduction => true,
            Class::Elementwise => !fusion,
            Class::Leaf => false,
        };
        for &a in needs_slot_args(&n.op) {
            p.stored[n.args[a].index()] = true;
        }
        if let Op::Transpose(perm) = &n.op
            && fusion
            && perm.last().is_some_and(|&p| p + 1 != perm.len())
            && class(g, n.args[0]) != Class::Leaf
        {
            // Read in place, a transpose strides across rows in every inner
            // loop that uses it; stored once, it is read contiguously.
            p.stored[i] = true;
        }
        if let Op::Reshape(shape) = &n.op {
            let nu = |s: &[Dim]| {
                s.iter()
                    .filter(|d| !d.is_one())
                    .cloned()
                    .collect::<Vec<_>>()
            };
            let a = n.args[0];
            if nu(&g.ty(a).shape) != nu(shape) && class(g, a) != Class::Leaf {
                // A flat read of a stored value beats a div/mod per element.
                p.stored[a.index()] = true;
            }
        }
    }
    for r in &roots_sorted {
        p.stored[r.index()] = true;
    }
    if fusion {
        // An expensive value that a consumer broadcasts along an inner axis
        // would be recomputed for every element of that axis: store it.
        let mut memo = HashMap::new();
        for i in (0..g.len()).rev() {
            if !p.need[i] || !p.inline(Handle(i as u32)) {
                continue;
            }
            let n = &g.nodes[i];
            if !matches!(n.op, Op::Binary(_) | Op::Where | Op::BroadcastTo(_)) {
                continue;
            }
            let os = &n.ty.shape;
            for &a in &n.args {
                if !p.inline(a) || class(g, a) == Class::Leaf {
                    continue;
                }
                let ash = &g.ty(a).shape;
                let lead = os.len() - ash.len();
                let broadcast =
                    (0..os.len()).any(|j| !os[j].is_one() && (j < lead || ash[j - lead].is_one()));
                // Hoisting out of the inner loops helps only a value that
                // varies along the row axis alone.
                let varies_inside = (1..os.len()).any(|j| j >= lead && !ash[j - lead].is_one());
                if broadcast && varies_inside && p.cost(a, &mut memo) >= 8 {
                    p.stored[a.index()] = true;
                    memo.clear();
                }
            }
        }
    }
    // The stages, in node order.
    let mut stage_list: Vec<Stage> = vec![];
    for i in 0..g.len() {
        let h = Handle(i as u32);
        if !p.need[i] {
            continue;
        }
        let c = class(g, h);
        if checked_separately(g, h) {
            stage_list.push(Stage::Check { node: h });
        }
        if p.stored[i] && c != Class::External {
            stage_list.push(Stage::Map { nodes: vec![h] });
        }
    }
    // Stage kinds (reductions, specials) and kernels.
    let mut kernels: Vec<Kernel> = vec![];
    let inline_of = |stored: &[bool], h: Handle| -> bool {
        !stored[h.index()] && matches!(class(g, h), Class::Leaf | Class::Elementwise)
    };
    if !fusion {
        for st in stage_list {
            let st = match st {
                Stage::Map { nodes } => p.stage_for(nodes[0], false),
                other => other,
            };
            kernels.push(Kernel {
                outer: vec![],
                stages: vec![st],
                parallel: false,
            });
        }
    } else {
        // The open kernel (a row kernel, or stand-alone stages), and the
        // kernels that run before it (independent of it) and after it
        // (reading what it computes at other rows, or its finished sums).
        let mut open: Option<Building> = None;
        let mut before: Vec<Building> = vec![];
        let mut after: Vec<Building> = vec![];
        let flush = |open: &mut Option<Building>,
                     before: &mut Vec<Building>,
                     after: &mut Vec<Building>,
                     kernels: &mut Vec<Kernel>| {
            for b in before.drain(..) {
                b.finish(kernels);
            }
            if let Some(k) = open.take() {
                k.finish(kernels);
            }
            for b in after.drain(..) {
                b.finish(kernels);
            }
        };
        for st in stage_list {
            let proto = match &st {
                Stage::Map { nodes } => {
                    let h = nodes[0];
                    match class(g, h) {
                        Class::Reduction => Stage::Reduce {
                            node: h,
                            acc: None,
                            rows: None,
                        },
                        Class::Special => Stage::Special {
                            node: h,
                            scratch: None,
                        },
                        _ => st.clone(),
                    }
                }
                other => other.clone(),
            };
            let fit = row_dim(g, &proto);
            let stored = p.stored.clone();
            let inl = |h: Handle| inline_of(&stored, h);
            let reads = produced_reads(g, &inl, &proto, usize::from(fit.is_some()));
            let make = |p: &mut Plan, split: bool| -> Stage {
                match &proto {
                    Stage::Reduce { node, .. } | Stage::Special { node, .. } => {
                        p.stage_for(*node, split)
                    }
                    other => other.clone(),
                }
            };
            let split = matches!(fit, Some((_, RowFit::Split)));
            let joinable = |k: &Building| match (&k.outer, &fit) {
                (Some(d0), Some((d, _))) => d0 == d && k.reads_own_rows(&reads),
                (None, None) => true,
                _ => false,
            };
            let needs_after = after.iter().any(|b| b.depends_on(&reads));
            if let Some(k) = open.as_mut()
                && !needs_after
                && joinable(k)
            {
                let s = make(&mut p, split);
                k.push(g, s, &reads);
                continue;
            }
            if let Some(k) = open.as_ref()
                && k.outer.is_some()
            {
                // Not part of the open row kernel: independent of it, it runs
                // before; otherwise after, and the row kernel stays open for
                // the stages that can still join it.
                let list = if !needs_after && !k.depends_on(&reads) {
                    &mut before
                } else {
                    &mut after
                };
                let s = make(&mut p, split);
                match list.last_mut() {
                    Some(b) if joinable(b) => b.push(g, s, &reads),
                    _ => {
                        let mut b = Building::new(fit.as_ref().map(|(d, _)| d.clone()));
                        b.push(g, s, &reads);
                        list.push(b);
                    }
                }
                continue;
            }
            flush(&mut open, &mut before, &mut after, &mut kernels);
            let s = make(&mut p, split);
            match fit {
                Some((d, _)) => {
                    let mut b = Building::new(Some(d));
                    b.push(g, s, &reads);
                    open = Some(b);
                }
                None => {
                    // Stand-alone stages run one after another in one kernel.
                    if let Some(last) = kernels.last_mut()
                        && last.outer.is_empty()
                    {
                        last.stages.push(s);
                    } else {
                        let mut b = Building::new(None);
                        b.push(g, s, &reads);
                        open = Some(b);
                    }
                }
            }
        }
        flush(&mut open, &mut before, &mut after, &mut kernels);
        // Adjacent stand-alone kernels run their stages in sequence anyway.
        let mut merged: Vec<Kernel> = vec![];
        for k in kernels {
            match merged.last_mut() {
                Some(last) if last.outer.is_empty() && k.outer.is_empty() => {
                    last.stages.extend(k.stages);
                }
                _ => merged.push(k),
            }
        }
        kernels = merged;
    }
    // Row statistics used only inside their own row kernel stay in registers.
    let mut place = vec![Place::Dead; g.len()];
    if fusion {
        let stored = p.stored.clone();
        let inl = |h: Handle| inline_of(&stored, h);
        let mut users: HashMap<Handle, BTreeSet<usize>> = HashMap::new();
        for (ki, k) in kernels.iter().enumerate() {
            for st in &k.stages {
                for r in produced_reads(g, &inl, st, k.outer.len()) {
                    users.entry(r.node).or_default().insert(ki);
                }
            }
        }
        for (ki, k) in kernels.iter().enumerate() {
            if k.outer.is_empty() {
                continue;
            }
            for st in &k.stages {
                if let Stage::Reduce {
                    node,
                    acc: None,
                    rows: None,
                } = st
                {
                    let only_here = users.get(node).is_none_or(|u| u.iter().all(|&x| x == ki));
                    if only_here
                        && !roots_sorted.contains(node)
                        && g.ty(*node).shape.iter().skip(1).all(Dim::is_one)
                    {
                        p.stored[node.index()] = false;
                        place[node.index()] = Place::Inline;
                    }
                }
            }
        }
    }
    // Slots: caller-bound values, then stored nodes, then scratch.
    let mut slots: Vec<Slot> = vec![];
    for (i, n) in g.nodes.iter().enumerate() {
        if !p.need[i] {
            continue;
        }
        let kind = match n.op {
            Op::Input(k) => SlotKind::Input(k),
            Op::Param(k) => SlotKind::Param(k),
            Op::State(k) => SlotKind::State(k),
            _ => continue,
        };
        slots.push(Slot {
            kind,
            storage: storage(n.ty.dtype),
            shape: n.ty.shape.clone(),
        });
        place[i] = Place::Slot(slots.len() - 1);
    }
    for (i, n) in g.nodes.iter().enumerate() {
        if !p.need[i] || place[i] != Place::Dead {
            continue;
        }
        if p.stored[i] {
            slots.push(Slot {
                kind: SlotKind::Node(Handle(i as u32)),
                storage: storage(n.ty.dtype),
                shape: n.ty.shape.clone(),
            });
            place[i] = Place::Slot(slots.len() - 1);
        } else {
            place[i] = Place::Inline;
        }
    }
    let base = slots.len();
    slots.extend(p.scratch.iter().cloned());
    let fix = |x: &mut usize| {
        if *x >= SCRATCH_TAG {
            *x = *x - SCRATCH_TAG + base;
        }
    };
    for k in &mut kernels {
        for st in &mut k.stages {
            match st {
                Stage::Reduce { acc, rows, .. } => {
                    if let Some(a) = acc {
                        fix(a);
                    }
                    if let Some(r) = rows {
                        fix(r);
                    }
                }
                Stage::Finish { rows, .. } => fix(rows),
                Stage::Special { scratch, .. } => {
                    if let Some(a) = scratch {
                        fix(a);
                    }
                }
                Stage::Map { .. } | Stage::Check { .. } => {}
            }
        }
    }
    finish(g, roots_sorted, place, slots, kernels)
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

fn stage_scratch(st: &Stage) -> Vec<usize> {
    match st {
        Stage::Reduce { acc, rows, .. } => acc.iter().chain(rows.iter()).copied().collect(),
        Stage::Finish { rows, .. } => vec![*rows],
        Stage::Special { scratch, .. } => scratch.iter().copied().collect(),
        Stage::Map { .. } | Stage::Check { .. } => vec![],
    }
}

/// Nodes whose values a kernel computes or reads: stage nodes, their inline
/// producers (walked), and the produced values those read.
fn kernel_nodes(g: &Graph, s: &Schedule, k: &Kernel) -> (Vec<Handle>, Vec<Handle>) {
    let mut computed = BTreeSet::new();
    let mut read = BTreeSet::new();
    let mut stack: Vec<Handle> = vec![];
    for st in &k.stages {
        for h in stage_nodes(st) {
            computed.insert(h);
            stack.extend(g.node(h).args.iter().copied());
        }
        if let Stage::Check { node } = st {
            stack.extend(g.node(*node).args.iter().copied());
        }
    }
    let mut seen = HashSet::new();
    while let Some(h) = stack.pop() {
        if !seen.insert(h) {
            continue;
        }
        if s.place[h.index()] == Place::Inline && !computed.contains(&h) {
            if matches!(class(g, h), Class::Leaf | Class::Elementwise) {
                computed.insert(h);
                stack.extend(g.node(h).args.iter().copied());
            } else {
                // A register row statistic computed by an earlier stage.
                read.insert(h);
            }
        } else {
            read.insert(h);
        }
    }
    (computed.into_iter().collect(), read.into_iter().collect())
}

/// The dims a kernel reads (constant ones included): shapes of every node it
/// computes or reads, their arguments' shapes, op attributes, slot shapes
/// and its outer loops.
pub fn kernel_dims(g: &Graph, s: &Schedule, k: &Kernel) -> BTreeSet<Dim> {
    let mut out: BTreeSet<Dim> = k.outer.iter().cloned().collect();
    let (computed, read) = kernel_nodes(g, s, k);
    for h in computed.iter().chain(&read) {
        let n = g.node(*h);
        out.extend(n.ty.shape.iter().cloned());
        op_dims(&n.op, &mut out);
    }
    for h in &computed {
        for a in &g.node(*h).args {
            out.extend(g.ty(*a).shape.iter().cloned());
        }
    }
    for st in &k.stages {
        for sl in stage_scratch(st) {
            out.extend(s.slots[sl].shape.iter().cloned());
        }
        if let Stage::Check { node } = st {
            let n = g.node(*node);
            out.extend(n.ty.shape.iter().cloned());
            op_dims(&n.op, &mut out);
            for a in &n.args {
                out.extend(g.ty(*a).shape.iter().cloned());
            }
        }
    }
    out
}

/// The slots a kernel touches (read or written).
pub fn kernel_slots(g: &Graph, s: &Schedule, k: &Kernel) -> BTreeSet<usize> {
    let mut out = BTreeSet::new();
    let (computed, read) = kernel_nodes(g, s, k);
    for h in computed.iter().chain(&read) {
        if let Place::Slot(sl) = s.place[h.index()] {
            out.insert(sl);
        }
    }
    for st in &k.stages {
        out.extend(stage_scratch(st));
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
    let deps = index_deps(g, &place);
    let mut s = Schedule {
        roots,
        place,
        slots,
        dims: vec![],
        kernels,
        deps,
        live: vec![],
    };
    let end = s.kernels.len();
    let mut live: Vec<Option<(usize, usize)>> = vec![None; s.slots.len()];
    for (ki, k) in s.kernels.iter().enumerate() {
        for sl in kernel_slots(g, &s, k) {
            let e = live[sl].get_or_insert((ki, ki));
            e.0 = e.0.min(ki);
            e.1 = e.1.max(ki);
        }
    }
    let mut live: Vec<(usize, usize)> = live.into_iter().map(|l| l.unwrap_or((0, end))).collect();
    for (i, sl) in s.slots.iter().enumerate() {
        if !matches!(sl.kind, SlotKind::Node(_) | SlotKind::Scratch) {
            live[i].0 = 0;
        }
    }
    for r in &s.roots {
        if let Some(sl) = s.slot_of(*r) {
            live[sl].1 = end;
        }
    }
    s.live = live;
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

/// The `--stage sched` text form: slots, then each kernel as a loop nest in
/// the style of Halide's `print_loop_nest`. Inline values appear at the loop
/// level where they are computed: loop invariants before the row loop, row
/// values (row statistics and what is computed from them) in the row loop,
/// the rest inside the stage's own loops.
pub fn print(g: &Graph, s: &Schedule, title: &str) -> String {
    let mut o = String::new();
    let _ = writeln!(o, "; {title}: {} kernels", s.kernels.len());
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
        let mut shown: BTreeSet<Handle> = BTreeSet::new();
        let mut ind = 1;
        if !k.outer.is_empty() {
            let made: HashSet<Handle> = k.stages.iter().flat_map(stage_nodes).collect();
            let mut inv = BTreeSet::new();
            for st in &k.stages {
                let w = walk_stage(g, s, st, 0, Some(&made));
                let roots: Vec<Handle> = w.fixed.iter().map(|(h, _)| *h).collect();
                inv.extend(inline_closure(g, s, &roots));
            }
            for h in &inv {
                let _ = writeln!(o, "{}{}", "  ".repeat(ind), describe(g, s, *h));
            }
            shown.extend(inv);
        }
        for (j, d) in k.outer.iter().enumerate() {
            let par = if j == 0 && k.parallel {
                "  // parallel"
            } else {
                ""
            };
            let _ = writeln!(o, "{}for r{j} in 0..{d}:{par}", "  ".repeat(ind));
            ind += 1;
        }
        for st in &k.stages {
            print_stage(g, s, k, st, ind, &mut shown, &mut o);
        }
    }
    o
}

fn describe(g: &Graph, s: &Schedule, h: Handle) -> String {
    let n = g.node(h);
    let args: Vec<String> = n.args.iter().map(|a| a.to_string()).collect();
    let at = match s.place[h.index()] {
        Place::Slot(sl) => format!(" -> s{sl}"),
        Place::Inline | Place::Dead => String::new(),
    };
    let attrs = losslang_compiler::ir::print::attrs(&n.op);
    let attrs = if attrs.is_empty() {
        String::new()
    } else {
        format!("[{attrs}]")
    };
    let sep = if args.is_empty() { "" } else { " " };
    format!(
        "{h} = {}{attrs}{sep}{} : {}{at}",
        n.op.name(),
        args.join(", "),
        n.ty
    )
}

fn print_stage(
    g: &Graph,
    s: &Schedule,
    k: &Kernel,
    st: &Stage,
    ind: usize,
    shown: &mut BTreeSet<Handle>,
    o: &mut String,
) {
    let pad = |n: usize| "  ".repeat(n);
    let w = walk_stage(g, s, st, k.outer.len(), None);
    let roots: Vec<Handle> = w.fixed.iter().map(|(h, _)| *h).collect();
    // Row values, before the stage's loops.
    for h in inline_closure(g, s, &roots) {
        if shown.insert(h) {
            let _ = writeln!(o, "{}{}", pad(ind), describe(g, s, h));
        }
    }
    let loops = |shape: &[Dim], o: &mut String| -> usize {
        let mut i = ind;
        for (a, d) in shape.iter().enumerate().skip(k.outer.len()) {
            if !d.is_one() {
                let _ = writeln!(o, "{}for i{a} in 0..{d}:", pad(i));
                i += 1;
            }
        }
        i
    };
    let body = |i: usize, o: &mut String| {
        for h in &w.inner {
            if !shown.contains(h) && !stage_nodes(st).contains(h) {
                let _ = writeln!(o, "{}{}", pad(i), describe(g, s, *h));
            }
        }
    };
    match st {
        Stage::Map { nodes } => {
            let i = loops(&g.ty(nodes[0]).shape, o);
            body(i, o);
            for h in nodes {
                let _ = writeln!(o, "{}store {}", pad(i), describe(g, s, *h));
            }
        }
        Stage::Reduce { node, acc, rows } => {
            let x = g.node(*node).args[0];
            let how = match (acc, rows) {
                (_, Some(r)) => format!("row partial -> s{r}"),
                (Some(a), None) => format!("accumulate in s{a}"),
                (None, None) => "in registers".into(),
            };
            let i = loops(&g.ty(x).shape, o);
            body(i, o);
            let _ = writeln!(o, "{}reduce {} ({how})", pad(i), describe(g, s, *node));
            // A row statistic is a register for the stages after it.
            if acc.is_none() && rows.is_none() {
                shown.insert(*node);
            }
        }
        Stage::Finish { node, rows } => {
            let _ = writeln!(
                o,
                "{}finish {} from row partials s{rows}",
                pad(ind),
                describe(g, s, *node)
            );
        }
        Stage::Check { node } => {
            let n = g.node(*node);
            let ix = match n.op {
                Op::OneHot(_) => n.args[0],
                _ => n.args[1],
            };
            let i = loops(&g.ty(ix).shape, o);
            body(i, o);
            let _ = writeln!(o, "{}check the indices {ix} of {node}", pad(i));
        }
        Stage::Special { node, scratch } => {
            let sc = scratch
                .map(|a| format!(" (scratch s{a})"))
                .unwrap_or_default();
            body(ind, o);
            let _ = writeln!(o, "{}{}{sc}", pad(ind), describe(g, s, *node));
        }
    }
}
