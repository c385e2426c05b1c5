//! Strings a client supplies and the gateway keeps (user names as failed-login keys, appNames
//! for logs and metric labels) are kept only up to a bound, cut on a character boundary: one
//! helper, so every such copy is bounded the same way.

/// The longest prefix of `s` of at most `max` bytes that ends on a character boundary.
pub fn bounded_prefix(s: &str, max: usize) -> &str {
    let mut end = s.len().min(max);
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cuts_on_a_character_boundary() {
        assert_eq!(bounded_prefix("abc", 10), "abc");
        assert_eq!(bounded_prefix("abc", 2), "ab");
        // "é" is two bytes: a cut in its middle moves back before it.
        assert_eq!(bounded_prefix("aé", 2), "a");
        assert_eq!(bounded_prefix("", 0), "");
    }
}
