//! The fuzz targets without libFuzzer, for the stable toolchain: a deterministic
//! generator (SplitMix64 from `--seed`) feeds a target for `--minutes`, and every
//! panic or finding is written to `--out` (default `fuzz/artifacts/<target>/`) and
//! counted. Exit status 1 when anything was found.
//!
//! ```text
//! cargo run --release --no-default-features --features driver --bin fuzz_driver -- differential --minutes 10
//! cargo run --release --no-default-features --features driver --bin fuzz_driver -- parse_check --minutes 10 --seed 3
//! ```
//!
//! `parse_check` mutates the standard library's files (byte flips, token
//! insertions from `loss.dict`'s list, deletions, duplications, truncations);
//! `parse_tokens` feeds random token soups; `differential` feeds random bytes to
//! the program generator. `fuzz_driver show FILE.bin` prints what a stored
//! differential input generates: the program, its data, each backend's results.

use losslang_fuzz::parse::{TOKENS, check_text, token_soup};
use losslang_fuzz::program_gen::{Outcome, Rng, differential};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

struct Args {
    target: String,
    minutes: f64,
    seed: u64,
    out: PathBuf,
}

fn args() -> Result<Args, String> {
    let mut it = std::env::args().skip(1);
    let target = it
        .next()
        .ok_or("usage: fuzz_driver parse_check|parse_tokens|differential [--minutes M] [--seed S] [--out DIR]")?;
    let mut a = Args {
        out: PathBuf::from("artifacts").join(&target),
        target,
        minutes: 1.0,
        seed: 0,
    };
    if a.target == "show" {
        return Ok(a);
    }
    while let Some(flag) = it.next() {
        let v = it.next().ok_or(format!("{flag} needs a value"))?;
        match flag.as_str() {
            "--minutes" => a.minutes = v.parse().map_err(|_| format!("bad --minutes {v}"))?,
            "--seed" => a.seed = v.parse().map_err(|_| format!("bad --seed {v}"))?,
            "--out" => a.out = PathBuf::from(v),
            _ => return Err(format!("unknown flag {flag}")),
        }
    }
    Ok(a)
}

fn stdlib_corpus() -> Vec<Vec<u8>> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../stdlib");
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .map(|rd| rd.filter_map(|e| e.ok().map(|e| e.path())).collect())
        .unwrap_or_default();
    files.sort();
    files
        .iter()
        .filter(|p| p.extension().is_some_and(|e| e == "loss"))
        .filter_map(|p| std::fs::read(p).ok())
        .collect()
}

/// One to eight random edits of a corpus file.
fn mutate(rng: &mut Rng, base: &[u8]) -> Vec<u8> {
    let mut v = base.to_vec();
    for _ in 0..1 + rng.below(8) {
        let len = v.len() as u64;
        let at = rng.below(len + 1) as usize;
        match rng.below(6) {
            0 if !v.is_empty() => {
                let i = rng.below(len) as usize;
                v[i] ^= 1 << rng.below(8);
            }
            1 => {
                let tok = TOKENS[rng.below(TOKENS.len() as u64) as usize];
                v.splice(at..at, tok.bytes());
            }
            2 => {
                let end = (at + rng.below(64) as usize).min(v.len());
                v.drain(at..end);
            }
            3 => {
                let end = (at + rng.below(256) as usize).min(v.len());
                let piece: Vec<u8> = v[at..end].to_vec();
                let to = rng.below(v.len() as u64 + 1) as usize;
                v.splice(to..to, piece);
            }
            4 => v.truncate(at),
            _ => {
                let b = rng.below(256) as u8;
                v.insert(at, b);
            }
        }
    }
    v
}

fn main() {
    let a = match args() {
        Ok(a) => a,
        Err(e) => {
            eprintln!("{e}");
            std::process::exit(2);
        }
    };
    // Findings are reported by this driver; the default hook's backtrace is noise here.
    if a.target == "show" {
        // `fuzz_driver show FILE` prints a differential input's program, data and results.
        let path = std::env::args().nth(2).unwrap_or_default();
        let bytes = std::fs::read(&path).unwrap_or_default();
        let spec = losslang_fuzz::program_gen::generate(&bytes);
        print!("{}", losslang_fuzz::program_gen::describe(&spec));
        if let Err(f) = differential(&bytes) {
            println!("// finding: {}", f.what);
        }
        return;
    }
    std::panic::set_hook(Box::new(|_| {}));
    let corpus = stdlib_corpus();
    let mut rng = Rng::new(a.seed ^ 0x00F0_220F_F022_0000);
    let deadline = Instant::now() + Duration::from_secs_f64(a.minutes * 60.0);
    let (mut runs, mut found) = (0u64, 0u64);
    let mut stats: std::collections::BTreeMap<String, u64> = Default::default();
    while Instant::now() < deadline {
        runs += 1;
        let input: Vec<u8> = match a.target.as_str() {
            "parse_check" if !corpus.is_empty() => {
                let base = &corpus[rng.below(corpus.len() as u64) as usize];
                mutate(&mut rng, base)
            }
            _ => {
                let n = rng.below(512) as usize;
                (0..n).map(|_| rng.below(256) as u8).collect()
            }
        };
        let target = a.target.clone();
        let data = input.clone();
        let r = std::panic::catch_unwind(move || match target.as_str() {
            "parse_check" => Ok(format!(
                "{:?}",
                check_text(String::from_utf8_lossy(&data).into_owned())
            )),
            "parse_tokens" => Ok(format!("{:?}", check_text(token_soup(&data)))),
            "differential" => match differential(&data) {
                Ok(Outcome::Agreed {
                    gradchecked,
                    f32_conditioned,
                    ..
                }) => Ok(format!(
                    "agreed (gradcheck {gradchecked}, f32-conditioned {f32_conditioned})"
                )),
                Ok(Outcome::DataError) => Ok("data error".to_string()),
                Err(f) => Err(f.to_string()),
            },
            other => Err(format!("unknown target {other}")),
        });
        let report = match r {
            Ok(Ok(kind)) => {
                *stats.entry(kind).or_default() += 1;
                continue;
            }
            Ok(Err(finding)) => finding,
            Err(panic) => {
                let msg = panic
                    .downcast_ref::<String>()
                    .cloned()
                    .or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()))
                    .unwrap_or_else(|| "a panic".into());
                format!("panic: {msg}")
            }
        };
        found += 1;
        let _ = std::fs::create_dir_all(&a.out);
        let stem = a.out.join(format!("finding-{runs}"));
        let _ = std::fs::write(stem.with_extension("bin"), &input);
        let _ = std::fs::write(stem.with_extension("txt"), &report);
        eprintln!(
            "finding {found} at run {runs}: {}",
            report.lines().next().unwrap_or("")
        );
    }
    println!(
        "{}: {runs} runs in {:.1} min, {found} findings; outcomes {stats:?}",
        a.target, a.minutes
    );
    std::process::exit(i32::from(found > 0));
}
