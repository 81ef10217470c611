//! `microblog`: the microblog's command-line program. Parses the command line, runs the command,
//! and turns its outcome into an exit code (0 ok, 1 failed, 2 usage, 3 not found or timed out).

use std::process::ExitCode;

use clap::Parser;

#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;
use microblog_cli::cli::Cli;
use microblog_cli::commands;
use microblog_cli::error::Error;

fn main() -> ExitCode {
    // clap prints usage errors and exits 2 (help and version exit 0).
    let cli = Cli::parse();
    let json = cli.json;
    let outcome = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
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
