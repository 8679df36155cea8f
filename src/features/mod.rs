//! Domain operations: what to validate, store and tell. No sockets and no JSON shapes of
//! any seed document: the store does the SQL, and what listeners must hear of is emitted
//! as an `Event` that the endpoints render.
//!
//! `run` is the one door: the engine hands it each `Request` (`request.rs`) with the
//! store in the turn's transaction (`Tx`), and it answers with what the request came to.

pub mod chat;
pub mod conversations;
pub mod hooks;
pub mod inbox;
pub mod support;

use crate::event::EventBody;
use crate::model::StreamId;
use crate::request::{Answer, Done, Failed, Idempotent, Read, Request, Write};
use crate::store::{KeptReply, REPLY_KEPT, StoreError};
use crate::tx::Tx;

/// Runs one request on the store in `tx`.
pub fn run(tx: &mut Tx<'_>, request: Request) -> Answer {
    match request {
        Request::Read(read) => self::read(tx, read),
        Request::Write(write) => self::write(tx, write),
    }
}

fn read(tx: &mut Tx<'_>, read: Read) -> Answer {
    match read {
        Read::UserKnown(user) => {
            chat::known(tx, &user)?;
            Ok(Done::UserKnown(user))
        }
        Read::ConversationList(user) => {
            let (summaries, position) = support::conversation_list(tx, &user)?;
            Ok(Done::ConversationList { summaries, position })
        }
        Read::Conversation { kind, key } => {
            let conversation = conversations::find(tx, kind, &key)?;
            let members = tx.store.members(conversation.id)?;
            Ok(Done::Conversation { conversation, members })
        }
        Read::Recent { limit } => Ok(Done::Recent(tx.store.recent_conversations(limit)?)),
    }
}

/// A server API write with an `Idempotency-Key`: the same request again gets the reply
/// kept under the key (another request with it is refused); else the write runs and its
/// reply is kept with what it stored, in the same transaction. Only a success is kept: a
/// write that failed stored nothing, and a retry runs it again.
fn idempotent(tx: &mut Tx<'_>, request: Idempotent) -> Answer {
    if let Some(kept) = tx.store.kept_reply(&request.key)?
        && kept.created_at >= tx.now - REPLY_KEPT
    {
        if kept.fingerprint != request.fingerprint {
            return Err(Failed::Refused(
                "this Idempotency-Key was used with another request (method, path or body differ)",
            ));
        }
        let body = serde_json::from_str(&kept.body).unwrap_or(serde_json::Value::Null);
        return Ok(Done::Replied { status: kept.status, body });
    }
    let done = self::write(tx, request.write)?;
    let (status, body) = (request.reply)(Ok(done)).map_err(|e| Failed::Store(StoreError::Unavailable(e.message)))?;
    let kept = KeptReply { fingerprint: request.fingerprint, status, body: body.to_string(), created_at: tx.now };
    if !tx.store.keep_reply(&request.key, &kept)? {
        return Err(Failed::Conflict("a request with this Idempotency-Key is being stored; try again"));
    }
    Ok(Done::Replied { status, body })
}

fn write(tx: &mut Tx<'_>, write: Write) -> Answer {
    Ok(match write {
        Write::Post { kind, conversation, sender, content } => {
            Done::Posted(chat::post_in(tx, kind, conversation, &sender, &content)?)
        }
        Write::PostToRoom { room, sender, content } => {
            let posted = chat::post_to_room(tx, &room, &sender, &content)?;
            Done::PostedToRoom { room, posted }
        }
        Write::PostAgentMessage { conversation, agent, content } => {
            Done::Message(support::post_agent_message(tx, &agent, conversation, &content)?)
        }
        Write::SendDirect { sender, recipient, content } => {
            Done::Posted(chat::send_direct(tx, &sender, &recipient, &content)?)
        }
        Write::ReadOne { conversation, message_id, reader, conn } => {
            chat::read_one(tx, conversation, message_id, &reader, conn)?;
            Done::Stored
        }
        Write::ReadAll { conversation, user } => {
            chat::read_all(tx, conversation, &user)?;
            Done::Stored
        }
        Write::ReadDirect { reader, sender } => {
            chat::read_direct(tx, &reader, &sender)?;
            Done::Stored
        }
        Write::ReadNotification { user, id } => Done::UnreadCount(inbox::read_notification(tx, &user, id)?),
        Write::ReadBankingMessage { user, id } => Done::BankingMessage(inbox::read_banking_message(tx, &user, id)?),
        Write::CreateConversation(new) => {
            let conversation = conversations::create(tx, &new)?;
            Done::Conversation { conversation, members: new.members }
        }
        Write::SetMembers { kind, key, members } => {
            let conversation = conversations::set_members(tx, kind, &key, &members)?;
            Done::Conversation { conversation, members }
        }
        Write::Inbound(inbound) => support::inbound(tx, &inbound)?,
        Write::Notify(new) => Done::Notification(inbox::notify(tx, &new)?),
        Write::RaiseFraudAlert { user, message, severity } => {
            Done::FraudAlert(inbox::raise_fraud_alert(tx, &user, &message, &severity)?)
        }
        Write::ResolveFraudAlert { id } => Done::FraudAlert(inbox::resolve_fraud_alert(tx, id)?),
        Write::PostBankingMessage(new) => Done::BankingMessage(inbox::post_banking_message(tx, &new)?),
        Write::SeeUser { user, name } => {
            tx.store.upsert_user(&user, &name, tx.now)?;
            Done::Stored
        }
        Write::Hook(hook) => {
            hooks::store(tx, &hook)?;
            Done::Stored
        }
        Write::FireHookTimers => {
            hooks::fire_timers(tx)?;
            Done::Stored
        }
        Write::ReportOnline(online) => {
            hooks::report_online(tx, &online)?;
            Done::Stored
        }
        Write::Idempotent(request) => idempotent(tx, *request)?,
        Write::SetDisplayName { user, name } => {
            tx.store.set_display_name(&user, &name)?;
            Done::User { user, name }
        }
        Write::Logout { user, connections } => {
            tx.record(&StreamId::User(user.clone()), EventBody::Logout, None)?;
            Done::LoggedOut { user, connections }
        }
    })
}
