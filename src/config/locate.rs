//! Pointing at a spot in a policy file: the dotted key at a byte offset (for serde errors,
//! which carry only a span) and the file's fingerprint (its version). Pure.

/// Best-effort dotted key for a byte offset: the enclosing `[table]` / `[[array]]` header
/// (array tables numbered from 0), the key on that line, and the inner key of an inline
/// table when the offset points at one. `None` when the offset is not under a key.
pub fn key_path_at(src: &str, offset: usize) -> Option<String> {
    let offset = offset.min(src.len());
    let line_start = src[..offset].rfind('\n').map(|i| i + 1).unwrap_or(0);
    let line_end = src[offset..]
        .find('\n')
        .map(|i| offset + i)
        .unwrap_or(src.len());
    let line = &src[line_start..line_end];

    // Enclosing header: scan earlier lines, counting array-table repeats.
    let mut table: Option<String> = None;
    let mut counts: std::collections::HashMap<String, usize> = Default::default();
    for l in src[..line_start].lines() {
        let t = l.trim();
        if let Some(name) = t.strip_prefix("[[").and_then(|r| r.split("]]").next()) {
            let name = name.trim().to_string();
            let n = counts.entry(name.clone()).or_insert(0);
            table = Some(format!("{name}[{n}]"));
            *n += 1;
        } else if let Some(name) = t.strip_prefix('[').and_then(|r| r.split(']').next()) {
            table = Some(name.trim().to_string());
        }
    }
    let trimmed = line.trim();
    if trimmed.starts_with('[') {
        // The error is on a header line itself.
        return trimmed
            .trim_matches(|c| c == '[' || c == ']')
            .split('.')
            .next()
            .map(|s| s.trim().to_string());
    }
    let line_key = line
        .split('=')
        .next()
        .map(str::trim)
        .filter(|k| !k.is_empty() && !k.starts_with('#'))?;
    let word: String = src[offset..line_end]
        .chars()
        .take_while(|c| c.is_ascii_alphanumeric() || *c == '_' || *c == '-')
        .collect();
    let word_is_key = !word.is_empty()
        && src[offset + word.len()..line_end]
            .trim_start()
            .starts_with('=');
    let mut path = table.map(|t| format!("{t}.")).unwrap_or_default();
    path.push_str(line_key);
    if word_is_key && word != line_key {
        path.push('.');
        path.push_str(&word);
    }
    Some(path)
}

/// FNV-1a 64: tiny, stable across builds and platforms (unlike `DefaultHasher`).
pub fn fingerprint(bytes: &[u8]) -> String {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in bytes {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    format!("{h:016x}")
}
