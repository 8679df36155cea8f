//! Every endpoint's frame handling through the real application: one `App` per process
//! (rebuilt on a fresh SQLite file every `REBUILD_EVERY` inputs) with a session open on
//! every endpoint (see `switchboard_fuzz::SESSIONS`). The first byte of an input picks
//! the session (modulo the number of sessions), the rest, as lossy UTF-8, is one text
//! frame: `begin_turn`, `on_text`, `end_turn`. Nothing may panic, and what the turn hands
//! the server must be JSON frames to open connections.

#![no_main]

use std::cell::RefCell;

use libfuzzer_sys::fuzz_target;
use switchboard_fuzz::{Fixture, REBUILD_EVERY, SESSIONS, debug};

thread_local! {
    static FIXTURE: RefCell<Option<Fixture>> = const { RefCell::new(None) };
}

fuzz_target!(|data: &[u8]| {
    let Some((&selector, text)) = data.split_first() else { return };
    FIXTURE.with(|cell| {
        let mut slot = cell.borrow_mut();
        if slot.as_ref().is_none_or(|f| f.runs >= REBUILD_EVERY) {
            *slot = None; // drop (and delete) the old database before making a new one
            *slot = Some(Fixture::new());
        }
        let fixture = slot.as_mut().expect("fixture");
        fixture.runs += 1;
        let text = String::from_utf8_lossy(text);
        let Some((index, app, session)) = fixture.session(selector) else { return };
        if debug() {
            eprintln!("session {index} ({} as user {}): {text:?}", SESSIONS[index].0, SESSIONS[index].1);
        }
        app.begin_turn();
        app.on_text(session, &text);
        let outbox = app.end_turn();
        let answers = fixture.apply(outbox);
        assert!(answers.is_empty(), "a WebSocket frame produced an HTTP answer");
    });
});
