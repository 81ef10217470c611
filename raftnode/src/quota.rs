//! Fair share at the client endpoint, per source address.
//!
//! One connection cannot crowd out the others: the router reads no more of a connection's
//! requests while [`MAX_IN_FLIGHT_PER_CONNECTION`] of them are unanswered (TCP's back-pressure
//! then slows the sender; see [`crate::guard`]). One address with many connections is held to
//! [`MAX_IN_FLIGHT_PER_SOURCE`] requests in flight over all of them; past that a request is
//! answered `OVERLOADED` at once.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

/// Requests of one connection the node holds unanswered (a REQ socket has one; a DEALER may
/// pipeline).
pub const MAX_IN_FLIGHT_PER_CONNECTION: usize = 64;

/// Requests one source address may have in flight, over all its connections (a quarter of the
/// node's [`crate::server::MAX_IN_FLIGHT`]).
pub const MAX_IN_FLIGHT_PER_SOURCE: usize = 1024;

/// The in-flight counts of one endpoint, by source address.
#[derive(Clone, Default)]
pub struct Quotas {
    per_source: Arc<Mutex<HashMap<String, usize>>>,
}

/// One request's share; given back when dropped.
pub struct Share {
    per_source: Arc<Mutex<HashMap<String, usize>>>,
    source: String,
}

impl Quotas {
    /// Takes a share for a request from `source`, or says why not.
    pub fn acquire(&self, source: &str) -> Result<Share, String> {
        let mut counts = self
            .per_source
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        let from_source = counts.get(source).copied().unwrap_or(0);
        if from_source >= MAX_IN_FLIGHT_PER_SOURCE {
            return Err(format!(
                "{from_source} requests from {source} are in flight (the limit per address is \
                 {MAX_IN_FLIGHT_PER_SOURCE}); back off and retry"
            ));
        }
        *counts.entry(source.to_string()).or_default() += 1;
        Ok(Share {
            per_source: Arc::clone(&self.per_source),
            source: source.to_string(),
        })
    }
}

impl Drop for Share {
    fn drop(&mut self) {
        let mut counts = self
            .per_source
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        if let Some(n) = counts.get_mut(&self.source) {
            *n -= 1;
            if *n == 0 {
                counts.remove(&self.source);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shares_are_bounded_per_source_and_given_back() {
        let quotas = Quotas::default();
        let held: Vec<Share> = (0..MAX_IN_FLIGHT_PER_SOURCE)
            .map(|_| quotas.acquire("10.0.0.1").unwrap())
            .collect();
        let err = quotas.acquire("10.0.0.1").err().unwrap();
        assert!(err.contains("per address"), "{err}");
        assert!(
            quotas.acquire("10.0.0.2").is_ok(),
            "another address is not held back"
        );
        drop(held);
        assert!(quotas.per_source.lock().unwrap().is_empty());
        assert!(quotas.acquire("10.0.0.1").is_ok());
    }
}
