//! A TCP sink on loopback that checks every byte it receives against the pattern
//! announced by each connection's header (see [`crate::pattern`]). It runs in the
//! harness process, so the same harness works under Wine and in a Windows VM.

use std::collections::HashMap;
use std::io::Read;
use std::net::{IpAddr, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::pattern::{HEADER_LEN, first_mismatch, parse_header};

/// What the sink saw on one connection.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct StreamReport {
    /// Seed from the header.
    pub seed: u32,
    /// Pattern bytes the header announced.
    pub expected: u64,
    /// Pattern bytes received so far.
    pub received: u64,
    /// Stream offset of the first wrong byte, if any.
    pub mismatch_at: Option<u64>,
    /// The peer closed (or the sink reset) the connection.
    pub closed: bool,
    /// The peer ended the stream cleanly (FIN, read returned 0), not by a reset or
    /// another read error.
    pub clean_end: bool,
    /// The header was missing or malformed.
    pub bad_header: bool,
}

impl StreamReport {
    /// Every announced byte arrived, correct, and nothing more.
    #[must_use]
    pub fn exact(&self) -> bool {
        !self.bad_header && self.mismatch_at.is_none() && self.received == self.expected
    }
}

#[derive(Default)]
struct Shared {
    streams: Mutex<HashMap<u32, StreamReport>>,
    paused: AtomicBool,
    /// Reset connections once they have received this many bytes (0: never).
    reset_after: AtomicU64,
    stop: AtomicBool,
    accepted: AtomicU64,
}

/// A running sink; its threads stop when it is dropped.
pub struct Sink {
    addr: SocketAddr,
    shared: Arc<Shared>,
}

impl Sink {
    /// Listens on `ip` with an ephemeral port.
    ///
    /// # Errors
    /// Binding failed.
    pub fn start(ip: IpAddr) -> std::io::Result<Self> {
        let listener = TcpListener::bind(SocketAddr::new(ip, 0))?;
        let addr = listener.local_addr()?;
        listener.set_nonblocking(true)?;
        let shared = Arc::new(Shared::default());
        let s = Arc::clone(&shared);
        std::thread::spawn(move || accept_loop(&listener, &s));
        Ok(Self { addr, shared })
    }

    /// The address to connect to.
    #[must_use]
    pub const fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Connections accepted so far.
    #[must_use]
    pub fn accepted(&self) -> u64 {
        self.shared.accepted.load(Ordering::Acquire)
    }

    /// Stops (or resumes) reading, so senders' socket buffers fill up and sends block.
    pub fn set_paused(&self, paused: bool) {
        self.shared.paused.store(paused, Ordering::Release);
    }

    /// Resets every connection once it has received `bytes` bytes (0 disables).
    pub fn reset_after(&self, bytes: u64) {
        self.shared.reset_after.store(bytes, Ordering::Release);
    }

    /// The report of the stream with `seed`, if it has announced itself.
    #[must_use]
    pub fn report(&self, seed: u32) -> Option<StreamReport> {
        self.shared
            .streams
            .lock()
            .ok()
            .and_then(|m| m.get(&seed).cloned())
    }

    /// Waits until the stream `seed` has received `bytes` pattern bytes (or closed, or
    /// went wrong) and returns its report.
    #[must_use]
    pub fn wait_for(&self, seed: u32, bytes: u64, limit: Duration) -> Option<StreamReport> {
        let start = Instant::now();
        loop {
            let r = self.report(seed);
            if let Some(r) = &r
                && (r.received >= bytes || r.closed || r.mismatch_at.is_some() || r.bad_header)
            {
                return Some(r.clone());
            }
            if start.elapsed() >= limit {
                return r;
            }
            std::thread::sleep(Duration::from_millis(5));
        }
    }
}

impl Drop for Sink {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::Release);
    }
}

fn accept_loop(listener: &TcpListener, shared: &Arc<Shared>) {
    while !shared.stop.load(Ordering::Acquire) {
        match listener.accept() {
            Ok((stream, _)) => {
                shared.accepted.fetch_add(1, Ordering::AcqRel);
                let s = Arc::clone(shared);
                std::thread::spawn(move || serve(stream, &s));
            }
            Err(_) => std::thread::sleep(Duration::from_millis(2)),
        }
    }
}

fn update(shared: &Shared, seed: u32, f: impl FnOnce(&mut StreamReport)) {
    if let Ok(mut m) = shared.streams.lock() {
        f(m.entry(seed).or_default());
    }
}

fn serve(mut stream: TcpStream, shared: &Shared) {
    let _ = stream.set_nonblocking(false);
    let _ = stream.set_read_timeout(Some(Duration::from_millis(50)));
    let mut header = Vec::with_capacity(HEADER_LEN);
    let mut buf = vec![0u8; 256 << 10];
    let mut seed = None;
    let mut pos: u64 = 0;
    let mut clean_end = false;
    loop {
        if shared.stop.load(Ordering::Acquire) {
            return;
        }
        if shared.paused.load(Ordering::Acquire) {
            std::thread::sleep(Duration::from_millis(5));
            continue;
        }
        let n = match stream.read(&mut buf) {
            Ok(0) => {
                clean_end = true;
                break;
            }
            Ok(n) => n,
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) =>
            {
                continue;
            }
            Err(_) => break,
        };
        let mut data = &buf[..n];
        if seed.is_none() {
            let take = (HEADER_LEN - header.len()).min(data.len());
            header.extend_from_slice(&data[..take]);
            data = &data[take..];
            if header.len() < HEADER_LEN {
                continue;
            }
            let Some((s, expected)) = parse_header(&header) else {
                update(shared, u32::MAX, |r| r.bad_header = true);
                break;
            };
            update(shared, s, |r| {
                r.seed = s;
                r.expected = expected;
            });
            seed = Some(s);
        }
        let Some(s) = seed else { continue };
        let mismatch = first_mismatch(s, pos, data);
        // CAST: buffer lengths fit in u64.
        let len = data.len() as u64;
        update(shared, s, |r| {
            if r.mismatch_at.is_none() {
                r.mismatch_at = mismatch.map(|i| pos + i as u64);
            }
            r.received += len;
        });
        pos += len;
        let reset = shared.reset_after.load(Ordering::Acquire);
        if reset != 0 && pos >= reset {
            reset_connection(&stream);
            break;
        }
    }
    if let Some(s) = seed {
        update(shared, s, |r| {
            r.closed = true;
            r.clean_end = clean_end;
        });
    }
}

/// Closes abortively (RST): linger on with a zero timeout, then close.
fn reset_connection(stream: &TcpStream) {
    let sock = socket2::SockRef::from(stream);
    let _ = sock.set_linger(Some(Duration::ZERO));
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pattern::{fill, header};
    use std::io::Write;

    #[test]
    fn sink_verifies_a_stream_and_catches_corruption() {
        let sink = Sink::start("127.0.0.1".parse().unwrap()).unwrap();
        let mut good = TcpStream::connect(sink.addr()).unwrap();
        let mut payload = vec![0u8; 100_000];
        fill(5, 0, &mut payload);
        good.write_all(&header(5, 100_000)).unwrap();
        good.write_all(&payload).unwrap();
        drop(good);
        let r = sink.wait_for(5, 100_000, Duration::from_secs(5)).unwrap();
        assert!(r.exact(), "{r:?}");

        let mut bad = TcpStream::connect(sink.addr()).unwrap();
        payload[777] ^= 1;
        bad.write_all(&header(6, 100_000)).unwrap();
        let mut other = vec![0u8; 100_000];
        fill(6, 0, &mut other);
        other[777] ^= 1;
        bad.write_all(&other).unwrap();
        drop(bad);
        let r = sink.wait_for(6, 100_000, Duration::from_secs(5)).unwrap();
        assert_eq!(r.mismatch_at, Some(777));
        assert!(!r.exact());
    }
}
