// The microblog's page script: keys kept in this browser, writes signed here, posts live.
//
// The user's Ed25519 private key is made (or imported from a `microblog register` key file) with
// WebCrypto as a non-extractable CryptoKey and kept in IndexedDB: no script, this one included,
// can read its bytes, and the server never sees it. A write is prepared by the server (which
// answers the exact bytes to sign), signed here, and relayed by the server to the cluster, which
// checks the signature against the user's registered key. A post also carries its own signature,
// made here over its signing bytes (README: "Signed posts"), which every reader checks.

const DB = "microblog";
const STORE = "keys";
const POST_DOMAIN = "microblog-post-v1\0";

const hex = (bytes) => Array.from(new Uint8Array(bytes), (b) => b.toString(16).padStart(2, "0")).join("");
const unhex = (s) => new Uint8Array(s.match(/../g).map((h) => parseInt(h, 16)));

function db() {
  return new Promise((resolve, reject) => {
    const open = indexedDB.open(DB, 1);
    open.onupgradeneeded = () => open.result.createObjectStore(STORE);
    open.onsuccess = () => resolve(open.result);
    open.onerror = () => reject(open.error);
  });
}

async function idb(mode, f) {
  const d = await db();
  return new Promise((resolve, reject) => {
    const tx = d.transaction(STORE, mode);
    const req = f(tx.objectStore(STORE));
    tx.oncomplete = () => resolve(req.result);
    tx.onerror = () => reject(tx.error);
  });
}

const saveKey = (key) => idb("readwrite", (s) => s.put(key, "me"));
const loadKey = () => idb("readonly", (s) => s.get("me"));
const dropKey = () => idb("readwrite", (s) => s.delete("me"));

function setUser(name) {
  if (name) {
    document.cookie = `user=${encodeURIComponent(name)}; path=/; SameSite=Strict; max-age=31536000`;
  } else {
    document.cookie = "user=; path=/; SameSite=Strict; max-age=0";
  }
}

async function sign(key, bytes) {
  return hex(await crypto.subtle.sign({ name: "Ed25519" }, key.privateKey, bytes));
}

async function api(path, body) {
  const resp = await fetch(path, {
    method: "POST",
    headers: { "content-type": "application/json" },
    body: JSON.stringify(body),
  });
  const answer = await resp.json().catch(() => ({ error: `HTTP ${resp.status}` }));
  if (!resp.ok || answer.error) throw new Error(answer.error || `HTTP ${resp.status}`);
  return answer;
}

const newToken = () => hex(crypto.getRandomValues(new Uint8Array(32)));

// Prepare at the server, sign here, submit: one signed write. The session token (random, kept
// with the key) keys this browser's session at the server: nobody without it can see or use the
// session's request numbers.
async function act(key, action) {
  const prepared = await api("/api/prepare", {
    user: key.user,
    public_key: key.publicKey,
    session_token: key.token,
    ...action,
  });
  const signatures = [];
  for (const bytes of prepared.to_sign) signatures.push(await sign(key, unhex(bytes)));
  // An unknown outcome (504) keeps the ticket: the same signed bytes are sent again, and the
  // cluster applies them at most once.
  for (let attempt = 1; ; attempt++) {
    try {
      return await api("/api/submit", { ticket: prepared.ticket, signatures });
    } catch (e) {
      if (attempt >= 3 || !String(e.message).startsWith("outcome unknown")) throw e;
      await new Promise((r) => setTimeout(r, 1000));
    }
  }
}

// The bytes a post's signature covers (README: "Signed posts").
function postBytes(author, topic, timeMs, text, replyTo) {
  const enc = new TextEncoder();
  const parts = [];
  const str = (s) => {
    const b = enc.encode(s);
    const len = new Uint8Array(4);
    new DataView(len.buffer).setUint32(0, b.length, true);
    parts.push(len, b);
  };
  parts.push(enc.encode(POST_DOMAIN));
  str(author);
  str(topic || "");
  const time = new Uint8Array(8);
  new DataView(time.buffer).setBigInt64(0, BigInt(timeMs), true);
  parts.push(time);
  str(text);
  const reply = new Uint8Array(8);
  new DataView(reply.buffer).setBigUint64(0, BigInt(replyTo || 0), true);
  parts.push(reply);
  const out = new Uint8Array(parts.reduce((n, p) => n + p.length, 0));
  let at = 0;
  for (const p of parts) {
    out.set(p, at);
    at += p.length;
  }
  return out;
}

function say(where, text, bad) {
  const out = where.querySelector("output.status") || document.querySelector("output.status");
  if (out) {
    out.textContent = text;
    out.classList.toggle("bad", !!bad);
  }
}

async function register(form) {
  const user = form.user.value.trim();
  const pair = await crypto.subtle.generateKey({ name: "Ed25519" }, false, ["sign", "verify"]);
  const publicKey = hex(await crypto.subtle.exportKey("raw", pair.publicKey));
  const key = { user, publicKey, privateKey: pair.privateKey, token: newToken() };
  await act(key, { action: "register" });
  await saveKey(key);
  setUser(user);
  say(form, `registered ${user}; your key stays in this browser`);
  location.href = `/u/${encodeURIComponent(user)}`;
}

// A key file from `microblog register`: TOML with `user` and `secret_key` (the 32-byte seed, hex).
async function importKey(form) {
  const text = await form.file.files[0].text();
  const user = (text.match(/^user\s*=\s*"((?:[^"\\]|\\.)*)"/m) || [])[1];
  const seed = (text.match(/^secret_key\s*=\s*"([0-9a-fA-F]{64})"/m) || [])[1];
  if (!user || !seed) throw new Error("not a microblog key file (user and secret_key)");
  const name = JSON.parse(`"${user}"`);
  // PKCS#8 for an Ed25519 seed: a fixed 16-byte prefix, then the seed.
  const pkcs8 = new Uint8Array([...unhex("302e020100300506032b657004220420"), ...unhex(seed)]);
  const privateKey = await crypto.subtle.importKey("pkcs8", pkcs8, { name: "Ed25519" }, false, ["sign"]);
  const registered = await fetch(`/api/user/${encodeURIComponent(name)}`).then((r) => r.json());
  if (!registered.public_key) throw new Error(`${name} is not registered: use microblog register first`);
  // The file's key must be the registered one: sign here, check with the registered public key.
  const probe = crypto.getRandomValues(new Uint8Array(32));
  const sig = await crypto.subtle.sign({ name: "Ed25519" }, privateKey, probe);
  const pub = await crypto.subtle.importKey("raw", unhex(registered.public_key), { name: "Ed25519" }, true, ["verify"]);
  if (!(await crypto.subtle.verify({ name: "Ed25519" }, pub, sig, probe))) {
    throw new Error(`this key file is not ${name}'s registered key`);
  }
  await saveKey({ user: name, publicKey: registered.public_key, privateKey, token: newToken() });
  setUser(name);
  say(form, `imported ${name}'s key`);
  location.href = `/u/${encodeURIComponent(name)}`;
}

async function compose(form, key) {
  const text = form.text.value;
  const topic = form.topic.value.trim() || null;
  const replyTo = form.dataset.replyTo ? Number(form.dataset.replyTo) : null;
  const timeMs = Date.now();
  const signature = await sign(key, postBytes(key.user, topic, timeMs, text, replyTo));
  const done = await act(key, { action: "post", text, topic, reply_to: replyTo, time_ms: timeMs, signature });
  form.text.value = "";
  say(form, `posted #${done.id}`);
}

function guard(where, f) {
  return async (event) => {
    event.preventDefault();
    try {
      await f();
    } catch (e) {
      say(where, String(e.message || e), true);
    }
  };
}

function live() {
  const url = document.body.dataset.live;
  const list = document.getElementById("posts");
  if (!url || !list || !window.EventSource) return;
  const oldestFirst = list.dataset.order === "oldest-first";
  const source = new EventSource(url);
  source.addEventListener("post", (event) => {
    if (document.querySelector(`article.post[data-id="${CSS.escape(event.lastEventId)}"]`)) return;
    list.querySelector(".empty")?.remove();
    list.insertAdjacentHTML(oldestFirst ? "beforeend" : "afterbegin", event.data);
    showOwn();
  });
}

let me = null;

function showOwn() {
  if (!me) return;
  for (const b of document.querySelectorAll("button.delete")) {
    if (b.dataset.author === me.user) b.hidden = false;
  }
}

async function main() {
  me = (await loadKey().catch(() => null)) || null;
  if (me && !me.token) {
    me.token = newToken();
    await saveKey(me);
  }
  const cookieUser = document.body.dataset.me;
  if (me && cookieUser !== me.user) setUser(me.user);
  if (!me && cookieUser) setUser(null);

  const reg = document.getElementById("register");
  if (reg) reg.addEventListener("submit", guard(reg, () => register(reg)));
  const imp = document.getElementById("import");
  if (imp) imp.addEventListener("submit", guard(imp, () => importKey(imp)));
  const out = document.getElementById("signout");
  if (out) {
    out.addEventListener("click", guard(out.parentElement, async () => {
      await dropKey();
      setUser(null);
      location.href = "/";
    }));
  }
  const form = document.getElementById("compose");
  if (form) {
    form.addEventListener("submit", guard(form, async () => {
      if (!me) throw new Error("sign in first: create or import your key (account)");
      await compose(form, me);
    }));
  }
  const head = document.querySelector(".user-head");
  if (head && me && head.dataset.user !== me.user) {
    const following = head.dataset.following === "true";
    const follow = head.querySelector("button.follow");
    const unfollow = head.querySelector("button.unfollow");
    follow.hidden = following;
    unfollow.hidden = !following;
    follow.addEventListener("click", guard(head, async () => {
      await act(me, { action: "follow", them: head.dataset.user });
      follow.hidden = true;
      unfollow.hidden = false;
      say(head, `following ${head.dataset.user}`);
    }));
    unfollow.addEventListener("click", guard(head, async () => {
      await act(me, { action: "unfollow", them: head.dataset.user });
      follow.hidden = false;
      unfollow.hidden = true;
      say(head, `no longer following ${head.dataset.user}`);
    }));
  }
  document.addEventListener("click", async (event) => {
    const b = event.target.closest("button.delete");
    if (!b || !me) return;
    try {
      await act(me, { action: "delete", id: Number(b.dataset.id) });
      b.closest("article.post").remove();
    } catch (e) {
      say(document, String(e.message || e), true);
    }
  });
  showOwn();
  live();
}

main();
