//! State and params files (JSON), and `--param NAME=VALUE` assignments.
//!
//! A state file is a JSON object: scalars as numbers (or `true`/`false`), tensors as
//! rectangular nested lists, e.g.
//! `{"threshold": 0.94, "step": 3, "lambdas": [10.0, 9.5], "table2d": [[1, 2], [3, 4]]}`.
//! JSON has no NaN or infinities: wherever a number is expected, the strings `"nan"`,
//! `"inf"`, `"+inf"`, `"-inf"`, `"infinity"`, `"-infinity"` (any case) are accepted,
//! and [`state_to_json`] writes non-finite floats as `"nan"`, `"inf"`, `"-inf"`.
//!
//! Floats are written with the shortest representation that reads back to the same
//! f64 and read with correct rounding (serde_json's `float_roundtrip`), so a state
//! written and read again is bit-identical.
//!
//! A tensor with a zero-length axis is written as nested empty lists; what follows the
//! first zero-length axis cannot be represented (`[0, 3]` is written `[]`, which reads
//! back as shape `[0]`).

use std::collections::BTreeMap;
use std::io;
use std::path::Path;

use losslang_compiler::value::{DType, Data, Tensor};
use serde_json::{Map, Number, Value};

use crate::io::DataError;

/// One value of a state file: its shape (empty for a scalar) and its elements in
/// row-major order.
#[derive(Clone, Debug, PartialEq)]
pub struct JsonValue {
    pub shape: Vec<usize>,
    pub values: Vec<f64>,
    /// Every element was written as a JSON integer (no fraction, no exponent).
    /// Vacuously true for an empty list.
    pub all_integers: bool,
    /// Every element was `true` or `false` (stored as 1.0 / 0.0 in `values`).
    /// Vacuously true for an empty list.
    pub is_bool: bool,
}

/// A param value from `--param` or a params file.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum ParamValue {
    Int(i64),
    Float(f64),
    Bool(bool),
}

impl ParamValue {
    /// The value as f64 (`true` is 1.0).
    pub fn as_f64(self) -> f64 {
        match self {
            ParamValue::Int(i) => i as f64,
            ParamValue::Float(f) => f,
            ParamValue::Bool(b) => f64::from(u8::from(b)),
        }
    }
}

/// `"nan"`, `"inf"`, `"-inf"` and friends (any case, surrounding blanks ignored).
fn special_float(s: &str) -> Option<f64> {
    match s.trim().to_ascii_lowercase().as_str() {
        "nan" | "+nan" | "-nan" => Some(f64::NAN),
        "inf" | "+inf" | "infinity" | "+infinity" => Some(f64::INFINITY),
        "-inf" | "-infinity" => Some(f64::NEG_INFINITY),
        _ => None,
    }
}

fn json_syntax_error(path_label: &str, e: &serde_json::Error) -> DataError {
    let full = e.to_string();
    let suffix = format!(" at line {} column {}", e.line(), e.column());
    let what = full.strip_suffix(&suffix).unwrap_or(&full);
    let msg = if e.line() == 0 {
        format!("invalid JSON: {what}")
    } else {
        format!(
            "invalid JSON at line {}, column {}: {what}",
            e.line(),
            e.column()
        )
    };
    DataError::Json {
        path: path_label.to_string(),
        msg,
    }
}

fn kind_name(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "a list",
        Value::Object(_) => "an object",
    }
}

fn parse_object(text: &str, path_label: &str) -> Result<Map<String, Value>, DataError> {
    let v: Value = serde_json::from_str(text).map_err(|e| json_syntax_error(path_label, &e))?;
    match v {
        Value::Object(map) => Ok(map),
        other => Err(DataError::Json {
            path: path_label.to_string(),
            msg: format!(
                "expected a JSON object at the top level, found {}",
                kind_name(&other)
            ),
        }),
    }
}

/// Parse a state file. `path_label` names the file in errors.
pub fn parse_state_json(
    text: &str,
    path_label: &str,
) -> Result<BTreeMap<String, JsonValue>, DataError> {
    let map = parse_object(text, path_label)?;
    let mut out = BTreeMap::new();
    for (key, v) in &map {
        out.insert(key.clone(), state_value(key, v)?);
    }
    Ok(out)
}

fn fmt_index(key: &str, idx: &[usize]) -> String {
    let mut s = key.to_string();
    for i in idx {
        s.push_str(&format!("[{i}]"));
    }
    s
}

struct Leaves<'k> {
    key: &'k str,
    shape: Vec<usize>,
    values: Vec<f64>,
    n_int: usize,
    n_bool: usize,
}

impl Leaves<'_> {
    fn err(&self, msg: String) -> DataError {
        DataError::StateKey {
            key: self.key.to_string(),
            msg,
        }
    }

    fn walk(&mut self, v: &Value, idx: &mut Vec<usize>) -> Result<(), DataError> {
        let depth = idx.len();
        if depth < self.shape.len() {
            let Value::Array(items) = v else {
                let first = vec![0; depth];
                return Err(self.err(format!(
                    "ragged nested list at axis {depth}: `{}` is {} but `{}` is a list",
                    fmt_index(self.key, idx),
                    kind_name(v),
                    fmt_index(self.key, &first)
                )));
            };
            if items.len() != self.shape[depth] {
                let first = vec![0; depth];
                return Err(self.err(format!(
                    "ragged nested list at axis {depth}: `{}` has {} elements but `{}` has {}",
                    fmt_index(self.key, idx),
                    items.len(),
                    fmt_index(self.key, &first),
                    self.shape[depth]
                )));
            }
            for (i, item) in items.iter().enumerate() {
                idx.push(i);
                self.walk(item, idx)?;
                idx.pop();
            }
            return Ok(());
        }
        let at = fmt_index(self.key, idx);
        let x = match v {
            Value::Number(n) => {
                if n.is_i64() || n.is_u64() {
                    self.n_int += 1;
                }
                n.as_f64()
                    .ok_or_else(|| self.err(format!("`{at}` is not representable as a float")))?
            }
            Value::Bool(b) => {
                self.n_bool += 1;
                f64::from(u8::from(*b))
            }
            Value::String(s) => special_float(s).ok_or_else(|| {
                self.err(format!(
                    "`{at}` is the string {s:?}; expected a number (or \"nan\", \"inf\", \"-inf\")"
                ))
            })?,
            Value::Array(_) => {
                return Err(self.err(format!(
                    "ragged nested list at axis {depth}: `{at}` is a list but `{}` is not",
                    fmt_index(self.key, &vec![0; depth])
                )));
            }
            Value::Null | Value::Object(_) => {
                return Err(self.err(format!("`{at}` is {}; expected a number", kind_name(v))));
            }
        };
        self.values.push(x);
        Ok(())
    }
}

fn state_value(key: &str, v: &Value) -> Result<JsonValue, DataError> {
    // The shape is read along the first elements, then every element is checked
    // against it.
    let mut shape = Vec::new();
    let mut cur = v;
    while let Value::Array(items) = cur {
        shape.push(items.len());
        match items.first() {
            Some(first) => cur = first,
            None => break,
        }
    }
    let mut leaves = Leaves {
        key,
        shape,
        values: Vec::new(),
        n_int: 0,
        n_bool: 0,
    };
    leaves.walk(v, &mut Vec::new())?;
    let n = leaves.values.len();
    if leaves.n_bool > 0 && leaves.n_bool < n {
        return Err(leaves.err("mixes true/false with numbers".to_string()));
    }
    Ok(JsonValue {
        all_integers: leaves.n_int == n,
        is_bool: leaves.n_bool == n,
        shape: leaves.shape,
        values: leaves.values,
    })
}

/// The JSON form of a state: an object with the keys in the order given, scalars as
/// numbers (i64 as integers, bool as `true`/`false`, floats as shortest round-trip
/// f64, non-finite floats as `"nan"`, `"inf"`, `"-inf"`), tensors as nested lists.
pub fn state_to_json(state: &[(String, Tensor)]) -> Value {
    let mut map = Map::new();
    for (key, t) in state {
        map.insert(key.clone(), tensor_to_json(t));
    }
    Value::Object(map)
}

fn float_to_json(x: f64) -> Value {
    match Number::from_f64(x) {
        Some(n) => Value::Number(n),
        None if x.is_nan() => Value::String("nan".into()),
        None if x > 0.0 => Value::String("inf".into()),
        None => Value::String("-inf".into()),
    }
}

fn f32_to_json(x: f64) -> Value {
    let y = x as f32;
    if !y.is_finite() {
        return float_to_json(f64::from(y));
    }
    match format!("{y:?}").parse::<Number>() {
        Ok(n) => Value::Number(n),
        Err(_) => float_to_json(f64::from(y)),
    }
}

/// Most nested empty lists emitted for a tensor with a zero-length axis.
const MAX_EMPTY_LISTS: usize = 1 << 20;

fn tensor_to_json(t: &Tensor) -> Value {
    let leaves: Vec<Value> = match &t.data {
        // f32 values are written in their shortest f32 form, which reads back to the same bits.
        Data::F(v) if t.dtype == DType::F32 => v.iter().map(|&x| f32_to_json(x)).collect(),
        Data::F(v) => v.iter().map(|&x| float_to_json(x)).collect(),
        Data::I(v) => v.iter().map(|&x| Value::from(x)).collect(),
        Data::B(v) => v.iter().map(|&x| Value::Bool(x)).collect(),
    };
    let numel = t.shape.iter().try_fold(1usize, |a, &d| a.checked_mul(d));
    if numel != Some(leaves.len()) {
        // An inconsistent tensor: write what it holds, flat.
        return Value::Array(leaves);
    }
    if numel == Some(0) {
        // Nested empty lists up to the first zero-length axis (bounded).
        let zero_at = t.shape.iter().position(|&d| d == 0).unwrap_or(0);
        let outer = t.shape[..zero_at]
            .iter()
            .try_fold(1usize, |a, &d| a.checked_mul(d));
        if outer.is_none_or(|o| o > MAX_EMPTY_LISTS) {
            return Value::Array(Vec::new());
        }
        return nest_empty(&t.shape[..zero_at]);
    }
    let mut it = leaves.into_iter();
    nest(&t.shape, &mut it)
}

fn nest_empty(shape: &[usize]) -> Value {
    match shape.split_first() {
        None => Value::Array(Vec::new()),
        Some((&d, rest)) => Value::Array((0..d).map(|_| nest_empty(rest)).collect()),
    }
}

fn nest(shape: &[usize], it: &mut impl Iterator<Item = Value>) -> Value {
    match shape.split_first() {
        None => it.next().unwrap_or(Value::Null),
        Some((&d, rest)) => Value::Array((0..d).map(|_| nest(rest, it)).collect()),
    }
}

/// Write `value` to `path` atomically (temporary file in the same directory, synced,
/// renamed over the target; the directory synced afterwards, best effort), pretty
/// printed with a trailing newline. A process killed mid-write leaves the old file.
pub fn write_json_atomic(path: &Path, value: &Value) -> Result<(), DataError> {
    crate::io::write_file_atomic(path, |w| {
        serde_json::to_writer_pretty(&mut *w, value).map_err(io::Error::from)?;
        w.write_all(b"\n")
    })
}

/// Parse a params file: a JSON object of scalars, `{"gamma": 2.0, "k": 3}`. JSON
/// integers give [`ParamValue::Int`], other numbers and the strings `"nan"`, `"inf"`,
/// `"-inf"` give [`ParamValue::Float`], `true`/`false` give [`ParamValue::Bool`].
/// The params are returned in the file's order.
pub fn parse_params_json(
    text: &str,
    path_label: &str,
) -> Result<Vec<(String, ParamValue)>, DataError> {
    let map = parse_object(text, path_label)?;
    let mut out = Vec::with_capacity(map.len());
    for (name, v) in &map {
        let perr = |msg: String| DataError::Param {
            name: name.clone(),
            msg,
        };
        let pv = match v {
            Value::Bool(b) => ParamValue::Bool(*b),
            Value::Number(n) => {
                if let Some(i) = n.as_i64() {
                    ParamValue::Int(i)
                } else if n.is_u64() {
                    return Err(perr(format!("{n} does not fit in a 64-bit signed integer")));
                } else {
                    match n.as_f64() {
                        Some(f) => ParamValue::Float(f),
                        None => return Err(perr(format!("{n} is not representable as a float"))),
                    }
                }
            }
            Value::String(s) => match special_float(s) {
                Some(f) => ParamValue::Float(f),
                None => return Err(perr(format!("the string {s:?} is not a number"))),
            },
            other => {
                return Err(perr(format!(
                    "is {}; a param must be a number or true/false",
                    kind_name(other)
                )));
            }
        };
        out.push((name.clone(), pv));
    }
    Ok(out)
}

fn is_identifier(s: &str) -> bool {
    let mut chars = s.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

/// Parse `--param NAME=VALUE`. VALUE is an integer (`3`, `-2`), a float (`0.5`,
/// `1e-3`, `inf`, `-inf`, `nan`) or `true`/`false`.
pub fn parse_param_assignment(s: &str) -> Result<(String, ParamValue), DataError> {
    let Some((name, value)) = s.split_once('=') else {
        return Err(DataError::Param {
            name: s.trim().to_string(),
            msg: format!("`{s}` is not of the form NAME=VALUE"),
        });
    };
    let name = name.trim();
    if !is_identifier(name) {
        return Err(DataError::Param {
            name: name.to_string(),
            msg: format!("`{name}` is not a valid param name (in `{s}`)"),
        });
    }
    let value = value.trim();
    let perr = |msg: String| DataError::Param {
        name: name.to_string(),
        msg,
    };
    if value.is_empty() {
        return Err(perr("no value given after `=`".to_string()));
    }
    let pv = match value {
        "true" | "True" => ParamValue::Bool(true),
        "false" | "False" => ParamValue::Bool(false),
        _ => {
            if let Ok(i) = value.parse::<i64>() {
                ParamValue::Int(i)
            } else if let Ok(f) = value.parse::<f64>() {
                ParamValue::Float(f)
            } else if let Some(f) = special_float(value) {
                ParamValue::Float(f)
            } else {
                return Err(perr(format!("`{value}` is not a number")));
            }
        }
    };
    Ok((name.to_string(), pv))
}
