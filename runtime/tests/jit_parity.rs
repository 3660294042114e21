//! The fused JIT against the interpreter on every standard-library loss, at
//! random points larger than the conformance cases (so that row loops,
//! per-row partials and broadcasts are exercised), on one and on several
//! threads. The two must agree on the outcome: the same error, or results
//! within the conformance tolerances (the JIT computes f32 in f32).

use losslang_compiler::backend::{Backend, Executor, Interp};
use losslang_compiler::program::{Call, CompileOptions, Outputs, Program, compile};
use losslang_compiler::sema::Source;
use losslang_compiler::sema::scope::is_module;
use losslang_compiler::value::Tensor;
use losslang_runtime::loader::FileLoader;
use losslang_runtime::random::random_inputs;
use std::collections::BTreeMap;
use std::path::Path;

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
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../stdlib");
    let mut files: Vec<_> = std::fs::read_dir(&dir)
        .expect("stdlib/ is readable")
        .map(|e| e.expect("a directory entry").path())
        .filter(|p| p.extension().is_some_and(|x| x == "loss"))
        .collect();
    files.sort();
    let mut failures = vec![];
    let mut checked = 0;
    for path in files {
        let text = std::fs::read_to_string(&path).expect("readable");
        if is_module(&text) {
            continue;
        }
        let file = path
            .file_name()
            .expect("name")
            .to_string_lossy()
            .to_string();
        let p = compile(
            Source {
                name: file.clone(),
                text,
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
