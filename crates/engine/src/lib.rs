//! The WSK client engine (in progress: see issue 3).
#![no_std]
