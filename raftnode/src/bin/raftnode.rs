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
    /// Run one node of a cluster.
    ///
    /// Example: raftnode run --cluster configs/local-3.toml --id 1
    Run {
        /// The cluster file.
        #[arg(long, default_value = "configs/local-3.toml")]
        cluster: PathBuf,
        /// This node's id in the cluster file.
        #[arg(long)]
        id: u64,
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
            Command::Run { cluster, id } => {
                let config = raftnode::config::ClusterConfig::load(&cluster)?;
                let logger = raftnode::logging::stderr_logger(level);
                raftnode::launch::run_node(
                    &config,
                    &cluster,
                    id,
                    logger,
                    raftnode::launch::termination(),
                )
                .await
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
