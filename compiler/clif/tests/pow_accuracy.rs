//! `x ** y` with a run-time exponent, inline in the JIT (vector lanes and the
//! scalar tail), against Rust's f64 `powf` rounded to the dtype: every
//! special case exactly (NaN, signs of zero and infinity, `1 ** NaN`,
//! `NaN ** 0`, `(-1) ** ±inf`, negative bases with integer and non-integer
//! exponents), and finite results within `2 + 2·|y·ln x|` ulp — the
//! rounding of `y·log x` is magnified by `exp`.

use losslang_clif::Jit;
use losslang_compiler::program::{Call, CompileOptions, compile};
use losslang_compiler::sema::{NoLoader, Source};
use losslang_compiler::value::{DType, Tensor};

fn ulps_f32(a: f32, b: f32) -> u64 {
    let key = |x: f32| {
        let i = x.to_bits() as i32;
        if i < 0 {
            i64::from(i32::MIN) - i64::from(i)
        } else {
            i64::from(i)
        }
    };
    (key(a) - key(b)).unsigned_abs()
}

fn ulps_f64(a: f64, b: f64) -> u64 {
    let key = |x: f64| {
        let i = x.to_bits() as i64;
        if i < 0 { i64::MIN.wrapping_sub(i) } else { i }
    };
    key(a).wrapping_sub(key(b)).unsigned_abs()
}

fn pairs() -> Vec<(f64, f64)> {
    let special = [
        0.0,
        -0.0,
        1.0,
        -1.0,
        0.5,
        -0.5,
        2.0,
        -2.0,
        3.0,
        -3.0,
        2.5,
        -2.5,
        1e-30,
        1e30,
        -1e30,
        f64::INFINITY,
        f64::NEG_INFINITY,
        f64::NAN,
        1e-40,
    ];
    let mut v = vec![];
    for &x in &special {
        for &y in &special {
            v.push((x, y));
        }
    }
    let mut s = 99u64;
    let mut next = || {
        s = s
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        (s >> 11) as f64 / (1u64 << 53) as f64
    };
    for _ in 0..20000 {
        let x = (next() * 40.0 - 20.0).exp();
        let y = next() * 16.0 - 8.0;
        v.push((x, y));
        v.push((-x, (y * 4.0).round()));
    }
    v
}

/// The largest error seen, in ulps.
fn run(dtype: DType) -> u64 {
    let ty = if dtype == DType::F32 { "f32" } else { "f64" };
    let text = format!(
        "loss p(x: {ty}[N], y: {ty}[N], w: f32[N] diff) -> f32 {{\n    report z = x ** y\n    sum(w)\n}}\n"
    );
    let p = compile(
        Source {
            name: "p.loss".into(),
            text,
        },
        &NoLoader,
        &CompileOptions::default(),
    )
    .unwrap_or_else(|f| {
        panic!(
            "{:?}",
            f.diags.iter().map(|d| &d.message).collect::<Vec<_>>()
        )
    });
    let v = pairs();
    let round = |x: f64| {
        if dtype == DType::F32 {
            f64::from(x as f32)
        } else {
            x
        }
    };
    let xs: Vec<f64> = v.iter().map(|p| round(p.0)).collect();
    let ys: Vec<f64> = v.iter().map(|p| round(p.1)).collect();
    let n = xs.len();
    let call = Call {
        inputs: vec![
            ("x".into(), Tensor::from_f64(dtype, vec![n], xs.clone())),
            ("y".into(), Tensor::from_f64(dtype, vec![n], ys.clone())),
            (
                "w".into(),
                Tensor::from_f64(DType::F32, vec![n], vec![1.0; n]),
            ),
        ],
        ..Call::default()
    };
    let env = p.bind(&call).expect("binds");
    let jit = Jit::new(&p.opt).expect("compiles");
    let out = p.run_with(&jit, &env, false, false).expect("runs");
    let got = out.reports[0].1.to_f64_vec();
    let mut worst = 0u64;
    for i in 0..n {
        let (x, y) = (xs[i], ys[i]);
        let want = if dtype == DType::F32 {
            f64::from((x.powf(y)) as f32)
        } else {
            x.powf(y)
        };
        let g = got[i];
        if want.is_nan() || !want.is_finite() || want == 0.0 {
            assert!(
                (g.is_nan() && want.is_nan()) || g.to_bits() == want.to_bits(),
                "{ty}: {x:e} ** {y:e} = {g:e}, want {want:e}"
            );
            continue;
        }
        let u = if dtype == DType::F32 {
            ulps_f32(g as f32, want as f32)
        } else {
            ulps_f64(g, want)
        };
        let t = (y * x.abs().ln()).abs();
        let t = if t.is_finite() { t } else { 0.0 };
        let bound = 2.0 + 2.0 * t;
        // Results the f32 exponent range flushes: compare as numbers.
        let tiny = want.abs()
            < if dtype == DType::F32 {
                1.2e-38
            } else {
                2.3e-308
            };
        assert!(
            (u as f64) <= bound
                || (tiny && (g - want).abs() <= 2.0 * f64::from(f32::MIN_POSITIVE) * 1e-6),
            "{ty}: {x:e} ** {y:e} = {g:e}, want {want:e} ({u} ulp, bound {bound:.1})"
        );
        worst = worst.max(u);
    }
    worst
}

#[test]
fn pow_matches_powf() {
    let u32_ = run(DType::F32);
    let u64_ = run(DType::F64);
    println!("pow: max {u32_} ulp (f32), {u64_} ulp (f64) over the sample");
}
