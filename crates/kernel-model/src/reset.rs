//! Resetting a real TCP connection, as Windows' `WskCloseSocket` does to a socket that
//! is not disconnected in both directions (an abortive disconnect: the peer sees a
//! reset, not an end of stream).

use std::net::{Shutdown, TcpStream};

/// Makes closing `stream` send a reset (`SO_LINGER` with a zero timeout); returns
/// whether that worked. std has no stable linger setter, so this declares the libc
/// routine it needs (Linux values of the constants).
#[cfg(target_os = "linux")]
pub(crate) fn zero_linger(stream: &TcpStream) -> bool {
    use std::ffi::{c_int, c_void};
    use std::os::fd::AsRawFd;

    #[repr(C)]
    struct Linger {
        l_onoff: c_int,
        l_linger: c_int,
    }
    unsafe extern "C" {
        fn setsockopt(
            fd: c_int,
            level: c_int,
            name: c_int,
            value: *const c_void,
            len: u32,
        ) -> c_int;
    }
    const SOL_SOCKET: c_int = 1;
    const SO_LINGER: c_int = 13;
    let linger = Linger {
        l_onoff: 1,
        l_linger: 0,
    };
    // CAST: `Linger` is 8 bytes.
    let len = size_of::<Linger>() as u32;
    // SAFETY: the fd is open (owned by `stream`); `linger` is a valid `struct linger`
    // of `len` bytes that outlives the call.
    let rc = unsafe {
        setsockopt(
            stream.as_raw_fd(),
            SOL_SOCKET,
            SO_LINGER,
            (&raw const linger).cast(),
            len,
        )
    };
    rc == 0
}

/// Without the Linux constants there is no zero linger.
#[cfg(not(target_os = "linux"))]
pub(crate) fn zero_linger(_stream: &TcpStream) -> bool {
    false
}

/// Sends a reset on `stream` now and fails writes blocked on it: a zero linger, then
/// `connect(AF_UNSPEC)`, which Linux turns into a TCP disconnect (a RST for a
/// connected socket). Falls back to an orderly shutdown where that is not possible.
#[cfg(target_os = "linux")]
pub(crate) fn reset(stream: &TcpStream) {
    use std::ffi::{c_int, c_void};
    use std::os::fd::AsRawFd;

    #[repr(C)]
    struct SockaddrUnspec {
        family: u16,
        data: [u8; 14],
    }
    unsafe extern "C" {
        fn connect(fd: c_int, addr: *const c_void, len: u32) -> c_int;
    }
    let lingers = zero_linger(stream);
    let unspec = SockaddrUnspec {
        family: 0,
        data: [0; 14],
    };
    // CAST: a 16-byte structure.
    let len = size_of::<SockaddrUnspec>() as u32;
    // SAFETY: the fd is open (owned by `stream`); an `AF_UNSPEC` address of `len`
    // bytes that outlives the call.
    let rc = unsafe { connect(stream.as_raw_fd(), (&raw const unspec).cast(), len) };
    if !lingers || rc != 0 {
        let _ = stream.shutdown(Shutdown::Both);
    }
}

/// Without the Linux calls, the best available: an orderly shutdown.
#[cfg(not(target_os = "linux"))]
pub(crate) fn reset(stream: &TcpStream) {
    let _ = stream.shutdown(Shutdown::Both);
}
