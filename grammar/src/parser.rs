//! Source text to [`File`].
//!
//! Three stages: a byte pre-scan that rejects characters the language has no
//! use for and bounds bracket nesting (the generated pest parser recurses once
//! per bracket, so this is what keeps it off the end of the stack); the pest
//! grammar in `loss.pest`; and one `parse_<rule>` function per grammar rule
//! that turns pairs into AST nodes, with a Pratt parser for the flat operator
//! sequences of expressions.
//!
//! Nothing here panics on any input, and no error carries the source text:
//! callers attach it with miette's `with_source_code`.

use std::cell::Cell;
use std::fmt;
use std::sync::LazyLock;

use miette::{Diagnostic, LabeledSpan, SourceSpan};
use pest::Parser as _;
use pest::error::{ErrorVariant, InputLocation};
use pest::iterators::{Pair, Pairs};
use pest::pratt_parser::{Assoc, Op, PrattParser};

use crate::ast::{
    Arg, BinOp, Block, DimAst, Expr, ExprKind, File, FnDef, FnParam, Ident, IndexItem, InputDecl,
    Item, LossDef, ParamDomain, Stmt, TypeExpr, UnOp, UseDecl,
};
use crate::span::Span;

#[derive(pest_derive::Parser)]
#[grammar = "loss.pest"]
struct LossParser;

/// The deepest bracket nesting (`(`, `[`, `{` together) a file may use.
pub const MAX_NESTING: usize = 256;

/// The deepest expression tree the parser builds. Long operator chains nest
/// in the tree even without brackets (`a + a + ... + a` is left-nested), and
/// every later pass walks the tree recursively, so the bound protects them too.
pub const MAX_EXPR_DEPTH: usize = 1024;

/// Unexpected token or other syntax error.
const SYNTAX: &str = "L1001";
/// Brackets or expressions nested too deeply.
const TOO_DEEP: &str = "L1002";
/// A number literal out of range or malformed.
const BAD_NUMBER: &str = "L1003";
/// A well-formed statement in a place it is not allowed.
const MISPLACED: &str = "L1004";
/// A character the language never uses, outside a comment.
const BAD_CHAR: &str = "L1005";
/// No items at all.
const EMPTY: &str = "L1006";

/// A parse failure: what is wrong, where, and how to fix it when that is known.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct ParseError {
    /// `L1001` ... `L1006`.
    pub code: &'static str,
    pub message: String,
    /// Where the primary label points, for miette.
    pub span: SourceSpan,
    /// The same place as [`ParseError::span`], as our own [`Span`].
    pub span_range: Span,
    pub label: String,
    pub help: Option<String>,
}

impl ParseError {
    fn new(
        code: &'static str,
        span: Span,
        message: impl Into<String>,
        label: impl Into<String>,
    ) -> Self {
        ParseError {
            code,
            message: message.into(),
            span: span.into(),
            span_range: span,
            label: label.into(),
            help: None,
        }
    }

    fn with_help(mut self, help: impl Into<String>) -> Self {
        self.help = Some(help.into());
        self
    }
}

// By hand rather than derived: the derive takes the code as a literal, and
// ours depends on the error.
impl Diagnostic for ParseError {
    fn code<'a>(&'a self) -> Option<Box<dyn fmt::Display + 'a>> {
        Some(Box::new(self.code))
    }

    fn help<'a>(&'a self) -> Option<Box<dyn fmt::Display + 'a>> {
        self.help
            .as_deref()
            .map(|h| Box::new(h) as Box<dyn fmt::Display + 'a>)
    }

    fn labels(&self) -> Option<Box<dyn Iterator<Item = LabeledSpan> + '_>> {
        let label = LabeledSpan::new_primary_with_span(Some(self.label.clone()), self.span);
        Some(Box::new(std::iter::once(label)))
    }
}

/// Parses a whole `.loss` file.
pub fn parse(src: &str) -> std::result::Result<File, ParseError> {
    prescan(src)?;
    let folded = fold_bracketed_newlines(src);
    let mut pairs = LossParser::parse(Rule::file, &folded).map_err(|e| syntax_error(src, &e))?;
    let file = pairs
        .next()
        .expect("grammar: a successful parse yields `file`");
    let builder = Builder {
        src,
        pratt_depth: Cell::new(0),
        in_fn: Cell::new(false),
    };
    let file = builder.parse_file(file)?;
    if file.items.is_empty() {
        return Err(ParseError::new(
            EMPTY,
            Span::new(0, 0),
            "this file defines nothing: no `loss`, `fn` or `use` items",
            "expected an item",
        )
        .with_help("a `.loss` file holds at least one item, like `loss name(x: f32[N] diff) -> f32 { mean(x) }`"));
    }
    Ok(file)
}

/// Newlines end statements, except inside `(...)` and `[...]`, where an
/// expression or an argument list may span lines freely. This blanks those
/// newlines (and comments, which would otherwise run on) to spaces, keeping
/// every byte offset, so the grammar only ever sees significant newlines.
fn fold_bracketed_newlines(src: &str) -> String {
    let mut out = src.as_bytes().to_vec();
    let mut stack: Vec<u8> = Vec::new();
    let mut i = 0;
    while i < out.len() {
        let inside = matches!(stack.last(), Some(b'(' | b'['));
        match out[i] {
            b'/' if out.get(i + 1) == Some(&b'/') => {
                let end = line_end(src, i);
                if inside {
                    // Every byte, so that no bracket in the comment counts and
                    // no non-ASCII letter is left outside one. `i` and `end`
                    // are character boundaries, so the text stays valid UTF-8.
                    out[i..end].fill(b' ');
                }
                i = end;
                continue;
            }
            b'\n' if inside => out[i] = b' ',
            b @ (b'(' | b'[' | b'{') => stack.push(b),
            b')' | b']' | b'}' => {
                stack.pop();
            }
            _ => {}
        }
        i += 1;
    }
    String::from_utf8(out).unwrap_or_else(|_| src.to_string())
}

// ---------------------------------------------------------------------------
// Pre-scan

/// Rejects characters that cannot appear outside a comment, and brackets
/// nested past [`MAX_NESTING`], before pest gets to recurse on them.
fn prescan(src: &str) -> Result<()> {
    let bytes = src.as_bytes();
    let mut depth = 0usize;
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'/' if bytes.get(i + 1) == Some(&b'/') => {
                let end = line_end(src, i);
                check_comment(&src[i..end], i)?;
                i = end;
                continue;
            }
            b'(' | b'[' | b'{' => {
                depth += 1;
                if depth > MAX_NESTING {
                    return Err(ParseError::new(
                        TOO_DEEP,
                        Span::new(i, i + 1),
                        format!("brackets are nested too deeply (more than {MAX_NESTING} levels)"),
                        format!("this `{}` opens level {depth}", bytes[i] as char),
                    )
                    .with_help("split the expression with `let` bindings"));
                }
            }
            b')' | b']' | b'}' => depth = depth.saturating_sub(1),
            b' ' | b'\t' | b'\r' | b'\n' => {}
            b if b.is_ascii_alphanumeric() || b == b'_' => {}
            b',' | b';' | b':' | b'.' | b'+' | b'-' | b'*' | b'/' | b'@' | b'<' | b'>' | b'='
            | b'!' | b'&' | b'|' => {}
            _ => {
                // `i` is always on a character boundary: every other arm
                // steps over ASCII bytes or whole comments.
                let c = src[i..].chars().next().unwrap_or('\u{0}');
                if c == '\u{FEFF}' {
                    i += c.len_utf8();
                    continue;
                }
                return Err(bad_char(c, i));
            }
        }
        i += 1;
    }
    Ok(())
}

/// Comments may hold any text, except what would corrupt the file's display:
/// control characters, text-direction overrides and decoding junk.
fn check_comment(comment: &str, offset: usize) -> Result<()> {
    for (j, c) in comment.char_indices() {
        let harmful =
            (c.is_control() && c != '\t' && c != '\r') || is_bidi_control(c) || c == '\u{FFFD}';
        if harmful {
            return Err(bad_char(c, offset + j));
        }
    }
    Ok(())
}

fn is_bidi_control(c: char) -> bool {
    matches!(c, '\u{202A}'..='\u{202E}' | '\u{2066}'..='\u{2069}' | '\u{200E}' | '\u{200F}' | '\u{061C}')
}

fn bad_char(c: char, at: usize) -> ParseError {
    let span = Span::new(at, at + c.len_utf8());
    let err = |message: String, help: &str| {
        ParseError::new(BAD_CHAR, span, message, "not allowed here").with_help(help)
    };
    match c {
        '\0' => err(
            "NUL byte in the source".into(),
            "this does not look like a text file; is it binary or corrupted?",
        ),
        '\u{FFFD}' => err(
            "invalid UTF-8 in the source (shown as U+FFFD)".into(),
            "save the file as UTF-8",
        ),
        '#' => err("invalid character `#`".into(), "comments start with `//`"),
        '?' => err(
            "invalid character `?`".into(),
            "there is no `c ? a : b`; write `if c { a } else { b }`",
        ),
        '^' => err(
            "invalid character `^`".into(),
            "powers are written `x ** 2`",
        ),
        '%' => err("invalid character `%`".into(), "there is no `%` operator"),
        '"' | '\'' | '`' => err(
            format!("invalid character `{c}`"),
            "`.loss` files have no strings",
        ),
        '\u{2212}' | '\u{2013}' | '\u{2014}' => err(
            format!("invalid character `{c}` (U+{:04X})", c as u32),
            "this is a Unicode dash; write the ASCII minus `-`",
        ),
        _ if c.is_control() || is_bidi_control(c) => err(
            format!("invalid control character U+{:04X}", c as u32),
            "remove it; control characters are allowed nowhere, not even in comments",
        ),
        _ if c.is_ascii() => err(
            format!("invalid character `{c}`"),
            "this character has no meaning in a `.loss` file",
        ),
        _ => err(
            format!("invalid character `{c}` (U+{:04X})", c as u32),
            "names and operators are ASCII; other text is allowed only in comments",
        ),
    }
}

fn line_end(src: &str, from: usize) -> usize {
    src.get(from..)
        .and_then(|rest| rest.find('\n'))
        .map_or(src.len(), |j| from + j)
}

/// The brackets still open at byte `pos`, outermost first.
fn open_brackets(src: &str, pos: usize) -> Vec<(usize, u8)> {
    let bytes = src.as_bytes();
    let mut stack = Vec::new();
    let mut i = 0;
    while i < pos.min(bytes.len()) {
        match bytes[i] {
            b'/' if bytes.get(i + 1) == Some(&b'/') => {
                i = line_end(src, i);
                continue;
            }
            b @ (b'(' | b'[' | b'{') => stack.push((i, b)),
            b')' | b']' | b'}' => {
                stack.pop();
            }
            _ => {}
        }
        i += 1;
    }
    stack
}

fn closer(open: u8) -> u8 {
    match open {
        b'(' => b')',
        b'[' => b']',
        _ => b'}',
    }
}

// ---------------------------------------------------------------------------
// Syntax errors from pest

/// How an expected rule is listed: things first, then tokens, then the
/// catch-all "an operator".
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Rank {
    Thing,
    Token,
    /// Tokens that could continue what came before (`[`, `(`, `<-`, an
    /// operator): only noise when something else was expected too.
    Continuation,
    Operator,
    /// The end of a statement, listed last: "an operator, a new line or `;`".
    End,
}

/// The words a user sees for a rule in "expected ...". Exhaustive on
/// purpose: a new rule must be given a word.
fn describe(rule: Rule) -> (&'static str, Rank) {
    use Rank::*;
    match rule {
        Rule::EOI => ("end of file", Token),
        Rule::WHITESPACE => ("whitespace", Token),
        Rule::COMMENT => ("a comment", Token),
        Rule::nl | Rule::nls => ("a new line", Token),
        Rule::stmt_end => ("a new line or `;`", End),
        Rule::semi => ("`;`", Token),
        Rule::ident_char | Rule::ident => ("a name", Thing),
        Rule::keyword => ("a keyword", Thing),
        Rule::kw_loss => ("`loss`", Token),
        Rule::kw_fn => ("`fn`", Token),
        Rule::kw_margin => ("`margin`", Token),
        Rule::kw_use => ("`use`", Token),
        Rule::kw_let => ("`let`", Token),
        Rule::kw_param => ("`param`", Token),
        Rule::kw_state => ("`state`", Token),
        Rule::kw_report => ("`report`", Token),
        Rule::kw_assert => ("`assert`", Token),
        Rule::kw_if => ("`if`", Token),
        Rule::kw_else => ("`else`", Token),
        Rule::kw_diff => ("`diff`", Token),
        Rule::kw_none => ("`None`", Token),
        Rule::lparen => ("`(`", Continuation),
        Rule::rparen => ("`)`", Token),
        Rule::lbracket => ("`[`", Continuation),
        Rule::rbracket => ("`]`", Token),
        Rule::lbrace => ("`{`", Token),
        Rule::rbrace => ("`}`", Token),
        Rule::comma => ("`,`", Token),
        Rule::colon => ("`:`", Token),
        Rule::path_sep => ("`::`", Token),
        Rule::arrow => ("`->`", Token),
        Rule::update_arrow => ("`<-`", Continuation),
        Rule::assign => ("`=`", Token),
        Rule::digits | Rule::exponent => ("a number", Thing),
        Rule::float_lit | Rule::hex_lit | Rule::int_lit | Rule::bad_number => ("a number", Thing),
        Rule::bool_lit => ("`true` or `false`", Thing),
        Rule::op_or
        | Rule::op_and
        | Rule::op_eq
        | Rule::op_ne
        | Rule::op_le
        | Rule::op_lt
        | Rule::op_ge
        | Rule::op_gt
        | Rule::op_add
        | Rule::op_sub
        | Rule::op_pow
        | Rule::op_mul
        | Rule::op_div
        | Rule::op_matmul
        | Rule::infix_op => ("an operator", Operator),
        Rule::op_neg => ("`-`", Token),
        Rule::op_not => ("`not`", Token),
        Rule::prefix_op => ("`-` or `not`", Token),
        Rule::expr | Rule::operand | Rule::primary | Rule::literal | Rule::expr_stmt => {
            ("an expression", Thing)
        }
        Rule::cond_expr | Rule::cond_operand | Rule::cond_primary => ("a condition", Thing),
        Rule::paren_expr => ("`(`", Token),
        Rule::list_expr => ("a list `[...]`", Thing),
        Rule::if_expr => ("an `if` expression", Thing),
        Rule::name_or_call => ("a name", Thing),
        Rule::call_args => ("`(`", Continuation),
        Rule::arg => ("an argument", Thing),
        Rule::kwarg_name => ("a keyword argument like `axis=1`", Thing),
        Rule::index_postfix => ("`[`", Continuation),
        Rule::index_item => ("an index like `i`, `a:b` or `None`", Thing),
        Rule::slice_rest | Rule::slice_step => ("`:`", Token),
        Rule::block => ("a block `{ ... }`", Thing),
        Rule::stmt => ("a statement", Thing),
        Rule::let_stmt => ("a `let` binding", Thing),
        Rule::param_decl => ("a `param` declaration", Thing),
        Rule::param_domain | Rule::kw_in => ("a domain like `in [0, inf)`", Continuation),
        Rule::domain_open => ("`[` or `(`", Token),
        Rule::domain_close => ("`]` or `)`", Token),
        Rule::domain_bound => ("a number or `inf`", Thing),
        Rule::state_decl => ("a `state` declaration", Thing),
        Rule::report_stmt => ("a `report`", Thing),
        Rule::assert_stmt => ("an `assert`", Thing),
        Rule::type_expr => ("a type like `f32[N]`", Thing),
        Rule::dims => ("`[`", Continuation),
        Rule::dim => ("a dimension (a name like `N` or a number)", Thing),
        // `file` itself is reported when nothing at all could start there.
        Rule::file => ("an item (`loss`, `fn` or `use`)", Thing),
        Rule::item => ("an item (`loss`, `fn` or `use`)", Thing),
        Rule::use_decl => ("a `use` declaration", Thing),
        Rule::use_group => ("`{`", Token),
        Rule::loss_def => ("a `loss` definition", Thing),
        Rule::input_decl => ("an input declaration like `logits: f32[N, C] diff`", Thing),
        Rule::fn_def => ("a `fn` definition", Thing),
        Rule::fn_param => ("a parameter name", Thing),
    }
}

/// Reserved words; `margin` and `diff` are keywords only in context.
const KEYWORDS: &[&str] = &[
    "loss", "fn", "use", "let", "param", "state", "report", "if", "else", "and", "or", "not",
    "true", "false", "assert", "None",
];

const IF_ELSE_HELP: &str = "an `if` expression needs an `else` branch: both branches give a value";

/// The token at `pos`, for "found ...".
struct Found {
    span: Span,
    text: String,
}

impl Found {
    fn at(src: &str, pos: usize) -> Found {
        let pos = pos.min(src.len());
        let rest = src.get(pos..).unwrap_or("");
        let bytes = rest.as_bytes();
        let len = match bytes.first() {
            None => 0,
            Some(b) if b.is_ascii_alphanumeric() || *b == b'_' => bytes
                .iter()
                .position(|b| !(b.is_ascii_alphanumeric() || *b == b'_' || *b == b'.'))
                .unwrap_or(bytes.len()),
            Some(b'.') if bytes.get(1).is_some_and(u8::is_ascii_digit) => {
                1 + bytes[1..]
                    .iter()
                    .position(|b| !b.is_ascii_alphanumeric())
                    .unwrap_or(bytes.len() - 1)
            }
            Some(_) => {
                const PAIRS: &[&str] =
                    &["**", "<=", ">=", "==", "!=", "<-", "->", "::", "&&", "||"];
                if PAIRS.iter().any(|p| rest.starts_with(p)) {
                    2
                } else {
                    rest.chars().next().map_or(0, char::len_utf8)
                }
            }
        };
        Found {
            span: Span::new(pos, pos + len),
            text: rest[..len].to_string(),
        }
    }

    fn is_eof(&self) -> bool {
        self.text.is_empty()
    }

    fn is_newline(&self) -> bool {
        self.text == "\n"
    }

    fn show(&self) -> String {
        if self.is_eof() {
            "end of file".to_string()
        } else if self.is_newline() {
            "a new line".to_string()
        } else {
            format!("`{}`", truncate(&self.text, 40))
        }
    }
}

fn truncate(s: &str, max: usize) -> String {
    if s.chars().count() <= max {
        s.to_string()
    } else {
        let head: String = s.chars().take(max).collect();
        format!("{head}...")
    }
}

fn join_or(words: &[&str]) -> String {
    match words {
        [] => String::new(),
        [one] => (*one).to_string(),
        [init @ .., last] => format!("{} or {last}", init.join(", ")),
    }
}

fn syntax_error(src: &str, err: &pest::error::Error<Rule>) -> ParseError {
    let pos = match err.location {
        InputLocation::Pos(p) => p,
        InputLocation::Span((p, _)) => p,
    };
    let positives: &[Rule] = match &err.variant {
        ErrorVariant::ParsingError { positives, .. } => positives,
        ErrorVariant::CustomError { .. } => &[],
    };
    let found = Found::at(src, pos);

    // The alternatives that can start an operand are one thing to a user.
    // Only an operand start tries a prefix operator, so that marks them.
    let operand_start = positives.contains(&Rule::op_neg);
    let mut expected: Vec<(Rank, &'static str)> = positives
        .iter()
        .map(|r| match r {
            Rule::op_neg
            | Rule::op_not
            | Rule::ident
            | Rule::float_lit
            | Rule::hex_lit
            | Rule::int_lit
            | Rule::bad_number
            | Rule::bool_lit
            | Rule::kw_if
            | Rule::lparen
            | Rule::lbracket
                if operand_start =>
            {
                (Rank::Thing, "an expression")
            }
            r => {
                let (word, rank) = describe(*r);
                (rank, word)
            }
        })
        .collect();
    if expected
        .iter()
        .any(|(rank, _)| !matches!(rank, Rank::Continuation | Rank::Operator))
    {
        expected.retain(|(rank, _)| *rank != Rank::Continuation);
    }
    expected.sort_by_key(|(rank, _)| *rank);
    let mut words: Vec<&str> = Vec::new();
    for (rank, w) in expected {
        // Two words, so that a list reads "an operator, a new line or `;`".
        let split: &[&str] = if rank == Rank::End {
            &["a new line", "`;`"]
        } else {
            &[w]
        };
        for w in split {
            if !words.contains(w) {
                words.push(w);
            }
        }
    }
    let list = join_or(&words);
    let (message, label) = if list.is_empty() {
        (
            format!("unexpected {}", found.show()),
            "unexpected here".to_string(),
        )
    } else {
        (
            format!("expected {list}, found {}", found.show()),
            format!("expected {list}"),
        )
    };
    let mut error = ParseError::new(SYNTAX, found.span, message, label);

    let expects = |rule: Rule| positives.contains(&rule);
    let before = src.get(..pos).unwrap_or("").trim_end();
    let prev_word = last_word(before);
    let is_keyword = KEYWORDS.contains(&found.text.as_str());
    let line_start = src
        .get(..pos)
        .unwrap_or("")
        .rsplit('\n')
        .next()
        .unwrap_or("")
        .trim()
        .is_empty();
    // Inside `(...)` and `[...]` newlines are spaces, so nothing there is
    // about where a line starts or ends.
    let open = open_brackets(src, pos);
    let in_brackets = matches!(open.last(), Some((_, b'(' | b'[')));
    // A statement ended with the line before, and this line cannot start one.
    let starts_line = line_start && pos > 0 && !in_brackets && expects(Rule::stmt);
    let help: Option<String> = if expects(Rule::kw_else) {
        Some(IF_ELSE_HELP.into())
    } else if starts_line
        && matches!(
            found.text.as_str(),
            "+" | "*"
                | "/"
                | "@"
                | "**"
                | "=="
                | "!="
                | "<"
                | ">"
                | "<="
                | ">="
                | "&"
                | "|"
                | "and"
                | "or"
        )
    {
        Some("a new line ends the statement, so a line cannot start with an operator: end the previous line with the operator, or wrap the whole expression in parentheses".into())
    } else if starts_line && found.text == "<-" {
        Some(match prev_word {
            Some(name) if is_name(name) => format!(
                "a new line ends the statement, so a line cannot start with `<-`: write `{name} <- ...` on one line"
            ),
            _ => "a new line ends the statement, so a line cannot start with `<-`: keep the target and `<-` on one line".into(),
        })
    } else if found.is_newline() {
        Some(if expects(Rule::lbrace) {
            "a new line ends the statement here: put the `{` on this line".into()
        } else {
            "a new line ends the statement here; to break a long line, break it after an operator, `=`, `<-` or `->`, or inside `(...)`".into()
        })
    } else if found.text == "if" && expects(Rule::cond_expr) {
        Some("an `if` used in a condition must be in parentheses: `if (if a { b } else { c }) { ... }`".into())
    } else if is_keyword
        && [
            Rule::ident,
            Rule::dim,
            Rule::fn_param,
            Rule::arg,
            Rule::expr,
            Rule::stmt,
        ]
        .iter()
        .any(|r| expects(*r))
    {
        Some(format!(
            "`{}` is a keyword and can't be used as a name",
            found.text
        ))
    } else if found.text == "=" && (expects(Rule::stmt) || expects(Rule::op_add)) {
        match prev_word {
            Some(name) if declares_state(before, name) => {
                Some(format!("a `state` is updated with `<-`: `{name} <- ...`"))
            }
            Some(name) if !KEYWORDS.contains(&name) => Some(format!(
                "to bind a name, write `let {name} = ...`; to compare two values, use `==`"
            )),
            _ => Some("to compare two values, use `==`".into()),
        }
    } else if expects(Rule::arrow) && is_name(&found.text) {
        Some(format!(
            "the return type goes after `->`, like `-> {}`",
            found.text
        ))
    } else if expects(Rule::colon)
        && !expects(Rule::assign)
        && matches!(found.text.as_str(), "," | ")" | "=")
    {
        let kw = words_before(before, 2);
        match kw.as_deref() {
            Some("param") => Some("a `param` needs a type, like `param gamma: f32 = 2.0`".into()),
            Some("state") => Some("a `state` needs a type, like `state step: i64 = 0`".into()),
            _ => Some("each input needs a type, like `logits: f32[N, C] diff`".into()),
        }
    } else if (found.text == "&" && before.ends_with('&')) || found.text == "&&" {
        Some("logical and is written `and` (or `&`)".into())
    } else if (found.text == "|" && before.ends_with('|')) || found.text == "||" {
        Some("logical or is written `or` (or `|`)".into())
    } else if found.text.len() > 1 && found.text.starts_with('.') {
        Some("a number starts with a digit, like `0.5`".into())
    } else if found.text == "." {
        let after = src.get(found.span.end..).unwrap_or("");
        let len = after
            .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
            .unwrap_or(after.len());
        match &after[..len] {
            "" => Some("there are no methods or fields; `.` only appears in numbers".into()),
            m => Some(format!(
                "there are no methods: write `{m}(x)` instead of `x.{m}()`"
            )),
        }
    } else if found.text == "def" {
        Some("functions are written `fn name(args) { ... }`".into())
    } else if found.text == "-" && expects(Rule::dim) {
        Some("a dimension is a size: a name like `N` or a whole number".into())
    } else if expects(Rule::comma)
        && !src.get(before.len()..pos).unwrap_or("").contains('\n')
        && (is_name(&found.text) || found.text.starts_with(|c: char| c.is_ascii_digit()))
    {
        // On the next line, a missing closer is likelier: see below.
        Some(format!(
            "is a `,` missing before `{}`?",
            truncate(&found.text, 40)
        ))
    } else if found.text == "None" {
        Some("`None` only adds an axis inside an index, like `x[:, None]`".into())
    } else if found.text == "return" || prev_word == Some("return") {
        Some("there is no `return`: a block's value is its last expression".into())
    } else if found.text == "(" && before.ends_with([')', ']']) {
        Some("only a name can be called; is an operator missing before `(`?".into())
    } else if expects(Rule::stmt_end)
        && matches!(
            found.text.as_str(),
            "let" | "param" | "state" | "report" | "assert"
        )
    {
        Some("statements are separated by a new line or `;`".into())
    } else if expects(Rule::stmt_end)
        && (is_name(&found.text)
            || found.text.starts_with(|c: char| c.is_ascii_digit())
            || matches!(found.text.as_str(), "if" | "not" | "true" | "false"))
    {
        Some("two expressions side by side: is an operator or a `,` missing?".into())
    } else {
        None
    };

    // Bracket context: the most common cause of a confusing error far from
    // the real mistake. (A second label would show it better, but would
    // grow `ParseError` past what clippy accepts in a `Result`.)
    let still_open = |at: usize, b: u8| {
        format!(
            "the `{}` on line {} is still open",
            b as char,
            line_of(src, at) + 1
        )
    };
    let bracket_help = match (open.last(), found.text.as_bytes().first()) {
        (Some(&(at, b)), None) => Some(format!(
            "the `{opener}` on line {} is never closed; every `{opener}` needs a matching `{}`",
            line_of(src, at) + 1,
            closer(b) as char,
            opener = b as char,
        )),
        (top, Some(&c @ (b')' | b']' | b'}'))) if top.is_none_or(|&(_, b)| closer(b) != c) => {
            match open.iter().rev().find(|(_, b)| closer(*b) == c) {
                // Its opener is there, but something opened later is not
                // closed yet.
                Some(_) => top.map(|&(at, b)| {
                    format!(
                        "{}; close it with `{}` first",
                        still_open(at, b),
                        closer(b) as char
                    )
                }),
                None => Some(match top {
                    Some(&(at, b)) => format!(
                        "this `{}` has no matching opening bracket; {}",
                        c as char,
                        still_open(at, b)
                    ),
                    None => format!("this `{}` has no matching opening bracket", c as char),
                }),
            }
        }
        // Braces span lines by nature; an open `(` or `[` on an earlier
        // line usually means a missing closer.
        (Some(&(at, b)), Some(_))
            if b != b'{'
                && words.contains(&if b == b'(' { "`)`" } else { "`]`" })
                && line_of(src, at) != line_of(src, pos) =>
        {
            Some(still_open(at, b))
        }
        _ => None,
    };
    if let Some(help) = help.or(bracket_help) {
        error = error.with_help(help);
    }
    error
}

/// Whether `text` declares a state named `name` (`state name:`).
fn declares_state(text: &str, name: &str) -> bool {
    text.match_indices("state").any(|(i, _)| {
        let rest = text[i + "state".len()..].trim_start();
        let at_word_start = text[..i]
            .chars()
            .next_back()
            .is_none_or(|c| !(c.is_ascii_alphanumeric() || c == '_'));
        at_word_start && rest.starts_with(name) && rest[name.len()..].trim_start().starts_with(':')
    })
}

fn is_name(s: &str) -> bool {
    s.bytes()
        .next()
        .is_some_and(|b| b.is_ascii_alphabetic() || b == b'_')
        && !KEYWORDS.contains(&s)
}

/// The identifier-like word that ends `text`, if any.
fn last_word(text: &str) -> Option<&str> {
    let start = text
        .bytes()
        .rposition(|b| !(b.is_ascii_alphanumeric() || b == b'_'))
        .map_or(0, |i| i + 1);
    let word = &text[start..];
    (!word.is_empty()).then_some(word)
}

/// The `n`-th word back from the end of `text` (1 = the last one).
fn words_before(text: &str, n: usize) -> Option<String> {
    let mut rest = text;
    let mut word = None;
    for _ in 0..n {
        rest = rest.trim_end();
        let w = last_word(rest)?;
        rest = &rest[..rest.len() - w.len()];
        word = Some(w.to_string());
    }
    word
}

fn line_of(src: &str, pos: usize) -> usize {
    src.as_bytes()[..pos.min(src.len())]
        .iter()
        .filter(|b| **b == b'\n')
        .count()
}

// ---------------------------------------------------------------------------
// Pairs to AST

static PRATT: LazyLock<PrattParser<Rule>> = LazyLock::new(|| {
    PrattParser::new()
        .op(Op::infix(Rule::op_or, Assoc::Left))
        .op(Op::infix(Rule::op_and, Assoc::Left))
        .op(Op::infix(Rule::op_eq, Assoc::Left)
            | Op::infix(Rule::op_ne, Assoc::Left)
            | Op::infix(Rule::op_lt, Assoc::Left)
            | Op::infix(Rule::op_le, Assoc::Left)
            | Op::infix(Rule::op_gt, Assoc::Left)
            | Op::infix(Rule::op_ge, Assoc::Left))
        .op(Op::infix(Rule::op_add, Assoc::Left) | Op::infix(Rule::op_sub, Assoc::Left))
        .op(Op::infix(Rule::op_mul, Assoc::Left)
            | Op::infix(Rule::op_div, Assoc::Left)
            | Op::infix(Rule::op_matmul, Assoc::Left))
        // Below `**`: `-x ** 2` is `-(x ** 2)`, as in Python.
        .op(Op::prefix(Rule::op_neg) | Op::prefix(Rule::op_not))
        .op(Op::infix(Rule::op_pow, Assoc::Right))
        .op(Op::postfix(Rule::index_postfix))
});

type Result<T> = std::result::Result<T, ParseError>;

struct Builder<'s> {
    src: &'s str,
    /// Pratt-parser recursion currently on the stack, over all enclosing
    /// expressions: prefix operators and `**` recurse once each.
    pratt_depth: Cell<usize>,
    in_fn: Cell<bool>,
}

/// An expression and what its parent needs to know about it.
struct Parsed {
    expr: Expr,
    /// Height of the expression tree, for [`MAX_EXPR_DEPTH`].
    depth: usize,
    /// `9223372036854775808`, held as `i64::MIN`: valid only directly under
    /// a unary minus.
    bare_min_int: bool,
}

impl Parsed {
    fn leaf(kind: ExprKind, span: Span) -> Parsed {
        Parsed {
            expr: Expr { kind, span },
            depth: 1,
            bare_min_int: false,
        }
    }
}

/// What a line of a block turned out to be.
enum Line {
    Stmt(Stmt),
    Expr(Expr),
}

fn span_of(pair: &Pair<'_, Rule>) -> Span {
    let s = pair.as_span();
    Span::new(s.start(), s.end())
}

/// A rule that ends in an optional part also covers the whitespace pest
/// skipped while looking for it; the last token inside it does not.
fn tight_span(pair: &Pair<'_, Rule>) -> Span {
    let start = pair.as_span().start();
    let mut last = pair.clone();
    while let Some(inner) = last.clone().into_inner().last() {
        last = inner;
    }
    Span::new(start, last.as_span().end().max(start))
}

fn ident(pair: &Pair<'_, Rule>) -> Ident {
    Ident {
        name: pair.as_str().to_string(),
        span: span_of(pair),
    }
}

fn too_deep(span: Span) -> ParseError {
    ParseError::new(
        TOO_DEEP,
        span,
        format!("expression is nested too deeply (more than {MAX_EXPR_DEPTH} levels)"),
        "the limit is passed here",
    )
    .with_help("split the expression with `let` bindings")
}

fn int_out_of_range(text: &str, span: Span) -> ParseError {
    let shown = truncate(text, 40);
    let err = ParseError::new(
        BAD_NUMBER,
        span,
        format!("integer literal `{shown}` is out of range for i64"),
        "out of range",
    );
    if text.starts_with("0x") || text.starts_with("0X") {
        err.with_help(
            "an integer literal is a signed 64-bit integer: at most 0x7FFF_FFFF_FFFF_FFFF",
        )
    } else {
        err.with_help(
            "an integer literal is at most 9223372036854775807; write a float like `1e20` for a large real number",
        )
    }
}

fn malformed_number(text: &str, span: Span) -> ParseError {
    ParseError::new(
        BAD_NUMBER,
        span,
        format!("malformed number `{}`", truncate(text, 40)),
        "not a valid number",
    )
    .with_help("numbers look like `3`, `0x1F`, `2.5`, `1e-12`; a name cannot start with a digit")
}

/// The value of an integer literal, unsigned so that `2^63` can wait for
/// a unary minus.
fn int_value(pair: &Pair<'_, Rule>) -> Result<u64> {
    let text = pair.as_str();
    let span = span_of(pair);
    let digits: String = text.chars().filter(|c| *c != '_').collect();
    let value = match digits
        .strip_prefix("0x")
        .or_else(|| digits.strip_prefix("0X"))
    {
        Some(hex) => u64::from_str_radix(hex, 16),
        None => digits.parse::<u64>(),
    };
    value.map_err(|_| int_out_of_range(text, span))
}

impl<'s> Builder<'s> {
    fn parse_file(&self, pair: Pair<'s, Rule>) -> Result<File> {
        let mut items = Vec::new();
        for p in pair.into_inner() {
            if p.as_rule() == Rule::item {
                items.push(self.parse_item(p)?);
            }
        }
        Ok(File { items })
    }

    fn parse_item(&self, pair: Pair<'s, Rule>) -> Result<Item> {
        let inner = pair
            .into_inner()
            .next()
            .expect("grammar: an item has one child");
        match inner.as_rule() {
            Rule::use_decl => Ok(Item::Use(self.parse_use_decl(inner)?)),
            Rule::loss_def => Ok(Item::Loss(self.parse_loss_def(inner)?)),
            Rule::fn_def => Ok(Item::Fn(self.parse_fn_def(inner)?)),
            r => unreachable!("grammar: item is use, loss or fn, not {r:?}"),
        }
    }

    fn parse_use_decl(&self, pair: Pair<'s, Rule>) -> Result<UseDecl> {
        let span = tight_span(&pair);
        let mut path = Vec::new();
        let mut items = Vec::new();
        for p in pair.into_inner() {
            match p.as_rule() {
                Rule::ident => path.push(ident(&p)),
                Rule::use_group => items = self.parse_use_group(p),
                _ => {}
            }
        }
        if items.is_empty() {
            // `use a::b::c`: the last segment is the item.
            items.extend(path.pop());
        }
        if path.is_empty() {
            return Err(ParseError::new(
                SYNTAX,
                span,
                "a `use` needs a module path and an item",
                "nothing to import this from",
            )
            .with_help(
                "write `use std::weighting::ema;` or `use std::weighting::{ema, safe_div};`",
            ));
        }
        Ok(UseDecl { path, items, span })
    }

    fn parse_use_group(&self, pair: Pair<'s, Rule>) -> Vec<Ident> {
        pair.into_inner()
            .filter(|p| p.as_rule() == Rule::ident)
            .map(|p| ident(&p))
            .collect()
    }

    fn parse_loss_def(&self, pair: Pair<'s, Rule>) -> Result<LossDef> {
        let span = span_of(&pair);
        let doc = doc_comment(self.src, span.start);
        let mut name = None;
        let mut inputs = Vec::new();
        let mut ret = None;
        let mut body = None;
        for p in pair.into_inner() {
            match p.as_rule() {
                Rule::ident => name = Some(ident(&p)),
                Rule::input_decl => inputs.push(self.parse_input_decl(p)?),
                Rule::type_expr => ret = Some(self.parse_type_expr(p)?),
                Rule::block => body = Some(self.parse_block(p, true)?.0),
                _ => {}
            }
        }
        Ok(LossDef {
            doc,
            name: name.expect("grammar: a loss has a name"),
            inputs,
            ret,
            body: body.expect("grammar: a loss has a body"),
            span,
        })
    }

    fn parse_input_decl(&self, pair: Pair<'s, Rule>) -> Result<InputDecl> {
        let span = tight_span(&pair);
        let doc = doc_comment(self.src, span.start);
        let mut name = None;
        let mut ty = None;
        let mut diff = false;
        for p in pair.into_inner() {
            match p.as_rule() {
                Rule::ident => name = Some(ident(&p)),
                Rule::type_expr => ty = Some(self.parse_type_expr(p)?),
                Rule::kw_diff => diff = true,
                _ => {}
            }
        }
        Ok(InputDecl {
            doc,
            name: name.expect("grammar: an input has a name"),
            ty: ty.expect("grammar: an input has a type"),
            diff,
            span,
        })
    }

    fn parse_fn_def(&self, pair: Pair<'s, Rule>) -> Result<FnDef> {
        let span = span_of(&pair);
        let doc = doc_comment(self.src, span.start);
        let mut margin = false;
        let mut name = None;
        let mut params = Vec::new();
        let mut ret = None;
        let mut body = None;
        for p in pair.into_inner() {
            match p.as_rule() {
                Rule::kw_margin => margin = true,
                Rule::ident => name = Some(ident(&p)),
                Rule::fn_param => params.push(self.parse_fn_param(p)?),
                Rule::type_expr => ret = Some(self.parse_type_expr(p)?),
                Rule::block => {
                    self.in_fn.set(true);
                    let block = self.parse_block(p, true);
                    self.in_fn.set(false);
                    body = Some(block?.0);
                }
                _ => {}
            }
        }
        Ok(FnDef {
            doc,
            margin,
            name: name.expect("grammar: a fn has a name"),
            params,
            ret,
            body: body.expect("grammar: a fn has a body"),
            span,
        })
    }

    fn parse_fn_param(&self, pair: Pair<'s, Rule>) -> Result<FnParam> {
        let span = tight_span(&pair);
        let mut name = None;
        let mut ty = None;
        for p in pair.into_inner() {
            match p.as_rule() {
                Rule::ident => name = Some(ident(&p)),
                Rule::type_expr => ty = Some(self.parse_type_expr(p)?),
                _ => {}
            }
        }
        Ok(FnParam {
            name: name.expect("grammar: a fn parameter has a name"),
            ty,
            span,
        })
    }

    fn parse_type_expr(&self, pair: Pair<'s, Rule>) -> Result<TypeExpr> {
        let span = tight_span(&pair);
        let mut dtype = None;
        let mut dims = None;
        for p in pair.into_inner() {
            match p.as_rule() {
                Rule::ident => dtype = Some(ident(&p)),
                Rule::dims => dims = Some(self.parse_dims(p)?),
                _ => {}
            }
        }
        Ok(TypeExpr {
            dtype: dtype.expect("grammar: a type starts with a dtype"),
            dims,
            span,
        })
    }

    fn parse_dims(&self, pair: Pair<'s, Rule>) -> Result<Vec<DimAst>> {
        pair.into_inner()
            .filter(|p| p.as_rule() == Rule::dim)
            .map(|p| self.parse_dim(p))
            .collect()
    }

    fn parse_dim(&self, pair: Pair<'s, Rule>) -> Result<DimAst> {
        let inner = pair
            .into_inner()
            .next()
            .expect("grammar: a dim has one child");
        let span = span_of(&inner);
        match inner.as_rule() {
            Rule::ident => Ok(DimAst::Name(ident(&inner))),
            Rule::int_lit | Rule::hex_lit => {
                let value = int_value(&inner)?;
                let value =
                    i64::try_from(value).map_err(|_| int_out_of_range(inner.as_str(), span))?;
                Ok(DimAst::Lit(value, span))
            }
            _ if inner.as_str().parse::<f64>().is_ok() => Err(ParseError::new(
                BAD_NUMBER,
                span,
                format!(
                    "a dimension must be a whole number or a name, not `{}`",
                    truncate(inner.as_str(), 40)
                ),
                "not a whole number",
            )
            .with_help("dimensions are sizes, like `f32[N, 3]`")),
            _ => Err(malformed_number(inner.as_str(), span)),
        }
    }

    /// `top_level`: the body of a `loss` or `fn`, where `param` and `state`
    /// may appear (in a `loss`). Returns the block and its tree height.
    fn parse_block(&self, pair: Pair<'s, Rule>, top_level: bool) -> Result<(Block, usize)> {
        let span = span_of(&pair);
        let mut stmts = Vec::new();
        let mut tail: Option<Expr> = None;
        let mut depth = 0;
        for p in pair.into_inner() {
            if p.as_rule() != Rule::stmt {
                continue;
            }
            if let Some(e) = tail.take() {
                return Err(misplaced_expr(self.src, &e, p.as_span().start()));
            }
            let (line, d) = self.parse_stmt(p, top_level)?;
            depth = depth.max(d);
            match line {
                Line::Stmt(s) => stmts.push(s),
                Line::Expr(e) => tail = Some(e),
            }
        }
        let block = Block {
            stmts,
            tail: tail.map(Box::new),
            span,
        };
        Ok((block, depth + 1))
    }

    fn parse_stmt(&self, pair: Pair<'s, Rule>, top_level: bool) -> Result<(Line, usize)> {
        let inner = pair
            .into_inner()
            .next()
            .expect("grammar: a stmt has one child");
        match inner.as_rule() {
            Rule::let_stmt => self.parse_let_stmt(inner),
            Rule::param_decl => self.parse_param_decl(inner, top_level),
            Rule::state_decl => self.parse_state_decl(inner, top_level),
            Rule::report_stmt => self.parse_report_stmt(inner),
            Rule::assert_stmt => self.parse_assert_stmt(inner),
            Rule::expr_stmt => self.parse_expr_stmt(inner),
            r => unreachable!("grammar: not a statement: {r:?}"),
        }
    }

    fn parse_let_stmt(&self, pair: Pair<'s, Rule>) -> Result<(Line, usize)> {
        let start = pair.as_span().start();
        let mut name = None;
        let mut ty = None;
        let mut value = None;
        for p in pair.into_inner() {
            match p.as_rule() {
                Rule::ident => name = Some(ident(&p)),
                Rule::type_expr => ty = Some(self.parse_type_expr(p)?),
                Rule::expr => value = Some(self.parse_expr(p)?),
                _ => {}
            }
        }
        let value = value.expect("grammar: `let` has a value");
        let span = Span::new(start, value.expr.span.end);
        let stmt = Stmt::Let {
            name: name.expect("grammar: `let` has a name"),
            ty,
            value: value.expr,
            span,
        };
        Ok((Line::Stmt(stmt), value.depth))
    }

    /// The parts shared by `param` and `state`: name, type, value, span, doc.
    fn parse_decl(
        &self,
        pair: Pair<'s, Rule>,
        top_level: bool,
    ) -> Result<(Ident, TypeExpr, Parsed, Span, Option<String>)> {
        let start = pair.as_span().start();
        let what = if pair.as_rule() == Rule::param_decl {
            "param"
        } else {
            "state"
        };
        let mut name = None;
        let mut ty = None;
        let mut value = None;
        for p in pair.into_inner() {
            match p.as_rule() {
                Rule::ident => name = Some(ident(&p)),
                Rule::type_expr => ty = Some(self.parse_type_expr(p)?),
                Rule::expr => value = Some(self.parse_expr(p)?),
                _ => {}
            }
        }
        let value = value.expect("grammar: a declaration has a value");
        let span = Span::new(start, value.expr.span.end);
        if self.in_fn.get() {
            let help = if what == "param" {
                "a `fn` is pure: declare the param in the `loss` and pass it to the `fn` as an argument"
            } else {
                "a `fn` is pure: keep the state in the `loss` and pass its value to the `fn` as an argument"
            };
            return Err(ParseError::new(
                MISPLACED,
                span,
                format!("`{what}` is not allowed inside a `fn`"),
                format!("`{what}` inside a `fn`"),
            )
            .with_help(help));
        }
        if !top_level {
            return Err(ParseError::new(
                MISPLACED,
                span,
                format!("`{what}` must be declared at the top level of a `loss` body"),
                format!("`{what}` inside a nested block"),
            )
            .with_help(format!("move the `{what}` to the start of the `loss` body")));
        }
        let doc = doc_comment(self.src, start);
        Ok((
            name.expect("grammar: a declaration has a name"),
            ty.expect("grammar: a declaration has a type"),
            value,
            span,
            doc,
        ))
    }

    fn parse_param_decl(&self, pair: Pair<'s, Rule>, top_level: bool) -> Result<(Line, usize)> {
        let domain = pair
            .clone()
            .into_inner()
            .find(|p| p.as_rule() == Rule::param_domain)
            .map(|d| parse_domain(&d));
        let (name, ty, default, mut span, doc) = self.parse_decl(pair, top_level)?;
        if let Some(d) = &domain {
            span = Span::new(span.start, d.span.end);
        }
        let depth = default.depth;
        let stmt = Stmt::Param {
            doc,
            name,
            ty,
            default: default.expr,
            domain,
            span,
        };
        Ok((Line::Stmt(stmt), depth))
    }

    fn parse_state_decl(&self, pair: Pair<'s, Rule>, top_level: bool) -> Result<(Line, usize)> {
        let (name, ty, init, span, doc) = self.parse_decl(pair, top_level)?;
        let depth = init.depth;
        let stmt = Stmt::State {
            doc,
            name,
            ty,
            init: init.expr,
            span,
        };
        Ok((Line::Stmt(stmt), depth))
    }

    fn parse_report_stmt(&self, pair: Pair<'s, Rule>) -> Result<(Line, usize)> {
        let start = pair.as_span().start();
        let mut name = None;
        let mut value = None;
        for p in pair.into_inner() {
            match p.as_rule() {
                Rule::ident => name = Some(ident(&p)),
                Rule::expr => value = Some(self.parse_expr(p)?),
                _ => {}
            }
        }
        let value = value.expect("grammar: `report` has a value");
        let stmt = Stmt::Report {
            name: name.expect("grammar: `report` has a name"),
            span: Span::new(start, value.expr.span.end),
            value: value.expr,
        };
        Ok((Line::Stmt(stmt), value.depth))
    }

    fn parse_assert_stmt(&self, pair: Pair<'s, Rule>) -> Result<(Line, usize)> {
        let start = pair.as_span().start();
        let cond = pair
            .into_inner()
            .find(|p| p.as_rule() == Rule::expr)
            .expect("grammar: `assert` has a condition");
        let cond = self.parse_expr(cond)?;
        let stmt = Stmt::Assert {
            span: Span::new(start, cond.expr.span.end),
            cond: cond.expr,
        };
        Ok((Line::Stmt(stmt), cond.depth))
    }

    /// An expression, or an update `target <- value` whose target was parsed
    /// as an expression and must be `name` or `name[index]`.
    fn parse_expr_stmt(&self, pair: Pair<'s, Rule>) -> Result<(Line, usize)> {
        let mut exprs = pair.into_inner().filter(|p| p.as_rule() == Rule::expr);
        let lhs = self.parse_expr(exprs.next().expect("grammar: an expression statement"))?;
        let Some(rhs) = exprs.next() else {
            return Ok((Line::Expr(lhs.expr), lhs.depth));
        };
        let rhs = self.parse_expr(rhs)?;
        let span = lhs.expr.span.join(rhs.expr.span);
        let depth = lhs.depth.max(rhs.depth);
        let (target, index) = update_target(lhs.expr)?;
        let stmt = Stmt::Update {
            target,
            index,
            value: rhs.expr,
            span,
        };
        Ok((Line::Stmt(stmt), depth))
    }

    /// Gives structure to a flat `expr` or `cond_expr`.
    fn parse_expr(&self, pair: Pair<'s, Rule>) -> Result<Parsed> {
        let pairs: Pairs<'s, Rule> = pair.into_inner();
        // Prefix operators and `**` are the Pratt parser's recursion; bound it
        // before it starts, counting the levels of enclosing expressions too.
        let outer = self.pratt_depth.get();
        let mut levels = 1;
        for p in pairs.clone() {
            if matches!(p.as_rule(), Rule::op_neg | Rule::op_not | Rule::op_pow) {
                levels += 1;
                if outer + levels > MAX_EXPR_DEPTH {
                    return Err(too_deep(span_of(&p)));
                }
            }
        }
        self.pratt_depth.set(outer + levels);
        let parsed = PRATT
            .map_primary(|p| self.parse_primary(p))
            .map_prefix(|op, rhs| self.apply_prefix(op, rhs?))
            .map_postfix(|lhs, op| self.apply_index(lhs?, op))
            .map_infix(|lhs, op, rhs| self.apply_binary(lhs?, op, rhs?))
            .parse(pairs);
        self.pratt_depth.set(outer);
        let parsed = parsed?;
        self.check_bare(&parsed)?;
        Ok(parsed)
    }

    fn apply_prefix(&self, op: Pair<'s, Rule>, rhs: Parsed) -> Result<Parsed> {
        let span = span_of(&op).join(rhs.expr.span);
        let op = match op.as_rule() {
            Rule::op_neg => UnOp::Neg,
            Rule::op_not => UnOp::Not,
            r => unreachable!("grammar: not a prefix operator: {r:?}"),
        };
        if rhs.bare_min_int && op == UnOp::Neg {
            return Ok(Parsed::leaf(ExprKind::Int(i64::MIN), span));
        }
        self.check_bare(&rhs)?;
        self.node(
            ExprKind::Unary {
                op,
                expr: Box::new(rhs.expr),
            },
            span,
            rhs.depth,
        )
    }

    fn apply_binary(&self, lhs: Parsed, op: Pair<'s, Rule>, rhs: Parsed) -> Result<Parsed> {
        self.check_bare(&lhs)?;
        self.check_bare(&rhs)?;
        let bin = match op.as_rule() {
            Rule::op_or => BinOp::Or,
            Rule::op_and => BinOp::And,
            Rule::op_eq => BinOp::Eq,
            Rule::op_ne => BinOp::Ne,
            Rule::op_lt => BinOp::Lt,
            Rule::op_le => BinOp::Le,
            Rule::op_gt => BinOp::Gt,
            Rule::op_ge => BinOp::Ge,
            Rule::op_add => BinOp::Add,
            Rule::op_sub => BinOp::Sub,
            Rule::op_mul => BinOp::Mul,
            Rule::op_div => BinOp::Div,
            Rule::op_matmul => BinOp::MatMul,
            Rule::op_pow => BinOp::Pow,
            r => unreachable!("grammar: not an infix operator: {r:?}"),
        };
        let depth = lhs.depth.max(rhs.depth) + 1;
        if depth > MAX_EXPR_DEPTH {
            return Err(too_deep(span_of(&op)));
        }
        let span = lhs.expr.span.join(rhs.expr.span);
        Ok(Parsed {
            expr: Expr {
                kind: ExprKind::Binary {
                    op: bin,
                    lhs: Box::new(lhs.expr),
                    rhs: Box::new(rhs.expr),
                },
                span,
            },
            depth,
            bare_min_int: false,
        })
    }

    fn apply_index(&self, base: Parsed, op: Pair<'s, Rule>) -> Result<Parsed> {
        self.check_bare(&base)?;
        let span = Span::new(base.expr.span.start, span_of(&op).end);
        let (indices, depth) = self.parse_index_postfix(op)?;
        self.node(
            ExprKind::Index {
                base: Box::new(base.expr),
                indices,
            },
            span,
            depth.max(base.depth),
        )
    }

    /// A node whose tallest child has height `child_depth`.
    fn node(&self, kind: ExprKind, span: Span, child_depth: usize) -> Result<Parsed> {
        let depth = child_depth + 1;
        if depth > MAX_EXPR_DEPTH {
            return Err(too_deep(span));
        }
        Ok(Parsed {
            expr: Expr { kind, span },
            depth,
            bare_min_int: false,
        })
    }

    /// `9223372036854775808` is only valid right under a unary minus.
    fn check_bare(&self, parsed: &Parsed) -> Result<()> {
        if parsed.bare_min_int {
            let span = parsed.expr.span;
            let text = self.src.get(span.start..span.end).unwrap_or("");
            return Err(int_out_of_range(text, span));
        }
        Ok(())
    }

    fn parse_primary(&self, pair: Pair<'s, Rule>) -> Result<Parsed> {
        let span = span_of(&pair);
        match pair.as_rule() {
            Rule::paren_expr => self.parse_paren_expr(pair),
            Rule::list_expr => self.parse_list_expr(pair),
            Rule::if_expr => self.parse_if_expr(pair),
            Rule::name_or_call => self.parse_name_or_call(pair),
            Rule::float_lit => {
                let text = pair.as_str();
                let digits: String = text.chars().filter(|c| *c != '_').collect();
                match digits.parse::<f64>() {
                    Ok(v) if v.is_finite() => Ok(Parsed::leaf(ExprKind::Float(v), span)),
                    Ok(_) => Err(ParseError::new(
                        BAD_NUMBER,
                        span,
                        format!(
                            "float literal `{}` is too large for f64",
                            truncate(text, 40)
                        ),
                        "out of range",
                    )
                    .with_help("the largest finite f64 is about 1.8e308")),
                    Err(_) => Err(malformed_number(text, span)),
                }
            }
            Rule::int_lit | Rule::hex_lit => {
                let value = int_value(&pair)?;
                match i64::try_from(value) {
                    Ok(v) => Ok(Parsed::leaf(ExprKind::Int(v), span)),
                    Err(_) if value == 1 << 63 => Ok(Parsed {
                        bare_min_int: true,
                        ..Parsed::leaf(ExprKind::Int(i64::MIN), span)
                    }),
                    Err(_) => Err(int_out_of_range(pair.as_str(), span)),
                }
            }
            Rule::bad_number => Err(malformed_number(pair.as_str(), span)),
            Rule::bool_lit => Ok(Parsed::leaf(ExprKind::Bool(pair.as_str() == "true"), span)),
            r => unreachable!("grammar: not a primary: {r:?}"),
        }
    }

    /// Parentheses make no node: the inner expression, widened to cover them.
    fn parse_paren_expr(&self, pair: Pair<'s, Rule>) -> Result<Parsed> {
        let span = span_of(&pair);
        let inner = pair
            .into_inner()
            .find(|p| p.as_rule() == Rule::expr)
            .expect("grammar: parentheses hold an expression");
        let mut parsed = self.parse_expr(inner)?;
        parsed.expr.span = span;
        Ok(parsed)
    }

    fn parse_list_expr(&self, pair: Pair<'s, Rule>) -> Result<Parsed> {
        let span = span_of(&pair);
        let mut items = Vec::new();
        let mut depth = 0;
        for p in pair.into_inner() {
            if p.as_rule() == Rule::expr {
                let item = self.parse_expr(p)?;
                depth = depth.max(item.depth);
                items.push(item.expr);
            }
        }
        self.node(ExprKind::List(items), span, depth)
    }

    /// `if a { .. } else if b { .. } else { .. }`: built from the last branch
    /// back, each `else if` becoming an else block that holds only the next
    /// `if`.
    fn parse_if_expr(&self, pair: Pair<'s, Rule>) -> Result<Parsed> {
        let mut starts = Vec::new();
        let mut conds = Vec::new();
        let mut blocks = Vec::new();
        for p in pair.into_inner() {
            match p.as_rule() {
                Rule::kw_if => starts.push(p.as_span().start()),
                Rule::cond_expr => conds.push(self.parse_expr(p)?),
                Rule::block => blocks.push(self.parse_block(p, false)?),
                _ => {}
            }
        }
        let (mut else_block, mut else_depth) =
            blocks.pop().expect("grammar: `if` has an else block");
        let mut branches = starts.into_iter().zip(conds).zip(blocks).rev().peekable();
        loop {
            let ((start, cond), (then_block, then_depth)) = branches
                .next()
                .expect("grammar: `if` has a condition and a block");
            let span = Span::new(start, else_block.span.end);
            let parsed = self.node(
                ExprKind::If {
                    cond: Box::new(cond.expr),
                    then_block,
                    else_block,
                },
                span,
                cond.depth.max(then_depth).max(else_depth),
            )?;
            if branches.peek().is_none() {
                return Ok(parsed);
            }
            else_depth = parsed.depth + 1;
            else_block = Block {
                stmts: Vec::new(),
                tail: Some(Box::new(parsed.expr)),
                span,
            };
        }
    }

    fn parse_name_or_call(&self, pair: Pair<'s, Rule>) -> Result<Parsed> {
        let mut inner = pair.into_inner();
        let name = ident(&inner.next().expect("grammar: a name"));
        let Some(args) = inner.next() else {
            return Ok(Parsed::leaf(ExprKind::Name(name.name), name.span));
        };
        let span = Span::new(name.span.start, span_of(&args).end);
        let (args, depth) = self.parse_call_args(args)?;
        self.node(ExprKind::Call { func: name, args }, span, depth)
    }

    fn parse_call_args(&self, pair: Pair<'s, Rule>) -> Result<(Vec<Arg>, usize)> {
        let mut args = Vec::new();
        let mut depth = 0;
        for p in pair.into_inner() {
            if p.as_rule() == Rule::arg {
                let (arg, d) = self.parse_arg(p)?;
                depth = depth.max(d);
                args.push(arg);
            }
        }
        Ok((args, depth))
    }

    fn parse_arg(&self, pair: Pair<'s, Rule>) -> Result<(Arg, usize)> {
        let mut name = None;
        let mut value = None;
        for p in pair.into_inner() {
            match p.as_rule() {
                Rule::kwarg_name => {
                    // `axis =`: the name is everything before the blanks and `=`.
                    let text = p.as_str();
                    let len = text
                        .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                        .unwrap_or(text.len());
                    let start = p.as_span().start();
                    name = Some(Ident {
                        name: text[..len].to_string(),
                        span: Span::new(start, start + len),
                    });
                }
                Rule::expr => value = Some(self.parse_expr(p)?),
                _ => {}
            }
        }
        let value = value.expect("grammar: an argument has a value");
        let start = name
            .as_ref()
            .map_or(value.expr.span.start, |n| n.span.start);
        let arg = Arg {
            name,
            span: Span::new(start, value.expr.span.end),
            value: value.expr,
        };
        Ok((arg, value.depth))
    }

    fn parse_index_postfix(&self, pair: Pair<'s, Rule>) -> Result<(Vec<IndexItem>, usize)> {
        let span = span_of(&pair);
        let mut items = Vec::new();
        let mut depth = 0;
        for p in pair.into_inner() {
            if p.as_rule() == Rule::index_item {
                let (item, d) = self.parse_index_item(p)?;
                depth = depth.max(d);
                items.push(item);
            }
        }
        if items.is_empty() {
            return Err(ParseError::new(
                SYNTAX,
                span,
                "empty index `[]`",
                "expected an index inside",
            )
            .with_help("write an index like `x[0]`, `x[1:]` or `x[:, None]`"));
        }
        Ok((items, depth))
    }

    fn parse_index_item(&self, pair: Pair<'s, Rule>) -> Result<(IndexItem, usize)> {
        let span = tight_span(&pair);
        let mut start = None;
        let mut rest = None;
        for p in pair.into_inner() {
            match p.as_rule() {
                Rule::kw_none => return Ok((IndexItem::NewAxis(span), 0)),
                Rule::expr => start = Some(self.parse_expr(p)?),
                Rule::slice_rest => rest = Some(self.parse_slice_rest(p)?),
                r => unreachable!("grammar: not part of an index: {r:?}"),
            }
        }
        match (start, rest) {
            (Some(e), None) => Ok((IndexItem::Index(e.expr), e.depth)),
            (start, Some((end, step, rest_depth))) => {
                let depth = start.as_ref().map_or(0, |s| s.depth).max(rest_depth);
                let slice = IndexItem::Slice {
                    start: start.map(|s| s.expr),
                    end,
                    step,
                    span,
                };
                Ok((slice, depth))
            }
            (None, None) => unreachable!("grammar: an index item is never empty"),
        }
    }

    /// `:end` or `:end:step` (either part may be missing).
    #[allow(clippy::type_complexity)]
    fn parse_slice_rest(
        &self,
        pair: Pair<'s, Rule>,
    ) -> Result<(Option<Expr>, Option<Expr>, usize)> {
        let mut end = None;
        let mut step = None;
        let mut depth = 0;
        for p in pair.into_inner() {
            match p.as_rule() {
                Rule::expr => {
                    let e = self.parse_expr(p)?;
                    depth = depth.max(e.depth);
                    end = Some(e.expr);
                }
                Rule::slice_step => {
                    if let Some(e) = p.into_inner().find(|q| q.as_rule() == Rule::expr) {
                        let e = self.parse_expr(e)?;
                        depth = depth.max(e.depth);
                        step = Some(e.expr);
                    }
                }
                _ => {}
            }
        }
        Ok((end, step, depth))
    }
}

/// `e` is followed by another line of the block, starting at `next`.
fn misplaced_expr(src: &str, e: &Expr, next: usize) -> ParseError {
    let err = ParseError::new(
        MISPLACED,
        e.span,
        "an expression here is only allowed as the last line of a block",
        "this value is never used",
    );
    // Statements in a block are always separated by a new line or `;`: two
    // expressions on one line are a syntax error before this.
    let between = src.get(e.span.end..next).unwrap_or("");
    if matches!(&e.kind, ExprKind::Name(n) if n == "return") {
        err.with_help("there is no `return`: a block's value is its last expression")
    } else if !between.contains(';') && src.get(next..).is_some_and(|s| s.starts_with('-')) {
        err.with_help(
            "a new line ends the statement, so the `-` that starts the next line negates instead of subtracting: end this line with `-` to continue it",
        )
    } else {
        err.with_help("bind it with `let name = ...`, or move it to the end of the block")
    }
}

/// `name` or `name[index]`: the only things `<-` can update.
fn update_target(lhs: Expr) -> Result<(Ident, Option<Expr>)> {
    let span = lhs.span;
    let bad = |help: &str| {
        Err(ParseError::new(
            SYNTAX,
            span,
            "the left side of `<-` must be a state name, or a state name with one index",
            "cannot update this",
        )
        .with_help(help.to_string()))
    };
    match lhs.kind {
        ExprKind::Name(name) => Ok((Ident { name, span }, None)),
        ExprKind::Index { base, mut indices } => match (base.kind, indices.len()) {
            (ExprKind::Name(name), 1) => match indices.pop() {
                Some(IndexItem::Index(index)) => Ok((
                    Ident {
                        name,
                        span: base.span,
                    },
                    Some(index),
                )),
                _ => bad("an update takes one index expression, like `lambdas[ids] <- values`"),
            },
            _ => bad("an update takes one index expression, like `lambdas[ids] <- values`"),
        },
        _ => bad("`<-` updates a `state`: write `name <- value` or `name[ids] <- values`"),
    }
}

/// The `///` lines directly above the line where an item starts, if
/// nothing else precedes the item on its own line.
fn doc_comment(src: &str, start: usize) -> Option<String> {
    let before = src.get(..start)?;
    let line_start = before.rfind('\n').map_or(0, |i| i + 1);
    if !is_blank(&before[line_start..]) {
        return None;
    }
    let mut lines = Vec::new();
    // Always empty or ending in the newline of the line above.
    let mut rest = &before[..line_start];
    while let Some(above) = rest.strip_suffix('\n') {
        let ls = above.rfind('\n').map_or(0, |i| i + 1);
        let line = above[ls..].trim_matches(|c: char| c.is_whitespace() || c == '\u{FEFF}');
        match line.strip_prefix("///") {
            // `////` is an ordinary comment, as in Rust.
            Some(text) if !text.starts_with('/') => {
                lines.push(text.strip_prefix(' ').unwrap_or(text).trim_end());
            }
            _ => break,
        }
        rest = &above[..ls];
    }
    if lines.is_empty() {
        return None;
    }
    lines.reverse();
    Some(lines.join("\n"))
}

fn is_blank(s: &str) -> bool {
    s.chars().all(|c| c.is_whitespace() || c == '\u{FEFF}')
}

/// `in [lo, hi)`: the bounds as numbers (`inf` and `-inf` included).
fn parse_domain(pair: &Pair<'_, Rule>) -> ParamDomain {
    let sp = pair.as_span();
    let mut lo_closed = true;
    let mut hi_closed = true;
    let mut bounds = vec![];
    for p in pair.clone().into_inner() {
        match p.as_rule() {
            Rule::domain_open => lo_closed = p.as_str() == "[",
            Rule::domain_close => hi_closed = p.as_str() == "]",
            Rule::domain_bound => {
                let t = p.as_str().replace('_', "");
                bounds.push(t.parse::<f64>().unwrap_or(f64::NAN));
            }
            _ => {}
        }
    }
    ParamDomain {
        lo: bounds.first().copied().unwrap_or(f64::NEG_INFINITY),
        lo_closed,
        hi: bounds.get(1).copied().unwrap_or(f64::INFINITY),
        hi_closed,
        span: Span::new(sp.start(), sp.end()),
    }
}
