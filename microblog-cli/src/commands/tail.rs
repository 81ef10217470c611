//! `tail`: new posts as they are written, until Ctrl-C.
//!
//! A loop of blocking `rd(template, after = the last id printed, wait)`. The `after` never moves
//! except past a post just printed, and ids increase in the cluster's log order, so whatever node
//! answers — before or after a leader change, on the first try or the fifth — the next post
//! printed is the oldest one not printed yet: none is missed, none repeated. The client resends a
//! failed `rd` elsewhere on its own; when even that gives up (the whole cluster down for longer
//! than `--timeout`), tail says so on stderr and keeps trying.

use std::time::Duration;

use raftnode::client::{Client, ClientError, ClientOptions};
use tuplespace::TupleId;

use super::Context;
use crate::blog::Blog;
use crate::error::Result;
use crate::model::{Post, PostFilter, check_topic, check_user};

/// How long one blocking `rd` waits on the server before asking again (short, so a dead node is
/// noticed soon: the client also waits [`ANSWER_TIMEOUT`] for the answer itself).
const POLL: Duration = Duration::from_secs(2);

/// How long to wait for a node's answer beyond the poll wait.
const ANSWER_TIMEOUT: Duration = Duration::from_secs(2);

/// `tail [--user U] [--topic T] [--last N | --after ID]`.
pub async fn run(
    ctx: &mut Context,
    author: Option<String>,
    topic: Option<String>,
    last: Option<usize>,
    after: Option<TupleId>,
) -> Result<()> {
    if let Some(a) = &author {
        check_user(a)?;
    }
    if let Some(t) = &topic {
        check_topic(t)?;
    }
    let filter = PostFilter {
        author,
        topic,
        reply_to: None,
    };
    let endpoints = ctx.endpoints()?;
    let options = ClientOptions {
        request_timeout: ANSWER_TIMEOUT,
        ..crate::connect::client_options(ctx.timeout, endpoints.len())
    };
    let mut blog = Blog::new(Client::with_options(endpoints, options));
    // Where to start. Until the cluster has answered once, unreachable is an error (exit 1);
    // after that, tail keeps trying.
    let mut answered = after.is_none();
    let mut after = match (after, last) {
        (Some(id), _) => id,
        (None, Some(n)) if n > 0 => {
            let mut recent = blog.read(&filter, n, None).await?;
            blog.verify(&mut recent).await?;
            recent.reverse();
            for post in &recent {
                print(ctx, post)?;
            }
            match recent.last() {
                Some(p) => p.id,
                None => blog.latest_id(&filter).await?,
            }
        }
        _ => blog.latest_id(&filter).await?,
    };
    eprintln!("microblog: tailing posts after #{after} (Ctrl-C stops)");
    let template = filter.template();
    let mut unreachable = false;
    let stop = tokio::signal::ctrl_c();
    tokio::pin!(stop);
    loop {
        let next = tokio::select! {
            _ = &mut stop => return Ok(()),
            next = blog.store.rd(&template, after, POLL) => next,
        };
        match next {
            Ok((id, tuple)) => {
                answered = true;
                if unreachable {
                    eprintln!("microblog: the cluster answers again");
                    unreachable = false;
                }
                if let Some(mut post) = Post::from_tuple(id, &tuple) {
                    // A failed check leaves it marked forged, never silently unmarked.
                    let _ = blog.verify(std::slice::from_mut(&mut post)).await;
                    print(ctx, &post)?;
                }
                after = id;
            }
            Err(ClientError::Timeout) => answered = true,
            Err(e @ ClientError::NoLeader { .. }) if !answered => return Err(e.into()),
            Err(e @ ClientError::NoLeader { .. }) => {
                if !unreachable {
                    let e = crate::error::Error::from(e);
                    eprintln!("microblog: {}; still trying (Ctrl-C stops)", e.message);
                    unreachable = true;
                }
                tokio::select! {
                    _ = &mut stop => return Ok(()),
                    () = tokio::time::sleep(Duration::from_millis(500)) => {}
                }
            }
            Err(e) => return Err(e.into()),
        }
    }
}

/// One post: a table-like line (`--json`: its object). Each line is flushed at once.
fn print(ctx: &mut Context, post: &Post) -> Result<()> {
    if ctx.out.json {
        ctx.out.json_line(&crate::output::post_json(post))?;
    } else {
        let row = crate::output::post_row(post);
        let topic = if row[3].is_empty() {
            String::new()
        } else {
            format!(" [{}]", row[3])
        };
        let re = if row[4].is_empty() {
            String::new()
        } else {
            format!(" re #{}", row[4])
        };
        ctx.out.line(&format!(
            "#{} {} {}{topic}{re}: {}",
            row[0],
            row[1],
            row[2],
            crate::output::clean(&post.text)
        ))?;
    }
    Ok(())
}
