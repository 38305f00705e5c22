//! Kernel types from `wdm.h`/`ntdef.h` (x64 layout).

use core::ffi::c_void;

use crate::{assert_offset, assert_size};

/// `NTSTATUS`.
pub type NTSTATUS = i32;
/// `KIRQL`.
pub type KIRQL = u8;
/// `KSPIN_LOCK` (`ULONG_PTR`).
pub type KSPIN_LOCK = usize;
/// `BOOLEAN`.
pub type BOOLEAN = u8;
/// `KPROCESSOR_MODE`.
pub type KPROCESSOR_MODE = i8;
/// `LOCK_OPERATION`.
pub type LOCK_OPERATION = i32;
/// `POOL_TYPE`.
pub type POOL_TYPE = i32;

/// `TRUE`.
pub const TRUE: BOOLEAN = 1;
/// `FALSE`.
pub const FALSE: BOOLEAN = 0;

/// `KernelMode`.
pub const KernelMode: KPROCESSOR_MODE = 0;
/// `UserMode`.
pub const UserMode: KPROCESSOR_MODE = 1;
/// `IoReadAccess`.
pub const IoReadAccess: LOCK_OPERATION = 0;
/// `NonPagedPoolNx`: non-executable nonpaged pool (the only pool we allocate from).
pub const NonPagedPoolNx: POOL_TYPE = 512;

/// `PASSIVE_LEVEL`.
pub const PASSIVE_LEVEL: KIRQL = 0;
/// `APC_LEVEL`.
pub const APC_LEVEL: KIRQL = 1;
/// `DISPATCH_LEVEL`.
pub const DISPATCH_LEVEL: KIRQL = 2;

/// NTSTATUS values used by WskSend (from `ntstatus.h`).
pub mod status {
    use super::NTSTATUS;
    // CAST: the header spells these as unsigned hex; NTSTATUS is their i32 bit pattern.
    /// `STATUS_SUCCESS`.
    pub const STATUS_SUCCESS: NTSTATUS = 0;
    /// `STATUS_PENDING`.
    pub const STATUS_PENDING: NTSTATUS = 0x0000_0103;
    /// `STATUS_TIMEOUT` (a success code from `KeWaitForSingleObject`).
    pub const STATUS_TIMEOUT: NTSTATUS = 0x0000_0102;
    /// `STATUS_MORE_PROCESSING_REQUIRED`: the only value our completion routines return.
    pub const STATUS_MORE_PROCESSING_REQUIRED: NTSTATUS = 0xC000_0016_u32 as i32;
    /// `STATUS_UNSUCCESSFUL`.
    pub const STATUS_UNSUCCESSFUL: NTSTATUS = 0xC000_0001_u32 as i32;
    /// `STATUS_NOT_IMPLEMENTED`.
    pub const STATUS_NOT_IMPLEMENTED: NTSTATUS = 0xC000_0002_u32 as i32;
    /// `STATUS_INVALID_HANDLE`.
    pub const STATUS_INVALID_HANDLE: NTSTATUS = 0xC000_0008_u32 as i32;
    /// `STATUS_INVALID_PARAMETER`.
    pub const STATUS_INVALID_PARAMETER: NTSTATUS = 0xC000_000D_u32 as i32;
    /// `STATUS_INVALID_DEVICE_REQUEST`.
    pub const STATUS_INVALID_DEVICE_REQUEST: NTSTATUS = 0xC000_0010_u32 as i32;
    /// `STATUS_NO_MEMORY`.
    pub const STATUS_NO_MEMORY: NTSTATUS = 0xC000_0017_u32 as i32;
    /// `STATUS_BUFFER_TOO_SMALL`.
    pub const STATUS_BUFFER_TOO_SMALL: NTSTATUS = 0xC000_0023_u32 as i32;
    /// `STATUS_INSUFFICIENT_RESOURCES`.
    pub const STATUS_INSUFFICIENT_RESOURCES: NTSTATUS = 0xC000_009A_u32 as i32;
    /// `STATUS_NOT_SUPPORTED`.
    pub const STATUS_NOT_SUPPORTED: NTSTATUS = 0xC000_00BB_u32 as i32;
    /// `STATUS_CANCELLED`.
    pub const STATUS_CANCELLED: NTSTATUS = 0xC000_0120_u32 as i32;
    /// `STATUS_FILE_FORCED_CLOSED`.
    pub const STATUS_FILE_FORCED_CLOSED: NTSTATUS = 0xC000_00B6_u32 as i32;
    /// `STATUS_CONNECTION_RESET`.
    pub const STATUS_CONNECTION_RESET: NTSTATUS = 0xC000_020D_u32 as i32;
    /// `STATUS_CONNECTION_REFUSED`.
    pub const STATUS_CONNECTION_REFUSED: NTSTATUS = 0xC000_0236_u32 as i32;
    /// `STATUS_CONNECTION_ABORTED`.
    pub const STATUS_CONNECTION_ABORTED: NTSTATUS = 0xC000_0241_u32 as i32;
    /// `STATUS_CONNECTION_DISCONNECTED`.
    pub const STATUS_CONNECTION_DISCONNECTED: NTSTATUS = 0xC000_020C_u32 as i32;
    /// `STATUS_INVALID_CONNECTION`.
    pub const STATUS_INVALID_CONNECTION: NTSTATUS = 0xC000_0140_u32 as i32;
    /// `STATUS_IO_TIMEOUT`.
    pub const STATUS_IO_TIMEOUT: NTSTATUS = 0xC000_00B5_u32 as i32;
    /// `STATUS_DEVICE_NOT_READY`.
    pub const STATUS_DEVICE_NOT_READY: NTSTATUS = 0xC000_00A3_u32 as i32;
    /// `STATUS_DELETE_PENDING`.
    pub const STATUS_DELETE_PENDING: NTSTATUS = 0xC000_0056_u32 as i32;
    /// `STATUS_TOO_MANY_COMMANDS`.
    pub const STATUS_TOO_MANY_COMMANDS: NTSTATUS = 0xC000_00C1_u32 as i32;
    /// `STATUS_INTEGER_OVERFLOW`.
    pub const STATUS_INTEGER_OVERFLOW: NTSTATUS = 0xC000_0095_u32 as i32;
    /// `STATUS_REVISION_MISMATCH`.
    pub const STATUS_REVISION_MISMATCH: NTSTATUS = 0xC000_0059_u32 as i32;
    /// `STATUS_ACCESS_DENIED`.
    pub const STATUS_ACCESS_DENIED: NTSTATUS = 0xC000_0022_u32 as i32;
    /// `STATUS_HOST_UNREACHABLE`.
    pub const STATUS_HOST_UNREACHABLE: NTSTATUS = 0xC000_023D_u32 as i32;
    /// `STATUS_NETWORK_UNREACHABLE`.
    pub const STATUS_NETWORK_UNREACHABLE: NTSTATUS = 0xC000_023C_u32 as i32;
    /// `STATUS_ADDRESS_ALREADY_ASSOCIATED`.
    pub const STATUS_ADDRESS_ALREADY_ASSOCIATED: NTSTATUS = 0xC000_0238_u32 as i32;
}

/// `NT_SUCCESS(status)`.
#[must_use]
pub const fn NT_SUCCESS(status: NTSTATUS) -> bool {
    status >= 0
}

/// `UNICODE_STRING`.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct UNICODE_STRING {
    /// Length in bytes, without a terminator.
    pub Length: u16,
    /// Capacity in bytes.
    pub MaximumLength: u16,
    /// UTF-16 code units.
    pub Buffer: *mut u16,
}
assert_size!(UNICODE_STRING, 16);

/// `LIST_ENTRY`.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct LIST_ENTRY {
    /// `Flink`.
    pub Flink: *mut LIST_ENTRY,
    /// `Blink`.
    pub Blink: *mut LIST_ENTRY,
}

/// `IO_STATUS_BLOCK`.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct IO_STATUS_BLOCK {
    /// `Status` (union with `Pointer`; only the status is used).
    pub Status: NTSTATUS,
    _pad: u32,
    /// `Information`: bytes transferred, or a pointer (for example the new `WSK_SOCKET`).
    pub Information: usize,
}
assert_size!(IO_STATUS_BLOCK, 16);

impl IO_STATUS_BLOCK {
    /// A status block with the given status and information.
    #[must_use]
    pub const fn new(status: NTSTATUS, information: usize) -> Self {
        Self {
            Status: status,
            _pad: 0,
            Information: information,
        }
    }
}

/// `MDL`: a memory descriptor list, followed in memory by its PFN array.
#[repr(C)]
pub struct MDL {
    /// Next MDL of a chain.
    pub Next: *mut MDL,
    /// Size of the MDL including the PFN array.
    pub Size: i16,
    /// `MDL_*` flags.
    pub MdlFlags: i16,
    /// `AllocationProcessorNumber`.
    pub AllocationProcessorNumber: u16,
    /// Reserved.
    pub Reserved: u16,
    /// Owning process for user-mode pages.
    pub Process: *mut c_void,
    /// System address, valid when `MDL_MAPPED_TO_SYSTEM_VA` or `MDL_SOURCE_IS_NONPAGED_POOL`.
    pub MappedSystemVa: *mut c_void,
    /// Page-aligned start of the buffer.
    pub StartVa: *mut c_void,
    /// Bytes described.
    pub ByteCount: u32,
    /// Offset of the buffer within its first page.
    pub ByteOffset: u32,
}
assert_size!(MDL, 0x30);
assert_offset!(MDL, MappedSystemVa, 0x18);
assert_offset!(MDL, ByteCount, 0x28);

/// `MDL_MAPPED_TO_SYSTEM_VA`.
pub const MDL_MAPPED_TO_SYSTEM_VA: i16 = 0x0001;
/// `MDL_PAGES_LOCKED`.
pub const MDL_PAGES_LOCKED: i16 = 0x0002;
/// `MDL_SOURCE_IS_NONPAGED_POOL`.
pub const MDL_SOURCE_IS_NONPAGED_POOL: i16 = 0x0004;
/// `MDL_PARTIAL`.
pub const MDL_PARTIAL: i16 = 0x0010;

/// Opaque `DEVICE_OBJECT`.
#[repr(C)]
pub struct DEVICE_OBJECT {
    _opaque: [u8; 0],
}

/// Opaque `FILE_OBJECT`.
#[repr(C)]
pub struct FILE_OBJECT {
    _opaque: [u8; 0],
}

/// `DRIVER_DISPATCH`.
pub type PDRIVER_DISPATCH =
    Option<unsafe extern "system" fn(*mut DEVICE_OBJECT, *mut IRP) -> NTSTATUS>;
/// `DRIVER_UNLOAD`.
pub type PDRIVER_UNLOAD = Option<unsafe extern "system" fn(*mut DRIVER_OBJECT)>;
/// `DRIVER_CANCEL`.
pub type PDRIVER_CANCEL = Option<unsafe extern "system" fn(*mut DEVICE_OBJECT, *mut IRP)>;
/// `IO_COMPLETION_ROUTINE`.
pub type PIO_COMPLETION_ROUTINE =
    Option<unsafe extern "system" fn(*mut DEVICE_OBJECT, *mut IRP, *mut c_void) -> NTSTATUS>;

/// `IRP_MJ_MAXIMUM_FUNCTION + 1`.
pub const IRP_MJ_COUNT: usize = 0x1c;
/// `IRP_MJ_CREATE`.
pub const IRP_MJ_CREATE: usize = 0x00;
/// `IRP_MJ_CLOSE`.
pub const IRP_MJ_CLOSE: usize = 0x02;
/// `IRP_MJ_DEVICE_CONTROL`.
pub const IRP_MJ_DEVICE_CONTROL: usize = 0x0e;
/// `IRP_MJ_CLEANUP`.
pub const IRP_MJ_CLEANUP: usize = 0x12;

/// `DRIVER_OBJECT`.
#[repr(C)]
pub struct DRIVER_OBJECT {
    /// `Type`.
    pub Type: i16,
    /// `Size`.
    pub Size: i16,
    /// First device object of the driver.
    pub DeviceObject: *mut DEVICE_OBJECT,
    /// `Flags`.
    pub Flags: u32,
    /// `DriverStart`.
    pub DriverStart: *mut c_void,
    /// `DriverSize`.
    pub DriverSize: u32,
    /// `DriverSection`.
    pub DriverSection: *mut c_void,
    /// `DriverExtension`.
    pub DriverExtension: *mut c_void,
    /// `DriverName`.
    pub DriverName: UNICODE_STRING,
    /// `HardwareDatabase`.
    pub HardwareDatabase: *mut UNICODE_STRING,
    /// `FastIoDispatch`.
    pub FastIoDispatch: *mut c_void,
    /// `DriverInit`.
    pub DriverInit: *mut c_void,
    /// `DriverStartIo`.
    pub DriverStartIo: *mut c_void,
    /// `DriverUnload`.
    pub DriverUnload: PDRIVER_UNLOAD,
    /// `MajorFunction`.
    pub MajorFunction: [PDRIVER_DISPATCH; IRP_MJ_COUNT],
}
assert_offset!(DRIVER_OBJECT, DriverUnload, 0x68);
assert_offset!(DRIVER_OBJECT, MajorFunction, 0x70);
assert_size!(DRIVER_OBJECT, 0x150);

/// `IRP` (x64 layout; fields we never touch are kept as padding of the right size).
#[repr(C)]
pub struct IRP {
    /// `Type` (`IO_TYPE_IRP`).
    pub Type: i16,
    /// `Size` in bytes including the stack locations.
    pub Size: u16,
    /// `AllocationProcessorNumber`.
    pub AllocationProcessorNumber: u16,
    /// Reserved.
    pub Reserved: u16,
    /// MDL of a direct-I/O buffer.
    pub MdlAddress: *mut MDL,
    /// `Flags`.
    pub Flags: u32,
    /// `AssociatedIrp.SystemBuffer` (the union's other members are not used).
    pub SystemBuffer: *mut c_void,
    /// `ThreadListEntry`.
    pub ThreadListEntry: LIST_ENTRY,
    /// `IoStatus`.
    pub IoStatus: IO_STATUS_BLOCK,
    /// `RequestorMode`.
    pub RequestorMode: KPROCESSOR_MODE,
    /// `PendingReturned`.
    pub PendingReturned: BOOLEAN,
    /// `StackCount`.
    pub StackCount: i8,
    /// `CurrentLocation` (1-based; `StackCount + 1` when the IRP is fresh).
    pub CurrentLocation: i8,
    /// `Cancel`.
    pub Cancel: BOOLEAN,
    /// `CancelIrql`.
    pub CancelIrql: KIRQL,
    /// `ApcEnvironment`.
    pub ApcEnvironment: i8,
    /// `AllocationFlags`.
    pub AllocationFlags: u8,
    /// `UserIosb`.
    pub UserIosb: *mut IO_STATUS_BLOCK,
    /// `UserEvent`.
    pub UserEvent: *mut c_void,
    /// `Overlay` (`AsynchronousParameters` / `AllocationSize`).
    pub Overlay: [usize; 2],
    /// `CancelRoutine` (set with `IoSetCancelRoutine`).
    pub CancelRoutine: PDRIVER_CANCEL,
    /// `UserBuffer`.
    pub UserBuffer: *mut c_void,
    /// `Tail.Overlay.DriverContext`: four pointers the owning driver may use.
    pub DriverContext: [*mut c_void; 4],
    /// `Tail.Overlay.Thread`.
    pub Thread: *mut c_void,
    /// `Tail.Overlay.AuxiliaryBuffer`.
    pub AuxiliaryBuffer: *mut c_void,
    /// `Tail.Overlay.ListEntry`.
    pub ListEntry: LIST_ENTRY,
    /// `Tail.Overlay.CurrentStackLocation`.
    pub CurrentStackLocation: *mut IO_STACK_LOCATION,
    /// `Tail.Overlay.OriginalFileObject`.
    pub OriginalFileObject: *mut FILE_OBJECT,
    _tail_rest: [usize; 1],
}
assert_offset!(IRP, MdlAddress, 0x08);
assert_offset!(IRP, SystemBuffer, 0x18);
assert_offset!(IRP, IoStatus, 0x30);
assert_offset!(IRP, PendingReturned, 0x41);
assert_offset!(IRP, StackCount, 0x42);
assert_offset!(IRP, CurrentLocation, 0x43);
assert_offset!(IRP, Cancel, 0x44);
assert_offset!(IRP, CancelRoutine, 0x68);
assert_offset!(IRP, UserBuffer, 0x70);
assert_offset!(IRP, DriverContext, 0x78);
assert_offset!(IRP, CurrentStackLocation, 0xb8);
assert_size!(IRP, 0xd0);

/// `Parameters.DeviceIoControl` of an `IO_STACK_LOCATION`.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct DeviceIoControlParameters {
    /// `OutputBufferLength`.
    pub OutputBufferLength: u32,
    _pad0: u32,
    /// `InputBufferLength`.
    pub InputBufferLength: u32,
    _pad1: u32,
    /// `IoControlCode`.
    pub IoControlCode: u32,
    _pad2: u32,
    /// `Type3InputBuffer`.
    pub Type3InputBuffer: *mut c_void,
}

/// `IO_STACK_LOCATION` (x64 layout). `Parameters` is kept as the generic four
/// arguments; [`IO_STACK_LOCATION::device_io_control`] reads the IOCTL view.
#[repr(C)]
pub struct IO_STACK_LOCATION {
    /// `MajorFunction`.
    pub MajorFunction: u8,
    /// `MinorFunction`.
    pub MinorFunction: u8,
    /// `Flags`.
    pub Flags: u8,
    /// `Control` (`SL_*`).
    pub Control: u8,
    /// `Parameters` (a 32-byte union).
    pub Parameters: [usize; 4],
    /// `DeviceObject`.
    pub DeviceObject: *mut DEVICE_OBJECT,
    /// `FileObject`.
    pub FileObject: *mut FILE_OBJECT,
    /// `CompletionRoutine`.
    pub CompletionRoutine: PIO_COMPLETION_ROUTINE,
    /// `Context`.
    pub Context: *mut c_void,
}
assert_offset!(IO_STACK_LOCATION, Parameters, 0x08);
assert_offset!(IO_STACK_LOCATION, DeviceObject, 0x28);
assert_offset!(IO_STACK_LOCATION, FileObject, 0x30);
assert_offset!(IO_STACK_LOCATION, CompletionRoutine, 0x38);
assert_offset!(IO_STACK_LOCATION, Context, 0x40);
assert_size!(IO_STACK_LOCATION, 0x48);
assert_size!(DeviceIoControlParameters, 32);
assert_offset!(DeviceIoControlParameters, InputBufferLength, 0x08);
assert_offset!(DeviceIoControlParameters, IoControlCode, 0x10);

impl IO_STACK_LOCATION {
    /// `Parameters.DeviceIoControl`.
    #[must_use]
    pub const fn device_io_control(&self) -> DeviceIoControlParameters {
        let p = self.Parameters;
        // CAST: each ULONG sits in the low half of a POINTER_ALIGNMENT slot (x64, little-endian).
        DeviceIoControlParameters {
            OutputBufferLength: p[0] as u32,
            _pad0: 0,
            InputBufferLength: p[1] as u32,
            _pad1: 0,
            IoControlCode: p[2] as u32,
            _pad2: 0,
            Type3InputBuffer: p[3] as *mut c_void,
        }
    }
}

/// `SL_PENDING_RETURNED`.
pub const SL_PENDING_RETURNED: u8 = 0x01;
/// `SL_INVOKE_ON_CANCEL`.
pub const SL_INVOKE_ON_CANCEL: u8 = 0x20;
/// `SL_INVOKE_ON_SUCCESS`.
pub const SL_INVOKE_ON_SUCCESS: u8 = 0x40;
/// `SL_INVOKE_ON_ERROR`.
pub const SL_INVOKE_ON_ERROR: u8 = 0x80;

/// `IO_NO_INCREMENT`.
pub const IO_NO_INCREMENT: i8 = 0;
/// `IO_NETWORK_INCREMENT`.
pub const IO_NETWORK_INCREMENT: i8 = 2;

/// `KEVENT` (a `DISPATCHER_HEADER` and its wait list: 24 bytes, opaque to us).
#[repr(C, align(8))]
pub struct KEVENT {
    _header: [u64; 3],
}
assert_size!(KEVENT, 24);

impl KEVENT {
    /// Zeroed storage, to be initialised with `KeInitializeEvent` before use.
    #[must_use]
    pub const fn zeroed() -> Self {
        Self { _header: [0; 3] }
    }
}

/// `EVENT_TYPE`.
pub type EVENT_TYPE = i32;
/// `NotificationEvent`.
pub const NotificationEvent: EVENT_TYPE = 0;
/// `SynchronizationEvent`.
pub const SynchronizationEvent: EVENT_TYPE = 1;
/// `Executive` wait reason.
pub const Executive: i32 = 0;

/// `FILE_DEVICE_SECURE_OPEN` device characteristic.
pub const FILE_DEVICE_SECURE_OPEN: u32 = 0x0000_0100;

/// UTF-16 of an ASCII string, for `UNICODE_STRING` constants in `no_std` code.
///
/// # Panics
/// At compile time, if `N` is not the string's length or it is not ASCII.
#[must_use]
pub const fn ascii_utf16<const N: usize>(s: &str) -> [u16; N] {
    let bytes = s.as_bytes();
    assert!(bytes.len() == N, "length mismatch");
    let mut out = [0u16; N];
    let mut i = 0;
    while i < N {
        assert!(bytes[i].is_ascii(), "not ASCII");
        out[i] = bytes[i] as u16;
        i += 1;
    }
    out
}
