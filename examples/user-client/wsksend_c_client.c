/*
 * wsksend-c-client.exe - a C program that sends TCP data through the WskSend driver.
 *
 * The example to copy when a user-mode tool drives WskSend: include wsksend_ioctl.h,
 * open \\.\WskSend overlapped, CONNECT, then SEND with overlapped DeviceIoControl on an
 * I/O completion port (several sends in flight, like overlapped WSASend), STATS, CLOSE.
 *
 *   wsksend-c-client IPV4 PORT SEED [KIB]
 *
 * It sends one verifiable stream (the format the harness's sink checks: a 16-byte
 * header "WSKS", seed, length, then a seeded pattern) of KIB KiB (default 4096) in
 * 64 KiB sends, 8 in flight, then a scatter/gather send of three segments taken from
 * one buffer with gaps between them. A provider that cannot send chained MDLs (Wine 8)
 * refuses that send cleanly with ERROR_GEN_FAILURE and sends nothing; the program then
 * sends the same segments one per request and the stream stays byte-exact.
 * Exit code 0 when every request did what it should.
 *
 * Build: x86_64-w64-mingw32-gcc -std=c11 -O2 -I include -o wsksend-c-client.exe \
 *          wsksend_c_client.c        (or cl /I include wsksend_c_client.c)
 */
#include <windows.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "wsksend_ioctl.h"

#define CHUNK     (64u * 1024u) /* bytes per send */
#define IN_FLIGHT 8             /* overlapped sends outstanding at once */

/* ---- The verifiable stream (only needed so a sink can check every byte) ---------- */

static ULONGLONG PatternWord(ULONG seed, ULONGLONG index)
{
    /* splitmix64 of (seed, index), as usermode-test/src/pattern.rs */
    ULONGLONG z = (((ULONGLONG)seed << 32) ^ index) + 0x9E3779B97F4A7C15ull;
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
}

/* The pattern bytes at stream positions pos .. pos + len. */
static void Fill(ULONG seed, ULONGLONG pos, UCHAR *out, size_t len)
{
    for (size_t i = 0; i < len; i++) {
        ULONGLONG p = pos + i;
        out[i] = (UCHAR)(PatternWord(seed, p / 8) >> (8 * (p % 8)));
    }
}

/* ---- Requests ------------------------------------------------------------------- */

/* One overlapped request at a time, waited for on the completion port: for the
 * control calls (GET_VERSION, CONNECT, STATS, CLOSE) and the scatter/gather send. */
static BOOL Call(HANDLE dev, HANDLE port, DWORD code, void *in, DWORD inLen, void *out,
                 DWORD outLen, DWORD *bytes)
{
    OVERLAPPED ov, *done;
    ULONG_PTR key;
    memset(&ov, 0, sizeof ov);
    if (!DeviceIoControl(dev, code, in, inLen, out, outLen, NULL, &ov) &&
        GetLastError() != ERROR_IO_PENDING)
        return FALSE; /* failed at once: no completion packet is queued */
    /* Success or pending: exactly one packet arrives on the port. */
    if (!GetQueuedCompletionStatus(port, bytes, &key, &done, INFINITE))
        return FALSE; /* the request failed; GetLastError() says why */
    return TRUE;
}

static void InitHandleRequest(WSKSEND_HANDLE_REQUEST *r, ULONGLONG handle)
{
    r->Size = sizeof *r;
    r->Version = WSKSEND_PROTOCOL_VERSION;
    r->Handle = handle;
}

/* A SEND request with up to 3 segments: header, then the segment table. */
typedef struct _SEND_INPUT {
    WSKSEND_SEND_REQUEST Header;
    WSKSEND_SEGMENT Segments[3];
} SEND_INPUT;

static DWORD InitSend(SEND_INPUT *in, ULONGLONG handle, ULONG count)
{
    in->Header.Size = sizeof in->Header; /* the header's size, not the table's */
    in->Header.Version = WSKSEND_PROTOCOL_VERSION;
    in->Header.Handle = handle;
    in->Header.Flags = 0; /* WSASend flags; | WSKSEND_SEND_NODELAY for no Nagle */
    in->Header.SegmentCount = count;
    return (DWORD)WSKSEND_SEND_REQUEST_SIZE(count);
}

/* One in-flight send: its OVERLAPPED (first, so the completion packet finds the slot),
 * its input and its payload, all alive until the packet arrives. */
typedef struct _SLOT {
    OVERLAPPED Ov;
    SEND_INPUT In;
    DWORD Expected;
    UCHAR Payload[CHUNK];
} SLOT;

int main(int argc, char **argv)
{
    unsigned a, b, c, d;
    WSKSEND_VERSION_INFO version;
    WSKSEND_CONNECT_REQUEST connect;
    WSKSEND_CONNECT_REPLY reply;
    WSKSEND_HANDLE_REQUEST handleReq;
    WSKSEND_STATS stats;
    DWORD n;
    ULONG seed;
    ULONGLONG patternLen, pos = 0, sentBytes = 0, sends = 0;
    const char *sg;

    if (argc < 4 || sscanf(argv[1], "%u.%u.%u.%u", &a, &b, &c, &d) != 4) {
        fprintf(stderr, "usage: wsksend-c-client IPV4 PORT SEED [KIB]\n");
        return 2;
    }
    seed = (ULONG)strtoul(argv[3], NULL, 0);
    ULONGLONG streamLen = (argc > 4 ? strtoull(argv[4], NULL, 0) : 4096) * 1024;
    /* The scatter/gather send: 3 segments of these sizes, after the stream. */
    const DWORD sgLen[3] = { 1000, 30000, 7 };
    patternLen = streamLen + sgLen[0] + sgLen[1] + sgLen[2];

    /* 1. Open the device for overlapped I/O and bind it to a completion port. */
    HANDLE dev = CreateFileW(WSKSEND_USER_PATH_W, GENERIC_READ | GENERIC_WRITE, 0, NULL,
                             OPEN_EXISTING, FILE_FLAG_OVERLAPPED, NULL);
    if (dev == INVALID_HANDLE_VALUE) {
        fprintf(stderr, "open \\\\.\\WskSend: error %lu\n", GetLastError());
        return 1;
    }
    HANDLE port = CreateIoCompletionPort(dev, NULL, 0, 0);
    if (port == NULL) {
        fprintf(stderr, "CreateIoCompletionPort: error %lu\n", GetLastError());
        return 1;
    }

    /* 2. Check the interface version before anything else. */
    if (!Call(dev, port, IOCTL_WSKSEND_GET_VERSION, NULL, 0, &version, sizeof version, &n) ||
        n != sizeof version || version.ProtocolVersion != WSKSEND_PROTOCOL_VERSION) {
        fprintf(stderr, "GET_VERSION: error %lu, protocol %lu\n", GetLastError(),
                (unsigned long)version.ProtocolVersion);
        return 1;
    }

    /* 3. Connect (port in host byte order, IPv4 address in the first 4 bytes). */
    memset(&connect, 0, sizeof connect);
    connect.Size = sizeof connect;
    connect.Version = WSKSEND_PROTOCOL_VERSION;
    connect.Family = WSKSEND_AF_INET;
    connect.Port = (USHORT)atoi(argv[2]);
    connect.Address[0] = (UCHAR)a; connect.Address[1] = (UCHAR)b;
    connect.Address[2] = (UCHAR)c; connect.Address[3] = (UCHAR)d;
    connect.TimeoutMs = 5000;
    if (!Call(dev, port, IOCTL_WSKSEND_CONNECT, &connect, sizeof connect, &reply, sizeof reply, &n) ||
        n != sizeof reply) {
        fprintf(stderr, "CONNECT: error %lu\n", GetLastError());
        return 1;
    }
    ULONGLONG handle = reply.Handle;

    /* 4. The stream: the header, then the pattern in CHUNK-sized sends with IN_FLIGHT
     *    outstanding. Each send's payload is its own buffer (the "output" buffer of
     *    the IOCTL, which the driver sends without copying). */
    SLOT *slots = calloc(IN_FLIGHT, sizeof(SLOT));
    if (slots == NULL)
        return 1;
    int busy = 0, failed = 0;
    ULONGLONG headerAndStream = 16 + streamLen;
    ULONGLONG queued = 0; /* bytes of header + stream handed to the driver */
    while ((queued < headerAndStream || busy > 0) && !failed) {
        /* Fill free slots with the next bytes, in stream order. */
        for (int i = 0; i < IN_FLIGHT && queued < headerAndStream; i++) {
            SLOT *s = &slots[i];
            if (s->Expected != 0)
                continue;
            if (queued == 0) { /* the stream header: magic, seed, pattern length */
                memcpy(s->Payload, "WSKS", 4);
                memcpy(s->Payload + 4, &seed, 4);
                memcpy(s->Payload + 8, &patternLen, 8);
                s->Expected = 16;
            } else {
                ULONGLONG left = headerAndStream - queued;
                s->Expected = left < CHUNK ? (DWORD)left : CHUNK;
                Fill(seed, pos, s->Payload, s->Expected);
                pos += s->Expected;
            }
            DWORD inLen = InitSend(&s->In, handle, 1);
            s->In.Segments[0].Offset = 0;
            s->In.Segments[0].Length = s->Expected;
            memset(&s->Ov, 0, sizeof s->Ov);
            if (!DeviceIoControl(dev, IOCTL_WSKSEND_SEND, &s->In, inLen, s->Payload,
                                 s->Expected, NULL, &s->Ov) &&
                GetLastError() != ERROR_IO_PENDING) {
                fprintf(stderr, "SEND: error %lu\n", GetLastError());
                failed = 1;
                s->Expected = 0;
                break;
            }
            queued += s->Expected;
            busy++;
        }
        /* Reap one completion; the OVERLAPPED pointer leads back to its slot. */
        OVERLAPPED *done;
        ULONG_PTR key;
        if (busy == 0)
            break;
        BOOL ok = GetQueuedCompletionStatus(port, &n, &key, &done, 30000);
        if (done == NULL) {
            fprintf(stderr, "no completion within 30 s (error %lu)\n", GetLastError());
            return 1;
        }
        SLOT *s = CONTAINING_RECORD(done, SLOT, Ov);
        if (!ok || n != s->Expected) {
            fprintf(stderr, "SEND completed with error %lu, %lu of %lu bytes\n",
                    ok ? 0 : GetLastError(), n, s->Expected);
            failed = 1;
        }
        sentBytes += n;
        sends++;
        s->Expected = 0;
        busy--;
    }
    if (failed)
        return 1;

    /* 5. Scatter/gather: three segments out of one buffer, with gaps the driver must
     *    skip (like WSASend with three WSABUFs). */
    static UCHAR sgBuffer[64 * 1024];
    SEND_INPUT sgIn;
    const DWORD sgOffset[3] = { 0, 4000, 50000 };
    memset(sgBuffer, 0xEE, sizeof sgBuffer); /* gaps: bytes that must never be sent */
    DWORD sgInLen = InitSend(&sgIn, handle, 3);
    DWORD sgTotal = 0;
    for (int i = 0; i < 3; i++) {
        Fill(seed, pos + sgTotal, sgBuffer + sgOffset[i], sgLen[i]);
        sgIn.Segments[i].Offset = sgOffset[i];
        sgIn.Segments[i].Length = sgLen[i];
        sgTotal += sgLen[i];
    }
    if (Call(dev, port, IOCTL_WSKSEND_SEND, &sgIn, sgInLen, sgBuffer, sizeof sgBuffer, &n)) {
        if (n != sgTotal) {
            fprintf(stderr, "scatter/gather: %lu of %lu bytes\n", n, sgTotal);
            return 1;
        }
        sg = "3 segments in one send";
        sends++;
        sentBytes += n;
    } else if (GetLastError() == ERROR_GEN_FAILURE) {
        /* STATUS_UNSUCCESSFUL from the provider: it cannot send an MDL chain (Wine 8).
         * Nothing was sent, the connection is intact: send each segment on its own,
         * still from its offset in the gapped buffer. */
        for (int i = 0; i < 3; i++) {
            sgInLen = InitSend(&sgIn, handle, 1);
            sgIn.Segments[0].Offset = sgOffset[i];
            sgIn.Segments[0].Length = sgLen[i];
            if (!Call(dev, port, IOCTL_WSKSEND_SEND, &sgIn, sgInLen, sgBuffer, sizeof sgBuffer, &n) ||
                n != sgLen[i]) {
                fprintf(stderr, "segment %d alone: error %lu, %lu bytes\n", i, GetLastError(), n);
                return 1;
            }
            sends++;
            sentBytes += n;
        }
        sg = "3 segments refused cleanly (ERROR_GEN_FAILURE: the provider cannot send "
             "chained MDLs), then sent 1 segment per send from their offsets";
    } else {
        fprintf(stderr, "scatter/gather send: unexpected error %lu\n", GetLastError());
        return 1;
    }

    /* 6. The connection's counters must agree with what we sent. */
    InitHandleRequest(&handleReq, handle);
    if (!Call(dev, port, IOCTL_WSKSEND_STATS, &handleReq, sizeof handleReq, &stats, sizeof stats, &n) ||
        n != sizeof stats || stats.Bytes != sentBytes || stats.Sends != sends) {
        fprintf(stderr, "STATS: error %lu, %llu bytes in %llu sends (expected %llu in %llu)\n",
                GetLastError(), stats.Bytes, stats.Sends, sentBytes, sends);
        return 1;
    }

    /* 7. Close the connection, then the device. */
    if (!Call(dev, port, IOCTL_WSKSEND_CLOSE, &handleReq, sizeof handleReq, NULL, 0, &n)) {
        fprintf(stderr, "CLOSE: error %lu\n", GetLastError());
        return 1;
    }
    CloseHandle(port);
    CloseHandle(dev);
    free(slots);
    printf("c-client: protocol %lu, driver %u.%u.%u\n", (unsigned long)version.ProtocolVersion,
           version.DriverMajor, version.DriverMinor, version.DriverPatch);
    printf("c-client: %llu bytes in %llu sends, %d in flight, stats agree\n", sentBytes, sends,
           IN_FLIGHT);
    printf("c-client: scatter/gather: %s\n", sg);
    return 0;
}
