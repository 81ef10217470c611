//! The microblog's operations over any [`Store`]: what each command does to the tuple space.
//!
//! Reads lean on the space's index (arity + literal first field) and on newest-first queries with
//! a limit, which stop as soon as they have enough: `read --limit 20` visits the newest posts
//! until it has 20 matches, never the whole history. A post's replies always have higher ids than
//! the post, so `show` scans only what came after it.

use std::collections::BTreeSet;

use raftnode::client::ClientError;
use tuplespace::union::Join;
use tuplespace::{Query, Template, TupleId, Value};

use crate::error::{Error, Result};
use crate::model::{
    Post, PostFilter, TOPIC, check_text, check_topic, check_user, follow_of, follow_template,
    follow_tuple, name_of, name_tuple, names_template, rotated_keys_template, user_of,
    user_template,
};
use crate::store::{MAX_LIST, Store, rd_every};

/// Up to this many authors (the most templates of a union copy-collect), a timeline is one
/// request for the newest posts by any of them; beyond it, it pages through all posts newest
/// first and keeps the followed authors' ones.
pub use tuplespace::union::MAX_TEMPLATES;

/// Posts per page when a timeline pages through all posts.
const TIMELINE_PAGE: usize = 1_000;

/// The most pages such a timeline reads (100,000 posts).
const TIMELINE_MAX_PAGES: usize = 100;

/// What `follow` did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FollowOutcome {
    /// A new follow.
    Followed,
    /// The follow was already there; nothing changed.
    AlreadyFollowing,
}

/// A user or topic with its number of posts.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NameCount {
    /// The name.
    pub name: String,
    /// How many posts it has.
    pub posts: u64,
}

/// A registered user.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UserInfo {
    /// The name.
    pub name: String,
    /// Their key's fingerprint.
    pub fingerprint: String,
    /// How many posts they have.
    pub posts: u64,
}

/// Whether [`Blog::ensure_registered`] registered the user just now.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Registration {
    /// The user was registered with this key already.
    Known,
    /// The user was registered just now.
    New,
}

/// The microblog over a store.
pub struct Blog<S> {
    /// Where the tuples live.
    pub store: S,
    /// What this blog has seen exist already, so a post checks it once, not every time.
    known: Known,
}

/// The most topics a [`Blog`] remembers as existing.
const MAX_KNOWN_TOPICS: usize = 4_096;

/// The most post signatures a [`Blog`] remembers as verified.
const MAX_KNOWN_SIGNATURES: usize = 16_384;

/// Names this blog saw registered: the user (with the key that signs) and topics. Only a
/// shortcut for the checks before a write: the cluster decides every write itself. And the post
/// signatures it verified: (post id, the hash of key, signed bytes and signature).
#[derive(Default)]
struct Known {
    user: Option<(String, Vec<u8>)>,
    topics: std::collections::HashSet<String>,
    signatures: std::collections::HashSet<(TupleId, [u8; 32])>,
}

impl Known {
    fn digest(key: &[u8], message: &[u8], signature: &[u8]) -> [u8; 32] {
        let mut h = blake3::Hasher::new();
        for part in [key, message, signature] {
            h.update(&(part.len() as u64).to_le_bytes());
            h.update(part);
        }
        *h.finalize().as_bytes()
    }

    fn verified(&self, id: TupleId, key: &[u8], message: &[u8], signature: &[u8]) -> bool {
        self.signatures
            .contains(&(id, Known::digest(key, message, signature)))
    }

    fn remember(&mut self, id: TupleId, key: &[u8], message: &[u8], signature: &[u8]) {
        if self.signatures.len() >= MAX_KNOWN_SIGNATURES {
            self.signatures.clear();
        }
        self.signatures
            .insert((id, Known::digest(key, message, signature)));
    }
}

impl<S: Store> Blog<S> {
    /// The microblog over `store`.
    pub fn new(store: S) -> Blog<S> {
        Blog {
            store,
            known: Known::default(),
        }
    }

    /// Writes `author`'s post and returns it with its id. One `out`: a retried request is applied
    /// once (the client's session), so a post is never made twice. A reply without a topic takes
    /// its parent's.
    pub async fn post(
        &mut self,
        author: &str,
        text: &str,
        topic: Option<&str>,
        reply_to: Option<TupleId>,
        time_ms: i64,
    ) -> Result<Post> {
        check_user(author)?;
        check_text(text)?;
        if let Some(t) = topic {
            check_topic(t)?;
        }
        let mut topic = topic.map(str::to_string);
        if let Some(parent) = reply_to {
            let Some(parent) = self.get_post(parent).await? else {
                return Err(Error::not_found(format!("no post #{parent} to reply to"))
                    .hint("`microblog read` lists posts with their ids"));
            };
            if topic.is_none() {
                topic = parent.topic;
            }
        }
        self.ensure_registered(author).await?;
        if let Some(t) = &topic {
            self.register(TOPIC, t).await?;
        }
        let mut post = Post {
            id: 0,
            author: author.to_string(),
            topic,
            time_ms,
            text: text.to_string(),
            reply_to,
            signature: Vec::new(),
            verified: false,
        };
        if let Some(me) = self.store.identity() {
            post.signature = me.sign(&post.signing_bytes()).to_vec();
            post.verified = true;
        }
        post.id = self.store.out(&post.to_tuple()).await?;
        Ok(post)
    }

    /// Makes sure `me` is registered with the store's identity's key: registers it if the name
    /// is free (first come, first served), refuses if the name has another key.
    pub async fn ensure_registered(&mut self, me: &str) -> Result<Registration> {
        let Some(identity) = self.store.identity() else {
            if self.user_exists(me).await? {
                return Ok(Registration::Known);
            }
            self.store.register(me).await?;
            return Ok(Registration::New);
        };
        if identity.user() != me {
            return Err(Error::not_allowed(format!(
                "you act as {me}, but the key in use is {}'s",
                identity.user()
            )));
        }
        let mine = identity.public_key().to_vec();
        if self
            .known
            .user
            .as_ref()
            .is_some_and(|(name, key)| name == me && *key == mine)
        {
            return Ok(Registration::Known);
        }
        let fingerprint = identity.fingerprint();
        let known = Some((me.to_string(), mine.clone()));
        match self.store.rdp(&user_template(Some(me)), 0).await? {
            Some((_, t)) => match user_of(&t) {
                Some((_, key)) if key == mine => {
                    self.known.user = known;
                    Ok(Registration::Known)
                }
                _ => Err(Error::not_allowed(format!(
                    "the name {me:?} is registered with another key, not yours ({fingerprint})"
                ))
                .hint(
                    "use the key home that holds that name's key (MICROBLOG_HOME), pick another \
                     name, or, for a lost key, ask the admin: `microblog --admin users reset`",
                )),
            },
            None => {
                self.store.register(me).await?;
                self.known.user = known;
                Ok(Registration::New)
            }
        }
    }

    /// Checks every post's signature against its author's key (or a key the author rotated
    /// away from) and sets [`Post::verified`]. The authors' keys come in one union copy-collect
    /// (per [`MAX_TEMPLATES`] / 2 authors) and the signatures are checked in one batch.
    pub async fn verify(&mut self, posts: &mut [Post]) -> Result<()> {
        let authors: BTreeSet<&str> = posts.iter().map(|p| p.author.as_str()).collect();
        let authors: Vec<&str> = authors.into_iter().collect();
        let mut keys: std::collections::HashMap<String, Vec<Vec<u8>>> = Default::default();
        for chunk in authors.chunks(MAX_TEMPLATES / 2) {
            let templates: Vec<Template> = chunk
                .iter()
                .flat_map(|a| [user_template(Some(a)), rotated_keys_template(a)])
                .collect();
            let found = self
                .store
                .rd_any(&templates, &Query::limit(MAX_LIST))
                .await?;
            for (_, t) in found {
                let (name, key) = match (user_of(&t), t.fields()) {
                    (Some(user), _) => user,
                    (None, [_, Value::Str(name), Value::Bytes(key), _]) => {
                        (name.to_string(), key.to_vec())
                    }
                    _ => continue,
                };
                keys.entry(name).or_default().push(key);
            }
        }
        let mut checks = Vec::new();
        let mut whose = Vec::new();
        let mut verified = vec![false; posts.len()];
        for (i, post) in posts.iter().enumerate() {
            let message = post.signing_bytes();
            for key in keys.get(&post.author).into_iter().flatten() {
                // A post this blog checked before against this same key: its bytes are the
                // same (a tuple never changes), so is the verdict. The key must still be one of
                // the author's, which was just read.
                if self.known.verified(post.id, key, &message, &post.signature) {
                    verified[i] = true;
                    break;
                }
                checks.push((key.as_slice(), message.clone(), post.signature.as_slice()));
                whose.push(i);
            }
        }
        let verdicts = raftnode::verifier::verify_all(&checks);
        for ((i, ok), (key, message, signature)) in whose.into_iter().zip(verdicts).zip(&checks) {
            if ok {
                self.known.remember(posts[i].id, key, message, signature);
            }
            verified[i] |= ok;
        }
        for (post, ok) in posts.iter_mut().zip(verified) {
            post.verified = ok;
        }
        Ok(())
    }

    /// Adds `("user", name)` or `("topic", name)` unless it is there (a read first, so the usual
    /// case writes nothing; `cas` makes a race harmless).
    async fn register(&mut self, kind: &str, name: &str) -> Result<()> {
        if kind == TOPIC && self.known.topics.contains(name) {
            return Ok(());
        }
        let entry = name_tuple(kind, name);
        let exact = Template::literal(&entry);
        if self.store.rdp(&exact, 0).await?.is_none() {
            self.store.cas(&exact, &entry).await?;
        }
        if kind == TOPIC {
            if self.known.topics.len() >= MAX_KNOWN_TOPICS {
                self.known.topics.clear();
            }
            self.known.topics.insert(name.to_string());
        }
        Ok(())
    }

    /// `name`'s registered public key, if `name` is a user.
    pub async fn key_of(&mut self, name: &str) -> Result<Option<Vec<u8>>> {
        check_user(name)?;
        Ok(self
            .store
            .rdp(&user_template(Some(name)), 0)
            .await?
            .and_then(|(_, t)| user_of(&t))
            .map(|(_, key)| key))
    }

    /// Whether `name` is a registered user.
    pub async fn user_exists(&mut self, name: &str) -> Result<bool> {
        Ok(self
            .store
            .rdp(&user_template(Some(name)), 0)
            .await?
            .is_some())
    }

    async fn require_user(&mut self, name: &str) -> Result<()> {
        check_user(name)?;
        if self.user_exists(name).await? {
            Ok(())
        } else {
            Err(Error::not_found(format!("no user {name:?}")).hint(
                "`microblog users` lists users; a user appears when they register (their first \
                 post or follow registers them)",
            ))
        }
    }

    /// The post with this id, if there is one.
    pub async fn get_post(&mut self, id: TupleId) -> Result<Option<Post>> {
        let tuple = self.store.read_id(id).await?;
        Ok(tuple.and_then(|t| Post::from_tuple(id, &t)))
    }

    /// Up to `limit` posts matching `filter` with ids below `before`, newest first.
    pub async fn read(
        &mut self,
        filter: &PostFilter,
        limit: usize,
        before: Option<TupleId>,
    ) -> Result<Vec<Post>> {
        if let Some(a) = &filter.author {
            check_user(a)?;
        }
        if let Some(t) = &filter.topic {
            check_topic(t)?;
        }
        let query = Query {
            limit: limit.clamp(1, MAX_LIST),
            before: before.unwrap_or(TupleId::MAX),
            newest_first: true,
            ..Query::default()
        };
        let entries = self.store.rd_all(&filter.template(), &query).await?;
        Ok(posts_of(entries))
    }

    /// A post and its first `limit` direct replies, oldest first.
    pub async fn show_first(&mut self, id: TupleId, limit: usize) -> Result<(Post, Vec<Post>)> {
        let Some(post) = self.get_post(id).await? else {
            return Err(no_post(id));
        };
        let replies = PostFilter {
            reply_to: Some(id),
            ..PostFilter::default()
        };
        let query = Query {
            limit: limit.clamp(1, MAX_LIST),
            after: id,
            ..Query::default()
        };
        let entries = self.store.rd_all(&replies.template(), &query).await?;
        Ok((post, posts_of(entries)))
    }

    /// A post and its direct replies, oldest reply first.
    pub async fn show(&mut self, id: TupleId) -> Result<(Post, Vec<Post>)> {
        let Some(post) = self.get_post(id).await? else {
            return Err(no_post(id));
        };
        let replies = PostFilter {
            reply_to: Some(id),
            ..PostFilter::default()
        };
        let entries = rd_every(&mut self.store, &replies.template(), id).await?;
        Ok((post, posts_of(entries)))
    }

    /// Up to `limit` posts by `me` and everyone `me` follows, with ids below `before`, newest
    /// first.
    pub async fn timeline(
        &mut self,
        me: &str,
        limit: usize,
        before: Option<TupleId>,
    ) -> Result<Vec<Post>> {
        check_user(me)?;
        let limit = limit.clamp(1, MAX_LIST);
        // One read: my posts, and the posts of everyone my follow tuples name, joined in the
        // cluster when the read runs (a consistent timeline in one round trip).
        let mine = PostFilter {
            author: Some(me.to_string()),
            ..PostFilter::default()
        };
        let join = Join {
            source: follow_template(Some(me), None),
            source_field: 2,
            target: PostFilter::default().template(),
            target_field: 1,
        };
        let query = Query {
            limit,
            before: before.unwrap_or(TupleId::MAX),
            newest_first: true,
            ..Query::default()
        };
        match self.store.rd_join(&[mine.template()], &join, &query).await {
            Ok(found) => return Ok(posts_of(found)),
            // Following more than the join takes: the slower ways below.
            Err(ClientError::OverLimit(_)) => {}
            Err(e) => return Err(e.into()),
        }
        let mut authors: BTreeSet<String> = self.follows(Some(me), None).await?;
        authors.insert(me.to_string());
        if authors.len() <= MAX_TEMPLATES {
            // One union copy-collect: the newest posts by any of them.
            let templates: Vec<Template> = authors
                .into_iter()
                .map(|author| {
                    PostFilter {
                        author: Some(author),
                        ..PostFilter::default()
                    }
                    .template()
                })
                .collect();
            let query = Query {
                limit,
                before: before.unwrap_or(TupleId::MAX),
                newest_first: true,
                ..Query::default()
            };
            return Ok(posts_of(self.store.rd_any(&templates, &query).await?));
        }
        let every_post = PostFilter::default().template();
        let mut found = Vec::new();
        let mut before = before.unwrap_or(TupleId::MAX);
        // Bounded: a timeline over very many authors, of whom few posted lately, stops after
        // this many pages with what it found (an older page goes on with `before`).
        for _ in 0..TIMELINE_MAX_PAGES {
            let query = Query {
                limit: TIMELINE_PAGE,
                before,
                newest_first: true,
                ..Query::default()
            };
            let page = self.store.rd_all(&every_post, &query).await?;
            let last_page = page.len() < TIMELINE_PAGE;
            if let Some(&(oldest, _)) = page.last() {
                before = oldest;
            }
            for post in posts_of(page) {
                if authors.contains(&post.author) {
                    found.push(post);
                    if found.len() == limit {
                        return Ok(found);
                    }
                }
            }
            if last_page {
                return Ok(found);
            }
        }
        Ok(found)
    }

    /// `me` follows `them` (who must exist). Following twice changes nothing.
    pub async fn follow(&mut self, me: &str, them: &str) -> Result<FollowOutcome> {
        check_user(me)?;
        if me == them {
            return Err(Error::failed("you cannot follow yourself")
                .hint("your own posts are always in your timeline"));
        }
        self.require_user(them).await?;
        self.ensure_registered(me).await?;
        let pair = follow_template(Some(me), Some(them));
        match self.store.cas(&pair, &follow_tuple(me, them)).await? {
            Some(_) => Ok(FollowOutcome::Followed),
            None => Ok(FollowOutcome::AlreadyFollowing),
        }
    }

    /// `me` stops following `them`.
    pub async fn unfollow(&mut self, me: &str, them: &str) -> Result<()> {
        check_user(me)?;
        check_user(them)?;
        let pair = follow_template(Some(me), Some(them));
        let mut removed = false;
        // cas keeps one tuple per pair; raw `tuple out`s could have added more, so take them all.
        while self.store.inp(&pair).await?.is_some() {
            removed = true;
        }
        if removed {
            Ok(())
        } else {
            Err(Error::not_found(format!("{me} does not follow {them}"))
                .hint("`microblog following` lists whom you follow"))
        }
    }

    /// Whom `user` follows, by name.
    pub async fn following(&mut self, user: &str) -> Result<Vec<String>> {
        self.require_user(user).await?;
        Ok(self.follows(Some(user), None).await?.into_iter().collect())
    }

    /// Who follows `user`, by name.
    pub async fn followers(&mut self, user: &str) -> Result<Vec<String>> {
        self.require_user(user).await?;
        Ok(self.follows(None, Some(user)).await?.into_iter().collect())
    }

    /// The other side of every follow matching the pattern.
    async fn follows(
        &mut self,
        follower: Option<&str>,
        followee: Option<&str>,
    ) -> Result<BTreeSet<String>> {
        let entries = rd_every(&mut self.store, &follow_template(follower, followee), 0).await?;
        Ok(entries
            .iter()
            .filter_map(|(_, t)| follow_of(t))
            .map(|(a, b)| if follower.is_some() { b } else { a })
            .collect())
    }

    /// Every registered user with their key's fingerprint and number of posts, by name.
    pub async fn users(&mut self) -> Result<Vec<UserInfo>> {
        self.users_first(usize::MAX).await
    }

    /// The first `limit` registered users by name, with fingerprints and post counts (one count
    /// request each: the web app shows a bounded page of them).
    pub async fn users_first(&mut self, limit: usize) -> Result<Vec<UserInfo>> {
        let entries = rd_every(&mut self.store, &user_template(None), 0).await?;
        let mut users: Vec<(String, Vec<u8>)> =
            entries.iter().filter_map(|(_, t)| user_of(t)).collect();
        users.sort();
        users.truncate(limit);
        let mut out = Vec::with_capacity(users.len());
        for (name, key) in users {
            let filter = PostFilter {
                author: Some(name.clone()),
                ..PostFilter::default()
            };
            let posts = self.store.count(&filter.template()).await?;
            let fingerprint = raftnode::identity::fingerprint(&key);
            out.push(UserInfo {
                name,
                fingerprint,
                posts,
            });
        }
        Ok(out)
    }

    /// Every topic with its number of posts, most posts first.
    pub async fn topics(&mut self) -> Result<Vec<NameCount>> {
        self.topics_first(usize::MAX).await
    }

    /// The first `limit` topics by name, with their numbers of posts, most posts first (one count
    /// request each).
    pub async fn topics_first(&mut self, limit: usize) -> Result<Vec<NameCount>> {
        let names = self.names(TOPIC).await?;
        let mut out = Vec::with_capacity(names.len().min(limit));
        for name in names.into_iter().take(limit) {
            let filter = PostFilter {
                topic: Some(name.clone()),
                ..PostFilter::default()
            };
            let posts = self.store.count(&filter.template()).await?;
            out.push(NameCount { name, posts });
        }
        out.sort_by(|a, b| b.posts.cmp(&a.posts).then_with(|| a.name.cmp(&b.name)));
        Ok(out)
    }

    async fn names(&mut self, kind: &str) -> Result<BTreeSet<String>> {
        let entries = rd_every(&mut self.store, &names_template(kind), 0).await?;
        Ok(entries
            .iter()
            .filter_map(|(_, t)| name_of(kind, t))
            .collect())
    }

    /// Deletes post `id` if `me` wrote it; returns it. Someone else's post is refused.
    pub async fn delete(&mut self, me: &str, id: TupleId) -> Result<Post> {
        check_user(me)?;
        let Some(post) = self.get_post(id).await? else {
            return Err(no_post(id));
        };
        if post.author != me {
            return Err(Error::failed(format!(
                "post #{id} is by {}, not {me}: you can only delete your own posts",
                post.author
            )));
        }
        // Ids are never reused, so the tuple under this id is still this post, or gone.
        match self.store.take_id(id).await? {
            Some(_) => Ok(post),
            None => Err(Error::not_found(format!(
                "post #{id} was deleted meanwhile"
            ))),
        }
    }

    /// The id of the newest post matching `filter` (0 if none): where a tail starts.
    pub async fn latest_id(&mut self, filter: &PostFilter) -> Result<TupleId> {
        Ok(self
            .read(filter, 1, None)
            .await?
            .first()
            .map_or(0, |p| p.id))
    }
}

fn no_post(id: TupleId) -> Error {
    Error::not_found(format!("no post #{id}"))
        .hint("it may have been deleted; `microblog read` lists posts with their ids")
}

/// The posts among `entries`, in their order (tuples of another shape are skipped).
pub fn posts_of(entries: Vec<(TupleId, tuplespace::Tuple)>) -> Vec<Post> {
    entries
        .into_iter()
        .filter_map(|(id, t)| Post::from_tuple(id, &t))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::MemoryStore;
    use tuplespace::tuple;

    fn blog() -> Blog<MemoryStore> {
        Blog::new(MemoryStore::default())
    }

    fn ids(posts: &[Post]) -> Vec<TupleId> {
        posts.iter().map(|p| p.id).collect()
    }

    #[tokio::test]
    async fn post_read_show_delete() {
        let mut b = blog();
        let a1 = b
            .post("alice", "first", Some("rust"), None, 1)
            .await
            .unwrap();
        let b1 = b
            .post("bob", "hi alice", None, Some(a1.id), 2)
            .await
            .unwrap();
        assert_eq!(
            b1.topic.as_deref(),
            Some("rust"),
            "a reply takes its parent's topic"
        );
        let a2 = b.post("alice", "second", None, None, 3).await.unwrap();
        let all = b.read(&PostFilter::default(), 10, None).await.unwrap();
        assert_eq!(ids(&all), vec![a2.id, b1.id, a1.id]);
        let by_alice = PostFilter {
            author: Some("alice".into()),
            ..PostFilter::default()
        };
        assert_eq!(
            ids(&b.read(&by_alice, 10, None).await.unwrap()),
            vec![a2.id, a1.id]
        );
        assert_eq!(ids(&b.read(&by_alice, 1, None).await.unwrap()), vec![a2.id]);
        assert_eq!(
            ids(&b.read(&by_alice, 10, Some(a2.id)).await.unwrap()),
            vec![a1.id]
        );
        let rust = PostFilter {
            topic: Some("rust".into()),
            ..PostFilter::default()
        };
        assert_eq!(
            ids(&b.read(&rust, 10, None).await.unwrap()),
            vec![b1.id, a1.id]
        );
        let (post, replies) = b.show(a1.id).await.unwrap();
        assert_eq!((post.id, ids(&replies)), (a1.id, vec![b1.id]));
        assert_eq!(b.show(999).await.unwrap_err().exit_code(), 3);
        assert_eq!(
            b.post("bob", "x", None, Some(999), 4)
                .await
                .unwrap_err()
                .exit_code(),
            3
        );

        let refused = b.delete("bob", a1.id).await.unwrap_err();
        assert_eq!(refused.exit_code(), 1);
        assert!(refused.message.contains("your own"), "{}", refused.message);
        assert_eq!(b.delete("alice", a1.id).await.unwrap().id, a1.id);
        assert_eq!(b.delete("alice", a1.id).await.unwrap_err().exit_code(), 3);
        assert_eq!(b.latest_id(&by_alice).await.unwrap(), a2.id);
    }

    #[tokio::test]
    async fn follows_and_timelines() {
        let mut b = blog();
        b.post("alice", "a", None, None, 1).await.unwrap();
        b.post("bob", "b", None, None, 2).await.unwrap();
        b.post("carol", "c", None, None, 3).await.unwrap();
        assert_eq!(
            b.follow("alice", "bob").await.unwrap(),
            FollowOutcome::Followed
        );
        assert_eq!(
            b.follow("alice", "bob").await.unwrap(),
            FollowOutcome::AlreadyFollowing
        );
        assert_eq!(b.follow("alice", "alice").await.unwrap_err().exit_code(), 1);
        assert_eq!(
            b.follow("alice", "nobody").await.unwrap_err().exit_code(),
            3
        );
        assert_eq!(b.follow("a b", "bob").await.unwrap_err().exit_code(), 2);
        b.follow("carol", "bob").await.unwrap();
        assert_eq!(b.following("alice").await.unwrap(), vec!["bob"]);
        assert_eq!(b.followers("bob").await.unwrap(), vec!["alice", "carol"]);
        assert_eq!(b.following("nobody").await.unwrap_err().exit_code(), 3);
        let tl = b.timeline("alice", 10, None).await.unwrap();
        let authors: Vec<&str> = tl.iter().map(|p| p.author.as_str()).collect();
        assert_eq!(authors, vec!["bob", "alice"]);
        b.unfollow("alice", "bob").await.unwrap();
        assert_eq!(b.unfollow("alice", "bob").await.unwrap_err().exit_code(), 3);
        assert!(b.following("alice").await.unwrap().is_empty());
        let tl = b.timeline("alice", 10, None).await.unwrap();
        assert_eq!(tl.len(), 1);
        // Somebody who never posted has an empty timeline, not an error.
        assert!(b.timeline("newcomer", 10, None).await.unwrap().is_empty());
    }

    #[tokio::test]
    async fn a_timeline_over_many_authors_pages_through_all_posts() {
        let mut b = blog();
        let n = MAX_TEMPLATES + 4;
        for i in 0..n {
            b.post(&format!("u{i}"), "hello", None, None, 0)
                .await
                .unwrap();
        }
        for i in 0..n {
            b.follow("me", &format!("u{i}")).await.unwrap();
        }
        // Noise from someone not followed, enough to need several pages.
        for _ in 0..(2 * TIMELINE_PAGE + 10) {
            b.post("stranger", "noise", None, None, 0).await.unwrap();
        }
        let mine = b.post("me", "mine", None, None, 0).await.unwrap();
        let tl = b.timeline("me", 1_000, None).await.unwrap();
        assert_eq!(tl.len(), n + 1);
        assert_eq!(tl[0].id, mine.id);
        assert!(tl.windows(2).all(|w| w[0].id > w[1].id), "newest first");
        assert!(tl.iter().all(|p| p.author != "stranger"));
        let few = b.timeline("me", 3, None).await.unwrap();
        assert_eq!(ids(&few), ids(&tl[..3]));
        let older = b.timeline("me", 1_000, Some(tl[2].id)).await.unwrap();
        assert_eq!(ids(&older), ids(&tl[3..]));
    }

    #[tokio::test]
    async fn users_and_topics_with_counts() {
        let mut b = blog();
        b.post("bob", "1", Some("rust"), None, 0).await.unwrap();
        b.post("bob", "2", Some("rust"), None, 0).await.unwrap();
        b.post("alice", "3", Some("zig"), None, 0).await.unwrap();
        b.post("alice", "4", None, None, 0).await.unwrap();
        b.follow("carol", "bob").await.unwrap();
        // A hand-written tuple of another shape under "post" is ignored, never miscounted.
        b.store.out(&tuple!["post", "bob"]).await.unwrap();
        let users = b.users().await.unwrap();
        let got: Vec<(&str, u64)> = users.iter().map(|u| (u.name.as_str(), u.posts)).collect();
        assert_eq!(got, vec![("alice", 2), ("bob", 2), ("carol", 0)]);
        let topics = b.topics().await.unwrap();
        let got: Vec<(&str, u64)> = topics.iter().map(|u| (u.name.as_str(), u.posts)).collect();
        assert_eq!(got, vec![("rust", 2), ("zig", 1)]);
    }

    #[tokio::test]
    async fn bad_input_is_refused_before_anything_is_written() {
        let mut b = blog();
        let big = "x".repeat(crate::model::MAX_POST_BYTES + 1);
        for (author, text, topic) in [
            ("", "hi", None),
            ("a\u{7}", "hi", None),
            ("alice", "", None),
            ("alice", big.as_str(), None),
            ("alice", "hi", Some("two words")),
        ] {
            let e = b.post(author, text, topic, None, 0).await.unwrap_err();
            assert_eq!(e.exit_code(), 2, "{author:?} {topic:?}: {e}");
        }
        assert!(b.store.space.is_empty());
    }
}
