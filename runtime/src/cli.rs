//! The `lossc` command line (contract: CLI.md). Exit codes: 0 success, 1 the
//! program or the data is wrong, 2 a usage error. Every error is a miette
//! diagnostic on stderr; a panic (a broken invariant) becomes an error message.

use crate::io::{read_npy, read_npz, write_npy, write_npy_f32};
use crate::loader::FileLoader;
use crate::render::{render, render_diag};
use crate::state_file::{
    ParamValue, parse_param_assignment, parse_params_json, parse_state_json, state_to_json,
    write_json_atomic,
};
use clap::{Args, Parser, Subcommand, ValueEnum};
use losslang_compiler::backend::Backend;
use losslang_compiler::diag::Severity;
use losslang_compiler::ir::print::print;
use losslang_compiler::ops::Scalar;
use losslang_compiler::program::{Call, CompileOptions, Failed, Program, RunError, compile};
use losslang_compiler::sema::Source;
use losslang_compiler::value::{DType, Tensor};
use serde_json::{Map, Value, json};
use std::collections::BTreeMap;
use std::io::{IsTerminal, Write};
use std::path::{Path, PathBuf};
use std::time::Instant;

#[derive(Parser, Debug)]
#[command(name = "lossc", version, about = "Compile, check and run .loss files", long_about = None)]
pub struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
    /// Never colour diagnostics.
    #[arg(long, global = true)]
    no_color: bool,
}

#[derive(Subcommand, Debug)]
enum Cmd {
    /// Parse and type-check; diagnostics on stderr; exit 1 on any error.
    Check(CheckArgs),
    /// Compile and evaluate once (or --steps K times, carrying state).
    Run(Box<RunArgs>),
    /// Print a stage of the compiler: ast | ir | grad | opt | sched | clif | candle.
    Emit(EmitArgs),
    /// Finite-difference check of the compiled gradient on random inputs.
    Gradcheck(GradcheckArgs),
    /// Time forward + gradients on random inputs.
    Bench(BenchArgs),
    /// Signature, params, state and doc comments.
    Doc(DocArgs),
    /// Python source for PyTorch, JAX or NumPy that computes the loss and the compiler's gradient.
    Export(ExportArgs),
}

#[derive(Args, Debug)]
struct Common {
    /// Which `loss` item, when the file has several.
    #[arg(long)]
    loss: Option<String>,
    /// Keep `log(softmax(x))` and friends as written (no stability rewrites).
    #[arg(long)]
    no_rewrite: bool,
}

#[derive(Args, Debug)]
struct CheckArgs {
    #[arg(required = true)]
    files: Vec<PathBuf>,
    /// Also print each binding's type, shape and gradient status.
    #[arg(long)]
    explain: bool,
    #[command(flatten)]
    common: Common,
}

#[derive(Args, Debug)]
struct RunArgs {
    file: PathBuf,
    #[command(flatten)]
    common: Common,
    /// Read every declared input `x` from DIR/x.npy.
    #[arg(long, value_name = "DIR")]
    inputs: Option<PathBuf>,
    /// One input from a .npy file (repeatable; overrides --inputs).
    #[arg(long, value_name = "NAME=PATH")]
    input: Vec<String>,
    /// Read inputs from a .npz archive by name.
    #[arg(long, value_name = "FILE")]
    npz: Option<PathBuf>,
    /// Generate valid random inputs with these sizes, e.g. N=1024,C=10.
    #[arg(long, value_name = "DIMS")]
    random: Option<String>,
    /// Seed of --random.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Bind dims that no input binds (state tables), or check those that are.
    #[arg(long, value_name = "N=…,M=…")]
    dims: Option<String>,
    /// Override a param (repeatable).
    #[arg(long, value_name = "NAME=VALUE")]
    param: Vec<String>,
    /// Override params from a JSON object.
    #[arg(long, value_name = "FILE.json")]
    params: Option<PathBuf>,
    /// State before the call (JSON object).
    #[arg(long, value_name = "FILE.json")]
    state: Option<PathBuf>,
    /// Write the state after the (last) call, atomically.
    #[arg(long, value_name = "FILE.json")]
    save_state: Option<PathBuf>,
    /// Call K times on the same inputs, carrying state.
    #[arg(long, default_value_t = 1, value_name = "K")]
    steps: u64,
    /// Also compute gradients of every diff input.
    #[arg(long)]
    grad: bool,
    /// Write each gradient as DIR/<input>.npy (float32); implies --grad.
    #[arg(long, value_name = "DIR")]
    grad_out: Option<PathBuf>,
    /// Write tensor reports as DIR/<name>.npy instead of inline lists.
    #[arg(long, value_name = "DIR")]
    report_out: Option<PathBuf>,
    /// jit (Cranelift, default), candle, interp (the reference interpreter).
    #[arg(long, default_value = "jit")]
    backend: String,
    /// cpu (default) or cuda[:i], for --backend candle.
    #[arg(long, default_value = "cpu")]
    device: String,
    /// One JSON object per call on stdout.
    #[arg(long)]
    json: bool,
    /// Fail on NaN/Inf in inputs or outputs.
    #[arg(long)]
    check_finite: bool,
}

#[derive(Clone, Copy, Debug, ValueEnum)]
enum Stage {
    Ast,
    Ir,
    Grad,
    Opt,
    Sched,
    Clif,
    Candle,
    /// How the batch is split over ranks: each node's layout and collectives.
    Shard,
}

#[derive(Args, Debug)]
struct EmitArgs {
    file: PathBuf,
    #[arg(long, value_enum)]
    stage: Stage,
    #[command(flatten)]
    common: Common,
}

#[derive(Args, Debug)]
struct GradcheckArgs {
    file: PathBuf,
    #[command(flatten)]
    common: Common,
    /// Sizes of the random inputs (unset dims default to 5; state-table dims to 16).
    #[arg(long, value_name = "N=8,C=5")]
    dims: Option<String>,
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Override a param (repeatable).
    #[arg(long, value_name = "NAME=VALUE")]
    param: Vec<String>,
    /// Elements checked per input (evenly spaced).
    #[arg(long, default_value_t = 64)]
    per_input: usize,
}

#[derive(Args, Debug)]
struct BenchArgs {
    file: PathBuf,
    #[command(flatten)]
    common: Common,
    #[arg(long, value_name = "N=65536,C=100")]
    dims: String,
    /// jit, candle, interp or all.
    #[arg(long, default_value = "jit")]
    backend: String,
    /// cpu (default) or cuda[:i], for --backend candle.
    #[arg(long, default_value = "cpu")]
    device: String,
    #[arg(long, default_value_t = 1)]
    threads: usize,
    #[arg(long, default_value_t = 10)]
    iters: usize,
    #[arg(long, default_value_t = 0)]
    seed: u64,
    #[arg(long)]
    json: bool,
}

#[derive(Args, Debug)]
struct DocArgs {
    file: PathBuf,
    #[command(flatten)]
    common: Common,
}

#[derive(Clone, Copy, Debug, ValueEnum)]
enum ExportTarget {
    Torch,
    Jax,
    Numpy,
}

#[derive(Args, Debug)]
struct ExportArgs {
    file: PathBuf,
    /// The framework of the generated module.
    #[arg(long, value_enum)]
    target: ExportTarget,
    /// Write the module here (atomically) instead of to stdout.
    #[arg(short = 'o', long = "out", value_name = "OUT.py")]
    out: Option<PathBuf>,
    /// The batch dim a distributed torch call shards (default: the leading dim of
    /// the first `diff` input).
    #[arg(long, value_name = "NAME")]
    batch_dim: Option<String>,
    #[command(flatten)]
    common: Common,
}

/// A failure to report: a rendered message and an exit code.
struct Fail {
    code: i32,
    text: String,
}

type Res<T> = Result<T, Fail>;

struct Ctx {
    color: bool,
}

impl Ctx {
    fn width() -> usize {
        100
    }

    fn diag(&self, d: &dyn miette::Diagnostic) -> String {
        render(d, self.color, Ctx::width())
    }

    fn fail(&self, code: i32, d: &dyn miette::Diagnostic) -> Fail {
        Fail {
            code,
            text: self.diag(d),
        }
    }

    fn run_err(&self, e: RunError) -> Fail {
        self.fail(1, &e)
    }

    fn usage(&self, message: String, help: &str) -> Fail {
        self.fail(
            2,
            &RunError {
                code: "L6301",
                message,
                help: Some(help.to_string()),
            },
        )
    }
}

pub fn main() -> i32 {
    let cli = match Cli::try_parse() {
        Ok(c) => c,
        Err(e) => {
            let _ = e.print();
            return if e.use_stderr() { 2 } else { 0 };
        }
    };
    let color =
        !cli.no_color && std::io::stderr().is_terminal() && std::env::var_os("NO_COLOR").is_none();
    // The compiler recurses over the program; a big stack turns deep nesting into results, not crashes.
    let outcome = crate::with_big_stack(move || {
        let ctx = Ctx { color };
        let mut out = std::io::stdout().lock();
        let r = dispatch(&ctx, cli.cmd, &mut out);
        let _ = out.flush();
        r
    });
    match outcome {
        Ok(Ok(())) => 0,
        Ok(Err(f)) => {
            eprint!("{}", f.text);
            f.code
        }
        Err(panic) => {
            let what = panic
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()))
                .unwrap_or_else(|| "unknown".into());
            eprintln!(
                "error[L5000]: internal error in lossc: {what}\n  help: this is a bug in losslang; please report it with the .loss file and the command"
            );
            1
        }
    }
}

fn dispatch(ctx: &Ctx, cmd: Cmd, out: &mut dyn Write) -> Res<()> {
    match cmd {
        Cmd::Check(a) => check(ctx, a),
        Cmd::Run(a) => run(ctx, *a, out),
        Cmd::Emit(a) => emit(ctx, a, out),
        Cmd::Gradcheck(a) => gradcheck(ctx, a, out),
        Cmd::Bench(a) => bench(ctx, a, out),
        Cmd::Doc(a) => doc(ctx, a, out),
        Cmd::Export(a) => export(ctx, a, out),
    }
}

fn read_source(ctx: &Ctx, path: &Path) -> Res<Source> {
    match std::fs::read(path) {
        Ok(bytes) => match String::from_utf8(bytes) {
            Ok(text) => Ok(Source {
                name: path.display().to_string(),
                text,
            }),
            Err(e) => Err(ctx.fail(
                1,
                &RunError {
                    code: "L1005",
                    message: format!(
                        "{} is not UTF-8 text (invalid byte at offset {})",
                        path.display(),
                        e.utf8_error().valid_up_to()
                    ),
                    help: Some("a .loss file is UTF-8 text".into()),
                },
            )),
        },
        Err(e) => Err(ctx.fail(
            1,
            &RunError {
                code: "L6302",
                message: format!("cannot read {}: {e}", path.display()),
                help: Some("check the path".into()),
            },
        )),
    }
}

/// Compiles and prints warnings/notes; errors become a failure with every diagnostic.
fn build(ctx: &Ctx, path: &Path, common: &Common, quiet: bool) -> Res<Program> {
    let src = read_source(ctx, path)?;
    let opts = CompileOptions {
        loss: common.loss.clone(),
        no_rewrite: common.no_rewrite,
    };
    match compile(src, &FileLoader, &opts) {
        Ok(p) => {
            if !quiet {
                for d in &p.diags {
                    eprint!("{}", render_diag(d, &p.sources, ctx.color, Ctx::width()));
                }
            }
            Ok(p)
        }
        Err(Failed { sources, diags }) => {
            let mut text = String::new();
            let mut ds = diags;
            ds.sort_by_key(|d| (d.severity != Severity::Error, d.file, d.span.start));
            for d in &ds {
                text.push_str(&render_diag(d, &sources, ctx.color, Ctx::width()));
            }
            let n = ds.iter().filter(|d| d.is_error()).count();
            text.push_str(&format!(
                "{}: {n} error{} in {}\n",
                if ctx.color {
                    "\x1b[31merror\x1b[0m"
                } else {
                    "error"
                },
                if n == 1 { "" } else { "s" },
                path.display()
            ));
            Err(Fail { code: 1, text })
        }
    }
}

fn check(ctx: &Ctx, a: CheckArgs) -> Res<()> {
    let mut failed = None;
    for f in &a.files {
        if let Ok(src) = read_source(ctx, f)
            && losslang_compiler::sema::scope::is_module(&src.text)
        {
            let mut sources = vec![src];
            let diags = losslang_compiler::sema::scope::check_module(&mut sources, &FileLoader);
            for d in &diags {
                eprint!("{}", render_diag(d, &sources, ctx.color, Ctx::width()));
            }
            if diags.iter().any(|d| d.is_error()) {
                failed = Some(1);
            } else {
                eprintln!("ok: {} (module)", f.display());
            }
            continue;
        }
        match build(ctx, f, &a.common, false) {
            Ok(p) => {
                if a.explain {
                    print!("{}", explain(&p));
                }
                eprintln!("ok: {} ({})", f.display(), p.opt.name);
            }
            Err(e) => {
                eprint!("{}", e.text);
                failed = Some(e.code);
            }
        }
    }
    match failed {
        Some(code) => Err(Fail {
            code,
            text: String::new(),
        }),
        None => Ok(()),
    }
}

/// `check --explain`: every binding with its type and gradient status.
pub fn explain(p: &Program) -> String {
    let g = &p.ir;
    let flow = losslang_compiler::sema::gradflow::flow(g);
    let mut s = format!("; losslang explain v1\nloss {}\n", g.name);
    for b in &p.bindings {
        let Some(h) = b.value else {
            s.push_str(&format!(
                "  {:<6} {:<16} (a compile-time constant)\n",
                b.kind, b.name
            ));
            continue;
        };
        if h.index() >= g.len() {
            continue;
        }
        let ty = g.ty(h);
        s.push_str(&format!(
            "  {:<6} {:<16} {:<20} {}\n",
            b.kind,
            b.name,
            ty.to_string(),
            losslang_compiler::sema::gradflow::describe(g, &flow, h)
        ));
    }
    s
}

fn emit(ctx: &Ctx, a: EmitArgs, out: &mut dyn Write) -> Res<()> {
    let text = match a.stage {
        Stage::Ast => {
            let src = read_source(ctx, &a.file)?;
            match losslang_grammar::parse(&src.text) {
                Ok(f) => losslang_grammar::print::print_file(&f),
                Err(e) => {
                    let d = losslang_compiler::sema::scope::parse_diag(&e, 0);
                    return Err(Fail {
                        code: 1,
                        text: render_diag(&d, &[src], ctx.color, Ctx::width()),
                    });
                }
            }
        }
        Stage::Ir | Stage::Grad | Stage::Opt => {
            let p = build(ctx, &a.file, &a.common, true)?;
            match a.stage {
                Stage::Ir => print(&p.ir, "ir"),
                Stage::Grad => print(&p.grad, "grad"),
                _ => print(&p.opt, "opt"),
            }
        }
        Stage::Sched => losslang_clif::sched_text(&build(ctx, &a.file, &a.common, true)?.opt),
        Stage::Shard => {
            let p = build(ctx, &a.file, &a.common, true)?;
            match losslang_compiler::shard::analyze(&p.opt, None) {
                Some(plan) => losslang_compiler::shard::print(&p.opt, &plan),
                None => {
                    "; losslang shard v1\nno batch dim: no `diff` input with a named leading dim\n"
                        .into()
                }
            }
        }
        Stage::Clif => losslang_clif::clif_text(&build(ctx, &a.file, &a.common, true)?.opt),
        Stage::Candle => {
            let p = build(ctx, &a.file, &a.common, true)?;
            losslang_candle::emit_text(&p.opt, losslang_candle::Target::Cpu).map_err(|e| {
                ctx.fail(
                    1,
                    &RunError {
                        code: "L5005",
                        message: e.to_string(),
                        help: Some("this node has no candle lowering on this target".into()),
                    },
                )
            })?
        }
    };
    write!(out, "{text}").map_err(|e| io_fail(ctx, e))
}

fn io_fail(ctx: &Ctx, e: std::io::Error) -> Fail {
    ctx.fail(
        1,
        &RunError {
            code: "L6303",
            message: format!("cannot write the output: {e}"),
            help: Some("check the destination".into()),
        },
    )
}

fn not_built(ctx: &Ctx, b: Backend) -> Fail {
    ctx.fail(2, &crate::backends::not_built(b))
}

fn parse_backend(ctx: &Ctx, s: &str) -> Res<Backend> {
    let b = Backend::parse(s).ok_or_else(|| {
        ctx.usage(
            format!("unknown backend `{s}`"),
            "backends are jit, candle and interp",
        )
    })?;
    if !crate::backends::available(b) {
        return Err(not_built(ctx, b));
    }
    Ok(b)
}

/// `N=4,C=10` → dims.
fn parse_dims(ctx: &Ctx, s: &str) -> Res<BTreeMap<String, i64>> {
    let mut m = BTreeMap::new();
    for part in s.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let Some((k, v)) = part.split_once('=') else {
            return Err(ctx.usage(
                format!("`{part}` is not NAME=SIZE"),
                "write dims as N=1024,C=10",
            ));
        };
        let k = k.trim();
        if k.is_empty() || !k.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
            return Err(ctx.usage(
                format!("`{k}` is not a dim name"),
                "dim names are identifiers such as N or C",
            ));
        }
        let v: i64 = v.trim().parse().ok().filter(|v| *v >= 0).ok_or_else(|| {
            ctx.usage(
                format!("size `{}` of {k} is not a non-negative integer", v.trim()),
                "write dims as N=1024,C=10",
            )
        })?;
        m.insert(k.to_string(), v);
    }
    Ok(m)
}

fn to_scalar(v: ParamValue) -> Scalar {
    match v {
        ParamValue::Int(i) => Scalar::I(i),
        ParamValue::Float(f) => Scalar::F(f),
        ParamValue::Bool(b) => Scalar::B(b),
    }
}

fn data_fail(ctx: &Ctx, e: crate::io::DataError) -> Fail {
    ctx.fail(1, &e)
}

fn gather_params(ctx: &Ctx, file: Option<&Path>, assigns: &[String]) -> Res<Vec<(String, Scalar)>> {
    let mut params = vec![];
    if let Some(f) = file {
        let text = std::fs::read_to_string(f).map_err(|e| {
            ctx.fail(
                1,
                &RunError {
                    code: "L6302",
                    message: format!("cannot read params file {}: {e}", f.display()),
                    help: Some("check the path".into()),
                },
            )
        })?;
        for (k, v) in
            parse_params_json(&text, &f.display().to_string()).map_err(|e| data_fail(ctx, e))?
        {
            params.push((k, to_scalar(v)));
        }
    }
    for a in assigns {
        let (k, v) = parse_param_assignment(a).map_err(|e| data_fail(ctx, e))?;
        params.push((k, to_scalar(v)));
    }
    Ok(params)
}

fn gather_inputs(
    ctx: &Ctx,
    p: &Program,
    a: &RunArgs,
    dims: &mut BTreeMap<String, i64>,
) -> Res<Vec<(String, Tensor)>> {
    let g = &p.opt;
    if let Some(r) = &a.random {
        let rd = parse_dims(ctx, r)?;
        for (k, v) in rd {
            dims.entry(k).or_insert(v);
        }
        // State-table dims no input binds: large enough for distinct ids.
        let mut input_syms = vec![];
        for i in &g.inputs {
            for d in &i.ty.shape {
                d.symbols(&mut input_syms);
            }
        }
        let biggest = dims.values().copied().max().unwrap_or(16).max(16);
        for s in &g.states {
            for d in &s.ty.shape {
                let mut syms = vec![];
                d.symbols(&mut syms);
                for sym in syms {
                    if !input_syms.contains(&sym) {
                        dims.entry(sym).or_insert(biggest);
                    }
                }
            }
        }
        return crate::random::random_inputs(g, dims, a.seed)
            .map_err(|m| ctx.usage(m, "list every dim of the inputs in --random"));
    }
    let mut got: Vec<(String, Tensor)> = vec![];
    if let Some(dir) = &a.inputs {
        if !dir.is_dir() {
            return Err(ctx.fail(
                1,
                &RunError {
                    code: "L6302",
                    message: format!("--inputs {} is not a folder", dir.display()),
                    help: Some("give a folder holding one NAME.npy per input".into()),
                },
            ));
        }
        for decl in &g.inputs {
            let f = dir.join(format!("{}.npy", decl.name));
            if f.exists() {
                got.push((
                    decl.name.clone(),
                    read_npy(&f, &decl.name).map_err(|e| data_fail(ctx, e))?,
                ));
            }
        }
    }
    if let Some(npz) = &a.npz {
        for (k, t) in read_npz(npz).map_err(|e| data_fail(ctx, e))? {
            got.retain(|(n, _)| n != &k);
            got.push((k, t));
        }
    }
    for spec in &a.input {
        let Some((k, path)) = spec.split_once('=') else {
            return Err(ctx.usage(
                format!("`{spec}` is not NAME=PATH"),
                "write --input logits=logits.npy",
            ));
        };
        let t = read_npy(Path::new(path), k).map_err(|e| data_fail(ctx, e))?;
        got.retain(|(n, _)| n != k);
        got.push((k.to_string(), t));
    }
    Ok(got)
}

fn read_state(ctx: &Ctx, path: &Path) -> Res<Vec<(String, Tensor)>> {
    let text = std::fs::read_to_string(path).map_err(|e| {
        ctx.fail(
            1,
            &RunError {
                code: "L6302",
                message: format!("cannot read state file {}: {e}", path.display()),
                help: Some("check the path".into()),
            },
        )
    })?;
    let m = parse_state_json(&text, &path.display().to_string()).map_err(|e| data_fail(ctx, e))?;
    Ok(m.into_iter()
        .map(|(k, v)| {
            let t = if v.all_integers && !v.values.is_empty() {
                Tensor::from_i64(
                    v.shape.clone(),
                    v.values.iter().map(|x| *x as i64).collect(),
                )
            } else {
                Tensor::from_f64(DType::F64, v.shape.clone(), v.values.clone())
            };
            (k, t)
        })
        .collect())
}

fn tensor_json(t: &Tensor) -> Value {
    // One tensor through the state writer keeps number formatting in one place.
    let v = state_to_json(&[("x".into(), t.clone())]);
    v.get("x").cloned().unwrap_or(Value::Null)
}

fn summary(t: &Tensor) -> String {
    if t.shape.is_empty() {
        return match tensor_json(t) {
            Value::Number(n) => n.to_string(),
            v => v.to_string(),
        };
    }
    let v = t.to_f64_vec();
    let mean = if v.is_empty() {
        0.0
    } else {
        v.iter().sum::<f64>() / v.len() as f64
    };
    format!("{}{:?} mean {:.6}", t.dtype, t.shape, mean)
}

fn run(ctx: &Ctx, a: RunArgs, out: &mut dyn Write) -> Res<()> {
    let backend = parse_backend(ctx, &a.backend)?;
    if a.device != "cpu" && backend != Backend::Candle {
        return Err(ctx.usage(
            format!("--device {} needs --backend candle", a.device),
            "the interpreter and the JIT run on the CPU",
        ));
    }
    let p = build(ctx, &a.file, &a.common, false)?;
    let mut dims = match &a.dims {
        Some(d) => parse_dims(ctx, d)?,
        None => BTreeMap::new(),
    };
    let inputs = gather_inputs(ctx, &p, &a, &mut dims)?;
    let params = gather_params(ctx, a.params.as_deref(), &a.param)?;
    let state = match &a.state {
        Some(s) => read_state(ctx, s)?,
        None => vec![],
    };
    let want_grads = a.grad || a.grad_out.is_some();
    let mut call = Call {
        inputs,
        params,
        state,
        dims,
        grads: want_grads,
        check_finite: a.check_finite,
    };
    if a.steps == 0 {
        return Err(ctx.usage(
            "--steps must be at least 1".into(),
            "write --steps 1 or more",
        ));
    }
    let env = p.bind(&call).map_err(|e| ctx.run_err(e))?;
    let mut env = env;
    let exec = crate::backends::executor(backend, &p, &a.device).map_err(|e| ctx.fail(1, &e))?;
    for step in 0..a.steps {
        let o = p
            .run_with(exec.as_ref(), &env, want_grads, a.check_finite)
            .map_err(|e| ctx.run_err(e))?;
        let mut grad_paths = Map::new();
        if let Some(dir) = &a.grad_out {
            std::fs::create_dir_all(dir).map_err(|e| io_fail(ctx, e))?;
            for (n, t) in &o.grads {
                let f = dir.join(format!("{n}.npy"));
                write_npy_f32(&f, t).map_err(|e| data_fail(ctx, e))?;
                grad_paths.insert(n.clone(), Value::String(f.display().to_string()));
            }
        }
        let mut reports = Map::new();
        for (n, t) in &o.reports {
            let v = match (&a.report_out, t.shape.is_empty()) {
                (Some(dir), false) => {
                    std::fs::create_dir_all(dir).map_err(|e| io_fail(ctx, e))?;
                    let f = dir.join(format!("{n}.npy"));
                    write_npy(&f, t).map_err(|e| data_fail(ctx, e))?;
                    Value::String(f.display().to_string())
                }
                _ => tensor_json(t),
            };
            reports.insert(n.clone(), v);
        }
        let state_json = state_to_json(&o.state);
        if a.json {
            let mut obj = Map::new();
            obj.insert("loss".into(), json_f64(o.loss));
            obj.insert("state".into(), state_json);
            obj.insert("reports".into(), Value::Object(reports));
            if a.grad_out.is_some() {
                obj.insert("grads".into(), Value::Object(grad_paths));
            }
            writeln!(out, "{}", Value::Object(obj)).map_err(|e| io_fail(ctx, e))?;
        } else {
            let mut line = format!("step {}: loss = {}", step + 1, fmt_f64(o.loss));
            if !o.state.is_empty() {
                let parts: Vec<String> = o
                    .state
                    .iter()
                    .map(|(n, t)| format!("{n} = {}", summary(t)))
                    .collect();
                line.push_str(&format!(" | state: {}", parts.join(", ")));
            }
            if !o.reports.is_empty() {
                let parts: Vec<String> = o
                    .reports
                    .iter()
                    .map(|(n, t)| format!("{n} = {}", summary(t)))
                    .collect();
                line.push_str(&format!(" | reports: {}", parts.join(", ")));
            }
            writeln!(out, "{line}").map_err(|e| io_fail(ctx, e))?;
            for (n, t) in &o.grads {
                let v = t.to_f64_vec();
                // A fold from +0.0: `Sum` of no floats is -0.0, which printed as "-0.000000".
                let l2 = v.iter().fold(0.0f64, |a, x| a + x * x).sqrt();
                let mx = v.iter().fold(0.0f64, |m, x| m.max(x.abs()));
                writeln!(
                    out,
                    "  grad {n}: {}{:?}, |g|_2 = {}, max |g| = {}",
                    t.dtype,
                    t.shape,
                    fmt_f64(l2),
                    fmt_f64(mx)
                )
                .map_err(|e| io_fail(ctx, e))?;
            }
        }
        // Carry the state into the next call.
        for (k, (_, v)) in o.state.into_iter().enumerate() {
            env.state[k] = v;
        }
        if step + 1 == a.steps
            && let Some(path) = &a.save_state
        {
            let named: Vec<(String, Tensor)> = p
                .opt
                .states
                .iter()
                .map(|s| s.name.clone())
                .zip(env.state.iter().cloned())
                .collect();
            write_json_atomic(path, &state_to_json(&named)).map_err(|e| data_fail(ctx, e))?;
        }
    }
    call.inputs.clear();
    Ok(())
}

fn fmt_f64(x: f64) -> String {
    if x == 0.0 || (x.abs() >= 1e-4 && x.abs() < 1e6) {
        format!("{x:.6}")
    } else {
        format!("{x:.6e}")
    }
}

fn json_f64(x: f64) -> Value {
    if x.is_finite() {
        json!(x)
    } else if x.is_nan() {
        json!("nan")
    } else if x > 0.0 {
        json!("inf")
    } else {
        json!("-inf")
    }
}

/// Dims for random inputs: the given ones, 5 for unset input dims, 16 for state-only dims.
fn default_dims(p: &Program, given: BTreeMap<String, i64>) -> BTreeMap<String, i64> {
    let mut dims = given;
    let g = &p.opt;
    for i in &g.inputs {
        for d in &i.ty.shape {
            let mut syms = vec![];
            d.symbols(&mut syms);
            for s in syms {
                dims.entry(s).or_insert(5);
            }
        }
    }
    let biggest = dims.values().copied().max().unwrap_or(16).max(16);
    for s in &g.states {
        for d in &s.ty.shape {
            let mut syms = vec![];
            d.symbols(&mut syms);
            for sym in syms {
                dims.entry(sym).or_insert(biggest);
            }
        }
    }
    dims
}

fn gradcheck(ctx: &Ctx, a: GradcheckArgs, out: &mut dyn Write) -> Res<()> {
    let p = build(ctx, &a.file, &a.common, false)?;
    let given = match &a.dims {
        Some(d) => parse_dims(ctx, d)?,
        None => BTreeMap::new(),
    };
    let dims = default_dims(&p, given);
    let inputs = crate::random::random_inputs(&p.opt, &dims, a.seed)
        .map_err(|m| ctx.usage(m, "give every dim with --dims"))?;
    let params = gather_params(ctx, None, &a.param)?;
    let call = Call {
        inputs,
        params,
        state: vec![],
        dims: dims.clone(),
        grads: true,
        check_finite: false,
    };
    let env = p.bind(&call).map_err(|e| ctx.run_err(e))?;
    let rep = losslang_compiler::gradcheck::gradcheck(&p, &env, a.per_input.max(1))
        .map_err(|e| ctx.run_err(e))?;
    let dims_txt: Vec<String> = dims.iter().map(|(k, v)| format!("{k}={v}")).collect();
    let w = |out: &mut dyn Write, s: String| writeln!(out, "{s}").map_err(|e| io_fail(ctx, e));
    w(
        out,
        format!(
            "gradcheck {} ({}), loss = {}",
            p.opt.name,
            dims_txt.join(","),
            fmt_f64(rep.loss)
        ),
    )?;
    if rep.inputs.is_empty() {
        w(out, "  (no diff inputs)".into())?;
    }
    for i in &rep.inputs {
        let worst = match &i.worst {
            Some((pos, an, fd)) => format!(
                " (worst at {pos:?}: autodiff {} vs finite difference {})",
                fmt_f64(*an),
                fmt_f64(*fd)
            ),
            None => String::new(),
        };
        w(
            out,
            format!(
                "  {} {}: {} elements, max abs error {:.3e}{worst}",
                if i.passed { "ok  " } else { "FAIL" },
                i.name,
                i.checked,
                i.max_abs_err
            ),
        )?;
    }
    if rep.passed() {
        w(out, "gradcheck passed".into())?;
        Ok(())
    } else {
        Err(ctx.fail(
            1,
            &RunError {
                code: "L4901",
                message: format!("gradcheck failed for `{}`: the compiled gradient disagrees with finite differences", p.opt.name),
                help: Some("if the loss has kinks (abs, relu, max, where), a random point may sit on one: try another --seed; a NaN or inf gradient is no kink: look for a division, log or sqrt at the edge of a param's range (beta = 0), and declare its domain (`in (0, inf)`) or guard it with where".into()),
            },
        ))
    }
}

fn bench(ctx: &Ctx, a: BenchArgs, out: &mut dyn Write) -> Res<()> {
    let wanted: Vec<Backend> = if a.backend == "all" {
        vec![Backend::Jit, Backend::Candle, Backend::Interp]
    } else {
        vec![Backend::parse(&a.backend).ok_or_else(|| {
            ctx.usage(
                format!("unknown backend `{}`", a.backend),
                "backends are jit, candle, interp or all",
            )
        })?]
    };
    if a.device != "cpu" && wanted != [Backend::Candle] {
        return Err(ctx.usage(
            format!("--device {} needs --backend candle", a.device),
            "the interpreter and the JIT run on the CPU",
        ));
    }
    let dims0 = parse_dims(ctx, &a.dims)?;
    let t0 = Instant::now();
    let p = build(ctx, &a.file, &a.common, true)?;
    let compile_ms = t0.elapsed().as_secs_f64() * 1e3;
    let dims = default_dims(&p, dims0.clone());
    let inputs = crate::random::random_inputs(&p.opt, &dims, a.seed)
        .map_err(|m| ctx.usage(m, "give every dim with --dims"))?;
    let bytes_in: usize = inputs
        .iter()
        .map(|(_, t)| t.len() * elem_bytes(t.dtype))
        .sum();
    let call = Call {
        inputs,
        dims,
        grads: true,
        ..Call::default()
    };
    let env = p.bind(&call).map_err(|e| ctx.run_err(e))?;
    for b in wanted {
        if !crate::backends::available(b) {
            if a.backend == "all" {
                eprintln!("note: backend `{b}` is not built in this lossc; skipped");
                continue;
            }
            return Err(not_built(ctx, b));
        }
        let t1 = Instant::now();
        let threads = if b == Backend::Jit {
            a.threads.max(1)
        } else {
            1
        };
        let exec = if b == Backend::Jit {
            crate::backends::jit(&p, threads)
        } else {
            crate::backends::executor(b, &p, &a.device)
        }
        .map_err(|e| ctx.fail(1, &e))?;
        // The backend's own compilation counts too (the JIT compiles here).
        let compile_ms = compile_ms + t1.elapsed().as_secs_f64() * 1e3;
        let mut times = vec![];
        let mut bytes_out = 0;
        for it in 0..a.iters.max(1) + 1 {
            let t = Instant::now();
            let o = p
                .run_with(exec.as_ref(), &env, true, false)
                .map_err(|e| ctx.run_err(e))?;
            let dt = t.elapsed().as_secs_f64() * 1e3;
            bytes_out = o
                .grads
                .iter()
                .map(|(_, t)| t.len() * elem_bytes(t.dtype))
                .sum();
            // The first call is warm-up.
            if it > 0 {
                times.push(dt);
            }
        }
        times.sort_by(f64::total_cmp);
        let median = times[times.len() / 2];
        let min = times[0];
        let gbps = (bytes_in + bytes_out) as f64 / (median * 1e-3) / 1e9;
        let dims_json: Map<String, Value> =
            dims0.iter().map(|(k, v)| (k.clone(), json!(v))).collect();
        let mut obj = json!({"backend": b.name(), "threads": threads, "dims": dims_json, "compile_ms": compile_ms, "median_ms": median, "min_ms": min, "gbps": gbps});
        if b == Backend::Candle {
            // Candle's times on a device include copying the inputs to it and the
            // gradients back: the executor takes and returns host tensors.
            obj["device"] = json!(a.device);
        }
        if a.json {
            writeln!(out, "{obj}").map_err(|e| io_fail(ctx, e))?;
        } else {
            writeln!(
                out,
                "{} [{}{}]: compile {:.2} ms, median {:.3} ms, min {:.3} ms, {:.3} GB/s",
                p.opt.name,
                b.name(),
                if b == Backend::Candle && a.device != "cpu" {
                    format!(" on {}", a.device)
                } else {
                    String::new()
                },
                compile_ms,
                median,
                min,
                gbps
            )
            .map_err(|e| io_fail(ctx, e))?;
        }
    }
    Ok(())
}

fn elem_bytes(d: DType) -> usize {
    match d {
        DType::F32 => 4,
        DType::F64 | DType::I64 => 8,
        DType::Bool => 1,
    }
}

fn export(ctx: &Ctx, a: ExportArgs, out: &mut dyn Write) -> Res<()> {
    use losslang_compiler::export::{ExportOptions, Target, export_with};
    let p = build(ctx, &a.file, &a.common, false)?;
    if let Some(b) = &a.batch_dim {
        let known = p.opt.inputs.iter().any(|i| {
            i.ty.shape
                .iter()
                .any(|d| *d == losslang_compiler::dim::Dim::sym(b))
        });
        if !known {
            return Err(ctx.fail(
                2,
                &RunError {
                    code: "L7004",
                    message: format!(
                        "--batch-dim {b}: no input of `{}` has a dim named `{b}`",
                        p.opt.name
                    ),
                    help: Some("name a dim of the inputs' shapes, e.g. --batch-dim N".into()),
                },
            ));
        }
    }
    let target = match a.target {
        ExportTarget::Torch => Target::Torch,
        ExportTarget::Jax => Target::Jax,
        ExportTarget::Numpy => Target::Numpy,
    };
    let opts = ExportOptions {
        batch_dim: a.batch_dim.clone(),
    };
    let text = export_with(&p, target, &a.file.display().to_string(), &opts);
    match &a.out {
        Some(path) => crate::io::write_file_atomic(path, |w| w.write_all(text.as_bytes()))
            .map_err(|e| data_fail(ctx, e)),
        None => write!(out, "{text}").map_err(|e| io_fail(ctx, e)),
    }
}

fn doc(ctx: &Ctx, a: DocArgs, out: &mut dyn Write) -> Res<()> {
    let p = build(ctx, &a.file, &a.common, true)?;
    write!(out, "{}", doc_page(&p)).map_err(|e| io_fail(ctx, e))
}

/// The page `lossc doc` prints.
pub fn doc_page(p: &Program) -> String {
    let g = &p.opt;
    let mut s = String::new();
    let sig: Vec<String> = g
        .inputs
        .iter()
        .map(|i| format!("{}: {}{}", i.name, i.ty, if i.diff { " diff" } else { "" }))
        .collect();
    s.push_str(&format!("loss {}({}) -> f32\n\n", g.name, sig.join(", ")));
    if let Some(d) = &g.doc {
        for l in d.lines() {
            s.push_str(&format!("  {l}\n"));
        }
        s.push('\n');
    }
    s.push_str("Inputs\n");
    for i in &g.inputs {
        s.push_str(&format!(
            "  {:<18} {:<16} {}\n",
            i.name,
            i.ty.to_string(),
            if i.diff {
                "diff (gradient returned)"
            } else {
                ""
            }
        ));
        if let Some(d) = &i.doc {
            s.push_str(&format!("      {}\n", d.replace('\n', "\n      ")));
        }
    }
    s.push_str("\nParams\n");
    if g.params.is_empty() {
        s.push_str("  (none)\n");
    }
    for pr in &g.params {
        let domain = pr
            .domain
            .as_ref()
            .map(|d| format!(" in {d}"))
            .unwrap_or_default();
        s.push_str(&format!(
            "  {:<18} {:<5} = {}{domain}\n",
            pr.name,
            pr.dtype.to_string(),
            pr.default.text()
        ));
        if let Some(d) = &pr.doc {
            s.push_str(&format!("      {}\n", d.replace('\n', "\n      ")));
        }
    }
    s.push_str("\nState\n");
    if g.states.is_empty() {
        s.push_str("  (none)\n");
    }
    for st in &g.states {
        let init = init_text(g, st.init);
        s.push_str(&format!(
            "  {:<18} {:<12} = {}\n",
            st.name,
            st.ty.to_string(),
            init
        ));
        if let Some(d) = &st.doc {
            s.push_str(&format!("      {}\n", d.replace('\n', "\n      ")));
        }
    }
    if !g.reports.is_empty() {
        s.push_str("\nReports\n");
        for (n, h) in &g.reports {
            s.push_str(&format!("  {:<18} {}\n", n, g.ty(*h)));
        }
    }
    s.push_str(&format!("\nSource: {}\n", p.sources[0].name));
    s
}

fn init_text(g: &losslang_compiler::ir::Graph, h: losslang_compiler::ir::Handle) -> String {
    use losslang_compiler::ops::Op;
    let mut cur = h;
    loop {
        let n = g.node(cur);
        match &n.op {
            Op::Const(v, _) | Op::Fill(v, _, _) => return v.text(),
            Op::Param(k) => return format!("param {}", g.params[*k].name),
            Op::BroadcastTo(_) | Op::Cast(_) | Op::StopGrad => cur = n.args[0],
            _ => return "(computed from params)".into(),
        }
    }
}
