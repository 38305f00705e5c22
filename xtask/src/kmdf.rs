//! `cargo xtask check-kmdf`: ring 2a, the KMDF front end (`driver/`) type-checked and
//! linted on Linux against the real windows-drivers-rs bindings.
//!
//! `wdk-sys` generates its bindings with bindgen from a WDK's headers. A folder shaped
//! like a WDK, built under `target/kmdf/wdk` from public headers, is enough for
//! `cargo check` and `cargo clippy` of the driver for `x86_64-pc-windows-msvc`:
//!
//! - `Include/<ver>/km`: the DDK headers of Debian's `mingw-w64-x86-64-dev` (public
//!   domain), `Include/<ver>/shared`: its Windows headers;
//! - `Include/<ver>/km/crt/ntstrsafe.h`: our compatibility header (`xtask/kmdf/`), which
//!   adds the four declarations mingw-w64 10 lacks and then includes the real one;
//! - `Include/wdf/kmdf/1.33`: Microsoft's KMDF 1.33 headers (MIT), from
//!   `../shared/third_party/wdf-kmdf-1.33` beside the repository or from
//!   `$WSKSEND_KMDF_HEADERS` (a WDK's `Include/wdf/kmdf/1.33`, or that folder of
//!   Microsoft's Windows-Driver-Frameworks), with links for the `#include`s whose letter
//!   case differs from the files';
//! - empty `Lib` folders (nothing is linked).
//!
//! No `wdk-build` release builds on Linux (it needs the `windows` crate, reads the WDK
//! root from the registry and refuses to set environment variables off Windows), so the
//! check patches a copy of cargo's registry copy under `target/kmdf/` and passes it with
//! `--config patch.crates-io.wdk-build.path=…`. That rewrites `Cargo.lock`, which the
//! check restores afterwards: nothing committed changes. Linking needs `WdfLdr.lib`,
//! `WdfDriverEntry.lib` and the kernel import libraries, which only the WDK has.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use crate::{Result, artifacts, deps, process, root};

/// The driver package (`driver/Cargo.toml`).
const DRIVER_PACKAGE: &str = "wsksend";

/// The `wdk-build` release the patch points below are written for (`Cargo.lock` pins it).
const WDK_BUILD: &str = "wdk-build-0.6.0";

/// The Windows SDK version the tree pretends to be (`Version_Number`).
const SDK_VERSION: &str = "10.0.22621.0";

/// KMDF version of the driver (`[workspace.metadata.wdk.driver-model]`).
const KMDF_VERSION: &str = "1.33";

/// Where another copy of the KMDF headers may be named.
const KMDF_HEADERS_VAR: &str = "WSKSEND_KMDF_HEADERS";

/// The LLVM 19 installation (Debian `llvm-19`, `clang-19`, `libclang-19-dev`).
const LLVM: &str = "/usr/lib/llvm-19";

/// mingw-w64's headers (Debian `mingw-w64-x86-64-dev`).
const MINGW_INCLUDE: &str = "/usr/x86_64-w64-mingw32/include";

/// Files whose absence means a Debian package is missing.
const PACKAGES: &[(&str, &str)] = &[
    ("/usr/bin/clang-19", "clang-19"),
    ("/usr/lib/llvm-19/lib/libclang.so", "libclang-19-dev"),
    ("/usr/lib/llvm-19/bin/llvm-lib", "llvm-19"),
    (
        "/usr/x86_64-w64-mingw32/include/ddk/ntddk.h",
        "mingw-w64-x86-64-dev",
    ),
];

/// Preprocessor flags for the mingw headers under clang's MSVC mode: they test
/// `__GNUC__`, which `-fms-compatibility` hides; and bindgen must not see the AMX
/// intrinsics that mingw's `intrin.h` pulls in (their layout tests fail).
const DEFINES: &str = "-D__GNUC__=4 -D__GNUC_MINOR__=2 -D__GNUC_PATCHLEVEL__=1 \
                       -D__AMXINTRIN_H -D__AMX_COMPLEXINTRIN_H";

/// Runs the check: packages, WDK-shaped tree, patched `wdk-build`, then `cargo check`
/// and `cargo clippy -D warnings` of the driver for the MSVC target.
pub fn check() -> Result {
    let started = std::time::Instant::now();
    ensure_packages()?;
    let kmdf = kmdf_headers()?;
    let work = root().join("target").join("kmdf");
    let wdk = build_tree(&work.join("wdk"), &kmdf)?;
    let wdk_build = patch_wdk_build(&work)?;
    let patch = format!(
        "patch.crates-io.wdk-build.path='{}'",
        wdk_build.to_string_lossy()
    );
    let env = environment(&wdk, &work)?;
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let common = [
        "--config",
        &patch,
        "--quiet",
        "-p",
        DRIVER_PACKAGE,
        "--target",
        artifacts::MSVC,
    ];
    for (what, subcommand, tail) in [
        ("cargo check", "check", &[][..]),
        ("cargo clippy", "clippy", &["--", "-D", "warnings"][..]),
    ] {
        let args: Vec<&str> = std::iter::once(subcommand)
            .chain(common.iter().copied())
            .chain(tail.iter().copied())
            .collect();
        with_lockfile_restored(|| process::cargo(&args, &env))
            .map_err(|e| format!("{what} of the KMDF driver ({DRIVER_PACKAGE}): {e}"))?;
    }
    eprintln!(
        "xtask: check-kmdf: driver/ type-checks and passes clippy for {} against wdk-sys \
         (mingw-w64 DDK + KMDF {KMDF_VERSION} headers) in {:.0} s",
        artifacts::MSVC,
        started.elapsed().as_secs_f64()
    );
    Ok(())
}

/// Installs the Debian packages when root, else names the command.
fn ensure_packages() -> Result {
    let missing: Vec<&str> = PACKAGES
        .iter()
        .filter(|(path, _)| !Path::new(path).exists())
        .map(|&(_, package)| package)
        .collect();
    if missing.is_empty() {
        return Ok(());
    }
    deps::install(&missing)
}

/// The folder holding the KMDF 1.33 headers (`wdf.h` and the `wdf*.h` it includes).
fn kmdf_headers() -> Result<PathBuf> {
    let (dir, origin) = match std::env::var_os(KMDF_HEADERS_VAR) {
        Some(dir) => (PathBuf::from(dir), format!("${KMDF_HEADERS_VAR}")),
        None => {
            let root = root();
            let beside = root.parent().unwrap_or(&root);
            (
                beside
                    .join("shared")
                    .join("third_party")
                    .join("wdf-kmdf-1.33"),
                "the default (../shared beside the repository)".to_owned(),
            )
        }
    };
    if dir.join("wdf.h").is_file() {
        Ok(dir)
    } else {
        Err(format!(
            "no KMDF {KMDF_VERSION} headers (wdf.h) in {} ({origin}); point {KMDF_HEADERS_VAR} \
             at a folder with them: a WDK's Include/wdf/kmdf/{KMDF_VERSION}, or \
             src/publicinc/wdf/kmdf/{KMDF_VERSION} of github.com/microsoft/Windows-Driver-Frameworks",
            dir.display()
        ))
    }
}

/// Builds (or refreshes) the WDK-shaped folder at `wdk` and returns its absolute path.
fn build_tree(wdk: &Path, kmdf: &Path) -> Result<PathBuf> {
    let include = wdk.join("Include");
    let sdk = include.join(SDK_VERSION);
    let km = sdk.join("km");
    let mingw = Path::new(MINGW_INCLUDE);
    for dir in [
        km.join("crt"),
        km.join("ufx").join("1.1"),
        wdk.join("Lib").join(SDK_VERSION).join("km").join("x64"),
        wdk.join("Lib")
            .join("wdf")
            .join("kmdf")
            .join("x64")
            .join(KMDF_VERSION),
    ] {
        fs::create_dir_all(&dir).map_err(|e| format!("create {}: {e}", dir.display()))?;
    }
    // `km`: one link per DDK header (the folder also holds `crt` and `ufx`).
    link_each(&mingw.join("ddk"), &km)?;
    link(mingw, &sdk.join("shared"))?;
    write_if_changed(
        &km.join("crt").join("ntstrsafe.h"),
        include_bytes!("../kmdf/ntstrsafe.h"),
    )?;
    // Only links: made afresh, so none is left over from another header location.
    let wdf = include.join("wdf").join("kmdf").join(KMDF_VERSION);
    if wdf.exists() {
        fs::remove_dir_all(&wdf).map_err(|e| format!("remove {}: {e}", wdf.display()))?;
    }
    fs::create_dir_all(&wdf).map_err(|e| format!("create {}: {e}", wdf.display()))?;
    link_each(kmdf, &wdf)?;
    link_other_cases(&wdf)?;
    fs::canonicalize(wdk).map_err(|e| format!("{}: {e}", wdk.display()))
}

/// Links every `.h` file of `from` into `to` under its own name.
fn link_each(from: &Path, to: &Path) -> Result {
    let from = fs::canonicalize(from).map_err(|e| format!("{}: {e}", from.display()))?;
    for name in headers(&from)? {
        link(&from.join(&name), &to.join(&name))?;
    }
    Ok(())
}

/// The `.h` file names in `dir`.
fn headers(dir: &Path) -> Result<Vec<String>> {
    let entries = fs::read_dir(dir).map_err(|e| format!("read {}: {e}", dir.display()))?;
    let mut names: Vec<String> = entries
        .filter_map(|entry| entry.ok()?.file_name().into_string().ok())
        .filter(|name| {
            Path::new(name)
                .extension()
                .is_some_and(|ext| ext.eq_ignore_ascii_case("h"))
        })
        .collect();
    names.sort_unstable();
    Ok(names)
}

/// Adds a link for each `#include "name"` in the KMDF headers that names one of them in
/// another letter case (`WdfWMI.h` for `wdfwmi.h`): the WDK is used on a case-insensitive
/// file system.
fn link_other_cases(wdf: &Path) -> Result {
    let files = headers(wdf)?;
    for file in &files {
        let path = wdf.join(file);
        let text = fs::read(&path).map_err(|e| format!("read {}: {e}", path.display()))?;
        for line in String::from_utf8_lossy(&text).lines() {
            let Some(name) = included_name(line) else {
                continue;
            };
            if files.iter().any(|f| f == name) {
                continue;
            }
            if let Some(real) = files.iter().find(|f| f.eq_ignore_ascii_case(name)) {
                link(
                    &fs::canonicalize(wdf.join(real)).map_err(|e| e.to_string())?,
                    &wdf.join(name),
                )?;
            }
        }
    }
    Ok(())
}

/// The file name of a `#include "name"` or `#include <name>` line.
fn included_name(line: &str) -> Option<&str> {
    let rest = line.trim_start().strip_prefix('#')?.trim_start();
    let rest = rest.strip_prefix("include")?.trim_start();
    let close = match rest.chars().next()? {
        '"' => '"',
        '<' => '>',
        _ => return None,
    };
    let rest = &rest[1..];
    rest.find(close).map(|end| &rest[..end])
}

/// Makes `at` a symbolic link to `target`, unless it already is one.
fn link(target: &Path, at: &Path) -> Result {
    if fs::read_link(at).is_ok_and(|current| current == target) {
        return Ok(());
    }
    if fs::symlink_metadata(at).is_ok() {
        fs::remove_file(at).map_err(|e| format!("remove {}: {e}", at.display()))?;
    }
    std::os::unix::fs::symlink(target, at)
        .map_err(|e| format!("link {} -> {}: {e}", at.display(), target.display()))
}

/// Writes `bytes` to `path` unless it already holds them (an unchanged modification time
/// keeps cargo from rebuilding what depends on the file).
fn write_if_changed(path: &Path, bytes: &[u8]) -> Result {
    if fs::read(path).is_ok_and(|current| current == bytes) {
        return Ok(());
    }
    fs::write(path, bytes).map_err(|e| format!("write {}: {e}", path.display()))
}

/// One textual edit of `wdk-build`: in `file`, replace `from` (which must occur exactly
/// `count` times, line endings normalized to `\n`) with `to`.
struct Edit {
    file: &'static str,
    from: &'static str,
    to: &'static str,
    count: usize,
}

impl Edit {
    /// An edit of a text that occurs once.
    const fn once(file: &'static str, from: &'static str, to: &'static str) -> Self {
        Self {
            file,
            from,
            to,
            count: 1,
        }
    }
}

/// The spots that keep `wdk-build` 0.6.0 from building and running on Linux.
const EDITS: &[Edit] = &[
    // 1. The `windows` crate (registry access) only builds for Windows.
    Edit::once(
        "Cargo.toml",
        "[dependencies.windows]",
        "[target.'cfg(windows)'.dependencies.windows]",
    ),
    Edit::once(
        "Cargo.toml",
        "[dev-dependencies.windows]",
        "[target.'cfg(windows)'.dev-dependencies.windows]",
    ),
    Edit::once(
        "src/utils.rs",
        "use windows::{",
        "#[cfg(windows)]\nuse windows::{",
    ),
    Edit::once("src/utils.rs", "    ffi::{CStr, OsStr},", "    ffi::OsStr,"),
    Edit::once(
        "src/utils.rs",
        "#[cfg(windows)]\nuse windows::{",
        "#[cfg(windows)]\nuse std::ffi::CStr;\n#[cfg(windows)]\nuse windows::{",
    ),
    // 2. Without `WDKContentRoot` it reads the WDK root from the registry.
    Edit::once(
        "src/utils.rs",
        "    // Check HKEY_LOCAL_MACHINE\\SOFTWARE\\Microsoft\\Windows Kits\\Installed\n",
        "    #[cfg(windows)]\n    {\n    // Check HKEY_LOCAL_MACHINE\\SOFTWARE\\Microsoft\\Windows Kits\\Installed\n",
    ),
    Edit::once(
        "src/utils.rs",
        "        return Some(Path::new(path.as_str()).to_path_buf());\n    }\n\n    None\n}",
        "        return Some(Path::new(path.as_str()).to_path_buf());\n    }\n    }\n\n    None\n}",
    ),
    Edit::once(
        "src/utils.rs",
        "fn read_registry_key_string_value(",
        "#[cfg(windows)]\nfn read_registry_key_string_value(",
    ),
    // 3. Its non-Windows `set_var`/`remove_var` are a deliberate `compile_error!`; a
    //    build script is single-threaded, so the std functions are sound here.
    Edit::once(
        "src/utils.rs",
        "    compile_error!(\n        \"windows-drivers-rs is designed to be run on a Windows host machine in a WDK environment. \\\n         Please build using a Windows target.\"\n    );\n}\n\n/// Safely removes",
        "    // SAFETY: a build script is single-threaded: no other thread reads the\n    // environment meanwhile.\n    unsafe { env::set_var(_key, _value) }\n}\n\n/// Safely removes",
    ),
    Edit::once(
        "src/utils.rs",
        "    compile_error!(\n        \"windows-drivers-rs is designed to be run on a Windows host machine in a WDK environment. \\\n         Please build using a Windows target.\"\n    );\n}",
        "    // SAFETY: as for `set_var` above.\n    unsafe { env::remove_var(_key) }\n}",
    ),
    // 4. The cargo-make flow links its makefile with a Windows-only std function.
    Edit {
        file: "src/cargo_make.rs",
        from: "std::os::windows::fs::symlink_file(",
        to: "symlink_file(",
        count: 2,
    },
    Edit::once(
        "src/cargo_make.rs",
        "use anyhow::Context;\n",
        "use anyhow::Context;\n#[cfg(unix)]\nuse std::os::unix::fs::symlink as symlink_file;\n\
         #[cfg(windows)]\nuse std::os::windows::fs::symlink_file;\n",
    ),
];

/// Copies cargo's registry copy of `wdk-build` to `work/wdk-build-…`, applies [`EDITS`]
/// and returns the copy's path. Files are rewritten only when their content changes.
fn patch_wdk_build(work: &Path) -> Result<PathBuf> {
    let source = registry_copy()?;
    let copy = work.join(WDK_BUILD);
    let patched = ["Cargo.toml", "src/utils.rs", "src/cargo_make.rs"];
    copy_tree(&source, &copy, &|path| {
        patched.iter().any(|file| source.join(file) == path)
    })?;
    for file in patched {
        let original = fs::read_to_string(source.join(file))
            .map_err(|e| format!("read {WDK_BUILD}/{file}: {e}"))?;
        let mut text = original.replace("\r\n", "\n");
        for edit in EDITS.iter().filter(|edit| edit.file == file) {
            let found = text.matches(edit.from).count();
            if found != edit.count {
                return Err(format!(
                    "{WDK_BUILD}/{file}: the text to patch is there {found} times, not {}: {:?}",
                    edit.count, edit.from
                ));
            }
            text = text.replace(edit.from, edit.to);
        }
        write_if_changed(&copy.join(file), text.as_bytes())?;
    }
    Ok(copy)
}

/// Where cargo unpacked `wdk-build` (fetched first, as `Cargo.lock` pins it).
fn registry_copy() -> Result<PathBuf> {
    process::cargo(&["fetch", "--locked", "--quiet"], &[])?;
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let output = Command::new(cargo)
        .args(["metadata", "--format-version", "1", "--locked"])
        .current_dir(root())
        .output()
        .map_err(|e| format!("cannot run cargo metadata: {e}"))?;
    if !output.status.success() {
        return Err(format!(
            "cargo metadata failed: {}",
            String::from_utf8_lossy(&output.stderr)
        ));
    }
    let json = String::from_utf8_lossy(&output.stdout);
    // `"manifest_path":"<registry>/wdk-build-0.6.0/Cargo.toml"` (no serde in xtask).
    let tail = format!("/{WDK_BUILD}/Cargo.toml\"");
    let end = json
        .find(&tail)
        .ok_or_else(|| format!("{WDK_BUILD} is not in the dependency graph (Cargo.lock)"))?;
    let start = json[..end].rfind('"').map_or(0, |quote| quote + 1);
    let dir = PathBuf::from(&json[start..=end + WDK_BUILD.len()]);
    if dir.join("src").join("utils.rs").is_file() {
        Ok(dir)
    } else {
        Err(format!(
            "{WDK_BUILD} sources not found at {}",
            dir.display()
        ))
    }
}

/// Copies the files of `from` into `to`, recursively, rewriting only changed files and
/// leaving out those `skip` names.
fn copy_tree(from: &Path, to: &Path, skip: &dyn Fn(&Path) -> bool) -> Result {
    fs::create_dir_all(to).map_err(|e| format!("create {}: {e}", to.display()))?;
    let entries = fs::read_dir(from).map_err(|e| format!("read {}: {e}", from.display()))?;
    for entry in entries {
        let entry = entry.map_err(|e| e.to_string())?;
        let path = entry.path();
        let dest = to.join(entry.file_name());
        if path.is_dir() {
            copy_tree(&path, &dest, skip)?;
        } else if !skip(&path) {
            let bytes = fs::read(&path).map_err(|e| format!("read {}: {e}", path.display()))?;
            write_if_changed(&dest, &bytes)?;
        }
    }
    Ok(())
}

/// The environment wdk-build, wdk-sys (bindgen, cc) and rustc need.
fn environment(wdk: &Path, work: &Path) -> Result<Vec<(&'static str, String)>> {
    let resource = Command::new("clang-19")
        .arg("-print-resource-dir")
        .output()
        .map_err(|e| format!("cannot run clang-19: {e}"))?;
    let resource = String::from_utf8_lossy(&resource.stdout).trim().to_owned();
    if resource.is_empty() {
        return Err("clang-19 -print-resource-dir printed nothing".into());
    }
    Ok(vec![
        ("WDKContentRoot", wdk.to_string_lossy().into_owned()),
        ("Version_Number", SDK_VERSION.to_owned()),
        ("LIBCLANG_PATH", format!("{LLVM}/lib")),
        ("CC_x86_64_pc_windows_msvc", "clang-19".to_owned()),
        ("AR_x86_64_pc_windows_msvc", format!("{LLVM}/bin/llvm-lib")),
        ("CFLAGS_x86_64_pc_windows_msvc", DEFINES.to_owned()),
        (
            "BINDGEN_EXTRA_CLANG_ARGS_x86_64_pc_windows_msvc",
            format!("-isystem {resource}/include {DEFINES}"),
        ),
        // wdk-build refuses a driver without a static C runtime.
        (
            "CARGO_TARGET_X86_64_PC_WINDOWS_MSVC_RUSTFLAGS",
            "-C target-feature=+crt-static".to_owned(),
        ),
        // Its own target folder: the host and Wine builds keep theirs.
        (
            "CARGO_TARGET_DIR",
            work.join("target").to_string_lossy().into_owned(),
        ),
    ])
}

/// Runs `job` and puts `Cargo.lock` back as it was (the `wdk-build` patch makes cargo
/// rewrite it), whether or not `job` succeeds. (A check killed midway can leave it
/// rewritten: `git checkout Cargo.lock` undoes that.)
fn with_lockfile_restored(job: impl FnOnce() -> Result) -> Result {
    let lock = root().join("Cargo.lock");
    let saved = fs::read(&lock).map_err(|e| format!("read Cargo.lock: {e}"))?;
    let result = job();
    write_if_changed(&lock, &saved)?;
    result
}
