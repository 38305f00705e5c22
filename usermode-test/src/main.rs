//! `wsksend-harness`: command line over the harness library.
//!
//! ```text
//! wsksend-harness version            print the driver's version (over IOCTL)
//! wsksend-harness scenario NAME...   run end-to-end scenarios, one RESULT line each
//! wsksend-harness list               list the scenarios
//! ```

#[cfg(windows)]
fn main() -> std::process::ExitCode {
    use std::process::ExitCode;
    use wsksend_harness::{device::Device, scenarios};

    let args: Vec<String> = std::env::args().skip(1).collect();
    match args.first().map(String::as_str) {
        Some("version") => match Device::open().and_then(|d| d.version()) {
            Ok(v) => {
                println!(
                    "WskSend driver {}.{}.{}, protocol {}",
                    v.driver.major, v.driver.minor, v.driver.patch, v.protocol_version
                );
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("wsksend-harness: {e}");
                ExitCode::FAILURE
            }
        },
        Some("scenario") if args.len() > 1 => {
            let mut ok = true;
            for name in &args[1..] {
                let result = scenarios::run(name);
                ok &= result.passed;
                println!("{}", result.to_line());
            }
            if ok {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            }
        }
        Some("list") => {
            for (name, what) in scenarios::SCENARIOS {
                println!("{name:16} {what}");
            }
            ExitCode::SUCCESS
        }
        _ => {
            eprintln!("usage: wsksend-harness version | scenario NAME... | list");
            ExitCode::from(2)
        }
    }
}

#[cfg(not(windows))]
fn main() {
    eprintln!("wsksend-harness talks to the Windows driver: build it for a Windows target");
    std::process::exit(2);
}
