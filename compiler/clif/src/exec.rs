//! The driver: resolves dims, checks what the interpreter would reject before
//! any kernel runs (sizes, slices, empty argmax axes), lays the slots out in
//! a reusable arena, copies the caller's tensors in, runs the kernels in
//! order and reads the results back.

use crate::abi::{Ctx, Faults, KernelFn, SLOT_ALIGN, Storage};
use crate::array::{ArrayMut, View};
use crate::schedule::{Place, Schedule, SlotKind};
use losslang_compiler::dim::{Dim, size, sizes};
use losslang_compiler::ir::eval::{Env, NodeError};
use losslang_compiler::ir::{Graph, Handle};
use losslang_compiler::kernels::{EvalError, split_axis};
use losslang_compiler::ops::Op;
use losslang_compiler::value::{DType, Data, Tensor};
use std::collections::{BTreeMap, HashMap};
use std::sync::Mutex;

/// A compiled schedule: one function per kernel.
pub struct Kernels<'a> {
    pub schedule: &'a Schedule,
    pub fns: &'a [KernelFn],
    /// Which kernels may split their outer loop across threads.
    pub parallel: &'a [bool],
}

fn shape_err(h: Handle, m: String) -> NodeError {
    NodeError {
        node: h,
        error: EvalError::Shape(m),
    }
}

/// Slice positions `start + step·k` for `k < len` must lie in `0..full`; the
/// first that does not is the interpreter's error.
fn check_positions(start: i64, len: usize, step: i64, full: usize) -> Result<(), EvalError> {
    if len == 0 {
        return Ok(());
    }
    let bad = |p: i64| {
        Err(EvalError::Shape(format!(
            "slice position {p} is outside an axis of length {full}"
        )))
    };
    let full_i = full as i64;
    if start < 0 || start >= full_i {
        return bad(start);
    }
    // Positions are monotonic: find the first k that leaves the axis.
    let first_out = if step > 0 {
        (full_i - 1 - start) / step + 1
    } else {
        start / (-step) + 1
    };
    if (first_out as u64) < len as u64 {
        return bad(start + step * first_out);
    }
    Ok(())
}

/// Resolved sizes of every needed node, after the interpreter's checks.
fn resolve(
    g: &Graph,
    s: &Schedule,
    dims: &BTreeMap<String, i64>,
) -> Result<Vec<Option<Vec<usize>>>, NodeError> {
    let lookup = |n: &str| dims.get(n).copied();
    let mut shapes: Vec<Option<Vec<usize>>> = vec![None; g.len()];
    for (i, n) in g.nodes.iter().enumerate() {
        if s.place[i] == Place::Dead {
            continue;
        }
        let h = Handle(i as u32);
        let at = |e: EvalError| NodeError { node: h, error: e };
        let arg = |k: usize| -> &Vec<usize> {
            shapes[n.args[k].index()]
                .as_ref()
                .expect("arguments are resolved first")
        };
        match &n.op {
            Op::Fill(_, _, sh) | Op::Rand(_, sh) => {
                sizes(sh, &lookup).map_err(at)?;
            }
            Op::Iota(d) | Op::OneHot(d) => {
                size(d, &lookup).map_err(at)?;
            }
            Op::DimSize(d) => {
                d.eval(&lookup)
                    .ok_or_else(|| shape_err(h, format!("size `{d}` is not bound")))?;
            }
            Op::Reshape(sh) => {
                let to = sizes(sh, &lookup).map_err(at)?;
                let from = arg(0);
                if to.iter().product::<usize>() != from.iter().product::<usize>() {
                    return Err(shape_err(h, format!("cannot reshape {from:?} to {to:?}")));
                }
            }
            Op::BroadcastTo(sh) => {
                let to = sizes(sh, &lookup).map_err(at)?;
                let from = arg(0);
                let lead = to.len().saturating_sub(from.len());
                let ok = from.len() <= to.len()
                    && from
                        .iter()
                        .enumerate()
                        .all(|(j, &d)| d == 1 || d == to[lead + j]);
                if !ok {
                    return Err(shape_err(h, format!("cannot broadcast {from:?} to {to:?}")));
                }
            }
            Op::Slice {
                axis,
                start,
                len,
                step,
            } => {
                let st = start
                    .eval(&lookup)
                    .ok_or_else(|| shape_err(h, format!("unbound `{start}`")))?;
                let len = size(len, &lookup).map_err(at)?;
                check_positions(st, len, *step, arg(0)[*axis]).map_err(at)?;
            }
            Op::Pad {
                axis,
                start,
                full,
                step,
            } => {
                let st = start
                    .eval(&lookup)
                    .ok_or_else(|| shape_err(h, format!("unbound `{start}`")))?;
                let full = size(full, &lookup).map_err(at)?;
                check_positions(st, arg(0)[*axis], *step, full).map_err(at)?;
            }
            Op::ArgMax(a) | Op::ArgMin(a) => {
                let (outer, len, inner) = split_axis(arg(0), *a);
                if len == 0 && outer * inner > 0 {
                    return Err(at(EvalError::Other(format!(
                        "`{}` over an empty axis",
                        n.op.name()
                    ))));
                }
            }
            Op::MatMul => {
                let (k, k2) = (arg(0)[1], arg(1)[0]);
                if k != k2 {
                    return Err(shape_err(
                        h,
                        format!("matmul inner sizes differ: {k} and {k2}"),
                    ));
                }
            }
            _ => {}
        }
        let sh = sizes(&n.ty.shape, &lookup).map_err(at)?;
        // Element-wise arguments must have the sizes the static broadcast assumes.
        if matches!(n.op, Op::Binary(_) | Op::Where) {
            for &a in &n.args {
                let ash = shapes[a.index()].as_ref().expect("resolved");
                let lead = sh.len() - ash.len();
                if let Some(j) = (0..ash.len()).find(|&j| ash[j] != 1 && ash[j] != sh[lead + j]) {
                    return Err(shape_err(
                        h,
                        format!(
                            "sizes {} and {} do not broadcast (axis {})",
                            ash[j],
                            sh[lead + j],
                            lead + j
                        ),
                    ));
                }
            }
        }
        shapes[i] = Some(sh);
    }
    Ok(shapes)
}

fn dims_value(d: &Dim, dims: &BTreeMap<String, i64>) -> i64 {
    // Unbound or failing dims were reported by `resolve` for every dim that
    // sizes something; the rest are attributes that it checked the same way.
    d.eval(&|n: &str| dims.get(n).copied()).unwrap_or(0)
}

fn numel(shape: &[usize]) -> Option<usize> {
    shape.iter().try_fold(1usize, |a, &d| a.checked_mul(d))
}

/// Copies a tensor into a slot's native storage. `dst` has exactly the slot's
/// bytes; the storage was checked to fit the tensor's data.
fn fill_slot(dst: &mut [u8], storage: Storage, t: &Tensor) {
    match (&t.data, storage) {
        (Data::F(v), Storage::F32) => {
            for (c, x) in dst.chunks_exact_mut(4).zip(v) {
                c.copy_from_slice(&(*x as f32).to_ne_bytes());
            }
        }
        (Data::F(v), Storage::F64) => {
            for (c, x) in dst.chunks_exact_mut(8).zip(v) {
                c.copy_from_slice(&x.to_ne_bytes());
            }
        }
        (Data::I(v), Storage::I64) => {
            for (c, x) in dst.chunks_exact_mut(8).zip(v) {
                c.copy_from_slice(&x.to_ne_bytes());
            }
        }
        (Data::B(v), Storage::U8) => {
            for (c, x) in dst.iter_mut().zip(v) {
                *c = u8::from(*x);
            }
        }
        // `run_bound` refuses every other pairing before filling.
        _ => {}
    }
}

fn read_slot(src: &[u8], storage: Storage, dtype: DType, shape: Vec<usize>) -> Tensor {
    let data = match storage {
        Storage::F32 => Data::F(
            src.chunks_exact(4)
                .map(|c| f64::from(f32::from_ne_bytes(c.try_into().expect("4 bytes"))))
                .collect(),
        ),
        Storage::F64 => Data::F(
            src.chunks_exact(8)
                .map(|c| f64::from_ne_bytes(c.try_into().expect("8 bytes")))
                .collect(),
        ),
        Storage::I64 => Data::I(
            src.chunks_exact(8)
                .map(|c| i64::from_ne_bytes(c.try_into().expect("8 bytes")))
                .collect(),
        ),
        Storage::U8 => Data::B(src.iter().map(|&b| b != 0).collect()),
    };
    Tensor { dtype, shape, data }
}

/// Offsets for slots of `lens` bytes whose kernel spans `live` (inclusive)
/// may overlap in time only if their memory does not: first fit, in order of
/// first use. Returns the offsets and the total size.
fn pack(lens: &[usize], live: &[(usize, usize)]) -> Option<(Vec<usize>, usize)> {
    let mut order: Vec<usize> = (0..lens.len()).collect();
    order.sort_by_key(|&i| (live[i].0, i));
    let mut offsets = vec![0usize; lens.len()];
    let mut placed: Vec<usize> = vec![];
    let mut total = 0usize;
    for i in order {
        let len = lens[i].checked_add(SLOT_ALIGN - 1)? / SLOT_ALIGN * SLOT_ALIGN;
        // Memory in use while slot `i` lives, by offset.
        let mut busy: Vec<(usize, usize)> = placed
            .iter()
            .filter(|&&j| live[j].1 >= live[i].0 && live[j].0 <= live[i].1)
            .map(|&j| {
                let lj = lens[j].div_ceil(SLOT_ALIGN) * SLOT_ALIGN;
                (offsets[j], offsets[j] + lj)
            })
            .collect();
        busy.sort_unstable();
        let mut at = 0usize;
        for (a, b) in busy {
            if a >= at.checked_add(len)? {
                break;
            }
            at = at.max(b);
        }
        offsets[i] = at;
        total = total.max(at.checked_add(len)?);
        placed.push(i);
    }
    Some((offsets, total))
}

/// The data of one input, param or state slot.
#[derive(Clone, Copy)]
pub enum Ext<'a> {
    /// Copied into the arena in the slot's storage.
    Tensor(&'a Tensor),
    /// Read in place.
    Array(View<'a>),
}

/// Where one result goes.
pub enum Sink<'a> {
    /// Read back into a new tensor.
    Tensor,
    /// Written into the caller's array: in place when the result has a slot
    /// of its own, else copied there after the kernels ran.
    Array(ArrayMut<'a>),
}

/// Everything a call binds.
pub struct Bound<'a> {
    pub inputs: Vec<Ext<'a>>,
    pub params: Vec<Ext<'a>>,
    pub state: Vec<Ext<'a>>,
    pub dims: &'a BTreeMap<String, i64>,
}

impl<'a> Bound<'a> {
    pub fn from_env(env: &'a Env) -> Bound<'a> {
        Bound {
            inputs: env.inputs.iter().map(Ext::Tensor).collect(),
            params: env.params.iter().map(Ext::Tensor).collect(),
            state: env.state.iter().map(Ext::Tensor).collect(),
            dims: &env.dims,
        }
    }

    fn external(&self, kind: &SlotKind) -> Option<Ext<'a>> {
        match kind {
            SlotKind::Input(k) => self.inputs.get(*k).copied(),
            SlotKind::Param(k) => self.params.get(*k).copied(),
            SlotKind::State(k) => self.state.get(*k).copied(),
            SlotKind::Node(_) | SlotKind::Scratch => None,
        }
    }
}

/// Runs the kernels on `env` and returns the values of `roots`.
pub fn run(
    g: &Graph,
    k: &Kernels,
    env: &Env,
    roots: &[Handle],
    arena: &Mutex<Vec<u64>>,
    threads: usize,
) -> Result<Vec<Tensor>, NodeError> {
    let mut sinks: Vec<Sink> = roots.iter().map(|_| Sink::Tensor).collect();
    let out = run_bound(
        g,
        k,
        &Bound::from_env(env),
        roots,
        &mut sinks,
        arena,
        threads,
    )?;
    Ok(out
        .into_iter()
        .map(|t| t.expect("a tensor sink gives a tensor"))
        .collect())
}

/// Runs the kernels on `b` and delivers the value of each root to its sink;
/// returns the tensors of `Sink::Tensor` roots (`None` for the others).
pub fn run_bound(
    g: &Graph,
    k: &Kernels,
    b: &Bound,
    roots: &[Handle],
    sinks: &mut [Sink],
    arena: &Mutex<Vec<u64>>,
    threads: usize,
) -> Result<Vec<Option<Tensor>>, NodeError> {
    assert_eq!(roots.len(), sinks.len(), "one sink per root");
    let s = k.schedule;
    let shapes = resolve(g, s, b.dims)?;
    let dims: Vec<i64> = s.dims.iter().map(|d| dims_value(d, b.dims)).collect();
    let dim_of: HashMap<&Dim, i64> = s.dims.iter().zip(dims.iter().copied()).collect();
    let dimv = |d: &Dim| d.as_const().unwrap_or_else(|| dim_of[d]);
    // Slot sizes from the same resolved dims the kernels loop over.
    let mut lens = Vec::with_capacity(s.slots.len());
    for (i, sl) in s.slots.iter().enumerate() {
        let shape: Vec<usize> = sl
            .shape
            .iter()
            .map(|d| usize::try_from(dimv(d)).unwrap_or(0))
            .collect();
        let bytes = numel(&shape)
            .and_then(|n| n.checked_mul(sl.storage.bytes()))
            .ok_or_else(|| {
                let h = match sl.kind {
                    SlotKind::Node(h) => h,
                    _ => s.roots[0],
                };
                shape_err(h, format!("slot s{i} of shape {shape:?} is too large"))
            })?;
        lens.push(bytes);
    }
    // Slots that live in the caller's memory instead of the arena.
    let mut direct: Vec<Option<*mut u8>> = vec![None; s.slots.len()];
    for (i, sl) in s.slots.iter().enumerate() {
        let Some(ext) = b.external(&sl.kind) else {
            continue;
        };
        let node = g
            .nodes
            .iter()
            .position(|n| match (&n.op, &sl.kind) {
                (Op::Input(a), SlotKind::Input(c))
                | (Op::Param(a), SlotKind::Param(c))
                | (Op::State(a), SlotKind::State(c)) => a == c,
                _ => false,
            })
            .map_or(s.roots[0], |p| Handle(p as u32));
        let want: Vec<usize> = sl
            .shape
            .iter()
            .map(|d| usize::try_from(dimv(d)).unwrap_or(0))
            .collect();
        let (shape, len, dtype, storage_ok) = match ext {
            Ext::Tensor(t) => {
                let data_len = match &t.data {
                    Data::F(v) => v.len(),
                    Data::I(v) => v.len(),
                    Data::B(v) => v.len(),
                };
                let ok = matches!(
                    (&t.data, sl.storage),
                    (Data::F(_), Storage::F32 | Storage::F64)
                        | (Data::I(_), Storage::I64)
                        | (Data::B(_), Storage::U8)
                );
                let len = if data_len == t.len() {
                    data_len
                } else {
                    usize::MAX
                };
                (t.shape.as_slice(), len, t.dtype, ok)
            }
            Ext::Array(v) => (
                v.shape,
                v.data.len(),
                v.data.dtype(),
                v.data.storage() == sl.storage,
            ),
        };
        if !storage_ok {
            return Err(shape_err(
                node,
                format!(
                    "a {dtype} value was bound where {} is expected",
                    sl.storage.name()
                ),
            ));
        }
        if shape != want.as_slice()
            || Some(len) != numel(&want)
            || len * sl.storage.bytes() != lens[i]
        {
            return Err(shape_err(
                node,
                format!(
                    "a value of shape {shape:?} ({len} elements) was bound where {want:?} is expected"
                ),
            ));
        }
        if let Ext::Array(v) = ext {
            direct[i] = Some(v.data.as_ptr().cast_mut());
        }
    }
    // A result with a slot of its own is written straight into the caller's
    // array; one whose slot is shared (an input returned as a gradient, two
    // results that are one node) is copied there afterwards.
    let mut in_place = vec![false; roots.len()];
    for (ri, (&r, sink)) in roots.iter().zip(sinks.iter_mut()).enumerate() {
        let Sink::Array(out) = sink else { continue };
        let sl = s
            .slot_of(r)
            .unwrap_or_else(|| panic!("internal: result {r} has no slot"));
        let slot = &s.slots[sl];
        let want = shapes[r.index()].as_ref().expect("results are resolved");
        if out.storage() != slot.storage || Some(out.len()) != numel(want) {
            return Err(shape_err(
                r,
                format!(
                    "an output array of {} {} elements was given for a result of {} {want:?}",
                    out.len(),
                    out.storage().name(),
                    slot.storage.name()
                ),
            ));
        }
        let shared = roots
            .iter()
            .enumerate()
            .any(|(rj, &q)| rj != ri && s.slot_of(q) == Some(sl));
        if matches!(slot.kind, SlotKind::Node(_)) && !shared && direct[sl].is_none() {
            direct[sl] = Some(out.as_mut_ptr());
            in_place[ri] = true;
        }
    }
    let packed: Vec<usize> = lens
        .iter()
        .zip(&direct)
        .map(|(&l, d)| if d.is_some() { 0 } else { l })
        .collect();
    let (offsets, total) = pack(&packed, &s.live)
        .ok_or_else(|| shape_err(s.roots[0], "the buffers do not fit in memory".into()))?;
    // The arena is reused across calls: writing into fresh pages costs far
    // more than the arithmetic. A concurrent call gets its own.
    let mut own = Vec::new();
    let mut guard = arena.try_lock().ok();
    let mem: &mut Vec<u64> = match guard.as_deref_mut() {
        Some(m) => m,
        None => &mut own,
    };
    let words = total.div_ceil(8) + SLOT_ALIGN / 8;
    if mem.len() < words {
        // Sizes come from the data: a failed allocation is an error, not an abort.
        if mem.try_reserve_exact(words - mem.len()).is_err() {
            return Err(NodeError {
                node: s.roots[0],
                error: EvalError::Other(format!(
                    "the compiled program needs {total} bytes of buffers for these sizes, more than can be allocated"
                )),
            });
        }
        mem.resize(words, 0);
    }
    // SAFETY: a plain byte view of the u64 buffer.
    let raw: &mut [u8] =
        unsafe { std::slice::from_raw_parts_mut(mem.as_mut_ptr().cast::<u8>(), mem.len() * 8) };
    let skew = raw.as_ptr().align_offset(SLOT_ALIGN);
    let raw = &mut raw[skew..skew + total];
    for (i, sl) in s.slots.iter().enumerate() {
        if let Some(Ext::Tensor(t)) = b.external(&sl.kind) {
            fill_slot(&mut raw[offsets[i]..offsets[i] + lens[i]], sl.storage, t);
        }
    }
    let base = raw.as_mut_ptr();
    let bufs: Vec<*mut u8> = offsets
        .iter()
        .zip(&direct)
        // SAFETY: every arena offset is within the arena (at most `total`);
        // a direct slot is the caller's array of exactly the slot's bytes.
        .map(|(&o, d)| d.unwrap_or_else(|| unsafe { base.add(o) }))
        .collect();
    let faults = Faults::default();
    let ctx = Ctx {
        bufs: bufs.as_ptr(),
        dims: dims.as_ptr(),
        faults: &faults,
    };
    for (ki, f) in k.fns.iter().enumerate() {
        let kern = &s.kernels[ki];
        let extent = kern.outer.first().map_or(1, |d| dimv(d).max(0));
        crate::threads::run_kernel(*f, &ctx, extent, if k.parallel[ki] { threads } else { 1 });
    }
    if let Some(f) = faults.first() {
        let node = g.node(Handle(f.node));
        let ishape = node
            .op
            .index_args()
            .first()
            .and_then(|&a| shapes[node.args[a].index()].clone())
            .unwrap_or_default();
        return Err(f.to_node_error(&ishape));
    }
    let mut out = Vec::with_capacity(roots.len());
    for (ri, (&r, sink)) in roots.iter().zip(sinks.iter_mut()).enumerate() {
        let sl = s
            .slot_of(r)
            .unwrap_or_else(|| panic!("internal: result {r} has no slot"));
        // SAFETY: the slot's memory (arena or caller's array) holds `lens[sl]`
        // bytes, and no kernel runs any more.
        let src = unsafe { std::slice::from_raw_parts(bufs[sl].cast_const(), lens[sl]) };
        match sink {
            Sink::Tensor => {
                let shape = shapes[r.index()].clone().expect("results are resolved");
                out.push(Some(read_slot(
                    src,
                    s.slots[sl].storage,
                    g.ty(r).dtype,
                    shape,
                )));
            }
            Sink::Array(a) => {
                if !in_place[ri] {
                    // SAFETY: the storages and element counts were checked to
                    // match; the caller's array is borrowed mutably, so it is
                    // not the source.
                    unsafe {
                        std::ptr::copy_nonoverlapping(src.as_ptr(), a.as_mut_ptr(), lens[sl]);
                    }
                }
                out.push(None);
            }
        }
    }
    Ok(out)
}
