//! Build script of the KMDF driver package (`driver/`, which points here with
//! `build = "../build.rs"`), as windows-drivers-rs prescribes: `wdk-build` reads the driver
//! model from the Cargo metadata (`[workspace.metadata.wdk.driver-model]`: KMDF 1.33), finds
//! the WDK and emits the link configuration of a kernel driver (`/DRIVER`, `/KERNEL`,
//! `/ENTRY:FxDriverEntry`, the WDK library paths). It fails unless the C runtime is linked
//! statically (`+crt-static`; the root Makefile.toml sets it for `cargo make`).
//!
//! Only Windows builds with the WDK run it: Linux builds never compile `driver/` (it is
//! not a default workspace member, and `wdk-build` does not build on Linux).

fn main() -> Result<(), wdk_build::ConfigError> {
    wdk_build::configure_wdk_binary_build()
}
