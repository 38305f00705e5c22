//! The send API other kernel drivers call: a C ABI over the engine, exported from the
//! driver image (`wsksend.sys`), guarded by the driver-wide rundown in [`crate::global`].
//!
//! ```c
//! typedef VOID (*PFN_WSKS_SEND_COMPLETE)(PVOID Context, NTSTATUS Status, SIZE_T BytesSent);
//! typedef struct _WSKS_BUFFER { const VOID *Buffer; ULONG Length; } WSKS_BUFFER; // nonpaged
//!
//! NTSTATUS WsksConnect(const SOCKADDR *Remote, ULONG RemoteLength, ULONG Flags,
//!                      ULONG TimeoutMs, PVOID *Connection);              // PASSIVE_LEVEL
//! NTSTATUS WsksSendMdl(PVOID Connection, PMDL Mdl, ULONG Offset, SIZE_T Length, ULONG Flags,
//!                      PFN_WSKS_SEND_COMPLETE Complete, PVOID Context);  // <= DISPATCH_LEVEL
//! NTSTATUS WsksSendBuffers(PVOID Connection, const WSKS_BUFFER *Buffers, ULONG Count,
//!                          ULONG Flags, PFN_WSKS_SEND_COMPLETE Complete, PVOID Context);
//! NTSTATUS WsksSendSync(PVOID Connection, const WSKS_BUFFER *Buffers, ULONG Count,
//!                       ULONG Flags, ULONG TimeoutMs, SIZE_T *BytesSent); // PASSIVE_LEVEL
//! NTSTATUS WsksClose(PVOID Connection);                                  // PASSIVE_LEVEL
//! NTSTATUS WsksAbortiveClose(PVOID Connection);                          // PASSIVE_LEVEL
//! ```
//!
//! `WsksClose` disconnects gracefully (posted sends finish, `WskDisconnect`, then
//! `WskCloseSocket`; abortive after 10 s); `WsksAbortiveClose` resets at once.
//! `WsksSendSync`'s `TimeoutMs` is at most 120,000 and `WsksConnect`'s at most 60,000
//! (socket, bind and connect together); larger is `STATUS_INVALID_PARAMETER`.
//!
//! The asynchronous sends return `STATUS_PENDING` when the send was accepted — `Complete`
//! then runs exactly once, at <= `DISPATCH_LEVEL`, possibly before the call returns — or
//! an error, in which case `Complete` never runs. Buffers and MDLs stay the caller's and
//! must stay valid (MDLs locked) until `Complete` runs. `Flags` of a send:
//! `WSK_FLAG_NODELAY` (2). `Flags` of a connect: [`WSKS_CONNECT_NODELAY`].
#![allow(
    non_snake_case,
    non_camel_case_types,
    reason = "C names of the exported API"
)]

use alloc::vec::Vec;
use core::ffi::c_void;
use core::net::{Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV4, SocketAddrV6};
use core::ptr::NonNull;
use core::time::Duration;

use wsksend_ffi::status::{STATUS_INVALID_PARAMETER, STATUS_PENDING, STATUS_SUCCESS};
use wsksend_ffi::{AF_INET, AF_INET6, MDL, NTSTATUS, SOCKADDR, SOCKADDR_IN, SOCKADDR_IN6};

use crate::connection::{
    Completion, ConnectOptions, Connection, MAX_SYNC_WAIT, Payload, SendCallback,
};
use crate::mdl::RawBuf;
use crate::{Error, Result, global};

/// Connect flag: every send of the connection uses `WSK_FLAG_NODELAY`.
pub const WSKS_CONNECT_NODELAY: u32 = 1;

/// A nonpaged buffer to send (`WSKS_BUFFER`).
#[repr(C)]
#[derive(Clone, Copy)]
pub struct WSKS_BUFFER {
    /// Start of the buffer.
    pub Buffer: *const c_void,
    /// Length in bytes.
    pub Length: u32,
}

fn status_of(result: Result) -> NTSTATUS {
    match result {
        Ok(()) => STATUS_SUCCESS,
        Err(e) => e.status(),
    }
}

/// Reads a `SOCKADDR_IN`/`SOCKADDR_IN6` the caller passed.
///
/// # Safety
/// `remote` is valid for reads of `length` bytes.
unsafe fn read_sockaddr(remote: *const SOCKADDR, length: u32) -> Result<SocketAddr> {
    if remote.is_null() || (length as usize) < size_of::<u16>() {
        return Err(Error::INVALID_PARAMETER);
    }
    // SAFETY: at least the family is readable (checked length).
    let family = unsafe { remote.cast::<u16>().read_unaligned() };
    match family {
        AF_INET if length as usize >= size_of::<SOCKADDR_IN>() => {
            // SAFETY: `length` covers a SOCKADDR_IN.
            let a = unsafe { remote.cast::<SOCKADDR_IN>().read_unaligned() };
            Ok(SocketAddr::V4(SocketAddrV4::new(
                Ipv4Addr::from(a.sin_addr),
                u16::from_be(a.sin_port),
            )))
        }
        AF_INET6 if length as usize >= size_of::<SOCKADDR_IN6>() => {
            // SAFETY: `length` covers a SOCKADDR_IN6.
            let a = unsafe { remote.cast::<SOCKADDR_IN6>().read_unaligned() };
            Ok(SocketAddr::V6(SocketAddrV6::new(
                Ipv6Addr::from(a.sin6_addr),
                u16::from_be(a.sin6_port),
                u32::from_be(a.sin6_flowinfo),
                a.sin6_scope_id,
            )))
        }
        _ => Err(Error::INVALID_PARAMETER),
    }
}

/// Borrows the connection behind a handle from [`WsksConnect`].
///
/// # Safety
/// `handle` came from `WsksConnect` and has not been passed to `WsksClose`.
unsafe fn with_connection<T>(
    handle: *mut c_void,
    f: impl FnOnce(&Connection) -> Result<T>,
) -> Result<T> {
    if handle.is_null() {
        return Err(Error::INVALID_PARAMETER);
    }
    // SAFETY: the handle is a connection context from `WsksConnect`, still given up
    // (caller's contract).
    unsafe { Connection::with_context(handle, f) }
}

/// `WsksConnect`: opens a TCP connection; `*Connection` receives the handle.
///
/// # Safety
/// `remote` is readable for `remote_length` bytes; `out` is writable.
#[unsafe(no_mangle)]
pub unsafe extern "system" fn WsksConnect(
    remote: *const SOCKADDR,
    remote_length: u32,
    flags: u32,
    timeout_ms: u32,
    out: *mut *mut c_void,
) -> NTSTATUS {
    if out.is_null()
        || flags & !WSKS_CONNECT_NODELAY != 0
        || u128::from(timeout_ms) > crate::client::MAX_CONNECT_TIMEOUT.as_millis()
    {
        return STATUS_INVALID_PARAMETER;
    }
    // SAFETY: forwarded from the caller's contract.
    let remote = match unsafe { read_sockaddr(remote, remote_length) } {
        Ok(r) => r,
        Err(e) => return e.status(),
    };
    let options = ConnectOptions {
        nodelay: flags & WSKS_CONNECT_NODELAY != 0,
        connect_timeout: Duration::from_millis(u64::from(timeout_ms.max(1))),
        ..ConnectOptions::default()
    };
    status_of(global::with_client(|client| {
        let connection = client.connect(remote, &options)?;
        // SAFETY: `out` is writable (caller's contract).
        unsafe { out.write(connection.into_context()) };
        Ok(())
    }))
}

fn accepted(result: Result<crate::connection::SendId>) -> NTSTATUS {
    match result {
        Ok(_) => STATUS_PENDING,
        Err(e) => e.status(),
    }
}

/// `WsksSendMdl`: sends `length` bytes of a locked MDL chain from `offset`.
///
/// # Safety
/// `handle` is a live connection handle; the chain stays valid and locked until
/// `complete` runs; `complete` accepts `context` from any thread at <= DISPATCH_LEVEL.
#[unsafe(no_mangle)]
pub unsafe extern "system" fn WsksSendMdl(
    handle: *mut c_void,
    mdl: *mut MDL,
    offset: u32,
    length: usize,
    flags: u32,
    complete: Option<SendCallback>,
    context: *mut c_void,
) -> NTSTATUS {
    let (Some(chain), Some(routine)) = (NonNull::new(mdl), complete) else {
        return STATUS_INVALID_PARAMETER;
    };
    accepted(global::with_client(|_| {
        let payload = Payload::Mdl {
            chain,
            offset,
            length,
        };
        let send = |conn: &Connection| {
            // SAFETY: the caller keeps the chain locked until completion.
            unsafe { conn.send(payload, flags, Completion::Callback { routine, context }) }
                .map_err(Error::from)
        };
        // SAFETY: forwarded from the caller's contract.
        unsafe { with_connection(handle, send) }
    }))
}

/// Copies the caller's buffer descriptors.
///
/// # Safety
/// `bufs` is readable for `count` entries.
unsafe fn raw_bufs(bufs: *const WSKS_BUFFER, count: u32) -> Result<Vec<RawBuf>> {
    if bufs.is_null() || count == 0 || count as usize > crate::mdl::MAX_CHAIN {
        return Err(Error::INVALID_PARAMETER);
    }
    // SAFETY: readable for `count` entries (caller).
    let descriptors = unsafe { core::slice::from_raw_parts(bufs, count as usize) };
    let mut out = Vec::new();
    out.try_reserve_exact(descriptors.len())
        .map_err(|_| Error::NO_RESOURCES)?;
    out.extend(descriptors.iter().map(|d| RawBuf {
        ptr: d.Buffer.cast(),
        len: d.Length,
    }));
    Ok(out)
}

/// `WsksSendBuffers`: sends nonpaged buffers, in order, as one send.
///
/// # Safety
/// As [`WsksSendMdl`]; every buffer is nonpaged and valid until `complete` runs.
#[unsafe(no_mangle)]
pub unsafe extern "system" fn WsksSendBuffers(
    handle: *mut c_void,
    bufs: *const WSKS_BUFFER,
    count: u32,
    flags: u32,
    complete: Option<SendCallback>,
    context: *mut c_void,
) -> NTSTATUS {
    let Some(routine) = complete else {
        return STATUS_INVALID_PARAMETER;
    };
    accepted(global::with_client(|_| {
        // SAFETY: forwarded from the caller's contract.
        let raw = unsafe { raw_bufs(bufs, count)? };
        let send = |conn: &Connection| {
            let completion = Completion::Callback { routine, context };
            // SAFETY: the caller keeps the buffers valid until completion.
            unsafe { conn.send(Payload::Nonpaged(&raw), flags, completion) }.map_err(Error::from)
        };
        // SAFETY: forwarded from the caller's contract.
        unsafe { with_connection(handle, send) }
    }))
}

/// `WsksSendSync`: sends nonpaged buffers and waits (bounded by `timeout_ms`, then
/// cancel or close) for the result; `*bytes_sent` receives the bytes sent.
///
/// # Safety
/// As [`WsksSendBuffers`]; `bytes_sent` is null or writable.
#[unsafe(no_mangle)]
pub unsafe extern "system" fn WsksSendSync(
    handle: *mut c_void,
    bufs: *const WSKS_BUFFER,
    count: u32,
    flags: u32,
    timeout_ms: u32,
    bytes_sent: *mut usize,
) -> NTSTATUS {
    if u64::from(timeout_ms) > MAX_SYNC_WAIT.as_millis() as u64 {
        return STATUS_INVALID_PARAMETER;
    }
    status_of(global::with_client(|_| {
        // SAFETY: forwarded from the caller's contract.
        let raw = unsafe { raw_bufs(bufs, count)? };
        let limit = Duration::from_millis(u64::from(timeout_ms.max(1)));
        let send = |conn: &Connection| {
            // SAFETY: the buffers outlive this call, which waits for completion.
            unsafe { conn.send_and_wait(Payload::Nonpaged(&raw), flags, limit) }
        };
        // SAFETY: forwarded from the caller's contract.
        let sent = unsafe { with_connection(handle, send)? };
        if !bytes_sent.is_null() {
            // SAFETY: writable (caller).
            unsafe { bytes_sent.write(sent) };
        }
        Ok(())
    }))
}

/// `WsksClose`: closes the connection (pending sends complete first) and frees the
/// handle.
///
/// # Safety
/// `handle` is a live connection handle, not used again afterwards.
#[unsafe(no_mangle)]
pub unsafe extern "system" fn WsksClose(handle: *mut c_void) -> NTSTATUS {
    if handle.is_null() {
        return STATUS_INVALID_PARAMETER;
    }
    // SAFETY: the handle is a connection context given back for good (caller).
    let conn = unsafe { Connection::from_context(handle) };
    status_of(global::close(&conn))
}

/// `WsksAbortiveClose`: closes the connection abortively (`WskCloseSocket` at once, a
/// reset on Windows: queued and posted sends fail) and frees the handle.
///
/// # Safety
/// As [`WsksClose`].
#[unsafe(no_mangle)]
pub unsafe extern "system" fn WsksAbortiveClose(handle: *mut c_void) -> NTSTATUS {
    if handle.is_null() {
        return STATUS_INVALID_PARAMETER;
    }
    // SAFETY: the handle is a connection context given back for good (caller).
    let conn = unsafe { Connection::from_context(handle) };
    status_of(global::close_abortive(&conn))
}
