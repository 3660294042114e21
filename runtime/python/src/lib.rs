//! `losslang._losslang`: the compiler and the backends behind the Python
//! package. The Python layer (`losslang/__init__.py`) owns the API's
//! conveniences (dtype rules, reused gradient arrays, carried state); this
//! module does what needs Rust: compiling, rendering diagnostics and calling a
//! backend on the arrays' own memory.
//!
//! Every entry point runs under `guard`, which turns a panic into a Python
//! exception: nothing a caller passes may unwind across the FFI boundary.

use losslang_clif::array::{ArrayMut, ArrayRef, View};
use losslang_clif::loss::{Args, JitLoss, Outs};
use losslang_compiler::backend::{Backend, Executor};
use losslang_compiler::diag::Severity;
use losslang_compiler::ops::Scalar;
use losslang_compiler::program::{Call, CompileOptions, Failed, Program, RunError, compile};
use losslang_compiler::sema::Source;
use losslang_compiler::value::{DType, Data, Tensor};
use losslang_runtime::loader::FileLoader;
use losslang_runtime::render::render_diag;
use numpy::{
    PyArrayDyn, PyArrayMethods, PyReadonlyArrayDyn, PyReadwriteArrayDyn, PyUntypedArrayMethods,
};
use pyo3::exceptions::{PyRuntimeError, PyTypeError, PyValueError};
use pyo3::prelude::*;
use pyo3::types::{PyBool, PyFloat, PyInt};
use std::collections::BTreeMap;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::Arc;

pyo3::create_exception!(
    _losslang,
    CompileError,
    pyo3::exceptions::PyException,
    "A program that does not check: `.code`, `.diagnostics`, and str() the rendered report."
);
pyo3::create_exception!(
    _losslang,
    DataError,
    PyValueError,
    "Data that does not fit the program, with the command line's message."
);

/// The width the command line renders diagnostics at.
const WIDTH: usize = 100;

fn guard<T>(f: impl FnOnce() -> PyResult<T>) -> PyResult<T> {
    match catch_unwind(AssertUnwindSafe(f)) {
        Ok(r) => r,
        Err(payload) => {
            let what = payload
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| payload.downcast_ref::<&str>().map(|s| s.to_string()))
                .unwrap_or_else(|| "unknown panic".into());
            Err(PyRuntimeError::new_err(format!(
                "internal error in losslang (please report it with the .loss file): {what}"
            )))
        }
    }
}

fn data_error(py: Python<'_>, e: &RunError) -> PyErr {
    let err = DataError::new_err(e.message.clone());
    let v = err.value(py);
    // Attribute writes on a fresh exception instance cannot fail in practice;
    // a failure would only lose the extra attributes, never the error.
    let _ = v.setattr("code", e.code);
    let _ = v.setattr("help", e.help.clone());
    err
}

fn line_col(text: &str, offset: usize) -> (usize, usize) {
    let offset = offset.min(text.len());
    let before = text.get(..offset).unwrap_or(text);
    let line = before.matches('\n').count() + 1;
    let col = before.rsplit('\n').next().map_or(0, |s| s.chars().count()) + 1;
    (line, col)
}

fn severity(s: Severity) -> &'static str {
    match s {
        Severity::Error => "error",
        Severity::Warning => "warning",
        Severity::Note => "note",
    }
}

type Diag = (String, String, String, usize, usize);

fn diag_tuple(d: &losslang_compiler::diag::Diagnostic, sources: &[Source]) -> Diag {
    let text = sources
        .get(d.file)
        .or(sources.first())
        .map_or("", |s| s.text.as_str());
    let (line, col) = line_col(text, d.span.start);
    (
        d.code.to_string(),
        severity(d.severity).to_string(),
        d.message.clone(),
        line,
        col,
    )
}

/// A compiled `.loss` program.
#[pyclass(frozen, module = "losslang._losslang")]
struct CompiledProgram {
    program: Arc<Program>,
    /// Warnings and notes, rendered as the command line prints them.
    #[pyo3(get)]
    warnings: Vec<String>,
    #[pyo3(get)]
    source_name: String,
    /// What compiled it, to compile a second copy for the JIT (which owns its
    /// `Program`).
    source: Source,
    loss: Option<String>,
}

#[pymethods]
impl CompiledProgram {
    #[getter]
    fn name(&self) -> String {
        self.program.opt.name.clone()
    }

    /// The inputs in declaration order, as (name, dtype).
    #[getter]
    fn input_decls(&self) -> Vec<(String, String)> {
        let g = &self.program.opt;
        g.inputs
            .iter()
            .map(|d| (d.name.clone(), d.ty.dtype.to_string()))
            .collect()
    }

    /// The inputs with a gradient, in the order `Runner.call` takes their arrays.
    #[getter]
    fn grad_names(&self) -> Vec<String> {
        let g = &self.program.opt;
        g.grads
            .iter()
            .map(|(i, _)| g.inputs[*i].name.clone())
            .collect()
    }

    /// The states in declaration order, as (name, dtype).
    #[getter]
    fn state_decls(&self) -> Vec<(String, String)> {
        let g = &self.program.opt;
        g.states
            .iter()
            .map(|d| (d.name.clone(), d.ty.dtype.to_string()))
            .collect()
    }

    /// `lossc explain`: how each input's gradient flows.
    fn explain(&self) -> PyResult<String> {
        guard(|| Ok(losslang_runtime::cli::explain(&self.program)))
    }

    /// `lossc emit --stage STAGE` for the stages of a compiled program.
    fn emit(&self, stage: &str) -> PyResult<String> {
        guard(|| {
            let p = &self.program;
            match stage {
                "ir" => Ok(losslang_compiler::ir::print::print(&p.ir, "ir")),
                "grad" => Ok(losslang_compiler::ir::print::print(&p.grad, "grad")),
                "opt" => Ok(losslang_compiler::ir::print::print(&p.opt, "opt")),
                "sched" => Ok(losslang_clif::sched_text(&p.opt)),
                "clif" => Ok(losslang_clif::clif_text(&p.opt)),
                "candle" => losslang_candle_text(p),
                _ => Err(PyValueError::new_err(format!(
                    "unknown stage `{stage}`: one of ir, grad, opt, sched, clif, candle"
                ))),
            }
        })
    }

    /// `lossc export --target TARGET`: the self-contained Python module's text.
    fn export(&self, target: &str) -> PyResult<String> {
        use losslang_compiler::export::{Target, export};
        guard(|| {
            let t = match target {
                "torch" => Target::Torch,
                "jax" => Target::Jax,
                "numpy" => Target::Numpy,
                _ => {
                    return Err(PyValueError::new_err(format!(
                        "unknown export target `{target}`: one of torch, jax, numpy"
                    )));
                }
            };
            Ok(export(&self.program, t, &self.source_name))
        })
    }
}

fn losslang_candle_text(p: &Program) -> PyResult<String> {
    losslang_candle::emit_text(&p.opt, losslang_candle::Target::Cpu)
        .map_err(|e| PyValueError::new_err(e.to_string()))
}

/// Compiles `text` (named `name` in diagnostics; relative `use` paths resolve
/// next to it). A failure raises `CompileError` with the rendered report.
#[pyfunction]
#[pyo3(signature = (text, name, loss=None))]
fn compile_source(
    py: Python<'_>,
    text: String,
    name: String,
    loss: Option<String>,
) -> PyResult<CompiledProgram> {
    guard(|| {
        let src = Source {
            name: name.clone(),
            text,
        };
        let kept = (src.clone(), loss.clone());
        let opts = CompileOptions {
            loss,
            no_rewrite: false,
        };
        // The checker recurses over the program: a big stack turns deep
        // nesting into a result, as on the command line.
        let res = py
            .detach(|| losslang_runtime::with_big_stack(move || compile(src, &FileLoader, &opts)));
        let res = match res {
            Ok(r) => r,
            Err(_) => {
                return Err(PyRuntimeError::new_err(
                    "internal error in losslang while compiling (please report it with the .loss file)",
                ));
            }
        };
        match res {
            Ok(p) => {
                let warnings = p
                    .diags
                    .iter()
                    .map(|d| render_diag(d, &p.sources, false, WIDTH))
                    .collect();
                Ok(CompiledProgram {
                    program: Arc::new(p),
                    warnings,
                    source_name: name,
                    source: kept.0,
                    loss: kept.1,
                })
            }
            Err(Failed { sources, diags }) => {
                let mut ds = diags;
                ds.sort_by_key(|d| (d.severity != Severity::Error, d.file, d.span.start));
                let mut report = String::new();
                for d in &ds {
                    report.push_str(&render_diag(d, &sources, false, WIDTH));
                }
                let n = ds.iter().filter(|d| d.is_error()).count();
                report.push_str(&format!(
                    "error: {n} error{} in {name}\n",
                    if n == 1 { "" } else { "s" }
                ));
                let code = ds
                    .iter()
                    .find(|d| d.is_error())
                    .map_or("L0000", |d| d.code)
                    .to_string();
                let tuples: Vec<Diag> = ds.iter().map(|d| diag_tuple(d, &sources)).collect();
                let err = CompileError::new_err(report);
                let v = err.value(py);
                let _ = v.setattr("code", code);
                let _ = v.setattr("diagnostics", tuples);
                Err(err)
            }
        }
    })
}

/// The embedded source of `stdlib/<name>.loss`, or None.
#[pyfunction]
fn stdlib_source(name: &str) -> Option<&'static str> {
    losslang_runtime::loader::stdlib_source(name)
}

/// The names of the embedded standard library's losses.
#[pyfunction]
fn stdlib_names() -> Vec<String> {
    losslang_runtime::loader::stdlib_losses()
        .into_iter()
        .map(|(n, _)| n.trim_end_matches(".loss").to_string())
        .collect()
}

/// An input or state array borrowed from NumPy for the length of one call.
enum Ro<'py> {
    F32(PyReadonlyArrayDyn<'py, f32>),
    F64(PyReadonlyArrayDyn<'py, f64>),
    I64(PyReadonlyArrayDyn<'py, i64>),
    Bool(PyReadonlyArrayDyn<'py, bool>),
}

fn borrow_err(what: &str, e: impl std::fmt::Display) -> PyErr {
    PyValueError::new_err(format!("`{what}` cannot be borrowed: {e}"))
}

fn ro<'py>(a: &Bound<'py, PyAny>, what: &str) -> PyResult<Ro<'py>> {
    let r = if let Ok(x) = a.cast::<PyArrayDyn<f32>>() {
        Ro::F32(x.try_readonly().map_err(|e| borrow_err(what, e))?)
    } else if let Ok(x) = a.cast::<PyArrayDyn<f64>>() {
        Ro::F64(x.try_readonly().map_err(|e| borrow_err(what, e))?)
    } else if let Ok(x) = a.cast::<PyArrayDyn<i64>>() {
        Ro::I64(x.try_readonly().map_err(|e| borrow_err(what, e))?)
    } else if let Ok(x) = a.cast::<PyArrayDyn<bool>>() {
        Ro::Bool(x.try_readonly().map_err(|e| borrow_err(what, e))?)
    } else {
        return Err(PyTypeError::new_err(format!(
            "`{what}` must be a NumPy array of float32, float64, int64 or bool"
        )));
    };
    Ok(r)
}

fn not_contiguous(what: &str) -> PyErr {
    PyValueError::new_err(format!("`{what}` is not C-contiguous"))
}

impl Ro<'_> {
    fn shape(&self) -> Vec<usize> {
        match self {
            Ro::F32(a) => a.shape().to_vec(),
            Ro::F64(a) => a.shape().to_vec(),
            Ro::I64(a) => a.shape().to_vec(),
            Ro::Bool(a) => a.shape().to_vec(),
        }
    }

    fn data(&self, what: &str) -> PyResult<ArrayRef<'_>> {
        let nc = |_| not_contiguous(what);
        Ok(match self {
            Ro::F32(a) => ArrayRef::F32(a.as_slice().map_err(nc)?),
            Ro::F64(a) => ArrayRef::F64(a.as_slice().map_err(nc)?),
            Ro::I64(a) => ArrayRef::I64(a.as_slice().map_err(nc)?),
            Ro::Bool(a) => ArrayRef::Bool(a.as_slice().map_err(nc)?),
        })
    }

    fn tensor(&self, what: &str) -> PyResult<Tensor> {
        let shape = self.shape();
        Ok(match self.data(what)? {
            ArrayRef::F32(v) => {
                Tensor::from_f64(DType::F32, shape, v.iter().map(|&x| f64::from(x)).collect())
            }
            ArrayRef::F64(v) => Tensor::from_f64(DType::F64, shape, v.to_vec()),
            ArrayRef::I64(v) => Tensor::from_i64(shape, v.to_vec()),
            ArrayRef::Bool(v) => Tensor::from_bool(shape, v.to_vec()),
        })
    }
}

/// An output array (a gradient or a new state) borrowed for one call.
enum Rw<'py> {
    F32(PyReadwriteArrayDyn<'py, f32>),
    F64(PyReadwriteArrayDyn<'py, f64>),
    I64(PyReadwriteArrayDyn<'py, i64>),
    Bool(PyReadwriteArrayDyn<'py, bool>),
}

fn rw<'py>(a: &Bound<'py, PyAny>, what: &str) -> PyResult<Rw<'py>> {
    let r = if let Ok(x) = a.cast::<PyArrayDyn<f32>>() {
        Rw::F32(x.try_readwrite().map_err(|e| borrow_err(what, e))?)
    } else if let Ok(x) = a.cast::<PyArrayDyn<f64>>() {
        Rw::F64(x.try_readwrite().map_err(|e| borrow_err(what, e))?)
    } else if let Ok(x) = a.cast::<PyArrayDyn<i64>>() {
        Rw::I64(x.try_readwrite().map_err(|e| borrow_err(what, e))?)
    } else if let Ok(x) = a.cast::<PyArrayDyn<bool>>() {
        Rw::Bool(x.try_readwrite().map_err(|e| borrow_err(what, e))?)
    } else {
        return Err(PyTypeError::new_err(format!(
            "`{what}` must be a writeable NumPy array of float32, float64, int64 or bool"
        )));
    };
    Ok(r)
}

impl Rw<'_> {
    fn data(&mut self, what: &str) -> PyResult<ArrayMut<'_>> {
        let nc = |_| not_contiguous(what);
        Ok(match self {
            Rw::F32(a) => ArrayMut::F32(a.as_slice_mut().map_err(nc)?),
            Rw::F64(a) => ArrayMut::F64(a.as_slice_mut().map_err(nc)?),
            Rw::I64(a) => ArrayMut::I64(a.as_slice_mut().map_err(nc)?),
            Rw::Bool(a) => ArrayMut::Bool(a.as_slice_mut().map_err(nc)?),
        })
    }
}

fn scalar(v: &Bound<'_, PyAny>, name: &str) -> PyResult<Scalar> {
    // bool first: a Python bool is also an int.
    if v.is_instance_of::<PyBool>() {
        Ok(Scalar::B(v.extract()?))
    } else if v.is_instance_of::<PyInt>() {
        Ok(Scalar::I(v.extract()?))
    } else if v.is_instance_of::<PyFloat>() {
        Ok(Scalar::F(v.extract()?))
    } else if let Ok(f) = v.extract::<f64>() {
        // NumPy scalars and anything else with __float__.
        Ok(Scalar::F(f))
    } else {
        Err(PyTypeError::new_err(format!(
            "param `{name}` must be a bool, int or float"
        )))
    }
}

fn tensor_to_py(py: Python<'_>, t: &Tensor) -> PyResult<Py<PyAny>> {
    if t.shape.is_empty() {
        return Ok(match &t.data {
            Data::F(v) => v
                .first()
                .copied()
                .unwrap_or(f64::NAN)
                .into_pyobject(py)?
                .into_any()
                .unbind(),
            Data::I(v) => v
                .first()
                .copied()
                .unwrap_or(0)
                .into_pyobject(py)?
                .into_any()
                .unbind(),
            Data::B(v) => v
                .first()
                .copied()
                .unwrap_or(false)
                .into_pyobject(py)?
                .to_owned()
                .into_any()
                .unbind(),
        });
    }
    let shape = t.shape.clone();
    let arr = match (&t.data, t.dtype) {
        (Data::F(v), DType::F32) => {
            let f: Vec<f32> = v.iter().map(|&x| x as f32).collect();
            numpy::PyArray1::from_vec(py, f).reshape(shape)?.into_any()
        }
        (Data::F(v), _) => numpy::PyArray1::from_vec(py, v.clone())
            .reshape(shape)?
            .into_any(),
        (Data::I(v), _) => numpy::PyArray1::from_vec(py, v.clone())
            .reshape(shape)?
            .into_any(),
        (Data::B(v), _) => numpy::PyArray1::from_vec(py, v.clone())
            .reshape(shape)?
            .into_any(),
    };
    Ok(arr.unbind())
}

/// An array in its declared dtype, for the initial state.
fn tensor_to_array(py: Python<'_>, t: &Tensor) -> PyResult<Py<PyAny>> {
    let shape = t.shape.clone();
    let arr = match (&t.data, t.dtype) {
        (Data::F(v), DType::F32) => {
            let f: Vec<f32> = v.iter().map(|&x| x as f32).collect();
            numpy::PyArray1::from_vec(py, f).reshape(shape)?.into_any()
        }
        (Data::F(v), _) => numpy::PyArray1::from_vec(py, v.clone())
            .reshape(shape)?
            .into_any(),
        (Data::I(v), _) => numpy::PyArray1::from_vec(py, v.clone())
            .reshape(shape)?
            .into_any(),
        (Data::B(v), _) => numpy::PyArray1::from_vec(py, v.clone())
            .reshape(shape)?
            .into_any(),
    };
    Ok(arr.unbind())
}

enum Engine {
    Jit(Box<JitLoss>),
    Exec(Box<dyn Executor>),
}

/// A program bound to a backend: one call reads NumPy arrays in place and
/// writes gradients and new state into arrays the caller owns.
#[pyclass(frozen, module = "losslang._losslang")]
struct Runner {
    program: Arc<Program>,
    engine: Engine,
}

type Named<'py> = Vec<(String, Bound<'py, PyAny>)>;
type Reports = Vec<(String, Py<PyAny>)>;

#[pymethods]
impl Runner {
    #[new]
    #[pyo3(signature = (program, backend="jit", threads=1))]
    fn new(
        py: Python<'_>,
        program: &CompiledProgram,
        backend: &str,
        threads: usize,
    ) -> PyResult<Runner> {
        guard(|| {
            let p = Arc::clone(&program.program);
            let b = match backend {
                "jit" => Backend::Jit,
                "interp" => Backend::Interp,
                "candle" => Backend::Candle,
                _ => {
                    return Err(PyValueError::new_err(format!(
                        "unknown backend `{backend}`: one of jit, interp, candle"
                    )));
                }
            };
            let engine = match b {
                Backend::Jit => {
                    let src = program.source.clone();
                    let opts = CompileOptions {
                        loss: program.loss.clone(),
                        no_rewrite: false,
                    };
                    let j = py
                        .detach(|| {
                            losslang_runtime::with_big_stack(move || {
                                compile(src, &FileLoader, &opts)
                                    .map_err(|_| "the program no longer compiles".to_string())
                                    .and_then(|prog| JitLoss::new(prog).map_err(|e| e.to_string()))
                            })
                        })
                        .map_err(|_| PyRuntimeError::new_err("internal error in the JIT"))?
                        .map_err(|e| PyRuntimeError::new_err(format!("L5004: {e}")))?;
                    Engine::Jit(Box::new(j.with_threads(threads.max(1))))
                }
                _ => Engine::Exec(
                    losslang_runtime::backends::executor(b, &p, "cpu")
                        .map_err(|e| data_error(py, &e))?,
                ),
            };
            Ok(Runner { program: p, engine })
        })
    }

    /// The initial state (declaration order) for these inputs' dims and params.
    fn init_state(
        &self,
        py: Python<'_>,
        inputs: Named<'_>,
        params: Named<'_>,
    ) -> PyResult<Vec<(String, Py<PyAny>)>> {
        guard(|| {
            let p = &self.program;
            let ros = inputs
                .iter()
                .map(|(n, a)| ro(a, n))
                .collect::<PyResult<Vec<_>>>()?;
            let shapes: Vec<Vec<usize>> = ros.iter().map(Ro::shape).collect();
            let shaped: Vec<losslang_compiler::program::Shaped> = inputs
                .iter()
                .zip(ros.iter().zip(&shapes))
                .map(|((n, _), (r, s))| losslang_compiler::program::Shaped {
                    name: n,
                    dtype: match r {
                        Ro::F32(_) => DType::F32,
                        Ro::F64(_) => DType::F64,
                        Ro::I64(_) => DType::I64,
                        Ro::Bool(_) => DType::Bool,
                    },
                    shape: s,
                })
                .collect();
            let dims = p
                .bind_dims(&shaped, &[], &BTreeMap::new())
                .map_err(|e| data_error(py, &e))?;
            let ps = params
                .iter()
                .map(|(n, v)| Ok((n.clone(), scalar(v, n)?)))
                .collect::<PyResult<Vec<_>>>()?;
            let bound = p.bind_params(&ps).map_err(|e| data_error(py, &e))?;
            let init = p
                .init_state(&bound, &dims)
                .map_err(|e| data_error(py, &e))?;
            p.opt
                .states
                .iter()
                .zip(&init)
                .map(|(d, t)| Ok((d.name.clone(), tensor_to_array(py, t)?)))
                .collect()
        })
    }

    /// Seconds per `JitLoss::call` on these arrays, `iters` calls timed in Rust
    /// with no Python between them: the baseline the package's per-call
    /// overhead is measured against (runtime/python/bench.py).
    #[pyo3(signature = (inputs, params, state, grads, state_out, iters))]
    // The arguments of `call` plus the count: Python calls it positionally.
    #[allow(clippy::too_many_arguments)]
    fn time_jit(
        &self,
        py: Python<'_>,
        inputs: Named<'_>,
        params: Named<'_>,
        state: Named<'_>,
        grads: Option<Vec<Bound<'_, PyAny>>>,
        state_out: Vec<Bound<'_, PyAny>>,
        iters: usize,
    ) -> PyResult<Vec<f64>> {
        guard(|| {
            let Engine::Jit(j) = &self.engine else {
                return Err(PyValueError::new_err("time_jit needs the jit backend"));
            };
            let ps = params
                .iter()
                .map(|(n, v)| Ok((n.clone(), scalar(v, n)?)))
                .collect::<PyResult<Vec<_>>>()?;
            let in_ro = inputs
                .iter()
                .map(|(n, a)| ro(a, n))
                .collect::<PyResult<Vec<_>>>()?;
            let st_ro = state
                .iter()
                .map(|(n, a)| ro(a, n))
                .collect::<PyResult<Vec<_>>>()?;
            let mut g_rw = match &grads {
                Some(g) => g
                    .iter()
                    .enumerate()
                    .map(|(k, a)| rw(a, &format!("gradient {k}")))
                    .collect::<PyResult<Vec<_>>>()?,
                None => vec![],
            };
            let mut s_rw = state_out
                .iter()
                .enumerate()
                .map(|(k, a)| rw(a, &format!("state out {k}")))
                .collect::<PyResult<Vec<_>>>()?;
            let in_shapes: Vec<Vec<usize>> = in_ro.iter().map(Ro::shape).collect();
            let st_shapes: Vec<Vec<usize>> = st_ro.iter().map(Ro::shape).collect();
            let mut args = Args {
                params: ps,
                ..Args::default()
            };
            for (((n, _), r), s) in inputs.iter().zip(&in_ro).zip(&in_shapes) {
                args.inputs.push((n.as_str(), View::new(r.data(n)?, s)));
            }
            for (((n, _), r), s) in state.iter().zip(&st_ro).zip(&st_shapes) {
                args.state.push((n.as_str(), View::new(r.data(n)?, s)));
            }
            let mut outs = Outs::default();
            for (k, a) in g_rw.iter_mut().enumerate() {
                outs.grads.push(a.data(&format!("gradient {k}"))?);
            }
            for (k, a) in s_rw.iter_mut().enumerate() {
                outs.state.push(a.data(&format!("state out {k}"))?);
            }
            let mut times = Vec::with_capacity(iters);
            for _ in 0..iters {
                let t = std::time::Instant::now();
                j.call(&args, &mut outs).map_err(|e| data_error(py, &e))?;
                times.push(t.elapsed().as_secs_f64());
            }
            Ok(times)
        })
    }

    /// One call. `grads`: one array per diff input (declaration order), or
    /// None for the loss alone; `state_out`: one array per state. Returns the
    /// loss and the reports.
    #[pyo3(signature = (inputs, params, state, grads, state_out))]
    fn call(
        &self,
        py: Python<'_>,
        inputs: Named<'_>,
        params: Named<'_>,
        state: Named<'_>,
        grads: Option<Vec<Bound<'_, PyAny>>>,
        state_out: Vec<Bound<'_, PyAny>>,
    ) -> PyResult<(f64, Reports)> {
        guard(|| {
            let ps = params
                .iter()
                .map(|(n, v)| Ok((n.clone(), scalar(v, n)?)))
                .collect::<PyResult<Vec<_>>>()?;
            let in_ro = inputs
                .iter()
                .map(|(n, a)| ro(a, n))
                .collect::<PyResult<Vec<_>>>()?;
            let st_ro = state
                .iter()
                .map(|(n, a)| ro(a, &format!("state {n}")))
                .collect::<PyResult<Vec<_>>>()?;
            let mut g_rw = match &grads {
                Some(g) => g
                    .iter()
                    .enumerate()
                    .map(|(k, a)| rw(a, &format!("gradient {k}")))
                    .collect::<PyResult<Vec<_>>>()?,
                None => vec![],
            };
            let mut s_rw = state_out
                .iter()
                .enumerate()
                .map(|(k, a)| rw(a, &format!("state out {k}")))
                .collect::<PyResult<Vec<_>>>()?;
            let (loss, reports) = match &self.engine {
                Engine::Jit(j) => {
                    let in_shapes: Vec<Vec<usize>> = in_ro.iter().map(Ro::shape).collect();
                    let st_shapes: Vec<Vec<usize>> = st_ro.iter().map(Ro::shape).collect();
                    let mut args = Args {
                        params: ps,
                        ..Args::default()
                    };
                    for (((n, _), r), s) in inputs.iter().zip(&in_ro).zip(&in_shapes) {
                        args.inputs.push((n.as_str(), View::new(r.data(n)?, s)));
                    }
                    for (((n, _), r), s) in state.iter().zip(&st_ro).zip(&st_shapes) {
                        args.state.push((n.as_str(), View::new(r.data(n)?, s)));
                    }
                    let mut outs = Outs::default();
                    for (k, a) in g_rw.iter_mut().enumerate() {
                        outs.grads.push(a.data(&format!("gradient {k}"))?);
                    }
                    for (k, a) in s_rw.iter_mut().enumerate() {
                        outs.state.push(a.data(&format!("state out {k}"))?);
                    }
                    // The kernels read and write only the borrowed slices
                    // (numpy's borrow flags keep Python from aliasing them
                    // meanwhile), so other Python threads may run.
                    let called = py
                        .detach(|| catch_unwind(AssertUnwindSafe(|| j.call(&args, &mut outs))))
                        .map_err(|_| {
                            PyRuntimeError::new_err(
                                "internal error in the JIT (please report it with the .loss file)",
                            )
                        })?
                        .map_err(|e| data_error(py, &e))?;
                    (called.loss, called.reports)
                }
                Engine::Exec(exec) => {
                    let p = &self.program;
                    let call = Call {
                        inputs: inputs
                            .iter()
                            .zip(&in_ro)
                            .map(|((n, _), r)| Ok((n.clone(), r.tensor(n)?)))
                            .collect::<PyResult<Vec<_>>>()?,
                        params: ps,
                        state: state
                            .iter()
                            .zip(&st_ro)
                            .map(|((n, _), r)| Ok((n.clone(), r.tensor(n)?)))
                            .collect::<PyResult<Vec<_>>>()?,
                        dims: BTreeMap::new(),
                        grads: grads.is_some(),
                        check_finite: false,
                    };
                    let env = p.bind(&call).map_err(|e| data_error(py, &e))?;
                    if grads.is_some() && g_rw.len() != p.opt.grads.len() {
                        return Err(PyValueError::new_err(format!(
                            "{} gradient arrays were given; `{}` has {} diff inputs",
                            g_rw.len(),
                            p.opt.name,
                            p.opt.grads.len()
                        )));
                    }
                    if s_rw.len() != p.opt.states.len() {
                        return Err(PyValueError::new_err(format!(
                            "{} state arrays were given; `{}` has {} states",
                            s_rw.len(),
                            p.opt.name,
                            p.opt.states.len()
                        )));
                    }
                    let o = p
                        .run_with(exec.as_ref(), &env, grads.is_some(), false)
                        .map_err(|e| data_error(py, &e))?;
                    for (k, ((n, t), a)) in o.grads.iter().zip(g_rw.iter_mut()).enumerate() {
                        let what = format!("gradient {k}");
                        if !a.data(&what)?.copy_from_tensor(t) {
                            return Err(PyValueError::new_err(format!(
                                "the gradient array for `{n}` does not fit {}{:?}",
                                t.dtype, t.shape
                            )));
                        }
                    }
                    for (k, ((n, t), a)) in o.state.iter().zip(s_rw.iter_mut()).enumerate() {
                        let what = format!("state out {k}");
                        if !a.data(&what)?.copy_from_tensor(t) {
                            return Err(PyValueError::new_err(format!(
                                "the state array for `{n}` does not fit {}{:?}",
                                t.dtype, t.shape
                            )));
                        }
                    }
                    (o.loss, o.reports)
                }
            };
            let reports = reports
                .iter()
                .map(|(n, t)| Ok((n.clone(), tensor_to_py(py, t)?)))
                .collect::<PyResult<Vec<_>>>()?;
            Ok((loss, reports))
        })
    }
}

#[pymodule]
fn _losslang(m: &Bound<'_, PyModule>) -> PyResult<()> {
    let py = m.py();
    m.add("CompileError", py.get_type::<CompileError>())?;
    m.add("DataError", py.get_type::<DataError>())?;
    m.add_class::<CompiledProgram>()?;
    m.add_class::<Runner>()?;
    m.add_function(wrap_pyfunction!(compile_source, m)?)?;
    m.add_function(wrap_pyfunction!(stdlib_source, m)?)?;
    m.add_function(wrap_pyfunction!(stdlib_names, m)?)?;
    Ok(())
}
