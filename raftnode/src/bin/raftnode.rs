//! `raftnode`: run one node of a cluster, or a whole local cluster.

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
    },
    /// Start every node of a local cluster as child processes; Ctrl-C stops them all.
    ///
    /// Example: raftnode up --cluster configs/local-5.toml
    Up {
        /// The cluster file.
        #[arg(long, default_value = "configs/local-3.toml")]
        cluster: PathBuf,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let level = match raftnode::logging::parse_level(&cli.log_level) {
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
            } => {
                let launch = if join {
                    let file = if cluster.exists() {
                        Some(raftnode::config::ClusterConfig::load(&cluster)?)
                    } else {
                        None
                    };
                    let settings = file.as_ref().map(|f| f.raft.clone()).unwrap_or_default();
                    let peers = file
                        .iter()
                        .flat_map(|f| &f.nodes)
                        .filter(|n| n.id != id)
                        .map(|n| {
                            let addr = raftnode::node::Address {
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
                        raftnode::config::check_endpoint(endpoint).map_err(anyhow::Error::msg)?;
                    }
                    if id == 0 {
                        anyhow::bail!("node id 0 is reserved; ids start at 1");
                    }
                    let data_dir = std::env::current_dir()?.join(data_dir);
                    let me = raftnode::node::Address { raft, client };
                    raftnode::launch::NodeLaunch::joining(id, me, data_dir, settings, peers)
                } else {
                    let config = raftnode::config::ClusterConfig::load(&cluster)?;
                    raftnode::launch::NodeLaunch::from_cluster(&config, &cluster, id)?
                };
                let logger = raftnode::logging::stderr_logger(level);
                let exit =
                    raftnode::launch::run_node(launch, logger, raftnode::launch::termination())
                        .await?;
                if exit == raftnode::node::Exit::Removed {
                    eprintln!("raftnode: node {id} was removed from the cluster and stopped");
                }
                Ok(())
            }
            Command::Up { cluster } => {
                let config = raftnode::config::ClusterConfig::load(&cluster)?;
                let exe = std::env::current_exe()?;
                raftnode::launch::up(exe, &config, &cluster, &cli.log_level).await
            }
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
