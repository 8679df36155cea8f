//! Domain logic shared by endpoints: what to validate and store. No sockets, no JSON
//! shapes of any seed document; the store does the SQL.

pub mod chat;
