//! System prerequisites: Wine 8 (`wine64`), the mingw-w64 linker for the harness (and its
//! C and C++ compilers for the C examples and the header checks), and
//! the two Windows Rust targets.

use std::process::Command;

use crate::Result;
use crate::process::on_path;

/// Debian packages and the program each provides (`wine` comes from the `wine` package,
/// which `wine64` only recommends, so both are named).
const PACKAGES: &[(&str, &str)] = &[
    ("wine", "wine"),
    ("wineserver", "wine"),
    ("x86_64-w64-mingw32-gcc", "gcc-mingw-w64-x86-64"),
    // The C++ check of the C headers (xtask/src/headers.rs).
    ("x86_64-w64-mingw32-g++", "g++-mingw-w64-x86-64"),
];

/// The 64-bit Wine loader (package `wine64`), which the `wine` command needs for our images.
const WINE64_LOADER: &str = "/usr/lib/wine/wine64";

/// Rust targets the Windows binaries need (also listed in rust-toolchain.toml).
const TARGETS: &[&str] = &["x86_64-pc-windows-msvc", "x86_64-pc-windows-gnu"];

/// Makes sure everything is installed, installing with apt when running as root.
pub fn ensure() -> Result {
    let mut missing: Vec<&str> = PACKAGES
        .iter()
        .filter(|(program, _)| !on_path(program))
        .map(|&(_, package)| package)
        .collect();
    if !std::path::Path::new(WINE64_LOADER).exists() {
        missing.push("wine64");
    }
    missing.sort_unstable();
    missing.dedup();
    if !missing.is_empty() {
        install(&missing)?;
    }
    ensure_targets()
}

/// Installs Debian `packages` with apt when running as root; otherwise fails with the
/// command to run.
pub fn install(packages: &[&str]) -> Result {
    let command = format!(
        "apt-get update && apt-get install -y {}",
        packages.join(" ")
    );
    if !is_root() || !on_path("apt-get") {
        return Err(format!(
            "missing system packages {packages:?}; install them with:\n    sudo sh -c '{command}'"
        ));
    }
    eprintln!("xtask: installing {packages:?} with apt-get");
    let status = Command::new("sh")
        .args(["-c", &command])
        .env("DEBIAN_FRONTEND", "noninteractive")
        .status()
        .map_err(|e| format!("cannot run apt-get: {e}"))?;
    if !status.success() {
        return Err(format!("`{command}` failed ({status})"));
    }
    Ok(())
}

fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
}

fn ensure_targets() -> Result {
    let installed = Command::new("rustup")
        .args(["target", "list", "--installed"])
        .current_dir(crate::root())
        .output()
        .map_err(|e| format!("cannot run rustup: {e}"))?;
    let installed = String::from_utf8_lossy(&installed.stdout);
    let missing: Vec<&str> = TARGETS
        .iter()
        .copied()
        .filter(|t| !installed.lines().any(|l| l.trim() == *t))
        .collect();
    if missing.is_empty() {
        return Ok(());
    }
    eprintln!("xtask: adding Rust targets {missing:?}");
    let status = Command::new("rustup")
        .args(["target", "add"])
        .args(&missing)
        .current_dir(crate::root())
        .status()
        .map_err(|e| format!("cannot run rustup: {e}"))?;
    if status.success() {
        Ok(())
    } else {
        Err(format!("`rustup target add {}` failed", missing.join(" ")))
    }
}
