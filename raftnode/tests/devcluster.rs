//! The dev-cluster kit end to end: a 3-node cluster of this package's `raftnode` on loopback
//! elects a leader; its leader, killed, comes back on the same ports with its data; a new node
//! joins on ports of its own; and dropping the cluster kills every node, removes the directory
//! and frees every port.

use std::path::PathBuf;
use std::time::Duration;

use raftnode::config::ClusterConfig;
use raftnode::devcluster::{Agreement, DevCluster, Options, PortLease};

const LEADER: Duration = Duration::from_secs(30);

fn port(endpoint: &str) -> u16 {
    endpoint.rsplit(':').next().unwrap().parse().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dev_cluster_lives_restarts_and_cleans_up() {
    let test = async {
        let mut options = Options {
            program: Some(PathBuf::from(env!("CARGO_BIN_EXE_raftnode"))),
            ..Options::default()
        };
        options.raft.snapshot_entries = 500;
        let mut cluster = DevCluster::start(3, options).expect("a cluster");
        let dir = cluster.dir().to_path_buf();

        // The cluster file is the kit's config, and the node reads it as such.
        let on_disk = ClusterConfig::load(cluster.config_path()).unwrap();
        assert_eq!(&on_disk, cluster.config());
        assert_eq!(on_disk.raft.snapshot_entries, 500);

        let leader = cluster
            .wait_leader(LEADER, Agreement::Everyone)
            .await
            .unwrap();
        let before = cluster.node(leader).unwrap().clone();
        let pid = cluster.pid(leader).unwrap();
        assert!(cluster.kill(leader).is_some());
        assert!(!cluster.is_running(leader));
        let next = cluster
            .wait_leader(LEADER, Agreement::Answering)
            .await
            .unwrap();
        assert_ne!(next, leader);
        cluster.spawn(leader).unwrap();
        assert_ne!(cluster.pid(leader), Some(pid));
        assert_eq!(
            cluster.node(leader),
            Some(&before),
            "same ports and data dir"
        );
        cluster
            .wait_leader(LEADER, Agreement::Everyone)
            .await
            .unwrap();
        let status = cluster
            .status_with(leader, &DevCluster::probe_options())
            .await
            .expect("the restarted node answers on its old client port");
        assert_eq!(status.id, leader);

        // A new node: fresh ports, not in the cluster file; it waits to be added.
        let new = cluster.new_node(4).unwrap();
        let founding: Vec<String> = cluster
            .config()
            .nodes
            .iter()
            .map(|n| n.raft.clone())
            .collect();
        assert!(!founding.contains(&new.raft));
        cluster.spawn_joining(4).unwrap();
        assert!(cluster.spawn(4).is_err(), "started twice");
        let mut answered = false;
        for _ in 0..100 {
            if cluster
                .status_with(4, &DevCluster::probe_options())
                .await
                .is_some()
            {
                answered = true;
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        assert!(
            answered,
            "the joining node never answered:\n{}",
            cluster.log_tail(4, 20)
        );
        assert!(cluster.wipe(4).is_err(), "wiped while running");
        cluster.forget(4);
        assert!(!cluster.is_running(4) && cluster.node(4).is_none());
        assert!(
            PortLease::claim(port(&new.client)).unwrap().is_some(),
            "forgotten ports are free"
        );

        let ports: Vec<u16> = cluster
            .config()
            .nodes
            .iter()
            .flat_map(|n| [port(&n.raft), port(&n.client)])
            .collect();
        for &p in &ports {
            assert!(PortLease::claim(p).unwrap().is_none(), "port {p} not held");
        }
        assert!(cluster.log(1).contains("INFO"), "node 1 logs to its file");
        drop(cluster);
        assert!(!dir.exists(), "{} left behind", dir.display());
        // Free again: no lease holds them and no node listens there any more.
        for &p in &ports {
            assert!(
                PortLease::claim(p).unwrap().is_some(),
                "port {p} still taken"
            );
        }
    };
    tokio::time::timeout(Duration::from_secs(120), test)
        .await
        .expect("the test took over 120 s");
}
