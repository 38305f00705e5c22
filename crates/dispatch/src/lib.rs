//! The IOCTL dispatcher both front ends share.
//!
//! A front end (KMDF `EvtIoDeviceControl` or a WDM `IRP_MJ_DEVICE_CONTROL` routine)
//! translates its request object into a [`Request`], calls
//! [`Dispatcher::device_control`], and either completes the request with the returned
//! [`Outcome`] or leaves it pending; pending requests are completed through the front
//! end's [`PendingIo`] token. Parsing, validation, the per-file connection table and
//! the meaning of each code live here, so the front ends stay thin and the logic is
//! tested on the host.
//!
//! Connection handles are opaque 64-bit ids, checked against the file that created
//! them; no kernel pointer ever reaches user mode.
#![cfg_attr(not(test), no_std)]
#![deny(unsafe_code)]

extern crate alloc;

mod handshake;
mod layout;

use alloc::vec::Vec;
use core::ptr::NonNull;
use core::sync::atomic::{AtomicU64, Ordering};
use core::time::Duration;

use wsksend_engine::connection::{
    CancelOutcome, CloseMode, Completion, ConnectOptions, Connection, Payload, Refused, SendId,
    SendResult,
};
use wsksend_engine::global;
use wsksend_engine::mdl::Segment;
use wsksend_engine::sync::SpinLock;
use wsksend_ffi::status::{
    STATUS_BUFFER_TOO_SMALL, STATUS_CANCELLED, STATUS_INSUFFICIENT_RESOURCES,
    STATUS_INVALID_DEVICE_REQUEST, STATUS_INVALID_HANDLE, STATUS_INVALID_PARAMETER,
    STATUS_NOT_SUPPORTED, STATUS_REVISION_MISMATCH, STATUS_SUCCESS,
};
use wsksend_ffi::{MDL, NT_SUCCESS, NTSTATUS, WSK_FLAG_NODELAY};
use wsksend_protocol::{
    CONNECT_NODELAY, ConnectReply, ConnectRequest, HandleRequest, Ioctl, MAX_PENDING_PER_HANDLE,
    MAX_SEGMENTS, SEND_NODELAY, SendError, SendRequest, Stats, VersionInfo, WireError,
};

pub use handshake::CancelHandshake;
pub use layout::BufferLayout;
pub use wsksend_engine::mdl::Carve;

/// How a request ends.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Outcome {
    /// Final status of the request.
    pub status: NTSTATUS,
    /// `IoStatus.Information`: bytes written to the output buffer (or sent).
    pub information: usize,
}

impl Outcome {
    /// A failure that wrote nothing.
    #[must_use]
    pub const fn fail(status: NTSTATUS) -> Self {
        Self {
            status,
            information: 0,
        }
    }

    /// Success with `information` bytes of output.
    #[must_use]
    pub const fn ok(information: usize) -> Self {
        Self {
            status: STATUS_SUCCESS,
            information,
        }
    }
}

/// Identifies an open file (one user-mode handle's file object). Opaque: the front end
/// uses the file object's address or WDF handle value; it never leaves the kernel.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct FileId(pub usize);

impl FileId {
    /// No file object (an IRP a kernel-mode driver built without one): connection
    /// requests from it are refused with `STATUS_INVALID_DEVICE_REQUEST`.
    pub const NONE: Self = Self(0);
}

/// Identifies a pending request, for cancellation.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct RequestId(pub u64);

/// The locked buffer of a `METHOD_IN_DIRECT` request (`Irp->MdlAddress`,
/// `WdfRequestRetrieveOutputWdmMdl`).
#[derive(Clone, Copy, Debug)]
pub struct DirectBuffer {
    /// The I/O manager's MDL, locked until the request completes.
    pub mdl: NonNull<MDL>,
    /// Its length (`OutputBufferLength`).
    pub len: usize,
}

/// A device-control request as the front end hands it over.
pub struct Request<'a, P> {
    /// The file the request came on.
    pub file: FileId,
    /// The IOCTL code.
    pub code: u32,
    /// The system buffer: for `METHOD_BUFFERED` input and output share it (input is
    /// parsed before output is written) and it holds `max(input_len, output_len)`
    /// bytes; for the direct methods it is the input.
    pub system: &'a mut [u8],
    /// Bytes of input in `system`.
    pub input_len: usize,
    /// Bytes of output the caller accepts in `system` (0 for direct methods).
    pub output_len: usize,
    /// The locked second buffer of a direct-method request.
    pub direct: Option<DirectBuffer>,
    /// The front end's token, used only if the request goes asynchronous.
    pub pending: P,
}

/// What the front end does next.
pub enum Disposition<P> {
    /// Complete the request now with this outcome (the token is handed back).
    Complete(Outcome, P),
    /// The dispatcher owns the token and completes it (perhaps already did): the WDM
    /// front end returns `STATUS_PENDING`.
    Pending,
}

/// A front end's handle to one request that may complete asynchronously.
pub trait PendingIo: Send + Sized + 'static {
    /// Called before the dispatcher starts asynchronous work: prepare for asynchronous
    /// completion (`IoMarkIrpPending`) and arm cancellation, which must lead to
    /// [`Dispatcher::cancel`]`(file, id)`. Returns false if the request is already
    /// cancelled; the dispatcher then completes it with `STATUS_CANCELLED`.
    fn arm(&mut self, file: FileId, id: RequestId) -> bool;

    /// Disarms cancellation and completes the request. Called exactly once, at
    /// `IRQL <= DISPATCH_LEVEL`, possibly before `device_control` has returned.
    fn complete(self, outcome: Outcome);
}

/// Front-end choices.
#[derive(Clone, Copy, Debug)]
pub struct Config {
    /// How multi-segment sends carve the direct buffer into an MDL chain.
    pub carve: Carve,
    /// How long closing a connection (CLOSE, handle cleanup, unload) may stay
    /// graceful before it resets it ([`ConnectOptions::linger`]).
    pub linger: Duration,
}

impl Config {
    /// The front ends' configuration with `carve`: the engine's default linger.
    #[must_use]
    pub const fn new(carve: Carve) -> Self {
        Self {
            carve,
            linger: wsksend_engine::connection::GRACEFUL_WAIT,
        }
    }
}

struct Entry {
    handle: u64,
    file: FileId,
    connection: Connection,
}

/// What the front end must do after [`Dispatcher::cancel`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[must_use]
pub enum CancelAction {
    /// Nothing more.
    Done,
    /// The provider cannot cancel the send, so its connection must be closed; that may
    /// block in some providers (Wine's `WskCloseSocket` waits for its workers), so it
    /// must not happen in the cancel routine. Queue a work item that calls
    /// [`Dispatcher::run_deferred`] at `PASSIVE_LEVEL`.
    RunDeferred,
}

struct PendingSend {
    id: RequestId,
    file: FileId,
    handle: u64,
    send: Option<SendId>,
    cancel_requested: bool,
}

/// Driver-wide counters of connections that are closed already (live ones are summed
/// from their own counters).
struct Closed {
    sends: u64,
    bytes: u64,
    errors: u64,
}

/// The driver-wide dispatcher state.
pub struct Dispatcher<P: PendingIo> {
    config: Config,
    connections: SpinLock<Vec<Entry>>,
    pending: SpinLock<Vec<PendingSend>>,
    closed: SpinLock<Closed>,
    aborts: SpinLock<Vec<Connection>>,
    next_handle: AtomicU64,
    next_request: AtomicU64,
    _token: core::marker::PhantomData<fn(P)>,
}

fn wire_status(e: WireError) -> NTSTATUS {
    match e {
        WireError::Truncated => STATUS_BUFFER_TOO_SMALL,
        WireError::BadVersion => STATUS_REVISION_MISMATCH,
        WireError::Malformed => STATUS_INVALID_PARAMETER,
    }
}

fn send_status(e: SendError) -> NTSTATUS {
    match e {
        SendError::Wire(w) => wire_status(w),
        SendError::UnsupportedFlags => STATUS_NOT_SUPPORTED,
        SendError::BadSegments => STATUS_INVALID_PARAMETER,
    }
}

impl<P: PendingIo> Dispatcher<P> {
    /// A dispatcher with no connections (usable in a `static`).
    #[must_use]
    pub const fn new(config: Config) -> Self {
        Self {
            config,
            connections: SpinLock::new(Vec::new()),
            pending: SpinLock::new(Vec::new()),
            closed: SpinLock::new(Closed {
                sends: 0,
                bytes: 0,
                errors: 0,
            }),
            aborts: SpinLock::new(Vec::new()),
            next_handle: AtomicU64::new(1),
            next_request: AtomicU64::new(1),
            _token: core::marker::PhantomData,
        }
    }

    /// Handles one `IRP_MJ_DEVICE_CONTROL` request.
    ///
    /// # IRQL
    /// `PASSIVE_LEVEL`.
    pub fn device_control(&'static self, request: Request<'_, P>) -> Disposition<P> {
        let code = Ioctl::from(request.code);
        if request.file == FileId::NONE
            && matches!(
                code,
                Ioctl::Connect | Ioctl::Send | Ioctl::Close | Ioctl::Abort
            )
        {
            // A kernel-mode sender without a file object: its connections would share
            // one owner that no cleanup ever closes. Kernel callers use the exported
            // API (`Wsks*`) instead.
            return Disposition::Complete(
                Outcome::fail(STATUS_INVALID_DEVICE_REQUEST),
                request.pending,
            );
        }
        if code == Ioctl::Send {
            return self.send(request);
        }
        let input_len = request.input_len.min(request.system.len());
        let output_len = request.output_len;
        let outcome = match code {
            Ioctl::GetVersion => emit_out(request.system, output_len, |out| {
                VersionInfo::current().emit(out)
            }),
            Ioctl::Connect => self.connect(request.file, request.system, input_len, output_len),
            Ioctl::Close => self.close(request.file, &request.system[..input_len], false),
            Ioctl::Abort => self.close(request.file, &request.system[..input_len], true),
            Ioctl::Stats => self.stats(request.file, request.system, input_len, output_len),
            Ioctl::Send | Ioctl::Unknown(_) => Outcome::fail(STATUS_INVALID_DEVICE_REQUEST),
        };
        Disposition::Complete(outcome, request.pending)
    }

    fn connect(
        &self,
        file: FileId,
        system: &mut [u8],
        input_len: usize,
        output_len: usize,
    ) -> Outcome {
        let req = match ConnectRequest::parse(&system[..input_len]) {
            Ok(r) => r,
            Err(e) => return Outcome::fail(wire_status(e)),
        };
        if output_len < ConnectReply::WIRE_SIZE || system.len() < ConnectReply::WIRE_SIZE {
            return Outcome::fail(STATUS_BUFFER_TOO_SMALL);
        }
        let defaults = ConnectOptions::default();
        let options = ConnectOptions {
            nodelay: req.flags & CONNECT_NODELAY != 0,
            max_posted: if req.max_posted == 0 {
                defaults.max_posted
            } else {
                req.max_posted as usize
            },
            connect_timeout: if req.timeout_ms == 0 {
                defaults.connect_timeout
            } else {
                Duration::from_millis(u64::from(req.timeout_ms))
            },
            linger: self.config.linger,
        };
        let connection = match global::with_client(|c| c.connect(req.remote, &options)) {
            Ok(c) => c,
            Err(e) => return Outcome::fail(e.status()),
        };
        let handle = self.next_handle.fetch_add(1, Ordering::Relaxed);
        {
            let mut table = self.connections.lock();
            if table.try_reserve(1).is_err() {
                drop(table);
                let _ = global::close(&connection);
                return Outcome::fail(STATUS_INSUFFICIENT_RESOURCES);
            }
            table.push(Entry {
                handle,
                file,
                connection,
            });
        }
        emit_out(system, output_len, |out| ConnectReply { handle }.emit(out))
    }

    /// The connection `handle` if it belongs to `file`.
    fn lookup(&self, file: FileId, handle: u64) -> Option<Connection> {
        self.connections
            .lock()
            .iter()
            .find(|e| e.handle == handle && e.file == file)
            .map(|e| e.connection.clone())
    }

    /// CLOSE (graceful) and ABORT (`abortive`: a reset at once).
    fn close(&self, file: FileId, input: &[u8], abortive: bool) -> Outcome {
        let req = match HandleRequest::parse(input) {
            Ok(r) => r,
            Err(e) => return Outcome::fail(wire_status(e)),
        };
        let entry = {
            let mut table = self.connections.lock();
            table
                .iter()
                .position(|e| e.handle == req.handle && e.file == file)
                .map(|i| table.swap_remove(i))
        };
        match entry {
            Some(entry) => {
                let mode = if abortive {
                    CloseMode::Abortive
                } else {
                    CloseMode::Graceful
                };
                self.retire(&entry.connection, mode);
                Outcome::ok(0)
            }
            None => Outcome::fail(STATUS_INVALID_HANDLE),
        }
    }

    /// Closes a connection taken out of the table (its pending sends complete) and
    /// keeps its counters.
    fn retire(&self, connection: &Connection, mode: CloseMode) {
        // A close that times out leaves the connection to the provider; its counters
        // are still worth keeping.
        let _ = match mode {
            CloseMode::Graceful => global::close(connection),
            CloseMode::Abortive => global::close_abortive(connection),
        };
        let s = connection.stats();
        let mut closed = self.closed.lock();
        closed.sends += s.sends;
        closed.bytes += s.bytes;
        closed.errors += s.errors;
    }

    fn stats(
        &self,
        file: FileId,
        system: &mut [u8],
        input_len: usize,
        output_len: usize,
    ) -> Outcome {
        let req = match HandleRequest::parse(&system[..input_len]) {
            Ok(r) => r,
            Err(e) => return Outcome::fail(wire_status(e)),
        };
        let stats = if req.handle == 0 {
            let live: Vec<Connection> = self
                .connections
                .lock()
                .iter()
                .map(|e| e.connection.clone())
                .collect();
            let closed = self.closed.lock();
            let mut total = Stats {
                // CAST: a count of live objects.
                connections: live.len() as u64,
                sends: closed.sends,
                bytes: closed.bytes,
                errors: closed.errors,
                in_flight: 0,
            };
            drop(closed);
            for c in &live {
                let s = c.stats();
                total.sends += s.sends;
                total.bytes += s.bytes;
                total.errors += s.errors;
                total.in_flight += s.in_flight;
            }
            total
        } else {
            let Some(c) = self.lookup(file, req.handle) else {
                return Outcome::fail(STATUS_INVALID_HANDLE);
            };
            let s = c.stats();
            Stats {
                connections: 1,
                sends: s.sends,
                bytes: s.bytes,
                errors: s.errors,
                in_flight: s.in_flight,
            }
        };
        emit_out(system, output_len, |out| stats.emit(out))
    }

    fn send(&'static self, request: Request<'_, P>) -> Disposition<P> {
        let Request {
            file,
            system,
            input_len,
            direct,
            mut pending,
            ..
        } = request;
        let input = &system[..input_len.min(system.len())];
        let Some(direct) = direct.filter(|d| d.len > 0) else {
            return Disposition::Complete(Outcome::fail(STATUS_INVALID_PARAMETER), pending);
        };
        let req = match SendRequest::parse(input, direct.len) {
            Ok(r) => r,
            Err(e) => return Disposition::Complete(Outcome::fail(send_status(e)), pending),
        };
        let Some(connection) = self.lookup(file, req.handle) else {
            return Disposition::Complete(Outcome::fail(STATUS_INVALID_HANDLE), pending);
        };
        let mut segments = [Segment { offset: 0, len: 0 }; MAX_SEGMENTS];
        let count = req.segment_count();
        for (slot, s) in segments.iter_mut().zip(req.segments()) {
            *slot = Segment {
                offset: s.offset,
                len: s.len,
            };
        }
        let flags = if req.flags & SEND_NODELAY != 0 {
            WSK_FLAG_NODELAY
        } else {
            0
        };
        // Register the request (limit per file), then arm cancellation.
        let id = RequestId(self.next_request.fetch_add(1, Ordering::Relaxed));
        {
            let mut table = self.pending.lock();
            if table.iter().filter(|p| p.file == file).count() >= MAX_PENDING_PER_HANDLE
                || table.try_reserve(1).is_err()
            {
                return Disposition::Complete(
                    Outcome::fail(STATUS_INSUFFICIENT_RESOURCES),
                    pending,
                );
            }
            table.push(PendingSend {
                id,
                file,
                handle: req.handle,
                send: None,
                cancel_requested: false,
            });
        }
        if !pending.arm(file, id) {
            self.forget(id);
            return Disposition::Complete(Outcome::fail(STATUS_CANCELLED), pending);
        }
        let completion = match Completion::try_closure(move |result: SendResult| {
            self.forget(id);
            pending.complete(Outcome {
                status: result.status,
                information: if NT_SUCCESS(result.status) {
                    result.bytes
                } else {
                    0
                },
            });
        }) {
            Ok(completion) => completion,
            Err(complete) => {
                // No memory for the box: complete the request through the closure.
                complete(SendResult {
                    status: STATUS_INSUFFICIENT_RESOURCES,
                    bytes: 0,
                });
                return Disposition::Pending;
            }
        };
        let payload = Payload::Segments {
            master: direct.mdl,
            segments: &segments[..count],
            carve: self.config.carve,
        };
        match engine_send(&connection, payload, flags, completion) {
            Ok(send_id) => {
                let cancel_now = {
                    let mut table = self.pending.lock();
                    table.iter_mut().find(|p| p.id == id).is_some_and(|p| {
                        p.send = Some(send_id);
                        p.cancel_requested
                    })
                };
                if cancel_now {
                    // Cancelled while being handed over: nothing armed a work item for
                    // us, and we are at PASSIVE_LEVEL, so close right here if needed.
                    if self.cancel_send(connection, send_id) == CancelAction::RunDeferred {
                        self.run_deferred();
                    }
                }
            }
            Err(refused) => {
                // Refused before queuing: report through the completion handed back.
                refused.completion.run(SendResult {
                    status: refused.error.status(),
                    bytes: 0,
                });
            }
        }
        Disposition::Pending
    }

    fn forget(&self, id: RequestId) {
        let mut table = self.pending.lock();
        if let Some(i) = table.iter().position(|p| p.id == id) {
            table.swap_remove(i);
        }
    }

    /// Cancels the pending request `id` of `file` (from the front end's cancel routine).
    /// A send still queued completes with `STATUS_CANCELLED`; one with the provider gets
    /// `IoCancelIrp`. Where the provider cannot cancel (Wine), its connection must be
    /// closed — which completes its pending sends as cancelled — and the front end is
    /// told to do that from a work item.
    ///
    /// # IRQL
    /// <= `DISPATCH_LEVEL`.
    pub fn cancel(&self, file: FileId, id: RequestId) -> CancelAction {
        let target = {
            let mut table = self.pending.lock();
            let Some(p) = table.iter_mut().find(|p| p.id == id && p.file == file) else {
                return CancelAction::Done;
            };
            match p.send {
                Some(send) => Some((p.handle, send)),
                None => {
                    // Not handed to the engine yet: `send` cancels it right after.
                    p.cancel_requested = true;
                    None
                }
            }
        };
        if let Some((handle, send)) = target
            && let Some(connection) = self.lookup(file, handle)
        {
            return self.cancel_send(connection, send);
        }
        CancelAction::Done
    }

    fn cancel_send(&self, connection: Connection, send: SendId) -> CancelAction {
        if connection.cancel(send) != CancelOutcome::NotHonoured {
            return CancelAction::Done;
        }
        let mut aborts = self.aborts.lock();
        if aborts.try_reserve(1).is_err() {
            // Out of memory: close here rather than leave the send hanging.
            drop(aborts);
            connection.begin_close(CloseMode::Abortive);
            return CancelAction::Done;
        }
        aborts.push(connection);
        CancelAction::RunDeferred
    }

    /// Closes the connections whose sends could not be cancelled (see
    /// [`CancelAction::RunDeferred`]); their pending sends complete as cancelled.
    ///
    /// # IRQL
    /// `PASSIVE_LEVEL` (a work item).
    pub fn run_deferred(&self) {
        loop {
            let Some(connection) = self.aborts.lock().pop() else {
                return;
            };
            connection.begin_close(CloseMode::Abortive);
        }
    }

    /// `IRP_MJ_CLEANUP` (and `IRP_MJ_CLOSE`, which is all Wine sends): closes every
    /// connection of `file`; their pending sends complete first. Idempotent.
    ///
    /// # IRQL
    /// `PASSIVE_LEVEL`.
    pub fn cleanup(&self, file: FileId) {
        // One at a time: nothing is allocated (and nothing grows under the lock).
        loop {
            let entry = {
                let mut table = self.connections.lock();
                table
                    .iter()
                    .position(|e| e.file == file)
                    .map(|i| table.swap_remove(i))
            };
            match entry {
                Some(entry) => self.retire(&entry.connection, CloseMode::Graceful),
                None => break,
            }
        }
    }

    /// Unload: closes every connection of every file.
    ///
    /// # IRQL
    /// `PASSIVE_LEVEL`.
    pub fn shutdown(&self) {
        let all = core::mem::take(&mut *self.connections.lock());
        for entry in &all {
            self.retire(&entry.connection, CloseMode::Graceful);
        }
        // A work item may still be queued; drop what it would close, now.
        self.run_deferred();
    }

    /// Open connections.
    #[must_use]
    pub fn connection_count(&self) -> usize {
        self.connections.lock().len()
    }
}

#[expect(
    unsafe_code,
    reason = "the engine's send borrows the locked direct buffer"
)]
fn engine_send(
    connection: &Connection,
    payload: Payload<'_>,
    flags: u32,
    completion: Completion,
) -> Result<SendId, Refused> {
    // SAFETY: the direct buffer (the payload's master MDL) belongs to the request,
    // which stays pending — so the MDL stays locked — until `completion` runs.
    unsafe { connection.send(payload, flags, completion) }
}

/// Writes output with `emit` if the caller's output buffer can take it; never writes
/// a partial struct.
fn emit_out(
    system: &mut [u8],
    output_len: usize,
    emit: impl FnOnce(&mut [u8]) -> Result<usize, WireError>,
) -> Outcome {
    let Some(out) = system.get_mut(..output_len) else {
        return Outcome::fail(STATUS_BUFFER_TOO_SMALL);
    };
    match emit(out) {
        Ok(n) => Outcome::ok(n),
        Err(_) => Outcome::fail(STATUS_BUFFER_TOO_SMALL),
    }
}
