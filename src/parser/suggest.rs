//! "Did you mean …?" suggestions for misspelled keywords, flags and option values.

/// Levenshtein distance between two strings, counted in characters.
pub fn distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut prev: Vec<usize> = (0..=b.len()).collect();
    let mut cur = vec![0; b.len() + 1];
    for (i, ca) in a.chars().enumerate() {
        cur[0] = i + 1;
        for (j, cb) in b.iter().enumerate() {
            let cost = usize::from(ca != *cb);
            cur[j + 1] = (prev[j] + cost).min(prev[j + 1] + 1).min(cur[j] + 1);
        }
        std::mem::swap(&mut prev, &mut cur);
    }
    prev[b.len()]
}

/// The candidate closest to `got` (case-insensitively), if it is close enough to be a typo.
pub fn closest<'a>(got: &str, candidates: impl IntoIterator<Item = &'a str>) -> Option<&'a str> {
    let got = got.to_ascii_lowercase();
    if got.is_empty() || got.len() > 64 {
        return None;
    }
    let limit = match got.chars().count() {
        0..=3 => 1,
        4..=6 => 2,
        _ => 3,
    };
    candidates
        .into_iter()
        .map(|c| (distance(&got, &c.to_ascii_lowercase()), c))
        .filter(|(d, _)| *d > 0 && *d <= limit)
        .min_by_key(|(d, _)| *d)
        .map(|(_, c)| c)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn suggestions() {
        assert_eq!(distance("kitten", "sitting"), 3);
        assert_eq!(closest("RUNN", ["RUN", "CMD"]), Some("RUN"));
        assert_eq!(closest("cpy", ["COPY", "ADD"]), Some("COPY"));
        assert_eq!(closest("zzzzzz", ["COPY", "ADD"]), None);
    }
}
