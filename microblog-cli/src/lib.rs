//! The microblog on the replicated tuplespace, and the `microblog` command-line program.
//!
//! Everything the microblog stores is a tuple in the cluster's one tuple space; this crate owns
//! what those tuples mean. `main.rs` only parses flags and calls [`commands::run`].
//!
//! # Layout
//!
//! - [`model`]: the data model — posts, follows, users and topics as tuples, the templates that
//!   find them, and the input rules (name syntax, the post size limit).
//! - [`store`]: the [`store::Store`] trait, the handful of tuple operations the microblog needs,
//!   implemented by the cluster client and by an in-memory space for unit tests.
//! - [`blog`]: the microblog's operations (post, read, timeline, follow, delete, ...) over any
//!   store.
//! - [`cli`]: the command line (clap): global options, every command, its help and example.
//! - [`connect`]: which cluster to talk to (`--endpoints`, `--cluster`, `MICROBLOG_ENDPOINTS`)
//!   and the client's timeouts.
//! - [`commands`]: one module per group of commands, printing through [`output`].
//! - [`output`]: readable tables or one JSON object per line; UTF-8 safe truncation.
//! - [`error`]: what went wrong, what to do about it, and the exit code (0 ok, 1 failed,
//!   2 usage, 3 not found or timed out).
//! - [`duration`]: `5s`, `500ms`, `2m` on the command line.
//! - [`web`]: `microblog serve`, the web app: server-rendered pages, live updates, writes signed
//!   in the browser and relayed.
//!
//! # The data model
//!
//! | tuple | meaning |
//! |---|---|
//! | `("post", author, topic, time_ms, text, reply_to)` | a post; its tuple id is the post id; `topic` `""` = none, `reply_to` `0` = none |
//! | `("follow", follower, followee)` | `follower` follows `followee` (at most one per pair) |
//! | `("user", name)` | a registered user (first post or follow registers, with `cas`) |
//! | `("topic", name)` | a topic that has had a post (registered with `cas`) |
#![warn(missing_docs)]

pub mod blog;
pub mod cli;
pub mod commands;
pub mod connect;
pub mod duration;
pub mod error;
pub mod model;
pub mod output;
pub mod store;
pub mod web;
