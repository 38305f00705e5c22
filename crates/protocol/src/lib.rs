//! The WskSend device interface: IOCTL codes and the wire structs that cross the
//! user/kernel boundary.
//!
//! Shared by the driver (both front ends, through the dispatcher) and the user-mode
//! harness, so both sides agree on every byte. Codes are built like the WDK's
//! [`CTL_CODE`](https://learn.microsoft.com/windows-hardware/drivers/kernel/defining-i-o-control-codes)
//! macro. Structs are little-endian with fixed sizes asserted at compile time; they are
//! parsed field by field from byte slices (never by casting a user buffer), smoltcp
//! style: `Repr::parse` validates, `Repr::emit` writes.
#![cfg_attr(not(test), no_std)]
#![forbid(unsafe_code)]

/// Name of the device object the driver creates.
pub const DEVICE_NAME: &str = "\\Device\\WskSend";
/// Name of the symbolic link user mode opens (`\\.\WskSend`).
pub const DOS_DEVICE_NAME: &str = "\\DosDevices\\WskSend";
/// Path user mode passes to `CreateFileW`.
pub const USER_PATH: &str = "\\\\.\\WskSend";

/// Version of this interface. Bumped on any incompatible change to a code or struct.
pub const PROTOCOL_VERSION: u32 = 1;

/// Driver version reported by [`IOCTL_WSKSEND_GET_VERSION`], from `Cargo.toml`.
pub const DRIVER_VERSION: DriverVersion = DriverVersion {
    major: parse_u16(env!("CARGO_PKG_VERSION_MAJOR")),
    minor: parse_u16(env!("CARGO_PKG_VERSION_MINOR")),
    patch: parse_u16(env!("CARGO_PKG_VERSION_PATCH")),
};

/// Device type in the vendor range (0x8000..=0xFFFF) reserved for third parties.
pub const FILE_DEVICE_WSKSEND: u32 = 0x8A57;

/// `METHOD_BUFFERED`: input and output copied through one system buffer.
pub const METHOD_BUFFERED: u32 = 0;
/// `METHOD_IN_DIRECT`: the second buffer is locked by the I/O manager and read by the driver.
pub const METHOD_IN_DIRECT: u32 = 1;
/// `METHOD_OUT_DIRECT`: the second buffer is locked and written by the driver.
pub const METHOD_OUT_DIRECT: u32 = 2;
/// `METHOD_NEITHER`: raw user pointers (never used here).
pub const METHOD_NEITHER: u32 = 3;

/// `FILE_ANY_ACCESS`.
pub const FILE_ANY_ACCESS: u32 = 0;
/// `FILE_READ_DATA`.
pub const FILE_READ_DATA: u32 = 1;
/// `FILE_WRITE_DATA`.
pub const FILE_WRITE_DATA: u32 = 2;

/// The WDK's `CTL_CODE(DeviceType, Function, Method, Access)`.
#[must_use]
pub const fn ctl_code(device_type: u32, function: u32, method: u32, access: u32) -> u32 {
    (device_type << 16) | (access << 14) | (function << 2) | method
}

/// The transfer method encoded in an IOCTL code (its low two bits).
#[must_use]
pub const fn method_of(code: u32) -> u32 {
    code & 3
}

/// Returns the interface and driver version ([`VersionInfo`]). Output only.
pub const IOCTL_WSKSEND_GET_VERSION: u32 =
    ctl_code(FILE_DEVICE_WSKSEND, 0x800, METHOD_BUFFERED, FILE_ANY_ACCESS);

/// Opens a TCP connection: [`ConnectRequest`] in, [`ConnectReply`] out.
pub const IOCTL_WSKSEND_CONNECT: u32 = ctl_code(
    FILE_DEVICE_WSKSEND,
    0x801,
    METHOD_BUFFERED,
    FILE_READ_DATA | FILE_WRITE_DATA,
);

/// Sends: [`SendRequest`] header and segment table in the input buffer; the payload is
/// the second ("output") buffer, locked by the I/O manager (`METHOD_IN_DIRECT`) and
/// sent without a copy. Completes with the bytes sent as the returned byte count.
pub const IOCTL_WSKSEND_SEND: u32 = ctl_code(
    FILE_DEVICE_WSKSEND,
    0x802,
    METHOD_IN_DIRECT,
    FILE_WRITE_DATA,
);

/// Closes a connection gracefully: [`HandleRequest`] in. Sends with the provider
/// finish, queued ones complete cancelled, then `WskDisconnect` and `WskCloseSocket`
/// (a reset after the linger, 10 s); it completes when every send has.
pub const IOCTL_WSKSEND_CLOSE: u32 = ctl_code(
    FILE_DEVICE_WSKSEND,
    0x803,
    METHOD_BUFFERED,
    FILE_READ_DATA | FILE_WRITE_DATA,
);

/// Counters: [`HandleRequest`] in (handle 0: the whole driver), [`Stats`] out.
pub const IOCTL_WSKSEND_STATS: u32 =
    ctl_code(FILE_DEVICE_WSKSEND, 0x804, METHOD_BUFFERED, FILE_ANY_ACCESS);

/// Closes a connection abortively (a reset, like `closesocket` with a zero linger):
/// [`HandleRequest`] in. Its pending sends fail; it completes when they have.
pub const IOCTL_WSKSEND_ABORT: u32 = ctl_code(
    FILE_DEVICE_WSKSEND,
    0x805,
    METHOD_BUFFERED,
    FILE_READ_DATA | FILE_WRITE_DATA,
);

/// An IOCTL code as the driver understands it; anything else is `Unknown`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Ioctl {
    /// [`IOCTL_WSKSEND_GET_VERSION`].
    GetVersion,
    /// [`IOCTL_WSKSEND_CONNECT`].
    Connect,
    /// [`IOCTL_WSKSEND_SEND`].
    Send,
    /// [`IOCTL_WSKSEND_CLOSE`].
    Close,
    /// [`IOCTL_WSKSEND_STATS`].
    Stats,
    /// [`IOCTL_WSKSEND_ABORT`].
    Abort,
    /// A code this driver does not implement (fails with `STATUS_INVALID_DEVICE_REQUEST`).
    Unknown(u32),
}

impl From<u32> for Ioctl {
    fn from(code: u32) -> Self {
        match code {
            IOCTL_WSKSEND_GET_VERSION => Self::GetVersion,
            IOCTL_WSKSEND_CONNECT => Self::Connect,
            IOCTL_WSKSEND_SEND => Self::Send,
            IOCTL_WSKSEND_CLOSE => Self::Close,
            IOCTL_WSKSEND_STATS => Self::Stats,
            IOCTL_WSKSEND_ABORT => Self::Abort,
            other => Self::Unknown(other),
        }
    }
}

impl From<Ioctl> for u32 {
    fn from(ioctl: Ioctl) -> Self {
        match ioctl {
            Ioctl::GetVersion => IOCTL_WSKSEND_GET_VERSION,
            Ioctl::Connect => IOCTL_WSKSEND_CONNECT,
            Ioctl::Send => IOCTL_WSKSEND_SEND,
            Ioctl::Close => IOCTL_WSKSEND_CLOSE,
            Ioctl::Stats => IOCTL_WSKSEND_STATS,
            Ioctl::Abort => IOCTL_WSKSEND_ABORT,
            Ioctl::Unknown(code) => code,
        }
    }
}

/// Errors from parsing a wire struct.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WireError {
    /// The buffer is shorter than the struct.
    Truncated,
    /// The struct's own size or version field is not one this side understands.
    BadVersion,
    /// A reserved field is not zero, or a field is out of its range.
    Malformed,
}

/// Semantic version of the driver binary.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DriverVersion {
    /// Major version.
    pub major: u16,
    /// Minor version.
    pub minor: u16,
    /// Patch version.
    pub patch: u16,
}

/// Reply of [`IOCTL_WSKSEND_GET_VERSION`].
///
/// Wire layout (little-endian, 16 bytes):
///
/// | offset | field |
/// |---|---|
/// | 0 | `size: u32` — size of this struct, 16 |
/// | 4 | `protocol_version: u32` |
/// | 8 | `driver_major: u16`, `driver_minor: u16` |
/// | 12 | `driver_patch: u16`, `reserved: u16` (zero) |
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct VersionInfo {
    /// Interface version the driver speaks ([`PROTOCOL_VERSION`]).
    pub protocol_version: u32,
    /// Version of the driver binary.
    pub driver: DriverVersion,
}

mod version_field {
    use core::ops::Range;
    pub const SIZE: Range<usize> = 0..4;
    pub const PROTOCOL: Range<usize> = 4..8;
    pub const MAJOR: Range<usize> = 8..10;
    pub const MINOR: Range<usize> = 10..12;
    pub const PATCH: Range<usize> = 12..14;
    pub const RESERVED: Range<usize> = 14..16;
}

impl VersionInfo {
    /// Size of the wire struct in bytes.
    pub const WIRE_SIZE: usize = 16;

    /// The version this build of the driver reports.
    #[must_use]
    pub const fn current() -> Self {
        Self {
            protocol_version: PROTOCOL_VERSION,
            driver: DRIVER_VERSION,
        }
    }

    /// Parses the wire form.
    ///
    /// # Errors
    /// [`WireError::Truncated`] if `buf` is shorter than [`Self::WIRE_SIZE`],
    /// [`WireError::BadVersion`] if the size field is not 16,
    /// [`WireError::Malformed`] if the reserved field is not zero.
    pub fn parse(buf: &[u8]) -> Result<Self, WireError> {
        use version_field as f;
        if buf.len() < Self::WIRE_SIZE {
            return Err(WireError::Truncated);
        }
        if read_u32(buf, f::SIZE) as usize != Self::WIRE_SIZE {
            return Err(WireError::BadVersion);
        }
        if read_u16(buf, f::RESERVED) != 0 {
            return Err(WireError::Malformed);
        }
        Ok(Self {
            protocol_version: read_u32(buf, f::PROTOCOL),
            driver: DriverVersion {
                major: read_u16(buf, f::MAJOR),
                minor: read_u16(buf, f::MINOR),
                patch: read_u16(buf, f::PATCH),
            },
        })
    }

    /// Writes the wire form into the first [`Self::WIRE_SIZE`] bytes of `buf`.
    ///
    /// # Errors
    /// [`WireError::Truncated`] if `buf` is too short; nothing is written then.
    pub fn emit(&self, buf: &mut [u8]) -> Result<usize, WireError> {
        use version_field as f;
        let buf = buf.get_mut(..Self::WIRE_SIZE).ok_or(WireError::Truncated)?;
        // CAST: WIRE_SIZE is 16, far below u32::MAX.
        buf[f::SIZE].copy_from_slice(&(Self::WIRE_SIZE as u32).to_le_bytes());
        buf[f::PROTOCOL].copy_from_slice(&self.protocol_version.to_le_bytes());
        buf[f::MAJOR].copy_from_slice(&self.driver.major.to_le_bytes());
        buf[f::MINOR].copy_from_slice(&self.driver.minor.to_le_bytes());
        buf[f::PATCH].copy_from_slice(&self.driver.patch.to_le_bytes());
        buf[f::RESERVED].copy_from_slice(&0u16.to_le_bytes());
        Ok(Self::WIRE_SIZE)
    }
}

const _: () = assert!(version_field::RESERVED.end == VersionInfo::WIRE_SIZE);

mod wire;
pub use wire::*;

/// Reads a little-endian `u32` from a 4-byte range the caller has bounds-checked.
pub(crate) fn read_u32(buf: &[u8], range: core::ops::Range<usize>) -> u32 {
    let mut bytes = [0u8; 4];
    bytes.copy_from_slice(&buf[range]);
    u32::from_le_bytes(bytes)
}

/// Reads a little-endian `u16` from a 2-byte range the caller has bounds-checked.
pub(crate) fn read_u16(buf: &[u8], range: core::ops::Range<usize>) -> u16 {
    let mut bytes = [0u8; 2];
    bytes.copy_from_slice(&buf[range]);
    u16::from_le_bytes(bytes)
}

/// `const` decimal parser for the `CARGO_PKG_VERSION_*` strings.
const fn parse_u16(s: &str) -> u16 {
    let bytes = s.as_bytes();
    let mut value: u16 = 0;
    let mut i = 0;
    while i < bytes.len() {
        assert!(
            bytes[i].is_ascii_digit(),
            "version component is not a number"
        );
        value = value * 10 + (bytes[i] - b'0') as u16;
        i += 1;
    }
    value
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ctl_code_matches_wdk_macro() {
        // CTL_CODE(FILE_DEVICE_DISK=7, 0x800, METHOD_BUFFERED, FILE_READ_ACCESS=1)
        // is 0x0007_6000 per the WDK; check the arithmetic against that known value.
        assert_eq!(ctl_code(7, 0x800, METHOD_BUFFERED, 1), 0x0007_6000);
        assert_eq!(IOCTL_WSKSEND_GET_VERSION, 0x8A57_2000);
        assert_eq!(method_of(IOCTL_WSKSEND_GET_VERSION), METHOD_BUFFERED);
    }

    #[test]
    fn documented_codes_match() {
        // The values README.md documents.
        assert_eq!(IOCTL_WSKSEND_CONNECT, 0x8A57_E004);
        assert_eq!(IOCTL_WSKSEND_SEND, 0x8A57_A009);
        assert_eq!(IOCTL_WSKSEND_CLOSE, 0x8A57_E00C);
        assert_eq!(IOCTL_WSKSEND_STATS, 0x8A57_2010);
        assert_eq!(method_of(IOCTL_WSKSEND_SEND), METHOD_IN_DIRECT);
    }

    #[test]
    fn ioctl_round_trips_and_keeps_unknown_codes() {
        assert_eq!(Ioctl::from(IOCTL_WSKSEND_GET_VERSION), Ioctl::GetVersion);
        assert_eq!(Ioctl::from(0x1234), Ioctl::Unknown(0x1234));
        assert_eq!(u32::from(Ioctl::Unknown(0x1234)), 0x1234);
        assert_eq!(u32::from(Ioctl::GetVersion), IOCTL_WSKSEND_GET_VERSION);
    }

    static VERSION_BYTES: [u8; 16] = [16, 0, 0, 0, 1, 0, 0, 0, 2, 0, 3, 0, 4, 0, 0, 0];

    #[test]
    fn version_parse() {
        let v = VersionInfo::parse(&VERSION_BYTES).unwrap();
        assert_eq!(v.protocol_version, 1);
        assert_eq!(
            v.driver,
            DriverVersion {
                major: 2,
                minor: 3,
                patch: 4
            }
        );
    }

    #[test]
    fn version_emit_writes_exactly_the_struct() {
        let v = VersionInfo::parse(&VERSION_BYTES).unwrap();
        let mut buf = [0xa5u8; 20];
        assert_eq!(v.emit(&mut buf), Ok(16));
        assert_eq!(&buf[..16], &VERSION_BYTES);
        assert_eq!(&buf[16..], &[0xa5; 4]);
    }

    #[test]
    fn version_emit_rejects_short_buffer_and_writes_nothing() {
        let mut buf = [0xa5u8; 15];
        assert_eq!(
            VersionInfo::current().emit(&mut buf),
            Err(WireError::Truncated)
        );
        assert_eq!(buf, [0xa5; 15]);
    }

    #[test]
    fn version_parse_rejects_bad_input() {
        assert_eq!(
            VersionInfo::parse(&VERSION_BYTES[..15]),
            Err(WireError::Truncated)
        );
        let mut bad_size = VERSION_BYTES;
        bad_size[0] = 20;
        assert_eq!(VersionInfo::parse(&bad_size), Err(WireError::BadVersion));
        let mut reserved = VERSION_BYTES;
        reserved[15] = 1;
        assert_eq!(VersionInfo::parse(&reserved), Err(WireError::Malformed));
    }

    #[test]
    fn current_version_comes_from_cargo() {
        let v = VersionInfo::current();
        assert_eq!(v.protocol_version, PROTOCOL_VERSION);
        assert_eq!(v.driver.major.to_string(), env!("CARGO_PKG_VERSION_MAJOR"));
    }
}
