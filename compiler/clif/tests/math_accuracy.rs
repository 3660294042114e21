//! Accuracy and special-value tests for the inline math expansions in
//! `losslang_clif::math`.
//!
//! Each op is JIT-compiled into a small loop over an array, as a scalar and as
//! a 128-bit vector loop, with and without FMA, and its results are compared
//! with the reference kernels (`UnaryOp::apply`, f64) rounded to the lane
//! type. Run with `--nocapture` to see the measured table.

use std::collections::BTreeMap;

use cranelift_codegen::ir::condcodes::IntCC;
use cranelift_codegen::ir::{AbiParam, InstBuilder, MemFlagsData, Type, UserFuncName, types};
use cranelift_codegen::settings::{self, Configurable};
use cranelift_codegen::verify_function;
use cranelift_frontend::{FunctionBuilder, FunctionBuilderContext};
use cranelift_jit::{JITBuilder, JITModule};
use cranelift_module::{Linkage, Module, default_libcall_names};
use losslang_clif::math::{MathOptions, emit_unary_with, is_inline};
use losslang_compiler::ops::UnaryOp;

/// Every `STRIDE`-th f32 bit pattern is tested (odd, so the samples walk
/// through every exponent and all mantissa residues): ~700k inputs per op.
/// `LOSSLANG_MATH_STRIDE` overrides it for a deeper (slower) sweep, e.g. 97 in
/// a release build.
const STRIDE: u64 = 6143;
/// Consecutive floats tested on each side of every dense-sweep centre.
const RUN: i64 = 4096;
/// Pseudo-random f64 bit patterns tested per op; `LOSSLANG_MATH_F64_SAMPLES`
/// overrides it.
const F64_SAMPLES: usize = 400_000;

fn env_or<T: std::str::FromStr>(name: &str, default: T) -> T {
    std::env::var(name)
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(default)
}

/// Ops compared in ulps, with the asserted bounds: f32 results that are
/// normal (or ±inf), f32 results that are subnormal (counted in subnormal
/// steps), then the same two for f64. These are the maxima measured over a
/// sweep of every 97th f32 bit pattern and 20M random f64 patterns (see the
/// table in `math.rs`); the default sweep here is a subset.
const BOUNDS: &[(UnaryOp, u64, u64, u64, u64)] = &[
    (UnaryOp::Exp, 1, 1, 1, 1),
    (UnaryOp::Expm1, 1, 0, 2, 0),
    (UnaryOp::Log, 1, 0, 1, 0),
    (UnaryOp::Log1p, 1, 0, 1, 0),
    (UnaryOp::Tanh, 2, 0, 3, 0),
    (UnaryOp::Sigmoid, 2, 1, 2, 1),
    (UnaryOp::Softplus, 2, 1, 2, 1),
    (UnaryOp::LogSigmoid, 2, 1, 2, 1),
    (UnaryOp::Atanh, 2, 0, 2, 0),
    (UnaryOp::Asinh, 2, 0, 2, 0),
    (UnaryOp::Rsqrt, 1, 0, 1, 0),
    (UnaryOp::Neg, 0, 0, 0, 0),
    (UnaryOp::Abs, 0, 0, 0, 0),
    (UnaryOp::Sqrt, 0, 0, 0, 0),
    (UnaryOp::Floor, 0, 0, 0, 0),
    (UnaryOp::Round, 0, 0, 0, 0),
    (UnaryOp::Relu, 0, 0, 0, 0),
    (UnaryOp::Sign, 0, 0, 0, 0),
];

type Kernel = unsafe extern "C" fn(*const u8, *mut u8, usize);

/// A JIT module holding the compiled test loops.
struct Jit {
    module: JITModule,
    fctx: FunctionBuilderContext,
    compiled: BTreeMap<(&'static str, String, bool), Kernel>,
}

impl Jit {
    fn new() -> Self {
        let mut flags = settings::builder();
        flags.set("opt_level", "speed").unwrap();
        flags.set("use_colocated_libcalls", "false").unwrap();
        flags.set("is_pic", "false").unwrap();
        let isa = cranelift_native::builder()
            .expect("host ISA")
            .finish(settings::Flags::new(flags))
            .unwrap();
        Jit {
            module: JITModule::new(JITBuilder::with_isa(isa, default_libcall_names())),
            fctx: FunctionBuilderContext::new(),
            compiled: BTreeMap::new(),
        }
    }

    /// Builds `fn(src, dst, n_bytes)` applying `op` to each `ty`-sized chunk,
    /// verifies it, and returns it compiled.
    fn kernel(&mut self, op: UnaryOp, ty: Type, opts: MathOptions) -> Kernel {
        let key = (op.name(), ty.to_string(), opts.fma);
        if let Some(&k) = self.compiled.get(&key) {
            return k;
        }
        let ptr = self.module.target_config().pointer_type();
        let mut sig = self.module.make_signature();
        sig.params.extend([AbiParam::new(ptr); 3]);
        let name = format!("k{}", self.compiled.len());
        let id = self
            .module
            .declare_function(&name, Linkage::Local, &sig)
            .unwrap();
        let mut ctx = self.module.make_context();
        ctx.func.signature = sig;
        ctx.func.name = UserFuncName::user(0, id.as_u32());
        {
            let mut b = FunctionBuilder::new(&mut ctx.func, &mut self.fctx);
            let entry = b.create_block();
            let head = b.create_block();
            let body = b.create_block();
            let exit = b.create_block();
            b.append_block_params_for_function_params(entry);
            b.append_block_param(head, ptr);
            b.switch_to_block(entry);
            let [src, dst, n] = b.block_params(entry) else {
                unreachable!()
            };
            let (src, dst, n) = (*src, *dst, *n);
            let zero = b.ins().iconst(ptr, 0);
            b.ins().jump(head, &[zero.into()]);

            b.switch_to_block(head);
            let i = b.block_params(head)[0];
            let more = b.ins().icmp(IntCC::UnsignedLessThan, i, n);
            b.ins().brif(more, body, &[], exit, &[]);

            b.switch_to_block(body);
            let flags = MemFlagsData::trusted();
            let sa = b.ins().iadd(src, i);
            let x = b.ins().load(ty, flags, sa, 0);
            let y = emit_unary_with(&mut b, op, x, opts).expect("op is inline");
            let da = b.ins().iadd(dst, i);
            b.ins().store(flags, y, da, 0);
            let next = b.ins().iadd_imm_s(i, i64::from(ty.bytes()));
            b.ins().jump(head, &[next.into()]);

            b.switch_to_block(exit);
            b.ins().return_(&[]);
            b.seal_all_blocks();
            b.finalize(self.module.target_config());
        }
        if let Err(e) = verify_function(&ctx.func, self.module.isa()) {
            panic!("{} {ty} does not verify: {e}\n{}", op.name(), ctx.func);
        }
        self.module.define_function(id, &mut ctx).unwrap();
        self.module.clear_context(&mut ctx);
        self.module.finalize_definitions().unwrap();
        let code = self.module.get_finalized_function(id);
        // SAFETY: the function was just defined with this signature.
        let k = unsafe { std::mem::transmute::<*const u8, Kernel>(code) };
        self.compiled.insert(key, k);
        k
    }
}

/// The option sets worth testing here: mul+add always, FMA where the host
/// has it (elsewhere `fma` becomes a libcall and is only slow, not wrong).
fn option_sets() -> Vec<MathOptions> {
    let mut v = vec![MathOptions { fma: false }];
    if MathOptions::host().fma {
        v.push(MathOptions { fma: true });
    }
    v
}

/// Lane float type used by the harness.
trait Lane: Copy + PartialEq + std::fmt::Debug + Default {
    const SCALAR: Type;
    const VECTOR: Type;
    fn from_f64(v: f64) -> Self;
    fn to_f64(self) -> f64;
    /// Monotone integer image: consecutive floats map to consecutive
    /// integers, ±0 both map to 0.
    fn ordered(self) -> i64;
    fn from_ordered(o: i64) -> Self;
    fn bits(self) -> u64;
    fn is_nan(self) -> bool;
    fn is_normal_or_inf(self) -> bool;
    /// The expected result.
    fn reference(op: UnaryOp, x: Self) -> Self;
}

impl Lane for f32 {
    const SCALAR: Type = types::F32;
    const VECTOR: Type = types::F32X4;
    fn from_f64(v: f64) -> Self {
        v as f32
    }
    fn to_f64(self) -> f64 {
        self as f64
    }
    fn ordered(self) -> i64 {
        let b = self.to_bits() as i32 as i64;
        if b < 0 { i32::MIN as i64 - b } else { b }
    }
    fn from_ordered(o: i64) -> Self {
        let b = if o < 0 { i32::MIN as i64 - o } else { o };
        f32::from_bits(b as i32 as u32)
    }
    fn bits(self) -> u64 {
        self.to_bits() as u64
    }
    fn is_nan(self) -> bool {
        f32::is_nan(self)
    }
    fn is_normal_or_inf(self) -> bool {
        self.is_infinite() || self.abs() >= f32::MIN_POSITIVE
    }
    /// The f64 reference kernel, correctly rounded to f32 up to its own
    /// error, which is far below an f32 ulp.
    fn reference(op: UnaryOp, x: Self) -> Self {
        op.apply(x as f64) as f32
    }
}

impl Lane for f64 {
    const SCALAR: Type = types::F64;
    const VECTOR: Type = types::F64X2;
    fn from_f64(v: f64) -> Self {
        v
    }
    fn to_f64(self) -> f64 {
        self
    }
    fn ordered(self) -> i64 {
        let b = self.to_bits() as i64;
        if b < 0 { i64::MIN.wrapping_sub(b) } else { b }
    }
    fn from_ordered(o: i64) -> Self {
        let b = if o < 0 { i64::MIN.wrapping_sub(o) } else { o };
        f64::from_bits(b as u64)
    }
    fn bits(self) -> u64 {
        self.to_bits()
    }
    fn is_nan(self) -> bool {
        f64::is_nan(self)
    }
    fn is_normal_or_inf(self) -> bool {
        self.is_infinite() || self.abs() >= f64::MIN_POSITIVE
    }
    /// The f64 reference kernel, except where its formula is not accurate to
    /// f64 precision: `atanh` evaluates `2x/(1-x)` for negative x too, whose
    /// rounding error `ln_1p` magnifies near -1 (percent-level error), and
    /// `asinh` overflows to inf for |x| > MAX/2.
    fn reference(op: UnaryOp, x: Self) -> Self {
        let a = x.abs();
        match op {
            UnaryOp::Atanh => (0.5 * (2.0 * a / (1.0 - a)).ln_1p()).copysign(x),
            UnaryOp::Asinh if a > 1e300 => (a.ln() + std::f64::consts::LN_2).copysign(x),
            _ => op.apply(x),
        }
    }
}

fn run<T: Lane>(k: Kernel, xs: &[T]) -> Vec<T> {
    let mut out = vec![T::default(); xs.len()];
    // SAFETY: both buffers hold `xs.len()` lanes, a multiple of the kernel's
    // vector width (the callers pad to 4 lanes).
    unsafe {
        k(
            xs.as_ptr().cast(),
            out.as_mut_ptr().cast(),
            std::mem::size_of_val(xs),
        )
    };
    out
}

/// Special inputs, checked against the reference everywhere and exactly where
/// the reference result is NaN, ±inf, ±0 or ±1.
fn specials<T: Lane>() -> Vec<T> {
    let mut v: Vec<f64> = vec![
        0.0,
        f64::INFINITY,
        f64::NAN,
        1.0,
        2.0,
        0.5,
        0.3,
        2.5,
        3.5,
        1.5,
        10.0,
        20.0,
        30.0,
        88.0,
        89.0,
        100.0,
        104.0,
        110.0,
        200.0,
        700.0,
        709.0,
        710.0,
        745.0,
        746.0,
        800.0,
        1e-30,
        1e-10,
        1e10,
        1e30,
        1e300,
        1e-300,
    ];
    let extra = [
        T::from_ordered(1).to_f64(),  // smallest subnormal
        T::from_ordered(17).to_f64(), // another subnormal
        f32::MIN_POSITIVE as f64,
        f64::MIN_POSITIVE,
        f32::MAX as f64,
        f64::MAX,
    ];
    v.extend(extra);
    let neg: Vec<f64> = v.iter().map(|x| -x).collect();
    v.extend(neg);
    let mut out: Vec<T> = v.into_iter().map(T::from_f64).collect();
    out.push(T::from_f64(f64::from_bits(0x7ff0_0000_0000_1234))); // NaN payload
    out
}

/// Centres of the dense sweeps: around 0, ±1, the reduction boundaries
/// (ln2/2, 1.5·ln2), the saturation points and the overflow/underflow
/// thresholds of exp/expm1/tanh/sigmoid/softplus in f32 and f64.
fn centres() -> Vec<f64> {
    let ln2 = std::f64::consts::LN_2;
    let pos = [
        0.0,
        1e-30,
        1e-10,
        2.98e-8,
        5.55e-17,
        1e-4,
        0.01,
        0.1,
        ln2 / 4.0,
        ln2 / 2.0,
        0.5,
        std::f64::consts::FRAC_1_SQRT_2,
        1.0,
        1.5 * ln2,
        std::f64::consts::SQRT_2,
        2.0,
        9.01,
        10.0,
        16.6,
        17.33,
        19.06,
        22.0,
        4096.0,
        268_435_456.0,
        88.376,
        88.7228,
        87.3365,
        103.972,
        709.78,
        708.4,
        744.44,
        745.13,
        f32::MIN_POSITIVE as f64,
        f64::MIN_POSITIVE,
    ];
    let mut v: Vec<f64> = pos.to_vec();
    v.extend(pos.iter().map(|x| -x));
    // Just inside ±1 (atanh, log1p at -1).
    v.extend([0.999_999, -0.999_999, 0.9999, -0.9999]);
    v
}

/// Inputs: the special values first (see [`check_specials`]), then the
/// strided sweep and the dense runs.
fn inputs_f32() -> Vec<f32> {
    let mut xs = specials::<f32>();
    xs.extend(
        (0..(1u64 << 32))
            .step_by(env_or("LOSSLANG_MATH_STRIDE", STRIDE) as usize)
            .map(|b| f32::from_bits(b as u32)),
    );
    for c in centres() {
        let o = (c as f32).ordered();
        xs.extend((o - RUN..=o + RUN).map(f32::from_ordered));
    }
    pad(xs)
}

/// Inputs: the special values first (see [`check_specials`]), then
/// pseudo-random bit patterns and the dense runs.
fn inputs_f64() -> Vec<f64> {
    let mut state: u64 = 0x9e37_79b9_7f4a_7c15;
    let mut xs = specials::<f64>();
    xs.extend(
        (0..env_or("LOSSLANG_MATH_F64_SAMPLES", F64_SAMPLES)).map(|_| {
            // SplitMix64: uniform over all bit patterns, hence over exponents.
            state = state.wrapping_add(0x9e37_79b9_7f4a_7c15);
            let mut z = state;
            z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
            f64::from_bits(z ^ (z >> 31))
        }),
    );
    for c in centres() {
        let o = c.ordered();
        xs.extend((o - RUN / 2..=o + RUN / 2).map(f64::from_ordered));
    }
    pad(xs)
}

fn pad<T: Lane>(mut xs: Vec<T>) -> Vec<T> {
    while !xs.len().is_multiple_of(4) {
        xs.push(T::default());
    }
    xs
}

/// Worst error seen and where.
#[derive(Clone, Copy, Debug, Default)]
struct Worst {
    ulps: u64,
    at: f64,
}

impl Worst {
    fn see(&mut self, ulps: u64, at: f64) {
        if ulps > self.ulps {
            *self = Worst { ulps, at };
        }
    }
}

#[derive(Debug, Default)]
struct Stats {
    normal: Worst,
    subnormal: Worst,
    nan_mismatch: Vec<(f64, f64)>,
}

fn compare<T: Lane>(xs: &[T], refs: &[T], got: &[T]) -> Stats {
    let mut st = Stats::default();
    for ((&x, &r), &g) in xs.iter().zip(refs).zip(got) {
        if r.is_nan() || g.is_nan() {
            if r.is_nan() != g.is_nan() {
                st.nan_mismatch.push((x.to_f64(), g.to_f64()));
            }
            continue;
        }
        let d = r.ordered().abs_diff(g.ordered());
        if r.is_normal_or_inf() {
            st.normal.see(d, x.to_f64());
        } else {
            st.subnormal.see(d, x.to_f64());
        }
    }
    st
}

fn reference<T: Lane>(op: UnaryOp, xs: &[T]) -> Vec<T> {
    xs.iter().map(|&x| T::reference(op, x)).collect()
}

/// Runs every op in `BOUNDS` on every type/option combination; returns the
/// failures (empty when all bounds hold) after printing the measured table.
fn accuracy<T: Lane + Send + Sync>(
    xs: &[T],
    bound_of: impl Fn(&(UnaryOp, u64, u64, u64, u64)) -> (u64, u64) + Sync,
) {
    // Ops are independent: spread them over the cores, each thread with its
    // own JIT module.
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get().min(4));
    let mut results: Vec<(usize, Vec<String>, Vec<String>)> = std::thread::scope(|sc| {
        let handles: Vec<_> = (0..threads)
            .map(|t| {
                let bound_of = &bound_of;
                sc.spawn(move || {
                    let mut jit = Jit::new();
                    BOUNDS
                        .iter()
                        .enumerate()
                        .filter(|(i, _)| i % threads == t)
                        .map(|(i, entry)| {
                            let (bound, sub) = bound_of(entry);
                            let (lines, failures) = check_op(&mut jit, entry.0, bound, sub, xs);
                            (i, lines, failures)
                        })
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        handles
            .into_iter()
            .flat_map(|h| h.join().expect("worker panicked"))
            .collect()
    });
    results.sort_by_key(|r| r.0);
    println!(
        "{:<12} {:<6} {:<6} {:>14} {:>16} {:>18} {:>16}",
        "op", "type", "fma", "max ulp", "at x", "subnormal steps", "at x"
    );
    let mut failures = Vec::new();
    for (_, lines, f) in results {
        for l in lines {
            println!("{l}");
        }
        failures.extend(f);
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

/// Measures one op on every type/option combination: the table lines and the
/// violated bounds.
fn check_op<T: Lane>(
    jit: &mut Jit,
    op: UnaryOp,
    bound: u64,
    sub_bound: u64,
    xs: &[T],
) -> (Vec<String>, Vec<String>) {
    let mut lines = Vec::new();
    let mut failures = Vec::new();
    let refs = reference(op, xs);
    for opts in option_sets() {
        let k = jit.kernel(op, T::SCALAR, opts);
        let scalar = run(k, xs);
        let st = compare(xs, &refs, &scalar);
        lines.push(format!(
            "{:<12} {:<6} {:<6} {:>14} {:>16e} {:>18} {:>16e}",
            op.name(),
            T::SCALAR.to_string(),
            opts.fma,
            st.normal.ulps,
            st.normal.at,
            st.subnormal.ulps,
            st.subnormal.at
        ));
        let tag = format!("{} {} fma={}", op.name(), T::SCALAR, opts.fma);
        if st.normal.ulps > bound {
            failures.push(format!(
                "{tag}: {} ulp at x = {:e} (bound {bound})",
                st.normal.ulps, st.normal.at
            ));
        }
        if st.subnormal.ulps > sub_bound {
            failures.push(format!(
                "{tag}: {} subnormal steps at x = {:e} (bound {sub_bound})",
                st.subnormal.ulps, st.subnormal.at
            ));
        }
        if !st.nan_mismatch.is_empty() {
            failures.push(format!(
                "{tag}: NaN mismatch (x, got) {:?}",
                &st.nan_mismatch[..st.nan_mismatch.len().min(5)]
            ));
        }
        check_specials(op, T::SCALAR, &scalar, xs, &refs, &mut failures);
        // The vector loop runs the same expansion lane-wise, so it must
        // agree bit for bit (NaN payloads aside), which also gives it the
        // scalar's error bounds.
        let k = jit.kernel(op, T::VECTOR, opts);
        let vector = run(k, xs);
        let differ = scalar
            .iter()
            .zip(&vector)
            .zip(xs)
            .find(|((a, b), _)| a.bits() != b.bits() && !(a.is_nan() && b.is_nan()));
        if let Some(((a, b), x)) = differ {
            failures.push(format!(
                "{} {} fma={}: vector differs from scalar at x = {x:?}: {b:?} vs {a:?}",
                op.name(),
                T::VECTOR,
                opts.fma
            ));
        }
        check_specials(op, T::VECTOR, &vector, xs, &refs, &mut failures);
    }
    (lines, failures)
}

/// Exact agreement with the reference where its result is NaN, ±inf, ±0
/// (sign included) or ±1, over the special inputs (the first
/// `specials().len()` entries of `xs`).
fn check_specials<T: Lane>(
    op: UnaryOp,
    ty: Type,
    got: &[T],
    xs: &[T],
    refs: &[T],
    failures: &mut Vec<String>,
) {
    let n = specials::<T>().len();
    for ((&x, &r), &g) in xs.iter().zip(refs).zip(got).take(n) {
        let rf = r.to_f64();
        let exact = rf.is_nan() || rf.is_infinite() || rf == 0.0 || rf.abs() == 1.0;
        if !exact {
            continue;
        }
        let ok = if rf.is_nan() {
            g.is_nan()
        } else {
            g.bits() == r.bits()
        };
        if !ok {
            failures.push(format!(
                "{}({:e}) {ty}: got {:e}, want {:e}",
                op.name(),
                x.to_f64(),
                g.to_f64(),
                rf
            ));
        }
    }
}

#[test]
fn f32_accuracy_scalar_and_vector() {
    let xs = inputs_f32();
    accuracy(&xs, |e| (e.1, e.2));
}

#[test]
fn f64_accuracy_scalar_and_vector() {
    let xs = inputs_f64();
    accuracy(&xs, |e| (e.3, e.4));
}

/// The special values the backend relies on, spelled out.
#[test]
fn f32_named_special_values() {
    let inf = f32::INFINITY;
    let nan = f32::NAN;
    let cases: &[(UnaryOp, f32, f32)] = &[
        (UnaryOp::Exp, 100.0, inf),
        (UnaryOp::Exp, 89.0, inf),
        (UnaryOp::Exp, inf, inf),
        (UnaryOp::Exp, -inf, 0.0),
        (UnaryOp::Exp, -104.0, 0.0),
        (UnaryOp::Exp, -1000.0, 0.0),
        (UnaryOp::Exp, 0.0, 1.0),
        (UnaryOp::Exp, -0.0, 1.0),
        (UnaryOp::Exp, nan, nan),
        // Gradual underflow: e^-100 = 3.72e-44 is a subnormal, not 0.
        (UnaryOp::Exp, -100.0, 3.7e-44),
        (UnaryOp::Expm1, -0.0, -0.0),
        (UnaryOp::Expm1, -inf, -1.0),
        (UnaryOp::Expm1, inf, inf),
        (UnaryOp::Expm1, 100.0, inf),
        (UnaryOp::Expm1, -100.0, -1.0),
        (UnaryOp::Expm1, 1e-30, 1e-30),
        (UnaryOp::Log, 0.0, -inf),
        (UnaryOp::Log, -0.0, -inf),
        (UnaryOp::Log, -1.0, nan),
        (UnaryOp::Log, -inf, nan),
        (UnaryOp::Log, inf, inf),
        (UnaryOp::Log, 1.0, 0.0),
        (UnaryOp::Log, nan, nan),
        (UnaryOp::Log, f32::from_bits(1), -103.278_93),
        (UnaryOp::Log1p, -1.0, -inf),
        (UnaryOp::Log1p, -2.0, nan),
        (UnaryOp::Log1p, inf, inf),
        (UnaryOp::Log1p, -0.0, -0.0),
        (UnaryOp::Log1p, 1e-30, 1e-30),
        (UnaryOp::Tanh, inf, 1.0),
        (UnaryOp::Tanh, -inf, -1.0),
        (UnaryOp::Tanh, -0.0, -0.0),
        (UnaryOp::Tanh, 30.0, 1.0),
        (UnaryOp::Tanh, nan, nan),
        (UnaryOp::Tanh, -1e-40, -1e-40),
        (UnaryOp::Sigmoid, inf, 1.0),
        (UnaryOp::Sigmoid, -inf, 0.0),
        (UnaryOp::Sigmoid, 0.0, 0.5),
        (UnaryOp::Sigmoid, nan, nan),
        (UnaryOp::Softplus, -inf, 0.0),
        (UnaryOp::Softplus, inf, inf),
        (UnaryOp::Softplus, 0.0, std::f32::consts::LN_2),
        (UnaryOp::Softplus, 100.0, 100.0),
        (UnaryOp::Softplus, f32::MAX, f32::MAX),
        (UnaryOp::Softplus, nan, nan),
        (UnaryOp::LogSigmoid, inf, -0.0),
        (UnaryOp::LogSigmoid, -inf, -inf),
        (UnaryOp::LogSigmoid, -100.0, -100.0),
        (UnaryOp::Relu, -0.0, 0.0),
        (UnaryOp::Relu, nan, nan),
        (UnaryOp::Relu, -inf, 0.0),
        (UnaryOp::Sign, -0.0, -0.0),
        (UnaryOp::Sign, nan, nan),
        (UnaryOp::Sign, f32::from_bits(1), 1.0),
        (UnaryOp::Round, 2.5, 2.0),
        (UnaryOp::Round, -2.5, -2.0),
        (UnaryOp::Round, 3.5, 4.0),
        (UnaryOp::Round, -0.3, -0.0),
        (UnaryOp::Floor, -0.3, -1.0),
        (UnaryOp::Rsqrt, -0.0, -inf),
        (UnaryOp::Rsqrt, inf, 0.0),
        (UnaryOp::Sqrt, -1.0, nan),
        (UnaryOp::Atanh, 1.0, inf),
        (UnaryOp::Atanh, -1.0, -inf),
        (UnaryOp::Atanh, 2.0, nan),
        (UnaryOp::Atanh, -0.0, -0.0),
        (UnaryOp::Asinh, -inf, -inf),
        (UnaryOp::Asinh, -0.0, -0.0),
        (UnaryOp::Asinh, f32::MAX, 89.415_985),
    ];
    let mut jit = Jit::new();
    let mut failures = Vec::new();
    for &(op, x, want) in cases {
        for opts in option_sets() {
            for ty in [types::F32, types::F32X4] {
                let k = jit.kernel(op, ty, opts);
                let got = run(k, &[x; 4]);
                for g in got {
                    let ok = if want.is_nan() {
                        g.is_nan()
                    } else if want != 0.0 && want.abs() < f32::MIN_POSITIVE {
                        // A subnormal: within one subnormal step.
                        (g.ordered() - want.ordered()).abs() <= 1
                    } else {
                        g.to_bits() == want.to_bits()
                    };
                    if !ok {
                        failures.push(format!(
                            "{}({x:e}) {ty} fma={}: got {g:e}, want {want:e}",
                            op.name(),
                            opts.fma
                        ));
                    }
                }
            }
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

/// `F32X8` expands to IR that passes the verifier (whether it then compiles
/// depends on the backend: Cranelift 0.135's x64 lowers 128-bit vectors only).
#[test]
fn f32x8_expansion_verifies() {
    let jit = Jit::new();
    let mut fctx = FunctionBuilderContext::new();
    for &(op, ..) in BOUNDS {
        let mut func = cranelift_codegen::ir::Function::new();
        func.signature.params.push(AbiParam::new(types::F32X8));
        func.signature.returns.push(AbiParam::new(types::F32X8));
        let mut b = FunctionBuilder::new(&mut func, &mut fctx);
        let blk = b.create_block();
        b.append_block_params_for_function_params(blk);
        b.switch_to_block(blk);
        let x = b.block_params(blk)[0];
        let y = emit_unary_with(&mut b, op, x, MathOptions { fma: true }).unwrap();
        b.ins().return_(&[y]);
        b.seal_all_blocks();
        b.finalize(jit.module.target_config());
        if let Err(e) = verify_function(&func, jit.module.isa()) {
            panic!("{} F32X8 does not verify: {e}", op.name());
        }
    }
}

/// Ops without an inline expansion, and non-float types, are declined.
#[test]
fn declines_what_it_does_not_expand() {
    let mut fctx = FunctionBuilderContext::new();
    let mut func = cranelift_codegen::ir::Function::new();
    let mut b = FunctionBuilder::new(&mut func, &mut fctx);
    let blk = b.create_block();
    b.switch_to_block(blk);
    let xf = b.ins().f32const(1.0);
    let xi = b.ins().iconst(types::I64, 1);
    let mut declined = BTreeMap::new();
    for op in UnaryOp::ALL {
        let got = emit_unary_with(&mut b, op, xf, MathOptions { fma: false });
        assert_eq!(got.is_some(), is_inline(op), "{}", op.name());
        if got.is_none() {
            declined.insert(op.name(), ());
        }
        assert!(emit_unary_with(&mut b, op, xi, MathOptions { fma: false }).is_none());
    }
    let declined: Vec<_> = declined.into_keys().collect();
    assert_eq!(declined, ["cos", "isfinite", "not", "sin"]);
    // Every op with a bound above is expanded inline.
    for &(op, ..) in BOUNDS {
        assert!(is_inline(op), "{}", op.name());
    }
}
