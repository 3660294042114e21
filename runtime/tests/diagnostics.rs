//! Diagnostics snapshots: every `.loss` file under `compiler/tests/cases/errors/`
//! and `compiler/tests/cases/warnings/` (found by reading the folders at run
//! time) is compiled, all its diagnostics are rendered colourless at width 100
//! and compared with `compiler/tests/cases/snapshots/<folder>__<file>.snap`.
//!
//! Besides the snapshots, every diagnostic must keep the contract: a code, a
//! help line and spans inside the file they point into. Files in `errors/`
//! must fail with at least one error; files in `warnings/` must compile with
//! at least one warning or note.
//!
//! The valid programs directly in `compiler/tests/cases/` must compile without
//! errors or warnings, run on random inputs and pass the gradient check.
//!
//! Accept new or changed snapshots with
//! `INSTA_UPDATE=always cargo test -p losslang-runtime --test diagnostics`
//! (or `cargo insta review`), then read them.

use losslang_compiler::diag::{Diagnostic, Severity};
use losslang_compiler::program::{CompileOptions, compile};
use losslang_compiler::sema::Source;
use losslang_runtime::loader::FileLoader;
use losslang_runtime::render::render_diag;
use std::path::{Path, PathBuf};
use std::process::Command;

const WIDTH: usize = 100;

fn cases_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("..")
        .join("compiler")
        .join("tests")
        .join("cases")
}

/// The `.loss` files directly inside `dir`, sorted by name.
fn loss_files(dir: &Path) -> Vec<PathBuf> {
    let mut out: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("cannot read {}: {e}", dir.display()))
        .map(|e| e.expect("a directory entry").path())
        .filter(|p| p.is_file() && p.extension().is_some_and(|x| x == "loss"))
        .collect();
    out.sort();
    out
}

fn base_name(p: &Path) -> String {
    p.file_name()
        .expect("a file name")
        .to_string_lossy()
        .into_owned()
}

fn stem(p: &Path) -> String {
    p.file_stem()
        .expect("a file stem")
        .to_string_lossy()
        .into_owned()
}

/// What compiling one file gave: its sources and all diagnostics, and whether it compiled.
struct Outcome {
    compiled: bool,
    sources: Vec<Source>,
    diags: Vec<Diagnostic>,
}

fn compile_file(path: &Path) -> Outcome {
    let text = std::fs::read_to_string(path)
        .unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()));
    // The real path, so that relative `use` resolves next to the file.
    let src = Source {
        name: path.display().to_string(),
        text,
    };
    let (compiled, mut sources, mut diags) =
        match compile(src, &FileLoader, &CompileOptions::default()) {
            Ok(p) => (true, p.sources, p.diags),
            Err(f) => (false, f.sources, f.diags),
        };
    // No machine paths in snapshots: the main file is shown by its base name, and
    // any mention of its folder (e.g. a missing sibling module) is dropped.
    sources[0].name = base_name(path);
    let dir = path
        .parent()
        .expect("a parent folder")
        .display()
        .to_string();
    let prefix = format!("{dir}{}", std::path::MAIN_SEPARATOR);
    let scrub = |s: &mut String| {
        if s.contains(&prefix) {
            *s = s.replace(&prefix, "");
        }
        if s.contains(&dir) {
            *s = s.replace(&dir, ".");
        }
    };
    for d in &mut diags {
        scrub(&mut d.message);
        scrub(&mut d.label);
        if let Some(h) = &mut d.help {
            scrub(h);
        }
        for (_, l) in &mut d.related {
            scrub(l);
        }
    }
    diags.sort_by_key(|d| (d.file, d.span.start, d.span.end));
    Outcome {
        compiled,
        sources,
        diags,
    }
}

fn render_all(o: &Outcome) -> String {
    let mut out = String::new();
    for d in &o.diags {
        out.push_str(&render_diag(d, &o.sources, false, WIDTH));
        if !out.ends_with('\n') {
            out.push('\n');
        }
    }
    out
}

/// Contract violations of one diagnostic (empty when it is well-formed).
fn check_contract(name: &str, d: &Diagnostic, sources: &[Source]) -> Vec<String> {
    let mut bad = vec![];
    let what = format!("{name}: {} `{}`", d.code, d.message);
    if d.code.trim().is_empty() {
        bad.push(format!("{what}: no code"));
    }
    if d.message.trim().is_empty() {
        bad.push(format!("{what}: empty message"));
    }
    if d.help.as_deref().is_none_or(|h| h.trim().is_empty()) {
        bad.push(format!("{what}: no help line"));
    }
    match sources.get(d.file) {
        None => bad.push(format!("{what}: file index {} has no source", d.file)),
        Some(src) => {
            let len = src.text.len();
            let spans = std::iter::once(&d.span).chain(d.related.iter().map(|(s, _)| s));
            for s in spans {
                if s.start > s.end || s.end > len {
                    bad.push(format!(
                        "{what}: span {}..{} is outside `{}` ({len} bytes)",
                        s.start, s.end, src.name
                    ));
                } else if !src.text.is_char_boundary(s.start) || !src.text.is_char_boundary(s.end) {
                    bad.push(format!(
                        "{what}: span {}..{} splits a character",
                        s.start, s.end
                    ));
                }
            }
        }
    }
    bad
}

/// Snapshots one file; returns a description of the mismatch instead of panicking.
fn snapshot(name: &str, text: &str, input: &Path) -> Result<(), String> {
    let res = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        insta::with_settings!({
            snapshot_path => "../../compiler/tests/cases/snapshots",
            prepend_module_to_snapshot => false,
            omit_expression => true,
            input_file => input,
        }, {
            insta::assert_snapshot!(name.to_string(), text);
        });
    }));
    res.map_err(|_| format!("{name}: the snapshot differs (see above)"))
}

#[test]
fn diagnostics_snapshots() {
    let root = cases_dir();
    let mut failures: Vec<String> = vec![];
    let mut seen = 0;
    for folder in ["errors", "warnings"] {
        let files = loss_files(&root.join(folder));
        assert!(
            !files.is_empty(),
            "no .loss files in compiler/tests/cases/{folder}"
        );
        for path in files {
            seen += 1;
            let file = format!("{folder}/{}", base_name(&path));
            let o = compile_file(&path);
            let errors = o.diags.iter().filter(|d| d.is_error()).count();
            match folder {
                "errors" => {
                    if o.compiled || errors == 0 {
                        failures.push(format!("{file}: expected at least one error, got none"));
                    }
                }
                _ => {
                    if !o.compiled || errors > 0 {
                        failures.push(format!("{file}: expected to compile, got {errors} errors"));
                    }
                    if !o
                        .diags
                        .iter()
                        .any(|d| matches!(d.severity, Severity::Warning | Severity::Note))
                    {
                        failures.push(format!("{file}: expected a warning or a note, got none"));
                    }
                }
            }
            for d in &o.diags {
                failures.extend(check_contract(&file, d, &o.sources));
            }
            let text = render_all(&o);
            let name = format!("{folder}__{}", stem(&path));
            if let Err(e) = snapshot(&name, &text, &path) {
                failures.push(e);
            }
        }
    }
    assert!(seen > 0);
    assert!(
        failures.is_empty(),
        "{} problem(s) in the diagnostics cases:\n  {}",
        failures.len(),
        failures.join("\n  ")
    );
}

#[test]
fn valid_cases_compile_run_and_gradcheck() {
    let lossc = env!("CARGO_BIN_EXE_lossc");
    let files = loss_files(&cases_dir());
    assert!(
        !files.is_empty(),
        "no valid .loss programs in compiler/tests/cases"
    );
    let mut failures: Vec<String> = vec![];
    for path in files {
        let file = base_name(&path);
        let o = compile_file(&path);
        for d in o.diags.iter().filter(|d| d.severity != Severity::Note) {
            failures.push(format!(
                "{file}: unexpected diagnostic\n{}",
                render_diag(d, &o.sources, false, WIDTH)
            ));
        }
        if !o.compiled {
            continue;
        }
        let runs: [&[&str]; 2] = [
            &[
                "run",
                "--no-color",
                "--random",
                "N=6,C=4",
                "--backend",
                "interp",
                "--grad",
                "--steps",
                "2",
            ],
            &["gradcheck", "--no-color"],
        ];
        for args in runs {
            let out = Command::new(lossc)
                .args(args)
                .arg(&path)
                .output()
                .expect("run lossc");
            if !out.status.success() {
                failures.push(format!(
                    "{file}: `lossc {}` failed ({})\n{}{}",
                    args.join(" "),
                    out.status,
                    String::from_utf8_lossy(&out.stdout),
                    String::from_utf8_lossy(&out.stderr)
                ));
            }
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}
