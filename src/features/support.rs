//! Support conversations fed from external platforms (Telegram, Instagram): the
//! customer's message and the conversation it lands in.

use super::conversations;
use crate::event::EventBody;
use crate::model::{Identity, Seq, StreamId, UserId};
use crate::request::{Done, Failed, Inbound};
use crate::store::{
    Conversation, ConversationKind, ConversationSummary, Customer, NewConversation, NewMessage, StoreResult,
    StoredMessage,
};
use crate::tx::Tx;

/// A customer's message from an external platform: the customer is created or updated,
/// and the message lands in the conversation named (which must be theirs), or in their
/// open one, or in a new one.
pub fn inbound(tx: &mut Tx<'_>, inbound: &Inbound) -> Result<Done, Failed> {
    let existing = match &inbound.conversation {
        Some(key) => Some(conversations::find(tx, ConversationKind::Support, key)?),
        None => None,
    };
    let customer = conversations::upsert_customer(tx, &inbound.customer)?;
    let (conversation, created) = match existing {
        Some(conversation) if conversation.customer.as_ref().is_some_and(|c| c.id != customer.id) => {
            return Err(Failed::Refused("that conversation belongs to another customer"));
        }
        Some(conversation) => (conversation, false),
        None => conversation_for(tx, &customer, &inbound.new_key, &inbound.members)?,
    };
    let message = post_customer_message(tx, &conversation, &customer, &inbound.content)?;
    Ok(Done::Inbound { conversation: conversation.key, created, message, customer })
}

/// The customer's newest open support conversation, or a new one with `members` (and a
/// title made of the platform and the customer's name). Returns it and whether it is new.
pub fn conversation_for(
    tx: &mut Tx<'_>,
    customer: &Customer,
    new_key: &str,
    members: &[UserId],
) -> StoreResult<(Conversation, bool)> {
    if let Some(conversation) = tx.store.open_support_conversation(customer.id)? {
        return Ok((conversation, false));
    }
    let title = conversations::customer_title(customer);
    let new = NewConversation {
        kind: ConversationKind::Support,
        key: new_key,
        title: &title,
        status: "active",
        priority: 0,
        customer_id: Some(customer.id),
    };
    Ok((conversations::insert(tx, &new, members)?, true))
}

/// The user's support conversations with their unread counts, and the position of the
/// user's stream the list is as of.
pub fn conversation_list(tx: &mut Tx<'_>, user: &UserId) -> StoreResult<(Vec<ConversationSummary>, Seq)> {
    let position = tx.store.last_seq(&StreamId::User(user.clone()))?;
    Ok((tx.store.conversations_of(user, ConversationKind::Support)?, position))
}

/// Stores a customer's message in a support conversation and records it on the
/// conversation's stream (its sockets) and on each member's stream (their conversation
/// lists).
pub fn post_customer_message(
    tx: &mut Tx<'_>,
    conversation: &Conversation,
    customer: &Customer,
    content: &str,
) -> StoreResult<StoredMessage> {
    let name = format!("{} {}", customer.first_name, customer.last_name).trim().to_string();
    let now = tx.now;
    let stream = StreamId::Conversation(conversation.id);
    let message = tx.record_with(&stream, None, |store, seq| {
        let new = NewMessage {
            conversation_id: conversation.id,
            sender: None,
            content,
            message_type: "customer",
            customer_id: Some(customer.id),
            is_ai_response: false,
            is_answered: false,
            seq: Some(seq),
        };
        let message = StoredMessage { sender_name: name, ..store.insert_message(new, now)? };
        let body = EventBody::Message {
            conversation: ConversationKind::Support,
            message: message.clone(),
            customer: Some(customer.clone()),
        };
        Ok((body, message))
    })?;
    *tx.stored += 1;
    for member in tx.store.members(conversation.id)? {
        let body = EventBody::CustomerMessage {
            conversation_key: conversation.key.clone(),
            message: message.clone(),
            customer: customer.clone(),
        };
        tx.record(&StreamId::User(member), body, None)?;
    }
    Ok(message)
}

/// Stores an agent's reply in a support conversation (the customer's earlier messages
/// become answered) and records it on the conversation's stream.
pub fn post_agent_message(
    tx: &mut Tx<'_>,
    agent: &Identity,
    conversation_id: i64,
    content: &str,
) -> StoreResult<StoredMessage> {
    let conversation = tx.store.existing_conversation(conversation_id)?;
    tx.store.mark_customer_messages_answered(conversation_id)?;
    let now = tx.now;
    let message = tx.record_with(&StreamId::Conversation(conversation_id), None, |store, seq| {
        let new = NewMessage {
            conversation_id,
            sender: Some((&agent.user_id, &agent.name)),
            content,
            message_type: "support",
            customer_id: conversation.customer.as_ref().map(|c| c.id),
            is_ai_response: false,
            is_answered: true,
            seq: Some(seq),
        };
        let message = store.insert_message(new, now)?;
        let body = EventBody::Message {
            conversation: ConversationKind::Support,
            message: message.clone(),
            customer: conversation.customer,
        };
        Ok((body, message))
    })?;
    *tx.stored += 1;
    Ok(message)
}
