//! Registration with WSK and the connections made through it.
//!
//! `WskRegister` happens at start-up (it does not wait for the provider). The provider
//! NPI is captured lazily, by the first connect, with a bounded wait — never in
//! `DriverEntry` (DESIGN.md rule 7) — and released at shutdown, after every connection
//! is closed, right before `WskDeregister` (rule 8).

use alloc::vec::Vec;
use core::cell::UnsafeCell;
use core::net::SocketAddr;
use core::ptr::{self, NonNull};
use core::sync::atomic::{AtomicU8, Ordering};
use core::time::Duration;

use wsksend_ffi::{
    IPPROTO_TCP, SOCK_STREAM, WSK_CLIENT_DISPATCH, WSK_CLIENT_NPI, WSK_FLAG_CONNECTION_SOCKET,
    WSK_PROVIDER_CONNECTION_DISPATCH, WSK_PROVIDER_NPI, WSK_REGISTRATION, WSK_SOCKET,
    WSK_VERSION_1_0, WskCaptureProviderNPI, WskDeregister, WskRegister, WskReleaseProviderNPI,
};

use crate::connection::{CloseMode, ConnectOptions, Connection};
use crate::control::{self, RawAddr};
use crate::error::to_result;
use crate::pool::PoolBox;
use crate::sync::{Event, SpinLock};
use crate::{Error, Result};

/// Longest connect timeout honoured (longer ones are capped).
pub const MAX_CONNECT_TIMEOUT: Duration = Duration::from_secs(60);

/// How long the first connect waits for the WSK provider to become available.
pub const CAPTURE_WAIT_MS: u32 = 5_000;

static CLIENT_DISPATCH: WSK_CLIENT_DISPATCH = WSK_CLIENT_DISPATCH {
    Version: WSK_VERSION_1_0,
    Reserved: 0,
    WskClientEvent: None,
};

const NPI_NONE: u8 = 0;
const NPI_CAPTURING: u8 = 1;
const NPI_CAPTURED: u8 = 2;

/// A WSK client registration.
///
/// # Invariants
/// Lives in pool at a fixed address (it is only handed out as `PoolBox<Client>`), so
/// `registration` and `client_npi` never move between `WskRegister` and
/// `WskDeregister`. `npi` is valid while `npi_state` is `NPI_CAPTURED`.
pub struct Client {
    client_npi: WSK_CLIENT_NPI,
    registration: UnsafeCell<WSK_REGISTRATION>,
    npi: UnsafeCell<WSK_PROVIDER_NPI>,
    npi_state: AtomicU8,
    npi_ready: Event,
    connections: SpinLock<Vec<Connection>>,
    /// Polled by teardown waits (allocated up front, so teardown never fails to wait).
    tick: Event,
}

// SAFETY: the registration and NPI are used by WSK from any thread; our writes to them
// happen once, before publication through `npi_state` (Release/Acquire).
unsafe impl Sync for Client {}
// SAFETY: as above.
unsafe impl Send for Client {}

impl Client {
    /// `WskRegister`. Does not wait for the provider.
    ///
    /// # Errors
    /// `WskRegister`'s status; `STATUS_INSUFFICIENT_RESOURCES`.
    ///
    /// # IRQL
    /// `PASSIVE_LEVEL`.
    pub fn register() -> Result<PoolBox<Self>> {
        let client = PoolBox::try_new(Self {
            client_npi: WSK_CLIENT_NPI {
                ClientContext: ptr::null_mut(),
                Dispatch: &raw const CLIENT_DISPATCH,
            },
            registration: UnsafeCell::new(WSK_REGISTRATION::zeroed()),
            npi: UnsafeCell::new(WSK_PROVIDER_NPI {
                Client: ptr::null_mut(),
                Dispatch: ptr::null(),
            }),
            npi_state: AtomicU8::new(NPI_NONE),
            npi_ready: Event::notification()?,
            connections: SpinLock::new(Vec::new()),
            tick: Event::notification()?,
        })?;
        // SAFETY: both structures live in pool at a fixed address until `shutdown`
        // deregisters (type invariant).
        to_result(unsafe { WskRegister(&raw const client.client_npi, client.registration.get()) })?;
        Ok(client)
    }

    /// The provider NPI, captured on first use with a bounded wait.
    ///
    /// # IRQL
    /// `PASSIVE_LEVEL`.
    fn provider(&self) -> Result<&WSK_PROVIDER_NPI> {
        loop {
            match self.npi_state.compare_exchange(
                NPI_NONE,
                NPI_CAPTURING,
                Ordering::AcqRel,
                Ordering::Acquire,
            ) {
                Ok(_) => {
                    // SAFETY: we are the only writer (state CAPTURING); the registration
                    // is live; the wait is bounded.
                    let status = unsafe {
                        WskCaptureProviderNPI(
                            self.registration.get(),
                            CAPTURE_WAIT_MS,
                            self.npi.get(),
                        )
                    };
                    let captured = to_result(status);
                    self.npi_state.store(
                        if captured.is_ok() {
                            NPI_CAPTURED
                        } else {
                            NPI_NONE
                        },
                        Ordering::Release,
                    );
                    self.npi_ready.set();
                    captured.map_err(|_| Error::NOT_READY)?;
                }
                Err(NPI_CAPTURED) => {
                    // SAFETY: published with Release after the capture wrote it.
                    return Ok(unsafe { &*self.npi.get() });
                }
                Err(_) => {
                    // Another thread is capturing: wait for it, bounded.
                    if !self
                        .npi_ready
                        .wait(Duration::from_millis(u64::from(CAPTURE_WAIT_MS) * 2))
                    {
                        return Err(Error::NOT_READY);
                    }
                    if self.npi_state.load(Ordering::Acquire) != NPI_CAPTURED {
                        return Err(Error::NOT_READY);
                    }
                }
            }
        }
    }

    /// Opens a TCP connection to `remote` (IPv4 or IPv6): socket, bind to the wildcard
    /// address of the same family, connect — together bounded by
    /// `options.connect_timeout` (capped at [`MAX_CONNECT_TIMEOUT`]); past it the call
    /// in flight is cancelled, or the socket closed where cancel is not honoured, within
    /// about 100 ms more.
    /// Anything that fails cleans up fully.
    ///
    /// # Errors
    /// The provider's status (for example `STATUS_CONNECTION_REFUSED`),
    /// `STATUS_IO_TIMEOUT`, `STATUS_DEVICE_NOT_READY` when WSK is not available.
    ///
    /// # IRQL
    /// `PASSIVE_LEVEL`.
    pub fn connect(&self, remote: SocketAddr, options: &ConnectOptions) -> Result<Connection> {
        let npi = self.provider()?;
        let limit = options.connect_timeout.min(MAX_CONNECT_TIMEOUT);
        let raw_remote = RawAddr::from_socket_addr(remote);
        // SAFETY: a captured NPI's dispatch table is valid until released at shutdown.
        let provider = unsafe { &*npi.Dispatch };
        let wsk_socket = provider.WskSocket.ok_or(Error::NOT_SUPPORTED)?;
        // Allocated before the socket exists, so that a socket we create can always be
        // closed (an open socket left behind makes WskDeregister wait for ever).
        let closer = control::Call::new()?;
        // One budget for socket, bind and connect: the timeout is an upper bound.
        let mut deadline = control::Deadline::new(limit);
        let created = control::call(&mut deadline, None, &mut || {}, &mut |irp, _| {
            // SAFETY: valid client and IRP; no socket context or dispatch for a socket
            // that receives no events.
            unsafe {
                wsk_socket(
                    npi.Client,
                    raw_remote.family(),
                    SOCK_STREAM,
                    IPPROTO_TCP,
                    WSK_FLAG_CONNECTION_SOCKET,
                    ptr::null_mut(),
                    ptr::null(),
                    ptr::null_mut(),
                    ptr::null_mut(),
                    ptr::null_mut(),
                    irp,
                )
            }
        })?;
        let socket = NonNull::new(created as *mut WSK_SOCKET).ok_or(Error::INVALID_PARAMETER)?;
        let mut guard = SocketGuard {
            socket: Some(socket),
            closer: Some(closer),
        };
        // SAFETY: the socket was just created and stays open until the guard closes it.
        let dispatch = unsafe { connection_dispatch(socket) };
        let bind = dispatch.WskBind.ok_or(Error::NOT_SUPPORTED)?;
        let connect = dispatch.WskConnect.ok_or(Error::NOT_SUPPORTED)?;
        control::call(
            &mut deadline,
            Some(RawAddr::wildcard_of(remote)),
            &mut || {},
            &mut |irp, addr| {
                // SAFETY: open socket, address valid until completion, our IRP.
                unsafe { bind(socket.as_ptr(), addr, 0, irp) }
            },
        )?;
        let connected = control::call(
            &mut deadline,
            Some(raw_remote),
            &mut || {
                // Cancel not honoured (Wine): closing the socket completes the connect.
                guard.close_now();
            },
            &mut |irp, addr| {
                // SAFETY: open, bound socket, address valid until completion, our IRP.
                unsafe { connect(socket.as_ptr(), addr, 0, irp) }
            },
        );
        connected?;
        let socket = guard.socket.ok_or(Error::TIMEOUT)?;
        // SAFETY: a connected connection socket; on success the connection owns it.
        let connection = unsafe { Connection::new(socket, remote, options) }?;
        // The connection closes it from now on.
        guard.socket = None;
        if let Err(e) = self.track(&connection) {
            // Not tracked, so shutdown would never close it: close it now (the socket
            // must not outlive the registration, or WskDeregister never returns).
            let _ = connection.close_abortive();
            return Err(e);
        }
        Ok(connection)
    }

    /// Adds `connection` to the list shutdown closes; the list grows outside its spin
    /// lock (a fallible allocation, never under the lock).
    ///
    /// # Errors
    /// `STATUS_INSUFFICIENT_RESOURCES`.
    fn track(&self, connection: &Connection) -> Result {
        loop {
            let needed = {
                let mut list = self.connections.lock();
                if list.len() < list.capacity() {
                    list.push(connection.clone());
                    return Ok(());
                }
                list.len()
            };
            let mut bigger: Vec<Connection> = Vec::new();
            bigger
                .try_reserve_exact((needed + 1).max(needed * 2).max(4))
                .map_err(|_| Error::NO_RESOURCES)?;
            let old = {
                let mut list = self.connections.lock();
                if bigger.capacity() <= list.len() {
                    continue;
                }
                // Moves handles into reserved capacity: no allocation under the lock.
                bigger.extend(list.drain(..));
                core::mem::replace(&mut *list, bigger)
            };
            drop(old);
        }
    }

    /// Closes `connection` (waiting for its sends) and forgets it.
    ///
    /// # Errors
    /// As [`Connection::close`].
    ///
    /// # IRQL
    /// `PASSIVE_LEVEL`.
    pub fn close(&self, connection: &Connection) -> Result {
        let result = connection.close();
        self.forget(connection);
        result
    }

    /// Closes `connection` abortively (a reset on Windows) and forgets it.
    ///
    /// # Errors
    /// As [`Connection::close_abortive`].
    ///
    /// # IRQL
    /// `PASSIVE_LEVEL`.
    pub fn close_abortive(&self, connection: &Connection) -> Result {
        let result = connection.close_abortive();
        self.forget(connection);
        result
    }

    fn forget(&self, connection: &Connection) {
        let removed = {
            let mut list = self.connections.lock();
            list.iter()
                .position(|c| Connection::ptr_eq(c, connection))
                .map(|i| list.swap_remove(i))
        };
        drop(removed);
    }

    /// Starts closing every connection with `mode` without waiting, so that callers
    /// blocked on them return; [`Self::shutdown`] then waits.
    ///
    /// # IRQL
    /// <= `DISPATCH_LEVEL`.
    pub fn begin_close_all(&self, mode: CloseMode) {
        // No allocation: each close is started under the list's lock (begin_close does
        // not wait).
        let list = self.connections.lock();
        for connection in list.iter() {
            connection.begin_close(mode);
        }
    }

    /// The event teardown polls with (nobody signals it).
    pub(crate) fn tick(&self) -> &Event {
        &self.tick
    }

    /// Connections currently open.
    #[must_use]
    pub fn connection_count(&self) -> usize {
        self.connections.lock().len()
    }

    /// Closes every connection, releases the NPI and deregisters (which waits for the
    /// provider to let go of everything).
    ///
    /// # IRQL
    /// `PASSIVE_LEVEL`.
    ///
    /// Returns only when every connection is closed and every shared engine object is
    /// freed ([`crate::rundown`]), so that no completion path of ours still holds
    /// IRPs or pool (DESIGN.md rule 12). The waits are bounded: if a connection did
    /// not close within [`crate::connection::CLOSE_WAIT`] (a provider that never
    /// completes its IRPs), deregistering would wait for ever, so the registration
    /// and the client are left allocated instead; the result says so.
    ///
    /// # Errors
    /// `STATUS_IO_TIMEOUT` when something was left allocated (see above).
    ///
    /// # IRQL
    /// `PASSIVE_LEVEL`.
    pub fn shutdown(this: PoolBox<Self>) -> Result {
        this.begin_close_all(CloseMode::Graceful);
        let all = core::mem::take(&mut *this.connections.lock());
        let mut stuck = false;
        for connection in &all {
            stuck |= connection.close().is_err();
        }
        drop(all);
        if stuck {
            let _ = PoolBox::into_raw(this);
            return Err(Error::TIMEOUT);
        }
        if this.npi_state.load(Ordering::Acquire) == NPI_CAPTURED {
            // SAFETY: captured above and no provider call is in progress any more.
            unsafe { WskReleaseProviderNPI(this.registration.get()) };
        }
        // SAFETY: registered in `register`; every socket is closed.
        unsafe { WskDeregister(this.registration.get()) };
        // Connections closed by others (kernel-API handles, the dispatcher) may still
        // be finishing their completion paths: wait for the last object to go.
        let idle = crate::rundown::wait_idle(&this.tick, crate::connection::CLOSE_WAIT);
        drop(this);
        if idle { Ok(()) } else { Err(Error::TIMEOUT) }
    }
}

/// Closes a socket that no connection owns yet, if still set, when dropped, with a
/// call allocated before the socket was created (so closing cannot fail for memory).
struct SocketGuard {
    socket: Option<NonNull<WSK_SOCKET>>,
    closer: Option<control::Call>,
}

impl SocketGuard {
    /// Closes the socket now (once).
    fn close_now(&mut self) {
        if let (Some(socket), Some(closer)) = (self.socket.take(), self.closer.take()) {
            close_socket(socket, closer);
        }
    }
}

impl Drop for SocketGuard {
    fn drop(&mut self) {
        self.close_now();
    }
}

/// `WskCloseSocket`, waited for (bounded), with a call prepared ahead.
fn close_socket(socket: NonNull<WSK_SOCKET>, closer: control::Call) {
    // SAFETY: the socket is open until the close below.
    let dispatch = unsafe { connection_dispatch(socket) };
    let Some(close) = dispatch.WskCloseSocket else {
        return;
    };
    let mut deadline = control::Deadline::new(Duration::from_secs(30));
    let _ = closer.run(&mut deadline, None, &mut || {}, &mut |irp, _| {
        // SAFETY: open socket, our IRP; the socket is not used after this.
        unsafe { close(socket.as_ptr(), irp) }
    });
}

/// The dispatch table of an open connection socket.
///
/// # Safety
/// `socket` is an open connection socket; the table is used only while it stays open.
unsafe fn connection_dispatch<'a>(
    socket: NonNull<WSK_SOCKET>,
) -> &'a WSK_PROVIDER_CONNECTION_DISPATCH {
    // SAFETY: `socket` is an open socket the provider created (caller).
    let table = unsafe { socket.as_ref() }.Dispatch;
    // SAFETY: a connection socket's dispatch is the provider's connection table, valid
    // while the socket is open.
    unsafe { &*table.cast::<WSK_PROVIDER_CONNECTION_DISPATCH>() }
}
