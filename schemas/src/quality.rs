//! The E-model MOS, shared by the fold (agent legs) and the query views (media streams).

/// R0 of the E-model variant ccstream reports (latency = round trip).
pub const R0: f64 = 94.768;

/// MOS from round trip (ms), jitter (ms) and loss (fraction), by the simplified E-model:
/// EL = latency + 2·jitter + 10; R = R0 − EL/40 (EL < 160) or R0 − (EL − 120)/10;
/// R −= 2.5 · loss %; R clamped to [0, 100]; MOS = 1 + 0.035 R + 7e-6 R (R − 60)(100 − R).
/// NULL (NaN) if any input is NULL.
pub fn mos(rtt_ms: f64, jitter_ms: f64, loss: f64) -> f64 {
    if rtt_ms.is_nan() || jitter_ms.is_nan() || loss.is_nan() {
        return f64::NAN;
    }
    let el = rtt_ms + 2.0 * jitter_ms + 10.0;
    let mut r = if el < 160.0 { R0 - el / 40.0 } else { R0 - (el - 120.0) / 10.0 };
    r -= 2.5 * loss * 100.0;
    let r = r.clamp(0.0, 100.0);
    1.0 + 0.035 * r + 7e-6 * r * (r - 60.0) * (100.0 - r)
}
