//! The interactive commands of `wsksend-harness`: `connect`, `send`, `stats`.
//!
//! A connection handle belongs to the file handle that opened it, so one `send` run
//! connects, sends and closes on its own handle.

#[cfg(windows)]
use std::net::IpAddr;
use std::net::SocketAddr;
#[cfg(windows)]
use std::time::{Duration, Instant};

#[cfg(windows)]
use wsksend_protocol::{CONNECT_NODELAY, SEND_NODELAY};

#[cfg(windows)]
use crate::device::Device;
#[cfg(windows)]
use crate::scenarios::send_stream_with;
#[cfg(windows)]
use crate::sink::Sink;

/// Options of `send`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SendOptions {
    /// `None`: an in-process verifying sink on 127.0.0.1.
    pub to: Option<SocketAddr>,
    /// Total pattern bytes.
    pub bytes: u64,
    /// Bytes per send.
    pub chunk: usize,
    /// Segments (WSABUFs) per send.
    pub segments: usize,
    /// Sends in flight.
    pub in_flight: usize,
    /// NODELAY on the connection and every send.
    pub nodelay: bool,
}

impl Default for SendOptions {
    fn default() -> Self {
        Self {
            to: None,
            bytes: 64 << 20,
            chunk: 64 << 10,
            segments: 1,
            in_flight: 8,
            nodelay: false,
        }
    }
}

/// Parses `12`, `64K`, `16M`, `1G` (binary units).
#[must_use]
pub fn parse_size(s: &str) -> Option<u64> {
    let (digits, shift) = match s.as_bytes().last()? {
        b'k' | b'K' => (&s[..s.len() - 1], 10),
        b'm' | b'M' => (&s[..s.len() - 1], 20),
        b'g' | b'G' => (&s[..s.len() - 1], 30),
        _ => (s, 0),
    };
    digits.parse::<u64>().ok()?.checked_mul(1 << shift)
}

/// Parses `send`'s arguments: `ADDR|sink [--bytes N] [--chunk N] [--segments N]
/// [--inflight N] [--nodelay]`.
///
/// # Errors
/// A message naming the bad argument.
pub fn parse_send(args: &[String]) -> Result<SendOptions, String> {
    let mut o = SendOptions::default();
    let mut it = args.iter();
    match it.next().map(String::as_str) {
        Some("sink") | None => {}
        Some(addr) => o.to = Some(addr.parse().map_err(|_| format!("bad address {addr}"))?),
    }
    while let Some(flag) = it.next() {
        let mut value = || {
            it.next()
                .and_then(|v| parse_size(v))
                .ok_or_else(|| format!("{flag} needs a size (like 64K)"))
        };
        match flag.as_str() {
            "--bytes" => o.bytes = value()?,
            "--chunk" => o.chunk = usize::try_from(value()?).map_err(|e| e.to_string())?,
            "--segments" => o.segments = usize::try_from(value()?).map_err(|e| e.to_string())?,
            "--inflight" => o.in_flight = usize::try_from(value()?).map_err(|e| e.to_string())?,
            "--nodelay" => o.nodelay = true,
            other => return Err(format!("unknown option {other}")),
        }
    }
    if o.chunk == 0 || o.segments == 0 || o.segments > 64 || o.in_flight == 0 || o.bytes == 0 {
        return Err("bytes, chunk, inflight must be > 0 and segments 1..=64".into());
    }
    Ok(o)
}

#[cfg(windows)]
/// `send`: connects, sends the pattern stream with progress once a second, prints a
/// summary, closes.
///
/// # Errors
/// Any failure, as a message.
pub fn send(o: &SendOptions) -> Result<(), String> {
    let sink = match o.to {
        Some(_) => None,
        None => Some(Sink::start(IpAddr::from([127, 0, 0, 1])).map_err(|e| format!("sink: {e}"))?),
    };
    let to = o.to.or(sink.as_ref().map(Sink::addr)).ok_or("no target")?;
    let dev = Device::open().map_err(|e| format!("open: {e}"))?;
    let handle = dev
        .connect(to, if o.nodelay { CONNECT_NODELAY } else { 0 }, 0)
        .map_err(|e| format!("connect {to}: {e}"))?;
    let count = o.bytes.div_ceil(o.chunk as u64);
    let mut sizes = vec![o.chunk; usize::try_from(count).map_err(|e| e.to_string())?];
    if let Some(last) = sizes.last_mut() {
        // CAST: the remainder is below `chunk`.
        let rem = (o.bytes % o.chunk as u64) as usize;
        if rem != 0 {
            *last = rem;
        }
    }
    let seed = std::process::id();
    let start = Instant::now();
    let mut last = Instant::now();
    let flags = if o.nodelay { SEND_NODELAY } else { 0 };
    let mut progress = |sent: u64| {
        if last.elapsed() >= Duration::from_secs(1) {
            last = Instant::now();
            let secs = start.elapsed().as_secs_f64();
            eprintln!(
                "  {:>8.1} MiB  {:>6.1} MB/s  {:>5.1}%",
                sent as f64 / f64::from(1 << 20),
                sent as f64 / secs / 1e6,
                sent as f64 * 100.0 / o.bytes as f64
            );
        }
    };
    let result = send_stream_with(
        &dev,
        handle,
        seed,
        &sizes,
        (o.in_flight, o.segments, flags),
        &mut progress,
    );
    let secs = start.elapsed().as_secs_f64();
    let stats = dev.stats(handle);
    let _ = dev.close(handle);
    let sent = result?;
    println!("WskSend send to {to}");
    println!(
        "  bytes      {sent} in {} sends of {} B, {} segment(s), {} in flight{}",
        sizes.len(),
        o.chunk,
        o.segments,
        o.in_flight,
        if o.nodelay { ", NODELAY" } else { "" }
    );
    println!(
        "  time       {secs:.2} s, {:.1} MB/s",
        sent as f64 / secs / 1e6
    );
    if let Ok(s) = stats {
        println!(
            "  driver     sends {} bytes {} errors {}",
            s.sends, s.bytes, s.errors
        );
    }
    if let Some(sink) = &sink {
        let r = sink.wait_for(seed, sent, Duration::from_secs(30));
        let exact = r.as_ref().is_some_and(crate::sink::StreamReport::exact);
        println!(
            "  sink       {}",
            if exact {
                "every byte verified"
            } else {
                "MISMATCH"
            }
        );
        if !exact {
            return Err(format!("sink report: {r:?}"));
        }
    }
    Ok(())
}

#[cfg(windows)]
/// `connect`: connects, reports the time it took, closes.
///
/// # Errors
/// Any failure, as a message.
pub fn connect(to: SocketAddr, nodelay: bool) -> Result<(), String> {
    let dev = Device::open().map_err(|e| format!("open: {e}"))?;
    let start = Instant::now();
    let handle = dev
        .connect(to, if nodelay { CONNECT_NODELAY } else { 0 }, 0)
        .map_err(|e| format!("connect {to}: {e}"))?;
    println!(
        "connected to {to} in {:.1} ms (handle {handle})",
        start.elapsed().as_secs_f64() * 1e3
    );
    dev.close(handle).map_err(|e| format!("close: {e}"))?;
    println!("closed");
    Ok(())
}

#[cfg(windows)]
/// `stats`: the driver-wide counters.
///
/// # Errors
/// Any failure, as a message.
pub fn stats() -> Result<(), String> {
    let dev = Device::open().map_err(|e| format!("open: {e}"))?;
    let s = dev.stats(0).map_err(|e| format!("stats: {e}"))?;
    println!(
        "connections {}  sends {}  bytes {}  errors {}  in flight {}",
        s.connections, s.sends, s.bytes, s.errors, s.in_flight
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(s: &str) -> Vec<String> {
        s.split_whitespace().map(str::to_owned).collect()
    }

    #[test]
    fn sizes_with_units() {
        assert_eq!(parse_size("12"), Some(12));
        assert_eq!(parse_size("64K"), Some(64 << 10));
        assert_eq!(parse_size("16m"), Some(16 << 20));
        assert_eq!(parse_size("1G"), Some(1 << 30));
        assert_eq!(parse_size("x"), None);
        assert_eq!(parse_size(""), None);
    }

    #[test]
    fn send_options_parse_and_validate() {
        let o = parse_send(&args(
            "10.0.0.5:5001 --bytes 1G --chunk 4K --segments 3 --inflight 16 --nodelay",
        ))
        .unwrap();
        assert_eq!(o.to, Some("10.0.0.5:5001".parse().unwrap()));
        assert_eq!(
            (o.bytes, o.chunk, o.segments, o.in_flight, o.nodelay),
            (1 << 30, 4096, 3, 16, true)
        );
        assert_eq!(parse_send(&args("sink")).unwrap(), SendOptions::default());
        assert!(parse_send(&args("sink --segments 65")).is_err());
        assert!(parse_send(&args("sink --chunk")).is_err());
        assert!(parse_send(&args("sink --frobnicate")).is_err());
        assert!(parse_send(&args("not-an-address")).is_err());
    }
}
