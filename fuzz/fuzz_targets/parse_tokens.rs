//! The grammar-shaped mode: every input is a sequence of the language's tokens
//! after a loss or fn header, so the checker sees mostly plausible programs.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = losslang_fuzz::parse::check_text(losslang_fuzz::parse::token_soup(data));
});
