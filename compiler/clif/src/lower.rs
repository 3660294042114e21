//! Lowering of one scheduled kernel to a Cranelift function.
//!
//! A node's value at a multi-index is either loaded from its slot or, for an
//! inline node, computed from its arguments' values at the mapped indices
//! (`compute`, one arm per op). Values are remembered per loop scope, so a
//! node used twice in a loop body is computed once, and a row statistic
//! computed in an outer loop is a register for every inner loop after it.
//! Map stages and register reductions run their innermost loop 4 lanes wide
//! (`vcompute`, `accumulate`) when `vectorizable` admits the loop body, with
//! a scalar loop for the remainder. Special stages (concat, scatters,
//! matmul, argsort, scans) have loop structures of their own
//! (`emit_special`).

use crate::abi::{CTX_BUFS, CTX_DIMS, CTX_FAULTS, FAULT_DIV_ZERO, FAULT_INDEX, Storage};
use crate::loops::Loop;
use crate::math;
use crate::runtime::{self, Arg};
use crate::schedule::{
    Class, Ix, Kernel, Place, Schedule, Stage, arg_index, class, kernel_dims, kernel_slots,
    stage_nodes, walk_stage,
};
use cranelift_codegen::ir::condcodes::{FloatCC, IntCC};
use cranelift_codegen::ir::{
    AbiParam, BlockArg, FuncRef, Function, InstBuilder, MemFlagsData, Signature, Type, Value, types,
};
use cranelift_codegen::isa::{CallConv, TargetFrontendConfig};
use cranelift_frontend::{FunctionBuilder, FunctionBuilderContext};
use losslang_compiler::dim::Dim;
use losslang_compiler::ir::{Graph, Handle};
use losslang_compiler::ops::{BinaryOp, Op, RandKind, ReduceKind, Scalar, UnaryOp};
use losslang_compiler::value::DType;
use std::collections::{HashMap, HashSet};

/// Resolves a runtime function to a callee of the function being built: a
/// module import when JIT-compiling, a named test-case reference for text.
pub trait Linker {
    fn import(&mut self, func: &mut Function, name: &'static str, sig: Signature) -> FuncRef;
}

/// Target choices that the lowering needs.
#[derive(Clone, Copy)]
pub struct Target {
    pub call_conv: CallConv,
    pub frontend: TargetFrontendConfig,
    pub math: math::MathOptions,
}

/// `fn(ctx: *const Ctx, lo: i64, hi: i64)`.
pub fn kernel_signature(ptr: Type, cc: CallConv) -> Signature {
    let mut s = Signature::new(cc);
    s.params.push(AbiParam::new(ptr));
    s.params.push(AbiParam::new(types::I64));
    s.params.push(AbiParam::new(types::I64));
    s
}

pub fn clif_type(d: DType) -> Type {
    match d {
        DType::F32 => types::F32,
        DType::F64 => types::F64,
        DType::I64 => types::I64,
        DType::Bool => types::I8,
    }
}

fn storage_type(s: Storage) -> Type {
    match s {
        Storage::F32 => types::F32,
        Storage::F64 => types::F64,
        Storage::I64 => types::I64,
        Storage::U8 => types::I8,
    }
}

/// A cached value: node, index, and whether it is the 4-lane vector at that index.
type Key = (Handle, Vec<Value>, bool);

struct Lower<'a, 'f> {
    g: &'a Graph,
    s: &'a Schedule,
    b: FunctionBuilder<'f>,
    linker: &'a mut dyn Linker,
    target: Target,
    ptr: Type,
    dims: HashMap<Dim, Value>,
    consts: HashMap<Value, i64>,
    bases: HashMap<usize, Value>,
    strides: HashMap<usize, Vec<Value>>,
    zero: Value,
    faults: Value,
    scopes: Vec<HashMap<Key, Value>>,
    funcs: HashMap<&'static str, FuncRef>,
    /// How many outer (row) loops the kernel being built has.
    outer_len: usize,
}

/// Builds kernel `ki` of `s` into `func`.
pub fn lower_kernel(
    g: &Graph,
    s: &Schedule,
    ki: usize,
    func: &mut Function,
    fctx: &mut FunctionBuilderContext,
    linker: &mut dyn Linker,
    target: Target,
) {
    let ptr = target.frontend.pointer_type();
    func.signature = kernel_signature(ptr, target.call_conv);
    let mut b = FunctionBuilder::new(func, fctx);
    let entry = b.create_block();
    b.append_block_params_for_function_params(entry);
    b.switch_to_block(entry);
    b.seal_block(entry);
    let params = b.block_params(entry).to_vec();
    let (ctx, lo, hi) = (params[0], params[1], params[2]);
    let word = i32::from(ptr.bytes() as u8);
    let table = MemFlagsData::trusted().with_readonly();
    let k: &Kernel = &s.kernels[ki];
    let kdims = kernel_dims(g, s, k);
    let kslots = kernel_slots(g, s, k);
    let faults = b.ins().load(ptr, table, ctx, CTX_FAULTS * word);
    let zero = b.ins().iconst(types::I64, 0);
    let mut lw = Lower {
        g,
        s,
        b,
        linker,
        target,
        ptr,
        dims: HashMap::new(),
        consts: HashMap::from([(zero, 0)]),
        bases: HashMap::new(),
        strides: HashMap::new(),
        zero,
        faults,
        scopes: vec![HashMap::new()],
        funcs: HashMap::new(),
        outer_len: k.outer.len(),
    };
    if kdims.iter().any(|d| d.as_const().is_none()) {
        let dp = lw.b.ins().load(ptr, table, ctx, CTX_DIMS * word);
        for d in kdims.iter().filter(|d| d.as_const().is_none()) {
            let off = (s.dim_index(d) * 8) as i32;
            let v = lw.b.ins().load(types::I64, table, dp, off);
            lw.dims.insert(d.clone(), v);
        }
    }
    for d in kdims.iter() {
        if let Some(c) = d.as_const() {
            let v = lw.iconst(c);
            lw.dims.insert(d.clone(), v);
        }
    }
    if !kslots.is_empty() {
        let bp = lw.b.ins().load(ptr, table, ctx, CTX_BUFS * word);
        for &sl in &kslots {
            let base = lw.b.ins().load(ptr, table, bp, (sl as i32) * word);
            lw.bases.insert(sl, base);
        }
        for &sl in &kslots {
            let shape = s.slots[sl].shape.clone();
            let st = lw.row_major_strides(&shape);
            lw.strides.insert(sl, st);
        }
    }
    lw.emit_kernel(k, lo, hi);
    lw.b.ins().return_(&[]);
    let frontend = lw.target.frontend;
    lw.b.finalize(frontend);
}

impl Lower<'_, '_> {
    // ---- integers and dims

    fn iconst(&mut self, v: i64) -> Value {
        let x = self.b.ins().iconst(types::I64, v);
        self.consts.insert(x, v);
        x
    }

    fn cval(&self, v: Value) -> Option<i64> {
        self.consts.get(&v).copied()
    }

    fn imul(&mut self, a: Value, b: Value) -> Value {
        match (self.cval(a), self.cval(b)) {
            (Some(0), _) | (_, Some(0)) => self.zero,
            (Some(1), _) => b,
            (_, Some(1)) => a,
            (Some(x), Some(y)) => self.iconst(x.wrapping_mul(y)),
            _ => self.b.ins().imul(a, b),
        }
    }

    fn iadd(&mut self, a: Value, b: Value) -> Value {
        match (self.cval(a), self.cval(b)) {
            (Some(0), _) => b,
            (_, Some(0)) => a,
            (Some(x), Some(y)) => self.iconst(x.wrapping_add(y)),
            _ => self.b.ins().iadd(a, b),
        }
    }

    fn isub(&mut self, a: Value, b: Value) -> Value {
        match (self.cval(a), self.cval(b)) {
            (_, Some(0)) => a,
            (Some(x), Some(y)) => self.iconst(x.wrapping_sub(y)),
            _ => self.b.ins().isub(a, b),
        }
    }

    fn dim(&self, d: &Dim) -> Value {
        *self
            .dims
            .get(d)
            .unwrap_or_else(|| panic!("internal: dim `{d}` was not loaded"))
    }

    fn row_major_strides(&mut self, shape: &[Dim]) -> Vec<Value> {
        let mut st = vec![self.zero; shape.len()];
        let mut acc = self.iconst(1);
        for i in (0..shape.len()).rev() {
            st[i] = acc;
            let d = self.dim(&shape[i]);
            acc = self.imul(acc, d);
        }
        st
    }

    /// Row-major flat position of `idx` in `shape`.
    fn flat(&mut self, idx: &[Value], shape: &[Dim]) -> Value {
        let mut acc = self.zero;
        for (i, d) in idx.iter().zip(shape) {
            let dv = self.dim(d);
            let t = self.imul(acc, dv);
            acc = self.iadd(t, *i);
        }
        acc
    }

    fn numel(&mut self, shape: &[Dim]) -> Value {
        let mut acc = self.iconst(1);
        for d in shape {
            let dv = self.dim(d);
            acc = self.imul(acc, dv);
        }
        acc
    }

    // ---- memory

    fn slot_type(&self, sl: usize) -> Type {
        storage_type(self.s.slots[sl].storage)
    }

    fn elem_addr(&mut self, sl: usize, off: Value) -> Value {
        let base = self.bases[&sl];
        let bytes = self.s.slots[sl].storage.bytes() as i64;
        if self.cval(off) == Some(0) {
            return base;
        }
        let scaled = match self.cval(off) {
            Some(c) => self.iconst(c * bytes),
            None if bytes == 1 => off,
            None => self
                .b
                .ins()
                .ishl_imm_s(off, i64::from(bytes.trailing_zeros())),
        };
        self.b.ins().iadd(base, scaled)
    }

    fn slot_addr(&mut self, sl: usize, idx: &[Value]) -> Value {
        let st = self.strides[&sl].clone();
        debug_assert_eq!(st.len(), idx.len(), "index rank matches the slot");
        let mut off = self.zero;
        for (i, s) in idx.iter().zip(st) {
            let t = self.imul(*i, s);
            off = self.iadd(off, t);
        }
        self.elem_addr(sl, off)
    }

    fn load(&mut self, sl: usize, idx: &[Value]) -> Value {
        let ty = self.slot_type(sl);
        let a = self.slot_addr(sl, idx);
        self.b.ins().load(ty, MemFlagsData::trusted(), a, 0)
    }

    fn load_flat(&mut self, sl: usize, off: Value) -> Value {
        let ty = self.slot_type(sl);
        let a = self.elem_addr(sl, off);
        self.b.ins().load(ty, MemFlagsData::trusted(), a, 0)
    }

    fn store(&mut self, sl: usize, idx: &[Value], v: Value) {
        let a = self.slot_addr(sl, idx);
        self.b.ins().store(MemFlagsData::trusted(), v, a, 0);
    }

    fn node_slot(&self, h: Handle) -> usize {
        self.s
            .slot_of(h)
            .unwrap_or_else(|| panic!("internal: {h} has no slot"))
    }

    // ---- the value cache

    fn lookup(&self, h: Handle, idx: &[Value]) -> Option<Value> {
        let key = (h, idx.to_vec(), false);
        self.scopes.iter().rev().find_map(|m| m.get(&key).copied())
    }

    fn remember(&mut self, h: Handle, idx: &[Value], v: Value) {
        self.scopes
            .last_mut()
            .expect("a scope is open")
            .insert((h, idx.to_vec(), false), v);
    }

    fn open(&mut self, start: Value, end: Value) -> Loop {
        self.scopes.push(HashMap::new());
        Loop::open(&mut self.b, start, end)
    }

    fn close(&mut self, l: Loop) {
        l.close(&mut self.b);
        self.scopes.pop();
    }

    /// Loops over `shape[from..]`; unit axes take index 0 without a loop.
    fn open_nest(&mut self, shape: &[Dim], from: usize, idx: &mut Vec<Value>) -> Vec<Loop> {
        let mut loops = vec![];
        for d in &shape[from..] {
            if d.is_one() {
                idx.push(self.zero);
            } else {
                let end = self.dim(d);
                let l = self.open(self.zero, end);
                idx.push(l.index);
                loops.push(l);
            }
        }
        loops
    }

    fn close_nest(&mut self, loops: Vec<Loop>) {
        for l in loops.into_iter().rev() {
            self.close(l);
        }
    }

    /// `if cond { then } else { other }`, both producing a value of type `ty`.
    fn branch(
        &mut self,
        cond: Value,
        ty: Type,
        then: impl FnOnce(&mut Self) -> Value,
        other: impl FnOnce(&mut Self) -> Value,
    ) -> Value {
        let tb = self.b.create_block();
        let eb = self.b.create_block();
        let mb = self.b.create_block();
        let p = self.b.append_block_param(mb, ty);
        self.b.ins().brif(cond, tb, &[], eb, &[]);
        self.b.switch_to_block(tb);
        self.b.seal_block(tb);
        self.scopes.push(HashMap::new());
        let v = then(self);
        self.scopes.pop();
        self.b.ins().jump(mb, &[BlockArg::Value(v)]);
        self.b.switch_to_block(eb);
        self.b.seal_block(eb);
        self.scopes.push(HashMap::new());
        let w = other(self);
        self.scopes.pop();
        self.b.ins().jump(mb, &[BlockArg::Value(w)]);
        self.b.switch_to_block(mb);
        self.b.seal_block(mb);
        p
    }

    /// Runs `body` only when `cond` holds.
    fn when(&mut self, cond: Value, body: impl FnOnce(&mut Self)) {
        let tb = self.b.create_block();
        let mb = self.b.create_block();
        self.b.ins().brif(cond, tb, &[], mb, &[]);
        self.b.switch_to_block(tb);
        self.b.seal_block(tb);
        self.scopes.push(HashMap::new());
        body(self);
        self.scopes.pop();
        self.b.ins().jump(mb, &[]);
        self.b.switch_to_block(mb);
        self.b.seal_block(mb);
    }

    /// Runs `body` on a cold path when `cond` does not hold.
    fn unless(&mut self, cond: Value, body: impl FnOnce(&mut Self)) {
        let fb = self.b.create_block();
        let mb = self.b.create_block();
        self.b.set_cold_block(fb);
        self.b.ins().brif(cond, mb, &[], fb, &[]);
        self.b.switch_to_block(fb);
        self.b.seal_block(fb);
        self.scopes.push(HashMap::new());
        body(self);
        self.scopes.pop();
        self.b.ins().jump(mb, &[]);
        self.b.switch_to_block(mb);
        self.b.seal_block(mb);
    }

    // ---- calls

    fn call(&mut self, name: &'static str, args: &[Value]) -> Option<Value> {
        let f = match self.funcs.get(name) {
            Some(f) => *f,
            None => {
                let rt = runtime::lookup(name);
                let mut sig = Signature::new(self.target.call_conv);
                let t = |a: &Arg| match a {
                    Arg::F32 => types::F32,
                    Arg::F64 => types::F64,
                    Arg::I64 => types::I64,
                    Arg::Ptr => self.ptr,
                };
                sig.params
                    .extend(rt.params.iter().map(|a| AbiParam::new(t(a))));
                sig.returns
                    .extend(rt.rets.iter().map(|a| AbiParam::new(t(a))));
                let f = self.linker.import(self.b.func, name, sig);
                self.funcs.insert(name, f);
                f
            }
        };
        let inst = self.b.ins().call(f, args);
        self.b.inst_results(inst).first().copied()
    }

    /// Records a fault at node `h` (see `abi`).
    fn fault(&mut self, kind: i64, h: Handle, value: Value, pos: Value, size: Value) {
        let k = self.iconst(kind);
        let n = self.iconst(i64::from(h.0));
        let fp = self.faults;
        self.call("rt_fault", &[fp, k, n, value, pos, size]);
    }

    // ---- scalars

    fn fconst(&mut self, ty: Type, v: f64) -> Value {
        if ty == types::F32 {
            self.b.ins().f32const(v as f32)
        } else {
            self.b.ins().f64const(v)
        }
    }

    /// A constant of dtype `d`, converted as the interpreter's `filled` does.
    fn scalar(&mut self, v: Scalar, d: DType) -> Value {
        match d {
            DType::Bool => {
                let b = match v {
                    Scalar::B(b) => b,
                    v => v.as_f64() != 0.0,
                };
                self.b.ins().iconst(types::I8, i64::from(b))
            }
            DType::I64 => {
                let i = match v {
                    Scalar::I(i) => i,
                    v => v.as_f64() as i64,
                };
                self.iconst(i)
            }
            DType::F32 | DType::F64 => self.fconst(clif_type(d), v.as_f64()),
        }
    }

    fn zero_of(&mut self, d: DType) -> Value {
        match d {
            DType::Bool => self.b.ins().iconst(types::I8, 0),
            DType::I64 => self.zero,
            DType::F32 | DType::F64 => self.fconst(clif_type(d), 0.0),
        }
    }

    fn widen(&mut self, v: Value) -> Value {
        match self.b.func.dfg.value_type(v) {
            t if t == types::F32 => self.b.ins().fpromote(types::F64, v),
            t if t == types::I64 => self.b.ins().fcvt_from_sint(types::F64, v),
            _ => v,
        }
    }

    // ---- values

    /// `idx` with 0 on the axes `h` does not vary along (see `index_deps`).
    fn canon(&self, h: Handle, idx: &[Value]) -> Vec<Value> {
        let d = self.s.deps[h.index()];
        idx.iter()
            .enumerate()
            .map(|(j, v)| {
                if j < 64 && d & (1 << j) == 0 {
                    self.zero
                } else {
                    *v
                }
            })
            .collect()
    }

    /// `h` at `idx` (an index into `h`'s own shape).
    fn value(&mut self, h: Handle, idx: &[Value]) -> Value {
        let idx = &self.canon(h, idx);
        if let Some(v) = self.lookup(h, idx) {
            return v;
        }
        let v = match self.s.place[h.index()] {
            Place::Slot(sl) => self.load(sl, idx),
            Place::Inline => self.compute(h, idx),
            Place::Dead => panic!("internal: {h} is used but not scheduled"),
        };
        self.remember(h, idx, v);
        v
    }

    /// Argument `a` read at the index `idx` of a result it broadcasts to.
    fn bvalue(&mut self, a: Handle, idx: &[Value]) -> Value {
        let shape = &self.g.ty(a).shape;
        let lead = idx.len() - shape.len();
        let aidx: Vec<Value> = shape
            .iter()
            .enumerate()
            .map(|(j, d)| if d.is_one() { self.zero } else { idx[lead + j] })
            .collect();
        self.value(a, &aidx)
    }

    /// Computes `h` at `idx` from its arguments: one arm per op.
    fn compute(&mut self, h: Handle, idx: &[Value]) -> Value {
        let g = self.g;
        let n = g.node(h);
        let dt = n.ty.dtype;
        match &n.op {
            Op::Input(_) | Op::Param(_) | Op::State(_) => {
                panic!("internal: declared value {h} without a slot")
            }
            Op::Const(v, d) | Op::Fill(v, d, _) => self.scalar(*v, *d),
            Op::DimSize(d) => self.dim(d),
            Op::Iota(_) => idx[0],
            Op::Rand(kind, shape) => {
                let i = self.flat(idx, shape);
                let seed = self.value(n.args[0], &[]);
                let step = self.value(n.args[1], &[]);
                let f = match kind {
                    RandKind::Normal => "rt_rand_normal",
                    RandKind::Uniform => "rt_rand_uniform",
                };
                self.call(f, &[seed, step, i]).expect("returns a value")
            }
            Op::Unary(u) => {
                let x = self.value(n.args[0], idx);
                self.unary(*u, g.ty(n.args[0]).dtype, x)
            }
            Op::Binary(BinaryOp::Pow) if self.small_power(n.args[1]).is_some() => {
                let a = self.bvalue(n.args[0], idx);
                self.power(a, self.small_power(n.args[1]).expect("checked"), dt)
            }
            Op::Binary(op) => {
                let a = self.bvalue(n.args[0], idx);
                let b = self.bvalue(n.args[1], idx);
                self.binary(*op, g.ty(n.args[0]).dtype, a, b, h)
            }
            Op::Where => {
                let c = self.bvalue(n.args[0], idx);
                let a = self.bvalue(n.args[1], idx);
                let b = self.bvalue(n.args[2], idx);
                self.b.ins().select(c, a, b)
            }
            Op::Cast(to) => {
                let x = self.value(n.args[0], idx);
                self.cast(x, g.ty(n.args[0]).dtype, *to)
            }
            Op::StopGrad => self.value(n.args[0], idx),
            Op::Reduce { .. } | Op::ArgMax(_) | Op::ArgMin(_) | Op::Norm { .. } => {
                panic!("internal: reduction {h} is read before its stage ran")
            }
            Op::Reshape(shape) => self.reshape(n.args[0], shape, idx),
            Op::BroadcastTo(_) => self.bvalue(n.args[0], idx),
            Op::Transpose(perm) => {
                let mut aidx = vec![self.zero; idx.len()];
                for (i, &p) in perm.iter().enumerate() {
                    aidx[p] = idx[i];
                }
                self.value(n.args[0], &aidx)
            }
            Op::Slice {
                axis, start, step, ..
            } => {
                let st = self.dim(start);
                let k = self.b.ins().imul_imm_s(idx[*axis], *step);
                let p = self.iadd(st, k);
                let mut aidx = idx.to_vec();
                aidx[*axis] = p;
                self.value(n.args[0], &aidx)
            }
            Op::Pad {
                axis, start, step, ..
            } => {
                let a = n.args[0];
                let st = self.dim(start);
                let len = self.dim(&g.ty(a).shape[*axis]);
                let d = self.isub(idx[*axis], st);
                let (q, exact) = if *step == 1 {
                    (d, None)
                } else {
                    let q = self.b.ins().sdiv_imm_s(d, *step);
                    let back = self.b.ins().imul_imm_s(q, *step);
                    (q, Some(self.b.ins().icmp(IntCC::Equal, back, d)))
                };
                // Unsigned `<` also rejects negative positions.
                let inside = self.b.ins().icmp(IntCC::UnsignedLessThan, q, len);
                let ok = match exact {
                    Some(e) => self.b.ins().band(inside, e),
                    None => inside,
                };
                let mut aidx = idx.to_vec();
                aidx[*axis] = q;
                self.branch(ok, clif_type(dt), |s| s.value(a, &aidx), |s| s.zero_of(dt))
            }
            Op::Reverse(axis) => {
                let len = self.dim(&n.ty.shape[*axis]);
                let last = self.b.ins().iadd_imm_s(len, -1);
                let p = self.isub(last, idx[*axis]);
                let mut aidx = idx.to_vec();
                aidx[*axis] = p;
                self.value(n.args[0], &aidx)
            }
            Op::TakeAlong(axis) => {
                let (x, ix) = (n.args[0], n.args[1]);
                let k = self.value(ix, idx);
                let size = self.dim(&g.ty(x).shape[*axis]);
                let mut aidx = idx.to_vec();
                aidx[*axis] = k;
                let ishape = g.ty(ix).shape.clone();
                self.checked_gather(h, k, size, idx, &ishape, x, &aidx, dt)
            }
            Op::IndexSelect(axis) => {
                let (x, ix) = (n.args[0], n.args[1]);
                let ir = g.ty(ix).rank();
                let j = idx[*axis..*axis + ir].to_vec();
                let k = self.value(ix, &j);
                let size = self.dim(&g.ty(x).shape[*axis]);
                let mut aidx = idx[..*axis].to_vec();
                aidx.push(k);
                aidx.extend_from_slice(&idx[*axis + ir..]);
                let ishape = g.ty(ix).shape.clone();
                self.checked_gather(h, k, size, &j, &ishape, x, &aidx, dt)
            }
            Op::OneHot(_) => {
                let ix = n.args[0];
                let r = idx.len();
                // No memory is read at the index: its range check is a `Check` stage.
                let v = self.value(ix, &idx[..r - 1]);
                let hit = self.b.ins().icmp(IntCC::Equal, v, idx[r - 1]);
                let one = self.fconst(types::F32, 1.0);
                let zero = self.fconst(types::F32, 0.0);
                self.b.ins().select(hit, one, zero)
            }
            Op::ScatterAddAlong(axis) if crate::schedule::unit_scatter(g, h, *axis) => {
                // One index per line: `base + (idx == position ? value : 0)`;
                // the range check is a `Check` stage.
                let (base, ix, vals) = (n.args[0], n.args[1], n.args[2]);
                let b0 = self.value(base, idx);
                let mut line = idx.to_vec();
                line[*axis] = self.zero;
                let k = self.value(ix, &line);
                let v = self.value(vals, &line);
                let hit = self.b.ins().icmp(IntCC::Equal, k, idx[*axis]);
                let sum = self.b.ins().fadd(b0, v);
                self.b.ins().select(hit, sum, b0)
            }
            Op::Concat(_)
            | Op::ScatterAddAlong(_)
            | Op::IndexAdd(_)
            | Op::ScatterSet(_)
            | Op::MatMul
            | Op::Argsort { .. }
            | Op::SearchSorted { .. }
            | Op::Cumsum { .. }
            | Op::LogCumSumExp { .. } => {
                panic!("internal: {} {h} is computed by its own stage", n.op.name())
            }
        }
    }

    /// `x[aidx]` where `aidx` holds the data index `k`, checked against `size`;
    /// out of range records a fault at the index's flat position and gives 0.
    #[allow(clippy::too_many_arguments)]
    fn checked_gather(
        &mut self,
        h: Handle,
        k: Value,
        size: Value,
        ipos: &[Value],
        ishape: &[Dim],
        x: Handle,
        aidx: &[Value],
        dt: DType,
    ) -> Value {
        let ok = self.b.ins().icmp(IntCC::UnsignedLessThan, k, size);
        let ipos = ipos.to_vec();
        let ishape = ishape.to_vec();
        self.branch(
            ok,
            clif_type(dt),
            |s| s.value(x, aidx),
            |s| {
                s.b.set_cold_block(s.b.current_block().expect("in a block"));
                let pos = s.flat(&ipos, &ishape);
                s.fault(FAULT_INDEX, h, k, pos, size);
                s.zero_of(dt)
            },
        )
    }

    /// The `Check` stage of an element-wise `one_hot` (`-1` allowed) or
    /// `scatter_add_along`: every index in range, else a fault at its position.
    fn emit_check(&mut self, h: Handle, outer: &[Value]) {
        let g = self.g;
        let n = g.node(h);
        let (ix, size, none_ok) = match &n.op {
            Op::OneHot(depth) => (n.args[0], self.dim(depth), true),
            Op::ScatterAddAlong(axis) => {
                (n.args[1], self.dim(&g.ty(n.args[0]).shape[*axis]), false)
            }
            _ => unreachable!("only one_hot and scatter_add_along have a check stage"),
        };
        let ishape = g.ty(ix).shape.clone();
        let mut idx = outer.to_vec();
        self.hoist_reads(&Stage::Check { node: h }, outer);
        let loops = self.open_nest(&ishape, outer.len(), &mut idx);
        let v = self.value(ix, &idx);
        let inside = self.b.ins().icmp(IntCC::UnsignedLessThan, v, size);
        let ok = if none_ok {
            let none = self.b.ins().icmp_imm_s(IntCC::Equal, v, -1);
            self.b.ins().bor(none, inside)
        } else {
            inside
        };
        self.unless(ok, |s| {
            let pos = s.flat(&idx, &ishape);
            s.fault(FAULT_INDEX, h, v, pos, size);
        });
        self.close_nest(loops);
    }

    /// Computes, before a stage's loops, what it reads at indices fixed for
    /// the stage: values at the outer (row) indices and zeros. Row statistics
    /// and anything broadcast along the inner axes are then registers.
    /// `kernel_level`: only values that need no outer index and nothing the
    /// kernel computes, before its outer loops.
    fn hoist_reads(&mut self, st: &Stage, outer: &[Value]) {
        self.hoist_walk(st, outer, None);
    }

    fn hoist_walk(&mut self, st: &Stage, outer: &[Value], kernel: Option<&HashSet<Handle>>) {
        let w = walk_stage(self.g, self.s, st, outer.len(), kernel);
        for (h, ix) in w.fixed {
            let idx: Vec<Value> = ix
                .iter()
                .map(|i| match i {
                    Ix::Outer(j) => outer[*j],
                    Ix::Zero | Ix::Other | Ix::Lane => self.zero,
                })
                .collect();
            self.value(h, &idx);
        }
    }

    fn reshape(&mut self, a: Handle, shape: &[Dim], idx: &[Value]) -> Value {
        let ash = self.g.ty(a).shape.clone();
        let nu = |s: &[Dim]| {
            s.iter()
                .filter(|d| !d.is_one())
                .cloned()
                .collect::<Vec<_>>()
        };
        if nu(&ash) == nu(shape) {
            // Only unit axes come or go: the other indices carry over in order.
            let mut it = shape
                .iter()
                .zip(idx)
                .filter(|(d, _)| !d.is_one())
                .map(|(_, i)| *i);
            let aidx: Vec<Value> = ash
                .iter()
                .map(|d| {
                    if d.is_one() {
                        self.zero
                    } else {
                        it.next().expect("as many non-unit axes")
                    }
                })
                .collect();
            return self.value(a, &aidx);
        }
        let flat = self.flat(idx, shape);
        if let Place::Slot(sl) = self.s.place[a.index()] {
            // A slot is row-major: the flat position is the same in both shapes.
            return self.load_flat(sl, flat);
        }
        let st = self.row_major_strides(&ash);
        let mut aidx = vec![];
        for (j, d) in ash.iter().enumerate() {
            let q = if self.cval(st[j]) == Some(1) {
                flat
            } else {
                self.b.ins().udiv(flat, st[j])
            };
            let r = if j == 0 {
                q
            } else {
                let dv = self.dim(d);
                self.b.ins().urem(q, dv)
            };
            aidx.push(r);
        }
        self.value(a, &aidx)
    }

    fn unary(&mut self, u: UnaryOp, d: DType, x: Value) -> Value {
        match d {
            DType::F32 | DType::F64 => {
                if u == UnaryOp::IsFinite {
                    let a = self.b.ins().fabs(x);
                    let inf = self.fconst(clif_type(d), f64::INFINITY);
                    return self.b.ins().fcmp(FloatCC::LessThan, a, inf);
                }
                // Inline (vectorisable) math first; a runtime call below when
                // `math` has no inline version.
                if let Some(v) = self.math_inline(u, x) {
                    return v;
                }
                let ty = clif_type(d);
                match u {
                    UnaryOp::Neg => self.b.ins().fneg(x),
                    UnaryOp::Abs => self.b.ins().fabs(x),
                    UnaryOp::Sqrt => self.b.ins().sqrt(x),
                    UnaryOp::Rsqrt => {
                        let s = self.b.ins().sqrt(x);
                        let one = self.fconst(ty, 1.0);
                        self.b.ins().fdiv(one, s)
                    }
                    UnaryOp::Floor => self.b.ins().floor(x),
                    UnaryOp::Round => self.b.ins().nearest(x),
                    UnaryOp::Sign => {
                        let z = self.fconst(ty, 0.0);
                        let one = self.fconst(ty, 1.0);
                        let mone = self.fconst(ty, -1.0);
                        let gt = self.b.ins().fcmp(FloatCC::GreaterThan, x, z);
                        let lt = self.b.ins().fcmp(FloatCC::LessThan, x, z);
                        // ±0 and NaN: `x * 0` keeps NaN and gives a zero otherwise.
                        let x0 = self.b.ins().fmul(x, z);
                        let r = self.b.ins().select(lt, mone, x0);
                        self.b.ins().select(gt, one, r)
                    }
                    UnaryOp::Relu => {
                        let z = self.fconst(ty, 0.0);
                        let keep = self.b.ins().fcmp(FloatCC::UnorderedOrGreaterThan, x, z);
                        self.b.ins().select(keep, x, z)
                    }
                    UnaryOp::Exp
                    | UnaryOp::Log
                    | UnaryOp::Log1p
                    | UnaryOp::Expm1
                    | UnaryOp::Tanh
                    | UnaryOp::Sigmoid
                    | UnaryOp::LogSigmoid
                    | UnaryOp::Softplus
                    | UnaryOp::Sin
                    | UnaryOp::Cos
                    | UnaryOp::Atanh
                    | UnaryOp::Asinh => {
                        let f = runtime::unary_symbol(u, d == DType::F64)
                            .expect("every transcendental has a runtime function");
                        self.call(f, &[x]).expect("returns a value")
                    }
                    UnaryOp::Not | UnaryOp::IsFinite => {
                        panic!("internal: `{}` on a float", u.name())
                    }
                }
            }
            DType::I64 => match u {
                UnaryOp::Neg => self.b.ins().ineg(x),
                UnaryOp::Abs => self.b.ins().iabs(x),
                UnaryOp::Sign => {
                    let lo = self.iconst(-1);
                    let hi = self.iconst(1);
                    let t = self.b.ins().smax(x, lo);
                    self.b.ins().smin(t, hi)
                }
                _ => panic!("internal: `{}` on i64", u.name()),
            },
            DType::Bool => match u {
                UnaryOp::Not => self.b.ins().bxor_imm_s(x, 1),
                _ => panic!("internal: `{}` on bool", u.name()),
            },
        }
    }

    /// A constant exponent 0, 1 or 2 (through reshapes and broadcasts), for
    /// which `pow` is exactly `1`, `x` or `x * x` (one rounding, as the
    /// correctly rounded reference gives).
    fn small_power(&self, e: Handle) -> Option<u8> {
        let g = self.g;
        let mut h = e;
        loop {
            let n = g.node(h);
            match &n.op {
                Op::Reshape(_) | Op::BroadcastTo(_) | Op::StopGrad => h = n.args[0],
                Op::Const(v, _) | Op::Fill(v, _, _) => {
                    let x = v.as_f64();
                    return [0.0, 1.0, 2.0]
                        .iter()
                        .position(|&c| c == x)
                        .map(|p| p as u8);
                }
                _ => return None,
            }
        }
    }

    /// `x ** k` for `k` in 0, 1, 2 (scalar or 4 lanes).
    fn power(&mut self, x: Value, k: u8, d: DType) -> Value {
        let ty = self.b.func.dfg.value_type(x);
        match k {
            0 => {
                let one = self.fconst(clif_type(d), 1.0);
                if ty.is_vector() {
                    self.b.ins().splat(ty, one)
                } else {
                    one
                }
            }
            1 => x,
            _ => self.b.ins().fmul(x, x),
        }
    }

    /// The one hook into `math`: an inline expansion of `u` for a float
    /// scalar or vector, or `None` where it has none.
    fn math_inline(&mut self, u: UnaryOp, x: Value) -> Option<Value> {
        math::emit_unary_with(&mut self.b, u, x, self.target.math)
    }

    fn binary(&mut self, op: BinaryOp, d: DType, a: Value, b: Value, h: Handle) -> Value {
        let cmp_f = |op: BinaryOp| match op {
            BinaryOp::Lt => Some(FloatCC::LessThan),
            BinaryOp::Le => Some(FloatCC::LessThanOrEqual),
            BinaryOp::Gt => Some(FloatCC::GreaterThan),
            BinaryOp::Ge => Some(FloatCC::GreaterThanOrEqual),
            BinaryOp::Eq => Some(FloatCC::Equal),
            BinaryOp::Ne => Some(FloatCC::NotEqual),
            _ => None,
        };
        let cmp_i = |op: BinaryOp| match op {
            BinaryOp::Lt => Some(IntCC::SignedLessThan),
            BinaryOp::Le => Some(IntCC::SignedLessThanOrEqual),
            BinaryOp::Gt => Some(IntCC::SignedGreaterThan),
            BinaryOp::Ge => Some(IntCC::SignedGreaterThanOrEqual),
            BinaryOp::Eq => Some(IntCC::Equal),
            BinaryOp::Ne => Some(IntCC::NotEqual),
            _ => None,
        };
        match d {
            DType::F32 | DType::F64 => {
                if let Some(cc) = cmp_f(op) {
                    return self.b.ins().fcmp(cc, a, b);
                }
                match op {
                    BinaryOp::Add => self.b.ins().fadd(a, b),
                    BinaryOp::Sub => self.b.ins().fsub(a, b),
                    BinaryOp::Mul => self.b.ins().fmul(a, b),
                    BinaryOp::Div => self.b.ins().fdiv(a, b),
                    BinaryOp::Pow => math::emit_pow_with(&mut self.b, a, b, self.target.math)
                        .expect("f32 and f64 are supported"),
                    BinaryOp::Maximum | BinaryOp::Minimum => {
                        // Ties keep the first operand and NaN propagates, as in
                        // the reference kernel.
                        let cc = if op == BinaryOp::Maximum {
                            FloatCC::GreaterThanOrEqual
                        } else {
                            FloatCC::LessThanOrEqual
                        };
                        let first = self.b.ins().fcmp(cc, a, b);
                        let r = self.b.ins().select(first, a, b);
                        let nan = self.b.ins().fcmp(FloatCC::Unordered, a, b);
                        let s = self.b.ins().fadd(a, b);
                        self.b.ins().select(nan, s, r)
                    }
                    BinaryOp::FloorDiv => {
                        let q = self.b.ins().fdiv(a, b);
                        self.b.ins().floor(q)
                    }
                    _ => panic!("internal: `{}` on floats", op.name()),
                }
            }
            DType::I64 => {
                if let Some(cc) = cmp_i(op) {
                    return self.b.ins().icmp(cc, a, b);
                }
                match op {
                    BinaryOp::Add => self.b.ins().iadd(a, b),
                    BinaryOp::Sub => self.b.ins().isub(a, b),
                    BinaryOp::Mul => self.b.ins().imul(a, b),
                    BinaryOp::Maximum => self.b.ins().smax(a, b),
                    BinaryOp::Minimum => self.b.ins().smin(a, b),
                    BinaryOp::FloorDiv => self.floor_div(a, b, h),
                    _ => panic!("internal: `{}` on i64", op.name()),
                }
            }
            DType::Bool => match op {
                BinaryOp::And => self.b.ins().band(a, b),
                BinaryOp::Or => self.b.ins().bor(a, b),
                BinaryOp::Eq => self.b.ins().icmp(IntCC::Equal, a, b),
                BinaryOp::Ne => self.b.ins().icmp(IntCC::NotEqual, a, b),
                _ => panic!("internal: `{}` on bool", op.name()),
            },
        }
    }

    /// Python's `//` on i64 (wrapping at `MIN // -1`); division by zero is a fault.
    fn floor_div(&mut self, a: Value, b: Value, h: Handle) -> Value {
        let nonzero = self.b.ins().icmp_imm_s(IntCC::NotEqual, b, 0);
        self.branch(
            nonzero,
            types::I64,
            |s| {
                let m1 = s.b.ins().icmp_imm_s(IntCC::Equal, b, -1);
                let one = s.iconst(1);
                // `sdiv` traps on MIN / -1: divide by 1 there and negate instead.
                let bs = s.b.ins().select(m1, one, b);
                let q = s.b.ins().sdiv(a, bs);
                let r = s.b.ins().srem(a, bs);
                let rnz = s.b.ins().icmp_imm_s(IntCC::NotEqual, r, 0);
                let x = s.b.ins().bxor(r, bs);
                let neg = s.b.ins().icmp_imm_s(IntCC::SignedLessThan, x, 0);
                let adj = s.b.ins().band(rnz, neg);
                let adj = s.b.ins().uextend(types::I64, adj);
                let q = s.b.ins().isub(q, adj);
                let na = s.b.ins().ineg(a);
                s.b.ins().select(m1, na, q)
            },
            |s| {
                s.b.set_cold_block(s.b.current_block().expect("in a block"));
                let z = s.zero;
                s.fault(FAULT_DIV_ZERO, h, z, z, z);
                s.zero
            },
        )
    }

    /// `astype` semantics of the reference kernel.
    fn cast(&mut self, x: Value, from: DType, to: DType) -> Value {
        match (from, to) {
            (DType::F32, DType::F32)
            | (DType::F64, DType::F64)
            | (DType::I64, DType::I64)
            | (DType::Bool, DType::Bool) => x,
            (DType::F32, DType::F64) => self.b.ins().fpromote(types::F64, x),
            (DType::F64, DType::F32) => self.b.ins().fdemote(types::F32, x),
            // Through f64, as the reference converts (i64 → f64 → f32).
            (DType::I64, DType::F64) => self.b.ins().fcvt_from_sint(types::F64, x),
            (DType::I64, DType::F32) => {
                let w = self.b.ins().fcvt_from_sint(types::F64, x);
                self.b.ins().fdemote(types::F32, w)
            }
            (DType::Bool, DType::F32 | DType::F64) => {
                let t = clif_type(to);
                let one = self.fconst(t, 1.0);
                let zero = self.fconst(t, 0.0);
                self.b.ins().select(x, one, zero)
            }
            // Truncation toward zero, saturating, NaN → 0: Rust's `as`.
            (DType::F32 | DType::F64, DType::I64) => self.b.ins().fcvt_to_sint_sat(types::I64, x),
            (DType::Bool, DType::I64) => self.b.ins().uextend(types::I64, x),
            (DType::F32 | DType::F64, DType::Bool) => {
                let z = self.fconst(clif_type(from), 0.0);
                self.b.ins().fcmp(FloatCC::NotEqual, x, z)
            }
            (DType::I64, DType::Bool) => self.b.ins().icmp_imm_s(IntCC::NotEqual, x, 0),
        }
    }

    // ---- kernels and stages

    fn emit_kernel(&mut self, k: &Kernel, lo: Value, hi: Value) {
        if !k.outer.is_empty() {
            // Loop invariants of the whole kernel, before its row loop.
            let made: HashSet<Handle> = k.stages.iter().flat_map(stage_nodes).collect();
            for st in &k.stages {
                self.hoist_walk(st, &[], Some(&made));
            }
        }
        let mut outer = vec![];
        let mut loops = vec![];
        for (i, d) in k.outer.iter().enumerate() {
            let (start, end) = if i == 0 {
                (lo, hi)
            } else {
                (self.zero, self.dim(d))
            };
            let l = self.open(start, end);
            outer.push(l.index);
            loops.push(l);
        }
        for st in &k.stages {
            match st {
                Stage::Map { nodes } => {
                    self.hoist_reads(st, &outer);
                    self.emit_map(nodes, &outer)
                }
                Stage::Reduce { node, acc, rows } => {
                    self.hoist_reads(st, &outer);
                    self.emit_reduce(*node, *acc, *rows, &outer)
                }
                Stage::Finish { node, rows } => self.emit_finish(*node, *rows),
                Stage::Check { node } => self.emit_check(*node, &outer),
                Stage::Special { node, scratch } => {
                    assert!(
                        outer.is_empty(),
                        "internal: special stages have no row loop"
                    );
                    self.emit_special(*node, *scratch)
                }
            }
        }
        self.close_nest(loops);
    }

    fn emit_map(&mut self, nodes: &[Handle], outer: &[Value]) {
        if self.emit_map_vector(nodes, outer) {
            return;
        }
        let shape = self.g.ty(nodes[0]).shape.clone();
        let mut idx = outer.to_vec();
        let loops = self.open_nest(&shape, outer.len(), &mut idx);
        for &h in nodes {
            let v = self.compute(h, &idx);
            self.remember(h, &idx, v);
            if let Place::Slot(sl) = self.s.place[h.index()] {
                self.store(sl, &idx, v);
            }
        }
        self.close_nest(loops);
    }

    /// The index of a reduction's result for an index `xi` of its argument.
    fn reduced_index(&self, h: Handle, xi: &[Value]) -> Vec<Value> {
        let n = self.g.node(h);
        let (axes, keep) = match &n.op {
            Op::Reduce { axes, keepdims, .. } | Op::Norm { axes, keepdims } => {
                (axes.clone(), *keepdims)
            }
            Op::ArgMax(a) | Op::ArgMin(a) => (vec![*a], false),
            _ => unreachable!("a reduction"),
        };
        xi.iter()
            .enumerate()
            .filter_map(|(i, v)| {
                if axes.contains(&i) {
                    keep.then_some(self.zero)
                } else {
                    Some(*v)
                }
            })
            .collect()
    }

    fn emit_reduce(&mut self, h: Handle, acc: Option<usize>, rows: Option<usize>, outer: &[Value]) {
        let g = self.g;
        let n = g.node(h);
        let x = n.args[0];
        let xs = g.ty(x).shape.clone();
        let (axes, red) = match &n.op {
            Op::Reduce { kind, axes, .. } => (axes.clone(), Red::from(*kind)),
            Op::Norm { axes, .. } => (axes.clone(), Red::Norm),
            Op::ArgMax(a) => return self.emit_arg(h, *a, true, outer),
            Op::ArgMin(a) => return self.emit_arg(h, *a, false, outer),
            _ => unreachable!("a reduction"),
        };
        let acc_ty = red.acc_type(g.ty(x).dtype);
        let k = outer.len();
        if let Some(r) = rows {
            // Every axis is reduced and the first is the row loop: this row's
            // partial, unfinished, for `Finish` to combine in row order.
            let part = self.accumulate(red, x, outer.to_vec(), &axes);
            self.store(r, &outer[..1], part);
            return;
        }
        match acc {
            None => {
                let m = axes.first().copied().unwrap_or(xs.len());
                let mut idx = outer.to_vec();
                let head = self.open_nest(&xs[..m], k, &mut idx);
                let total = self.accumulate(red, x, idx.clone(), &axes);
                let res = self.red_finish(red, total, n.ty.dtype);
                let mut full = idx.clone();
                full.resize(xs.len(), self.zero);
                let oi = self.reduced_index(h, &full);
                self.remember(h, &oi, res);
                if let Place::Slot(sl) = self.s.place[h.index()] {
                    self.store(sl, &oi, res);
                }
                self.close_nest(head);
            }
            Some(a) => {
                let os = n.ty.shape.clone();
                let mut oi = outer.to_vec();
                let l1 = self.open_nest(&os, k, &mut oi);
                let init = self.red_init(red, acc_ty);
                self.store(a, &oi, init);
                self.close_nest(l1);
                let mut xi = outer.to_vec();
                let l2 = self.open_nest(&xs, k, &mut xi);
                let v = self.value(x, &xi);
                let oi = self.reduced_index(h, &xi);
                let cur = self.load(a, &oi);
                let nv = self.red_combine(red, cur, v);
                self.store(a, &oi, nv);
                self.close_nest(l2);
                let sl = self.node_slot(h);
                let mut oi = outer.to_vec();
                let l3 = self.open_nest(&os, k, &mut oi);
                let t = self.load(a, &oi);
                let res = self.red_finish(red, t, n.ty.dtype);
                self.store(sl, &oi, res);
                self.close_nest(l3);
            }
        }
    }

    /// Combines the row partials of a split reduction, in row order.
    fn emit_finish(&mut self, h: Handle, rows: usize) {
        let g = self.g;
        let n = g.node(h);
        let x = n.args[0];
        let red = match &n.op {
            Op::Reduce { kind, .. } => Red::from(*kind),
            Op::Norm { .. } => Red::Norm,
            _ => unreachable!("only sums, extremes and norms are split"),
        };
        let acc_ty = red.acc_type(g.ty(x).dtype);
        let var = self.b.declare_var(acc_ty);
        let init = self.red_init(red, acc_ty);
        self.b.def_var(var, init);
        let len = self.dim(&g.ty(x).shape[0]);
        let l = self.open(self.zero, len);
        let part = self.load(rows, &[l.index]);
        let cur = self.b.use_var(var);
        // Partials of a norm are sums of squares already: merge by adding.
        let merge = if red == Red::Norm { Red::Sum } else { red };
        let nv = self.red_combine(merge, cur, part);
        self.b.def_var(var, nv);
        self.close(l);
        let total = self.b.use_var(var);
        let res = self.red_finish(red, total, n.ty.dtype);
        let oi = vec![self.zero; n.ty.rank()];
        let sl = self.node_slot(h);
        self.store(sl, &oi, res);
    }

    fn red_init(&mut self, red: Red, ty: Type) -> Value {
        match (red, ty) {
            (Red::Sum | Red::Norm, t) if t == types::I64 => self.zero,
            (Red::Sum | Red::Norm, t) => self.fconst(t, 0.0),
            (Red::Max, t) if t == types::I64 => self.iconst(i64::MIN),
            (Red::Min, t) if t == types::I64 => self.iconst(i64::MAX),
            (Red::Max, t) => self.fconst(t, f64::NEG_INFINITY),
            (Red::Min, t) => self.fconst(t, f64::INFINITY),
        }
    }

    fn red_combine(&mut self, red: Red, acc: Value, v: Value) -> Value {
        let vt = self.b.func.dfg.value_type(v);
        let at = self.b.func.dfg.value_type(acc);
        match red {
            Red::Sum if at == types::I64 => self.b.ins().iadd(acc, v),
            Red::Sum => {
                let w = if vt == at { v } else { self.widen(v) };
                self.b.ins().fadd(acc, w)
            }
            Red::Norm => {
                let w = self.widen(v);
                let sq = self.b.ins().fmul(w, w);
                self.b.ins().fadd(acc, sq)
            }
            // `fmax`/`fmin` propagate NaN, like the reference fold.
            Red::Max if at == types::I64 => self.b.ins().smax(acc, v),
            Red::Min if at == types::I64 => self.b.ins().smin(acc, v),
            Red::Max => self.b.ins().fmax(acc, v),
            Red::Min => self.b.ins().fmin(acc, v),
        }
    }

    fn red_finish(&mut self, red: Red, acc: Value, out: DType) -> Value {
        let v = if red == Red::Norm {
            self.b.ins().sqrt(acc)
        } else {
            acc
        };
        let vt = self.b.func.dfg.value_type(v);
        if out == DType::F32 && vt == types::F64 {
            self.b.ins().fdemote(types::F32, v)
        } else {
            v
        }
    }

    /// Argmax/argmin along `axis`: the first extreme wins, NaN beats everything.
    fn emit_arg(&mut self, h: Handle, axis: usize, max: bool, outer: &[Value]) {
        let g = self.g;
        let x = g.node(h).args[0];
        let xs = g.ty(x).shape.clone();
        let mut idx = outer.to_vec();
        let mut loops = vec![];
        for (a, d) in xs.iter().enumerate().skip(outer.len()) {
            if a == axis || d.is_one() {
                idx.push(self.zero);
            } else {
                let end = self.dim(d);
                let l = self.open(self.zero, end);
                idx.push(l.index);
                loops.push(l);
            }
        }
        let cmp_ty = match g.ty(x).dtype {
            DType::F32 => types::F32,
            _ => types::F64,
        };
        let best = self.b.declare_var(types::I64);
        let bval = self.b.declare_var(cmp_ty);
        self.b.def_var(best, self.zero);
        let v0 = self.value(x, &idx);
        let v0 = if cmp_ty == types::F64 {
            self.widen(v0)
        } else {
            v0
        };
        self.b.def_var(bval, v0);
        let len = self.dim(&xs[axis]);
        let one = self.iconst(1);
        let l = self.open(one, len);
        let mut xi = idx.clone();
        xi[axis] = l.index;
        let v = self.value(x, &xi);
        let v = if cmp_ty == types::F64 {
            self.widen(v)
        } else {
            v
        };
        let bv = self.b.use_var(bval);
        let bi = self.b.use_var(best);
        let bv_nan = self.b.ins().fcmp(FloatCC::Unordered, bv, bv);
        let v_nan = self.b.ins().fcmp(FloatCC::Unordered, v, v);
        let cc = if max {
            FloatCC::GreaterThan
        } else {
            FloatCC::LessThan
        };
        let wins = self.b.ins().fcmp(cc, v, bv);
        let wins = self.b.ins().bor(v_nan, wins);
        let ok = self.b.ins().bxor_imm_s(bv_nan, 1);
        let better = self.b.ins().band(ok, wins);
        let ni = self.b.ins().select(better, l.index, bi);
        let nv = self.b.ins().select(better, v, bv);
        self.b.def_var(best, ni);
        self.b.def_var(bval, nv);
        self.close(l);
        let res = self.b.use_var(best);
        let oi = self.reduced_index(h, &idx);
        self.remember(h, &oi, res);
        if let Place::Slot(sl) = self.s.place[h.index()] {
            self.store(sl, &oi, res);
        }
        self.close_nest(loops);
    }

    fn emit_special(&mut self, h: Handle, scratch: Option<usize>) {
        let g = self.g;
        let n = g.node(h);
        let out = self.node_slot(h);
        let dt = n.ty.dtype;
        match &n.op {
            Op::Concat(axis) => {
                let mut base = self.zero;
                for &a in &n.args {
                    let ash = g.ty(a).shape.clone();
                    let mut idx = vec![];
                    let loops = self.open_nest(&ash, 0, &mut idx);
                    let v = self.value(a, &idx);
                    let mut oi = idx.clone();
                    oi[*axis] = self.iadd(idx[*axis], base);
                    self.store(out, &oi, v);
                    self.close_nest(loops);
                    let len = self.dim(&ash[*axis]);
                    base = self.iadd(base, len);
                }
            }
            Op::ScatterAddAlong(axis) | Op::IndexAdd(axis) => {
                let along = matches!(n.op, Op::ScatterAddAlong(_));
                let (base, ix, vals) = (n.args[0], n.args[1], n.args[2]);
                let acc = scratch.unwrap_or(out);
                let bs = g.ty(base).shape.clone();
                let mut idx = vec![];
                let loops = self.open_nest(&bs, 0, &mut idx);
                let v = self.value(base, &idx);
                let v = if scratch.is_some() { self.widen(v) } else { v };
                self.store(acc, &idx, v);
                self.close_nest(loops);
                let size = self.dim(&bs[*axis]);
                let vs = g.ty(vals).shape.clone();
                let ishape = g.ty(ix).shape.clone();
                let ir = ishape.len();
                let mut vi = vec![];
                let loops = self.open_nest(&vs, 0, &mut vi);
                let ipos: Vec<Value> = if along {
                    vi.clone()
                } else {
                    vi[*axis..*axis + ir].to_vec()
                };
                let kv = self.value(ix, &ipos);
                let mut target = if along {
                    vi.clone()
                } else {
                    let mut t = vi[..*axis].to_vec();
                    t.push(self.zero);
                    t.extend_from_slice(&vi[*axis + ir..]);
                    t
                };
                target[*axis] = kv;
                let ok = self.b.ins().icmp(IntCC::UnsignedLessThan, kv, size);
                let cont = self.b.create_block();
                let add = self.b.create_block();
                let bad = self.b.create_block();
                self.b.set_cold_block(bad);
                self.b.ins().brif(ok, add, &[], bad, &[]);
                self.b.switch_to_block(add);
                self.b.seal_block(add);
                self.scopes.push(HashMap::new());
                let cur = self.load(acc, &target);
                let v = self.value(vals, &vi);
                let v = if scratch.is_some() { self.widen(v) } else { v };
                let nv = self.b.ins().fadd(cur, v);
                self.store(acc, &target, nv);
                self.scopes.pop();
                self.b.ins().jump(cont, &[]);
                self.b.switch_to_block(bad);
                self.b.seal_block(bad);
                let pos = self.flat(&ipos, &ishape);
                self.fault(FAULT_INDEX, h, kv, pos, size);
                self.b.ins().jump(cont, &[]);
                self.b.switch_to_block(cont);
                self.b.seal_block(cont);
                self.close_nest(loops);
                if scratch.is_some() {
                    let mut idx = vec![];
                    let loops = self.open_nest(&bs, 0, &mut idx);
                    let t = self.load(acc, &idx);
                    let t = self.b.ins().fdemote(types::F32, t);
                    self.store(out, &idx, t);
                    self.close_nest(loops);
                }
            }
            Op::ScatterSet(axis) => {
                let (base, ix, vals) = (n.args[0], n.args[1], n.args[2]);
                let marks = scratch.expect("a scatter has a mark buffer");
                let isl = self.node_slot(ix);
                let bs = g.ty(base).shape.clone();
                let ishape = g.ty(ix).shape.clone();
                let size = self.dim(&bs[*axis]);
                // Ids in range and unique, or the runtime finds the exact error.
                let l = self.open(self.zero, size);
                let z8 = self.b.ins().iconst(types::I8, 0);
                self.store(marks, &[l.index], z8);
                self.close(l);
                let bad = self.b.declare_var(types::I8);
                let z8 = self.b.ins().iconst(types::I8, 0);
                self.b.def_var(bad, z8);
                let count = self.numel(&ishape);
                let l = self.open(self.zero, count);
                let kv = self.load_flat(isl, l.index);
                let ok = self.b.ins().icmp(IntCC::UnsignedLessThan, kv, size);
                let inb = self.b.create_block();
                let outb = self.b.create_block();
                let cont = self.b.create_block();
                self.b.ins().brif(ok, inb, &[], outb, &[]);
                self.b.switch_to_block(inb);
                self.b.seal_block(inb);
                let m = self.load(marks, &[kv]);
                let one8 = self.b.ins().iconst(types::I8, 1);
                self.store(marks, &[kv], one8);
                let cur = self.b.use_var(bad);
                let nb = self.b.ins().bor(cur, m);
                self.b.def_var(bad, nb);
                self.b.ins().jump(cont, &[]);
                self.b.switch_to_block(outb);
                self.b.seal_block(outb);
                let one8 = self.b.ins().iconst(types::I8, 1);
                self.b.def_var(bad, one8);
                self.b.ins().jump(cont, &[]);
                self.b.switch_to_block(cont);
                self.b.seal_block(cont);
                self.close(l);
                let any = self.b.use_var(bad);
                let fine = self.b.ins().icmp_imm_s(IntCC::Equal, any, 0);
                self.unless(fine, |s| {
                    let node = s.iconst(i64::from(h.0));
                    let ip = s.bases[&isl];
                    let fp = s.faults;
                    s.call("rt_scatter_fault", &[fp, node, ip, count, size]);
                });
                let mut idx = vec![];
                let loops = self.open_nest(&bs, 0, &mut idx);
                let v = self.value(base, &idx);
                self.store(out, &idx, v);
                self.close_nest(loops);
                let vs = g.ty(vals).shape.clone();
                let ir = ishape.len();
                let mut vi = vec![];
                let loops = self.open_nest(&vs, 0, &mut vi);
                let kv = self.value(ix, &vi[*axis..*axis + ir]);
                let ok = self.b.ins().icmp(IntCC::UnsignedLessThan, kv, size);
                let mut target = vi[..*axis].to_vec();
                target.push(kv);
                target.extend_from_slice(&vi[*axis + ir..]);
                self.when(ok, |s| {
                    let v = s.value(vals, &vi);
                    s.store(out, &target, v);
                });
                self.close_nest(loops);
            }
            Op::MatMul => {
                let (a, b) = (n.args[0], n.args[1]);
                let (sa, sb) = (self.node_slot(a), self.node_slot(b));
                let m = self.dim(&g.ty(a).shape[0]);
                let kk = self.dim(&g.ty(a).shape[1]);
                let nn = self.dim(&g.ty(b).shape[1]);
                let f = if dt == DType::F32 {
                    "rt_matmul_f32"
                } else {
                    "rt_matmul_f64"
                };
                let (pa, pb, po) = (self.bases[&sa], self.bases[&sb], self.bases[&out]);
                self.call(f, &[pa, pb, po, m, kk, nn]);
            }
            Op::Argsort { axis, descending } => {
                let x = n.args[0];
                let sx = self.node_slot(x);
                let xs = g.ty(x).shape.clone();
                let outer = self.numel(&xs[..*axis]);
                let len = self.dim(&xs[*axis]);
                let inner = self.numel(&xs[*axis + 1..]);
                let desc = self.iconst(i64::from(*descending));
                let f = match g.ty(x).dtype {
                    DType::F32 => "rt_argsort_f32",
                    DType::F64 => "rt_argsort_f64",
                    DType::I64 | DType::Bool => "rt_argsort_i64",
                };
                let (px, po) = (self.bases[&sx], self.bases[&out]);
                self.call(f, &[px, po, outer, len, inner, desc]);
            }
            Op::SearchSorted { right } => {
                let (sorted, vals) = (n.args[0], n.args[1]);
                let (ss, sv) = (self.node_slot(sorted), self.node_slot(vals));
                let len = self.dim(&g.ty(sorted).shape[0]);
                let m = self.numel(&g.ty(vals).shape);
                let side = self.iconst(i64::from(*right));
                let f = match g.ty(sorted).dtype {
                    DType::F32 => "rt_searchsorted_f32",
                    DType::F64 => "rt_searchsorted_f64",
                    DType::I64 | DType::Bool => "rt_searchsorted_i64",
                };
                let (ps, pv, po) = (self.bases[&ss], self.bases[&sv], self.bases[&out]);
                self.call(f, &[ps, len, pv, m, po, side]);
            }
            Op::Cumsum { axis, reverse } | Op::LogCumSumExp { axis, reverse } => {
                let log = matches!(n.op, Op::LogCumSumExp { .. });
                let x = n.args[0];
                let xs = g.ty(x).shape.clone();
                let mut idx = vec![];
                let mut loops = vec![];
                for (a, d) in xs.iter().enumerate() {
                    if a == *axis || d.is_one() {
                        idx.push(self.zero);
                    } else {
                        let end = self.dim(d);
                        let l = self.open(self.zero, end);
                        idx.push(l.index);
                        loops.push(l);
                    }
                }
                let acc = self.b.declare_var(types::F64);
                let z = self.fconst(types::F64, if log { f64::NEG_INFINITY } else { 0.0 });
                self.b.def_var(acc, z);
                let len = self.dim(&xs[*axis]);
                let l = self.open(self.zero, len);
                let p = if *reverse {
                    let last = self.b.ins().iadd_imm_s(len, -1);
                    self.b.ins().isub(last, l.index)
                } else {
                    l.index
                };
                let mut xi = idx.clone();
                xi[*axis] = p;
                let v = self.value(x, &xi);
                let v = self.widen(v);
                let cur = self.b.use_var(acc);
                let s = if log {
                    self.call("rt_logaddexp", &[cur, v])
                        .expect("returns a value")
                } else {
                    self.b.ins().fadd(cur, v)
                };
                self.b.def_var(acc, s);
                let r = if dt == DType::F32 {
                    self.b.ins().fdemote(types::F32, s)
                } else {
                    s
                };
                self.store(out, &xi, r);
                self.close(l);
                self.close_nest(loops);
            }
            Op::Input(_)
            | Op::Param(_)
            | Op::State(_)
            | Op::Const(..)
            | Op::DimSize(_)
            | Op::Fill(..)
            | Op::Iota(_)
            | Op::Rand(..)
            | Op::Unary(_)
            | Op::Binary(_)
            | Op::Where
            | Op::Cast(_)
            | Op::StopGrad
            | Op::Reduce { .. }
            | Op::ArgMax(_)
            | Op::ArgMin(_)
            | Op::Norm { .. }
            | Op::Reshape(_)
            | Op::BroadcastTo(_)
            | Op::Transpose(_)
            | Op::Slice { .. }
            | Op::Pad { .. }
            | Op::Reverse(_)
            | Op::TakeAlong(_)
            | Op::IndexSelect(_)
            | Op::OneHot(_) => {
                panic!("internal: {} {h} is not a special stage", n.op.name())
            }
        }
    }
}

/// A value in a 4-lane loop body: the same for every lane (a scalar), or one
/// per lane (`F32X4` for floats, an `I32X4` mask for bools).
#[derive(Clone, Copy, Debug)]
enum Vv {
    S(Value),
    V(Value),
}

const LANES: i64 = 4;

impl Lower<'_, '_> {
    /// Whether the values a loop body reads can be computed 4 lanes at a time
    /// along the axes marked `Ix::Lane`: f32 element-wise arithmetic, contiguous
    /// f32 loads, and anything that does not vary along the lanes.
    fn vectorizable(&self, start: Vec<(Handle, Vec<Ix>, bool)>) -> bool {
        let g = self.g;
        let mut stack = start;
        let mut seen: HashSet<(Handle, Vec<Ix>)> = HashSet::new();
        while let Some((h, ix, computed)) = stack.pop() {
            let d = self.s.deps[h.index()];
            let ix: Vec<Ix> = if computed {
                ix
            } else {
                ix.iter()
                    .enumerate()
                    .map(|(j, i)| {
                        if j < 64 && d & (1 << j) == 0 {
                            Ix::Zero
                        } else {
                            *i
                        }
                    })
                    .collect()
            };
            let lanes: Vec<usize> = (0..ix.len()).filter(|&j| ix[j] == Ix::Lane).collect();
            if lanes.is_empty() || !seen.insert((h, ix.clone())) {
                continue;
            }
            let n = g.node(h);
            let place = self.s.place[h.index()];
            if !computed {
                match place {
                    Place::Slot(sl) => {
                        // One contiguous run of 4 f32s.
                        let shape = &self.s.slots[sl].shape;
                        let p = lanes[0];
                        if lanes.len() != 1
                            || self.s.slots[sl].storage != Storage::F32
                            || !shape[p + 1..].iter().all(Dim::is_one)
                        {
                            return false;
                        }
                        continue;
                    }
                    Place::Dead => return false,
                    Place::Inline => {
                        if !matches!(class(g, h), Class::Leaf | Class::Elementwise) {
                            return false;
                        }
                    }
                }
            }
            if !matches!(n.ty.dtype, DType::F32 | DType::Bool) {
                return false;
            }
            let arg_dt = |k: usize| g.ty(n.args[k]).dtype;
            let ok = match &n.op {
                Op::Unary(u) => match u {
                    UnaryOp::Not => true,
                    UnaryOp::IsFinite => arg_dt(0) == DType::F32,
                    u => arg_dt(0) == DType::F32 && math::is_inline(*u),
                },
                Op::Binary(_) => match arg_dt(0) {
                    DType::F32 => true,
                    DType::Bool => true,
                    DType::F64 | DType::I64 => false,
                },
                Op::Where | Op::StopGrad | Op::BroadcastTo(_) | Op::Transpose(_) => true,
                Op::Cast(_) => matches!(arg_dt(0), DType::F32 | DType::Bool),
                Op::Reshape(shape) => {
                    let nu = |s: &[Dim]| {
                        s.iter()
                            .filter(|d| !d.is_one())
                            .cloned()
                            .collect::<Vec<_>>()
                    };
                    nu(&g.ty(n.args[0]).shape) == nu(shape)
                }
                Op::OneHot(_) => ix.last() == Some(&Ix::Lane) && lanes.len() == 1,
                Op::ScatterAddAlong(a) => {
                    crate::schedule::unit_scatter(g, h, *a)
                        && ix[*a] == Ix::Lane
                        && lanes.len() == 1
                }
                _ => false,
            };
            if !ok {
                return false;
            }
            if matches!(n.op, Op::OneHot(_)) {
                // Its index does not vary along the lanes (checked above).
                continue;
            }
            for k in 0..n.args.len() {
                if matches!(n.op, Op::ScatterAddAlong(_)) && k > 0 {
                    continue;
                }
                stack.push((n.args[k], arg_index(g, h, k, &ix), false));
            }
        }
        true
    }

    fn vlookup(&self, h: Handle, idx: &[Value]) -> Option<Value> {
        let key = (h, idx.to_vec(), true);
        self.scopes.iter().rev().find_map(|m| m.get(&key).copied())
    }

    fn vremember(&mut self, h: Handle, idx: &[Value], v: Value) {
        self.scopes
            .last_mut()
            .expect("a scope is open")
            .insert((h, idx.to_vec(), true), v);
    }

    /// `h` at lanes `idx .. idx + 4` along the axis holding `lane`.
    fn vvalue(&mut self, h: Handle, idx: &[Value], lane: Value) -> Vv {
        let idx = self.canon(h, idx);
        if !idx.contains(&lane) {
            return Vv::S(self.value(h, &idx));
        }
        if let Some(v) = self.vlookup(h, &idx) {
            return Vv::V(v);
        }
        let v = match self.s.place[h.index()] {
            Place::Slot(sl) => {
                let a = self.slot_addr(sl, &idx);
                self.b
                    .ins()
                    .load(types::F32X4, MemFlagsData::new().with_notrap(), a, 0)
            }
            Place::Inline => self.vcompute(h, &idx, lane),
            Place::Dead => panic!("internal: {h} is used but not scheduled"),
        };
        self.vremember(h, &idx, v);
        Vv::V(v)
    }

    fn vbvalue(&mut self, a: Handle, idx: &[Value], lane: Value) -> Vv {
        let shape = &self.g.ty(a).shape;
        let lead = idx.len() - shape.len();
        let aidx: Vec<Value> = shape
            .iter()
            .enumerate()
            .map(|(j, d)| if d.is_one() { self.zero } else { idx[lead + j] })
            .collect();
        self.vvalue(a, &aidx, lane)
    }

    /// A float vector (a scalar is splat).
    fn fv(&mut self, v: Vv) -> Value {
        match v {
            Vv::V(x) => x,
            Vv::S(x) => self.b.ins().splat(types::F32X4, x),
        }
    }

    /// A lane mask (a bool scalar becomes all-ones or all-zeros lanes).
    fn mv(&mut self, v: Vv) -> Value {
        match v {
            Vv::V(x) => x,
            Vv::S(c) => {
                let w = self.b.ins().uextend(types::I32, c);
                let m = self.b.ins().ineg(w);
                self.b.ins().splat(types::I32X4, m)
            }
        }
    }

    fn fsel(&mut self, mask: Value, a: Value, b: Value) -> Value {
        let m = self
            .b
            .ins()
            .bitcast(types::F32X4, MemFlagsData::new(), mask);
        self.b.ins().bitselect(m, a, b)
    }

    fn vsplat(&mut self, x: f64) -> Value {
        let c = self.fconst(types::F32, x);
        self.b.ins().splat(types::F32X4, c)
    }

    /// Lane `j` holds `lane + j` (as i32), for comparisons with an index.
    fn lane_ids(&mut self, lane: Value) -> Value {
        let l = self.b.ins().ireduce(types::I32, lane);
        let mut v = self.b.ins().splat(types::I32X4, l);
        for j in 1..LANES {
            let e = self.b.ins().iadd_imm_s(l, j);
            v = self.b.ins().insertlane(v, e, j as u8);
        }
        v
    }

    /// Computes `h` for 4 lanes: the vector arm of `compute`, for the ops that
    /// `vectorizable` admits.
    fn vcompute(&mut self, h: Handle, idx: &[Value], lane: Value) -> Value {
        let g = self.g;
        let n = g.node(h);
        match &n.op {
            Op::Unary(u) => {
                let x = self.vvalue(n.args[0], idx, lane);
                match u {
                    UnaryOp::Not => {
                        let m = self.mv(x);
                        self.b.ins().bnot(m)
                    }
                    UnaryOp::IsFinite => {
                        let x = self.fv(x);
                        let a = self.b.ins().fabs(x);
                        let inf = self.vsplat(f64::INFINITY);
                        self.b.ins().fcmp(FloatCC::LessThan, a, inf)
                    }
                    u => {
                        let x = self.fv(x);
                        self.math_inline(*u, x)
                            .expect("`vectorizable` admits only inline math")
                    }
                }
            }
            Op::Binary(BinaryOp::Pow) => {
                let a = self.vbvalue(n.args[0], idx, lane);
                let a = self.fv(a);
                match self.small_power(n.args[1]) {
                    Some(k) => self.power(a, k, DType::F32),
                    None => {
                        let y = self.vbvalue(n.args[1], idx, lane);
                        let y = self.fv(y);
                        math::emit_pow_with(&mut self.b, a, y, self.target.math)
                            .expect("f32 lanes are supported")
                    }
                }
            }
            Op::Binary(op) => {
                let a = self.vbvalue(n.args[0], idx, lane);
                let b = self.vbvalue(n.args[1], idx, lane);
                if g.ty(n.args[0]).dtype == DType::Bool {
                    let (a, b) = (self.mv(a), self.mv(b));
                    return match op {
                        BinaryOp::And => self.b.ins().band(a, b),
                        BinaryOp::Or => self.b.ins().bor(a, b),
                        BinaryOp::Ne => self.b.ins().bxor(a, b),
                        BinaryOp::Eq => {
                            let x = self.b.ins().bxor(a, b);
                            self.b.ins().bnot(x)
                        }
                        _ => panic!("internal: `{}` on bool lanes", op.name()),
                    };
                }
                let (a, b) = (self.fv(a), self.fv(b));
                let cc = match op {
                    BinaryOp::Lt => Some(FloatCC::LessThan),
                    BinaryOp::Le => Some(FloatCC::LessThanOrEqual),
                    BinaryOp::Gt => Some(FloatCC::GreaterThan),
                    BinaryOp::Ge => Some(FloatCC::GreaterThanOrEqual),
                    BinaryOp::Eq => Some(FloatCC::Equal),
                    BinaryOp::Ne => Some(FloatCC::NotEqual),
                    _ => None,
                };
                if let Some(cc) = cc {
                    return self.b.ins().fcmp(cc, a, b);
                }
                match op {
                    BinaryOp::Add => self.b.ins().fadd(a, b),
                    BinaryOp::Sub => self.b.ins().fsub(a, b),
                    BinaryOp::Mul => self.b.ins().fmul(a, b),
                    BinaryOp::Div => self.b.ins().fdiv(a, b),
                    BinaryOp::FloorDiv => {
                        let q = self.b.ins().fdiv(a, b);
                        self.b.ins().floor(q)
                    }
                    BinaryOp::Maximum | BinaryOp::Minimum => {
                        let cc = if *op == BinaryOp::Maximum {
                            FloatCC::GreaterThanOrEqual
                        } else {
                            FloatCC::LessThanOrEqual
                        };
                        let first = self.b.ins().fcmp(cc, a, b);
                        let r = self.fsel(first, a, b);
                        let nan = self.b.ins().fcmp(FloatCC::Unordered, a, b);
                        let s = self.b.ins().fadd(a, b);
                        self.fsel(nan, s, r)
                    }
                    _ => panic!("internal: `{}` on f32 lanes", op.name()),
                }
            }
            Op::Where => {
                let c = self.vbvalue(n.args[0], idx, lane);
                let a = self.vbvalue(n.args[1], idx, lane);
                let b = self.vbvalue(n.args[2], idx, lane);
                let c = self.mv(c);
                if n.ty.dtype == DType::Bool {
                    let (a, b) = (self.mv(a), self.mv(b));
                    self.b.ins().bitselect(c, a, b)
                } else {
                    let (a, b) = (self.fv(a), self.fv(b));
                    self.fsel(c, a, b)
                }
            }
            Op::Cast(to) => {
                let x = self.vvalue(n.args[0], idx, lane);
                match (g.ty(n.args[0]).dtype, to) {
                    (DType::F32, DType::F32) => self.fv(x),
                    (DType::Bool, DType::Bool) => self.mv(x),
                    (DType::Bool, DType::F32) => {
                        let m = self.mv(x);
                        let one = self.vsplat(1.0);
                        let zero = self.vsplat(0.0);
                        self.fsel(m, one, zero)
                    }
                    (DType::F32, DType::Bool) => {
                        let x = self.fv(x);
                        let zero = self.vsplat(0.0);
                        self.b.ins().fcmp(FloatCC::NotEqual, x, zero)
                    }
                    (a, b) => panic!("internal: cast {a} -> {b} on lanes"),
                }
            }
            Op::StopGrad => {
                let x = self.vvalue(n.args[0], idx, lane);
                self.vec_of(x, n.ty.dtype)
            }
            Op::BroadcastTo(_) => {
                let x = self.vbvalue(n.args[0], idx, lane);
                self.vec_of(x, n.ty.dtype)
            }
            Op::Transpose(perm) => {
                let mut aidx = vec![self.zero; idx.len()];
                for (i, &p) in perm.iter().enumerate() {
                    aidx[p] = idx[i];
                }
                let x = self.vvalue(n.args[0], &aidx, lane);
                self.vec_of(x, n.ty.dtype)
            }
            Op::Reshape(shape) => {
                let a = n.args[0];
                let ash = g.ty(a).shape.clone();
                let mut it = shape
                    .iter()
                    .zip(idx)
                    .filter(|(d, _)| !d.is_one())
                    .map(|(_, i)| *i);
                let aidx: Vec<Value> = ash
                    .iter()
                    .map(|d| {
                        if d.is_one() {
                            self.zero
                        } else {
                            it.next().expect("as many non-unit axes")
                        }
                    })
                    .collect();
                let x = self.vvalue(a, &aidx, lane);
                self.vec_of(x, n.ty.dtype)
            }
            Op::OneHot(_) => {
                let r = idx.len();
                let v = self.value(n.args[0], &idx[..r - 1]);
                let v32 = self.b.ins().ireduce(types::I32, v);
                let vs = self.b.ins().splat(types::I32X4, v32);
                let ids = self.lane_ids(lane);
                let hit = self.b.ins().icmp(IntCC::Equal, vs, ids);
                let one = self.vsplat(1.0);
                let zero = self.vsplat(0.0);
                self.fsel(hit, one, zero)
            }
            Op::ScatterAddAlong(axis) => {
                let (base, ix, vals) = (n.args[0], n.args[1], n.args[2]);
                let b0 = self.vvalue(base, idx, lane);
                let b0 = self.fv(b0);
                let mut line = idx.to_vec();
                line[*axis] = self.zero;
                let k = self.value(ix, &line);
                let v = self.value(vals, &line);
                let k32 = self.b.ins().ireduce(types::I32, k);
                let ks = self.b.ins().splat(types::I32X4, k32);
                let ids = self.lane_ids(lane);
                let hit = self.b.ins().icmp(IntCC::Equal, ks, ids);
                let vs = self.b.ins().splat(types::F32X4, v);
                let sum = self.b.ins().fadd(b0, vs);
                self.fsel(hit, sum, b0)
            }
            _ => panic!("internal: {} {h} has no 4-lane form", n.op.name()),
        }
    }

    fn vec_of(&mut self, v: Vv, d: DType) -> Value {
        if d == DType::Bool {
            self.mv(v)
        } else {
            self.fv(v)
        }
    }

    /// Accumulates `x` over `axes` (every axis from `idx.len()` on is reduced
    /// or has size 1), from the index prefix `idx`; returns the unfinished
    /// accumulator. The innermost loop runs 4 lanes at a time when it can;
    /// each lane keeps its own accumulator and they combine in a fixed order.
    fn accumulate(&mut self, red: Red, x: Handle, mut idx: Vec<Value>, axes: &[usize]) -> Value {
        let g = self.g;
        let xs = g.ty(x).shape.clone();
        let from = idx.len();
        let acc_ty = red.acc_type(g.ty(x).dtype);
        let var = self.b.declare_var(acc_ty);
        let init = self.red_init(red, acc_ty);
        self.b.def_var(var, init);
        let loop_axes: Vec<usize> = (from..xs.len())
            .filter(|&a| axes.contains(&a) && !xs[a].is_one())
            .collect();
        let lane_axis = loop_axes.last().copied();
        let vector = lane_axis.is_some_and(|p| {
            let pat: Vec<Ix> = (0..xs.len())
                .map(|a| {
                    if a < from {
                        if a < idx.len() && self.outer_ix(a) {
                            Ix::Outer(a)
                        } else {
                            Ix::Other
                        }
                    } else if a == p {
                        Ix::Lane
                    } else if loop_axes.contains(&a) {
                        Ix::Other
                    } else {
                        Ix::Zero
                    }
                })
                .collect();
            g.ty(x).dtype == DType::F32 && self.vectorizable(vec![(x, pat, false)])
        });
        idx.resize(xs.len(), self.zero);
        // Lane accumulators start before every loop of the nest: they
        // accumulate across the enclosing loops too.
        // Max/min: one f32x4 of running extremes and one i32x4 of lanes that
        // saw a NaN. Sums: two f64x2 (the low and high lanes, widened).
        let mut lane_vars = vec![];
        if vector {
            let tys: &[Type] = if matches!(red, Red::Max | Red::Min) {
                &[types::F32X4, types::I32X4]
            } else {
                &[types::F64X2, types::F64X2]
            };
            for &lv_ty in tys {
                let lv = self.b.declare_var(lv_ty);
                let z = if lv_ty == types::F32X4 {
                    let s0 = self.red_init(red, types::F32);
                    self.b.ins().splat(types::F32X4, s0)
                } else if lv_ty == types::I32X4 {
                    let z = self.b.ins().iconst(types::I32, 0);
                    self.b.ins().splat(types::I32X4, z)
                } else {
                    let z = self.fconst(types::F64, 0.0);
                    self.b.ins().splat(types::F64X2, z)
                };
                self.b.def_var(lv, z);
                lane_vars.push(lv);
            }
        }
        let mut loops = vec![];
        // Every loop but the innermost (opened below, 4 lanes wide or not).
        for &a in &loop_axes[..loop_axes.len().saturating_sub(1)] {
            let end = self.dim(&xs[a]);
            let l = self.open(self.zero, end);
            idx[a] = l.index;
            loops.push(l);
        }
        if vector {
            let p = lane_axis.expect("vector");
            let len = self.dim(&xs[p]);
            let vend = self.b.ins().band_imm_s(len, -LANES);
            self.scopes.push(HashMap::new());
            let l = Loop::open_step(&mut self.b, self.zero, vend, LANES);
            idx[p] = l.index;
            let v = self.vvalue(x, &idx, l.index);
            let v = self.fv(v);
            match red {
                Red::Max | Red::Min => {
                    // `v > cur ? v : cur` is one `maxps` on x86 (`minps` for
                    // min); IEEE `fmax` takes seven instructions for NaN and
                    // ±0 rules. NaN is tracked on the side instead, and the
                    // sign of a zero extreme is not observable downstream
                    // (`x - max` is the same).
                    let cur = self.b.use_var(lane_vars[0]);
                    let better = if red == Red::Max {
                        self.b.ins().fcmp(FloatCC::LessThan, cur, v)
                    } else {
                        self.b.ins().fcmp(FloatCC::LessThan, v, cur)
                    };
                    let mf = self
                        .b
                        .ins()
                        .bitcast(types::F32X4, MemFlagsData::new(), better);
                    let nv = self.b.ins().bitselect(mf, v, cur);
                    self.b.def_var(lane_vars[0], nv);
                    let nan = self.b.ins().fcmp(FloatCC::Unordered, v, v);
                    let seen = self.b.use_var(lane_vars[1]);
                    let seen = self.b.ins().bor(seen, nan);
                    self.b.def_var(lane_vars[1], seen);
                }
                Red::Sum | Red::Norm => {
                    let halves = self.f32x4_halves_f64(v);
                    for (&lv, w) in lane_vars.iter().zip(halves) {
                        let w = if red == Red::Norm {
                            self.b.ins().fmul(w, w)
                        } else {
                            w
                        };
                        let cur = self.b.use_var(lv);
                        let nv = self.b.ins().fadd(cur, w);
                        self.b.def_var(lv, nv);
                    }
                }
            }
            l.close(&mut self.b);
            self.scopes.pop();
            // The last `len % 4` elements, one at a time.
            let t = self.open(vend, len);
            idx[p] = t.index;
            let v = self.value(x, &idx);
            let cur = self.b.use_var(var);
            let nv = self.red_combine(red, cur, v);
            self.b.def_var(var, nv);
            self.close(t);
        } else {
            if let Some(p) = lane_axis {
                let end = self.dim(&xs[p]);
                let l = self.open(self.zero, end);
                idx[p] = l.index;
                loops.push(l);
            }
            let v = self.value(x, &idx);
            let cur = self.b.use_var(var);
            let nv = self.red_combine(red, cur, v);
            self.b.def_var(var, nv);
        }
        self.close_nest(loops);
        let tail = self.b.use_var(var);
        if !vector {
            return tail;
        }
        match red {
            Red::Max | Red::Min => {
                let v = self.b.use_var(lane_vars[0]);
                let mut acc = tail;
                for j in 0..LANES {
                    let e = self.b.ins().extractlane(v, j as u8);
                    acc = self.red_combine(red, acc, e);
                }
                let seen = self.b.use_var(lane_vars[1]);
                let any = self.b.ins().vany_true(seen);
                let at = self.b.func.dfg.value_type(acc);
                let nan = self.fconst(at, f64::NAN);
                self.b.ins().select(any, nan, acc)
            }
            Red::Sum | Red::Norm => {
                let lo = self.b.use_var(lane_vars[0]);
                let hi = self.b.use_var(lane_vars[1]);
                let s = self.b.ins().fadd(lo, hi);
                let a = self.b.ins().extractlane(s, 0);
                let b = self.b.ins().extractlane(s, 1);
                let ab = self.b.ins().fadd(a, b);
                self.b.ins().fadd(ab, tail)
            }
        }
    }

    /// The lanes of an f32x4 widened to f64: lanes 0–1 and lanes 2–3.
    fn f32x4_halves_f64(&mut self, v: Value) -> [Value; 2] {
        let lo = self.b.ins().fvpromote_low(v);
        let le = MemFlagsData::new().with_endianness(cranelift_codegen::ir::Endianness::Little);
        let bytes = self.b.ins().bitcast(types::I8X16, le, v);
        let mask: Vec<u8> = (8..16).chain(8..16).collect();
        let imm = self.b.func.dfg.immediates.push(mask.as_slice().into());
        let up = self.b.ins().shuffle(bytes, bytes, imm);
        let up = self.b.ins().bitcast(types::F32X4, le, up);
        let hi = self.b.ins().fvpromote_low(up);
        [lo, hi]
    }

    /// Whether axis `a` of a stage's index is an outer (row) loop index.
    fn outer_ix(&self, a: usize) -> bool {
        a < self.outer_len
    }

    /// A map stage over `shape` with its innermost loop 4 lanes wide, when
    /// every node is f32 and everything it reads vectorises.
    fn emit_map_vector(&mut self, nodes: &[Handle], outer: &[Value]) -> bool {
        let g = self.g;
        let shape = g.ty(nodes[0]).shape.clone();
        let k = outer.len();
        let Some(p) = (k..shape.len()).rev().find(|&a| !shape[a].is_one()) else {
            return false;
        };
        if nodes.iter().any(|h| {
            self.s
                .slot_of(*h)
                .is_none_or(|sl| self.s.slots[sl].storage != Storage::F32)
        }) {
            return false;
        }
        let pat: Vec<Ix> = (0..shape.len())
            .map(|a| {
                if a < k {
                    Ix::Outer(a)
                } else if a == p {
                    Ix::Lane
                } else if shape[a].is_one() {
                    Ix::Zero
                } else {
                    Ix::Other
                }
            })
            .collect();
        if !self.vectorizable(nodes.iter().map(|&h| (h, pat.clone(), true)).collect()) {
            return false;
        }
        let mut idx = outer.to_vec();
        let loops = self.open_nest(&shape[..p], k, &mut idx);
        idx.resize(shape.len(), self.zero);
        let len = self.dim(&shape[p]);
        let vend = self.b.ins().band_imm_s(len, -LANES);
        self.scopes.push(HashMap::new());
        let l = Loop::open_step(&mut self.b, self.zero, vend, LANES);
        idx[p] = l.index;
        for &h in nodes {
            let v = self.vcompute(h, &idx, l.index);
            self.vremember(h, &idx, v);
            let sl = self.node_slot(h);
            let a = self.slot_addr(sl, &idx);
            self.b
                .ins()
                .store(MemFlagsData::new().with_notrap(), v, a, 0);
        }
        l.close(&mut self.b);
        self.scopes.pop();
        let t = self.open(vend, len);
        idx[p] = t.index;
        for &h in nodes {
            let v = self.compute(h, &idx);
            self.remember(h, &idx, v);
            let sl = self.node_slot(h);
            self.store(sl, &idx, v);
        }
        self.close(t);
        self.close_nest(loops);
        true
    }
}

/// A reduction's accumulation.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Red {
    Sum,
    Max,
    Min,
    /// Sum of squares, then the square root.
    Norm,
}

impl From<ReduceKind> for Red {
    fn from(k: ReduceKind) -> Red {
        match k {
            ReduceKind::Sum => Red::Sum,
            ReduceKind::Max => Red::Max,
            ReduceKind::Min => Red::Min,
        }
    }
}

impl Red {
    /// Float sums accumulate in f64; extremes in the value's own type.
    fn acc_type(self, x: DType) -> Type {
        match (self, x) {
            (_, DType::I64) => types::I64,
            (Red::Sum | Red::Norm, _) => types::F64,
            (Red::Max | Red::Min, d) => clif_type(d),
        }
    }
}
