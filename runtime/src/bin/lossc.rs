//! `lossc`: compile, check and run `.loss` files. See `lossc --help`.

fn main() {
    std::process::exit(losslang_runtime::cli::main());
}
