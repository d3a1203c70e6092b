//! A headless Chromium driven over WebDriver for the dashboard test: Debian's chromedriver on a
//! free loopback port, spoken to with plain HTTP/1.1 and JSON (the few commands the test needs:
//! open a URL, run a script, take a screenshot). Dropping a `Browser` ends its session (which
//! closes Chromium) and then stops chromedriver by its pid, whether the test passed or not.

use crate::{Proc, free_port, wait_until};
use serde_json::{Value, json};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

/// Debian's chromium and chromedriver, when installed (scripts/cluster-setup.sh installs them).
pub fn chromium() -> Option<(PathBuf, PathBuf)> {
    let browser = ["/usr/bin/chromium", "/usr/bin/chromium-browser"].into_iter().map(PathBuf::from).find(|p| p.is_file())?;
    let driver = crate::find_program("chromedriver")?;
    Some((browser, driver))
}

/// A chromedriver with one headless Chromium session.
pub struct Browser {
    driver: Proc,
    port: u16,
    session: String,
}

impl Browser {
    /// Starts chromedriver and a headless Chromium with a `width` x `height` window and its
    /// profile in `profile`.
    pub fn start(browser: &Path, driver: &Path, profile: &Path, width: u32, height: u32) -> Browser {
        let port = free_port();
        let driver = Proc::spawn(
            Command::new(driver)
                .args([format!("--port={port}"), "--allowed-ips=127.0.0.1".into()])
                .stdout(Stdio::null())
                .stderr(Stdio::null()),
        );
        let mut b = Browser { driver, port, session: String::new() };
        wait_until(20, "chromedriver to answer", || b.call("GET", "/status", None).is_some());
        let caps = json!({"capabilities": {"alwaysMatch": {
            "browserName": "chrome",
            "goog:chromeOptions": {
                "binary": browser.to_str().expect("utf-8 path"),
                "args": ["--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--no-first-run",
                         "--disable-extensions", "--hide-scrollbars",
                         format!("--window-size={width},{height}"),
                         format!("--user-data-dir={}", profile.display())],
            }
        }}});
        let (status, v) = b.call("POST", "/session", Some(&caps)).expect("chromedriver answers");
        assert_eq!(status, 200, "new session: {v}");
        b.session = v["value"]["sessionId"].as_str().expect("a session id").to_string();
        b
    }

    /// One WebDriver command: the status and the JSON answer; None when nothing answers.
    fn call(&self, method: &str, path: &str, body: Option<&Value>) -> Option<(u16, Value)> {
        let mut s = std::net::TcpStream::connect(("127.0.0.1", self.port)).ok()?;
        s.set_read_timeout(Some(std::time::Duration::from_secs(60))).ok()?;
        let body = body.map(Value::to_string).unwrap_or_default();
        write!(
            s,
            "{method} {path} HTTP/1.1\r\nHost: 127.0.0.1:{}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
            self.port,
            body.len()
        )
        .ok()?;
        // chromedriver keeps the connection open whatever it is asked: read the head, then
        // Content-Length bytes.
        let mut raw = Vec::new();
        let mut byte = [0u8; 1];
        while !raw.ends_with(b"\r\n\r\n") {
            s.read_exact(&mut byte).ok()?;
            raw.push(byte[0]);
        }
        let head = String::from_utf8_lossy(&raw).into_owned();
        let status = head.split_whitespace().nth(1)?.parse().ok()?;
        let length: usize = head
            .lines()
            .find_map(|l| l.split_once(':').filter(|(k, _)| k.eq_ignore_ascii_case("content-length")).map(|(_, v)| v.trim().to_string()))
            .and_then(|v| v.parse().ok())
            .unwrap_or(0);
        let mut data = vec![0u8; length];
        s.read_exact(&mut data).ok()?;
        let json = serde_json::from_slice(&data).unwrap_or(Value::Null);
        Some((status, json))
    }

    fn command(&self, method: &str, what: &str, body: Option<&Value>) -> Value {
        let path = format!("/session/{}{what}", self.session);
        let (status, v) = self.call(method, &path, body).unwrap_or_else(|| panic!("chromedriver did not answer {method} {what}"));
        assert_eq!(status, 200, "{method} {what}: {v}");
        v["value"].clone()
    }

    /// Opens `url` and waits for the page to load.
    pub fn goto(&self, url: &str) {
        self.command("POST", "/url", Some(&json!({ "url": url })));
    }

    /// Runs `script` (a function body; `return` its value) in the page.
    pub fn eval(&self, script: &str) -> Value {
        self.command("POST", "/execute/sync", Some(&json!({ "script": script, "args": [] })))
    }

    /// The page's address.
    pub fn url(&self) -> String {
        self.command("GET", "/url", None).as_str().unwrap_or_default().to_string()
    }

    /// Resizes the window (the screenshot's size).
    pub fn resize(&self, width: u32, height: u32) {
        self.command("POST", "/window/rect", Some(&json!({ "width": width, "height": height })));
    }

    /// Saves a PNG of the window to `path`.
    pub fn screenshot(&self, path: &Path) {
        use base64::Engine;
        let b64 = self.command("GET", "/screenshot", None);
        let png = base64::engine::general_purpose::STANDARD.decode(b64.as_str().expect("base64 text")).expect("base64 PNG");
        std::fs::write(path, png).expect("write screenshot");
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        if !self.session.is_empty() {
            let _ = self.call("DELETE", &format!("/session/{}", self.session), None);
        }
        self.driver.kill9();
    }
}
