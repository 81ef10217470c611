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
//!
//! A snapshot is written and read a bounded chunk at a time ([`SpaceView::encode_to`],
//! [`Space::decode_from`]), so a space of millions of tuples is never held twice in memory, once
//! as itself and once as its encoding. The streaming decoder checks the checksum at the end, so
//! damage may be reported as whatever the damaged bytes first fail to be, rather than
//! [`DecodeError::Checksum`].

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
    /// One tuple or waiter of a snapshot read through [`Space::decode_from`] is longer than its
    /// window may grow ([`MAX_RECORD_BYTES`]).
    #[error("an item at byte {at} does not fit in the decoder's {limit}-byte window")]
    TooLarge {
        /// Where the item starts.
        at: usize,
        /// The most the window grows to.
        limit: usize,
    },
    /// The input is longer than the caller said it could be.
    #[error("input longer than the {0} bytes it may hold")]
    Oversized(u64),
    /// Reading the input failed.
    #[error("reading the snapshot: {0}")]
    Io(String),
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

/// Bytes [`SpaceView::encode_to`] gathers before it hands them to the writer.
const ENCODE_CHUNK: usize = 256 << 10;

/// The window [`Space::decode_from`] reads through, unless the input is known to be smaller.
const DECODE_WINDOW: usize = 1 << 20;

/// The most the window of [`Space::decode_from`] grows to, for one tuple or waiter that does not
/// fit: a longer one is refused ([`DecodeError::TooLarge`]).
pub const MAX_RECORD_BYTES: usize = 64 << 20;

/// Tuples [`Space::decode_from`] makes room for up front at most, whatever the count says (the
/// count is read before the checksum can vouch for it).
const MAX_RESERVE: usize = 1 << 26;

/// The magic and version, the clock and id counters: what every snapshot starts with.
const HEADER: usize = SNAPSHOT_MAGIC.len() + 2 + 24;

/// The trailing CRC-32.
const TRAILER: usize = 4;

/// Where [`SpaceView::encode_to`] gathers bytes: a bounded buffer, flushed to the writer through
/// the running checksum.
struct Chunks<'w, W: std::io::Write + ?Sized> {
    w: &'w mut W,
    buf: Vec<u8>,
    crc: crc32fast::Hasher,
}

impl<W: std::io::Write + ?Sized> Chunks<'_, W> {
    /// Hands the buffer over if it is full.
    fn maybe_flush(&mut self) -> std::io::Result<()> {
        if self.buf.len() >= ENCODE_CHUNK {
            self.flush()?;
        }
        Ok(())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.crc.update(&self.buf);
        self.w.write_all(&self.buf)?;
        self.buf.clear();
        Ok(())
    }
}

impl SpaceView {
    /// The whole space (tuples, ids, expiries, waiters, clock) as bytes: what
    /// [`Space::decode`] reads back. The same bytes as [`SpaceView::encode_to`] writes.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(64 + self.len() * 64);
        self.encode_to(&mut out)
            .expect("writing to a Vec does not fail");
        out
    }

    /// Writes [`SpaceView::encode`]'s bytes to `w`, a bounded chunk at a time (the whole
    /// encoding is never in memory): what [`Space::decode_from`] reads back.
    pub fn encode_to<W: std::io::Write + ?Sized>(&self, w: &mut W) -> std::io::Result<()> {
        self.encode_with(w).map(|_| ())
    }

    /// [`SpaceView::encode_to`], returning the trailing checksum.
    fn encode_with<W: std::io::Write + ?Sized>(&self, w: &mut W) -> std::io::Result<u32> {
        let mut out = Chunks {
            w,
            buf: Vec::with_capacity(ENCODE_CHUNK + 4096),
            crc: crc32fast::Hasher::new(),
        };
        let buf = &mut out.buf;
        buf.extend_from_slice(SNAPSHOT_MAGIC);
        buf.extend_from_slice(&SNAPSHOT_VERSION.to_le_bytes());
        buf.extend_from_slice(&self.now.to_le_bytes());
        buf.extend_from_slice(&self.next_id.to_le_bytes());
        buf.extend_from_slice(&self.next_waiter.to_le_bytes());
        put_varint(buf, self.len() as u64);
        let mut prev = 0;
        for (id, expires, tuple) in self.iter() {
            put_varint(&mut out.buf, id - prev);
            prev = id;
            put_opt(&mut out.buf, expires);
            encode_tuple(tuple, &mut out.buf);
            out.maybe_flush()?;
        }
        put_varint(&mut out.buf, self.waiters.len() as u64);
        let mut prev = 0;
        for (id, w) in self.waiters.iter().map(|(id, w)| (*id, w)) {
            let buf = &mut out.buf;
            put_varint(buf, id - prev);
            prev = id;
            buf.push(match w.kind {
                WaitKind::Take => 0,
                WaitKind::Read => 1,
            });
            put_varint(buf, w.after);
            put_opt(buf, w.deadline);
            encode_template(&w.template, buf);
            out.maybe_flush()?;
        }
        out.flush()?;
        let crc = out.crc.finalize();
        out.w.write_all(&crc.to_le_bytes())?;
        out.w.flush()?;
        Ok(crc)
    }

    /// A checksum of the viewed state: equal on replicas that hold the same state. (The
    /// encoding's checksum, computed without keeping the encoding.)
    pub fn digest(&self) -> u32 {
        self.encode_with(&mut std::io::sink()).unwrap_or(0)
    }
}

/// The input of [`Space::decode_from`] through a window: `buf[start..end]` is read and not yet
/// decoded; `buf[..hashed]` is in the checksum already. The window is refilled when an item runs
/// past its end, and grows (up to `cap`) only when one item does not fit in it.
struct Window<'r, R: std::io::Read + ?Sized> {
    r: &'r mut R,
    buf: Vec<u8>,
    start: usize,
    end: usize,
    hashed: usize,
    /// The offset in the input of `buf[0]`.
    base: u64,
    crc: crc32fast::Hasher,
    eof: bool,
    /// The input may be no longer than this.
    max_bytes: u64,
    cap: usize,
}

impl<R: std::io::Read + ?Sized> Window<'_, R> {
    /// The offset in the input of the next byte to decode.
    fn offset(&self) -> u64 {
        self.base + self.start as u64
    }

    /// Read bytes not yet decoded.
    fn available(&self) -> usize {
        self.end - self.start
    }

    /// Reads more input into the window (making room first); false at the end of the input.
    fn more(&mut self) -> Result<bool, DecodeError> {
        if self.eof {
            return Ok(false);
        }
        if self.start > 0 {
            self.crc.update(&self.buf[self.hashed..self.start]);
            self.buf.copy_within(self.start..self.end, 0);
            self.base += self.start as u64;
            self.end -= self.start;
            self.start = 0;
            self.hashed = 0;
        }
        if self.end == self.buf.len() {
            if self.buf.len() >= self.cap {
                return Err(DecodeError::TooLarge {
                    at: to_usize(self.base),
                    limit: self.cap,
                });
            }
            let grown = self.buf.len().saturating_mul(2).clamp(64, self.cap);
            self.buf.resize(grown, 0);
        }
        let before = self.end;
        while self.end < self.buf.len() {
            let room = self.buf.len() - self.end;
            match self.r.read(&mut self.buf[self.end..]) {
                Ok(0) => {
                    self.eof = true;
                    break;
                }
                Ok(n) if n <= room => self.end += n,
                Ok(_) => return Err(DecodeError::Io("the reader overran its buffer".into())),
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) => return Err(DecodeError::Io(e.to_string())),
            }
        }
        if self.base + self.end as u64 > self.max_bytes {
            return Err(DecodeError::Oversized(self.max_bytes));
        }
        Ok(self.end > before)
    }

    /// Reads until `n` bytes are available or the input ends.
    fn want(&mut self, n: usize) -> Result<(), DecodeError> {
        while self.available() < n && self.more()? {}
        Ok(())
    }

    /// Decodes one item with `f` from the window, refilling it and starting the item over if
    /// the item runs past what has been read so far.
    fn item<T>(
        &mut self,
        mut f: impl FnMut(&mut Reader<'_>) -> Result<T, DecodeError>,
    ) -> Result<T, DecodeError> {
        loop {
            let mut r = Reader {
                buf: &self.buf[..self.end],
                pos: self.start,
            };
            match f(&mut r) {
                Ok(v) => {
                    self.start = r.pos;
                    return Ok(v);
                }
                // Only these two can come from the window's end rather than the item itself.
                Err(DecodeError::Truncated(_) | DecodeError::TooLong { .. }) if !self.eof => {
                    self.more()?;
                }
                Err(e) => return Err(e.shifted(self.base)),
            }
        }
    }

    /// A count of items that take at least `min_size` bytes each, refused if the input (at most
    /// `max_bytes`) cannot hold that many.
    fn count(&mut self, min_size: u64) -> Result<usize, DecodeError> {
        let at = self.offset();
        let n = self.item(|r| r.varint())?;
        let left = self
            .max_bytes
            .saturating_sub(self.offset())
            .saturating_sub(TRAILER as u64);
        if n.saturating_mul(min_size) > left {
            return Err(DecodeError::TooLong {
                len: n,
                at: to_usize(at),
                left: to_usize(left),
            });
        }
        usize::try_from(n).map_err(|_| DecodeError::TooLong {
            len: n,
            at: to_usize(at),
            left: to_usize(left),
        })
    }

    /// Checks the trailing checksum against the bytes decoded so far, and that nothing follows.
    fn finish(&mut self) -> Result<(), DecodeError> {
        self.crc.update(&self.buf[self.hashed..self.start]);
        self.hashed = self.start;
        let stored = self.item(|r| {
            let b = r.take(TRAILER)?;
            Ok(u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
        })?;
        self.hashed = self.start;
        let computed = std::mem::take(&mut self.crc).finalize();
        if stored != computed {
            return Err(DecodeError::Checksum { stored, computed });
        }
        if self.available() == 0 && !self.more()? {
            return Ok(());
        }
        Err(DecodeError::Trailing(self.available()))
    }
}

fn to_usize(n: u64) -> usize {
    usize::try_from(n).unwrap_or(usize::MAX)
}

impl DecodeError {
    /// The error with its input offsets moved on by `by` (from a window's to the input's).
    fn shifted(self, by: u64) -> Self {
        let by = to_usize(by);
        let at = |at: usize| at.saturating_add(by);
        match self {
            DecodeError::Truncated(p) => DecodeError::Truncated(at(p)),
            DecodeError::BadTag { what, tag, at: p } => DecodeError::BadTag {
                what,
                tag,
                at: at(p),
            },
            DecodeError::VarintOverflow(p) => DecodeError::VarintOverflow(at(p)),
            DecodeError::TooLong { len, at: p, left } => DecodeError::TooLong {
                len,
                at: at(p),
                left,
            },
            DecodeError::BadUtf8(p) => DecodeError::BadUtf8(at(p)),
            DecodeError::TooDeep(p) => DecodeError::TooDeep(at(p)),
            DecodeError::BadRange(p) => DecodeError::BadRange(at(p)),
            DecodeError::TooLarge { at: p, limit } => DecodeError::TooLarge { at: at(p), limit },
            e @ (DecodeError::Trailing(_)
            | DecodeError::BadMagic
            | DecodeError::Checksum { .. }
            | DecodeError::Inconsistent(_)
            | DecodeError::Io(_)
            | DecodeError::Oversized(_)) => e,
        }
    }
}

impl Space {
    /// The whole space (tuples, ids, expiries, waiters, clock) as bytes.
    pub fn encode(&self) -> Vec<u8> {
        self.view().encode()
    }

    /// A space from bytes made by [`Space::encode`]; anything else is refused with an error.
    pub fn decode(bytes: &[u8]) -> Result<Space, DecodeError> {
        // The bytes are in memory already: an item as long as they are may have a window.
        let cap = MAX_RECORD_BYTES.max(bytes.len().saturating_add(1));
        decode_stream(&mut &bytes[..], bytes.len() as u64, cap)
    }

    /// A space from the bytes [`SpaceView::encode_to`] wrote, read from `r` through a bounded
    /// window (about a MiB, more only for a tuple or waiter longer than that, never more than
    /// [`MAX_RECORD_BYTES`]), checking the checksum as it goes. `max_bytes` bounds the length of
    /// the encoding (a file's size, say): longer input is refused, and no count claiming more
    /// than that could hold is believed. `r` must end right after the encoding.
    pub fn decode_from<R: std::io::Read + ?Sized>(
        r: &mut R,
        max_bytes: u64,
    ) -> Result<Space, DecodeError> {
        decode_stream(r, max_bytes, MAX_RECORD_BYTES)
    }

    /// A checksum of the space's whole state: equal on replicas that hold the same state.
    pub fn digest(&self) -> u32 {
        self.view().digest()
    }
}

fn decode_stream<R: std::io::Read + ?Sized>(
    r: &mut R,
    max_bytes: u64,
    cap: usize,
) -> Result<Space, DecodeError> {
    let first = to_usize(max_bytes.saturating_add(1)).clamp(64, DECODE_WINDOW);
    let mut w = Window {
        r,
        buf: vec![0; first],
        start: 0,
        end: 0,
        hashed: 0,
        base: 0,
        crc: crc32fast::Hasher::new(),
        eof: false,
        max_bytes,
        cap: cap.max(first),
    };
    // The shortest snapshot: the header, two empty counts and the checksum.
    w.want(HEADER + 2 + TRAILER)?;
    let head = &w.buf[w.start..w.end];
    if head.len() < HEADER + 2 + TRAILER
        || &head[..SNAPSHOT_MAGIC.len()] != SNAPSHOT_MAGIC
        || u16::from_le_bytes([head[6], head[7]]) != SNAPSHOT_VERSION
    {
        return Err(DecodeError::BadMagic);
    }
    let mut space = Space::new();
    (space.now, space.next_id, space.next_waiter) = w.item(|r| {
        r.take(SNAPSHOT_MAGIC.len() + 2)?;
        Ok((r.u64_le()?, r.u64_le()?, r.u64_le()?))
    })?;
    if space.next_id == 0 || space.next_waiter == 0 {
        return Err(DecodeError::Inconsistent("id counters start at 1"));
    }
    let tuples = w.count(3)?;
    space.reserve(tuples.min(MAX_RESERVE));
    let mut id: TupleId = 0;
    for _ in 0..tuples {
        let (delta, expires_at, tuple) = w.item(|r| Ok((r.varint()?, get_opt(r)?, r.tuple(1)?)))?;
        id = next_id(id, delta, space.next_id)?;
        space.restore_tuple(id, tuple, expires_at);
    }
    let waiters = w.count(5)?;
    let mut id = 0;
    for _ in 0..waiters {
        let (delta, waiter) = w.item(|r| {
            let delta = r.varint()?;
            let at = r.pos;
            let kind = match r.byte()? {
                0 => WaitKind::Take,
                1 => WaitKind::Read,
                t => return Err(bad("waiter kind", t, at)),
            };
            let after = r.varint()?;
            let deadline = get_opt(r)?;
            let template = r.template(1)?;
            Ok((
                delta,
                Waiter {
                    kind,
                    template,
                    after,
                    deadline,
                },
            ))
        })?;
        id = next_id(id, delta, space.next_waiter)?;
        space.restore_waiter(id, waiter);
    }
    w.finish()?;
    Ok(space)
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

#[cfg(test)]
mod stream_tests {
    use std::io::{self, Read, Write};

    use super::*;
    use crate::tuple;

    /// A space with tuples (some with TTLs, one nested), take and read waiters, and a moved
    /// clock.
    fn populated() -> Space {
        let mut space = Space::new();
        space.advance(1_000);
        for i in 0..300i64 {
            let ttl = (i % 3 == 0).then_some(10_000 + i as u64);
            space.out(tuple!["n", i, format!("text {i}"), vec![i as u8; 5]], ttl);
        }
        space.out(tuple!["nested", tuple!["a", 1.5, tuple![]], true], Some(5));
        // Gaps in the ids.
        for _ in 0..10 {
            space.inp(&Template::new(vec![Field::Any; 4]));
        }
        let int = Template::new(vec![Field::Formal(Kind::Int)]);
        space.in_or_wait(int.clone(), Some(500));
        space.rd_or_wait(
            Template::new(vec![Field::Literal("x".into()), Field::Prefix("p".into())]),
            7,
            None,
        );
        space.in_or_wait(int, None);
        space
    }

    /// A reader that hands out at most `n` bytes a call.
    struct Trickle<'a> {
        bytes: &'a [u8],
        n: usize,
    }

    impl Read for Trickle<'_> {
        fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
            let n = self.n.min(buf.len()).min(self.bytes.len());
            buf[..n].copy_from_slice(&self.bytes[..n]);
            self.bytes = &self.bytes[n..];
            Ok(n)
        }
    }

    /// A writer that takes at most 7 bytes a call.
    struct Sevens(Vec<u8>);

    impl Write for Sevens {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            let n = buf.len().min(7);
            self.0.extend_from_slice(&buf[..n]);
            Ok(n)
        }

        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    fn same(a: &Space, b: &Space) {
        assert_eq!(a.len(), b.len());
        assert_eq!(a.waiter_count(), b.waiter_count());
        assert_eq!(a.now(), b.now());
        assert_eq!(a.next_id(), b.next_id());
        for (id, t) in a.iter() {
            assert_eq!(b.read_id(id), Some(t));
            assert_eq!(b.expiry(id), a.expiry(id));
        }
        assert_eq!(a.encode(), b.encode());
        assert_eq!(a.digest(), b.digest());
    }

    #[test]
    fn streaming_round_trip_matches_encode_and_decode() {
        let space = populated();
        assert!(space.waiter_count() == 3 && space.len() > 200);
        let bytes = space.encode();
        let mut streamed = Vec::new();
        space.view().encode_to(&mut streamed).unwrap();
        assert_eq!(streamed, bytes);
        let decoded = Space::decode(&bytes).unwrap();
        same(&space, &decoded);
        let from = Space::decode_from(&mut &bytes[..], bytes.len() as u64).unwrap();
        same(&space, &from);
        // A bound above the length is only a bound.
        let from = Space::decode_from(&mut &bytes[..], u64::MAX).unwrap();
        same(&space, &from);
        // The digest is the encoding's checksum.
        let crc = u32::from_le_bytes(bytes[bytes.len() - 4..].try_into().unwrap());
        assert_eq!(space.digest(), crc);
        assert_eq!(crc, crc32fast::hash(&bytes[..bytes.len() - 4]));
        // The empty space too.
        let empty = Space::new().encode();
        same(
            &Space::new(),
            &Space::decode_from(&mut &empty[..], empty.len() as u64).unwrap(),
        );
    }

    #[test]
    fn decode_from_a_reader_of_one_byte_at_a_time() {
        let space = populated();
        let bytes = space.encode();
        let mut r = Trickle {
            bytes: &bytes,
            n: 1,
        };
        let decoded = Space::decode_from(&mut r, bytes.len() as u64).unwrap();
        same(&space, &decoded);
    }

    #[test]
    fn encode_to_a_writer_of_seven_bytes_at_a_time() {
        let space = populated();
        let mut w = Sevens(Vec::new());
        space.view().encode_to(&mut w).unwrap();
        assert_eq!(w.0, space.encode());
    }

    #[test]
    fn items_across_and_beyond_the_window_decode() {
        // Many windows' worth, a tuple longer than the first window (it grows), and small
        // reads that end mid-item.
        let mut space = Space::new();
        let big = vec![7u8; 3 * DECODE_WINDOW + 11];
        for i in 0..2_000i64 {
            space.out(tuple!["k", i, "v".repeat(700)], None);
            if i == 1_000 {
                space.out(tuple!["big", big.clone()], Some(9));
            }
        }
        let bytes = space.encode();
        assert!(bytes.len() > 4 * DECODE_WINDOW);
        let mut streamed = Vec::new();
        space.view().encode_to(&mut streamed).unwrap();
        assert_eq!(streamed, bytes);
        let mut r = Trickle {
            bytes: &bytes,
            n: 4093,
        };
        same(
            &space,
            &Space::decode_from(&mut r, bytes.len() as u64).unwrap(),
        );
        same(&space, &Space::decode(&bytes).unwrap());
        // Past the window's cap it is refused, not read on.
        let mut r = &bytes[..];
        assert!(matches!(
            decode_stream(&mut r, bytes.len() as u64, 2 * DECODE_WINDOW),
            Err(DecodeError::TooLarge { .. })
        ));
    }

    #[test]
    fn every_truncation_is_an_error() {
        let bytes = populated().encode();
        for cut in 0..bytes.len() {
            let short = &bytes[..cut];
            assert!(Space::decode(short).is_err(), "cut at {cut}");
            assert!(
                Space::decode_from(&mut &short[..], bytes.len() as u64).is_err(),
                "cut at {cut}, streamed"
            );
            let mut r = Trickle { bytes: short, n: 3 };
            assert!(
                Space::decode_from(&mut r, cut as u64).is_err(),
                "cut at {cut}"
            );
        }
    }

    #[test]
    fn trailing_bytes_are_an_error() {
        let mut bytes = populated().encode();
        let n = bytes.len() as u64;
        bytes.extend_from_slice(b"junk");
        assert_eq!(Space::decode(&bytes).err(), Some(DecodeError::Trailing(4)));
        let mut r = Trickle {
            bytes: &bytes,
            n: 1,
        };
        assert!(matches!(
            Space::decode_from(&mut r, u64::MAX),
            Err(DecodeError::Trailing(_))
        ));
        // With the bound at the snapshot's own length, the extra bytes overrun it.
        assert_eq!(
            Space::decode_from(&mut &bytes[..], n).err(),
            Some(DecodeError::Oversized(n))
        );
    }

    #[test]
    fn more_than_max_bytes_a_forged_count_or_a_failing_reader_is_an_error() {
        let bytes = populated().encode();
        let n = bytes.len() as u64;
        assert_eq!(
            Space::decode_from(&mut &bytes[..], n - 1).err(),
            Some(DecodeError::Oversized(n - 1))
        );
        // A tuple count the input cannot hold is refused before anything is reserved.
        let mut forged = bytes[..HEADER].to_vec();
        put_varint(&mut forged, 1 << 40);
        forged.extend_from_slice(&[0; 64]);
        assert!(matches!(
            Space::decode_from(&mut &forged[..], forged.len() as u64),
            Err(DecodeError::TooLong { len, at, .. }) if len == 1 << 40 && at == HEADER
        ));
        // Even when the caller's bound is no bound (the reservation is capped).
        let mut r = &forged[..];
        assert!(Space::decode_from(&mut r, u64::MAX).is_err());
        struct Broken;
        impl Read for Broken {
            fn read(&mut self, _: &mut [u8]) -> io::Result<usize> {
                Err(io::Error::other("disk on fire"))
            }
        }
        assert!(matches!(
            Space::decode_from(&mut Broken, n),
            Err(DecodeError::Io(e)) if e.contains("disk on fire")
        ));
    }
}
