//! The model provider's socket: an operation queue, a worker thread, and the real
//! [`TcpStream`] behind it.
//!
//! Operations of one socket run one at a time, in call order: a caller performs its
//! operation inline when it holds the socket's write token and nothing is queued,
//! otherwise the worker does. `close` and the end of a session stop the worker by
//! shutting the stream down, so nothing here blocks indefinitely.

use std::collections::VecDeque;
use std::io::{ErrorKind, Write};
use std::net::{Shutdown, SocketAddr, TcpStream};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread;
use std::time::Duration;

use wsksend_ffi::status::{
    STATUS_ADDRESS_ALREADY_ASSOCIATED, STATUS_CANCELLED, STATUS_CONNECTION_ABORTED,
    STATUS_CONNECTION_DISCONNECTED, STATUS_CONNECTION_REFUSED, STATUS_CONNECTION_RESET,
    STATUS_HOST_UNREACHABLE, STATUS_INVALID_CONNECTION, STATUS_INVALID_PARAMETER,
    STATUS_IO_TIMEOUT, STATUS_NETWORK_UNREACHABLE, STATUS_NOT_SUPPORTED, STATUS_PENDING,
    STATUS_SUCCESS, STATUS_UNSUCCESSFUL,
};
use wsksend_ffi::{AF_INET, IRP, NTSTATUS, WSK_FLAG_NODELAY};

use crate::checker::{Fault, generation, lock};
use crate::irp::{mark_pending, park_cancel_routine, provider_complete};

/// `STATUS_INVALID_DEVICE_STATE` (not in `wsksend-ffi`).
// CAST: the header spells it as unsigned hex; NTSTATUS is its i32 bit pattern.
pub(crate) const STATUS_INVALID_DEVICE_STATE: NTSTATUS = 0xC000_0184_u32 as i32;
/// How long a model connect may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// Helper threads (pended `WskSocket` / `WskCloseSocket`) still running.
pub(crate) static HELPERS: AtomicUsize = AtomicUsize::new(0);
/// Inline completions nested on one thread beyond which operations are queued instead
/// (a client that issues the next operation from its completion routine would
/// otherwise recurse without bound).
const MAX_INLINE_DEPTH: usize = 16;

thread_local! {
    static INLINE_DEPTH: std::cell::Cell<usize> = const { std::cell::Cell::new(0) };
}

/// One provider operation.
pub(crate) enum Work {
    Bind(SocketAddr),
    Connect(SocketAddr),
    /// `sent` bytes of `data` are already written (an inline attempt that would block).
    Send {
        data: Vec<u8>,
        flags: u32,
        sent: usize,
    },
    Disconnect {
        data: Vec<u8>,
        abortive: bool,
    },
}

impl Work {
    const fn flags(&self) -> u32 {
        match self {
            Self::Send { flags, .. } => *flags,
            _ => 0,
        }
    }

    const fn sent(&self) -> usize {
        match self {
            Self::Send { sent, .. } => *sent,
            _ => 0,
        }
    }
}

/// A queued operation: the IRP (by address) and what to do.
struct Job {
    irp: usize,
    work: Work,
    delay: Option<Duration>,
}

/// Socket state shared by the provider calls and the worker thread.
pub(crate) struct SockShared {
    pub(crate) generation: u64,
    family: u16,
    inner: Mutex<Inner>,
    cv: Condvar,
}

struct Inner {
    bound: Option<SocketAddr>,
    stream: Option<Arc<TcpStream>>,
    disconnected: bool,
    nodelay: bool,
    queue: VecDeque<Job>,
    /// An operation is being performed (the write token): by the worker or inline.
    writing: bool,
    /// Completions in progress (completion routines running).
    completing: usize,
    closing: bool,
    /// IRPs parked by `PendUntilCancelled` / `PendIgnoringCancel`.
    parked: Vec<usize>,
    /// A close IRP waiting for the operation in progress to finish.
    close_irp: Option<usize>,
    worker_done: bool,
}

impl Inner {
    fn pending(&self) -> usize {
        self.queue.len() + usize::from(self.writing) + self.parked.len()
    }
}

/// Completes an IRP the provider owns, unless its session is over.
pub(crate) fn complete(generation_of: u64, irp: usize, status: NTSTATUS, information: usize) {
    if generation() == generation_of {
        provider_complete(irp as *mut IRP, status, information);
    }
}

/// Where an operation goes.
enum Plan {
    Inline { return_pending: bool },
    Queue(Option<Duration>),
    Park { cancel: bool },
    Fail(NTSTATUS),
}

impl SockShared {
    pub(crate) fn new(family: u16) -> Self {
        Self {
            generation: generation(),
            family,
            inner: Mutex::new(Inner {
                bound: None,
                stream: None,
                disconnected: false,
                nodelay: false,
                queue: VecDeque::new(),
                writing: false,
                completing: 0,
                closing: false,
                parked: Vec::new(),
                close_irp: None,
                worker_done: false,
            }),
            cv: Condvar::new(),
        }
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        lock(&self.inner)
    }

    fn family_matches(&self, addr: &SocketAddr) -> bool {
        (self.family == AF_INET) == addr.is_ipv4()
    }

    /// No operation queued, running or completing, and no close waiting.
    pub(crate) fn idle(&self) -> bool {
        let i = self.lock();
        i.queue.is_empty() && !i.writing && i.completing == 0 && i.close_irp.is_none()
    }

    /// Routes an operation whose IRP the provider has taken.
    pub(crate) fn submit(
        self: &Arc<Self>,
        irp: usize,
        mut work: Work,
        fault: Option<Fault>,
        pend_by_default: bool,
        max_pending: usize,
        concurrent: bool,
    ) -> NTSTATUS {
        let default = if pend_by_default {
            Plan::Queue(None)
        } else {
            Plan::Inline {
                return_pending: false,
            }
        };
        let plan = match fault {
            Some(Fault::Fail(s)) => Plan::Fail(s),
            Some(Fault::RejectFlags(mask)) if work.flags() & mask != 0 => {
                Plan::Fail(STATUS_NOT_SUPPORTED)
            }
            Some(Fault::Partial) => {
                if let Work::Send { data, .. } = &mut work {
                    data.truncate(data.len() / 2);
                }
                default
            }
            Some(Fault::PendUntilCancelled) => Plan::Park { cancel: true },
            Some(Fault::PendIgnoringCancel) => Plan::Park { cancel: false },
            Some(Fault::PendThenComplete) => Plan::Queue(None),
            Some(Fault::Pend(d)) => Plan::Queue(Some(d)),
            Some(Fault::CompleteImmediately) => Plan::Inline {
                return_pending: false,
            },
            Some(Fault::CompleteReturnPending) => Plan::Inline {
                return_pending: true,
            },
            Some(Fault::RejectFlags(_) | Fault::FailWithoutCompleting(_)) | None => default,
        };
        let g = self.generation;
        if let Plan::Fail(s) = plan {
            complete(g, irp, s, 0);
            return s;
        }
        let mut inner = self.lock();
        if inner.closing {
            drop(inner);
            complete(g, irp, STATUS_CANCELLED, 0);
            return STATUS_CANCELLED;
        }
        match plan {
            Plan::Inline { return_pending } => {
                let depth = INLINE_DEPTH.with(std::cell::Cell::get);
                if inner.writing || !inner.queue.is_empty() || depth >= MAX_INLINE_DEPTH {
                    // Keep the socket's order: queue behind earlier operations.
                    return self.enqueue(inner, irp, work, None, max_pending);
                }
                inner.writing = true;
                drop(inner);
                let (status, information) = match self.try_inline(work) {
                    Ok(done) => done,
                    Err(rest) => {
                        let mut inner = self.lock();
                        if inner.closing {
                            drop(inner);
                            (STATUS_CANCELLED, rest.sent())
                        } else {
                            // The socket buffer is full: the worker finishes the send
                            // (first in the queue, as it was started first).
                            mark_pending(irp as *mut IRP);
                            inner.queue.push_front(Job {
                                irp,
                                work: rest,
                                delay: None,
                            });
                            inner.writing = false;
                            drop(inner);
                            self.cv.notify_all();
                            return STATUS_PENDING;
                        }
                    }
                };
                self.finish_operation();
                if concurrent {
                    // Complete on a thread of its own, racing the caller and the
                    // completions of other sends.
                    mark_pending(irp as *mut IRP);
                    let shared = Arc::clone(self);
                    spawn_helper(move || {
                        complete(g, irp, status, information);
                        shared.completion_done();
                    });
                    return STATUS_PENDING;
                }
                if return_pending {
                    mark_pending(irp as *mut IRP);
                }
                INLINE_DEPTH.with(|d| d.set(depth + 1));
                complete(g, irp, status, information);
                INLINE_DEPTH.with(|d| d.set(depth));
                self.completion_done();
                if return_pending {
                    STATUS_PENDING
                } else {
                    status
                }
            }
            Plan::Queue(delay) => self.enqueue(inner, irp, work, delay, max_pending),
            Plan::Park { cancel } => self.park(inner, irp, cancel, max_pending),
            Plan::Fail(_) => STATUS_UNSUCCESSFUL,
        }
    }

    fn enqueue(
        &self,
        mut inner: MutexGuard<'_, Inner>,
        irp: usize,
        work: Work,
        delay: Option<Duration>,
        max_pending: usize,
    ) -> NTSTATUS {
        if inner.pending() >= max_pending {
            drop(inner);
            complete(self.generation, irp, STATUS_UNSUCCESSFUL, 0);
            return STATUS_UNSUCCESSFUL;
        }
        // Before the worker can see it: the worker may complete it at once.
        mark_pending(irp as *mut IRP);
        inner.queue.push_back(Job { irp, work, delay });
        drop(inner);
        self.cv.notify_all();
        STATUS_PENDING
    }

    fn park(
        &self,
        mut inner: MutexGuard<'_, Inner>,
        irp: usize,
        cancel: bool,
        max_pending: usize,
    ) -> NTSTATUS {
        if inner.pending() >= max_pending {
            drop(inner);
            complete(self.generation, irp, STATUS_UNSUCCESSFUL, 0);
            return STATUS_UNSUCCESSFUL;
        }
        let p = irp as *mut IRP;
        mark_pending(p);
        if cancel {
            // SAFETY: the provider owns the in-flight IRP.
            unsafe { wsksend_ffi::inline::IoSetCancelRoutine(p, Some(park_cancel_routine)) };
            // SAFETY: as above; `Cancel` is only ever set to TRUE concurrently.
            let cancelled = unsafe { (*p).Cancel } != 0;
            if cancelled {
                // SAFETY: as above.
                let ours = unsafe { wsksend_ffi::inline::IoSetCancelRoutine(p, None) };
                if ours.is_some() {
                    drop(inner);
                    complete(self.generation, irp, STATUS_CANCELLED, 0);
                    return STATUS_PENDING;
                }
                // IoCancelIrp is calling our cancel routine, which will find the IRP
                // parked (it waits for this lock) and complete it.
            }
        }
        inner.parked.push(irp);
        STATUS_PENDING
    }

    /// Completes a parked IRP (from the cancel routine) if it is still parked.
    pub(crate) fn cancel_parked(&self, irp: *mut IRP, status: NTSTATUS) {
        let mut inner = self.lock();
        let Some(at) = inner.parked.iter().position(|&p| p == irp as usize) else {
            return;
        };
        inner.parked.remove(at);
        drop(inner);
        complete(self.generation, irp as usize, status, 0);
    }

    /// Releases the write token after an operation; completion follows.
    fn finish_operation(&self) {
        let mut inner = self.lock();
        inner.writing = false;
        inner.completing += 1;
        drop(inner);
        self.cv.notify_all();
    }

    /// A completion finished; completes a waiting close IRP if nothing else is left.
    fn completion_done(&self) {
        let close = {
            let mut inner = self.lock();
            inner.completing -= 1;
            if inner.closing && !inner.writing {
                inner.close_irp.take()
            } else {
                None
            }
        };
        if let Some(irp) = close {
            complete(self.generation, irp, STATUS_SUCCESS, 0);
        }
    }

    /// The worker thread: performs queued operations in order.
    pub(crate) fn worker(self: Arc<Self>) {
        loop {
            let mut inner = self.lock();
            let mut job = loop {
                if inner.closing {
                    inner.worker_done = true;
                    drop(inner);
                    self.cv.notify_all();
                    return;
                }
                if !inner.writing
                    && let Some(job) = inner.queue.pop_front()
                {
                    break job;
                }
                inner = self
                    .cv
                    .wait(inner)
                    .unwrap_or_else(std::sync::PoisonError::into_inner);
            };
            inner.writing = true;
            if let Some(delay) = job.delay.take() {
                inner = self
                    .cv
                    .wait_timeout_while(inner, delay, |i| !i.closing)
                    .unwrap_or_else(std::sync::PoisonError::into_inner)
                    .0;
            }
            drop(inner);
            let (status, information) = self.execute(job.work);
            self.finish_operation();
            complete(self.generation, job.irp, status, information);
            self.completion_done();
        }
    }

    /// Performs one operation (holding the write token); returns status and
    /// `Information`.
    fn execute(&self, work: Work) -> (NTSTATUS, usize) {
        match work {
            Work::Bind(addr) => {
                let mut inner = self.lock();
                if inner.closing {
                    (STATUS_CANCELLED, 0)
                } else if !self.family_matches(&addr) {
                    (STATUS_INVALID_PARAMETER, 0)
                } else if inner.bound.is_some() {
                    (STATUS_ADDRESS_ALREADY_ASSOCIATED, 0)
                } else {
                    inner.bound = Some(addr);
                    (STATUS_SUCCESS, 0)
                }
            }
            Work::Connect(addr) => self.connect(addr),
            Work::Send { data, flags, sent } => self
                .write(&data, sent, flags & WSK_FLAG_NODELAY != 0, false)
                .unwrap_or_else(|sent| (STATUS_CONNECTION_DISCONNECTED, sent)),
            Work::Disconnect { data, abortive } => {
                if !data.is_empty() {
                    let (status, _) = self
                        .write(&data, 0, false, false)
                        .unwrap_or((STATUS_CONNECTION_DISCONNECTED, 0));
                    if status != STATUS_SUCCESS {
                        return (status, 0);
                    }
                }
                let mut inner = self.lock();
                let Some(stream) = inner.stream.clone().filter(|_| !inner.disconnected) else {
                    return (STATUS_INVALID_CONNECTION, 0);
                };
                inner.disconnected = true;
                drop(inner);
                if abortive {
                    crate::reset::reset(&stream);
                } else {
                    let _ = stream.shutdown(Shutdown::Write);
                }
                (STATUS_SUCCESS, 0)
            }
        }
    }

    fn connect(&self, addr: SocketAddr) -> (NTSTATUS, usize) {
        {
            let inner = self.lock();
            if inner.closing {
                return (STATUS_CANCELLED, 0);
            }
            if !self.family_matches(&addr) {
                return (STATUS_INVALID_PARAMETER, 0);
            }
            if inner.bound.is_none() || inner.stream.is_some() {
                return (STATUS_INVALID_DEVICE_STATE, 0);
            }
        }
        match TcpStream::connect_timeout(&addr, CONNECT_TIMEOUT) {
            Ok(stream) => {
                let _ = stream.set_nodelay(false);
                let mut inner = self.lock();
                if inner.closing {
                    let _ = stream.shutdown(Shutdown::Both);
                    return (STATUS_CANCELLED, 0);
                }
                inner.stream = Some(Arc::new(stream));
                inner.nodelay = false;
                (STATUS_SUCCESS, 0)
            }
            Err(e) => {
                let status = match e.kind() {
                    ErrorKind::TimedOut => STATUS_IO_TIMEOUT,
                    ErrorKind::HostUnreachable => STATUS_HOST_UNREACHABLE,
                    ErrorKind::NetworkUnreachable => STATUS_NETWORK_UNREACHABLE,
                    _ => STATUS_CONNECTION_REFUSED,
                };
                (status, 0)
            }
        }
    }

    /// Performs an operation inside the provider call. A send that would block (the
    /// socket buffer is full) comes back as `Err` with what is left to write.
    fn try_inline(&self, work: Work) -> Result<(NTSTATUS, usize), Work> {
        match work {
            Work::Send { data, flags, sent } => {
                match self.write(&data, sent, flags & WSK_FLAG_NODELAY != 0, true) {
                    Ok(done) => Ok(done),
                    Err(sent) => Err(Work::Send { data, flags, sent }),
                }
            }
            other => Ok(self.execute(other)),
        }
    }

    /// Writes `data[written..]`; returns the status and the total written. With
    /// `try_only` the write does not block: `Err(written)` if the socket buffer fills.
    fn write(
        &self,
        data: &[u8],
        mut written: usize,
        nodelay: bool,
        try_only: bool,
    ) -> Result<(NTSTATUS, usize), usize> {
        let stream = {
            let mut inner = self.lock();
            if inner.closing {
                return Ok((STATUS_CANCELLED, written));
            }
            let Some(stream) = inner.stream.clone().filter(|_| !inner.disconnected) else {
                return Ok((STATUS_INVALID_CONNECTION, written));
            };
            if inner.nodelay != nodelay {
                // Turning TCP_NODELAY on also pushes out what Nagle is holding back.
                let _ = stream.set_nodelay(nodelay);
                inner.nodelay = nodelay;
            }
            stream
        };
        if try_only && stream.set_nonblocking(true).is_err() {
            return Err(written);
        }
        let result = loop {
            if written >= data.len() {
                break Ok((STATUS_SUCCESS, written));
            }
            match (&*stream).write(&data[written..]) {
                Ok(0) => break Ok((STATUS_CONNECTION_DISCONNECTED, written)),
                Ok(n) => written += n,
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(e) if try_only && e.kind() == ErrorKind::WouldBlock => break Err(written),
                Err(e) => {
                    if self.lock().closing {
                        break Ok((STATUS_CANCELLED, written));
                    }
                    let status = match e.kind() {
                        ErrorKind::ConnectionReset | ErrorKind::BrokenPipe => {
                            STATUS_CONNECTION_RESET
                        }
                        ErrorKind::ConnectionAborted => STATUS_CONNECTION_ABORTED,
                        ErrorKind::NotConnected => STATUS_INVALID_CONNECTION,
                        _ => STATUS_CONNECTION_DISCONNECTED,
                    };
                    break Ok((status, written));
                }
            }
        };
        if try_only {
            let _ = stream.set_nonblocking(false);
        }
        result
    }

    /// `WskCloseSocket` after the IRP was taken.
    pub(crate) fn close(&self, irp: usize, fault: Option<Fault>) -> NTSTATUS {
        let (queued, parked, stream, disconnected) = {
            let mut inner = self.lock();
            inner.closing = true;
            (
                std::mem::take(&mut inner.queue),
                std::mem::take(&mut inner.parked),
                inner.stream.clone(),
                inner.disconnected,
            )
        };
        self.cv.notify_all();
        if let Some(stream) = stream {
            if disconnected {
                // Already disconnected (our side's end of stream is sent): unblock
                // anything still waiting.
                let _ = stream.shutdown(Shutdown::Both);
            } else {
                // Windows: "WskCloseSocket always performs an abortive disconnect ...
                // unless the socket is already fully disconnected": the peer sees a
                // reset, and a write in progress on the worker fails.
                crate::reset::reset(&stream);
            }
        }
        let g = self.generation;
        for p in parked {
            // SAFETY: the provider owns the parked IRP; the cancel routine is cleared
            // before completion (if IoCancelIrp took it first, the routine will not
            // find the IRP parked any more).
            unsafe { wsksend_ffi::inline::IoSetCancelRoutine(p as *mut IRP, None) };
            complete(g, p, STATUS_CANCELLED, 0);
        }
        for job in queued {
            complete(g, job.irp, STATUS_CANCELLED, 0);
        }
        {
            // Windows completes the close once no operation is in progress on the
            // socket, even while completion routines of its other IRPs are still
            // running (they may return after the close's routine has run).
            let mut inner = self.lock();
            if inner.writing {
                mark_pending(irp as *mut IRP);
                inner.close_irp = Some(irp);
                return STATUS_PENDING;
            }
        }
        let delay = match fault {
            Some(Fault::PendThenComplete) => Some(Duration::ZERO),
            Some(Fault::Pend(d)) => Some(d),
            _ => None,
        };
        match delay {
            Some(d) => {
                mark_pending(irp as *mut IRP);
                spawn_helper(move || {
                    thread::sleep(d);
                    complete(g, irp, STATUS_SUCCESS, 0);
                });
                STATUS_PENDING
            }
            None => {
                complete(g, irp, STATUS_SUCCESS, 0);
                STATUS_SUCCESS
            }
        }
    }

    /// Whether the worker thread has exited.
    pub(crate) fn worker_done(&self) -> bool {
        self.lock().worker_done
    }

    /// End of session: stop everything without calling driver code.
    pub(crate) fn stop(&self) {
        let stream = {
            let mut inner = self.lock();
            inner.closing = true;
            inner.queue.clear();
            inner.parked.clear();
            inner.close_irp = None;
            inner.stream.take()
        };
        self.cv.notify_all();
        if let Some(stream) = stream {
            let _ = stream.shutdown(Shutdown::Both);
        }
    }
}

/// Runs `f` on a helper thread, counted until it returns.
pub(crate) fn spawn_helper(f: impl FnOnce() + Send + 'static) {
    struct Done;
    impl Drop for Done {
        fn drop(&mut self) {
            HELPERS.fetch_sub(1, Ordering::AcqRel);
        }
    }
    HELPERS.fetch_add(1, Ordering::AcqRel);
    let spawned = thread::Builder::new()
        .name("wsk-model-helper".into())
        .spawn(move || {
            let _done = Done;
            f();
        });
    if spawned.is_err() {
        HELPERS.fetch_sub(1, Ordering::AcqRel);
    }
}
