//! Runs a shard plan on simulated ranks with the reference interpreter's
//! kernels: every node is evaluated on every rank in turn, arguments converted
//! as the plan says (a gather concatenates every rank's rows, a slice takes the
//! rank's rows), partial results all-reduced across ranks. The test of the plan
//! is that every rank's loss and new state equal the full batch's and every
//! rank's gradient is its rows of the full gradient.

use super::{Layout, ShardPlan};
use crate::dim::Dim;
use crate::ir::eval::Env;
use crate::ir::{Graph, Handle};
use crate::kernels::EvalError;
use crate::ops::{BinaryOp, Op, ReduceKind, Scalar, UnaryOp};
use crate::value::Tensor;

/// What one rank computes.
#[derive(Clone, Debug)]
pub struct RankResult {
    pub loss: Tensor,
    pub state: Vec<Tensor>,
    pub reports: Vec<Tensor>,
    /// Each gradient in its input's layout (the rank's rows of a sharded input).
    pub grads: Vec<Tensor>,
}

fn apply(op: Op, args: &[&Tensor], dims: &dyn Fn(&str) -> Option<i64>) -> Result<Tensor, String> {
    op.eval(args, dims).map_err(|e: EvalError| format!("{e:?}"))
}

fn slice(t: &Tensor, axis: usize, start: usize, len: usize) -> Result<Tensor, String> {
    let op = Op::Slice {
        axis,
        start: Dim::lit(start as i64),
        len: Dim::lit(len as i64),
        step: 1,
    };
    apply(op, &[t], &|_| None)
}

fn concat(parts: &[&Tensor], axis: usize) -> Result<Tensor, String> {
    if parts.len() == 1 {
        return Ok(parts[0].clone());
    }
    apply(Op::Concat(axis), parts, &|_| None)
}

fn combine(parts: &[Tensor], kind: ReduceKind) -> Result<Tensor, String> {
    let b = match kind {
        ReduceKind::Sum => BinaryOp::Add,
        ReduceKind::Max => BinaryOp::Maximum,
        ReduceKind::Min => BinaryOp::Minimum,
    };
    let mut acc = parts[0].clone();
    for p in &parts[1..] {
        acc = apply(Op::Binary(b), &[&acc, p], &|_| None)?;
    }
    Ok(acc)
}

/// Splits the full-batch `env` over ranks with `sizes` rows each and runs the plan.
pub fn run(
    g: &Graph,
    plan: &ShardPlan,
    env: &Env,
    sizes: &[usize],
) -> Result<Vec<RankResult>, String> {
    let ranks = sizes.len();
    let offsets: Vec<usize> = sizes
        .iter()
        .scan(0, |acc, &n| {
            let o = *acc;
            *acc += n;
            Some(o)
        })
        .collect();
    let dims_of = |r: usize| {
        let mut d = env.dims.clone();
        d.insert(plan.local.clone(), sizes[r] as i64);
        d
    };
    let rank_dims: Vec<_> = (0..ranks).map(dims_of).collect();
    let mut vals: Vec<Vec<Option<Tensor>>> = vec![vec![None; g.len()]; ranks];
    let layout = |h: Handle| plan.nodes[h.index()].as_ref().and_then(|p| p.out);

    // A value of `h` on rank `r` in layout `want`.
    let convert = |vals: &Vec<Vec<Option<Tensor>>>,
                   h: Handle,
                   r: usize,
                   want: Layout|
     -> Result<Tensor, String> {
        let have = layout(h);
        let v = |q: usize| vals[q][h.index()].as_ref().expect("evaluated");
        let full = match have {
            Some(ax) if have != want => {
                let parts: Vec<&Tensor> = (0..ranks).map(v).collect();
                concat(&parts, ax)?
            }
            _ => v(r).clone(),
        };
        match want {
            Some(ax) if have != want => slice(&full, ax, offsets[r], sizes[r]),
            _ => Ok(full),
        }
    };

    for (i, n) in g.nodes.iter().enumerate() {
        let Some(p) = &plan.nodes[i] else { continue };
        let mut outs = Vec::with_capacity(ranks);
        for r in 0..ranks {
            let d = &rank_dims[r];
            let dims = |s: &str| d.get(s).copied();
            let v = match &n.op {
                Op::Input(k) => match plan.inputs[*k] {
                    Some(ax) => slice(&env.inputs[*k], ax, offsets[r], sizes[r])?,
                    None => env.inputs[*k].clone(),
                },
                Op::Param(k) => env.params[*k].clone(),
                Op::State(k) => env.state[*k].clone(),
                _ => {
                    let args: Vec<Tensor> = n
                        .args
                        .iter()
                        .zip(&p.want)
                        .map(|(&a, &w)| convert(&vals, a, r, w))
                        .collect::<Result<_, _>>()?;
                    let refs: Vec<&Tensor> = args.iter().collect();
                    match (&p.op, p.reduce) {
                        // a norm over local rows: the sum of squares is what ranks add
                        (Op::Norm { axes, keepdims }, Some(_)) => {
                            let sq =
                                apply(Op::Binary(BinaryOp::Mul), &[&args[0], &args[0]], &dims)?;
                            apply(
                                Op::Reduce {
                                    kind: ReduceKind::Sum,
                                    axes: axes.clone(),
                                    keepdims: *keepdims,
                                },
                                &[&sq],
                                &dims,
                            )?
                        }
                        _ if p.partial_add => {
                            let shape = args[0].shape.iter().map(|&d| Dim::lit(d as i64)).collect();
                            let zero =
                                apply(Op::Fill(Scalar::F(0.0), args[0].dtype, shape), &[], &dims)?;
                            apply(p.op.clone(), &[&zero, &args[1], &args[2]], &dims)?
                        }
                        _ => apply(p.op.clone(), &refs, &dims)?,
                    }
                }
            };
            outs.push(v);
        }
        if p.reduce.is_some() || p.partial_add {
            let mut total = combine(&outs, p.reduce.unwrap_or(ReduceKind::Sum))?;
            if matches!(n.op, Op::Norm { .. }) {
                total = apply(Op::Unary(UnaryOp::Sqrt), &[&total], &|_| None)?;
            }
            if p.partial_add {
                let base = convert(&vals, n.args[0], 0, None)?;
                total = apply(Op::Binary(BinaryOp::Add), &[&base, &total], &|_| None)?;
            }
            outs = vec![total; ranks];
        }
        for (r, v) in outs.into_iter().enumerate() {
            vals[r][i] = Some(v);
        }
    }
    (0..ranks)
        .map(|r| {
            let mut state: Vec<Tensor> = env.state.clone();
            for u in &g.updates {
                state[u.state] = convert(&vals, u.value, r, None)?;
            }
            Ok(RankResult {
                loss: convert(&vals, g.loss(), r, None)?,
                state,
                reports: g
                    .reports
                    .iter()
                    .map(|(_, h)| convert(&vals, *h, r, layout(*h)))
                    .collect::<Result<_, _>>()?,
                grads: g
                    .grads
                    .iter()
                    .map(|(k, h)| convert(&vals, *h, r, plan.inputs[*k]))
                    .collect::<Result<_, _>>()?,
            })
        })
        .collect()
}
