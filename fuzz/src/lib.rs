//! losslang's fuzz targets, as a library so that the libFuzzer targets
//! (`fuzz_targets/`), the stable-toolchain driver (`src/bin/fuzz_driver.rs`) and
//! the regression tests share one implementation.

pub mod parse;
pub mod program_gen;
