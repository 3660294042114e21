//! PyTorch parity: stdlib `cross_entropy` and `focal` against torch on every built
//! backend. The expectations are torch's, computed once by
//! `scripts/torch_parity_cases.py` into `runtime/tests/torch_parity/cases.json`
//! (docs/pytorch_cross_entropy.md, "PyTorch parity suite"), so this test needs no torch.
//! Large cases are generated here from their seed with the script's `splitmix64`.
//!
//! Tolerances: the loss within 2e-4 relative (1e-6 for the large generated cases),
//! every gradient entry within 1e-4 · max |g|.

use losslang_compiler::backend::Backend;
use losslang_compiler::ops::Scalar;
use losslang_compiler::program::{Call, CompileOptions, Program, compile};
use losslang_compiler::sema::Source;
use losslang_compiler::value::{DType, Tensor};
use losslang_runtime::conformance::root;
use losslang_runtime::loader::FileLoader;
use serde_json::Value;
use std::collections::BTreeMap;

fn cases() -> Vec<Value> {
    let p = root().join("runtime/tests/torch_parity/cases.json");
    let v: Value = serde_json::from_str(&std::fs::read_to_string(&p).expect("cases.json"))
        .expect("valid JSON");
    v["cases"].as_array().expect("cases").clone()
}

fn num(v: &Value) -> f64 {
    match v {
        Value::Number(n) => n.as_f64().expect("f64"),
        Value::String(s) => s.parse().expect("inf, -inf or nan"),
        other => panic!("not a number: {other}"),
    }
}

fn array(v: &Value) -> (DType, Vec<usize>, Vec<f64>) {
    let dtype = match v["dtype"].as_str().expect("dtype") {
        "f32" => DType::F32,
        "f64" => DType::F64,
        "i64" => DType::I64,
        d => panic!("dtype {d}"),
    };
    let shape = v["shape"]
        .as_array()
        .expect("shape")
        .iter()
        .map(|d| d.as_u64().expect("dim") as usize)
        .collect();
    let data = v["data"]
        .as_array()
        .expect("data")
        .iter()
        .map(num)
        .collect();
    (dtype, shape, data)
}

fn tensor(v: &Value) -> Tensor {
    let (dtype, shape, data) = array(v);
    match dtype {
        DType::I64 => Tensor::from_i64(shape, data.iter().map(|&x| x as i64).collect()),
        d => Tensor::from_f64(d, shape, data),
    }
}

/// `scripts/torch_parity_cases.py::splitmix64`: counter `seed·2³² + i`.
fn splitmix64(seed: u64, i: u64) -> u64 {
    let mut z = seed
        .wrapping_mul(1 << 32)
        .wrapping_add(i)
        .wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// The script's `generated_ce`: logits uniform in [-scale, scale) as f32, targets in [0, C).
fn generated(g: &Value) -> Vec<(String, Tensor)> {
    let (seed, n, c) = (
        g["seed"].as_u64().expect("seed"),
        g["n"].as_u64().expect("n") as usize,
        g["c"].as_u64().expect("c") as usize,
    );
    let scale = num(&g["scale"]);
    let logits: Vec<f64> = (0..(n * c) as u64)
        .map(|i| {
            let u = (splitmix64(seed, i) >> 11) as f64 * 2f64.powi(-53);
            f64::from(((u * 2.0 - 1.0) * scale) as f32)
        })
        .collect();
    let target: Vec<i64> = (0..n as u64)
        .map(|i| (splitmix64(seed + 1, i) % c as u64) as i64)
        .collect();
    vec![
        (
            "logits".into(),
            Tensor::from_f64(DType::F32, vec![n, c], logits),
        ),
        ("target".into(), Tensor::from_i64(vec![n], target)),
        (
            "weight".into(),
            Tensor::from_f64(DType::F32, vec![c], vec![1.0; c]),
        ),
    ]
}

fn program(name: &str) -> Program {
    let file = root().join("stdlib").join(format!("{name}.loss"));
    let text = std::fs::read_to_string(&file).expect("stdlib file");
    compile(
        Source {
            name: file.display().to_string(),
            text,
        },
        &FileLoader,
        &CompileOptions::default(),
    )
    .unwrap_or_else(|_| panic!("{name} compiles"))
}

fn params(v: &Value) -> Vec<(String, Scalar)> {
    v.as_object()
        .expect("params")
        .iter()
        .map(|(k, v)| {
            let s = match v {
                Value::Number(n) if n.is_i64() => Scalar::I(n.as_i64().expect("i64")),
                v => Scalar::F(num(v)),
            };
            (k.clone(), s)
        })
        .collect()
}

fn check_case(p: &Program, b: Backend, case: &Value) -> Result<(), String> {
    let inputs = match case.get("generated") {
        Some(g) => generated(g),
        None => case["inputs"]
            .as_object()
            .expect("inputs")
            .iter()
            .map(|(k, v)| (k.clone(), tensor(v)))
            .collect(),
    };
    let call = Call {
        inputs,
        params: params(&case["params"]),
        grads: true,
        ..Call::default()
    };
    let exec = losslang_runtime::backends::executor(b, p, "cpu").map_err(|e| e.message)?;
    let env = p.bind(&call).map_err(|e| e.message)?;
    let out = p
        .run_with(exec.as_ref(), &env, true, false)
        .map_err(|e| e.message)?;
    let want = num(&case["expected_loss"]);
    let rtol = if case.get("generated").is_some() {
        1e-6
    } else {
        2e-4
    };
    if !out.loss.is_finite() || (out.loss - want).abs() > rtol * want.abs().max(1e-30) {
        return Err(format!(
            "loss {} (torch {want}, rel err {:.2e})",
            out.loss,
            (out.loss - want).abs() / want.abs()
        ));
    }
    let (_, g) = out
        .grads
        .iter()
        .find(|(n, _)| n == "logits")
        .ok_or("no gradient")?;
    let got = g.to_f64_vec();
    if let Some(exp) = case.get("expected_grads") {
        let (_, shape, exp) = array(&exp["logits"]);
        if g.shape != shape {
            return Err(format!("gradient shape {:?}, expected {shape:?}", g.shape));
        }
        let scale = exp.iter().fold(0.0f64, |m, x| m.max(x.abs()));
        for (i, (a, e)) in got.iter().zip(&exp).enumerate() {
            if !a.is_finite() || (a - e).abs() > 1e-4 * scale.max(1e-30) {
                return Err(format!(
                    "d/dlogits[{i}] = {a}, torch {e} (max |g| {scale:.3e})"
                ));
            }
        }
    } else {
        let scale = num(&case["grad_max_abs"]);
        if let Some(i) = got.iter().position(|a| !a.is_finite()) {
            return Err(format!("d/dlogits[{i}] = {}", got[i]));
        }
        for pr in case["grad_probes"].as_array().expect("probes") {
            let i = pr[0].as_u64().expect("index") as usize;
            let e = num(&pr[1]);
            if (got[i] - e).abs() > 1e-4 * scale {
                return Err(format!("d/dlogits[{i}] = {}, torch {e}", got[i]));
            }
        }
    }
    Ok(())
}

fn run(heavy: bool) {
    let backends: Vec<Backend> = [Backend::Interp, Backend::Jit, Backend::Candle]
        .into_iter()
        .filter(|b| losslang_runtime::backends::available(*b))
        .collect();
    let mut progs: BTreeMap<String, Program> = BTreeMap::new();
    let mut failures = vec![];
    let mut counts: BTreeMap<String, (usize, usize)> = BTreeMap::new();
    for case in cases() {
        if case["heavy"].as_bool().unwrap_or(false) != heavy {
            continue;
        }
        let loss = case["loss"].as_str().expect("loss").to_string();
        let p = progs.entry(loss.clone()).or_insert_with(|| program(&loss));
        for &b in &backends {
            // The heavy case holds f64 copies of 131M logits per node in the
            // interpreter; it runs on the compiled backends.
            if heavy && b == Backend::Interp {
                continue;
            }
            let c = counts.entry(b.to_string()).or_default();
            c.1 += 1;
            match check_case(p, b, &case) {
                Ok(()) => c.0 += 1,
                Err(e) => failures.push(format!("FAIL {} [{b}]: {e}", case["name"])),
            }
        }
    }
    for (b, (pass, total)) in &counts {
        println!("torch parity {b}: {pass}/{total}");
    }
    for f in &failures {
        println!("{f}");
    }
    assert!(failures.is_empty(), "{} parity failures", failures.len());
}

#[test]
fn torch_parity_every_case_every_backend() {
    run(false);
}

/// N = 4096, C = 32000 (131M logits): `cargo test --release -p losslang-runtime
/// --test torch_parity -- --ignored`.
#[test]
#[ignore = "131M logits: several GB and a minute per backend"]
fn torch_parity_large_vocabulary() {
    run(true);
}
