//! Durations, sizes, `host:port` and hex, as people write and read them.
//!
//! Every layer speaks to people in the same units — the link says how long
//! a transport was silent, the relay how long it keeps a session, the client
//! which relay it pins — so these helpers belong to no layer's front end.
//! Pure: no I/O, no clock.

use std::time::Duration;

/// Parses a duration like `90s`, `10m`, `12h`, `1h30m`, `500ms`; a bare
/// number is seconds.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    if let Ok(secs) = text.parse::<u64>() {
        return Ok(Duration::from_secs(secs));
    }
    humantime::parse_duration(text).map_err(|e| format!("{e} (examples: 90s, 10m, 12h, 500ms)"))
}

/// `n` things in words: `1 session`, `2 sessions`, `0 sessions` (the
/// plural is the word with an `s`).
pub fn count(n: usize, word: &str) -> String {
    if n == 1 {
        format!("1 {word}")
    } else {
        format!("{n} {word}s")
    }
}

/// Renders a duration for people: `12.4s`, `850ms`, `12h`.
pub fn format_duration(d: Duration) -> String {
    let secs = d.as_secs_f64();
    if secs < 1.0 {
        format!("{}ms", d.as_millis())
    } else if secs < 60.0 {
        format!("{secs:.1}s")
    } else {
        humantime::format_duration(Duration::from_secs(d.as_secs())).to_string()
    }
}

/// A duration as [`parse_duration`] reads it back exactly, in the largest
/// unit that divides it: `12h`, `90s`, `1500ms`.
pub fn format_duration_exact(d: Duration) -> String {
    const UNITS: [(&str, u128); 6] = [
        ("h", 3_600_000_000_000),
        ("m", 60_000_000_000),
        ("s", 1_000_000_000),
        ("ms", 1_000_000),
        ("us", 1_000),
        ("ns", 1),
    ];
    let nanos = d.as_nanos();
    let (unit, scale) = UNITS
        .into_iter()
        .find(|(_, scale)| nanos.is_multiple_of(*scale))
        .unwrap_or(("ns", 1));
    format!("{}{unit}", nanos / scale)
}

/// Parses a duration (as [`parse_duration`]) between `min` and `max`.
pub fn parse_duration_within(text: &str, min: Duration, max: Duration) -> Result<Duration, String> {
    let d = parse_duration(text)?;
    if !(min..=max).contains(&d) {
        return Err(format!(
            "must be between {} and {}",
            format_duration_exact(min),
            format_duration_exact(max)
        ));
    }
    Ok(d)
}

/// Parses a byte count like `400MiB`, `1G`, `4096`.
pub fn parse_size(text: &str) -> Result<u64, String> {
    let text = text.trim();
    let split = text
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(text.len());
    let (digits, unit) = text.split_at(split);
    let n: u64 = digits
        .parse()
        .map_err(|_| format!("not a size: {text:?} (examples: 4096, 64K, 400MiB, 2G)"))?;
    let scale: u64 = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "k" | "kb" | "kib" => 1 << 10,
        "m" | "mb" | "mib" => 1 << 20,
        "g" | "gb" | "gib" => 1 << 30,
        "t" | "tb" | "tib" => 1 << 40,
        other => return Err(format!("unknown size unit {other:?} (use K, M, G or T)")),
    };
    n.checked_mul(scale)
        .ok_or_else(|| format!("size too large: {text}"))
}

/// Parses a byte count (as [`parse_size`]) between `min` and `max`.
pub fn parse_size_within(text: &str, min: u64, max: u64) -> Result<u64, String> {
    let size = parse_size(text)?;
    if !(min..=max).contains(&size) {
        return Err(format!(
            "must be between {} and {}",
            format_size_exact(min),
            format_size_exact(max)
        ));
    }
    Ok(size)
}

/// A byte count as [`parse_size`] reads it back exactly, in the largest
/// unit that divides it: `8MiB`, `128KiB`, `1000`.
pub fn format_size_exact(n: u64) -> String {
    const UNITS: [(&str, u32); 4] = [("TiB", 40), ("GiB", 30), ("MiB", 20), ("KiB", 10)];
    match UNITS
        .into_iter()
        .find(|(_, shift)| n != 0 && n.trailing_zeros() >= *shift)
    {
        Some((unit, shift)) => format!("{}{unit}", n >> shift),
        None => n.to_string(),
    }
}

/// Lowercase hex of `bytes`: digests, ids.
pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Renders a byte count for people: `3.1 MiB`.
pub fn format_bytes(n: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut value = n as f64;
    let mut unit = 0;
    while value >= 1024.0 && unit < UNITS.len() - 1 {
        value /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{n} B")
    } else {
        format!("{value:.1} {}", UNITS[unit])
    }
}

/// `host:port`, with an IPv6 address in brackets: `[::1]:7022`.
pub fn host_port(host: &str, port: u16) -> String {
    if host.contains(':') {
        format!("[{host}]:{port}")
    } else {
        format!("{host}:{port}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_and_sizes_parse_as_documented() {
        assert_eq!(parse_duration("90s"), Ok(Duration::from_secs(90)));
        assert_eq!(parse_duration("10m"), Ok(Duration::from_secs(600)));
        assert_eq!(parse_duration("12h"), Ok(Duration::from_secs(12 * 3600)));
        assert_eq!(parse_duration("30"), Ok(Duration::from_secs(30)));
        assert!(parse_duration("soon").is_err());
        assert_eq!(parse_size("400MiB"), Ok(400 << 20));
        assert_eq!(parse_size("2G"), Ok(2 << 30));
        assert_eq!(parse_size("4096"), Ok(4096));
        assert!(parse_size("12 parsecs").is_err());
        assert_eq!(format_duration(Duration::from_millis(12_400)), "12.4s");
        assert_eq!(format_bytes(3_250_586), "3.1 MiB");
    }

    #[test]
    fn exact_durations_and_sizes_read_back_exactly() {
        for d in [2_345, 5_000, 90_000, 600_000, 12 * 3_600_000, 0].map(Duration::from_millis) {
            assert_eq!(parse_duration(&format_duration_exact(d)), Ok(d));
        }
        let d = Duration::from_micros(1_500);
        assert_eq!(parse_duration(&format_duration_exact(d)), Ok(d));
        assert_eq!(format_duration_exact(Duration::from_secs(12 * 3600)), "12h");
        assert_eq!(format_duration_exact(Duration::from_millis(1500)), "1500ms");
        for n in [0, 1000, 64 << 10, 8 << 20, 1 << 30, (1 << 20) + 1] {
            assert_eq!(parse_size(&format_size_exact(n)), Ok(n));
        }
        assert_eq!(format_size_exact(128 << 10), "128KiB");
        assert_eq!(format_size_exact(1 << 30), "1GiB");
    }

    #[test]
    fn bounded_values_parse_within_their_bounds() {
        let (lo, hi) = (Duration::from_millis(500), Duration::from_secs(600));
        assert!(parse_duration_within("1ms", lo, hi).is_err());
        assert_eq!(
            parse_duration_within("2s", lo, hi),
            Ok(Duration::from_secs(2))
        );
        assert_eq!(
            parse_duration_within("11m", lo, hi),
            Err("must be between 500ms and 10m".into())
        );
        assert_eq!(parse_size_within("8MiB", 64 << 10, 1 << 30), Ok(8 << 20));
        assert_eq!(
            parse_size_within("1K", 64 << 10, 1 << 30),
            Err("must be between 64KiB and 1GiB".into())
        );
        assert_eq!(hex(&[0, 0xab, 0x10]), "00ab10");
    }

    #[test]
    fn counts_are_singular_for_one() {
        assert_eq!(count(1, "session"), "1 session");
        assert_eq!(count(0, "session"), "0 sessions");
        assert_eq!(count(2, "handshake"), "2 handshakes");
    }

    #[test]
    fn ipv6_hosts_are_bracketed() {
        assert_eq!(host_port("relay.example", 7022), "relay.example:7022");
        assert_eq!(host_port("::1", 7022), "[::1]:7022");
    }
}
