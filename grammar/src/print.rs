//! A stable text form of the AST, for `lossc emit --stage ast` and snapshot
//! tests.
//!
//! After a `; losslang ast v1` header, one node per line as an indented
//! S-expression: `(head words @start..end`, children on the lines below,
//! and the closing parenthesis at the end of the node's last line. A name
//! that has its own span is written `name@start..end`. Floats use `{:?}`,
//! which reads back to the same `f64`. Change the format only together with
//! the version in the header.

use std::fmt::Write as _;

use crate::ast::{
    Arg, Block, DimAst, Expr, ExprKind, File, FnDef, FnParam, Ident, IndexItem, InputDecl, Item,
    LossDef, Stmt, TypeExpr, UnOp, UseDecl,
};
use crate::span::Span;

/// The text form of a whole file.
pub fn print_file(f: &File) -> String {
    let mut p = Printer::default();
    p.out.push_str("; losslang ast v1\n");
    p.open(format_args!("file"));
    for item in &f.items {
        match item {
            Item::Use(u) => p.use_decl(u),
            Item::Loss(l) => p.loss_def(l),
            Item::Fn(f) => p.fn_def(f),
        }
    }
    p.close();
    p.out
}

#[derive(Default)]
struct Printer {
    out: String,
    indent: usize,
}

struct At(Span);

impl std::fmt::Display for At {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "@{}..{}", self.0.start, self.0.end)
    }
}

struct Name<'a>(&'a Ident);

impl std::fmt::Display for Name<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}{}", self.0.name, At(self.0.span))
    }
}

impl Printer {
    /// Starts a node; its children go on the following lines.
    fn open(&mut self, head: std::fmt::Arguments<'_>) {
        for _ in 0..self.indent {
            self.out.push_str("  ");
        }
        self.out.push('(');
        let _ = self.out.write_fmt(head);
        self.out.push('\n');
        self.indent += 1;
    }

    /// Ends the node opened last, on the line its last child ended.
    fn close(&mut self) {
        self.indent -= 1;
        self.out.pop();
        self.out.push_str(")\n");
    }

    fn leaf(&mut self, head: std::fmt::Arguments<'_>) {
        self.open(head);
        self.close();
    }

    fn doc(&mut self, doc: &Option<String>) {
        if let Some(d) = doc {
            self.leaf(format_args!("doc {d:?}"));
        }
    }

    fn use_decl(&mut self, u: &UseDecl) {
        self.open(format_args!("use {}", At(u.span)));
        for seg in &u.path {
            self.leaf(format_args!("path {} {}", seg.name, At(seg.span)));
        }
        for item in &u.items {
            self.leaf(format_args!("item {} {}", item.name, At(item.span)));
        }
        self.close();
    }

    fn loss_def(&mut self, l: &LossDef) {
        self.open(format_args!("loss {} {}", Name(&l.name), At(l.span)));
        self.doc(&l.doc);
        for input in &l.inputs {
            self.input_decl(input);
        }
        if let Some(ret) = &l.ret {
            self.type_expr("ret", ret);
        }
        self.block(&l.body);
        self.close();
    }

    fn input_decl(&mut self, i: &InputDecl) {
        let diff = if i.diff { " diff" } else { "" };
        self.open(format_args!("input {}{diff} {}", Name(&i.name), At(i.span)));
        self.doc(&i.doc);
        self.type_expr("type", &i.ty);
        self.close();
    }

    fn fn_def(&mut self, f: &FnDef) {
        let margin = if f.margin { " margin" } else { "" };
        self.open(format_args!("fn {}{margin} {}", Name(&f.name), At(f.span)));
        self.doc(&f.doc);
        for param in &f.params {
            self.fn_param(param);
        }
        if let Some(ret) = &f.ret {
            self.type_expr("ret", ret);
        }
        self.block(&f.body);
        self.close();
    }

    fn fn_param(&mut self, p: &FnParam) {
        self.open(format_args!("fnparam {} {}", Name(&p.name), At(p.span)));
        if let Some(ty) = &p.ty {
            self.type_expr("type", ty);
        }
        self.close();
    }

    /// `dims` marks a bracketed shape (possibly empty, `f32[]`); the
    /// dimensions follow as children.
    fn type_expr(&mut self, head: &str, t: &TypeExpr) {
        let dims = if t.dims.is_some() { " dims" } else { "" };
        self.open(format_args!(
            "{head} {}{dims} {}",
            Name(&t.dtype),
            At(t.span)
        ));
        for dim in t.dims.iter().flatten() {
            match dim {
                DimAst::Lit(v, span) => self.leaf(format_args!("dim {v} {}", At(*span))),
                DimAst::Name(n) => self.leaf(format_args!("dim {} {}", n.name, At(n.span))),
            }
        }
        self.close();
    }

    /// Statements, then the tail expression if there is one.
    fn block(&mut self, b: &Block) {
        self.open(format_args!("block {}", At(b.span)));
        for stmt in &b.stmts {
            self.stmt(stmt);
        }
        if let Some(tail) = &b.tail {
            self.expr(tail);
        }
        self.close();
    }

    fn stmt(&mut self, s: &Stmt) {
        match s {
            Stmt::Let {
                name,
                ty,
                value,
                span,
            } => {
                self.open(format_args!("let {} {}", Name(name), At(*span)));
                if let Some(ty) = ty {
                    self.type_expr("type", ty);
                }
                self.expr(value);
            }
            Stmt::Param {
                doc,
                name,
                ty,
                default,
                domain,
                span,
            } => {
                self.open(format_args!("param {} {}", Name(name), At(*span)));
                self.doc(doc);
                self.type_expr("type", ty);
                self.expr(default);
                if let Some(d) = domain {
                    self.leaf(format_args!("domain {d} {}", At(d.span)));
                }
            }
            Stmt::State {
                doc,
                name,
                ty,
                init,
                span,
            } => {
                self.open(format_args!("state {} {}", Name(name), At(*span)));
                self.doc(doc);
                self.type_expr("type", ty);
                self.expr(init);
            }
            Stmt::Report { name, value, span } => {
                self.open(format_args!("report {} {}", Name(name), At(*span)));
                self.expr(value);
            }
            Stmt::Update {
                target,
                index,
                value,
                span,
            } => {
                self.open(format_args!("update {} {}", Name(target), At(*span)));
                if let Some(index) = index {
                    self.open(format_args!("at"));
                    self.expr(index);
                    self.close();
                }
                self.expr(value);
            }
            Stmt::Assert { cond, span } => {
                self.open(format_args!("assert {}", At(*span)));
                self.expr(cond);
            }
        }
        self.close();
    }

    fn expr(&mut self, e: &Expr) {
        let at = At(e.span);
        match &e.kind {
            ExprKind::Int(v) => self.open(format_args!("int {v} {at}")),
            ExprKind::Float(v) => self.open(format_args!("float {v:?} {at}")),
            ExprKind::Bool(v) => self.open(format_args!("bool {v} {at}")),
            ExprKind::Name(n) => self.open(format_args!("name {n} {at}")),
            ExprKind::Unary { op, expr } => {
                let op = match op {
                    UnOp::Neg => "neg",
                    UnOp::Not => "not",
                };
                self.open(format_args!("{op} {at}"));
                self.expr(expr);
            }
            ExprKind::Binary { op, lhs, rhs } => {
                self.open(format_args!("binary {} {at}", op.symbol()));
                self.expr(lhs);
                self.expr(rhs);
            }
            ExprKind::Call { func, args } => {
                self.open(format_args!("call {} {at}", Name(func)));
                for arg in args {
                    self.arg(arg);
                }
            }
            ExprKind::Index { base, indices } => {
                self.open(format_args!("index {at}"));
                self.expr(base);
                for item in indices {
                    self.index_item(item);
                }
            }
            ExprKind::If {
                cond,
                then_block,
                else_block,
            } => {
                self.open(format_args!("if {at}"));
                self.expr(cond);
                self.block(then_block);
                self.block(else_block);
            }
            ExprKind::List(items) => {
                self.open(format_args!("list {at}"));
                for item in items {
                    self.expr(item);
                }
            }
        }
        self.close();
    }

    fn arg(&mut self, a: &Arg) {
        match &a.name {
            Some(name) => self.open(format_args!("arg {} {}", Name(name), At(a.span))),
            None => self.open(format_args!("arg {}", At(a.span))),
        }
        self.expr(&a.value);
        self.close();
    }

    /// A plain index is its expression; slices name their parts.
    fn index_item(&mut self, item: &IndexItem) {
        match item {
            IndexItem::Index(e) => self.expr(e),
            IndexItem::NewAxis(span) => self.leaf(format_args!("newaxis {}", At(*span))),
            IndexItem::Slice {
                start,
                end,
                step,
                span,
            } => {
                self.open(format_args!("slice {}", At(*span)));
                for (part, e) in [("start", start), ("end", end), ("step", step)] {
                    if let Some(e) = e {
                        self.open(format_args!("{part}"));
                        self.expr(e);
                        self.close();
                    }
                }
                self.close();
            }
        }
    }
}
