//! The Cranelift JIT backend. It consumes the optimised graph
//! (`Program.opt`): `schedule` decides which values are stored and groups
//! the rest into loop nests, `lower` turns each kernel into a Cranelift
//! function over the buffer ABI of `abi`, and `exec` runs the kernels on the
//! caller's data. `Jit` is the `Executor`; `clif_text` and `sched_text` are
//! the `--stage clif` / `--stage sched` text forms.

pub mod abi;
pub mod array;
pub mod exec;
pub mod loops;
pub mod loss;
pub mod lower;
pub mod math;
pub mod runtime;
pub mod schedule;
pub mod threads;

use crate::abi::KernelFn;
use crate::lower::{Linker, Target, kernel_signature, lower_kernel};
use crate::schedule::Schedule;
use cranelift_codegen::ir::{
    ExtFuncData, ExternalName, FuncRef, Function, Signature, UserFuncName,
};
use cranelift_codegen::isa::{CallConv, TargetFrontendConfig};
use cranelift_codegen::settings::{self, Configurable};
use cranelift_frontend::FunctionBuilderContext;
use cranelift_jit::{JITBuilder, JITModule};
use cranelift_module::{FuncId, Linkage, Module, default_libcall_names};
use losslang_compiler::backend::Executor;
use losslang_compiler::ir::eval::{Env, NodeError};
use losslang_compiler::ir::{Graph, Handle};
use losslang_compiler::value::Tensor;
use std::collections::HashMap;
use std::hash::{DefaultHasher, Hash, Hasher};
use std::sync::{Arc, Mutex, OnceLock};

/// The JIT could not compile a graph (a broken invariant, or a host Cranelift
/// does not support).
#[derive(Debug, thiserror::Error)]
#[error("the Cranelift JIT failed: {0}")]
pub struct JitError(pub String);

/// The result sets compiled up front: everything a call with gradients asks
/// for, and the same without gradients.
pub fn variants(g: &Graph) -> Vec<(&'static str, Vec<Handle>)> {
    let mut fwd: Vec<Handle> = g.loss.into_iter().collect();
    fwd.extend(g.checks.iter().map(|c| c.cond));
    fwd.extend(g.reports.iter().map(|(_, h)| *h));
    fwd.extend(g.updates.iter().map(|u| u.value));
    let mut all = fwd.clone();
    all.extend(g.grads.iter().map(|(_, h)| *h));
    let mut v = vec![("main", key(&all))];
    if !g.grads.is_empty() {
        v.push(("forward", key(&fwd)));
    }
    v
}

fn key(roots: &[Handle]) -> Vec<Handle> {
    let mut k = roots.to_vec();
    k.sort();
    k.dedup();
    k
}

/// Imports runtime functions by name, for the text form.
struct TextLinker;

impl Linker for TextLinker {
    fn import(&mut self, func: &mut Function, name: &'static str, sig: Signature) -> FuncRef {
        let signature = func.import_signature(sig);
        func.import_function(ExtFuncData {
            name: ExternalName::testcase(name),
            signature,
            colocated: false,
            patchable: false,
        })
    }
}

/// Imports runtime functions as module symbols, for the JIT.
struct ModuleLinker<'m> {
    module: &'m mut JITModule,
    ids: HashMap<&'static str, FuncId>,
    err: Option<String>,
}

impl Linker for ModuleLinker<'_> {
    fn import(&mut self, func: &mut Function, name: &'static str, sig: Signature) -> FuncRef {
        let id = match self.ids.get(name) {
            Some(id) => *id,
            None => match self.module.declare_function(name, Linkage::Import, &sig) {
                Ok(id) => {
                    self.ids.insert(name, id);
                    id
                }
                Err(e) => {
                    self.err.get_or_insert(e.to_string());
                    // Still a well-formed reference; compilation fails afterwards.
                    let signature = func.import_signature(sig);
                    return func.import_function(ExtFuncData {
                        name: ExternalName::testcase(name),
                        signature,
                        colocated: false,
                        patchable: false,
                    });
                }
            },
        };
        self.module.declare_func_in_func(id, func)
    }
}

/// The host-independent target of the text form: SystemV, 64-bit pointers,
/// multiply-adds without FMA.
fn text_target() -> Target {
    Target {
        call_conv: CallConv::SystemV,
        frontend: TargetFrontendConfig {
            default_call_conv: CallConv::SystemV,
            pointer_width: target_lexicon::PointerWidth::U64,
            page_size_align_log2: 12,
        },
        math: math::MathOptions { fma: false },
    }
}

/// Every generated function of `g` before optimisation, named by result set
/// and kernel, with the schedules they come from.
pub fn clif_functions(g: &Graph) -> Vec<(String, Function)> {
    let mut out = vec![];
    let mut fctx = FunctionBuilderContext::new();
    for (name, roots) in variants(g) {
        let s = schedule::fuse(g, &roots);
        for ki in 0..s.kernels.len() {
            let t = text_target();
            let mut func = Function::with_name_signature(
                UserFuncName::testcase(format!("{name}_k{ki}")),
                kernel_signature(t.frontend.pointer_type(), t.call_conv),
            );
            lower_kernel(g, &s, ki, &mut func, &mut fctx, &mut TextLinker, t);
            out.push((format!("{name}_k{ki}"), func));
        }
    }
    out
}

/// `--stage clif`: every generated function's CLIF.
pub fn clif_text(g: &Graph) -> String {
    let mut o = String::from("; losslang clif v1\n");
    for (_, f) in clif_functions(g) {
        o.push('\n');
        o.push_str(&f.display().to_string());
    }
    o
}

/// `--stage sched`: the loop nests of each result set.
pub fn sched_text(g: &Graph) -> String {
    let mut o = String::from("; losslang sched v1\n");
    o.push_str(&format!("loss {}\n", g.name));
    for (name, roots) in variants(g) {
        let s = schedule::fuse(g, &roots);
        o.push('\n');
        o.push_str(&schedule::print(g, &s, name));
    }
    o
}

struct Holder(Option<JITModule>);

// SAFETY: the module is only read after `finalize_definitions` (its code is
// immutable and reentrant) and freed when the last user drops it.
unsafe impl Send for Holder {}
unsafe impl Sync for Holder {}

impl Drop for Holder {
    fn drop(&mut self) {
        if let Some(m) = self.0.take() {
            // SAFETY: the kernels' function pointers live in the same
            // `Compiled` and are dropped with it; nothing runs them after this.
            unsafe { m.free_memory() };
        }
    }
}

/// One result set compiled: its schedule and one function per kernel.
pub struct Compiled {
    pub schedule: Schedule,
    fns: Vec<KernelFn>,
    parallel: Vec<bool>,
    _module: Holder,
}

impl Compiled {
    pub(crate) fn fns(&self) -> &[KernelFn] {
        &self.fns
    }

    pub(crate) fn parallel(&self) -> &[bool] {
        &self.parallel
    }
}

fn compile_set(g: &Graph, roots: &[Handle], fused: bool) -> Result<Compiled, JitError> {
    let e = |x: &dyn std::fmt::Display| JitError(x.to_string());
    let mut fb = settings::builder();
    // The lowering already emits row statistics once per row and constants
    // once per kernel; Cranelift's e-graph pass (`speed`) re-elaborates those
    // pure values at their uses and, unable to hoist a value past a sibling
    // loop at the same depth, sinks them into the innermost loop of the next
    // pass. Measured on cw_ce (N=65536, C=100): `none` is 1.8× faster and
    // compiles in half the time.
    fb.set("opt_level", "none").map_err(|x| e(&x))?;
    // Every generated function is checked by `verify_function` in the tests;
    // verifying again on each compilation costs latency, not safety.
    fb.set("enable_verifier", "false").map_err(|x| e(&x))?;
    fb.set("use_colocated_libcalls", "false")
        .map_err(|x| e(&x))?;
    fb.set("is_pic", "false").map_err(|x| e(&x))?;
    let isa = cranelift_native::builder()
        .map_err(|x| e(&x))?
        .finish(settings::Flags::new(fb))
        .map_err(|x| e(&x))?;
    if isa.pointer_bytes() != 8 {
        return Err(JitError("the JIT needs a 64-bit host".into()));
    }
    let target = Target {
        call_conv: isa.default_call_conv(),
        frontend: isa.frontend_config(),
        math: math::MathOptions::for_isa(isa.as_ref()),
    };
    let mut jb = JITBuilder::with_isa(isa, default_libcall_names());
    for f in runtime::all() {
        jb.symbol(f.name, f.addr);
    }
    let mut module = JITModule::new(jb);
    let s = if fused {
        schedule::fuse(g, roots)
    } else {
        schedule::unfused(g, roots)
    };
    let sig = kernel_signature(target.frontend.pointer_type(), target.call_conv);
    let mut ids = vec![];
    let mut ctx = module.make_context();
    let mut fctx = FunctionBuilderContext::new();
    let mut imported = HashMap::new();
    let mut sizes = vec![];
    for ki in 0..s.kernels.len() {
        let id = module
            .declare_function(&format!("k{ki}"), Linkage::Local, &sig)
            .map_err(|x| e(&x))?;
        ctx.func = Function::with_name_signature(UserFuncName::user(0, id.as_u32()), sig.clone());
        let mut linker = ModuleLinker {
            module: &mut module,
            ids: std::mem::take(&mut imported),
            err: None,
        };
        lower_kernel(g, &s, ki, &mut ctx.func, &mut fctx, &mut linker, target);
        if let Some(x) = linker.err {
            return Err(JitError(x));
        }
        imported = linker.ids;
        module
            .define_function(id, &mut ctx)
            .map_err(|x| JitError(format!("kernel k{ki}: {x:?}")))?;
        sizes.push(ctx.compiled_code().map_or(0, |c| c.code_info().total_size));
        module.clear_context(&mut ctx);
        ids.push(id);
    }
    module.finalize_definitions().map_err(|x| e(&x))?;
    if std::env::var_os("LOSSLANG_PERF_MAP").is_some() {
        perf_map(
            &g.name,
            &ids.iter()
                .map(|id| module.get_finalized_function(*id))
                .collect::<Vec<_>>(),
            &sizes,
        );
    }
    let fns = ids
        .iter()
        .map(|id| {
            let p = module.get_finalized_function(*id);
            // SAFETY: every kernel was built with `kernel_signature`, which is this type.
            unsafe { std::mem::transmute::<*const u8, KernelFn>(p) }
        })
        .collect();
    let parallel = s.kernels.iter().map(|k| k.parallel).collect();
    Ok(Compiled {
        schedule: s,
        fns,
        parallel,
        _module: Holder(Some(module)),
    })
}

/// Appends the kernels to `/tmp/perf-<pid>.map` so that `perf report` names
/// them (`LOSSLANG_PERF_MAP=1`).
fn perf_map(name: &str, addrs: &[*const u8], sizes: &[u32]) {
    use std::io::Write;
    let path = std::env::temp_dir().join(format!("perf-{}.map", std::process::id()));
    if let Ok(mut f) = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
    {
        for (ki, (a, n)) in addrs.iter().zip(sizes).enumerate() {
            let _ = writeln!(f, "{:x} {n:x} losslang::{name}::k{ki}", *a as usize);
        }
    }
}

type CacheKey = (u64, bool, Vec<Handle>);
type CacheEntry = (CacheKey, Arc<String>, Arc<Compiled>);

/// Compiled result sets of this process, by graph text and result set; the
/// text is kept to rule out hash collisions. Bounded: the oldest goes first.
fn cache() -> &'static Mutex<Vec<CacheEntry>> {
    static C: OnceLock<Mutex<Vec<CacheEntry>>> = OnceLock::new();
    C.get_or_init(|| Mutex::new(Vec::new()))
}

const CACHE_ENTRIES: usize = 64;

/// The Cranelift JIT as an `Executor`. Params are run-time arguments, so
/// changing one never recompiles.
pub struct Jit {
    graph: Graph,
    text: Arc<String>,
    hash: u64,
    sets: Mutex<HashMap<Vec<Handle>, Arc<Compiled>>>,
    arena: Mutex<Vec<u64>>,
    threads: usize,
    fused: bool,
    use_cache: bool,
}

impl Jit {
    /// Compiles `g` (an optimised graph) for a call with and without gradients.
    pub fn new(g: &Graph) -> Result<Jit, JitError> {
        Jit::build(g, true)
    }

    /// Like `new`, without fusion: every node stored by a kernel of its own.
    /// The baseline that fusion is checked against.
    pub fn unfused(g: &Graph) -> Result<Jit, JitError> {
        Jit::build(g, false)
    }

    /// Like `new`, bypassing the process's compile cache: what a first
    /// compilation costs (for latency measurements).
    pub fn new_uncached(g: &Graph) -> Result<Jit, JitError> {
        Jit::build_with(g, true, false)
    }

    fn build(g: &Graph, fused: bool) -> Result<Jit, JitError> {
        Jit::build_with(g, fused, true)
    }

    fn build_with(g: &Graph, fused: bool, use_cache: bool) -> Result<Jit, JitError> {
        let text = losslang_compiler::ir::print::print(g, "opt");
        let mut h = DefaultHasher::new();
        text.hash(&mut h);
        let jit = Jit {
            graph: g.clone(),
            text: Arc::new(text),
            hash: h.finish(),
            sets: Mutex::new(HashMap::new()),
            arena: Mutex::new(Vec::new()),
            threads: 1,
            fused,
            use_cache,
        };
        // The call with gradients is what training makes; the forward-only
        // set is compiled on its first use, which halves the latency to the
        // first callable.
        if let Some((_, roots)) = variants(g).first() {
            jit.compiled(roots)?;
        }
        Ok(jit)
    }

    /// Splits the batch loops of fused kernels across `n` threads (the result
    /// is the same for every `n`).
    pub fn with_threads(mut self, n: usize) -> Jit {
        self.threads = n.max(1);
        self
    }

    pub fn threads(&self) -> usize {
        self.threads
    }

    /// The buffers reused across calls.
    pub(crate) fn arena(&self) -> &Mutex<Vec<u64>> {
        &self.arena
    }

    /// The compiled form of one result set (from this `Jit`, the process
    /// cache, or compiled now).
    pub fn compiled(&self, roots: &[Handle]) -> Result<Arc<Compiled>, JitError> {
        let k = key(roots);
        let mut sets = self.sets.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(c) = sets.get(&k) {
            return Ok(c.clone());
        }
        let ck = (self.hash, self.fused, k.clone());
        let hit = if self.use_cache {
            let c = cache().lock().unwrap_or_else(|p| p.into_inner());
            c.iter()
                .find(|(key, text, _)| key == &ck && **text == *self.text)
                .map(|(_, _, c)| c.clone())
        } else {
            None
        };
        let c = match hit {
            Some(c) => c,
            None => {
                let c = Arc::new(compile_set(&self.graph, &k, self.fused)?);
                let mut cc = cache().lock().unwrap_or_else(|p| p.into_inner());
                if cc.len() >= CACHE_ENTRIES {
                    cc.remove(0);
                }
                cc.push((ck, self.text.clone(), c.clone()));
                c
            }
        };
        sets.insert(k, c.clone());
        Ok(c)
    }
}

impl Executor for Jit {
    fn name(&self) -> &str {
        "jit"
    }

    fn eval(&self, g: &Graph, env: &Env, roots: &[Handle]) -> Result<Vec<Tensor>, NodeError> {
        debug_assert_eq!(g.len(), self.graph.len(), "the graph the JIT was built for");
        let c = self.compiled(roots).map_err(|e| NodeError {
            node: roots.first().copied().unwrap_or(Handle(0)),
            error: losslang_compiler::kernels::EvalError::Other(e.to_string()),
        })?;
        let k = exec::Kernels {
            schedule: &c.schedule,
            fns: &c.fns,
            parallel: &c.parallel,
        };
        exec::run(&self.graph, &k, env, roots, &self.arena, self.threads)
    }
}
