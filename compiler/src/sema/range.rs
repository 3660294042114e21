//! Range analysis for the numerical lints: a sign lattice over the graph, enough
//! to prove that a `log` argument is positive, a divisor non-zero, a `sqrt`
//! argument non-negative. Only values computed from inputs are linted: params,
//! dims and state are the user's stated assumptions (sizes count as at least 1).

use super::scope::Checker;
use crate::diag::Diagnostic;
use crate::ir::{Graph, Handle};
use crate::ops::{BinaryOp, Op, RandKind, ReduceKind, Scalar, UnaryOp};
use crate::value::DType;
use losslang_grammar::Span;
use std::collections::HashMap;

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Sign {
    pub pos: bool,
    pub nonneg: bool,
    pub nonzero: bool,
}

const ANY: Sign = Sign {
    pos: false,
    nonneg: false,
    nonzero: false,
};
const POS: Sign = Sign {
    pos: true,
    nonneg: true,
    nonzero: true,
};
const NONNEG: Sign = Sign {
    pos: false,
    nonneg: true,
    nonzero: false,
};

fn of_const(v: Scalar) -> Sign {
    let x = v.as_f64();
    Sign {
        pos: x > 0.0,
        nonneg: x >= 0.0,
        nonzero: x != 0.0,
    }
}

fn meet(a: Sign, b: Sign) -> Sign {
    Sign {
        pos: a.pos && b.pos,
        nonneg: a.nonneg && b.nonneg,
        nonzero: a.nonzero && b.nonzero,
    }
}

pub fn sign(g: &Graph, h: Handle, memo: &mut HashMap<Handle, Sign>) -> Sign {
    if let Some(s) = memo.get(&h) {
        return *s;
    }
    let n = g.node(h);
    let arg = |i: usize, memo: &mut HashMap<Handle, Sign>| sign(g, n.args[i], memo);
    let s = match &n.op {
        Op::Const(v, _) | Op::Fill(v, _, _) => of_const(*v),
        Op::DimSize(_) => POS,
        Op::Iota(_) | Op::OneHot(_) => NONNEG,
        Op::Rand(RandKind::Uniform, _) => NONNEG,
        Op::Rand(RandKind::Normal, _) | Op::Input(_) | Op::Param(_) | Op::State(_) => ANY,
        Op::Unary(u) => {
            let x = arg(0, memo);
            match u {
                UnaryOp::Exp | UnaryOp::Sigmoid | UnaryOp::Softplus => POS,
                UnaryOp::Abs | UnaryOp::Relu | UnaryOp::Sqrt => NONNEG,
                UnaryOp::Rsqrt => POS,
                UnaryOp::Log1p
                | UnaryOp::Expm1
                | UnaryOp::Tanh
                | UnaryOp::Atanh
                | UnaryOp::Asinh => Sign {
                    pos: x.pos,
                    nonneg: x.nonneg,
                    nonzero: x.pos,
                },
                UnaryOp::Floor | UnaryOp::Round => Sign {
                    pos: false,
                    nonneg: x.nonneg,
                    nonzero: false,
                },
                _ => ANY,
            }
        }
        Op::Binary(b) => {
            let (x, y) = (arg(0, memo), arg(1, memo));
            match b {
                BinaryOp::Add => Sign {
                    pos: (x.pos && y.nonneg) || (x.nonneg && y.pos),
                    nonneg: x.nonneg && y.nonneg,
                    nonzero: (x.pos && y.nonneg) || (x.nonneg && y.pos),
                },
                BinaryOp::Mul | BinaryOp::Div => Sign {
                    pos: x.pos && y.pos,
                    nonneg: x.nonneg && y.nonneg,
                    nonzero: x.nonzero && y.nonzero,
                },
                BinaryOp::Pow => Sign {
                    pos: x.pos,
                    nonneg: x.nonneg,
                    nonzero: x.pos,
                },
                BinaryOp::Maximum => Sign {
                    pos: x.pos || y.pos,
                    nonneg: x.nonneg || y.nonneg,
                    nonzero: x.pos || y.pos,
                },
                BinaryOp::Minimum => meet(x, y),
                _ => ANY,
            }
        }
        Op::Where => meet(arg(1, memo), arg(2, memo)),
        Op::Cast(d) => {
            let src = g.ty(n.args[0]).dtype;
            if src == DType::Bool && *d != DType::Bool {
                NONNEG
            } else {
                arg(0, memo)
            }
        }
        Op::Reduce { kind, .. } => {
            let x = arg(0, memo);
            match kind {
                ReduceKind::Sum | ReduceKind::Max | ReduceKind::Min => x,
            }
        }
        Op::Norm { .. } => NONNEG,
        Op::Cumsum { .. } => arg(0, memo),
        Op::StopGrad
        | Op::Reshape(_)
        | Op::BroadcastTo(_)
        | Op::Transpose(_)
        | Op::Slice { .. }
        | Op::Reverse(_)
        | Op::TakeAlong(_)
        | Op::IndexSelect(_) => arg(0, memo),
        Op::Pad { .. } => {
            let x = arg(0, memo);
            Sign { pos: false, ..x }
        }
        Op::Concat(_) => {
            let mut s = POS;
            for i in 0..n.args.len() {
                s = meet(s, arg(i, memo));
            }
            s
        }
        Op::ScatterSet(_) => meet(arg(0, memo), arg(2, memo)),
        Op::ScatterAddAlong(_) | Op::IndexAdd(_) => {
            let (x, y) = (arg(0, memo), arg(2, memo));
            Sign {
                pos: x.pos && y.nonneg,
                nonneg: x.nonneg && y.nonneg,
                nonzero: x.pos && y.nonneg,
            }
        }
        Op::MatMul | Op::ArgMax(_) | Op::ArgMin(_) | Op::Argsort { .. } => ANY,
    };
    memo.insert(h, s);
    s
}

impl Checker<'_> {
    /// `log(x)` and `a / x`: warn unless `x` is provably positive (non-zero for `/`).
    pub fn lint_positive(&mut self, h: Handle, span: Span, what: &str, division: bool) {
        if !self.depends_on_inputs(h) {
            return;
        }
        let s = sign(&self.g, h, &mut HashMap::new());
        let d = if division {
            if s.nonzero {
                return;
            }
            Diagnostic::warning("L4502", self.file, span, "this divisor may be zero")
                .label("not provably non-zero")
                .help("use safe_div(a, n) (0 when n = 0), or divide by maximum(n, eps)")
        } else {
            if s.pos {
                return;
            }
            Diagnostic::warning("L4501", self.file, span, format!("`{what}` of a value that may be zero or negative"))
                .label("not provably positive")
                .help("guard it, e.g. log(maximum(x, 1e-12)), or use log_softmax / log_sigmoid / logsumexp")
        };
        self.err(d);
    }

    pub fn lint_nonneg(&mut self, h: Handle, span: Span, what: &str) {
        if !self.depends_on_inputs(h) {
            return;
        }
        let s = sign(&self.g, h, &mut HashMap::new());
        if s.nonneg {
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
