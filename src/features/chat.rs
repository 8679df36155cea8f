//! Chat: posting a message to a conversation. Validation and storage of the message;
//! whom to tell and in which shape is the endpoint's business.

use crate::model::{Identity, Micros};
use crate::store::{NewMessage, Store, StoreError, StoredMessage};

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
