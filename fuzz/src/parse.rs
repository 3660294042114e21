//! The parser + checker fuzz targets' core: any text through the grammar, the
//! AST dump, the full `compile` with a loader that
//! finds nothing, and — for programs that compile — one call on small random
//! inputs on every available backend. Nothing may panic; the caller turns a
//! panic into a crash report.

use losslang_compiler::backend::Interp;
use losslang_compiler::program::{Call, CompileOptions, compile};
use losslang_compiler::sema::{NoLoader, Source};
use std::collections::BTreeMap;

/// How far one input got.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Reached {
    ParseError,
    CheckError,
    Module,
    Compiled,
    Ran,
}

/// Most elements of any value a compiled fuzz program may compute before it is run
/// (keeps `zeros(100000, 100000)` from being a memory finding).
const MAX_NODE_ELEMS: i64 = 1 << 16;

/// Arbitrary bytes (lossily decoded) through every stage.
pub fn parse_check(data: &[u8]) -> Reached {
    check_text(String::from_utf8_lossy(data).into_owned())
}

/// Runs [`check_text_here`] on a thread with the stack `lossc` gives the compiler.
pub fn check_text(text: String) -> Reached {
    match losslang_runtime::with_big_stack(move || check_text_here(&text)) {
        Ok(r) => r,
        Err(panic) => std::panic::resume_unwind(panic),
    }
}

/// Every stage on the current thread (which needs a big stack for deep nesting).
pub fn check_text_here(text: &str) -> Reached {
    if let Ok(ast) = losslang_grammar::parse(text) {
        // The AST dump (`lossc emit --stage ast`) prints whatever parsed.
        let dump = losslang_grammar::print::print_file(&ast);
        assert!(dump.starts_with("; losslang ast"), "{dump}");
    } else {
        // The checker must also report (not panic on) what the parser rejects.
        let _ = compile(src(text), &NoLoader, &CompileOptions::default());
        return Reached::ParseError;
    }
    if losslang_compiler::sema::scope::is_module(text) {
        let mut sources = vec![src(text)];
        let _ = losslang_compiler::sema::scope::check_module(&mut sources, &NoLoader);
        return Reached::Module;
    }
    let p = match compile(src(text), &NoLoader, &CompileOptions::default()) {
        Ok(p) => p,
        Err(_) => return Reached::CheckError,
    };
    // Small dims for every symbol; refuse programs whose values would be large.
    let g = &p.opt;
    let mut dims: BTreeMap<String, i64> = BTreeMap::new();
    for n in &g.nodes {
        for d in &n.ty.shape {
            let mut syms = vec![];
            d.symbols(&mut syms);
            for s in syms {
                dims.entry(s).or_insert(3);
            }
        }
    }
    for s in &g.states {
        for d in &s.ty.shape {
            let mut syms = vec![];
            d.symbols(&mut syms);
            for sym in syms {
                dims.insert(sym, 8);
            }
        }
    }
    let env_fn = |s: &str| dims.get(s).copied();
    for n in &g.nodes {
        let mut numel: i64 = 1;
        for d in &n.ty.shape {
            match d.eval(&env_fn) {
                Some(v) if (0..=MAX_NODE_ELEMS).contains(&v) => {
                    numel = numel.saturating_mul(v.max(1));
                }
                _ => return Reached::Compiled,
            }
        }
        if numel > MAX_NODE_ELEMS {
            return Reached::Compiled;
        }
    }
    let inputs = match losslang_runtime::random::random_inputs(g, &dims, 7) {
        Ok(i) => i,
        Err(_) => return Reached::Compiled,
    };
    // Only the dims some input or state uses may be passed to `bind`.
    let mut used = vec![];
    for d in g
        .inputs
        .iter()
        .flat_map(|i| i.ty.shape.iter())
        .chain(g.states.iter().flat_map(|s| s.ty.shape.iter()))
    {
        d.symbols(&mut used);
    }
    dims.retain(|k, _| used.contains(k));
    let call = Call {
        inputs,
        dims,
        grads: true,
        ..Call::default()
    };
    let env = match p.bind(&call) {
        Ok(e) => e,
        Err(_) => return Reached::Compiled,
    };
    let _ = p.run_with(&Interp, &env, true, true);
    for b in crate::program_gen::other_backends() {
        if let Ok(exec) = losslang_runtime::backends::executor(b, &p, "cpu") {
            let _ = p.run_with(exec.as_ref(), &env, true, true);
        }
    }
    Reached::Ran
}

fn src(text: &str) -> Source {
    Source {
        name: "fuzz.loss".into(),
        text: text.to_string(),
    }
}

/// The tokens of the language (also `fuzz/loss.dict`): the grammar-shaped mode
/// builds programs from them.
pub const TOKENS: &[&str] = &[
    "loss",
    "fn",
    "margin",
    "use",
    "let",
    "param",
    "state",
    "report",
    "assert",
    "if",
    "else",
    "and",
    "or",
    "not",
    "true",
    "false",
    "None",
    "diff",
    "std",
    "::",
    "->",
    "<-",
    "(",
    ")",
    "[",
    "]",
    "{",
    "}",
    ",",
    ":",
    ";",
    "=",
    "==",
    "!=",
    "<",
    "<=",
    ">",
    ">=",
    "+",
    "-",
    "*",
    "/",
    "**",
    "@",
    "!",
    "&",
    "|",
    "\n",
    "///",
    "//",
    "x",
    "y",
    "t",
    "N",
    "C",
    "M",
    "f32",
    "f64",
    "i64",
    "bool",
    "0",
    "1",
    "2",
    "-1",
    "0.5",
    "1e-3",
    "1e308",
    "1e400",
    "0x7fffffffffffffff",
    "9223372036854775808",
    "1_000",
    "axis",
    "keepdims",
    "exp",
    "log",
    "sum",
    "mean",
    "max",
    "min",
    "softmax",
    "log_softmax",
    "logsumexp",
    "take",
    "one_hot",
    "where",
    "stop_grad",
    "sort",
    "argsort",
    "cumsum",
    "topk",
    "quantile",
    "scatter",
    "normalize",
    "norm",
    "eye",
    "arange",
    "zeros",
    "ones",
    "transpose",
    "reshape",
    "concat",
    "stack",
    "diag",
    "tril",
    "rand_normal",
    "dirichlet",
    "ensemble",
    "safe_div",
    "clamp",
    "cast",
    "argmax",
    "count",
    "...",
    "..",
    ":",
    "'",
    "\"",
    "\\",
    "#",
    "\u{202e}",
    "\u{0}",
    "é",
];

/// A program-shaped token soup: a loss header, then one token per input byte.
pub fn token_soup(data: &[u8]) -> String {
    let mut s = String::new();
    let mut it = data.iter();
    match it.next().map(|b| b % 4) {
        Some(0) | None => {}
        Some(1) => s.push_str("loss t(x: f32[N, C] diff, t: i64[N]) -> f32 {\n"),
        Some(2) => s.push_str("fn h(a) {\n"),
        _ => s.push_str(
            "loss t(x: f32[N, C] diff, t: i64[N]) -> f32 {\n    param p: f32 = 1.0\n    state k: i64 = 0\n    let v = ",
        ),
    }
    for &b in it {
        s.push_str(TOKENS[usize::from(b) % TOKENS.len()]);
        s.push(' ');
    }
    s
}
