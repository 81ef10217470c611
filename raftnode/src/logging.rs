//! Logging: one slog logger, built once per process and passed down.
//!
//! The level comes from `--log-level` or the `RAFTNODE_LOG` environment variable
//! (`trace`, `debug`, `info`, `warning`, `error`, `critical`); the default is `info`.

use slog::{Drain, Level, Logger, o};

/// Parses a level name as the flag and `RAFTNODE_LOG` accept.
pub fn parse_level(name: &str) -> Result<Level, String> {
    match name.to_ascii_lowercase().as_str() {
        "trace" => Ok(Level::Trace),
        "debug" => Ok(Level::Debug),
        "info" => Ok(Level::Info),
        "warn" | "warning" => Ok(Level::Warning),
        "error" => Ok(Level::Error),
        "crit" | "critical" => Ok(Level::Critical),
        other => Err(format!(
            "unknown log level {other:?} (expected trace, debug, info, warning, error or critical)"
        )),
    }
}

/// A logger writing to stderr at `level` and above, through an async drain.
pub fn stderr_logger(level: Level) -> Logger {
    let decorator = slog_term::PlainDecorator::new(std::io::stderr());
    let drain = slog_term::FullFormat::new(decorator).build().fuse();
    let drain = slog_async::Async::new(drain)
        .chan_size(4096)
        .overflow_strategy(slog_async::OverflowStrategy::DropAndReport)
        .build()
        .fuse();
    let drain = drain.filter_level(level).fuse();
    Logger::root(drain, o!())
}

/// A logger that drops everything (for tests and library users who pass none).
pub fn discard() -> Logger {
    Logger::root(slog::Discard, o!())
}
