//! Snapshots streamed in chunks between real node processes: a transfer paced slowly enough to be
//! cut in the middle by a frozen follower resumes where it stopped, the leader stays leader
//! meanwhile, and the follower ends up with every acknowledged tuple.

use std::time::{Duration, Instant};

use raftnode::client::Client;
use raftnode::devcluster::Options;
use tests::{Cluster, bounded, serial};
use tuplespace::{Query, Template, TupleId, tuple};

const LIMIT: Duration = Duration::from_secs(150);
const LEADER: Duration = Duration::from_secs(20);

fn tpl(text: &str) -> Template {
    text.parse().expect("a valid template")
}

/// Small snapshot intervals (a few hundred writes compact the log) and a slow transfer pace
/// (1 MiB/s: a state of a few MiB takes seconds to send).
fn slow_snapshots(options: &mut Options) {
    options.raft.snapshot_entries = 100;
    options.raft.log_tail = 20;
    options.raft.snapshot_send_mib_per_s = 1;
}

/// The numbers after `key=` or `key: ` in a log line.
fn field(line: &str, key: &str) -> Option<u64> {
    let at = line.find(&format!("{key}: "))? + key.len() + 2;
    line[at..]
        .split(|c: char| !c.is_ascii_digit())
        .next()?
        .parse()
        .ok()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cut_snapshot_transfer_resumes_and_the_follower_catches_up() {
    let _serial = serial().await;
    let mut cluster = Cluster::start_with(3, slow_snapshots);
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
        // About 4 MiB of state: four chunks or more, at 1 MiB/s.
        let mut c = Client::new(others).with_identity(cluster.admin());
        let mut acked: Vec<TupleId> = Vec::new();
        let payload = "z".repeat(1400);
        for i in 0..3000 {
            acked.push(c.out(&tuple!["big", i, payload.as_str()]).await.unwrap());
        }
        let status = cluster.status(leader).await.unwrap();
        assert!(status.first_index > 100, "the leader compacted: {status:?}");
        cluster.thaw(lagging);

        // Wait until the transfer is under way, then cut it: the follower freezes for longer
        // than a request's timeout.
        let started = Instant::now();
        while !cluster.log(lagging).contains("receiving a snapshot") {
            assert!(
                started.elapsed() < Duration::from_secs(30),
                "no transfer began"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        tokio::time::sleep(Duration::from_millis(1500)).await;
        cluster.freeze(lagging);
        tokio::time::sleep(Duration::from_secs(4)).await;
        cluster.thaw(lagging);

        // Every acknowledged tuple arrives.
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let got = cluster
                .client_of(lagging)
                .rd_all(&tpl(r#"("big", _, _)"#), &Query::default())
                .await;
            if let Ok(got) = &got
                && got.iter().map(|(id, _)| *id).collect::<Vec<_>>() == acked
            {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "node {lagging} did not catch up: {:?}",
                got.map(|g| g.len())
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        let follower_log = cluster.log(lagging);
        assert!(
            follower_log.contains("installed a snapshot from the leader"),
            "caught up by snapshot"
        );
        // One transfer, resumed: the follower never started the file over, and the leader sent
        // little more than the file (a chunk or two again after the cut).
        let receptions: Vec<&str> = follower_log
            .lines()
            .filter(|l| l.contains("receiving a"))
            .collect();
        assert_eq!(receptions.len(), 1, "{receptions:#?}");
        let leader_log = cluster.log(leader);
        let cut = leader_log
            .lines()
            .any(|l| l.contains("peer unreachable") || l.contains("giving up"));
        assert!(cut, "the freeze cut the transfer");
        let delivered = leader_log
            .lines()
            .find(|l| l.contains("snapshot file delivered"))
            .expect("the leader delivered the file");
        let (bytes, sent) = (
            field(delivered, "bytes").expect("bytes"),
            field(delivered, "sent_bytes").expect("sent_bytes"),
        );
        assert!(bytes > 3 << 20, "{delivered}");
        assert!(sent < bytes + (3 << 20), "resent too much: {delivered}");
        // The slow transfer did not cost the leader its leadership.
        assert_eq!(cluster.wait_leader(LEADER).await, leader);
    })
    .await;
}
