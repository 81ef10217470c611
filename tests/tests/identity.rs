//! Identity and authorization against real 3-node clusters: only alice posts as alice, through
//! the CLI, the Rust API and the raw protocol; sessions belong to their user; only the admin
//! changes the cluster; a post whose signature does not verify is shown as forged.

use std::time::Duration;

use raftnode::client::{Client, ClientError};
use raftnode::identity::Identity;
use raftnode::proto::{self, error::Code};
use tests::microblog::mb;
use tests::{Cluster, bounded, raw_call, serial};
use tuplespace::{Template, TupleId, Value, codec, tuple};

const LIMIT: Duration = Duration::from_secs(150);
const LEADER: Duration = Duration::from_secs(20);

fn tpl(text: &str) -> Template {
    text.parse().expect("a valid template")
}

/// A client signing as `who`, registered first.
async fn registered(cluster: &Cluster, who: &Identity) -> Client {
    let mut c = Client::new(cluster.endpoints()).with_identity(who.clone());
    c.register().await.expect("register");
    c
}

/// A post tuple by `author`, signed by `by` (the format of the microblog's model).
fn post_tuple(author: &str, text: &str, by: &Identity) -> tuplespace::Tuple {
    let message = microblog_cli::model::post_signing_bytes(author, None, 1, text, None);
    tuple![
        "post",
        author,
        "",
        1,
        text,
        0,
        Value::Bytes(by.sign(&message).to_vec().into_boxed_slice())
    ]
}

fn error_code(resp: &proto::Response) -> Option<Code> {
    match &resp.result {
        Some(proto::response::Result::Error(e)) => Code::try_from(e.code).ok(),
        _ => None,
    }
}

/// Through the Rust API and the raw protocol: another user's name, another key, forged tuples,
/// takes of someone else's posts, unsigned and replayed requests, borrowed sessions.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nobody_acts_as_someone_else() {
    let _serial = serial().await;
    let cluster = Cluster::start(3);
    bounded(LIMIT, async {
        cluster.wait_leader(LEADER).await;
        let alice = Identity::generate("alice");
        let bob = Identity::generate("bob");
        let mut a = registered(&cluster, &alice).await;
        let mut b = registered(&cluster, &bob).await;
        let post = a
            .out(&post_tuple("alice", "mine", &alice))
            .await
            .expect("alice posts as alice");

        // A name that is taken, with another key.
        let thief = Identity::generate("alice");
        let mut t = Client::new(cluster.endpoints()).with_identity(thief.clone());
        let taken = t.register().await;
        assert!(
            matches!(taken, Err(ClientError::PermissionDenied(_))),
            "alice's name is taken: {taken:?}"
        );
        // Signing as alice with another key.
        assert!(matches!(
            t.out(&tuple!["note", "x"]).await,
            Err(ClientError::Unauthenticated(_))
        ));
        // Bob writes a post in alice's name, takes hers by template and by id.
        assert!(matches!(
            b.out(&post_tuple("alice", "forged", &bob)).await,
            Err(ClientError::PermissionDenied(_))
        ));
        let hers = tpl(r#"("post", "alice", ?str, ?int, ?str, ?int, ?bytes)"#);
        assert!(matches!(
            b.inp(&hers).await,
            Err(ClientError::PermissionDenied(_))
        ));
        assert!(matches!(
            b.inp(&tpl(r#"("post", ?str, ?str, ?int, ?str, ?int, ?bytes)"#))
                .await,
            Err(ClientError::PermissionDenied(_))
        ));
        assert!(matches!(
            b.take_id(post).await,
            Err(ClientError::PermissionDenied(_))
        ));
        // Nor can bob forge a registration or a follow in alice's name.
        assert!(matches!(
            b.out(&tuple![
                "user",
                "carol",
                Value::Bytes(vec![0; 32].into_boxed_slice())
            ])
            .await,
            Err(ClientError::PermissionDenied(_))
        ));
        assert!(matches!(
            b.out(&tuple!["follow", "alice", "bob"]).await,
            Err(ClientError::PermissionDenied(_))
        ));
        // Alice's post is still there; she may take it herself.
        assert_eq!(a.count(&hers).await.unwrap(), 1);

        // Raw protocol: unsigned, a signature by another key, a replay, a borrowed session.
        let endpoint = cluster.node(1).client.clone();
        let cluster_id = a.cluster_id().await.unwrap();
        let not_after_ms = a.status().await.unwrap().cluster_time_ms + 600_000;
        let write = |session: u64, seq: u64, what: &str| proto::Request {
            session,
            seq,
            ack: seq - 1,
            not_after_ms,
            op: Some(proto::request::Op::Out(proto::Out {
                tuple: codec::tuple_to_bytes(&tuple!["note", what]),
                ttl_ms: 0,
            })),
            ..Default::default()
        };
        let unsigned = raw_call(&endpoint, &write(0x51, 1, "unsigned")).await;
        assert_eq!(error_code(&unsigned), Some(Code::Unauthenticated));
        let sealed = alice.seal(write(0xa11ce, 1, "once"), cluster_id);
        let mut message = raftnode::identity::REQUEST_DOMAIN.to_vec();
        message.extend_from_slice(&sealed.signed);
        let resigned = proto::Request {
            signature: bob.sign(&message).to_vec(),
            ..sealed.clone()
        };
        let forged = raw_call(&endpoint, &resigned).await;
        assert_eq!(error_code(&forged), Some(Code::Unauthenticated));
        // The same signed request twice (and through another node): applied once.
        let first = raw_call(&endpoint, &sealed).await;
        let again = raw_call(&cluster.node(2).client, &sealed).await;
        assert_eq!(first.result, again.result, "a replay gets the same answer");
        assert_eq!(a.count(&tpl(r#"("note", "once")"#)).await.unwrap(), 1);
        // Bob borrows alice's session: refused, and alice's next request is unharmed.
        let borrowed = raw_call(&endpoint, &bob.seal(write(0xa11ce, 2, "bob's"), cluster_id)).await;
        assert_eq!(error_code(&borrowed), Some(Code::PermissionDenied));
        let next = raw_call(&endpoint, &alice.seal(write(0xa11ce, 2, "two"), cluster_id)).await;
        assert!(
            matches!(next.result, Some(proto::response::Result::OutId(_))),
            "{next:?}"
        );
        assert_eq!(
            a.count(&tpl(r#"("note", ?str)"#)).await.unwrap(),
            2,
            "only alice's two notes"
        );
        // A recorded write that expired is never applied (its session may be long gone).
        let late = proto::Request {
            not_after_ms: 1,
            ..write(0xe1a7e, 1, "late")
        };
        let expired = raw_call(&endpoint, &alice.seal(late, cluster_id)).await;
        assert_eq!(error_code(&expired), Some(Code::Unauthenticated));
        // A signature for another cluster.
        let elsewhere = raw_call(
            &endpoint,
            &alice.seal(write(0xa11ce, 3, "x"), cluster_id ^ 1),
        )
        .await;
        assert_eq!(error_code(&elsewhere), Some(Code::Unauthenticated));
    })
    .await;
}

/// Only the admin changes the membership, reads the digest, resets keys and sets the policy;
/// a replayed admin request is refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_the_admin_changes_the_cluster() {
    let _serial = serial().await;
    let cluster = Cluster::start(3);
    bounded(LIMIT, async {
        cluster.wait_leader(LEADER).await;
        let alice = Identity::generate("alice");
        let mut a = registered(&cluster, &alice).await;
        let remove = [raftnode::client::MemberChange::Remove { id: 3 }];
        assert!(matches!(
            a.change_membership(&remove).await,
            Err(ClientError::PermissionDenied(_))
        ));
        let mut anonymous = Client::new(cluster.endpoints());
        assert!(matches!(
            anonymous.change_membership(&remove).await,
            Err(ClientError::Unauthenticated(_))
        ));
        let options = raftnode::client::ClientOptions::default();
        assert!(matches!(
            Client::digest_of(&cluster.node(1).client, &options, &alice).await,
            Err(ClientError::PermissionDenied(_))
        ));
        assert!(
            Client::digest_of(&cluster.node(1).client, &options, &cluster.admin())
                .await
                .is_ok()
        );
        let policy = a.policy().await.expect("anyone reads the policy");
        assert!(matches!(
            a.set_policy(policy.clone()).await,
            Err(ClientError::PermissionDenied(_))
        ));
        assert!(matches!(
            a.reset_key("alice", [7; 32]).await,
            Err(ClientError::PermissionDenied(_))
        ));
        // A recorded admin request, replayed, is refused.
        let mut admin = cluster.client();
        let cluster_id = admin.cluster_id().await.unwrap();
        let now = admin.status().await.unwrap().cluster_time_ms;
        let digest = cluster.admin().seal(
            proto::Request {
                session: 42,
                not_after_ms: now + 60_000,
                op: Some(proto::request::Op::Status(proto::StatusRequest {
                    digest: true,
                })),
                ..Default::default()
            },
            cluster_id,
        );
        let endpoint = cluster.node(1).client.clone();
        let first = raw_call(&endpoint, &digest).await;
        assert!(
            matches!(first.result, Some(proto::response::Result::Status(_))),
            "{first:?}"
        );
        let replay = raw_call(&endpoint, &digest).await;
        assert_eq!(error_code(&replay), Some(Code::Unauthenticated));
        // Expired in cluster time.
        let stale = cluster.admin().seal(
            proto::Request {
                session: 43,
                not_after_ms: now.saturating_sub(1),
                op: Some(proto::request::Op::Status(proto::StatusRequest {
                    digest: true,
                })),
                ..Default::default()
            },
            cluster_id,
        );
        assert_eq!(
            error_code(&raw_call(&endpoint, &stale).await),
            Some(Code::Unauthenticated)
        );
    })
    .await;
}

/// The CLI: a first post registers the user; another key home cannot post as them (exit 4);
/// membership changes without --admin exit 4; a rotated key still vouches for old posts; a
/// post whose signature does not verify is marked, never silently shown.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cli_knows_who_you_are() {
    let _serial = serial().await;
    let cluster = Cluster::start(3);
    bounded(LIMIT, async {
        cluster.wait_leader(LEADER).await;
        let ep = cluster.endpoints().join(",");
        let ep = ep.as_str();
        let run = mb(ep, &["--user", "dora", "post", "first"]).await;
        assert_eq!(run.code, 0, "{run:?}");
        assert!(run.stderr.contains("registered dora"), "{run:?}");
        let who = mb(ep, &["--json", "--user", "dora", "whoami"]).await.json();
        assert_eq!(who[0]["status"], "registered");
        // Another key home: the same name, another key.
        let elsewhere = tempfile::tempdir().unwrap();
        let mut cmd = tests::microblog::command(ep, &["--user", "dora", "post", "impostor"]);
        cmd.env("MICROBLOG_HOME", elsewhere.path());
        let run = tests::microblog::finish(cmd).await;
        assert_eq!(run.code, 4, "{run:?}");
        assert!(run.stderr.contains("another key"), "{run:?}");
        // Membership without --admin.
        let run = mb(ep, &["cluster", "remove", "3"]).await;
        assert_eq!(run.code, 4, "{run:?}");
        // Rotation: the old post still verifies, a new one too.
        let run = mb(ep, &["--user", "dora", "rotate-key"]).await;
        assert_eq!(run.code, 0, "{run:?}");
        mb(ep, &["--user", "dora", "post", "second"]).await.ok();
        let posts = mb(ep, &["--json", "read", "--user", "dora"]).await.json();
        assert_eq!(posts.len(), 2);
        assert!(posts.iter().all(|p| p["verified"] == true), "{posts:?}");
        // The admin opens posts to anyone; a post in dora's name by someone else shows as forged.
        let policy = mb(ep, &["policy", "show"]).await;
        let mut policy: serde_json::Value = serde_json::from_str(policy.ok()).unwrap();
        for rule in policy["rules"].as_array_mut().unwrap() {
            if rule["kind"] == "post" {
                rule["write"] = "any_user".into();
            }
        }
        let file = cluster.dir().join("open-posts.json");
        std::fs::write(&file, policy.to_string()).unwrap();
        let file = file.display().to_string();
        assert_eq!(
            mb(ep, &["policy", "set", &file]).await.code,
            4,
            "not without --admin"
        );
        mb(ep, &["--admin", "policy", "set", &file]).await.ok();
        let eve = Identity::generate("eve");
        let mut e = registered(&cluster, &eve).await;
        let forged: TupleId = e
            .out(&post_tuple("dora", "I never said this", &eve))
            .await
            .expect("the open policy lets eve write it");
        let posts = mb(ep, &["--json", "read", "--user", "dora"]).await.json();
        let shown = posts
            .iter()
            .find(|p| p["id"] == forged)
            .expect("the forged post is listed");
        assert_eq!(shown["verified"], false);
        let table = mb(ep, &["read", "--user", "dora"]).await;
        assert!(table.ok().contains("FORGED"), "{table:?}");
    })
    .await;
}
