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
//!
//! Percentiles are computed in one place for every input (16-bit PNG samples,
//! DICOM values after the modality LUT, plain floats), so all agree with
//! numpy and with each other.

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
        // Also an empty window: a bound that is NaN (samples summing
        // infinities, as a rescale of 1e308 gives), which `clamp` refuses.
        if self.hi.partial_cmp(&self.lo) != Some(std::cmp::Ordering::Greater) {
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
fn linear_rank(p: f64, n: usize) -> (usize, usize, f64) {
    let pos = p.clamp(0.0, 100.0) / 100.0 * (n as f64 - 1.0);
    let below = pos.floor();
    let frac = pos - below;
    let i = (below as usize).min(n - 1);
    (i, (i + 1).min(n - 1), frac)
}

/// numpy's linear interpolation between two neighbouring order statistics,
/// written as numpy writes it (`_lerp`), so results agree to the last bit.
fn lerp(a: f64, b: f64, t: f64) -> f64 {
    let diff = b - a;
    if t >= 0.5 {
        b - diff * (1.0 - t)
    } else {
        a + diff * t
    }
}

/// The one place a [`Windowing`] becomes a [`Window`]: from `n > 0` samples
/// given by their order statistics (`kth(k)` is the `k`-th smallest value,
/// 0-based), whatever holds them (a sorted copy, a histogram).
fn resolve_ranked(windowing: &Windowing, n: usize, kth: impl Fn(usize) -> f64) -> Window {
    match *windowing {
        Windowing::Minmax => Window {
            lo: kth(0),
            hi: kth(n - 1),
        },
        Windowing::Percentile { low, high } => {
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

/// Resolves a [`Windowing`] for samples stored as 16-bit keys whose real
/// value is `value(key)` (for DICOM, the modality LUT of a stored value).
///
/// Equal to [`resolve_f64`] over the values, bit for bit, but computed from a
/// histogram of the (at most 65536) distinct keys instead of sorting a copy
/// of every sample: O(n) for a multi-megapixel radiograph. `value` need not
/// be monotonic (a negative rescale slope is not).
pub fn resolve_keyed(windowing: &Windowing, keys: &[u16], value: impl Fn(u16) -> f64) -> Window {
    let n = keys.len();
    if n == 0 {
        return Window { lo: 0.0, hi: 0.0 };
    }
    let mut hist = vec![0u64; 65536];
    for &k in keys {
        hist[usize::from(k)] += 1;
    }
    // Distinct values in ascending order with cumulative counts.
    let mut present: Vec<(f64, u64)> = hist
        .iter()
        .enumerate()
        .filter(|(_, &c)| c > 0)
        .map(|(k, &c)| (value(k as u16), c))
        .collect();
    present.sort_by(|a, b| a.0.total_cmp(&b.0));
    let mut cumulative = Vec::with_capacity(present.len());
    let mut seen = 0u64;
    for &(_, c) in &present {
        seen += c;
        cumulative.push(seen);
    }
    resolve_ranked(windowing, n, |k| {
        let i = cumulative.partition_point(|&c| c <= k as u64);
        present[i.min(present.len() - 1)].0
    })
}

/// Resolves a [`Windowing`] for 16-bit samples, in O(n) with a histogram.
pub fn resolve_u16(windowing: &Windowing, samples: &[u16]) -> Window {
    resolve_keyed(windowing, samples, f64::from)
}

/// Resolves a [`Windowing`] for real-valued samples (sorts a copy).
pub fn resolve_f64(windowing: &Windowing, samples: &[f64]) -> Window {
    if samples.is_empty() {
        return Window { lo: 0.0, hi: 0.0 };
    }
    let mut sorted = samples.to_vec();
    sorted.sort_by(f64::total_cmp);
    resolve_ranked(windowing, sorted.len(), |k| sorted[k])
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
    fn histogram_and_sorted_copy_give_the_same_window() {
        let mut state = 0x9E37_79B9_7F4A_7C15u64;
        let samples: Vec<u16> = (0..3000)
            .map(|_| {
                state ^= state << 13;
                state ^= state >> 7;
                state ^= state << 17;
                (state % 4096) as u16 * 16
            })
            .collect();
        let values: Vec<f64> = samples.iter().map(|&s| f64::from(s)).collect();
        for w in [
            Windowing::default(),
            Windowing::Minmax,
            Windowing::Percentile {
                low: 12.5,
                high: 87.5,
            },
        ] {
            assert_eq!(resolve_u16(&w, &samples), resolve_f64(&w, &values), "{w:?}");
        }
        assert_eq!(
            resolve_u16(&Windowing::Minmax, &[]),
            Window { lo: 0.0, hi: 0.0 }
        );
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

    /// Found by fuzzing (`tests/fuzz`, target `window`): samples with
    /// infinities (a DICOM rescale near f64's range) gave a NaN bound, and
    /// mapping panicked in `clamp`. Such a window maps everything to 0.
    #[test]
    fn infinite_samples_give_no_nan_window_panic() {
        for samples in [
            vec![f64::NEG_INFINITY, 0.0, f64::INFINITY],
            vec![f64::INFINITY; 4],
            vec![f64::NAN, 1.0, 2.0],
        ] {
            for windowing in [Windowing::Minmax, Windowing::default()] {
                let w = resolve_f64(&windowing, &samples);
                assert_eq!(w.apply_f64(&samples).len(), samples.len());
            }
        }
        let nan = Window {
            lo: 0.0,
            hi: f64::NAN,
        };
        assert_eq!(nan.map(5.0), 0);
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
