//! Candle against the interpreter for every primitive, generated from
//! `ops::catalog::samples()` (kept complete by an exhaustive match): values,
//! the compiler's gradient graph (path a) and candle's `backward()` on
//! tracked tensors (path b), on the CPU kernels and on the portable (CUDA)
//! lowering run on the CPU. Also: tie and kink conventions, and the
//! interpreter's errors for bad indices, repeated ids and integer division by zero.

use candle_core::{Device, Var};
use losslang_candle::{CandleExec, CandleProgram, Target, from_candle, to_candle};
use losslang_compiler::autodiff::differentiate;
use losslang_compiler::backend::Executor;
use losslang_compiler::dim::Dim;
use losslang_compiler::ir::eval::{Env, eval};
use losslang_compiler::ir::{Graph, Handle, InputDecl, ParamDecl, StateDecl, Ty};
use losslang_compiler::kernels::EvalError;
use losslang_compiler::ops::catalog::{Domain, kind_index, samples};
use losslang_compiler::ops::catalog::{SampleRng, sample_data};
use losslang_compiler::ops::{BinaryOp, Op, ReduceKind, Scalar, UnaryOp};
use losslang_compiler::program::Program;
use losslang_compiler::sema::Source;
use losslang_compiler::value::{DType, Data, Tensor};
use losslang_grammar::Span;
use std::collections::BTreeSet;

fn program(g: Graph) -> Program {
    Program {
        sources: vec![Source {
            name: "parity.loss".into(),
            text: String::new(),
        }],
        ir: g.clone(),
        grad: g.clone(),
        opt: g,
        bindings: vec![],
        diags: vec![],
    }
}

/// Values agree: floats to a relative 1e-10 (compositions round differently
/// from the interpreter's libm calls), NaN with NaN; ints and bools exactly.
fn assert_same(what: &str, got: &Tensor, want: &Tensor) {
    assert_eq!(got.shape, want.shape, "{what}: shape");
    assert_eq!(got.dtype, want.dtype, "{what}: dtype");
    match (&got.data, &want.data) {
        (Data::F(a), Data::F(b)) => {
            let tol = if got.dtype == DType::F32 { 1e-6 } else { 1e-10 };
            for (i, (x, y)) in a.iter().zip(b).enumerate() {
                let ok =
                    (x.is_nan() && y.is_nan()) || x == y || (x - y).abs() <= tol * (1.0 + y.abs());
                assert!(ok, "{what}: element {i}: candle {x}, interpreter {y}");
            }
        }
        _ => assert_eq!(got.data, want.data, "{what}"),
    }
}

/// The CPU with its kernels and with the portable lowering; with
/// `LOSSLANG_CANDLE_DEVICE=cuda` (scripts/gpu-check.sh runs this test, built by
/// scripts/build-cuda.sh, that way), the CUDA device.
fn runs() -> Vec<(Device, Target)> {
    match std::env::var("LOSSLANG_CANDLE_DEVICE").ok().as_deref() {
        None | Some("cpu") => vec![(Device::Cpu, Target::Cpu), (Device::Cpu, Target::Portable)],
        Some(spec) => {
            let d = losslang_candle::device(spec).unwrap_or_else(|e| panic!("{e}"));
            vec![(d, Target::Portable)]
        }
    }
}

#[test]
fn every_op_matches_the_interpreter() {
    let mut rng = SampleRng(7);
    let mut kinds = BTreeSet::new();
    let mut checked = 0;
    let mut tracked = 0;
    let sp = Span::default();
    for (si, smp) in samples().into_iter().enumerate() {
        kinds.insert(kind_index(&smp.op));
        let mut g = Graph::default();
        g.name = format!("sample{si}_{}", smp.op.name());
        let mut env = Env::default();
        let out = match &smp.op {
            // Declared values: the sample is the value itself.
            Op::Input(_) => {
                let ty = Ty::new(DType::F64, vec![Dim::lit(3)]);
                g.inputs.push(InputDecl {
                    name: "x".into(),
                    ty: ty.clone(),
                    diff: false,
                    span: sp,
                    doc: None,
                });
                env.inputs
                    .push(Tensor::from_f64(DType::F64, vec![3], vec![1.0, -2.0, 0.5]));
                g.push_typed(Op::Input(0), vec![], ty, sp)
            }
            Op::Param(_) => {
                g.params.push(ParamDecl {
                    name: "p".into(),
                    dtype: DType::F32,
                    default: Scalar::F(0.25),
                    domain: None,
                    span: sp,
                    doc: None,
                });
                env.params.push(Tensor::scalar_f(DType::F32, 0.25));
                g.push_typed(Op::Param(0), vec![], Ty::scalar(DType::F32), sp)
            }
            Op::State(_) => {
                let ty = Ty::new(DType::I64, vec![Dim::lit(2)]);
                let init = g.fill(Scalar::I(0), DType::I64, ty.shape.clone(), sp);
                g.states.push(StateDecl {
                    name: "s".into(),
                    ty: ty.clone(),
                    init,
                    span: sp,
                    doc: None,
                });
                env.state.push(Tensor::from_i64(vec![2], vec![4, -9]));
                g.push_typed(Op::State(0), vec![], ty, sp)
            }
            op => {
                let mut args = vec![];
                for (k, a) in smp.args.iter().enumerate() {
                    g.inputs.push(InputDecl {
                        name: format!("x{k}"),
                        ty: a.ty.clone(),
                        diff: matches!(a.domain, Domain::Float(..)),
                        span: sp,
                        doc: None,
                    });
                    args.push(g.push_typed(Op::Input(k), vec![], a.ty.clone(), sp));
                    let mut t = sample_data(&a.ty, &a.domain, &mut rng);
                    // `searchsorted` searches an ascending sequence.
                    if matches!(op, Op::SearchSorted { .. })
                        && k == 0
                        && let Data::F(v) = &mut t.data
                    {
                        v.sort_by(|a, b| a.total_cmp(b));
                    }
                    env.inputs.push(t);
                }
                g.push(op.clone(), args, sp)
                    .unwrap_or_else(|e| panic!("sample {} is ill-typed: {e}", op.name()))
            }
        };
        let want = eval(&g, &env, &[out]).expect("the interpreter runs the sample");
        for (dev, target) in runs() {
            let exec = CandleExec::with_target(dev.clone(), target);
            if target == Target::Portable && matches!(smp.op, Op::Rand(..)) {
                let e = exec
                    .eval(&g, &env, &[out])
                    .expect_err("no portable generator");
                assert!(matches!(e.error, EvalError::Other(m) if m.contains("CPU")));
                continue;
            }
            let got = exec
                .eval(&g, &env, &[out])
                .unwrap_or_else(|e| panic!("{} on {target:?}: {:?}", g.name, e.error));
            assert_same(
                &format!("{} value on {target:?}", g.name),
                &got[0],
                &want[0],
            );
        }
        checked += 1;
        // Gradients of sum(op(args) * w) through both paths.
        let oty = g.ty(out).clone();
        let diff_args = g.inputs.iter().any(|i| i.diff);
        if !oty.dtype.is_float() || !diff_args {
            continue;
        }
        let outf = g.cast(out, DType::F64, sp);
        let k = g.inputs.len();
        let wty = Ty::new(DType::F64, oty.shape.clone());
        g.inputs.push(InputDecl {
            name: "w".into(),
            ty: wty.clone(),
            diff: false,
            span: sp,
            doc: None,
        });
        let w = g.push_typed(Op::Input(k), vec![], wty.clone(), sp);
        env.inputs
            .push(sample_data(&wty, &Domain::Float(-1.0, 1.0), &mut rng));
        let prod = g.binary(BinaryOp::Mul, outf, w, sp);
        let all: Vec<usize> = (0..oty.rank()).collect();
        let loss = g.sum(prod, all, false, sp);
        g.loss = Some(loss);
        differentiate(&mut g);
        let roots: Vec<Handle> = g.grads.iter().map(|(_, h)| *h).collect();
        let want = eval(&g, &env, &roots).expect("the interpreter differentiates");
        for (dev, target) in runs() {
            if target == Target::Portable && matches!(smp.op, Op::Rand(..)) {
                continue;
            }
            let exec = CandleExec::with_target(dev.clone(), target);
            let got = exec.eval(&g, &env, &roots).expect("candle differentiates");
            for ((i, _), (gv, wv)) in g.grads.iter().zip(got.iter().zip(&want)) {
                assert_same(
                    &format!("{} d/d{} (path a, {target:?})", g.name, g.inputs[*i].name),
                    gv,
                    wv,
                );
            }
            tracked_grads(&g, &env, &want, &dev, target);
        }
        tracked += 1;
    }
    for k in [
        "input",
        "param",
        "state",
        "const",
        "dim",
        "fill",
        "iota",
        "rand",
        "unary",
        "binary",
        "where",
        "cast",
        "stop_grad",
        "reduce",
        "argmax",
        "argmin",
        "norm",
        "reshape",
        "broadcast_to",
        "transpose",
        "slice",
        "pad",
        "reverse",
        "concat",
        "take_along",
        "scatter_add_along",
        "index_select",
        "index_add",
        "scatter",
        "one_hot",
        "matmul",
        "argsort",
        "cumsum",
        "logcumsumexp",
        "searchsorted",
    ] {
        assert!(kinds.contains(k), "no sample for op kind `{k}`");
    }
    assert!(checked > 80, "only {checked} samples checked");
    assert!(tracked > 50, "only {tracked} gradients checked");
}

/// Path b: the loss on tracked inputs, `backward()`, against the interpreter's gradients.
fn tracked_grads(g: &Graph, env: &Env, want: &[Tensor], dev: &Device, target: Target) {
    let p = program(g.clone());
    let prog = CandleProgram::for_target(&p, dev, &[], target).expect("lowers");
    let mut vars = vec![];
    let mut named = vec![];
    for (decl, t) in g.inputs.iter().zip(&env.inputs) {
        let c = to_candle(t, dev).expect("to device");
        let v = if decl.diff {
            Some(Var::from_tensor(&c).expect("var"))
        } else {
            None
        };
        named.push(match &v {
            Some(v) => v.as_tensor().clone(),
            None => c,
        });
        vars.push(v);
    }
    let inputs: Vec<(&str, &candle_core::Tensor)> = g
        .inputs
        .iter()
        .zip(&named)
        .map(|(d, t)| (d.name.as_str(), t))
        .collect();
    let mut st = prog.new_state();
    let out = prog
        .forward(&inputs, &mut st)
        .unwrap_or_else(|e| panic!("{}: {e}", g.name));
    let grads = out.loss.backward().expect("backward");
    for ((i, _), wv) in g.grads.iter().zip(want) {
        let v = vars[*i].as_ref().expect("a diff input is a var");
        let got = match grads.get(v.as_tensor()) {
            Some(t) => from_candle(t, g.inputs[*i].ty.dtype).expect("to host"),
            None => Tensor::from_f64(wv.dtype, wv.shape.clone(), vec![0.0; wv.len()]),
        };
        assert_same(
            &format!("{} d/d{} (path b, {target:?})", g.name, g.inputs[*i].name),
            &got,
            wv,
        );
    }
}

/// One-node programs over fixed data, for conventions and errors.
fn one(op: Op, args: Vec<Tensor>, diff: &[bool]) -> (Graph, Env, Handle) {
    let sp = Span::default();
    let mut g = Graph::default();
    g.name = op.name();
    let mut env = Env::default();
    let mut hs = vec![];
    for (k, t) in args.into_iter().enumerate() {
        let ty = Ty::new(
            t.dtype,
            t.shape.iter().map(|&d| Dim::lit(d as i64)).collect(),
        );
        g.inputs.push(InputDecl {
            name: format!("x{k}"),
            ty: ty.clone(),
            diff: diff.get(k).copied().unwrap_or(false),
            span: sp,
            doc: None,
        });
        hs.push(g.push_typed(Op::Input(k), vec![], ty, sp));
        env.inputs.push(t);
    }
    let out = g.push(op, hs, sp).expect("well-typed");
    (g, env, out)
}

/// Ties and kinks: the first maximum takes the gradient, `maximum` ties go to
/// the first operand, relu'(0) = abs'(0) = 0, and ‖0‖' = 0, on both paths.
#[test]
fn kink_conventions_match() {
    let f = |v: Vec<f64>, s: Vec<usize>| Tensor::from_f64(DType::F64, s, v);
    let cases: Vec<(Op, Vec<Tensor>)> = vec![
        (
            Op::Reduce {
                kind: ReduceKind::Max,
                axes: vec![1],
                keepdims: false,
            },
            vec![f(vec![1.0, 3.0, 3.0, -1.0, -1.0, -1.0], vec![2, 3])],
        ),
        (
            Op::Reduce {
                kind: ReduceKind::Min,
                axes: vec![0],
                keepdims: true,
            },
            vec![f(vec![2.0, 0.0, 2.0, 0.0], vec![2, 2])],
        ),
        (
            Op::Binary(BinaryOp::Maximum),
            vec![
                f(vec![1.0, 0.0, -2.0], vec![3]),
                f(vec![1.0, 0.5, -2.0], vec![3]),
            ],
        ),
        (
            Op::Binary(BinaryOp::Minimum),
            vec![
                f(vec![1.0, 0.0, -2.0], vec![3]),
                f(vec![1.0, 0.5, -3.0], vec![3]),
            ],
        ),
        (
            Op::Unary(UnaryOp::Relu),
            vec![f(vec![0.0, 1.0, -1.0], vec![3])],
        ),
        (
            Op::Unary(UnaryOp::Abs),
            vec![f(vec![0.0, 1.0, -1.0], vec![3])],
        ),
        (
            Op::Norm {
                axes: vec![1],
                keepdims: false,
            },
            vec![f(vec![0.0, 0.0, 3.0, 4.0], vec![2, 2])],
        ),
        (
            Op::Binary(BinaryOp::Pow),
            vec![
                f(vec![0.0, 2.0, -2.0, 0.0], vec![4]),
                f(vec![2.0, 0.0, 3.0, 0.5], vec![4]),
            ],
        ),
    ];
    let sp = Span::default();
    for (op, args) in cases {
        let n = args.len();
        let (mut g, env, out) = one(op, args, &vec![true; n]);
        let all: Vec<usize> = (0..g.ty(out).rank()).collect();
        let loss = g.sum(out, all, false, sp);
        g.loss = Some(loss);
        differentiate(&mut g);
        let mut roots = vec![out];
        roots.extend(g.grads.iter().map(|(_, h)| *h));
        let want = eval(&g, &env, &roots).expect("interpreter");
        for (dev, target) in runs() {
            let got = CandleExec::with_target(dev.clone(), target)
                .eval(&g, &env, &roots)
                .expect("candle");
            for (k, (a, b)) in got.iter().zip(&want).enumerate() {
                assert_same(&format!("{} root {k} ({target:?})", g.name), a, b);
            }
            tracked_grads(&g, &env, &want[1..], &dev, target);
        }
    }
}

/// NaN rules: NaN propagates through maximum, max, sign and relu, and
/// argmax picks the first NaN.
#[test]
fn nan_rules_match() {
    let nan = f64::NAN;
    let x = Tensor::from_f64(DType::F64, vec![2, 3], vec![1.0, nan, 2.0, 0.0, -1.0, nan]);
    let y = Tensor::from_f64(DType::F64, vec![3], vec![nan, 0.0, 5.0]);
    let ops: Vec<(Op, Vec<Tensor>)> = vec![
        (Op::Binary(BinaryOp::Maximum), vec![x.clone(), y.clone()]),
        (Op::Binary(BinaryOp::Minimum), vec![x.clone(), y]),
        (
            Op::Reduce {
                kind: ReduceKind::Max,
                axes: vec![1],
                keepdims: false,
            },
            vec![x.clone()],
        ),
        (Op::ArgMax(1), vec![x.clone()]),
        (Op::ArgMin(0), vec![x.clone()]),
        (Op::Unary(UnaryOp::Sign), vec![x.clone()]),
        (Op::Unary(UnaryOp::Relu), vec![x.clone()]),
        (
            Op::Unary(UnaryOp::Round),
            vec![Tensor::from_f64(
                DType::F64,
                vec![6],
                vec![0.5, 1.5, 2.5, -0.5, -2.5, 3.7],
            )],
        ),
        (
            Op::Argsort {
                axis: 1,
                descending: true,
            },
            vec![x.clone()],
        ),
        (
            Op::Unary(UnaryOp::IsFinite),
            vec![Tensor::from_f64(
                DType::F64,
                vec![4],
                vec![1.0, f64::INFINITY, nan, -0.0],
            )],
        ),
    ];
    for (op, args) in ops {
        let (g, env, out) = one(op, args, &[]);
        let want = eval(&g, &env, &[out]).expect("interpreter");
        for (dev, target) in runs() {
            let got = CandleExec::with_target(dev.clone(), target)
                .eval(&g, &env, &[out])
                .expect("candle");
            assert_same(&format!("{} ({target:?})", g.name), &got[0], &want[0]);
        }
    }
}

/// Bad data fails at the same node with the interpreter's error, on every
/// target, and through `CandleProgram::forward` as the same diagnostic.
#[test]
fn data_errors_match_the_interpreter() {
    let f = |s: Vec<usize>| {
        let n = s.iter().product();
        Tensor::from_f64(DType::F64, s, (0..n).map(|i| i as f64).collect())
    };
    let i = |s: Vec<usize>, v: Vec<i64>| Tensor::from_i64(s, v);
    let cases: Vec<(Op, Vec<Tensor>)> = vec![
        (
            Op::TakeAlong(1),
            vec![f(vec![2, 3]), i(vec![2, 2], vec![0, 1, 3, 0])],
        ),
        (
            Op::TakeAlong(1),
            vec![f(vec![2, 3]), i(vec![2, 1], vec![0, -1])],
        ),
        (
            Op::IndexSelect(0),
            vec![f(vec![4, 2]), i(vec![2, 2], vec![0, 1, 2, 7])],
        ),
        (
            Op::ScatterAddAlong(0),
            vec![f(vec![2, 2]), i(vec![1, 2], vec![0, 2]), f(vec![1, 2])],
        ),
        (
            Op::IndexAdd(0),
            vec![f(vec![3, 2]), i(vec![2], vec![2, 3]), f(vec![2, 2])],
        ),
        (
            Op::ScatterSet(0),
            vec![f(vec![5, 2]), i(vec![3], vec![1, 4, 1]), f(vec![3, 2])],
        ),
        (
            Op::ScatterSet(0),
            vec![f(vec![5, 2]), i(vec![3], vec![1, 9, 9]), f(vec![3, 2])],
        ),
        (
            Op::ScatterSet(0),
            vec![f(vec![5, 2]), i(vec![3], vec![1, 5, 2]), f(vec![3, 2])],
        ),
        (Op::OneHot(Dim::lit(3)), vec![i(vec![4], vec![0, -1, 2, 3])]),
        (
            Op::OneHot(Dim::lit(3)),
            vec![i(vec![2, 2], vec![0, -1, -2, 1])],
        ),
        (
            Op::Binary(BinaryOp::FloorDiv),
            vec![i(vec![3], vec![7, -7, 1]), i(vec![3], vec![2, 0, 1])],
        ),
        (
            Op::Slice {
                axis: 0,
                start: Dim::lit(1),
                len: Dim::lit(3),
                step: 2,
            },
            vec![f(vec![4])],
        ),
        (
            Op::Slice {
                axis: 0,
                start: Dim::lit(2),
                len: Dim::lit(3),
                step: 1,
            },
            vec![f(vec![4])],
        ),
    ];
    for (op, args) in cases {
        let (g, env, out) = one(op, args, &[]);
        let want = eval(&g, &env, &[out]).expect_err("the interpreter rejects the data");
        for (dev, target) in runs() {
            let got = CandleExec::with_target(dev.clone(), target)
                .eval(&g, &env, &[out])
                .expect_err("candle rejects the data");
            assert_eq!(got.node, want.node, "{} ({target:?}): node", g.name);
            assert_eq!(got.error, want.error, "{} ({target:?}): error", g.name);
        }
        // The tracked path reports the same diagnostic as the interpreter's run.
        let mut g2 = g.clone();
        g2.loss = Some(out);
        let p = program(g2);
        let msg = p.node_error(want.clone()).message;
        for (dev, target) in runs() {
            let prog = CandleProgram::for_target(&p, &dev, &[], target).expect("lowers");
            let ts: Vec<candle_core::Tensor> = env
                .inputs
                .iter()
                .map(|t| to_candle(t, &dev).expect("to device"))
                .collect();
            let named: Vec<(&str, &candle_core::Tensor)> = g
                .inputs
                .iter()
                .zip(&ts)
                .map(|(d, t)| (d.name.as_str(), t))
                .collect();
            let mut st = prog.new_state();
            match prog.forward(&named, &mut st) {
                Err(losslang_candle::Error::Run(e)) => {
                    assert_eq!(e.message, msg, "{} ({target:?})", g.name)
                }
                other => panic!("{} ({target:?}): expected the error, got {other:?}", g.name),
            }
        }
    }
}

/// Stable argsort: ties keep the lower index first, on both targets.
#[test]
fn argsort_is_stable() {
    let x = Tensor::from_f64(
        DType::F64,
        vec![2, 6],
        vec![1.0, 0.0, 1.0, 0.0, 1.0, 0.0, 3.0, 3.0, -1.0, 3.0, -1.0, 2.0],
    );
    for descending in [false, true] {
        let (g, env, out) = one(
            Op::Argsort {
                axis: 1,
                descending,
            },
            vec![x.clone()],
            &[],
        );
        let want = eval(&g, &env, &[out]).expect("interpreter");
        for (dev, target) in runs() {
            let got = CandleExec::with_target(dev.clone(), target)
                .eval(&g, &env, &[out])
                .expect("candle");
            assert_same(
                &format!("argsort desc={descending} ({target:?})"),
                &got[0],
                &want[0],
            );
        }
    }
}

/// f32 nodes run in f32 on candle: results are f32 numbers.
#[test]
fn f32_nodes_compute_in_f32() {
    let x = Tensor::from_f64(DType::F32, vec![3], vec![0.1f32 as f64, 1.0, 3.0]);
    let (g, env, out) = one(Op::Unary(UnaryOp::Exp), vec![x], &[]);
    let (dev, _) = runs().remove(0);
    let got = CandleExec::new(dev).eval(&g, &env, &[out]).expect("candle");
    let Data::F(v) = &got[0].data else {
        panic!("floats")
    };
    for x in v {
        assert_eq!(f64::from(*x as f32), *x, "an f32 result is an f32 number");
    }
}
