//! The differential fuzzer's core, shared by the cargo-fuzz targets and by
//! `runtime/tests/hostile_programs.rs` (which includes this file with `#[path]`).
//!
//! From a byte string it generates a *well-typed* program over a subset of the
//! builtins (elementwise math, broadcasting, row/column reductions, softmax
//! family, gathers, one_hot, sort/cumsum, where/comparisons, stop_grad, `if` on
//! params and state, scalar and table state with a scatter update, reports),
//! plus matching data, and then checks:
//!
//! 1. the interpreter on the un-optimised gradient graph (`Program.grad`)
//!    against the interpreter on the optimised one (`Program.opt`) — loss,
//!    reports, state updates and gradients, over two calls carrying state; and
//!    the forward graph `Program.ir` for the loss and the state. This finds
//!    optimiser bugs with only the interpreter built;
//! 2. every other available backend against the interpreter, within the
//!    conformance tolerances;
//! 3. for programs without kinks on finite data, the compiled gradient against
//!    finite differences (`gradcheck`, which freezes discrete values).
//!
//! A failure is a `Finding` with a readable report (the program, the dims and
//! what disagreed); a program the checker rejects is a finding too, because the
//! generator only writes valid programs.

use losslang_compiler::backend::{Backend, Interp};
use losslang_compiler::ir::eval::{Env, eval};
use losslang_compiler::ir::{Graph, Handle};
use losslang_compiler::ops::Scalar;
use losslang_compiler::program::{Call, CompileOptions, compile};
use losslang_compiler::sema::{NoLoader, Source};
use losslang_compiler::value::{DType, Tensor};
use std::collections::BTreeMap;
use std::fmt::Write as _;

/// Reads decisions from the fuzz input; zeros once it is used up.
pub struct Choices<'a> {
    data: &'a [u8],
    pos: usize,
}

impl<'a> Choices<'a> {
    pub fn new(data: &'a [u8]) -> Self {
        Choices { data, pos: 0 }
    }

    pub fn byte(&mut self) -> u8 {
        let b = self.data.get(self.pos).copied().unwrap_or(0);
        self.pos += 1;
        b
    }

    /// A choice in `0..n` (`n > 0`).
    pub fn below(&mut self, n: usize) -> usize {
        let v = (usize::from(self.byte()) << 8) | usize::from(self.byte());
        v % n.max(1)
    }

    /// True with probability about `k / 256`.
    pub fn chance(&mut self, k: u8) -> bool {
        self.byte() < k
    }

    /// The bytes not consumed yet (they seed the data).
    pub fn rest_seed(&self) -> u64 {
        let mut h: u64 = 0xcbf2_9ce4_8422_2325;
        for &b in self.data.get(self.pos..).unwrap_or(&[]) {
            h = (h ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3);
        }
        h
    }
}

/// SplitMix64, for the data.
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Self {
        Rng(seed)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    pub fn uniform(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 * (1.0 / (1u64 << 53) as f64)
    }

    pub fn normal(&mut self) -> f64 {
        let (u0, u1) = (self.uniform(), self.uniform());
        (-2.0 * (1.0 - u0).ln()).sqrt() * (2.0 * std::f64::consts::PI * u1).cos()
    }

    pub fn below(&mut self, n: u64) -> u64 {
        if n == 0 { 0 } else { self.next_u64() % n }
    }
}

/// The shapes the generator works with: `x: f32[N, C]`, `y: f32[N]`, scalars.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Ty {
    Mat,
    Vec,
    Sc,
}

/// What kind of data the program gets.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum DataMode {
    /// Standard normal floats.
    Normal,
    /// Some entries at ±1e4, ±30 or exactly 0.
    Extreme,
    /// Floats on a coarse grid (multiples of 0.5), so ties and exact zeros are common.
    Ties,
}

/// A generated program and what it needs.
pub struct Generated {
    pub source: String,
    pub dims: BTreeMap<String, i64>,
    pub mode: DataMode,
    pub param: Option<f64>,
    /// Whether the program is free of kinks (abs, relu, min/max, clamp, sort), so that a
    /// finite-difference check is meaningful.
    pub smooth: bool,
    pub data_seed: u64,
}

struct Gen<'c, 'a> {
    c: &'c mut Choices<'a>,
    lets: Vec<(String, Ty)>,
    body: String,
    smooth: bool,
    has_table: bool,
    has_scalar_state: bool,
    has_counter: bool,
    budget: usize,
}

impl Gen<'_, '_> {
    fn pick_var(&mut self, t: Ty) -> Option<String> {
        let vs: Vec<&String> = self
            .lets
            .iter()
            .filter(|(_, ty)| *ty == t)
            .map(|(n, _)| n)
            .collect();
        if vs.is_empty() {
            return None;
        }
        let i = self.c.below(vs.len());
        Some(vs[i].clone())
    }

    fn constant(&mut self) -> String {
        const CS: [&str; 10] = [
            "0.5", "2.0", "1.0", "0.1", "3.0", "0.0", "1e-3", "0.25", "4.0", "1.5",
        ];
        CS[self.c.below(CS.len())].to_string()
    }

    fn leaf(&mut self, t: Ty) -> String {
        if self.c.chance(90)
            && let Some(v) = self.pick_var(t)
        {
            return v;
        }
        match t {
            Ty::Mat => match self.c.below(4) {
                0 | 1 => "x".into(),
                2 => "one_hot(t, C)".into(),
                _ => "f32(m)[:, None] * x".into(),
            },
            Ty::Vec => match self.c.below(6) {
                0..=2 => "y".into(),
                3 => "f32(m)".into(),
                4 if self.has_table => "take(tab, ids)".into(),
                _ => "take(x, t, axis=1)".into(),
            },
            Ty::Sc => match self.c.below(6) {
                0 => "p0".into(),
                1 if self.has_scalar_state => "s".into(),
                2 if self.has_counter => "f32(k)".into(),
                _ => self.constant(),
            },
        }
    }

    fn cond(&mut self, t: Ty) -> String {
        match (t, self.c.below(3)) {
            (Ty::Vec, 0) => "m".into(),
            (Ty::Mat, 0) => "m[:, None]".into(),
            _ => {
                let a = self.expr(t, 1);
                let b = self.expr(t, 1);
                const OPS: [&str; 4] = [">", "<=", ">=", "<"];
                format!("({a} {} {b})", OPS[self.c.below(4)])
            }
        }
    }

    fn expr(&mut self, t: Ty, depth: usize) -> String {
        if self.budget == 0 || depth == 0 || self.c.chance(40) {
            return self.leaf(t);
        }
        self.budget -= 1;
        let d = depth - 1;
        match self.c.below(14) {
            0 => {
                const SMOOTH: [&str; 6] =
                    ["tanh", "sigmoid", "log_sigmoid", "softplus", "sin", "cos"];
                let f = SMOOTH[self.c.below(SMOOTH.len())];
                format!("{f}({})", self.expr(t, d))
            }
            1 => {
                const KINK: [&str; 2] = ["abs", "relu"];
                self.smooth = false;
                let f = KINK[self.c.below(2)];
                format!("{f}({})", self.expr(t, d))
            }
            2 => {
                let a = self.expr(t, d);
                match self.c.below(4) {
                    0 => format!("exp(tanh({a}))"),
                    1 => format!("log1p({a} * {a})"),
                    2 => format!("sqrt({a} * {a} + 1.0)"),
                    _ => format!("({a}) ** 2"),
                }
            }
            3 | 4 => {
                let a = self.expr(t, d);
                let b = self.expr(t, d);
                const OPS: [&str; 3] = ["+", "-", "*"];
                format!("({a} {} {b})", OPS[self.c.below(3)])
            }
            5 => {
                let a = self.expr(t, d);
                let b = self.expr(t, d);
                format!("({a} / (1.0 + {b} * {b}))")
            }
            6 => {
                // Broadcasting: a lower-rank operand.
                let lower = match t {
                    Ty::Mat => {
                        if self.c.chance(128) {
                            format!("({})[:, None]", self.expr(Ty::Vec, d))
                        } else {
                            self.expr(Ty::Sc, d)
                        }
                    }
                    Ty::Vec | Ty::Sc => self.expr(Ty::Sc, d),
                };
                let a = self.expr(t, d);
                const OPS: [&str; 3] = ["+", "-", "*"];
                format!("({a} {} {lower})", OPS[self.c.below(3)])
            }
            7 => {
                self.smooth = false;
                let a = self.expr(t, d);
                let b = self.expr(t, d);
                match self.c.below(3) {
                    0 => format!("minimum({a}, {b})"),
                    1 => format!("maximum({a}, {b})"),
                    _ => format!("clamp({a}, -1.0, 1.0)"),
                }
            }
            8 => {
                let c = self.cond(t);
                let a = self.expr(t, d);
                let b = self.expr(t, d);
                format!("where({c}, {a}, {b})")
            }
            9 => format!("stop_grad({})", self.expr(t, d)),
            10 => self.reduce_into(t, d),
            11 => match t {
                Ty::Mat => {
                    let a = self.expr(Ty::Mat, d);
                    match self.c.below(3) {
                        0 => format!("softmax({a}, axis=1)"),
                        1 => format!("log_softmax({a}, axis=1)"),
                        _ => format!("normalize({a}, axis=1)"),
                    }
                }
                Ty::Vec => {
                    let a = self.expr(Ty::Vec, d);
                    match self.c.below(3) {
                        0 => format!("cumsum({a}, axis=0)"),
                        1 => {
                            self.smooth = false;
                            format!("sort({a})")
                        }
                        _ => format!("softmax({a}, axis=0)"),
                    }
                }
                Ty::Sc => self.reduce_into(Ty::Sc, d),
            },
            12 => {
                // `if` on a param or on the step counter: a scalar condition.
                let cond = if self.has_counter && self.c.chance(128) {
                    "k > 0".to_string()
                } else {
                    "p0 > 0.3".to_string()
                };
                let a = self.expr(t, d);
                let b = self.expr(t, d);
                format!("(if {cond} {{ {a} }} else {{ {b} }})")
            }
            _ => match t {
                Ty::Vec => {
                    let m = self.expr(Ty::Mat, d);
                    format!("take({m}, t, axis=1)")
                }
                _ => {
                    let a = self.expr(t, d);
                    format!("(-{a})")
                }
            },
        }
    }

    /// A reduction whose result has type `t`.
    fn reduce_into(&mut self, t: Ty, d: usize) -> String {
        let (src, axis) = match t {
            Ty::Mat => return self.expr(Ty::Mat, d),
            Ty::Vec => (self.expr(Ty::Mat, d), ", axis=1"),
            Ty::Sc => {
                if self.c.chance(128) {
                    (self.expr(Ty::Vec, d), "")
                } else {
                    (self.expr(Ty::Mat, d), "")
                }
            }
        };
        const R: [&str; 6] = ["sum", "mean", "logsumexp", "max", "min", "norm"];
        let r = R[self.c.below(R.len())];
        if matches!(r, "max" | "min" | "norm") {
            self.smooth = false;
        }
        format!("{r}({src}{axis})")
    }
}

/// Generates a program and its data description from `bytes`.
pub fn generate(bytes: &[u8]) -> Generated {
    let mut c = Choices::new(bytes);
    let n = c.below(6) as i64; // N = 0 is an empty batch
    let cc = 1 + c.below(4) as i64;
    let has_table = c.chance(70);
    let has_scalar_state = c.chance(100);
    let has_counter = c.chance(80);
    let mode = match c.below(4) {
        0 => DataMode::Extreme,
        1 => DataMode::Ties,
        _ => DataMode::Normal,
    };
    let param = if c.chance(60) {
        Some([0.0, 0.2, 0.5, 1.0, -1.0][c.below(5)])
    } else {
        None
    };
    let mut g = Gen {
        c: &mut c,
        lets: vec![],
        body: String::new(),
        smooth: true,
        has_table,
        has_scalar_state,
        has_counter,
        budget: 40,
    };
    let nlets = g.c.below(5);
    for i in 0..nlets {
        let t = [Ty::Mat, Ty::Vec, Ty::Sc][g.c.below(3)];
        let e = g.expr(t, 4);
        let _ = writeln!(g.body, "    let v{i} = {e}");
        g.lets.push((format!("v{i}"), t));
    }
    let mut tail = String::new();
    if g.c.chance(100) {
        let e = g.expr(Ty::Sc, 3);
        let _ = writeln!(tail, "    report r0 = {e}");
    }
    if g.c.chance(60) {
        let e = g.expr(Ty::Vec, 3);
        let _ = writeln!(tail, "    report r1 = {e}");
    }
    if has_scalar_state {
        let e = g.expr(Ty::Sc, 3);
        let _ = writeln!(tail, "    s <- 0.9 * s + 0.1 * tanh({e})");
    }
    if has_counter {
        let _ = writeln!(tail, "    k <- k + 1");
    }
    if has_table {
        let e = g.expr(Ty::Vec, 3);
        let _ = writeln!(tail, "    tab[ids] <- tanh({e})");
    }
    let lv = g.expr(Ty::Vec, 4);
    let lm = g.expr(Ty::Mat, 4);
    let ls = g.expr(Ty::Sc, 3);
    let _ = writeln!(
        tail,
        "    sum({lv}) + mean({lm}) + {ls} + 1e-3 * (sum(x) + sum(y))"
    );
    let smooth = g.smooth;
    let body = std::mem::take(&mut g.body);
    let mut src = String::from("loss fz(x: f32[N, C] diff, y: f32[N] diff, t: i64[N], m: bool[N]");
    if has_table {
        src.push_str(", ids: i64[N]");
    }
    src.push_str(") -> f32 {\n    param p0: f32 = 0.5\n");
    if has_scalar_state {
        src.push_str("    state s: f32 = 0.25\n");
    }
    if has_counter {
        src.push_str("    state k: i64 = 0\n");
    }
    if has_table {
        src.push_str("    state tab: f32[M] = 0.5\n");
    }
    src.push_str(&body);
    src.push_str(&tail);
    src.push_str("}\n");
    let mut dims = BTreeMap::new();
    dims.insert("N".to_string(), n);
    dims.insert("C".to_string(), cc);
    if has_table {
        dims.insert("M".to_string(), n + c.below(4) as i64);
    }
    Generated {
        source: src,
        dims,
        mode,
        param,
        smooth,
        data_seed: c.rest_seed(),
    }
}

fn float_value(rng: &mut Rng, mode: DataMode) -> f64 {
    let v = match mode {
        DataMode::Normal => rng.normal(),
        DataMode::Extreme => match rng.below(8) {
            0 => 1e4,
            1 => -1e4,
            2 => 30.0,
            3 => -30.0,
            4 => 0.0,
            _ => rng.normal(),
        },
        DataMode::Ties => (rng.normal() * 2.0).round() * 0.5,
    };
    f64::from(v as f32)
}

/// Inputs for a generated program (labels below C, distinct ids below M).
pub fn make_inputs(spec: &Generated) -> Vec<(String, Tensor)> {
    let n = spec.dims["N"] as usize;
    let c = spec.dims["C"] as usize;
    let mut rng = Rng::new(spec.data_seed);
    let x: Vec<f64> = (0..n * c)
        .map(|_| float_value(&mut rng, spec.mode))
        .collect();
    let y: Vec<f64> = (0..n).map(|_| float_value(&mut rng, spec.mode)).collect();
    let t: Vec<i64> = (0..n).map(|_| rng.below(c as u64) as i64).collect();
    let m: Vec<bool> = (0..n).map(|_| rng.next_u64() & 1 == 1).collect();
    let mut out = vec![
        ("x".to_string(), Tensor::from_f64(DType::F32, vec![n, c], x)),
        ("y".to_string(), Tensor::from_f64(DType::F32, vec![n], y)),
        ("t".to_string(), Tensor::from_i64(vec![n], t)),
        ("m".to_string(), Tensor::from_bool(vec![n], m)),
    ];
    if let Some(&mm) = spec.dims.get("M") {
        let mut pool: Vec<i64> = (0..mm).collect();
        for i in 0..n {
            let j = i + rng.below((pool.len() - i) as u64) as usize;
            pool.swap(i, j);
        }
        pool.truncate(n);
        out.push(("ids".to_string(), Tensor::from_i64(vec![n], pool)));
    }
    out
}

/// Whether two values agree: equal non-finite values, or `|a - b| <= atol + rtol |b|`.
pub fn close(a: f64, b: f64, rtol: f64, atol: f64) -> bool {
    if a.is_nan() || b.is_nan() {
        return a.is_nan() && b.is_nan();
    }
    if a.is_infinite() || b.is_infinite() {
        return a == b;
    }
    (a - b).abs() <= atol + rtol * b.abs()
}

/// Compares two tensors elementwise; `None` when they agree. `atol` is scaled by the
/// largest finite magnitude of `want` (at least 1).
pub fn compare(what: &str, got: &Tensor, want: &Tensor, rtol: f64, atol: f64) -> Option<String> {
    if got.shape != want.shape {
        return Some(format!(
            "{what}: shape {:?}, expected {:?}",
            got.shape, want.shape
        ));
    }
    let (g, w) = (got.to_f64_vec(), want.to_f64_vec());
    let scale = w
        .iter()
        .filter(|v| v.is_finite())
        .fold(1.0f64, |m, v| m.max(v.abs()));
    for (i, (a, b)) in g.iter().zip(&w).enumerate() {
        if !close(*a, *b, rtol, atol * scale) {
            return Some(format!(
                "{what}[{i}]: {a:e}, expected {b:e} (rtol {rtol:e}, atol {:e})",
                atol * scale
            ));
        }
    }
    None
}

/// Results of one call of a graph, evaluated raw: loss, reports, new state (full
/// values, in state order), gradients.
struct Raw {
    loss: Tensor,
    reports: Vec<Tensor>,
    state: Vec<Tensor>,
    grads: Vec<Tensor>,
}

fn eval_raw(g: &Graph, env: &Env, with_grads: bool) -> Result<Raw, String> {
    let mut roots: Vec<Handle> = vec![g.loss()];
    roots.extend(g.reports.iter().map(|(_, h)| *h));
    roots.extend(g.updates.iter().map(|u| u.value));
    if with_grads {
        roots.extend(g.grads.iter().map(|(_, h)| *h));
    }
    let vals = eval(g, env, &roots).map_err(|e| format!("{:?}", e.error))?;
    let mut it = vals.into_iter();
    let loss = it.next().ok_or("no loss")?;
    let reports: Vec<Tensor> = g.reports.iter().filter_map(|_| it.next()).collect();
    let mut state = env.state.clone();
    for u in &g.updates {
        state[u.state] = it.next().ok_or("missing update")?;
    }
    let grads: Vec<Tensor> = if with_grads {
        g.grads.iter().filter_map(|_| it.next()).collect()
    } else {
        vec![]
    };
    Ok(Raw {
        loss,
        reports,
        state,
        grads,
    })
}

/// What the differential check concluded.
#[derive(Debug)]
pub enum Outcome {
    /// Every comparison agreed (how many backends besides the interpreter ran, whether
    /// the finite-difference check ran, and whether the backend comparison was cut short
    /// as f32-conditioned: a decision within rounding of flipping, or every f32 backend
    /// parting from the interpreter alike).
    Agreed {
        backends: usize,
        gradchecked: bool,
        f32_conditioned: bool,
    },
    /// The data hit a data-dependent error on the interpreter (not a finding when
    /// every graph and backend reports it too).
    DataError,
}

/// A disagreement or an unexpected rejection, with everything needed to reproduce it.
#[derive(Debug)]
pub struct Finding {
    pub what: String,
    pub source: String,
    pub dims: BTreeMap<String, i64>,
}

impl std::fmt::Display for Finding {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{}\n--- dims {:?}\n--- program\n{}",
            self.what, self.dims, self.source
        )
    }
}

/// The backends besides the interpreter that this build contains.
pub fn other_backends() -> Vec<Backend> {
    [Backend::Jit, Backend::Candle]
        .into_iter()
        .filter(|b| losslang_runtime::backends::available(*b))
        .collect()
}

/// Generates a program from `bytes` and runs every differential check on it.
pub fn differential(bytes: &[u8]) -> Result<Outcome, Finding> {
    let spec = generate(bytes);
    check_program(&spec)
}

/// Where `got` leaves the conformance tolerances around `want`, widened by the
/// interpreter's spread under input noise and by f32 rounding of the largest value
/// each result depends on; `None` when it does not.
fn disagreement(
    want: &[(String, Vec<f64>, f64, f64)],
    got: &[(String, Vec<f64>, f64, f64)],
    spread: &[Vec<f64>],
    cones: &[f64],
) -> Option<String> {
    let mut d = vec![];
    for ((((name, want_v, rtol, atol), (_, got_v, _, _)), sp), cone) in
        want.iter().zip(got).zip(spread).zip(cones)
    {
        if want_v.len() != got_v.len() {
            d.push(format!(
                "{name}: {} values, expected {}",
                got_v.len(),
                want_v.len()
            ));
            continue;
        }
        let scale = want_v
            .iter()
            .filter(|v| v.is_finite())
            .fold(1.0f64, |m, v| m.max(v.abs()));
        for (i, ((x, y), s)) in got_v.iter().zip(want_v).zip(sp).enumerate() {
            if s.is_infinite() {
                continue;
            }
            let f32_noise = 4.0 * f64::from(f32::EPSILON) * cone;
            if !close(*x, *y, *rtol, atol * scale + 8.0 * s + f32_noise) {
                d.push(format!(
                    "{name}[{i}]: {x:e}, expected {y:e} (interpreter spread {s:e}, \
                     largest value feeding it {cone:e})"
                ));
                break;
            }
        }
    }
    if d.is_empty() {
        None
    } else {
        Some(d.join("; "))
    }
}

/// Every result of a call as (name, values, rtol, atol) with the conformance tolerances.
fn flatten_outputs(o: &losslang_compiler::program::Outputs) -> Vec<(String, Vec<f64>, f64, f64)> {
    let mut v = vec![("loss".to_string(), vec![o.loss], 2e-4, 2e-4)];
    for (n, t) in &o.grads {
        v.push((format!("grad {n}"), t.to_f64_vec(), 1e-3, 1e-5));
    }
    for (n, t) in &o.state {
        v.push((format!("state {n}"), t.to_f64_vec(), 2e-4, 2e-4));
    }
    for (n, t) in &o.reports {
        v.push((format!("report {n}"), t.to_f64_vec(), 2e-4, 2e-4));
    }
    v
}

/// Whether some discrete decision of the program sits within rounding of flipping: a
/// comparison, `minimum`/`maximum`, or the kink of `relu`/`abs`/`sign`/`floor`/`round`,
/// whose operands differ by less than 1e-5 of their size without being equal. f32 and
/// f64 may decide those differently (the conformance cases are screened the same way).
/// Exact ties are kept: their outcome must be the same everywhere.
fn near_ties(g: &Graph, vals: &[Tensor]) -> bool {
    use losslang_compiler::ops::{BinaryOp as B, Op, UnaryOp as U};
    let near = |a: f64, b: f64| {
        let gap = (a - b).abs();
        gap > 0.0 && gap <= 1e-5 * a.abs().max(b.abs()).max(1.0)
    };
    for (i, n) in g.nodes.iter().enumerate() {
        match &n.op {
            Op::Binary(B::Lt | B::Le | B::Gt | B::Ge | B::Eq | B::Ne | B::Maximum | B::Minimum) => {
                let (a, b) = (&vals[n.args[0].index()], &vals[n.args[1].index()]);
                if !a.dtype.is_float() && !b.dtype.is_float() {
                    continue;
                }
                let (av, bv) = (a.to_f64_vec(), b.to_f64_vec());
                let out = &vals[i].shape;
                let total: usize = out.iter().product();
                for flat in 0..total {
                    let ia = broadcast_index(flat, out, &a.shape);
                    let ib = broadcast_index(flat, out, &b.shape);
                    if near(av[ia], bv[ib]) {
                        return true;
                    }
                }
            }
            Op::Unary(U::Relu | U::Abs | U::Sign | U::Floor | U::Round) => {
                let a = vals[n.args[0].index()].to_f64_vec();
                let kink = |x: f64| match n.op {
                    Op::Unary(U::Floor | U::Round) => {
                        (x - x.round()).abs().min((x - x.floor() - 0.5).abs())
                    }
                    _ => x.abs(),
                };
                if a.iter().any(|x| {
                    let d = kink(*x);
                    d > 0.0 && d <= 1e-6 * x.abs().max(1.0)
                }) {
                    return true;
                }
            }
            _ => {}
        }
    }
    false
}

/// The flat index into an operand of shape `shape` (broadcast NumPy-style to `out`) for
/// the element `flat` of the result.
fn broadcast_index(flat: usize, out: &[usize], shape: &[usize]) -> usize {
    let mut rem = flat;
    let mut idx = 0;
    let mut stride = 1;
    let off = out.len() - shape.len().min(out.len());
    for (k, &d) in out.iter().enumerate().rev() {
        let pos = rem % d.max(1);
        rem /= d.max(1);
        if k >= off {
            let sd = shape[k - off];
            if sd != 1 {
                idx += pos * stride;
            }
            stride *= sd;
        }
    }
    idx
}

/// For each result of `flatten_outputs` (same order), the largest finite magnitude of
/// any float value it depends on: an f32 backend's rounding error scales with it.
fn output_cones(g: &Graph, env: &Env) -> Vec<f64> {
    let all: Vec<Handle> = (0..g.len()).map(|i| Handle(i as u32)).collect();
    let Ok(vals) = eval(g, env, &all) else {
        return vec![f64::INFINITY; 1 + g.grads.len() + g.states.len() + g.reports.len()];
    };
    let mut cone = vec![0.0f64; g.len()];
    for (i, n) in g.nodes.iter().enumerate() {
        let own = match &vals[i].data {
            losslang_compiler::value::Data::F(v) => v
                .iter()
                .filter(|x| x.is_finite())
                .fold(0.0f64, |m, x| m.max(x.abs())),
            _ => 0.0,
        };
        cone[i] = n.args.iter().fold(own, |m, a| m.max(cone[a.index()]));
    }
    let at = |h: Handle| cone[h.index()];
    let mut out = vec![at(g.loss())];
    out.extend(g.grads.iter().map(|(_, h)| at(*h)));
    for k in 0..g.states.len() {
        out.push(
            g.updates
                .iter()
                .find(|u| u.state == k)
                .map_or(0.0, |u| at(u.value)),
        );
    }
    out.extend(g.reports.iter().map(|(_, h)| at(*h)));
    out
}

/// `env` with every float input multiplied by `1 + u * 2^-22`, `u` uniform in [-1, 1].
fn perturbed(env: &Env, seed: u64) -> Env {
    let mut rng = Rng::new(seed);
    let mut e = env.clone();
    for t in &mut e.inputs {
        if let losslang_compiler::value::Data::F(v) = &mut t.data {
            for x in v.iter_mut() {
                *x *= 1.0 + (2.0 * rng.uniform() - 1.0) * (1.0 / f64::from(1u32 << 22));
            }
        }
    }
    e
}

/// A readable account of one generated case: the program, its data and each
/// backend's results (for triage and for the regression files).
pub fn describe(spec: &Generated) -> String {
    let mut s = format!(
        "// fuzz-differential {} mode={:?}{} seed={} smooth={}\n{}",
        spec.dims
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect::<Vec<_>>()
            .join(" "),
        spec.mode,
        spec.param
            .map(|p| format!(" param={p}"))
            .unwrap_or_default(),
        spec.data_seed,
        spec.smooth,
        spec.source
    );
    for (n, t) in make_inputs(spec) {
        let _ = writeln!(s, "// input {n} {:?} = {:?}", t.shape, t.to_f64_vec());
    }
    let Ok(p) = compile(
        Source {
            name: "fz.loss".into(),
            text: spec.source.clone(),
        },
        &NoLoader,
        &CompileOptions::default(),
    ) else {
        s.push_str("// does not compile\n");
        return s;
    };
    let mut call = Call {
        inputs: make_inputs(spec),
        dims: spec.dims.clone(),
        grads: true,
        ..Call::default()
    };
    if let Some(v) = spec.param {
        call.params.push(("p0".into(), Scalar::F(v)));
    }
    let env = match p.bind(&call) {
        Ok(e) => e,
        Err(e) => {
            let _ = writeln!(s, "// bind: {}", e.message);
            return s;
        }
    };
    let mut runs: Vec<(String, Box<dyn losslang_compiler::backend::Executor>)> =
        vec![("interp".into(), Box::new(Interp))];
    for b in other_backends() {
        if let Ok(e) = losslang_runtime::backends::executor(b, &p, "cpu") {
            runs.push((b.name().to_string(), e));
        }
    }
    for (name, exec) in &runs {
        match p.run_with(exec.as_ref(), &env, true, false) {
            Ok(o) => {
                let _ = writeln!(s, "// {name}: loss {:e}", o.loss);
                for (n, t) in o.reports.iter().chain(&o.state).chain(&o.grads) {
                    let _ = writeln!(s, "//   {n} = {:?}", t.to_f64_vec());
                }
            }
            Err(e) => {
                let _ = writeln!(s, "// {name}: error {}", e.message);
            }
        }
    }
    s
}

/// Runs the differential checks on a generated (or stored regression) program.
pub fn check_program(spec: &Generated) -> Result<Outcome, Finding> {
    let finding = |what: String| Finding {
        what,
        source: spec.source.clone(),
        dims: spec.dims.clone(),
    };
    let p = compile(
        Source {
            name: "fz.loss".into(),
            text: spec.source.clone(),
        },
        &NoLoader,
        &CompileOptions::default(),
    )
    .map_err(|f| {
        finding(format!(
            "the checker rejected a generated (valid) program: {}",
            f.diags
                .iter()
                .filter(|d| d.is_error())
                .map(|d| format!("{}: {}", d.code, d.message))
                .collect::<Vec<_>>()
                .join("; ")
        ))
    })?;
    let mut call = Call {
        inputs: make_inputs(spec),
        dims: spec.dims.clone(),
        grads: true,
        ..Call::default()
    };
    if !spec.dims.contains_key("M") {
        call.dims.remove("M");
    }
    if let Some(v) = spec.param {
        call.params.push(("p0".into(), Scalar::F(v)));
    }
    let env0 = p
        .bind(&call)
        .map_err(|e| finding(format!("bind failed on valid data: {}", e.message)))?;

    // 1. Interpreter: the gradient graph as built vs the optimised graph, two calls.
    let mut env_grad = env0.clone();
    let mut env_opt = env0.clone();
    for step in 0..2 {
        let a = eval_raw(&p.grad, &env_grad, true);
        let b = eval_raw(&p.opt, &env_opt, true);
        let (a, b) = match (a, b) {
            (Ok(a), Ok(b)) => (a, b),
            (Err(_), Err(_)) => return Ok(Outcome::DataError),
            (Err(e), Ok(_)) => {
                return Err(finding(format!(
                    "step {step}: the unoptimised graph fails ({e}) but the optimised one runs"
                )));
            }
            (Ok(_), Err(e)) => {
                return Err(finding(format!(
                    "step {step}: the optimised graph fails ({e}) but the unoptimised one runs"
                )));
            }
        };
        // Constant folding rounds f32 constants to f32 (`1.0 + 1e-3` becomes 1.001f32), which
        // the unfolded graph computes in f64: the two agree to f32 precision, not better.
        let (rt, at) = (1e-5, 1e-7);
        let mut diffs = vec![];
        diffs.extend(compare("loss", &b.loss, &a.loss, rt, at));
        for (i, (x, y)) in b.reports.iter().zip(&a.reports).enumerate() {
            diffs.extend(compare(&format!("report {i}"), x, y, rt, at));
        }
        for (i, (x, y)) in b.state.iter().zip(&a.state).enumerate() {
            diffs.extend(compare(&format!("state {i}"), x, y, rt, at));
        }
        for (i, (x, y)) in b.grads.iter().zip(&a.grads).enumerate() {
            diffs.extend(compare(&format!("grad {i}"), x, y, rt, at));
        }
        if b.grads.len() != a.grads.len() || b.state.len() != a.state.len() {
            diffs.push("different numbers of results".into());
        }
        if !diffs.is_empty() {
            return Err(finding(format!(
                "step {step}: Program.opt disagrees with Program.grad on the interpreter: {}",
                diffs.join("; ")
            )));
        }
        // The forward graph alone gives the same loss and state.
        if step == 0 {
            let f = eval_raw(&p.ir, &env0, false)
                .map_err(|e| finding(format!("Program.ir fails ({e}) where Program.opt runs")))?;
            let mut d = vec![];
            d.extend(compare("loss", &b.loss, &f.loss, rt, at));
            for (i, (x, y)) in b.state.iter().zip(&f.state).enumerate() {
                d.extend(compare(&format!("state {i}"), x, y, rt, at));
            }
            if !d.is_empty() {
                return Err(finding(format!(
                    "Program.opt disagrees with the forward graph Program.ir: {}",
                    d.join("; ")
                )));
            }
        }
        env_grad.state = a.state;
        env_opt.state = b.state;
    }

    // 2. Every other backend against the interpreter (through `run_with`, as lossc does).
    // The f32 backends round every operation; where the program amplifies rounding
    // (a discrete decision at a near-tie, a cancellation, `normalize` of a zero row),
    // f32 and f64 legitimately part. The interpreter's own spread under relative input
    // noise of about 2^-22 (a few f32 ulps) measures that, and widens the tolerance.
    let others = other_backends();
    let mut execs = vec![];
    for b in &others {
        let exec = losslang_runtime::backends::executor(*b, &p, "cpu")
            .map_err(|e| finding(format!("no executor for {b:?}: {}", e.message)))?;
        execs.push(exec);
    }
    let mut env_i = env0.clone();
    let mut envs: Vec<Env> = execs.iter().map(|_| env0.clone()).collect();
    let mut f32_conditioned = false;
    'steps: for step in 0..2 {
        let want = p.run_with(&Interp, &env_i, true, false);
        let mut gots = vec![];
        for (exec, env_b) in execs.iter().zip(&envs) {
            let got = p.run_with(exec.as_ref(), env_b, true, false);
            match (&want, got) {
                (Ok(_), Ok(g)) => gots.push(g),
                (Err(_), Err(_)) => break 'steps,
                (Err(e), Ok(_)) => {
                    return Err(finding(format!(
                        "step {step}: the interpreter fails ({}) but {} runs",
                        e.message,
                        exec.name()
                    )));
                }
                (Ok(_), Err(e)) => {
                    return Err(finding(format!(
                        "step {step}: {} fails ({}) but the interpreter runs",
                        exec.name(),
                        e.message
                    )));
                }
            }
        }
        let Ok(want) = want else { break };
        let w = flatten_outputs(&want);
        let mut spread: Vec<Vec<f64>> = w.iter().map(|(_, v, _, _)| vec![0.0; v.len()]).collect();
        if !gots.is_empty() {
            for k in 1..=2u64 {
                let env_p = perturbed(&env_i, spec.data_seed ^ k);
                if let Ok(o) = p.run_with(&Interp, &env_p, true, false) {
                    for (sp, ((_, a, _, _), (_, b, _, _))) in
                        spread.iter_mut().zip(w.iter().zip(&flatten_outputs(&o)))
                    {
                        for (s, (x, y)) in sp.iter_mut().zip(a.iter().zip(b)) {
                            let dev = if x.is_finite() && y.is_finite() {
                                (x - y).abs()
                            } else if x.to_bits() == y.to_bits() {
                                0.0
                            } else {
                                f64::INFINITY
                            };
                            *s = s.max(dev);
                        }
                    }
                }
            }
        }
        let cones = output_cones(&p.opt, &env_i);
        let all: Vec<Handle> = (0..p.opt.len()).map(|i| Handle(i as u32)).collect();
        if let Ok(vals) = eval(&p.opt, &env_i, &all)
            && near_ties(&p.opt, &vals)
        {
            f32_conditioned = true;
            break;
        }
        let mut disagreements = vec![];
        for (exec, got) in execs.iter().zip(&gots) {
            let d = disagreement(&w, &flatten_outputs(got), &spread, &cones);
            if let Some(d) = d {
                disagreements.push(format!(
                    "{} disagrees with the interpreter: {d}",
                    exec.name()
                ));
            }
        }
        if !disagreements.is_empty() {
            // A discrete decision can sit exactly where f32 and f64 part: `sqrt(x * x + 1)
            // <= x` at x = 1e4, or `1 >= sqrt(v * v + 1)` at v = 2e-4, is true in f32 only.
            // When every independent f32 backend disagrees with the interpreter in the
            // same way, that is f32 arithmetic, not a bug in one of them.
            let all_agree = gots.len() >= 2
                && disagreements.len() == gots.len()
                && gots.windows(2).all(|p| {
                    let (a, b) = (flatten_outputs(&p[0]), flatten_outputs(&p[1]));
                    let zero: Vec<Vec<f64>> =
                        a.iter().map(|(_, v, _, _)| vec![0.0; v.len()]).collect();
                    let no_cone = vec![0.0; a.len()];
                    disagreement(&a, &b, &zero, &no_cone).is_none()
                });
            if all_agree {
                f32_conditioned = true;
                break;
            }
            return Err(finding(format!(
                "step {step}: {}",
                disagreements.join("; ")
            )));
        }
        for (k, (_, v)) in want.state.into_iter().enumerate() {
            env_i.state[k] = v;
        }
        for (env_b, got) in envs.iter_mut().zip(gots) {
            for (k, (_, v)) in got.state.into_iter().enumerate() {
                env_b.state[k] = v;
            }
        }
    }

    // 3. Finite differences, where they mean something.
    let mut gradchecked = false;
    if spec.smooth && spec.mode == DataMode::Normal {
        let base = eval_raw(&p.opt, &env0, true).map_err(|e| finding(e.to_string()))?;
        let tame = |t: &Tensor| {
            t.to_f64_vec()
                .iter()
                .all(|v| v.is_finite() && v.abs() < 1e4)
        };
        if tame(&base.loss) && base.grads.iter().all(tame) {
            let rep = losslang_compiler::gradcheck::gradcheck(&p, &env0, 16)
                .map_err(|e| finding(format!("gradcheck failed to run: {}", e.message)))?;
            gradchecked = true;
            if !rep.passed() {
                let bad: Vec<String> = rep
                    .inputs
                    .iter()
                    .filter(|i| !i.passed)
                    .map(|i| {
                        format!(
                            "{}: max abs error {:e} at {:?}",
                            i.name, i.max_abs_err, i.worst
                        )
                    })
                    .collect();
                return Err(finding(format!(
                    "the gradient disagrees with finite differences: {}",
                    bad.join("; ")
                )));
            }
        }
    }
    Ok(Outcome::Agreed {
        backends: others.len(),
        gradchecked,
        f32_conditioned,
    })
}
