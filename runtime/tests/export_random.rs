//! The exported NumPy module against the reference interpreter on random
//! programs: the differential fuzzer's generator (`fuzz/src/program_gen.rs`)
//! writes well-typed programs over every op family; each is compiled, run by the
//! interpreter with gradients, exported to NumPy, and the module is run by
//! `export_random_check.py` in one Python process on the same data in f64 (so
//! that the comparison tests the translation, not f32 rounding).
//!
//! Needs `python3` with numpy (`.ci/run` installs it before the tests). Without
//! it the test says so and checks only that every program exports.

#[allow(dead_code)]
#[path = "../../fuzz/src/program_gen.rs"]
mod program_gen;

use losslang_compiler::export::{Target, export};
use losslang_compiler::ops::Scalar;
use losslang_compiler::program::{Call, CompileOptions, compile};
use losslang_compiler::sema::{NoLoader, Source};
use losslang_compiler::value::{DType, Tensor};
use losslang_runtime::io::write_npy;
use std::path::Path;
use std::process::Command;

/// f32 arrays as f64, so the module computes in f64 like the interpreter.
fn widened(t: &Tensor) -> Tensor {
    match t.dtype {
        DType::F32 => Tensor::from_f64(DType::F64, t.shape.clone(), t.to_f64_vec()),
        DType::F64 | DType::I64 | DType::Bool => t.clone(),
    }
}

fn json_list(names: &[String]) -> String {
    let q: Vec<String> = names.iter().map(|n| format!("\"{n}\"")).collect();
    format!("[{}]", q.join(", "))
}

#[test]
fn exported_numpy_agrees_with_the_interpreter_on_random_programs() {
    let dir = tempfile::tempdir().expect("temp dir");
    let mut state = 0x0E5B_0A7Du64;
    let mut next = move || {
        state = state
            .wrapping_mul(6_364_136_223_846_793_005)
            .wrapping_add(1_442_695_040_888_963_407);
        state >> 11
    };
    let mut written = 0;
    for case in 0..240 {
        let n = 16 + (next() % 240) as usize;
        let bytes: Vec<u8> = (0..n).map(|_| (next() % 256) as u8).collect();
        let spec = program_gen::generate(&bytes);
        let Ok(p) = compile(
            Source {
                name: "fz.loss".into(),
                text: spec.source.clone(),
            },
            &NoLoader,
            &CompileOptions::default(),
        ) else {
            continue;
        };
        // Every program exports on every target.
        for t in [Target::Torch, Target::Jax] {
            assert!(export(&p, t, "fz.loss").contains("def _forward("));
        }
        let mut call = Call {
            inputs: program_gen::make_inputs(&spec),
            dims: spec.dims.clone(),
            grads: true,
            ..Call::default()
        };
        if let Some(v) = spec.param {
            call.params.push(("p0".into(), Scalar::F(v)));
        }
        // Only the dims no input binds (a state table's) are passed.
        let bound: Vec<&str> = ["N", "C"].to_vec();
        call.dims.retain(|k, _| !bound.contains(&k.as_str()));
        let Ok(out) = p.run(&call) else { continue };
        let cdir = dir.path().join(format!("{case:03}"));
        std::fs::create_dir_all(cdir.join("inputs")).expect("mkdir");
        std::fs::create_dir_all(cdir.join("expected")).expect("mkdir");
        std::fs::write(cdir.join("module.py"), export(&p, Target::Numpy, "fz.loss"))
            .expect("write module");
        std::fs::write(cdir.join("program.loss"), &spec.source).expect("write program");
        for (name, t) in &call.inputs {
            write_npy(
                &cdir.join("inputs").join(format!("{name}.npy")),
                &widened(t),
            )
            .expect("write input");
        }
        let put = |kind: &str, items: &[(String, Tensor)]| -> Vec<String> {
            items
                .iter()
                .map(|(name, t)| {
                    let file = format!("{kind}_{name}.npy");
                    write_npy(&cdir.join("expected").join(&file), &widened(t))
                        .expect("write expected");
                    name.clone()
                })
                .collect()
        };
        let grads = put("grad", &out.grads);
        let states = put("state", &out.state);
        let reports = put("report", &out.reports);
        let dims: Vec<String> = call
            .dims
            .iter()
            .map(|(k, v)| format!("\"{k}\": {v}"))
            .collect();
        let params = match spec.param {
            Some(v) => format!("{{\"p0\": {v:?}}}"),
            None => "{}".into(),
        };
        std::fs::write(
            cdir.join("case.json"),
            format!(
                "{{\"loss\": {}, \"grads\": {}, \"state\": {}, \"reports\": {}, \"dims\": {{{}}}, \"params\": {}}}\n",
                if out.loss.is_finite() {
                    format!("{:?}", out.loss)
                } else {
                    format!("\"{}\"", out.loss)
                },
                json_list(&grads),
                json_list(&states),
                json_list(&reports),
                dims.join(", "),
                params
            ),
        )
        .expect("write case");
        written += 1;
    }
    assert!(written >= 150, "only {written} generated programs ran");
    let numpy = Command::new("python3")
        .args(["-c", "import numpy"])
        .status()
        .is_ok_and(|s| s.success());
    if !numpy {
        println!("{written} programs exported; not run: python3 with numpy is not installed");
        return;
    }
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/export_random_check.py");
    let run = Command::new("python3")
        .arg(&script)
        .arg(dir.path())
        .output()
        .expect("python3 runs");
    let stdout = String::from_utf8_lossy(&run.stdout);
    let stderr = String::from_utf8_lossy(&run.stderr);
    println!("{stdout}");
    assert!(
        run.status.success(),
        "the exported modules disagree with the interpreter:\n{stdout}\n{stderr}"
    );
}
