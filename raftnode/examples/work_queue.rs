//! A work queue on the replicated tuplespace: a producer `out`s jobs, workers take them with a
//! blocking `in`, and every job is taken exactly once even if a node dies meanwhile.
//!
//! Start a cluster (`raftnode up`), then:
//!
//! ```text
//! cargo run -p raftnode --example work_queue -- tcp://127.0.0.1:7201,tcp://127.0.0.1:7202,tcp://127.0.0.1:7203
//! ```

use std::time::Duration;

use raftnode::client::{Client, ClientError};
use tuplespace::{Template, tuple};

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let endpoints: Vec<String> = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "tcp://127.0.0.1:7201,tcp://127.0.0.1:7202,tcp://127.0.0.1:7203".into())
        .split(',')
        .map(str::to_string)
        .collect();

    let mut producer = Client::new(endpoints.clone());
    for n in 0..10 {
        let id = producer
            .out(&tuple!["job", n, format!("payload {n}")])
            .await?;
        println!("queued job {n} as tuple {id}");
    }

    let jobs: Template = r#"("job", ?int, ?str)"#.parse()?;
    let mut workers = Vec::new();
    for w in 0..3 {
        let mut client = Client::new(endpoints.clone());
        let jobs = jobs.clone();
        workers.push(tokio::spawn(async move {
            let mut done = 0;
            loop {
                match client.in_(&jobs, Duration::from_secs(1)).await {
                    Ok((id, job)) => {
                        println!("worker {w} took tuple {id}: {job}");
                        done += 1;
                    }
                    // No job within a second: the queue is drained.
                    Err(ClientError::Timeout) => return Ok::<_, ClientError>(done),
                    Err(e) => return Err(e),
                }
            }
        }));
    }
    let mut total = 0;
    for w in workers {
        total += w.await??;
    }
    println!("{total} jobs taken, each exactly once");
    Ok(())
}
