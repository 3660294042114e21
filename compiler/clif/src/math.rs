//! Inline, branch-free CLIF for the transcendental unary ops.
//!
//! [`emit_unary`] expands an op into straight-line code: arithmetic, `fma`
//! (or `fmul` + `fadd`, see [`MathOptions`]), lane-wise selects and integer
//! bit manipulation on the float's bit pattern. There is no control flow and no
//! call, so the same expansion works for a scalar and for every lane of a
//! vector, and a loop over an array that uses it stays vectorised.
//!
//! Supported value types: `F32`, `F32X4`, `F64`, `F64X2`. Any lane count of
//! `F32`/`F64` lanes produces valid IR, but Cranelift 0.135 lowers only
//! 128-bit vectors: `F32X8` passes the verifier and is then rejected by the
//! x64 backend ("Unexpected SSA-value type: f32x8"), with or without AVX2.
//! On x64, vector `floor`/`round` need SSE4.1 (`cranelift_native` enables it
//! when the CPU has it); nothing else here needs more than SSE2.
//!
//! # Accuracy
//!
//! Measured by `tests/math_accuracy.rs` against the f64 reference kernels of
//! `losslang_compiler` (`UnaryOp::apply`) rounded to f32, over every 97th f32
//! bit pattern of the whole range (`LOSSLANG_MATH_STRIDE=97`, release build;
//! the default test run uses every 6143rd), all special values, and runs of
//! 8193 consecutive f32s around 0, ±1, the reduction boundaries (ln2/2,
//! 1.5·ln2), the saturation points and the overflow/underflow thresholds.
//! f64 is measured on 20M pseudo-random bit patterns plus the same kind of
//! runs, against Rust's `std` f64 functions (except `atanh`/`asinh` where
//! the reference kernel itself loses accuracy, see the test); those are off
//! by up to ~1 ulp themselves, so the f64 column includes the reference's
//! error. "Normal" is the max error in ulps where the reference result is a
//! normal float or ±inf; "subnormal" is the max error in steps of the
//! subnormal spacing where the reference result is subnormal or an
//! underflowed 0. FMA and mul+add give the same maxima; scalar and vector
//! code are the same expansion and give bit-identical results. The test
//! asserts exactly these bounds.
//!
//! | op            | f32 normal | f32 subnormal | f64 normal | f64 subnormal |
//! |---------------|-----------:|--------------:|-----------:|--------------:|
//! | `exp`         | 1          | 1             | 1          | 1             |
//! | `expm1`       | 1          | 0             | 2          | 0             |
//! | `log`         | 1          | –             | 1          | –             |
//! | `log1p`       | 1          | 0             | 1          | 0             |
//! | `tanh`        | 2          | 0             | 3          | 0             |
//! | `sigmoid`     | 2          | 1             | 2          | 1             |
//! | `softplus`    | 2          | 1             | 2          | 1             |
//! | `log_sigmoid` | 2          | 1             | 2          | 1             |
//! | `atanh`       | 2          | 0             | 2          | 0             |
//! | `asinh`       | 2          | 0             | 2          | 0             |
//! | `rsqrt`       | 1          | –             | 1          | –             |
//!
//! Every op stays within 4 ulp everywhere, including `sigmoid` near -88 and
//! `softplus`/`log_sigmoid` far out (their results there come from the
//! gradually underflowing `exp`). `expm1`'s 2 ulp (f64) is just above
//! `|x| = ln2/2`, where `2^k·expm1(r) + (2^k - 1)` doubles the rounding error
//! of `r`; `tanh`'s 3 ulp (f64) is inherited from it at `|x| ≈ 0.19`.
//! `neg`, `abs`, `sqrt`, `floor`, `round` (ties to even), `relu` and `sign`
//! are exact; `rsqrt` is `1 / sqrt(x)`, two correctly rounded steps.
//!
//! # Special values
//!
//! NaN in → NaN out for every op. Results match the reference kernels on ±0
//! (including the sign of zero: `expm1`, `log1p`, `tanh`, `atanh`, `asinh`,
//! `sign`, `floor`, `round` return `-0` for `-0`; `relu(-0) = +0`), on ±inf
//! (`exp(-inf) = 0`, `exp(inf) = inf`, `expm1(-inf) = -1`, `log(0) = -inf`,
//! `log(x < 0) = NaN`, `log1p(-1) = -inf`, `tanh(±inf) = ±1`,
//! `sigmoid(inf) = 1`, `sigmoid(-inf) = 0`, `softplus(-inf) = 0`,
//! `softplus(inf) = inf`, `log_sigmoid(-inf) = -inf`, `log_sigmoid(inf) = -0`)
//! and past the overflow thresholds (`exp(89) = inf` in f32).
//!
//! Subnormals are not flushed, neither on input nor on output: `log` and
//! `log1p` rescale subnormal inputs exactly, and `exp` builds `2^k` as two
//! normal factors and applies the last one in a single rounding multiply, so
//! results underflow gradually (correctly rounded up to the polynomial's own
//! error). `sigmoid`, `softplus` and `log_sigmoid` inherit that from `exp`.
//!
//! # Algorithms
//!
//! * `exp`: `k = round(x·log2 e)` by the round-to-nearest-even "shifter" trick
//!   (`x·log2 e + 1.5·2^p` leaves `k` in the low mantissa bits, so no
//!   float→int conversion and no SSE4.1 is needed), `r = x - k·ln2` with a
//!   Cody–Waite two-constant split of ln2 whose high part makes `k·ln2_hi`
//!   exact, `e^r = 1 + r + r²·h(r)` with a near-minimax `h` (degree 5 for f32,
//!   10 for f64) on `[-ln2/2, ln2/2]`, then `·2^k1·2^k2` with `k1 = round(k/2)`,
//!   `k2 = k - k1`, each factor built by shifting `k + bias` into the exponent
//!   field. The input is clamped first, in a way that lets NaN through, so
//!   that `k` stays small.
//! * `expm1`: same reduction; `expm1(r) = r + r²·h(r)` (the same `h`), then
//!   `2^k·expm1(r) + (2^k - 1)`, where `2^k - 1` is exact for the `k` at which
//!   it matters, so there is no cancellation; `|x| < 2^-25` (2^-54) returns `x`.
//! * `log`: subnormals scaled by 2^25 (2^54); the musl/FreeBSD reduction
//!   `m ∈ [√½, √2)` by adding an offset to the bit pattern; `f = m - 1`,
//!   `s = f/(2+f)`, `log(1+f) = f - f²/2 + s·(f²/2 + R(s²))` with the
//!   fdlibm `Lg1..Lg4` (f32) / `Lg1..Lg7` (f64) coefficients; `k·ln2` added in
//!   two parts.
//! * `log1p`: `u = 1 + x` and `log(u) + (x - (u - 1))/u`, the correction fed
//!   into the small terms of the `log` kernel before the large ones are added.
//! * `tanh`: `e = expm1(2|x|)`, `e / (e + 2)`, `|x|` clamped at the saturation
//!   point, sign copied back from `x`.
//! * `sigmoid`: `e = exp(-|x|)`, then `1/(1+e)` for `x ≥ 0`, `e/(1+e)` for
//!   `x < 0`, chosen by a select.
//! * `softplus`: `max(x, 0) + log1p(exp(-|x|))`; `log_sigmoid(x)` is
//!   `-softplus(-x)`.
//! * `atanh`: `½·log1p(2a + 2a·a/(1 - a))` on `a = |x|`, sign copied back.
//! * `asinh`: `log1p(a + a²/(1 + √(1 + a²)))` for `a < 2^12` (2^28), else
//!   `log1p(a - 1) + ln2` (= `log(2a)` without overflowing); sign copied back.
//!
//! `sin`, `cos` (they need a Payne–Hanek reduction for large arguments) and
//! the bool-valued `not`/`is_finite` are not expanded: [`emit_unary`] returns
//! `None` for them and the caller calls a runtime symbol instead.

use cranelift_codegen::ir::condcodes::{FloatCC, IntCC};
use cranelift_codegen::ir::{InstBuilder, MemFlagsData, Type, Value, types};
use cranelift_codegen::isa::TargetIsa;
use cranelift_frontend::FunctionBuilder;
use losslang_compiler::ops::UnaryOp;

/// Code-generation choices that depend on the target.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MathOptions {
    /// Use the `fma` instruction for multiply-adds. Only worth it when the ISA
    /// has a native fused multiply-add: Cranelift lowers `fma` to a libcall
    /// per lane otherwise. Without it the expansions use `fmul` + `fadd`;
    /// the algorithms are arranged so that both stay within the documented
    /// bounds.
    pub fma: bool,
}

impl MathOptions {
    /// Options matching an ISA built by `cranelift_native::builder()` for this
    /// machine: that builder enables `has_fma` exactly when the CPU has FMA.
    pub fn host() -> Self {
        MathOptions {
            fma: host_has_fma(),
        }
    }

    /// Options matching `isa`'s flags (`has_fma` on x64; FMA is part of the
    /// base ISA on aarch64, riscv64 with the D extension and s390x).
    pub fn for_isa(isa: &dyn TargetIsa) -> Self {
        let fma = match isa.name() {
            "x64" => isa
                .isa_flags()
                .iter()
                .any(|v| v.name == "has_fma" && v.as_bool() == Some(true)),
            "aarch64" | "riscv64" | "s390x" => true,
            _ => false,
        };
        MathOptions { fma }
    }
}

#[cfg(target_arch = "x86_64")]
fn host_has_fma() -> bool {
    std::arch::is_x86_feature_detected!("fma")
}

#[cfg(any(
    target_arch = "aarch64",
    target_arch = "riscv64",
    target_arch = "s390x"
))]
fn host_has_fma() -> bool {
    true
}

#[cfg(not(any(
    target_arch = "x86_64",
    target_arch = "aarch64",
    target_arch = "riscv64",
    target_arch = "s390x"
)))]
fn host_has_fma() -> bool {
    false
}

/// Whether [`emit_unary`] expands `op` inline (for a supported type).
pub fn is_inline(op: UnaryOp) -> bool {
    match op {
        UnaryOp::Neg
        | UnaryOp::Exp
        | UnaryOp::Log
        | UnaryOp::Log1p
        | UnaryOp::Expm1
        | UnaryOp::Sqrt
        | UnaryOp::Rsqrt
        | UnaryOp::Abs
        | UnaryOp::Sign
        | UnaryOp::Floor
        | UnaryOp::Round
        | UnaryOp::Tanh
        | UnaryOp::Sigmoid
        | UnaryOp::LogSigmoid
        | UnaryOp::Softplus
        | UnaryOp::Relu
        | UnaryOp::Atanh
        | UnaryOp::Asinh => true,
        UnaryOp::Sin | UnaryOp::Cos | UnaryOp::Not | UnaryOp::IsFinite => false,
    }
}

/// Whether [`emit_unary`] accepts values of type `ty`: a float scalar or a
/// vector of `F32`/`F64` lanes.
pub fn supports_type(ty: Type) -> bool {
    let lane = ty.lane_type();
    lane == types::F32 || lane == types::F64
}

/// Emits `op(x)` inline at the builder's current position, using
/// [`MathOptions::host`]. Returns `None` when `op` is not expanded inline (see
/// [`is_inline`]) or `x`'s type is not supported (see [`supports_type`]); the
/// caller then calls a runtime function instead.
pub fn emit_unary(b: &mut FunctionBuilder, op: UnaryOp, x: Value) -> Option<Value> {
    emit_unary_with(b, op, x, MathOptions::host())
}

/// Emits `x ** y` inline (scalar or vector, f32 or f64): `exp(y·log|x|)` with
/// the special cases of `powf` as selects. Its error grows with `|y·log x|`
/// (the rounding of the product is magnified by `exp`): at most
/// `2 + |y·ln x|·2` ulp, measured by `tests/pow_accuracy.rs`. `None` for an
/// unsupported type.
pub fn emit_pow_with(
    b: &mut FunctionBuilder,
    x: Value,
    y: Value,
    opts: MathOptions,
) -> Option<Value> {
    let ty = b.func.dfg.value_type(x);
    if !supports_type(ty) {
        return None;
    }
    let mut m = Em::new(b, ty, opts);
    Some(m.pow(x, y))
}

/// [`emit_unary`] with explicit options (use [`MathOptions::for_isa`] when
/// compiling for an ISA other than the host's).
pub fn emit_unary_with(
    b: &mut FunctionBuilder,
    op: UnaryOp,
    x: Value,
    opts: MathOptions,
) -> Option<Value> {
    let ty = b.func.dfg.value_type(x);
    if !supports_type(ty) || !is_inline(op) {
        return None;
    }
    let mut m = Em::new(b, ty, opts);
    let v = match op {
        UnaryOp::Neg => m.b.ins().fneg(x),
        UnaryOp::Abs => m.b.ins().fabs(x),
        UnaryOp::Sqrt => m.b.ins().sqrt(x),
        UnaryOp::Rsqrt => {
            let s = m.b.ins().sqrt(x);
            let one = m.f(1.0);
            m.div(one, s)
        }
        UnaryOp::Floor => m.b.ins().floor(x),
        UnaryOp::Round => m.b.ins().nearest(x),
        UnaryOp::Relu => {
            // `fmax` orders -0 below +0 and propagates NaN, as the reference does.
            let zero = m.f(0.0);
            m.max(x, zero)
        }
        UnaryOp::Sign => m.sign(x),
        UnaryOp::Exp => m.exp(x),
        UnaryOp::Expm1 => m.expm1(x),
        UnaryOp::Log => m.log(x),
        UnaryOp::Log1p => m.log1p(x),
        UnaryOp::Tanh => m.tanh(x),
        UnaryOp::Sigmoid => m.sigmoid(x),
        UnaryOp::Softplus => m.softplus(x),
        UnaryOp::LogSigmoid => {
            let nx = m.b.ins().fneg(x);
            let s = m.softplus(nx);
            m.b.ins().fneg(s)
        }
        UnaryOp::Atanh => m.atanh(x),
        UnaryOp::Asinh => m.asinh(x),
        UnaryOp::Sin | UnaryOp::Cos | UnaryOp::Not | UnaryOp::IsFinite => return None,
    };
    Some(v)
}

/// Per-precision constants.
struct Consts {
    /// Explicit mantissa bits.
    mbits: i64,
    bias: i64,
    sign_mask: i64,
    /// 1.5·2^mbits: adding it rounds to an integer that lands in the low
    /// mantissa bits.
    shifter: f64,
    log2e: f64,
    /// Cody–Waite split of ln2 for `exp`: `k·exp_ln2_hi` is exact for all
    /// reachable `k`.
    exp_ln2_hi: f64,
    exp_ln2_lo: f64,
    /// `exp` input clamp: far enough out that the result is 0 / inf, near
    /// enough that `k/2` keeps `2^(k/2)` normal.
    exp_lo: f64,
    exp_hi: f64,
    /// Below this `expm1(x)` is -1 to working precision.
    expm1_lo: f64,
    /// Largest `k` for which `2^k` is a finite normal.
    kmax: f64,
    /// `h(r) ≈ (e^r - 1 - r)/r²` on `[-ln2/2, ln2/2]`, highest degree first.
    exp_poly: &'static [f64],
    log_ln2_hi: f64,
    log_ln2_lo: f64,
    /// fdlibm `Lg2, Lg4, ...` (multiplied by `w = s⁴`) and `Lg1, Lg3, ...`
    /// (by `z = s²`), highest degree first.
    log_even: &'static [f64],
    log_odd: &'static [f64],
    /// Bit offset moving the mantissa reduction boundary to √½.
    log_add: i64,
    log_mant_mask: i64,
    log_sqrt_half: i64,
    min_normal: f64,
    subnormal_scale: f64,
    subnormal_log2: f64,
    /// Below this, `expm1(x)` and `log1p(x)` round to `x`.
    tiny: f64,
    /// `tanh(x)` rounds to 1 from here on.
    tanh_sat: f64,
    /// From here on `a²` may overflow in `asinh`; `log(2a)` is exact enough.
    asinh_big: f64,
}

const F32C: Consts = Consts {
    mbits: 23,
    bias: 127,
    sign_mask: 0x8000_0000,
    shifter: 12_582_912.0,
    log2e: std::f64::consts::LOG2_E,
    exp_ln2_hi: f32::from_bits(0x3f31_7200) as f64,
    exp_ln2_lo: f32::from_bits(0x35bf_be8e) as f64,
    exp_lo: -110.0,
    exp_hi: 100.0,
    expm1_lo: -30.0,
    kmax: 127.0,
    exp_poly: &[
        0.000_198_929_917_630_145_95,
        0.001_393_545_184_387_468_8,
        0.008_333_309_086_515_256,
        0.041_666_448_365_716_59,
        0.166_666_666_835_011_94,
        0.500_000_001_515_681_2,
    ],
    log_ln2_hi: f32::from_bits(0x3f31_7180) as f64,
    log_ln2_lo: f32::from_bits(0x3717_f7d1) as f64,
    // fdlibm's k_logf.h: Lg4 = 0xf89e26p-26, Lg2 = 0xccce13p-25 ...
    log_even: &[
        0xf8_9e26 as f64 / (1u64 << 26) as f64,
        0xcc_ce13 as f64 / (1u64 << 25) as f64,
    ],
    // ... Lg3 = 0x91e9eep-25, Lg1 = 0xaaaaaap-24.
    log_odd: &[
        0x91_e9ee as f64 / (1u64 << 25) as f64,
        0xaa_aaaa as f64 / (1u64 << 24) as f64,
    ],
    log_add: 0x3f80_0000 - 0x3f35_04f3,
    log_mant_mask: 0x007f_ffff,
    log_sqrt_half: 0x3f35_04f3,
    min_normal: f32::MIN_POSITIVE as f64,
    subnormal_scale: 33_554_432.0,
    subnormal_log2: 25.0,
    tiny: 2.980_232_238_769_531_2e-8,
    tanh_sat: 10.0,
    asinh_big: 4096.0,
};

const F64C: Consts = Consts {
    mbits: 52,
    bias: 1023,
    sign_mask: i64::MIN,
    shifter: 6_755_399_441_055_744.0,
    log2e: std::f64::consts::LOG2_E,
    exp_ln2_hi: f64::from_bits(0x3fe6_2e42_fee0_0000),
    exp_ln2_lo: f64::from_bits(0x3dea_39ef_3579_3c76),
    exp_lo: -760.0,
    exp_hi: 720.0,
    expm1_lo: -80.0,
    kmax: 1023.0,
    exp_poly: &[
        2.091_621_283_749_385_3e-9,
        2.510_735_376_726_187_7e-8,
        2.755_726_990_321_579_5e-7,
        2.755_725_016_302_918e-6,
        2.480_158_732_855_585_8e-5,
        0.000_198_412_698_790_330_45,
        0.001_388_888_888_888_287,
        0.008_333_333_333_324_906,
        0.041_666_666_666_666_67,
        0.166_666_666_666_666_7,
        0.5,
    ],
    log_ln2_hi: f64::from_bits(0x3fe6_2e42_fee0_0000),
    log_ln2_lo: f64::from_bits(0x3dea_39ef_3579_3c76),
    log_even: &[
        f64::from_bits(0x3fc3_9a09_d078_c69f),
        f64::from_bits(0x3fcc_71c5_1d8e_78af),
        f64::from_bits(0x3fd9_9999_9997_fa04),
    ],
    log_odd: &[
        f64::from_bits(0x3fc2_f112_df3e_5244),
        f64::from_bits(0x3fc7_4664_96cb_03de),
        f64::from_bits(0x3fd2_4924_9422_9359),
        f64::from_bits(0x3fe5_5555_5555_5593),
    ],
    log_add: (0x3ff0_0000 - 0x3fe6_a09e) << 32,
    log_mant_mask: 0x000f_ffff_ffff_ffff,
    log_sqrt_half: 0x3fe6_a09e << 32,
    min_normal: f64::MIN_POSITIVE,
    subnormal_scale: 18_014_398_509_481_984.0,
    subnormal_log2: 54.0,
    tiny: 5.551_115_123_125_783e-17,
    tanh_sat: 22.0,
    asinh_big: 268_435_456.0,
};

/// An expansion in progress: the builder plus the value type being computed.
struct Em<'a, 'f> {
    b: &'a mut FunctionBuilder<'f>,
    ty: Type,
    ity: Type,
    c: &'static Consts,
    fma: bool,
}

impl<'a, 'f> Em<'a, 'f> {
    fn new(b: &'a mut FunctionBuilder<'f>, ty: Type, opts: MathOptions) -> Self {
        let c = if ty.lane_type() == types::F32 {
            &F32C
        } else {
            &F64C
        };
        let ity = ty.as_int();
        Em {
            b,
            ty,
            ity,
            c,
            fma: opts.fma,
        }
    }

    fn is_vector(&self) -> bool {
        self.ty.is_vector()
    }

    fn f(&mut self, v: f64) -> Value {
        let s = if self.ty.lane_type() == types::F32 {
            self.b.ins().f32const(v as f32)
        } else {
            self.b.ins().f64const(v)
        };
        if self.is_vector() {
            self.b.ins().splat(self.ty, s)
        } else {
            s
        }
    }

    fn i(&mut self, v: i64) -> Value {
        let lane = self.ity.lane_type();
        let s = self.b.ins().iconst(lane, v);
        if self.is_vector() {
            self.b.ins().splat(self.ity, s)
        } else {
            s
        }
    }

    fn int_bits(&mut self, v: Value) -> Value {
        self.b.ins().bitcast(self.ity, MemFlagsData::new(), v)
    }

    fn float_of(&mut self, v: Value) -> Value {
        self.b.ins().bitcast(self.ty, MemFlagsData::new(), v)
    }

    fn add(&mut self, a: Value, b: Value) -> Value {
        self.b.ins().fadd(a, b)
    }

    fn sub(&mut self, a: Value, b: Value) -> Value {
        self.b.ins().fsub(a, b)
    }

    fn mul(&mut self, a: Value, b: Value) -> Value {
        self.b.ins().fmul(a, b)
    }

    fn div(&mut self, a: Value, b: Value) -> Value {
        self.b.ins().fdiv(a, b)
    }

    fn min(&mut self, a: Value, b: Value) -> Value {
        self.b.ins().fmin(a, b)
    }

    fn max(&mut self, a: Value, b: Value) -> Value {
        self.b.ins().fmax(a, b)
    }

    /// `min(x, hi)` for a constant bound, passing NaN through. On vectors
    /// the `hi < x ? hi : x` select is the pattern x86 lowers to one `minps`
    /// (IEEE `fmin` needs a seven-instruction sequence for its ±0 and NaN
    /// rules, which a clamp does not need).
    fn clamp_hi(&mut self, x: Value, hi: Value) -> Value {
        if self.is_vector() {
            let m = self.cmp(FloatCC::LessThan, hi, x);
            self.sel(m, hi, x)
        } else {
            self.min(x, hi)
        }
    }

    /// `max(x, lo)` for a constant bound, passing NaN through (`maxps`).
    fn clamp_lo(&mut self, x: Value, lo: Value) -> Value {
        if self.is_vector() {
            let m = self.cmp(FloatCC::LessThan, x, lo);
            self.sel(m, lo, x)
        } else {
            self.max(x, lo)
        }
    }

    fn abs(&mut self, a: Value) -> Value {
        self.b.ins().fabs(a)
    }

    /// `a·b + c`, fused when the target has FMA.
    fn mul_add(&mut self, a: Value, b: Value, c: Value) -> Value {
        if self.fma {
            self.b.ins().fma(a, b, c)
        } else {
            let p = self.mul(a, b);
            self.add(p, c)
        }
    }

    /// Horner evaluation, coefficients highest degree first.
    fn horner(&mut self, x: Value, coeffs: &[f64]) -> Value {
        let mut acc = self.f(coeffs[0]);
        for &c in &coeffs[1..] {
            let cv = self.f(c);
            acc = self.mul_add(acc, x, cv);
        }
        acc
    }

    /// Lane mask of `a cc b`: `I8` for scalars, the integer vector for vectors.
    fn cmp(&mut self, cc: FloatCC, a: Value, b: Value) -> Value {
        self.b.ins().fcmp(cc, a, b)
    }

    fn cmp_c(&mut self, cc: FloatCC, a: Value, c: f64) -> Value {
        let cv = self.f(c);
        self.cmp(cc, a, cv)
    }

    fn and(&mut self, a: Value, b: Value) -> Value {
        self.b.ins().band(a, b)
    }

    /// Lane-wise `m ? a : b` for a mask from [`Em::cmp`].
    fn sel(&mut self, m: Value, a: Value, b: Value) -> Value {
        if self.is_vector() {
            let mf = self.b.ins().bitcast(self.ty, MemFlagsData::new(), m);
            self.b.ins().bitselect(mf, a, b)
        } else {
            self.b.ins().select(m, a, b)
        }
    }

    /// `mag` (non-negative or NaN) with the sign of `sign`.
    fn with_sign_of(&mut self, mag: Value, sign: Value) -> Value {
        let mb = self.int_bits(mag);
        let sb = self.int_bits(sign);
        let sm = self.i(self.c.sign_mask);
        let s = self.b.ins().band(sb, sm);
        let r = self.b.ins().bor(mb, s);
        self.float_of(r)
    }

    /// `2^k` for an integral float `k` with `2^k` normal.
    fn pow2(&mut self, k: Value) -> Value {
        let off = self.f(self.c.shifter + self.c.bias as f64);
        let t = self.add(k, off);
        let bits = self.int_bits(t);
        let e = self.b.ins().ishl_imm_u(bits, self.c.mbits);
        self.float_of(e)
    }

    /// Round-to-nearest-even of `v` to an integral float, `|v| < 2^(mbits-1)`.
    fn round_int(&mut self, v: Value) -> Value {
        let sh = self.f(self.c.shifter);
        let t = self.add(v, sh);
        self.sub(t, sh)
    }

    /// Argument reduction shared by `exp` and `expm1`: returns `(k, r)` with
    /// `x = k·ln2 + r`, `|r| ≲ ln2/2`, `k` an integral float.
    fn exp_reduce(&mut self, x: Value) -> (Value, Value) {
        let c = self.c;
        let log2e = self.f(c.log2e);
        let sh = self.f(c.shifter);
        let t = self.mul_add(x, log2e, sh);
        let k = self.sub(t, sh);
        let hi = self.f(-c.exp_ln2_hi);
        let lo = self.f(-c.exp_ln2_lo);
        // k·ln2_hi is exact and x - k·ln2_hi cancels exactly, so only the
        // ln2_lo term rounds, fused or not.
        let r = self.mul_add(k, hi, x);
        let r = self.mul_add(k, lo, r);
        (k, r)
    }

    /// `r + r²·h(r) ≈ expm1(r)` on the reduced range.
    fn expm1_poly(&mut self, r: Value) -> Value {
        let h = self.horner(r, self.c.exp_poly);
        let r2 = self.mul(r, r);
        self.mul_add(r2, h, r)
    }

    fn exp(&mut self, x: Value) -> Value {
        let c = self.c;
        let hi = self.f(c.exp_hi);
        let lo = self.f(c.exp_lo);
        let xc = self.clamp_hi(x, hi);
        let xc = self.clamp_lo(xc, lo);
        let (k, r) = self.exp_reduce(xc);
        let q = self.expm1_poly(r);
        let one = self.f(1.0);
        let p = self.add(q, one);
        // Two normal factors: the first product is exact, so a result in the
        // subnormal range is rounded once, by the second.
        let half = self.f(0.5);
        let kh = self.mul(k, half);
        let k1 = self.round_int(kh);
        let k2 = self.sub(k, k1);
        let s1 = self.pow2(k1);
        let s2 = self.pow2(k2);
        let y = self.mul(p, s1);
        self.mul(y, s2)
    }

    fn expm1(&mut self, x: Value) -> Value {
        let c = self.c;
        let hi = self.f(c.exp_hi);
        let lo = self.f(c.expm1_lo);
        let xc = self.clamp_hi(x, hi);
        let xc = self.clamp_lo(xc, lo);
        let (k, r) = self.exp_reduce(xc);
        let q = self.expm1_poly(r);
        // 2^k·(1 + q) - 1 = 2^k·q + (2^k - 1): 2^k·q is exact and 2^k - 1 is
        // exact wherever it is not negligible, so nothing cancels.
        let kmax = self.f(c.kmax);
        let kc = self.clamp_hi(k, kmax);
        let s = self.pow2(kc);
        let one = self.f(1.0);
        let sm1 = self.sub(s, one);
        let y = self.mul_add(s, q, sm1);
        // k = kmax + 1 (the top of the f32/f64 range): one more exact doubling,
        // overflowing to inf where the result does; clamped inputs past
        // it overflow the same way.
        let kx = self.sub(k, kc);
        let extra = self.pow2(kx);
        let y = self.mul(y, extra);
        let ax = self.abs(x);
        let small = self.cmp_c(FloatCC::LessThan, ax, c.tiny);
        self.sel(small, x, y)
    }

    /// `log(m·2^0) + dk·ln2 + corr` for a reduced mantissa; shared by `log`
    /// and `log1p`.
    fn log_core(&mut self, x: Value, dk_adj: Option<Value>, corr: Option<Value>) -> Value {
        let c = self.c;
        let ix = self.int_bits(x);
        let add = self.i(c.log_add);
        let u = self.b.ins().iadd(ix, add);
        let eb = self.b.ins().ushr_imm_u(u, c.mbits);
        let mask = self.i(c.log_mant_mask);
        let mant = self.b.ins().band(u, mask);
        let sqh = self.i(c.log_sqrt_half);
        let mbits = self.b.ins().iadd(mant, sqh);
        let m = self.float_of(mbits);
        // The biased exponent (< 2^11) as a float: OR it into the mantissa of
        // 2^mbits and subtract 2^mbits.
        let two_p = self.f((self.c.mbits as f64).exp2());
        let two_p_bits = self.int_bits(two_p);
        let ebf = self.b.ins().bor(eb, two_p_bits);
        let ebf = self.float_of(ebf);
        let ebf = self.sub(ebf, two_p);
        let bias = self.f(c.bias as f64);
        let mut dk = self.sub(ebf, bias);
        if let Some(adj) = dk_adj {
            dk = self.sub(dk, adj);
        }

        let one = self.f(1.0);
        let two = self.f(2.0);
        let f = self.sub(m, one);
        let d = self.add(two, f);
        let s = self.div(f, d);
        let z = self.mul(s, s);
        let w = self.mul(z, z);
        let te = self.horner(w, c.log_even);
        let t1 = self.mul(w, te);
        let to = self.horner(w, c.log_odd);
        let t2 = self.mul(z, to);
        let rr = self.add(t2, t1);
        let half = self.f(0.5);
        let hf = self.mul(half, f);
        let hfsq = self.mul(hf, f);
        let ln2lo = self.f(c.log_ln2_lo);
        let mut small = self.mul(dk, ln2lo);
        if let Some(corr) = corr {
            small = self.add(small, corr);
        }
        let hr = self.add(hfsq, rr);
        let acc = self.mul_add(s, hr, small);
        let acc = self.sub(acc, hfsq);
        let acc = self.add(acc, f);
        let ln2hi = self.f(c.log_ln2_hi);
        self.mul_add(dk, ln2hi, acc)
    }

    /// Overrides `core` with the IEEE results for inputs outside (0, inf).
    fn log_specials(&mut self, x: Value, core: Value) -> Value {
        let inf = self.f(f64::INFINITY);
        let ninf = self.f(f64::NEG_INFINITY);
        let nan = self.f(f64::NAN);
        let is_zero = self.cmp_c(FloatCC::Equal, x, 0.0);
        let is_neg = self.cmp_c(FloatCC::LessThan, x, 0.0);
        // +inf and NaN map to themselves.
        let spec = self.sel(is_neg, nan, x);
        let spec = self.sel(is_zero, ninf, spec);
        let pos = self.cmp_c(FloatCC::GreaterThan, x, 0.0);
        let fin = self.cmp(FloatCC::LessThan, x, inf);
        let ok = self.and(pos, fin);
        self.sel(ok, core, spec)
    }

    fn log(&mut self, x: Value) -> Value {
        let c = self.c;
        let sub = self.cmp_c(FloatCC::LessThan, x, c.min_normal);
        let scale = self.f(c.subnormal_scale);
        let xs = self.mul(x, scale);
        let xn = self.sel(sub, xs, x);
        let adj = self.f(c.subnormal_log2);
        let zero = self.f(0.0);
        let adj = self.sel(sub, adj, zero);
        let core = self.log_core(xn, Some(adj), None);
        self.log_specials(x, core)
    }

    fn log1p(&mut self, x: Value) -> Value {
        let c = self.c;
        let one = self.f(1.0);
        let u = self.add(one, x);
        // log(1 + x) = log(u) + log(1 + (x - (u - 1))/u); the second term is
        // tiny, so its first-order value suffices. u is never subnormal.
        let um1 = self.sub(u, one);
        let cc = self.sub(x, um1);
        let corr = self.div(cc, u);
        let core = self.log_core(u, None, Some(corr));
        let r = self.log_specials(u, core);
        let ax = self.abs(x);
        let small = self.cmp_c(FloatCC::LessThan, ax, c.tiny);
        self.sel(small, x, r)
    }

    /// `|x|^y = exp(y·log|x|)`, negated for a negative `x` (or -0) and an odd
    /// integer `y`; NaN for a finite negative `x` and a finite non-integer
    /// `y`; 1 where `y = 0` or `x = 1` (even against NaN) and for `x = -1`,
    /// `y = ±inf` — Rust's (IEEE) `powf`.
    fn pow(&mut self, x: Value, y: Value) -> Value {
        let ax = self.abs(x);
        let l = self.log(ax);
        let t = self.mul(y, l);
        let mag = self.exp(t);
        let yr = self.b.ins().nearest(y);
        let is_int = self.cmp(FloatCC::Equal, yr, y);
        let half = self.f(0.5);
        let h = self.mul(y, half);
        let hr = self.b.ins().nearest(h);
        let h_int = self.cmp(FloatCC::Equal, hr, h);
        let h_frac = self.b.ins().bnot(h_int);
        let odd = self.and(is_int, h_frac);
        let xb = self.int_bits(x);
        let sm = self.i(self.c.sign_mask);
        let xs = self.b.ins().band(xb, sm);
        let zi = self.i(0);
        let negative = self.b.ins().icmp(IntCC::NotEqual, xs, zi);
        let flip = self.and(negative, odd);
        let nmag = self.b.ins().fneg(mag);
        let r = self.sel(flip, nmag, mag);
        let x_neg = self.cmp_c(FloatCC::LessThan, x, 0.0);
        let x_fin = self.cmp_c(FloatCC::GreaterThan, x, f64::NEG_INFINITY);
        let ay = self.abs(y);
        let y_fin = self.cmp_c(FloatCC::LessThan, ay, f64::INFINITY);
        let frac = self.b.ins().bnot(is_int);
        let a = self.and(x_neg, x_fin);
        let b2 = self.and(y_fin, frac);
        let bad = self.and(a, b2);
        let nan = self.f(f64::NAN);
        let r = self.sel(bad, nan, r);
        let y0 = self.cmp_c(FloatCC::Equal, y, 0.0);
        let x1 = self.cmp_c(FloatCC::Equal, x, 1.0);
        let ax1 = self.cmp_c(FloatCC::Equal, ax, 1.0);
        let y_inf = self.cmp_c(FloatCC::Equal, ay, f64::INFINITY);
        let m1 = self.and(ax1, y_inf);
        let o = self.b.ins().bor(y0, x1);
        let ones = self.b.ins().bor(o, m1);
        let one = self.f(1.0);
        self.sel(ones, one, r)
    }

    fn tanh(&mut self, x: Value) -> Value {
        let c = self.c;
        let a = self.abs(x);
        let sat = self.f(c.tanh_sat);
        let a = self.clamp_hi(a, sat);
        let a2 = self.add(a, a);
        let e = self.expm1(a2);
        let two = self.f(2.0);
        let d = self.add(e, two);
        let t = self.div(e, d);
        self.with_sign_of(t, x)
    }

    fn sigmoid(&mut self, x: Value) -> Value {
        let a = self.abs(x);
        let na = self.b.ins().fneg(a);
        let e = self.exp(na);
        let one = self.f(1.0);
        let d = self.add(one, e);
        let pos = self.div(one, d);
        let neg = self.div(e, d);
        let nonneg = self.cmp_c(FloatCC::GreaterThanOrEqual, x, 0.0);
        self.sel(nonneg, pos, neg)
    }

    fn softplus(&mut self, x: Value) -> Value {
        let a = self.abs(x);
        let na = self.b.ins().fneg(a);
        let e = self.exp(na);
        let l = self.log1p(e);
        let zero = self.f(0.0);
        let m = self.clamp_lo(x, zero);
        self.add(m, l)
    }

    fn sign(&mut self, x: Value) -> Value {
        let one = self.f(1.0);
        let mone = self.f(-1.0);
        let gt = self.cmp_c(FloatCC::GreaterThan, x, 0.0);
        let lt = self.cmp_c(FloatCC::LessThan, x, 0.0);
        // Zeros keep their sign and NaN stays NaN.
        let r = self.sel(lt, mone, x);
        self.sel(gt, one, r)
    }

    fn atanh(&mut self, x: Value) -> Value {
        let a = self.abs(x);
        let one = self.f(1.0);
        let om = self.sub(one, a);
        let q = self.div(a, om);
        let a2 = self.add(a, a);
        // 2a/(1-a) written as 2a + 2a·a/(1-a): no cancellation for small a.
        let t = self.mul_add(a2, q, a2);
        let l = self.log1p(t);
        let half = self.f(0.5);
        let r = self.mul(half, l);
        // For a > 1 the rewritten argument no longer goes below -1.
        let nan = self.f(f64::NAN);
        let out = self.cmp_c(FloatCC::GreaterThan, a, 1.0);
        let r = self.sel(out, nan, r);
        self.with_sign_of(r, x)
    }

    fn asinh(&mut self, x: Value) -> Value {
        let c = self.c;
        let a = self.abs(x);
        let one = self.f(1.0);
        let aa = self.mul(a, a);
        let s = self.add(one, aa);
        let s = self.b.ins().sqrt(s);
        let d = self.add(one, s);
        let q = self.div(aa, d);
        let t = self.add(a, q);
        let am1 = self.sub(a, one);
        let small = self.cmp_c(FloatCC::LessThan, a, c.asinh_big);
        let arg = self.sel(small, t, am1);
        let l = self.log1p(arg);
        let zero = self.f(0.0);
        let ln2 = self.f(std::f64::consts::LN_2);
        let off = self.sel(small, zero, ln2);
        let r = self.add(l, off);
        self.with_sign_of(r, x)
    }
}
