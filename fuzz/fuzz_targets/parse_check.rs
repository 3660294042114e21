//! Arbitrary bytes through the grammar, the printer, the checker and (when the
//! program compiles) one call on small random inputs: nothing may panic.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = losslang_fuzz::parse::parse_check(data);
});
