//! [`ProcessGuard`]: a child process that is killed, with its whole process group, when dropped.

use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use tempfile::NamedTempFile;

/// How many trailing bytes of a service log are shown on failure.
const LOG_TAIL_BYTES: u64 = 64 * 1024;

/// A running service process owned by a test.
///
/// The child runs in its own process group with stdout and stderr appended to a temporary log file.
/// Dropping the guard sends SIGKILL to the group (so grandchildren die too) and reaps the child; if
/// the thread is panicking (a failed assertion) the log tail is printed to stderr first, so the
/// failure shows what the service said. Set `KAPSULE_RIG_SHOW_LOGS=1` to always print it.
pub struct ProcessGuard {
    name: String,
    child: Option<Child>,
    log: NamedTempFile,
}

impl std::fmt::Debug for ProcessGuard {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ProcessGuard")
            .field("name", &self.name)
            .field("pid", &self.child.as_ref().map(Child::id))
            .field("log", &self.log.path())
            .finish()
    }
}

impl ProcessGuard {
    /// Spawns `cmd` as `name` (used in messages), in a new process group, stdin closed, output
    /// captured to a fresh temporary log file.
    pub fn spawn(name: &str, mut cmd: Command) -> Result<Self> {
        let log = tempfile::Builder::new()
            .prefix(&format!("kapsule-rig-{name}-"))
            .suffix(".log")
            .tempfile()
            .context("creating a temporary log file")?;
        let out = log.reopen().context("opening the log file for stdout")?;
        let err = log.reopen().context("opening the log file for stderr")?;
        cmd.stdin(Stdio::null())
            .stdout(Stdio::from(out))
            .stderr(Stdio::from(err))
            .process_group(0);
        let child = cmd
            .spawn()
            .with_context(|| format!("starting {name}: {cmd:?}"))?;
        Ok(Self {
            name: name.to_owned(),
            child: Some(child),
            log,
        })
    }

    /// The service name given to [`ProcessGuard::spawn`].
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The child's process id, or `None` once it has been killed and reaped.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// Path of the log file holding the child's stdout and stderr.
    pub fn log_path(&self) -> &Path {
        self.log.path()
    }

    /// The last 64 KiB of the child's output, lossily decoded.
    pub fn logs(&self) -> String {
        read_tail(self.log.path(), LOG_TAIL_BYTES)
    }

    /// `Some(status)` if the child has exited (it is then reaped), `None` while it runs or after
    /// [`ProcessGuard::kill`].
    pub fn exit_status(&mut self) -> Option<ExitStatus> {
        self.child
            .as_mut()
            .and_then(|c| c.try_wait().ok().flatten())
    }

    /// Fails with the exit status and the log tail if the child is no longer running.
    pub fn ensure_running(&mut self) -> Result<()> {
        match self.child.as_mut() {
            None => anyhow::bail!("{} was stopped by the test", self.name),
            Some(c) => match c.try_wait().context("checking the child")? {
                None => Ok(()),
                Some(status) => anyhow::bail!(
                    "{} exited unexpectedly with {status}; its log ({}):\n{}",
                    self.name,
                    self.log.path().display(),
                    self.logs()
                ),
            },
        }
    }

    /// Sends SIGTERM to the process group, waits up to `grace` for the child to exit, then SIGKILLs
    /// the group. Returns the exit status.
    pub fn terminate(&mut self, grace: Duration) -> Option<ExitStatus> {
        let child = self.child.as_mut()?;
        signal_group(child.id(), rustix::process::Signal::TERM);
        let deadline = Instant::now() + grace;
        while Instant::now() < deadline {
            if let Ok(Some(status)) = child.try_wait() {
                // Grandchildren may linger; the group kill below is harmless if they are gone.
                signal_group(child.id(), rustix::process::Signal::KILL);
                self.child = None;
                return Some(status);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        self.kill()
    }

    /// SIGKILLs the process group and reaps the child. Idempotent.
    pub fn kill(&mut self) -> Option<ExitStatus> {
        let mut child = self.child.take()?;
        signal_group(child.id(), rustix::process::Signal::KILL);
        let _ = child.kill();
        child.wait().ok()
    }
}

impl Drop for ProcessGuard {
    fn drop(&mut self) {
        let show = std::thread::panicking()
            || std::env::var_os("KAPSULE_RIG_SHOW_LOGS").is_some_and(|v| v == "1");
        self.kill();
        if show {
            eprintln!(
                "----- {} log ({}) -----\n{}\n----- end of {} log -----",
                self.name,
                self.log.path().display(),
                self.logs(),
                self.name
            );
        }
    }
}

fn signal_group(pid: u32, signal: rustix::process::Signal) {
    let pgid = i32::try_from(pid)
        .ok()
        .and_then(rustix::process::Pid::from_raw);
    if let Some(pgid) = pgid {
        // ESRCH (already gone) is fine: the goal is that nothing of the group survives.
        let _ = rustix::process::kill_process_group(pgid, signal);
    }
}

/// Reads up to `max` trailing bytes of the file at `path`, lossily decoded.
pub fn read_tail(path: &Path, max: u64) -> String {
    let mut file = match File::open(path) {
        Ok(f) => f,
        Err(e) => return format!("<cannot read {}: {e}>", path.display()),
    };
    let len = file.metadata().map(|m| m.len()).unwrap_or(0);
    let start = len.saturating_sub(max);
    if file.seek(SeekFrom::Start(start)).is_err() {
        return String::new();
    }
    let mut buf = Vec::new();
    let _ = file.read_to_end(&mut buf);
    let text = String::from_utf8_lossy(&buf).into_owned();
    if start > 0 {
        format!("<... {start} earlier bytes omitted ...>\n{text}")
    } else {
        text
    }
}

/// Freezes process `pid` (SIGSTOP): its sockets accept connections but nothing answers, as with
/// a hung server. Returns once every thread is stopped (signal delivery is asynchronous).
pub fn freeze(pid: u32) -> Result<()> {
    let target = rustix::process::Pid::from_raw(pid as i32).context("pid 0")?;
    rustix::process::kill_process(target, rustix::process::Signal::STOP)
        .with_context(|| format!("SIGSTOP to {pid}"))?;
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let all_stopped = std::fs::read_dir(format!("/proc/{pid}/task"))
            .map(|tasks| {
                tasks.flatten().all(|t| {
                    std::fs::read_to_string(t.path().join("status"))
                        .map(|s| {
                            s.lines()
                                .any(|l| l.split_whitespace().take(2).eq(["State:", "T"]))
                        })
                        .unwrap_or(true)
                })
            })
            .unwrap_or(true);
        if all_stopped {
            return Ok(());
        }
        anyhow::ensure!(
            Instant::now() < deadline,
            "process {pid} did not stop within 10 s"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Lets a process stopped by [`freeze`] run again (SIGCONT).
pub fn thaw(pid: u32) -> Result<()> {
    let target = rustix::process::Pid::from_raw(pid as i32).context("pid 0")?;
    rustix::process::kill_process(target, rustix::process::Signal::CONT)
        .with_context(|| format!("SIGCONT to {pid}"))
}

/// Locates an executable: `env_var` if set, else `name` on `PATH`, else `~/.cargo/bin/<name>`.
pub fn find_executable(env_var: &str, name: &str) -> Result<PathBuf> {
    if let Some(path) = std::env::var_os(env_var) {
        let path = PathBuf::from(path);
        anyhow::ensure!(
            path.is_file(),
            "{env_var}={} does not name a file",
            path.display()
        );
        return Ok(path);
    }
    let mut candidates: Vec<PathBuf> = std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).map(|d| d.join(name)).collect())
        .unwrap_or_default();
    if let Some(home) = std::env::var_os("HOME") {
        candidates.push(PathBuf::from(home).join(".cargo/bin").join(name));
    }
    candidates
        .into_iter()
        .find(|p| p.is_file())
        .with_context(|| {
            format!("`{name}` not found on PATH or in ~/.cargo/bin; run scripts/install-deps.sh or set {env_var}")
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn drop_kills_the_whole_group_and_keeps_output() {
        let mut cmd = Command::new("sh");
        // The background sleep is a grandchild: the group kill must reach it too.
        cmd.args(["-c", "echo hello-from-child; sleep 300 & echo $! ; wait"]);
        let guard = ProcessGuard::spawn("sh", cmd).unwrap();
        let log = guard.log_path().to_owned();
        let deadline = Instant::now() + Duration::from_secs(5);
        let grandchild = loop {
            let text = std::fs::read_to_string(&log).unwrap();
            if let Some(pid) = text
                .lines()
                .nth(1)
                .and_then(|l| l.trim().parse::<u32>().ok())
            {
                assert!(text.starts_with("hello-from-child"));
                break pid;
            }
            assert!(Instant::now() < deadline, "child never wrote its output");
            std::thread::sleep(Duration::from_millis(20));
        };
        drop(guard);
        let deadline = Instant::now() + Duration::from_secs(5);
        while Path::new(&format!("/proc/{grandchild}")).exists()
            && std::fs::read_to_string(format!("/proc/{grandchild}/stat"))
                .map(|s| !s.contains(") Z "))
                .unwrap_or(false)
        {
            assert!(
                Instant::now() < deadline,
                "grandchild {grandchild} survived the guard"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    #[test]
    fn ensure_running_reports_exit_and_log() {
        let mut cmd = Command::new("sh");
        cmd.args(["-c", "echo boom >&2; exit 3"]);
        let mut guard = ProcessGuard::spawn("failing", cmd).unwrap();
        let deadline = Instant::now() + Duration::from_secs(5);
        while guard.ensure_running().is_ok() {
            assert!(Instant::now() < deadline);
            std::thread::sleep(Duration::from_millis(10));
        }
        let msg = format!("{:#}", guard.ensure_running().unwrap_err());
        assert!(msg.contains("boom"), "{msg}");
    }
}
