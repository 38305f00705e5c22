//! A Wine prefix under `target/` that runs the driver, and the commands we run in it.
//!
//! Logging: `DbgPrint` lands in Wine's `warn+debugstr` channel and netio's trace in
//! `trace+netio`. Every Wine process we start (and the services/winedevice processes
//! they spawn, which inherit it) writes its stderr to one log file, so a failure can be
//! diagnosed from `target/e2e/driver.log` alone. The prefix's wineserver is killed
//! when the [`Wine`] value is dropped, also on failure.

use std::fs::{File, OpenOptions};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::artifacts::Artifacts;
use crate::process::{Output, run_captured};
use crate::{Result, root};

/// Name of the driver service.
pub const SERVICE: &str = "WskSend";
/// Name of the kernel-API test driver's service.
pub const CLIENT_SERVICE: &str = "WsksClient";
/// Name of the C kernel-API example driver's service (`examples/kernel-driver`).
pub const C_CLIENT_SERVICE: &str = "WsksClientC";
/// Folder inside the prefix's `C:` drive that holds our binaries.
const INSTALL_DIR: &str = "wsksend";

// `err` stays on except for the display/COM noise of a headless prefix.
const WINEDEBUG: &str = "fixme-all,err-winediag,err-ole,err-systray,warn+debugstr,trace+netio";
const DLL_OVERRIDES: &str = "mscoree,mshtml=;bcryptprimitives=n,b";

/// Limit for one Wine command (prefix creation takes ~10 s on a cold machine).
const COMMAND_LIMIT: Duration = Duration::from_secs(180);

/// Limit for one harness run (a data scenario moves up to 64 MiB through Wine).
const HARNESS_LIMIT: Duration = Duration::from_secs(300);

/// A running Wine prefix.
pub struct Wine {
    prefix: PathBuf,
    log: PathBuf,
    keepalive: Option<std::process::Child>,
}

impl Wine {
    /// Prepares the prefix `target/wine-prefix` (created on first use) with a fresh
    /// wineserver whose processes log to `log`.
    pub fn start(log: &Path) -> Result<Self> {
        let wine = Self {
            prefix: root().join("target").join("wine-prefix"),
            log: log.to_path_buf(),
            keepalive: None,
        };
        wine.kill_server();
        std::fs::create_dir_all(&wine.prefix).map_err(|e| format!("create prefix: {e}"))?;
        let out = wine.run("wineboot", &["-i"])?;
        if !out.success() {
            return Err(format!("wineboot failed (see {})", wine.log.display()));
        }
        Ok(wine)
    }

    fn log_file(&self) -> Result<File> {
        OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .map_err(|e| format!("open {}: {e}", self.log.display()))
    }

    fn command(&self, program: &str) -> Result<Command> {
        let mut cmd = Command::new(program);
        // `WSKSEND_WINEDEBUG=+seh,+relay` adds channels when diagnosing.
        let debug = match std::env::var("WSKSEND_WINEDEBUG") {
            Ok(extra) if !extra.is_empty() => format!("{WINEDEBUG},{extra}"),
            _ => WINEDEBUG.to_string(),
        };
        cmd.env("WINEPREFIX", &self.prefix)
            .env("WINEDEBUG", debug)
            .env("WINEDLLOVERRIDES", DLL_OVERRIDES)
            .env("WINEARCH", "win64")
            .stderr(Stdio::from(self.log_file()?));
        Ok(cmd)
    }

    /// Runs `wine program args..`, stdout captured, stderr to the log.
    pub fn run(&self, program: &str, args: &[&str]) -> Result<Output> {
        self.run_limited(program, args, COMMAND_LIMIT)
    }

    /// As [`Self::run`] with a time limit.
    pub fn run_limited(&self, program: &str, args: &[&str], limit: Duration) -> Result<Output> {
        let mut cmd = self.command("wine")?;
        cmd.arg(program).args(args);
        run_captured(cmd, limit)
    }

    /// Copies the binaries into `C:\wsksend\` and registers the driver as a
    /// demand-start kernel service (replacing any earlier registration).
    pub fn install(&mut self, artifacts: &Artifacts) -> Result {
        let dir = self.prefix.join("drive_c").join(INSTALL_DIR);
        std::fs::create_dir_all(&dir).map_err(|e| format!("create {}: {e}", dir.display()))?;
        for (from, name) in [
            (&artifacts.driver, "wsksend.sys"),
            (&artifacts.client, "wsksclient.sys"),
            (&artifacts.shim, "bcryptprimitives.dll"),
            (&artifacts.harness, "wsksend-harness.exe"),
            (&artifacts.c.driver, "wsksclient_c.sys"),
            (&artifacts.c.client, "wsksend-c-client.exe"),
        ] {
            std::fs::copy(from, dir.join(name))
                .map_err(|e| format!("copy {}: {e}", from.display()))?;
        }
        for (service, image) in [
            (CLIENT_SERVICE, "wsksclient.sys"),
            (C_CLIENT_SERVICE, "wsksclient_c.sys"),
            (SERVICE, "wsksend.sys"),
        ] {
            let _ = self.sc(&["stop", service]);
            let _ = self.sc(&["delete", service]);
            let bin_path = format!("C:\\{INSTALL_DIR}\\{image}");
            // One load-order group: Wine hosts a group's drivers in one winedevice
            // process, so the client's import of wsksend.sys binds to the loaded driver.
            let out = self.sc(&[
                "create", service, "type=", "kernel", "start=", "demand", "group=", "WskSend",
                "binPath=", &bin_path,
            ])?;
            if !out.success() {
                return Err(format!("sc create {service} failed: {}", out.stdout.trim()));
            }
        }
        self.hold()
    }

    /// Keeps one user process running for the whole session: when the last one exits,
    /// Wine shuts its services down — and with them the driver — a few seconds later.
    fn hold(&mut self) -> Result {
        if self.keepalive.is_none() {
            let exe = format!("C:\\{INSTALL_DIR}\\wsksend-harness.exe");
            let mut cmd = self.command("wine")?;
            cmd.arg(exe)
                .arg("hold")
                .stdin(Stdio::null())
                .stdout(Stdio::null());
            let child = cmd
                .spawn()
                .map_err(|e| format!("cannot start keepalive: {e}"))?;
            self.keepalive = Some(child);
        }
        Ok(())
    }

    /// `sc args..`.
    pub fn sc(&self, args: &[&str]) -> Result<Output> {
        self.run("sc", args)
    }

    /// The service state from `sc query` (`RUNNING`, `STOPPED`, ...), if any.
    pub fn service_state(&self) -> Result<Option<String>> {
        let out = self.sc(&["query", SERVICE])?;
        Ok(out
            .stdout
            .lines()
            .find(|l| l.trim_start().starts_with("STATE"))
            .and_then(|l| l.split_whitespace().last())
            .map(str::to_owned))
    }

    /// Runs the harness with `args` (from `C:\wsksend`, beside the shim DLL).
    pub fn harness(&self, args: &[&str]) -> Result<Output> {
        let exe = format!("C:\\{INSTALL_DIR}\\wsksend-harness.exe");
        self.run_limited(&exe, args, HARNESS_LIMIT)
    }

    /// Runs `C:\wsksend\<exe>` with `args`.
    pub fn program(&self, exe: &str, args: &[&str]) -> Result<Output> {
        let exe = format!("C:\\{INSTALL_DIR}\\{exe}");
        self.run_limited(&exe, args, HARNESS_LIMIT)
    }

    /// Waits up to `limit` for `needle` to appear in the log (Wine processes write it
    /// asynchronously).
    pub fn log_contains(&self, needle: &str, limit: Duration) -> bool {
        let start = Instant::now();
        loop {
            let text = std::fs::read(&self.log).unwrap_or_default();
            if String::from_utf8_lossy(&text).contains(needle) {
                return true;
            }
            if start.elapsed() >= limit {
                return false;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    fn kill_server(&self) {
        if let Ok(mut cmd) = self.command("wineserver") {
            cmd.arg("-k").stdout(Stdio::null());
            let _ = run_captured(cmd, Duration::from_secs(30));
        }
    }
}

impl Drop for Wine {
    fn drop(&mut self) {
        self.kill_server();
        if let Some(mut child) = self.keepalive.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}
