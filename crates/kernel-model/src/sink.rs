//! A loopback TCP sink that records what each accepted connection receives.

use std::io::{ErrorKind, Read};
use std::net::{Ipv4Addr, Ipv6Addr, Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use crate::checker::lock;

/// How often idle sink threads look for work or a stop request.
const POLL: Duration = Duration::from_millis(5);

/// A TCP listener on the loopback interface that accepts every connection and reads
/// it on its own thread, keeping the bytes for the test to check. Its threads stop
/// when it is dropped.
pub struct Sink {
    addr: SocketAddr,
    shared: Arc<Shared>,
    acceptor: Option<JoinHandle<()>>,
}

#[derive(Default)]
struct Shared {
    conns: Mutex<Vec<Conn>>,
    cv: Condvar,
    paused: AtomicBool,
    stop: AtomicBool,
    readers: Mutex<Vec<JoinHandle<()>>>,
}

#[derive(Default)]
struct Conn {
    data: Vec<u8>,
    reset_requested: bool,
    closed: bool,
    /// How the peer ended the stream: `Some(true)` a clean end of stream (FIN),
    /// `Some(false)` a reset or another read error.
    clean_end: Option<bool>,
}

impl Sink {
    /// A sink on `127.0.0.1`, on a free port.
    ///
    /// # Panics
    /// If the listener cannot be created.
    #[must_use]
    pub fn v4() -> Self {
        Self::bind(SocketAddr::from((Ipv4Addr::LOCALHOST, 0)))
            .unwrap_or_else(|e| panic!("sink on 127.0.0.1: {e}"))
    }

    /// A sink on `[::1]`, on a free port.
    ///
    /// # Panics
    /// If the listener cannot be created (no IPv6 loopback).
    #[must_use]
    pub fn v6() -> Self {
        Self::bind(SocketAddr::from((Ipv6Addr::LOCALHOST, 0)))
            .unwrap_or_else(|e| panic!("sink on [::1]: {e}"))
    }

    /// A sink on `addr`.
    ///
    /// # Errors
    /// If binding or configuring the listener fails.
    pub fn bind(addr: SocketAddr) -> std::io::Result<Self> {
        let listener = TcpListener::bind(addr)?;
        listener.set_nonblocking(true)?;
        let addr = listener.local_addr()?;
        let shared = Arc::new(Shared::default());
        let accept_shared = Arc::clone(&shared);
        let acceptor = thread::Builder::new()
            .name("sink-accept".into())
            .spawn(move || accept_loop(&listener, &accept_shared))?;
        Ok(Self {
            addr,
            shared,
            acceptor: Some(acceptor),
        })
    }

    /// The address to connect to.
    #[must_use]
    pub const fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Connections accepted so far.
    #[must_use]
    pub fn connections(&self) -> usize {
        lock(&self.shared.conns).len()
    }

    /// Bytes the `i`-th accepted connection has received so far (empty if there is no
    /// such connection).
    #[must_use]
    pub fn received(&self, i: usize) -> Vec<u8> {
        lock(&self.shared.conns)
            .get(i)
            .map(|c| c.data.clone())
            .unwrap_or_default()
    }

    /// Whether the `i`-th connection has ended (the peer closed it, or it was reset).
    #[must_use]
    pub fn closed(&self, i: usize) -> bool {
        lock(&self.shared.conns).get(i).is_some_and(|c| c.closed)
    }

    /// How connection `i` ended: `Some(true)` with a clean end of stream (the peer's
    /// FIN), `Some(false)` with a reset (or another read error), `None` while open or
    /// ended by the sink itself.
    #[must_use]
    pub fn ended_cleanly(&self, i: usize) -> Option<bool> {
        lock(&self.shared.conns).get(i).and_then(|c| c.clean_end)
    }

    /// Waits until `n` connections were accepted; returns whether they were.
    #[must_use]
    pub fn wait_connections(&self, n: usize, timeout: Duration) -> bool {
        self.wait_until(timeout, |conns| conns.len() >= n)
    }

    /// Waits until the `i`-th connection has received at least `n` bytes; returns
    /// whether it has.
    #[must_use]
    pub fn wait_bytes(&self, i: usize, n: usize, timeout: Duration) -> bool {
        self.wait_until(timeout, |conns| {
            conns.get(i).is_some_and(|c| c.data.len() >= n)
        })
    }

    /// Waits until the `i`-th connection has ended; returns whether it has.
    #[must_use]
    pub fn wait_closed(&self, i: usize, timeout: Duration) -> bool {
        self.wait_until(timeout, |conns| conns.get(i).is_some_and(|c| c.closed))
    }

    /// Stops (`true`) or resumes (`false`) reading, so that the sender's socket
    /// buffers fill up and its writes block.
    pub fn pause_reading(&self, paused: bool) {
        self.shared.paused.store(paused, Ordering::Release);
    }

    /// Closes the `i`-th connection abortively (`SO_LINGER` 0: the peer sees a reset)
    /// and waits up to 2 s for that to happen.
    pub fn reset(&self, i: usize) {
        if let Some(c) = lock(&self.shared.conns).get_mut(i) {
            c.reset_requested = true;
        }
        let _ = self.wait_closed(i, Duration::from_secs(2));
    }

    fn wait_until(&self, timeout: Duration, done: impl Fn(&Vec<Conn>) -> bool) -> bool {
        let deadline = Instant::now() + timeout;
        let mut conns = lock(&self.shared.conns);
        while !done(&conns) {
            let remaining = deadline.saturating_duration_since(Instant::now());
            if remaining.is_zero() {
                return false;
            }
            conns = self
                .shared
                .cv
                .wait_timeout(conns, remaining)
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .0;
        }
        true
    }
}

impl Drop for Sink {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::Release);
        if let Some(acceptor) = self.acceptor.take() {
            let _ = acceptor.join();
        }
        let readers = std::mem::take(&mut *lock(&self.shared.readers));
        for r in readers {
            let _ = r.join();
        }
    }
}

fn accept_loop(listener: &TcpListener, shared: &Arc<Shared>) {
    while !shared.stop.load(Ordering::Acquire) {
        match listener.accept() {
            Ok((stream, _)) => {
                let index = {
                    let mut conns = lock(&shared.conns);
                    conns.push(Conn::default());
                    conns.len() - 1
                };
                shared.cv.notify_all();
                let reader_shared = Arc::clone(shared);
                let spawned = thread::Builder::new()
                    .name("sink-read".into())
                    .spawn(move || read_loop(stream, index, &reader_shared));
                if let Ok(handle) = spawned {
                    lock(&shared.readers).push(handle);
                }
            }
            Err(_) => thread::sleep(POLL),
        }
    }
}

fn read_loop(stream: TcpStream, index: usize, shared: &Shared) {
    let configured = stream
        .set_nonblocking(false)
        .and_then(|()| stream.set_read_timeout(Some(POLL)));
    let mut buf = vec![0u8; 64 * 1024];
    let mut reader = &stream;
    let mut open = configured.is_ok();
    while open && !shared.stop.load(Ordering::Acquire) {
        if lock(&shared.conns)[index].reset_requested {
            abort_on_close(&stream);
            break;
        }
        if shared.paused.load(Ordering::Acquire) {
            thread::sleep(POLL);
            continue;
        }
        match reader.read(&mut buf) {
            Ok(0) => {
                lock(&shared.conns)[index].clean_end = Some(true);
                open = false;
            }
            Ok(n) => {
                lock(&shared.conns)[index].data.extend_from_slice(&buf[..n]);
                shared.cv.notify_all();
            }
            Err(e)
                if matches!(
                    e.kind(),
                    ErrorKind::WouldBlock | ErrorKind::TimedOut | ErrorKind::Interrupted
                ) => {}
            Err(_) => {
                lock(&shared.conns)[index].clean_end = Some(false);
                open = false;
            }
        }
    }
    drop(stream);
    lock(&shared.conns)[index].closed = true;
    shared.cv.notify_all();
}

/// Makes closing `stream` send a reset (a zero linger), or shuts it down where that is
/// not possible.
fn abort_on_close(stream: &TcpStream) {
    if !crate::reset::zero_linger(stream) {
        let _ = stream.shutdown(Shutdown::Both);
    }
}

#[cfg(test)]
mod tests {
    use std::io::Write;
    use std::net::TcpStream;
    use std::time::Duration;

    use super::Sink;

    const WAIT: Duration = Duration::from_secs(5);

    #[test]
    fn sink_records_bytes_and_resets_connections() {
        let sink = Sink::v4();
        let mut a = TcpStream::connect(sink.addr()).unwrap_or_else(|e| panic!("{e}"));
        assert!(sink.wait_connections(1, WAIT));
        a.write_all(b"hello").unwrap_or_else(|e| panic!("{e}"));
        assert!(sink.wait_bytes(0, 5, WAIT));
        assert_eq!(sink.received(0), b"hello");
        sink.reset(0);
        assert!(sink.closed(0));
        // After the reset, writes fail (the first may still be buffered locally).
        let failed = (0..50).any(|_| {
            std::thread::sleep(Duration::from_millis(5));
            a.write_all(&[0; 1024]).is_err()
        });
        assert!(failed, "writes kept succeeding after a reset");
        assert!(sink.received(1).is_empty());
    }
}
