//! Snapshots, log compaction and joint-consensus membership changes, with real processes.
//!
//! Each scenario takes the harness's serial lock and a hard time limit.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use raftnode::client::{Client, ClientError, MemberChange};
use raftnode::devcluster::Options;
use raftnode::proto;
use tests::{Cluster, bounded, serial};
use tokio::sync::Mutex;
use tuplespace::{Query, Template, TupleId, tuple};

const LIMIT: Duration = Duration::from_secs(150);
const LEADER: Duration = Duration::from_secs(20);
const CATCH_UP: Duration = Duration::from_secs(30);

fn tpl(text: &str) -> Template {
    text.parse().expect("a valid template")
}

/// Small snapshots so that a few hundred writes compact the log.
fn small_snapshots(options: &mut Options) {
    options.raft.snapshot_entries = 100;
    options.raft.log_tail = 20;
}

/// Every id in `acked` is readable on node `id`, and nothing else matches `template`.
async fn assert_holds(cluster: &Cluster, id: u64, template: &str, acked: &[TupleId]) {
    let deadline = Instant::now() + CATCH_UP;
    loop {
        let got = cluster
            .client_of(id)
            .rd_all(&tpl(template), &Query::default())
            .await;
        if let Ok(got) = &got {
            let ids: Vec<TupleId> = got.iter().map(|(i, _)| *i).collect();
            if ids == acked {
                return;
            }
            if Instant::now() >= deadline {
                panic!(
                    "node {id} holds {} tuples, expected {}; first missing: {:?}",
                    ids.len(),
                    acked.len(),
                    acked.iter().find(|a| !ids.contains(a))
                );
            }
        } else if Instant::now() >= deadline {
            panic!("node {id} does not answer: {got:?}");
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// A writer that keeps `out`ing until told to stop, recording every acknowledged id.
fn start_writer(
    cluster: &Cluster,
    endpoints: Vec<String>,
    label: &'static str,
) -> (
    Arc<AtomicBool>,
    Arc<Mutex<Vec<TupleId>>>,
    tokio::task::JoinHandle<()>,
) {
    let stop = Arc::new(AtomicBool::new(false));
    let acked = Arc::new(Mutex::new(Vec::new()));
    let (stop2, acked2) = (stop.clone(), acked.clone());
    let mut client = Client::new(endpoints).with_identity(cluster.admin());
    let handle = tokio::spawn(async move {
        let mut i = 0i64;
        while !stop2.load(Ordering::Relaxed) {
            match client.out(&tuple![label, i]).await {
                Ok(id) => acked2.lock().await.push(id),
                Err(e) => panic!("a write failed while the cluster changed: {e}"),
            }
            i += 1;
        }
    });
    (stop, acked, handle)
}

/// Grow 3 -> 5 while a client writes, then shrink 5 -> 3 removing the leader among others.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grow_to_five_and_shrink_to_three_while_writing() {
    let _serial = serial().await;
    let mut cluster = Cluster::start(3);
    bounded(LIMIT, async {
        cluster.wait_leader(LEADER).await;
        let mut endpoints = cluster.endpoints();
        let n4 = cluster.new_node(4);
        let n5 = cluster.new_node(5);
        endpoints.extend([n4.client.clone(), n5.client.clone()]);
        let (stop, acked, writer) = start_writer(&cluster, endpoints.clone(), "grow");
        cluster.spawn_joining(4);
        cluster.spawn_joining(5);
        let mut admin = cluster.client();
        for spec in [&n4, &n5] {
            admin
                .add_node(spec.id, &spec.raft, &spec.client, CATCH_UP, 10)
                .await
                .unwrap_or_else(|e| panic!("add node {}: {e}", spec.id));
        }
        let status = admin.leader_status().await.unwrap();
        let mut voters: Vec<u64> = status
            .members
            .iter()
            .filter(|m| m.role() == proto::Role::Voter)
            .map(|m| m.id)
            .collect();
        voters.sort_unstable();
        assert_eq!(voters, vec![1, 2, 3, 4, 5]);
        tokio::time::sleep(Duration::from_millis(500)).await;

        // Shrink: remove the leader and one more, one at a time.
        let leader = cluster.wait_leader(LEADER).await;
        let other = [1, 2, 3, 4, 5]
            .into_iter()
            .find(|&id| id != leader)
            .unwrap();
        for gone in [leader, other] {
            admin
                .change_membership(&[MemberChange::Remove { id: gone }])
                .await
                .unwrap_or_else(|e| panic!("remove {gone}: {e}"));
            let code = cluster.wait_exit(gone, Duration::from_secs(15)).await;
            assert_eq!(code, Some(0), "removed node {gone} stops by itself");
            assert!(cluster.log(gone).contains("removed from the cluster"));
        }
        // A removed id is never added again (a wiped node under its old id could vote twice).
        let spec = cluster.node(leader).clone();
        let refused = admin
            .change_membership(&[MemberChange::AddLearner {
                id: leader,
                raft: spec.raft.clone(),
                client: spec.client.clone(),
            }])
            .await;
        match refused {
            Err(ClientError::RemovedId(msg)) => assert!(msg.contains("never reused"), "{msg}"),
            other => panic!("re-adding removed node {leader} must be refused: {other:?}"),
        }
        stop.store(true, Ordering::Relaxed);
        writer.await.expect("the writer never failed");
        let acked = acked.lock().await.clone();
        assert!(
            acked.len() > 20,
            "the writer made progress: {}",
            acked.len()
        );
        let status = admin.leader_status().await.unwrap();
        assert_eq!(status.members.len(), 3, "{status:?}");
        for m in &status.members {
            assert_holds(&cluster, m.id, r#"("grow", _)"#, &acked).await;
        }
    })
    .await;
}

/// Several changes in one step (add 4 and 5, remove 3) go through the joint state and out of it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn several_changes_in_one_step_go_through_joint_consensus() {
    let _serial = serial().await;
    let mut cluster = Cluster::start(3);
    bounded(LIMIT, async {
        let leader = cluster.wait_leader(LEADER).await;
        let mut admin = cluster.client();
        let mut acked = Vec::new();
        for i in 0..30 {
            acked.push(admin.out(&tuple!["joint", i]).await.unwrap());
        }
        let n4 = cluster.new_node(4);
        let n5 = cluster.new_node(5);
        cluster.spawn_joining(4);
        cluster.spawn_joining(5);
        for spec in [&n4, &n5] {
            admin
                .change_membership(&[MemberChange::AddLearner {
                    id: spec.id,
                    raft: spec.raft.clone(),
                    client: spec.client.clone(),
                }])
                .await
                .unwrap();
            admin.wait_caught_up(spec.id, CATCH_UP, 5).await.unwrap();
        }
        let victim = if leader == 3 { 2 } else { 3 };
        let status = admin
            .change_membership(&[
                MemberChange::AddVoter {
                    id: 4,
                    raft: String::new(),
                    client: String::new(),
                },
                MemberChange::AddVoter {
                    id: 5,
                    raft: String::new(),
                    client: String::new(),
                },
                MemberChange::Remove { id: victim },
            ])
            .await
            .unwrap();
        let mut voters: Vec<u64> = status
            .members
            .iter()
            .filter(|m| m.role() == proto::Role::Voter)
            .map(|m| m.id)
            .collect();
        voters.sort_unstable();
        let mut want: Vec<u64> = [1, 2, 3, 4, 5]
            .into_iter()
            .filter(|&i| i != victim)
            .collect();
        want.sort_unstable();
        assert_eq!(voters, want, "joint state left: {status:?}");
        assert!(
            status
                .members
                .iter()
                .all(|m| m.role() != proto::Role::OutgoingVoter)
        );
        assert_eq!(
            cluster.wait_exit(victim, Duration::from_secs(15)).await,
            Some(0)
        );
        let log = cluster.log(leader);
        assert!(
            log.contains("\"joint\" => true") || log.contains("joint: true"),
            "went through a joint state"
        );
        for i in 30..40 {
            acked.push(admin.out(&tuple!["joint", i]).await.unwrap());
        }
        for id in want {
            assert_holds(&cluster, id, r#"("joint", _)"#, &acked).await;
        }
    })
    .await;
}

/// Replace a node: kill it, wipe its data, remove it, and add a fresh node in its place.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replace_a_dead_node_with_a_fresh_one() {
    let _serial = serial().await;
    let mut cluster = Cluster::start_with(3, small_snapshots);
    bounded(LIMIT, async {
        let leader = cluster.wait_leader(LEADER).await;
        let dead = if leader == 3 { 2 } else { 3 };
        let mut c = cluster.client();
        let mut acked = Vec::new();
        for i in 0..250 {
            acked.push(c.out(&tuple!["replace", i]).await.unwrap());
        }
        cluster.kill(dead);
        cluster.wipe(dead);
        c.change_membership(&[MemberChange::Remove { id: dead }])
            .await
            .unwrap();
        cluster.forget(dead);
        let fresh = cluster.new_node(6);
        cluster.spawn_joining(6);
        c.add_node(6, &fresh.raft, &fresh.client, CATCH_UP, 10)
            .await
            .unwrap();
        for i in 250..260 {
            acked.push(c.out(&tuple!["replace", i]).await.unwrap());
        }
        assert_holds(&cluster, 6, r#"("replace", _)"#, &acked).await;
        assert!(
            cluster
                .log(6)
                .contains("installed a snapshot from the leader"),
            "the fresh node caught up by snapshot"
        );
        // The new member can lose another node's worth of failure: kill the old leader.
        cluster.kill(leader);
        cluster.wait_leader(LEADER).await;
        acked.push(c.out(&tuple!["replace", 999]).await.unwrap());
        assert_holds(&cluster, 6, r#"("replace", _)"#, &acked).await;
    })
    .await;
}

/// A follower cut off (frozen) long enough to need a snapshot rejoins and holds every tuple.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_follower_cut_off_past_compaction_catches_up_by_snapshot() {
    let _serial = serial().await;
    let mut cluster = Cluster::start_with(3, small_snapshots);
    bounded(LIMIT, async {
        let leader = cluster.wait_leader(LEADER).await;
        let lagging = if leader == 1 { 2 } else { 1 };
        cluster.freeze(lagging);
        let others: Vec<String> = cluster
            .ids()
            .into_iter()
            .filter(|&id| id != lagging)
            .map(|id| cluster.node(id).client.clone())
            .collect();
        let mut c = Client::new(others).with_identity(cluster.admin());
        let mut acked = Vec::new();
        for i in 0..400 {
            acked.push(c.out(&tuple!["gap", i, "y".repeat(50)]).await.unwrap());
        }
        let status = cluster.status(leader).await.unwrap();
        assert!(status.first_index > 100, "the leader compacted: {status:?}");
        cluster.thaw(lagging);
        assert_holds(&cluster, lagging, r#"("gap", _, _)"#, &acked).await;
        assert!(
            cluster
                .log(lagging)
                .contains("installed a snapshot from the leader"),
            "caught up by snapshot"
        );
    })
    .await;
}

/// Restart every node after compaction: nothing acknowledged is lost; the log stays bounded.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restart_every_node_after_compaction() {
    let _serial = serial().await;
    let mut cluster = Cluster::start_with(3, small_snapshots);
    bounded(LIMIT, async {
        cluster.wait_leader(LEADER).await;
        let mut c = cluster.client();
        let mut acked = Vec::new();
        for i in 0..450 {
            acked.push(c.out(&tuple!["kept", i]).await.unwrap());
        }
        for i in 0..50 {
            let (id, _) = c
                .inp(&tpl(&format!(r#"("kept", {i})"#)))
                .await
                .unwrap()
                .unwrap();
            acked.retain(|&a| a != id);
        }
        for id in cluster.ids() {
            let s = cluster.status(id).await.unwrap();
            assert!(s.first_index > 1, "node {id} compacted its log: {s:?}");
        }
        for id in cluster.ids() {
            cluster.kill(id);
        }
        for id in cluster.ids() {
            cluster.spawn(id);
        }
        cluster.wait_leader(LEADER).await;
        for id in cluster.ids() {
            assert_holds(&cluster, id, r#"("kept", _)"#, &acked).await;
            assert!(cluster.log(id).contains("restored state from snapshot"));
        }
    })
    .await;
}

/// A corrupted snapshot file is refused (and kept aside); the node recovers from the older one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_corrupted_snapshot_is_refused_and_the_node_recovers() {
    let _serial = serial().await;
    let mut cluster = Cluster::start_with(3, small_snapshots);
    bounded(LIMIT, async {
        cluster.wait_leader(LEADER).await;
        let mut c = cluster.client();
        let mut acked = Vec::new();
        for i in 0..350 {
            acked.push(c.out(&tuple!["snap", i]).await.unwrap());
        }
        let victim = 2;
        // Let the victim write its snapshots, then stop it.
        tokio::time::sleep(Duration::from_millis(500)).await;
        cluster.kill(victim);
        let dir = cluster.node(victim).data_dir.join("snapshots");
        let mut snaps: Vec<_> = std::fs::read_dir(&dir)
            .unwrap()
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.extension().is_some_and(|x| x == "snap"))
            .collect();
        snaps.sort();
        assert!(snaps.len() >= 2, "two snapshots kept: {snaps:?}");
        let newest = snaps.last().unwrap().clone();
        let mut bytes = std::fs::read(&newest).unwrap();
        let middle = bytes.len() / 2;
        bytes[middle] ^= 0xff;
        std::fs::write(&newest, bytes).unwrap();
        cluster.spawn(victim);
        cluster.wait_leader(LEADER).await;
        for i in 350..360 {
            acked.push(c.out(&tuple!["snap", i]).await.unwrap());
        }
        assert_holds(&cluster, victim, r#"("snap", _)"#, &acked).await;
        let log = cluster.log(victim);
        assert!(
            log.contains("corrupt") || log.contains("refus"),
            "the refusal is logged"
        );
        let corrupt = newest.with_extension("snap.corrupt");
        assert!(
            corrupt.exists()
                || dir
                    .join(format!(
                        "{}.corrupt",
                        newest.file_name().unwrap().to_string_lossy()
                    ))
                    .exists(),
            "the corrupt file is kept aside"
        );
    })
    .await;
}
