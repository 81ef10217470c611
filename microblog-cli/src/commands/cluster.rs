//! `cluster up` and `cluster status`. (Membership changes — add, remove, promote — will be more
//! arms of [`run`].)

use std::path::{Path, PathBuf};
use std::time::Duration;

use raftnode::client::{Client, ClientError, ClientOptions};
use raftnode::proto;
use serde_json::json;

use super::Context;
use crate::cli::ClusterCommand;
use crate::connect;
use crate::error::{Error, Result};

/// Runs one `cluster` command.
pub async fn run(ctx: &mut Context, cmd: ClusterCommand) -> Result<()> {
    match cmd {
        ClusterCommand::Up => up(ctx),
        ClusterCommand::Status => status(ctx).await,
    }
}

/// `cluster up`: becomes `raftnode up --cluster FILE` (the process is replaced, so Ctrl-C and
/// SIGTERM reach raftnode's own handling, which stops every node).
fn up(ctx: &Context) -> Result<()> {
    if !ctx.endpoints.is_empty() {
        return Err(
            Error::usage("cluster up starts the nodes of a cluster file, not endpoints")
                .hint("pass --cluster FILE (default: configs/local-3.toml)"),
        );
    }
    let file = connect::cluster_file(ctx.cluster.as_deref());
    if !file.exists() {
        return Err(
            Error::usage(format!("cluster file {} not found", file.display()))
                .hint("run from the repository root, or pass --cluster FILE"),
        );
    }
    let bin = raftnode_bin().ok_or_else(|| {
        Error::failed("the raftnode program is neither next to microblog nor on PATH")
            .hint("build it: cargo build --release (builds both programs into target/release)")
    })?;
    exec_up(&bin, &file)
}

#[cfg(unix)]
fn exec_up(bin: &Path, file: &Path) -> Result<()> {
    use std::os::unix::process::CommandExt;
    let err = std::process::Command::new(bin)
        .arg("up")
        .arg("--cluster")
        .arg(file)
        .exec();
    Err(Error::failed(format!(
        "cannot run {}: {err}",
        bin.display()
    )))
}

#[cfg(not(unix))]
fn exec_up(bin: &Path, file: &Path) -> Result<()> {
    let status = std::process::Command::new(bin)
        .arg("up")
        .arg("--cluster")
        .arg(file)
        .status()?;
    if status.success() {
        Ok(())
    } else {
        Err(Error::failed(format!("raftnode up ended: {status}")))
    }
}

/// `raftnode` beside this program (both build into one target dir), else on PATH.
fn raftnode_bin() -> Option<PathBuf> {
    let name = format!("raftnode{}", std::env::consts::EXE_SUFFIX);
    let beside = std::env::current_exe()
        .ok()
        .and_then(|exe| exe.parent().map(|dir| dir.join(&name)));
    beside.into_iter().find(|p| p.is_file()).or_else(|| {
        std::env::var_os("PATH").and_then(|path| {
            std::env::split_paths(&path)
                .map(|dir| dir.join(&name))
                .find(|p| p.is_file())
        })
    })
}

/// `cluster status`: asks every endpoint for its node's own view; exit 1 only if none answers.
async fn status(ctx: &mut Context) -> Result<()> {
    let endpoints = ctx.endpoints()?;
    let patience = ctx.timeout.min(Duration::from_secs(2));
    let options = ClientOptions {
        request_timeout: patience,
        connect_timeout: patience.min(Duration::from_millis(500)),
        retry_window: patience,
        follow_leader: false,
    };
    let mut asks = tokio::task::JoinSet::new();
    for (i, endpoint) in endpoints.iter().enumerate() {
        let (endpoint, options) = (endpoint.clone(), options.clone());
        asks.spawn(async move { (i, Client::status_of(&endpoint, &options).await) });
    }
    let mut answers: Vec<Option<std::result::Result<proto::Status, ClientError>>> =
        vec![None; endpoints.len()];
    while let Some(joined) = asks.join_next().await {
        if let Ok((i, answer)) = joined {
            answers[i] = Some(answer);
        }
    }
    let answers: Vec<(String, std::result::Result<proto::Status, String>)> = endpoints
        .iter()
        .cloned()
        .zip(answers)
        .map(|(e, a)| {
            let a = match a {
                Some(Ok(s)) => Ok(s),
                Some(Err(err)) => Err(reason(err)),
                None => Err("the status request failed".to_string()),
            };
            (e, a)
        })
        .collect();
    print_status(ctx, &answers)?;
    if answers.iter().all(|(_, a)| a.is_err()) {
        return Err(
            Error::failed(format!("no node answered (tried {})", endpoints.join(", "))).hint(
                "start the cluster (`microblog cluster up`), or check --endpoints / --cluster",
            ),
        );
    }
    Ok(())
}

fn reason(err: ClientError) -> String {
    match err {
        ClientError::NoLeader { last, .. } => last,
        other => other.to_string(),
    }
}

fn members_text(s: &proto::Status) -> String {
    s.members
        .iter()
        .map(|m| {
            if m.role == "voter" || m.role.is_empty() {
                m.id.to_string()
            } else {
                format!("{}({})", m.id, m.role)
            }
        })
        .collect::<Vec<_>>()
        .join(" ")
}

fn print_status(
    ctx: &mut Context,
    answers: &[(String, std::result::Result<proto::Status, String>)],
) -> Result<()> {
    if ctx.out.json {
        for (endpoint, answer) in answers {
            let line = match answer {
                Ok(s) => json!({
                    "endpoint": endpoint,
                    "id": s.id,
                    "role": s.role,
                    "leader": s.leader_id,
                    "term": s.term,
                    "commit": s.commit,
                    "applied": s.applied,
                    "tuples": s.tuples,
                    "first_index": s.first_index,
                    "last_index": s.last_index,
                    "members": s.members.iter().map(|m| json!({
                        "id": m.id,
                        "role": m.role,
                        "raft": m.raft_url,
                        "client": m.client_url,
                    })).collect::<Vec<_>>(),
                }),
                Err(why) => json!({ "endpoint": endpoint, "error": why }),
            };
            ctx.out.json_line(&line)?;
        }
        return Ok(());
    }
    let rows: Vec<Vec<String>> = answers
        .iter()
        .map(|(endpoint, answer)| match answer {
            Ok(s) => vec![
                s.id.to_string(),
                endpoint.clone(),
                s.role.clone(),
                if s.leader_id == 0 {
                    "-".into()
                } else {
                    s.leader_id.to_string()
                },
                s.term.to_string(),
                s.commit.to_string(),
                s.applied.to_string(),
                s.tuples.to_string(),
                members_text(s),
            ],
            Err(_) => {
                let mut row = vec!["-".to_string(), endpoint.clone(), "unreachable".into()];
                row.resize(9, "-".into());
                row
            }
        })
        .collect();
    ctx.out.table(
        &[
            "NODE", "ENDPOINT", "ROLE", "LEADER", "TERM", "COMMIT", "APPLIED", "TUPLES", "MEMBERS",
        ],
        &rows,
    )?;
    for (endpoint, answer) in answers {
        if let Err(why) = answer {
            let why = why
                .strip_prefix(endpoint.as_str())
                .map_or(why.as_str(), |rest| rest.trim_start_matches(": "));
            eprintln!("microblog: {endpoint} did not answer: {why}");
        }
    }
    Ok(())
}
