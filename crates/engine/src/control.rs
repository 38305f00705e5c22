//! Synchronous WSK control calls (socket, bind, connect, close) for `PASSIVE_LEVEL`
//! callers: one IRP per call, a bounded wait, cancel-then-wait on timeout, and — where
//! the provider does not honour cancel — closing the socket (DESIGN.md rules 2, 7, 9).

use core::ffi::c_void;
use core::net::SocketAddr;
use core::sync::atomic::{AtomicBool, Ordering};
use core::time::Duration;

use wsksend_ffi::status::{STATUS_MORE_PROCESSING_REQUIRED, STATUS_PENDING};
use wsksend_ffi::{
    AF_INET, AF_INET6, DEVICE_OBJECT, IRP, NT_SUCCESS, NTSTATUS, SOCKADDR, SOCKADDR_IN,
    SOCKADDR_IN6,
};

use crate::irp::{Irp, io_result};
use crate::pool::PoolBox;
use crate::sync::Event;
use crate::{Error, Result};

/// How long to wait after `IoCancelIrp` before closing the socket instead (a provider
/// that honours cancel completes at once; Wine never does).
const CANCEL_GRACE: Duration = Duration::from_millis(100);

/// The slice a [`Deadline`] waits in: its accounting error per wait.
const SLICE: Duration = Duration::from_millis(10);

/// A time budget shared by several waits, kept without a clock: waits are made in
/// slices of at most [`SLICE`] and each slice is charged in full, so the budget is an
/// upper bound on the time spent waiting (callers such as a connect's socket, bind and
/// connect calls share one).
pub(crate) struct Deadline {
    left: Duration,
}

impl Deadline {
    /// A budget of `limit`.
    pub(crate) const fn new(limit: Duration) -> Self {
        Self { left: limit }
    }

    /// Waits for `event` while budget is left; returns whether it was signalled.
    fn wait(&mut self, event: &Event) -> bool {
        loop {
            let slice = self.left.min(SLICE);
            if event.wait(slice) {
                self.left = self.left.saturating_sub(slice);
                return true;
            }
            self.left = self.left.saturating_sub(slice);
            if self.left.is_zero() {
                return false;
            }
        }
    }
}
/// How long to wait after closing the socket before abandoning the IRP.
const CLOSE_GRACE: Duration = Duration::from_secs(10);

/// A socket address in the layout WSK expects (`SOCKADDR_IN` or `SOCKADDR_IN6`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RawAddr {
    /// IPv4.
    V4(SOCKADDR_IN),
    /// IPv6.
    V6(SOCKADDR_IN6),
}

impl RawAddr {
    /// The WSK form of `addr`.
    #[must_use]
    pub const fn from_socket_addr(addr: SocketAddr) -> Self {
        match addr {
            SocketAddr::V4(a) => Self::V4(SOCKADDR_IN {
                sin_family: AF_INET,
                sin_port: a.port().to_be(),
                sin_addr: a.ip().octets(),
                sin_zero: [0; 8],
            }),
            SocketAddr::V6(a) => Self::V6(SOCKADDR_IN6 {
                sin6_family: AF_INET6,
                sin6_port: a.port().to_be(),
                sin6_flowinfo: a.flowinfo().to_be(),
                sin6_addr: a.ip().octets(),
                sin6_scope_id: a.scope_id(),
            }),
        }
    }

    /// The wildcard address (port 0) of the same family: what we bind before connecting
    /// (DESIGN.md rule 10).
    #[must_use]
    pub const fn wildcard_of(addr: SocketAddr) -> Self {
        match addr {
            SocketAddr::V4(_) => Self::from_socket_addr(SocketAddr::V4(
                core::net::SocketAddrV4::new(core::net::Ipv4Addr::UNSPECIFIED, 0),
            )),
            SocketAddr::V6(_) => Self::from_socket_addr(SocketAddr::V6(
                core::net::SocketAddrV6::new(core::net::Ipv6Addr::UNSPECIFIED, 0, 0, 0),
            )),
        }
    }

    /// The address family.
    #[must_use]
    pub const fn family(&self) -> u16 {
        match self {
            Self::V4(_) => AF_INET,
            Self::V6(_) => AF_INET6,
        }
    }

    fn as_mut_ptr(&mut self) -> *mut SOCKADDR {
        match self {
            Self::V4(a) => core::ptr::from_mut(a).cast(),
            Self::V6(a) => core::ptr::from_mut(a).cast(),
        }
    }
}

/// State shared with the completion routine of one synchronous call; in pool so that
/// an abandoned call leaves nothing dangling.
struct SyncCall {
    done: AtomicBool,
    event: Event,
    /// An address the provider may read until the IRP completes.
    addr: RawAddr,
}

/// Completion routine of synchronous calls: flags completion and wakes the waiter.
///
/// # Safety
/// `context` is the `SyncCall` of this IRP's call, live until the waiter sees `done`.
unsafe extern "system" fn sync_complete(
    _device: *mut DEVICE_OBJECT,
    _irp: *mut IRP,
    context: *mut c_void,
) -> NTSTATUS {
    // SAFETY: the waiter keeps the SyncCall alive until it has seen the event (or
    // abandons it, leaking it), so `context` is valid here.
    let call = unsafe { &*context.cast::<SyncCall>() };
    call.done.store(true, Ordering::Release);
    call.event.set();
    STATUS_MORE_PROCESSING_REQUIRED
}

/// Makes one provider call with a fresh IRP and waits for its completion.
///
/// `start` receives the IRP and a pointer to `addr` (kept valid until completion) and
/// returns what the provider returned; the wait is charged to `deadline`. On timeout
/// the IRP is cancelled; if the provider
/// does not complete it within [`CANCEL_GRACE`], `on_stuck` runs (it closes the socket,
/// which completes every IRP of the socket); if even that does not complete it, the
/// IRP and its context are abandoned (leaked, never freed under the provider).
///
/// # Errors
/// The provider's status; `STATUS_IO_TIMEOUT` when the deadline passed.
///
/// # IRQL
/// `PASSIVE_LEVEL`.
pub(crate) fn call(
    deadline: &mut Deadline,
    addr: Option<RawAddr>,
    on_stuck: &mut dyn FnMut(),
    start: &mut dyn FnMut(*mut IRP, *mut SOCKADDR) -> NTSTATUS,
) -> Result<usize> {
    Call::new()?.run(deadline, addr, on_stuck, start)
}

/// One synchronous call's IRP and context, allocated ahead: a call that must not fail
/// for lack of memory later (closing a socket no connection owns yet) is prepared
/// before the socket exists.
pub(crate) struct Call {
    irp: Irp,
    ctx: PoolBox<SyncCall>,
}

impl Call {
    /// Allocates the IRP, the context and its event.
    ///
    /// # Errors
    /// `STATUS_INSUFFICIENT_RESOURCES`.
    pub(crate) fn new() -> Result<Self> {
        let irp = Irp::new()?;
        let ctx = PoolBox::try_new(SyncCall {
            done: AtomicBool::new(false),
            event: Event::notification()?,
            addr: RawAddr::V4(SOCKADDR_IN {
                sin_family: AF_INET,
                sin_port: 0,
                sin_addr: [0; 4],
                sin_zero: [0; 8],
            }),
        })?;
        Ok(Self { irp, ctx })
    }

    /// Makes the call: as [`call`], with what was allocated ahead (nothing more is
    /// allocated, so a close made with it cannot fail for memory).
    ///
    /// # Errors
    /// As [`call`].
    pub(crate) fn run(
        self,
        deadline: &mut Deadline,
        addr: Option<RawAddr>,
        on_stuck: &mut dyn FnMut(),
        start: &mut dyn FnMut(*mut IRP, *mut SOCKADDR) -> NTSTATUS,
    ) -> Result<usize> {
        let Self { mut irp, mut ctx } = self;
        if let Some(addr) = addr {
            ctx.addr = addr;
        }
        let addr_ptr = ctx.addr.as_mut_ptr();
        let ctx_ptr = core::ptr::from_ref::<SyncCall>(&ctx).cast_mut().cast();
        // SAFETY: the IRP is fresh (not in flight); `ctx` lives until completion or is leaked.
        unsafe { irp.prepare(sync_complete, ctx_ptr) };
        let returned = start(irp.as_ptr(), addr_ptr);
        if returned != STATUS_PENDING && !ctx.done.load(Ordering::Acquire) {
            // The provider failed the call without completing the IRP (Wine's stubs do
            // this); it will not touch the IRP again, so the returned status is the result.
            return Err(Error::from_status(returned));
        }
        if deadline.wait(&ctx.event) {
            // SAFETY: the completion routine ran, so the IRP is back in our hands.
            let (status, information) = unsafe { irp.io_status() };
            return io_result(status, information);
        }
        // SAFETY: the IRP is live: it has not completed, and we have not freed it.
        unsafe { irp.cancel() };
        if !ctx.event.wait(CANCEL_GRACE) {
            on_stuck();
            if !ctx.event.wait(CLOSE_GRACE) {
                irp.abandon();
                let _ = PoolBox::into_raw(ctx);
                return Err(Error::TIMEOUT);
            }
        }
        // SAFETY: completed (the event is set), so the IRP is ours again.
        let (status, information) = unsafe { irp.io_status() };
        // A call that completed successfully while we cancelled it did happen.
        if NT_SUCCESS(status) {
            Ok(information)
        } else {
            Err(Error::TIMEOUT)
        }
    }
}
