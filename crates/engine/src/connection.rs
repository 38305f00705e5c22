//! A connected TCP socket and its send pipeline.
//!
//! Every send becomes a [`SendOp`] that owns its IRP, its MDL chain (when we built one)
//! and, for owned payloads, its bytes, until its completion routine has run. Sends wait
//! in a FIFO queue and are posted to `WskSend` in that order by a single "pump" at a
//! time, at most `max_posted` at once (Wine's provider accepts at most 10 per socket).
//! The pump never recurses: a completion that arrives while a pump is running (inline
//! completion is normal) just asks it to go round again. The socket is closed by the
//! pump too, so no provider call can race with `WskCloseSocket`.
//!
//! Ownership of a posted op is shared by the poster and the completion routine (a
//! reference count of two); whoever drops the last reference recycles the IRP and
//! frees the op. An atomic stage decides who reports the result, so a provider that
//! fails a call without completing its IRP (against the WSK contract, as Wine's stubs
//! do) still gets exactly one completion.

use alloc::boxed::Box;
use alloc::vec::Vec;
use core::ffi::c_void;
use core::net::SocketAddr;
use core::ptr::{self, NonNull};
use core::sync::atomic::{AtomicBool, AtomicU8, AtomicU64, Ordering};
use core::time::Duration;

use wsksend_ffi::status::{
    STATUS_CANCELLED, STATUS_MORE_PROCESSING_REQUIRED, STATUS_NOT_IMPLEMENTED,
    STATUS_NOT_SUPPORTED, STATUS_PENDING,
};
use wsksend_ffi::{
    DEVICE_OBJECT, IRP, MDL, NT_SUCCESS, NTSTATUS, WSK_BUF, WSK_FLAG_NODELAY,
    WSK_PROVIDER_CONNECTION_DISPATCH, WSK_SOCKET,
};

use crate::irp::Irp;
use crate::karc::KArc;
use crate::mdl::{self, Carve, MdlChain, RawBuf, Segment};
use crate::pool::PoolBox;
use crate::sync::{Event, SpinLock};
use crate::{Error, Result};
use crate::{log, rundown};

/// Send flags a caller may pass (`WSK_FLAG_NODELAY`); others are rejected.
pub const SEND_FLAGS: u32 = WSK_FLAG_NODELAY;

/// Most sends posted to the provider at once on one connection, at most.
pub const MAX_POSTED_LIMIT: usize = 64;

/// How long `close` waits for the provider to finish closing (after that the memory
/// stays allocated: nothing is freed under the provider).
pub const CLOSE_WAIT: Duration = Duration::from_secs(30);

/// How long a graceful close (posted sends, then `WskDisconnect`) may take before it
/// becomes abortive, by default ([`ConnectOptions::linger`]).
pub const GRACEFUL_WAIT: Duration = Duration::from_secs(10);

/// Longest [`ConnectOptions::linger`] honoured (longer is capped), so teardown stays
/// bounded.
pub const MAX_LINGER: Duration = Duration::from_secs(60);

/// Longest wait [`Connection::send_and_wait`] accepts for the send itself.
pub const MAX_SYNC_WAIT: Duration = Duration::from_secs(120);

/// How long a timed-out blocking send waits after `IoCancelIrp` before closing.
pub const CANCEL_GRACE: Duration = Duration::from_secs(2);

/// Options of a new connection.
#[derive(Clone, Copy, Debug)]
pub struct ConnectOptions {
    /// Add `WSK_FLAG_NODELAY` to every send.
    pub nodelay: bool,
    /// Sends posted to `WskSend` at once (1..=[`MAX_POSTED_LIMIT`]); more wait in order.
    pub max_posted: usize,
    /// Limit for socket creation, bind and connect together.
    pub connect_timeout: Duration,
    /// How long a graceful close (posted sends finish, then `WskDisconnect`) may take
    /// before it becomes abortive: the `SO_LINGER` timeout of this connection.
    pub linger: Duration,
}

impl Default for ConnectOptions {
    fn default() -> Self {
        Self {
            nodelay: false,
            max_posted: 8,
            connect_timeout: Duration::from_secs(10),
            linger: GRACEFUL_WAIT,
        }
    }
}

/// Result of a send, as its completion reports it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SendResult {
    /// Final status (the provider's, or `STATUS_CANCELLED` for a send that never
    /// reached the provider).
    pub status: NTSTATUS,
    /// Bytes sent (`IoStatus.Information`).
    pub bytes: usize,
}

/// A C completion callback: `routine(context, status, bytes)`, at <= `DISPATCH_LEVEL`.
pub type SendCallback = unsafe extern "system" fn(*mut c_void, NTSTATUS, usize);

/// How a send reports its result. Runs exactly once, at <= `DISPATCH_LEVEL`, possibly
/// before `send` returns.
pub enum Completion {
    /// A C callback with its context (the exported kernel API).
    Callback {
        /// The routine.
        routine: SendCallback,
        /// Its context.
        context: *mut c_void,
    },
    /// A Rust closure.
    Closure(Box<dyn FnOnce(SendResult) + Send>),
}

// SAFETY: a C callback's context is the caller's to make thread-safe: the exported API
// documents that the callback may run on any thread.
unsafe impl Send for Completion {}

/// A send the connection refused before queuing it: the error and the completion,
/// handed back unrun (the caller reports the error its own way).
pub struct Refused {
    /// Why.
    pub error: Error,
    /// The completion, not run.
    pub completion: Completion,
}

impl From<Refused> for Error {
    fn from(r: Refused) -> Self {
        r.error
    }
}

impl Completion {
    /// A Rust closure, boxed in a fallible allocation.
    ///
    /// # Errors
    /// The closure itself, unboxed, when no memory could be had: the caller can still
    /// run it (for example with `STATUS_INSUFFICIENT_RESOURCES`), so nothing it owns
    /// is lost.
    pub fn try_closure<F: FnOnce(SendResult) + Send + 'static>(
        f: F,
    ) -> core::result::Result<Self, F> {
        crate::karc::try_box(f).map(|b| Self::Closure(b))
    }

    /// Runs the completion with `result`.
    pub fn run(self, result: SendResult) {
        match self {
            // SAFETY: the exported API's contract: `routine` accepts `context` and any result.
            Self::Callback { routine, context } => unsafe {
                routine(context, result.status, result.bytes);
            },
            Self::Closure(f) => f(result),
        }
    }
}

/// What a send sends.
pub enum Payload<'a> {
    /// (a) An MDL chain the caller locked. Borrowed until the send completes.
    Mdl {
        /// First MDL.
        chain: NonNull<MDL>,
        /// Offset into the first MDL.
        offset: u32,
        /// Bytes to send.
        length: usize,
    },
    /// (b) Nonpaged kernel buffers, in order. Borrowed until the send completes.
    Nonpaged(&'a [RawBuf]),
    /// (c) Segments of one locked master MDL (a `METHOD_IN_DIRECT` buffer). Borrowed
    /// until the send completes.
    Segments {
        /// The master MDL.
        master: NonNull<MDL>,
        /// Pieces to send, in order.
        segments: &'a [Segment],
        /// How to carve more than one segment.
        carve: Carve,
    },
    /// Bytes the engine owns until completion.
    Owned(Vec<u8>),
}

/// Identifies a send on its connection (for [`Connection::cancel`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct SendId(pub u64);

/// What [`Connection::cancel`] did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CancelOutcome {
    /// No such send pending (already completed, or never existed).
    NotFound,
    /// The send was still queued: it completed with `STATUS_CANCELLED`.
    Cancelled,
    /// The send is with the provider, which accepted the cancel request.
    Requested,
    /// The send is with the provider, which cannot cancel it (Wine): close the
    /// connection to complete it.
    NotHonoured,
}

/// Counters of one connection.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ConnectionStats {
    /// Sends completed successfully.
    pub sends: u64,
    /// Bytes those sends reported sent.
    pub bytes: u64,
    /// Sends completed with an error (including cancelled ones).
    pub errors: u64,
    /// Sends queued or with the provider now.
    pub in_flight: u64,
}

/// Stage of a [`SendOp`], deciding who reports its result.
const QUEUED: u8 = 0;
/// Listed as posted, its references set; the provider may not have it yet.
const POSTING: u8 = 1;
/// Handed to `WskSend`.
const POSTED: u8 = 2;
const DONE: u8 = 3;

/// One send, from `send` to its completion.
struct SendOp {
    next: *mut SendOp,
    id: u64,
    conn: Connection,
    irp: Option<Irp>,
    buf: WSK_BUF,
    chain: MdlChain,
    owned: Option<Vec<u8>>,
    flags: u32,
    completion: Option<Completion>,
    refs: AtomicU8,
    stage: AtomicU8,
    /// A cancel arrived while the op was posting: honoured at (or right after)
    /// submission.
    cancel_requested: AtomicBool,
    /// The IRP has been (or is being) handed to the provider.
    submitted: AtomicBool,
}

/// How a connection is being closed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Closing {
    /// Open.
    No,
    /// Posted sends finish, then `WskDisconnect`, then `WskCloseSocket`.
    Graceful,
    /// `WskCloseSocket` at once (an abortive disconnect on Windows).
    Abortive,
}

/// Where the graceful disconnect is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Disconnect {
    NotIssued,
    InFlight,
    Done,
}

/// Mutable state of a connection, under its spin lock.
struct State {
    head: *mut SendOp,
    tail: *mut SendOp,
    queued: usize,
    /// Ops posting or posted (with the provider), until their result is reported.
    posted: Vec<*mut SendOp>,
    /// Ops allocated and not yet freed (queued, posted, or completing).
    live_ops: usize,
    free_irps: Vec<Irp>,
    close_irp: Option<Irp>,
    disconnect_irp: Option<Irp>,
    pumping: bool,
    rerun: bool,
    closing: Closing,
    disconnect: Disconnect,
    close_issued: bool,
    close_done: bool,
}

// SAFETY: the raw op pointers are owned references to pool objects that any thread may
// use under the lock.
unsafe impl Send for State {}

/// A connected TCP socket: a cheap, cloneable handle; the socket is closed by
/// [`Connection::close`] (or the other close calls), not by dropping handles.
#[derive(Clone)]
pub struct Connection {
    inner: KArc<Shared>,
}

/// What the handles of one connection share.
///
/// # Invariants
/// `socket` is an open WSK connection socket with dispatch table `dispatch` until the
/// close the pump issues has completed; after that neither is used.
struct Shared {
    socket: NonNull<WSK_SOCKET>,
    dispatch: NonNull<WSK_PROVIDER_CONNECTION_DISPATCH>,
    remote: SocketAddr,
    nodelay: bool,
    max_posted: usize,
    linger: Duration,
    state: SpinLock<State>,
    /// Set when the close IRP has completed.
    closed: Event,
    /// Set when closed and every op is freed (its IRP and MDLs with it).
    drained: Event,
    next_id: AtomicU64,
    sends: AtomicU64,
    bytes: AtomicU64,
    errors: AtomicU64,
}

// SAFETY: the socket may be used from any thread at <= DISPATCH_LEVEL; our own state is
// behind the spin lock or atomic.
unsafe impl Send for Shared {}
// SAFETY: as above.
unsafe impl Sync for Shared {}

impl Connection {
    /// Wraps a connected socket.
    ///
    /// # Safety
    /// `socket` is a connected WSK connection socket whose `Dispatch` is a
    /// `WSK_PROVIDER_CONNECTION_DISPATCH`. On success the new connection owns it (and
    /// closes it); on error the caller still owns it and must close it.
    ///
    /// # Errors
    /// `STATUS_INSUFFICIENT_RESOURCES`; `STATUS_INVALID_PARAMETER` for a socket without
    /// a dispatch table.
    pub unsafe fn new(
        socket: NonNull<WSK_SOCKET>,
        remote: SocketAddr,
        options: &ConnectOptions,
    ) -> Result<Self> {
        let max_posted = options.max_posted.clamp(1, MAX_POSTED_LIMIT);
        // SAFETY: a live socket's dispatch table (caller).
        let dispatch = unsafe { socket.as_ref() }.Dispatch;
        let dispatch = NonNull::new(dispatch.cast_mut().cast()).ok_or(Error::INVALID_PARAMETER)?;
        let mut posted = Vec::new();
        posted
            .try_reserve_exact(max_posted)
            .map_err(|_| Error::NO_RESOURCES)?;
        let mut free_irps = Vec::new();
        free_irps
            .try_reserve_exact(max_posted)
            .map_err(|_| Error::NO_RESOURCES)?;
        // INVARIANT: the caller hands over an open connection socket.
        let inner = KArc::try_new(Shared {
            socket,
            dispatch,
            remote,
            nodelay: options.nodelay,
            max_posted,
            linger: options.linger.min(MAX_LINGER),
            state: SpinLock::new(State {
                head: ptr::null_mut(),
                tail: ptr::null_mut(),
                queued: 0,
                posted,
                live_ops: 0,
                free_irps,
                // Allocated now so that closing never fails and works at DISPATCH_LEVEL.
                close_irp: Some(Irp::new()?),
                disconnect_irp: Some(Irp::new()?),
                pumping: false,
                rerun: false,
                closing: Closing::No,
                disconnect: Disconnect::NotIssued,
                close_issued: false,
                close_done: false,
            }),
            closed: Event::notification()?,
            drained: Event::notification()?,
            next_id: AtomicU64::new(1),
            sends: AtomicU64::new(0),
            bytes: AtomicU64::new(0),
            errors: AtomicU64::new(0),
        })?;
        Ok(Self { inner })
    }

    /// Whether `a` and `b` are handles of the same connection.
    #[must_use]
    pub fn ptr_eq(a: &Self, b: &Self) -> bool {
        KArc::ptr_eq(&a.inner, &b.inner)
    }

    /// Gives up this handle as a raw pointer (a C handle or an IRP context);
    /// [`Self::from_context`] takes it back.
    #[must_use]
    pub fn into_context(self) -> *mut c_void {
        KArc::into_raw(self.inner).cast_mut().cast()
    }

    /// Takes back a handle given up by [`Self::into_context`].
    ///
    /// # Safety
    /// `context` came from `into_context` and is not taken back twice.
    pub unsafe fn from_context(context: *mut c_void) -> Self {
        Self {
            // SAFETY: forwarded from the caller's contract.
            inner: unsafe { KArc::from_raw(context.cast_const().cast::<Shared>()) },
        }
    }

    /// Borrows the handle behind a context from [`Self::into_context`] for a call.
    ///
    /// # Safety
    /// As for [`Self::from_context`], and the context stays given up meanwhile.
    pub unsafe fn with_context<T>(context: *mut c_void, f: impl FnOnce(&Self) -> T) -> T {
        // SAFETY: forwarded from the caller's contract; the handle is given back below.
        let conn = core::mem::ManuallyDrop::new(unsafe { Self::from_context(context) });
        f(&conn)
    }

    /// The peer address.
    #[must_use]
    pub fn remote(&self) -> SocketAddr {
        self.inner.remote
    }

    /// Current counters.
    #[must_use]
    pub fn stats(&self) -> ConnectionStats {
        let st = self.inner.state.lock();
        ConnectionStats {
            sends: self.inner.sends.load(Ordering::Relaxed),
            bytes: self.inner.bytes.load(Ordering::Relaxed),
            errors: self.inner.errors.load(Ordering::Relaxed),
            // CAST: counts of in-memory objects fit in u64.
            in_flight: (st.queued + st.posted.len()) as u64,
        }
    }

    /// Whether the connection is closing or closed.
    #[must_use]
    pub fn is_closing(&self) -> bool {
        self.inner.state.lock().closing != Closing::No
    }

    /// Sends `payload` with `flags` (`WSK_FLAG_NODELAY` or 0); `completion` reports the
    /// result. Sends reach `WskSend` in the order `send` is called.
    ///
    /// Returns the send's id once it is queued; `completion` will then run exactly once.
    /// On error nothing was queued and `completion` is handed back unrun.
    ///
    /// # Safety
    /// Borrowed payloads (every variant but `Owned`) stay valid — and MDLs locked —
    /// until `completion` runs; nonpaged buffers really are nonpaged.
    ///
    /// # Errors
    /// `STATUS_INVALID_PARAMETER` for bad flags or a payload that fails validation
    /// (empty, `Offset`/`Length` outside the chain, an MDL that is not locked, segments
    /// outside the buffer); `STATUS_INVALID_CONNECTION` when the connection is closing;
    /// `STATUS_INSUFFICIENT_RESOURCES`.
    ///
    /// # IRQL
    /// <= `DISPATCH_LEVEL`.
    pub unsafe fn send(
        &self,
        payload: Payload<'_>,
        flags: u32,
        completion: Completion,
    ) -> core::result::Result<SendId, Refused> {
        // SAFETY: forwarded from the caller's contract.
        let op = match unsafe { self.build(payload, flags) } {
            Ok(op) => op,
            Err(error) => return Err(Refused { error, completion }),
        };
        let mut op = match PoolBox::try_new(op) {
            Ok(op) => op,
            Err(error) => {
                // `try_new` dropped the op (its IRP, MDLs and connection reference).
                rundown::release();
                return Err(Refused { error, completion });
            }
        };
        let id = op.id;
        let mut st = self.inner.state.lock();
        if st.closing != Closing::No {
            drop(st);
            // Nothing was queued: the op goes (its IRP to the spare list or freed).
            self.discard(op);
            return Err(Refused {
                error: Error::NOT_CONNECTED,
                completion,
            });
        }
        op.completion = Some(completion);
        let op = PoolBox::into_raw(op);
        if st.tail.is_null() {
            st.head = op;
        } else {
            // SAFETY: `tail` is a queued op owned by the queue (lock held).
            unsafe { (*st.tail).next = op };
        }
        st.tail = op;
        st.queued += 1;
        st.live_ops += 1;
        drop(st);
        self.pump();
        Ok(SendId(id))
    }

    /// Builds an op (without its completion) for `payload`.
    ///
    /// # Safety
    /// As for [`Self::send`].
    unsafe fn build(&self, payload: Payload<'_>, flags: u32) -> Result<SendOp> {
        if flags & !SEND_FLAGS != 0 {
            return Err(Error::INVALID_PARAMETER);
        }
        let flags = if self.inner.nodelay {
            flags | WSK_FLAG_NODELAY
        } else {
            flags
        };
        let callers_chain = matches!(payload, Payload::Mdl { .. });
        // SAFETY: forwarded from the caller's contract.
        let (buf, chain, owned) = unsafe { prepare(payload)? };
        // SAFETY: the chain is live: ours, or the caller's (contract).
        unsafe { mdl::validate(&buf)? };
        if callers_chain {
            // A kernel caller's chain: refuse what is neither locked nor nonpaged
            // (tcpip would bug-check on it). Ours are built locked.
            // SAFETY: live (contract) and validated just above.
            unsafe { mdl::check_locked(&buf)? };
        }
        let spare = self.inner.state.lock().free_irps.pop();
        let irp = match spare {
            Some(irp) => irp,
            None => Irp::new()?,
        };
        // Released by whoever frees the op, after everything it holds is dropped.
        rundown::acquire();
        Ok(SendOp {
            next: ptr::null_mut(),
            id: self.inner.next_id.fetch_add(1, Ordering::Relaxed),
            conn: self.clone(),
            irp: Some(irp),
            buf,
            chain,
            owned,
            flags,
            completion: None,
            refs: AtomicU8::new(0),
            stage: AtomicU8::new(QUEUED),
            cancel_requested: AtomicBool::new(false),
            submitted: AtomicBool::new(false),
        })
    }

    /// Frees an op that was never queued (no completion, not counted).
    fn discard(&self, mut op: PoolBox<SendOp>) {
        drop(core::mem::replace(&mut op.chain, MdlChain::empty()));
        drop(op.owned.take());
        self.free_op(op);
        rundown::release();
    }

    /// Frees an op whose IRP is not in flight, keeping the IRP as a spare while the
    /// connection is open (freeing it otherwise).
    fn free_op(&self, mut op: PoolBox<SendOp>) {
        let irp = op.irp.take();
        let spare = {
            let mut st = self.inner.state.lock();
            match irp {
                Some(irp)
                    if st.closing == Closing::No && st.free_irps.len() < self.inner.max_posted =>
                {
                    st.free_irps.push(irp);
                    None
                }
                other => other,
            }
        };
        drop(spare);
        drop(op);
    }

    /// Sends `data` (copied into an owned buffer) and waits for the result.
    ///
    /// # Errors
    /// As [`Self::send_and_wait`].
    ///
    /// # IRQL
    /// `PASSIVE_LEVEL`.
    pub fn send_blocking(&self, data: &[u8], flags: u32, limit: Duration) -> Result<usize> {
        let mut owned = Vec::new();
        owned
            .try_reserve_exact(data.len())
            .map_err(|_| Error::NO_RESOURCES)?;
        owned.extend_from_slice(data);
        // SAFETY: an owned payload borrows nothing.
        unsafe { self.send_and_wait(Payload::Owned(owned), flags, limit) }
    }

    /// Sends `payload` and waits for the result: the blocking helper for
    /// `PASSIVE_LEVEL` callers. `limit` is capped at [`MAX_SYNC_WAIT`]. After it the
    /// send is cancelled; if the provider has not completed it within [`CANCEL_GRACE`]
    /// the connection is closed abortively, which completes it (the provider must
    /// complete every IRP of a socket it closes). Borrowed memory is never left with
    /// the provider: should a provider break even that rule, the wait gives up after
    /// [`CLOSE_WAIT`] and leaks the waiter instead of returning it to the stack.
    ///
    /// # Safety
    /// As for [`Self::send`] (borrowed memory must only outlive this call).
    ///
    /// # Errors
    /// As [`Self::send`], the send's failure status, or `STATUS_IO_TIMEOUT`.
    ///
    /// # IRQL
    /// `PASSIVE_LEVEL`.
    pub unsafe fn send_and_wait(
        &self,
        payload: Payload<'_>,
        flags: u32,
        limit: Duration,
    ) -> Result<usize> {
        let waiter = PoolBox::try_new(Waiter {
            event: Event::notification()?,
            result: SpinLock::new(None),
        })?;
        let context = ptr::from_ref::<Waiter>(&waiter).cast_mut().cast::<c_void>();
        let completion = Completion::Callback {
            routine: wake_waiter,
            context,
        };
        // SAFETY: forwarded from the caller's contract; we wait for completion below.
        let id = unsafe { self.send(payload, flags, completion) }.map_err(|r| r.error)?;
        let mut timed_out = false;
        if !waiter.event.wait(limit.min(MAX_SYNC_WAIT)) {
            timed_out = true;
            let outcome = self.cancel(id);
            if outcome == CancelOutcome::NotHonoured || !waiter.event.wait(CANCEL_GRACE) {
                self.begin_close(CloseMode::Abortive);
            }
            if !waiter.event.wait(CLOSE_WAIT) {
                // The provider kept the IRP past its socket's close: the waiter may still
                // be written to, so it stays allocated (a deliberate, bounded leak).
                let _ = PoolBox::into_raw(waiter);
                return Err(Error::TIMEOUT);
            }
        }
        let result = waiter.result.lock().take().ok_or(Error::TIMEOUT)?;
        match crate::error::to_result(result.status) {
            Ok(()) => Ok(result.bytes),
            Err(_) if timed_out => Err(Error::TIMEOUT),
            Err(e) => Err(e),
        }
    }

    /// Cancels the send `id`: a queued send completes with `STATUS_CANCELLED`; a posted
    /// one gets `IoCancelIrp` (at once, or — when the cancel arrives while it is being
    /// handed to the provider — by the poster right after the call).
    ///
    /// # IRQL
    /// <= `DISPATCH_LEVEL` (a front end's cancel routine).
    pub fn cancel(&self, id: SendId) -> CancelOutcome {
        let mut st = self.inner.state.lock();
        // Still queued?
        let mut prev: *mut SendOp = ptr::null_mut();
        let mut cur = st.head;
        while !cur.is_null() {
            // SAFETY: queued ops are owned by the queue; the lock is held.
            let queued = unsafe { &*cur };
            let (cur_id, next) = (queued.id, queued.next);
            if cur_id == id.0 {
                if prev.is_null() {
                    st.head = next;
                } else {
                    // SAFETY: `prev` is a queued op (lock held).
                    unsafe { (*prev).next = next };
                }
                if st.tail == cur {
                    st.tail = prev;
                }
                st.queued -= 1;
                drop(st);
                // SAFETY: unlinked from the queue, so we own it; it was never posted.
                let op = unsafe { PoolBox::from_raw(cur) };
                self.complete_unposted(op, STATUS_CANCELLED);
                return CancelOutcome::Cancelled;
            }
            prev = cur;
            cur = next;
        }
        // With the provider, or about to be?
        let found = st.posted.iter().copied().find(|&op| {
            // SAFETY: listed ops are live: the completion's reference is dropped only
            // after `finish` unlisted the op (under this lock).
            unsafe { (*op).id == id.0 }
        });
        let Some(op) = found else {
            return CancelOutcome::NotFound;
        };
        // SAFETY: listed, so live with at least the completion's reference (set, with
        // the poster's, before the op was listed); ours keeps its IRP from recycling.
        unsafe { (*op).refs.fetch_add(1, Ordering::AcqRel) };
        drop(st);
        // SAFETY: we hold a reference, so the op is live.
        let o = unsafe { &*op };
        o.cancel_requested.store(true, Ordering::SeqCst);
        let outcome = if o.submitted.load(Ordering::SeqCst) {
            // SAFETY: the IRP is live (our reference) and not reused meanwhile.
            let honoured = o.irp.as_ref().is_some_and(|irp| unsafe { irp.cancel() });
            if honoured {
                CancelOutcome::Requested
            } else {
                CancelOutcome::NotHonoured
            }
        } else {
            // The poster sees the flag: before the call it does not submit; after it,
            // it cancels the IRP itself.
            CancelOutcome::Requested
        };
        // SAFETY: releasing the reference taken above.
        unsafe { release(op) };
        outcome
    }

    /// Starts closing without waiting: new sends are refused and queued ones complete
    /// with `STATUS_CANCELLED`. [`CloseMode::Graceful`] lets posted sends finish,
    /// disconnects (`WskDisconnect`) and then closes the socket; [`CloseMode::Abortive`]
    /// closes the socket at once (which completes posted sends with the provider's
    /// status) — also on a connection already closing gracefully.
    ///
    /// # IRQL
    /// <= `DISPATCH_LEVEL`.
    pub fn begin_close(&self, mode: CloseMode) {
        {
            let mut st = self.inner.state.lock();
            let wanted = match mode {
                CloseMode::Graceful => Closing::Graceful,
                CloseMode::Abortive => Closing::Abortive,
            };
            match (st.closing, wanted) {
                (Closing::No, w) | (Closing::Graceful, w @ Closing::Abortive) => st.closing = w,
                _ => return,
            }
        }
        self.pump();
    }

    /// Closes the connection gracefully and waits until every send has completed, the
    /// socket is closed and every send's IRP and MDLs are freed. A graceful close that
    /// has not finished within the connection's [`ConnectOptions::linger`] becomes
    /// abortive. Idempotent.
    ///
    /// # Errors
    /// `STATUS_IO_TIMEOUT` if the provider did not finish within [`CLOSE_WAIT`] (the
    /// memory then stays allocated: nothing is freed under the provider).
    ///
    /// # IRQL
    /// `PASSIVE_LEVEL`.
    pub fn close(&self) -> Result {
        self.begin_close(CloseMode::Graceful);
        if !self.inner.closed.wait(self.inner.linger) {
            self.begin_close(CloseMode::Abortive);
        }
        self.wait_closed()
    }

    /// Closes the connection abortively (`WskCloseSocket` at once: a reset on Windows)
    /// and waits as [`Self::close`] does.
    ///
    /// # Errors
    /// As [`Self::close`].
    ///
    /// # IRQL
    /// `PASSIVE_LEVEL`.
    pub fn close_abortive(&self) -> Result {
        self.begin_close(CloseMode::Abortive);
        self.wait_closed()
    }

    fn wait_closed(&self) -> Result {
        if self.inner.closed.wait(CLOSE_WAIT) && self.inner.drained.wait(CLOSE_WAIT) {
            Ok(())
        } else {
            Err(Error::TIMEOUT)
        }
    }

    /// Whether the close has completed and every op is freed.
    #[must_use]
    pub fn is_drained(&self) -> bool {
        let st = self.inner.state.lock();
        st.close_done && st.live_ops == 0
    }

    /// Posts queued sends and moves the close along until there is nothing to do; at
    /// most one thread pumps at a time, others just ask it to go round again.
    fn pump(&self) {
        let mut st = self.inner.state.lock();
        if st.pumping {
            st.rerun = true;
            return;
        }
        st.pumping = true;
        loop {
            st.rerun = false;
            if st.closing != Closing::No {
                let mut cancelled = core::mem::replace(&mut st.head, ptr::null_mut());
                st.tail = ptr::null_mut();
                st.queued = 0;
                let step = self.close_step(&mut st);
                drop(st);
                while !cancelled.is_null() {
                    // SAFETY: detached from the queue above, so owned here, never posted.
                    let op = unsafe { PoolBox::from_raw(cancelled) };
                    cancelled = op.next;
                    self.complete_unposted(op, STATUS_CANCELLED);
                }
                match step {
                    CloseStep::Wait => {}
                    CloseStep::Disconnect(irp) => self.issue_disconnect(irp),
                    CloseStep::Close(irp) => self.issue_close(irp),
                }
                st = self.inner.state.lock();
                if !st.rerun {
                    break;
                }
                continue;
            }
            while st.posted.len() < self.inner.max_posted && !st.head.is_null() {
                let op = st.head;
                // SAFETY: the queue owns `op` (lock held).
                let o = unsafe { &*op };
                st.head = o.next;
                if st.head.is_null() {
                    st.tail = ptr::null_mut();
                }
                st.queued -= 1;
                // Both references exist before anyone else can find the op in `posted`:
                // one for this poster, one for the completion routine.
                o.refs.store(2, Ordering::Release);
                o.stage.store(POSTING, Ordering::Release);
                // Capacity was reserved for max_posted entries: no allocation here.
                st.posted.push(op);
                drop(st);
                // SAFETY: `op` is listed as posting and owned by this pump until posted.
                unsafe { self.post(op) };
                st = self.inner.state.lock();
                if st.closing != Closing::No {
                    break;
                }
            }
            if !st.rerun && st.closing == Closing::No {
                break;
            }
        }
        st.pumping = false;
        drop(st);
        self.check_drained();
    }

    /// What the close needs next (lock held): nothing yet, a disconnect, or the close.
    fn close_step(&self, st: &mut State) -> CloseStep {
        if st.close_issued {
            return CloseStep::Wait;
        }
        let close_now = match st.closing {
            Closing::Abortive => true,
            Closing::Graceful => st.disconnect == Disconnect::Done,
            Closing::No => false,
        };
        if close_now {
            st.close_issued = true;
            return st
                .close_irp
                .take()
                .map_or(CloseStep::Wait, CloseStep::Close);
        }
        if st.closing == Closing::Graceful
            && st.disconnect == Disconnect::NotIssued
            && st.posted.is_empty()
        {
            st.disconnect = Disconnect::InFlight;
            return match st.disconnect_irp.take() {
                Some(irp) => CloseStep::Disconnect(irp),
                None => {
                    st.disconnect = Disconnect::Done;
                    self.close_step(st)
                }
            };
        }
        CloseStep::Wait
    }

    /// Hands one op to `WskSend`.
    ///
    /// # Safety
    /// `op` was just moved from the queue to the posted list by the pump, with both its
    /// references set.
    unsafe fn post(&self, op: *mut SendOp) {
        // SAFETY: the pump owns the op until it is posted; others only read atomics.
        let o = unsafe { &mut *op };
        let irp = o.irp.as_mut().map(|irp| {
            // SAFETY: the op's IRP is not in flight; the op outlives its completion.
            unsafe { irp.prepare(send_complete, op.cast()) };
            irp.as_ptr()
        });
        let cancelled_early = o.cancel_requested.load(Ordering::SeqCst);
        let returned = match irp {
            // Every queued op has its IRP (taken only when the op is freed).
            None => Error::NO_RESOURCES.status(),
            Some(_) if cancelled_early => STATUS_CANCELLED,
            Some(irp) => {
                o.submitted.store(true, Ordering::SeqCst);
                o.stage.store(POSTED, Ordering::Release);
                let buf = ptr::addr_of_mut!(o.buf);
                let flags = o.flags;
                // SAFETY: the socket is open (type invariant: the pump has not closed it).
                let dispatch = unsafe { self.inner.dispatch.as_ref() };
                match dispatch.WskSend {
                    // SAFETY: live socket, validated WSK_BUF that lives in the op until
                    // completion, our IRP with its completion routine armed.
                    Some(wsk_send) => unsafe {
                        wsk_send(self.inner.socket.as_ptr(), buf, flags, irp)
                    },
                    None => wsksend_ffi::status::STATUS_NOT_SUPPORTED,
                }
            }
        };
        if o.submitted.load(Ordering::Relaxed) {
            if o.cancel_requested.load(Ordering::SeqCst) && o.stage.load(Ordering::Acquire) != DONE
            {
                // A cancel came while we were submitting: it is ours to pass on (our
                // reference keeps the IRP live).
                // SAFETY: the IRP is live and not reused while we hold a reference.
                let _ = o.irp.as_ref().is_some_and(|irp| unsafe { irp.cancel() });
            }
            if returned != STATUS_PENDING
                && o.stage
                    .compare_exchange(POSTED, DONE, Ordering::AcqRel, Ordering::Acquire)
                    .is_ok()
            {
                // The provider returned without completing the IRP (against the WSK
                // contract, as Wine's stubs do): it will not touch it, so report the
                // returned status here and drop the completion's reference.
                let status = if NT_SUCCESS(returned) {
                    wsksend_ffi::status::STATUS_UNSUCCESSFUL
                } else {
                    returned
                };
                // SAFETY: we won the stage, so we report the result; the op is live.
                unsafe { self.finish(op, status, 0) };
                // SAFETY: the completion routine will never run: release its reference.
                unsafe { release(op) };
            }
        } else {
            // Never submitted (cancelled first): no completion routine will run.
            o.stage.store(DONE, Ordering::Release);
            // SAFETY: the op is live; we report its result.
            unsafe { self.finish(op, returned, 0) };
            // SAFETY: the completion routine's reference, which it will never drop.
            unsafe { release(op) };
        }
        // SAFETY: the poster's reference.
        unsafe { release(op) };
    }

    /// Reports a posted op's result: frees its MDLs, unlists it, runs its completion
    /// and lets the pump continue.
    ///
    /// # Safety
    /// The caller won the op's stage (→ `DONE`) and holds a reference.
    unsafe fn finish(&self, op: *mut SendOp, status: NTSTATUS, bytes: usize) {
        // SAFETY: live (reference held), and only the stage winner gets here.
        let o = unsafe { &mut *op };
        // Our MDLs go before the caller hears of completion: they may describe pages
        // of the caller's buffer (partial MDLs of a user buffer about to be unlocked).
        drop(core::mem::replace(&mut o.chain, MdlChain::empty()));
        drop(o.owned.take());
        let completion = o.completion.take();
        {
            let mut st = self.inner.state.lock();
            if let Some(i) = st.posted.iter().position(|&p| p == op) {
                st.posted.swap_remove(i);
            }
        }
        self.account(status, bytes);
        if let Some(completion) = completion {
            completion.run(SendResult { status, bytes });
        }
        o.conn.pump();
    }

    /// Reports a send that never reached the provider, and frees it.
    fn complete_unposted(&self, mut op: PoolBox<SendOp>, status: NTSTATUS) {
        drop(core::mem::replace(&mut op.chain, MdlChain::empty()));
        drop(op.owned.take());
        let completion = op.completion.take();
        self.account(status, 0);
        if let Some(completion) = completion {
            completion.run(SendResult { status, bytes: 0 });
        }
        let conn = op.conn.clone();
        conn.recycle(op);
        drop(conn);
        rundown::release();
    }

    fn account(&self, status: NTSTATUS, bytes: usize) {
        if NT_SUCCESS(status) {
            self.inner.sends.fetch_add(1, Ordering::Relaxed);
            // CAST: usize fits in u64 on every target we build for.
            self.inner.bytes.fetch_add(bytes as u64, Ordering::Relaxed);
        } else {
            self.inner.errors.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Frees a counted op whose IRP is no longer in flight (keeping the IRP for reuse
    /// while open), then lets the close know one op fewer is alive.
    fn recycle(&self, op: PoolBox<SendOp>) {
        self.free_op(op);
        self.inner.state.lock().live_ops -= 1;
        self.check_drained();
    }

    /// Issues the graceful `WskDisconnect` (from the pump, after every posted send has
    /// completed). Where the provider has none (Wine returns `STATUS_NOT_IMPLEMENTED`
    /// without completing the IRP), the close follows at once, noted once in the log.
    fn issue_disconnect(&self, mut irp: Irp) {
        rundown::acquire();
        let context = self.clone().into_context();
        // SAFETY: the disconnect IRP is not in flight; `context` keeps the connection
        // alive until `disconnect_complete` (or the failure path below) takes it back.
        unsafe { irp.prepare(disconnect_complete, context) };
        let raw = irp.as_ptr();
        self.inner.state.lock().disconnect_irp = Some(irp);
        // SAFETY: the socket is open (type invariant).
        let dispatch = unsafe { self.inner.dispatch.as_ref() };
        let returned = match dispatch.WskDisconnect {
            // SAFETY: open socket with nothing posted, no final buffer, graceful; our
            // armed IRP.
            Some(disconnect) => unsafe {
                disconnect(self.inner.socket.as_ptr(), ptr::null_mut(), 0, raw)
            },
            None => STATUS_NOT_IMPLEMENTED,
        };
        if returned != STATUS_PENDING && !self.disconnect_flag_done() {
            if returned == STATUS_NOT_IMPLEMENTED || returned == STATUS_NOT_SUPPORTED {
                log::once(
                    log::NO_DISCONNECT,
                    c"WskSend: provider has no WskDisconnect; closing with WskCloseSocket\n",
                );
            }
            // Not completed and never will be: finish here.
            // SAFETY: the routine will not run, so we own `context` and the IRP.
            unsafe { disconnect_complete(ptr::null_mut(), raw, context) };
        }
    }

    fn disconnect_flag_done(&self) -> bool {
        self.inner.state.lock().disconnect == Disconnect::Done
    }

    /// Issues `WskCloseSocket` (from the pump, so no send is being posted).
    fn issue_close(&self, mut irp: Irp) {
        rundown::acquire();
        let context = self.clone().into_context();
        // SAFETY: the close IRP is not in flight; `context` keeps the connection alive
        // until `close_complete` takes it back.
        unsafe { irp.prepare(close_complete, context) };
        let raw = irp.as_ptr();
        // The IRP is parked in the state until the connection is freed.
        self.inner.state.lock().close_irp = Some(irp);
        // SAFETY: the socket is open (type invariant).
        let dispatch = unsafe { self.inner.dispatch.as_ref() };
        let returned = match dispatch.WskCloseSocket {
            // SAFETY: open socket (invariant), our armed IRP; after this call the socket
            // is never used again.
            Some(close) => unsafe { close(self.inner.socket.as_ptr(), raw) },
            None => STATUS_NOT_SUPPORTED,
        };
        if returned != STATUS_PENDING && !self.closed_flag() {
            // Not completed and never will be (contract-breaking provider): finish here.
            // SAFETY: the routine will not run, so we own `context` and the IRP.
            unsafe { close_complete(ptr::null_mut(), raw, context) };
        }
    }

    fn closed_flag(&self) -> bool {
        self.inner.state.lock().close_done
    }

    /// Signals `drained` once the close is done and no op is alive.
    fn check_drained(&self) {
        let st = self.inner.state.lock();
        if st.close_done && st.live_ops == 0 && !st.pumping {
            self.inner.drained.set();
        }
    }
}

impl Drop for Shared {
    fn drop(&mut self) {
        let st = self.state.get_mut();
        // Ops hold a reference to the connection, so none is left; IRPs are ours.
        debug_assert!(st.head.is_null() && st.posted.is_empty() && st.live_ops == 0);
        st.free_irps.clear();
        st.close_irp = None;
        st.disconnect_irp = None;
    }
}

/// How to close: see [`Connection::begin_close`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CloseMode {
    /// Posted sends finish, `WskDisconnect`, then `WskCloseSocket`.
    Graceful,
    /// `WskCloseSocket` at once: a reset on Windows.
    Abortive,
}

enum CloseStep {
    Wait,
    Disconnect(Irp),
    Close(Irp),
}

/// The waiter of [`Connection::send_and_wait`], in pool so that a provider that breaks
/// the rules can be left with it.
struct Waiter {
    event: Event,
    result: SpinLock<Option<SendResult>>,
}

/// Completion of a blocking send: records the result and wakes the waiter.
///
/// # Safety
/// `context` is the live [`Waiter`] of the send.
unsafe extern "system" fn wake_waiter(context: *mut c_void, status: NTSTATUS, bytes: usize) {
    // SAFETY: the waiter stays allocated until it has seen the event (caller).
    let waiter = unsafe { &*context.cast::<Waiter>() };
    *waiter.result.lock() = Some(SendResult { status, bytes });
    // Last touch: the waiter may free itself as soon as this is set.
    waiter.event.set();
}

/// Turns a payload into a `WSK_BUF` plus what the send must keep alive.
///
/// # Safety
/// As for [`Connection::send`].
unsafe fn prepare(payload: Payload<'_>) -> Result<(WSK_BUF, MdlChain, Option<Vec<u8>>)> {
    match payload {
        Payload::Mdl {
            chain,
            offset,
            length,
        } => Ok((
            WSK_BUF {
                Mdl: chain.as_ptr(),
                Offset: offset,
                Length: length,
            },
            MdlChain::empty(),
            None,
        )),
        Payload::Nonpaged(bufs) => {
            // SAFETY: forwarded from the caller's contract.
            let chain = unsafe { MdlChain::from_nonpaged(bufs)? };
            let length = bufs.iter().map(|b| b.len as usize).sum();
            Ok((whole(&chain, length), chain, None))
        }
        Payload::Segments {
            master,
            segments,
            carve,
        } => {
            // SAFETY: the master is live (caller's contract).
            let m = unsafe { master.as_ref() };
            if let [single] = segments
                && m.Next.is_null()
            {
                // One segment of a single MDL: send straight from the master with
                // `Offset`, no MDL to build (zero copy, and what Wine supports).
                if !mdl::segment_fits(*single, m.ByteCount) {
                    return Err(Error::INVALID_PARAMETER);
                }
                return Ok((
                    WSK_BUF {
                        Mdl: master.as_ptr(),
                        Offset: single.offset,
                        Length: single.len as usize,
                    },
                    MdlChain::empty(),
                    None,
                ));
            }
            // SAFETY: forwarded from the caller's contract.
            let chain = unsafe { MdlChain::carve(master, segments, carve)? };
            let length = segments.iter().map(|s| s.len as usize).sum();
            Ok((whole(&chain, length), chain, None))
        }
        Payload::Owned(bytes) => {
            let len = u32::try_from(bytes.len()).map_err(|_| Error::INVALID_PARAMETER)?;
            let raw = [RawBuf {
                ptr: bytes.as_ptr(),
                len,
            }];
            // SAFETY: the bytes are heap memory the op keeps until completion; the
            // kernel heap is nonpaged pool (front ends' global allocators).
            let chain = unsafe { MdlChain::from_nonpaged(&raw)? };
            Ok((whole(&chain, bytes.len()), chain, Some(bytes)))
        }
    }
}

fn whole(chain: &MdlChain, length: usize) -> WSK_BUF {
    WSK_BUF {
        Mdl: chain.head(),
        Offset: 0,
        Length: length,
    }
}

/// Drops one reference of a posted op; the last one frees it.
///
/// # Safety
/// The caller holds one of the op's references.
unsafe fn release(op: *mut SendOp) {
    // SAFETY: a held reference keeps the op live.
    let last = unsafe { (*op).refs.fetch_sub(1, Ordering::AcqRel) } == 1;
    if last {
        // SAFETY: the last reference: no one else uses the op or its IRP any more.
        let op = unsafe { PoolBox::from_raw(op) };
        let conn = op.conn.clone();
        conn.recycle(op);
        // Possibly the last reference to the connection: it is freed here.
        drop(conn);
        // Last: teardown may go on once every holder is gone.
        rundown::release();
    }
}

/// Completion routine of sends.
///
/// # Safety
/// `context` is the posted `SendOp` of `irp`, holding a reference for this routine.
unsafe extern "system" fn send_complete(
    _device: *mut DEVICE_OBJECT,
    irp: *mut IRP,
    context: *mut c_void,
) -> NTSTATUS {
    let op = context.cast::<SendOp>();
    // SAFETY: the routine's reference keeps the op live.
    let o = unsafe { &*op };
    if o.stage
        .compare_exchange(POSTED, DONE, Ordering::AcqRel, Ordering::Acquire)
        .is_ok()
    {
        // SAFETY: the IRP is completed and back in our hands.
        let status_block = unsafe { (*irp).IoStatus };
        let conn = o.conn.clone();
        // SAFETY: we won the stage and hold a reference.
        unsafe { conn.finish(op, status_block.Status, status_block.Information) };
    }
    // SAFETY: this routine's reference.
    unsafe { release(op) };
    STATUS_MORE_PROCESSING_REQUIRED
}

/// Completion routine of the graceful `WskDisconnect`: whatever its status, the close
/// follows.
///
/// # Safety
/// `context` is a reference from `KArc::into_raw` in `issue_disconnect`.
unsafe extern "system" fn disconnect_complete(
    _device: *mut DEVICE_OBJECT,
    _irp: *mut IRP,
    context: *mut c_void,
) -> NTSTATUS {
    // SAFETY: the reference `issue_disconnect` leaked for us.
    let conn = unsafe { Connection::from_context(context) };
    conn.inner.state.lock().disconnect = Disconnect::Done;
    conn.pump();
    drop(conn);
    rundown::release();
    STATUS_MORE_PROCESSING_REQUIRED
}

/// Completion routine of `WskCloseSocket`.
///
/// # Safety
/// `context` is a reference from `KArc::into_raw` in `issue_close`.
unsafe extern "system" fn close_complete(
    _device: *mut DEVICE_OBJECT,
    _irp: *mut IRP,
    context: *mut c_void,
) -> NTSTATUS {
    // SAFETY: the reference `issue_close` leaked for us.
    let conn = unsafe { Connection::from_context(context) };
    conn.inner.state.lock().close_done = true;
    conn.inner.closed.set();
    conn.check_drained();
    drop(conn);
    rundown::release();
    STATUS_MORE_PROCESSING_REQUIRED
}
