//! Who may do what, decided in the state machine (identically on every replica): the users'
//! registry, authentication of each command's user and key, the policy's checks on each
//! operation, and the operations that manage users and the policy.
//!
//! The registry lives in the space as `("user", name, public_key)` tuples (so anyone can read a
//! user's key and verify their posts), mirrored in a map for the checks; past keys are kept as
//! `("pastkey", name, public_key, "rotated" | "reset")`. Only these operations write either kind
//! (the policy gives `NOBODY` access to both).

use std::collections::HashMap;

use tuplespace::{Field, Kind, Space, Template, Tuple, Value};

use super::{Applied, Machine, decode_template, decode_tuple};
use crate::answer::error;
use crate::identity::{self, ADMIN};
use crate::policy::{self, Principal};
use crate::proto::{self, command, error::Code, response};

/// The first field of a registration tuple.
pub const USER_KIND: &str = "user";
/// The first field of a past key's tuple.
pub const PAST_KEY_KIND: &str = "pastkey";

fn user_template(name: Option<&str>) -> Template {
    Template::new(vec![
        Field::Literal(Value::Str(USER_KIND.into())),
        name.map_or(Field::Formal(Kind::Str), |n| {
            Field::Literal(Value::Str(n.into()))
        }),
        Field::Formal(Kind::Bytes),
    ])
}

/// The registry the space's `("user", name, key)` tuples hold.
pub(super) fn users_in(space: &Space) -> HashMap<String, Vec<u8>> {
    space
        .rd_all(&user_template(None), &tuplespace::Query::limit(usize::MAX))
        .into_iter()
        .filter_map(|(_, t)| match t.fields() {
            [_, Value::Str(name), Value::Bytes(key)] => Some((name.to_string(), key.to_vec())),
            _ => None,
        })
        .collect()
}

fn denied(why: impl Into<String>) -> response::Result {
    error(Code::PermissionDenied, why)
}

impl Machine {
    /// The access policy in force.
    pub fn policy(&self) -> proto::Policy {
        self.policy_ref().clone()
    }

    /// The access policy in force, borrowed.
    pub fn policy_ref(&self) -> &proto::Policy {
        static DEFAULT: std::sync::OnceLock<proto::Policy> = std::sync::OnceLock::new();
        self.policy
            .as_ref()
            .unwrap_or_else(|| DEFAULT.get_or_init(policy::default_policy))
    }

    /// `name`'s registered public key.
    pub fn user_key(&self, name: &str) -> Option<&[u8]> {
        self.users.get(name).map(Vec::as_slice)
    }

    /// Whether `user`, signing with `public_key`, is the admin.
    pub fn is_admin(&self, user: &str, public_key: &[u8]) -> bool {
        user == ADMIN && self.user_key(ADMIN) == Some(public_key)
    }

    /// The founding entries name the admin's key: registered once, as user `admin`.
    pub fn found_admin(&mut self, public_key: &[u8]) {
        if public_key.len() != 32 || self.users.contains_key(ADMIN) {
            return;
        }
        let mut applied = Applied::default();
        self.bind(ADMIN, public_key, &mut applied);
    }

    /// A command's user is who they say: `public_key` is their registered key (or the command
    /// registers that key under their name), or the policy allows anonymous writes.
    pub(super) fn authenticate(
        &self,
        user: &str,
        public_key: &[u8],
        op: &command::Op,
    ) -> Result<(), response::Result> {
        if user.is_empty() {
            if self.policy_ref().anonymous_writes {
                return Ok(());
            }
            return Err(error(
                Code::Unauthenticated,
                "writes need a registered user: sign the request with the user's key \
                 (`microblog register`)",
            ));
        }
        // A user registering their own, free name with the key that signs: `register` decides.
        // A name that is taken is refused here, before the request touches any session (the
        // session it names may be the name's owner's).
        if let command::Op::Register(r) = op
            && r.name == user
            && r.public_key == public_key
        {
            return match self.users.get(user) {
                None => Ok(()),
                Some(key) if key.as_slice() == public_key => Ok(()),
                Some(_) => Err(denied(format!(
                    "the name {user:?} is taken (registered with another key)"
                ))),
            };
        }
        match self.users.get(user) {
            Some(key) if key.as_slice() == public_key => Ok(()),
            Some(_) => Err(error(
                Code::Unauthenticated,
                format!(
                    "the key that signed ({}) is not user {user:?}'s registered key",
                    identity::fingerprint(public_key)
                ),
            )),
            None => Err(error(
                Code::Unauthenticated,
                format!("user {user:?} is not registered (`microblog register`)"),
            )),
        }
    }

    /// A signed command is applied only while it is valid: it names an expiry in cluster time,
    /// not past and at most [`identity::MAX_WRITE_VALIDITY_MS`] ahead. (Anonymous commands carry
    /// no signature to replay.)
    pub(super) fn fresh(&self, user: &str, not_after_ms: u64) -> Result<(), response::Result> {
        if user.is_empty() {
            return Ok(());
        }
        let now = self.space.now();
        let why = if not_after_ms == 0 {
            "a signed write must say when it expires (not_after_ms, in cluster time)"
        } else if not_after_ms < now {
            "the signed request has expired (cluster time is past its not_after_ms); nothing \
             was applied"
        } else if not_after_ms > now.saturating_add(identity::MAX_WRITE_VALIDITY_MS) {
            "the signed request says it is valid for more than 15 minutes of cluster time"
        } else {
            return Ok(());
        };
        Err(error(Code::Unauthenticated, why))
    }

    /// The policy's check of `op` by `user` (already authenticated).
    pub(super) fn authorize(&self, op: &command::Op, user: &str) -> Result<(), response::Result> {
        let policy = self.policy_ref();
        let who = Principal { user };
        let result = match op {
            command::Op::Out(out) => policy::may_write(policy, who, &decode_tuple(&out.tuple)?),
            command::Op::Cas(cas) => policy::may_write(policy, who, &decode_tuple(&cas.tuple)?),
            command::Op::In(take) => {
                policy::may_take_with(policy, who, &decode_template(&take.template)?)
            }
            command::Op::InAll(all) => {
                policy::may_take_with(policy, who, &decode_template(&all.template)?)
            }
            command::Op::TakeId(take) => match self.space.read_id(take.id) {
                Some(tuple) => policy::may_take(policy, who, tuple),
                None => Ok(()),
            },
            command::Op::ResetKey(_) | command::Op::SetPolicy(_) if user != ADMIN => {
                Err("only the admin may do this".to_string())
            }
            command::Op::RotateKey(_) if user.is_empty() => {
                Err("an anonymous user has no key to rotate".to_string())
            }
            _ => Ok(()),
        };
        result.map_err(denied)
    }

    /// `register`: binds a free name to a key (first come, first served; only the admin when
    /// registration is closed). Registering the same key again answers its tuple id.
    pub(super) fn register(
        &mut self,
        r: proto::Register,
        user: &str,
        applied: &mut Applied,
    ) -> Result<response::Result, response::Result> {
        identity::check_name(&r.name).map_err(|e| error(Code::Invalid, e))?;
        if r.public_key.len() != 32 {
            return Err(error(Code::Invalid, "a public key has 32 bytes"));
        }
        if let Some(key) = self.users.get(&r.name) {
            if *key == r.public_key {
                let id = self
                    .space
                    .rdp(&user_template(Some(&r.name)), 0)
                    .map_or(0, |(id, _)| id);
                return Ok(response::Result::OutId(id));
            }
            return Err(denied(format!(
                "the name {:?} is taken (registered with another key)",
                r.name
            )));
        }
        if r.name == ADMIN {
            return Err(denied(
                "the admin is registered by the cluster's founding entries, never by register",
            ));
        }
        let by_admin = user == ADMIN;
        if !by_admin && user != r.name {
            return Err(denied("a user registers only their own name"));
        }
        if !by_admin && self.policy_ref().closed_registration {
            return Err(denied(
                "registration is closed on this cluster: ask the admin to add you",
            ));
        }
        self.check_room(64)?;
        Ok(response::Result::OutId(self.bind(
            &r.name,
            &r.public_key,
            applied,
        )))
    }

    /// Replaces the signer's key (signed by the current one).
    pub(super) fn rotate_key(
        &mut self,
        r: proto::RotateKey,
        user: &str,
        applied: &mut Applied,
    ) -> Result<response::Result, response::Result> {
        self.replace_key(user, &r.public_key, "rotated", applied)
    }

    /// The admin replaces a user's key (a lost key).
    pub(super) fn reset_key(
        &mut self,
        r: proto::ResetKey,
        _admin: &str,
        applied: &mut Applied,
    ) -> Result<response::Result, response::Result> {
        if !self.users.contains_key(&r.name) {
            return Err(error(
                Code::Invalid,
                format!("user {:?} is not registered", r.name),
            ));
        }
        self.replace_key(&r.name, &r.public_key, "reset", applied)
    }

    /// The admin replaces the policy.
    pub(super) fn set_policy(
        &mut self,
        p: proto::SetPolicy,
        _admin: &str,
    ) -> Result<response::Result, response::Result> {
        let policy = p
            .policy
            .ok_or_else(|| error(Code::Invalid, "no policy given"))?;
        policy::check_policy(&policy).map_err(|e| error(Code::Invalid, e))?;
        self.policy = Some(policy);
        Ok(response::Result::Count(1))
    }

    fn replace_key(
        &mut self,
        name: &str,
        public_key: &[u8],
        why: &str,
        applied: &mut Applied,
    ) -> Result<response::Result, response::Result> {
        if public_key.len() != 32 {
            return Err(error(Code::Invalid, "a public key has 32 bytes"));
        }
        if self.users.values().any(|k| k.as_slice() == public_key) {
            return Err(error(Code::Invalid, "that key is registered already"));
        }
        self.check_room(128)?;
        if let Some((id, _)) = self.space.rdp(&user_template(Some(name)), 0) {
            self.space.take_id(id);
        }
        if let Some(old) = self.users.get(name).cloned() {
            let past = Tuple::new(vec![
                Value::Str(PAST_KEY_KIND.into()),
                Value::Str(name.into()),
                Value::Bytes(old.into_boxed_slice()),
                Value::Str(why.into()),
            ]);
            self.out(past, None, applied);
        }
        Ok(response::Result::OutId(
            self.bind(name, public_key, applied),
        ))
    }

    fn bind(&mut self, name: &str, public_key: &[u8], applied: &mut Applied) -> u64 {
        let tuple = Tuple::new(vec![
            Value::Str(USER_KIND.into()),
            Value::Str(name.into()),
            Value::Bytes(public_key.to_vec().into_boxed_slice()),
        ]);
        self.users.insert(name.to_string(), public_key.to_vec());
        self.out(tuple, None, applied)
    }
}

#[cfg(test)]
mod tests {
    use prost::Message as _;

    use super::*;
    use crate::identity::Identity;
    use crate::proto::Command;

    /// Applies commands signed (as far as the machine knows) by `who`.
    struct Log {
        machine: Machine,
        index: u64,
    }

    impl Log {
        fn new(admin: &Identity) -> Log {
            let mut machine = Machine::new();
            machine.found_admin(&admin.public_key());
            Log { machine, index: 0 }
        }

        fn apply(&mut self, who: &Identity, session: u64, seq: u64, op: command::Op) -> Code {
            self.index += 1;
            let cmd = Command {
                session,
                seq,
                ack: seq - 1,
                op: Some(op),
                user: who.user().to_string(),
                public_key: who.public_key().to_vec(),
                not_after_ms: self.machine.now() + 60_000,
                ..Default::default()
            };
            let applied = self
                .machine
                .apply(self.index, 1, &cmd.encode_to_vec(), false)
                .unwrap();
            let completion = applied
                .completions
                .iter()
                .find(|c| c.session == session && c.seq == seq)
                .expect("answered");
            match &completion.result {
                response::Result::Error(e) => Code::try_from(e.code).unwrap(),
                _ => Code::Internal, // "ok" for these tests
            }
        }
    }

    const OK: Code = Code::Internal;

    fn register(who: &Identity) -> command::Op {
        command::Op::Register(proto::Register {
            name: who.user().into(),
            public_key: who.public_key().to_vec(),
        })
    }

    fn out(tuple: tuplespace::Tuple) -> command::Op {
        command::Op::Out(proto::Out {
            tuple: tuplespace::codec::tuple_to_bytes(&tuple),
            ttl_ms: 0,
        })
    }

    #[test]
    fn registration_rotation_reset_and_sessions() {
        let admin = Identity::generate(ADMIN);
        let alice = Identity::generate("alice");
        let thief = Identity::generate("alice");
        let bob = Identity::generate("bob");
        let mut log = Log::new(&admin);
        assert_eq!(log.apply(&alice, 1, 1, register(&alice)), OK);
        assert_eq!(
            log.apply(&alice, 1, 2, register(&alice)),
            OK,
            "again: the same"
        );
        assert_eq!(
            log.apply(&thief, 2, 1, register(&thief)),
            Code::PermissionDenied
        );
        assert_eq!(
            log.apply(&thief, 2, 2, out(tuplespace::tuple!["x"])),
            Code::Unauthenticated
        );
        // Bob is not registered yet; then his session is his.
        assert_eq!(
            log.apply(&bob, 3, 1, out(tuplespace::tuple!["x"])),
            Code::Unauthenticated
        );
        assert_eq!(log.apply(&bob, 4, 1, register(&bob)), OK);
        assert_eq!(
            log.apply(&bob, 1, 3, out(tuplespace::tuple!["x"])),
            Code::PermissionDenied,
            "alice's session"
        );
        assert_eq!(log.apply(&alice, 1, 3, out(tuplespace::tuple!["y"])), OK);
        // Rotation: the old key stops signing; the new one signs.
        let new = Identity::generate("alice");
        let rotate = command::Op::RotateKey(proto::RotateKey {
            public_key: new.public_key().to_vec(),
        });
        assert_eq!(log.apply(&alice, 1, 4, rotate), OK);
        assert_eq!(
            log.apply(&alice, 5, 1, out(tuplespace::tuple!["z"])),
            Code::Unauthenticated
        );
        assert_eq!(log.apply(&new, 5, 1, out(tuplespace::tuple!["z"])), OK);
        // Only the admin resets; then the new key signs.
        let lost = Identity::generate("bob");
        let reset = command::Op::ResetKey(proto::ResetKey {
            name: "bob".into(),
            public_key: lost.public_key().to_vec(),
        });
        assert_eq!(log.apply(&bob, 4, 2, reset.clone()), Code::PermissionDenied);
        assert_eq!(log.apply(&admin, 6, 1, reset), OK);
        assert_eq!(log.apply(&lost, 7, 1, out(tuplespace::tuple!["w"])), OK);
        // The registry survives a snapshot: it is rebuilt from the space's tuples.
        let back = Machine::decode(&log.machine.encode()).unwrap();
        assert_eq!(back.user_key("alice"), Some(&new.public_key()[..]));
        assert_eq!(back.user_key("bob"), Some(&lost.public_key()[..]));
        assert!(back.is_admin(ADMIN, &admin.public_key()));
        assert!(!back.is_admin("alice", &new.public_key()));
    }

    #[test]
    fn closed_registration_and_the_policy_are_the_admins() {
        let admin = Identity::generate(ADMIN);
        let alice = Identity::generate("alice");
        let mut log = Log::new(&admin);
        let closed = proto::Policy {
            closed_registration: true,
            ..policy::default_policy()
        };
        let set = command::Op::SetPolicy(proto::SetPolicy {
            policy: Some(closed.clone()),
        });
        assert_eq!(log.apply(&admin, 1, 1, set), OK);
        assert_eq!(
            log.apply(&alice, 2, 1, register(&alice)),
            Code::PermissionDenied
        );
        // The admin adds her.
        assert_eq!(log.apply(&admin, 1, 2, register(&alice)), OK);
        let set = command::Op::SetPolicy(proto::SetPolicy {
            policy: Some(policy::default_policy()),
        });
        assert_eq!(log.apply(&alice, 3, 1, set), Code::PermissionDenied);
        let back = Machine::decode(&log.machine.encode()).unwrap();
        assert_eq!(back.policy(), closed, "the policy is in the snapshot");
    }
}
