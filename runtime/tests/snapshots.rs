//! Every stage's text form (ast, ir, grad, opt, candle, sched, clif) and the
//! generated part of the exported torch, jax and numpy modules for
//! every `.loss` file in stdlib/, examples/ and compiler/tests/cases/ (found
//! by glob: nothing is registered by hand). Module files (only `fn`s) get their ast snapshot.

use losslang_compiler::export::{Target, generated};
use losslang_compiler::ir::print::print;
use losslang_compiler::program::{CompileOptions, compile};
use losslang_compiler::sema::Source;
use losslang_runtime::loader::FileLoader;
use std::path::Path;

fn stages(path: &Path) {
    let text = std::fs::read_to_string(path).expect("readable");
    let file = path
        .file_name()
        .expect("file name")
        .to_string_lossy()
        .to_string();
    let ast = match losslang_grammar::parse(&text) {
        Ok(f) => losslang_grammar::print::print_file(&f),
        Err(e) => panic!("{file} does not parse: {}", e.message),
    };
    insta::assert_snapshot!("ast", ast);
    let has_loss = ast.lines().any(|l| l.trim_start().starts_with("(loss "));
    if !has_loss {
        return;
    }
    // Named by the file's base name so no machine path enters a snapshot.
    let p = match compile(
        Source {
            name: file.clone(),
            text,
        },
        &FileLoader,
        &CompileOptions::default(),
    ) {
        Ok(p) => p,
        Err(f) => panic!(
            "{file} does not compile: {:?}",
            f.diags.iter().map(|d| &d.message).collect::<Vec<_>>()
        ),
    };
    insta::assert_snapshot!("ir", print(&p.ir, "ir"));
    insta::assert_snapshot!("grad", print(&p.grad, "grad"));
    insta::assert_snapshot!("opt", print(&p.opt, "opt"));
    let candle = losslang_candle::emit_text(&p.opt, losslang_candle::Target::Cpu)
        .unwrap_or_else(|e| panic!("{file} does not lower to candle: {e}"));
    insta::assert_snapshot!("candle", candle);
    insta::assert_snapshot!("sched", losslang_clif::sched_text(&p.opt));
    insta::assert_snapshot!("clif", losslang_clif::clif_text(&p.opt));
    if let Some(plan) = losslang_compiler::shard::analyze(&p.opt, None) {
        insta::assert_snapshot!("shard", losslang_compiler::shard::print(&p.opt, &plan));
    }
    for target in [Target::Torch, Target::Jax, Target::Numpy] {
        insta::assert_snapshot!(
            format!("export_{}", target.name()),
            generated(&p, target, &file)
        );
    }
}

#[test]
fn stdlib_stages() {
    insta::glob!("../../stdlib", "*.loss", stages);
}

#[test]
fn examples_stages() {
    insta::glob!("../../examples", "*.loss", stages);
}

#[test]
fn case_stages() {
    insta::glob!("../../compiler/tests/cases", "*.loss", stages);
}
