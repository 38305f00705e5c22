//! Running commands: with a time limit, output captured or streamed.

use std::io::Read;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::Result;

/// What a finished command left behind.
pub struct Output {
    /// Exit code (`None` if killed by a signal or by the time limit).
    pub code: Option<i32>,
    /// Everything it printed on stdout.
    pub stdout: String,
    /// Whether the time limit killed it.
    pub timed_out: bool,
}

impl Output {
    /// Exit code 0 within the time limit.
    pub fn success(&self) -> bool {
        self.code == Some(0) && !self.timed_out
    }
}

/// Runs `cmd` with stdout captured (stderr as configured by the caller), killing it after
/// `limit`.
pub fn run_captured(mut cmd: Command, limit: Duration) -> Result<Output> {
    cmd.stdout(Stdio::piped()).stdin(Stdio::null());
    let program = format!("{:?}", cmd.get_program());
    let mut child = cmd
        .spawn()
        .map_err(|e| format!("cannot start {program}: {e}"))?;
    let mut stdout = child.stdout.take().expect("stdout is piped");
    let reader = std::thread::spawn(move || {
        let mut text = String::new();
        let _ = stdout.read_to_string(&mut text);
        text
    });
    let (code, timed_out) = wait_with_limit(&mut child, limit);
    let stdout = reader.join().unwrap_or_default();
    Ok(Output {
        code,
        stdout,
        timed_out,
    })
}

fn wait_with_limit(child: &mut Child, limit: Duration) -> (Option<i32>, bool) {
    let start = Instant::now();
    loop {
        match child.try_wait() {
            Ok(Some(status)) => return (status.code(), false),
            Ok(None) if start.elapsed() < limit => std::thread::sleep(Duration::from_millis(50)),
            _ => {
                let _ = child.kill();
                let _ = child.wait();
                return (None, true);
            }
        }
    }
}

/// Runs `cargo` in the workspace root with output shown, failing on a non-zero exit.
pub fn cargo(args: &[&str], env: &[(&str, &str)]) -> Result {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let status = Command::new(cargo)
        .args(args)
        .envs(env.iter().copied())
        .current_dir(crate::root())
        .status()
        .map_err(|e| format!("cannot run cargo: {e}"))?;
    if status.success() {
        Ok(())
    } else {
        Err(format!("cargo {} exited with {status}", args.join(" ")))
    }
}

/// Whether `program` is on `PATH`.
pub fn on_path(program: &str) -> bool {
    std::env::var_os("PATH").is_some_and(|paths| {
        std::env::split_paths(&paths).any(|dir| is_executable(&dir.join(program)))
    })
}

fn is_executable(path: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    path.metadata()
        .is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}
