//! The checker catches every rule it claims: one module per [`Rule`], whose `caught*`
//! tests break the rule on purpose by calling the kernel and WSK routines directly, as a
//! buggy driver would, and end with [`Session::finish_expecting`]; the `clean*` twins
//! do the same thing correctly and end with [`Session::finish`], so the rule has no
//! false positive on the correct pattern.
//!
//! Right after the misuse, each `caught*` test also asserts that the violations
//! recorded so far are exactly that rule: the call that broke it reported it, and
//! nothing else was reported. (Leaks are only looked for when the session finishes; the
//! `leak` tests free everything but the one object, so that is the only leak to find.)
//!
//! Run with `cargo test -p wsksend-kernel-model --test rules`.

use std::ffi::c_void;
use std::ptr;
use std::sync::{Condvar, Mutex, PoisonError};
use std::time::{Duration, Instant};

use wsksend_ffi::status::{
    STATUS_CANCELLED, STATUS_INVALID_PARAMETER, STATUS_MORE_PROCESSING_REQUIRED, STATUS_PENDING,
    STATUS_SUCCESS, STATUS_TIMEOUT, STATUS_UNSUCCESSFUL,
};
use wsksend_ffi::{
    AF_INET, DEVICE_OBJECT, Executive, FALSE, IPPROTO_TCP, IRP, IoReadAccess, KEVENT, KSPIN_LOCK,
    KernelMode, MDL, NTSTATUS, NonPagedPoolNx, NotificationEvent, PIO_COMPLETION_ROUTINE,
    SOCK_STREAM, SOCKADDR_IN, TRUE, WSK_BUF, WSK_CLIENT_DISPATCH, WSK_CLIENT_NPI,
    WSK_FLAG_CONNECTION_SOCKET, WSK_FLAG_NODELAY, WSK_NO_WAIT, WSK_PROVIDER_CONNECTION_DISPATCH,
    WSK_PROVIDER_NPI, WSK_REGISTRATION, WSK_SOCKET, WSK_VERSION_1_0,
};
use wsksend_kernel_model::{Fault, Op, Rule, Session, Sink, Violation, session};

const TAG: u32 = u32::from_le_bytes(*b"Rule");
const WAIT: Duration = Duration::from_secs(5);

// --- IRPs with a completion routine ---

/// Where a completion routine leaves `IoStatus`.
#[derive(Default)]
struct Done {
    result: Mutex<Option<(NTSTATUS, usize)>>,
    cv: Condvar,
}

fn record(irp: *mut IRP, ctx: *mut c_void) {
    // SAFETY: the context is the `Done` of the `Req` that armed the IRP, boxed and alive
    // until the request is freed.
    let done = unsafe { &*ctx.cast::<Done>() };
    // SAFETY: the IRP is live while its completion routine runs.
    let io = unsafe { (*irp).IoStatus };
    *done.result.lock().unwrap_or_else(PoisonError::into_inner) = Some((io.Status, io.Information));
    done.cv.notify_all();
}

/// The correct completion routine: records the result and keeps the IRP.
unsafe extern "system" fn keep(_: *mut DEVICE_OBJECT, irp: *mut IRP, ctx: *mut c_void) -> NTSTATUS {
    record(irp, ctx);
    STATUS_MORE_PROCESSING_REQUIRED
}

/// A buggy completion routine: records the result and lets the I/O manager go on
/// with a driver-allocated IRP.
unsafe extern "system" fn give_back(
    _: *mut DEVICE_OBJECT,
    irp: *mut IRP,
    ctx: *mut c_void,
) -> NTSTATUS {
    record(irp, ctx);
    STATUS_SUCCESS
}

/// A driver-allocated IRP (one stack location) and its completion context.
struct Req {
    irp: *mut IRP,
    done: Box<Done>,
}

impl Req {
    fn new() -> Self {
        // SAFETY: plain allocation.
        let irp = unsafe { wsksend_ffi::IoAllocateIrp(1, FALSE) };
        assert!(!irp.is_null());
        Self {
            irp,
            done: Box::default(),
        }
    }

    /// `IoReuseIrp` and `IoSetCompletionRoutine(keep)` for one provider call.
    fn arm(&mut self) -> *mut IRP {
        self.arm_with(Some(keep))
    }

    fn arm_with(&mut self, routine: PIO_COMPLETION_ROUTINE) -> *mut IRP {
        // SAFETY: the IRP is ours and not in flight.
        unsafe { wsksend_ffi::IoReuseIrp(self.irp, STATUS_UNSUCCESSFUL) };
        self.set_routine(routine);
        self.irp
    }

    /// `IoSetCompletionRoutine` only (no `IoReuseIrp`).
    fn set_routine(&mut self, routine: PIO_COMPLETION_ROUTINE) {
        *self
            .done
            .result
            .lock()
            .unwrap_or_else(PoisonError::into_inner) = None;
        let ctx = (&raw const *self.done).cast_mut().cast::<c_void>();
        // SAFETY: the IRP is ours with its next stack location free; `ctx` lives as
        // long as the request.
        unsafe {
            wsksend_ffi::inline::IoSetCompletionRoutine(self.irp, routine, ctx, true, true, true);
        };
    }

    /// Waits for the completion routine; `(Status, Information)`.
    fn wait(&self) -> Option<(NTSTATUS, usize)> {
        let deadline = Instant::now() + WAIT;
        let mut result = self
            .done
            .result
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        while result.is_none() {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return None;
            }
            result = self
                .done
                .cv
                .wait_timeout(result, left)
                .unwrap_or_else(PoisonError::into_inner)
                .0;
        }
        *result
    }

    fn free(self) {
        // SAFETY: the IRP came from IoAllocateIrp and is not in flight.
        unsafe { wsksend_ffi::IoFreeIrp(self.irp) };
    }
}

// --- WSK client, socket and connection ---

static CLIENT_DISPATCH: WSK_CLIENT_DISPATCH = WSK_CLIENT_DISPATCH {
    Version: WSK_VERSION_1_0,
    Reserved: 0,
    WskClientEvent: None,
};

/// A registered WSK client (its registration boxed, so it stays put).
struct Client {
    reg: Box<WSK_REGISTRATION>,
    npi: WSK_PROVIDER_NPI,
}

impl Client {
    /// `WskRegister` only.
    fn register() -> Self {
        let npi = WSK_CLIENT_NPI {
            ClientContext: ptr::null_mut(),
            Dispatch: &raw const CLIENT_DISPATCH,
        };
        let mut reg = Box::new(WSK_REGISTRATION::zeroed());
        // SAFETY: both structures are valid for the call; `reg` stays put.
        let r = unsafe { wsksend_ffi::WskRegister(&raw const npi, &raw mut *reg) };
        assert_eq!(r, STATUS_SUCCESS);
        Self {
            reg,
            npi: WSK_PROVIDER_NPI {
                Client: ptr::null_mut(),
                Dispatch: ptr::null(),
            },
        }
    }

    fn reg(&self) -> *mut WSK_REGISTRATION {
        (&raw const *self.reg).cast_mut()
    }

    /// `WskCaptureProviderNPI` with `wait_ms`; returns its status.
    fn capture(&mut self, wait_ms: u32) -> NTSTATUS {
        // SAFETY: the registration is live; `npi` is writable.
        unsafe { wsksend_ffi::WskCaptureProviderNPI(self.reg(), wait_ms, &raw mut self.npi) }
    }

    /// `WskRegister` + `WskCaptureProviderNPI`.
    fn ready() -> Self {
        let mut client = Self::register();
        assert_eq!(client.capture(WSK_NO_WAIT), STATUS_SUCCESS);
        client
    }

    /// `WskSocket` for a TCP connection socket.
    fn socket(&self, req: &mut Req) -> *mut WSK_SOCKET {
        // SAFETY: the NPI was captured; its dispatch table is static.
        let create = unsafe { (*self.npi.Dispatch).WskSocket }.expect("WskSocket");
        let irp = req.arm();
        // SAFETY: valid arguments for a connection socket; the IRP is armed.
        let r = unsafe {
            create(
                self.npi.Client,
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
        assert_eq!(r, STATUS_SUCCESS);
        let (status, socket) = req.wait().expect("WskSocket completion");
        assert_eq!(status, STATUS_SUCCESS);
        socket as *mut WSK_SOCKET
    }

    fn release_npi(&self) {
        // SAFETY: one capture of a live registration.
        unsafe { wsksend_ffi::WskReleaseProviderNPI(self.reg()) };
    }

    fn deregister(&self) {
        // SAFETY: the registration is live (the model looks it up).
        unsafe { wsksend_ffi::WskDeregister(self.reg()) };
    }

    /// `WskReleaseProviderNPI` + `WskDeregister`.
    fn release(self) {
        self.release_npi();
        self.deregister();
    }
}

fn dispatch(socket: *mut WSK_SOCKET) -> &'static WSK_PROVIDER_CONNECTION_DISPATCH {
    // SAFETY: `socket` is a live model socket.
    let table = unsafe { (*socket).Dispatch };
    // SAFETY: a model socket's dispatch is its static connection table.
    unsafe { &*table.cast::<WSK_PROVIDER_CONNECTION_DISPATCH>() }
}

/// `WskCloseSocket`, waited for.
fn close_socket(req: &mut Req, socket: *mut WSK_SOCKET) {
    let close = dispatch(socket).WskCloseSocket.expect("WskCloseSocket");
    let irp = req.arm();
    // SAFETY: live socket, armed IRP.
    unsafe { close(socket, irp) };
    assert_eq!(req.wait().map(|r| r.0), Some(STATUS_SUCCESS));
}

/// `WskSend` of `buf` with `irp` (armed or not: the caller decides).
fn wsk_send(socket: *mut WSK_SOCKET, buf: &mut WSK_BUF, flags: u32, irp: *mut IRP) -> NTSTATUS {
    let send = dispatch(socket).WskSend.expect("WskSend");
    // SAFETY: live socket; the MDLs of `buf` and the IRP are the caller's to vouch for
    // (the model checks them before touching anything).
    unsafe { send(socket, buf, flags, irp) }
}

/// A client with a socket connected to a loopback sink.
struct Conn {
    client: Client,
    socket: *mut WSK_SOCKET,
    req: Req,
    sink: Sink,
}

impl Conn {
    /// Socket, bind to `0.0.0.0:0`, connect to a fresh sink.
    fn open() -> Self {
        let sink = Sink::v4();
        let client = Client::ready();
        let mut req = Req::new();
        let socket = client.socket(&mut req);
        let d = dispatch(socket);
        let mut local = sockaddr("0.0.0.0:0".parse().expect("address"));
        let irp = req.arm();
        // SAFETY: live socket, valid address, armed IRP.
        unsafe { d.WskBind.expect("WskBind")(socket, (&raw mut local).cast(), 0, irp) };
        assert_eq!(req.wait().map(|r| r.0), Some(STATUS_SUCCESS));
        let std::net::SocketAddr::V4(to) = sink.addr() else {
            unreachable!("an IPv4 sink")
        };
        let mut remote = sockaddr(to);
        let irp = req.arm();
        // SAFETY: as above.
        unsafe { d.WskConnect.expect("WskConnect")(socket, (&raw mut remote).cast(), 0, irp) };
        assert_eq!(req.wait().map(|r| r.0), Some(STATUS_SUCCESS));
        assert!(sink.wait_connections(1, WAIT));
        Self {
            client,
            socket,
            req,
            sink,
        }
    }

    /// Arms `req` and sends `buf` with it.
    fn send(&self, req: &mut Req, buf: &mut WSK_BUF, flags: u32) -> NTSTATUS {
        let irp = req.arm();
        wsk_send(self.socket, buf, flags, irp)
    }

    /// Asserts the sink received exactly `expected`.
    fn expect_received(&self, expected: &[u8]) {
        assert!(self.sink.wait_bytes(0, expected.len(), WAIT));
        assert_eq!(self.sink.received(0), expected);
    }

    /// Closes the socket (completing whatever the provider still holds) and releases
    /// the client.
    fn close(mut self) {
        close_socket(&mut self.req, self.socket);
        self.req.free();
        self.client.release();
    }
}

fn sockaddr(addr: std::net::SocketAddrV4) -> SOCKADDR_IN {
    SOCKADDR_IN {
        sin_family: AF_INET,
        sin_port: addr.port().to_be(),
        sin_addr: addr.ip().octets(),
        sin_zero: [0; 8],
    }
}

// --- pool buffers and MDLs ---

/// A pool block holding `bytes`, with an MDL over it.
struct Buf {
    mem: *mut u8,
    mdl: *mut MDL,
}

impl Buf {
    /// The MDL is left unlocked.
    fn unlocked(bytes: &[u8]) -> Self {
        // SAFETY: plain allocation.
        let mem = unsafe { wsksend_ffi::ExAllocatePoolWithTag(NonPagedPoolNx, bytes.len(), TAG) };
        let mem = mem.cast::<u8>();
        assert!(!mem.is_null());
        // SAFETY: `mem` is a fresh block of `bytes.len()` bytes.
        unsafe { mem.copy_from_nonoverlapping(bytes.as_ptr(), bytes.len()) };
        let mdl = alloc_mdl(mem, bytes.len());
        Self { mem, mdl }
    }

    /// The MDL is locked with `MmBuildMdlForNonPagedPool`.
    fn nonpaged(bytes: &[u8]) -> Self {
        let b = Self::unlocked(bytes);
        // SAFETY: the MDL is live, unlocked, and describes pool.
        unsafe { wsksend_ffi::MmBuildMdlForNonPagedPool(b.mdl) };
        b
    }

    /// The MDL is locked with `MmProbeAndLockPages` (the caller unlocks it).
    fn probed(bytes: &[u8]) -> Self {
        let b = Self::unlocked(bytes);
        // SAFETY: the MDL is live and unlocked.
        unsafe { wsksend_ffi::MmProbeAndLockPages(b.mdl, KernelMode, IoReadAccess) };
        b
    }

    fn wsk_buf(&self, offset: u32, length: usize) -> WSK_BUF {
        WSK_BUF {
            Mdl: self.mdl,
            Offset: offset,
            Length: length,
        }
    }

    fn unlock(&self) {
        // SAFETY: the MDL is live and was probed.
        unsafe { wsksend_ffi::MmUnlockPages(self.mdl) };
    }

    fn free_mdl(&self) {
        // SAFETY: the MDL came from IoAllocateMdl.
        unsafe { wsksend_ffi::IoFreeMdl(self.mdl) };
    }

    fn free_pool(&self) {
        // SAFETY: the block came from ExAllocatePoolWithTag with `TAG`.
        unsafe { wsksend_ffi::ExFreePoolWithTag(self.mem.cast(), TAG) };
    }

    /// Frees the MDL, then the block.
    fn free(self) {
        self.free_mdl();
        self.free_pool();
    }
}

fn alloc_mdl(mem: *mut u8, len: usize) -> *mut MDL {
    let len = u32::try_from(len).expect("length");
    // SAFETY: describing memory has no preconditions; no IRP.
    let mdl = unsafe { wsksend_ffi::IoAllocateMdl(mem.cast(), len, FALSE, FALSE, ptr::null_mut()) };
    assert!(!mdl.is_null());
    mdl
}

/// Links `second` after `first`.
fn chain(first: &Buf, second: &Buf) {
    // SAFETY: both MDLs are live and ours.
    unsafe { (*first.mdl).Next = second.mdl };
}

fn pattern(n: usize, seed: u8) -> Vec<u8> {
    (0..n)
        .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed))
        .collect()
}

/// Parks a send of `buf` (the provider holds it until the socket closes).
fn park_send(s: &Session, conn: &Conn, req: &mut Req, buf: &mut WSK_BUF) {
    s.inject(Op::Send, Fault::PendIgnoringCancel);
    assert_eq!(conn.send(req, buf, 0), STATUS_PENDING);
}

/// Asserts that the violations recorded so far are exactly `expected`, in order: the
/// misuse was reported by the call that made it, and nothing else was.
fn assert_rules(s: &Session, expected: &[Rule]) {
    let got: Vec<Violation> = s.violations();
    let rules: Vec<Rule> = got.iter().map(|v| v.rule).collect();
    assert_eq!(rules, expected, "{got:#?}");
}

// --- events ---

fn event(signaled: bool) -> Box<KEVENT> {
    let mut ev = Box::new(KEVENT::zeroed());
    let state = if signaled { TRUE } else { FALSE };
    // SAFETY: the boxed storage stays put for the test.
    unsafe { wsksend_ffi::KeInitializeEvent(&raw mut *ev, NotificationEvent, state) };
    ev
}

/// `KeWaitForSingleObject` with this timeout (100 ns units; negative: relative,
/// positive: absolute; `None`: infinite).
fn wait(ev: &mut KEVENT, timeout: Option<i64>) -> NTSTATUS {
    let t = timeout.unwrap_or(0);
    let tp = if timeout.is_some() {
        &raw const t
    } else {
        ptr::null()
    };
    // SAFETY: `ev` is an initialised event; `tp` is null or points to `t`.
    unsafe {
        wsksend_ffi::KeWaitForSingleObject((&raw mut *ev).cast(), Executive, KernelMode, FALSE, tp)
    }
}

// --- the rules ---

mod use_after_free {
    use super::*;

    /// `IoReuseIrp` on an IRP after `IoFreeIrp`.
    #[test]
    fn caught() {
        let s = session();
        let req = Req::new();
        let irp = req.irp;
        req.free();
        // SAFETY: deliberately a freed IRP: the model looks it up before touching it.
        unsafe { wsksend_ffi::IoReuseIrp(irp, STATUS_SUCCESS) };
        assert_rules(&s, &[Rule::UseAfterFree]);
        s.finish_expecting(Rule::UseAfterFree);
    }

    #[test]
    fn clean() {
        let s = session();
        let mut req = Req::new();
        req.arm();
        req.free();
        s.finish();
    }
}

mod double_free {
    use super::*;

    /// `IoFreeMdl` twice.
    #[test]
    fn caught() {
        let s = session();
        let b = Buf::nonpaged(&[1; 16]);
        b.free_mdl();
        b.free_mdl();
        assert_rules(&s, &[Rule::DoubleFree]);
        b.free_pool();
        s.finish_expecting(Rule::DoubleFree);
    }

    #[test]
    fn clean() {
        let s = session();
        Buf::nonpaged(&[1; 16]).free();
        s.finish();
    }
}

mod leak {
    use super::*;

    /// An IRP never freed.
    #[test]
    fn irp_caught() {
        let s = session();
        let _leaked = Req::new();
        assert_eq!(s.live_irps(), 1);
        assert_rules(&s, &[]);
        s.finish_expecting(Rule::Leak);
    }

    #[test]
    fn irp_clean() {
        let s = session();
        Req::new().free();
        s.finish();
    }

    /// An MDL never freed (its pool block is).
    #[test]
    fn mdl_caught() {
        let s = session();
        let b = Buf::nonpaged(&[2; 64]);
        b.free_pool();
        assert_eq!((s.live_mdls(), s.live_pool()), (1, 0));
        assert_rules(&s, &[]);
        s.finish_expecting(Rule::Leak);
    }

    #[test]
    fn mdl_clean() {
        let s = session();
        Buf::nonpaged(&[2; 64]).free();
        s.finish();
    }

    /// A pool block never freed.
    #[test]
    fn pool_caught() {
        let s = session();
        // SAFETY: plain allocation, deliberately leaked.
        let p = unsafe { wsksend_ffi::ExAllocatePoolWithTag(NonPagedPoolNx, 100, TAG) };
        assert!(!p.is_null());
        assert_eq!(s.live_pool(), 1);
        assert_rules(&s, &[]);
        s.finish_expecting(Rule::Leak);
    }

    #[test]
    fn pool_clean() {
        let s = session();
        // SAFETY: plain allocation.
        let p = unsafe { wsksend_ffi::ExAllocatePoolWithTag(NonPagedPoolNx, 100, TAG) };
        // SAFETY: `p` came from ExAllocatePoolWithTag with `TAG`.
        unsafe { wsksend_ffi::ExFreePoolWithTag(p, TAG) };
        s.finish();
    }

    /// A socket never closed. The client deregisters anyway (a
    /// `DeregisterWithOpenSockets` on the way), so the socket is the only thing left
    /// for the leak check to find.
    #[test]
    fn socket_caught() {
        let s = session();
        let client = Client::ready();
        let mut req = Req::new();
        let _socket = client.socket(&mut req);
        req.free();
        client.release();
        assert_rules(&s, &[Rule::DeregisterWithOpenSockets]);
        assert_eq!(s.open_sockets(), 1);
        s.finish_expecting(Rule::Leak);
    }

    #[test]
    fn socket_clean() {
        let s = session();
        let client = Client::ready();
        let mut req = Req::new();
        let socket = client.socket(&mut req);
        close_socket(&mut req, socket);
        req.free();
        client.release();
        s.finish();
    }
}

mod length_beyond_chain {
    use super::*;

    /// `Length` one byte past what the MDL describes after `Offset`.
    #[test]
    fn caught() {
        let s = session();
        let conn = Conn::open();
        let b = Buf::nonpaged(&pattern(100, 1));
        let mut req = Req::new();
        let r = conn.send(&mut req, &mut b.wsk_buf(10, 91), 0);
        assert_eq!(r, STATUS_INVALID_PARAMETER);
        assert_rules(&s, &[Rule::LengthBeyondChain]);
        assert_eq!(req.wait(), Some((STATUS_INVALID_PARAMETER, 0)));
        req.free();
        conn.close();
        b.free();
        s.finish_expecting(Rule::LengthBeyondChain);
    }

    #[test]
    fn clean() {
        let s = session();
        let conn = Conn::open();
        let data = pattern(100, 1);
        let b = Buf::nonpaged(&data);
        let mut req = Req::new();
        assert_eq!(
            conn.send(&mut req, &mut b.wsk_buf(10, 90), 0),
            STATUS_SUCCESS
        );
        assert_eq!(req.wait(), Some((STATUS_SUCCESS, 90)));
        conn.expect_received(&data[10..]);
        req.free();
        conn.close();
        b.free();
        s.finish();
    }
}

mod offset_beyond_first_mdl {
    use super::*;

    /// `Offset` equal to the first MDL's `ByteCount` (the chain holds enough bytes).
    #[test]
    fn caught() {
        let s = session();
        let conn = Conn::open();
        let (a, b) = (
            Buf::nonpaged(&pattern(100, 1)),
            Buf::nonpaged(&pattern(100, 2)),
        );
        chain(&a, &b);
        let mut req = Req::new();
        let r = conn.send(&mut req, &mut a.wsk_buf(100, 50), 0);
        assert_eq!(r, STATUS_INVALID_PARAMETER);
        assert_rules(&s, &[Rule::OffsetBeyondFirstMdl]);
        req.free();
        conn.close();
        a.free();
        b.free();
        s.finish_expecting(Rule::OffsetBeyondFirstMdl);
    }

    /// The last byte of the first MDL, then into the second.
    #[test]
    fn clean() {
        let s = session();
        let conn = Conn::open();
        let (da, db) = (pattern(100, 1), pattern(100, 2));
        let (a, b) = (Buf::nonpaged(&da), Buf::nonpaged(&db));
        chain(&a, &b);
        let mut req = Req::new();
        assert_eq!(
            conn.send(&mut req, &mut a.wsk_buf(99, 50), 0),
            STATUS_SUCCESS
        );
        assert_eq!(req.wait(), Some((STATUS_SUCCESS, 50)));
        conn.expect_received(&[&da[99..], &db[..49]].concat());
        req.free();
        conn.close();
        a.free();
        b.free();
        s.finish();
    }
}

mod unlocked_mdl_in_flight {
    use super::*;

    /// The second MDL of a chain was never locked.
    #[test]
    fn caught() {
        let s = session();
        let conn = Conn::open();
        let (a, b) = (
            Buf::nonpaged(&pattern(10, 1)),
            Buf::unlocked(&pattern(10, 2)),
        );
        chain(&a, &b);
        let mut req = Req::new();
        let r = conn.send(&mut req, &mut a.wsk_buf(0, 20), 0);
        assert_eq!(r, STATUS_INVALID_PARAMETER);
        assert_rules(&s, &[Rule::UnlockedMdlInFlight]);
        req.free();
        conn.close();
        a.free();
        b.free();
        s.finish_expecting(Rule::UnlockedMdlInFlight);
    }

    #[test]
    fn clean() {
        let s = session();
        let conn = Conn::open();
        let (da, db) = (pattern(10, 1), pattern(10, 2));
        let (a, b) = (Buf::nonpaged(&da), Buf::probed(&db));
        chain(&a, &b);
        let mut req = Req::new();
        assert_eq!(
            conn.send(&mut req, &mut a.wsk_buf(0, 20), 0),
            STATUS_SUCCESS
        );
        assert_eq!(req.wait(), Some((STATUS_SUCCESS, 20)));
        conn.expect_received(&[da, db].concat());
        req.free();
        conn.close();
        a.free();
        b.unlock();
        b.free();
        s.finish();
    }
}

mod mdl_released_in_flight {
    use super::*;

    /// `MmUnlockPages` while the provider holds the send.
    #[test]
    fn caught() {
        let s = session();
        let conn = Conn::open();
        let b = Buf::probed(&pattern(10, 1));
        let mut req = Req::new();
        park_send(&s, &conn, &mut req, &mut b.wsk_buf(0, 10));
        b.unlock();
        assert_rules(&s, &[Rule::MdlReleasedInFlight]);
        conn.close();
        assert_eq!(req.wait().map(|r| r.0), Some(STATUS_CANCELLED));
        req.free();
        b.free();
        s.finish_expecting(Rule::MdlReleasedInFlight);
    }

    /// Unlock only after the send completed.
    #[test]
    fn clean() {
        let s = session();
        let conn = Conn::open();
        let b = Buf::probed(&pattern(10, 1));
        let mut req = Req::new();
        park_send(&s, &conn, &mut req, &mut b.wsk_buf(0, 10));
        conn.close();
        assert_eq!(req.wait().map(|r| r.0), Some(STATUS_CANCELLED));
        b.unlock();
        req.free();
        b.free();
        s.finish();
    }
}

mod irp_freed_in_flight {
    use super::*;

    /// `IoFreeIrp` while the provider holds the send (closing the socket then drops
    /// it without calling the completion routine).
    #[test]
    fn caught() {
        let s = session();
        let conn = Conn::open();
        let b = Buf::nonpaged(&pattern(10, 1));
        let mut req = Req::new();
        park_send(&s, &conn, &mut req, &mut b.wsk_buf(0, 10));
        req.free();
        assert_rules(&s, &[Rule::IrpFreedInFlight]);
        conn.close();
        b.free();
        s.finish_expecting(Rule::IrpFreedInFlight);
    }

    /// Free only after the completion routine ran.
    #[test]
    fn clean() {
        let s = session();
        let conn = Conn::open();
        let b = Buf::nonpaged(&pattern(10, 1));
        let mut req = Req::new();
        park_send(&s, &conn, &mut req, &mut b.wsk_buf(0, 10));
        conn.close();
        assert_eq!(req.wait().map(|r| r.0), Some(STATUS_CANCELLED));
        req.free();
        b.free();
        s.finish();
    }
}

mod irp_reused_in_flight {
    use super::*;

    /// `IoReuseIrp` while the provider holds the send.
    #[test]
    fn caught() {
        let s = session();
        let conn = Conn::open();
        let b = Buf::nonpaged(&pattern(10, 1));
        let mut req = Req::new();
        park_send(&s, &conn, &mut req, &mut b.wsk_buf(0, 10));
        // SAFETY: deliberately an in-flight IRP: the model refuses without touching it.
        unsafe { wsksend_ffi::IoReuseIrp(req.irp, STATUS_SUCCESS) };
        assert_rules(&s, &[Rule::IrpReusedInFlight]);
        conn.close();
        assert_eq!(req.wait().map(|r| r.0), Some(STATUS_CANCELLED));
        req.free();
        b.free();
        s.finish_expecting(Rule::IrpReusedInFlight);
    }

    /// The in-flight IRP passed to `WskSend` a second time.
    #[test]
    fn caught_resubmitted() {
        let s = session();
        let conn = Conn::open();
        let b = Buf::nonpaged(&pattern(10, 1));
        let mut req = Req::new();
        park_send(&s, &conn, &mut req, &mut b.wsk_buf(0, 10));
        let r = wsk_send(conn.socket, &mut b.wsk_buf(0, 10), 0, req.irp);
        assert_eq!(r, STATUS_INVALID_PARAMETER);
        assert_rules(&s, &[Rule::IrpReusedInFlight]);
        conn.close();
        assert_eq!(req.wait().map(|r| r.0), Some(STATUS_CANCELLED));
        req.free();
        b.free();
        s.finish_expecting(Rule::IrpReusedInFlight);
    }

    /// Reuse after completion, then send again with the same IRP.
    #[test]
    fn clean() {
        let s = session();
        let conn = Conn::open();
        let data = pattern(10, 1);
        let b = Buf::nonpaged(&data);
        let mut req = Req::new();
        for _ in 0..2 {
            assert_eq!(
                conn.send(&mut req, &mut b.wsk_buf(0, 10), 0),
                STATUS_SUCCESS
            );
            assert_eq!(req.wait(), Some((STATUS_SUCCESS, 10)));
        }
        conn.expect_received(&[&data[..], &data[..]].concat());
        req.free();
        conn.close();
        b.free();
        s.finish();
    }
}

mod completion_routine_return {
    use super::*;

    /// The completion routine of a driver-allocated IRP returns `STATUS_SUCCESS`.
    #[test]
    fn caught() {
        let s = session();
        let conn = Conn::open();
        let b = Buf::nonpaged(&pattern(10, 1));
        let mut req = Req::new();
        let irp = req.arm_with(Some(give_back));
        assert_eq!(
            wsk_send(conn.socket, &mut b.wsk_buf(0, 10), 0, irp),
            STATUS_SUCCESS
        );
        assert_eq!(req.wait(), Some((STATUS_SUCCESS, 10)));
        assert_rules(&s, &[Rule::CompletionRoutineReturn]);
        // The model never frees the IRP itself: it is still ours to free.
        req.free();
        conn.close();
        b.free();
        s.finish_expecting(Rule::CompletionRoutineReturn);
    }

    /// No completion routine set at all (only `IoReuseIrp`).
    #[test]
    fn caught_no_routine() {
        let s = session();
        let conn = Conn::open();
        let b = Buf::nonpaged(&pattern(10, 1));
        let req = Req::new();
        // SAFETY: the IRP is ours and not in flight.
        unsafe { wsksend_ffi::IoReuseIrp(req.irp, STATUS_UNSUCCESSFUL) };
        assert_eq!(
            wsk_send(conn.socket, &mut b.wsk_buf(0, 10), 0, req.irp),
            STATUS_SUCCESS
        );
        assert_rules(&s, &[Rule::CompletionRoutineReturn]);
        req.free();
        conn.close();
        b.free();
        s.finish_expecting(Rule::CompletionRoutineReturn);
    }

    /// `STATUS_MORE_PROCESSING_REQUIRED` on success and on error.
    #[test]
    fn clean() {
        let s = session();
        let conn = Conn::open();
        let b = Buf::nonpaged(&pattern(10, 1));
        let mut req = Req::new();
        assert_eq!(
            conn.send(&mut req, &mut b.wsk_buf(0, 10), 0),
            STATUS_SUCCESS
        );
        assert_eq!(req.wait(), Some((STATUS_SUCCESS, 10)));
        s.inject(Op::Send, Fault::Fail(STATUS_UNSUCCESSFUL));
        assert_eq!(
            conn.send(&mut req, &mut b.wsk_buf(0, 10), 0),
            STATUS_UNSUCCESSFUL
        );
        assert_eq!(req.wait(), Some((STATUS_UNSUCCESSFUL, 0)));
        req.free();
        conn.close();
        b.free();
        s.finish();
    }
}

mod wait_at_dispatch {
    use super::*;

    /// A 1 µs wait at `DISPATCH_LEVEL` (on a signalled event: it returns at once).
    #[test]
    fn caught() {
        let s = session();
        let mut ev = event(true);
        assert_eq!(s.at_dispatch(|| wait(&mut ev, Some(-10))), STATUS_SUCCESS);
        assert_rules(&s, &[Rule::WaitAtDispatch]);
        s.finish_expecting(Rule::WaitAtDispatch);
    }

    /// An absolute deadline long past (100 ns after 1601): it waits no time, but only
    /// a zero timeout is allowed at `DISPATCH_LEVEL`.
    #[test]
    fn caught_past_deadline() {
        let s = session();
        let mut ev = event(false);
        assert_eq!(s.at_dispatch(|| wait(&mut ev, Some(1))), STATUS_TIMEOUT);
        assert_rules(&s, &[Rule::WaitAtDispatch]);
        s.finish_expecting(Rule::WaitAtDispatch);
    }

    /// A zero timeout (a poll) is allowed at `DISPATCH_LEVEL`; a timed wait at
    /// `PASSIVE_LEVEL`.
    #[test]
    fn clean() {
        let s = session();
        let mut ev = event(false);
        assert_eq!(s.at_dispatch(|| wait(&mut ev, Some(0))), STATUS_TIMEOUT);
        assert_eq!(wait(&mut ev, Some(-10)), STATUS_TIMEOUT);
        s.finish();
    }
}

mod flag_dropped {
    use super::*;

    /// A send without the `WSK_FLAG_NODELAY` the session requires.
    #[test]
    fn caught() {
        let s = session();
        s.require_send_flags(WSK_FLAG_NODELAY);
        let conn = Conn::open();
        let b = Buf::nonpaged(&pattern(10, 1));
        let mut req = Req::new();
        assert_eq!(
            conn.send(&mut req, &mut b.wsk_buf(0, 10), 0),
            STATUS_SUCCESS
        );
        assert_rules(&s, &[Rule::FlagDropped]);
        req.free();
        conn.close();
        b.free();
        s.finish_expecting(Rule::FlagDropped);
    }

    #[test]
    fn clean() {
        let s = session();
        s.require_send_flags(WSK_FLAG_NODELAY);
        let conn = Conn::open();
        let data = pattern(10, 1);
        let b = Buf::nonpaged(&data);
        let mut req = Req::new();
        let r = conn.send(&mut req, &mut b.wsk_buf(0, 10), WSK_FLAG_NODELAY);
        assert_eq!(r, STATUS_SUCCESS);
        conn.expect_received(&data);
        assert_eq!(s.sends()[0].flags, WSK_FLAG_NODELAY);
        req.free();
        conn.close();
        b.free();
        s.finish();
    }
}

mod no_stack_location {
    use super::*;

    /// `IoAllocateIrp(0, ..)`: nothing left for the provider.
    #[test]
    fn caught() {
        let s = session();
        let conn = Conn::open();
        let b = Buf::nonpaged(&pattern(10, 1));
        // SAFETY: plain allocation.
        let irp = unsafe { wsksend_ffi::IoAllocateIrp(0, FALSE) };
        let r = wsk_send(conn.socket, &mut b.wsk_buf(0, 10), 0, irp);
        assert_eq!(r, STATUS_INVALID_PARAMETER);
        assert_rules(&s, &[Rule::NoStackLocation]);
        // SAFETY: the provider refused the IRP: it is ours.
        unsafe { wsksend_ffi::IoFreeIrp(irp) };
        conn.close();
        b.free();
        s.finish_expecting(Rule::NoStackLocation);
    }

    /// `IoAllocateIrp(1, ..)`: one location, for the provider.
    #[test]
    fn clean() {
        let s = session();
        let conn = Conn::open();
        let b = Buf::nonpaged(&pattern(10, 1));
        let mut req = Req::new();
        assert_eq!(
            conn.send(&mut req, &mut b.wsk_buf(0, 10), 0),
            STATUS_SUCCESS
        );
        assert_eq!(req.wait(), Some((STATUS_SUCCESS, 10)));
        req.free();
        conn.close();
        b.free();
        s.finish();
    }
}

mod partial_outside_source {
    use super::*;

    /// `IoBuildPartialMdl` with `len` bytes at `at` inside a 4,096-byte source.
    fn partial(at: usize, len: u32) -> (Buf, *mut MDL) {
        let src = Buf::nonpaged(&[7; 4096]);
        let target = alloc_mdl(src.mem, 4096);
        let va = src.mem.wrapping_add(at).cast::<c_void>();
        // SAFETY: both MDLs are live; the range is checked by the model.
        unsafe { wsksend_ffi::IoBuildPartialMdl(src.mdl, target, va, len) };
        (src, target)
    }

    /// 4,000 + 200 ends 104 bytes past the source.
    #[test]
    fn caught() {
        let s = session();
        let (src, target) = partial(4000, 200);
        assert_rules(&s, &[Rule::PartialOutsideSource]);
        // SAFETY: the target came from IoAllocateMdl.
        unsafe { wsksend_ffi::IoFreeMdl(target) };
        src.free();
        s.finish_expecting(Rule::PartialOutsideSource);
    }

    #[test]
    fn clean() {
        let s = session();
        let (src, target) = partial(3896, 200);
        // SAFETY: the target is live.
        let t = unsafe { &*target };
        assert_eq!(t.ByteCount, 200);
        assert_eq!(
            t.StartVa as usize + t.ByteOffset as usize,
            src.mem as usize + 3896
        );
        // SAFETY: the target came from IoAllocateMdl.
        unsafe { wsksend_ffi::IoFreeMdl(target) };
        src.free();
        s.finish();
    }
}

mod bad_spin_lock_release {
    use super::*;

    fn acquire(lock: &mut KSPIN_LOCK) -> u8 {
        // SAFETY: `lock` is a live, aligned spin lock word.
        unsafe { wsksend_ffi::KeAcquireSpinLockRaiseToDpc(lock) }
    }

    fn release(lock: &mut KSPIN_LOCK, irql: u8) {
        // SAFETY: `lock` is a live, aligned spin lock word.
        unsafe { wsksend_ffi::KeReleaseSpinLock(lock, irql) };
    }

    /// Releasing a lock nobody holds.
    #[test]
    fn caught() {
        let s = session();
        let mut lock: KSPIN_LOCK = 0;
        release(&mut lock, 0);
        assert_rules(&s, &[Rule::BadSpinLockRelease]);
        s.finish_expecting(Rule::BadSpinLockRelease);
    }

    /// Acquiring again a lock the thread holds (a deadlock on Windows).
    #[test]
    fn caught_reacquired() {
        let s = session();
        let mut lock: KSPIN_LOCK = 0;
        let irql = acquire(&mut lock);
        let _ = acquire(&mut lock);
        assert_rules(&s, &[Rule::BadSpinLockRelease]);
        release(&mut lock, irql);
        s.finish_expecting(Rule::BadSpinLockRelease);
    }

    /// Releasing a lock another thread holds.
    #[test]
    fn caught_by_another_thread() {
        let s = session();
        let lock = Box::leak(Box::new(0usize));
        let irql = acquire(lock);
        let addr = &raw mut *lock as usize;
        let other = std::thread::spawn(move || {
            // SAFETY: the lock word is leaked, so it lives for the thread.
            unsafe { wsksend_ffi::KeReleaseSpinLock(addr as *mut KSPIN_LOCK, 0) };
        });
        assert!(other.join().is_ok());
        assert_rules(&s, &[Rule::BadSpinLockRelease]);
        release(lock, irql);
        s.finish_expecting(Rule::BadSpinLockRelease);
    }

    #[test]
    fn clean() {
        let s = session();
        let mut lock: KSPIN_LOCK = 0;
        let irql = acquire(&mut lock);
        release(&mut lock, irql);
        let irql = acquire(&mut lock);
        release(&mut lock, irql);
        assert_eq!(irql, wsksend_ffi::PASSIVE_LEVEL);
        s.finish();
    }
}

mod pool_tag_mismatch {
    use super::*;

    fn alloc_free(free_tag: u32) {
        // SAFETY: plain allocation.
        let p = unsafe { wsksend_ffi::ExAllocatePoolWithTag(NonPagedPoolNx, 32, TAG) };
        assert!(!p.is_null());
        // SAFETY: `p` came from ExAllocatePoolWithTag (the tag is checked).
        unsafe { wsksend_ffi::ExFreePoolWithTag(p, free_tag) };
    }

    /// Freed with a tag other than the allocation's.
    #[test]
    fn caught() {
        let s = session();
        alloc_free(u32::from_le_bytes(*b"Oops"));
        assert_rules(&s, &[Rule::PoolTagMismatch]);
        s.finish_expecting(Rule::PoolTagMismatch);
    }

    #[test]
    fn clean() {
        let s = session();
        alloc_free(TAG);
        s.finish();
    }
}

mod deregister_with_open_sockets {
    use super::*;

    /// `WskDeregister` while a socket is open (closed afterwards, so nothing leaks).
    #[test]
    fn caught() {
        let s = session();
        let client = Client::ready();
        let mut req = Req::new();
        let socket = client.socket(&mut req);
        client.release();
        assert_rules(&s, &[Rule::DeregisterWithOpenSockets]);
        close_socket(&mut req, socket);
        req.free();
        s.finish_expecting(Rule::DeregisterWithOpenSockets);
    }

    /// `WskDeregister` while the provider NPI is still captured (released afterwards).
    #[test]
    fn caught_npi_captured() {
        let s = session();
        let client = Client::ready();
        client.deregister();
        assert_rules(&s, &[Rule::DeregisterWithOpenSockets]);
        client.release_npi();
        s.finish_expecting(Rule::DeregisterWithOpenSockets);
    }

    /// Close, release, deregister.
    #[test]
    fn clean() {
        let s = session();
        let client = Client::ready();
        let mut req = Req::new();
        let socket = client.socket(&mut req);
        close_socket(&mut req, socket);
        req.free();
        client.release();
        s.finish();
    }
}

mod unknown_object {
    use super::*;

    /// `IoFreeIrp` on memory that is not an IRP from `IoAllocateIrp`.
    #[test]
    fn caught() {
        let s = session();
        let mut fake = [0u64; 32];
        // SAFETY: deliberately not an IRP: the model looks it up before touching it.
        unsafe { wsksend_ffi::IoFreeIrp(fake.as_mut_ptr().cast()) };
        assert_rules(&s, &[Rule::UnknownObject]);
        s.finish_expecting(Rule::UnknownObject);
    }

    /// `KeSetEvent` on an event never initialised.
    #[test]
    fn caught_event() {
        let s = session();
        let mut ev = KEVENT::zeroed();
        // SAFETY: deliberately uninitialised: the model only looks the address up.
        unsafe { wsksend_ffi::KeSetEvent(&raw mut ev, 0, FALSE) };
        assert_rules(&s, &[Rule::UnknownObject]);
        s.finish_expecting(Rule::UnknownObject);
    }
}

mod buffer_freed_in_flight {
    use super::*;

    /// The pool block under a parked send is freed (its MDL only after completion).
    #[test]
    fn caught() {
        let s = session();
        let conn = Conn::open();
        let b = Buf::nonpaged(&pattern(10, 1));
        let mut req = Req::new();
        park_send(&s, &conn, &mut req, &mut b.wsk_buf(0, 10));
        b.free_pool();
        assert_rules(&s, &[Rule::BufferFreedInFlight]);
        conn.close();
        assert_eq!(req.wait().map(|r| r.0), Some(STATUS_CANCELLED));
        req.free();
        b.free_mdl();
        s.finish_expecting(Rule::BufferFreedInFlight);
    }

    #[test]
    fn clean() {
        let s = session();
        let conn = Conn::open();
        let b = Buf::nonpaged(&pattern(10, 1));
        let mut req = Req::new();
        park_send(&s, &conn, &mut req, &mut b.wsk_buf(0, 10));
        conn.close();
        assert_eq!(req.wait().map(|r| r.0), Some(STATUS_CANCELLED));
        b.free_pool();
        req.free();
        b.free_mdl();
        s.finish();
    }
}

mod locked_mdl_freed {
    use super::*;

    /// `IoFreeMdl` of a probed MDL without `MmUnlockPages`.
    #[test]
    fn caught() {
        let s = session();
        Buf::probed(&[3; 32]).free();
        assert_rules(&s, &[Rule::LockedMdlFreed]);
        s.finish_expecting(Rule::LockedMdlFreed);
    }

    #[test]
    fn clean() {
        let s = session();
        let b = Buf::probed(&[3; 32]);
        b.unlock();
        b.free();
        s.finish();
    }
}

mod irql_too_high {
    use super::*;

    /// `WskCaptureProviderNPI` with a wait at `DISPATCH_LEVEL`.
    #[test]
    fn caught() {
        let s = session();
        let mut client = Client::register();
        assert_eq!(s.at_dispatch(|| client.capture(1000)), STATUS_SUCCESS);
        assert_rules(&s, &[Rule::IrqlTooHigh]);
        client.release();
        s.finish_expecting(Rule::IrqlTooHigh);
    }

    /// `WSK_NO_WAIT` is allowed at `DISPATCH_LEVEL`.
    #[test]
    fn clean() {
        let s = session();
        let mut client = Client::register();
        assert_eq!(
            s.at_dispatch(|| client.capture(WSK_NO_WAIT)),
            STATUS_SUCCESS
        );
        client.release();
        s.finish();
    }
}

mod misuse {
    use super::*;

    /// `MmProbeAndLockPages` on an MDL already locked.
    #[test]
    fn caught_locked_twice() {
        let s = session();
        let b = Buf::probed(&[4; 32]);
        // SAFETY: the MDL is live (its state is checked by the model).
        unsafe { wsksend_ffi::MmProbeAndLockPages(b.mdl, KernelMode, IoReadAccess) };
        assert_rules(&s, &[Rule::Misuse]);
        b.unlock();
        b.free();
        s.finish_expecting(Rule::Misuse);
    }

    /// A completed IRP passed to the provider again without `IoReuseIrp`.
    #[test]
    fn caught_resubmitted_without_reuse() {
        let s = session();
        let conn = Conn::open();
        let b = Buf::nonpaged(&pattern(10, 1));
        let mut req = Req::new();
        assert_eq!(
            conn.send(&mut req, &mut b.wsk_buf(0, 10), 0),
            STATUS_SUCCESS
        );
        assert!(req.wait().is_some());
        req.set_routine(Some(keep));
        assert_eq!(
            wsk_send(conn.socket, &mut b.wsk_buf(0, 10), 0, req.irp),
            STATUS_SUCCESS
        );
        assert!(req.wait().is_some());
        assert_rules(&s, &[Rule::Misuse]);
        req.free();
        conn.close();
        b.free();
        s.finish_expecting(Rule::Misuse);
    }

    #[test]
    fn clean() {
        let s = session();
        let b = Buf::probed(&[4; 32]);
        b.unlock();
        // SAFETY: the MDL is live and unlocked again.
        unsafe { wsksend_ffi::MmProbeAndLockPages(b.mdl, KernelMode, IoReadAccess) };
        b.unlock();
        b.free();
        s.finish();
    }
}

mod hang {
    use super::*;

    /// An infinite wait on an event nobody sets.
    #[test]
    fn caught() {
        let s = session();
        s.set_hang_limit(Duration::from_millis(50));
        let mut ev = event(false);
        assert_eq!(wait(&mut ev, None), STATUS_TIMEOUT);
        assert_rules(&s, &[Rule::Hang]);
        s.finish_expecting(Rule::Hang);
    }

    /// An infinite wait on an event another thread sets.
    #[test]
    fn clean() {
        let s = session();
        s.set_hang_limit(Duration::from_secs(5));
        let ev = Box::leak(event(false));
        let addr = &raw mut *ev as usize;
        let setter = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(20));
            // SAFETY: the event is initialised and leaked.
            unsafe { wsksend_ffi::KeSetEvent(addr as *mut KEVENT, 0, FALSE) };
        });
        assert_eq!(wait(ev, None), STATUS_SUCCESS);
        assert!(setter.join().is_ok());
        s.finish();
    }
}

mod driver_panic {
    use super::*;
    use wsksend_kernel_model::{LowResources, lowres};

    /// Driver code that allocates pool, the way the engine does.
    fn allocate_or_panic() -> *mut c_void {
        // SAFETY: plain allocation.
        let p = unsafe { wsksend_ffi::ExAllocatePoolWithTag(NonPagedPoolNx, 64, TAG) };
        assert!(!p.is_null(), "pool allocation failed");
        p
    }

    /// Driver code that answers a failed allocation with a status.
    fn allocate_or_status() -> Result<*mut c_void, NTSTATUS> {
        // SAFETY: plain allocation.
        let p = unsafe { wsksend_ffi::ExAllocatePoolWithTag(NonPagedPoolNx, 64, TAG) };
        if p.is_null() {
            Err(wsksend_ffi::status::STATUS_INSUFFICIENT_RESOURCES)
        } else {
            Ok(p)
        }
    }

    /// An allocation failure (low resources, every pool allocation fails) answered with
    /// a panic in driver code: a bug check on Windows.
    #[test]
    fn caught() {
        let s = session();
        s.low_resources(LowResources::every_nth(1));
        let unwound = std::panic::catch_unwind(|| lowres::driver(allocate_or_panic));
        assert!(unwound.is_err());
        assert_rules(&s, &[Rule::DriverPanic]);
        assert_eq!(s.low_resources_stats().failed_pool, 1);
        s.finish_expecting(Rule::DriverPanic);
    }

    /// The same failure answered with a status; once resources are back, it works.
    #[test]
    fn clean() {
        let s = session();
        s.low_resources(LowResources::every_nth(1));
        assert_eq!(
            lowres::driver(allocate_or_status),
            Err(wsksend_ffi::status::STATUS_INSUFFICIENT_RESOURCES)
        );
        s.low_resources_off();
        let p = lowres::driver(allocate_or_status).expect("allocation without low resources");
        // SAFETY: `p` came from ExAllocatePoolWithTag with `TAG`.
        unsafe { wsksend_ffi::ExFreePoolWithTag(p, TAG) };
        assert_eq!(s.low_resources_stats().failed_pool, 1);
        s.finish();
    }
}
