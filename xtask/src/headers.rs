//! The C headers (`include/wsksend.h`, `include/wsksend_ioctl.h`) checked against the
//! Rust definitions they describe.
//!
//! Every expected value is taken from the Rust crates, never typed in here: constants and
//! IOCTL codes by name, struct sizes with `size_of`/`offset_of`, the wire layout by
//! emitting each struct with distinct sentinel values through its own `emit` and finding
//! where each field landed, limits by probing `parse`, and the kernel API's signatures from
//! the functions' Rust types. The values become `_Static_assert`s in a generated C file
//! (`target/header-check/check.c`) that `x86_64-w64-mingw32-gcc` compiles together with
//! the headers, once as a driver (`<ntddk.h>`) and once as a user-mode program
//! (`<windows.h>`). Strings (device names) are compared with the header's macros as the
//! preprocessor expands them. Any drift fails `cargo xtask test`.
//!
//! To cover something new, add one line to the matching table: [`ioctl_constants`] or
//! [`kapi_constants`], [`wire_structs`] (one line per field, with a sentinel), [`kapi_functions`] (and a [`CType`] for a
//! new parameter type), or [`strings`].

use std::ffi::c_void;
use std::fmt::Write as _;
use std::mem::{offset_of, size_of};
use std::net::{Ipv6Addr, SocketAddr, SocketAddrV6};
use std::path::{Path, PathBuf};
use std::process::Command;

use wsksend_engine::connection::SendCallback;
use wsksend_engine::kapi::{self, WSKS_BUFFER};
use wsksend_ffi::{MDL, SOCKADDR};
use wsksend_protocol::{self as p, WireSegment};

use crate::{Result, root};

/// The mingw-w64 C compiler.
pub const GCC: &str = "x86_64-w64-mingw32-gcc";
/// The mingw-w64 C++ compiler (the headers must work in C++ drivers and tools too).
const GXX: &str = "x86_64-w64-mingw32-g++";
/// mingw-w64 `nm`, to read the symbols a C++ caller of the kernel API references.
const NM: &str = "x86_64-w64-mingw32-nm";

/// Where mingw-w64 keeps its DDK headers (`ntddk.h`, `wdm.h`).
pub const DDK_INCLUDE: &str = "/usr/share/mingw-w64/include/ddk";

/// Integer constants of `wsksend_ioctl.h`: C expression, value in Rust.
fn ioctl_constants() -> Vec<(&'static str, u64)> {
    vec![
        ("WSKSEND_PROTOCOL_VERSION", p::PROTOCOL_VERSION.into()),
        ("FILE_DEVICE_WSKSEND", p::FILE_DEVICE_WSKSEND.into()),
        (
            "IOCTL_WSKSEND_GET_VERSION",
            p::IOCTL_WSKSEND_GET_VERSION.into(),
        ),
        ("IOCTL_WSKSEND_CONNECT", p::IOCTL_WSKSEND_CONNECT.into()),
        ("IOCTL_WSKSEND_SEND", p::IOCTL_WSKSEND_SEND.into()),
        ("IOCTL_WSKSEND_CLOSE", p::IOCTL_WSKSEND_CLOSE.into()),
        ("IOCTL_WSKSEND_ABORT", p::IOCTL_WSKSEND_ABORT.into()),
        ("IOCTL_WSKSEND_STATS", p::IOCTL_WSKSEND_STATS.into()),
        ("WSKSEND_CONNECT_NODELAY", p::CONNECT_NODELAY.into()),
        ("WSKSEND_SEND_NODELAY", p::SEND_NODELAY.into()),
        (
            "WSKSEND_SEND_FLAGS_UNSUPPORTED",
            p::SEND_FLAGS_UNSUPPORTED.into(),
        ),
        ("WSKSEND_AF_INET", p::AF_INET.into()),
        ("WSKSEND_AF_INET6", p::AF_INET6.into()),
        ("WSKSEND_MAX_SEGMENTS", p::MAX_SEGMENTS as u64),
        ("WSKSEND_MAX_SEND_BYTES", p::MAX_SEND_BYTES as u64),
        (
            "WSKSEND_MAX_CONNECT_TIMEOUT_MS",
            p::MAX_CONNECT_TIMEOUT_MS.into(),
        ),
        (
            "WSKSEND_MAX_PENDING_PER_HANDLE",
            p::MAX_PENDING_PER_HANDLE as u64,
        ),
        ("WSKSEND_MAX_POSTED", max_posted()),
    ]
}

/// Integer constants of `wsksend.h`: C expression, value in Rust.
fn kapi_constants() -> Vec<(&'static str, u64)> {
    vec![
        ("WSKS_CONNECT_NODELAY", kapi::WSKS_CONNECT_NODELAY.into()),
        ("WSKS_SEND_NODELAY", wsksend_ffi::WSK_FLAG_NODELAY.into()),
        ("WSKS_MAX_BUFFERS", wsksend_engine::mdl::MAX_CHAIN as u64),
        ("sizeof(WSKS_BUFFER)", size_of::<WSKS_BUFFER>() as u64),
        (
            "offsetof(WSKS_BUFFER, Buffer)",
            offset_of!(WSKS_BUFFER, Buffer) as u64,
        ),
        (
            "offsetof(WSKS_BUFFER, Length)",
            offset_of!(WSKS_BUFFER, Length) as u64,
        ),
    ]
}

/// String macros: C macro name (a wide string literal), value in Rust.
fn strings() -> Vec<(&'static str, &'static str)> {
    vec![
        ("WSKSEND_USER_PATH_W", p::USER_PATH),
        ("WSKSEND_DEVICE_NAME_W", p::DEVICE_NAME),
        ("WSKSEND_DOS_DEVICE_NAME_W", p::DOS_DEVICE_NAME),
    ]
}

/// The largest `max_posted` a CONNECT may ask for, as `ConnectRequest::parse` decides.
fn max_posted() -> u64 {
    let accepts = |max_posted: u32| {
        let mut buf = [0u8; p::ConnectRequest::WIRE_SIZE];
        let req = p::ConnectRequest {
            remote: "127.0.0.1:1"
                .parse()
                .unwrap_or(SocketAddr::from(([127, 0, 0, 1], 1))),
            flags: 0,
            timeout_ms: 0,
            max_posted,
        };
        req.emit(&mut buf).is_ok() && p::ConnectRequest::parse(&buf).is_ok()
    };
    (0..=1024u32)
        .take_while(|&m| accepts(m))
        .last()
        .map_or(0, u64::from)
}

/// One wire struct: its C name, its Rust size, the bytes Rust's `emit` wrote with a
/// sentinel in every field, each C field with the bytes its sentinel must appear as,
/// and the C names of the reserved fields (the stretches no sentinel covers, in order).
struct WireStruct {
    c_name: &'static str,
    size: usize,
    emitted: Vec<u8>,
    fields: Vec<(&'static str, Vec<u8>)>,
    reserved: &'static [&'static str],
}

fn le32(v: u32) -> Vec<u8> {
    v.to_le_bytes().to_vec()
}

fn le64(v: u64) -> Vec<u8> {
    v.to_le_bytes().to_vec()
}

fn emitted(
    size: usize,
    emit: impl FnOnce(&mut [u8]) -> std::result::Result<usize, p::WireError>,
) -> Result<Vec<u8>> {
    let mut buf = vec![0u8; size];
    let n = emit(&mut buf).map_err(|e| format!("emit failed: {e:?}"))?;
    buf.truncate(n);
    Ok(buf)
}

/// Sentinels have no zero byte and differ from each other and from the size, version and
/// count fields, so each shows up exactly once.
fn wire_structs() -> Result<Vec<WireStruct>> {
    let version = le32(p::PROTOCOL_VERSION);
    let size32 = |n: usize| le32(u32::try_from(n).unwrap_or(u32::MAX));

    let v = p::VersionInfo {
        protocol_version: 0xA1A2_A3A4,
        driver: p::DriverVersion {
            major: 0xB1B2,
            minor: 0xB3B4,
            patch: 0xB5B6,
        },
    };
    let addr = Ipv6Addr::from([
        0xD0, 0xD1, 0xD2, 0xD3, 0xD4, 0xD5, 0xD6, 0xD7, 0xD8, 0xD9, 0xDA, 0xDB, 0xDC, 0xDD, 0xDE,
        0xDF,
    ]);
    let connect = p::ConnectRequest {
        remote: SocketAddr::V6(SocketAddrV6::new(addr, 0xC1C2, 0, 0xC3C4_C5C6)),
        flags: 0xE1E2_E3E4,
        timeout_ms: 0xE5E6_E7E8,
        max_posted: 0xE9EA_EBEC,
    };
    let segments = [
        WireSegment {
            offset: 0x9192_9394,
            len: 0x9596_9798,
        },
        WireSegment {
            offset: 0x8182_8384,
            len: 0x8586_8788,
        },
        WireSegment {
            offset: 0x7172_7374,
            len: 0x7576_7778,
        },
    ];
    let (send_handle, send_flags) = (0xF1F2_F3F4_F5F6_F7F8, 0xF9FA_FBFC);
    let send = emitted(
        p::SendRequest::HEADER_SIZE + segments.len() * p::SendRequest::SEGMENT_SIZE,
        |b| p::SendRequest::emit(b, send_handle, send_flags, &segments),
    )?;
    let stats = p::Stats {
        connections: 0x1112_1314_1516_1718,
        sends: 0x2122_2324_2526_2728,
        bytes: 0x3132_3334_3536_3738,
        errors: 0x4142_4344_4546_4748,
        in_flight: 0x5152_5354_5556_5758,
    };
    let (reply_handle, handle) = (0x6162_6364_6566_6768, 0x6A6B_6C6D_6E6F_6061);

    Ok(vec![
        WireStruct {
            c_name: "WSKSEND_VERSION_INFO",
            size: p::VersionInfo::WIRE_SIZE,
            emitted: emitted(p::VersionInfo::WIRE_SIZE, |b| v.emit(b))?,
            fields: vec![
                ("Size", size32(p::VersionInfo::WIRE_SIZE)),
                ("ProtocolVersion", le32(v.protocol_version)),
                ("DriverMajor", v.driver.major.to_le_bytes().to_vec()),
                ("DriverMinor", v.driver.minor.to_le_bytes().to_vec()),
                ("DriverPatch", v.driver.patch.to_le_bytes().to_vec()),
            ],
            reserved: &["Reserved"],
        },
        WireStruct {
            c_name: "WSKSEND_CONNECT_REQUEST",
            size: p::ConnectRequest::WIRE_SIZE,
            emitted: emitted(p::ConnectRequest::WIRE_SIZE, |b| connect.emit(b))?,
            fields: vec![
                ("Size", size32(p::ConnectRequest::WIRE_SIZE)),
                ("Version", version.clone()),
                ("Family", p::AF_INET6.to_le_bytes().to_vec()),
                ("Port", 0xC1C2u16.to_le_bytes().to_vec()),
                ("Flags", le32(connect.flags)),
                ("Address", addr.octets().to_vec()),
                ("ScopeId", le32(0xC3C4_C5C6)),
                ("TimeoutMs", le32(connect.timeout_ms)),
                ("MaxPosted", le32(connect.max_posted)),
            ],
            reserved: &["Reserved"],
        },
        WireStruct {
            c_name: "WSKSEND_CONNECT_REPLY",
            size: p::ConnectReply::WIRE_SIZE,
            emitted: emitted(p::ConnectReply::WIRE_SIZE, |b| {
                p::ConnectReply {
                    handle: reply_handle,
                }
                .emit(b)
            })?,
            fields: vec![
                ("Size", size32(p::ConnectReply::WIRE_SIZE)),
                ("Handle", le64(reply_handle)),
            ],
            reserved: &["Reserved"],
        },
        WireStruct {
            c_name: "WSKSEND_SEND_REQUEST",
            size: p::SendRequest::HEADER_SIZE,
            emitted: send[..p::SendRequest::HEADER_SIZE].to_vec(),
            fields: vec![
                ("Size", size32(p::SendRequest::HEADER_SIZE)),
                ("Version", version.clone()),
                ("Handle", le64(send_handle)),
                ("Flags", le32(send_flags)),
                ("SegmentCount", size32(segments.len())),
            ],
            reserved: &[],
        },
        WireStruct {
            c_name: "WSKSEND_SEGMENT",
            size: p::SendRequest::SEGMENT_SIZE,
            // The second entry of the table, to show the stride is the segment size.
            emitted: send[p::SendRequest::HEADER_SIZE + p::SendRequest::SEGMENT_SIZE..]
                [..p::SendRequest::SEGMENT_SIZE]
                .to_vec(),
            fields: vec![
                ("Offset", le32(segments[1].offset)),
                ("Length", le32(segments[1].len)),
            ],
            reserved: &[],
        },
        WireStruct {
            c_name: "WSKSEND_HANDLE_REQUEST",
            size: p::HandleRequest::WIRE_SIZE,
            emitted: emitted(p::HandleRequest::WIRE_SIZE, |b| {
                p::HandleRequest { handle }.emit(b)
            })?,
            fields: vec![
                ("Size", size32(p::HandleRequest::WIRE_SIZE)),
                ("Version", version),
                ("Handle", le64(handle)),
            ],
            reserved: &[],
        },
        WireStruct {
            c_name: "WSKSEND_STATS",
            size: p::Stats::WIRE_SIZE,
            emitted: emitted(p::Stats::WIRE_SIZE, |b| stats.emit(b))?,
            fields: vec![
                ("Size", size32(p::Stats::WIRE_SIZE)),
                ("Connections", le64(stats.connections)),
                ("Sends", le64(stats.sends)),
                ("Bytes", le64(stats.bytes)),
                ("Errors", le64(stats.errors)),
                ("InFlight", le64(stats.in_flight)),
            ],
            reserved: &["Reserved"],
        },
    ])
}

/// A field's place in a struct: (C name, offset, size).
type Layout = Vec<(&'static str, usize, usize)>;

/// Finds every field of `s` in the bytes Rust emitted; the uncovered stretches are the
/// reserved fields. Fails if a sentinel is missing or ambiguous, or the count of
/// uncovered stretches differs from the reserved fields named.
fn layout(s: &WireStruct) -> Result<Layout> {
    if s.emitted.len() != s.size {
        return Err(format!(
            "{}: Rust emitted {} bytes, its wire size is {}",
            s.c_name,
            s.emitted.len(),
            s.size
        ));
    }
    let mut covered = vec![false; s.size];
    let mut out = Layout::new();
    for (name, bytes) in &s.fields {
        let hits: Vec<usize> = s
            .emitted
            .windows(bytes.len())
            .enumerate()
            .filter(|(_, w)| w == &bytes.as_slice())
            .map(|(i, _)| i)
            .collect();
        let [at] = hits[..] else {
            return Err(format!(
                "{}.{name}: its sentinel appears {} times in what Rust emitted ({:02x?}); \
                 the Rust layout changed or the probe needs a new sentinel",
                s.c_name,
                hits.len(),
                s.emitted
            ));
        };
        covered[at..at + bytes.len()].fill(true);
        out.push((name, at, bytes.len()));
    }
    let mut gaps = Vec::new();
    let mut i = 0;
    while i < s.size {
        if covered[i] {
            i += 1;
            continue;
        }
        let start = i;
        while i < s.size && !covered[i] {
            i += 1;
        }
        gaps.push((start, i - start));
    }
    if gaps.len() != s.reserved.len() {
        return Err(format!(
            "{}: Rust leaves {} stretch(es) unwritten ({gaps:?}), the table names {} reserved field(s)",
            s.c_name,
            gaps.len(),
            s.reserved.len()
        ));
    }
    for (name, (at, len)) in s.reserved.iter().zip(gaps) {
        out.push((name, at, len));
    }
    Ok(out)
}

/// A Rust type of the kernel API and how the header must spell it (or a type
/// `__builtin_types_compatible_p` accepts as the same).
trait CType {
    const C: &'static str;
}

macro_rules! c_types {
    ($($rust:ty => $c:literal,)*) => { $(impl CType for $rust { const C: &'static str = $c; })* };
}

c_types! {
    () => "VOID",
    i32 => "LONG",
    u16 => "USHORT",
    u32 => "ULONG",
    u64 => "ULONGLONG",
    usize => "SIZE_T",
    *mut c_void => "PVOID",
    *mut *mut c_void => "PVOID *",
    *mut usize => "SIZE_T *",
    *mut MDL => "PMDL",
    *const SOCKADDR => "const struct sockaddr *",
    *const WSKS_BUFFER => "const WSKS_BUFFER *",
    Option<SendCallback> => "PFN_WSKS_SEND_COMPLETE",
}

/// A function pointer type as C parts: the return type, then the parameters.
trait CSignature {
    const PARTS: &'static [&'static str];
}

macro_rules! c_signatures {
    ($(($($arg:ident),*))*) => {$(
        impl<R: CType, $($arg: CType),*> CSignature for unsafe extern "system" fn($($arg),*) -> R {
            const PARTS: &'static [&'static str] = &[R::C, $($arg::C),*];
        }
    )*};
}

c_signatures! {
    (A, B, C)
    (A, B, C, D, E)
    (A, B, C, D, E, F)
    (A, B, C, D, E, F, G)
    (A)
}

/// The C parts of a function's signature, read from its Rust type at compile time (the
/// function itself is not referenced at run time, so xtask links without a kernel).
const fn signature<F: CSignature + Copy>(_function: F) -> &'static [&'static str] {
    F::PARTS
}

/// The exported kernel API: C name and signature, from the Rust function. A new export
/// is one line here (the cast names its parameter count).
fn kapi_functions() -> Vec<(&'static str, &'static [&'static str])> {
    const CONNECT: &[&str] =
        signature(kapi::WsksConnect as unsafe extern "system" fn(_, _, _, _, _) -> _);
    const SEND_MDL: &[&str] =
        signature(kapi::WsksSendMdl as unsafe extern "system" fn(_, _, _, _, _, _, _) -> _);
    const SEND_BUFFERS: &[&str] =
        signature(kapi::WsksSendBuffers as unsafe extern "system" fn(_, _, _, _, _, _) -> _);
    const SEND_SYNC: &[&str] =
        signature(kapi::WsksSendSync as unsafe extern "system" fn(_, _, _, _, _, _) -> _);
    const CLOSE: &[&str] = signature(kapi::WsksClose as unsafe extern "system" fn(_) -> _);
    const ABORTIVE_CLOSE: &[&str] =
        signature(kapi::WsksAbortiveClose as unsafe extern "system" fn(_) -> _);
    vec![
        ("WsksConnect", CONNECT),
        ("WsksSendMdl", SEND_MDL),
        ("WsksSendBuffers", SEND_BUFFERS),
        ("WsksSendSync", SEND_SYNC),
        ("WsksClose", CLOSE),
        ("WsksAbortiveClose", ABORTIVE_CLOSE),
    ]
}

/// Names of the exported functions, for the import library's `.def`.
pub fn export_names() -> Vec<&'static str> {
    kapi_functions().into_iter().map(|(name, _)| name).collect()
}

fn c_pointer_type(parts: &[&str]) -> String {
    let (ret, args) = parts
        .split_first()
        .map_or(("VOID", &[][..]), |(r, a)| (*r, a));
    let args = if args.is_empty() {
        "VOID".to_string()
    } else {
        args.join(", ")
    };
    format!("{ret} (NTAPI *)({args})")
}

/// The generated C file: every expectation as a `_Static_assert`.
fn generate() -> Result<String> {
    let mut c = String::from(
        "/* Generated by `cargo xtask test` (xtask/src/headers.rs) from the Rust crates.\n \
         * Do not edit: a failing assert means a header no longer matches Rust. */\n\
         #if defined(WSKSEND_CHECK_KERNEL)\n\
         #include <ntddk.h>\n\
         #include \"wsksend.h\"\n\
         #else\n\
         #include <windows.h>\n\
         #endif\n\
         #include \"wsksend_ioctl.h\"\n\
         #include <stddef.h>\n\n\
         #define EXPECT(what, rust) _Static_assert((what) == (rust), #what \" must be \" #rust \" (the Rust value)\")\n\n",
    );
    c.push_str("/* wsksend_ioctl.h: constants, codes and limits. */\n");
    for (name, value) in ioctl_constants() {
        let _ = writeln!(c, "EXPECT({name}, {value:#x}ull);");
    }
    c.push_str("\n/* Wire structs: size, and offset and size of every field. */\n");
    for s in wire_structs()? {
        let t = s.c_name;
        let _ = writeln!(c, "EXPECT(sizeof({t}), {});", s.size);
        for (field, at, len) in layout(&s)? {
            let _ = writeln!(c, "EXPECT(offsetof({t}, {field}), {at});");
            let _ = writeln!(c, "EXPECT(sizeof((({t} *)0)->{field}), {len});");
        }
    }
    c.push_str("\n#if defined(WSKSEND_CHECK_KERNEL)\n/* wsksend.h: constants and layouts. */\n");
    for (name, value) in kapi_constants() {
        let _ = writeln!(c, "EXPECT({name}, {value:#x}ull);");
    }
    c.push_str("\n/* wsksend.h: the callback type and the exported functions. */\n");
    let _ = writeln!(
        c,
        "_Static_assert(__builtin_types_compatible_p(PFN_WSKS_SEND_COMPLETE, {}), \
         \"PFN_WSKS_SEND_COMPLETE must match the Rust SendCallback\");",
        c_pointer_type(<SendCallback as CSignature>::PARTS)
    );
    for (name, parts) in kapi_functions() {
        let want = c_pointer_type(parts);
        let _ = writeln!(
            c,
            "_Static_assert(__builtin_types_compatible_p(__typeof__(&{name}), {want}), \
             \"{name} must be {}\");",
            want.replace('"', "'")
        );
    }
    c.push_str("#endif\n");
    Ok(c)
}

/// Parses a C wide string literal as the preprocessor leaves it (`L"\\\\.\\WskSend"`).
fn c_wide_literal(text: &str) -> Option<String> {
    let inner = text.trim().strip_prefix("L\"")?.strip_suffix('"')?;
    let mut out = String::new();
    let mut chars = inner.chars();
    while let Some(ch) = chars.next() {
        if ch == '\\' {
            match chars.next()? {
                '\\' => out.push('\\'),
                '"' => out.push('"'),
                _ => return None,
            }
        } else {
            out.push(ch);
        }
    }
    Some(out)
}

fn include_dir() -> PathBuf {
    root().join("include")
}

fn gcc(args: &[&str], what: &str) -> Result<String> {
    tool(GCC, args, what)
}

fn tool(program: &str, args: &[&str], what: &str) -> Result<String> {
    let out = Command::new(program)
        .args(args)
        .output()
        .map_err(|e| format!("cannot run {program}: {e}"))?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(format!(
            "{what}:\n{}",
            String::from_utf8_lossy(&out.stderr).trim_end()
        ))
    }
}

/// `cargo xtask test`'s header drift check.
pub fn check() -> Result {
    let dir = root().join("target").join("header-check");
    std::fs::create_dir_all(&dir).map_err(|e| format!("create {}: {e}", dir.display()))?;
    let file = dir.join("check.c");
    std::fs::write(&file, generate()?).map_err(|e| format!("write {}: {e}", file.display()))?;
    let include = include_dir();
    let include = include.to_string_lossy();
    let file_s = file.to_string_lossy();
    let common = ["-std=c11", "-Wall", "-Wextra", "-Werror", "-fsyntax-only"];
    let mut kernel: Vec<&str> = common.to_vec();
    kernel.extend([
        "-DWSKSEND_CHECK_KERNEL",
        "-I",
        DDK_INCLUDE,
        "-I",
        &include,
        &file_s,
    ]);
    gcc(
        &kernel,
        "the headers drifted from the Rust definitions (kernel mode)",
    )?;
    let mut user: Vec<&str> = common.to_vec();
    user.extend(["-I", &include, &file_s]);
    gcc(
        &user,
        "the headers drifted from the Rust definitions (user mode)",
    )?;
    check_strings(&include)?;
    check_cxx(&dir, &include)?;
    println!(
        "headers: include/wsksend.h and include/wsksend_ioctl.h match the Rust definitions ({})",
        file.strip_prefix(root()).unwrap_or(&file).display()
    );
    Ok(())
}

/// Both headers compile as C++, and a C++ caller links the kernel API by its C names
/// (`extern "C"`), not by mangled ones. mingw-w64's DDK headers do not compile as C++,
/// so this unit declares the two kernel types `wsksend.h` needs itself.
fn check_cxx(dir: &Path, include: &str) -> Result {
    let names = export_names();
    let refs: Vec<String> = names.iter().map(|n| format!("(void *)&{n}")).collect();
    let source = format!(
        "/* Generated by xtask/src/headers.rs: the headers in C++. */\n\
         #include <windows.h>\n\
         #include <winternl.h> /* NTSTATUS */\n\
         typedef struct _MDL *PMDL;\n\
         #define _WDMDDK_ /* what wsksend.h needs of <wdm.h> is declared above */\n\
         #include \"wsksend.h\"\n\
         #include \"wsksend_ioctl.h\"\n\
         static_assert(sizeof(WSKSEND_CONNECT_REQUEST) == {}, \"C++ sees the C layout\");\n\
         void *wsksend_cxx_refs[] = {{ {} }};\n",
        p::ConnectRequest::WIRE_SIZE,
        refs.join(", ")
    );
    let file = dir.join("check.cpp");
    let object = dir.join("check_cxx.o");
    std::fs::write(&file, source).map_err(|e| format!("write {}: {e}", file.display()))?;
    let (file, object) = (file.to_string_lossy(), object.to_string_lossy());
    tool(
        GXX,
        &[
            "-std=c++17",
            "-Wall",
            "-Wextra",
            "-Werror",
            "-I",
            include,
            "-c",
            "-o",
            &object,
            &file,
        ],
        "the headers do not compile as C++",
    )?;
    let symbols = tool(NM, &["-u", &object], "read the C++ object's symbols")?;
    let linked: Vec<&str> = symbols
        .lines()
        .filter_map(|l| l.split_whitespace().last())
        .map(|s| s.strip_prefix("__imp_").unwrap_or(s))
        .collect();
    for name in names {
        if !linked.contains(&name) {
            return Err(format!(
                "wsksend.h: a C++ caller does not reference {name} by its C name (extern \"C\" missing?); it references {linked:?}"
            ));
        }
    }
    Ok(())
}

/// The device-name macros, as the preprocessor expands them, against the Rust strings.
fn check_strings(include: &str) -> Result {
    let header = Path::new(include).join("wsksend_ioctl.h");
    let header = header.to_string_lossy();
    let macros = gcc(
        &["-E", "-dM", "-include", "windows.h", "-I", include, &header],
        "preprocess wsksend_ioctl.h",
    )?;
    for (name, rust) in strings() {
        let prefix = format!("#define {name} ");
        let found = macros
            .lines()
            .find_map(|l| l.strip_prefix(&prefix))
            .ok_or_else(|| format!("wsksend_ioctl.h: {name} is not defined"))?;
        if c_wide_literal(found).as_deref() != Some(rust) {
            return Err(format!(
                "wsksend_ioctl.h: {name} is {found}, the Rust value is {rust:?}"
            ));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_wire_struct_is_located_completely() {
        for s in wire_structs().unwrap() {
            let layout = layout(&s).unwrap();
            let total: usize = layout.iter().map(|(_, _, len)| len).sum();
            assert_eq!(total, s.size, "{}", s.c_name);
        }
    }

    #[test]
    fn layout_rejects_a_missing_sentinel() {
        let mut s = wire_structs().unwrap().remove(0);
        s.emitted[4] ^= 0xFF;
        assert!(layout(&s).is_err());
    }

    #[test]
    fn signatures_come_from_the_rust_types() {
        let f = kapi_functions();
        assert_eq!(c_pointer_type(f[4].1), "LONG (NTAPI *)(PVOID)", "WsksClose");
        assert_eq!(f[0].1.len(), 6, "WsksConnect: return + 5 parameters");
        assert_eq!(max_posted(), 64);
    }

    #[test]
    fn wide_literals_parse() {
        assert_eq!(
            c_wide_literal(r#"L"\\\\.\\WskSend""#).as_deref(),
            Some(r"\\.\WskSend")
        );
        assert_eq!(c_wide_literal("\"x\""), None);
    }
}
