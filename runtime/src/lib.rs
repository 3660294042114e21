//! losslang's run-time: tensor files (.npy/.npz), state and params files,
//! random inputs, the standard-library loader, diagnostics rendering, and the
//! `lossc` command line.

pub mod backends;
pub mod cli;
pub mod conformance;
pub mod io;
pub mod loader;
pub mod random;
pub mod render;
pub mod state_file;

/// Runs `f` on a thread with a large stack: deeply nested programs recurse in
/// the parser and checker, and must be an error or a result, never a crash.
///
/// Under a tight address-space limit (`ulimit -v`) a 1 GiB stack may not be
/// reservable: smaller stacks are tried next, and as a last resort `f` runs on the
/// calling thread, so the limit costs nesting depth, not a crash.
pub fn with_big_stack<T: Send + 'static>(
    f: impl FnOnce() -> T + Send + 'static,
) -> std::thread::Result<T> {
    use std::sync::{Arc, Mutex};
    // `spawn` drops its closure when it fails; keep `f` where the next try can take it.
    let slot = Arc::new(Mutex::new(Some(f)));
    for size in [1usize << 30, 1 << 28, 1 << 26] {
        let mine = Arc::clone(&slot);
        let spawned = std::thread::Builder::new().stack_size(size).spawn(move || {
            let f = mine
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .take();
            f.map(|f| f())
        });
        if let Ok(handle) = spawned {
            return handle
                .join()
                .map(|r| r.expect("the closure runs exactly once"));
        }
    }
    let f = slot
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .take()
        .expect("no thread took the closure");
    std::panic::catch_unwind(std::panic::AssertUnwindSafe(f))
}
