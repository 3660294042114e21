//! Rust functions that generated code calls, registered as JIT symbols:
//! scalar transcendentals (until `math` has an inline version), the
//! counter-based generator, matmul, stable argsort and the fault recorder.
//! Each is `extern "C"` with a signature listed in `RT_FNS`, which the
//! lowering uses to import it and the JIT builder to register it.

use crate::abi::{FAULT_DUPLICATE, FAULT_INDEX, Fault, Faults};
use losslang_compiler::ops::source::{rand_normal, uniform};
use losslang_compiler::ops::{BinaryOp, UnaryOp};

/// A scalar type in a runtime function's signature.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Arg {
    F32,
    F64,
    I64,
    Ptr,
}

/// A runtime function: its symbol, signature and address.
pub struct RtFn {
    pub name: &'static str,
    pub params: &'static [Arg],
    pub rets: &'static [Arg],
    pub addr: *const u8,
}

// SAFETY: the addresses are of plain functions, shared read-only.
unsafe impl Sync for RtFn {}

macro_rules! unary_fns {
    ($($op:ident => $f32:ident, $f64:ident;)*) => {
        $(
            extern "C" fn $f32(x: f32) -> f32 {
                // In f64 then rounded, like the interpreter's f64 kernel.
                UnaryOp::$op.apply(f64::from(x)) as f32
            }
            extern "C" fn $f64(x: f64) -> f64 {
                UnaryOp::$op.apply(x)
            }
        )*
        /// The runtime function names of a unary op that has no instruction.
        pub fn unary_symbol(op: UnaryOp, f64: bool) -> Option<&'static str> {
            match op {
                $(UnaryOp::$op => Some(if f64 { stringify!($f64) } else { stringify!($f32) }),)*
                _ => None,
            }
        }
        const UNARY_FNS: &[(&str, &str, *const u8, *const u8)] = &[
            $((stringify!($f32), stringify!($f64), $f32 as *const u8, $f64 as *const u8),)*
        ];
    };
}

unary_fns! {
    Exp => rt_exp_f32, rt_exp_f64;
    Log => rt_log_f32, rt_log_f64;
    Log1p => rt_log1p_f32, rt_log1p_f64;
    Expm1 => rt_expm1_f32, rt_expm1_f64;
    Tanh => rt_tanh_f32, rt_tanh_f64;
    Sigmoid => rt_sigmoid_f32, rt_sigmoid_f64;
    LogSigmoid => rt_log_sigmoid_f32, rt_log_sigmoid_f64;
    Softplus => rt_softplus_f32, rt_softplus_f64;
    Sin => rt_sin_f32, rt_sin_f64;
    Cos => rt_cos_f32, rt_cos_f64;
    Atanh => rt_atanh_f32, rt_atanh_f64;
    Asinh => rt_asinh_f32, rt_asinh_f64;
}

extern "C" fn rt_pow_f32(x: f32, y: f32) -> f32 {
    losslang_compiler::ops::elementwise::apply_f(BinaryOp::Pow, f64::from(x), f64::from(y)) as f32
}

extern "C" fn rt_pow_f64(x: f64, y: f64) -> f64 {
    losslang_compiler::ops::elementwise::apply_f(BinaryOp::Pow, x, y)
}

extern "C" fn rt_rand_normal(seed: i64, step: i64, i: i64) -> f64 {
    rand_normal(seed as u64, step as u64, i as u64)
}

extern "C" fn rt_rand_uniform(seed: i64, step: i64, i: i64) -> f64 {
    uniform(seed as u64, step as u64, i as u64, 0)
}

extern "C" fn rt_logaddexp(a: f64, b: f64) -> f64 {
    losslang_compiler::ops::order::logaddexp(a, b)
}

/// NumPy `searchsorted`: the first position whose entry is not before `v`
/// (compared as f64, NaN last). `partition_point`, as in the interpreter, so
/// even an unsorted row gives the same answer.
fn before(a: f64, v: f64, right: bool) -> bool {
    if v.is_nan() {
        !a.is_nan()
    } else if right {
        a <= v
    } else {
        a < v
    }
}

macro_rules! search_fn {
    ($name:ident, $t:ty) => {
        unsafe extern "C" fn $name(sorted: *const $t, n: i64, v: f64, right: i64) -> i64 {
            // SAFETY: `sorted` is a materialised slot of `n` elements.
            let s = unsafe { std::slice::from_raw_parts(sorted, n as usize) };
            #[allow(clippy::unnecessary_cast)]
            let p = s.partition_point(|&a| before(a as f64, v, right != 0));
            p as i64
        }
    };
}

search_fn!(rt_searchsorted_f32, f32);
search_fn!(rt_searchsorted_f64, f64);
search_fn!(rt_searchsorted_i64, i64);

/// `out[m, n] = a[m, k] @ b[k, n]`, accumulated in f64 in the interpreter's order.
unsafe extern "C" fn rt_matmul_f32(
    a: *const f32,
    b: *const f32,
    out: *mut f32,
    m: i64,
    k: i64,
    n: i64,
) {
    let (m, k, n) = (m as usize, k as usize, n as usize);
    // SAFETY: the driver sized the buffers from the same resolved dims.
    let (a, b, out) = unsafe {
        (
            std::slice::from_raw_parts(a, m * k),
            std::slice::from_raw_parts(b, k * n),
            std::slice::from_raw_parts_mut(out, m * n),
        )
    };
    let mut row = vec![0.0f64; n];
    for i in 0..m {
        row.iter_mut().for_each(|r| *r = 0.0);
        for p in 0..k {
            let x = f64::from(a[i * k + p]);
            for (r, &y) in row.iter_mut().zip(&b[p * n..(p + 1) * n]) {
                *r += x * f64::from(y);
            }
        }
        for (o, r) in out[i * n..(i + 1) * n].iter_mut().zip(&row) {
            *o = *r as f32;
        }
    }
}

unsafe extern "C" fn rt_matmul_f64(
    a: *const f64,
    b: *const f64,
    out: *mut f64,
    m: i64,
    k: i64,
    n: i64,
) {
    let (m, k, n) = (m as usize, k as usize, n as usize);
    // SAFETY: as above.
    let (a, b, out) = unsafe {
        (
            std::slice::from_raw_parts(a, m * k),
            std::slice::from_raw_parts(b, k * n),
            std::slice::from_raw_parts_mut(out, m * n),
        )
    };
    out.iter_mut().for_each(|o| *o = 0.0);
    for i in 0..m {
        for p in 0..k {
            let x = a[i * k + p];
            for j in 0..n {
                out[i * n + j] += x * b[p * n + j];
            }
        }
    }
}

/// Stable argsort of each `(outer, inner)` line of `len` elements; NaN last in
/// both directions, as in the interpreter.
fn argsort_lines(
    v: &dyn Fn(usize) -> f64,
    out: &mut [i64],
    outer: usize,
    len: usize,
    inner: usize,
    desc: bool,
) {
    let mut order: Vec<usize> = Vec::with_capacity(len);
    for o in 0..outer {
        for i in 0..inner {
            let at = |k: usize| v(o * len * inner + k * inner + i);
            order.clear();
            order.extend(0..len);
            order.sort_by(|&p, &q| {
                let (a, b) = (at(p), at(q));
                match (a.is_nan(), b.is_nan()) {
                    (true, true) => std::cmp::Ordering::Equal,
                    (true, false) => std::cmp::Ordering::Greater,
                    (false, true) => std::cmp::Ordering::Less,
                    _ => {
                        let c = a.partial_cmp(&b).unwrap_or(std::cmp::Ordering::Equal);
                        if desc { c.reverse() } else { c }
                    }
                }
            });
            for (k, &p) in order.iter().enumerate() {
                out[o * len * inner + k * inner + i] = p as i64;
            }
        }
    }
}

macro_rules! argsort_fn {
    ($name:ident, $t:ty) => {
        unsafe extern "C" fn $name(
            x: *const $t,
            out: *mut i64,
            outer: i64,
            len: i64,
            inner: i64,
            desc: i64,
        ) {
            let (outer, len, inner) = (outer as usize, len as usize, inner as usize);
            let n = outer * len * inner;
            // SAFETY: the driver sized both buffers from the same resolved dims.
            let (x, out) = unsafe {
                (
                    std::slice::from_raw_parts(x, n),
                    std::slice::from_raw_parts_mut(out, n),
                )
            };
            #[allow(clippy::unnecessary_cast)]
            argsort_lines(&|i| x[i] as f64, out, outer, len, inner, desc != 0);
        }
    };
}

argsort_fn!(rt_argsort_f32, f32);
argsort_fn!(rt_argsort_f64, f64);
argsort_fn!(rt_argsort_i64, i64);

/// Records a fault (an index out of range, or an integer division by zero).
unsafe extern "C" fn rt_fault(
    faults: *const Faults,
    kind: i64,
    node: i64,
    value: i64,
    pos: i64,
    size: i64,
) {
    // SAFETY: `faults` is the driver's, alive for the whole call.
    let faults = unsafe { &*faults };
    faults.record(Fault {
        kind,
        node: node as u32,
        value,
        pos,
        size,
    });
}

/// A scatter's ids are out of range or repeated: finds the interpreter's error
/// (the first repeated id wins over a range error, as in its kernel).
unsafe extern "C" fn rt_scatter_fault(
    faults: *const Faults,
    node: i64,
    ids: *const i64,
    n: i64,
    size: i64,
) {
    // SAFETY: `ids` is the materialised index argument of `n` elements; `faults` as above.
    let (faults, ids) = unsafe { (&*faults, std::slice::from_raw_parts(ids, n as usize)) };
    let mut seen = std::collections::HashSet::new();
    for (f, &k) in ids.iter().enumerate() {
        if !seen.insert(k) {
            faults.record(Fault {
                kind: FAULT_DUPLICATE,
                node: node as u32,
                value: k,
                pos: f as i64,
                size,
            });
            return;
        }
    }
    if let Some(f) = ids.iter().position(|&k| k < 0 || k >= size) {
        faults.record(Fault {
            kind: FAULT_INDEX,
            node: node as u32,
            value: ids[f],
            pos: f as i64,
            size,
        });
    }
}

use Arg::{F32, F64, I64, Ptr};

const OTHER_FNS: &[(&str, &[Arg], &[Arg])] = &[
    ("rt_pow_f32", &[F32, F32], &[F32]),
    ("rt_pow_f64", &[F64, F64], &[F64]),
    ("rt_rand_normal", &[I64, I64, I64], &[F64]),
    ("rt_rand_uniform", &[I64, I64, I64], &[F64]),
    ("rt_matmul_f32", &[Ptr, Ptr, Ptr, I64, I64, I64], &[]),
    ("rt_matmul_f64", &[Ptr, Ptr, Ptr, I64, I64, I64], &[]),
    ("rt_argsort_f32", &[Ptr, Ptr, I64, I64, I64, I64], &[]),
    ("rt_argsort_f64", &[Ptr, Ptr, I64, I64, I64, I64], &[]),
    ("rt_argsort_i64", &[Ptr, Ptr, I64, I64, I64, I64], &[]),
    ("rt_logaddexp", &[F64, F64], &[F64]),
    ("rt_searchsorted_f32", &[Ptr, I64, F64, I64], &[I64]),
    ("rt_searchsorted_f64", &[Ptr, I64, F64, I64], &[I64]),
    ("rt_searchsorted_i64", &[Ptr, I64, F64, I64], &[I64]),
    ("rt_fault", &[Ptr, I64, I64, I64, I64, I64], &[]),
    ("rt_scatter_fault", &[Ptr, I64, Ptr, I64, I64], &[]),
];

fn other_addr(name: &str) -> *const u8 {
    match name {
        "rt_pow_f32" => rt_pow_f32 as *const u8,
        "rt_pow_f64" => rt_pow_f64 as *const u8,
        "rt_rand_normal" => rt_rand_normal as *const u8,
        "rt_rand_uniform" => rt_rand_uniform as *const u8,
        "rt_matmul_f32" => rt_matmul_f32 as *const u8,
        "rt_matmul_f64" => rt_matmul_f64 as *const u8,
        "rt_argsort_f32" => rt_argsort_f32 as *const u8,
        "rt_argsort_f64" => rt_argsort_f64 as *const u8,
        "rt_argsort_i64" => rt_argsort_i64 as *const u8,
        "rt_logaddexp" => rt_logaddexp as *const u8,
        "rt_searchsorted_f32" => rt_searchsorted_f32 as *const u8,
        "rt_searchsorted_f64" => rt_searchsorted_f64 as *const u8,
        "rt_searchsorted_i64" => rt_searchsorted_i64 as *const u8,
        "rt_fault" => rt_fault as *const u8,
        "rt_scatter_fault" => rt_scatter_fault as *const u8,
        _ => unreachable!("every name of OTHER_FNS has an address"),
    }
}

/// Every runtime function.
pub fn all() -> Vec<RtFn> {
    let mut v = Vec::new();
    for &(n32, n64, a32, a64) in UNARY_FNS {
        v.push(RtFn {
            name: n32,
            params: &[F32],
            rets: &[F32],
            addr: a32,
        });
        v.push(RtFn {
            name: n64,
            params: &[F64],
            rets: &[F64],
            addr: a64,
        });
    }
    for &(name, params, rets) in OTHER_FNS {
        v.push(RtFn {
            name,
            params,
            rets,
            addr: other_addr(name),
        });
    }
    v
}

/// The signature of a runtime function by name.
pub fn lookup(name: &str) -> RtFn {
    all()
        .into_iter()
        .find(|f| f.name == name)
        .unwrap_or_else(|| panic!("internal: no runtime function `{name}`"))
}
