//! Training a small candle MLP on noisy labels with a `.loss` program.
//!
//! `cargo run --release --example train_noisy_labels [-- OUT.png] [--device cuda]`
//! (the PNG goes to the system's temporary folder unless OUT.png is given)
//!
//! The task (fixed seeds, generated here): C = 4 classes in D = 8 dimensions,
//! class k centred at a random point of norm 2.5, samples = centre + N(0, 1).
//! 4000 training samples, 40% of whose labels are flipped uniformly to another
//! class; a trusted 10% of them keep their true label (the "labeled" set);
//! 2000 clean test samples.
//!
//! Two runs of the same MLP (D → 64 → C, ReLU, SGD with momentum), same
//! initial weights and batches:
//! - `std::cross_entropy` on every (noisy) label;
//! - `std::cw_bass`: cross-entropy on the trusted set plus confidence-weighted
//!   pseudo-label learning on the rest, kept only above its dynamic threshold
//!   (an EMA of the mean confidence, state carried on the device).
//!
//! Gradients come from candle's `backward()` through the compiled loss into
//! the model (`CandleProgram::forward`). Progress bars per run, test
//! accuracy at the end, and a PNG (no fonts: colours are listed on stdout)
//! of the loss, the test accuracy, and cw_bass's threshold and kept fraction
//! per epoch.

use candle_core::{D, DType, Device, Tensor, Var};
use indicatif::{ProgressBar, ProgressStyle};
use losslang_candle::CandleProgram;
use losslang_compiler::ops::Scalar;
use losslang_compiler::program::{CompileOptions, Program, compile};
use losslang_compiler::sema::Source;
use losslang_runtime::loader::{FileLoader, stdlib_source};
use plotters::prelude::*;

const C: usize = 4;
const DIM: usize = 8;
const HIDDEN: usize = 64;
const N_TRAIN: usize = 4000;
const N_TEST: usize = 2000;
const NOISE: f64 = 0.4;
const TRUSTED: f64 = 0.1;
const EPOCHS: usize = 25;
const BATCH: usize = 200;
const LR: f64 = 0.05;
const MOMENTUM: f64 = 0.9;

type Res<T> = Result<T, Box<dyn std::error::Error>>;

/// splitmix64: the data and the initial weights are fixed by their seeds.
struct Rng(u64);

impl Rng {
    fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    fn uniform(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }

    fn normal(&mut self) -> f64 {
        let (u, v) = (self.uniform(), self.uniform());
        (-2.0 * (1.0 - u).ln()).sqrt() * (2.0 * std::f64::consts::PI * v).cos()
    }

    fn below(&mut self, n: usize) -> usize {
        (self.uniform() * n as f64) as usize % n
    }
}

struct Data {
    x: Vec<f32>,
    /// The labels training sees (noisy) and the true ones.
    y: Vec<i64>,
    clean: Vec<i64>,
    trusted: Vec<bool>,
}

fn generate(n: usize, noisy: bool, centres: &[Vec<f64>], rng: &mut Rng) -> Data {
    let mut d = Data {
        x: Vec::with_capacity(n * DIM),
        y: vec![],
        clean: vec![],
        trusted: vec![],
    };
    for _ in 0..n {
        let k = rng.below(C);
        for c in &centres[k] {
            d.x.push((c + rng.normal()) as f32);
        }
        let trusted = noisy && rng.uniform() < TRUSTED;
        let flip = noisy && !trusted && rng.uniform() < NOISE;
        let y = if flip {
            ((k + 1 + rng.below(C - 1)) % C) as i64
        } else {
            k as i64
        };
        d.y.push(y);
        d.clean.push(k as i64);
        d.trusted.push(trusted);
    }
    d
}

struct Mlp {
    w1: Var,
    b1: Var,
    w2: Var,
    b2: Var,
    vel: Vec<Tensor>,
}

impl Mlp {
    fn new(seed: u64, dev: &Device) -> Res<Mlp> {
        let mut rng = Rng(seed);
        let mut init = |rows: usize, cols: usize| -> Res<Var> {
            let s = (2.0 / rows as f64).sqrt();
            let v: Vec<f32> = (0..rows * cols)
                .map(|_| (rng.normal() * s) as f32)
                .collect();
            Ok(Var::from_tensor(&Tensor::from_vec(v, (rows, cols), dev)?)?)
        };
        let w1 = init(DIM, HIDDEN)?;
        let w2 = init(HIDDEN, C)?;
        let b1 = Var::from_tensor(&Tensor::zeros(HIDDEN, DType::F32, dev)?)?;
        let b2 = Var::from_tensor(&Tensor::zeros(C, DType::F32, dev)?)?;
        let vel = [&w1, &b1, &w2, &b2]
            .iter()
            .map(|v| v.as_tensor().zeros_like())
            .collect::<candle_core::Result<Vec<_>>>()?;
        Ok(Mlp {
            w1,
            b1,
            w2,
            b2,
            vel,
        })
    }

    fn forward(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        let h = x
            .matmul(self.w1.as_tensor())?
            .broadcast_add(self.b1.as_tensor())?;
        h.relu()?
            .matmul(self.w2.as_tensor())?
            .broadcast_add(self.b2.as_tensor())
    }

    /// SGD with momentum.
    fn step(&mut self, grads: &candle_core::backprop::GradStore) -> candle_core::Result<()> {
        for (i, v) in [&self.w1, &self.b1, &self.w2, &self.b2]
            .into_iter()
            .enumerate()
        {
            if let Some(g) = grads.get(v.as_tensor()) {
                self.vel[i] = ((&self.vel[i] * MOMENTUM)? + g)?;
                v.set(&(v.as_tensor() - (&self.vel[i] * LR)?)?)?;
            }
        }
        Ok(())
    }

    fn accuracy(&self, x: &Tensor, y: &Tensor) -> candle_core::Result<f64> {
        let pred = self.forward(x)?.argmax(D::Minus1)?.to_dtype(DType::I64)?;
        let hits = pred.eq(y)?.to_dtype(DType::F64)?.mean_all()?;
        hits.to_scalar::<f64>()
    }
}

fn stdlib(name: &str) -> Res<Program> {
    let text = stdlib_source(name).ok_or(format!("no stdlib module {name}"))?;
    compile(
        Source {
            name: format!("{name}.loss"),
            text: text.to_string(),
        },
        &FileLoader,
        &CompileOptions::default(),
    )
    .map_err(|f| {
        f.diags
            .iter()
            .map(|d| d.message.clone())
            .collect::<Vec<_>>()
            .join("; ")
            .into()
    })
}

#[derive(Default)]
struct History {
    loss: Vec<f64>,
    acc: Vec<f64>,
    threshold: Vec<f64>,
    kept: Vec<f64>,
}

#[derive(Clone, Copy, PartialEq)]
enum Rule {
    CrossEntropy,
    CwBass,
}

fn train(rule: Rule, train: &Data, test: &Data, dev: &Device) -> Res<History> {
    let (name, prog) = match rule {
        Rule::CrossEntropy => ("cross_entropy", stdlib("cross_entropy")?),
        Rule::CwBass => ("cw_bass", stdlib("cw_bass")?),
    };
    // A stricter threshold than the segmentation defaults: with four classes
    // most confidences clear 0.3, and the rule would keep every sample.
    let params: Vec<(String, Scalar)> = match rule {
        Rule::CrossEntropy => vec![],
        Rule::CwBass => vec![
            ("base_threshold".into(), Scalar::F(0.95)),
            ("min_threshold".into(), Scalar::F(0.6)),
            ("max_threshold".into(), Scalar::F(0.95)),
            ("beta".into(), Scalar::F(4.0)),
            ("ema_momentum".into(), Scalar::F(0.9)),
        ],
    };
    let loss = CandleProgram::with_params(&prog, dev, &params)?;
    let mut state = loss.new_state();
    let mut mlp = Mlp::new(7, dev)?;
    let xt = Tensor::from_vec(test.x.clone(), (N_TEST, DIM), dev)?;
    let yt = Tensor::from_vec(test.clean.clone(), N_TEST, dev)?;
    let ones = Tensor::ones(C, DType::F32, dev)?;
    let no_boundary = Tensor::zeros(BATCH, DType::U8, dev)?;
    let bar = ProgressBar::new((EPOCHS * (N_TRAIN / BATCH)) as u64);
    bar.set_style(
        ProgressStyle::with_template("{prefix:>14} [{bar:30}] {pos}/{len} {msg}")?
            .progress_chars("=> "),
    );
    bar.set_prefix(name);
    let mut order: Vec<usize> = (0..N_TRAIN).collect();
    let mut rng = Rng(11);
    let mut h = History::default();
    for _ in 0..EPOCHS {
        for i in (1..order.len()).rev() {
            order.swap(i, rng.below(i + 1));
        }
        let (mut sum, mut thr, mut kept) = (0.0, 0.0, 0.0);
        let batches = N_TRAIN / BATCH;
        for b in 0..batches {
            let idx = &order[b * BATCH..(b + 1) * BATCH];
            let x: Vec<f32> = idx
                .iter()
                .flat_map(|&i| train.x[i * DIM..(i + 1) * DIM].iter().copied())
                .collect();
            let x = Tensor::from_vec(x, (BATCH, DIM), dev)?;
            let y = Tensor::from_vec(
                idx.iter().map(|&i| train.y[i]).collect::<Vec<_>>(),
                BATCH,
                dev,
            )?;
            let logits = mlp.forward(&x)?;
            let out = match rule {
                Rule::CrossEntropy => loss.forward(
                    &[("logits", &logits), ("target", &y), ("weight", &ones)],
                    &mut state,
                )?,
                Rule::CwBass => {
                    let labeled: Vec<u8> =
                        idx.iter().map(|&i| u8::from(train.trusted[i])).collect();
                    let labeled = Tensor::from_vec(labeled, BATCH, dev)?;
                    loss.forward(
                        &[
                            ("logits", &logits),
                            ("target", &y),
                            ("labeled", &labeled),
                            ("boundary", &no_boundary),
                        ],
                        &mut state,
                    )?
                }
            };
            let grads = out.loss.backward()?;
            mlp.step(&grads)?;
            sum += out.loss.to_dtype(DType::F64)?.to_scalar::<f64>()?;
            if rule == Rule::CwBass {
                let r = |n: &str| -> Res<f64> {
                    let t = out.report(n).ok_or(format!("no report {n}"))?;
                    Ok(t.to_dtype(DType::F64)?.to_scalar::<f64>()?)
                };
                thr += r("threshold")?;
                let unlabeled = idx.iter().filter(|&&i| !train.trusted[i]).count();
                kept += r("kept")? / unlabeled.max(1) as f64;
            }
            bar.inc(1);
        }
        let n = batches as f64;
        h.loss.push(sum / n);
        h.acc.push(mlp.accuracy(&xt, &yt)?);
        if rule == Rule::CwBass {
            h.threshold.push(thr / n);
            h.kept.push(kept / n);
        }
        bar.set_message(format!(
            "loss {:.3}  test acc {:.3}",
            h.loss.last().copied().unwrap_or(0.0),
            h.acc.last().copied().unwrap_or(0.0)
        ));
    }
    bar.finish();
    Ok(h)
}

/// The curves of one panel and its y range.
type Panel<'a> = (&'a [(&'a [f64], RGBColor)], (f64, f64));

/// Three panels, no text: loss (top, 0 to the largest loss), test accuracy
/// (middle, 0 to 1), cw_bass's threshold and kept fraction (bottom, 0 to 1);
/// grey lines at quarters.
fn plot(path: &str, ce: &History, cw: &History) -> Res<()> {
    let root = BitMapBackend::new(path, (900, 900)).into_drawing_area();
    root.fill(&WHITE)?;
    let panels = root.split_evenly((3, 1));
    let x = (0.0, (EPOCHS - 1) as f64);
    let max_loss = ce
        .loss
        .iter()
        .chain(&cw.loss)
        .fold(0.0f64, |m, v| m.max(*v));
    let series: [Panel; 3] = [
        (&[(&ce.loss, RED), (&cw.loss, BLUE)], (0.0, max_loss * 1.05)),
        (&[(&ce.acc, RED), (&cw.acc, BLUE)], (0.0, 1.0)),
        (&[(&cw.threshold, MAGENTA), (&cw.kept, GREEN)], (0.0, 1.0)),
    ];
    for (area, (lines, y)) in panels.iter().zip(series) {
        let mut chart = ChartBuilder::on(area)
            .margin(20)
            .build_cartesian_2d(x.0..x.1, y.0..y.1)?;
        // A frame and quarter lines stand in for labelled axes.
        chart.draw_series(std::iter::once(Rectangle::new(
            [(x.0, y.0), (x.1, y.1)],
            BLACK.stroke_width(1),
        )))?;
        for q in 1..4 {
            let yq = y.0 + (y.1 - y.0) * q as f64 / 4.0;
            chart.draw_series(LineSeries::new(
                [(x.0, yq), (x.1, yq)],
                RGBColor(210, 210, 210).stroke_width(1),
            ))?;
        }
        for (v, color) in lines {
            chart.draw_series(LineSeries::new(
                v.iter().enumerate().map(|(i, y)| (i as f64, *y)),
                color.stroke_width(2),
            ))?;
        }
    }
    root.present()?;
    Ok(())
}

fn main() -> Res<()> {
    let mut out = std::env::temp_dir()
        .join("train_noisy_labels.png")
        .display()
        .to_string();
    let mut dev = Device::Cpu;
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        if a == "--device" {
            dev = losslang_candle::device(&args.next().ok_or("--device needs cpu or cuda[:i]")?)?;
        } else {
            out = a;
        }
    }
    let mut rng = Rng(2024);
    let centres: Vec<Vec<f64>> = (0..C)
        .map(|_| {
            let v: Vec<f64> = (0..DIM).map(|_| rng.normal()).collect();
            let n = v.iter().map(|a| a * a).sum::<f64>().sqrt();
            v.iter().map(|a| 2.5 * a / n).collect()
        })
        .collect();
    let train_set = generate(N_TRAIN, true, &centres, &mut rng);
    let test_set = generate(N_TEST, false, &centres, &mut rng);
    let wrong = train_set
        .y
        .iter()
        .zip(&train_set.clean)
        .filter(|(a, b)| a != b)
        .count();
    println!(
        "{N_TRAIN} training samples ({:.1}% wrong labels, {} trusted), {N_TEST} clean test samples",
        100.0 * wrong as f64 / N_TRAIN as f64,
        train_set.trusted.iter().filter(|t| **t).count()
    );
    let ce = train(Rule::CrossEntropy, &train_set, &test_set, &dev)?;
    let cw = train(Rule::CwBass, &train_set, &test_set, &dev)?;
    let last = |v: &[f64]| v.last().copied().unwrap_or(f64::NAN);
    println!(
        "test accuracy: cross_entropy {:.3}, cw_bass {:.3}",
        last(&ce.acc),
        last(&cw.acc)
    );
    println!(
        "cw_bass at the end: threshold {:.3}, kept fraction of the untrusted samples {:.3}",
        last(&cw.threshold),
        last(&cw.kept)
    );
    plot(&out, &ce, &cw)?;
    println!(
        "wrote {out}: loss (top, 0..{:.2}), test accuracy (middle, 0..1): red cross_entropy, blue \
         cw_bass; bottom (0..1): cw_bass threshold (magenta) and kept fraction (green); x: epochs \
         1..{EPOCHS}; grey lines at quarters",
        ce.loss
            .iter()
            .chain(&cw.loss)
            .fold(0.0f64, |m, v| m.max(*v))
            * 1.05
    );
    Ok(())
}
