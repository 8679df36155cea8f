//! Support conversations fed from external platforms (Telegram, Instagram): the
//! customer's message and the conversation it lands in.

use crate::context::{Ctx, Event, InboundMessage};
use crate::model::UserId;
use crate::store::{Conversation, ConversationKind, Customer, NewConversation, NewMessage, StoreResult, StoredMessage};

/// The customer's newest open support conversation, or a new one with `members` (and a
/// title made of the platform and the customer's name). Returns it and whether it is new.
pub fn conversation_for(
    ctx: &mut Ctx,
    customer: &Customer,
    new_key: &str,
    members: &[UserId],
) -> StoreResult<(Conversation, bool)> {
    if let Some(conversation) = ctx.store.open_support_conversation(customer.id)? {
        return Ok((conversation, false));
    }
    let title = format!("{} - {} {}", customer.source, customer.first_name, customer.last_name).trim().to_string();
    let new = NewConversation {
        kind: ConversationKind::Support,
        key: new_key,
        title: &title,
        status: "active",
        priority: 0,
        customer_id: Some(customer.id),
    };
    let id = ctx.store.create_conversation(&new, ctx.now)?;
    ctx.store.set_members(id, members)?;
    Ok((ctx.store.existing_conversation(id)?, true))
}

/// Stores a customer's message in a support conversation and emits it (the
/// conversation's sockets and its members' conversation lists hear of it).
pub fn post_customer_message(
    ctx: &mut Ctx,
    conversation: &Conversation,
    customer: &Customer,
    content: &str,
) -> StoreResult<StoredMessage> {
    let name = format!("{} {}", customer.first_name, customer.last_name).trim().to_string();
    let message = ctx.store.insert_message(
        NewMessage {
            conversation_id: conversation.id,
            sender: None,
            content,
            message_type: "customer",
            customer_id: Some(customer.id),
            is_ai_response: false,
            is_answered: false,
        },
        ctx.now,
    )?;
    let message = StoredMessage { sender_name: name, ..message };
    ctx.metrics.messages_stored += 1;
    ctx.emit(Event::CustomerMessage(Box::new(InboundMessage {
        conversation: conversation.clone(),
        customer: customer.clone(),
        message: message.clone(),
    })));
    Ok(message)
}
