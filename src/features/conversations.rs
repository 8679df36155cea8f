//! Member-only conversations as the backend manages them through the server API:
//! created with their members (and a customer, for support), found, re-membered.

use crate::model::UserId;
use crate::store::{Conversation, ConversationKind, Customer, NewConversation, NewCustomer, StoreError, StoreResult};
use crate::tx::Tx;

/// Why a conversation was not created.
#[derive(Debug)]
pub enum CreateError {
    /// One of that kind with that key exists.
    Exists,
    Store(StoreError),
}

impl From<StoreError> for CreateError {
    fn from(e: StoreError) -> CreateError {
        CreateError::Store(e)
    }
}

/// What the backend asks for.
pub struct NewMemberConversation<'a> {
    pub kind: ConversationKind,
    pub key: &'a str,
    /// Default: "<source> - <first> <last>" with a customer, else the key.
    pub title: Option<&'a str>,
    pub status: &'a str,
    pub priority: i64,
    pub customer: Option<NewCustomer<'a>>,
    pub members: &'a [UserId],
}

pub fn find(tx: &Tx<'_>, kind: ConversationKind, key: &str) -> StoreResult<Option<Conversation>> {
    tx.store.conversation(kind, key)
}

pub fn members(tx: &Tx<'_>, conversation: i64) -> StoreResult<Vec<UserId>> {
    tx.store.members(conversation)
}

/// The customer by platform and external id, created or updated with the fields given.
pub fn upsert_customer(tx: &mut Tx<'_>, new: &NewCustomer<'_>) -> StoreResult<Customer> {
    tx.store.upsert_customer(new, tx.now)
}

/// Creates a conversation with its members (and its customer).
pub fn create(tx: &mut Tx<'_>, new: &NewMemberConversation<'_>) -> Result<Conversation, CreateError> {
    if tx.store.conversation(new.kind, new.key)?.is_some() {
        return Err(CreateError::Exists);
    }
    let customer = match &new.customer {
        Some(customer) => Some(upsert_customer(tx, customer)?),
        None => None,
    };
    let title = match (new.title, &customer) {
        (Some(title), _) => title.to_string(),
        (None, Some(customer)) => customer_title(customer),
        (None, None) => new.key.to_string(),
    };
    let row = NewConversation {
        kind: new.kind,
        key: new.key,
        title: &title,
        status: new.status,
        priority: new.priority,
        customer_id: customer.as_ref().map(|c| c.id),
    };
    Ok(insert(tx, &row, new.members)?)
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

/// Replaces a conversation's members; returns those removed.
pub fn set_members(tx: &mut Tx<'_>, conversation: i64, members: &[UserId]) -> StoreResult<Vec<UserId>> {
    tx.store.set_members(conversation, members)
}
