//! Symbolic dimensions. A dim is kept in a canonical affine form
//! `c + Σ kᵢ·atomᵢ` so that `J - 1` written two ways unifies; anything
//! non-affine (`(Q - 1) // 2`, `min(k, 2*N - 2)`, `N*M`) becomes an opaque atom
//! compared structurally.

use std::collections::BTreeMap;
use std::fmt;

#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Atom {
    Sym(String),
    FloorDiv(Box<Dim>, i64),
    Min(Box<Dim>, Box<Dim>),
    Max(Box<Dim>, Box<Dim>),
    Mul(Box<Dim>, Box<Dim>),
}

#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Dim {
    pub constant: i64,
    /// Sorted by atom, no zero coefficients.
    pub terms: Vec<(Atom, i64)>,
}

impl Dim {
    pub fn lit(c: i64) -> Dim {
        Dim {
            constant: c,
            terms: vec![],
        }
    }

    pub fn sym(name: &str) -> Dim {
        Dim::atom(Atom::Sym(name.to_string()))
    }

    fn atom(a: Atom) -> Dim {
        Dim {
            constant: 0,
            terms: vec![(a, 1)],
        }
    }

    pub fn as_const(&self) -> Option<i64> {
        self.terms.is_empty().then_some(self.constant)
    }

    pub fn is_one(&self) -> bool {
        self.as_const() == Some(1)
    }

    fn from_map(constant: i64, m: BTreeMap<Atom, i64>) -> Dim {
        Dim {
            constant,
            terms: m.into_iter().filter(|(_, k)| *k != 0).collect(),
        }
    }

    pub fn add(&self, o: &Dim) -> Dim {
        let mut m: BTreeMap<Atom, i64> = self.terms.iter().cloned().collect();
        for (a, k) in &o.terms {
            *m.entry(a.clone()).or_insert(0) = m.get(a).copied().unwrap_or(0).wrapping_add(*k);
        }
        Dim::from_map(self.constant.wrapping_add(o.constant), m)
    }

    pub fn scale(&self, k: i64) -> Dim {
        Dim::from_map(
            self.constant.wrapping_mul(k),
            self.terms
                .iter()
                .map(|(a, c)| (a.clone(), c.wrapping_mul(k)))
                .collect(),
        )
    }

    pub fn sub(&self, o: &Dim) -> Dim {
        self.add(&o.scale(-1))
    }

    pub fn mul(&self, o: &Dim) -> Dim {
        match (self.as_const(), o.as_const()) {
            (Some(a), _) => o.scale(a),
            (_, Some(b)) => self.scale(b),
            _ => {
                let (x, y) = if self <= o { (self, o) } else { (o, self) };
                Dim::atom(Atom::Mul(Box::new(x.clone()), Box::new(y.clone())))
            }
        }
    }

    pub fn floordiv(&self, k: i64) -> Dim {
        if k == 1 {
            return self.clone();
        }
        if let Some(c) = self.as_const()
            && k != 0
        {
            return Dim::lit(c.div_euclid(k));
        }
        Dim::atom(Atom::FloorDiv(Box::new(self.clone()), k))
    }

    pub fn dmin(&self, o: &Dim) -> Dim {
        if self == o {
            return self.clone();
        }
        match (self.as_const(), o.as_const()) {
            (Some(a), Some(b)) => Dim::lit(a.min(b)),
            _ => {
                let (x, y) = if self <= o { (self, o) } else { (o, self) };
                Dim::atom(Atom::Min(Box::new(x.clone()), Box::new(y.clone())))
            }
        }
    }

    pub fn dmax(&self, o: &Dim) -> Dim {
        if self == o {
            return self.clone();
        }
        match (self.as_const(), o.as_const()) {
            (Some(a), Some(b)) => Dim::lit(a.max(b)),
            _ => {
                let (x, y) = if self <= o { (self, o) } else { (o, self) };
                Dim::atom(Atom::Max(Box::new(x.clone()), Box::new(y.clone())))
            }
        }
    }

    /// The symbols this dim mentions, in order.
    pub fn symbols(&self, out: &mut Vec<String>) {
        for (a, _) in &self.terms {
            match a {
                Atom::Sym(s) => {
                    if !out.contains(s) {
                        out.push(s.clone())
                    }
                }
                Atom::FloorDiv(d, _) => d.symbols(out),
                Atom::Min(a, b) | Atom::Max(a, b) | Atom::Mul(a, b) => {
                    a.symbols(out);
                    b.symbols(out);
                }
            }
        }
    }

    /// Evaluates with the bound symbols; `None` if one is unbound or on overflow.
    pub fn eval(&self, env: &dyn Fn(&str) -> Option<i64>) -> Option<i64> {
        let mut acc = self.constant;
        for (a, k) in &self.terms {
            let v = match a {
                Atom::Sym(s) => env(s)?,
                Atom::FloorDiv(d, q) => {
                    if *q == 0 {
                        return None;
                    }
                    d.eval(env)?.checked_div_euclid(*q)?
                }
                Atom::Min(a, b) => a.eval(env)?.min(b.eval(env)?),
                Atom::Max(a, b) => a.eval(env)?.max(b.eval(env)?),
                Atom::Mul(a, b) => a.eval(env)?.checked_mul(b.eval(env)?)?,
            };
            acc = acc.checked_add(v.checked_mul(*k)?)?;
        }
        Some(acc)
    }
}

impl fmt::Display for Atom {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Atom::Sym(s) => f.write_str(s),
            Atom::FloorDiv(d, k) => {
                if d.terms.len() + usize::from(d.constant != 0) > 1 {
                    write!(f, "({d}) // {k}")
                } else {
                    write!(f, "{d} // {k}")
                }
            }
            Atom::Min(a, b) => write!(f, "min({a}, {b})"),
            Atom::Max(a, b) => write!(f, "max({a}, {b})"),
            Atom::Mul(a, b) => write!(f, "({a})*({b})"),
        }
    }
}

impl fmt::Display for Dim {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut first = true;
        for (a, k) in &self.terms {
            let (sign, mag) = if *k < 0 {
                ("-", k.unsigned_abs())
            } else {
                ("+", *k as u64)
            };
            if first {
                if sign == "-" {
                    f.write_str("-")?;
                }
            } else {
                write!(f, " {sign} ")?;
            }
            if mag != 1 {
                write!(f, "{mag}*")?;
            }
            write!(f, "{a}")?;
            first = false;
        }
        if first {
            write!(f, "{}", self.constant)
        } else if self.constant > 0 {
            write!(f, " + {}", self.constant)
        } else if self.constant < 0 {
            write!(f, " - {}", self.constant.unsigned_abs())
        } else {
            Ok(())
        }
    }
}

pub type Shape = Vec<Dim>;

pub fn shape_str(s: &[Dim]) -> String {
    let parts: Vec<String> = s.iter().map(|d| d.to_string()).collect();
    format!("[{}]", parts.join(", "))
}

/// Run-time values of the symbolic dims (and i64 params used as sizes).
pub type DimEnv<'a> = &'a dyn Fn(&str) -> Option<i64>;

/// A dim's run-time size; negative or unbound is an error.
pub fn size(d: &Dim, env: DimEnv) -> Result<usize, crate::kernels::EvalError> {
    match d.eval(env) {
        Some(v) if v >= 0 => Ok(v as usize),
        Some(v) => Err(crate::kernels::EvalError::Shape(format!(
            "size `{d}` evaluates to {v}, which is negative"
        ))),
        None => Err(crate::kernels::EvalError::Shape(format!(
            "size `{d}` is not bound: pass it with --dims"
        ))),
    }
}

pub fn sizes(s: &[Dim], env: DimEnv) -> Result<Vec<usize>, crate::kernels::EvalError> {
    s.iter().map(|d| size(d, env)).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn affine_forms_unify() {
        let j = Dim::sym("J");
        assert_eq!(j.sub(&Dim::lit(1)), j.add(&Dim::lit(-1)));
        assert_eq!(j.sub(&j), Dim::lit(0));
        let q = Dim::sym("Q");
        let k1 = q.sub(&Dim::lit(1)).floordiv(2);
        let k2 = q.add(&Dim::lit(-1)).floordiv(2);
        assert_eq!(k1, k2);
        assert_eq!(k1.to_string(), "(Q - 1) // 2");
        assert_eq!(
            Dim::sym("N").scale(2).sub(&Dim::lit(2)).to_string(),
            "2*N - 2"
        );
        let env = |s: &str| (s == "Q").then_some(7);
        assert_eq!(k1.eval(&env), Some(3));
    }
}
