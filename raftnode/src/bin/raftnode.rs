//! `raftnode`: run one node of a cluster, or a whole local cluster (see [`raftnode::cli`]).

use std::process::ExitCode;

#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    raftnode::cli::main_from(std::env::args_os())
}
