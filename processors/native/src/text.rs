//! Keys built for every event (the directory's contact keys, capped days): joined
//! without format!'s machinery (~7 % of the fold's and routing's samples in a profile).

/// The parts as one string.
pub(crate) fn joined(parts: &[&str]) -> String {
    let mut text = String::with_capacity(parts.iter().map(|p| p.len()).sum());
    for part in parts {
        text.push_str(part);
    }
    text
}
