//! The compiled gradient of every standard-library loss agrees with finite
//! differences (`losslang_compiler::gradcheck`, in f64 on the interpreter) at
//! a random point of small size: 5 for every input dim, 16 for dims that only
//! a state table uses, as `lossc gradcheck` chooses them. Losses with a
//! precondition on their data get inputs that satisfy it.

use losslang_compiler::gradcheck::gradcheck;
use losslang_compiler::program::{Call, CompileOptions, Program, compile};
use losslang_compiler::sema::Source;
use losslang_compiler::value::{DType, Data, Tensor};
use losslang_runtime::loader::FileLoader;
use losslang_runtime::random::{Rng, random_inputs};
use std::collections::BTreeMap;
use std::time::Instant;

/// Finite-difference probes per differentiated input.
const PER_INPUT: usize = 64;
const SEED: u64 = 0;

/// The dims of `lossc gradcheck` without `--dims`: 5 for every dim an input
/// names, and for a dim only a state table names the largest of 16 and those.
fn default_dims(p: &Program) -> BTreeMap<String, i64> {
    let g = &p.opt;
    let mut dims = BTreeMap::new();
    for i in &g.inputs {
        for d in &i.ty.shape {
            let mut syms = vec![];
            d.symbols(&mut syms);
            for s in syms {
                dims.entry(s).or_insert(5);
            }
        }
    }
    let biggest = dims.values().copied().max().unwrap_or(16).max(16);
    for s in &g.states {
        for d in &s.ty.shape {
            let mut syms = vec![];
            d.symbols(&mut syms);
            for sym in syms {
                dims.entry(sym).or_insert(biggest);
            }
        }
    }
    dims
}

fn input_mut<'a>(inputs: &'a mut [(String, Tensor)], name: &str) -> &'a mut Tensor {
    &mut inputs
        .iter_mut()
        .find(|(n, _)| n == name)
        .unwrap_or_else(|| panic!("the loss has no input `{name}`"))
        .1
}

fn floats_mut(t: &mut Tensor) -> &mut Vec<f64> {
    match &mut t.data {
        Data::F(v) => v,
        _ => panic!("a float input was expected"),
    }
}

/// Inputs that meet a loss's documented precondition where plain random
/// inputs would not.
fn meet_preconditions(
    loss: &str,
    dims: &BTreeMap<String, i64>,
    inputs: &mut [(String, Tensor)],
    rng: &mut Rng,
) {
    match loss {
        // Q = 2K + 1 levels, ascending and symmetric about the median, and
        // quantile forecasts that do not cross.
        "weighted_interval_score" => {
            let q = dims["Q"] as usize;
            assert_eq!(q, 5, "the levels below are written for Q = 5");
            let tau = input_mut(inputs, "tau");
            *tau = Tensor::from_f64(DType::F32, vec![q], vec![0.1, 0.25, 0.5, 0.75, 0.9]);
            let forecasts = input_mut(inputs, "q");
            let rows = forecasts.shape[0];
            let v = floats_mut(forecasts);
            for r in 0..rows {
                v[r * q..(r + 1) * q].sort_by(f64::total_cmp);
            }
        }
        // w >= 0 with positive row sums: AdaMEOW's weights are sigmoid outputs.
        "adameow_weighted_infonce" => {
            let w = input_mut(inputs, "w");
            for x in floats_mut(w) {
                *x = f64::from((0.05 + 0.9 * rng.uniform()) as f32);
            }
        }
        _ => {}
    }
}

fn check(file: &str, text: &str) -> Result<String, String> {
    let p = compile(
        Source {
            name: file.to_string(),
            text: text.to_string(),
        },
        &FileLoader,
        &CompileOptions::default(),
    )
    .map_err(|f| {
        let errs: Vec<String> = f
            .diags
            .iter()
            .filter(|d| d.is_error())
            .map(|d| format!("{}: {}", d.code, d.message))
            .collect();
        format!("does not compile: {}", errs.join("; "))
    })?;
    let name = p.opt.name.clone();
    let dims = default_dims(&p);
    let mut inputs = random_inputs(&p.opt, &dims, SEED)?;
    let mut rng = Rng::new(SEED ^ 0xC0FF_EE00);
    meet_preconditions(&name, &dims, &mut inputs, &mut rng);
    let call = Call {
        inputs,
        dims: dims.clone(),
        grads: true,
        ..Call::default()
    };
    let env = p
        .bind(&call)
        .map_err(|e| format!("{}: {}", e.code, e.message))?;
    let t0 = Instant::now();
    let rep = gradcheck(&p, &env, PER_INPUT).map_err(|e| format!("{}: {}", e.code, e.message))?;
    let ms = t0.elapsed().as_secs_f64() * 1e3;
    let dims_txt: Vec<String> = dims.iter().map(|(k, v)| format!("{k}={v}")).collect();
    let per_input: Vec<String> = rep
        .inputs
        .iter()
        .map(|i| {
            let worst = match &i.worst {
                Some((pos, an, fd)) if !i.passed => {
                    format!(" [worst at {pos:?}: autodiff {an:e}, finite difference {fd:e}]")
                }
                _ => String::new(),
            };
            format!(
                "{} {}: {} checked, max abs err {:.2e}{worst}",
                if i.passed { "ok" } else { "FAIL" },
                i.name,
                i.checked,
                i.max_abs_err
            )
        })
        .collect();
    let line = format!(
        "{name:<26} ({}) loss = {:.6} in {ms:.0} ms; {}",
        dims_txt.join(","),
        rep.loss,
        per_input.join("; ")
    );
    if rep.inputs.is_empty() {
        return Err(format!("{line}: no `diff` input was checked"));
    }
    if !rep.loss.is_finite() {
        return Err(format!("{line}: the loss is not finite at the probe point"));
    }
    if rep.passed() { Ok(line) } else { Err(line) }
}

#[test]
fn every_stdlib_gradient_matches_finite_differences() {
    let mut checked = 0;
    let mut failures = vec![];
    for (file, text) in losslang_runtime::loader::stdlib_losses() {
        checked += 1;
        match check(&file, text) {
            Ok(line) => println!("{line}"),
            Err(line) => {
                println!("{line}");
                failures.push(format!("stdlib/{file}: {line}"));
            }
        }
    }
    assert!(checked > 0, "no stdlib loss found");
    assert!(
        failures.is_empty(),
        "{} of {checked} stdlib losses fail the gradient check:\n{}",
        failures.len(),
        failures.join("\n")
    );
}
