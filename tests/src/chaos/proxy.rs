//! Per-link TCP proxies: the network the nemesis partitions.
//!
//! For every ordered pair of slots `(i, j)` one proxy listens on its own `127.0.0.1` port and
//! forwards each connection to the real raft port of the node in slot `j`. The node in slot `i`
//! has its own cluster file naming that proxy as slot `j`'s raft endpoint, so everything node `i`
//! sends to node `j` (its REQ socket's requests and the acknowledgements coming back on the same
//! connection) crosses link `i -> j` and nothing else does.
//!
//! Cutting a link closes the proxy's live connections on that link at once and makes it accept
//! and immediately close every new one (the node's connect fails its ZMTP handshake and backs
//! off); healing lets new connections through again. Retargeting points a slot's inbound links at
//! a new node (a replacement with fresh ports). The proxies run on their own small tokio runtime,
//! so a busy workload or a blocking call in the test never stalls raft traffic.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use raftnode::devcluster::{PortLease, lease_port};
use tokio::io::copy_bidirectional;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

/// How long a proxy waits for the node behind it to accept a connection.
const DIAL_TIMEOUT: Duration = Duration::from_secs(1);

struct Link {
    /// The proxy's own port, leased for the proxy's life so that no dev cluster is handed it.
    port: PortLease,
    /// Where it forwards.
    target: Mutex<SocketAddr>,
    /// Whether the link is cut.
    cut: watch::Sender<bool>,
}

/// Every link's proxy, and the runtime they run on. Dropping it stops them all.
pub struct Net {
    runtime: Option<tokio::runtime::Runtime>,
    links: BTreeMap<(usize, usize), Arc<Link>>,
}

impl Net {
    /// Starts a proxy for every ordered pair of the `targets` (slot -> the raft address of the
    /// node in that slot).
    pub fn start(targets: &BTreeMap<usize, SocketAddr>) -> std::io::Result<Net> {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("chaos-proxy")
            .enable_all()
            .build()?;
        let mut links = BTreeMap::new();
        for &from in targets.keys() {
            for (&to, &target) in targets {
                if from == to {
                    continue;
                }
                let (listener, port) = leased_listener()?;
                listener.set_nonblocking(true)?;
                let (cut, _) = watch::channel(false);
                let link = Arc::new(Link {
                    port,
                    target: Mutex::new(target),
                    cut,
                });
                let serving = link.clone();
                runtime.spawn(async move {
                    match TcpListener::from_std(listener) {
                        Ok(listener) => serve(listener, serving).await,
                        Err(e) => eprintln!("chaos proxy {from}->{to}: cannot listen: {e}"),
                    }
                });
                links.insert((from, to), link);
            }
        }
        Ok(Net {
            runtime: Some(runtime),
            links,
        })
    }

    /// The proxy endpoint node `from` dials node `to` at, `tcp://127.0.0.1:PORT`.
    pub fn endpoint(&self, from: usize, to: usize) -> String {
        self.links[&(from, to)].port.endpoint()
    }

    /// Cuts link `from -> to`: live connections close, new ones are refused.
    pub fn cut(&self, from: usize, to: usize) {
        if let Some(link) = self.links.get(&(from, to)) {
            link.cut.send_replace(true);
        }
    }

    /// Heals link `from -> to`.
    pub fn heal(&self, from: usize, to: usize) {
        if let Some(link) = self.links.get(&(from, to)) {
            link.cut.send_replace(false);
        }
    }

    /// Heals every link.
    pub fn heal_all(&self) {
        for link in self.links.values() {
            link.cut.send_replace(false);
        }
    }

    /// Whether link `from -> to` is cut.
    pub fn is_cut(&self, from: usize, to: usize) -> bool {
        self.links.get(&(from, to)).is_some_and(|l| *l.cut.borrow())
    }

    /// The links that are cut.
    pub fn cut_links(&self) -> Vec<(usize, usize)> {
        self.links
            .iter()
            .filter(|(_, l)| *l.cut.borrow())
            .map(|(&k, _)| k)
            .collect()
    }

    /// Points every link into slot `to` at a new address (a replacement node's raft port).
    pub fn retarget(&self, to: usize, target: SocketAddr) {
        for (&(_, t), link) in &self.links {
            if t == to {
                *link.target.lock().unwrap_or_else(|p| p.into_inner()) = target;
            }
        }
    }
}

impl Drop for Net {
    fn drop(&mut self) {
        if let Some(rt) = self.runtime.take() {
            rt.shutdown_background();
        }
    }
}

/// A listener on a port leased from the dev-cluster kit (outside the ephemeral range, and
/// never a port a cluster's node holds), and its lease.
fn leased_listener() -> std::io::Result<(std::net::TcpListener, PortLease)> {
    let mut last = None;
    for _ in 0..20 {
        let lease = lease_port().map_err(std::io::Error::other)?;
        // (Something outside the kit may have bound it since the lease's probe.)
        match std::net::TcpListener::bind(("127.0.0.1", lease.port())) {
            Ok(listener) => return Ok((listener, lease)),
            Err(e) => last = Some(e),
        }
    }
    Err(last.unwrap_or_else(|| std::io::Error::other("no free port")))
}

async fn serve(listener: TcpListener, link: Arc<Link>) {
    loop {
        let Ok((inbound, _)) = listener.accept().await else {
            tokio::time::sleep(Duration::from_millis(10)).await;
            continue;
        };
        let mut cut = link.cut.subscribe();
        if *cut.borrow_and_update() {
            drop(inbound);
            continue;
        }
        let target = *link.target.lock().unwrap_or_else(|p| p.into_inner());
        tokio::spawn(async move {
            let _ = inbound.set_nodelay(true);
            let dial = tokio::time::timeout(DIAL_TIMEOUT, TcpStream::connect(target));
            let mut outbound = tokio::select! {
                r = dial => match r {
                    Ok(Ok(s)) => s,
                    _ => return,
                },
                _ = cut.wait_for(|c| *c) => return,
            };
            let _ = outbound.set_nodelay(true);
            let mut inbound = inbound;
            tokio::select! {
                _ = copy_bidirectional(&mut inbound, &mut outbound) => {}
                _ = cut.wait_for(|c| *c) => {}
            }
            // Dropping both ends closes the connection on both sides.
        });
    }
}

/// `tcp://host:port` -> a socket address.
pub fn socket_addr(endpoint: &str) -> SocketAddr {
    endpoint
        .trim_start_matches("tcp://")
        .parse()
        .unwrap_or_else(|e| panic!("{endpoint} is not tcp://IP:PORT: {e}"))
}
