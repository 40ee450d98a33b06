//! What native code reads of a forwarded event (processors.routing.forwarded_messages):
//! its rows (rows.rs) and the fold (fold.rs). An account's held events, stored as the
//! part of an event that applying it reads (processors.scoring._APPLIED_FIELDS), are
//! read the same way.

use serde::de::{Deserializer, IgnoredAny, MapAccess, Visitor};
use serde::Deserialize;
use std::borrow::Cow;
use std::fmt;

use crate::json::{Json, Text};

/// The string members read, by their index in ForwardedEvent::texts (the first nine are
/// event rows' columns, in their order).
pub(crate) const EVENT_ID: usize = 0;
pub(crate) const TYPE: usize = 1;
pub(crate) const SOURCE: usize = 2;
pub(crate) const ACCOUNT_ID: usize = 3;
pub(crate) const CONTACT_ID: usize = 4;
pub(crate) const EMAIL: usize = 5;
const CAMPAIGN_ID: usize = 6;
pub(crate) const URL: usize = 7;
const CONTENT_ID: usize = 8;
pub(crate) const SENIORITY: usize = 9;
const TEXT_MEMBERS: usize = 10;

fn text_member(name: &str) -> Option<usize> {
    Some(match name {
        "event_id" => EVENT_ID,
        "type" => TYPE,
        "source" => SOURCE,
        "account_id" => ACCOUNT_ID,
        "contact_id" => CONTACT_ID,
        "email" => EMAIL,
        "campaign_id" => CAMPAIGN_ID,
        "url" => URL,
        "content_id" => CONTENT_ID,
        "_seniority" => SENIORITY,
        _ => return None,
    })
}

/// A member as a dict has it: missing, null, or a value.
#[derive(Default)]
pub(crate) enum Member<T> {
    #[default]
    Missing,
    Null,
    Value(T),
}

impl<T> Member<T> {
    pub(crate) fn value(&self) -> Option<&T> {
        match self {
            Member::Value(value) => Some(value),
            _ => None,
        }
    }

    fn read<'de, A: MapAccess<'de>, S: Deserialize<'de>>(map: &mut A, into: impl FnOnce(S) -> T) -> Result<Self, A::Error> {
        Ok(map.next_value::<Option<S>>()?.map_or(Member::Null, |value| Member::Value(into(value))))
    }
}

/// (raw topic, partition, offset) of the raw message an event came in.
pub(crate) type Origin<'a> = (Cow<'a, str>, i64, i64);

/// A forwarded event's members that native code reads (a later member of the same name
/// wins, as in the dict Python decodes); the others are skipped.
#[derive(Default)]
pub(crate) struct ForwardedEvent<'a> {
    pub(crate) texts: [Member<Cow<'a, str>>; TEXT_MEMBERS],
    pub(crate) occurred_at_ms: Option<i64>,
    pub(crate) received_at_ms: Option<i64>,
    pub(crate) properties: Member<Json<'a>>,
    pub(crate) origin: Member<Origin<'a>>,
}

impl<'a> ForwardedEvent<'a> {
    /// The string member's value (None: missing or null).
    pub(crate) fn text(&self, member: usize) -> Option<&str> {
        self.texts[member].value().map(|text| text.as_ref())
    }
}

impl<'de: 'a, 'a> Deserialize<'de> for ForwardedEvent<'a> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct EventVisitor;
        impl<'de> Visitor<'de> for EventVisitor {
            type Value = ForwardedEvent<'de>;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("an event (a JSON object)")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
                let mut event = ForwardedEvent::default();
                while let Some(Text(name)) = map.next_key()? {
                    if let Some(member) = text_member(&name) {
                        event.texts[member] = Member::read(&mut map, |Text(text): Text<'de>| text)?;
                        continue;
                    }
                    match name.as_ref() {
                        "occurred_at_ms" => event.occurred_at_ms = Some(map.next_value()?),
                        "received_at_ms" => event.received_at_ms = Some(map.next_value()?),
                        "properties" => event.properties = Member::read(&mut map, |p: Json<'de>| p)?,
                        "_origin" => event.origin = Member::read(&mut map, |(Text(topic), partition, offset): (Text<'de>, i64, i64)| (topic, partition, offset))?,
                        _ => {
                            map.next_value::<IgnoredAny>()?;
                        }
                    }
                }
                Ok(event)
            }
        }
        deserializer.deserialize_map(EventVisitor)
    }
}

/// A JSON array of events, nested as deep as orjson reads (1,024 levels; serde's
/// default stops at 128).
pub(crate) fn events_of(message: &[u8]) -> Result<Vec<ForwardedEvent<'_>>, String> {
    let mut reader = serde_json::Deserializer::from_slice(message);
    reader.disable_recursion_limit();
    Vec::<ForwardedEvent>::deserialize(&mut reader).map_err(|e| format!("a forwarded message is not a JSON array of events: {e}"))
}
