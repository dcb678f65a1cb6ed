//! A real Redis for the tests that need one (the gateway's shared quota
//! store, the chaos cases): Debian's `redis-server` on loopback, on a port of
//! its own, restartable on the same port, stopped on drop. Never persisted
//! (`--save ""`, no append-only file).

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .unwrap_or_else(|e| panic!("no free loopback port: {e}"))
}

/// A `redis-server` on loopback, restartable on the same port.
pub struct RedisServer {
    child: Option<Child>,
    /// Its port on 127.0.0.1.
    pub port: u16,
    args: Vec<String>,
}

impl RedisServer {
    /// Plain TCP, with `extra` arguments.
    pub fn start(extra: &[&str]) -> Self {
        let port = free_port();
        let mut args: Vec<String> = ["--port", &port.to_string()]
            .iter()
            .map(|s| s.to_string())
            .collect();
        args.extend(extra.iter().map(|s| s.to_string()));
        Self::spawn(port, args)
    }

    /// TLS only (no plain port), with `extra` arguments.
    pub fn start_tls(cert: &Path, key: &Path, ca: &Path, extra: &[&str]) -> Self {
        let port = free_port();
        let mut args: Vec<String> = vec![
            "--port".into(),
            "0".into(),
            "--tls-port".into(),
            port.to_string(),
            "--tls-cert-file".into(),
            cert.display().to_string(),
            "--tls-key-file".into(),
            key.display().to_string(),
            "--tls-ca-cert-file".into(),
            ca.display().to_string(),
            "--tls-auth-clients".into(),
            "no".into(),
        ];
        args.extend(extra.iter().map(|s| s.to_string()));
        Self::spawn(port, args)
    }

    fn spawn(port: u16, args: Vec<String>) -> Self {
        let mut s = RedisServer {
            child: None,
            port,
            args,
        };
        s.restart();
        s
    }

    /// Starts it (again) and waits until it accepts connections.
    pub fn restart(&mut self) {
        assert!(self.child.is_none());
        let child = Command::new("redis-server")
            .args(&self.args)
            .args(["--bind", "127.0.0.1", "--save", "", "--appendonly", "no"])
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap_or_else(|e| {
                panic!("redis-server is required for this test ({e}); scripts/test.sh installs Debian's redis-server")
            });
        self.child = Some(child);
        let t = Instant::now();
        while std::net::TcpStream::connect(("127.0.0.1", self.port)).is_err() {
            assert!(
                t.elapsed() < Duration::from_secs(10),
                "redis-server did not start"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Its URL, plain TCP, database 0.
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/0", self.port)
    }

    /// Sends `signal` (`STOP`, `CONT`) to it.
    pub fn signal(&self, signal: &str) {
        let pid = match &self.child {
            Some(c) => c.id().to_string(),
            None => panic!("redis-server is not running"),
        };
        let status = Command::new("kill")
            .args([&format!("-{signal}"), &pid])
            .status()
            .unwrap_or_else(|e| panic!("kill: {e}"));
        assert!(status.success());
    }

    /// Kills it and waits until its port is closed.
    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.stop();
    }
}
