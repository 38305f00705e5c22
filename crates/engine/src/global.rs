//! The driver-wide client, for the front ends and the exported kernel API.
//!
//! Callers reach it through [`with_client`], which holds a reference that [`stop`]
//! waits for (our own rundown protection: Wine 8 stubs the `Ex*RundownProtection`
//! routines). `start` runs in `DriverEntry` (it only registers); `stop` runs at unload.

use core::ptr;
use core::sync::atomic::{AtomicPtr, AtomicUsize, Ordering};
use core::time::Duration;

use crate::client::Client;
use crate::pool::PoolBox;
use crate::sync::Event;
use crate::{Error, Result};

static CLIENT: AtomicPtr<Client> = AtomicPtr::new(ptr::null_mut());

/// `users << 1 | CLOSED`. Starts closed: nothing is available before `start`.
static USERS: AtomicUsize = AtomicUsize::new(CLOSED);
const CLOSED: usize = 1;
const ONE: usize = 2;

/// Registers with WSK and opens the client to callers.
///
/// # Errors
/// `WskRegister`'s status; `STATUS_INVALID_DEVICE_STATE`-like `NOT_READY` if already
/// started.
///
/// # IRQL
/// `PASSIVE_LEVEL`.
pub fn start() -> Result {
    if !CLIENT.load(Ordering::Acquire).is_null() {
        return Err(Error::NOT_READY);
    }
    let client = Client::register()?;
    CLIENT.store(PoolBox::into_raw(client), Ordering::Release);
    USERS.store(0, Ordering::Release);
    Ok(())
}

/// Runs `f` with the client, holding a reference that `stop` waits for.
///
/// # Errors
/// `STATUS_DEVICE_NOT_READY` before `start` or once `stop` has begun; else `f`'s result.
pub fn with_client<T>(f: impl FnOnce(&Client) -> Result<T>) -> Result<T> {
    let mut current = USERS.load(Ordering::Acquire);
    loop {
        if current & CLOSED != 0 {
            return Err(Error::NOT_READY);
        }
        match USERS.compare_exchange_weak(
            current,
            current + ONE,
            Ordering::AcqRel,
            Ordering::Acquire,
        ) {
            Ok(_) => break,
            Err(seen) => current = seen,
        }
    }
    let client = CLIENT.load(Ordering::Acquire);
    // SAFETY: while we hold a user reference `stop` does not free the client, and
    // `start` published it before opening USERS.
    let result = f(unsafe { &*client });
    USERS.fetch_sub(ONE, Ordering::AcqRel);
    result
}

/// Closes the client to new callers, waits for current ones, closes every connection,
/// releases the provider and deregisters.
///
/// # IRQL
/// `PASSIVE_LEVEL`.
pub fn stop() {
    USERS.fetch_or(CLOSED, Ordering::AcqRel);
    // Poll with a short sleep: callers hold the reference only for one call.
    if let Ok(tick) = Event::notification() {
        let mut waited = Duration::ZERO;
        while USERS.load(Ordering::Acquire) >> 1 != 0 && waited < Duration::from_secs(60) {
            tick.wait(Duration::from_millis(10));
            waited += Duration::from_millis(10);
        }
    }
    let client = CLIENT.swap(ptr::null_mut(), Ordering::AcqRel);
    if !client.is_null() {
        // SAFETY: `start` made it with `into_raw`; no user holds it any more.
        Client::shutdown(unsafe { PoolBox::from_raw(client) });
    }
}

/// Closes `connection` and forgets it in the client; while the driver is stopping (or
/// before it started) closes it directly. Its pending sends complete first.
///
/// # Errors
/// As [`Connection::close`](crate::connection::Connection::close).
///
/// # IRQL
/// `PASSIVE_LEVEL`.
pub fn close(connection: &alloc::sync::Arc<crate::connection::Connection>) -> Result {
    match with_client(|client| client.close(connection)) {
        Err(e) if e == Error::NOT_READY => connection.close(),
        other => other,
    }
}
