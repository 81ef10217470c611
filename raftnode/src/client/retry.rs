//! What a client does after each attempt of one call, without any I/O: which endpoint to try
//! next, whether to wait, renew its session or give up, and when an outcome is unknown. The
//! async [`Client`](super::Client) and the simulator's clients both follow it, so the simulator
//! tests the very rules programs run by.

use std::time::{Duration, Instant};

use super::ClientError;
use crate::proto::{self, error::Code, response};

/// The endpoints a client knows and the one it talks to.
#[derive(Clone, Debug)]
pub struct Route {
    endpoints: Vec<String>,
    current: usize,
}

impl Route {
    /// The route over `endpoints`, starting at `first` (modulo their number).
    pub fn new(endpoints: Vec<String>, first: usize) -> Route {
        let current = if endpoints.is_empty() {
            0
        } else {
            first % endpoints.len()
        };
        Route { endpoints, current }
    }

    /// Every endpoint known (leader hints may have added some).
    pub fn endpoints(&self) -> &[String] {
        &self.endpoints
    }

    /// The endpoint talked to now (`None` when none is known).
    pub fn current(&self) -> Option<&str> {
        self.endpoints.get(self.current).map(String::as_str)
    }

    /// Moves to the next endpoint.
    pub fn rotate(&mut self) {
        if !self.endpoints.is_empty() {
            self.current = (self.current + 1) % self.endpoints.len();
        }
    }

    /// Moves to the leader's endpoint if an answer named one other than the current; a new,
    /// well-formed endpoint is added. Whether it moved.
    pub fn follow_hint(&mut self, leader_url: &str) -> bool {
        if leader_url.is_empty() || self.current() == Some(leader_url) {
            return false;
        }
        let index = match self.endpoints.iter().position(|e| e == leader_url) {
            Some(i) => i,
            None => {
                if crate::config::check_endpoint(leader_url).is_err() {
                    return false;
                }
                self.endpoints.push(leader_url.to_string());
                self.endpoints.len() - 1
            }
        };
        self.current = index;
        true
    }
}

/// How one attempt ended.
#[derive(Debug)]
pub enum Attempt {
    /// A node answered.
    Answer(Box<proto::Response>),
    /// No answer: the connect, send or receive failed or timed out. `sent` when the request may
    /// have reached the node (then it may have been applied).
    Failed {
        /// What went wrong.
        what: String,
        /// Whether the request may have reached the node.
        sent: bool,
    },
}

/// What to do next.
#[derive(Debug, PartialEq)]
pub enum Next {
    /// The call is over, with this result.
    Done(Result<response::Result, ClientError>),
    /// Send again now, under a fresh session (the old one expired, and no earlier attempt can
    /// have been applied).
    RenewSession,
    /// Send again after this pause (to the route's current endpoint).
    Retry(Duration),
}

/// The first pause between attempts; doubled after each up to [`MAX_BACKOFF`].
const FIRST_BACKOFF: Duration = Duration::from_millis(20);
/// The longest pause between attempts.
const MAX_BACKOFF: Duration = Duration::from_millis(200);

/// The state of one call across its attempts.
#[derive(Debug)]
pub struct Call {
    is_write: bool,
    /// Stay on one endpoint (no rotation, no leader hints).
    pinned: bool,
    follow_leader: bool,
    deadline: Instant,
    backoff: Duration,
    renewed: bool,
    /// Whether an earlier attempt may have been applied: it reached a node and no definite
    /// answer came back. Such a request is never sent as a new one.
    maybe_applied: bool,
    tried: Vec<String>,
    last: String,
    /// The last attempt's answer when it was a transient membership refusal: what the call
    /// ends with if the window closes after it (instead of [`ClientError::NoLeader`]).
    last_typed: Option<ClientError>,
}

/// Answers that say "not now, maybe elsewhere": the call retries, following the leader hint.
/// The membership ones end a call whose window closes as their own [`ClientError`].
fn is_transient(code: Code) -> bool {
    matches!(
        code,
        Code::Unavailable
            | Code::Overloaded
            | Code::ChangeInProgress
            | Code::HandingOver
            | Code::ChangeTimedOut
    )
}

impl Call {
    /// A call started `now` that may keep trying for `window`.
    pub fn new(
        is_write: bool,
        pinned: bool,
        follow_leader: bool,
        now: Instant,
        window: Duration,
    ) -> Call {
        Call {
            is_write,
            pinned,
            follow_leader,
            deadline: now + window,
            backoff: FIRST_BACKOFF,
            renewed: false,
            maybe_applied: false,
            tried: Vec::new(),
            last: String::new(),
            last_typed: None,
        }
    }

    /// Notes that an attempt goes to `endpoint`.
    pub fn trying(&mut self, endpoint: &str) {
        if !self.tried.iter().any(|e| e == endpoint) {
            self.tried.push(endpoint.to_string());
        }
    }

    /// Whether an earlier attempt of this call may have been applied.
    pub fn maybe_applied(&self) -> bool {
        self.maybe_applied
    }

    /// Judges one attempt at `now`, moving `route` as the answer suggests.
    pub fn judge(&mut self, route: &mut Route, attempt: Attempt, now: Instant) -> Next {
        let endpoint = route.current().unwrap_or_default().to_string();
        match attempt {
            Attempt::Answer(resp) => match resp.result {
                Some(response::Result::Error(e)) => match Code::try_from(e.code) {
                    Ok(code) if is_transient(code) => {
                        // OVERLOADED, CHANGE_IN_PROGRESS and HANDING_OVER are refused before
                        // anything is proposed; UNAVAILABLE and CHANGE_TIMED_OUT may come after
                        // the proposal (a leader change, a commit timeout).
                        self.maybe_applied |=
                            matches!(code, Code::Unavailable | Code::ChangeTimedOut);
                        self.last = format!("{endpoint}: {}", e.message);
                        self.last_typed = match code {
                            Code::Unavailable | Code::Overloaded => None,
                            _ => Some(super::error_of(code, e.message)),
                        };
                        if !self.pinned && !route.follow_hint(&resp.leader_client_url) {
                            route.rotate();
                        }
                        self.pause(now)
                    }
                    Ok(Code::SessionExpired) if self.is_write && self.maybe_applied => {
                        Next::Done(Err(ClientError::OutcomeUnknown(format!(
                            "an earlier attempt of this request may have been applied, and its \
                             session is gone now ({}); it was not sent again",
                            e.message
                        ))))
                    }
                    Ok(Code::SessionExpired) if self.is_write && !self.renewed => {
                        // Refused, and no earlier attempt can have been applied: a fresh session
                        // may send it.
                        self.renewed = true;
                        Next::RenewSession
                    }
                    Ok(Code::TimedOut) => Next::Done(Err(ClientError::Timeout)),
                    Ok(code) => Next::Done(Err(super::error_of(code, e.message))),
                    Err(_) => Next::Done(Err(ClientError::Protocol(e.message))),
                },
                Some(result) => {
                    if !self.pinned && self.follow_leader {
                        route.follow_hint(&resp.leader_client_url);
                    }
                    Next::Done(Ok(result))
                }
                None => Next::Done(Err(ClientError::Protocol("an empty answer".into()))),
            },
            Attempt::Failed { what, sent } => {
                self.maybe_applied |= sent;
                self.last = format!("{endpoint}: {what}");
                self.last_typed = None;
                if !self.pinned {
                    route.rotate();
                }
                self.pause(now)
            }
        }
    }

    /// Waits before the next attempt, or gives up when the window would close meanwhile: with
    /// the last answer's own error if it was a transient membership refusal, else
    /// [`ClientError::NoLeader`].
    fn pause(&mut self, now: Instant) -> Next {
        if now + self.backoff >= self.deadline {
            if let Some(typed) = self.last_typed.take() {
                return Next::Done(Err(typed));
            }
            return Next::Done(Err(ClientError::NoLeader {
                tried: std::mem::take(&mut self.tried),
                last: std::mem::take(&mut self.last),
            }));
        }
        let pause = self.backoff;
        self.backoff = (self.backoff * 2).min(MAX_BACKOFF);
        Next::Retry(pause)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::answer::{error, respond};

    fn route() -> Route {
        Route::new(
            vec!["tcp://127.0.0.1:1".into(), "tcp://127.0.0.1:2".into()],
            0,
        )
    }

    #[test]
    fn a_write_whose_attempt_may_have_applied_is_never_renewed() {
        let now = Instant::now();
        let mut call = Call::new(true, false, true, now, Duration::from_secs(5));
        let mut r = route();
        let lost = Attempt::Failed {
            what: "no answer".into(),
            sent: true,
        };
        assert!(matches!(call.judge(&mut r, lost, now), Next::Retry(_)));
        assert_eq!(r.current(), Some("tcp://127.0.0.1:2"));
        let expired = Attempt::Answer(Box::new(respond(error(Code::SessionExpired, "gone"))));
        assert!(matches!(
            call.judge(&mut r, expired, now),
            Next::Done(Err(ClientError::OutcomeUnknown(_)))
        ));
    }

    #[test]
    fn an_unsent_write_renews_its_session_once() {
        let now = Instant::now();
        let mut call = Call::new(true, false, true, now, Duration::from_secs(5));
        let mut r = route();
        let expired = || Attempt::Answer(Box::new(respond(error(Code::SessionExpired, "gone"))));
        assert_eq!(call.judge(&mut r, expired(), now), Next::RenewSession);
        assert!(matches!(
            call.judge(&mut r, expired(), now),
            Next::Done(Err(ClientError::SessionExpired(_)))
        ));
    }

    #[test]
    fn unavailable_follows_the_hint_and_backs_off_until_the_window_closes() {
        let now = Instant::now();
        let mut call = Call::new(false, false, true, now, Duration::from_millis(100));
        let mut r = route();
        let mut busy = respond(error(Code::Unavailable, "no leader"));
        busy.leader_client_url = "tcp://127.0.0.1:3".into();
        let mut pauses = Vec::new();
        let mut at = now;
        loop {
            call.trying(r.current().unwrap());
            match call.judge(&mut r, Attempt::Answer(Box::new(busy.clone())), at) {
                Next::Retry(p) => {
                    pauses.push(p);
                    at += p;
                }
                Next::Done(Err(ClientError::NoLeader { tried, last })) => {
                    assert!(last.contains("no leader"), "{last}");
                    assert!(
                        tried.contains(&"tcp://127.0.0.1:3".to_string()),
                        "{tried:?}"
                    );
                    break;
                }
                other => panic!("{other:?}"),
            }
        }
        assert_eq!(r.current(), Some("tcp://127.0.0.1:3"));
        assert_eq!(pauses[..2], [FIRST_BACKOFF, FIRST_BACKOFF * 2]);
        assert!(at < now + Duration::from_millis(100));
    }

    /// An answer with `code` and `message`, naming node 3 as the leader.
    fn answer(code: Code, message: &str) -> Attempt {
        let mut resp = respond(error(code, message));
        resp.leader_client_url = "tcp://127.0.0.1:3".into();
        Attempt::Answer(Box::new(resp))
    }

    /// Runs a read-only call (a membership change is one) with a 100 ms window until it ends,
    /// answering attempt `n` with `attempt(n)`: its error, its pauses, where the route ended,
    /// and whether an attempt may have been applied.
    fn run(
        mut attempt: impl FnMut(usize) -> Attempt,
    ) -> (ClientError, Vec<Duration>, Option<String>, bool) {
        let now = Instant::now();
        let mut call = Call::new(false, false, true, now, Duration::from_millis(100));
        let mut r = route();
        let mut pauses = Vec::new();
        let mut at = now;
        for n in 0.. {
            call.trying(r.current().unwrap());
            match call.judge(&mut r, attempt(n), at) {
                Next::Retry(p) => {
                    pauses.push(p);
                    at += p;
                }
                Next::Done(Err(e)) => {
                    return (
                        e,
                        pauses,
                        r.current().map(String::from),
                        call.maybe_applied(),
                    );
                }
                other => panic!("attempt {n}: {other:?}"),
            }
        }
        unreachable!()
    }

    #[test]
    fn transient_membership_answers_are_retried_like_unavailable_and_end_as_themselves() {
        let (unavailable, pauses, at, _) = run(|_| answer(Code::Unavailable, "no leader"));
        assert!(
            matches!(unavailable, ClientError::NoLeader { .. }),
            "{unavailable:?}"
        );
        let busy = || "busy".to_string();
        let cases = [
            (
                Code::ChangeInProgress,
                ClientError::ChangeInProgress(busy()),
            ),
            (Code::HandingOver, ClientError::HandingOver(busy())),
            (Code::ChangeTimedOut, ClientError::ChangeTimedOut(busy())),
        ];
        for (code, want) in cases {
            let (e, typed_pauses, typed_at, _) = run(|_| answer(code, "busy"));
            assert_eq!(e, want, "{code:?}");
            // The same pauses, and the same leader hint followed, as for UNAVAILABLE.
            assert_eq!(typed_pauses, pauses, "{code:?}");
            assert_eq!(typed_at, at, "{code:?}");
            assert_eq!(typed_at.as_deref(), Some("tcp://127.0.0.1:3"));
        }
    }

    #[test]
    fn the_last_attempt_decides_how_a_closed_window_reads() {
        // A typed answer, then no answer at all: nobody answered last, so no leader.
        let (e, _, _, _) = run(|n| {
            if n == 0 {
                answer(Code::ChangeInProgress, "busy")
            } else {
                Attempt::Failed {
                    what: "connect failed".into(),
                    sent: false,
                }
            }
        });
        match e {
            ClientError::NoLeader { last, .. } => {
                assert!(last.contains("connect failed"), "{last}")
            }
            other => panic!("{other:?}"),
        }
        // UNAVAILABLE first, then the leader says a change is in progress: that is what stands.
        let (e, _, _, _) = run(|n| {
            if n < 2 {
                answer(Code::Unavailable, "no leader")
            } else {
                answer(Code::ChangeInProgress, "busy")
            }
        });
        assert_eq!(e, ClientError::ChangeInProgress("busy".into()));
        // And a typed answer followed by UNAVAILABLE reads as no leader again.
        let (e, _, _, _) = run(|n| {
            if n == 0 {
                answer(Code::HandingOver, "handing over")
            } else {
                answer(Code::Unavailable, "no leader")
            }
        });
        assert!(matches!(e, ClientError::NoLeader { .. }), "{e:?}");
    }

    #[test]
    fn only_a_membership_change_that_was_proposed_may_have_been_applied() {
        for (code, proposed) in [
            (Code::ChangeInProgress, false),
            (Code::HandingOver, false),
            (Code::Overloaded, false),
            (Code::ChangeTimedOut, true),
            (Code::Unavailable, true),
        ] {
            let (_, _, _, maybe_applied) = run(|_| answer(code, "busy"));
            assert_eq!(maybe_applied, proposed, "{code:?}");
        }
    }

    #[test]
    fn definite_membership_refusals_end_the_call_at_once() {
        let no = || "no".to_string();
        let cases = [
            (Code::NotCaughtUp, ClientError::NotCaughtUp(no())),
            (Code::NotMember, ClientError::NotMember(no())),
            (Code::RemovedId, ClientError::RemovedId(no())),
            (Code::InvalidEndpoint, ClientError::InvalidEndpoint(no())),
            (Code::OnlyVoter, ClientError::OnlyVoter(no())),
        ];
        for (code, want) in cases {
            let now = Instant::now();
            let mut call = Call::new(false, false, true, now, Duration::from_secs(5));
            let mut r = route();
            match call.judge(&mut r, answer(code, "no"), now) {
                Next::Done(Err(e)) => assert_eq!(e, want, "{code:?}"),
                other => panic!("{code:?}: {other:?}"),
            }
            assert_eq!(
                r.current(),
                Some("tcp://127.0.0.1:1"),
                "not moved: {code:?}"
            );
        }
    }

    /// A write is judged as before: an UNAVAILABLE attempt may have been applied, so a session
    /// found gone afterwards is an unknown outcome, never a renewal.
    #[test]
    fn a_write_after_unavailable_keeps_todays_rules() {
        let now = Instant::now();
        let mut call = Call::new(true, false, true, now, Duration::from_secs(5));
        let mut r = route();
        assert!(matches!(
            call.judge(&mut r, answer(Code::Unavailable, "no leader"), now),
            Next::Retry(_)
        ));
        let expired = Attempt::Answer(Box::new(respond(error(Code::SessionExpired, "gone"))));
        assert!(matches!(
            call.judge(&mut r, expired, now),
            Next::Done(Err(ClientError::OutcomeUnknown(_)))
        ));
    }
}
