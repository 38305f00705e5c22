//! The named device and symbolic link every WDM image of ours creates in `DriverEntry`
//! and deletes in `DriverUnload`, and completing a dispatched IRP.

use core::ptr;
use core::sync::atomic::{AtomicPtr, Ordering};

use wsksend_ffi::{
    DEVICE_OBJECT, DRIVER_OBJECT, FALSE, FILE_DEVICE_SECURE_OPEN, IO_STATUS_BLOCK, IRP,
    IoCreateDevice, IoCreateSymbolicLink, IoDeleteDevice, IoDeleteSymbolicLink, IofCompleteRequest,
    NT_SUCCESS, NTSTATUS, UNICODE_STRING,
};

/// A `UNICODE_STRING` over a static UTF-16 name (see `wsksend_ffi::ascii_utf16`).
#[must_use]
pub fn unicode(name: &'static [u16]) -> UNICODE_STRING {
    // CAST: the names are short constants, far below u16::MAX bytes.
    let bytes = (name.len() * 2) as u16;
    UNICODE_STRING {
        Length: bytes,
        MaximumLength: bytes,
        // The kernel only reads through this pointer.
        Buffer: name.as_ptr().cast_mut(),
    }
}

/// A device object with a symbolic link, created once and deleted once.
pub struct NamedDevice {
    name: &'static [u16],
    link: &'static [u16],
    device: AtomicPtr<DEVICE_OBJECT>,
}

impl NamedDevice {
    /// Names for a device (`\Device\...`) and its link (`\DosDevices\...`).
    #[must_use]
    pub const fn new(name: &'static [u16], link: &'static [u16]) -> Self {
        Self {
            name,
            link,
            device: AtomicPtr::new(ptr::null_mut()),
        }
    }

    /// The device object (null before [`Self::create`] and after [`Self::delete`]).
    #[must_use]
    pub fn get(&self) -> *mut DEVICE_OBJECT {
        self.device.load(Ordering::Acquire)
    }

    /// Creates the device (`FILE_DEVICE_SECURE_OPEN`, not exclusive) and its link; on
    /// failure nothing is left behind.
    ///
    /// # Safety
    /// Called from `DriverEntry` with the live driver object.
    ///
    /// # Errors
    /// The status of `IoCreateDevice` or `IoCreateSymbolicLink`.
    pub unsafe fn create(
        &self,
        driver: *mut DRIVER_OBJECT,
        device_type: u32,
    ) -> Result<(), NTSTATUS> {
        let mut name = unicode(self.name);
        let mut device = ptr::null_mut();
        // SAFETY: `driver` is live (caller); `name` and `device` outlive the call.
        let status = unsafe {
            IoCreateDevice(
                driver,
                0,
                &raw mut name,
                device_type,
                FILE_DEVICE_SECURE_OPEN,
                FALSE,
                &raw mut device,
            )
        };
        if !NT_SUCCESS(status) {
            return Err(status);
        }
        let mut link = unicode(self.link);
        // SAFETY: both strings are valid for the call.
        let status = unsafe { IoCreateSymbolicLink(&raw mut link, &raw mut name) };
        if !NT_SUCCESS(status) {
            // SAFETY: created above; nothing else references it yet.
            unsafe { IoDeleteDevice(device) };
            return Err(status);
        }
        self.device.store(device, Ordering::Release);
        Ok(())
    }

    /// Deletes the link and the device, if created.
    ///
    /// # Safety
    /// No request is being dispatched or can arrive (`DriverUnload`, or `DriverEntry`
    /// failing after [`Self::create`]).
    pub unsafe fn delete(&self) {
        let device = self.device.swap(ptr::null_mut(), Ordering::AcqRel);
        if device.is_null() {
            return;
        }
        let mut link = unicode(self.link);
        // SAFETY: the link was created together with the device.
        unsafe { IoDeleteSymbolicLink(&raw mut link) };
        // SAFETY: our device, with no request in progress (caller).
        unsafe { IoDeleteDevice(device) };
    }
}

/// Completes a dispatched IRP with `status` and `information`; returns `status`.
///
/// # Safety
/// `irp` is a live IRP dispatched to us that no one else will complete.
pub unsafe fn complete(irp: *mut IRP, status: NTSTATUS, information: usize, boost: i8) -> NTSTATUS {
    // SAFETY: we own the IRP until IofCompleteRequest.
    let irp_ref = unsafe { &mut *irp };
    irp_ref.IoStatus = IO_STATUS_BLOCK::new(status, information);
    // SAFETY: as above; after this call the IRP is no longer ours.
    unsafe { IofCompleteRequest(irp, boost) };
    status
}
