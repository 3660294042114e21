//! Forward + gradient of representative losses, side by side in one process:
//! every built backend against a hand-written fused Rust loop of the same
//! loss (the practical limit: read the inputs once, write the gradient once).
//! Ratios, not absolute times, are what BENCHMARKS.md reports.
//!
//! `cargo bench -p losslang-runtime --bench losses` (all), or filter, e.g. `-- cw_ce`.

use criterion::{BenchmarkId, Criterion, criterion_group, criterion_main};
use losslang_compiler::backend::Backend;
use losslang_compiler::program::{Call, CompileOptions, Program, compile};
use losslang_compiler::sema::Source;
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

fn dims(pairs: &[(&str, i64)]) -> BTreeMap<String, i64> {
    pairs.iter().map(|(k, v)| (k.to_string(), *v)).collect()
}

/// Times every available backend on `p` with random inputs of `d`.
fn backends(
    c: &mut Criterion,
    group: &str,
    p: &Program,
    d: &BTreeMap<String, i64>,
    interp_too: bool,
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
    for b in [Backend::Jit, Backend::Candle, Backend::Interp] {
        if !available(b) || (b == Backend::Interp && !interp_too) {
            continue;
        }
        let exec = executor(b, p, "cpu").expect("executor");
        g.bench_with_input(
            BenchmarkId::new(b.name(), label.join(",")),
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
fn cw_ce_fused(x: &[f32], t: &[i64], n: usize, c: usize, grad: &mut [f32]) -> f32 {
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

/// Hand-written fused sigmoid focal loss (mean over N·C), value and gradient in one pass.
fn focal_fused(
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
            let qg = q.powf(gamma);
            loss += f64::from(-at * qg * log_pt);
            let d = -at * s * (-gamma * pt * qg * log_pt + qg * q);
            grad[k] = d * inv;
        }
    }
    (loss / (n * c) as f64) as f32
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
    for (p, fused) in [(cw, 0), (focal, 1)] {
        let out = p.run(&call).expect("interpreter run");
        let mut grad = vec![0.0f32; n * k];
        let l = if fused == 0 {
            cw_ce_fused(&x, &t, n, k, &mut grad)
        } else {
            focal_fused(&x, &t, n, k, 2.0, 0.25, &mut grad)
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
    for &(n, k, interp) in &[(65536usize, 100usize, true), (4096, 32000, false)] {
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
        g.finish();
        backends(c, "cw_ce", &cw, &d, interp);
        let mut g = c.benchmark_group("focal");
        g.sample_size(10)
            .warm_up_time(Duration::from_millis(500))
            .measurement_time(Duration::from_secs(3));
        g.bench_function(
            BenchmarkId::new("fused_rust", format!("C={k},N={n}")),
            |b| b.iter(|| black_box(focal_fused(&x, &t, n, k, 2.0, 0.25, &mut grad))),
        );
        g.finish();
        backends(c, "focal", &focal, &d, interp);
    }
}

fn infonce(c: &mut Criterion) {
    let p = program("../stdlib/infonce.loss");
    backends(c, "infonce", &p, &dims(&[("N", 4096), ("D", 256)]), true);
}

fn weighted_cox(c: &mut Criterion) {
    let p = program("../stdlib/weighted_cox.loss");
    backends(c, "weighted_cox", &p, &dims(&[("N", 1_000_000)]), true);
}

/// Parse → checked, differentiated, optimised program, for every stdlib file.
fn compile_latency(c: &mut Criterion) {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../stdlib");
    let mut files: Vec<_> = std::fs::read_dir(&dir)
        .expect("stdlib")
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|e| e == "loss"))
        .collect();
    files.sort();
    let mut g = c.benchmark_group("compile");
    g.sample_size(10)
        .warm_up_time(Duration::from_millis(200))
        .measurement_time(Duration::from_millis(600));
    for f in files {
        let text = std::fs::read_to_string(&f).expect("source");
        if losslang_compiler::sema::scope::is_module(&text) {
            continue;
        }
        let name = f.file_stem().expect("stem").to_string_lossy().to_string();
        g.bench_function(name.clone(), |b| {
            b.iter(|| {
                black_box(
                    compile(
                        Source {
                            name: name.clone(),
                            text: text.clone(),
                        },
                        &FileLoader,
                        &CompileOptions::default(),
                    )
                    .is_ok(),
                )
            })
        });
    }
    g.finish();
}

criterion_group!(benches, row_losses, infonce, weighted_cox, compile_latency);
criterion_main!(benches);
