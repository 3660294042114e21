//! losslang's run-time: tensor files (.npy/.npz), state and params files,
//! random inputs, the standard-library loader, diagnostics rendering, and the
//! `lossc` command line.

pub mod backends;
pub mod cli;
pub mod io;
pub mod loader;
pub mod random;
pub mod render;
pub mod state_file;

/// Runs `f` on a thread with a large stack: deeply nested programs recurse in
/// the parser and checker, and must be an error or a result, never a crash.
pub fn with_big_stack<T: Send + 'static>(
    f: impl FnOnce() -> T + Send + 'static,
) -> std::thread::Result<T> {
    std::thread::Builder::new()
        .stack_size(1 << 30)
        .spawn(f)
        .expect("spawn the compiler thread")
        .join()
}
