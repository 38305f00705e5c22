//! The device both ways of loading create: `\Device\WskSend` with the symbolic link
//! `\DosDevices\WskSend` (`\\.\WskSend`, what the harness opens), readable and writable by
//! SYSTEM and Administrators only, a framework file object per handle (cleanup closes
//! that handle's connections) and a default parallel queue for device-control requests.
//!
//! - PnP ([`evt_driver_device_add`]): the function device of `Root\WskSend`, which also
//!   registers [`GUID_DEVINTERFACE_WSKSEND`].
//! - Legacy ([`create_control_device`]): a control device created in `DriverEntry`
//!   (a control device cannot register device interfaces).
//!
//! [`wdfdevice.h`](https://learn.microsoft.com/windows-hardware/drivers/ddi/wdfdevice/),
//! [`wdfcontrol.h`](https://learn.microsoft.com/windows-hardware/drivers/ddi/wdfcontrol/),
//! [`wdfio.h`](https://learn.microsoft.com/windows-hardware/drivers/ddi/wdfio/).

use core::ptr;

use wdk::println;
use wdk_sys::{
    _WDF_EXECUTION_LEVEL, _WDF_FILEOBJECT_CLASS, _WDF_IO_QUEUE_DISPATCH_TYPE,
    _WDF_SYNCHRONIZATION_SCOPE, _WDF_TRI_STATE, GUID, NT_SUCCESS, NTSTATUS, PWDFDEVICE_INIT,
    STATUS_INSUFFICIENT_RESOURCES, STATUS_SUCCESS, ULONG, WDF_FILEOBJECT_CONFIG,
    WDF_IO_QUEUE_CONFIG, WDF_NO_OBJECT_ATTRIBUTES, WDF_OBJECT_ATTRIBUTES, WDFDEVICE, WDFDRIVER,
    call_unsafe_wdf_function_binding,
};
use wsksend_ffi::ascii_utf16;
use wsksend_protocol as protocol;

use crate::{object_attributes, request, size_ulong, unicode};

static DEVICE_NAME: [u16; protocol::DEVICE_NAME.len()] =
    ascii_utf16::<{ protocol::DEVICE_NAME.len() }>(protocol::DEVICE_NAME);
static DOS_DEVICE_NAME: [u16; protocol::DOS_DEVICE_NAME.len()] =
    ascii_utf16::<{ protocol::DOS_DEVICE_NAME.len() }>(protocol::DOS_DEVICE_NAME);

/// `SDDL_DEVOBJ_SYS_ALL_ADM_ALL` (wdmsec.h): all access for SYSTEM and Administrators,
/// none for anyone else. Spelled out because wdmsec.h's constants live in wdmsec.lib. The
/// INF sets the same descriptor on the devnode.
const SDDL: &str = "D:P(A;;GA;;;SY)(A;;GA;;;BA)";
static SDDL_UTF16: [u16; SDDL.len()] = ascii_utf16::<{ SDDL.len() }>(SDDL);

/// Device interface class of the WskSend PnP device,
/// `{22C60185-58FD-41E7-9711-602C03B5EFC8}`, for PnP-aware clients
/// (`CM_Get_Device_Interface_List`); the harness opens `\\.\WskSend`, which works for
/// both ways of loading.
pub static GUID_DEVINTERFACE_WSKSEND: GUID = GUID {
    Data1: 0x22C6_0185,
    Data2: 0x58FD,
    Data3: 0x41E7,
    Data4: [0x97, 0x11, 0x60, 0x2C, 0x03, 0xB5, 0xEF, 0xC8],
};

/// `EvtDriverDeviceAdd` (PnP loads only): creates the function device of `Root\WskSend`.
/// On failure KMDF deletes whatever was created and fails the device's start.
///
/// # Safety
/// Called by KMDF at `PASSIVE_LEVEL` with the `WDFDEVICE_INIT` of this `AddDevice`.
pub unsafe extern "C" fn evt_driver_device_add(
    _driver: WDFDRIVER,
    mut init: PWDFDEVICE_INIT,
) -> NTSTATUS {
    // SAFETY: `init` is live and not yet passed to WdfDeviceCreate.
    let status = unsafe { configure(init) };
    if !NT_SUCCESS(status) {
        return status;
    }
    let mut device: WDFDEVICE = ptr::null_mut();
    // SAFETY: `init` is live and configured; KMDF owns and frees a PnP device's init
    // whether or not this succeeds; `device` receives the handle.
    let status = unsafe {
        call_unsafe_wdf_function_binding!(
            WdfDeviceCreate,
            &raw mut init,
            WDF_NO_OBJECT_ATTRIBUTES,
            &raw mut device,
        )
    };
    if !NT_SUCCESS(status) {
        println!("WskSend: WdfDeviceCreate failed {status:#010x}");
        return status;
    }
    // SAFETY: `device` was just created and receives no I/O before AddDevice returns.
    let status = unsafe { finish(device) };
    if !NT_SUCCESS(status) {
        return status;
    }
    // SAFETY: `device` is a live PnP device; the GUID is static; no reference string.
    let status = unsafe {
        call_unsafe_wdf_function_binding!(
            WdfDeviceCreateDeviceInterface,
            device,
            &raw const GUID_DEVINTERFACE_WSKSEND,
            ptr::null_mut(),
        )
    };
    if !NT_SUCCESS(status) {
        println!("WskSend: WdfDeviceCreateDeviceInterface failed {status:#010x}");
    }
    status
}

/// Creates the control device of a legacy (non-PnP) load. KMDF deletes it when the
/// driver unloads (after `EvtDriverUnload`).
///
/// # Safety
/// `driver` is our live framework driver object; `PASSIVE_LEVEL` (`DriverEntry`).
pub unsafe fn create_control_device(driver: WDFDRIVER) -> NTSTATUS {
    let sddl = unicode(&SDDL_UTF16);
    // SAFETY: the caller's contract; `sddl` outlives the call (KMDF copies it).
    let mut init = unsafe {
        call_unsafe_wdf_function_binding!(WdfControlDeviceInitAllocate, driver, &raw const sddl)
    };
    if init.is_null() {
        println!("WskSend: WdfControlDeviceInitAllocate failed");
        return STATUS_INSUFFICIENT_RESOURCES;
    }
    let mut device: WDFDEVICE = ptr::null_mut();
    // SAFETY: `init` was allocated above and not yet passed to WdfDeviceCreate.
    let mut status = unsafe { configure(init) };
    if NT_SUCCESS(status) {
        // SAFETY: `init` is live and configured; on success KMDF takes it and sets it to
        // null; `device` receives the handle.
        status = unsafe {
            call_unsafe_wdf_function_binding!(
                WdfDeviceCreate,
                &raw mut init,
                WDF_NO_OBJECT_ATTRIBUTES,
                &raw mut device,
            )
        };
    }
    if !NT_SUCCESS(status) {
        println!("WskSend: control device creation failed {status:#010x}");
        // A control device's init stays ours until WdfDeviceCreate consumes it.
        if !init.is_null() {
            // SAFETY: `init` came from WdfControlDeviceInitAllocate and was not consumed.
            unsafe {
                call_unsafe_wdf_function_binding!(WdfDeviceInitFree, init);
            }
        }
        return status;
    }
    // SAFETY: `device` was just created and cannot receive I/O before
    // WdfControlFinishInitializing.
    let status = unsafe { finish(device) };
    if !NT_SUCCESS(status) {
        // SAFETY: the control device was created above and nothing else references it.
        unsafe {
            call_unsafe_wdf_function_binding!(WdfObjectDelete, device.cast());
        }
        return status;
    }
    // SAFETY: the control device is fully set up; from now on I/O reaches it.
    unsafe {
        call_unsafe_wdf_function_binding!(WdfControlFinishInitializing, device);
    }
    STATUS_SUCCESS
}

/// What both devices set before `WdfDeviceCreate`: name, security, device type (as the
/// WDM front end's `IoCreateDevice`), the file-object callbacks and the per-request
/// context. KMDF's default characteristics already include `FILE_DEVICE_SECURE_OPEN`.
///
/// # Safety
/// `init` is a live `WDFDEVICE_INIT` not yet passed to `WdfDeviceCreate`; `PASSIVE_LEVEL`.
unsafe fn configure(init: PWDFDEVICE_INIT) -> NTSTATUS {
    let name = unicode(&DEVICE_NAME);
    // SAFETY: the caller's contract; `name` outlives the call (KMDF copies it).
    let status = unsafe {
        call_unsafe_wdf_function_binding!(WdfDeviceInitAssignName, init, &raw const name)
    };
    if !NT_SUCCESS(status) {
        return status;
    }
    let sddl = unicode(&SDDL_UTF16);
    // SAFETY: the caller's contract; `sddl` outlives the call (KMDF copies it).
    let status = unsafe {
        call_unsafe_wdf_function_binding!(WdfDeviceInitAssignSDDLString, init, &raw const sddl)
    };
    if !NT_SUCCESS(status) {
        return status;
    }
    // SAFETY: the caller's contract.
    unsafe {
        call_unsafe_wdf_function_binding!(
            WdfDeviceInitSetDeviceType,
            init,
            protocol::FILE_DEVICE_WSKSEND,
        );
    }

    // WDF_FILEOBJECT_CONFIG_INIT(&config, NULL, NULL, evt_file_cleanup): a WDFFILEOBJECT
    // per handle (its handle value is the dispatcher's FileId), cleanup handled here.
    let mut file_config = WDF_FILEOBJECT_CONFIG {
        Size: size_ulong::<WDF_FILEOBJECT_CONFIG>(),
        EvtFileCleanup: Some(request::evt_file_cleanup),
        AutoForwardCleanupClose: _WDF_TRI_STATE::WdfUseDefault,
        FileObjectClass: _WDF_FILEOBJECT_CLASS::WdfFileObjectWdfCannotUseFsContexts,
        ..WDF_FILEOBJECT_CONFIG::default()
    };
    // SAFETY: the caller's contract; `file_config` outlives the call.
    unsafe {
        call_unsafe_wdf_function_binding!(
            WdfDeviceInitSetFileObjectConfig,
            init,
            &raw mut file_config,
            WDF_NO_OBJECT_ATTRIBUTES,
        );
    }

    // Every request of this device carries a `RequestContext` (for its cancel callback).
    let mut request_attributes = WDF_OBJECT_ATTRIBUTES {
        ContextTypeInfo: request::context_type(),
        ..object_attributes()
    };
    // SAFETY: the caller's contract; `request_attributes` outlives the call.
    unsafe {
        call_unsafe_wdf_function_binding!(
            WdfDeviceInitSetRequestAttributes,
            init,
            &raw mut request_attributes,
        );
    }
    STATUS_SUCCESS
}

/// What both devices get once created: the symbolic link, the work item for deferred
/// closes and the default queue.
///
/// # Safety
/// `device` was just created by `WdfDeviceCreate`; `PASSIVE_LEVEL`.
unsafe fn finish(device: WDFDEVICE) -> NTSTATUS {
    let link = unicode(&DOS_DEVICE_NAME);
    // SAFETY: `device` is live; `link` outlives the call. KMDF deletes the link with the
    // device.
    let status = unsafe {
        call_unsafe_wdf_function_binding!(WdfDeviceCreateSymbolicLink, device, &raw const link)
    };
    if !NT_SUCCESS(status) {
        println!("WskSend: WdfDeviceCreateSymbolicLink failed {status:#010x}");
        return status;
    }
    // The engine sets its completion routines with IoSetCompletionRoutineEx on this
    // device object, so the image stays loaded until a running routine has returned.
    // SAFETY: `device` is live.
    let wdm = unsafe { call_unsafe_wdf_function_binding!(WdfDeviceWdmGetDeviceObject, device) };
    // SAFETY: our device object; KMDF deletes it only after EvtDriverUnload, which runs
    // `global::stop` (every IRP of the engine is completed by then).
    unsafe { wsksend_engine::irp::set_device(wdm.cast()) };
    // SAFETY: `device` is live; PASSIVE_LEVEL.
    let status = unsafe { request::create_deferred_work(device) };
    if !NT_SUCCESS(status) {
        return status;
    }

    // WDF_IO_QUEUE_CONFIG_INIT_DEFAULT_QUEUE(&config, WdfIoQueueDispatchParallel).
    let mut queue_config = WDF_IO_QUEUE_CONFIG {
        Size: size_ulong::<WDF_IO_QUEUE_CONFIG>(),
        DispatchType: _WDF_IO_QUEUE_DISPATCH_TYPE::WdfIoQueueDispatchParallel,
        // No hardware and no power states to honour; a power-managed queue would also
        // make system sleep wait for sends that wait on the network.
        PowerManaged: _WDF_TRI_STATE::WdfFalse,
        DefaultQueue: u8::from(true),
        EvtIoDeviceControl: Some(request::evt_io_device_control),
        ..WDF_IO_QUEUE_CONFIG::default()
    };
    // As the INIT macro does for a parallel queue: no limit on requests presented at once
    // (0 would present none).
    queue_config.Settings.Parallel.NumberOfPresentedRequests = ULONG::MAX;
    // The dispatcher runs at PASSIVE_LEVEL: KMDF defers to a work item should a request
    // ever be presented at DISPATCH_LEVEL. No framework locking: requests run in parallel.
    let mut queue_attributes = WDF_OBJECT_ATTRIBUTES {
        ExecutionLevel: _WDF_EXECUTION_LEVEL::WdfExecutionLevelPassive,
        SynchronizationScope: _WDF_SYNCHRONIZATION_SCOPE::WdfSynchronizationScopeNone,
        ..object_attributes()
    };
    // SAFETY: `device` is live; the configuration and attributes outlive the call; the
    // default queue's handle is not needed (KMDF deletes the queue with the device).
    let status = unsafe {
        call_unsafe_wdf_function_binding!(
            WdfIoQueueCreate,
            device,
            &raw mut queue_config,
            &raw mut queue_attributes,
            ptr::null_mut(),
        )
    };
    if !NT_SUCCESS(status) {
        println!("WskSend: WdfIoQueueCreate failed {status:#010x}");
    }
    status
}
