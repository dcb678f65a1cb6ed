//! The servers under test as child processes, and what `/proc` says about them.
//!
//! Both servers run as separate processes, as they would in production, so
//! their memory and CPU time can be read from `/proc`: resident memory
//! (`VmRSS`, and its peak `VmHWM`) and CPU seconds (`utime + stime`). CPU
//! seconds per image is the figure that survives a noisy, shared machine:
//! other people's builds slow a server down, but do not make it burn more CPU
//! per image.

use std::fs::File;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};

/// A port on 127.0.0.1 that was free a moment ago.
pub fn free_port() -> anyhow::Result<u16> {
    let l = TcpListener::bind("127.0.0.1:0")?;
    Ok(l.local_addr()?.port())
}

/// A server process the benchmark started (stopped on drop).
pub struct Server {
    /// Name in reports.
    pub name: String,
    /// Scoring URL.
    pub score_url: String,
    /// Base URL (no trailing slash).
    pub base_url: String,
    /// The process's log file.
    pub log: PathBuf,
    child: Option<Child>,
}

impl Server {
    /// Starts `cmd` with its output going to `log`.
    pub fn spawn(
        name: &str,
        mut cmd: Command,
        port: u16,
        log: &Path,
        host: &str,
    ) -> anyhow::Result<Server> {
        let out = File::create(log).with_context(|| format!("creating {}", log.display()))?;
        let err = out.try_clone()?;
        cmd.stdin(Stdio::null())
            .stdout(Stdio::from(out))
            .stderr(Stdio::from(err));
        let child = cmd
            .spawn()
            .with_context(|| format!("starting the {name} server"))?;
        let base_url = format!("http://{host}:{port}");
        Ok(Server {
            name: name.to_string(),
            score_url: format!("{base_url}/score"),
            base_url,
            log: log.to_path_buf(),
            child: Some(child),
        })
    }

    /// The process id.
    pub fn pid(&self) -> u32 {
        self.child.as_ref().map_or(0, Child::id)
    }

    /// Fails if the process has exited.
    pub fn check_alive(&mut self) -> anyhow::Result<()> {
        if let Some(c) = self.child.as_mut() {
            if let Some(status) = c.try_wait()? {
                bail!(
                    "the {} server exited ({status}); see {}",
                    self.name,
                    self.log.display()
                );
            }
        }
        Ok(())
    }

    /// Asks the process to stop (SIGTERM), waits, then kills it.
    pub fn stop(&mut self) {
        let Some(mut child) = self.child.take() else {
            return;
        };
        let pid = child.id().to_string();
        let _ = Command::new("kill")
            .args(["-TERM", &pid])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
        let deadline = Instant::now() + Duration::from_secs(15);
        while Instant::now() < deadline {
            if matches!(child.try_wait(), Ok(Some(_))) {
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        let _ = child.kill();
        let _ = child.wait();
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.stop();
    }
}

/// `VmRSS` and `VmHWM` of a process, in bytes.
#[derive(Debug, Clone, Copy, Default)]
pub struct Memory {
    /// Resident now.
    pub rss: u64,
    /// Peak resident since start.
    pub hwm: u64,
}

impl std::ops::Add for Memory {
    type Output = Memory;
    fn add(self, o: Memory) -> Memory {
        Memory {
            rss: self.rss + o.rss,
            hwm: self.hwm + o.hwm,
        }
    }
}

/// Reads `/proc/<pid>/status`.
pub fn memory(pid: u32) -> anyhow::Result<Memory> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let field = |name: &str| -> u64 {
        s.lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|rest| rest.split_whitespace().next())
            .and_then(|kb| kb.parse::<u64>().ok())
            .map_or(0, |kb| kb * 1024)
    };
    Ok(Memory {
        rss: field("VmRSS:"),
        hwm: field("VmHWM:"),
    })
}

/// Threads of a process (`Threads:` in `/proc/<pid>/status`); `None` when
/// the process is gone.
pub fn threads(pid: u32) -> Option<u64> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    s.lines()
        .find_map(|l| l.strip_prefix("Threads:"))
        .and_then(|rest| rest.trim().parse().ok())
}

/// Open file descriptors of a process (entries of `/proc/<pid>/fd`); `None`
/// when the process is gone or not ours to read.
pub fn open_fds(pid: u32) -> Option<usize> {
    Some(std::fs::read_dir(format!("/proc/{pid}/fd")).ok()?.count())
}

/// Fields of `/proc/<pid>/stat` after the command name.
fn stat_fields(pid: u32) -> Option<Vec<String>> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = &s[s.rfind(')')? + 1..];
    Some(rest.split_whitespace().map(str::to_string).collect())
}

/// Clock ticks per second for `/proc` CPU times.
pub fn clock_ticks() -> f64 {
    Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .and_then(|s| s.trim().parse::<f64>().ok())
        .unwrap_or(100.0)
}

/// CPU seconds (user + system) a process has used, its threads included.
pub fn cpu_seconds(pid: u32, ticks: f64) -> f64 {
    stat_fields(pid)
        .and_then(|f| {
            let utime: u64 = f.get(11)?.parse().ok()?;
            let stime: u64 = f.get(12)?.parse().ok()?;
            Some((utime + stime) as f64 / ticks)
        })
        .unwrap_or(0.0)
}

/// The process and all its descendants (gunicorn's master and its workers).
pub fn tree(pid: u32) -> Vec<u32> {
    let mut all: Vec<(u32, u32)> = Vec::new();
    if let Ok(dir) = std::fs::read_dir("/proc") {
        for e in dir.flatten() {
            let Some(p) = e.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) else {
                continue;
            };
            if let Some(ppid) = stat_fields(p).and_then(|f| f.get(1)?.parse::<u32>().ok()) {
                all.push((p, ppid));
            }
        }
    }
    let mut out = vec![pid];
    let mut i = 0;
    while i < out.len() {
        let parent = out[i];
        out.extend(all.iter().filter(|(_, pp)| *pp == parent).map(|(p, _)| *p));
        i += 1;
    }
    out
}

/// Summed CPU seconds of a process tree.
pub fn tree_cpu_seconds(pid: u32, ticks: f64) -> f64 {
    tree(pid).into_iter().map(|p| cpu_seconds(p, ticks)).sum()
}

/// Summed memory of a process tree (shared pages counted once per process).
pub fn tree_memory(pid: u32) -> Memory {
    tree(pid)
        .into_iter()
        .filter_map(|p| memory(p).ok())
        .fold(Memory::default(), |a, b| a + b)
}

/// Busy and total CPU time of the whole machine (`/proc/stat`), in ticks.
pub fn machine_cpu() -> (u64, u64) {
    let Ok(s) = std::fs::read_to_string("/proc/stat") else {
        return (0, 0);
    };
    let Some(line) = s.lines().next() else {
        return (0, 0);
    };
    let v: Vec<u64> = line
        .split_whitespace()
        .skip(1)
        .filter_map(|x| x.parse().ok())
        .collect();
    let total: u64 = v.iter().take(8).sum();
    let idle = v.get(3).copied().unwrap_or(0) + v.get(4).copied().unwrap_or(0);
    (total.saturating_sub(idle), total)
}

/// The machine's one-minute load average.
pub fn load_average() -> f64 {
    std::fs::read_to_string("/proc/loadavg")
        .ok()
        .and_then(|s| s.split_whitespace().next()?.parse().ok())
        .unwrap_or(f64::NAN)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_own_process() {
        let me = std::process::id();
        let m = memory(me).expect("status");
        assert!(m.rss > 0 && m.hwm >= m.rss);
        assert!(tree(me).contains(&me));
        assert!(threads(me).is_some_and(|n| n >= 1));
        assert!(open_fds(me).is_some_and(|n| n >= 1));
        let (busy, total) = machine_cpu();
        assert!(total > 0 && busy <= total);
    }
}
