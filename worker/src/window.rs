//! Windowing: mapping high-dynamic-range pixels (16-bit PNG, DICOM) to 8 bits.
//!
//! The model was trained on 8-bit images. A 16-bit radiograph converted naively
//! (PIL's `convert("RGB")` clips at 255) saturates to white, and the embedding
//! is garbage. Microsoft's client windows to the 1st–99th percentiles instead:
//! clip to `[lo, hi]`, scale `(x - lo) / (hi - lo) * 255`, truncate to `u8`.
//! We do exactly that by default, with numpy's percentile definition (linear
//! interpolation between the two nearest ranks) so results match a Python
//! reference bit for bit. DICOM files may instead carry their own window
//! (centre/width), which [`Window::from_center_width`] honours.

use serde::{Deserialize, Serialize};

/// How a high-dynamic-range image is brought to 8 bits.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(tag = "mode", rename_all = "lowercase")]
pub enum Windowing {
    /// Window to the given percentiles of the image's own values (default 1–99).
    Percentile {
        /// Lower percentile, 0–100.
        low: f64,
        /// Upper percentile, 0–100.
        high: f64,
    },
    /// Window to the image's minimum and maximum.
    Minmax,
}

impl Default for Windowing {
    fn default() -> Self {
        Windowing::Percentile {
            low: 1.0,
            high: 99.0,
        }
    }
}

impl Windowing {
    /// Checks the parameters are meaningful.
    pub fn validate(&self) -> Result<(), String> {
        match *self {
            Windowing::Percentile { low, high } => {
                if !(0.0..=100.0).contains(&low) || !(0.0..=100.0).contains(&high) || low >= high {
                    return Err(format!(
                        "percentile window must satisfy 0 <= low < high <= 100 (got {low}, {high})"
                    ));
                }
                Ok(())
            }
            Windowing::Minmax => Ok(()),
        }
    }
}

/// A resolved window: values at or below `lo` map to 0, at or above `hi` to 255.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Window {
    /// Lower bound.
    pub lo: f64,
    /// Upper bound.
    pub hi: f64,
}

impl Window {
    /// The DICOM VOI linear window from WindowCenter/WindowWidth, in the
    /// simple form (`[c - w/2, c + w/2]`) used by most viewers.
    pub fn from_center_width(center: f64, width: f64) -> Self {
        let half = width.max(1.0) / 2.0;
        Window {
            lo: center - half,
            hi: center + half,
        }
    }

    /// Maps one value to 8 bits: clip, scale, truncate (as numpy's
    /// `astype(uint8)` after the float arithmetic).
    #[inline]
    pub fn map(&self, x: f64) -> u8 {
        if self.hi <= self.lo {
            return 0;
        }
        let c = x.clamp(self.lo, self.hi);
        let v = (c - self.lo) / (self.hi - self.lo) * 255.0;
        // `as u8` saturates and truncates towards zero, like numpy's cast of
        // a value already within [0, 255].
        v as u8
    }

    /// Maps a slice of 16-bit samples through a lookup table (65536 entries
    /// built once), which is much faster than per-pixel float arithmetic.
    pub fn apply_u16(&self, samples: &[u16]) -> Vec<u8> {
        let lut: Vec<u8> = (0..=u16::MAX).map(|v| self.map(f64::from(v))).collect();
        samples.iter().map(|&s| lut[usize::from(s)]).collect()
    }

    /// Maps arbitrary real-valued samples (DICOM after the modality LUT).
    pub fn apply_f64(&self, samples: &[f64]) -> Vec<u8> {
        samples.iter().map(|&s| self.map(s)).collect()
    }
}

/// numpy's `percentile(..., method="linear")` for a sorted-rank position:
/// the two order statistics around percentile `p` of `n > 0` samples and the
/// weight of the upper one.
pub(crate) fn linear_rank(p: f64, n: usize) -> (usize, usize, f64) {
    let pos = p.clamp(0.0, 100.0) / 100.0 * (n as f64 - 1.0);
    let below = pos.floor();
    let frac = pos - below;
    let i = (below as usize).min(n - 1);
    (i, (i + 1).min(n - 1), frac)
}

/// numpy's linear interpolation between two neighbouring order statistics,
/// written as numpy writes it (`_lerp`), so results agree to the last bit.
pub(crate) fn lerp(a: f64, b: f64, t: f64) -> f64 {
    let diff = b - a;
    if t >= 0.5 {
        b - diff * (1.0 - t)
    } else {
        a + diff * t
    }
}

/// Resolves a [`Windowing`] for 16-bit samples, in O(n) with a histogram.
pub fn resolve_u16(windowing: &Windowing, samples: &[u16]) -> Window {
    if samples.is_empty() {
        return Window { lo: 0.0, hi: 0.0 };
    }
    let mut hist = vec![0u32; 65536];
    for &s in samples {
        hist[usize::from(s)] += 1;
    }
    // k-th smallest value (0-based) from the histogram.
    let kth = |k: usize| -> f64 {
        let mut seen = 0usize;
        for (v, &c) in hist.iter().enumerate() {
            seen += c as usize;
            if seen > k {
                return v as f64;
            }
        }
        65535.0
    };
    match *windowing {
        Windowing::Minmax => Window {
            lo: kth(0),
            hi: kth(samples.len() - 1),
        },
        Windowing::Percentile { low, high } => {
            let n = samples.len();
            let at = |p: f64| {
                let (i, j, t) = linear_rank(p, n);
                lerp(kth(i), kth(j), t)
            };
            Window {
                lo: at(low),
                hi: at(high),
            }
        }
    }
}

/// Resolves a [`Windowing`] for real-valued samples (sorts a copy).
pub fn resolve_f64(windowing: &Windowing, samples: &[f64]) -> Window {
    if samples.is_empty() {
        return Window { lo: 0.0, hi: 0.0 };
    }
    let mut sorted = samples.to_vec();
    sorted.sort_by(f64::total_cmp);
    let n = sorted.len();
    match *windowing {
        Windowing::Minmax => Window {
            lo: sorted[0],
            hi: sorted[n - 1],
        },
        Windowing::Percentile { low, high } => {
            let at = |p: f64| {
                let (i, j, t) = linear_rank(p, n);
                lerp(sorted[i], sorted[j], t)
            };
            Window {
                lo: at(low),
                hi: at(high),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_match_numpy_linear() {
        // numpy.percentile(np.arange(101), [1, 99]) == [1, 99]
        let v: Vec<u16> = (0..=100).collect();
        let w = resolve_u16(&Windowing::default(), &v);
        assert_eq!((w.lo, w.hi), (1.0, 99.0));
        // numpy.percentile([0, 10, 20, 1000], [1, 99]) == [0.3, 970.6]
        let v = [0u16, 10, 20, 1000];
        let w = resolve_u16(&Windowing::default(), &v);
        assert!(
            (w.lo - 0.3).abs() < 1e-9 && (w.hi - 970.6).abs() < 1e-9,
            "{w:?}"
        );
        let wf = resolve_f64(&Windowing::default(), &[0.0, 10.0, 20.0, 1000.0]);
        assert_eq!(w, wf);
    }

    #[test]
    fn mapping_clips_scales_truncates() {
        let w = Window {
            lo: 100.0,
            hi: 200.0,
        };
        assert_eq!(w.map(0.0), 0);
        assert_eq!(w.map(100.0), 0);
        assert_eq!(w.map(150.0), 127); // 127.5 truncated
        assert_eq!(w.map(200.0), 255);
        assert_eq!(w.map(60000.0), 255);
        assert_eq!(w.apply_u16(&[0, 150, 65535]), vec![0, 127, 255]);
    }

    #[test]
    fn flat_image_does_not_divide_by_zero() {
        let w = resolve_u16(&Windowing::default(), &[7, 7, 7]);
        assert_eq!(w.apply_u16(&[7, 7]), vec![0, 0]);
    }

    #[test]
    fn sixteen_bit_never_saturates_to_white() {
        // A typical radiograph's values sit in the thousands: naive clipping
        // to 255 would make everything white.
        let v: Vec<u16> = (0..10_000).map(|i| 1000 + (i % 3000) as u16).collect();
        let w = resolve_u16(&Windowing::default(), &v);
        let out = w.apply_u16(&v);
        let white = out.iter().filter(|&&x| x == 255).count();
        assert!(white < v.len() / 20, "{white} of {} saturated", v.len());
    }

    #[test]
    fn validation() {
        assert!(Windowing::Percentile {
            low: 99.0,
            high: 1.0
        }
        .validate()
        .is_err());
        assert!(Windowing::Percentile {
            low: -1.0,
            high: 1.0
        }
        .validate()
        .is_err());
        assert!(Windowing::default().validate().is_ok());
    }
}
