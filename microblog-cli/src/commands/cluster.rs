//! `cluster up`, `cluster status`, and the membership changes: `cluster add` (learner, catch
//! up, voter), `cluster promote`, `cluster remove` and `cluster change` (several changes in one
//! step, through joint consensus).
//!
//! Membership errors say what to do: another change in progress (retry), an unknown node (add it
//! first), a node that did not catch up (start it with `raftnode run --join`). Exit codes as
//! everywhere: 1 failed or refused, 2 usage (a bad URL or id, found before anything is sent),
//! 3 timed out (a catch-up or a change that did not finish in time).

use std::path::Path;
use std::time::{Duration, Instant};

use raftnode::client::{Client, ClientError, ClientOptions, MemberChange};
use raftnode::config::check_endpoint;
use raftnode::devcluster::raftnode_bin;
use raftnode::proto::{self, Role};
use serde_json::{Value as Json, json};

use super::Context;
use crate::cli::ClusterCommand;
use crate::connect;
use crate::duration;
use crate::error::{Error, Kind, Result};

/// Runs one `cluster` command.
pub async fn run(ctx: &mut Context, cmd: ClusterCommand) -> Result<()> {
    match cmd {
        ClusterCommand::Up => up(ctx),
        ClusterCommand::Status => status(ctx).await,
        ClusterCommand::Add {
            id,
            raft,
            client,
            catch_up,
            max_lag,
        } => add(ctx, id, &raft, &client, catch_up, max_lag).await,
        ClusterCommand::Promote {
            id,
            catch_up,
            max_lag,
            force,
        } => promote(ctx, id, (catch_up, max_lag), force).await,
        ClusterCommand::Remove { id } => remove(ctx, id).await,
        ClusterCommand::Change {
            add_learner,
            add_voter,
            remove,
            force,
        } => change(ctx, add_learner, add_voter, remove, force).await,
    }
}

/// `cluster up`: becomes `raftnode up --cluster FILE` (the process is replaced, so Ctrl-C and
/// SIGTERM reach raftnode's own handling, which stops every node).
fn up(ctx: &Context) -> Result<()> {
    let file = cluster_file_to_start(ctx, "cluster up")?;
    let bin = raftnode_bin().map_err(|e| {
        Error::failed(e.to_string())
            .hint("cargo build --release builds both programs into target/release")
    })?;
    exec_up(&bin, &file)
}

/// The cluster file a command that starts nodes (`command`) uses: `--cluster`, else the
/// default; refused when endpoints were given instead, or when the file is not there.
pub fn cluster_file_to_start(ctx: &Context, command: &str) -> Result<std::path::PathBuf> {
    if !ctx.endpoints.is_empty() {
        return Err(Error::usage(format!(
            "{command} starts the nodes of a cluster file, not endpoints"
        ))
        .hint("pass --cluster FILE (default: configs/local-3.toml)"));
    }
    let file = connect::cluster_file(ctx.cluster.as_deref());
    if !file.exists() {
        return Err(
            Error::usage(format!("cluster file {} not found", file.display()))
                .hint("run from the repository root, or pass --cluster FILE"),
        );
    }
    Ok(file)
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

/// `cluster status`: asks every endpoint for its node's own view, and the leader for its view of
/// every member (role, replicated index, lag); exit 1 only if no node answers.
async fn status(ctx: &mut Context) -> Result<()> {
    let endpoints = ctx.endpoints()?;
    let patience = ctx.timeout.min(Duration::from_secs(2));
    let options = ClientOptions {
        request_timeout: patience,
        connect_timeout: patience.min(Duration::from_millis(500)),
        retry_window: patience,
        follow_leader: false,
    };
    let leader_view = {
        let options = ClientOptions {
            follow_leader: true,
            ..options.clone()
        };
        let mut client = Client::with_options(endpoints.clone(), options);
        tokio::spawn(async move { client.leader_status().await })
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
    let leader = leader_view.await.ok().and_then(|answer| answer.ok());
    print_status(ctx, &answers, leader.as_ref())?;
    if answers.iter().all(|(_, a)| a.is_err()) {
        return Err(
            Error::failed(format!("no node answered (tried {})", endpoints.join(", "))).hint(
                "start the cluster (`microblog cluster up`), or check --endpoints / --cluster",
            ),
        );
    }
    if leader.is_none() {
        eprintln!(
            "microblog: no leader answered within {}: the leader's view (roles, lag) is not shown",
            duration::show(patience)
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

/// `why` without a leading `endpoint: ` (the message names the endpoint already).
fn without_endpoint<'a>(why: &'a str, endpoint: &str) -> &'a str {
    why.strip_prefix(endpoint)
        .map_or(why, |rest| rest.trim_start_matches(": "))
}

fn members_text(s: &proto::Status) -> String {
    let mut members: Vec<&proto::Member> = s.members.iter().collect();
    members.sort_by_key(|m| m.id);
    members
        .iter()
        .map(|m| match m.role() {
            Role::Voter | Role::Unspecified => m.id.to_string(),
            role => format!("{}({})", m.id, role.name()),
        })
        .collect::<Vec<_>>()
        .join(" ")
}

fn print_status(
    ctx: &mut Context,
    answers: &[(String, std::result::Result<proto::Status, String>)],
    leader: Option<&proto::Status>,
) -> Result<()> {
    if ctx.out.json {
        for (endpoint, answer) in answers {
            let line = match answer {
                Ok(s) => json!({
                    "endpoint": endpoint,
                    "id": s.id,
                    "role": s.role().name(),
                    "leader": s.leader_id,
                    "term": s.term,
                    "commit": s.commit,
                    "applied": s.applied,
                    "tuples": s.tuples,
                    "first_index": s.first_index,
                    "last_index": s.last_index,
                    "cluster": format!("{:016x}", s.cluster_id),
                    "cluster_time_ms": s.cluster_time_ms,
                    "refused": s.refused,
                    "members": s.members.iter().map(|m| json!({
                        "id": m.id,
                        "role": m.role().name(),
                        "raft": m.raft_url,
                        "client": m.client_url,
                        "matched": leader.and_then(|l| matched(l, m.id)),
                        "lag": leader.and_then(|l| lag(l, m.id)),
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
                s.role().name().to_string(),
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
    if let Some(leader) = leader {
        ctx.out.line("")?;
        print_membership(ctx, leader)?;
    }
    let refusals: Vec<String> = answers
        .iter()
        .filter_map(|(_, answer)| answer.as_ref().ok())
        .filter(|s| !s.refused.is_empty())
        .map(|s| {
            let kinds: Vec<String> = s.refused.iter().map(|(k, n)| format!("{k} {n}")).collect();
            format!("node {} refused: {}", s.id, kinds.join(", "))
        })
        .collect();
    if !refusals.is_empty() {
        ctx.out.line("")?;
        for line in refusals {
            ctx.out.line(&line)?;
        }
    }
    for (endpoint, answer) in answers {
        if let Err(why) = answer {
            let why = without_endpoint(why, endpoint);
            eprintln!("microblog: {endpoint} did not answer: {why}");
        }
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// The leader's view of the membership: every member's role, replicated index and lag.

/// The highest index the leader knows replicated on member `id` (`None`: not known yet).
fn matched(leader: &proto::Status, id: u64) -> Option<u64> {
    leader
        .members
        .iter()
        .find(|m| m.id == id)
        .map(|m| m.matched)
        .filter(|&m| m > 0)
}

/// How many entries member `id` is behind the leader's log (`None`: not known yet).
fn lag(leader: &proto::Status, id: u64) -> Option<u64> {
    matched(leader, id).map(|m| leader.last_index.saturating_sub(m))
}

fn opt_text(v: Option<u64>) -> String {
    v.map_or_else(|| "-".to_string(), |v| v.to_string())
}

/// The leader's id as node `s` knows it (itself, if it leads).
fn leader_of(s: &proto::Status) -> u64 {
    if s.role() == Role::Leader {
        s.id
    } else {
        s.leader_id
    }
}

/// The leader's view as one JSON object.
fn membership_json(s: &proto::Status) -> Json {
    let mut members: Vec<&proto::Member> = s.members.iter().collect();
    members.sort_by_key(|m| m.id);
    json!({
        "leader": leader_of(s),
        "term": s.term,
        "commit": s.commit,
        "applied": s.applied,
        "first_index": s.first_index,
        "last_index": s.last_index,
        "members": members.iter().map(|m| json!({
            "id": m.id,
            "role": m.role().name(),
            "raft": m.raft_url,
            "client": m.client_url,
            "matched": matched(s, m.id),
            "lag": lag(s, m.id),
        })).collect::<Vec<_>>(),
    })
}

/// The leader's view: a summary line and a table of members, or one JSON object.
fn print_membership(ctx: &mut Context, s: &proto::Status) -> Result<()> {
    if ctx.out.json {
        ctx.out.json_line(&membership_json(s))?;
        return Ok(());
    }
    let leader = leader_of(s);
    ctx.out.line(&format!(
        "leader {leader}, term {}, commit {}, applied {}, last index {}",
        s.term, s.commit, s.applied, s.last_index
    ))?;
    let mut members: Vec<&proto::Member> = s.members.iter().collect();
    members.sort_by_key(|m| m.id);
    let rows: Vec<Vec<String>> = members
        .iter()
        .map(|m| {
            vec![
                m.id.to_string(),
                if m.id == leader {
                    format!("{} (leader)", m.role().name())
                } else {
                    m.role().name().to_string()
                },
                m.raft_url.clone(),
                m.client_url.clone(),
                opt_text(matched(s, m.id)),
                opt_text(lag(s, m.id)),
            ]
        })
        .collect();
    ctx.out.table(
        &["MEMBER", "ROLE", "RAFT", "CLIENT", "MATCHED", "LAG"],
        &rows,
    )?;
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Membership changes.

/// One node in `cluster change`: its id, and its endpoints when the cluster does not know it yet
/// (empty: known).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MemberSpec {
    /// Its id.
    pub id: u64,
    /// Its raft endpoint, or empty.
    pub raft: String,
    /// Its client endpoint, or empty.
    pub client: String,
}

const ENDPOINT_EXAMPLE: &str = "e.g. tcp://127.0.0.1:7104";
const SPEC_EXAMPLE: &str = "e.g. 4=tcp://127.0.0.1:7104,tcp://127.0.0.1:7204";

/// A node endpoint on the command line: `tcp://host:port`, a host others can connect to.
pub fn parse_endpoint(text: &str) -> std::result::Result<String, String> {
    let t = text.trim();
    check_endpoint(t).map_err(|why| format!("{why} ({ENDPOINT_EXAMPLE})"))?;
    if t.starts_with("tcp://*:") {
        return Err(format!(
            "{t:?} is a bind address: give the address other nodes and clients connect to \
             ({ENDPOINT_EXAMPLE})"
        ));
    }
    Ok(t.to_string())
}

/// `ID=RAFT_URL,CLIENT_URL` (`--add-learner`).
pub fn parse_new_member(text: &str) -> std::result::Result<MemberSpec, String> {
    parse_spec(text, true)
}

/// `ID` or `ID=RAFT_URL,CLIENT_URL` (`--add-voter`).
pub fn parse_voter(text: &str) -> std::result::Result<MemberSpec, String> {
    parse_spec(text, false)
}

fn parse_spec(text: &str, need_endpoints: bool) -> std::result::Result<MemberSpec, String> {
    let (id, endpoints) = match text.split_once('=') {
        Some((id, endpoints)) => (id.trim(), Some(endpoints)),
        None => (text.trim(), None),
    };
    let id: u64 = id.parse().ok().filter(|&i| i > 0).ok_or_else(|| {
        format!("{id:?} is not a node id (a positive number); write ID=RAFT_URL,CLIENT_URL, {SPEC_EXAMPLE}")
    })?;
    match endpoints {
        None if need_endpoints => Err(format!(
            "node {id} needs its endpoints: {id}=RAFT_URL,CLIENT_URL, {SPEC_EXAMPLE}"
        )),
        None => Ok(MemberSpec {
            id,
            raft: String::new(),
            client: String::new(),
        }),
        Some(endpoints) => {
            let (raft, client) = endpoints.split_once(',').ok_or_else(|| {
                format!("node {id}: give both endpoints, RAFT_URL,CLIENT_URL ({SPEC_EXAMPLE})")
            })?;
            Ok(MemberSpec {
                id,
                raft: parse_endpoint(raft)?,
                client: parse_endpoint(client)?,
            })
        }
    }
}

/// A progress line on stderr (a JSON object with --json; `id` 0: about several nodes).
fn progress(ctx: &Context, step: &str, id: u64, text: &str) {
    if ctx.out.json {
        let mut line = json!({ "progress": step, "message": text });
        if id != 0 {
            line["id"] = json!(id);
        }
        eprintln!("{line}");
    } else {
        eprintln!("microblog: {text}");
    }
}

/// Member `id` in the leader's view.
fn member(s: &proto::Status, id: u64) -> Option<&proto::Member> {
    s.members.iter().find(|m| m.id == id)
}

/// `1 (voter), 2 (voter), 4 (learner)`.
fn member_list(s: &proto::Status) -> String {
    let mut members: Vec<&proto::Member> = s.members.iter().collect();
    members.sort_by_key(|m| m.id);
    members
        .iter()
        .map(|m| format!("{} ({})", m.id, m.role().name()))
        .collect::<Vec<_>>()
        .join(", ")
}

fn not_a_member(id: u64, s: &proto::Status) -> Error {
    Error::failed(format!(
        "node {id} is not a member of the cluster (members: {})",
        member_list(s)
    ))
}

/// The hint for a node that does not run yet.
fn join_hint(id: u64, raft: &str, client: &str) -> String {
    format!(
        "start it with `raftnode run --join --id {id} --raft {raft} --client {client} --data-dir DIR` \
         --cluster FILE (for the cluster's [raft] settings and key file) or --key-file FILE \
         (a copy of the cluster's key file)"
    )
}

/// A failed membership request, with what to do about it. The membership outcomes
/// (`ChangeInProgress`, `HandingOver`, `NotMember`, ...) read the same from any command (see
/// [`Error`]'s `From<ClientError>`); here a plain `Invalid` answer is a refused change.
fn membership_error(e: ClientError) -> Error {
    match e {
        ClientError::Invalid(m) => {
            Error::failed(format!("the cluster refused the membership change: {m}"))
                .hint("`microblog cluster status` shows the current members and roles")
        }
        other => Error::from(other),
    }
}

/// The leader's status, for the checks before a change.
async fn leader_view(client: &mut Client) -> Result<proto::Status> {
    client.leader_status().await.map_err(membership_error)
}

/// `cluster add`: learner, catch up, voter (what [`Client::add_node`] does, step by step so that
/// each step is reported as it happens).
async fn add(
    ctx: &mut Context,
    id: u64,
    raft: &str,
    client_url: &str,
    catch_up: Duration,
    max_lag: u64,
) -> Result<()> {
    let mut client = ctx.client()?;
    probe_new_node(ctx, id, raft, client_url, catch_up).await?;
    let view = leader_view(&mut client).await?;
    check_endpoints_free(&view, id, raft, client_url)?;
    match member(&view, id).map(proto::Member::role) {
        Some(Role::Voter) => {
            progress(
                ctx,
                "voter",
                id,
                &format!("node {id} is already a voter: nothing to do"),
            );
            return print_membership(ctx, &view);
        }
        Some(Role::Learner) => progress(
            ctx,
            "learner",
            id,
            &format!("node {id} is already a learner; waiting for it to catch up"),
        ),
        Some(role) => {
            return Err(Error::failed(format!(
                "node {id} is an {}: a joint change that removes it is finishing",
                role.name()
            ))
            .hint("wait until `microblog cluster status` shows it gone, then add it again"));
        }
        None => {
            client
                .change_membership(&[MemberChange::AddLearner {
                    id,
                    raft: raft.to_string(),
                    client: client_url.to_string(),
                }])
                .await
                .map_err(membership_error)?;
            progress(
                ctx,
                "learner",
                id,
                &format!("added node {id} as a learner; waiting for it to catch up"),
            );
        }
    }
    wait_caught_up(ctx, &mut client, id, raft, client_url, catch_up, max_lag).await?;
    progress(
        ctx,
        "caught-up",
        id,
        &format!("node {id} has caught up (within {max_lag} entries of the commit index)"),
    );
    let status = client
        .change_membership(&[MemberChange::AddVoter {
            id,
            raft: String::new(),
            client: String::new(),
        }])
        .await
        .map_err(|e| {
            let e = membership_error(e);
            let hint = format!(
                "node {id} is a learner; finish with `microblog cluster promote {id}`{}",
                e.hint
                    .as_deref()
                    .map_or(String::new(), |h| format!("; {h}"))
            );
            e.hint(hint)
        })?;
    progress(ctx, "voter", id, &format!("promoted node {id} to voter"));
    print_membership(ctx, &status)
}

/// Does the new node run? Not running yet is fine (the catch-up waits for it), but say how to
/// start it; a node answering as another id is an error.
async fn probe_new_node(
    ctx: &Context,
    id: u64,
    raft: &str,
    client_url: &str,
    catch_up: Duration,
) -> Result<()> {
    let probe = ClientOptions {
        request_timeout: Duration::from_secs(1),
        connect_timeout: Duration::from_millis(500),
        retry_window: Duration::from_secs(1),
        follow_leader: false,
    };
    match Client::status_of(client_url, &probe).await {
        Ok(s) if s.id != id => Err(Error::failed(format!(
            "{client_url} answers as node {}, not node {id}",
            s.id
        ))
        .hint("check the id and the endpoints")),
        Ok(_) => Ok(()),
        Err(e) => {
            let hint = join_hint(id, raft, client_url);
            progress(
                ctx,
                "not-running",
                id,
                &format!(
                    "node {id} does not answer on {client_url} ({}): {hint}; adding it anyway, \
                     the catch-up waits up to {} for it",
                    without_endpoint(&reason(e), client_url),
                    duration::show(catch_up)
                ),
            );
            Ok(())
        }
    }
}

/// No other member already uses the new node's endpoints.
fn check_endpoints_free(view: &proto::Status, id: u64, raft: &str, client_url: &str) -> Result<()> {
    for m in view.members.iter().filter(|m| m.id != id) {
        for (what, url, theirs) in [
            ("raft", raft, &m.raft_url),
            ("client", client_url, &m.client_url),
        ] {
            if url == theirs {
                return Err(Error::failed(format!(
                    "{url} is already node {}'s {what} endpoint",
                    m.id
                ))
                .hint("give the new node its own endpoints"));
            }
        }
    }
    Ok(())
}

/// Waits for node `id` to catch up, saying every few seconds how far it is.
async fn wait_caught_up(
    ctx: &Context,
    client: &mut Client,
    id: u64,
    raft: &str,
    client_url: &str,
    catch_up: Duration,
    max_lag: u64,
) -> Result<()> {
    let deadline = Instant::now() + catch_up;
    loop {
        let slice = deadline
            .saturating_duration_since(Instant::now())
            .min(Duration::from_secs(5));
        match client.wait_caught_up(id, slice, max_lag).await {
            Ok(()) => return Ok(()),
            Err(ClientError::CatchUpTimedOut {
                matched, commit, ..
            }) => {
                let how_far = format!("replicated {matched}, commit {commit}");
                if Instant::now() >= deadline {
                    return Err(Error::new(
                        Kind::TimedOut,
                        format!(
                            "node {id} did not catch up within {} ({how_far}); it stays a learner \
                             (it does not vote)",
                            duration::show(catch_up)
                        ),
                    )
                    .hint(format!(
                        "is it running? {}; then finish with `microblog cluster promote {id}` (or \
                         run cluster add again, with a longer --catch-up), or take it out with \
                         `microblog cluster remove {id}`",
                        join_hint(id, raft, client_url)
                    )));
                }
                progress(
                    ctx,
                    "catching-up",
                    id,
                    &format!("node {id} is catching up ({how_far})"),
                );
            }
            Err(ClientError::NotMember(_)) => {
                return Err(
                    Error::failed(format!("node {id} was removed while it caught up"))
                        .hint("another change removed it; check `microblog cluster status`"),
                );
            }
            Err(e) => return Err(membership_error(e)),
        }
    }
}

/// `cluster promote`: learner to voter.
async fn promote(
    ctx: &mut Context,
    id: u64,
    (catch_up, max_lag): (Duration, u64),
    force: bool,
) -> Result<()> {
    let mut client = ctx.client()?;
    let view = leader_view(&mut client).await?;
    let Some(m) = member(&view, id) else {
        return Err(not_a_member(id, &view).hint(format!(
            "add it first: `microblog cluster add {id} RAFT_URL CLIENT_URL` (it adds a learner and \
             promotes it)"
        )));
    };
    if m.role() == Role::Voter {
        progress(
            ctx,
            "voter",
            id,
            &format!("node {id} is already a voter: nothing to do"),
        );
        return print_membership(ctx, &view);
    }
    if !force {
        let (raft, client_url) = (m.raft_url.clone(), m.client_url.clone());
        wait_caught_up(ctx, &mut client, id, &raft, &client_url, catch_up, max_lag).await?;
    }
    let status = client
        .change_membership_with(
            &[MemberChange::AddVoter {
                id,
                raft: String::new(),
                client: String::new(),
            }],
            force,
        )
        .await
        .map_err(membership_error)?;
    progress(ctx, "voter", id, &format!("promoted node {id} to voter"));
    print_membership(ctx, &status)
}

/// `cluster remove`.
async fn remove(ctx: &mut Context, id: u64) -> Result<()> {
    let mut client = ctx.client()?;
    let view = leader_view(&mut client).await?;
    if member(&view, id).is_none() {
        return Err(not_a_member(id, &view).hint("nothing was removed"));
    }
    if view.id == id {
        progress(
            ctx,
            "hand-over",
            id,
            &format!("node {id} is the leader: it hands leadership over first"),
        );
    }
    let status = client
        .change_membership(&[MemberChange::Remove { id }])
        .await
        .map_err(membership_error)?;
    progress(
        ctx,
        "removed",
        id,
        &format!("removed node {id}; it stops by itself"),
    );
    print_membership(ctx, &status)
}

/// `cluster change`: several changes in one step.
async fn change(
    ctx: &mut Context,
    add_learner: Vec<MemberSpec>,
    add_voter: Vec<MemberSpec>,
    remove: Vec<u64>,
    force: bool,
) -> Result<()> {
    let mut seen = std::collections::BTreeSet::new();
    for id in add_learner
        .iter()
        .map(|s| s.id)
        .chain(add_voter.iter().map(|s| s.id))
        .chain(remove.iter().copied())
    {
        if !seen.insert(id) {
            return Err(
                Error::usage(format!("node {id} appears in more than one change"))
                    .hint("give each node one change per step"),
            );
        }
    }
    if seen.is_empty() {
        return Err(Error::usage("no changes given")
            .hint("give --add-learner, --add-voter or --remove (each repeatable)"));
    }
    let mut client = ctx.client()?;
    let view = leader_view(&mut client).await?;
    for spec in &add_voter {
        if spec.raft.is_empty() && member(&view, spec.id).is_none() {
            return Err(not_a_member(spec.id, &view).hint(format!(
                "give its endpoints: --add-voter {}=RAFT_URL,CLIENT_URL",
                spec.id
            )));
        }
    }
    for &id in &remove {
        if member(&view, id).is_none() {
            return Err(not_a_member(id, &view).hint("nothing was changed"));
        }
    }
    let mut changes = Vec::new();
    for s in add_learner {
        changes.push(MemberChange::AddLearner {
            id: s.id,
            raft: s.raft,
            client: s.client,
        });
    }
    for s in add_voter {
        changes.push(MemberChange::AddVoter {
            id: s.id,
            raft: s.raft,
            client: s.client,
        });
    }
    for &id in &remove {
        changes.push(MemberChange::Remove { id });
    }
    if remove.contains(&view.id) {
        progress(
            ctx,
            "hand-over",
            view.id,
            &format!(
                "node {} is the leader: it hands leadership over first",
                view.id
            ),
        );
    }
    let n = changes.len();
    let status = client
        .change_membership_with(&changes, force)
        .await
        .map_err(membership_error)?;
    let how = if n > 1 {
        "in one step, through joint consensus"
    } else {
        "in one step"
    };
    progress(
        ctx,
        "changed",
        0,
        &format!(
            "applied {n} membership change{} {how}",
            if n > 1 { "s" } else { "" }
        ),
    );
    if !remove.is_empty() {
        let gone: Vec<String> = remove.iter().map(u64::to_string).collect();
        progress(
            ctx,
            "removed",
            0,
            &format!(
                "removed node(s) {}: they stop by themselves",
                gone.join(", ")
            ),
        );
    }
    print_membership(ctx, &status)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn status(last_index: u64, members: &[(u64, Role, u64)]) -> proto::Status {
        proto::Status {
            id: 1,
            role: Role::Leader as i32,
            leader_id: 1,
            last_index,
            members: members
                .iter()
                .map(|&(id, role, matched)| proto::Member {
                    id,
                    role: role as i32,
                    matched,
                    raft_url: format!("tcp://127.0.0.1:{}", 7100 + id),
                    client_url: format!("tcp://127.0.0.1:{}", 7200 + id),
                })
                .collect(),
            ..Default::default()
        }
    }

    #[test]
    fn lag_is_the_leaders_last_index_minus_matched() {
        let s = status(
            120,
            &[
                (1, Role::Voter, 120),
                (2, Role::Voter, 100),
                (4, Role::Learner, 0),
            ],
        );
        assert_eq!(lag(&s, 1), Some(0));
        assert_eq!(lag(&s, 2), Some(20));
        assert_eq!(lag(&s, 4), None, "nothing replicated yet: unknown");
        assert_eq!(lag(&s, 9), None, "not a member");
        let j = membership_json(&s);
        assert_eq!(j["leader"], 1);
        assert_eq!(j["members"][1]["lag"], 20);
        assert!(j["members"][2]["lag"].is_null());
        assert_eq!(j["members"][2]["role"], "learner");
        assert_eq!(members_text(&s), "1 2 4(learner)");
        assert_eq!(member_list(&s), "1 (voter), 2 (voter), 4 (learner)");
        let follower = proto::Status {
            id: 2,
            role: Role::Follower as i32,
            ..s.clone()
        };
        assert_eq!(
            leader_of(&follower),
            1,
            "a follower names the leader it knows"
        );
        let mut joint = s.clone();
        joint.members[1].role = Role::OutgoingVoter as i32;
        assert_eq!(members_text(&joint), "1 2(outgoing voter) 4(learner)");
    }

    #[test]
    fn endpoints_and_member_specs() {
        assert_eq!(
            parse_endpoint(" tcp://127.0.0.1:7104 ").unwrap(),
            "tcp://127.0.0.1:7104"
        );
        for bad in [
            "127.0.0.1:7104",
            "tcp://127.0.0.1",
            "tcp://:1",
            "tcp://h:0",
            "tcp://*:7104",
        ] {
            let e = parse_endpoint(bad).unwrap_err();
            assert!(e.contains("tcp://127.0.0.1:7104"), "{bad}: {e}");
        }
        assert_eq!(
            parse_new_member("4=tcp://127.0.0.1:7104,tcp://127.0.0.1:7204").unwrap(),
            MemberSpec {
                id: 4,
                raft: "tcp://127.0.0.1:7104".into(),
                client: "tcp://127.0.0.1:7204".into()
            }
        );
        assert!(
            parse_new_member("4")
                .unwrap_err()
                .contains("needs its endpoints")
        );
        assert!(
            parse_new_member("4=tcp://127.0.0.1:7104")
                .unwrap_err()
                .contains("both endpoints")
        );
        assert!(
            parse_new_member("x=tcp://a:1,tcp://a:2")
                .unwrap_err()
                .contains("not a node id")
        );
        assert!(parse_voter("0").unwrap_err().contains("not a node id"));
        assert_eq!(parse_voter("5").unwrap().raft, "");
        assert!(
            parse_voter("5=tcp://a:1,b:2")
                .unwrap_err()
                .contains("tcp://")
        );
    }

    #[test]
    fn membership_errors_say_what_to_do() {
        let busy = membership_error(ClientError::ChangeInProgress(
            "another membership change is in progress; retry when it is done".into(),
        ));
        assert_eq!(busy.exit_code(), 1);
        assert!(busy.message.contains("retry"), "{busy}");
        assert!(busy.to_string().contains("cluster status"), "{busy}");
        let unknown = membership_error(ClientError::NotMember(
            "node 9 is not a member and the cluster does not know its endpoints".into(),
        ));
        assert_eq!(unknown.exit_code(), 1);
        assert!(unknown.to_string().contains("cluster add"), "{unknown}");
        let bad = membership_error(ClientError::InvalidEndpoint(
            "node 9 needs valid tcp://host:port raft and client endpoints".into(),
        ));
        assert_eq!(bad.exit_code(), 1);
        assert!(bad.message.contains("endpoints"), "{bad}");
        let late = membership_error(ClientError::ChangeTimedOut(
            "the membership change was not applied in time (leader change?)".into(),
        ));
        assert_eq!(late.exit_code(), 3);
        let handing = membership_error(ClientError::HandingOver(
            "leadership is being handed to node 2; retry".into(),
        ));
        assert_eq!(handing.exit_code(), 3);
        assert!(handing.message.contains("handed to node 2"), "{handing}");
        let joint = membership_error(ClientError::StillJoint("not left".into()));
        assert_eq!(joint.exit_code(), 3);
        assert!(joint.message.contains("joint configuration"), "{joint}");
        let only = membership_error(ClientError::OnlyVoter(
            "cannot remove the only voter".into(),
        ));
        assert_eq!(only.exit_code(), 1);
        assert!(only.to_string().contains("add another voter"), "{only}");
        for refusal in [
            ClientError::NotCaughtUp("learner 4 has not caught up".into()),
            ClientError::RemovedId("node id 3 was removed".into()),
        ] {
            let e = membership_error(refusal);
            assert_eq!(e.exit_code(), 1);
            assert!(
                e.message
                    .starts_with("the cluster refused the membership change: "),
                "{e}"
            );
        }
        let refused = membership_error(ClientError::Invalid(
            "raft refused the change: removed all voters".into(),
        ));
        assert_eq!(
            refused.message,
            "the cluster refused the membership change: raft refused the change: removed all voters"
        );
        // Anything else reads as before.
        let down = membership_error(ClientError::NoLeader {
            tried: vec!["tcp://127.0.0.1:1".into()],
            last: "connect failed".into(),
        });
        assert!(down.message.contains("no cluster node answered"), "{down}");
    }

    #[test]
    fn the_command_line_parses_membership_commands() {
        use crate::cli::{Cli, Command};
        use clap::Parser;
        let cli = Cli::try_parse_from([
            "microblog",
            "cluster",
            "add",
            "4",
            "tcp://127.0.0.1:7104",
            "tcp://127.0.0.1:7204",
        ])
        .unwrap();
        match cli.command {
            Command::Cluster(ClusterCommand::Add {
                id,
                catch_up,
                max_lag,
                ..
            }) => assert_eq!((id, catch_up, max_lag), (4, Duration::from_secs(60), 100)),
            other => panic!("{other:?}"),
        }
        let cli = Cli::try_parse_from([
            "microblog",
            "cluster",
            "change",
            "--add-voter",
            "4=tcp://127.0.0.1:7104,tcp://127.0.0.1:7204",
            "--add-voter",
            "5",
            "--remove",
            "3",
        ])
        .unwrap();
        match cli.command {
            Command::Cluster(ClusterCommand::Change {
                add_learner,
                add_voter,
                remove,
                ..
            }) => {
                assert!(add_learner.is_empty());
                assert_eq!(add_voter.len(), 2);
                assert_eq!(remove, vec![3]);
            }
            other => panic!("{other:?}"),
        }
        for bad in [
            vec!["microblog", "cluster", "change"],
            vec![
                "microblog",
                "cluster",
                "add",
                "4",
                "localhost:1",
                "tcp://a:2",
            ],
            vec!["microblog", "cluster", "add", "0", "tcp://a:1", "tcp://a:2"],
            vec!["microblog", "cluster", "promote", "x"],
            vec!["microblog", "cluster", "change", "--add-learner", "4"],
        ] {
            let e = Cli::try_parse_from(&bad).unwrap_err();
            assert_eq!(e.exit_code(), 2, "{bad:?}");
        }
    }
}
