//! What the commands print: readable tables by default, or with `--json` one JSON object per line.
//!
//! Tables are for people: control characters in stored text are shown as `↵` (newline) or `�`
//! (anything else) so nobody's post can drive your terminal, and long cells are cut by chars,
//! never inside a UTF-8 sequence, ending in `…`. JSON is for scripts: every value in full.

use std::io::{self, Write};

use serde_json::{Value as Json, json};

use crate::model::Post;

/// The widest a post's text may be in a table, in chars.
pub const TEXT_WIDTH: usize = 60;
/// The widest a name (author, topic) may be in a table, in chars.
pub const NAME_WIDTH: usize = 20;

/// Where command output goes, and in which form.
pub struct Output {
    /// One JSON object per line instead of tables.
    pub json: bool,
    /// Usually stdout.
    out: Box<dyn Write>,
}

impl Output {
    /// Output to stdout.
    pub fn stdout(json: bool) -> Output {
        Output::to(json, Box::new(io::stdout()))
    }

    /// Output to any writer (tests capture it).
    pub fn to(json: bool, out: Box<dyn Write>) -> Output {
        Output { json, out }
    }

    /// One line of text, flushed (a `tail` shows each post as it comes). If the reader has gone
    /// (`microblog read | head`), there is nobody left to tell anything: exit quietly.
    pub fn line(&mut self, text: &str) -> io::Result<()> {
        let result = writeln!(self.out, "{text}").and_then(|()| self.out.flush());
        match result {
            Err(e) if e.kind() == io::ErrorKind::BrokenPipe => std::process::exit(0),
            other => other,
        }
    }

    /// One JSON object on one line.
    pub fn json_line(&mut self, value: &Json) -> io::Result<()> {
        self.line(&value.to_string())
    }

    /// A table: a header row and aligned columns (widths in chars; cells already clean).
    pub fn table(&mut self, headers: &[&str], rows: &[Vec<String>]) -> io::Result<()> {
        let mut widths: Vec<usize> = headers.iter().map(|h| h.chars().count()).collect();
        for row in rows {
            for (w, cell) in widths.iter_mut().zip(row) {
                *w = (*w).max(cell.chars().count());
            }
        }
        let render = |cells: Vec<&str>| {
            let mut line = String::new();
            let last = cells.len().saturating_sub(1);
            for (i, (cell, w)) in cells.iter().zip(&widths).enumerate() {
                line.push_str(cell);
                if i < last {
                    let pad = w - cell.chars().count() + 2;
                    line.extend(std::iter::repeat_n(' ', pad));
                }
            }
            line
        };
        self.line(&render(headers.to_vec()))?;
        for row in rows {
            self.line(&render(row.iter().map(String::as_str).collect()))?;
        }
        Ok(())
    }

    /// Posts as a table (text cut to [`TEXT_WIDTH`]) or one JSON object each.
    pub fn posts(&mut self, posts: &[Post]) -> io::Result<()> {
        if self.json {
            for p in posts {
                self.json_line(&post_json(p))?;
            }
            return Ok(());
        }
        if posts.is_empty() {
            return self.line("no posts");
        }
        let rows: Vec<Vec<String>> = posts.iter().map(post_row).collect();
        self.table(
            &["ID", "TIME (UTC)", "AUTHOR", "TOPIC", "RE", "TEXT"],
            &rows,
        )
    }

    /// One post in full: a header line, then its whole text (cleaned), indented.
    pub fn post_full(&mut self, p: &Post, indent: &str) -> io::Result<()> {
        if self.json {
            return self.json_line(&post_json(p));
        }
        let mut head = format!(
            "{indent}#{}  {}  {}",
            p.id,
            clean(&p.author),
            time_text(p.time_ms)
        );
        if let Some(t) = &p.topic {
            head.push_str(&format!("  [{}]", clean(t)));
        }
        if let Some(r) = p.reply_to {
            head.push_str(&format!("  re #{r}"));
        }
        if !p.verified {
            head.push_str(&format!("  {FORGED}"));
        }
        self.line(&head)?;
        for text_line in p.text.lines() {
            self.line(&format!("{indent}  {}", clean(text_line)))?;
        }
        Ok(())
    }
}

/// How a post whose signature does not verify against its author's key is marked.
pub const FORGED: &str = "[FORGED: signature does not verify]";

/// A post's table row (text prefixed with [`FORGED`] if its signature does not verify).
pub fn post_row(p: &Post) -> Vec<String> {
    let text = if p.verified {
        clean(&p.text)
    } else {
        format!("{FORGED} {}", clean(&p.text))
    };
    vec![
        p.id.to_string(),
        time_text(p.time_ms),
        cut(&clean(&p.author), NAME_WIDTH),
        p.topic
            .as_deref()
            .map_or(String::new(), |t| cut(&clean(t), NAME_WIDTH)),
        p.reply_to.map_or(String::new(), |r| r.to_string()),
        cut(&text, TEXT_WIDTH),
    ]
}

/// A post as JSON: `id`, `author`, `topic` (null: none), `time_ms`, `time` (RFC 3339, UTC),
/// `text`, `reply_to` (null: none), `verified` (the signature verifies against the author's
/// key), `signature` (hex).
pub fn post_json(p: &Post) -> Json {
    json!({
        "id": p.id,
        "author": p.author,
        "topic": p.topic,
        "time_ms": p.time_ms,
        "time": rfc3339(p.time_ms),
        "text": p.text,
        "reply_to": p.reply_to,
        "verified": p.verified,
        "signature": hex::encode(&p.signature),
    })
}

/// Text safe to print on a terminal, on one line: newlines become `↵`, tabs a space, other
/// control characters `�`.
pub fn clean(text: &str) -> String {
    text.chars()
        .map(|c| match c {
            '\n' => '↵',
            '\t' => ' ',
            c if c.is_control() => '\u{FFFD}',
            c => c,
        })
        .collect()
}

/// At most `max` chars of `text`, the last one `…` if anything was cut.
pub fn cut(text: &str, max: usize) -> String {
    if text.chars().count() <= max {
        return text.to_string();
    }
    let mut out: String = text.chars().take(max.saturating_sub(1)).collect();
    out.push('…');
    out
}

/// `2024-05-01 12:34:56` (UTC) for Unix milliseconds.
pub fn time_text(ms: i64) -> String {
    let (date, h, m, s, _) = civil(ms);
    format!("{date} {h:02}:{m:02}:{s:02}")
}

/// `2024-05-01T12:34:56.789Z` for Unix milliseconds.
pub fn rfc3339(ms: i64) -> String {
    let (date, h, m, s, milli) = civil(ms);
    format!("{date}T{h:02}:{m:02}:{s:02}.{milli:03}Z")
}

/// (date, hour, minute, second, millisecond) in UTC, by the proleptic Gregorian calendar.
fn civil(ms: i64) -> (String, i64, i64, i64, i64) {
    let secs = ms.div_euclid(1_000);
    let milli = ms.rem_euclid(1_000);
    let days = secs.div_euclid(86_400);
    let rem = secs.rem_euclid(86_400);
    // Howard Hinnant's days-to-civil algorithm.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1_460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    (
        format!("{year:04}-{month:02}-{day:02}"),
        rem / 3_600,
        rem % 3_600 / 60,
        rem % 60,
        milli,
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::{Arc, Mutex};

    /// A writer the test can read back.
    #[derive(Clone, Default)]
    struct Captured(Arc<Mutex<Vec<u8>>>);

    impl Write for Captured {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    impl Captured {
        fn text(&self) -> String {
            String::from_utf8(self.0.lock().unwrap().clone()).unwrap()
        }
    }

    fn post(text: &str) -> Post {
        Post {
            id: 12,
            author: "zoë".into(),
            topic: Some("日本".into()),
            time_ms: 1_714_566_896_789,
            text: text.into(),
            reply_to: Some(3),
            signature: vec![1; 64],
            verified: true,
        }
    }

    #[test]
    fn cuts_by_chars_not_bytes() {
        assert_eq!(cut("héllo", 10), "héllo");
        assert_eq!(cut("héllo wörld", 5), "héll…");
        assert_eq!(cut("🌍🌍🌍", 2), "🌍…");
        assert_eq!(cut("日本語のテキスト", 4), "日本語…");
    }

    #[test]
    fn cleans_control_characters() {
        assert_eq!(clean("a\nb\tc\u{1b}[2J"), "a↵b c\u{FFFD}[2J");
    }

    #[test]
    fn formats_times_in_utc() {
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00.000Z");
        assert_eq!(rfc3339(1_714_566_896_789), "2024-05-01T12:34:56.789Z");
        assert_eq!(time_text(951_782_400_000), "2000-02-29 00:00:00");
        assert_eq!(rfc3339(-1), "1969-12-31T23:59:59.999Z");
    }

    #[test]
    fn tables_align_by_chars() {
        let cap = Captured::default();
        let mut out = Output::to(false, Box::new(cap.clone()));
        let long = "ü".repeat(100);
        out.posts(&[post(&long), post("short")]).unwrap();
        let text = cap.text();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 3, "{text}");
        assert!(lines[0].starts_with("ID  TIME (UTC)"), "{text}");
        let text_col = lines[0].chars().count() - "TEXT".len();
        for l in &lines[1..] {
            let prefix: String = l.chars().take(text_col).collect();
            assert!(prefix.ends_with("  "), "{l:?}");
        }
        assert!(lines[1].ends_with('…'));
        assert_eq!(
            lines[1].chars().rev().take_while(|&c| c != ' ').count(),
            TEXT_WIDTH
        );
    }

    #[test]
    fn json_is_one_object_per_line_and_complete() {
        let cap = Captured::default();
        let mut out = Output::to(true, Box::new(cap.clone()));
        let long = "line one\nline \"two\" 🌍".repeat(50);
        out.posts(&[post(&long), post("x")]).unwrap();
        let text = cap.text();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 2);
        let v: Json = serde_json::from_str(lines[0]).unwrap();
        assert_eq!(v["text"], long.as_str());
        assert_eq!(v["reply_to"], 3);
        assert_eq!(v["topic"], "日本");
        assert_eq!(v["time"], "2024-05-01T12:34:56.789Z");
    }
}
