//! Expressions: literals and names, operators with dtype promotion, indexing
//! and slicing, `if`, and calls (helpers inlined, builtins in `builtins.rs`).

use super::Val;
use super::scope::Checker;
use crate::diag::Diagnostic;
use crate::dim::Dim;
use crate::ir::Handle;
use crate::ops::{BinaryOp, Op, Scalar, UnaryOp};
use crate::value::DType;
use losslang_grammar::Span;
use losslang_grammar::ast::{BinOp, Expr, ExprKind, IndexItem, UnOp};

/// Most helper bodies inlined while checking one loss (each call inlines its body anew).
const MAX_INLINED_CALLS: usize = 100_000;
/// Helper bodies inlined before the checker stops inlining in a program with errors.
const MAX_INLINED_AFTER_ERROR: usize = 1_000;

/// How strongly a value insists on its dtype when it meets another.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Kind {
    Strong(DType),
    WeakInt,
    WeakFloat,
    WeakBool,
}

impl Checker<'_> {
    pub fn expr(&mut self, e: &Expr) -> Val {
        match &e.kind {
            ExprKind::Int(v) => Val::Int(*v),
            ExprKind::Float(v) => Val::Float(*v),
            ExprKind::Bool(v) => Val::Bool(*v),
            ExprKind::Name(n) => self.name(n, e.span),
            ExprKind::Unary { op, expr } => {
                let v = self.expr(expr);
                self.unary(*op, v, e.span)
            }
            ExprKind::Binary { op, lhs, rhs } => {
                if self.opts.rewrite
                    && let Some(v) = self.rewrite_binary(*op, lhs, rhs, e.span)
                {
                    return v;
                }
                let a = self.expr(lhs);
                let b = self.expr(rhs);
                self.binary(*op, a, b, e.span, lhs.span, rhs.span)
            }
            ExprKind::Call { func, args } => self.call(func, args, e.span),
            ExprKind::Index { base, indices } => {
                let v = self.expr(base);
                self.index(v, indices, e.span, base.span)
            }
            ExprKind::If {
                cond,
                then_block,
                else_block,
            } => {
                let c = self.expr(cond);
                let a = self.check_block(then_block, false);
                let b = self.check_block(else_block, false);
                self.if_expr(c, a, b, cond.span, e.span)
            }
            ExprKind::List(items) => {
                Val::List(items.iter().map(|i| (self.expr(i), i.span)).collect())
            }
        }
    }

    fn name(&mut self, n: &str, span: Span) -> Val {
        if let Some(v) = self.lookup(n) {
            return v;
        }
        if self.dims.contains(n) {
            return Val::Dim(Dim::sym(n));
        }
        match n {
            "inf" => return Val::Float(f64::INFINITY),
            "nan" => return Val::Float(f64::NAN),
            "pi" => return Val::Float(std::f64::consts::PI),
            _ => {}
        }
        if self.lookup_fn(n).is_some() {
            return Val::Fn(n.to_string());
        }
        let mut candidates: Vec<String> =
            self.scopes.iter().flat_map(|s| s.keys().cloned()).collect();
        candidates.extend(self.dims.iter().cloned());
        candidates.extend(self.g.params.iter().map(|p| p.name.clone()));
        let looks_like_dim =
            n.len() <= 2 && n.chars().next().is_some_and(|c| c.is_ascii_uppercase());
        let help = match (closest(n, &candidates), looks_like_dim) {
            (Some(c), true) => format!("no input declares a dim `{n}`; did you mean `{c}`?"),
            (None, true) => format!(
                "no input declares a dim `{n}`: add an input with that dim, or bind a state table's size with --dims {n}=..."
            ),
            (Some(c), false) => format!("did you mean `{c}`?"),
            (None, false) => {
                "declare it with `let`, as an input, a `param` or a `state` before using it"
                    .to_string()
            }
        };
        self.err(
            Diagnostic::error("L2001", self.file, span, format!("unknown name `{n}`"))
                .label("not defined here")
                .help(help),
        );
        Val::Poison
    }

    /// The graph node for a value, with literals given `want`'s dtype (or their natural one).
    pub fn materialize(&mut self, v: &Val, want: Option<DType>, span: Span) -> Handle {
        match v {
            Val::T(h) => *h,
            Val::Int(i) => match want {
                Some(d @ (DType::F32 | DType::F64)) => {
                    self.g.constant(Scalar::F(*i as f64), d, span)
                }
                Some(DType::Bool) => self.g.constant(Scalar::B(*i != 0), DType::Bool, span),
                _ => self.g.constant(Scalar::I(*i), DType::I64, span),
            },
            Val::Float(f) => {
                let d = match want {
                    Some(DType::F64) => DType::F64,
                    _ => DType::F32,
                };
                self.g.constant(Scalar::F(*f), d, span)
            }
            Val::Bool(b) => self.g.constant(Scalar::B(*b), DType::Bool, span),
            Val::Dim(d) => {
                let h = match d.as_const() {
                    Some(c) => self.g.constant(Scalar::I(c), DType::I64, span),
                    None => self.g.mk(Op::DimSize(d.clone()), vec![], span),
                };
                match want {
                    Some(w @ (DType::F32 | DType::F64)) => self.g.cast(h, w, span),
                    _ => h,
                }
            }
            Val::List(_) | Val::Fn(_) | Val::Poison => {
                // Callers reject these first; a constant keeps checking going.
                self.g.constant(Scalar::F(0.0), DType::F32, span)
            }
        }
    }

    fn kind(&self, v: &Val) -> Option<Kind> {
        Some(match v {
            Val::T(h) => Kind::Strong(self.g.ty(*h).dtype),
            Val::Int(_) | Val::Dim(_) => Kind::WeakInt,
            Val::Float(_) => Kind::WeakFloat,
            Val::Bool(_) => Kind::WeakBool,
            Val::List(_) | Val::Fn(_) | Val::Poison => return None,
        })
    }

    /// Requires a tensor-like value; reports lists and functions used as numbers.
    pub fn want_value(&mut self, v: &Val, span: Span) -> bool {
        match v {
            Val::Poison => false,
            Val::List(_) => {
                self.err(
                    Diagnostic::error("L3004", self.file, span, "a list is not a value here")
                        .label("a list")
                        .help("lists are arguments of `concat`, `stack` and `ensemble`; combine the items into one tensor with `stack([...])`"),
                );
                false
            }
            Val::Fn(n) => {
                self.err(
                    Diagnostic::error(
                        "L3004",
                        self.file,
                        span,
                        format!("`{n}` is a function, not a value"),
                    )
                    .label("a function")
                    .help(format!("call it: `{n}(...)`")),
                );
                false
            }
            _ => true,
        }
    }

    /// The common dtype of two operands, or a diagnostic.
    fn promote(&mut self, a: &Val, b: &Val, op: &str, span: Span) -> Option<DType> {
        use Kind::*;
        let (ka, kb) = (self.kind(a)?, self.kind(b)?);
        let bool_mix = |d: DType| {
            Diagnostic::error(
                "L3003",
                self.file,
                span,
                format!("`{op}` cannot mix bool and {d}"),
            )
            .label("bool is not a number")
            .help("convert the mask with f32(mask), or count it with count(mask)")
        };
        let r = match (ka, kb) {
            (Strong(x), Strong(y)) if x == y => x,
            (Strong(DType::Bool), Strong(y)) | (Strong(y), Strong(DType::Bool)) => {
                let d = bool_mix(y);
                self.err(d);
                return None;
            }
            (Strong(x), Strong(y)) => {
                if x == DType::F64 || y == DType::F64 {
                    DType::F64
                } else {
                    DType::F32
                }
            }
            (Strong(DType::Bool), WeakBool)
            | (WeakBool, Strong(DType::Bool))
            | (WeakBool, WeakBool) => DType::Bool,
            (Strong(DType::Bool), _) | (_, Strong(DType::Bool)) => {
                let d = bool_mix(DType::F32);
                self.err(d);
                return None;
            }
            (WeakBool, _) | (_, WeakBool) => {
                let d = bool_mix(DType::F32);
                self.err(d);
                return None;
            }
            (Strong(x), WeakInt) | (WeakInt, Strong(x)) => x,
            (Strong(DType::I64), WeakFloat) | (WeakFloat, Strong(DType::I64)) => DType::F32,
            (Strong(x), WeakFloat) | (WeakFloat, Strong(x)) => x,
            (WeakInt, WeakInt) => DType::I64,
            (WeakFloat, _) | (_, WeakFloat) => DType::F32,
        };
        Some(r)
    }

    pub fn unary(&mut self, op: UnOp, v: Val, span: Span) -> Val {
        if !self.want_value(&v, span) {
            return Val::Poison;
        }
        match (op, v) {
            (UnOp::Neg, Val::Int(i)) => Val::Int(i.wrapping_neg()),
            (UnOp::Neg, Val::Float(f)) => Val::Float(-f),
            (UnOp::Neg, Val::Dim(d)) => Val::Dim(d.scale(-1)),
            (UnOp::Not, Val::Bool(b)) => Val::Bool(!b),
            (op, v) => {
                let h = self.materialize(&v, None, span);
                let u = match op {
                    UnOp::Neg => UnaryOp::Neg,
                    UnOp::Not => UnaryOp::Not,
                };
                self.push_op(Op::Unary(u), vec![h], span)
            }
        }
    }

    /// Pushes a node; a failed type rule becomes a diagnostic.
    pub fn push_op(&mut self, op: Op, args: Vec<Handle>, span: Span) -> Val {
        let name = op.surface();
        let op_kind = op.clone();
        match self.g.push(op, args.clone(), span) {
            Ok(h) => Val::T(h),
            Err(msg) => {
                let tys: Vec<String> = args.iter().map(|a| self.g.ty(*a).to_string()).collect();
                let code =
                    if msg.contains("broadcast") || msg.contains("dims") || msg.contains("shape") {
                        "L3001"
                    } else if msg.contains("axis") {
                        "L3005"
                    } else {
                        "L3003"
                    };
                let help = match (&op_kind, code) {
                    (Op::MatMul, _) => "the inner dims of `a @ b` must match; did you mean `a @ transpose(b)`?".to_string(),
                    (Op::Concat(a), _) => format!("values must agree on every axis except the concatenation axis ({a})"),
                    (_, "L3001") => "shapes broadcast like NumPy: a dim meets the same dim or 1; insert axes with x[:, None], or reduce first".to_string(),
                    (_, "L3005") => "axes count from 0; -1 is the last axis".to_string(),
                    _ => "convert explicitly with f32(...), i64(...) or a comparison".to_string(),
                };
                self.err(
                    Diagnostic::error(code, self.file, span, msg.to_string())
                        .label(format!("`{name}` of {}", tys.join(" and ")))
                        .help(help),
                );
                Val::Poison
            }
        }
    }

    pub fn binary(&mut self, op: BinOp, a: Val, b: Val, span: Span, sa: Span, sb: Span) -> Val {
        if !self.want_value(&a, sa) | !self.want_value(&b, sb) {
            return Val::Poison;
        }
        if let Some(v) = fold_binary(op, &a, &b) {
            return v;
        }
        if op == BinOp::MatMul {
            let ha = self.materialize(&a, Some(DType::F32), sa);
            let hb = self.materialize(&b, Some(DType::F32), sb);
            return self.push_op(Op::MatMul, vec![ha, hb], span);
        }
        let Some(mut d) = self.promote(&a, &b, op.symbol(), span) else {
            return Val::Poison;
        };
        let bop = match op {
            BinOp::Add => BinaryOp::Add,
            BinOp::Sub => BinaryOp::Sub,
            BinOp::Mul => BinaryOp::Mul,
            BinOp::Div => BinaryOp::Div,
            BinOp::FloorDiv => BinaryOp::FloorDiv,
            BinOp::Pow => BinaryOp::Pow,
            BinOp::Lt => BinaryOp::Lt,
            BinOp::Le => BinaryOp::Le,
            BinOp::Gt => BinaryOp::Gt,
            BinOp::Ge => BinaryOp::Ge,
            BinOp::Eq => BinaryOp::Eq,
            BinOp::Ne => BinaryOp::Ne,
            BinOp::And => BinaryOp::And,
            BinOp::Or => BinaryOp::Or,
            BinOp::MatMul => unreachable!("handled above"),
        };
        if bop.is_logical() && d != DType::Bool {
            self.err(
                Diagnostic::error(
                    "L3003",
                    self.file,
                    span,
                    format!("`{}` combines bool values, got {d}", op.symbol()),
                )
                .label("not bool")
                .help("compare first, e.g. `(x > 0) & mask`"),
            );
            return Val::Poison;
        }
        if matches!(bop, BinaryOp::Div | BinaryOp::Pow) && d == DType::I64 {
            // `/` is true division, as in NumPy and PyTorch.
            d = DType::F32;
        }
        let ha = self.materialize(&a, Some(d), sa);
        let hb = self.materialize(&b, Some(d), sb);
        let ha = self.g.cast(ha, d, sa);
        let hb = self.g.cast(hb, d, sb);
        if bop == BinaryOp::Div {
            self.lint_positive(hb, sb, "/", true);
        }
        self.push_op(Op::Binary(bop), vec![ha, hb], span)
    }

    /// Elementwise binary op by name (builtins `maximum`, `pow`, …), with promotion.
    pub fn binary_fn(
        &mut self,
        bop: BinaryOp,
        a: Val,
        b: Val,
        span: Span,
        sa: Span,
        sb: Span,
    ) -> Val {
        if !self.want_value(&a, sa) | !self.want_value(&b, sb) {
            return Val::Poison;
        }
        match (bop, &a, &b) {
            (BinaryOp::Maximum, Val::Int(x), Val::Int(y)) => return Val::Int(*x.max(y)),
            (BinaryOp::Minimum, Val::Int(x), Val::Int(y)) => return Val::Int(*x.min(y)),
            (
                BinaryOp::Maximum | BinaryOp::Minimum,
                Val::Dim(_) | Val::Int(_),
                Val::Dim(_) | Val::Int(_),
            ) => {
                let (x, y) = (as_dim(&a).expect("dim"), as_dim(&b).expect("dim"));
                return Val::Dim(if bop == BinaryOp::Maximum {
                    x.dmax(&y)
                } else {
                    x.dmin(&y)
                });
            }
            (BinaryOp::FloorDiv, Val::Dim(_) | Val::Int(_), Val::Int(k)) if *k > 0 => {
                return Val::Dim(as_dim(&a).expect("dim").floordiv(*k));
            }
            _ => {}
        }
        if let (Some(x), Some(y)) = (as_f64(&a), as_f64(&b))
            && (matches!(a, Val::Float(_)) || matches!(b, Val::Float(_)) || bop == BinaryOp::Pow)
        {
            return Val::Float(crate::ops::elementwise::apply_f(bop, x, y));
        }
        let Some(mut d) = self.promote(&a, &b, bop.name(), span) else {
            return Val::Poison;
        };
        if bop == BinaryOp::Pow && d == DType::I64 {
            d = DType::F32;
        }
        let ha = self.materialize(&a, Some(d), sa);
        let hb = self.materialize(&b, Some(d), sb);
        let ha = self.g.cast(ha, d, sa);
        let hb = self.g.cast(hb, d, sb);
        self.push_op(Op::Binary(bop), vec![ha, hb], span)
    }

    fn if_expr(&mut self, c: Val, a: Val, b: Val, cspan: Span, span: Span) -> Val {
        if !self.want_value(&c, cspan) | !self.want_value(&a, span) | !self.want_value(&b, span) {
            return Val::Poison;
        }
        if let Val::Bool(k) = c {
            return if k { a } else { b };
        }
        let hc = self.materialize(&c, None, cspan);
        let ct = self.g.ty(hc).clone();
        if ct.dtype != DType::Bool || !ct.shape.is_empty() {
            self.err(
                Diagnostic::error(
                    "L3006",
                    self.file,
                    cspan,
                    format!("the condition of `if` must be a bool scalar, got {ct}"),
                )
                .label(format!("{ct}"))
                .help("for an elementwise choice use where(cond, a, b)"),
            );
            return Val::Poison;
        }
        let Some(d) = self.promote(&a, &b, "if", span) else {
            return Val::Poison;
        };
        let ha = self.materialize(&a, Some(d), span);
        let hb = self.materialize(&b, Some(d), span);
        let ha = self.g.cast(ha, d, span);
        let hb = self.g.cast(hb, d, span);
        let (sa, sb) = (self.g.ty(ha).shape.clone(), self.g.ty(hb).shape.clone());
        // The branches broadcast against each other (LANGUAGE.md, second round): the
        // result has the broadcast shape.
        if sa != sb && crate::ops::broadcast_shapes(&sa, &sb).is_err() {
            self.err(
                Diagnostic::error(
                    "L3007",
                    self.file,
                    span,
                    format!(
                        "the branches of `if` have different types: {} (then) and {} (else)",
                        crate::ir::Ty::new(d, sa.clone()),
                        crate::ir::Ty::new(d, sb.clone())
                    ),
                )
                .label("branches differ")
                .help("the branches must give shapes that broadcast against each other: reduce or reshape one of them"),
            );
            return Val::Poison;
        }
        self.push_op(Op::Where, vec![hc, ha, hb], span)
    }

    /// `x[...]`: static positions and slices, `None` for new axes, and gathers by i64 tensors.
    fn index(&mut self, v: Val, items: &[IndexItem], span: Span, bspan: Span) -> Val {
        if !self.want_value(&v, bspan) {
            return Val::Poison;
        }
        let mut h = self.materialize(&v, None, bspan);
        let rank = self.g.ty(h).rank();
        let consumed = items
            .iter()
            .filter(|i| !matches!(i, IndexItem::NewAxis(_)))
            .count();
        if consumed > rank {
            let t = self.g.ty(h).clone();
            self.err(
                Diagnostic::error(
                    "L3005",
                    self.file,
                    span,
                    format!("{consumed} indices for a value of rank {rank} ({t})"),
                )
                .label("too many indices")
                .help("index at most one position per axis; `None` inserts a new axis"),
            );
            return Val::Poison;
        }
        // Walk the items, tracking which axis of the current value each refers to.
        let mut axis = 0usize;
        for it in items {
            match it {
                IndexItem::NewAxis(sp) => {
                    let mut s = self.g.ty(h).shape.clone();
                    s.insert(axis, Dim::lit(1));
                    h = self.g.reshape(h, s, *sp);
                    axis += 1;
                }
                IndexItem::Slice {
                    start,
                    end,
                    step,
                    span: sp,
                } => {
                    let full = self.g.ty(h).shape[axis].clone();
                    let Some(r) =
                        self.slice_bounds(start.as_ref(), end.as_ref(), step.as_ref(), &full, *sp)
                    else {
                        return Val::Poison;
                    };
                    if let Some((st, len, stp)) = r {
                        h = self.g.mk(
                            Op::Slice {
                                axis,
                                start: st,
                                len,
                                step: stp,
                            },
                            vec![h],
                            *sp,
                        );
                    }
                    axis += 1;
                }
                IndexItem::Index(e) => {
                    let iv = self.expr(e);
                    match iv {
                        Val::Poison => return Val::Poison,
                        Val::Int(_) | Val::Dim(_) => {
                            let full = self.g.ty(h).shape[axis].clone();
                            let k = as_dim(&iv).expect("static");
                            let k = if k.as_const().is_some_and(|c| c < 0) {
                                full.add(&k)
                            } else {
                                k
                            };
                            if let (Some(kc), Some(fc)) = (k.as_const(), full.as_const())
                                && (kc < 0 || kc >= fc)
                            {
                                self.err(
                                    Diagnostic::error(
                                        "L3008",
                                        self.file,
                                        e.span,
                                        format!(
                                            "position {kc} is out of range for an axis of size {fc}"
                                        ),
                                    )
                                    .label("out of range")
                                    .help(format!(
                                        "valid positions are 0 to {} (or -{fc} to -1 from the end)",
                                        fc - 1
                                    )),
                                );
                                return Val::Poison;
                            }
                            h = self.g.mk(
                                Op::Slice {
                                    axis,
                                    start: k,
                                    len: Dim::lit(1),
                                    step: 1,
                                },
                                vec![h],
                                e.span,
                            );
                            let mut s = self.g.ty(h).shape.clone();
                            s.remove(axis);
                            h = self.g.reshape(h, s, e.span);
                        }
                        Val::T(ih) => {
                            let it = self.g.ty(ih).clone();
                            if it.dtype != DType::I64 {
                                self.err(
                                    Diagnostic::error("L3009", self.file, e.span, format!("an index tensor must be i64, got {it}"))
                                        .label(format!("{it}"))
                                        .help("use i64(x) for computed positions, or where(mask, x, 0) to mask values"),
                                );
                                return Val::Poison;
                            }
                            let r = it.rank();
                            match self.push_op(Op::IndexSelect(axis), vec![h, ih], span) {
                                Val::T(nh) => h = nh,
                                other => return other,
                            }
                            axis += r;
                        }
                        _ => {
                            self.want_value(&iv, e.span);
                            self.err(
                                Diagnostic::error("L3009", self.file, e.span, "an index must be an integer or an i64 tensor")
                                    .label("not an index")
                                    .help("write a position (`x[:, 0]`), a slice (`x[1:]`) or an i64 tensor of positions"),
                            );
                            return Val::Poison;
                        }
                    }
                }
            }
        }
        Val::T(h)
    }

    /// Resolves `start:end:step` against an axis of size `full`. `Ok(None)` = the whole axis.
    #[allow(clippy::type_complexity)]
    fn slice_bounds(
        &mut self,
        start: Option<&Expr>,
        end: Option<&Expr>,
        step: Option<&Expr>,
        full: &Dim,
        span: Span,
    ) -> Option<Option<(Dim, Dim, i64)>> {
        let stat = |ck: &mut Self, e: Option<&Expr>| -> Option<Option<Dim>> {
            let Some(e) = e else { return Some(None) };
            let v = ck.expr(e);
            match as_dim(&v) {
                Some(d) => Some(Some(d)),
                None => {
                    if !matches!(v, Val::Poison) {
                        ck.err(
                            Diagnostic::error("L3015", ck.file, e.span, "slice bounds must be known before the data is seen")
                                .label("not a static integer")
                                .help("use integer literals, dims (N, C) or integer expressions of them; for data-dependent selection use take(...) or where(...)"),
                        );
                    }
                    None
                }
            }
        };
        let s = stat(self, start)?;
        let e = stat(self, end)?;
        let st = match step {
            None => 1,
            Some(x) => match self.expr(x) {
                Val::Int(k) if k != 0 => k,
                _ => {
                    self.err(
                        Diagnostic::error(
                            "L3015",
                            self.file,
                            x.span,
                            "a slice step must be a non-zero integer literal",
                        )
                        .label("bad step")
                        .help("write e.g. `x[::2]`; reverse an axis with reverse(x, axis)"),
                    );
                    return None;
                }
            },
        };
        if st < 0 {
            self.err(
                Diagnostic::error(
                    "L3015",
                    self.file,
                    span,
                    "negative slice steps are not supported",
                )
                .label("negative step")
                .help("use reverse(x, axis) and then slice"),
            );
            return None;
        }
        let norm = |d: Dim| {
            if d.as_const().is_some_and(|c| c < 0) {
                full.add(&d)
            } else {
                d
            }
        };
        let s = s.map(norm).unwrap_or(Dim::lit(0));
        let e = e.map(norm).unwrap_or(full.clone());
        if s.as_const() == Some(0) && &e == full && st == 1 {
            return Some(None);
        }
        // len = ceil((e - s) / st), clamped at 0 when both are known.
        let span_len = e.sub(&s);
        let len = if st == 1 {
            span_len
        } else {
            span_len.add(&Dim::lit(st - 1)).floordiv(st)
        };
        if let Some(l) = len.as_const()
            && l < 0
        {
            self.err(
                Diagnostic::error(
                    "L3015",
                    self.file,
                    span,
                    format!("this slice is empty or reversed (length {l})"),
                )
                .label("start after end")
                .help("write start:end with start <= end"),
            );
            return None;
        }
        if let (Some(ec), Some(fc)) = (e.as_const(), full.as_const())
            && ec > fc
        {
            self.err(
                Diagnostic::error(
                    "L3008",
                    self.file,
                    span,
                    format!("slice end {ec} is past the end of an axis of size {fc}"),
                )
                .label("out of range")
                .help(format!("the axis has {fc} entries")),
            );
            return None;
        }
        Some(Some((s, len, st)))
    }

    fn call(
        &mut self,
        func: &losslang_grammar::ast::Ident,
        args: &[losslang_grammar::ast::Arg],
        span: Span,
    ) -> Val {
        if let Some(entry) = self.lookup_fn(&func.name) {
            if entry.poisoned {
                return Val::Poison;
            }
            return self.call_fn(&entry, func, args, span);
        }
        if let Some(v) = self.call_builtin(&func.name, func.span, args, span) {
            return v;
        }
        let mut names: Vec<String> = super::builtins::BUILTINS
            .iter()
            .map(|s| s.to_string())
            .collect();
        names.extend(self.visible_fns());
        let help = match closest(&func.name, &names) {
            Some(c) => format!("did you mean `{c}`?"),
            None => "define it with `fn` or import it with `use std::module::name`".to_string(),
        };
        self.err(
            Diagnostic::error(
                "L2004",
                self.file,
                func.span,
                format!("unknown function `{}`", func.name),
            )
            .label("not a builtin or a defined fn")
            .help(help),
        );
        Val::Poison
    }

    fn call_fn(
        &mut self,
        entry: &super::scope::FnEntry,
        func: &losslang_grammar::ast::Ident,
        args: &[losslang_grammar::ast::Arg],
        span: Span,
    ) -> Val {
        let def = entry.def.clone();
        if let Some(pos) = self
            .call_stack
            .iter()
            .position(|(n, _, _)| n == &def.name.name)
        {
            let cycle: Vec<String> = self.call_stack[pos..]
                .iter()
                .map(|(n, _, _)| n.clone())
                .chain([def.name.name.clone()])
                .collect();
            let msg = if cycle.len() <= 2 {
                format!("`{}` calls itself", def.name.name)
            } else {
                format!(
                    "{} call each other ({})",
                    cycle[..cycle.len() - 1]
                        .iter()
                        .map(|n| format!("`{n}`"))
                        .collect::<Vec<_>>()
                        .join(" and "),
                    cycle.join(" → ")
                )
            };
            self.err(
                Diagnostic::error("L2005", self.file, span, msg)
                    .label("recursive call")
                    .help("helper functions are inlined at each call, so recursion is not allowed; unroll it or use a reduction"),
            );
            return Val::Poison;
        }
        self.inlined += 1;
        // Once the program has an error it will not compile: inlining more helper bodies
        // only repeats their diagnostics (and their cost, which can double per level).
        if self.inlined > MAX_INLINED_AFTER_ERROR && self.diags.iter().any(|d| d.is_error()) {
            return Val::Poison;
        }
        if self.inlined > MAX_INLINED_CALLS {
            // Reported once: every later call fails the same way.
            if self.inlined == MAX_INLINED_CALLS + 1 {
                self.err(
                    Diagnostic::error(
                        "L2005",
                        self.file,
                        span,
                        format!("helper calls expand to more than {MAX_INLINED_CALLS} inlined bodies"),
                    )
                    .label("the limit is passed here")
                    .help("helpers are inlined at each call; bind a repeated call to a `let` instead of calling it again"),
                );
            }
            return Val::Poison;
        }
        if self.call_stack.len() >= 64 {
            self.err(
                Diagnostic::error(
                    "L2005",
                    self.file,
                    span,
                    "helper calls are nested more than 64 deep",
                )
                .label("too deep")
                .help("flatten the helpers"),
            );
            return Val::Poison;
        }
        // Bind arguments by position or name.
        let mut vals: Vec<Option<Val>> = vec![None; def.params.len()];
        for (k, a) in args.iter().enumerate() {
            let slot = match &a.name {
                None => k,
                Some(n) => match def.params.iter().position(|p| p.name.name == n.name) {
                    Some(i) => i,
                    None => {
                        self.err(
                            Diagnostic::error(
                                "L2003",
                                self.file,
                                n.span,
                                format!("`{}` has no parameter `{}`", def.name.name, n.name),
                            )
                            .label("unknown keyword")
                            .help(format!(
                                "its parameters are: {}",
                                def.params
                                    .iter()
                                    .map(|p| p.name.name.clone())
                                    .collect::<Vec<_>>()
                                    .join(", ")
                            )),
                        );
                        return Val::Poison;
                    }
                },
            };
            if slot >= vals.len() {
                self.err(
                    Diagnostic::error(
                        "L3020",
                        self.file,
                        a.span,
                        format!(
                            "`{}` takes {} arguments, got {}",
                            def.name.name,
                            def.params.len(),
                            args.len()
                        ),
                    )
                    .label("extra argument")
                    .related(def.name.span, "defined here")
                    .help("remove the extra arguments"),
                );
                return Val::Poison;
            }
            let v = self.expr(&a.value);
            vals[slot] = Some(v);
        }
        let mut bound = std::collections::HashMap::new();
        for (p, v) in def.params.iter().zip(vals) {
            let Some(v) = v else {
                self.err(
                    Diagnostic::error(
                        "L3020",
                        self.file,
                        span,
                        format!("missing argument `{}` of `{}`", p.name.name, def.name.name),
                    )
                    .label("missing argument")
                    .help(format!(
                        "`{}` takes: {}",
                        def.name.name,
                        def.params
                            .iter()
                            .map(|p| p.name.name.clone())
                            .collect::<Vec<_>>()
                            .join(", ")
                    )),
                );
                return Val::Poison;
            };
            if matches!(v, Val::Poison) {
                return Val::Poison;
            }
            bound.insert(p.name.name.clone(), (v, p.ty.clone(), p.span));
        }
        let caller_file = self.file;
        self.call_stack
            .push((def.name.name.clone(), func.span.join(span), caller_file));
        self.file = entry.file;
        // A helper is pure: it sees its parameters and the dims, not the caller's names.
        let saved = std::mem::replace(&mut self.scopes, vec![std::collections::HashMap::new()]);
        for (n, (v, ty, psp)) in bound {
            let v = match ty {
                Some(t) => self.check_fn_param(v, &t, psp, &n),
                None => v,
            };
            self.bind(&n, v);
        }
        let out = self.check_block(&def.body, false);
        let out = match (&def.ret, out) {
            (Some(t), v) if !matches!(v, Val::Poison) => {
                self.check_fn_param(v, t, t.span, "the result")
            }
            (_, v) => v,
        };
        self.scopes = saved;
        self.file = caller_file;
        self.call_stack.pop();
        if def.body.tail.is_none() {
            self.err(
                Diagnostic::error(
                    "L3010",
                    entry.file,
                    def.body.span,
                    format!("`{}` has no final expression", def.name.name),
                )
                .label("no value")
                .help("end the body with the value the function returns"),
            );
            return Val::Poison;
        }
        out
    }

    fn check_fn_param(
        &mut self,
        v: Val,
        t: &losslang_grammar::ast::TypeExpr,
        span: Span,
        what: &str,
    ) -> Val {
        let Some(dt) = self.dtype_of(t) else {
            return Val::Poison;
        };
        if !self.want_value(&v, span) {
            return Val::Poison;
        }
        let h = self.materialize(&v, Some(dt), span);
        let ty = self.g.ty(h).clone();
        let want = self.shape_of(t);
        if ty.dtype != dt || (t.dims.is_some() && ty.shape != want) {
            self.err(
                Diagnostic::error(
                    "L3001",
                    self.file,
                    span,
                    format!(
                        "{what} is {ty}, but the function declares {}",
                        crate::ir::Ty::new(dt, want)
                    ),
                )
                .label("declared here")
                .help("pass a value of the declared type, or change the declaration"),
            );
            return Val::Poison;
        }
        v
    }

    /// The stability rewrite `exp(x) - 1` → `expm1(x)` (and `log(1 + x)` in `builtins`).
    fn rewrite_binary(&mut self, op: BinOp, lhs: &Expr, rhs: &Expr, span: Span) -> Option<Val> {
        if op != BinOp::Sub {
            return None;
        }
        let ExprKind::Call { func, args } = &lhs.kind else {
            return None;
        };
        if func.name != "exp"
            || args.len() != 1
            || args[0].name.is_some()
            || self.lookup_fn("exp").is_some()
        {
            return None;
        }
        if !matches!(rhs.kind, ExprKind::Int(1))
            && !matches!(rhs.kind, ExprKind::Float(f) if f == 1.0)
        {
            return None;
        }
        self.diags.push(
            Diagnostic::note(
                "L4601",
                self.file,
                span,
                "rewrote `exp(x) - 1` to `expm1(x)`",
            )
            .label("computed as expm1(x)")
            .help("expm1 keeps precision for small x; pass --no-rewrite to keep the original"),
        );
        let v = self.expr(&args[0].value);
        Some(self.unary_builtin(UnaryOp::Expm1, v, span, args[0].value.span))
    }
}

pub fn as_dim(v: &Val) -> Option<Dim> {
    match v {
        Val::Int(i) => Some(Dim::lit(*i)),
        Val::Dim(d) => Some(d.clone()),
        _ => None,
    }
}

pub fn as_f64(v: &Val) -> Option<f64> {
    match v {
        Val::Int(i) => Some(*i as f64),
        Val::Float(f) => Some(*f),
        Val::Dim(d) => d.as_const().map(|c| c as f64),
        _ => None,
    }
}

/// Folds operators on compile-time constants and dims.
fn fold_binary(op: BinOp, a: &Val, b: &Val) -> Option<Val> {
    use Val::*;
    match (a, b) {
        (Int(x), Int(y)) => Some(match op {
            BinOp::Add => Int(x.wrapping_add(*y)),
            BinOp::Sub => Int(x.wrapping_sub(*y)),
            BinOp::Mul => Int(x.wrapping_mul(*y)),
            BinOp::Div => Float(*x as f64 / *y as f64),
            BinOp::Pow if *y >= 0 => match u32::try_from(*y).ok().and_then(|k| x.checked_pow(k)) {
                Some(v) => Int(v),
                None => Float((*x as f64).powf(*y as f64)),
            },
            BinOp::Pow => Float((*x as f64).powf(*y as f64)),
            BinOp::Lt => Bool(x < y),
            BinOp::Le => Bool(x <= y),
            BinOp::Gt => Bool(x > y),
            BinOp::Ge => Bool(x >= y),
            BinOp::Eq => Bool(x == y),
            BinOp::Ne => Bool(x != y),
            _ => return None,
        }),
        (Bool(x), Bool(y)) => Some(match op {
            BinOp::And => Bool(*x && *y),
            BinOp::Or => Bool(*x || *y),
            BinOp::Eq => Bool(x == y),
            BinOp::Ne => Bool(x != y),
            _ => return None,
        }),
        (Int(_) | Float(_), Int(_) | Float(_)) => {
            let (x, y) = (as_f64(a)?, as_f64(b)?);
            Some(match op {
                BinOp::Add => Float(x + y),
                BinOp::Sub => Float(x - y),
                BinOp::Mul => Float(x * y),
                BinOp::Div => Float(x / y),
                BinOp::Pow => Float(x.powf(y)),
                BinOp::Lt => Bool(x < y),
                BinOp::Le => Bool(x <= y),
                BinOp::Gt => Bool(x > y),
                BinOp::Ge => Bool(x >= y),
                BinOp::Eq => Bool(x == y),
                BinOp::Ne => Bool(x != y),
                _ => return None,
            })
        }
        (Dim(_) | Int(_), Dim(_) | Int(_)) => {
            let (x, y) = (as_dim(a)?, as_dim(b)?);
            Some(match op {
                BinOp::Add => Dim(x.add(&y)),
                BinOp::Sub => Dim(x.sub(&y)),
                BinOp::Mul => Dim(x.mul(&y)),
                _ => return None,
            })
        }
        _ => None,
    }
}

/// The closest name by edit distance, for "did you mean" help.
pub fn closest(n: &str, candidates: &[String]) -> Option<String> {
    let mut best: Option<(usize, &String)> = None;
    for c in candidates {
        let d = edit_distance(n, c);
        if d <= 2.max(n.len() / 3) && best.is_none_or(|(bd, _)| d < bd) {
            best = Some((d, c));
        }
    }
    best.map(|(_, c)| c.clone())
}

fn edit_distance(a: &str, b: &str) -> usize {
    let (a, b): (Vec<char>, Vec<char>) = (a.chars().collect(), b.chars().collect());
    let mut prev: Vec<usize> = (0..=b.len()).collect();
    for i in 1..=a.len() {
        let mut cur = vec![i; b.len() + 1];
        for j in 1..=b.len() {
            let c = usize::from(a[i - 1] != b[j - 1]);
            cur[j] = (prev[j] + 1).min(cur[j - 1] + 1).min(prev[j - 1] + c);
        }
        prev = cur;
    }
    prev[b.len()]
}
