//! Runs a plan on a candle `Device`: one candle call per step. Data-dependent
//! failures (an index out of range, a repeated id, an integer division by
//! zero, a size that does not fit) become the interpreter's `EvalError`s,
//! attributed to their IR node by the caller.

use crate::kernels::{
    ArgsortStable, CumsumScan, FirstRepeat, LogCumSumExpScan, Powf, Rand, SearchSorted,
};
use crate::plan::{Binary, Call, Cmp, Plan, Slot, Source, Step, Target, Unary};
use candle_core::{DType as CDType, Device, Tensor};
use losslang_compiler::dim::{Dim, sizes};
use losslang_compiler::kernels::{EvalError, broadcast, unravel};
use losslang_compiler::ops::Scalar;
use losslang_compiler::value::{self, DType};
use std::collections::BTreeMap;

/// A step failed: bad data (the interpreter's error) or candle itself.
#[derive(Debug)]
pub enum StepError {
    Eval(EvalError),
    Candle(candle_core::Error),
}

impl From<candle_core::Error> for StepError {
    fn from(e: candle_core::Error) -> Self {
        StepError::Candle(e)
    }
}

impl From<EvalError> for StepError {
    fn from(e: EvalError) -> Self {
        StepError::Eval(e)
    }
}

impl StepError {
    pub fn into_eval(self) -> EvalError {
        match self {
            StepError::Eval(e) => e,
            StepError::Candle(e) => EvalError::Other(format!("candle: {}", candle_message(&e))),
        }
    }
}

type SR<T> = Result<T, StepError>;

/// A candle error without the backtrace candle attaches when RUST_BACKTRACE is set.
pub fn candle_message(e: &candle_core::Error) -> String {
    match e {
        candle_core::Error::WithBacktrace { inner, .. } => candle_message(inner),
        e => e.to_string(),
    }
}

pub fn candle_dtype(d: DType) -> CDType {
    match d {
        DType::F32 => CDType::F32,
        DType::F64 => CDType::F64,
        DType::I64 => CDType::I64,
        DType::Bool => CDType::U8,
    }
}

/// A host tensor on the device, in the candle dtype of its dtype.
pub fn to_candle(t: &value::Tensor, device: &Device) -> candle_core::Result<Tensor> {
    let shape = t.shape.clone();
    match (&t.data, t.dtype) {
        (value::Data::F(v), DType::F32) => Tensor::from_vec(
            v.iter().map(|&x| x as f32).collect::<Vec<f32>>(),
            shape,
            device,
        ),
        (value::Data::F(v), _) => Tensor::from_vec(v.clone(), shape, device),
        (value::Data::I(v), _) => Tensor::from_vec(v.clone(), shape, device),
        (value::Data::B(v), _) => Tensor::from_vec(
            v.iter().map(|&b| u8::from(b)).collect::<Vec<u8>>(),
            shape,
            device,
        ),
    }
}

/// A candle tensor back on the host as a value of dtype `d`.
pub fn from_candle(t: &Tensor, d: DType) -> candle_core::Result<value::Tensor> {
    let shape = t.dims().to_vec();
    let flat = t.flatten_all()?;
    Ok(match d {
        DType::F32 | DType::F64 => {
            value::Tensor::from_f64(d, shape, flat.to_dtype(CDType::F64)?.to_vec1::<f64>()?)
        }
        DType::I64 => value::Tensor::from_i64(shape, flat.to_dtype(CDType::I64)?.to_vec1::<i64>()?),
        DType::Bool => value::Tensor::from_bool(
            shape,
            flat.to_dtype(CDType::U8)?
                .to_vec1::<u8>()?
                .into_iter()
                .map(|b| b != 0)
                .collect(),
        ),
    })
}

/// The interpreter's check of slice positions `start + step·k` (k < len)
/// against an axis of length `full`: the first one outside is the error.
pub fn check_positions(start: i64, len: usize, step: i64, full: usize) -> Result<(), EvalError> {
    let bad = |p: i64| {
        EvalError::Shape(format!(
            "slice position {p} is outside an axis of length {full}"
        ))
    };
    if len == 0 {
        return Ok(());
    }
    let inside = |p: i64| p >= 0 && (p as u64) < full as u64;
    if step == 1 {
        // Positions are consecutive: the first outside is the start or `full`.
        if !inside(start) {
            return Err(bad(start));
        }
        let last = start.saturating_add(len as i64 - 1);
        return if inside(last) {
            Ok(())
        } else {
            Err(bad(full as i64))
        };
    }
    for k in 0..len {
        let p = start.saturating_add(step.saturating_mul(k as i64));
        if !inside(p) {
            return Err(bad(p));
        }
    }
    Ok(())
}

fn slice_positions(start: i64, len: usize, step: i64, full: usize) -> Result<Vec<i64>, EvalError> {
    check_positions(start, len, step, full)?;
    Ok((0..len as i64).map(|k| start + step * k).collect())
}

/// The values a plan runs on.
pub struct Frame<'a> {
    pub plan: &'a Plan,
    pub device: &'a Device,
    pub dims: &'a BTreeMap<String, i64>,
    pub inputs: &'a [Tensor],
    pub params: &'a [Tensor],
    pub state: &'a [Tensor],
    pub vals: Vec<Option<Tensor>>,
    /// Read arguments detached (a node computed off the tape).
    pub detach_reads: bool,
}

impl<'a> Frame<'a> {
    pub fn new(
        plan: &'a Plan,
        device: &'a Device,
        dims: &'a BTreeMap<String, i64>,
        inputs: &'a [Tensor],
        params: &'a [Tensor],
        state: &'a [Tensor],
    ) -> Self {
        Frame {
            plan,
            device,
            dims,
            inputs,
            params,
            state,
            vals: vec![None; plan.types.len()],
            detach_reads: false,
        }
    }

    fn dim(&self, d: &Dim) -> Result<i64, EvalError> {
        d.eval(&|s: &str| self.dims.get(s).copied())
            .ok_or_else(|| EvalError::Shape(format!("size `{d}` is not bound")))
    }

    fn size(&self, d: &Dim) -> Result<usize, EvalError> {
        losslang_compiler::dim::size(d, &|s: &str| self.dims.get(s).copied())
    }

    fn shape(&self, s: &[Dim]) -> Result<Vec<usize>, EvalError> {
        sizes(s, &|n: &str| self.dims.get(n).copied())
    }

    pub fn get(&self, s: Slot) -> Tensor {
        let t = self.vals[s.index()]
            .as_ref()
            .expect("a slot is computed before use")
            .clone();
        if self.detach_reads { t.detach() } else { t }
    }

    fn scalar(&self, v: Scalar, d: DType) -> candle_core::Result<Tensor> {
        let dev = self.device;
        match (v, d) {
            (v, DType::F32) => Tensor::new(v.as_f64() as f32, dev),
            (v, DType::F64) => Tensor::new(v.as_f64(), dev),
            (Scalar::I(i), DType::I64) => Tensor::new(i, dev),
            (v, DType::I64) => Tensor::new(v.as_f64() as i64, dev),
            (v, DType::Bool) => Tensor::new(u8::from(v.as_f64() != 0.0), dev),
        }
    }

    /// Runs one step and stores its value.
    pub fn step(&mut self, st: &Step) -> SR<()> {
        let v = self.call(st)?;
        self.vals[st.out.index()] = Some(v);
        Ok(())
    }

    fn call(&self, st: &Step) -> SR<Tensor> {
        let a = |i: usize| self.get(st.args[i]);
        let portable = self.plan.target == Target::Portable;
        Ok(match &st.call {
            Call::Load(src) => match src {
                Source::Input(k) => self.inputs[*k].clone(),
                Source::Param(k) => self.params[*k].clone(),
                Source::State(k) => self.state[*k].clone(),
            },
            Call::Scalar(v, d) => self.scalar(*v, *d)?,
            Call::DimValue(d) => Tensor::new(self.dim(d)?, self.device)?,
            Call::Arange(n) => {
                let n = self.size(n)?;
                Tensor::arange(0i64, n as i64, self.device)?
            }
            Call::Unary(u) => {
                let x = a(0);
                match u {
                    Unary::Neg => x.neg()?,
                    Unary::Exp => x.exp()?,
                    Unary::Log => x.log()?,
                    Unary::Sin => x.sin()?,
                    Unary::Cos => x.cos()?,
                    Unary::Tanh => x.tanh()?,
                    Unary::Abs => x.abs()?,
                    Unary::Sqrt => x.sqrt()?,
                    Unary::Sqr => x.sqr()?,
                    Unary::Recip => x.recip()?,
                    Unary::Floor => x.floor()?,
                    Unary::Round => x.round()?,
                    Unary::Sign => x.sign()?,
                }
            }
            Call::Binary(op) => {
                let (x, y) = (a(0), a(1));
                match op {
                    Binary::Add => x.broadcast_add(&y)?,
                    Binary::Sub => x.broadcast_sub(&y)?,
                    Binary::Mul => x.broadcast_mul(&y)?,
                    Binary::Div => x.broadcast_div(&y)?,
                    Binary::Maximum => x.broadcast_maximum(&y)?,
                    Binary::Minimum => x.broadcast_minimum(&y)?,
                }
            }
            Call::Cmp(c) => {
                let (x, y) = (a(0), a(1));
                match c {
                    Cmp::Eq => x.broadcast_eq(&y)?,
                    Cmp::Ne => x.broadcast_ne(&y)?,
                    Cmp::Lt => x.broadcast_lt(&y)?,
                    Cmp::Le => x.broadcast_le(&y)?,
                    Cmp::Gt => x.broadcast_gt(&y)?,
                    Cmp::Ge => x.broadcast_ge(&y)?,
                }
            }
            Call::WhereCond => a(0).where_cond(&a(1), &a(2))?,
            Call::ToDType(d) => a(0).to_dtype(candle_dtype(*d))?,
            Call::Detach => a(0).detach(),
            Call::BroadcastAs(s) => {
                let x = a(0);
                let s = self.shape(s)?;
                if broadcast(&[x.dims(), &s]).ok().as_deref() != Some(&s[..]) {
                    return Err(EvalError::Shape(format!(
                        "cannot broadcast {:?} to {:?}",
                        x.dims(),
                        s
                    ))
                    .into());
                }
                x.broadcast_as(s)?
            }
            Call::Reshape(s) => {
                let x = a(0);
                let s = self.shape(s)?;
                if s.iter().product::<usize>() != x.elem_count() {
                    return Err(EvalError::Shape(format!(
                        "cannot reshape {:?} to {:?}",
                        x.dims(),
                        s
                    ))
                    .into());
                }
                x.reshape(s)?
            }
            Call::Permute(p) => a(0).permute(p.clone())?,
            Call::Narrow { axis, start, len } => {
                let x = a(0);
                let (start, len) = (self.dim(start)?, self.size(len)?);
                check_positions(start, len, 1, x.dim(*axis)?)?;
                x.narrow(*axis, start as usize, len)?
            }
            Call::SlicePositions {
                start,
                len,
                step,
                full,
            } => {
                let len = self.size(len)?;
                let pos = slice_positions(self.dim(start)?, len, *step, self.size(full)?)?;
                Tensor::from_vec(pos, len, self.device)?
            }
            Call::PadWithZeros { axis, left, right } => {
                let x = a(0);
                let (l, r) = (self.dim(left)?, self.dim(right)?);
                let len = x.dim(*axis)?;
                let full = (l + len as i64 + r).max(0) as usize;
                check_positions(l, len, 1, full)?;
                if r < 0 {
                    return Err(EvalError::Shape(format!(
                        "slice position {full} is outside an axis of length {full}"
                    ))
                    .into());
                }
                x.pad_with_zeros(*axis, l as usize, r as usize)?
            }
            // candle's CPU index_select reads its source contiguously.
            Call::Flip(axis) => a(0).contiguous()?.flip(&[*axis])?,
            Call::SumKeepdim(axes) => {
                let x = a(0);
                if x.elem_count() == 0 {
                    // candle refuses to reduce an empty tensor; a sum of nothing is 0.
                    let mut s = x.dims().to_vec();
                    for &ax in axes {
                        s[ax] = 1;
                    }
                    Tensor::zeros(s, x.dtype(), self.device)?
                } else if x.dtype() == CDType::F32 {
                    // f32 sums accumulate in f64, like the JIT and the interpreter:
                    // candle's f32 reduction drifts by percents over 1e8 terms.
                    // A cast and an f64 sum exist on every device.
                    x.to_dtype(CDType::F64)?
                        .sum_keepdim(axes.clone())?
                        .to_dtype(CDType::F32)?
                } else {
                    x.sum_keepdim(axes.clone())?
                }
            }
            Call::MaxKeepdim(axis) | Call::MinKeepdim(axis) => {
                let x = a(0);
                let max = matches!(st.call, Call::MaxKeepdim(_));
                if x.elem_count() == 0 {
                    // The interpreter's fold over nothing: its initial value.
                    let mut s = x.dims().to_vec();
                    s[*axis] = 1;
                    let init = match (x.dtype(), max) {
                        (CDType::I64, true) => Tensor::new(i64::MIN, self.device)?,
                        (CDType::I64, false) => Tensor::new(i64::MAX, self.device)?,
                        (CDType::U8, _) => Tensor::new(0u8, self.device)?,
                        (d, true) => Tensor::new(f64::NEG_INFINITY, self.device)?.to_dtype(d)?,
                        (d, false) => Tensor::new(f64::INFINITY, self.device)?.to_dtype(d)?,
                    };
                    init.broadcast_as(s)?.contiguous()?
                } else if max {
                    x.max_keepdim(*axis)?
                } else {
                    x.min_keepdim(*axis)?
                }
            }
            Call::Cat(axis) => {
                let xs: Vec<Tensor> = (0..st.args.len()).map(a).collect();
                Tensor::cat(&xs, *axis)?
            }
            Call::Matmul => a(0).contiguous()?.matmul(&a(1).contiguous()?)?,
            Call::Gather(axis) => {
                let (x, idx) = (a(0), a(1));
                for i in 0..x.rank() {
                    if i != *axis && x.dim(i)? != idx.dim(i)? {
                        return Err(EvalError::Shape(format!(
                            "index axis {i} has size {} but the value's has {}",
                            idx.dim(i)?,
                            x.dim(i)?
                        ))
                        .into());
                    }
                }
                x.contiguous()?.gather(&idx.contiguous()?, *axis)?
            }
            Call::ScatterAdd(axis) => {
                a(0).scatter_add(&a(1).contiguous()?, &a(2).contiguous()?, *axis)?
            }
            Call::IndexSelect(axis) => a(0)
                .contiguous()?
                .index_select(&a(1).contiguous()?, *axis)?,
            Call::IndexAdd(axis) => {
                a(0).index_add(&a(1).contiguous()?, &a(2).contiguous()?, *axis)?
            }
            Call::Scatter(axis) => a(0).scatter(&a(1).contiguous()?, &a(2).contiguous()?, *axis)?,
            Call::Cumsum(axis) => a(0).cumsum(*axis)?,
            Call::NonEmptyAxis { axis, op } => {
                let x = a(0);
                if x.dim(*axis)? == 0
                    && x.dims()
                        .iter()
                        .enumerate()
                        .all(|(i, &n)| i == *axis || n > 0)
                {
                    return Err(EvalError::Other(format!("`{op}` over an empty axis")).into());
                }
                x
            }
            Call::CheckIndex {
                axis,
                depth,
                minus_one,
            } => {
                let idx = a(0);
                let size = match depth {
                    Some(d) => self.size(d)?,
                    None => a(1).dim(*axis)?,
                };
                self.check_index(&idx, size, *minus_one, portable)?;
                idx
            }
            Call::CheckUnique { custom } => {
                let ids = a(0);
                self.check_unique(&ids, *custom)?;
                ids
            }
            Call::CheckNonZero => {
                let y = a(0);
                let zero = if portable {
                    let z = y.flatten_all()?.eq(0i64 as f64)?;
                    z.max(0)?.to_scalar::<u8>()? != 0
                } else {
                    y.flatten_all()?.to_vec1::<i64>()?.contains(&0)
                };
                if zero && y.elem_count() > 0 {
                    return Err(EvalError::Other("integer division by zero".into()).into());
                }
                y
            }
            Call::ArgsortStable { axis, descending } => {
                a(0).contiguous()?.apply_op1_no_bwd(&ArgsortStable {
                    axis: *axis,
                    descending: *descending,
                })?
            }
            Call::CumsumScan { axis, reverse } => {
                a(0).contiguous()?.apply_op1_no_bwd(&CumsumScan {
                    axis: *axis,
                    reverse: *reverse,
                })?
            }
            Call::LogCumSumExpScan { axis, reverse } => {
                a(0).contiguous()?.apply_op1_no_bwd(&LogCumSumExpScan {
                    axis: *axis,
                    reverse: *reverse,
                })?
            }
            Call::SearchSorted { right } => a(0)
                .contiguous()?
                .apply_op2_no_bwd(&a(1).contiguous()?, &SearchSorted { right: *right })?,
            Call::Powf => a(0)
                .contiguous()?
                .apply_op2_no_bwd(&a(1).contiguous()?, &Powf)?,
            Call::Rand(kind, shape) => {
                let shape = self.shape(shape)?;
                a(0).apply_op2_no_bwd(&a(1), &Rand { kind: *kind, shape })?
            }
        })
    }

    /// The interpreter's bounds check of an index tensor: the first element
    /// (row-major) outside `0..size` is the error. On the device: a mask, a
    /// masked min of positions, and one scalar read back.
    fn check_index(&self, idx: &Tensor, size: usize, minus_one: bool, portable: bool) -> SR<()> {
        let n = idx.elem_count();
        if n == 0 {
            return Ok(());
        }
        let flat = idx.flatten_all()?;
        let first = if portable {
            let lo = flat.lt(0f64)?;
            let hi = flat.ge(size as f64)?;
            let mut bad = lo.maximum(&hi)?;
            if minus_one {
                let ok = flat.eq(-1f64)?;
                bad = bad.minimum(&ok.eq(0f64)?)?;
            }
            let pos = Tensor::arange(0i64, n as i64, self.device)?;
            let none = Tensor::new(n as i64, self.device)?.broadcast_as(n)?;
            bad.where_cond(&pos, &none)?.min(0)?.to_scalar::<i64>()? as usize
        } else {
            flat.to_vec1::<i64>()?
                .iter()
                .position(|&v| !((v >= 0 && (v as u64) < size as u64) || (minus_one && v == -1)))
                .unwrap_or(n)
        };
        if first < n {
            let value = flat.get(first)?.to_scalar::<i64>()?;
            return Err(EvalError::Index {
                value,
                size,
                position: unravel(first, idx.dims()),
            }
            .into());
        }
        Ok(())
    }

    /// The interpreter's duplicate check: the first position whose id appeared before.
    fn check_unique(&self, ids: &Tensor, custom: bool) -> SR<()> {
        let n = ids.elem_count();
        if n < 2 {
            return Ok(());
        }
        let flat = ids.flatten_all()?.contiguous()?;
        let first = if custom {
            flat.apply_op1_no_bwd(&FirstRepeat)?.to_scalar::<i64>()? as usize
        } else {
            // Pairwise: id i repeats if an earlier j has the same id. O(n²) memory.
            let col = flat.reshape((n, 1))?;
            let row = flat.reshape((1, n))?;
            let same = col.broadcast_eq(&row)?;
            let pos = Tensor::arange(0i64, n as i64, self.device)?;
            let earlier = pos.reshape((1, n))?.broadcast_lt(&pos.reshape((n, 1))?)?;
            let rep = same.minimum(&earlier)?.max(1)?;
            let none = Tensor::new(n as i64, self.device)?.broadcast_as(n)?;
            rep.where_cond(&pos, &none)?.min(0)?.to_scalar::<i64>()? as usize
        };
        if first < n {
            let value = flat.get(first)?.to_scalar::<i64>()?;
            return Err(EvalError::Duplicate {
                value,
                position: unravel(first, ids.dims()),
            }
            .into());
        }
        Ok(())
    }
}

/// Which steps are needed for `roots` when the slots in `provided` are given.
pub fn needed_steps(plan: &Plan, roots: &[Slot], provided: &[Slot]) -> Vec<bool> {
    let mut need_slot = vec![false; plan.types.len()];
    for r in roots {
        need_slot[r.index()] = true;
    }
    let mut need = vec![false; plan.steps.len()];
    for (i, st) in plan.steps.iter().enumerate().rev() {
        if need_slot[st.out.index()] && !provided.contains(&st.out) {
            need[i] = true;
            for a in &st.args {
                need_slot[a.index()] = true;
            }
        }
    }
    need
}
