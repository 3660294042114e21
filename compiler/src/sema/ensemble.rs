//! `ensemble(z, [members], weights=w)`: a non-negative mix of margin losses
//! φ_k(z). Each member must be a `margin fn` that the checker proves convex
//! (DCP curvature rules, as CVXPY applies them) and classification-calibrated
//! (φ′(0) < 0, computed with the compiler's own derivative), and the weights
//! must be provably non-negative: then the mix is convex and calibrated by
//! construction (Bartlett, Jordan, McAuliffe 2006).

use super::Val;
use super::range::range;
use super::scope::{Checker, FnEntry};
use crate::diag::Diagnostic;
use crate::dim::Dim;
use crate::ir::{Graph, Handle, InputDecl, Ty};
use crate::ops::{BinaryOp, Op, ReduceKind, Scalar, UnaryOp};
use crate::value::{DType, Tensor};
use losslang_grammar::Span;
use losslang_grammar::ast::{Expr, ExprKind};
use std::collections::HashMap;

/// DCP curvature of an expression in the margin `z`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Curv {
    Const,
    Affine,
    Convex,
    Concave,
    Unknown,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Mono {
    Increasing,
    Decreasing,
    Neither,
}

fn flip(c: Curv) -> Curv {
    match c {
        Curv::Convex => Curv::Concave,
        Curv::Concave => Curv::Convex,
        c => c,
    }
}

fn add(a: Curv, b: Curv) -> Curv {
    use Curv::*;
    match (a, b) {
        (Unknown, _) | (_, Unknown) => Unknown,
        (Const, x) | (x, Const) => x,
        (Affine, x) | (x, Affine) => x,
        (Convex, Convex) => Convex,
        (Concave, Concave) => Concave,
        _ => Unknown,
    }
}

/// The curvature of f(g) for an atom f of curvature `f` and monotonicity `m`.
fn compose(f: Curv, m: Mono, g: Curv) -> Curv {
    use Curv::*;
    match (g, f) {
        (Const, _) => Const,
        (Affine, f) => f,
        (_, Convex)
            if (m == Mono::Increasing && g == Convex)
                || (m == Mono::Decreasing && g == Concave) =>
        {
            Convex
        }
        (_, Concave)
            if (m == Mono::Increasing && g == Concave)
                || (m == Mono::Decreasing && g == Convex) =>
        {
            Concave
        }
        (_, Affine) if m == Mono::Increasing => g,
        (_, Affine) if m == Mono::Decreasing => flip(g),
        _ => Unknown,
    }
}

fn depends(g: &Graph, h: Handle, z: Handle, memo: &mut HashMap<Handle, bool>) -> bool {
    if h == z {
        return true;
    }
    if let Some(d) = memo.get(&h) {
        return *d;
    }
    let d = g
        .node(h)
        .args
        .clone()
        .iter()
        .any(|a| depends(g, *a, z, memo));
    memo.insert(h, d);
    d
}

/// The DCP curvature of `h` as a function of `z`.
pub fn curvature(g: &Graph, h: Handle, z: Handle) -> Curv {
    let mut dep = HashMap::new();
    let mut ranges = HashMap::new();
    curv(g, h, z, &mut dep, &mut ranges)
}

fn curv(
    g: &Graph,
    h: Handle,
    z: Handle,
    dep: &mut HashMap<Handle, bool>,
    ranges: &mut HashMap<Handle, crate::sema::range::Range>,
) -> Curv {
    if h == z {
        return Curv::Affine;
    }
    if !depends(g, h, z, dep) {
        return Curv::Const;
    }
    let n = g.node(h).clone();
    let mut c = |i: usize| curv(g, n.args[i], z, dep, ranges);
    match &n.op {
        Op::Binary(BinaryOp::Add) => {
            let (a, b) = (c(0), c(1));
            add(a, b)
        }
        Op::Binary(BinaryOp::Sub) => {
            let (a, b) = (c(0), c(1));
            add(a, flip(b))
        }
        Op::Binary(BinaryOp::Mul) | Op::Binary(BinaryOp::Div) => {
            let (a, b) = (c(0), c(1));
            let div = matches!(n.op, Op::Binary(BinaryOp::Div));
            // Scaling by a constant keeps (or, if negative, flips) the curvature.
            let (k, e, kh) = match (a, b) {
                (Curv::Const, e) if !div => (a, e, n.args[0]),
                (e, Curv::Const) => (b, e, n.args[1]),
                _ => return Curv::Unknown,
            };
            let _ = k;
            let r = range(g, kh, ranges);
            if e == Curv::Const {
                Curv::Const
            } else if r.positive() {
                e
            } else if r.negative() {
                flip(e)
            } else if e == Curv::Affine {
                Curv::Affine
            } else {
                Curv::Unknown
            }
        }
        Op::Binary(BinaryOp::Maximum) => {
            let (a, b) = (c(0), c(1));
            compose(Curv::Convex, Mono::Increasing, add(a, b).max_convex(a, b))
        }
        Op::Binary(BinaryOp::Minimum) => {
            let (a, b) = (c(0), c(1));
            compose(Curv::Concave, Mono::Increasing, add(a, b).max_concave(a, b))
        }
        Op::Binary(BinaryOp::Pow) => {
            let (base, e) = (c(0), c(1));
            if e != Curv::Const {
                return Curv::Unknown;
            }
            let p = range(g, n.args[1], ranges);
            if p.lo != p.hi {
                return Curv::Unknown;
            }
            let p = p.lo;
            let nonneg = range(g, n.args[0], ranges).nonneg();
            if p == 0.0 {
                Curv::Const
            } else if p == 1.0 {
                base
            } else if p > 1.0 && nonneg {
                compose(Curv::Convex, Mono::Increasing, base)
            } else if p > 1.0 && p.fract() == 0.0 && (p as i64) % 2 == 0 {
                compose(Curv::Convex, Mono::Neither, base)
            } else if p > 0.0 && p < 1.0 && nonneg {
                compose(Curv::Concave, Mono::Increasing, base)
            } else if p < 0.0 && range(g, n.args[0], ranges).positive() {
                compose(Curv::Convex, Mono::Decreasing, base)
            } else {
                Curv::Unknown
            }
        }
        Op::Unary(u) => {
            let a = c(0);
            let (f, m) = match u {
                UnaryOp::Neg => return flip(a),
                UnaryOp::Exp | UnaryOp::Softplus | UnaryOp::Relu | UnaryOp::Expm1 => {
                    (Curv::Convex, Mono::Increasing)
                }
                UnaryOp::Abs => (Curv::Convex, Mono::Neither),
                UnaryOp::Log | UnaryOp::LogSigmoid | UnaryOp::Sqrt | UnaryOp::Log1p => {
                    (Curv::Concave, Mono::Increasing)
                }
                UnaryOp::Rsqrt => (Curv::Convex, Mono::Decreasing),
                UnaryOp::Tanh
                | UnaryOp::Sigmoid
                | UnaryOp::Sin
                | UnaryOp::Cos
                | UnaryOp::Atanh
                | UnaryOp::Asinh
                | UnaryOp::Sign
                | UnaryOp::Floor
                | UnaryOp::Round
                | UnaryOp::Not
                | UnaryOp::IsFinite => return Curv::Unknown,
            };
            compose(f, m, a)
        }
        Op::Reduce {
            kind: ReduceKind::Sum,
            ..
        } => c(0),
        Op::Reduce {
            kind: ReduceKind::Max,
            ..
        } => compose(Curv::Convex, Mono::Increasing, c(0)),
        Op::Reduce {
            kind: ReduceKind::Min,
            ..
        } => compose(Curv::Concave, Mono::Increasing, c(0)),
        Op::Cast(d) if d.is_float() => c(0),
        Op::Reshape(_) | Op::BroadcastTo(_) => c(0),
        _ => Curv::Unknown,
    }
}

impl Curv {
    /// Both arguments of `maximum` must be convex (or affine/constant).
    fn max_convex(self, a: Curv, b: Curv) -> Curv {
        let ok = |x: Curv| matches!(x, Curv::Const | Curv::Affine | Curv::Convex);
        if ok(a) && ok(b) {
            if a == Curv::Const && b == Curv::Const {
                Curv::Const
            } else {
                Curv::Convex
            }
        } else {
            Curv::Unknown
        }
    }

    fn max_concave(self, a: Curv, b: Curv) -> Curv {
        let ok = |x: Curv| matches!(x, Curv::Const | Curv::Affine | Curv::Concave);
        if ok(a) && ok(b) {
            if a == Curv::Const && b == Curv::Const {
                Curv::Const
            } else {
                Curv::Concave
            }
        } else {
            Curv::Unknown
        }
    }
}

impl Checker<'_> {
    /// Inlines a helper on already-checked argument values.
    fn inline(&mut self, entry: &FnEntry, args: Vec<Val>, call: Span) -> Val {
        let def = entry.def.clone();
        let caller = self.file;
        self.call_stack.push((def.name.name.clone(), call, caller));
        self.file = entry.file;
        let saved = std::mem::replace(&mut self.scopes, vec![HashMap::new()]);
        for (p, v) in def.params.iter().zip(args) {
            self.bind(&p.name.name, v);
        }
        let out = self.check_block(&def.body, false);
        self.scopes = saved;
        self.file = caller;
        self.call_stack.pop();
        out
    }

    /// φ′(0) of a margin fn, by the compiler's own autodiff and interpreter.
    fn slope_at_zero(&self, entry: &FnEntry) -> Result<f64, String> {
        let mut sub = Checker {
            g: Graph::default(),
            diags: vec![],
            file: entry.file,
            fns: self.fns.clone(),
            scopes: vec![HashMap::new()],
            call_stack: vec![],
            inlined: 0,
            dims: self.dims.clone(),
            updated: HashMap::new(),
            opts: self.opts,
            bindings: vec![],
            loader: self.loader,
        };
        let sp = entry.def.name.span;
        let ty = Ty::scalar(DType::F64);
        sub.g.inputs.push(InputDecl {
            name: "z".into(),
            ty: ty.clone(),
            diff: true,
            span: sp,
            doc: None,
        });
        let z = sub.g.push_typed(Op::Input(0), vec![], ty, sp);
        let out = sub.inline(entry, vec![Val::T(z)], sp);
        if sub.diags.iter().any(|d| d.is_error()) || matches!(out, Val::Poison) {
            return Err("its body does not check on a scalar margin".into());
        }
        let h = sub.materialize(&out, Some(DType::F64), sp);
        if !sub.g.ty(h).shape.is_empty() || !sub.g.ty(h).dtype.is_float() {
            return Err(format!("it returns {}, not a scalar", sub.g.ty(h)));
        }
        let h = sub.g.cast(h, DType::F64, sp);
        sub.g.loss = Some(h);
        crate::autodiff::differentiate(&mut sub.g);
        let env = crate::ir::eval::Env {
            inputs: vec![Tensor::scalar_f(DType::F64, 0.0)],
            ..Default::default()
        };
        let gh = sub.g.grads[0].1;
        let v = crate::ir::eval::eval(&sub.g, &env, &[gh]).map_err(|e| format!("{:?}", e.error))?;
        Ok(v[0].scalar_f64().unwrap_or(f64::NAN))
    }

    pub(super) fn ensemble(
        &mut self,
        z: Option<&Expr>,
        members: Option<&Expr>,
        weights: Option<&Expr>,
        sp: Span,
    ) -> Option<Val> {
        let (Some(ze), Some(me)) = (z, members) else {
            self.err(
                Diagnostic::error(
                    "L3020",
                    self.file,
                    sp,
                    "`ensemble` needs the margin and a list of members",
                )
                .label("missing argument")
                .help("write ensemble(z, [logistic, exponential], weights=w)"),
            );
            return None;
        };
        let zv = self.expr(ze);
        if !self.want_value(&zv, ze.span) {
            return None;
        }
        let zh = self.materialize(&zv, Some(DType::F32), ze.span);
        let ExprKind::List(items) = &me.kind else {
            self.err(
                Diagnostic::error(
                    "L3040",
                    self.file,
                    me.span,
                    "the members of an `ensemble` are a list of `margin fn` names",
                )
                .label("not a list")
                .help("write [logistic, squared_hinge]"),
            );
            return None;
        };
        if items.is_empty() {
            self.err(
                Diagnostic::error(
                    "L3040",
                    self.file,
                    me.span,
                    "an `ensemble` needs at least one member",
                )
                .label("empty")
                .help("list the margin losses to mix"),
            );
            return None;
        }
        let mut outs = vec![];
        let mut ok = true;
        for it in items {
            let ExprKind::Name(name) = &it.kind else {
                self.err(
                    Diagnostic::error(
                        "L3040",
                        self.file,
                        it.span,
                        "an ensemble member is the name of a `margin fn`",
                    )
                    .label("not a name")
                    .help("declare it with `margin fn name(z) { ... }` and list its name"),
                );
                ok = false;
                continue;
            };
            let Some(entry) = self.lookup_fn(name) else {
                self.err(
                    Diagnostic::error(
                        "L2004",
                        self.file,
                        it.span,
                        format!("unknown function `{name}`"),
                    )
                    .label("not defined")
                    .help("declare it with `margin fn name(z) { ... }`"),
                );
                ok = false;
                continue;
            };
            if !entry.def.margin || entry.def.params.len() != 1 {
                self.err(
                    Diagnostic::error("L3041", self.file, it.span, format!("`{name}` is not a margin loss"))
                        .label("not a `margin fn` of one argument")
                        .related(entry.def.name.span, "defined here")
                        .help(format!("declare it as `margin fn {name}(z) {{ ... }}`: a scalar function of the margin z = y·f(x)")),
                );
                ok = false;
                continue;
            }
            let out = self.inline(&entry, vec![Val::T(zh)], it.span);
            if matches!(out, Val::Poison) {
                ok = false;
                continue;
            }
            let oh = self.materialize(&out, Some(DType::F32), it.span);
            let cv = curvature(&self.g, oh, zh);
            if !matches!(cv, Curv::Convex | Curv::Affine | Curv::Const) {
                self.err(
                    Diagnostic::error("L4201", self.file, it.span, format!("ensemble member `{name}` is not provably convex"))
                        .label(format!("curvature: {}", format!("{cv:?}").to_lowercase()))
                        .related(entry.def.name.span, "defined here")
                        .help("a member must be convex in z by the DCP rules: affine expressions of z under convex increasing atoms (exp, softplus, relu, maximum, x ** p with p >= 1 of a non-negative convex value); sigmoid and tanh are neither convex nor concave"),
                );
                ok = false;
                continue;
            }
            match self.slope_at_zero(&entry) {
                Ok(d) if d < 0.0 => {}
                Ok(d) => {
                    self.err(
                        Diagnostic::error("L4202", self.file, it.span, format!("ensemble member `{name}` is not classification-calibrated: φ′(0) = {d}"))
                            .label("needs φ′(0) < 0")
                            .related(entry.def.name.span, "defined here")
                            .help("a convex margin loss is calibrated iff it decreases at 0, e.g. softplus(-z), exp(-z), relu(1 - z) ** 2"),
                    );
                    ok = false;
                    continue;
                }
                Err(why) => {
                    self.err(
                        Diagnostic::error(
                            "L4202",
                            self.file,
                            it.span,
                            format!("cannot compute φ′(0) of `{name}`: {why}"),
                        )
                        .label("not a scalar margin function")
                        .related(entry.def.name.span, "defined here")
                        .help("a margin fn maps the scalar margin z to a scalar loss"),
                    );
                    ok = false;
                    continue;
                }
            }
            outs.push((oh, it.span));
        }
        if !ok {
            return None;
        }
        let k = outs.len() as i64;
        let wh = match weights {
            None => self
                .g
                .fill(Scalar::F(1.0 / k as f64), DType::F32, vec![Dim::lit(k)], sp),
            Some(we) => {
                let wv = self.expr(we);
                if let Val::List(ws) = &wv {
                    let mut hs = vec![];
                    for (v, s) in ws {
                        let h = self.materialize(v, Some(DType::F32), *s);
                        let h = self.g.cast(h, DType::F32, *s);
                        hs.push(self.g.reshape(h, vec![Dim::lit(1)], *s));
                    }
                    match self.push_op(Op::Concat(0), hs, we.span) {
                        Val::T(h) => h,
                        _ => return None,
                    }
                } else {
                    if !self.want_value(&wv, we.span) {
                        return None;
                    }
                    let h = self.materialize(&wv, Some(DType::F32), we.span);
                    self.g.cast(h, DType::F32, we.span)
                }
            }
        };
        let wt = self.g.ty(wh).clone();
        if wt.shape != vec![Dim::lit(k)] {
            self.err(
                Diagnostic::error(
                    "L3001",
                    self.file,
                    weights.map_or(sp, |w| w.span),
                    format!("{k} members need {k} weights, got {wt}"),
                )
                .label(format!("{wt}"))
                .help(format!(
                    "give a vector of {k} non-negative weights, e.g. dirichlet({k}, seed, step)"
                )),
            );
            return None;
        }
        // Params can change at run time: the proof may not rely on their defaults.
        let mut memo: HashMap<Handle, crate::sema::range::Range> = (0..self.g.len())
            .map(|i| Handle(i as u32))
            .filter(|h| matches!(self.g.node(*h).op, Op::Param(_)))
            .map(|h| (h, crate::sema::range::Range::UNKNOWN))
            .collect();
        if !range(&self.g, wh, &mut memo).nonneg() {
            self.err(
                Diagnostic::error("L4203", self.file, weights.map_or(sp, |w| w.span), "ensemble weights must be provably non-negative")
                    .label("may be negative")
                    .help("a negative weight can break convexity and calibration; use dirichlet(K, seed, step), softmax(...), or non-negative constants"),
            );
            return None;
        }
        let mut acc: Option<Handle> = None;
        for (i, (oh, s)) in outs.into_iter().enumerate() {
            let wi = self.g.mk(
                Op::Slice {
                    axis: 0,
                    start: Dim::lit(i as i64),
                    len: Dim::lit(1),
                    step: 1,
                },
                vec![wh],
                s,
            );
            let wi = self.g.reshape(wi, vec![], s);
            let oh = self.g.cast(oh, DType::F32, s);
            let term = self.g.mul(wi, oh, s);
            acc = Some(match acc {
                None => term,
                Some(a) => self.g.add(a, term, s),
            });
        }
        acc.map(Val::T)
    }
}
