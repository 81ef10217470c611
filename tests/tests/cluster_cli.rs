//! `microblog cluster add | promote | remove | change | status` against real clusters on
//! loopback, run as a user would: a subprocess per command, checked by exit code, stderr and
//! `--json` lines parsed back.
//!
//! Each scenario takes the harness's serial lock and a hard time limit; every process it starts is
//! killed (by pid) when it ends.

use std::time::{Duration, Instant};

use serde_json::Value as Json;
use tests::microblog::mb;
use tests::{Cluster, bounded, serial};
use tuplespace::tuple;

const LIMIT: Duration = Duration::from_secs(150);
const LEADER: Duration = Duration::from_secs(20);
/// How long a removed node may take to stop by itself.
const EXIT: Duration = Duration::from_secs(15);

fn roles(membership: &Json) -> Vec<(u64, String)> {
    membership["members"]
        .as_array()
        .expect("members")
        .iter()
        .map(|m| {
            (
                m["id"].as_u64().expect("an id"),
                m["role"].as_str().expect("a role").to_string(),
            )
        })
        .collect()
}

/// Waits until learner `id` is within 100 entries of the commit index.
async fn wait_caught_up(client: &mut raftnode::client::Client, id: u64) {
    client
        .wait_caught_up(id, Duration::from_secs(30), 100)
        .await
        .unwrap_or_else(|e| panic!("node {id} did not catch up: {e}"));
}

fn voters(ids: &[u64]) -> Vec<(u64, String)> {
    ids.iter().map(|&id| (id, "voter".to_string())).collect()
}

/// `cluster status --json` until the leader's line shows `want` (id, role) and a lag for every
/// member; returns that line.
async fn wait_status(endpoints: &str, want: &[(u64, String)]) -> Json {
    let deadline = Instant::now() + LEADER;
    loop {
        let run = mb(endpoints, &["--json", "cluster", "status"]).await;
        if run.code == 0 {
            let lines = run.json();
            if let Some(leader) = lines.iter().find(|l| l["role"] == "leader") {
                let members = leader["members"].as_array().expect("members");
                let mut got: Vec<(u64, String)> = members
                    .iter()
                    .map(|m| {
                        (
                            m["id"].as_u64().unwrap(),
                            m["role"].as_str().unwrap().into(),
                        )
                    })
                    .collect();
                got.sort();
                if got == want && members.iter().all(|m| m["lag"].is_u64()) {
                    return leader.clone();
                }
            }
            assert!(
                Instant::now() < deadline,
                "status never showed {want:?}: {lines:?}"
            );
        } else {
            assert!(Instant::now() < deadline, "status failed: {run:?}");
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
}

/// Bad input is refused (exit 2), unknown nodes are named (exit 1); `cluster add` adds a node
/// that is not running yet (saying how to start it), catches it up and promotes it; `status`
/// shows it as a voter with its lag; `cluster remove` makes it stop by itself.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn add_status_and_remove_a_node() {
    let _serial = serial().await;
    let mut cluster = Cluster::start(3);
    bounded(LIMIT, async {
        cluster.wait_leader(LEADER).await;
        let ep = cluster.endpoints().join(",");
        let mut c = cluster.client();
        for i in 0..50 {
            c.out(&tuple!["cli", i]).await.unwrap();
        }

        // step: refusals, before and after contacting the cluster.
        mb(&ep, &["--admin", "cluster", "promote", "9"])
            .await
            .fails(1, "node 9 is not a member of the cluster");
        mb(&ep, &["--admin", "cluster", "remove", "9"])
            .await
            .fails(1, "not a member");
        mb(&ep, &["--admin", "cluster", "change", "--add-voter", "9"])
            .await
            .fails(1, "--add-voter 9=RAFT_URL,CLIENT_URL");
        let taken = cluster.node(1).raft.clone();
        let bad = mb(
            &ep,
            &[
                "--admin",
                "cluster",
                "add",
                "4",
                &taken,
                "tcp://127.0.0.1:9",
            ],
        )
        .await;
        bad.fails(1, "already node 1's raft endpoint");
        for args in [
            &[
                "--admin",
                "cluster",
                "add",
                "4",
                "localhost:7104",
                "tcp://127.0.0.1:7204",
            ][..],
            &[
                "--admin",
                "cluster",
                "add",
                "4",
                "tcp://127.0.0.1:7104",
                "tcp://127.0.0.1",
            ],
            &[
                "--admin",
                "cluster",
                "change",
                "--add-learner",
                "4=tcp://127.0.0.1:7104",
            ],
        ] {
            let run = mb(&ep, args).await;
            assert_eq!(run.code, 2, "{args:?}: {run:?}");
            assert!(run.stderr.contains("tcp://"), "{args:?}: {run:?}");
        }

        // step: add node 4 before it runs; start it while the command waits for the catch-up.
        let n4 = cluster.new_node(4);
        let adding = {
            let ep = ep.clone();
            let (raft, client) = (n4.raft.clone(), n4.client.clone());
            tokio::spawn(async move {
                mb(
                    &ep,
                    &[
                        "--admin",
                        "--json",
                        "cluster",
                        "add",
                        "4",
                        &raft,
                        &client,
                        "--catch-up",
                        "40s",
                    ],
                )
                .await
            })
        };
        tokio::time::sleep(Duration::from_secs(3)).await;
        cluster.spawn_joining(4);
        let added = adding.await.expect("the add task");
        let out = added.json();
        assert_eq!(out.len(), 1, "one JSON object: {added:?}");
        assert_eq!(roles(&out[0]), voters(&[1, 2, 3, 4]), "{added:?}");
        let progress: Vec<Json> = added
            .stderr
            .lines()
            .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{l:?}: {e}")))
            .collect();
        let steps: Vec<&str> = progress
            .iter()
            .map(|p| p["progress"].as_str().unwrap())
            .collect();
        assert_eq!(steps.first(), Some(&"not-running"), "{steps:?}");
        assert!(
            progress[0]["message"]
                .as_str()
                .unwrap()
                .contains("raftnode run --join --id 4"),
            "{progress:?}"
        );
        for step in ["learner", "caught-up", "voter"] {
            assert!(steps.contains(&step), "{step} missing: {steps:?}");
        }

        // step: status shows 4 as a voter, with a lag for every member.
        let ep4 = format!("{ep},{}", n4.client);
        let leader = wait_status(&ep4, &voters(&[1, 2, 3, 4])).await;
        assert_eq!(leader["members"].as_array().unwrap().len(), 4);
        let table = mb(&ep4, &["cluster", "status"]).await;
        let text = table.ok();
        assert!(text.starts_with("NODE"), "{table:?}");
        assert!(text.contains("MEMBER") && text.contains("LAG"), "{table:?}");
        assert!(text.contains("voter (leader)"), "{table:?}");
        // Adding it again changes nothing.
        let again = mb(
            &ep4,
            &["--admin", "cluster", "add", "4", &n4.raft, &n4.client],
        )
        .await;
        assert!(again.ok().contains("MEMBER"), "{again:?}");
        assert!(again.stderr.contains("already a voter"), "{again:?}");

        // step: remove it; it stops by itself.
        let removed = mb(&ep, &["--admin", "--json", "cluster", "remove", "4"]).await;
        assert_eq!(roles(&removed.json()[0]), voters(&[1, 2, 3]), "{removed:?}");
        assert!(removed.stderr.contains("stops by itself"), "{removed:?}");
        assert_eq!(cluster.wait_exit(4, EXIT).await, Some(0), "node 4 stopped");
        wait_status(&ep, &voters(&[1, 2, 3])).await;
    })
    .await;
}

/// `cluster change` adds a learner, `cluster promote` makes it a voter, `cluster remove` of the
/// leader hands leadership over, and one `cluster change` adds a voter and removes another
/// through joint consensus.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn change_promote_and_remove_the_leader() {
    let _serial = serial().await;
    let mut cluster = Cluster::start(3);
    bounded(LIMIT, async {
        cluster.wait_leader(LEADER).await;
        let n4 = cluster.new_node(4);
        cluster.spawn_joining(4);
        let ep = cluster.endpoints().join(",");

        // step: a learner, then a voter.
        let spec = format!("4={},{}", n4.raft, n4.client);
        let run = mb(
            &ep,
            &[
                "--admin",
                "--json",
                "cluster",
                "change",
                "--add-learner",
                &spec,
            ],
        )
        .await;
        let mut want = voters(&[1, 2, 3]);
        want.push((4, "learner".into()));
        assert_eq!(roles(&run.json()[0]), want, "{run:?}");
        wait_status(&ep, &want).await;
        let run = mb(&ep, &["--admin", "--json", "cluster", "promote", "4"]).await;
        assert_eq!(roles(&run.json()[0]), voters(&[1, 2, 3, 4]), "{run:?}");

        // step: remove the leader: it hands over, and stops by itself.
        let leader = cluster.wait_leader(LEADER).await;
        let run = mb(
            &ep,
            &[
                "--admin",
                "--json",
                "cluster",
                "remove",
                &leader.to_string(),
            ],
        )
        .await;
        let rest: Vec<u64> = [1, 2, 3, 4].into_iter().filter(|&i| i != leader).collect();
        let after = &run.json()[0];
        assert_eq!(roles(after), voters(&rest), "{run:?}");
        assert_ne!(after["leader"].as_u64(), Some(leader), "{after}");
        assert!(run.stderr.contains("hands leadership over"), "{run:?}");
        assert_eq!(cluster.wait_exit(leader, EXIT).await, Some(0));
        cluster.forget(leader);

        // step: a new voter straight away is refused (it must be a caught-up learner first)...
        let n5 = cluster.new_node(5);
        cluster.spawn_joining(5);
        let ep = cluster.endpoints().join(",");
        let spec = format!("5={},{}", n5.raft, n5.client);
        let run = mb(&ep, &["--admin", "cluster", "change", "--add-voter", &spec]).await;
        assert_eq!(run.code, 1, "{run:?}");
        assert!(run.stderr.contains("learner"), "{run:?}");
        // ...so: 5 as a learner, then promote 5 and remove 4 in one step (joint consensus).
        mb(
            &ep,
            &["--admin", "cluster", "change", "--add-learner", &spec],
        )
        .await;
        let mut want = voters(&rest);
        want.push((5, "learner".into()));
        wait_status(&ep, &want).await;
        wait_caught_up(&mut cluster.client(), 5).await;
        let run = mb(
            &ep,
            &[
                "--admin",
                "--json",
                "cluster",
                "change",
                "--add-voter",
                "5",
                "--remove",
                "4",
            ],
        )
        .await;
        let mut rest: Vec<u64> = rest.into_iter().filter(|&i| i != 4).collect();
        rest.push(5);
        assert_eq!(roles(&run.json()[0]), voters(&rest), "{run:?}");
        assert!(run.stderr.contains("joint consensus"), "{run:?}");
        assert_eq!(cluster.wait_exit(4, EXIT).await, Some(0));
        cluster.forget(4);
        let ep = cluster.endpoints().join(",");
        wait_status(&ep, &voters(&rest)).await;
    })
    .await;
}
