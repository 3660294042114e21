//! One sample application of every primitive, with argument types and the
//! data domain each argument needs. The gradient and parity tests are
//! generated from this list; `kind_index` is an exhaustive match, so a new
//! `Op` variant does not compile until it has a sample here.

use super::{BinaryOp, Op, RandKind, ReduceKind, Scalar, UnaryOp};
use crate::dim::Dim;
use crate::ir::Ty;
use crate::value::DType;

/// What data an argument needs.
#[derive(Clone, Debug)]
pub enum Domain {
    /// Floats uniform in [lo, hi] (differentiated).
    Float(f64, f64),
    /// Indices in [lo, hi).
    Index(i64, i64),
    /// Distinct indices in [0, hi).
    Unique(i64),
    Bool,
    /// A fixed i64 scalar.
    Int(i64),
}

#[derive(Clone, Debug)]
pub struct Arg {
    pub ty: Ty,
    pub domain: Domain,
}

#[derive(Clone, Debug)]
pub struct Sample {
    pub op: Op,
    pub args: Vec<Arg>,
}

fn f(shape: &[i64]) -> Ty {
    Ty::new(DType::F64, shape.iter().map(|&d| Dim::lit(d)).collect())
}

fn fa(shape: &[i64], lo: f64, hi: f64) -> Arg {
    Arg {
        ty: f(shape),
        domain: Domain::Float(lo, hi),
    }
}

fn ia(shape: &[i64], lo: i64, hi: i64) -> Arg {
    Arg {
        ty: Ty::new(DType::I64, shape.iter().map(|&d| Dim::lit(d)).collect()),
        domain: Domain::Index(lo, hi),
    }
}

fn shp(s: &[i64]) -> Vec<Dim> {
    s.iter().map(|&d| Dim::lit(d)).collect()
}

/// The position of an op's kind in `samples()` (exhaustive on purpose).
pub fn kind_index(op: &Op) -> &'static str {
    match op {
        Op::Input(_) => "input",
        Op::Param(_) => "param",
        Op::State(_) => "state",
        Op::Const(..) => "const",
        Op::DimSize(_) => "dim",
        Op::Fill(..) => "fill",
        Op::Iota(_) => "iota",
        Op::Rand(..) => "rand",
        Op::Unary(_) => "unary",
        Op::Binary(_) => "binary",
        Op::Where => "where",
        Op::Cast(_) => "cast",
        Op::StopGrad => "stop_grad",
        Op::Reduce { .. } => "reduce",
        Op::ArgMax(_) => "argmax",
        Op::ArgMin(_) => "argmin",
        Op::Norm { .. } => "norm",
        Op::Reshape(_) => "reshape",
        Op::BroadcastTo(_) => "broadcast_to",
        Op::Transpose(_) => "transpose",
        Op::Slice { .. } => "slice",
        Op::Pad { .. } => "pad",
        Op::Reverse(_) => "reverse",
        Op::Concat(_) => "concat",
        Op::TakeAlong(_) => "take_along",
        Op::ScatterAddAlong(_) => "scatter_add_along",
        Op::IndexSelect(_) => "index_select",
        Op::IndexAdd(_) => "index_add",
        Op::ScatterSet(_) => "scatter",
        Op::OneHot(_) => "one_hot",
        Op::MatMul => "matmul",
        Op::Argsort { .. } => "argsort",
        Op::Cumsum { .. } => "cumsum",
        Op::LogCumSumExp { .. } => "logcumsumexp",
        Op::SearchSorted { .. } => "searchsorted",
    }
}

/// Every primitive with sample arguments (sources are listed but take no data to differentiate).
pub fn samples() -> Vec<Sample> {
    let mut v = vec![];
    let s = |op: Op, args: Vec<Arg>| Sample { op, args };
    for u in UnaryOp::ALL {
        let dom = match u {
            UnaryOp::Log | UnaryOp::Sqrt | UnaryOp::Rsqrt => fa(&[3, 4], 0.2, 3.0),
            UnaryOp::Log1p => fa(&[3, 4], -0.5, 3.0),
            UnaryOp::Atanh => fa(&[3, 4], -0.8, 0.8),
            UnaryOp::Not => Arg {
                ty: Ty::new(DType::Bool, shp(&[3, 4])),
                domain: Domain::Bool,
            },
            _ => fa(&[3, 4], -2.0, 2.0),
        };
        v.push(s(Op::Unary(u), vec![dom]));
    }
    for b in BinaryOp::ALL {
        let args = match b {
            BinaryOp::Pow => vec![fa(&[3, 4], 0.3, 2.0), fa(&[4], -1.5, 1.5)],
            BinaryOp::Div => vec![fa(&[3, 1], -2.0, 2.0), fa(&[3, 4], 0.5, 2.0)],
            BinaryOp::And | BinaryOp::Or => vec![
                Arg {
                    ty: Ty::new(DType::Bool, shp(&[3, 4])),
                    domain: Domain::Bool,
                },
                Arg {
                    ty: Ty::new(DType::Bool, shp(&[4])),
                    domain: Domain::Bool,
                },
            ],
            _ => vec![fa(&[3, 4], -2.0, 2.0), fa(&[1, 4], -2.0, 2.0)],
        };
        v.push(s(Op::Binary(b), args));
    }
    let boolarg = Arg {
        ty: Ty::new(DType::Bool, shp(&[3, 4])),
        domain: Domain::Bool,
    };
    v.push(s(
        Op::Where,
        vec![boolarg, fa(&[3, 4], -2.0, 2.0), fa(&[4], -2.0, 2.0)],
    ));
    // f32 → f64: the gradient of a widening cast is the identity.
    v.push(s(
        Op::Cast(DType::F64),
        vec![Arg {
            ty: Ty::new(DType::F32, shp(&[3, 4])),
            domain: Domain::Float(-2.0, 2.0),
        }],
    ));
    v.push(s(Op::StopGrad, vec![fa(&[3, 4], -2.0, 2.0)]));
    for kind in [ReduceKind::Sum, ReduceKind::Max, ReduceKind::Min] {
        let axes = if kind == ReduceKind::Sum {
            vec![0, 2]
        } else {
            vec![1]
        };
        v.push(s(
            Op::Reduce {
                kind,
                axes: axes.clone(),
                keepdims: false,
            },
            vec![fa(&[2, 3, 4], -2.0, 2.0)],
        ));
        v.push(s(
            Op::Reduce {
                kind,
                axes,
                keepdims: true,
            },
            vec![fa(&[2, 3, 4], -2.0, 2.0)],
        ));
    }
    v.push(s(Op::ArgMax(1), vec![fa(&[3, 4], -2.0, 2.0)]));
    v.push(s(Op::ArgMin(0), vec![fa(&[3, 4], -2.0, 2.0)]));
    v.push(s(
        Op::Norm {
            axes: vec![1],
            keepdims: true,
        },
        vec![fa(&[3, 4], -2.0, 2.0)],
    ));
    v.push(s(
        Op::Norm {
            axes: vec![0, 1],
            keepdims: false,
        },
        vec![fa(&[3, 4], -2.0, 2.0)],
    ));
    v.push(s(
        Op::Reshape(shp(&[3, 1, 4])),
        vec![fa(&[3, 4], -2.0, 2.0)],
    ));
    v.push(s(
        Op::BroadcastTo(shp(&[2, 3, 4])),
        vec![fa(&[3, 1], -2.0, 2.0)],
    ));
    v.push(s(
        Op::Transpose(vec![2, 0, 1]),
        vec![fa(&[2, 3, 4], -2.0, 2.0)],
    ));
    v.push(s(
        Op::Slice {
            axis: 1,
            start: Dim::lit(1),
            len: Dim::lit(2),
            step: 2,
        },
        vec![fa(&[3, 5], -2.0, 2.0)],
    ));
    v.push(s(
        Op::Pad {
            axis: 0,
            start: Dim::lit(1),
            full: Dim::lit(6),
            step: 2,
        },
        vec![fa(&[2, 3], -2.0, 2.0)],
    ));
    v.push(s(Op::Reverse(1), vec![fa(&[3, 4], -2.0, 2.0)]));
    v.push(s(
        Op::Concat(1),
        vec![fa(&[3, 2], -2.0, 2.0), fa(&[3, 4], -2.0, 2.0)],
    ));
    v.push(s(
        Op::TakeAlong(1),
        vec![fa(&[3, 4], -2.0, 2.0), ia(&[3, 5], 0, 4)],
    ));
    v.push(s(
        Op::ScatterAddAlong(1),
        vec![
            fa(&[3, 4], -2.0, 2.0),
            ia(&[3, 5], 0, 4),
            fa(&[3, 5], -2.0, 2.0),
        ],
    ));
    v.push(s(
        Op::IndexSelect(0),
        vec![fa(&[4, 3], -2.0, 2.0), ia(&[2, 3], 0, 4)],
    ));
    v.push(s(
        Op::IndexAdd(0),
        vec![
            fa(&[4, 3], -2.0, 2.0),
            ia(&[5], 0, 4),
            fa(&[5, 3], -2.0, 2.0),
        ],
    ));
    v.push(s(
        Op::ScatterSet(0),
        vec![
            fa(&[6, 2], -2.0, 2.0),
            Arg {
                ty: Ty::new(DType::I64, shp(&[4])),
                domain: Domain::Unique(6),
            },
            fa(&[4, 2], -2.0, 2.0),
        ],
    ));
    v.push(s(Op::OneHot(Dim::lit(4)), vec![ia(&[5], -1, 4)]));
    v.push(s(
        Op::MatMul,
        vec![fa(&[3, 4], -2.0, 2.0), fa(&[4, 2], -2.0, 2.0)],
    ));
    v.push(s(
        Op::Argsort {
            axis: 1,
            descending: true,
        },
        vec![fa(&[3, 5], -2.0, 2.0)],
    ));
    v.push(s(
        Op::Cumsum {
            axis: 1,
            reverse: false,
        },
        vec![fa(&[3, 4], -2.0, 2.0)],
    ));
    v.push(s(
        Op::Cumsum {
            axis: 0,
            reverse: true,
        },
        vec![fa(&[3, 4], -2.0, 2.0)],
    ));
    v.push(s(
        Op::LogCumSumExp {
            axis: 1,
            reverse: false,
        },
        vec![fa(&[3, 5], -3.0, 3.0)],
    ));
    v.push(s(
        Op::LogCumSumExp {
            axis: 0,
            reverse: true,
        },
        vec![fa(&[4, 2], -3.0, 3.0)],
    ));
    v.push(s(
        Op::SearchSorted { right: false },
        vec![fa(&[6], -2.0, 2.0), fa(&[2, 3], -2.0, 2.0)],
    ));
    v.push(s(
        Op::SearchSorted { right: true },
        vec![fa(&[6], -2.0, 2.0), fa(&[4], -2.0, 2.0)],
    ));
    // Sources: no data to differentiate, but each kind has a sample so none is forgotten.
    v.push(s(Op::Const(Scalar::F(1.5), DType::F64), vec![]));
    v.push(s(Op::DimSize(Dim::lit(3)), vec![]));
    v.push(s(
        Op::Fill(Scalar::F(0.5), DType::F64, shp(&[2, 2])),
        vec![],
    ));
    v.push(s(Op::Iota(Dim::lit(4)), vec![]));
    let int = |k| Arg {
        ty: Ty::scalar(DType::I64),
        domain: Domain::Int(k),
    };
    v.push(s(
        Op::Rand(RandKind::Normal, shp(&[3])),
        vec![int(7), int(3)],
    ));
    v.push(s(
        Op::Rand(RandKind::Uniform, shp(&[3])),
        vec![int(7), int(3)],
    ));
    v.push(s(Op::Input(0), vec![]));
    v.push(s(Op::Param(0), vec![]));
    v.push(s(Op::State(0), vec![]));
    v
}

/// A small deterministic generator for sample data (an LCG: reproducible everywhere).
pub struct SampleRng(pub u64);

impl SampleRng {
    /// Uniform in [0, 1).
    pub fn uniform(&mut self) -> f64 {
        self.0 = self
            .0
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        (self.0 >> 11) as f64 / (1u64 << 53) as f64
    }
}

/// Data of type `ty` drawn from `domain` (floats of an f32 argument are f32 numbers),
/// shared by every test generated from the catalog.
pub fn sample_data(ty: &Ty, domain: &Domain, rng: &mut SampleRng) -> crate::value::Tensor {
    use crate::value::Tensor;
    let shape: Vec<usize> = ty
        .shape
        .iter()
        .map(|d| d.as_const().expect("samples use fixed sizes") as usize)
        .collect();
    let n: usize = shape.iter().product();
    match domain {
        Domain::Float(lo, hi) => {
            let round = |x: f64| {
                if ty.dtype == DType::F32 {
                    f64::from(x as f32)
                } else {
                    x
                }
            };
            Tensor::from_f64(
                ty.dtype,
                shape,
                (0..n)
                    .map(|_| round(lo + (hi - lo) * rng.uniform()))
                    .collect(),
            )
        }
        Domain::Index(lo, hi) => Tensor::from_i64(
            shape,
            (0..n)
                .map(|_| lo + ((hi - lo) as f64 * rng.uniform()) as i64)
                .collect(),
        ),
        Domain::Unique(hi) => {
            let mut pool: Vec<i64> = (0..*hi).collect();
            for i in 0..n {
                let j = i + ((pool.len() - i) as f64 * rng.uniform()) as usize;
                pool.swap(i, j);
            }
            Tensor::from_i64(shape, pool[..n].to_vec())
        }
        Domain::Bool => Tensor::from_bool(shape, (0..n).map(|_| rng.uniform() < 0.5).collect()),
        Domain::Int(k) => Tensor::from_i64(shape, vec![*k; n.max(1)]),
    }
}
