//! The one command: `microblog up` starts a 3-node cluster (each node the same program, re-run as
//! `microblog node run ...`) and the web app; SIGINT to its process group (what Ctrl-C sends)
//! stops everything. Loopback only: the cluster file comes from the dev-cluster kit (leased
//! ports), the web app listens on a free port of 127.0.0.1.

use std::process::Stdio;
use std::time::Duration;

use nix::sys::signal::{Signal, killpg};
use nix::unistd::Pid;
use tests::microblog::microblog_bin;
use tests::{Cluster, bounded, serial};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};

const LIMIT: Duration = Duration::from_secs(120);

async fn get(port: u16, path: &str) -> Option<String> {
    let mut s = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .ok()?;
    let head = format!("GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n");
    s.write_all(head.as_bytes()).await.ok()?;
    let mut out = String::new();
    s.read_to_string(&mut out).await.ok()?;
    Some(out)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_command_starts_the_cluster_and_the_web_app() {
    let _serial = serial().await;
    // Only the file: `up` starts the nodes itself.
    let cluster = Cluster::configure(3);
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .unwrap();
    let mut child = tokio::process::Command::new(microblog_bin())
        .arg("--cluster")
        .arg(cluster.config_path())
        .arg("up")
        .arg("--listen")
        .arg(format!("127.0.0.1:{port}"))
        .current_dir(cluster.dir())
        .process_group(0)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .expect("start microblog up");
    let group = Pid::from_raw(child.id().expect("a pid") as i32);
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    bounded(LIMIT, async {
        // It says where to go once the cluster answers.
        loop {
            let line = lines.next_line().await.unwrap().expect("up ended early");
            if line.contains("open http://127.0.0.1:") {
                break;
            }
        }
        let page = get(port, "/").await.expect("the home page");
        assert!(page.starts_with("HTTP/1.1 200"), "{page}");
        assert!(page.contains("everyone"));
        let users = get(port, "/users").await.expect("the users page");
        assert!(users.contains("admin"), "the cluster answers: {users}");
        // Ctrl-C: SIGINT to the whole group stops the app and every node.
        killpg(group, Signal::SIGINT).unwrap();
        let status = tokio::time::timeout(Duration::from_secs(20), child.wait())
            .await
            .expect("up stopped")
            .unwrap();
        assert!(status.success() || status.code().is_some(), "{status:?}");
        let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
        while killpg(group, None).is_ok() {
            assert!(tokio::time::Instant::now() < deadline, "a node outlived up");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    })
    .await;
    let _ = killpg(group, Signal::SIGKILL);
}
