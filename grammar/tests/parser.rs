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

// ---------------------------------------------------------------- items

#[test]
fn the_brief_example_parses() {
    let f = ok(EXAMPLE);
    assert_eq!(f.items.len(), 3);
    let l = loss(&f, 0);
    assert_eq!(l.doc.as_deref(), Some("Softmax focal loss."));
    assert_eq!(l.name.name, "softmax_focal");
    assert_eq!(l.inputs.len(), 2);
    assert!(l.inputs[0].diff && !l.inputs[1].diff);
    assert_eq!(dims(&l.inputs[0].ty), Some(vec!["N".into(), "C".into()]));
    assert_eq!(l.ret.as_ref().map(|t| t.dtype.name.as_str()), Some("f32"));
    assert_eq!(l.body.stmts.len(), 7);
    match &l.body.stmts[0] {
        Stmt::Param { doc, name, .. } => {
            assert_eq!(doc.as_deref(), Some("focusing"));
            assert_eq!(name.name, "gamma");
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(
        sx(l.body.tail.as_deref().unwrap()),
        "(+ (mean (* (* (neg 0.25) (** (- 1 (exp lp)) gamma)) lp)) \
         (@ (index (concat [a b] axis=0) 0) w))"
    );
    match &f.items[1] {
        Item::Fn(func) => {
            assert!(func.margin);
            assert_eq!(func.name.name, "logistic");
            assert_eq!(func.params.len(), 1);
            assert!(func.params[0].ty.is_none());
            assert_eq!(sx(func.body.tail.as_deref().unwrap()), "(softplus (neg z))");
        }
        other => panic!("{other:?}"),
    }
    match &f.items[2] {
        Item::Use(u) => {
            let path: Vec<_> = u.path.iter().map(|i| i.name.as_str()).collect();
            let items: Vec<_> = u.items.iter().map(|i| i.name.as_str()).collect();
            assert_eq!(path, ["std", "weighting"]);
            assert_eq!(items, ["ema", "safe_div"]);
            assert_eq!(text(EXAMPLE, u.span), "use std::weighting::{ema, safe_div}");
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn the_reference_examples_parse() {
    ok(r#"
/// Softmax focal loss: down-weights easy examples.
loss softmax_focal(logits: f32[N, C] diff, target: i64[N]) -> f32 {
    param gamma: f32 = 2.0
    param alpha: f32 = 0.25

    let logp = log_softmax(logits, axis=1)
    let lp   = take(logp, target, axis=1)      // f32[N]: log-probability of the target class
    let p    = exp(lp)
    report weight = (1 - p) ** gamma          // per-sample weight, returned for logging
    mean(-alpha * (1 - p) ** gamma * lp)
}

loss pseudo_label(logits: f32[N, C] diff, labels: i64[N], labeled: bool[N]) -> f32 {
    param decay: f32 = 0.999
    state threshold: f32 = 0.95
    state step: i64 = 0

    let p      = softmax(logits, axis=1)
    let conf   = stop_grad(max(p, axis=1))
    let pseudo = argmax(logits, axis=1)
    let w      = where(labeled, 1.0, where(conf >= threshold, conf * decay ** step, 0.0))
    let ce     = -take(log_softmax(logits, axis=1), where(labeled, labels, pseudo), axis=1)

    threshold <- 0.9 * threshold + 0.1 * mean(conf)
    step <- step + 1
    sum(w * ce) / maximum(sum(w), 1e-12)
}

margin fn logistic(z) { softplus(-z) }
margin fn squared_hinge(z) { relu(1 - z) ** 2 }
margin fn exponential(z) { exp(-z) }

loss calibrated_mix(score: f32[N] diff, y: f32[N]) -> f32 {
    param seed: i64 = 0
    state step: i64 = 0
    let z = score * y
    let l = ensemble(z, [logistic, squared_hinge, exponential], weights=dirichlet(3, seed, step))
    step <- step + 1
    mean(l)
}

loss weighted_cox(risk: f32[N] diff, time: f32[N], event: bool[N], weight: f32[N]) -> f32 {
    let R = f32(time[None, :] >= time[:, None])
    let m = stop_grad(max(where(R > 0, risk[None, :], -inf), axis=1))
    let den = sum(where(event, weight, 0))
    where(den > 0, -sum(weight * (risk - m)) / where(den > 0, den, 1), 0)
}
"#);
}

#[test]
fn use_forms() {
    let f = ok("use a::b::c;\nuse a::b::{c, d,}\nuse x::y");
    let uses: Vec<(Vec<&str>, Vec<&str>)> = f
        .items
        .iter()
        .map(|i| match i {
            Item::Use(u) => (
                u.path.iter().map(|i| i.name.as_str()).collect(),
                u.items.iter().map(|i| i.name.as_str()).collect(),
            ),
            other => panic!("{other:?}"),
        })
        .collect();
    assert_eq!(
        uses,
        [
            (vec!["a", "b"], vec!["c"]),
            (vec!["a", "b"], vec!["c", "d"]),
            (vec!["x"], vec!["y"]),
        ]
    );
}

#[test]
fn loss_signatures() {
    let src = "loss a(\n  x: f32[N, 3, 0x10] diff,\n  y: i64,\n  s: f32[],\n) { 1 }\nloss b() -> f64[K] { 1 }";
    let f = ok(src);
    let a = loss(&f, 0);
    assert!(a.ret.is_none());
    assert_eq!(a.inputs.len(), 3);
    assert_eq!(
        dims(&a.inputs[0].ty),
        Some(vec!["N".into(), "3".into(), "16".into()])
    );
    assert_eq!(dims(&a.inputs[1].ty), None);
    assert_eq!(dims(&a.inputs[2].ty), Some(vec![]));
    assert_eq!(text(src, a.inputs[0].span), "x: f32[N, 3, 0x10] diff");
    assert_eq!(text(src, a.inputs[1].span), "y: i64");
    assert_eq!(text(src, a.inputs[0].ty.span), "f32[N, 3, 0x10]");
    let b = loss(&f, 1);
    assert!(b.inputs.is_empty());
    assert_eq!(dims(b.ret.as_ref().unwrap()), Some(vec!["K".into()]));
}

#[test]
fn fn_definitions() {
    let src = "fn g(a, b: f32[N],) -> f32 { a }\nfn h() { 1 }";
    let f = ok(src);
    let Item::Fn(g) = &f.items[0] else { panic!() };
    assert!(!g.margin);
    assert_eq!(g.params.len(), 2);
    assert!(g.params[0].ty.is_none());
    assert_eq!(
        dims(g.params[1].ty.as_ref().unwrap()),
        Some(vec!["N".into()])
    );
    assert_eq!(text(src, g.params[1].span), "b: f32[N]");
    assert!(g.ret.is_some());
    assert_eq!(text(src, g.span), "fn g(a, b: f32[N],) -> f32 { a }");
}

#[test]
fn doc_comments() {
    let src = r#"//// not a doc
/// One.
///   Two, indented.
///
margin fn m(z) { z }

/// Lost: a blank line separates it from the item.

loss f(
    /// The scores.
    x: f32 diff,
    y: f32, /// not the doc of anything
) -> f32 {
    /// Step size.
    /// In units.
    param lr: f32 = 0.1
    // plain comment
    /// Counter.
    state step: i64 = 0
    /// ignored: lets have no docs
    let a = x
    a /// trailing
}
"#;
    let f = ok(src);
    let Item::Fn(m) = &f.items[0] else { panic!() };
    assert_eq!(m.doc.as_deref(), Some("One.\n  Two, indented.\n"));
    let l = loss(&f, 1);
    assert_eq!(l.doc, None);
    assert_eq!(l.inputs[0].doc.as_deref(), Some("The scores."));
    assert_eq!(l.inputs[1].doc, None);
    let docs: Vec<Option<&str>> = l
        .body
        .stmts
        .iter()
        .filter_map(|s| match s {
            Stmt::Param { doc, .. } | Stmt::State { doc, .. } => Some(doc.as_deref()),
            _ => None,
        })
        .collect();
    // A plain comment between the doc and the item ends the doc.
    assert_eq!(docs, [Some("Step size.\nIn units."), Some("Counter.")]);
}

// ---------------------------------------------------------------- statements

#[test]
fn statements() {
    let src = in_body(
        "let a = 1; let b: f32[N] = 2;;\n\
         param p: f32 = 0.5\n\
         state s: f32[M] = 10.0\n\
         report r = a + b\n\
         s <- s * 0.9\n\
         s[ids] <- v\n\
         assert n == m\n\
         a",
    );
    let f = ok(&src);
    let b = &loss(&f, 0).body;
    let shown: Vec<String> = b
        .stmts
        .iter()
        .map(|s| match s {
            Stmt::Let {
                name, ty, value, ..
            } => {
                format!(
                    "let {} {:?} {}",
                    name.name,
                    ty.as_ref().map(dims),
                    sx(value)
                )
            }
            Stmt::Param { name, default, .. } => format!("param {} {}", name.name, sx(default)),
            Stmt::State { name, init, .. } => format!("state {} {}", name.name, sx(init)),
            Stmt::Report { name, value, .. } => format!("report {} {}", name.name, sx(value)),
            Stmt::Update {
                target,
                index,
                value,
                ..
            } => format!(
                "update {} {:?} {}",
                target.name,
                index.as_ref().map(sx),
                sx(value)
            ),
            Stmt::Assert { cond, .. } => format!("assert {}", sx(cond)),
        })
        .collect();
    assert_eq!(
        shown,
        [
            "let a None 1",
            "let b Some(Some([\"N\"])) 2",
            "param p 0.5",
            "state s 10.0",
            "report r (+ a b)",
            "update s None (* s 0.9)",
            "update s Some(\"ids\") v",
            "assert (== n m)",
        ]
    );
    assert_eq!(sx(b.tail.as_deref().unwrap()), "a");
    let spans: Vec<&str> = b.stmts.iter().map(|s| text(&src, s.span())).collect();
    assert_eq!(
        spans,
        [
            "let a = 1",
            "let b: f32[N] = 2",
            "param p: f32 = 0.5",
            "state s: f32[M] = 10.0",
            "report r = a + b",
            "s <- s * 0.9",
            "s[ids] <- v",
            "assert n == m",
        ]
    );
    match &b.stmts[6] {
        Stmt::Update { target, .. } => assert_eq!(text(&src, target.span), "s"),
        other => panic!("{other:?}"),
    }
}

#[test]
fn blocks_without_a_tail() {
    let b = body("let a = 1\na <- 2;");
    assert_eq!(b.stmts.len(), 2);
    assert!(b.tail.is_none());
    assert!(body("").tail.is_none());
    assert_eq!(sx(body("x;").tail.as_deref().unwrap()), "x");
}

#[test]
fn update_arrow_versus_less_than() {
    assert!(matches!(body("a <- b").stmts[0], Stmt::Update { .. }));
    assert!(matches!(body("a<-b").stmts[0], Stmt::Update { .. }));
    assert_eq!(sx(&tail("a < -b")), "(< a (neg b))");
    assert_eq!(sx(&tail("a <= -b")), "(<= a (neg b))");
}

// ---------------------------------------------------------------- expressions

#[test]
fn precedence_and_associativity() {
    let cases = [
        ("a or b and c", "(or a (and b c))"),
        ("a | b & c", "(or a (and b c))"),
        ("a and b or c", "(or (and a b) c)"),
        ("a < b + c", "(< a (+ b c))"),
        ("a == b != c", "(!= (== a b) c)"),
        ("a < b and c >= d", "(and (< a b) (>= c d))"),
        ("a > b or c <= d", "(or (> a b) (<= c d))"),
        ("a + b * c", "(+ a (* b c))"),
        ("a - b - c", "(- (- a b) c)"),
        ("a / b / c", "(/ (/ a b) c)"),
        ("a @ b * c", "(* (@ a b) c)"),
        ("a ** b ** c", "(** a (** b c))"),
        ("-x ** 2", "(neg (** x 2))"),
        ("a ** -b", "(** a (neg b))"),
        ("2 ** -x ** y", "(** 2 (neg (** x y)))"),
        ("a * -b + c", "(+ (* a (neg b)) c)"),
        ("- - a", "(neg (neg a))"),
        ("not a and b", "(and (not a) b)"),
        ("!a | not not b", "(or (not a) (not (not b)))"),
        ("-x[0]", "(neg (index x 0))"),
        ("f(x)[0] ** 2", "(** (index (f x) 0) 2)"),
        ("(a + b) * c", "(* (+ a b) c)"),
        ("a / b // a comment, not floor division", "(/ a b)"),
        // A line that ends in an operator continues on the next one.
        ("a +\n  b -\n  c", "(- (+ a b) c)"),
        ("a *  // a comment\n\n  b ** c", "(* a (** b c))"),
    ];
    for (src, want) in cases {
        assert_eq!(sx(&tail(src)), want, "{src}");
    }
}

#[test]
fn literals() {
    let cases = [
        ("42", "42"),
        ("1_000", "1000"),
        ("0x1F", "31"),
        ("0XfF_fF", "65535"),
        ("9223372036854775807", "9223372036854775807"),
        ("0x7FFF_FFFF_FFFF_FFFF", "9223372036854775807"),
        ("-9223372036854775808", "-9223372036854775808"),
        ("1.0", "1.0"),
        ("1.", "1.0"),
        ("1e-12", "1e-12"),
        ("2.5E3", "2500.0"),
        ("1_000.5", "1000.5"),
        ("0.1", "0.1"),
        ("1e-999", "0.0"),
        ("true", "true"),
        ("false", "false"),
    ];
    for (src, want) in cases {
        assert_eq!(sx(&tail(src)), want, "{src}");
    }
    // `i64::MIN` is a literal, not a negation, so later passes need no special case.
    assert!(matches!(
        tail("-9223372036854775808").kind,
        ExprKind::Int(i64::MIN)
    ));
}

#[test]
fn identifiers_and_keywords() {
    // Type names and constants are ordinary names.
    assert_eq!(sx(&tail("f32(inf) + max(i64)")), "(+ (f32 inf) (max i64))");
    assert_eq!(
        sx(&tail("_x1 + loss_ + iff + diffs")),
        "(+ (+ (+ _x1 loss_) iff) diffs)"
    );
    for kw in [
        "loss", "fn", "use", "let", "param", "state", "report", "if", "else", "and", "or", "not",
        "true", "false", "assert", "None",
    ] {
        let e = err(&in_body(&format!("let {kw} = 1\n0")));
        assert_eq!(e.code, "L1001", "{kw}");
    }
    // `margin` and `diff` are keywords only in context: the standard
    // library has params named `margin`.
    let f = ok("margin fn m(margin) { margin }\n\
                loss f(diff: f32 diff, margin: f32) -> f32 {\n\
                param margin2: f32 = 0.1\n\
                let diff = diff - margin\n\
                diff\n}");
    let Item::Fn(m) = &f.items[0] else { panic!() };
    assert!(m.margin);
    assert_eq!(m.params[0].name.name, "margin");
    let l = loss(&f, 1);
    assert!(l.inputs[0].diff && !l.inputs[1].diff);
    assert_eq!(l.inputs[1].name.name, "margin");
    let e = err(&in_body("let loss = 1\nloss"));
    assert_eq!(e.message, "expected a name, found `loss`");
    assert_eq!(
        e.help.as_deref(),
        Some("`loss` is a keyword and can't be used as a name")
    );
}

#[test]
fn calls_and_arguments() {
    let cases = [
        ("f()", "(f)"),
        ("f(a, b,)", "(f a b)"),
        (
            "f(x, axis=1, keepdims = true)",
            "(f x axis=1 keepdims=true)",
        ),
        ("f(a == b)", "(f (== a b))"),
        ("f (x)", "(f x)"),
        ("f(\n  x,\n  y\n)", "(f x y)"),
    ];
    for (src, want) in cases {
        assert_eq!(sx(&tail(src)), want, "{src}");
    }
    let src = in_body("take(x, axis = 1)");
    let f = ok(&src);
    let ExprKind::Call { func, args } = &loss(&f, 0).body.tail.as_deref().unwrap().kind else {
        panic!()
    };
    assert_eq!(text(&src, func.span), "take");
    assert_eq!(text(&src, args[1].span), "axis = 1");
    assert_eq!(text(&src, args[1].name.as_ref().unwrap().span), "axis");
    // Only names are called.
    let e = err(&in_body("f(x)(y)"));
    assert_eq!(e.code, "L1001");
    assert_eq!(
        e.message,
        "expected an operator, a new line or `;`, found `(`"
    );
    assert_eq!(
        e.help.as_deref(),
        Some("only a name can be called; is an operator missing before `(`?")
    );
    let e = err(&in_body("g(x[0](y))"));
    assert_eq!(e.message, "expected `,`, `)` or an operator, found `(`");
    assert_eq!(
        e.help.as_deref(),
        Some("only a name can be called; is an operator missing before `(`?")
    );
}

#[test]
fn indexing_and_slices() {
    let cases = [
        ("x[0]", "(index x 0)"),
        ("x[i + 1]", "(index x (+ i 1))"),
        ("x[:, 0][1]", "(index (index x : 0) 1)"),
        ("x[None, :]", "(index x None :)"),
        ("x[a:]", "(index x a:)"),
        ("x[:b]", "(index x :b)"),
        ("x[a:b]", "(index x a:b)"),
        ("x[a:b:c]", "(index x a:b:c)"),
        ("x[::2]", "(index x ::2)"),
        ("x[:-1]", "(index x :(neg 1))"),
        ("x[1:,]", "(index x 1:)"),
        ("[1, 2][0]", "(index [1 2] 0)"),
        ("(a + b)[0]", "(index (+ a b) 0)"),
        ("x[y[0]]", "(index x (index y 0))"),
    ];
    for (src, want) in cases {
        assert_eq!(sx(&tail(src)), want, "{src}");
    }
    let src = in_body("x[ :, 1 : K ]");
    let f = ok(&src);
    let ExprKind::Index { indices, .. } = &loss(&f, 0).body.tail.as_deref().unwrap().kind else {
        panic!()
    };
    let spans: Vec<&str> = indices
        .iter()
        .map(|i| match i {
            IndexItem::Slice { span, .. } | IndexItem::NewAxis(span) => text(&src, *span),
            IndexItem::Index(e) => text(&src, e.span),
        })
        .collect();
    assert_eq!(spans, [":", "1 : K"]);
}

#[test]
fn lists() {
    assert_eq!(sx(&tail("[]")), "[]");
    assert_eq!(sx(&tail("[a, [b, c],]")), "[a [b c]]");
}

#[test]
fn if_expressions() {
    assert_eq!(sx(&tail("if a { 1 } else { 2 }")), "(if a {1} {2})");
    assert_eq!(
        sx(&tail(
            "if a { 1 } else if b { 2 } else if c { 3 } else { 4 }"
        )),
        "(if a {1} {(if b {2} {(if c {3} {4})})})"
    );
    assert_eq!(
        sx(&tail("if a > 0 { let t = 1\n t } else { 0 } + 1")),
        "(+ (if (> a 0) {1 stmts; t} {0}) 1)"
    );
    assert_eq!(
        sx(&tail("if (if a { b } else { c }) { 1 } else { 2 }")),
        "(if (if a {b} {c}) {1} {2})"
    );

    let src = in_body("if a { 1 } else if b { 2 } else { 3 }");
    let f = ok(&src);
    let e = loss(&f, 0).body.tail.as_deref().unwrap();
    assert_eq!(text(&src, e.span), "if a { 1 } else if b { 2 } else { 3 }");
    let ExprKind::If { else_block, .. } = &e.kind else {
        panic!()
    };
    // An `else if` is an else block holding only the nested `if`, spanning it.
    assert!(else_block.stmts.is_empty());
    let nested = else_block.tail.as_deref().unwrap();
    assert_eq!(text(&src, nested.span), "if b { 2 } else { 3 }");
    assert_eq!(else_block.span, nested.span);
}

#[test]
fn spans_are_tight_byte_offsets() {
    // Non-ASCII comments shift byte offsets: spans must still be byte-exact.
    let src = "// é ü ✓\nloss f(x: f32 diff) -> f32 {\n  let a = (x + 1) -  // c ✓\n  a ** 2 @ w;\n  -a\n}\n";
    let f = ok(src);
    let l = loss(&f, 0);
    assert_eq!(&src[l.span.start..l.span.start + 4], "loss");
    assert!(src[l.span.start..l.span.end].ends_with('}'));
    assert_eq!(text(src, l.name.span), "f");
    let Stmt::Let { value, .. } = &l.body.stmts[0] else {
        panic!()
    };
    // A line that ends in `-` continues on the next, past the comment.
    assert_eq!(text(src, value.span), "(x + 1) -  // c ✓\n  a ** 2 @ w");
    let ExprKind::Binary { lhs, rhs, .. } = &value.kind else {
        panic!()
    };
    // Parentheses make no node, but their span is kept.
    assert_eq!(text(src, lhs.span), "(x + 1)");
    assert_eq!(sx(lhs), "(+ x 1)");
    assert_eq!(text(src, rhs.span), "a ** 2 @ w");
    let t = l.body.tail.as_deref().unwrap();
    assert_eq!(text(src, t.span), "-a");
    assert_eq!(text(src, l.body.span).chars().next(), Some('{'));
}

#[test]
fn comments_whitespace_and_separators() {
    let src = "\u{FEFF}// header\r\nloss f(x: f32) -> f32 {\r\n\tlet a = x // trailing\r\n\ta; // end\r\n}\r\n// eof";
    let f = ok(src);
    assert_eq!(loss(&f, 0).body.stmts.len(), 1);
}

// ---------------------------------------------------------------- newlines

const LINE_START_HELP: &str = "a new line ends the statement, so a line cannot start with an operator: end the previous line with the operator, or wrap the whole expression in parentheses";

#[test]
fn brackets_span_lines() {
    let cases = [
        ("f(\n  a,\n  axis =\n    1,\n)", "(f a axis=1)"),
        ("f(a,\n\n  b\n  )", "(f a b)"),
        ("[\n  a,\n  [b,\n   c],\n]", "[a [b c]]"),
        ("x[\n  :,\n  1:\n    K\n]", "(index x : 1:K)"),
        // Inside brackets a line may start with an operator.
        ("(a\n  + b\n  - c)", "(- (+ a b) c)"),
        ("f(a\n  * b,\n  -c)", "(f (* a b) (neg c))"),
        ("[a\n  - b]", "[(- a b)]"),
    ];
    for (src, want) in cases {
        assert_eq!(sx(&tail(src)), want, "{src:?}");
    }
    // Folding newlines keeps every byte offset.
    let src = in_body("let l = take(\n  lp, // é ✓\n  target,\n  axis=1)\nl");
    let f = ok(&src);
    let Stmt::Let { value, .. } = &loss(&f, 0).body.stmts[0] else {
        panic!()
    };
    assert_eq!(
        text(&src, value.span),
        "take(\n  lp, // é ✓\n  target,\n  axis=1)"
    );
    let ExprKind::Call { args, .. } = &value.kind else {
        panic!()
    };
    let spans: Vec<&str> = args.iter().map(|a| text(&src, a.span)).collect();
    assert_eq!(spans, ["lp", "target", "axis=1"]);
    // Signatures, `fn` parameters and `use` groups span lines too.
    let f = ok(
        "fn g(\n  a,\n  b: f32[\n    N,\n  ],\n)\n  -> f32\n{\n  a\n}\n\
                use a::b::{\n  c,\n  d,\n}\n\
                loss h(x: f32) ->\n  f32 { x }",
    );
    let Item::Fn(g) = &f.items[0] else { panic!() };
    assert_eq!(g.params.len(), 2);
    assert_eq!(
        dims(g.params[1].ty.as_ref().unwrap()),
        Some(vec!["N".into()])
    );
    let Item::Use(u) = &f.items[1] else { panic!() };
    assert_eq!(u.items.len(), 2);
    assert!(loss(&f, 2).ret.is_some());
}

#[test]
fn comments_inside_brackets() {
    // A closing bracket in a comment closes nothing, an opening one opens
    // nothing, and the comment still ends at its line.
    let src = in_body(
        "f(a, // a `)`, a `]` and a `(`, é ✓\n  b, /// ] doc-like\n  c) + [1, // ]\n  2] // (\n",
    );
    let f = ok(&src);
    let t = loss(&f, 0).body.tail.as_deref().unwrap();
    assert_eq!(sx(t), "(+ (f a b c) [1 2])");
    let ExprKind::Binary { lhs, .. } = &t.kind else {
        panic!()
    };
    let ExprKind::Call { args, .. } = &lhs.kind else {
        panic!()
    };
    assert_eq!(text(&src, args[1].span), "b");
    assert_eq!(text(&src, args[2].span), "c");
    // Outside brackets a comment's brackets do not start folding either:
    // the next line is still a statement of its own.
    let b = body("let a = x // (\n-a");
    assert_eq!(b.stmts.len(), 1);
    assert_eq!(sx(b.tail.as_deref().unwrap()), "(neg a)");
    // A comment that closes the call's bracket would leave it open.
    let e = err(&in_body("f(a // )\n"));
    assert_eq!(e.message, "expected `,`, `)` or an operator, found `}`");
}

#[test]
fn a_line_ending_in_an_operator_continues() {
    let b = body(
        "let a = x +\n  y\n\
         let c =\n\n  a\n\
         report r =  // why\n  a\n\
         s <-\n  s * 0.9\n\
         assert a ==\n  c\n\
         a and\n  not c or\n  c",
    );
    let shown: Vec<String> = b
        .stmts
        .iter()
        .map(|s| match s {
            Stmt::Let { value, .. } | Stmt::Report { value, .. } | Stmt::Update { value, .. } => {
                sx(value)
            }
            Stmt::Assert { cond, .. } => sx(cond),
            other => panic!("{other:?}"),
        })
        .collect();
    assert_eq!(shown, ["(+ x y)", "a", "a", "(* s 0.9)", "(== a c)"]);
    assert_eq!(sx(b.tail.as_deref().unwrap()), "(or (and a (not c)) c)");
    // In an `if` condition too.
    assert_eq!(
        sx(&tail("if a >\n  b { 1 } else { 2 }")),
        "(if (> a b) {1} {2})"
    );
}

#[test]
fn a_line_starting_with_minus_is_a_new_statement() {
    // The bug that made newlines significant: this was one statement,
    // `let pen = sum(w) - mean(lp) + lam * pen`.
    let b = body("let pen = sum(w)\n-mean(lp) + lam * pen");
    assert_eq!(b.stmts.len(), 1);
    let Stmt::Let { value, .. } = &b.stmts[0] else {
        panic!()
    };
    assert_eq!(sx(value), "(sum w)");
    assert_eq!(
        sx(b.tail.as_deref().unwrap()),
        "(+ (neg (mean lp)) (* lam pen))"
    );
    // `not` and `!` start statements the same way.
    let b = body("let a = b\n  not c");
    assert_eq!(b.stmts.len(), 1);
    assert_eq!(sx(b.tail.as_deref().unwrap()), "(not c)");
    let b = body("s <- a\n!c");
    assert!(matches!(&b.stmts[0], Stmt::Update { value, .. } if sx(value) == "a"));
    assert_eq!(sx(b.tail.as_deref().unwrap()), "(not c)");
}

#[test]
fn a_line_cannot_start_with_an_infix_operator() {
    for op in [
        "+", "*", "/", "@", "**", "==", "!=", "<", "<=", ">", ">=", "&", "|", "and", "or",
    ] {
        let src = in_body(&format!("let a = x\n  {op} y\na"));
        let e = err(&src);
        assert_eq!(e.code, "L1001", "{op}");
        assert_eq!(
            e.message,
            format!("expected a statement or `}}`, found `{op}`")
        );
        assert_eq!(text(&src, e.span_range), op);
        assert_eq!(e.help.as_deref(), Some(LINE_START_HELP), "{op}");
    }
    // After a tail expression, and after a `;`.
    let e = err(&in_body("a\n  + b"));
    assert_eq!(e.help.as_deref(), Some(LINE_START_HELP));
    let e = err(&in_body("a;\n* b"));
    assert_eq!(e.help.as_deref(), Some(LINE_START_HELP));
    // Where the line may continue, the operator is simply not an operand.
    let e = err(&in_body("let a =\n  + b\na"));
    assert_eq!(e.message, "expected an expression, found `+`");
    assert_eq!(e.help, None);
    // Nor does an update's `<-` start a line.
    let e = err(&in_body("s\n  <- s + 1"));
    assert_eq!(e.message, "expected a statement or `}`, found `<-`");
    assert_eq!(
        e.help.as_deref(),
        Some(
            "a new line ends the statement, so a line cannot start with `<-`: write `s <- ...` on one line"
        )
    );
    // What a new line cuts short is named as "a new line".
    let src = in_body("let a\n  = x\na");
    let e = err(&src);
    assert_eq!(e.message, "expected `:` or `=`, found a new line");
    assert_eq!(text(&src, e.span_range), "\n");
    assert_eq!(
        e.help.as_deref(),
        Some(
            "a new line ends the statement here; to break a long line, break it after an operator, `=`, `<-` or `->`, or inside `(...)`"
        )
    );
    let e = err(&in_body("if a > 0\n{ 1 } else { 2 }"));
    assert_eq!(e.message, "expected `{` or an operator, found a new line");
    assert_eq!(
        e.help.as_deref(),
        Some("a new line ends the statement here: put the `{` on this line")
    );
}

#[test]
fn else_may_start_a_line() {
    assert_eq!(
        sx(&tail(
            "if a {\n  1\n}\nelse if b {\n  2\n}\n\n// the rest\nelse {\n  3\n}"
        )),
        "(if a {1} {(if b {2} {3})})"
    );
    let b = body("let k = if a { 1 }\n  else { 2 }\nk");
    let Stmt::Let { value, .. } = &b.stmts[0] else {
        panic!()
    };
    assert_eq!(sx(value), "(if a {1} {2})");
    // But a missing `else` is still missing when the next line is not one.
    let e = err(&in_body("let k = if a { 1 }\n\nk"));
    assert_eq!(e.message, "expected `else`, found `k`");
}

#[test]
fn semicolons_separate_statements() {
    let b = body("let a = 1; let b = 2; s <- a; a + b");
    assert_eq!(b.stmts.len(), 3);
    assert_eq!(sx(b.tail.as_deref().unwrap()), "(+ a b)");
    // Empty statements, leading or trailing, and `;` mixed with new lines.
    let b = body(";;\n; let a = 1;;\n;\n\n  a ;");
    assert_eq!(b.stmts.len(), 1);
    assert_eq!(sx(b.tail.as_deref().unwrap()), "a");
    let f = ok("fn g(x) { let a = x; a * 2 }; fn h() { 1 };");
    let Item::Fn(g) = &f.items[0] else { panic!() };
    assert_eq!(g.body.stmts.len(), 1);
    assert_eq!(sx(g.body.tail.as_deref().unwrap()), "(* a 2)");
}

#[test]
fn blocks_inside_brackets_keep_their_lines() {
    // The braces of an `if` inside a call: newlines inside them still
    // separate statements, those between `}` and `else` are spaces.
    let src = in_body("f(if c {\n  let t = a\n  t\n}\nelse {\n  b\n}, [1,\n  2])");
    let f = ok(&src);
    let t = loss(&f, 0).body.tail.as_deref().unwrap();
    assert_eq!(sx(t), "(f (if c {1 stmts; t} {b}) [1 2])");
    assert_eq!(
        sx(&tail("[g(if c {\n  a\n} else {\n  b\n})]")),
        "[(g (if c {a} {b}))]"
    );
    // Two lines inside the braces are two statements, not one expression...
    let src = in_body("f(if c {\n  a\n  b\n} else { 1 })");
    let e = err(&src);
    assert_eq!(e.code, "L1004");
    assert_eq!(text(&src, e.span_range), "a");
    // ...so a line there cannot start with an operator either,
    let e = err(&in_body("f(if c {\n  a\n  + b\n} else { 1 })"));
    assert_eq!(e.help.as_deref(), Some(LINE_START_HELP));
    // unless brackets inside the braces fold it again.
    assert_eq!(
        sx(&tail("f(if c {\n  (a\n  + b)\n} else { 1 })")),
        "(f (if c {(+ a b)} {1}))"
    );
}

#[test]
fn crlf_line_endings() {
    let src = "loss f(x: f32) -> f32 {\r\n  let a = g(x,\r\n    1) +\r\n    2\r\n  s <- a\r\n  if a > 0 { a }\r\n  else { -a }\r\n}\r\n";
    let f = ok(src);
    let b = &loss(&f, 0).body;
    assert_eq!(b.stmts.len(), 2);
    assert_eq!(
        text(src, b.stmts[0].span()),
        "let a = g(x,\r\n    1) +\r\n    2"
    );
    assert_eq!(sx(b.tail.as_deref().unwrap()), "(if (> a 0) {a} {(neg a)})");
    let e = err("loss f(x: f32) -> f32 {\r\n  a\r\n  + b\r\n}\r\n");
    assert_eq!(e.message, "expected a statement or `}`, found `+`");
    assert_eq!(e.help.as_deref(), Some(LINE_START_HELP));
    let src = "loss f(x: f32) -> f32 {\r\n  let a\r\n  = x\r\n  a\r\n}";
    let e = err(src);
    assert_eq!(e.message, "expected `:` or `=`, found a new line");
    assert_eq!(text(src, e.span_range), "\n");
}

#[test]
fn doc_comments_inside_the_input_list() {
    let src = "loss f(\n    /// The scores (logits).\n    /// Closers ) and ] are text here.\n    x: f32[N] diff,\n    // plain\n    y: f32[N], /// trailing: not a doc\n    /// Last.\n    z: f32,\n) -> f32 { x }";
    for src in [src.to_string(), src.replace('\n', "\r\n")] {
        let f = ok(&src);
        let docs: Vec<Option<&str>> = loss(&f, 0)
            .inputs
            .iter()
            .map(|i| i.doc.as_deref())
            .collect();
        assert_eq!(
            docs,
            [
                Some("The scores (logits).\nClosers ) and ] are text here."),
                None,
                Some("Last."),
            ],
            "{src:?}"
        );
    }
}

// ---------------------------------------------------------------- errors

#[test]
fn syntax_errors_name_what_was_expected_and_found() {
    let cases: &[(&str, &str, Option<&str>)] = &[
        (
            "loss f(x: f32) -> f32 { f(1, ;) }",
            "expected an argument or `)`, found `;`",
            None,
        ),
        (
            "loss f(x: f32) -> f32 { (x; }",
            "expected `)` or an operator, found `;`",
            None,
        ),
        (
            "loss f(x: f32) -> f32 {\n  let a = x +\n}",
            "expected an expression, found `}`",
            None,
        ),
        (
            "loss f(x) -> f32 { x }",
            "expected `:`, found `)`",
            Some("each input needs a type, like `logits: f32[N, C] diff`"),
        ),
        (
            "loss f(x: f32) f32 { x }",
            "expected `{` or `->`, found `f32`",
            Some("the return type goes after `->`, like `-> f32`"),
        ),
        (
            "loss f(x: f32 y: f32) -> f32 { x }",
            "expected `diff`, `,` or `)`, found `y`",
            Some("is a `,` missing before `y`?"),
        ),
        (
            "loss f(x: f32) -> f32 {\n  lsm = x\n  lsm\n}",
            "expected an operator, a new line or `;`, found `=`",
            Some("to bind a name, write `let lsm = ...`; to compare two values, use `==`"),
        ),
        (
            "loss f(x: f32) -> f32 {\n  param gamma = 2.0\n  x\n}",
            "expected `:`, found `=`",
            Some("a `param` needs a type, like `param gamma: f32 = 2.0`"),
        ),
        (
            "los f(x: f32) -> f32 { x }",
            "expected an item (`loss`, `fn` or `use`), found `los`",
            None,
        ),
        (
            "loss f(x: f32) -> f32 { x && y }",
            "expected an expression, found `&`",
            Some("logical and is written `and` (or `&`)"),
        ),
        (
            "loss f(x: f32) -> f32 { x }}",
            "expected an item (`loss`, `fn` or `use`) or end of file, found `}`",
            Some("this `}` has no matching opening bracket"),
        ),
        (
            "loss f(x: f32) -> f32 {\n  mean(x * x))\n}",
            "expected an operator, a new line or `;`, found `)`",
            Some("this `)` has no matching opening bracket; the `{` on line 1 is still open"),
        ),
        (
            "loss f(x: f32) -> f32 { .5 }",
            "expected a statement or `}`, found `.5`",
            Some("a number starts with a digit, like `0.5`"),
        ),
        (
            "loss f(x: f32) -> f32 { if if a {1} else {2} {3} else {4} }",
            "expected a condition, found `if`",
            Some(
                "an `if` used in a condition must be in parentheses: `if (if a { b } else { c }) { ... }`",
            ),
        ),
        (
            "loss f(x: f32) -> f32 { x[None + 1] }",
            "expected `,` or `]`, found `+`",
            None,
        ),
        (
            "loss f(x: f32) -> f32 { log_softmax(x axis=1) }",
            "expected `,`, `)` or an operator, found `axis`",
            Some("is a `,` missing before `axis`?"),
        ),
        (
            "loss f(x: f32) -> f32 {\n  state step: i64 = 0\n  step = step + 1\n  x\n}",
            "expected an operator, a new line or `;`, found `=`",
            Some("a `state` is updated with `<-`: `step <- ...`"),
        ),
        (
            "loss f(x: f32) -> f32 { (x ** 2).mean() }",
            "expected an operator, a new line or `;`, found `.`",
            Some("there are no methods: write `mean(x)` instead of `x.mean()`"),
        ),
        (
            "def f(x) { x }",
            "expected an item (`loss`, `fn` or `use`), found `def`",
            Some("functions are written `fn name(args) { ... }`"),
        ),
        (
            "loss f(x: f32[-1, C]) -> f32 { x }",
            "expected a dimension (a name like `N` or a number) or `]`, found `-`",
            Some("a dimension is a size: a name like `N` or a whole number"),
        ),
    ];
    for (src, message, help) in cases {
        let e = err(src);
        assert_eq!(e.code, "L1001", "{src}");
        assert_eq!(&e.message, message, "{src}");
        assert_eq!(e.help.as_deref(), *help, "{src}");
    }
}

#[test]
fn if_without_else() {
    let src = "loss f(x: f32) -> f32 {\n  let k = if x > 0 { 1.0 }\n  k\n}";
    let e = err(src);
    assert_eq!(e.code, "L1001");
    assert_eq!(e.message, "expected `else`, found `k`");
    assert_eq!(
        e.help.as_deref(),
        Some("an `if` expression needs an `else` branch: both branches give a value")
    );
    let e = err(&in_body("if a { 1 } else if b { 2 }"));
    assert_eq!(e.message, "expected `else`, found `}`");
}

#[test]
fn unclosed_brackets_are_named_with_their_line() {
    // After a new line, the block could go on with a statement or end.
    let src = "loss f(x: f32) -> f32 {\n  let a = x\n  a\n";
    let e = err(src);
    assert_eq!(e.message, "expected a statement or `}`, found end of file");
    assert_eq!(e.span_range, Span::new(src.len(), src.len()));
    assert_eq!(
        e.help.as_deref(),
        Some("the `{` on line 1 is never closed; every `{` needs a matching `}`")
    );
    // Right after an expression, the expression could go on too.
    let src = "loss f(x: f32) -> f32 {\n  let a = x\n  a";
    let e = err(src);
    assert_eq!(
        e.message,
        "expected an operator, a new line or `;`, found end of file"
    );
    assert_eq!(e.span_range, Span::new(src.len(), src.len()));
    assert_eq!(
        e.help.as_deref(),
        Some("the `{` on line 1 is never closed; every `{` needs a matching `}`")
    );

    let src = "loss f(x: f32) -> f32 {\n  let a = g(x\n  a\n}";
    let e = err(src);
    assert_eq!(e.message, "expected `,`, `)` or an operator, found `a`");
    assert_eq!(e.help.as_deref(), Some("the `(` on line 2 is still open"));

    let e = err("loss f(x: f32) -> f32 { g(x] }");
    assert_eq!(
        e.help.as_deref(),
        Some("this `]` has no matching opening bracket; the `(` on line 1 is still open")
    );
    let e = err("loss f(x: f32) -> f32 { [g(x]] }");
    assert_eq!(
        e.help.as_deref(),
        Some("the `(` on line 1 is still open; close it with `)` first")
    );
}

#[test]
fn misplaced_statements() {
    let src = in_body("x\nlet y = 2\ny");
    let e = err(&src);
    assert_eq!(e.code, "L1004");
    assert_eq!(
        e.message,
        "an expression here is only allowed as the last line of a block"
    );
    assert_eq!(text(&src, e.span_range), "x");
    assert_eq!(
        e.help.as_deref(),
        Some("bind it with `let name = ...`, or move it to the end of the block")
    );
    let e = err(&in_body("return x"));
    assert_eq!(
        e.help.as_deref(),
        Some("there is no `return`: a block's value is its last expression")
    );
    // The next line starting with `-` is the likeliest reason: it negates.
    let src = in_body("let a = x\na\n  -b");
    let e = err(&src);
    assert_eq!(e.code, "L1004");
    assert_eq!(text(&src, e.span_range), "a");
    assert_eq!(
        e.help.as_deref(),
        Some(
            "a new line ends the statement, so the `-` that starts the next line negates instead of subtracting: end this line with `-` to continue it"
        )
    );
    // After a `;` the `-` was meant to start a statement.
    let e = err(&in_body("a; -b"));
    assert_eq!(
        e.help.as_deref(),
        Some("bind it with `let name = ...`, or move it to the end of the block")
    );
    // Two expressions on one line are never two statements: a syntax error.
    let e = err(&in_body("a b"));
    assert_eq!(e.code, "L1001");
    assert_eq!(
        e.message,
        "expected an operator, a new line or `;`, found `b`"
    );
    assert_eq!(
        e.help.as_deref(),
        Some("two expressions side by side: is an operator or a `,` missing?")
    );
    let e = err(&in_body("a let b = 1\nb"));
    assert_eq!(
        e.message,
        "expected an operator, a new line or `;`, found `let`"
    );
    assert_eq!(
        e.help.as_deref(),
        Some("statements are separated by a new line or `;`")
    );

    let src = "fn g(x) {\n  param a: f32 = 1.0\n  x\n}";
    let e = err(src);
    assert_eq!(e.code, "L1004");
    assert_eq!(e.message, "`param` is not allowed inside a `fn`");
    assert_eq!(text(src, e.span_range), "param a: f32 = 1.0");
    let e = err("fn g(x) { if x { state s: f32 = 0.0; 1 } else { 2 } }");
    assert_eq!(e.message, "`state` is not allowed inside a `fn`");
    let e = err(&in_body("if x { param a: f32 = 1.0; 1 } else { 2 }"));
    assert_eq!(
        e.message,
        "`param` must be declared at the top level of a `loss` body"
    );
    // After a `fn`, a `loss` may declare params again.
    ok("fn g(x) { x }\nloss f(x: f32) -> f32 { param a: f32 = 1.0\n a }");
}

#[test]
fn bad_update_targets_and_indexes() {
    let e = err(&in_body("x + 1 <- 2"));
    assert_eq!(e.code, "L1001");
    assert_eq!(
        e.message,
        "the left side of `<-` must be a state name, or a state name with one index"
    );
    let e = err(&in_body("x[:, 0] <- 2"));
    assert_eq!(
        e.help.as_deref(),
        Some("an update takes one index expression, like `lambdas[ids] <- values`")
    );
    let e = err(&in_body("x[]"));
    assert_eq!((e.code, e.message.as_str()), ("L1001", "empty index `[]`"));
    let e = err("use foo;");
    assert_eq!(e.message, "a `use` needs a module path and an item");
}

#[test]
fn number_errors() {
    let cases = [
        (
            "99999999999999999999",
            "integer literal `99999999999999999999` is out of range for i64",
        ),
        (
            "9223372036854775808",
            "integer literal `9223372036854775808` is out of range for i64",
        ),
        (
            "-(9223372036854775808)",
            "integer literal `9223372036854775808` is out of range for i64",
        ),
        (
            "0x8000000000000000",
            "integer literal `0x8000000000000000` is out of range for i64",
        ),
        (
            "0x1_0000_0000_0000_0000",
            "integer literal `0x1_0000_0000_0000_0000` is out of range for i64",
        ),
        ("1e999", "float literal `1e999` is too large for f64"),
        ("2x", "malformed number `2x`"),
        ("0x", "malformed number `0x`"),
        ("1.5.2", "malformed number `1.5.2`"),
        ("1e+", "malformed number `1e+`"),
    ];
    for (lit, message) in cases {
        let src = in_body(lit);
        let e = err(&src);
        assert_eq!((e.code, e.message.as_str()), ("L1003", message), "{lit}");
    }
    let e = err("loss f(x: f32[N, 2.5]) -> f32 { x }");
    assert_eq!(
        (e.code, e.message.as_str()),
        (
            "L1003",
            "a dimension must be a whole number or a name, not `2.5`"
        )
    );
    let e = err("loss f(x: f32[99999999999999999999]) -> f32 { x }");
    assert_eq!(e.code, "L1003");
}

#[test]
fn invalid_characters() {
    let cases = [
        (
            "loss f(x: f32) -> f32 { x # c\n}",
            "invalid character `#`",
            "#",
        ),
        (
            "loss f(x: f32) -> f32 { x ? 1 : 2 }",
            "invalid character `?`",
            "?",
        ),
        (
            "loss f(x: f32) -> f32 { x ^ 2 }",
            "invalid character `^`",
            "^",
        ),
        (
            "loss f(x: f32) -> f32 { x \u{2212} 1 }",
            "invalid character `\u{2212}` (U+2212)",
            "\u{2212}",
        ),
        (
            "loss f(x: f32) -> f32 { \u{e9} }",
            "invalid character `\u{e9}` (U+00E9)",
            "\u{e9}",
        ),
        (
            "loss f(x: f32) -> f32 { x\0 }",
            "NUL byte in the source",
            "\0",
        ),
        (
            "// \0\nloss f(x: f32) -> f32 { x }",
            "NUL byte in the source",
            "\0",
        ),
        (
            "// a\u{202E}b\nloss f(x: f32) -> f32 { x }",
            "invalid control character U+202E",
            "\u{202E}",
        ),
        (
            "loss f(x: f32) -> f32 { x } // \u{FFFD}",
            "invalid UTF-8 in the source (shown as U+FFFD)",
            "\u{FFFD}",
        ),
        (
            "loss f(x: f32) -> f32 { \"s\" }",
            "invalid character `\"`",
            "\"",
        ),
    ];
    for (src, message, at) in cases {
        let e = err(src);
        assert_eq!((e.code, e.message.as_str()), ("L1005", message), "{src:?}");
        assert_eq!(text(src, e.span_range), at, "{src:?}");
    }
    // Anything but control characters is fine inside comments.
    ok("// résumé: α ≤ β “quoted” #tag ?\nloss f(x: f32) -> f32 { x }");
}

#[test]
fn empty_files() {
    for src in ["", "   \n\t\n", "// only a comment\n/// and a doc\n"] {
        let e = err(src);
        assert_eq!(e.code, "L1006", "{src:?}");
        assert_eq!(
            e.message,
            "this file defines nothing: no `loss`, `fn` or `use` items"
        );
    }
}

#[test]
fn errors_are_miette_diagnostics() {
    let src = "loss f(x: f32) -> f32 {\n  let k = if x { 1 }\n  k\n}";
    let e = err(src);
    assert_eq!(e.code().map(|c| c.to_string()).as_deref(), Some("L1001"));
    assert!(e.help().is_some());
    assert_eq!(e.to_string(), e.message);
    assert_eq!(e.span, e.span_range.into());
    let labels: Vec<_> = e.labels().unwrap().collect();
    assert_eq!(labels.len(), 1);
    assert!(labels[0].primary());
    assert_eq!(labels[0].label(), Some("expected `else`"));
    assert_eq!(labels[0].offset(), src.find("k\n}").unwrap());

    // Rendering with the source attached works and shows code, message, help.
    let mut out = String::new();
    let report = miette::Report::new(e).with_source_code(src.to_string());
    miette::NarratableReportHandler::new()
        .render_report(&mut out, report.as_ref())
        .unwrap();
    assert!(out.contains("expected `else`, found `k`"), "{out}");
    assert!(out.contains("L1001"), "{out}");
    assert!(out.contains("needs an `else` branch"), "{out}");
}

// ---------------------------------------------------------------- limits

#[test]
fn nesting_limit_is_exact() {
    let at_limit = in_body(&format!(
        "{}x{}",
        "(".repeat(MAX_NESTING - 1),
        ")".repeat(MAX_NESTING - 1)
    ));
    on_big_stack(move || {
        ok(&at_limit);
    });
    let over = in_body(&format!(
        "{}x{}",
        "(".repeat(MAX_NESTING),
        ")".repeat(MAX_NESTING)
    ));
    let e = err(&over);
    assert_eq!(e.code, "L1002");
    assert_eq!(
        e.message,
        "brackets are nested too deeply (more than 256 levels)"
    );
    assert_eq!(
        e.help.as_deref(),
        Some("split the expression with `let` bindings")
    );
    // The block's `{` is level 1, so the 256th `(` is the one too many.
    let nth = over.match_indices('(').nth(MAX_NESTING).unwrap().0;
    assert_eq!(e.span_range, Span::new(nth, nth + 1));
}

#[test]
fn deep_nesting_of_every_bracket_kind_parses() {
    let n = MAX_NESTING - 2;
    let shapes = [
        format!("{}x{}", "f(".repeat(n), ")".repeat(n)),
        format!("{}x{}", "[".repeat(n), "]".repeat(n)),
        format!("{}0{}", "x[".repeat(n), "]".repeat(n)),
        format!("{}x{}", "if c { ".repeat(n), " } else { 1 }".repeat(n)),
        format!(
            "{}x{}",
            "if c { let a = -x ** 2; ".repeat(n),
            " } else { 1 }".repeat(n)
        ),
    ];
    for shape in shapes {
        let src = in_body(&shape);
        on_big_stack(move || {
            ok(&src);
        });
    }
}

#[test]
fn five_thousand_parentheses_are_an_error_not_a_crash() {
    let src = in_body(&format!("{}x{}", "(".repeat(5000), ")".repeat(5000)));
    let e = err(&src);
    assert_eq!(e.code, "L1002");
}

#[test]
fn long_operator_chains_do_not_overflow() {
    let chains = [
        format!("a{}", " + a".repeat(19_999)),
        format!("a{}", " ** a".repeat(19_999)),
        format!("a{}", " ** -a".repeat(19_999)),
        format!("{}a", "-".repeat(20_000)),
        format!("{}a", "not ".repeat(20_000)),
        format!("{}a", "- !".repeat(10_000)),
        format!("a{}", "[0]".repeat(20_000)),
        format!(
            "if c {{ 1 }}{} else {{ 2 }}",
            " else if c { 1 }".repeat(5_000)
        ),
    ];
    for chain in chains {
        let src = in_body(&chain);
        let result = on_big_stack(move || parse(&src).map(|f| print_file(&f).len()));
        // Either outcome is allowed; crashing is not. Past the depth bound
        // it is an L1002 error.
        if let Err(e) = result {
            assert_eq!(e.code, "L1002", "{}", e.message);
            assert!(e.message.starts_with("expression is nested too deeply"));
        }
    }
}

#[test]
fn chains_below_the_depth_bound_parse() {
    for chain in [
        format!("a{}", " + a".repeat(1000)),
        format!("a{}", " ** a".repeat(900)),
        format!("{}a", "-".repeat(900)),
    ] {
        let src = in_body(&chain);
        on_big_stack(move || {
            ok(&src);
        });
    }
}

#[test]
fn megabyte_inputs_finish() {
    let mb = 1 << 20;
    let inputs = [
        "(".repeat(mb),
        in_body(&"-".repeat(mb)),
        in_body(&"if ".repeat(mb / 3)),
        in_body(&"[".repeat(mb)),
        "loss ".repeat(mb / 5),
        format!("// {}", "x".repeat(mb)),
        in_body(&"9".repeat(mb)),
    ];
    for src in inputs {
        on_big_stack(move || {
            let _ = parse(&src);
        });
    }
}

/// Nested constructs whose parse fails deep inside used to be retried at
/// every level (`x - (...` as `x` then `-(...`), which took exponential time.
#[test]
fn failed_continuations_are_not_retried() {
    let n = 60;
    let shapes = [
        format!("{}x +{}", "x[if c { ".repeat(n), " } else { 1 }]".repeat(n)),
        format!(
            "{}x +{}",
            "x - if c { ".repeat(n),
            " } else { 1 }".repeat(n)
        ),
        format!(
            "{}x +{}",
            "f (if c { ".repeat(n),
            " } else { 1 })".repeat(n)
        ),
    ];
    for shape in shapes {
        let src = in_body(&shape);
        let start = std::time::Instant::now();
        let e = on_big_stack(move || parse(&src).unwrap_err());
        assert_eq!(e.message, "expected an expression, found `}`");
        assert!(start.elapsed().as_secs() < 20, "took {:?}", start.elapsed());
    }
}

// ---------------------------------------------------------------- robustness

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
        let mut rng = Lcg(0x5eed);
        for _ in 0..300 {
            let len = rng.below(200);
            let bytes: Vec<u8> = (0..len).map(|_| rng.next() as u8).collect();
            survive(String::from_utf8_lossy(&bytes).into_owned());
        }
        for _ in 0..300 {
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
        let mut rng = Lcg(42);
        for _ in 0..400 {
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
        let mut rng = Lcg(7);
        let base: Vec<char> = EXAMPLE.chars().collect();
        for _ in 0..500 {
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

#[test]
fn print_format_is_stable() {
    let src = "/// Doc \"quoted\".\nloss f(x: f32[N, 3] diff, s: f32[]) -> f32 {\n  let a: f32 = -x[:, None] ** 2.5\n  a <- [1e-12, 0.1]\n  a[i] <- if b { 1 } else { 2 }\n  g(a, axis=1) + x[::2]\n}\nmargin fn m(z: f32) -> f32 { not z }\nuse std::w::e\n";
    let want = r#"; losslang ast v1
(file
  (loss f@23..24 @18..174
    (doc "Doc \"quoted\".")
    (input x@25..26 diff @25..42
      (type f32@28..31 dims @28..37
        (dim N @32..33)
        (dim 3 @35..36)))
    (input s@44..45 @44..52
      (type f32@47..50 dims @47..52))
    (ret f32@57..60 @57..60)
    (block @61..174
      (let a@69..70 @65..96
        (type f32@72..75 @72..75)
        (neg @78..96
          (binary ** @79..96
            (index @79..89
              (name x @79..80)
              (slice @81..82)
              (newaxis @84..88))
            (float 2.5 @93..96))))
      (update a@99..100 @99..116
        (list @104..116
          (float 1e-12 @105..110)
          (float 0.1 @112..115)))
      (update a@119..120 @119..148
        (at
          (name i @121..122))
        (if @127..148
          (name b @130..131)
          (block @132..137
            (int 1 @134..135))
          (block @143..148
            (int 2 @145..146))))
      (binary + @151..172
        (call g@151..152 @151..163
          (arg @153..154
            (name a @153..154))
          (arg axis@156..160 @156..162
            (int 1 @161..162)))
        (index @166..172
          (name x @166..167)
          (slice @168..171
            (step
              (int 2 @170..171)))))))
  (fn m@185..186 margin @175..211
    (fnparam z@187..188 @187..193
      (type f32@190..193 @190..193))
    (ret f32@198..201 @198..201)
    (block @202..211
      (not @204..209
        (name z @208..209))))
  (use @212..225
    (path std @216..219)
    (path w @221..222)
    (item e @224..225)))
"#;
    assert_eq!(print_file(&ok(src)), want);
}

#[test]
fn printed_floats_read_back_exactly() {
    for lit in [
        "0.1",
        "1e-12",
        "2.5E3",
        "3.141592653589793",
        "1e300",
        "5e-324",
    ] {
        let e = tail(lit);
        let ExprKind::Float(v) = e.kind else { panic!() };
        let printed = print_file(&ok(&in_body(lit)));
        let shown = format!("{v:?}");
        assert!(printed.contains(&format!("(float {shown} @")), "{printed}");
        assert_eq!(shown.parse::<f64>().unwrap().to_bits(), v.to_bits());
    }
}
