//! Borrowed arrays: the caller's own memory, which the kernels read and write
//! in place. Going through `Tensor` (floats held as f64) costs two extra
//! passes over the data and an allocation per call, which is more than a
//! memory-bound loss spends on its arithmetic.

use crate::abi::Storage;
use losslang_compiler::value::{DType, Data, Tensor};

/// An array the kernels only read.
#[derive(Clone, Copy, Debug)]
pub enum ArrayRef<'a> {
    F32(&'a [f32]),
    F64(&'a [f64]),
    I64(&'a [i64]),
    Bool(&'a [bool]),
}

/// An array the kernels write (a gradient or a new state).
#[derive(Debug)]
pub enum ArrayMut<'a> {
    F32(&'a mut [f32]),
    F64(&'a mut [f64]),
    I64(&'a mut [i64]),
    Bool(&'a mut [bool]),
}

/// A read-only array with its shape (row-major, contiguous).
#[derive(Clone, Copy, Debug)]
pub struct View<'a> {
    pub data: ArrayRef<'a>,
    pub shape: &'a [usize],
}

impl<'a> View<'a> {
    pub fn new(data: ArrayRef<'a>, shape: &'a [usize]) -> View<'a> {
        View { data, shape }
    }
}

impl ArrayRef<'_> {
    pub fn storage(&self) -> Storage {
        match self {
            ArrayRef::F32(_) => Storage::F32,
            ArrayRef::F64(_) => Storage::F64,
            ArrayRef::I64(_) => Storage::I64,
            ArrayRef::Bool(_) => Storage::U8,
        }
    }

    pub fn dtype(&self) -> DType {
        match self {
            ArrayRef::F32(_) => DType::F32,
            ArrayRef::F64(_) => DType::F64,
            ArrayRef::I64(_) => DType::I64,
            ArrayRef::Bool(_) => DType::Bool,
        }
    }

    pub fn len(&self) -> usize {
        match self {
            ArrayRef::F32(v) => v.len(),
            ArrayRef::F64(v) => v.len(),
            ArrayRef::I64(v) => v.len(),
            ArrayRef::Bool(v) => v.len(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Generated code reads bools as bytes holding 0 or 1, which is what a
    /// Rust `bool` is.
    pub(crate) fn as_ptr(&self) -> *const u8 {
        match self {
            ArrayRef::F32(v) => v.as_ptr().cast(),
            ArrayRef::F64(v) => v.as_ptr().cast(),
            ArrayRef::I64(v) => v.as_ptr().cast(),
            ArrayRef::Bool(v) => v.as_ptr().cast(),
        }
    }
}

impl ArrayMut<'_> {
    /// The same array, borrowed for a shorter time.
    pub fn reborrow(&mut self) -> ArrayMut<'_> {
        match self {
            ArrayMut::F32(v) => ArrayMut::F32(v),
            ArrayMut::F64(v) => ArrayMut::F64(v),
            ArrayMut::I64(v) => ArrayMut::I64(v),
            ArrayMut::Bool(v) => ArrayMut::Bool(v),
        }
    }

    /// Copies `src` in; false when the dtypes or lengths differ.
    pub fn copy_from(&mut self, src: &ArrayRef) -> bool {
        match (self, src) {
            (ArrayMut::F32(d), ArrayRef::F32(s)) if d.len() == s.len() => d.copy_from_slice(s),
            (ArrayMut::F64(d), ArrayRef::F64(s)) if d.len() == s.len() => d.copy_from_slice(s),
            (ArrayMut::I64(d), ArrayRef::I64(s)) if d.len() == s.len() => d.copy_from_slice(s),
            (ArrayMut::Bool(d), ArrayRef::Bool(s)) if d.len() == s.len() => d.copy_from_slice(s),
            _ => return false,
        }
        true
    }

    /// Copies a tensor in, rounding floats to the array's precision; false
    /// when the kinds or lengths differ.
    pub fn copy_from_tensor(&mut self, t: &Tensor) -> bool {
        match (self, &t.data) {
            (ArrayMut::F32(d), Data::F(s)) if d.len() == s.len() => {
                d.iter_mut().zip(s).for_each(|(d, s)| *d = *s as f32);
            }
            (ArrayMut::F64(d), Data::F(s)) if d.len() == s.len() => d.copy_from_slice(s),
            (ArrayMut::I64(d), Data::I(s)) if d.len() == s.len() => d.copy_from_slice(s),
            (ArrayMut::Bool(d), Data::B(s)) if d.len() == s.len() => d.copy_from_slice(s),
            _ => return false,
        }
        true
    }

    pub fn storage(&self) -> Storage {
        match self {
            ArrayMut::F32(_) => Storage::F32,
            ArrayMut::F64(_) => Storage::F64,
            ArrayMut::I64(_) => Storage::I64,
            ArrayMut::Bool(_) => Storage::U8,
        }
    }

    pub fn len(&self) -> usize {
        match self {
            ArrayMut::F32(v) => v.len(),
            ArrayMut::F64(v) => v.len(),
            ArrayMut::I64(v) => v.len(),
            ArrayMut::Bool(v) => v.len(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Generated code only ever stores 0 or 1 into a bool slot, so writing
    /// through this pointer keeps every `bool` valid.
    pub(crate) fn as_mut_ptr(&mut self) -> *mut u8 {
        match self {
            ArrayMut::F32(v) => v.as_mut_ptr().cast(),
            ArrayMut::F64(v) => v.as_mut_ptr().cast(),
            ArrayMut::I64(v) => v.as_mut_ptr().cast(),
            ArrayMut::Bool(v) => v.as_mut_ptr().cast(),
        }
    }
}

/// An owned array: what a caller that holds no buffers of its own (a test,
/// the command line) passes through the borrowed API.
#[derive(Clone, Debug, PartialEq)]
pub enum Array {
    F32(Vec<f32>),
    F64(Vec<f64>),
    I64(Vec<i64>),
    Bool(Vec<bool>),
}

impl Array {
    /// The tensor's values in its dtype's native precision.
    pub fn from_tensor(t: &Tensor) -> Array {
        match (&t.data, t.dtype) {
            (Data::F(v), DType::F32) => Array::F32(v.iter().map(|&x| x as f32).collect()),
            (Data::F(v), _) => Array::F64(v.clone()),
            (Data::I(v), _) => Array::I64(v.clone()),
            (Data::B(v), _) => Array::Bool(v.clone()),
        }
    }

    /// Zeros of `dtype`.
    pub fn zeros(dtype: DType, len: usize) -> Array {
        match dtype {
            DType::F32 => Array::F32(vec![0.0; len]),
            DType::F64 => Array::F64(vec![0.0; len]),
            DType::I64 => Array::I64(vec![0; len]),
            DType::Bool => Array::Bool(vec![false; len]),
        }
    }

    pub fn as_ref(&self) -> ArrayRef<'_> {
        match self {
            Array::F32(v) => ArrayRef::F32(v),
            Array::F64(v) => ArrayRef::F64(v),
            Array::I64(v) => ArrayRef::I64(v),
            Array::Bool(v) => ArrayRef::Bool(v),
        }
    }

    pub fn as_mut(&mut self) -> ArrayMut<'_> {
        match self {
            Array::F32(v) => ArrayMut::F32(v),
            Array::F64(v) => ArrayMut::F64(v),
            Array::I64(v) => ArrayMut::I64(v),
            Array::Bool(v) => ArrayMut::Bool(v),
        }
    }

    pub fn to_tensor(&self, shape: Vec<usize>) -> Tensor {
        let (dtype, data) = match self {
            Array::F32(v) => (
                DType::F32,
                Data::F(v.iter().map(|&x| f64::from(x)).collect()),
            ),
            Array::F64(v) => (DType::F64, Data::F(v.clone())),
            Array::I64(v) => (DType::I64, Data::I(v.clone())),
            Array::Bool(v) => (DType::Bool, Data::B(v.clone())),
        };
        Tensor { dtype, shape, data }
    }
}
