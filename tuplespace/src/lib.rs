//! A pure, deterministic Linda tuple space.
//!
//! This crate is the state machine at the heart of the replicated tuplespace: no threads, no
//! sockets, no wall clock, no randomness. The same operations with the same clock values give the
//! same state and the same outcomes on every replica.
//!
//! # Layout
//!
//! - [`value`]: values (`int`, `float`, `str`, `bool`, `bytes`, nested tuples) and tuples.
//! - [`template`]: templates and the matching rules.
//! - [`syntax`]: the text syntax, `("post", "alice", 42)` and `("post", ?str, _)`.
//! - [`space`]: the [`Space`]: ids, the index, blocking waiters, TTL expiry; and [`SpaceView`], a
//!   consistent read-only view of it that costs a page table (the store's pages are shared
//!   copy-on-write), for encoding, digests and scans off the caller's thread.
//! - [`union`]: union copy-collect, the tuples matching any of several templates in one merged
//!   scan of their index postings ([`Space::rd_any`]).
//! - [`waiters`]: FIFO queues of blocked `in` and `rd` operations.
//! - [`codec`]: the compact binary encoding of values, templates and whole spaces (snapshots).
//!
//! # Example
//!
//! ```
//! use tuplespace::{Space, Template, tuple};
//!
//! let mut space = Space::new();
//! let id = space.out(tuple!["post", "alice", 42], None).id;
//! let template: Template = r#"("post", ?str, _)"#.parse().unwrap();
//! let (taken, t) = space.inp(&template).unwrap();
//! assert_eq!((taken, t), (id, tuple!["post", "alice", 42]));
//! assert!(space.inp(&template).is_none());
//! ```
#![warn(missing_docs)]

pub mod codec;
mod index;
pub mod space;
mod store;
pub mod syntax;
pub mod template;
pub mod union;
pub mod value;
pub mod waiters;

pub use codec::DecodeError;
pub use space::{Expired, OutOutcome, Query, Space, SpaceView, Wait};
pub use syntax::ParseError;
pub use template::{Field, Range, RangeError, Template};
pub use value::{Kind, Text, Tuple, Value};
pub use waiters::{WaitKind, Waiter};

/// A tuple's id: unique within a space, increasing in the order tuples were written, from 1.
pub type TupleId = u64;

/// A waiter's id: unique within a space, increasing in registration order, from 1.
pub type WaiterId = u64;

/// Clock values and durations, in milliseconds.
pub type Millis = u64;
