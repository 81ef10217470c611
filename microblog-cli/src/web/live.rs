//! Live updates: `GET /events?author=&topic=&reply_to=&after=ID` streams new matching posts as
//! Server-Sent Events, one event per post (`id:` the post id, `data:` the post's HTML).
//!
//! The same gapless loop as `microblog tail`: a blocking `rd(template, after = the last id sent)`,
//! `after` moving only past a post just sent. Ids increase in the cluster's log order, so
//! whichever node answers, before or after a leader change, the next event is the oldest post not
//! sent yet: none missed, none repeated. A browser that reconnects sends `Last-Event-ID` (the last
//! id it received), which wins over `after`, and resumes exactly there. Every stream has its own
//! client (a blocking `rd` holds its connection) and at most [`MAX_STREAMS`] run at once; beyond
//! that the answer is 503 and the browser retries later.

use std::convert::Infallible;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use axum::extract::{Query, State};
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

/// How long one blocking `rd` waits on the server before asking again.
const POLL: Duration = Duration::from_secs(2);

static STREAMS: AtomicUsize = AtomicUsize::new(0);

/// Counts a stream while it lives.
struct Slot;

impl Drop for Slot {
    fn drop(&mut self) {
        STREAMS.fetch_sub(1, Ordering::AcqRel);
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
    if STREAMS.fetch_add(1, Ordering::AcqRel) >= MAX_STREAMS {
        STREAMS.fetch_sub(1, Ordering::AcqRel);
        return (
            StatusCode::SERVICE_UNAVAILABLE,
            "too many live streams; retry later",
        )
            .into_response();
    }
    let slot = Slot;
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
        .keep_alive(KeepAlive::new().interval(Duration::from_secs(15)))
        .into_response()
}
