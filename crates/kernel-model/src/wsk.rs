//! WSK registration (`netio.sys` exports) and a model WSK provider over real sockets.
//!
//! The provider implements connection sockets only (`AF_INET`/`AF_INET6`,
//! `SOCK_STREAM`, `IPPROTO_TCP`, `WSK_FLAG_CONNECTION_SOCKET`): `WskSocket`,
//! `WskBind`, `WskConnect` (a real [`std::net::TcpStream`]), `WskSend`, `WskDisconnect` and
//! `WskCloseSocket`. Every call takes the IRP as a lower driver would
//! (`IoSetNextIrpStackLocation`) and completes it with `IofCompleteRequest`, so the
//! completion routine the client armed on the next location runs.
//!
//! Each socket has one worker thread and a FIFO of operations, so sends are written in
//! the order `WskSend` was called. By default (and with [`crate::SendMode::Immediate`]
//! for sends) an operation completes inside the call, unless earlier operations of the
//! socket are still queued or a send would block on a full socket buffer: then the
//! worker finishes it and the call returns `STATUS_PENDING`, as a real provider would.
//! Injected [`Fault`]s change that per call. Inline completions nest at most 16 deep on
//! one thread (a client issuing its next send from the completion routine); deeper
//! operations are queued.
//!
//! `WskCloseSocket` shuts the stream down (unblocking a blocked write), completes every
//! queued or parked IRP of the socket with `STATUS_CANCELLED`, and then completes the
//! close IRP: inside the call, or (returning `STATUS_PENDING`) as soon as an operation
//! in progress on another thread, or the completion routine the close was called from,
//! has finished. It never blocks.

use std::ffi::c_void;
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV4, SocketAddrV6};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::thread;
use std::time::{Duration, Instant};

use wsksend_ffi::status::{
    STATUS_INSUFFICIENT_RESOURCES, STATUS_INVALID_HANDLE, STATUS_INVALID_PARAMETER,
    STATUS_NOT_SUPPORTED, STATUS_PENDING, STATUS_SUCCESS,
};
use wsksend_ffi::{
    AF_INET, AF_INET6, DISPATCH_LEVEL, IPPROTO_TCP, IRP, NTSTATUS, PASSIVE_LEVEL, SOCK_STREAM,
    SOCKADDR, SOCKADDR_IN, SOCKADDR_IN6, WSK_BUF, WSK_CLIENT, WSK_CLIENT_NPI, WSK_FLAG_ABORTIVE,
    WSK_FLAG_CONNECTION_SOCKET, WSK_NO_WAIT, WSK_PROVIDER_CONNECTION_DISPATCH,
    WSK_PROVIDER_DISPATCH, WSK_PROVIDER_NPI, WSK_REGISTRATION, WSK_SOCKET, WSK_VERSION_1_0,
};

use crate::checker::{Fault, Op, Rule, SendRecord, State, Violation, generation, state};
use crate::irp::{attach_mdls, check_for_provider, enter_provider, mark_pending};
use crate::kernel_export;
use crate::mdl::{mark_in_flight, validate_chain};
use crate::socket::{HELPERS, SockShared, Work, complete, spawn_helper};
use crate::sync::check_irql;

// --- registration ---

/// The model's record of one `WSK_REGISTRATION`.
pub(crate) struct RegRec {
    captures: usize,
    deregistered: bool,
}

static PROVIDER_DISPATCH: WSK_PROVIDER_DISPATCH = WSK_PROVIDER_DISPATCH {
    Version: WSK_VERSION_1_0,
    Reserved: 0,
    WskSocket: Some(wsk_socket),
    WskSocketConnect: None,
    WskControlClient: None,
};

static CONNECTION_DISPATCH: WSK_PROVIDER_CONNECTION_DISPATCH = WSK_PROVIDER_CONNECTION_DISPATCH {
    WskControlSocket: None,
    WskCloseSocket: Some(wsk_close_socket),
    WskBind: Some(wsk_bind),
    WskConnect: Some(wsk_connect),
    WskGetLocalAddress: None,
    WskGetRemoteAddress: None,
    WskSend: Some(wsk_send),
    WskReceive: None,
    WskDisconnect: Some(wsk_disconnect),
    WskRelease: None,
};

kernel_export! {
    /// `WskRegister`: the client's dispatch table must ask for version 1.0 or later
    /// (`STATUS_NOT_SUPPORTED` otherwise).
    ///
    /// # Safety
    /// `WskClientNpi` points to a client NPI whose `Dispatch` is readable.
    fn WskRegister(
        WskClientNpi: *const WSK_CLIENT_NPI,
        WskRegistration: *mut WSK_REGISTRATION,
    ) -> NTSTATUS {
        check_irql("WskRegister", PASSIVE_LEVEL);
        let mut st = state();
        if WskClientNpi.is_null() || WskRegistration.is_null() {
            st.violate(Rule::Misuse, "WskRegister with a NULL argument");
            return STATUS_INVALID_PARAMETER;
        }
        // SAFETY: the caller guarantees a readable client NPI.
        let dispatch = unsafe { (*WskClientNpi).Dispatch };
        if dispatch.is_null() {
            st.violate(Rule::Misuse, "WskRegister: client NPI without a dispatch table");
            return STATUS_INVALID_PARAMETER;
        }
        // SAFETY: the caller guarantees the dispatch table is readable.
        let version = unsafe { (*dispatch).Version };
        if version < WSK_VERSION_1_0 {
            return STATUS_NOT_SUPPORTED;
        }
        let key = WskRegistration as usize;
        if st.registrations.get(&key).is_some_and(|r| !r.deregistered) {
            st.violate(Rule::Misuse, format!("WskRegister({WskRegistration:p}) twice"));
            return STATUS_INVALID_PARAMETER;
        }
        st.registrations.insert(key, RegRec { captures: 0, deregistered: false });
        STATUS_SUCCESS
    }
}

kernel_export! {
    /// `WskDeregister`. On Windows it waits for every socket to close and every NPI to
    /// be released; here that situation is a [`Rule::DeregisterWithOpenSockets`].
    ///
    /// # Safety
    /// None: the registration is looked up, not dereferenced.
    fn WskDeregister(WskRegistration: *mut WSK_REGISTRATION) {
        check_irql("WskDeregister", PASSIVE_LEVEL);
        let mut st = state();
        let key = WskRegistration as usize;
        let open = st.sockets.values().filter(|s| s.reg == key && !s.closed).count();
        let Some(rec) = st.registrations.get_mut(&key) else {
            st.violate(
                Rule::UnknownObject,
                format!("WskDeregister({WskRegistration:p}): not registered"),
            );
            return;
        };
        if rec.deregistered {
            st.violate(Rule::DoubleFree, format!("WskDeregister({WskRegistration:p}) twice"));
            return;
        }
        rec.deregistered = true;
        let captures = rec.captures;
        if open > 0 || captures > 0 {
            st.violate(
                Rule::DeregisterWithOpenSockets,
                format!("WskDeregister with {open} open socket(s) and {captures} NPI capture(s)"),
            );
        }
    }
}

kernel_export! {
    /// `WskCaptureProviderNPI`: fills the provider NPI (the model's dispatch table) and
    /// counts the capture. An injected [`Fault::Fail`] on [`Op::Capture`] makes it
    /// return that status (for example `STATUS_DEVICE_NOT_READY`: provider not ready).
    ///
    /// # Safety
    /// `WskProviderNpi` is writable.
    fn WskCaptureProviderNPI(
        WskRegistration: *mut WSK_REGISTRATION,
        WaitTimeout: u32,
        WskProviderNpi: *mut WSK_PROVIDER_NPI,
    ) -> NTSTATUS {
        let max = if WaitTimeout == WSK_NO_WAIT { DISPATCH_LEVEL } else { PASSIVE_LEVEL };
        check_irql("WskCaptureProviderNPI", max);
        let mut st = state();
        let key = WskRegistration as usize;
        match st.registrations.get(&key) {
            None => {
                st.violate(
                    Rule::UnknownObject,
                    format!("WskCaptureProviderNPI({WskRegistration:p}): not registered"),
                );
                return STATUS_INVALID_PARAMETER;
            }
            Some(r) if r.deregistered => {
                st.violate(
                    Rule::UseAfterFree,
                    format!("WskCaptureProviderNPI({WskRegistration:p}) after WskDeregister"),
                );
                return STATUS_INVALID_PARAMETER;
            }
            Some(_) => {}
        }
        if let Some(Fault::Fail(s) | Fault::FailWithoutCompleting(s)) = st.take_fault(Op::Capture) {
            return s;
        }
        if WskProviderNpi.is_null() {
            st.violate(Rule::Misuse, "WskCaptureProviderNPI with a NULL NPI");
            return STATUS_INVALID_PARAMETER;
        }
        // SAFETY: the caller guarantees `WskProviderNpi` is writable.
        let npi = unsafe { &mut *WskProviderNpi };
        npi.Client = WskRegistration.cast::<WSK_CLIENT>();
        npi.Dispatch = &raw const PROVIDER_DISPATCH;
        if let Some(rec) = st.registrations.get_mut(&key) {
            rec.captures += 1;
        }
        STATUS_SUCCESS
    }
}

kernel_export! {
    /// `WskReleaseProviderNPI`: releases one capture.
    ///
    /// # Safety
    /// None: the registration is looked up, not dereferenced.
    fn WskReleaseProviderNPI(WskRegistration: *mut WSK_REGISTRATION) {
        check_irql("WskReleaseProviderNPI", DISPATCH_LEVEL);
        let mut st = state();
        match st.registrations.get_mut(&(WskRegistration as usize)) {
            Some(r) if r.captures > 0 => r.captures -= 1,
            Some(_) => st.violate(
                Rule::Misuse,
                format!("WskReleaseProviderNPI({WskRegistration:p}) without a capture"),
            ),
            None => st.violate(
                Rule::UnknownObject,
                format!("WskReleaseProviderNPI({WskRegistration:p}): not registered"),
            ),
        }
    }
}

// --- sockets ---

/// The provider's socket object: a `WSK_SOCKET` (what the client sees) first.
#[repr(C)]
struct ModelSocket {
    wsk: WSK_SOCKET,
}

/// The model's record of one socket.
pub(crate) struct SockRec {
    /// The boxed `ModelSocket`, whose address is the `WSK_SOCKET` pointer.
    obj: usize,
    shared: Arc<SockShared>,
    reg: usize,
    /// `WskCloseSocket` was called.
    pub closed: bool,
}

/// Creates a socket object and its worker; returns its `WSK_SOCKET` address.
fn create_socket(family: u16, reg: usize) -> Option<usize> {
    let shared = Arc::new(SockShared::new(family));
    let worker = Arc::clone(&shared);
    thread::Builder::new()
        .name("wsk-model-socket".into())
        .spawn(move || worker.worker())
        .ok()?;
    let obj = Box::into_raw(Box::new(ModelSocket {
        wsk: WSK_SOCKET {
            Dispatch: (&raw const CONNECTION_DISPATCH).cast::<c_void>(),
        },
    })) as usize;
    state().sockets.insert(
        obj,
        SockRec {
            obj,
            shared,
            reg,
            closed: false,
        },
    );
    Some(obj)
}

/// Looks up an open socket, recording a violation otherwise.
fn lookup_socket(
    st: &mut State,
    socket: *mut WSK_SOCKET,
    routine: &str,
) -> Result<Arc<SockShared>, NTSTATUS> {
    match st.sockets.get(&(socket as usize)) {
        None => {
            st.violate(
                Rule::UnknownObject,
                format!("{routine}({socket:p}): not a socket"),
            );
            Err(STATUS_INVALID_HANDLE)
        }
        Some(s) if s.closed => {
            let rule = if routine == "WskCloseSocket" {
                Rule::DoubleFree
            } else {
                Rule::UseAfterFree
            };
            st.violate(rule, format!("{routine}({socket:p}) after WskCloseSocket"));
            Err(STATUS_INVALID_HANDLE)
        }
        Some(s) => Ok(Arc::clone(&s.shared)),
    }
}

/// The common start of a socket call: socket and IRP checks, the fault, and taking the
/// IRP. `Err` carries the status to return without completing the IRP.
fn take_irp(
    st: &mut State,
    socket: *mut WSK_SOCKET,
    irp: *mut IRP,
    op: Op,
    routine: &str,
) -> Result<(Arc<SockShared>, Option<Fault>), NTSTATUS> {
    let shared = lookup_socket(st, socket, routine)?;
    check_for_provider(st, irp, routine)?;
    let fault = st.take_fault(op);
    if let Some(Fault::FailWithoutCompleting(s)) = fault {
        return Err(s);
    }
    enter_provider(st, irp, routine, Some(Arc::clone(&shared)))?;
    Ok((shared, fault))
}

/// Reads a `SOCKADDR_IN` / `SOCKADDR_IN6`.
///
/// # Safety
/// `addr` is null or points to a socket address readable for its family's size.
unsafe fn read_sockaddr(addr: *const SOCKADDR) -> Option<SocketAddr> {
    if addr.is_null() {
        return None;
    }
    // SAFETY: the caller guarantees a readable address; the family comes first.
    let family = unsafe { (*addr).sa_family };
    match family {
        AF_INET => {
            // SAFETY: an `AF_INET` address is a readable `SOCKADDR_IN` (caller).
            let a = unsafe { addr.cast::<SOCKADDR_IN>().read_unaligned() };
            Some(SocketAddr::V4(SocketAddrV4::new(
                Ipv4Addr::from(a.sin_addr),
                u16::from_be(a.sin_port),
            )))
        }
        AF_INET6 => {
            // SAFETY: an `AF_INET6` address is a readable `SOCKADDR_IN6` (caller).
            let a = unsafe { addr.cast::<SOCKADDR_IN6>().read_unaligned() };
            Some(SocketAddr::V6(SocketAddrV6::new(
                Ipv6Addr::from(a.sin6_addr),
                u16::from_be(a.sin6_port),
                a.sin6_flowinfo,
                a.sin6_scope_id,
            )))
        }
        _ => None,
    }
}

unsafe extern "system" fn wsk_socket(
    client: *mut WSK_CLIENT,
    family: u16,
    socket_type: u16,
    protocol: u32,
    flags: u32,
    _context: *mut c_void,
    _dispatch: *const c_void,
    _process: *mut c_void,
    _thread: *mut c_void,
    _security: *mut c_void,
    irp: *mut IRP,
) -> NTSTATUS {
    let _model = crate::lowres::enter_model();
    let routine = "WskSocket";
    let mut st = state();
    if let Err(s) = check_for_provider(&mut st, irp, routine) {
        return s;
    }
    let fault = st.take_fault(Op::Socket);
    if let Some(Fault::FailWithoutCompleting(s)) = fault {
        return s;
    }
    if let Err(s) = enter_provider(&mut st, irp, routine, None) {
        return s;
    }
    let reg = client as usize;
    let mut status = STATUS_SUCCESS;
    match st.registrations.get(&reg) {
        Some(r) if !r.deregistered && r.captures > 0 => {}
        Some(_) => {
            st.violate(
                Rule::UseAfterFree,
                format!("WskSocket with client {client:p} whose NPI is not captured"),
            );
            status = STATUS_INVALID_HANDLE;
        }
        None => {
            st.violate(
                Rule::UnknownObject,
                format!("WskSocket({client:p}): not a client"),
            );
            status = STATUS_INVALID_HANDLE;
        }
    }
    let supported = (family == AF_INET || family == AF_INET6)
        && socket_type == SOCK_STREAM
        && protocol == IPPROTO_TCP
        && flags == WSK_FLAG_CONNECTION_SOCKET;
    if status == STATUS_SUCCESS && !supported {
        status = STATUS_NOT_SUPPORTED;
    }
    drop(st);
    let g = generation();
    let irp = irp as usize;
    if status != STATUS_SUCCESS {
        complete(g, irp, status, 0);
        return status;
    }
    let create_and_complete = move || match create_socket(family, reg) {
        Some(socket) => {
            complete(g, irp, STATUS_SUCCESS, socket);
            STATUS_SUCCESS
        }
        None => {
            complete(g, irp, STATUS_INSUFFICIENT_RESOURCES, 0);
            STATUS_INSUFFICIENT_RESOURCES
        }
    };
    match fault {
        Some(Fault::Fail(s)) => {
            complete(g, irp, s, 0);
            s
        }
        Some(Fault::PendThenComplete | Fault::Pend(_)) => {
            let delay = match fault {
                Some(Fault::Pend(d)) => d,
                _ => Duration::ZERO,
            };
            mark_pending(irp as *mut IRP);
            spawn_helper(move || {
                thread::sleep(delay);
                create_and_complete();
            });
            STATUS_PENDING
        }
        Some(Fault::CompleteReturnPending) => {
            mark_pending(irp as *mut IRP);
            create_and_complete();
            STATUS_PENDING
        }
        _ => create_and_complete(),
    }
}

unsafe extern "system" fn wsk_bind(
    socket: *mut WSK_SOCKET,
    address: *mut SOCKADDR,
    _flags: u32,
    irp: *mut IRP,
) -> NTSTATUS {
    let _model = crate::lowres::enter_model();
    address_op(socket, address, irp, Op::Bind, "WskBind")
}

unsafe extern "system" fn wsk_connect(
    socket: *mut WSK_SOCKET,
    address: *mut SOCKADDR,
    _flags: u32,
    irp: *mut IRP,
) -> NTSTATUS {
    let _model = crate::lowres::enter_model();
    address_op(socket, address, irp, Op::Connect, "WskConnect")
}

/// `WskBind` and `WskConnect`.
fn address_op(
    socket: *mut WSK_SOCKET,
    address: *mut SOCKADDR,
    irp: *mut IRP,
    op: Op,
    routine: &str,
) -> NTSTATUS {
    let mut st = state();
    let (shared, fault) = match take_irp(&mut st, socket, irp, op, routine) {
        Ok(taken) => taken,
        Err(s) => return s,
    };
    drop(st);
    // SAFETY: the WSK contract: `address` points to a socket address of its family.
    let addr = unsafe { read_sockaddr(address) };
    let Some(addr) = addr else {
        complete(shared.generation, irp as usize, STATUS_INVALID_PARAMETER, 0);
        return STATUS_INVALID_PARAMETER;
    };
    let work = if op == Op::Bind {
        Work::Bind(addr)
    } else {
        Work::Connect(addr)
    };
    shared.submit(irp as usize, work, fault, false, usize::MAX, false)
}

unsafe extern "system" fn wsk_send(
    socket: *mut WSK_SOCKET,
    buffer: *mut WSK_BUF,
    flags: u32,
    irp: *mut IRP,
) -> NTSTATUS {
    let _model = crate::lowres::enter_model();
    buffer_op(socket, buffer, flags, irp, Op::Send, "WskSend")
}

unsafe extern "system" fn wsk_disconnect(
    socket: *mut WSK_SOCKET,
    buffer: *mut WSK_BUF,
    flags: u32,
    irp: *mut IRP,
) -> NTSTATUS {
    let _model = crate::lowres::enter_model();
    buffer_op(socket, buffer, flags, irp, Op::Disconnect, "WskDisconnect")
}

/// `WskSend` and `WskDisconnect` (whose buffer may be null).
fn buffer_op(
    socket: *mut WSK_SOCKET,
    buffer: *mut WSK_BUF,
    flags: u32,
    irp: *mut IRP,
    op: Op,
    routine: &str,
) -> NTSTATUS {
    let mut st = state();
    let (shared, fault) = match take_irp(&mut st, socket, irp, op, routine) {
        Ok(taken) => taken,
        Err(s) => return s,
    };
    let g = shared.generation;
    let buf = if buffer.is_null() {
        if op == Op::Send {
            st.violate(Rule::Misuse, "WskSend with a NULL WSK_BUF");
            drop(st);
            complete(g, irp as usize, STATUS_INVALID_PARAMETER, 0);
            return STATUS_INVALID_PARAMETER;
        }
        None
    } else {
        // SAFETY: the WSK contract: a non-null `buffer` is a readable WSK_BUF.
        Some(unsafe { buffer.read() })
    };
    let data = match buf {
        None => Vec::new(),
        Some(buf) => {
            let Some(chain) = validate_chain(&mut st, &buf, routine) else {
                drop(st);
                complete(g, irp as usize, STATUS_INVALID_PARAMETER, 0);
                return STATUS_INVALID_PARAMETER;
            };
            mark_in_flight(&mut st, &chain.pinned);
            attach_mdls(&mut st, irp, &chain.pinned);
            if op == Op::Send {
                let missing = st.required_flags & !flags;
                if missing != 0 {
                    st.violate(
                        Rule::FlagDropped,
                        format!("WskSend flags {flags:#x} lack required {missing:#x}"),
                    );
                }
                st.sends.push(SendRecord {
                    flags,
                    offset: buf.Offset,
                    length: buf.Length,
                    mdl_count: chain.count,
                });
            }
            chain.data
        }
    };
    let (pended, max_pending) = (st.send_mode == crate::SendMode::Pended, st.max_pending);
    let concurrent = op == Op::Send && st.send_mode == crate::SendMode::Concurrent;
    drop(st);
    let work = if op == Op::Send {
        Work::Send {
            data,
            flags,
            sent: 0,
        }
    } else {
        Work::Disconnect {
            data,
            abortive: flags & WSK_FLAG_ABORTIVE != 0,
        }
    };
    let pend_by_default = op == Op::Send && pended;
    shared.submit(
        irp as usize,
        work,
        fault,
        pend_by_default,
        max_pending,
        concurrent,
    )
}

unsafe extern "system" fn wsk_close_socket(socket: *mut WSK_SOCKET, irp: *mut IRP) -> NTSTATUS {
    let _model = crate::lowres::enter_model();
    let mut st = state();
    let (shared, fault) = match take_irp(&mut st, socket, irp, Op::Close, "WskCloseSocket") {
        Ok(taken) => taken,
        Err(s) => return s,
    };
    if let Some(rec) = st.sockets.get_mut(&(socket as usize)) {
        rec.closed = true;
    }
    drop(st);
    shared.close(irp as usize, fault)
}

/// Whether every socket is idle and no helper thread runs.
pub(crate) fn idle() -> bool {
    let sockets: Vec<Arc<SockShared>> = state()
        .sockets
        .values()
        .map(|s| Arc::clone(&s.shared))
        .collect();
    HELPERS.load(Ordering::Acquire) == 0 && sockets.iter().all(|s| s.idle())
}

/// Reports open sockets, unreleased captures and registrations.
pub(crate) fn leaks(st: &State, out: &mut Vec<Violation>) {
    for (addr, _) in st.sockets.iter().filter(|(_, s)| !s.closed) {
        out.push(Violation {
            rule: Rule::Leak,
            detail: format!("socket {addr:#x} not closed"),
        });
    }
    for (addr, r) in &st.registrations {
        if r.captures > 0 {
            out.push(Violation {
                rule: Rule::Leak,
                detail: format!(
                    "{} provider NPI capture(s) of {addr:#x} not released",
                    r.captures
                ),
            });
        }
        if !r.deregistered {
            out.push(Violation {
                rule: Rule::Leak,
                detail: format!("registration {addr:#x} not deregistered"),
            });
        }
    }
}

/// End of session: stops every socket's worker (without completing anything) and frees
/// closed socket objects; open ones are leaked on purpose.
pub(crate) fn shut_down(sockets: Vec<SockRec>) {
    for s in &sockets {
        s.shared.stop();
    }
    let deadline = Instant::now() + Duration::from_secs(2);
    let done = |s: &SockRec| s.shared.worker_done();
    while Instant::now() < deadline
        && (HELPERS.load(Ordering::Acquire) > 0 || !sockets.iter().all(done))
    {
        thread::sleep(Duration::from_millis(2));
    }
    for s in sockets.into_iter().filter(|s| s.closed) {
        // SAFETY: `obj` came from `Box::into_raw` in `create_socket`, the socket was
        // closed, and the session that could reach it is over.
        drop(unsafe { Box::from_raw(s.obj as *mut ModelSocket) });
    }
}

#[cfg(test)]
mod tests {
    use std::ffi::c_void;
    use std::net::SocketAddr;
    use std::ptr;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::time::Duration;

    use wsksend_ffi::status::{
        STATUS_CANCELLED, STATUS_DEVICE_NOT_READY, STATUS_INVALID_PARAMETER,
        STATUS_MORE_PROCESSING_REQUIRED, STATUS_NOT_SUPPORTED, STATUS_PENDING, STATUS_SUCCESS,
        STATUS_UNSUCCESSFUL,
    };
    use wsksend_ffi::{
        AF_INET, AF_INET6, DEVICE_OBJECT, Executive, FALSE, IPPROTO_TCP, IRP, KEVENT, KernelMode,
        MDL, NTSTATUS, NonPagedPoolNx, NotificationEvent, SOCK_STREAM, SOCKADDR, SOCKADDR_IN,
        SOCKADDR_IN6, WSK_BUF, WSK_CLIENT_DISPATCH, WSK_CLIENT_NPI, WSK_FLAG_CONNECTION_SOCKET,
        WSK_FLAG_NODELAY, WSK_PROVIDER_CONNECTION_DISPATCH, WSK_PROVIDER_NPI, WSK_REGISTRATION,
        WSK_SOCKET, WSK_VERSION_1_0,
    };

    use crate::socket::STATUS_INVALID_DEVICE_STATE;
    use crate::{Fault, Op, Rule, SendMode, SendRecord, Sink, session};

    const WAIT: Duration = Duration::from_secs(5);
    const TAG: u32 = u32::from_le_bytes(*b"WskT");

    /// Completion context: counts completions and signals an event.
    struct Done {
        event: KEVENT,
        hits: AtomicUsize,
    }

    unsafe extern "system" fn on_done(
        _: *mut DEVICE_OBJECT,
        _: *mut IRP,
        ctx: *mut c_void,
    ) -> NTSTATUS {
        // SAFETY: the context is the request's boxed `Done`.
        let done = unsafe { &mut *ctx.cast::<Done>() };
        done.hits.fetch_add(1, Ordering::SeqCst);
        // SAFETY: the event was initialised by `Req::new`.
        unsafe { wsksend_ffi::KeSetEvent(&raw mut done.event, 0, FALSE) };
        STATUS_MORE_PROCESSING_REQUIRED
    }

    /// One driver-allocated IRP with a completion routine that signals an event.
    struct Req {
        irp: *mut IRP,
        done: Box<Done>,
    }

    impl Req {
        fn new() -> Self {
            // SAFETY: plain allocation.
            let irp = unsafe { wsksend_ffi::IoAllocateIrp(1, FALSE) };
            assert!(!irp.is_null());
            let mut done = Box::new(Done {
                event: KEVENT::zeroed(),
                hits: AtomicUsize::new(0),
            });
            // SAFETY: the boxed event has a stable address.
            unsafe {
                wsksend_ffi::KeInitializeEvent(&raw mut done.event, NotificationEvent, FALSE);
            };
            Self { irp, done }
        }

        /// Re-arms the IRP for one provider call.
        fn arm(&mut self) -> *mut IRP {
            // SAFETY: the IRP is ours (not in flight).
            unsafe { wsksend_ffi::IoReuseIrp(self.irp, STATUS_UNSUCCESSFUL) };
            // SAFETY: the event was initialised.
            unsafe { wsksend_ffi::KeClearEvent(&raw mut self.done.event) };
            let ctx = (&raw mut *self.done).cast::<c_void>();
            // SAFETY: the IRP is fresh; `ctx` outlives it.
            unsafe {
                wsksend_ffi::inline::IoSetCompletionRoutine(
                    self.irp,
                    Some(on_done),
                    ctx,
                    true,
                    true,
                    true,
                );
            };
            self.irp
        }

        /// Waits for the completion; `(Status, Information)`, or `None` on timeout.
        fn wait(&mut self, timeout: Duration) -> Option<(NTSTATUS, usize)> {
            let t = -i64::try_from(timeout.as_nanos() / 100).unwrap_or(i64::MAX);
            // SAFETY: the event is initialised; `t` is readable.
            let r = unsafe {
                wsksend_ffi::KeWaitForSingleObject(
                    (&raw mut self.done.event).cast(),
                    Executive,
                    KernelMode,
                    FALSE,
                    &raw const t,
                )
            };
            if r != STATUS_SUCCESS {
                return None;
            }
            // SAFETY: the IRP completed and is ours again.
            let io = unsafe { (*self.irp).IoStatus };
            Some((io.Status, io.Information))
        }

        fn hits(&self) -> usize {
            self.done.hits.load(Ordering::SeqCst)
        }
    }

    impl Drop for Req {
        fn drop(&mut self) {
            // SAFETY: the IRP came from IoAllocateIrp and is not in flight.
            unsafe { wsksend_ffi::IoFreeIrp(self.irp) };
        }
    }

    /// A socket address in WSK form.
    enum Sockaddr {
        V4(SOCKADDR_IN),
        V6(SOCKADDR_IN6),
    }

    impl Sockaddr {
        fn new(addr: SocketAddr) -> Self {
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
                    sin6_flowinfo: 0,
                    sin6_addr: a.ip().octets(),
                    sin6_scope_id: 0,
                }),
            }
        }

        fn wildcard(v6: bool) -> Self {
            if v6 {
                Self::new("[::]:0".parse().unwrap_or_else(|_| unreachable!()))
            } else {
                Self::new("0.0.0.0:0".parse().unwrap_or_else(|_| unreachable!()))
            }
        }

        fn as_ptr(&mut self) -> *mut SOCKADDR {
            match self {
                Self::V4(a) => (&raw mut *a).cast(),
                Self::V6(a) => (&raw mut *a).cast(),
            }
        }
    }

    /// A registered WSK client with a captured provider NPI.
    struct Client {
        reg: Box<WSK_REGISTRATION>,
        npi: WSK_PROVIDER_NPI,
    }

    static CLIENT_DISPATCH: WSK_CLIENT_DISPATCH = WSK_CLIENT_DISPATCH {
        Version: WSK_VERSION_1_0,
        Reserved: 0,
        WskClientEvent: None,
    };

    impl Client {
        fn new() -> Self {
            let npi = WSK_CLIENT_NPI {
                ClientContext: ptr::null_mut(),
                Dispatch: &raw const CLIENT_DISPATCH,
            };
            let mut reg = Box::new(WSK_REGISTRATION::zeroed());
            // SAFETY: both structures are valid for the call; `reg` stays put.
            let r = unsafe { wsksend_ffi::WskRegister(&raw const npi, &raw mut *reg) };
            assert_eq!(r, STATUS_SUCCESS);
            let mut provider = WSK_PROVIDER_NPI {
                Client: ptr::null_mut(),
                Dispatch: ptr::null(),
            };
            // SAFETY: `reg` is registered; `provider` is writable.
            let r =
                unsafe { wsksend_ffi::WskCaptureProviderNPI(&raw mut *reg, 0, &raw mut provider) };
            assert_eq!(r, STATUS_SUCCESS);
            Self { reg, npi: provider }
        }

        fn socket(&self, req: &mut Req, v6: bool) -> *mut WSK_SOCKET {
            // SAFETY: the NPI was captured; its dispatch table is static.
            let create = unsafe { (*self.npi.Dispatch).WskSocket };
            let create = create.unwrap_or_else(|| unreachable!());
            let family = if v6 { AF_INET6 } else { AF_INET };
            let irp = req.arm();
            // SAFETY: valid arguments for a connection socket; the IRP is armed.
            let r = unsafe {
                create(
                    self.npi.Client,
                    family,
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
            };
            assert_eq!(r, STATUS_SUCCESS);
            let (status, info) = req.wait(WAIT).unwrap_or_default();
            assert_eq!(status, STATUS_SUCCESS);
            info as *mut WSK_SOCKET
        }

        fn release(self) {
            // SAFETY: one capture of a live registration.
            unsafe { wsksend_ffi::WskReleaseProviderNPI(&raw const *self.reg as *mut _) };
            // SAFETY: every socket is closed and the capture released.
            unsafe { wsksend_ffi::WskDeregister(&raw const *self.reg as *mut _) };
        }
    }

    fn dispatch(socket: *mut WSK_SOCKET) -> &'static WSK_PROVIDER_CONNECTION_DISPATCH {
        // SAFETY: `socket` is a live model socket.
        let table = unsafe { (*socket).Dispatch };
        // SAFETY: a model socket's dispatch is the static connection table.
        unsafe { &*table.cast::<WSK_PROVIDER_CONNECTION_DISPATCH>() }
    }

    fn bind_connect(req: &mut Req, socket: *mut WSK_SOCKET, to: SocketAddr) -> NTSTATUS {
        let d = dispatch(socket);
        let mut local = Sockaddr::wildcard(to.is_ipv6());
        let irp = req.arm();
        let bind = d.WskBind.unwrap_or_else(|| unreachable!());
        // SAFETY: live socket, valid address, armed IRP.
        unsafe { bind(socket, local.as_ptr(), 0, irp) };
        assert_eq!(req.wait(WAIT).map(|r| r.0), Some(STATUS_SUCCESS));
        let mut remote = Sockaddr::new(to);
        let irp = req.arm();
        let connect = d.WskConnect.unwrap_or_else(|| unreachable!());
        // SAFETY: as above.
        unsafe { connect(socket, remote.as_ptr(), 0, irp) };
        req.wait(WAIT).map_or(STATUS_UNSUCCESSFUL, |r| r.0)
    }

    fn send(req: &mut Req, socket: *mut WSK_SOCKET, buf: &mut WSK_BUF, flags: u32) -> NTSTATUS {
        let irp = req.arm();
        let f = dispatch(socket).WskSend.unwrap_or_else(|| unreachable!());
        // SAFETY: live socket, armed IRP; the buffer's MDLs are the caller's.
        unsafe { f(socket, buf, flags, irp) }
    }

    fn close(req: &mut Req, socket: *mut WSK_SOCKET) {
        let irp = req.arm();
        let f = dispatch(socket)
            .WskCloseSocket
            .unwrap_or_else(|| unreachable!());
        // SAFETY: live socket, armed IRP.
        unsafe { f(socket, irp) };
        assert_eq!(req.wait(WAIT).map(|r| r.0), Some(STATUS_SUCCESS));
    }

    /// A pool buffer with a locked MDL over it.
    struct Buffer {
        mem: *mut u8,
        len: usize,
        mdl: *mut MDL,
    }

    impl Buffer {
        fn new(bytes: &[u8]) -> Self {
            // SAFETY: plain allocation.
            let mem =
                unsafe { wsksend_ffi::ExAllocatePoolWithTag(NonPagedPoolNx, bytes.len(), TAG) }
                    .cast::<u8>();
            // SAFETY: `mem` has `bytes.len()` bytes.
            unsafe { mem.copy_from_nonoverlapping(bytes.as_ptr(), bytes.len()) };
            let len32 = u32::try_from(bytes.len()).unwrap_or(u32::MAX);
            // SAFETY: `mem` is a live pool block of that length.
            let mdl =
                unsafe { wsksend_ffi::IoAllocateMdl(mem.cast(), len32, 0, 0, ptr::null_mut()) };
            // SAFETY: `mdl` is live and describes nonpaged memory.
            unsafe { wsksend_ffi::MmBuildMdlForNonPagedPool(mdl) };
            Self {
                mem,
                len: bytes.len(),
                mdl,
            }
        }
    }

    impl Drop for Buffer {
        fn drop(&mut self) {
            // SAFETY: the MDL came from IoAllocateMdl and is not in flight.
            unsafe { wsksend_ffi::IoFreeMdl(self.mdl) };
            let _ = self.len;
            // SAFETY: the block came from ExAllocatePoolWithTag with TAG.
            unsafe { wsksend_ffi::ExFreePoolWithTag(self.mem.cast(), TAG) };
        }
    }

    fn wsk_buf(first: &Buffer, offset: u32, length: usize) -> WSK_BUF {
        WSK_BUF {
            Mdl: first.mdl,
            Offset: offset,
            Length: length,
        }
    }

    /// Links MDLs into a chain.
    fn chain(buffers: &[&Buffer]) {
        for pair in buffers.windows(2) {
            // SAFETY: both MDLs are live and ours.
            unsafe { (*pair[0].mdl).Next = pair[1].mdl };
        }
    }

    fn pattern(n: usize, seed: u8) -> Vec<u8> {
        (0..n)
            .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed))
            .collect()
    }

    /// Sets up a client and a socket connected to `sink`.
    fn connected(sink: &Sink, req: &mut Req) -> (Client, *mut WSK_SOCKET) {
        let client = Client::new();
        let socket = client.socket(req, sink.addr().is_ipv6());
        assert_eq!(bind_connect(req, socket, sink.addr()), STATUS_SUCCESS);
        assert!(sink.wait_connections(1, WAIT));
        (client, socket)
    }

    fn chained_send_is_byte_exact(mode: SendMode) {
        let s = session();
        s.set_send_mode(mode);
        let sink = Sink::v4();
        let mut req = Req::new();
        let (client, socket) = connected(&sink, &mut req);
        let (a, b, c) = (pattern(1000, 1), pattern(70_000, 2), pattern(300, 3));
        let (ba, bb, bc) = (Buffer::new(&a), Buffer::new(&b), Buffer::new(&c));
        chain(&[&ba, &bb, &bc]);
        let offset = 123;
        let length = a.len() - offset + b.len() + c.len() - 50;
        let mut buf = wsk_buf(&ba, 123, length);
        let r = send(&mut req, socket, &mut buf, WSK_FLAG_NODELAY);
        let expect_return = if mode == SendMode::Pended {
            STATUS_PENDING
        } else {
            STATUS_SUCCESS
        };
        assert_eq!(r, expect_return);
        assert_eq!(req.wait(WAIT), Some((STATUS_SUCCESS, length)));
        let expected: Vec<u8> = [&a[offset..], &b[..], &c[..c.len() - 50]].concat();
        assert!(sink.wait_bytes(0, length, WAIT));
        assert!(sink.received(0) == expected, "bytes differ");
        assert_eq!(
            s.sends(),
            [SendRecord {
                flags: WSK_FLAG_NODELAY,
                offset: 123,
                length,
                mdl_count: 3
            }]
        );
        close(&mut req, socket);
        assert_eq!(req.hits(), 5);
        drop((ba, bb, bc, req));
        client.release();
        s.finish();
    }

    #[test]
    fn chained_send_is_byte_exact_immediate() {
        chained_send_is_byte_exact(SendMode::Immediate);
    }

    #[test]
    fn chained_send_is_byte_exact_pended() {
        chained_send_is_byte_exact(SendMode::Pended);
    }

    #[test]
    fn ipv6_connect_and_send() {
        let s = session();
        let sink = Sink::v6();
        let mut req = Req::new();
        let (client, socket) = connected(&sink, &mut req);
        let data = pattern(5000, 9);
        let b = Buffer::new(&data);
        let mut buf = wsk_buf(&b, 0, data.len());
        assert_eq!(send(&mut req, socket, &mut buf, 0), STATUS_SUCCESS);
        assert_eq!(req.wait(WAIT), Some((STATUS_SUCCESS, data.len())));
        assert!(sink.wait_bytes(0, data.len(), WAIT));
        assert_eq!(sink.received(0), data);
        close(&mut req, socket);
        drop((b, req));
        client.release();
        s.finish();
    }

    #[test]
    fn connect_without_bind_fails_and_refused_connect_maps() {
        let s = session();
        let sink = Sink::v4();
        let mut req = Req::new();
        let client = Client::new();
        let socket = client.socket(&mut req, false);
        let mut remote = Sockaddr::new(sink.addr());
        let irp = req.arm();
        let connect = dispatch(socket)
            .WskConnect
            .unwrap_or_else(|| unreachable!());
        // SAFETY: live socket, valid address, armed IRP.
        let r = unsafe { connect(socket, remote.as_ptr(), 0, irp) };
        assert_eq!(r, STATUS_INVALID_DEVICE_STATE);
        assert_eq!(
            req.wait(WAIT).map(|r| r.0),
            Some(STATUS_INVALID_DEVICE_STATE)
        );
        let closed_port = {
            let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap_or_else(|e| panic!("{e}"));
            l.local_addr().unwrap_or_else(|e| panic!("{e}"))
        };
        let r = bind_connect(&mut req, socket, closed_port);
        assert_eq!(r, wsksend_ffi::status::STATUS_CONNECTION_REFUSED);
        close(&mut req, socket);
        drop(req);
        client.release();
        s.finish();
    }

    #[test]
    fn pend_until_cancelled_completes_on_cancel() {
        let s = session();
        let sink = Sink::v4();
        let mut req = Req::new();
        let (client, socket) = connected(&sink, &mut req);
        let b = Buffer::new(&pattern(100, 0));
        let mut buf = wsk_buf(&b, 0, 100);
        s.inject(Op::Send, Fault::PendUntilCancelled);
        let mut send_req = Req::new();
        assert_eq!(send(&mut send_req, socket, &mut buf, 0), STATUS_PENDING);
        assert_eq!(send_req.wait(Duration::from_millis(50)), None);
        // SAFETY: the IRP is live.
        assert_eq!(unsafe { wsksend_ffi::IoCancelIrp(send_req.irp) }, 1);
        assert_eq!(send_req.wait(WAIT), Some((STATUS_CANCELLED, 0)));
        assert_eq!(crate::sync::current_irql(), wsksend_ffi::PASSIVE_LEVEL);
        close(&mut req, socket);
        drop((b, req, send_req));
        client.release();
        s.finish();
    }

    #[test]
    fn close_completes_parked_irps() {
        let s = session();
        let sink = Sink::v4();
        let mut req = Req::new();
        let (client, socket) = connected(&sink, &mut req);
        let b = Buffer::new(&pattern(100, 0));
        let mut buf = wsk_buf(&b, 0, 100);
        s.inject(Op::Send, Fault::PendIgnoringCancel);
        s.inject(Op::Send, Fault::PendUntilCancelled);
        let (mut r1, mut r2) = (Req::new(), Req::new());
        assert_eq!(send(&mut r1, socket, &mut buf, 0), STATUS_PENDING);
        assert_eq!(send(&mut r2, socket, &mut buf, 0), STATUS_PENDING);
        // SAFETY: the IRP is live.
        assert_eq!(unsafe { wsksend_ffi::IoCancelIrp(r1.irp) }, 0);
        assert_eq!(r1.wait(Duration::from_millis(50)), None);
        close(&mut req, socket);
        assert_eq!(r1.wait(WAIT), Some((STATUS_CANCELLED, 0)));
        assert_eq!(r2.wait(WAIT), Some((STATUS_CANCELLED, 0)));
        drop((b, req, r1, r2));
        client.release();
        s.finish();
    }

    #[test]
    fn close_unblocks_a_blocked_write() {
        let s = session();
        s.set_send_mode(SendMode::Pended);
        let sink = Sink::v4();
        let mut req = Req::new();
        let (client, socket) = connected(&sink, &mut req);
        sink.pause_reading(true);
        let big = Buffer::new(&vec![0x5a; 64 << 20]);
        let mut buf = wsk_buf(&big, 0, big.len);
        let mut r1 = Req::new();
        assert_eq!(send(&mut r1, socket, &mut buf, 0), STATUS_PENDING);
        assert_eq!(
            r1.wait(Duration::from_millis(200)),
            None,
            "the write should block"
        );
        close(&mut req, socket);
        let (status, _) = r1.wait(WAIT).unwrap_or_default();
        assert_eq!(status, STATUS_CANCELLED);
        drop((big, req, r1));
        client.release();
        s.finish();
    }

    #[test]
    fn immediate_send_pends_instead_of_blocking_when_the_buffer_is_full() {
        let s = session();
        let sink = Sink::v4();
        let mut req = Req::new();
        let (client, socket) = connected(&sink, &mut req);
        sink.pause_reading(true);
        let data = pattern(32 << 20, 7);
        let big = Buffer::new(&data);
        let mut buf = wsk_buf(&big, 0, data.len());
        let mut r1 = Req::new();
        assert_eq!(send(&mut r1, socket, &mut buf, 0), STATUS_PENDING);
        sink.pause_reading(false);
        assert_eq!(r1.wait(WAIT), Some((STATUS_SUCCESS, data.len())));
        assert!(sink.wait_bytes(0, data.len(), WAIT));
        assert!(sink.received(0) == data, "bytes differ");
        close(&mut req, socket);
        drop((big, req, r1));
        client.release();
        s.finish();
    }

    /// Resubmits the same send from its completion routine until `left` reaches 0.
    struct Loop {
        socket: *mut WSK_SOCKET,
        irp: *mut IRP,
        buf: WSK_BUF,
        left: AtomicUsize,
        done: KEVENT,
    }

    unsafe extern "system" fn resubmit(
        _: *mut DEVICE_OBJECT,
        _: *mut IRP,
        ctx: *mut c_void,
    ) -> NTSTATUS {
        // SAFETY: the context is the test's boxed `Loop`.
        let l = unsafe { &mut *ctx.cast::<Loop>() };
        if l.left.fetch_sub(1, Ordering::SeqCst) == 1 {
            // SAFETY: the event was initialised.
            unsafe { wsksend_ffi::KeSetEvent(&raw mut l.done, 0, FALSE) };
        } else {
            // SAFETY: the IRP is ours again (we return MORE_PROCESSING_REQUIRED).
            unsafe { wsksend_ffi::IoReuseIrp(l.irp, STATUS_UNSUCCESSFUL) };
            arm_and_send(l, ctx);
        }
        STATUS_MORE_PROCESSING_REQUIRED
    }

    #[test]
    fn resubmitting_from_the_completion_routine_does_not_recurse_without_bound() {
        let s = session();
        let sink = Sink::v4();
        let mut req = Req::new();
        let (client, socket) = connected(&sink, &mut req);
        let b = Buffer::new(&pattern(10, 1));
        let n = 5000;
        let mut l = Box::new(Loop {
            socket,
            // SAFETY: plain allocation.
            irp: unsafe { wsksend_ffi::IoAllocateIrp(1, FALSE) },
            buf: wsk_buf(&b, 0, 10),
            left: AtomicUsize::new(n),
            done: KEVENT::zeroed(),
        });
        // SAFETY: the boxed event has a stable address.
        unsafe { wsksend_ffi::KeInitializeEvent(&raw mut l.done, NotificationEvent, FALSE) };
        let ctx = (&raw mut *l).cast::<c_void>();
        arm_and_send(&mut l, ctx);
        let t = -50_000_000_i64; // 5 s
        // SAFETY: the event is initialised; `t` is readable.
        let r = unsafe {
            wsksend_ffi::KeWaitForSingleObject(
                (&raw mut l.done).cast(),
                Executive,
                KernelMode,
                FALSE,
                &raw const t,
            )
        };
        assert_eq!(r, STATUS_SUCCESS);
        assert!(sink.wait_bytes(0, 10 * n, WAIT));
        assert_eq!(s.sends().len(), n);
        close(&mut req, socket);
        // SAFETY: the last completion returned MORE_PROCESSING_REQUIRED: the IRP is ours.
        unsafe { wsksend_ffi::IoFreeIrp(l.irp) };
        drop((b, req));
        client.release();
        s.finish();
    }

    fn arm_and_send(l: &mut Loop, ctx: *mut c_void) {
        // SAFETY: the IRP is fresh or reused, and ours.
        unsafe {
            wsksend_ffi::inline::IoSetCompletionRoutine(
                l.irp,
                Some(resubmit),
                ctx,
                true,
                true,
                true,
            );
        };
        let f = dispatch(l.socket).WskSend.unwrap_or_else(|| unreachable!());
        // SAFETY: live socket and buffer, armed IRP.
        unsafe { f(l.socket, &raw mut l.buf, 0, l.irp) };
    }

    #[test]
    fn length_beyond_chain_is_detected() {
        let s = session();
        let sink = Sink::v4();
        let mut req = Req::new();
        let (client, socket) = connected(&sink, &mut req);
        let b = Buffer::new(&pattern(100, 0));
        let mut buf = wsk_buf(&b, 10, 91);
        assert_eq!(
            send(&mut req, socket, &mut buf, 0),
            STATUS_INVALID_PARAMETER
        );
        assert_eq!(req.wait(WAIT), Some((STATUS_INVALID_PARAMETER, 0)));
        close(&mut req, socket);
        drop((b, req));
        client.release();
        s.finish_expecting(Rule::LengthBeyondChain);
    }

    #[test]
    fn mdl_freed_in_flight_is_detected() {
        let s = session();
        let sink = Sink::v4();
        let mut req = Req::new();
        let (client, socket) = connected(&sink, &mut req);
        let b = Buffer::new(&pattern(100, 0));
        let mut buf = wsk_buf(&b, 0, 100);
        s.inject(Op::Send, Fault::PendIgnoringCancel);
        let mut r1 = Req::new();
        assert_eq!(send(&mut r1, socket, &mut buf, 0), STATUS_PENDING);
        drop(b); // frees the MDL and the pool block while the send is parked
        let rules: Vec<Rule> = s.violations().iter().map(|v| v.rule).collect();
        assert_eq!(
            rules,
            [Rule::MdlReleasedInFlight, Rule::BufferFreedInFlight]
        );
        close(&mut req, socket);
        assert_eq!(r1.wait(WAIT).map(|r| r.0), Some(STATUS_CANCELLED));
        drop((req, r1));
        client.release();
        s.finish_expecting(Rule::MdlReleasedInFlight);
    }

    #[test]
    fn unlocked_mdl_and_freed_irp_in_flight_are_detected() {
        let s = session();
        let sink = Sink::v4();
        let mut req = Req::new();
        let (client, socket) = connected(&sink, &mut req);
        let data = pattern(10, 0);
        let len = u32::try_from(data.len()).unwrap_or(0);
        // SAFETY: `data` outlives the MDL.
        let mdl = unsafe {
            wsksend_ffi::IoAllocateMdl(data.as_ptr().cast_mut().cast(), len, 0, 0, ptr::null_mut())
        };
        let mut buf = WSK_BUF {
            Mdl: mdl,
            Offset: 0,
            Length: data.len(),
        };
        assert_eq!(
            send(&mut req, socket, &mut buf, 0),
            STATUS_INVALID_PARAMETER
        );
        assert!(
            s.violations()
                .iter()
                .any(|v| v.rule == Rule::UnlockedMdlInFlight)
        );
        // SAFETY: `mdl` is live and unlocked.
        unsafe { wsksend_ffi::MmProbeAndLockPages(mdl, KernelMode, 0) };
        s.inject(Op::Send, Fault::PendIgnoringCancel);
        let r1 = Req::new();
        let mut r1 = std::mem::ManuallyDrop::new(r1);
        assert_eq!(send(&mut r1, socket, &mut buf, 0), STATUS_PENDING);
        // SAFETY: deliberately freeing an in-flight IRP; the model detects it.
        unsafe { wsksend_ffi::IoFreeIrp(r1.irp) };
        assert!(
            s.violations()
                .iter()
                .any(|v| v.rule == Rule::IrpFreedInFlight)
        );
        close(&mut req, socket);
        // SAFETY: the send IRP was dropped by the provider; the MDL is ours again.
        unsafe { wsksend_ffi::MmUnlockPages(mdl) };
        // SAFETY: as above.
        unsafe { wsksend_ffi::IoFreeMdl(mdl) };
        drop(req);
        client.release();
        s.finish_expecting(Rule::IrpFreedInFlight);
    }

    #[test]
    fn faults_change_send_outcomes() {
        let s = session();
        let sink = Sink::v4();
        let mut req = Req::new();
        let (client, socket) = connected(&sink, &mut req);
        let data = pattern(1000, 4);
        let b = Buffer::new(&data);
        let mut buf = wsk_buf(&b, 0, data.len());

        s.inject(Op::Send, Fault::Fail(STATUS_UNSUCCESSFUL));
        assert_eq!(send(&mut req, socket, &mut buf, 0), STATUS_UNSUCCESSFUL);
        assert_eq!(req.wait(WAIT), Some((STATUS_UNSUCCESSFUL, 0)));

        s.inject(Op::Send, Fault::RejectFlags(WSK_FLAG_NODELAY));
        assert_eq!(
            send(&mut req, socket, &mut buf, WSK_FLAG_NODELAY),
            STATUS_NOT_SUPPORTED
        );
        assert_eq!(req.wait(WAIT), Some((STATUS_NOT_SUPPORTED, 0)));

        s.inject(Op::Send, Fault::Partial);
        assert_eq!(send(&mut req, socket, &mut buf, 0), STATUS_SUCCESS);
        assert_eq!(req.wait(WAIT), Some((STATUS_SUCCESS, 500)));

        s.inject(Op::Send, Fault::CompleteReturnPending);
        assert_eq!(send(&mut req, socket, &mut buf, 0), STATUS_PENDING);
        assert_eq!(req.wait(WAIT), Some((STATUS_SUCCESS, 1000)));

        s.inject(Op::Send, Fault::Pend(Duration::from_millis(30)));
        assert_eq!(send(&mut req, socket, &mut buf, 0), STATUS_PENDING);
        assert_eq!(req.wait(WAIT), Some((STATUS_SUCCESS, 1000)));

        let hits = req.hits();
        s.inject(Op::Send, Fault::FailWithoutCompleting(STATUS_UNSUCCESSFUL));
        assert_eq!(send(&mut req, socket, &mut buf, 0), STATUS_UNSUCCESSFUL);
        assert_eq!(req.wait(Duration::from_millis(50)), None);
        assert_eq!(req.hits(), hits);

        assert!(sink.wait_bytes(0, 2500, WAIT));
        let expected: Vec<u8> = [&data[..500], &data[..], &data[..]].concat();
        assert_eq!(sink.received(0), expected);
        close(&mut req, socket);
        drop((b, req));
        client.release();
        s.finish();
    }

    #[test]
    fn max_pending_fails_excess_sends() {
        let s = session();
        s.set_max_pending(2);
        let sink = Sink::v4();
        let mut req = Req::new();
        let (client, socket) = connected(&sink, &mut req);
        let b = Buffer::new(&pattern(10, 0));
        let mut buf = wsk_buf(&b, 0, 10);
        let mut reqs: Vec<Req> = (0..3).map(|_| Req::new()).collect();
        for r in &mut reqs[..2] {
            s.inject(Op::Send, Fault::PendIgnoringCancel);
            assert_eq!(send(r, socket, &mut buf, 0), STATUS_PENDING);
        }
        s.inject(Op::Send, Fault::PendIgnoringCancel);
        assert_eq!(send(&mut reqs[2], socket, &mut buf, 0), STATUS_UNSUCCESSFUL);
        assert_eq!(reqs[2].wait(WAIT), Some((STATUS_UNSUCCESSFUL, 0)));
        close(&mut req, socket);
        for r in &mut reqs[..2] {
            assert_eq!(r.wait(WAIT).map(|x| x.0), Some(STATUS_CANCELLED));
        }
        drop((b, req, reqs));
        client.release();
        s.finish();
    }

    #[test]
    fn sends_keep_their_order_across_modes() {
        let s = session();
        let sink = Sink::v4();
        let mut req = Req::new();
        let (client, socket) = connected(&sink, &mut req);
        let parts: Vec<Vec<u8>> = (0..6).map(|i| pattern(3000, i)).collect();
        let bufs: Vec<Buffer> = parts.iter().map(|p| Buffer::new(p)).collect();
        let mut reqs: Vec<Req> = (0..6).map(|_| Req::new()).collect();
        for (i, (b, r)) in bufs.iter().zip(&mut reqs).enumerate() {
            if i % 2 == 0 {
                s.inject(Op::Send, Fault::Pend(Duration::from_millis(10)));
            }
            let mut buf = wsk_buf(b, 0, 3000);
            send(r, socket, &mut buf, 0);
        }
        for r in &mut reqs {
            assert_eq!(r.wait(WAIT), Some((STATUS_SUCCESS, 3000)));
        }
        assert!(sink.wait_bytes(0, 18_000, WAIT));
        assert_eq!(sink.received(0), parts.concat());
        close(&mut req, socket);
        drop((bufs, req, reqs));
        client.release();
        s.finish();
    }

    #[test]
    fn required_flags_are_checked() {
        let s = session();
        s.require_send_flags(WSK_FLAG_NODELAY);
        let sink = Sink::v4();
        let mut req = Req::new();
        let (client, socket) = connected(&sink, &mut req);
        let b = Buffer::new(&pattern(10, 0));
        let mut buf = wsk_buf(&b, 0, 10);
        assert_eq!(send(&mut req, socket, &mut buf, 0), STATUS_SUCCESS);
        assert!(req.wait(WAIT).is_some());
        close(&mut req, socket);
        drop((b, req));
        client.release();
        s.finish_expecting(Rule::FlagDropped);
    }

    #[test]
    fn capture_can_fail_and_deregister_checks_open_sockets() {
        let s = session();
        let client = Client::new();
        s.inject(Op::Capture, Fault::Fail(STATUS_DEVICE_NOT_READY));
        let mut npi = WSK_PROVIDER_NPI {
            Client: ptr::null_mut(),
            Dispatch: ptr::null(),
        };
        let reg = &raw const *client.reg as *mut WSK_REGISTRATION;
        // SAFETY: `reg` is registered; `npi` is writable.
        let r = unsafe { wsksend_ffi::WskCaptureProviderNPI(reg, 0, &raw mut npi) };
        assert_eq!(r, STATUS_DEVICE_NOT_READY);
        let mut req = Req::new();
        let _socket = client.socket(&mut req, false);
        drop(req);
        client.release();
        s.finish_expecting(Rule::DeregisterWithOpenSockets);
    }

    #[test]
    fn socket_use_after_close_is_detected() {
        let s = session();
        let mut req = Req::new();
        let client = Client::new();
        let socket = client.socket(&mut req, false);
        let f = dispatch(socket).WskSend.unwrap_or_else(|| unreachable!());
        close(&mut req, socket);
        let b = Buffer::new(&pattern(10, 0));
        let mut buf = wsk_buf(&b, 0, 10);
        let irp = req.arm();
        // SAFETY: deliberately a closed socket: the model checks its table before
        // touching anything.
        let r = unsafe { f(socket, &raw mut buf, 0, irp) };
        assert_ne!(r, STATUS_SUCCESS);
        drop((b, req));
        client.release();
        s.finish_expecting(Rule::UseAfterFree);
    }

    #[test]
    fn no_stack_location_is_detected() {
        let s = session();
        let client = Client::new();
        // SAFETY: plain allocation (no stack location at all).
        let irp = unsafe { wsksend_ffi::IoAllocateIrp(0, FALSE) };
        // SAFETY: the NPI was captured; its dispatch table is static.
        let create = unsafe { (*client.npi.Dispatch).WskSocket }.unwrap_or_else(|| unreachable!());
        // SAFETY: valid arguments; the IRP deliberately has no location for the provider.
        let r = unsafe {
            create(
                client.npi.Client,
                AF_INET,
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
        };
        assert_eq!(r, STATUS_INVALID_PARAMETER);
        // SAFETY: the IRP was never taken by the provider.
        unsafe { wsksend_ffi::IoFreeIrp(irp) };
        client.release();
        s.finish_expecting(Rule::NoStackLocation);
    }

    #[test]
    fn leaked_socket_is_reported() {
        let s = session();
        let mut req = Req::new();
        let client = Client::new();
        let _socket = client.socket(&mut req, false);
        drop(req);
        s.finish_expecting(Rule::Leak);
        let _ = client;
    }
}
