//! Helpers: run the binary, poll with a bound, ask outside clients.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

/// The `sluice` binary built next to this test binary.
pub fn sluice_bin() -> PathBuf {
    let exe = std::env::current_exe().expect("test binary path");
    let dir = exe
        .parent()
        .and_then(Path::parent)
        .expect("target profile dir");
    let bin = dir.join("sluice");
    assert!(
        bin.exists(),
        "{} is missing: build it first (integration-tests/run.sh does: cargo build -p runtime --bin sluice)",
        bin.display()
    );
    bin
}

/// The repository root.
pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("repo root")
        .to_path_buf()
}

/// A finished run of the binary.
pub struct Run {
    pub code: Option<i32>,
    pub stdout: String,
    pub stderr: String,
}

impl From<Output> for Run {
    fn from(o: Output) -> Self {
        Run {
            code: o.status.code(),
            stdout: String::from_utf8_lossy(&o.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&o.stderr).into_owned(),
        }
    }
}

fn command(dir: &Path, args: &[&str]) -> Command {
    let mut c = Command::new(sluice_bin());
    c.args(args)
        .current_dir(dir)
        .env_remove("RUST_LOG")
        .stdin(Stdio::null());
    c
}

/// Runs `sluice ARGS` in `dir` to the end.
pub fn sluice(dir: &Path, args: &[&str]) -> Run {
    command(dir, args).output().expect("run sluice").into()
}

/// Starts `sluice ARGS` in `dir`.
pub fn spawn(dir: &Path, args: &[&str]) -> Child {
    command(dir, args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn sluice")
}

/// Starts `sluice ARGS` in `dir` with extra environment variables.
pub fn command_with_env(dir: &Path, args: &[&str], env: &[(&str, &str)]) -> Child {
    let mut c = command(dir, args);
    c.envs(env.iter().copied())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn sluice")
}

/// Kills the process `pid` with SIGKILL if the test panics while the guard lives, so
/// that a failed test leaves no run behind to hold locks and ports of the next one.
pub struct KillOnPanic(pub u32);

impl Drop for KillOnPanic {
    fn drop(&mut self) {
        if std::thread::panicking() {
            let _ = Command::new("kill")
                .args(["-KILL", &self.0.to_string()])
                .status();
        }
    }
}

/// Polls `check` every 50 ms until it holds or `limit` passes.
pub fn wait_until(limit: Duration, mut check: impl FnMut() -> bool) -> bool {
    let start = Instant::now();
    while start.elapsed() < limit {
        if check() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    check()
}

/// Runs SQL through the sqlite3 command-line client, waiting (up to 10 s) while a
/// running pipeline holds the database's write lock.
pub fn sqlite(db: &Path, sql: &str) -> String {
    let out = Command::new("sqlite3")
        .args(["-cmd", ".timeout 10000"])
        .arg(db)
        .arg(sql)
        .output()
        .expect("sqlite3 client (apt-get install sqlite3)");
    assert!(
        out.status.success(),
        "sqlite3 failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// Runs a Python snippet (pyarrow is installed by run.sh); returns stdout.
pub fn python(code: &str) -> String {
    let out = Command::new("python3")
        .arg("-c")
        .arg(code)
        .output()
        .expect("python3");
    assert!(
        out.status.success(),
        "python failed: {}\n{code}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// Sends a signal (`TERM`, `KILL`, `INT`) to a child, with the kill(1) command.
pub fn signal(child: &Child, sig: &str) {
    let status = Command::new("kill")
        .arg(format!("-{sig}"))
        .arg(child.id().to_string())
        .status()
        .expect("kill command");
    assert!(status.success(), "kill -{sig} failed");
}

/// Waits for a child with a bound; kills it if it overruns.
pub fn finish(mut child: Child, limit: Duration) -> Run {
    let start = Instant::now();
    loop {
        if let Some(_status) = child.try_wait().expect("wait") {
            return child.wait_with_output().expect("output").into();
        }
        if start.elapsed() > limit {
            let _ = child.kill();
            let run: Run = child.wait_with_output().expect("output").into();
            panic!(
                "sluice did not exit within {limit:?}\nstderr:\n{}",
                run.stderr
            );
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// A temporary working directory with `configs/` of the repository linked in.
pub fn workdir() -> tempfile::TempDir {
    let dir = tempfile::tempdir().expect("tempdir");
    std::os::unix::fs::symlink(repo_root().join("configs"), dir.path().join("configs"))
        .expect("link configs");
    dir
}

/// Every line of the published (not hidden) `.jsonl` files in `dir`, in file name order.
pub fn jsonl_lines(dir: &Path) -> Vec<String> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut files: Vec<PathBuf> = entries
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|x| x == "jsonl"))
        .filter(|p| {
            !p.file_name()
                .is_some_and(|n| n.to_string_lossy().starts_with('.'))
        })
        .collect();
    files.sort();
    files
        .iter()
        .flat_map(|p| {
            std::fs::read_to_string(p)
                .unwrap_or_default()
                .lines()
                .map(str::to_string)
                .collect::<Vec<_>>()
        })
        .collect()
}

/// The `id` of every JSON line under `dir`, sorted, repeats kept.
pub fn jsonl_ids(dir: &Path) -> Vec<i64> {
    let mut ids: Vec<i64> = jsonl_lines(dir)
        .iter()
        .map(|l| {
            serde_json::from_str::<serde_json::Value>(l).unwrap()["id"]
                .as_i64()
                .unwrap()
        })
        .collect();
    ids.sort();
    ids
}

/// Starts `sluice ARGS` in `dir` `rounds` times and kills each run with SIGKILL once the
/// JSON lines under `out` grew in it (on a loaded machine the first flush can come after
/// any fixed pause), a random moment under 700 ms later: a few flushes at most. Returns
/// the runs' stderr.
pub fn kill_after_flushes(dir: &Path, args: &[&str], out: &Path, rounds: usize) -> String {
    use rand::Rng;
    let mut rng = rand::thread_rng();
    let mut logs = String::new();
    for _ in 0..rounds {
        let before = jsonl_lines(out).len();
        let child = spawn(dir, args);
        let guard = KillOnPanic(child.id());
        wait_until(Duration::from_secs(30), || jsonl_lines(out).len() > before);
        std::thread::sleep(Duration::from_millis(rng.gen_range(0..700)));
        signal(&child, "KILL");
        logs += &finish(child, Duration::from_secs(10)).stderr;
        drop(guard);
    }
    logs
}

/// Starts `sluice ARGS` in `dir` `rounds` times and kills each run with SIGKILL after a
/// random pause in `pause_ms`; returns how many kills hit a process still running.
pub fn kill_at_random(
    dir: &Path,
    args: &[&str],
    rounds: usize,
    pause_ms: std::ops::Range<u64>,
) -> usize {
    use rand::Rng;
    let mut rng = rand::thread_rng();
    let mut killed_mid_run = 0;
    for _ in 0..rounds {
        let mut child = spawn(dir, args);
        std::thread::sleep(Duration::from_millis(rng.gen_range(pause_ms.clone())));
        // `try_wait` reaps: a child that has exited but was not yet waited for is a
        // zombie, which `kill -0` would still report as running
        let exited = child.try_wait().expect("wait").is_some();
        if !exited {
            signal(&child, "KILL");
        }
        let _ = finish(child, Duration::from_secs(10));
        if !exited {
            killed_mid_run += 1;
        }
    }
    killed_mid_run
}
