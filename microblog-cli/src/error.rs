//! What went wrong, what to do about it, and which exit code says so.
//!
//! | exit | meaning |
//! |---|---|
//! | 0 | ok |
//! | 1 | the operation failed: cluster unreachable, refused (someone else's post), cluster error |
//! | 2 | usage: bad flags or input, found before anything was sent (clap's own errors are 2 too) |
//! | 3 | not found (no such post or user, no match) or timed out waiting for a match |
//! | 4 | not allowed: not signed or not the user's key (unauthenticated), or the policy refuses it (another user's post, an admin's operation, a name that is taken) |

use std::fmt;

use raftnode::client::ClientError;

/// The kind of failure, which decides the exit code.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// Bad flags or input: nothing was sent to the cluster. Exit 2.
    Usage,
    /// The operation failed or was refused. Exit 1.
    Failed,
    /// What was asked for does not exist. Exit 3.
    NotFound,
    /// A blocking operation's timeout passed with no match. Exit 3.
    TimedOut,
    /// Unauthenticated, or refused by the policy. Exit 4.
    NotAllowed,
}

impl Kind {
    /// The process exit code for this kind.
    pub fn exit_code(self) -> u8 {
        match self {
            Kind::Failed => 1,
            Kind::Usage => 2,
            Kind::NotFound | Kind::TimedOut => 3,
            Kind::NotAllowed => 4,
        }
    }
}

/// An error for the user: what went wrong, and (when there is something to do) what to do.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Error {
    /// Which exit code.
    pub kind: Kind,
    /// What went wrong, one line.
    pub message: String,
    /// What to do about it, if anything helps.
    pub hint: Option<String>,
}

/// This crate's result.
pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    /// An error of `kind`.
    pub fn new(kind: Kind, message: impl Into<String>) -> Error {
        Error {
            kind,
            message: message.into(),
            hint: None,
        }
    }

    /// Bad input (exit 2).
    pub fn usage(message: impl Into<String>) -> Error {
        Error::new(Kind::Usage, message)
    }

    /// A failed or refused operation (exit 1).
    pub fn failed(message: impl Into<String>) -> Error {
        Error::new(Kind::Failed, message)
    }

    /// Not allowed: unauthenticated or refused by the policy (exit 4).
    pub fn not_allowed(message: impl Into<String>) -> Error {
        Error::new(Kind::NotAllowed, message)
    }

    /// Something that does not exist (exit 3).
    pub fn not_found(message: impl Into<String>) -> Error {
        Error::new(Kind::NotFound, message)
    }

    /// Adds what to do.
    pub fn hint(mut self, hint: impl Into<String>) -> Error {
        self.hint = Some(hint.into());
        self
    }

    /// The exit code.
    pub fn exit_code(&self) -> u8 {
        self.kind.exit_code()
    }

    /// The error as one JSON object (for `--json`).
    pub fn to_json(&self) -> serde_json::Value {
        serde_json::json!({
            "error": self.message,
            "hint": self.hint,
            "exit": self.exit_code(),
        })
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)?;
        if let Some(hint) = &self.hint {
            write!(f, "\n  hint: {hint}")?;
        }
        Ok(())
    }
}

impl std::error::Error for Error {}

impl From<ClientError> for Error {
    fn from(e: ClientError) -> Error {
        match e {
            ClientError::NoLeader { tried, last } => {
                let tried = if tried.is_empty() {
                    "no endpoints".to_string()
                } else {
                    tried.join(", ")
                };
                Error::failed(format!(
                    "no cluster node answered (tried {tried}; last error: {last})"
                ))
                .hint(
                    "start the cluster (`microblog cluster up`), or point --endpoints, --cluster \
                     or MICROBLOG_ENDPOINTS at a running one; a slow cluster may need a longer \
                     --timeout",
                )
            }
            ClientError::Timeout => Error::new(Kind::TimedOut, "timed out: no matching tuple")
                .hint("wait longer with --timeout"),
            ClientError::SessionExpired(m) => Error::failed(format!("session expired: {m}"))
                .hint("nothing was applied; run the command again"),
            ClientError::Invalid(m) => {
                Error::failed(format!("the cluster refused the request as malformed: {m}"))
            }
            ClientError::TooLarge(m) => Error::failed(format!("too large: {m}"))
                .hint("a tuple or template is at most 1 MiB, a post's text at most 4,000 bytes"),
            ClientError::Removed(m) => Error::failed(format!("node removed from the cluster: {m}"))
                .hint("use the endpoints of the cluster's current members"),
            ClientError::Storage(m) => Error::failed(format!("the cluster's storage failed: {m}"))
                .hint("check the nodes' logs and disks"),
            ClientError::Protocol(m) => Error::failed(format!("protocol error: {m}")).hint(
                "check that the endpoints are raftnode client endpoints of a matching version",
            ),
            ClientError::OverLimit(m) => Error::failed(format!("over a limit: {m}"))
                .hint("nothing was applied; see `microblog cluster status` for the space's size"),
            ClientError::Cancelled(m) => Error::failed(format!("cancelled: {m}"))
                .hint("the blocking in took nothing; run it again to wait again"),
            ClientError::OutcomeUnknown(m) => Error::failed(format!(
                "the outcome is unknown: the write may or may not have been applied ({m})"
            ))
            .hint(
                "it was not sent again, so it is applied at most once; look before you retry \
                 (e.g. `microblog read --user YOU --limit 5`, or `microblog tuple rdp ...`)",
            ),
            // Membership outcomes.
            ClientError::ChangeInProgress(_) => {
                Error::failed("another membership change is in progress; retry when it is done")
                    .hint(
                        "`microblog cluster status` shows it (an \"outgoing voter\" means a joint \
                         change is finishing); run the command again in a few seconds",
                    )
            }
            ClientError::HandingOver(m) => Error::new(
                Kind::TimedOut,
                format!(
                    "leadership was being handed over, and no new leader took the change in time \
                     ({m})"
                ),
            )
            .hint("run the command again (a longer --timeout helps); nothing was removed yet"),
            ClientError::ChangeTimedOut(_) => Error::new(
                Kind::TimedOut,
                "the membership change was not applied in time (a leader change?)",
            )
            .hint(
                "check `microblog cluster status`, then run the command again: a change already \
                 in effect is not made twice",
            ),
            ClientError::StillJoint(_) => Error::new(
                Kind::TimedOut,
                "the change was applied, but the cluster has not left its joint configuration yet",
            )
            .hint("the leader finishes it by itself; check `microblog cluster status`"),
            ClientError::NotMember(m) => {
                Error::failed(format!("the cluster does not know this node: {m}")).hint(
                    "add it with its endpoints: `microblog cluster add ID RAFT_URL CLIENT_URL`, \
                     or --add-learner/--add-voter ID=RAFT_URL,CLIENT_URL",
                )
            }
            ClientError::InvalidEndpoint(m) => {
                Error::failed(format!("the cluster refused the node's endpoints: {m}")).hint(
                    "give tcp://host:port endpoints that the other nodes and clients can connect \
                     to, e.g. tcp://127.0.0.1:7104",
                )
            }
            ClientError::OnlyVoter(m) => {
                Error::failed(format!("refused: {m}")).hint("add another voter first")
            }
            ClientError::NotCaughtUp(m) | ClientError::RemovedId(m) => {
                Error::failed(format!("the cluster refused the membership change: {m}"))
                    .hint("`microblog cluster status` shows the current members and roles")
            }
            ClientError::Unauthenticated(m) => {
                Error::not_allowed(format!("not authenticated: {m}")).hint(
                    "sign as a registered user: --user NAME with that user's key in \
                     MICROBLOG_HOME (`microblog --user NAME register`), or --admin for the \
                     cluster's admin",
                )
            }
            ClientError::PermissionDenied(m) => Error::not_allowed(format!("not allowed: {m}"))
                .hint(
                    "nothing was applied; `microblog policy show` says who may do what, and \
                     `microblog whoami` who you are",
                ),
            e @ ClientError::CatchUpTimedOut { id, .. } => {
                Error::new(Kind::TimedOut, e.to_string()).hint(format!(
                    "it stays a learner (it does not vote); check that it runs, then finish with \
                     `microblog cluster promote {id}`"
                ))
            }
        }
    }
}

impl From<std::io::Error> for Error {
    fn from(e: std::io::Error) -> Error {
        Error::failed(format!("i/o error: {e}"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exit_codes() {
        assert_eq!(Error::usage("x").exit_code(), 2);
        assert_eq!(Error::failed("x").exit_code(), 1);
        assert_eq!(Error::not_found("x").exit_code(), 3);
        assert_eq!(Error::from(ClientError::Timeout).exit_code(), 3);
    }

    #[test]
    fn no_leader_lists_the_endpoints_and_what_to_do() {
        let e = Error::from(ClientError::NoLeader {
            tried: vec!["tcp://127.0.0.1:1".into(), "tcp://127.0.0.1:2".into()],
            last: "connect failed".into(),
        });
        let text = e.to_string();
        assert!(
            text.contains("tcp://127.0.0.1:1, tcp://127.0.0.1:2"),
            "{text}"
        );
        assert!(text.contains("hint:"), "{text}");
        assert_eq!(e.exit_code(), 1);
        assert_eq!(e.to_json()["exit"], 1);
    }
}
