//! Built-in functions. Primitives map to one op; composites (`mean`,
//! `softmax`, `logsumexp`, `normalize`, `sort`, `quantile`, …) are expanded
//! here into primitives, so they need no gradient rule or backend kernel of
//! their own.

use super::Val;
use super::expr::{as_dim, as_f64};
use super::scope::Checker;
use crate::diag::Diagnostic;
use crate::dim::Dim;
use crate::ir::{Graph, Handle};
use crate::ops::{BinaryOp, Op, RandKind, ReduceKind, Scalar, UnaryOp};
use crate::value::DType;
use losslang_grammar::Span;
use losslang_grammar::ast::{Arg, Expr, ExprKind};

/// Every builtin name (for "did you mean" and the docs).
pub const BUILTINS: &[&str] = &[
    "exp",
    "log",
    "log1p",
    "expm1",
    "sqrt",
    "rsqrt",
    "abs",
    "sign",
    "floor",
    "round",
    "tanh",
    "sigmoid",
    "log_sigmoid",
    "softplus",
    "relu",
    "sin",
    "cos",
    "atanh",
    "artanh",
    "asinh",
    "isfinite",
    "minimum",
    "maximum",
    "pow",
    "clamp",
    "clip",
    "where",
    "floordiv",
    "safe_div",
    "cast",
    "f32",
    "f64",
    "i64",
    "bool",
    "stop_grad",
    "straight_through",
    "sum",
    "mean",
    "max",
    "min",
    "logsumexp",
    "var",
    "std",
    "norm",
    "argmax",
    "argmin",
    "any",
    "all",
    "count",
    "softmax",
    "log_softmax",
    "normalize",
    "take",
    "take_along_axis",
    "one_hot",
    "diag",
    "eye",
    "arange",
    "zeros",
    "ones",
    "tril",
    "triu",
    "transpose",
    "concat",
    "stack",
    "reverse",
    "sort",
    "argsort",
    "cumsum",
    "logcumsumexp",
    "quantile",
    "topk",
    "rand_normal",
    "rand_uniform",
    "dirichlet",
    "ensemble",
    "searchsorted",
    "scatter",
];

fn unary_of(name: &str) -> Option<UnaryOp> {
    Some(match name {
        "exp" => UnaryOp::Exp,
        "log" => UnaryOp::Log,
        "log1p" => UnaryOp::Log1p,
        "expm1" => UnaryOp::Expm1,
        "sqrt" => UnaryOp::Sqrt,
        "rsqrt" => UnaryOp::Rsqrt,
        "abs" => UnaryOp::Abs,
        "sign" => UnaryOp::Sign,
        "floor" => UnaryOp::Floor,
        "round" => UnaryOp::Round,
        "tanh" => UnaryOp::Tanh,
        "sigmoid" => UnaryOp::Sigmoid,
        "log_sigmoid" => UnaryOp::LogSigmoid,
        "softplus" => UnaryOp::Softplus,
        "relu" => UnaryOp::Relu,
        "sin" => UnaryOp::Sin,
        "cos" => UnaryOp::Cos,
        "atanh" | "artanh" => UnaryOp::Atanh,
        "asinh" => UnaryOp::Asinh,
        "isfinite" => UnaryOp::IsFinite,
        _ => return None,
    })
}

/// The keyword/positional signature of each builtin (for argument binding).
fn signature(name: &str) -> Option<&'static [&'static str]> {
    Some(match name {
        n if unary_of(n).is_some() => &["x"],
        "minimum" | "maximum" | "pow" | "floordiv" => &["a", "b"],
        "safe_div" => &["a", "n"],
        "clamp" | "clip" => &["x", "lo", "hi"],
        "where" => &["cond", "a", "b"],
        "cast" => &["x", "dtype"],
        "f32" | "f64" | "i64" | "bool" | "stop_grad" => &["x"],
        "straight_through" => &["hard", "soft"],
        "sum" | "mean" | "any" | "all" | "count" => &["x", "axis", "keepdims"],
        "max" | "min" => &["x", "axis", "keepdims"],
        "logsumexp" => &["x", "axis", "keepdims", "weights"],
        "var" | "std" => &["x", "axis", "keepdims", "ddof"],
        "norm" => &["x", "axis", "keepdims"],
        "argmax" | "argmin" => &["x", "axis", "keepdims"],
        "softmax" | "log_softmax" => &["x", "axis"],
        "normalize" => &["x", "axis", "eps"],
        "take" => &["x", "idx", "axis"],
        "take_along_axis" => &["x", "idx", "axis"],
        "one_hot" => &["idx", "num_classes"],
        "diag" => &["x"],
        "eye" => &["n"],
        "arange" => &["n"],
        "zeros" | "ones" => &["d0", "d1", "d2", "d3", "d4", "d5"],
        "tril" | "triu" => &["x", "k"],
        "transpose" => &["x", "axes"],
        "concat" | "stack" => &["values", "axis"],
        "reverse" => &["x", "axis"],
        "sort" => &["x", "axis", "descending"],
        "argsort" => &["x", "axis", "descending", "stable"],
        "cumsum" | "logcumsumexp" => &["x", "axis", "reverse"],
        "quantile" => &["x", "q", "axis", "keepdims"],
        "topk" => &["x", "k", "axis"],
        "rand_normal" | "rand_uniform" => &["seed", "step", "d0", "d1", "d2", "d3"],
        "dirichlet" => &["k", "seed", "step"],
        "scatter" => &["base", "idx", "values", "axis"],
        "searchsorted" => &["sorted", "values", "right"],
        "ensemble" => &["z", "members", "weights"],
        _ => return None,
    })
}

/// Arguments bound to a builtin's parameter slots.
struct Bound<'a> {
    slots: Vec<Option<&'a Arg>>,
}

impl<'a> Bound<'a> {
    fn get(&self, i: usize) -> Option<&'a Expr> {
        self.slots.get(i).copied().flatten().map(|a| &a.value)
    }
}

impl Checker<'_> {
    pub fn call_builtin(
        &mut self,
        name: &str,
        fspan: Span,
        args: &[Arg],
        span: Span,
    ) -> Option<Val> {
        let sig = signature(name)?;
        let Some(b) = self.bind_args(name, fspan, args, sig) else {
            return Some(Val::Poison);
        };
        Some(self.builtin(name, &b, fspan, span).unwrap_or(Val::Poison))
    }

    fn bind_args<'a>(
        &mut self,
        name: &str,
        fspan: Span,
        args: &'a [Arg],
        sig: &[&str],
    ) -> Option<Bound<'a>> {
        let mut slots: Vec<Option<&Arg>> = vec![None; sig.len()];
        let mut positional_done = false;
        for (k, a) in args.iter().enumerate() {
            let slot = match &a.name {
                None => {
                    if positional_done {
                        self.err(
                            Diagnostic::error(
                                "L2003",
                                self.file,
                                a.span,
                                "a positional argument after a keyword argument",
                            )
                            .label("positional")
                            .help("put positional arguments first"),
                        );
                        return None;
                    }
                    k
                }
                Some(n) => {
                    positional_done = true;
                    match sig.iter().position(|s| *s == n.name) {
                        Some(i) => i,
                        None => {
                            let hint = match (name, n.name.as_str()) {
                                (_, "dim") => " (the language says `axis`)".to_string(),
                                (_, other) => match super::expr::closest(
                                    other,
                                    &sig.iter().map(|s| s.to_string()).collect::<Vec<_>>(),
                                ) {
                                    Some(c) => format!(" (did you mean `{c}`?)"),
                                    None => String::new(),
                                },
                            };
                            self.err(
                                Diagnostic::error(
                                    "L2003",
                                    self.file,
                                    n.span,
                                    format!("`{name}` has no argument `{}`{hint}", n.name),
                                )
                                .label("unknown keyword")
                                .help(format!("`{name}` takes: {}", sig.join(", "))),
                            );
                            return None;
                        }
                    }
                }
            };
            if slot >= sig.len() {
                self.err(
                    Diagnostic::error(
                        "L3020",
                        self.file,
                        a.span,
                        format!("`{name}` takes at most {} arguments", sig.len()),
                    )
                    .label("extra argument")
                    .help(format!("`{name}` takes: {}", sig.join(", "))),
                );
                return None;
            }
            if slots[slot].is_some() {
                self.err(
                    Diagnostic::error(
                        "L3020",
                        self.file,
                        a.span,
                        format!("argument `{}` of `{name}` is given twice", sig[slot]),
                    )
                    .label("again here")
                    .help("give each argument once"),
                );
                return None;
            }
            slots[slot] = Some(a);
        }
        let _ = fspan;
        Some(Bound { slots })
    }

    fn missing(&mut self, name: &str, what: &str, span: Span) -> Option<Val> {
        self.err(
            Diagnostic::error(
                "L3020",
                self.file,
                span,
                format!("`{name}` needs the argument `{what}`"),
            )
            .label("missing argument")
            .help(format!(
                "`{name}` takes: {}",
                signature(name).unwrap_or(&[]).join(", ")
            )),
        );
        None
    }

    /// Evaluates a required value argument.
    fn arg_val(&mut self, b: &Bound, i: usize, name: &str, span: Span) -> Option<(Val, Span)> {
        let Some(e) = b.get(i) else {
            let w = signature(name).map_or("?", |s| s[i]);
            self.missing(name, w, span);
            return None;
        };
        let v = self.expr(e);
        if !self.want_value(&v, e.span) {
            return None;
        }
        Some((v, e.span))
    }

    /// A tensor argument as a handle; ints and bools become f32 when `float` is set.
    fn arg_tensor(
        &mut self,
        b: &Bound,
        i: usize,
        name: &str,
        span: Span,
        float: bool,
    ) -> Option<Handle> {
        let (v, sp) = self.arg_val(b, i, name, span)?;
        let h = self.materialize(&v, if float { Some(DType::F32) } else { None }, sp);
        if float {
            let d = self.g.ty(h).dtype;
            if d == DType::Bool {
                self.err(
                    Diagnostic::error(
                        "L3003",
                        self.file,
                        sp,
                        format!("`{name}` needs numbers, got bool"),
                    )
                    .label("bool")
                    .help("convert with f32(mask)"),
                );
                return None;
            }
            if !d.is_float() {
                return Some(self.g.cast(h, DType::F32, sp));
            }
        }
        Some(h)
    }

    fn static_int(&mut self, e: &Expr, what: &str) -> Option<i64> {
        match self.expr(e) {
            Val::Int(i) => Some(i),
            Val::Poison => None,
            _ => {
                self.err(
                    Diagnostic::error(
                        "L3016",
                        self.file,
                        e.span,
                        format!("{what} must be an integer literal"),
                    )
                    .label("not a literal integer")
                    .help("write a number such as 1 or -1"),
                );
                None
            }
        }
    }

    fn static_bool(&mut self, b: &Bound, i: usize, default: bool, what: &str) -> Option<bool> {
        let Some(e) = b.get(i) else {
            return Some(default);
        };
        match self.expr(e) {
            Val::Bool(v) => Some(v),
            Val::Poison => None,
            _ => {
                self.err(
                    Diagnostic::error(
                        "L3016",
                        self.file,
                        e.span,
                        format!("`{what}` must be `true` or `false`"),
                    )
                    .label("not a literal bool")
                    .help("write true or false"),
                );
                None
            }
        }
    }

    fn norm_axis(&mut self, a: i64, rank: usize, span: Span, ty: &str) -> Option<usize> {
        let r = rank as i64;
        let k = if a < 0 { a + r } else { a };
        if k < 0 || k >= r {
            self.err(
                Diagnostic::error(
                    "L3005",
                    self.file,
                    span,
                    format!("axis {a} is out of range for {ty}"),
                )
                .label(format!("rank {rank}"))
                .help(if rank == 0 {
                    "a scalar has no axes".to_string()
                } else {
                    format!(
                        "valid axes are {} (or {} from the end)",
                        list_or((0..rank as i64).collect()),
                        list_or((-(rank as i64)..0).collect())
                    )
                }),
            );
            return None;
        }
        Some(k as usize)
    }

    /// `axis=` as a sorted list of axes; all axes when absent.
    fn axes_arg(&mut self, b: &Bound, i: usize, h: Handle) -> Option<Vec<usize>> {
        let ty = self.g.ty(h).clone();
        let Some(e) = b.get(i) else {
            return Some((0..ty.rank()).collect());
        };
        let items: Vec<(i64, Span)> = match &e.kind {
            ExprKind::List(xs) => {
                let mut out = vec![];
                for x in xs {
                    out.push((self.static_int(x, "an axis")?, x.span));
                }
                out
            }
            _ => vec![(self.static_int(e, "`axis`")?, e.span)],
        };
        let mut axes = vec![];
        for (a, sp) in items {
            let k = self.norm_axis(a, ty.rank(), sp, &ty.to_string())?;
            if axes.contains(&k) {
                self.err(
                    Diagnostic::error("L3005", self.file, sp, format!("axis {a} is listed twice"))
                        .label("duplicate axis")
                        .help("list each axis once"),
                );
                return None;
            }
            axes.push(k);
        }
        axes.sort_unstable();
        Some(axes)
    }

    /// A single `axis=` (with a default when absent).
    fn axis_arg(
        &mut self,
        b: &Bound,
        i: usize,
        h: Handle,
        default: Option<i64>,
        name: &str,
        span: Span,
    ) -> Option<usize> {
        let ty = self.g.ty(h).clone();
        let (a, sp) = match (b.get(i), default) {
            (Some(e), _) => (self.static_int(e, "`axis`")?, e.span),
            (None, Some(d)) => (d, span),
            (None, None) => {
                if ty.rank() == 1 {
                    (0, span)
                } else {
                    self.err(
                        Diagnostic::error(
                            "L3020",
                            self.file,
                            span,
                            format!("`{name}` of a {ty} needs `axis=`"),
                        )
                        .label("which axis?")
                        .help("say which axis, e.g. axis=1 for each row of a [N, C] value"),
                    );
                    return None;
                }
            }
        };
        self.norm_axis(a, ty.rank(), sp, &ty.to_string())
    }

    pub fn unary_builtin(&mut self, u: UnaryOp, v: Val, span: Span, asp: Span) -> Val {
        if !self.want_value(&v, asp) {
            return Val::Poison;
        }
        if let (Some(x), false) = (as_f64(&v), matches!(u, UnaryOp::IsFinite))
            && (!matches!(v, Val::Dim(_)) || as_dim(&v).and_then(|d| d.as_const()).is_some())
        {
            return match u {
                UnaryOp::Abs | UnaryOp::Sign | UnaryOp::Neg if matches!(v, Val::Int(_)) => {
                    Val::Int(crate::ops::elementwise::apply_f_unary_int(u, x as i64))
                }
                _ => Val::Float(u.apply(x)),
            };
        }
        let h = self.materialize(&v, Some(DType::F32), asp);
        let d = self.g.ty(h).dtype;
        let h = if d == DType::I64 && !matches!(u, UnaryOp::Abs | UnaryOp::Sign | UnaryOp::Neg) {
            self.g.cast(h, DType::F32, asp)
        } else {
            h
        };
        match u {
            UnaryOp::Log => self.lint_positive(h, asp, "log", false),
            UnaryOp::Sqrt | UnaryOp::Rsqrt => self.lint_nonneg(h, asp, u.name()),
            _ => {}
        }
        self.push_op(Op::Unary(u), vec![h], span)
    }

    /// Stability rewrites of `log(...)`; `None` when nothing applies.
    fn rewrite_log(&mut self, arg: &Expr, span: Span) -> Option<Val> {
        if !self.opts.rewrite {
            return None;
        }
        let not_user = |ck: &Self, n: &str| ck.lookup_fn(n).is_none();
        match &arg.kind {
            ExprKind::Call { func, args } if not_user(self, &func.name) => {
                let (target, note) = match func.name.as_str() {
                    "softmax" => (
                        "log_softmax",
                        "rewrote `log(softmax(x))` to `log_softmax(x)`",
                    ),
                    "sigmoid" => (
                        "log_sigmoid",
                        "rewrote `log(sigmoid(x))` to `log_sigmoid(x)`",
                    ),
                    "sum" => {
                        let inner = args.first().filter(|a| a.name.is_none())?;
                        let ExprKind::Call { func: f2, args: a2 } = &inner.value.kind else {
                            return None;
                        };
                        if f2.name != "exp" || a2.len() != 1 || !not_user(self, "exp") {
                            return None;
                        }
                        self.diags.push(
                            Diagnostic::note("L4602", self.file, span, "rewrote `log(sum(exp(x)))` to `logsumexp(x)`")
                                .label("computed as logsumexp")
                                .help("logsumexp shifts by the maximum so large x cannot overflow; pass --no-rewrite to keep the original"),
                        );
                        let mut new_args = args.to_vec();
                        new_args[0] = a2[0].clone();
                        return self.call_builtin("logsumexp", func.span, &new_args, span);
                    }
                    _ => return None,
                };
                self.diags.push(
                    Diagnostic::note("L4602", self.file, span, note)
                        .label(format!("computed as {target}"))
                        .help("the fused form is finite where the original underflows to log(0); pass --no-rewrite to keep the original"),
                );
                self.call_builtin(target, func.span, args, span)
            }
            ExprKind::Binary {
                op: losslang_grammar::ast::BinOp::Add,
                lhs,
                rhs,
            } => {
                let one = |e: &Expr| {
                    matches!(e.kind, ExprKind::Int(1))
                        || matches!(e.kind, ExprKind::Float(f) if f == 1.0)
                };
                let x = if one(lhs) {
                    rhs
                } else if one(rhs) {
                    lhs
                } else {
                    return None;
                };
                self.diags.push(
                    Diagnostic::note(
                        "L4601",
                        self.file,
                        span,
                        "rewrote `log(1 + x)` to `log1p(x)`",
                    )
                    .label("computed as log1p(x)")
                    .help(
                        "log1p keeps precision for small x; pass --no-rewrite to keep the original",
                    ),
                );
                let v = self.expr(x);
                Some(self.unary_builtin(UnaryOp::Log1p, v, span, x.span))
            }
            _ => None,
        }
    }

    fn builtin(&mut self, name: &str, b: &Bound, fspan: Span, span: Span) -> Option<Val> {
        if let Some(u) = unary_of(name) {
            if u == UnaryOp::Log
                && let Some(e) = b.get(0)
                && let Some(v) = self.rewrite_log(e, span)
            {
                return Some(v);
            }
            let (v, sp) = self.arg_val(b, 0, name, span)?;
            return Some(self.unary_builtin(u, v, span, sp));
        }
        let sp = span;
        match name {
            "minimum" | "maximum" | "pow" | "floordiv" => {
                let bop = match name {
                    "minimum" => BinaryOp::Minimum,
                    "maximum" => BinaryOp::Maximum,
                    "pow" => BinaryOp::Pow,
                    _ => BinaryOp::FloorDiv,
                };
                let (x, sx) = self.arg_val(b, 0, name, sp)?;
                let (y, sy) = self.arg_val(b, 1, name, sp)?;
                Some(self.binary_fn(bop, x, y, sp, sx, sy))
            }
            "max" | "min"
                if b.slots.get(1).copied().flatten().is_some_and(|a| {
                    a.name.is_none() && matches!(a.value.kind, ExprKind::Int(_))
                }) && !matches!(
                    b.get(0).map(|e| &e.kind),
                    Some(ExprKind::Int(_) | ExprKind::Float(_))
                ) =>
            {
                // torch.max(x, 1) and np.max(x, 1) reduce over axis 1; an elementwise reading
                // would silently differ, so the user must say which.
                let Some(ExprKind::Int(k)) = b.get(1).map(|e| &e.kind) else {
                    unreachable!("matched above")
                };
                let other = if name == "max" { "maximum" } else { "minimum" };
                self.err(
                    Diagnostic::error("L3017", self.file, sp, format!("`{name}(x, {k})` is ambiguous: a reduction over axis {k} or an elementwise {other}?"))
                        .label("say which")
                        .help(format!("write {name}(x, axis={k}) for the reduction (PyTorch's and NumPy's meaning), or {other}(x, {k}.0) for the elementwise {other}")),
                );
                None
            }
            "max" | "min"
                if b.slots
                    .get(1)
                    .copied()
                    .flatten()
                    .is_some_and(|a| a.name.is_none()) =>
            {
                // Two positional values: elementwise, like torch.max(a, b).
                let bop = if name == "max" {
                    BinaryOp::Maximum
                } else {
                    BinaryOp::Minimum
                };
                let (x, sx) = self.arg_val(b, 0, name, sp)?;
                let (y, sy) = self.arg_val(b, 1, name, sp)?;
                Some(self.binary_fn(bop, x, y, sp, sx, sy))
            }
            "safe_div" => {
                let (a, sa) = self.arg_val(b, 0, name, sp)?;
                let (n, sn) = self.arg_val(b, 1, name, sp)?;
                let a = self.materialize(&a, Some(DType::F32), sa);
                let n = self.materialize(&n, Some(DType::F32), sn);
                let a = self.float_of(a, sa);
                let n = self.float_of(n, sn);
                let zero = self.g.float_like(0.0, n, sn);
                let one = self.g.float_like(1.0, n, sn);
                let pos = self.push_op(Op::Binary(BinaryOp::Gt), vec![n, zero], sn);
                let Val::T(pos) = pos else { return None };
                let safe = self.g.where_(pos, n, one, sn);
                let Val::T(q) = self.push_op(Op::Binary(BinaryOp::Div), vec![a, safe], sp) else {
                    return None;
                };
                let z = self.g.float_like(0.0, q, sp);
                Some(self.push_op(Op::Where, vec![pos, q, z], sp))
            }
            "clamp" | "clip" => {
                let (x, sx) = self.arg_val(b, 0, name, sp)?;
                let (lo, sl) = self.arg_val(b, 1, name, sp)?;
                let (hi, sh) = self.arg_val(b, 2, name, sp)?;
                let m = self.binary_fn(BinaryOp::Maximum, x, lo, sp, sx, sl);
                Some(self.binary_fn(BinaryOp::Minimum, m, hi, sp, sx, sh))
            }
            "where" => {
                let (c, sc) = self.arg_val(b, 0, name, sp)?;
                let (x, sx) = self.arg_val(b, 1, name, sp)?;
                let (y, sy) = self.arg_val(b, 2, name, sp)?;
                if let Val::Bool(k) = c {
                    return Some(if k { x } else { y });
                }
                let hc = self.materialize(&c, Some(DType::Bool), sc);
                if self.g.ty(hc).dtype != DType::Bool {
                    let t = self.g.ty(hc).clone();
                    self.err(
                        Diagnostic::error(
                            "L3003",
                            self.file,
                            sc,
                            format!("the condition of `where` must be bool, got {t}"),
                        )
                        .label(format!("{t}"))
                        .help("compare to make a mask, e.g. where(x > 0, a, b)"),
                    );
                    return None;
                }
                let d = self.promote_pub(&x, &y, "where", sp)?;
                let hx = self.materialize(&x, Some(d), sx);
                let hy = self.materialize(&y, Some(d), sy);
                let hx = self.g.cast(hx, d, sx);
                let hy = self.g.cast(hy, d, sy);
                Some(self.push_op(Op::Where, vec![hc, hx, hy], sp))
            }
            "cast" => {
                let Some(e) = b.get(1) else {
                    return self.missing(name, "dtype", sp);
                };
                let d = match &e.kind {
                    ExprKind::Name(n) => DType::from_name(n),
                    _ => None,
                };
                let Some(d) = d else {
                    self.err(
                        Diagnostic::error(
                            "L3002",
                            self.file,
                            e.span,
                            "the second argument of `cast` is a dtype",
                        )
                        .label("not a dtype")
                        .help("write cast(x, f32), or f32(x)"),
                    );
                    return None;
                };
                self.cast_to(b, d, sp)
            }
            "f32" => self.cast_to(b, DType::F32, sp),
            "f64" => self.cast_to(b, DType::F64, sp),
            "i64" => self.cast_to(b, DType::I64, sp),
            "bool" => self.cast_to(b, DType::Bool, sp),
            "stop_grad" => {
                let (v, s0) = self.arg_val(b, 0, name, sp)?;
                if !matches!(v, Val::T(_)) {
                    return Some(v);
                }
                let h = self.materialize(&v, None, s0);
                Some(self.push_op(Op::StopGrad, vec![h], sp))
            }
            "straight_through" => {
                // hard in the forward pass, the gradient of soft in the backward pass.
                let (hv, sh) = self.arg_val(b, 0, name, sp)?;
                let (sv, ss) = self.arg_val(b, 1, name, sp)?;
                let h = self.materialize(&hv, Some(DType::F32), sh);
                let s = self.materialize(&sv, Some(DType::F32), ss);
                let h = self.float_of(h, sh);
                let s = self.float_of(s, ss);
                let Val::T(d) = self.push_op(Op::Binary(BinaryOp::Sub), vec![h, s], sp) else {
                    return None;
                };
                let d = self.g.mk(Op::StopGrad, vec![d], sp);
                Some(self.push_op(Op::Binary(BinaryOp::Add), vec![s, d], sp))
            }
            "sum" | "mean" | "count" | "any" | "all" | "max" | "min" | "norm" | "var" | "std" => {
                self.reduction(name, b, sp)
            }
            "logsumexp" => {
                let x = self.arg_tensor(b, 0, name, sp, true)?;
                let axes = self.axes_arg(b, 1, x)?;
                let keep = self.static_bool(b, 2, false, "keepdims")?;
                let w = match b.get(3) {
                    None => None,
                    Some(e) => {
                        let v = self.expr(e);
                        if !self.want_value(&v, e.span) {
                            return None;
                        }
                        let d = self.g.ty(x).dtype;
                        let h = self.materialize(&v, Some(d), e.span);
                        Some(self.g.cast(h, d, e.span))
                    }
                };
                let r = self.logsumexp(x, &axes, keep, w, sp)?;
                Some(Val::T(r))
            }
            "argmax" | "argmin" => {
                let x = self.arg_tensor(b, 0, name, sp, false)?;
                let axis = self.axis_arg(b, 1, x, None, name, sp)?;
                let keep = self.static_bool(b, 2, false, "keepdims")?;
                let op = if name == "argmax" {
                    Op::ArgMax(axis)
                } else {
                    Op::ArgMin(axis)
                };
                let Val::T(h) = self.push_op(op, vec![x], sp) else {
                    return None;
                };
                Some(Val::T(if keep { self.keep_axis(h, axis, sp) } else { h }))
            }
            "softmax" | "log_softmax" => {
                let x = self.arg_tensor(b, 0, name, sp, true)?;
                let axis = self.axis_arg(b, 1, x, None, name, sp)?;
                Some(Val::T(if name == "softmax" {
                    self.softmax(x, axis, sp)
                } else {
                    self.log_softmax(x, axis, sp)
                }))
            }
            "normalize" => {
                let x = self.arg_tensor(b, 0, name, sp, true)?;
                let axis = self.axis_arg(b, 1, x, Some(-1), name, sp)?;
                let eps = match b.get(2) {
                    None => 1e-12,
                    Some(e) => match self.expr(e) {
                        v @ (Val::Int(_) | Val::Float(_)) => as_f64(&v)?,
                        _ => {
                            self.err(
                                Diagnostic::error(
                                    "L3016",
                                    self.file,
                                    e.span,
                                    "`eps` must be a number literal",
                                )
                                .label("not a literal")
                                .help("write e.g. eps=1e-12"),
                            );
                            return None;
                        }
                    },
                };
                Some(Val::T(self.normalize(x, axis, eps, sp)))
            }
            "take" | "take_along_axis" => self.take(name, b, sp),
            "one_hot" => {
                let idx = self.arg_tensor(b, 0, name, sp, false)?;
                let Some(e) = b.get(1) else {
                    return self.missing(name, "num_classes", sp);
                };
                let c = self.static_dim(e, "the number of classes")?;
                if self.g.ty(idx).dtype != DType::I64 {
                    let t = self.g.ty(idx).clone();
                    self.err(
                        Diagnostic::error(
                            "L3009",
                            self.file,
                            sp,
                            format!("`one_hot` needs i64 class ids, got {t}"),
                        )
                        .label(format!("{t}"))
                        .help("convert with i64(x)"),
                    );
                    return None;
                }
                Some(self.push_op(Op::OneHot(c), vec![idx], sp))
            }
            "diag" => {
                let x = self.arg_tensor(b, 0, name, sp, false)?;
                let t = self.g.ty(x).clone();
                if t.rank() != 2 || t.shape[0] != t.shape[1] {
                    self.err(
                        Diagnostic::error(
                            "L3001",
                            self.file,
                            sp,
                            format!("`diag` needs a square matrix, got {t}"),
                        )
                        .label(format!("{t}"))
                        .help("diag(x) reads x[i, i] of an [N, N] matrix"),
                    );
                    return None;
                }
                let n = t.shape[0].clone();
                let io = self.g.mk(Op::Iota(n.clone()), vec![], sp);
                let io = self.g.reshape(io, vec![n.clone(), Dim::lit(1)], sp);
                let r = self.g.mk(Op::TakeAlong(1), vec![x, io], sp);
                Some(Val::T(self.g.reshape(r, vec![n], sp)))
            }
            "eye" => {
                let Some(e) = b.get(0) else {
                    return self.missing(name, "n", sp);
                };
                let n = self.static_dim(e, "the size")?;
                let io = self.g.mk(Op::Iota(n.clone()), vec![], sp);
                let r = self.g.reshape(io, vec![n.clone(), Dim::lit(1)], sp);
                let c = self.g.reshape(io, vec![Dim::lit(1), n], sp);
                let m = self.g.binary(BinaryOp::Eq, r, c, sp);
                Some(Val::T(self.g.cast(m, DType::F32, sp)))
            }
            "arange" => {
                let Some(e) = b.get(0) else {
                    return self.missing(name, "n", sp);
                };
                let n = self.static_dim(e, "the length")?;
                Some(Val::T(self.g.mk(Op::Iota(n), vec![], sp)))
            }
            "zeros" | "ones" => {
                let mut shape = vec![];
                for i in 0..6 {
                    if let Some(e) = b.get(i) {
                        shape.push(self.static_dim(e, "a size")?);
                    }
                }
                let v = if name == "zeros" { 0.0 } else { 1.0 };
                Some(Val::T(self.g.fill(Scalar::F(v), DType::F32, shape, sp)))
            }
            "tril" | "triu" => {
                let x = self.arg_tensor(b, 0, name, sp, false)?;
                let k = match b.get(1) {
                    Some(e) => self.static_int(e, "`k`")?,
                    None => 0,
                };
                let t = self.g.ty(x).clone();
                if t.rank() < 2 {
                    self.err(
                        Diagnostic::error("L3001", self.file, sp, format!("`{name}` needs a matrix, got {t}"))
                            .label(format!("{t}"))
                            .help("it keeps the lower (tril) or upper (triu) triangle of the last two axes"),
                    );
                    return None;
                }
                let (r, c) = (t.shape[t.rank() - 2].clone(), t.shape[t.rank() - 1].clone());
                let ir = self.g.mk(Op::Iota(r.clone()), vec![], sp);
                let ir = self.g.reshape(ir, vec![r, Dim::lit(1)], sp);
                let ic = self.g.mk(Op::Iota(c.clone()), vec![], sp);
                let ic = self.g.reshape(ic, vec![Dim::lit(1), c], sp);
                let kk = self.g.constant(Scalar::I(k), DType::I64, sp);
                let irk = self.g.add(ir, kk, sp);
                // tril keeps j <= i + k, triu keeps j >= i + k.
                let m = if name == "tril" {
                    self.g.binary(BinaryOp::Le, ic, irk, sp)
                } else {
                    self.g.binary(BinaryOp::Ge, ic, irk, sp)
                };
                let z = self.g.zeros_like(x, sp);
                let z = self.g.reshape(z, t.shape.clone(), sp);
                let zs = match t.dtype {
                    DType::Bool => self.g.constant(Scalar::B(false), DType::Bool, sp),
                    DType::I64 => self.g.constant(Scalar::I(0), DType::I64, sp),
                    d => self.g.float(0.0, d, sp),
                };
                let _ = z;
                Some(self.push_op(Op::Where, vec![m, x, zs], sp))
            }
            "transpose" => {
                let x = self.arg_tensor(b, 0, name, sp, false)?;
                let r = self.g.ty(x).rank();
                let perm: Vec<usize> = match b.get(1) {
                    None => (0..r).rev().collect(),
                    Some(e) => {
                        let ExprKind::List(xs) = &e.kind else {
                            self.err(
                                Diagnostic::error(
                                    "L3016",
                                    self.file,
                                    e.span,
                                    "`axes` is a list of axes",
                                )
                                .label("not a list")
                                .help("write e.g. transpose(x, [1, 0, 2])"),
                            );
                            return None;
                        };
                        let mut p = vec![];
                        let t = self.g.ty(x).to_string();
                        for it in xs {
                            let a = self.static_int(it, "an axis")?;
                            p.push(self.norm_axis(a, r, it.span, &t)?);
                        }
                        p
                    }
                };
                Some(self.push_op(Op::Transpose(perm), vec![x], sp))
            }
            "concat" | "stack" => {
                let Some(e) = b.get(0) else {
                    return self.missing(name, "values", sp);
                };
                let ExprKind::List(items) = &e.kind else {
                    self.err(
                        Diagnostic::error(
                            "L3016",
                            self.file,
                            e.span,
                            format!("`{name}` takes a list of values"),
                        )
                        .label("not a list")
                        .help(format!("write {name}([a, b], axis=0)")),
                    );
                    return None;
                };
                if items.is_empty() {
                    self.err(
                        Diagnostic::error(
                            "L3016",
                            self.file,
                            e.span,
                            format!("`{name}` of an empty list"),
                        )
                        .label("empty")
                        .help("give at least one value"),
                    );
                    return None;
                }
                let vals: Vec<(Val, Span)> = items.iter().map(|i| (self.expr(i), i.span)).collect();
                if vals.iter().any(|(v, _)| matches!(v, Val::Poison)) {
                    return None;
                }
                let mut d = None;
                for (v, s) in &vals[1..] {
                    d = Some(self.promote_pub(&vals[0].0, v, name, *s)?);
                }
                let d = match d {
                    Some(d) => d,
                    None => {
                        let h = self.materialize(&vals[0].0, None, vals[0].1);
                        self.g.ty(h).dtype
                    }
                };
                let mut hs = vec![];
                for (v, s) in &vals {
                    let h = self.materialize(v, Some(d), *s);
                    hs.push(self.g.cast(h, d, *s));
                }
                let r0 = self.g.ty(hs[0]).rank();
                let axis = match b.get(1) {
                    None => 0,
                    Some(e) => {
                        let a = self.static_int(e, "`axis`")?;
                        let rr = if name == "stack" { r0 + 1 } else { r0 };
                        let t = self.g.ty(hs[0]).to_string();
                        self.norm_axis(a, rr, e.span, &t)?
                    }
                };
                if name == "stack" {
                    for h in &mut hs {
                        let mut s = self.g.ty(*h).shape.clone();
                        if axis <= s.len() {
                            s.insert(axis, Dim::lit(1));
                        }
                        *h = self.g.reshape(*h, s, sp);
                    }
                }
                Some(self.push_op(Op::Concat(axis), hs, sp))
            }
            "reverse" => {
                let x = self.arg_tensor(b, 0, name, sp, false)?;
                let axis = self.axis_arg(b, 1, x, None, name, sp)?;
                Some(self.push_op(Op::Reverse(axis), vec![x], sp))
            }
            "sort" | "argsort" => {
                let x = self.arg_tensor(b, 0, name, sp, false)?;
                let axis = self.axis_arg(b, 1, x, Some(-1), name, sp)?;
                let descending = self.static_bool(b, 2, false, "descending")?;
                if name == "argsort" {
                    // Always stable: ties keep the lower index first.
                    self.static_bool(b, 3, true, "stable")?;
                }
                let Val::T(idx) = self.push_op(Op::Argsort { axis, descending }, vec![x], sp)
                else {
                    return None;
                };
                if name == "argsort" {
                    return Some(Val::T(idx));
                }
                Some(Val::T(self.g.mk(Op::TakeAlong(axis), vec![x, idx], sp)))
            }
            "cumsum" | "logcumsumexp" => {
                let x = self.arg_tensor(b, 0, name, sp, true)?;
                let axis = self.axis_arg(b, 1, x, None, name, sp)?;
                let reverse = self.static_bool(b, 2, false, "reverse")?;
                if name == "cumsum" {
                    return Some(self.push_op(Op::Cumsum { axis, reverse }, vec![x], sp));
                }
                Some(self.push_op(Op::LogCumSumExp { axis, reverse }, vec![x], sp))
            }
            "quantile" => {
                let x = self.arg_tensor(b, 0, name, sp, true)?;
                let (q, sq) = self.arg_val(b, 1, name, sp)?;
                let axis = self.axis_arg(b, 2, x, None, name, sp)?;
                let keep = self.static_bool(b, 3, false, "keepdims")?;
                let d = self.g.ty(x).dtype;
                let q = self.materialize(&q, Some(d), sq);
                let q = self.g.cast(q, d, sq);
                if !self.g.ty(q).shape.is_empty() {
                    self.err(
                        Diagnostic::error("L3001", self.file, sq, "`q` must be a scalar")
                            .label("not a scalar")
                            .help("call quantile once per level"),
                    );
                    return None;
                }
                Some(Val::T(self.quantile(x, q, axis, keep, sp)))
            }
            "topk" => {
                let x = self.arg_tensor(b, 0, name, sp, false)?;
                let Some(ke) = b.get(1) else {
                    return self.missing(name, "k", sp);
                };
                let k = self.static_dim(ke, "`k`")?;
                let axis = self.axis_arg(b, 2, x, Some(-1), name, sp)?;
                let idx = self.g.mk(
                    Op::Argsort {
                        axis,
                        descending: true,
                    },
                    vec![x],
                    sp,
                );
                let s = self.g.mk(Op::TakeAlong(axis), vec![x, idx], sp);
                Some(self.push_op(
                    Op::Slice {
                        axis,
                        start: Dim::lit(0),
                        len: k,
                        step: 1,
                    },
                    vec![s],
                    sp,
                ))
            }
            "rand_normal" | "rand_uniform" => {
                let seed = self.arg_tensor(b, 0, name, sp, false)?;
                let step = self.arg_tensor(b, 1, name, sp, false)?;
                let mut shape = vec![];
                for i in 2..6 {
                    if let Some(e) = b.get(i) {
                        shape.push(self.static_dim(e, "a size")?);
                    }
                }
                let kind = if name == "rand_normal" {
                    RandKind::Normal
                } else {
                    RandKind::Uniform
                };
                Some(self.push_op(Op::Rand(kind, shape), vec![seed, step], sp))
            }
            "dirichlet" => {
                // Dirichlet(1, …, 1): normalised exponential draws.
                let Some(ke) = b.get(0) else {
                    return self.missing(name, "k", sp);
                };
                let k = self.static_dim(ke, "`k`")?;
                let seed = self.arg_tensor(b, 1, name, sp, false)?;
                let step = self.arg_tensor(b, 2, name, sp, false)?;
                let Val::T(u) =
                    self.push_op(Op::Rand(RandKind::Uniform, vec![k]), vec![seed, step], sp)
                else {
                    return None;
                };
                let u = self.g.neg(u, sp);
                let e = self.g.unary(UnaryOp::Log1p, u, sp);
                let e = self.g.neg(e, sp);
                let s = self.g.sum(e, vec![0], false, sp);
                let w = self.g.div(e, s, sp);
                Some(Val::T(self.g.cast(w, DType::F32, sp)))
            }
            "searchsorted" => {
                let (sv, ss) = self.arg_val(b, 0, name, sp)?;
                let (vv, vs) = self.arg_val(b, 1, name, sp)?;
                let right = self.static_bool(b, 2, false, "right")?;
                let d = self.promote_pub(&sv, &vv, name, sp)?;
                let s = self.materialize(&sv, Some(d), ss);
                let v = self.materialize(&vv, Some(d), vs);
                let s = self.g.cast(s, d, ss);
                let v = self.g.cast(v, d, vs);
                Some(self.push_op(Op::SearchSorted { right }, vec![s, v], sp))
            }
            "ensemble" => self.ensemble(b.get(0), b.get(1), b.get(2), sp),
            "scatter" => {
                let base = self.arg_tensor(b, 0, name, sp, false)?;
                let idx = self.arg_tensor(b, 1, name, sp, false)?;
                let (v, sv) = self.arg_val(b, 2, name, sp)?;
                let axis = self.axis_arg(b, 3, base, Some(0), name, sp)?;
                let d = self.g.ty(base).dtype;
                let v = self.materialize(&v, Some(d), sv);
                let v = self.coerce_dtype(v, d, sv, "the scattered values")?;
                Some(self.push_op(Op::ScatterSet(axis), vec![base, idx, v], sp))
            }
            _ => {
                let _ = fspan;
                None
            }
        }
    }

    pub fn promote_pub(&mut self, a: &Val, b: &Val, op: &str, span: Span) -> Option<DType> {
        // Reuse the operator rules: a dummy comparison of kinds.
        let ha = if let Val::T(h) = a { Some(*h) } else { None };
        let hb = if let Val::T(h) = b { Some(*h) } else { None };
        let da = ha.map(|h| self.g.ty(h).dtype);
        let db = hb.map(|h| self.g.ty(h).dtype);
        let weak = |v: &Val| match v {
            Val::Int(_) | Val::Dim(_) => Some(DType::I64),
            Val::Float(_) => Some(DType::F32),
            Val::Bool(_) => Some(DType::Bool),
            _ => None,
        };
        Some(match (da, db) {
            (Some(x), Some(y)) if x == y => x,
            (Some(x), Some(y)) => {
                if x == DType::Bool || y == DType::Bool {
                    self.err(
                        Diagnostic::error(
                            "L3003",
                            self.file,
                            span,
                            format!("`{op}` cannot mix {x} and {y}"),
                        )
                        .label("bool is not a number")
                        .help("convert the mask with f32(mask)"),
                    );
                    return None;
                }
                if x == DType::F64 || y == DType::F64 {
                    DType::F64
                } else {
                    DType::F32
                }
            }
            (Some(x), None) | (None, Some(x)) => {
                let w = weak(if da.is_some() { b } else { a })?;
                match (x, w) {
                    (x, DType::I64) if x != DType::Bool => x,
                    (DType::I64, DType::F32) => DType::F32,
                    (x, DType::F32) if x.is_float() => x,
                    (DType::Bool, DType::Bool) => DType::Bool,
                    _ => {
                        self.err(
                            Diagnostic::error(
                                "L3003",
                                self.file,
                                span,
                                format!("`{op}` cannot mix {x} and {w}"),
                            )
                            .label("incompatible dtypes")
                            .help("convert explicitly with f32(...) or a comparison"),
                        );
                        return None;
                    }
                }
            }
            (None, None) => {
                let (x, y) = (weak(a)?, weak(b)?);
                if x == y {
                    x
                } else if x == DType::Bool || y == DType::Bool {
                    self.err(
                        Diagnostic::error(
                            "L3003",
                            self.file,
                            span,
                            format!("`{op}` cannot mix bool and numbers"),
                        )
                        .label("incompatible")
                        .help("use numbers in both places"),
                    );
                    return None;
                } else {
                    DType::F32
                }
            }
        })
    }

    fn float_of(&mut self, h: Handle, sp: Span) -> Handle {
        match self.g.ty(h).dtype {
            DType::F32 | DType::F64 => h,
            _ => self.g.cast(h, DType::F32, sp),
        }
    }

    fn cast_to(&mut self, b: &Bound, d: DType, sp: Span) -> Option<Val> {
        let (v, s0) = self.arg_val(b, 0, d.name(), sp)?;
        match (&v, d) {
            (Val::Int(i), DType::F32 | DType::F64) => return Some(Val::Float(*i as f64)),
            (Val::Float(f), DType::I64) => return Some(Val::Int(*f as i64)),
            (Val::Int(_) | Val::Dim(_), DType::I64) => return Some(v),
            (Val::Bool(x), DType::F32 | DType::F64) => {
                return Some(Val::Float(f64::from(u8::from(*x))));
            }
            _ => {}
        }
        let h = self.materialize(&v, None, s0);
        Some(self.push_op(Op::Cast(d), vec![h], sp))
    }

    fn static_dim(&mut self, e: &Expr, what: &str) -> Option<Dim> {
        let v = self.expr(e);
        match as_dim(&v) {
            Some(d) => Some(d),
            None => {
                if let Val::Float(f) = v {
                    self.err(
                        Diagnostic::error(
                            "L3015",
                            self.file,
                            e.span,
                            format!("{what} must be a whole number, got `{f}`"),
                        )
                        .label("not an integer")
                        .help("use an integer literal or a dim such as C"),
                    );
                } else if !matches!(v, Val::Poison) {
                    self.err(
                        Diagnostic::error("L3015", self.file, e.span, format!("{what} must be known before the data is seen"))
                            .label("not a static size")
                            .help("use an integer literal, a dim such as N, or an integer expression of dims"),
                    );
                }
                None
            }
        }
    }

    /// Re-inserts a reduced axis as size 1.
    fn keep_axis(&mut self, h: Handle, axis: usize, sp: Span) -> Handle {
        let mut s = self.g.ty(h).shape.clone();
        s.insert(axis, Dim::lit(1));
        self.g.reshape(h, s, sp)
    }

    /// Product of the sizes of `axes`, as a float scalar of dtype `d`.
    fn count_of(&mut self, h: Handle, axes: &[usize], d: DType, sp: Span) -> Handle {
        let shape = self.g.ty(h).shape.clone();
        let n = axes.iter().fold(Dim::lit(1), |acc, &a| acc.mul(&shape[a]));
        let c = match n.as_const() {
            Some(c) => self.g.constant(Scalar::I(c), DType::I64, sp),
            None => self.g.mk(Op::DimSize(n), vec![], sp),
        };
        self.g.cast(c, d, sp)
    }

    pub fn max_axes(&mut self, x: Handle, axes: &[usize], keepdims: bool, sp: Span) -> Handle {
        self.extreme_axes(x, axes, keepdims, ReduceKind::Max, sp)
    }

    fn extreme_axes(
        &mut self,
        x: Handle,
        axes: &[usize],
        keepdims: bool,
        kind: ReduceKind,
        sp: Span,
    ) -> Handle {
        // One reduction over every axis, so a tie anywhere in the reduced block
        // shares the gradient equally (one axis at a time would halve it per axis).
        let mut axes = axes.to_vec();
        axes.sort_unstable();
        axes.dedup();
        let h = if axes.is_empty() {
            x
        } else {
            self.g.mk(
                Op::Reduce {
                    kind,
                    axes: axes.clone(),
                    keepdims: true,
                },
                vec![x],
                sp,
            )
        };
        if keepdims {
            h
        } else {
            let s: Vec<Dim> = self
                .g
                .ty(h)
                .shape
                .iter()
                .enumerate()
                .filter(|(i, _)| !axes.contains(i))
                .map(|(_, d)| d.clone())
                .collect();
            self.g.reshape(h, s, sp)
        }
    }

    fn reduction(&mut self, name: &str, b: &Bound, sp: Span) -> Option<Val> {
        let is_bool_red = matches!(name, "count" | "any" | "all");
        let x = self.arg_tensor(b, 0, name, sp, false)?;
        let d0 = self.g.ty(x).dtype;
        if is_bool_red && d0 != DType::Bool {
            let t = self.g.ty(x).clone();
            self.err(
                Diagnostic::error(
                    "L3003",
                    self.file,
                    sp,
                    format!("`{name}` counts a bool mask, got {t}"),
                )
                .label(format!("{t}"))
                .help("compare first, e.g. count(x > 0)"),
            );
            return None;
        }
        if !is_bool_red && d0 == DType::Bool {
            self.err(
                Diagnostic::error("L3003", self.file, sp, format!("`{name}` of a bool mask"))
                    .label("bool")
                    .help("use count(mask) for the number of true entries, or f32(mask)"),
            );
            return None;
        }
        let axes = self.axes_arg(b, 1, x)?;
        let keep = self.static_bool(b, 2, false, "keepdims")?;
        let r = match name {
            "sum" => self.g.sum(x, axes, keep, sp),
            "count" | "any" | "all" => {
                let f = self.g.cast(x, DType::F32, sp);
                let c = self.g.sum(f, axes.clone(), keep, sp);
                match name {
                    "count" => c,
                    "any" => {
                        let z = self.g.float(0.0, DType::F32, sp);
                        self.g.binary(BinaryOp::Gt, c, z, sp)
                    }
                    _ => {
                        let n = self.count_of(x, &axes, DType::F32, sp);
                        self.g.binary(BinaryOp::Eq, c, n, sp)
                    }
                }
            }
            "max" | "min" => {
                let kind = if name == "max" {
                    ReduceKind::Max
                } else {
                    ReduceKind::Min
                };
                self.extreme_axes(x, &axes, keep, kind, sp)
            }
            "mean" | "var" | "std" => {
                let x = self.float_of(x, sp);
                let d = self.g.ty(x).dtype;
                let n = self.count_of(x, &axes, d, sp);
                let s = self.g.sum(x, axes.clone(), keep, sp);
                let m = self.g.div(s, n, sp);
                if name == "mean" {
                    m
                } else {
                    let mk = if keep {
                        m
                    } else {
                        self.g.sum(x, axes.clone(), true, sp)
                    };
                    let mk = if keep { mk } else { self.g.div(mk, n, sp) };
                    let c = self.g.sub(x, mk, sp);
                    let c2 = self.g.mul(c, c, sp);
                    let ss = self.g.sum(c2, axes.clone(), keep, sp);
                    let ddof = match b.get(3) {
                        Some(e) => self.static_int(e, "`ddof`")?,
                        None => 0,
                    };
                    let dd = self.g.float(ddof as f64, d, sp);
                    let den = self.g.sub(n, dd, sp);
                    let v = self.g.div(ss, den, sp);
                    if name == "var" {
                        v
                    } else {
                        self.g.unary(UnaryOp::Sqrt, v, sp)
                    }
                }
            }
            "norm" => {
                let x = self.float_of(x, sp);
                self.g.mk(
                    Op::Norm {
                        axes,
                        keepdims: keep,
                    },
                    vec![x],
                    sp,
                )
            }
            _ => unreachable!("listed above"),
        };
        Some(Val::T(r))
    }

    /// log Σ w·exp(x) over `axes`, shifted by the (gradient-free) maximum.
    pub fn logsumexp(
        &mut self,
        x: Handle,
        axes: &[usize],
        keepdims: bool,
        w: Option<Handle>,
        sp: Span,
    ) -> Option<Handle> {
        // Entries of weight 0 take no part: not in the shift (a large one would underflow
        // every weighted term to 0, log 0 = -inf) and never exponentiated (exp overflowing
        // to inf, times 0, is NaN). Both happen to a masked positive at a small temperature.
        let x = match w {
            Some(w) => {
                let zero = self.g.float_like(0.0, w, sp);
                let Val::T(pos) = self.push_op(Op::Binary(BinaryOp::Ne), vec![w, zero], sp) else {
                    return None;
                };
                let ninf = self.g.float_like(f64::NEG_INFINITY, x, sp);
                match self.push_op(Op::Where, vec![pos, x, ninf], sp) {
                    Val::T(h) => h,
                    _ => return None,
                }
            }
            None => x,
        };
        let m = self.max_axes(x, axes, true, sp);
        let m = self.g.mk(Op::StopGrad, vec![m], sp);
        // An all -inf row has max -inf; shift by 0 there so exp stays 0, not NaN.
        let fin = self.g.unary(UnaryOp::IsFinite, m, sp);
        let zero = self.g.float_like(0.0, m, sp);
        let m = self.g.where_(fin, m, zero, sp);
        let s = self.g.sub(x, m, sp);
        let e = self.g.unary(UnaryOp::Exp, s, sp);
        let e = match w {
            Some(w) => match self.push_op(Op::Binary(BinaryOp::Mul), vec![w, e], sp) {
                Val::T(h) => h,
                _ => return None,
            },
            None => e,
        };
        let t = self.g.sum(e, axes.to_vec(), true, sp);
        let l = self.g.unary(UnaryOp::Log, t, sp);
        let r = self.g.add(l, m, sp);
        if keepdims {
            Some(r)
        } else {
            let s: Vec<Dim> = self
                .g
                .ty(r)
                .shape
                .iter()
                .enumerate()
                .filter(|(i, _)| !axes.contains(i))
                .map(|(_, d)| d.clone())
                .collect();
            Some(self.g.reshape(r, s, sp))
        }
    }

    pub fn softmax(&mut self, x: Handle, axis: usize, sp: Span) -> Handle {
        let m = self.max_axes(x, &[axis], true, sp);
        let m = self.g.mk(Op::StopGrad, vec![m], sp);
        let fin = self.g.unary(UnaryOp::IsFinite, m, sp);
        let zero = self.g.float_like(0.0, m, sp);
        let m = self.g.where_(fin, m, zero, sp);
        let s = self.g.sub(x, m, sp);
        let e = self.g.unary(UnaryOp::Exp, s, sp);
        let t = self.g.sum(e, vec![axis], true, sp);
        self.g.div(e, t, sp)
    }

    /// `(x - m) - log Σ exp(x - m)`, never `x - (m + log Σ …)`: the shifted
    /// difference `x - m` is exact near the maximum (Sterbenz), while adding `m`
    /// back first rounds `log Σ` to the spacing of `m` (a loss error of ~1e-3 for
    /// f32 logits shifted by 1e6).
    pub fn log_softmax(&mut self, x: Handle, axis: usize, sp: Span) -> Handle {
        let m = self.max_axes(x, &[axis], true, sp);
        let m = self.g.mk(Op::StopGrad, vec![m], sp);
        // An all -inf row has max -inf; shift by 0 there so exp stays 0, not NaN.
        let fin = self.g.unary(UnaryOp::IsFinite, m, sp);
        let zero = self.g.float_like(0.0, m, sp);
        let m = self.g.where_(fin, m, zero, sp);
        let s = self.g.sub(x, m, sp);
        let e = self.g.unary(UnaryOp::Exp, s, sp);
        let t = self.g.sum(e, vec![axis], true, sp);
        let l = self.g.unary(UnaryOp::Log, t, sp);
        self.g.sub(s, l, sp)
    }

    pub fn normalize(&mut self, x: Handle, axis: usize, eps: f64, sp: Span) -> Handle {
        let n = self.g.mk(
            Op::Norm {
                axes: vec![axis],
                keepdims: true,
            },
            vec![x],
            sp,
        );
        let e = self.g.float_like(eps, x, sp);
        let d = self.g.binary(BinaryOp::Maximum, n, e, sp);
        self.g.div(x, d, sp)
    }

    fn quantile(&mut self, x: Handle, q: Handle, axis: usize, keep: bool, sp: Span) -> Handle {
        // torch.quantile's 'linear': position q·(n−1) between the two neighbouring order statistics.
        let shape = self.g.ty(x).shape.clone();
        let d = self.g.ty(x).dtype;
        let idx = self.g.mk(
            Op::Argsort {
                axis,
                descending: false,
            },
            vec![x],
            sp,
        );
        let sorted = self.g.mk(Op::TakeAlong(axis), vec![x, idx], sp);
        let n = self.count_of(x, &[axis], d, sp);
        let one = self.g.float(1.0, d, sp);
        let zero = self.g.float(0.0, d, sp);
        let nm1 = self.g.sub(n, one, sp);
        let nm1 = self.g.binary(BinaryOp::Maximum, nm1, zero, sp);
        let pos = self.g.mul(q, nm1, sp);
        let pos = self.g.binary(BinaryOp::Maximum, pos, zero, sp);
        let pos = self.g.binary(BinaryOp::Minimum, pos, nm1, sp);
        let lo = self.g.unary(UnaryOp::Floor, pos, sp);
        let hi = self.g.add(lo, one, sp);
        let hi = self.g.binary(BinaryOp::Minimum, hi, nm1, sp);
        let frac = self.g.sub(pos, lo, sp);
        let ks = Graph::keepdims_shape(&shape, &[axis]);
        let loi = self.g.cast(lo, DType::I64, sp);
        let hii = self.g.cast(hi, DType::I64, sp);
        let loi = self.g.broadcast_to(loi, ks.clone(), sp);
        let hii = self.g.broadcast_to(hii, ks.clone(), sp);
        let a = self.g.mk(Op::TakeAlong(axis), vec![sorted, loi], sp);
        let c = self.g.mk(Op::TakeAlong(axis), vec![sorted, hii], sp);
        let diff = self.g.sub(c, a, sp);
        let t = self.g.mul(diff, frac, sp);
        let r = self.g.add(a, t, sp);
        if keep {
            r
        } else {
            let mut s = ks;
            s.remove(axis);
            self.g.reshape(r, s, sp)
        }
    }

    fn take(&mut self, name: &str, b: &Bound, sp: Span) -> Option<Val> {
        let x = self.arg_tensor(b, 0, name, sp, false)?;
        let (iv, si) = self.arg_val(b, 1, name, sp)?;
        let axis = self.axis_arg(b, 2, x, Some(0), name, sp)?;
        let idx = self.materialize(&iv, Some(DType::I64), si);
        let it = self.g.ty(idx).clone();
        if it.dtype != DType::I64 {
            self.err(
                Diagnostic::error(
                    "L3009",
                    self.file,
                    si,
                    format!("indices must be i64, got {it}"),
                )
                .label(format!("{it}"))
                .help("convert with i64(x); mask out invalid labels with where(valid, target, 0)"),
            );
            return None;
        }
        let xt = self.g.ty(x).clone();
        if name == "take_along_axis" {
            return Some(self.push_op(Op::TakeAlong(axis), vec![x, idx], sp));
        }
        let mut without = xt.shape.clone();
        without.remove(axis);
        if it.rank() + 1 == xt.rank() && it.shape == without && xt.rank() > 1 {
            // One index per row: x[i, idx[i]] (the cross-entropy gather).
            let mut s = it.shape.clone();
            s.insert(axis, Dim::lit(1));
            let i2 = self.g.reshape(idx, s, si);
            let Val::T(r) = self.push_op(Op::TakeAlong(axis), vec![x, i2], sp) else {
                return None;
            };
            return Some(Val::T(self.g.reshape(r, it.shape.clone(), sp)));
        }
        Some(self.push_op(Op::IndexSelect(axis), vec![x, idx], sp))
    }

    /// `all(...)` of a bool tensor, as a scalar (for `assert`).
    pub fn reduce_all_bool(&mut self, h: Handle, sp: Span) -> Handle {
        let r = self.g.ty(h).rank();
        if r == 0 {
            return h;
        }
        let f = self.g.cast(h, DType::F32, sp);
        let m = self.extreme_axes(f, &(0..r).collect::<Vec<_>>(), false, ReduceKind::Min, sp);
        let one = self.g.float(1.0, DType::F32, sp);
        self.g.binary(BinaryOp::Eq, m, one, sp)
    }
}

/// "0, 1 or 2" — for help lines that list every valid choice.
pub fn list_or(v: Vec<i64>) -> String {
    match v.len() {
        0 => "none".into(),
        1 => v[0].to_string(),
        n => format!(
            "{} or {}",
            v[..n - 1]
                .iter()
                .map(|x| x.to_string())
                .collect::<Vec<_>>()
                .join(", "),
            v[n - 1]
        ),
    }
}
