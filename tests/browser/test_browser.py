#!/usr/bin/env python3
"""Browser test: a real Chromium (Debian's, driven by Playwright) against a switchboard binary.

    python tests/browser/test_browser.py --binary PATH [--chromium /usr/bin/chromium]

Run it through `.ci/browser BINARY`, which installs Chromium and Playwright first.

It starts the binary on loopback (port 0, addresses read from its first stdout line) with a
temporary database, serves a small page from two loopback HTTP servers (one origin in
SWITCHBOARD_ALLOWED_ORIGINS, one not), and uses the browser's own WebSocket from that page
through `page.evaluate`. One line per check with its figures, then
`browser: N passed, N failed`; the exit status is 1 when any check failed.

Checks:
  1. room chat (004) between two browser contexts: B receives A's chat_message
  2. a bad token on /ws/rooms/lobby/: close 4001
  3. a bad token on /ws/v1/chat/: close 4003
  4a. a 65,537-byte message (limit 65,536): close 1009, every try
  4b. a 1 MiB message: close 1009, every try
  5. Origin allow-list: the allowed origin opens, others fail before the upgrade (403)

The console (GET /console on the API listener), against a second server with no Origin
allow-list (the console's own origin is the API listener's):
  6. the page loads with no console errors and asks for the API key before any API call;
     the key is kept for the tab (a reload does not ask again)
  7. a user online appears when a test client connects
  8. the "try it" panel gets a token, opens /ws/rooms/{room}/, sends the document's example
     frame with one click and sees it come back (the test client in the room gets it too),
     then disconnects with the close code explained
  9. the browser enforces the page's policy: a WebSocket URL elsewhere is refused, and the
     panel says why

  --screenshot PATH saves a screenshot of the console (docs/console.png) after check 8.
"""

import argparse
import base64
import hashlib
import hmac
import http.server
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time

JWT_SECRET = "browser-test-secret-0123456789abcdef"
API_KEY = "browser-test-api-key-0123456789abcdef"
OVERALL_SECONDS = 150  # the watchdog; .ci/browser bounds the whole run at 170 s

PAGE = """<!doctype html>
<html><head><meta charset="utf-8"><title>switchboard browser test</title></head>
<body><p>switchboard browser test page</p>
<script>
// Open a socket, optionally send one message once it is open, collect every frame, and
// resolve with the close event (or with timedOut after timeoutMs).
window.sbRun = function (url, opts) {
  opts = opts || {};
  return new Promise(function (resolve) {
    var r = {opened: false, error: false, messages: [], code: null, wasClean: null,
             reason: null, timedOut: false, ms: null, sent: 0};
    var t0 = performance.now();
    var ws;
    try { ws = new WebSocket(url); } catch (e) { r.exception = String(e); resolve(r); return; }
    var timer = setTimeout(function () {
      r.timedOut = true; r.ms = performance.now() - t0;
      try { ws.close(); } catch (e) {}
      resolve(r);
    }, opts.timeoutMs || 5000);
    ws.onopen = function () {
      r.opened = true;
      if (opts.sendBytes) {
        var s = window.sbBig(opts.sendBytes);
        ws.send(s); r.sent = s.length;
      }
      if (opts.closeAfterOpenMs != null) {
        setTimeout(function () { try { ws.close(1000); } catch (e) {} }, opts.closeAfterOpenMs);
      }
    };
    ws.onerror = function () { r.error = true; };
    ws.onmessage = function (e) {
      r.messages.push(typeof e.data === 'string' ? e.data : '[binary]');
    };
    ws.onclose = function (e) {
      clearTimeout(timer);
      r.code = e.code; r.wasClean = e.wasClean; r.reason = e.reason;
      r.ms = performance.now() - t0;
      resolve(r);
    };
  });
};

var bigCache = {};
window.sbBig = function (n) {
  if (!bigCache[n]) { bigCache[n] = 'x'.repeat(n); }
  return bigCache[n];
};

// `tries` fresh sockets in a row, each sending one message of n bytes once open.
window.sbOversize = async function (url, n, tries, perTryMs, budgetMs) {
  var out = [];
  var t0 = performance.now();
  for (var i = 0; i < tries; i++) {
    if (performance.now() - t0 > budgetMs) { out.push({skipped: true}); continue; }
    var r = await window.sbRun(url, {sendBytes: n, timeoutMs: perTryMs});
    out.push({opened: r.opened, code: r.code, wasClean: r.wasClean, reason: r.reason,
              timedOut: r.timedOut, error: r.error, ms: Math.round(r.ms),
              frames: r.messages.length});
  }
  return out;
};

// Long-lived sockets for the chat check.
window.sbSocks = {};
window.sbConnect = function (name, url, timeoutMs) {
  return new Promise(function (resolve) {
    var s = {messages: [], opened: false, closed: null, error: false};
    window.sbSocks[name] = s;
    var ws = new WebSocket(url);
    s.ws = ws;
    var timer = setTimeout(function () { resolve({opened: false, timedOut: true}); }, timeoutMs || 5000);
    ws.onopen = function () { s.opened = true; clearTimeout(timer); resolve({opened: true}); };
    ws.onerror = function () { s.error = true; };
    ws.onmessage = function (e) {
      s.messages.push(typeof e.data === 'string' ? e.data : '[binary]');
    };
    ws.onclose = function (e) {
      s.closed = {code: e.code, wasClean: e.wasClean, reason: e.reason};
      clearTimeout(timer);
      resolve({opened: s.opened, code: e.code, wasClean: e.wasClean});
    };
  });
};
window.sbSend = function (name, text) { window.sbSocks[name].ws.send(text); return true; };
window.sbMessages = function (name) { return window.sbSocks[name].messages.slice(); };
window.sbHasFrame = function (name, want) {
  return window.sbSocks[name].messages.some(function (m) {
    var o; try { o = JSON.parse(m); } catch (e) { return false; }
    return Object.keys(want).every(function (k) { return o[k] === want[k]; });
  });
};
window.sbClose = function (name, timeoutMs) {
  var s = window.sbSocks[name];
  return new Promise(function (resolve) {
    if (s.closed) { resolve(s.closed); return; }
    var timer = setTimeout(function () { resolve({timedOut: true}); }, timeoutMs || 5000);
    s.ws.addEventListener('close', function (e) {
      clearTimeout(timer); resolve({code: e.code, wasClean: e.wasClean});
    });
    s.ws.close(1000);
  });
};
</script></body></html>
"""


# ---------------------------------------------------------------------------- helpers

def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def mint_token(user_id, name, ttl=3600, secret=JWT_SECRET):
    header = {"alg": "HS256", "typ": "JWT"}
    claims = {"user_id": user_id, "name": name, "exp": int(time.time()) + ttl}
    signing_input = (b64url(json.dumps(header, separators=(",", ":")).encode())
                     + "." + b64url(json.dumps(claims, separators=(",", ":")).encode()))
    sig = hmac.new(secret.encode(), signing_input.encode("ascii"), hashlib.sha256).digest()
    return signing_input + "." + b64url(sig)


class PageHandler(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        body = PAGE.encode("utf-8")
        if self.path.split("?")[0] not in ("/", "/index.html"):
            self.send_response(404)
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        self.send_response(200)
        self.send_header("Content-Type", "text/html; charset=utf-8")
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", "no-store")
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):  # quiet
        pass


def serve_page():
    srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), PageHandler)
    srv.daemon_threads = True
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    return srv, srv.server_address[1]


def die_with_parent():
    """preexec_fn: the server gets SIGKILL if this test process dies (Linux)."""
    try:
        import ctypes
        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        libc.prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except Exception:
        pass


class Server:
    """The switchboard binary on loopback, port 0; addresses read from its stdout."""

    LINE = re.compile(r"listening on ws://(\S+) \(server API on http://(\S+)\)")

    def __init__(self, binary, tmpdir, allowed_origins, name="server"):
        self.log_path = os.path.join(tmpdir, name + ".log")
        env = dict(os.environ)
        env.update({
            "SWITCHBOARD_JWT_SECRET": JWT_SECRET,
            "SWITCHBOARD_API_KEY": API_KEY,
            "SWITCHBOARD_LOG": "info",
        })
        if allowed_origins is not None:
            env["SWITCHBOARD_ALLOWED_ORIGINS"] = allowed_origins
        else:
            env.pop("SWITCHBOARD_ALLOWED_ORIGINS", None)
        self.log = open(self.log_path, "wb")
        self.proc = subprocess.Popen(
            [binary, "--db", os.path.join(tmpdir, name + ".db"),
             "--listen", "127.0.0.1:0", "--api-listen", "127.0.0.1:0"],
            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=self.log,
            env=env, cwd=tmpdir, preexec_fn=die_with_parent)
        self.addr = self.api = None
        got = threading.Event()
        first = []

        def read():
            for raw in self.proc.stdout:
                line = raw.decode("utf-8", "replace").rstrip()
                if not got.is_set():
                    first.append(line)
                    m = self.LINE.search(line)
                    if m:
                        self.addr, self.api = m.group(1), m.group(2)
                        got.set()
            got.set()

        threading.Thread(target=read, daemon=True).start()
        if not got.wait(15) or self.addr is None:
            exited = self.proc.poll()
            self.stop()
            raise RuntimeError("switchboard %s without printing its address; stdout: %r, stderr: %s"
                               % ("exited with %s" % exited if exited is not None else "ran 15 s",
                                  first, self.log_tail(10)))

    def alive(self):
        return self.proc.poll() is None

    def log_tail(self, n):
        try:
            with open(self.log_path, "rb") as f:
                lines = f.read().decode("utf-8", "replace").splitlines()
            return lines[-n:]
        except OSError:
            return []

    def stop(self):
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        self.log.close()


def raw_upgrade_status(addr, path, origin, timeout=5):
    """Status line the server answers a WebSocket upgrade with, for a given Origin."""
    host, port = addr.rsplit(":", 1)
    key = base64.b64encode(os.urandom(16)).decode()
    req = ("GET %s HTTP/1.1\r\nHost: %s\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
           "Sec-WebSocket-Key: %s\r\nSec-WebSocket-Version: 13\r\n" % (path, addr, key))
    if origin is not None:
        req += "Origin: %s\r\n" % origin
    req += "\r\n"
    with socket.create_connection((host, int(port)), timeout=timeout) as s:
        s.sendall(req.encode())
        data = b""
        while b"\r\n" not in data:
            chunk = s.recv(4096)
            if not chunk:
                break
            data += chunk
    return data.split(b"\r\n", 1)[0].decode("latin-1")


def frames(messages):
    out = []
    for m in messages:
        try:
            out.append(json.loads(m))
        except ValueError:
            out.append({"unparsed": m[:80]})
    return out


def types_of(messages):
    return [f.get("type", "error" if "error" in f else "?") if isinstance(f, dict) else "?"
            for f in frames(messages)]


def tally(results):
    """'20x1009' or '3x1009, 17x1006' (timeouts and skipped tries named)."""
    counts = {}
    for r in results:
        if r.get("skipped"):
            k = "skipped"
        elif r.get("timedOut"):
            k = "no-close-in-time"
        elif not r.get("opened") and r.get("code") is not None:
            k = "%s(never opened)" % r.get("code")
        else:
            k = str(r.get("code"))
        counts[k] = counts.get(k, 0) + 1
    return ", ".join("%dx%s" % (v, k) for k, v in sorted(counts.items(), key=lambda kv: -kv[1]))


def api_post(server, path, body):
    """A server API POST with the test key; the parsed answer."""
    import urllib.request
    request = urllib.request.Request("http://%s%s" % (server.api, path), data=json.dumps(body).encode(),
                                     headers={"Authorization": "Bearer " + API_KEY,
                                              "Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=5) as response:
        return json.loads(response.read())


def take_screenshot(page, test_page, console_srv, ws, path):
    """The README's picture: a few clients in two rooms and a consultation, some traffic."""
    api_post(console_srv, "/api/conversations",
             {"kind": "consultation", "id": "c-1001", "title": "Reading with Ada", "members": [40, 41]})
    clients = [("%s/ws/rooms/support/?token=%s" % (ws, mint_token(40, "linus")), "s0"),
               ("%s/ws/rooms/support/?token=%s" % (ws, mint_token(42, "alan")), "s1"),
               ("%s/ws/consultations/c-1001/?token=%s" % (ws, mint_token(41, "ada")), "c0"),
               ("%s/ws/presence/?token=%s" % (ws, mint_token(41, "ada")), "p0")]
    for url, name in clients:
        test_page.evaluate("([n, u]) => sbConnect(n, u, 5000)", [name, url])
    for i in range(6):
        test_page.evaluate("(i) => sbSend('grace', JSON.stringify({message: 'hi console ' + i}))", i)
        test_page.evaluate("(i) => sbSend('s0', JSON.stringify({message: 'ticket ' + i}))", i)
        time.sleep(0.3)
    page.wait_for_function("() => document.getElementById('t-users').textContent === '5'", timeout=5000)
    page.wait_for_function("() => document.querySelectorAll('#recent tr').length >= 3", timeout=5000)
    page.set_viewport_size({"width": 1280, "height": 1040})
    page.evaluate("() => { document.getElementById('try-log').scrollTop = 0; window.scrollTo(0, 0); }")
    page.screenshot(path=path)  # the viewport, not the whole log: a PNG of about 140 KB
    print("browser: screenshot saved to %s" % path, flush=True)


def console_checks(run, browser, open_page, console_srv, test_page, screenshot):
    """Checks 6-8: the console page of `console_srv`, driven like a person would."""
    ctx = browser.new_context(viewport={"width": 1280, "height": 900})
    ctx.set_default_timeout(10000)
    page = ctx.new_page()
    problems = []
    api_calls = []
    page.on("console", lambda m: problems.append("console.%s: %s" % (m.type, m.text))
            if m.type in ("error", "warning") else None)
    page.on("pageerror", lambda e: problems.append("page error: %s" % e))
    page.on("requestfailed", lambda r: problems.append("request failed: %s %s" % (r.url, r.failure)))
    page.on("request", lambda r: api_calls.append(r.url) if "/api/" in r.url else None)
    base = "http://%s" % console_srv.api

    # 6. loads, asks for the key before calling the API, keeps it for the tab
    try:
        response = page.goto(base + "/console")
        policy = response.headers.get("content-security-policy", "")
        page.wait_for_selector("#key-input", state="visible", timeout=5000)
        asked_first = len(api_calls) == 0
        page.fill("#key-input", API_KEY)
        page.click("#key-save")
        page.wait_for_function("() => document.getElementById('status').textContent === 'live'", timeout=5000)
        hidden = page.evaluate("() => document.getElementById('key-dialog').hidden")
        stored = page.evaluate("() => sessionStorage.getItem('switchboard.apiKey')") == API_KEY
        page.reload()
        page.wait_for_function("() => document.getElementById('status').textContent === 'live'", timeout=5000)
        asked_again = page.evaluate("() => !document.getElementById('key-dialog').hidden")
        ok = (response.status == 200 and "script-src 'self'" in policy and asked_first and hidden and stored
              and not asked_again and not problems)
        run.check("6 console loads and asks for the key", ok,
                  "status %s; CSP %r; no API call before the key: %s; key kept in sessionStorage: %s; "
                  "asked again after a reload: %s; console problems: %s"
                  % (response.status, policy[:60] + "...", asked_first, stored, asked_again, problems or "none"))
    except Exception as e:
        run.check("6 console loads and asks for the key", False, "%s: %s; console problems: %s"
                  % (type(e).__name__, str(e).splitlines()[0], problems))

    # 7. a user online appears when a test client connects
    ws = "ws://%s" % console_srv.addr
    try:
        url = "%s/ws/rooms/lobby/?token=%s" % (ws, mint_token(31, "grace"))
        r = test_page.evaluate("([n, u]) => sbConnect(n, u, 5000)", ["grace", url])
        page.wait_for_function(
            "() => Array.from(document.querySelectorAll('#users td')).some(td => td.textContent === 'grace')",
            timeout=5000)
        users = page.evaluate("() => document.getElementById('t-users').textContent")
        endpoints = page.evaluate("() => document.getElementById('endpoints').textContent")
        run.check("7 console shows a user online", r.get("opened") and users == "1" and "rooms" in endpoints,
                  "test client opened=%s; users online tile %s; endpoints %r" % (r.get("opened"), users, endpoints))
    except Exception as e:
        run.check("7 console shows a user online", False, "%s: %s" % (type(e).__name__, str(e).splitlines()[0]))

    # 8. try it: a room message out and back
    try:
        index = page.evaluate("() => Array.from(document.querySelectorAll('#try-endpoint option'))"
                              ".findIndex(o => o.textContent === '/ws/rooms/{room}/')")
        page.select_option("#try-endpoint", str(index))
        page.fill("#try-param", "lobby")
        page.fill("#try-user", "7")
        page.fill("#try-name", "Console Ada")
        page.click("#try-connect")
        page.wait_for_selector("#try-examples button:not([disabled])", timeout=5000)
        example = page.text_content("#try-examples button")
        page.click("#try-examples button")
        page.wait_for_function(
            "() => Array.from(document.querySelectorAll('#try-log li.in'))"
            ".some(li => li.textContent.includes('\"chat_message\"') && li.textContent.includes('Hello world!'))",
            timeout=5000)
        test_page.wait_for_function(
            "() => sbHasFrame('grace', {type: 'chat_message', message: 'Hello world!', sender_id: '7'})",
            timeout=5000)
        out = page.evaluate("() => Array.from(document.querySelectorAll('#try-log li.out')).map(li => li.textContent)")
        if screenshot:
            take_screenshot(page, test_page, console_srv, ws, screenshot)
        page.click("#try-disconnect")
        page.wait_for_function("() => document.getElementById('try-state').textContent.startsWith('closed')",
                               timeout=5000)
        closed = page.text_content("#try-state")
        ok = (example == "send chat message" and any('{"message":"Hello world!"}' in t for t in out)
              and closed.startswith("closed 1000") and "normal closure" in closed and not problems)
        run.check("8 console try-it room message", ok,
                  "clicked %r; sent %s; the echo and grace's copy arrived; %r; console problems: %s"
                  % (example, out, closed, problems or "none"))
    except Exception as e:
        try:
            log = page.evaluate("() => Array.from(document.querySelectorAll('#try-log li')).map(li => li.textContent)")
        except Exception:
            log = "?"
        run.check("8 console try-it room message", False, "%s: %s; log %s; console problems: %s"
                  % (type(e).__name__, str(e).splitlines()[0], log, problems))

    # 9. the browser enforces the policy: a WebSocket URL elsewhere is refused, and said
    try:
        problems.clear()
        page.fill("#try-ws", "ws://127.0.0.1:1")
        page.click("#try-connect")
        page.wait_for_function(
            "() => document.getElementById('try-state').textContent.includes('Content-Security-Policy')",
            timeout=5000)
        said = page.text_content("#try-state")
        violations = [p for p in problems if "violates the following Content Security Policy directive" in p]
        enabled = page.evaluate("() => !document.getElementById('try-connect').disabled")
        run.check("9 console policy refuses other sockets", len(violations) == 1 and enabled,
                  "%r; browser: %s" % (said, violations[0].split("?token=")[0] + "...'" if violations else problems))
    except Exception as e:
        run.check("9 console policy refuses other sockets", False, "%s: %s; console problems: %s"
                  % (type(e).__name__, str(e).splitlines()[0], problems))
    ctx.close()


# ---------------------------------------------------------------------------- the test

class Run:
    def __init__(self):
        self.passed = 0
        self.failed = 0

    def check(self, name, ok, figures):
        if ok:
            self.passed += 1
        else:
            self.failed += 1
        print("%s %s: %s" % ("PASS" if ok else "FAIL", name, figures), flush=True)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--binary", required=True)
    ap.add_argument("--chromium", default="/usr/bin/chromium")
    ap.add_argument("--tries", type=int, default=20)
    ap.add_argument("--limit", type=int, default=65536, help="the server's max message bytes (its default)")
    ap.add_argument("--server-log", help="copy the server's stderr (log level info) to this file")
    ap.add_argument("--screenshot", help="save a screenshot of the console to this PNG file")
    args = ap.parse_args()

    os.environ["PLAYWRIGHT_SKIP_BROWSER_DOWNLOAD"] = "1"
    from playwright.sync_api import sync_playwright

    def watchdog():
        print("browser: watchdog: still running after %d s, giving up" % OVERALL_SECONDS, flush=True)
        print("browser: %d passed, %d failed" % (run.passed, run.failed + 1), flush=True)
        for srv in (server, console_srv):
            if srv is not None and srv.alive():
                srv.proc.kill()
        os._exit(1)

    run = Run()
    server = console_srv = None
    timer = threading.Timer(OVERALL_SECONDS, watchdog)
    timer.daemon = True
    timer.start()
    tmpdir = tempfile.mkdtemp(prefix="sb-browser-")
    started = time.monotonic()
    try:
        page_srv, page_port = serve_page()
        other_srv, other_port = serve_page()
        allowed = "http://127.0.0.1:%d" % page_port
        refused = "http://127.0.0.1:%d" % other_port
        refused_host = "http://localhost:%d" % page_port  # same port, other host: other origin
        server = Server(args.binary, tmpdir, allowed)
        console_srv = Server(args.binary, tmpdir, None, name="console")
        ws = "ws://%s" % server.addr
        print("browser: switchboard on %s, page on %s (allowed origin), %s and %s (not allowed)"
              % (server.addr, allowed, refused, refused_host), flush=True)

        with sync_playwright() as p:
            browser = p.chromium.launch(
                executable_path=args.chromium, headless=True, timeout=30000,
                args=["--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu",
                      "--disable-quic", "--no-first-run", "--disable-background-networking",
                      "--disable-component-update", "--disable-sync"])
            print("browser: chromium %s" % browser.version, flush=True)

            def open_page(origin):
                ctx = browser.new_context()
                ctx.set_default_timeout(10000)
                pg = ctx.new_page()
                pg.goto(origin + "/")
                return ctx, pg

            ctx_a, page_a = open_page(allowed)
            ctx_b, page_b = open_page(allowed)

            # 1. room chat between two contexts
            try:
                tok1, tok2 = mint_token(1, "alice"), mint_token(2, "bob")
                url1 = "%s/ws/rooms/lobby/?token=%s" % (ws, tok1)
                url2 = "%s/ws/rooms/lobby/?token=%s" % (ws, tok2)
                ra = page_a.evaluate("([n, u]) => sbConnect(n, u, 5000)", ["a", url1])
                page_a.wait_for_function("() => sbMessages('a').length >= 1", timeout=5000)
                rb = page_b.evaluate("([n, u]) => sbConnect(n, u, 5000)", ["b", url2])
                page_b.wait_for_function("() => sbMessages('b').length >= 1", timeout=5000)
                page_a.wait_for_function("() => sbHasFrame('a', {type: 'user_join', user_id: '2'})", timeout=5000)
                on_open_a = page_a.evaluate("() => sbMessages('a')")
                on_open_b = page_b.evaluate("() => sbMessages('b')")
                page_a.evaluate("() => sbSend('a', JSON.stringify({message: 'hello from A'}))")
                page_b.wait_for_function(
                    "() => sbHasFrame('b', {type: 'chat_message', message: 'hello from A'})", timeout=5000)
                page_a.wait_for_function(
                    "() => sbHasFrame('a', {type: 'chat_message', message: 'hello from A'})", timeout=5000)
                got_b = [f for f in frames(page_b.evaluate("() => sbMessages('b')"))
                         if f.get("type") == "chat_message" and f.get("message") == "hello from A"]
                users_b = next((f for f in frames(on_open_b) if f.get("type") == "room_users_list"), {})
                msg = got_b[0]
                ok = (ra.get("opened") and rb.get("opened")
                      and frames(on_open_a)[0].get("type") == "room_users_list"
                      and [u.get("id") for u in users_b.get("users", [])] == ["1", "2"]
                      and msg.get("sender_id") == "1" and msg.get("sender_username") == "alice"
                      and isinstance(msg.get("timestamp"), str))
                # B leaves: A hears user_leave
                cb = page_b.evaluate("() => sbClose('b', 5000)")
                page_a.wait_for_function("() => sbHasFrame('a', {type: 'user_leave', user_id: '2'})", timeout=5000)
                ca = page_a.evaluate("() => sbClose('a', 5000)")
                run.check("1 room chat", ok,
                          "A on open got %s, B on open got %s (users %s); B got %s; "
                          "B closed %s, A got user_leave, A closed %s"
                          % (types_of(on_open_a), types_of(on_open_b),
                             [u.get("id") for u in users_b.get("users", [])],
                             json.dumps(msg, sort_keys=True), cb.get("code"), ca.get("code")))
            except Exception as e:  # a wait timed out: say what each side had
                def msgs(pg, n):
                    try:
                        return types_of(pg.evaluate("(n) => sbSocks[n] ? sbMessages(n) : []", n))
                    except Exception:
                        return "?"
                run.check("1 room chat", False, "%s: %s; A had %s, B had %s"
                          % (type(e).__name__, str(e).splitlines()[0], msgs(page_a, "a"), msgs(page_b, "b")))

            # 2. bad token on a 004 path: 4001
            r = page_a.evaluate("(u) => sbRun(u, {timeoutMs: 5000})", ws + "/ws/rooms/lobby/?token=bad")
            run.check("2 bad token /ws/rooms/lobby/", r["code"] == 4001 and r["opened"],
                      "opened=%s close code=%s wasClean=%s reason=%r frames=%d in %d ms"
                      % (r["opened"], r["code"], r["wasClean"], r["reason"], len(r["messages"]), r["ms"] or 0))

            # 3. bad token on a /ws/v1/ path: 4003
            r = page_a.evaluate("(u) => sbRun(u, {timeoutMs: 5000})", ws + "/ws/v1/chat/?token=bad")
            run.check("3 bad token /ws/v1/chat/", r["code"] == 4003 and r["opened"],
                      "opened=%s close code=%s wasClean=%s reason=%r frames=%d in %d ms"
                      % (r["opened"], r["code"], r["wasClean"], r["reason"], len(r["messages"]), r["ms"] or 0))

            # 4. oversize messages: 1009 every time (fresh socket per try, fresh user per size)
            for label, size, user in (("4a", args.limit + 1, 41), ("4b", 1 << 20, 42)):
                url = "%s/ws/rooms/big%d/?token=%s" % (ws, user, mint_token(user, "big%d" % user))
                res = page_a.evaluate("([u, n, t]) => sbOversize(u, n, t, 4000, 40000)",
                                      [url, size, args.tries])
                n1009 = sum(1 for x in res if x.get("code") == 1009 and x.get("opened"))
                others = [x for x in res if not (x.get("code") == 1009 and x.get("opened"))]
                ms = sorted(x["ms"] for x in res if x.get("ms") is not None)
                detail = ""
                if others:
                    o = others[0]
                    detail = "; first other: code=%s wasClean=%s reason=%r frames=%s" % (
                        o.get("code"), o.get("wasClean"), o.get("reason"), o.get("frames"))
                run.check("%s oversize %d bytes" % (label, size), n1009 == args.tries,
                          "%d/%d tries closed 1009 (%s); close after %s ms (median %s)%s"
                          % (n1009, args.tries, tally(res), "%d-%d" % (ms[0], ms[-1]) if ms else "-",
                             ms[len(ms) // 2] if ms else "-", detail))

            # 5. Origin allow-list
            tok5 = mint_token(5, "eve")
            url5 = "%s/ws/rooms/origin/?token=%s" % (ws, tok5)
            ok_r = page_a.evaluate("(u) => sbRun(u, {timeoutMs: 5000, closeAfterOpenMs: 200})", url5)
            results = {}
            for origin in (refused, refused_host):
                ctx, pg = open_page(origin)
                results[origin] = pg.evaluate("(u) => sbRun(u, {timeoutMs: 5000})", url5)
                ctx.close()
            raw = {o: raw_upgrade_status(server.addr, "/ws/rooms/origin/?token=" + tok5, o)
                   for o in (allowed, refused, refused_host)}
            ok = (ok_r["opened"] and ok_r["code"] == 1000
                  and any(f.get("type") == "room_users_list" for f in frames(ok_r["messages"]))
                  and all(not r["opened"] and r["error"] and r["code"] == 1006 and r["wasClean"] is False
                          for r in results.values())
                  and raw[allowed].startswith("HTTP/1.1 101")
                  and all(raw[o].startswith("HTTP/1.1 403") for o in (refused, refused_host)))
            run.check("5 origin allow-list", ok,
                      "allowed %s: opened=%s frames=%s closed %s; %s"
                      % (allowed, ok_r["opened"], types_of(ok_r["messages"]), ok_r["code"],
                         "; ".join("%s: opened=%s error=%s code=%s wasClean=%s"
                                   % (o, r["opened"], r["error"], r["code"], r["wasClean"])
                                   for o, r in results.items()))
                      + "; raw upgrade: " + ", ".join("%s -> %r" % (o, s) for o, s in raw.items()))

            # 6-8. the console
            console_checks(run, browser, open_page, console_srv, page_a, args.screenshot)

            for c in (ctx_a, ctx_b):
                c.close()
            browser.close()

        for srv in (server, console_srv):
            if not srv.alive():
                run.check("server still running", False, "switchboard exited with %s" % srv.proc.returncode)
    except Exception as e:
        run.check("harness", False, "%s: %s" % (type(e).__name__, str(e).strip().splitlines()[0] if str(e).strip() else ""))
    finally:
        timer.cancel()
        for srv, what in ((server, "server"), (console_srv, "console server")):
            if srv is None:
                continue
            if run.failed:
                tail = srv.log_tail(8)
                if tail:
                    print("browser: last %s log lines:" % what, flush=True)
                    for line in tail:
                        print("  " + line[:300], flush=True)
            srv.stop()
        if server is not None and args.server_log:
            shutil.copyfile(server.log_path, args.server_log)
        shutil.rmtree(tmpdir, ignore_errors=True)

    print("browser: ran in %.1f s" % (time.monotonic() - started))
    print("browser: %d passed, %d failed" % (run.passed, run.failed), flush=True)
    return 1 if run.failed else 0


if __name__ == "__main__":
    sys.exit(main())
