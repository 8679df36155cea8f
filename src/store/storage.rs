//! `Storage`: the store as the domain sees it, one trait over both engines' stores.

use super::*;
use crate::model::StreamId;

/// What the domain operations (`features/`) and the engine's opening reads need of a
/// store, in the current transaction: SQLite's `Store` here, and PostgreSQL's on the
/// engine's lanes (`store::pg`). Each method is the inherent one of the same name.
pub trait Storage {
    /// Takes the stream's next seq, in the current transaction.
    fn next_seq(&mut self, stream: &StreamId, now: Micros) -> StoreResult<Seq>;
    /// Gives back a seq taken by `next_seq` whose event could not be stored.
    fn release_seq(&mut self, stream: &StreamId, seq: Seq);
    /// The stream's last seq (0 before any event).
    fn last_seq(&mut self, stream: &StreamId) -> StoreResult<Seq>;
    /// Stores an event's row (a conversation's message is its own row instead).
    fn insert_event(&mut self, stream: &StreamId, seq: Seq, kind: &str, payload: &str, now: Micros) -> StoreResult<()>;
    /// The events of a stream after `since`, at most `limit` (or why not).
    fn events_since(&mut self, stream: &StreamId, since: Seq, limit: usize) -> StoreResult<Since>;
    /// Starts a unit of work that can be undone alone (a savepoint).
    fn begin_unit(&mut self) -> StoreResult<()>;
    /// Keeps the unit's writes.
    fn keep_unit(&mut self) -> StoreResult<()>;
    /// Undoes the unit's writes.
    fn undo_unit(&mut self);
    /// Records a user seen now (their display name).
    fn upsert_user(&mut self, user: &UserId, name: &str, now: Micros) -> StoreResult<()>;
    /// Whether a user is known.
    fn user_exists(&mut self, user: &UserId) -> StoreResult<bool>;
    /// Sets the display name the backend gave a user (the server API); the user is
    /// known from then on.
    fn set_display_name(&mut self, user: &UserId, name: &str) -> StoreResult<()>;
    /// The display name the backend gave a user, if it gave one.
    fn display_name(&mut self, user: &UserId) -> StoreResult<Option<String>>;
    /// A conversation's id by kind and key, created if new.
    fn get_or_create_conversation(&mut self, kind: ConversationKind, key: &str, now: Micros) -> StoreResult<i64>;
    /// A conversation's id by kind and key.
    fn conversation_id(&mut self, kind: ConversationKind, key: &str) -> StoreResult<Option<i64>>;
    /// A conversation by kind and key.
    fn conversation(&mut self, kind: ConversationKind, key: &str) -> StoreResult<Option<Conversation>>;
    /// A conversation that exists, by id.
    fn existing_conversation(&mut self, id: i64) -> StoreResult<Conversation>;
    /// Creates a conversation; returns its id.
    fn create_conversation(&mut self, new: &NewConversation<'_>, now: Micros) -> StoreResult<i64>;
    /// The 1:1 pair's conversation, created if new.
    fn direct_conversation(&mut self, a: &UserId, b: &UserId, now: Micros) -> StoreResult<i64>;
    /// A customer's newest open support conversation.
    fn open_support_conversation(&mut self, customer_id: i64) -> StoreResult<Option<Conversation>>;
    /// A user's conversations of a kind, with unread counts.
    fn conversations_of(&mut self, user: &UserId, kind: ConversationKind) -> StoreResult<Vec<ConversationSummary>>;
    /// Conversations of every kind, newest activity first, with their member counts.
    fn recent_conversations(&mut self, limit: usize) -> StoreResult<Vec<RecentConversation>>;
    /// A conversation's members.
    fn members(&mut self, conversation_id: i64) -> StoreResult<Vec<UserId>>;
    /// Whether a user is a member of a conversation.
    fn is_member(&mut self, conversation_id: i64, user: &UserId) -> StoreResult<bool>;
    /// Replaces a conversation's members; returns those removed.
    fn set_members(&mut self, conversation_id: i64, members: &[UserId]) -> StoreResult<Vec<UserId>>;
    /// A customer by platform and external id, created or updated.
    fn upsert_customer(&mut self, new: &NewCustomer<'_>, now: Micros) -> StoreResult<Customer>;
    /// Stores a message.
    fn insert_message(&mut self, message: NewMessage<'_>, now: Micros) -> StoreResult<StoredMessage>;
    /// Writes a webhook outbox row (`webhook::on_event`), in the current transaction.
    fn insert_hook(&mut self, kind: &str, stream: &str, seq: Option<Seq>, data: &str, now: Micros) -> StoreResult<()>;
    /// Sets a webhook unread timer.
    fn insert_hook_timer(&mut self, timer: &super::NewTimer<'_>) -> StoreResult<()>;
    /// Keeps a user in the set of those reported online to webhooks, or takes them out;
    /// whether that changed the set (else the event is not reported again).
    fn set_hook_online(&mut self, user: &UserId, online: bool) -> StoreResult<bool>;
    /// The users reported online and never offline.
    fn hook_online_users(&mut self) -> StoreResult<Vec<UserId>>;
    /// Unread timers due at `now`, at most `limit`, taken (deleted), each with whoever
    /// has still not read what it looks at.
    fn take_due_hook_timers(&mut self, now: Micros, limit: usize) -> StoreResult<Vec<super::DueTimer>>;
    /// A member's unread messages in a conversation.
    fn unread_count(&mut self, conversation_id: i64, user: &UserId) -> StoreResult<i64>;
    /// The server API reply kept under an `Idempotency-Key`, if any.
    fn kept_reply(&mut self, key: &str) -> StoreResult<Option<super::KeptReply>>;
    /// Keeps a reply under its key (replacing one older than a day); false when a live
    /// one is kept already (another request with the key got there first).
    fn keep_reply(&mut self, key: &str, reply: &super::KeptReply) -> StoreResult<bool>;
    /// An existing conversation's kind and key (they never change: PostgreSQL's store
    /// remembers them, saving the writer lane a round trip per webhook event).
    fn conversation_key(&mut self, id: i64) -> StoreResult<(ConversationKind, String)> {
        self.existing_conversation(id).map(|c| (c.kind, c.key))
    }
    /// Takes `n` seqs of the stream at once and returns the last (the first is `n - 1`
    /// before it). One at a time unless a store does better (PostgreSQL: one statement).
    fn next_seqs(&mut self, stream: &StreamId, n: usize, now: Micros) -> StoreResult<Seq> {
        let mut last = self.last_seq(stream)?;
        for _ in 0..n {
            last = self.next_seq(stream, now)?;
        }
        Ok(last)
    }
    /// Stores several messages, in order. One at a time unless a store does better
    /// (PostgreSQL: one statement).
    fn insert_messages(&mut self, messages: &[NewMessage<'_>], now: Micros) -> StoreResult<Vec<StoredMessage>> {
        messages.iter().map(|message| self.insert_message(*message, now)).collect()
    }
    /// A message by id.
    fn message(&mut self, id: i64) -> StoreResult<Option<StoredMessage>>;
    /// A conversation's newest messages, oldest first.
    fn recent_messages(&mut self, conversation_id: i64, limit: usize) -> StoreResult<Vec<StoredMessage>>;
    /// A conversation's newest message id (0 when empty).
    fn latest_message_id(&mut self, conversation_id: i64) -> StoreResult<i64>;
    /// Moves a member's read position forward to `message_id`.
    fn advance_read(&mut self, conversation_id: i64, user: &UserId, message_id: i64) -> StoreResult<()>;
    /// Records a read receipt once; false when it was recorded before.
    fn record_read(&mut self, message: &StoredMessage, user: &UserId, now: Micros) -> StoreResult<bool>;
    /// A support conversation's customer messages become answered.
    fn mark_customer_messages_answered(&mut self, conversation_id: i64) -> StoreResult<()>;
    /// Unread 1:1 messages to a user, oldest first.
    fn unread_direct_messages(&mut self, user: &UserId, limit: usize) -> StoreResult<Vec<StoredMessage>>;
    /// Stores a notification.
    fn insert_notification(&mut self, new: &NewNotification<'_>, now: Micros) -> StoreResult<Notification>;
    /// Marks one of a user's notifications read: it, and whether this call read it
    /// (false: it was read before).
    fn mark_notification_read(
        &mut self,
        user: &UserId,
        id: i64,
        now: Micros,
    ) -> StoreResult<Option<(Notification, bool)>>;
    /// A user's unread notifications, oldest first.
    fn unread_notifications(&mut self, user: &UserId, limit: usize) -> StoreResult<Vec<Notification>>;
    /// A user's unread notification count.
    fn unread_notification_count(&mut self, user: &UserId) -> StoreResult<i64>;
    /// Stores a fraud alert.
    fn insert_fraud_alert(
        &mut self,
        user: &UserId,
        message: &str,
        severity: &str,
        now: Micros,
    ) -> StoreResult<FraudAlert>;
    /// A fraud alert by id.
    fn fraud_alert(&mut self, id: i64) -> StoreResult<Option<FraudAlert>>;
    /// Resolves a fraud alert (once).
    fn resolve_fraud_alert(&mut self, id: i64, now: Micros) -> StoreResult<Option<FraudAlert>>;
    /// A user's unresolved fraud alerts, oldest first.
    fn unresolved_fraud_alerts(&mut self, user: &UserId, limit: usize) -> StoreResult<Vec<FraudAlert>>;
    /// Stores a banking message.
    fn insert_banking_message(&mut self, new: &NewBankingMessage<'_>, now: Micros) -> StoreResult<BankingMessage>;
    /// A banking message by id (with its replies).
    fn banking_message(&mut self, id: i64) -> StoreResult<Option<BankingMessage>>;
    /// Marks one of a user's banking messages read.
    fn mark_banking_message_read(&mut self, user: &UserId, id: i64, now: Micros)
    -> StoreResult<Option<BankingMessage>>;
    /// A user's unread banking messages, oldest first.
    fn unread_banking_messages(&mut self, user: &UserId, limit: usize) -> StoreResult<Vec<BankingMessage>>;
}

impl Storage for Store {
    fn next_seq(&mut self, stream: &StreamId, now: Micros) -> StoreResult<Seq> {
        Store::next_seq(self, stream, now)
    }

    fn release_seq(&mut self, stream: &StreamId, seq: Seq) {
        Store::release_seq(self, stream, seq)
    }

    fn last_seq(&mut self, stream: &StreamId) -> StoreResult<Seq> {
        Store::last_seq(self, stream)
    }

    fn insert_event(&mut self, stream: &StreamId, seq: Seq, kind: &str, payload: &str, now: Micros) -> StoreResult<()> {
        Store::insert_event(self, stream, seq, kind, payload, now)
    }

    fn insert_hook(&mut self, kind: &str, stream: &str, seq: Option<Seq>, data: &str, now: Micros) -> StoreResult<()> {
        Store::insert_hook(self, kind, stream, seq, data, now)
    }

    fn insert_hook_timer(&mut self, timer: &super::NewTimer<'_>) -> StoreResult<()> {
        Store::insert_hook_timer(self, timer)
    }

    fn set_hook_online(&mut self, user: &UserId, online: bool) -> StoreResult<bool> {
        Store::set_hook_online(self, user, online)
    }

    fn kept_reply(&mut self, key: &str) -> StoreResult<Option<super::KeptReply>> {
        Store::kept_reply(self, key)
    }

    fn keep_reply(&mut self, key: &str, reply: &super::KeptReply) -> StoreResult<bool> {
        Store::keep_reply(self, key, reply)
    }

    fn hook_online_users(&mut self) -> StoreResult<Vec<UserId>> {
        Store::hook_online_users(self)
    }

    fn take_due_hook_timers(&mut self, now: Micros, limit: usize) -> StoreResult<Vec<super::DueTimer>> {
        Store::take_due_hook_timers(self, now, limit)
    }

    fn unread_count(&mut self, conversation_id: i64, user: &UserId) -> StoreResult<i64> {
        Store::unread_count(self, conversation_id, user)
    }

    fn events_since(&mut self, stream: &StreamId, since: Seq, limit: usize) -> StoreResult<Since> {
        Store::events_since(self, stream, since, limit)
    }

    fn begin_unit(&mut self) -> StoreResult<()> {
        Store::begin_unit(self)
    }

    fn keep_unit(&mut self) -> StoreResult<()> {
        Store::keep_unit(self)
    }

    fn undo_unit(&mut self) {
        Store::undo_unit(self)
    }

    fn upsert_user(&mut self, user: &UserId, name: &str, now: Micros) -> StoreResult<()> {
        Store::upsert_user(self, user, name, now)
    }

    fn user_exists(&mut self, user: &UserId) -> StoreResult<bool> {
        Store::user_exists(self, user)
    }

    fn set_display_name(&mut self, user: &UserId, name: &str) -> StoreResult<()> {
        Store::set_display_name(self, user, name)
    }

    fn display_name(&mut self, user: &UserId) -> StoreResult<Option<String>> {
        Store::display_name(self, user)
    }

    fn get_or_create_conversation(&mut self, kind: ConversationKind, key: &str, now: Micros) -> StoreResult<i64> {
        Store::get_or_create_conversation(self, kind, key, now)
    }

    fn conversation_id(&mut self, kind: ConversationKind, key: &str) -> StoreResult<Option<i64>> {
        Store::conversation_id(self, kind, key)
    }

    fn conversation(&mut self, kind: ConversationKind, key: &str) -> StoreResult<Option<Conversation>> {
        Store::conversation(self, kind, key)
    }

    fn existing_conversation(&mut self, id: i64) -> StoreResult<Conversation> {
        Store::existing_conversation(self, id)
    }

    fn create_conversation(&mut self, new: &NewConversation<'_>, now: Micros) -> StoreResult<i64> {
        Store::create_conversation(self, new, now)
    }

    fn direct_conversation(&mut self, a: &UserId, b: &UserId, now: Micros) -> StoreResult<i64> {
        Store::direct_conversation(self, a, b, now)
    }

    fn open_support_conversation(&mut self, customer_id: i64) -> StoreResult<Option<Conversation>> {
        Store::open_support_conversation(self, customer_id)
    }

    fn conversations_of(&mut self, user: &UserId, kind: ConversationKind) -> StoreResult<Vec<ConversationSummary>> {
        Store::conversations_of(self, user, kind)
    }

    fn recent_conversations(&mut self, limit: usize) -> StoreResult<Vec<RecentConversation>> {
        Store::recent_conversations(self, limit)
    }

    fn members(&mut self, conversation_id: i64) -> StoreResult<Vec<UserId>> {
        Store::members(self, conversation_id)
    }

    fn is_member(&mut self, conversation_id: i64, user: &UserId) -> StoreResult<bool> {
        Store::is_member(self, conversation_id, user)
    }

    fn set_members(&mut self, conversation_id: i64, members: &[UserId]) -> StoreResult<Vec<UserId>> {
        Store::set_members(self, conversation_id, members)
    }

    fn upsert_customer(&mut self, new: &NewCustomer<'_>, now: Micros) -> StoreResult<Customer> {
        Store::upsert_customer(self, new, now)
    }

    fn insert_message(&mut self, message: NewMessage<'_>, now: Micros) -> StoreResult<StoredMessage> {
        Store::insert_message(self, message, now)
    }

    fn message(&mut self, id: i64) -> StoreResult<Option<StoredMessage>> {
        Store::message(self, id)
    }

    fn recent_messages(&mut self, conversation_id: i64, limit: usize) -> StoreResult<Vec<StoredMessage>> {
        Store::recent_messages(self, conversation_id, limit)
    }

    fn latest_message_id(&mut self, conversation_id: i64) -> StoreResult<i64> {
        Store::latest_message_id(self, conversation_id)
    }

    fn advance_read(&mut self, conversation_id: i64, user: &UserId, message_id: i64) -> StoreResult<()> {
        Store::advance_read(self, conversation_id, user, message_id)
    }

    fn record_read(&mut self, message: &StoredMessage, user: &UserId, now: Micros) -> StoreResult<bool> {
        Store::record_read(self, message, user, now)
    }

    fn mark_customer_messages_answered(&mut self, conversation_id: i64) -> StoreResult<()> {
        Store::mark_customer_messages_answered(self, conversation_id)
    }

    fn unread_direct_messages(&mut self, user: &UserId, limit: usize) -> StoreResult<Vec<StoredMessage>> {
        Store::unread_direct_messages(self, user, limit)
    }

    fn insert_notification(&mut self, new: &NewNotification<'_>, now: Micros) -> StoreResult<Notification> {
        Store::insert_notification(self, new, now)
    }

    fn mark_notification_read(
        &mut self,
        user: &UserId,
        id: i64,
        now: Micros,
    ) -> StoreResult<Option<(Notification, bool)>> {
        Store::mark_notification_read(self, user, id, now)
    }

    fn unread_notifications(&mut self, user: &UserId, limit: usize) -> StoreResult<Vec<Notification>> {
        Store::unread_notifications(self, user, limit)
    }

    fn unread_notification_count(&mut self, user: &UserId) -> StoreResult<i64> {
        Store::unread_notification_count(self, user)
    }

    fn insert_fraud_alert(
        &mut self,
        user: &UserId,
        message: &str,
        severity: &str,
        now: Micros,
    ) -> StoreResult<FraudAlert> {
        Store::insert_fraud_alert(self, user, message, severity, now)
    }

    fn fraud_alert(&mut self, id: i64) -> StoreResult<Option<FraudAlert>> {
        Store::fraud_alert(self, id)
    }

    fn resolve_fraud_alert(&mut self, id: i64, now: Micros) -> StoreResult<Option<FraudAlert>> {
        Store::resolve_fraud_alert(self, id, now)
    }

    fn unresolved_fraud_alerts(&mut self, user: &UserId, limit: usize) -> StoreResult<Vec<FraudAlert>> {
        Store::unresolved_fraud_alerts(self, user, limit)
    }

    fn insert_banking_message(&mut self, new: &NewBankingMessage<'_>, now: Micros) -> StoreResult<BankingMessage> {
        Store::insert_banking_message(self, new, now)
    }

    fn banking_message(&mut self, id: i64) -> StoreResult<Option<BankingMessage>> {
        Store::banking_message(self, id)
    }

    fn mark_banking_message_read(
        &mut self,
        user: &UserId,
        id: i64,
        now: Micros,
    ) -> StoreResult<Option<BankingMessage>> {
        Store::mark_banking_message_read(self, user, id, now)
    }

    fn unread_banking_messages(&mut self, user: &UserId, limit: usize) -> StoreResult<Vec<BankingMessage>> {
        Store::unread_banking_messages(self, user, limit)
    }
}
