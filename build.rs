//! Build script of the KMDF driver package (`driver/`, which points here with
//! `build = "../build.rs"`), as windows-drivers-rs prescribes: `wdk-build` reads the driver
//! model from the Cargo metadata (`[workspace.metadata.wdk.driver-model]`: KMDF 1.33), finds
//! the WDK and emits the link configuration of a kernel driver (`/DRIVER`, `/KERNEL`,
//! `/ENTRY:FxDriverEntry`, the WDK library paths). It fails unless the C runtime is linked
//! statically (`+crt-static`; the root Makefile.toml sets it for `cargo make`).
//!
//! Windows builds with the WDK run it. On Linux plain builds never compile `driver/` (it
//! is not a default workspace member, and no `wdk-build` release builds on Linux); only
//! `cargo xtask check-kmdf` runs it, with a patched `wdk-build` and a WDK-shaped folder of
//! public headers, for `cargo check` and `cargo clippy` (nothing is linked).

fn main() -> Result<(), wdk_build::ConfigError> {
    wdk_build::configure_wdk_binary_build()
}
