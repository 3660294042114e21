//! Building graphs: every node goes through its op's type rule and is
//! hash-consed, so structurally equal nodes are shared (CSE at construction).

use super::graph::{Graph, Handle, Node, Ty};
use crate::dim::Shape;
use crate::ops::{BinaryOp, Op, ReduceKind, Scalar, UnaryOp};
use crate::value::DType;
use losslang_grammar::Span;

impl Graph {
    /// Adds a node after checking its type rule; identical nodes are shared.
    pub fn push(&mut self, op: Op, args: Vec<Handle>, span: Span) -> Result<Handle, String> {
        if let Some(&h) = self.dedup.get(&(op.clone(), args.clone())) {
            return Ok(h);
        }
        let tys: Vec<&Ty> = args.iter().map(|a| self.ty(*a)).collect();
        let ty = op.infer(&tys)?;
        Ok(self.push_typed(op, args, ty, span))
    }

    /// Adds a node whose type is given (sources: inputs, params, state).
    pub fn push_typed(&mut self, op: Op, args: Vec<Handle>, ty: Ty, span: Span) -> Handle {
        let key = (op.clone(), args.clone());
        if let Some(&h) = self.dedup.get(&key) {
            return h;
        }
        let h = Handle(u32::try_from(self.nodes.len()).expect("fewer than 2^32 nodes"));
        self.nodes.push(Node { op, args, ty, span });
        self.dedup.insert(key, h);
        h
    }

    /// For compiler-generated nodes (gradients, expansions) whose types are
    /// correct by construction: a failure here is a broken invariant.
    pub fn mk(&mut self, op: Op, args: Vec<Handle>, span: Span) -> Handle {
        let name = op.name();
        match self.push(op, args, span) {
            Ok(h) => h,
            Err(e) => panic!("internal: generated `{name}` node is ill-typed: {e}"),
        }
    }

    pub fn constant(&mut self, v: Scalar, dtype: DType, span: Span) -> Handle {
        self.mk(Op::Const(v, dtype), vec![], span)
    }

    pub fn float(&mut self, v: f64, dtype: DType, span: Span) -> Handle {
        self.constant(Scalar::F(v), dtype, span)
    }

    pub fn fill(&mut self, v: Scalar, dtype: DType, shape: Shape, span: Span) -> Handle {
        self.mk(Op::Fill(v, dtype, shape), vec![], span)
    }

    pub fn zeros_like(&mut self, h: Handle, span: Span) -> Handle {
        let ty = self.ty(h).clone();
        let z = match ty.dtype {
            DType::I64 => Scalar::I(0),
            DType::Bool => Scalar::B(false),
            DType::F32 | DType::F64 => Scalar::F(0.0),
        };
        self.fill(z, ty.dtype, ty.shape, span)
    }

    pub fn unary(&mut self, u: UnaryOp, x: Handle, span: Span) -> Handle {
        self.mk(Op::Unary(u), vec![x], span)
    }

    pub fn binary(&mut self, b: BinaryOp, x: Handle, y: Handle, span: Span) -> Handle {
        self.mk(Op::Binary(b), vec![x, y], span)
    }

    pub fn add(&mut self, x: Handle, y: Handle, span: Span) -> Handle {
        self.binary(BinaryOp::Add, x, y, span)
    }

    pub fn sub(&mut self, x: Handle, y: Handle, span: Span) -> Handle {
        self.binary(BinaryOp::Sub, x, y, span)
    }

    pub fn mul(&mut self, x: Handle, y: Handle, span: Span) -> Handle {
        self.binary(BinaryOp::Mul, x, y, span)
    }

    pub fn div(&mut self, x: Handle, y: Handle, span: Span) -> Handle {
        self.binary(BinaryOp::Div, x, y, span)
    }

    pub fn neg(&mut self, x: Handle, span: Span) -> Handle {
        self.unary(UnaryOp::Neg, x, span)
    }

    /// A float scalar constant of `like`'s dtype.
    pub fn float_like(&mut self, v: f64, like: Handle, span: Span) -> Handle {
        let d = self.ty(like).dtype;
        self.float(v, d, span)
    }

    pub fn where_(&mut self, c: Handle, a: Handle, b: Handle, span: Span) -> Handle {
        self.mk(Op::Where, vec![c, a, b], span)
    }

    /// `where(c, x, 0)` with the zero of x's dtype.
    pub fn mask(&mut self, c: Handle, x: Handle, span: Span) -> Handle {
        let z = self.float_like(0.0, x, span);
        self.where_(c, x, z, span)
    }

    pub fn cast(&mut self, x: Handle, d: DType, span: Span) -> Handle {
        if self.ty(x).dtype == d {
            return x;
        }
        self.mk(Op::Cast(d), vec![x], span)
    }

    pub fn reshape(&mut self, x: Handle, shape: Shape, span: Span) -> Handle {
        if self.ty(x).shape == shape {
            return x;
        }
        self.mk(Op::Reshape(shape), vec![x], span)
    }

    pub fn broadcast_to(&mut self, x: Handle, shape: Shape, span: Span) -> Handle {
        if self.ty(x).shape == shape {
            return x;
        }
        self.mk(Op::BroadcastTo(shape), vec![x], span)
    }

    pub fn sum(&mut self, x: Handle, axes: Vec<usize>, keepdims: bool, span: Span) -> Handle {
        if axes.is_empty() {
            return x;
        }
        self.mk(
            Op::Reduce {
                kind: ReduceKind::Sum,
                axes,
                keepdims,
            },
            vec![x],
            span,
        )
    }

    /// Sums `g` down to `shape`: the adjoint of NumPy broadcasting.
    pub fn sum_to(&mut self, g: Handle, shape: &Shape, span: Span) -> Handle {
        let gs = self.ty(g).shape.clone();
        if &gs == shape {
            return g;
        }
        let lead = gs.len() - shape.len();
        let mut g = g;
        if lead > 0 {
            g = self.sum(g, (0..lead).collect(), false, span);
        }
        let axes: Vec<usize> = (0..shape.len())
            .filter(|&i| shape[i].is_one() && !gs[lead + i].is_one())
            .collect();
        if !axes.is_empty() {
            g = self.sum(g, axes, true, span);
        }
        g
    }

    /// Inserts the reduced axes back as size-1 axes (the keepdims shape).
    pub fn keepdims_shape(shape: &Shape, axes: &[usize]) -> Shape {
        shape
            .iter()
            .enumerate()
            .map(|(i, d)| {
                if axes.contains(&i) {
                    crate::dim::Dim::lit(1)
                } else {
                    d.clone()
                }
            })
            .collect()
    }
}
