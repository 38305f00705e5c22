//! Errors: one newtype over a failure `NTSTATUS`.

use wsksend_ffi::{NT_SUCCESS, NTSTATUS, status};

/// A failure `NTSTATUS`.
///
/// # Invariants
/// `self.0` is an error or warning status: `NT_SUCCESS(self.0)` is false.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Error(NTSTATUS);

/// Result type of the engine.
pub type Result<T = ()> = core::result::Result<T, Error>;

impl Error {
    /// `STATUS_INVALID_PARAMETER`.
    pub const INVALID_PARAMETER: Self = Self(status::STATUS_INVALID_PARAMETER);
    /// `STATUS_INSUFFICIENT_RESOURCES`.
    pub const NO_RESOURCES: Self = Self(status::STATUS_INSUFFICIENT_RESOURCES);
    /// `STATUS_INVALID_CONNECTION`: the connection is closing or closed.
    pub const NOT_CONNECTED: Self = Self(status::STATUS_INVALID_CONNECTION);
    /// `STATUS_CANCELLED`.
    pub const CANCELLED: Self = Self(status::STATUS_CANCELLED);
    /// `STATUS_IO_TIMEOUT`.
    pub const TIMEOUT: Self = Self(status::STATUS_IO_TIMEOUT);
    /// `STATUS_DEVICE_NOT_READY`: WSK is not registered (driver starting or unloading).
    pub const NOT_READY: Self = Self(status::STATUS_DEVICE_NOT_READY);
    /// `STATUS_NOT_SUPPORTED`.
    pub const NOT_SUPPORTED: Self = Self(status::STATUS_NOT_SUPPORTED);

    /// The error for a failure status; a success status becomes `STATUS_UNSUCCESSFUL`
    /// (an invariant-preserving fallback that callers never hit on purpose).
    #[must_use]
    pub const fn from_status(status: NTSTATUS) -> Self {
        if NT_SUCCESS(status) {
            Self(status::STATUS_UNSUCCESSFUL)
        } else {
            // INVARIANT: checked just above.
            Self(status)
        }
    }

    /// The `NTSTATUS`.
    #[must_use]
    pub const fn status(self) -> NTSTATUS {
        self.0
    }
}

/// `Ok(())` for a success status (including informational ones), `Err` otherwise.
///
/// # Errors
/// The status as an [`Error`] when it is not `NT_SUCCESS`.
pub const fn to_result(status: NTSTATUS) -> Result {
    if NT_SUCCESS(status) {
        Ok(())
    } else {
        Err(Error::from_status(status))
    }
}
