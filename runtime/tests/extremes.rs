//! Numerical extremes for every standard-library loss on every backend this build
//! contains: logits at ±1e4 and every differentiable input scaled by 1e4,
//! temperatures at 1e-4, all-masked batches, a single class, identical and zero
//! embeddings, ties in survival times and sort keys.
//!
//! Each scenario starts from the loss's public conformance inputs (`d0-s0`, which
//! satisfy every precondition of STDLIB.md) and changes what the scenario is about.
//! The loss and every gradient must be finite, must take the value the spec's edge
//! rule fixes where it fixes one, and every backend must match the interpreter
//! within the conformance tolerances (loss 2e-4·max(1, |exp|); gradients
//! 1e-3·|exp| + 1e-5·max(1, max|exp|)). A scenario the spec leaves undefined is
//! skipped where it is built, with the rule quoted.

use losslang_compiler::backend::{Backend, Executor, Interp};
use losslang_compiler::ops::Scalar;
use losslang_compiler::program::{Call, CompileOptions, Outputs, Program, compile};
use losslang_compiler::sema::Source;
use losslang_compiler::value::{Data, Tensor};
use losslang_runtime::io::read_npy;
use losslang_runtime::loader::FileLoader;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn backends() -> Vec<Backend> {
    [Backend::Interp, Backend::Jit, Backend::Candle]
        .into_iter()
        .filter(|b| losslang_runtime::backends::available(*b))
        .collect()
}

/// One scenario: a name, the call, and the loss value the spec fixes (if any).
struct Scenario {
    name: String,
    call: Call,
    exact: Option<f64>,
    /// Whether the backends' gradients must match the interpreter's (false only where
    /// the spec says f32 rounding decides the result).
    compare_grads: bool,
}

/// The loss's program and its conformance inputs.
struct Base {
    loss: String,
    p: Program,
    call: Call,
}

impl Base {
    fn has_input(&self, name: &str) -> bool {
        self.call.inputs.iter().any(|(n, _)| n == name)
    }

    fn has_param(&self, name: &str) -> bool {
        self.p.opt.params.iter().any(|p| p.name == name)
    }

    /// The base call with `f` applied.
    fn with(&self, name: &str, f: impl FnOnce(&mut Call)) -> Scenario {
        let mut call = self.call.clone();
        f(&mut call);
        Scenario {
            name: name.to_string(),
            call,
            exact: None,
            compare_grads: true,
        }
    }

    /// Fresh valid random inputs with some dims changed (e.g. a single class).
    fn regenerate(&self, name: &str, changes: &[(&str, i64)]) -> Scenario {
        let mut dims: BTreeMap<String, i64> = self.call.dims.clone();
        for (decl, (_, t)) in self.p.opt.inputs.iter().zip(&self.call.inputs) {
            for (d, &n) in decl.ty.shape.iter().zip(&t.shape) {
                let mut syms = vec![];
                d.symbols(&mut syms);
                if let [s] = syms.as_slice() {
                    dims.insert(s.clone(), n as i64);
                }
            }
        }
        for (k, v) in changes {
            dims.insert((*k).to_string(), *v);
        }
        let inputs = losslang_runtime::random::random_inputs(&self.p.opt, &dims, 3)
            .unwrap_or_else(|e| panic!("{}: {e}", self.loss));
        let mut call = self.call.clone();
        call.inputs = inputs;
        Scenario {
            name: name.to_string(),
            call,
            exact: None,
            compare_grads: true,
        }
    }
}

fn input_mut<'a>(call: &'a mut Call, name: &str) -> &'a mut Tensor {
    &mut call
        .inputs
        .iter_mut()
        .find(|(n, _)| n == name)
        .unwrap_or_else(|| panic!("no input {name}"))
        .1
}

fn map_f(call: &mut Call, name: &str, f: impl Fn(usize, f64) -> f64) {
    let t = input_mut(call, name);
    if let Data::F(v) = &mut t.data {
        for (i, x) in v.iter_mut().enumerate() {
            *x = f64::from(f(i, *x) as f32);
        }
    }
}

fn map_i(call: &mut Call, name: &str, f: impl Fn(usize, i64) -> i64) {
    let t = input_mut(call, name);
    if let Data::I(v) = &mut t.data {
        for (i, x) in v.iter_mut().enumerate() {
            *x = f(i, *x);
        }
    }
}

fn set_b(call: &mut Call, name: &str, b: bool) {
    let t = input_mut(call, name);
    if let Data::B(v) = &mut t.data {
        v.iter_mut().for_each(|x| *x = b);
    }
}

fn set_param(call: &mut Call, name: &str, v: Scalar) {
    call.params.retain(|(n, _)| n != name);
    call.params.push((name.to_string(), v));
}

/// `dst` takes `src`'s values (same shape).
fn copy_input(call: &mut Call, src: &str, dst: &str) {
    let v = input_mut(call, src).clone();
    *input_mut(call, dst) = v;
}

/// Row `i` of every row of a [rows, cols] tensor becomes row 0.
fn identical_rows(call: &mut Call, name: &str) {
    let t = input_mut(call, name);
    let cols: usize = t.shape[1..].iter().product();
    if let Data::F(v) = &mut t.data {
        let first: Vec<f64> = v[..cols].to_vec();
        for (i, x) in v.iter_mut().enumerate() {
            *x = first[i % cols];
        }
    }
}

fn load_base(loss: &str) -> Base {
    let file = root().join("stdlib").join(format!("{loss}.loss"));
    let text = std::fs::read_to_string(&file).expect("read stdlib file");
    let p = match compile(
        Source {
            name: file.display().to_string(),
            text,
        },
        &FileLoader,
        &CompileOptions::default(),
    ) {
        Ok(p) => p,
        Err(f) => panic!(
            "{loss} does not compile: {:?}",
            f.diags.iter().map(|d| &d.message).collect::<Vec<_>>()
        ),
    };
    let case = root()
        .join("tests/conformance/cases/public")
        .join(loss)
        .join("d0-s0")
        .join("inputs");
    let inputs: Vec<(String, Tensor)> = p
        .opt
        .inputs
        .iter()
        .map(|d| {
            let t = read_npy(&case.join(format!("{}.npy", d.name)), &d.name)
                .unwrap_or_else(|e| panic!("{loss}: {e}"));
            (d.name.clone(), t)
        })
        .collect();
    // State tables that no input sizes: the conformance size.
    let mut dims = BTreeMap::new();
    let mut input_syms = vec![];
    for d in p.opt.inputs.iter().flat_map(|i| i.ty.shape.iter()) {
        d.symbols(&mut input_syms);
    }
    for d in p.opt.states.iter().flat_map(|s| s.ty.shape.iter()) {
        let mut syms = vec![];
        d.symbols(&mut syms);
        for s in syms {
            if !input_syms.contains(&s) {
                dims.insert(s, 32);
            }
        }
    }
    Base {
        loss: loss.to_string(),
        p,
        call: Call {
            inputs,
            dims,
            grads: true,
            ..Call::default()
        },
    }
}

/// Names of the f32 `diff` inputs.
fn diff_inputs(b: &Base) -> Vec<String> {
    b.p.opt
        .inputs
        .iter()
        .filter(|i| i.diff)
        .map(|i| i.name.clone())
        .collect()
}

/// Every scenario that applies to `b`, built from the spec's edge rules.
fn scenarios(b: &Base) -> Vec<Scenario> {
    let mut out = vec![];
    let loss = b.loss.as_str();
    // Logits at ±1e4 (the base's sign pattern), for every logit-like input.
    let logit_like: Vec<String> = diff_inputs(b)
        .into_iter()
        .filter(|n| n.contains("logit") || n == "score" || n == "risk")
        .collect();
    // adawac computes its mirror-descent weights as a sigmoid of log-odds, so a CE far past
    // exp's range (logits at ±1e4) stays finite.
    if !logit_like.is_empty() {
        out.push(b.with("logits ±1e4", |c| {
            for n in &logit_like {
                map_f(c, n, |i, x| {
                    if x < 0.0 || (x == 0.0 && i % 2 == 1) {
                        -1e4
                    } else {
                        1e4
                    }
                });
            }
        }));
        // The teacher too, where there is one (same sign pattern: huge but agreeing).
        if b.has_input("teacher_logits") {
            out.push(b.with("logits and teacher ±1e4", |c| {
                for n in logit_like
                    .iter()
                    .map(String::as_str)
                    .chain(["teacher_logits"])
                {
                    map_f(c, n, |_, x| if x < 0.0 { -1e4 } else { 1e4 });
                }
            }));
        }
    }
    // Every differentiable input scaled by 1e4.
    // presto_penalty: skipped — "Rows with non-increasing η give p ≤ 0: undefined (NaN);
    // inputs must satisfy η_k > η_{k−1}" (STDLIB.md §17), and scaling x breaks the order.
    // hyp_ce: `a` and `p` are hyperplane parameters mapped into the ball; scaled, they
    // sit on its boundary, which the spec calls "too ill-conditioned for f32" (Part 2
    // §12). Its features `x` are scaled: "huge features are clipped".
    if loss != "presto_penalty" {
        let names: Vec<String> = diff_inputs(b)
            .into_iter()
            .filter(|n| !(loss == "hyp_ce" && (n == "a" || n == "p")))
            .collect();
        out.push(b.with("diff inputs ×1e4", |c| {
            for n in &names {
                map_f(c, n, |_, x| x * 1e4);
            }
        }));
    }
    // Temperatures at 1e-4.
    for (param, also) in [
        ("temperature", None),
        ("kd_T", Some(("kd_weight", 1.0))),
        ("bkl_T", None),
        ("r", None),
        ("kl_reg", None),
    ] {
        if b.has_param(param) {
            out.push(b.with(&format!("{param} = 1e-4"), |c| {
                set_param(c, param, Scalar::F(1e-4));
                if let Some((n, v)) = also {
                    set_param(c, n, Scalar::F(v));
                }
            }));
        }
    }
    if loss == "ldr_kl" {
        // λ is ldr_kl's temperature (log-mean-exp of diff / λ).
        out.push(b.with("lam = 1e-4", |c| set_param(c, "lam", Scalar::F(1e-4))));
    }
    if loss == "dual_head_kd" {
        out.push(b.with("kd_T = bkl_T = 1e-4, logits ±1e4", |c| {
            set_param(c, "kd_T", Scalar::F(1e-4));
            set_param(c, "bkl_T", Scalar::F(1e-4));
            set_param(c, "kd_weight", Scalar::F(1.0));
            for n in ["logits", "aux_logits", "teacher_logits"] {
                map_f(c, n, |i, _| if i % 3 == 0 { -1e4 } else { 1e4 });
            }
        }));
    }
    // A single class, where the signature allows one.
    // aldr_kl: skipped — "C ≥ 2" (STDLIB.md §7): log(C) = 0 divides.
    for dim in ["C", "R", "V"] {
        let has =
            b.p.opt
                .inputs
                .iter()
                .flat_map(|i| i.ty.shape.iter())
                .any(|d| d.to_string() == dim);
        if has && loss != "aldr_kl" {
            let mut s = b.regenerate(&format!("single class ({dim} = 1)"), &[(dim, 1)]);
            // "C = 1 → 0" (ldr_kl §6, noise_weighted_dice §2).
            if matches!(loss, "ldr_kl" | "noise_weighted_dice") {
                s.exact = Some(0.0);
            }
            out.push(s);
        }
    }
    // All-masked batches, and the other per-loss edge rules.
    let exact = |s: Scenario, v: f64| {
        let mut s = s;
        s.exact = Some(v);
        s
    };
    match loss {
        "cross_entropy" => {
            // "All targets ignored, or Σ w_{y_i} = 0 → 0" (§10).
            out.push(exact(
                b.with("all targets ignored", |c| map_i(c, "target", |_, _| -100)),
                0.0,
            ));
            out.push(exact(
                b.with("all class weights 0", |c| map_f(c, "weight", |_, _| 0.0)),
                0.0,
            ));
        }
        "cw_bass" => {
            // Labeled pixels all carrying the ignore index, no unlabeled pixel:
            // "No valid labeled pixel → L_s = 0", "No unlabeled pixel → … L_u = 0" (§1).
            out.push(exact(
                b.with("all labeled, all ignored", |c| {
                    set_b(c, "labeled", true);
                    map_i(c, "target", |_, _| 255);
                }),
                0.0,
            ));
            out.push(b.with("nothing labeled, no boundary", |c| {
                set_b(c, "labeled", false);
                set_b(c, "boundary", false);
            }));
        }
        "hardness_weighted_ce" => {
            // "All pixels ignored → 0" (§3).
            out.push(exact(
                b.with("all pixels ignored", |c| map_i(c, "target", |_, _| 255)),
                0.0,
            ));
        }
        "dynamic_reweight" => {
            // "no active token at all → 0" (§4).
            out.push(exact(
                b.with("all tokens ignored", |c| map_i(c, "labels", |_, _| -100)),
                0.0,
            ));
            // Every sequence but one empty: "a single sequence gets weight 1".
            out.push(b.with("one active sequence", |c| {
                let t = input_mut(c, "labels").shape[1];
                map_i(c, "labels", |i, y| if i < t { y } else { -100 });
            }));
            // Ties in the per-sequence losses: lmax = lmin, d = max(0, 1e-6).
            out.push(b.with("identical sequences", |c| {
                identical_rows(c, "logits");
                let t = input_mut(c, "labels").shape[1];
                let first: Vec<i64> = match &input_mut(c, "labels").data {
                    Data::I(v) => v[..t].to_vec(),
                    _ => vec![],
                };
                map_i(c, "labels", |i, _| first[i % t]);
            }));
        }
        "focal" => {
            // "All-background batch with reduction 1 → sum / 1" (§14).
            out.push(b.with("all background", |c| map_i(c, "target", |_, _| -1)));
            out.push(b.with("all background, reduction 1", |c| {
                map_i(c, "target", |_, _| -1);
                set_param(c, "reduction", Scalar::I(1));
            }));
        }
        "noise_weighted_dice" => {
            // "All weights 0 → 0" (§2).
            out.push(exact(
                b.with("all weights 0", |c| map_f(c, "weight", |_, _| 0.0)),
                0.0,
            ));
        }
        "cost_sensitive_ce" => {
            // "normalize = 1 with zero total cost → 0" (§11).
            out.push(exact(
                b.with("zero costs, normalize 1", |c| {
                    map_f(c, "class_cost", |_, _| 0.0);
                    set_param(c, "normalize", Scalar::I(1));
                }),
                0.0,
            ));
        }
        "density_normalized_edge" => {
            // "With no FG edge … the loss is the plain sum over BG edges" (§15).
            out.push(b.with("no foreground edge", |c| {
                map_i(c, "rel_labels", |_, _| 0);
            }));
        }
        "weighted_cox" => {
            // "no events (or all event weights 0) ⇒ loss 0 and gradient 0" (Part 2 §6).
            out.push(exact(
                b.with("no events", |c| set_b(c, "event", false)),
                0.0,
            ));
            out.push(exact(
                b.with("all weights 0", |c| map_f(c, "weight", |_, _| 0.0)),
                0.0,
            ));
            // Breslow ties: every subject shares one time.
            out.push(b.with("all survival times tied", |c| {
                map_f(c, "time", |_, _| 2.5);
                set_b(c, "event", true);
            }));
            out.push(b.with("tied times in pairs, risks ±100", |c| {
                map_f(c, "time", |i, _| (i / 2) as f64);
                map_f(c, "risk", |i, _| if i % 2 == 0 { 100.0 } else { -100.0 });
            }));
        }
        "ensloss" => {
            // "Ties in the margins are broken by index; all scores 0 → loss 0" (§13).
            out.push(exact(
                b.with("all scores 0", |c| map_f(c, "score", |_, _| 0.0)),
                0.0,
            ));
            out.push(b.with("tied margins", |c| {
                map_f(c, "score", |i, _| if i % 2 == 0 { 0.5 } else { 1.5 });
            }));
        }
        "meow_weighted_infonce" => {
            // "all in one cluster ⇒ loss 0, gradient 0" (Part 2 §4).
            out.push(exact(
                b.with("one cluster", |c| map_i(c, "clusters", |_, _| 0)),
                0.0,
            ));
        }
        "astroloc_pairwise" => {
            // "all pairs neutral ⇒ only (mined) positive terms; all weights 0 ⇒ loss 0" (§15).
            out.push(b.with("all pairs neutral", |c| set_b(c, "neutral", true)));
            out.push(exact(
                b.with("all weights 0", |c| map_f(c, "weight", |_, _| 0.0)),
                0.0,
            ));
        }
        "vagram" => {
            // "all-zero vgrad ⇒ only the reward term remains" (Part 2 §10); ties in the
            // quantile's sort keys when every norm is equal.
            out.push(b.with("zero value gradients", |c| map_f(c, "vgrad", |_, _| 0.0)));
            out.push(b.with("equal gradient norms", |c| map_f(c, "vgrad", |_, _| 0.5)));
        }
        "metrix" => {
            // "lam ∈ {0, 1} is allowed" (§14).
            out.push(b.with("lam in {0, 1}", |c| {
                map_f(c, "lam", |i, _| (i % 2) as f64);
            }));
        }
        "weight_compander" => {
            // "at w = 0 the derivative is Aμ/log1p(μ) from both sides" (§17).
            out.push(b.with("w = 0", |c| map_f(c, "w", |_, _| 0.0)));
        }
        "pinball" | "weighted_interval_score" => {
            // Ties between y and the quantiles: the kinks at e = 0.
            out.push(b.with("y on the quantiles", |c| {
                let q = input_mut(c, "q").clone();
                let cols = q.shape[1];
                let qv = q.to_f64_vec();
                map_f(c, "y", |i, _| qv[i * cols + cols / 2]);
            }));
        }
        "z_loss" => {
            // "A row of identical logits has σ = √eps and z_c = 0" (§5).
            out.push(b.with("all-zero logits", |c| map_f(c, "logits", |_, _| 0.0)));
        }
        "hyp_pc" => {
            // "exactly coincident pairs give distance 0 and gradient 0 (norm floor); not a
            // conformance case because float32 rounding makes the kink direction
            // arbitrary" (§13): the value is the floor's 2·atanh(√c·1e-12)/√c per pair
            // (~1e-12), the interpreter's gradient 0, an f32 backend's whatever its
            // rounding of the Möbius sum gives — finite, but not compared.
            let mut s = exact(
                b.with("coincident pairs", |c| copy_input(c, "left", "right")),
                0.0,
            );
            s.compare_grads = false;
            out.push(s);
        }
        "adawac" => {
            // "identical views give dac = 0" (§18).
            out.push(b.with("identical views", |c| {
                copy_input(c, "feat1", "feat2");
                copy_input(c, "logits1", "logits2");
                copy_input(c, "target1", "target2");
            }));
        }
        _ => {}
    }
    // Identical and zero embeddings, for the embedding losses.
    let emb: &[&str] = match loss {
        "infonce" | "cwcl" => &["u", "v"],
        "meow_weighted_infonce" | "adameow_weighted_infonce" => &["za", "zb"],
        "metrix" => &["a", "p", "n"],
        "nd_loss" => &["s_emb"],
        "hyp_ce" => &["x"],
        "hyp_pc" => &["left", "right"],
        "astroloc_pairwise" => &["q", "d"],
        "amcl" => &["z1", "z2"],
        _ => &[],
    };
    if !emb.is_empty() {
        out.push(b.with("identical embeddings", |c| {
            for n in emb {
                identical_rows(c, n);
                if *n != emb[0] {
                    copy_input(c, emb[0], n);
                }
            }
        }));
        out.push(b.with("zero embeddings", |c| {
            for n in emb {
                map_f(c, n, |_, _| 0.0);
            }
        }));
    }
    if loss == "amcl" {
        // Identical temperature features: every pair temperature ties.
        out.push(b.with("identical temperature heads", |c| {
            identical_rows(c, "q1");
            copy_input(c, "q1", "q2");
        }));
    }
    if loss == "cwcl" {
        // "antipodal z rows give weights exactly 0; identical z rows give all-ones weights".
        out.push(b.with("identical z", |c| identical_rows(c, "z")));
        out.push(b.with("antipodal z", |c| {
            identical_rows(c, "z");
            let cols = input_mut(c, "z").shape[1];
            map_f(c, "z", |i, x| if (i / cols) % 2 == 1 { -x } else { x });
        }));
    }
    out
}

fn all_finite(t: &Tensor) -> Option<usize> {
    t.to_f64_vec().iter().position(|x| !x.is_finite())
}

/// Conformance tolerances; `None` when `got` matches `want`.
fn mismatch(got: &Outputs, want: &Outputs, grads: bool) -> Option<String> {
    if (got.loss - want.loss).abs() > 2e-4 * want.loss.abs().max(1.0)
        || got.loss.is_finite() != want.loss.is_finite()
    {
        return Some(format!("loss {} vs interpreter {}", got.loss, want.loss));
    }
    for ((n, g), (_, w)) in got.grads.iter().zip(&want.grads) {
        if !grads {
            if let Some(i) = all_finite(g) {
                return Some(format!("grad {n}[{i}] is not finite"));
            }
            continue;
        }
        let (gv, wv) = (g.to_f64_vec(), w.to_f64_vec());
        let scale = wv.iter().fold(1.0f64, |m, x| m.max(x.abs()));
        for (i, (a, e)) in gv.iter().zip(&wv).enumerate() {
            let a32 = f64::from(*a as f32);
            if (a32 - e).abs() > 1e-3 * e.abs() + 1e-5 * scale || !a32.is_finite() {
                return Some(format!("grad {n}[{i}] = {a} vs interpreter {e}"));
            }
        }
    }
    for ((n, g), (_, w)) in got.state.iter().zip(&want.state) {
        for (i, (a, e)) in g.to_f64_vec().iter().zip(w.to_f64_vec()).enumerate() {
            if (a - e).abs() > 2e-4 * e.abs().max(1.0) {
                return Some(format!("state {n}[{i}] = {a} vs interpreter {e}"));
            }
        }
    }
    None
}

fn stdlib_losses() -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(root().join("tests/conformance/cases/public"))
        .expect("conformance cases")
        .filter_map(|e| e.ok().map(|e| e.file_name().to_string_lossy().into_owned()))
        .collect();
    v.sort();
    v
}

#[test]
fn extremes_every_loss_every_backend() {
    let losses = stdlib_losses();
    assert!(losses.len() >= 35, "found {} losses", losses.len());
    let backends = backends();
    let mut failures = vec![];
    let mut count = 0;
    let mut per_loss = vec![];
    for loss in &losses {
        let b = load_base(loss);
        let sc = scenarios(&b);
        per_loss.push(format!("{loss}: {}", sc.len()));
        let execs: Vec<(Backend, Box<dyn Executor>)> = backends
            .iter()
            .filter(|k| **k != Backend::Interp)
            .map(|k| {
                let e = losslang_runtime::backends::executor(*k, &b.p, "cpu")
                    .unwrap_or_else(|e| panic!("{loss} on {k}: {}", e.message));
                (*k, e)
            })
            .collect();
        for s in &sc {
            count += 1;
            let what = format!("{loss} / {}", s.name);
            let env = match b.p.bind(&s.call) {
                Ok(e) => e,
                Err(e) => {
                    failures.push(format!("{what}: bind: {}", e.message));
                    continue;
                }
            };
            let want = match b.p.run_with(&Interp, &env, true, false) {
                Ok(o) => o,
                Err(e) => {
                    failures.push(format!("{what} [interp]: {}", e.message));
                    continue;
                }
            };
            if !want.loss.is_finite() {
                failures.push(format!("{what} [interp]: the loss is {}", want.loss));
            }
            for (n, g) in &want.grads {
                if let Some(i) = all_finite(g) {
                    failures.push(format!(
                        "{what} [interp]: grad {n}[{i}] is {}",
                        g.to_f64_vec()[i]
                    ));
                }
            }
            for (n, t) in &want.state {
                if let Some(i) = all_finite(t) {
                    failures.push(format!("{what} [interp]: state {n}[{i}] is not finite"));
                }
            }
            if let Some(v) = s.exact
                && (want.loss - v).abs() > 1e-9
            {
                failures.push(format!(
                    "{what} [interp]: the spec fixes the loss at {v}, got {}",
                    want.loss
                ));
            }
            for (k, exec) in &execs {
                match b.p.run_with(exec.as_ref(), &env, true, false) {
                    Ok(got) => {
                        if let Some(m) = mismatch(&got, &want, s.compare_grads) {
                            failures.push(format!("{what} [{k}]: {m}"));
                        }
                        if let Some(v) = s.exact
                            && (got.loss - v).abs() > 1e-6
                        {
                            failures.push(format!(
                                "{what} [{k}]: the spec fixes the loss at {v}, got {}",
                                got.loss
                            ));
                        }
                    }
                    Err(e) => failures.push(format!("{what} [{k}]: {}", e.message)),
                }
            }
        }
    }
    println!("{count} extreme scenarios on {} backends", backends.len());
    println!("{}", per_loss.join(", "));
    assert!(
        failures.is_empty(),
        "{} failures:\n{}",
        failures.len(),
        failures.join("\n")
    );
}

#[test]
fn zero_embedding_gradients_vanish_where_the_spec_says() {
    // "zero features map to the origin with finite gradients" (hyp_ce) and the
    // floored norms of Part 2: a zero row never turns into NaN through 0/0.
    for loss in ["hyp_ce", "infonce", "nd_loss"] {
        let b = load_base(loss);
        let mut call = b.call.clone();
        let first = diff_inputs(&b)[0].clone();
        map_f(&mut call, &first, |_, _| 0.0);
        let env = b.p.bind(&call).expect("bind");
        for k in backends() {
            let exec = losslang_runtime::backends::executor(k, &b.p, "cpu").expect("executor");
            let o =
                b.p.run_with(exec.as_ref(), &env, true, true)
                    .unwrap_or_else(|e| panic!("{loss} [{k}]: {}", e.message));
            assert!(o.loss.is_finite(), "{loss} [{k}]");
        }
    }
}
