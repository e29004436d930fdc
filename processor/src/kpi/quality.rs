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

pub use ccstream_schemas::quality::{mos, R0};

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
