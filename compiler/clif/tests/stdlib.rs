//! Every standard-library loss through the JIT: each generated function
//! passes Cranelift's verifier (in the text form's target and as compiled for
//! this host), and data errors read exactly as on the interpreter.

use losslang_clif::{Jit, clif_functions};
use losslang_compiler::backend::Interp;
use losslang_compiler::program::{Call, CompileOptions, Program, compile};
use losslang_compiler::sema::{Loader, Source};
use losslang_compiler::value::{DType, Tensor};
use std::path::{Path, PathBuf};

fn stdlib() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../stdlib")
}

/// `std::name` from the stdlib folder; no other modules.
struct StdLoader;

impl Loader for StdLoader {
    fn load(&self, path: &[String], _from: &str) -> Result<Source, String> {
        match path {
            [std, name] if std == "std" => {
                let p = stdlib().join(format!("{name}.loss"));
                std::fs::read_to_string(&p)
                    .map(|text| Source {
                        name: format!("std/{name}.loss"),
                        text,
                    })
                    .map_err(|e| format!("{}: {e}", p.display()))
            }
            _ => Err(format!("no module `{}`", path.join("::"))),
        }
    }
}

fn program(file: &str) -> Program {
    let p = stdlib().join(file);
    let text = std::fs::read_to_string(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()));
    compile(
        Source {
            name: file.to_string(),
            text,
        },
        &StdLoader,
        &CompileOptions::default(),
    )
    .unwrap_or_else(|f| {
        panic!(
            "{file}: {:?}",
            f.diags.iter().map(|d| &d.message).collect::<Vec<_>>()
        )
    })
}

/// The stdlib files that define a loss (the others are modules of `fn`s).
fn loss_files() -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(stdlib())
        .expect("stdlib folder")
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().to_string())
        .filter(|n| n.ends_with(".loss"))
        .filter(|n| {
            let text = std::fs::read_to_string(stdlib().join(n)).expect("readable");
            let f = losslang_grammar::parse(&text).unwrap_or_else(|e| panic!("{n}: {}", e.message));
            f.items
                .iter()
                .any(|i| matches!(i, losslang_grammar::ast::Item::Loss(_)))
        })
        .collect();
    v.sort();
    v
}

#[test]
fn every_generated_function_verifies() {
    let flags = cranelift_codegen::settings::Flags::new(cranelift_codegen::settings::builder());
    let files = loss_files();
    assert!(files.len() >= 35, "found {} losses", files.len());
    let mut count = 0;
    for f in &files {
        let p = program(f);
        let funcs = clif_functions(&p.opt);
        assert!(!funcs.is_empty(), "{f}: no functions");
        for (name, func) in &funcs {
            if let Err(e) = cranelift_codegen::verify_function(func, &flags) {
                panic!("{f} {name}: {e}\n{}", func.display());
            }
            count += 1;
        }
        // Cranelift verifies again while compiling for this host.
        Jit::new(&p.opt).unwrap_or_else(|e| panic!("{f}: {e}"));
    }
    assert!(count > files.len());
}

fn call(inputs: Vec<(&str, Tensor)>) -> Call {
    Call {
        inputs: inputs
            .into_iter()
            .map(|(n, t)| (n.to_string(), t))
            .collect(),
        grads: true,
        ..Call::default()
    }
}

/// The error message of a call on the interpreter and on the JIT.
fn both(p: &Program, c: &Call) -> (String, String) {
    let env = p.bind(c).expect("the data fits the signature");
    let jit = Jit::new(&p.opt).expect("compiles");
    let i = p
        .run_with(&Interp, &env, c.grads, false)
        .expect_err("the interpreter rejects the data");
    let j = p
        .run_with(&jit, &env, c.grads, false)
        .expect_err("the JIT rejects the data");
    (
        format!("{} {} {:?}", i.code, i.message, i.help),
        format!("{} {} {:?}", j.code, j.message, j.help),
    )
}

#[test]
fn out_of_range_label_reads_as_on_the_interpreter() {
    let p = program("cross_entropy.loss");
    let logits = Tensor::from_f64(
        DType::F32,
        vec![4, 5],
        (0..20).map(|i| i as f64 * 0.1).collect(),
    );
    let weight = Tensor::from_f64(DType::F32, vec![5], vec![1.0; 5]);
    for target in [vec![0, 7, 2, 1], vec![0, 1, 2, -3], vec![9, 9, 9, 9]] {
        let t = Tensor::from_i64(vec![4], target.clone());
        let c = call(vec![
            ("logits", logits.clone()),
            ("target", t),
            ("weight", weight.clone()),
        ]);
        let (i, j) = both(&p, &c);
        assert!(i.contains("out of range"), "{i}");
        assert_eq!(i, j, "target {target:?}");
    }
}

#[test]
fn duplicate_and_out_of_range_ids_read_as_on_the_interpreter() {
    let p = program("aldr_kl.loss");
    let logits = Tensor::from_f64(
        DType::F32,
        vec![3, 4],
        (0..12).map(|i| (i as f64).sin()).collect(),
    );
    let target = Tensor::from_i64(vec![3], vec![0, 3, 1]);
    for ids in [vec![1, 4, 1], vec![0, 9, 2], vec![-1, 2, 3], vec![5, 5, 9]] {
        let c = Call {
            dims: [("M".to_string(), 6)].into_iter().collect(),
            ..call(vec![
                ("logits", logits.clone()),
                ("target", target.clone()),
                ("ids", Tensor::from_i64(vec![3], ids.clone())),
            ])
        };
        let (i, j) = both(&p, &c);
        assert_eq!(i, j, "ids {ids:?}");
    }
}
