//! A host-only model of the Windows kernel and of a WSK provider, with a rule checker.
//!
//! The crate defines, with C linkage and the `system` ABI, every routine that
//! `wsksend-ffi` imports from `ntoskrnl.exe` and `netio.sys`
//! ([`wdm.h`](https://learn.microsoft.com/windows-hardware/drivers/ddi/wdm/),
//! [`wsk.h`](https://learn.microsoft.com/windows-hardware/drivers/ddi/wsk/)). A host test
//! links it with `use wsksend_kernel_model as _;` and the engine's real code then runs
//! against:
//!
//! - IRPs with real stack locations and the I/O manager's completion walk ([`irp`]);
//! - MDLs with lock state, partial MDLs and "in flight" tracking ([`mdl`]);
//! - tagged pool ([`pool`]); events that really block and spin locks with a per-thread
//!   model IRQL ([`sync`]);
//! - a WSK provider over real loopback sockets, with per-call fault injection ([`wsk`]);
//! - a checker that records every broken kernel rule and fails the test ([`Rule`],
//!   [`Session`]);
//! - a TCP [`Sink`] to receive what the provider sends;
//! - a low-resources simulation that fails driver allocations (pool, IRPs, MDLs and,
//!   with [`ModelAllocator`], the Rust heap) every Nth or at random from a seed
//!   ([`lowres`]).
//! - hooks that put the model's locks and completions under a controlled scheduler,
//!   for schedule exploration ([`sched`]).
//!
//! A test starts with [`session()`], which serialises tests that use the model and
//! resets it, and ends with [`Session::finish`] (no violation, no leak) or
//! [`Session::finish_expecting`] (a given rule must have been broken).
//!
//! Objects handed back to the model are looked up in its tables before it touches
//! them: a pointer the model freed is reported as [`Rule::UseAfterFree`] or
//! [`Rule::DoubleFree`] instead of crashing, because freed IRPs and MDLs stay
//! quarantined (poisoned, not returned to the allocator) until the session ends.

mod checker;
pub mod irp;
pub mod lowres;
pub mod mdl;
pub mod pool;
mod reset;
pub mod sched;
mod sink;
mod socket;
pub mod sync;
pub mod wsk;

pub use checker::{Fault, Op, Rule, SendMode, SendRecord, Session, Violation, session};
pub use irp::model_device as device;
pub use lowres::{Alloc, LowResStats, LowResources, ModelAllocator};
pub use sink::Sink;

/// Defines an exported kernel routine and checks at compile time that its signature is
/// the one `wsksend-ffi` declares (the signature is written once, here).
macro_rules! kernel_export {
    (
        $(#[$meta:meta])*
        fn $name:ident($($arg:ident : $ty:ty),* $(,)?) $(-> $ret:ty)? $body:block
    ) => {
        $(#[$meta])*
        #[allow(non_snake_case, reason = "parameter names as the WDK spells them")]
        #[unsafe(no_mangle)]
        pub unsafe extern "system" fn $name($($arg: $ty),*) $(-> $ret)? {
            // The model's own code: its allocations never fail (see `lowres`).
            let _model = $crate::lowres::enter_model();
            $body
        }

        const _: [unsafe extern "system" fn($($ty),*) $(-> $ret)?; 2] =
            [$name, wsksend_ffi::$name];
    };
}
pub(crate) use kernel_export;

mod device {
    //! Device-object routines: only the front ends use them, so they are trivial here.

    use wsksend_ffi::{
        BOOLEAN, DEVICE_OBJECT, DRIVER_OBJECT, NTSTATUS, UNICODE_STRING, status::STATUS_SUCCESS,
    };

    kernel_export! {
        /// `IoCreateDevice`: not modelled; returns `STATUS_SUCCESS` and a null device.
        ///
        /// # Safety
        /// `DeviceObject`, if not null, is writable.
        fn IoCreateDevice(
            DriverObject: *mut DRIVER_OBJECT,
            DeviceExtensionSize: u32,
            DeviceName: *mut UNICODE_STRING,
            DeviceType: u32,
            DeviceCharacteristics: u32,
            Exclusive: BOOLEAN,
            DeviceObject: *mut *mut DEVICE_OBJECT,
        ) -> NTSTATUS {
            let _ = (DriverObject, DeviceExtensionSize, DeviceName, DeviceType);
            let _ = (DeviceCharacteristics, Exclusive);
            if !DeviceObject.is_null() {
                // SAFETY: the caller guarantees a non-null `DeviceObject` is writable.
                unsafe { DeviceObject.write(core::ptr::null_mut()) };
            }
            STATUS_SUCCESS
        }
    }

    kernel_export! {
        /// `IoDeleteDevice`: not modelled; does nothing.
        ///
        /// # Safety
        /// None: the pointer is not used.
        fn IoDeleteDevice(DeviceObject: *mut DEVICE_OBJECT) {
            let _ = DeviceObject;
        }
    }

    kernel_export! {
        /// `IoCreateSymbolicLink`: not modelled; returns `STATUS_SUCCESS`.
        ///
        /// # Safety
        /// None: the pointers are not used.
        fn IoCreateSymbolicLink(
            SymbolicLinkName: *mut UNICODE_STRING,
            DeviceName: *mut UNICODE_STRING,
        ) -> NTSTATUS {
            let _ = (SymbolicLinkName, DeviceName);
            STATUS_SUCCESS
        }
    }

    kernel_export! {
        /// `IoDeleteSymbolicLink`: not modelled; returns `STATUS_SUCCESS`.
        ///
        /// # Safety
        /// None: the pointer is not used.
        fn IoDeleteSymbolicLink(SymbolicLinkName: *mut UNICODE_STRING) -> NTSTATUS {
            let _ = SymbolicLinkName;
            STATUS_SUCCESS
        }
    }

    kernel_export! {
        /// `KeBugCheckEx`: panics with the bug-check code and parameters.
        ///
        /// The routine has the `system` ABI, which cannot unwind, so the panic aborts
        /// the test process after printing its message (as a bug check stops the
        /// machine).
        ///
        /// # Safety
        /// None.
        fn KeBugCheckEx(
            BugCheckCode: u32,
            BugCheckParameter1: usize,
            BugCheckParameter2: usize,
            BugCheckParameter3: usize,
            BugCheckParameter4: usize,
        ) -> ! {
            panic!(
                "KeBugCheckEx({BugCheckCode:#x}, {BugCheckParameter1:#x}, \
                 {BugCheckParameter2:#x}, {BugCheckParameter3:#x}, {BugCheckParameter4:#x})"
            )
        }
    }
}
