//! An account's state (processors.scoring.AccountState) and its bytes: written member
//! for member as AccountState.to_bytes writes them, and read from what it writes (and
//! from the older forms AccountState.from_bytes reads).

use indexmap::IndexMap;
use serde::de::value::MapAccessDeserializer;
use serde::de::{self, Deserializer, MapAccess, SeqAccess, Visitor};
use serde::Deserialize;
use std::borrow::Cow;
use std::fmt;
use std::io::Write;

use crate::dedup::RecentIds;
use crate::forwarded::{ForwardedEvent, Member, CONTACT_ID, EMAIL, EVENT_ID, SENIORITY, SOURCE, TYPE, URL};
use crate::json::{write_float, write_json, write_string, Json};

pub(crate) const STAGES: [&str; 5] = ["target", "awareness", "consideration", "decision", "customer"];
pub(crate) const TARGET: usize = 0;
pub(crate) const AWARENESS: usize = 1;
pub(crate) const CONSIDERATION: usize = 2;
pub(crate) const DECISION: usize = 3;
pub(crate) const CUSTOMER: usize = 4;

/// The part of an event that applying it reads (processors.scoring._applied_part): what an
/// account holds of an event until the watermark passes it.
pub(crate) struct AppliedEvent {
    pub(crate) occurred_at_ms: i64,
    pub(crate) source: String,
    pub(crate) event_id: String,
    pub(crate) kind: String,
    pub(crate) contact_id: Member<String>,
    pub(crate) email: Member<String>, // Missing when contact_id is a non-empty string
    pub(crate) url: Member<String>,
    pub(crate) properties: Member<Json<'static>>,
    pub(crate) seniority: Member<String>,
}

fn owned(member: &Member<Cow<'_, str>>) -> Member<String> {
    match member {
        Member::Missing => Member::Missing,
        Member::Null => Member::Null,
        Member::Value(text) => Member::Value(text.to_string()),
    }
}

fn required<T>(value: Option<T>, name: &str) -> Result<T, String> {
    value.ok_or_else(|| format!("an event has no {name}"))
}

impl AppliedEvent {
    pub(crate) fn from_event(event: ForwardedEvent<'_>) -> Result<Self, String> {
        let contact_id = owned(&event.texts[CONTACT_ID]);
        let has_contact_id = contact_id.value().is_some_and(|id| !id.is_empty());
        Ok(AppliedEvent {
            occurred_at_ms: required(event.occurred_at_ms, "occurred_at_ms")?,
            source: required(event.text(SOURCE), "source")?.to_owned(),
            event_id: required(event.text(EVENT_ID), "event_id")?.to_owned(),
            kind: required(event.text(TYPE), "type")?.to_owned(),
            email: if has_contact_id { Member::Missing } else { owned(&event.texts[EMAIL]) },
            contact_id,
            url: owned(&event.texts[URL]),
            properties: match event.properties {
                Member::Missing => Member::Missing,
                Member::Null => Member::Null,
                Member::Value(properties) => Member::Value(properties.into_owned()),
            },
            seniority: owned(&event.texts[SENIORITY]),
        })
    }

    /// Whom it counts for: its contact id, else its email (processors.scoring.apply_event).
    pub(crate) fn contact(&self) -> Option<&str> {
        [&self.contact_id, &self.email].into_iter().filter_map(|m| m.value()).map(String::as_str).find(|c| !c.is_empty())
    }

    /// The order held events are applied in (processors.scoring.HELD_ORDER).
    pub(crate) fn held_order(&self) -> (i64, &str, &str) {
        (self.occurred_at_ms, &self.source, &self.event_id)
    }

    pub(crate) fn property(&self, name: &str) -> Option<&Json<'static>> {
        self.properties.value().and_then(|p| p.get(name))
    }

    pub(crate) fn write(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(b"{\"event_id\":");
        write_string(&self.event_id, out);
        out.extend_from_slice(b",\"source\":");
        write_string(&self.source, out);
        out.extend_from_slice(b",\"type\":");
        write_string(&self.kind, out);
        let _ = write!(out, ",\"occurred_at_ms\":{}", self.occurred_at_ms);
        for (name, member) in [("contact_id", &self.contact_id), ("email", &self.email), ("url", &self.url)] {
            write_text_member(name, member, out);
        }
        match &self.properties {
            Member::Missing => {}
            Member::Null => out.extend_from_slice(b",\"properties\":null"),
            Member::Value(properties) => {
                out.extend_from_slice(b",\"properties\":");
                write_json(properties, out);
            }
        }
        write_text_member("_seniority", &self.seniority, out);
        out.push(b'}');
    }
}

fn write_text_member(name: &str, member: &Member<String>, out: &mut Vec<u8>) {
    match member {
        Member::Missing => {}
        Member::Null => {
            let _ = write!(out, ",\"{name}\":null");
        }
        Member::Value(text) => {
            let _ = write!(out, ",\"{name}\":");
            write_string(text, out);
        }
    }
}

#[derive(Default)]
pub(crate) struct AccountState {
    pub(crate) account_id: String,
    pub(crate) score: f64,
    pub(crate) score_at_ms: i64,
    pub(crate) events_total: i64,
    pub(crate) counts: IndexMap<String, i64>,
    pub(crate) contacts: IndexMap<String, i64>, // contact -> last engaged (ms)
    pub(crate) first_event_ms: i64,
    pub(crate) last_event_ms: i64,
    pub(crate) last_high_intent_ms: i64,
    pub(crate) stage: usize, // index in STAGES
    pub(crate) stage_since_ms: i64,
    pub(crate) applied_upto: (i64, i64),
    pub(crate) origin_upto: IndexMap<String, i64>,
    pub(crate) recent_ids: RecentIds,
    pub(crate) prune_ids_at: usize,
    pub(crate) last_engaged_ms: i64,
    pub(crate) daily: IndexMap<i64, IndexMap<String, i64>>,
    pub(crate) capped: IndexMap<String, Vec<(i64, f64)>>, // "day|type|contact" -> counted (ms, weight)
    pub(crate) pruned_day: i64,
    pub(crate) opportunities: IndexMap<String, [i64; 3]>, // id -> [ms of latest change, closed, won]
    pub(crate) won_at_ms: i64,
    pub(crate) as_of_ms: i64,
    pub(crate) fallback_at_ms: i64,
    pub(crate) stage_reason: String,
    pub(crate) latest_seen_ms: i64,
    pub(crate) held: Vec<AppliedEvent>, // in HELD_ORDER
    pub(crate) held_segments: Vec<[i64; 3]>, // [earliest event time, number, events]
    pub(crate) next_segment: i64,
    pub(crate) released_segments: Vec<i64>,
}

/// (account, fall-back time (0: none), earliest held event time (0: none), latest event time seen)
pub(crate) type Timing = (String, i64, i64, i64);

impl AccountState {
    pub(crate) fn new(account_id: &str) -> Self {
        AccountState { account_id: account_id.to_owned(), applied_upto: (-1, -1), ..Default::default() }
    }

    pub(crate) fn first_held_ms(&self) -> i64 {
        let in_memory = self.held.first().map_or(0, |event| event.occurred_at_ms);
        std::iter::once(in_memory).chain(self.held_segments.iter().map(|segment| segment[0])).filter(|at| *at != 0).min().unwrap_or(0)
    }

    pub(crate) fn held_count(&self) -> i64 {
        self.held.len() as i64 + self.held_segments.iter().map(|segment| segment[2]).sum::<i64>()
    }

    pub(crate) fn timing(&self) -> Timing {
        (self.account_id.clone(), self.fallback_at_ms, self.first_held_ms(), self.latest_seen_ms)
    }

    /// AccountState.to_bytes, uncompressed.
    pub(crate) fn stored_json(&mut self) -> Vec<u8> {
        let mut out = Vec::with_capacity(1024);
        out.extend_from_slice(b"{\"account_id\":");
        write_string(&self.account_id, &mut out);
        out.extend_from_slice(b",\"score\":");
        write_float(self.score, &mut out);
        let _ = write!(out, ",\"score_at_ms\":{},\"events_total\":{},\"counts\":", self.score_at_ms, self.events_total);
        write_counts(&self.counts, &mut out);
        out.extend_from_slice(b",\"contacts\":");
        write_counts(&self.contacts, &mut out);
        let _ = write!(
            out,
            ",\"first_event_ms\":{},\"last_event_ms\":{},\"last_high_intent_ms\":{},\"stage\":\"{}\",\"stage_since_ms\":{},\"applied_upto\":[{},{}],\"origin_upto\":",
            self.first_event_ms, self.last_event_ms, self.last_high_intent_ms, STAGES[self.stage], self.stage_since_ms, self.applied_upto.0, self.applied_upto.1
        );
        write_counts(&self.origin_upto, &mut out);
        out.extend_from_slice(b",\"recent_ids\":");
        write_string(&self.recent_ids.packed(), &mut out);
        let _ = write!(out, ",\"prune_ids_at\":{},\"last_engaged_ms\":{},\"daily\":[", self.prune_ids_at, self.last_engaged_ms);
        for (i, (day, counts)) in self.daily.iter().enumerate() {
            let _ = write!(out, "{}[{day},", if i > 0 { "," } else { "" });
            write_counts(counts, &mut out);
            out.push(b']');
        }
        out.extend_from_slice(b"],\"capped\":{");
        for (i, (key, counted)) in self.capped.iter().enumerate() {
            if i > 0 {
                out.push(b',');
            }
            write_string(key, &mut out);
            out.extend_from_slice(b":[");
            for (j, (at, weight)) in counted.iter().enumerate() {
                let _ = write!(out, "{}[{at},", if j > 0 { "," } else { "" });
                write_float(*weight, &mut out);
                out.push(b']');
            }
            out.push(b']');
        }
        let _ = write!(out, "}},\"pruned_day\":{},\"opportunities\":{{", self.pruned_day);
        for (i, (id, [at, closed, won])) in self.opportunities.iter().enumerate() {
            if i > 0 {
                out.push(b',');
            }
            write_string(id, &mut out);
            let _ = write!(out, ":[{at},{closed},{won}]");
        }
        let _ = write!(out, "}},\"won_at_ms\":{},\"as_of_ms\":{},\"fallback_at_ms\":{},\"stage_reason\":", self.won_at_ms, self.as_of_ms, self.fallback_at_ms);
        write_string(&self.stage_reason, &mut out);
        let _ = write!(out, ",\"latest_seen_ms\":{},\"held\":", self.latest_seen_ms);
        write_events(&self.held, &mut out);
        out.extend_from_slice(b",\"held_segments\":[");
        for (i, [at, number, events]) in self.held_segments.iter().enumerate() {
            let _ = write!(out, "{}[{at},{number},{events}]", if i > 0 { "," } else { "" });
        }
        let _ = write!(out, "],\"next_segment\":{},\"released_segments\":[", self.next_segment);
        for (i, number) in self.released_segments.iter().enumerate() {
            let _ = write!(out, "{}{number}", if i > 0 { "," } else { "" });
        }
        out.extend_from_slice(b"]}");
        out
    }

    /// AccountState.from_bytes, from the JSON (uncompressed).
    pub(crate) fn from_json(raw: &[u8]) -> Result<Self, String> {
        let mut reader = serde_json::Deserializer::from_slice(raw);
        reader.disable_recursion_limit();
        let stored = StoredState::deserialize(&mut reader).map_err(|e| format!("a stored account state is not one: {e}"))?;
        stored.into_state()
    }
}

fn write_counts<K: fmt::Display>(counts: &IndexMap<K, i64>, out: &mut Vec<u8>) {
    out.push(b'{');
    for (i, (key, n)) in counts.iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        write_string(&key.to_string(), out);
        let _ = write!(out, ":{n}");
    }
    out.push(b'}');
}

/// Events as a JSON array (a state's held events, a held segment).
pub(crate) fn write_events<'e>(events: impl IntoIterator<Item = &'e AppliedEvent>, out: &mut Vec<u8>) {
    out.push(b'[');
    for (i, event) in events.into_iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        event.write(out);
    }
    out.push(b']');
}

/// A held event as stored: the event (its applied part), or as states of session 11 held
/// them, [event time, source, event id, the event].
struct StoredHeld<'a>(ForwardedEvent<'a>);

impl<'de: 'a, 'a> Deserialize<'de> for StoredHeld<'a> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct HeldVisitor;
        impl<'de> Visitor<'de> for HeldVisitor {
            type Value = StoredHeld<'de>;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a held event")
            }
            fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<Self::Value, A::Error> {
                ForwardedEvent::deserialize(MapAccessDeserializer::new(map)).map(StoredHeld)
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
                let missing = || de::Error::custom("a held event as [time, source, id, event] lacks its event");
                seq.next_element::<de::IgnoredAny>()?.ok_or_else(missing)?;
                seq.next_element::<de::IgnoredAny>()?.ok_or_else(missing)?;
                seq.next_element::<de::IgnoredAny>()?.ok_or_else(missing)?;
                let event = seq.next_element::<ForwardedEvent<'de>>()?.ok_or_else(missing)?;
                while seq.next_element::<de::IgnoredAny>()?.is_some() {}
                Ok(StoredHeld(event))
            }
        }
        deserializer.deserialize_any(HeldVisitor)
    }
}

/// A segment's events (its JSON, uncompressed).
pub(crate) fn held_events_of(raw: &[u8]) -> Result<Vec<AppliedEvent>, String> {
    let mut reader = serde_json::Deserializer::from_slice(raw);
    reader.disable_recursion_limit();
    let events = Vec::<StoredHeld>::deserialize(&mut reader).map_err(|e| format!("a held segment is not a JSON array of events: {e}"))?;
    events.into_iter().map(|StoredHeld(event)| AppliedEvent::from_event(event)).collect()
}

fn stage_named(name: &str) -> Result<usize, String> {
    STAGES.iter().position(|stage| *stage == name).ok_or_else(|| format!("a stored account state has an unknown stage {name:?}"))
}

fn int_keyed<T>(members: Vec<(Cow<'_, str>, T)>, what: &str) -> Result<Vec<(i64, T)>, String> {
    members.into_iter().map(|(key, value)| key.parse().map(|key| (key, value)).map_err(|_| format!("{what} has a key {key:?} that is not an integer"))).collect()
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct StoredState<'a> {
    account_id: String,
    #[serde(default)]
    score: f64,
    #[serde(default)]
    score_at_ms: i64,
    #[serde(default)]
    events_total: i64,
    #[serde(default)]
    counts: IndexMap<String, i64>,
    #[serde(default)]
    contacts: IndexMap<String, i64>,
    #[serde(default)]
    first_event_ms: i64,
    #[serde(default)]
    last_event_ms: i64,
    #[serde(default)]
    last_high_intent_ms: i64,
    #[serde(default)]
    stage: Option<String>,
    #[serde(default)]
    stage_since_ms: i64,
    #[serde(default)]
    applied_upto: Option<(i64, i64)>,
    #[serde(default)]
    origin_upto: IndexMap<String, i64>,
    #[serde(default, borrow)]
    recent_ids: Option<Json<'a>>, // packed (a string), or {id: time} as states before session 9 kept them
    #[serde(default)]
    prune_ids_at: usize,
    last_engaged_ms: Option<i64>,
    #[serde(default, borrow)]
    daily: Option<Json<'a>>, // [[day, counts]...], or {day: counts}
    #[serde(default)]
    capped: IndexMap<String, Vec<(i64, f64)>>,
    #[serde(default)]
    pruned_day: i64,
    #[serde(default)]
    opportunities: IndexMap<String, [i64; 3]>,
    #[serde(default)]
    won_at_ms: i64,
    as_of_ms: Option<i64>,
    #[serde(default)]
    fallback_at_ms: i64,
    #[serde(default)]
    stage_reason: String,
    latest_seen_ms: Option<i64>,
    #[serde(default, borrow)]
    held: Vec<StoredHeld<'a>>,
    #[serde(default)]
    held_segments: Vec<[i64; 3]>,
    #[serde(default)]
    next_segment: i64,
    #[serde(default)]
    released_segments: Vec<i64>,
}

fn counts_of(value: Json<'_>, what: &str) -> Result<IndexMap<String, i64>, String> {
    let Json::Object(members) = value else { return Err(format!("{what} is not an object")) };
    members
        .into_iter()
        .map(|(key, n)| match n {
            Json::Int(n) => Ok((key.into_owned(), n)),
            Json::UInt(n) => i64::try_from(n).map(|n| (key.into_owned(), n)).map_err(|_| format!("{what} holds a count out of range")),
            _ => Err(format!("{what} holds a count that is not an integer")),
        })
        .collect()
}

fn integer(value: &Json<'_>, what: &str) -> Result<i64, String> {
    match value {
        Json::Int(n) => Ok(*n),
        Json::UInt(n) => i64::try_from(*n).map_err(|_| format!("{what} is out of range")),
        _ => Err(format!("{what} is not an integer")),
    }
}

impl StoredState<'_> {
    fn into_state(self) -> Result<AccountState, String> {
        let recent_ids = match self.recent_ids {
            None => RecentIds::default(),
            Some(Json::Text(packed)) => RecentIds::unpacked(&packed)?,
            Some(Json::Object(members)) => {
                let pairs = int_keyed(members, "recent_ids")?;
                RecentIds::from_pairs(pairs.into_iter().map(|(key, at)| integer(&at, "a recent id's time").map(|at| (key as u64, at))).collect::<Result<Vec<_>, _>>()?)
            }
            Some(_) => return Err("recent_ids is neither packed nor an object".to_owned()),
        };
        let daily = match self.daily {
            None => IndexMap::new(),
            Some(Json::List(days)) => days
                .into_iter()
                .map(|day| match day {
                    Json::List(pair) if pair.len() == 2 => {
                        let mut pair = pair.into_iter();
                        let day = integer(&pair.next().expect("2"), "a day of daily")?;
                        Ok((day, counts_of(pair.next().expect("2"), "a day's counts")?))
                    }
                    _ => Err("daily holds an entry that is not [day, counts]".to_owned()),
                })
                .collect::<Result<_, String>>()?,
            Some(Json::Object(members)) => int_keyed(members, "daily")?.into_iter().map(|(day, counts)| Ok((day, counts_of(counts, "a day's counts")?))).collect::<Result<_, String>>()?,
            Some(_) => return Err("daily is neither a list nor an object".to_owned()),
        };
        Ok(AccountState {
            account_id: self.account_id,
            score: self.score,
            score_at_ms: self.score_at_ms,
            events_total: self.events_total,
            counts: self.counts,
            contacts: self.contacts,
            first_event_ms: self.first_event_ms,
            last_event_ms: self.last_event_ms,
            last_high_intent_ms: self.last_high_intent_ms,
            stage: self.stage.map_or(Ok(TARGET), |name| stage_named(&name))?,
            stage_since_ms: self.stage_since_ms,
            applied_upto: self.applied_upto.unwrap_or((-1, -1)),
            origin_upto: self.origin_upto,
            recent_ids,
            prune_ids_at: self.prune_ids_at,
            last_engaged_ms: self.last_engaged_ms.unwrap_or(self.last_event_ms),
            daily,
            capped: self.capped,
            pruned_day: self.pruned_day,
            opportunities: self.opportunities,
            won_at_ms: self.won_at_ms,
            as_of_ms: self.as_of_ms.unwrap_or(self.last_event_ms),
            fallback_at_ms: self.fallback_at_ms,
            stage_reason: self.stage_reason,
            latest_seen_ms: self.latest_seen_ms.unwrap_or(self.last_event_ms),
            held: self.held.into_iter().map(|StoredHeld(event)| AppliedEvent::from_event(event)).collect::<Result<_, _>>()?,
            held_segments: self.held_segments,
            next_segment: self.next_segment,
            released_segments: self.released_segments,
        })
    }
}
