//! The microblog's data model: what each tuple means, the templates that find them, and the rules
//! input must follow.
//!
//! | tuple | meaning |
//! |---|---|
//! | `("post", author, topic, time_ms, text, reply_to, signature)` | a post, signed by its author; its tuple id is the post id |
//! | `("follow", follower, followee)` | one follow, at most one per pair (written with `cas`) |
//! | `("user", name, public_key)` | a registered user and their Ed25519 key (written by the cluster's `register`) |
//! | `("pastkey", name, public_key, why)` | a key the user had before (`why`: `"rotated"` or `"reset"`) |
//! | `("topic", name)` | a topic that has had a post (written with `cas` on its first post) |
//!
//! **Signed posts.** `signature` is the author's Ed25519 signature (64 bytes) over
//! [`post_signing_bytes`]: `b"microblog-post-v1\0"`, then the author, the topic (`""` for none)
//! and the text, each as a 4-byte little-endian length and its UTF-8 bytes, with `time_ms` (8
//! bytes, little-endian, signed) after the topic and `reply_to` (8 bytes, little-endian, `0` for
//! none) last. Anyone can check a post against the author's key in `("user", author, key)` (or a
//! `"rotated"` past key) without trusting any node; a key that was `"reset"` (lost) no longer
//! vouches for anything.
//!
//! `topic` is `""` for a post without a topic and `reply_to` is `0` for a post that answers none.
//! `time_ms` is the posting client's wall clock (Unix milliseconds): informative only, the order
//! of posts is their id order, which is the cluster's log order.
//!
//! The space indexes tuples by arity and literal first field, so every template here starts with
//! its kind (`"post"`, `"follow"`, ...) and is typed in every other field (`?str`, `?int`): a
//! hand-written tuple of another shape under the same first field never matches.

use serde::Serialize;
use tuplespace::{Field, Kind, Template, Tuple, TupleId, Value, tuple};

use crate::error::{Error, Result};

/// The first field of a post tuple.
pub const POST: &str = "post";
/// The first field of a follow tuple.
pub const FOLLOW: &str = "follow";
/// The first field of a user tuple.
pub const USER: &str = "user";
/// The first field of a topic tuple.
pub const TOPIC: &str = "topic";
/// The first field of a past key's tuple.
pub const PAST_KEY: &str = "pastkey";
/// What a post signature covers, before the post's fields.
pub const POST_DOMAIN: &[u8] = b"microblog-post-v1\0";

/// The largest post text, in bytes of UTF-8.
pub const MAX_POST_BYTES: usize = 4_000;
/// The longest user or topic name, in chars.
pub const MAX_NAME_CHARS: usize = 64;

/// A post as the microblog sees it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Post {
    /// The post id: its tuple's id.
    pub id: TupleId,
    /// Who wrote it.
    pub author: String,
    /// Its topic, if any.
    pub topic: Option<String>,
    /// When it was written, by the author's clock (Unix milliseconds).
    pub time_ms: i64,
    /// The text (UTF-8, at most [`MAX_POST_BYTES`]).
    pub text: String,
    /// The post it answers, if any.
    pub reply_to: Option<TupleId>,
    /// The author's signature over [`post_signing_bytes`] (empty: unsigned).
    #[serde(skip)]
    pub signature: Vec<u8>,
    /// Whether the signature verified against the author's key (set by
    /// [`crate::blog::Blog::verify`]; false until then).
    pub verified: bool,
}

/// The bytes a post's signature covers (see the module's documentation).
pub fn post_signing_bytes(
    author: &str,
    topic: Option<&str>,
    time_ms: i64,
    text: &str,
    reply_to: Option<TupleId>,
) -> Vec<u8> {
    let mut out = POST_DOMAIN.to_vec();
    let string = |s: &str, out: &mut Vec<u8>| {
        out.extend_from_slice(&(s.len() as u32).to_le_bytes());
        out.extend_from_slice(s.as_bytes());
    };
    string(author, &mut out);
    string(topic.unwrap_or(""), &mut out);
    out.extend_from_slice(&time_ms.to_le_bytes());
    string(text, &mut out);
    out.extend_from_slice(&reply_to.unwrap_or(0).to_le_bytes());
    out
}

impl Post {
    /// The tuple that stores this post (the id is the tuple's, not a field).
    pub fn to_tuple(&self) -> Tuple {
        tuple![
            POST,
            self.author.as_str(),
            self.topic.as_deref().unwrap_or(""),
            self.time_ms,
            self.text.as_str(),
            id_value(self.reply_to.unwrap_or(0)),
            Value::Bytes(self.signature.clone().into_boxed_slice()),
        ]
    }

    /// The bytes this post's signature covers.
    pub fn signing_bytes(&self) -> Vec<u8> {
        post_signing_bytes(
            &self.author,
            self.topic.as_deref(),
            self.time_ms,
            &self.text,
            self.reply_to,
        )
    }

    /// The post stored as `tuple` with id `id`, if the tuple has a post's shape.
    pub fn from_tuple(id: TupleId, tuple: &Tuple) -> Option<Post> {
        match tuple.fields() {
            [
                Value::Str(kind),
                Value::Str(author),
                Value::Str(topic),
                Value::Int(time_ms),
                Value::Str(text),
                Value::Int(reply_to),
                Value::Bytes(signature),
            ] if kind.as_str() == POST => Some(Post {
                id,
                author: author.to_string(),
                topic: (!topic.is_empty()).then(|| topic.to_string()),
                time_ms: *time_ms,
                text: text.to_string(),
                reply_to: u64::try_from(*reply_to).ok().filter(|&r| r != 0),
                signature: signature.to_vec(),
                verified: false,
            }),
            _ => None,
        }
    }
}

/// Which posts a read wants.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PostFilter {
    /// Only posts by this author.
    pub author: Option<String>,
    /// Only posts with this topic.
    pub topic: Option<String>,
    /// Only replies to this post.
    pub reply_to: Option<TupleId>,
}

impl PostFilter {
    /// The template that finds exactly these posts.
    pub fn template(&self) -> Template {
        Template::new(vec![
            literal(POST),
            self.author
                .as_deref()
                .map_or(Field::Formal(Kind::Str), literal),
            self.topic
                .as_deref()
                .map_or(Field::Formal(Kind::Str), literal),
            Field::Formal(Kind::Int),
            Field::Formal(Kind::Str),
            self.reply_to
                .map_or(Field::Formal(Kind::Int), |id| Field::Literal(id_value(id))),
            Field::Formal(Kind::Bytes),
        ])
    }
}

/// `("user", name, ?bytes)`: a user's registration (every user's, with `None`).
pub fn user_template(name: Option<&str>) -> Template {
    Template::new(vec![
        literal(USER),
        name.map_or(Field::Formal(Kind::Str), literal),
        Field::Formal(Kind::Bytes),
    ])
}

/// `(name, public_key)` of a registration tuple.
pub fn user_of(tuple: &Tuple) -> Option<(String, Vec<u8>)> {
    match tuple.fields() {
        [Value::Str(kind), Value::Str(name), Value::Bytes(key)] if kind.as_str() == USER => {
            Some((name.to_string(), key.to_vec()))
        }
        _ => None,
    }
}

/// `("pastkey", name, ?bytes, "rotated")`: the keys `name` rotated away from (still vouching
/// for what they signed).
pub fn rotated_keys_template(name: &str) -> Template {
    Template::new(vec![
        literal(PAST_KEY),
        literal(name),
        Field::Formal(Kind::Bytes),
        literal("rotated"),
    ])
}

/// `("follow", follower, followee)`; `None` matches anyone in that place.
pub fn follow_template(follower: Option<&str>, followee: Option<&str>) -> Template {
    Template::new(vec![
        literal(FOLLOW),
        follower.map_or(Field::Formal(Kind::Str), literal),
        followee.map_or(Field::Formal(Kind::Str), literal),
    ])
}

/// The follow tuple.
pub fn follow_tuple(follower: &str, followee: &str) -> Tuple {
    tuple![FOLLOW, follower, followee]
}

/// `(follower, followee)` of a follow tuple.
pub fn follow_of(tuple: &Tuple) -> Option<(String, String)> {
    match tuple.fields() {
        [Value::Str(kind), Value::Str(a), Value::Str(b)] if kind.as_str() == FOLLOW => {
            Some((a.to_string(), b.to_string()))
        }
        _ => None,
    }
}

/// A registry tuple: `("user", name)` or `("topic", name)`.
pub fn name_tuple(kind: &str, name: &str) -> Tuple {
    tuple![kind, name]
}

/// Every registry tuple of `kind`.
pub fn names_template(kind: &str) -> Template {
    Template::new(vec![literal(kind), Field::Formal(Kind::Str)])
}

/// The name in a registry tuple of `kind`.
pub fn name_of(kind: &str, tuple: &Tuple) -> Option<String> {
    match tuple.fields() {
        [Value::Str(k), Value::Str(name)] if k.as_str() == kind => Some(name.to_string()),
        _ => None,
    }
}

fn literal(s: &str) -> Field {
    Field::Literal(Value::from(s))
}

/// Post ids are stored as ints (ids never reach 2^63).
fn id_value(id: TupleId) -> Value {
    Value::Int(i64::try_from(id).unwrap_or(i64::MAX))
}

/// Checks a user name: 1 to 64 chars, no whitespace or control characters.
pub fn check_user(name: &str) -> Result<()> {
    check_name("user", name)
}

/// Checks a topic name: the same rules as user names.
pub fn check_topic(name: &str) -> Result<()> {
    check_name("topic", name)
}

fn check_name(what: &str, name: &str) -> Result<()> {
    let rule = format!(
        "a {what} name is 1 to {MAX_NAME_CHARS} characters without spaces or control characters"
    );
    if name.is_empty() {
        return Err(Error::usage(format!("empty {what} name")).hint(rule));
    }
    if let Some(c) = name.chars().find(|c| c.is_control() || c.is_whitespace()) {
        let kind = if c.is_control() {
            "a control character"
        } else {
            "whitespace"
        };
        return Err(
            Error::usage(format!("{what} name {name:?} contains {kind} ({:?})", c)).hint(rule),
        );
    }
    let chars = name.chars().count();
    if chars > MAX_NAME_CHARS {
        return Err(Error::usage(format!("{what} name is {chars} characters long")).hint(rule));
    }
    Ok(())
}

/// Checks a post's text: not blank, at most [`MAX_POST_BYTES`] bytes, and no control characters
/// but newline and tab (so nobody's post can drive other people's terminals).
pub fn check_text(text: &str) -> Result<()> {
    if text.trim().is_empty() {
        return Err(Error::usage("empty post").hint("write some text: microblog post \"hello\""));
    }
    if text.len() > MAX_POST_BYTES {
        return Err(Error::usage(format!(
            "post is {} bytes; the limit is {MAX_POST_BYTES} bytes of UTF-8",
            text.len()
        ))
        .hint("shorten it, or split it into a thread with --reply-to"));
    }
    if let Some(c) = text
        .chars()
        .find(|&c| c.is_control() && c != '\n' && c != '\t')
    {
        return Err(
            Error::usage(format!("post contains the control character {c:?}"))
                .hint("only newlines and tabs are allowed"),
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn post(reply_to: Option<TupleId>, topic: Option<&str>) -> Post {
        Post {
            id: 7,
            author: "ålice".into(),
            topic: topic.map(Into::into),
            time_ms: 1_700_000_000_000,
            text: "héllo 🌍\nworld".into(),
            reply_to,
            signature: vec![7; 64],
            verified: false,
        }
    }

    #[test]
    fn posts_round_trip_through_tuples() {
        for p in [
            post(None, None),
            post(Some(3), Some("rust")),
            post(None, Some("x")),
        ] {
            let t = p.to_tuple();
            assert_eq!(Post::from_tuple(7, &t), Some(p.clone()));
            assert!(PostFilter::default().template().matches(t.fields()));
        }
        assert_eq!(Post::from_tuple(1, &tuple!["post", "a"]), None);
        assert_eq!(
            Post::from_tuple(1, &tuple!["post", "a", "", "soon", "x", 0]),
            None
        );
    }

    #[test]
    fn filters_match_what_they_say() {
        let p = post(Some(3), Some("rust")).to_tuple();
        let yes = |f: PostFilter| f.template().matches(p.fields());
        assert!(yes(PostFilter {
            author: Some("ålice".into()),
            ..PostFilter::default()
        }));
        assert!(!yes(PostFilter {
            author: Some("bob".into()),
            ..PostFilter::default()
        }));
        assert!(yes(PostFilter {
            topic: Some("rust".into()),
            reply_to: Some(3),
            ..PostFilter::default()
        }));
        assert!(!yes(PostFilter {
            reply_to: Some(4),
            ..PostFilter::default()
        }));
        // The template is indexable: its first field is a literal.
        assert!(PostFilter::default().template().index_key().is_some());
    }

    #[test]
    fn follows_and_names() {
        let t = follow_tuple("a", "b");
        assert!(follow_template(Some("a"), None).matches(t.fields()));
        assert!(!follow_template(None, Some("a")).matches(t.fields()));
        assert_eq!(follow_of(&t), Some(("a".into(), "b".into())));
        let u = name_tuple(USER, "zoë");
        assert!(names_template(USER).matches(u.fields()));
        assert!(!names_template(TOPIC).matches(u.fields()));
        assert_eq!(name_of(USER, &u).as_deref(), Some("zoë"));
    }

    #[test]
    fn name_rules() {
        assert!(check_user("alice").is_ok());
        assert!(check_user("zoë_日本").is_ok());
        assert!(check_user(&"é".repeat(64)).is_ok());
        for bad in ["", "a b", "a\u{7}", "tab\t", "new\nline", &"x".repeat(65)] {
            let e = check_user(bad).unwrap_err();
            assert_eq!(e.exit_code(), 2, "{bad:?}");
        }
        assert!(check_user("").unwrap_err().message.contains("empty"));
        assert!(
            check_topic("a\u{1b}")
                .unwrap_err()
                .message
                .contains("control")
        );
    }

    #[test]
    fn text_rules() {
        assert!(check_text("hello\n\tworld 🌍").is_ok());
        assert!(check_text(&"é".repeat(2_000)).is_ok()); // 4,000 bytes exactly
        let e = check_text(&"é".repeat(2_001)).unwrap_err();
        assert!(e.message.contains("4000 bytes"), "{}", e.message);
        assert!(check_text("  \n").is_err());
        assert!(check_text("esc \u{1b}[2J").is_err());
    }
}
