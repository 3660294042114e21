#![allow(dead_code, unused_imports)]
//! The parser against the language reference: every construct, the
//! diagnostics users see, and inputs built to crash it.

use losslang_grammar::ast::{
    Block, DimAst, Expr, ExprKind, File, IndexItem, Item, LossDef, Stmt, TypeExpr, UnOp,
};
use losslang_grammar::print::print_file;
use losslang_grammar::{MAX_NESTING, ParseError, Span, parse};
use miette::Diagnostic;

// ---------------------------------------------------------------- helpers

fn ok(src: &str) -> File {
    match parse(src) {
        Ok(f) => f,
        Err(e) => panic!(
            "expected {src:?} to parse, got {} {} (at {:?}, help {:?})",
            e.code, e.message, e.span_range, e.help
        ),
    }
}

fn err(src: &str) -> ParseError {
    match parse(src) {
        Ok(f) => panic!("expected {src:?} to fail, got\n{}", print_file(&f)),
        Err(e) => e,
    }
}

/// The compiler parses on a 64 MiB thread; so do the tests that go deep.
fn on_big_stack<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> T {
    std::thread::Builder::new()
        .stack_size(64 << 20)
        .spawn(f)
        .expect("spawn")
        .join()
        .expect("no panic")
}

fn loss(f: &File, i: usize) -> &LossDef {
    match &f.items[i] {
        Item::Loss(l) => l,
        other => panic!("item {i} is not a loss: {other:?}"),
    }
}

fn in_body(body: &str) -> String {
    format!("loss f(x: f32) -> f32 {{\n{body}\n}}")
}

fn body(body: &str) -> Block {
    loss(&ok(&in_body(body)), 0).body.clone()
}

fn tail(expr: &str) -> Expr {
    *body(expr).tail.expect("a tail expression")
}

/// A compact rendering that shows the tree's shape.
fn sx(e: &Expr) -> String {
    match &e.kind {
        ExprKind::Int(v) => v.to_string(),
        ExprKind::Float(v) => format!("{v:?}"),
        ExprKind::Bool(b) => b.to_string(),
        ExprKind::Name(n) => n.clone(),
        ExprKind::Unary { op, expr } => {
            let op = match op {
                UnOp::Neg => "neg",
                UnOp::Not => "not",
            };
            format!("({op} {})", sx(expr))
        }
        ExprKind::Binary { op, lhs, rhs } => format!("({} {} {})", op.symbol(), sx(lhs), sx(rhs)),
        ExprKind::Call { func, args } => {
            let args: String = args
                .iter()
                .map(|a| match &a.name {
                    Some(n) => format!(" {}={}", n.name, sx(&a.value)),
                    None => format!(" {}", sx(&a.value)),
                })
                .collect();
            format!("({}{args})", func.name)
        }
        ExprKind::Index { base, indices } => {
            let items: String = indices.iter().map(|i| format!(" {}", sx_item(i))).collect();
            format!("(index {}{items})", sx(base))
        }
        ExprKind::If {
            cond,
            then_block,
            else_block,
        } => format!(
            "(if {} {} {})",
            sx(cond),
            sx_block(then_block),
            sx_block(else_block)
        ),
        ExprKind::List(items) => {
            format!("[{}]", items.iter().map(sx).collect::<Vec<_>>().join(" "))
        }
    }
}

fn sx_item(i: &IndexItem) -> String {
    let opt = |e: &Option<Expr>| e.as_ref().map(sx).unwrap_or_default();
    match i {
        IndexItem::Index(e) => sx(e),
        IndexItem::NewAxis(_) => "None".into(),
        IndexItem::Slice {
            start,
            end,
            step: None,
            ..
        } => format!("{}:{}", opt(start), opt(end)),
        IndexItem::Slice {
            start, end, step, ..
        } => format!("{}:{}:{}", opt(start), opt(end), opt(step)),
    }
}

fn sx_block(b: &Block) -> String {
    let tail = b.tail.as_deref().map(sx).unwrap_or_default();
    if b.stmts.is_empty() {
        format!("{{{tail}}}")
    } else {
        format!("{{{} stmts; {tail}}}", b.stmts.len())
    }
}

fn text(src: &str, span: Span) -> &str {
    &src[span.start..span.end]
}

fn dims(t: &TypeExpr) -> Option<Vec<String>> {
    t.dims.as_ref().map(|ds| {
        ds.iter()
            .map(|d| match d {
                DimAst::Lit(v, _) => v.to_string(),
                DimAst::Name(n) => n.name.clone(),
            })
            .collect()
    })
}

const EXAMPLE: &str = r#"/// Softmax focal loss.
loss softmax_focal(logits: f32[N, C] diff, target: i64[N]) -> f32 {
    /// focusing
    param gamma: f32 = 2.0
    state lambdas: f32[M] = 10.0
    let lp = take(log_softmax(logits, axis=1), target, axis=1)
    report weight = (1 - exp(lp)) ** gamma
    lambdas[ids] <- lp * 2
    let k = if gamma > 0 { 1.0 } else if gamma < -1 { 2.0 } else { 3.0 }
    let s = x[:, None] - y[None, :] + q[:, 0:K] + b[:, 1:] + b[:, :-1] + r[::2]
    mean(-0.25 * (1 - exp(lp)) ** gamma * lp) + concat([a, b], axis=0)[0] @ w
}
margin fn logistic(z) { softplus(-z) }
use std::weighting::{ema, safe_div};
"#;

struct Lcg(u64);

impl Lcg {
    fn next(&mut self) -> u64 {
        self.0 = self
            .0
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        self.0 >> 33
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
}

/// Parses and, on success, prints; on failure, checks the spans and renders
/// the diagnostic. Any panic fails the test.
fn survive(src: String) {
    match parse(&src) {
        Ok(f) => {
            let _ = print_file(&f);
        }
        Err(e) => {
            assert!(
                e.span_range.start <= e.span_range.end && e.span_range.end <= src.len(),
                "{src:?}: {e:?}"
            );
            assert!(src.is_char_boundary(e.span_range.start));
            assert!(src.is_char_boundary(e.span_range.end));
            let mut out = String::new();
            let report = miette::Report::new(e).with_source_code(src);
            miette::NarratableReportHandler::new()
                .render_report(&mut out, report.as_ref())
                .unwrap();
        }
    }
}

#[test]
fn random_bytes_never_panic() {
    on_big_stack(|| {
        let mut rng = Lcg(99);
        for _ in 0..6000 {
            let len = rng.below(200);
            let bytes: Vec<u8> = (0..len).map(|_| rng.next() as u8).collect();
            survive(String::from_utf8_lossy(&bytes).into_owned());
        }
        for _ in 0..6000 {
            let len = rng.below(200);
            let s: String = (0..len)
                .map(|_| match rng.below(10) {
                    0 => char::from_u32(rng.next() as u32 % 0x11_0000).unwrap_or('\u{FFFD}'),
                    1 => ['\0', '\n', '\u{FEFF}', 'é', '\u{202E}'][rng.below(5)],
                    _ => (b' ' + rng.below(95) as u8) as char,
                })
                .collect();
            survive(s);
        }
    });
}

#[test]
fn random_token_soup_never_panics() {
    const TOKENS: &[&str] = &[
        "loss",
        "fn",
        "margin",
        "use",
        "let",
        "param",
        "state",
        "report",
        "if",
        "else",
        "and",
        "or",
        "not",
        "true",
        "false",
        "diff",
        "assert",
        "None",
        "x",
        "f32",
        "N",
        "axis",
        "0",
        "1.5",
        "1e-3",
        "0x1F",
        "99999999999999999999",
        "(",
        ")",
        "[",
        "]",
        "{",
        "}",
        ",",
        ";",
        ":",
        "::",
        "->",
        "<-",
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
        "//",
        "///",
        "\n",
        " ",
    ];
    on_big_stack(|| {
        let mut rng = Lcg(4242);
        for _ in 0..8000 {
            let len = rng.below(60);
            let mut s = String::new();
            for _ in 0..len {
                s.push_str(TOKENS[rng.below(TOKENS.len())]);
                s.push(' ');
            }
            survive(s.clone());
            survive(in_body(&s));
        }
    });
}

#[test]
fn mutated_programs_never_panic() {
    const PIECES: &[&str] = &[
        "(", ")", "[", "]", "{", "}", ",", ":", ";", "-", "<-", "=", "else", "if", "None", "1",
        "x", " ", "\n", "///", "**",
    ];
    on_big_stack(|| {
        let mut rng = Lcg(77);
        let base: Vec<char> = EXAMPLE.chars().collect();
        for _ in 0..20000 {
            let mut s = base.clone();
            for _ in 0..1 + rng.below(4) {
                let at = rng.below(s.len() + 1);
                match rng.below(3) {
                    0 if at < s.len() => {
                        s.remove(at);
                    }
                    1 if at < s.len() => {
                        let piece = PIECES[rng.below(PIECES.len())];
                        s.splice(at..at + 1, piece.chars());
                    }
                    _ => {
                        let piece = PIECES[rng.below(PIECES.len())];
                        s.splice(at..at, piece.chars());
                    }
                }
            }
            survive(s.into_iter().collect());
        }
    });
}

// ---------------------------------------------------------------- printing
