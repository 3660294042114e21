//! Small helpers shared by the reference kernels: strides, broadcasting
//! iteration and run-time errors. Clarity over speed: this is the oracle.

use crate::value::{DType, Data, Tensor};

/// A failure while evaluating one node on concrete data.
#[derive(Clone, Debug, PartialEq)]
pub enum EvalError {
    /// A data-dependent index is out of range: `value` at `position` of the
    /// index argument, for an axis of `size`.
    Index {
        value: i64,
        size: usize,
        position: Vec<usize>,
    },
    /// The same id twice in a scatter that needs unique ids.
    Duplicate { value: i64, position: Vec<usize> },
    /// Shapes that the checker could not prove and that do not hold at run time.
    Shape(String),
    /// Anything else with a message (empty argmax, a dim that cannot be evaluated…).
    Other(String),
}

pub type EvalResult = Result<Tensor, EvalError>;

pub fn strides(shape: &[usize]) -> Vec<usize> {
    let mut s = vec![1; shape.len()];
    for i in (0..shape.len().saturating_sub(1)).rev() {
        s[i] = s[i + 1] * shape[i + 1];
    }
    s
}

/// Strides of `shape` read as if it had `out` shape (0 on broadcast axes).
pub fn broadcast_strides(shape: &[usize], out: &[usize]) -> Vec<usize> {
    let st = strides(shape);
    let lead = out.len() - shape.len();
    (0..out.len())
        .map(|i| {
            if i < lead || shape[i - lead] == 1 && out[i] != 1 {
                0
            } else {
                st[i - lead]
            }
        })
        .collect()
}

/// NumPy broadcast of concrete shapes.
pub fn broadcast(shapes: &[&[usize]]) -> Result<Vec<usize>, EvalError> {
    let r = shapes.iter().map(|s| s.len()).max().unwrap_or(0);
    let mut out = vec![1usize; r];
    for s in shapes {
        let lead = r - s.len();
        for (i, &d) in s.iter().enumerate() {
            let o = &mut out[lead + i];
            if *o == 1 {
                *o = d;
            } else if d != 1 && d != *o {
                return Err(EvalError::Shape(format!(
                    "sizes {d} and {o} do not broadcast (axis {})",
                    lead + i
                )));
            }
        }
    }
    Ok(out)
}

/// For each flat output index, the flat index into each argument.
pub fn broadcast_offsets(arg_shapes: &[&[usize]], out: &[usize]) -> Vec<Vec<usize>> {
    let n: usize = out.iter().product();
    let strides: Vec<Vec<usize>> = arg_shapes
        .iter()
        .map(|s| broadcast_strides(s, out))
        .collect();
    let mut res = vec![Vec::with_capacity(n); arg_shapes.len()];
    let mut idx = vec![0usize; out.len()];
    for _ in 0..n {
        for (a, st) in strides.iter().enumerate() {
            res[a].push(idx.iter().zip(st).map(|(i, s)| i * s).sum());
        }
        for d in (0..out.len()).rev() {
            idx[d] += 1;
            if idx[d] < out[d] {
                break;
            }
            idx[d] = 0;
        }
    }
    res
}

/// Multi-index of a flat index.
pub fn unravel(mut flat: usize, shape: &[usize]) -> Vec<usize> {
    let mut out = vec![0; shape.len()];
    for i in (0..shape.len()).rev() {
        if shape[i] > 0 {
            out[i] = flat % shape[i];
            flat /= shape[i];
        }
    }
    out
}

/// Splits a shape around `axis` into (outer, len, inner) for axis loops.
pub fn split_axis(shape: &[usize], axis: usize) -> (usize, usize, usize) {
    let outer = shape[..axis].iter().product();
    let inner = shape[axis + 1..].iter().product();
    (outer, shape[axis], inner)
}

pub fn floats(t: &Tensor) -> &[f64] {
    match &t.data {
        Data::F(v) => v,
        _ => panic!("internal: expected a float tensor, got {}", t.dtype),
    }
}

pub fn ints(t: &Tensor) -> &[i64] {
    match &t.data {
        Data::I(v) => v,
        _ => panic!("internal: expected an i64 tensor, got {}", t.dtype),
    }
}

pub fn bools(t: &Tensor) -> &[bool] {
    match &t.data {
        Data::B(v) => v,
        _ => panic!("internal: expected a bool tensor, got {}", t.dtype),
    }
}

/// Reads element `i` as a generic value (used by layout kernels that move data).
#[derive(Clone, Copy, Debug)]
pub enum Elem {
    F(f64),
    I(i64),
    B(bool),
}

pub fn get(t: &Tensor, i: usize) -> Elem {
    match &t.data {
        Data::F(v) => Elem::F(v[i]),
        Data::I(v) => Elem::I(v[i]),
        Data::B(v) => Elem::B(v[i]),
    }
}

/// Builds a tensor of `dtype` and `shape` by gathering `src` at `map[i]`
/// (`None` = the zero of the dtype).
pub fn gather_from(src: &Tensor, shape: Vec<usize>, map: &[Option<usize>]) -> Tensor {
    let data = match &src.data {
        Data::F(v) => Data::F(map.iter().map(|m| m.map_or(0.0, |i| v[i])).collect()),
        Data::I(v) => Data::I(map.iter().map(|m| m.map_or(0, |i| v[i])).collect()),
        Data::B(v) => Data::B(map.iter().map(|m| m.is_some_and(|i| v[i])).collect()),
    };
    Tensor {
        dtype: src.dtype,
        shape,
        data,
    }
}

pub fn zeros(dtype: DType, shape: Vec<usize>) -> Tensor {
    let n = shape.iter().product();
    let data = match dtype {
        DType::F32 | DType::F64 => Data::F(vec![0.0; n]),
        DType::I64 => Data::I(vec![0; n]),
        DType::Bool => Data::B(vec![false; n]),
    };
    Tensor { dtype, shape, data }
}

/// Checks an index against an axis of `size`; `pos` is its flat position in the index tensor.
pub fn check_index(
    v: i64,
    size: usize,
    pos: usize,
    idx_shape: &[usize],
) -> Result<usize, EvalError> {
    if v >= 0 && (v as u64) < size as u64 {
        Ok(v as usize)
    } else {
        Err(EvalError::Index {
            value: v,
            size,
            position: unravel(pos, idx_shape),
        })
    }
}
