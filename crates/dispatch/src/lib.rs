//! The IOCTL dispatcher both front ends share.
//!
//! A front end (KMDF `EvtIoDeviceControl` or a WDM `IRP_MJ_DEVICE_CONTROL` routine)
//! translates its request object into a [`Request`], calls [`Dispatcher::device_control`]
//! and completes the request with the returned [`Outcome`]. Everything about parsing,
//! validation and the meaning of each code lives here, so the front ends stay thin and
//! the logic is tested on the host.
#![cfg_attr(not(test), no_std)]
#![forbid(unsafe_code)]

use wsksend_ffi::NTSTATUS;
use wsksend_ffi::status::{STATUS_BUFFER_TOO_SMALL, STATUS_INVALID_DEVICE_REQUEST, STATUS_SUCCESS};
use wsksend_protocol::{Ioctl, VersionInfo};

/// How a request ends.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Outcome {
    /// Final status of the request.
    pub status: NTSTATUS,
    /// `IoStatus.Information`: bytes written to the output buffer (or sent).
    pub information: usize,
}

impl Outcome {
    /// A failure that wrote nothing.
    #[must_use]
    pub const fn fail(status: NTSTATUS) -> Self {
        Self {
            status,
            information: 0,
        }
    }

    /// Success with `information` bytes of output.
    #[must_use]
    pub const fn ok(information: usize) -> Self {
        Self {
            status: STATUS_SUCCESS,
            information,
        }
    }
}

/// A device-control request as the front end hands it over.
///
/// `system` is the I/O manager's system buffer. For `METHOD_BUFFERED` input and output
/// share it (the input is fully parsed before any output is written); its length is
/// `max(input_len, output_len)`.
pub struct Request<'a> {
    /// The IOCTL code.
    pub code: u32,
    /// The system buffer.
    pub system: &'a mut [u8],
    /// Bytes of input in `system`.
    pub input_len: usize,
    /// Bytes of output the caller accepts in `system`.
    pub output_len: usize,
}

/// The driver-wide dispatcher state.
#[derive(Default)]
pub struct Dispatcher {}

impl Dispatcher {
    /// A dispatcher with no connections.
    #[must_use]
    pub const fn new() -> Self {
        Self {}
    }

    /// Handles one `IRP_MJ_DEVICE_CONTROL` request.
    ///
    /// # IRQL
    /// `PASSIVE_LEVEL` (called from the front end's dispatch routine).
    pub fn device_control(&self, request: Request<'_>) -> Outcome {
        match Ioctl::from(request.code) {
            Ioctl::GetVersion => get_version(request),
            Ioctl::Unknown(_) => Outcome::fail(STATUS_INVALID_DEVICE_REQUEST),
        }
    }
}

fn get_version(request: Request<'_>) -> Outcome {
    let Some(out) = request.system.get_mut(..request.output_len) else {
        return Outcome::fail(STATUS_BUFFER_TOO_SMALL);
    };
    match VersionInfo::current().emit(out) {
        Ok(written) => Outcome::ok(written),
        Err(_) => Outcome::fail(STATUS_BUFFER_TOO_SMALL),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use wsksend_protocol::IOCTL_WSKSEND_GET_VERSION;

    fn call(code: u32, system: &mut [u8], input_len: usize, output_len: usize) -> Outcome {
        Dispatcher::new().device_control(Request {
            code,
            system,
            input_len,
            output_len,
        })
    }

    #[test]
    fn get_version_writes_current_version() {
        let mut buf = [0xa5u8; 32];
        let out = call(IOCTL_WSKSEND_GET_VERSION, &mut buf, 0, 32);
        assert_eq!(out, Outcome::ok(VersionInfo::WIRE_SIZE));
        assert_eq!(VersionInfo::parse(&buf).unwrap(), VersionInfo::current());
        assert_eq!(&buf[16..], &[0xa5; 16]);
    }

    #[test]
    fn get_version_short_output_writes_nothing() {
        let mut buf = [0xa5u8; 32];
        let out = call(IOCTL_WSKSEND_GET_VERSION, &mut buf, 0, 15);
        assert_eq!(out, Outcome::fail(STATUS_BUFFER_TOO_SMALL));
        assert_eq!(buf, [0xa5; 32]);
    }

    #[test]
    fn get_version_output_len_beyond_buffer_is_rejected() {
        // A front end bug (lengths larger than the buffer) must not panic.
        let mut buf = [0u8; 8];
        let out = call(IOCTL_WSKSEND_GET_VERSION, &mut buf, 0, 64);
        assert_eq!(out, Outcome::fail(STATUS_BUFFER_TOO_SMALL));
    }

    #[test]
    fn unknown_code_is_invalid_device_request() {
        let mut buf = [0u8; 16];
        let out = call(0x8A57_2FFC, &mut buf, 16, 16);
        assert_eq!(out, Outcome::fail(STATUS_INVALID_DEVICE_REQUEST));
    }
}
