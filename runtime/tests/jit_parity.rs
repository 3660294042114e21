//! The fused JIT against the interpreter on every standard-library loss, at
//! random points larger than the conformance cases (so that row loops,
//! per-row partials and broadcasts are exercised), on one and on several
//! threads. The two must agree on the outcome: the same error, or results
//! within the conformance tolerances (the JIT computes f32 in f32).

use losslang_compiler::backend::{Backend, Executor, Interp};
use losslang_compiler::program::{Call, CompileOptions, Outputs, Program, compile};
use losslang_compiler::sema::Source;
use losslang_compiler::value::Tensor;
use losslang_runtime::loader::{FileLoader, stdlib_losses};
use losslang_runtime::random::random_inputs;
use std::collections::BTreeMap;

/// Every standard-library loss, compiled.
fn stdlib_programs() -> Vec<(String, Program)> {
    stdlib_losses()
        .into_iter()
        .map(|(file, text)| {
            let p = compile(
                Source {
                    name: file.clone(),
                    text: text.to_string(),
                },
                &FileLoader,
                &CompileOptions::default(),
            )
            .unwrap_or_else(|f| {
                panic!(
                    "{file}: {:?}",
                    f.diags.iter().map(|d| &d.message).collect::<Vec<_>>()
                )
            });
            (file, p)
        })
        .collect()
}

fn dims_for(p: &Program, size: i64) -> BTreeMap<String, i64> {
    let g = &p.opt;
    let mut dims = BTreeMap::new();
    for i in &g.inputs {
        for d in &i.ty.shape {
            let mut syms = vec![];
            d.symbols(&mut syms);
            for s in syms {
                let n = dims.len() as i64;
                dims.entry(s).or_insert(size + n);
            }
        }
    }
    for s in &g.states {
        for d in &s.ty.shape {
            let mut syms = vec![];
            d.symbols(&mut syms);
            for sym in syms {
                dims.entry(sym).or_insert(2 * size);
            }
        }
    }
    dims
}

fn close(what: &str, got: &Tensor, want: &Tensor, rtol: f64, atol: f64) -> Result<(), String> {
    if got.shape != want.shape {
        return Err(format!("{what}: shape {:?} vs {:?}", got.shape, want.shape));
    }
    let (a, b) = (got.to_f64_vec(), want.to_f64_vec());
    let scale = b
        .iter()
        .filter(|x| x.is_finite())
        .fold(1.0f64, |m, x| m.max(x.abs()));
    for (i, (x, y)) in a.iter().zip(&b).enumerate() {
        let ok =
            (x.is_nan() && y.is_nan()) || x == y || (x - y).abs() <= rtol * y.abs() + atol * scale;
        if !ok {
            return Err(format!("{what}[{i}]: jit {x}, interp {y}"));
        }
    }
    Ok(())
}

fn agree(jit: &Outputs, interp: &Outputs) -> Result<(), String> {
    let l = |x: f64| Tensor::scalar_f(losslang_compiler::value::DType::F64, x);
    close("loss", &l(jit.loss), &l(interp.loss), 2e-4, 2e-4)?;
    for ((n, a), (_, b)) in jit.grads.iter().zip(&interp.grads) {
        close(&format!("grad {n}"), a, b, 1e-3, 1e-5)?;
    }
    for ((n, a), (_, b)) in jit.state.iter().zip(&interp.state) {
        close(&format!("state {n}"), a, b, 2e-4, 2e-4)?;
    }
    for ((n, a), (_, b)) in jit.reports.iter().zip(&interp.reports) {
        close(&format!("report {n}"), a, b, 2e-4, 2e-4)?;
    }
    Ok(())
}

#[test]
fn jit_matches_the_interpreter_on_every_stdlib_loss() {
    assert!(losslang_runtime::backends::available(Backend::Jit));
    let mut failures = vec![];
    let mut checked = 0;
    for (file, p) in stdlib_programs() {
        for (size, seed, threads) in [(3, 1, 1), (13, 2, 1), (29, 3, 3)] {
            let dims = dims_for(&p, size);
            let inputs = match random_inputs(&p.opt, &dims, seed) {
                Ok(i) => i,
                Err(e) => panic!("{file}: {e}"),
            };
            let call = Call {
                inputs,
                dims,
                grads: true,
                ..Call::default()
            };
            let env = match p.bind(&call) {
                Ok(e) => e,
                Err(e) => panic!("{file}: {}", e.message),
            };
            let jit = losslang_runtime::backends::jit(&p, threads).expect("compiles");
            let two = |e: &dyn Executor| p.run_with(e, &env, true, false);
            let (j, i) = (two(jit.as_ref()), two(&Interp));
            let r = match (&j, &i) {
                (Ok(a), Ok(b)) => agree(a, b),
                (Err(a), Err(b)) if a.message == b.message => Ok(()),
                (a, b) => Err(format!(
                    "outcomes differ: jit {:?}, interp {:?}",
                    a.as_ref().map(|o| o.loss).map_err(|e| &e.message),
                    b.as_ref().map(|o| o.loss).map_err(|e| &e.message)
                )),
            };
            checked += 1;
            if let Err(e) = r {
                failures.push(format!("{file} (size {size}, {threads} threads): {e}"));
            }
        }
    }
    assert!(checked >= 105, "only {checked} runs");
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

/// The borrowed-buffer API runs the same kernels as the tensor path, so it
/// must give the same bits: inputs read in place, gradients and new state
/// written into the caller's arrays (reused for a second step fed with the
/// first step's state).
#[test]
fn borrowed_buffers_give_the_tensor_paths_bits_on_every_stdlib_loss() {
    use losslang_clif::array::{Array, View};
    use losslang_clif::loss::{Args, JitLoss, Outs};
    let mut checked = 0;
    for (file, p) in stdlib_programs() {
        let loss = JitLoss::new(p).expect("compiles").with_threads(2);
        let p = loss.program();
        let g = &p.opt;
        let dims = dims_for(p, 70);
        let inputs = random_inputs(g, &dims, 7).unwrap_or_else(|e| panic!("{file}: {e}"));
        let tensor_jit = losslang_runtime::backends::jit(p, 2).expect("compiles");
        let arrays: Vec<(String, Array, Vec<usize>)> = inputs
            .iter()
            .map(|(n, t)| (n.clone(), Array::from_tensor(t), t.shape.clone()))
            .collect();
        let mut grads: Vec<Array> = g
            .grads
            .iter()
            .map(|(k, _)| {
                let t = &inputs
                    .iter()
                    .find(|(n, _)| *n == g.inputs[*k].name)
                    .expect("bound")
                    .1;
                Array::zeros(t.dtype, t.len())
            })
            .collect();
        let mut call = Call {
            inputs: inputs.clone(),
            dims: BTreeMap::new(),
            grads: true,
            ..Call::default()
        };
        let state0 = loss.init_state(&[], &dims).expect("initial state");
        let mut state: Vec<(String, Array, Vec<usize>)> = g
            .states
            .iter()
            .zip(&state0)
            .map(|(d, t)| (d.name.clone(), Array::from_tensor(t), t.shape.clone()))
            .collect();
        for step in 0..2 {
            call.state = state
                .iter()
                .map(|(n, a, s)| (n.clone(), a.to_tensor(s.clone())))
                .collect();
            let want = p
                .bind(&call)
                .and_then(|env| p.run_with(tensor_jit.as_ref(), &env, true, false));
            let args = Args {
                inputs: arrays
                    .iter()
                    .map(|(n, a, s)| (n.as_str(), View::new(a.as_ref(), s)))
                    .collect(),
                state: state
                    .iter()
                    .map(|(n, a, s)| (n.as_str(), View::new(a.as_ref(), s)))
                    .collect(),
                ..Args::default()
            };
            let mut new_state: Vec<Array> = state
                .iter()
                .map(|(_, a, _)| {
                    let mut z = a.clone();
                    z.as_mut().copy_from(&a.as_ref());
                    z
                })
                .collect();
            let mut outs = Outs {
                grads: grads.iter_mut().map(Array::as_mut).collect(),
                state: new_state.iter_mut().map(Array::as_mut).collect(),
            };
            let got = loss.call(&args, &mut outs);
            drop(outs);
            let (got, want) = match (got, want) {
                (Ok(a), Ok(b)) => (a, b),
                (Err(a), Err(b)) => {
                    assert_eq!(a.message, b.message, "{file}");
                    break;
                }
                (a, b) => panic!(
                    "{file}: outcomes differ: {:?} vs {:?}",
                    a.map(|c| c.loss),
                    b.map(|o| o.loss)
                ),
            };
            assert_eq!(
                got.loss.to_bits(),
                want.loss.to_bits(),
                "{file} step {step}: loss {} vs {}",
                got.loss,
                want.loss
            );
            for ((n, t), a) in want.grads.iter().zip(&grads) {
                assert_eq!(
                    a,
                    &Array::from_tensor(t),
                    "{file} step {step}: gradient of {n}"
                );
            }
            for ((n, t), a) in want.state.iter().zip(&new_state) {
                assert_eq!(a, &Array::from_tensor(t), "{file} step {step}: state {n}");
            }
            for ((n, a), (_, b)) in got.reports.iter().zip(&want.reports) {
                assert_eq!(
                    a.to_f64_vec()
                        .iter()
                        .map(|x| x.to_bits())
                        .collect::<Vec<_>>(),
                    b.to_f64_vec()
                        .iter()
                        .map(|x| x.to_bits())
                        .collect::<Vec<_>>(),
                    "{file} step {step}: report {n}"
                );
            }
            for ((_, a, _), b) in state.iter_mut().zip(new_state) {
                *a = b;
            }
            checked += 1;
        }
    }
    assert!(checked >= 70, "only {checked} calls");
}

/// Wrong arrays are refused before any kernel runs, with the signature's
/// words for an input and a clear one for the caller's output arrays.
#[test]
fn borrowed_buffers_are_checked_against_the_signature() {
    use losslang_clif::array::{Array, ArrayRef, View};
    use losslang_clif::loss::{Args, JitLoss, Outs};
    let p = compile(
        Source {
            name: "t.loss".into(),
            text: "loss t(x: f32[N, C] diff, y: i64[N]) -> f32 {\n    mean(take(log_softmax(x, axis=1), y, axis=1))\n}\n".into(),
        },
        &FileLoader,
        &CompileOptions::default(),
    )
    .unwrap_or_else(|_| panic!("compiles"));
    let loss = JitLoss::new(p).expect("compiles");
    let x = vec![0.5f32; 6];
    let y = vec![0i64, 2];
    let shape_x = [2usize, 3];
    let shape_y = [2usize];
    let mut g = Array::zeros(losslang_compiler::value::DType::F32, 6);
    let call = |xs: &[usize], yv: &[i64], g: &mut Array| {
        let args = Args {
            inputs: vec![
                ("x", View::new(ArrayRef::F32(&x), xs)),
                ("y", View::new(ArrayRef::I64(yv), &shape_y)),
            ],
            ..Args::default()
        };
        let mut outs = Outs {
            grads: vec![g.as_mut()],
            state: vec![],
        };
        loss.call(&args, &mut outs)
    };
    let ok = call(&shape_x, &y, &mut g).expect("a valid call");
    assert!((ok.loss - -(3f64).ln()).abs() < 1e-6, "loss {}", ok.loss);
    let e = call(&[3, 2], &y, &mut g).expect_err("rank/shape mismatch with y");
    assert!(
        e.message.contains("`y`") || e.message.contains("`x`"),
        "{}",
        e.message
    );
    let e = call(&shape_x, &[0, 3], &mut g).expect_err("index 3 of C=3");
    assert!(
        e.message.contains("index 3") && e.message.contains("y[1]"),
        "{}",
        e.message
    );
    let mut short = Array::zeros(losslang_compiler::value::DType::F32, 5);
    let e = call(&shape_x, &y, &mut short).expect_err("a gradient array of 5 for 6");
    assert!(e.message.contains("output array of 5"), "{}", e.message);
    let mut f64g = Array::zeros(losslang_compiler::value::DType::F64, 6);
    let e = call(&shape_x, &y, &mut f64g).expect_err("f64 gradient for an f32 input");
    assert!(e.message.contains("f64"), "{}", e.message);
}

/// Rows split across threads write disjoint rows and batch partials are
/// combined in row order, so every thread count gives the same bits, on
/// every stdlib loss (200 rows: 1, 2 and 3 threads really split).
#[test]
fn thread_count_does_not_change_the_bits_on_any_stdlib_loss() {
    let bits = |o: &Outputs| -> Vec<u64> {
        let mut v = vec![o.loss.to_bits()];
        for (_, t) in o.grads.iter().chain(&o.state).chain(&o.reports) {
            v.extend(t.to_f64_vec().iter().map(|x| x.to_bits()));
        }
        v
    };
    let mut checked = 0;
    for (file, p) in stdlib_programs() {
        // 200 rows; every other size small, so that pairwise losses stay cheap.
        // State tables (one row per training example) keep 2·N rows.
        let mut dims = dims_for(&p, 7);
        let tables = dims_for(&p, 200);
        for (k, v) in dims.iter_mut() {
            if k == "N" || tables[k] == 400 {
                *v = tables[k];
            }
        }
        let inputs = random_inputs(&p.opt, &dims, 5).unwrap_or_else(|e| panic!("{file}: {e}"));
        let call = Call {
            inputs,
            dims,
            grads: true,
            ..Call::default()
        };
        let env = p
            .bind(&call)
            .unwrap_or_else(|e| panic!("{file}: {}", e.message));
        let mut first: Option<Vec<u64>> = None;
        for t in [1, 2, 3] {
            let jit = losslang_runtime::backends::jit(&p, t).expect("compiles");
            let Ok(out) = p.run_with(jit.as_ref(), &env, true, false) else {
                break;
            };
            let b = bits(&out);
            match &first {
                None => first = Some(b),
                Some(f) => assert!(*f == b, "{file}: {t} threads changed the bits"),
            }
        }
        checked += 1;
    }
    assert!(checked >= 35, "only {checked} losses");
}
