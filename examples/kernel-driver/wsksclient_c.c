/*
 * wsksclient_c.sys - a C driver that sends through WskSend's kernel API.
 *
 * The example to copy when your driver needs to send TCP data through wsksend.sys:
 * include wsksend.h, link wsksend.lib, call WsksConnect / WsksSend* / WsksClose.
 * It uses every exported function once per request:
 *
 *   WsksConnect       open a connection to the address the request names
 *   WsksSendBuffers   send the first third, asynchronously, from a WSKS_BUFFER
 *   WsksSendMdl       send the second third, asynchronously, from an MDL
 *   WsksSendSync      send the rest and wait for the result
 *   WsksClose         close (pending sends would complete first)
 *
 * A test harness triggers it with one IOCTL on \\.\WsksClient (the same contract as
 * the Rust example crates/kapi-client, so one harness scenario drives either):
 * IOCTL_WSKSCLIENT_RUN, METHOD_BUFFERED, input = WSKSEND_CONNECT_REQUEST (the address)
 * followed by the bytes to send; it completes with the bytes sent.
 *
 * Build (mingw-w64, see examples/README.md; `cargo xtask build` does this):
 *   x86_64-w64-mingw32-gcc -std=c11 -O2 -I include -I /usr/share/mingw-w64/include/ddk \
 *     -nostdlib -shared -Wl,--subsystem,native -Wl,--entry,DriverEntry \
 *     -o wsksclient_c.sys wsksclient_c.c wsksend.lib -lntoskrnl
 * With the WDK: an empty KMDF/WDM driver project, this file, and wsksend.lib as an
 * additional dependency.
 */
#include <ntddk.h>
#if defined(__MINGW32__)
/* mingw-w64's <ws2def.h> is empty: SOCKADDR_IN lives here. */
#include <psdk_inc/_ip_types.h>
#define AF_INET 2
#else
#include <ws2def.h> /* SOCKADDR_IN, AF_INET (the WDK's <wsk.h> includes it) */
#endif

#include "wsksend.h"       /* the kernel API */
#include "wsksend_ioctl.h" /* WSKSEND_CONNECT_REQUEST, to read the address */

#define CLIENT_DEVICE_NAME L"\\Device\\WsksClient"
#define CLIENT_LINK_NAME   L"\\DosDevices\\WsksClient"
#define IOCTL_WSKSCLIENT_RUN \
    CTL_CODE(FILE_DEVICE_WSKSEND, 0x900, METHOD_BUFFERED, FILE_ANY_ACCESS)

#define SEND_TIMEOUT_MS 10000

DRIVER_INITIALIZE DriverEntry;
static DRIVER_UNLOAD ClientUnload;
static DRIVER_DISPATCH ClientCreateClose;
static DRIVER_DISPATCH ClientDeviceControl;

/* ---- Waiting for an asynchronous send ------------------------------------------- */

/* What the completion callback reports back to the thread that sent. */
typedef struct _SEND_WAIT {
    KEVENT Done;
    NTSTATUS Status;
    SIZE_T BytesSent;
} SEND_WAIT;

/* PFN_WSKS_SEND_COMPLETE: runs once per accepted send, at IRQL <= DISPATCH_LEVEL,
 * maybe before WsksSend* has even returned. Only record and signal here. */
static WSKS_SEND_COMPLETE OnSendComplete;
static VOID NTAPI OnSendComplete(PVOID Context, NTSTATUS Status, SIZE_T BytesSent)
{
    SEND_WAIT *wait = (SEND_WAIT *)Context;
    wait->Status = Status;
    wait->BytesSent = BytesSent;
    KeSetEvent(&wait->Done, IO_NO_INCREMENT, FALSE);
}

/* STATUS_PENDING means "accepted, OnSendComplete will run": wait for it. Anything
 * else is the final result and the callback never runs. */
static NTSTATUS WaitForSend(PVOID *conn, SEND_WAIT *wait, NTSTATUS accepted, SIZE_T *sent)
{
    LARGE_INTEGER timeout;
    if (accepted != STATUS_PENDING)
        return accepted;
    timeout.QuadPart = -10000LL * SEND_TIMEOUT_MS; /* relative, in 100 ns units */
    if (KeWaitForSingleObject(&wait->Done, Executive, KernelMode, FALSE, &timeout) == STATUS_TIMEOUT) {
        /* Too slow (the peer stopped reading?). Never return before the callback has
         * run: it writes to *wait. WsksClose completes the pending send (cancelled)
         * before it returns, so the second wait is short. */
        WsksClose(*conn);
        *conn = NULL;
        KeWaitForSingleObject(&wait->Done, Executive, KernelMode, FALSE, NULL);
    }
    *sent += wait->BytesSent;
    return wait->Status;
}

/* ---- The sends ------------------------------------------------------------------ */

/* Connects to `to`, sends `length` bytes of nonpaged `data` through every send
 * function, closes. Returns the first failure; *sent gets the bytes sent. */
static NTSTATUS SendThroughWskSend(const struct sockaddr *to, ULONG toLength, UCHAR *data,
                                   ULONG length, SIZE_T *sent)
{
    PVOID conn = NULL;
    NTSTATUS status, closed;
    ULONG third = length / 3;
    SEND_WAIT wait;
    PMDL mdl;

    *sent = 0;
    status = WsksConnect(to, toLength, 0, SEND_TIMEOUT_MS, &conn);
    if (!NT_SUCCESS(status))
        return status;

    /* 1. The first third from a buffer descriptor, asynchronously. */
    {
        WSKS_BUFFER first = { data, third };
        KeInitializeEvent(&wait.Done, NotificationEvent, FALSE);
        status = WsksSendBuffers(conn, &first, 1, 0, OnSendComplete, &wait);
        status = WaitForSend(&conn, &wait, status, sent);
    }

    /* 2. The second third from an MDL over the same (nonpaged) memory. */
    if (NT_SUCCESS(status)) {
        mdl = IoAllocateMdl(data + third, third, FALSE, FALSE, NULL);
        if (mdl == NULL) {
            status = STATUS_INSUFFICIENT_RESOURCES;
        } else {
            MmBuildMdlForNonPagedPool(mdl); /* nonpaged memory: describe, no locking */
            /* Wine 8's MmBuildMdlForNonPagedPool is a stub that sets no flag, and
             * WsksSendMdl refuses an MDL that is neither locked nor nonpaged: say what
             * Windows' routine says. (On Windows this line changes nothing.) */
            if (!(mdl->MdlFlags & (MDL_SOURCE_IS_NONPAGED_POOL | MDL_PAGES_LOCKED)))
                mdl->MdlFlags |= MDL_SOURCE_IS_NONPAGED_POOL;
            KeInitializeEvent(&wait.Done, NotificationEvent, FALSE);
            status = WsksSendMdl(conn, mdl, 0, third, WSKS_SEND_NODELAY, OnSendComplete, &wait);
            status = WaitForSend(&conn, &wait, status, sent);
            IoFreeMdl(mdl); /* the send has completed: the MDL is ours again */
        }
    }

    /* 3. The rest, waiting inside WskSend (it cancels on timeout and waits again). */
    if (NT_SUCCESS(status)) {
        WSKS_BUFFER rest = { data + 2 * third, length - 2 * third };
        SIZE_T n = 0;
        status = WsksSendSync(conn, &rest, 1, 0, SEND_TIMEOUT_MS, &n);
        *sent += n;
    }

    /* Always close a connection WsksConnect opened, exactly once. */
    closed = conn != NULL ? WsksClose(conn) : STATUS_SUCCESS;
    return NT_SUCCESS(status) ? closed : status;
}

/* ---- The IOCTL that triggers a run ---------------------------------------------- */

static NTSTATUS Complete(PIRP irp, NTSTATUS status, ULONG_PTR information)
{
    irp->IoStatus.Status = status;
    irp->IoStatus.Information = information;
    IoCompleteRequest(irp, IO_NO_INCREMENT);
    return status;
}

static NTSTATUS ClientDeviceControl(PDEVICE_OBJECT device, PIRP irp)
{
    PIO_STACK_LOCATION stack = IoGetCurrentIrpStackLocation(irp);
    ULONG inLength = stack->Parameters.DeviceIoControl.InputBufferLength;
    /* METHOD_BUFFERED: the input is a copy in nonpaged system memory, valid until the
     * request completes, so it can be sent from directly. */
    UCHAR *input = (UCHAR *)irp->AssociatedIrp.SystemBuffer;
    const WSKSEND_CONNECT_REQUEST *req = (const WSKSEND_CONNECT_REQUEST *)input;
    SOCKADDR_IN to;
    SIZE_T sent = 0;
    NTSTATUS status;
    UNREFERENCED_PARAMETER(device);

    if (stack->Parameters.DeviceIoControl.IoControlCode != IOCTL_WSKSCLIENT_RUN)
        return Complete(irp, STATUS_INVALID_DEVICE_REQUEST, 0);
    if (input == NULL || inLength < sizeof *req + 3)
        return Complete(irp, STATUS_BUFFER_TOO_SMALL, 0);

    /* The address, from the wire struct of wsksend_ioctl.h (port in host order).
     * IPv4 only here: Wine 8's WSK connects IPv4 only. For IPv6, fill a SOCKADDR_IN6
     * (<ws2ipdef.h>) the same way and pass sizeof(SOCKADDR_IN6). */
    if (req->Family != WSKSEND_AF_INET)
        return Complete(irp, STATUS_NOT_SUPPORTED, 0);
    RtlZeroMemory(&to, sizeof to);
    to.sin_family = AF_INET;
    to.sin_port = (USHORT)((req->Port >> 8) | (req->Port << 8)); /* network byte order */
    RtlCopyMemory(&to.sin_addr, req->Address, 4);

    status = SendThroughWskSend((const struct sockaddr *)&to, sizeof to, input + sizeof *req, inLength - sizeof *req, &sent);
    DbgPrint("WsksClientC: run status %08lx sent %lu\n", (unsigned long)status, (unsigned long)sent);
    /* The byte count travels in Information; no output buffer, so nothing is copied. */
    return Complete(irp, status, sent);
}

static NTSTATUS ClientCreateClose(PDEVICE_OBJECT device, PIRP irp)
{
    UNREFERENCED_PARAMETER(device);
    return Complete(irp, STATUS_SUCCESS, 0);
}

/* ---- Load and unload ------------------------------------------------------------ */

static VOID ClientUnload(PDRIVER_OBJECT driver)
{
    UNICODE_STRING link;
    RtlInitUnicodeString(&link, CLIENT_LINK_NAME);
    IoDeleteSymbolicLink(&link);
    IoDeleteDevice(driver->DeviceObject);
    DbgPrint("WsksClientC: unloaded\n");
}

NTSTATUS DriverEntry(PDRIVER_OBJECT driver, PUNICODE_STRING registryPath)
{
    UNICODE_STRING name, link;
    PDEVICE_OBJECT device;
    NTSTATUS status;
    UNREFERENCED_PARAMETER(registryPath);

    /* Loading at all proves the imports from wsksend.sys resolved. */
    RtlInitUnicodeString(&name, CLIENT_DEVICE_NAME);
    status = IoCreateDevice(driver, 0, &name, FILE_DEVICE_WSKSEND, FILE_DEVICE_SECURE_OPEN,
                            FALSE, &device);
    if (!NT_SUCCESS(status))
        return status;
    RtlInitUnicodeString(&link, CLIENT_LINK_NAME);
    status = IoCreateSymbolicLink(&link, &name);
    if (!NT_SUCCESS(status)) {
        IoDeleteDevice(device);
        return status;
    }
    driver->MajorFunction[IRP_MJ_CREATE] = ClientCreateClose;
    driver->MajorFunction[IRP_MJ_CLOSE] = ClientCreateClose;
    driver->MajorFunction[IRP_MJ_DEVICE_CONTROL] = ClientDeviceControl;
    driver->DriverUnload = ClientUnload;
    DbgPrint("WsksClientC: loaded\n");
    return STATUS_SUCCESS;
}
