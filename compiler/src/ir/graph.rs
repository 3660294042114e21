//! Arena of nodes with typed handles. A node only uses earlier nodes, so the
//! arena order is a topological order (the reverse sweep of autodiff walks it
//! backwards) and every pass that rebuilds the graph keeps it.

use crate::dim::{Shape, shape_str};
use crate::ops::{Op, Scalar};
use crate::value::DType;
use losslang_grammar::Span;
use std::collections::HashMap;
use std::fmt;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Handle(pub u32);

impl Handle {
    pub fn index(self) -> usize {
        self.0 as usize
    }
}

impl fmt::Display for Handle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "%{}", self.0)
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Ty {
    pub dtype: DType,
    pub shape: Shape,
}

impl Ty {
    pub fn new(dtype: DType, shape: Shape) -> Ty {
        Ty { dtype, shape }
    }

    pub fn scalar(dtype: DType) -> Ty {
        Ty {
            dtype,
            shape: vec![],
        }
    }

    pub fn rank(&self) -> usize {
        self.shape.len()
    }
}

impl fmt::Display for Ty {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.shape.is_empty() {
            write!(f, "{}", self.dtype)
        } else {
            write!(f, "{}{}", self.dtype, shape_str(&self.shape))
        }
    }
}

#[derive(Clone, Debug)]
pub struct Node {
    pub op: Op,
    pub args: Vec<Handle>,
    pub ty: Ty,
    pub span: Span,
}

#[derive(Clone, Debug)]
pub struct InputDecl {
    pub name: String,
    pub ty: Ty,
    pub diff: bool,
    pub span: Span,
    pub doc: Option<String>,
}

#[derive(Clone, Debug)]
pub struct ParamDecl {
    pub name: String,
    pub dtype: DType,
    pub default: Scalar,
    /// `in [lo, hi)`: the values a call may give (checked when a call is bound).
    pub domain: Option<losslang_grammar::ast::ParamDomain>,
    pub span: Span,
    pub doc: Option<String>,
}

#[derive(Clone, Debug)]
pub struct StateDecl {
    pub name: String,
    pub ty: Ty,
    /// Computes the initial value (from params and constants), already broadcast to `ty`.
    pub init: Handle,
    pub span: Span,
    pub doc: Option<String>,
}

#[derive(Clone, Debug)]
pub struct StateUpdate {
    pub state: usize,
    /// `Some(ids)` for a row scatter `s[ids] <- v` into a state table.
    pub index: Option<Handle>,
    pub value: Handle,
    pub span: Span,
}

#[derive(Clone, Debug)]
pub struct Check {
    pub cond: Handle,
    pub span: Span,
    pub message: String,
}

#[derive(Clone, Debug, Default)]
pub struct Graph {
    pub name: String,
    pub doc: Option<String>,
    pub nodes: Vec<Node>,
    pub inputs: Vec<InputDecl>,
    pub params: Vec<ParamDecl>,
    pub states: Vec<StateDecl>,
    pub loss: Option<Handle>,
    pub reports: Vec<(String, Handle)>,
    pub updates: Vec<StateUpdate>,
    pub checks: Vec<Check>,
    /// Gradient of the loss for each `diff` input (index into `inputs`), after autodiff.
    pub grads: Vec<(usize, Handle)>,
    pub(crate) dedup: HashMap<(Op, Vec<Handle>), Handle>,
}

impl Graph {
    pub fn node(&self, h: Handle) -> &Node {
        &self.nodes[h.index()]
    }

    pub fn ty(&self, h: Handle) -> &Ty {
        &self.nodes[h.index()].ty
    }

    pub fn len(&self) -> usize {
        self.nodes.len()
    }

    pub fn is_empty(&self) -> bool {
        self.nodes.is_empty()
    }

    pub fn loss(&self) -> Handle {
        self.loss.expect("graph has a loss")
    }

    /// Every handle the program's results depend on: loss, reports, updates,
    /// state initialisers, checks and gradients.
    pub fn roots(&self) -> Vec<Handle> {
        let mut r = Vec::new();
        r.extend(self.loss);
        r.extend(self.reports.iter().map(|(_, h)| *h));
        for u in &self.updates {
            r.extend(u.index);
            r.push(u.value);
        }
        r.extend(self.states.iter().map(|s| s.init));
        r.extend(self.checks.iter().map(|c| c.cond));
        r.extend(self.grads.iter().map(|(_, h)| *h));
        r
    }

    /// Applies `f` to every root handle (used by passes that renumber nodes).
    pub fn map_roots(&mut self, f: &dyn Fn(Handle) -> Handle) {
        self.loss = self.loss.map(f);
        for (_, h) in &mut self.reports {
            *h = f(*h);
        }
        for u in &mut self.updates {
            u.index = u.index.map(f);
            u.value = f(u.value);
        }
        for s in &mut self.states {
            s.init = f(s.init);
        }
        for c in &mut self.checks {
            c.cond = f(c.cond);
        }
        for (_, h) in &mut self.grads {
            *h = f(*h);
        }
    }

    pub fn input_index(&self, name: &str) -> Option<usize> {
        self.inputs.iter().position(|i| i.name == name)
    }

    pub fn param_index(&self, name: &str) -> Option<usize> {
        self.params.iter().position(|i| i.name == name)
    }

    pub fn state_index(&self, name: &str) -> Option<usize> {
        self.states.iter().position(|i| i.name == name)
    }
}
