//! Live updates: `GET /events?author=&topic=&reply_to=&after=ID` streams new matching posts as
//! Server-Sent Events, one event per post (`id:` the post id, `data:` the post's HTML).
//!
//! The same gapless loop as `microblog tail`: a blocking `rd(template, after = the last id sent)`,
//! `after` moving only past a post just sent. Ids increase in the cluster's log order, so
//! whichever node answers, before or after a leader change, the next event is the oldest post not
//! sent yet: none missed, none repeated. A browser that reconnects sends `Last-Event-ID` (the last
//! id it received), which wins over `after`, and resumes exactly there. Every stream has its own
//! client (a blocking `rd` holds its connection) and at most [`MAX_STREAMS`] run at once, at most
//! [`MAX_STREAMS_PER_ADDR`] from one address; beyond that the answer is 503 (or 429) and the
//! browser retries later.

use std::convert::Infallible;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use axum::extract::{ConnectInfo, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use futures_util::stream;
use raftnode::client::{Client, ClientOptions};
use serde::Deserialize;
use tuplespace::TupleId;

use super::{App, pages};
use crate::blog::Blog;
use crate::model::{Post, PostFilter, check_topic, check_user};

/// The most live streams at once.
pub const MAX_STREAMS: usize = 256;

/// The most live streams from one address at once (so one client cannot hold them all).
pub const MAX_STREAMS_PER_ADDR: usize = 32;

/// How long one blocking `rd` waits on the server before asking again.
const POLL: Duration = Duration::from_secs(2);

static STREAMS: AtomicUsize = AtomicUsize::new(0);

/// Counts a stream while it lives, in all and for its address.
struct Slot {
    app: Arc<App>,
    addr: IpAddr,
}

impl Drop for Slot {
    fn drop(&mut self) {
        STREAMS.fetch_sub(1, Ordering::AcqRel);
        let mut by_addr = self.app.streams_by_addr();
        if let Some(n) = by_addr.get_mut(&self.addr) {
            *n -= 1;
            if *n == 0 {
                by_addr.remove(&self.addr);
            }
        }
    }
}

#[derive(Deserialize)]
pub(super) struct Filter {
    author: Option<String>,
    topic: Option<String>,
    reply_to: Option<TupleId>,
    after: Option<TupleId>,
}

/// `GET /events`.
pub(super) async fn events(
    State(app): State<Arc<App>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    Query(q): Query<Filter>,
) -> Response {
    if let Some(a) = &q.author
        && let Err(e) = check_user(a)
    {
        return (StatusCode::BAD_REQUEST, e.message).into_response();
    }
    if let Some(t) = &q.topic
        && let Err(e) = check_topic(t)
    {
        return (StatusCode::BAD_REQUEST, e.message).into_response();
    }
    let resume = headers
        .get("last-event-id")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<TupleId>().ok());
    let Some(after) = resume.or(q.after) else {
        return (
            StatusCode::BAD_REQUEST,
            "after=ID or Last-Event-ID is needed",
        )
            .into_response();
    };
    let addr = app.client_addr(peer, &headers);
    {
        let mut by_addr = app.streams_by_addr();
        let mine = by_addr.entry(addr).or_insert(0);
        if *mine >= MAX_STREAMS_PER_ADDR {
            return (
                StatusCode::TOO_MANY_REQUESTS,
                "too many live streams from your address; close some",
            )
                .into_response();
        }
        *mine += 1;
    }
    // Counted from here on (the slot's drop uncounts it).
    STREAMS.fetch_add(1, Ordering::AcqRel);
    let slot = Slot {
        app: Arc::clone(&app),
        addr,
    };
    if STREAMS.load(Ordering::Acquire) > MAX_STREAMS {
        drop(slot);
        return (
            StatusCode::SERVICE_UNAVAILABLE,
            "too many live streams; retry later",
        )
            .into_response();
    }
    let filter = PostFilter {
        author: q.author,
        topic: q.topic,
        reply_to: q.reply_to,
    };
    let options = ClientOptions {
        request_timeout: Duration::from_secs(2),
        ..app.options.clone()
    };
    let blog = Blog::new(Client::with_options(app.endpoints.clone(), options));
    let state = (blog, filter, after, slot);
    let events = stream::unfold(state, |(mut blog, filter, mut after, slot)| async move {
        let template = filter.template();
        loop {
            match blog.store.rd(&template, after, POLL).await {
                Ok((id, tuple)) => {
                    after = id;
                    let Some(post) = Post::from_tuple(id, &tuple) else {
                        continue;
                    };
                    let mut one = [post];
                    if blog.verify(&mut one).await.is_err() {
                        one[0].verified = false;
                    }
                    let html = pages::post(&one[0]).into_string();
                    let event = Event::default().id(id.to_string()).event("post").data(html);
                    return Some((Ok::<_, Infallible>(event), (blog, filter, after, slot)));
                }
                // Nothing new within the poll (Timeout): ask again at once. The cluster
                // unreachable for now: ask again shortly (the keep-alive comments keep the
                // connection open meanwhile).
                Err(raftnode::client::ClientError::Timeout) => {}
                Err(_) => tokio::time::sleep(Duration::from_millis(200)).await,
            }
        }
    });
    Sse::new(events)
        .keep_alive(KeepAlive::new().interval(Duration::from_secs(5)))
        .into_response()
}
