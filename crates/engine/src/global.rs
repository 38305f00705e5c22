//! The driver-wide client, for the front ends and the exported kernel API.
//!
//! Callers reach it through [`with_client`], which holds a reference that [`stop`]
//! waits for (our own rundown protection: Wine 8 stubs the `Ex*RundownProtection`
//! routines). `start` runs in `DriverEntry` (it only registers); `stop` runs at unload.
//!
//! Every caller's wait is bounded ([`MAX_CALL`] covers the longest: a blocking send or
//! connect with its largest timeout, then cancel and close), and `stop` first starts
//! closing every connection, so blocked callers return early. If a caller is still
//! inside after the bound, the client is left allocated rather than freed under it.

use core::ptr;
use core::sync::atomic::{AtomicPtr, AtomicUsize, Ordering};
use core::time::Duration;

use wsksend_ffi::DEVICE_OBJECT;

use crate::client::Client;
use crate::connection::{CANCEL_GRACE, CLOSE_WAIT, CloseMode, Connection, MAX_SYNC_WAIT};
use crate::pool::PoolBox;
use crate::{Error, Result};

/// How long `stop` lets blocked callers finish on gracefully closing connections
/// before it resets them.
pub const STOP_GRACE: Duration = Duration::from_secs(1);

/// The longest a caller of [`with_client`] can take: a blocking call's capped wait,
/// then the cancel grace and the close wait that follow a timeout.
pub const MAX_CALL: Duration = Duration::from_secs(
    MAX_SYNC_WAIT.as_secs() + CANCEL_GRACE.as_secs() + 2 * CLOSE_WAIT.as_secs(),
);

static CLIENT: AtomicPtr<Client> = AtomicPtr::new(ptr::null_mut());

/// `users << 1 | CLOSED`. Starts closed: nothing is available before `start`.
static USERS: AtomicUsize = AtomicUsize::new(CLOSED);
const CLOSED: usize = 1;
const ONE: usize = 2;

/// Registers with WSK and opens the client to callers. `device` (the driver's device
/// object, or null) is what `IoSetCompletionRoutineEx` references while our completion
/// routines run, so the image outlives them ([`crate::irp::set_device`]).
///
/// # Errors
/// `WskRegister`'s status; `STATUS_DEVICE_NOT_READY` if already started.
///
/// # Safety
/// `device` is null or this driver's device object, deleted only after [`stop`].
///
/// # IRQL
/// `PASSIVE_LEVEL`.
pub unsafe fn start(device: *mut DEVICE_OBJECT) -> Result {
    if !CLIENT.load(Ordering::Acquire).is_null() {
        return Err(Error::NOT_READY);
    }
    // SAFETY: forwarded from the caller's contract.
    unsafe { crate::irp::set_device(device) };
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

/// Closes the client to new callers, starts closing every connection (so blocked
/// callers return), waits for current callers (at most [`MAX_CALL`]), closes every
/// connection, releases the provider, deregisters, and waits until every engine object
/// is freed. Returns only when no engine code of ours is left running on a completion
/// path (the return of a completion routine itself is covered by
/// `IoSetCompletionRoutineEx`).
///
/// # Errors
/// `STATUS_IO_TIMEOUT` when a caller or the provider did not finish within its bound:
/// what they use is then left allocated (never freed under them) and the failure
/// should be logged.
///
/// # IRQL
/// `PASSIVE_LEVEL`.
pub fn stop() -> Result {
    USERS.fetch_or(CLOSED, Ordering::AcqRel);
    let raw = CLIENT.load(Ordering::Acquire);
    if raw.is_null() {
        return Ok(());
    }
    // SAFETY: published by `start`; freed only below, by us.
    let client = unsafe { &*raw };
    client.begin_close_all(CloseMode::Graceful);
    // Poll the user count with the client's own tick event (allocated at start, so
    // this wait cannot fail); callers hold the reference only for one call.
    let step = Duration::from_millis(5);
    let mut waited = Duration::ZERO;
    while USERS.load(Ordering::Acquire) >> 1 != 0 {
        if waited >= MAX_CALL {
            // A caller is still inside: leave the client to it.
            return Err(Error::TIMEOUT);
        }
        client.tick().wait(step);
        waited += step;
        // Connections opened meanwhile (a connect that was in progress) close too;
        // after STOP_GRACE a caller still blocked on a connection gets it reset.
        client.begin_close_all(if waited >= STOP_GRACE {
            CloseMode::Abortive
        } else {
            CloseMode::Graceful
        });
    }
    CLIENT.store(ptr::null_mut(), Ordering::Release);
    // SAFETY: `start` made it with `into_raw`; no user holds it any more.
    Client::shutdown(unsafe { PoolBox::from_raw(raw) })
}

/// Closes `connection` and forgets it in the client; while the driver is stopping (or
/// before it started) closes it directly. Its pending sends complete first.
///
/// # Errors
/// As [`Connection::close`](crate::connection::Connection::close).
///
/// # IRQL
/// `PASSIVE_LEVEL`.
pub fn close(connection: &Connection) -> Result {
    match with_client(|client| client.close(connection)) {
        Err(e) if e == Error::NOT_READY => connection.close(),
        other => other,
    }
}

/// As [`close`], abortively (`WskCloseSocket` at once: a reset on Windows).
///
/// # Errors
/// As [`Connection::close_abortive`].
///
/// # IRQL
/// `PASSIVE_LEVEL`.
pub fn close_abortive(connection: &Connection) -> Result {
    match with_client(|client| client.close_abortive(connection)) {
        Err(e) if e == Error::NOT_READY => connection.close_abortive(),
        other => other,
    }
}
