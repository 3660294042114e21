//! Splitting row loops across threads: the same bits for every thread count
//! (partials are per row and combined in row order), and the same values as
//! the interpreter.

use losslang_clif::Jit;
use losslang_compiler::backend::{Executor, Interp};
use losslang_compiler::program::{Call, CompileOptions, compile};
use losslang_compiler::sema::{NoLoader, Source};
use losslang_compiler::value::{DType, Data, Tensor};
use std::path::Path;

fn bits(t: &Tensor) -> Vec<u64> {
    match &t.data {
        Data::F(v) => v.iter().map(|x| x.to_bits()).collect(),
        Data::I(v) => v.iter().map(|x| *x as u64).collect(),
        Data::B(v) => v.iter().map(|x| u64::from(*x)).collect(),
    }
}

#[test]
fn thread_count_does_not_change_the_bits() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../stdlib/cross_entropy.loss");
    let text = std::fs::read_to_string(&path).expect("readable");
    let p = compile(
        Source {
            name: "cross_entropy.loss".into(),
            text,
        },
        &NoLoader,
        &CompileOptions::default(),
    )
    .unwrap_or_else(|f| {
        panic!(
            "{:?}",
            f.diags.iter().map(|d| &d.message).collect::<Vec<_>>()
        )
    });
    let (n, c) = (3000usize, 37usize);
    let mut s = 12345u64;
    let mut next = || {
        s = s
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        (s >> 11) as f64 / (1u64 << 53) as f64
    };
    let logits: Vec<f64> = (0..n * c)
        .map(|_| f64::from((next() * 8.0 - 4.0) as f32))
        .collect();
    let target: Vec<i64> = (0..n)
        .map(|i| {
            if i % 17 == 0 {
                -100
            } else {
                (next() * c as f64) as i64
            }
        })
        .collect();
    let weight: Vec<f64> = (0..c).map(|_| f64::from((0.5 + next()) as f32)).collect();
    let call = Call {
        inputs: vec![
            (
                "logits".into(),
                Tensor::from_f64(DType::F32, vec![n, c], logits),
            ),
            ("target".into(), Tensor::from_i64(vec![n], target)),
            (
                "weight".into(),
                Tensor::from_f64(DType::F32, vec![c], weight),
            ),
        ],
        params: vec![(
            "label_smoothing".into(),
            losslang_compiler::ops::Scalar::F(0.1),
        )],
        grads: true,
        ..Call::default()
    };
    let env = p.bind(&call).expect("binds");
    let want = p.run_with(&Interp, &env, true, false).expect("interp");
    let mut first: Option<(u64, Vec<u64>)> = None;
    for t in [1, 2, 3, 4, 7] {
        let jit = Jit::new(&p.opt).expect("compiles").with_threads(t);
        assert_eq!(jit.threads(), t);
        let got = p.run_with(&jit, &env, true, false).expect("jit");
        assert!(
            (got.loss - want.loss).abs() <= 1e-5 * want.loss.abs().max(1.0),
            "{t} threads: loss {} vs {}",
            got.loss,
            want.loss
        );
        let g = &got.grads[0].1;
        let w = &want.grads[0].1;
        for (a, b) in g.to_f64_vec().iter().zip(w.to_f64_vec()) {
            assert!(
                (a - b).abs() <= 1e-5 * b.abs() + 1e-8,
                "{t} threads: grad {a} vs {b}"
            );
        }
        let key = (got.loss.to_bits(), bits(g));
        match &first {
            None => first = Some(key),
            Some(f) => assert!(*f == key, "{t} threads changed the bits"),
        }
    }
    // The executor's own entry point agrees too.
    let jit = Jit::new(&p.opt).expect("compiles").with_threads(4);
    let roots = vec![p.opt.loss()];
    let a = jit.eval(&p.opt, &env, &roots).expect("eval");
    assert_eq!(a[0].scalar_f64().map(f64::to_bits), first.map(|f| f.0));
}
