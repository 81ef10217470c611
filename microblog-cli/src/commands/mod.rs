//! The commands: what each does with the cluster and what it prints. One module per group.
//!
//! - [`social`]: post, read, show, timeline, follow, unfollow, following, followers, users,
//!   topics, delete.
//! - [`tail`]: the live stream.
//! - [`tuple`]: raw tuple operations in the text syntax.
//! - [`cluster`]: `cluster up`, `status`, and the membership changes `add`, `promote`,
//!   `remove`, `change`.
//! - `completions`: here, it is three lines.

pub mod bench;
pub mod cluster;
pub mod social;
pub mod tail;
pub mod tuple;

use std::path::PathBuf;
use std::time::Duration;

use clap::CommandFactory;
use raftnode::client::Client;

use crate::blog::Blog;
use crate::cli::{Cli, Command};
use crate::connect;
use crate::error::{Error, Result};
use crate::output::Output;

/// What every command may need from the global options.
pub struct Context {
    /// Where to print, and how.
    pub out: Output,
    /// `--timeout`.
    pub timeout: Duration,
    /// `--endpoints` as given (empty: not given).
    pub endpoints: Vec<String>,
    /// `--cluster` as given.
    pub cluster: Option<PathBuf>,
    /// `--user` before the command, or `MICROBLOG_USER`.
    pub user: Option<String>,
}

impl Context {
    /// The cluster's client endpoints (see [`connect::endpoints`]).
    pub fn endpoints(&self) -> Result<Vec<String>> {
        connect::endpoints(
            &self.endpoints,
            self.cluster.as_deref(),
            std::env::var(connect::ENDPOINTS_ENV).ok(),
        )
    }

    /// A client for the cluster.
    pub fn client(&self) -> Result<Client> {
        Ok(connect::client(self.endpoints()?, self.timeout))
    }

    /// The microblog on the cluster.
    pub fn blog(&self) -> Result<Blog<Client>> {
        Ok(Blog::new(self.client()?))
    }

    /// Who is asking: `--user` after the command, else before it, else `MICROBLOG_USER`.
    pub fn me(&self, after_command: Option<&str>) -> Result<String> {
        after_command
            .map(str::to_string)
            .or_else(|| self.user.clone())
            .ok_or_else(|| {
                Error::usage("who are you? this command needs a user")
                    .hint("pass --user NAME or set MICROBLOG_USER")
            })
    }
}

/// Runs the parsed command line.
pub async fn run(cli: Cli) -> Result<()> {
    let mut ctx = Context {
        out: Output::stdout(cli.json),
        timeout: cli.timeout,
        endpoints: cli.endpoints,
        cluster: cli.cluster,
        user: cli.user,
    };
    let identity = cli.command.identity().map(str::to_string);
    let identity = identity.as_deref();
    match cli.command {
        Command::Post {
            text,
            topic,
            reply_to,
            ..
        } => social::post(&mut ctx, identity, &text, topic.as_deref(), reply_to).await,
        Command::Read {
            user,
            topic,
            limit,
            before,
        } => social::read(&mut ctx, user, topic, limit as usize, before).await,
        Command::Show { id } => social::show(&mut ctx, id).await,
        Command::Timeline { limit, before, .. } => {
            social::timeline(&mut ctx, identity, limit as usize, before).await
        }
        Command::Follow { target, .. } => social::follow(&mut ctx, identity, &target).await,
        Command::Unfollow { target, .. } => social::unfollow(&mut ctx, identity, &target).await,
        Command::Following { target, .. } => {
            social::follows(&mut ctx, identity, target, social::Direction::Following).await
        }
        Command::Followers { target, .. } => {
            social::follows(&mut ctx, identity, target, social::Direction::Followers).await
        }
        Command::Users => social::users(&mut ctx).await,
        Command::Topics => social::topics(&mut ctx).await,
        Command::Delete { id, .. } => social::delete(&mut ctx, identity, id).await,
        Command::Tail {
            user,
            topic,
            last,
            after,
        } => tail::run(&mut ctx, user, topic, last.map(|n| n as usize), after).await,
        Command::Tuple(cmd) => tuple::run(&mut ctx, cmd).await,
        Command::Cluster(cmd) => cluster::run(&mut ctx, cmd).await,
        Command::Bench(args) => bench::run(&mut ctx, args).await,
        Command::Completions { shell } => {
            let mut stdout = std::io::stdout();
            clap_complete::generate(shell, &mut Cli::command(), "microblog", &mut stdout);
            Ok(())
        }
    }
}
