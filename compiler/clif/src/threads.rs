//! Splitting a kernel's outermost loop across threads. Each thread runs a
//! contiguous range of it; kernels that are split write disjoint rows and
//! combine nothing across rows, so the result does not depend on the thread
//! count.

use crate::abi::{Ctx, KernelFn};

/// Below this many outer iterations per thread, threads cost more than they save.
const MIN_ROWS_PER_THREAD: i64 = 64;

struct SendCtx(*const Ctx);

// SAFETY: the context and every buffer it points to outlive the scoped threads,
// and the threads write disjoint rows.
unsafe impl Send for SendCtx {}
unsafe impl Sync for SendCtx {}

/// Runs `f` over `0..extent` on up to `threads` threads.
pub fn run_kernel(f: KernelFn, ctx: &Ctx, extent: i64, threads: usize) {
    let t = (threads as i64).min(extent / MIN_ROWS_PER_THREAD).max(1);
    if t <= 1 {
        // SAFETY: the driver sized every buffer from the dims the kernel reads.
        unsafe { f(ctx, 0, extent) };
        return;
    }
    let c = SendCtx(ctx);
    let c = &c;
    std::thread::scope(|s| {
        for i in 0..t {
            let lo = extent * i / t;
            let hi = extent * (i + 1) / t;
            s.spawn(move || {
                let p = c;
                // SAFETY: as above; the ranges are disjoint.
                unsafe { f(p.0, lo, hi) };
            });
        }
    });
}
