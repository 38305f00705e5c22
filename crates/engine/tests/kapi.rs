//! The exported C API (`Wsks*`), as another driver calls it, against the kernel model.

mod common;

use std::ffi::c_void;
use std::ptr;
use std::sync::{Arc, Condvar, Mutex};
use std::time::Duration;

use common::{TestChain, bytes, model};
use model::Sink;
use wsksend_engine::RawAddr;
use wsksend_engine::global;
use wsksend_engine::kapi::{
    WSKS_BUFFER, WSKS_CONNECT_NODELAY, WsksClose, WsksConnect, WsksSendBuffers, WsksSendMdl,
    WsksSendSync,
};
use wsksend_ffi::status::{
    STATUS_DEVICE_NOT_READY, STATUS_INVALID_PARAMETER, STATUS_PENDING, STATUS_SUCCESS,
};
use wsksend_ffi::{NTSTATUS, SOCKADDR, WSK_FLAG_NODELAY};

type Done = Arc<(Mutex<Vec<(NTSTATUS, usize)>>, Condvar)>;

unsafe extern "system" fn on_complete(context: *mut c_void, status: NTSTATUS, bytes: usize) {
    // SAFETY: the tests pass a `Done` they keep alive until completion.
    let done = unsafe { &*context.cast::<(Mutex<Vec<(NTSTATUS, usize)>>, Condvar)>() };
    done.0.lock().unwrap().push((status, bytes));
    done.1.notify_all();
}

fn wait(done: &Done, n: usize) -> Vec<(NTSTATUS, usize)> {
    let mut got = done.0.lock().unwrap();
    while got.len() < n {
        let (g, t) = done.1.wait_timeout(got, Duration::from_secs(10)).unwrap();
        assert!(!t.timed_out(), "completion did not arrive");
        got = g;
    }
    got.clone()
}

fn connect(addr: std::net::SocketAddr, flags: u32) -> (NTSTATUS, *mut c_void) {
    let raw = RawAddr::from_socket_addr(addr);
    let (ptr, len): (*const SOCKADDR, u32) = match &raw {
        RawAddr::V4(a) => (ptr::from_ref(a).cast(), 16),
        RawAddr::V6(a) => (ptr::from_ref(a).cast(), 28),
    };
    let mut handle = ptr::null_mut();
    // SAFETY: valid address and out-pointer.
    let status = unsafe { WsksConnect(ptr, len, flags, 5000, &raw mut handle) };
    (status, handle)
}

#[test]
fn exported_api_connects_sends_and_closes() {
    let s = model::session();
    // Before start: not ready.
    let sink = Sink::v4();
    assert_eq!(connect(sink.addr(), 0).0, STATUS_DEVICE_NOT_READY);
    // SAFETY: the model's device object lives for the whole process.
    unsafe { global::start(model::device()) }.unwrap();
    let (status, conn) = connect(sink.addr(), WSKS_CONNECT_NODELAY);
    assert_eq!(status, STATUS_SUCCESS);
    s.require_send_flags(WSK_FLAG_NODELAY);
    let done: Done = Arc::default();
    let ctx = Arc::as_ptr(&done).cast_mut().cast::<c_void>();

    let a = bytes(0, 100);
    let chain = TestChain::new(&[&a]);
    // SAFETY: live handle, chain kept until completion, callback accepts ctx.
    let st = unsafe {
        WsksSendMdl(
            conn,
            chain.head().as_ptr(),
            5,
            50,
            0,
            Some(on_complete),
            ctx,
        )
    };
    assert_eq!(st, STATUS_PENDING);
    assert_eq!(wait(&done, 1)[0], (STATUS_SUCCESS, 50));

    let b = [bytes(7, 10), bytes(8, 20)];
    let bufs: Vec<WSKS_BUFFER> = b
        .iter()
        .map(|v| WSKS_BUFFER {
            Buffer: v.as_ptr().cast(),
            Length: v.len() as u32,
        })
        .collect();
    // SAFETY: as above.
    let st = unsafe { WsksSendBuffers(conn, bufs.as_ptr(), 2, 0, Some(on_complete), ctx) };
    assert_eq!(st, STATUS_PENDING);
    assert_eq!(wait(&done, 2)[1], (STATUS_SUCCESS, 30));

    let mut sent = 0usize;
    // SAFETY: as above.
    let st = unsafe { WsksSendSync(conn, bufs.as_ptr(), 1, 0, 5000, &raw mut sent) };
    assert_eq!((st, sent), (STATUS_SUCCESS, 10));

    // Bad input: an error, and the callback never runs.
    // SAFETY: invalid on purpose (zero buffers / no callback / bad flags).
    unsafe {
        assert_eq!(
            WsksSendBuffers(conn, bufs.as_ptr(), 0, 0, Some(on_complete), ctx),
            STATUS_INVALID_PARAMETER
        );
    }
    // SAFETY: as above.
    unsafe {
        assert_eq!(
            WsksSendMdl(
                conn,
                chain.head().as_ptr(),
                0,
                101,
                0,
                Some(on_complete),
                ctx
            ),
            STATUS_INVALID_PARAMETER
        );
    }
    // SAFETY: as above.
    unsafe {
        assert_eq!(
            WsksSendMdl(conn, chain.head().as_ptr(), 0, 1, 0, None, ctx),
            STATUS_INVALID_PARAMETER
        );
    }
    assert_eq!(connect(sink.addr(), 0x80).0, STATUS_INVALID_PARAMETER);
    assert_eq!(done.0.lock().unwrap().len(), 2);

    assert!(sink.wait_bytes(0, 90, Duration::from_secs(10)));
    let expected = [&a[5..55], &b[0][..], &b[1][..], &b[0][..]].concat();
    assert_eq!(sink.received(0), expected);
    // SAFETY: a live handle, not used again.
    assert_eq!(unsafe { WsksClose(conn) }, STATUS_SUCCESS);
    global::stop().unwrap();
    drop(chain);
    s.finish();
}

#[test]
fn unload_closes_connections_a_caller_left_open() {
    let s = model::session();
    // SAFETY: the model's device object lives for the whole process.
    unsafe { global::start(model::device()) }.unwrap();
    let sink = Sink::v6();
    let (status, conn) = connect(sink.addr(), 0);
    assert_eq!(status, STATUS_SUCCESS);
    // The driver unloads while the caller still holds the handle.
    global::stop().unwrap();
    // The late close still works and frees the handle.
    // SAFETY: the handle is live until this call.
    assert_eq!(unsafe { WsksClose(conn) }, STATUS_SUCCESS);
    s.finish();
}
