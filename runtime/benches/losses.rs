//! Forward + gradient of representative losses, side by side in one process:
//! every built backend against a hand-written fused Rust loop of the same
//! loss (the practical limit: read the inputs once, write the gradient once).
//! Ratios, not absolute times, are what BENCHMARKS.md reports.
//!
//! `cargo bench -p losslang-runtime --bench losses` (all), or filter, e.g. `-- cw_ce`.

use criterion::{BenchmarkId, Criterion, criterion_group, criterion_main};
use losslang_clif::array::{Array, View};
use losslang_clif::loss::{Args, JitLoss, Outs};
use losslang_compiler::backend::Backend;
use losslang_compiler::program::{Call, CompileOptions, Program, compile};
use losslang_compiler::sema::Source;
use losslang_compiler::value::Tensor;
use losslang_runtime::backends::{available, executor};
use losslang_runtime::loader::FileLoader;
use std::collections::BTreeMap;
use std::hint::black_box;
use std::path::Path;
use std::time::Duration;

fn program(rel: &str) -> Program {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join(rel);
    let text = std::fs::read_to_string(&path).expect("bench source");
    let name = path
        .file_name()
        .expect("name")
        .to_string_lossy()
        .to_string();
    compile(
        Source { name, text },
        &FileLoader,
        &CompileOptions::default(),
    )
    .unwrap_or_else(|_| panic!("{rel} compiles"))
}

/// A second copy of a compiled program (the JIT API owns its program).
fn program_of(p: &Program) -> Program {
    compile(
        p.sources[0].clone(),
        &FileLoader,
        &CompileOptions::default(),
    )
    .unwrap_or_else(|_| panic!("{} compiles", p.opt.name))
}

fn dims(pairs: &[(&str, i64)]) -> BTreeMap<String, i64> {
    pairs.iter().map(|(k, v)| (k.to_string(), *v)).collect()
}

/// Which contenders besides the JIT on borrowed buffers a group times: at
/// the largest sizes the tensor-converting paths take seconds per call, and
/// criterion's ten samples would take minutes (`lossc bench` measures them).
#[derive(Clone, Copy, PartialEq)]
enum Others {
    All,
    NoInterp,
    None,
}

/// Times every available backend on `p` with random inputs of `d`.
fn backends(
    c: &mut Criterion,
    group: &str,
    p: &Program,
    d: &BTreeMap<String, i64>,
    others: Others,
) {
    let inputs = losslang_runtime::random::random_inputs(&p.opt, d, 0).expect("random inputs");
    let call = Call {
        inputs,
        dims: d.clone(),
        grads: true,
        ..Call::default()
    };
    let env = p.bind(&call).expect("bind");
    let label: Vec<String> = d.iter().map(|(k, v)| format!("{k}={v}")).collect();
    let mut g = c.benchmark_group(group);
    g.sample_size(10)
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(3));
    // The library API: inputs read in place, gradients written into arrays
    // reused across calls (what a training loop does).
    for threads in [1usize, 2] {
        let jl = JitLoss::new(program_of(p))
            .expect("compiles")
            .with_threads(threads);
        let arrays: Vec<(String, Array, Vec<usize>)> = call
            .inputs
            .iter()
            .map(|(n, t)| (n.clone(), Array::from_tensor(t), t.shape.clone()))
            .collect();
        let mut grads: Vec<Array> = p
            .opt
            .grads
            .iter()
            .map(|(k, _)| {
                let t = &env.inputs[*k];
                Array::zeros(t.dtype, t.len())
            })
            .collect();
        let state: Vec<Tensor> = env.state.clone();
        let mut new_state: Vec<Array> = state.iter().map(Array::from_tensor).collect();
        let args = Args {
            inputs: arrays
                .iter()
                .map(|(n, a, s)| (n.as_str(), View::new(a.as_ref(), s)))
                .collect(),
            ..Args::default()
        };
        let id = if threads == 1 {
            "jit_buffers".to_string()
        } else {
            format!("jit_buffers_{threads}t")
        };
        g.bench_function(BenchmarkId::new(id, label.join(",")), |bch| {
            bch.iter(|| {
                let mut outs = Outs {
                    grads: grads.iter_mut().map(Array::as_mut).collect(),
                    state: new_state.iter_mut().map(Array::as_mut).collect(),
                };
                black_box(jl.call(&args, &mut outs).expect("run").loss)
            })
        });
    }
    for b in [Backend::Jit, Backend::Candle, Backend::Interp] {
        let wanted = match others {
            Others::All => true,
            Others::NoInterp => b != Backend::Interp,
            Others::None => false,
        };
        if !available(b) || !wanted {
            continue;
        }
        let exec = executor(b, p, "cpu").expect("executor");
        g.bench_with_input(
            // The JIT through `Program::run_with`: tensors converted in and out.
            BenchmarkId::new(
                if b == Backend::Jit {
                    "jit_tensors"
                } else {
                    b.name()
                },
                label.join(","),
            ),
            &env,
            |bch, env| {
                bch.iter(|| black_box(p.run_with(exec.as_ref(), env, true, false).expect("run")))
            },
        );
    }
    g.finish();
}

/// Hand-written fused confidence-weighted CE: per row, one pass for the max,
/// one for the sum of exponentials, one writing the gradient.
#[inline(always)]
fn cw_ce_loop(x: &[f32], t: &[i64], n: usize, c: usize, grad: &mut [f32]) -> f32 {
    let mut loss = 0.0f64;
    let inv_n = 1.0 / n as f32;
    for i in 0..n {
        let row = &x[i * c..(i + 1) * c];
        let m = row.iter().copied().fold(f32::NEG_INFINITY, f32::max);
        let s: f32 = row.iter().map(|v| (v - m).exp()).sum();
        let lse = m + s.ln();
        let conf = (m - lse).exp();
        let ti = t[i] as usize;
        loss += f64::from(conf * (lse - row[ti]));
        let gr = &mut grad[i * c..(i + 1) * c];
        let k = conf * inv_n;
        for (j, (g, v)) in gr.iter_mut().zip(row).enumerate() {
            let p = (v - lse).exp();
            *g = k * (p - f32::from(u8::from(j == ti)));
        }
    }
    (loss / n as f64) as f32
}

/// `exp` for the hand-vectorised loop, branch-free so that LLVM vectorises
/// the loops calling it: k = round(x·log2 e) by the shifter trick, a
/// two-part ln 2, a degree-6 Taylor polynomial on |r| ≤ ln2/2 (~2e-7
/// relative), and 2^k through the exponent bits.
#[inline(always)]
fn exp_approx(x: f32) -> f32 {
    let x = x.clamp(-87.0, 88.0);
    let shifter = 12_582_912.0f32;
    let k = (x * std::f32::consts::LOG2_E + shifter) - shifter;
    let r = x - k * 0.693_145_75 - k * 1.428_606_8e-6;
    let p = 1.0
        + r * (1.0
            + r * (0.5 + r * (1.0 / 6.0 + r * (1.0 / 24.0 + r * (1.0 / 120.0 + r / 720.0)))));
    p * f32::from_bits(((k as i32 + 127) << 23) as u32)
}

/// The same confidence-weighted CE written for the vector units: eight
/// running maxima and sums per row (so the reductions vectorise) and the
/// inline `exp` above instead of libm. This is the loop a performance
/// engineer would write; `cw_ce_loop` is the straightforward one.
#[inline(always)]
fn cw_ce_simd_loop(x: &[f32], t: &[i64], n: usize, c: usize, grad: &mut [f32]) -> f32 {
    const L: usize = 8;
    let mut loss = 0.0f64;
    let inv_n = 1.0 / n as f32;
    for i in 0..n {
        let row = &x[i * c..(i + 1) * c];
        let chunks = row.chunks_exact(L);
        let rem = chunks.remainder();
        let mut mv = [f32::NEG_INFINITY; L];
        for ch in chunks {
            for j in 0..L {
                mv[j] = if ch[j] > mv[j] { ch[j] } else { mv[j] };
            }
        }
        let m = mv
            .iter()
            .chain(rem)
            .copied()
            .fold(f32::NEG_INFINITY, f32::max);
        let mut sv = [0.0f32; L];
        for ch in row.chunks_exact(L) {
            for j in 0..L {
                sv[j] += exp_approx(ch[j] - m);
            }
        }
        let s: f32 = sv.iter().sum::<f32>() + rem.iter().map(|&v| exp_approx(v - m)).sum::<f32>();
        let lse = m + s.ln();
        let conf = (m - lse).exp();
        let ti = t[i] as usize;
        loss += f64::from(conf * (lse - row[ti]));
        let gr = &mut grad[i * c..(i + 1) * c];
        let k = conf * inv_n;
        for (g, &v) in gr.iter_mut().zip(row) {
            *g = k * exp_approx(v - lse);
        }
        gr[ti] -= k;
    }
    (loss / n as f64) as f32
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
fn cw_ce_simd_native(x: &[f32], t: &[i64], n: usize, c: usize, grad: &mut [f32]) -> f32 {
    cw_ce_simd_loop(x, t, n, c, grad)
}

fn cw_ce_simd(x: &[f32], t: &[i64], n: usize, c: usize, grad: &mut [f32]) -> f32 {
    #[cfg(target_arch = "x86_64")]
    if native() {
        // SAFETY: the features were detected on this host.
        return unsafe { cw_ce_simd_native(x, t, n, c, grad) };
    }
    cw_ce_simd_loop(x, t, n, c, grad)
}

/// Hand-written fused sigmoid focal loss (mean over N·C), value and gradient in one pass.
#[inline(always)]
fn focal_loop(
    x: &[f32],
    t: &[i64],
    n: usize,
    c: usize,
    gamma: f32,
    alpha: f32,
    grad: &mut [f32],
) -> f32 {
    let mut loss = 0.0f64;
    let inv = 1.0 / (n * c) as f32;
    for (i, &ti) in t.iter().enumerate().take(n) {
        for j in 0..c {
            let k = i * c + j;
            let pos = ti == j as i64;
            let s = if pos { 1.0f32 } else { -1.0 };
            let z = s * x[k];
            // log p_t = log_sigmoid(z), 1 - p_t = sigmoid(-z)
            let log_pt = -((-z).max(0.0) + (-z.abs()).exp().ln_1p());
            let pt = log_pt.exp();
            let q = 1.0 - pt;
            let at = if pos { alpha } else { 1.0 - alpha };
            // What a tuned loop does for the default γ = 2: no `powf`.
            let qg = if gamma == 2.0 { q * q } else { q.powf(gamma) };
            loss += f64::from(-at * qg * log_pt);
            let d = -at * s * (-gamma * pt * qg * log_pt + qg * q);
            grad[k] = d * inv;
        }
    }
    (loss / (n * c) as f64) as f32
}

/// The loops compiled for this host's vector units (as `-C target-cpu=native`
/// would), when it has AVX2 and FMA.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
fn cw_ce_native(x: &[f32], t: &[i64], n: usize, c: usize, grad: &mut [f32]) -> f32 {
    cw_ce_loop(x, t, n, c, grad)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
fn focal_native(x: &[f32], t: &[i64], n: usize, c: usize, g: f32, a: f32, grad: &mut [f32]) -> f32 {
    focal_loop(x, t, n, c, g, a, grad)
}

fn native() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        std::is_x86_feature_detected!("avx2") && std::is_x86_feature_detected!("fma")
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

fn cw_ce_fused(x: &[f32], t: &[i64], n: usize, c: usize, grad: &mut [f32]) -> f32 {
    #[cfg(target_arch = "x86_64")]
    if native() {
        // SAFETY: the features were detected on this host.
        return unsafe { cw_ce_native(x, t, n, c, grad) };
    }
    cw_ce_loop(x, t, n, c, grad)
}

fn focal_fused(x: &[f32], t: &[i64], n: usize, c: usize, g: f32, a: f32, grad: &mut [f32]) -> f32 {
    #[cfg(target_arch = "x86_64")]
    if native() {
        // SAFETY: as above.
        return unsafe { focal_native(x, t, n, c, g, a, grad) };
    }
    focal_loop(x, t, n, c, g, a, grad)
}

fn rand_f32(n: usize, seed: u64) -> Vec<f32> {
    let mut r = losslang_runtime::random::Rng::new(seed);
    (0..n).map(|_| r.normal() as f32).collect()
}

fn rand_labels(n: usize, c: usize, seed: u64) -> Vec<i64> {
    let mut r = losslang_runtime::random::Rng::new(seed);
    (0..n).map(|_| r.below(c as u64) as i64).collect()
}

/// The hand-written loops must compute what the programs compute, or the ratios mean nothing.
fn check_fused_against_interpreter(cw: &Program, focal: &Program) {
    use losslang_compiler::value::Tensor;
    let (n, k) = (64usize, 10usize);
    let x = rand_f32(n * k, 11);
    let t = rand_labels(n, k, 12);
    let call = Call {
        inputs: vec![
            (
                "logits".into(),
                Tensor::from_f64(
                    losslang_compiler::value::DType::F32,
                    vec![n, k],
                    x.iter().map(|v| f64::from(*v)).collect(),
                ),
            ),
            ("target".into(), Tensor::from_i64(vec![n], t.clone())),
        ],
        grads: true,
        ..Call::default()
    };
    for (p, fused) in [(cw, 0), (cw, 2), (focal, 1)] {
        let out = p.run(&call).expect("interpreter run");
        let mut grad = vec![0.0f32; n * k];
        let l = match fused {
            0 => cw_ce_fused(&x, &t, n, k, &mut grad),
            2 => cw_ce_simd(&x, &t, n, k, &mut grad),
            _ => focal_fused(&x, &t, n, k, 2.0, 0.25, &mut grad),
        };
        assert!(
            (f64::from(l) - out.loss).abs() < 1e-4 * out.loss.abs().max(1.0),
            "{}: fused loss {l} vs {}",
            p.opt.name,
            out.loss
        );
        let want = out.grads[0].1.to_f64_vec();
        for (a, b) in grad.iter().zip(&want) {
            assert!(
                (f64::from(*a) - b).abs() < 1e-5 + 1e-3 * b.abs(),
                "{}: fused gradient {a} vs {b}",
                p.opt.name
            );
        }
    }
}

fn row_losses(c: &mut Criterion) {
    let cw = program("benches/cw_ce.loss");
    let focal = program("../stdlib/focal.loss");
    check_fused_against_interpreter(&cw, &focal);
    for &(n, k, cw_others, focal_others) in &[
        (65536usize, 100usize, Others::All, Others::NoInterp),
        (4096, 32000, Others::None, Others::None),
    ] {
        let d = dims(&[("N", n as i64), ("C", k as i64)]);
        let x = rand_f32(n * k, 1);
        let t = rand_labels(n, k, 2);
        let mut grad = vec![0.0f32; n * k];
        let mut g = c.benchmark_group("cw_ce");
        g.sample_size(10)
            .warm_up_time(Duration::from_millis(500))
            .measurement_time(Duration::from_secs(3));
        g.bench_function(
            BenchmarkId::new("fused_rust", format!("C={k},N={n}")),
            |b| b.iter(|| black_box(cw_ce_fused(&x, &t, n, k, &mut grad))),
        );
        g.bench_function(
            BenchmarkId::new("fused_rust_simd", format!("C={k},N={n}")),
            |b| b.iter(|| black_box(cw_ce_simd(&x, &t, n, k, &mut grad))),
        );
        g.finish();
        backends(c, "cw_ce", &cw, &d, cw_others);
        let mut g = c.benchmark_group("focal");
        g.sample_size(10)
            .warm_up_time(Duration::from_millis(500))
            .measurement_time(Duration::from_secs(3));
        g.bench_function(
            BenchmarkId::new("fused_rust", format!("C={k},N={n}")),
            |b| b.iter(|| black_box(focal_fused(&x, &t, n, k, 2.0, 0.25, &mut grad))),
        );
        g.finish();
        backends(c, "focal", &focal, &d, focal_others);
    }
}

/// `dst[m, n] = beta * lhs[m, k] @ rhs[k, n]`; each operand is (data,
/// column stride, row stride) in elements, so a transpose is only a stride swap.
fn matmul_f32(
    dst: &mut [f32],
    (m, n, k): (usize, usize, usize),
    (lhs, lhs_cs, lhs_rs): (&[f32], isize, isize),
    (rhs, rhs_cs, rhs_rs): (&[f32], isize, isize),
    beta: f32,
) {
    assert!(dst.len() == m * n && lhs.len() == m * k && rhs.len() == k * n);
    // The strides used here are (1, k) / (m, 1) for lhs and (1, n) / (k, 1)
    // for rhs, which keep every access inside the lengths just checked.
    assert!(
        (lhs_cs, lhs_rs) == (1, k as isize) || (lhs_cs, lhs_rs) == (m as isize, 1),
        "lhs strides"
    );
    assert!(
        (rhs_cs, rhs_rs) == (1, n as isize) || (rhs_cs, rhs_rs) == (k as isize, 1),
        "rhs strides"
    );
    if m == 0 || n == 0 {
        return;
    }
    if k == 0 {
        dst.fill(0.0);
        return;
    }
    // SAFETY: extents and strides checked above; `dst` is a distinct `&mut`,
    // and `read_dst = false` means its old contents are never read.
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            dst.as_mut_ptr(),
            1,
            n as isize,
            false,
            lhs.as_ptr(),
            lhs_cs,
            lhs_rs,
            rhs.as_ptr(),
            rhs_cs,
            rhs_rs,
            0.0,
            beta,
            false,
            false,
            false,
            gemm::Parallelism::None,
        );
    }
}

/// `normalize`'s floor on the norm (torch `F.normalize`), as in `cosine_sim`.
const NORM_EPS: f32 = 1e-12;

/// Rows of `x` divided by max(|row|, eps), and the unfloored norms (the
/// backward pass needs to know which side of the floor each row was on).
#[inline(always)]
fn normalize_rows(x: &[f32], d: usize) -> (Vec<f32>, Vec<f32>) {
    let mut xh = vec![0.0f32; x.len()];
    let mut norms = Vec::with_capacity(x.len() / d.max(1));
    for (row, out) in x.chunks_exact(d).zip(xh.chunks_exact_mut(d)) {
        let nrm = row.iter().map(|a| a * a).sum::<f32>().sqrt();
        let inv = 1.0 / nrm.max(NORM_EPS);
        for (o, a) in out.iter_mut().zip(row) {
            *o = a * inv;
        }
        norms.push(nrm);
    }
    (xh, norms)
}

/// Gradient through `normalize`, in place: `g` holds d/dx̂ on entry, d/dx on exit.
/// Above the floor x̂ = x/|x| and the radial part is projected out; below it
/// x̂ = x/eps is linear.
#[inline(always)]
fn normalize_rows_back(g: &mut [f32], xh: &[f32], norms: &[f32], d: usize) {
    for ((gr, xr), &nrm) in g.chunks_exact_mut(d).zip(xh.chunks_exact(d)).zip(norms) {
        if nrm > NORM_EPS {
            let dot: f32 = gr.iter().zip(xr).map(|(a, b)| a * b).sum();
            let inv = 1.0 / nrm;
            for (a, b) in gr.iter_mut().zip(xr) {
                *a = (*a - b * dot) * inv;
            }
        } else {
            for a in gr.iter_mut() {
                *a /= NORM_EPS;
            }
        }
    }
}

/// Hand-written fused symmetric InfoNCE: normalise, one gemm for the logits,
/// the row and column softmaxes folded into one gradient matrix, two gemms
/// back, and the normalisation's backward pass.
#[inline(always)]
fn infonce_loop(
    u: &[f32],
    v: &[f32],
    (n, d): (usize, usize),
    tau: f32,
    gu: &mut [f32],
    gv: &mut [f32],
) -> f32 {
    let (uh, un) = normalize_rows(u, d);
    let (vh, vn) = normalize_rows(v, d);
    let mut s = vec![0.0f32; n * n];
    let di = d as isize;
    matmul_f32(&mut s, (n, n, d), (&uh, 1, di), (&vh, di, 1), 1.0 / tau);
    let diag: f64 = (0..n).map(|i| f64::from(s[i * n + i])).sum();
    // dL/dS_ij = 0.5/N (P_row + P_col)_ij - [i = j]/N, and S = C/tau: the
    // matrix below is dL/dC, so the gemms after it need no scaling.
    let k = 1.0 / (n as f32 * tau);
    let (hi, lo) = s
        .iter()
        .fold((f32::NEG_INFINITY, f32::INFINITY), |(h, l), &x| {
            (h.max(x), l.min(x))
        });
    let mut lse_sum = 0.0f64;
    if hi - lo <= 80.0 {
        // Every exp(S - max) is then a normal f32 (>= e^-80), so one
        // exponential per element serves both softmaxes: each row and each
        // column sum is exact to rounding with the global shift.
        let mut cs = vec![0.0f32; n];
        let mut rs = vec![0.0f32; n];
        for (row, r) in s.chunks_exact_mut(n).zip(rs.iter_mut()) {
            let mut acc = 0.0f32;
            for (x, c) in row.iter_mut().zip(cs.iter_mut()) {
                let e = (*x - hi).exp();
                *x = e;
                acc += e;
                *c += e;
            }
            *r = acc;
        }
        for (r, c) in rs.iter().zip(&cs) {
            lse_sum += 2.0 * f64::from(hi) + f64::from(*r).ln() + f64::from(*c).ln();
        }
        let b: Vec<f32> = cs.iter().map(|c| 0.5 * k / c).collect();
        for (i, (row, r)) in s.chunks_exact_mut(n).zip(&rs).enumerate() {
            let a = 0.5 * k / r;
            for (x, bj) in row.iter_mut().zip(&b) {
                *x *= a + bj;
            }
            row[i] -= k;
        }
    } else {
        // A spread beyond f32's exponent range (a temperature below ~0.025):
        // each softmax with its own shift, at three exponentials per element.
        let mut r = vec![0.0f32; n];
        for (row, ri) in s.chunks_exact(n).zip(r.iter_mut()) {
            let m = row.iter().copied().fold(f32::NEG_INFINITY, f32::max);
            let acc: f32 = row.iter().map(|x| (x - m).exp()).sum();
            *ri = m + acc.ln();
        }
        let mut cm = vec![f32::NEG_INFINITY; n];
        for row in s.chunks_exact(n) {
            for (c, x) in cm.iter_mut().zip(row) {
                *c = c.max(*x);
            }
        }
        let mut cs = vec![0.0f32; n];
        for row in s.chunks_exact(n) {
            for ((c, x), m) in cs.iter_mut().zip(row).zip(&cm) {
                *c += (x - m).exp();
            }
        }
        let c: Vec<f32> = cm.iter().zip(&cs).map(|(m, s)| m + s.ln()).collect();
        lse_sum = r.iter().chain(&c).map(|x| f64::from(*x)).sum();
        for (i, (row, ri)) in s.chunks_exact_mut(n).zip(&r).enumerate() {
            for (x, cj) in row.iter_mut().zip(&c) {
                *x = 0.5 * k * ((*x - ri).exp() + (*x - cj).exp());
            }
            row[i] -= k;
        }
    }
    let loss = 0.5 * (lse_sum - 2.0 * diag) / n as f64;
    matmul_f32(gu, (n, d, n), (&s, 1, n as isize), (&vh, 1, di), 1.0);
    matmul_f32(gv, (n, d, n), (&s, n as isize, 1), (&uh, 1, di), 1.0);
    normalize_rows_back(gu, &uh, &un, d);
    normalize_rows_back(gv, &vh, &vn, d);
    loss as f32
}

/// Sort key of a time: IEEE total order with -0 = +0 and every NaN one value
/// (last), so equal keys are exactly the program's ties (`searchsorted` finds
/// the first of them, NaN included).
fn time_key(t: f32) -> u32 {
    let b = if t.is_nan() {
        0x7fc0_0000
    } else if t == 0.0 {
        0
    } else {
        t.to_bits()
    };
    if b & 0x8000_0000 != 0 {
        !b
    } else {
        b | 0x8000_0000
    }
}

/// Hand-written fused weighted Cox (Breslow): one sort by time, a reverse
/// scan for the risk-set log-sums, and a forward scan for loss and gradient.
#[inline(always)]
fn weighted_cox_loop(
    risk: &[f32],
    time: &[f32],
    event: &[bool],
    weight: &[f32],
    grad: &mut [f32],
) -> f32 {
    let n = risk.len();
    assert!(n < 1 << 32, "indices are packed into 32 bits");
    let den: f64 = event
        .iter()
        .zip(weight)
        .filter(|(e, _)| **e)
        .map(|(_, w)| f64::from(*w))
        .sum();
    // `safe_div`: no positive event weight, loss 0 and no gradient.
    if den.is_nan() || den <= 0.0 {
        grad.fill(0.0);
        return 0.0;
    }
    let mut keys: Vec<u64> = time
        .iter()
        .enumerate()
        .map(|(i, &t)| (u64::from(time_key(t)) << 32) | i as u64)
        .collect();
    keys.sort_unstable();
    let at = |p: usize| keys[p] as u32 as usize;
    let tie = |p: usize| keys[p] >> 32;
    let hs: Vec<f32> = (0..n).map(|p| risk[at(p)]).collect();
    let ws: Vec<f32> = (0..n).map(|p| weight[at(p)]).collect();
    let es: Vec<bool> = (0..n).map(|p| event[at(p)]).collect();
    // log sum_{m >= p} w e^h at each tie group's first position, as a running
    // maximum of h and a sum scaled by it, so no exponent leaves its own risk
    // set's scale and no log w is taken.
    let mut lse = vec![0.0f64; n];
    let (mut m, mut acc) = (f64::NEG_INFINITY, 0.0f64);
    for p in (0..n).rev() {
        let w = ws[p];
        if w > 0.0 {
            let h = f64::from(hs[p]);
            if h > m {
                acc = acc * (m - h).exp() + f64::from(w);
                m = h;
            } else {
                acc += f64::from(w) * (h - m).exp();
            }
        }
        if p == 0 || tie(p) != tie(p - 1) {
            lse[p] = m + acc.ln();
        }
    }
    // Subject i is in the risk set of every event k at or before its tie
    // group, so d lse_k / d h_i = w_i e^{h_i - L_k}. `c` holds
    // sum_k (w_k / D) e^{L - L_k} relative to the current group's L, which
    // only shrinks along the scan: every factor stays <= 1.
    let inv_d = 1.0 / den;
    let (mut num, mut c, mut l_prev) = (0.0f64, 0.0f64, 0.0f64);
    let mut p = 0;
    while p < n {
        let mut e = p + 1;
        while e < n && tie(e) == tie(p) {
            e += 1;
        }
        let l = lse[p];
        // A risk set of zero total weight (or a non-finite risk) drops its events.
        let ok = l.is_finite();
        if c != 0.0 {
            c *= (l - l_prev).exp();
        }
        l_prev = l;
        if ok {
            for q in p..e {
                if es[q] {
                    let w = f64::from(ws[q]);
                    num += w * (f64::from(hs[q]) - l);
                    c += w * inv_d;
                }
            }
        }
        for q in p..e {
            let i = at(q);
            let w = ws[q];
            let mut g = 0.0f64;
            if ok {
                if w > 0.0 {
                    g = f64::from(w) * (f64::from(hs[q]) - l).exp() * c;
                }
                if es[q] {
                    g -= f64::from(w) * inv_d;
                }
            }
            grad[i] = g as f32;
        }
        p = e;
    }
    (-num * inv_d) as f32
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
fn infonce_native(
    u: &[f32],
    v: &[f32],
    nd: (usize, usize),
    tau: f32,
    gu: &mut [f32],
    gv: &mut [f32],
) -> f32 {
    infonce_loop(u, v, nd, tau, gu, gv)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
fn weighted_cox_native(r: &[f32], t: &[f32], e: &[bool], w: &[f32], grad: &mut [f32]) -> f32 {
    weighted_cox_loop(r, t, e, w, grad)
}

fn infonce_fused(
    u: &[f32],
    v: &[f32],
    nd: (usize, usize),
    tau: f32,
    gu: &mut [f32],
    gv: &mut [f32],
) -> f32 {
    #[cfg(target_arch = "x86_64")]
    if native() {
        // SAFETY: the features were detected on this host.
        return unsafe { infonce_native(u, v, nd, tau, gu, gv) };
    }
    infonce_loop(u, v, nd, tau, gu, gv)
}

fn weighted_cox_fused(r: &[f32], t: &[f32], e: &[bool], w: &[f32], grad: &mut [f32]) -> f32 {
    #[cfg(target_arch = "x86_64")]
    if native() {
        // SAFETY: the features were detected on this host.
        return unsafe { weighted_cox_native(r, t, e, w, grad) };
    }
    weighted_cox_loop(r, t, e, w, grad)
}

fn input<'a>(inputs: &'a [(String, Tensor)], name: &str) -> &'a Tensor {
    &inputs
        .iter()
        .find(|(n, _)| n == name)
        .unwrap_or_else(|| panic!("input `{name}`"))
        .1
}

fn f32s(t: &Tensor) -> Vec<f32> {
    t.to_f64_vec().iter().map(|&x| x as f32).collect()
}

fn bools(t: &Tensor) -> Vec<bool> {
    match &t.data {
        losslang_compiler::value::Data::B(v) => v.clone(),
        _ => panic!("a bool tensor"),
    }
}

fn f32_tensor(shape: &[usize], v: &[f32]) -> Tensor {
    Tensor::from_f64(
        losslang_compiler::value::DType::F32,
        shape.to_vec(),
        v.iter().map(|x| f64::from(*x)).collect(),
    )
}

/// The interpreter's loss and gradients against a fused loop's, at the
/// tolerances of the conformance cases.
fn assert_matches(what: &str, call: &Call, p: &Program, loss: f32, grads: &[&[f32]]) {
    let out = p.run(call).expect("interpreter run");
    assert!(
        (f64::from(loss) - out.loss).abs() <= 1e-4 * out.loss.abs().max(1.0),
        "{what}: fused loss {loss} vs {}",
        out.loss
    );
    assert_eq!(out.grads.len(), grads.len(), "{what}: gradient count");
    for ((name, want), got) in out.grads.iter().zip(grads) {
        let want = want.to_f64_vec();
        assert_eq!(want.len(), got.len(), "{what}: d{name} length");
        let scale = want.iter().fold(1.0f64, |m, x| m.max(x.abs()));
        for (k, (a, b)) in got.iter().zip(&want).enumerate() {
            assert!(
                (f64::from(*a) - b).abs() <= 1e-3 * b.abs() + 1e-5 * scale,
                "{what}: d{name}[{k}] fused {a} vs {b}"
            );
        }
    }
}

/// Both softmax paths of the fused InfoNCE (the single-exponential one at the
/// default temperature, the per-axis-shift one at a tiny temperature).
fn check_infonce(p: &Program) {
    let (n, d) = (48usize, 12usize);
    let inputs = losslang_runtime::random::random_inputs(&p.opt, &dims(&[("N", 48), ("D", 12)]), 5)
        .expect("random inputs");
    let u = f32s(input(&inputs, "u"));
    let v = f32s(input(&inputs, "v"));
    for tau in [0.07f32, 0.005] {
        let call = Call {
            inputs: inputs.clone(),
            params: vec![(
                "temperature".into(),
                losslang_compiler::ops::Scalar::F(f64::from(tau)),
            )],
            grads: true,
            ..Call::default()
        };
        let (mut gu, mut gv) = (vec![0.0f32; n * d], vec![0.0f32; n * d]);
        let l = infonce_fused(&u, &v, (n, d), tau, &mut gu, &mut gv);
        assert_matches(&format!("infonce tau={tau}"), &call, p, l, &[&gu, &gv]);
    }
}

/// A named weighted Cox input set: risk, time, event, weight.
type CoxCase<'a> = (&'a str, &'a [f32], &'a [f32], &'a [bool], &'a [f32]);

/// Plain random data, then heavy ties with zero weights (including a last
/// tie group of zero weight, whose events are dropped) and risks of size
/// ~100, then no events at all.
fn check_weighted_cox(p: &Program) {
    let n = 301usize;
    let inputs = losslang_runtime::random::random_inputs(&p.opt, &dims(&[("N", 301)]), 7)
        .expect("random inputs");
    let risk = f32s(input(&inputs, "risk"));
    let time = f32s(input(&inputs, "time"));
    let event = bools(input(&inputs, "event"));
    let weight = f32s(input(&inputs, "weight"));
    let tmax = time.iter().fold(0.0f32, |m, t| m.max((t * 12.0).floor()));
    let tied: Vec<f32> = time.iter().map(|t| (t * 12.0).floor()).collect();
    let sparse: Vec<f32> = weight
        .iter()
        .zip(&tied)
        .enumerate()
        .map(|(i, (w, t))| if i % 7 == 0 || *t == tmax { 0.0 } else { *w })
        .collect();
    let big: Vec<f32> = risk.iter().map(|r| 60.0 * r).collect();
    let none = vec![false; n];
    let cases: [CoxCase; 4] = [
        ("random", &risk, &time, &event, &weight),
        ("ties, zero weights", &risk, &tied, &event, &sparse),
        ("ties, large risks", &big, &tied, &event, &sparse),
        ("no events", &risk, &time, &none, &weight),
    ];
    for (what, r, t, e, w) in cases {
        let call = Call {
            inputs: vec![
                ("risk".into(), f32_tensor(&[n], r)),
                ("time".into(), f32_tensor(&[n], t)),
                ("event".into(), Tensor::from_bool(vec![n], e.to_vec())),
                ("weight".into(), f32_tensor(&[n], w)),
            ],
            grads: true,
            ..Call::default()
        };
        let mut g = vec![f32::NAN; n];
        let l = weighted_cox_fused(r, t, e, w, &mut g);
        assert_matches(&format!("weighted_cox {what}"), &call, p, l, &[&g]);
    }
}

fn infonce(c: &mut Criterion) {
    let p = program("../stdlib/infonce.loss");
    check_infonce(&p);
    let (n, dd) = (4096usize, 256usize);
    let d = dims(&[("N", n as i64), ("D", dd as i64)]);
    let inputs = losslang_runtime::random::random_inputs(&p.opt, &d, 0).expect("random inputs");
    let u = f32s(input(&inputs, "u"));
    let v = f32s(input(&inputs, "v"));
    let (mut gu, mut gv) = (vec![0.0f32; n * dd], vec![0.0f32; n * dd]);
    let mut g = c.benchmark_group("infonce");
    g.sample_size(10)
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(3));
    g.bench_function(
        BenchmarkId::new("fused_rust", format!("D={dd},N={n}")),
        |b| b.iter(|| black_box(infonce_fused(&u, &v, (n, dd), 0.07, &mut gu, &mut gv))),
    );
    g.finish();
    // The interpreter takes ~15 s per call at this size.
    backends(c, "infonce", &p, &d, Others::NoInterp);
}

fn weighted_cox(c: &mut Criterion) {
    let p = program("../stdlib/weighted_cox.loss");
    check_weighted_cox(&p);
    let n = 1_000_000usize;
    let d = dims(&[("N", n as i64)]);
    let inputs = losslang_runtime::random::random_inputs(&p.opt, &d, 0).expect("random inputs");
    let risk = f32s(input(&inputs, "risk"));
    let time = f32s(input(&inputs, "time"));
    let event = bools(input(&inputs, "event"));
    let weight = f32s(input(&inputs, "weight"));
    let mut grad = vec![0.0f32; n];
    let mut g = c.benchmark_group("weighted_cox");
    g.sample_size(10)
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(3));
    g.bench_function(BenchmarkId::new("fused_rust", format!("N={n}")), |b| {
        b.iter(|| black_box(weighted_cox_fused(&risk, &time, &event, &weight, &mut grad)))
    });
    g.finish();
    backends(c, "weighted_cox", &p, &d, Others::All);
}

/// Parse → callable: checked, differentiated, optimised and JIT-compiled
/// (the call with gradients; the forward-only set compiles on first use),
/// for every stdlib file, bypassing the process's compile cache.
fn compile_latency(c: &mut Criterion) {
    let mut g = c.benchmark_group("compile");
    g.sample_size(10)
        .warm_up_time(Duration::from_millis(200))
        .measurement_time(Duration::from_millis(600));
    for (file, text) in losslang_runtime::loader::stdlib_losses() {
        let name = file.trim_end_matches(".loss").to_string();
        g.bench_function(name.clone(), |b| {
            b.iter(|| {
                let p = compile(
                    Source {
                        name: name.clone(),
                        text: text.to_string(),
                    },
                    &FileLoader,
                    &CompileOptions::default(),
                )
                .unwrap_or_else(|_| panic!("{name} compiles"));
                black_box(JitLoss::new_uncached(p).is_ok())
            })
        });
    }
    g.finish();
}

criterion_group!(benches, row_losses, infonce, weighted_cox, compile_latency);
criterion_main!(benches);
