//! Build script of the KMDF driver crate (`driver/`, which points here with
//! `build = "../build.rs"`), following windows-drivers-rs: `wdk-build` finds the WDK and
//! emits the link configuration for a driver binary. Only Windows builds run it; Linux
//! builds never compile `driver/` (it is not a default workspace member).

fn main() -> Result<(), wdk_build::ConfigError> {
    wdk_build::configure_wdk_binary_build()
}
