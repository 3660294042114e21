//! `--random`: valid random inputs for a program. Labels are drawn inside the
//! axis they index (found from the program: every gather, `one_hot` and
//! scatter says which axis bounds its indices), ids of state-table scatters
//! are distinct, masks are fair coins, non-differentiated floats are positive
//! (times, weights, levels in (0, 1)), and differentiated floats are normal.

use losslang_compiler::dim::Dim;
use losslang_compiler::ir::{Graph, Handle};
use losslang_compiler::ops::Op;
use losslang_compiler::value::{DType, Tensor};
use std::collections::BTreeMap;

/// A small counter-based generator (SplitMix64), so `--seed` reproduces inputs everywhere.
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed ^ 0x5EED_1055_C0DE_0001)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in [0, 1).
    pub fn uniform(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 * (1.0 / (1u64 << 53) as f64)
    }

    pub fn normal(&mut self) -> f64 {
        let (u0, u1) = (self.uniform(), self.uniform());
        (-2.0 * (1.0 - u0).ln()).sqrt() * (2.0 * std::f64::consts::PI * u1).cos()
    }

    pub fn below(&mut self, n: u64) -> u64 {
        if n == 0 { 0 } else { self.next_u64() % n }
    }
}

/// How an i64 input is used as an index: the axis size bounding it, and whether ids must be unique.
#[derive(Clone, Debug)]
pub struct IndexUse {
    pub bound: Dim,
    pub unique: bool,
}

/// For each input, the index uses found in the graph.
pub fn index_uses(g: &Graph) -> BTreeMap<usize, IndexUse> {
    let mut out: BTreeMap<usize, IndexUse> = BTreeMap::new();
    for n in &g.nodes {
        let (bound, unique) = match &n.op {
            Op::TakeAlong(a) | Op::IndexSelect(a) => (g.ty(n.args[0]).shape[*a].clone(), false),
            Op::ScatterSet(a) => (g.ty(n.args[0]).shape[*a].clone(), true),
            Op::OneHot(d) => (d.clone(), false),
            _ => continue,
        };
        let idx = n.args[n.op.index_args()[0]];
        for k in inputs_feeding(g, idx) {
            let e = out.entry(k).or_insert(IndexUse {
                bound: bound.clone(),
                unique,
            });
            e.unique |= unique;
            // Keep the smallest known bound when an input indexes several axes.
            if let (Some(a), Some(b)) = (e.bound.as_const(), bound.as_const())
                && b < a
            {
                e.bound = bound.clone();
            }
        }
    }
    out
}

/// The i64 inputs whose values flow (through selects, casts, reshapes) into `h`.
fn inputs_feeding(g: &Graph, h: Handle) -> Vec<usize> {
    let mut out = vec![];
    let mut stack = vec![h];
    let mut steps = 0;
    while let Some(x) = stack.pop() {
        steps += 1;
        if steps > 512 {
            break;
        }
        let n = g.node(x);
        match &n.op {
            Op::Input(k) if !out.contains(k) => out.push(*k),
            Op::Where => stack.extend([n.args[1], n.args[2]]),
            Op::Reshape(_)
            | Op::BroadcastTo(_)
            | Op::StopGrad
            | Op::Slice { .. }
            | Op::Transpose(_) => stack.push(n.args[0]),
            Op::Binary(_) => stack.extend(n.args.iter().copied()),
            _ => {}
        }
    }
    out
}

/// Random inputs for every declared input, with the dims bound in `dims`.
pub fn random_inputs(
    g: &Graph,
    dims: &BTreeMap<String, i64>,
    seed: u64,
) -> Result<Vec<(String, Tensor)>, String> {
    let uses = index_uses(g);
    let env = |s: &str| dims.get(s).copied();
    let mut rng = Rng::new(seed);
    let mut out = vec![];
    for (k, decl) in g.inputs.iter().enumerate() {
        let shape: Vec<usize> = decl
            .ty
            .shape
            .iter()
            .map(|d| {
                d.eval(&env)
                    .filter(|v| *v >= 0)
                    .map(|v| v as usize)
                    .ok_or_else(|| format!("--random needs a size for `{d}` (input `{}`): add it, e.g. --random {d}=8", decl.name))
            })
            .collect::<Result<_, _>>()?;
        let n: usize = shape.iter().product();
        if n > (1usize << 31) {
            return Err(format!(
                "input `{}` would have {n} elements; --random is limited to 2^31",
                decl.name
            ));
        }
        let t = match decl.ty.dtype {
            DType::F32 | DType::F64 => {
                let v: Vec<f64> = (0..n)
                    .map(|_| {
                        let x = if decl.diff {
                            rng.normal()
                        } else {
                            0.05 + 0.9 * rng.uniform()
                        };
                        if decl.ty.dtype == DType::F32 {
                            f64::from(x as f32)
                        } else {
                            x
                        }
                    })
                    .collect();
                Tensor::from_f64(decl.ty.dtype, shape, v)
            }
            DType::Bool => {
                Tensor::from_bool(shape, (0..n).map(|_| rng.next_u64() & 1 == 1).collect())
            }
            DType::I64 => match uses.get(&k) {
                Some(u) => {
                    let bound = u.bound.eval(&env).unwrap_or(2).max(0) as u64;
                    if u.unique {
                        if (n as u64) > bound {
                            return Err(format!(
                                "input `{}` needs {n} distinct ids below {bound}: give a larger {}",
                                decl.name, u.bound
                            ));
                        }
                        // A random choice of distinct ids: a partial Fisher–Yates shuffle.
                        let mut pool: Vec<i64> = (0..bound as i64).collect();
                        for i in 0..n {
                            let j = i + rng.below((pool.len() - i) as u64) as usize;
                            pool.swap(i, j);
                        }
                        pool.truncate(n);
                        Tensor::from_i64(shape, pool)
                    } else {
                        Tensor::from_i64(
                            shape,
                            (0..n).map(|_| rng.below(bound.max(1)) as i64).collect(),
                        )
                    }
                }
                None => Tensor::from_i64(shape, (0..n).map(|_| rng.below(2) as i64).collect()),
            },
        };
        out.push((decl.name.clone(), t));
    }
    Ok(out)
}
