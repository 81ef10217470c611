//! `serve` and `up`: the web app, alone against a cluster or with a local cluster of its own.

use std::net::SocketAddr;
use std::time::Duration;

use super::Context;
use crate::connect;
use crate::error::{Error, Result};

/// `serve [--listen ADDR]`: the web app against the cluster the global options name.
pub async fn serve(
    ctx: &mut Context,
    listen: SocketAddr,
    trusted_proxies: Vec<std::net::IpAddr>,
) -> Result<()> {
    let endpoints = ctx.endpoints()?;
    let options = connect::client_options(ctx.timeout, endpoints.len());
    crate::web::serve(endpoints, options, listen, trusted_proxies, |addr| {
        println!("serving the microblog on http://{addr}/ (Ctrl-C stops)");
    })
    .await
    .map_err(|e| Error::failed(format!("cannot serve on {listen}: {e}")))
}

/// `up [--listen ADDR]`: the nodes of the cluster file (each a child process running this same
/// program's `node` command, which is `raftnode`'s command line) and the web app, until Ctrl-C.
pub async fn up(ctx: &mut Context, listen: SocketAddr) -> Result<()> {
    let file = super::cluster::cluster_file_to_start(ctx, "up")?;
    let config = raftnode::config::ClusterConfig::load(&file)
        .map_err(|e| Error::usage(format!("{}: {e}", file.display())))?;
    let exe = std::env::current_exe()
        .map_err(|e| Error::failed(format!("cannot find this program: {e}")))?;
    let endpoints = config.client_endpoints();
    let options =
        connect::client_options(ctx.timeout.max(Duration::from_secs(10)), endpoints.len());
    let nodes = raftnode::launch::up(exe, &["node"], &config, &file, "info");
    let probe = endpoints.clone();
    let web = crate::web::serve(endpoints, options, listen, Vec::new(), move |addr| {
        println!("web app: http://{addr}/ (starting the cluster...)");
        // Said again, last, once the cluster answers, so it is not lost among the nodes' logs.
        tokio::spawn(async move {
            let mut client = raftnode::client::Client::new(probe);
            let ready = tokio::time::timeout(Duration::from_secs(60), client.cluster_id()).await;
            if matches!(ready, Ok(Ok(_))) {
                println!("web app: open http://{addr}/  (Ctrl-C stops everything)");
            }
        });
    });
    tokio::select! {
        done = nodes => done.map_err(|e| Error::failed(format!("{e:#}"))),
        served = web => served.map_err(|e| Error::failed(format!("cannot serve on {listen}: {e}"))),
    }
}
