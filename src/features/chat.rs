//! Chat: posting a message to a conversation, and the rooms' naming rule. Validation and
//! storage of the message; whom to tell and in which shape is the endpoints' business
//! (an emitted `Event`, delivered by `endpoints::deliver`).

use crate::context::{Ctx, Event};
use crate::model::{Identity, Micros};
use crate::store::{ConversationKind, NewMessage, Store, StoreError, StoredMessage};

/// Longest room name.
pub const MAX_ROOM_NAME: usize = 100;

/// 1–100 characters of ASCII letters, digits, `_`, `-` and `.`.
pub fn valid_room_name(name: &str) -> bool {
    (1..=MAX_ROOM_NAME).contains(&name.len())
        && name.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.'))
}

#[derive(Debug)]
pub enum ChatError {
    /// The message is missing, not text, or only white space.
    Empty,
    Store(StoreError),
}

impl From<StoreError> for ChatError {
    fn from(e: StoreError) -> ChatError {
        ChatError::Store(e)
    }
}

/// Stores a message from a user in a conversation, in the turn's transaction.
pub fn post(
    store: &mut Store,
    conversation_id: i64,
    sender: &Identity,
    content: &str,
    now: Micros,
) -> Result<StoredMessage, ChatError> {
    if content.trim().is_empty() {
        return Err(ChatError::Empty);
    }
    Ok(store.insert_message(NewMessage::text(conversation_id, (&sender.user_id, &sender.name), content), now)?)
}

/// Posts a message into a room (created when new) as `sender`, and emits it to the
/// room's listeners. The server API posts this way.
pub fn post_to_room(ctx: &mut Ctx, room: &str, sender: &Identity, content: &str) -> Result<StoredMessage, ChatError> {
    let conversation = ctx.store.get_or_create_conversation(ConversationKind::Room, room, ctx.now)?;
    let message = post(&mut ctx.store, conversation, sender, content, ctx.now)?;
    ctx.metrics.messages_stored += 1;
    ctx.emit(Event::RoomMessage { conversation, message: message.clone() });
    Ok(message)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn room_names() {
        assert!(valid_room_name("general"));
        assert!(valid_room_name("a.b-c_9"));
        assert!(valid_room_name(&"x".repeat(100)));
        assert!(!valid_room_name(&"x".repeat(101)));
        assert!(!valid_room_name(""));
        assert!(!valid_room_name("a b"));
        assert!(!valid_room_name("é"));
    }
}
