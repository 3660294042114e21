//! What every code generator needs before it writes a line: which nodes the
//! forward pass computes, which only the backward pass needs, which forward
//! values the backward pass reads (saved), the initial-state nodes, and a
//! readable Python name for every node (the source binding where there is one).

use crate::ir::{Graph, Handle};
use crate::ops::Op;
use crate::program::Program;
use crate::shard::{Layout, NodeShard, ShardPlan, analyze};
use std::collections::{BTreeMap, BTreeSet, HashMap};

/// Names the generated code defines itself or imports; a source name that
/// collides gets a trailing underscore.
const RESERVED: &[&str] = &[
    // Python keywords and builtins the generated code calls.
    "False",
    "None",
    "True",
    "and",
    "as",
    "assert",
    "async",
    "await",
    "break",
    "class",
    "continue",
    "def",
    "del",
    "elif",
    "else",
    "except",
    "finally",
    "for",
    "from",
    "global",
    "if",
    "import",
    "in",
    "is",
    "lambda",
    "nonlocal",
    "not",
    "or",
    "pass",
    "raise",
    "return",
    "try",
    "while",
    "with",
    "yield",
    "match",
    "case",
    "type",
    "min",
    "max",
    "int",
    "float",
    "bool",
    "len",
    "range",
    "tuple",
    "list",
    "dict",
    "abs",
    "sum",
    "print",
    "super",
    "self",
    "object",
    "isinstance",
    "getattr",
    "setattr",
    "ValueError",
    "TypeError",
    "zip",
    "enumerate",
    "map",
    // Modules the generated code imports.
    "math",
    "torch",
    "np",
    "jax",
    "jnp",
    "functools",
    "nn",
    // Names of the module's own API.
    "NAME",
    "SIGNATURE",
    "Loss",
    "loss_fn",
    "loss_and_grad",
    "init_state",
];

pub struct Plan<'p> {
    pub prog: &'p Program,
    pub g: &'p Graph,
    /// Forward nodes in topological order: everything the loss, reports, state
    /// updates and asserts need.
    pub forward: Vec<Handle>,
    /// Nodes only the gradient needs, in topological order.
    pub backward: Vec<Handle>,
    /// Forward values the backward pass reads, in topological order.
    pub saved: Vec<Handle>,
    /// Nodes the initial state needs, in topological order.
    pub init: Vec<Handle>,
    /// The Python name of each node that gets a line (or is a declared value).
    pub names: HashMap<Handle, String>,
    /// The source binding a node is named after: (name, line number, line text).
    pub bound: HashMap<Handle, (String, usize, String)>,
    /// Python names of the declared inputs, params and states.
    pub input_names: Vec<String>,
    pub param_names: Vec<String>,
    pub state_names: Vec<String>,
    /// Every dim symbol the program's shapes use, sorted.
    pub dims: Vec<String>,
    /// Python names of the dim symbols.
    pub dim_names: BTreeMap<String, String>,
    /// Users of each node (indices of the nodes that take it as an argument).
    pub users: Vec<Vec<Handle>>,
    /// How the batch splits over ranks (torch only; without a process group
    /// every conversion is the identity).
    pub shard: Option<ShardPlan>,
}

fn reach(g: &Graph, roots: &[Handle]) -> BTreeSet<Handle> {
    let mut seen = BTreeSet::new();
    let mut stack: Vec<Handle> = roots.to_vec();
    while let Some(h) = stack.pop() {
        if seen.insert(h) {
            stack.extend(g.node(h).args.iter().copied());
        }
    }
    seen
}

/// Sources the backward pass recomputes instead of saving: they cost nothing and
/// some are not arrays (literals, sizes).
pub fn recomputable(op: &Op) -> bool {
    match op {
        Op::Const(..) | Op::DimSize(_) | Op::Fill(..) | Op::Iota(_) => true,
        Op::Input(_)
        | Op::Param(_)
        | Op::State(_)
        | Op::Rand(..)
        | Op::Unary(_)
        | Op::Binary(_)
        | Op::Where
        | Op::Cast(_)
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
    }
}

pub fn py_ident(name: &str, taken: &mut BTreeSet<String>) -> String {
    let mut base: String = name
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '_' {
                c
            } else {
                '_'
            }
        })
        .collect();
    if base.is_empty() || base.starts_with(|c: char| c.is_ascii_digit()) {
        base.insert(0, '_');
    }
    if RESERVED.contains(&base.as_str()) {
        base.push('_');
    }
    let mut cand = base.clone();
    let mut k = 1;
    while taken.contains(&cand) {
        k += 1;
        cand = format!("{base}_{k}");
    }
    taken.insert(cand.clone());
    cand
}

impl<'p> Plan<'p> {
    /// `batch`: `None` for a target that runs on one process, `Some(dim)` to plan
    /// the shards (`Some(None)`: the leading dim of the first `diff` input).
    pub fn new(prog: &'p Program, batch: Option<Option<&str>>) -> Plan<'p> {
        let g = &prog.opt;
        let shard = batch.and_then(|b| analyze(g, b));
        let mut fwd_roots = vec![g.loss()];
        fwd_roots.extend(g.reports.iter().map(|(_, h)| *h));
        fwd_roots.extend(g.updates.iter().map(|u| u.value));
        fwd_roots.extend(g.checks.iter().map(|c| c.cond));
        let fwd = reach(g, &fwd_roots);
        let grad_roots: Vec<Handle> = g.grads.iter().map(|(_, h)| *h).collect();
        let bwd_all = reach(g, &grad_roots);
        let init_roots: Vec<Handle> = g.states.iter().map(|s| s.init).collect();
        let init = reach(g, &init_roots);

        let forward: Vec<Handle> = fwd.iter().copied().collect();
        let backward: Vec<Handle> = bwd_all.difference(&fwd).copied().collect();
        // A gradient can be a forward value itself (a linear loss): saved too.
        let mut saved_set: BTreeSet<Handle> = BTreeSet::new();
        for &h in &backward {
            for &a in &g.node(h).args {
                if fwd.contains(&a) && !recomputable(&g.node(a).op) {
                    saved_set.insert(a);
                }
            }
        }
        for &h in &grad_roots {
            if fwd.contains(&h) && !recomputable(&g.node(h).op) {
                saved_set.insert(h);
            }
        }

        let mut users: Vec<Vec<Handle>> = vec![vec![]; g.len()];
        for (i, n) in g.nodes.iter().enumerate() {
            for &a in &n.args {
                users[a.index()].push(Handle(i as u32));
            }
        }

        // Names: dims first, then declared values, then source bindings.
        let mut taken: BTreeSet<String> = BTreeSet::new();
        let mut dims: BTreeSet<String> = BTreeSet::new();
        for n in &g.nodes {
            collect_dims_op(&n.op, &mut dims);
            for d in &n.ty.shape {
                let mut v = vec![];
                d.symbols(&mut v);
                dims.extend(v);
            }
        }
        for decl in &g.inputs {
            for d in &decl.ty.shape {
                let mut v = vec![];
                d.symbols(&mut v);
                dims.extend(v);
            }
        }
        for decl in &g.states {
            for d in &decl.ty.shape {
                let mut v = vec![];
                d.symbols(&mut v);
                dims.extend(v);
            }
        }
        if let Some(sp) = &shard {
            dims.insert(sp.local.clone());
        }
        let dims: Vec<String> = dims.into_iter().collect();
        let dim_names: BTreeMap<String, String> = dims
            .iter()
            .map(|d| (d.clone(), py_ident(d, &mut taken)))
            .collect();
        let input_names: Vec<String> = g
            .inputs
            .iter()
            .map(|i| py_ident(&i.name, &mut taken))
            .collect();
        let param_names: Vec<String> = g
            .params
            .iter()
            .map(|i| py_ident(&i.name, &mut taken))
            .collect();
        let state_names: Vec<String> = g
            .states
            .iter()
            .map(|i| py_ident(&i.name, &mut taken))
            .collect();

        let mut names: HashMap<Handle, String> = HashMap::new();
        for (i, n) in g.nodes.iter().enumerate() {
            let h = Handle(i as u32);
            // Declared values keep their declared names.
            if let Op::Input(k) = &n.op {
                names.insert(h, input_names[*k].clone());
            } else if let Op::Param(k) = &n.op {
                names.insert(h, param_names[*k].clone());
            } else if let Op::State(k) = &n.op {
                names.insert(h, state_names[*k].clone());
            }
        }

        // A forward node takes the name of the `let` whose expression it computes:
        // the last forward node with the binding's span and type.
        let mut bound: HashMap<Handle, (String, usize, String)> = HashMap::new();
        let text = &prog.sources[0].text;
        for b in &prog.bindings {
            if b.kind != "let" || b.file != 0 {
                continue;
            }
            let Some(v) = b.value else { continue };
            let vn = prog.ir.node(v);
            let hit = forward
                .iter()
                .rev()
                .find(|&&h| {
                    let n = g.node(h);
                    n.span == vn.span && n.ty == vn.ty && !names.contains_key(&h)
                })
                .copied();
            if let Some(h) = hit {
                let upto = &text[..b.span.start.min(text.len())];
                let line = upto.matches('\n').count() + 1;
                let line_text = text.lines().nth(line - 1).unwrap_or("").trim().to_string();
                let name = py_ident(&b.name, &mut taken);
                names.insert(h, name.clone());
                bound.insert(h, (name, line, line_text));
            }
        }
        for &h in forward.iter().chain(&backward).chain(&init) {
            names
                .entry(h)
                .or_insert_with(|| py_ident(&format!("t{}", h.0), &mut taken));
        }
        Plan {
            prog,
            g,
            forward,
            backward,
            saved: saved_set.into_iter().collect(),
            init: init.into_iter().collect(),
            names,
            bound,
            input_names,
            param_names,
            state_names,
            dims,
            dim_names,
            users,
            shard,
        }
    }

    pub fn name(&self, h: Handle) -> &str {
        &self.names[&h]
    }

    pub fn shard_of(&self, h: Handle) -> Option<&NodeShard> {
        self.shard
            .as_ref()
            .and_then(|s| s.nodes[h.index()].as_ref())
    }

    /// Where node `h`'s value lives (replicated without a shard plan).
    pub fn layout(&self, h: Handle) -> Layout {
        self.shard_of(h).and_then(|s| s.out)
    }

    pub fn input_layout(&self, k: usize) -> Layout {
        self.shard.as_ref().and_then(|s| s.inputs[k])
    }

    /// A filled array's op at the rank's size along `axis`.
    pub fn localized(&self, h: Handle, axis: Layout) -> Op {
        match (&self.g.node(h).op, &self.shard, axis) {
            (Op::Fill(v, d, shape), Some(sp), Some(a)) => {
                let mut s = shape.clone();
                s[a] = crate::dim::Dim::sym(&sp.local);
                Op::Fill(*v, *d, s)
            }
            (op, _, _) => op.clone(),
        }
    }
}

pub fn collect_dims_op(op: &Op, out: &mut BTreeSet<String>) {
    let mut add = |d: &crate::dim::Dim| {
        let mut v = vec![];
        d.symbols(&mut v);
        out.extend(v);
    };
    match op {
        Op::DimSize(d) | Op::Iota(d) | Op::OneHot(d) => add(d),
        Op::Fill(_, _, s) | Op::Rand(_, s) | Op::Reshape(s) | Op::BroadcastTo(s) => {
            s.iter().for_each(add)
        }
        Op::Slice { start, len, .. } => {
            add(start);
            add(len);
        }
        Op::Pad { start, full, .. } => {
            add(start);
            add(full);
        }
        Op::Input(_)
        | Op::Param(_)
        | Op::State(_)
        | Op::Const(..)
        | Op::Unary(_)
        | Op::Binary(_)
        | Op::Where
        | Op::Cast(_)
        | Op::StopGrad
        | Op::Reduce { .. }
        | Op::ArgMax(_)
        | Op::ArgMin(_)
        | Op::Norm { .. }
        | Op::Transpose(_)
        | Op::Reverse(_)
        | Op::Concat(_)
        | Op::TakeAlong(_)
        | Op::ScatterAddAlong(_)
        | Op::IndexSelect(_)
        | Op::IndexAdd(_)
        | Op::ScatterSet(_)
        | Op::MatMul
        | Op::Argsort { .. }
        | Op::Cumsum { .. }
        | Op::LogCumSumExp { .. }
        | Op::SearchSorted { .. } => {}
    }
}
