//! The `microblog` program against real 3-node clusters on loopback, run as a user would: a
//! subprocess per command, checked by exit code, table text and `--json` lines parsed back.
//!
//! Each scenario takes the harness's serial lock and a hard time limit; every process it starts is
//! killed (by pid) when it ends.

use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use serde_json::Value as Json;
use tests::microblog::{command, finish, mb};
use tests::{Cluster, bounded, serial};
use tokio::io::{AsyncBufReadExt, BufReader};

const LIMIT: Duration = Duration::from_secs(150);
const LEADER: Duration = Duration::from_secs(20);

fn ids(lines: &[Json]) -> Vec<u64> {
    lines
        .iter()
        .map(|l| l["id"].as_u64().expect("an id"))
        .collect()
}

/// A child process whose output lines are collected as they come; killed on drop.
struct Streaming {
    child: tokio::process::Child,
    stdout: Arc<Mutex<Vec<String>>>,
    stderr: Arc<Mutex<Vec<String>>>,
}

impl Streaming {
    fn spawn(mut cmd: tokio::process::Command) -> Streaming {
        let mut child = cmd
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn microblog");
        let stdout = Arc::new(Mutex::new(Vec::new()));
        let stderr = Arc::new(Mutex::new(Vec::new()));
        let out = child.stdout.take().expect("piped stdout");
        let err = child.stderr.take().expect("piped stderr");
        for (pipe, sink) in [
            (
                Box::new(out) as Box<dyn tokio::io::AsyncRead + Unpin + Send>,
                stdout.clone(),
            ),
            (Box::new(err), stderr.clone()),
        ] {
            tokio::spawn(async move {
                let mut lines = BufReader::new(pipe).lines();
                while let Ok(Some(line)) = lines.next_line().await {
                    sink.lock().unwrap().push(line);
                }
            });
        }
        Streaming {
            child,
            stdout,
            stderr,
        }
    }

    fn stdout(&self) -> Vec<String> {
        self.stdout.lock().unwrap().clone()
    }

    fn stderr(&self) -> Vec<String> {
        self.stderr.lock().unwrap().clone()
    }

    /// Waits until `ready` holds for (stdout, stderr), or panics with both after `limit`.
    async fn wait_for(
        &self,
        limit: Duration,
        what: &str,
        ready: impl Fn(&[String], &[String]) -> bool,
    ) {
        let deadline = Instant::now() + limit;
        loop {
            if ready(&self.stdout(), &self.stderr()) {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "{what}: not within {limit:?}\nstdout: {:?}\nstderr: {:?}",
                self.stdout(),
                self.stderr()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Sends a signal, then waits for the exit (SIGKILL if it does not come in time). Returns the
    /// exit code, if it exited by itself after the signal.
    async fn stop(&mut self, signal: Signal, grace: Duration) -> Option<i32> {
        if let Some(pid) = self.child.id() {
            let _ = kill(Pid::from_raw(pid as i32), signal);
        }
        match tokio::time::timeout(grace, self.child.wait()).await {
            Ok(Ok(status)) => status.code(),
            _ => {
                let _ = self.child.start_kill();
                let _ = self.child.wait().await;
                None
            }
        }
    }
}

impl Drop for Streaming {
    /// SIGTERM first (so `cluster up` stops its nodes), SIGKILL if that takes over 10 s.
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            if let Some(pid) = self.child.id() {
                let _ = kill(Pid::from_raw(pid as i32), Signal::SIGTERM);
            }
            let deadline = Instant::now() + Duration::from_secs(10);
            while matches!(self.child.try_wait(), Ok(None)) && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(50));
            }
            let _ = self.child.start_kill();
        }
    }
}

/// Posts, replies, reads, show, follows, timelines, users, topics and delete, in tables and JSON;
/// the cluster chosen by --endpoints, --cluster and MICROBLOG_ENDPOINTS; identity by --user before
/// or after the command and MICROBLOG_USER.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_social_commands_end_to_end() {
    let _serial = serial().await;
    let cluster = Cluster::start(3);
    let ep = cluster.endpoints().join(",");
    let ep = ep.as_str();
    bounded(LIMIT, async {
        cluster.wait_leader(LEADER).await;

        // step: posts, a reply that inherits the topic, UTF-8 text.
        let a1: u64 = mb(
            ep,
            &[
                "--user",
                "alice",
                "post",
                "hello from alice",
                "--topic",
                "intro",
            ],
        )
        .await
        .ok()
        .trim()
        .parse()
        .expect("post prints the id");
        let reply = mb(
            ep,
            &[
                "--json",
                "post",
                "héllo alice 🌍 日本語",
                "--reply-to",
                &a1.to_string(),
                "--user",
                "bob",
            ],
        )
        .await
        .json();
        assert_eq!(reply.len(), 1);
        let b1 = reply[0]["id"].as_u64().unwrap();
        assert!(b1 > a1);
        assert_eq!(reply[0]["author"], "bob");
        assert_eq!(reply[0]["reply_to"], a1);
        assert_eq!(
            reply[0]["topic"], "intro",
            "a reply takes its parent's topic"
        );
        assert_eq!(reply[0]["text"], "héllo alice 🌍 日本語");
        let mut as_env = command(ep, &["post", "bob via the environment", "--topic", "misc"]);
        as_env.env("MICROBLOG_USER", "bob");
        let b2: u64 = finish(as_env).await.ok().trim().parse().unwrap();
        let long = "日".repeat(100);
        let a2: u64 = mb(ep, &["--user", "alice", "post", &long])
            .await
            .ok()
            .trim()
            .parse()
            .unwrap();
        mb(
            ep,
            &[
                "--user",
                "carol",
                "post",
                "carol is here",
                "--topic",
                "misc",
            ],
        )
        .await
        .ok();

        // step: read, newest first, filtered and paged.
        let all = mb(ep, &["--json", "read"]).await.json();
        let all_ids = ids(&all);
        assert_eq!(all_ids.len(), 5);
        assert!(
            all_ids.windows(2).all(|w| w[0] > w[1]),
            "newest first: {all_ids:?}"
        );
        let alice = mb(ep, &["read", "--user", "alice", "--json"]).await.json();
        assert_eq!(ids(&alice), vec![a2, a1]);
        assert!(alice.iter().all(|p| p["author"] == "alice"));
        assert_eq!(
            ids(&mb(ep, &["--json", "read", "--limit", "1"]).await.json()),
            vec![all_ids[0]]
        );
        assert_eq!(
            ids(&mb(
                ep,
                &[
                    "--json",
                    "read",
                    "--user",
                    "alice",
                    "--before",
                    &a2.to_string()
                ]
            )
            .await
            .json()),
            vec![a1]
        );
        assert_eq!(
            ids(&mb(ep, &["--json", "read", "--topic", "intro"]).await.json()),
            vec![b1, a1]
        );
        let table = mb(ep, &["read", "--user", "alice"]).await;
        let lines: Vec<&str> = table.ok().lines().collect();
        assert!(
            lines[0].starts_with("ID") && lines[0].contains("TEXT"),
            "{lines:?}"
        );
        let long_row = lines
            .iter()
            .find(|l| l.contains('日'))
            .expect("the long post");
        assert!(long_row.ends_with('…'), "cut by chars: {long_row}");
        assert_eq!(long_row.chars().filter(|&c| c == '日').count(), 59);

        // step: show a post and its replies.
        let shown = mb(ep, &["show", &a1.to_string()]).await;
        assert!(
            shown.ok().contains("hello from alice") && shown.ok().contains("1 reply"),
            "{shown:?}"
        );
        assert!(shown.ok().contains("日本語"));
        let shown = mb(ep, &["--json", "show", &a1.to_string()]).await.json();
        assert_eq!(ids(&shown), vec![a1, b1]);
        assert_eq!(shown[1]["reply_to"], a1);
        mb(ep, &["show", "999999"])
            .await
            .fails(3, "no post #999999");
        mb(ep, &["--user", "bob", "post", "x", "--reply-to", "999999"])
            .await
            .fails(3, "999999");

        // step: follow each other.
        assert!(
            mb(ep, &["--user", "bob", "follow", "alice"])
                .await
                .ok()
                .contains("bob now follows alice")
        );
        assert!(
            mb(ep, &["--user", "bob", "follow", "alice"])
                .await
                .ok()
                .contains("already follows")
        );
        let f = mb(ep, &["--json", "--user", "alice", "follow", "bob"])
            .await
            .json();
        assert_eq!(f[0]["status"], "followed");
        assert_eq!(f[0]["followee"], "bob");
        mb(ep, &["--user", "bob", "follow", "nobody"])
            .await
            .fails(3, "no user \"nobody\"");
        mb(ep, &["--user", "bob", "follow", "bob"])
            .await
            .fails(1, "yourself");
        mb(ep, &["follow", "alice"]).await.fails(2, "--user");
        assert!(
            mb(ep, &["--user", "bob", "following"])
                .await
                .ok()
                .contains("alice")
        );
        let followers = mb(ep, &["--json", "followers", "alice"]).await.json();
        assert_eq!(
            followers,
            vec![serde_json::json!({"follower": "bob", "followee": "alice"})]
        );
        let following = mb(ep, &["--json", "following", "alice"]).await.json();
        assert_eq!(following[0]["followee"], "bob");
        assert!(
            mb(ep, &["followers", "carol"])
                .await
                .ok()
                .contains("nobody follows carol")
        );
        mb(ep, &["following", "nobody"]).await.fails(3, "nobody");

        // step: timelines: your posts and those of whom you follow.
        let tl = mb(ep, &["--json", "--user", "bob", "timeline"])
            .await
            .json();
        assert_eq!(ids(&tl), vec![a2, b2, b1, a1]);
        assert!(tl.iter().all(|p| p["author"] != "carol"));
        assert_eq!(
            ids(
                &mb(ep, &["--json", "--user", "bob", "timeline", "--limit", "2"])
                    .await
                    .json()
            ),
            vec![a2, b2]
        );
        assert!(
            mb(ep, &["--user", "dave", "timeline"])
                .await
                .ok()
                .contains("no posts")
        );
        assert!(
            mb(ep, &["--user", "bob", "unfollow", "alice"])
                .await
                .ok()
                .contains("no longer follows")
        );
        mb(ep, &["--user", "bob", "unfollow", "alice"])
            .await
            .fails(3, "does not follow");
        assert_eq!(
            ids(&mb(ep, &["--json", "timeline", "--user", "bob"])
                .await
                .json()),
            vec![b2, b1]
        );

        // step: users and topics with post counts.
        let users = mb(ep, &["--json", "users"]).await.json();
        let users: Vec<(String, u64)> = users
            .iter()
            .map(|u| {
                (
                    u["user"].as_str().unwrap().to_string(),
                    u["posts"].as_u64().unwrap(),
                )
            })
            .collect();
        assert_eq!(
            users,
            vec![
                ("admin".into(), 0),
                ("alice".into(), 2),
                ("bob".into(), 2),
                ("carol".into(), 1)
            ]
        );
        let topics = mb(ep, &["--json", "topics"]).await.json();
        assert_eq!(topics[0]["topic"], "intro");
        assert_eq!(topics[0]["posts"], 2);
        assert_eq!(topics[1]["topic"], "misc");
        let table = mb(ep, &["users"]).await;
        assert!(
            table.ok().starts_with("USER") && table.ok().contains("carol"),
            "{table:?}"
        );
        assert!(mb(ep, &["topics"]).await.ok().starts_with("TOPIC"));

        // step: delete: only your own.
        mb(ep, &["--user", "bob", "delete", &a1.to_string()])
            .await
            .fails(1, "only delete your own");
        assert!(
            mb(ep, &["--user", "alice", "delete", &a1.to_string()])
                .await
                .ok()
                .contains("deleted")
        );
        mb(ep, &["show", &a1.to_string()]).await.fails(3, "no post");
        mb(ep, &["--user", "alice", "delete", &a1.to_string()])
            .await
            .fails(3, "no post");
        let d = mb(ep, &["--json", "--user", "bob", "delete", &b2.to_string()])
            .await
            .json();
        assert_eq!(d[0]["deleted"], b2);

        // step: the same cluster through --cluster FILE and MICROBLOG_ENDPOINTS.
        let path = cluster.config_path().to_str().unwrap();
        let via_file = mb("", &["--cluster", path, "--json", "read"]).await.json();
        assert_eq!(ids(&via_file), vec![ids(&all)[0], a2, b1]);
        let mut via_env = command("", &["--json", "read", "--limit", "1"]);
        via_env.env("MICROBLOG_ENDPOINTS", ep);
        assert_eq!(finish(via_env).await.json().len(), 1);
    })
    .await;
}

/// `tail` prints every new post exactly once and in order, across a SIGKILL of the leader (the
/// node it is talking to), and stops cleanly on Ctrl-C (SIGINT).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tail_survives_a_leader_kill_without_missing_or_repeating() {
    let _serial = serial().await;
    let mut cluster = Cluster::start(3);
    let ep = cluster.endpoints().join(",");
    let ep = ep.as_str();
    bounded(LIMIT, async {
        let leader = cluster.wait_leader(LEADER).await;
        let before: u64 = mb(
            ep,
            &[
                "--user",
                "old",
                "post",
                "before the tail",
                "--topic",
                "live",
            ],
        )
        .await
        .ok()
        .trim()
        .parse()
        .unwrap();
        let mut tail = Streaming::spawn(command(
            ep,
            &["--json", "--timeout", "30s", "tail", "--topic", "live"],
        ));
        tail.wait_for(Duration::from_secs(20), "tail starts", |_, err| {
            err.iter().any(|l| l.contains("tailing posts after"))
        })
        .await;
        assert!(
            tail.stderr()
                .iter()
                .any(|l| l.contains(&format!("after #{before}")))
        );

        let mut posted = Vec::new();
        let post = |text: String, topic: &'static str| async move {
            let run = mb(
                ep,
                &[
                    "--timeout",
                    "30s",
                    "--user",
                    "writer",
                    "post",
                    &text,
                    "--topic",
                    topic,
                ],
            )
            .await;
            run.ok().trim().parse::<u64>().expect("an id")
        };
        for i in 0..5 {
            posted.push(post(format!("live {i}"), "live").await);
            post(format!("elsewhere {i}"), "other").await;
        }
        tail.wait_for(Duration::from_secs(30), "the first posts", |out, _| {
            out.len() >= 5
        })
        .await;

        // step: SIGKILL the leader, keep posting.
        cluster.kill(leader);
        for i in 5..10 {
            posted.push(post(format!("live {i}"), "live").await);
        }
        let new_leader = cluster.wait_leader(LEADER).await;
        assert_ne!(new_leader, leader);
        for i in 10..12 {
            posted.push(post(format!("live {i}"), "live").await);
        }
        tail.wait_for(Duration::from_secs(45), "every post", |out, _| {
            out.len() >= posted.len()
        })
        .await;
        // A moment more: anything repeated would show up now.
        tokio::time::sleep(Duration::from_secs(3)).await;
        let code = tail.stop(Signal::SIGINT, Duration::from_secs(10)).await;
        assert_eq!(
            code,
            Some(0),
            "Ctrl-C ends tail cleanly: {:?}",
            tail.stderr()
        );

        let seen: Vec<Json> = tail
            .stdout()
            .iter()
            .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{l:?}: {e}")))
            .collect();
        assert_eq!(ids(&seen), posted, "every post exactly once, in order");
        for (i, p) in seen.iter().enumerate() {
            assert_eq!(p["text"], format!("live {i}"));
            assert_eq!(p["topic"], "live");
        }
    })
    .await;
}

/// Every raw tuple operation in the text syntax, blocking ones with --timeout, --ttl, --take and
/// --limit; malformed input names its column (exit 2).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn raw_tuple_operations() {
    let _serial = serial().await;
    let cluster = Cluster::start(3);
    let ep = cluster.endpoints().join(",");
    let ep = ep.as_str();
    bounded(LIMIT, async {
        cluster.wait_leader(LEADER).await;
        let j1: u64 = mb(
            ep,
            &["--user", "worker", "tuple", "out", r#"("job", 1, "a")"#],
        )
        .await
        .ok()
        .trim()
        .parse()
        .unwrap();
        let j2 = mb(
            ep,
            &[
                "--user",
                "worker",
                "--json",
                "tuple",
                "out",
                r#"("job", 2, "b é")"#,
            ],
        )
        .await
        .json()[0]["id"]
            .as_u64()
            .unwrap();
        assert!(j2 > j1);
        assert_eq!(
            mb(
                ep,
                &["--user", "worker", "tuple", "count", r#"("job", ?int, _)"#]
            )
            .await
            .ok()
            .trim(),
            "2"
        );
        assert_eq!(
            mb(
                ep,
                &[
                    "--user",
                    "worker",
                    "--json",
                    "tuple",
                    "count",
                    r#"("job", 2, _)"#
                ]
            )
            .await
            .json()[0]["count"],
            1
        );

        // step: rdp, rd (blocking), with --after.
        let r = mb(
            ep,
            &["--user", "worker", "tuple", "rdp", r#"("job", ?int, _)"#],
        )
        .await;
        assert_eq!(r.ok().trim(), format!(r#"{j1}  ("job", 1, "a")"#));
        let r = mb(
            ep,
            &[
                "--user",
                "worker",
                "--json",
                "tuple",
                "rdp",
                r#"("job", _, _)"#,
                "--after",
                &j1.to_string(),
            ],
        )
        .await
        .json();
        assert_eq!(r[0]["id"], j2);
        assert_eq!(r[0]["fields"], serde_json::json!(["job", 2, "b é"]));
        assert_eq!(r[0]["tuple"], r#"("job", 2, "b é")"#);
        mb(
            ep,
            &[
                "--user",
                "worker",
                "tuple",
                "rdp",
                r#"("job", _, _)"#,
                "--after",
                &j2.to_string(),
            ],
        )
        .await
        .fails(3, "no tuple matches");
        let waiting = Streaming::spawn(command(
            ep,
            &[
                "--user",
                "worker",
                "--json",
                "--timeout",
                "20s",
                "tuple",
                "rd",
                r#"("ping", ?int)"#,
            ],
        ));
        tokio::time::sleep(Duration::from_millis(500)).await;
        let p = mb(ep, &["--user", "worker", "tuple", "out", r#"("ping", 7)"#])
            .await
            .ok()
            .trim()
            .parse::<u64>()
            .unwrap();
        waiting
            .wait_for(Duration::from_secs(20), "the blocked rd", |out, _| {
                !out.is_empty()
            })
            .await;
        assert!(
            waiting.stdout()[0].contains(&format!("\"id\":{p}")),
            "{:?}",
            waiting.stdout()
        );
        mb(
            ep,
            &[
                "--user",
                "worker",
                "--timeout",
                "500ms",
                "tuple",
                "rd",
                r#"("ping", ?int)"#,
                "--after",
                &p.to_string(),
            ],
        )
        .await
        .fails(3, "timed out after 500ms");

        // step: in (blocking) and inp take; a second take finds nothing.
        let taker = Streaming::spawn(command(
            ep,
            &[
                "--user",
                "worker",
                "--timeout",
                "20s",
                "tuple",
                "in",
                r#"("task", ?str)"#,
            ],
        ));
        tokio::time::sleep(Duration::from_millis(500)).await;
        mb(
            ep,
            &["--user", "worker", "tuple", "out", r#"("task", "x")"#],
        )
        .await
        .ok();
        taker
            .wait_for(Duration::from_secs(20), "the blocked in", |out, _| {
                !out.is_empty()
            })
            .await;
        assert!(taker.stdout()[0].ends_with(r#"("task", "x")"#));
        mb(
            ep,
            &[
                "--user",
                "worker",
                "--timeout",
                "500ms",
                "tuple",
                "in",
                r#"("task", ?str)"#,
            ],
        )
        .await
        .fails(3, "timed out");
        assert!(
            mb(
                ep,
                &["--user", "worker", "tuple", "inp", r#"("job", 1, _)"#]
            )
            .await
            .ok()
            .contains(r#"("job", 1, "a")"#)
        );
        mb(
            ep,
            &["--user", "worker", "tuple", "inp", r#"("job", 1, _)"#],
        )
        .await
        .fails(3, "no tuple matches");

        // step: all, with --limit, --newest-first and --take.
        for i in 10..15 {
            mb(
                ep,
                &[
                    "--user",
                    "worker",
                    "tuple",
                    "out",
                    &format!(r#"("item", {i})"#),
                ],
            )
            .await
            .ok();
        }
        let all = mb(
            ep,
            &[
                "--user",
                "worker",
                "--json",
                "tuple",
                "all",
                r#"("item", _)"#,
            ],
        )
        .await
        .json();
        assert_eq!(all.len(), 5);
        let newest = mb(
            ep,
            &[
                "--user",
                "worker",
                "--json",
                "tuple",
                "all",
                r#"("item", _)"#,
                "--limit",
                "2",
                "--newest-first",
            ],
        )
        .await
        .json();
        assert_eq!(newest[0]["fields"][1], 14);
        assert_eq!(newest[1]["fields"][1], 13);
        let table = mb(
            ep,
            &["--user", "worker", "tuple", "all", r#"("item", 10..12)"#],
        )
        .await;
        assert!(
            table.ok().starts_with("ID") && table.ok().lines().count() == 3,
            "{table:?}"
        );
        let taken = mb(
            ep,
            &[
                "--user",
                "worker",
                "--json",
                "tuple",
                "all",
                r#"("item", _)"#,
                "--take",
                "--limit",
                "3",
            ],
        )
        .await
        .json();
        assert_eq!(
            taken
                .iter()
                .map(|t| t["fields"][1].as_i64().unwrap())
                .collect::<Vec<_>>(),
            vec![10, 11, 12]
        );
        assert_eq!(
            mb(
                ep,
                &["--user", "worker", "tuple", "count", r#"("item", _)"#]
            )
            .await
            .ok()
            .trim(),
            "2"
        );

        // step: cas and ttl.
        let won = mb(
            ep,
            &[
                "--user",
                "worker",
                "--json",
                "tuple",
                "cas",
                r#"("lock", _)"#,
                r#"("lock", "me")"#,
            ],
        )
        .await
        .json();
        assert_eq!(won[0]["inserted"], true);
        let lost = mb(
            ep,
            &[
                "--user",
                "worker",
                "--json",
                "tuple",
                "cas",
                r#"("lock", _)"#,
                r#"("lock", "you")"#,
            ],
        )
        .await;
        assert_eq!(lost.code, 1, "{lost:?}");
        assert!(lost.stdout.contains(r#""inserted":false"#), "{lost:?}");
        assert!(lost.stderr.contains("already matches"), "{lost:?}");
        mb(
            ep,
            &[
                "--user",
                "worker",
                "tuple",
                "out",
                r#"("brief", 1)"#,
                "--ttl",
                "300ms",
            ],
        )
        .await
        .ok();
        mb(
            ep,
            &[
                "--user",
                "worker",
                "tuple",
                "cas",
                r#"("lease")"#,
                r#"("lease")"#,
                "--ttl",
                "300ms",
            ],
        )
        .await
        .ok();
        tokio::time::sleep(Duration::from_millis(1500)).await;
        assert_eq!(
            mb(
                ep,
                &["--user", "worker", "tuple", "count", r#"("brief", _)"#]
            )
            .await
            .ok()
            .trim(),
            "0"
        );
        assert_eq!(
            mb(ep, &["--user", "worker", "tuple", "count", r#"("lease")"#])
                .await
                .ok()
                .trim(),
            "0"
        );

        // step: malformed input: exit 2, the column named and pointed at.
        let bad = mb(ep, &["--user", "worker", "tuple", "out", r#"("job", 1"#]).await;
        bad.fails(2, "column 10");
        assert!(
            bad.stderr.contains(r#"    ("job", 1"#) && bad.stderr.contains("             ^"),
            "{bad:?}"
        );
        mb(
            ep,
            &["--user", "worker", "tuple", "in", r#"("job", ?integer)"#],
        )
        .await
        .fails(2, "column");
        mb(ep, &["--user", "worker", "tuple", "cas", "(_)", "(oops)"])
            .await
            .fails(2, "malformed tuple");
    })
    .await;
}

/// `cluster up` starts a cluster from its file, `cluster status` shows every node, and once the
/// cluster is stopped every command says which endpoints it tried (exit 1).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cluster_up_status_and_an_unreachable_cluster() {
    let _serial = serial().await;
    // The harness writes the file (free ports, temp data dirs); `microblog cluster up` runs it.
    let cluster = Cluster::configure(3);
    let file = cluster.config_path().to_str().unwrap().to_string();
    let file = file.as_str();
    let mut up = Streaming::spawn(command("", &["cluster", "up", "--cluster", file]));
    bounded(LIMIT, async {
        up.wait_for(Duration::from_secs(20), "cluster up", |out, _| {
            out.iter().any(|l| l.contains("MICROBLOG_ENDPOINTS="))
        })
        .await;
        // step: status until one leader, agreed by all three.
        let deadline = Instant::now() + LEADER;
        let nodes = loop {
            let run = mb("", &["--cluster", file, "--json", "cluster", "status"]).await;
            if run.code == 0 {
                let nodes = run.json();
                let leaders: Vec<&Json> = nodes.iter().filter(|n| n["role"] == "leader").collect();
                if nodes.len() == 3
                    && leaders.len() == 1
                    && nodes.iter().all(|n| n["leader"] == leaders[0]["id"])
                {
                    break nodes;
                }
            }
            assert!(Instant::now() < deadline, "no agreed leader: {run:?}");
            tokio::time::sleep(Duration::from_millis(200)).await;
        };
        for n in &nodes {
            assert_eq!(n["members"].as_array().unwrap().len(), 3, "{n}");
            assert!(n["term"].as_u64().unwrap() >= 1);
            assert!(n["commit"].as_u64().unwrap() >= n["applied"].as_u64().unwrap());
        }
        let table = mb("", &["--cluster", file, "cluster", "status"]).await;
        assert!(
            table.ok().starts_with("NODE") && table.ok().contains("leader"),
            "{table:?}"
        );
        assert!(table.ok().contains("1 2 3"), "{table:?}");
        mb(
            "",
            &[
                "--cluster",
                file,
                "--user",
                "ann",
                "post",
                "on a cluster I started",
            ],
        )
        .await
        .ok();

        // step: stop the cluster (raftnode up stops every node on SIGINT).
        let code = up.stop(Signal::SIGINT, Duration::from_secs(15)).await;
        assert!(code.is_some(), "cluster up stopped: {:?}", up.stderr());
        let endpoints = cluster.endpoints();
        let down = mb("", &["--cluster", file, "--timeout", "2s", "users"]).await;
        for e in &endpoints {
            down.fails(1, e);
        }
        down.fails(1, "hint:");
        let down = mb(
            "",
            &["--cluster", file, "--timeout", "1s", "cluster", "status"],
        )
        .await;
        down.fails(1, "no node answered");
        let down = mb("", &["--cluster", file, "--timeout", "1s", "tail"]).await;
        down.fails(1, "no cluster node answered");
        let down = mb(&endpoints[0], &["--json", "--timeout", "1s", "read"]).await;
        assert_eq!(down.code, 1, "{down:?}");
        let err: Json = serde_json::from_str(down.stderr.trim()).expect("a JSON error");
        assert!(
            err["error"].as_str().unwrap().contains(&endpoints[0]),
            "{err}"
        );
        assert_eq!(err["exit"], 1);
    })
    .await;
    // (On failure, dropping `up` SIGTERMs it: raftnode up stops its nodes before it goes.)
}
