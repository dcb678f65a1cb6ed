//! Spawning and signalling container processes.
//!
//! All processes are spawned from one dedicated thread, each in its own
//! process group and, when `setpriv` is available, with a parent-death signal
//! (`setpriv --pdeathsig KILL`): the signal fires when the *spawning thread*
//! exits, which is this thread, which exits when the agent is dropped or the
//! test process dies. So no pod process outlives its test.

use std::path::Path;
use std::sync::mpsc;

use nix::sys::signal::{killpg, Signal};
use nix::unistd::Pid;
use tokio::process::{Child, Command};
use tokio::sync::oneshot;

use crate::{Error, Result};

type Request = (Command, oneshot::Sender<std::io::Result<Child>>);

/// Hands commands to the spawning thread.
pub(crate) struct Spawner {
    tx: mpsc::Sender<Request>,
    setpriv: bool,
}

impl Spawner {
    /// Starts the spawning thread (it enters the current tokio runtime, so the
    /// children are reaped by it).
    pub(crate) fn new() -> Result<Self> {
        let handle = tokio::runtime::Handle::current();
        let (tx, rx) = mpsc::channel::<Request>();
        std::thread::Builder::new()
            .name("medembed-spawner".into())
            .spawn(move || {
                let _guard = handle.enter();
                while let Ok((mut cmd, reply)) = rx.recv() {
                    let _ = reply.send(cmd.spawn());
                }
            })
            .map_err(|e| Error::io("starting the spawner thread", e))?;
        let setpriv = Path::new("/usr/bin/setpriv").exists();
        Ok(Spawner { tx, setpriv })
    }

    /// A command for `program`, wrapped in `setpriv --pdeathsig KILL` when
    /// possible, in a new process group.
    pub(crate) fn command(&self, program: &Path) -> Command {
        let mut cmd = if self.setpriv {
            let mut c = Command::new("/usr/bin/setpriv");
            c.arg("--pdeathsig").arg("KILL").arg("--").arg(program);
            c
        } else {
            Command::new(program)
        };
        cmd.process_group(0).kill_on_drop(true);
        cmd
    }

    /// Spawns `cmd` on the spawning thread.
    pub(crate) async fn spawn(&self, cmd: Command) -> std::io::Result<Child> {
        let (reply, rx) = oneshot::channel();
        self.tx
            .send((cmd, reply))
            .map_err(|_| std::io::Error::other("spawner thread is gone"))?;
        rx.await
            .map_err(|_| std::io::Error::other("spawner thread is gone"))?
    }
}

/// Sends `signal` to the process group `pgid` (ignoring a group already gone).
pub(crate) fn signal_group(pgid: u32, signal: Signal) {
    if let Ok(raw) = i32::try_from(pgid) {
        if raw > 1 {
            let _ = killpg(Pid::from_raw(raw), signal);
        }
    }
}
