//! The compact binary encoding of values, tuples, templates and whole spaces.
//!
//! Values are a tag byte and a payload: ints as zigzag varints, floats as their 8 bits, strings
//! and bytes as a varint length and the bytes, tuples as a varint arity and the fields. A space
//! snapshot is a magic and version, the clock and id counters, every tuple (id, expiry, fields)
//! and every waiter, and a CRC-32 of all of that.
//!
//! Decoding trusts nothing: every length is checked against what is left, nesting is limited to
//! [`MAX_DEPTH`], strings must be UTF-8, ids must increase, and the checksum must agree. Garbage
//! gives a [`DecodeError`], never a panic or a huge allocation.

use std::ops::Bound;

use crate::space::{Space, SpaceView};
use crate::template::{Field, Range, Template};
use crate::value::{Kind, Text, Tuple, Value};
use crate::waiters::{WaitKind, Waiter};
use crate::{Millis, TupleId};

pub use crate::syntax::MAX_DEPTH;

const SNAPSHOT_MAGIC: &[u8; 6] = b"TSPACE";
const SNAPSHOT_VERSION: u16 = 1;

/// Why bytes could not be decoded.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    /// The input ended in the middle of an item.
    #[error("truncated input at byte {0}")]
    Truncated(usize),
    /// A byte that should be a tag is not one.
    #[error("invalid {what} tag {tag} at byte {at}")]
    BadTag {
        /// What was being decoded.
        what: &'static str,
        /// The tag found.
        tag: u8,
        /// Where.
        at: usize,
    },
    /// A varint runs past 64 bits.
    #[error("varint overflows 64 bits at byte {0}")]
    VarintOverflow(usize),
    /// A length or count claims more than the input holds.
    #[error("length {len} at byte {at} exceeds the {left} bytes left")]
    TooLong {
        /// The claimed length.
        len: u64,
        /// Where.
        at: usize,
        /// What is left.
        left: usize,
    },
    /// A string is not UTF-8.
    #[error("string at byte {0} is not valid UTF-8")]
    BadUtf8(usize),
    /// Tuples or templates nest deeper than [`MAX_DEPTH`].
    #[error("nesting deeper than {MAX_DEPTH} at byte {0}")]
    TooDeep(usize),
    /// A range with no bounds or bounds of different kinds.
    #[error("invalid range at byte {0}")]
    BadRange(usize),
    /// Bytes left over after the item.
    #[error("{0} trailing bytes after the item")]
    Trailing(usize),
    /// Not a snapshot of a space, or one of another version.
    #[error("not a tuplespace snapshot (bad magic or unsupported version)")]
    BadMagic,
    /// The snapshot's checksum does not match its contents.
    #[error("snapshot checksum mismatch: stored {stored:08x}, computed {computed:08x}")]
    Checksum {
        /// The checksum in the snapshot.
        stored: u32,
        /// The checksum of the bytes.
        computed: u32,
    },
    /// The snapshot decodes but describes an impossible space.
    #[error("inconsistent snapshot: {0}")]
    Inconsistent(&'static str),
}

// ---------------------------------------------------------------------------------------------
// Writing

fn put_varint(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

fn put_bytes(out: &mut Vec<u8>, b: &[u8]) {
    put_varint(out, b.len() as u64);
    out.extend_from_slice(b);
}

mod tag {
    pub const INT: u8 = 0;
    pub const FLOAT: u8 = 1;
    pub const STR: u8 = 2;
    pub const FALSE: u8 = 3;
    pub const TRUE: u8 = 4;
    pub const BYTES: u8 = 5;
    pub const TUPLE: u8 = 6;

    pub const ANY: u8 = 0;
    pub const LITERAL: u8 = 1;
    pub const FORMAL: u8 = 2;
    pub const RANGE: u8 = 3;
    pub const PREFIX: u8 = 4;
    pub const NESTED: u8 = 5;
}

/// Appends the encoding of a value.
pub fn encode_value(v: &Value, out: &mut Vec<u8>) {
    match v {
        Value::Int(i) => {
            out.push(tag::INT);
            put_varint(out, ((i << 1) ^ (i >> 63)) as u64);
        }
        Value::Float(x) => {
            out.push(tag::FLOAT);
            out.extend_from_slice(&x.to_bits().to_le_bytes());
        }
        Value::Str(s) => {
            out.push(tag::STR);
            put_bytes(out, s.as_bytes());
        }
        Value::Bool(false) => out.push(tag::FALSE),
        Value::Bool(true) => out.push(tag::TRUE),
        Value::Bytes(b) => {
            out.push(tag::BYTES);
            put_bytes(out, b);
        }
        Value::Tuple(t) => {
            out.push(tag::TUPLE);
            encode_tuple(t, out);
        }
    }
}

fn varint_len(mut v: u64) -> usize {
    let mut n = 1;
    while v >= 0x80 {
        v >>= 7;
        n += 1;
    }
    n
}

fn value_len(v: &Value) -> usize {
    1 + match v {
        Value::Int(i) => varint_len(((i << 1) ^ (i >> 63)) as u64),
        Value::Float(_) => 8,
        Value::Str(s) => varint_len(s.len() as u64) + s.len(),
        Value::Bool(_) => 0,
        Value::Bytes(b) => varint_len(b.len() as u64) + b.len(),
        Value::Tuple(t) => tuple_len(t),
    }
}

/// The length of a tuple's encoding ([`encode_tuple`]), without encoding it.
pub fn tuple_len(t: &[Value]) -> usize {
    varint_len(t.len() as u64) + t.iter().map(value_len).sum::<usize>()
}

/// Appends the encoding of a tuple.
pub fn encode_tuple(t: &[Value], out: &mut Vec<u8>) {
    put_varint(out, t.len() as u64);
    for v in t {
        encode_value(v, out);
    }
}

fn kind_byte(k: Kind) -> u8 {
    match k {
        Kind::Int => 0,
        Kind::Float => 1,
        Kind::Str => 2,
        Kind::Bool => 3,
        Kind::Bytes => 4,
        Kind::Tuple => 5,
    }
}

/// Appends the encoding of a template.
pub fn encode_template(t: &Template, out: &mut Vec<u8>) {
    put_varint(out, t.arity() as u64);
    for f in t.fields() {
        match f {
            Field::Any => out.push(tag::ANY),
            Field::Literal(v) => {
                out.push(tag::LITERAL);
                encode_value(v, out);
            }
            Field::Formal(k) => {
                out.push(tag::FORMAL);
                out.push(kind_byte(*k));
            }
            Field::Range(r) => {
                out.push(tag::RANGE);
                match r.lo() {
                    None => out.push(0),
                    Some(v) => {
                        out.push(1);
                        encode_value(v, out);
                    }
                }
                match r.hi() {
                    Bound::Unbounded => out.push(0),
                    Bound::Included(v) => {
                        out.push(1);
                        encode_value(v, out);
                    }
                    Bound::Excluded(v) => {
                        out.push(2);
                        encode_value(v, out);
                    }
                }
            }
            Field::Prefix(p) => {
                out.push(tag::PREFIX);
                put_bytes(out, p.as_bytes());
            }
            Field::Nested(inner) => {
                out.push(tag::NESTED);
                encode_template(inner, out);
            }
        }
    }
}

/// A tuple's encoding as a new buffer.
pub fn tuple_to_bytes(t: &[Value]) -> Vec<u8> {
    let mut out = Vec::with_capacity(16 + 8 * t.len());
    encode_tuple(t, &mut out);
    out
}

/// A template's encoding as a new buffer.
pub fn template_to_bytes(t: &Template) -> Vec<u8> {
    let mut out = Vec::with_capacity(16 + 8 * t.arity());
    encode_template(t, &mut out);
    out
}

// ---------------------------------------------------------------------------------------------
// Reading

struct Reader<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    fn new(buf: &'a [u8]) -> Self {
        Reader { buf, pos: 0 }
    }

    fn left(&self) -> usize {
        self.buf.len() - self.pos
    }

    fn byte(&mut self) -> Result<u8, DecodeError> {
        let b = *self
            .buf
            .get(self.pos)
            .ok_or(DecodeError::Truncated(self.pos))?;
        self.pos += 1;
        Ok(b)
    }

    fn take(&mut self, n: usize) -> Result<&'a [u8], DecodeError> {
        if n > self.left() {
            return Err(DecodeError::Truncated(self.buf.len()));
        }
        let s = &self.buf[self.pos..self.pos + n];
        self.pos += n;
        Ok(s)
    }

    fn u64_le(&mut self) -> Result<u64, DecodeError> {
        let b = self.take(8)?;
        let mut a = [0u8; 8];
        a.copy_from_slice(b);
        Ok(u64::from_le_bytes(a))
    }

    fn varint(&mut self) -> Result<u64, DecodeError> {
        let start = self.pos;
        let mut v: u64 = 0;
        for shift in (0..64).step_by(7) {
            let b = self.byte()?;
            if shift == 63 && b > 1 {
                return Err(DecodeError::VarintOverflow(start));
            }
            v |= u64::from(b & 0x7f) << shift;
            if b < 0x80 {
                return Ok(v);
            }
        }
        Err(DecodeError::VarintOverflow(start))
    }

    /// A count of items that take at least `min_size` bytes each: refused if the input cannot
    /// hold that many, so a forged count never makes a huge allocation.
    fn count(&mut self, min_size: usize) -> Result<usize, DecodeError> {
        let at = self.pos;
        let n = self.varint()?;
        let left = self.left();
        if n.saturating_mul(min_size as u64) > left as u64 {
            return Err(DecodeError::TooLong { len: n, at, left });
        }
        Ok(n as usize)
    }

    fn bytes(&mut self) -> Result<&'a [u8], DecodeError> {
        let n = self.count(1)?;
        self.take(n)
    }

    fn str(&mut self) -> Result<&'a str, DecodeError> {
        let at = self.pos;
        std::str::from_utf8(self.bytes()?).map_err(|_| DecodeError::BadUtf8(at))
    }

    fn value(&mut self, depth: usize) -> Result<Value, DecodeError> {
        let at = self.pos;
        Ok(match self.byte()? {
            tag::INT => {
                let z = self.varint()?;
                Value::Int(((z >> 1) as i64) ^ -((z & 1) as i64))
            }
            tag::FLOAT => Value::Float(f64::from_bits(self.u64_le()?)),
            tag::STR => Value::Str(Text::from(self.str()?)),
            tag::FALSE => Value::Bool(false),
            tag::TRUE => Value::Bool(true),
            tag::BYTES => Value::Bytes(self.bytes()?.into()),
            tag::TUPLE => Value::Tuple(self.tuple(depth + 1)?),
            t => {
                return Err(DecodeError::BadTag {
                    what: "value",
                    tag: t,
                    at,
                });
            }
        })
    }

    fn tuple(&mut self, depth: usize) -> Result<Tuple, DecodeError> {
        if depth > MAX_DEPTH {
            return Err(DecodeError::TooDeep(self.pos));
        }
        let n = self.count(1)?;
        let mut fields = Vec::with_capacity(n);
        for _ in 0..n {
            fields.push(self.value(depth)?);
        }
        Ok(Tuple::new(fields))
    }

    fn kind(&mut self) -> Result<Kind, DecodeError> {
        let at = self.pos;
        let b = self.byte()?;
        Kind::ALL
            .into_iter()
            .find(|&k| kind_byte(k) == b)
            .ok_or(DecodeError::BadTag {
                what: "kind",
                tag: b,
                at,
            })
    }

    fn template(&mut self, depth: usize) -> Result<Template, DecodeError> {
        if depth > MAX_DEPTH {
            return Err(DecodeError::TooDeep(self.pos));
        }
        let n = self.count(1)?;
        let mut fields = Vec::with_capacity(n);
        for _ in 0..n {
            fields.push(self.field(depth)?);
        }
        Ok(Template::new(fields))
    }

    fn field(&mut self, depth: usize) -> Result<Field, DecodeError> {
        let at = self.pos;
        Ok(match self.byte()? {
            tag::ANY => Field::Any,
            tag::LITERAL => Field::Literal(self.value(depth)?),
            tag::FORMAL => Field::Formal(self.kind()?),
            tag::RANGE => {
                let lo = match self.byte()? {
                    0 => None,
                    1 => Some(self.value(depth)?),
                    t => return Err(bad("range bound", t, at)),
                };
                let hi = match self.byte()? {
                    0 => Bound::Unbounded,
                    1 => Bound::Included(self.value(depth)?),
                    2 => Bound::Excluded(self.value(depth)?),
                    t => return Err(bad("range bound", t, at)),
                };
                Field::Range(Range::new(lo, hi).map_err(|_| DecodeError::BadRange(at))?)
            }
            tag::PREFIX => Field::Prefix(Text::from(self.str()?)),
            tag::NESTED => Field::nested(self.template(depth + 1)?),
            t => return Err(bad("template field", t, at)),
        })
    }

    fn finish(&self) -> Result<(), DecodeError> {
        match self.left() {
            0 => Ok(()),
            n => Err(DecodeError::Trailing(n)),
        }
    }
}

fn bad(what: &'static str, tag: u8, at: usize) -> DecodeError {
    DecodeError::BadTag { what, tag, at }
}

/// Decodes a value that fills `bytes` exactly.
pub fn decode_value(bytes: &[u8]) -> Result<Value, DecodeError> {
    let mut r = Reader::new(bytes);
    let v = r.value(1)?;
    r.finish()?;
    Ok(v)
}

/// Decodes a tuple that fills `bytes` exactly.
pub fn decode_tuple(bytes: &[u8]) -> Result<Tuple, DecodeError> {
    let mut r = Reader::new(bytes);
    let t = r.tuple(1)?;
    r.finish()?;
    Ok(t)
}

/// Decodes a template that fills `bytes` exactly.
pub fn decode_template(bytes: &[u8]) -> Result<Template, DecodeError> {
    let mut r = Reader::new(bytes);
    let t = r.template(1)?;
    r.finish()?;
    Ok(t)
}

// ---------------------------------------------------------------------------------------------
// Snapshots

fn put_opt(out: &mut Vec<u8>, v: Option<Millis>) {
    // 0 is "none"; a present value is stored plus one (saturating at the top, which no clock
    // reaches in practice).
    put_varint(out, v.map_or(0, |v| v.saturating_add(1)));
}

fn get_opt(r: &mut Reader<'_>) -> Result<Option<Millis>, DecodeError> {
    Ok(match r.varint()? {
        0 => None,
        v => Some(v - 1),
    })
}

impl SpaceView {
    /// The whole space (tuples, ids, expiries, waiters, clock) as bytes: what
    /// [`Space::decode`] reads back.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(64 + self.len() * 64);
        out.extend_from_slice(SNAPSHOT_MAGIC);
        out.extend_from_slice(&SNAPSHOT_VERSION.to_le_bytes());
        out.extend_from_slice(&self.now.to_le_bytes());
        out.extend_from_slice(&self.next_id.to_le_bytes());
        out.extend_from_slice(&self.next_waiter.to_le_bytes());
        put_varint(&mut out, self.len() as u64);
        let mut prev = 0;
        for (id, expires, tuple) in self.iter() {
            put_varint(&mut out, id - prev);
            prev = id;
            put_opt(&mut out, expires);
            encode_tuple(tuple, &mut out);
        }
        put_varint(&mut out, self.waiters.len() as u64);
        let mut prev = 0;
        for (id, w) in self.waiters.iter().map(|(id, w)| (*id, w)) {
            put_varint(&mut out, id - prev);
            prev = id;
            out.push(match w.kind {
                WaitKind::Take => 0,
                WaitKind::Read => 1,
            });
            put_varint(&mut out, w.after);
            put_opt(&mut out, w.deadline);
            encode_template(&w.template, &mut out);
        }
        let crc = crc32fast::hash(&out);
        out.extend_from_slice(&crc.to_le_bytes());
        out
    }

    /// A checksum of the viewed state: equal on replicas that hold the same state.
    pub fn digest(&self) -> u32 {
        let bytes = self.encode();
        u32::from_le_bytes(bytes[bytes.len() - 4..].try_into().unwrap_or([0; 4]))
    }
}

impl Space {
    /// The whole space (tuples, ids, expiries, waiters, clock) as bytes.
    pub fn encode(&self) -> Vec<u8> {
        self.view().encode()
    }

    /// A space from bytes made by [`Space::encode`]; anything else is refused with an error.
    pub fn decode(bytes: &[u8]) -> Result<Space, DecodeError> {
        let header = SNAPSHOT_MAGIC.len() + 2;
        if bytes.len() < header + 24 + 4 || &bytes[..SNAPSHOT_MAGIC.len()] != SNAPSHOT_MAGIC {
            return Err(DecodeError::BadMagic);
        }
        let version = u16::from_le_bytes([bytes[6], bytes[7]]);
        if version != SNAPSHOT_VERSION {
            return Err(DecodeError::BadMagic);
        }
        let (body, trailer) = bytes.split_at(bytes.len() - 4);
        let stored = u32::from_le_bytes([trailer[0], trailer[1], trailer[2], trailer[3]]);
        let computed = crc32fast::hash(body);
        if stored != computed {
            return Err(DecodeError::Checksum { stored, computed });
        }
        let mut r = Reader::new(body);
        r.take(header)?;
        let mut space = Space::new();
        space.now = r.u64_le()?;
        space.next_id = r.u64_le()?;
        space.next_waiter = r.u64_le()?;
        if space.next_id == 0 || space.next_waiter == 0 {
            return Err(DecodeError::Inconsistent("id counters start at 1"));
        }
        let tuples = r.count(3)?;
        space.reserve(tuples);
        let mut id: TupleId = 0;
        for _ in 0..tuples {
            id = next_id(id, r.varint()?, space.next_id)?;
            let expires_at = get_opt(&mut r)?;
            let tuple = r.tuple(1)?;
            space.restore_tuple(id, tuple, expires_at);
        }
        let waiters = r.count(5)?;
        let mut id = 0;
        for _ in 0..waiters {
            id = next_id(id, r.varint()?, space.next_waiter)?;
            let at = r.pos;
            let kind = match r.byte()? {
                0 => WaitKind::Take,
                1 => WaitKind::Read,
                t => return Err(bad("waiter kind", t, at)),
            };
            let after = r.varint()?;
            let deadline = get_opt(&mut r)?;
            let template = r.template(1)?;
            space.restore_waiter(
                id,
                Waiter {
                    kind,
                    template,
                    after,
                    deadline,
                },
            );
        }
        r.finish()?;
        Ok(space)
    }

    /// A checksum of the space's whole state: equal on replicas that hold the same state.
    pub fn digest(&self) -> u32 {
        self.view().digest()
    }
}

fn next_id(prev: u64, delta: u64, limit: u64) -> Result<u64, DecodeError> {
    if delta == 0 {
        return Err(DecodeError::Inconsistent("ids must increase"));
    }
    let id = prev
        .checked_add(delta)
        .ok_or(DecodeError::Inconsistent("id overflows"))?;
    if id >= limit {
        return Err(DecodeError::Inconsistent(
            "id at or past the next id counter",
        ));
    }
    Ok(id)
}

#[cfg(test)]
mod len_tests {
    use super::*;
    use crate::tuple;

    #[test]
    fn tuple_len_is_the_encoded_length() {
        let nested = tuple!["a", -1, 2.5, true, false];
        for t in [
            tuple![],
            tuple!["x"],
            tuple![i64::MIN, i64::MAX, 0, 300, -300],
            tuple!["é".repeat(200), vec![1u8, 2, 3]],
            tuple![Value::Tuple(nested), "tail"],
        ] {
            assert_eq!(tuple_len(&t), tuple_to_bytes(&t).len(), "{t:?}");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tuple;

    fn sample() -> Tuple {
        tuple![
            "post",
            "a-string-longer-than-twenty-two-bytes",
            -42,
            3.5,
            true,
            false,
            vec![0u8, 255],
            tuple!["nested", i64::MIN, tuple![]]
        ]
    }

    #[test]
    fn tuples_round_trip() {
        let t = sample();
        assert_eq!(decode_tuple(&tuple_to_bytes(&t)).unwrap(), t);
    }

    #[test]
    fn templates_round_trip() {
        let t: Template = Template::new(vec![
            Field::Any,
            Field::Literal("x".into()),
            Field::Formal(Kind::Bytes),
            Field::Range(Range::new(Some(1.into()), Bound::Excluded(9.into())).unwrap()),
            Field::Range(Range::new(None, Bound::Included(2.5.into())).unwrap()),
            Field::Prefix("top".into()),
            Field::nested(Template::new(vec![Field::Formal(Kind::Int)])),
        ]);
        assert_eq!(decode_template(&template_to_bytes(&t)).unwrap(), t);
    }

    #[test]
    fn garbage_is_refused_not_panicked_on() {
        let good = tuple_to_bytes(&sample());
        for cut in 0..good.len() {
            assert!(decode_tuple(&good[..cut]).is_err(), "prefix of {cut} bytes");
        }
        let mut trailing = good.clone();
        trailing.push(0);
        assert_eq!(decode_tuple(&trailing), Err(DecodeError::Trailing(1)));
        // A count far larger than the input.
        assert!(matches!(
            decode_tuple(&[0xff, 0xff, 0xff, 0xff, 0x0f]),
            Err(DecodeError::TooLong { .. })
        ));
        // Overlong varint.
        assert!(decode_tuple(&[0xff; 11]).is_err());
        // Nesting bombs.
        let mut deep = Vec::new();
        for _ in 0..10_000 {
            deep.extend_from_slice(&[1, tag::TUPLE]);
        }
        deep.push(0);
        assert!(matches!(decode_tuple(&deep), Err(DecodeError::TooDeep(_))));
        // Bad UTF-8.
        assert_eq!(
            decode_tuple(&[1, tag::STR, 1, 0xff]),
            Err(DecodeError::BadUtf8(2))
        );
    }

    #[test]
    fn every_single_byte_flip_of_a_snapshot_is_caught() {
        let mut space = Space::new();
        space.out(sample(), Some(100));
        space.out(tuple!["b", 2], None);
        space.in_or_wait(Template::new(vec![Field::Formal(Kind::Int)]), Some(5));
        let bytes = space.encode();
        for i in 0..bytes.len() {
            let mut corrupt = bytes.clone();
            corrupt[i] ^= 0x40;
            assert!(Space::decode(&corrupt).is_err(), "flip at byte {i}");
        }
        for cut in 0..bytes.len() {
            assert!(Space::decode(&bytes[..cut]).is_err(), "cut at {cut}");
        }
    }
}
