//! Resetting a real TCP connection, as Windows' `WskCloseSocket` does to a socket that
//! is not disconnected in both directions (an abortive disconnect: the peer sees a
//! reset, not an end of stream).

use std::net::{Shutdown, TcpStream};

/// Sends a reset on `stream` now and fails writes blocked on it: `SO_LINGER` with a
/// zero timeout, then `connect(AF_UNSPEC)`, which Linux turns into a TCP disconnect
/// (a RST for a connected socket). Falls back to an orderly shutdown elsewhere.
#[cfg(target_os = "linux")]
pub(crate) fn reset(stream: &TcpStream) {
    use std::ffi::{c_int, c_void};
    use std::os::fd::AsRawFd;

    #[repr(C)]
    struct Linger {
        l_onoff: c_int,
        l_linger: c_int,
    }
    #[repr(C)]
    struct SockaddrUnspec {
        family: u16,
        data: [u8; 14],
    }
    unsafe extern "C" {
        fn setsockopt(
            fd: c_int,
            level: c_int,
            name: c_int,
            value: *const c_void,
            len: u32,
        ) -> c_int;
        fn connect(fd: c_int, addr: *const c_void, len: u32) -> c_int;
    }
    const SOL_SOCKET: c_int = 1;
    const SO_LINGER: c_int = 13;
    let fd = stream.as_raw_fd();
    let linger = Linger {
        l_onoff: 1,
        l_linger: 0,
    };
    // CAST: both structures are a few bytes.
    let linger_len = size_of::<Linger>() as u32;
    // SAFETY: `fd` is open (owned by `stream`); `linger` is a valid `struct linger`
    // of `linger_len` bytes that outlives the call (Linux values of the constants).
    let rc = unsafe {
        setsockopt(
            fd,
            SOL_SOCKET,
            SO_LINGER,
            (&raw const linger).cast(),
            linger_len,
        )
    };
    let unspec = SockaddrUnspec {
        family: 0,
        data: [0; 14],
    };
    // CAST: as above.
    let unspec_len = size_of::<SockaddrUnspec>() as u32;
    // SAFETY: as above; an `AF_UNSPEC` address of `unspec_len` bytes.
    let rc2 = unsafe { connect(fd, (&raw const unspec).cast(), unspec_len) };
    if rc != 0 || rc2 != 0 {
        let _ = stream.shutdown(Shutdown::Both);
    }
}

/// Without the Linux calls, the best available: an orderly shutdown.
#[cfg(not(target_os = "linux"))]
pub(crate) fn reset(stream: &TcpStream) {
    let _ = stream.shutdown(Shutdown::Both);
}
