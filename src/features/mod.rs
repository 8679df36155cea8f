//! Domain operations: what to validate, store and tell. No sockets and no JSON shapes of
//! any seed document: the store does the SQL, and what listeners must hear of is emitted
//! as an `Event` that the endpoints render.

pub mod chat;
pub mod conversations;
pub mod inbox;
pub mod support;
