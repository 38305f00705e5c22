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
use alloc::sync::Arc;
use alloc::vec::Vec;
use core::ffi::c_void;
use core::net::SocketAddr;
use core::ptr::{self, NonNull};
use core::sync::atomic::{AtomicBool, AtomicU8, AtomicU64, Ordering};
use core::time::Duration;

use wsksend_ffi::status::{STATUS_CANCELLED, STATUS_MORE_PROCESSING_REQUIRED, STATUS_PENDING};
use wsksend_ffi::{
    DEVICE_OBJECT, IRP, MDL, NT_SUCCESS, NTSTATUS, WSK_BUF, WSK_FLAG_NODELAY,
    WSK_PROVIDER_CONNECTION_DISPATCH, WSK_SOCKET,
};

use crate::irp::Irp;
use crate::mdl::{self, Carve, MdlChain, RawBuf, Segment};
use crate::pool::PoolBox;
use crate::sync::{Event, SpinLock};
use crate::{Error, Result};

/// Send flags a caller may pass (`WSK_FLAG_NODELAY`); others are rejected.
pub const SEND_FLAGS: u32 = WSK_FLAG_NODELAY;

/// Most sends posted to the provider at once on one connection, at most.
pub const MAX_POSTED_LIMIT: usize = 64;

/// How long `close` waits for the provider to finish closing.
const CLOSE_WAIT: Duration = Duration::from_secs(30);

/// Options of a new connection.
#[derive(Clone, Copy, Debug)]
pub struct ConnectOptions {
    /// Add `WSK_FLAG_NODELAY` to every send.
    pub nodelay: bool,
    /// Sends posted to `WskSend` at once (1..=[`MAX_POSTED_LIMIT`]); more wait in order.
    pub max_posted: usize,
    /// Limit for socket creation, bind and connect together.
    pub connect_timeout: Duration,
}

impl Default for ConnectOptions {
    fn default() -> Self {
        Self {
            nodelay: false,
            max_posted: 8,
            connect_timeout: Duration::from_secs(10),
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
    /// The send is with the provider, which accepted the cancel request; or it was
    /// about to be handed over, and completes with `STATUS_CANCELLED` instead.
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
const POSTED: u8 = 1;
const DONE: u8 = 2;

/// One send, from `send` to its completion.
struct SendOp {
    next: *mut SendOp,
    id: u64,
    conn: Arc<Connection>,
    irp: Option<Irp>,
    buf: WSK_BUF,
    chain: MdlChain,
    owned: Option<Vec<u8>>,
    flags: u32,
    completion: Option<Completion>,
    refs: AtomicU8,
    stage: AtomicU8,
    /// Set (under the state lock) once `post()` is about to hand the IRP to the
    /// provider; before that a cancel is only recorded in `cancel_requested`.
    submitted: AtomicBool,
    /// A cancel arrived while the op was posted but not yet submitted (state lock).
    cancel_requested: AtomicBool,
}

/// Mutable state of a connection, under its spin lock.
struct State {
    head: *mut SendOp,
    tail: *mut SendOp,
    queued: usize,
    posted: Vec<*mut SendOp>,
    free_irps: Vec<Irp>,
    close_irp: Option<Irp>,
    pumping: bool,
    rerun: bool,
    closing: bool,
    close_issued: bool,
    close_done: bool,
}

// SAFETY: the raw op pointers are owned references to pool objects that any thread may
// use under the lock.
unsafe impl Send for State {}

/// A connected TCP socket.
///
/// # Invariants
/// `socket` is an open WSK connection socket with dispatch table `dispatch` until the
/// close the pump issues has completed; after that neither is used.
pub struct Connection {
    socket: NonNull<WSK_SOCKET>,
    dispatch: NonNull<WSK_PROVIDER_CONNECTION_DISPATCH>,
    remote: SocketAddr,
    nodelay: bool,
    max_posted: usize,
    state: SpinLock<State>,
    closed: Event,
    drained: Event,
    next_id: AtomicU64,
    sends: AtomicU64,
    bytes: AtomicU64,
    errors: AtomicU64,
}

// SAFETY: the socket may be used from any thread at <= DISPATCH_LEVEL; our own state is
// behind the spin lock or atomic.
unsafe impl Send for Connection {}
// SAFETY: as above.
unsafe impl Sync for Connection {}

impl Connection {
    /// Wraps a connected socket.
    ///
    /// # Safety
    /// `socket` is a connected WSK connection socket whose `Dispatch` is a
    /// `WSK_PROVIDER_CONNECTION_DISPATCH`; the new connection owns it (and closes it).
    pub(crate) unsafe fn new(
        socket: NonNull<WSK_SOCKET>,
        remote: SocketAddr,
        options: &ConnectOptions,
    ) -> Result<Arc<Self>> {
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
        Ok(Arc::new(Self {
            socket,
            dispatch,
            remote,
            nodelay: options.nodelay,
            max_posted,
            state: SpinLock::new(State {
                head: ptr::null_mut(),
                tail: ptr::null_mut(),
                queued: 0,
                posted,
                free_irps,
                // Allocated now so that closing never fails and works at DISPATCH_LEVEL.
                close_irp: Some(Irp::new()?),
                pumping: false,
                rerun: false,
                closing: false,
                close_issued: false,
                close_done: false,
            }),
            closed: Event::notification()?,
            drained: Event::notification()?,
            next_id: AtomicU64::new(1),
            sends: AtomicU64::new(0),
            bytes: AtomicU64::new(0),
            errors: AtomicU64::new(0),
        }))
    }

    /// [`Self::new`] for tests that drive a connection with a provider of their own
    /// (the schedule exploration, `tests/schedule.rs`). Not part of the driver's API.
    ///
    /// # Safety
    /// As for [`Self::new`].
    ///
    /// # Errors
    /// `STATUS_INVALID_PARAMETER` (no dispatch table), `STATUS_INSUFFICIENT_RESOURCES`.
    #[doc(hidden)]
    pub unsafe fn from_socket_for_tests(
        socket: NonNull<WSK_SOCKET>,
        remote: SocketAddr,
        options: &ConnectOptions,
    ) -> Result<Arc<Self>> {
        // SAFETY: forwarded from the caller's contract.
        unsafe { Self::new(socket, remote, options) }
    }

    /// The peer address.
    #[must_use]
    pub const fn remote(&self) -> SocketAddr {
        self.remote
    }

    /// Current counters.
    #[must_use]
    pub fn stats(&self) -> ConnectionStats {
        let st = self.state.lock();
        ConnectionStats {
            sends: self.sends.load(Ordering::Relaxed),
            bytes: self.bytes.load(Ordering::Relaxed),
            errors: self.errors.load(Ordering::Relaxed),
            // CAST: counts of in-memory objects fit in u64.
            in_flight: (st.queued + st.posted.len()) as u64,
        }
    }

    /// Whether the connection is closing or closed.
    #[must_use]
    pub fn is_closing(&self) -> bool {
        self.state.lock().closing
    }

    /// Sends `payload` with `flags` (`WSK_FLAG_NODELAY` or 0); `completion` reports the
    /// result. Sends reach `WskSend` in the order `send` is called.
    ///
    /// Returns the send's id once it is queued; `completion` will then run exactly once.
    /// On error nothing was queued and `completion` is dropped without running.
    ///
    /// # Safety
    /// Borrowed payloads (every variant but `Owned`) stay valid — and MDLs locked —
    /// until `completion` runs; nonpaged buffers really are nonpaged.
    ///
    /// # Errors
    /// `STATUS_INVALID_PARAMETER` for bad flags or a payload that fails validation
    /// (empty, `Offset`/`Length` outside the chain, segments outside the buffer);
    /// `STATUS_INVALID_CONNECTION` when the connection is closing;
    /// `STATUS_INSUFFICIENT_RESOURCES`.
    ///
    /// # IRQL
    /// <= `DISPATCH_LEVEL`.
    pub unsafe fn send(
        self: &Arc<Self>,
        payload: Payload<'_>,
        flags: u32,
        completion: Completion,
    ) -> core::result::Result<SendId, Refused> {
        // SAFETY: forwarded from the caller's contract.
        let op = match unsafe { self.build(payload, flags) } {
            Ok(op) => op,
            Err(error) => return Err(Refused { error, completion }),
        };
        // The completion moves in only once the op exists, so a refusal can hand it back.
        let mut op = match PoolBox::try_new(op) {
            Ok(op) => op,
            Err(error) => return Err(Refused { error, completion }),
        };
        op.completion = Some(completion);
        let id = op.id;
        {
            let mut st = self.state.lock();
            if st.closing {
                drop(st);
                if let Some(completion) = op.completion.take() {
                    return Err(Refused {
                        error: Error::NOT_CONNECTED,
                        completion,
                    });
                }
                return Err(Refused {
                    error: Error::NOT_CONNECTED,
                    completion: Completion::Closure(Box::new(|_| {})),
                });
            }
            let op = PoolBox::into_raw(op);
            if st.tail.is_null() {
                st.head = op;
            } else {
                // SAFETY: `tail` is a queued op owned by the queue (lock held).
                unsafe { (*st.tail).next = op };
            }
            st.tail = op;
            st.queued += 1;
        }
        self.pump();
        Ok(SendId(id))
    }

    /// Builds an op (without its completion) for `payload`.
    ///
    /// # Safety
    /// As for [`Self::send`].
    unsafe fn build(self: &Arc<Self>, payload: Payload<'_>, flags: u32) -> Result<SendOp> {
        if flags & !SEND_FLAGS != 0 {
            return Err(Error::INVALID_PARAMETER);
        }
        let flags = if self.nodelay {
            flags | WSK_FLAG_NODELAY
        } else {
            flags
        };
        // SAFETY: forwarded from the caller's contract.
        let (buf, chain, owned) = unsafe { prepare(payload)? };
        // SAFETY: the chain is live: ours, or the caller's (contract).
        unsafe { mdl::validate(&buf)? };
        let irp = match self.state.lock().free_irps.pop() {
            Some(irp) => irp,
            None => Irp::new()?,
        };
        Ok(SendOp {
            next: ptr::null_mut(),
            id: self.next_id.fetch_add(1, Ordering::Relaxed),
            conn: Arc::clone(self),
            irp: Some(irp),
            buf,
            chain,
            owned,
            flags,
            completion: None,
            refs: AtomicU8::new(0),
            stage: AtomicU8::new(QUEUED),
            submitted: AtomicBool::new(false),
            cancel_requested: AtomicBool::new(false),
        })
    }

    /// Sends `data` (copied into an owned buffer) and waits for the result.
    ///
    /// # Errors
    /// As [`Self::send_and_wait`].
    ///
    /// # IRQL
    /// `PASSIVE_LEVEL`.
    pub fn send_blocking(
        self: &Arc<Self>,
        data: &[u8],
        flags: u32,
        limit: Duration,
    ) -> Result<usize> {
        let mut owned = Vec::new();
        owned
            .try_reserve_exact(data.len())
            .map_err(|_| Error::NO_RESOURCES)?;
        owned.extend_from_slice(data);
        // SAFETY: an owned payload borrows nothing.
        unsafe { self.send_and_wait(Payload::Owned(owned), flags, limit) }
    }

    /// Sends `payload` and waits for the result: the blocking helper for
    /// `PASSIVE_LEVEL` callers. After `limit` the send is cancelled (or, where the
    /// provider cannot cancel, the connection is closed) and the helper waits for the
    /// completion that follows, so borrowed buffers are never left with the provider.
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
        self: &Arc<Self>,
        payload: Payload<'_>,
        flags: u32,
        limit: Duration,
    ) -> Result<usize> {
        struct Waiter {
            event: Event,
            result: SpinLock<Option<SendResult>>,
        }
        let waiter = Arc::new(Waiter {
            event: Event::notification()?,
            result: SpinLock::new(None),
        });
        let signal = Arc::clone(&waiter);
        let completion = Completion::Closure(Box::new(move |result| {
            *signal.result.lock() = Some(result);
            signal.event.set();
        }));
        // SAFETY: forwarded from the caller's contract; we wait for completion below.
        let id = unsafe { self.send(payload, flags, completion) }.map_err(|r| r.error)?;
        let mut timed_out = false;
        if !waiter.event.wait(limit) {
            timed_out = true;
            if self.cancel(id) == CancelOutcome::NotHonoured {
                self.begin_close();
            }
            // Closing completes every send of the socket; borrowed memory must not be
            // returned to the caller before that, so this wait repeats until it does.
            while !waiter.event.wait(CLOSE_WAIT) {
                self.begin_close();
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
    /// one gets `IoCancelIrp`.
    ///
    /// # IRQL
    /// <= `DISPATCH_LEVEL` (a front end's cancel routine).
    pub fn cancel(self: &Arc<Self>, id: SendId) -> CancelOutcome {
        let mut st = self.state.lock();
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
                self.check_drained();
                return CancelOutcome::Cancelled;
            }
            prev = cur;
            cur = next;
        }
        // With the provider?
        let found = st.posted.iter().copied().find(|&op| {
            // SAFETY: posted ops stay live while listed (the completion's reference).
            unsafe { (*op).id == id.0 }
        });
        let Some(op) = found else {
            return CancelOutcome::NotFound;
        };
        // SAFETY: listed, so live (lock held).
        let listed = unsafe { &*op };
        if !listed.submitted.load(Ordering::Relaxed) {
            // Listed as posted, but `post()` has not handed the IRP over yet: an
            // `IoCancelIrp` now would be undone by the IRP's re-arming. Recorded here,
            // honoured by `post()`, which completes the send with `STATUS_CANCELLED`.
            listed.cancel_requested.store(true, Ordering::Relaxed);
            return CancelOutcome::Requested;
        }
        // SAFETY: listed, so live; this reference keeps its IRP from being recycled.
        unsafe { (*op).refs.fetch_add(1, Ordering::AcqRel) };
        drop(st);
        // SAFETY: we hold a reference, so the op and its IRP are live.
        let honoured = unsafe { (*op).irp.as_ref() }.is_some_and(|irp| {
            // SAFETY: the IRP is live (our reference) and not reused meanwhile.
            unsafe { irp.cancel() }
        });
        // SAFETY: releasing the reference taken above.
        unsafe { release(op) };
        if honoured {
            CancelOutcome::Requested
        } else {
            CancelOutcome::NotHonoured
        }
    }

    /// Starts closing: new sends are refused, queued ones complete with
    /// `STATUS_CANCELLED`, and the socket is closed (which completes posted sends with
    /// the provider's status) as soon as no send is being posted. Does not wait.
    ///
    /// # IRQL
    /// <= `DISPATCH_LEVEL`.
    pub fn begin_close(self: &Arc<Self>) {
        {
            let mut st = self.state.lock();
            if st.closing {
                return;
            }
            st.closing = true;
        }
        self.pump();
    }

    /// Closes the connection and waits until every send has completed and the socket is
    /// closed. Idempotent.
    ///
    /// # Errors
    /// `STATUS_IO_TIMEOUT` if the provider did not finish within 30 s (the memory then
    /// stays allocated: nothing is freed under the provider).
    ///
    /// # IRQL
    /// `PASSIVE_LEVEL`.
    pub fn close(self: &Arc<Self>) -> Result {
        self.begin_close();
        if self.closed.wait(CLOSE_WAIT) && self.drained.wait(CLOSE_WAIT) {
            Ok(())
        } else {
            Err(Error::TIMEOUT)
        }
    }

    /// Posts queued sends (and issues the close) until there is nothing to do; at most
    /// one thread pumps at a time, others just ask it to go round again.
    fn pump(self: &Arc<Self>) {
        let mut st = self.state.lock();
        if st.pumping {
            st.rerun = true;
            return;
        }
        st.pumping = true;
        loop {
            st.rerun = false;
            if st.closing {
                let mut cancelled = core::mem::replace(&mut st.head, ptr::null_mut());
                st.tail = ptr::null_mut();
                st.queued = 0;
                let issue_close = !st.close_issued;
                st.close_issued = true;
                let close_irp = if issue_close {
                    st.close_irp.take()
                } else {
                    None
                };
                drop(st);
                while !cancelled.is_null() {
                    // SAFETY: detached from the queue above, so owned here, never posted.
                    let op = unsafe { PoolBox::from_raw(cancelled) };
                    cancelled = op.next;
                    self.complete_unposted(op, STATUS_CANCELLED);
                }
                if let Some(irp) = close_irp {
                    self.issue_close(irp);
                }
                st = self.state.lock();
                if !st.rerun {
                    break;
                }
                continue;
            }
            while st.posted.len() < self.max_posted && !st.head.is_null() {
                let op = st.head;
                // SAFETY: the queue owns `op` (lock held).
                st.head = unsafe { (*op).next };
                if st.head.is_null() {
                    st.tail = ptr::null_mut();
                }
                st.queued -= 1;
                // The references and stage are set before the op becomes visible to
                // `cancel` in `posted`: set later (in `post()`, after the unlock), a cancel
                // in between took the count 0 -> 1 -> 0 and freed the op under `post()`.
                // SAFETY: the queue owned `op` until now (lock held); no one else has it.
                unsafe { arm(op) };
                // Capacity was reserved for max_posted entries: no allocation here.
                st.posted.push(op);
                drop(st);
                // SAFETY: `op` is listed as posted and owned by this pump until posted.
                unsafe { self.post(op) };
                st = self.state.lock();
                if st.closing {
                    break;
                }
            }
            if !st.rerun && !st.closing {
                break;
            }
        }
        st.pumping = false;
        drop(st);
        self.check_drained();
    }

    /// Hands one op to `WskSend`.
    ///
    /// # Safety
    /// `op` was just moved from the queue to the posted list by the pump.
    unsafe fn post(&self, op: *mut SendOp) {
        // SAFETY: the pump owns the op until it is posted; `arm` gave it the poster's
        // and the completion's references.
        let o = unsafe { &mut *op };
        let irp = o.irp.as_mut().map_or(ptr::null_mut(), |irp| {
            // SAFETY: the op's IRP is not in flight; the op outlives its completion.
            unsafe { irp.prepare(send_complete, op.cast()) };
            irp.as_ptr()
        });
        // From here a cancel goes to the IRP (whose `Cancel` flag the re-arming above
        // can no longer clear); one that came before is honoured now.
        let cancelled = {
            let _st = self.state.lock();
            o.submitted.store(true, Ordering::Relaxed);
            o.cancel_requested.load(Ordering::Relaxed)
        };
        if cancelled
            && o.stage
                .compare_exchange(POSTED, DONE, Ordering::AcqRel, Ordering::Acquire)
                .is_ok()
        {
            // SAFETY: we won the stage and hold the poster's reference.
            unsafe { self.finish(op, STATUS_CANCELLED, 0) };
            // SAFETY: the IRP was never submitted: the completion's reference is ours.
            unsafe { release(op) };
            // SAFETY: the poster's reference.
            unsafe { release(op) };
            return;
        }
        let buf = ptr::addr_of_mut!(o.buf);
        let flags = o.flags;
        // SAFETY: the socket is open (type invariant: the pump has not closed it).
        let dispatch = unsafe { self.dispatch.as_ref() };
        let returned = match dispatch.WskSend {
            // SAFETY: live socket, validated WSK_BUF that lives in the op until
            // completion, our IRP with its completion routine armed.
            Some(wsk_send) => unsafe { wsk_send(self.socket.as_ptr(), buf, flags, irp) },
            None => wsksend_ffi::status::STATUS_NOT_SUPPORTED,
        };
        if returned != STATUS_PENDING
            && o.stage
                .compare_exchange(POSTED, DONE, Ordering::AcqRel, Ordering::Acquire)
                .is_ok()
        {
            // The provider returned without completing the IRP: it will not touch it,
            // so report the returned status here, and drop the completion's reference.
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
        // SAFETY: the poster's reference.
        unsafe { release(op) };
    }

    /// Reports a posted op's result: frees its MDLs, unlists it, runs its completion
    /// and lets the pump continue.
    ///
    /// # Safety
    /// The caller won the op's stage (`POSTED` → `DONE`) and holds a reference.
    unsafe fn finish(&self, op: *mut SendOp, status: NTSTATUS, bytes: usize) {
        // SAFETY: live (reference held), and only the stage winner gets here.
        let o = unsafe { &mut *op };
        // Our MDLs go before the caller hears of completion: they may describe pages
        // of the caller's buffer (partial MDLs of a user buffer about to be unlocked).
        drop(core::mem::replace(&mut o.chain, MdlChain::empty()));
        drop(o.owned.take());
        let completion = o.completion.take();
        {
            let mut st = self.state.lock();
            if let Some(i) = st.posted.iter().position(|&p| p == op) {
                st.posted.swap_remove(i);
            }
        }
        self.account(status, bytes);
        if let Some(completion) = completion {
            completion.run(SendResult { status, bytes });
        }
        let conn = Arc::clone(&o.conn);
        conn.pump();
    }

    /// Reports a send that never reached the provider.
    fn complete_unposted(&self, mut op: PoolBox<SendOp>, status: NTSTATUS) {
        drop(core::mem::replace(&mut op.chain, MdlChain::empty()));
        drop(op.owned.take());
        let completion = op.completion.take();
        self.account(status, 0);
        if let Some(completion) = completion {
            completion.run(SendResult { status, bytes: 0 });
        }
        self.recycle(op);
    }

    fn account(&self, status: NTSTATUS, bytes: usize) {
        if NT_SUCCESS(status) {
            self.sends.fetch_add(1, Ordering::Relaxed);
            // CAST: usize fits in u64 on every target we build for.
            self.bytes.fetch_add(bytes as u64, Ordering::Relaxed);
        } else {
            self.errors.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Frees an op whose IRP is no longer in flight, keeping the IRP for reuse.
    fn recycle(&self, mut op: PoolBox<SendOp>) {
        let irp = op.irp.take();
        let spare = {
            let mut st = self.state.lock();
            match irp {
                Some(irp) if !st.closing && st.free_irps.len() < self.max_posted => {
                    st.free_irps.push(irp);
                    None
                }
                other => other,
            }
        };
        drop(spare);
        drop(op);
    }

    /// Issues `WskCloseSocket` (from the pump, so no send is being posted).
    fn issue_close(self: &Arc<Self>, mut irp: Irp) {
        let context = Arc::into_raw(Arc::clone(self)).cast_mut().cast::<c_void>();
        // SAFETY: the close IRP is not in flight; `context` keeps the connection alive
        // until `close_complete` takes it back.
        unsafe { irp.prepare(close_complete, context) };
        let raw = irp.as_ptr();
        // The IRP is parked in the state until its completion routine frees it.
        self.state.lock().close_irp = Some(irp);
        // SAFETY: the socket is open (type invariant).
        let dispatch = unsafe { self.dispatch.as_ref() };
        let returned = match dispatch.WskCloseSocket {
            // SAFETY: open socket (invariant), our armed IRP; after this call the socket
            // is never used again.
            Some(close) => unsafe { close(self.socket.as_ptr(), raw) },
            None => wsksend_ffi::status::STATUS_NOT_SUPPORTED,
        };
        if returned != STATUS_PENDING && !self.closed_flag() {
            // Not completed and never will be (contract-breaking provider): finish here.
            // SAFETY: the routine will not run, so we own `context` and the IRP.
            unsafe { close_complete(ptr::null_mut(), raw, context) };
        }
    }

    fn closed_flag(&self) -> bool {
        self.state.lock().close_done
    }

    /// Signals `drained` once closing, nothing is queued or posted and the close is done.
    fn check_drained(&self) {
        let st = self.state.lock();
        if st.closing && st.close_done && st.queued == 0 && st.posted.is_empty() && !st.pumping {
            self.drained.set();
        }
    }
}

impl Drop for Connection {
    fn drop(&mut self) {
        let st = self.state.get_mut();
        // Ops hold a reference to the connection, so none is left; IRPs are ours.
        debug_assert!(st.head.is_null() && st.posted.is_empty());
        st.free_irps.clear();
        st.close_irp = None;
    }
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

/// Makes a queued op posted: stage `POSTED`, one reference for the poster and one for
/// the completion routine.
///
/// # Safety
/// The caller owns `op` (just taken off the queue, not yet listed as posted).
unsafe fn arm(op: *mut SendOp) {
    // SAFETY: owned by the caller, so live and not shared yet.
    let o = unsafe { &*op };
    o.stage.store(POSTED, Ordering::Release);
    o.refs.store(2, Ordering::Release);
}

/// Drops one reference of a posted op; the last one recycles it.
///
/// # Safety
/// The caller holds one of the op's references.
unsafe fn release(op: *mut SendOp) {
    // SAFETY: a held reference keeps the op live.
    let last = unsafe { (*op).refs.fetch_sub(1, Ordering::AcqRel) } == 1;
    if last {
        // SAFETY: the last reference: no one else uses the op or its IRP any more.
        let op = unsafe { PoolBox::from_raw(op) };
        let conn = Arc::clone(&op.conn);
        conn.recycle(op);
        conn.check_drained();
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
        let conn = Arc::clone(&o.conn);
        // SAFETY: we won the stage and hold a reference.
        unsafe { conn.finish(op, status_block.Status, status_block.Information) };
    }
    // SAFETY: this routine's reference.
    unsafe { release(op) };
    STATUS_MORE_PROCESSING_REQUIRED
}

/// Completion routine of `WskCloseSocket`.
///
/// # Safety
/// `context` is an `Arc<Connection>` from `Arc::into_raw` in `issue_close`.
unsafe extern "system" fn close_complete(
    _device: *mut DEVICE_OBJECT,
    _irp: *mut IRP,
    context: *mut c_void,
) -> NTSTATUS {
    // SAFETY: the reference `issue_close` leaked for us.
    let conn = unsafe { Arc::from_raw(context.cast_const().cast::<Connection>()) };
    conn.state.lock().close_done = true;
    conn.closed.set();
    conn.check_drained();
    STATUS_MORE_PROCESSING_REQUIRED
}
