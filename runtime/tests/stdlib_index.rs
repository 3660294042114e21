//! stdlib/README.md's index table must describe the standard library as it
//! compiles: one row per `loss` file, whose inputs, params and state columns
//! are exactly what the compiled signature says, and no row for a loss that
//! does not exist. On a mismatch the test prints the row it expects, so the
//! fix is a copy and paste.

use losslang_compiler::ir::{Graph, Handle};
use losslang_compiler::ops::Op;
use losslang_compiler::program::{CompileOptions, Program, compile};
use losslang_compiler::sema::Source;
use losslang_compiler::sema::scope::is_module;
use losslang_runtime::loader::FileLoader;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// What an empty params or state cell holds.
const NONE: &str = "—";

fn stdlib_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../stdlib")
}

/// Every `stdlib/*.loss` file, sorted by name, with its text.
fn stdlib_files() -> Vec<(String, String)> {
    let mut out: Vec<(String, String)> = std::fs::read_dir(stdlib_dir())
        .expect("stdlib/ is readable")
        .map(|e| e.expect("a directory entry").path())
        .filter(|p| p.extension().is_some_and(|x| x == "loss"))
        .map(|p| {
            let name = p
                .file_name()
                .expect("a file name")
                .to_string_lossy()
                .to_string();
            let text = std::fs::read_to_string(&p).expect("a readable .loss file");
            (name, text)
        })
        .collect();
    out.sort();
    out
}

fn compile_file(file: &str, text: &str) -> Result<Program, String> {
    // Named by the bare file name, as `use std::...` does not need the path.
    compile(
        Source {
            name: file.to_string(),
            text: text.to_string(),
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
}

/// A state's initial value as the README writes it: the constant, or the
/// name of the param it copies.
fn init_text(g: &Graph, h: Handle) -> String {
    let mut cur = h;
    loop {
        let n = g.node(cur);
        match &n.op {
            Op::Const(v, _) | Op::Fill(v, _, _) => return v.text(),
            Op::Param(k) => return g.params[*k].name.clone(),
            Op::BroadcastTo(_) | Op::Reshape(_) | Op::Cast(_) | Op::StopGrad => cur = n.args[0],
            _ => return "(computed)".to_string(),
        }
    }
}

fn or_none(parts: Vec<String>) -> String {
    if parts.is_empty() {
        NONE.to_string()
    } else {
        parts.join(", ")
    }
}

/// The inputs, params and state cells of a compiled loss.
fn signature_cells(g: &Graph) -> [String; 3] {
    let inputs = g
        .inputs
        .iter()
        .map(|i| format!("{}: {}{}", i.name, i.ty, if i.diff { " diff" } else { "" }))
        .collect();
    let params = g
        .params
        .iter()
        .map(|p| format!("{} = {}", p.name, p.default.text()))
        .collect();
    let states = g
        .states
        .iter()
        .map(|s| format!("{}: {} = {}", s.name, s.ty, init_text(g, s.init)))
        .collect();
    [or_none(inputs), or_none(params), or_none(states)]
}

/// One row of the index table, by column name.
struct Row {
    line: usize,
    cells: BTreeMap<String, String>,
}

const COLUMNS: [&str; 6] = ["name", "purpose", "source", "inputs", "params", "state"];

fn split_row(line: &str) -> Vec<String> {
    let inner = line.trim().trim_start_matches('|').trim_end_matches('|');
    inner.split('|').map(|c| c.trim().to_string()).collect()
}

/// The rows of the table under `## Index`.
fn readme_rows(readme: &str) -> Result<Vec<Row>, String> {
    let mut lines = readme
        .lines()
        .enumerate()
        .skip_while(|(_, l)| l.trim() != "## Index");
    if lines.next().is_none() {
        return Err("stdlib/README.md has no `## Index` section".into());
    }
    let mut table = lines
        .skip_while(|(_, l)| !l.trim_start().starts_with('|'))
        .take_while(|(_, l)| l.trim_start().starts_with('|'));
    let header = match table.next() {
        Some((_, h)) => split_row(h),
        None => return Err("the `## Index` section has no table".into()),
    };
    if header != COLUMNS {
        return Err(format!(
            "the index table's columns are {header:?}; the test expects {COLUMNS:?}"
        ));
    }
    let mut rows = vec![];
    for (i, l) in table {
        let cells = split_row(l);
        if cells
            .iter()
            .all(|c| c.chars().all(|ch| ch == '-' || ch == ':'))
        {
            continue;
        }
        if cells.len() != COLUMNS.len() {
            return Err(format!(
                "README.md line {}: {} cells, expected {} (a `|` inside a cell?)",
                i + 1,
                cells.len(),
                COLUMNS.len()
            ));
        }
        rows.push(Row {
            line: i + 1,
            cells: COLUMNS.iter().map(|c| c.to_string()).zip(cells).collect(),
        });
    }
    Ok(rows)
}

#[test]
fn readme_index_matches_the_compiled_signatures() {
    let readme_path = stdlib_dir().join("README.md");
    let readme = std::fs::read_to_string(&readme_path).expect("stdlib/README.md is readable");
    let rows = readme_rows(&readme).unwrap_or_else(|e| panic!("{e}"));
    let mut problems: Vec<String> = vec![];
    let mut losses: Vec<String> = vec![];
    for (file, text) in stdlib_files() {
        if is_module(&text) {
            continue;
        }
        let stem = file.trim_end_matches(".loss").to_string();
        let p = match compile_file(&file, &text) {
            Ok(p) => p,
            Err(e) => {
                problems.push(format!("stdlib/{file} does not compile: {e}"));
                continue;
            }
        };
        let g = &p.opt;
        if g.name != stem {
            problems.push(format!(
                "stdlib/{file} defines the loss `{}`; a stdlib file holds the loss of its own name",
                g.name
            ));
        }
        losses.push(g.name.clone());
        let [inputs, params, state] = signature_cells(g);
        let matching: Vec<&Row> = rows.iter().filter(|r| r.cells["name"] == g.name).collect();
        let keep = |col: &str| {
            matching
                .first()
                .map_or("?".to_string(), |r| r.cells[col].clone())
        };
        let expected = format!(
            "| {} | {} | {} | {inputs} | {params} | {state} |",
            g.name,
            keep("purpose"),
            keep("source")
        );
        match matching.as_slice() {
            [] => problems.push(format!(
                "README.md has no row for `{}`; add:\n{expected}",
                g.name
            )),
            [r] => {
                let mut wrong = vec![];
                for (col, want) in [("inputs", &inputs), ("params", &params), ("state", &state)] {
                    if &r.cells[col] != want {
                        wrong.push(format!(
                            "    {col}: README has `{}`, the compiled loss has `{want}`",
                            r.cells[col]
                        ));
                    }
                }
                if !wrong.is_empty() {
                    problems.push(format!(
                        "README.md line {} (`{}`) has drifted from stdlib/{file}:\n{}\n  expected row:\n{expected}",
                        r.line,
                        g.name,
                        wrong.join("\n")
                    ));
                }
            }
            many => problems.push(format!(
                "README.md has {} rows for `{}` (lines {}); keep one:\n{expected}",
                many.len(),
                g.name,
                many.iter()
                    .map(|r| r.line.to_string())
                    .collect::<Vec<_>>()
                    .join(", ")
            )),
        }
    }
    for r in &rows {
        if !losses.contains(&r.cells["name"]) {
            problems.push(format!(
                "README.md line {} lists `{}`, but no stdlib/*.loss file defines that loss",
                r.line, r.cells["name"]
            ));
        }
    }
    assert!(
        !losses.is_empty(),
        "no stdlib loss was found in {}",
        stdlib_dir().display()
    );
    assert!(
        problems.is_empty(),
        "stdlib/README.md's index is out of date ({} problems):\n\n{}",
        problems.len(),
        problems.join("\n\n")
    );
    println!("stdlib/README.md index: {} losses checked", losses.len());
}
