//! What a domain operation works with (`features/`): the store inside the turn's
//! transaction, the turn's time, and where the events it records go. Not the loop's
//! state: no hub, no outbox, no sockets; so an operation can run wherever the store is
//! (inline today; in the PostgreSQL engine of design/cluster.md, on its writer lane).

use crate::event::{Event, EventBody};
use crate::hub::ConnId;
use crate::model::{HookType, Micros, Seq, StreamId};
use crate::store::{Storage, StoreResult};

pub struct Tx<'a> {
    pub store: &'a mut dyn Storage,
    pub now: Micros,
    /// Events recorded, in order, for delivery once the operation is done.
    pub events: &'a mut Vec<Event>,
    /// Messages, notifications, alerts stored (the `messages_stored` metric).
    pub stored: &'a mut u64,
    /// With webhooks: which are written (`webhook::on_event` for every recorded event,
    /// in the same transaction).
    pub hooks: Option<&'a crate::webhook::Hooks>,
}

impl Tx<'_> {
    /// Stores an event on its stream in the turn's transaction, under the stream's next
    /// seq, and queues it for delivery. `except` is a connection that must not hear of it
    /// live.
    pub fn record(&mut self, stream: &StreamId, body: EventBody, except: Option<ConnId>) -> StoreResult<Seq> {
        self.record_with(stream, except, |_, seq| Ok((body, seq)))
    }

    /// Like `record`, for an event whose domain row carries its seq (a message): `write`
    /// stores the row under the seq it is given and returns the event and what the
    /// caller wants back. If anything fails, the seq is given back: streams have no gaps.
    pub fn record_with<R>(
        &mut self,
        stream: &StreamId,
        except: Option<ConnId>,
        write: impl FnOnce(&mut dyn Storage, Seq) -> StoreResult<(EventBody, R)>,
    ) -> StoreResult<R> {
        let seq = self.store.next_seq(stream, self.now)?;
        let now = self.now;
        let hooks = self.hooks;
        let stored = write(self.store, seq).and_then(|(body, back)| {
            // A conversation's message is its own event: its row has the seq.
            if !matches!((stream, &body), (StreamId::Conversation(_), EventBody::Message { .. })) {
                let payload = serde_json::to_string(&body).expect("events are plain JSON values");
                self.store.insert_event(stream, seq, body.kind(), &payload, now)?;
            }
            if let Some(hooks) = hooks {
                crate::webhook::on_event(self.store, hooks, stream, seq, &body, now)?;
            }
            Ok((body, back))
        });
        match stored {
            Ok((body, back)) => {
                self.events.push(Event { stream: stream.clone(), seq, body, except });
                Ok(back)
            }
            Err(e) => {
                self.store.release_seq(stream, seq);
                Err(e)
            }
        }
    }

    /// Queues an event whose row and seq the caller stored itself (several messages at
    /// once, `chat::post_many`), with its webhook rows as `record_with` writes them.
    pub fn recorded(&mut self, stream: StreamId, seq: Seq, body: EventBody) -> StoreResult<()> {
        if let Some(hooks) = self.hooks {
            crate::webhook::on_event(self.store, hooks, &stream, seq, &body, self.now)?;
        }
        self.events.push(Event { stream, seq, body, except: None });
        Ok(())
    }

    /// With webhooks, and `kind` wanted: stores a webhook event that is not a recorded
    /// event (a notification read), in the same transaction.
    pub fn hook(&mut self, kind: HookType, stream: &StreamId, data: &serde_json::Value) -> StoreResult<()> {
        match self.hooks {
            Some(hooks) if hooks.wants(kind) => {
                self.store.insert_hook(kind.name(), &stream.key(), None, &data.to_string(), self.now)
            }
            _ => Ok(()),
        }
    }
}
