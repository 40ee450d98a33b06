//! Funnel stages as processors.stages defines them (the definition, with the reasons):
//! the account's signals, when each stage's condition lapses, moves and fall-backs.

use pyo3::FromPyObject;
use std::collections::HashSet;

use crate::json::Json;
use crate::scoring::{engaged_contacts, score_at, ScoringConfig, DAY_MS};
use crate::state::{AccountState, AppliedEvent, AWARENESS, CONSIDERATION, CUSTOMER, DECISION, STAGES, TARGET};

/// processors.stages.StageRules.
#[derive(FromPyObject)]
pub(crate) struct StageRules {
    pub(crate) awareness_window_ms: i64,
    pub(crate) consideration_min_score: f64,
    pub(crate) consideration_min_contacts: usize,
    pub(crate) contacts_window_ms: i64,
    pub(crate) decision_intent_window_ms: i64,
    pub(crate) intent_event_types: HashSet<String>,
    pub(crate) intent_url_patterns: Vec<String>,
    pub(crate) intent_form_keywords: Vec<String>,
    pub(crate) open_opportunity_decides: bool,
    pub(crate) dwell_ms: i64,
}

/// processors.stages.StageTransition.
pub(crate) struct StageTransition {
    pub(crate) account_id: String,
    pub(crate) from_stage: &'static str,
    pub(crate) to_stage: &'static str,
    pub(crate) at_ms: i64,
    pub(crate) score: f64,
    pub(crate) event_id: String, // "" for a fall-back as time passed
    pub(crate) reason: String,
}

/// A property as Python's f-string shows it ("" when missing).
fn shown(value: Option<&Json<'_>>) -> String {
    match value {
        None => String::new(),
        Some(Json::Null) => "None".to_owned(),
        Some(Json::Text(text)) => text.to_string(),
        Some(Json::Bool(b)) => (if *b { "True" } else { "False" }).to_owned(),
        Some(Json::Int(n)) => n.to_string(),
        Some(Json::UInt(n)) => n.to_string(),
        Some(other) => {
            let mut out = Vec::new();
            crate::json::write_json(other, &mut out);
            String::from_utf8_lossy(&out).into_owned()
        }
    }
}

fn is_high_intent(event: &AppliedEvent, rules: &StageRules) -> bool {
    if rules.intent_event_types.contains(&event.kind) {
        return true;
    }
    match event.kind.as_str() {
        "page_view" => {
            let url = event.url.value().map_or("", String::as_str);
            rules.intent_url_patterns.iter().any(|pattern| url.contains(pattern.as_str()))
        }
        "form_submitted" => {
            let ids = format!("{} {}", shown(event.property("form_id")), shown(event.property("cta_id"))).to_lowercase();
            rules.intent_form_keywords.iter().any(|keyword| ids.contains(keyword.as_str()))
        }
        _ => false,
    }
}

/// Records what stages look at beyond engagement; true when the event was one.
pub(crate) fn note_signals(state: &mut AccountState, event: &AppliedEvent, rules: &StageRules) -> Result<bool, String> {
    let at = event.occurred_at_ms;
    if event.kind == "opportunity_stage_changed" {
        let closed = matches!(event.property("is_closed"), Some(Json::Bool(true)));
        let won = closed && matches!(event.property("is_won"), Some(Json::Bool(true)));
        let change = [at, closed as i64, won as i64]; // on equal times a close wins, in any order
        let id = match event.property("opportunity_id") {
            Some(Json::Text(id)) => id.to_string(),
            _ => return Err(format!("event {:?} changes an opportunity without an opportunity_id", event.event_id)),
        };
        if state.opportunities.get(&id).is_none_or(|known| change > *known) {
            state.opportunities.insert(id, change);
        }
        if won && (state.won_at_ms == 0 || at < state.won_at_ms) {
            state.won_at_ms = at;
        }
        return Ok(true);
    }
    if is_high_intent(event, rules) {
        state.last_high_intent_ms = state.last_high_intent_ms.max(at);
        return Ok(true);
    }
    Ok(false)
}

/// Whether an event can qualify the account for a higher stage.
pub(crate) fn may_move_up(state: &AccountState, weight: f64, signal: bool, rules: &StageRules) -> bool {
    if signal {
        return true;
    }
    if weight <= 0.0 {
        return false;
    }
    if state.stage == AWARENESS {
        return state.contacts.len() >= rules.consideration_min_contacts && state.score >= rules.consideration_min_score;
    }
    state.stage == TARGET
}

fn has_open_opportunity(state: &AccountState) -> bool {
    state.opportunities.values().any(|[_, closed, _]| *closed == 0)
}

/// Per stage, until when its own condition holds without new events (-inf: not now).
fn holds_until(state: &AccountState, at_ms: i64, rules: &StageRules, config: &ScoringConfig) -> [f64; 5] {
    const FOREVER: f64 = f64::INFINITY;
    const NEVER: f64 = f64::NEG_INFINITY;
    let awareness = if state.last_engaged_ms != 0 { (state.last_engaged_ms + rules.awareness_window_ms) as f64 } else { NEVER };
    let score = score_at(state, at_ms, config);
    let score_until = if rules.consideration_min_score <= 0.0 {
        FOREVER
    } else if score >= rules.consideration_min_score {
        at_ms as f64 + config.half_life_ms * (score / rules.consideration_min_score).log2()
    } else {
        NEVER
    };
    let needed = rules.consideration_min_contacts;
    let contacts_until = if needed == 0 {
        FOREVER
    } else if state.contacts.len() >= needed {
        let mut lasts: Vec<i64> = state.contacts.values().copied().collect();
        lasts.sort_unstable_by(|a, b| b.cmp(a));
        (lasts[needed - 1] + rules.contacts_window_ms) as f64
    } else {
        NEVER
    };
    let consideration = score_until.min(contacts_until);
    let intent = if state.last_high_intent_ms != 0 { (state.last_high_intent_ms + rules.decision_intent_window_ms) as f64 } else { NEVER };
    let mut decision = consideration.min(intent);
    if rules.open_opportunity_decides && has_open_opportunity(state) {
        decision = FOREVER;
    }
    let customer = if state.won_at_ms != 0 { FOREVER } else { NEVER };
    [FOREVER, awareness, consideration, decision, customer]
}

/// Evaluates the account at ``at_ms``, moves it when it should, and schedules its next
/// fall-back.
pub(crate) fn restage(state: &mut AccountState, at_ms: i64, event_id: &str, rules: &StageRules, config: &ScoringConfig) -> Option<StageTransition> {
    let until = holds_until(state, at_ms, rules, config);
    let mut qualified = CUSTOMER;
    while until[qualified] < at_ms as f64 {
        qualified -= 1;
    }
    let mut current = state.stage;
    let mut transition = None;
    if qualified > current || (qualified < current && at_ms >= state.stage_since_ms + rules.dwell_ms) {
        let score = score_at(state, at_ms, config);
        let mut reason = stage_reason(state, qualified, at_ms, rules);
        if qualified < current {
            reason = format!("{} lapsed; {reason}", STAGES[current]);
        }
        transition = Some(StageTransition {
            account_id: state.account_id.clone(),
            from_stage: STAGES[current],
            to_stage: STAGES[qualified],
            at_ms,
            score,
            event_id: event_id.to_owned(),
            reason: reason.clone(),
        });
        state.stage = qualified;
        state.stage_since_ms = at_ms;
        state.stage_reason = reason;
        current = qualified;
    }
    let lasts = until[current..].iter().copied().fold(f64::NEG_INFINITY, f64::max);
    if lasts == f64::INFINITY {
        state.fallback_at_ms = 0;
    } else {
        let lapses = if lasts == f64::NEG_INFINITY { at_ms } else { lasts.floor() as i64 + 1 };
        state.fallback_at_ms = lapses.max(state.stage_since_ms + rules.dwell_ms);
    }
    state.as_of_ms = at_ms;
    transition
}

/// Applies every fall-back due at or before ``at_ms``, each at its own time.
pub(crate) fn fall_back_until(state: &mut AccountState, at_ms: i64, rules: &StageRules, config: &ScoringConfig, transitions: &mut Vec<StageTransition>) {
    while 0 < state.fallback_at_ms && state.fallback_at_ms <= at_ms {
        if let Some(transition) = restage(state, state.fallback_at_ms, "", rules, config) {
            transitions.push(transition);
        }
    }
}

fn stage_reason(state: &AccountState, rank: usize, at_ms: i64, rules: &StageRules) -> String {
    match rank {
        CUSTOMER => "closed-won opportunity".to_owned(),
        DECISION if rules.open_opportunity_decides && has_open_opportunity(state) => "open opportunity".to_owned(),
        DECISION => format!("high-intent signal within {} days", days(rules.decision_intent_window_ms)),
        CONSIDERATION => format!(
            "score at least {} and {} engaged contacts within {} days",
            general(rules.consideration_min_score),
            engaged_contacts(state, at_ms, rules.contacts_window_ms),
            days(rules.contacts_window_ms)
        ),
        AWARENESS => format!("engaged within {} days", days(rules.awareness_window_ms)),
        _ => format!("no engagement within {} days", days(rules.awareness_window_ms)),
    }
}

fn days(ms: i64) -> String {
    general(ms as f64 / DAY_MS as f64)
}

/// Python's format(value, "g"): six significant digits, trailing zeros dropped,
/// scientific below 1e-4 and from 1e6.
pub(crate) fn general(value: f64) -> String {
    if !value.is_finite() {
        return if value.is_nan() { "nan".to_owned() } else if value > 0.0 { "inf".to_owned() } else { "-inf".to_owned() };
    }
    let scientific = format!("{value:.5e}");
    let (mantissa, exponent) = scientific.split_once('e').expect("an exponent");
    let exponent: i32 = exponent.parse().expect("an integer exponent");
    let trimmed = |digits: &str| -> String {
        if digits.contains('.') {
            digits.trim_end_matches('0').trim_end_matches('.').to_owned()
        } else {
            digits.to_owned()
        }
    };
    if (-4..6).contains(&exponent) {
        trimmed(&format!("{value:.*}", (5 - exponent) as usize))
    } else {
        format!("{}e{}{:02}", trimmed(mantissa), if exponent < 0 { '-' } else { '+' }, exponent.abs())
    }
}
