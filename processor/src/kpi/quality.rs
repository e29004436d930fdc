//! Call quality: the Teams CQD audio-stream rule and the E-model MOS.

/// CQD "historical" audio-stream thresholds: a stream is poor if any metric exceeds its
/// threshold (NULL metrics don't count); a stream with no metric is unclassified.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Cqd {
    pub jitter_ms: f64,
    pub loss_rate: f64,
    pub rtt_ms: f64,
    pub degradation: f64,
}

impl Default for Cqd {
    fn default() -> Self {
        Cqd { jitter_ms: 30.0, loss_rate: 0.1, rtt_ms: 500.0, degradation: 1.0 }
    }
}

impl Cqd {
    /// `(classified, poor)` of a stream; `m` = jitter, loss, RTT, degradation with NaN = NULL.
    pub fn classify(&self, m: [f64; 4]) -> (bool, bool) {
        let classified = m.iter().any(|v| !v.is_nan());
        // NaN > x is false, so NULL metrics never make a stream poor.
        let poor = m[0] > self.jitter_ms || m[1] > self.loss_rate || m[2] > self.rtt_ms || m[3] > self.degradation;
        (classified, poor)
    }
}

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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mos_golden_vectors() {
        for (rtt, jit, loss, want) in [(0.0, 0.0, 0.0, 4.4333), (2000.0, 0.0, 0.0, 1.0), (0.0, 0.0, 0.10, 3.5743)] {
            let got = mos(rtt, jit, loss);
            assert!((got - want).abs() < 5e-5, "mos({rtt}, {jit}, {loss}) = {got}, want {want}");
        }
        assert!(mos(f64::NAN, 0.0, 0.0).is_nan());
    }

    #[test]
    fn cqd_rule() {
        let c = Cqd::default();
        assert_eq!(c.classify([f64::NAN; 4]), (false, false));
        assert_eq!(c.classify([30.0, 0.1, 500.0, 1.0]), (true, false), "thresholds are exclusive");
        assert_eq!(c.classify([f64::NAN, 0.1001, f64::NAN, f64::NAN]), (true, true));
    }
}
