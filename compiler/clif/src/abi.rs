//! The buffer ABI between the Rust driver and generated code.
//!
//! Every generated kernel is `extern "C" fn(ctx: *const Ctx, lo: i64, hi: i64)`:
//! `ctx` points at one table of buffer pointers (one per slot of the schedule:
//! inputs, params, state, materialised nodes and scratch, in that order), one
//! table of resolved dims (i64, one per dim slot), and the fault state; `lo..hi`
//! is the range of the kernel's outermost loop that this call runs (the whole
//! range, or one thread's share of it).
//!
//! Generated code never reads out of bounds: buffer sizes are computed from the
//! same resolved dims the kernels loop over, and every index that comes from
//! data is range-checked. A bad index is recorded with `rt_fault` and replaced
//! by a harmless value, so the kernel runs to its end; the driver turns the
//! recorded fault into the interpreter's `NodeError`.

use losslang_compiler::ir::Handle;
use losslang_compiler::ir::eval::NodeError;
use losslang_compiler::kernels::{EvalError, unravel};
use std::sync::Mutex;

/// What generated code receives. The field offsets are part of the ABI
/// (`CTX_BUFS`, `CTX_DIMS`, `CTX_FAULTS` in pointer-sized words).
#[repr(C)]
pub struct Ctx {
    pub bufs: *const *mut u8,
    pub dims: *const i64,
    pub faults: *const Faults,
}

pub const CTX_BUFS: i32 = 0;
pub const CTX_DIMS: i32 = 1;
pub const CTX_FAULTS: i32 = 2;

/// The signature of every kernel.
pub type KernelFn = unsafe extern "C" fn(ctx: *const Ctx, lo: i64, hi: i64);

/// Kinds of fault, as passed by generated code to `rt_fault`.
pub const FAULT_INDEX: i64 = 1;
pub const FAULT_DUPLICATE: i64 = 2;
pub const FAULT_DIV_ZERO: i64 = 3;

/// One recorded data-dependent failure.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Fault {
    pub kind: i64,
    pub node: u32,
    pub value: i64,
    /// Flat position in the node's index argument.
    pub pos: i64,
    pub size: i64,
}

/// The first fault in the interpreter's order: the lowest node (nodes are in
/// topological order, so that is the one the interpreter stops at) and, within
/// a node, the lowest flat position (the interpreter checks indices in order).
/// Kernels may run on several threads, hence the mutex; it is only touched on
/// the failure path.
#[derive(Default)]
pub struct Faults {
    first: Mutex<Option<Fault>>,
}

impl Faults {
    pub fn record(&self, f: Fault) {
        let mut g = self.first.lock().unwrap_or_else(|p| p.into_inner());
        let better = match *g {
            None => true,
            Some(old) => (f.node, f.pos) < (old.node, old.pos),
        };
        if better {
            *g = Some(f);
        }
    }

    pub fn first(&self) -> Option<Fault> {
        *self.first.lock().unwrap_or_else(|p| p.into_inner())
    }
}

impl Fault {
    /// The interpreter's error for this fault; `idx_shape` is the resolved
    /// shape of the node's index argument (to unravel the flat position).
    pub fn to_node_error(self, idx_shape: &[usize]) -> NodeError {
        let position = unravel(self.pos.max(0) as usize, idx_shape);
        let error = match self.kind {
            FAULT_INDEX => EvalError::Index {
                value: self.value,
                size: self.size.max(0) as usize,
                position,
            },
            FAULT_DUPLICATE => EvalError::Duplicate {
                value: self.value,
                position,
            },
            _ => EvalError::Other("integer division by zero".into()),
        };
        NodeError {
            node: Handle(self.node),
            error,
        }
    }
}

/// How a slot's elements are stored.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Storage {
    F32,
    F64,
    I64,
    /// bool, one byte (0 or 1).
    U8,
}

impl Storage {
    pub fn bytes(self) -> usize {
        match self {
            Storage::F32 => 4,
            Storage::F64 | Storage::I64 => 8,
            Storage::U8 => 1,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Storage::F32 => "f32",
            Storage::F64 => "f64",
            Storage::I64 => "i64",
            Storage::U8 => "u8",
        }
    }
}

/// Alignment of every slot in the arena: a cache line, so that vector loads
/// are aligned and threads writing neighbouring slots do not share lines.
pub const SLOT_ALIGN: usize = 64;
