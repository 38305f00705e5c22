//! Kernel and WSK routines WskSend imports.
//!
//! On Windows they come from `ntoskrnl.exe` and `netio.sys` through `raw-dylib` (no
//! import library needed, so the `.sys` links on Linux). On any other target the
//! symbols are left undefined here and the kernel model crate defines them.
//!
//! Only routines that Wine 8 implements are used by the code that runs there; see
//! DESIGN.md for what Wine stubs (`IoBuildPartialMdl`, the `Ex*RundownProtection`
//! family): those are imported only for the KMDF build path and never called in Wine.

use core::ffi::c_void;

use crate::{
    BOOLEAN, DEVICE_OBJECT, DRIVER_OBJECT, EVENT_TYPE, IRP, KEVENT, KIRQL, KPROCESSOR_MODE,
    KSPIN_LOCK, LOCK_OPERATION, MDL, NTSTATUS, PIO_COMPLETION_ROUTINE, POOL_TYPE, UNICODE_STRING,
    WSK_CLIENT_NPI, WSK_PROVIDER_NPI, WSK_REGISTRATION,
};

#[cfg_attr(
    target_os = "windows",
    link(name = "ntoskrnl.exe", kind = "raw-dylib", modifiers = "+verbatim")
)]
unsafe extern "system" {
    // --- pool ---
    /// `ExAllocatePoolWithTag` (Wine 8 has no `ExAllocatePool2`).
    pub fn ExAllocatePoolWithTag(
        PoolType: POOL_TYPE,
        NumberOfBytes: usize,
        Tag: u32,
    ) -> *mut c_void;
    /// `ExFreePoolWithTag`.
    pub fn ExFreePoolWithTag(P: *mut c_void, Tag: u32);

    // --- IRPs ---
    /// `IoAllocateIrp`.
    pub fn IoAllocateIrp(StackSize: i8, ChargeQuota: BOOLEAN) -> *mut IRP;
    /// `IoFreeIrp`.
    pub fn IoFreeIrp(Irp: *mut IRP);
    /// `IoReuseIrp`.
    pub fn IoReuseIrp(Irp: *mut IRP, Iostatus: NTSTATUS);
    /// `IoCancelIrp`.
    pub fn IoCancelIrp(Irp: *mut IRP) -> BOOLEAN;
    /// `IofCompleteRequest` (what the `IoCompleteRequest` macro calls).
    pub fn IofCompleteRequest(Irp: *mut IRP, PriorityBoost: i8);
    /// `IoSetCompletionRoutineEx`: like `IoSetCompletionRoutine`, but the I/O manager
    /// holds a reference on `DeviceObject` until the routine has returned, so the
    /// driver image cannot be unloaded under a running routine. Allocates: may fail
    /// with `STATUS_INSUFFICIENT_RESOURCES`.
    pub fn IoSetCompletionRoutineEx(
        DeviceObject: *mut DEVICE_OBJECT,
        Irp: *mut IRP,
        CompletionRoutine: PIO_COMPLETION_ROUTINE,
        Context: *mut c_void,
        InvokeOnSuccess: BOOLEAN,
        InvokeOnError: BOOLEAN,
        InvokeOnCancel: BOOLEAN,
    ) -> NTSTATUS;
    /// `IoAcquireCancelSpinLock`.
    pub fn IoAcquireCancelSpinLock(Irql: *mut KIRQL);
    /// `IoReleaseCancelSpinLock`.
    pub fn IoReleaseCancelSpinLock(Irql: KIRQL);

    // --- MDLs ---
    /// `IoAllocateMdl`.
    pub fn IoAllocateMdl(
        VirtualAddress: *mut c_void,
        Length: u32,
        SecondaryBuffer: BOOLEAN,
        ChargeQuota: BOOLEAN,
        Irp: *mut IRP,
    ) -> *mut MDL;
    /// `IoFreeMdl`.
    pub fn IoFreeMdl(Mdl: *mut MDL);
    /// `MmBuildMdlForNonPagedPool`.
    pub fn MmBuildMdlForNonPagedPool(MemoryDescriptorList: *mut MDL);
    /// `IoBuildPartialMdl` (a stub in Wine 8: never called there).
    pub fn IoBuildPartialMdl(
        SourceMdl: *mut MDL,
        TargetMdl: *mut MDL,
        VirtualAddress: *mut c_void,
        Length: u32,
    );
    /// `MmProbeAndLockPages` (raises SEH exceptions on bad buffers: only for
    /// buffers known valid, see DESIGN.md rule 5).
    pub fn MmProbeAndLockPages(
        MemoryDescriptorList: *mut MDL,
        AccessMode: KPROCESSOR_MODE,
        Operation: LOCK_OPERATION,
    );
    /// `MmUnlockPages`.
    pub fn MmUnlockPages(MemoryDescriptorList: *mut MDL);

    // --- synchronisation ---
    /// `KeInitializeEvent`.
    pub fn KeInitializeEvent(Event: *mut KEVENT, Type: EVENT_TYPE, State: BOOLEAN);
    /// `KeSetEvent`.
    pub fn KeSetEvent(Event: *mut KEVENT, Increment: i32, Wait: BOOLEAN) -> i32;
    /// `KeClearEvent`.
    pub fn KeClearEvent(Event: *mut KEVENT);
    /// `KeWaitForSingleObject`. `Timeout` is in 100 ns units, negative for relative.
    pub fn KeWaitForSingleObject(
        Object: *mut c_void,
        WaitReason: i32,
        WaitMode: KPROCESSOR_MODE,
        Alertable: BOOLEAN,
        Timeout: *const i64,
    ) -> NTSTATUS;
    /// `KeAcquireSpinLockRaiseToDpc` (what `KeAcquireSpinLock` means on x64).
    pub fn KeAcquireSpinLockRaiseToDpc(SpinLock: *mut KSPIN_LOCK) -> KIRQL;
    /// `KeReleaseSpinLock`.
    pub fn KeReleaseSpinLock(SpinLock: *mut KSPIN_LOCK, NewIrql: KIRQL);

    /// `KeBugCheckEx`: stops the machine; used by the panic handlers of the front ends.
    pub fn KeBugCheckEx(
        BugCheckCode: u32,
        BugCheckParameter1: usize,
        BugCheckParameter2: usize,
        BugCheckParameter3: usize,
        BugCheckParameter4: usize,
    ) -> !;

    // --- device objects (front ends) ---
    /// `IoCreateDevice`.
    pub fn IoCreateDevice(
        DriverObject: *mut DRIVER_OBJECT,
        DeviceExtensionSize: u32,
        DeviceName: *mut UNICODE_STRING,
        DeviceType: u32,
        DeviceCharacteristics: u32,
        Exclusive: BOOLEAN,
        DeviceObject: *mut *mut DEVICE_OBJECT,
    ) -> NTSTATUS;
    /// `IoDeleteDevice`.
    pub fn IoDeleteDevice(DeviceObject: *mut DEVICE_OBJECT);
    /// `IoCreateSymbolicLink`.
    pub fn IoCreateSymbolicLink(
        SymbolicLinkName: *mut UNICODE_STRING,
        DeviceName: *mut UNICODE_STRING,
    ) -> NTSTATUS;
    /// `IoDeleteSymbolicLink`.
    pub fn IoDeleteSymbolicLink(SymbolicLinkName: *mut UNICODE_STRING) -> NTSTATUS;
}

#[cfg_attr(
    target_os = "windows",
    link(name = "netio.sys", kind = "raw-dylib", modifiers = "+verbatim")
)]
unsafe extern "system" {
    /// `WskRegister`.
    pub fn WskRegister(
        WskClientNpi: *const WSK_CLIENT_NPI,
        WskRegistration: *mut WSK_REGISTRATION,
    ) -> NTSTATUS;
    /// `WskDeregister`: waits until every socket is closed and every NPI released.
    pub fn WskDeregister(WskRegistration: *mut WSK_REGISTRATION);
    /// `WskCaptureProviderNPI`. `WaitTimeout` in milliseconds.
    pub fn WskCaptureProviderNPI(
        WskRegistration: *mut WSK_REGISTRATION,
        WaitTimeout: u32,
        WskProviderNpi: *mut WSK_PROVIDER_NPI,
    ) -> NTSTATUS;
    /// `WskReleaseProviderNPI`.
    pub fn WskReleaseProviderNPI(WskRegistration: *mut WSK_REGISTRATION);
}
