//! The C consumers in `examples/`, built with mingw-w64 against `include/`:
//!
//! - the import libraries of `wsksend.sys` from `include/wsksend.def` (checked first
//!   against the Rust export table and the exports of the built image): `libwsksend.a`
//!   (GNU format, what the mingw-w64 example links) and `wsksend.lib` (MSVC short
//!   import format, made by `rust-lld`'s `lib` mode; `cargo make` makes the package's
//!   with the WDK's `lib.exe`);
//! - `wsksclient_c.sys`, a C kernel driver calling every `Wsks*` function;
//! - `wsksend-c-client.exe`, a C user-mode client over the IOCTL interface.

use std::path::{Path, PathBuf};
use std::process::Command;

use crate::headers::{DDK_INCLUDE, GCC, export_names};
use crate::{Result, root};

/// What this module builds (all in `target/c-examples/`).
pub struct Examples {
    /// `wsksclient_c.sys`.
    pub driver: PathBuf,
    /// `wsksend-c-client.exe`.
    pub client: PathBuf,
}

/// `x86_64-w64-mingw32-dlltool`, for the GNU import library.
const DLLTOOL: &str = "x86_64-w64-mingw32-dlltool";
/// `x86_64-w64-mingw32-objdump`, to read the export table of the built image.
const OBJDUMP: &str = "x86_64-w64-mingw32-objdump";

fn run(cmd: &mut Command, what: &str) -> Result<String> {
    let out = cmd
        .output()
        .map_err(|e| format!("{what}: cannot run {:?}: {e}", cmd.get_program()))?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(format!(
            "{what} failed:\n{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr).trim_end()
        ))
    }
}

/// The names under `EXPORTS` in a `.def` file.
fn def_exports(text: &str) -> Vec<String> {
    text.lines()
        .map(|l| l.split(';').next().unwrap_or("").trim())
        .skip_while(|l| !l.eq_ignore_ascii_case("EXPORTS"))
        .skip(1)
        .filter(|l| !l.is_empty())
        .filter_map(|l| l.split_whitespace().next().map(str::to_owned))
        .collect()
}

/// The `Wsks*` names in the export table `objdump -p` prints for `image`.
fn image_exports(image: &Path) -> Result<Vec<String>> {
    let dump = run(
        Command::new(OBJDUMP).arg("-p").arg(image),
        "read the exports of wsksend.sys",
    )?;
    let mut names: Vec<String> = dump
        .lines()
        .skip_while(|l| !l.contains("[Ordinal/Name Pointer] Table"))
        .skip(1)
        .take_while(|l| !l.trim().is_empty())
        .filter_map(|l| l.split(']').nth(1).map(|n| n.trim().to_owned()))
        .filter(|n| n.starts_with("Wsks"))
        .collect();
    names.sort();
    Ok(names)
}

/// The `.def` lists exactly the Rust kernel API, and the built image exports exactly it.
fn check_exports(def: &Path, image: &Path) -> Result {
    let text = std::fs::read_to_string(def).map_err(|e| format!("read {}: {e}", def.display()))?;
    let mut listed = def_exports(&text);
    listed.sort();
    let mut rust: Vec<String> = export_names().into_iter().map(str::to_owned).collect();
    rust.sort();
    if listed != rust {
        return Err(format!(
            "include/wsksend.def exports {listed:?}, the Rust kernel API (xtask/src/headers.rs) is {rust:?}"
        ));
    }
    let exported = image_exports(image)?;
    if exported != rust {
        return Err(format!(
            "{} exports {exported:?}, include/wsksend.def and xtask/src/headers.rs list {rust:?}",
            image.display()
        ));
    }
    Ok(())
}

/// `rust-lld` of the toolchain in use (it can make MSVC import libraries).
fn rust_lld() -> Result<PathBuf> {
    let rustc = |arg: &str| -> Result<String> {
        run(
            Command::new("rustc").arg(arg).current_dir(root()),
            "ask rustc",
        )
    };
    let sysroot = rustc("--print=sysroot")?;
    let host = rustc("-vV")?
        .lines()
        .find_map(|l| l.strip_prefix("host: ").map(str::to_owned))
        .ok_or("rustc -vV printed no host")?;
    Ok(PathBuf::from(sysroot.trim())
        .join("lib/rustlib")
        .join(host)
        .join("bin/rust-lld"))
}

/// Builds the import libraries and both examples; `image` is the built `wsksend.sys`.
pub fn build(image: &Path) -> Result<Examples> {
    let root = root();
    let include = root.join("include");
    let def = include.join("wsksend.def");
    check_exports(&def, image)?;
    let out = root.join("target").join("c-examples");
    std::fs::create_dir_all(&out).map_err(|e| format!("create {}: {e}", out.display()))?;

    let gnu_lib = out.join("libwsksend.a");
    run(
        Command::new(DLLTOOL)
            .args(["-m", "i386:x86-64", "-d"])
            .arg(&def)
            .arg("-l")
            .arg(&gnu_lib),
        "dlltool (libwsksend.a)",
    )?;
    let msvc_lib = out.join("wsksend.lib");
    run(
        Command::new(rust_lld()?)
            .args(["-flavor", "link", "/lib", "/machine:x64"])
            .arg(format!("/def:{}", def.display()))
            .arg(format!("/out:{}", msvc_lib.display())),
        "rust-lld /lib (wsksend.lib)",
    )?;

    let warnings = ["-std=c11", "-O2", "-Wall", "-Wextra", "-Werror"];
    let driver = out.join("wsksclient_c.sys");
    run(
        Command::new(GCC)
            .args(warnings)
            .args(["-I", DDK_INCLUDE, "-I"])
            .arg(&include)
            // A kernel image: no C runtime, native subsystem, DriverEntry as entry.
            .args([
                "-nostdlib",
                "-shared",
                "-Wl,--subsystem,native",
                "-Wl,--entry,DriverEntry",
            ])
            .arg("-o")
            .arg(&driver)
            .arg(root.join("examples/kernel-driver/wsksclient_c.c"))
            .arg(&gnu_lib)
            .arg("-lntoskrnl"),
        "build examples/kernel-driver",
    )?;
    let client = out.join("wsksend-c-client.exe");
    run(
        Command::new(GCC)
            .args(warnings)
            .arg("-I")
            .arg(&include)
            .arg("-o")
            .arg(&client)
            .arg(root.join("examples/user-client/wsksend_c_client.c")),
        "build examples/user-client",
    )?;
    Ok(Examples { driver, client })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn def_exports_reads_the_exports_section() {
        let def = "; c\nLIBRARY wsksend.sys\nEXPORTS\n    WsksA ; note\n\n    WsksB @2\n";
        assert_eq!(def_exports(def), ["WsksA", "WsksB"]);
    }

    #[test]
    fn the_checked_in_def_lists_the_rust_api() {
        let text = std::fs::read_to_string(root().join("include/wsksend.def")).unwrap();
        let mut listed = def_exports(&text);
        listed.sort();
        let mut rust: Vec<String> = export_names().into_iter().map(str::to_owned).collect();
        rust.sort();
        assert_eq!(listed, rust);
    }
}
