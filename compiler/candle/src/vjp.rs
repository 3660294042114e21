//! The compiler's VJP of one op, as candle custom ops that join the tape.
//!
//! On the tracked path, a node whose candle calls do not have the op's own
//! gradient (kinks with the compiler's tie rules, NaN-safe compositions,
//! custom kernels) is computed off the tape and then linked to its tracked
//! arguments by `Link1`/`Link2`: forward returns the computed value,
//! backward evaluates the op's VJP (`Op::vjp`, the same rule autodiff uses)
//! lowered to candle calls. So candle's `backward()` gives the compiler's
//! gradients through every op.

use crate::exec::Frame;
use crate::lower::{LowerError, lower};
use crate::plan::{Plan, Target};
use crate::run::run_graph;
use candle_core::backend::BackendStorage;
use candle_core::{
    CpuStorage, CudaStorage, CustomOp1, CustomOp2, Device, Error, Layout, Result, Shape, Storage,
    Tensor,
};
use losslang_compiler::ir::{Graph, Handle};
use losslang_compiler::ops::Op;
use std::collections::BTreeMap;
use std::sync::Arc;

/// The VJP of one node as a small graph: `Input(i)` are the node's arguments,
/// `Input(n)` the cotangent; `y` is the node itself (its value is given).
#[derive(Debug)]
pub struct VjpRule {
    pub graph: Graph,
    pub plan: Plan,
    pub nargs: usize,
    pub y: Handle,
    /// The cotangent of each argument (`None`: no gradient flows to it).
    pub grads: Vec<Option<Handle>>,
}

pub fn vjp_rule(g: &Graph, h: Handle, target: Target) -> std::result::Result<VjpRule, LowerError> {
    let n = g.node(h);
    let err = |message: String| LowerError { node: h, message };
    let mut mg = Graph::default();
    mg.name = format!("vjp of {} {}", h, n.op.name());
    let ins: Vec<Handle> = n
        .args
        .iter()
        .enumerate()
        .map(|(i, a)| mg.push_typed(Op::Input(i), vec![], g.ty(*a).clone(), n.span))
        .collect();
    let y = mg.push(n.op.clone(), ins, n.span).map_err(err)?;
    let cot = mg.push_typed(Op::Input(n.args.len()), vec![], n.ty.clone(), n.span);
    let grads = n.op.vjp(&mut mg, y, cot);
    let plan = lower(&mg, target).map_err(|e| err(format!("its gradient: {}", e.message)))?;
    Ok(VjpRule {
        graph: mg,
        plan,
        nargs: n.args.len(),
        y,
        grads,
    })
}

/// The shared parts of a link: the rule, the node's argument values (detached),
/// its value, and the call's sizes.
struct LinkData {
    rule: Arc<VjpRule>,
    args: Vec<Tensor>,
    y: Tensor,
    /// The argument positions the link's candle arguments stand for.
    wrt: Vec<usize>,
    dims: Arc<BTreeMap<String, i64>>,
    device: Device,
}

impl LinkData {
    fn copy_cpu(&self) -> Result<(CpuStorage, Shape)> {
        let (s, l) = self.y.storage_and_layout();
        let Storage::Cpu(cs) = &*s else {
            return Err(Error::Msg("losslang vjp link: value not on the CPU".into()));
        };
        let (a, b) = l
            .contiguous_offsets()
            .ok_or_else(|| Error::Msg("losslang vjp link: value not contiguous".into()))?;
        let out = match cs {
            CpuStorage::F32(v) => CpuStorage::F32(v[a..b].to_vec()),
            CpuStorage::F64(v) => CpuStorage::F64(v[a..b].to_vec()),
            other => {
                return Err(Error::Msg(format!(
                    "losslang vjp link on {:?}",
                    other.dtype()
                )));
            }
        };
        Ok((out, l.shape().clone()))
    }

    fn copy_cuda(&self) -> Result<(CudaStorage, Shape)> {
        let (s, l) = self.y.storage_and_layout();
        match &*s {
            // Contiguous from offset 0 (see `link`), so the copy reads as the shape.
            Storage::Cuda(cs) => Ok((cs.try_clone(l)?, l.shape().clone())),
            _ => Err(Error::Msg(
                "losslang vjp link: value not on the CUDA device".into(),
            )),
        }
    }

    /// The cotangents of the `wrt` arguments for the cotangent `grad` of the value.
    fn backward(&self, grad: &Tensor) -> Result<Vec<Option<Tensor>>> {
        let rule = &self.rule;
        let mut inputs: Vec<Tensor> = self.args.clone();
        inputs.push(grad.detach());
        let roots: Vec<Handle> = self.wrt.iter().filter_map(|&i| rule.grads[i]).collect();
        let mut frame = Frame::new(&rule.plan, &self.device, &self.dims, &inputs, &[], &[]);
        let vals = run_graph(
            &rule.graph,
            &rule.plan,
            &mut frame,
            &roots,
            &[(rule.y, self.y.clone())],
            None,
        )
        .map_err(|e| {
            Error::Msg(format!(
                "losslang gradient of {}: {:?}",
                rule.graph.name, e.error
            ))
        })?;
        let mut it = vals.into_iter();
        Ok(self
            .wrt
            .iter()
            .map(|&i| rule.grads[i].map(|_| it.next().expect("one value per root")))
            .collect())
    }
}

struct Link1(LinkData);
struct Link2(LinkData);

impl CustomOp1 for Link1 {
    fn name(&self) -> &'static str {
        "losslang-vjp"
    }

    fn cpu_fwd(&self, _: &CpuStorage, _: &Layout) -> Result<(CpuStorage, Shape)> {
        self.0.copy_cpu()
    }

    fn cuda_fwd(&self, _: &CudaStorage, _: &Layout) -> Result<(CudaStorage, Shape)> {
        self.0.copy_cuda()
    }

    fn bwd(&self, _arg: &Tensor, _res: &Tensor, grad: &Tensor) -> Result<Option<Tensor>> {
        Ok(self.0.backward(grad)?.into_iter().next().flatten())
    }
}

impl CustomOp2 for Link2 {
    fn name(&self) -> &'static str {
        "losslang-vjp"
    }

    fn cpu_fwd(
        &self,
        _: &CpuStorage,
        _: &Layout,
        _: &CpuStorage,
        _: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        self.0.copy_cpu()
    }

    fn cuda_fwd(
        &self,
        _: &CudaStorage,
        _: &Layout,
        _: &CudaStorage,
        _: &Layout,
    ) -> Result<(CudaStorage, Shape)> {
        self.0.copy_cuda()
    }

    fn bwd(
        &self,
        _: &Tensor,
        _: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>)> {
        let mut g = self.0.backward(grad)?.into_iter();
        Ok((g.next().flatten(), g.next().flatten()))
    }
}

/// Puts `y` (computed off the tape from `args`) on the tape, with the rule's
/// VJP towards the tracked, differentiable arguments. `None`: nothing to link.
pub fn link(
    rule: &Arc<VjpRule>,
    args: &[Tensor],
    y: Tensor,
    dims: &Arc<BTreeMap<String, i64>>,
) -> Result<Option<Tensor>> {
    let wrt: Vec<usize> = (0..args.len())
        .filter(|&i| args[i].track_op() && rule.grads[i].is_some())
        .collect();
    if wrt.is_empty() {
        return Ok(None);
    }
    let y = if y.is_contiguous() && y.layout().start_offset() == 0 {
        y.detach()
    } else {
        y.detach().force_contiguous()?
    };
    let data = LinkData {
        rule: rule.clone(),
        args: args.iter().map(|a| a.detach()).collect(),
        y,
        wrt: wrt.clone(),
        dims: dims.clone(),
        device: args[wrt[0]].device().clone(),
    };
    match wrt[..] {
        [i] => Ok(Some(args[i].apply_op1(Link1(data))?)),
        [i, j] => Ok(Some(args[i].apply_op2(&args[j], Link2(data))?)),
        _ => Err(Error::Msg(format!(
            "losslang vjp link: {} tracked arguments of {}",
            wrt.len(),
            rule.graph.name
        ))),
    }
}
