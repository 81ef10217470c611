//! `microblog`: the microblog's command-line program. Not built yet: its commands arrive with the
//! microblog issue. Until then it says so instead of pretending to work.

fn main() -> std::process::ExitCode {
    eprintln!(
        "microblog: the microblog commands are not implemented yet; use `raftnode` and the \
         raftnode::client Rust API for now"
    );
    std::process::ExitCode::from(1)
}
