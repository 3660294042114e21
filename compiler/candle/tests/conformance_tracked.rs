//! Every public conformance case through gradient path (b): the forward
//! graph on tracked candle tensors (`CandleProgram::forward`), gradients from
//! candle's `backward()`, state carried on the device between steps. Same
//! references and tolerances as runtime/tests/conformance.rs, on the CPU
//! kernels and on the portable (CUDA) lowering run on the CPU. Path (a) on
//! the CPU kernels is runtime/tests/conformance.rs; path (a) on the portable
//! lowering is here too.

use candle_core::{DType as CDType, Device, Var};
use losslang_candle::{CandleProgram, CandleState, Target, from_candle, to_candle};
use losslang_compiler::program::{Call, CompileOptions, Program, compile};
use losslang_compiler::sema::Source;
use losslang_compiler::value::{DType, Tensor};
use losslang_runtime::conformance::{close, json, params_of, root, state_of, to_tensor};
use losslang_runtime::io::read_npy;
use losslang_runtime::loader::FileLoader;
use serde_json::Value;
use std::path::{Path, PathBuf};

/// One step on the tracked path; returns the state after it (on the device).
fn run_step(
    p: &Program,
    device: &Device,
    dir: &Path,
    state: Option<CandleState>,
    first_state: &[(String, Tensor)],
    target: Target,
) -> Result<CandleState, String> {
    let mut inputs = vec![];
    for decl in &p.opt.inputs {
        let f = dir.join("inputs").join(format!("{}.npy", decl.name));
        inputs.push((
            decl.name.clone(),
            read_npy(&f, &decl.name).map_err(|e| e.to_string())?,
        ));
    }
    let params = params_of(&dir.join("params.json"));
    // The host binding validates the data and converts the JSON state (as lossc does).
    let call = Call {
        inputs,
        params: params.clone(),
        state: first_state.to_vec(),
        grads: true,
        ..Call::default()
    };
    let env = p.bind(&call).map_err(|e| e.message)?;
    let prog = CandleProgram::for_target(p, device, &params, target).map_err(|e| e.to_string())?;
    let mut vars: Vec<(String, Var)> = vec![];
    let mut plain: Vec<(String, candle_core::Tensor)> = vec![];
    for (decl, t) in p.opt.inputs.iter().zip(&env.inputs) {
        let t = to_candle(t, device).map_err(|e| e.to_string())?;
        if decl.diff {
            vars.push((
                decl.name.clone(),
                Var::from_tensor(&t).map_err(|e| e.to_string())?,
            ));
        } else {
            plain.push((decl.name.clone(), t));
        }
    }
    let named: Vec<(&str, &candle_core::Tensor)> = vars
        .iter()
        .map(|(n, v)| (n.as_str(), v.as_tensor()))
        .chain(plain.iter().map(|(n, t)| (n.as_str(), t)))
        .collect();
    let mut st = match state {
        Some(s) => s,
        None => {
            let mut s = prog.new_state();
            for (decl, v) in p.opt.states.iter().zip(&env.state) {
                s.set(&decl.name, to_candle(v, device).map_err(|e| e.to_string())?);
            }
            s
        }
    };
    let out = prog.forward(&named, &mut st).map_err(|e| e.to_string())?;
    let loss = out
        .loss
        .to_dtype(CDType::F64)
        .and_then(|l| l.to_scalar::<f64>())
        .map_err(|e| e.to_string())?;
    let exp = json(&dir.join("expected.json"));
    let el = exp["loss"].as_f64().ok_or("expected loss")?;
    close(&[loss], &[el], 0.0, 2e-4).map_err(|e| format!("loss: {e}"))?;
    let grads = out.loss.backward().map_err(|e| e.to_string())?;
    if let Value::Object(gs) = &exp["grads"] {
        for (name, rel) in gs {
            let want = read_npy(&dir.join(rel.as_str().ok_or("path")?), name)
                .map_err(|e| e.to_string())?;
            let (_, var) = vars
                .iter()
                .find(|(n, _)| n == name)
                .ok_or(format!("`{name}` is not a diff input"))?;
            let got = match grads.get(var.as_tensor()) {
                Some(g) => from_candle(g, DType::F64).map_err(|e| e.to_string())?,
                // No path from the loss: a zero gradient.
                None => Tensor::from_f64(DType::F64, want.shape.clone(), vec![0.0; want.len()]),
            };
            if got.shape != want.shape {
                return Err(format!(
                    "grad {name}: shape {:?}, expected {:?}",
                    got.shape, want.shape
                ));
            }
            let g32: Vec<f64> = got
                .to_f64_vec()
                .iter()
                .map(|x| f64::from(*x as f32))
                .collect();
            close(&g32, &want.to_f64_vec(), 1e-3, 1e-5).map_err(|e| format!("grad {name}: {e}"))?;
        }
    }
    if let Value::Object(want) = &exp["state"] {
        let have = prog.state_values(&st).map_err(|e| e.to_string())?;
        for (k, v) in want {
            let w = to_tensor(v);
            let got = have
                .iter()
                .find(|(n, _)| n == k)
                .ok_or(format!("no state {k}"))?;
            close(&got.1.to_f64_vec(), &w.to_f64_vec(), 0.0, 2e-4)
                .map_err(|e| format!("state {k}: {e}"))?;
        }
    }
    Ok(st)
}

fn run_case(p: &Program, device: &Device, case: &Path, target: Target) -> Result<(), String> {
    let mut steps: Vec<PathBuf> = std::fs::read_dir(case)
        .map_err(|e| e.to_string())?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| {
            p.file_name()
                .is_some_and(|n| n.to_string_lossy().starts_with("step-"))
        })
        .collect();
    steps.sort();
    if steps.is_empty() {
        steps.push(case.to_path_buf());
    }
    let first = state_of(&json(&steps[0].join("state.json")));
    let mut state = None;
    for s in &steps {
        state = Some(run_step(p, device, s, state, &first, target)?);
    }
    Ok(())
}

fn all_cases(target: Target) {
    let cases = root().join("tests/conformance/cases/public");
    let mut names: Vec<String> = std::fs::read_dir(&cases)
        .expect("cases folder")
        .filter_map(|e| e.ok().map(|e| e.file_name().to_string_lossy().to_string()))
        .collect();
    names.sort();
    assert!(
        names.len() >= 35,
        "expected the 35 losses, found {}",
        names.len()
    );
    // LOSSLANG_CANDLE_DEVICE=cuda runs it on a GPU (portable lowering only), where Rust is
    // installed; scripts/gpu-check.sh runs the same cases through a CUDA lossc instead.
    let device = match std::env::var("LOSSLANG_CANDLE_DEVICE").ok().as_deref() {
        None | Some("cpu") => Device::Cpu,
        Some(spec) => {
            if target == Target::Cpu {
                return;
            }
            losslang_candle::device(spec).unwrap_or_else(|e| panic!("{e}"))
        }
    };
    let mut failures = vec![];
    let (mut total_pass, mut total) = (0, 0);
    let mut table = vec![];
    for name in &names {
        let file = root().join("stdlib").join(format!("{name}.loss"));
        let text = std::fs::read_to_string(&file).expect("stdlib file");
        let p = match compile(
            Source {
                name: format!("{name}.loss"),
                text,
            },
            &FileLoader,
            &CompileOptions::default(),
        ) {
            Ok(p) => p,
            Err(_) => panic!("{name} does not compile"),
        };
        // The portable lowering has no generator (`ensloss`): it must say so.
        if target == Target::Portable && losslang_candle::lower(&p.opt, target).is_err() {
            assert!(
                p.opt
                    .nodes
                    .iter()
                    .any(|n| matches!(n.op, losslang_compiler::ops::Op::Rand(..))),
                "{name}: only the generator may be refused by the portable lowering"
            );
            table.push(format!("{name:<28} (portable: no generator, skipped)"));
            continue;
        }
        let mut case_dirs: Vec<PathBuf> = std::fs::read_dir(cases.join(name))
            .expect("loss folder")
            .filter_map(|e| e.ok().map(|e| e.path()))
            .collect();
        case_dirs.sort();
        let mut pass = 0;
        for c in &case_dirs {
            total += 1;
            match run_case(&p, &device, c, target) {
                Ok(()) => pass += 1,
                Err(e) => failures.push(format!(
                    "FAIL {name}/{}: {e}",
                    c.file_name().expect("name").to_string_lossy()
                )),
            }
        }
        total_pass += pass;
        table.push(format!(
            "{name:<28} candle-tracked {pass}/{}",
            case_dirs.len()
        ));
    }
    println!("{}", table.join("\n"));
    for f in &failures {
        println!("{f}");
    }
    println!(
        "tracked conformance ({target:?}): {total_pass} passed, {} failed",
        total - total_pass
    );
    assert!(failures.is_empty(), "{} cases failed", failures.len());
}

#[test]
fn conformance_exec_portable() {
    let cases = root().join("tests/conformance/cases/public");
    let mut names: Vec<String> = std::fs::read_dir(&cases)
        .expect("cases folder")
        .filter_map(|e| e.ok().map(|e| e.file_name().to_string_lossy().to_string()))
        .collect();
    names.sort();
    let device = match std::env::var("LOSSLANG_CANDLE_DEVICE").ok().as_deref() {
        None | Some("cpu") => Device::Cpu,
        Some(spec) => losslang_candle::device(spec).unwrap_or_else(|e| panic!("{e}")),
    };
    let exec = losslang_candle::CandleExec::with_target(device, Target::Portable);
    let (mut pass, mut total, mut failures) = (0, 0, vec![]);
    for name in &names {
        let text = std::fs::read_to_string(root().join("stdlib").join(format!("{name}.loss")))
            .expect("stdlib file");
        let Ok(p) = compile(
            Source {
                name: format!("{name}.loss"),
                text,
            },
            &FileLoader,
            &CompileOptions::default(),
        ) else {
            panic!("{name} does not compile")
        };
        if losslang_candle::lower(&p.opt, Target::Portable).is_err() {
            continue;
        }
        let mut dirs: Vec<PathBuf> = std::fs::read_dir(cases.join(name))
            .expect("loss folder")
            .filter_map(|e| e.ok().map(|e| e.path()))
            .collect();
        dirs.sort();
        for c in dirs {
            total += 1;
            let mut steps: Vec<PathBuf> = std::fs::read_dir(&c)
                .expect("case folder")
                .filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|p| {
                    p.file_name()
                        .is_some_and(|n| n.to_string_lossy().starts_with("step-"))
                })
                .collect();
            steps.sort();
            if steps.is_empty() {
                steps.push(c.clone());
            }
            let mut state = state_of(&json(&steps[0].join("state.json")));
            let mut r = Ok(());
            for s in &steps {
                match losslang_runtime::conformance::run_step(&p, &exec, s, state.clone()) {
                    Ok(st) => state = st,
                    Err(e) => {
                        r = Err(e);
                        break;
                    }
                }
            }
            match r {
                Ok(()) => pass += 1,
                Err(e) => failures.push(format!("FAIL {name}/{}: {e}", c.display())),
            }
        }
    }
    for f in &failures {
        println!("{f}");
    }
    println!(
        "exec conformance (Portable): {pass} passed, {} failed",
        total - pass
    );
    assert!(failures.is_empty(), "{} cases failed", failures.len());
    assert!(pass >= 130, "only {pass} cases ran");
}

#[test]
fn conformance_tracked_cpu_kernels() {
    all_cases(Target::Cpu);
}

#[test]
fn conformance_tracked_portable() {
    all_cases(Target::Portable);
}
