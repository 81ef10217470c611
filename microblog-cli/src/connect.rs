//! Which cluster to talk to, and how patiently.
//!
//! The endpoints come from the first of: `--endpoints URL,...`, `--cluster FILE`, the
//! `MICROBLOG_ENDPOINTS` environment variable, and `configs/local-3.toml` (relative to the working
//! directory).

use std::path::{Path, PathBuf};
use std::time::Duration;

use raftnode::client::{Client, ClientOptions};
use raftnode::config::{ClusterConfig, check_endpoint};

use crate::error::{Error, Result};

/// The cluster file used when nothing else names a cluster.
pub const DEFAULT_CLUSTER: &str = "configs/local-3.toml";

/// The environment variable that may hold the endpoints.
pub const ENDPOINTS_ENV: &str = "MICROBLOG_ENDPOINTS";

/// The endpoints to use, by the precedence above. `env` is `MICROBLOG_ENDPOINTS`'s value.
pub fn endpoints(
    flag: &[String],
    cluster: Option<&Path>,
    env: Option<String>,
) -> Result<Vec<String>> {
    if !flag.is_empty() {
        return checked(flag.iter().map(String::as_str), "--endpoints");
    }
    if let Some(path) = cluster {
        return from_file(path);
    }
    if let Some(list) = env.filter(|v| !v.trim().is_empty()) {
        return checked(list.split(','), ENDPOINTS_ENV);
    }
    let default = Path::new(DEFAULT_CLUSTER);
    if default.exists() {
        return from_file(default);
    }
    Err(Error::usage(format!(
        "no cluster given, and {DEFAULT_CLUSTER} is not in {}",
        std::env::current_dir()
            .map(|d| d.display().to_string())
            .unwrap_or_else(|_| "the working directory".into())
    ))
    .hint(format!(
        "pass --endpoints tcp://host:port,... or --cluster FILE, or set {ENDPOINTS_ENV}"
    )))
}

/// The cluster file `cluster up` starts: `--cluster`, else the default.
pub fn cluster_file(cluster: Option<&Path>) -> PathBuf {
    cluster.map_or_else(|| PathBuf::from(DEFAULT_CLUSTER), Path::to_path_buf)
}

fn from_file(path: &Path) -> Result<Vec<String>> {
    let config = ClusterConfig::load(path).map_err(|e| {
        Error::usage(e.to_string()).hint("check the file, or pass --endpoints tcp://host:port,...")
    })?;
    Ok(config.client_endpoints())
}

fn checked<'a>(list: impl Iterator<Item = &'a str>, source: &str) -> Result<Vec<String>> {
    let mut out = Vec::new();
    for e in list.map(str::trim).filter(|e| !e.is_empty()) {
        check_endpoint(e).map_err(|why| {
            Error::usage(format!("{source}: {why}"))
                .hint("endpoints look like tcp://127.0.0.1:7201")
        })?;
        out.push(e.to_string());
    }
    if out.is_empty() {
        return Err(Error::usage(format!("{source} lists no endpoints")));
    }
    Ok(out)
}

/// Client options for a command with this `--timeout` over `endpoints` endpoints: it keeps
/// trying to reach a leader for that long, waits at most that long (but no more than 7 s) for any
/// one answer, and gives each connection attempt a share of it (at most 500 ms) so that every
/// endpoint is tried before it gives up.
pub fn client_options(timeout: Duration, endpoints: usize) -> ClientOptions {
    let share = timeout / (endpoints as u32 + 1).max(2);
    ClientOptions {
        request_timeout: timeout.clamp(Duration::from_millis(250), Duration::from_secs(7)),
        connect_timeout: share.clamp(Duration::from_millis(50), Duration::from_millis(500)),
        retry_window: timeout,
        follow_leader: true,
    }
}

/// A client for these endpoints.
pub fn client(endpoints: Vec<String>, timeout: Duration) -> Client {
    let options = client_options(timeout, endpoints.len());
    Client::with_options(endpoints, options)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn precedence_flag_file_env() {
        let dir = std::env::temp_dir().join(format!("microblog-connect-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("c.toml");
        let config = raftnode::config::ClusterConfig {
            key_file: None,
            raft: Default::default(),
            limits: Default::default(),
            nodes: vec![raftnode::config::NodeConfig {
                id: 1,
                raft: "tcp://127.0.0.1:9101".into(),
                client: "tcp://127.0.0.1:9201".into(),
                data_dir: "d1".into(),
            }],
        };
        config.write(&file).unwrap();
        let env = Some("tcp://127.0.0.1:3,tcp://127.0.0.1:4".to_string());
        let flag = vec!["tcp://127.0.0.1:1".to_string()];
        assert_eq!(
            endpoints(&flag, Some(&file), env.clone()).unwrap(),
            vec!["tcp://127.0.0.1:1"]
        );
        assert_eq!(
            endpoints(&[], Some(&file), env.clone()).unwrap(),
            vec!["tcp://127.0.0.1:9201"]
        );
        assert_eq!(endpoints(&[], None, env).unwrap().len(), 2);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn bad_endpoints_and_files_are_usage_errors() {
        let e = endpoints(&["127.0.0.1:1".into()], None, None).unwrap_err();
        assert_eq!(e.exit_code(), 2);
        assert!(e.message.contains("tcp://"), "{e}");
        let e = endpoints(&[], Some(Path::new("/nonexistent/c.toml")), None).unwrap_err();
        assert_eq!(e.exit_code(), 2);
        assert!(e.message.contains("/nonexistent/c.toml"), "{e}");
        let e = endpoints(&[], None, Some("tcp://h:0".into())).unwrap_err();
        assert!(e.message.contains(ENDPOINTS_ENV), "{e}");
    }
}
