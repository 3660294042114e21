//! Reading the conformance cases (`tests/conformance/cases`) and comparing with
//! their references, shared by every backend's conformance test.

use crate::io::read_npy;
use losslang_compiler::backend::Executor;
use losslang_compiler::ops::Scalar;
use losslang_compiler::program::{Call, Program};
use losslang_compiler::value::{DType, Tensor};
use serde_json::Value;
use std::path::{Path, PathBuf};

/// The repository root (the conformance cases live in `tests/conformance`).
pub fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// A JSON file of a case.
pub fn json(p: &Path) -> Value {
    serde_json::from_str(
        &std::fs::read_to_string(p).unwrap_or_else(|e| panic!("{}: {e}", p.display())),
    )
    .expect("valid JSON")
}

/// A state or expected value from JSON (numbers, bools, nested lists) as an f64 tensor.
pub fn to_tensor(v: &Value) -> Tensor {
    fn walk(v: &Value, shape: &mut Vec<usize>, depth: usize, out: &mut Vec<f64>) {
        match v {
            Value::Array(xs) => {
                if shape.len() == depth {
                    shape.push(xs.len());
                }
                for x in xs {
                    walk(x, shape, depth + 1, out);
                }
            }
            Value::Bool(b) => out.push(f64::from(u8::from(*b))),
            Value::Number(n) => out.push(n.as_f64().expect("number")),
            Value::String(s) => out.push(s.parse().expect("numeric string")),
            Value::Null | Value::Object(_) => panic!("unexpected JSON in a state"),
        }
    }
    let mut shape = vec![];
    let mut out = vec![];
    walk(v, &mut shape, 0, &mut out);
    Tensor::from_f64(DType::F64, shape, out)
}

/// Elementwise `|got − exp| ≤ atol·max(1, max|exp|) + rtol·|exp|`, the conformance tolerance.
pub fn close(got: &[f64], exp: &[f64], rtol: f64, atol: f64) -> Result<(), String> {
    if got.len() != exp.len() {
        return Err(format!("{} values, expected {}", got.len(), exp.len()));
    }
    let scale = exp.iter().fold(1.0f64, |m, x| m.max(x.abs()));
    let mut worst = 0.0f64;
    for (g, e) in got.iter().zip(exp) {
        if g.is_finite() != e.is_finite() {
            return Err(format!("non-finite mismatch: got {g}, expected {e}"));
        }
        let err = (g - e).abs();
        worst = worst.max(err);
        if e.is_finite() && err > atol * scale + rtol * e.abs() {
            return Err(format!(
                "got {g}, expected {e} (err {err:.3e}, scale {scale:.3e})"
            ));
        }
    }
    let _ = worst;
    Ok(())
}

/// A case's `params.json` as param values.
pub fn params_of(p: &Path) -> Vec<(String, Scalar)> {
    match json(p) {
        Value::Object(m) => m
            .into_iter()
            .map(|(k, v)| {
                let s = match v {
                    Value::Bool(b) => Scalar::B(b),
                    Value::Number(n) if n.is_i64() => Scalar::I(n.as_i64().expect("i64")),
                    Value::Number(n) => Scalar::F(n.as_f64().expect("f64")),
                    other => panic!("param {k}: {other}"),
                };
                (k, s)
            })
            .collect(),
        _ => panic!("params.json is an object"),
    }
}

/// A case's state object as named tensors.
pub fn state_of(v: &Value) -> Vec<(String, Tensor)> {
    match v {
        Value::Object(m) => m.iter().map(|(k, v)| (k.clone(), to_tensor(v))).collect(),
        _ => vec![],
    }
}

/// The steps of a case, in order: `step-*` folders of a multi-step case, else the case itself.
pub fn steps(case: &Path) -> Vec<PathBuf> {
    let mut steps: Vec<PathBuf> = std::fs::read_dir(case)
        .map(|rd| rd.filter_map(|e| e.ok().map(|e| e.path())).collect())
        .unwrap_or_default();
    steps.retain(|p| {
        p.file_name()
            .is_some_and(|n| n.to_string_lossy().starts_with("step-"))
    });
    steps.sort();
    if steps.is_empty() {
        steps.push(case.to_path_buf());
    }
    steps
}

/// Runs one step of a case on `exec` and compares loss, gradients, reports
/// and new state with the references; returns the new state or what missed.
pub fn run_step(
    p: &Program,
    exec: &dyn Executor,
    dir: &Path,
    state: Vec<(String, Tensor)>,
) -> Result<Vec<(String, Tensor)>, String> {
    let mut inputs = vec![];
    for decl in &p.opt.inputs {
        let f = dir.join("inputs").join(format!("{}.npy", decl.name));
        inputs.push((
            decl.name.clone(),
            read_npy(&f, &decl.name).map_err(|e| e.to_string())?,
        ));
    }
    let call = Call {
        inputs,
        params: params_of(&dir.join("params.json")),
        state,
        grads: true,
        ..Call::default()
    };
    let env = p.bind(&call).map_err(|e| e.message)?;
    let out = p.run_with(exec, &env, true, false).map_err(|e| e.message)?;
    let exp = json(&dir.join("expected.json"));
    let el = exp["loss"].as_f64().ok_or("expected loss")?;
    close(&[out.loss], &[el], 0.0, 2e-4).map_err(|e| format!("loss: {e}"))?;
    if let Value::Object(gs) = &exp["grads"] {
        for (name, rel) in gs {
            let want = read_npy(&dir.join(rel.as_str().ok_or("path")?), name)
                .map_err(|e| e.to_string())?;
            let got = out
                .grads
                .iter()
                .find(|(n, _)| n == name)
                .ok_or(format!("no gradient for {name}"))?;
            if got.1.shape != want.shape {
                return Err(format!(
                    "grad {name}: shape {:?}, expected {:?}",
                    got.1.shape, want.shape
                ));
            }
            // The compiler's f32 gradient is compared after rounding, as a float32 file would hold it.
            let g32: Vec<f64> = got
                .1
                .to_f64_vec()
                .iter()
                .map(|x| f64::from(*x as f32))
                .collect();
            close(&g32, &want.to_f64_vec(), 1e-3, 1e-5).map_err(|e| format!("grad {name}: {e}"))?;
        }
    }
    if let Value::Object(st) = &exp["state"] {
        for (k, v) in st {
            let want = to_tensor(v);
            let got = out
                .state
                .iter()
                .find(|(n, _)| n == k)
                .ok_or(format!("no state {k}"))?;
            close(&got.1.to_f64_vec(), &want.to_f64_vec(), 0.0, 2e-4)
                .map_err(|e| format!("state {k}: {e}"))?;
        }
    }
    Ok(out.state)
}
