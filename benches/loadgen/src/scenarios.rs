//! The scenarios that talk to a server (idle, fanout, chat, soak, storm). Each fills a `Report` as it goes, so a run that fails half-way
//! still prints what it measured; `Err` ends the run as failed.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::frames::{Frame, classify};
use crate::ws::{CloseInfo, Ev};
use crate::{Args, Ctx, Report, round3};

const TICK: Duration = Duration::from_millis(5);

/// Counts failure reasons, so a thousand refused connections print as one line.
#[derive(Default)]
struct Reasons(BTreeMap<String, u64>);

impl Reasons {
    fn add(&mut self, reason: String) {
        *self.0.entry(reason).or_default() += 1;
    }
    fn summary(&self) -> String {
        let mut v: Vec<_> = self.0.iter().collect();
        v.sort_by(|a, b| b.1.cmp(a.1));
        v.iter().take(6).map(|(r, n)| format!("{n}× {r}")).collect::<Vec<_>>().join("; ")
    }
    fn json(&self) -> Value {
        json!(self.0)
    }
}

fn describe(info: &CloseInfo) -> String {
    if let Some(e) = &info.error {
        return e.clone();
    }
    match info.code {
        Some(1013) => "closed 1013 (try again later): raise the server's per-user connection cap \
                       (switchboard: SWITCHBOARD_MAX_CONNECTIONS_PER_USER)"
            .to_string(),
        Some(code) if info.reason.is_empty() => format!("closed by the server with {code}"),
        Some(code) => format!("closed by the server with {code} {:?}", info.reason),
        None => "closed by the server without a code".to_string(),
    }
}

/// p50, p99 (nearest rank) and max of nanosecond samples, in milliseconds.
fn percentiles_ms(samples: &mut [u64]) -> (Option<f64>, Option<f64>, Option<f64>) {
    if samples.is_empty() {
        return (None, None, None);
    }
    samples.sort_unstable();
    let rank = |q: f64| {
        let i = ((q * samples.len() as f64).ceil() as usize).clamp(1, samples.len()) - 1;
        round3(samples[i] as f64 / 1e6)
    };
    (Some(rank(0.50)), Some(rank(0.99)), Some(round3(*samples.last().unwrap() as f64 / 1e6)))
}

fn fmt_opt<T: std::fmt::Display>(v: Option<T>) -> String {
    v.map_or("n/a".to_string(), |v| v.to_string())
}

fn slot<T>(v: &mut Vec<Option<T>>, id: usize) -> &mut Option<T> {
    if v.len() <= id {
        v.resize_with(id + 1, || None);
    }
    &mut v[id]
}

/// Closes every connection in `ids` with 1000 and waits (at most `wait`) until the server
/// has answered or the sockets are gone.
fn close_all(ctx: &mut Ctx, ids: impl IntoIterator<Item = usize>, wait: Duration) -> Result<(), String> {
    for id in ids {
        ctx.net.close(id, 1000);
    }
    let until = Instant::now() + wait;
    while ctx.net.len() > 0 && Instant::now() < until {
        let evs = ctx.poll(Duration::from_millis(20))?;
        ctx.recycle(evs);
    }
    Ok(())
}

/// Opens `count` connections to the paths `path_of(i)` with at most `ctx.concurrency`
/// handshakes in flight; a connection counts once its `room_users_list` arrived.
/// Returns the net ids in order, or the failure. Everything else that arrives is given
/// to `other` (join frames, say). `at`: another server (address, Host header) than
/// `--url`'s.
fn open_all(
    ctx: &mut Ctx,
    what: &str,
    count: usize,
    mut path_of: impl FnMut(&Ctx, usize) -> String,
    mut up_ns: Option<&mut u64>,
    at: Option<(SocketAddr, &str)>,
) -> Result<Vec<usize>, String> {
    let mut ids = vec![usize::MAX; count];
    let mut index: Vec<Option<(usize, bool)>> = Vec::new();
    let (mut next, mut inflight, mut up) = (0, 0, 0);
    let mut last_progress = Instant::now();
    let mut last_print = Instant::now();
    while up < count {
        while next < count && inflight < ctx.concurrency {
            let path = path_of(ctx, next);
            let id = match at {
                Some((addr, host)) => ctx.net.connect_to(addr, host, &path),
                None => ctx.net.connect(&path),
            }
            .map_err(|e| format!("{what} {next}: connect: {e}"))?;
            *slot(&mut index, id) = Some((next, false));
            ids[next] = id;
            next += 1;
            inflight += 1;
        }
        let evs = ctx.poll(TICK)?;
        for ev in &evs {
            match ev {
                Ev::Open(_) => {}
                Ev::Text(id, t, text) => {
                    let Some(Some((i, is_up))) = index.get_mut(*id) else { continue };
                    if *is_up {
                        continue;
                    }
                    match classify(text) {
                        Frame::UsersList { .. } => {
                            *is_up = true;
                            up += 1;
                            inflight -= 1;
                            last_progress = Instant::now();
                            if let Some(u) = up_ns.as_deref_mut() {
                                *u = *t;
                            }
                        }
                        Frame::Error(e) => return Err(format!("{what} {i}: error frame before room_users_list: {e}")),
                        _ => return Err(format!("{what} {i}: first frame is not room_users_list: {text}")),
                    }
                }
                Ev::Closed(id, info) => {
                    let i = index.get(*id).copied().flatten().map_or(usize::MAX, |(i, _)| i);
                    return Err(format!("{what} {i}: {}", describe(info)));
                }
            }
        }
        ctx.recycle(evs);
        if last_progress.elapsed() > ctx.stall {
            return Err(format!("stalled: {up} of {count} {what}s connected, none for {} s", ctx.stall.as_secs()));
        }
        if last_print.elapsed() > Duration::from_secs(5) {
            last_print = Instant::now();
            println!("  {up}/{count} {what}s connected");
        }
    }
    Ok(ids)
}

// ------------------------------------------------------------------------------- idle

pub fn idle(ctx: &mut Ctx, a: &Args, rep: &mut Report) -> Result<(), String> {
    let n: usize = a.required("connections")?;
    let settle: f64 = a.num("settle-seconds", 2.0)?;
    let max_fail: usize = a.num("max-failures", (n / 1000).max(5))?;
    ctx.budget(n)?;
    rep.set("connections_requested", n);
    rep.set("concurrency", ctx.concurrency);
    let rss_before = ctx.rss();
    let cpu0 = ctx.cpu_us();
    let overflows0 = crate::procstat::listen_overflows();
    rep.opt("rss_before_kib", rss_before);
    println!("idle: opening {n} connections (one room each, {} handshakes in flight)", ctx.concurrency);

    #[derive(Clone, Copy, PartialEq)]
    enum S {
        Pending,
        Up,
    }
    let mut slots: Vec<Option<S>> = Vec::new();
    let mut reasons = Reasons::default();
    let t0 = Instant::now();
    let mut t_last_up = t0;
    let (mut next, mut inflight, mut established, mut failed, mut dropped) = (0usize, 0usize, 0usize, 0usize, 0usize);
    let mut last_progress = Instant::now();
    let mut last_print = Instant::now();
    let abort_at = max_fail.max(n / 10);
    while next < n || inflight > 0 {
        while next < n && inflight < ctx.concurrency {
            let path = ctx.path(&format!("idle-{next}"), next as u64 + 1);
            next += 1;
            match ctx.net.connect(&path) {
                Ok(id) => {
                    *slot(&mut slots, id) = Some(S::Pending);
                    inflight += 1;
                }
                Err(e) => {
                    failed += 1;
                    reasons.add(format!("connect: {e}"));
                }
            }
        }
        let evs = ctx.poll(TICK)?;
        for ev in &evs {
            match ev {
                Ev::Open(_) => {}
                Ev::Text(id, _, text) => {
                    let s = slot(&mut slots, *id);
                    if *s != Some(S::Pending) {
                        continue;
                    }
                    inflight -= 1;
                    if let Frame::UsersList { .. } = classify(text) {
                        *s = Some(S::Up);
                        established += 1;
                        t_last_up = Instant::now();
                        last_progress = t_last_up;
                    } else {
                        *s = None;
                        failed += 1;
                        reasons.add(format!(
                            "first frame is not room_users_list: {}",
                            text.chars().take(120).collect::<String>()
                        ));
                        ctx.net.close(*id, 1000);
                    }
                }
                Ev::Closed(id, info) => match slot(&mut slots, *id).take() {
                    Some(S::Pending) => {
                        inflight -= 1;
                        failed += 1;
                        reasons.add(describe(info));
                    }
                    Some(S::Up) => {
                        dropped += 1;
                        reasons.add(format!("open connection dropped: {}", describe(info)));
                    }
                    None => {}
                },
            }
        }
        ctx.recycle(evs);
        if failed + dropped > abort_at {
            rep.set("connections_established", established);
            rep.set("connection_failures", failed + dropped);
            rep.set("failure_reasons", reasons.json());
            return Err(format!("{} of {next} connections failed: {}", failed + dropped, reasons.summary()));
        }
        if last_progress.elapsed() > ctx.stall {
            return Err(format!("stalled: {established} of {n} connected, none for {} s", ctx.stall.as_secs()));
        }
        if last_print.elapsed() > Duration::from_secs(2) {
            last_print = Instant::now();
            println!("  {established}/{n} connected, {failed} failed");
        }
    }
    let open_secs = t_last_up.duration_since(t0).as_secs_f64();
    let rss_open = ctx.rss();
    let cpu_open = ctx.cpu_us().zip(cpu0).map(|(b, a)| b - a);
    let rate = if open_secs > 0.0 { established as f64 / open_secs } else { 0.0 };
    let overflows = crate::procstat::listen_overflows().zip(overflows0).map(|(b, a)| b.saturating_sub(a));
    println!("idle: {established}/{n} connections established in {open_secs:.3} s ({rate:.0}/s), {failed} failed");
    if let Some(o) = overflows.filter(|o| *o > 0) {
        println!("idle: the server's accept queue overflowed {o} times (SYNs dropped and retried after 1 s or more)");
    }
    rep.opt("listen_overflows", overflows);

    let until = Instant::now() + Duration::from_secs_f64(settle);
    while Instant::now() < until {
        let evs = ctx.poll(TICK)?;
        for ev in &evs {
            if let Ev::Closed(id, info) = ev
                && slot(&mut slots, *id).take() == Some(S::Up)
            {
                dropped += 1;
                reasons.add(format!("open connection dropped: {}", describe(info)));
            }
        }
        ctx.recycle(evs);
    }
    let rss_settled = ctx.rss();
    let per_conn = |after: Option<u64>| match (after, rss_before) {
        (Some(b), Some(a)) if established > 0 => Some(round3((b as f64 - a as f64) / established as f64)),
        _ => None,
    };
    let cpu_per_conn = cpu_open.filter(|_| established > 0).map(|c| round3(c as f64 / established as f64));
    println!(
        "idle: server RSS {} KiB before, {} KiB with all open, {} KiB after {settle} s: {} KiB per connection",
        fmt_opt(rss_before),
        fmt_opt(rss_open),
        fmt_opt(rss_settled),
        fmt_opt(per_conn(rss_settled))
    );
    println!("idle: server CPU {} µs while opening: {} µs per connection", fmt_opt(cpu_open), fmt_opt(cpu_per_conn));

    rep.set("connections_established", established);
    rep.set("connection_failures", failed);
    rep.set("connections_dropped", dropped);
    rep.set("open_seconds", round3(open_secs));
    rep.set("connections_per_sec", round3(rate));
    rep.opt("rss_open_kib", rss_open);
    rep.opt("rss_settled_kib", rss_settled);
    rep.opt("rss_per_conn_kib", per_conn(rss_settled));
    rep.opt("rss_per_conn_open_kib", per_conn(rss_open));
    rep.opt("cpu_open_us", cpu_open);
    rep.opt("cpu_us_per_conn", cpu_per_conn);
    rep.set("failure_reasons", reasons.json());
    if failed + dropped > max_fail {
        rep.errors.push(format!(
            "{} connections failed or dropped (more than {max_fail}): {}",
            failed + dropped,
            reasons.summary()
        ));
    }

    let open: Vec<usize> = slots.iter().enumerate().filter(|(_, s)| **s == Some(S::Up)).map(|(i, _)| i).collect();
    close_all(ctx, open, Duration::from_secs(15))
}

// ----------------------------------------------------------------------------- fanout

fn parse_two(m: &str) -> Option<(u64, u64)> {
    let mut it = m.split(' ');
    let a = it.next()?.parse().ok()?;
    let b = it.next()?.parse().ok()?;
    Some((a, b))
}

pub fn fanout(ctx: &mut Ctx, a: &Args, rep: &mut Report) -> Result<(), String> {
    let n: usize = a.required("subscribers")?;
    let rate: f64 = a.required("rate")?;
    let m: u64 = a.required("messages")?;
    let window: u64 = a.num("window", 64u64)?.max(1);
    // The subscribers' servers when they are not --url's: other nodes on the same
    // database, the subscribers split over them in turn (contiguous groups).
    let sub_url = a.str("subscriber-url");
    let (url_addr, url_host, url_base) =
        crate::ws::parse_ws_url(a.str("url").unwrap_or_default(), "--url").map_err(|e| format!("usage: {e}"))?;
    let mut groups: Vec<Group> = Vec::new();
    for url in sub_url.unwrap_or_default().split(',').filter(|u| !u.is_empty()) {
        let (addr, host, base) = crate::ws::parse_ws_url(url, "--subscriber-url").map_err(|e| format!("usage: {e}"))?;
        groups.push(Group { url: url.to_string(), addr, host, base, remote: addr != url_addr, size: 0 });
    }
    if groups.is_empty() {
        let url = a.str("url").unwrap_or_default().to_string();
        groups.push(Group { url, addr: url_addr, host: url_host, base: url_base, remote: false, size: 0 });
    }
    let k = groups.len();
    for (g, group) in groups.iter_mut().enumerate() {
        group.size = n / k + usize::from(g < n % k);
    }
    let fault = Fault::parse(a)?;
    let timeline_ns: u64 = (a.num("timeline-ms", 250.0f64)? * 1e6) as u64;
    let want_timeline = fault.is_some() || a.str("timeline-ms").is_some();
    // The first seconds of a fresh room, reported apart from the steady state.
    let warmup = (a.num("warmup-seconds", 0.0f64)?.max(0.0) * 1e9) as u64;
    let cpuset = crate::procstat::CpuSet::parse(a.str("cpu"), a.str("cpu-tree"))?;
    ctx.budget(n + 1)?;
    let room = format!("fanout-{}", ctx.tag);
    rep.set("subscribers", n);
    rep.set("rate", rate);
    rep.set("messages", m);
    rep.set("window", window);
    rep.set("room", room.as_str());
    rep.opt("subscriber_url", sub_url);
    let expected = n as u64 * m;
    rep.set("deliveries_expected", expected);
    let rss0 = ctx.rss();
    rep.opt("rss_before_kib", rss0);
    println!(
        "fanout: {n} subscribers (user 1) in room {room}, then {m} messages at {} by user 2",
        if rate > 0.0 { format!("{rate} messages/s") } else { format!("full speed (window {window})") }
    );
    if sub_url.is_some() {
        let split: Vec<String> = groups.iter().map(|g| format!("{} on {}", g.size, g.url)).collect();
        println!("fanout: the subscribers: {}; the sender on {}", split.join(", "), a.str("url").unwrap_or_default());
    }

    // Subscribers: all the same user, so no join per subscriber and a one-entry user list.
    let t_sub = Instant::now();
    let overflows0 = crate::procstat::listen_overflows();
    let mut sub_ids = Vec::with_capacity(n);
    let mut group_of = Vec::with_capacity(n);
    for (g, group) in groups.iter().enumerate() {
        let path = ctx.path_on(&group.base, &room, 1);
        let ids = open_all(ctx, "subscriber", group.size, |_, _| path.clone(), None, Some((group.addr, &group.host)))?;
        group_of.extend(std::iter::repeat_n(g, ids.len()));
        sub_ids.extend(ids);
    }
    let sub_secs = t_sub.elapsed().as_secs_f64();
    rep.opt("listen_overflows", crate::procstat::listen_overflows().zip(overflows0).map(|(b, a)| b.saturating_sub(a)));
    rep.set("subscribe_seconds", round3(sub_secs));
    rep.set("subscribe_conn_per_sec", round3(n as f64 / sub_secs.max(1e-9)));
    println!("fanout: {n} subscribers connected in {sub_secs:.3} s");

    // index: net id -> Some(subscriber number) / the sender.
    const SENDER: usize = usize::MAX;
    let mut index: Vec<Option<usize>> = Vec::new();
    let mut next_seq = vec![0u64; n];
    for (i, id) in sub_ids.iter().enumerate() {
        *slot(&mut index, *id) = Some(i);
    }
    let send_path = ctx.path(&room, 2);
    let sender = {
        let ids = open_all(ctx, "sender", 1, |_, _| send_path.clone(), None, None)?;
        ids[0]
    };
    *slot(&mut index, sender) = Some(SENDER);

    let on_unexpected = |who: usize, info: &CloseInfo| {
        if who == SENDER {
            format!("the sender: {}", describe(info))
        } else {
            format!("subscriber {who}: {}", describe(info))
        }
    };
    // Let the sender's user_join reach everyone before the clock starts.
    let until = Instant::now() + Duration::from_millis(300);
    while Instant::now() < until {
        let evs = ctx.poll(TICK)?;
        for ev in &evs {
            match ev {
                Ev::Closed(id, info) => return Err(on_unexpected(index[*id].unwrap_or(0), info)),
                Ev::Text(id, _, text) => {
                    if let Frame::Chat { .. } | Frame::Error(_) = classify(text) {
                        return Err(format!("connection {id}: unexpected frame before publishing: {text}"));
                    }
                }
                Ev::Open(_) => {}
            }
        }
        ctx.recycle(evs);
    }

    let rss_sub = ctx.rss();
    rep.opt("rss_subscribed_kib", rss_sub);
    let cpu0 = ctx.cpu_us();
    let set0 = cpuset.as_ref().map(|c| (c.sample(), crate::machine_busy_us(), crate::own_cpu_us(), Instant::now()));
    let mut send_ns = vec![0u64; m as usize];
    let mut latencies: Vec<u64> = Vec::with_capacity(expected.min(50_000_000) as usize);
    // Per group: (send time, latency) of each delivery, for its own figures and the windows.
    let mut by_group: Vec<Vec<(u64, u64)>> = vec![Vec::new(); k];
    let mut fault_child: Option<std::process::Child> = None;
    let mut fault_ns: Option<u64> = None;
    let (mut seq, mut echoed, mut deliveries) = (0u64, 0u64, 0u64);
    let t_pub = ctx.net.now_ns();
    let mut first_send = None;
    let mut last_delivery = t_pub;
    let mut last_progress = Instant::now();
    let mut last_print = Instant::now();
    let interval_ns = if rate > 0.0 { 1e9 / rate } else { 0.0 };
    let mut text = String::with_capacity(64);
    let result: Result<(), String> = 'run: loop {
        let now = ctx.net.now_ns();
        while seq < m && seq - echoed < window && (rate <= 0.0 || now >= t_pub + (seq as f64 * interval_ns) as u64) {
            let ns = ctx.net.now_ns();
            first_send.get_or_insert(ns);
            send_ns[seq as usize] = ns;
            text.clear();
            use std::fmt::Write;
            let _ = write!(text, r#"{{"message": "{seq} {ns}"}}"#);
            ctx.net.send_text(sender, &text);
            seq += 1;
        }
        if let (Some(f), Some(first), None) = (&fault, first_send, fault_ns) {
            let ns = ctx.net.now_ns();
            if ns >= first + (f.at * 1e9) as u64 {
                fault_ns = Some(ns);
                println!("fanout: the fault at {:.3} s: {}", (ns - first) as f64 / 1e9, f.cmd);
                match std::process::Command::new("sh").arg("-c").arg(&f.cmd).stdin(std::process::Stdio::null()).spawn()
                {
                    Ok(c) => fault_child = Some(c),
                    Err(e) => break 'run Err(format!("--fault-cmd: cannot start sh: {e}")),
                }
            }
        }
        if deliveries == expected && echoed == m {
            break 'run Ok(());
        }
        let timeout = if rate > 0.0 && seq < m && seq - echoed < window {
            let due = t_pub + (seq as f64 * interval_ns) as u64;
            Duration::from_nanos(due.saturating_sub(ctx.net.now_ns())).min(TICK)
        } else {
            TICK
        };
        let evs = match ctx.poll(timeout) {
            Ok(e) => e,
            Err(e) => break 'run Err(e),
        };
        let before = (deliveries, echoed);
        for ev in &evs {
            match ev {
                Ev::Open(_) => {}
                Ev::Closed(id, info) => break 'run Err(on_unexpected(index[*id].unwrap_or(0), info)),
                Ev::Text(id, t, text) => {
                    let who = index[*id].unwrap_or(0);
                    match classify(text) {
                        Frame::Chat { message } => {
                            let Some((s, ns)) = parse_two(&message) else {
                                break 'run Err(format!("unexpected chat message {message:?}"));
                            };
                            if who == SENDER {
                                if s != echoed {
                                    break 'run Err(format!("the sender's echo: expected message {echoed}, got {s}"));
                                }
                                echoed += 1;
                            } else {
                                let want = next_seq[who];
                                if s != want {
                                    let what = if s > want { "lost" } else { "out of order or duplicated" };
                                    break 'run Err(format!(
                                        "subscriber {who}: expected message {want}, got {s} (message {what})"
                                    ));
                                }
                                if ns != send_ns[s as usize] {
                                    break 'run Err(format!(
                                        "subscriber {who}: message {s} carries the wrong send time"
                                    ));
                                }
                                next_seq[who] += 1;
                                latencies.push(t.saturating_sub(ns));
                                by_group[group_of[who]].push((ns, t.saturating_sub(ns)));
                                deliveries += 1;
                                last_delivery = last_delivery.max(*t);
                            }
                        }
                        Frame::Error(e) => break 'run Err(format!("error frame: {e}")),
                        _ => {}
                    }
                }
            }
        }
        ctx.recycle(evs);
        if (deliveries, echoed) != before {
            last_progress = Instant::now();
        } else if last_progress.elapsed() > ctx.stall {
            break 'run Err(format!(
                "stalled: {deliveries} of {expected} deliveries, {echoed}/{seq} echoes; nothing for {} s",
                ctx.stall.as_secs()
            ));
        }
        if last_print.elapsed() > Duration::from_secs(5) {
            last_print = Instant::now();
            println!("  {deliveries}/{expected} deliveries, {seq}/{m} sent");
        }
    };
    let cpu = ctx.cpu_us().zip(cpu0).map(|(b, a)| b - a);
    let set1 = cpuset.as_ref().map(|c| (c.sample(), crate::machine_busy_us(), crate::own_cpu_us(), Instant::now()));
    let pub_secs = (last_delivery.saturating_sub(first_send.unwrap_or(t_pub))) as f64 / 1e9;
    let per_sec = if pub_secs > 0.0 { deliveries as f64 / pub_secs } else { 0.0 };
    let (p50, p99, max) = percentiles_ms(&mut latencies);
    let cpu_per = cpu.filter(|_| deliveries > 0).map(|c| round3(c as f64 / deliveries as f64));
    println!(
        "fanout: {deliveries}/{expected} deliveries in {pub_secs:.3} s: {per_sec:.0} deliveries/s; latency p50 {} ms, p99 {} ms, max {} ms",
        fmt_opt(p50),
        fmt_opt(p99),
        fmt_opt(max)
    );
    println!("fanout: server CPU {} µs while publishing: {} µs per delivery", fmt_opt(cpu), fmt_opt(cpu_per));
    rep.set("messages_sent", seq);
    rep.set("deliveries", deliveries);
    rep.set("publish_seconds", round3(pub_secs));
    rep.set("deliveries_per_sec", round3(per_sec));
    rep.opt("latency_p50_ms", p50);
    rep.opt("latency_p99_ms", p99);
    rep.opt("latency_max_ms", max);
    rep.opt("cpu_publish_us", cpu);
    rep.opt("cpu_us_per_delivery", cpu_per);
    rep.opt("rss_after_kib", ctx.rss());
    if let (Some((s0, busy0, own0, w0)), Some((s1, busy1, own1, w1))) = (set0, set1) {
        let all = cpu_set_figures(rep, &s0, &s1, deliveries, seq);
        // Everything else on the machine while publishing: not these processes, not the
        // load generator.
        let other = busy1
            .zip(busy0)
            .zip(all)
            .map(|((b1, b0), all)| b1.saturating_sub(b0) as f64 - all as f64 - own1.saturating_sub(own0) as f64);
        let cpus = std::thread::available_parallelism().map_or(1, |n| n.get()) as f64;
        let wall_us = w1.duration_since(w0).as_secs_f64() * 1e6;
        rep.opt("other_cpu_pct_publish", other.map(|o| round3((o.max(0.0) / (wall_us * cpus) * 100.0).min(100.0))));
    }
    let first = first_send.unwrap_or(t_pub);
    group_figures(rep, &groups, &mut by_group);
    // The windows and the timeline: of the subscribers on other nodes than the sender's
    // when there are any (cross-node delivery), else of all.
    let mut picked: Vec<(u64, u64)> = Vec::new();
    let mut local: Vec<(u64, u64)> = Vec::new();
    let any_remote = groups.iter().any(|g| g.remote);
    for (g, samples) in by_group.iter().enumerate() {
        let to = if groups[g].remote || !any_remote { &mut picked } else { &mut local };
        to.extend(samples.iter().map(|&(s, l)| (s.saturating_sub(first), l)));
    }
    if warmup > 0 {
        rep.set("warmup_seconds", round3(warmup as f64 / 1e9));
        if any_remote {
            window_figures(rep, "warmup_remote", &picked, 0, warmup);
            window_figures(rep, "steady_remote", &picked, warmup, u64::MAX);
            if !local.is_empty() {
                window_figures(rep, "warmup_local", &local, 0, warmup);
                window_figures(rep, "steady_local", &local, warmup, u64::MAX);
            }
        }
        let all: Vec<(u64, u64)> = picked.iter().chain(&local).copied().collect();
        window_figures(rep, "warmup_all", &all, 0, warmup);
        window_figures(rep, "steady_all", &all, warmup, u64::MAX);
    }
    if let Some(f) = &fault {
        let status = finish_fault(&mut fault_child);
        rep.opt("fault_cmd_status", status.clone());
        if let Some(e) = status.filter(|s| s != "exit 0") {
            println!("fanout: the fault command ended with {e}");
        }
        match fault_ns {
            None => rep.errors.push(format!("the fault was not started (--fault-at {} s is past the last send)", f.at)),
            Some(at) => fault_figures(rep, f, at - first, warmup, timeline_ns, &mut picked),
        }
    }
    if want_timeline {
        rep.set("latency_timeline", timeline(&mut picked, timeline_ns));
        rep.set("timeline_ms", round3(timeline_ns as f64 / 1e6));
    }
    result?;
    let mut all = sub_ids;
    all.push(sender);
    close_all(ctx, all, Duration::from_secs(10))
}

/// The subscribers on one server (`--subscriber-url`'s list, or `--url`).
struct Group {
    url: String,
    addr: SocketAddr,
    host: String,
    base: String,
    /// Another server than the sender's (`--url`): cross-node delivery.
    remote: bool,
    size: usize,
}

/// `--fault-at S --fault-cmd CMD [--fault-window W] [--degraded-ms D]`: `sh -c CMD` once
/// S seconds after the first send; latency by send time before it (after the warm-up, up
/// to 0.5 s before), from then until W seconds after it, and later.
struct Fault {
    at: f64,
    cmd: String,
    window: f64,
    degraded_ms: f64,
}

impl Fault {
    fn parse(a: &Args) -> Result<Option<Fault>, String> {
        let cmd = a.str("fault-cmd");
        let at = a.str("fault-at");
        let window: f64 = a.num("fault-window", 3.0)?;
        let degraded_ms: f64 = a.num("degraded-ms", 20.0)?;
        match (at, cmd) {
            (None, None) => Ok(None),
            (Some(_), Some(cmd)) => {
                Ok(Some(Fault { at: a.required("fault-at")?, cmd: cmd.to_string(), window, degraded_ms }))
            }
            _ => Err("usage: --fault-at and --fault-cmd go together".into()),
        }
    }
}

/// Waits (up to 60 s) for the fault command; its status as text.
fn finish_fault(child: &mut Option<std::process::Child>) -> Option<String> {
    let c = child.as_mut()?;
    let until = Instant::now() + Duration::from_secs(60);
    loop {
        match c.try_wait() {
            Ok(Some(st)) => return Some(st.code().map_or_else(|| format!("{st}"), |c| format!("exit {c}"))),
            Ok(None) if Instant::now() < until => std::thread::sleep(Duration::from_millis(20)),
            Ok(None) => {
                let _ = c.kill();
                let _ = c.wait();
                return Some("killed after 60 s".into());
            }
            Err(e) => return Some(format!("wait: {e}")),
        }
    }
}

/// p50/p99/max and count of the latencies of `samples` (send offset, latency) whose send
/// offset is in `[from, to)`, as `{prefix}_latency_p50_ms`, ... and `{prefix}_deliveries`.
fn window_figures(rep: &mut Report, prefix: &str, samples: &[(u64, u64)], from: u64, to: u64) -> Option<f64> {
    let mut lat: Vec<u64> = samples.iter().filter(|(s, _)| *s >= from && *s < to).map(|(_, l)| *l).collect();
    rep.set(&format!("{prefix}_deliveries"), lat.len());
    let (p50, p99, max) = percentiles_ms(&mut lat);
    rep.opt(&format!("{prefix}_latency_p50_ms"), p50);
    rep.opt(&format!("{prefix}_latency_p99_ms"), p99);
    rep.opt(&format!("{prefix}_latency_max_ms"), max);
    println!(
        "fanout: {prefix:>12}: {} deliveries, latency p50 {} ms, p99 {} ms, max {} ms",
        lat.len(),
        fmt_opt(p50),
        fmt_opt(p99),
        fmt_opt(max)
    );
    p99
}

/// See `fault_figures`: 0.5 s, in ns.
const BEFORE_FAULT_MARGIN: u64 = 500_000_000;

fn fault_figures(rep: &mut Report, f: &Fault, at: u64, warmup: u64, bucket: u64, samples: &mut [(u64, u64)]) {
    rep.set("fault_at_s", round3(at as f64 / 1e9));
    rep.set("fault_cmd", f.cmd.as_str());
    rep.set("fault_window_s", f.window);
    let w = (f.window * 1e9) as u64;
    // Messages sent just before the fault may be in flight when it strikes: the window
    // after it starts BEFORE_FAULT_MARGIN earlier, "before" is the steady state (after
    // --warmup-seconds).
    let from = at.saturating_sub(BEFORE_FAULT_MARGIN);
    let before_p99 = window_figures(rep, "before_fault", samples, warmup.min(from), from);
    window_figures(rep, "after_fault", samples, from, at + w);
    window_figures(rep, "later", samples, at + w, u64::MAX);
    // Degraded: from the fault until the start of the first second (CALM_BUCKETS timeline
    // buckets in a row, by send time) whose every bucket has its p99 under --degraded-ms
    // or twice the p99 before the fault, whichever is higher (on a busy machine the
    // steady state's p99 is above the fixed bound already); one noisy bucket later on
    // does not count. Without such a second: until the end, and "recovered": false.
    let threshold = f.degraded_ms.max(2.0 * before_p99.unwrap_or(0.0));
    let bucket = bucket.max(1);
    samples.sort_unstable_by_key(|s| s.0);
    let calm_needed = (1_000_000_000 / bucket).max(1);
    let (mut calm_from, mut calm, mut recovered_at, mut last_end) = (None, 0u64, None, at);
    for chunk in samples.chunk_by(|a, b| a.0 / bucket == b.0 / bucket) {
        let start = chunk[0].0 / bucket * bucket;
        last_end = start + bucket;
        if last_end <= at {
            continue;
        }
        let mut lat: Vec<u64> = chunk.iter().map(|s| s.1).collect();
        if percentiles_ms(&mut lat).1.is_some_and(|p99| p99 > threshold) {
            (calm_from, calm) = (None, 0);
        } else {
            calm_from.get_or_insert(start);
            calm += 1;
            if calm >= calm_needed {
                recovered_at = calm_from;
                break;
            }
        }
    }
    let secs = recovered_at.unwrap_or(last_end).saturating_sub(at) as f64 / 1e9;
    rep.set("degraded_ms", round3(threshold));
    rep.set("degraded_seconds", round3(secs));
    rep.set("recovered", recovered_at.is_some());
    println!(
        "fanout: p99 above {} ms for {secs:.3} s after the fault (timeline buckets){}",
        round3(threshold),
        if recovered_at.is_some() { "" } else { ", to the end: not recovered" }
    );
}

/// `[[bucket start s, deliveries, p50, p99, max], ...]` by send offset.
fn timeline(samples: &mut [(u64, u64)], bucket: u64) -> Value {
    let bucket = bucket.max(1);
    samples.sort_unstable_by_key(|s| s.0);
    let rows: Vec<Value> = samples
        .chunk_by(|a, b| a.0 / bucket == b.0 / bucket)
        .map(|chunk| {
            let mut lat: Vec<u64> = chunk.iter().map(|s| s.1).collect();
            let (p50, p99, max) = percentiles_ms(&mut lat);
            json!([round3((chunk[0].0 / bucket * bucket) as f64 / 1e9), chunk.len(), p50, p99, max])
        })
        .collect();
    Value::Array(rows)
}

/// Per group: its server, size, deliveries and latency; with a group on another server
/// than the sender's, the same over all such groups as `remote_*`.
fn group_figures(rep: &mut Report, groups: &[Group], by_group: &mut [Vec<(u64, u64)>]) {
    let mut rows = Vec::new();
    let mut remote: Vec<u64> = Vec::new();
    for (g, samples) in by_group.iter().enumerate() {
        let mut lat: Vec<u64> = samples.iter().map(|s| s.1).collect();
        if groups[g].remote {
            remote.extend(&lat);
        }
        let (p50, p99, max) = percentiles_ms(&mut lat);
        rows.push(json!({
            "url": groups[g].url, "remote": groups[g].remote, "subscribers": groups[g].size,
            "deliveries": lat.len(), "latency_p50_ms": p50, "latency_p99_ms": p99, "latency_max_ms": max,
        }));
        if groups.len() > 1 {
            println!(
                "fanout: {} subscribers on {}{}: latency p50 {} ms, p99 {} ms, max {} ms",
                groups[g].size,
                groups[g].url,
                if groups[g].remote { "" } else { " (the sender's)" },
                fmt_opt(p50),
                fmt_opt(p99),
                fmt_opt(max)
            );
        }
    }
    rep.set("groups", Value::Array(rows));
    if groups.iter().any(|g| g.remote) {
        rep.set("remote_deliveries", remote.len());
        let (p50, p99, max) = percentiles_ms(&mut remote);
        rep.opt("remote_latency_p50_ms", p50);
        rep.opt("remote_latency_p99_ms", p99);
        rep.opt("remote_latency_max_ms", max);
    }
}

/// `--cpu`/`--cpu-tree`: each named process's CPU while publishing, their sum (returned;
/// `None` when one is gone), and the sum per delivery and per message sent.
fn cpu_set_figures(
    rep: &mut Report,
    s0: &[(String, Option<u64>)],
    s1: &[(String, Option<u64>)],
    deliveries: u64,
    sent: u64,
) -> Option<u64> {
    let mut by = serde_json::Map::new();
    let mut total = Some(0u64);
    for ((name, a), (_, b)) in s0.iter().zip(s1) {
        let d = a.zip(*b).map(|(a, b)| b.saturating_sub(a));
        total = total.zip(d).map(|(t, d)| t + d);
        by.insert(name.clone(), d.map_or(Value::Null, Into::into));
    }
    let parts: Vec<String> = by.iter().map(|(k, v)| format!("{k} {v}")).collect();
    println!("fanout: CPU while publishing (µs): {}; all {}", parts.join(", "), fmt_opt(total));
    rep.set("cpu_publish_us_by", Value::Object(by));
    rep.opt("all_cpu_publish_us", total);
    rep.opt("all_cpu_us_per_delivery", total.filter(|_| deliveries > 0).map(|t| round3(t as f64 / deliveries as f64)));
    rep.opt("all_cpu_us_per_message", total.filter(|_| sent > 0).map(|t| round3(t as f64 / sent as f64)));
    total
}

// ------------------------------------------------------------------------------- chat

pub fn chat(ctx: &mut Ctx, a: &Args, rep: &mut Report) -> Result<(), String> {
    let k: usize = a.required("pairs")?;
    let rate: f64 = a.num("rate", 0.0)?;
    let secs: f64 = a.required("seconds")?;
    let users = 2 * k;
    ctx.budget(users)?;
    rep.set("pairs", k);
    rep.set("rate", rate);
    rep.set("seconds", secs);
    let tag = ctx.tag.clone();
    println!(
        "chat: {k} pairs (rooms pair-{{k}}-{tag}), closed loop{} for {secs} s",
        if rate > 0.0 { format!(" paced to {rate} messages/s in total") } else { " at full speed".to_string() }
    );
    let ids = open_all(
        ctx,
        "chat user",
        users,
        |c, u| c.path(&format!("pair-{}-{}", u / 2, c.tag), u as u64 + 1),
        None,
        None,
    )?;
    let mut index: Vec<Option<usize>> = Vec::new();
    for (u, id) in ids.iter().enumerate() {
        *slot(&mut index, *id) = Some(u);
    }
    // Let each pair's user_join arrive before the clock starts.
    let until = Instant::now() + Duration::from_millis(300);
    while Instant::now() < until {
        let evs = ctx.poll(TICK)?;
        for ev in &evs {
            if let Ev::Closed(id, info) = ev {
                return Err(format!("user {}: {}", index[*id].unwrap_or(0), describe(info)));
            }
        }
        ctx.recycle(evs);
    }

    struct U {
        sent: u64,
        waiting: Option<u64>,
        next_at: u64,
        from_partner: u64,
    }
    let interval = if rate > 0.0 { (users as f64 * 1e9 / rate) as u64 } else { 0 };
    let t0 = ctx.net.now_ns();
    let mut st: Vec<U> = (0..users)
        .map(|_| U { sent: 0, waiting: None, next_at: t0 + ctx.net.rng.range(0, interval.max(1)), from_partner: 0 })
        .collect();
    let cpu0 = ctx.cpu_us();
    let stop_at = t0 + (secs * 1e9) as u64;
    let mut rtts: Vec<u64> = Vec::new();
    let mut done = 0u64;
    let mut last_echo = t0;
    let mut last_progress = Instant::now();
    let mut stopped_at: Option<Instant> = None;
    let mut text = String::with_capacity(64);
    let result: Result<(), String> = 'run: loop {
        let now = ctx.net.now_ns();
        let sending = now < stop_at;
        if sending {
            for (u, s) in st.iter_mut().enumerate() {
                if s.waiting.is_none() && now >= s.next_at {
                    let ns = ctx.net.now_ns();
                    text.clear();
                    use std::fmt::Write;
                    let _ = write!(text, r#"{{"message": "{u} {} {ns}"}}"#, s.sent);
                    ctx.net.send_text(ids[u], &text);
                    s.waiting = Some(s.sent);
                    s.sent += 1;
                    s.next_at = if interval > 0 { s.next_at + interval } else { 0 };
                }
            }
        } else {
            let stopped = *stopped_at.get_or_insert_with(Instant::now);
            let complete = (0..users).all(|u| st[u].waiting.is_none() && st[u ^ 1].from_partner == st[u].sent);
            if complete {
                break 'run Ok(());
            }
            if stopped.elapsed() > Duration::from_secs(10).max(ctx.stall / 3) {
                let missing_echo = st.iter().filter(|s| s.waiting.is_some()).count();
                let missing_partner: u64 = (0..users).map(|u| st[u].sent - st[u ^ 1].from_partner).sum();
                break 'run Err(format!(
                    "messages missing after the run: {missing_echo} echoes, {missing_partner} partner deliveries"
                ));
            }
        }
        let mut timeout = TICK;
        if sending && interval > 0 {
            let due = st.iter().filter(|s| s.waiting.is_none()).map(|s| s.next_at).min().unwrap_or(u64::MAX);
            timeout = Duration::from_nanos(due.saturating_sub(ctx.net.now_ns())).min(TICK);
        }
        let evs = match ctx.poll(timeout) {
            Ok(e) => e,
            Err(e) => break 'run Err(e),
        };
        let before = done;
        for ev in &evs {
            match ev {
                Ev::Open(_) => {}
                Ev::Closed(id, info) => {
                    break 'run Err(format!("user {}: {}", index[*id].unwrap_or(0), describe(info)));
                }
                Ev::Text(id, t, frame) => {
                    let u = index[*id].unwrap_or(0);
                    match classify(frame) {
                        Frame::Chat { message } => {
                            let mut it = message.split(' ').map(|x| x.parse::<u64>().ok());
                            let (Some(Some(from)), Some(Some(seq)), Some(Some(ns))) = (it.next(), it.next(), it.next())
                            else {
                                break 'run Err(format!("user {u}: unexpected chat message {message:?}"));
                            };
                            let from = from as usize;
                            if from == u {
                                if st[u].waiting != Some(seq) {
                                    break 'run Err(format!(
                                        "user {u}: echo of message {seq}, waiting for {:?}",
                                        st[u].waiting
                                    ));
                                }
                                st[u].waiting = None;
                                rtts.push(t.saturating_sub(ns));
                                done += 1;
                                last_echo = last_echo.max(*t);
                            } else if from == u ^ 1 {
                                if st[u].from_partner != seq {
                                    break 'run Err(format!(
                                        "user {u}: expected partner's message {}, got {seq}",
                                        st[u].from_partner
                                    ));
                                }
                                st[u].from_partner += 1;
                            } else {
                                break 'run Err(format!("user {u}: message from user {from}, not in this room"));
                            }
                        }
                        Frame::Error(e) => break 'run Err(format!("user {u}: error frame: {e}")),
                        _ => {}
                    }
                }
            }
        }
        ctx.recycle(evs);
        if done != before {
            last_progress = Instant::now();
        } else if last_progress.elapsed() > ctx.stall {
            break 'run Err(format!("stalled: no echo for {} s", ctx.stall.as_secs()));
        }
    };
    let cpu = ctx.cpu_us().zip(cpu0).map(|(b, a)| b - a);
    let elapsed = (last_echo.saturating_sub(t0)) as f64 / 1e9;
    let per_sec = if elapsed > 0.0 { done as f64 / elapsed } else { 0.0 };
    let (p50, p99, max) = percentiles_ms(&mut rtts);
    let cpu_per = cpu.filter(|_| done > 0).map(|c| round3(c as f64 / done as f64));
    let per_cpu_sec = cpu.filter(|c| *c > 0).map(|c| round3(done as f64 / (c as f64 / 1e6)));
    println!(
        "chat: {done} messages stored and delivered in {elapsed:.3} s: {per_sec:.0} messages/s; round trip p50 {} ms, p99 {} ms, max {} ms",
        fmt_opt(p50),
        fmt_opt(p99),
        fmt_opt(max)
    );
    println!(
        "chat: server CPU {} µs: {} µs per message, {} messages per CPU second",
        fmt_opt(cpu),
        fmt_opt(cpu_per),
        fmt_opt(per_cpu_sec)
    );
    rep.set("messages", done);
    rep.set("elapsed_seconds", round3(elapsed));
    rep.set("messages_per_sec", round3(per_sec));
    rep.opt("rtt_p50_ms", p50);
    rep.opt("rtt_p99_ms", p99);
    rep.opt("rtt_max_ms", max);
    rep.opt("cpu_us", cpu);
    rep.opt("cpu_us_per_message", cpu_per);
    rep.opt("messages_per_cpu_sec", per_cpu_sec);
    rep.opt("rss_kib", ctx.rss());
    result?;
    close_all(ctx, ids, Duration::from_secs(10))
}

// ------------------------------------------------------------------------------- soak

pub fn soak(ctx: &mut Ctx, a: &Args, rep: &mut Report) -> Result<(), String> {
    let n: usize = a.required("connections")?;
    let secs: f64 = a.required("seconds")?;
    let rooms: usize = a.num("rooms", 200usize)?.max(1);
    let msg_interval: f64 = a.num("msg-interval", 10.0)?;
    let sample_every: f64 = a.num("sample-seconds", 10.0)?;
    let life_min: f64 = a.num("min-life", 1.0)?;
    let life_max: f64 = a.num("max-life", 20.0)?;
    let db = a.str("db").map(str::to_string);
    ctx.budget(n)?;
    let max_fail_arg: Option<u64> =
        a.str("max-failures").map(|v| v.parse().map_err(|_| format!("usage: --max-failures: {v}"))).transpose()?;
    rep.set("connections", n);
    rep.set("seconds", secs);
    rep.set("rooms", rooms);
    rep.set("msg_interval_seconds", msg_interval);
    rep.opt("db", db.clone());
    let tag = ctx.tag.clone();
    println!(
        "soak: {n} connections living {life_min}-{life_max} s each, in {rooms} rooms (soak-{{r}}-{tag}), one message per connection every ~{msg_interval} s, for {secs} s"
    );

    struct C {
        user: u64,
        up: bool,
        die_at: u64,
        next_msg: u64,
        sent: u64,
        echoed: u64,
        closing: bool,
        close_by: u64,
        close_sent: bool,
    }
    let sample = |ctx: &Ctx, t: f64, live: usize, sent: u64| -> Value {
        json!({
            "t": round3(t),
            "rss_kib": ctx.rss(),
            "fds": ctx.fds(),
            "db_bytes": db.as_deref().and_then(crate::procstat::db_bytes),
            "open_connections": live,
            "messages_sent": sent,
        })
    };
    let print_sample = |s: &Value| {
        println!(
            "soak: t={:>6}s  rss={} KiB  fds={}  db={} bytes  open={}  sent={}",
            s["t"], s["rss_kib"], s["fds"], s["db_bytes"], s["open_connections"], s["messages_sent"]
        );
    };
    let mut samples = vec![sample(ctx, 0.0, 0, 0)];
    print_sample(&samples[0]);

    let sec = |x: f64| (x * 1e9) as u64;
    let t0 = ctx.net.now_ns();
    let end = t0 + sec(secs);
    let mut conns: Vec<Option<C>> = Vec::new();
    let mut next_user = 1u64;
    let (mut live, mut inflight) = (0usize, 0usize);
    let (
        mut opened,
        mut established,
        mut closed_ok,
        mut sent_total,
        mut echoed_total,
        mut lost,
        mut received_others,
        mut error_frames,
    ) = (0u64, 0u64, 0u64, 0u64, 0u64, 0u64, 0u64, 0u64);
    let mut failures = Reasons::default();
    let mut next_sample = t0 + sec(sample_every);
    let mut last_scan = 0u64;
    let mut text = String::with_capacity(96);
    let mut draining = false;
    let mut drain_deadline = u64::MAX;
    loop {
        let now = ctx.net.now_ns();
        if !draining && now >= end {
            draining = true;
            drain_deadline = now + sec(15.0);
            let t = (now - t0) as f64 / 1e9;
            if samples.len() < 2 || samples.last().and_then(|s| s["t"].as_f64()).is_some_and(|last| t - last > 1.0) {
                let s = sample(ctx, t, live, sent_total);
                print_sample(&s);
                samples.push(s);
            }
            for c in conns.iter_mut().flatten() {
                if !c.closing {
                    c.closing = true;
                    c.close_by = now + sec(5.0);
                }
            }
        }
        if draining && (ctx.net.len() == 0 || now > drain_deadline) {
            break;
        }
        // Keep N connections (open or opening).
        // (Closing connections hold a descriptor until the server answers, so also stay
        // under this process's descriptor limit.)
        while !draining && live < n && inflight < ctx.concurrency && ctx.net.len() + 64 < ctx.nofile {
            let user = next_user;
            next_user += 1;
            let r = ctx.net.rng.range(0, rooms as u64);
            let path = ctx.path(&format!("soak-{r}-{tag}"), user);
            opened += 1;
            match ctx.net.connect(&path) {
                Ok(id) => {
                    *slot(&mut conns, id) = Some(C {
                        user,
                        up: false,
                        die_at: 0,
                        next_msg: 0,
                        sent: 0,
                        echoed: 0,
                        closing: false,
                        close_by: 0,
                        close_sent: false,
                    });
                    live += 1;
                    inflight += 1;
                }
                Err(e) => failures.add(format!("connect: {e}")),
            }
        }
        // Messages due, lifetimes over, closes that waited for their echoes.
        if now - last_scan >= 20_000_000 || draining {
            last_scan = now;
            for (id, c) in conns.iter_mut().enumerate() {
                let Some(c) = c.as_mut() else { continue };
                if !c.up || c.close_sent {
                    continue;
                }
                if !c.closing && now >= c.die_at {
                    c.closing = true;
                    c.close_by = now + sec(5.0);
                }
                if c.closing {
                    if c.sent == c.echoed || now >= c.close_by {
                        if c.sent > c.echoed {
                            lost += c.sent - c.echoed;
                            failures.add("echo missing when the connection closed".into());
                        }
                        c.close_sent = true;
                        live -= 1;
                        ctx.net.close(id, 1000);
                    }
                    continue;
                }
                if now >= c.next_msg {
                    text.clear();
                    use std::fmt::Write;
                    let _ = write!(text, r#"{{"message": "{tag} {} {}"}}"#, c.user, c.sent);
                    c.sent += 1;
                    sent_total += 1;
                    c.next_msg = now + sec(msg_interval * (0.5 + ctx.net.rng.unit()));
                    ctx.net.send_text(id, &text);
                }
            }
        }
        let evs = ctx.poll(TICK)?;
        for ev in &evs {
            match ev {
                Ev::Open(_) => {}
                Ev::Text(id, t, frame) => {
                    let Some(c) = conns.get_mut(*id).and_then(|c| c.as_mut()) else { continue };
                    match classify(frame) {
                        Frame::UsersList { .. } if !c.up => {
                            c.up = true;
                            inflight -= 1;
                            established += 1;
                            let life = life_min + (life_max - life_min) * ctx.net.rng.unit();
                            c.die_at = t + sec(life);
                            c.next_msg = t + sec(msg_interval * ctx.net.rng.unit());
                        }
                        Frame::Chat { message } => {
                            let mut it = message.split(' ');
                            let mine = it.next() == Some(tag.as_str())
                                && it.next().and_then(|u| u.parse().ok()) == Some(c.user);
                            if mine {
                                let seq: Option<u64> = it.next().and_then(|s| s.parse().ok());
                                if seq != Some(c.echoed) {
                                    failures.add(format!("echo out of order: expected {}, got {seq:?}", c.echoed));
                                }
                                c.echoed += 1;
                                echoed_total += 1;
                            } else {
                                received_others += 1;
                            }
                        }
                        Frame::Error(e) => {
                            error_frames += 1;
                            failures.add(format!("error frame: {e}"));
                        }
                        _ => {}
                    }
                }
                Ev::Closed(id, info) => {
                    let Some(c) = conns.get_mut(*id).and_then(|c| c.take()) else { continue };
                    if c.close_sent {
                        closed_ok += 1;
                        continue;
                    }
                    live -= 1;
                    if !c.up {
                        inflight -= 1;
                        failures.add(describe(info));
                    } else {
                        failures.add(format!("open connection dropped: {}", describe(info)));
                        lost += c.sent - c.echoed;
                    }
                }
            }
        }
        ctx.recycle(evs);
        let now = ctx.net.now_ns();
        if !draining && now >= next_sample {
            next_sample += sec(sample_every);
            let s = sample(ctx, (now - t0) as f64 / 1e9, live, sent_total);
            print_sample(&s);
            samples.push(s);
        }
    }
    // After everything closed: does the server give its descriptors and memory back?
    let settle_until = Instant::now() + Duration::from_secs(2);
    while Instant::now() < settle_until {
        let evs = ctx.poll(Duration::from_millis(50))?;
        ctx.recycle(evs);
    }
    let after = sample(ctx, ctx.net.now_ns().saturating_sub(t0) as f64 / 1e9, 0, sent_total);
    println!(
        "soak: after closing all: rss={} KiB fds={} db={} bytes",
        after["rss_kib"], after["fds"], after["db_bytes"]
    );
    // samples[0] is the idle server before the run; "first" is the first one under load.
    let baseline = samples[0].clone();
    let first = samples.get(1).cloned().unwrap_or(Value::Null);
    let last = samples.last().cloned().unwrap_or(Value::Null);
    println!(
        "soak: first vs last sample under load: rss {} -> {} KiB, fds {} -> {}, db {} -> {} bytes",
        first["rss_kib"], last["rss_kib"], first["fds"], last["fds"], first["db_bytes"], last["db_bytes"]
    );
    println!(
        "soak: {opened} connections opened, {established} established, {closed_ok} closed by us; {sent_total} messages sent, {echoed_total} echoed, {lost} lost; {received_others} messages from others received"
    );
    rep.set("connections_opened", opened);
    rep.set("connections_established", established);
    rep.set("connections_closed_by_us", closed_ok);
    rep.set("messages_sent", sent_total);
    rep.set("messages_echoed", echoed_total);
    rep.set("messages_lost", lost);
    rep.set("messages_from_others", received_others);
    rep.set("error_frames", error_frames);
    rep.set("rss_before_kib", baseline["rss_kib"].clone());
    rep.set("fds_before", baseline["fds"].clone());
    rep.set("db_bytes_before", baseline["db_bytes"].clone());
    rep.set("rss_first_kib", first["rss_kib"].clone());
    rep.set("rss_last_kib", last["rss_kib"].clone());
    rep.set("rss_after_close_kib", after["rss_kib"].clone());
    rep.set("fds_first", first["fds"].clone());
    rep.set("fds_last", last["fds"].clone());
    rep.set("fds_after_close", after["fds"].clone());
    rep.set("db_bytes_first", first["db_bytes"].clone());
    rep.set("db_bytes_last", last["db_bytes"].clone());
    rep.set("samples", Value::Array(samples));
    rep.set("failure_reasons", failures.json());
    let max_fail = max_fail_arg.unwrap_or((opened / 1000).max(5));
    let conn_failures = failures
        .0
        .iter()
        .filter(|(r, _)| !r.starts_with("echo") && !r.starts_with("error frame"))
        .map(|(_, n)| *n)
        .sum::<u64>();
    rep.set("connection_failures", conn_failures);
    if lost > 0 {
        rep.errors.push(format!("{lost} messages lost: {}", failures.summary()));
    }
    if conn_failures > max_fail {
        rep.errors.push(format!("{conn_failures} connection failures (more than {max_fail}): {}", failures.summary()));
    }
    if error_frames > 0 || failures.0.keys().any(|r| r.starts_with("echo out of order")) {
        rep.errors.push(format!("protocol errors: {}", failures.summary()));
    }
    Ok(())
}

// ------------------------------------------------------------------------------ storm

/// The servers send at most this many messages of history on connect (switchboard's
/// `SWITCHBOARD_HISTORY_LIMIT` default, the peers' fixed limit).
const HISTORY_CAP: usize = 50;
/// Filler that gives a stored message a chat-like length (about 60 bytes in all).
const STORM_FILLER: &str = "the quick brown fox jumps over the lazy dog";

/// `storm {r} {k} {tag} ...`: the room and the message's place in its history.
fn storm_seq(message: &str) -> Option<(usize, usize, &str)> {
    let mut it = message.split(' ');
    if it.next() != Some("storm") {
        return None;
    }
    let r = it.next()?.parse().ok()?;
    let k = it.next()?.parse().ok()?;
    Some((r, k, it.next().unwrap_or("")))
}

pub fn storm(ctx: &mut Ctx, a: &Args, rep: &mut Report) -> Result<(), String> {
    let n: usize = a.required("connections")?;
    let rooms: usize = a.required("rooms")?;
    let m: usize = a.required("history")?;
    let phase = a.str("phase").unwrap_or("all").to_string();
    let history_wait: f64 = a.num("history-wait", 5.0)?;
    let max_fail: usize = a.num("max-failures", (n / 1000).max(5))?;
    if !["all", "seed", "reconnect"].contains(&phase.as_str()) {
        return Err(format!("usage: --phase must be all, seed or reconnect (got {phase:?})"));
    }
    if rooms == 0 || n < rooms {
        return Err(format!("usage: --rooms must be between 1 and --connections (got {rooms})"));
    }
    if m > HISTORY_CAP {
        return Err(format!(
            "usage: --history {m}: the servers send at most {HISTORY_CAP} messages of history on connect"
        ));
    }
    ctx.budget(if phase == "seed" { rooms } else { n })?;
    rep.set("phase", phase.as_str());
    rep.set("connections", n);
    rep.set("rooms", rooms);
    rep.set("history", m);
    rep.set("concurrency", ctx.concurrency);
    let room_name = |r: usize| format!("storm-{r}");

    if phase != "reconnect" {
        storm_seed(ctx, rep, n, rooms, m)?;
    }
    if phase == "seed" {
        return Ok(());
    }
    if phase == "all" {
        // No restart: the same server process, whose caches (SQLite's page cache, its
        // statement cache, allocator arenas) are warm from the seeding.
        rep.set("restarted", false);
        println!("storm: no restart (--phase all): the same server process with warm caches reconnects everyone");
        let until = Instant::now() + Duration::from_millis(500);
        while Instant::now() < until {
            let evs = ctx.poll(TICK)?;
            ctx.recycle(evs);
        }
    } else {
        rep.set("restarted", true);
    }

    // ---- the storm: N clients, client i (user i+1) in room i % R, all at once.
    let age = ctx.proc.as_ref().and_then(|p| p.age_secs()).map(round3);
    rep.opt("server_age_seconds", age);
    let paths: Vec<String> = (0..n).map(|i| ctx.rooms_path(&room_name(i % rooms), i as u64 + 1)).collect();
    println!(
        "storm: {n} clients reconnect at once to {rooms} rooms (storm-{{r}}), each expecting {m} messages of history ({} handshakes in flight){}",
        ctx.concurrency,
        age.map_or(String::new(), |a| format!("; the server process is {a:.1} s old"))
    );

    #[derive(Clone, Copy, PartialEq)]
    enum S {
        Pending,
        Up,
        Done,
        Bad,
    }
    struct C {
        state: S,
        got: usize,
    }
    let mut clients: Vec<C> = (0..n).map(|_| C { state: S::Pending, got: 0 }).collect();
    let mut index: Vec<Option<usize>> = Vec::new();
    let mut reasons = Reasons::default();
    let (mut next, mut inflight, mut up, mut done) = (0usize, 0usize, 0usize, 0usize);
    let (mut failed, mut dropped, mut bad, mut joins, mut extra) = (0usize, 0usize, 0usize, 0u64, 0u64);
    let rss0 = ctx.rss();
    rep.opt("rss_before_kib", rss0);
    let overflows0 = crate::procstat::listen_overflows();
    let cpu0 = ctx.cpu_us();
    let t0 = ctx.net.now_ns();
    let (mut t_last_up, mut t_last_done) = (t0, t0);
    let mut last_progress = Instant::now();
    let mut last_history = Instant::now();
    let mut last_print = Instant::now();
    let abort_at = max_fail.max(n / 10);
    let result: Result<(), String> = 'run: loop {
        while next < n && inflight < ctx.concurrency {
            let i = next;
            next += 1;
            match ctx.net.connect(&paths[i]) {
                Ok(id) => {
                    *slot(&mut index, id) = Some(i);
                    inflight += 1;
                }
                Err(e) => {
                    clients[i].state = S::Bad;
                    failed += 1;
                    reasons.add(format!("connect: {e}"));
                }
            }
        }
        if done + failed + dropped + bad == n {
            break 'run Ok(());
        }
        let evs = match ctx.poll(TICK) {
            Ok(e) => e,
            Err(e) => break 'run Err(e),
        };
        for ev in &evs {
            match ev {
                Ev::Open(_) => {}
                Ev::Text(id, t, text) => {
                    let Some(Some(i)) = index.get(*id).copied() else { continue };
                    let room = i % rooms;
                    let c = &mut clients[i];
                    match classify(text) {
                        Frame::UsersList { .. } if c.state == S::Pending => {
                            inflight -= 1;
                            up += 1;
                            t_last_up = *t;
                            last_progress = Instant::now();
                            // Its history is due from now on.
                            last_history = last_progress;
                            if m == 0 {
                                c.state = S::Done;
                                done += 1;
                                t_last_done = *t;
                            } else {
                                c.state = S::Up;
                            }
                        }
                        _ if c.state == S::Pending => {
                            inflight -= 1;
                            failed += 1;
                            c.state = S::Bad;
                            reasons.add(format!(
                                "first frame is not room_users_list: {}",
                                text.chars().take(120).collect::<String>()
                            ));
                            ctx.net.close(*id, 1000);
                        }
                        Frame::Chat { message } => match c.state {
                            S::Up => {
                                if storm_seq(&message).is_some_and(|(r, k, _)| r == room && k == c.got) {
                                    c.got += 1;
                                    last_progress = Instant::now();
                                    last_history = last_progress;
                                    if c.got == m {
                                        c.state = S::Done;
                                        done += 1;
                                        t_last_done = *t;
                                    }
                                } else {
                                    c.state = S::Bad;
                                    bad += 1;
                                    reasons.add(format!(
                                        "history out of order or from another room: expected \"storm {room} {} ...\" (history frame {} of {m}), got {:?}",
                                        c.got,
                                        c.got + 1,
                                        message.chars().take(60).collect::<String>()
                                    ));
                                }
                            }
                            S::Done => {
                                extra += 1;
                                c.state = S::Bad;
                                done -= 1;
                                bad += 1;
                                reasons.add(format!("more than {m} history frames (nobody sends during the storm)"));
                            }
                            _ => {}
                        },
                        Frame::Join => joins += 1,
                        Frame::Leave => {}
                        Frame::Error(e) => {
                            if c.state == S::Done {
                                done -= 1;
                            }
                            if c.state != S::Bad {
                                bad += 1;
                            }
                            c.state = S::Bad;
                            reasons.add(format!("error frame: {e}"));
                        }
                        _ => {}
                    }
                }
                Ev::Closed(id, info) => {
                    let Some(i) = index.get_mut(*id).and_then(|x| x.take()) else { continue };
                    match clients[i].state {
                        S::Pending => {
                            inflight -= 1;
                            failed += 1;
                            reasons.add(describe(info));
                        }
                        S::Up => {
                            dropped += 1;
                            reasons.add(format!("dropped before its history was complete: {}", describe(info)));
                        }
                        S::Done => {
                            done -= 1;
                            dropped += 1;
                            reasons.add(format!("open connection dropped: {}", describe(info)));
                        }
                        S::Bad => {}
                    }
                    clients[i].state = S::Bad;
                }
            }
        }
        ctx.recycle(evs);
        if failed + dropped > abort_at {
            break 'run Err(format!("{} of {next} connections failed: {}", failed + dropped, reasons.summary()));
        }
        // Everyone connected (or failed): a client still short of its history when no
        // history frame (nor room_users_list) has arrived for --history-wait seconds
        // will not get it.
        if next == n && inflight == 0 && last_history.elapsed().as_secs_f64() > history_wait {
            break 'run Ok(());
        }
        if last_progress.elapsed() > ctx.stall {
            break 'run Err(format!(
                "stalled: {up} of {n} connected, {done} with their full history; nothing for {} s",
                ctx.stall.as_secs()
            ));
        }
        if last_print.elapsed() > Duration::from_secs(2) {
            last_print = Instant::now();
            println!("  {up}/{n} connected, {done}/{n} with their history, {failed} failed");
        }
    };
    let cpu = ctx.cpu_us().zip(cpu0).map(|(b, a)| b.saturating_sub(a));
    let rss_after = ctx.rss();
    let overflows = crate::procstat::listen_overflows().zip(overflows0).map(|(b, a)| b.saturating_sub(a));
    let short: Vec<usize> = clients.iter().filter(|c| c.state == S::Up).map(|c| c.got).collect();
    let storm_secs = t_last_done.saturating_sub(t0) as f64 / 1e9;
    let up_secs = t_last_up.saturating_sub(t0) as f64 / 1e9;
    let rate = if storm_secs > 0.0 { done as f64 / storm_secs } else { 0.0 };
    let cpu_per = cpu.filter(|_| done > 0).map(|c| round3(c as f64 / done as f64));
    println!(
        "storm: {done}/{n} clients back with their full history ({m} messages each) in {storm_secs:.3} s ({rate:.0} reconnects/s); all {up} connected after {up_secs:.3} s"
    );
    println!(
        "storm: server CPU {} µs in that window: {} µs per reconnect; RSS {} KiB before, {} KiB with all back",
        fmt_opt(cpu),
        fmt_opt(cpu_per),
        fmt_opt(rss0),
        fmt_opt(rss_after)
    );
    println!(
        "storm: {failed} connection failures, {dropped} dropped, {bad} with wrong history, {} short of their history; {joins} user_join frames",
        short.len()
    );
    if let Some(o) = overflows.filter(|o| *o > 0) {
        println!("storm: the server's accept queue overflowed {o} times (SYNs dropped and retried after 1 s or more)");
    }
    rep.set("clients_back", done);
    rep.set("connections_established", up);
    rep.set("storm_seconds", round3(storm_secs));
    rep.set("connect_seconds", round3(up_secs));
    rep.set("reconnects_per_sec", round3(rate));
    rep.opt("storm_cpu_us", cpu);
    rep.opt("storm_cpu_seconds", cpu.map(|c| round3(c as f64 / 1e6)));
    rep.opt("cpu_us_per_reconnect", cpu_per);
    rep.opt("rss_after_kib", rss_after);
    rep.opt("listen_overflows", overflows);
    rep.set("connection_failures", failed);
    rep.set("connections_dropped", dropped);
    rep.set("history_errors", bad);
    rep.set("history_extra_frames", extra);
    rep.set("history_short", short.len());
    rep.opt("history_short_min_frames", short.iter().min().copied());
    rep.set("history_frames_expected", n * m);
    rep.set("join_frames", joins);
    rep.set("failure_reasons", reasons.json());
    result?;
    if !short.is_empty() {
        rep.errors.push(format!(
            "{} clients got fewer than {m} history frames (between {} and {}), none for {history_wait} s",
            short.len(),
            short.iter().min().unwrap_or(&0),
            short.iter().max().unwrap_or(&0)
        ));
    }
    if bad > 0 {
        rep.errors.push(format!("{bad} clients got wrong history or an error frame: {}", reasons.summary()));
    }
    if failed + dropped > max_fail {
        rep.errors.push(format!(
            "{} connections failed or dropped (more than {max_fail}): {}",
            failed + dropped,
            reasons.summary()
        ));
    }
    let open: Vec<usize> = index.iter().enumerate().filter(|(_, i)| i.is_some()).map(|(id, _)| id).collect();
    close_all(ctx, open, Duration::from_secs(10))
}

/// The seed: one client per room (user N+1+r) stores M messages `storm {r} {k} {tag} ...`
/// and waits for their echoes, in order. A room that already holds messages fails the
/// run: the reconnect phase expects exactly these M. (Its own loop rather than
/// `open_all`, which would swallow the history that follows `room_users_list`.)
fn storm_seed(ctx: &mut Ctx, rep: &mut Report, n: usize, rooms: usize, m: usize) -> Result<(), String> {
    let tag = ctx.tag.clone();
    println!("storm: seeding {rooms} rooms (storm-{{r}}) with {m} messages each, one client per room");
    let t0 = Instant::now();
    let mut index: Vec<Option<usize>> = Vec::new();
    let mut ids = Vec::with_capacity(rooms);
    let mut up = vec![false; rooms];
    let mut echoed = vec![0usize; rooms];
    let (mut next, mut inflight, mut stored) = (0usize, 0usize, 0usize);
    let mut text = String::with_capacity(96);
    let mut last_progress = Instant::now();
    let result: Result<(), String> = 'run: loop {
        while next < rooms && inflight < ctx.concurrency {
            let path = ctx.rooms_path(&format!("storm-{next}"), (n + 1 + next) as u64);
            let id = match ctx.net.connect(&path) {
                Ok(id) => id,
                Err(e) => break 'run Err(format!("seeder {next}: connect: {e}")),
            };
            *slot(&mut index, id) = Some(next);
            ids.push(id);
            next += 1;
            inflight += 1;
        }
        if next == rooms && inflight == 0 && stored == rooms * m {
            break 'run Ok(());
        }
        let evs = match ctx.poll(TICK) {
            Ok(e) => e,
            Err(e) => break 'run Err(e),
        };
        for ev in &evs {
            match ev {
                Ev::Open(_) => {}
                Ev::Closed(id, info) => {
                    break 'run Err(format!("seeder {}: {}", index[*id].unwrap_or(0), describe(info)));
                }
                Ev::Text(id, _, frame) => {
                    let Some(Some(r)) = index.get(*id).copied() else { continue };
                    match classify(frame) {
                        Frame::UsersList { .. } if !up[r] => {
                            up[r] = true;
                            inflight -= 1;
                            last_progress = Instant::now();
                            for k in 0..m {
                                text.clear();
                                use std::fmt::Write;
                                let _ = write!(text, r#"{{"message": "storm {r} {k} {tag} {STORM_FILLER}"}}"#);
                                ctx.net.send_text(*id, &text);
                            }
                        }
                        _ if !up[r] => {
                            break 'run Err(format!("seeder {r}: first frame is not room_users_list: {frame}"));
                        }
                        Frame::Chat { message } => match storm_seq(&message) {
                            Some((rr, k, t)) if t == tag && rr == r && k == echoed[r] => {
                                echoed[r] += 1;
                                stored += 1;
                                last_progress = Instant::now();
                            }
                            Some((_, _, t)) if t == tag => {
                                break 'run Err(format!(
                                    "seeder {r}: expected the echo of message {}, got {message:?}",
                                    echoed[r]
                                ));
                            }
                            _ => {
                                break 'run Err(format!(
                                    "room storm-{r} already holds messages ({message:?}): seed a fresh database"
                                ));
                            }
                        },
                        Frame::Error(e) => break 'run Err(format!("seeder {r}: error frame: {e}")),
                        _ => {}
                    }
                }
            }
        }
        ctx.recycle(evs);
        if last_progress.elapsed() > ctx.stall {
            break 'run Err(format!(
                "seeding stalled: {stored} of {} messages echoed, nothing for {} s",
                rooms * m,
                ctx.stall.as_secs()
            ));
        }
    };
    let secs = t0.elapsed().as_secs_f64();
    rep.set("messages_stored", stored);
    rep.set("seed_seconds", round3(secs));
    rep.opt("rss_seeded_kib", ctx.rss());
    result?;
    println!("storm: {stored} messages stored and echoed in {secs:.3} s");
    close_all(ctx, ids, Duration::from_secs(10))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn storm_messages_name_their_room_and_place() {
        assert_eq!(storm_seq("storm 7 49 abc12 the quick brown fox"), Some((7, 49, "abc12")));
        assert_eq!(storm_seq("storm 7 0"), Some((7, 0, "")));
        assert_eq!(storm_seq("7 49 abc"), None);
        assert_eq!(storm_seq("storm x 1 t"), None);
    }
}
