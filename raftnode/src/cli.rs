//! The `raftnode` command line: run one node of a cluster, or a whole local cluster, and manage
//! the cluster key file. In the library so that another program can be a node too:
//! `microblog node run ...` is `raftnode run ...` (what `microblog up` starts, so one built
//! program is enough).

use std::ffi::OsString;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

/// A node of the replicated tuplespace.
#[derive(Parser)]
#[command(version, about, long_about = None)]
struct Cli {
    /// Log level: trace, debug, info, warning, error, critical.
    #[arg(long, global = true, env = "RAFTNODE_LOG", default_value = "info")]
    log_level: String,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run one node of a cluster, or (with --join) a new node that waits to be added.
    ///
    /// Examples:
    ///   raftnode run --cluster configs/local-3.toml --id 1
    ///   raftnode run --join --id 4 --raft tcp://127.0.0.1:7104 --client tcp://127.0.0.1:7204 --data-dir data/node4
    #[command(verbatim_doc_comment)]
    Run {
        /// The cluster file (with --join: its [raft] settings, and its nodes' addresses to dial
        /// them at; they are not taken as founding members).
        #[arg(long, default_value = "configs/local-3.toml")]
        cluster: PathBuf,
        /// This node's id.
        #[arg(long)]
        id: u64,
        /// Start empty and wait to be added (`microblog cluster add`); it catches up by snapshot.
        #[arg(long, requires_all = ["raft", "client", "data_dir"])]
        join: bool,
        /// With --join: this node's raft endpoint, tcp://host:port.
        #[arg(long)]
        raft: Option<String>,
        /// With --join: this node's client endpoint, tcp://host:port.
        #[arg(long)]
        client: Option<String>,
        /// With --join: this node's data dir.
        #[arg(long)]
        data_dir: Option<PathBuf>,
        /// The cluster key file (default: the one the cluster file names; --join without a
        /// cluster file needs it).
        #[arg(long)]
        key_file: Option<PathBuf>,
    },
    /// Start every node of a local cluster as child processes; Ctrl-C stops them all.
    ///
    /// Example: raftnode up --cluster configs/local-5.toml
    Up {
        /// The cluster file.
        #[arg(long, default_value = "configs/local-3.toml")]
        cluster: PathBuf,
    },
    /// Create, rotate or inspect a cluster key file.
    ///
    /// A rotation without downtime, on one copy of the file, each step copied to every node
    /// (over a secure channel) and put in force there with SIGHUP (or a restart) before the next:
    ///   raftnode key add FILE       a new key, accepted but not used to sign yet
    ///   raftnode key promote FILE   the new key signs; the old one is still accepted
    ///   raftnode key retire FILE    only the new key remains
    #[command(verbatim_doc_comment)]
    Key {
        #[command(subcommand)]
        action: KeyAction,
    },
}

#[derive(Subcommand)]
enum KeyAction {
    /// Create a key file for a new cluster: a random cluster id and key (mode 0600; never
    /// overwrites a file).
    Init {
        /// The file to create.
        file: PathBuf,
    },
    /// Rotation step 1: add a fresh key, accepted but not signing.
    Add {
        /// The key file.
        file: PathBuf,
    },
    /// Rotation step 2: the newest key signs; the others stay accepted.
    Promote {
        /// The key file.
        file: PathBuf,
    },
    /// Rotation step 3: drop every key but the signing one.
    Retire {
        /// The key file.
        file: PathBuf,
    },
    /// Print the cluster id and the keys' fingerprints (never the keys).
    Show {
        /// The key file.
        file: PathBuf,
    },
}

/// Runs a `raftnode key` command.
fn key_command(action: KeyAction) -> anyhow::Result<()> {
    use crate::keys::Keys;
    let (file, updated) = match action {
        KeyAction::Init { file } => {
            let keys = crate::devcluster::create_key_file(&file)?;
            println!(
                "created {} for cluster {}, and the admin's private key in {} (keep it apart: \
                 it changes the cluster)",
                file.display(),
                keys.cluster,
                Keys::admin_key_path(&file).display()
            );
            return show(&keys);
        }
        KeyAction::Show { file } => return show(&Keys::load(&file)?),
        KeyAction::Add { file } => {
            let keys = Keys::load(&file)?
                .with_new_key()
                .map_err(anyhow::Error::msg)?;
            (file, keys)
        }
        KeyAction::Promote { file } => {
            let keys = Keys::load(&file)?.promote_newest();
            (file, keys)
        }
        KeyAction::Retire { file } => {
            let keys = Keys::load(&file)?.retire_others();
            (file, keys)
        }
    };
    updated.replace(&file)?;
    println!(
        "updated {}: copy it to every node and reload each (kill -HUP <pid>, or restart)",
        file.display()
    );
    show(&updated)
}

fn show(keys: &crate::keys::Keys) -> anyhow::Result<()> {
    println!("cluster {}", keys.cluster);
    for (i, key) in keys.all().iter().enumerate() {
        let role = if i == 0 {
            "signs and is accepted"
        } else {
            "accepted"
        };
        println!("key {}  {role}", key.fingerprint());
    }
    match keys.admin {
        Some(admin) => println!("admin {}", crate::identity::fingerprint(&admin)),
        None => println!("admin none (a cluster founded with this file has no admin)"),
    }
    Ok(())
}

/// Runs the `raftnode` command line `args` (the first is the program's name) to the end.
pub fn main_from<I, T>(args: I) -> ExitCode
where
    I: IntoIterator<Item = T>,
    T: Into<OsString> + Clone,
{
    let cli = match Cli::try_parse_from(args) {
        Ok(cli) => cli,
        Err(e) => e.exit(),
    };
    let level = match crate::logging::parse_level(&cli.log_level) {
        Ok(level) => level,
        Err(e) => {
            eprintln!("raftnode: {e}");
            return ExitCode::from(2);
        }
    };
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("raftnode: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(async {
        match cli.command {
            Command::Run {
                cluster,
                id,
                join,
                raft,
                client,
                data_dir,
                key_file,
            } => {
                let launch = if join {
                    let file = if cluster.exists() {
                        Some(crate::config::ClusterConfig::load(&cluster)?)
                    } else {
                        None
                    };
                    let settings = file.as_ref().map(|f| f.raft.clone()).unwrap_or_default();
                    let peers = file
                        .iter()
                        .flat_map(|f| &f.nodes)
                        .filter(|n| n.id != id)
                        .map(|n| {
                            let addr = crate::node::Address {
                                raft: n.raft.clone(),
                                client: n.client.clone(),
                            };
                            (n.id, addr)
                        })
                        .collect();
                    let (Some(raft), Some(client), Some(data_dir)) = (raft, client, data_dir)
                    else {
                        anyhow::bail!("--join needs --raft, --client and --data-dir");
                    };
                    for endpoint in [&raft, &client] {
                        crate::config::check_endpoint(endpoint).map_err(anyhow::Error::msg)?;
                    }
                    if id == 0 {
                        anyhow::bail!("node id 0 is reserved; ids start at 1");
                    }
                    let data_dir = std::env::current_dir()?.join(data_dir);
                    let me = crate::node::Address { raft, client };
                    let Some(key_file) =
                        key_file.or_else(|| file.as_ref().and_then(|f| f.key_file.clone()))
                    else {
                        anyhow::bail!(
                            "--join needs the cluster's key file: --key-file FILE, or a \
                             --cluster file that names it"
                        );
                    };
                    let limits = file.as_ref().map(|f| f.limits).unwrap_or_default();
                    crate::launch::NodeLaunch::joining(
                        id, me, data_dir, settings, peers, key_file, limits,
                    )
                } else {
                    let config = crate::config::ClusterConfig::load(&cluster)?;
                    let mut launch =
                        crate::launch::NodeLaunch::from_cluster(&config, &cluster, id)?;
                    if let Some(key_file) = key_file {
                        launch.key_file = key_file;
                    }
                    launch
                };
                let logger = crate::logging::stderr_logger(level);
                let exit =
                    crate::launch::run_node(launch, logger, crate::launch::termination()).await?;
                if exit == crate::node::Exit::Removed {
                    eprintln!("raftnode: node {id} was removed from the cluster and stopped");
                }
                Ok(())
            }
            Command::Up { cluster } => {
                let config = crate::config::ClusterConfig::load(&cluster)?;
                let exe = std::env::current_exe()?;
                crate::launch::up(exe, &[], &config, &cluster, &cli.log_level).await
            }
            Command::Key { action } => key_command(action),
        }
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("raftnode: {e:#}");
            ExitCode::FAILURE
        }
    }
}
