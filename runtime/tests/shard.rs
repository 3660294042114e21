//! The sharding plan of every stdlib loss, run on simulated ranks (2 and 3,
//! uneven shards) on every conformance case whose batch can be split: on every
//! rank the loss and the new state equal the full batch's, and the gradient of
//! each sharded input is the rank's rows of the full-batch gradient.

use losslang_compiler::ir::eval::eval;
use losslang_compiler::program::{Call, CompileOptions, compile};
use losslang_compiler::sema::Source;
use losslang_compiler::shard::{analyze, simulate};
use losslang_compiler::value::Tensor;
use losslang_runtime::conformance::{params_of, root, state_of, steps};
use losslang_runtime::io::read_npy;
use losslang_runtime::loader::FileLoader;

fn close(what: &str, got: &Tensor, want: &Tensor) -> Result<(), String> {
    if got.shape != want.shape {
        return Err(format!(
            "{what}: shape {:?}, expected {:?}",
            got.shape, want.shape
        ));
    }
    let (g, w) = (got.to_f64_vec(), want.to_f64_vec());
    let scale = w
        .iter()
        .filter(|x| x.is_finite())
        .fold(1.0f64, |m, x| m.max(x.abs()));
    for (i, (a, b)) in g.iter().zip(&w).enumerate() {
        let ok = if b.is_finite() {
            (a - b).abs() <= 1e-9 * scale + 1e-7 * b.abs()
        } else {
            a == b || (a.is_nan() && b.is_nan())
        };
        if !ok {
            return Err(format!("{what}[{i}]: {a:e}, expected {b:e}"));
        }
    }
    Ok(())
}

/// Uneven shards of `n` rows over `r` ranks, none empty.
fn shards(n: usize, r: usize) -> Vec<usize> {
    match r {
        2 => vec![n - n / 3, n / 3],
        _ => {
            let a = n / 2;
            let b = (n - a) / 2;
            vec![a, b, n - a - b]
        }
    }
}

#[test]
fn every_stdlib_loss_is_exact_on_simulated_ranks() {
    let losses: Vec<String> = std::fs::read_to_string(root().join("tests/conformance/LOSSES.txt"))
        .expect("LOSSES.txt")
        .split_whitespace()
        .map(String::from)
        .collect();
    let mut failures = vec![];
    let mut runs = 0;
    let mut per_loss = vec![];
    for name in &losses {
        let path = root().join("stdlib").join(format!("{name}.loss"));
        let text = std::fs::read_to_string(&path).expect("stdlib file");
        let p = compile(
            Source {
                name: path.display().to_string(),
                text,
            },
            &FileLoader,
            &CompileOptions::default(),
        )
        .unwrap_or_else(|_| panic!("{name} compiles"));
        let g = &p.opt;
        let plan = analyze(g, None).unwrap_or_else(|| panic!("{name} has a batch dim"));
        let cases_dir = root().join("tests/conformance/cases/public").join(name);
        let mut cases: Vec<_> = std::fs::read_dir(&cases_dir)
            .expect("cases")
            .filter_map(|e| e.ok().map(|e| e.path()))
            .collect();
        cases.sort();
        let mut ok_here = [0usize; 2];
        for case in cases {
            let mut state: Option<Vec<(String, Tensor)>> = None;
            for step in steps(&case) {
                let inputs: Vec<(String, Tensor)> = g
                    .inputs
                    .iter()
                    .map(|d| {
                        let f = step.join("inputs").join(format!("{}.npy", d.name));
                        (d.name.clone(), read_npy(&f, &d.name).expect("input"))
                    })
                    .collect();
                let st = state.clone().unwrap_or_else(|| {
                    let f = step.join("state.json");
                    if f.exists() {
                        state_of(
                            &serde_json::from_str(&std::fs::read_to_string(f).unwrap()).unwrap(),
                        )
                    } else {
                        vec![]
                    }
                });
                let call = Call {
                    inputs,
                    params: params_of(&step.join("params.json")),
                    state: st,
                    grads: true,
                    ..Call::default()
                };
                let env = p.bind(&call).expect("bind");
                let mut roots = vec![g.loss()];
                roots.extend(g.updates.iter().map(|u| u.value));
                roots.extend(g.grads.iter().map(|(_, h)| *h));
                let Ok(full) = eval(g, &env, &roots) else {
                    break;
                };
                let n = env.dims[&plan.batch] as usize;
                for (ri, r) in [2usize, 3].into_iter().enumerate() {
                    if n < r {
                        continue;
                    }
                    let sizes = shards(n, r);
                    let offs: Vec<usize> = sizes
                        .iter()
                        .scan(0, |a, &s| {
                            let o = *a;
                            *a += s;
                            Some(o)
                        })
                        .collect();
                    let where_ = format!(
                        "{name}/{} ({r} ranks, rows {sizes:?})",
                        case.file_name().unwrap().to_string_lossy()
                    );
                    let res = match simulate::run(g, &plan, &env, &sizes) {
                        Ok(res) => res,
                        Err(e) => {
                            failures.push(format!("{where_}: {e}"));
                            continue;
                        }
                    };
                    let mut errs = vec![];
                    for (k, rr) in res.iter().enumerate() {
                        errs.extend(close("loss", &rr.loss, &full[0]).err());
                        let mut state = env.state.clone();
                        for (u, v) in g.updates.iter().zip(&full[1..]) {
                            state[u.state] = v.clone();
                        }
                        for (j, (a, b)) in rr.state.iter().zip(&state).enumerate() {
                            errs.extend(close(&format!("state {}", g.states[j].name), a, b).err());
                        }
                        let fg = &full[1 + g.updates.len()..];
                        for ((gi, (inp, _)), (got, want)) in
                            g.grads.iter().enumerate().zip(rr.grads.iter().zip(fg))
                        {
                            let want = match plan.inputs[*inp] {
                                Some(ax) => losslang_compiler::ops::Op::Slice {
                                    axis: ax,
                                    start: losslang_compiler::dim::Dim::lit(offs[k] as i64),
                                    len: losslang_compiler::dim::Dim::lit(sizes[k] as i64),
                                    step: 1,
                                }
                                .eval(&[want], &|_| None)
                                .expect("slice"),
                                None => want.clone(),
                            };
                            errs.extend(close(&format!("rank {k} grad {gi}"), got, &want).err());
                        }
                    }
                    if errs.is_empty() {
                        ok_here[ri] += 1;
                        runs += 1;
                    } else {
                        failures.push(format!("{where_}: {}", errs.join("; ")));
                    }
                }
                let mut st = env.state.clone();
                for (u, v) in g.updates.iter().zip(&full[1..]) {
                    st[u.state] = v.clone();
                }
                state = Some(
                    g.states
                        .iter()
                        .zip(st)
                        .map(|(d, t)| (d.name.clone(), t))
                        .collect(),
                );
            }
        }
        per_loss.push(format!(
            "{name}: {} (2 ranks), {} (3 ranks)",
            ok_here[0], ok_here[1]
        ));
    }
    println!("{}", per_loss.join("\n"));
    println!(
        "simulated ranks: {runs} runs agreed, {} failed",
        failures.len()
    );
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}
