//! A handle to the WskSend device and synchronous IOCTLs over it.

use std::ffi::c_void;
use std::ptr;

use windows_sys::Win32::Foundation::{
    CloseHandle, GENERIC_READ, GENERIC_WRITE, GetLastError, HANDLE, INVALID_HANDLE_VALUE,
};
use windows_sys::Win32::Storage::FileSystem::{
    CreateFileW, FILE_SHARE_READ, FILE_SHARE_WRITE, OPEN_EXISTING,
};
use windows_sys::Win32::System::IO::DeviceIoControl;
use wsksend_protocol::{IOCTL_WSKSEND_GET_VERSION, USER_PATH, VersionInfo};

/// A Win32 error code (`GetLastError`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Win32Error(pub u32);

impl std::fmt::Display for Win32Error {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Win32 error {}", self.0)
    }
}

/// An open handle to `\\.\WskSend`, closed on drop.
pub struct Device {
    handle: HANDLE,
}

fn last_error() -> Win32Error {
    // SAFETY: GetLastError has no preconditions.
    Win32Error(unsafe { GetLastError() })
}

impl Device {
    /// Opens the device.
    ///
    /// # Errors
    /// The Win32 error of `CreateFileW` (`ERROR_FILE_NOT_FOUND` when the driver is not loaded).
    pub fn open() -> Result<Self, Win32Error> {
        let path: Vec<u16> = USER_PATH.encode_utf16().chain(Some(0)).collect();
        // SAFETY: `path` is NUL-terminated and outlives the call; other pointers are null.
        let handle = unsafe {
            CreateFileW(
                path.as_ptr(),
                GENERIC_READ | GENERIC_WRITE,
                FILE_SHARE_READ | FILE_SHARE_WRITE,
                ptr::null(),
                OPEN_EXISTING,
                0,
                ptr::null_mut(),
            )
        };
        if handle == INVALID_HANDLE_VALUE {
            return Err(last_error());
        }
        Ok(Self { handle })
    }

    /// A synchronous `DeviceIoControl`; returns the bytes written to `output`.
    ///
    /// # Errors
    /// The Win32 error the driver's status maps to.
    pub fn ioctl(&self, code: u32, input: &[u8], output: &mut [u8]) -> Result<usize, Win32Error> {
        let mut returned = 0u32;
        let in_len = u32::try_from(input.len()).map_err(|_| Win32Error(87))?;
        let out_len = u32::try_from(output.len()).map_err(|_| Win32Error(87))?;
        // SAFETY: the buffers are valid for their lengths for the whole (synchronous)
        // call; the handle is open (type invariant).
        let ok = unsafe {
            DeviceIoControl(
                self.handle,
                code,
                if input.is_empty() {
                    ptr::null()
                } else {
                    input.as_ptr().cast::<c_void>()
                },
                in_len,
                if output.is_empty() {
                    ptr::null_mut()
                } else {
                    output.as_mut_ptr().cast::<c_void>()
                },
                out_len,
                &raw mut returned,
                ptr::null_mut(),
            )
        };
        if ok == 0 {
            return Err(last_error());
        }
        Ok(returned as usize)
    }

    /// `IOCTL_WSKSEND_GET_VERSION`.
    ///
    /// # Errors
    /// The Win32 error of the IOCTL, or `ERROR_INVALID_DATA` (13) for a malformed reply.
    pub fn version(&self) -> Result<VersionInfo, Win32Error> {
        let mut buf = [0u8; VersionInfo::WIRE_SIZE];
        let n = self.ioctl(IOCTL_WSKSEND_GET_VERSION, &[], &mut buf)?;
        if n != VersionInfo::WIRE_SIZE {
            return Err(Win32Error(13));
        }
        VersionInfo::parse(&buf).map_err(|_| Win32Error(13))
    }
}

impl Drop for Device {
    fn drop(&mut self) {
        // SAFETY: the handle is open and owned by us.
        unsafe { CloseHandle(self.handle) };
    }
}
