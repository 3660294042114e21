//! Range analysis for the numerical lints: an interval per value, enough to
//! prove that a `log` argument is positive, a divisor non-zero, a `sqrt`
//! argument non-negative. Only values computed from inputs, or from params with
//! a declared domain, are linted. Params range over their declared domain, or
//! are taken at their default value, and state at its initial value (the
//! user's stated assumption); sizes count as at least 1.

use super::scope::Checker;
use crate::diag::Diagnostic;
use crate::ir::{Graph, Handle};
use crate::ops::{BinaryOp, Op, RandKind, ReduceKind, UnaryOp};
use crate::value::DType;
use losslang_grammar::Span;
use std::collections::HashMap;

/// `[lo, hi]`; `lo_open` marks `(lo, …` (so `lo = 0, lo_open` is "positive").
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Range {
    pub lo: f64,
    pub hi: f64,
    pub lo_open: bool,
    pub hi_open: bool,
}

impl Range {
    /// Nothing known (a run-time value).
    pub const UNKNOWN: Range = Range::ANY;

    const ANY: Range = Range {
        lo: f64::NEG_INFINITY,
        hi: f64::INFINITY,
        lo_open: false,
        hi_open: false,
    };

    fn point(c: f64) -> Range {
        if c.is_nan() {
            return Range::ANY;
        }
        Range {
            lo: c,
            hi: c,
            lo_open: false,
            hi_open: false,
        }
    }

    fn new(lo: f64, hi: f64) -> Range {
        if lo.is_nan() || hi.is_nan() || lo > hi {
            return Range::ANY;
        }
        Range {
            lo,
            hi,
            lo_open: false,
            hi_open: false,
        }
    }

    fn open_lo(mut self, open: bool) -> Range {
        self.lo_open = open;
        self
    }

    fn open_hi(mut self, open: bool) -> Range {
        self.hi_open = open;
        self
    }

    pub fn positive(&self) -> bool {
        self.lo > 0.0 || (self.lo == 0.0 && self.lo_open)
    }

    pub fn negative(&self) -> bool {
        self.hi < 0.0 || (self.hi == 0.0 && self.hi_open)
    }

    pub fn nonneg(&self) -> bool {
        self.lo >= 0.0
    }

    fn union(a: Range, b: Range) -> Range {
        let (lo, lo_open) = if a.lo < b.lo || (a.lo == b.lo && !a.lo_open) {
            (a.lo, a.lo_open)
        } else {
            (b.lo, b.lo_open)
        };
        let (hi, hi_open) = if a.hi > b.hi || (a.hi == b.hi && !a.hi_open) {
            (a.hi, a.hi_open)
        } else {
            (b.hi, b.hi_open)
        };
        Range {
            lo,
            hi,
            lo_open,
            hi_open,
        }
    }

    /// The image under a non-decreasing function.
    fn mono(self, f: impl Fn(f64) -> f64) -> Range {
        Range::new(f(self.lo), f(self.hi))
    }
}

fn mul(a: Range, b: Range) -> Range {
    let ps = [a.lo * b.lo, a.lo * b.hi, a.hi * b.lo, a.hi * b.hi];
    if ps.iter().any(|p| p.is_nan()) {
        // 0 · inf: keep only what the signs say.
        return match (a.nonneg(), b.nonneg()) {
            (true, true) => Range::new(0.0, f64::INFINITY).open_lo(a.positive() && b.positive()),
            _ => Range::ANY,
        };
    }
    let lo = ps.iter().copied().fold(f64::INFINITY, f64::min);
    let hi = ps.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    let mut r = Range::new(lo, hi);
    if (a.positive() && b.positive()) || (a.negative() && b.negative()) {
        r.lo_open = r.lo == 0.0 || r.lo_open;
    }
    r
}

fn recip(b: Range) -> Range {
    if b.positive() {
        Range::new(1.0 / b.hi, 1.0 / b.lo).open_lo(true)
    } else if b.negative() {
        Range::new(1.0 / b.lo, 1.0 / b.hi).open_hi(true)
    } else {
        Range::ANY
    }
}

pub fn range(g: &Graph, h: Handle, memo: &mut HashMap<Handle, Range>) -> Range {
    if let Some(r) = memo.get(&h) {
        return *r;
    }
    let n = g.node(h);
    let arg = |i: usize, memo: &mut HashMap<Handle, Range>| range(g, n.args[i], memo);
    let r = match &n.op {
        Op::Const(v, _) | Op::Fill(v, _, _) => Range::point(v.as_f64()),
        // A declared domain is every value a call may give; without one the
        // default is the user's stated assumption.
        Op::Param(k) => match &g.params[*k].domain {
            Some(d) => Range {
                lo: d.lo,
                hi: d.hi,
                lo_open: !d.lo_closed,
                hi_open: !d.hi_closed,
            },
            None => Range::point(g.params[*k].default.as_f64()),
        },
        Op::State(k) => range(g, g.states[*k].init, memo),
        Op::DimSize(_) => Range::new(1.0, f64::INFINITY),
        Op::Iota(_) => Range::new(0.0, f64::INFINITY),
        Op::OneHot(_) => Range::new(0.0, 1.0),
        Op::Rand(RandKind::Uniform, _) => Range::new(0.0, 1.0).open_hi(true),
        Op::Rand(RandKind::Normal, _)
        | Op::Input(_)
        | Op::MatMul
        | Op::ArgMax(_)
        | Op::ArgMin(_) => Range::ANY,
        Op::Argsort { .. } => Range::new(0.0, f64::INFINITY),
        Op::Unary(u) => {
            let x = arg(0, memo);
            match u {
                UnaryOp::Neg => Range {
                    lo: -x.hi,
                    hi: -x.lo,
                    lo_open: x.hi_open,
                    hi_open: x.lo_open,
                },
                UnaryOp::Exp => x.mono(f64::exp).open_lo(true),
                UnaryOp::Expm1 => x.mono(f64::exp_m1).open_lo(x.positive()),
                UnaryOp::Log => {
                    if x.positive() {
                        x.mono(f64::ln)
                    } else {
                        Range::ANY
                    }
                }
                UnaryOp::Log1p => {
                    if x.lo > -1.0 || (x.lo == -1.0 && x.lo_open) {
                        x.mono(f64::ln_1p).open_lo(x.positive())
                    } else {
                        Range::ANY
                    }
                }
                UnaryOp::Sqrt => {
                    Range::new(x.lo.max(0.0).sqrt(), x.hi.max(0.0).sqrt()).open_lo(x.positive())
                }
                UnaryOp::Rsqrt => Range::new(0.0, f64::INFINITY).open_lo(true),
                UnaryOp::Abs => {
                    if x.nonneg() {
                        x
                    } else if x.negative() {
                        Range::new(-x.hi, -x.lo).open_lo(true)
                    } else {
                        Range::new(0.0, x.hi.max(-x.lo))
                    }
                }
                UnaryOp::Relu => Range::new(x.lo.max(0.0), x.hi.max(0.0)).open_lo(x.positive()),
                UnaryOp::Sigmoid => x
                    .mono(crate::ops::elementwise::sigmoid)
                    .open_lo(true)
                    .open_hi(true),
                UnaryOp::Softplus => x.mono(crate::ops::elementwise::softplus).open_lo(true),
                UnaryOp::LogSigmoid => Range::new(f64::NEG_INFINITY, 0.0).open_hi(true),
                UnaryOp::Tanh => x.mono(f64::tanh),
                UnaryOp::Atanh | UnaryOp::Asinh => Range::ANY,
                UnaryOp::Sign => Range::new(-1.0, 1.0),
                UnaryOp::Floor | UnaryOp::Round => Range::new(x.lo.floor(), x.hi.ceil()),
                UnaryOp::Sin | UnaryOp::Cos => Range::new(-1.0, 1.0),
                UnaryOp::Not | UnaryOp::IsFinite => Range::new(0.0, 1.0),
            }
        }
        Op::Binary(b) => {
            let (x, y) = (arg(0, memo), arg(1, memo));
            match b {
                BinaryOp::Add => Range::new(x.lo + y.lo, x.hi + y.hi)
                    .open_lo(x.lo_open || y.lo_open)
                    .open_hi(x.hi_open || y.hi_open),
                BinaryOp::Sub => Range::new(x.lo - y.hi, x.hi - y.lo)
                    .open_lo(x.lo_open || y.hi_open)
                    .open_hi(x.hi_open || y.lo_open),
                // x·x is a square.
                BinaryOp::Mul if n.args[0] == n.args[1] => {
                    let m = mul(x, y);
                    Range::new(0.0, m.hi.max(0.0)).open_lo(x.positive() || x.negative())
                }
                BinaryOp::Mul => mul(x, y),
                // A quotient of non-negative values is non-negative wherever it is defined.
                BinaryOp::Div if x.nonneg() && y.nonneg() && !y.positive() => {
                    Range::new(0.0, f64::INFINITY)
                }
                BinaryOp::Div => mul(x, recip(y)),
                BinaryOp::Pow => {
                    let even = y.lo == y.hi && y.lo.fract() == 0.0 && (y.lo as i64) % 2 == 0;
                    if x.positive() {
                        Range::new(0.0, f64::INFINITY).open_lo(true)
                    } else if x.nonneg() || even {
                        Range::new(0.0, f64::INFINITY)
                    } else {
                        Range::ANY
                    }
                }
                BinaryOp::Maximum => {
                    let lo_src = if x.lo > y.lo || (x.lo == y.lo && x.lo_open) {
                        x
                    } else {
                        y
                    };
                    Range::new(x.lo.max(y.lo), x.hi.max(y.hi)).open_lo(lo_src.lo_open)
                }
                BinaryOp::Minimum => {
                    let lo_src = if x.lo < y.lo || (x.lo == y.lo && !x.lo_open) {
                        x
                    } else {
                        y
                    };
                    Range::new(x.lo.min(y.lo), x.hi.min(y.hi)).open_lo(lo_src.lo_open)
                }
                BinaryOp::FloorDiv => Range::ANY,
                BinaryOp::Lt
                | BinaryOp::Le
                | BinaryOp::Gt
                | BinaryOp::Ge
                | BinaryOp::Eq
                | BinaryOp::Ne
                | BinaryOp::And
                | BinaryOp::Or => Range::new(0.0, 1.0),
            }
        }
        Op::Where => {
            // The guard idiom `where(x > k, x, …)`: in the taken branch x is above k.
            let mut a = arg(1, memo);
            let c = g.node(n.args[0]);
            if let (Op::Binary(cmp @ (BinaryOp::Gt | BinaryOp::Ge)), true) =
                (&c.op, c.args.first() == Some(&n.args[1]))
            {
                let k = range(g, c.args[1], memo);
                if k.lo == k.hi && k.lo >= a.lo {
                    a.lo = k.lo;
                    a.lo_open = *cmp == BinaryOp::Gt;
                }
            }
            Range::union(a, arg(2, memo))
        }
        Op::Cast(d) => {
            let src = g.ty(n.args[0]).dtype;
            if src == DType::Bool && *d != DType::Bool {
                Range::new(0.0, 1.0)
            } else {
                arg(0, memo)
            }
        }
        Op::Reduce { kind, .. } => {
            let x = arg(0, memo);
            match kind {
                // A sum of n ≥ 1 terms keeps the sign of its terms.
                ReduceKind::Sum => {
                    if x.nonneg() {
                        Range::new(x.lo, f64::INFINITY).open_lo(x.lo_open)
                    } else if x.hi <= 0.0 {
                        Range::new(f64::NEG_INFINITY, x.hi).open_hi(x.hi_open)
                    } else {
                        Range::ANY
                    }
                }
                ReduceKind::Max | ReduceKind::Min => x,
            }
        }
        Op::SearchSorted { .. } => Range::new(0.0, f64::INFINITY),
        Op::LogCumSumExp { .. } => Range::ANY,
        Op::Cumsum { .. } => {
            let x = arg(0, memo);
            if x.nonneg() {
                Range::new(x.lo, f64::INFINITY).open_lo(x.lo_open)
            } else {
                Range::ANY
            }
        }
        Op::Norm { .. } => Range::new(0.0, f64::INFINITY),
        Op::StopGrad
        | Op::Reshape(_)
        | Op::BroadcastTo(_)
        | Op::Transpose(_)
        | Op::Slice { .. }
        | Op::Reverse(_)
        | Op::TakeAlong(_)
        | Op::IndexSelect(_) => arg(0, memo),
        Op::Pad { .. } => Range::union(arg(0, memo), Range::point(0.0)),
        Op::Concat(_) => {
            let mut r = arg(0, memo);
            for i in 1..n.args.len() {
                r = Range::union(r, arg(i, memo));
            }
            r
        }
        Op::ScatterSet(_) => Range::union(arg(0, memo), arg(2, memo)),
        Op::ScatterAddAlong(_) | Op::IndexAdd(_) => {
            let (x, y) = (arg(0, memo), arg(2, memo));
            if x.nonneg() && y.nonneg() {
                Range::new(x.lo, f64::INFINITY).open_lo(x.lo_open)
            } else {
                Range::ANY
            }
        }
    };
    memo.insert(h, r);
    r
}

impl Checker<'_> {
    /// `log(x)` and `a / x`: warn unless `x` is provably positive (non-zero for `/`).
    pub fn lint_positive(&mut self, h: Handle, span: Span, what: &str, division: bool) {
        if !self.lintable(h) {
            return;
        }
        let r = range(&self.g, h, &mut HashMap::new());
        let d = if division {
            if r.positive() || r.negative() {
                return;
            }
            Diagnostic::warning("L4502", self.file, span, "this divisor may be zero")
                .label("not provably non-zero")
                .help("use safe_div(a, n) (0 when n = 0), or divide by maximum(n, eps)")
        } else {
            if r.positive() {
                return;
            }
            Diagnostic::warning("L4501", self.file, span, format!("`{what}` of a value that may be zero or negative"))
                .label("not provably positive")
                .help("guard it, e.g. log(maximum(x, 1e-12)), or use log_softmax / log_sigmoid / logsumexp")
        };
        self.err(d);
    }

    pub fn lint_nonneg(&mut self, h: Handle, span: Span, what: &str) {
        if !self.lintable(h) {
            return;
        }
        if range(&self.g, h, &mut HashMap::new()).nonneg() {
            return;
        }
        let d = Diagnostic::warning(
            "L4503",
            self.file,
            span,
            format!("`{what}` of a value that may be negative"),
        )
        .label("not provably non-negative")
        .help("guard it, e.g. sqrt(maximum(x, 0.0))");
        self.err(d);
    }
}
