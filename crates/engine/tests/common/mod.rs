//! Shared helpers of the engine's host tests (run against the kernel model).
#![allow(dead_code, reason = "each test file uses a subset")]

use std::ffi::c_void;
use std::net::SocketAddr;
use std::ptr::{self, NonNull};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use wsksend_engine::client::Client;
use wsksend_engine::connection::{Completion, ConnectOptions, Connection, SendResult};
use wsksend_engine::pool::PoolBox;
use wsksend_ffi::{IoAllocateMdl, IoFreeMdl, MDL, MmBuildMdlForNonPagedPool};
pub use wsksend_kernel_model as model;

/// Completions collected by tag, with a wait.
#[derive(Clone, Default)]
pub struct Results {
    inner: Arc<(Mutex<Vec<Tagged>>, Condvar)>,
}

/// A completion's tag and result.
pub type Tagged = (u64, SendResult);

impl Results {
    /// A completion that records `tag`.
    pub fn completion(&self, tag: u64) -> Completion {
        let inner = Arc::clone(&self.inner);
        Completion::Closure(Box::new(move |r| {
            let (lock, cv) = &*inner;
            lock.lock().unwrap().push((tag, r));
            cv.notify_all();
        }))
    }

    /// Waits until `n` completions arrived; returns them in arrival order.
    pub fn wait(&self, n: usize, limit: Duration) -> Vec<Tagged> {
        let (lock, cv) = &*self.inner;
        let deadline = Instant::now() + limit;
        let mut got = lock.lock().unwrap();
        while got.len() < n {
            let left = deadline.saturating_duration_since(Instant::now());
            assert!(
                !left.is_zero(),
                "only {} of {n} completions after {limit:?}",
                got.len()
            );
            got = cv.wait_timeout(got, left).unwrap().0;
        }
        got.clone()
    }

    /// Completions so far.
    pub fn count(&self) -> usize {
        self.inner.0.lock().unwrap().len()
    }
}

/// A registered client and a connection to `sink`.
pub fn connect(sink: SocketAddr, options: &ConnectOptions) -> (PoolBox<Client>, Connection) {
    let client = Client::register().expect("WskRegister");
    let conn = client.connect(sink, options).expect("connect");
    (client, conn)
}

/// Closes `conn` and shuts the client down; the connection's memory goes with the
/// last reference, which the test hands over here (before the checker looks for leaks).
pub fn teardown(client: PoolBox<Client>, conn: Connection) {
    client.close(&conn).expect("close");
    drop(conn);
    Client::shutdown(client).expect("shutdown");
}

/// An MDL chain over `parts` (each described as nonpaged, locked), owned by the test.
pub struct TestChain {
    pub mdls: Vec<*mut MDL>,
}

impl TestChain {
    pub fn new(parts: &[&[u8]]) -> Self {
        let mut mdls: Vec<*mut MDL> = Vec::new();
        for p in parts {
            let len = u32::try_from(p.len()).unwrap();
            // SAFETY: describing test memory that outlives the chain.
            let mdl = unsafe {
                IoAllocateMdl(
                    p.as_ptr().cast_mut().cast::<c_void>(),
                    len,
                    0,
                    0,
                    ptr::null_mut(),
                )
            };
            assert!(!mdl.is_null());
            // SAFETY: a fresh MDL over memory the test keeps alive (the model's "nonpaged").
            unsafe { MmBuildMdlForNonPagedPool(mdl) };
            if let Some(&prev) = mdls.last() {
                // SAFETY: `prev` is a live MDL of this chain.
                unsafe { (*prev).Next = mdl };
            }
            mdls.push(mdl);
        }
        Self { mdls }
    }

    pub fn head(&self) -> NonNull<MDL> {
        NonNull::new(self.mdls[0]).unwrap()
    }
}

impl Drop for TestChain {
    fn drop(&mut self) {
        for &m in &self.mdls {
            // SAFETY: ours; the send that used it has completed (tests wait first).
            unsafe { IoFreeMdl(m) };
        }
    }
}

/// Deterministic pseudo-random numbers (xorshift64*), seeded per test case.
pub struct Rng(pub u64);

impl Rng {
    pub fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    pub fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }
}

/// `n` bytes of a recognisable pattern starting at `from`.
pub fn bytes(from: usize, n: usize) -> Vec<u8> {
    (from..from + n).map(|i| (i * 31 % 251) as u8).collect()
}
