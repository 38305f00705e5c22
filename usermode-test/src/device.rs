//! The WskSend device from user mode: overlapped `DeviceIoControl` with an I/O
//! completion port, the way a `WSASend` caller with many sends in flight works.

use std::ffi::c_void;
use std::net::SocketAddr;
use std::ptr;

use windows_sys::Win32::Foundation::{
    CloseHandle, ERROR_IO_PENDING, GENERIC_READ, GENERIC_WRITE, GetLastError, HANDLE,
    INVALID_HANDLE_VALUE, WAIT_TIMEOUT,
};
use windows_sys::Win32::Storage::FileSystem::{
    CreateFileW, FILE_FLAG_OVERLAPPED, FILE_SHARE_READ, FILE_SHARE_WRITE, OPEN_EXISTING,
};
use windows_sys::Win32::System::IO::{
    CancelIoEx, CreateIoCompletionPort, DeviceIoControl, GetOverlappedResult,
    GetQueuedCompletionStatus, OVERLAPPED,
};
use windows_sys::Win32::System::Threading::CreateEventW;
use wsksend_protocol::{
    ConnectReply, ConnectRequest, HandleRequest, IOCTL_WSKSEND_CLOSE, IOCTL_WSKSEND_CONNECT,
    IOCTL_WSKSEND_GET_VERSION, IOCTL_WSKSEND_SEND, IOCTL_WSKSEND_STATS, SendRequest, Stats,
    USER_PATH, VersionInfo, WireSegment,
};

/// A Win32 error code (`GetLastError`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Win32Error(pub u32);

/// `ERROR_INVALID_DATA`: a reply the harness could not parse.
const ERROR_INVALID_DATA: u32 = 13;

impl std::fmt::Display for Win32Error {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match wsksend_protocol::mapping_for_win32(self.0) {
            Some(m) => write!(f, "Win32 error {} ({}, WSA {})", self.0, m.name, m.wsa),
            None => write!(f, "Win32 error {}", self.0),
        }
    }
}

fn last_error() -> Win32Error {
    // SAFETY: GetLastError has no preconditions.
    Win32Error(unsafe { GetLastError() })
}

/// An open handle to `\\.\WskSend` (overlapped) with its completion port.
pub struct Device {
    handle: HANDLE,
    port: HANDLE,
}

// SAFETY: kernel handles may be used from any thread.
unsafe impl Send for Device {}
// SAFETY: as above; every call passes its own OVERLAPPED.
unsafe impl Sync for Device {}

/// One asynchronous send: its OVERLAPPED and the buffers the driver reads until it
/// completes. Must stay put (boxed) while in flight; `overlapped` is the first field so
/// a completion's OVERLAPPED pointer leads back to it.
#[repr(C)]
pub struct PendingSend {
    overlapped: OVERLAPPED,
    input: Vec<u8>,
    payload: Vec<u8>,
    /// Caller's tag (for example the stream offset).
    pub tag: u64,
    /// Bytes the send should report.
    pub expected: usize,
}

impl PendingSend {
    /// A send of `segments` of `payload` on `handle` with `flags`.
    #[must_use]
    pub fn new(handle: u64, flags: u32, payload: Vec<u8>, segments: &[WireSegment]) -> Box<Self> {
        let mut input =
            vec![0u8; SendRequest::HEADER_SIZE + segments.len() * SendRequest::SEGMENT_SIZE];
        let _ = SendRequest::emit(&mut input, handle, flags, segments);
        let expected = segments.iter().map(|s| s.len as usize).sum();
        Box::new(Self {
            // SAFETY: OVERLAPPED is plain data; all-zero is its initial state.
            overlapped: unsafe { std::mem::zeroed() },
            input,
            payload,
            tag: 0,
            expected,
        })
    }

    /// A send with a raw (possibly malformed) input buffer, for bad-input tests.
    #[must_use]
    pub fn raw(input: Vec<u8>, payload: Vec<u8>) -> Box<Self> {
        Box::new(Self {
            // SAFETY: as above.
            overlapped: unsafe { std::mem::zeroed() },
            input,
            payload,
            tag: 0,
            expected: 0,
        })
    }
}

/// Identifies a started send for [`Device::cancel`] (the address of its OVERLAPPED,
/// only ever compared, never dereferenced by user mode).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SendTicket(usize);

impl SendTicket {
    /// The ticket of a completed send (to match it against started ones).
    #[must_use]
    pub fn of(send: &PendingSend) -> Self {
        Self(std::ptr::from_ref(&send.overlapped) as usize)
    }
}

/// A finished asynchronous send.
pub struct Completed {
    /// The send (its buffers are free again).
    pub send: Box<PendingSend>,
    /// Bytes sent, or the error.
    pub result: Result<usize, Win32Error>,
}

impl Device {
    /// Opens the device for overlapped I/O.
    ///
    /// # Errors
    /// The Win32 error of `CreateFileW` (`ERROR_FILE_NOT_FOUND` when the driver is not loaded).
    pub fn open() -> Result<Self, Win32Error> {
        Self::open_path(USER_PATH)
    }

    /// Opens another device by its user-mode path (the kernel-API test driver).
    ///
    /// # Errors
    /// The Win32 error of `CreateFileW`.
    pub fn open_path(user_path: &str) -> Result<Self, Win32Error> {
        let path: Vec<u16> = user_path.encode_utf16().chain(Some(0)).collect();
        // SAFETY: `path` is NUL-terminated and outlives the call; other pointers are null.
        let handle = unsafe {
            CreateFileW(
                path.as_ptr(),
                GENERIC_READ | GENERIC_WRITE,
                FILE_SHARE_READ | FILE_SHARE_WRITE,
                ptr::null(),
                OPEN_EXISTING,
                FILE_FLAG_OVERLAPPED,
                ptr::null_mut(),
            )
        };
        if handle == INVALID_HANDLE_VALUE {
            return Err(last_error());
        }
        // SAFETY: `handle` is open; a new port is created for it.
        let port = unsafe { CreateIoCompletionPort(handle, ptr::null_mut(), 0, 0) };
        if port.is_null() {
            let e = last_error();
            // SAFETY: opened above.
            unsafe { CloseHandle(handle) };
            return Err(e);
        }
        Ok(Self { handle, port })
    }

    /// A synchronous `DeviceIoControl` (overlapped, waited for, not reported to the
    /// completion port); returns the bytes written to `output`.
    ///
    /// # Errors
    /// The Win32 error the driver's status maps to.
    pub fn ioctl(&self, code: u32, input: &[u8], output: &mut [u8]) -> Result<usize, Win32Error> {
        let in_len = u32::try_from(input.len()).map_err(|_| Win32Error(87))?;
        let out_len = u32::try_from(output.len()).map_err(|_| Win32Error(87))?;
        // SAFETY: creating an unnamed manual-reset event.
        let event = unsafe { CreateEventW(ptr::null(), 1, 0, ptr::null()) };
        if event.is_null() {
            return Err(last_error());
        }
        // SAFETY: OVERLAPPED is plain data.
        let mut ov: OVERLAPPED = unsafe { std::mem::zeroed() };
        // The low bit keeps this completion off the port.
        ov.hEvent = (event as usize | 1) as HANDLE;
        let mut returned = 0u32;
        // SAFETY: buffers and `ov` outlive the call and the wait below; handle is open.
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
                &raw mut ov,
            )
        };
        let result = if ok != 0 {
            Ok(returned as usize)
        } else {
            let e = last_error();
            if e.0 == ERROR_IO_PENDING {
                // SAFETY: `ov` belongs to the call issued above; wait for it.
                let done = unsafe {
                    GetOverlappedResult(self.handle, &raw const ov, &raw mut returned, 1)
                };
                if done != 0 {
                    Ok(returned as usize)
                } else {
                    Err(last_error())
                }
            } else {
                Err(e)
            }
        };
        // SAFETY: created above; the I/O has completed.
        unsafe { CloseHandle(event) };
        result
    }

    /// `IOCTL_WSKSEND_GET_VERSION`.
    ///
    /// # Errors
    /// The Win32 error of the IOCTL, or `ERROR_INVALID_DATA` for a malformed reply.
    pub fn version(&self) -> Result<VersionInfo, Win32Error> {
        let mut buf = [0u8; VersionInfo::WIRE_SIZE];
        let n = self.ioctl(IOCTL_WSKSEND_GET_VERSION, &[], &mut buf)?;
        if n != VersionInfo::WIRE_SIZE {
            return Err(Win32Error(ERROR_INVALID_DATA));
        }
        VersionInfo::parse(&buf).map_err(|_| Win32Error(ERROR_INVALID_DATA))
    }

    /// `IOCTL_WSKSEND_CONNECT`: returns the connection handle.
    ///
    /// # Errors
    /// The Win32 error (for example `ERROR_CONNECTION_REFUSED`).
    pub fn connect(
        &self,
        remote: SocketAddr,
        flags: u32,
        max_posted: u32,
    ) -> Result<u64, Win32Error> {
        let req = ConnectRequest {
            remote,
            flags,
            timeout_ms: 10_000,
            max_posted,
        };
        let mut input = [0u8; ConnectRequest::WIRE_SIZE];
        let _ = req.emit(&mut input);
        let mut out = [0u8; ConnectReply::WIRE_SIZE];
        let n = self.ioctl(IOCTL_WSKSEND_CONNECT, &input, &mut out)?;
        if n != ConnectReply::WIRE_SIZE {
            return Err(Win32Error(ERROR_INVALID_DATA));
        }
        ConnectReply::parse(&out)
            .map(|r| r.handle)
            .map_err(|_| Win32Error(ERROR_INVALID_DATA))
    }

    /// `IOCTL_WSKSEND_CLOSE`.
    ///
    /// # Errors
    /// The Win32 error (`ERROR_INVALID_HANDLE` for an unknown handle).
    pub fn close(&self, handle: u64) -> Result<(), Win32Error> {
        let mut input = [0u8; HandleRequest::WIRE_SIZE];
        let _ = HandleRequest { handle }.emit(&mut input);
        self.ioctl(IOCTL_WSKSEND_CLOSE, &input, &mut []).map(|_| ())
    }

    /// `IOCTL_WSKSEND_ABORT`: an abortive close (a reset).
    ///
    /// # Errors
    /// The Win32 error (`ERROR_INVALID_HANDLE` for an unknown handle).
    pub fn abort(&self, handle: u64) -> Result<(), Win32Error> {
        let mut input = [0u8; HandleRequest::WIRE_SIZE];
        let _ = HandleRequest { handle }.emit(&mut input);
        self.ioctl(wsksend_protocol::IOCTL_WSKSEND_ABORT, &input, &mut [])
            .map(|_| ())
    }

    /// `IOCTL_WSKSEND_STATS` (handle 0: the whole driver).
    ///
    /// # Errors
    /// The Win32 error, or `ERROR_INVALID_DATA`.
    pub fn stats(&self, handle: u64) -> Result<Stats, Win32Error> {
        let mut input = [0u8; HandleRequest::WIRE_SIZE];
        let _ = HandleRequest { handle }.emit(&mut input);
        let mut out = [0u8; Stats::WIRE_SIZE];
        self.ioctl(IOCTL_WSKSEND_STATS, &input, &mut out)?;
        Stats::parse(&out).map_err(|_| Win32Error(ERROR_INVALID_DATA))
    }

    /// A synchronous send of `segments` of `payload`; returns the bytes sent.
    ///
    /// # Errors
    /// The Win32 error of the send.
    pub fn send(
        &self,
        handle: u64,
        flags: u32,
        payload: &mut [u8],
        segments: &[WireSegment],
    ) -> Result<usize, Win32Error> {
        let mut input =
            vec![0u8; SendRequest::HEADER_SIZE + segments.len() * SendRequest::SEGMENT_SIZE];
        let _ = SendRequest::emit(&mut input, handle, flags, segments);
        self.ioctl(IOCTL_WSKSEND_SEND, &input, payload)
    }

    /// Starts an asynchronous send; its completion comes from [`Self::next_completion`].
    /// A send that fails at once is returned as completed.
    pub fn start_send(&self, mut send: Box<PendingSend>) -> Result<SendTicket, Completed> {
        let Ok(in_len) = u32::try_from(send.input.len()) else {
            return Err(Completed {
                send,
                result: Err(Win32Error(87)),
            });
        };
        let Ok(out_len) = u32::try_from(send.payload.len()) else {
            return Err(Completed {
                send,
                result: Err(Win32Error(87)),
            });
        };
        let ov: *mut OVERLAPPED = &raw mut send.overlapped;
        let input = send.input.as_ptr().cast::<c_void>();
        let payload = send.payload.as_mut_ptr().cast::<c_void>();
        let raw = Box::into_raw(send);
        // SAFETY: the boxed send (buffers and OVERLAPPED) stays allocated until its
        // completion is dequeued and turned back into a Box.
        let ok = unsafe {
            DeviceIoControl(
                self.handle,
                IOCTL_WSKSEND_SEND,
                input,
                in_len,
                payload,
                out_len,
                ptr::null_mut(),
                ov,
            )
        };
        if ok == 0 {
            let e = last_error();
            if e.0 != ERROR_IO_PENDING {
                // Failed at once: no completion packet is queued.
                // SAFETY: `raw` came from Box::into_raw above and the I/O is not pending.
                let send = unsafe { Box::from_raw(raw) };
                return Err(Completed {
                    send,
                    result: Err(e),
                });
            }
        }
        Ok(SendTicket(ov as usize))
    }

    /// Waits up to `timeout_ms` for the next asynchronous send to finish.
    pub fn next_completion(&self, timeout_ms: u32) -> Option<Completed> {
        let mut bytes = 0u32;
        let mut key = 0usize;
        let mut ov: *mut OVERLAPPED = ptr::null_mut();
        // SAFETY: out-pointers are valid; the port is open.
        let ok = unsafe {
            GetQueuedCompletionStatus(
                self.port,
                &raw mut bytes,
                &raw mut key,
                &raw mut ov,
                timeout_ms,
            )
        };
        if ov.is_null() {
            let _ = WAIT_TIMEOUT;
            return None;
        }
        let result = if ok != 0 {
            Ok(bytes as usize)
        } else {
            Err(last_error())
        };
        // SAFETY: every OVERLAPPED on this port is the first field's address of a
        // `PendingSend` leaked by `start_send`; `overlapped` is its first field.
        let send = unsafe { Box::from_raw(ov.cast::<PendingSend>()) };
        Some(Completed { send, result })
    }

    /// `CancelIoEx` for one asynchronous send.
    pub fn cancel(&self, ticket: SendTicket) -> bool {
        // SAFETY: the kernel only compares the pointer with its pending requests.
        unsafe { CancelIoEx(self.handle, ticket.0 as *const OVERLAPPED) != 0 }
    }

    /// Closes the file handle (the driver sees CLEANUP/CLOSE) but keeps the completion
    /// port, so completions of sends still pending can be collected.
    pub fn close_file(&mut self) {
        if self.handle != INVALID_HANDLE_VALUE {
            // SAFETY: open and ours; not used again.
            unsafe { CloseHandle(self.handle) };
            self.handle = INVALID_HANDLE_VALUE;
        }
    }
}

impl Drop for Device {
    fn drop(&mut self) {
        self.close_file();
        // SAFETY: as above.
        unsafe { CloseHandle(self.port) };
    }
}
