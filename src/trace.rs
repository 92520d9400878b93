//! W3C Trace Context without I/O: reads a client's `traceparent`, continues its trace with a
//! span of this worker's own (or starts a new trace when the header is absent or invalid), and
//! writes the `traceparent` sent to inference origins. Randomness is passed in.
use std::fmt::Write;

/// The trace one request belongs to, and this worker's span in it.
#[derive(Debug, Clone, PartialEq)]
pub struct TraceContext {
    trace_id: [u8; 16],
    span_id: [u8; 8],
    /// The caller's `sampled` flag; our own traces are sampled (every request is logged).
    sampled: bool,
}

impl TraceContext {
    /// Continues the trace in `header` when it is a valid `traceparent`, else starts a new one.
    /// Either way the span id is new: the caller's span is our parent, not us.
    pub fn continue_or_start(
        header: Option<&str>,
        random: &mut impl FnMut() -> u64,
    ) -> TraceContext {
        let span_id = nonzero_u64(random).to_be_bytes();
        match header.and_then(parse) {
            Some((trace_id, flags)) => TraceContext {
                trace_id,
                span_id,
                sampled: flags & 1 == 1,
            },
            None => {
                let mut trace_id = [0; 16];
                trace_id[..8].copy_from_slice(&random().to_be_bytes());
                trace_id[8..].copy_from_slice(&nonzero_u64(random).to_be_bytes());
                TraceContext {
                    trace_id,
                    span_id,
                    sampled: true,
                }
            }
        }
    }

    pub fn trace_id(&self) -> String {
        hex(&self.trace_id)
    }

    /// The header for a request this worker makes: same trace, our span as the parent. Only the
    /// flag version 00 defines (sampled) is passed on.
    pub fn traceparent(&self) -> String {
        format!(
            "00-{}-{}-{:02x}",
            hex(&self.trace_id),
            hex(&self.span_id),
            u8::from(self.sampled)
        )
    }
}

fn nonzero_u64(random: &mut impl FnMut() -> u64) -> u64 {
    random().max(1)
}

fn hex(bytes: &[u8]) -> String {
    let mut out = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        let _ = write!(out, "{b:02x}");
    }
    out
}

/// Lowercase hex of exactly `N` bytes.
fn unhex<const N: usize>(text: &str) -> Option<[u8; N]> {
    let digits = text.as_bytes();
    if digits.len() != 2 * N
        || !digits
            .iter()
            .all(|d| matches!(d, b'0'..=b'9' | b'a'..=b'f'))
    {
        return None;
    }
    let mut out = [0; N];
    for (i, pair) in digits.chunks(2).enumerate() {
        out[i] = u8::from_str_radix(std::str::from_utf8(pair).ok()?, 16).ok()?;
    }
    Some(out)
}

/// `version-traceid-parentid-flags` per the W3C recommendation: lowercase hex only, no all-zero
/// ids, version `ff` invalid; version 00 is exactly 55 characters, while a later version may
/// append `-`-separated fields, which are ignored. Returns the trace id and the flags.
fn parse(header: &str) -> Option<([u8; 16], u8)> {
    let version = unhex::<1>(header.get(..2)?)?[0];
    let fixed = header.get(..55)?;
    let rest = &header[55..];
    if version == 0xff
        || (version == 0 && !rest.is_empty())
        || !(rest.is_empty() || rest.starts_with('-'))
    {
        return None;
    }
    let mut fields = fixed.split('-');
    let (_, trace, parent, flags) = (
        fields.next()?,
        fields.next()?,
        fields.next()?,
        fields.next()?,
    );
    let trace_id = unhex::<16>(trace)?;
    let parent_id = unhex::<8>(parent)?;
    let flags = unhex::<1>(flags)?[0];
    if trace_id == [0; 16] || parent_id == [0; 8] {
        return None;
    }
    Some((trace_id, flags))
}

#[cfg(test)]
mod tests {
    use super::*;

    const VALID: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

    fn counter() -> impl FnMut() -> u64 {
        let mut n = 0x1000;
        move || {
            n += 1;
            n
        }
    }

    #[test]
    fn continues_a_valid_trace_with_a_new_span() {
        let t = TraceContext::continue_or_start(Some(VALID), &mut counter());
        assert_eq!(t.trace_id(), "4bf92f3577b34da6a3ce929d0e0e4736");
        let sent = t.traceparent();
        assert_eq!(
            sent,
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000001001-01"
        );
        let unsampled = VALID.replace("-01", "-00");
        assert!(
            TraceContext::continue_or_start(Some(&unsampled), &mut counter())
                .traceparent()
                .ends_with("-00")
        );
        // Unknown flags are not passed on; a later version's extra fields are ignored.
        let future =
            "cc-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-09-what-the-future-holds";
        let t = TraceContext::continue_or_start(Some(future), &mut counter());
        assert_eq!(
            t.traceparent(),
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000001001-01"
        );
    }

    #[test]
    fn anything_invalid_starts_a_new_trace() {
        let bad = [
            "",
            "00",
            "junk",
            &VALID.to_uppercase(),
            &VALID.replace("4bf92f3577b34da6a3ce929d0e0e4736", &"0".repeat(32)),
            &VALID.replace("00f067aa0ba902b7", &"0".repeat(16)),
            &VALID.replacen("00-", "ff-", 1),
            &format!("{VALID}-extra"),
            &format!("{VALID}\r\nx-evil: 1"),
            &VALID[..54],
            &VALID.replace('-', "_"),
            "00-4bf92f3577b34da6a3ce929d0e0e473g-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e47361-0f067aa0ba902b7-01",
            "cc-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01x",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-é1",
        ];
        for header in bad {
            let t = TraceContext::continue_or_start(Some(header), &mut counter());
            assert_eq!(
                t.trace_id(),
                "00000000000010020000000000001003",
                "{header:?}"
            );
        }
        let t = TraceContext::continue_or_start(None, &mut || 0);
        assert_eq!(
            t.traceparent(),
            "00-00000000000000000000000000000001-0000000000000001-01",
            "never all-zero ids"
        );
    }
}
