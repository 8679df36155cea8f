//! `floor`: what one delivery's `send` costs on this machine, with no server at all.
//!
//! A fanout delivery needs at least one `send` of a small segment to one socket. Over
//! loopback that `send` also runs the receiver's side of TCP (the softirq that queues the
//! segment and wakes the reader) in the sender's system call, so its cost is a property
//! of the machine, not of the server. This scenario measures it the way the fanout
//! scenario measures a server: a writer thread pinned to CPU 0 (where compare.sh pins
//! the server) writes one `--bytes` segment to each of N loopback TCP connections per
//! message, at `--rate` messages/s, while this process's main thread (on CPU 1) reads
//! them all with epoll. It reports the writer's CPU per write and how long one message's
//! N writes take (a floor for the last subscriber's latency).

use std::io::{self, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::time::{Duration, Instant};

use mio::{Events, Interest, Poll, Token};
use serde_json::json;

use crate::{Args, Report, round3};

pub fn floor(a: &Args, rep: &mut Report) -> Result<(), String> {
    let n = a.required::<usize>("sockets")?;
    let rate = a.num::<f64>("rate", 50.0)?;
    let messages = a.required::<usize>("messages")?;
    let bytes = a.num::<usize>("bytes", 160)?.max(1);
    let writer_cpu = a.num::<usize>("writer-cpu", 0)?;
    let max = Duration::from_secs_f64(a.num::<f64>("max-seconds", 300.0)?);
    if n == 0 || messages == 0 {
        return Err("usage: floor wants --sockets and --messages above 0".into());
    }
    println!(
        "floor: {n} loopback TCP connections, {messages} messages of {bytes} bytes at {}, writer on CPU {writer_cpu}",
        if rate > 0.0 { format!("{rate} messages/s") } else { "full speed".into() }
    );

    let listener = TcpListener::bind("127.0.0.1:0").map_err(|e| format!("bind: {e}"))?;
    let addr = listener.local_addr().map_err(|e| e.to_string())?;
    let mut readers = Vec::with_capacity(n);
    let mut writers = Vec::with_capacity(n);
    for _ in 0..n {
        let client = TcpStream::connect(addr).map_err(|e| format!("connect: {e}"))?;
        let (server, _) = listener.accept().map_err(|e| format!("accept: {e}"))?;
        server.set_nodelay(true).map_err(|e| e.to_string())?;
        client.set_nonblocking(true).map_err(|e| e.to_string())?;
        readers.push(mio::net::TcpStream::from_std(client));
        writers.push(server);
    }
    let mut poll = Poll::new().map_err(|e| e.to_string())?;
    for (i, r) in readers.iter_mut().enumerate() {
        poll.registry().register(r, Token(i), Interest::READABLE).map_err(|e| e.to_string())?;
    }

    let frame = vec![b'x'; bytes];
    // The writer hands its sockets back, so that none closes before the reader has all.
    let writer = std::thread::spawn(move || -> io::Result<(u64, Vec<f64>, Vec<TcpStream>)> {
        pin_to(writer_cpu);
        let interval = if rate > 0.0 { Some(Duration::from_secs_f64(1.0 / rate)) } else { None };
        let start = Instant::now();
        let cpu0 = thread_cpu_us();
        let mut bursts = Vec::with_capacity(messages);
        for m in 0..messages {
            if let Some(interval) = interval {
                let due = start + interval * m as u32;
                if let Some(wait) = due.checked_duration_since(Instant::now()) {
                    std::thread::sleep(wait);
                }
            }
            let t = Instant::now();
            for w in &mut writers {
                w.write_all(&frame)?;
            }
            bursts.push(t.elapsed().as_secs_f64() * 1e3);
        }
        Ok((thread_cpu_us() - cpu0, bursts, writers))
    });

    let expected = (n * messages * bytes) as u64;
    let mut got = 0u64;
    let mut buf = vec![0u8; 64 * 1024];
    let mut events = Events::with_capacity(1024);
    let started = Instant::now();
    while got < expected {
        if started.elapsed() > max {
            return Err(format!("floor: {got} of {expected} bytes after {max:?}"));
        }
        poll.poll(&mut events, Some(Duration::from_millis(100))).map_err(|e| e.to_string())?;
        for ev in &events {
            let r = &mut readers[ev.token().0];
            loop {
                match r.read(&mut buf) {
                    Ok(0) => return Err("floor: a connection closed".into()),
                    Ok(k) => got += k as u64,
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                    Err(e) => return Err(format!("floor: read: {e}")),
                }
            }
        }
    }
    let elapsed = started.elapsed().as_secs_f64();
    let (cpu_us, mut bursts, _writers) =
        writer.join().map_err(|_| "the writer panicked")?.map_err(|e| format!("write: {e}"))?;
    bursts.sort_by(f64::total_cmp);
    let pick = |q: f64| bursts[((bursts.len() - 1) as f64 * q).round() as usize];
    let writes = (n * messages) as f64;
    let per = cpu_us as f64 / writes;
    println!(
        "floor: {} writes in {elapsed:.3} s: {:.0} writes/s; one message's {n} writes take p50 {:.3} ms, p99 {:.3} ms",
        writes as u64,
        writes / elapsed,
        pick(0.5),
        pick(0.99)
    );
    println!("floor: writer CPU {cpu_us} µs: {per:.3} µs per write (the least one delivery can cost here)");
    rep.set("sockets", n);
    rep.set("messages", messages);
    rep.set("rate", rate);
    rep.set("bytes", bytes);
    rep.set("writes", writes as u64);
    rep.set("writes_per_sec", round3(writes / elapsed));
    rep.set("cpu_us", cpu_us);
    rep.set("cpu_us_per_write", round3(per));
    rep.set("burst_p50_ms", round3(pick(0.5)));
    rep.set("burst_p99_ms", round3(pick(0.99)));
    rep.set("elapsed_seconds", round3(elapsed));
    rep.set("bursts", json!(bursts.len()));
    Ok(())
}

/// Pins the calling thread to one CPU (best effort: a machine with one CPU keeps it).
fn pin_to(cpu: usize) {
    // SAFETY: a zeroed cpu_set_t with one bit set, for the calling thread (pid 0).
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(cpu, &mut set);
        libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set);
    }
}

/// CPU time (user + system) of the calling thread, in µs.
fn thread_cpu_us() -> u64 {
    // SAFETY: clock_gettime fills a zeroed local timespec.
    unsafe {
        let mut ts: libc::timespec = std::mem::zeroed();
        libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts);
        ts.tv_sec as u64 * 1_000_000 + ts.tv_nsec as u64 / 1_000
    }
}
