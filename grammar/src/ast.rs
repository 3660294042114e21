//! The syntax tree of a `.loss` file. It knows nothing of types: every node
//! carries the byte span it was parsed from, and nothing else is resolved.

use crate::span::Span;

#[derive(Clone, Debug, PartialEq)]
pub struct Ident {
    pub name: String,
    pub span: Span,
}

#[derive(Clone, Debug, PartialEq)]
pub struct File {
    pub items: Vec<Item>,
}

#[derive(Clone, Debug, PartialEq)]
pub enum Item {
    Loss(LossDef),
    Fn(FnDef),
    Use(UseDecl),
}

/// `use std::weighting::ema;` or `use std::weighting::{ema, safe_div};`.
/// `path` is the module path (`std`, `weighting`); `items` the imported names.
#[derive(Clone, Debug, PartialEq)]
pub struct UseDecl {
    pub path: Vec<Ident>,
    pub items: Vec<Ident>,
    pub span: Span,
}

#[derive(Clone, Debug, PartialEq)]
pub struct LossDef {
    pub doc: Option<String>,
    pub name: Ident,
    pub inputs: Vec<InputDecl>,
    pub ret: Option<TypeExpr>,
    pub body: Block,
    pub span: Span,
}

/// `name: f32[N, C] diff`
#[derive(Clone, Debug, PartialEq)]
pub struct InputDecl {
    pub doc: Option<String>,
    pub name: Ident,
    pub ty: TypeExpr,
    pub diff: bool,
    pub span: Span,
}

/// `f32`, `i64[N]`, `bool[N, 3]`. `dims` is `None` for a scalar written without brackets.
#[derive(Clone, Debug, PartialEq)]
pub struct TypeExpr {
    pub dtype: Ident,
    pub dims: Option<Vec<DimAst>>,
    pub span: Span,
}

#[derive(Clone, Debug, PartialEq)]
pub enum DimAst {
    Lit(i64, Span),
    Name(Ident),
}

impl DimAst {
    pub fn span(&self) -> Span {
        match self {
            DimAst::Lit(_, s) => *s,
            DimAst::Name(i) => i.span,
        }
    }
}

/// `fn name(a, b: f32[N]) -> f32 { ... }`; `margin fn` marks a margin loss for `ensemble`.
#[derive(Clone, Debug, PartialEq)]
pub struct FnDef {
    pub doc: Option<String>,
    pub margin: bool,
    pub name: Ident,
    pub params: Vec<FnParam>,
    pub ret: Option<TypeExpr>,
    pub body: Block,
    pub span: Span,
}

#[derive(Clone, Debug, PartialEq)]
pub struct FnParam {
    pub name: Ident,
    pub ty: Option<TypeExpr>,
    pub span: Span,
}

/// Statements, then the value of the block (the loss, for a `loss` body).
#[derive(Clone, Debug, PartialEq)]
pub struct Block {
    pub stmts: Vec<Stmt>,
    pub tail: Option<Box<Expr>>,
    pub span: Span,
}

#[derive(Clone, Debug, PartialEq)]
pub enum Stmt {
    Let {
        name: Ident,
        ty: Option<TypeExpr>,
        value: Expr,
        span: Span,
    },
    Param {
        doc: Option<String>,
        name: Ident,
        ty: TypeExpr,
        default: Expr,
        /// `in [lo, hi)`: the values a call may give.
        domain: Option<ParamDomain>,
        span: Span,
    },
    State {
        doc: Option<String>,
        name: Ident,
        ty: TypeExpr,
        init: Expr,
        span: Span,
    },
    Report {
        name: Ident,
        value: Expr,
        span: Span,
    },
    /// `name <- value` or `name[index] <- value`.
    Update {
        target: Ident,
        index: Option<Expr>,
        value: Expr,
        span: Span,
    },
    /// `assert cond` — a run-time check (e.g. that two dims agree).
    Assert { cond: Expr, span: Span },
}

impl Stmt {
    pub fn span(&self) -> Span {
        match self {
            Stmt::Let { span, .. }
            | Stmt::Param { span, .. }
            | Stmt::State { span, .. }
            | Stmt::Report { span, .. }
            | Stmt::Update { span, .. }
            | Stmt::Assert { span, .. } => *span,
        }
    }
}

#[derive(Clone, Debug, PartialEq)]
pub struct Expr {
    pub kind: ExprKind,
    pub span: Span,
}

#[derive(Clone, Debug, PartialEq)]
pub enum ExprKind {
    Int(i64),
    Float(f64),
    Bool(bool),
    Name(String),
    Unary {
        op: UnOp,
        expr: Box<Expr>,
    },
    Binary {
        op: BinOp,
        lhs: Box<Expr>,
        rhs: Box<Expr>,
    },
    Call {
        func: Ident,
        args: Vec<Arg>,
    },
    /// `x[:, 0]`, `x[:, None]`, `x[1:]`, `lambdas[ids]`
    Index {
        base: Box<Expr>,
        indices: Vec<IndexItem>,
    },
    If {
        cond: Box<Expr>,
        then_block: Block,
        else_block: Block,
    },
    /// `[a, b, c]`: for `concat`, `stack`, `ensemble` members.
    List(Vec<Expr>),
}

#[derive(Clone, Debug, PartialEq)]
pub struct Arg {
    pub name: Option<Ident>,
    pub value: Expr,
    pub span: Span,
}

// Index lists are short and parsed once; boxing the bounds would only add noise.
#[allow(clippy::large_enum_variant)]
#[derive(Clone, Debug, PartialEq)]
pub enum IndexItem {
    Index(Expr),
    Slice {
        start: Option<Expr>,
        end: Option<Expr>,
        step: Option<Expr>,
        span: Span,
    },
    /// `None`: a new axis of size 1.
    NewAxis(Span),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum UnOp {
    Neg,
    Not,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BinOp {
    Add,
    Sub,
    Mul,
    Div,
    FloorDiv,
    Pow,
    MatMul,
    Lt,
    Le,
    Gt,
    Ge,
    Eq,
    Ne,
    And,
    Or,
}

impl BinOp {
    pub fn symbol(self) -> &'static str {
        match self {
            BinOp::Add => "+",
            BinOp::Sub => "-",
            BinOp::Mul => "*",
            BinOp::Div => "/",
            BinOp::FloorDiv => "//",
            BinOp::Pow => "**",
            BinOp::MatMul => "@",
            BinOp::Lt => "<",
            BinOp::Le => "<=",
            BinOp::Gt => ">",
            BinOp::Ge => ">=",
            BinOp::Eq => "==",
            BinOp::Ne => "!=",
            BinOp::And => "and",
            BinOp::Or => "or",
        }
    }
}

/// A param's allowed values: an interval, each end closed or open (`inf` ends are open).
#[derive(Clone, Debug, PartialEq)]
pub struct ParamDomain {
    pub lo: f64,
    pub lo_closed: bool,
    pub hi: f64,
    pub hi_closed: bool,
    pub span: Span,
}

impl ParamDomain {
    pub fn contains(&self, v: f64) -> bool {
        let above = if self.lo_closed {
            v >= self.lo
        } else {
            v > self.lo
        };
        let below = if self.hi_closed {
            v <= self.hi
        } else {
            v < self.hi
        };
        above && below
    }
}

impl std::fmt::Display for ParamDomain {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let b = |v: f64| {
            if v.is_infinite() {
                if v > 0.0 {
                    "inf".to_string()
                } else {
                    "-inf".to_string()
                }
            } else {
                format!("{v}")
            }
        };
        write!(
            f,
            "{}{}, {}{}",
            if self.lo_closed { '[' } else { '(' },
            b(self.lo),
            b(self.hi),
            if self.hi_closed { ']' } else { ')' }
        )
    }
}
