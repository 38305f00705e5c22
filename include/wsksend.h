/*
 * wsksend.h - WskSend's kernel API for C and C++ drivers.
 *
 * wsksend.sys is an export driver: link your driver against wsksend.lib (it imports
 * from "wsksend.sys") and make sure WskSend is loaded before your driver (a service
 * dependency, or one load-order group). Include <wdm.h> or <ntddk.h> first.
 *
 *     #include <ntddk.h>
 *     #include <ws2def.h>             // SOCKADDR_IN (or <wsk.h>, which includes it)
 *     #include "wsksend.h"
 *
 *     NTSTATUS SendHello(const VOID *Data, ULONG DataLength)  // PASSIVE_LEVEL, nonpaged Data
 *     {
 *         SOCKADDR_IN to = { AF_INET, RtlUshortByteSwap(5001), { { { 127, 0, 0, 1 } } }, { 0 } };
 *         PVOID conn;
 *         SIZE_T sent;
 *         NTSTATUS st = WsksConnect((const struct sockaddr *)&to, sizeof to, 0, 5000, &conn);
 *         if (!NT_SUCCESS(st))
 *             return st;
 *         WSKS_BUFFER buf = { Data, DataLength };
 *         st = WsksSendSync(conn, &buf, 1, WSKS_SEND_NODELAY, 5000, &sent);
 *         WsksClose(conn);
 *         return st;
 *     }
 *
 * examples/kernel-driver/wsksclient_c.c uses every function, asynchronously too.
 *
 * Rules (every one is checked or enforced by the driver; breaking the memory rules is a
 * bugcheck, not an error status):
 *
 * 1. WsksConnect, WsksSendSync and WsksClose run at PASSIVE_LEVEL; WsksSendMdl and
 *    WsksSendBuffers at IRQL <= DISPATCH_LEVEL.
 * 2. The asynchronous sends (WsksSendMdl, WsksSendBuffers) return STATUS_PENDING when
 *    the send was accepted: Complete then runs exactly once, at IRQL <= DISPATCH_LEVEL,
 *    possibly on another thread and possibly before the call returns. Any other return
 *    value is an error, and Complete never runs.
 * 3. Until Complete runs, MDLs stay locked (MmProbeAndLockPages or
 *    MmBuildMdlForNonPagedPool) and buffers stay valid; WSKS_BUFFER memory is nonpaged.
 *    The same holds during WsksSendSync, which returns only after the provider is done.
 * 4. WsksSendMdl: Offset applies to the first MDL of the chain, and Offset + Length must
 *    lie inside the chain; every MDL must be locked (MDL_PAGES_LOCKED), describe
 *    nonpaged pool (MDL_SOURCE_IS_NONPAGED_POOL) or be a partial MDL of such
 *    (checked: STATUS_INVALID_PARAMETER, nothing is sent).
 * 5. Sends on one connection reach the network in the order they were issued; any
 *    number may be pending.
 * 5b. WsksConnect's TimeoutMs (at most 60000; larger is STATUS_INVALID_PARAMETER)
 *    bounds socket creation, bind and connect together (plus about 100 ms to cancel).
 * 6. WsksSendSync waits at most TimeoutMs (at most 120000; larger is
 *    STATUS_INVALID_PARAMETER), then cancels the send (or closes the connection where
 *    the provider cannot cancel) and waits for its completion, so the caller's buffers
 *    are never left with the provider. It fails with STATUS_IO_TIMEOUT.
 * 7. WsksClose disconnects gracefully: sends already with the provider finish, queued
 *    ones complete with STATUS_CANCELLED, then WskDisconnect and WskCloseSocket (reset
 *    after 10 s if the peer does not take the data). WsksAbortiveClose resets at once
 *    (pending sends fail). Both free the handle: do not use it again. Call one of them
 *    exactly once per successful WsksConnect, also after WskSend started unloading.
 * 8. Calls are guarded by WskSend's rundown: once its unload has started they fail with
 *    STATUS_DEVICE_NOT_READY, and unload closes the connections a caller left open (the
 *    handle stays valid for the final WsksClose).
 *
 * Status codes: STATUS_INVALID_PARAMETER (null pointer, unknown flag, bad address or
 * buffer count), STATUS_INSUFFICIENT_RESOURCES, STATUS_INVALID_CONNECTION (closed or
 * closing), STATUS_CONNECTION_REFUSED / RESET / ABORTED, STATUS_IO_TIMEOUT,
 * STATUS_CANCELLED, STATUS_DEVICE_NOT_READY (WSK unavailable, WskSend stopping), and
 * what the WSK provider returns.
 */
#ifndef WSKSEND_H
#define WSKSEND_H

#if !defined(_WDMDDK_) && !defined(_NTDDK_) && !defined(_NTIFS_)
#error "include <wdm.h>, <ntddk.h> or <ntifs.h> before wsksend.h"
#endif

/* SAL and IRQL annotations come from <sal.h>/<driverspecs.h> (the WDK includes them
 * with wdm.h); compilers without them see nothing. */
#ifndef _In_
#define _In_
#endif
#ifndef _In_opt_
#define _In_opt_
#endif
#ifndef _In_reads_
#define _In_reads_(size)
#endif
#ifndef _In_reads_bytes_
#define _In_reads_bytes_(size)
#endif
#ifndef _Out_
#define _Out_
#endif
#ifndef _Out_opt_
#define _Out_opt_
#endif
#ifndef _Outptr_
#define _Outptr_
#endif
#ifndef _Must_inspect_result_
#define _Must_inspect_result_
#endif
#ifndef _Function_class_
#define _Function_class_(name)
#endif
#ifndef _IRQL_requires_
#define _IRQL_requires_(irql)
#endif
#ifndef _IRQL_requires_max_
#define _IRQL_requires_max_(irql)
#endif
#ifndef _IRQL_requires_same_
#define _IRQL_requires_same_
#endif

/* Functions are imported from wsksend.sys. */
#ifndef WSKSAPI
#define WSKSAPI DECLSPEC_IMPORT
#endif

#ifdef __cplusplus
extern "C" {
#endif

struct sockaddr; /* SOCKADDR from <ws2def.h>: pass a SOCKADDR_IN or SOCKADDR_IN6 */

/* WsksConnect Flags: every send of the connection uses WSK_FLAG_NODELAY. */
#define WSKS_CONNECT_NODELAY 0x00000001u

/* Send Flags: WSK_FLAG_NODELAY, send at once (no Nagle coalescing). The only send flag. */
#define WSKS_SEND_NODELAY 0x00000002u

/* Most buffers in one WsksSendBuffers / WsksSendSync call. */
#define WSKS_MAX_BUFFERS 1024u

/* A nonpaged buffer to send. */
typedef struct _WSKS_BUFFER {
    const VOID *Buffer; /* nonpaged, valid until the send completes */
    ULONG Length;       /* bytes, not 0 */
} WSKS_BUFFER, *PWSKS_BUFFER;

/*
 * Completion of an asynchronous send: runs exactly once per accepted send (one that
 * returned STATUS_PENDING), at IRQL <= DISPATCH_LEVEL. Status is the send's result,
 * BytesSent the bytes WSK accepted (all of them on success). Do not block in it.
 */
typedef
_Function_class_(WSKS_SEND_COMPLETE)
_IRQL_requires_max_(DISPATCH_LEVEL)
_IRQL_requires_same_
VOID
NTAPI
WSKS_SEND_COMPLETE(
    _In_opt_ PVOID Context,
    _In_ NTSTATUS Status,
    _In_ SIZE_T BytesSent);
typedef WSKS_SEND_COMPLETE *PFN_WSKS_SEND_COMPLETE;

/*
 * Opens a TCP connection to Remote (a SOCKADDR_IN or SOCKADDR_IN6 of RemoteLength bytes,
 * port in network byte order); binds the wildcard address of that family first.
 * Flags: 0 or WSKS_CONNECT_NODELAY. TimeoutMs bounds the connect (0 counts as 1 ms).
 * On success *Connection receives the handle for the other calls.
 */
_Must_inspect_result_
_IRQL_requires_(PASSIVE_LEVEL)
WSKSAPI NTSTATUS NTAPI WsksConnect(
    _In_reads_bytes_(RemoteLength) const struct sockaddr *Remote,
    _In_ ULONG RemoteLength,
    _In_ ULONG Flags,
    _In_ ULONG TimeoutMs,
    _Outptr_ PVOID *Connection);

/*
 * Sends Length bytes of the locked MDL chain Mdl, starting Offset bytes into its first
 * MDL. Flags: 0 or WSKS_SEND_NODELAY. Returns STATUS_PENDING if accepted (Complete runs
 * later, once), else an error (Complete never runs).
 */
_Must_inspect_result_
_IRQL_requires_max_(DISPATCH_LEVEL)
WSKSAPI NTSTATUS NTAPI WsksSendMdl(
    _In_ PVOID Connection,
    _In_ PMDL Mdl,
    _In_ ULONG Offset,
    _In_ SIZE_T Length,
    _In_ ULONG Flags,
    _In_ PFN_WSKS_SEND_COMPLETE Complete,
    _In_opt_ PVOID Context);

/*
 * Sends Count (1..WSKS_MAX_BUFFERS) nonpaged buffers, in order, as one send. Returns
 * STATUS_PENDING if accepted (Complete runs later, once), else an error.
 */
_Must_inspect_result_
_IRQL_requires_max_(DISPATCH_LEVEL)
WSKSAPI NTSTATUS NTAPI WsksSendBuffers(
    _In_ PVOID Connection,
    _In_reads_(Count) const WSKS_BUFFER *Buffers,
    _In_ ULONG Count,
    _In_ ULONG Flags,
    _In_ PFN_WSKS_SEND_COMPLETE Complete,
    _In_opt_ PVOID Context);

/*
 * Sends Count nonpaged buffers and waits for the result, at most TimeoutMs (0 counts as
 * 1 ms; then cancel-and-wait, STATUS_IO_TIMEOUT). *BytesSent (optional) receives the
 * bytes sent.
 */
_Must_inspect_result_
_IRQL_requires_(PASSIVE_LEVEL)
WSKSAPI NTSTATUS NTAPI WsksSendSync(
    _In_ PVOID Connection,
    _In_reads_(Count) const WSKS_BUFFER *Buffers,
    _In_ ULONG Count,
    _In_ ULONG Flags,
    _In_ ULONG TimeoutMs,
    _Out_opt_ SIZE_T *BytesSent);

/*
 * Closes the connection gracefully (rule 7): every pending send has completed when it
 * returns. The handle is freed whatever the result.
 */
_IRQL_requires_(PASSIVE_LEVEL)
WSKSAPI NTSTATUS NTAPI WsksClose(
    _In_ PVOID Connection);

/*
 * Closes the connection abortively (a reset: pending sends fail), as WsksClose waits
 * for them. The handle is freed whatever the result.
 */
_IRQL_requires_(PASSIVE_LEVEL)
WSKSAPI NTSTATUS NTAPI WsksAbortiveClose(
    _In_ PVOID Connection);

#ifdef __cplusplus
}
#endif

#endif /* WSKSEND_H */
