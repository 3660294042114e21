//! Bad data through the `lossc` binary, on every backend this build contains:
//! each case must end with exit code 1 (2 for a usage error) and a diagnostic
//! on stderr that names the input (or param / state key), the axis and the
//! value; never a panic, a backtrace, a hang, or an allocation of a size the
//! data only claims.
//!
//! Inputs are written with `losslang_runtime::io::write_npy` into a temporary
//! folder. Every run has a watchdog (`TIMEOUT`): a hang is a failure.

use losslang_compiler::backend::Backend;
use losslang_compiler::value::{DType, Tensor};
use losslang_runtime::io::write_npy;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// Longest any single `lossc` run may take.
const TIMEOUT: Duration = Duration::from_secs(30);

fn stdlib(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("..")
        .join("stdlib")
        .join(format!("{name}.loss"))
}

/// The `--backend` values of the backends this build contains.
fn backends() -> Vec<&'static str> {
    [Backend::Interp, Backend::Jit, Backend::Candle]
        .into_iter()
        .filter(|b| losslang_runtime::backends::available(*b))
        .map(|b| b.name())
        .collect()
}

struct Out {
    code: Option<i32>,
    stdout: String,
    /// stderr with miette's line wrapping undone (`│` gutters dropped, blanks collapsed),
    /// so that a message can be matched whatever the terminal width.
    stderr: String,
    raw_stderr: String,
    elapsed: Duration,
}

fn flatten(s: &str) -> String {
    s.replace('│', " ")
        .split_whitespace()
        .collect::<Vec<_>>()
        .join(" ")
}

/// Runs `cmd` with a watchdog that kills it after [`TIMEOUT`].
fn run_cmd(mut cmd: Command) -> Out {
    let t0 = Instant::now();
    let mut child = cmd
        .env("NO_COLOR", "1")
        .env_remove("RUST_BACKTRACE")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn lossc");
    let mut so = child.stdout.take().expect("stdout");
    let mut se = child.stderr.take().expect("stderr");
    let ro = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = so.read_to_string(&mut s);
        s
    });
    let re = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = se.read_to_string(&mut s);
        s
    });
    let status = loop {
        if let Some(st) = child.try_wait().expect("wait") {
            break Some(st);
        }
        if t0.elapsed() > TIMEOUT {
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(Duration::from_millis(5));
    };
    let stdout = ro.join().expect("stdout reader");
    let raw = re.join().expect("stderr reader");
    assert!(status.is_some(), "lossc ran past {TIMEOUT:?}: {cmd:?}");
    Out {
        code: status.and_then(|s| s.code()),
        stdout,
        stderr: flatten(&raw),
        raw_stderr: raw,
        elapsed: t0.elapsed(),
    }
}

fn lossc(args: &[&str]) -> Out {
    let mut c = Command::new(env!("CARGO_BIN_EXE_lossc"));
    c.args(args);
    run_cmd(c)
}

/// `lossc` under `ulimit -v` (KiB of address space): an allocation of a claimed size
/// fails (and aborts the process) instead of succeeding lazily.
fn lossc_limited(kib: u64, args: &[&str]) -> Out {
    let mut c = Command::new("sh");
    c.arg("-c")
        .arg(format!("ulimit -v {kib} && exec \"$0\" \"$@\""))
        .arg(env!("CARGO_BIN_EXE_lossc"))
        .args(args);
    run_cmd(c)
}

/// The failure contract: this exit code, every substring in the (unwrapped) stderr,
/// and no sign of a panic.
#[track_caller]
fn expect(out: &Out, code: i32, needles: &[&str]) {
    assert_eq!(
        out.code,
        Some(code),
        "expected exit {code}, got {:?}\nstderr:\n{}\nstdout:\n{}",
        out.code,
        out.raw_stderr,
        out.stdout
    );
    for n in needles {
        assert!(
            out.stderr.contains(n),
            "stderr lacks {n:?}:\n{}",
            out.raw_stderr
        );
    }
    no_panic(out);
}

#[track_caller]
fn no_panic(out: &Out) {
    for bad in [
        "panicked",
        "internal error",
        "RUST_BACKTRACE",
        "stack backtrace",
    ] {
        assert!(
            !out.raw_stderr.contains(bad),
            "stderr shows {bad:?}:\n{}",
            out.raw_stderr
        );
    }
}

struct Dir {
    dir: tempfile::TempDir,
}

impl Dir {
    fn new() -> Dir {
        Dir {
            dir: tempfile::tempdir().expect("tempdir"),
        }
    }

    fn path(&self, name: &str) -> String {
        self.dir.path().join(name).display().to_string()
    }

    fn npy(&self, name: &str, t: &Tensor) -> String {
        let p = self.path(name);
        write_npy(Path::new(&p), t).expect("write_npy");
        p
    }

    fn file(&self, name: &str, bytes: &[u8]) -> String {
        let p = self.path(name);
        std::fs::write(&p, bytes).expect("write");
        p
    }
}

fn f32s(shape: &[usize], f: impl Fn(usize) -> f64) -> Tensor {
    let n: usize = shape.iter().product();
    Tensor::from_f64(
        DType::F32,
        shape.to_vec(),
        (0..n).map(|i| f64::from(f(i) as f32)).collect(),
    )
}

fn i64s(v: &[i64]) -> Tensor {
    Tensor::from_i64(vec![v.len()], v.to_vec())
}

/// logits [4, 3], target [4], weight [3] for cross_entropy; the same logits and target
/// for focal.
fn classification(d: &Dir) -> (String, String, String) {
    let logits = d.npy("logits.npy", &f32s(&[4, 3], |i| (i as f64 * 0.37).sin()));
    let target = d.npy("target.npy", &i64s(&[0, 1, 2, 1]));
    let weight = d.npy("weight.npy", &f32s(&[3], |_| 1.0));
    (logits, target, weight)
}

fn arg(name: &str, path: &str) -> String {
    format!("{name}={path}")
}

/// `run FILE --backend B --input ...` plus `extra`.
fn run_ce(b: &str, inputs: &[(&str, &str)], extra: &[&str]) -> Out {
    run_loss("cross_entropy", b, inputs, extra)
}

fn run_loss(loss: &str, b: &str, inputs: &[(&str, &str)], extra: &[&str]) -> Out {
    let file = stdlib(loss).display().to_string();
    let mut args: Vec<String> = vec!["run".into(), file, "--backend".into(), b.into()];
    for (n, p) in inputs {
        args.push("--input".into());
        args.push(arg(n, p));
    }
    args.extend(extra.iter().map(|s| s.to_string()));
    let refs: Vec<&str> = args.iter().map(String::as_str).collect();
    lossc(&refs)
}

#[test]
fn missing_and_unknown_inputs() {
    let d = Dir::new();
    let (logits, target, weight) = classification(&d);
    for b in backends() {
        let out = run_ce(b, &[("logits", &logits), ("weight", &weight)], &[]);
        expect(&out, 1, &["missing input `target`", "i64[N]"]);
        let out = run_ce(
            b,
            &[
                ("logits", &logits),
                ("target", &target),
                ("weight", &weight),
                ("labels", &target),
            ],
            &[],
        );
        expect(
            &out,
            1,
            &["unknown input `labels`", "logits, target, weight"],
        );
        // An --inputs folder that lacks a declared input.
        let only = Dir::new();
        only.npy("logits.npy", &f32s(&[4, 3], |i| i as f64));
        let file = stdlib("cross_entropy").display().to_string();
        let dir = only.dir.path().display().to_string();
        let out = lossc(&["run", &file, "--backend", b, "--inputs", &dir]);
        expect(&out, 1, &["missing input `target`"]);
        // A folder that does not exist.
        let out = lossc(&["run", &file, "--backend", b, "--inputs", &d.path("nowhere")]);
        expect(&out, 1, &["nowhere", "not a folder"]);
        // An input file that does not exist.
        let out = run_ce(
            b,
            &[
                ("logits", &d.path("absent.npy")),
                ("target", &target),
                ("weight", &weight),
            ],
            &[],
        );
        expect(&out, 1, &["absent.npy"]);
    }
}

#[test]
fn wrong_dtype_and_rank() {
    let d = Dir::new();
    let (logits, target, weight) = classification(&d);
    let target_f = d.npy("target_f.npy", &f32s(&[4], |i| i as f64 % 3.0));
    let logits_f64 = d.npy(
        "logits64.npy",
        &Tensor::from_f64(DType::F64, vec![4, 3], vec![0.5; 12]),
    );
    let target_2d = d.npy(
        "target2d.npy",
        &Tensor::from_i64(vec![4, 1], vec![0, 1, 2, 1]),
    );
    let logits_1d = d.npy("logits1d.npy", &f32s(&[12], |_| 0.0));
    let labeled_i = d.npy("labeled.npy", &i64s(&[1, 0, 1, 0]));
    let boundary = d.npy(
        "boundary.npy",
        &Tensor::from_bool(vec![4], vec![true, false, false, true]),
    );
    for b in backends() {
        let out = run_ce(
            b,
            &[
                ("logits", &logits),
                ("target", &target_f),
                ("weight", &weight),
            ],
            &[],
        );
        expect(&out, 1, &["input `target` is f32", "i64[N]", "np.int64"]);
        let out = run_ce(
            b,
            &[
                ("logits", &logits_f64),
                ("target", &target),
                ("weight", &weight),
            ],
            &[],
        );
        expect(&out, 1, &["input `logits` is f64", "f32[N, C]"]);
        let out = run_loss(
            "cw_bass",
            b,
            &[
                ("logits", &logits),
                ("target", &target),
                ("labeled", &labeled_i),
                ("boundary", &boundary),
            ],
            &[],
        );
        expect(&out, 1, &["input `labeled` is i64", "bool[N]"]);
        let out = run_ce(
            b,
            &[
                ("logits", &logits),
                ("target", &target_2d),
                ("weight", &weight),
            ],
            &[],
        );
        expect(
            &out,
            1,
            &["input `target` has rank 2", "shape [4, 1]", "i64[N]"],
        );
        let out = run_ce(
            b,
            &[
                ("logits", &logits_1d),
                ("target", &target),
                ("weight", &weight),
            ],
            &[],
        );
        expect(&out, 1, &["input `logits` has rank 1", "[12]"]);
    }
}

#[test]
fn dim_clash_between_inputs() {
    let d = Dir::new();
    let (logits, target, weight) = classification(&d);
    let target5 = d.npy("target5.npy", &i64s(&[0, 1, 2, 1, 0]));
    let weight4 = d.npy("weight4.npy", &f32s(&[4], |_| 1.0));
    for b in backends() {
        let out = run_ce(
            b,
            &[
                ("logits", &logits),
                ("target", &target5),
                ("weight", &weight),
            ],
            &[],
        );
        expect(
            &out,
            1,
            &[
                "input `target` axis 0 has size 5",
                "N = 4",
                "`logits` axis 0",
            ],
        );
        let out = run_ce(
            b,
            &[
                ("logits", &logits),
                ("target", &target),
                ("weight", &weight4),
            ],
            &[],
        );
        expect(
            &out,
            1,
            &[
                "input `weight` axis 0 has size 4",
                "C = 3",
                "`logits` axis 1",
            ],
        );
        // A size given with --dims that the data contradicts.
        let out = run_ce(
            b,
            &[
                ("logits", &logits),
                ("target", &target),
                ("weight", &weight),
            ],
            &["--dims", "N=7"],
        );
        expect(
            &out,
            1,
            &["input `logits` axis 0 has size 4", "N = 7", "--dims"],
        );
    }
}

#[test]
fn labels_out_of_range() {
    let d = Dir::new();
    let (logits, _, weight) = classification(&d);
    // (label vector, the offending value, its position)
    let cases: [(&[i64], &str, &str); 3] = [
        (&[0, 1, 3, 1], "index 3 ", "target[2]"),
        (&[0, 1 << 40, 1, 1], "index 1099511627776 ", "target[1]"),
        (&[0, -5, 1, 1], "index -5 ", "target[1]"),
    ];
    for b in backends() {
        for (k, (labels, value, at)) in cases.iter().enumerate() {
            let t = d.npy(&format!("bad{k}.npy"), &i64s(labels));
            let out = run_ce(
                b,
                &[("logits", &logits), ("target", &t), ("weight", &weight)],
                &["--grad"],
            );
            expect(&out, 1, &[value, "out of range", "C=3", at]);
            let out = run_loss("focal", b, &[("logits", &logits), ("target", &t)], &[]);
            expect(&out, 1, &[value, "out of range", "C=3", at]);
        }
        // The ignore index (cross_entropy) and the background label -1 (focal) are fine...
        let ok = d.npy("ignored.npy", &i64s(&[0, -100, 2, -100]));
        let out = run_ce(
            b,
            &[("logits", &logits), ("target", &ok), ("weight", &weight)],
            &["--grad", "--check-finite"],
        );
        expect(&out, 0, &[]);
        let bg = d.npy("background.npy", &i64s(&[0, -1, 2, -1]));
        let out = run_loss(
            "focal",
            b,
            &[("logits", &logits), ("target", &bg)],
            &["--grad", "--check-finite"],
        );
        expect(&out, 0, &[]);
        // ...but -100 is out of range once the ignore index is something else.
        let out = run_ce(
            b,
            &[("logits", &logits), ("target", &ok), ("weight", &weight)],
            &["--param", "ignore_index=255"],
        );
        expect(&out, 1, &["index -100 ", "out of range", "target[1]"]);
    }
}

#[test]
fn empty_batch_follows_the_empty_rule() {
    let d = Dir::new();
    let logits = d.npy("logits0.npy", &f32s(&[0, 3], |_| 0.0));
    let target = d.npy("target0.npy", &i64s(&[]));
    let weight = d.npy("weight.npy", &f32s(&[3], |_| 1.0));
    let bool0 = d.npy("mask0.npy", &Tensor::from_bool(vec![0], vec![]));
    for b in backends() {
        let gdir = d.path(&format!("grads-{b}"));
        // cross_entropy: safe_div over no sample is 0 (loss and gradient).
        let out = run_ce(
            b,
            &[
                ("logits", &logits),
                ("target", &target),
                ("weight", &weight),
            ],
            &["--json", "--check-finite", "--grad-out", &gdir],
        );
        expect(&out, 0, &[]);
        let v: serde_json::Value = serde_json::from_str(out.stdout.trim()).expect("json line");
        assert_eq!(v["loss"].as_f64(), Some(0.0), "{b}: {}", out.stdout);
        let g = losslang_runtime::io::read_npy(&Path::new(&gdir).join("logits.npy"), "g")
            .expect("gradient file");
        assert_eq!(g.shape, vec![0, 3]);
        // focal with RetinaNet normalisation: sum / max(1, #foreground) = 0.
        let out = run_loss(
            "focal",
            b,
            &[("logits", &logits), ("target", &target)],
            &[
                "--json",
                "--check-finite",
                "--grad",
                "--param",
                "reduction=1",
            ],
        );
        expect(&out, 0, &[]);
        let v: serde_json::Value = serde_json::from_str(out.stdout.trim()).expect("json line");
        assert_eq!(v["loss"].as_f64(), Some(0.0), "{b}: {}", out.stdout);
        // cw_bass: every term is a safe_div over an empty set; the EMA stays where it was.
        let out = run_loss(
            "cw_bass",
            b,
            &[
                ("logits", &logits),
                ("target", &target),
                ("labeled", &bool0),
                ("boundary", &bool0),
            ],
            &["--json", "--check-finite", "--grad"],
        );
        expect(&out, 0, &[]);
        let v: serde_json::Value = serde_json::from_str(out.stdout.trim()).expect("json line");
        assert_eq!(v["loss"].as_f64(), Some(0.0), "{b}: {}", out.stdout);
        assert_eq!(v["state"]["conf_ema"].as_f64(), Some(0.5), "{b}");
        assert_eq!(v["state"]["step"].as_i64(), Some(1), "{b}");
    }
}

#[test]
fn non_finite_values_with_check_finite() {
    let d = Dir::new();
    let (_, target, weight) = classification(&d);
    let nan = d.npy(
        "nan.npy",
        &f32s(&[4, 3], |i| if i == 7 { f64::NAN } else { 0.1 * i as f64 }),
    );
    let inf = d.npy(
        "inf.npy",
        &f32s(&[4, 3], |i| if i == 2 { f64::NEG_INFINITY } else { 0.0 }),
    );
    let wnan = d.npy(
        "wnan.npy",
        &f32s(&[3], |i| if i == 1 { f64::INFINITY } else { 1.0 }),
    );
    let logits = d.npy("logits.npy", &f32s(&[4, 3], |i| 0.1 * i as f64));
    for b in backends() {
        let out = run_ce(
            b,
            &[("logits", &nan), ("target", &target), ("weight", &weight)],
            &["--check-finite"],
        );
        expect(
            &out,
            1,
            &["input `logits` is NaN at [2, 1]", "--check-finite"],
        );
        let out = run_ce(
            b,
            &[("logits", &inf), ("target", &target), ("weight", &weight)],
            &["--check-finite"],
        );
        expect(&out, 1, &["input `logits` is -inf at [0, 2]"]);
        let out = run_ce(
            b,
            &[("logits", &logits), ("target", &target), ("weight", &wnan)],
            &["--check-finite"],
        );
        expect(&out, 1, &["input `weight` is inf at [1]"]);
        // A NaN param never reaches the loss: it is outside every domain.
        let out = run_ce(
            b,
            &[
                ("logits", &logits),
                ("target", &target),
                ("weight", &weight),
            ],
            &["--check-finite", "--param", "label_smoothing=nan"],
        );
        expect(
            &out,
            1,
            &[
                "L6115",
                "param `label_smoothing` = NaN is outside its domain [0, 1]",
            ],
        );
        // Without the flag a NaN input is computed through, not rejected.
        let out = run_ce(
            b,
            &[("logits", &nan), ("target", &target), ("weight", &weight)],
            &["--json"],
        );
        expect(&out, 0, &[]);
        assert!(out.stdout.contains("\"nan\""), "{b}: {}", out.stdout);
    }
}

/// The bytes of a valid `.npy` file.
fn npy_bytes(t: &Tensor) -> Vec<u8> {
    let d = Dir::new();
    let p = d.npy("x.npy", t);
    std::fs::read(p).expect("read back")
}

/// A version 1.0 `.npy` header for `descr` and `shape`, padded as numpy pads it.
fn npy_header(descr: &str, shape: &str) -> Vec<u8> {
    let mut h = format!("{{'descr': '{descr}', 'fortran_order': False, 'shape': {shape}, }}");
    while (10 + h.len() + 1) % 64 != 0 {
        h.push(' ');
    }
    h.push('\n');
    let mut out = b"\x93NUMPY\x01\x00".to_vec();
    out.extend_from_slice(&(h.len() as u16).to_le_bytes());
    out.extend_from_slice(h.as_bytes());
    out
}

#[test]
fn broken_npy_files() {
    let d = Dir::new();
    let (_, target, weight) = classification(&d);
    let good = npy_bytes(&f32s(&[4, 3], |i| i as f64));
    let truncated = d.file("truncated.npy", &good[..good.len() - 7]);
    let header_cut = d.file("header_cut.npy", &good[..30]);
    let magic_only = d.file("magic_only.npy", b"\x93NUMPY");
    let empty = d.file("empty.npy", b"");
    let text = d.file("text.npy", b"logits,1,2,3\n4,5,6\n");
    let zip = d.file("zip.npy", b"PK\x03\x04 this is a zip archive, not an array");
    let mut tera = npy_header("<f4", "(1000000, 250000)");
    tera.extend_from_slice(&[0u8; 64]);
    let tera = d.file("tera.npy", &tera);
    // 2^62 elements: the byte count itself overflows 64 bits.
    let mut overflow = npy_header("<f8", "(4611686018427387904, 8)");
    overflow.extend_from_slice(&[0u8; 16]);
    let overflow = d.file("overflow.npy", &overflow);
    let mut strings = npy_header("<U8", "(4, 3)");
    strings.extend_from_slice(&[0u8; 4 * 3 * 32]);
    let strings = d.file("strings.npy", &strings);
    let mut garbage = npy_header("<f4", "(4, 3)");
    let n = garbage.len();
    garbage[n - 20..n - 1].copy_from_slice(b"@@@@@@@@@@@@@@@@@@@");
    garbage.extend_from_slice(&[0u8; 48]);
    let garbage = d.file("garbage_header.npy", &garbage);
    let ws = [("target", target.as_str()), ("weight", weight.as_str())];
    let with = |logits: &str| -> Vec<(&str, String)> {
        vec![
            ("logits", logits.to_string()),
            (ws[0].0, ws[0].1.to_string()),
            (ws[1].0, ws[1].1.to_string()),
        ]
    };
    for b in backends() {
        let go = |p: &str| {
            let inputs = with(p);
            let refs: Vec<(&str, &str)> = inputs.iter().map(|(n, p)| (*n, p.as_str())).collect();
            run_ce(b, &refs, &[])
        };
        expect(
            &go(&truncated),
            1,
            &[
                "input `logits`",
                "shape [4, 3]",
                "48 bytes",
                "41 bytes",
                "truncated",
            ],
        );
        expect(&go(&header_cut), 1, &["input `logits`"]);
        expect(&go(&magic_only), 1, &["input `logits`"]);
        expect(&go(&empty), 1, &["input `logits`"]);
        expect(&go(&text), 1, &["input `logits`", "not a .npy file"]);
        expect(&go(&zip), 1, &["input `logits`", "not a .npy file"]);
        expect(
            &go(&strings),
            1,
            &["input `logits`", "unsupported dtype `<U8`"],
        );
        expect(&go(&garbage), 1, &["input `logits`", "header"]);
        // The claimed terabyte is never allocated: under a 1 GiB address-space limit
        // the run still ends with a clear error, and fast.
        let inputs = with(&tera);
        let mut args: Vec<String> = vec![
            "run".into(),
            stdlib("cross_entropy").display().to_string(),
            "--backend".into(),
            b.into(),
        ];
        for (n, p) in &inputs {
            args.push("--input".into());
            args.push(arg(n, p));
        }
        let refs: Vec<&str> = args.iter().map(String::as_str).collect();
        let out = lossc_limited(4 << 20, &refs);
        expect(
            &out,
            1,
            &["input `logits`", "[1000000, 250000]", "1.0 TB", "64 bytes"],
        );
        assert!(
            out.elapsed < Duration::from_secs(10),
            "the terabyte header took {:?}",
            out.elapsed
        );
        // Under a 1 GiB limit the compiler thread's 1 GiB stack cannot be reserved;
        // lossc falls back to a smaller one instead of failing to start.
        if b == "interp" {
            let out = lossc_limited(1 << 20, &refs);
            expect(&out, 1, &["input `logits`", "1.0 TB"]);
        }
        expect(&go(&overflow), 1, &["input `logits`"]);
    }
}

#[test]
fn bad_params() {
    let d = Dir::new();
    let (logits, target, weight) = classification(&d);
    let ins = [
        ("logits", logits.as_str()),
        ("target", target.as_str()),
        ("weight", weight.as_str()),
    ];
    let params_unknown = d.file("p1.json", br#"{"label_smoothing": 0.1, "temperature": 2}"#);
    let params_string = d.file("p2.json", br#"{"label_smoothing": "lots"}"#);
    let params_broken = d.file("p3.json", br#"{"label_smoothing": 0.1"#);
    let params_list = d.file("p4.json", br#"{"label_smoothing": [0.1]}"#);
    for b in backends() {
        expect(
            &run_ce(b, &ins, &["--param", "temperature=2"]),
            1,
            &[
                "unknown param `temperature`",
                "ignore_index, label_smoothing",
            ],
        );
        expect(
            &run_ce(b, &ins, &["--param", "label_smoothing=abc"]),
            1,
            &["param `label_smoothing`", "`abc` is not a number"],
        );
        expect(
            &run_ce(b, &ins, &["--param", "ignore_index=0.5"]),
            1,
            &["param `ignore_index` is i64", "0.5"],
        );
        expect(
            &run_ce(b, &ins, &["--param", "label_smoothing="]),
            1,
            &["param `label_smoothing`", "no value"],
        );
        expect(
            &run_ce(b, &ins, &["--param", "label_smoothing"]),
            1,
            &["`label_smoothing` is not of the form NAME=VALUE"],
        );
        expect(
            &run_ce(b, &ins, &["--params", &params_unknown]),
            1,
            &["unknown param `temperature`"],
        );
        expect(
            &run_ce(b, &ins, &["--params", &params_string]),
            1,
            &["param `label_smoothing`", "\"lots\" is not a number"],
        );
        expect(
            &run_ce(b, &ins, &["--params", &params_broken]),
            1,
            &["p3.json", "invalid JSON"],
        );
        expect(
            &run_ce(b, &ins, &["--params", &params_list]),
            1,
            &["param `label_smoothing`", "a list"],
        );
        expect(
            &run_ce(b, &ins, &["--params", &d.path("none.json")]),
            1,
            &["none.json"],
        );
    }
}

/// aldr_kl inputs: logits [4, 3], target [4], ids [4] (distinct, below 8).
fn aldr_inputs(d: &Dir, ids: &[i64]) -> Vec<(&'static str, String)> {
    vec![
        (
            "logits",
            d.npy("a_logits.npy", &f32s(&[4, 3], |i| (i as f64 * 0.7).cos())),
        ),
        ("target", d.npy("a_target.npy", &i64s(&[0, 2, 1, 1]))),
        ("ids", d.npy(&format!("ids{ids:?}.npy"), &i64s(ids))),
    ]
}

fn run_aldr(b: &str, inputs: &[(&str, String)], extra: &[&str]) -> Out {
    let refs: Vec<(&str, &str)> = inputs.iter().map(|(n, p)| (*n, p.as_str())).collect();
    run_loss("aldr_kl", b, &refs, extra)
}

#[test]
fn bad_state_files() {
    let d = Dir::new();
    let ins = aldr_inputs(&d, &[0, 3, 2, 5]);
    let unknown = d.file(
        "unknown.json",
        br#"{"lambdas": [10, 10, 10, 10, 10, 10, 10, 10], "lambda": 3}"#,
    );
    let shape = d.file("shape.json", br#"{"lambdas": [[1.0, 2.0], [3.0, 4.0]]}"#);
    let short = d.file("short.json", br#"{"lambdas": [10.0, 10.0, 10.0]}"#);
    let broken = d.file("broken.json", br#"{"lambdas": [10.0, 10.0,"#);
    let ragged = d.file("ragged.json", br#"{"lambdas": [10.0, [1.0], 10.0]}"#);
    let text = d.file("text.json", br#"{"lambdas": "ten"}"#);
    let not_object = d.file("list.json", br#"[10.0, 10.0]"#);
    let step_frac = d.file("step.json", br#"{"step": 1.5}"#);
    let cw = [
        (
            "logits",
            d.npy("c_logits.npy", &f32s(&[4, 3], |i| i as f64 * 0.1)),
        ),
        ("target", d.npy("c_target.npy", &i64s(&[0, 1, 255, 2]))),
        (
            "labeled",
            d.npy(
                "c_labeled.npy",
                &Tensor::from_bool(vec![4], vec![true, false, true, false]),
            ),
        ),
        (
            "boundary",
            d.npy(
                "c_boundary.npy",
                &Tensor::from_bool(vec![4], vec![false; 4]),
            ),
        ),
    ];
    let cw_refs: Vec<(&str, &str)> = cw.iter().map(|(n, p)| (*n, p.as_str())).collect();
    for b in backends() {
        expect(
            &run_aldr(b, &ins, &["--dims", "M=8", "--state", &unknown]),
            1,
            &["unknown key `lambda`", "lambdas"],
        );
        expect(
            &run_aldr(b, &ins, &["--dims", "M=8", "--state", &shape]),
            1,
            &["state `lambdas` has shape [2, 2]", "f32[M]"],
        );
        expect(
            &run_aldr(b, &ins, &["--dims", "M=8", "--state", &short]),
            1,
            &["state `lambdas` axis 0 has size 3", "M = 8", "--dims"],
        );
        expect(
            &run_aldr(b, &ins, &["--dims", "M=8", "--state", &broken]),
            1,
            &["broken.json", "invalid JSON at line 1"],
        );
        expect(
            &run_aldr(b, &ins, &["--dims", "M=8", "--state", &ragged]),
            1,
            &["state `lambdas`", "ragged"],
        );
        expect(
            &run_aldr(b, &ins, &["--dims", "M=8", "--state", &text]),
            1,
            &["state `lambdas`", "\"ten\""],
        );
        expect(
            &run_aldr(b, &ins, &["--dims", "M=8", "--state", &not_object]),
            1,
            &["list.json", "expected a JSON object"],
        );
        expect(
            &run_aldr(b, &ins, &["--dims", "M=8", "--state", &d.path("none.json")]),
            1,
            &["none.json"],
        );
        expect(
            &run_loss("cw_bass", b, &cw_refs, &["--state", &step_frac]),
            1,
            &["state `step` is i64", "1.5", "not an integer"],
        );
        // Without a state file or --dims, nothing binds M.
        expect(
            &run_aldr(b, &ins, &[]),
            1,
            &["the size `M` is not bound", "--dims M="],
        );
    }
}

#[test]
fn state_table_ids() {
    let d = Dir::new();
    let dup = aldr_inputs(&d, &[0, 3, 3, 1]);
    let big = aldr_inputs(&d, &[0, 3, 8, 1]);
    let neg = aldr_inputs(&d, &[0, -2, 4, 1]);
    let ok = aldr_inputs(&d, &[0, 3, 2, 1]);
    for b in backends() {
        expect(
            &run_aldr(b, &dup, &["--dims", "M=8", "--grad"]),
            1,
            &["id 3 appears twice", "ids[2]", "lambdas[ids] <- lam"],
        );
        expect(
            &run_aldr(b, &big, &["--dims", "M=8"]),
            1,
            &["index 8 ", "out of range", "M=8", "ids[2]"],
        );
        expect(
            &run_aldr(b, &neg, &["--dims", "M=8"]),
            1,
            &["index -2 ", "out of range", "ids[1]"],
        );
        // A state table whose claimed size cannot exist: refused before any allocation.
        let ins: Vec<(&str, String)> = ok.clone();
        let mut args: Vec<String> = vec![
            "run".into(),
            stdlib("aldr_kl").display().to_string(),
            "--backend".into(),
            b.into(),
            "--dims".into(),
            "M=1099511627776".into(),
        ];
        for (n, p) in &ins {
            args.push("--input".into());
            args.push(arg(n, p));
        }
        let refs: Vec<&str> = args.iter().map(String::as_str).collect();
        let out = lossc_limited(4 << 20, &refs);
        expect(
            &out,
            1,
            &[
                "state `lambdas`",
                "1099511627776 elements",
                "M = 1099511627776",
                "--dims",
            ],
        );
        assert!(out.elapsed < Duration::from_secs(10), "{:?}", out.elapsed);
    }
}

#[test]
fn bench_on_a_candle_device_names_it() {
    let file = stdlib("cross_entropy").display().to_string();
    let out = lossc(&[
        "bench",
        &file,
        "--dims",
        "N=4,C=3",
        "--backend",
        "candle",
        "--device",
        "cpu",
        "--iters",
        "1",
        "--json",
    ]);
    expect(&out, 0, &[]);
    let v: serde_json::Value = serde_json::from_str(out.stdout.trim()).expect("one JSON object");
    assert_eq!(v["backend"], "candle");
    assert_eq!(v["device"], "cpu");
}

#[test]
fn usage_errors_exit_2() {
    let file = stdlib("cross_entropy").display().to_string();
    let cases: &[&[&str]] = &[
        &["run", &file, "--inputx", "d"],
        &["run", &file, "--steps", "-1"],
        &["run", &file, "--steps", "many"],
        &["run", &file, "--random", "N=4,C=3", "--steps", "0"],
        &["run", &file, "--random", "N4,C=3"],
        &["run", &file, "--random", "N=-4,C=3"],
        &["run", &file, "--random", "N=4,C=3", "--dims", "M=x"],
        &["run", &file, "--input", "logits"],
        &["run", &file, "--random", "N=4,C=3", "--backend", "gpu"],
        &[
            "run",
            &file,
            "--random",
            "N=4,C=3",
            "--backend",
            "interp",
            "--device",
            "cuda",
        ],
        &[
            "bench",
            &file,
            "--dims",
            "N=4,C=3",
            "--backend",
            "jit",
            "--device",
            "cuda",
        ],
        &[
            "bench",
            &file,
            "--dims",
            "N=4,C=3",
            "--backend",
            "all",
            "--device",
            "cuda",
        ],
        &["run"],
        &["frobnicate", &file],
        &["emit", &file, "--stage", "bytecode"],
    ];
    for args in cases {
        let out = lossc(args);
        expect(&out, 2, &[]);
        assert!(!out.raw_stderr.trim().is_empty(), "no message for {args:?}");
    }
}

#[test]
fn bad_data_never_panics_on_random_bytes() {
    // Deterministic LCG garbage as .npy files, each after a valid magic and a
    // (mutated) valid header: whatever the reader finds, it reports.
    let d = Dir::new();
    let (_, target, weight) = classification(&d);
    let good = npy_bytes(&f32s(&[4, 3], |i| i as f64));
    let mut s: u64 = 0x2545_F491_4F6C_DD1D;
    let mut next = || {
        s = s
            .wrapping_mul(6_364_136_223_846_793_005)
            .wrapping_add(1_442_695_040_888_963_407);
        (s >> 33) as usize
    };
    let b = backends()[0];
    for k in 0..24 {
        let mut bytes = good.clone();
        for _ in 0..1 + next() % 6 {
            let i = next() % bytes.len();
            bytes[i] = (next() % 256) as u8;
        }
        if k % 3 == 0 {
            let cut = next() % bytes.len();
            bytes.truncate(cut);
        }
        let p = d.file(&format!("garbage{k}.npy"), &bytes);
        let out = run_ce(
            b,
            &[("logits", &p), ("target", &target), ("weight", &weight)],
            &[],
        );
        assert!(
            matches!(out.code, Some(0 | 1)),
            "exit {:?} for garbage {k}: {}",
            out.code,
            out.raw_stderr
        );
        no_panic(&out);
        if out.code == Some(1) {
            assert!(
                out.stderr.contains("logits"),
                "the error does not name the input: {}",
                out.raw_stderr
            );
        }
    }
}
