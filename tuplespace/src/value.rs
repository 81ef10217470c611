//! Values and tuples.
//!
//! A [`Value`] is 24 bytes: short strings (up to [`Text::INLINE_CAPACITY`] bytes) live inline in
//! the value itself, so a typical tuple of four fields costs one allocation for its fields plus one
//! for each long string. That is what keeps a resident space under 300 bytes per tuple.

use std::borrow::Borrow;
use std::cmp::Ordering;
use std::fmt;
use std::hash::{Hash, Hasher};
use std::ops::Deref;

/// The type of a value, as named by typed formals in templates (`?int`, `?str`, ...).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Kind {
    /// A signed 64-bit integer.
    Int,
    /// A 64-bit float, ordered and compared by its total order.
    Float,
    /// A UTF-8 string.
    Str,
    /// A boolean.
    Bool,
    /// A byte string.
    Bytes,
    /// A nested tuple.
    Tuple,
}

impl Kind {
    /// Every kind, in their canonical order.
    pub const ALL: [Kind; 6] = [
        Kind::Int,
        Kind::Float,
        Kind::Str,
        Kind::Bool,
        Kind::Bytes,
        Kind::Tuple,
    ];

    /// The name used in the text syntax (`int`, `float`, `str`, `bool`, `bytes`, `tuple`).
    pub fn name(self) -> &'static str {
        match self {
            Kind::Int => "int",
            Kind::Float => "float",
            Kind::Str => "str",
            Kind::Bool => "bool",
            Kind::Bytes => "bytes",
            Kind::Tuple => "tuple",
        }
    }

    /// The kind with the given text-syntax name.
    pub fn from_name(name: &str) -> Option<Kind> {
        Kind::ALL.into_iter().find(|k| k.name() == name)
    }
}

impl fmt::Display for Kind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// One field of a tuple.
///
/// Equality, ordering and hashing are total: floats compare by [`f64::total_cmp`] (so `-0.0` and
/// `0.0` differ, and a NaN equals only a NaN with the same bits); values of different kinds order
/// by their [`Kind`].
#[derive(Clone)]
pub enum Value {
    /// A signed 64-bit integer.
    Int(i64),
    /// A 64-bit float.
    Float(f64),
    /// A UTF-8 string.
    Str(Text),
    /// A boolean.
    Bool(bool),
    /// A byte string.
    Bytes(Box<[u8]>),
    /// A nested tuple.
    Tuple(Tuple),
}

impl Value {
    /// This value's kind.
    pub fn kind(&self) -> Kind {
        match self {
            Value::Int(_) => Kind::Int,
            Value::Float(_) => Kind::Float,
            Value::Str(_) => Kind::Str,
            Value::Bool(_) => Kind::Bool,
            Value::Bytes(_) => Kind::Bytes,
            Value::Tuple(_) => Kind::Tuple,
        }
    }

    /// The integer, if this is an int.
    pub fn as_int(&self) -> Option<i64> {
        match self {
            Value::Int(i) => Some(*i),
            _ => None,
        }
    }

    /// The float, if this is a float.
    pub fn as_float(&self) -> Option<f64> {
        match self {
            Value::Float(x) => Some(*x),
            _ => None,
        }
    }

    /// The string, if this is a str.
    pub fn as_str(&self) -> Option<&str> {
        match self {
            Value::Str(s) => Some(s),
            _ => None,
        }
    }

    /// The boolean, if this is a bool.
    pub fn as_bool(&self) -> Option<bool> {
        match self {
            Value::Bool(b) => Some(*b),
            _ => None,
        }
    }

    /// The bytes, if this is a byte string.
    pub fn as_bytes(&self) -> Option<&[u8]> {
        match self {
            Value::Bytes(b) => Some(b),
            _ => None,
        }
    }

    /// The nested tuple, if this is one.
    pub fn as_tuple(&self) -> Option<&Tuple> {
        match self {
            Value::Tuple(t) => Some(t),
            _ => None,
        }
    }

    /// How deeply tuples nest inside this value (0 for a scalar).
    pub fn depth(&self) -> usize {
        match self {
            Value::Tuple(t) => 1 + t.iter().map(Value::depth).max().unwrap_or(0),
            _ => 0,
        }
    }
}

impl PartialEq for Value {
    fn eq(&self, other: &Self) -> bool {
        self.cmp(other) == Ordering::Equal
    }
}

impl Eq for Value {}

impl PartialOrd for Value {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for Value {
    fn cmp(&self, other: &Self) -> Ordering {
        match (self, other) {
            (Value::Int(a), Value::Int(b)) => a.cmp(b),
            (Value::Float(a), Value::Float(b)) => a.total_cmp(b),
            (Value::Str(a), Value::Str(b)) => a.cmp(b),
            (Value::Bool(a), Value::Bool(b)) => a.cmp(b),
            (Value::Bytes(a), Value::Bytes(b)) => a.cmp(b),
            (Value::Tuple(a), Value::Tuple(b)) => a.cmp(b),
            _ => self.kind().cmp(&other.kind()),
        }
    }
}

impl Hash for Value {
    fn hash<H: Hasher>(&self, state: &mut H) {
        self.kind().hash(state);
        match self {
            Value::Int(i) => i.hash(state),
            Value::Float(x) => x.to_bits().hash(state),
            Value::Str(s) => s.hash(state),
            Value::Bool(b) => b.hash(state),
            Value::Bytes(b) => b.hash(state),
            Value::Tuple(t) => t.hash(state),
        }
    }
}

impl fmt::Debug for Value {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

impl From<i64> for Value {
    fn from(v: i64) -> Self {
        Value::Int(v)
    }
}

impl From<i32> for Value {
    fn from(v: i32) -> Self {
        Value::Int(v.into())
    }
}

impl From<u32> for Value {
    fn from(v: u32) -> Self {
        Value::Int(v.into())
    }
}

impl From<f64> for Value {
    fn from(v: f64) -> Self {
        Value::Float(v)
    }
}

impl From<bool> for Value {
    fn from(v: bool) -> Self {
        Value::Bool(v)
    }
}

impl From<&str> for Value {
    fn from(v: &str) -> Self {
        Value::Str(Text::from(v))
    }
}

impl From<String> for Value {
    fn from(v: String) -> Self {
        Value::Str(Text::from(v))
    }
}

impl From<Text> for Value {
    fn from(v: Text) -> Self {
        Value::Str(v)
    }
}

impl From<&[u8]> for Value {
    fn from(v: &[u8]) -> Self {
        Value::Bytes(v.into())
    }
}

impl From<Vec<u8>> for Value {
    fn from(v: Vec<u8>) -> Self {
        Value::Bytes(v.into_boxed_slice())
    }
}

impl From<Tuple> for Value {
    fn from(v: Tuple) -> Self {
        Value::Tuple(v)
    }
}

/// An immutable UTF-8 string that keeps up to [`Text::INLINE_CAPACITY`] bytes inline.
#[derive(Clone)]
pub struct Text(TextRepr);

#[derive(Clone)]
enum TextRepr {
    Inline {
        len: u8,
        buf: [u8; Text::INLINE_CAPACITY],
    },
    Heap(Box<str>),
}

impl Text {
    /// The longest string (in bytes) that is stored without a heap allocation.
    pub const INLINE_CAPACITY: usize = 22;

    /// The string's UTF-8 bytes (no validation: comparison and hashing use these).
    pub fn as_bytes(&self) -> &[u8] {
        match &self.0 {
            TextRepr::Inline { len, buf } => &buf[..usize::from(*len)],
            TextRepr::Heap(s) => s.as_bytes(),
        }
    }

    /// The string.
    pub fn as_str(&self) -> &str {
        match &self.0 {
            TextRepr::Inline { len, buf } => {
                // The inline bytes were copied from a `&str` of exactly `len` bytes, so they are
                // valid UTF-8; the checked conversion keeps this crate free of `unsafe`.
                std::str::from_utf8(&buf[..usize::from(*len)]).unwrap_or_default()
            }
            TextRepr::Heap(s) => s,
        }
    }
}

impl From<&str> for Text {
    fn from(s: &str) -> Self {
        if s.len() <= Text::INLINE_CAPACITY {
            let mut buf = [0u8; Text::INLINE_CAPACITY];
            buf[..s.len()].copy_from_slice(s.as_bytes());
            // `s.len() <= 22`, so it fits in a u8.
            Text(TextRepr::Inline {
                len: s.len() as u8,
                buf,
            })
        } else {
            Text(TextRepr::Heap(s.into()))
        }
    }
}

impl From<String> for Text {
    fn from(s: String) -> Self {
        if s.len() <= Text::INLINE_CAPACITY {
            Text::from(s.as_str())
        } else {
            Text(TextRepr::Heap(s.into_boxed_str()))
        }
    }
}

impl Deref for Text {
    type Target = str;
    fn deref(&self) -> &str {
        self.as_str()
    }
}

impl AsRef<str> for Text {
    fn as_ref(&self) -> &str {
        self.as_str()
    }
}

impl Borrow<str> for Text {
    fn borrow(&self) -> &str {
        self.as_str()
    }
}

// Comparison and hashing work on the bytes: UTF-8 orders like its code points, and hashing the
// bytes followed by 0xff is exactly what `str` does (so `Borrow<str>` stays consistent), without
// checking the inline bytes' UTF-8 again on every lookup.
impl PartialEq for Text {
    fn eq(&self, other: &Self) -> bool {
        self.as_bytes() == other.as_bytes()
    }
}

impl Eq for Text {}

impl PartialEq<str> for Text {
    fn eq(&self, other: &str) -> bool {
        self.as_str() == other
    }
}

impl PartialEq<&str> for Text {
    fn eq(&self, other: &&str) -> bool {
        self.as_str() == *other
    }
}

impl PartialOrd for Text {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for Text {
    fn cmp(&self, other: &Self) -> Ordering {
        self.as_bytes().cmp(other.as_bytes())
    }
}

impl Hash for Text {
    fn hash<H: Hasher>(&self, state: &mut H) {
        state.write(self.as_bytes());
        state.write_u8(0xff);
    }
}

impl fmt::Debug for Text {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(self.as_str(), f)
    }
}

impl fmt::Display for Text {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// An ordered list of values of any arity (including zero).
#[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Tuple(Box<[Value]>);

impl Tuple {
    /// A tuple of the given fields.
    pub fn new(fields: Vec<Value>) -> Self {
        Tuple(fields.into_boxed_slice())
    }

    /// The fields.
    pub fn fields(&self) -> &[Value] {
        &self.0
    }

    /// The fields, by value.
    pub fn into_fields(self) -> Vec<Value> {
        self.0.into_vec()
    }

    /// How deeply tuples nest inside this one (1 for a tuple of scalars).
    pub fn depth(&self) -> usize {
        1 + self.iter().map(Value::depth).max().unwrap_or(0)
    }
}

impl Deref for Tuple {
    type Target = [Value];
    fn deref(&self) -> &[Value] {
        &self.0
    }
}

impl From<Vec<Value>> for Tuple {
    fn from(fields: Vec<Value>) -> Self {
        Tuple::new(fields)
    }
}

impl FromIterator<Value> for Tuple {
    fn from_iter<I: IntoIterator<Item = Value>>(iter: I) -> Self {
        Tuple(iter.into_iter().collect())
    }
}

impl fmt::Debug for Tuple {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

/// Builds a [`Tuple`] from expressions that convert into [`Value`]s.
///
/// ```
/// use tuplespace::tuple;
/// let t = tuple!["post", "alice", 42, 3.5, true];
/// assert_eq!(t.to_string(), r#"("post", "alice", 42, 3.5, true)"#);
/// ```
#[macro_export]
macro_rules! tuple {
    ($($field:expr),* $(,)?) => {
        $crate::Tuple::new(vec![$($crate::Value::from($field)),*])
    };
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_stay_small() {
        assert_eq!(std::mem::size_of::<Value>(), 24);
        assert_eq!(std::mem::size_of::<Tuple>(), 16);
        assert_eq!(std::mem::size_of::<Option<Tuple>>(), 16);
    }

    #[test]
    fn text_inline_and_heap_agree() {
        let short = Text::from("topic-17");
        let long = Text::from("x".repeat(64));
        assert_eq!(short.as_str(), "topic-17");
        assert_eq!(long.len(), 64);
        let edge = "é".repeat(11); // 22 bytes: still inline
        assert_eq!(Text::from(edge.as_str()).as_str(), edge);
        assert_eq!(Text::from(String::from("abc")), Text::from("abc"));
    }

    #[test]
    fn text_hashes_and_orders_like_str() {
        use std::hash::BuildHasher;
        let h = std::collections::hash_map::RandomState::new();
        for s in ["", "a", "topic-0417", "é", &"x".repeat(40)] {
            assert_eq!(h.hash_one(Text::from(s)), h.hash_one(s));
        }
        let (e_acute, z) = (Text::from("é"), Text::from("z"));
        assert!(e_acute > z, "code point order");
        let (ab, abc) = (Text::from("ab"), Text::from("abc"));
        assert!(ab < abc);
    }

    #[test]
    fn floats_compare_by_total_order() {
        assert_ne!(Value::Float(0.0), Value::Float(-0.0));
        assert_eq!(Value::Float(f64::NAN), Value::Float(f64::NAN));
        assert!(Value::Float(-1.0) < Value::Float(2.5));
        assert!(Value::Int(5) < Value::Float(-1.0), "kinds order by kind");
    }

    #[test]
    fn depth_counts_nesting() {
        let t = tuple![1, tuple![2, tuple![3]]];
        assert_eq!(t.depth(), 3);
        assert_eq!(Value::Int(1).depth(), 0);
    }
}
