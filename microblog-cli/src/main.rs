//! `microblog`: the microblog's command-line program. Parses the command line, runs the command,
//! and turns its outcome into an exit code (0 ok, 1 failed, 2 usage, 3 not found or timed out).

use std::process::ExitCode;

use clap::Parser;

#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;
use microblog_cli::cli::{Cli, Command};
use microblog_cli::commands;
use microblog_cli::error::Error;

fn main() -> ExitCode {
    // `microblog node ...` is `raftnode ...`: a node of a cluster, run by `microblog up` from
    // this same program (one built program is enough).
    let mut args = std::env::args_os();
    if args.nth(1).is_some_and(|a| a == "node") {
        return raftnode::cli::main_from(std::iter::once("microblog node".into()).chain(args));
    }
    // clap prints usage errors and exits 2 (help and version exit 0).
    let cli = Cli::parse();
    let serving = matches!(cli.command, Command::Serve { .. } | Command::Up { .. });
    let json = cli.json;
    // The web app serves many connections: a runtime with a thread per core for it.
    let runtime = if serving {
        tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .build()
    } else {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
    };
    let outcome = match runtime {
        Ok(runtime) => runtime.block_on(commands::run(cli)),
        Err(e) => Err(Error::failed(format!(
            "cannot start the async runtime: {e}"
        ))),
    };
    match outcome {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            if json {
                eprintln!("{}", e.to_json());
            } else {
                eprintln!("microblog: {e}");
            }
            ExitCode::from(e.exit_code())
        }
    }
}
