//! Link a CRT-free DLL with no entry point (rust-lld, `x86_64-pc-windows-msvc`).

fn main() {
    let os = std::env::var("CARGO_CFG_TARGET_OS").unwrap_or_default();
    let env = std::env::var("CARGO_CFG_TARGET_ENV").unwrap_or_default();
    if os == "windows" && env == "msvc" {
        for arg in ["/NOENTRY", "/NODEFAULTLIB"] {
            println!("cargo:rustc-cdylib-link-arg={arg}");
        }
    }
}
