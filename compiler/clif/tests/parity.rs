//! The JIT against the interpreter on every primitive, generated from
//! `ops::catalog` (an exhaustive match keeps it complete): each sample becomes
//! `sum(op(args) * w)` with the op's value reported, in f64 and, where the op
//! takes floats, in f32. Values and gradients must agree within 1e-5
//! relative; integer and bool results exactly. Fused and unfused schedules
//! are both checked.

use losslang_clif::Jit;
use losslang_compiler::autodiff::differentiate;
use losslang_compiler::backend::{Executor, Interp};
use losslang_compiler::ir::eval::Env;
use losslang_compiler::ir::verify::verify;
use losslang_compiler::ir::{Graph, Handle, InputDecl, ParamDecl, StateDecl, StateUpdate, Ty};
use losslang_compiler::ops::catalog::{Arg, Domain, kind_index, samples};
use losslang_compiler::ops::catalog::{SampleRng, sample_data};
use losslang_compiler::ops::{BinaryOp, Op, Scalar};
use losslang_compiler::value::{DType, Data, Tensor};
use losslang_grammar::Span;
use std::collections::BTreeSet;

/// Element-wise agreement: exact for ints and bools, else within `rtol`
/// relative to the element (and to the tensor's scale, for values near 0).
fn agree(what: &str, got: &Tensor, want: &Tensor, rtol: f64) -> Result<(), String> {
    if got.shape != want.shape || got.dtype != want.dtype {
        return Err(format!(
            "{what}: {} {:?} vs {} {:?}",
            got.dtype, got.shape, want.dtype, want.shape
        ));
    }
    match (&got.data, &want.data) {
        (Data::F(a), Data::F(b)) => {
            let scale = b.iter().fold(1.0f64, |m, x| m.max(x.abs()));
            for (i, (x, y)) in a.iter().zip(b).enumerate() {
                let ok = (x.is_nan() && y.is_nan())
                    || x == y
                    || (x - y).abs() <= rtol * y.abs() + rtol * 1e-2 * scale;
                if !ok {
                    return Err(format!("{what}[{i}]: jit {x}, interp {y}"));
                }
            }
            Ok(())
        }
        (a, b) if a == b => Ok(()),
        (a, b) => Err(format!("{what}: jit {a:?}, interp {b:?}")),
    }
}

/// Builds `sum(op(args) * w)` reporting `op(args)`; `None` if the f32 variant
/// does not type-check.
fn sample_graph(op: &Op, args: &[Arg], name: String) -> Option<(Graph, Vec<Domain>)> {
    let sp = Span::default();
    let mut g = Graph::default();
    g.name = name;
    let mut hs = vec![];
    let mut domains = vec![];
    for (k, a) in args.iter().enumerate() {
        g.inputs.push(InputDecl {
            name: format!("x{k}"),
            ty: a.ty.clone(),
            diff: matches!(a.domain, Domain::Float(..)),
            span: sp,
            doc: None,
        });
        hs.push(g.push_typed(Op::Input(k), vec![], a.ty.clone(), sp));
        domains.push(a.domain.clone());
    }
    let out = g.push(op.clone(), hs, sp).ok()?;
    let oty = g.ty(out).clone();
    let outf = if oty.dtype == DType::F64 {
        out
    } else {
        g.cast(out, DType::F64, sp)
    };
    let k = g.inputs.len();
    let wty = Ty::new(DType::F64, oty.shape.clone());
    g.inputs.push(InputDecl {
        name: "w".into(),
        ty: wty.clone(),
        diff: false,
        span: sp,
        doc: None,
    });
    let w = g.push_typed(Op::Input(k), vec![], wty, sp);
    domains.push(Domain::Float(-1.0, 1.0));
    let prod = g.binary(BinaryOp::Mul, outf, w, sp);
    let all: Vec<usize> = (0..oty.rank()).collect();
    let loss = g.sum(prod, all, false, sp);
    g.loss = Some(loss);
    g.reports.push(("out".into(), out));
    verify(&g).unwrap_or_else(|e| panic!("{}: {e}", g.name));
    differentiate(&mut g);
    let opt = losslang_compiler::opt::optimize(&g).unwrap_or_else(|e| panic!("{}: {e}", g.name));
    Some((opt, domains))
}

fn results(g: &Graph) -> Vec<Handle> {
    let mut r = vec![g.loss()];
    r.extend(g.reports.iter().map(|(_, h)| *h));
    r.extend(g.updates.iter().map(|u| u.value));
    r.extend(g.grads.iter().map(|(_, h)| *h));
    r
}

/// `exact`: the op's own value (result 1) must agree bit for bit.
fn compare(g: &Graph, env: &Env, rtol: f64, exact: bool) -> Result<(), String> {
    let roots = results(g);
    let want = Interp
        .eval(g, env, &roots)
        .map_err(|e| format!("interp: {e:?}"))?;
    for (label, jit) in [("fused", Jit::new(g)), ("unfused", Jit::unfused(g))] {
        let jit = jit.map_err(|e| e.to_string())?;
        let got = jit
            .eval(g, env, &roots)
            .map_err(|e| format!("{label}: {e:?}"))?;
        for (i, (a, b)) in got.iter().zip(&want).enumerate() {
            let tol = if exact && i == 1 { 0.0 } else { rtol };
            agree(&format!("{label} result {i} ({})", roots[i]), a, b, tol)?;
        }
    }
    Ok(())
}

fn f32_variant(args: &[Arg]) -> Option<Vec<Arg>> {
    let mut any = false;
    let v = args
        .iter()
        .map(|a| {
            let mut a = a.clone();
            if a.ty.dtype == DType::F64 {
                a.ty.dtype = DType::F32;
                any = true;
            }
            a
        })
        .collect();
    any.then_some(v)
}

#[test]
fn every_op_matches_the_interpreter() {
    let mut rng = SampleRng(7);
    let mut kinds = BTreeSet::new();
    let mut failures = vec![];
    let mut checked = 0;
    for (si, smp) in samples().into_iter().enumerate() {
        if matches!(smp.op, Op::Input(_) | Op::Param(_) | Op::State(_)) {
            continue;
        }
        let mut variants = vec![("f64", smp.args.clone())];
        if let Some(a) = f32_variant(&smp.args) {
            variants.push(("f32", a));
        }
        for (label, args) in variants {
            let name = format!("sample{si}_{}_{label}", smp.op.name());
            let Some((g, domains)) = sample_graph(&smp.op, &args, name.clone()) else {
                assert_eq!(label, "f32", "{name}: the f64 sample must type-check");
                continue;
            };
            let env = Env {
                inputs: g
                    .inputs
                    .iter()
                    .zip(&domains)
                    .map(|(d, dom)| sample_data(&d.ty, dom, &mut rng))
                    .collect(),
                ..Env::default()
            };
            // The counter-based generator is part of a loss's meaning: bit for bit.
            let exact = matches!(smp.op, Op::Rand(..));
            if let Err(e) = compare(&g, &env, 1e-5, exact) {
                failures.push(format!("{name}: {e}"));
            }
            kinds.insert(kind_index(&smp.op));
            checked += 1;
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
    assert!(checked > 100, "only {checked} samples checked");
    // Every kind of op with arguments or a value of its own is covered here;
    // inputs, params and state by `params_and_state_are_arguments`.
    for s in samples() {
        let k = kind_index(&s.op);
        if !matches!(s.op, Op::Input(_) | Op::Param(_) | Op::State(_)) {
            assert!(kinds.contains(k), "no parity check for `{k}`");
        }
    }
}

/// Params and state are run-time arguments: changing them gives new results
/// from the same compiled code.
#[test]
fn params_and_state_are_arguments() {
    let sp = Span::default();
    let ty = Ty::new(DType::F32, vec![losslang_compiler::dim::Dim::sym("N")]);
    let mut g = Graph::default();
    g.name = "ps".into();
    g.inputs.push(InputDecl {
        name: "x".into(),
        ty: ty.clone(),
        diff: true,
        span: sp,
        doc: None,
    });
    g.params.push(ParamDecl {
        name: "gamma".into(),
        dtype: DType::F32,
        default: Scalar::F(2.0),
        domain: None,
        span: sp,
        doc: None,
    });
    let x = g.push_typed(Op::Input(0), vec![], ty.clone(), sp);
    let p = g.push_typed(Op::Param(0), vec![], Ty::scalar(DType::F32), sp);
    let init = g.float(0.0, DType::F32, sp);
    g.states.push(StateDecl {
        name: "acc".into(),
        ty: Ty::scalar(DType::F32),
        init,
        span: sp,
        doc: None,
    });
    let s = g.push_typed(Op::State(0), vec![], Ty::scalar(DType::F32), sp);
    let px = g.binary(BinaryOp::Mul, x, p, sp);
    let sq = g.binary(BinaryOp::Mul, px, x, sp);
    let tot = g.sum(sq, vec![0], false, sp);
    let loss = g.binary(BinaryOp::Add, tot, s, sp);
    g.loss = Some(loss);
    g.updates.push(StateUpdate {
        state: 0,
        index: None,
        value: loss,
        span: sp,
    });
    differentiate(&mut g);
    let g = losslang_compiler::opt::optimize(&g).expect("optimises");
    let jit = Jit::new(&g).expect("compiles");
    let roots = results(&g);
    for (gamma, acc) in [(2.0, 0.0), (0.5, 3.0), (-1.0, 1.5)] {
        let env = Env {
            inputs: vec![Tensor::from_f64(DType::F32, vec![3], vec![1.0, -2.0, 0.5])],
            params: vec![Tensor::scalar_f(DType::F32, gamma)],
            state: vec![Tensor::scalar_f(DType::F32, acc)],
            dims: [("N".to_string(), 3)].into_iter().collect(),
        };
        let want = Interp.eval(&g, &env, &roots).expect("interp");
        let got = jit.eval(&g, &env, &roots).expect("jit");
        for (i, (a, b)) in got.iter().zip(&want).enumerate() {
            agree(&format!("gamma={gamma} result {i}"), a, b, 1e-6).unwrap();
        }
        assert_eq!(
            got[0].scalar_f64(),
            Some(gamma * (1.0 + 4.0 + 0.25) + acc),
            "loss"
        );
    }
}
