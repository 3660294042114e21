//! Random well-typed `.loss` programs through the whole pipeline (parser,
//! checker, autodiff, optimiser), run on the Cranelift JIT and on the
//! reference interpreter with random data: loss, gradients, reports and new
//! state must agree within the conformance tolerances, NaN exactly where the
//! interpreter has NaN, and the JIT on two threads must give the same bits as
//! on one.
//!
//! A program is read off a tape of random choices in which 0 is always the
//! simplest option, so proptest's shrinking of the tape shrinks the program.
//! Each has an input `x: f32[N, C] diff` and up to two of `y: f32[N]` (diff or
//! not), `t: i64[N]` (class ids in 0..C), `m: bool[N]` and `z: f64[N]` (diff or
//! not); up to two f32 params, an i64 `mode` param that picks an `if` branch,
//! and optionally state (a scalar EMA, a per-class `f32[C]` EMA, an i64 step
//! counter) with its update. The body binds `let`s (later expressions reuse
//! them, so gradients accumulate over several uses), 0–2 reports, and ends in
//! a reduction to a scalar of an expression tree of depth ≤ 5 over shapes
//! `[]`, `[N]`, `[C]`, `[N, 1]` and `[N, C]` (broadcasting with `[:, None]`):
//! arithmetic, elementwise maths, `maximum`/`minimum`, `where`, `if`,
//! `softmax`/`log_softmax` over either axis, `sum`/`mean`/`max`/`min`/
//! `logsumexp` over an axis (with or without `keepdims`) or all axes,
//! `take`/`take_along_axis` of the targets, `one_hot`, slices and `stop_grad`.
//!
//! The generated values stay finite and moderate by construction, so that a
//! disagreement is a bug and not the last-bit differences both backends are
//! allowed (the interpreter computes an f32 program in f64 and rounds only its
//! results; the JIT computes f32 in f32): every expression carries a bound on
//! |value| and is squashed with `tanh` past it (so no f32 overflow or
//! underflow, where the two would part ways), `exp` only takes bounded
//! arguments, `log` and `sqrt` only positive ones, denominators stay away from
//! zero, comparisons only look at inputs, params and state, and a kink
//! (`maximum`, `minimum`, `abs`, `relu`) meets a computed value only off its
//! exact ties: a comparison or a kink of computed values could flip on a
//! last-bit difference and move a whole gradient.
//!
//! Each program runs on the case's own batch (N ≤ 9) with and without
//! gradients, on the fused and the unfused JIT; then on a batch of 128–199
//! rows built from the same values (row loops are only split across threads
//! past 64 rows a thread): on two threads it must give the bits of one, and
//! against the interpreter it is held to tolerances scaled by rows / 9, since
//! sums over that many rows scale up the same rounding.
//!
//! The seed is fixed so that every run checks the same programs; set
//! `PROPTEST_RNG_SEED` (and `PROPTEST_CASES`) to explore others, and
//! `LOSSLANG_PRINT_PROGRAMS=1` to see what is generated. Failures are
//! not persisted: a stored seed replays a tape, and the program a tape means
//! changes whenever this generator does. A failure prints the shrunk program
//! and its data instead, which is all that is needed to reproduce it.

use losslang_clif::Jit;
use losslang_compiler::backend::Interp;
use losslang_compiler::ops::Scalar;
use losslang_compiler::program::{Call, CompileOptions, Outputs, Program, compile};
use losslang_compiler::sema::{NoLoader, Source};
use losslang_compiler::value::{DType, Data, Tensor};
use proptest::prelude::*;
use proptest::test_runner::{
    Config, RngSeed, TestCaseError, TestError, TestRunner, contextualize_config,
};
use std::collections::BTreeSet;
use std::fmt::Write as _;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::Mutex;

/// Past this bound an expression is squashed with `tanh`.
const LIMIT: f64 = 40.0;
/// Depth of the expression under the final reduction.
const BODY_DEPTH: u32 = 4;
/// Values drawn for the float inputs lie in [-RANGE, RANGE].
const RANGE: f64 = 3.0;
/// The case's own batch has N ≤ 9 rows and C ≤ 7 classes; the large batch
/// (for the threads) has 128..=MAX_ROWS rows.
const MAX_N: usize = 9;
const MAX_C: usize = 7;
const MAX_ROWS: usize = 199;

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Sh {
    S,
    N,
    C,
    N1,
    NC,
}

impl Sh {
    /// The shapes that broadcast into `self` (an `[N]` one after `[:, None]`).
    fn parts(self) -> &'static [Sh] {
        match self {
            Sh::S => &[Sh::S],
            Sh::N => &[Sh::S, Sh::N],
            Sh::C => &[Sh::S, Sh::C],
            Sh::N1 => &[Sh::S, Sh::N, Sh::N1],
            Sh::NC => &[Sh::S, Sh::N, Sh::C, Sh::N1, Sh::NC],
        }
    }

    fn dims(self) -> &'static str {
        match self {
            Sh::S => "",
            Sh::N => "[N]",
            Sh::C => "[C]",
            Sh::N1 => "[N, 1]",
            Sh::NC => "[N, C]",
        }
    }
}

/// A generated expression and what the generator knows about it.
#[derive(Clone, Debug)]
struct E {
    src: String,
    sh: Sh,
    f64: bool,
    /// |value| stays below this for every input the generator draws.
    bound: f64,
    /// The diff inputs that reach the value through a gradient-carrying path
    /// (the checker rejects a loss that some diff input does not reach).
    grads: BTreeSet<&'static str>,
    /// Needs no parentheses as an operand.
    atom: bool,
    /// An input, param, state or literal: equal values are equal on every
    /// backend. Two computed values that are equal in exact arithmetic can
    /// differ in the last bit between the interpreter (f64 throughout) and the
    /// JIT (f32 in f32), and at a kink that moves the whole gradient, so kinks
    /// meet such values only off their ties (see `off_tie`).
    leaf: bool,
}

impl E {
    fn leaf(src: &str, sh: Sh, bound: f64) -> E {
        E {
            src: src.to_string(),
            sh,
            f64: false,
            bound,
            grads: BTreeSet::new(),
            atom: !src.starts_with('-'),
            leaf: true,
        }
    }

    /// An operation on `args`: f64 if any argument is, and reached by every
    /// diff input that reaches an argument.
    fn of(src: String, sh: Sh, bound: f64, atom: bool, args: &[&E]) -> E {
        E {
            src,
            sh,
            f64: args.iter().any(|a| a.f64),
            bound,
            grads: args.iter().flat_map(|a| a.grads.iter().copied()).collect(),
            atom,
            leaf: false,
        }
    }

    fn p(&self) -> String {
        if self.atom {
            self.src.clone()
        } else {
            format!("({})", self.src)
        }
    }

    /// The operand of a kink: a computed value is moved off the points where
    /// it could tie exactly with an input or a literal (0, ±0.5, 1 and their
    /// images such as sigmoid(0)), which random data hits on purpose.
    fn off_tie(&self) -> String {
        if self.leaf {
            self.src.clone()
        } else {
            format!("{} + 0.0123", self.p())
        }
    }

    fn ty(&self) -> String {
        format!("{}{}", if self.f64 { "f64" } else { "f32" }, self.sh.dims())
    }
}

/// The choices a program is read from; past the end every choice is 0.
struct Tape<'a> {
    v: &'a [u32],
    i: usize,
}

impl Tape<'_> {
    fn pick(&mut self, n: usize) -> usize {
        let c = self.v.get(self.i).copied().unwrap_or(0);
        self.i += 1;
        c as usize % n.max(1)
    }

    /// True with about `percent` % probability; false for a 0 choice.
    fn chance(&mut self, percent: usize) -> bool {
        self.pick(100) >= 100 - percent
    }
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Extra {
    Y,
    T,
    M,
    Z,
}

/// The signature: which inputs, params and state the program declares.
#[derive(Default)]
struct Sig {
    /// `Some(diff)` when declared.
    y: Option<bool>,
    t: bool,
    m: bool,
    z: Option<bool>,
    /// Defaults of `p0`, `p1`.
    params: Vec<&'static str>,
    mode: bool,
    /// The initial value of the scalar EMA `s`.
    s: Option<&'static str>,
    v: bool,
    step: bool,
}

const PARAM_DEFAULTS: [&str; 6] = ["0.5", "-1.0", "1.5", "2.0", "-0.25", "0.75"];
const LITERALS: [&str; 7] = ["1.0", "0.5", "2.0", "-1.5", "0.25", "3.0", "-0.1"];
const THRESHOLDS: [&str; 5] = ["0.0", "0.5", "-0.5", "1.0", "-1.0"];

fn sig(tape: &mut Tape) -> Sig {
    let mut s = Sig::default();
    let mut pool = vec![Extra::Y, Extra::T, Extra::M, Extra::Z];
    for _ in 0..tape.pick(3) {
        match pool.remove(tape.pick(pool.len())) {
            Extra::Y => s.y = Some(tape.pick(4) != 3),
            Extra::T => s.t = true,
            Extra::M => s.m = true,
            Extra::Z => s.z = Some(tape.pick(2) == 0),
        }
    }
    for _ in 0..tape.pick(3) {
        s.params
            .push(PARAM_DEFAULTS[tape.pick(PARAM_DEFAULTS.len())]);
    }
    s.mode = tape.chance(25);
    if tape.chance(35) {
        s.s = Some(["0.0", "1.0", "-0.5"][tape.pick(3)]);
    }
    s.v = tape.chance(20);
    s.step = tape.chance(25);
    s
}

#[derive(Clone, Copy)]
enum Kind {
    Unary,
    Binary,
    Div,
    Exp,
    Log,
    Sqrt,
    Pow,
    MaxMin,
    Where,
    StopGrad,
    If,
    Softmax,
    Reduce,
    Take,
}

struct Gen<'a> {
    tape: Tape<'a>,
    sig: Sig,
    lets: Vec<E>,
    stmts: Vec<String>,
}

impl Gen<'_> {
    /// `e` where a value of shape `to` is expected (`e.sh` is one of `to.parts()`).
    fn coerce(e: E, to: Sh) -> E {
        if e.sh == Sh::N && matches!(to, Sh::N1 | Sh::NC) {
            E {
                src: format!("{}[:, None]", e.p()),
                sh: Sh::N1,
                atom: true,
                ..e
            }
        } else {
            e
        }
    }

    /// A value that broadcasts into `want`.
    fn part(&mut self, want: Sh, depth: u32) -> E {
        let parts = want.parts();
        let sh = parts[parts.len() - 1 - self.tape.pick(parts.len())];
        let e = self.expr(sh, depth);
        Self::coerce(e, want)
    }

    /// `a` and `b` in either order (`where`, `maximum` and the arithmetic
    /// operators must broadcast both ways).
    fn ordered(&mut self, a: E, b: E) -> (E, E) {
        if self.tape.pick(2) == 1 {
            (b, a)
        } else {
            (a, b)
        }
    }

    fn bind(&mut self, e: E) -> E {
        let name = format!("v{}", self.lets.len());
        let stmt = if self.tape.chance(30) {
            format!("let {name}: {} = {}", e.ty(), e.src)
        } else {
            format!("let {name} = {}", e.src)
        };
        self.stmts.push(stmt);
        let e = E {
            src: name,
            atom: true,
            ..e
        };
        self.lets.push(e.clone());
        e
    }

    /// `e` as an operand used twice (`1 + a * a`): one evaluation, and no
    /// doubling of the source at every level.
    fn shared(&mut self, e: E) -> E {
        if e.atom { e } else { self.bind(e) }
    }

    fn leaf(&mut self, want: Sh) -> E {
        let reuse: Vec<E> = self.lets.iter().filter(|e| e.sh == want).cloned().collect();
        if !reuse.is_empty() && self.tape.chance(35) {
            return reuse[self.tape.pick(reuse.len())].clone();
        }
        if want == Sh::N1 {
            let e = self.leaf(Sh::N);
            return Self::coerce(e, Sh::N1);
        }
        let s = &self.sig;
        let mut opts = vec![];
        let input = |name: &'static str, sh: Sh, diff: bool, f64: bool| {
            let mut e = E::leaf(name, sh, RANGE);
            e.f64 = f64;
            if diff {
                e.grads.insert(name);
            }
            e
        };
        match want {
            Sh::NC => {
                opts.push(input("x", Sh::NC, true, false));
                if s.t {
                    opts.push(E::leaf("one_hot(t, C)", Sh::NC, 1.0));
                }
            }
            Sh::N => {
                let mut col = input("x", Sh::N, true, false);
                col.src = "x[:, 0]".into();
                opts.push(col);
                if let Some(d) = s.y {
                    opts.push(input("y", Sh::N, d, false));
                }
                if let Some(d) = s.z {
                    opts.push(input("z", Sh::N, d, true));
                }
                if s.t {
                    opts.push(E::leaf("f32(t)", Sh::N, MAX_C as f64));
                }
                if s.m {
                    opts.push(E::leaf("f32(m)", Sh::N, 1.0));
                }
            }
            Sh::C => {
                let mut row = input("x", Sh::C, true, false);
                row.src = "x[0, :]".into();
                opts.push(row);
                if s.v {
                    opts.push(E::leaf("v", Sh::C, RANGE));
                }
            }
            Sh::N1 => unreachable!("handled above"),
            Sh::S => {
                let l = LITERALS[self.tape.pick(LITERALS.len())];
                opts.push(E::leaf(l, Sh::S, l.parse::<f64>().expect("a number").abs()));
                for k in 0..s.params.len() {
                    let name = ["p0", "p1"][k];
                    opts.push(E::leaf(name, Sh::S, RANGE));
                }
                if s.s.is_some() {
                    opts.push(E::leaf("s", Sh::S, RANGE));
                }
                if s.step {
                    let mut e = E::leaf("0.9 ** step", Sh::S, 1.0);
                    e.atom = false;
                    e.leaf = false;
                    opts.push(e);
                }
            }
        }
        let k = self.tape.pick(opts.len());
        opts.swap_remove(k)
    }

    /// A bool mask over inputs, params or state that broadcasts into `want`.
    fn cond(&mut self, want: Sh) -> E {
        let s = &self.sig;
        let mut opts: Vec<(String, Sh)> = vec![];
        let th = THRESHOLDS[self.tape.pick(THRESHOLDS.len())];
        if want == Sh::NC {
            opts.push((format!("x > {th}"), Sh::NC));
            opts.push(("x >= 0.0".into(), Sh::NC));
            if s.y.is_some() {
                opts.push(("x < y[:, None]".into(), Sh::NC));
            }
            if !s.params.is_empty() {
                opts.push(("x <= p0".into(), Sh::NC));
            }
            if s.v {
                opts.push(("x > v".into(), Sh::NC));
            }
        }
        if matches!(want, Sh::N | Sh::N1 | Sh::NC) {
            opts.push((format!("x[:, 0] < {th}"), Sh::N));
            if s.y.is_some() {
                opts.push((format!("y >= {th}"), Sh::N));
            }
            if s.m {
                opts.push(("m".into(), Sh::N));
                opts.push(("!m".into(), Sh::N));
                if s.y.is_some() {
                    opts.push(("m & (y > 0.0)".into(), Sh::N));
                }
            }
            if s.t {
                opts.push(("t == 0".into(), Sh::N));
                opts.push(("t != 1".into(), Sh::N));
            }
            if s.z.is_some() {
                opts.push((format!("z > {th}"), Sh::N));
            }
        }
        if matches!(want, Sh::C | Sh::NC) {
            opts.push((format!("x[0, :] >= {th}"), Sh::C));
            if s.v {
                opts.push(("v < 0.5".into(), Sh::C));
            }
        }
        opts.push((format!("x[0, 0] > {th}"), Sh::S));
        if !s.params.is_empty() {
            opts.push(("p0 > 0.0".into(), Sh::S));
        }
        if s.s.is_some() {
            opts.push((format!("s >= {th}"), Sh::S));
        }
        if s.step {
            opts.push(("step > 1".into(), Sh::S));
        }
        let (src, sh) = opts.swap_remove(self.tape.pick(opts.len()));
        let e = E {
            src,
            sh,
            f64: false,
            bound: 1.0,
            grads: BTreeSet::new(),
            atom: false,
            leaf: true,
        };
        Self::coerce(e, want)
    }

    fn expr(&mut self, want: Sh, depth: u32) -> E {
        if depth == 0 || self.tape.pick(5) == 0 {
            return self.leaf(want);
        }
        let mut kinds = vec![
            Kind::Unary,
            Kind::Binary,
            Kind::Div,
            Kind::Exp,
            Kind::Log,
            Kind::Sqrt,
            Kind::Pow,
            Kind::MaxMin,
            Kind::Where,
            Kind::StopGrad,
        ];
        if self.sig.mode {
            kinds.push(Kind::If);
        }
        // Twice: the row-wise operations are where the backends differ most.
        match want {
            Sh::NC => kinds.extend([Kind::Softmax; 2]),
            Sh::N | Sh::N1 | Sh::C | Sh::S => kinds.extend([Kind::Reduce; 2]),
        }
        if self.sig.t && matches!(want, Sh::N | Sh::N1) {
            kinds.extend([Kind::Take; 2]);
        }
        let d = depth - 1;
        let e = match kinds[self.tape.pick(kinds.len())] {
            Kind::Unary => {
                let a = self.expr(want, d);
                let (f, b) = match self.tape.pick(6) {
                    0 => ("tanh", 1.0),
                    1 => ("sigmoid", 1.0),
                    2 => ("softplus", a.bound + 0.7),
                    3 => ("abs", a.bound),
                    4 => ("relu", a.bound),
                    _ => ("-", a.bound),
                };
                if f == "-" {
                    E::of(format!("-{}", a.p()), want, b, false, &[&a])
                } else if matches!(f, "abs" | "relu") {
                    E::of(format!("{f}({})", a.off_tie()), want, b + 0.1, true, &[&a])
                } else {
                    E::of(format!("{f}({})", a.src), want, b, true, &[&a])
                }
            }
            Kind::Binary => {
                let a = self.expr(want, d);
                let b = self.part(want, d);
                let (l, r) = self.ordered(a, b);
                let (op, bound) = match self.tape.pick(3) {
                    0 => ("+", l.bound + r.bound),
                    1 => ("*", l.bound * r.bound),
                    _ => ("-", l.bound + r.bound),
                };
                let src = format!("{} {op} {}", l.p(), r.p());
                E::of(src, want, bound, false, &[&l, &r])
            }
            Kind::Div => {
                let a = self.expr(want, d);
                let b = self.part(want, d);
                let (src, bound) = match self.tape.pick(4) {
                    0 => {
                        let b = self.shared(b.clone());
                        (
                            format!("{} / (1.0 + {} * {})", a.p(), b.src, b.src),
                            a.bound,
                        )
                    }
                    1 => (format!("{} / (2.0 + tanh({}))", a.p(), b.src), a.bound),
                    2 => (
                        format!("{} / exp(tanh({}))", a.p(), b.src),
                        a.bound * std::f64::consts::E,
                    ),
                    _ => (format!("{} / (1.0 + softplus({}))", a.p(), b.src), a.bound),
                };
                E::of(src, want, bound, false, &[&a, &b])
            }
            Kind::Exp => {
                let a = self.expr(want, d);
                let k = self.tape.pick(4);
                let (src, bound) = match k {
                    0 if a.bound <= 3.5 => (format!("exp({})", a.src), a.bound.exp()),
                    0 | 1 => (format!("exp(tanh({}))", a.src), std::f64::consts::E),
                    2 => (format!("exp(-softplus({}))", a.src), 1.0),
                    _ => (format!("expm1(tanh({}))", a.src), 2.0),
                };
                E::of(src, want, bound, true, &[&a])
            }
            Kind::Log => {
                let a = self.expr(want, d);
                let k = self.tape.pick(6);
                let (src, bound) = match k {
                    0 => {
                        let a = self.shared(a.clone());
                        (
                            format!("log(1.0 + {} * {})", a.src, a.src),
                            (1.0 + a.bound * a.bound).ln(),
                        )
                    }
                    1 => (format!("log(softplus({}))", a.src), a.bound + 1.0),
                    // Rewritten to log_sigmoid / log_softmax by the checker.
                    2 => (format!("log(sigmoid({}))", a.src), a.bound + 0.7),
                    3 if want == Sh::NC => (
                        format!("log(softmax({}, axis={}))", a.src, self.tape.pick(2)),
                        2.0 * a.bound + 2.3,
                    ),
                    3 | 4 => {
                        let a = self.shared(a.clone());
                        (
                            format!("log1p({} * {})", a.src, a.src),
                            (1.0 + a.bound * a.bound).ln(),
                        )
                    }
                    _ => (format!("log(2.0 + tanh({}))", a.src), 1.1),
                };
                E::of(src, want, bound, true, &[&a])
            }
            Kind::Sqrt => {
                let a = self.expr(want, d);
                let (src, bound) = match self.tape.pick(4) {
                    0 => {
                        let a = self.shared(a.clone());
                        (format!("sqrt(1.0 + {} * {})", a.src, a.src), 1.0 + a.bound)
                    }
                    1 => (format!("sqrt(sigmoid({}))", a.src), 1.0),
                    2 => (format!("sqrt(softplus({}))", a.src), (a.bound + 0.7).sqrt()),
                    _ => {
                        let a = self.shared(a.clone());
                        (format!("rsqrt(1.0 + {} * {})", a.src, a.src), 1.0)
                    }
                };
                E::of(src, want, bound, true, &[&a])
            }
            Kind::Pow => {
                let a = self.expr(want, d);
                let (src, bound) = match self.tape.pick(4) {
                    0 => (format!("{} ** 2", a.p()), a.bound * a.bound),
                    1 => {
                        let k = ["0.5", "1.5", "2.0", "3.0"][self.tape.pick(4)];
                        (format!("sigmoid({}) ** {k}", a.src), 1.0)
                    }
                    2 if !self.sig.params.is_empty() => {
                        (format!("sigmoid({}) ** (1.0 + abs(p0))", a.src), 1.0)
                    }
                    _ => {
                        let a = self.shared(a.clone());
                        (format!("(1.0 + {} * {}) ** (-0.5)", a.src, a.src), 1.0)
                    }
                };
                E::of(src, want, bound, false, &[&a])
            }
            Kind::MaxMin => {
                let a = self.expr(want, d);
                let b = self.part(want, d);
                let (l, r) = self.ordered(a, b);
                let f = if self.tape.pick(2) == 0 {
                    "maximum"
                } else {
                    "minimum"
                };
                let src = if l.leaf && r.leaf {
                    format!("{f}({}, {})", l.src, r.src)
                } else {
                    format!("{f}({}, {})", l.off_tie(), r.src)
                };
                E::of(src, want, l.bound.max(r.bound) + 0.1, true, &[&l, &r])
            }
            Kind::Where => {
                let c = self.cond(want);
                let a = self.expr(want, d);
                let b = self.part(want, d);
                let (l, r) = self.ordered(a, b);
                let src = format!("where({}, {}, {})", c.src, l.src, r.src);
                E::of(src, want, l.bound.max(r.bound), true, &[&l, &r])
            }
            Kind::StopGrad => {
                let a = self.expr(want, d);
                let mut e = E::of(format!("stop_grad({})", a.src), want, a.bound, true, &[&a]);
                e.grads.clear();
                e
            }
            Kind::If => {
                let mut a = self.expr(want, d);
                let mut b = self.expr(want, d);
                // Both branches must have one type.
                for e in [&mut a, &mut b] {
                    if e.f64 {
                        e.src = format!("f32({})", e.src);
                        e.f64 = false;
                        e.atom = true;
                    }
                }
                let src = format!("if mode == 0 {{ {} }} else {{ {} }}", a.src, b.src);
                E::of(src, want, a.bound.max(b.bound), false, &[&a, &b])
            }
            Kind::Softmax => {
                let a = self.expr(Sh::NC, d);
                let axis = self.tape.pick(2);
                if self.tape.pick(2) == 0 {
                    let src = format!("softmax({}, axis={axis})", a.src);
                    E::of(src, want, 1.0, true, &[&a])
                } else {
                    let src = format!("log_softmax({}, axis={axis})", a.src);
                    E::of(src, want, 2.0 * a.bound + 2.3, true, &[&a])
                }
            }
            Kind::Reduce => {
                // Bounds hold for the large batch too, whose sums over rows
                // would otherwise reach sigmoid's f32 underflow (where f32 and
                // the interpreter's f64 part ways).
                let (rows, cols) = (MAX_ROWS as f64, MAX_C as f64);
                let (arg, axis, count) = match want {
                    Sh::N | Sh::N1 => (Sh::NC, Some(1), cols),
                    Sh::C => (Sh::NC, Some(0), rows),
                    _ => match self.tape.pick(3) {
                        0 => (Sh::N, None, rows),
                        1 => (Sh::NC, None, rows * cols),
                        _ => (Sh::C, None, cols),
                    },
                };
                let a = self.expr(arg, d);
                let f = ["mean", "sum", "max", "min", "logsumexp"][self.tape.pick(5)];
                let bound = match f {
                    "sum" => a.bound * count,
                    "logsumexp" => a.bound + count.ln(),
                    _ => a.bound,
                };
                let mut args = a.src.clone();
                if let Some(k) = axis {
                    write!(args, ", axis={k}").expect("a String");
                }
                if want == Sh::N1 {
                    args.push_str(", keepdims=true");
                }
                E::of(format!("{f}({args})"), want, bound, true, &[&a])
            }
            Kind::Take => {
                let e = match self.tape.pick(3) {
                    0 => {
                        let a = self.expr(Sh::NC, d);
                        let src = format!("take({}, t, axis=1)", a.src);
                        E::of(src, Sh::N, a.bound, true, &[&a])
                    }
                    1 => {
                        let a = self.expr(Sh::NC, d);
                        let mut src = format!("take_along_axis({}, t[:, None], axis=1)", a.src);
                        if want == Sh::N {
                            src.push_str("[:, 0]");
                        }
                        E::of(src, want, a.bound, true, &[&a])
                    }
                    _ => {
                        let a = self.expr(Sh::C, d);
                        E::of(format!("take({}, t)", a.src), Sh::N, a.bound, true, &[&a])
                    }
                };
                Self::coerce(e, want)
            }
        };
        let e = if e.bound > LIMIT {
            let src = format!("8.0 * tanh(0.125 * {})", e.p());
            E::of(src, e.sh, 8.0, false, &[&e])
        } else {
            e
        };
        if depth >= 2 && self.tape.chance(20) {
            self.bind(e)
        } else {
            e
        }
    }
}

/// The source of the program on `tape`.
fn program_text(tape: &[u32]) -> String {
    let mut tape = Tape { v: tape, i: 0 };
    let sig = sig(&mut tape);
    let mut g = Gen {
        tape,
        sig,
        lets: vec![],
        stmts: vec![],
    };
    for r in 0..g.tape.pick(3) {
        let src = if g.tape.chance(20) {
            // Integer and bool reports, compared exactly: of inputs only, since
            // an argmax of computed values could flip on a last-bit difference.
            match g.tape.pick(4) {
                0 => "argmax(x, axis=1)".to_string(),
                1 => "argmin(x, axis=0)".to_string(),
                2 => format!("count({})", g.cond(Sh::NC).src),
                _ => g.cond(Sh::N).src,
            }
        } else {
            let sh = [Sh::S, Sh::N, Sh::NC, Sh::C, Sh::N1][g.tape.pick(5)];
            g.expr(sh, 3).src
        };
        g.stmts.push(format!("report r{r} = {src}"));
    }
    let f32_of = |e: &E| {
        if e.f64 {
            format!("f32({})", e.src)
        } else {
            e.p()
        }
    };
    if g.sig.s.is_some() {
        let e = g.expr(Sh::S, 3);
        g.stmts.push(format!("s <- 0.9 * s + 0.1 * {}", f32_of(&e)));
    }
    if g.sig.v {
        let e = g.expr(Sh::C, 3);
        g.stmts.push(format!("v <- 0.8 * v + 0.2 * {}", f32_of(&e)));
    }
    if g.sig.step {
        g.stmts.push("step <- step + 1".into());
    }
    let sh = [Sh::NC, Sh::N, Sh::S, Sh::C, Sh::N1][g.tape.pick(5)];
    let body = g.expr(sh, BODY_DEPTH);
    let mut loss = if sh == Sh::S {
        body.clone()
    } else {
        let f = if g.tape.pick(3) == 2 { "sum" } else { "mean" };
        E::of(format!("{f}({})", body.src), Sh::S, 0.0, true, &[&body])
    };
    let s = &g.sig;
    let mut diff = vec![("x", false)];
    if s.y == Some(true) {
        diff.push(("y", false));
    }
    if s.z == Some(true) {
        diff.push(("z", true));
    }
    for (name, f64) in diff {
        if !loss.grads.contains(name) {
            loss.src = format!("{} + 0.1 * mean(tanh({name}))", loss.p());
            loss.atom = false;
            loss.f64 |= f64;
        }
    }

    let mut inputs = vec!["x: f32[N, C] diff".to_string()];
    let diff = |d: bool| if d { " diff" } else { "" };
    if let Some(d) = s.y {
        inputs.push(format!("y: f32[N]{}", diff(d)));
    }
    if s.t {
        inputs.push("t: i64[N]".into());
    }
    if s.m {
        inputs.push("m: bool[N]".into());
    }
    if let Some(d) = s.z {
        inputs.push(format!("z: f64[N]{}", diff(d)));
    }
    let mut out = format!("loss random({}) -> f32 {{\n", inputs.join(", "));
    for (k, d) in s.params.iter().enumerate() {
        writeln!(out, "    param p{k}: f32 = {d}").expect("a String");
    }
    if s.mode {
        out.push_str("    param mode: i64 = 0\n");
    }
    if let Some(init) = s.s {
        writeln!(out, "    state s: f32 = {init}").expect("a String");
    }
    if s.v {
        out.push_str("    state v: f32[C] = 0.0\n");
    }
    if s.step {
        out.push_str("    state step: i64 = 0\n");
    }
    for st in &g.stmts {
        writeln!(out, "    {st}").expect("a String");
    }
    if loss.f64 {
        writeln!(out, "    f32({})", loss.src).expect("a String");
    } else {
        writeln!(out, "    {}", loss.src).expect("a String");
    }
    out.push_str("}\n");
    out
}

#[derive(Clone, Debug)]
struct Case {
    tape: Vec<u32>,
    n: usize,
    c: usize,
    /// Float data, at fixed offsets per input (so that shrinking one input
    /// leaves the others alone).
    floats: Vec<f64>,
    ints: Vec<u32>,
}

const X_AT: usize = 0;
const Y_AT: usize = X_AT + MAX_N * MAX_C;
const Z_AT: usize = Y_AT + MAX_N;
const S_AT: usize = Z_AT + MAX_N;
const V_AT: usize = S_AT + 1;
const P_AT: usize = V_AT + MAX_C;
const FLOATS: usize = P_AT + 2;
/// Per row: targets, then the mask.
const T_AT: usize = 0;
const M_AT: usize = T_AT + MAX_N;
/// Which params and state the call gives, the `mode` and `step` it gives, and
/// the large batch's size.
const FLAGS_AT: usize = M_AT + MAX_N;
const INTS: usize = FLAGS_AT + 4;

fn case() -> impl Strategy<Value = Case> {
    let value = prop_oneof![
        6 => (-RANGE as f32..RANGE as f32).prop_map(f64::from),
        1 => Just(0.0),
        // Exact ties (within a row, and with the comparison thresholds).
        1 => prop::sample::select(vec![1.0, -1.0, 0.5, -0.5, 2.0, -2.0, 3.0, -3.0]),
    ];
    (
        prop::collection::vec(any::<u32>(), 64..400),
        prop_oneof![1 => Just(1usize), 4 => 1usize..=MAX_N],
        prop_oneof![1 => Just(1usize), 4 => 1usize..=MAX_C],
        prop::collection::vec(value, FLOATS),
        prop::collection::vec(any::<u32>(), INTS),
    )
        .prop_map(|(tape, n, c, floats, ints)| Case {
            tape,
            n,
            c,
            floats,
            ints,
        })
}

/// The call for `p` on `case`'s data with `n` rows: every declared input,
/// some params overridden, and the state either given or left at its initial
/// value. Rows past the case's own (`n` > 9) reuse its values in another order.
fn call(p: &Program, case: &Case, n: usize) -> Call {
    let c = case.c;
    let f = &case.floats;
    let floats = |at: usize, own: usize, len: usize| -> Vec<f64> {
        (0..len)
            .map(|k| {
                if k < own {
                    f[at + k]
                } else {
                    f[(k * 7 + k / own) % FLOATS]
                }
            })
            .collect()
    };
    let ints = |at: usize, len: usize| -> Vec<u32> {
        (0..len)
            .map(|i| {
                let k = if i < MAX_N {
                    i
                } else {
                    (i * 5 + i / MAX_N) % MAX_N
                };
                case.ints[at + k]
            })
            .collect()
    };
    let g = &p.opt;
    let mut inputs = vec![];
    for decl in &g.inputs {
        let t = match decl.name.as_str() {
            "x" => Tensor::from_f64(DType::F32, vec![n, c], floats(X_AT, MAX_N * MAX_C, n * c)),
            "y" => Tensor::from_f64(DType::F32, vec![n], floats(Y_AT, MAX_N, n)),
            "z" => Tensor::from_f64(DType::F64, vec![n], floats(Z_AT, MAX_N, n)),
            "t" => Tensor::from_i64(
                vec![n],
                ints(T_AT, n)
                    .iter()
                    .map(|&i| (i as usize % c) as i64)
                    .collect(),
            ),
            "m" => Tensor::from_bool(vec![n], ints(M_AT, n).iter().map(|&i| i % 2 == 1).collect()),
            other => unreachable!("no input `{other}` is generated"),
        };
        inputs.push((decl.name.clone(), t));
    }
    let flags = case.ints[FLAGS_AT];
    let mut params = vec![];
    for (k, decl) in g.params.iter().enumerate() {
        if flags >> k & 1 == 0 {
            continue;
        }
        let v = match decl.name.as_str() {
            "mode" => Scalar::I(i64::from(case.ints[FLAGS_AT + 1] % 2)),
            _ => Scalar::F(f[P_AT + k % 2]),
        };
        params.push((decl.name.clone(), v));
    }
    let mut state = vec![];
    for (k, decl) in g.states.iter().enumerate() {
        if flags >> (8 + k) & 1 == 0 {
            continue;
        }
        let t = match decl.name.as_str() {
            "s" => Tensor::scalar_f(DType::F32, f[S_AT]),
            "v" => Tensor::from_f64(DType::F32, vec![c], f[V_AT..V_AT + c].to_vec()),
            "step" => Tensor::from_i64(vec![], vec![i64::from(case.ints[FLAGS_AT + 2] % 6)]),
            other => unreachable!("no state `{other}` is generated"),
        };
        state.push((decl.name.clone(), t));
    }
    Call {
        inputs,
        params,
        state,
        grads: true,
        ..Call::default()
    }
}

fn describe_call(call: &Call) -> String {
    let mut s = String::new();
    let tensor = |t: &Tensor| match &t.data {
        Data::F(v) => format!("{} {:?} {v:?}", t.dtype, t.shape),
        Data::I(v) => format!("i64 {:?} {v:?}", t.shape),
        Data::B(v) => format!("bool {:?} {v:?}", t.shape),
    };
    for (name, t) in &call.inputs {
        writeln!(s, "input {name}: {}", tensor(t)).expect("a String");
    }
    for (name, v) in &call.params {
        writeln!(s, "param {name} = {}", v.text()).expect("a String");
    }
    for (name, t) in &call.state {
        writeln!(s, "state {name}: {}", tensor(t)).expect("a String");
    }
    s
}

/// Element-wise: the same dtype and shape; ints and bools exactly; floats
/// within `rtol`·|want| + `atol`·max(1, max |want|), NaN exactly where `want`
/// has NaN, infinities equal.
fn close(what: &str, got: &Tensor, want: &Tensor, rtol: f64, atol: f64) -> Result<(), String> {
    if got.dtype != want.dtype || got.shape != want.shape {
        return Err(format!(
            "{what}: jit {} {:?}, interp {} {:?}",
            got.dtype, got.shape, want.dtype, want.shape
        ));
    }
    match (&got.data, &want.data) {
        (Data::F(a), Data::F(b)) => {
            let scale = b
                .iter()
                .filter(|x| x.is_finite())
                .fold(1.0f64, |m, x| m.max(x.abs()));
            for (i, (x, y)) in a.iter().zip(b).enumerate() {
                let ok = (x.is_nan() && y.is_nan())
                    || x == y
                    || (x - y).abs() <= rtol * y.abs() + atol * scale;
                if !ok {
                    return Err(format!("{what}[{i}]: jit {x}, interp {y}"));
                }
            }
            Ok(())
        }
        (a, b) if a == b => Ok(()),
        (a, b) => Err(format!("{what}: jit {a:?}, interp {b:?}")),
    }
}

/// Named tensors, in the same order with the same names.
fn all_close(
    what: &str,
    got: &[(String, Tensor)],
    want: &[(String, Tensor)],
    rtol: f64,
    atol: f64,
) -> Result<(), String> {
    let names = |v: &[(String, Tensor)]| v.iter().map(|(n, _)| n.clone()).collect::<Vec<_>>();
    if names(got) != names(want) {
        return Err(format!(
            "{what}: jit {:?}, interp {:?}",
            names(got),
            names(want)
        ));
    }
    for ((n, a), (_, b)) in got.iter().zip(want) {
        close(&format!("{what} {n}"), a, b, rtol, atol)?;
    }
    Ok(())
}

/// The conformance tolerances times `loose`.
fn agree(jit: &Outputs, interp: &Outputs, grads: bool, loose: f64) -> Result<(), String> {
    let l = |x: f64| Tensor::scalar_f(DType::F64, x);
    close("loss", &l(jit.loss), &l(interp.loss), 0.0, 1e-4 * loose)?;
    if grads {
        all_close(
            "grad",
            &jit.grads,
            &interp.grads,
            1e-3 * loose,
            1e-5 * loose,
        )?;
    }
    all_close(
        "report",
        &jit.reports,
        &interp.reports,
        1e-4 * loose,
        1e-5 * loose,
    )?;
    all_close(
        "state",
        &jit.state,
        &interp.state,
        1e-4 * loose,
        1e-5 * loose,
    )
}

fn bits(o: &Outputs) -> Vec<u64> {
    let mut v = vec![o.loss.to_bits()];
    for (_, t) in o.grads.iter().chain(&o.reports).chain(&o.state) {
        match &t.data {
            Data::F(x) => v.extend(x.iter().map(|x| x.to_bits())),
            Data::I(x) => v.extend(x.iter().map(|&x| x as u64)),
            Data::B(x) => v.extend(x.iter().map(|&x| u64::from(x))),
        }
    }
    v
}

/// One case; the error is self-contained (the program, its data, what differed).
fn check(case: &Case) -> Result<String, String> {
    let text = program_text(&case.tape);
    let fail = |call: Option<&Call>, why: String| {
        let data = call.map(describe_call).unwrap_or_default();
        format!("{why}\n--- random.loss ---\n{text}--- data ---\n{data}")
    };
    let p = compile(
        Source {
            name: "random.loss".into(),
            text: text.clone(),
        },
        &NoLoader,
        &CompileOptions::default(),
    )
    .map_err(|f| {
        let diags: Vec<String> = f
            .diags
            .iter()
            .map(|d| {
                let at = text.get(d.span.start..d.span.end).unwrap_or("");
                format!("{} {} at `{at}`", d.code, d.message)
            })
            .collect();
        fail(
            None,
            format!(
                "generator bug: the checker rejects the program:\n{}",
                diags.join("\n")
            ),
        )
    })?;
    let small = call(&p, case, case.n);
    // Enough rows that the JIT splits its row loops on 2 threads.
    let rows = 128 + case.ints[FLAGS_AT + 3] as usize % (MAX_ROWS - 127);
    let large = call(&p, case, rows);
    let mut current = &small;
    let run = catch_unwind(AssertUnwindSafe(|| -> Result<(), String> {
        let jit = Jit::new(&p.opt).map_err(|e| format!("the JIT does not compile: {e}"))?;
        let unfused =
            Jit::unfused(&p.opt).map_err(|e| format!("the unfused JIT does not compile: {e}"))?;
        let env = p.bind(&small).map_err(|e| format!("bind: {}", e.message))?;
        let interp = p
            .run_with(&Interp, &env, true, false)
            .map_err(|e| format!("the interpreter fails: {}", e.message))?;
        let one = p
            .run_with(&jit, &env, true, false)
            .map_err(|e| format!("the JIT fails: {}", e.message))?;
        agree(&one, &interp, true, 1.0)?;
        // The loss-only variant is a schedule of its own.
        let fwd = p
            .run_with(&jit, &env, false, false)
            .map_err(|e| format!("the JIT fails without gradients: {}", e.message))?;
        agree(&fwd, &interp, false, 1.0).map_err(|e| format!("without gradients: {e}"))?;
        let base = p
            .run_with(&unfused, &env, true, false)
            .map_err(|e| format!("the unfused JIT fails: {}", e.message))?;
        agree(&base, &interp, true, 1.0).map_err(|e| format!("unfused: {e}"))?;

        current = &large;
        let env = p.bind(&large).map_err(|e| format!("bind: {}", e.message))?;
        let interp = p
            .run_with(&Interp, &env, true, false)
            .map_err(|e| format!("the interpreter fails: {}", e.message))?;
        let one = p
            .run_with(&jit, &env, true, false)
            .map_err(|e| format!("the JIT fails: {}", e.message))?;
        // Sums over this many rows scale up rounding that is within the
        // tolerances at N ≤ 9 (an f32 tanh' of 0 where f64 has 6e-8, times a
        // gradient of N·C): checked against gross errors only, bit for bit
        // across thread counts below.
        let loose = (rows / MAX_N) as f64;
        agree(&one, &interp, true, loose).map_err(|e| format!("{loose}× the tolerances: {e}"))?;
        // Compiled code is cached per process, so a second JIT costs a lookup.
        let two = Jit::new(&p.opt)
            .map_err(|e| format!("the JIT does not compile: {e}"))?
            .with_threads(2);
        let two = p
            .run_with(&two, &env, true, false)
            .map_err(|e| format!("the JIT on 2 threads fails: {}", e.message))?;
        if bits(&two) != bits(&one) {
            return Err(format!(
                "2 threads change the bits: loss {} vs {}",
                two.loss, one.loss
            ));
        }
        Ok(())
    }));
    match run {
        Ok(Ok(())) => {
            if std::env::var_os("LOSSLANG_PRINT_PROGRAMS").is_some() {
                eprintln!("N={} C={}\n{text}", case.n, case.c);
            }
            Ok(text)
        }
        Ok(Err(e)) => Err(fail(Some(current), e)),
        Err(panic) => {
            let msg = panic
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()))
                .unwrap_or_default();
            Err(fail(Some(current), format!("panic: {msg}")))
        }
    }
}

/// Spellings that must each appear in some generated program: a generator
/// that stopped reaching an operation would otherwise go unnoticed.
const COVERED: [&str; 33] = [
    "argmax(",
    "argmin(",
    "count(",
    "tanh(",
    "sigmoid(",
    "softplus(",
    "abs(",
    "relu(",
    " * ",
    " + ",
    " - ",
    " / ",
    "exp(",
    "log(",
    "log1p(",
    "sqrt(",
    "rsqrt(",
    " ** ",
    "maximum(",
    "minimum(",
    "where(",
    "stop_grad(",
    "if mode == 0",
    "softmax(",
    "log_softmax(",
    "logsumexp(",
    "keepdims=true",
    "take(",
    "take_along_axis(",
    "one_hot(",
    "[:, None]",
    "report ",
    "step <- ",
];

/// Cases per run: about 16 ms each in release (two JIT compilations, three
/// interpreter runs); an unoptimised build is an order of magnitude slower.
const CASES: u32 = if cfg!(debug_assertions) { 32 } else { 256 };
const SEED: u64 = 0x1055;

#[test]
fn jit_matches_the_interpreter_on_random_programs() {
    let config = contextualize_config(Config {
        cases: CASES,
        failure_persistence: None,
        rng_seed: RngSeed::Fixed(SEED),
        max_shrink_iters: 4096,
        ..Config::default()
    });
    let default_run = config.cases == CASES && config.rng_seed == RngSeed::Fixed(SEED);
    let cases = config.cases;
    let seen = Mutex::new(vec![]);
    let mut runner = TestRunner::new(config);
    let result = runner.run(&case(), |c| {
        let text = check(&c).map_err(TestCaseError::fail)?;
        seen.lock().unwrap_or_else(|p| p.into_inner()).push(text);
        Ok(())
    });
    match result {
        Ok(()) => {}
        Err(TestError::Fail(why, _)) => panic!("the JIT and the interpreter disagree: {why}"),
        Err(TestError::Abort(why)) => panic!("aborted: {why}"),
    }
    let seen = seen.into_inner().unwrap_or_else(|p| p.into_inner());
    assert_eq!(seen.len(), cases as usize);
    // Other seeds and counts may miss a rare operation; the default run may not.
    if default_run && !cfg!(debug_assertions) {
        let missing: Vec<&str> = COVERED
            .iter()
            .copied()
            .filter(|s| !seen.iter().any(|t| t.contains(s)))
            .collect();
        assert!(missing.is_empty(), "no generated program uses {missing:?}");
    }
}
