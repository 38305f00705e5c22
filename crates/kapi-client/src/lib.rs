//! `wsksclient.sys`: a minimal second driver that calls WskSend's exported kernel API
//! (`WsksConnect`, `WsksSendBuffers`, `WsksSendMdl`, `WsksSendSync`, `WsksClose`), the way
//! another vendor's driver would. It imports them from `wsksend.sys` by name, so loading
//! it at all proves the exports resolve; the harness drives it through one IOCTL.
//!
//! `IOCTL_WSKSCLIENT_RUN` (buffered): input = a [`ConnectRequest`] followed by the bytes to
//! send; the driver connects to that address, sends the first third with
//! `WsksSendBuffers`, the second with `WsksSendMdl` (both asynchronous, waited for) and
//! the rest with `WsksSendSync`, closes, and completes with the bytes sent.
#![no_std]

use core::ffi::c_void;
use core::ptr;

use wsksend_ffi::inline::IoGetCurrentIrpStackLocation;
use wsksend_ffi::status::{
    STATUS_BUFFER_TOO_SMALL, STATUS_INSUFFICIENT_RESOURCES, STATUS_INVALID_DEVICE_REQUEST,
    STATUS_PENDING, STATUS_SUCCESS,
};
use wsksend_ffi::{
    AF_INET, AF_INET6, DEVICE_OBJECT, DRIVER_OBJECT, ExAllocatePoolWithTag, ExFreePoolWithTag,
    Executive, FALSE, IO_NO_INCREMENT, IRP, IRP_MJ_CLOSE, IRP_MJ_CREATE, IRP_MJ_DEVICE_CONTROL,
    IoAllocateMdl, IoFreeMdl, KEVENT, KeInitializeEvent, KeSetEvent, KeWaitForSingleObject,
    KernelMode, MDL, MDL_PAGES_LOCKED, MDL_SOURCE_IS_NONPAGED_POOL, MmBuildMdlForNonPagedPool,
    NT_SUCCESS, NTSTATUS, NonPagedPoolNx, NotificationEvent, SOCKADDR, SOCKADDR_IN, SOCKADDR_IN6,
    UNICODE_STRING, ascii_utf16,
};
use wsksend_protocol::{
    ConnectRequest, FILE_ANY_ACCESS, FILE_DEVICE_WSKSEND, METHOD_BUFFERED, ctl_code,
};
use wsksend_wdm_runtime::device::{self, NamedDevice};
use wsksend_wdm_runtime::log;

/// The one IOCTL of this test driver.
pub const IOCTL_WSKSCLIENT_RUN: u32 =
    ctl_code(FILE_DEVICE_WSKSEND, 0x900, METHOD_BUFFERED, FILE_ANY_ACCESS);

const DEVICE_NAME: &str = "\\Device\\WsksClient";
const LINK_NAME: &str = "\\DosDevices\\WsksClient";
static DEVICE_NAME_W: [u16; DEVICE_NAME.len()] = ascii_utf16::<{ DEVICE_NAME.len() }>(DEVICE_NAME);
static LINK_NAME_W: [u16; LINK_NAME.len()] = ascii_utf16::<{ LINK_NAME.len() }>(LINK_NAME);
static DEVICE: NamedDevice = NamedDevice::new(&DEVICE_NAME_W, &LINK_NAME_W);

const TAG: u32 = u32::from_le_bytes(*b"WskC");

/// `WSKS_BUFFER`.
#[repr(C)]
struct WsksBuffer {
    buffer: *const c_void,
    length: u32,
}

type SendComplete = unsafe extern "system" fn(*mut c_void, NTSTATUS, usize);

#[cfg_attr(
    target_os = "windows",
    link(name = "wsksend.sys", kind = "raw-dylib", modifiers = "+verbatim")
)]
unsafe extern "system" {
    fn WsksConnect(
        remote: *const SOCKADDR,
        remote_length: u32,
        flags: u32,
        timeout_ms: u32,
        connection: *mut *mut c_void,
    ) -> NTSTATUS;
    fn WsksSendBuffers(
        connection: *mut c_void,
        buffers: *const WsksBuffer,
        count: u32,
        flags: u32,
        complete: Option<SendComplete>,
        context: *mut c_void,
    ) -> NTSTATUS;
    fn WsksSendMdl(
        connection: *mut c_void,
        mdl: *mut MDL,
        offset: u32,
        length: usize,
        flags: u32,
        complete: Option<SendComplete>,
        context: *mut c_void,
    ) -> NTSTATUS;
    fn WsksSendSync(
        connection: *mut c_void,
        buffers: *const WsksBuffer,
        count: u32,
        flags: u32,
        timeout_ms: u32,
        bytes_sent: *mut usize,
    ) -> NTSTATUS;
    fn WsksClose(connection: *mut c_void) -> NTSTATUS;
}

/// `DriverEntry`.
///
/// # Safety
/// Called once by the I/O manager with a valid driver object.
#[unsafe(export_name = "DriverEntry")]
pub unsafe extern "system" fn driver_entry(
    driver: *mut DRIVER_OBJECT,
    _registry_path: *mut UNICODE_STRING,
) -> NTSTATUS {
    // SAFETY: called from DriverEntry with the live driver object.
    if let Err(status) = unsafe { DEVICE.create(driver, FILE_DEVICE_WSKSEND) } {
        return status;
    }
    // SAFETY: DriverEntry owns the driver object until it returns.
    let driver = unsafe { &mut *driver };
    driver.MajorFunction[IRP_MJ_CREATE] = Some(dispatch_create_close);
    driver.MajorFunction[IRP_MJ_CLOSE] = Some(dispatch_create_close);
    driver.MajorFunction[IRP_MJ_DEVICE_CONTROL] = Some(dispatch_device_control);
    driver.DriverUnload = Some(driver_unload);
    log!("WsksClient: loaded\n");
    STATUS_SUCCESS
}

unsafe extern "system" fn driver_unload(_driver: *mut DRIVER_OBJECT) {
    // SAFETY: the driver is unloading: no request can arrive.
    unsafe { DEVICE.delete() };
}

/// # Safety
/// `irp` is live and ours to complete once.
unsafe fn complete(irp: *mut IRP, status: NTSTATUS, information: usize) -> NTSTATUS {
    // SAFETY: forwarded from the caller's contract.
    unsafe { device::complete(irp, status, information, IO_NO_INCREMENT) }
}

unsafe extern "system" fn dispatch_create_close(
    _device: *mut DEVICE_OBJECT,
    irp: *mut IRP,
) -> NTSTATUS {
    // SAFETY: a dispatched IRP.
    unsafe { complete(irp, STATUS_SUCCESS, 0) }
}

unsafe extern "system" fn dispatch_device_control(
    _device: *mut DEVICE_OBJECT,
    irp: *mut IRP,
) -> NTSTATUS {
    // SAFETY: a dispatched IRP has a current stack location.
    let stack = unsafe { IoGetCurrentIrpStackLocation(irp) };
    // SAFETY: as above.
    let params = unsafe { &*stack }.device_io_control();
    if params.IoControlCode != IOCTL_WSKSCLIENT_RUN {
        // SAFETY: ours to complete.
        return unsafe { complete(irp, STATUS_INVALID_DEVICE_REQUEST, 0) };
    }
    let len = params.InputBufferLength as usize;
    // SAFETY: a live IRP.
    let system = unsafe { (*irp).SystemBuffer }.cast::<u8>();
    if system.is_null() || len < ConnectRequest::WIRE_SIZE + 3 {
        // SAFETY: ours to complete.
        return unsafe { complete(irp, STATUS_BUFFER_TOO_SMALL, 0) };
    }
    // SAFETY: the I/O manager's system buffer holds `len` input bytes.
    let input = unsafe { core::slice::from_raw_parts(system, len) };
    let (status, sent) = match ConnectRequest::parse(&input[..ConnectRequest::WIRE_SIZE]) {
        Ok(req) => run(&req, &input[ConnectRequest::WIRE_SIZE..]),
        Err(_) => (wsksend_ffi::status::STATUS_INVALID_PARAMETER, 0),
    };
    log!(
        "WsksClient: run status %08x sent %u\n",
        status.cast_unsigned(),
        u32::try_from(sent).unwrap_or(u32::MAX)
    );
    // SAFETY: ours to complete.
    unsafe { complete(irp, status, sent) }
}

/// A nonpaged copy of the payload, freed on drop.
struct PoolBuf {
    ptr: *mut u8,
    len: usize,
}

impl PoolBuf {
    fn copy_of(data: &[u8]) -> Option<Self> {
        // SAFETY: plain allocation.
        let ptr = unsafe { ExAllocatePoolWithTag(NonPagedPoolNx, data.len(), TAG) }.cast::<u8>();
        if ptr.is_null() {
            return None;
        }
        // SAFETY: fresh block of `data.len()` bytes, not overlapping `data`.
        unsafe { ptr.copy_from_nonoverlapping(data.as_ptr(), data.len()) };
        Some(Self {
            ptr,
            len: data.len(),
        })
    }
}

impl Drop for PoolBuf {
    fn drop(&mut self) {
        // SAFETY: allocated with TAG in `copy_of`.
        unsafe { ExFreePoolWithTag(self.ptr.cast(), TAG) };
    }
}

/// Completion state of an asynchronous send: an event and the result.
#[repr(C)]
struct Wait {
    event: KEVENT,
    status: NTSTATUS,
    bytes: usize,
}

unsafe extern "system" fn on_complete(context: *mut c_void, status: NTSTATUS, bytes: usize) {
    // SAFETY: `context` is the caller's `Wait`, alive until it has waited for this.
    let wait = unsafe { &mut *context.cast::<Wait>() };
    wait.status = status;
    wait.bytes = bytes;
    // SAFETY: initialised event.
    unsafe { KeSetEvent(&raw mut wait.event, 0, FALSE) };
}

/// Waits for an accepted asynchronous send (bounded: 30 s).
fn wait_for(wait: &mut Wait, accepted: NTSTATUS) -> (NTSTATUS, usize) {
    if accepted != STATUS_PENDING {
        return (accepted, 0);
    }
    let timeout: i64 = -300_000_000;
    // SAFETY: initialised event, waited at PASSIVE_LEVEL.
    let st = unsafe {
        KeWaitForSingleObject(
            (&raw mut wait.event).cast(),
            Executive,
            KernelMode,
            FALSE,
            &timeout,
        )
    };
    if st == STATUS_SUCCESS {
        (wait.status, wait.bytes)
    } else {
        (wsksend_ffi::status::STATUS_IO_TIMEOUT, 0)
    }
}

fn new_wait() -> Wait {
    let mut wait = Wait {
        event: KEVENT::zeroed(),
        status: 0,
        bytes: 0,
    };
    // SAFETY: initialising our own event before use.
    unsafe { KeInitializeEvent(&raw mut wait.event, NotificationEvent, FALSE) };
    wait
}

fn run(req: &ConnectRequest, data: &[u8]) -> (NTSTATUS, usize) {
    let Some(buf) = PoolBuf::copy_of(data) else {
        return (STATUS_INSUFFICIENT_RESOURCES, 0);
    };
    let (v4, v6);
    let (addr, addr_len): (*const SOCKADDR, u32) = match req.remote {
        core::net::SocketAddr::V4(a) => {
            v4 = SOCKADDR_IN {
                sin_family: AF_INET,
                sin_port: a.port().to_be(),
                sin_addr: a.ip().octets(),
                sin_zero: [0; 8],
            };
            (ptr::from_ref(&v4).cast(), 16)
        }
        core::net::SocketAddr::V6(a) => {
            v6 = SOCKADDR_IN6 {
                sin6_family: AF_INET6,
                sin6_port: a.port().to_be(),
                sin6_flowinfo: 0,
                sin6_addr: a.ip().octets(),
                sin6_scope_id: a.scope_id(),
            };
            (ptr::from_ref(&v6).cast(), 28)
        }
    };
    let mut conn = ptr::null_mut();
    // SAFETY: valid address and out-pointer.
    let status = unsafe { WsksConnect(addr, addr_len, req.flags, 10_000, &raw mut conn) };
    if !NT_SUCCESS(status) {
        return (status, 0);
    }
    let third = buf.len / 3;
    let mut total = 0;
    let mut result = STATUS_SUCCESS;

    // 1. WsksSendBuffers, asynchronous.
    let mut wait = new_wait();
    let first = WsksBuffer {
        buffer: buf.ptr.cast(),
        length: u32::try_from(third).unwrap_or(0),
    };
    // SAFETY: live connection; buffer and `wait` outlive the completion (waited for).
    let accepted = unsafe {
        WsksSendBuffers(
            conn,
            &raw const first,
            1,
            0,
            Some(on_complete),
            (&raw mut wait).cast(),
        )
    };
    let (st, n) = wait_for(&mut wait, accepted);
    total += n;
    if !NT_SUCCESS(st) {
        result = st;
    }

    // 2. WsksSendMdl over the second third, asynchronous.
    if NT_SUCCESS(result) {
        let second_len = u32::try_from(third).unwrap_or(0);
        // SAFETY: describing our nonpaged buffer.
        let mdl = unsafe {
            IoAllocateMdl(
                buf.ptr.wrapping_add(third).cast(),
                second_len,
                FALSE,
                FALSE,
                ptr::null_mut(),
            )
        };
        if mdl.is_null() {
            result = STATUS_INSUFFICIENT_RESOURCES;
        } else {
            // SAFETY: the MDL describes nonpaged pool.
            unsafe { MmBuildMdlForNonPagedPool(mdl) };
            // Wine 8's MmBuildMdlForNonPagedPool is a stub that sets no flag; WskSend
            // (like tcpip) refuses an MDL that is neither locked nor nonpaged, so say
            // what Windows' routine would have said: the memory is nonpaged pool.
            // SAFETY: our fresh MDL, not yet shared with anyone.
            let m = unsafe { &mut *mdl };
            if m.MdlFlags & (MDL_SOURCE_IS_NONPAGED_POOL | MDL_PAGES_LOCKED) == 0 {
                m.MdlFlags |= MDL_SOURCE_IS_NONPAGED_POOL;
            }
            let mut wait = new_wait();
            // SAFETY: live connection; the MDL and `wait` outlive the completion.
            let accepted = unsafe {
                WsksSendMdl(
                    conn,
                    mdl,
                    0,
                    third,
                    0,
                    Some(on_complete),
                    (&raw mut wait).cast(),
                )
            };
            let (st, n) = wait_for(&mut wait, accepted);
            total += n;
            if !NT_SUCCESS(st) {
                result = st;
            }
            // SAFETY: the send has completed (or never started); the MDL is ours.
            unsafe { IoFreeMdl(mdl) };
        }
    }

    // 3. WsksSendSync for the rest.
    if NT_SUCCESS(result) {
        let rest = WsksBuffer {
            buffer: buf.ptr.wrapping_add(2 * third).cast(),
            length: u32::try_from(buf.len - 2 * third).unwrap_or(0),
        };
        let mut sent = 0usize;
        // SAFETY: live connection; the buffer outlives the (blocking) call.
        let st = unsafe { WsksSendSync(conn, &raw const rest, 1, 0, 10_000, &raw mut sent) };
        total += sent;
        if !NT_SUCCESS(st) {
            result = st;
        }
    }
    // SAFETY: live connection, not used again.
    let closed = unsafe { WsksClose(conn) };
    if NT_SUCCESS(result) && !NT_SUCCESS(closed) {
        result = closed;
    }
    drop(buf);
    (result, total)
}
