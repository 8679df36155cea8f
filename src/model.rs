//! Small domain types shared by every layer: who a user is, and time stamps.
//!
//! Nothing here knows about sockets, SQL or any seed document's JSON shapes.

use std::fmt;
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

/// A user id as the application backend issues it: SimpleJWT's integer `user_id`, or
/// a string `sub` such as a UUID. Kept as text; cheap to clone.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Debug)]
pub struct UserId(Arc<str>);

impl UserId {
    pub fn new(id: &str) -> UserId {
        UserId(Arc::from(id))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// Ids that are canonical decimal integers (what SimpleJWT issues) go out as JSON
    /// numbers, everything else as strings, so each document's clients see the type
    /// their backend used.
    pub fn to_json(&self) -> serde_json::Value {
        match self.as_integer() {
            Some(n) => serde_json::Value::from(n),
            None => serde_json::Value::from(self.as_str()),
        }
    }

    pub fn as_integer(&self) -> Option<i64> {
        let s = self.as_str();
        let n: i64 = s.parse().ok()?;
        (n.to_string() == s).then_some(n)
    }

    /// Reads an id a client sent: a JSON integer or a non-empty string.
    pub fn from_json(value: &serde_json::Value) -> Option<UserId> {
        match value {
            serde_json::Value::Number(n) if n.is_i64() || n.is_u64() => Some(UserId::new(&n.to_string())),
            serde_json::Value::String(s) if !s.is_empty() && s.len() <= MAX_USER_ID_LEN => Some(UserId::new(s)),
            _ => None,
        }
    }
}

/// Longest room name (or conversation id in a path).
pub const MAX_ROOM_NAME: usize = 100;

/// A room name or conversation id: 1–100 characters of ASCII letters, digits, `_`, `-`
/// and `.`.
pub fn valid_room_name(name: &str) -> bool {
    (1..=MAX_ROOM_NAME).contains(&name.len())
        && name.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.'))
}

/// Longest user id accepted from a token or a client.
pub const MAX_USER_ID_LEN: usize = 200;

impl fmt::Display for UserId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl serde::Serialize for UserId {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        match self.as_integer() {
            Some(n) => serializer.serialize_i64(n),
            None => serializer.serialize_str(self.as_str()),
        }
    }
}

impl<'de> serde::Deserialize<'de> for UserId {
    /// Reads what `Serialize` wrote: a JSON integer or a string.
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<UserId, D::Error> {
        struct Visitor;
        impl serde::de::Visitor<'_> for Visitor {
            type Value = UserId;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a user id (an integer or a string)")
            }
            fn visit_i64<E: serde::de::Error>(self, n: i64) -> Result<UserId, E> {
                Ok(UserId::new(&n.to_string()))
            }
            fn visit_u64<E: serde::de::Error>(self, n: u64) -> Result<UserId, E> {
                Ok(UserId::new(&n.to_string()))
            }
            fn visit_str<E: serde::de::Error>(self, s: &str) -> Result<UserId, E> {
                Ok(UserId::new(s))
            }
        }
        deserializer.deserialize_any(Visitor)
    }
}

/// A stream of stored events, numbered 1, 2, 3, ... in commit order: one per
/// conversation and one per user (design/cluster.md §5.1). Its key in the `streams` and
/// `events` tables is `c:<conversation id>` or `u:<user id>`.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum StreamId {
    Conversation(i64),
    User(UserId),
}

impl StreamId {
    pub fn key(&self) -> String {
        match self {
            StreamId::Conversation(id) => format!("c:{id}"),
            StreamId::User(user) => format!("u:{user}"),
        }
    }

    /// The stream a `streams`/`events` key names, if it names one.
    pub fn from_key(key: &str) -> Option<StreamId> {
        match key.split_once(':')? {
            ("c", id) => id.parse().ok().map(StreamId::Conversation),
            ("u", user) if !user.is_empty() => Some(StreamId::User(UserId::new(user))),
            _ => None,
        }
    }
}

/// A stream's sequence number: 1 for its first event, 0 before any.
pub type Seq = i64;

/// Who is on the other end of a connection, from a verified token.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Identity {
    pub user_id: UserId,
    pub name: Arc<str>,
}

/// Microseconds since the Unix epoch, the unit time stamps are stored in.
pub type Micros = i64;

pub fn now_micros() -> Micros {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_micros() as i64).unwrap_or(0)
}

/// RFC 3339 in UTC with microseconds, the way Django REST framework writes
/// `DateTimeField`s: `2024-01-15T10:00:00.123456Z`.
pub fn format_timestamp(micros: Micros) -> String {
    let secs = micros.div_euclid(1_000_000);
    let frac = micros.rem_euclid(1_000_000);
    let days = secs.div_euclid(86_400);
    let rem = secs.rem_euclid(86_400);
    let (year, month, day) = civil_from_days(days);
    format!("{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{frac:06}Z", rem / 3600, rem % 3600 / 60, rem % 60)
}

/// Days since 1970-01-01 to a proleptic Gregorian date (Howard Hinnant's algorithm).
fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let month = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let year = yoe + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timestamps_are_rfc3339_utc() {
        assert_eq!(format_timestamp(0), "1970-01-01T00:00:00.000000Z");
        assert_eq!(format_timestamp(1_710_417_600_123_456), "2024-03-14T12:00:00.123456Z");
        assert_eq!(format_timestamp(951_782_400_000_000), "2000-02-29T00:00:00.000000Z");
    }

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

    #[test]
    fn integer_ids_go_out_as_numbers() {
        assert_eq!(UserId::new("5").to_json(), serde_json::json!(5));
        assert_eq!(UserId::new("05").to_json(), serde_json::json!("05"));
        assert_eq!(UserId::new("user-id").to_json(), serde_json::json!("user-id"));
        assert_eq!(UserId::from_json(&serde_json::json!(5)), Some(UserId::new("5")));
        assert_eq!(UserId::from_json(&serde_json::json!("")), None);
        assert_eq!(UserId::from_json(&serde_json::json!(1.5)), None);
    }

    #[test]
    fn user_ids_read_back_what_they_wrote() {
        for id in ["5", "05", "user-id", "-3"] {
            let json = serde_json::to_string(&UserId::new(id)).unwrap();
            assert_eq!(serde_json::from_str::<UserId>(&json).unwrap(), UserId::new(id), "{json}");
        }
        assert_eq!(StreamId::User(UserId::new("7")).key(), "u:7");
        for stream in [StreamId::Conversation(12), StreamId::User(UserId::new("a:b"))] {
            assert_eq!(StreamId::from_key(&stream.key()), Some(stream));
        }
        assert_eq!(StreamId::from_key("x:1"), None);
        assert_eq!(StreamId::from_key("c:one"), None);
        assert_eq!(StreamId::Conversation(12).key(), "c:12");
    }
}

/// What the backend hears of through webhooks (docs/webhooks.md): each type's name is
/// the event's `type`, and what `SWITCHBOARD_WEBHOOK_EVENTS` lists.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HookType {
    UserOnline,
    UserOffline,
    MessageCreated,
    MessageRead,
    NotificationRead,
    MemberJoined,
    MemberLeft,
    MessageUnread,
    NotificationUnread,
}

impl HookType {
    pub const ALL: [HookType; 9] = [
        HookType::UserOnline,
        HookType::UserOffline,
        HookType::MessageCreated,
        HookType::MessageRead,
        HookType::NotificationRead,
        HookType::MemberJoined,
        HookType::MemberLeft,
        HookType::MessageUnread,
        HookType::NotificationUnread,
    ];

    pub fn name(self) -> &'static str {
        match self {
            HookType::UserOnline => "user.online",
            HookType::UserOffline => "user.offline",
            HookType::MessageCreated => "message.created",
            HookType::MessageRead => "message.read",
            HookType::NotificationRead => "notification.read",
            HookType::MemberJoined => "member.joined",
            HookType::MemberLeft => "member.left",
            HookType::MessageUnread => "message.unread",
            HookType::NotificationUnread => "notification.unread",
        }
    }

    pub fn parse(name: &str) -> Option<HookType> {
        HookType::ALL.into_iter().find(|t| t.name() == name)
    }

    /// Its bit in a set of types (`Hooks::types`).
    pub fn bit(self) -> u16 {
        1 << self as u16
    }
}
