//! The PostgreSQL store against a real PostgreSQL server that the test harness starts
//! (`util::pg`): its schema migrations.

mod util;

use switchboard::store::pg::{self, migrations};
use util::pg::shared;

#[test]
fn migrations_apply_once_in_order_and_a_newer_database_is_refused() {
    let server = shared();
    let url = server.database();
    let mut client = pg::connect(&url).expect("connect");
    assert_eq!(migrations::apply(&mut client).unwrap(), [1, 2, 3, 4, 5, 6, 7, 8]);
    assert_eq!(migrations::apply(&mut client).unwrap(), Vec::<i64>::new(), "applied once");
    let (ok, recorded) =
        server.psql(&url, "SELECT string_agg(version || ' ' || name, ',' ORDER BY version) FROM schema_migrations");
    assert!(ok, "{recorded}");
    assert_eq!(
        recorded,
        "1 init,2 conversations,3 notifications,4 streams,5 webhooks,6 webhook_order,7 display_names,8 idempotency"
    );
    // The same versions and names as SQLite's, so either engine's database is at a
    // version both understand.
    let sqlite: Vec<(i64, &str)> = switchboard::store::MIGRATIONS.iter().map(|m| (m.0, m.1)).collect();
    let postgres: Vec<(i64, &str)> = migrations::MIGRATIONS.iter().map(|m| (m.0, m.1)).collect();
    assert_eq!(sqlite, postgres);
    // Every table of the SQLite schema exists, with the PostgreSQL-only batch markers
    // and webhook id counter.
    let (ok, tables) = server
        .psql(&url, "SELECT string_agg(tablename, ',' ORDER BY tablename) FROM pg_tables WHERE schemaname = 'public'");
    assert!(ok, "{tables}");
    assert_eq!(
        tables,
        "banking_messages,batches,conversation_members,conversations,customers,events,fraud_alerts,\
         idempotency_keys,message_reads,messages,notifications,schema_migrations,settings,streams,users,\
         webhook_cursor,webhook_events,webhook_next,webhook_online,webhook_timers"
    );

    // Statements and idle transactions of switchboard's connections are bounded.
    for name in ["statement_timeout", "idle_in_transaction_session_timeout"] {
        let value: String = client.query_one(&format!("SHOW {name}"), &[]).unwrap().get(0);
        assert_eq!(value, "5s", "{name}");
    }

    // A database that a newer switchboard migrated is refused, not guessed at.
    assert!(server.psql(&url, "INSERT INTO schema_migrations (version, name) VALUES (99, 'future')").0);
    let refused = migrations::apply(&mut client).unwrap_err();
    assert!(refused.contains("schema version 99, newer than this switchboard knows (8)"), "{refused}");
}

#[test]
fn nodes_starting_at_once_migrate_a_database_once() {
    let server = shared();
    let url = server.database();
    let nodes: Vec<_> = (0..4)
        .map(|_| {
            let url = url.clone();
            std::thread::spawn(move || migrations::apply(&mut pg::connect(&url).expect("connect")))
        })
        .collect();
    let mut applied: Vec<Vec<i64>> = nodes.into_iter().map(|n| n.join().unwrap().expect("migrated")).collect();
    applied.sort();
    assert_eq!(applied, [vec![], vec![], vec![], vec![1, 2, 3, 4, 5, 6, 7, 8]], "exactly one node migrated");
}

#[test]
fn a_bad_url_or_an_unreachable_server_is_named() {
    let error = pg::connect("mysql://nope").err().expect("refused");
    assert!(error.starts_with("not a PostgreSQL URL"), "{error}");
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let error = pg::connect(&format!("postgres://postgres@127.0.0.1:{closed}/x")).err().expect("refused");
    assert!(error.starts_with("cannot connect to PostgreSQL"), "{error}");
}

// ---- The domain operations on PostgreSQL answer exactly as on SQLite.

use switchboard::engine::{self, OpenLoad, Replay, Target};
use switchboard::event::Event;
use switchboard::hub::ConnId;
use switchboard::model::{Identity, UserId};
use switchboard::request::{
    CustomerFields, Inbound, NewBankingMessage, NewMemberConversation, NewNotification, Read, Request, Write,
};
use switchboard::store::{ConversationKind, Storage, Store};
use switchboard::tx::Tx;

fn who(id: &str) -> Identity {
    Identity { user_id: UserId::new(id), name: format!("{id} name").into() }
}

fn text(s: &str) -> String {
    s.to_string()
}

/// A script touching every domain operation, failures included, in order.
fn script() -> Vec<Request> {
    let (ann, bo) = (who("ann"), who("7"));
    let w = Request::Write;
    vec![
        w(Write::PostToRoom { room: text("lobby"), sender: ann.clone(), content: text("hello") }),
        w(Write::PostToRoom { room: text("lobby"), sender: bo.clone(), content: text("hi \"ann\"") }),
        w(Write::PostToRoom { room: text("lobby"), sender: bo.clone(), content: text("   ") }),
        w(Write::CreateConversation(Box::new(NewMemberConversation {
            kind: ConversationKind::Consultation,
            key: text("c1"),
            title: None,
            status: text("active"),
            priority: 2,
            customer: None,
            members: vec![ann.user_id.clone(), bo.user_id.clone()],
        }))),
        w(Write::CreateConversation(Box::new(NewMemberConversation {
            kind: ConversationKind::Consultation,
            key: text("c1"),
            title: Some(text("again")),
            status: text("active"),
            priority: 0,
            customer: None,
            members: vec![],
        }))),
        w(Write::Post {
            kind: ConversationKind::Consultation,
            conversation: 2,
            sender: ann.clone(),
            content: text("q"),
        }),
        w(Write::ReadOne { conversation: 2, message_id: 3, reader: bo.clone(), conn: ConnId { slot: 1, serial: 1 } }),
        w(Write::ReadOne { conversation: 2, message_id: 3, reader: bo.clone(), conn: ConnId { slot: 1, serial: 1 } }),
        w(Write::ReadOne { conversation: 2, message_id: 1, reader: bo.clone(), conn: ConnId { slot: 1, serial: 1 } }),
        w(Write::SendDirect { sender: ann.clone(), recipient: bo.user_id.clone(), content: text("psst") }),
        w(Write::SendDirect { sender: ann.clone(), recipient: UserId::new("nobody"), content: text("psst") }),
        w(Write::ReadDirect { reader: bo.user_id.clone(), sender: ann.user_id.clone() }),
        w(Write::Inbound(Box::new(Inbound {
            customer: CustomerFields {
                source: text("telegram"),
                external_id: text("42"),
                first_name: Some(text("Cy")),
                last_name: None,
                profile_picture: None,
            },
            content: text("help"),
            conversation: None,
            new_key: text("s1"),
            members: vec![ann.user_id.clone()],
        }))),
        w(Write::Inbound(Box::new(Inbound {
            customer: CustomerFields {
                source: text("telegram"),
                external_id: text("42"),
                first_name: None,
                last_name: Some(text("Dee")),
                profile_picture: Some(text("p.png")),
            },
            content: text("still there?"),
            conversation: None,
            new_key: text("s2"),
            members: vec![],
        }))),
        w(Write::PostAgentMessage { conversation: 4, agent: ann.clone(), content: text("yes") }),
        w(Write::ReadAll { conversation: 4, user: ann.user_id.clone() }),
        w(Write::Notify(Box::new(NewNotification {
            user: bo.user_id.clone(),
            category: text("system"),
            title: text("t"),
            message: text("m"),
            link: None,
        }))),
        w(Write::ReadNotification { user: bo.user_id.clone(), id: 1 }),
        w(Write::ReadNotification { user: ann.user_id.clone(), id: 1 }),
        w(Write::RaiseFraudAlert { user: bo.user_id.clone(), message: text("odd"), severity: text("high") }),
        w(Write::ResolveFraudAlert { id: 1 }),
        w(Write::ResolveFraudAlert { id: 1 }),
        w(Write::ResolveFraudAlert { id: 9 }),
        w(Write::PostBankingMessage(Box::new(NewBankingMessage {
            user: bo.user_id.clone(),
            subject: text("s"),
            body: text("b"),
            parent: None,
            thread: None,
            new_thread: text("th1"),
        }))),
        w(Write::PostBankingMessage(Box::new(NewBankingMessage {
            user: bo.user_id.clone(),
            subject: text("re"),
            body: text("b2"),
            parent: Some(1),
            thread: None,
            new_thread: text("th2"),
        }))),
        w(Write::ReadBankingMessage { user: bo.user_id.clone(), id: 2 }),
        w(Write::SetMembers {
            kind: ConversationKind::Consultation,
            key: text("c1"),
            members: vec![ann.user_id.clone()],
        }),
        w(Write::SetMembers { kind: ConversationKind::Support, key: text("none"), members: vec![] }),
        w(Write::Logout { user: bo.user_id.clone(), connections: 1 }),
        Request::Read(Read::UserKnown(bo.user_id.clone())),
        Request::Read(Read::UserKnown(UserId::new("nobody"))),
        Request::Read(Read::ConversationList(ann.user_id.clone())),
        Request::Read(Read::Conversation { kind: ConversationKind::Consultation, key: text("c1") }),
        Request::Read(Read::Recent { limit: 100 }),
        Request::Read(Read::Recent { limit: 2 }),
    ]
}

/// What a session opening on each kind of stream reads, resumed or not.
fn loads() -> Vec<OpenLoad> {
    let load = |user: &str, target, since, replay| OpenLoad {
        user: UserId::new(user),
        target,
        since,
        replay,
        unread_count: true,
        display_name: false,
    };
    let room = || Target::Room { name: text("lobby"), known: None };
    let c1 = || Target::Member { kind: ConversationKind::Consultation, key: text("c1") };
    vec![
        load("ann", room(), None, Replay::History { limit: 50 }),
        load("ann", room(), Some(1), Replay::History { limit: 50 }),
        load("ann", Target::Room { name: text("new-room"), known: None }, None, Replay::History { limit: 50 }),
        load("ann", c1(), Some(0), Replay::History { limit: 50 }),
        load("7", c1(), None, Replay::History { limit: 50 }),
        load(
            "ann",
            Target::Member { kind: ConversationKind::Support, key: text("s1") },
            None,
            Replay::History { limit: 5 },
        ),
        load("ann", Target::User, None, Replay::ConversationList),
        load("7", Target::User, None, Replay::UnreadDirect { limit: 10 }),
        load("7", Target::User, None, Replay::Notifications { limit: 10 }),
        load("7", Target::User, None, Replay::BankingMessages { limit: 10 }),
        load("7", Target::User, None, Replay::FraudAlerts { limit: 10 }),
        load("7", Target::User, Some(0), Replay::Notifications { limit: 10 }),
        load("7", Target::User, Some(99), Replay::Notifications { limit: 10 }),
    ]
}

/// Runs the script and the loads on a store; everything answered, recorded and read, as
/// text (both stores number rows and events from 1, and the times are the script's).
fn transcript(store: &mut dyn Storage) -> Vec<String> {
    let mut lines = Vec::new();
    let (mut events, mut stored) = (Vec::<Event>::new(), 0u64);
    for (i, request) in script().into_iter().enumerate() {
        let mut tx =
            Tx { store: &mut *store, now: 1_000 + i as i64, events: &mut events, stored: &mut stored, hooks: None };
        let answer = engine::run(&mut tx, request, true);
        lines.push(format!("{i}: {answer:?}"));
        for event in events.drain(..) {
            lines.push(format!("{i}: event {} #{} {:?}", event.stream.key(), event.seq, event.body));
        }
    }
    lines.push(format!("stored {stored}"));
    for load in loads() {
        lines.push(format!("open {load:?}: {:?}", engine::open(store, &load, 5_000)));
    }
    lines
}

#[test]
fn every_domain_operation_answers_on_postgresql_as_on_sqlite() {
    let dir = tempfile::tempdir().unwrap();
    let mut sqlite = Store::open(&dir.path().join("t.db"), false).unwrap();
    let expected = transcript(&mut sqlite);

    let url = shared().database();
    let mut client = pg::connect(&url).unwrap();
    migrations::apply(&mut client).unwrap();
    let mut postgres = pg::PgStore::new(client);
    postgres.begin().unwrap();
    let got = transcript(&mut postgres);
    postgres.commit().unwrap();

    for (line, (want, have)) in expected.iter().zip(&got).enumerate() {
        assert_eq!(have, want, "line {line} differs");
    }
    assert_eq!(got.len(), expected.len());
    // The script did what it says: failures, events and reads are in the transcript.
    let all = expected.join("\n");
    for needle in [
        "Err(Empty)",
        "Err(Exists",
        "Err(UnknownUser)",
        "Err(NotFound)",
        "Err(NoConversation",
        "MembersChanged",
        "Logout",
        "Recovered",
        "Ahead",
        "Recent([RecentConversation",
    ] {
        assert!(all.contains(needle), "{needle} is not in the transcript:\n{all}");
    }
}

// ---- The writer lane.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::mpsc::{Receiver, channel};
use std::time::Duration;
use switchboard::engine::writer::{Batch, Committed, Rules, Writer};

fn post(ticket: u64, who_: &str, content: &str) -> (u64, Request) {
    (ticket, Request::Write(Write::PostToRoom { room: text("lobby"), sender: who(who_), content: text(content) }))
}

fn writer(url: &str, node: &str) -> (Writer, Receiver<Committed>, Arc<AtomicUsize>) {
    let (answers, received) = channel();
    let woken = Arc::new(AtomicUsize::new(0));
    let wake = woken.clone();
    let lane = Writer::start(
        url.to_string(),
        node.to_string(),
        None,
        Rules { rate_limit_per_minute: 60, ..Default::default() },
        answers,
        Box::new(move || {
            wake.fetch_add(1, Ordering::SeqCst);
        }),
    );
    (lane, received, woken)
}

fn committed(received: &Receiver<Committed>) -> (Vec<(u64, String)>, Vec<String>) {
    match received.recv_timeout(Duration::from_secs(20)).expect("an answer from the lane") {
        Committed::Yes { answers, events, .. } => (
            answers.into_iter().map(|(t, a)| (t, format!("{a:?}"))).collect(),
            events.iter().map(|e| format!("{}#{}", e.stream.key(), e.seq)).collect(),
        ),
        Committed::No { error, .. } => panic!("the batch failed: {error}"),
    }
}

#[test]
fn the_writer_lane_commits_a_batch_whole_and_answers_after_the_commit() {
    let server = shared();
    let url = server.database();
    migrations::apply(&mut pg::connect(&url).unwrap()).unwrap();
    let (lane, received, woken) = writer(&url, "node-a");

    // Failed requests are undone alone, seqs included: the stream has no gap.
    let nobody =
        Request::Write(Write::SendDirect { sender: who("ann"), recipient: UserId::new("nobody"), content: text("x") });
    let requests = vec![post(1, "ann", "one"), post(2, "ann", "  "), (3, nobody), post(4, "7", "two")];
    lane.send(Batch { id: 1, now: 1_000, requests, prune_before: None }).unwrap();
    let (answers, events) = committed(&received);
    assert_eq!(answers.iter().map(|a| a.0).collect::<Vec<_>>(), [1, 2, 3, 4]);
    assert!(answers[0].1.contains("seq: 1") && answers[3].1.contains("seq: 2"), "{answers:?}");
    assert_eq!((answers[1].1.as_str(), answers[2].1.as_str()), ("Err(Empty)", "Err(UnknownUser)"));
    assert_eq!(events, ["c:1#1", "c:1#2"]);
    let woken_by = std::time::Instant::now() + Duration::from_secs(5);
    while woken.load(Ordering::SeqCst) == 0 && std::time::Instant::now() < woken_by {
        std::thread::sleep(Duration::from_millis(5));
    }
    assert!(woken.load(Ordering::SeqCst) >= 1, "the loop is woken after the answer");
    // It was committed before the answer, with its marker.
    assert_eq!(server.psql(&url, "SELECT count(*) FROM messages"), (true, text("2")));
    assert_eq!(server.psql(&url, "SELECT last_seq FROM streams WHERE id = 'c:1'"), (true, text("2")));
    assert_eq!(server.psql(&url, "SELECT node || ' ' || batch FROM batches"), (true, text("node-a 1")));

    // Its connection is cut between batches: the next batch reconnects.
    let cut = "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity \
               WHERE datname = current_database() AND pid <> pg_backend_pid()";
    assert_eq!(server.psql(&url, cut), (true, text("1")));
    lane.send(Batch { id: 2, now: 2_000, requests: vec![post(5, "ann", "three")], prune_before: None }).unwrap();
    let (answers, events) = committed(&received);
    assert!(answers[0].1.contains("seq: 3"), "{answers:?}");
    assert_eq!(events, ["c:1#3"]);

    // A batch can carry the pruning of old events (and markers), nothing else.
    let notify = |ticket, user: &str| {
        let new = NewNotification {
            user: UserId::new(user),
            category: text("c"),
            title: text("t"),
            message: text("m"),
            link: None,
        };
        (ticket, Request::Write(Write::Notify(Box::new(new))))
    };
    // The batch's streams are locked by key when it begins; a key is quoted whatever
    // the user id holds.
    let odd = ["7", "o'neil", "back\\slash", "x'); DROP TABLE events; --"];
    let requests = odd.iter().enumerate().map(|(i, user)| notify(6 + i as u64, user)).collect();
    lane.send(Batch { id: 3, now: 3_000, requests, prune_before: None }).unwrap();
    let (answers, _) = committed(&received);
    assert!(answers.iter().all(|(_, a)| a.starts_with("Ok")), "{answers:?}");
    assert_eq!(server.psql(&url, "SELECT count(*) FROM events"), (true, text("4")));
    lane.send(Batch { id: 5, now: 4_000, requests: vec![notify(10, "o'neil"), notify(11, "7")], prune_before: None })
        .unwrap();
    committed(&received);
    assert_eq!(server.psql(&url, "SELECT last_seq FROM streams WHERE id = 'u:o''neil'"), (true, text("2")));
    lane.send(Batch { id: 6, now: 4_500, requests: vec![], prune_before: Some(3_500) }).unwrap();
    committed(&received);
    assert_eq!(server.psql(&url, "SELECT count(*) FROM events"), (true, text("2")));
    lane.send(Batch { id: 4, now: 9_000, requests: vec![], prune_before: Some(5_000) }).unwrap();
    committed(&received);
    assert_eq!(server.psql(&url, "SELECT count(*) FROM events"), (true, text("0")));
    assert_eq!(server.psql(&url, "SELECT string_agg(batch::text, ',' ORDER BY batch) FROM batches"), (true, text("4")));
}

#[test]
fn two_nodes_writing_one_stream_number_it_once_without_gaps() {
    let server = shared();
    let url = server.database();
    migrations::apply(&mut pg::connect(&url).unwrap()).unwrap();
    let nodes: Vec<_> = ["a", "b"]
        .into_iter()
        .map(|node| {
            let url = url.clone();
            std::thread::spawn(move || {
                let (lane, received, _) = writer(&url, node);
                let mut seqs = Vec::new();
                for batch in 0..20 {
                    let requests = (0..5).map(|i| post(batch * 5 + i, node, &format!("{node}{batch}.{i}"))).collect();
                    lane.send(Batch { id: batch as i64, now: 1_000 + batch as i64, requests, prune_before: None })
                        .unwrap();
                    let (_, events) = committed(&received);
                    // The room's id is whichever node's insert committed first.
                    seqs.extend(events.iter().map(|e| {
                        let (stream, seq) = e.split_once('#').unwrap();
                        (stream.to_string(), seq.parse::<i64>().unwrap())
                    }));
                }
                seqs
            })
        })
        .collect();
    let events: Vec<(String, i64)> = nodes.into_iter().flat_map(|n| n.join().unwrap()).collect();
    assert!(events.iter().all(|(stream, _)| *stream == events[0].0), "one stream: {events:?}");
    let mut seqs: Vec<i64> = events.iter().map(|(_, seq)| *seq).collect();
    seqs.sort();
    assert_eq!(seqs, (1..=200).collect::<Vec<_>>(), "every seq once");
    assert_eq!(
        server.psql(&url, "SELECT count(DISTINCT seq) || ' ' || max(seq) FROM messages"),
        (true, text("200 200"))
    );
}

#[test]
fn consecutive_posts_in_a_batch_are_stored_together_each_as_alone() {
    let url = shared().database();
    migrations::apply(&mut pg::connect(&url).unwrap()).unwrap();
    let (lane, received, _) = writer(&url, "a");
    let rooms = vec![
        post(1, "ann", "the lobby"),
        (
            2,
            Request::Write(Write::PostToRoom { room: text("side"), sender: who("bo"), content: text("the side room") }),
        ),
    ];
    lane.send(Batch { id: 1, now: 1_000, requests: rooms, prune_before: None }).unwrap();
    committed(&received);
    let id = |room: &str| shared().psql(&url, &format!("SELECT id FROM conversations WHERE key = '{room}'")).1;
    let (lobby, side): (i64, i64) = (id("lobby").parse().unwrap(), id("side").parse().unwrap());
    let to = |ticket, conversation, sender: &str, content: &str| {
        let kind = ConversationKind::Room;
        (ticket, Request::Write(Write::Post { kind, conversation, sender: who(sender), content: text(content) }))
    };
    // Interleaved rooms, an empty message among them, a NUL in one.
    let requests = vec![
        to(3, lobby, "ann", "one"),
        to(4, side, "bo", "two"),
        to(5, lobby, "cy", "   "),
        to(6, lobby, "bo", "three\0"),
        to(7, side, "ann", "four"),
    ];
    lane.send(Batch { id: 2, now: 2_000, requests, prune_before: None }).unwrap();
    let (answers, events) = committed(&received);
    let answers: Vec<String> = answers.iter().map(|(ticket, answer)| format!("{ticket} {answer}")).collect();
    assert!(answers[2].starts_with("5 Err(Empty)"), "{answers:?}");
    for (answer, seq) in [(&answers[0], 2), (&answers[1], 2), (&answers[3], 3), (&answers[4], 3)] {
        assert!(answer.contains("Ok(Posted(") && answer.contains(&format!("seq: {seq} ")), "{answers:?}");
    }
    let (l, sd) = (format!("c:{lobby}"), format!("c:{side}"));
    assert_eq!(events, [format!("{l}#2"), format!("{sd}#2"), format!("{l}#3"), format!("{sd}#3")]);
    let (_, rows) = shared().psql(
        &url,
        "SELECT c.key, m.seq, m.sender_id FROM messages m JOIN conversations c ON c.id = m.conversation_id ORDER BY m.id",
    );
    assert_eq!(rows, "lobby|1|ann\nside|1|bo\nlobby|2|ann\nside|2|bo\nlobby|3|bo\nside|3|ann");
    // Read back through the store: the NUL is there, as a single post would keep it.
    let mut store = switchboard::store::pg::PgStore::new(pg::connect(&url).unwrap());
    let recent = store.recent_messages(lobby, 10).unwrap();
    assert_eq!(recent.last().map(|m| m.content.as_str()), Some("three\0"));

    // A post that cannot be stored (its conversation is gone) fails alone: the others
    // are run one by one after the group is undone, with no hole in the seqs.
    let requests = vec![to(8, lobby, "ann", "five"), to(9, 999_999, "bo", "nowhere"), to(10, lobby, "bo", "six")];
    lane.send(Batch { id: 3, now: 3_000, requests, prune_before: None }).unwrap();
    let (answers, events) = committed(&received);
    assert!(answers[0].1.contains("seq: 4 ") && answers[2].1.contains("seq: 5 "), "{answers:?}");
    assert!(answers[1].1.starts_with("Err(Store("), "{answers:?}");
    assert_eq!(events, [format!("{l}#4"), format!("{l}#5")]);
    let (_, count) = shared().psql(&url, "SELECT count(*) FROM streams WHERE id = 'c:999999'");
    assert_eq!(count, "0", "the failed post's seq is given back");
}

/// A TCP proxy in front of PostgreSQL that, when armed, cuts a connection at the
/// client's next `COMMIT`: after passing it on (the server commits, the client never
/// hears of it) or instead of it (the server rolls back). Then it is disarmed.
struct Cutter {
    port: u16,
    /// 0: pass everything; 1: cut after passing the COMMIT on; 2: cut instead of it.
    mode: Arc<std::sync::atomic::AtomicU8>,
}

const CUT_AFTER_COMMIT: u8 = 1;
const CUT_INSTEAD_OF_COMMIT: u8 = 2;

fn cutter(upstream: u16) -> Cutter {
    use std::io::{Read, Write as _};
    use std::net::{Shutdown, TcpListener, TcpStream};
    // The simple-query message `COMMIT`: 'Q', its length (4 + 7), the text and a NUL.
    const COMMIT: &[u8] = b"Q\0\0\0\x0bCOMMIT\0";
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let mode = Arc::new(std::sync::atomic::AtomicU8::new(0));
    let armed = mode.clone();
    std::thread::spawn(move || {
        for client in listener.incoming().map_while(Result::ok) {
            let server = TcpStream::connect(("127.0.0.1", upstream)).unwrap();
            let (mut from_server, mut to_client) = (server.try_clone().unwrap(), client.try_clone().unwrap());
            // The server's answers, dropped once the connection is being cut.
            let muted = Arc::new(AtomicBool::new(false));
            let mute = muted.clone();
            std::thread::spawn(move || {
                let mut chunk = [0u8; 65536];
                while let Ok(n) = from_server.read(&mut chunk) {
                    if n == 0 || (!mute.load(Ordering::SeqCst) && to_client.write_all(&chunk[..n]).is_err()) {
                        break;
                    }
                }
            });
            let (mut client, mut server, armed) = (client, server, armed.clone());
            std::thread::spawn(move || {
                let mut chunk = [0u8; 65536];
                while let Ok(n) = client.read(&mut chunk) {
                    if n == 0 {
                        break;
                    }
                    let commit = chunk[..n].windows(COMMIT.len()).any(|w| w == COMMIT);
                    let cut = if commit { armed.swap(0, Ordering::SeqCst) } else { 0 };
                    if cut != 0 {
                        muted.store(true, Ordering::SeqCst);
                    }
                    if cut != CUT_INSTEAD_OF_COMMIT && server.write_all(&chunk[..n]).is_err() {
                        break;
                    }
                    if cut != 0 {
                        // Time for the server to commit what it was sent, never answered.
                        std::thread::sleep(Duration::from_millis(300));
                        let _ = client.shutdown(Shutdown::Both);
                        let _ = server.shutdown(Shutdown::Both);
                        break;
                    }
                }
            });
        }
    });
    Cutter { port, mode }
}

#[test]
fn a_connection_cut_during_commit_is_resolved_from_the_batch_marker() {
    let url = shared().database();
    migrations::apply(&mut pg::connect(&url).unwrap()).unwrap();
    let cutter = cutter(shared().port);
    let proxied = url.replace(&format!(":{}/", shared().port), &format!(":{}/", cutter.port));
    let (lane, received, _) = writer(&proxied, "node-m");
    lane.send(Batch { id: 1, now: 1_000, requests: vec![post(1, "ann", "one")], prune_before: None }).unwrap();
    committed(&received);

    // The COMMIT reached PostgreSQL, its answer never came back: the lane connects
    // again, finds the batch's marker and answers "committed".
    cutter.mode.store(CUT_AFTER_COMMIT, Ordering::SeqCst);
    lane.send(Batch { id: 2, now: 2_000, requests: vec![post(2, "ann", "two")], prune_before: None }).unwrap();
    let (answers, events) = committed(&received);
    assert!(answers[0].1.contains("seq: 2"), "{answers:?}");
    assert_eq!(events, ["c:1#2"]);
    assert_eq!(cutter.mode.load(Ordering::SeqCst), 0, "the cut happened");
    let count = |sql: &str| shared().psql(&url, sql).1;
    assert_eq!(count("SELECT count(*) FROM messages"), "2");
    assert_eq!(count("SELECT count(*) FROM batches WHERE node = 'node-m' AND batch = 2"), "1");

    // The connection was cut instead of the COMMIT: no marker, so the lane answers
    // "not stored", and nothing of the batch is.
    cutter.mode.store(CUT_INSTEAD_OF_COMMIT, Ordering::SeqCst);
    lane.send(Batch { id: 3, now: 3_000, requests: vec![post(3, "ann", "three")], prune_before: None }).unwrap();
    match received.recv_timeout(Duration::from_secs(20)).expect("an answer from the lane") {
        Committed::No { tickets, .. } => assert_eq!(tickets, [3]),
        Committed::Yes { answers, .. } => panic!("a batch that never committed was answered as stored: {answers:?}"),
    }
    assert_eq!(cutter.mode.load(Ordering::SeqCst), 0, "the cut happened");
    assert_eq!(count("SELECT count(*) FROM messages"), "2");
    assert_eq!(count("SELECT count(*) FROM batches WHERE batch = 3"), "0");
    // The next batch takes the seq the failed one never stored.
    lane.send(Batch { id: 4, now: 4_000, requests: vec![post(4, "ann", "four")], prune_before: None }).unwrap();
    let (answers, _) = committed(&received);
    assert!(answers[0].1.contains("seq: 3"), "{answers:?}");
}

#[test]
fn a_request_deadlocked_with_another_node_runs_again_and_its_batch_commits() {
    let url = shared().database();
    migrations::apply(&mut pg::connect(&url).unwrap()).unwrap();
    let to = |ticket, room: &str, content: &str| {
        let sender = who("ann");
        (ticket, Request::Write(Write::PostToRoom { room: text(room), sender, content: text(content) }))
    };
    let (lane, received, _) = writer(&url, "a");
    lane.send(Batch { id: 1, now: 1_000, requests: vec![to(1, "r1", "x"), to(2, "r2", "y")], prune_before: None })
        .unwrap();
    committed(&received);
    let stream = |room: &str| {
        let (ok, id) = shared().psql(&url, &format!("SELECT id FROM conversations WHERE key = '{room}'"));
        assert!(ok, "{id}");
        format!("c:{id}")
    };
    let (first, second) = (stream("r1"), stream("r2"));
    // The other node: it holds the second stream's lock, the lane takes the first and
    // waits for the second, then the other asks for the first: a cycle, which
    // PostgreSQL breaks after a second by failing one of the two waits.
    let mut other = pg::connect(&url).unwrap();
    let mut tx = other.transaction().unwrap();
    tx.execute("UPDATE streams SET last_seq = last_seq WHERE id = $1", &[&second]).unwrap();
    lane.send(Batch { id: 2, now: 2_000, requests: vec![to(3, "r1", "x2"), to(4, "r2", "y2")], prune_before: None })
        .unwrap();
    std::thread::sleep(Duration::from_millis(300));
    let theirs = tx.execute("UPDATE streams SET last_seq = last_seq WHERE id = $1", &[&first]);
    drop(tx);
    let (answers, events) = committed(&received);
    assert!(answers.iter().all(|(_, answer)| answer.starts_with("Ok")), "every request stored: {answers:?}");
    assert_eq!(events.len(), 2, "{events:?}");
    // Whichever wait PostgreSQL failed first, the lane's request ran again and the
    // other node's ended in the deadlock.
    assert!(theirs.is_err_and(|e| e.code() == Some(&postgres::error::SqlState::T_R_DEADLOCK_DETECTED)));
}

// ---- The reader lane.

use switchboard::engine::reader::{self, Job, Reader};

fn reader(url: &str) -> (Reader, Receiver<reader::Done>) {
    let (answers, received) = channel();
    (Reader::start(url.to_string(), answers, Box::new(|| {})), received)
}

#[test]
fn the_reader_lane_opens_with_a_position_its_snapshot_agrees_with() {
    let server = shared();
    let url = server.database();
    migrations::apply(&mut pg::connect(&url).unwrap()).unwrap();
    let (lane, received, _) = writer(&url, "a");
    let requests = (0..5).map(|i| post(i, "ann", &format!("m{i}"))).collect();
    lane.send(Batch { id: 1, now: 1_000, requests, prune_before: None }).unwrap();
    committed(&received);

    let (reader, opened) = reader(&url);
    let room = |name: &str| Target::Room { name: text(name), known: None };
    let load = |target, since| OpenLoad {
        user: UserId::new("bo"),
        target,
        since,
        replay: Replay::History { limit: 3 },
        unread_count: false,
        display_name: false,
    };
    let conn = ConnId { slot: 1, serial: 1 };
    reader.send(Job::Open { conn, load: load(room("lobby"), None), now: 2_000 }).unwrap();
    reader.send(Job::Open { conn, load: load(room("lobby"), Some(3)), now: 2_000 }).unwrap();
    reader.send(Job::Open { conn, load: load(room("fresh"), None), now: 2_000 }).unwrap();
    reader.send(Job::Open { conn, load: load(room("lobby"), Some(9)), now: 2_000 }).unwrap();
    // Posting to a room makes nobody known (a first session does).
    let known = Request::Read(Read::UserKnown(UserId::new("ann")));
    reader.send(Job::Read { ticket: 7, request: known, now: 2_000 }).unwrap();
    let next = || format!("{:?}", opened.recv_timeout(Duration::from_secs(20)).expect("an answer"));
    let history = next();
    assert!(history.contains("position: 5") && history.contains("\"m2\"") && history.contains("\"m4\""), "{history}");
    assert!(!history.contains("\"m1\""), "the newest 3: {history}");
    let resumed = next();
    assert!(
        resumed.contains("Recovered") && resumed.contains("seq: Some(4)") && resumed.contains("seq: Some(5)"),
        "{resumed}"
    );
    assert!(!resumed.contains("seq: Some(3)"), "{resumed}");
    let fresh = next();
    assert!(fresh.contains("position: 0") && fresh.contains("History([])"), "a new room is created: {fresh}");
    assert!(next().contains("Ahead { since: 9, last: 5 }"));
    assert_eq!(next(), "Answered(7, Err(UnknownUser))");
}

// ---- A node on PostgreSQL, the real binary.

use serde_json::json;
use util::Server;

#[test]
fn a_node_on_postgresql_serves_rooms_keeps_history_and_answers_the_api() {
    let url = shared().database();
    let server = Server::start(&[("SWITCHBOARD_DATABASE_URL", &url)]);
    let mut ann = server.connect_as("/ws/rooms/lobby/", json!(1), "ann");
    ann.recv_type("room_users_list");
    let mut bo = server.connect_as("/ws/rooms/lobby/", json!(2), "bo");
    bo.recv_type("room_users_list");
    assert_eq!(ann.recv_type("user_join")["username"], "bo");
    ann.send_json(json!({"message": "hello"}));
    let said = bo.recv_type("chat_message");
    assert_eq!((said["message"].as_str(), said["seq"].as_i64()), (Some("hello"), Some(1)), "{said}");
    assert_eq!(ann.recv_type("chat_message")["message"], "hello");
    ann.send_json(json!({"message": "   "}));
    assert!(ann.recv()["error"].is_string(), "an empty message is refused");

    // The server API writes through the same lane; the reply comes after the commit.
    let (status, body) = server.api("POST", "/api/rooms/lobby/messages", Some(&json!({"message": "from the backend"})));
    assert_eq!(status, 201, "{body}");
    assert_eq!(bo.recv_type("chat_message")["seq"], 2);
    let (status, body) = server.api("GET", "/healthz", None);
    assert_eq!((status, body["status"].as_str()), (200, Some("ok")), "{body}");

    // Everything is in PostgreSQL: another node on the same database has the history.
    let (ok, count) = shared().psql(&url, "SELECT count(*) FROM messages");
    assert_eq!((ok, count.as_str()), (true, "2"));
    let other = Server::start(&[("SWITCHBOARD_DATABASE_URL", &url)]);
    let mut cy = other.connect_as("/ws/rooms/lobby/", json!(3), "cy");
    cy.recv_type("room_users_list");
    assert_eq!(cy.recv_type("chat_message")["message"], "hello");
    assert_eq!(cy.recv_type("chat_message")["message"], "from the backend");
}

#[test]
fn a_bad_database_url_or_an_unreachable_postgresql_stops_the_start_with_one_line() {
    let dir = tempfile::tempdir().unwrap();
    let run = |url: &str| {
        let out = util::switchboard_command(&[], &[("SWITCHBOARD_DATABASE_URL", url)], dir.path()).output().unwrap();
        (out.status.code(), String::from_utf8_lossy(&out.stderr).lines().last().unwrap_or_default().to_string())
    };
    let (code, line) = run("mysql://x");
    assert_eq!(code, Some(2), "{line}");
    assert!(line.contains("SWITCHBOARD_DATABASE_URL"), "{line}");
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let (code, line) = run(&format!("postgres://postgres@127.0.0.1:{closed}/x"));
    assert_eq!(code, Some(1), "{line}");
    assert!(line.contains("SWITCHBOARD_DATABASE_URL: cannot reach PostgreSQL"), "{line}");
    let (code, line) = run(&format!("postgres://postgres@127.0.0.1:{}/no_such_database", shared().port));
    assert_eq!(code, Some(2), "{line}");
    assert!(line.contains("refused"), "{line}");
}
