//! Python text for numbers, strings and symbolic sizes.

use crate::dim::{Atom, Dim};
use crate::ops::Scalar;
use std::collections::BTreeMap;

/// A float literal that reads back to the same f64 (`math.inf` and friends for
/// the values Python has no literal for); negative values are parenthesised so
/// that they can stand anywhere in an expression (`x ** (-1.0)`).
pub fn float_py(v: f64) -> String {
    if v.is_nan() {
        return "math.nan".into();
    }
    if v.is_infinite() {
        return if v > 0.0 {
            "math.inf".into()
        } else {
            "(-math.inf)".into()
        };
    }
    // `{:?}` is the shortest text that round-trips, and always has a `.` or an exponent.
    let s = format!("{v:?}");
    if v.is_sign_negative() {
        format!("({s})")
    } else {
        s
    }
}

pub fn scalar_py(v: Scalar) -> String {
    match v {
        Scalar::F(x) => float_py(x),
        Scalar::I(i) if i < 0 => format!("({i})"),
        Scalar::I(i) => i.to_string(),
        Scalar::B(b) => (if b { "True" } else { "False" }).into(),
    }
}

/// A double-quoted Python string literal.
pub fn py_str(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '"' => out.push_str("\\\""),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if (c as u32) < 0x20 || c == '\u{7f}' => {
                out.push_str(&format!("\\x{:02x}", c as u32))
            }
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

fn atom_py(a: &Atom, names: &BTreeMap<String, String>) -> String {
    match a {
        Atom::Sym(s) => names.get(s).cloned().unwrap_or_else(|| s.clone()),
        Atom::FloorDiv(d, k) => format!("({} // {k})", dim_py(d, names)),
        Atom::Min(a, b) => format!("min({}, {})", dim_py(a, names), dim_py(b, names)),
        Atom::Max(a, b) => format!("max({}, {})", dim_py(a, names), dim_py(b, names)),
        Atom::Mul(a, b) => format!("({} * {})", dim_py(a, names), dim_py(b, names)),
    }
}

/// A symbolic size as a Python integer expression over the dim variables,
/// parenthesised when it is a sum.
pub fn dim_py(d: &Dim, names: &BTreeMap<String, String>) -> String {
    if let Some(c) = d.as_const() {
        return if c < 0 {
            format!("({c})")
        } else {
            c.to_string()
        };
    }
    let mut s = String::new();
    for (i, (a, k)) in d.terms.iter().enumerate() {
        let at = atom_py(a, names);
        let mag = k.unsigned_abs();
        let term = if mag == 1 {
            at
        } else {
            format!("{mag} * {at}")
        };
        if i == 0 {
            if *k < 0 {
                s.push('-');
            }
            s.push_str(&term);
        } else {
            s.push_str(if *k < 0 { " - " } else { " + " });
            s.push_str(&term);
        }
    }
    if d.constant > 0 {
        s.push_str(&format!(" + {}", d.constant));
    } else if d.constant < 0 {
        s.push_str(&format!(" - {}", d.constant.unsigned_abs()));
    }
    if d.terms.len() == 1 && d.constant == 0 && d.terms[0].1 == 1 {
        s
    } else {
        format!("({s})")
    }
}

/// A shape as a Python tuple expression.
pub fn shape_tuple(shape: &[Dim], names: &BTreeMap<String, String>) -> String {
    let parts: Vec<String> = shape.iter().map(|d| dim_py(d, names)).collect();
    match parts.len() {
        0 => "()".into(),
        1 => format!("({},)", parts[0]),
        _ => format!("({})", parts.join(", ")),
    }
}

pub fn ints_tuple(v: &[usize]) -> String {
    match v.len() {
        0 => "()".into(),
        1 => format!("({},)", v[0]),
        _ => format!(
            "({})",
            v.iter()
                .map(|x| x.to_string())
                .collect::<Vec<_>>()
                .join(", ")
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn floats_round_trip_and_stand_anywhere() {
        assert_eq!(float_py(1.0), "1.0");
        assert_eq!(float_py(1e-12), "1e-12");
        assert_eq!(float_py(-0.5), "(-0.5)");
        assert_eq!(float_py(f64::NEG_INFINITY), "(-math.inf)");
        assert_eq!(float_py(f64::NAN), "math.nan");
        assert_eq!(scalar_py(Scalar::I(-3)), "(-3)");
        assert_eq!(py_str("a\"b\\c\n"), "\"a\\\"b\\\\c\\n\"");
    }

    #[test]
    fn dims_are_python() {
        let names = BTreeMap::from([("N".to_string(), "N".to_string())]);
        assert_eq!(dim_py(&Dim::sym("N"), &names), "N");
        assert_eq!(dim_py(&Dim::sym("N").sub(&Dim::lit(1)), &names), "(N - 1)");
        assert_eq!(dim_py(&Dim::lit(-2), &names), "(-2)");
        assert_eq!(shape_tuple(&[Dim::sym("N")], &names), "(N,)");
    }
}
