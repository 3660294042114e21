// Embeds the standard library's `.loss` files so that `use std::…` works
// from any folder and `lossc` needs no files beside it.
use std::fmt::Write;
use std::path::Path;

fn main() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("..")
        .join("stdlib");
    println!("cargo:rerun-if-changed={}", dir.display());
    let mut names: Vec<String> = std::fs::read_dir(&dir)
        .map(|rd| {
            rd.filter_map(|e| e.ok())
                .map(|e| e.file_name().to_string_lossy().to_string())
                .filter(|n| n.ends_with(".loss"))
                .collect()
        })
        .unwrap_or_default();
    names.sort();
    let mut out = String::from(
        "/// The standard library, embedded at build time: (module name, source).\npub static STDLIB: &[(&str, &str)] = &[\n",
    );
    for n in names {
        let path = dir.join(&n);
        println!("cargo:rerun-if-changed={}", path.display());
        let stem = n.trim_end_matches(".loss");
        let _ = writeln!(
            out,
            "    ({stem:?}, include_str!({:?})),",
            path.display().to_string()
        );
    }
    out.push_str("];\n");
    let dest = Path::new(&std::env::var("OUT_DIR").expect("OUT_DIR")).join("stdlib_embedded.rs");
    std::fs::write(dest, out).expect("write the embedded stdlib table");
}
