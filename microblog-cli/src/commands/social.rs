//! post, read, show, timeline, follow, unfollow, following, followers, users, topics, delete.

use std::io::Read as _;
use std::time::{SystemTime, UNIX_EPOCH};

use serde_json::json;
use tuplespace::TupleId;

use super::Context;
use crate::blog::{FollowOutcome, NameCount, Registration};
use crate::error::{Error, Result};
use crate::model::PostFilter;
use crate::output::{clean, post_json};

/// `post TEXT [--topic T] [--reply-to ID]`: prints the new post's id (`--json`: the post).
pub async fn post(
    ctx: &mut Context,
    identity: Option<&str>,
    text: &str,
    topic: Option<&str>,
    reply_to: Option<TupleId>,
) -> Result<()> {
    let me = ctx.me(identity)?;
    let text = if text == "-" {
        read_stdin()?
    } else {
        text.to_string()
    };
    let now_ms = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64);
    // Checked before anything is created or sent.
    crate::model::check_user(&me)?;
    crate::model::check_text(&text)?;
    if let Some(t) = topic {
        crate::model::check_topic(t)?;
    }
    let mut blog = ctx.blog_as(&me)?;
    announce_registration(&mut blog, &me).await?;
    let post = blog.post(&me, &text, topic, reply_to, now_ms).await?;
    if ctx.out.json {
        ctx.out.json_line(&post_json(&post))?;
    } else {
        ctx.out.line(&post.id.to_string())?;
    }
    Ok(())
}

/// The text of `post -`: stdin, without its final newline.
fn read_stdin() -> Result<String> {
    let mut bytes = Vec::new();
    std::io::stdin().read_to_end(&mut bytes)?;
    let mut text = String::from_utf8(bytes)
        .map_err(|_| Error::usage("the text on stdin is not valid UTF-8"))?;
    if text.ends_with('\n') {
        text.pop();
        if text.ends_with('\r') {
            text.pop();
        }
    }
    Ok(text)
}

/// `read [--user U] [--topic T] [--limit N] [--before ID]`.
pub async fn read(
    ctx: &mut Context,
    author: Option<String>,
    topic: Option<String>,
    limit: usize,
    before: Option<TupleId>,
) -> Result<()> {
    let filter = PostFilter {
        author,
        topic,
        reply_to: None,
    };
    let mut blog = ctx.blog()?;
    let mut posts = blog.read(&filter, limit, before).await?;
    blog.verify(&mut posts).await?;
    ctx.out.posts(&posts)?;
    if !ctx.out.json
        && posts.len() == limit
        && let Some(last) = posts.last()
    {
        eprintln!("(more: add --before {})", last.id);
    }
    Ok(())
}

/// `show ID`: the post in full, then its replies (`--json`: the post's line first).
pub async fn show(ctx: &mut Context, id: TupleId) -> Result<()> {
    let mut blog = ctx.blog()?;
    let (mut post, mut replies) = blog.show(id).await?;
    blog.verify(std::slice::from_mut(&mut post)).await?;
    blog.verify(&mut replies).await?;
    ctx.out.post_full(&post, "")?;
    if !ctx.out.json {
        ctx.out.line(&match replies.len() {
            0 => "no replies".to_string(),
            1 => "1 reply:".to_string(),
            n => format!("{n} replies:"),
        })?;
    }
    for reply in &replies {
        ctx.out.post_full(reply, "  ")?;
    }
    Ok(())
}

/// `timeline [--limit N] [--before ID]`.
pub async fn timeline(
    ctx: &mut Context,
    identity: Option<&str>,
    limit: usize,
    before: Option<TupleId>,
) -> Result<()> {
    let me = ctx.me(identity)?;
    let mut blog = ctx.blog()?;
    let mut posts = blog.timeline(&me, limit, before).await?;
    blog.verify(&mut posts).await?;
    ctx.out.posts(&posts)?;
    Ok(())
}

/// `follow USER`.
pub async fn follow(ctx: &mut Context, identity: Option<&str>, them: &str) -> Result<()> {
    let me = ctx.me(identity)?;
    crate::model::check_user(&me)?;
    crate::model::check_user(them)?;
    let mut blog = ctx.blog_as(&me)?;
    announce_registration(&mut blog, &me).await?;
    let outcome = blog.follow(&me, them).await?;
    let (status, sentence) = match outcome {
        FollowOutcome::Followed => ("followed", "now follows"),
        FollowOutcome::AlreadyFollowing => ("already following", "already follows"),
    };
    if ctx.out.json {
        ctx.out
            .json_line(&json!({"follower": me, "followee": them, "status": status}))?;
    } else {
        ctx.out
            .line(&format!("{} {sentence} {}", clean(&me), clean(them)))?;
    }
    Ok(())
}

/// `unfollow USER`.
pub async fn unfollow(ctx: &mut Context, identity: Option<&str>, them: &str) -> Result<()> {
    let me = ctx.me(identity)?;
    ctx.blog_as(&me)?.unfollow(&me, them).await?;
    if ctx.out.json {
        ctx.out
            .json_line(&json!({"follower": me, "followee": them, "status": "unfollowed"}))?;
    } else {
        ctx.out
            .line(&format!("{} no longer follows {}", clean(&me), clean(them)))?;
    }
    Ok(())
}

/// Which side of the follows `follows` lists.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Direction {
    /// Whom the user follows.
    Following,
    /// Who follows the user.
    Followers,
}

/// `following [USER]` and `followers [USER]`: one name per row (`--json`: one
/// `{"follower", "followee"}` per line).
pub async fn follows(
    ctx: &mut Context,
    identity: Option<&str>,
    target: Option<String>,
    direction: Direction,
) -> Result<()> {
    let user = match target {
        Some(u) => u,
        None => ctx.me(identity)?,
    };
    let mut blog = ctx.blog()?;
    let names = match direction {
        Direction::Following => blog.following(&user).await?,
        Direction::Followers => blog.followers(&user).await?,
    };
    if ctx.out.json {
        for name in &names {
            let (follower, followee) = match direction {
                Direction::Following => (&user, name),
                Direction::Followers => (name, &user),
            };
            ctx.out
                .json_line(&json!({"follower": follower, "followee": followee}))?;
        }
    } else if names.is_empty() {
        ctx.out.line(&match direction {
            Direction::Following => format!("{} follows nobody", clean(&user)),
            Direction::Followers => format!("nobody follows {}", clean(&user)),
        })?;
    } else {
        let rows: Vec<Vec<String>> = names.iter().map(|n| vec![clean(n)]).collect();
        ctx.out.table(&["USER"], &rows)?;
    }
    Ok(())
}

/// A first post or follow registers the user (first come, first served) and says so.
async fn announce_registration(
    blog: &mut crate::blog::Blog<raftnode::client::Client>,
    me: &str,
) -> Result<()> {
    if blog.ensure_registered(me).await? == Registration::New {
        let fingerprint = blog
            .store
            .identity()
            .map(raftnode::identity::Identity::fingerprint)
            .unwrap_or_default();
        eprintln!("registered {} with your key {fingerprint}", clean(me));
    }
    Ok(())
}

/// `users`: every registered user with their key's fingerprint and number of posts.
pub async fn users(ctx: &mut Context) -> Result<()> {
    let users = ctx.blog()?.users().await?;
    if ctx.out.json {
        for u in &users {
            ctx.out.json_line(
                &json!({ "user": u.name, "fingerprint": u.fingerprint, "posts": u.posts }),
            )?;
        }
    } else if users.is_empty() {
        ctx.out.line("no users yet")?;
    } else {
        let rows: Vec<Vec<String>> = users
            .iter()
            .map(|u| vec![clean(&u.name), u.fingerprint.clone(), u.posts.to_string()])
            .collect();
        ctx.out.table(&["USER", "KEY", "POSTS"], &rows)?;
    }
    Ok(())
}

/// `topics`: every topic with its number of posts, most first.
pub async fn topics(ctx: &mut Context) -> Result<()> {
    let topics = ctx.blog()?.topics().await?;
    counts(ctx, "topic", &topics, "no topics yet")
}

fn counts(ctx: &mut Context, what: &str, list: &[NameCount], empty: &str) -> Result<()> {
    if ctx.out.json {
        for item in list {
            ctx.out
                .json_line(&json!({ what: item.name, "posts": item.posts }))?;
        }
    } else if list.is_empty() {
        ctx.out.line(empty)?;
    } else {
        let rows: Vec<Vec<String>> = list
            .iter()
            .map(|i| vec![clean(&i.name), i.posts.to_string()])
            .collect();
        ctx.out.table(&[&what.to_uppercase(), "POSTS"], &rows)?;
    }
    Ok(())
}

/// `delete ID`: only your own post.
pub async fn delete(ctx: &mut Context, identity: Option<&str>, id: TupleId) -> Result<()> {
    let me = ctx.me(identity)?;
    let post = ctx.blog_as(&me)?.delete(&me, id).await?;
    if ctx.out.json {
        ctx.out
            .json_line(&json!({"deleted": post.id, "author": post.author}))?;
    } else {
        ctx.out.line(&format!("deleted post #{}", post.id))?;
    }
    Ok(())
}
