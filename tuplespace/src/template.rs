//! Templates and the matching rules.
//!
//! A [`Template`] matches a tuple of the same arity whose every field matches the template's field
//! in that position:
//!
//! | field | text | matches |
//! |---|---|---|
//! | [`Field::Literal`] | `42`, `"alice"` | an equal value (floats by total order) |
//! | [`Field::Any`] | `_` | anything |
//! | [`Field::Formal`] | `?int`, `?str`, ... | any value of that kind |
//! | [`Field::Range`] | `1..10`, `"a"..="m"`, `2.5..` | a value of the bounds' kind within them |
//! | [`Field::Prefix`] | `"top"*` | a str starting with the prefix |
//! | [`Field::Nested`] | `("at", ?int)` | a nested tuple matching the inner template |
//!
//! A nested template made only of literals is stored as a literal tuple, so a template prints and
//! parses back to the same value.

use std::ops::Bound;

use crate::value::{Kind, Text, Tuple, Value};

/// One field of a template.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Field {
    /// `_`: matches any value.
    Any,
    /// A value that must be equal.
    Literal(Value),
    /// `?kind`: any value of the kind.
    Formal(Kind),
    /// A value of the bounds' kind within the bounds.
    Range(Range),
    /// A str that starts with the prefix.
    Prefix(Text),
    /// A nested tuple that matches the inner template (holding at least one non-literal field).
    Nested(Template),
}

/// Bounds of a [`Field::Range`]: an inclusive lower bound and an inclusive or exclusive upper
/// bound. At least one bound is present, and both are of one kind.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Range {
    lo: Option<Value>,
    hi: Bound<Value>,
}

/// Why a range could not be built.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum RangeError {
    /// Neither bound was given.
    #[error("a range needs at least one bound (use `_` to match anything)")]
    Unbounded,
    /// The bounds are of different kinds.
    #[error("range bounds must be of one kind, found {0} and {1}")]
    MixedKinds(Kind, Kind),
}

impl Range {
    /// A range between the bounds; fails unless at least one bound is given and both are of one kind.
    pub fn new(lo: Option<Value>, hi: Bound<Value>) -> Result<Range, RangeError> {
        match (lo.as_ref(), bound_value(&hi)) {
            (None, None) => Err(RangeError::Unbounded),
            (Some(a), Some(b)) if a.kind() != b.kind() => {
                Err(RangeError::MixedKinds(a.kind(), b.kind()))
            }
            _ => Ok(Range { lo, hi }),
        }
    }

    /// The inclusive lower bound.
    pub fn lo(&self) -> Option<&Value> {
        self.lo.as_ref()
    }

    /// The upper bound.
    pub fn hi(&self) -> &Bound<Value> {
        &self.hi
    }

    /// The kind both bounds share.
    pub fn kind(&self) -> Kind {
        self.lo
            .as_ref()
            .or(bound_value(&self.hi))
            .map(Value::kind)
            .unwrap_or(Kind::Int)
    }

    /// Whether `v` lies in the range.
    pub fn contains(&self, v: &Value) -> bool {
        if v.kind() != self.kind() {
            return false;
        }
        let above = self.lo.as_ref().is_none_or(|lo| v >= lo);
        let below = match &self.hi {
            Bound::Included(hi) => v <= hi,
            Bound::Excluded(hi) => v < hi,
            Bound::Unbounded => true,
        };
        above && below
    }
}

fn bound_value(b: &Bound<Value>) -> Option<&Value> {
    match b {
        Bound::Included(v) | Bound::Excluded(v) => Some(v),
        Bound::Unbounded => None,
    }
}

impl Field {
    /// Whether `v` matches this field.
    pub fn matches(&self, v: &Value) -> bool {
        match self {
            Field::Any => true,
            Field::Literal(l) => l == v,
            Field::Formal(k) => v.kind() == *k,
            Field::Range(r) => r.contains(v),
            Field::Prefix(p) => match v {
                Value::Str(s) => s.as_bytes().starts_with(p.as_bytes()),
                _ => false,
            },
            Field::Nested(t) => v.as_tuple().is_some_and(|inner| t.matches(inner)),
        }
    }

    /// A nested template, stored as a literal when every field of it is a literal.
    pub fn nested(template: Template) -> Field {
        if template
            .fields()
            .iter()
            .all(|f| matches!(f, Field::Literal(_)))
        {
            let values = template
                .into_fields()
                .into_iter()
                .filter_map(|f| match f {
                    Field::Literal(v) => Some(v),
                    _ => None,
                })
                .collect();
            Field::Literal(Value::Tuple(values))
        } else {
            Field::Nested(template)
        }
    }

    fn depth(&self) -> usize {
        match self {
            Field::Literal(v) => v.depth(),
            Field::Nested(t) => t.depth(),
            _ => 0,
        }
    }
}

impl From<Value> for Field {
    fn from(v: Value) -> Self {
        match v {
            Value::Tuple(t) => Field::nested(Template::literal(&t)),
            other => Field::Literal(other),
        }
    }
}

/// A pattern over tuples of one arity.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Default)]
pub struct Template(Box<[Field]>);

impl Template {
    /// A template of the given fields.
    pub fn new(fields: Vec<Field>) -> Self {
        Template(fields.into_boxed_slice())
    }

    /// A template that matches exactly `tuple`.
    pub fn literal(tuple: &Tuple) -> Self {
        Template(tuple.iter().cloned().map(Field::Literal).collect())
    }

    /// The fields.
    pub fn fields(&self) -> &[Field] {
        &self.0
    }

    /// The fields, by value.
    pub fn into_fields(self) -> Vec<Field> {
        self.0.into_vec()
    }

    /// The arity of the tuples this template can match.
    pub fn arity(&self) -> usize {
        self.0.len()
    }

    /// Whether `tuple` matches.
    pub fn matches(&self, tuple: &[Value]) -> bool {
        tuple.len() == self.0.len() && self.0.iter().zip(tuple).all(|(f, v)| f.matches(v))
    }

    /// The literal first field, which the space's index can look up directly.
    pub fn index_key(&self) -> Option<&Value> {
        match self.0.first() {
            Some(Field::Literal(v)) => Some(v),
            _ => None,
        }
    }

    /// How deeply tuples nest inside this template (1 for a template of scalars).
    pub fn depth(&self) -> usize {
        1 + self.0.iter().map(Field::depth).max().unwrap_or(0)
    }
}

impl From<Vec<Field>> for Template {
    fn from(fields: Vec<Field>) -> Self {
        Template::new(fields)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tuple;

    fn t(fields: Vec<Field>) -> Template {
        Template::new(fields)
    }

    #[test]
    fn literal_any_formal() {
        let tpl = t(vec![
            Field::Literal("post".into()),
            Field::Any,
            Field::Formal(Kind::Int),
        ]);
        assert!(tpl.matches(&tuple!["post", 3.5, 7]));
        assert!(!tpl.matches(&tuple!["post", 3.5, "7"]));
        assert!(!tpl.matches(&tuple!["pots", 3.5, 7]));
        assert!(!tpl.matches(&tuple!["post", 3.5]), "arity must agree");
        assert_eq!(tpl.index_key(), Some(&Value::from("post")));
    }

    #[test]
    fn ranges_and_prefixes() {
        let r = Range::new(Some(Value::Int(1)), Bound::Excluded(Value::Int(10))).unwrap();
        assert!(r.contains(&Value::Int(1)));
        assert!(r.contains(&Value::Int(9)));
        assert!(!r.contains(&Value::Int(10)));
        assert!(
            !r.contains(&Value::Float(5.0)),
            "other kinds never match a range"
        );
        let open = Range::new(Some(Value::Float(2.5)), Bound::Unbounded).unwrap();
        assert!(open.contains(&Value::Float(1e300)));
        assert!(!open.contains(&Value::Float(2.4)));
        assert_eq!(
            Range::new(None, Bound::Unbounded),
            Err(RangeError::Unbounded)
        );
        assert!(Range::new(Some(1.into()), Bound::Included("x".into())).is_err());
        let p = Field::Prefix("top".into());
        assert!(p.matches(&"topic".into()));
        assert!(!p.matches(&"tip".into()));
        assert!(!p.matches(&Value::Int(1)));
    }

    #[test]
    fn nested_templates() {
        let inner = t(vec![Field::Literal("at".into()), Field::Formal(Kind::Int)]);
        let outer = t(vec![Field::nested(inner), Field::Any]);
        assert!(outer.matches(&tuple![tuple!["at", 5], 1]));
        assert!(!outer.matches(&tuple![tuple!["at", "5"], 1]));
        assert!(!outer.matches(&tuple!["at", 1]));
        let all_literal = Field::nested(t(vec![Field::Literal(1.into())]));
        assert_eq!(all_literal, Field::Literal(Value::Tuple(tuple![1])));
        assert_eq!(outer.depth(), 2);
    }
}
