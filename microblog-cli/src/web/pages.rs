//! The pages, as maud templates: checked at compile time, and every piece of user text escaped
//! (maud escapes whatever it splices), bidirectional-text controls shown rather than obeyed.

use maud::{DOCTYPE, Markup, PreEscaped, html};

use crate::blog::{NameCount, UserInfo};
use crate::model::Post;

/// Characters that reorder the text around them (bidi embeddings, overrides and isolates): a post
/// could use them to make its text, or what follows it, read differently from what it is. They
/// are shown as their code points instead.
fn is_bidi_control(c: char) -> bool {
    matches!(c, '\u{202A}'..='\u{202E}' | '\u{2066}'..='\u{2069}' | '\u{200E}' | '\u{200F}' | '\u{061C}')
}

/// User text made safe to show: bidi controls replaced by a visible `[U+XXXX]` (maud escapes the
/// rest when it is spliced).
pub fn visible(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        if is_bidi_control(c) {
            out.push_str(&format!("[U+{:04X}]", c as u32));
        } else {
            out.push(c);
        }
    }
    out
}

/// Where the signed-in user's name comes from (a cookie holding only the name: no secret).
pub struct Me<'a>(pub Option<&'a str>);

/// The frame every page shares.
pub fn layout(title: &str, me: &Me<'_>, live: Option<&str>, body: Markup) -> Markup {
    html! {
        (DOCTYPE)
        html lang="en" {
            head {
                meta charset="utf-8";
                meta name="viewport" content="width=device-width, initial-scale=1";
                title { (visible(title)) " · microblog" }
                link rel="stylesheet" href="/static/style.css";
                script type="module" src="/static/app.js" {}
            }
            body data-live=[live] data-me=[me.0] {
                header.top {
                    nav {
                        a href="/" { "everyone" }
                        a href="/home" { "home" }
                        a href="/users" { "users" }
                        a href="/topics" { "topics" }
                        a href="/compose" { "compose" }
                    }
                    div #who {
                        @if let Some(me) = me.0 {
                            "signed in as " a href={ "/u/" (urlencode(me)) } { bdi { (visible(me)) } }
                        } @else {
                            a href="/account" { "sign in" }
                        }
                    }
                }
                main {
                    h1 { bdi { (visible(title)) } }
                    (body)
                }
                footer.bottom {
                    p { "Posts are signed by their authors in their browsers or programs; "
                        "✓ means the signature verified against the author's registered key." }
                }
            }
        }
    }
}

/// A URL path segment.
pub fn urlencode(s: &str) -> String {
    let mut out = String::new();
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

fn time_of(ms: i64) -> String {
    crate::output::rfc3339(ms)
}

/// One post.
pub fn post(p: &Post) -> Markup {
    html! {
        article.post data-id=(p.id) data-author=(p.author) {
            header {
                a.author href={ "/u/" (urlencode(&p.author)) } { bdi { (visible(&p.author)) } }
                @if let Some(topic) = &p.topic {
                    " in " a.topic href={ "/t/" (urlencode(topic)) } { "#" bdi { (visible(topic)) } }
                }
                " · "
                a.when href={ "/p/" (p.id) } { time datetime=(time_of(p.time_ms)) { (time_of(p.time_ms)) } }
                " "
                @if p.verified {
                    span.verified title="the author's signature verified" { "✓ signed" }
                } @else {
                    span.forged title="the signature does not verify against the author's key" {
                        "FORGED: signature does not verify"
                    }
                }
            }
            p.text { bdi { (visible(&p.text)) } }
            footer {
                @if let Some(parent) = p.reply_to {
                    a href={ "/p/" (parent) } { "in reply to #" (parent) } " · "
                }
                a href={ "/p/" (p.id) "#reply" } { "reply" }
                " "
                button.delete type="button" data-id=(p.id) data-author=(p.author) hidden { "delete" }
            }
        }
    }
}

/// A list of posts, newest first, with a link to older ones.
pub fn posts(list: &[Post], older: Option<String>) -> Markup {
    html! {
        section #posts {
            @if list.is_empty() {
                p.empty { "No posts yet." }
            }
            @for p in list { (post(p)) }
        }
        @if let Some(href) = older {
            p { a.older href=(href) { "older posts" } }
        }
    }
}

/// The compose form (posting signs in the browser, so it needs JavaScript).
pub fn compose(reply_to: Option<u64>, topic: Option<&str>) -> Markup {
    html! {
        form #compose.compose method="post" action="/compose" data-reply-to=[reply_to] {
            @if reply_to.is_some() { h2 #reply { "Reply" } }
            label { "Topic " input name="topic" maxlength="64" value=[topic] placeholder="optional"; }
            label { "Text " textarea name="text" maxlength="4000" required rows="4" {} }
            button type="submit" { "post" }
            p.note { "Your post is signed in this browser with your key, which never leaves it. "
                     "Posting needs JavaScript." }
            output.status {}
        }
    }
}

/// The user page's head: follow counts and the follow button.
pub fn user_head(
    name: &str,
    following: usize,
    followers: usize,
    fingerprint: Option<&str>,
    i_follow: bool,
) -> Markup {
    html! {
        section.user-head data-user=(name) data-following=(i_follow) {
            p {
                (following) " following · " (followers) " followers"
                @if let Some(f) = fingerprint { " · key " code { (f) } }
            }
            button.follow type="button" data-user=(name) hidden { "follow" }
            button.unfollow type="button" data-user=(name) hidden { "unfollow" }
            output.status {}
        }
    }
}

/// The users page.
pub fn users(list: &[UserInfo]) -> Markup {
    html! {
        table.users {
            thead { tr { th { "user" } th { "posts" } th { "key" } } }
            tbody {
                @for u in list {
                    tr {
                        td { a href={ "/u/" (urlencode(&u.name)) } { bdi { (visible(&u.name)) } } }
                        td { (u.posts) }
                        td { code { (u.fingerprint) } }
                    }
                }
            }
        }
    }
}

/// The topics page.
pub fn topics(list: &[NameCount]) -> Markup {
    html! {
        table.topics {
            thead { tr { th { "topic" } th { "posts" } } }
            tbody {
                @for t in list {
                    tr {
                        td { a href={ "/t/" (urlencode(&t.name)) } { "#" bdi { (visible(&t.name)) } } }
                        td { (t.posts) }
                    }
                }
            }
        }
    }
}

/// The account page: create a key in this browser, or import a key file from `microblog`.
pub fn account() -> Markup {
    html! {
        section #account {
            p { "Your key is made and kept in this browser (WebCrypto Ed25519, not extractable); "
                "the server never sees it." }
            form #register {
                label { "User name " input name="user" maxlength="64" required; }
                button type="submit" { "create my key and register" }
            }
            form #import {
                label { "Or import a key file made by " code { "microblog register" } " "
                        input type="file" name="file" accept=".key,text/plain" required; }
                button type="submit" { "import" }
            }
            button #signout type="button" { "sign out of this browser" }
            output.status {}
        }
    }
}

/// An error page's body.
pub fn error(message: &str) -> Markup {
    html! { p.error { (visible(message)) } }
}

/// Nothing but text.
pub fn text(s: &str) -> Markup {
    html! { p { (visible(s)) } }
}

/// The stylesheet and script, embedded in the program (no build step).
pub const STYLE: &str = include_str!("assets/style.css");
/// The page script (an ES module).
pub const SCRIPT: &str = include_str!("assets/app.js");

/// A raw snippet (only for constant markup).
pub fn raw(s: &'static str) -> Markup {
    PreEscaped(s.to_string())
}
