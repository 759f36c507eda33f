//! The service manager's readiness protocol (`sd_notify`), and the upgrade
//! the service manager can start.
//!
//! Under systemd with `Type=notify` and `NotifyAccess=all`
//! (`deploy/arqonbus.service`), the node says `READY=1` once it serves and
//! `STOPPING=1` when it lame-ducks. SIGUSR2 makes it start its own binary
//! again with `--take-over` ([`respawn`]): the new process, in the unit's
//! cgroup, takes the node over ([`crate::handover`]) and names itself the
//! main process (`MAINPID=`), so the unit follows it when the old one exits.
//!
//! Invariants: without `NOTIFY_SOCKET` nothing is sent; a failed send is
//! logged, never fatal; no secret or payload is ever in a notification.

use std::os::linux::net::SocketAddrExt as _;
use std::os::unix::net::{SocketAddr, UnixDatagram};
use std::path::PathBuf;
use std::process::{Command, Stdio};

/// Sends `state` (newline-separated `KEY=VALUE` lines) to the service
/// manager, when there is one.
pub fn notify(state: &str) {
    let Some(socket) = std::env::var_os("NOTIFY_SOCKET") else {
        return;
    };
    if let Err(e) = notify_to(&socket.to_string_lossy(), state) {
        tracing::warn!(error = %e, "cannot notify the service manager");
    }
}

/// Sends `state` to the socket named `socket`: a path, or `@name` for an
/// abstract socket.
pub fn notify_to(socket: &str, state: &str) -> std::io::Result<()> {
    let addr = match socket.strip_prefix('@') {
        Some(name) => SocketAddr::from_abstract_name(name.as_bytes())?,
        None => SocketAddr::from_pathname(socket)?,
    };
    let sock = UnixDatagram::unbound()?;
    sock.send_to_addr(state.as_bytes(), &addr)?;
    Ok(())
}

/// What this node serves: the readiness line with this process as the main
/// one (after a take-over, the unit follows it from now on).
pub fn ready() {
    notify(&format!(
        "READY=1\nMAINPID={}\nSTATUS=serving",
        std::process::id()
    ));
}

/// How to start this binary again, taking this node over: captured at
/// start, before a package upgrade replaces the file on disk.
#[derive(Debug, Clone)]
pub struct Respawn {
    exe: PathBuf,
    args: Vec<std::ffi::OsString>,
}

impl Respawn {
    /// This process's binary path and arguments (with `--take-over` added,
    /// `--recreate-missing` removed).
    pub fn capture() -> std::io::Result<Self> {
        let exe = std::env::current_exe()?;
        // The new process re-creates nothing: the node is initialised.
        let mut args: Vec<_> = std::env::args_os()
            .skip(1)
            .filter(|a| a != "--recreate-missing")
            .collect();
        if !args.iter().any(|a| a == "--take-over") {
            args.push("--take-over".into());
        }
        Ok(Self { exe, args })
    }

    /// The command line, for the log.
    pub fn describe(&self) -> String {
        let mut line = self.exe.display().to_string();
        for a in &self.args {
            line.push(' ');
            line.push_str(&a.to_string_lossy());
        }
        line
    }
}

/// Starts the binary at `how.exe` (the file there now: the new version
/// after a package upgrade) with `--take-over`. A thread reaps it and logs
/// how it ended if it ends while this node runs (a refused or failed
/// take-over).
pub fn respawn(how: &Respawn) -> std::io::Result<u32> {
    let mut child = Command::new(&how.exe)
        .args(&how.args)
        .stdin(Stdio::null())
        .spawn()?;
    let pid = child.id();
    std::thread::Builder::new()
        .name("arqonbus-upgrade".into())
        .spawn(move || match child.wait() {
            Ok(status) if status.success() => {
                tracing::info!(pid, "upgrade: the new process exited 0");
            }
            Ok(status) => {
                tracing::warn!(pid, %status, "upgrade: the new process did not take over; serving on");
            }
            Err(e) => tracing::warn!(pid, error = %e, "upgrade: cannot wait for the new process"),
        })?;
    Ok(pid)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_state_reaches_a_path_socket_and_an_abstract_one() -> std::io::Result<()> {
        let dir = tempfile::tempdir()?;
        let path = dir.path().join("notify");
        let listener = UnixDatagram::bind(&path)?;
        notify_to(&path.to_string_lossy(), "READY=1\nMAINPID=42")?;
        let mut buf = [0u8; 64];
        let n = listener.recv(&mut buf)?;
        assert_eq!(&buf[..n], b"READY=1\nMAINPID=42");

        let name = format!("arqonbus-notify-test-{}", std::process::id());
        let abstract_sock =
            UnixDatagram::bind_addr(&SocketAddr::from_abstract_name(name.as_bytes())?)?;
        notify_to(&format!("@{name}"), "STOPPING=1")?;
        let n = abstract_sock.recv(&mut buf)?;
        assert_eq!(&buf[..n], b"STOPPING=1");
        Ok(())
    }

    #[test]
    fn the_respawn_takes_over_once() -> std::io::Result<()> {
        let how = Respawn::capture()?;
        let line = how.describe();
        assert!(line.ends_with("--take-over"), "{line}");
        assert_eq!(line.matches("--take-over").count(), 1);
        Ok(())
    }
}
