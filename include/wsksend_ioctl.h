/*
 * wsksend_ioctl.h - the WskSend device interface for user mode (and for drivers that
 * talk to WskSend's device): device name, IOCTL codes, wire structs, limits.
 *
 * Usage (user mode):
 *
 *     #include <windows.h>
 *     #include "wsksend_ioctl.h"
 *
 *     HANDLE dev = CreateFileW(WSKSEND_USER_PATH_W, GENERIC_READ | GENERIC_WRITE, 0, NULL,
 *                              OPEN_EXISTING, FILE_FLAG_OVERLAPPED, NULL);
 *
 * Every request starts with `Size` (its own size; for SEND the header's) and `Version`
 * (WSKSEND_PROTOCOL_VERSION); reserved fields must be zero. All structs are
 * little-endian with a fixed layout and no padding (checked below and against the Rust
 * definitions in crates/protocol by `cargo xtask test`). Connection handles are opaque
 * 64-bit ids, valid only on the file handle that created them.
 *
 * | code                      | method    | input                       | output                |
 * |---------------------------|-----------|-----------------------------|-----------------------|
 * | IOCTL_WSKSEND_GET_VERSION | buffered  | -                           | WSKSEND_VERSION_INFO  |
 * | IOCTL_WSKSEND_CONNECT     | buffered  | WSKSEND_CONNECT_REQUEST     | WSKSEND_CONNECT_REPLY |
 * | IOCTL_WSKSEND_SEND        | in-direct | WSKSEND_SEND_REQUEST + n x WSKSEND_SEGMENT | the payload (lpOutBuffer); bytes sent = lpBytesReturned |
 * | IOCTL_WSKSEND_CLOSE       | buffered  | WSKSEND_HANDLE_REQUEST      | -                     |
 * | IOCTL_WSKSEND_ABORT       | buffered  | WSKSEND_HANDLE_REQUEST      | -                     |
 * | IOCTL_WSKSEND_STATS       | buffered  | WSKSEND_HANDLE_REQUEST (Handle 0 = driver) | WSKSEND_STATS |
 *
 * A SEND completes when WSK has accepted all its bytes; sends on one connection reach
 * the network in issue order; any number (up to WSKSEND_MAX_PENDING_PER_HANDLE per file
 * handle) may be pending with overlapped I/O. Errors: see README.md "Errors"
 * (GetLastError after DeviceIoControl / GetOverlappedResult).
 */
#ifndef WSKSEND_IOCTL_H
#define WSKSEND_IOCTL_H

/* CTL_CODE and the base types: <winioctl.h> in user mode, <wdm.h>/<ntddk.h> in a driver. */
#if !defined(CTL_CODE)
#include <windows.h>
#include <winioctl.h>
#endif

#ifdef __cplusplus
extern "C" {
#endif

/* ---- Names ---------------------------------------------------------------------- */

/* What user mode passes to CreateFileW (open with FILE_FLAG_OVERLAPPED for async I/O). */
#define WSKSEND_USER_PATH_W       L"\\\\.\\WskSend"
/* The device object and its symbolic link, for kernel-mode callers. */
#define WSKSEND_DEVICE_NAME_W     L"\\Device\\WskSend"
#define WSKSEND_DOS_DEVICE_NAME_W L"\\DosDevices\\WskSend"

/* Version of this interface; bumped on any incompatible change to a code or struct. */
#define WSKSEND_PROTOCOL_VERSION 1u

/* ---- IOCTL codes ---------------------------------------------------------------- */

/* Device type in the vendor range (0x8000..0xFFFF). */
#define FILE_DEVICE_WSKSEND 0x8A57u

/* -> WSKSEND_VERSION_INFO. */
#define IOCTL_WSKSEND_GET_VERSION \
    CTL_CODE(FILE_DEVICE_WSKSEND, 0x800, METHOD_BUFFERED, FILE_ANY_ACCESS)
/* WSKSEND_CONNECT_REQUEST -> WSKSEND_CONNECT_REPLY. */
#define IOCTL_WSKSEND_CONNECT \
    CTL_CODE(FILE_DEVICE_WSKSEND, 0x801, METHOD_BUFFERED, FILE_READ_DATA | FILE_WRITE_DATA)
/* Input: WSKSEND_SEND_REQUEST followed by SegmentCount WSKSEND_SEGMENTs.
 * Output buffer: the payload; the I/O manager locks it (METHOD_IN_DIRECT) and the
 * driver sends the segments from it without a copy. */
#define IOCTL_WSKSEND_SEND \
    CTL_CODE(FILE_DEVICE_WSKSEND, 0x802, METHOD_IN_DIRECT, FILE_WRITE_DATA)
/* WSKSEND_HANDLE_REQUEST; graceful: sends with the provider finish (queued ones are
 * cancelled), then a disconnect; a reset after 10 s. Completes when every send has. */
#define IOCTL_WSKSEND_CLOSE \
    CTL_CODE(FILE_DEVICE_WSKSEND, 0x803, METHOD_BUFFERED, FILE_READ_DATA | FILE_WRITE_DATA)
/* WSKSEND_HANDLE_REQUEST; abortive (a reset, as closesocket with a zero linger). */
#define IOCTL_WSKSEND_ABORT \
    CTL_CODE(FILE_DEVICE_WSKSEND, 0x805, METHOD_BUFFERED, FILE_READ_DATA | FILE_WRITE_DATA)
/* WSKSEND_HANDLE_REQUEST (Handle 0: the whole driver) -> WSKSEND_STATS. */
#define IOCTL_WSKSEND_STATS \
    CTL_CODE(FILE_DEVICE_WSKSEND, 0x804, METHOD_BUFFERED, FILE_ANY_ACCESS)

/* ---- Flags ---------------------------------------------------------------------- */

/* WSKSEND_CONNECT_REQUEST.Flags: every send on the connection uses WSK_FLAG_NODELAY. */
#define WSKSEND_CONNECT_NODELAY 0x00000001u

/* WSKSEND_SEND_REQUEST.Flags carries WSASend's dwFlags unchanged plus: */
#define WSKSEND_SEND_NODELAY 0x00010000u /* this send uses WSK_FLAG_NODELAY */
/* MSG_OOB (0x1), MSG_DONTROUTE (0x4) and MSG_PARTIAL (0x8000) cannot be honoured by a
 * stream WSK send: they fail with STATUS_NOT_SUPPORTED (ERROR_NOT_SUPPORTED). Any other
 * bit fails with STATUS_INVALID_PARAMETER. */
#define WSKSEND_SEND_FLAGS_UNSUPPORTED 0x00008005u

/* Address families of WSKSEND_CONNECT_REQUEST.Family (the Winsock values). */
#define WSKSEND_AF_INET  2u
#define WSKSEND_AF_INET6 23u

/* ---- Limits --------------------------------------------------------------------- */

#define WSKSEND_MAX_SEGMENTS           64u       /* segments (WSABUFs) in one send */
#define WSKSEND_MAX_SEND_BYTES         (64u << 20) /* bytes in one send */
#define WSKSEND_MAX_CONNECT_TIMEOUT_MS 60000u      /* CONNECT TimeoutMs: socket, bind and connect together */
#define WSKSEND_MAX_PENDING_PER_HANDLE 256u      /* sends pending on one file handle */
#define WSKSEND_MAX_POSTED             64u       /* largest ConnectRequest.MaxPosted */

/* ---- Wire structs (little-endian, fixed layout, no padding) --------------------- */

/* Natural alignment gives exactly the wire layout: every field sits at a multiple of
 * its size, so there is no padding (the size checks below and the drift check prove it). */

/* IOCTL_WSKSEND_GET_VERSION output (16 bytes). */
typedef struct _WSKSEND_VERSION_INFO {
    ULONG  Size;            /* sizeof(WSKSEND_VERSION_INFO) */
    ULONG  ProtocolVersion; /* WSKSEND_PROTOCOL_VERSION of the driver */
    USHORT DriverMajor;
    USHORT DriverMinor;
    USHORT DriverPatch;
    USHORT Reserved;        /* zero */
} WSKSEND_VERSION_INFO;

/* IOCTL_WSKSEND_CONNECT input (48 bytes). */
typedef struct _WSKSEND_CONNECT_REQUEST {
    ULONG  Size;        /* sizeof(WSKSEND_CONNECT_REQUEST) */
    ULONG  Version;     /* WSKSEND_PROTOCOL_VERSION */
    USHORT Family;      /* WSKSEND_AF_INET or WSKSEND_AF_INET6 */
    USHORT Port;        /* host byte order, not 0 */
    ULONG  Flags;       /* 0 or WSKSEND_CONNECT_NODELAY */
    UCHAR  Address[16]; /* IPv4: the first 4 bytes, the rest zero; IPv6: all 16 */
    ULONG  ScopeId;     /* IPv6 scope id; 0 for IPv4 */
    ULONG  TimeoutMs;   /* connect timeout; 0: 10 000 ms */
    ULONG  MaxPosted;   /* sends posted to WSK at once; 0: 8; at most WSKSEND_MAX_POSTED */
    ULONG  Reserved;    /* zero */
} WSKSEND_CONNECT_REQUEST;

/* IOCTL_WSKSEND_CONNECT output (16 bytes). */
typedef struct _WSKSEND_CONNECT_REPLY {
    ULONG     Size;     /* sizeof(WSKSEND_CONNECT_REPLY) */
    ULONG     Reserved; /* zero */
    ULONGLONG Handle;   /* opaque, never 0; valid on this file handle only */
} WSKSEND_CONNECT_REPLY;

/* One piece of the payload buffer (a WSABUF as an offset into the payload). */
typedef struct _WSKSEND_SEGMENT {
    ULONG Offset; /* into the payload buffer */
    ULONG Length; /* not 0; Offset + Length inside the payload buffer */
} WSKSEND_SEGMENT;

/* IOCTL_WSKSEND_SEND input: this 24-byte header, then SegmentCount segments. */
typedef struct _WSKSEND_SEND_REQUEST {
    ULONG     Size;         /* sizeof(WSKSEND_SEND_REQUEST): the header only */
    ULONG     Version;      /* WSKSEND_PROTOCOL_VERSION */
    ULONGLONG Handle;       /* from WSKSEND_CONNECT_REPLY */
    ULONG     Flags;        /* WSASend dwFlags | WSKSEND_SEND_NODELAY */
    ULONG     SegmentCount; /* 1..WSKSEND_MAX_SEGMENTS */
    /* WSKSEND_SEGMENT Segments[SegmentCount] follow. */
} WSKSEND_SEND_REQUEST;

/* Input size of a SEND with `count` segments. */
#define WSKSEND_SEND_REQUEST_SIZE(count) \
    (sizeof(WSKSEND_SEND_REQUEST) + (count) * sizeof(WSKSEND_SEGMENT))

/* IOCTL_WSKSEND_CLOSE and IOCTL_WSKSEND_STATS input (16 bytes). */
typedef struct _WSKSEND_HANDLE_REQUEST {
    ULONG     Size;    /* sizeof(WSKSEND_HANDLE_REQUEST) */
    ULONG     Version; /* WSKSEND_PROTOCOL_VERSION */
    ULONGLONG Handle;  /* the connection; STATS: 0 for the whole driver */
} WSKSEND_HANDLE_REQUEST;

/* IOCTL_WSKSEND_STATS output (48 bytes). */
typedef struct _WSKSEND_STATS {
    ULONG     Size;        /* sizeof(WSKSEND_STATS) */
    ULONG     Reserved;    /* zero */
    ULONGLONG Connections; /* open connections (1 for a per-connection query) */
    ULONGLONG Sends;       /* sends completed successfully */
    ULONGLONG Bytes;       /* bytes sent by them */
    ULONGLONG Errors;      /* sends that failed (including cancelled ones) */
    ULONGLONG InFlight;    /* sends queued or with the provider now */
} WSKSEND_STATS;

/* The sizes the driver checks (a wrong Size field fails with STATUS_REVISION_MISMATCH). */
#if defined(__cplusplus)
#define WSKSEND_STATIC_ASSERT(e, m) static_assert(e, m)
#else
#define WSKSEND_STATIC_ASSERT(e, m) _Static_assert(e, m)
#endif
WSKSEND_STATIC_ASSERT(sizeof(WSKSEND_VERSION_INFO) == 16, "WSKSEND_VERSION_INFO is 16 bytes");
WSKSEND_STATIC_ASSERT(sizeof(WSKSEND_CONNECT_REQUEST) == 48, "WSKSEND_CONNECT_REQUEST is 48 bytes");
WSKSEND_STATIC_ASSERT(sizeof(WSKSEND_CONNECT_REPLY) == 16, "WSKSEND_CONNECT_REPLY is 16 bytes");
WSKSEND_STATIC_ASSERT(sizeof(WSKSEND_SEGMENT) == 8, "WSKSEND_SEGMENT is 8 bytes");
WSKSEND_STATIC_ASSERT(sizeof(WSKSEND_SEND_REQUEST) == 24, "WSKSEND_SEND_REQUEST is 24 bytes");
WSKSEND_STATIC_ASSERT(sizeof(WSKSEND_HANDLE_REQUEST) == 16, "WSKSEND_HANDLE_REQUEST is 16 bytes");
WSKSEND_STATIC_ASSERT(sizeof(WSKSEND_STATS) == 48, "WSKSEND_STATS is 48 bytes");

#ifdef __cplusplus
}
#endif

#endif /* WSKSEND_IOCTL_H */
