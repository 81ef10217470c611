//! The access policy: who may write and who may take tuples of each kind. Part of the
//! replicated state (in the log and in snapshots), so every replica decides the same way.
//!
//! A tuple's kind is its first field when that is a string. A [`proto::Rule`] for the kind names
//! who may write (`out`, `cas`) such tuples and who may take them (`in`, `inp`, `in_all`,
//! `take_id`); `OWNER` rules name the field that holds the owner's user name. Kinds without a
//! rule follow the policy's defaults. Reads are open to anyone.
//!
//! Takes by template are decided from the template alone, before anything is taken, so a
//! blocking `in` can never be handed a tuple its user may not take: a template for an owned kind
//! must name the owner literally (the user's own name, unless the user is the admin), and a
//! template whose first field is not a literal string could take anything (the registry
//! included), so nobody takes with one. The registry's kinds (`user`, `pastkey`) are `NOBODY` for
//! writes and takes whatever the policy says.

use tuplespace::{Field, Template, Tuple, Value};

use crate::identity::ADMIN;
use crate::proto::{Access, Policy, Rule};

/// Who asks: a registered user ("" for an anonymous writer, when the policy allows those).
#[derive(Clone, Copy, Debug)]
pub struct Principal<'a> {
    /// The user's name.
    pub user: &'a str,
}

impl Principal<'_> {
    fn is_admin(&self) -> bool {
        self.user == ADMIN
    }
}

/// The kinds the microblog uses, protected out of the box.
pub fn default_policy() -> Policy {
    let rule = |kind: &str, write: Access, take: Access| Rule {
        kind: kind.into(),
        owner_field: 1,
        write: write as i32,
        take: take as i32,
    };
    Policy {
        rules: vec![
            // ("post", author, topic, time_ms, text, reply_to, signature)
            rule("post", Access::Owner, Access::OwnerOrAdmin),
            // ("follow", follower, followee)
            rule("follow", Access::Owner, Access::OwnerOrAdmin),
            // ("user", name, public_key): written by `register` only.
            rule("user", Access::Nobody, Access::Nobody),
            // ("pastkey", name, public_key, why): written by key rotations and resets only.
            rule("pastkey", Access::Nobody, Access::Nobody),
            // ("topic", name): anyone names a topic by posting to it; the admin removes one.
            rule("topic", Access::AnyUser, Access::Admin),
        ],
        default_write: Access::AnyUser as i32,
        default_take: Access::AnyUser as i32,
        anonymous_writes: false,
        closed_registration: false,
    }
}

/// Checks a policy an admin wants to set: known access values, one rule per kind.
pub fn check_policy(policy: &Policy) -> Result<(), String> {
    let mut kinds = std::collections::HashSet::new();
    for rule in &policy.rules {
        if rule.kind.is_empty() {
            return Err("a rule needs a kind".into());
        }
        if !kinds.insert(rule.kind.as_str()) {
            return Err(format!("two rules for kind {:?}", rule.kind));
        }
        for access in [rule.write, rule.take] {
            Access::try_from(access).map_err(|_| format!("unknown access value {access}"))?;
        }
    }
    for access in [policy.default_write, policy.default_take] {
        Access::try_from(access).map_err(|_| format!("unknown access value {access}"))?;
    }
    Ok(())
}

fn access(value: i32) -> Access {
    // An unknown value (a newer policy read by an older node) allows nobody.
    Access::try_from(value).unwrap_or(Access::Nobody)
}

/// The registry's kinds: written and taken only by the cluster's own operations (register, key
/// rotation and reset), whatever a policy says, so the registry every replica rebuilds from the
/// space after a snapshot is the one it checks.
pub const RESERVED: [&str; 2] = ["user", "pastkey"];

/// The rule for `kind`: the reserved kinds are always `NOBODY`.
fn rule_for<'p>(policy: &'p Policy, kind: &str) -> Option<&'p Rule> {
    static RESERVED_RULES: std::sync::OnceLock<Vec<Rule>> = std::sync::OnceLock::new();
    let reserved = RESERVED_RULES.get_or_init(|| {
        RESERVED
            .iter()
            .map(|kind| Rule {
                kind: (*kind).to_string(),
                owner_field: 1,
                write: Access::Nobody as i32,
                take: Access::Nobody as i32,
            })
            .collect()
    });
    if let Some(rule) = reserved.iter().find(|r| r.kind == kind) {
        return Some(rule);
    }
    policy.rules.iter().find(|r| r.kind == kind)
}

fn kind_of(first: Option<&Value>) -> Option<&str> {
    match first {
        Some(Value::Str(s)) => Some(s.as_str()),
        _ => None,
    }
}

/// Whether `who` passes `access` for a tuple whose owner field holds `owner`.
fn allows(access: Access, who: Principal<'_>, owner: Option<&str>) -> bool {
    match access {
        Access::AnyUser => true,
        Access::Owner => owner == Some(who.user),
        Access::OwnerOrAdmin => who.is_admin() || owner == Some(who.user),
        Access::Admin => who.is_admin(),
        Access::Nobody => false,
    }
}

/// Whether `who` may write `tuple` (`out`, `cas`); the error says why not.
pub fn may_write(policy: &Policy, who: Principal<'_>, tuple: &Tuple) -> Result<(), String> {
    let fields = tuple.fields();
    let Some(kind) = kind_of(fields.first()) else {
        return check(
            access(policy.default_write),
            who,
            None,
            "write",
            "this tuple",
        );
    };
    match rule_for(policy, kind) {
        None => check(access(policy.default_write), who, None, "write", kind),
        Some(rule) => {
            let owner = kind_of(fields.get(rule.owner_field as usize));
            check(access(rule.write), who, owner, "write", kind)
        }
    }
}

/// Whether `who` may take `tuple` (by its id); the error says why not.
pub fn may_take(policy: &Policy, who: Principal<'_>, tuple: &Tuple) -> Result<(), String> {
    let fields = tuple.fields();
    let Some(kind) = kind_of(fields.first()) else {
        return check(access(policy.default_take), who, None, "take", "this tuple");
    };
    match rule_for(policy, kind) {
        None => check(access(policy.default_take), who, None, "take", kind),
        Some(rule) => {
            let owner = kind_of(fields.get(rule.owner_field as usize));
            check(access(rule.take), who, owner, "take", kind)
        }
    }
}

/// Whether `who` may take with `template`: allowed only if every tuple it could match may be
/// taken by `who`.
pub fn may_take_with(
    policy: &Policy,
    who: Principal<'_>,
    template: &Template,
) -> Result<(), String> {
    let fields = template.fields();
    let literal_str = |i: usize| match fields.get(i) {
        Some(Field::Literal(Value::Str(s))) => Some(s.as_str()),
        _ => None,
    };
    let Some(kind) = literal_str(0) else {
        // It could match any kind, the registry's included: nobody takes that way.
        return Err(
            "a take whose template does not name its kind (a literal string first \
                    field) could take protected tuples: name the kind"
                .into(),
        );
    };
    match rule_for(policy, kind) {
        None => check(access(policy.default_take), who, None, "take", kind),
        Some(rule) => {
            let owner = literal_str(rule.owner_field as usize);
            check(access(rule.take), who, owner, "take", kind).map_err(|e| {
                if matches!(access(rule.take), Access::Owner | Access::OwnerOrAdmin)
                    && owner.is_none()
                {
                    format!(
                        "{e}; the template must name the owner (field {}) literally",
                        rule.owner_field
                    )
                } else {
                    e
                }
            })
        }
    }
}

fn check(
    access: Access,
    who: Principal<'_>,
    owner: Option<&str>,
    verb: &str,
    kind: &str,
) -> Result<(), String> {
    if allows(access, who, owner) {
        return Ok(());
    }
    let user = if who.user.is_empty() {
        "an anonymous user".to_string()
    } else {
        format!("user {:?}", who.user)
    };
    Err(match access {
        Access::Owner => format!("only its owner may {verb} a {kind:?} tuple, not {user}"),
        Access::OwnerOrAdmin => {
            format!("only its owner or the admin may {verb} a {kind:?} tuple, not {user}")
        }
        Access::Admin => format!("only the admin may {verb} a {kind:?} tuple, not {user}"),
        Access::Nobody => format!("nobody may {verb} a {kind:?} tuple directly"),
        Access::AnyUser => format!("{user} may not {verb} {kind:?}"),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use tuplespace::{Kind, tuple};

    fn who(user: &str) -> Principal<'_> {
        Principal { user }
    }

    #[test]
    fn the_default_policy_protects_posts_and_follows() {
        let p = default_policy();
        let post = tuple!["post", "alice", "", 1, "hi", 0];
        assert!(may_write(&p, who("alice"), &post).is_ok());
        assert!(may_write(&p, who("bob"), &post).is_err());
        assert!(
            may_write(&p, who(ADMIN), &post).is_err(),
            "not even the admin"
        );
        assert!(may_take(&p, who("alice"), &post).is_ok());
        assert!(may_take(&p, who(ADMIN), &post).is_ok());
        assert!(may_take(&p, who("bob"), &post).is_err());
        assert!(may_write(&p, who("alice"), &tuple!["user", "alice", 1]).is_err());
        assert!(may_write(&p, who("bob"), &tuple!["anything", 1]).is_ok());
        assert!(may_write(&p, who("bob"), &tuple![1, 2]).is_ok());
    }

    #[test]
    fn take_templates_must_name_the_owner() {
        let p = default_policy();
        let mine: Template = "(\"post\", \"alice\", ?str, ?int, ?str, ?int)"
            .parse()
            .unwrap();
        let any: Template = "(\"post\", ?str, ?str, ?int, ?str, ?int)".parse().unwrap();
        let wild: Template = "(?str, ?str)".parse().unwrap();
        assert!(may_take_with(&p, who("alice"), &mine).is_ok());
        assert!(may_take_with(&p, who("bob"), &mine).is_err());
        assert!(may_take_with(&p, who("bob"), &any).is_err());
        assert!(may_take_with(&p, who(ADMIN), &any).is_ok());
        assert!(may_take_with(&p, who("bob"), &wild).is_err());
        assert!(
            may_take_with(&p, who(ADMIN), &wild).is_err(),
            "could take registrations"
        );
        let users: Template = "(\"user\", \"alice\", ?bytes)".parse().unwrap();
        assert!(may_take_with(&p, who(ADMIN), &users).is_err());
        let open = Policy {
            rules: vec![],
            ..default_policy()
        };
        assert!(may_take_with(&open, who("bob"), &wild).is_err());
        // A policy that forgets the registry still protects it.
        let users: Template = "(\"user\", \"alice\", ?bytes)".parse().unwrap();
        assert!(may_take_with(&open, who(ADMIN), &users).is_err());
        assert!(may_write(&open, who("alice"), &tuple!["user", "alice", 1]).is_err());
    }

    // The model: a take by template is allowed exactly when every tuple it could match may be
    // taken. Checked over small tuples and templates drawn from a few names.
    fn value() -> impl Strategy<Value = Value> {
        prop_oneof![
            prop::sample::select(vec![
                "post", "follow", "user", "topic", "misc", "alice", "bob"
            ])
            .prop_map(|s| Value::Str(s.into())),
            (0i64..3).prop_map(Value::Int),
        ]
    }

    fn tuple_strategy() -> impl Strategy<Value = Tuple> {
        prop::collection::vec(value(), 1..4).prop_map(Tuple::new)
    }

    fn field() -> impl Strategy<Value = Field> {
        prop_oneof![
            value().prop_map(Field::Literal),
            Just(Field::Formal(Kind::Str)),
            Just(Field::Formal(Kind::Int)),
            Just(Field::Any),
        ]
    }

    fn all_tuples(arity: usize) -> Vec<Tuple> {
        let values: Vec<Value> = ["post", "follow", "user", "topic", "misc", "alice", "bob"]
            .iter()
            .map(|s| Value::Str((*s).into()))
            .chain((0..3).map(Value::Int))
            .collect();
        let mut out: Vec<Vec<Value>> = vec![vec![]];
        for _ in 0..arity {
            out = out
                .into_iter()
                .flat_map(|prefix| {
                    values.iter().map(move |v| {
                        let mut t = prefix.clone();
                        t.push(v.clone());
                        t
                    })
                })
                .collect();
        }
        out.into_iter().map(Tuple::new).collect()
    }

    proptest! {
        #[test]
        fn a_permitted_template_only_matches_takeable_tuples(
            fields in prop::collection::vec(field(), 1..4),
            user in prop::sample::select(vec!["alice", "bob", ADMIN]),
            open_default in any::<bool>(),
        ) {
            let mut p = default_policy();
            if open_default {
                p.default_take = Access::AnyUser as i32;
            } else {
                p.default_take = Access::Admin as i32;
            }
            let template = Template::new(fields.clone());
            if may_take_with(&p, who(user), &template).is_ok() {
                for t in all_tuples(fields.len()) {
                    if template.matches(t.fields()) {
                        prop_assert!(
                            may_take(&p, who(user), &t).is_ok(),
                            "{template:?} allowed for {user} but matches {t:?}"
                        );
                    }
                }
            }
        }

        #[test]
        fn writes_follow_the_owner_field(t in tuple_strategy(), user in prop::sample::select(vec!["alice", "bob", ADMIN])) {
            let p = default_policy();
            let allowed = may_write(&p, who(user), &t).is_ok();
            let fields = t.fields();
            let kind = kind_of(fields.first());
            let owner = kind_of(fields.get(1));
            let model = match kind {
                Some("post") | Some("follow") => owner == Some(user),
                Some("user") | Some("pastkey") => false,
                _ => true,
            };
            prop_assert_eq!(allowed, model);
        }
    }
}
