//! Linker flags that turn this `no_std` cdylib into a kernel-mode driver image when it is
//! built for `x86_64-pc-windows-msvc` (with rust-lld on Linux, see `cargo xtask`).

fn main() {
    let os = std::env::var("CARGO_CFG_TARGET_OS").unwrap_or_default();
    let env = std::env::var("CARGO_CFG_TARGET_ENV").unwrap_or_default();
    if os == "windows" && env == "msvc" {
        for arg in [
            // A kernel-mode image: native subsystem, entry point `DriverEntry`.
            "/DRIVER",
            "/SUBSYSTEM:NATIVE",
            "/ENTRY:DriverEntry",
            // No CRT: every import comes from `raw-dylib` declarations.
            "/NODEFAULTLIB",
            "/OPT:REF,ICF",
        ] {
            println!("cargo:rustc-cdylib-link-arg={arg}");
        }
    }
}
