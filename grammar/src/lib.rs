//! The `.loss` grammar: a pest grammar, a Pratt parser for expressions, and a
//! typed AST whose every node carries its byte span. Parsing never panics.

pub mod ast;
mod parser;
pub mod print;
pub mod span;

pub use parser::{MAX_NESTING, ParseError, parse};
pub use span::Span;
