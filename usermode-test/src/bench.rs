//! `bench`: the same workload through the driver and through user-mode `WSASend`, to
//! the same in-process sink, in the same run.

use std::net::{IpAddr, TcpStream};
use std::os::windows::io::AsRawSocket;
use std::time::Instant;

use windows_sys::Win32::Foundation::{CloseHandle, WAIT_OBJECT_0};
use windows_sys::Win32::Networking::WinSock::{
    SOCKET, WSABUF, WSAGetLastError, WSAGetOverlappedResult, WSASend,
};
use windows_sys::Win32::System::IO::OVERLAPPED;
use windows_sys::Win32::System::Threading::{CreateEventW, INFINITE, WaitForSingleObject};

use crate::device::Device;
use crate::pattern::{fill, header};
use crate::scenarios::send_stream;
use crate::sink::Sink;

/// One measured configuration.
#[derive(Clone, Debug)]
pub struct BenchResult {
    /// `driver` or `wsasend`.
    pub path: &'static str,
    /// Bytes per send.
    pub chunk: usize,
    /// Sends in flight.
    pub in_flight: usize,
    /// Pattern bytes sent.
    pub bytes: u64,
    /// Seconds from first send to the sink holding every byte.
    pub seconds: f64,
    /// Every byte arrived, correct.
    pub verified: bool,
}

impl BenchResult {
    /// Throughput in MB/s (10^6 bytes).
    #[must_use]
    pub fn mb_per_s(&self) -> f64 {
        self.bytes as f64 / self.seconds / 1e6
    }

    /// One JSON object.
    #[must_use]
    pub fn to_json(&self) -> String {
        format!(
            "{{\"path\": \"{}\", \"chunk\": {}, \"in_flight\": {}, \"bytes\": {}, \"seconds\": {:.4}, \"mb_per_s\": {:.1}, \"verified\": {}}}",
            self.path,
            self.chunk,
            self.in_flight,
            self.bytes,
            self.seconds,
            self.mb_per_s(),
            self.verified
        )
    }
}

fn seed() -> u32 {
    std::process::id() ^ 0x5EED_0000
}

/// Through the driver.
///
/// # Errors
/// Any failure of the device, the connection or a send.
pub fn driver(
    sink: &Sink,
    total: usize,
    chunk: usize,
    in_flight: usize,
    seed: u32,
) -> Result<BenchResult, String> {
    let dev = Device::open().map_err(|e| format!("open: {e}"))?;
    let handle = dev
        .connect(sink.addr(), 0, 0)
        .map_err(|e| format!("connect: {e}"))?;
    let sizes = vec![chunk; total / chunk];
    let start = Instant::now();
    let sent = send_stream(&dev, handle, seed, &sizes, in_flight, 1, 0)?;
    let report = sink.wait_for(seed, sent, std::time::Duration::from_secs(120));
    let seconds = start.elapsed().as_secs_f64();
    dev.close(handle).map_err(|e| format!("close: {e}"))?;
    Ok(BenchResult {
        path: "driver",
        chunk,
        in_flight,
        bytes: sent,
        seconds,
        verified: report.is_some_and(|r| r.exact()),
    })
}

/// Through overlapped `WSASend` on a user-mode socket.
///
/// # Errors
/// Any socket failure.
pub fn wsasend(
    sink: &Sink,
    total: usize,
    chunk: usize,
    in_flight: usize,
    seed: u32,
) -> Result<BenchResult, String> {
    let stream = TcpStream::connect(sink.addr()).map_err(|e| format!("connect: {e}"))?;
    let socket = stream.as_raw_socket() as SOCKET;
    let count = total / chunk;
    let bytes = (count * chunk) as u64;
    let mut head = header(seed, bytes).to_vec();
    send_one(socket, &mut head)?;
    struct Slot {
        ov: Box<OVERLAPPED>,
        buf: Vec<u8>,
        busy: bool,
    }
    let mut slots: Vec<Slot> = Vec::new();
    for _ in 0..in_flight.max(1) {
        // SAFETY: an unnamed manual-reset event.
        let event = unsafe { CreateEventW(std::ptr::null(), 1, 0, std::ptr::null()) };
        // SAFETY: OVERLAPPED is plain data.
        let mut ov: Box<OVERLAPPED> = Box::new(unsafe { std::mem::zeroed() });
        ov.hEvent = event;
        slots.push(Slot {
            ov,
            buf: vec![0u8; chunk],
            busy: false,
        });
    }
    let start = Instant::now();
    let mut pos = 0u64;
    for i in 0..count {
        let slot = &mut slots[i % in_flight.max(1)];
        if slot.busy {
            wait_slot(socket, &mut slot.ov, chunk)?;
        }
        fill(seed, pos, &mut slot.buf);
        pos += chunk as u64;
        let wsabuf = WSABUF {
            len: chunk as u32,
            buf: slot.buf.as_mut_ptr(),
        };
        // SAFETY: the buffer and OVERLAPPED stay put until `wait_slot` sees completion.
        let rc = unsafe {
            WSASend(
                socket,
                &raw const wsabuf,
                1,
                std::ptr::null_mut(),
                0,
                &raw mut *slot.ov,
                None,
            )
        };
        if rc != 0 && wsa_error() != 997 {
            return Err(format!("WSASend: {}", wsa_error()));
        }
        slot.busy = true;
    }
    for slot in &mut slots {
        if slot.busy {
            wait_slot(socket, &mut slot.ov, chunk)?;
        }
        // SAFETY: our event.
        unsafe { CloseHandle(slot.ov.hEvent) };
    }
    let report = sink.wait_for(seed, bytes, std::time::Duration::from_secs(120));
    let seconds = start.elapsed().as_secs_f64();
    drop(stream);
    Ok(BenchResult {
        path: "wsasend",
        chunk,
        in_flight,
        bytes,
        seconds,
        verified: report.is_some_and(|r| r.exact()),
    })
}

fn send_one(socket: SOCKET, buf: &mut [u8]) -> Result<(), String> {
    // SAFETY: OVERLAPPED is plain data.
    let mut ov: OVERLAPPED = unsafe { std::mem::zeroed() };
    // SAFETY: an unnamed manual-reset event.
    ov.hEvent = unsafe { CreateEventW(std::ptr::null(), 1, 0, std::ptr::null()) };
    let wsabuf = WSABUF {
        len: buf.len() as u32,
        buf: buf.as_mut_ptr(),
    };
    // SAFETY: buffer and OVERLAPPED outlive the wait below.
    let rc = unsafe {
        WSASend(
            socket,
            &raw const wsabuf,
            1,
            std::ptr::null_mut(),
            0,
            &raw mut ov,
            None,
        )
    };
    if rc != 0 && wsa_error() != 997 {
        return Err(format!("WSASend: {}", wsa_error()));
    }
    let result = wait_slot(socket, &mut ov, buf.len());
    // SAFETY: our event.
    unsafe { CloseHandle(ov.hEvent) };
    result
}

fn wsa_error() -> i32 {
    // SAFETY: no preconditions.
    unsafe { WSAGetLastError() }
}

fn wait_slot(socket: SOCKET, ov: &mut OVERLAPPED, expected: usize) -> Result<(), String> {
    // SAFETY: the event of a send in flight.
    if unsafe { WaitForSingleObject(ov.hEvent, INFINITE) } != WAIT_OBJECT_0 {
        return Err("wait failed".into());
    }
    let mut sent = 0u32;
    let mut flags = 0u32;
    // SAFETY: the OVERLAPPED of a completed send on `socket`.
    let ok = unsafe { WSAGetOverlappedResult(socket, ov, &raw mut sent, 0, &raw mut flags) };
    if ok == 0 || sent as usize != expected {
        return Err(format!(
            "WSASend completed with {sent} bytes, error {}",
            wsa_error()
        ));
    }
    ov.Internal = 0;
    ov.InternalHigh = 0;
    Ok(())
}

/// Runs every configuration: `total` bytes in `chunk`-byte sends, 1 and 8 in flight,
/// driver and `WSASend`, printing one `BENCH {json}` line each and a summary.
///
/// # Errors
/// The first configuration that failed.
pub fn run(total: usize, chunk: usize) -> Result<Vec<BenchResult>, String> {
    let sink = Sink::start(IpAddr::from([127, 0, 0, 1])).map_err(|e| format!("sink: {e}"))?;
    let mut results = Vec::new();
    for (i, in_flight) in [1usize, 8].into_iter().enumerate() {
        for (j, path) in ["driver", "wsasend"].into_iter().enumerate() {
            let s = seed().wrapping_add((i * 2 + j) as u32);
            eprintln!(
                "bench: {path}, {} MiB in {} KiB sends, {in_flight} in flight ...",
                total >> 20,
                chunk >> 10
            );
            let r = if path == "driver" {
                driver(&sink, total, chunk, in_flight, s)?
            } else {
                wsasend(&sink, total, chunk, in_flight, s)?
            };
            println!("BENCH {}", r.to_json());
            results.push(r);
        }
    }
    println!();
    println!(
        "{:>8} {:>9} {:>12} {:>12} {:>7}",
        "chunk", "in flight", "driver MB/s", "WSASend MB/s", "ratio"
    );
    for pair in results.chunks(2) {
        if let [d, w] = pair {
            println!(
                "{:>7}K {:>9} {:>12.1} {:>12.1} {:>7.2}",
                d.chunk >> 10,
                d.in_flight,
                d.mb_per_s(),
                w.mb_per_s(),
                d.mb_per_s() / w.mb_per_s()
            );
        }
    }
    Ok(results)
}
