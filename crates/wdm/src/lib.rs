//! WskSend's WDM front end: the driver image that Wine's kernel loader runs (ring 1).
//!
//! It does only what the driver model requires: create the device and its symbolic
//! link, route `IRP_MJ_*` requests to the shared [`Dispatcher`], complete them, and undo
//! it all in `DriverUnload`. The KMDF front end (`driver/`) does the same through WDF;
//! the two are meant to be read side by side.
#![no_std]

use wsksend_wdm_runtime::log;

use core::ptr;
use core::sync::atomic::{AtomicPtr, Ordering};

use wsksend_dispatch::{Carve, Config, Dispatcher, Disposition, FileId, Outcome, Request};
use wsksend_ffi::inline::IoGetCurrentIrpStackLocation;
use wsksend_ffi::status::{STATUS_INVALID_PARAMETER, STATUS_PENDING, STATUS_SUCCESS};
use wsksend_ffi::{
    DEVICE_OBJECT, DRIVER_OBJECT, FALSE, FILE_DEVICE_SECURE_OPEN, IO_NO_INCREMENT, IO_STATUS_BLOCK,
    IRP, IRP_MJ_CLEANUP, IRP_MJ_CLOSE, IRP_MJ_CREATE, IRP_MJ_DEVICE_CONTROL, IoCreateDevice,
    IoCreateSymbolicLink, IoDeleteDevice, IoDeleteSymbolicLink, IofCompleteRequest, NT_SUCCESS,
    NTSTATUS, UNICODE_STRING, ascii_utf16,
};
use wsksend_protocol as protocol;

static DEVICE_NAME: [u16; protocol::DEVICE_NAME.len()] =
    ascii_utf16::<{ protocol::DEVICE_NAME.len() }>(protocol::DEVICE_NAME);
static DOS_DEVICE_NAME: [u16; protocol::DOS_DEVICE_NAME.len()] =
    ascii_utf16::<{ protocol::DOS_DEVICE_NAME.len() }>(protocol::DOS_DEVICE_NAME);

/// The one device object; set by `DriverEntry`, read by `DriverUnload`.
pub(crate) static DEVICE: AtomicPtr<DEVICE_OBJECT> = AtomicPtr::new(ptr::null_mut());

/// Driver-wide dispatcher state shared by every request. Multi-segment sends carve
/// the direct buffer through its system address: Wine copies IOCTL buffers into the
/// driver host's heap and stubs `IoBuildPartialMdl` (the KMDF front end, for Windows,
/// uses partial MDLs).
static DISPATCHER: Dispatcher<IrpToken> = Dispatcher::new(Config {
    carve: Carve::SystemVa,
});

mod token;
use token::IrpToken;

/// A `UNICODE_STRING` over one of the static names above.
fn unicode(name: &'static [u16]) -> UNICODE_STRING {
    // CAST: the names are short constants, far below u16::MAX bytes.
    let bytes = (name.len() * 2) as u16;
    UNICODE_STRING {
        Length: bytes,
        MaximumLength: bytes,
        // The kernel only reads through this pointer.
        Buffer: name.as_ptr().cast_mut(),
    }
}

/// `DriverEntry`: creates the device and its symbolic link and installs the dispatch
/// routines. No WSK work happens here (DESIGN.md rule 7).
///
/// # Safety
/// Called once by the I/O manager with a valid driver object.
#[unsafe(export_name = "DriverEntry")]
pub unsafe extern "system" fn driver_entry(
    driver: *mut DRIVER_OBJECT,
    _registry_path: *mut UNICODE_STRING,
) -> NTSTATUS {
    log!(
        "WskSend: DriverEntry (protocol %u)\n",
        protocol::PROTOCOL_VERSION
    );
    let mut name = unicode(&DEVICE_NAME);
    let mut device = ptr::null_mut();
    // SAFETY: `driver` is the live driver object; `name` and `device` outlive the call.
    let status = unsafe {
        IoCreateDevice(
            driver,
            0,
            &raw mut name,
            protocol::FILE_DEVICE_WSKSEND,
            FILE_DEVICE_SECURE_OPEN,
            FALSE,
            &raw mut device,
        )
    };
    if !NT_SUCCESS(status) {
        log!(
            "WskSend: IoCreateDevice failed %08x\n",
            status.cast_unsigned()
        );
        return status;
    }
    let mut link = unicode(&DOS_DEVICE_NAME);
    // SAFETY: both strings are valid for the call.
    let status = unsafe { IoCreateSymbolicLink(&raw mut link, &raw mut name) };
    if !NT_SUCCESS(status) {
        log!(
            "WskSend: IoCreateSymbolicLink failed %08x\n",
            status.cast_unsigned()
        );
        // SAFETY: `device` was created above and nothing else references it yet.
        unsafe { IoDeleteDevice(device) };
        return status;
    }
    DEVICE.store(device, Ordering::Release);
    // WskRegister only: the provider is captured by the first connect (rule 7).
    if let Err(e) = wsksend_engine::global::start() {
        log!(
            "WskSend: WskRegister failed %08x\n",
            e.status().cast_unsigned()
        );
        // SAFETY: created above; nothing else references them yet.
        unsafe { IoDeleteSymbolicLink(&raw mut link) };
        // SAFETY: as above.
        unsafe { IoDeleteDevice(device) };
        DEVICE.store(ptr::null_mut(), Ordering::Release);
        return e.status();
    }

    // SAFETY: DriverEntry owns the driver object until it returns.
    let driver = unsafe { &mut *driver };
    driver.MajorFunction[IRP_MJ_CREATE] = Some(dispatch_create);
    driver.MajorFunction[IRP_MJ_CLOSE] = Some(dispatch_cleanup_close);
    driver.MajorFunction[IRP_MJ_CLEANUP] = Some(dispatch_cleanup_close);
    driver.MajorFunction[IRP_MJ_DEVICE_CONTROL] = Some(dispatch_device_control);
    driver.DriverUnload = Some(driver_unload);
    log!("WskSend: loaded\n");
    STATUS_SUCCESS
}

/// `DriverUnload`: removes the symbolic link and the device.
unsafe extern "system" fn driver_unload(_driver: *mut DRIVER_OBJECT) {
    // Every connection closes (pending sends complete) before WskDeregister (rule 8).
    DISPATCHER.shutdown();
    wsksend_engine::global::stop();
    let mut link = unicode(&DOS_DEVICE_NAME);
    // SAFETY: the link was created in DriverEntry.
    unsafe { IoDeleteSymbolicLink(&raw mut link) };
    let device = DEVICE.swap(ptr::null_mut(), Ordering::AcqRel);
    if !device.is_null() {
        // SAFETY: `device` is the device created in DriverEntry; no request can arrive
        // once the driver is being unloaded.
        unsafe { IoDeleteDevice(device) };
    }
    log!("WskSend: unloaded\n");
}

/// Completes `irp` with `outcome` and returns its status.
///
/// # Safety
/// `irp` is a live IRP dispatched to us that no one else will complete.
pub(crate) unsafe fn complete(irp: *mut IRP, outcome: Outcome) -> NTSTATUS {
    // SAFETY: we own the IRP until IofCompleteRequest.
    let irp_ref = unsafe { &mut *irp };
    irp_ref.IoStatus = IO_STATUS_BLOCK::new(outcome.status, outcome.information);
    // SAFETY: as above; after this call the IRP is no longer ours.
    unsafe { IofCompleteRequest(irp, IO_NO_INCREMENT) };
    outcome.status
}

/// `IRP_MJ_CREATE`: nothing to set up; connections are created by CONNECT.
unsafe extern "system" fn dispatch_create(_device: *mut DEVICE_OBJECT, irp: *mut IRP) -> NTSTATUS {
    // SAFETY: the I/O manager hands us a live IRP to complete.
    unsafe { complete(irp, Outcome::ok(0)) }
}

/// The file a request came on.
///
/// # Safety
/// `irp` is a live IRP dispatched to us.
unsafe fn file_of(irp: *mut IRP) -> FileId {
    // SAFETY: a dispatched IRP has a current stack location.
    let stack = unsafe { IoGetCurrentIrpStackLocation(irp) };
    // SAFETY: as above; reading its FileObject field.
    FileId(unsafe { (*stack).FileObject } as usize)
}

/// `IRP_MJ_CLEANUP` and `IRP_MJ_CLOSE`: close the file's connections (their pending
/// sends complete first). Wine sends only CLOSE, so both do it; it is idempotent.
unsafe extern "system" fn dispatch_cleanup_close(
    _device: *mut DEVICE_OBJECT,
    irp: *mut IRP,
) -> NTSTATUS {
    // SAFETY: the I/O manager hands us a live IRP.
    DISPATCHER.cleanup(unsafe { file_of(irp) });
    // SAFETY: we own the IRP and complete it once.
    unsafe { complete(irp, Outcome::ok(0)) }
}

/// `IRP_MJ_DEVICE_CONTROL`: hands the request to the shared dispatcher.
unsafe extern "system" fn dispatch_device_control(
    _device: *mut DEVICE_OBJECT,
    irp: *mut IRP,
) -> NTSTATUS {
    // SAFETY: the I/O manager hands us a live IRP with a current stack location.
    let stack = unsafe { IoGetCurrentIrpStackLocation(irp) };
    // SAFETY: the current stack location of an IRP dispatched to us is valid and ours.
    let stack = unsafe { &*stack };
    let params = stack.device_io_control();
    let code = params.IoControlCode;
    let input_len = params.InputBufferLength as usize;
    let output_len = params.OutputBufferLength as usize;
    // SAFETY: a live IRP dispatched to us.
    let irp_ref = unsafe { &*irp };
    // The system buffer holds max(in, out) bytes for METHOD_BUFFERED and the input for
    // the direct methods, whose second buffer is the locked MDL; METHOD_NEITHER is
    // never used by this interface.
    let (system_len, output_len, direct) = match protocol::method_of(code) {
        protocol::METHOD_BUFFERED => (input_len.max(output_len), output_len, None),
        protocol::METHOD_IN_DIRECT | protocol::METHOD_OUT_DIRECT => (
            input_len,
            0,
            ptr::NonNull::new(irp_ref.MdlAddress).map(|mdl| wsksend_dispatch::DirectBuffer {
                mdl,
                len: output_len,
            }),
        ),
        _ => (0, 0, None),
    };
    let system_ptr = irp_ref.SystemBuffer.cast::<u8>();
    let system: &mut [u8] = if system_len == 0 {
        &mut []
    } else if system_ptr.is_null() {
        // SAFETY: we own the IRP and complete it once.
        return unsafe { complete(irp, Outcome::fail(STATUS_INVALID_PARAMETER)) };
    } else {
        // SAFETY: the I/O manager allocated the system buffer with `system_len` bytes
        // for this method; we own it until the IRP completes, and nothing else aliases it.
        unsafe { core::slice::from_raw_parts_mut(system_ptr, system_len) }
    };
    let request = Request {
        file: FileId(stack.FileObject as usize),
        code,
        system,
        input_len,
        output_len,
        direct,
        // SAFETY: the IRP is live and ours until completed through this token.
        pending: unsafe { IrpToken::new(irp) },
    };
    match DISPATCHER.device_control(request) {
        Disposition::Complete(outcome, token) => token.finish_now(outcome),
        Disposition::Pending => STATUS_PENDING,
    }
}
