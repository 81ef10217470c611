//! The commands: what each does with the cluster and what it prints. One module per group.
//!
//! - [`social`]: post, read, show, timeline, follow, unfollow, following, followers, users,
//!   topics, delete.
//! - [`identity`]: register, whoami, rotate-key, reset-key, policy; and where keys live.
//! - [`tail`]: the live stream.
//! - [`tuple`]: raw tuple operations in the text syntax.
//! - [`cluster`]: `cluster up`, `status`, and the membership changes `add`, `promote`,
//!   `remove`, `change`.
//! - `completions`: here, it is three lines.

pub mod bench;
pub mod cluster;
pub mod identity;
pub mod social;
pub mod tail;
pub mod tuple;
pub mod web;

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
    /// `--admin`: act as the cluster's admin.
    pub admin: bool,
    /// `--admin-key` or `MICROBLOG_ADMIN_KEY`.
    pub admin_key: Option<PathBuf>,
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

    /// A client for the cluster, signing as the admin with `--admin`, else as `--user` (or
    /// `MICROBLOG_USER`) when that user has a key, else unsigned (reads need no signature).
    pub fn client(&self) -> Result<Client> {
        let client = connect::client(self.endpoints()?, self.timeout);
        if self.admin {
            return Ok(client.with_identity(self.admin_identity()?));
        }
        match &self.user {
            Some(user) => match identity::load(user)? {
                Some(me) => Ok(client.with_identity(me)),
                None => Ok(client),
            },
            None => Ok(client),
        }
    }

    /// A client signing as `me` (`--admin` signs as the admin); `me`'s key pair is created if
    /// `me` has none yet (said on stderr).
    pub fn client_as(&self, me: &str) -> Result<Client> {
        let client = connect::client(self.endpoints()?, self.timeout);
        if self.admin {
            return Ok(client.with_identity(self.admin_identity()?));
        }
        Ok(client.with_identity(identity::load_or_create(me)?))
    }

    /// A client for raw writes: the admin with `--admin`, else `--user` (created and registered
    /// if new, said on stderr), else unsigned (refused unless the policy allows anonymous
    /// writes).
    pub async fn writer(&self) -> Result<Client> {
        if self.admin {
            return self.client();
        }
        let Some(me) = self.user.clone() else {
            return self.client();
        };
        let mut blog = self.blog_as(&me)?;
        if blog.ensure_registered(&me).await? == crate::blog::Registration::New {
            eprintln!("registered {} with your key", crate::output::clean(&me));
        }
        Ok(blog.store)
    }

    /// The microblog on the cluster (for reads).
    pub fn blog(&self) -> Result<Blog<Client>> {
        Ok(Blog::new(self.client()?))
    }

    /// The microblog on the cluster, writing as `me`.
    pub fn blog_as(&self, me: &str) -> Result<Blog<Client>> {
        Ok(Blog::new(self.client_as(me)?))
    }

    /// The admin's identity: `--admin-key`/`MICROBLOG_ADMIN_KEY`, else `admin.key` beside the
    /// cluster's key file.
    pub fn admin_identity(&self) -> Result<raftnode::identity::Identity> {
        identity::admin(self.admin_key.as_deref(), self.cluster.as_deref())
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
        admin: cli.admin,
        admin_key: cli.admin_key,
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
        Command::Register { public_key, .. } => {
            identity::register(&mut ctx, identity, public_key.as_deref()).await
        }
        Command::Whoami { .. } => identity::whoami(&mut ctx, identity).await,
        Command::RotateKey { .. } => identity::rotate(&mut ctx, identity).await,
        Command::ResetKey { name, public_key } => {
            identity::reset(&mut ctx, &name, &public_key).await
        }
        Command::Policy(cmd) => identity::policy(&mut ctx, cmd).await,
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
        Command::Serve {
            listen,
            trust_proxy,
        } => web::serve(&mut ctx, listen, trust_proxy).await,
        Command::Up { listen } => web::up(&mut ctx, listen).await,
        Command::Completions { shell } => {
            let mut stdout = std::io::stdout();
            clap_complete::generate(shell, &mut Cli::command(), "microblog", &mut stdout);
            Ok(())
        }
    }
}
