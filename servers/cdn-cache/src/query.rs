//! Query-string parameters of the admin endpoints (origin controls, cache purges).

/// Percent-decodes a query value (`+` is a literal plus: keys are paths).
pub(crate) fn percent_decode(s: &str) -> Option<String> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' {
            let hex = std::str::from_utf8(b.get(i + 1..i + 3)?).ok()?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

/// The decoded value of query parameter `name`; `Err` names a bad encoding.
pub(crate) fn param(query: Option<&str>, name: &str) -> Result<Option<String>, String> {
    let Some(q) = query else { return Ok(None) };
    for kv in q.split('&') {
        let (k, v) = kv.split_once('=').unwrap_or((kv, ""));
        if k == name {
            return percent_decode(v)
                .map(Some)
                .ok_or_else(|| format!("{name}: bad percent-encoding"));
        }
    }
    Ok(None)
}
