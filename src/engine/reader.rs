//! The PostgreSQL engine's reader lane (design/cluster.md §5.6–5.7): a helper thread that
//! owns one connection and answers what opening sessions need (`engine::open`) and
//! server API or session reads, in the order asked. An opening read runs in one
//! `REPEATABLE READ` transaction, so the stream's position and the snapshot (history,
//! unread items) agree: the session joins its stream exactly where its snapshot ends. A
//! room opened by name is found or created first, in a statement of its own (so a room
//! another node creates at the same moment is found, not missed by the snapshot).

use std::sync::mpsc::Sender;

use super::{OpenError, OpenLoad, Opened, Target, Ticket, open};
use crate::hub::ConnId;
use crate::model::Micros;
use crate::request::{Answer, Request};
use crate::store::pg::{self, PgStore};
use crate::store::{ConversationKind, Storage, StoreError, StoreResult};
use crate::tx::Tx;

/// What the reader is asked.
pub enum Job {
    Open { conn: ConnId, load: OpenLoad, now: Micros },
    Read { ticket: Ticket, request: Request, now: Micros },
}

/// What it answers.
#[derive(Debug)]
pub enum Done {
    Opened(ConnId, Result<Opened, OpenError>),
    Answered(Ticket, Answer),
}

/// The loop's handle on the lane. Dropping it ends the lane after its current job.
pub struct Reader(super::lane::Lane<Job>);

impl Reader {
    /// Starts a reader on the database at `url`; answers go to `answers`, each followed
    /// by `wake()`.
    pub fn start(url: String, answers: Sender<Done>, wake: Box<dyn Fn() + Send>) -> Reader {
        let mut lane = Lane { url, store: None };
        Reader(super::lane::Lane::start("pg-reader", answers, wake, move |job| match job {
            Job::Open { conn, load, now } => Done::Opened(conn, lane.open(load, now)),
            Job::Read { ticket, request, now } => Done::Answered(ticket, lane.read(request, now)),
        }))
    }

    pub fn send(&self, job: Job) -> Result<(), String> {
        self.0.send(job)
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
        store.client().batch_execute("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY").map_err(StoreError::from)?;
        let opened = open(store, &load, now);
        let _ = store.commit();
        opened
    }

    fn read(&mut self, request: Request, now: Micros) -> Answer {
        let store = self.connected()?;
        let (mut events, mut stored) = (Vec::new(), 0u64);
        let mut tx = Tx { store, now, events: &mut events, stored: &mut stored };
        let answer = crate::features::run(&mut tx, request);
        debug_assert!(events.is_empty(), "a read records nothing");
        answer
    }
}
