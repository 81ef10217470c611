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
        // A user registering their own name with the key that signs: `register` decides (a name
        // that is taken is refused there, as PERMISSION_DENIED).
        if let command::Op::Register(r) = op
            && r.name == user
            && r.public_key == public_key
        {
            return Ok(());
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
