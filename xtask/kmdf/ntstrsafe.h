/*
 * WskSend: the declarations that mingw-w64 10's DDK headers lack and that wdk-sys,
 * wdk-alloc or our KMDF driver use, written from Microsoft's documentation of wdm.h
 * (learn.microsoft.com: ExAllocatePool2, POOL_FLAGS, DRIVER_REGKEY_TYPE,
 * IoOpenDriverRegistryKey).
 *
 * Only for `cargo xtask check-kmdf`, which type-checks the KMDF driver on Linux: it
 * places this file as `km/crt/ntstrsafe.h`, first on wdk-sys's include path, so that
 * bindgen's `#include <ntstrsafe.h>` (after ntifs.h and ntddk.h) lands here and the real
 * header follows through `#include_next`. A Windows build uses the WDK's own headers
 * and never sees this file.
 */
#pragma once

#include_next <ntstrsafe.h>
#include <wdm.h>

/* ExAllocatePool2's flags (Windows 10, version 2004): a ULONG64 bit set. wdk-sys
 * defines the POOL_FLAG_* values itself; it needs the type. */
typedef ULONG64 POOL_FLAGS;

NTKERNELAPI
PVOID
NTAPI
ExAllocatePool2(
  POOL_FLAGS Flags,
  SIZE_T NumberOfBytes,
  ULONG Tag);

/* Which of a driver's registry keys IoOpenDriverRegistryKey opens (Windows 10, version
 * 1803). */
typedef enum _DRIVER_REGKEY_TYPE {
  DriverRegKeyParameters,
  DriverRegKeyPersistentState,
  DriverRegKeySharedPersistentState
} DRIVER_REGKEY_TYPE, *PDRIVER_REGKEY_TYPE;

NTKERNELAPI
NTSTATUS
NTAPI
IoOpenDriverRegistryKey(
  PDRIVER_OBJECT DriverObject,
  DRIVER_REGKEY_TYPE RegKeyType,
  ACCESS_MASK DesiredAccess,
  ULONG Flags,
  PHANDLE DriverRegKey);
