//! The command line: global options and every command, each with its help and an example.

use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};
use tuplespace::TupleId;

use crate::duration;

/// The most posts one listing returns (the cluster's cap on one copy-collect).
const MAX_LIMIT: u64 = 10_000;

const ABOUT: &str = "A microblog on a replicated tuple space (raft over ZeroMQ).";

const AFTER_HELP: &str = "\
Examples:
  microblog up                                          # the local cluster and the web app (:8080)
  microblog cluster up                                  # start configs/local-3.toml; Ctrl-C stops it
  microblog --user alice post \"hello, world\" --topic intro
  microblog --user bob follow alice
  microblog --user bob timeline
  microblog tail --topic intro                          # new posts as they come, until Ctrl-C
  microblog --json read --user alice --limit 5          # one JSON object per line

Which cluster: --endpoints, else --cluster, else MICROBLOG_ENDPOINTS, else configs/local-3.toml.
Exit codes: 0 ok, 1 operation failed, 2 usage error, 3 not found or timed out.";

/// The whole command line.
#[derive(Debug, Parser)]
#[command(name = "microblog", version, about = ABOUT, after_help = AFTER_HELP)]
pub struct Cli {
    /// The cluster's client endpoints, comma-separated (tcp://host:port,...). Without this or
    /// --cluster, MICROBLOG_ENDPOINTS is used, then configs/local-3.toml.
    #[arg(
        long,
        global = true,
        value_delimiter = ',',
        value_name = "URL,...",
        conflicts_with = "cluster"
    )]
    pub endpoints: Vec<String>,

    /// A cluster file listing the nodes (default: configs/local-3.toml).
    #[arg(long, global = true, value_name = "FILE")]
    pub cluster: Option<PathBuf>,

    /// Who you are: the author of your posts, the follower in your follows. Give it before the
    /// command (microblog --user alice post ...) or after it.
    #[arg(long, env = "MICROBLOG_USER", value_name = "NAME")]
    pub user: Option<String>,

    /// Act as the cluster's admin (membership changes, policy, key resets, the digest),
    /// signing with the admin's key: --admin-key, else MICROBLOG_ADMIN_KEY, else admin.key next
    /// to the cluster's key file (which `raftnode up` and `cluster up` create).
    #[arg(long, global = true)]
    pub admin: bool,

    /// Where --admin finds the admin's private key file.
    #[arg(long, global = true, env = "MICROBLOG_ADMIN_KEY", value_name = "FILE")]
    pub admin_key: Option<PathBuf>,

    /// One JSON object per line instead of tables (errors too, on stderr).
    #[arg(long, global = true)]
    pub json: bool,

    /// How long to keep trying to reach the cluster, and how long blocking operations wait for a
    /// match: 500ms, 5s, 2m.
    #[arg(long, global = true, value_name = "DURATION", value_parser = duration::parse, default_value = "10s")]
    pub timeout: Duration,

    /// The command.
    #[command(subcommand)]
    pub command: Command,
}

/// `--user` after an identity command (`post --user alice ...`); the one before the command, or
/// MICROBLOG_USER, otherwise.
#[derive(Debug, Args)]
pub struct Identity {
    /// Who you are (overrides --user before the command and MICROBLOG_USER).
    #[arg(long = "user", value_name = "NAME")]
    pub user: Option<String>,
}

/// Every command.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Post TEXT (at most 4,000 bytes); prints the new post's id.
    #[command(after_help = "\
Example:
  microblog --user alice post \"hello, world\" --topic intro
  microblog --user bob post \"welcome!\" --reply-to 42       # a reply takes its parent's topic
  echo \"from stdin\" | microblog --user alice post -")]
    Post {
        /// The text; `-` reads it from stdin.
        text: String,
        /// A topic (1-64 chars, no spaces).
        #[arg(long, value_name = "T")]
        topic: Option<String>,
        /// The id of the post this answers.
        #[arg(long, value_name = "ID")]
        reply_to: Option<TupleId>,
        /// `--user`: who you are.
        #[command(flatten)]
        identity: Identity,
    },
    /// Posts, newest first, by anyone or filtered by author and topic.
    #[command(after_help = "\
Example:
  microblog read --user alice --limit 5
  microblog read --topic intro --before 120                  # the page after the one ending at 120")]
    Read {
        /// Only posts by this user (a filter: not who you are).
        #[arg(long, value_name = "U")]
        user: Option<String>,
        /// Only posts with this topic.
        #[arg(long, value_name = "T")]
        topic: Option<String>,
        /// At most this many posts (1-10000).
        #[arg(long, value_name = "N", default_value_t = 20, value_parser = clap::value_parser!(u64).range(1..=MAX_LIMIT))]
        limit: u64,
        /// Only posts older than this id (paging).
        #[arg(long, value_name = "ID")]
        before: Option<TupleId>,
    },
    /// A post in full and its replies.
    #[command(after_help = "Example:\n  microblog show 42")]
    Show {
        /// The post id.
        id: TupleId,
    },
    /// Posts by the users you follow and your own, newest first.
    #[command(after_help = "Example:\n  microblog --user bob timeline --limit 50")]
    Timeline {
        /// At most this many posts (1-10000).
        #[arg(long, value_name = "N", default_value_t = 20, value_parser = clap::value_parser!(u64).range(1..=MAX_LIMIT))]
        limit: u64,
        /// Only posts older than this id (paging).
        #[arg(long, value_name = "ID")]
        before: Option<TupleId>,
        /// `--user`: who you are.
        #[command(flatten)]
        identity: Identity,
    },
    /// Follow USER: their posts join your timeline.
    #[command(after_help = "Example:\n  microblog --user bob follow alice")]
    Follow {
        /// Whom to follow.
        #[arg(value_name = "USER")]
        target: String,
        /// `--user`: who you are.
        #[command(flatten)]
        identity: Identity,
    },
    /// Stop following USER.
    #[command(after_help = "Example:\n  microblog --user bob unfollow alice")]
    Unfollow {
        /// Whom to stop following.
        #[arg(value_name = "USER")]
        target: String,
        /// `--user`: who you are.
        #[command(flatten)]
        identity: Identity,
    },
    /// Whom USER follows (default: you).
    #[command(after_help = "Example:\n  microblog following alice")]
    Following {
        /// Whose follows (default: --user).
        #[arg(value_name = "USER")]
        target: Option<String>,
        /// `--user`: who you are.
        #[command(flatten)]
        identity: Identity,
    },
    /// Who follows USER (default: you).
    #[command(after_help = "Example:\n  microblog followers alice")]
    Followers {
        /// Whose followers (default: --user).
        #[arg(value_name = "USER")]
        target: Option<String>,
        /// `--user`: who you are.
        #[command(flatten)]
        identity: Identity,
    },
    /// Every registered user, with their key's fingerprint and number of posts.
    #[command(after_help = "Example:\n  microblog users")]
    Users,
    /// Create your key pair (in MICROBLOG_HOME/keys, mode 0600) if you have none, and register
    /// your name with it: first come, first served.
    #[command(
        after_help = "Example:\n  microblog --user alice register\n  microblog --admin --user carol register --public-key 3b6a27bcceb6a42d62a3a8d02a6f0d73653215771de243a63ac048a18b59da29   # when registration is closed"
    )]
    Register {
        /// `--user`: who you are (with --admin: the user to register).
        #[command(flatten)]
        identity: Identity,
        /// (admin) Register --user with this public key (64 hex digits) instead of your own key:
        /// how users join a cluster whose registration is closed.
        #[arg(long, value_name = "HEX", requires = "admin")]
        public_key: Option<String>,
    },
    /// Who you are: your name, your key's fingerprint, and whether the cluster has it.
    #[command(after_help = "Example:\n  microblog --user alice whoami\n  microblog --admin whoami")]
    Whoami {
        /// `--user`: who you are.
        #[command(flatten)]
        identity: Identity,
    },
    /// Replace your key with a new one (signed by the old one, which stays valid for the posts
    /// it signed); the old key file is kept as NAME.key.old.
    #[command(after_help = "Example:\n  microblog --user alice rotate-key")]
    RotateKey {
        /// `--user`: who you are.
        #[command(flatten)]
        identity: Identity,
    },
    /// (admin) Give a user who lost their key a new public key (hex; `microblog --user NAME
    /// register` prints it when the name is taken). Posts signed by the lost key no longer
    /// verify.
    #[command(
        after_help = "Example:\n  microblog --admin reset-key alice 3b6a27bcceb6a42d62a3a8d02a6f0d73653215771de243a63ac048a18b59da29"
    )]
    ResetKey {
        /// The user.
        name: String,
        /// Their new public key, 64 hex digits.
        public_key: String,
    },
    /// The access policy: who may write and take which tuples.
    #[command(subcommand)]
    Policy(PolicyCommand),
    /// Every topic, with its number of posts, most first.
    #[command(after_help = "Example:\n  microblog topics")]
    Topics,
    /// Delete one of your posts (someone else's is refused).
    #[command(after_help = "Example:\n  microblog --user alice delete 42")]
    Delete {
        /// The post id.
        id: TupleId,
        /// `--user`: who you are.
        #[command(flatten)]
        identity: Identity,
    },
    /// New posts as they are written, until Ctrl-C; survives node failures and leader changes
    /// without missing or repeating a post.
    #[command(after_help = "\
Example:
  microblog tail --topic intro
  microblog --json tail --user alice --last 10              # the last 10, then new ones
  microblog tail --after 120                                # resume after the last id you saw")]
    Tail {
        /// Only posts by this user (a filter: not who you are).
        #[arg(long, value_name = "U")]
        user: Option<String>,
        /// Only posts with this topic.
        #[arg(long, value_name = "T")]
        topic: Option<String>,
        /// First show the last N matching posts.
        #[arg(long, value_name = "N", conflicts_with = "after", value_parser = clap::value_parser!(u64).range(0..=MAX_LIMIT))]
        last: Option<u64>,
        /// Start after this post id instead of at the newest post.
        #[arg(long, value_name = "ID")]
        after: Option<TupleId>,
    },
    /// Raw tuple operations in the text syntax, e.g. ("job", 1, "payload") and ("job", ?int, _).
    #[command(subcommand)]
    Tuple(TupleCommand),
    /// Start a local cluster, show each node's state, or change the membership.
    #[command(subcommand)]
    Cluster(ClusterCommand),
    /// Measure the cluster: throughput and latency under C clients, leader failover, or how
    /// fast a new node catches up.
    #[command(after_help = crate::commands::bench::HELP, args_conflicts_with_subcommands = true)]
    Bench(BenchArgs),
    /// Serve the microblog on the web (pages, live updates, keys kept in the browser) against
    /// the cluster.
    #[command(after_help = "\
Examples:
  microblog serve                                   # http://127.0.0.1:8080, configs/local-3.toml
  microblog --endpoints tcp://10.0.0.5:7201 serve --listen 127.0.0.1:9000")]
    Serve {
        /// Where to listen (loopback by default; put a TLS proxy in front to serve others).
        #[arg(long, default_value = "127.0.0.1:8080", value_name = "ADDR")]
        listen: std::net::SocketAddr,
        /// A proxy in front of the app (repeatable): from it, the client's address for the
        /// per-address limits is the one it appends to X-Forwarded-For.
        #[arg(long, value_name = "IP")]
        trust_proxy: Vec<std::net::IpAddr>,
    },
    /// Start a local 3-node cluster (configs/local-3.toml, or --cluster) and the web app, in one
    /// command; Ctrl-C stops everything.
    #[command(after_help = "\
Examples:
  cargo run --release -- up                         # from a fresh clone: open http://127.0.0.1:8080
  microblog up --listen 127.0.0.1:9000")]
    Up {
        /// Where the web app listens.
        #[arg(long, default_value = "127.0.0.1:8080", value_name = "ADDR")]
        listen: std::net::SocketAddr,
    },
    /// Print a shell completion script.
    #[command(after_help = "\
Example:
  microblog completions bash > ~/.local/share/bash-completion/completions/microblog
  microblog completions zsh > ~/.zfunc/_microblog")]
    Completions {
        /// The shell.
        shell: clap_complete::Shell,
    },
}

/// `tuple ...`: the tuple space itself.
#[derive(Debug, Subcommand)]
pub enum TupleCommand {
    /// Add a tuple; prints its id.
    #[command(after_help = "Example:\n  microblog tuple out '(\"job\", 1, \"payload\")' --ttl 1m")]
    Out {
        /// The tuple, e.g. ("job", 1, "payload").
        tuple: String,
        /// Remove it after this long: 500ms, 30s, 5m.
        #[arg(long, value_name = "DURATION", value_parser = duration::parse)]
        ttl: Option<Duration>,
    },
    /// Remove and print the oldest match, waiting up to --timeout for one.
    #[command(after_help = "Example:\n  microblog tuple in '(\"job\", ?int, _)' --timeout 30s")]
    In {
        /// The template, e.g. ("job", ?int, _).
        template: String,
    },
    /// Print the oldest match (after an id), waiting up to --timeout for one.
    #[command(after_help = "Example:\n  microblog tuple rd '(\"job\", ?int, _)' --after 17")]
    Rd {
        /// The template.
        template: String,
        /// Only a tuple with an id above this.
        #[arg(long, value_name = "ID", default_value_t = 0)]
        after: TupleId,
    },
    /// Remove and print the oldest match, if any, without waiting.
    #[command(after_help = "Example:\n  microblog tuple inp '(\"job\", ?int, _)'")]
    Inp {
        /// The template.
        template: String,
    },
    /// Print the oldest match (after an id), if any, without waiting.
    #[command(after_help = "Example:\n  microblog tuple rdp '(\"lock\", _)'")]
    Rdp {
        /// The template.
        template: String,
        /// Only a tuple with an id above this.
        #[arg(long, value_name = "ID", default_value_t = 0)]
        after: TupleId,
    },
    /// Print every match (copy-collect), or remove them with --take (collect).
    #[command(after_help = "\
Example:
  microblog tuple all '(\"post\", \"alice\", _, _, _, _)' --limit 10 --newest-first
  microblog tuple all '(\"job\", ?int, _)' --take --limit 100")]
    All {
        /// The template.
        template: String,
        /// At most this many (without it: every match).
        #[arg(long, value_name = "N", value_parser = clap::value_parser!(u64).range(1..))]
        limit: Option<u64>,
        /// Remove the matches instead of copying them (oldest first).
        #[arg(long)]
        take: bool,
        /// Only tuples with an id above this.
        #[arg(long, value_name = "ID", conflicts_with = "take")]
        after: Option<TupleId>,
        /// Only tuples with an id below this.
        #[arg(long, value_name = "ID", conflicts_with = "take")]
        before: Option<TupleId>,
        /// Newest first.
        #[arg(long, conflicts_with = "take")]
        newest_first: bool,
    },
    /// Print how many tuples match.
    #[command(after_help = "Example:\n  microblog tuple count '(\"post\", ?str, _, _, _, _)'")]
    Count {
        /// The template.
        template: String,
    },
    /// Add TUPLE only if nothing matches TEMPLATE (atomic); exit 1 if something did.
    #[command(
        after_help = "Example:\n  microblog tuple cas '(\"lock\", _)' '(\"lock\", \"me\")' --ttl 30s"
    )]
    Cas {
        /// What must not exist.
        template: String,
        /// What to add.
        tuple: String,
        /// Remove it after this long.
        #[arg(long, value_name = "DURATION", value_parser = duration::parse)]
        ttl: Option<Duration>,
    },
}

/// `cluster ...`: start a local cluster, show its state, change its membership.
#[derive(Debug, Subcommand)]
pub enum ClusterCommand {
    /// Start every node of the cluster file (raftnode up); Ctrl-C stops them all.
    #[command(after_help = "\
Example:
  microblog cluster up                                       # configs/local-3.toml
  microblog cluster up --cluster configs/local-5.toml")]
    Up,
    /// Each node's id, role, leader, term, commit and applied index, and members; then the
    /// leader's view: every member's role and lag (entries behind the leader's log).
    #[command(after_help = "\
Example:
  microblog cluster status
  microblog --json cluster status --endpoints tcp://127.0.0.1:7201

LAG is the leader's last log index minus the highest index it knows replicated on the member
(\"-\": not known yet). With --json each member has \"matched\" and \"lag\" (null: unknown).")]
    Status,
    /// Add a node: as a learner first, then (once it has caught up) as a voter.
    #[command(after_help = "\
Example:
  raftnode run --join --id 4 --raft tcp://127.0.0.1:7104 --client tcp://127.0.0.1:7204 --data-dir data/node4
  microblog cluster add 4 tcp://127.0.0.1:7104 tcp://127.0.0.1:7204
  microblog cluster add 4 tcp://10.0.0.4:7104 tcp://10.0.0.4:7204 --catch-up 5m --max-lag 10

Start the new node first (it waits, empty, to be added); if it is not up yet the command says how
to start it and waits up to --catch-up for it. Progress goes to stderr; the new membership to
stdout. Running it again after a failure is safe: a node that is already a learner is only
caught up and promoted, one that is already a voter is left alone.")]
    Add {
        /// The new node's id (a positive number no member uses).
        #[arg(value_name = "ID", value_parser = clap::value_parser!(u64).range(1..))]
        id: u64,
        /// Its raft (peer) endpoint, as the other nodes reach it: tcp://host:port.
        #[arg(value_name = "RAFT_URL", value_parser = crate::commands::cluster::parse_endpoint)]
        raft: String,
        /// Its client endpoint, as clients reach it: tcp://host:port.
        #[arg(value_name = "CLIENT_URL", value_parser = crate::commands::cluster::parse_endpoint)]
        client: String,
        /// How long to wait for the node to catch up before promoting it: 30s, 5m.
        #[arg(long, value_name = "DURATION", value_parser = duration::parse, default_value = "60s")]
        catch_up: Duration,
        /// Caught up means at most this many entries behind the leader's commit index.
        #[arg(long, value_name = "N", default_value_t = 100)]
        max_lag: u64,
    },
    /// Make a learner a voter.
    #[command(after_help = "\
Example:
  microblog cluster promote 4

`cluster add` promotes by itself; this finishes an add that stopped after the learner step
(e.g. its catch-up timed out), or promotes a learner added with `cluster change`. It waits until
the learner has caught up (the leader refuses to promote one that has not), up to --catch-up.")]
    Promote {
        /// The learner's id.
        #[arg(value_name = "ID", value_parser = clap::value_parser!(u64).range(1..))]
        id: u64,
        /// How long to wait for the learner to catch up before promoting it: 30s, 5m.
        #[arg(long, value_name = "DURATION", value_parser = duration::parse, default_value = "60s")]
        catch_up: Duration,
        /// Caught up means at most this many entries behind the leader's commit index.
        #[arg(long, value_name = "N", default_value_t = 100)]
        max_lag: u64,
        /// Promote at once, even if the learner has not caught up or the cluster could not reach
        /// quorum with the nodes answering now (the leader refuses both otherwise).
        #[arg(long)]
        force: bool,
    },
    /// Remove a node (voter or learner); it stops by itself. Removing the leader works: it hands
    /// leadership over first.
    #[command(after_help = "\
Example:
  microblog cluster remove 3
  microblog cluster remove 4 --endpoints tcp://127.0.0.1:7201,tcp://127.0.0.1:7202")]
    Remove {
        /// The member's id.
        #[arg(value_name = "ID", value_parser = clap::value_parser!(u64).range(1..))]
        id: u64,
    },
    /// Several membership changes in one step (through joint consensus).
    #[command(
        group(
            clap::ArgGroup::new("changes")
                .args(["add_learner", "add_voter", "remove"])
                .required(true)
                .multiple(true)
        ),
        after_help = "\
Example:
  microblog cluster change --add-voter 4=tcp://127.0.0.1:7104,tcp://127.0.0.1:7204 \\
                           --add-voter 5=tcp://127.0.0.1:7105,tcp://127.0.0.1:7205 --remove 3
  microblog cluster change --add-learner 6=tcp://10.0.0.6:7104,tcp://10.0.0.6:7204
  microblog cluster change --add-voter 6 --remove 2      # promote learner 6, remove 2

The leader refuses a new voter that is not a learner that has caught up (so add new nodes with
`cluster add`, or as learners first), and a change that would leave a configuration unable to
reach quorum with the nodes answering now; --force skips both checks. At most 8 changes at once.")]
    Change {
        /// Add a node as a learner (receives the log, does not vote). Repeatable.
        #[arg(long = "add-learner", value_name = "ID=RAFT_URL,CLIENT_URL", value_parser = crate::commands::cluster::parse_new_member)]
        add_learner: Vec<crate::commands::cluster::MemberSpec>,
        /// Make a member a voter, or add a new node as a voter (with its endpoints). Repeatable.
        #[arg(long = "add-voter", value_name = "ID[=RAFT_URL,CLIENT_URL]", value_parser = crate::commands::cluster::parse_voter)]
        add_voter: Vec<crate::commands::cluster::MemberSpec>,
        /// Remove a member. Repeatable.
        #[arg(long, value_name = "ID", value_parser = clap::value_parser!(u64).range(1..))]
        remove: Vec<u64>,
        /// Skip the leader's safety checks: that every new voter is a caught-up learner, and that
        /// the new configuration can reach quorum with the nodes answering now. A forced change
        /// can leave the cluster unable to commit anything.
        #[arg(long)]
        force: bool,
    },
}

/// `bench`: a load against a cluster, or (with a subcommand) a failover or catch-up measurement.
#[derive(Debug, Args)]
pub struct BenchArgs {
    /// `failover` or `catchup`; without one, a throughput and latency run.
    #[command(subcommand)]
    pub command: Option<BenchCommand>,
    /// The load's settings.
    #[command(flatten)]
    pub load: BenchLoad,
}

/// What a throughput and latency run does.
#[derive(Debug, Args)]
pub struct BenchLoad {
    /// Start a throwaway local cluster (raftnode processes on loopback, in a temp dir) instead of
    /// using --endpoints / --cluster; it is stopped at the end.
    #[arg(long)]
    pub start_cluster: bool,
    /// With --start-cluster: how many nodes.
    #[arg(long, value_name = "N", default_value_t = 3, requires = "start_cluster", value_parser = clap::value_parser!(u64).range(1..=9))]
    pub nodes: u64,
    /// Concurrent clients, each with its own connection and session.
    #[arg(long, value_name = "C", default_value_t = 64, value_parser = clap::value_parser!(u64).range(1..=4096))]
    pub clients: u64,
    /// How long to measure, after the warmup (default 10s unless --ops is given).
    #[arg(long, value_name = "DURATION", value_parser = duration::parse, conflicts_with = "ops")]
    pub duration: Option<Duration>,
    /// Measure this many operations (after the warmup) instead of a duration.
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u64).range(1..))]
    pub ops: Option<u64>,
    /// Run the load this long before measuring (0 for none).
    #[arg(long, value_name = "DURATION", default_value = "2s", value_parser = crate::commands::bench::parse_warmup)]
    pub warmup: Duration,
    /// The operation: out, in, rd, rdp, or mix (microblog post 20% / read 60% / timeline 20%).
    #[arg(long, value_enum, default_value_t = BenchOp::Out)]
    pub op: BenchOp,
    /// The encoded size of each tuple in bytes (mix: the post text's size).
    #[arg(long, value_name = "BYTES", default_value_t = 256, value_parser = clap::value_parser!(u64).range(16..=1_000_000))]
    pub size: u64,
    /// Tuples (posts for mix) written before the run: for in, how many there are to take
    /// (default: enough for the run); for rd/rdp, the set read at random (default 10000); for
    /// mix, the posts already there (default 2000).
    #[arg(long, value_name = "N")]
    pub preload: Option<u64>,
    /// Measure without authentication: the admin (--admin, or the started cluster's) sets the
    /// policy to allow anonymous writes, and the clients sign nothing. By default every client
    /// signs as a user of its own, registered first.
    #[arg(long)]
    pub no_auth: bool,
}

/// The operation a throughput run measures.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum BenchOp {
    /// Add tuples.
    Out,
    /// Take preloaded tuples (blocking in with a short timeout).
    In,
    /// Read preloaded tuples (blocking rd).
    Rd,
    /// Read preloaded tuples (rdp, no waiting).
    Rdp,
    /// The microblog: post 20%, read 60%, timeline 20%.
    Mix,
}

/// `bench failover` and `bench catchup`: each starts its own cluster.
#[derive(Debug, Subcommand)]
pub enum BenchCommand {
    /// Kill the leader (SIGKILL) under a sequential writer, time until the next acknowledged
    /// write, restart it, wait until it has caught up; repeat.
    #[command(after_help = "\
Example:
  microblog bench failover --trials 10
  microblog --json bench failover --trials 5 --nodes 5

Always starts its own cluster. A trial's time runs from the kill to the first write that was sent
after the kill and acknowledged (so it includes the writer noticing the dead leader, the election
and one write).")]
    Failover {
        /// How many leaders to kill, one after the other.
        #[arg(long, value_name = "N", default_value_t = 10, value_parser = clap::value_parser!(u64).range(1..=1000))]
        trials: u64,
        /// Cluster size.
        #[arg(long, value_name = "N", default_value_t = 3, value_parser = clap::value_parser!(u64).range(3..=9))]
        nodes: u64,
        /// The writer's wait for one answer before it tries another node.
        #[arg(long, value_name = "DURATION", default_value = "250ms", value_parser = duration::parse)]
        request_timeout: Duration,
    },
    /// Load N tuples into a 3-node cluster (acknowledged writes per second, the longest gap with
    /// none), then time a new empty node from `add` (learner) until it has caught up, check its
    /// tuple count, and time a follower's restart; with resident memory and disk per node.
    #[command(after_help = "\
Example:
  microblog bench catchup --tuples 1000000
  microblog --json bench catchup --tuples 100000 --size 128 --clients 32

Always starts its own cluster (default raft settings: a snapshot every 10,000 entries, so the new
node catches up from a snapshot and the log tail).")]
    Catchup {
        /// How many tuples to load first.
        #[arg(long, value_name = "N", default_value_t = 1_000_000, value_parser = clap::value_parser!(u64).range(1..))]
        tuples: u64,
        /// Each tuple's encoded size in bytes.
        #[arg(long, value_name = "BYTES", default_value_t = 64, value_parser = clap::value_parser!(u64).range(16..=1_000_000))]
        size: u64,
        /// Concurrent clients loading the tuples.
        #[arg(long, value_name = "C", default_value_t = 64, value_parser = clap::value_parser!(u64).range(1..=4096))]
        clients: u64,
        /// Caught up means at most this many entries behind the leader's commit index.
        #[arg(long, value_name = "N", default_value_t = 10)]
        max_lag: u64,
        /// Give up on the catch-up after this long.
        #[arg(long, value_name = "DURATION", default_value = "10m", value_parser = duration::parse)]
        catch_up_timeout: Duration,
    },
    /// A well-behaved client's latencies alone, then while one connection floods the leader with
    /// pipelined blocking rds and outs as fast as it can send them.
    #[command(after_help = "\
Example:
  microblog bench flood --duration 10s

Always starts its own cluster. The flooder is one DEALER connection that never waits for answers;
the node answers what is past its share OVERLOADED at once.")]
    Flood {
        /// How long each phase lasts.
        #[arg(long, value_name = "DURATION", default_value = "10s", value_parser = duration::parse)]
        duration: Duration,
    },
    /// Load N tuples, then run writers beside clients that keep asking for digests of the whole
    /// space and for scans the index cannot narrow; report acknowledged writes per second, the
    /// longest window with none, and leader changes.
    #[command(after_help = "\
Example:
  microblog bench stall --tuples 1000000 --duration 30s
  microblog --endpoints tcp://127.0.0.1:7201,... bench stall --tuples 1000000   # a running cluster

Starts its own cluster unless --endpoints or --cluster is given.")]
    Stall {
        /// How many tuples to load first (64-byte tuples).
        #[arg(long, value_name = "N", default_value_t = 1_000_000, value_parser = clap::value_parser!(u64).range(1..))]
        tuples: u64,
        /// Concurrent writers during the measurement.
        #[arg(long, value_name = "C", default_value_t = 8, value_parser = clap::value_parser!(u64).range(1..=256))]
        writers: u64,
        /// Clients asking for digests (and as many asking for scans).
        #[arg(long, value_name = "C", default_value_t = 2, value_parser = clap::value_parser!(u64).range(0..=64))]
        heavy: u64,
        /// How long to measure.
        #[arg(long, value_name = "DURATION", default_value = "30s", value_parser = duration::parse)]
        duration: Duration,
    },
}

/// `policy show|set`.
#[derive(Debug, Subcommand)]
pub enum PolicyCommand {
    /// Print the policy in force (JSON: the format `policy set` reads).
    #[command(after_help = "Example:\n  microblog policy show")]
    Show,
    /// (admin) Replace the policy with the one in FILE (JSON, as `policy show` prints it).
    #[command(
        after_help = "Example:\n  microblog policy show > policy.json\n  microblog --admin policy set policy.json"
    )]
    Set {
        /// The policy file (JSON).
        file: PathBuf,
    },
}

impl Command {
    /// The `--user` given after this command, if it takes one as an identity.
    pub fn identity(&self) -> Option<&str> {
        match self {
            Command::Post { identity, .. }
            | Command::Timeline { identity, .. }
            | Command::Follow { identity, .. }
            | Command::Unfollow { identity, .. }
            | Command::Following { identity, .. }
            | Command::Followers { identity, .. }
            | Command::Delete { identity, .. }
            | Command::Register { identity, .. }
            | Command::Whoami { identity }
            | Command::RotateKey { identity } => identity.user.as_deref(),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn the_command_line_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn every_command_has_an_example() {
        fn walk(cmd: &clap::Command, path: &str) {
            for sub in cmd.get_subcommands() {
                let name = format!("{path} {}", sub.get_name());
                if sub.has_subcommands() {
                    walk(sub, &name);
                } else {
                    let help = sub
                        .get_after_help()
                        .map(|h| h.to_string())
                        .unwrap_or_default();
                    assert!(help.contains("Example"), "{name} has no example");
                }
            }
        }
        walk(&Cli::command(), "microblog");
    }

    #[test]
    fn user_before_and_after_the_command() {
        let cli = Cli::try_parse_from(["microblog", "--user", "a", "post", "hi"]).unwrap();
        assert_eq!(
            (cli.user.as_deref(), cli.command.identity()),
            (Some("a"), None)
        );
        let cli = Cli::try_parse_from(["microblog", "post", "hi", "--user", "b"]).unwrap();
        assert_eq!(cli.command.identity(), Some("b"));
        // After read, --user is a filter.
        let cli = Cli::try_parse_from(["microblog", "--user", "a", "read", "--user", "b"]).unwrap();
        assert!(matches!(cli.command, Command::Read { user: Some(ref u), .. } if u == "b"));
    }

    #[test]
    fn globals_go_anywhere_and_usage_errors_are_2() {
        let cli = Cli::try_parse_from([
            "microblog",
            "read",
            "--json",
            "--endpoints",
            "tcp://127.0.0.1:1,tcp://127.0.0.1:2",
            "--timeout",
            "500ms",
        ])
        .unwrap();
        assert!(cli.json);
        assert_eq!(cli.endpoints.len(), 2);
        assert_eq!(cli.timeout, Duration::from_millis(500));
        for bad in [
            vec!["microblog", "read", "--limit", "0"],
            vec!["microblog", "read", "--limit", "10001"],
            vec!["microblog", "--timeout", "soon", "users"],
            vec![
                "microblog",
                "--endpoints",
                "tcp://x:1",
                "--cluster",
                "f",
                "users",
            ],
            vec![
                "microblog",
                "tuple",
                "all",
                "(_)",
                "--take",
                "--newest-first",
            ],
            vec!["microblog", "nope"],
        ] {
            let e = Cli::try_parse_from(&bad).unwrap_err();
            assert_eq!(e.exit_code(), 2, "{bad:?}");
        }
    }
}
