//! `microblog serve`: the microblog on the web.
//!
//! Server-rendered pages (maud: compile-time checked templates, every piece of user text
//! escaped), readable without JavaScript; a small embedded ES module (`assets/app.js`, no build
//! step) makes and keeps the user's key in the browser, signs writes there ([`relay`]) and shows
//! new posts live ([`live`]: Server-Sent Events from the same gapless loop as `microblog tail`).
//!
//! Every response carries a Content-Security-Policy that allows only this server's own script
//! and style (no inline script, no other origin, no framing); request bodies are limited to
//! [`MAX_BODY`]; the only cookie is the signed-in user's *name* (not a secret: writes are
//! authorized by signatures made in the browser).

pub mod addr;
pub mod live;
pub mod pages;
pub mod relay;

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use axum::extract::{ConnectInfo, DefaultBodyLimit, Path, Query as UrlQuery, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use maud::Markup;
use raftnode::client::{Client, ClientError, ClientOptions};
use raftnode::proto::{self, request::Op};
use serde::Deserialize;
use tokio::sync::Mutex;
use tuplespace::{Template, TupleId, codec};

use crate::blog::Blog;
use crate::error::{Error, Kind};
use crate::model::{
    Post, PostFilter, TOPIC, check_text, check_topic, check_user, follow_tuple, name_tuple,
    post_signing_bytes,
};
use pages::Me;

/// The largest request body accepted.
pub const MAX_BODY: usize = 64 * 1024;

/// Posts per page.
const PAGE: usize = 30;

/// The most replies a post's page shows (oldest first).
const REPLIES: usize = 200;

/// The most users or topics their pages list (each costs a count request).
const LISTED: usize = 200;

/// Clients the server keeps for reads (each one request at a time).
const POOL: usize = 32;

/// The Content-Security-Policy of every response.
pub const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; \
                       img-src 'self' data:; connect-src 'self'; form-action 'self'; \
                       base-uri 'none'; frame-ancestors 'none'";

/// What the handlers share.
pub struct App {
    pool: Vec<Mutex<Blog<Client>>>,
    next: AtomicUsize,
    /// The client that relays browser-signed writes.
    writer: Mutex<Client>,
    relay: std::sync::Mutex<relay::Relay>,
    /// Live streams open per client address.
    streams: std::sync::Mutex<std::collections::HashMap<std::net::IpAddr, usize>>,
    endpoints: Vec<String>,
    options: ClientOptions,
    /// Proxies whose `X-Forwarded-For` names the client (`--trust-proxy`).
    trusted_proxies: Vec<std::net::IpAddr>,
}

impl App {
    /// An app for the cluster at `endpoints`.
    pub fn new(endpoints: Vec<String>, options: ClientOptions) -> Arc<App> {
        App::behind(endpoints, options, Vec::new())
    }

    /// An app behind `trusted_proxies`, whose `X-Forwarded-For` says who the client is (for the
    /// per-address limits; see [`addr`]).
    pub fn behind(
        endpoints: Vec<String>,
        options: ClientOptions,
        trusted_proxies: Vec<std::net::IpAddr>,
    ) -> Arc<App> {
        let pool = (0..POOL)
            .map(|_| {
                Mutex::new(Blog::new(Client::with_options(
                    endpoints.clone(),
                    options.clone(),
                )))
            })
            .collect();
        Arc::new(App {
            pool,
            next: AtomicUsize::new(0),
            writer: Mutex::new(Client::with_options(endpoints.clone(), options.clone())),
            relay: std::sync::Mutex::default(),
            streams: std::sync::Mutex::default(),
            endpoints,
            options,
            trusted_proxies,
        })
    }

    /// The address `peer`'s request counts against.
    fn client_addr(&self, peer: SocketAddr, headers: &HeaderMap) -> std::net::IpAddr {
        addr::client(peer, headers, &self.trusted_proxies)
    }

    /// A reading client: a free one if any, else the next in turn.
    async fn blog(&self) -> tokio::sync::MutexGuard<'_, Blog<Client>> {
        for b in &self.pool {
            if let Ok(guard) = b.try_lock() {
                return guard;
            }
        }
        let i = self.next.fetch_add(1, Ordering::Relaxed) % self.pool.len();
        self.pool[i].lock().await
    }

    fn relay(&self) -> std::sync::MutexGuard<'_, relay::Relay> {
        self.relay.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn streams_by_addr(
        &self,
    ) -> std::sync::MutexGuard<'_, std::collections::HashMap<std::net::IpAddr, usize>> {
        self.streams.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// The routes.
pub fn router(app: Arc<App>) -> Router {
    Router::new()
        .route("/", get(everyone))
        .route("/home", get(home))
        .route("/t/{topic}", get(topic))
        .route("/u/{name}", get(user))
        .route("/p/{id}", get(one_post))
        .route("/users", get(users))
        .route("/topics", get(topics))
        .route("/compose", get(compose).post(compose_without_js))
        .route("/account", get(account))
        .route("/events", get(live::events))
        .route("/static/app.js", get(script))
        .route("/static/style.css", get(style))
        .route("/api/cluster", get(cluster))
        .route("/api/user/{name}", get(api_user))
        .route("/api/prepare", post(prepare))
        .route("/api/submit", post(submit))
        .fallback(not_found)
        .layer(DefaultBodyLimit::max(MAX_BODY))
        .layer(axum::middleware::map_response(secure))
        .with_state(app)
}

/// Serves the app on `listen` until Ctrl-C.
pub async fn serve(
    endpoints: Vec<String>,
    options: ClientOptions,
    listen: SocketAddr,
    trusted_proxies: Vec<std::net::IpAddr>,
    ready: impl FnOnce(SocketAddr),
) -> std::io::Result<()> {
    let listener = tokio::net::TcpListener::bind(listen).await?;
    ready(listener.local_addr()?);
    run(
        listener,
        App::behind(endpoints, options, trusted_proxies),
        async {
            let _ = tokio::signal::ctrl_c().await;
        },
    )
    .await
}

/// Serves `app` on `listener` until `stop` resolves.
pub async fn run(
    listener: tokio::net::TcpListener,
    app: Arc<App>,
    stop: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let service = router(app).into_make_service_with_connect_info::<SocketAddr>();
    axum::serve(listener, service)
        .with_graceful_shutdown(stop)
        .await
}

async fn secure(mut resp: Response) -> Response {
    let h = resp.headers_mut();
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(CSP),
    );
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    h.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    resp
}

/// A page or an error page.
type Page = Result<Markup, Failure>;

/// An error shown as a page (HTML) with a status.
pub struct Failure(StatusCode, String);

impl From<Error> for Failure {
    fn from(e: Error) -> Failure {
        let status = match e.kind {
            Kind::Usage => StatusCode::BAD_REQUEST,
            Kind::NotFound => StatusCode::NOT_FOUND,
            Kind::NotAllowed => StatusCode::FORBIDDEN,
            Kind::TimedOut => StatusCode::GATEWAY_TIMEOUT,
            Kind::Failed => StatusCode::BAD_GATEWAY,
        };
        Failure(status, e.message)
    }
}

impl From<ClientError> for Failure {
    fn from(e: ClientError) -> Failure {
        Failure::from(Error::from(e))
    }
}

impl IntoResponse for Failure {
    fn into_response(self) -> Response {
        let page = pages::layout("error", &Me(None), None, pages::error(&self.1));
        (self.0, page).into_response()
    }
}

/// The signed-in user's name, from the `user` cookie (a name, not a secret).
fn me(headers: &HeaderMap) -> Option<String> {
    let cookies = headers.get(header::COOKIE)?.to_str().ok()?;
    cookies.split(';').find_map(|c| {
        let value = c.trim().strip_prefix("user=")?;
        let name = percent_decode(value)?;
        check_user(&name).ok().map(|()| name)
    })
}

fn percent_decode(s: &str) -> Option<String> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = s.get(i + 1..i + 3)?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

#[derive(Deserialize)]
struct Paging {
    before: Option<TupleId>,
}

fn older(path: &str, list: &[Post]) -> Option<String> {
    (list.len() >= PAGE).then(|| format!("{path}?before={}", list[list.len() - 1].id))
}

/// A page of posts matching `filter`, verified, and, for the newest page, the URL of its live
/// stream (new posts after the newest shown).
async fn listing(
    app: &App,
    filter: &PostFilter,
    before: Option<TupleId>,
) -> Result<(Vec<Post>, Option<String>), Failure> {
    let mut blog = app.blog().await;
    let mut list = blog.read(filter, PAGE, before).await?;
    blog.verify(&mut list).await?;
    let live = before
        .is_none()
        .then(|| live_of(filter, list.first().map_or(0, |x| x.id)));
    Ok((list, live))
}

fn live_of(filter: &PostFilter, after: TupleId) -> String {
    let mut q = format!("/events?after={after}");
    if let Some(a) = &filter.author {
        q.push_str(&format!("&author={}", pages::urlencode(a)));
    }
    if let Some(t) = &filter.topic {
        q.push_str(&format!("&topic={}", pages::urlencode(t)));
    }
    if let Some(r) = filter.reply_to {
        q.push_str(&format!("&reply_to={r}"));
    }
    q
}

async fn everyone(
    State(app): State<Arc<App>>,
    headers: HeaderMap,
    UrlQuery(p): UrlQuery<Paging>,
) -> Page {
    let filter = PostFilter::default();
    let (list, live) = listing(&app, &filter, p.before).await?;
    let me = me(&headers);
    Ok(pages::layout(
        "everyone",
        &Me(me.as_deref()),
        live.as_deref(),
        pages::posts(&list, older("/", &list)),
    ))
}

async fn home(
    State(app): State<Arc<App>>,
    headers: HeaderMap,
    UrlQuery(p): UrlQuery<Paging>,
) -> Page {
    let Some(me) = me(&headers) else {
        return Ok(pages::layout(
            "home",
            &Me(None),
            None,
            pages::text("Sign in (create or import your key) to see your timeline."),
        ));
    };
    let list = {
        let mut blog = app.blog().await;
        let mut list = blog.timeline(&me, PAGE, p.before).await?;
        blog.verify(&mut list).await?;
        list
    };
    Ok(pages::layout(
        &format!("{me}'s timeline"),
        &Me(Some(&me)),
        None,
        pages::posts(&list, older("/home", &list)),
    ))
}

async fn topic(
    State(app): State<Arc<App>>,
    headers: HeaderMap,
    Path(topic): Path<String>,
    UrlQuery(p): UrlQuery<Paging>,
) -> Page {
    check_topic(&topic)?;
    let filter = PostFilter {
        topic: Some(topic.clone()),
        ..PostFilter::default()
    };
    let (list, live) = listing(&app, &filter, p.before).await?;
    let me = me(&headers);
    let body = maud::html! {
        (pages::compose(None, Some(&topic)))
        (pages::posts(&list, older(&format!("/t/{}", pages::urlencode(&topic)), &list)))
    };
    Ok(pages::layout(
        &format!("#{topic}"),
        &Me(me.as_deref()),
        live.as_deref(),
        body,
    ))
}

async fn user(
    State(app): State<Arc<App>>,
    headers: HeaderMap,
    Path(name): Path<String>,
    UrlQuery(p): UrlQuery<Paging>,
) -> Page {
    check_user(&name)?;
    let filter = PostFilter {
        author: Some(name.clone()),
        ..PostFilter::default()
    };
    let me = me(&headers);
    let (following, followers, fingerprint) = {
        let mut blog = app.blog().await;
        let following = blog.following(&name).await?.len();
        let followers = blog.followers(&name).await?;
        let key = blog.key_of(&name).await?;
        (
            following,
            followers,
            key.map(|k| raftnode::identity::fingerprint(&k)),
        )
    };
    let i_follow = me.as_ref().is_some_and(|m| followers.contains(m));
    let (list, live) = listing(&app, &filter, p.before).await?;
    let body = maud::html! {
        (pages::user_head(&name, following, followers.len(), fingerprint.as_deref(), i_follow))
        (pages::posts(&list, older(&format!("/u/{}", pages::urlencode(&name)), &list)))
    };
    Ok(pages::layout(
        &name,
        &Me(me.as_deref()),
        live.as_deref(),
        body,
    ))
}

async fn one_post(
    State(app): State<Arc<App>>,
    headers: HeaderMap,
    Path(id): Path<TupleId>,
) -> Page {
    let (post, replies) = {
        let mut blog = app.blog().await;
        let (post, replies) = blog.show_first(id, REPLIES).await?;
        let mut all = vec![post];
        all.extend(replies);
        blog.verify(&mut all).await?;
        let post = all.remove(0);
        (post, all)
    };
    let me = me(&headers);
    let filter = PostFilter {
        reply_to: Some(id),
        ..PostFilter::default()
    };
    let live = live_of(&filter, replies.last().map_or(id, |r| r.id));
    let body = maud::html! {
        (pages::post(&post))
        h2 { "Replies" }
        section #posts.replies data-order="oldest-first" {
            @for r in &replies { (pages::post(r)) }
        }
        (pages::compose(Some(id), post.topic.as_deref()))
    };
    Ok(pages::layout(
        &format!("post #{id}"),
        &Me(me.as_deref()),
        Some(&live),
        body,
    ))
}

async fn users(State(app): State<Arc<App>>, headers: HeaderMap) -> Page {
    let list = app.blog().await.users_first(LISTED).await?;
    let me = me(&headers);
    Ok(pages::layout(
        "users",
        &Me(me.as_deref()),
        None,
        pages::users(&list),
    ))
}

async fn topics(State(app): State<Arc<App>>, headers: HeaderMap) -> Page {
    let list = app.blog().await.topics_first(LISTED).await?;
    let me = me(&headers);
    Ok(pages::layout(
        "topics",
        &Me(me.as_deref()),
        None,
        pages::topics(&list),
    ))
}

async fn compose(headers: HeaderMap) -> Markup {
    let me = me(&headers);
    pages::layout(
        "compose",
        &Me(me.as_deref()),
        None,
        pages::compose(None, None),
    )
}

async fn compose_without_js() -> Failure {
    Failure(
        StatusCode::BAD_REQUEST,
        "Posting signs your post with your key in this browser, which needs JavaScript.".into(),
    )
}

async fn account(headers: HeaderMap) -> Markup {
    let me = me(&headers);
    pages::layout("account", &Me(me.as_deref()), None, pages::account())
}

async fn not_found(headers: HeaderMap) -> Failure {
    let _ = me(&headers);
    Failure(StatusCode::NOT_FOUND, "No such page.".into())
}

async fn script() -> impl IntoResponse {
    (
        [(header::CONTENT_TYPE, "text/javascript; charset=utf-8")],
        pages::SCRIPT,
    )
}

async fn style() -> impl IntoResponse {
    (
        [(header::CONTENT_TYPE, "text/css; charset=utf-8")],
        pages::STYLE,
    )
}

/// A JSON error for the API.
fn api_error(status: StatusCode, message: impl Into<String>) -> Response {
    (status, Json(serde_json::json!({ "error": message.into() }))).into_response()
}

fn api_failure(e: Error) -> Response {
    let Failure(status, message) = Failure::from(e);
    api_error(status, message)
}

async fn cluster(State(app): State<Arc<App>>) -> Response {
    let mut writer = app.writer.lock().await;
    match writer.cluster_id().await {
        Ok(id) => Json(serde_json::json!({ "cluster_id": format!("{id:016x}") })).into_response(),
        Err(e) => api_failure(e.into()),
    }
}

/// A user's registered key (hex), or 404.
async fn api_user(State(app): State<Arc<App>>, Path(name): Path<String>) -> Response {
    if let Err(e) = check_user(&name) {
        return api_failure(e);
    }
    match app.blog().await.key_of(&name).await {
        Ok(Some(key)) => Json(serde_json::json!({
            "user": name,
            "public_key": hex::encode(&key),
            "fingerprint": raftnode::identity::fingerprint(&key),
        }))
        .into_response(),
        Ok(None) => api_error(StatusCode::NOT_FOUND, format!("no user {name:?}")),
        Err(e) => api_failure(e),
    }
}

/// What the browser asks to do.
#[derive(Deserialize)]
#[serde(tag = "action", rename_all = "snake_case")]
enum Action {
    Register,
    Post {
        text: String,
        topic: Option<String>,
        reply_to: Option<TupleId>,
        time_ms: i64,
        /// The post's own signature (hex), over its signing bytes.
        signature: String,
    },
    Follow {
        them: String,
    },
    Unfollow {
        them: String,
    },
    Delete {
        id: TupleId,
    },
}

#[derive(Deserialize)]
struct PrepareBody {
    user: String,
    /// The browser's public key (hex, 32 bytes).
    public_key: String,
    /// The browser's secret session token (hex, 16 to 64 bytes; random, kept beside the key):
    /// the server's session for this user and this browser is keyed by it (see [`relay`]).
    session_token: String,
    #[serde(flatten)]
    action: Action,
}

fn out_op(tuple: &tuplespace::Tuple) -> Op {
    Op::Out(proto::Out {
        tuple: codec::tuple_to_bytes(tuple),
        ..Default::default()
    })
}

/// The operations an action takes, checked as the CLI checks them.
async fn ops_of(app: &App, user: &str, key: &[u8], action: Action) -> Result<Vec<Op>, Error> {
    match action {
        Action::Register => Ok(vec![Op::Register(proto::Register {
            name: user.to_string(),
            public_key: key.to_vec(),
        })]),
        Action::Post {
            text,
            topic,
            reply_to,
            time_ms,
            signature,
        } => {
            check_text(&text)?;
            let topic = topic.filter(|t| !t.is_empty());
            if let Some(t) = &topic {
                check_topic(t)?;
            }
            let signature = hex::decode(&signature)
                .map_err(|_| Error::usage("the post's signature is not hex"))?;
            let message = post_signing_bytes(user, topic.as_deref(), time_ms, &text, reply_to);
            if !raftnode::identity::verify(key, &message, &signature) {
                return Err(Error::not_allowed(
                    "the post's signature does not verify with your key",
                ));
            }
            let mut blog = app.blog().await;
            if let Some(parent) = reply_to
                && blog.get_post(parent).await?.is_none()
            {
                return Err(Error::not_found(format!("no post #{parent} to reply to")));
            }
            let post = Post {
                id: 0,
                author: user.to_string(),
                topic: topic.clone(),
                time_ms,
                text,
                reply_to,
                signature,
                verified: true,
            };
            let mut ops = Vec::new();
            if let Some(t) = &topic {
                let entry = name_tuple(TOPIC, t);
                if blog
                    .store
                    .rdp(&Template::literal(&entry), 0)
                    .await?
                    .is_none()
                {
                    ops.push(Op::Cas(proto::Cas {
                        template: codec::template_to_bytes(&Template::literal(&entry)),
                        tuple: codec::tuple_to_bytes(&entry),
                        ..Default::default()
                    }));
                }
            }
            ops.push(out_op(&post.to_tuple()));
            Ok(ops)
        }
        Action::Follow { them } => {
            check_user(&them)?;
            if them == user {
                return Err(Error::usage("you cannot follow yourself"));
            }
            if !app.blog().await.user_exists(&them).await? {
                return Err(Error::not_found(format!("no user {them:?}")));
            }
            let pair = follow_tuple(user, &them);
            Ok(vec![Op::Cas(proto::Cas {
                template: codec::template_to_bytes(&Template::literal(&pair)),
                tuple: codec::tuple_to_bytes(&pair),
                ..Default::default()
            })])
        }
        Action::Unfollow { them } => {
            check_user(&them)?;
            let pair = follow_tuple(user, &them);
            Ok(vec![Op::InAll(proto::InAll {
                template: codec::template_to_bytes(&Template::literal(&pair)),
                limit: 16,
            })])
        }
        Action::Delete { id } => {
            let mut blog = app.blog().await;
            let Some(post) = blog.get_post(id).await? else {
                return Err(Error::not_found(format!("no post #{id}")));
            };
            if post.author != user {
                return Err(Error::not_allowed(format!(
                    "post #{id} is by {}, not {user}",
                    post.author
                )));
            }
            Ok(vec![Op::TakeId(proto::TakeId { id })])
        }
    }
}

async fn prepare(
    State(app): State<Arc<App>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    Json(body): Json<PrepareBody>,
) -> Response {
    let from = app.client_addr(peer, &headers);
    if let Err(e) = check_user(&body.user) {
        return api_failure(e);
    }
    let key = match hex::decode(&body.public_key) {
        Ok(k) if k.len() == 32 => k,
        _ => return api_error(StatusCode::BAD_REQUEST, "public_key: 32 bytes in hex"),
    };
    let token = match hex::decode(&body.session_token) {
        Ok(t) if (16..=64).contains(&t.len()) => t,
        _ => {
            return api_error(
                StatusCode::BAD_REQUEST,
                "session_token: 16 to 64 bytes in hex",
            );
        }
    };
    let owner = relay::owner(&body.user, &token);
    let ops = match ops_of(&app, &body.user, &key, body.action).await {
        Ok(ops) => ops,
        Err(e) => return api_failure(e),
    };
    let (cluster_id, now) = {
        let mut writer = app.writer.lock().await;
        let id = writer.cluster_id().await;
        let now = writer.cluster_now_ms().await;
        match (id, now) {
            (Ok(id), Ok(now)) => (id, now),
            (Err(e), _) | (_, Err(e)) => return api_failure(e.into()),
        }
    };
    let prepared = app.relay().prepare(
        from,
        relay::Writer {
            owner: &owner,
            user: &body.user,
            public_key: &key,
        },
        cluster_id,
        now,
        ops,
    );
    let Some((ticket, prepared)) = prepared else {
        return api_error(
            StatusCode::TOO_MANY_REQUESTS,
            format!(
                "{} prepared writes from your address wait for signatures; submit or wait a \
                 minute",
                relay::MAX_TICKETS_PER_ADDR
            ),
        );
    };
    let to_sign: Vec<String> = prepared.iter().map(|p| hex::encode(&p.to_sign)).collect();
    Json(serde_json::json!({ "ticket": ticket, "to_sign": to_sign })).into_response()
}

#[derive(Deserialize)]
struct SubmitBody {
    ticket: String,
    /// One signature (hex) per request to sign, in order.
    signatures: Vec<String>,
}

async fn submit(
    State(app): State<Arc<App>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    Json(body): Json<SubmitBody>,
) -> Response {
    let from = app.client_addr(peer, &headers);
    let Ok(signatures) = body
        .signatures
        .iter()
        .map(hex::decode)
        .collect::<Result<Vec<_>, _>>()
    else {
        return api_error(StatusCode::BAD_REQUEST, "signatures: hex");
    };
    let (requests, (owner, session, seqs)) = {
        let mut relay = app.relay();
        let Some(ticket) = relay.ticket_of(&body.ticket) else {
            return api_error(
                StatusCode::GONE,
                "no such ticket (it expired or was used): try again",
            );
        };
        match relay.take(&body.ticket, &signatures) {
            Ok(requests) => (requests, ticket),
            Err(why) => return api_error(StatusCode::BAD_REQUEST, why),
        }
    };
    let mut results = Vec::new();
    let mut failure = None;
    {
        let mut writer = app.writer.lock().await;
        for request in requests.iter().cloned() {
            match writer.relay(request).await {
                Ok(result) => results.push(result),
                Err(e) => {
                    failure = Some(e);
                    break;
                }
            }
        }
    }
    let mut relay = app.relay();
    match failure {
        Some(ClientError::OutcomeUnknown(why)) => {
            // Not done: the cluster may still apply it. The ticket is kept with its signed
            // requests: submitting it again resends the same bytes, applied at most once.
            relay.keep(&body.ticket, from, (owner, session, seqs), requests);
            api_error(
                StatusCode::GATEWAY_TIMEOUT,
                format!(
                    "outcome unknown: {why}; submit the same ticket again (it is applied at most \
                     once)"
                ),
            )
        }
        Some(e) => {
            // A definite refusal. A new session mends an expired one, or one another user
            // claimed; it costs nothing otherwise.
            relay.renew(&owner, session);
            relay.done(&owner, session, &seqs);
            api_failure(e.into())
        }
        None => {
            relay.done(&owner, session, &seqs);
            let last = results.last().cloned();
            Json(answer(last)).into_response()
        }
    }
}

/// The last request's answer, as JSON.
fn answer(result: Option<proto::response::Result>) -> serde_json::Value {
    use proto::response::Result as R;
    match result {
        Some(R::OutId(id)) => serde_json::json!({ "ok": true, "id": id }),
        Some(R::CasId(id)) => serde_json::json!({ "ok": true, "id": id }),
        Some(R::Error(e)) => serde_json::json!({ "ok": false, "error": e.message }),
        Some(_) | None => serde_json::json!({ "ok": true }),
    }
}
