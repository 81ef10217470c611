//! The text syntax of values, tuples and templates: printing (the `Display` impls) and parsing
//! (the `FromStr` impls and [`parse_value`], [`parse_tuple`], [`parse_template`]).
//!
//! ```text
//! tuple    := "(" [ value { "," value } [","] ] ")"
//! value    := int | float | str | bool | bytes | tuple
//! int      := ["-"] digits                          42, -7
//! float    := ["-"] digits "." digits [exp] | ["-"] digits exp | "inf" | "-inf" | "NaN"
//! str      := '"' { char | escape } '"'             escapes: \" \\ \n \r \t \0 \u{HEX}
//! bool     := "true" | "false"
//! bytes    := 'b"' { hex hex } '"'                  b"00ff"
//! template := "(" [ field { "," field } [","] ] ")"
//! field    := value | "_" | "?" kind | range | str "*" | template
//! kind     := "int" | "float" | "str" | "bool" | "bytes" | "tuple"
//! range    := value ".." value | value "..=" value | value ".." | ".." value | "..=" value
//! ```
//!
//! Printing is the inverse of parsing: `parse(print(x)) == x` for every tuple and template.
//! (Every NaN prints as `NaN` and parses back as [`f64::NAN`].)
//!
//! Whitespace (spaces, tabs, newlines) may appear between tokens and around the whole input. A `.`
//! directly followed by another `.` ends a number, so `1..10` is a range, not a float. Tuples (and
//! nested templates) may nest at most [`MAX_DEPTH`] deep. Errors are [`ParseError`]s naming the
//! column (counted in chars from the start of the input, 1-based) where parsing went wrong.

use std::fmt::{self, Write};
use std::ops::Bound;
use std::str::FromStr;

use crate::template::{Field, Range, RangeError, Template};
use crate::value::{Kind, Tuple, Value};

fn write_str_literal(f: &mut fmt::Formatter<'_>, s: &str) -> fmt::Result {
    f.write_char('"')?;
    for c in s.chars() {
        match c {
            '"' => f.write_str("\\\"")?,
            '\\' => f.write_str("\\\\")?,
            '\n' => f.write_str("\\n")?,
            '\r' => f.write_str("\\r")?,
            '\t' => f.write_str("\\t")?,
            '\0' => f.write_str("\\0")?,
            c if c.is_control() => write!(f, "\\u{{{:x}}}", u32::from(c))?,
            c => f.write_char(c)?,
        }
    }
    f.write_char('"')
}

fn write_float(f: &mut fmt::Formatter<'_>, x: f64) -> fmt::Result {
    // `{:?}` prints the shortest representation that reads back to the same f64, and always with
    // a `.` or an exponent, so it never reads back as an int.
    if x.is_nan() {
        f.write_str("NaN")
    } else {
        write!(f, "{x:?}")
    }
}

impl fmt::Display for Value {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Value::Int(i) => write!(f, "{i}"),
            Value::Float(x) => write_float(f, *x),
            Value::Str(s) => write_str_literal(f, s),
            Value::Bool(b) => write!(f, "{b}"),
            Value::Bytes(b) => {
                f.write_str("b\"")?;
                for byte in b.iter() {
                    write!(f, "{byte:02x}")?;
                }
                f.write_char('"')
            }
            Value::Tuple(t) => fmt::Display::fmt(t, f),
        }
    }
}

fn write_list<T: fmt::Display>(f: &mut fmt::Formatter<'_>, items: &[T]) -> fmt::Result {
    f.write_char('(')?;
    for (i, item) in items.iter().enumerate() {
        if i > 0 {
            f.write_str(", ")?;
        }
        item.fmt(f)?;
    }
    f.write_char(')')
}

impl fmt::Display for Tuple {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write_list(f, self.fields())
    }
}

impl fmt::Display for Range {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if let Some(lo) = self.lo() {
            lo.fmt(f)?;
        }
        match self.hi() {
            Bound::Included(hi) => write!(f, "..={hi}"),
            Bound::Excluded(hi) => write!(f, "..{hi}"),
            Bound::Unbounded => f.write_str(".."),
        }
    }
}

impl fmt::Display for Field {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Field::Any => f.write_char('_'),
            Field::Literal(v) => v.fmt(f),
            Field::Formal(k) => write!(f, "?{k}"),
            Field::Range(r) => r.fmt(f),
            Field::Prefix(p) => {
                write_str_literal(f, p)?;
                f.write_char('*')
            }
            Field::Nested(t) => t.fmt(f),
        }
    }
}

impl fmt::Display for Template {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write_list(f, self.fields())
    }
}

// ---------------------------------------------------------------------------------------------
// Parsing
// ---------------------------------------------------------------------------------------------

/// How deeply tuples (and nested templates) may nest in parsed input: `()` has depth 1, `(())`
/// depth 2. Deeper input is refused with a [`ParseError`], so parsing never exhausts the stack.
pub const MAX_DEPTH: usize = 64;

/// Why a text could not be parsed as a value, tuple or template.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("column {column}: expected {expected}, found {found}")]
pub struct ParseError {
    /// Where parsing went wrong: 1-based, counted in chars from the start of the input.
    pub column: usize,
    /// What the parser expected there, e.g. `',' or ')'`.
    pub expected: String,
    /// What it found instead, e.g. `')'`, `'abc'` or `end of input`.
    pub found: String,
}

/// Parses a value (a scalar or a tuple).
pub fn parse_value(text: &str) -> Result<Value, ParseError> {
    let mut p = Parser::new(text);
    let v = p.value("a value")?;
    p.finish(v)
}

/// Parses a tuple: `(v, v, ...)`.
pub fn parse_tuple(text: &str) -> Result<Tuple, ParseError> {
    let mut p = Parser::new(text);
    p.skip_ws();
    if p.peek() != Some('(') {
        return Err(p.error(p.pos, "'('"));
    }
    let t = p.tuple()?;
    p.finish(t)
}

/// Parses a template: `(field, field, ...)`.
pub fn parse_template(text: &str) -> Result<Template, ParseError> {
    let mut p = Parser::new(text);
    p.skip_ws();
    if p.peek() != Some('(') {
        return Err(p.error(p.pos, "'('"));
    }
    let t = Template::new(p.list("a field", Parser::field)?);
    p.finish(t)
}

impl FromStr for Value {
    type Err = ParseError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        parse_value(s)
    }
}

impl FromStr for Tuple {
    type Err = ParseError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        parse_tuple(s)
    }
}

impl FromStr for Template {
    type Err = ParseError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        parse_template(s)
    }
}

fn is_word_start(c: char) -> bool {
    c.is_alphabetic() || c == '_'
}

fn is_word_char(c: char) -> bool {
    c.is_alphanumeric() || c == '_'
}

/// Quotes a piece of input for [`ParseError::found`], shortening long ones.
fn quote(text: &str) -> String {
    const MAX_CHARS: usize = 32;
    let mut out = String::from("'");
    for (i, c) in text.chars().enumerate() {
        if i == MAX_CHARS {
            out.push_str("...");
            break;
        }
        if c == '"' {
            out.push(c);
        } else {
            out.extend(c.escape_debug());
        }
    }
    out.push('\'');
    out
}

/// Describes the input starting at `rest` for [`ParseError::found`].
fn describe(rest: &str) -> String {
    match rest.chars().next() {
        None => "end of input".to_owned(),
        Some(c) if is_word_char(c) => {
            let end = rest.find(|c| !is_word_char(c)).unwrap_or(rest.len());
            quote(&rest[..end])
        }
        Some('.') if rest.starts_with("..=") => quote("..="),
        Some('.') if rest.starts_with("..") => quote(".."),
        Some(c) => quote(c.encode_utf8(&mut [0; 4])),
    }
}

/// A recursive-descent parser over the input, tracking a byte offset (columns are computed in
/// chars only when an error is reported).
struct Parser<'a> {
    src: &'a str,
    pos: usize,
    depth: usize,
}

impl<'a> Parser<'a> {
    fn new(src: &'a str) -> Self {
        Parser {
            src,
            pos: 0,
            depth: 0,
        }
    }

    fn rest(&self) -> &'a str {
        &self.src[self.pos..]
    }

    fn peek(&self) -> Option<char> {
        self.rest().chars().next()
    }

    fn peek_second(&self) -> Option<char> {
        self.rest().chars().nth(1)
    }

    fn bump(&mut self) -> Option<char> {
        let c = self.peek()?;
        self.pos += c.len_utf8();
        Some(c)
    }

    fn eat(&mut self, c: char) -> bool {
        if self.peek() == Some(c) {
            self.pos += c.len_utf8();
            true
        } else {
            false
        }
    }

    fn skip_ws(&mut self) {
        while matches!(self.peek(), Some(' ' | '\t' | '\n' | '\r')) {
            self.pos += 1;
        }
    }

    fn skip_digits(&mut self) {
        while self.peek().is_some_and(|c| c.is_ascii_digit()) {
            self.pos += 1;
        }
    }

    /// The word (letters, digits, `_`) starting here, without consuming it.
    fn word(&self) -> &'a str {
        let rest = self.rest();
        let end = rest.find(|c| !is_word_char(c)).unwrap_or(rest.len());
        &rest[..end]
    }

    fn column(&self, pos: usize) -> usize {
        self.src[..pos].chars().count() + 1
    }

    /// An error at byte offset `pos`, describing the input found there.
    fn error(&self, pos: usize, expected: impl Into<String>) -> ParseError {
        self.error_found(pos, expected, describe(&self.src[pos..]))
    }

    fn error_found(
        &self,
        pos: usize,
        expected: impl Into<String>,
        found: impl Into<String>,
    ) -> ParseError {
        ParseError {
            column: self.column(pos),
            expected: expected.into(),
            found: found.into(),
        }
    }

    /// Requires that only whitespace remains.
    fn finish<T>(&mut self, parsed: T) -> Result<T, ParseError> {
        self.skip_ws();
        if self.pos < self.src.len() {
            Err(self.error(self.pos, "end of input"))
        } else {
            Ok(parsed)
        }
    }

    /// A value, after optional whitespace; `what` names it in the error if none starts here.
    fn value(&mut self, what: &str) -> Result<Value, ParseError> {
        self.skip_ws();
        match self.value_opt()? {
            Some(v) => Ok(v),
            None => Err(self.error(self.pos, what)),
        }
    }

    /// A value, or `None` (consuming nothing) if none starts here.
    fn value_opt(&mut self) -> Result<Option<Value>, ParseError> {
        if self.peek() == Some('(') {
            self.tuple().map(|t| Some(Value::Tuple(t)))
        } else {
            self.scalar()
        }
    }

    /// A tuple, starting at its `(`.
    fn tuple(&mut self) -> Result<Tuple, ParseError> {
        self.list("a value", Parser::value_opt).map(Tuple::new)
    }

    /// A parenthesised, comma-separated list starting at its `(`, with an optional trailing comma.
    /// `item` is called at the start of each item (after whitespace) and returns `None`, consuming
    /// nothing, if no item starts there; `what` names an item in errors.
    fn list<T>(
        &mut self,
        what: &str,
        mut item: impl FnMut(&mut Self) -> Result<Option<T>, ParseError>,
    ) -> Result<Vec<T>, ParseError> {
        if self.depth >= MAX_DEPTH {
            return Err(self.error(
                self.pos,
                format!("at most {MAX_DEPTH} levels of nested tuples"),
            ));
        }
        self.depth += 1;
        self.pos += 1; // '('
        let mut items = Vec::new();
        loop {
            self.skip_ws();
            if self.eat(')') {
                break;
            }
            match item(self)? {
                Some(it) => items.push(it),
                None => return Err(self.error(self.pos, format!("{what} or ')'"))),
            }
            self.skip_ws();
            if self.eat(')') {
                break;
            }
            if !self.eat(',') {
                return Err(self.error(self.pos, "',' or ')'"));
            }
        }
        self.depth -= 1;
        Ok(items)
    }

    /// A scalar (int, float, str, bool or bytes), or `None` (consuming nothing) if none starts here.
    fn scalar(&mut self) -> Result<Option<Value>, ParseError> {
        match self.peek() {
            Some('"') => Ok(Some(Value::from(self.string()?))),
            Some(c) if c.is_ascii_digit() || c == '-' => self.number().map(Some),
            Some(c) if is_word_start(c) => {
                let word = self.word();
                let v = match word {
                    "true" => Value::Bool(true),
                    "false" => Value::Bool(false),
                    "inf" => Value::Float(f64::INFINITY),
                    "NaN" => Value::Float(f64::NAN),
                    "b" if self.rest()[1..].starts_with('"') => return self.bytes().map(Some),
                    _ => return Ok(None),
                };
                self.pos += word.len();
                Ok(Some(v))
            }
            _ => Ok(None),
        }
    }

    /// An int or float, starting at its first digit or `-`.
    fn number(&mut self) -> Result<Value, ParseError> {
        let start = self.pos;
        if self.eat('-') && self.word() == "inf" {
            self.pos += "inf".len();
            return Ok(Value::Float(f64::NEG_INFINITY));
        }
        if !self.peek().is_some_and(|c| c.is_ascii_digit()) {
            return Err(self.error(self.pos, "a digit or 'inf' after '-'"));
        }
        self.skip_digits();
        let mut float = false;
        if self.peek() == Some('.') {
            match self.peek_second() {
                // `1..`: the number ends before a range's `..`.
                Some('.') => {}
                Some(c) if c.is_ascii_digit() => {
                    self.pos += 1;
                    self.skip_digits();
                    float = true;
                }
                _ => return Err(self.error(self.pos + 1, "a digit after '.'")),
            }
        }
        if matches!(self.peek(), Some('e' | 'E')) {
            self.pos += 1;
            if matches!(self.peek(), Some('+' | '-')) {
                self.pos += 1;
            }
            if !self.peek().is_some_and(|c| c.is_ascii_digit()) {
                return Err(self.error(self.pos, "a digit in the exponent"));
            }
            self.skip_digits();
            float = true;
        }
        let text = &self.src[start..self.pos];
        if float {
            // Rust's float syntax is a superset of ours; out-of-range magnitudes round to
            // infinity or zero.
            text.parse()
                .map(Value::Float)
                .map_err(|_| self.error_found(start, "a float", quote(text)))
        } else {
            text.parse().map(Value::Int).map_err(|_| {
                self.error_found(
                    start,
                    format!("an int between {} and {}", i64::MIN, i64::MAX),
                    quote(text),
                )
            })
        }
    }

    /// A string literal, starting at its `"`.
    fn string(&mut self) -> Result<String, ParseError> {
        let open = self.pos;
        self.pos += 1;
        let mut out = String::new();
        loop {
            let here = self.pos;
            match self.bump() {
                Some('"') => return Ok(out),
                Some('\\') => out.push(self.escape(here)?),
                Some(c) => out.push(c),
                None => return Err(self.unterminated(open, "the string")),
            }
        }
    }

    fn unterminated(&self, open: usize, what: &str) -> ParseError {
        self.error(
            self.pos,
            format!(
                "'\"' to close {what} opened at column {}",
                self.column(open)
            ),
        )
    }

    /// The rest of an escape sequence whose `\` is at `backslash`.
    fn escape(&mut self, backslash: usize) -> Result<char, ParseError> {
        const ESCAPES: &str = r#"an escape (\" \\ \n \r \t \0 or \u{HEX})"#;
        match self.bump() {
            Some('"') => Ok('"'),
            Some('\\') => Ok('\\'),
            Some('n') => Ok('\n'),
            Some('r') => Ok('\r'),
            Some('t') => Ok('\t'),
            Some('0') => Ok('\0'),
            Some('u') => self.unicode_escape(backslash),
            Some(c) => {
                Err(self.error_found(backslash, ESCAPES, format!("'\\{}'", c.escape_debug())))
            }
            None => Err(self.error(self.pos, ESCAPES)),
        }
    }

    /// The `{HEX}` of a `\u{HEX}` escape whose `\` is at `backslash`.
    fn unicode_escape(&mut self, backslash: usize) -> Result<char, ParseError> {
        if !self.eat('{') {
            return Err(self.error(self.pos, "'{' after '\\u'"));
        }
        let digits = self.pos;
        while self.pos - digits < 6 && self.peek().is_some_and(|c| c.is_ascii_hexdigit()) {
            self.pos += 1;
        }
        let hex = &self.src[digits..self.pos];
        if hex.is_empty() {
            return Err(self.error(self.pos, "a hex digit"));
        }
        if !self.eat('}') {
            let expected = if hex.len() == 6 {
                "'}' (at most 6 hex digits)"
            } else {
                "a hex digit or '}'"
            };
            return Err(self.error(self.pos, expected));
        }
        u32::from_str_radix(hex, 16)
            .ok()
            .and_then(char::from_u32)
            .ok_or_else(|| {
                self.error_found(
                    backslash,
                    "a Unicode scalar value (at most 10ffff, not a surrogate)",
                    format!("'\\u{{{hex}}}'"),
                )
            })
    }

    /// A byte string, starting at its `b"`.
    fn bytes(&mut self) -> Result<Value, ParseError> {
        let open = self.pos;
        self.pos += 2;
        let mut out = Vec::new();
        loop {
            let here = self.pos;
            match self.bump() {
                Some('"') => return Ok(Value::from(out)),
                Some(c) if c.is_ascii_hexdigit() => {
                    if !self.peek().is_some_and(|c| c.is_ascii_hexdigit()) {
                        return Err(self
                            .error(self.pos, "a second hex digit (each byte is two hex digits)"));
                    }
                    self.pos += 1;
                    let byte = u8::from_str_radix(&self.src[here..self.pos], 16)
                        .map_err(|_| self.error(here, "two hex digits"))?;
                    out.push(byte);
                }
                Some(_) => return Err(self.error(here, "a hex digit or '\"'")),
                None => return Err(self.unterminated(open, "the bytes")),
            }
        }
    }

    /// A template field, or `None` (consuming nothing) if none starts here.
    fn field(&mut self) -> Result<Option<Field>, ParseError> {
        let start = self.pos;
        match self.peek() {
            Some('_') if self.word() == "_" => {
                self.pos += 1;
                Ok(Some(Field::Any))
            }
            Some('?') => {
                self.pos += 1;
                self.skip_ws();
                let name = self.word();
                match Kind::from_name(name) {
                    Some(kind) => {
                        self.pos += name.len();
                        Ok(Some(Field::Formal(kind)))
                    }
                    None => {
                        let names: Vec<&str> = Kind::ALL.iter().map(|k| k.name()).collect();
                        let (last, init) = names.split_last().unwrap_or((&"", &[]));
                        Err(self.error(self.pos, format!("a kind: {} or {last}", init.join(", "))))
                    }
                }
            }
            Some('.') if self.rest().starts_with("..") => self.range(start, None).map(Some),
            Some('(') => {
                let field = Field::nested(Template::new(self.list("a field", Parser::field)?));
                match field {
                    // An all-literal group is a tuple value, so it may be a range's lower bound.
                    Field::Literal(lo) if self.at_range() => self.range(start, Some(lo)).map(Some),
                    field => Ok(Some(field)),
                }
            }
            _ => {
                let Some(v) = self.scalar()? else {
                    return Ok(None);
                };
                if self.at_range() {
                    return self.range(start, Some(v)).map(Some);
                }
                match v {
                    Value::Str(s) if self.at('*') => {
                        self.pos += 1;
                        Ok(Some(Field::Prefix(s)))
                    }
                    v => Ok(Some(Field::Literal(v))),
                }
            }
        }
    }

    /// Skips whitespace and tells whether `c` follows.
    fn at(&mut self, c: char) -> bool {
        self.skip_ws();
        self.peek() == Some(c)
    }

    /// Skips whitespace and tells whether a range's `..` follows.
    fn at_range(&mut self) -> bool {
        self.skip_ws();
        self.rest().starts_with("..")
    }

    /// The rest of a range starting at `start` whose `..` is next, given its lower bound.
    fn range(&mut self, start: usize, lo: Option<Value>) -> Result<Field, ParseError> {
        self.pos += 2; // ".."
        let hi = if self.eat('=') {
            Bound::Included(self.value("an upper bound after '..='")?)
        } else {
            self.skip_ws();
            match self.value_opt()? {
                Some(hi) => Bound::Excluded(hi),
                None => Bound::Unbounded,
            }
        };
        Range::new(lo, hi).map(Field::Range).map_err(|e| match e {
            RangeError::Unbounded => self.error_found(
                start,
                "a bound before or after '..' (`_` matches anything)",
                quote(".."),
            ),
            RangeError::MixedKinds(a, b) => self.error_found(
                start,
                "range bounds of one kind",
                format!("{a} and {b} bounds"),
            ),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tuple;
    use proptest::prelude::*;

    fn tpl(text: &str) -> Template {
        text.parse()
            .unwrap_or_else(|e| panic!("{text:?} should parse: {e}"))
    }

    fn tup(text: &str) -> Tuple {
        text.parse()
            .unwrap_or_else(|e| panic!("{text:?} should parse: {e}"))
    }

    fn val(text: &str) -> Value {
        text.parse()
            .unwrap_or_else(|e| panic!("{text:?} should parse: {e}"))
    }

    fn range(lo: Option<Value>, hi: Bound<Value>) -> Field {
        Field::Range(Range::new(lo, hi).unwrap())
    }

    fn assert_tuple_round_trip(t: &Tuple) {
        let printed = t.to_string();
        assert_eq!(&tup(&printed), t, "printed as {printed}");
    }

    fn assert_template_round_trip(t: &Template) {
        let printed = t.to_string();
        assert_eq!(&tpl(&printed), t, "printed as {printed}");
    }

    /// Asserts that `text` fails to parse as a template (and, unless it is a template only error,
    /// as a tuple) at `column`, expecting `expected` and finding `found`.
    #[track_caller]
    fn assert_error(text: &str, column: usize, expected: &str, found: &str) {
        let e = text.parse::<Template>().unwrap_err();
        assert_eq!(
            (e.column, e.found.as_str()),
            (column, found),
            "template {text:?}: {e}"
        );
        assert!(
            e.expected.contains(expected),
            "template {text:?}: expected {expected:?} in {e}"
        );
    }

    #[track_caller]
    fn assert_tuple_error(text: &str, column: usize, expected: &str, found: &str) {
        let e = text.parse::<Tuple>().unwrap_err();
        assert_eq!(
            (e.column, e.found.as_str()),
            (column, found),
            "tuple {text:?}: {e}"
        );
        assert!(
            e.expected.contains(expected),
            "tuple {text:?}: expected {expected:?} in {e}"
        );
    }

    #[test]
    fn parses_the_example_tuple() {
        let text = r#"("post", "alice", 42, 3.5, true, b"00ff", ("nested", 1))"#;
        let t = tup(text);
        let expected = tuple![
            "post",
            "alice",
            42,
            3.5,
            true,
            vec![0x00u8, 0xff],
            tuple!["nested", 1]
        ];
        assert_eq!(t, expected);
        assert_eq!(t.to_string(), text);
        assert_tuple_round_trip(&t);
        // The same text is an all-literal template.
        let template = tpl(text);
        assert_eq!(template, Template::literal(&expected));
        assert_template_round_trip(&template);
    }

    #[test]
    fn parses_the_example_template() {
        let text = r#"("post", ?str, _, ?int)"#;
        let t = tpl(text);
        assert_eq!(
            t,
            Template::new(vec![
                Field::Literal("post".into()),
                Field::Formal(Kind::Str),
                Field::Any,
                Field::Formal(Kind::Int),
            ])
        );
        assert_eq!(t.to_string(), text);
        assert!(t.matches(&tuple!["post", "alice", 3.5, 42]));
    }

    #[test]
    fn empty_single_trailing_comma_and_whitespace() {
        assert_eq!(tup("()"), Tuple::default());
        assert_eq!(tup(" ( ) "), Tuple::default());
        assert_eq!(tup("(1)"), tuple![1]);
        assert_eq!(tup("(1,)"), tuple![1]);
        assert_eq!(tup("\n\t( 1 ,\r\n 2 , )\n"), tuple![1, 2]);
        assert_eq!(tpl("()"), Template::default());
        assert_eq!(tpl("( _ , )"), Template::new(vec![Field::Any]));
        assert_eq!(
            tpl("(? int)"),
            Template::new(vec![Field::Formal(Kind::Int)])
        );
        assert_eq!(val(" 42 "), Value::Int(42));
        assert_eq!(val("(1, (2))"), Value::Tuple(tuple![1, tuple![2]]));
    }

    #[test]
    fn ints() {
        assert_eq!(val("0"), Value::Int(0));
        assert_eq!(val("-0"), Value::Int(0));
        assert_eq!(val("-7"), Value::Int(-7));
        assert_eq!(val("007"), Value::Int(7));
        for i in [i64::MIN, i64::MIN + 1, -1, 0, 1, i64::MAX - 1, i64::MAX] {
            assert_eq!(val(&i.to_string()), Value::Int(i));
            assert_tuple_round_trip(&tuple![i]);
        }
        let e = parse_value("9223372036854775808").unwrap_err();
        assert_eq!((e.column, e.found.as_str()), (1, "'9223372036854775808'"));
        assert!(e.expected.contains("9223372036854775807"), "{e}");
        let e = parse_value("-9223372036854775809").unwrap_err();
        assert_eq!((e.column, e.found.as_str()), (1, "'-9223372036854775809'"));
    }

    #[test]
    fn floats() {
        assert_eq!(val("3.5"), Value::Float(3.5));
        assert_eq!(val("-0.25"), Value::Float(-0.25));
        assert_eq!(val("1e20"), Value::Float(1e20));
        assert_eq!(val("1.5e-7"), Value::Float(1.5e-7));
        assert_eq!(val("2E+3"), Value::Float(2000.0));
        assert_eq!(val("inf"), Value::Float(f64::INFINITY));
        assert_eq!(val("-inf"), Value::Float(f64::NEG_INFINITY));
        assert!(val("NaN").as_float().unwrap().is_nan());
        assert_eq!(val("-0.0"), Value::Float(-0.0));
        assert_ne!(val("-0.0"), Value::Float(0.0));
        for x in [
            1.0,
            -0.0,
            0.0,
            1e300,
            5e-324,
            -5e-324,
            f64::MAX,
            f64::MIN,
            f64::MIN_POSITIVE,
            f64::EPSILON,
            0.1,
            1e16,
            123456.789,
            f64::INFINITY,
            f64::NEG_INFINITY,
        ] {
            let t = tuple![x];
            assert_tuple_round_trip(&t);
            assert_eq!(val(&Value::Float(x).to_string()), Value::Float(x));
        }
        let nan = tup(&tuple![f64::NAN].to_string());
        assert!(nan[0].as_float().unwrap().is_nan());
        let nan = tup(&tuple![-f64::NAN].to_string());
        assert!(nan[0].as_float().unwrap().is_nan());
    }

    #[test]
    fn malformed_numbers() {
        assert_tuple_error("(1.)", 4, "a digit after '.'", "')'");
        assert_tuple_error("(1.e5)", 4, "a digit after '.'", "'e5'");
        assert_tuple_error("(.5)", 2, "a value or ')'", "'.'");
        assert_tuple_error("(1e)", 4, "a digit in the exponent", "')'");
        assert_tuple_error("(1e+)", 5, "a digit in the exponent", "')'");
        assert_tuple_error("(-)", 3, "a digit or 'inf' after '-'", "')'");
        assert_tuple_error("(-NaN)", 3, "a digit or 'inf' after '-'", "'NaN'");
        assert_tuple_error("(-infinity)", 3, "a digit or 'inf' after '-'", "'infinity'");
        assert_tuple_error("(12abc)", 4, "',' or ')'", "'abc'");
        assert_tuple_error("(1..10)", 3, "',' or ')'", "'..'");
        assert_tuple_error("(info)", 2, "a value or ')'", "'info'");
        assert_tuple_error("(True)", 2, "a value or ')'", "'True'");
    }

    #[test]
    fn strings_and_escapes() {
        assert_eq!(
            val(r#""q\" b\\ n\n r\r t\t z\0 u\u{1F600} \u{e9}\u{0}""#),
            Value::from("q\" b\\ n\n r\r t\t z\0 u\u{1F600} \u{e9}\0")
        );
        assert_eq!(val(r#""\u{10FFFF}""#), Value::from("\u{10ffff}"));
        assert_eq!(
            val("\"raw\nnewline\ttab\""),
            Value::from("raw\nnewline\ttab")
        );
        for s in [
            "",
            "plain",
            "\"",
            "\\",
            "\n\r\t\0",
            "\u{1}\u{7f}\u{85}\u{2028}\u{feff}",
            "日本語のテキスト",
            "émoji 🎉 and ZWJ 👩‍👩‍👧",
            "a string that is longer than twenty-two bytes, so on the heap",
            r#"\u{41} is not an escape once printed"#,
        ] {
            assert_tuple_round_trip(&tuple![s]);
            assert_eq!(val(&Value::from(s).to_string()), Value::from(s));
        }
    }

    #[test]
    fn malformed_strings() {
        assert_tuple_error(
            r#"("abc"#,
            6,
            r#"'"' to close the string opened at column 2"#,
            "end of input",
        );
        assert_tuple_error(r#"("\q")"#, 3, "an escape", r"'\q'");
        assert_tuple_error(r#"("ab\"#, 6, "an escape", "end of input");
        assert_tuple_error(r#"("\u41")"#, 5, "'{' after '\\u'", "'41'");
        assert_tuple_error(r#"("\u{}")"#, 6, "a hex digit", "'}'");
        assert_tuple_error(r#"("\u{12")"#, 8, "a hex digit or '}'", "'\"'");
        assert_tuple_error(r#"("\u{1234567}")"#, 12, "'}'", "'7'");
        assert_tuple_error(
            r#"("\u{d800}")"#,
            3,
            "a Unicode scalar value",
            r"'\u{d800}'",
        );
        assert_tuple_error(
            r#"("\u{110000}")"#,
            3,
            "a Unicode scalar value",
            r"'\u{110000}'",
        );
        // Columns count chars, not bytes.
        assert_tuple_error(r#"("日本", "\x")"#, 9, "an escape", r"'\x'");
    }

    #[test]
    fn bools_and_bytes() {
        assert_eq!(tup("(true, false)"), tuple![true, false]);
        assert_eq!(val(r#"b"""#), Value::Bytes(Box::new([])));
        assert_eq!(val(r#"b"00fF7a""#), Value::from(vec![0x00u8, 0xff, 0x7a]));
        assert_eq!(val(r#"b"ABCD""#).to_string(), r#"b"abcd""#);
        assert_tuple_round_trip(&tuple![vec![0u8, 1, 127, 128, 255], Vec::<u8>::new()]);
        assert_tuple_error(r#"(b"0")"#, 5, "a second hex digit", "'\"'");
        assert_tuple_error(r#"(b"0g")"#, 5, "a second hex digit", "'g'");
        assert_tuple_error(r#"(b"zz")"#, 4, "a hex digit or '\"'", "'zz'");
        assert_tuple_error(
            r#"(b"00"#,
            6,
            "'\"' to close the bytes opened at column 2",
            "end of input",
        );
        assert_tuple_error(r#"(b "00")"#, 2, "a value or ')'", "'b'");
    }

    #[test]
    fn malformed_tuples() {
        assert_tuple_error("(1, 2", 6, "',' or ')'", "end of input");
        assert_tuple_error("(1,, 2)", 4, "a value or ')'", "','");
        assert_tuple_error("(,)", 2, "a value or ')'", "','");
        assert_tuple_error("(1 2)", 4, "',' or ')'", "'2'");
        assert_tuple_error("(1) junk", 5, "end of input", "'junk'");
        assert_tuple_error("(1))", 4, "end of input", "')'");
        assert_tuple_error("", 1, "'('", "end of input");
        assert_tuple_error("  42", 3, "'('", "'42'");
        assert_tuple_error("(_)", 2, "a value or ')'", "'_'");
        assert_tuple_error("(?int)", 2, "a value or ')'", "'?'");
        assert_tuple_error(r#"("a"*)"#, 5, "',' or ')'", "'*'");
        let e = parse_value("").unwrap_err();
        assert_eq!((e.column, e.expected.as_str()), (1, "a value"));
        let e = parse_value("1 2").unwrap_err();
        assert_eq!(e.to_string(), "column 3: expected end of input, found '2'");
    }

    #[test]
    fn nesting_depth_is_limited() {
        let ok = format!("{}{}", "(".repeat(MAX_DEPTH), ")".repeat(MAX_DEPTH));
        assert_eq!(tup(&ok).depth(), MAX_DEPTH);
        assert_eq!(tpl(&ok).depth(), MAX_DEPTH);
        assert_eq!(val(&ok).depth(), MAX_DEPTH);
        let too_deep = format!("{}{}", "(".repeat(MAX_DEPTH + 1), ")".repeat(MAX_DEPTH + 1));
        assert_tuple_error(&too_deep, MAX_DEPTH + 1, "at most 64 levels", "'('");
        assert_error(&too_deep, MAX_DEPTH + 1, "at most 64 levels", "'('");
        let huge = "(".repeat(100_000);
        assert_tuple_error(&huge, MAX_DEPTH + 1, "at most 64 levels", "'('");
        assert_error(&huge, MAX_DEPTH + 1, "at most 64 levels", "'('");
        assert_eq!(parse_value(&huge).unwrap_err().column, MAX_DEPTH + 1);
        // Range bounds count too.
        let deep_bound = format!("(..{}{})", "(".repeat(MAX_DEPTH), ")".repeat(MAX_DEPTH));
        // The template itself is the first level, so the bound's 64th `(` is one too many.
        assert_error(&deep_bound, MAX_DEPTH + 3, "at most 64 levels", "'('");
    }

    #[test]
    fn ranges_of_each_form() {
        use Bound::{Excluded, Included, Unbounded};
        let cases: Vec<(&str, Field)> = vec![
            ("1..10", range(Some(1.into()), Excluded(10.into()))),
            ("1..=10", range(Some(1.into()), Included(10.into()))),
            ("1..", range(Some(1.into()), Unbounded)),
            ("..10", range(None, Excluded(10.into()))),
            ("..=10", range(None, Included(10.into()))),
            ("-5..-1", range(Some((-5).into()), Excluded((-1).into()))),
            ("1.5..2.5", range(Some(1.5.into()), Excluded(2.5.into()))),
            (
                "-inf..=0.0",
                range(Some(f64::NEG_INFINITY.into()), Included(0.0.into())),
            ),
            ("1e300..", range(Some(1e300.into()), Unbounded)),
            (
                r#""a"..="m""#,
                range(Some("a".into()), Included("m".into())),
            ),
            (r#"..="m""#, range(None, Included("m".into()))),
            (
                r#"b"00"..b"ff""#,
                range(Some(vec![0u8].into()), Excluded(vec![0xffu8].into())),
            ),
            (
                "false..=true",
                range(Some(false.into()), Included(true.into())),
            ),
            ("..true", range(None, Excluded(true.into()))),
            (
                "(1)..(2, 3)",
                range(Some(tuple![1].into()), Excluded(tuple![2, 3].into())),
            ),
        ];
        for (text, field) in cases {
            let t = tpl(&format!("({text})"));
            assert_eq!(t, Template::new(vec![field.clone()]), "{text}");
            assert_template_round_trip(&t);
            // Whitespace around the `..` is allowed.
            let spaced = text.replace("..", " .. ").replace(".. =", "..= ");
            assert_eq!(
                tpl(&format!("( {spaced} , )")).fields()[0],
                field,
                "{spaced}"
            );
        }
        let t = tpl("(1..10, 2.5.., ..=\"z\", _)");
        assert!(t.matches(&tuple![9, 3.0, "a", Tuple::default()]));
        assert!(!t.matches(&tuple![10, 3.0, "a", Tuple::default()]));
    }

    #[test]
    fn malformed_ranges() {
        assert!("(1..)".parse::<Template>().is_ok());
        assert_error("(..)", 2, "a bound before or after '..'", "'..'");
        assert_error("(1, ..,)", 5, "a bound before or after '..'", "'..'");
        assert_error(
            r#"(1.."x")"#,
            2,
            "range bounds of one kind",
            "int and str bounds",
        );
        assert_error(
            r#"(0, "a"..=1.5)"#,
            5,
            "range bounds of one kind",
            "str and float bounds",
        );
        assert_error("(1..=)", 6, "an upper bound after '..='", "')'");
        assert_error("(..=)", 5, "an upper bound after '..='", "')'");
        assert_error("(1.._)", 5, "',' or ')'", "'_'");
        assert_error("(1..2..3)", 6, "',' or ')'", "'..'");
        assert_error("((?int)..)", 8, "',' or ')'", "'..'");
        assert_error("(1. .2)", 4, "a digit after '.'", "' '");
    }

    #[test]
    fn formals_any_prefixes_and_nesting() {
        for kind in Kind::ALL {
            let t = tpl(&format!("(?{kind})"));
            assert_eq!(t, Template::new(vec![Field::Formal(kind)]));
        }
        let e = "(?integer)".parse::<Template>().unwrap_err();
        assert_eq!((e.column, e.found.as_str()), (3, "'integer'"));
        assert_eq!(e.expected, "a kind: int, float, str, bool, bytes or tuple");
        assert_error("(?)", 3, "a kind", "')'");
        assert_error("(_x)", 2, "a field or ')'", "'_x'");
        assert_error("(?int, , )", 8, "a field or ')'", "','");

        let t = tpl(r#"("top"*, "" *, "日本"*)"#);
        assert_eq!(
            t,
            Template::new(vec![
                Field::Prefix("top".into()),
                Field::Prefix("".into()),
                Field::Prefix("日本".into()),
            ])
        );
        assert_template_round_trip(&t);
        assert_error("(1*)", 3, "',' or ')'", "'*'");

        let t = tpl(r#"("at", ("pos", ?int, _), (1, (2)), ((_)), "x"*)"#);
        let expected = Template::new(vec![
            Field::Literal("at".into()),
            Field::Nested(Template::new(vec![
                Field::Literal("pos".into()),
                Field::Formal(Kind::Int),
                Field::Any,
            ])),
            Field::Literal(tuple![1, tuple![2]].into()),
            Field::Nested(Template::new(vec![Field::Nested(Template::new(vec![
                Field::Any,
            ]))])),
            Field::Prefix("x".into()),
        ]);
        assert_eq!(t, expected);
        assert_template_round_trip(&t);
        assert!(t.matches(&tuple![
            "at",
            tuple!["pos", 3, 3.5],
            tuple![1, tuple![2]],
            tuple![tuple![Tuple::default()]],
            "xyz"
        ]));
    }

    #[test]
    fn parse_error_is_an_error() {
        let e: Box<dyn std::error::Error> = Box::new(parse_tuple("(").unwrap_err());
        assert_eq!(
            e.to_string(),
            "column 2: expected a value or ')', found end of input"
        );
        let long = format!("({})", "x".repeat(100));
        let e = parse_tuple(&long).unwrap_err();
        assert_eq!(e.found, format!("'{}...'", "x".repeat(32)));
        let e = parse_tuple("(\u{7})").unwrap_err();
        assert_eq!(e.found, r"'\u{7}'");
    }

    // ----- property tests -----

    fn arb_string() -> impl Strategy<Value = String> {
        prop_oneof![
            proptest::collection::vec(any::<char>(), 0..12).prop_map(String::from_iter),
            "[a-z\"\\\\\n\t\r\0 ]{0,30}",
        ]
    }

    fn arb_float() -> impl Strategy<Value = f64> {
        prop_oneof![
            any::<u64>().prop_map(f64::from_bits),
            any::<f64>(),
            Just(-0.0),
            Just(f64::INFINITY),
            Just(f64::NEG_INFINITY),
        ]
        .prop_filter("NaN never equals itself after a round trip", |x| {
            !x.is_nan()
        })
    }

    fn arb_scalar_of(kind: Kind) -> BoxedStrategy<Value> {
        match kind {
            Kind::Int => any::<i64>().prop_map(Value::Int).boxed(),
            Kind::Float => arb_float().prop_map(Value::Float).boxed(),
            Kind::Str => arb_string().prop_map(Value::from).boxed(),
            Kind::Bool => any::<bool>().prop_map(Value::Bool).boxed(),
            Kind::Bytes => proptest::collection::vec(any::<u8>(), 0..8)
                .prop_map(Value::from)
                .boxed(),
            Kind::Tuple => proptest::collection::vec(any::<i64>().prop_map(Value::Int), 0..3)
                .prop_map(|v| Value::Tuple(Tuple::new(v)))
                .boxed(),
        }
    }

    fn arb_scalar() -> impl Strategy<Value = Value> {
        prop_oneof![
            arb_scalar_of(Kind::Int),
            arb_scalar_of(Kind::Float),
            arb_scalar_of(Kind::Str),
            arb_scalar_of(Kind::Bool),
            arb_scalar_of(Kind::Bytes),
        ]
    }

    /// Tuples nested up to depth 3.
    fn arb_tuple() -> impl Strategy<Value = Tuple> {
        let value = arb_scalar().prop_recursive(2, 24, 4, |inner| {
            proptest::collection::vec(inner, 0..4).prop_map(|v| Value::Tuple(Tuple::new(v)))
        });
        proptest::collection::vec(value, 0..6).prop_map(Tuple::new)
    }

    fn arb_range() -> impl Strategy<Value = Range> {
        let kinds = proptest::sample::select(Kind::ALL.to_vec());
        kinds
            .prop_flat_map(|kind| {
                (
                    proptest::option::of(arb_scalar_of(kind)),
                    arb_scalar_of(kind),
                    0..3u8,
                )
            })
            .prop_filter_map("a range needs a bound", |(lo, hi, which)| {
                let hi = match which {
                    0 => Bound::Included(hi),
                    1 => Bound::Excluded(hi),
                    _ => Bound::Unbounded,
                };
                Range::new(lo, hi).ok()
            })
    }

    fn arb_field() -> impl Strategy<Value = Field> {
        let leaf = prop_oneof![
            Just(Field::Any),
            proptest::sample::select(Kind::ALL.to_vec()).prop_map(Field::Formal),
            arb_scalar().prop_map(Field::Literal),
            arb_tuple().prop_map(|t| Field::Literal(Value::Tuple(t))),
            arb_range().prop_map(Field::Range),
            arb_string().prop_map(|s| Field::Prefix(s.into())),
        ];
        leaf.prop_recursive(2, 24, 4, |inner| {
            proptest::collection::vec(inner, 0..4).prop_map(|v| Field::nested(Template::new(v)))
        })
    }

    fn arb_template() -> impl Strategy<Value = Template> {
        proptest::collection::vec(arb_field(), 0..6).prop_map(Template::new)
    }

    proptest! {
        #[test]
        fn tuples_round_trip(t in arb_tuple()) {
            let printed = t.to_string();
            prop_assert_eq!(parse_tuple(&printed), Ok(t.clone()), "printed as {}", printed);
            prop_assert_eq!(parse_value(&printed), Ok(Value::Tuple(t)));
        }

        #[test]
        fn templates_round_trip(t in arb_template()) {
            let printed = t.to_string();
            prop_assert_eq!(parse_template(&printed), Ok(t), "printed as {}", printed);
        }

        #[test]
        fn scalars_round_trip(v in arb_scalar()) {
            let printed = v.to_string();
            prop_assert_eq!(parse_value(&printed), Ok(v), "printed as {}", printed);
        }

        #[test]
        fn garbage_never_panics(text in "[()\",.=*?_a-z0-9\\\\ -]{0,40}") {
            let _ = parse_template(&text);
            let _ = parse_tuple(&text);
            let _ = parse_value(&text);
        }
    }
}
