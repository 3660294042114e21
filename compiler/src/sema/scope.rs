//! Names: items of the file and of `use`d modules, nested scopes for `let`
//! and inlined `fn` bodies, and the checking of a `loss` item's signature and
//! statements.

use super::{Binding, Checked, Loader, Options, Source, Val};
use crate::diag::Diagnostic;
use crate::dim::Dim;
use crate::ir::{Graph, InputDecl, ParamDecl, StateDecl, StateUpdate, Ty};
use crate::ops::{Op, Scalar};
use crate::value::DType;
use losslang_grammar::Span;
use losslang_grammar::ast::{self, Block, Item, Stmt, TypeExpr};
use std::collections::{BTreeSet, HashMap};
use std::rc::Rc;

/// A helper function and the file it was written in.
#[derive(Clone)]
pub struct FnEntry {
    pub def: Rc<ast::FnDef>,
    pub file: usize,
    /// Named by a `use` that failed: calls are silent (the `use` already has its error).
    pub poisoned: bool,
}

impl FnEntry {
    fn poisoned(name: &ast::Ident, file: usize) -> FnEntry {
        FnEntry {
            def: Rc::new(ast::FnDef {
                doc: None,
                margin: false,
                name: name.clone(),
                params: vec![],
                ret: None,
                body: ast::Block {
                    stmts: vec![],
                    tail: None,
                    span: name.span,
                },
                span: name.span,
            }),
            file,
            poisoned: true,
        }
    }
}

pub type Fns = HashMap<(usize, String), FnEntry>;

pub struct Checker<'l> {
    pub g: Graph,
    pub diags: Vec<Diagnostic>,
    /// The file whose spans are being checked now.
    pub file: usize,
    /// Functions visible in each file: its own and those it imports, keyed by (file, name).
    pub fns: Fns,
    pub scopes: Vec<HashMap<String, Val>>,
    /// Helper calls being inlined: (name, call span, caller file) — for recursion and notes.
    pub call_stack: Vec<(String, Span, usize)>,
    /// Helper bodies inlined so far: bounds an exponential call tree (`f(x) = g(x) + g(x)`, ...).
    pub inlined: usize,
    pub dims: BTreeSet<String>,
    pub updated: HashMap<usize, Span>,
    pub opts: Options,
    pub bindings: Vec<Binding>,
    pub loader: &'l dyn Loader,
}

/// Parses and checks one `loss` of a program. `sources[0]` is the main file;
/// imported files are appended as they are loaded. `loss` picks the item
/// (default: the one named like the file, else the only one).
pub fn check_program(
    sources: &mut Vec<Source>,
    loss: Option<&str>,
    loader: &dyn Loader,
    opts: Options,
) -> Checked {
    let mut diags = Vec::new();
    let main = match losslang_grammar::parse(&sources[0].text) {
        Ok(f) => f,
        Err(e) => {
            diags.push(parse_diag(&e, 0));
            return Checked {
                graph: Graph::default(),
                bindings: vec![],
                diags,
            };
        }
    };
    let mut fns: Fns = HashMap::new();
    let mut losses: Vec<&ast::LossDef> = Vec::new();
    collect_items(&main, 0, sources, loader, &mut fns, &mut diags, &mut vec![]);
    for it in &main.items {
        if let Item::Loss(l) = it {
            if let Some(prev) = losses.iter().find(|p| p.name.name == l.name.name) {
                diags.push(
                    Diagnostic::error(
                        "L2006",
                        0,
                        l.name.span,
                        format!("`{}` is defined twice", l.name.name),
                    )
                    .label("second definition")
                    .related(prev.name.span, "first defined here")
                    .help("rename one of the two losses"),
                );
            }
            losses.push(l);
        }
    }
    let stem = std::path::Path::new(&sources[0].name)
        .file_stem()
        .map(|s| s.to_string_lossy().to_string())
        .unwrap_or_default();
    let chosen = match loss {
        Some(n) => losses.iter().find(|l| l.name.name == n).copied(),
        None => losses
            .iter()
            .find(|l| l.name.name == stem)
            .copied()
            .or_else(|| (losses.len() == 1).then(|| losses[0])),
    };
    let Some(def) = chosen else {
        let names: Vec<&str> = losses.iter().map(|l| l.name.name.as_str()).collect();
        let (msg, help) = match (loss, names.is_empty()) {
            (_, true) => (
                "this file defines no `loss`".to_string(),
                "add an item `loss name(inputs) -> f32 { ... }`".to_string(),
            ),
            (Some(n), false) => (
                format!("there is no loss named `{n}`"),
                format!("this file defines: {}", names.join(", ")),
            ),
            (None, false) => (
                "this file defines several losses; say which one to use".to_string(),
                format!("pass --loss NAME with one of: {}", names.join(", ")),
            ),
        };
        diags.push(Diagnostic::error("L2007", 0, Span::new(0, 0), msg).help(help));
        return Checked {
            graph: Graph::default(),
            bindings: vec![],
            diags,
        };
    };
    let mut ck = Checker {
        g: Graph::default(),
        diags,
        file: 0,
        fns,
        scopes: vec![HashMap::new()],
        call_stack: vec![],
        inlined: 0,
        dims: BTreeSet::new(),
        updated: HashMap::new(),
        opts,
        bindings: vec![],
        loader,
    };
    ck.check_loss(def);
    if !ck.diags.iter().any(|d| d.is_error()) {
        super::gradflow::analyse(&mut ck);
    }
    Checked {
        graph: ck.g,
        bindings: ck.bindings,
        diags: ck.diags,
    }
}

/// Checks a module file (only `fn`s and `use`s): it parses, its imports
/// resolve and no name is defined twice. Helper bodies are checked where
/// they are called, with the argument types of each call.
pub fn check_module(sources: &mut Vec<Source>, loader: &dyn Loader) -> Vec<Diagnostic> {
    let mut diags = Vec::new();
    match losslang_grammar::parse(&sources[0].text) {
        Ok(f) => {
            let mut fns = HashMap::new();
            collect_items(&f, 0, sources, loader, &mut fns, &mut diags, &mut vec![]);
        }
        Err(e) => diags.push(parse_diag(&e, 0)),
    }
    diags
}

/// Whether a source is a module: it parses and defines no `loss`.
pub fn is_module(text: &str) -> bool {
    losslang_grammar::parse(text).is_ok_and(|f| !f.items.iter().any(|i| matches!(i, Item::Loss(_))))
}

pub fn parse_diag(e: &losslang_grammar::ParseError, file: usize) -> Diagnostic {
    let mut d =
        Diagnostic::error(e.code, file, e.span_range, e.message.clone()).label(e.label.clone());
    d.help = e.help.clone();
    d
}

/// Registers the `fn`s of a file and, recursively, of the modules it `use`s.
fn collect_items(
    file: &ast::File,
    file_idx: usize,
    sources: &mut Vec<Source>,
    loader: &dyn Loader,
    fns: &mut Fns,
    diags: &mut Vec<Diagnostic>,
    visiting: &mut Vec<String>,
) {
    for it in &file.items {
        match it {
            Item::Fn(f) => {
                if let Some(prev) = fns.get(&(file_idx, f.name.name.clone()))
                    && prev.file == file_idx
                {
                    diags.push(
                        Diagnostic::error(
                            "L2006",
                            file_idx,
                            f.name.span,
                            format!("`{}` is defined twice", f.name.name),
                        )
                        .label("second definition")
                        .related(prev.def.name.span, "first defined here")
                        .help("rename one of the two functions"),
                    );
                    continue;
                }
                fns.insert(
                    (file_idx, f.name.name.clone()),
                    FnEntry {
                        def: Rc::new(f.clone()),
                        file: file_idx,
                        poisoned: false,
                    },
                );
            }
            Item::Use(u) => {
                let path: Vec<String> = u.path.iter().map(|p| p.name.clone()).collect();
                let key = path.join("::");
                if visiting.contains(&key) {
                    diags.push(
                        Diagnostic::error(
                            "L2008",
                            file_idx,
                            u.span,
                            format!("module `{key}` imports itself (through a cycle of `use`)"),
                        )
                        .label("cyclic import")
                        .help("move the shared functions into a module that imports neither"),
                    );
                    continue;
                }
                let from = sources[file_idx].name.clone();
                let src = match loader.load(&path, &from) {
                    Ok(s) => s,
                    Err(e) => {
                        diags.push(
                            Diagnostic::error("L2002", file_idx, u.span, format!("cannot find module `{key}`"))
                                .label(e)
                                .help("`std::name` is the standard library (`stdlib/name.loss`); other paths are relative to this file's folder"),
                        );
                        for item in &u.items {
                            fns.insert(
                                (file_idx, item.name.clone()),
                                FnEntry::poisoned(item, file_idx),
                            );
                        }
                        continue;
                    }
                };
                let idx = match sources.iter().position(|s| s.name == src.name) {
                    Some(i) => i,
                    None => {
                        sources.push(src);
                        sources.len() - 1
                    }
                };
                let parsed = match losslang_grammar::parse(&sources[idx].text) {
                    Ok(f) => f,
                    Err(e) => {
                        diags.push(parse_diag(&e, idx));
                        continue;
                    }
                };
                // A module's own functions live in its namespace (file `idx`); only the
                // named items are imported into this file's.
                let already = fns.keys().any(|(f, _)| *f == idx);
                if !already {
                    visiting.push(key.clone());
                    collect_items(&parsed, idx, sources, loader, fns, diags, visiting);
                    visiting.pop();
                }
                for item in &u.items {
                    match fns.get(&(idx, item.name.clone())).cloned() {
                        Some(e) if e.file == idx => {
                            fns.insert((file_idx, item.name.clone()), e);
                        }
                        _ => {
                            let mut have: Vec<String> = fns
                                .iter()
                                .filter(|((f, _), e)| *f == idx && e.file == idx && !e.poisoned)
                                .map(|((_, k), _)| k.clone())
                                .collect();
                            have.sort();
                            diags.push(
                                Diagnostic::error(
                                    "L2002",
                                    file_idx,
                                    item.span,
                                    format!("module `{key}` has no function `{}`", item.name),
                                )
                                .label("not found")
                                .help(format!("it defines: {}", have.join(", "))),
                            );
                            fns.insert(
                                (file_idx, item.name.clone()),
                                FnEntry::poisoned(item, file_idx),
                            );
                        }
                    }
                }
            }
            Item::Loss(_) => {}
        }
    }
}

impl Checker<'_> {
    pub fn err(&mut self, d: Diagnostic) {
        // A helper inlined at many calls would report the same mistake at each one.
        if self.diags.iter().rev().take(16).any(|p| {
            p.code == d.code && p.file == d.file && p.span == d.span && p.message == d.message
        }) {
            return;
        }
        let d = self.with_call_notes(d);
        self.diags.push(d);
    }

    /// Inside an inlined helper, point also at the call that brought us here.
    fn with_call_notes(&self, mut d: Diagnostic) -> Diagnostic {
        for (name, span, file) in self.call_stack.iter().rev() {
            if *file == d.file {
                d.related.push((*span, format!("in this call of `{name}`")));
            } else if d.help.is_none() {
                d.help = Some(format!("reached through a call of `{name}`"));
            }
        }
        d
    }

    /// The function `name` as seen from the file being checked.
    pub fn lookup_fn(&self, name: &str) -> Option<FnEntry> {
        self.fns.get(&(self.file, name.to_string())).cloned()
    }

    /// Names of the functions visible from the file being checked.
    pub fn visible_fns(&self) -> Vec<String> {
        let mut v: Vec<String> = self
            .fns
            .keys()
            .filter(|(f, _)| *f == self.file)
            .map(|(_, n)| n.clone())
            .collect();
        v.sort();
        v
    }

    pub fn lookup(&self, name: &str) -> Option<Val> {
        self.scopes.iter().rev().find_map(|s| s.get(name).cloned())
    }

    pub fn bind(&mut self, name: &str, v: Val) {
        self.scopes
            .last_mut()
            .expect("at least one scope")
            .insert(name.to_string(), v);
    }

    pub fn dtype_of(&mut self, t: &TypeExpr) -> Option<DType> {
        match DType::from_name(&t.dtype.name) {
            Some(d) => Some(d),
            None => {
                self.err(
                    Diagnostic::error(
                        "L3002",
                        self.file,
                        t.dtype.span,
                        format!("unknown dtype `{}`", t.dtype.name),
                    )
                    .label("not a dtype")
                    .help("dtypes are f32, f64, i64 and bool"),
                );
                None
            }
        }
    }

    pub fn shape_of(&mut self, t: &TypeExpr) -> Vec<Dim> {
        t.dims
            .iter()
            .flatten()
            .map(|d| match d {
                ast::DimAst::Lit(v, _) => Dim::lit(*v),
                ast::DimAst::Name(i) => Dim::sym(&i.name),
            })
            .collect()
    }

    fn check_loss(&mut self, def: &ast::LossDef) {
        self.g.name = def.name.name.clone();
        self.g.doc = def.doc.clone();
        if let Some(r) = &def.ret
            && (DType::from_name(&r.dtype.name) != Some(DType::F32)
                || r.dims.as_ref().is_some_and(|d| !d.is_empty()))
        {
            self.err(
                Diagnostic::error("L3010", self.file, r.span, "a loss returns a scalar `f32`")
                    .label("declared here")
                    .help("write `-> f32`"),
            );
        }
        let mut seen: HashMap<String, Span> = HashMap::new();
        for inp in &def.inputs {
            if let Some(prev) = seen.insert(inp.name.name.clone(), inp.name.span) {
                self.err(
                    Diagnostic::error(
                        "L2006",
                        self.file,
                        inp.name.span,
                        format!("input `{}` is declared twice", inp.name.name),
                    )
                    .label("second declaration")
                    .related(prev, "first declared here")
                    .help("give each input its own name"),
                );
                continue;
            }
            let Some(dt) = self.dtype_of(&inp.ty) else {
                self.bind(&inp.name.name, Val::Poison);
                continue;
            };
            let shape = self.shape_of(&inp.ty);
            for d in inp.ty.dims.iter().flatten() {
                match d {
                    ast::DimAst::Name(i) => {
                        self.dims.insert(i.name.clone());
                    }
                    ast::DimAst::Lit(v, sp) if *v < 0 => self.err(
                        Diagnostic::error(
                            "L3011",
                            self.file,
                            *sp,
                            format!("a dim cannot be negative ({v})"),
                        )
                        .label("negative size")
                        .help("sizes are non-negative integers or symbolic names like N"),
                    ),
                    ast::DimAst::Lit(..) => {}
                }
            }
            if inp.diff && !dt.is_float() {
                self.err(
                    Diagnostic::error(
                        "L4003",
                        self.file,
                        inp.span,
                        format!("`{}` is {} and cannot be `diff`", inp.name.name, dt),
                    )
                    .label("only f32 or f64 inputs have gradients")
                    .help("remove `diff`, or declare the input as f32"),
                );
            }
            let ty = Ty::new(dt, shape);
            let idx = self.g.inputs.len();
            self.g.inputs.push(InputDecl {
                name: inp.name.name.clone(),
                ty: ty.clone(),
                diff: inp.diff && dt.is_float(),
                span: inp.span,
                doc: inp.doc.clone(),
            });
            let h = self.g.push_typed(Op::Input(idx), vec![], ty, inp.name.span);
            self.bind(&inp.name.name, Val::T(h));
            self.bindings.push(Binding {
                kind: "input",
                name: inp.name.name.clone(),
                file: self.file,
                span: inp.name.span,
                value: Some(h),
            });
        }
        if !def.inputs.is_empty() && !def.inputs.iter().any(|i| i.diff) {
            self.err(
                Diagnostic::warning(
                    "L4004",
                    self.file,
                    def.name.span,
                    format!(
                        "no input of `{}` is `diff`: nothing gets a gradient",
                        def.name.name
                    ),
                )
                .label("no differentiable input")
                .help("mark the model's outputs with `diff`, e.g. `logits: f32[N, C] diff`"),
            );
        }
        // State dims that no input binds are bound at run time by the state file or --dims.
        for st in def.body.stmts.iter() {
            if let Stmt::State { ty, .. } = st {
                for d in ty.dims.iter().flatten() {
                    if let ast::DimAst::Name(i) = d {
                        self.dims.insert(i.name.clone());
                    }
                }
            }
        }
        let loss = self.check_block(&def.body, true);
        let Some(tail) = &def.body.tail else {
            self.err(
                Diagnostic::error(
                    "L3010",
                    self.file,
                    Span::new(def.body.span.end.saturating_sub(1), def.body.span.end),
                    "the loss body has no final expression",
                )
                .label("the value of the loss goes here")
                .help("end the body with the scalar loss, e.g. `mean(l)`"),
            );
            return;
        };
        match loss {
            Val::Poison => {}
            v if !self.want_value(&v, tail.span) => {}
            v => {
                let h = self.materialize(&v, Some(DType::F32), tail.span);
                let ty = self.g.ty(h).clone();
                if !ty.shape.is_empty() {
                    self.err(
                        Diagnostic::error(
                            "L3010",
                            self.file,
                            tail.span,
                            format!("the loss must be a scalar, but this is {ty}"),
                        )
                        .label(format!("{ty}"))
                        .help("reduce it, e.g. `mean(...)` or `sum(...)`"),
                    );
                } else if !ty.dtype.is_float() {
                    self.err(
                        Diagnostic::error(
                            "L3010",
                            self.file,
                            tail.span,
                            format!("the loss must be a float, but this is {ty}"),
                        )
                        .label(format!("{ty}"))
                        .help(
                            "a loss is a real number: use `f32(...)` if this count is really meant",
                        ),
                    );
                } else {
                    let h = self.g.cast(h, DType::F32, tail.span);
                    self.g.loss = Some(h);
                }
            }
        }
    }

    /// Checks a block's statements in a new scope and returns its value.
    pub fn check_block(&mut self, b: &Block, top: bool) -> Val {
        self.scopes.push(HashMap::new());
        for st in &b.stmts {
            self.check_stmt(st, top);
        }
        let v = match &b.tail {
            Some(e) => self.expr(e),
            None => Val::Poison,
        };
        self.scopes.pop();
        v
    }

    fn only_top(&mut self, top: bool, span: Span, what: &str) -> bool {
        if !top {
            self.err(
                Diagnostic::error(
                    "L3030",
                    self.file,
                    span,
                    format!("`{what}` is only allowed in the body of a `loss`"),
                )
                .label("not at the top of a loss")
                .help(
                    "declare params and state, write reports and updates directly in the loss body",
                ),
            );
        }
        top
    }

    fn check_stmt(&mut self, st: &Stmt, top: bool) {
        match st {
            Stmt::Let {
                name,
                ty,
                value,
                span,
            } => {
                let v = self.expr(value);
                let v = match (ty, v) {
                    (Some(t), Val::Poison) => {
                        let _ = t;
                        Val::Poison
                    }
                    (Some(t), v) => self.ascribe(v, t, value.span),
                    (None, v) => v,
                };
                let h = match &v {
                    Val::T(h) => Some(*h),
                    _ => None,
                };
                if self.call_stack.is_empty() {
                    self.bindings.push(Binding {
                        kind: "let",
                        name: name.name.clone(),
                        file: self.file,
                        span: *span,
                        value: h,
                    });
                }
                self.bind(&name.name, v);
            }
            Stmt::Param {
                doc,
                name,
                ty,
                default,
                domain,
                span,
            } => {
                if !self.only_top(top, *span, "param") {
                    return;
                }
                self.check_param(doc, name, ty, default, domain.as_ref(), *span);
                // A failed declaration still binds its name, so later uses stay quiet.
                if self.lookup(&name.name).is_none() {
                    self.bind(&name.name, Val::Poison);
                }
            }
            Stmt::State {
                doc,
                name,
                ty,
                init,
                span,
            } => {
                if !self.only_top(top, *span, "state") {
                    return;
                }
                self.check_state(doc, name, ty, init, *span);
                if self.lookup(&name.name).is_none() {
                    self.bind(&name.name, Val::Poison);
                }
            }
            Stmt::Report { name, value, span } => {
                if !self.only_top(top, *span, "report") {
                    return;
                }
                let v = self.expr(value);
                if !self.want_value(&v, value.span) {
                    return;
                }
                if self.g.reports.iter().any(|(n, _)| n == &name.name) {
                    self.err(
                        Diagnostic::error(
                            "L2006",
                            self.file,
                            name.span,
                            format!("report `{}` is written twice", name.name),
                        )
                        .label("second report")
                        .help("give each report its own name"),
                    );
                    return;
                }
                let h = self.materialize(&v, None, value.span);
                let h = self.g.mk(Op::StopGrad, vec![h], value.span);
                self.g.reports.push((name.name.clone(), h));
            }
            Stmt::Update {
                target,
                index,
                value,
                span,
            } => {
                if !self.only_top(top, *span, "<-") {
                    return;
                }
                self.check_update(target, index.as_ref(), value, *span);
            }
            Stmt::Assert { cond, span } => {
                let v = self.expr(cond);
                if matches!(v, Val::Poison) {
                    return;
                }
                let h = self.materialize(&v, None, cond.span);
                if self.g.ty(h).dtype != crate::value::DType::Bool {
                    self.err(
                        Diagnostic::error(
                            "L3003",
                            self.file,
                            cond.span,
                            "`assert` needs a bool condition",
                        )
                        .label(format!("this is {}", self.g.ty(h)))
                        .help("write a comparison, e.g. `assert N == M`"),
                    );
                    return;
                }
                let all = self.reduce_all_bool(h, cond.span);
                self.g.checks.push(crate::ir::graph::Check {
                    cond: all,
                    span: *span,
                    message: "assertion failed".into(),
                });
            }
        }
    }

    fn ascribe(&mut self, v: Val, t: &TypeExpr, span: Span) -> Val {
        if !self.want_value(&v, span) {
            return Val::Poison;
        }
        let Some(dt) = self.dtype_of(t) else {
            return Val::Poison;
        };
        let h = self.materialize(&v, Some(dt), span);
        let ty = self.g.ty(h).clone();
        let want = self.shape_of(t);
        if ty.dtype != dt || (t.dims.is_some() && ty.shape != want) {
            self.err(
                Diagnostic::error(
                    "L3001",
                    self.file,
                    span,
                    format!("this value is {ty}, not the declared {}", Ty::new(dt, want)),
                )
                .label(format!("{ty}"))
                .related(t.span, "declared type")
                .help(if ty.dtype != dt {
                    format!("fix the declared type, or convert with {dt}(...)")
                } else {
                    "the shapes differ: reduce or index the value (e.g. max(..., axis=1)), or fix the declared shape".to_string()
                }),
            );
            return Val::Poison;
        }
        Val::T(h)
    }

    fn check_param(
        &mut self,
        doc: &Option<String>,
        name: &ast::Ident,
        ty: &TypeExpr,
        default: &ast::Expr,
        domain: Option<&ast::ParamDomain>,
        span: Span,
    ) {
        let Some(dt) = self.dtype_of(ty) else { return };
        if ty.dims.as_ref().is_some_and(|d| !d.is_empty()) {
            self.err(
                Diagnostic::error("L3012", self.file, ty.span, "params are scalars")
                    .label("a tensor type")
                    .help("pass tensors as inputs; a param is one number that can change without recompiling"),
            );
            return;
        }
        if self.lookup(&name.name).is_some() || self.g.param_index(&name.name).is_some() {
            self.err(
                Diagnostic::error(
                    "L2006",
                    self.file,
                    name.span,
                    format!("`{}` is already defined", name.name),
                )
                .label("redefined here")
                .help("give the param its own name"),
            );
            return;
        }
        let v = self.expr(default);
        let val = match (&v, dt) {
            (Val::Int(i), DType::I64) => Scalar::I(*i),
            (Val::Int(i), DType::F32 | DType::F64) => Scalar::F(*i as f64),
            (Val::Float(f), DType::F32 | DType::F64) => Scalar::F(*f),
            (Val::Bool(b), DType::Bool) => Scalar::B(*b),
            (Val::Poison, _) => return,
            (Val::T(h), _) if self.depends_on_data(*h) => {
                self.err(
                    Diagnostic::error("L3013", self.file, default.span, "a param's default cannot read inputs: params are fixed before the data is seen")
                        .label("reads the data")
                        .help(format!("use a constant default, or compute the value in the body: `let {} = ...`", name.name)),
                );
                return;
            }
            _ => {
                self.err(
                    Diagnostic::error(
                        "L3013",
                        self.file,
                        default.span,
                        format!("the default of a param of type `{dt}` must be a `{dt}` constant"),
                    )
                    .label("not a constant of that type")
                    .help(match dt {
                        DType::I64 => "write an integer literal such as `0`",
                        DType::Bool => "write `true` or `false`",
                        _ => "write a number such as `0.5`",
                    }),
                );
                return;
            }
        };
        if let Some(d) = domain {
            let bad = if dt == DType::Bool {
                Some("a bool param has no domain".to_string())
            } else if d.lo.is_nan()
                || d.hi.is_nan()
                || d.lo > d.hi
                || (d.lo == d.hi && !(d.lo_closed && d.hi_closed))
            {
                Some(format!("the domain {d} is empty"))
            } else if !d.contains(val.as_f64()) {
                Some(format!(
                    "the default `{}` of `{}` is outside its domain {d}",
                    val.text(),
                    name.name
                ))
            } else {
                None
            };
            if let Some(msg) = bad {
                self.err(
                    Diagnostic::error("L3018", self.file, d.span, msg)
                        .label("this domain")
                        .help("write the interval of values the param may take, e.g. `in [0, inf)`, with the default inside it"),
                );
                return;
            }
        }
        let idx = self.g.params.len();
        self.g.params.push(ParamDecl {
            name: name.name.clone(),
            dtype: dt,
            default: val,
            domain: domain.cloned(),
            span,
            doc: doc.clone(),
        });
        let h = self
            .g
            .push_typed(Op::Param(idx), vec![], Ty::scalar(dt), name.span);
        self.bind(&name.name, Val::T(h));
        self.bindings.push(Binding {
            kind: "param",
            name: name.name.clone(),
            file: self.file,
            span,
            value: Some(h),
        });
    }

    fn check_state(
        &mut self,
        doc: &Option<String>,
        name: &ast::Ident,
        ty: &TypeExpr,
        init: &ast::Expr,
        span: Span,
    ) {
        let Some(dt) = self.dtype_of(ty) else { return };
        let shape = self.shape_of(ty);
        if self.lookup(&name.name).is_some() {
            self.err(
                Diagnostic::error(
                    "L2006",
                    self.file,
                    name.span,
                    format!("`{}` is already defined", name.name),
                )
                .label("redefined here")
                .help("give the state its own name"),
            );
            return;
        }
        let v = self.expr(init);
        if matches!(v, Val::Poison) {
            return;
        }
        let h = self.materialize(&v, Some(dt), init.span);
        let h = self.coerce_dtype(h, dt, init.span, "the initial value of this state");
        let Some(h) = h else { return };
        let ity = self.g.ty(h).clone();
        let Ok(h) = self
            .g
            .push(Op::BroadcastTo(shape.clone()), vec![h], init.span)
        else {
            self.err(
                Diagnostic::error("L3001", self.file, init.span, format!("the initial value is {ity}, which does not fit the state's type {}", Ty::new(dt, shape)))
                    .label(format!("{ity}"))
                    .help("initialise with a scalar (broadcast to every entry) or a value of the declared shape"),
            );
            return;
        };
        if self.depends_on_data(h) {
            self.err(
                Diagnostic::error(
                    "L3014",
                    self.file,
                    init.span,
                    "a state's initial value may only use params and constants",
                )
                .label("reads an input or another state")
                .help("initialise with a constant or a param; update it with `<-` in the body"),
            );
            return;
        }
        let idx = self.g.states.len();
        self.g.states.push(StateDecl {
            name: name.name.clone(),
            ty: Ty::new(dt, shape.clone()),
            init: h,
            span,
            doc: doc.clone(),
        });
        let s = self
            .g
            .push_typed(Op::State(idx), vec![], Ty::new(dt, shape), name.span);
        self.bind(&name.name, Val::T(s));
        self.bindings.push(Binding {
            kind: "state",
            name: name.name.clone(),
            file: self.file,
            span,
            value: Some(s),
        });
    }

    fn check_update(
        &mut self,
        target: &ast::Ident,
        index: Option<&ast::Expr>,
        value: &ast::Expr,
        span: Span,
    ) {
        let Some(si) = self.g.state_index(&target.name) else {
            if matches!(self.lookup(&target.name), Some(Val::Poison)) {
                return;
            }
            if self.g.input_index(&target.name).is_some() {
                self.err(
                    Diagnostic::error("L3031", self.file, target.span, format!("`{}` is an input, and inputs are read-only", target.name))
                        .label("not a state")
                        .help(format!("keep a running value in a state of its own, e.g. `state {0}_ema: f32 = 0.0` and `{0}_ema <- ...`", target.name)),
                );
                return;
            }
            let what = if self.lookup(&target.name).is_some() {
                "is not a state"
            } else {
                "is not defined"
            };
            self.err(
                Diagnostic::error(
                    "L3031",
                    self.file,
                    target.span,
                    format!(
                        "`{}` {what}; only a `state` can be updated with `<-`",
                        target.name
                    ),
                )
                .label("not a state")
                .help(format!(
                    "declare it first: `state {}: f32 = 0.0`",
                    target.name
                )),
            );
            return;
        };
        if let Some(prev) = self.updated.get(&si) {
            let prev = *prev;
            self.err(
                Diagnostic::error("L3032", self.file, span, format!("state `{}` is updated twice", target.name))
                    .label("second update")
                    .related(prev, "first update")
                    .help("a state is updated at most once per call: combine the two updates into one expression"),
            );
            return;
        }
        self.updated.insert(si, span);
        let st = self.g.states[si].clone();
        let v = self.expr(value);
        if !self.want_value(&v, value.span) {
            return;
        }
        let sh = self
            .g
            .push_typed(Op::State(si), vec![], st.ty.clone(), target.span);
        let newv = match index {
            None => {
                let h = self.materialize(&v, Some(st.ty.dtype), value.span);
                let Some(h) = self.coerce_dtype(h, st.ty.dtype, value.span, "the new value") else {
                    return;
                };
                let vt = self.g.ty(h).clone();
                match self
                    .g
                    .push(Op::BroadcastTo(st.ty.shape.clone()), vec![h], value.span)
                {
                    Ok(h) => h,
                    Err(_) => {
                        self.err(
                            Diagnostic::error("L3033", self.file, value.span, format!("the new value is {vt}, but state `{}` is {}", target.name, st.ty))
                                .label(format!("{vt}"))
                                .help("reduce or index the value to the state's shape, or use `name[ids] <- values` to update rows"),
                        );
                        return;
                    }
                }
            }
            Some(ix) => {
                let iv = self.expr(ix);
                if matches!(iv, Val::Poison) {
                    return;
                }
                let ih = self.materialize(&iv, Some(DType::I64), ix.span);
                if self.g.ty(ih).dtype != DType::I64 || st.ty.shape.is_empty() {
                    let it = self.g.ty(ih).clone();
                    self.err(
                        Diagnostic::error("L3034", self.file, ix.span, format!("`{}[...] <-` needs i64 row ids of a state table, got {it}", target.name))
                            .label("not row ids")
                            .help(if st.ty.shape.is_empty() {
                                format!("`{}` is a scalar; declare it as a table (`state {}: f32[M] = 0.0`) to update rows", target.name, target.name)
                            } else {
                                format!("the ids are {it}; row ids must be i64: declare them as `i64[N]` or convert with i64(...)")
                            }),
                    );
                    return;
                }
                let mut want = self.g.ty(ih).shape.clone();
                want.extend(st.ty.shape[1..].iter().cloned());
                let h = self.materialize(&v, Some(st.ty.dtype), value.span);
                let Some(h) = self.coerce_dtype(h, st.ty.dtype, value.span, "the new rows") else {
                    return;
                };
                let vt = self.g.ty(h).clone();
                let h = match self
                    .g
                    .push(Op::BroadcastTo(want.clone()), vec![h], value.span)
                {
                    Ok(h) => h,
                    Err(_) => {
                        self.err(
                            Diagnostic::error(
                                "L3033",
                                self.file,
                                value.span,
                                format!(
                                    "the new rows are {vt}, but {} rows of `{}` are {}",
                                    crate::dim::shape_str(&self.g.ty(ih).shape.clone()),
                                    target.name,
                                    Ty::new(st.ty.dtype, want)
                                ),
                            )
                            .label(format!("{vt}"))
                            .help("give one value per id"),
                        );
                        return;
                    }
                };
                self.g.mk(Op::ScatterSet(0), vec![sh, ih, h], span)
            }
        };
        let newv = self.g.mk(Op::StopGrad, vec![newv], span);
        self.g.updates.push(StateUpdate {
            state: si,
            index: None,
            value: newv,
            span,
        });
    }

    /// Converts `h` to `dt` when that loses nothing the user meant (int → float);
    /// float → int or anything ↔ bool needs an explicit cast.
    pub fn coerce_dtype(
        &mut self,
        h: crate::ir::Handle,
        dt: DType,
        span: Span,
        what: &str,
    ) -> Option<crate::ir::Handle> {
        let have = self.g.ty(h).dtype;
        if have == dt {
            return Some(h);
        }
        let ok = matches!(
            (have, dt),
            (DType::I64, DType::F32 | DType::F64)
                | (DType::F32, DType::F64)
                | (DType::F64, DType::F32)
        );
        if ok {
            return Some(self.g.cast(h, dt, span));
        }
        self.err(
            Diagnostic::error(
                "L3003",
                self.file,
                span,
                format!("{what} is {have}, but {dt} is needed"),
            )
            .label(format!("{have}"))
            .help(format!("convert explicitly with {dt}(...)")),
        );
        None
    }

    /// Whether a value reads any input.
    /// Whether a numerical lint applies to `h`: it is computed from the data,
    /// or from a param whose declared domain is every value a call may give.
    pub fn lintable(&self, h: crate::ir::Handle) -> bool {
        let mut stack = vec![h];
        let mut seen = std::collections::HashSet::new();
        while let Some(x) = stack.pop() {
            if !seen.insert(x) {
                continue;
            }
            let n = self.g.node(x);
            match n.op {
                Op::Input(_) => return true,
                Op::Param(k) if self.g.params[k].domain.is_some() => return true,
                _ => stack.extend(n.args.iter().copied()),
            }
        }
        false
    }

    pub fn depends_on_inputs(&self, h: crate::ir::Handle) -> bool {
        let mut stack = vec![h];
        let mut seen = std::collections::HashSet::new();
        while let Some(x) = stack.pop() {
            if !seen.insert(x) {
                continue;
            }
            let n = self.g.node(x);
            if matches!(n.op, Op::Input(_)) {
                return true;
            }
            stack.extend(n.args.iter().copied());
        }
        false
    }

    /// Whether a value reads any input or state (a param or constant does not).
    pub fn depends_on_data(&self, h: crate::ir::Handle) -> bool {
        let mut stack = vec![h];
        let mut seen = std::collections::HashSet::new();
        while let Some(x) = stack.pop() {
            if !seen.insert(x) {
                continue;
            }
            let n = self.g.node(x);
            if matches!(n.op, Op::Input(_) | Op::State(_)) {
                return true;
            }
            stack.extend(n.args.iter().copied());
        }
        false
    }
}
