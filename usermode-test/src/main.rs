//! `wsksend-harness`: command line over the harness library.
//!
//! ```text
//! wsksend-harness version            print the driver's version (over IOCTL)
//! wsksend-harness connect ADDR:PORT [--nodelay]   connect through the driver, then close
//! wsksend-harness send [ADDR:PORT|sink] [--bytes 64M] [--chunk 64K] [--segments 1]
//!                      [--inflight 8] [--nodelay]
//!                                    send a verifiable stream (to an in-process sink
//!                                    by default), with progress and a summary
//! wsksend-harness stats              driver-wide counters
//! wsksend-harness scenario NAME...   run end-to-end scenarios, one RESULT line each
//! wsksend-harness bench [MIB] [KIB]   driver vs WSASend throughput (default 256 MiB, 64 KiB)
//! wsksend-harness hold               sleep (keeps a Wine session alive between runs)
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
        Some("bench") => {
            let mib: usize = args.get(1).and_then(|a| a.parse().ok()).unwrap_or(256);
            let kib: usize = args.get(2).and_then(|a| a.parse().ok()).unwrap_or(64);
            match wsksend_harness::bench::run(mib << 20, kib << 10) {
                Ok(results) if results.iter().all(|r| r.verified) => ExitCode::SUCCESS,
                Ok(_) => {
                    eprintln!("wsksend-harness: bench data did not verify at the sink");
                    ExitCode::FAILURE
                }
                Err(e) => {
                    eprintln!("wsksend-harness: bench: {e}");
                    ExitCode::FAILURE
                }
            }
        }
        Some("send") => report(
            wsksend_harness::cli::parse_send(&args[1..])
                .and_then(|o| wsksend_harness::cli::send(&o)),
        ),
        Some("connect") => report(
            args.get(1)
                .and_then(|a| a.parse().ok())
                .ok_or_else(|| "connect needs ADDR:PORT".to_string())
                .and_then(|to| {
                    wsksend_harness::cli::connect(to, args.iter().any(|a| a == "--nodelay"))
                }),
        ),
        Some("stats") => report(wsksend_harness::cli::stats()),
        Some("hold") => {
            // Keeps a user process alive: Wine shuts its services (and so the driver)
            // down a few seconds after the last user process exits.
            loop {
                std::thread::sleep(std::time::Duration::from_secs(3600));
            }
        }
        Some("list") => {
            for (name, what) in scenarios::SCENARIOS {
                println!("{name:16} {what}");
            }
            ExitCode::SUCCESS
        }
        _ => {
            eprintln!(
                "usage: wsksend-harness version | scenario NAME... | bench [MIB] [KIB] | list"
            );
            ExitCode::from(2)
        }
    }
}

#[cfg(windows)]
fn report(result: Result<(), String>) -> std::process::ExitCode {
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("wsksend-harness: {e}");
            std::process::ExitCode::FAILURE
        }
    }
}

#[cfg(not(windows))]
fn main() {
    eprintln!("wsksend-harness talks to the Windows driver: build it for a Windows target");
    std::process::exit(2);
}
