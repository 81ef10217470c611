//! The web app (`microblog serve`) against a real 3-node cluster, over HTTP on loopback: pages,
//! security headers, hostile text shown as text, writes signed by a key the server never sees
//! (this test plays the browser with an `Identity`), forged posts marked, live updates that resume
//! after `Last-Event-ID` without a gap or a repeat, and body limits.

use std::net::SocketAddr;
use std::time::Duration;

use raftnode::client::Client;
use raftnode::identity::Identity;
use serde_json::{Value as Json, json};
use tests::{Cluster, bounded, serial};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;
use tuplespace::{Value, tuple};

const LIMIT: Duration = Duration::from_secs(120);
const LEADER: Duration = Duration::from_secs(20);

/// An HTTP answer: status, headers (lower-case names), body.
struct Answer {
    status: u16,
    headers: Vec<(String, String)>,
    body: String,
}

impl Answer {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }
    fn json(&self) -> Json {
        serde_json::from_str(&self.body).unwrap_or_else(|e| panic!("{e}: {}", self.body))
    }
}

/// One HTTP/1.1 request on its own connection (`Connection: close`), bounded in time.
async fn http(addr: SocketAddr, method: &str, path: &str, body: Option<&str>) -> Answer {
    let request = async {
        let mut s = TcpStream::connect(addr).await.expect("connect");
        let body = body.unwrap_or("");
        let head = format!(
            "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\nCookie: user=alice\r\n\
             Content-Type: application/json\r\nContent-Length: {}\r\n\r\n",
            body.len()
        );
        s.write_all(head.as_bytes()).await.unwrap();
        s.write_all(body.as_bytes()).await.unwrap();
        let mut raw = Vec::new();
        s.read_to_end(&mut raw).await.unwrap();
        let text = String::from_utf8_lossy(&raw).to_string();
        let (head, body) = text.split_once("\r\n\r\n").expect("a head");
        let mut lines = head.lines();
        let status = lines
            .next()
            .unwrap()
            .split(' ')
            .nth(1)
            .unwrap()
            .parse()
            .unwrap();
        let headers = lines
            .filter_map(|l| l.split_once(':'))
            .map(|(n, v)| (n.trim().to_ascii_lowercase(), v.trim().to_string()))
            .collect();
        Answer {
            status,
            headers,
            body: body.to_string(),
        }
    };
    tokio::time::timeout(Duration::from_secs(30), request)
        .await
        .expect("an HTTP answer in time")
}

/// The browser's secret session token (here derived from the key, for a stable test).
fn token(me: &Identity) -> String {
    hex::encode(blake3::hash(&me.public_key()).as_bytes())
}

/// Does in the browser's place what `app.js` does: prepare, sign, submit.
async fn act(addr: SocketAddr, me: &Identity, action: Json) -> Json {
    let mut body = json!({
        "user": me.user(), "public_key": hex::encode(me.public_key()), "session_token": token(me),
    });
    for (k, v) in action.as_object().unwrap() {
        body[k] = v.clone();
    }
    let prepared = http(addr, "POST", "/api/prepare", Some(&body.to_string())).await;
    assert_eq!(prepared.status, 200, "prepare: {}", prepared.body);
    let prepared = prepared.json();
    let signatures: Vec<String> = prepared["to_sign"]
        .as_array()
        .unwrap()
        .iter()
        .map(|b| hex::encode(me.sign(&hex::decode(b.as_str().unwrap()).unwrap())))
        .collect();
    let submit = json!({ "ticket": prepared["ticket"], "signatures": signatures });
    let done = http(addr, "POST", "/api/submit", Some(&submit.to_string())).await;
    assert_eq!(done.status, 200, "submit: {}", done.body);
    done.json()
}

/// A post as the browser makes it: signed over its signing bytes.
fn post_action(me: &Identity, text: &str, topic: Option<&str>, time_ms: i64) -> Json {
    let bytes = microblog_cli::model::post_signing_bytes(me.user(), topic, time_ms, text, None);
    json!({
        "action": "post", "text": text, "topic": topic, "time_ms": time_ms,
        "signature": hex::encode(me.sign(&bytes)),
    })
}

async fn start_web(cluster: &Cluster) -> SocketAddr {
    let app = microblog_cli::web::App::new(
        cluster.endpoints(),
        microblog_cli::connect::client_options(Duration::from_secs(10), 3),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(microblog_cli::web::run(
        listener,
        app,
        std::future::pending(),
    ));
    addr
}

/// Reads Server-Sent Events from `/events` until `want` post events came (bounded).
async fn events(
    addr: SocketAddr,
    path: String,
    last_event_id: Option<u64>,
    want: usize,
) -> Vec<(u64, String)> {
    let read = async {
        let mut s = TcpStream::connect(addr).await.unwrap();
        let resume = last_event_id.map_or(String::new(), |id| format!("Last-Event-ID: {id}\r\n"));
        let head = format!(
            "GET {path} HTTP/1.1\r\nHost: {addr}\r\nAccept: text/event-stream\r\n{resume}\r\n"
        );
        s.write_all(head.as_bytes()).await.unwrap();
        let mut lines = BufReader::new(s).lines();
        let mut got = Vec::new();
        let mut id = None;
        while got.len() < want {
            let Some(line) = lines.next_line().await.unwrap() else {
                break;
            };
            // Chunked framing lines (sizes) are skipped; the event lines are what count.
            if let Some(v) = line
                .strip_prefix("id: ")
                .or_else(|| line.strip_prefix("id:"))
            {
                id = v.trim().parse().ok();
            } else if let Some(data) = line
                .strip_prefix("data: ")
                .or_else(|| line.strip_prefix("data:"))
            {
                got.push((id.take().expect("an id before the data"), data.to_string()));
            }
        }
        got
    };
    tokio::time::timeout(Duration::from_secs(30), read)
        .await
        .expect("the live events in time")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_web_app_serves_signs_and_streams() {
    let _serial = serial().await;
    let mut cluster = Cluster::start(3);
    bounded(LIMIT, async {
        cluster.wait_leader(LEADER).await;
        let web = start_web(&cluster).await;
        let alice = Identity::generate("alice");
        let bob = Identity::generate("bob");

        // Pages, with the security headers, before anyone posted.
        let home = http(web, "GET", "/", None).await;
        assert_eq!(home.status, 200);
        let csp = home.header("content-security-policy").expect("a CSP");
        assert!(
            csp.contains("script-src 'self'") && csp.contains("default-src 'none'"),
            "{csp}"
        );
        assert_eq!(home.header("x-content-type-options"), Some("nosniff"));
        assert!(home.body.contains("No posts yet"));
        assert_eq!(http(web, "GET", "/no/such/page", None).await.status, 404);
        let js = http(web, "GET", "/static/app.js", None).await;
        assert!(
            js.header("content-type")
                .unwrap()
                .starts_with("text/javascript")
        );

        // Register and post through the relay: the server never sees a private key.
        let registered = act(web, &alice, json!({ "action": "register" })).await;
        assert_eq!(registered["ok"], true, "{registered}");
        act(web, &bob, json!({ "action": "register" })).await;
        let hostile = "<script>alert(1)</script> <img src=x onerror=alert(2)> \u{202E}evil";
        let posted = act(
            web,
            &alice,
            post_action(&alice, hostile, Some("web"), 1_000),
        )
        .await;
        let first = posted["id"].as_u64().expect("the post's id");
        let page = http(web, "GET", &format!("/p/{first}"), None).await;
        assert_eq!(page.status, 200);
        assert!(
            page.body.contains("&lt;script&gt;alert(1)&lt;/script&gt;"),
            "{}",
            page.body
        );
        assert!(
            !page.body.contains("<script>alert"),
            "script tag rendered as markup"
        );
        assert!(
            !page.body.contains("<img src=x"),
            "img tag rendered as markup"
        );
        assert!(
            page.body.contains("[U+202E]evil"),
            "bidi override shown, not obeyed"
        );
        assert!(
            page.body.contains("✓ signed"),
            "the browser's signature verifies"
        );
        let topic = http(web, "GET", "/t/web", None).await;
        assert!(topic.body.contains(&format!("data-id=\"{first}\"")));
        assert!(http(web, "GET", "/topics", None).await.body.contains("web"));
        assert!(
            http(web, "GET", "/users", None)
                .await
                .body
                .contains("ed25519:")
        );

        // A post signed by another key than its author's: bob cannot write alice's posts (the
        // policy), so alice writes one whose content signature is bob's; it shows as forged.
        let mut a = Client::new(cluster.endpoints()).with_identity(alice.clone());
        let bytes = microblog_cli::model::post_signing_bytes("alice", None, 2, "forged", None);
        let forged = tuple![
            "post",
            "alice",
            "",
            2,
            "forged",
            0,
            Value::Bytes(bob.sign(&bytes).to_vec().into_boxed_slice())
        ];
        let forged_id = a.out(&forged).await.unwrap();
        let page = http(web, "GET", &format!("/p/{forged_id}"), None).await;
        assert!(
            page.body.contains("FORGED: signature does not verify"),
            "{}",
            page.body
        );

        // Follow, timeline (the `user=alice` cookie), delete; bob cannot delete alice's post.
        act(web, &bob, post_action(&bob, "hello from bob", None, 3_000)).await;
        act(web, &alice, json!({ "action": "follow", "them": "bob" })).await;
        let timeline = http(web, "GET", "/home", None).await;
        assert!(
            timeline.body.contains("hello from bob"),
            "{}",
            timeline.body
        );
        let user = http(web, "GET", "/u/bob", None).await;
        assert!(
            user.body.contains("data-following=\"true\""),
            "alice follows bob"
        );
        let mut body = json!({
            "user": "bob", "public_key": hex::encode(bob.public_key()), "session_token": token(&bob),
        });
        body["action"] = json!("delete");
        body["id"] = json!(first);
        let refused = http(web, "POST", "/api/prepare", Some(&body.to_string())).await;
        assert_eq!(refused.status, 403, "{}", refused.body);
        // Someone submitting with another key's signatures is refused by the cluster.
        let mut body = json!({
            "user": "alice", "public_key": hex::encode(alice.public_key()), "session_token": token(&alice),
        });
        body["action"] = json!("delete");
        body["id"] = json!(first);
        let prepared = http(web, "POST", "/api/prepare", Some(&body.to_string()))
            .await
            .json();
        let bytes = hex::decode(prepared["to_sign"][0].as_str().unwrap()).unwrap();
        let submit =
            json!({ "ticket": prepared["ticket"], "signatures": [hex::encode(bob.sign(&bytes))] });
        let refused = http(web, "POST", "/api/submit", Some(&submit.to_string())).await;
        assert_eq!(refused.status, 403, "{}", refused.body);
        let deleted = act(web, &alice, json!({ "action": "delete", "id": first })).await;
        assert_eq!(deleted["ok"], true);
        assert_eq!(
            http(web, "GET", &format!("/p/{first}"), None).await.status,
            404
        );

        // Live: two posts arrive on the stream in order; reconnecting after the first with
        // Last-Event-ID gives exactly the second.
        let start = act(
            web,
            &alice,
            post_action(&alice, "before the stream", None, 4_000),
        )
        .await;
        let after = start["id"].as_u64().unwrap();
        let stream = tokio::spawn(events(
            web,
            format!("/events?after={after}&author=alice"),
            None,
            2,
        ));
        tokio::time::sleep(Duration::from_millis(300)).await;
        let one = act(web, &alice, post_action(&alice, "live one", None, 5_000)).await["id"]
            .as_u64()
            .unwrap();
        let two = act(web, &alice, post_action(&alice, "live two", None, 6_000)).await["id"]
            .as_u64()
            .unwrap();
        let got = stream.await.unwrap();
        assert_eq!(
            got.iter().map(|(id, _)| *id).collect::<Vec<_>>(),
            vec![one, two]
        );
        assert!(got[0].1.contains("live one") && got[0].1.contains("✓ signed"));
        let resumed = events(
            web,
            format!("/events?after={after}&author=alice"),
            Some(one),
            1,
        )
        .await;
        assert_eq!(resumed[0].0, two, "resumes after Last-Event-ID, not after=");
        // A post page's stream carries its replies only, and the page asks for exactly that.
        let page = http(web, "GET", &format!("/p/{one}"), None).await;
        assert!(
            page.body.contains(&format!("reply_to={one}")),
            "{}",
            page.body
        );
        let replies = tokio::spawn(events(
            web,
            format!("/events?after={two}&reply_to={one}"),
            None,
            1,
        ));
        tokio::time::sleep(Duration::from_millis(300)).await;
        act(web, &bob, post_action(&bob, "not a reply", None, 7_000)).await;
        let bytes =
            microblog_cli::model::post_signing_bytes("bob", None, 8_000, "a reply", Some(one));
        let reply = json!({
            "action": "post", "text": "a reply", "time_ms": 8_000, "reply_to": one,
            "signature": hex::encode(bob.sign(&bytes)),
        });
        let reply = act(web, &bob, reply).await["id"].as_u64().unwrap();
        let got = replies.await.unwrap();
        assert_eq!(got[0].0, reply, "the reply, not the post before it");

        // The leader killed between posts: the stream goes on from where it was, nothing
        // missed, nothing repeated.
        let stream = tokio::spawn(events(
            web,
            format!("/events?after={two}&author=alice"),
            None,
            3,
        ));
        tokio::time::sleep(Duration::from_millis(300)).await;
        let mut ids = Vec::new();
        ids.push(
            act(
                web,
                &alice,
                post_action(&alice, "before the kill", None, 9_000),
            )
            .await["id"]
                .as_u64()
                .unwrap(),
        );
        let leader = cluster.wait_leader(LEADER).await;
        cluster.kill(leader);
        for (i, text) in ["after the kill", "and again"].into_iter().enumerate() {
            let posted = act(
                web,
                &alice,
                post_action(&alice, text, None, 10_000 + i as i64),
            )
            .await;
            ids.push(posted["id"].as_u64().unwrap());
        }
        let got = stream.await.unwrap();
        assert_eq!(
            got.iter().map(|(id, _)| *id).collect::<Vec<_>>(),
            ids,
            "across the kill"
        );

        // One address holds at most MAX_STREAMS_PER_ADDR live streams at once.
        let mut held = Vec::new();
        for _ in 0..microblog_cli::web::live::MAX_STREAMS_PER_ADDR {
            let mut s = TcpStream::connect(web).await.unwrap();
            let head = format!("GET /events?after=0 HTTP/1.1\r\nHost: {web}\r\n\r\n");
            s.write_all(head.as_bytes()).await.unwrap();
            let mut first = [0u8; 12];
            s.read_exact(&mut first).await.unwrap();
            assert_eq!(&first, b"HTTP/1.1 200");
            held.push(s);
        }
        let over = http(web, "GET", "/events?after=0", None).await;
        assert_eq!(over.status, 429, "{}", over.body);
        drop(held);

        // Limits: a body over 64 KiB is refused; a malformed one too.
        let big = format!(
            "{{\"user\":\"alice\",\"pad\":\"{}\"}}",
            "x".repeat(70 * 1024)
        );
        assert_eq!(
            http(web, "POST", "/api/prepare", Some(&big)).await.status,
            413
        );
        let bad = http(web, "POST", "/api/prepare", Some("{not json")).await;
        assert!(bad.status == 400 || bad.status == 422, "{}", bad.status);
        let bad_user = json!({ "user": "", "public_key": "00", "session_token": "00", "action": "register" });
        assert_eq!(
            http(web, "POST", "/api/prepare", Some(&bad_user.to_string()))
                .await
                .status,
            400
        );
    })
    .await;
}
