//! Finds the modules of `use`: `std::name` is the embedded standard library,
//! any other path is a `.loss` file relative to the importing file's folder.

use losslang_compiler::sema::{Loader, Source};
use std::path::{Path, PathBuf};

include!(concat!(env!("OUT_DIR"), "/stdlib_embedded.rs"));

/// The embedded source of `stdlib/<name>.loss`.
pub fn stdlib_source(name: &str) -> Option<&'static str> {
    STDLIB.iter().find(|(n, _)| *n == name).map(|(_, s)| *s)
}

/// The standard library's losses — the files that define a `loss`, not the
/// modules of `fn`s — as (file name, source), in name order.
pub fn stdlib_losses() -> Vec<(String, &'static str)> {
    STDLIB
        .iter()
        .filter(|(_, text)| !losslang_compiler::sema::scope::is_module(text))
        .map(|(name, text)| (format!("{name}.loss"), *text))
        .collect()
}

pub struct FileLoader;

impl Loader for FileLoader {
    fn load(&self, path: &[String], from: &str) -> Result<Source, String> {
        if path.first().map(String::as_str) == Some("std") {
            let rest = &path[1..];
            if rest.len() != 1 {
                return Err("standard-library modules are named `std::module`".into());
            }
            return stdlib_source(&rest[0])
                .map(|text| Source {
                    name: format!("std/{}.loss", rest[0]),
                    text: text.to_string(),
                })
                .ok_or_else(|| format!("the standard library has no module `{}`", rest[0]));
        }
        let base: PathBuf = if from.starts_with("std/") {
            return Err("the standard library cannot import files".into());
        } else {
            Path::new(from)
                .parent()
                .map(Path::to_path_buf)
                .unwrap_or_default()
        };
        let mut p = base;
        for seg in path {
            if seg == "super" {
                p.push("..");
            } else {
                p.push(seg);
            }
        }
        p.set_extension("loss");
        std::fs::read_to_string(&p)
            .map(|text| Source {
                name: p.display().to_string(),
                text,
            })
            .map_err(|e| match e.kind() {
                std::io::ErrorKind::NotFound => format!(
                    "no file `{}` next to this file",
                    p.file_name()
                        .map(|f| f.to_string_lossy().to_string())
                        .unwrap_or_default()
                ),
                _ => format!(
                    "cannot read `{}`",
                    p.file_name()
                        .map(|f| f.to_string_lossy().to_string())
                        .unwrap_or_default()
                ),
            })
    }
}
