//! The server API through the real application: bytes → `http::parse_request(buf,
//! 256 KiB)` → when complete, `App::on_api` as one turn → `end_turn`. The `App` is the
//! same fixture as `endpoint_frames` (sessions open on every endpoint, so pushes and
//! disconnects have somewhere to go), rebuilt every `REBUILD_EVERY` inputs. The API key
//! is `switchboard_fuzz::API_KEY`; the seeds carry it. Nothing may panic, every request
//! gets exactly one HTTP answer, and pushes go only to open connections.

#![no_main]

use std::cell::RefCell;

use libfuzzer_sys::fuzz_target;
use switchboard_fuzz::{Fixture, REBUILD_EVERY, debug};

thread_local! {
    static FIXTURE: RefCell<Option<Fixture>> = const { RefCell::new(None) };
}

fuzz_target!(|data: &[u8]| {
    FIXTURE.with(|cell| {
        let mut slot = cell.borrow_mut();
        if slot.as_ref().is_none_or(|f| f.runs >= REBUILD_EVERY) {
            *slot = None;
            *slot = Some(Fixture::new());
        }
        let fixture = slot.as_mut().expect("fixture");
        fixture.runs += 1;
        if debug() {
            eprintln!("request: {:?}", String::from_utf8_lossy(data));
        }
        if let Some(answer) = fixture.api(data) {
            assert!(answer.starts_with(b"HTTP/1.1 "), "not an HTTP answer: {:?}", String::from_utf8_lossy(&answer));
        }
    });
});
