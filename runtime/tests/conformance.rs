//! Every public conformance case (tests/conformance) through every built
//! backend, against the float64 references, with the tolerances of
//! tests/conformance/README.md. Prints a per-loss table; fails on any miss.

use losslang_compiler::backend::{Backend, Executor};
use losslang_compiler::program::{CompileOptions, Program, compile};
use losslang_compiler::sema::Source;
use losslang_runtime::conformance::{json, root, run_step, state_of};
use losslang_runtime::loader::FileLoader;
use std::path::{Path, PathBuf};

fn run_case(p: &Program, exec: &dyn Executor, case: &Path) -> Result<(), String> {
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
    let mut state = state_of(&json(&steps[0].join("state.json")));
    for s in &steps {
        state = run_step(p, exec, s, state)?;
    }
    Ok(())
}

#[test]
fn conformance_every_case_every_backend() {
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
    let backends: Vec<Backend> = [Backend::Interp, Backend::Jit, Backend::Candle]
        .into_iter()
        .filter(|b| losslang_runtime::backends::available(*b))
        .collect();
    let mut failures = vec![];
    let mut table = vec![];
    let (mut total_pass, mut total) = (0, 0);
    for name in &names {
        let file = root().join("stdlib").join(format!("{name}.loss"));
        let mut case_dirs: Vec<PathBuf> = std::fs::read_dir(cases.join(name))
            .expect("loss folder")
            .filter_map(|e| e.ok().map(|e| e.path()))
            .collect();
        case_dirs.sort();
        for b in &backends {
            let mut pass = 0;
            let prog = std::fs::read_to_string(&file)
                .map_err(|e| format!("{}: {e}", file.display()))
                .and_then(|text| {
                    compile(
                        Source {
                            name: file.display().to_string(),
                            text,
                        },
                        &FileLoader,
                        &CompileOptions::default(),
                    )
                    .map_err(|f| {
                        f.diags
                            .iter()
                            .filter(|d| d.is_error())
                            .map(|d| format!("{}: {}", d.code, d.message))
                            .collect::<Vec<_>>()
                            .join("; ")
                    })
                });
            for c in &case_dirs {
                total += 1;
                let r = match &prog {
                    Ok(p) => losslang_runtime::backends::executor(*b, p, "cpu")
                        .map_err(|e| e.message)
                        .and_then(|ex| run_case(p, ex.as_ref(), c)),
                    Err(e) => Err(format!("does not compile: {e}")),
                };
                match r {
                    Ok(()) => pass += 1,
                    Err(e) => failures.push(format!(
                        "FAIL {name}/{} [{b}]: {e}",
                        c.file_name().expect("name").to_string_lossy()
                    )),
                }
            }
            total_pass += pass;
            table.push(format!("{name:<28} {b:<7} {pass}/{}", case_dirs.len()));
        }
    }
    println!("{}", table.join("\n"));
    for f in &failures {
        println!("{f}");
    }
    println!(
        "conformance: {total_pass} passed, {} failed",
        total - total_pass
    );
    assert!(
        failures.is_empty(),
        "{} conformance cases failed",
        failures.len()
    );
}
