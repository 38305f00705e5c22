//! WskSend KMDF front end (filled in by issue 5).
#![no_std]
