//! WskSend's WDM front end: the driver image that Wine's kernel loader runs (ring 1).
//!
//! It does only what the driver model requires: create the device and its symbolic
//! link, route `IRP_MJ_*` requests to the shared [`Dispatcher`], complete them, and undo
//! it all in `DriverUnload`. The KMDF front end (`driver/`) does the same through WDF;
//! the two are meant to be read side by side.
#![no_std]

use wsksend_wdm_runtime::device::{self, NamedDevice};
use wsksend_wdm_runtime::log;

use core::ptr;

use wsksend_dispatch::{
    BufferLayout, Carve, Config, DirectBuffer, Dispatcher, Disposition, FileId, Outcome, Request,
};
use wsksend_ffi::inline::IoGetCurrentIrpStackLocation;
use wsksend_ffi::status::{STATUS_INVALID_PARAMETER, STATUS_PENDING, STATUS_SUCCESS};
use wsksend_ffi::{
    DEVICE_OBJECT, DRIVER_OBJECT, IO_NO_INCREMENT, IRP, IRP_MJ_CLEANUP, IRP_MJ_CLOSE,
    IRP_MJ_CREATE, IRP_MJ_DEVICE_CONTROL, NTSTATUS, UNICODE_STRING, ascii_utf16,
};
use wsksend_protocol as protocol;

static DEVICE_NAME: [u16; protocol::DEVICE_NAME.len()] =
    ascii_utf16::<{ protocol::DEVICE_NAME.len() }>(protocol::DEVICE_NAME);
static DOS_DEVICE_NAME: [u16; protocol::DOS_DEVICE_NAME.len()] =
    ascii_utf16::<{ protocol::DOS_DEVICE_NAME.len() }>(protocol::DOS_DEVICE_NAME);

/// The device and its `\\.\WskSend` link; created by `DriverEntry`.
pub(crate) static DEVICE: NamedDevice = NamedDevice::new(&DEVICE_NAME, &DOS_DEVICE_NAME);

/// Driver-wide dispatcher state shared by every request. Multi-segment sends carve
/// the direct buffer through its system address: Wine copies IOCTL buffers into the
/// driver host's heap and stubs `IoBuildPartialMdl` (the KMDF front end, for Windows,
/// uses partial MDLs).
static DISPATCHER: Dispatcher<IrpToken> = Dispatcher::new(Config::new(Carve::SystemVa));

mod token;
use token::IrpToken;

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
    // SAFETY: called from DriverEntry with the live driver object.
    if let Err(status) = unsafe { DEVICE.create(driver, protocol::FILE_DEVICE_WSKSEND) } {
        log!(
            "WskSend: device creation failed %08x\n",
            status.cast_unsigned()
        );
        return status;
    }
    // WskRegister only: the provider is captured by the first connect (rule 7).
    wsksend_engine::log::set_logger(|message| log::print(message, 0, 0));
    // No device for IoSetCompletionRoutineEx: Wine 8 exports it as an unimplemented
    // stub that aborts the process (the KMDF front end, for Windows, sets one). Our
    // teardown still waits for every in-flight holder (`wsksend_engine::rundown`).
    // SAFETY: null is always allowed.
    if let Err(e) = unsafe { wsksend_engine::global::start(ptr::null_mut()) } {
        log!(
            "WskSend: WskRegister failed %08x\n",
            e.status().cast_unsigned()
        );
        // SAFETY: DriverEntry fails: no request can arrive.
        unsafe { DEVICE.delete() };
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
    if let Err(e) = wsksend_engine::global::stop() {
        // Something is still in use (and deliberately left allocated): say so.
        log!(
            "WskSend: unload left engine objects allocated (%08x)\n",
            e.status().cast_unsigned()
        );
    }
    // SAFETY: the driver is unloading: no request can arrive.
    unsafe { DEVICE.delete() };
    log!("WskSend: unloaded\n");
}

/// Completes `irp` with `outcome` and returns its status.
///
/// # Safety
/// `irp` is a live IRP dispatched to us that no one else will complete.
pub(crate) unsafe fn complete(irp: *mut IRP, outcome: Outcome) -> NTSTATUS {
    // SAFETY: forwarded from the caller's contract.
    unsafe { device::complete(irp, outcome.status, outcome.information, IO_NO_INCREMENT) }
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
    let layout = BufferLayout::of(code, input_len, output_len);
    let direct = layout
        .direct_len
        .and_then(|len| ptr::NonNull::new(irp_ref.MdlAddress).map(|mdl| DirectBuffer { mdl, len }));
    let system_ptr = irp_ref.SystemBuffer.cast::<u8>();
    let system: &mut [u8] = if layout.system_len == 0 {
        &mut []
    } else if system_ptr.is_null() {
        // SAFETY: we own the IRP and complete it once.
        return unsafe { complete(irp, Outcome::fail(STATUS_INVALID_PARAMETER)) };
    } else {
        // SAFETY: the I/O manager allocated the system buffer with `system_len` bytes
        // for this method; we own it until the IRP completes, and nothing else aliases it.
        unsafe { core::slice::from_raw_parts_mut(system_ptr, layout.system_len) }
    };
    let request = Request {
        file: FileId(stack.FileObject as usize),
        code,
        system,
        input_len,
        output_len: layout.output_len,
        direct,
        // SAFETY: the IRP is live and ours until completed through this token.
        pending: unsafe { IrpToken::new(irp) },
    };
    match DISPATCHER.device_control(request) {
        Disposition::Complete(outcome, token) => token.finish_now(outcome),
        Disposition::Pending => STATUS_PENDING,
    }
}
