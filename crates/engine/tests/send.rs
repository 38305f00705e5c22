//! The engine's send paths against the kernel model: every source of a `WSK_BUF`,
//! immediate and pending completion, every injected provider error, cancel, close with
//! sends in flight, order under load, IPv4 and IPv6 — each test ends with the model's
//! checker asserting no broken kernel rule and no leak.

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::{Results, Rng, TestChain, bytes, connect, model, teardown};
use model::{Fault, Op, SendMode, Sink};
use wsksend_engine::Error;
use wsksend_engine::connection::{
    CancelOutcome, CloseMode, ConnectOptions, Connection, Payload, SendId,
};
use wsksend_engine::mdl::{Carve, RawBuf, Segment};
use wsksend_ffi::WSK_FLAG_NODELAY;
use wsksend_ffi::status::{
    STATUS_CANCELLED, STATUS_CONNECTION_RESET, STATUS_FILE_FORCED_CLOSED, STATUS_NOT_SUPPORTED,
    STATUS_SUCCESS, STATUS_UNSUCCESSFUL,
};

const WAIT: Duration = Duration::from_secs(10);

/// Sends `data` as one owned payload and returns the completion's result.
fn send_owned(conn: &Connection, data: Vec<u8>, flags: u32, results: &Results, tag: u64) -> SendId {
    // SAFETY: an owned payload borrows nothing.
    unsafe { conn.send(Payload::Owned(data), flags, results.completion(tag)) }
        .map_err(|r| r.error)
        .expect("send accepted")
}

#[test]
fn mdl_chains_of_1_to_64_with_random_offsets_and_lengths_arrive_exact() {
    let s = model::session();
    let sink = Sink::v4();
    let (client, conn) = connect(sink.addr(), &ConnectOptions::default());
    let mut rng = Rng(0x5EED_1234);
    let mut expected = Vec::new();
    let results = Results::default();
    for (sent, case) in (0..64u64).enumerate() {
        let count = 1 + (case as usize % 64);
        let parts: Vec<Vec<u8>> = (0..count)
            .map(|i| bytes(i * 7 + case as usize, 1 + rng.below(300) as usize))
            .collect();
        let refs: Vec<&[u8]> = parts.iter().map(Vec::as_slice).collect();
        let chain = TestChain::new(&refs);
        let offset = rng.below(parts[0].len() as u64) as u32;
        let available: usize = parts.iter().map(Vec::len).sum::<usize>() - offset as usize;
        let length = 1 + rng.below(available as u64) as usize;
        let payload = Payload::Mdl {
            chain: chain.head(),
            offset,
            length,
        };
        // SAFETY: the chain lives until the completion below has run.
        unsafe { conn.send(payload, 0, results.completion(case)) }
            .map_err(|r| r.error)
            .expect("valid chain accepted");
        let got = results.wait(sent + 1, WAIT);
        assert_eq!(got[sent].1.status, STATUS_SUCCESS, "case {case}");
        assert_eq!(got[sent].1.bytes, length, "case {case}");
        let flat: Vec<u8> = parts.concat();
        expected.extend_from_slice(&flat[offset as usize..offset as usize + length]);
        // Length beyond the chain: refused, nothing sent (Windows would bugcheck).
        let too_long = Payload::Mdl {
            chain: chain.head(),
            offset,
            length: available + 1,
        };
        // SAFETY: as above; the send is refused before queuing.
        let refused = unsafe { conn.send(too_long, 0, results.completion(u64::MAX)) };
        assert_eq!(
            refused.err().map(|r| r.error),
            Some(Error::INVALID_PARAMETER)
        );
        drop(chain);
    }
    assert!(sink.wait_bytes(0, expected.len(), WAIT));
    assert_eq!(sink.received(0), expected);
    assert_eq!(results.count(), 64, "refused sends never complete");
    for r in s.sends() {
        assert!(r.mdl_count >= 1 && r.length >= 1);
    }
    teardown(client, conn);
    s.finish();
}

#[test]
fn each_source_arrives_exact_immediate_and_pending() {
    for mode in [SendMode::Immediate, SendMode::Pended] {
        let s = model::session();
        s.set_send_mode(mode);
        let sink = Sink::v4();
        let (client, conn) = connect(sink.addr(), &ConnectOptions::default());
        let results = Results::default();
        let mut expected = Vec::new();

        // (a) a chain the caller locked.
        let a = [bytes(0, 100), bytes(100, 50)];
        let chain = TestChain::new(&[&a[0], &a[1]]);
        // SAFETY: the chain outlives the completion (waited for below).
        unsafe {
            conn.send(
                Payload::Mdl {
                    chain: chain.head(),
                    offset: 10,
                    length: 120,
                },
                0,
                results.completion(1),
            )
        }
        .map_err(|r| r.error)
        .unwrap();
        expected.extend_from_slice(&[a[0].as_slice(), a[1].as_slice()].concat()[10..130]);

        // (b) nonpaged buffers.
        let b = [bytes(1000, 33), bytes(2000, 1), bytes(3000, 4096)];
        let raw: Vec<RawBuf> = b
            .iter()
            .map(|v| RawBuf {
                ptr: v.as_ptr(),
                len: v.len() as u32,
            })
            .collect();
        // SAFETY: the buffers outlive the completion.
        unsafe { conn.send(Payload::Nonpaged(&raw), 0, results.completion(2)) }
            .map_err(|r| r.error)
            .unwrap();
        for v in &b {
            expected.extend_from_slice(v);
        }

        // (c) segments of a master, both carve modes, and a single segment (master + Offset).
        let master_bytes = bytes(5000, 1000);
        let master = TestChain::new(&[&master_bytes]);
        let segs = [
            Segment {
                offset: 10,
                len: 100,
            },
            Segment {
                offset: 500,
                len: 7,
            },
            Segment {
                offset: 999,
                len: 1,
            },
        ];
        for (tag, carve) in [(3, Carve::PartialMdl), (4, Carve::SystemVa)] {
            let payload = Payload::Segments {
                master: master.head(),
                segments: &segs,
                carve,
            };
            // SAFETY: the master outlives the completion.
            unsafe { conn.send(payload, 0, results.completion(tag)) }
                .map_err(|r| r.error)
                .unwrap();
            for sg in &segs {
                expected.extend_from_slice(
                    &master_bytes[sg.offset as usize..(sg.offset + sg.len) as usize],
                );
            }
        }
        let single = [Segment {
            offset: 300,
            len: 200,
        }];
        let payload = Payload::Segments {
            master: master.head(),
            segments: &single,
            carve: Carve::PartialMdl,
        };
        // SAFETY: as above.
        unsafe { conn.send(payload, 0, results.completion(5)) }
            .map_err(|r| r.error)
            .unwrap();
        expected.extend_from_slice(&master_bytes[300..500]);

        // Owned bytes.
        let owned = bytes(9000, 777);
        expected.extend_from_slice(&owned);
        send_owned(&conn, owned, 0, &results, 6);

        let got = results.wait(6, WAIT);
        let mut tags: Vec<u64> = got.iter().map(|(t, _)| *t).collect();
        tags.sort_unstable();
        assert_eq!(tags, [1, 2, 3, 4, 5, 6]);
        assert!(
            got.iter().all(|(_, r)| r.status == STATUS_SUCCESS),
            "{got:?}"
        );
        assert!(sink.wait_bytes(0, expected.len(), WAIT));
        assert_eq!(sink.received(0), expected, "{mode:?}");
        // The single segment went out as the master itself with an offset: no new MDL.
        let records = s.sends();
        assert!(
            records
                .iter()
                .any(|r| r.mdl_count == 1 && r.offset == 300 && r.length == 200)
        );
        assert!(
            records
                .iter()
                .filter(|r| r.mdl_count == 3 && r.length == 108)
                .count()
                == 2
        );
        teardown(client, conn);
        drop((chain, master));
        s.finish();
    }
}

#[test]
fn provider_errors_reach_the_caller_and_the_connection_survives() {
    let s = model::session();
    let sink = Sink::v4();
    let (client, conn) = connect(sink.addr(), &ConnectOptions::default());
    let results = Results::default();
    let cases = [
        (
            Fault::Fail(STATUS_CONNECTION_RESET),
            STATUS_CONNECTION_RESET,
        ),
        (
            Fault::Fail(STATUS_FILE_FORCED_CLOSED),
            STATUS_FILE_FORCED_CLOSED,
        ),
        (Fault::RejectFlags(WSK_FLAG_NODELAY), STATUS_NOT_SUPPORTED),
        // Against the WSK contract (Wine's stubs): error returned, IRP never completed.
        (
            Fault::FailWithoutCompleting(STATUS_UNSUCCESSFUL),
            STATUS_UNSUCCESSFUL,
        ),
    ];
    for (i, (fault, status)) in cases.into_iter().enumerate() {
        s.inject(Op::Send, fault);
        send_owned(&conn, bytes(0, 10), WSK_FLAG_NODELAY, &results, i as u64);
        let got = results.wait(i + 1, WAIT);
        assert_eq!(got[i].1.status, status, "case {i}");
        assert_eq!(got[i].1.bytes, 0);
    }
    // Partial progress is reported as sent.
    s.inject(Op::Send, Fault::Partial);
    send_owned(&conn, bytes(0, 100), 0, &results, 10);
    let got = results.wait(cases.len() + 1, WAIT);
    assert_eq!(
        got.last().unwrap().1,
        wsksend_engine::connection::SendResult {
            status: STATUS_SUCCESS,
            bytes: 50
        }
    );
    // Later sends still work, and the flag reached the provider.
    s.require_send_flags(WSK_FLAG_NODELAY);
    send_owned(&conn, bytes(0, 5), WSK_FLAG_NODELAY, &results, 11);
    assert_eq!(
        results.wait(cases.len() + 2, WAIT).last().unwrap().1.status,
        STATUS_SUCCESS
    );
    let stats = conn.stats();
    assert_eq!((stats.sends, stats.errors, stats.in_flight), (2, 4, 0));
    teardown(client, conn);
    s.finish();
}

#[test]
fn cancel_completes_posted_and_queued_sends() {
    let s = model::session();
    let sink = Sink::v4();
    let options = ConnectOptions {
        max_posted: 1,
        ..ConnectOptions::default()
    };
    let (client, conn) = connect(sink.addr(), &options);
    let results = Results::default();
    // Posted and parked until cancelled; a second one waits in the queue behind it.
    s.inject(Op::Send, Fault::PendUntilCancelled);
    let posted = send_owned(&conn, bytes(0, 10), 0, &results, 1);
    let queued = send_owned(&conn, bytes(0, 10), 0, &results, 2);
    assert_eq!(conn.cancel(queued), CancelOutcome::Cancelled);
    assert_eq!(
        results.wait(1, WAIT)[0],
        (
            2,
            wsksend_engine::connection::SendResult {
                status: STATUS_CANCELLED,
                bytes: 0
            }
        )
    );
    assert_eq!(conn.cancel(posted), CancelOutcome::Requested);
    let got = results.wait(2, WAIT);
    assert_eq!(got[1].0, 1);
    assert_eq!(got[1].1.status, STATUS_CANCELLED);
    assert_eq!(conn.cancel(posted), CancelOutcome::NotFound);
    // The connection still sends.
    send_owned(&conn, bytes(0, 3), 0, &results, 3);
    assert_eq!(results.wait(3, WAIT)[2].1.status, STATUS_SUCCESS);
    teardown(client, conn);
    s.finish();
}

#[test]
fn cancel_not_honoured_is_reported_and_close_completes_the_send() {
    let s = model::session();
    let sink = Sink::v4();
    let (client, conn) = connect(sink.addr(), &ConnectOptions::default());
    let results = Results::default();
    s.inject(Op::Send, Fault::PendIgnoringCancel);
    let id = send_owned(&conn, bytes(0, 10), 0, &results, 1);
    assert_eq!(conn.cancel(id), CancelOutcome::NotHonoured);
    conn.begin_close(CloseMode::Abortive);
    assert_eq!(results.wait(1, WAIT)[0].1.status, STATUS_CANCELLED);
    // Closed: new sends are refused synchronously.
    // SAFETY: owned payload.
    let refused = unsafe { conn.send(Payload::Owned(vec![1]), 0, results.completion(9)) };
    assert_eq!(refused.err().map(|r| r.error), Some(Error::NOT_CONNECTED));
    teardown(client, conn);
    s.finish();
}

#[test]
fn close_with_sends_in_flight_completes_them_first() {
    let s = model::session();
    let sink = Sink::v4();
    sink.pause_reading(true);
    // The peer never takes the parked sends: the graceful close resets after the
    // linger.
    let options = ConnectOptions {
        linger: Duration::from_millis(200),
        ..ConnectOptions::default()
    };
    let (client, conn) = connect(sink.addr(), &options);
    let results = Results::default();
    for i in 0..4 {
        s.inject(Op::Send, Fault::PendIgnoringCancel);
        send_owned(&conn, bytes(0, 1000), 0, &results, i);
    }
    for i in 4..20 {
        send_owned(&conn, bytes(0, 1000), 0, &results, i);
    }
    client.close(&conn).expect("close");
    let got = results.wait(20, WAIT);
    assert!(
        got.iter()
            .filter(|(t, _)| *t < 4)
            .all(|(_, r)| r.status == STATUS_CANCELLED),
        "{got:?}"
    );
    assert!(conn.is_closing());
    drop(conn);
    wsksend_engine::client::Client::shutdown(client).expect("shutdown");
    s.finish();
}

#[test]
fn thousand_concurrent_sends_arrive_in_order() {
    let s = model::session();
    s.set_send_mode(SendMode::Pended);
    let sink = Sink::v4();
    let (client, conn) = connect(
        sink.addr(),
        &ConnectOptions {
            max_posted: 16,
            ..ConnectOptions::default()
        },
    );
    let results = Results::default();
    let mut expected = Vec::new();
    // Four threads issue sends; each send carries its global sequence number, taken
    // under a lock together with the call, so "issue order" is well defined.
    let order = Arc::new(std::sync::Mutex::new(0u32));
    std::thread::scope(|scope| {
        for _ in 0..4 {
            let conn = conn.clone();
            let order = order.clone();
            let results = results.clone();
            scope.spawn(move || {
                for _ in 0..250 {
                    let mut next = order.lock().unwrap();
                    let data = next.to_le_bytes().to_vec();
                    send_owned(&conn, data, 0, &results, u64::from(*next));
                    *next += 1;
                }
            });
        }
    });
    for i in 0..1000u32 {
        expected.extend_from_slice(&i.to_le_bytes());
    }
    let got = results.wait(1000, Duration::from_secs(30));
    assert!(
        got.iter()
            .all(|(_, r)| r.status == STATUS_SUCCESS && r.bytes == 4)
    );
    assert!(sink.wait_bytes(0, 4000, WAIT));
    assert_eq!(sink.received(0), expected);
    teardown(client, conn);
    s.finish();
}

#[test]
fn ipv6_connection_sends() {
    let s = model::session();
    let sink = Sink::v6();
    let (client, conn) = connect(
        sink.addr(),
        &ConnectOptions {
            nodelay: true,
            ..ConnectOptions::default()
        },
    );
    s.require_send_flags(WSK_FLAG_NODELAY);
    let results = Results::default();
    send_owned(&conn, bytes(0, 1234), 0, &results, 1);
    assert_eq!(results.wait(1, WAIT)[0].1.bytes, 1234);
    assert!(sink.wait_bytes(0, 1234, WAIT));
    assert_eq!(sink.received(0), bytes(0, 1234));
    assert!(conn.remote().is_ipv6());
    teardown(client, conn);
    s.finish();
}

#[test]
fn sends_from_dispatch_level_and_blocking_helper() {
    let s = model::session();
    let sink = Sink::v4();
    let (client, conn) = connect(sink.addr(), &ConnectOptions::default());
    let results = Results::default();
    s.at_dispatch(|| send_owned(&conn, bytes(0, 10), 0, &results, 1));
    assert_eq!(results.wait(1, WAIT)[0].1.status, STATUS_SUCCESS);
    assert_eq!(conn.send_blocking(&bytes(10, 20), 0, WAIT), Ok(20));
    assert!(sink.wait_bytes(0, 30, WAIT));
    assert_eq!(sink.received(0), [bytes(0, 10), bytes(10, 20)].concat());
    // A blocking send that never completes by itself times out and is cancelled.
    s.inject(Op::Send, Fault::PendUntilCancelled);
    assert_eq!(
        conn.send_blocking(&[1], 0, Duration::from_millis(100)),
        Err(Error::TIMEOUT)
    );
    teardown(client, conn);
    s.finish();
}

#[test]
fn bad_payloads_are_refused_before_anything_is_sent() {
    let s = model::session();
    let sink = Sink::v4();
    let (client, conn) = connect(sink.addr(), &ConnectOptions::default());
    let results = Results::default();
    let data = bytes(0, 100);
    let chain = TestChain::new(&[&data]);
    let bad = [
        Payload::Mdl {
            chain: chain.head(),
            offset: 100,
            length: 1,
        },
        Payload::Mdl {
            chain: chain.head(),
            offset: 0,
            length: 0,
        },
        Payload::Mdl {
            chain: chain.head(),
            offset: 0,
            length: 101,
        },
        Payload::Nonpaged(&[]),
        Payload::Segments {
            master: chain.head(),
            segments: &[Segment {
                offset: 90,
                len: 11,
            }],
            carve: Carve::PartialMdl,
        },
        Payload::Segments {
            master: chain.head(),
            segments: &[
                Segment { offset: 0, len: 1 },
                Segment {
                    offset: u32::MAX,
                    len: 2,
                },
            ],
            carve: Carve::PartialMdl,
        },
        Payload::Segments {
            master: chain.head(),
            segments: &[],
            carve: Carve::SystemVa,
        },
        Payload::Owned(Vec::new()),
    ];
    for (i, payload) in bad.into_iter().enumerate() {
        // SAFETY: the chain outlives the (refused) sends.
        let r = unsafe { conn.send(payload, 0, results.completion(i as u64)) };
        assert_eq!(
            r.err().map(|r| r.error),
            Some(Error::INVALID_PARAMETER),
            "case {i}"
        );
    }
    // SAFETY: owned payload.
    let flags = unsafe { conn.send(Payload::Owned(vec![1]), 0x8000, results.completion(99)) };
    assert_eq!(flags.err().map(|r| r.error), Some(Error::INVALID_PARAMETER));
    assert_eq!(results.count(), 0);
    assert!(s.sends().is_empty());
    teardown(client, conn);
    drop(chain);
    s.finish();
}

#[test]
fn connect_failures_clean_up() {
    let s = model::session();
    let client = wsksend_engine::client::Client::register().unwrap();
    // Nobody listens on this port.
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = closed.local_addr().unwrap();
    drop(closed);
    assert!(client.connect(addr, &ConnectOptions::default()).is_err());
    // The provider fails socket creation.
    let sink = Sink::v4();
    s.inject(Op::Socket, Fault::Fail(STATUS_UNSUCCESSFUL));
    assert_eq!(
        client
            .connect(sink.addr(), &ConnectOptions::default())
            .err(),
        Some(Error::from_status(STATUS_UNSUCCESSFUL))
    );
    // A connect that never completes and ignores cancel: timeout, socket closed.
    s.inject(Op::Connect, Fault::PendIgnoringCancel);
    let quick = ConnectOptions {
        connect_timeout: Duration::from_millis(200),
        ..ConnectOptions::default()
    };
    assert_eq!(
        client.connect(sink.addr(), &quick).err(),
        Some(Error::TIMEOUT)
    );
    assert_eq!(client.connection_count(), 0);
    // And the client still connects afterwards.
    let conn = client
        .connect(sink.addr(), &ConnectOptions::default())
        .unwrap();
    teardown(client, conn);
    s.finish();
}

#[test]
fn provider_not_ready_is_reported() {
    let s = model::session();
    let client = wsksend_engine::client::Client::register().unwrap();
    s.inject(
        Op::Capture,
        Fault::Fail(wsksend_ffi::status::STATUS_DEVICE_NOT_READY),
    );
    let sink = Sink::v4();
    assert_eq!(
        client
            .connect(sink.addr(), &ConnectOptions::default())
            .err(),
        Some(Error::NOT_READY)
    );
    // Captured on a later try.
    let conn = client
        .connect(sink.addr(), &ConnectOptions::default())
        .unwrap();
    teardown(client, conn);
    s.finish();
}
