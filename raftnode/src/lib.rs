//! raftnode: the replicated tuplespace.
//!
//! A cluster of nodes holds one [`tuplespace::Space`] replicated through raft (tikv raft-rs):
//! every write and every take is committed to the log in one order and applied on every replica.
//!
//! # Layout
//!
//! - [`config`]: cluster files (nodes, endpoints, data dirs, raft settings).
//! - [`proto`]: the prost wire types (client protocol, peer batches, log commands), compiled
//!   from `proto/raftnode.proto` without a system `protoc`.
//! - [`disk`]: the disk's seams (log engine, snapshot directory): raft-engine and the file
//!   system in production, an in-memory disk that loses power in the simulator.
//! - [`storage`]: raft's log storage (entries, hard state, conf state) on a log engine.
//! - [`snapshot`]: snapshot files (`<data_dir>/snapshots/`): atomic save, checked load with
//!   fallback to the older kept snapshot, pruning.
//! - [`transport`]: ZeroMQ peer transport, one long-lived REQ per peer into each peer's ROUTER.
//! - [`keys`]: the cluster key file (cluster id, the keys that authenticate peers, rotation).
//! - [`peer_auth`]: authenticated peer frames (MAC, cluster id, sender, receiver, replay numbers).
//! - [`raft_check`]: checks on peer raft messages before raft-rs sees them.
//! - [`guard`]: the frame guard: the ZeroMQ ROUTER every endpoint listens with (the server side
//!   of ZMTP, with frame limits checked before allocation, connection caps, handshake timeouts).
//! - [`refusals`]: counters and sampled logging of everything refused.
//! - [`quota`]: fair share at the client endpoint (requests in flight per connection and per
//!   address).
//! - [`machine`]: the state machine: the space, exactly-once client sessions, the applied index.
//! - [`clock`]: cluster time, which only the leader's monotonic clock advances.
//! - [`env`]: the node's clock, network and background work, as traits (production and
//!   simulated).
//! - [`node`]: the one thread that owns raft's `RawNode`, in rooms: the ready loop, writes,
//!   reads, snapshots, membership, admission, status.
//! - [`answer`]: building the answers clients get.
//! - [`identity`]: users' Ed25519 keys, key files and signed requests; [`verifier`]: request
//!   signatures checked in batches on their own thread; [`gate`]: the endpoint's check of every
//!   request's signature and of admin replays; [`policy`]: who may write and take which tuples
//!   (replicated).
//! - [`server`]: the client endpoint, a ZeroMQ ROUTER speaking [`proto::Request`].
//! - [`client`]: the async Rust API for programs.
//! - [`recovery`]: a node's state from its disk (identity, founding membership, snapshot).
//! - [`launch`]: wiring one node process together, and `raftnode up` for a local cluster.
//! - [`devcluster`]: the dev-cluster kit: node processes on loopback for tests, benchmarks and
//!   `raftnode up` (finding the program, leased ports, key and cluster files, start/kill/restart).
//! - [`logging`]: slog setup; [`cli`]: the `raftnode` command line.
#![warn(missing_docs)]

pub mod answer;
pub mod cli;
pub mod client;
pub mod clock;
pub mod config;
pub mod devcluster;
pub mod disk;
pub mod env;
pub mod gate;
pub mod guard;
pub mod identity;
pub mod keys;
pub mod launch;
pub mod logging;
pub mod machine;
pub mod node;
pub mod peer_auth;
pub mod policy;
pub mod quota;
pub mod raft_check;
pub mod recovery;
pub mod refusals;
pub mod server;
pub mod snapshot;
pub mod snapshot_stream;
pub mod storage;
pub mod transport;
pub mod verifier;

/// The prost wire types generated from `proto/raftnode.proto`.
#[allow(missing_docs, clippy::all, clippy::pedantic)]
pub mod proto {
    include!(concat!(env!("OUT_DIR"), "/raftnode.v1.rs"));
}

/// The largest client frame a node accepts (a request with its tuple or template).
pub const MAX_CLIENT_FRAME: usize = 4 << 20;

/// The largest frame a node accepts from a peer (a batch of raft messages, and at most one
/// snapshot chunk; snapshots travel in chunks, see [`snapshot_stream`]).
pub const MAX_PEER_FRAME: usize = 64 << 20;

/// The largest tuple or template a client may send, encoded.
pub const MAX_TUPLE_BYTES: usize = 1 << 20;
