//! Who you are: key files, `register`, `whoami`, `rotate-key`, the admin's `reset-key`, and the
//! access policy (`policy show|set`).
//!
//! A user's key pair lives in `$MICROBLOG_HOME/keys/NAME.key` (default: `~/.config/microblog`,
//! or `$XDG_CONFIG_HOME/microblog`), mode 0600. The admin's is `admin.key` beside the cluster's
//! key file, unless `--admin-key`/`MICROBLOG_ADMIN_KEY` names one.

use std::path::{Path, PathBuf};

use raftnode::identity::{self, Identity, KeyFileError};
use raftnode::proto::{self, Access};
use serde_json::json;

use super::Context;
use crate::connect;
use crate::error::{Error, Result};
use crate::model::check_user;
use crate::output::clean;

/// The environment variable naming the key home.
pub const HOME_ENV: &str = "MICROBLOG_HOME";

/// Where keys live: `$MICROBLOG_HOME`, else `$XDG_CONFIG_HOME/microblog`, else
/// `~/.config/microblog`.
pub fn home() -> PathBuf {
    if let Some(home) = std::env::var_os(HOME_ENV).filter(|v| !v.is_empty()) {
        return PathBuf::from(home);
    }
    if let Some(config) = std::env::var_os("XDG_CONFIG_HOME").filter(|v| !v.is_empty()) {
        return PathBuf::from(config).join("microblog");
    }
    let home = std::env::var_os("HOME").map_or_else(|| PathBuf::from("."), PathBuf::from);
    home.join(".config").join("microblog")
}

/// `name`'s key file. Names made only of letters, digits, `.`, `_` and `-` (not starting with a
/// dot) are the file name; any other name is hex-encoded, so no name can point outside the
/// directory.
pub fn key_path(name: &str) -> PathBuf {
    let plain = !name.starts_with('.')
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'));
    let file = if plain {
        format!("{name}.key")
    } else {
        format!("x-{}.key", hex::encode(name))
    };
    home().join("keys").join(file)
}

fn key_error(e: KeyFileError) -> Error {
    Error::failed(e.to_string())
}

/// `name`'s identity, if their key file exists.
pub fn load(name: &str) -> Result<Option<Identity>> {
    check_user(name)?;
    let path = key_path(name);
    if !path.exists() {
        return Ok(None);
    }
    let me = Identity::load(&path).map_err(key_error)?;
    if me.user() != name {
        return Err(Error::failed(format!(
            "{} holds {}'s key, not {name}'s",
            path.display(),
            me.user()
        )));
    }
    Ok(Some(me))
}

/// `name`'s identity, creating their key pair if they have none (said on stderr).
pub fn load_or_create(name: &str) -> Result<Identity> {
    if let Some(me) = load(name)? {
        return Ok(me);
    }
    let me = Identity::generate(name);
    let path = key_path(name);
    me.save(&path).map_err(key_error)?;
    eprintln!(
        "created a key pair for {} in {} ({})",
        clean(name),
        path.display(),
        me.fingerprint()
    );
    Ok(me)
}

/// The admin's identity: `key` if given, else `admin.key` beside the cluster's key file.
pub fn admin(key: Option<&Path>, cluster: Option<&Path>) -> Result<Identity> {
    let path = match key {
        Some(path) => path.to_path_buf(),
        None => {
            let file = connect::cluster_file(cluster);
            let config = raftnode::config::ClusterConfig::load(&file).map_err(|e| {
                Error::not_allowed(format!("--admin: cannot find the admin's key: {e}"))
                    .hint("pass --admin-key FILE (or set MICROBLOG_ADMIN_KEY)")
            })?;
            let key_file = config.require_key_file(&file).map_err(|e| {
                Error::not_allowed(format!("--admin: {e}")).hint("pass --admin-key FILE")
            })?;
            raftnode::keys::Keys::admin_key_path(key_file)
        }
    };
    let admin = Identity::load(&path).map_err(|e| {
        Error::not_allowed(format!("--admin: {e}")).hint(
            "the admin's key is admin.key beside the cluster's key file (`raftnode key init` and \
             `raftnode up` create it); or pass --admin-key FILE",
        )
    })?;
    if admin.user() != identity::ADMIN {
        return Err(Error::not_allowed(format!(
            "{} is {}'s key, not the admin's",
            path.display(),
            admin.user()
        )));
    }
    Ok(admin)
}

/// `register`: create a key pair if needed, then register the name with it; with `--admin` and
/// `--public-key`, the admin registers `--user` with that key.
pub async fn register(ctx: &mut Context, after: Option<&str>, key: Option<&str>) -> Result<()> {
    let me = ctx.me(after)?;
    if let Some(key) = key {
        check_user(&me)?;
        let mut public = [0u8; 32];
        hex::decode_to_slice(key.trim(), &mut public)
            .map_err(|_| Error::usage("a public key is 64 hex digits"))?;
        ctx.client()?.register_user(&me, public).await?;
        let fingerprint = identity::fingerprint(&public);
        ctx.out.line(&format!(
            "{} is registered with key {fingerprint}",
            clean(&me)
        ))?;
        return Ok(());
    }
    let identity = load_or_create(&me)?;
    let fingerprint = identity.fingerprint();
    let public = hex::encode(identity.public_key());
    let mut client = connect::client(ctx.endpoints()?, ctx.timeout).with_identity(identity);
    match client.register().await {
        Ok(_) => {}
        Err(raftnode::client::ClientError::PermissionDenied(m)) => {
            return Err(
                Error::not_allowed(format!("not registered: {m}")).hint(format!(
                    "if {me} is you and you lost your key, give the admin your new public key: \
                 `microblog --admin reset-key {me} {public}`"
                )),
            );
        }
        Err(e) => return Err(e.into()),
    }
    if ctx.out.json {
        ctx.out
            .json_line(&json!({"user": me, "fingerprint": fingerprint, "registered": true}))?;
    } else {
        ctx.out.line(&format!(
            "{} is registered with key {fingerprint}",
            clean(&me)
        ))?;
    }
    Ok(())
}

/// `whoami`: name, fingerprint, key file, and whether the cluster holds that key for the name.
pub async fn whoami(ctx: &mut Context, after: Option<&str>) -> Result<()> {
    let (identity, path) = if ctx.admin {
        (ctx.admin_identity()?, None)
    } else {
        let me = ctx.me(after)?;
        match load(&me)? {
            Some(identity) => (identity, Some(key_path(&me))),
            None => {
                return Err(Error::not_found(format!(
                    "{me} has no key in {}",
                    home().join("keys").display()
                ))
                .hint(format!(
                    "`microblog --user {me} register` creates one (or set MICROBLOG_HOME)"
                )));
            }
        }
    };
    let mut blog = ctx.blog()?;
    let registered = blog
        .store
        .rdp(&crate::model::user_template(Some(identity.user())), 0)
        .await?
        .and_then(|(_, t)| crate::model::user_of(&t))
        .map(|(_, key)| key);
    let status = match &registered {
        Some(key) if *key == identity.public_key() => "registered",
        Some(_) => "registered with ANOTHER key",
        None => "not registered",
    };
    if ctx.out.json {
        ctx.out.json_line(&json!({
            "user": identity.user(),
            "fingerprint": identity.fingerprint(),
            "key_file": path.map(|p| p.display().to_string()),
            "status": status,
        }))?;
    } else {
        ctx.out.line(&format!(
            "{} {} ({status})",
            clean(identity.user()),
            identity.fingerprint()
        ))?;
    }
    Ok(())
}

/// `rotate-key`: a new key pair, registered by the old key; the old key file becomes `.old`.
pub async fn rotate(ctx: &mut Context, after: Option<&str>) -> Result<()> {
    let me = ctx.me(after)?;
    let Some(old) = load(&me)? else {
        return Err(Error::not_found(format!("{me} has no key to rotate"))
            .hint(format!("`microblog --user {me} register` creates one")));
    };
    let new = Identity::generate(&me);
    let path = key_path(&me);
    let staged = path.with_extension("key.new");
    let _ = std::fs::remove_file(&staged);
    new.save(&staged).map_err(key_error)?;
    let mut client = connect::client(ctx.endpoints()?, ctx.timeout).with_identity(old);
    client.rotate_key(new.clone()).await?;
    std::fs::rename(&path, path.with_extension("key.old"))?;
    std::fs::rename(&staged, &path)?;
    if ctx.out.json {
        ctx.out
            .json_line(&json!({"user": me, "fingerprint": new.fingerprint()}))?;
    } else {
        ctx.out.line(&format!(
            "{} now signs with {} (the old key is in {})",
            clean(&me),
            new.fingerprint(),
            path.with_extension("key.old").display()
        ))?;
    }
    Ok(())
}

/// `reset-key NAME PUBLIC_KEY` (admin).
pub async fn reset(ctx: &mut Context, name: &str, public_key: &str) -> Result<()> {
    check_user(name)?;
    let mut key = [0u8; 32];
    hex::decode_to_slice(public_key.trim(), &mut key)
        .map_err(|_| Error::usage("a public key is 64 hex digits"))?;
    let mut client = ctx.client()?;
    if !ctx.admin {
        return Err(Error::not_allowed("reset-key is the admin's").hint("add --admin"));
    }
    client.reset_key(name, key).await?;
    let fingerprint = identity::fingerprint(&key);
    if ctx.out.json {
        ctx.out
            .json_line(&json!({"user": name, "fingerprint": fingerprint}))?;
    } else {
        ctx.out
            .line(&format!("{} now has key {fingerprint}", clean(name)))?;
    }
    Ok(())
}

/// `policy show|set`.
pub async fn policy(ctx: &mut Context, cmd: crate::cli::PolicyCommand) -> Result<()> {
    match cmd {
        crate::cli::PolicyCommand::Show => {
            let policy = ctx.client()?.policy().await?;
            let text = serde_json::to_string_pretty(&policy_json(&policy))
                .map_err(|e| Error::failed(e.to_string()))?;
            ctx.out.line(&text)?;
            Ok(())
        }
        crate::cli::PolicyCommand::Set { file } => {
            if !ctx.admin {
                return Err(Error::not_allowed("policy set is the admin's").hint("add --admin"));
            }
            let text = std::fs::read_to_string(&file)?;
            let value: serde_json::Value = serde_json::from_str(&text)
                .map_err(|e| Error::usage(format!("{}: {e}", file.display())))?;
            let policy = policy_from_json(&value)
                .map_err(|e| Error::usage(format!("{}: {e}", file.display())))?;
            ctx.client()?.set_policy(policy).await?;
            ctx.out.line("policy set")?;
            Ok(())
        }
    }
}

const ACCESS_NAMES: [(Access, &str); 5] = [
    (Access::AnyUser, "any_user"),
    (Access::Owner, "owner"),
    (Access::OwnerOrAdmin, "owner_or_admin"),
    (Access::Admin, "admin"),
    (Access::Nobody, "nobody"),
];

fn access_name(value: i32) -> &'static str {
    ACCESS_NAMES
        .iter()
        .find(|(a, _)| *a as i32 == value)
        .map_or("nobody", |(_, n)| n)
}

fn access_of(value: &serde_json::Value, what: &str) -> std::result::Result<i32, String> {
    let name = value.as_str().unwrap_or("any_user");
    ACCESS_NAMES
        .iter()
        .find(|(_, n)| *n == name)
        .map(|(a, _)| *a as i32)
        .ok_or_else(|| {
            format!("{what}: {name:?} is not one of any_user, owner, owner_or_admin, admin, nobody")
        })
}

/// The policy as JSON (the format `policy set` reads).
pub fn policy_json(p: &proto::Policy) -> serde_json::Value {
    json!({
        "rules": p.rules.iter().map(|r| json!({
            "kind": r.kind,
            "owner_field": r.owner_field,
            "write": access_name(r.write),
            "take": access_name(r.take),
        })).collect::<Vec<_>>(),
        "default_write": access_name(p.default_write),
        "default_take": access_name(p.default_take),
        "anonymous_writes": p.anonymous_writes,
        "closed_registration": p.closed_registration,
    })
}

/// A policy from JSON (as [`policy_json`] writes it).
pub fn policy_from_json(v: &serde_json::Value) -> std::result::Result<proto::Policy, String> {
    let mut rules = Vec::new();
    for r in v["rules"].as_array().cloned().unwrap_or_default() {
        rules.push(proto::Rule {
            kind: r["kind"].as_str().ok_or("a rule needs a kind")?.to_string(),
            owner_field: r["owner_field"].as_u64().unwrap_or(1) as u32,
            write: access_of(&r["write"], "write")?,
            take: access_of(&r["take"], "take")?,
        });
    }
    let policy = proto::Policy {
        rules,
        default_write: access_of(&v["default_write"], "default_write")?,
        default_take: access_of(&v["default_take"], "default_take")?,
        anonymous_writes: v["anonymous_writes"].as_bool().unwrap_or(false),
        closed_registration: v["closed_registration"].as_bool().unwrap_or(false),
    };
    raftnode::policy::check_policy(&policy)?;
    Ok(policy)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_default_policy_round_trips_through_json() {
        let p = raftnode::policy::default_policy();
        assert_eq!(policy_from_json(&policy_json(&p)).unwrap(), p);
        assert!(policy_from_json(&json!({"rules": [{"kind": "x", "write": "everyone"}]})).is_err());
    }

    #[test]
    fn key_paths_stay_in_the_key_directory() {
        for name in ["alice", "../etc/passwd", ".hidden", "a/b", "ålice"] {
            let path = key_path(name);
            assert_eq!(path.parent(), Some(home().join("keys").as_path()), "{name}");
        }
        assert!(key_path("alice").ends_with("alice.key"));
    }
}
