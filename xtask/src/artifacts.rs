//! Builds the Windows binaries on Linux.
//!
//! - the WDM driver image and the `ProcessPrng` shim for `x86_64-pc-windows-msvc`, linked
//!   by `rust-lld` (the flags that make a `.sys` are in `crates/wdm/build.rs`);
//! - the harness `.exe` for `x86_64-pc-windows-gnu`, linked by mingw-w64.

use std::path::PathBuf;

use crate::{Result, process, root};

/// Paths of the built binaries.
pub struct Artifacts {
    /// The driver image (`wsksend.sys`).
    pub driver: PathBuf,
    /// The kernel-API test driver (`wsksclient.sys`), which imports from `wsksend.sys`.
    pub client: PathBuf,
    /// `bcryptprimitives.dll`, placed beside the harness under Wine.
    pub shim: PathBuf,
    /// `wsksend-harness.exe`.
    pub harness: PathBuf,
    /// The C examples (`examples/`): a kernel driver and a user-mode client.
    pub c: crate::examples::Examples,
}

/// Target of the driver image and the shim.
pub const MSVC: &str = "x86_64-pc-windows-msvc";
/// Target of the harness `.exe`.
pub const GNU: &str = "x86_64-pc-windows-gnu";

/// Builds them all (release profile) and the C examples, and returns where they are.
pub fn build() -> Result<Artifacts> {
    process::cargo(
        &[
            "build",
            "--release",
            "--target",
            MSVC,
            "-p",
            "wsksend-wdm",
            "-p",
            "wsksend-kapi-client",
            "-p",
            "wsksend-prng-shim",
        ],
        &[
            ("CARGO_TARGET_X86_64_PC_WINDOWS_MSVC_LINKER", "rust-lld"),
            (
                "CARGO_TARGET_X86_64_PC_WINDOWS_MSVC_RUSTFLAGS",
                "-C target-feature=+crt-static",
            ),
        ],
    )?;
    process::cargo(
        &[
            "build",
            "--release",
            "--target",
            GNU,
            "-p",
            "wsksend-harness",
        ],
        &[(
            "CARGO_TARGET_X86_64_PC_WINDOWS_GNU_LINKER",
            "x86_64-w64-mingw32-gcc",
        )],
    )?;
    let out = root().join("target").join(MSVC).join("release");
    let target = root().join("target");
    let copy = |from: &str, to: &str| -> Result<PathBuf> {
        let dest = out.join(to);
        std::fs::copy(out.join(from), &dest).map_err(|e| format!("copy {from}: {e}"))?;
        Ok(dest)
    };
    let driver = copy("wsksend_wdm.dll", "wsksend.sys")?;
    let c = crate::examples::build(&driver)?;
    Ok(Artifacts {
        driver,
        client: copy("wsksend_kapi_client.dll", "wsksclient.sys")?,
        shim: target
            .join(MSVC)
            .join("release")
            .join("bcryptprimitives.dll"),
        harness: target.join(GNU).join("release").join("wsksend-harness.exe"),
        c,
    })
}
