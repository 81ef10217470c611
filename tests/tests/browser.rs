//! The web app in a real browser: headless Chromium driven over WebDriver (Debian's `chromium`
//! and `chromium-driver`; `.ci/run` installs them when missing) with fantoccini, against a real
//! 3-node cluster, everything on loopback and bounded in time.
//!
//! Two browsers (two WebDriver sessions, each its own Chromium profile, so each its own
//! IndexedDB): register in the browser, post, see the post appear live in the other browser
//! without reloading, follow, read the timeline, delete, import a key file made by the CLI and post
//! as that user, see a forged post marked, and see hostile text rendered as text.
//!
//! With `SCREENSHOTS=DIR` set, the test also saves screenshots of the main pages there (the
//! README's come from `SCREENSHOTS=docs/screenshots cargo test -p tests --test browser`).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use fantoccini::{Client as Browser, ClientBuilder, Locator};
use raftnode::client::Client;
use raftnode::identity::Identity;
use serde_json::json;
use tests::{Cluster, bounded, serial};
use tuplespace::{Value, tuple};

const LIMIT: Duration = Duration::from_secs(240);
const LEADER: Duration = Duration::from_secs(20);
/// How long the browser gets for one thing to appear.
const WAIT: Duration = Duration::from_secs(20);

/// chromedriver, killed (by its own pid) when dropped.
struct Driver {
    child: Child,
    port: u16,
}

impl Drop for Driver {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn program(name: &str, places: &[&str]) -> PathBuf {
    places
        .iter()
        .map(PathBuf::from)
        .find(|p| p.exists())
        .unwrap_or_else(|| {
            panic!(
                "{name} is missing (looked in {places:?}): install Debian's chromium and \
                 chromium-driver packages (`apt-get install chromium chromium-driver`; .ci/run \
                 does it)"
            )
        })
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

async fn start_driver() -> Driver {
    let driver = program(
        "chromedriver",
        &["/usr/bin/chromedriver", "/usr/lib/chromium/chromedriver"],
    );
    let port = free_port();
    let child = Command::new(driver)
        .arg(format!("--port={port}"))
        .arg("--allowed-ips=127.0.0.1")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start chromedriver");
    let driver = Driver { child, port };
    for _ in 0..100 {
        if tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .is_ok()
        {
            return driver;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("chromedriver did not listen on 127.0.0.1:{port}");
}

async fn browser(driver: &Driver, profile: &Path) -> Browser {
    let chromium = program(
        "chromium",
        &["/usr/bin/chromium", "/usr/lib/chromium/chromium"],
    );
    let mut caps = serde_json::Map::new();
    caps.insert(
        "goog:chromeOptions".into(),
        json!({
            "binary": chromium,
            "args": [
                "--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                "--window-size=420,900", "--no-first-run", "--no-default-browser-check",
                format!("--user-data-dir={}", profile.display()),
            ],
        }),
    );
    let connector = hyper_util::client::legacy::connect::HttpConnector::new();
    ClientBuilder::new(connector)
        .capabilities(caps)
        .connect(&format!("http://127.0.0.1:{}", driver.port))
        .await
        .expect("a browser session")
}

/// Waits until `css` matches an element whose text contains `text`.
async fn wait_text(b: &Browser, css: &str, text: &str) {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        if let Ok(els) = b.find_all(Locator::Css(css)).await {
            for el in els {
                if el.text().await.is_ok_and(|t| t.contains(text)) {
                    return;
                }
            }
        }
        if tokio::time::Instant::now() > deadline {
            let source = b.source().await.unwrap_or_default();
            panic!("no {css} containing {text:?} within {WAIT:?}; page:\n{source}");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn fill(b: &Browser, css: &str, text: &str) {
    let el = b
        .wait()
        .at_most(WAIT)
        .for_element(Locator::Css(css))
        .await
        .expect(css);
    el.clear().await.ok();
    el.send_keys(text).await.expect("typing");
}

async fn click(b: &Browser, css: &str) {
    let el = b
        .wait()
        .at_most(WAIT)
        .for_element(Locator::Css(css))
        .await
        .expect(css);
    el.click().await.expect("click");
}

async fn register(b: &Browser, web: SocketAddr, name: &str) {
    b.goto(&format!("http://{web}/account")).await.unwrap();
    fill(b, "#register input[name=user]", name).await;
    click(b, "#register button").await;
    wait_text(b, "#who", &format!("signed in as {name}")).await;
}

async fn post(b: &Browser, web: SocketAddr, text: &str) -> u64 {
    b.goto(&format!("http://{web}/compose")).await.unwrap();
    fill(b, "#compose textarea[name=text]", text).await;
    click(b, "#compose button[type=submit]").await;
    wait_text(b, "#compose output.status", "posted #").await;
    let status = b
        .find(Locator::Css("#compose output.status"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    status
        .trim_start_matches("posted #")
        .trim()
        .parse()
        .expect("a post id")
}

async fn shot(b: &Browser, name: &str) {
    let Some(dir) = std::env::var_os("SCREENSHOTS") else {
        return;
    };
    let png = b.screenshot().await.expect("a screenshot");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(Path::new(&dir).join(format!("{name}.png")), png).unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_browsers_use_the_microblog() {
    let _serial = serial().await;
    let cluster = Cluster::start(3);
    let profiles = tempfile::tempdir().unwrap();
    bounded(LIMIT, async {
        cluster.wait_leader(LEADER).await;
        let app = microblog_cli::web::App::new(
            cluster.endpoints(),
            microblog_cli::connect::client_options(Duration::from_secs(10), 3),
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let web = listener.local_addr().unwrap();
        tokio::spawn(microblog_cli::web::run(
            listener,
            app,
            std::future::pending(),
        ));
        let driver = start_driver().await;
        let a = browser(&driver, &profiles.path().join("a")).await;
        let b = browser(&driver, &profiles.path().join("b")).await;

        // Register in each browser: the key is made there.
        register(&a, web, "carol").await;
        register(&b, web, "dave").await;
        let key_bytes = a
            .execute_async(
                "const done = arguments[arguments.length - 1]; \
                 const o = indexedDB.open('microblog', 1); \
                 o.onsuccess = () => { \
                   const q = o.result.transaction('keys').objectStore('keys').get('me'); \
                   q.onsuccess = () => done(q.result.privateKey.extractable); };",
                vec![],
            )
            .await
            .unwrap()
            .as_bool()
            .unwrap();
        assert!(!key_bytes, "the private key is not extractable");

        // dave watches everyone's posts; carol posts; it appears in dave's page without reload.
        b.goto(&format!("http://{web}/")).await.unwrap();
        b.execute("window.notReloaded = true; return true;", vec![])
            .await
            .unwrap();
        let first = post(&a, web, "hello from carol's browser").await;
        wait_text(&b, "#posts article.post", "hello from carol's browser").await;
        let same_page = b
            .execute("return window.notReloaded === true;", vec![])
            .await
            .unwrap();
        assert_eq!(
            same_page,
            json!(true),
            "the post arrived live, not by a reload"
        );
        shot(&b, "everyone").await;

        // dave follows carol and reads his timeline.
        b.goto(&format!("http://{web}/u/carol")).await.unwrap();
        click(&b, "button.follow").await;
        wait_text(&b, ".user-head output.status", "following carol").await;
        shot(&b, "user").await;
        b.goto(&format!("http://{web}/home")).await.unwrap();
        wait_text(&b, "#posts article.post", "hello from carol's browser").await;
        shot(&b, "home").await;

        // Hostile text is shown as text: no script runs, no element is made.
        let hostile =
            "<script>window.pwned=1</script><img src=x onerror=\"window.pwned=2\"> \u{202E}evil";
        let bad = post(&a, web, hostile).await;
        a.goto(&format!("http://{web}/p/{bad}")).await.unwrap();
        wait_text(&a, "article.post p.text", "<script>window.pwned=1</script>").await;
        wait_text(&a, "article.post p.text", "[U+202E]evil").await;
        let pwned = a
            .execute(
                "return window.pwned === undefined && !document.querySelector('p.text img');",
                vec![],
            )
            .await
            .unwrap();
        assert_eq!(pwned, json!(true), "hostile text ran or made an element");

        // carol replies to her first post and deletes the hostile one.
        a.goto(&format!("http://{web}/p/{first}")).await.unwrap();
        fill(&a, "#compose textarea[name=text]", "a reply").await;
        click(&a, "#compose button[type=submit]").await;
        wait_text(&a, "#posts article.post", "a reply").await;
        let replies = a
            .find_all(Locator::Css("#posts article.post"))
            .await
            .unwrap()
            .len();
        assert_eq!(replies, 1, "only replies arrive on a post's page");
        shot(&a, "post").await;
        a.goto(&format!("http://{web}/u/carol")).await.unwrap();
        click(
            &a,
            &format!("article.post[data-id=\"{bad}\"] button.delete"),
        )
        .await;
        let deadline = tokio::time::Instant::now() + WAIT;
        while a
            .find(Locator::Css(&format!("article.post[data-id=\"{bad}\"]")))
            .await
            .is_ok()
        {
            assert!(
                tokio::time::Instant::now() < deadline,
                "the post was not removed"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let gone = Client::new(cluster.endpoints()).read_id(bad).await.unwrap();
        assert!(gone.is_none(), "deleted in the cluster");

        // A key file made by the CLI, imported into dave's browser: the same user as the CLI.
        let erin = Identity::generate("erin");
        Client::new(cluster.endpoints())
            .with_identity(erin.clone())
            .register()
            .await
            .unwrap();
        let key_file = profiles.path().join("erin.key");
        erin.save(&key_file).unwrap();
        b.goto(&format!("http://{web}/account")).await.unwrap();
        click(&b, "#signout").await;
        b.wait()
            .at_most(WAIT)
            .for_url(&format!("http://{web}/").parse().unwrap())
            .await
            .unwrap();
        b.goto(&format!("http://{web}/account")).await.unwrap();
        let file = b
            .wait()
            .at_most(WAIT)
            .for_element(Locator::Css("#import input[type=file]"))
            .await
            .unwrap();
        file.send_keys(&key_file.display().to_string())
            .await
            .unwrap();
        click(&b, "#import button").await;
        wait_text(&b, "#who", "signed in as erin").await;
        let erins = post(&b, web, "erin, from the browser with the CLI's key").await;
        b.goto(&format!("http://{web}/p/{erins}")).await.unwrap();
        wait_text(&b, "article.post", "✓ signed").await;

        // A post whose signature is not its author's key is marked forged.
        let mallory = Identity::generate("mallory");
        let bytes = microblog_cli::model::post_signing_bytes("erin", None, 1, "forged", None);
        let forged = tuple![
            "post",
            "erin",
            "",
            1,
            "forged",
            0,
            Value::Bytes(mallory.sign(&bytes).to_vec().into_boxed_slice())
        ];
        let forged = Client::new(cluster.endpoints())
            .with_identity(erin.clone())
            .out(&forged)
            .await
            .unwrap();
        b.goto(&format!("http://{web}/p/{forged}")).await.unwrap();
        wait_text(&b, "article.post", "FORGED: signature does not verify").await;

        a.goto(&format!("http://{web}/account")).await.unwrap();
        shot(&a, "account").await;
        a.close().await.ok();
        b.close().await.ok();
        drop(driver);
    })
    .await;
}
