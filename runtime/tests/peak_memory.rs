//! Peak memory of a JIT call on the caller's buffers: beyond the inputs and
//! the gradient arrays the caller holds, a row loss may allocate only O(rows)
//! scratch (per-row partials of batch reductions), the scalar loss and its
//! reports — never a full-size temporary. Measured with a counting
//! allocator, so this file holds one test (tests in one binary share it).

use losslang_clif::array::{Array, View};
use losslang_clif::loss::{Args, JitLoss, Outs};
use losslang_compiler::program::{CompileOptions, compile};
use losslang_compiler::sema::Source;
use losslang_runtime::loader::FileLoader;
use losslang_runtime::random::random_inputs;
use std::alloc::{GlobalAlloc, Layout, System};
use std::collections::BTreeMap;
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};

struct Counting;

static NOW: AtomicUsize = AtomicUsize::new(0);
static PEAK: AtomicUsize = AtomicUsize::new(0);

// SAFETY: forwards to the system allocator; only counts.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, l: Layout) -> *mut u8 {
        let p = unsafe { System.alloc(l) };
        if !p.is_null() {
            let now = NOW.fetch_add(l.size(), Ordering::SeqCst) + l.size();
            PEAK.fetch_max(now, Ordering::SeqCst);
        }
        p
    }

    unsafe fn dealloc(&self, p: *mut u8, l: Layout) {
        unsafe { System.dealloc(p, l) };
        NOW.fetch_sub(l.size(), Ordering::SeqCst);
    }
}

#[global_allocator]
static A: Counting = Counting;

/// Bytes allocated at the peak of `f`, above what was live before it.
fn peak_of<R>(f: impl FnOnce() -> R) -> (R, usize) {
    let base = NOW.load(Ordering::SeqCst);
    PEAK.store(base, Ordering::SeqCst);
    let r = f();
    (r, PEAK.load(Ordering::SeqCst) - base)
}

#[test]
fn a_row_loss_allocates_only_row_sized_scratch() {
    // N rows of C classes: inputs and gradients are N·C floats each; the
    // allowance is a fixed amount plus a few words per row, far below N·C.
    let (n, c) = (4096usize, 512usize);
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let mut report = vec![];
    for file in [
        "stdlib/cross_entropy.loss",
        "stdlib/focal.loss",
        "stdlib/cw_bass.loss",
        "stdlib/gce.loss",
        "stdlib/z_loss.loss",
        "runtime/benches/cw_ce.loss",
    ] {
        let text = std::fs::read_to_string(root.join(file)).expect("readable");
        let p = compile(
            Source {
                name: file.into(),
                text,
            },
            &FileLoader,
            &CompileOptions::default(),
        )
        .unwrap_or_else(|_| panic!("{file} compiles"));
        let dims: BTreeMap<String, i64> =
            [("N".to_string(), n as i64), ("C".to_string(), c as i64)]
                .into_iter()
                .collect();
        let inputs = random_inputs(&p.opt, &dims, 3).expect("random inputs");
        let loss = JitLoss::new(p).expect("compiles");
        let g = &loss.program().opt;
        let arrays: Vec<(String, Array, Vec<usize>)> = inputs
            .iter()
            .map(|(name, t)| (name.clone(), Array::from_tensor(t), t.shape.clone()))
            .collect();
        let mut grads: Vec<Array> = g
            .grads
            .iter()
            .map(|(k, _)| Array::zeros(g.inputs[*k].ty.dtype, arrays[*k].1.as_ref().len()))
            .collect();
        let state0 = loss.init_state(&[], &dims).expect("initial state");
        let state: Vec<(String, Array, Vec<usize>)> = g
            .states
            .iter()
            .zip(&state0)
            .map(|(d, t)| (d.name.clone(), Array::from_tensor(t), t.shape.clone()))
            .collect();
        let mut new_state: Vec<Array> = state.iter().map(|(_, a, _)| a.clone()).collect();
        let data_bytes: usize = arrays
            .iter()
            .map(|(_, a, _)| a.as_ref().len() * 4)
            .sum::<usize>()
            + grads.iter().map(|a| a.as_ref().len() * 4).sum::<usize>();
        let mut call = || {
            let args = Args {
                inputs: arrays
                    .iter()
                    .map(|(name, a, s)| (name.as_str(), View::new(a.as_ref(), s)))
                    .collect(),
                state: state
                    .iter()
                    .map(|(name, a, s)| (name.as_str(), View::new(a.as_ref(), s)))
                    .collect(),
                ..Args::default()
            };
            let mut outs = Outs {
                grads: grads.iter_mut().map(Array::as_mut).collect(),
                state: new_state.iter_mut().map(Array::as_mut).collect(),
            };
            loss.call(&args, &mut outs).expect("runs").loss
        };
        // The first call sizes the reusable scratch; later calls reuse it.
        let (l1, first) = peak_of(&mut call);
        let (l2, later) = peak_of(&mut call);
        assert_eq!(l1.to_bits(), l2.to_bits(), "{file}: the same call twice");
        let allowance = 64 * 1024 + 64 * n;
        report.push(format!(
            "{file}: first call {first} B, later calls {later} B (inputs + gradients {data_bytes} B, allowance {allowance} B)"
        ));
        assert!(
            first <= allowance && later <= allowance,
            "{}",
            report.join("\n")
        );
    }
    println!("{}", report.join("\n"));
}
