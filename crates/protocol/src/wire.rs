//! Wire structs of CONNECT, SEND, CLOSE and STATS, and the error table.
//!
//! Every request starts with `size: u32` (the struct's own size, or the header's for
//! SEND) and `version: u32` ([`PROTOCOL_VERSION`]); reserved fields must be zero.
//! Parsing checks everything before anything is acted on, so a bad request changes
//! nothing.

use core::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV4, SocketAddrV6};
use core::ops::Range;

use crate::{PROTOCOL_VERSION, WireError, read_u16, read_u32};

/// `AF_INET`.
pub const AF_INET: u16 = 2;
/// `AF_INET6`.
pub const AF_INET6: u16 = 23;

/// Connect flag: every send on the connection uses `WSK_FLAG_NODELAY`.
pub const CONNECT_NODELAY: u32 = 0x1;

/// `MSG_OOB`: urgent data; a stream WSK send cannot send it (rejected).
pub const MSG_OOB: u32 = 0x1;
/// `MSG_DONTROUTE`: not supported by WSK sends (rejected).
pub const MSG_DONTROUTE: u32 = 0x4;
/// `MSG_PARTIAL`: message-oriented partial sends do not apply to TCP (rejected).
pub const MSG_PARTIAL: u32 = 0x8000;
/// Send flag: this send uses `WSK_FLAG_NODELAY`. Chosen outside the `MSG_*` range so
/// that `flags` can carry `WSASend`'s `dwFlags` unchanged.
pub const SEND_NODELAY: u32 = 0x0001_0000;
/// Every send flag the driver accepts.
pub const SEND_FLAGS_SUPPORTED: u32 = SEND_NODELAY;
/// `WSASend` flags the driver recognises and refuses with `STATUS_NOT_SUPPORTED`.
pub const SEND_FLAGS_UNSUPPORTED: u32 = MSG_OOB | MSG_DONTROUTE | MSG_PARTIAL;

/// Most segments (WSABUFs) in one send.
pub const MAX_SEGMENTS: usize = 64;
/// Most sends pending at once on one file handle.
pub const MAX_PENDING_PER_HANDLE: usize = 256;
/// Most bytes in one send (the payload of one IOCTL).
pub const MAX_SEND_BYTES: usize = 64 << 20;
/// Largest CONNECT `timeout_ms` (one minute); larger is `Malformed`
/// (`STATUS_INVALID_PARAMETER`). It bounds socket creation, bind and connect together.
pub const MAX_CONNECT_TIMEOUT_MS: u32 = 60_000;

fn field(buf: &[u8], r: Range<usize>) -> u32 {
    read_u32(buf, r)
}

fn read_u64(buf: &[u8], at: usize) -> u64 {
    let mut b = [0u8; 8];
    b.copy_from_slice(&buf[at..at + 8]);
    u64::from_le_bytes(b)
}

fn check_header(buf: &[u8], size: usize) -> Result<(), WireError> {
    if buf.len() < 8 {
        return Err(WireError::Truncated);
    }
    if field(buf, 4..8) != PROTOCOL_VERSION {
        return Err(WireError::BadVersion);
    }
    if field(buf, 0..4) as usize != size {
        return Err(WireError::BadVersion);
    }
    if buf.len() < size {
        return Err(WireError::Truncated);
    }
    Ok(())
}

fn put_u32(buf: &mut [u8], at: usize, v: u32) {
    buf[at..at + 4].copy_from_slice(&v.to_le_bytes());
}

fn put_u64(buf: &mut [u8], at: usize, v: u64) {
    buf[at..at + 8].copy_from_slice(&v.to_le_bytes());
}

/// `IOCTL_WSKSEND_CONNECT` input (48 bytes).
///
/// | offset | field |
/// |---|---|
/// | 0 | `size: u32` = 48, `version: u32` |
/// | 8 | `family: u16` (`AF_INET`/`AF_INET6`), `port: u16` (host order) |
/// | 12 | `flags: u32` ([`CONNECT_NODELAY`]) |
/// | 16 | `address: [u8; 16]` (IPv4 in the first 4 bytes, rest zero) |
/// | 32 | `scope_id: u32` (IPv6), `timeout_ms: u32` (0: 10 000) |
/// | 40 | `max_posted: u32` (0: driver default; 1..=64), `reserved: u32` = 0 |
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ConnectRequest {
    /// Peer.
    pub remote: SocketAddr,
    /// [`CONNECT_NODELAY`] or 0.
    pub flags: u32,
    /// Connect timeout in ms (0: default).
    pub timeout_ms: u32,
    /// Sends posted to WSK at once (0: default).
    pub max_posted: u32,
}

impl ConnectRequest {
    /// Wire size.
    pub const WIRE_SIZE: usize = 48;

    /// Parses and validates.
    ///
    /// # Errors
    /// `Truncated`, `BadVersion`, or `Malformed` (unknown family or flags, reserved
    /// bytes set, IPv4 address padding set, port 0, `max_posted` over 64, `timeout_ms`
    /// over [`MAX_CONNECT_TIMEOUT_MS`]).
    pub fn parse(buf: &[u8]) -> Result<Self, WireError> {
        check_header(buf, Self::WIRE_SIZE)?;
        let family = read_u16(buf, 8..10);
        let port = read_u16(buf, 10..12);
        let flags = field(buf, 12..16);
        let mut addr = [0u8; 16];
        addr.copy_from_slice(&buf[16..32]);
        let scope_id = field(buf, 32..36);
        let timeout_ms = field(buf, 36..40);
        let max_posted = field(buf, 40..44);
        if field(buf, 44..48) != 0
            || flags & !CONNECT_NODELAY != 0
            || port == 0
            || max_posted > 64
            || timeout_ms > MAX_CONNECT_TIMEOUT_MS
        {
            return Err(WireError::Malformed);
        }
        let remote = match family {
            AF_INET if addr[4..].iter().all(|&b| b == 0) && scope_id == 0 => SocketAddr::V4(
                SocketAddrV4::new(Ipv4Addr::new(addr[0], addr[1], addr[2], addr[3]), port),
            ),
            AF_INET6 => SocketAddr::V6(SocketAddrV6::new(Ipv6Addr::from(addr), port, 0, scope_id)),
            _ => return Err(WireError::Malformed),
        };
        Ok(Self {
            remote,
            flags,
            timeout_ms,
            max_posted,
        })
    }

    /// Writes the wire form into `buf[..48]`.
    ///
    /// # Errors
    /// `Truncated` if `buf` is too short (nothing written).
    pub fn emit(&self, buf: &mut [u8]) -> Result<usize, WireError> {
        let buf = buf.get_mut(..Self::WIRE_SIZE).ok_or(WireError::Truncated)?;
        buf.fill(0);
        // CAST: WIRE_SIZE is a small constant.
        put_u32(buf, 0, Self::WIRE_SIZE as u32);
        put_u32(buf, 4, PROTOCOL_VERSION);
        let (family, scope) = match self.remote.ip() {
            IpAddr::V4(ip) => {
                buf[16..20].copy_from_slice(&ip.octets());
                (AF_INET, 0)
            }
            IpAddr::V6(ip) => {
                buf[16..32].copy_from_slice(&ip.octets());
                let scope = match self.remote {
                    SocketAddr::V6(a) => a.scope_id(),
                    SocketAddr::V4(_) => 0,
                };
                (AF_INET6, scope)
            }
        };
        buf[8..10].copy_from_slice(&family.to_le_bytes());
        buf[10..12].copy_from_slice(&self.remote.port().to_le_bytes());
        put_u32(buf, 12, self.flags);
        put_u32(buf, 32, scope);
        put_u32(buf, 36, self.timeout_ms);
        put_u32(buf, 40, self.max_posted);
        Ok(Self::WIRE_SIZE)
    }
}

/// `IOCTL_WSKSEND_CONNECT` output (16 bytes): `size: u32` = 16, `reserved: u32`,
/// `handle: u64` — an opaque id valid only on the file handle that connected.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ConnectReply {
    /// The connection handle.
    pub handle: u64,
}

impl ConnectReply {
    /// Wire size.
    pub const WIRE_SIZE: usize = 16;

    /// Parses.
    ///
    /// # Errors
    /// `Truncated`, `BadVersion` (size field), `Malformed` (reserved or zero handle).
    pub fn parse(buf: &[u8]) -> Result<Self, WireError> {
        if buf.len() < Self::WIRE_SIZE {
            return Err(WireError::Truncated);
        }
        if field(buf, 0..4) as usize != Self::WIRE_SIZE {
            return Err(WireError::BadVersion);
        }
        let handle = read_u64(buf, 8);
        if field(buf, 4..8) != 0 || handle == 0 {
            return Err(WireError::Malformed);
        }
        Ok(Self { handle })
    }

    /// Writes the wire form.
    ///
    /// # Errors
    /// `Truncated` (nothing written).
    pub fn emit(&self, buf: &mut [u8]) -> Result<usize, WireError> {
        let buf = buf.get_mut(..Self::WIRE_SIZE).ok_or(WireError::Truncated)?;
        // CAST: WIRE_SIZE is a small constant.
        put_u32(buf, 0, Self::WIRE_SIZE as u32);
        put_u32(buf, 4, 0);
        put_u64(buf, 8, self.handle);
        Ok(Self::WIRE_SIZE)
    }
}

/// One piece of the payload: `len` bytes at `offset` (a WSABUF).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct WireSegment {
    /// Offset into the payload buffer.
    pub offset: u32,
    /// Length (non-zero).
    pub len: u32,
}

/// `IOCTL_WSKSEND_SEND` input: a 24-byte header and `segment_count` segments.
///
/// | offset | field |
/// |---|---|
/// | 0 | `size: u32` = 24 (header), `version: u32` |
/// | 8 | `handle: u64` |
/// | 16 | `flags: u32` (`WSASend` flags + [`SEND_NODELAY`]), `segment_count: u32` |
/// | 24 | `segment_count` × (`offset: u32`, `length: u32`) |
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SendRequest<'a> {
    /// Connection handle.
    pub handle: u64,
    /// Flags.
    pub flags: u32,
    table: &'a [u8],
}

/// Why a send request is refused (each maps to its own status).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SendError {
    /// Bad framing: see [`WireError`].
    Wire(WireError),
    /// A flag the driver recognises but a stream WSK send cannot honour.
    UnsupportedFlags,
    /// No segments, too many, an empty one, one outside the payload, or an overflow.
    BadSegments,
}

impl From<WireError> for SendError {
    fn from(e: WireError) -> Self {
        Self::Wire(e)
    }
}

impl<'a> SendRequest<'a> {
    /// Header size.
    pub const HEADER_SIZE: usize = 24;
    /// Size of one segment entry.
    pub const SEGMENT_SIZE: usize = 8;

    /// Parses the header and checks every segment against a payload of `payload_len`
    /// bytes: at least one and at most [`MAX_SEGMENTS`], each non-empty, inside the
    /// payload, without overflow; the total at most [`MAX_SEND_BYTES`].
    ///
    /// # Errors
    /// See [`SendError`].
    pub fn parse(buf: &'a [u8], payload_len: usize) -> Result<Self, SendError> {
        check_header(buf, Self::HEADER_SIZE)?;
        let handle = read_u64(buf, 8);
        let flags = field(buf, 16..20);
        let count = field(buf, 20..24) as usize;
        if flags & SEND_FLAGS_UNSUPPORTED != 0 {
            return Err(SendError::UnsupportedFlags);
        }
        if flags & !SEND_FLAGS_SUPPORTED != 0 {
            return Err(SendError::Wire(WireError::Malformed));
        }
        if count == 0 || count > MAX_SEGMENTS {
            return Err(SendError::BadSegments);
        }
        let end = Self::HEADER_SIZE + count * Self::SEGMENT_SIZE;
        let table = buf
            .get(Self::HEADER_SIZE..end)
            .ok_or(WireError::Truncated)?;
        let request = Self {
            handle,
            flags,
            table,
        };
        let mut total: usize = 0;
        for s in request.segments() {
            // Offsets are 32-bit on the wire: an end past u32::MAX is an overflow.
            let fits = s.len != 0
                && s.offset
                    .checked_add(s.len)
                    .is_some_and(|e| e as usize <= payload_len);
            total = total.saturating_add(s.len as usize);
            if !fits {
                return Err(SendError::BadSegments);
            }
        }
        if total > MAX_SEND_BYTES {
            return Err(SendError::BadSegments);
        }
        Ok(request)
    }

    /// The segments, in order.
    pub fn segments(&self) -> impl Iterator<Item = WireSegment> + 'a {
        self.table
            .chunks_exact(Self::SEGMENT_SIZE)
            .map(|c| WireSegment {
                offset: field(c, 0..4),
                len: field(c, 4..8),
            })
    }

    /// Number of segments.
    #[must_use]
    pub fn segment_count(&self) -> usize {
        self.table.len() / Self::SEGMENT_SIZE
    }

    /// Bytes to send (sum of the segment lengths).
    #[must_use]
    pub fn total_len(&self) -> usize {
        self.segments().map(|s| s.len as usize).sum()
    }

    /// Writes a request (header and segments) into `buf`; returns its size.
    ///
    /// # Errors
    /// `Truncated` if `buf` is too short or there are more than `u32::MAX` segments.
    pub fn emit(
        buf: &mut [u8],
        handle: u64,
        flags: u32,
        segments: &[WireSegment],
    ) -> Result<usize, WireError> {
        let size = Self::HEADER_SIZE + segments.len() * Self::SEGMENT_SIZE;
        let count = u32::try_from(segments.len()).map_err(|_| WireError::Truncated)?;
        let buf = buf.get_mut(..size).ok_or(WireError::Truncated)?;
        // CAST: HEADER_SIZE is a small constant.
        put_u32(buf, 0, Self::HEADER_SIZE as u32);
        put_u32(buf, 4, PROTOCOL_VERSION);
        put_u64(buf, 8, handle);
        put_u32(buf, 16, flags);
        put_u32(buf, 20, count);
        for (i, s) in segments.iter().enumerate() {
            let at = Self::HEADER_SIZE + i * Self::SEGMENT_SIZE;
            put_u32(buf, at, s.offset);
            put_u32(buf, at + 4, s.len);
        }
        Ok(size)
    }
}

/// `IOCTL_WSKSEND_CLOSE` / `IOCTL_WSKSEND_STATS` input (16 bytes): `size: u32` = 16,
/// `version: u32`, `handle: u64` (STATS: 0 for the whole driver).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct HandleRequest {
    /// The connection handle.
    pub handle: u64,
}

impl HandleRequest {
    /// Wire size.
    pub const WIRE_SIZE: usize = 16;

    /// Parses.
    ///
    /// # Errors
    /// `Truncated`, `BadVersion`.
    pub fn parse(buf: &[u8]) -> Result<Self, WireError> {
        check_header(buf, Self::WIRE_SIZE)?;
        Ok(Self {
            handle: read_u64(buf, 8),
        })
    }

    /// Writes the wire form.
    ///
    /// # Errors
    /// `Truncated` (nothing written).
    pub fn emit(&self, buf: &mut [u8]) -> Result<usize, WireError> {
        let buf = buf.get_mut(..Self::WIRE_SIZE).ok_or(WireError::Truncated)?;
        // CAST: WIRE_SIZE is a small constant.
        put_u32(buf, 0, Self::WIRE_SIZE as u32);
        put_u32(buf, 4, PROTOCOL_VERSION);
        put_u64(buf, 8, self.handle);
        Ok(Self::WIRE_SIZE)
    }
}

/// `IOCTL_WSKSEND_STATS` output (48 bytes): `size: u32` = 48, `reserved: u32`, then
/// `connections`, `sends`, `bytes`, `errors`, `in_flight` as `u64`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Stats {
    /// Open connections (1 for a per-connection query).
    pub connections: u64,
    /// Sends completed successfully.
    pub sends: u64,
    /// Bytes sent by them.
    pub bytes: u64,
    /// Sends that failed (including cancelled ones).
    pub errors: u64,
    /// Sends queued or with the provider now.
    pub in_flight: u64,
}

impl Stats {
    /// Wire size.
    pub const WIRE_SIZE: usize = 48;

    /// Parses.
    ///
    /// # Errors
    /// `Truncated`, `BadVersion` (size field).
    pub fn parse(buf: &[u8]) -> Result<Self, WireError> {
        if buf.len() < Self::WIRE_SIZE {
            return Err(WireError::Truncated);
        }
        if field(buf, 0..4) as usize != Self::WIRE_SIZE {
            return Err(WireError::BadVersion);
        }
        Ok(Self {
            connections: read_u64(buf, 8),
            sends: read_u64(buf, 16),
            bytes: read_u64(buf, 24),
            errors: read_u64(buf, 32),
            in_flight: read_u64(buf, 40),
        })
    }

    /// Writes the wire form.
    ///
    /// # Errors
    /// `Truncated` (nothing written).
    pub fn emit(&self, buf: &mut [u8]) -> Result<usize, WireError> {
        let buf = buf.get_mut(..Self::WIRE_SIZE).ok_or(WireError::Truncated)?;
        // CAST: WIRE_SIZE is a small constant.
        put_u32(buf, 0, Self::WIRE_SIZE as u32);
        put_u32(buf, 4, 0);
        for (i, v) in [
            self.connections,
            self.sends,
            self.bytes,
            self.errors,
            self.in_flight,
        ]
        .into_iter()
        .enumerate()
        {
            put_u64(buf, 8 + 8 * i, v);
        }
        Ok(Self::WIRE_SIZE)
    }
}

/// How a driver status reaches user mode: the Win32 error `DeviceIoControl` reports
/// (`RtlNtStatusToDosError`) and the Winsock error a `WSASend` caller would expect.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ErrorMapping {
    /// `NTSTATUS` as the driver completes the request.
    pub status: u32,
    /// Its name.
    pub name: &'static str,
    /// `GetLastError()` after `DeviceIoControl`/`GetOverlappedResult`.
    pub win32: u32,
    /// The `WSAGetLastError()` equivalent.
    pub wsa: u32,
    /// When the driver returns it.
    pub meaning: &'static str,
}

/// The documented error table (README "Errors").
pub const ERROR_TABLE: &[ErrorMapping] = &[
    ErrorMapping {
        status: 0xC000_0010,
        name: "STATUS_INVALID_DEVICE_REQUEST",
        win32: 1,
        wsa: 10045,
        meaning: "unknown IOCTL code",
    },
    ErrorMapping {
        status: 0xC000_0023,
        name: "STATUS_BUFFER_TOO_SMALL",
        win32: 122,
        wsa: 10014,
        meaning: "input shorter than its struct, or output buffer too small (nothing written)",
    },
    ErrorMapping {
        status: 0xC000_0059,
        name: "STATUS_REVISION_MISMATCH",
        win32: 1306,
        wsa: 10022,
        meaning: "wrong struct size or protocol version",
    },
    ErrorMapping {
        status: 0xC000_000D,
        name: "STATUS_INVALID_PARAMETER",
        win32: 87,
        wsa: 10022,
        meaning: "malformed request: reserved bits, bad segments (none, empty, outside the payload, overflow, too many), no payload",
    },
    ErrorMapping {
        status: 0xC000_0008,
        name: "STATUS_INVALID_HANDLE",
        win32: 6,
        wsa: 10038,
        meaning: "unknown connection handle, or one of another file handle",
    },
    ErrorMapping {
        status: 0xC000_00BB,
        name: "STATUS_NOT_SUPPORTED",
        win32: 50,
        wsa: 10045,
        meaning: "MSG_OOB, MSG_DONTROUTE, MSG_PARTIAL; a flag the provider refuses",
    },
    ErrorMapping {
        status: 0xC000_009A,
        name: "STATUS_INSUFFICIENT_RESOURCES",
        win32: 1450,
        wsa: 10055,
        meaning: "too many sends pending on the file handle, or out of memory",
    },
    ErrorMapping {
        status: 0xC000_0140,
        name: "STATUS_INVALID_CONNECTION",
        win32: 1229,
        wsa: 10057,
        meaning: "the connection is closing or closed",
    },
    ErrorMapping {
        status: 0xC000_020D,
        name: "STATUS_CONNECTION_RESET",
        win32: 64,
        wsa: 10054,
        meaning: "the peer reset the connection",
    },
    ErrorMapping {
        status: 0xC000_020C,
        name: "STATUS_CONNECTION_DISCONNECTED",
        win32: 64,
        wsa: 10058,
        meaning: "the connection was shut down",
    },
    ErrorMapping {
        status: 0xC000_0241,
        name: "STATUS_CONNECTION_ABORTED",
        win32: 1236,
        wsa: 10053,
        meaning: "the connection was aborted locally",
    },
    ErrorMapping {
        status: 0xC000_0236,
        name: "STATUS_CONNECTION_REFUSED",
        win32: 1225,
        wsa: 10061,
        meaning: "connect refused by the peer",
    },
    ErrorMapping {
        status: 0xC000_00B5,
        name: "STATUS_IO_TIMEOUT",
        win32: 121,
        wsa: 10060,
        meaning: "connect or blocking send timed out",
    },
    ErrorMapping {
        status: 0xC000_0120,
        name: "STATUS_CANCELLED",
        win32: 995,
        wsa: 995,
        meaning: "CancelIoEx, handle closed, or connection closed with the send pending",
    },
    ErrorMapping {
        status: 0xC000_00A3,
        name: "STATUS_DEVICE_NOT_READY",
        win32: 21,
        wsa: 10050,
        meaning: "WSK is not available (driver starting or stopping)",
    },
    ErrorMapping {
        status: 0xC000_0001,
        name: "STATUS_UNSUCCESSFUL",
        win32: 31,
        wsa: 10050,
        meaning: "the provider failed the send (Wine: chained MDLs, more than 10 pending)",
    },
];

/// The table entry for a Win32 error, if documented.
#[must_use]
pub fn mapping_for_win32(win32: u32) -> Option<&'static ErrorMapping> {
    ERROR_TABLE.iter().find(|m| m.win32 == win32)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn connect_v4() -> ConnectRequest {
        ConnectRequest {
            remote: "127.0.0.1:5001".parse().unwrap(),
            flags: CONNECT_NODELAY,
            timeout_ms: 2000,
            max_posted: 8,
        }
    }

    #[test]
    fn connect_round_trips_v4_and_v6() {
        for req in [
            connect_v4(),
            ConnectRequest {
                remote: "[::1]:9".parse().unwrap(),
                flags: 0,
                timeout_ms: 0,
                max_posted: 0,
            },
        ] {
            let mut buf = vec![0xa5; 64];
            assert_eq!(req.emit(&mut buf), Ok(48));
            assert_eq!(&buf[48..], &[0xa5; 16]);
            assert_eq!(ConnectRequest::parse(&buf[..48]), Ok(req));
        }
    }

    #[test]
    fn connect_timeout_is_capped_at_one_minute() {
        let mut buf = [0u8; 48];
        let at_cap = ConnectRequest {
            timeout_ms: MAX_CONNECT_TIMEOUT_MS,
            ..connect_v4()
        };
        assert_eq!(at_cap.emit(&mut buf), Ok(48));
        assert_eq!(ConnectRequest::parse(&buf), Ok(at_cap));
        buf[36..40].copy_from_slice(&(MAX_CONNECT_TIMEOUT_MS + 1).to_le_bytes());
        assert_eq!(ConnectRequest::parse(&buf), Err(WireError::Malformed));
        buf[36..40].copy_from_slice(&u32::MAX.to_le_bytes());
        assert_eq!(ConnectRequest::parse(&buf), Err(WireError::Malformed));
    }

    #[test]
    fn connect_rejects_bad_fields() {
        let mut buf = [0u8; 48];
        connect_v4().emit(&mut buf).unwrap();
        assert_eq!(ConnectRequest::parse(&buf[..47]), Err(WireError::Truncated));
        let mut v = buf;
        v[4] = 9;
        assert_eq!(ConnectRequest::parse(&v), Err(WireError::BadVersion));
        for (at, value) in [(8, 7u8), (12, 2), (44, 1), (20, 1), (40, 65), (10, 0)] {
            let mut bad = buf;
            bad[at] = value;
            if at == 10 {
                bad[11] = 0;
            }
            assert_eq!(
                ConnectRequest::parse(&bad),
                Err(WireError::Malformed),
                "byte {at}"
            );
        }
    }

    #[test]
    fn send_parses_segments_and_checks_them() {
        let mut buf = [0u8; 24 + 16];
        let segs = [
            WireSegment { offset: 0, len: 10 },
            WireSegment {
                offset: 90,
                len: 10,
            },
        ];
        let n = SendRequest::emit(&mut buf, 7, SEND_NODELAY, &segs).unwrap();
        assert_eq!(n, 40);
        let req = SendRequest::parse(&buf, 100).unwrap();
        assert_eq!(req.handle, 7);
        assert_eq!(req.segments().collect::<Vec<_>>(), segs);
        assert_eq!(req.total_len(), 20);
        // Payload too short for the second segment.
        assert_eq!(SendRequest::parse(&buf, 99), Err(SendError::BadSegments));
        // Table cut short.
        assert_eq!(
            SendRequest::parse(&buf[..39], 100),
            Err(SendError::Wire(WireError::Truncated))
        );
    }

    #[test]
    fn send_rejects_zero_overflow_and_flags() {
        let mut buf = [0u8; 32];
        SendRequest::emit(&mut buf, 1, 0, &[WireSegment { offset: 0, len: 0 }]).unwrap();
        assert_eq!(SendRequest::parse(&buf, 10), Err(SendError::BadSegments));
        SendRequest::emit(
            &mut buf,
            1,
            0,
            &[WireSegment {
                offset: u32::MAX,
                len: 2,
            }],
        )
        .unwrap();
        assert_eq!(
            SendRequest::parse(&buf, usize::MAX),
            Err(SendError::BadSegments)
        );
        SendRequest::emit(&mut buf, 1, 0, &[]).unwrap();
        assert_eq!(SendRequest::parse(&buf, 10), Err(SendError::BadSegments));
        for flags in [MSG_OOB, MSG_DONTROUTE, MSG_PARTIAL] {
            SendRequest::emit(&mut buf, 1, flags, &[WireSegment { offset: 0, len: 1 }]).unwrap();
            assert_eq!(
                SendRequest::parse(&buf, 10),
                Err(SendError::UnsupportedFlags)
            );
        }
        SendRequest::emit(&mut buf, 1, 0x100, &[WireSegment { offset: 0, len: 1 }]).unwrap();
        assert_eq!(
            SendRequest::parse(&buf, 10),
            Err(SendError::Wire(WireError::Malformed))
        );
    }

    #[test]
    fn stats_and_handles_round_trip() {
        let s = Stats {
            connections: 1,
            sends: 2,
            bytes: 3,
            errors: 4,
            in_flight: 5,
        };
        let mut buf = [0u8; 48];
        s.emit(&mut buf).unwrap();
        assert_eq!(Stats::parse(&buf), Ok(s));
        let h = HandleRequest { handle: 42 };
        let mut hb = [0u8; 16];
        h.emit(&mut hb).unwrap();
        assert_eq!(HandleRequest::parse(&hb), Ok(h));
        let r = ConnectReply { handle: 9 };
        r.emit(&mut hb).unwrap();
        assert_eq!(ConnectReply::parse(&hb), Ok(r));
    }

    #[test]
    fn error_table_is_consistent() {
        assert_eq!(mapping_for_win32(995).unwrap().name, "STATUS_CANCELLED");
        let mut statuses: Vec<u32> = ERROR_TABLE.iter().map(|m| m.status).collect();
        statuses.sort_unstable();
        statuses.dedup();
        assert_eq!(statuses.len(), ERROR_TABLE.len(), "duplicate status");
    }
}
