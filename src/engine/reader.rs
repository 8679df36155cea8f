//! The PostgreSQL engine's reader lane (design/cluster.md §5.6–5.7): a helper thread that
//! owns one connection and answers what opening sessions need (`engine::open`) and
//! server API or session reads, in the order asked. An opening read runs in one
//! `REPEATABLE READ` transaction, so the stream's position and the snapshot (history,
//! unread items) agree: the session joins its stream exactly where its snapshot ends. A
//! room opened by name is found or created first, in a statement of its own (so a room
//! another node creates at the same moment is found, not missed by the snapshot).
//!
//! A second reader, the *poller*, is how a node learns of what other nodes stored
//! (§5.5, the polling path): every poll interval it lists the streams changed lately
//! with their last seq, and it reads the events a stream followed here is missing.

use std::sync::mpsc::Sender;

use super::{MAX_RECOVERED_EVENTS, OpenError, OpenLoad, Opened, Target, Ticket, open, recovered};
use crate::event::Event;
use crate::hub::ConnId;
use crate::model::{Micros, Seq, StreamId};
use crate::request::{Answer, Request};
use crate::store::pg::{self, PgStore};
use crate::store::{ConversationKind, Since, Storage, StoreError, StoreResult};
use crate::tx::Tx;

/// What the reader is asked.
pub enum Job {
    Open {
        conn: ConnId,
        load: OpenLoad,
        now: Micros,
    },
    Read {
        ticket: Ticket,
        request: Request,
        now: Micros,
    },
    /// The streams whose last seq moved at or after `since`.
    Changed {
        since: Micros,
    },
    /// A stream's events after `after`.
    Fill {
        stream: StreamId,
        after: Seq,
    },
}

/// What it answers.
#[derive(Debug)]
pub enum Done {
    Opened(ConnId, Result<Opened, OpenError>),
    Answered(Ticket, Answer),
    Changed(StoreResult<Vec<(StreamId, Seq)>>),
    Filled(StreamId, StoreResult<Filled>),
}

/// A stream's events read after a position.
#[derive(Debug)]
pub enum Filled {
    /// All of them, in order.
    Events(Vec<Event>),
    /// Some are no longer kept (or more are missing than one read takes): the stream's
    /// last seq.
    Gone { last: Seq },
}

/// The loop's handle on the lane. Dropping it ends the lane after its current job.
pub struct Reader(super::lane::Lane<Job>);

impl Reader {
    /// Starts a reader on the database at `url`; answers go to `answers`, each followed
    /// by `wake()`.
    pub fn start(url: String, answers: Sender<Done>, wake: Box<dyn Fn() + Send>) -> Reader {
        let mut lane = Lane { url, store: None };
        Reader(super::lane::Lane::start("pg-reader", answers, wake, move |job| {
            // A connection found cut by the job (PostgreSQL restarted while the lane was
            // idle) is made again and the job run once more: a read has no effect to undo.
            let done = lane.run(&job);
            if done.failed() && lane.store.as_ref().is_some_and(PgStore::is_closed) {
                log::warn!("PostgreSQL reader: the connection was lost; connecting again");
                lane.store = None;
                return lane.run(&job);
            }
            done
        }))
    }

    pub fn send(&self, job: Job) -> Result<(), String> {
        self.0.send(job)
    }
}

impl Done {
    fn failed(&self) -> bool {
        match self {
            Done::Opened(_, opened) => opened.is_err(),
            Done::Answered(_, answer) => answer.is_err(),
            Done::Changed(changed) => changed.is_err(),
            Done::Filled(_, filled) => filled.is_err(),
        }
    }
}

struct Lane {
    url: String,
    store: Option<PgStore>,
}

impl Lane {
    /// The connection, made again if it was lost (one try: a read that fails is
    /// answered with the error, and the next one tries again).
    fn connected(&mut self) -> StoreResult<&mut PgStore> {
        if self.store.as_ref().is_some_and(PgStore::is_closed) {
            self.store = None;
        }
        if self.store.is_none() {
            let client = pg::connect(&self.url).map_err(StoreError::Unavailable)?;
            self.store = Some(PgStore::new(client));
        }
        Ok(self.store.as_mut().expect("connected"))
    }

    fn open(&mut self, mut load: OpenLoad, now: Micros) -> Result<Opened, OpenError> {
        let store = self.connected()?;
        if let Target::Room { name, known: None } = &load.target {
            let id = store.get_or_create_conversation(ConversationKind::Room, name, now)?;
            load.target = Target::Room { name: name.clone(), known: Some(id) };
        }
        in_snapshot(store, |store| {
            let mut opened = open(store, &load, now)?;
            opened.user_position = Some(store.last_seq(&StreamId::User(load.user.clone()))?);
            Ok(opened)
        })
    }

    /// A job's answer (a job can be run again: a read has nothing to undo).
    fn run(&mut self, job: &Job) -> Done {
        match job {
            Job::Open { conn, load, now } => Done::Opened(*conn, self.open(load.clone(), *now)),
            Job::Read { ticket, request, now } => Done::Answered(*ticket, self.read(request.clone(), *now)),
            Job::Changed { since } => Done::Changed(self.changed(*since)),
            Job::Fill { stream, after } => Done::Filled(stream.clone(), self.fill(stream, *after)),
        }
    }

    fn changed(&mut self, since: Micros) -> StoreResult<Vec<(StreamId, Seq)>> {
        let rows = self.connected()?.query("SELECT id, last_seq FROM streams WHERE updated_at >= $1", &[&since])?;
        Ok(rows.iter().filter_map(|row| Some((StreamId::from_key(row.get(0))?, row.get(1)))).collect())
    }

    /// In one snapshot, so that the events and the conversation that renders them agree.
    fn fill(&mut self, stream: &StreamId, after: Seq) -> StoreResult<Filled> {
        in_snapshot(self.connected()?, |store| {
            let conversation = match stream {
                StreamId::Conversation(id) => Some(store.existing_conversation(*id)?),
                StreamId::User(_) => None,
            };
            Ok(match store.events_since(stream, after, MAX_RECOVERED_EVENTS)? {
                Since::Events(missed) => Filled::Events(recovered(stream, missed, conversation.as_ref())),
                Since::Ahead { .. } => Filled::Events(Vec::new()),
                Since::Gone { last } => Filled::Gone { last },
            })
        })
    }

    fn read(&mut self, request: Request, now: Micros) -> Answer {
        let store = self.connected()?;
        let (mut events, mut stored) = (Vec::new(), 0u64);
        let mut tx = Tx { store, now, events: &mut events, stored: &mut stored, hooks: None };
        let answer = crate::features::run(&mut tx, request);
        debug_assert!(events.is_empty(), "a read records nothing");
        answer
    }
}

/// `read` in one `REPEATABLE READ` transaction: everything it reads agrees.
fn in_snapshot<T, E: From<StoreError>>(
    store: &mut PgStore,
    read: impl FnOnce(&mut PgStore) -> Result<T, E>,
) -> Result<T, E> {
    store.client().batch_execute("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY").map_err(StoreError::from)?;
    let done = read(store);
    let _ = store.commit();
    done
}
