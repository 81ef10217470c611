//! The history of a chaos run: events, their JSON Lines form, a file writer and reader, a
//! [`Recorder`] shared by many client tasks, and the pairing of events into [`Operation`]s.
//!
//! # Events
//!
//! Every operation a client runs is recorded as an `invoke` event followed by exactly one
//! completion: `ok` (it took effect, with its result), `fail` (it certainly did not take effect)
//! or `info` (the outcome is unknown: it may or may not have taken effect, at any time after its
//! invocation). A process runs one operation at a time. Times are nanoseconds on one monotonic
//! clock shared by every process of the run.
//!
//! # JSON Lines
//!
//! One [`Event`] per line, a JSON object with the fields `kind` (`"invoke"`, `"ok"`, `"fail"`,
//! `"info"`), `process`, `op_id` (unique in the run, shared by an invoke and its completion),
//! `f` (the [`Op`]: `"out"`, `"in"`, `"inp"`, `"rd"`, `"rdp"`, `"rd_all"`, `"cas"`), `value`
//! (a [`Value`]) and `time_ns`:
//!
//! ```text
//! {"kind":"invoke","process":3,"op_id":17,"f":"out","value":{"tuple":"(\"k\", 3, 17)"},"time_ns":1234}
//! {"kind":"ok","process":3,"op_id":17,"f":"out","value":{"id":42},"time_ns":5678}
//! ```
//!
//! A [`Value`] is an object whose fields are all optional (absent and `null` mean the same);
//! tuples and templates are strings in the text syntax of [`tuplespace::syntax`]:
//!
//! | `f` | invoke `value` | ok `value` |
//! |---|---|---|
//! | `out` | `{"tuple"}` | `{"id"}` |
//! | `in`, `inp` | `{"template"}` | `{"id", "tuple"}`, or `{}` for none (a blocking `in` the server timed out) |
//! | `rd`, `rdp` | `{"template", "after"}` (`after` absent: 0) | `{"id", "tuple"}`, or `{}` for none |
//! | `rd_all` | `{"template"}` | `{"items": [{"id", "tuple"}, ...]}`, oldest first, complete |
//! | `cas` | `{"template", "tuple"}` | `{"id"}` if it inserted, `{}` (or `{"id": null}`) if something matched |
//!
//! `fail` and `info` completions carry `{}` or `{"error": "why"}`. Unknown fields are ignored when
//! reading, so a runner may record more (e.g. `"timeout_ms"`).

use std::collections::{HashMap, HashSet};
use std::fmt;
use std::fs::{File, OpenOptions};
use std::io::{self, BufRead, BufReader, BufWriter, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Instant;

use serde::{Deserialize, Serialize};
use tuplespace::{ParseError, Template, Tuple, TupleId};

/// What an event is: an invocation or one of the three completions.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EventKind {
    /// The operation was sent.
    Invoke,
    /// It took effect, with this result.
    Ok,
    /// It certainly did not take effect.
    Fail,
    /// Unknown: it may or may not have taken effect, at any time after its invocation.
    Info,
}

/// The operation of an event (the `f` field).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Op {
    /// Adds a tuple.
    Out,
    /// Blocking take (with a timeout).
    In,
    /// Non-blocking take.
    Inp,
    /// Blocking read (with a timeout).
    Rd,
    /// Non-blocking read.
    Rdp,
    /// Every match, oldest first.
    RdAll,
    /// Adds a tuple only if nothing matches the template.
    Cas,
}

impl Op {
    /// The name used in the JSON form.
    pub fn name(self) -> &'static str {
        match self {
            Op::Out => "out",
            Op::In => "in",
            Op::Inp => "inp",
            Op::Rd => "rd",
            Op::Rdp => "rdp",
            Op::RdAll => "rd_all",
            Op::Cas => "cas",
        }
    }

    /// `in` or `inp`.
    pub fn is_take(self) -> bool {
        matches!(self, Op::In | Op::Inp)
    }

    /// `rd`, `rdp` or `rd_all`.
    pub fn is_read(self) -> bool {
        matches!(self, Op::Rd | Op::Rdp | Op::RdAll)
    }

    /// `out` or `cas`: operations that may add a tuple.
    pub fn is_write(self) -> bool {
        matches!(self, Op::Out | Op::Cas)
    }
}

impl fmt::Display for Op {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// One tuple of an `rd_all` answer.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Item {
    /// Its id.
    pub id: TupleId,
    /// The tuple, in the text syntax.
    pub tuple: String,
}

/// The payload of an event: arguments of an invocation, or the result of a completion. Every
/// field is optional; see the [module docs](self) for which op uses which.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Value {
    /// The template of `in`, `inp`, `rd`, `rdp`, `rd_all`, `cas`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub template: Option<String>,
    /// The tuple of `out` and `cas`; the tuple an `in`/`inp`/`rd`/`rdp` returned.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tuple: Option<String>,
    /// The `after` bound of `rd`/`rdp` (absent: 0).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub after: Option<TupleId>,
    /// The id an `out`/`cas` assigned, or of the tuple a take or read returned; absent or null
    /// for "none" (and for a `cas` that found a match).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<TupleId>,
    /// The answer of `rd_all`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub items: Option<Vec<Item>>,
    /// Why a `fail` or `info` happened (free text, for people).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

impl Value {
    /// `{}`: no fields (a "none" result, or a completion without details).
    pub fn none() -> Value {
        Value::default()
    }

    /// `{"tuple"}`: the invocation of an `out`.
    pub fn tuple(tuple: &Tuple) -> Value {
        Value {
            tuple: Some(tuple.to_string()),
            ..Value::default()
        }
    }

    /// `{"template"}`: the invocation of `in`, `inp` or `rd_all`.
    pub fn template(template: &Template) -> Value {
        Value {
            template: Some(template.to_string()),
            ..Value::default()
        }
    }

    /// `{"template", "after"}`: the invocation of `rd` or `rdp`.
    pub fn read(template: &Template, after: TupleId) -> Value {
        Value {
            template: Some(template.to_string()),
            after: Some(after),
            ..Value::default()
        }
    }

    /// `{"template", "tuple"}`: the invocation of a `cas`.
    pub fn cas(template: &Template, tuple: &Tuple) -> Value {
        Value {
            template: Some(template.to_string()),
            tuple: Some(tuple.to_string()),
            ..Value::default()
        }
    }

    /// `{"id"}` (or `{}` for `None`): the result of an `out` or a `cas`.
    pub fn id(id: Option<TupleId>) -> Value {
        Value {
            id,
            ..Value::default()
        }
    }

    /// `{"id", "tuple"}` (or `{}` for `None`): the result of a take or a read.
    pub fn found(entry: Option<(TupleId, &Tuple)>) -> Value {
        match entry {
            Some((id, tuple)) => Value {
                id: Some(id),
                tuple: Some(tuple.to_string()),
                ..Value::default()
            },
            None => Value::none(),
        }
    }

    /// `{"items"}`: the result of an `rd_all`.
    pub fn items<'a>(items: impl IntoIterator<Item = (TupleId, &'a Tuple)>) -> Value {
        Value {
            items: Some(
                items
                    .into_iter()
                    .map(|(id, t)| Item {
                        id,
                        tuple: t.to_string(),
                    })
                    .collect(),
            ),
            ..Value::default()
        }
    }

    /// `{"error"}`: the reason of a `fail` or an `info`.
    pub fn error(reason: impl fmt::Display) -> Value {
        Value {
            error: Some(reason.to_string()),
            ..Value::default()
        }
    }

    /// The `tuple` field, parsed.
    pub fn parsed_tuple(&self) -> Result<Option<Tuple>, ParseError> {
        self.tuple.as_deref().map(str::parse).transpose()
    }

    /// The `template` field, parsed.
    pub fn parsed_template(&self) -> Result<Option<Template>, ParseError> {
        self.template.as_deref().map(str::parse).transpose()
    }

    /// The `{"id", "tuple"}` result of a take or read, parsed: `None` for none.
    pub fn parsed_found(&self) -> Result<Option<(TupleId, Tuple)>, String> {
        match (self.id, self.parsed_tuple()) {
            (None, _) => Ok(None),
            (Some(id), Ok(Some(t))) => Ok(Some((id, t))),
            (Some(id), Ok(None)) => Err(format!("id {id} without a tuple")),
            (Some(_), Err(e)) => Err(format!("tuple: {e}")),
        }
    }

    /// The `items` of an `rd_all` result, parsed (absent: no items).
    pub fn parsed_items(&self) -> Result<Vec<(TupleId, Tuple)>, String> {
        self.items
            .iter()
            .flatten()
            .map(|item| {
                item.tuple
                    .parse()
                    .map(|t| (item.id, t))
                    .map_err(|e| format!("item {}: {e}", item.id))
            })
            .collect()
    }
}

/// One line of a history.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Event {
    /// Invocation or completion.
    pub kind: EventKind,
    /// The client process (one operation at a time).
    pub process: u64,
    /// The operation's id, unique in the run; an invoke and its completion share it.
    pub op_id: u64,
    /// The operation.
    pub f: Op,
    /// Arguments (invoke) or result (completion).
    pub value: Value,
    /// Nanoseconds since the start of the run, on a monotonic clock.
    pub time_ns: u64,
}

impl Event {
    /// The event as one line of JSON (without the newline).
    pub fn to_json(&self) -> String {
        serde_json::to_string(self).expect("an event always serializes")
    }

    /// Parses one JSON line.
    pub fn from_json(line: &str) -> Result<Event, serde_json::Error> {
        serde_json::from_str(line)
    }
}

impl fmt::Display for Event {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_json())
    }
}

/// Why a history could not be read.
#[derive(Debug)]
pub enum HistoryError {
    /// The file could not be opened or read.
    Io {
        /// The file.
        path: PathBuf,
        /// What went wrong.
        error: io::Error,
    },
    /// A line is not an event.
    Parse {
        /// 1-based line number.
        line: usize,
        /// What went wrong.
        error: serde_json::Error,
    },
}

impl fmt::Display for HistoryError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            HistoryError::Io { path, error } => write!(f, "{}: {error}", path.display()),
            HistoryError::Parse { line, error } => write!(f, "line {line}: {error}"),
        }
    }
}

impl std::error::Error for HistoryError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            HistoryError::Io { error, .. } => Some(error),
            HistoryError::Parse { error, .. } => Some(error),
        }
    }
}

/// Appends events to a JSON Lines file, flushing after each one (so a crashed run still leaves
/// every event recorded so far).
#[derive(Debug)]
pub struct HistoryWriter {
    out: BufWriter<File>,
}

impl HistoryWriter {
    /// Creates (or truncates) the file.
    pub fn create(path: impl AsRef<Path>) -> io::Result<HistoryWriter> {
        Ok(HistoryWriter {
            out: BufWriter::new(File::create(path)?),
        })
    }

    /// Opens the file for appending, creating it if needed.
    pub fn append(path: impl AsRef<Path>) -> io::Result<HistoryWriter> {
        let file = OpenOptions::new().create(true).append(true).open(path)?;
        Ok(HistoryWriter {
            out: BufWriter::new(file),
        })
    }

    /// Writes one event as a line and flushes.
    pub fn write(&mut self, event: &Event) -> io::Result<()> {
        serde_json::to_writer(&mut self.out, event)?;
        self.out.write_all(b"\n")?;
        self.out.flush()
    }

    /// Writes every event, flushing once at the end.
    pub fn write_all<'a>(&mut self, events: impl IntoIterator<Item = &'a Event>) -> io::Result<()> {
        for event in events {
            serde_json::to_writer(&mut self.out, event)?;
            self.out.write_all(b"\n")?;
        }
        self.out.flush()
    }
}

/// Reads a JSON Lines history (blank lines are skipped).
pub fn read_history(path: impl AsRef<Path>) -> Result<Vec<Event>, HistoryError> {
    let path = path.as_ref();
    let io_err = |error| HistoryError::Io {
        path: path.to_path_buf(),
        error,
    };
    let file = File::open(path).map_err(io_err)?;
    let mut events = Vec::new();
    for (i, line) in BufReader::new(file).lines().enumerate() {
        let line = line.map_err(io_err)?;
        if line.trim().is_empty() {
            continue;
        }
        events.push(
            Event::from_json(&line).map_err(|error| HistoryError::Parse { line: i + 1, error })?,
        );
    }
    Ok(events)
}

/// Parses a JSON Lines history held in memory.
pub fn parse_history(text: &str) -> Result<Vec<Event>, HistoryError> {
    text.lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty())
        .map(|(i, l)| {
            Event::from_json(l).map_err(|error| HistoryError::Parse { line: i + 1, error })
        })
        .collect()
}

/// How an operation completed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// It took effect, with this result.
    Ok(Value),
    /// It certainly did not take effect.
    Fail,
    /// Unknown (also: no completion was recorded).
    Info,
}

/// An invocation paired with its completion.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Operation {
    /// The client process.
    pub process: u64,
    /// The operation's id.
    pub op_id: u64,
    /// The operation.
    pub f: Op,
    /// The invocation's value.
    pub input: Value,
    /// How it completed.
    pub output: Outcome,
    /// When it was invoked.
    pub invoke_ns: u64,
    /// When it completed; `u64::MAX` for `info` (it may take effect at any time after).
    pub complete_ns: u64,
}

/// Something wrong with the shape of a history (not with the system it records).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Problem {
    /// Index of the offending event.
    pub event: usize,
    /// What is wrong.
    pub what: String,
}

/// A whole history.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct History {
    /// The events, in the order they were recorded.
    pub events: Vec<Event>,
}

impl History {
    /// A history of these events.
    pub fn new(events: Vec<Event>) -> History {
        History { events }
    }

    /// Reads a JSON Lines file.
    pub fn read(path: impl AsRef<Path>) -> Result<History, HistoryError> {
        read_history(path).map(History::new)
    }

    /// Writes the history to a JSON Lines file.
    pub fn write(&self, path: impl AsRef<Path>) -> io::Result<()> {
        HistoryWriter::create(path)?.write_all(&self.events)
    }

    /// Invocations paired with their completions, in invocation order. An invocation without a
    /// completion counts as `info`; completions without an invocation are dropped (see
    /// [`History::pair`] for the list of such problems).
    pub fn complete_ops(&self) -> Vec<Operation> {
        self.pair().0
    }

    /// [`History::complete_ops`], plus every problem with the history's shape: a second
    /// invocation with one op id, a process invoking while its previous operation is still
    /// open, a completion without an invocation or disagreeing with it about process or op.
    pub fn pair(&self) -> (Vec<Operation>, Vec<Problem>) {
        pair_events(&self.events)
    }
}

/// [`History::pair`] on a slice of events.
pub fn pair_events(events: &[Event]) -> (Vec<Operation>, Vec<Problem>) {
    let mut ops: Vec<Operation> = Vec::new();
    let mut open: HashMap<u64, usize> = HashMap::new();
    let mut seen: HashSet<u64> = HashSet::new();
    let mut busy: HashMap<u64, u64> = HashMap::new();
    let mut problems = Vec::new();
    for (i, e) in events.iter().enumerate() {
        let mut problem = |what: String| problems.push(Problem { event: i, what });
        match e.kind {
            EventKind::Invoke => {
                if !seen.insert(e.op_id) {
                    problem(format!("op id {} invoked twice", e.op_id));
                    continue;
                }
                if let Some(prev) = busy.insert(e.process, e.op_id) {
                    problem(format!(
                        "process {} invokes op {} while op {prev} is still open",
                        e.process, e.op_id
                    ));
                }
                open.insert(e.op_id, ops.len());
                ops.push(Operation {
                    process: e.process,
                    op_id: e.op_id,
                    f: e.f,
                    input: e.value.clone(),
                    output: Outcome::Info,
                    invoke_ns: e.time_ns,
                    complete_ns: u64::MAX,
                });
            }
            kind => {
                let Some(at) = open.remove(&e.op_id) else {
                    problem(format!("{kind:?} of op {} which is not open", e.op_id));
                    continue;
                };
                let op = &mut ops[at];
                if op.process != e.process || op.f != e.f {
                    problem(format!(
                        "completion of op {} by process {} ({}) but invoked by process {} ({})",
                        e.op_id, e.process, e.f, op.process, op.f
                    ));
                }
                if busy.get(&op.process) == Some(&op.op_id) {
                    busy.remove(&op.process);
                }
                if e.time_ns < op.invoke_ns {
                    problem(format!("op {} completes before its invocation", e.op_id));
                }
                match kind {
                    EventKind::Ok => {
                        op.output = Outcome::Ok(e.value.clone());
                        op.complete_ns = e.time_ns;
                    }
                    EventKind::Fail => {
                        op.output = Outcome::Fail;
                        op.complete_ns = e.time_ns;
                    }
                    _ => {}
                }
            }
        }
    }
    (ops, problems)
}

impl From<Vec<Event>> for History {
    fn from(events: Vec<Event>) -> Self {
        History::new(events)
    }
}

/// An operation that was invoked and awaits its one completion (pass it back to the
/// [`Recorder`]).
#[derive(Debug)]
#[must_use = "every invocation needs exactly one completion: ok, fail or info"]
pub struct PendingOp {
    /// The process.
    pub process: u64,
    /// The op id the recorder gave it.
    pub op_id: u64,
    /// The operation.
    pub f: Op,
}

#[derive(Debug)]
struct RecorderState {
    events: Vec<Event>,
    writer: Option<HistoryWriter>,
    write_error: Option<io::Error>,
}

/// Nanoseconds since the start of a run.
pub type TimeSource = Box<dyn Fn() -> u64 + Send + Sync>;

struct RecorderInner {
    now_ns: TimeSource,
    next_op: AtomicU64,
    state: Mutex<RecorderState>,
}

impl fmt::Debug for RecorderInner {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RecorderInner")
            .field("next_op", &self.next_op)
            .finish_non_exhaustive()
    }
}

/// Collects events from many tasks (it is `Clone + Send + Sync`; clones share one history), with
/// times from one shared monotonic clock, and optionally streams them to a JSON Lines file.
///
/// ```no_run
/// # use tests::history::{Op, Recorder, Value};
/// # use tuplespace::tuple;
/// let rec = Recorder::to_file("history.jsonl").unwrap();
/// let t = tuple!["k", 1, 7];
/// let op = rec.invoke(3, Op::Out, Value::tuple(&t));
/// // ... run it ...
/// rec.ok(op, Value::id(Some(42)));
/// ```
#[derive(Clone, Debug)]
pub struct Recorder {
    inner: Arc<RecorderInner>,
}

impl Default for Recorder {
    fn default() -> Self {
        Recorder::new()
    }
}

impl Recorder {
    /// A recorder that keeps events in memory; its clock starts now.
    pub fn new() -> Recorder {
        Recorder::build(None)
    }

    /// A recorder that also appends every event to `writer`.
    pub fn with_writer(writer: HistoryWriter) -> Recorder {
        Recorder::build(Some(writer))
    }

    /// A recorder that also writes every event to a new file at `path`.
    pub fn to_file(path: impl AsRef<Path>) -> io::Result<Recorder> {
        Ok(Recorder::with_writer(HistoryWriter::create(path)?))
    }

    /// A recorder in memory whose times come from `now_ns` (the simulator's virtual clock).
    pub fn with_time_source(now_ns: TimeSource) -> Recorder {
        Recorder::build_with(None, now_ns)
    }

    fn build(writer: Option<HistoryWriter>) -> Recorder {
        let start = Instant::now();
        Recorder::build_with(writer, Box::new(move || start.elapsed().as_nanos() as u64))
    }

    fn build_with(writer: Option<HistoryWriter>, now_ns: TimeSource) -> Recorder {
        Recorder {
            inner: Arc::new(RecorderInner {
                now_ns,
                next_op: AtomicU64::new(1),
                state: Mutex::new(RecorderState {
                    events: Vec::new(),
                    writer,
                    write_error: None,
                }),
            }),
        }
    }

    fn lock(&self) -> MutexGuard<'_, RecorderState> {
        // A panic in another task while recording leaves consistent data: keep going.
        self.inner.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Nanoseconds since the recorder was made (or on its time source).
    pub fn now_ns(&self) -> u64 {
        (self.inner.now_ns)()
    }

    fn record(&self, kind: EventKind, process: u64, op_id: u64, f: Op, value: Value) {
        let mut state = self.lock();
        // Taken under the lock, so the events' order is their time order.
        let event = Event {
            kind,
            process,
            op_id,
            f,
            value,
            time_ns: self.now_ns(),
        };
        if let Some(w) = state.writer.as_mut()
            && let Err(e) = w.write(&event)
        {
            state.writer = None;
            state.write_error = Some(e);
        }
        state.events.push(event);
    }

    /// Records an invocation; returns the handle to complete it with.
    pub fn invoke(&self, process: u64, f: Op, value: Value) -> PendingOp {
        let op_id = self.inner.next_op.fetch_add(1, Ordering::Relaxed);
        self.record(EventKind::Invoke, process, op_id, f, value);
        PendingOp { process, op_id, f }
    }

    /// Records the completion of `op` (`kind` must not be `Invoke`).
    pub fn complete(&self, op: PendingOp, kind: EventKind, value: Value) {
        assert!(
            kind != EventKind::Invoke,
            "a completion cannot be an invoke"
        );
        self.record(kind, op.process, op.op_id, op.f, value);
    }

    /// The operation took effect with this result.
    pub fn ok(&self, op: PendingOp, value: Value) {
        self.complete(op, EventKind::Ok, value);
    }

    /// The operation certainly did not take effect.
    pub fn fail(&self, op: PendingOp, value: Value) {
        self.complete(op, EventKind::Fail, value);
    }

    /// The outcome is unknown.
    pub fn info(&self, op: PendingOp, value: Value) {
        self.complete(op, EventKind::Info, value);
    }

    /// A copy of every event so far.
    pub fn events(&self) -> Vec<Event> {
        self.lock().events.clone()
    }

    /// A copy of the history so far.
    pub fn history(&self) -> History {
        History::new(self.events())
    }

    /// The first error writing the file, if any (after which the recorder stopped writing it,
    /// but kept collecting in memory).
    pub fn write_error(&self) -> Option<String> {
        self.lock().write_error.as_ref().map(ToString::to_string)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tuplespace::tuple;

    #[test]
    fn shapes_match_the_documented_examples() {
        let line = r#"{"kind":"invoke","process":3,"op_id":17,"f":"out","value":{"tuple":"(\"t\", 3, 17)"},"time_ns":1234}"#;
        let e = Event::from_json(line).unwrap();
        assert_eq!(e.kind, EventKind::Invoke);
        assert_eq!(e.f, Op::Out);
        assert_eq!(e.value.parsed_tuple().unwrap(), Some(tuple!["t", 3, 17]));
        assert_eq!(e.to_json(), line);
        let ok = Event::from_json(
            r#"{"kind":"ok","process":3,"op_id":17,"f":"out","value":{"id":42},"time_ns":5678}"#,
        )
        .unwrap();
        assert_eq!(ok.value.id, Some(42));
        let none = Event::from_json(
            r#"{"kind":"ok","process":1,"op_id":2,"f":"cas","value":{"id":null},"time_ns":1}"#,
        )
        .unwrap();
        assert_eq!(none.value, Value::none());
        assert!(none.to_json().contains(r#""value":{}"#));
        let all = Event::from_json(
            r#"{"kind":"ok","process":1,"op_id":2,"f":"rd_all","value":{"items":[{"id":4,"tuple":"(\"k\", 1, 2)"}],"extra":1},"time_ns":1}"#,
        )
        .unwrap();
        assert_eq!(
            all.value.parsed_items().unwrap(),
            vec![(4, tuple!["k", 1, 2])]
        );
        assert_eq!(Op::RdAll.to_string(), "rd_all");
    }

    #[test]
    fn pairing_reports_shape_problems() {
        let ev = |kind, process, op_id, time_ns| Event {
            kind,
            process,
            op_id,
            f: Op::Inp,
            value: Value::none(),
            time_ns,
        };
        let h = History::new(vec![
            ev(EventKind::Invoke, 1, 1, 0),
            ev(EventKind::Invoke, 2, 2, 1),
            ev(EventKind::Ok, 1, 1, 2),
            ev(EventKind::Fail, 1, 9, 3),
            ev(EventKind::Info, 2, 2, 4),
            ev(EventKind::Invoke, 1, 3, 5),
        ]);
        let (ops, problems) = h.pair();
        assert_eq!(ops.len(), 3);
        assert_eq!(ops[0].output, Outcome::Ok(Value::none()));
        assert_eq!(ops[0].complete_ns, 2);
        assert_eq!(
            (ops[1].output.clone(), ops[1].complete_ns),
            (Outcome::Info, u64::MAX)
        );
        assert_eq!(
            (ops[2].output.clone(), ops[2].complete_ns),
            (Outcome::Info, u64::MAX)
        );
        assert_eq!(problems.len(), 1, "{problems:?}");
        assert_eq!(problems[0].event, 3);
    }

    #[test]
    fn recorder_times_are_monotonic_and_writes_flush() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("h.jsonl");
        let rec = Recorder::to_file(&path).unwrap();
        let a = rec.invoke(1, Op::Out, Value::tuple(&tuple!["k", 1, 1]));
        let b = rec.invoke(
            2,
            Op::Inp,
            Value::template(&"(\"k\", 1, ?int)".parse().unwrap()),
        );
        rec.ok(a, Value::id(Some(1)));
        rec.info(b, Value::error("timeout"));
        let events = rec.events();
        assert!(events.windows(2).all(|w| w[0].time_ns <= w[1].time_ns));
        assert_eq!(read_history(&path).unwrap(), events);
        assert!(rec.write_error().is_none());
    }
}
