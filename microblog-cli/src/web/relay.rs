//! Writes signed in the browser, relayed by the server.
//!
//! A browser keeps its user's Ed25519 private key (WebCrypto, non-extractable, in IndexedDB); the
//! server never sees it. A write takes two round trips:
//!
//! 1. `POST /api/prepare` with what to do (register, post, follow, unfollow, delete) and, for a
//!    post, the post's own signature, made in the browser over the post's signing bytes (built
//!    there from the documented format). The server builds the protocol request(s) — session,
//!    request number, acknowledgement, operation, user, key, cluster, expiry — and answers a
//!    ticket and, for each request, the exact bytes to sign (`"raftnode-request-v1\0"` and the
//!    encoded inner request).
//! 2. `POST /api/submit` with the ticket and the signatures, in order. The server puts each
//!    signature beside its bytes and sends the requests to the cluster ([`Client::relay`]); the
//!    cluster verifies them against the user's registered key like any signed request.
//!
//! Each browser gets one session of the server's per user (random, owned by that user in the
//! cluster from its first request), with request numbers handed out at prepare. Sessions are keyed
//! by the user *and a secret token the browser keeps* (random, in IndexedDB beside the key): a
//! caller who names alice without her token gets a session of its own, never sees alice's session
//! id or numbers, and so can neither take her next number nor claim her session at the cluster.
//! A ticket lives [`TICKET_LIFE`]; a request number whose ticket expired unsubmitted counts as
//! done for the acknowledgement (it can never be submitted any more). A ticket whose submission
//! ended with an unknown outcome is kept, with its signed requests, so the browser can submit it
//! again: the same signed bytes, so the cluster applies it at most once. A server that lied could ask the browser
//! to sign another request than the page describes; it could not forge a post's content, which
//! carries its own signature, checked by every reader.

use std::collections::{BTreeSet, HashMap};
use std::net::IpAddr;
use std::time::{Duration, Instant};

use prost::Message as _;
use raftnode::identity::{MAX_WRITE_VALIDITY_MS, REQUEST_DOMAIN};
use raftnode::proto;

/// How long a prepared ticket waits for its signatures.
pub const TICKET_LIFE: Duration = Duration::from_secs(60);

/// The most tickets waiting at once (the oldest is dropped beyond it).
pub const MAX_TICKETS: usize = 10_000;

/// The most tickets waiting from one client address (so one client cannot crowd out the others'
/// tickets).
pub const MAX_TICKETS_PER_ADDR: usize = 64;

/// The most users with a session at the server at once (the least recently used is forgotten).
pub const MAX_SESSIONS: usize = 10_000;

/// How long past cluster time now a relayed write stays valid.
const VALID_FOR_MS: u64 = 5 * 60 * 1000;

/// A user's session at the server.
#[derive(Debug)]
struct Session {
    id: u64,
    next_seq: u64,
    /// Request numbers handed out and not yet answered or abandoned.
    open: BTreeSet<u64>,
    used: Instant,
}

impl Session {
    fn new() -> Session {
        Session {
            id: rand_session(),
            next_seq: 1,
            open: BTreeSet::new(),
            used: Instant::now(),
        }
    }

    /// Every number below this is answered or abandoned.
    fn ack(&self) -> u64 {
        self.open
            .first()
            .map_or(self.next_seq - 1, |first| first - 1)
    }
}

fn rand_session() -> u64 {
    loop {
        let s = rand::random::<u64>();
        if s != 0 {
            return s;
        }
    }
}

/// A prepared request: the inner request's bytes to sign.
#[derive(Debug, Clone)]
pub struct Prepared {
    /// The encoded inner request.
    pub signed: Vec<u8>,
    /// What the browser signs: [`REQUEST_DOMAIN`] and `signed`.
    pub to_sign: Vec<u8>,
}

/// A ticket: the requests one action needs, for one user.
#[derive(Debug)]
struct Ticket {
    addr: IpAddr,
    /// The session's key: the user and the hash of the browser's token.
    owner: String,
    session: u64,
    seqs: Vec<u64>,
    requests: Vec<Prepared>,
    /// The signed requests, once submitted with an unknown outcome (resubmitted as they are).
    sealed: Option<Vec<proto::Request>>,
    made: Instant,
}

/// Who prepares a write: the session's key ([`owner`]), the user, and the user's public key.
#[derive(Clone, Copy, Debug)]
pub struct Writer<'a> {
    /// The session's key.
    pub owner: &'a str,
    /// The user the requests name.
    pub user: &'a str,
    /// The key that will sign them (32 bytes).
    pub public_key: &'a [u8],
}

/// The key of `user`'s session for the browser holding `token`.
pub fn owner(user: &str, token: &[u8]) -> String {
    format!("{user}\0{}", blake3::hash(token).to_hex())
}

/// Sessions and tickets.
#[derive(Debug, Default)]
pub struct Relay {
    sessions: HashMap<String, Session>,
    tickets: HashMap<String, Ticket>,
}

impl Relay {
    /// Prepares `ops` as `user`'s (key `public_key`) requests for cluster `cluster_id`, valid for
    /// a while past cluster time `now_ms`: a ticket and the requests' bytes to sign.
    pub fn prepare(
        &mut self,
        addr: IpAddr,
        Writer {
            owner,
            user,
            public_key,
        }: Writer<'_>,
        cluster_id: u64,
        now_ms: u64,
        ops: Vec<proto::request::Op>,
    ) -> Option<(String, Vec<Prepared>)> {
        self.expire();
        if self.tickets.values().filter(|t| t.addr == addr).count() >= MAX_TICKETS_PER_ADDR {
            return None;
        }
        if !self.sessions.contains_key(owner) && self.sessions.len() >= MAX_SESSIONS {
            let oldest = self
                .sessions
                .iter()
                .min_by_key(|(_, s)| s.used)
                .map(|(u, _)| u.clone());
            if let Some(oldest) = oldest {
                self.sessions.remove(&oldest);
            }
        }
        if self.tickets.len() >= MAX_TICKETS {
            let oldest = self
                .tickets
                .iter()
                .min_by_key(|(_, t)| t.made)
                .map(|(k, _)| k.clone());
            if let Some(oldest) = oldest {
                self.drop_ticket(&oldest);
            }
        }
        let session = self
            .sessions
            .entry(owner.to_string())
            .or_insert_with(Session::new);
        session.used = Instant::now();
        let mut seqs = Vec::new();
        let mut requests = Vec::new();
        for op in ops {
            let seq = session.next_seq;
            session.next_seq += 1;
            session.open.insert(seq);
            let inner = proto::Request {
                session: session.id,
                seq,
                ack: session.ack(),
                op: Some(op),
                user: user.to_string(),
                public_key: public_key.to_vec(),
                cluster_id,
                not_after_ms: now_ms + VALID_FOR_MS.min(MAX_WRITE_VALIDITY_MS),
                ..Default::default()
            };
            let signed = inner.encode_to_vec();
            let mut to_sign = REQUEST_DOMAIN.to_vec();
            to_sign.extend_from_slice(&signed);
            seqs.push(seq);
            requests.push(Prepared { signed, to_sign });
        }
        let id = hex::encode(rand::random::<[u8; 16]>());
        let session = session.id;
        self.tickets.insert(
            id.clone(),
            Ticket {
                addr,
                owner: owner.to_string(),
                session,
                seqs,
                requests: requests.clone(),
                sealed: None,
                made: Instant::now(),
            },
        );
        Some((id, requests))
    }

    /// The signed requests of ticket `id`, given its signatures in order (the ticket is used up).
    pub fn take(
        &mut self,
        id: &str,
        signatures: &[Vec<u8>],
    ) -> Result<Vec<proto::Request>, String> {
        self.expire();
        let Some(ticket) = self.tickets.get(id) else {
            return Err("no such ticket (it expired or was used): prepare again".into());
        };
        if let Some(sealed) = &ticket.sealed {
            // A resubmission after an unknown outcome: the same signed requests.
            let sealed = sealed.clone();
            self.tickets.remove(id);
            return Ok(sealed);
        }
        if signatures.len() != ticket.requests.len() {
            return Err(format!(
                "the ticket has {} requests to sign, not {}",
                ticket.requests.len(),
                signatures.len()
            ));
        }
        let requests = ticket
            .requests
            .iter()
            .zip(signatures)
            .map(|(p, sig)| proto::Request {
                signed: p.signed.clone(),
                signature: sig.clone(),
                ..Default::default()
            })
            .collect();
        // The numbers stay open until `done`.
        self.tickets.remove(id);
        Ok(requests)
    }

    /// The submission of ticket `id` (its signed `requests`) ended with an unknown outcome:
    /// keep it, so that it can be submitted again as it is, until it expires.
    pub fn keep(
        &mut self,
        id: &str,
        addr: IpAddr,
        (owner, session, seqs): (String, u64, Vec<u64>),
        requests: Vec<proto::Request>,
    ) {
        self.tickets.insert(
            id.to_string(),
            Ticket {
                addr,
                owner,
                session,
                seqs,
                requests: Vec::new(),
                sealed: Some(requests),
                made: Instant::now(),
            },
        );
    }

    /// The requests `seqs` of session `session` (key `owner`) were answered (or can no longer
    /// be).
    pub fn done(&mut self, owner: &str, session: u64, seqs: &[u64]) {
        if let Some(s) = self.sessions.get_mut(owner)
            && s.id == session
        {
            for seq in seqs {
                s.open.remove(seq);
            }
        }
    }

    /// The session key, session and numbers of ticket `id`.
    pub fn ticket_of(&self, id: &str) -> Option<(String, u64, Vec<u64>)> {
        self.tickets
            .get(id)
            .map(|t| (t.owner.clone(), t.session, t.seqs.clone()))
    }

    /// Forgets session `session` (key `owner`): its requests came back refused in a way a new
    /// session mends (expired, or claimed by another user): the next prepare starts a new one.
    pub fn renew(&mut self, owner: &str, session: u64) {
        if self.sessions.get(owner).is_some_and(|s| s.id == session) {
            self.sessions.remove(owner);
        }
    }

    fn drop_ticket(&mut self, id: &str) {
        if let Some(t) = self.tickets.remove(id) {
            self.done(&t.owner, t.session, &t.seqs);
        }
    }

    fn expire(&mut self) {
        let stale: Vec<String> = self
            .tickets
            .iter()
            .filter(|(_, t)| t.made.elapsed() > TICKET_LIFE)
            .map(|(k, _)| k.clone())
            .collect();
        for id in stale {
            self.drop_ticket(&id);
        }
    }

    /// How many tickets wait (for tests and status).
    pub fn waiting(&self) -> usize {
        self.tickets.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use raftnode::identity::{Identity, open};

    const HOME: IpAddr = IpAddr::V4(std::net::Ipv4Addr::LOCALHOST);

    /// `user` (session token `token`, key `key`) prepares `ops` for cluster `cluster` at `now`.
    fn prep(
        relay: &mut Relay,
        addr: IpAddr,
        (user, token, key): (&str, &[u8], &[u8]),
        (cluster, now): (u64, u64),
        ops: Vec<proto::request::Op>,
    ) -> Option<(String, Vec<Prepared>)> {
        let owner = owner(user, token);
        let writer = Writer {
            owner: &owner,
            user,
            public_key: key,
        };
        relay.prepare(addr, writer, cluster, now, ops)
    }

    fn count() -> proto::request::Op {
        proto::request::Op::Count(proto::Count::default())
    }

    #[test]
    fn a_prepared_request_signed_elsewhere_opens_as_its_user() {
        let mut relay = Relay::default();
        let alice = Identity::from_seed("alice", [3; 32]);
        let (ticket, prepared) = prep(
            &mut relay,
            HOME,
            ("alice", b"t", &alice.public_key()),
            (7, 1_000),
            vec![count()],
        )
        .unwrap();
        let signature = alice.sign(&prepared[0].to_sign).to_vec();
        let (key, session, seqs) = relay.ticket_of(&ticket).unwrap();
        assert_eq!((key, seqs.as_slice()), (owner("alice", b"t"), &[1u64][..]));
        let requests = relay.take(&ticket, &[signature]).unwrap();
        let opened = open(requests[0].clone(), 7).unwrap();
        assert_eq!(opened.signer.unwrap().user, "alice");
        assert_eq!(opened.request.session, session);
        assert!(opened.request.not_after_ms > 1_000);
        // Used up.
        assert!(relay.take(&ticket, &[vec![0; 64]]).is_err());
    }

    #[test]
    fn another_token_gets_another_session_and_unknown_outcomes_resubmit() {
        let mut relay = Relay::default();
        let key = [1u8; 32];
        let (_, mine) = prep(
            &mut relay,
            HOME,
            ("alice", b"mine", &key),
            (1, 0),
            vec![count()],
        )
        .unwrap();
        let (_, theirs) = prep(
            &mut relay,
            HOME,
            ("alice", b"theirs", &key),
            (1, 0),
            vec![count()],
        )
        .unwrap();
        let mine = proto::Request::decode(mine[0].signed.as_slice()).unwrap();
        let theirs = proto::Request::decode(theirs[0].signed.as_slice()).unwrap();
        assert_ne!(
            mine.session, theirs.session,
            "a caller without the token never sees mine"
        );
        assert_eq!((mine.seq, theirs.seq), (1, 1));
        // An unknown outcome: kept, and the same signed requests come back on resubmission.
        let (t, p) = prep(&mut relay, HOME, ("bob", b"t", &key), (1, 0), vec![count()]).unwrap();
        let info = relay.ticket_of(&t).unwrap();
        let sealed = relay.take(&t, &[vec![7; 64]]).unwrap();
        relay.keep(&t, HOME, info, sealed.clone());
        let again = relay.take(&t, &[]).unwrap();
        assert_eq!(again, sealed);
        assert_eq!(again[0].signed, p[0].signed);
    }

    #[test]
    fn the_acknowledgement_never_passes_an_open_number() {
        let mut relay = Relay::default();
        let key = [1u8; 32];
        let (t1, _) = prep(&mut relay, HOME, ("bob", b"t", &key), (1, 0), vec![count()]).unwrap();
        let (t2, p2) = prep(
            &mut relay,
            HOME,
            ("bob", b"t", &key),
            (1, 0),
            vec![count(), count()],
        )
        .unwrap();
        let inner = proto::Request::decode(p2[1].signed.as_slice()).unwrap();
        assert_eq!((inner.seq, inner.ack), (3, 0), "1 and 2 are open");
        let (_, session, seqs) = relay.ticket_of(&t2).unwrap();
        relay.done(&owner("bob", b"t"), session, &seqs);
        let (_, p3) = prep(&mut relay, HOME, ("bob", b"t", &key), (1, 0), vec![count()]).unwrap();
        let inner = proto::Request::decode(p3[0].signed.as_slice()).unwrap();
        assert_eq!((inner.seq, inner.ack), (4, 0), "1 is still open");
        let (_, _, seqs) = relay.ticket_of(&t1).unwrap();
        relay.done(&owner("bob", b"t"), session, &seqs);
        let (_, p4) = prep(&mut relay, HOME, ("bob", b"t", &key), (1, 0), vec![count()]).unwrap();
        let inner = proto::Request::decode(p4[0].signed.as_slice()).unwrap();
        assert_eq!((inner.seq, inner.ack), (5, 3), "4 is open");
        // One address cannot hold more than its share of waiting tickets.
        let other = IpAddr::V4(std::net::Ipv4Addr::new(127, 0, 0, 2));
        for _ in 0..MAX_TICKETS_PER_ADDR {
            prep(
                &mut relay,
                other,
                ("mallory", b"t", &key),
                (1, 0),
                vec![count()],
            )
            .unwrap();
        }
        assert!(
            prep(
                &mut relay,
                other,
                ("mallory", b"t", &key),
                (1, 0),
                vec![count()]
            )
            .is_none()
        );
        assert!(prep(&mut relay, HOME, ("bob", b"t", &key), (1, 0), vec![count()]).is_some());
        // A wrong number of signatures is refused, the ticket kept.
        let (t5, _) = prep(&mut relay, HOME, ("bob", b"t", &key), (1, 0), vec![count()]).unwrap();
        assert!(relay.take(&t5, &[]).is_err());
        assert!(relay.ticket_of(&t5).is_some());
    }
}
