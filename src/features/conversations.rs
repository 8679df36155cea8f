//! Member-only conversations as the backend manages them through the server API:
//! created with their members (and a customer, for support), found, re-membered.

use crate::event::EventBody;
use crate::model::{StreamId, UserId};
use crate::request::{CustomerFields, Failed, NewMemberConversation};
use crate::store::{Conversation, Customer, NewConversation, NewCustomer, StoreResult};
use crate::tx::Tx;

/// The customer by platform and external id, created or updated with the fields given.
pub fn upsert_customer(tx: &mut Tx<'_>, fields: &CustomerFields) -> StoreResult<Customer> {
    let new = NewCustomer {
        source: &fields.source,
        external_id: &fields.external_id,
        first_name: fields.first_name.as_deref(),
        last_name: fields.last_name.as_deref(),
        profile_picture: fields.profile_picture.as_deref(),
    };
    tx.store.upsert_customer(&new, tx.now)
}

/// A conversation and its members, as found: `NoConversation` when there is none.
pub fn find(tx: &mut Tx<'_>, kind: crate::store::ConversationKind, key: &str) -> Result<Conversation, Failed> {
    tx.store.conversation(kind, key)?.ok_or_else(|| Failed::NoConversation { kind, key: key.to_string() })
}

/// Creates a conversation with its members (and its customer).
pub fn create(tx: &mut Tx<'_>, new: &NewMemberConversation) -> Result<Conversation, Failed> {
    if tx.store.conversation(new.kind, &new.key)?.is_some() {
        return Err(Failed::Exists { kind: new.kind, key: new.key.clone() });
    }
    let customer = match &new.customer {
        Some(customer) => Some(upsert_customer(tx, customer)?),
        None => None,
    };
    let title = match (&new.title, &customer) {
        (Some(title), _) => title.clone(),
        (None, Some(customer)) => customer_title(customer),
        (None, None) => new.key.to_string(),
    };
    let row = NewConversation {
        kind: new.kind,
        key: &new.key,
        title: &title,
        status: &new.status,
        priority: new.priority,
        customer_id: customer.as_ref().map(|c| c.id),
    };
    Ok(insert(tx, &row, &new.members)?)
}

/// A support conversation's default title: the platform and the customer's name.
pub fn customer_title(customer: &Customer) -> String {
    format!("{} - {} {}", customer.source, customer.first_name, customer.last_name).trim().to_string()
}

/// Stores a new conversation with its members and returns it as stored.
pub fn insert(tx: &mut Tx<'_>, row: &NewConversation<'_>, members: &[UserId]) -> StoreResult<Conversation> {
    let id = tx.store.create_conversation(row, tx.now)?;
    tx.store.set_members(id, members)?;
    tx.store.existing_conversation(id)
}

/// Replaces the members of a conversation found by kind and key; returns it. A change is recorded on the conversation's stream (`MembersChanged`).
pub fn set_members(
    tx: &mut Tx<'_>,
    kind: crate::store::ConversationKind,
    key: &str,
    members: &[UserId],
) -> Result<Conversation, Failed> {
    let conversation = find(tx, kind, key)?;
    let before = tx.store.members(conversation.id)?;
    let removed = tx.store.set_members(conversation.id, members)?;
    let added: Vec<UserId> = members.iter().filter(|u| !before.contains(u)).cloned().collect();
    if !added.is_empty() || !removed.is_empty() {
        // On the conversation's stream, so that every node closes what it must, in order.
        let body = EventBody::MembersChanged { added, removed };
        tx.record(&StreamId::Conversation(conversation.id), body, None)?;
    }
    Ok(conversation)
}
