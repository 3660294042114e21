//! Run-time values: dense row-major tensors. Floats are held as f64 whatever
//! their declared dtype, because the interpreter is the oracle of the math
//! (the conformance references are f64), not of f32 rounding.

use std::fmt;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum DType {
    F32,
    F64,
    I64,
    Bool,
}

impl DType {
    pub fn name(self) -> &'static str {
        match self {
            DType::F32 => "f32",
            DType::F64 => "f64",
            DType::I64 => "i64",
            DType::Bool => "bool",
        }
    }

    pub fn from_name(s: &str) -> Option<DType> {
        match s {
            "f32" => Some(DType::F32),
            "f64" => Some(DType::F64),
            "i64" => Some(DType::I64),
            "bool" => Some(DType::Bool),
            _ => None,
        }
    }

    pub fn is_float(self) -> bool {
        matches!(self, DType::F32 | DType::F64)
    }
}

impl fmt::Display for DType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

#[derive(Clone, Debug, PartialEq)]
pub enum Data {
    F(Vec<f64>),
    I(Vec<i64>),
    B(Vec<bool>),
}

/// A dense row-major tensor. `shape` is empty for a scalar.
#[derive(Clone, Debug, PartialEq)]
pub struct Tensor {
    pub dtype: DType,
    pub shape: Vec<usize>,
    pub data: Data,
}

impl Tensor {
    pub fn numel(shape: &[usize]) -> usize {
        shape.iter().product()
    }

    pub fn len(&self) -> usize {
        Tensor::numel(&self.shape)
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub fn from_f64(dtype: DType, shape: Vec<usize>, v: Vec<f64>) -> Tensor {
        debug_assert_eq!(Tensor::numel(&shape), v.len());
        Tensor {
            dtype,
            shape,
            data: Data::F(v),
        }
    }

    pub fn from_i64(shape: Vec<usize>, v: Vec<i64>) -> Tensor {
        debug_assert_eq!(Tensor::numel(&shape), v.len());
        Tensor {
            dtype: DType::I64,
            shape,
            data: Data::I(v),
        }
    }

    pub fn from_bool(shape: Vec<usize>, v: Vec<bool>) -> Tensor {
        debug_assert_eq!(Tensor::numel(&shape), v.len());
        Tensor {
            dtype: DType::Bool,
            shape,
            data: Data::B(v),
        }
    }

    pub fn scalar_f(dtype: DType, v: f64) -> Tensor {
        Tensor::from_f64(dtype, vec![], vec![v])
    }

    /// Every element as f64 (ints and bools converted).
    pub fn to_f64_vec(&self) -> Vec<f64> {
        match &self.data {
            Data::F(v) => v.clone(),
            Data::I(v) => v.iter().map(|&x| x as f64).collect(),
            Data::B(v) => v.iter().map(|&x| if x { 1.0 } else { 0.0 }).collect(),
        }
    }

    /// The single element of a scalar (or one-element) tensor, as f64.
    pub fn scalar_f64(&self) -> Option<f64> {
        if self.len() != 1 {
            return None;
        }
        Some(match &self.data {
            Data::F(v) => v[0],
            Data::I(v) => v[0] as f64,
            Data::B(v) => f64::from(u8::from(v[0])),
        })
    }

    pub fn scalar_i64(&self) -> Option<i64> {
        if self.len() != 1 {
            return None;
        }
        Some(match &self.data {
            Data::F(v) => v[0] as i64,
            Data::I(v) => v[0],
            Data::B(v) => i64::from(v[0]),
        })
    }
}
