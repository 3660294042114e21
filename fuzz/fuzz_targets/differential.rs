//! A well-typed random program with matching data: the interpreter on the
//! unoptimised gradient graph vs the optimised graph, every other available
//! backend vs the interpreter, and finite differences on smooth programs.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Err(f) = losslang_fuzz::program_gen::differential(data) {
        panic!("differential finding:\n{f}");
    }
});
