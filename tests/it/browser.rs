//! A small Chrome DevTools Protocol client for the console's browser
//! tests: Debian's headless `chromium` on a free debugging port, driven
//! over one websocket (tokio-tungstenite). Just what the tests need —
//! load a page, read it, type, click with real mouse events, screenshot —
//! so no CDP crate (and its build time) is pulled in.

use std::collections::VecDeque;
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use base64::Engine;
use futures::{SinkExt, StreamExt};
use serde_json::{json, Value};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

/// How long one protocol step (a command, a page load) may take on a
/// loaded 2-core machine.
const STEP: Duration = Duration::from_secs(15);

/// Whether the browser tests can run: `chromium` is installed. Without it
/// they skip with a message, except in CI (`CI` set), which installs it and
/// where a skip would hide a broken console.
pub fn chromium_available(test: &str) -> bool {
    let found = Command::new("chromium")
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if !found {
        assert!(
            std::env::var_os("CI").is_none(),
            "chromium is not installed (apt-get install chromium; .ci/run installs it)"
        );
        eprintln!("{test}: SKIPPED: chromium is not installed (apt-get install chromium)");
    }
    found
}

/// One headless chromium with one page attached; killed (its whole
/// process group) on drop.
pub struct Browser {
    child: Child,
    _profile: tempfile::TempDir,
    ws: WebSocketStream<MaybeTlsStream<TcpStream>>,
    session: String,
    next_id: u64,
    /// Events read while waiting for a command's answer.
    events: VecDeque<Value>,
}

impl Browser {
    /// Starts chromium with a fresh profile, `width`×`height` viewport.
    pub async fn launch(width: u32, height: u32) -> Browser {
        let profile = tempfile::tempdir().unwrap();
        let child = Command::new("chromium")
            .args([
                "--headless=new",
                "--no-sandbox",
                "--disable-gpu",
                "--hide-scrollbars",
                "--no-first-run",
                "--disable-extensions",
                "--disable-background-networking",
                "--remote-debugging-address=127.0.0.1",
                "--remote-debugging-port=0",
                &format!("--window-size={width},{height}"),
                &format!("--user-data-dir={}", profile.path().display()),
                "about:blank",
            ])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            // Its own group, so drop ends renderer and helper processes too.
            .process_group(0)
            .spawn()
            .expect("running chromium");
        // Chromium writes the port it chose and the browser's websocket
        // path into the profile once it listens.
        let port_file = profile.path().join("DevToolsActivePort");
        let start = Instant::now();
        let (port, path) = loop {
            if let Ok(s) = std::fs::read_to_string(&port_file) {
                let mut lines = s.lines();
                if let (Some(p), Some(path)) = (lines.next(), lines.next()) {
                    break (p.trim().to_owned(), path.trim().to_owned());
                }
            }
            assert!(
                start.elapsed() < STEP,
                "chromium wrote no DevToolsActivePort within {STEP:?}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        };
        let (ws, _) = tokio_tungstenite::connect_async(format!("ws://127.0.0.1:{port}{path}"))
            .await
            .expect("connecting to chromium's DevTools websocket");
        let mut b = Browser {
            child,
            _profile: profile,
            ws,
            session: String::new(),
            next_id: 0,
            events: VecDeque::new(),
        };
        let target = b
            .call("Target.createTarget", json!({"url": "about:blank"}))
            .await;
        let attached = b
            .call(
                "Target.attachToTarget",
                json!({"targetId": target["targetId"], "flatten": true}),
            )
            .await;
        b.session = attached["sessionId"].as_str().unwrap().to_owned();
        b.call("Page.enable", json!({})).await;
        b.call(
            "Emulation.setDeviceMetricsOverride",
            json!({"width": width, "height": height, "deviceScaleFactor": 1, "mobile": false}),
        )
        .await;
        b
    }

    /// Sends one command (to the page once attached) and returns its result.
    pub async fn call(&mut self, method: &str, params: Value) -> Value {
        self.next_id += 1;
        let id = self.next_id;
        let mut msg = json!({"id": id, "method": method, "params": params});
        if !self.session.is_empty() {
            msg["sessionId"] = json!(self.session);
        }
        self.ws
            .send(Message::text(msg.to_string()))
            .await
            .expect("sending to chromium");
        let deadline = Instant::now() + STEP;
        loop {
            let v = self.read(deadline, method).await;
            if v["id"].as_u64() == Some(id) {
                if let Some(e) = v.get("error") {
                    panic!("{method} failed: {e}");
                }
                return v["result"].clone();
            }
            if v.get("method").is_some() {
                self.events.push_back(v);
            }
        }
    }

    async fn read(&mut self, deadline: Instant, what: &str) -> Value {
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let msg = tokio::time::timeout(left, self.ws.next())
                .await
                .unwrap_or_else(|_| panic!("chromium did not answer {what} within {STEP:?}"))
                .expect("chromium closed the DevTools connection")
                .expect("reading from chromium");
            if let Message::Text(t) = msg {
                return serde_json::from_str(t.as_str()).expect("CDP message is JSON");
            }
        }
    }

    /// Waits for the next `method` event (events already read count).
    async fn event(&mut self, method: &str) -> Value {
        if let Some(i) = self.events.iter().position(|e| e["method"] == method) {
            return self.events.remove(i).unwrap();
        }
        let deadline = Instant::now() + STEP;
        loop {
            let v = self.read(deadline, method).await;
            if v["method"] == method {
                return v;
            }
            if v.get("method").is_some() {
                self.events.push_back(v);
            }
        }
    }

    /// Loads `url` and waits for its load event (after any redirects).
    pub async fn goto(&mut self, url: &str) {
        self.events.clear();
        let r = self.call("Page.navigate", json!({"url": url})).await;
        assert!(r.get("errorText").is_none(), "loading {url}: {r}");
        self.event("Page.loadEventFired").await;
    }

    /// Evaluates `expr` in the page; its value as JSON.
    pub async fn eval(&mut self, expr: &str) -> Value {
        let r = self
            .call(
                "Runtime.evaluate",
                json!({"expression": expr, "returnByValue": true, "awaitPromise": true}),
            )
            .await;
        if let Some(e) = r.get("exceptionDetails") {
            panic!("evaluating {expr}: {e}");
        }
        r["result"]["value"].clone()
    }

    pub async fn url(&mut self) -> String {
        self.eval("location.href")
            .await
            .as_str()
            .unwrap()
            .to_owned()
    }

    /// Focuses the element `selector` and types `text` into it.
    pub async fn type_into(&mut self, selector: &str, text: &str) {
        let found = self
            .eval(&format!(
                "(() => {{ const e = document.querySelector({s}); if (!e) return false; e.focus(); return true; }})()",
                s = json!(selector)
            ))
            .await;
        assert_eq!(found, json!(true), "no element {selector} to type into");
        self.call("Input.insertText", json!({"text": text})).await;
    }

    /// Clicks the element `selector` the way a person does: the mouse
    /// pressed and released over its centre. Then waits for the page the
    /// click navigates to.
    pub async fn click_and_wait(&mut self, selector: &str) {
        let rect = self
            .eval(&format!(
                "(() => {{ const e = document.querySelector({s}); if (!e) return null; \
                 e.scrollIntoView({{block: 'center'}}); const r = e.getBoundingClientRect(); \
                 return [r.x + r.width / 2, r.y + r.height / 2]; }})()",
                s = json!(selector)
            ))
            .await;
        let (x, y) = match rect.as_array().map(Vec::as_slice) {
            Some([x, y]) => (x.as_f64().unwrap(), y.as_f64().unwrap()),
            _ => panic!("no element {selector} on {}", self.url().await),
        };
        self.events.clear();
        for kind in ["mouseMoved", "mousePressed", "mouseReleased"] {
            self.call(
                "Input.dispatchMouseEvent",
                json!({"type": kind, "x": x, "y": y, "button": "left", "clickCount": 1}),
            )
            .await;
        }
        self.event("Page.loadEventFired").await;
    }

    /// A PNG of the whole page (the viewport grown to its content's
    /// height) written to `path`.
    pub async fn screenshot(&mut self, path: &Path) {
        let size = self
            .eval("[document.documentElement.clientWidth, document.documentElement.scrollHeight]")
            .await;
        self.call(
            "Emulation.setDeviceMetricsOverride",
            json!({"width": size[0], "height": size[1], "deviceScaleFactor": 1, "mobile": false}),
        )
        .await;
        let r = self
            .call("Page.captureScreenshot", json!({"format": "png"}))
            .await;
        let png = base64::engine::general_purpose::STANDARD
            .decode(r["data"].as_str().unwrap())
            .unwrap();
        std::fs::write(path, png).unwrap();
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        // The negative pid names the group chromium leads.
        let _ = Command::new("kill")
            .args(["-KILL", "--", &format!("-{}", self.child.id())])
            .stderr(Stdio::null())
            .status();
        let _ = self.child.wait();
    }
}
