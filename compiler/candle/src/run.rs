//! Drives a plan node by node: the steps each root needs, values freed after
//! their last use, and (on the tracked path) each node's gradient rule.

use crate::exec::{Frame, needed_steps};
use crate::plan::{GradRule, Plan, Slot};
use crate::vjp::{VjpRule, link};
use candle_core::Tensor;
use losslang_compiler::ir::eval::NodeError;
use losslang_compiler::ir::{Graph, Handle};
use losslang_compiler::kernels::EvalError;
use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

/// What the tracked path needs: the VJP rule of every `GradRule::Vjp` node.
pub struct Tape<'a> {
    pub rules: &'a HashMap<Handle, Arc<VjpRule>>,
    pub dims: Arc<BTreeMap<String, i64>>,
}

/// Evaluates `roots`; `provided` nodes take the given values. With a tape,
/// gradients follow each node's rule; without, nothing is tracked.
pub fn run_graph(
    g: &Graph,
    plan: &Plan,
    frame: &mut Frame,
    roots: &[Handle],
    provided: &[(Handle, Tensor)],
    tape: Option<&Tape>,
) -> Result<Vec<Tensor>, NodeError> {
    let given: Vec<Slot> = provided.iter().map(|(h, _)| plan.slot(*h)).collect();
    for (h, t) in provided {
        frame.vals[plan.slot(*h).index()] = Some(t.clone());
    }
    let root_slots: Vec<Slot> = roots.iter().map(|h| plan.slot(*h)).collect();
    let need = needed_steps(plan, &root_slots, &given);
    // Off the tape, each value is dropped after its last use.
    let mut last_use = vec![usize::MAX; plan.types.len()];
    if tape.is_none() {
        last_use.fill(0);
        for (i, st) in plan.steps.iter().enumerate() {
            if need[i] {
                for a in &st.args {
                    last_use[a.index()] = i;
                }
            }
        }
        for r in &root_slots {
            last_use[r.index()] = usize::MAX;
        }
    }
    for np in &plan.nodes {
        if !(np.first..np.end).any(|i| need[i]) {
            continue;
        }
        let node = g.node(np.node);
        let fail = |error: EvalError| NodeError {
            node: np.node,
            error,
        };
        let arg_vals: Vec<Tensor> = match tape {
            Some(_) => node.args.iter().map(|a| frame.get(plan.slot(*a))).collect(),
            None => vec![],
        };
        let tracked = arg_vals.iter().any(|t| t.track_op());
        let off_tape = tracked && matches!(np.grad, GradRule::Vjp | GradRule::None);
        frame.detach_reads = off_tape;
        for (i, st) in plan.steps.iter().enumerate().take(np.end).skip(np.first) {
            if !need[i] {
                continue;
            }
            let r = frame.step(st);
            if let Err(e) = r {
                frame.detach_reads = false;
                return Err(fail(e.into_eval()));
            }
            for a in &st.args {
                if last_use[a.index()] == i {
                    frame.vals[a.index()] = None;
                }
            }
        }
        frame.detach_reads = false;
        if let (Some(tape), true, GradRule::Vjp) = (tape, tracked, np.grad) {
            let rule = tape.rules.get(&np.node).expect("every vjp node has a rule");
            let y = frame.get(np.out);
            let linked = link(rule, &arg_vals, y, &tape.dims).map_err(|e| {
                fail(EvalError::Other(format!(
                    "candle: {}",
                    crate::exec::candle_message(&e)
                )))
            })?;
            if let Some(t) = linked {
                frame.vals[np.out.index()] = Some(t);
            }
        }
    }
    Ok(root_slots
        .iter()
        .map(|s| frame.vals[s.index()].clone().expect("roots are computed"))
        .collect())
}
