//! State that survives a crash, and state that round-trips exactly.
//!
//! - `--save-state` writes a temporary file and renames it over the target
//!   (`state_file::write_json_atomic`): a `lossc` killed at any moment leaves the
//!   old state file or the complete new one, never a torn one. Tested by killing
//!   runs with a large state table at spread-out times, including while the file
//!   is being written (the writer is shared by every backend, so this runs on the
//!   interpreter).
//! - A state saved, loaded and saved again is byte-identical; f32 values survive
//!   bit for bit (also NaN and ±inf, written as strings).
//! - `--steps K` then `--steps K` resumed from the saved state equals one
//!   `--steps 2K` run — the final JSON line and the state file — for `cw_bass`,
//!   `aldr_kl` and `dynamic_reweight`, on every backend this build contains.

use losslang_compiler::backend::{Backend, Interp};
use losslang_compiler::program::{Call, CompileOptions, Program, compile};
use losslang_compiler::sema::Source;
use losslang_compiler::value::{DType, Tensor};
use losslang_runtime::loader::FileLoader;
use losslang_runtime::state_file::{parse_state_json, state_to_json, write_json_atomic};
use std::collections::BTreeMap;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

fn stdlib(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("..")
        .join("stdlib")
        .join(format!("{name}.loss"))
}

fn backends() -> Vec<&'static str> {
    [Backend::Interp, Backend::Jit, Backend::Candle]
        .into_iter()
        .filter(|b| losslang_runtime::backends::available(*b))
        .map(|b| b.name())
        .collect()
}

/// Runs `lossc` to completion (at most two minutes); returns (exit code, stdout, stderr).
fn lossc(args: &[&str]) -> (Option<i32>, String, String) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_lossc"))
        .args(args)
        .env("NO_COLOR", "1")
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
    let t0 = Instant::now();
    let status = loop {
        if let Some(s) = child.try_wait().expect("wait") {
            break s;
        }
        if t0.elapsed() > Duration::from_secs(120) {
            let _ = child.kill();
            panic!("lossc {args:?} ran past two minutes");
        }
        std::thread::sleep(Duration::from_millis(5));
    };
    (
        status.code(),
        ro.join().expect("stdout"),
        re.join().expect("stderr"),
    )
}

#[track_caller]
fn ok(args: &[&str]) -> String {
    let (code, out, err) = lossc(args);
    assert_eq!(code, Some(0), "lossc {args:?} failed:\n{err}");
    out
}

/// What a state file holds after a kill: the old bytes, or a complete state with
/// `m` lambdas.
fn classify(bytes: &[u8], old: &[u8], m: usize) -> Result<&'static str, String> {
    if bytes == old {
        return Ok("old");
    }
    let text = std::str::from_utf8(bytes).map_err(|e| format!("not UTF-8: {e}"))?;
    let state = parse_state_json(text, "s.json").map_err(|e| format!("torn: {e}"))?;
    let l = state.get("lambdas").ok_or("no `lambdas` key")?;
    if l.shape != [m] || l.values.iter().any(|v| !v.is_finite()) {
        return Err(format!("lambdas of shape {:?}", l.shape));
    }
    Ok("new")
}

#[test]
fn killed_runs_leave_the_old_state_or_the_new_one() {
    let dir = tempfile::tempdir().expect("tempdir");
    let s = dir.path().join("s.json");
    let s_arg = s.display().to_string();
    let file = stdlib("aldr_kl").display().to_string();
    // A state table of 400k entries: several megabytes of JSON to write.
    let m = 400_000;
    let dims = format!("N=4096,C=8,M={m}");
    let base = [
        "run",
        file.as_str(),
        "--backend",
        "interp",
        "--random",
        dims.as_str(),
    ];
    let mut first: Vec<&str> = base.to_vec();
    first.extend(["--save-state", s_arg.as_str()]);
    ok(&first);
    assert_eq!(
        classify(&std::fs::read(&s).expect("first state"), &[], m),
        Ok("new")
    );
    // One whole resumed run, timed: read the state, compute, write the state.
    let mut resumed: Vec<&str> = base.to_vec();
    resumed.extend(["--state", s_arg.as_str(), "--save-state", s_arg.as_str()]);
    let t0 = Instant::now();
    ok(&resumed);
    let full = t0.elapsed();
    let mut old = std::fs::read(&s).expect("second state");
    assert_eq!(classify(&old, &[], m), Ok("new"));
    // Each run resumes from the file and saves over it; kill times spread from the
    // start to past the end of a whole run (in which the write is the last part).
    let (mut olds, mut news) = (0, 0);
    for k in 0..14u32 {
        let seed = k.to_string();
        let mut args: Vec<&str> = base.to_vec();
        args.extend([
            "--state",
            s_arg.as_str(),
            "--save-state",
            s_arg.as_str(),
            "--seed",
            seed.as_str(),
        ]);
        // Two of the runs are the long kind: 100000 steps, killed mid-computation.
        if k % 7 == 6 {
            args.extend(["--steps", "100000"]);
        }
        let mut child = Command::new(env!("CARGO_BIN_EXE_lossc"))
            .args(&args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn");
        let at = full.mul_f64(0.1 + 0.09 * f64::from(k));
        std::thread::sleep(at);
        let _ = child.kill();
        let _ = child.wait();
        let now = std::fs::read(&s).expect("the state file is still there");
        match classify(&now, &old, m) {
            Ok("old") => olds += 1,
            Ok(_) => news += 1,
            Err(e) => panic!("kill {k} at {at:?} left a broken state file: {e}"),
        }
        old = now;
    }
    println!("14 kills: {olds} left the old state, {news} the new one (one run takes {full:?})");
    // Temporary files of killed writers may remain (`.lossc-*.tmp`); the state file
    // itself is the only `.json`.
    let jsons = std::fs::read_dir(dir.path())
        .expect("dir")
        .filter(|e| {
            e.as_ref()
                .is_ok_and(|e| e.path().extension().is_some_and(|x| x == "json"))
        })
        .count();
    assert_eq!(jsons, 1);
}

fn compile_std(name: &str) -> Program {
    let file = stdlib(name);
    let text = std::fs::read_to_string(&file).expect("read");
    match compile(
        Source {
            name: file.display().to_string(),
            text,
        },
        &FileLoader,
        &CompileOptions::default(),
    ) {
        Ok(p) => p,
        Err(_) => panic!("{name} does not compile"),
    }
}

/// Converts a parsed state file to tensors the way `lossc --state` does.
fn loaded(text: &str) -> Vec<(String, Tensor)> {
    parse_state_json(text, "state")
        .expect("parse")
        .into_iter()
        .map(|(k, v)| {
            let t = if v.all_integers && !v.values.is_empty() {
                Tensor::from_i64(
                    v.shape.clone(),
                    v.values.iter().map(|x| *x as i64).collect(),
                )
            } else {
                Tensor::from_f64(DType::F64, v.shape.clone(), v.values.clone())
            };
            (k, t)
        })
        .collect()
}

#[test]
fn state_round_trips_bit_for_bit() {
    let dir = tempfile::tempdir().expect("tempdir");
    for (name, dims) in [
        ("cw_bass", "N=64,C=5"),
        ("aldr_kl", "N=32,C=6,M=80"),
        ("adawac", "B=8,P=6,C=3,D=4,M=40"),
        ("vagram", "N=16,S=3,K=2"),
        ("dynamic_reweight", "B=4,T=5,V=7"),
    ] {
        let p = compile_std(name);
        let mut d = BTreeMap::new();
        for kv in dims.split(',') {
            let (k, v) = kv.split_once('=').expect("k=v");
            d.insert(k.to_string(), v.parse::<i64>().expect("int"));
        }
        let inputs = losslang_runtime::random::random_inputs(&p.opt, &d, 5).expect("inputs");
        let mut state: Vec<(String, Tensor)> = vec![];
        for _ in 0..3 {
            let call = Call {
                inputs: inputs.clone(),
                state: state.clone(),
                dims: d.clone(),
                ..Call::default()
            };
            let env = p.bind(&call).expect("bind");
            state = p.run_with(&Interp, &env, false, false).expect("run").state;
        }
        // save → load → save
        let a = dir.path().join(format!("{name}-a.json"));
        let b = dir.path().join(format!("{name}-b.json"));
        write_json_atomic(&a, &state_to_json(&state)).expect("save");
        let text = std::fs::read_to_string(&a).expect("read");
        let call = Call {
            inputs: inputs.clone(),
            state: loaded(&text),
            dims: d.clone(),
            ..Call::default()
        };
        let env = p.bind(&call).expect("bind the loaded state");
        for ((n, want), got) in state.iter().zip(&env.state) {
            assert_eq!(want.dtype, got.dtype, "{name}: state {n}");
            assert_eq!(want.shape, got.shape, "{name}: state {n}");
            let (w, g) = (want.to_f64_vec(), got.to_f64_vec());
            for (i, (x, y)) in w.iter().zip(&g).enumerate() {
                assert_eq!(
                    x.to_bits(),
                    y.to_bits(),
                    "{name}: state {n}[{i}]: {x} vs {y}"
                );
                if want.dtype == DType::F32 {
                    assert_eq!((*x as f32).to_bits(), (*y as f32).to_bits());
                }
            }
        }
        let again: Vec<(String, Tensor)> = p
            .opt
            .states
            .iter()
            .map(|s| s.name.clone())
            .zip(env.state.iter().cloned())
            .collect();
        write_json_atomic(&b, &state_to_json(&again)).expect("save again");
        assert_eq!(
            std::fs::read(&a).expect("a"),
            std::fs::read(&b).expect("b"),
            "{name}: save → load → save changed the bytes"
        );
    }
    // Awkward f32 values: subnormals, the extremes, NaN and infinities.
    let odd: Vec<f64> = [
        f32::MIN_POSITIVE,
        f32::from_bits(1),
        f32::MAX,
        -f32::MAX,
        0.1,
        1.0 / 3.0,
        -0.0,
        f32::NAN,
        f32::INFINITY,
        f32::NEG_INFINITY,
        16_777_217.0,
    ]
    .iter()
    .map(|x| f64::from(*x))
    .collect();
    let t = Tensor::from_f64(DType::F32, vec![odd.len()], odd.clone());
    let text = state_to_json(&[("t".into(), t)]).to_string();
    let back = parse_state_json(&text, "odd").expect("parse");
    for (x, y) in odd.iter().zip(&back["t"].values) {
        let (x, y) = (*x as f32, *y as f32);
        assert!(
            x.to_bits() == y.to_bits() || (x.is_nan() && y.is_nan()),
            "{x:e} came back as {y:e}"
        );
    }
}

#[test]
fn resumed_runs_equal_one_long_run_on_every_backend() {
    let dir = tempfile::tempdir().expect("tempdir");
    let k = "3";
    let cases: [(&str, &[&str]); 3] = [
        ("cw_bass", &["--random", "N=48,C=5"]),
        ("aldr_kl", &["--random", "N=24,C=6", "--dims", "M=64"]),
        ("dynamic_reweight", &["--random", "B=4,T=6,V=9"]),
    ];
    for b in backends() {
        for (name, data) in cases {
            let file = stdlib(name).display().to_string();
            let path = |tag: &str| dir.path().join(format!("{name}-{b}-{tag}.json"));
            let (full, half, resumed) = (path("full"), path("half"), path("resumed"));
            let (full_s, half_s, resumed_s) = (
                full.display().to_string(),
                half.display().to_string(),
                resumed.display().to_string(),
            );
            let mut common: Vec<&str> =
                vec!["run", &file, "--backend", b, "--json", "--seed", "11"];
            common.extend(data);
            let mut a = common.clone();
            a.extend(["--steps", "6", "--save-state", &full_s]);
            let one = ok(&a);
            let mut b1 = common.clone();
            b1.extend(["--steps", k, "--save-state", &half_s]);
            let first_half = ok(&b1);
            let mut b2 = common.clone();
            b2.extend(["--steps", k, "--state", &half_s, "--save-state", &resumed_s]);
            let second_half = ok(&b2);
            let lines_one: Vec<&str> = one.lines().collect();
            let lines_two: Vec<&str> = first_half.lines().chain(second_half.lines()).collect();
            assert_eq!(lines_one.len(), 6, "{name} [{b}]");
            assert_eq!(
                lines_one, lines_two,
                "{name} [{b}]: resumed steps differ from one run"
            );
            assert_eq!(
                std::fs::read(&full).expect("full"),
                std::fs::read(&resumed).expect("resumed"),
                "{name} [{b}]: the resumed state file differs from one run's"
            );
        }
    }
}
