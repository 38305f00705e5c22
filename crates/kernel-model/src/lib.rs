//! Host model of the kernel (in progress: see issue 3).
