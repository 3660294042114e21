//! Every primitive's VJP against central finite differences (f64), generated
//! from `ops::catalog` (which an exhaustive match keeps complete). Each sample
//! becomes the program `sum(op(args) * w)` with fixed random weights `w`.

use losslang_compiler::autodiff::differentiate;
use losslang_compiler::gradcheck::gradcheck;
use losslang_compiler::ir::eval::Env;
use losslang_compiler::ir::verify::verify;
use losslang_compiler::ir::{Graph, InputDecl, Ty};
use losslang_compiler::ops::catalog::{Domain, kind_index, samples};
use losslang_compiler::ops::catalog::{SampleRng, sample_data};
use losslang_compiler::ops::{BinaryOp, Op};
use losslang_compiler::program::Program;
use losslang_compiler::value::{DType, Tensor};
use losslang_grammar::Span;
use std::collections::BTreeSet;

#[test]
fn every_op_vjp_matches_finite_differences() {
    let mut rng = SampleRng(42);
    let mut kinds = BTreeSet::new();
    let mut checked = 0;
    for (si, smp) in samples().into_iter().enumerate() {
        kinds.insert(kind_index(&smp.op));
        if matches!(smp.op, Op::Input(_) | Op::Param(_) | Op::State(_)) {
            continue;
        }
        let sp = Span::default();
        let mut g = Graph::default();
        g.name = format!("sample{si}_{}", smp.op.name());
        let mut env = Env::default();
        let mut args = vec![];
        for (k, a) in smp.args.iter().enumerate() {
            let diff = matches!(a.domain, Domain::Float(..));
            g.inputs.push(InputDecl {
                name: format!("x{k}"),
                ty: a.ty.clone(),
                diff,
                span: sp,
                doc: None,
            });
            args.push(g.push_typed(Op::Input(k), vec![], a.ty.clone(), sp));
            env.inputs.push(sample_data(&a.ty, &a.domain, &mut rng));
        }
        let out = g
            .push(smp.op.clone(), args, sp)
            .unwrap_or_else(|e| panic!("sample {} is ill-typed: {e}", smp.op.name()));
        let oty = g.ty(out).clone();
        let outf = if oty.dtype == DType::F64 {
            out
        } else {
            g.cast(out, DType::F64, sp)
        };
        // A random weighting makes every output element matter.
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
        let wa = losslang_compiler::ops::catalog::Arg {
            ty: wty,
            domain: Domain::Float(-1.0, 1.0),
        };
        env.inputs.push(sample_data(&wa.ty, &wa.domain, &mut rng));
        let prod = g.binary(BinaryOp::Mul, outf, w, sp);
        let all: Vec<usize> = (0..oty.rank()).collect();
        let loss = g.sum(prod, all, false, sp);
        g.loss = Some(loss);
        verify(&g).unwrap_or_else(|e| panic!("{}: {e}", g.name));
        let mut gg = g.clone();
        differentiate(&mut gg);
        verify(&gg).unwrap_or_else(|e| panic!("{} after autodiff: {e}", g.name));
        let opt =
            losslang_compiler::opt::optimize(&gg).unwrap_or_else(|e| panic!("{}: {e}", g.name));
        let p = Program {
            sources: vec![],
            ir: g.clone(),
            grad: gg,
            opt,
            bindings: vec![],
            diags: vec![],
        };
        let rep = gradcheck(&p, &env, 64).unwrap_or_else(|e| panic!("{}: {}", g.name, e.message));
        for i in &rep.inputs {
            assert!(
                i.passed,
                "{} (op `{}`): gradient of {} differs from finite differences: {:?}",
                g.name,
                smp.op.name(),
                i.name,
                i.worst
            );
        }
        checked += 1;
    }
    // Every kind of op has a sample.
    let all_kinds = [
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
    ];
    for k in all_kinds {
        assert!(kinds.contains(k), "no sample for op kind `{k}`");
    }
    assert!(checked > 60, "only {checked} samples checked");
}

/// Kink conventions, fixed and identical on every backend.
#[test]
fn kink_conventions() {
    use losslang_compiler::ops::{Scalar, UnaryOp};
    let sp = Span::default();
    let run = |build: &dyn Fn(
        &mut Graph,
        losslang_compiler::ir::Handle,
    ) -> losslang_compiler::ir::Handle,
               x: Vec<f64>|
     -> Vec<f64> {
        let mut g = Graph::default();
        let ty = Ty::new(
            DType::F64,
            vec![losslang_compiler::dim::Dim::lit(x.len() as i64)],
        );
        g.inputs.push(InputDecl {
            name: "x".into(),
            ty: ty.clone(),
            diff: true,
            span: sp,
            doc: None,
        });
        let xi = g.push_typed(Op::Input(0), vec![], ty, sp);
        let y = build(&mut g, xi);
        let r = g.ty(y).rank();
        let l = g.sum(y, (0..r).collect(), false, sp);
        g.loss = Some(l);
        differentiate(&mut g);
        let env = Env {
            inputs: vec![Tensor::from_f64(DType::F64, vec![x.len()], x)],
            ..Env::default()
        };
        let roots = vec![g.grads[0].1];
        losslang_compiler::ir::eval::eval(&g, &env, &roots).expect("eval")[0].to_f64_vec()
    };
    assert_eq!(
        run(&|g, x| g.unary(UnaryOp::Relu, x, sp), vec![0.0, 1.0, -1.0]),
        vec![0.0, 1.0, 0.0]
    );
    assert_eq!(
        run(&|g, x| g.unary(UnaryOp::Abs, x, sp), vec![0.0, 2.0, -2.0]),
        vec![0.0, 1.0, -1.0]
    );
    // Ties in a max or min reduction share the gradient equally (torch.amax, jnp.max).
    assert_eq!(
        run(
            &|g, x| g.mk(
                Op::Reduce {
                    kind: losslang_compiler::ops::ReduceKind::Max,
                    axes: vec![0],
                    keepdims: false
                },
                vec![x],
                sp
            ),
            vec![1.0, 3.0, 3.0]
        ),
        vec![0.0, 0.5, 0.5]
    );
    assert_eq!(
        run(
            &|g, x| g.mk(
                Op::Reduce {
                    kind: losslang_compiler::ops::ReduceKind::Min,
                    axes: vec![0],
                    keepdims: false
                },
                vec![x],
                sp
            ),
            vec![2.0, 5.0, 2.0, 2.0]
        ),
        vec![1.0 / 3.0, 0.0, 1.0 / 3.0, 1.0 / 3.0]
    );
    // A NaN maximum gives no element a gradient.
    assert_eq!(
        run(
            &|g, x| g.mk(
                Op::Reduce {
                    kind: losslang_compiler::ops::ReduceKind::Max,
                    axes: vec![0],
                    keepdims: false
                },
                vec![x],
                sp
            ),
            vec![1.0, f64::NAN]
        ),
        vec![0.0, 0.0]
    );
    // argmax still picks the first of tied maxima.
    let env = Env {
        inputs: vec![Tensor::from_f64(DType::F64, vec![3], vec![1.0, 3.0, 3.0])],
        ..Env::default()
    };
    let mut g = Graph::default();
    let ty = losslang_compiler::ir::Ty::new(DType::F64, vec![losslang_compiler::dim::Dim::lit(3)]);
    g.inputs.push(InputDecl {
        name: "x".into(),
        ty: ty.clone(),
        diff: false,
        span: sp,
        doc: None,
    });
    let xi = g.push_typed(Op::Input(0), vec![], ty, sp);
    let am = g.mk(Op::ArgMax(0), vec![xi], sp);
    let r = losslang_compiler::ir::eval::eval(&g, &env, &[am]).expect("eval");
    assert_eq!(r[0].to_f64_vec(), vec![1.0]);
    // maximum(a, b) sends the gradient to a on ties.
    assert_eq!(
        run(
            &|g, x| {
                let c = g.constant(Scalar::F(1.0), DType::F64, sp);
                g.binary(BinaryOp::Maximum, x, c, sp)
            },
            vec![1.0, 0.0, 2.0]
        ),
        vec![1.0, 0.0, 1.0]
    );
}
