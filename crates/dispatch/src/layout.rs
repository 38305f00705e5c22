//! Where the I/O manager puts a device-control request's buffers, by the transfer method
//! in its code ([Buffer descriptions for I/O control codes](https://learn.microsoft.com/windows-hardware/drivers/kernel/buffer-descriptions-for-i-o-control-codes)).
//! Both front ends read their request through this one table, so they cannot disagree.

use wsksend_protocol as protocol;

/// The buffers of one request, as [`Request`](crate::Request) wants them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BufferLayout {
    /// Bytes of `Irp->AssociatedIrp.SystemBuffer`: `max(input, output)` for
    /// `METHOD_BUFFERED` (input and output share it), the input for the direct methods,
    /// none for `METHOD_NEITHER` (never used by this interface).
    pub system_len: usize,
    /// Output bytes the caller accepts in the system buffer
    /// ([`Request::output_len`](crate::Request::output_len)): the output length for
    /// `METHOD_BUFFERED`, 0 otherwise.
    pub output_len: usize,
    /// Length of the locked second buffer (`Irp->MdlAddress`) of a direct-method
    /// request; `None` when there is none (a zero-length buffer has no MDL).
    pub direct_len: Option<usize>,
}

impl BufferLayout {
    /// The layout of a request with `code` and the caller's buffer lengths.
    #[must_use]
    pub const fn of(code: u32, input_len: usize, output_len: usize) -> Self {
        match protocol::method_of(code) {
            protocol::METHOD_BUFFERED => Self {
                system_len: if input_len > output_len {
                    input_len
                } else {
                    output_len
                },
                output_len,
                direct_len: None,
            },
            protocol::METHOD_IN_DIRECT | protocol::METHOD_OUT_DIRECT => Self {
                system_len: input_len,
                output_len: 0,
                direct_len: if output_len == 0 {
                    None
                } else {
                    Some(output_len)
                },
            },
            _ => Self {
                system_len: 0,
                output_len: 0,
                direct_len: None,
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::BufferLayout;
    use wsksend_protocol::{
        FILE_ANY_ACCESS, FILE_DEVICE_WSKSEND, IOCTL_WSKSEND_GET_VERSION, IOCTL_WSKSEND_SEND,
        METHOD_NEITHER, METHOD_OUT_DIRECT, ctl_code,
    };

    #[test]
    fn buffered_shares_one_system_buffer_of_the_larger_length() {
        let layout = BufferLayout::of(IOCTL_WSKSEND_GET_VERSION, 8, 24);
        assert_eq!(
            layout,
            BufferLayout {
                system_len: 24,
                output_len: 24,
                direct_len: None
            }
        );
        assert_eq!(
            BufferLayout::of(IOCTL_WSKSEND_GET_VERSION, 40, 16).system_len,
            40
        );
    }

    #[test]
    fn in_direct_has_the_input_in_the_system_buffer_and_the_payload_in_the_mdl() {
        let layout = BufferLayout::of(IOCTL_WSKSEND_SEND, 48, 65_536);
        assert_eq!(
            layout,
            BufferLayout {
                system_len: 48,
                output_len: 0,
                direct_len: Some(65_536)
            }
        );
    }

    #[test]
    fn out_direct_is_laid_out_like_in_direct() {
        let code = ctl_code(
            FILE_DEVICE_WSKSEND,
            0x8ff,
            METHOD_OUT_DIRECT,
            FILE_ANY_ACCESS,
        );
        assert_eq!(
            BufferLayout::of(code, 16, 100),
            BufferLayout::of(IOCTL_WSKSEND_SEND, 16, 100)
        );
    }

    #[test]
    fn a_direct_request_without_a_second_buffer_has_no_mdl() {
        assert_eq!(BufferLayout::of(IOCTL_WSKSEND_SEND, 48, 0).direct_len, None);
    }

    #[test]
    fn method_neither_gets_no_buffers() {
        let code = ctl_code(FILE_DEVICE_WSKSEND, 0x8ff, METHOD_NEITHER, FILE_ANY_ACCESS);
        assert_eq!(
            BufferLayout::of(code, 16, 16),
            BufferLayout {
                system_len: 0,
                output_len: 0,
                direct_len: None
            }
        );
    }
}
