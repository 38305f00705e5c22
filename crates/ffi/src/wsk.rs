//! Types of the Winsock Kernel client/provider interface
//! ([`wsk.h`](https://learn.microsoft.com/windows-hardware/drivers/ddi/wsk/)), x64 layout.

use core::ffi::c_void;

use crate::{IRP, KSPIN_LOCK, MDL, NTSTATUS, assert_offset, assert_size};

/// `MAKE_WSK_VERSION(1, 0)`: the interface version we ask for.
pub const WSK_VERSION_1_0: u16 = 0x0100;

/// `WSK_NO_WAIT` for `WskCaptureProviderNPI`.
pub const WSK_NO_WAIT: u32 = 0;
/// `WSK_INFINITE_WAIT` for `WskCaptureProviderNPI` (never used: rule 7).
pub const WSK_INFINITE_WAIT: u32 = 0xFFFF_FFFF;

/// `WSK_FLAG_BASIC_SOCKET`.
pub const WSK_FLAG_BASIC_SOCKET: u32 = 0;
/// `WSK_FLAG_LISTEN_SOCKET`.
pub const WSK_FLAG_LISTEN_SOCKET: u32 = 1;
/// `WSK_FLAG_CONNECTION_SOCKET`.
pub const WSK_FLAG_CONNECTION_SOCKET: u32 = 2;
/// `WSK_FLAG_DATAGRAM_SOCKET`.
pub const WSK_FLAG_DATAGRAM_SOCKET: u32 = 4;

/// `WSK_FLAG_NODELAY` (send): do not wait to coalesce with later data (no Nagle).
pub const WSK_FLAG_NODELAY: u32 = 0x0000_0002;
/// `WSK_FLAG_ABORTIVE` (disconnect).
pub const WSK_FLAG_ABORTIVE: u32 = 0x0000_0001;

/// `AF_INET`.
pub const AF_INET: u16 = 2;
/// `AF_INET6`.
pub const AF_INET6: u16 = 23;
/// `SOCK_STREAM`.
pub const SOCK_STREAM: u16 = 1;
/// `IPPROTO_TCP`.
pub const IPPROTO_TCP: u32 = 6;

/// `SOCKADDR_IN`.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SOCKADDR_IN {
    /// `AF_INET`.
    pub sin_family: u16,
    /// Port in network byte order.
    pub sin_port: u16,
    /// Address in network byte order.
    pub sin_addr: [u8; 4],
    /// Zero.
    pub sin_zero: [u8; 8],
}
assert_size!(SOCKADDR_IN, 16);

/// `SOCKADDR_IN6`.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SOCKADDR_IN6 {
    /// `AF_INET6`.
    pub sin6_family: u16,
    /// Port in network byte order.
    pub sin6_port: u16,
    /// Flow information.
    pub sin6_flowinfo: u32,
    /// Address bytes.
    pub sin6_addr: [u8; 16],
    /// Scope id.
    pub sin6_scope_id: u32,
}
assert_size!(SOCKADDR_IN6, 28);

/// `SOCKADDR` (generic header; the provider reads the family and the rest by family).
#[repr(C)]
pub struct SOCKADDR {
    /// Address family.
    pub sa_family: u16,
    /// Address data.
    pub sa_data: [u8; 14],
}

/// `WSK_BUF`: a byte range over an MDL chain.
///
/// `Offset` applies to the first MDL only; `Length` must not exceed what the chain
/// describes after `Offset`.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct WSK_BUF {
    /// First MDL of the chain.
    pub Mdl: *mut MDL,
    /// Offset into the first MDL.
    pub Offset: u32,
    /// Bytes to send.
    pub Length: usize,
}
assert_size!(WSK_BUF, 24);
assert_offset!(WSK_BUF, Length, 16);

/// `WSK_SOCKET`: the provider's socket object; only its dispatch table is public.
#[repr(C)]
pub struct WSK_SOCKET {
    /// `WSK_PROVIDER_CONNECTION_DISPATCH` for connection sockets.
    pub Dispatch: *const c_void,
}

/// `WSK_CLIENT` (opaque provider-side client object).
#[repr(C)]
pub struct WSK_CLIENT {
    _opaque: [u8; 0],
}

/// `PFN_WSK_CLIENT_EVENT`.
pub type PFN_WSK_CLIENT_EVENT =
    Option<unsafe extern "system" fn(*mut c_void, u32, *mut c_void, usize) -> NTSTATUS>;

/// `WSK_CLIENT_DISPATCH`.
#[repr(C)]
pub struct WSK_CLIENT_DISPATCH {
    /// `MAKE_WSK_VERSION(major, minor)`.
    pub Version: u16,
    /// Reserved, zero.
    pub Reserved: u16,
    /// Client-level event callback (may be `None`).
    pub WskClientEvent: PFN_WSK_CLIENT_EVENT,
}
assert_size!(WSK_CLIENT_DISPATCH, 16);

/// `WSK_CLIENT_NPI`.
#[repr(C)]
pub struct WSK_CLIENT_NPI {
    /// Passed back to client callbacks.
    pub ClientContext: *mut c_void,
    /// The client's dispatch table.
    pub Dispatch: *const WSK_CLIENT_DISPATCH,
}
assert_size!(WSK_CLIENT_NPI, 16);

/// `WSK_REGISTRATION`: opaque state owned by the WSK subsystem; must stay put (and
/// nonpaged) from `WskRegister` to `WskDeregister`.
#[repr(C)]
pub struct WSK_REGISTRATION {
    /// Reserved.
    pub ReservedRegistrationState: u64,
    /// Reserved.
    pub ReservedRegistrationContext: *mut c_void,
    /// Reserved.
    pub ReservedRegistrationLock: KSPIN_LOCK,
}
assert_size!(WSK_REGISTRATION, 24);

impl WSK_REGISTRATION {
    /// Zeroed storage for `WskRegister`.
    #[must_use]
    pub const fn zeroed() -> Self {
        Self {
            ReservedRegistrationState: 0,
            ReservedRegistrationContext: core::ptr::null_mut(),
            ReservedRegistrationLock: 0,
        }
    }
}

/// `PFN_WSK_SOCKET`.
pub type PFN_WSK_SOCKET = Option<
    unsafe extern "system" fn(
        Client: *mut WSK_CLIENT,
        AddressFamily: u16,
        SocketType: u16,
        Protocol: u32,
        Flags: u32,
        SocketContext: *mut c_void,
        Dispatch: *const c_void,
        OwningProcess: *mut c_void,
        OwningThread: *mut c_void,
        SecurityDescriptor: *mut c_void,
        Irp: *mut IRP,
    ) -> NTSTATUS,
>;

/// Any provider entry we bind as a pointer but do not call.
pub type PFN_UNUSED = Option<unsafe extern "system" fn()>;

/// `WSK_PROVIDER_DISPATCH`.
#[repr(C)]
pub struct WSK_PROVIDER_DISPATCH {
    /// Version the provider implements.
    pub Version: u16,
    /// Reserved.
    pub Reserved: u16,
    /// `WskSocket`.
    pub WskSocket: PFN_WSK_SOCKET,
    /// `WskSocketConnect` (not implemented by Wine 8; unused).
    pub WskSocketConnect: PFN_UNUSED,
    /// `WskControlClient`.
    pub WskControlClient: PFN_UNUSED,
}
assert_offset!(WSK_PROVIDER_DISPATCH, WskSocket, 8);
assert_size!(WSK_PROVIDER_DISPATCH, 32);

/// `WSK_PROVIDER_NPI`.
#[repr(C)]
pub struct WSK_PROVIDER_NPI {
    /// Client object to pass to `WskSocket`.
    pub Client: *mut WSK_CLIENT,
    /// Provider dispatch table.
    pub Dispatch: *const WSK_PROVIDER_DISPATCH,
}
assert_size!(WSK_PROVIDER_NPI, 16);

/// `PFN_WSK_CLOSE_SOCKET`.
pub type PFN_WSK_CLOSE_SOCKET =
    Option<unsafe extern "system" fn(Socket: *mut WSK_SOCKET, Irp: *mut IRP) -> NTSTATUS>;
/// `PFN_WSK_BIND` and `PFN_WSK_CONNECT` (same shape).
pub type PFN_WSK_BIND = Option<
    unsafe extern "system" fn(
        Socket: *mut WSK_SOCKET,
        Address: *mut SOCKADDR,
        Flags: u32,
        Irp: *mut IRP,
    ) -> NTSTATUS,
>;
/// `PFN_WSK_CONNECT`.
pub type PFN_WSK_CONNECT = PFN_WSK_BIND;
/// `PFN_WSK_SEND`.
pub type PFN_WSK_SEND = Option<
    unsafe extern "system" fn(
        Socket: *mut WSK_SOCKET,
        Buffer: *mut WSK_BUF,
        Flags: u32,
        Irp: *mut IRP,
    ) -> NTSTATUS,
>;
/// `PFN_WSK_DISCONNECT`.
pub type PFN_WSK_DISCONNECT = PFN_WSK_SEND;

/// `WSK_PROVIDER_CONNECTION_DISPATCH` (the Windows 7 shape; later fields are not used).
#[repr(C)]
pub struct WSK_PROVIDER_CONNECTION_DISPATCH {
    /// `Basic.WskControlSocket`.
    pub WskControlSocket: PFN_UNUSED,
    /// `Basic.WskCloseSocket`.
    pub WskCloseSocket: PFN_WSK_CLOSE_SOCKET,
    /// `WskBind`.
    pub WskBind: PFN_WSK_BIND,
    /// `WskConnect`.
    pub WskConnect: PFN_WSK_CONNECT,
    /// `WskGetLocalAddress`.
    pub WskGetLocalAddress: PFN_UNUSED,
    /// `WskGetRemoteAddress`.
    pub WskGetRemoteAddress: PFN_UNUSED,
    /// `WskSend`.
    pub WskSend: PFN_WSK_SEND,
    /// `WskReceive`.
    pub WskReceive: PFN_UNUSED,
    /// `WskDisconnect`.
    pub WskDisconnect: PFN_WSK_DISCONNECT,
    /// `WskRelease`.
    pub WskRelease: PFN_UNUSED,
}
assert_offset!(WSK_PROVIDER_CONNECTION_DISPATCH, WskCloseSocket, 8);
assert_offset!(WSK_PROVIDER_CONNECTION_DISPATCH, WskBind, 16);
assert_offset!(WSK_PROVIDER_CONNECTION_DISPATCH, WskConnect, 24);
assert_offset!(WSK_PROVIDER_CONNECTION_DISPATCH, WskSend, 48);
assert_offset!(WSK_PROVIDER_CONNECTION_DISPATCH, WskDisconnect, 64);
assert_size!(WSK_PROVIDER_CONNECTION_DISPATCH, 80);
