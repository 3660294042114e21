//! Hostile programs through `lossc check` (the binary, so the real stack and
//! compiler thread are exercised): a deterministic corpus of malformed and
//! pathological programs — deep nesting of every bracket kind up to 5,000
//! levels, 20,000-term expressions, `**` chains, huge integer and float
//! literals, unicode identifiers and text-direction characters, NUL bytes and
//! invalid UTF-8, random byte mutations of the standard library, truncations of
//! every stdlib file at every 37th byte, random token soups, import cycles —
//! plus every input kept in `fuzz/regressions/parse_check/`.
//!
//! Contract for each program: exit status 0 or 1, never a signal, never
//! "panicked" or "internal error" on stderr, and at most `PER_PROGRAM` (10 s)
//! of wall time. Programs are checked in batches of up to `BATCH` files per
//! `lossc check` call, with a batch limit of `PER_PROGRAM` × its size; any
//! batch that breaks the contract is re-run one file at a time, so a failure
//! names the program.
//!
//! The differential fuzzer's generator (`fuzz/src/program_gen.rs`) is included here
//! too: a fixed number of generated programs, and every program kept in
//! `fuzz/regressions/differential/`, must pass its checks on every built backend.

#[allow(dead_code)]
#[path = "../../fuzz/src/program_gen.rs"]
mod program_gen;

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// The time bound for one program.
const PER_PROGRAM: Duration = Duration::from_secs(10);
/// Files per `lossc check` call.
const BATCH: usize = 64;

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// A deterministic 64-bit LCG (Knuth's MMIX constants).
struct Lcg(u64);

impl Lcg {
    fn next(&mut self) -> u64 {
        self.0 = self
            .0
            .wrapping_mul(6_364_136_223_846_793_005)
            .wrapping_add(1_442_695_040_888_963_407);
        self.0 >> 11
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }
}

struct Outcome {
    code: Option<i32>,
    stderr: String,
    timed_out: bool,
    elapsed: Duration,
}

/// `lossc check files...` with a watchdog thread that kills it after `limit`.
fn check(files: &[PathBuf], limit: Duration) -> Outcome {
    let t0 = Instant::now();
    let mut child = Command::new(env!("CARGO_BIN_EXE_lossc"))
        .arg("check")
        .args(files)
        .env("NO_COLOR", "1")
        .env_remove("RUST_BACKTRACE")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn lossc");
    let mut se = child.stderr.take().expect("stderr");
    let reader = std::thread::spawn(move || {
        let mut s = Vec::new();
        let _ = se.read_to_end(&mut s);
        String::from_utf8_lossy(&s).into_owned()
    });
    let (done_tx, done_rx) = std::sync::mpsc::channel::<()>();
    let pid = child.id();
    let child = std::sync::Arc::new(std::sync::Mutex::new(child));
    let watchdog = {
        let child = std::sync::Arc::clone(&child);
        std::thread::spawn(move || {
            if done_rx.recv_timeout(limit).is_err() {
                let _ = child.lock().expect("child").kill();
                return true;
            }
            false
        })
    };
    let status = loop {
        if let Some(st) = child.lock().expect("child").try_wait().expect("wait") {
            break st;
        }
        std::thread::sleep(Duration::from_millis(2));
    };
    let _ = done_tx.send(());
    let timed_out = watchdog.join().expect("watchdog");
    let stderr = reader.join().expect("stderr reader");
    let _ = pid;
    Outcome {
        code: status.code(),
        stderr,
        timed_out,
        elapsed: t0.elapsed(),
    }
}

/// Why an outcome breaks the contract, if it does.
fn violation(o: &Outcome) -> Option<String> {
    if o.timed_out {
        return Some(format!("timed out after {:?}", o.elapsed));
    }
    match o.code {
        Some(0 | 1) => {}
        Some(c) => return Some(format!("exit code {c}")),
        None => return Some("killed by a signal".into()),
    }
    for bad in [
        "panicked",
        "internal error",
        "RUST_BACKTRACE",
        "stack overflow",
    ] {
        if o.stderr.contains(bad) {
            let at = o.stderr.find(bad).unwrap_or(0);
            let snippet: String = o.stderr[at.saturating_sub(200)..]
                .chars()
                .take(600)
                .collect();
            return Some(format!("stderr shows {bad:?}: …{snippet}"));
        }
    }
    None
}

/// Checks every file, two workers at a time; returns the failures as messages.
fn check_all(files: Vec<PathBuf>) -> Vec<String> {
    let batches: Vec<Vec<PathBuf>> = files.chunks(BATCH).map(<[PathBuf]>::to_vec).collect();
    let next = std::sync::atomic::AtomicUsize::new(0);
    let failures = std::sync::Mutex::new(Vec::new());
    std::thread::scope(|s| {
        for _ in 0..2 {
            s.spawn(|| {
                loop {
                    let i = next.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                    let Some(batch) = batches.get(i) else { break };
                    let o = check(batch, PER_PROGRAM * batch.len() as u32);
                    if violation(&o).is_none() {
                        continue;
                    }
                    for f in batch {
                        let o = check(std::slice::from_ref(f), PER_PROGRAM);
                        if let Some(v) = violation(&o) {
                            failures
                                .lock()
                                .expect("failures")
                                .push(format!("{}: {v}", f.display()));
                        }
                    }
                }
            });
        }
    });
    failures.into_inner().expect("failures")
}

/// A `loss` wrapper around a body expression.
fn wrap(body: &str) -> String {
    format!("loss t(x: f32[N] diff, w: f32[N, N]) -> f32 {{\n    {body}\n}}\n")
}

fn stdlib_files() -> Vec<(String, Vec<u8>)> {
    let mut v: Vec<(String, Vec<u8>)> = std::fs::read_dir(root().join("stdlib"))
        .expect("stdlib folder")
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|e| e == "loss"))
        .map(|p| {
            (
                p.file_stem().expect("stem").to_string_lossy().into_owned(),
                std::fs::read(&p).expect("read stdlib file"),
            )
        })
        .collect();
    v.sort();
    v
}

const TOKENS: &[&str] = &[
    "loss", "fn", "let", "param", "state", "report", "assert", "if", "else", "use", "std", "::",
    "margin", "diff", "(", ")", "[", "]", "{", "}", ",", ":", ";", "=", "==", "<-", "->", "<", ">",
    "+", "-", "*", "/", "**", "@", "!", "&", "|", "and", "or", "not", "x", "w", "N", "C", "f32",
    "i64", "bool", "0", "1", "2.5", "1e999", "-", "sum", "mean", "exp", "log", "take", "where",
    "softmax", "axis", "=", "keepdims", "true", "\n", "//", "///", "None", "ensemble",
];

/// The generated corpus: (name, bytes).
fn corpus() -> Vec<(String, Vec<u8>)> {
    let mut out: Vec<(String, Vec<u8>)> = Vec::new();
    let mut add = |name: String, text: Vec<u8>| out.push((name, text));
    // Deep nesting of each bracket kind, around the limits and far past them,
    // closed and unclosed.
    for depth in [10usize, 100, 255, 256, 257, 1000, 5000] {
        let p = format!("sum({}x{})", "(".repeat(depth), ")".repeat(depth));
        add(format!("parens-{depth}"), wrap(&p).into_bytes());
        let b = format!(
            "let a = {}1.0{}\n    sum(x)",
            "[".repeat(depth),
            "]".repeat(depth)
        );
        add(format!("brackets-{depth}"), wrap(&b).into_bytes());
        let c = format!("{}{}\n    sum(x)", "{".repeat(depth), "}".repeat(depth));
        add(format!("braces-{depth}"), wrap(&c).into_bytes());
        let calls = format!("sum({}x{})", "exp(".repeat(depth), ")".repeat(depth));
        add(format!("calls-{depth}"), wrap(&calls).into_bytes());
        let ifs = format!(
            "let a = {}1.0{}\n    sum(x * a)",
            "if 1 > 0 { ".repeat(depth),
            " } else { 2.0 }".repeat(depth)
        );
        add(format!("ifs-{depth}"), wrap(&ifs).into_bytes());
        let idx = format!("sum(x{})", "[0:]".repeat(depth));
        add(format!("slices-{depth}"), wrap(&idx).into_bytes());
        add(
            format!("unclosed-{depth}"),
            wrap(&format!("sum({}x", "([{".repeat(depth / 3 + 1))).into_bytes(),
        );
        add(
            format!("unopened-{depth}"),
            wrap(&format!("sum(x{})", ")]}".repeat(depth / 3 + 1))).into_bytes(),
        );
    }
    // Long flat expressions.
    for op in ["+", "-", "*", "/", "**", "and", "<", "==", "@"] {
        for terms in [1_000usize, 20_000] {
            let e = vec!["x"; terms].join(&format!(" {op} "));
            add(
                format!("chain-{terms}-{}", op.len()),
                wrap(&format!("sum({e})")).into_bytes(),
            );
        }
    }
    add(
        "neg-20000".into(),
        wrap(&format!("sum({}x)", "-".repeat(20_000))).into_bytes(),
    );
    add(
        "not-20000".into(),
        wrap(&format!("sum(f32({}(x > 0)))", "!".repeat(20_000))).into_bytes(),
    );
    add(
        "args-20000".into(),
        wrap(&format!(
            "sum(x) + max([{}])",
            vec!["1.0"; 20_000].join(", ")
        ))
        .into_bytes(),
    );
    let lets: String = (0..20_000)
        .map(|i| format!("let a{} = a{i} + a{i}\n    ", i + 1))
        .collect();
    add(
        "lets-20000".into(),
        wrap(&format!("let a0 = x\n    {lets}sum(a20000)")).into_bytes(),
    );
    // Helpers whose inlining would be exponential, and helper recursion.
    let fns: String = (1..64)
        .map(|i| format!("fn f{i}(a) {{ f{}(a) + f{}(a) }}\n", i - 1, i - 1))
        .collect();
    add(
        "fn-exponential".into(),
        format!("fn f0(a) {{ a }}\n{fns}{}", wrap("sum(f63(x))")).into_bytes(),
    );
    add(
        "fn-recursive".into(),
        format!(
            "fn f(a) {{ g(a) }}\nfn g(a) {{ f(a) }}\n{}",
            wrap("sum(f(x))")
        )
        .into_bytes(),
    );
    // Huge literals.
    for (k, lit) in [
        "9".repeat(5_000),
        format!("{}.5", "9".repeat(5_000)),
        format!("0.{}1", "0".repeat(5_000)),
        "1e309".into(),
        "1e-400".into(),
        "1e99999999999999999999".into(),
        format!("0x{}", "f".repeat(100)),
        "9223372036854775807".into(),
        "9223372036854775808".into(),
        "-9223372036854775808".into(),
        "1_000_000_000_000_000_000_000".into(),
        "1__2".into(),
        "1e".into(),
        "0x".into(),
        "1.2.3".into(),
        "08".into(),
    ]
    .iter()
    .enumerate()
    {
        add(
            format!("literal-{k}"),
            wrap(&format!("sum(x * {lit})")).into_bytes(),
        );
        add(
            format!("literal-dim-{k}"),
            format!("loss t(x: f32[{lit}] diff) -> f32 {{\n    sum(x)\n}}\n").into_bytes(),
        );
    }
    add(
        "huge-shapes".into(),
        wrap("sum(x) + sum(zeros(1099511627776, 1099511627776)) + sum(eye(4294967296))")
            .into_bytes(),
    );
    add(
        "huge-param".into(),
        format!(
            "loss t(x: f32[N] diff) -> f32 {{\n    param k: i64 = {}\n    sum(x) * k\n}}\n",
            "9".repeat(40)
        )
        .into_bytes(),
    );
    // Unicode: identifiers, text-direction and invisible characters, a BOM.
    for (k, s) in [
        "let été = x\n    sum(été)",
        "let \u{202e}a = x\n    sum(\u{202e}a)",
        "let a = x // \u{202e} } \u{2066} comment with a bidi override\n    sum(a)",
        "let a\u{200d}b = x\n    sum(a\u{200d}b)",
        "let а = x\n    sum(а)",
        "let 🦀 = x\n    sum(🦀)",
        "let e\u{301} = x\n    sum(e\u{301})",
        "sum(x) \u{2066}+ 1.0\u{2069}",
        "sum(x)\u{2028}+ 1.0",
        "sum(x) + \"string\"",
        "sum(x) + 'c'",
        "sum(x)\u{feff}",
    ]
    .iter()
    .enumerate()
    {
        add(format!("unicode-{k}"), wrap(s).into_bytes());
    }
    let mut bom = "\u{feff}".as_bytes().to_vec();
    bom.extend(wrap("sum(x)").into_bytes());
    add("bom-start".into(), bom);
    // NUL bytes, invalid UTF-8, odd line ends, empty and comment-only files.
    let base = wrap("sum(x * 2.0)").into_bytes();
    for (k, at) in [0usize, 5, 20, base.len() - 3, base.len()]
        .iter()
        .enumerate()
    {
        let mut v = base.clone();
        v.insert((*at).min(v.len()), 0);
        add(format!("nul-{k}"), v);
    }
    let mut v = base.clone();
    v.insert(10, 0xff);
    add("invalid-utf8".into(), v);
    let mut v = base.clone();
    v.extend_from_slice(&[0xe2, 0x82]);
    add("utf8-cut".into(), v);
    add(
        "cr-only".into(),
        wrap("let a = x\r    sum(a)")
            .replace('\n', "\r")
            .into_bytes(),
    );
    add("empty".into(), vec![]);
    add(
        "only-comments".into(),
        b"// nothing\n/// doc of nothing\n".to_vec(),
    );
    add("only-blanks".into(), b"\n\n   \t\n".to_vec());
    add(
        "long-comment".into(),
        format!("// {}\n{}", "x".repeat(1 << 20), wrap("sum(x)")).into_bytes(),
    );
    add(
        "many-params".into(),
        format!(
            "loss t(x: f32[N] diff) -> f32 {{\n{}    sum(x)\n}}\n",
            (0..2_000)
                .map(|i| format!("    param p{i}: f32 = {i}.0\n"))
                .collect::<String>()
        )
        .into_bytes(),
    );
    add(
        "use-outside".into(),
        format!(
            "use {}etc::passwd::x;\n{}",
            "super::".repeat(64),
            wrap("sum(x)")
        )
        .into_bytes(),
    );
    add(
        "use-missing-std".into(),
        format!("use std::no_such_module::f;\n{}", wrap("sum(x)")).into_bytes(),
    );
    add(
        "use-self".into(),
        format!("use use-self::f;\n{}", wrap("sum(x)")).into_bytes(),
    );
    // Random token soups after a loss header.
    let mut rng = Lcg(0x7070_7070);
    for k in 0..40 {
        let n = 5 + rng.below(200);
        let mut s = String::from("loss t(x: f32[N] diff, w: f32[N, N]) -> f32 {\n");
        for _ in 0..n {
            s.push_str(TOKENS[rng.below(TOKENS.len())]);
            s.push(' ');
        }
        if k % 2 == 0 {
            s.push_str("\n}\n");
        }
        add(format!("soup-{k}"), s.into_bytes());
    }
    // Random byte mutations of the standard library, two per file.
    let std_files = stdlib_files();
    for (name, bytes) in &std_files {
        for k in 0..2 {
            let mut v = bytes.clone();
            for _ in 0..1 + rng.below(8) {
                let i = rng.below(v.len());
                match rng.below(4) {
                    0 => v[i] = rng.below(256) as u8,
                    1 => v[i] ^= 1 << rng.below(8),
                    2 => {
                        let end = (i + rng.below(40)).min(v.len());
                        v.drain(i..end);
                    }
                    _ => {
                        let tok = TOKENS[rng.below(TOKENS.len())];
                        v.splice(i..i, tok.bytes());
                    }
                }
            }
            add(format!("mutated-{name}-{k}"), v);
        }
    }
    // Every stdlib file cut at every 37th byte.
    for (name, bytes) in &std_files {
        for cut in (37..bytes.len()).step_by(37) {
            add(format!("cut-{name}-{cut}"), bytes[..cut].to_vec());
        }
    }
    out
}

#[test]
fn hostile_programs_end_cleanly() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut files = vec![];
    for (k, (name, bytes)) in corpus().into_iter().enumerate() {
        // The index keeps names unique; the name says what the program is.
        let p = dir.path().join(format!("{k:05}-{name}.loss"));
        std::fs::write(&p, bytes).expect("write program");
        files.push(p);
    }
    // An import cycle between two files next to each other.
    let a = dir.path().join("cycle_a.loss");
    let b = dir.path().join("cycle_b.loss");
    std::fs::write(
        &a,
        format!("use cycle_b::g;\nfn f(v) {{ g(v) }}\n{}", wrap("sum(f(x))")),
    )
    .expect("write");
    std::fs::write(&b, "use cycle_a::f;\nfn g(v) { f(v) }\n").expect("write");
    files.push(a);
    files.push(b);
    // A directory where a file is expected.
    let sub = dir.path().join("a_directory.loss");
    std::fs::create_dir(&sub).expect("mkdir");
    files.push(sub);
    let n = files.len();
    assert!(n >= 200, "only {n} hostile programs");
    let t0 = Instant::now();
    let failures = check_all(files);
    println!("{n} hostile programs checked in {:?}", t0.elapsed());
    assert!(
        failures.is_empty(),
        "{} of {n} hostile programs broke the contract:\n{}",
        failures.len(),
        failures.join("\n")
    );
}

/// The parse_check fuzz target's regressions: every file kept in the folder.
#[test]
fn fuzz_parse_regressions_end_cleanly() {
    let dir = root().join("fuzz").join("regressions").join("parse_check");
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .map(|rd| rd.filter_map(|e| e.ok().map(|e| e.path())).collect())
        .unwrap_or_default();
    files.retain(|p| p.is_file() && p.file_name().is_some_and(|n| n != "README.md"));
    files.sort();
    let n = files.len();
    let failures = check_all(files);
    println!("{n} parse regressions checked");
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

/// A stored differential program: the dims, data mode and seed are in its first
/// comment line, `// fuzz-differential N=3 C=2 M=5 mode=Normal param=0.5 seed=123 smooth=false`.
fn read_regression(path: &Path) -> program_gen::Generated {
    let text = std::fs::read_to_string(path).expect("read regression");
    let first = text.lines().next().unwrap_or("");
    let mut g = program_gen::Generated {
        source: text.clone(),
        dims: Default::default(),
        mode: program_gen::DataMode::Normal,
        param: None,
        smooth: false,
        data_seed: 0,
    };
    for kv in first.split_whitespace().skip(2) {
        let (k, v) = kv.split_once('=').expect("key=value");
        match k {
            "mode" => {
                g.mode = match v {
                    "Extreme" => program_gen::DataMode::Extreme,
                    "Ties" => program_gen::DataMode::Ties,
                    _ => program_gen::DataMode::Normal,
                }
            }
            "param" => g.param = v.parse().ok(),
            "seed" => g.data_seed = v.parse().expect("seed"),
            "smooth" => g.smooth = v == "true",
            dim => {
                g.dims.insert(dim.to_string(), v.parse().expect("dim"));
            }
        }
    }
    g
}

#[test]
fn fuzz_differential_regressions_agree() {
    let dir = root().join("fuzz").join("regressions").join("differential");
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .map(|rd| rd.filter_map(|e| e.ok().map(|e| e.path())).collect())
        .unwrap_or_default();
    files.retain(|p| p.extension().is_some_and(|e| e == "loss"));
    files.sort();
    let mut failures = vec![];
    for f in &files {
        let g = read_regression(f);
        if let Err(e) = program_gen::check_program(&g) {
            failures.push(format!("{}: {e}", f.display()));
        }
    }
    println!("{} differential regressions checked", files.len());
    assert!(failures.is_empty(), "{}", failures.join("\n\n"));
}

/// A fixed slice of the differential fuzzer, so that every test run (and every
/// new backend) goes through it.
#[test]
fn differential_generator_smoke() {
    let mut rng = Lcg(0xD1FF_E4E2);
    let (mut agreed, mut data_errors, mut gradchecked) = (0, 0, 0);
    let mut failures = vec![];
    for _ in 0..300 {
        let n = 16 + rng.below(240);
        let bytes: Vec<u8> = (0..n).map(|_| rng.below(256) as u8).collect();
        match program_gen::differential(&bytes) {
            Ok(program_gen::Outcome::Agreed { gradchecked: g, .. }) => {
                agreed += 1;
                gradchecked += usize::from(g);
            }
            Ok(program_gen::Outcome::DataError) => data_errors += 1,
            Err(e) => failures.push(e.to_string()),
        }
    }
    println!(
        "differential smoke: {agreed} agreed ({gradchecked} finite-difference checked), \
         {data_errors} data errors, {} findings",
        failures.len()
    );
    assert!(failures.is_empty(), "{}", failures.join("\n\n"));
    assert!(agreed >= 200, "only {agreed} generated programs ran");
}
