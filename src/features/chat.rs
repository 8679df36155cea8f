//! Chat: posting a message to a conversation, reading it, and the rooms' naming rule.
//! Validation and storage, and the event recorded on the stream that delivers it; whom
//! to tell and in which shape is the endpoints' business (`endpoints::deliver`).

use crate::event::EventBody;
use crate::hub::ConnId;
use crate::model::{Identity, StreamId, UserId};
use crate::request::{Failed, Posted};
use crate::store::{ConversationKind, NewMessage, StoredMessage};
use crate::tx::Tx;

/// Stores a user's text message in a conversation, in the turn's transaction, and
/// records it on `stream` as the event `as_event` makes of it.
pub fn post(
    tx: &mut Tx<'_>,
    stream: &StreamId,
    conversation_id: i64,
    sender: &Identity,
    content: &str,
    as_event: impl FnOnce(StoredMessage) -> EventBody,
) -> Result<Posted, Failed> {
    if content.trim().is_empty() {
        return Err(Failed::Empty);
    }
    let now = tx.now;
    let posted = tx.record_with(stream, None, |store, seq| {
        let new = NewMessage {
            seq: Some(seq),
            ..NewMessage::text(conversation_id, (&sender.user_id, &sender.name), content)
        };
        let message = store.insert_message(new, now)?;
        let posted = Posted { id: message.id, created_at: message.created_at, seq };
        Ok((as_event(message), posted))
    })?;
    *tx.stored += 1;
    Ok(posted)
}

/// Posts a message in a conversation of `kind` (a room, a consultation), on its stream.
pub fn post_in(
    tx: &mut Tx<'_>,
    kind: ConversationKind,
    conversation_id: i64,
    sender: &Identity,
    content: &str,
) -> Result<Posted, Failed> {
    let stream = StreamId::Conversation(conversation_id);
    post(tx, &stream, conversation_id, sender, content, |message| EventBody::Message {
        conversation: kind,
        message,
        customer: None,
    })
}

/// One message of `post_many`: as `post_in` takes it.
pub struct Post<'a> {
    pub kind: ConversationKind,
    pub conversation: i64,
    pub sender: &'a Identity,
    pub content: &'a str,
}

/// Several messages at once, each as `post_in` would post it, in order (the PostgreSQL
/// writer lane's run of posts in one batch): each conversation's seqs are taken in one
/// step, conversations in ascending order (so that batches of two nodes lock streams
/// in one order), and the rows stored in one more. A message that is empty fails alone;
/// a store error fails them all, and the caller undoes what was done.
pub fn post_many(tx: &mut Tx<'_>, posts: &[Post<'_>]) -> Result<Vec<Result<Posted, Failed>>, Failed> {
    let mut answers: Vec<Result<Posted, Failed>> = Vec::with_capacity(posts.len());
    let mut counts = std::collections::BTreeMap::<i64, usize>::new();
    for post in posts {
        if post.content.trim().is_empty() {
            answers.push(Err(Failed::Empty));
        } else {
            answers.push(Ok(Posted { id: 0, created_at: 0, seq: 0 }));
            *counts.entry(post.conversation).or_default() += 1;
        }
    }
    let mut next = std::collections::HashMap::with_capacity(counts.len());
    for (conversation, n) in counts {
        let last = tx.store.next_seqs(&StreamId::Conversation(conversation), n, tx.now)?;
        next.insert(conversation, last - n as i64 + 1);
    }
    let (mut new, mut posted) = (Vec::with_capacity(posts.len()), Vec::with_capacity(posts.len()));
    for (index, post) in posts.iter().enumerate().filter(|(index, _)| answers[*index].is_ok()) {
        let seq = next.get_mut(&post.conversation).expect("counted");
        new.push(NewMessage {
            seq: Some(*seq),
            ..NewMessage::text(post.conversation, (&post.sender.user_id, &post.sender.name), post.content)
        });
        posted.push((index, post.kind, *seq));
        *seq += 1;
    }
    let stored = tx.store.insert_messages(&new, tx.now)?;
    for ((index, kind, seq), message) in posted.into_iter().zip(stored) {
        answers[index] = Ok(Posted { id: message.id, created_at: message.created_at, seq });
        let stream = StreamId::Conversation(message.conversation_id);
        let body = EventBody::Message { conversation: kind, message, customer: None };
        tx.recorded(stream, seq, body)?;
        *tx.stored += 1;
    }
    Ok(answers)
}

/// Posts a message into a room (created when new) as `sender`. The server API posts
/// this way.
pub fn post_to_room(tx: &mut Tx<'_>, room: &str, sender: &Identity, content: &str) -> Result<Posted, Failed> {
    let conversation = tx.store.get_or_create_conversation(ConversationKind::Room, room, tx.now)?;
    post_in(tx, ConversationKind::Room, conversation, sender, content)
}

/// Sends a 1:1 message: stored in the pair's conversation, recorded on the recipient's
/// stream; the sender has read everything up to it. The recipient must be known.
pub fn send_direct(tx: &mut Tx<'_>, sender: &Identity, recipient: &UserId, content: &str) -> Result<Posted, Failed> {
    known(tx, recipient)?;
    if content.trim().is_empty() {
        return Err(Failed::Empty);
    }
    let pair = tx.store.direct_conversation(&sender.user_id, recipient, tx.now)?;
    let stream = StreamId::User(recipient.clone());
    let message = post(tx, &stream, pair, sender, content, |message| EventBody::DirectMessage { message })?;
    if let Err(e) = tx.store.advance_read(pair, &sender.user_id, message.id) {
        log::warn!("cannot move the sender's read position: {e}");
    }
    Ok(message)
}

/// A user known here (has connected, or was named by the backend), or `UnknownUser`.
pub fn known(tx: &mut Tx<'_>, user: &UserId) -> Result<(), Failed> {
    if tx.store.user_exists(user)? { Ok(()) } else { Err(Failed::UnknownUser) }
}

/// 003: `reader` read everything `sender` sent them; recorded on the sender's stream.
/// `false` when the two never wrote to each other; `UnknownUser` for a sender not known.
pub fn read_direct(tx: &mut Tx<'_>, reader: &UserId, sender: &UserId) -> Result<bool, Failed> {
    known(tx, sender)?;
    let key = crate::store::direct_key(reader, sender);
    let Some(pair) = tx.store.conversation_id(ConversationKind::Direct, &key)? else { return Ok(false) };
    let latest = tx.store.latest_message_id(pair)?;
    tx.store.advance_read(pair, reader, latest)?;
    let body = EventBody::DirectRead { reader_id: reader.clone(), at: tx.now };
    tx.record(&StreamId::User(sender.clone()), body, None)?;
    Ok(true)
}

/// 002: a user read a conversation up to its newest message.
pub fn read_all(tx: &mut Tx<'_>, conversation_id: i64, user: &UserId) -> Result<(), Failed> {
    let latest = tx.store.latest_message_id(conversation_id)?;
    tx.store.advance_read(conversation_id, user, latest)?;
    tx.record(&StreamId::Conversation(conversation_id), EventBody::MessagesRead { user_id: user.clone() }, None)?;
    Ok(())
}

/// 001: a user read one message of a conversation, recorded once (`Ok(false)` when read
/// before; `NotFound` when the conversation has no such message). `reader_conn` does
/// not hear of its own receipt live.
pub fn read_one(
    tx: &mut Tx<'_>,
    conversation: i64,
    message_id: i64,
    reader: &Identity,
    reader_conn: ConnId,
) -> Result<bool, Failed> {
    let message =
        tx.store.message(message_id)?.filter(|m| m.conversation_id == conversation).ok_or(Failed::NotFound)?;
    if !tx.store.record_read(&message, &reader.user_id, tx.now)? {
        return Ok(false);
    }
    let body = EventBody::ReadReceipt {
        message_id: message.id,
        user_id: reader.user_id.clone(),
        user_name: reader.name.to_string(),
        read_at: tx.now,
    };
    tx.record(&StreamId::Conversation(message.conversation_id), body, Some(reader_conn))?;
    Ok(true)
}
