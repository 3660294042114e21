//! The CPU custom ops (candle `CustomOp1/2`) for what candle lacks or does
//! differently: a stable argsort along any axis with the interpreter's NaN
//! order, a sequential cumsum, the counter-based generator (bit-identical to
//! `compiler/src/ops/source.rs`) and a first-repeated-id search. None has a
//! CUDA kernel: the portable lowering composes the first three from candle
//! primitives (the generator excepted, which it refuses), so these never run
//! on a CUDA device; if one is applied to CUDA storage it fails with a
//! message naming it, and never copies to the host.

use candle_core::backend::BackendStorage;
use candle_core::{CpuStorage, CudaStorage, CustomOp1, CustomOp2, Error, Layout, Result, Shape};
use losslang_compiler::ops::RandKind;
use losslang_compiler::ops::order::logaddexp;
use losslang_compiler::ops::source::{rand_normal, uniform};

/// The contiguous elements of a storage under `layout`.
fn elems<'a, T>(v: &'a [T], layout: &Layout, op: &str) -> Result<&'a [T]> {
    match layout.contiguous_offsets() {
        Some((a, b)) => Ok(&v[a..b]),
        None => Err(Error::Msg(format!(
            "losslang `{op}` needs a contiguous argument"
        ))),
    }
}

fn no_cuda(op: &str) -> Error {
    Error::Msg(format!(
        "losslang's `{op}` kernel is CPU-only; the CUDA lowering composes it from candle primitives"
    ))
}

/// (outer, len, inner) around `axis`.
fn split(dims: &[usize], axis: usize) -> (usize, usize, usize) {
    (
        dims[..axis].iter().product(),
        dims[axis],
        dims[axis + 1..].iter().product(),
    )
}

/// Stable argsort along `axis`; NaN sorts last in both directions (the interpreter's order).
#[derive(Clone, Copy, Debug)]
pub struct ArgsortStable {
    pub axis: usize,
    pub descending: bool,
}

impl ArgsortStable {
    fn run<T: Copy + PartialOrd>(
        &self,
        v: &[T],
        dims: &[usize],
        is_nan: fn(T) -> bool,
    ) -> Vec<i64> {
        let (outer, len, inner) = split(dims, self.axis);
        let mut out = vec![0i64; v.len()];
        let mut order: Vec<usize> = Vec::with_capacity(len);
        for o in 0..outer {
            for i in 0..inner {
                let at = |k: usize| v[o * len * inner + k * inner + i];
                order.clear();
                order.extend(0..len);
                order.sort_by(|&p, &q| {
                    let (a, b) = (at(p), at(q));
                    match (is_nan(a), is_nan(b)) {
                        (true, true) => std::cmp::Ordering::Equal,
                        (true, false) => std::cmp::Ordering::Greater,
                        (false, true) => std::cmp::Ordering::Less,
                        _ => {
                            let c = a.partial_cmp(&b).unwrap_or(std::cmp::Ordering::Equal);
                            if self.descending { c.reverse() } else { c }
                        }
                    }
                });
                for (k, &p) in order.iter().enumerate() {
                    out[o * len * inner + k * inner + i] = p as i64;
                }
            }
        }
        out
    }
}

impl CustomOp1 for ArgsortStable {
    fn name(&self) -> &'static str {
        "losslang-argsort-stable"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        let dims = l.dims();
        let out = match s {
            CpuStorage::F32(v) => self.run(elems(v, l, "argsort")?, dims, f32::is_nan),
            CpuStorage::F64(v) => self.run(elems(v, l, "argsort")?, dims, f64::is_nan),
            CpuStorage::I64(v) => self.run(elems(v, l, "argsort")?, dims, |_| false),
            other => {
                return Err(Error::Msg(format!(
                    "losslang `argsort` on {:?}",
                    other.dtype()
                )));
            }
        };
        Ok((CpuStorage::I64(out), l.shape().clone()))
    }

    fn cuda_fwd(&self, _: &CudaStorage, _: &Layout) -> Result<(CudaStorage, Shape)> {
        Err(no_cuda("argsort_stable"))
    }
}

/// Cumulative sum along `axis` in element order (reversed: from the end), as the interpreter sums.
#[derive(Clone, Copy, Debug)]
pub struct CumsumScan {
    pub axis: usize,
    pub reverse: bool,
}

impl CumsumScan {
    fn run<T: Copy + std::ops::Add<Output = T> + Default>(
        &self,
        v: &[T],
        dims: &[usize],
    ) -> Vec<T> {
        let (outer, len, inner) = split(dims, self.axis);
        let mut out = vec![T::default(); v.len()];
        for o in 0..outer {
            for i in 0..inner {
                let mut acc = T::default();
                for k in 0..len {
                    let kk = if self.reverse { len - 1 - k } else { k };
                    let f = o * len * inner + kk * inner + i;
                    acc = acc + v[f];
                    out[f] = acc;
                }
            }
        }
        out
    }
}

impl CustomOp1 for CumsumScan {
    fn name(&self) -> &'static str {
        "losslang-cumsum-scan"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        let dims = l.dims();
        let out = match s {
            CpuStorage::F32(v) => CpuStorage::F32(self.run(elems(v, l, "cumsum")?, dims)),
            CpuStorage::F64(v) => CpuStorage::F64(self.run(elems(v, l, "cumsum")?, dims)),
            other => {
                return Err(Error::Msg(format!(
                    "losslang `cumsum` on {:?}",
                    other.dtype()
                )));
            }
        };
        Ok((out, l.shape().clone()))
    }

    fn cuda_fwd(&self, _: &CudaStorage, _: &Layout) -> Result<(CudaStorage, Shape)> {
        Err(no_cuda("cumsum_scan"))
    }
}

/// `log Σ exp` along `axis` in scan order, accumulated in f64 with the
/// interpreter's `logaddexp`, then stored in the argument's dtype.
#[derive(Clone, Copy, Debug)]
pub struct LogCumSumExpScan {
    pub axis: usize,
    pub reverse: bool,
}

impl LogCumSumExpScan {
    fn run(&self, v: &[f64], dims: &[usize]) -> Vec<f64> {
        let (outer, len, inner) = split(dims, self.axis);
        let mut out = vec![0.0; v.len()];
        for o in 0..outer {
            for i in 0..inner {
                let mut acc = f64::NEG_INFINITY;
                for k in 0..len {
                    let kk = if self.reverse { len - 1 - k } else { k };
                    let f = o * len * inner + kk * inner + i;
                    acc = logaddexp(acc, v[f]);
                    out[f] = acc;
                }
            }
        }
        out
    }
}

impl CustomOp1 for LogCumSumExpScan {
    fn name(&self) -> &'static str {
        "losslang-logcumsumexp-scan"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        let dims = l.dims();
        let out = match s {
            CpuStorage::F32(v) => {
                let wide: Vec<f64> = elems(v, l, "logcumsumexp")?
                    .iter()
                    .map(|&x| f64::from(x))
                    .collect();
                CpuStorage::F32(
                    self.run(&wide, dims)
                        .into_iter()
                        .map(|x| x as f32)
                        .collect(),
                )
            }
            CpuStorage::F64(v) => CpuStorage::F64(self.run(elems(v, l, "logcumsumexp")?, dims)),
            other => {
                return Err(Error::Msg(format!(
                    "losslang `logcumsumexp` on {:?}",
                    other.dtype()
                )));
            }
        };
        Ok((out, l.shape().clone()))
    }

    fn cuda_fwd(&self, _: &CudaStorage, _: &Layout) -> Result<(CudaStorage, Shape)> {
        Err(no_cuda("logcumsumexp_scan"))
    }
}

/// NumPy `searchsorted`: for each value, `partition_point` of the 1-D
/// sequence (NaN sorts last), exactly the interpreter's binary search.
#[derive(Clone, Copy, Debug)]
pub struct SearchSorted {
    pub right: bool,
}

impl SearchSorted {
    fn run<T: Copy + PartialOrd>(&self, s: &[T], vals: &[T], is_nan: fn(T) -> bool) -> Vec<i64> {
        let before = |a: T, v: T| -> bool {
            if is_nan(v) {
                !is_nan(a)
            } else if self.right {
                a <= v
            } else {
                a < v
            }
        };
        vals.iter()
            .map(|&v| s.partition_point(|&a| before(a, v)) as i64)
            .collect()
    }
}

impl CustomOp2 for SearchSorted {
    fn name(&self) -> &'static str {
        "losslang-searchsorted"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let out = match (s1, s2) {
            (CpuStorage::F32(a), CpuStorage::F32(v)) => self.run(
                elems(a, l1, "searchsorted")?,
                elems(v, l2, "searchsorted")?,
                f32::is_nan,
            ),
            (CpuStorage::F64(a), CpuStorage::F64(v)) => self.run(
                elems(a, l1, "searchsorted")?,
                elems(v, l2, "searchsorted")?,
                f64::is_nan,
            ),
            (CpuStorage::I64(a), CpuStorage::I64(v)) => self.run(
                elems(a, l1, "searchsorted")?,
                elems(v, l2, "searchsorted")?,
                |_| false,
            ),
            (a, _) => {
                return Err(Error::Msg(format!(
                    "losslang `searchsorted` on {:?}",
                    a.dtype()
                )));
            }
        };
        Ok((CpuStorage::I64(out), l2.shape().clone()))
    }

    fn cuda_fwd(
        &self,
        _: &CudaStorage,
        _: &Layout,
        _: &CudaStorage,
        _: &Layout,
    ) -> Result<(CudaStorage, Shape)> {
        Err(no_cuda("searchsorted"))
    }
}

/// `powf` per element, in f64 (libm's, as the interpreter), rounded to the
/// arguments' dtype; the arguments have one shape.
#[derive(Clone, Copy, Debug)]
pub struct Powf;

impl CustomOp2 for Powf {
    fn name(&self) -> &'static str {
        "losslang-powf"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let out = match (s1, s2) {
            (CpuStorage::F32(x), CpuStorage::F32(y)) => CpuStorage::F32(
                elems(x, l1, "pow")?
                    .iter()
                    .zip(elems(y, l2, "pow")?)
                    .map(|(&a, &b)| f64::from(a).powf(f64::from(b)) as f32)
                    .collect(),
            ),
            (CpuStorage::F64(x), CpuStorage::F64(y)) => CpuStorage::F64(
                elems(x, l1, "pow")?
                    .iter()
                    .zip(elems(y, l2, "pow")?)
                    .map(|(&a, &b)| a.powf(b))
                    .collect(),
            ),
            (a, _) => {
                return Err(Error::Msg(format!("losslang `pow` on {:?}", a.dtype())));
            }
        };
        Ok((out, l1.shape().clone()))
    }

    fn cuda_fwd(
        &self,
        _: &CudaStorage,
        _: &Layout,
        _: &CudaStorage,
        _: &Layout,
    ) -> Result<(CudaStorage, Shape)> {
        Err(no_cuda("powf"))
    }
}

/// The counter-based generator: element `i` (row-major) of `shape` from the
/// i64 scalars `seed` and `step`, f64.
#[derive(Clone, Debug)]
pub struct Rand {
    pub kind: RandKind,
    pub shape: Vec<usize>,
}

fn scalar_i64(s: &CpuStorage, l: &Layout) -> Result<i64> {
    match s {
        CpuStorage::I64(v) => elems(v, l, "rand")?
            .first()
            .copied()
            .ok_or_else(|| Error::Msg("losslang `rand`: empty seed or step".into())),
        other => Err(Error::Msg(format!(
            "losslang `rand`: seed and step must be i64, got {:?}",
            other.dtype()
        ))),
    }
}

impl CustomOp2 for Rand {
    fn name(&self) -> &'static str {
        "losslang-rand"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        // The generator reads the bits of the i64 values, as the interpreter does.
        let seed = scalar_i64(s1, l1)? as u64;
        let step = scalar_i64(s2, l2)? as u64;
        let n: usize = self.shape.iter().product();
        let v: Vec<f64> = (0..n as u64)
            .map(|i| match self.kind {
                RandKind::Normal => rand_normal(seed, step, i),
                RandKind::Uniform => uniform(seed, step, i, 0),
            })
            .collect();
        Ok((CpuStorage::F64(v), Shape::from(self.shape.clone())))
    }

    fn cuda_fwd(
        &self,
        _: &CudaStorage,
        _: &Layout,
        _: &CudaStorage,
        _: &Layout,
    ) -> Result<(CudaStorage, Shape)> {
        Err(no_cuda("rand"))
    }
}

/// The first flat position whose id appeared earlier (the position the
/// interpreter reports), or the element count when the ids are unique; an
/// i64 scalar.
#[derive(Clone, Copy, Debug)]
pub struct FirstRepeat;

impl CustomOp1 for FirstRepeat {
    fn name(&self) -> &'static str {
        "losslang-first-repeat"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        let ids = match s {
            CpuStorage::I64(v) => elems(v, l, "check_unique")?,
            other => {
                return Err(Error::Msg(format!(
                    "losslang `check_unique` on {:?}",
                    other.dtype()
                )));
            }
        };
        let mut seen = std::collections::HashSet::with_capacity(ids.len());
        let first = ids
            .iter()
            .position(|k| !seen.insert(*k))
            .unwrap_or(ids.len());
        Ok((CpuStorage::I64(vec![first as i64]), Shape::from(())))
    }

    fn cuda_fwd(&self, _: &CudaStorage, _: &Layout) -> Result<(CudaStorage, Shape)> {
        Err(no_cuda("check_unique"))
    }
}
