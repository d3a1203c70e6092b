//! Helpers for the end-to-end tests: the built binaries, the project's Python (with DuckDB and
//! pyarrow) and small spec files, and a headless Chromium over WebDriver (`webdriver`). The
//! tests themselves are in tests/tests/.

pub mod tidy;
pub mod webdriver;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

/// The workspace root.
pub fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("workspace root").to_owned()
}

/// A binary of the workspace, built in the same profile as the running test.
pub fn bin(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("test executable");
    let dir = exe.parent().and_then(Path::parent).expect("target profile folder");
    let path = dir.join(name);
    assert!(path.is_file(), "{} is missing: run `cargo build --release --workspace --bins` (make test does)", path.display());
    path
}

/// The project's virtual-environment Python (made by scripts/setup.sh).
pub fn python() -> PathBuf {
    let p = root().join(".venv/bin/python");
    assert!(p.is_file(), "{} is missing: run `bash scripts/setup.sh` (make test does)", p.display());
    p
}

/// Runs a DuckDB query in the project's Python and returns the rows as JSON objects.
pub fn duckdb(sql: &str) -> Vec<serde_json::Value> {
    let script = r#"
import duckdb, json, sys
cur = duckdb.sql(sys.argv[1])
cols = cur.columns
print(json.dumps([dict(zip(cols, r)) for r in cur.fetchall()], default=str))
"#;
    let out = Command::new(python()).args(["-c", script, sql]).output().expect("python runs");
    assert!(out.status.success(), "duckdb query failed: {sql}\n{}", String::from_utf8_lossy(&out.stderr));
    serde_json::from_slice(&out.stdout).expect("json rows")
}

/// Writes a spec file and returns its path.
pub fn write_spec(dir: &Path, name: &str, text: &str) -> PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, text).expect("write spec");
    p
}

/// `cbsweep ARGS`, with output captured.
pub fn cbsweep(args: &[&str]) -> Output {
    Command::new(bin("cbsweep")).args(args).env("CBSWEEP_LOG", "warn").output().expect("cbsweep runs")
}

pub fn text(o: &Output) -> String {
    format!("{}{}", String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr))
}

/// A free loopback port (bound, read, released).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").expect("bind").local_addr().expect("addr").port()
}

/// A child process killed (SIGKILL) when dropped, so a failing test leaves nothing behind.
pub struct Proc(pub std::process::Child);

impl Proc {
    pub fn spawn(cmd: &mut Command) -> Proc {
        Proc(cmd.spawn().expect("spawn"))
    }

    pub fn pid(&self) -> i32 {
        self.0.id() as i32
    }

    pub fn kill9(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }

    /// Waits up to `secs` for the process to exit; returns its exit code.
    pub fn wait_for(&mut self, secs: u64) -> Option<i32> {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(secs);
        while std::time::Instant::now() < deadline {
            if let Ok(Some(st)) = self.0.try_wait() {
                return st.code();
            }
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
        None
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Lines of a fake trainer's execution log: (trial id, finished?).
pub fn executions(log: &Path) -> Vec<(String, bool)> {
    std::fs::read_to_string(log)
        .unwrap_or_default()
        .lines()
        .map(|l| match l.strip_suffix(" done") {
            Some(id) => (id.to_string(), true),
            // "ID resumed N": a start, from a checkpoint of N epochs
            None => (l.split(" resumed ").next().unwrap_or(l).to_string(), false),
        })
        .collect()
}

/// The epochs each resumed start of a trial began from, per trial id, in the log's order.
pub fn resumed_from(log: &Path) -> HashMap<String, Vec<u32>> {
    let mut out: HashMap<String, Vec<u32>> = HashMap::new();
    for line in std::fs::read_to_string(log).unwrap_or_default().lines() {
        if let Some((id, epochs)) = line.split_once(" resumed ") {
            out.entry(id.to_string()).or_default().push(epochs.parse().unwrap_or(0));
        }
    }
    out
}

/// Whether RESULTS/trials.parquet holds `cells` rows, all done. The coordinator also exports
/// partial tables while a sweep runs, so the file existing says nothing yet.
pub fn sweep_done(results: &Path, cells: usize) -> bool {
    let trials = results.join("trials.parquet");
    trials.exists()
        && duckdb(&format!("SELECT count(*) FILTER (WHERE status = 'done') AS done FROM '{}'", trials.display()))[0]["done"].as_u64()
            == Some(cells as u64)
}

/// Whether RESULTS/trials.parquet holds `cells` rows none of which is pending or leased.
pub fn sweep_done_any(results: &Path, cells: usize) -> bool {
    let trials = results.join("trials.parquet");
    trials.exists()
        && duckdb(&format!("SELECT count(*) FILTER (WHERE status NOT IN ('pending', 'leased')) AS ended FROM '{}'", trials.display()))[0]
            ["ended"]
            .as_u64()
            == Some(cells as u64)
}

/// Every cell of a finished sweep exactly once, read back by DuckDB: `cells` rows in
/// RESULTS/trials.parquet, all done, distinct trial ids, and `epochs` curve rows per trial.
pub fn results_once(results: &Path, cells: usize, epochs: u32) {
    let trials = results.join("trials.parquet");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(90);
    while !sweep_done(results, cells) && std::time::Instant::now() < deadline {
        std::thread::sleep(std::time::Duration::from_millis(500));
    }
    let rows = duckdb(&format!(
        "SELECT count(*) AS n, count(DISTINCT trial_id) AS ids, count(*) FILTER (WHERE status = 'done') AS done FROM '{}'",
        trials.display()
    ));
    assert_eq!(
        (rows[0]["n"].as_u64(), rows[0]["ids"].as_u64(), rows[0]["done"].as_u64()),
        (Some(cells as u64), Some(cells as u64), Some(cells as u64)),
        "{rows:?}"
    );
    let curves = duckdb(&format!(
        "SELECT count(*) AS n, count(DISTINCT (trial_id, epoch)) AS keys FROM '{}'",
        results.join("curves.parquet").display()
    ));
    let expect = (cells as u64) * u64::from(epochs);
    assert_eq!((curves[0]["n"].as_u64(), curves[0]["keys"].as_u64()), (Some(expect), Some(expect)), "every epoch once: {curves:?}");
}

/// A fake trainer's execution log counted: (starts per trial id, finishes per trial id).
pub fn counts(log: &Path) -> (HashMap<String, usize>, HashMap<String, usize>) {
    let (mut starts, mut dones) = (HashMap::new(), HashMap::new());
    for (id, done) in executions(log) {
        *if done { &mut dones } else { &mut starts }.entry(id).or_default() += 1;
    }
    (starts, dones)
}

/// Polls `cond` every 50 ms for up to `secs`.
pub fn wait_until(secs: u64, what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(secs);
    while std::time::Instant::now() < deadline {
        if cond() {
            return;
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    panic!("timed out after {secs} s waiting for {what}");
}

/// A coordinator process on a fixed loopback port with a known token.
pub fn coordinator(state: &Path, port: u16, token: &str) -> Proc {
    Proc::spawn(
        Command::new(bin("cbsweep"))
            .args(["coordinator", "--listen", &format!("127.0.0.1:{port}"), "--state", state.to_str().expect("utf-8 path")])
            .env("CBSWEEP_TOKEN", token)
            .env("CBSWEEP_LOG", "warn")
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null()),
    )
}

/// A fake-trainer worker process.
pub fn fake_worker(port: u16, token: &str, exec_log: &Path, epoch_ms: u64, extra: &[&str]) -> Proc {
    Proc::spawn(
        Command::new(bin("cbsweep-worker"))
            .args(["--coordinator", &format!("http://127.0.0.1:{port}"), "--trainer", "fake", "--exit-when-drained"])
            .args(["--fake-epoch-ms", &epoch_ms.to_string(), "--fake-execution-log", exec_log.to_str().expect("utf-8 path")])
            .args(["--give-up-after-s", "60"])
            .args(extra)
            .env("CBSWEEP_TOKEN", token)
            .env("CBSWEEP_LOG", "warn")
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null()),
    )
}

/// A fake-trainer worker taking `epoch_ms` per epoch, logging at info level to `log` (the lines
/// tests read: " training ", "result recorded", "coordinator unavailable; retrying"), waiting up
/// to 120 s for a coordinator that is away.
pub fn logged_fake_worker(port: u16, token: &str, epoch_ms: u64, log: &Path) -> Proc {
    Proc::spawn(
        Command::new(bin("cbsweep-worker"))
            .args(["--coordinator", &format!("http://127.0.0.1:{port}"), "--trainer", "fake", "--exit-when-drained"])
            .args(["--fake-epoch-ms", &epoch_ms.to_string(), "--give-up-after-s", "120"])
            .env("CBSWEEP_TOKEN", token)
            .env("CBSWEEP_LOG", "info")
            .stdout(std::process::Stdio::null())
            .stderr(std::fs::File::create(log).expect("worker log")),
    )
}

/// `cbsweep submit` to a local coordinator, retried while it starts.
pub fn submit(port: u16, token: &str, spec: &Path) {
    wait_until(20, "the coordinator to accept the sweep", || {
        Command::new(bin("cbsweep"))
            .args(["submit", spec.to_str().expect("utf-8 path"), "--coordinator", &format!("http://127.0.0.1:{port}")])
            .env("CBSWEEP_TOKEN", token)
            .output()
            .map(|o| o.status.success())
            .unwrap_or(false)
    });
}

/// Whether this process runs as root (the cluster tests need to start daemons and namespaces).
pub fn is_root() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| s.lines().find_map(|l| l.strip_prefix("Uid:").map(|u| u.split_whitespace().nth(1) == Some("0"))))
        .unwrap_or(false)
}

/// A program on PATH, or in the sbin folders a non-root PATH leaves out.
pub fn find_program(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(["/usr/local/sbin", "/usr/sbin", "/sbin"].map(PathBuf::from))
        .map(|d| d.join(name))
        .find(|p| p.is_file())
}

/// Whether every test must run here: CBSWEEP_REQUIRE_ALL=1 (.ci/run sets it), or CI=true
/// (CBSWEEP_REQUIRE_ALL=0 says otherwise). Then a missing prerequisite fails its test.
pub fn require_all() -> bool {
    let on = |v: &str| matches!(v.trim().to_ascii_lowercase().as_str(), "1" | "true" | "yes");
    match std::env::var("CBSWEEP_REQUIRE_ALL") {
        Ok(v) if !v.trim().is_empty() => on(&v),
        _ => std::env::var("CI").is_ok_and(|v| on(&v)),
    }
}

/// The file a skipped test adds its line to (`make test` prints it after the run, since neither
/// libtest nor nextest can mark a test skipped once it runs): TARGET/skipped-tests.txt.
pub fn skip_log() -> PathBuf {
    let exe = std::env::current_exe().expect("test executable");
    // TARGET/PROFILE/deps/TEST-HASH
    exe.ancestors().nth(3).expect("target folder").join("skipped-tests.txt")
}

/// A test whose prerequisite `why` is missing here. Where every test must run (`require_all`:
/// CI) it fails, naming what is missing; elsewhere it says so on stderr and in `skip_log`, and
/// the caller returns.
pub fn skipped(test: &str, why: &str) {
    assert!(
        !require_all(),
        "{test} cannot run here: {why}. CI requires every prerequisite (CBSWEEP_REQUIRE_ALL=1 or CI=true; \
         `bash scripts/cluster-setup.sh` as root installs the packages)"
    );
    let line = format!("SKIPPED {test}: {}", why.split_whitespace().collect::<Vec<_>>().join(" "));
    eprintln!("{line}");
    use std::io::Write;
    if let Ok(mut f) = std::fs::OpenOptions::new().create(true).append(true).open(skip_log()) {
        let _ = writeln!(f, "{line}");
    }
}

/// `GET path` over plain HTTP/1.1; the status code and body, or None if nothing answers.
pub fn http_get(addr: &str, path: &str) -> Option<(u16, String)> {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(addr).ok()?;
    s.set_read_timeout(Some(std::time::Duration::from_secs(5))).ok()?;
    write!(s, "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n").ok()?;
    let mut text = String::new();
    s.read_to_string(&mut text).ok()?;
    let status = text.split_whitespace().nth(1)?.parse().ok()?;
    let body = text.split_once("\r\n\r\n").map(|(_, b)| b.to_string()).unwrap_or_default();
    Some((status, body))
}

/// A coordinator process on a loopback port with its results in `out`, appending its log
/// (CBSWEEP_LOG=`level`) to `log`.
pub fn coordinator_logged(state: &Path, out: &Path, port: u16, token: &str, level: &str, log: &Path) -> Proc {
    Proc::spawn(&mut coordinator_command(state, out, port, token, level, log))
}

/// The command `coordinator_logged` runs, for a caller to add to (a `Faketime`).
pub fn coordinator_command(state: &Path, out: &Path, port: u16, token: &str, level: &str, log: &Path) -> Command {
    let log = std::fs::OpenOptions::new().create(true).append(true).open(log).expect("coordinator log");
    let mut cmd = Command::new(bin("cbsweep"));
    cmd.args(["coordinator", "--listen", &format!("127.0.0.1:{port}")])
        .args(["--state", state.to_str().expect("utf-8 path"), "--out", out.to_str().expect("utf-8 path")])
        .env("CBSWEEP_TOKEN", token)
        .env("CBSWEEP_LOG", level)
        .stdout(std::process::Stdio::null())
        .stderr(log);
    cmd
}

/// A wall clock a test can step for the processes it starts with `apply`: Debian's libfaketime,
/// preloaded, reads the offset from a file on every call (the monotonic clock stays true, as a
/// step of the system clock leaves it).
pub struct Faketime {
    lib: PathBuf,
    offset_file: PathBuf,
}

impl Faketime {
    /// A clock at the true time, its offset kept in a file under `dir`; or why libfaketime is
    /// not here (`scripts/cluster-setup.sh` installs it).
    pub fn new(dir: &Path) -> Result<Faketime, String> {
        let lib = std::fs::read_dir("/usr/lib")
            .map_err(|e| format!("cannot read /usr/lib: {e}"))?
            .flatten()
            .map(|d| d.path().join("faketime/libfaketime.so.1"))
            .find(|p| p.is_file())
            .ok_or("libfaketime is not installed (Debian's libfaketime: /usr/lib/*/faketime/libfaketime.so.1)")?;
        let t = Faketime { lib, offset_file: dir.join("faketime-offset") };
        t.step("+0");
        Ok(t)
    }

    /// Makes `cmd`'s process read its wall clock through this one.
    pub fn apply<'a>(&self, cmd: &'a mut Command) -> &'a mut Command {
        cmd.env("LD_PRELOAD", &self.lib)
            .env("FAKETIME_TIMESTAMP_FILE", &self.offset_file)
            .env("FAKETIME_NO_CACHE", "1")
            .env("FAKETIME_DONT_FAKE_MONOTONIC", "1")
    }

    /// Sets the offset from the true time, in libfaketime's syntax ("-1h", "+2h", "+0").
    pub fn step(&self, offset: &str) {
        std::fs::write(&self.offset_file, format!("{offset}\n")).expect("faketime offset file");
    }
}

/// A reader holding a read transaction on the state database `db` (as an export or a backup
/// would), so that SQLite cannot start its WAL over and every write needs new room; it holds
/// until killed. Returns once the transaction is open.
pub fn pin_wal(db: &Path) -> Proc {
    let script = format!(
        "import sqlite3, time\nc = sqlite3.connect({db:?}, isolation_level=None)\nc.execute('BEGIN')\n\
         c.execute('SELECT count(*) FROM trials').fetchall()\nprint('reading', flush=True)\ntime.sleep(600)"
    );
    let mut reader = Proc::spawn(Command::new(python()).arg("-c").arg(script).stdout(std::process::Stdio::piped()));
    let mut line = String::new();
    let stdout = reader.0.stdout.take().expect("the reader's stdout");
    std::io::BufRead::read_line(&mut std::io::BufReader::new(stdout), &mut line).expect("the reader's first line");
    assert_eq!(line.trim(), "reading", "a reader holds the WAL of {}", db.display());
    reader
}

/// A self-signed certificate STEM.pem with its key STEM.key, for the common name `cn`, made
/// with the openssl binary in `dir` (a test CA, or a stranger's certificate).
pub fn self_signed(dir: &Path, stem: &str, cn: &str) {
    let (key, pem, subject) = (format!("{stem}.key"), format!("{stem}.pem"), format!("/CN={cn}"));
    openssl(dir, &["req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", &key, "-out", &pem, "-days", "2", "-subj", &subject]);
}

fn openssl(dir: &Path, args: &[&str]) {
    let o = Command::new("openssl").args(args).current_dir(dir).output().expect("openssl runs");
    assert!(o.status.success(), "openssl {args:?}: {}", String::from_utf8_lossy(&o.stderr));
}

/// A test CA (ca.pem, ca.key) and a certificate for 127.0.0.1 and localhost signed by it
/// (server.pem, server.key), made with the openssl binary in `dir`.
pub fn certificates(dir: &Path) {
    self_signed(dir, "ca", "cbsweep test CA");
    openssl(dir, &["req", "-newkey", "rsa:2048", "-nodes", "-keyout", "server.key", "-out", "server.csr", "-subj", "/CN=127.0.0.1"]);
    std::fs::write(dir.join("ext.cnf"), "subjectAltName=IP:127.0.0.1,DNS:localhost\nbasicConstraints=CA:FALSE\nkeyUsage=digitalSignature,keyEncipherment\nextendedKeyUsage=serverAuth\n").unwrap();
    openssl(
        dir,
        &[
            "x509",
            "-req",
            "-in",
            "server.csr",
            "-CA",
            "ca.pem",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-out",
            "server.pem",
            "-days",
            "2",
            "-extfile",
            "ext.cnf",
        ],
    );
}

/// A tmpfs mounted at a folder (as root), unmounted when dropped: a small disk to fill.
pub struct Tmpfs(pub PathBuf);

impl Tmpfs {
    /// A tmpfs of `size` (mount's syntax: 4m) at `dir`, or why it cannot be mounted.
    pub fn mount(dir: &Path, size: &str) -> Result<Tmpfs, String> {
        if !is_root() {
            return Err("not root (mounting a tmpfs needs root)".into());
        }
        std::fs::create_dir_all(dir).map_err(|e| format!("cannot make {}: {e}", dir.display()))?;
        let o = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(dir)
            .output()
            .map_err(|e| format!("cannot run mount: {e}"))?;
        if !o.status.success() {
            return Err(format!("cannot mount a tmpfs at {}: {}", dir.display(), String::from_utf8_lossy(&o.stderr).trim()));
        }
        Ok(Tmpfs(dir.to_owned()))
    }

    /// Remounts it read-only (`read_only`) or read-write again.
    pub fn remount(&self, read_only: bool) {
        let how = if read_only { "remount,ro" } else { "remount,rw" };
        let o = Command::new("mount").args(["-o", how]).arg(&self.0).output().expect("mount runs");
        assert!(o.status.success(), "mount -o {how} {}: {}", self.0.display(), String::from_utf8_lossy(&o.stderr));
    }

    /// Fills the mount to the last byte with a file FILLER; returns its path.
    pub fn fill(&self) -> PathBuf {
        use std::io::Write;
        let path = self.0.join("FILLER");
        let mut f = std::fs::File::create(&path).expect("filler");
        let block = vec![7u8; 4096];
        while f.write_all(&block).is_ok() {}
        let _ = f.flush();
        path
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
    }
}
