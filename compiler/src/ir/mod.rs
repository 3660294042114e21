//! The IR: a typed tensor graph in an arena, nodes in topological order.

pub mod build;
pub mod eval;
pub mod graph;
pub mod print;
pub mod verify;

pub use graph::{Graph, Handle, InputDecl, Node, ParamDecl, StateDecl, StateUpdate, Ty};
