//! Numerics users can trust, on every built backend: the untaken side of `where`
//! and of a run-time `if` never reaches the value or the gradient; ties in
//! `max`/`min` reductions share the gradient equally; `log_softmax` keeps its
//! precision under large shifts; param domains are enforced when a call is bound.

use losslang_compiler::backend::Backend;
use losslang_compiler::gradcheck::gradcheck;
use losslang_compiler::ops::Scalar;
use losslang_compiler::program::{Call, CompileOptions, Outputs, Program, compile};
use losslang_compiler::sema::Source;
use losslang_compiler::value::{DType, Tensor};
use losslang_runtime::loader::FileLoader;

fn program(text: &str) -> Program {
    compile(
        Source {
            name: "numerics.loss".into(),
            text: text.into(),
        },
        &FileLoader,
        &CompileOptions::default(),
    )
    .unwrap_or_else(|f| {
        panic!(
            "does not compile: {:?}",
            f.diags.iter().map(|d| &d.message).collect::<Vec<_>>()
        )
    })
}

fn backends() -> Vec<Backend> {
    [Backend::Interp, Backend::Jit, Backend::Candle]
        .into_iter()
        .filter(|b| losslang_runtime::backends::available(*b))
        .collect()
}

fn f32s(shape: Vec<usize>, v: &[f64]) -> Tensor {
    Tensor::from_f64(DType::F32, shape, v.to_vec())
}

fn run(p: &Program, b: Backend, call: &Call) -> Outputs {
    let exec = losslang_runtime::backends::executor(b, p, "cpu").expect("executor");
    let env = p.bind(call).expect("bind");
    p.run_with(exec.as_ref(), &env, true, false)
        .unwrap_or_else(|e| panic!("[{b}] {}", e.message))
}

fn grad(o: &Outputs, name: &str) -> Vec<f64> {
    o.grads
        .iter()
        .find(|(n, _)| n == name)
        .map(|(_, t)| t.to_f64_vec())
        .expect("a gradient")
}

/// Finite value and gradients on every backend, equal to the interpreter's, and
/// the interpreter's gradient passes the finite-difference check.
fn finite_everywhere(p: &Program, call: &Call) -> Outputs {
    let reference = run(p, Backend::Interp, call);
    for b in backends() {
        let o = run(p, b, call);
        assert!(o.loss.is_finite(), "[{b}] loss {}", o.loss);
        assert!(
            (o.loss - reference.loss).abs() <= 1e-5 * reference.loss.abs().max(1.0),
            "[{b}] loss {} vs interp {}",
            o.loss,
            reference.loss
        );
        for (n, g) in &o.grads {
            let g = g.to_f64_vec();
            let want = grad(&reference, n);
            for (i, (a, e)) in g.iter().zip(&want).enumerate() {
                assert!(a.is_finite(), "[{b}] d/d{n}[{i}] = {a}");
                assert!(
                    (a - e).abs() <= 1e-5 * e.abs().max(1.0),
                    "[{b}] d/d{n}[{i}] = {a}, interp {e}"
                );
            }
        }
    }
    let env = p.bind(call).expect("bind");
    let rep = gradcheck(p, &env, 64).expect("gradcheck runs");
    assert!(rep.passed(), "gradcheck: {:?}", rep.inputs);
    reference
}

#[test]
fn kl_with_zeros_in_p_is_finite_and_passes_gradcheck() {
    let p = program(
        "loss kl(p: f32[N] diff, q: f32[N] diff) -> f32 {\n    sum(where(p > 0, p * log(p / q), 0.0))\n}\n",
    );
    let call = Call {
        inputs: vec![
            ("p".into(), f32s(vec![5], &[0.0, 0.25, 0.0, 0.5, 0.25])),
            ("q".into(), f32s(vec![5], &[0.1, 0.2, 0.3, 0.2, 0.2])),
        ],
        grads: true,
        ..Call::default()
    };
    let o = finite_everywhere(&p, &call);
    // At p = 0 nothing flows; elsewhere d/dp = log(p/q) + 1 and d/dq = -p/q.
    let gp = grad(&o, "p");
    assert_eq!(gp[0], 0.0);
    assert_eq!(gp[2], 0.0);
    assert!((gp[1] - ((0.25f64 / 0.2).ln() + 1.0)).abs() < 1e-6);
    let gq = grad(&o, "q");
    assert_eq!(gq[0], 0.0);
    assert!((gq[3] + 0.5 / 0.2f32 as f64).abs() < 1e-6);
}

#[test]
fn guarded_sqrt_and_nested_where_do_not_leak() {
    let p = program(
        "loss g(x: f32[N] diff) -> f32 {\n    let inner = where(x > -1.0, log(x + 1.0), 0.0)\n    sum(where(x > 0, sqrt(x) + inner, 0.0))\n}\n",
    );
    let call = Call {
        inputs: vec![("x".into(), f32s(vec![5], &[-2.0, -1.0, 0.0, 1.0, 4.0]))],
        grads: true,
        ..Call::default()
    };
    let o = finite_everywhere(&p, &call);
    let g = grad(&o, "x");
    assert_eq!(&g[..3], &[0.0, 0.0, 0.0]);
    assert!((g[3] - (0.5 + 0.5)).abs() < 1e-6);
}

const SMOOTH_L1_IF: &str = "loss smooth_l1(pred: f32[N] diff, y: f32[N]) -> f32 {
    param beta: f32 = 1.0 in [0, inf)
    let d = pred - y
    mean(if beta < 1e-5 { abs(d) } else { 0.5 * d ** 2 / beta })
}
";

#[test]
fn smooth_l1_if_form_at_beta_zero_is_finite() {
    let p = program(SMOOTH_L1_IF);
    let call = Call {
        inputs: vec![
            ("pred".into(), f32s(vec![4], &[0.5, -1.0, 2.0, 0.25])),
            ("y".into(), f32s(vec![4], &[0.0, 0.0, 1.0, 1.0])),
        ],
        params: vec![("beta".into(), Scalar::F(0.0))],
        grads: true,
        ..Call::default()
    };
    let o = finite_everywhere(&p, &call);
    assert!((o.loss - (0.5 + 1.0 + 1.0 + 0.75) / 4.0).abs() < 1e-6);
    assert_eq!(grad(&o, "pred"), vec![0.25, -0.25, 0.25, -0.25]);
    // And the other branch at the default.
    let call = Call {
        params: vec![],
        ..call
    };
    finite_everywhere(&p, &call);
}

#[test]
fn param_domains_are_checked_when_a_call_is_bound() {
    let p = program(SMOOTH_L1_IF);
    let call = Call {
        inputs: vec![
            ("pred".into(), f32s(vec![1], &[0.5])),
            ("y".into(), f32s(vec![1], &[0.0])),
        ],
        params: vec![("beta".into(), Scalar::F(-0.5))],
        ..Call::default()
    };
    let e = p.bind(&call).expect_err("beta = -0.5 is outside [0, inf)");
    assert_eq!(e.code, "L6115");
    assert_eq!(
        e.message,
        "param `beta` = -0.5 is outside its domain [0, inf)"
    );
    assert_eq!(e.help.as_deref(), Some("give `beta` a value in [0, inf)"));
    // Open ends exclude their bound.
    let p = program(
        "loss t(x: f32[N] diff) -> f32 {\n    param tau: f32 = 0.5 in (0, 1]\n    sum(x) / tau\n}\n",
    );
    let bind = |v: f64| {
        p.bind(&Call {
            inputs: vec![("x".into(), f32s(vec![1], &[1.0]))],
            params: vec![("tau".into(), Scalar::F(v))],
            ..Call::default()
        })
        .map(|_| ())
        .map_err(|e| e.code)
    };
    assert_eq!(bind(0.0), Err("L6115"));
    assert_eq!(bind(1.0), Ok(()));
    assert_eq!(bind(1.5), Err("L6115"));
    assert_eq!(bind(f64::NAN), Err("L6115"));
}

#[test]
fn max_and_min_ties_share_the_gradient_equally_over_every_axis() {
    let p =
        program("loss m(x: f32[R, K] diff) -> f32 {\n    max(x) + 2.0 * sum(min(x, axis=1))\n}\n");
    let call = Call {
        inputs: vec![(
            "x".into(),
            f32s(vec![2, 3], &[3.0, 1.0, 3.0, 1.0, 3.0, 2.0]),
        )],
        grads: true,
        ..Call::default()
    };
    for b in backends() {
        let o = run(&p, b, &call);
        let g = grad(&o, "x");
        // max: three tied 3s get 1/3 each; min per row: row 0 has a single 1
        // (2.0), row 1 a single 1 (2.0).
        let third = 1.0 / 3.0;
        let want = [third, 2.0, third, 2.0, third, 0.0];
        for (a, e) in g.iter().zip(&want) {
            assert!((a - e).abs() < 1e-6, "[{b}] {g:?}, expected {want:?}");
        }
    }
    // argmax still picks the first maximum.
    let p = program("loss a(x: f32[K] diff) -> f32 {\n    sum(x) + f32(argmax(x))\n}\n");
    let call = Call {
        inputs: vec![("x".into(), f32s(vec![3], &[1.0, 3.0, 3.0]))],
        grads: true,
        ..Call::default()
    };
    for b in backends() {
        assert_eq!(run(&p, b, &call).loss, 8.0, "[{b}]");
    }
}

#[test]
fn log_softmax_keeps_its_precision_under_large_shifts() {
    let p = program(
        "loss l(x: f32[N, C] diff, t: i64[N]) -> f32 {\n    -mean(take(log_softmax(x, axis=1), t, axis=1))\n}\n",
    );
    let base = [0.3, -1.2, 2.5, 0.0, 1.1, -0.7, 0.9, 0.2, -2.0, 1.7];
    for shift in [1e4, 1e5, 1e6, 1e7] {
        let x: Vec<f64> = base.iter().map(|v| f64::from((v + shift) as f32)).collect();
        // The f64 value of the f32 inputs.
        let want: f64 = x
            .chunks(5)
            .zip([2usize, 4])
            .map(|(r, t)| {
                let m = r.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
                let lse = m + r.iter().map(|v| (v - m).exp()).sum::<f64>().ln();
                lse - r[t]
            })
            .sum::<f64>()
            / 2.0;
        let call = Call {
            inputs: vec![
                ("x".into(), f32s(vec![2, 5], &x)),
                ("t".into(), Tensor::from_i64(vec![2], vec![2, 4])),
            ],
            grads: true,
            ..Call::default()
        };
        for b in backends() {
            let got = run(&p, b, &call).loss;
            assert!(
                (got - want).abs() <= 2e-6 * want.abs(),
                "[{b}] shift {shift:e}: {got} vs f64 {want} (err {:.1e})",
                (got - want).abs()
            );
        }
    }
}

#[test]
fn if_branches_broadcast_and_a_scalar_branch_does_not_leak() {
    let p = program(
        "loss b(x: f32[N] diff) -> f32 {\n    param beta: f32 = 1.0 in [0, inf)\n    sum(if beta > 0 { x / beta } else { sqrt(sum(x * x)) })\n}\n",
    );
    // beta = 1 at x = 0: the untaken scalar branch is sqrt(0), whose derivative is inf.
    let call = Call {
        inputs: vec![("x".into(), f32s(vec![3], &[0.0, 0.0, 0.0]))],
        grads: true,
        ..Call::default()
    };
    let o = finite_everywhere(&p, &call);
    assert_eq!(o.loss, 0.0);
    assert_eq!(grad(&o, "x"), vec![1.0, 1.0, 1.0]);
    // beta = 0: the taken branch is the scalar, broadcast to [N]; x / 0 is untaken.
    let call = Call {
        inputs: vec![("x".into(), f32s(vec![2], &[3.0, 4.0]))],
        params: vec![("beta".into(), Scalar::F(0.0))],
        grads: true,
        ..Call::default()
    };
    let o = finite_everywhere(&p, &call);
    assert!((o.loss - 10.0).abs() < 1e-6);
    let g = grad(&o, "x");
    assert!(
        (g[0] - 2.0 * 0.6).abs() < 1e-6 && (g[1] - 2.0 * 0.8).abs() < 1e-6,
        "{g:?}"
    );
}

#[test]
fn a_non_finite_gradient_from_finite_inputs_points_at_the_program() {
    let p = program("loss s(x: f32[N] diff) -> f32 {\n    sum(sqrt(x))\n}\n");
    let call = Call {
        inputs: vec![("x".into(), f32s(vec![2], &[0.0, 4.0]))],
        grads: true,
        check_finite: true,
        ..Call::default()
    };
    for b in backends() {
        let exec = losslang_runtime::backends::executor(b, &p, "cpu").expect("executor");
        let env = p.bind(&call).expect("bind");
        let e = p
            .run_with(exec.as_ref(), &env, true, true)
            .expect_err("d sqrt(x)/dx at 0 is inf");
        assert_eq!(e.code, "L6112", "[{b}]");
        assert_eq!(e.message, "the gradient of `x` is inf at [0]", "[{b}]");
        let help = e.help.unwrap_or_default();
        assert!(help.starts_with("the inputs are finite"), "[{b}] {help}");
    }
}
