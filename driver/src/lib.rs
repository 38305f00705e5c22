//! WskSend's KMDF front end: the driver the product ships (ring 2, built on Windows with
//! the WDK by `cargo make`; type-checked and linted on Linux by `cargo xtask check-kmdf`,
//! ring 2a).
//!
//! It is the KMDF twin of the WDM front end in `crates/wdm`, and like it does only what
//! the driver model requires: create the driver and its device (name, symbolic link,
//! security, device interface), hand every `IRP_MJ_DEVICE_CONTROL` request to the shared
//! [`Dispatcher`], complete requests (at once, or later with cancellation armed), close a
//! handle's connections at file cleanup and everything at unload. Every decision about a
//! request is the dispatcher's; the two front ends are meant to be read side by side.
//!
//! - [`device`]: the device and its default queue, for both ways of loading.
//! - [`request`]: `WDFREQUEST` as the dispatcher's [`PendingIo`](wsksend_dispatch::PendingIo)
//!   token, `EvtIoDeviceControl`, `EvtRequestCancel`, `EvtFileCleanup`.
//!
//! One binary loads both ways (README, "Windows test-VM runbook"):
//! - **PnP**: function driver of the root-enumerated device `Root\WskSend` installed from
//!   `inf/wsksend.inx`; the device is created in `EvtDriverDeviceAdd`.
//! - **legacy**: a service made with `sc create … type= kernel`; `WdfDriverInitNonPnpDriver`
//!   (so `sc stop` can unload it) and a control device created in `DriverEntry`.
//!
//! KMDF must know which before `WdfDriverCreate` (a driver with an `AddDevice` routine is
//! PnP and cannot be stopped with `sc stop`), so the INF marks its service: it writes
//! `Parameters\PnpFunctionDriver = 1`, which [`installed_by_inf`] reads.
//!
//! WDF calls go through `call_unsafe_wdf_function_binding!` (the WDF function table);
//! WDM calls come from `wdk_sys::ntddk`. The engine's own kernel and WSK imports are
//! `raw-dylib` declarations in `wsksend-ffi` (`ntoskrnl.exe`, `netio.sys`).
#![no_std]

mod device;
mod request;

#[cfg(not(test))]
extern crate wdk_panic;

use core::ptr;

use wdk::println;
#[cfg(not(test))]
use wdk_alloc::WdkAllocator;
use wdk_sys::ntddk::{IoOpenDriverRegistryKey, ZwClose, ZwQueryValueKey};
use wdk_sys::{
    _DRIVER_REGKEY_TYPE, _KEY_VALUE_INFORMATION_CLASS, _WDF_DRIVER_INIT_FLAGS,
    _WDF_EXECUTION_LEVEL, _WDF_SYNCHRONIZATION_SCOPE, HANDLE, KEY_QUERY_VALUE, NT_SUCCESS,
    NTSTATUS, PCUNICODE_STRING, PDRIVER_OBJECT, STATUS_SUCCESS, ULONG, UNICODE_STRING,
    WDF_DRIVER_CONFIG, WDF_NO_OBJECT_ATTRIBUTES, WDF_OBJECT_ATTRIBUTES, WDFDRIVER,
    call_unsafe_wdf_function_binding,
};
use wsksend_dispatch::{Carve, Config, Dispatcher};
use wsksend_engine::global;
use wsksend_ffi::ascii_utf16;
use wsksend_protocol as protocol;

#[cfg(not(test))]
#[global_allocator]
static GLOBAL_ALLOCATOR: WdkAllocator = WdkAllocator;

/// Driver-wide dispatcher state shared by every request. KMDF on Windows has a working
/// `IoBuildPartialMdl`, so multi-segment sends carve partial MDLs (the WDM front end
/// under Wine uses system addresses instead).
static DISPATCHER: Dispatcher<request::Pending> = Dispatcher::new(Config::new(Carve::PartialMdl));

/// Pool tag for the framework's allocations on our behalf (`WskS`, as the WDM front end).
const POOL_TAG: ULONG = u32::from_le_bytes(*b"WskS");

/// Value the INF writes under the service's `Parameters` key (see [`installed_by_inf`]).
const PNP_MARKER: &str = "PnpFunctionDriver";
static PNP_MARKER_UTF16: [u16; PNP_MARKER.len()] = ascii_utf16::<{ PNP_MARKER.len() }>(PNP_MARKER);

/// `REG_DWORD` (winnt.h).
const REG_DWORD: ULONG = 4;

/// `DriverEntry`, called by the KMDF stub (`FxDriverEntry`) once the framework is bound.
///
/// Creates the framework driver object, registers with WSK (no provider wait: DESIGN.md
/// rule 7) and, when loaded as a legacy service, the control device. A PnP load gets its
/// device from [`device::evt_driver_device_add`].
///
/// # Safety
/// Called once by the system, at `PASSIVE_LEVEL` in a system thread, with this driver's
/// object and registry path.
#[unsafe(export_name = "DriverEntry")]
pub unsafe extern "system" fn driver_entry(
    driver: PDRIVER_OBJECT,
    registry_path: PCUNICODE_STRING,
) -> NTSTATUS {
    println!(
        "WskSend: DriverEntry (KMDF, protocol {})",
        protocol::PROTOCOL_VERSION
    );
    // SAFETY: `driver` is our driver object; DriverEntry runs at PASSIVE_LEVEL in a
    // system thread.
    let pnp = unsafe { installed_by_inf(driver) };

    let mut config = WDF_DRIVER_CONFIG {
        Size: size_ulong::<WDF_DRIVER_CONFIG>(),
        EvtDriverUnload: Some(evt_driver_unload),
        DriverPoolTag: POOL_TAG,
        ..WDF_DRIVER_CONFIG::default()
    };
    if pnp {
        config.EvtDriverDeviceAdd = Some(device::evt_driver_device_add);
    } else {
        // No AddDevice routine, so the I/O manager lets `sc stop` unload us; KMDF then
        // requires EvtDriverUnload, set above.
        config.DriverInitFlags = _WDF_DRIVER_INIT_FLAGS::WdfDriverInitNonPnpDriver as ULONG;
    }
    let mut wdf_driver: WDFDRIVER = ptr::null_mut();
    // SAFETY: `driver` and `registry_path` are the ones the system passed us; `config`
    // and `wdf_driver` outlive the call; no driver object attributes.
    let status = unsafe {
        call_unsafe_wdf_function_binding!(
            WdfDriverCreate,
            driver,
            registry_path,
            WDF_NO_OBJECT_ATTRIBUTES,
            &raw mut config,
            &raw mut wdf_driver,
        )
    };
    if !NT_SUCCESS(status) {
        println!("WskSend: WdfDriverCreate failed {status:#010x}");
        return status;
    }

    // WskRegister only: the provider is captured by the first connect (rule 7).
    // The device objects come later (AddDevice, or the control device below); until
    // one is set, completion routines are set without a device reference.
    // SAFETY: null is always allowed.
    if let Err(e) = unsafe { global::start(core::ptr::null_mut()) } {
        let status = e.status();
        println!("WskSend: WskRegister failed {status:#010x}");
        return status;
    }
    if !pnp {
        // SAFETY: `wdf_driver` was just created; we are at PASSIVE_LEVEL.
        let status = unsafe { device::create_control_device(wdf_driver) };
        if !NT_SUCCESS(status) {
            let _ = global::stop();
            return status;
        }
    }
    println!(
        "WskSend: loaded ({})",
        if pnp {
            "PnP function driver"
        } else {
            "legacy service, control device"
        }
    );
    STATUS_SUCCESS
}

/// `EvtDriverUnload`: closes every connection and completes what is still pending, lets
/// a deferred close finish, then closes the WSK client and deregisters (which waits for
/// all sockets: DESIGN.md rule 8). KMDF deletes the device objects itself.
///
/// # Safety
/// Called once by KMDF at `PASSIVE_LEVEL` when the driver unloads.
unsafe extern "C" fn evt_driver_unload(_driver: WDFDRIVER) {
    DISPATCHER.shutdown();
    // No request is pending any more, so no cancellation can defer another close.
    request::flush_deferred();
    if global::stop().is_err() {
        println!("WskSend: unload left engine objects allocated");
    }
    println!("WskSend: unloaded");
}

/// Whether `inf/wsksend.inx` installed this service as the function driver of
/// `Root\WskSend`: its service install section writes `Parameters\PnpFunctionDriver = 1`
/// (a `REG_DWORD`), where a service made with `sc create` has nothing.
///
/// # Safety
/// `driver` is this driver's object; `PASSIVE_LEVEL`, system thread (`DriverEntry`).
unsafe fn installed_by_inf(driver: PDRIVER_OBJECT) -> bool {
    let mut key: HANDLE = ptr::null_mut();
    // SAFETY: the caller's contract is IoOpenDriverRegistryKey's (own driver object,
    // PASSIVE_LEVEL, system thread); `key` receives the handle; Flags must be 0.
    let status = unsafe {
        IoOpenDriverRegistryKey(
            driver,
            _DRIVER_REGKEY_TYPE::DriverRegKeyParameters,
            KEY_QUERY_VALUE,
            0,
            &raw mut key,
        )
    };
    if !NT_SUCCESS(status) {
        return false;
    }
    let mut name = unicode(&PNP_MARKER_UTF16);
    // KEY_VALUE_PARTIAL_INFORMATION holding a DWORD: TitleIndex, Type, DataLength, Data.
    let mut info = [0u32; 4];
    let mut returned: ULONG = 0;
    // SAFETY: `key` is open; `name`, `info` and `returned` outlive the call, and `info`
    // is `size_of_val(&info)` writable bytes, 4-byte aligned as the structure requires.
    let status = unsafe {
        ZwQueryValueKey(
            key,
            &raw mut name,
            _KEY_VALUE_INFORMATION_CLASS::KeyValuePartialInformation,
            info.as_mut_ptr().cast(),
            size_ulong::<[u32; 4]>(),
            &raw mut returned,
        )
    };
    // SAFETY: `key` was opened above and is closed exactly once, here.
    let _ = unsafe { ZwClose(key) };
    NT_SUCCESS(status) && info[1] == REG_DWORD && info[2] == 4 && info[3] != 0
}

/// A `UNICODE_STRING` over one of our static UTF-16 names.
fn unicode(name: &'static [u16]) -> UNICODE_STRING {
    // CAST: the names are short constants, far below u16::MAX bytes.
    let bytes = (name.len() * 2) as u16;
    UNICODE_STRING {
        Length: bytes,
        MaximumLength: bytes,
        // The kernel and the framework only read through this pointer.
        Buffer: name.as_ptr().cast_mut(),
    }
}

/// `sizeof(T)` as the `ULONG` that WDF `Size` fields (and `ZwQueryValueKey`) take.
#[allow(
    clippy::cast_possible_truncation,
    reason = "the size is asserted to fit a ULONG at compile time"
)]
const fn size_ulong<T>() -> ULONG {
    const { assert!(size_of::<T>() <= ULONG::MAX as usize) };
    size_of::<T>() as ULONG
}

/// `WDF_OBJECT_ATTRIBUTES_INIT`: no context, no callbacks, execution level and
/// synchronization scope inherited from the parent object.
fn object_attributes() -> WDF_OBJECT_ATTRIBUTES {
    WDF_OBJECT_ATTRIBUTES {
        Size: size_ulong::<WDF_OBJECT_ATTRIBUTES>(),
        ExecutionLevel: _WDF_EXECUTION_LEVEL::WdfExecutionLevelInheritFromParent,
        SynchronizationScope: _WDF_SYNCHRONIZATION_SCOPE::WdfSynchronizationScopeInheritFromParent,
        ..WDF_OBJECT_ATTRIBUTES::default()
    }
}
