//! Rust functions that generated code calls, registered as JIT symbols:
//! scalar transcendentals (until `math` has an inline version), the
//! counter-based generator, matmul, stable argsort and the fault recorder.
//! Each is `extern "C"` with a signature listed in `RT_FNS`, which the
//! lowering uses to import it and the JIT builder to register it.

use crate::abi::{FAULT_DUPLICATE, FAULT_INDEX, Fault, Faults};
use losslang_compiler::ops::UnaryOp;
use losslang_compiler::ops::source::{rand_normal, uniform};

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
/// (compared as f64, NaN last).
fn before(a: f64, v: f64, right: bool) -> bool {
    if v.is_nan() {
        !a.is_nan()
    } else if right {
        a <= v
    } else {
        a < v
    }
}

/// A key whose integer order is the `before` order of the value: NaN last,
/// -0 equal to +0.
fn order_key(v: f64) -> u64 {
    if v.is_nan() {
        return u64::MAX;
    }
    let b = (v + 0.0).to_bits();
    if b >> 63 == 1 { !b } else { b | 1 << 63 }
}

/// `out[i]` = the position of `vals[i]` in `sorted`, for every value at
/// once. On a table sorted in the `before` order (the only kind a program
/// builds: `sort`, or `take` by `argsort`) the values are visited in
/// ascending order with one pointer walking the table: O(m log m + n) and
/// sequential reads, where a binary search per value costs log2(n) cache
/// misses each. Any other table gets the interpreter's `partition_point`
/// per value, so the answers are the same either way.
fn search_all(sorted: &[f64], vals: &[f64], out: &mut [i64], right: bool) {
    let is_sorted = sorted
        .windows(2)
        .all(|w| w[1].is_nan() || (!w[0].is_nan() && w[0] <= w[1]));
    if !is_sorted || vals.len() < 64 {
        for (o, &v) in out.iter_mut().zip(vals) {
            *o = sorted.partition_point(|&a| before(a, v, right)) as i64;
        }
        return;
    }
    let mut order: Vec<(u64, usize)> = vals
        .iter()
        .enumerate()
        .map(|(i, &v)| (order_key(v), i))
        .collect();
    order.sort_unstable();
    let mut p = 0usize;
    for &(_, i) in &order {
        let v = vals[i];
        // `before(·, v)` only grows as `v` ascends, so the pointer never
        // moves back.
        while p < sorted.len() && before(sorted[p], v, right) {
            p += 1;
        }
        out[i] = p as i64;
    }
}

macro_rules! search_fn {
    ($name:ident, $t:ty) => {
        unsafe extern "C" fn $name(
            sorted: *const $t,
            n: i64,
            vals: *const $t,
            m: i64,
            out: *mut i64,
            right: i64,
        ) {
            // SAFETY: the driver sized the three slots from the same resolved
            // dims: `n` sorted entries, `m` values and `m` positions.
            let (s, v, out) = unsafe {
                (
                    std::slice::from_raw_parts(sorted, n as usize),
                    std::slice::from_raw_parts(vals, m as usize),
                    std::slice::from_raw_parts_mut(out, m as usize),
                )
            };
            // Compared as f64, as in the interpreter.
            #[allow(clippy::unnecessary_cast)]
            let s: Vec<f64> = s.iter().map(|&a| a as f64).collect();
            #[allow(clippy::unnecessary_cast)]
            let v: Vec<f64> = v.iter().map(|&a| a as f64).collect();
            search_all(&s, &v, out, right != 0);
        }
    };
}

search_fn!(rt_searchsorted_f32, f32);
search_fn!(rt_searchsorted_f64, f64);
search_fn!(rt_searchsorted_i64, i64);

/// `out[m, n] = a[m, k] @ b[k, n]`, all row-major, through `gemm`'s
/// SIMD kernels (picked at run time for this CPU).
///
/// Single-threaded: the driver already splits work across threads and calls
/// a matmul from one of them, so nested parallelism would only oversubscribe.
///
/// # Safety
/// `a`, `b` and `out` hold `m * k`, `k * n` and `m * n` elements, and `out`
/// overlaps neither input.
unsafe fn matmul<T: Copy + 'static>(
    a: *const T,
    b: *const T,
    out: *mut T,
    (m, k, n): (usize, usize, usize),
    zero: T,
    one: T,
) {
    if m == 0 || n == 0 {
        return;
    }
    if k == 0 {
        // An empty sum; `gemm` is not asked, so nothing depends on how it
        // treats a zero-depth product.
        // SAFETY: `out` holds `m * n` elements.
        unsafe { std::slice::from_raw_parts_mut(out, m * n) }.fill(zero);
        return;
    }
    // Strides are in elements: a row of `out` and `b` is `n` apart, of `a`
    // `k` apart; columns are adjacent. `read_dst = false` overwrites `out`
    // (whatever it held) with `one * a @ b`.
    // SAFETY: the caller's contract; `gemm` reads and writes only within
    // those extents for these strides.
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            out,
            1,
            n as isize,
            false,
            a,
            1,
            k as isize,
            b,
            1,
            n as isize,
            zero,
            one,
            false,
            false,
            false,
            gemm::Parallelism::None,
        );
    }
}

/// f32 matmul accumulating in f32, as PyTorch and candle do (and unlike the
/// interpreter, which sums in f64 then rounds): the blocked, vectorised
/// summation order and the f32 partial sums make the result differ from the
/// interpreter's by rounding only, well within the conformance tolerances,
/// and the f64 detour would cost twice the memory traffic and half the lanes.
unsafe extern "C" fn rt_matmul_f32(
    a: *const f32,
    b: *const f32,
    out: *mut f32,
    m: i64,
    k: i64,
    n: i64,
) {
    // SAFETY: the driver sized the buffers from the same resolved dims, and
    // `out` is the node's own slot.
    unsafe { matmul(a, b, out, (m as usize, k as usize, n as usize), 0.0, 1.0) }
}

/// f64 matmul; the summation order differs from the interpreter's, so the
/// result may differ from it by rounding only.
unsafe extern "C" fn rt_matmul_f64(
    a: *const f64,
    b: *const f64,
    out: *mut f64,
    m: i64,
    k: i64,
    n: i64,
) {
    // SAFETY: as above.
    unsafe { matmul(a, b, out, (m as usize, k as usize, n as usize), 0.0, 1.0) }
}

// Argsort sorts one packed integer per element, `key << index_bits | index`:
// each key is mapped to an unsigned integer whose order is the wanted order
// (NaN last either way, `desc` reversing the rest), and the index below it
// breaks ties, so every packed value is distinct and an unstable sort gives
// exactly the stable order the interpreter's `sort_by` gives. Sorting plain
// integers, with no comparator call and no indirection into the input, is
// what makes it fast.

/// The order key of an f32: `partial_cmp` order (so -0 and +0 tie), NaN after
/// everything in both directions.
fn f32_key(x: f32, desc: bool) -> u32 {
    if x.is_nan() {
        return u32::MAX;
    }
    let bits = if x == 0.0 { 0 } else { x.to_bits() };
    // Negative floats order backwards by their bits; flipping them all, and
    // setting the sign bit of the positives, gives the numeric order.
    let k = if bits >> 31 == 1 {
        !bits
    } else {
        bits | (1 << 31)
    };
    // Every non-NaN key lies strictly between 0 and u32::MAX (±inf map to
    // 0x007f_ffff and 0xff80_0000), so the complement stays below NaN's.
    if desc { !k } else { k }
}

/// As `f32_key`, for f64.
fn f64_key(x: f64, desc: bool) -> u64 {
    if x.is_nan() {
        return u64::MAX;
    }
    let bits = if x == 0.0 { 0 } else { x.to_bits() };
    let k = if bits >> 63 == 1 {
        !bits
    } else {
        bits | (1 << 63)
    };
    if desc { !k } else { k }
}

/// The order key of an i64, exact over the whole range.
fn i64_key(x: i64, desc: bool) -> u64 {
    let k = (x as u64) ^ (1 << 63);
    if desc { !k } else { k }
}

/// Argsorts each `(outer, inner)` line of `len` elements of `x` into `out`,
/// sorting the values `pack(x, position)` and reading each position back with
/// `index`. One buffer serves every line, so a strided sort allocates once.
fn argsort_lines<T: Copy, P: Ord + Copy>(
    x: &[T],
    out: &mut [i64],
    (outer, len, inner): (usize, usize, usize),
    pack: impl Fn(T, usize) -> P,
    index: impl Fn(P) -> usize,
) {
    let mut buf: Vec<P> = Vec::with_capacity(len);
    for (xs, os) in x
        .chunks_exact(len * inner)
        .zip(out.chunks_exact_mut(len * inner))
        .take(outer)
    {
        if inner == 1 {
            buf.clear();
            buf.extend(xs.iter().enumerate().map(|(k, &v)| pack(v, k)));
            buf.sort_unstable();
            for (o, &p) in os.iter_mut().zip(&buf) {
                *o = index(p) as i64;
            }
        } else {
            for i in 0..inner {
                buf.clear();
                buf.extend(
                    xs[i..]
                        .iter()
                        .step_by(inner)
                        .enumerate()
                        .map(|(k, &v)| pack(v, k)),
                );
                buf.sort_unstable();
                for (o, &p) in os[i..].iter_mut().step_by(inner).zip(&buf) {
                    *o = index(p) as i64;
                }
            }
        }
    }
}

/// Argsort with a 32-bit key: packed in a u64 while positions fit in 32 bits
/// (u64 sorts about twice as fast as u128), in a u128 beyond.
fn argsort_key32<T: Copy>(
    x: &[T],
    out: &mut [i64],
    dims: (usize, usize, usize),
    key: impl Fn(T) -> u32,
) {
    if dims.1 as u64 <= 1 << 32 {
        argsort_lines(
            x,
            out,
            dims,
            |v, k| (u64::from(key(v)) << 32) | k as u64,
            |p| p as u32 as usize,
        );
    } else {
        argsort_key64(x, out, dims, |v| u64::from(key(v)));
    }
}

/// Argsort with a 64-bit key, packed in a u128.
fn argsort_key64<T: Copy>(
    x: &[T],
    out: &mut [i64],
    dims: (usize, usize, usize),
    key: impl Fn(T) -> u64,
) {
    argsort_lines(
        x,
        out,
        dims,
        |v, k| (u128::from(key(v)) << 64) | k as u128,
        |p| p as u64 as usize,
    );
}

/// Stable argsort along the middle axis of `(outer, len, inner)`: ties keep
/// position order, NaN goes last in both directions (as in the interpreter),
/// `desc != 0` reverses the order of the rest.
macro_rules! argsort_fn {
    ($name:ident, $t:ty, $sort:ident, $key:ident) => {
        unsafe extern "C" fn $name(
            x: *const $t,
            out: *mut i64,
            outer: i64,
            len: i64,
            inner: i64,
            desc: i64,
        ) {
            let dims = (outer as usize, len as usize, inner as usize);
            let n = dims.0 * dims.1 * dims.2;
            if n == 0 {
                return;
            }
            // SAFETY: the driver sized both buffers from the same resolved dims.
            let (x, out) = unsafe {
                (
                    std::slice::from_raw_parts(x, n),
                    std::slice::from_raw_parts_mut(out, n),
                )
            };
            let desc = desc != 0;
            $sort(x, out, dims, |v| $key(v, desc));
        }
    };
}

argsort_fn!(rt_argsort_f32, f32, argsort_key32, f32_key);
argsort_fn!(rt_argsort_f64, f64, argsort_key64, f64_key);
// Compared as integers, never through f64, so values beyond 2^53 that differ
// by one still order correctly.
argsort_fn!(rt_argsort_i64, i64, argsort_key64, i64_key);

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
    ("rt_rand_normal", &[I64, I64, I64], &[F64]),
    ("rt_rand_uniform", &[I64, I64, I64], &[F64]),
    ("rt_matmul_f32", &[Ptr, Ptr, Ptr, I64, I64, I64], &[]),
    ("rt_matmul_f64", &[Ptr, Ptr, Ptr, I64, I64, I64], &[]),
    ("rt_argsort_f32", &[Ptr, Ptr, I64, I64, I64, I64], &[]),
    ("rt_argsort_f64", &[Ptr, Ptr, I64, I64, I64, I64], &[]),
    ("rt_argsort_i64", &[Ptr, Ptr, I64, I64, I64, I64], &[]),
    ("rt_logaddexp", &[F64, F64], &[F64]),
    ("rt_searchsorted_f32", &[Ptr, I64, Ptr, I64, Ptr, I64], &[]),
    ("rt_searchsorted_f64", &[Ptr, I64, Ptr, I64, Ptr, I64], &[]),
    ("rt_searchsorted_i64", &[Ptr, I64, Ptr, I64, Ptr, I64], &[]),
    ("rt_fault", &[Ptr, I64, I64, I64, I64, I64], &[]),
    ("rt_scatter_fault", &[Ptr, I64, Ptr, I64, I64], &[]),
];

fn other_addr(name: &str) -> *const u8 {
    match name {
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

#[cfg(test)]
mod tests {
    use super::*;
    use std::cmp::Ordering;

    /// The batched search gives `partition_point`'s answer for every value:
    /// sorted tables with ties, ±0, ±inf and NaN (walked), and unsorted
    /// ones (searched one by one), both sides.
    #[test]
    fn batched_searchsorted_is_partition_point() {
        let mut seed = 7u64;
        let mut next = || {
            seed = seed
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            (seed >> 33) as usize
        };
        let pool = [
            f64::NEG_INFINITY,
            -2.5,
            -1.0,
            -0.0,
            0.0,
            0.5,
            1.0,
            1.0,
            3.0,
            f64::INFINITY,
            f64::NAN,
        ];
        for trial in 0..200 {
            let n = next() % 300;
            let m = 64 + next() % 300;
            let mut table: Vec<f64> = (0..n).map(|_| pool[next() % pool.len()]).collect();
            if trial % 5 != 0 {
                // NaN last, the rest ascending: the order `sort` produces.
                table.sort_by(|a, b| match (a.is_nan(), b.is_nan()) {
                    (true, true) => Ordering::Equal,
                    (true, false) => Ordering::Greater,
                    (false, true) => Ordering::Less,
                    _ => a.partial_cmp(b).unwrap_or(Ordering::Equal),
                });
            }
            let vals: Vec<f64> = (0..m).map(|_| pool[next() % pool.len()]).collect();
            for right in [false, true] {
                let mut out = vec![-1i64; m];
                search_all(&table, &vals, &mut out, right);
                for (i, &v) in vals.iter().enumerate() {
                    let want = table.partition_point(|&a| before(a, v, right)) as i64;
                    assert_eq!(out[i], want, "trial {trial}, value {v}, right {right}");
                }
            }
        }
    }

    /// The interpreter's argsort (its reference kernel), on `x` viewed as
    /// `[outer, len, inner]`, sorting along the middle axis.
    fn reference_f64(
        x: &[f64],
        (outer, len, inner): (usize, usize, usize),
        desc: bool,
    ) -> Vec<i64> {
        use losslang_compiler::ops::Op;
        use losslang_compiler::value::{DType, Data, Tensor};
        let t = Tensor::from_f64(DType::F64, vec![outer, len, inner], x.to_vec());
        let op = Op::Argsort {
            axis: 1,
            descending: desc,
        };
        match op
            .eval(&[&t], &|_| None)
            .expect("the interpreter sorts")
            .data
        {
            Data::I(v) => v,
            _ => unreachable!("argsort gives indices"),
        }
    }

    /// Runs one of the `rt_argsort_*` functions on `x`.
    macro_rules! argsort_call {
        ($f:ident, $x:expr, $dims:expr, $desc:expr) => {{
            let (x, (outer, len, inner), desc) = ($x, $dims, $desc);
            let mut out = vec![-1i64; x.len()];
            // SAFETY: both buffers hold outer * len * inner elements.
            unsafe {
                $f(
                    x.as_ptr(),
                    out.as_mut_ptr(),
                    outer as i64,
                    len as i64,
                    inner as i64,
                    i64::from(desc),
                )
            };
            out
        }};
    }

    fn argsort_f32(x: &[f32], dims: (usize, usize, usize), desc: bool) -> Vec<i64> {
        argsort_call!(rt_argsort_f32, x, dims, desc)
    }

    fn argsort_f64(x: &[f64], dims: (usize, usize, usize), desc: bool) -> Vec<i64> {
        argsort_call!(rt_argsort_f64, x, dims, desc)
    }

    fn argsort_i64(x: &[i64], dims: (usize, usize, usize), desc: bool) -> Vec<i64> {
        argsort_call!(rt_argsort_i64, x, dims, desc)
    }

    /// Deterministic values drawn mostly from a small pool, so that ties,
    /// NaN, infinities and both zeros all occur often.
    fn mixed(n: usize, seed: u64) -> Vec<f64> {
        const POOL: [f64; 9] = [
            f64::NAN,
            f64::INFINITY,
            f64::NEG_INFINITY,
            0.0,
            -0.0,
            1.5,
            -1.5,
            3.0,
            f32::MIN_POSITIVE as f64,
        ];
        let mut s = seed | 1;
        (0..n)
            .map(|_| {
                s ^= s << 13;
                s ^= s >> 7;
                s ^= s << 17;
                if s.is_multiple_of(3) {
                    POOL[(s >> 8) as usize % POOL.len()]
                } else {
                    ((s >> 11) % 2001) as f64 / 16.0 - 62.5
                }
            })
            .collect()
    }

    #[test]
    fn argsort_ties_nan_inf_and_zeros_in_both_directions() {
        let nan = f32::NAN;
        let inf = f32::INFINITY;
        let x = [2.0, nan, -inf, 0.0, 2.0, inf, -0.0, nan, -1.0, 2.0];
        // Ties (2.0 at 0, 4, 9; -0 and +0 at 3, 6) keep position order; NaN
        // (1, 7) goes last, in position order, both ways.
        assert_eq!(
            argsort_f32(&x, (1, 10, 1), false),
            [2, 8, 3, 6, 0, 4, 9, 5, 1, 7]
        );
        assert_eq!(
            argsort_f32(&x, (1, 10, 1), true),
            [5, 0, 4, 9, 3, 6, 8, 2, 1, 7]
        );
        let x64: Vec<f64> = x.iter().map(|&v| f64::from(v)).collect();
        assert_eq!(
            argsort_f64(&x64, (1, 10, 1), false),
            [2, 8, 3, 6, 0, 4, 9, 5, 1, 7]
        );
        assert_eq!(
            argsort_f64(&x64, (1, 10, 1), true),
            [5, 0, 4, 9, 3, 6, 8, 2, 1, 7]
        );
    }

    #[test]
    fn argsort_matches_the_interpreter_contiguous_and_strided() {
        // (outer, len, inner): a single line, several contiguous lines, and
        // strided lines with and without an outer axis.
        for dims in [
            (1, 257, 1),
            (3, 64, 1),
            (1, 50, 3),
            (4, 33, 5),
            (2, 1, 4),
            (3, 0, 2),
        ] {
            let n = dims.0 * dims.1 * dims.2;
            let x = mixed(n, n as u64 + 7);
            let x32: Vec<f32> = x.iter().map(|&v| v as f32).collect();
            for desc in [false, true] {
                let want = reference_f64(&x, dims, desc);
                assert_eq!(
                    argsort_f64(&x, dims, desc),
                    want,
                    "f64 {dims:?} desc={desc}"
                );
                // Every pool value is f32-exact, so f32 must give the same order.
                assert_eq!(
                    argsort_f32(&x32, dims, desc),
                    want,
                    "f32 {dims:?} desc={desc}"
                );
            }
        }
    }

    #[test]
    fn argsort_i64_is_exact_beyond_f64_precision() {
        let m = i64::MAX;
        // As f64 these are all 2^63 (or -2^63), so only an integer comparison
        // orders them.
        let x = [m, m - 1, i64::MIN + 1, m, i64::MIN, m - 2, 0];
        assert_eq!(argsort_i64(&x, (1, 7, 1), false), [4, 2, 6, 5, 1, 0, 3]);
        assert_eq!(argsort_i64(&x, (1, 7, 1), true), [0, 3, 1, 5, 6, 2, 4]);
        // Strided: two interleaved lines of the same values, one negated.
        let y: Vec<i64> = x.iter().flat_map(|&v| [v, v.wrapping_neg()]).collect();
        let got = argsort_i64(&y, (1, 7, 2), false);
        let even: Vec<i64> = got.iter().step_by(2).copied().collect();
        assert_eq!(even, [4, 2, 6, 5, 1, 0, 3]);
        // -(i64::MIN) wraps to i64::MIN, so position 4 stays first; the rest
        // of the negated line reverses, with the two -MAX tied in order.
        let odd: Vec<i64> = got.iter().skip(1).step_by(2).copied().collect();
        assert_eq!(odd, [4, 0, 3, 1, 5, 6, 2]);
    }

    /// Each product entry, summed in f64, with the sum of its terms' magnitudes
    /// (what a summation error bound scales with).
    fn naive_matmul(a: &[f64], b: &[f64], (m, k, n): (usize, usize, usize)) -> Vec<(f64, f64)> {
        let mut out = vec![(0.0, 0.0); m * n];
        for i in 0..m {
            for j in 0..n {
                let terms = (0..k).map(|p| a[i * k + p] * b[p * n + j]);
                out[i * n + j] = (terms.clone().sum(), terms.map(f64::abs).sum());
            }
        }
        out
    }

    #[test]
    fn matmul_matches_a_naive_loop_at_odd_sizes() {
        // Small and odd sizes, vectors on either side, and one past the
        // kernels' register and cache blocks.
        for (m, k, n) in [
            (1, 1, 1),
            (7, 13, 5),
            (33, 17, 65),
            (1, 100, 9),
            (9, 100, 1),
            (70, 3, 2),
            (131, 517, 67),
        ] {
            // Finite and f32-exact, so both kernels multiply the same operands.
            let finite = |seed, fill| -> Vec<f64> {
                mixed(m.max(n) * k, seed)
                    .into_iter()
                    .map(|v| if v.abs() <= 64.0 { v } else { fill })
                    .collect()
            };
            let (a, b) = (
                finite(3, 0.5)[..m * k].to_vec(),
                finite(5, -2.0)[..k * n].to_vec(),
            );
            let want = naive_matmul(&a, &b, (m, k, n));
            // Any order of k additions errs by at most k/2 ulps of the magnitude
            // sum, so this also allows for the reference's own f64 rounding.
            let within =
                |got: f64, (w, mag): (f64, f64), eps: f64| (got - w).abs() <= k as f64 * eps * mag;

            let mut got = vec![f64::NAN; m * n];
            // SAFETY: each buffer holds its operand's full extent.
            unsafe {
                rt_matmul_f64(
                    a.as_ptr(),
                    b.as_ptr(),
                    got.as_mut_ptr(),
                    m as i64,
                    k as i64,
                    n as i64,
                )
            };
            for (&g, &w) in got.iter().zip(&want) {
                assert!(within(g, w, f64::EPSILON), "f64 {m}x{k}x{n}: {g} vs {w:?}");
            }

            let a32: Vec<f32> = a.iter().map(|&v| v as f32).collect();
            let b32: Vec<f32> = b.iter().map(|&v| v as f32).collect();
            let mut got32 = vec![f32::NAN; m * n];
            // SAFETY: as above.
            unsafe {
                rt_matmul_f32(
                    a32.as_ptr(),
                    b32.as_ptr(),
                    got32.as_mut_ptr(),
                    m as i64,
                    k as i64,
                    n as i64,
                )
            };
            for (&g, &w) in got32.iter().zip(&want) {
                let g = f64::from(g);
                assert!(
                    within(g, w, f64::from(f32::EPSILON)),
                    "f32 {m}x{k}x{n}: {g} vs {w:?}"
                );
            }
        }
    }

    #[test]
    fn matmul_with_empty_dims() {
        // k = 0: an empty sum, so zeros over whatever the slot held.
        let mut out = vec![f32::NAN; 6];
        // SAFETY: `a` and `b` have no elements to read; `out` holds 2 * 3.
        unsafe { rt_matmul_f32([].as_ptr(), [].as_ptr(), out.as_mut_ptr(), 2, 0, 3) };
        assert_eq!(out, [0.0; 6]);
        let mut out = vec![f64::NAN; 6];
        // SAFETY: as above.
        unsafe { rt_matmul_f64([].as_ptr(), [].as_ptr(), out.as_mut_ptr(), 3, 0, 2) };
        assert_eq!(out, [0.0; 6]);
        // m = 0 or n = 0: nothing to write (and `out` may be dangling).
        let a = [1.0f64; 4];
        let mut none: [f64; 0] = [];
        // SAFETY: no element of `out` is touched.
        unsafe {
            rt_matmul_f64(a.as_ptr(), a.as_ptr(), none.as_mut_ptr(), 0, 2, 2);
            rt_matmul_f64(a.as_ptr(), a.as_ptr(), none.as_mut_ptr(), 2, 2, 0);
        }
    }
}
