//! Sources: inputs, params, state, constants, dim sizes, fills, `arange` and
//! the counter-based random generator of STDLIB.md (`ensloss`).

use super::{Op, RandKind, Scalar, arity};
use crate::dim::{DimEnv, size, sizes};
use crate::ir::Ty;
use crate::kernels::{EvalError, EvalResult, ints};
use crate::value::{DType, Data, Tensor};

pub fn infer(op: &Op, args: &[&Ty]) -> Result<Ty, String> {
    match op {
        Op::Input(_) | Op::Param(_) | Op::State(_) => {
            Err("internal: declared values carry their own type".into())
        }
        Op::Const(_, d) => {
            arity(args, 0, "const")?;
            Ok(Ty::scalar(*d))
        }
        Op::DimSize(_) => {
            arity(args, 0, "dim")?;
            Ok(Ty::scalar(DType::I64))
        }
        Op::Fill(_, d, shape) => {
            arity(args, 0, "fill")?;
            Ok(Ty::new(*d, shape.clone()))
        }
        Op::Iota(n) => {
            arity(args, 0, "arange")?;
            Ok(Ty::new(DType::I64, vec![n.clone()]))
        }
        Op::Rand(_, shape) => {
            arity(args, 2, "rand")?;
            for a in args {
                if a.dtype != DType::I64 || a.rank() != 0 {
                    return Err(format!(
                        "the generator's seed and step must be i64 scalars, got {a}"
                    ));
                }
            }
            Ok(Ty::new(DType::F64, shape.clone()))
        }
        _ => unreachable!("not a source op"),
    }
}

fn filled(v: Scalar, d: DType, shape: Vec<usize>) -> Tensor {
    let n: usize = shape.iter().product();
    let data = match (v, d) {
        (Scalar::B(b), DType::Bool) => Data::B(vec![b; n]),
        (v, DType::Bool) => Data::B(vec![v.as_f64() != 0.0; n]),
        (Scalar::I(i), DType::I64) => Data::I(vec![i; n]),
        (v, DType::I64) => Data::I(vec![v.as_f64() as i64; n]),
        (v, DType::F32) => Data::F(vec![f64::from(v.as_f64() as f32); n]),
        (v, DType::F64) => Data::F(vec![v.as_f64(); n]),
    };
    Tensor {
        dtype: d,
        shape,
        data,
    }
}

/// Evaluates the sources that need no program bindings.
pub fn eval(op: &Op, args: &[&Tensor], env: DimEnv) -> EvalResult {
    match op {
        Op::Const(v, d) => Ok(filled(*v, *d, vec![])),
        Op::DimSize(d) => {
            let v = d
                .eval(env)
                .ok_or_else(|| EvalError::Shape(format!("size `{d}` is not bound")))?;
            Ok(Tensor::from_i64(vec![], vec![v]))
        }
        Op::Fill(v, d, shape) => Ok(filled(*v, *d, sizes(shape, env)?)),
        Op::Iota(n) => {
            let n = size(n, env)?;
            Ok(Tensor::from_i64(vec![n], (0..n as i64).collect()))
        }
        Op::Rand(kind, shape) => {
            let s = sizes(shape, env)?;
            let seed = ints(args[0])[0] as u64;
            let step = ints(args[1])[0] as u64;
            let n: usize = s.iter().product();
            let v = (0..n as u64)
                .map(|i| match kind {
                    RandKind::Normal => rand_normal(seed, step, i),
                    RandKind::Uniform => uniform(seed, step, i, 0),
                })
                .collect();
            Ok(Tensor::from_f64(DType::F64, s, v))
        }
        Op::Input(_) | Op::Param(_) | Op::State(_) => {
            unreachable!("declared values are bound by the interpreter")
        }
        _ => unreachable!("not a source op"),
    }
}

pub fn splitmix64(x: u64) -> u64 {
    let mut z = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

pub fn key(seed: u64, step: u64, i: u64, k: u64) -> u64 {
    splitmix64(splitmix64(splitmix64(seed) ^ step) ^ (i.wrapping_mul(2).wrapping_add(k)))
}

pub fn uniform(seed: u64, step: u64, i: u64, k: u64) -> f64 {
    (key(seed, step, i, k) >> 11) as f64 * (1.0 / (1u64 << 53) as f64)
}

pub fn rand_normal(seed: u64, step: u64, i: u64) -> f64 {
    let u0 = uniform(seed, step, i, 0);
    let u1 = uniform(seed, step, i, 1);
    (-2.0 * (1.0 - u0).ln()).sqrt() * (2.0 * std::f64::consts::PI * u1).cos()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The test vectors of STDLIB.md (`ensloss`).
    #[test]
    fn generator_test_vectors() {
        assert_eq!(splitmix64(0), 0xe220a8397b1dcdaf);
        type Row = (u64, u64, u64, u64, u64, f64, f64, f64);
        let rows: [Row; 6] = [
            (
                0,
                0,
                0,
                0x238275bc38fcbe91,
                0x2f32a78496c67c60,
                0.13870941014555427,
                0.18436667429957676,
                0.21902971165136337,
            ),
            (
                0,
                0,
                1,
                0xb28c4c30d302532e,
                0x5238060109491893,
                0.6974532717895354,
                0.32116735005664443,
                -0.6686262684975083,
            ),
            (
                0,
                0,
                2,
                0x7209949bdf4f2159,
                0x7179bc6fbef357f4,
                0.44545868688083745,
                0.44326379516765013,
                -1.0176502334412334,
            ),
            (
                0,
                1,
                0,
                0x44e5b98100c67fb0,
                0x465391958fc61f13,
                0.2691303195904541,
                0.27471265698820735,
                -0.12246174938699016,
            ),
            (
                7,
                3,
                0,
                0x9c1b0b5b3e06cf11,
                0x10490351134c1271,
                0.6097876641997814,
                0.06361408929232959,
                1.2637706016045651,
            ),
            (
                2024,
                123457,
                0,
                0xca632e977f00ba1e,
                0x734777c80c221d96,
                0.7905758972037827,
                0.45030926355332956,
                -1.6827857373004167,
            ),
        ];
        for (seed, step, i, k0, k1, u0, u1, z) in rows {
            assert_eq!(key(seed, step, i, 0), k0);
            assert_eq!(key(seed, step, i, 1), k1);
            assert_eq!(uniform(seed, step, i, 0), u0);
            assert_eq!(uniform(seed, step, i, 1), u1);
            assert!((rand_normal(seed, step, i) - z).abs() <= 1e-15 * z.abs().max(1.0));
        }
    }
}
