//! `tuple out|in|rd|inp|rdp|all|count|cas`: the tuple space itself, in the text syntax.
//!
//! A malformed tuple or template is a usage error (exit 2): the message names the column and
//! points at it. "Nothing matches" is exit 3, and so is a blocking operation that timed out; a
//! `cas` that inserted nothing (something matched) is exit 1.

use raftnode::client::{Client, ClientError, Entry};
use serde_json::{Value as Json, json};
use tuplespace::{ParseError, Query, Template, Tuple, TupleId, Value};

use super::Context;
use crate::cli::TupleCommand;
use crate::duration;
use crate::error::{Error, Kind, Result};
use crate::output::clean;
use crate::store::MAX_LIST;

/// Runs one `tuple` command.
pub async fn run(ctx: &mut Context, cmd: TupleCommand) -> Result<()> {
    match cmd {
        TupleCommand::Out { tuple, ttl } => {
            let tuple = parse_tuple(&tuple)?;
            let id = ctx.writer().await?.out_with_ttl(&tuple, ttl).await?;
            print_id(ctx, id)
        }
        TupleCommand::In { template } => {
            let template = parse_template(&template)?;
            let mut client = ctx.writer().await?;
            let got = {
                let call = client.in_(&template, ctx.timeout);
                tokio::pin!(call);
                tokio::select! {
                    got = &mut call => Some(got),
                    _ = tokio::signal::ctrl_c() => None,
                }
            };
            match got {
                Some(got) => print_one(ctx, &template, got.map(Some)),
                None => Err(interrupted(&mut client).await),
            }
        }
        TupleCommand::Rd { template, after } => {
            let template = parse_template(&template)?;
            let got = ctx.client()?.rd(&template, after, ctx.timeout).await;
            print_one(ctx, &template, got.map(Some))
        }
        TupleCommand::Inp { template } => {
            let template = parse_template(&template)?;
            let got = ctx.writer().await?.inp(&template).await;
            print_one(ctx, &template, got)
        }
        TupleCommand::Rdp { template, after } => {
            let template = parse_template(&template)?;
            let got = ctx.client()?.rdp(&template, after).await;
            print_one(ctx, &template, got)
        }
        TupleCommand::All {
            template,
            limit,
            take,
            after,
            before,
            newest_first,
        } => {
            let template = parse_template(&template)?;
            let limit = limit.map_or(usize::MAX, |n| n as usize);
            let mut client = if take {
                ctx.writer().await?
            } else {
                ctx.client()?
            };
            let entries = if take {
                take_all(&mut client, &template, limit).await?
            } else {
                let query = Query {
                    limit,
                    after: after.unwrap_or(0),
                    before: before.unwrap_or(TupleId::MAX),
                    newest_first,
                };
                read_all(&mut client, &template, query).await?
            };
            print_many(ctx, &entries)
        }
        TupleCommand::Count { template } => {
            let template = parse_template(&template)?;
            let n = ctx.client()?.count(&template).await?;
            if ctx.out.json {
                ctx.out.json_line(&json!({ "count": n }))?;
            } else {
                ctx.out.line(&n.to_string())?;
            }
            Ok(())
        }
        TupleCommand::Cas {
            template,
            tuple,
            ttl,
        } => {
            let template = parse_template(&template)?;
            let tuple = parse_tuple(&tuple)?;
            match ctx.writer().await?.cas(&template, &tuple, ttl).await? {
                Some(id) => {
                    if ctx.out.json {
                        ctx.out.json_line(&json!({"inserted": true, "id": id}))?;
                    } else {
                        ctx.out.line(&id.to_string())?;
                    }
                    Ok(())
                }
                None => {
                    if ctx.out.json {
                        ctx.out.json_line(&json!({"inserted": false}))?;
                    }
                    Err(Error::failed(format!(
                        "not inserted: a tuple already matches {template}"
                    )))
                }
            }
        }
    }
}

/// Copy-collect up to `limit`, in pages of at most [`MAX_LIST`], moving the bound past each page.
async fn read_all(client: &mut Client, template: &Template, mut q: Query) -> Result<Vec<Entry>> {
    let mut all: Vec<Entry> = Vec::new();
    while all.len() < q.limit {
        let want = (q.limit - all.len()).min(MAX_LIST);
        let page = client.rd_all(template, &Query { limit: want, ..q }).await?;
        let short = page.len() < want;
        if let Some(&(last, _)) = page.last() {
            if q.newest_first {
                q.before = last;
            } else {
                q.after = last;
            }
        }
        all.extend(page);
        if short {
            break;
        }
    }
    Ok(all)
}

/// Collect up to `limit`, in takes of at most [`MAX_LIST`].
/// Ctrl-C during a blocking `in`: cancel its waiter in the cluster, so it takes nothing.
async fn interrupted(client: &mut Client) -> crate::error::Error {
    let Some(seq) = client.pending_take() else {
        return crate::error::Error::failed("interrupted");
    };
    match tokio::time::timeout(std::time::Duration::from_secs(2), client.cancel(seq)).await {
        Ok(Ok(true)) => crate::error::Error::failed("interrupted: the blocking in was cancelled")
            .hint("it took nothing"),
        Ok(Ok(false)) => crate::error::Error::failed(
            "interrupted: the blocking in had already finished (it may have taken a tuple)",
        )
        .hint("check with `microblog tuple rdp TEMPLATE`"),
        _ => crate::error::Error::failed("interrupted: the cancel did not reach the cluster").hint(
            "the node cancels the waiter of a client that went away, and it ends at its timeout",
        ),
    }
}

async fn take_all(client: &mut Client, template: &Template, limit: usize) -> Result<Vec<Entry>> {
    let mut all: Vec<Entry> = Vec::new();
    while all.len() < limit {
        let want = (limit - all.len()).min(MAX_LIST);
        let page = client.in_all(template, want).await?;
        let short = page.len() < want;
        all.extend(page);
        if short {
            break;
        }
    }
    Ok(all)
}

fn print_id(ctx: &mut Context, id: TupleId) -> Result<()> {
    if ctx.out.json {
        ctx.out.json_line(&json!({ "id": id }))?;
    } else {
        ctx.out.line(&id.to_string())?;
    }
    Ok(())
}

/// One tuple, or the reason there is none (not found or timed out: exit 3).
fn print_one(
    ctx: &mut Context,
    template: &Template,
    got: Result<Option<Entry>, ClientError>,
) -> Result<()> {
    match got {
        Ok(Some((id, tuple))) => {
            if ctx.out.json {
                ctx.out.json_line(&entry_json(id, &tuple))?;
            } else {
                ctx.out.line(&format!("{id}  {tuple}"))?;
            }
            Ok(())
        }
        Ok(None) => Err(Error::not_found(format!("no tuple matches {template}"))),
        Err(ClientError::Timeout) => Err(Error::new(
            Kind::TimedOut,
            format!(
                "timed out after {}: no tuple matches {template}",
                duration::show(ctx.timeout)
            ),
        )
        .hint("wait longer with --timeout")),
        Err(e) => Err(e.into()),
    }
}

fn print_many(ctx: &mut Context, entries: &[Entry]) -> Result<()> {
    if ctx.out.json {
        for (id, tuple) in entries {
            ctx.out.json_line(&entry_json(*id, tuple))?;
        }
    } else if entries.is_empty() {
        ctx.out.line("no tuples")?;
    } else {
        let rows: Vec<Vec<String>> = entries
            .iter()
            .map(|(id, t)| vec![id.to_string(), t.to_string()])
            .collect();
        ctx.out.table(&["ID", "TUPLE"], &rows)?;
    }
    Ok(())
}

/// `{"id", "tuple": text syntax (exact, parses back), "fields": JSON values (convenient)}`.
pub fn entry_json(id: TupleId, tuple: &Tuple) -> Json {
    json!({
        "id": id,
        "tuple": tuple.to_string(),
        "fields": tuple.fields().iter().map(value_json).collect::<Vec<_>>(),
    })
}

/// A value as JSON: ints and finite floats as numbers, `NaN`/`inf`/`-inf` as strings, bytes as
/// a hex string, nested tuples as arrays. (The `tuple` text is the exact form.)
pub fn value_json(v: &Value) -> Json {
    match v {
        Value::Int(i) => json!(i),
        Value::Float(x) if x.is_finite() => json!(x),
        Value::Float(x) => json!(Value::Float(*x).to_string()),
        Value::Str(s) => json!(s.as_str()),
        Value::Bool(b) => json!(b),
        Value::Bytes(b) => json!(b.iter().map(|x| format!("{x:02x}")).collect::<String>()),
        Value::Tuple(t) => Json::Array(t.fields().iter().map(value_json).collect()),
    }
}

/// Parses a tuple; a mistake is a usage error pointing at its column.
pub fn parse_tuple(text: &str) -> Result<Tuple> {
    text.parse::<Tuple>()
        .map_err(|e| malformed("tuple", text, &e))
}

/// Parses a template; a mistake is a usage error pointing at its column.
pub fn parse_template(text: &str) -> Result<Template> {
    text.parse::<Template>()
        .map_err(|e| malformed("template", text, &e))
}

/// `malformed tuple: column 6: expected ..., found ...`, then the input with a caret under the
/// column (a window of the input if it is long).
fn malformed(what: &str, text: &str, e: &ParseError) -> Error {
    const WINDOW: usize = 40;
    let shown = clean(text);
    let chars: Vec<char> = shown.chars().collect();
    let at = e.column.saturating_sub(1).min(chars.len());
    let start = at.saturating_sub(WINDOW);
    let end = (at + WINDOW).min(chars.len());
    let mut excerpt: String = chars[start..end].iter().collect();
    let mut caret_at = at - start;
    if start > 0 {
        excerpt.insert(0, '…');
        caret_at += 1;
    }
    if end < chars.len() {
        excerpt.push('…');
    }
    let caret = format!("{}^", " ".repeat(caret_at));
    Error::usage(format!(
        "malformed {what}: {e}\n    {excerpt}\n    {caret}"
    ))
    .hint(match what {
        "tuple" => r#"a tuple looks like ("job", 1, 2.5, true, b"00ff", ("nested", 1)); quote it for the shell"#,
        _ => r#"a template looks like ("job", ?int, _, 1..10, "pre"*); quote it for the shell"#,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use tuplespace::tuple;

    #[test]
    fn malformed_input_points_at_the_column() {
        let e = parse_tuple(r#"("a", "#).unwrap_err();
        assert_eq!(e.exit_code(), 2);
        assert!(e.message.contains("column 7"), "{}", e.message);
        let lines: Vec<&str> = e.message.lines().collect();
        assert_eq!(lines[1], r#"    ("a", "#);
        assert_eq!(lines[2], "          ^");
        let e = parse_tuple(r#"("a" 1)"#).unwrap_err();
        assert!(e.message.contains("column 6"), "{}", e.message);
        assert_eq!(e.message.lines().nth(2), Some("         ^"));
        let e = parse_template(r#"("a", ?nope)"#).unwrap_err();
        assert!(e.message.contains("column"), "{}", e.message);
        // Long input: a window around the column, caret still under it.
        let long = format!("({}, oops)", "1, ".repeat(100));
        let e = parse_tuple(&long).unwrap_err();
        let lines: Vec<&str> = e.message.lines().collect();
        let caret = lines[2].chars().count() - 1;
        assert_eq!(lines[1].chars().nth(caret), Some(','), "{}", e.message);
    }

    #[test]
    fn values_as_json() {
        let t = tuple!["s", 1, 2.5, f64::NAN, true, vec![0u8, 255], tuple!["n", 1]];
        let j = entry_json(9, &t);
        assert_eq!(
            j["fields"],
            json!(["s", 1, 2.5, "NaN", true, "00ff", ["n", 1]])
        );
        assert_eq!(j["tuple"].as_str().unwrap().parse::<Tuple>().unwrap(), t);
    }
}
