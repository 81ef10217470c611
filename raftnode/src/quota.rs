//! Fair share at the client endpoint: how many requests one connection, and one source address,
//! may have in flight at once, so that no client can take all of a node's request slots.
//!
//! A REQ socket has one request in flight; a DEALER may pipeline. Beyond
//! [`MAX_IN_FLIGHT_PER_CONNECTION`] on one connection, or [`MAX_IN_FLIGHT_PER_SOURCE`] from one
//! source address (over all its connections), a request is answered `OVERLOADED` at once.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use bytes::Bytes;

/// Requests one connection may have in flight.
pub const MAX_IN_FLIGHT_PER_CONNECTION: usize = 64;

/// Requests one source address may have in flight, over all its connections (a quarter of the
/// node's [`crate::server::MAX_IN_FLIGHT`]).
pub const MAX_IN_FLIGHT_PER_SOURCE: usize = 1024;

#[derive(Default)]
struct Counts {
    per_connection: HashMap<Bytes, usize>,
    per_source: HashMap<String, usize>,
}

/// The in-flight counts of one endpoint.
#[derive(Clone, Default)]
pub struct Quotas {
    counts: Arc<Mutex<Counts>>,
}

/// One request's share; given back when dropped.
pub struct Share {
    counts: Arc<Mutex<Counts>>,
    connection: Bytes,
    source: String,
}

impl Quotas {
    /// Takes a share for a request from `connection` at `source`, or says which limit it is over.
    pub fn acquire(&self, connection: &Bytes, source: &str) -> Result<Share, String> {
        let mut counts = self
            .counts
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        let on_connection = counts.per_connection.get(connection).copied().unwrap_or(0);
        if on_connection >= MAX_IN_FLIGHT_PER_CONNECTION {
            return Err(format!(
                "{on_connection} requests of this connection are in flight (the limit per \
                 connection is {MAX_IN_FLIGHT_PER_CONNECTION}); wait for answers"
            ));
        }
        let from_source = counts.per_source.get(source).copied().unwrap_or(0);
        if from_source >= MAX_IN_FLIGHT_PER_SOURCE {
            return Err(format!(
                "{from_source} requests from {source} are in flight (the limit per address is \
                 {MAX_IN_FLIGHT_PER_SOURCE}); back off and retry"
            ));
        }
        *counts.per_connection.entry(connection.clone()).or_default() += 1;
        *counts.per_source.entry(source.to_string()).or_default() += 1;
        Ok(Share {
            counts: Arc::clone(&self.counts),
            connection: connection.clone(),
            source: source.to_string(),
        })
    }
}

impl Drop for Share {
    fn drop(&mut self) {
        let mut counts = self
            .counts
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        decrement(&mut counts.per_connection, &self.connection);
        decrement(&mut counts.per_source, &self.source);
    }
}

/// Lowers a count, forgetting keys that reach zero (so the maps stay as small as the traffic).
fn decrement<K: std::hash::Hash + Eq>(map: &mut HashMap<K, usize>, key: &K) {
    if let Some(n) = map.get_mut(key) {
        *n -= 1;
        if *n == 0 {
            map.remove(key);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shares_are_bounded_per_connection_and_per_source_and_given_back() {
        let quotas = Quotas::default();
        let conn = Bytes::from_static(b"10.0.0.1:5#1");
        let held: Vec<Share> = (0..MAX_IN_FLIGHT_PER_CONNECTION)
            .map(|_| quotas.acquire(&conn, "10.0.0.1:5").unwrap())
            .collect();
        let err = quotas.acquire(&conn, "10.0.0.1:5").err().unwrap();
        assert!(err.contains("per connection"), "{err}");
        // Another connection from the same address still gets in, until the address's cap.
        let mut more = Vec::new();
        let mut n = 2;
        loop {
            let other = Bytes::from(format!("10.0.0.1:5#{n}"));
            match quotas.acquire(&other, "10.0.0.1:5") {
                Ok(share) => more.push(share),
                Err(e) => {
                    assert!(e.contains("per address"), "{e}");
                    break;
                }
            }
            n += 1;
        }
        assert_eq!(held.len() + more.len(), MAX_IN_FLIGHT_PER_SOURCE);
        // Another address is not held back, and everything is given back on drop.
        assert!(
            quotas.acquire(&conn, "10.0.0.2:5").is_err(),
            "same connection"
        );
        assert!(
            quotas
                .acquire(&Bytes::from_static(b"b#1"), "10.0.0.2:5")
                .is_ok()
        );
        drop(held);
        drop(more);
        let counts = quotas.counts.lock().unwrap();
        assert!(counts.per_connection.is_empty() && counts.per_source.is_empty());
    }
}
