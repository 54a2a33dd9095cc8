//! Stability and consistency figures of one metric over a cell's repetitions: median, IQR,
//! coefficient of variation, a bootstrap 95 % confidence interval of the median, and a
//! Mann-Kendall trend test over the repetitions in the order they ran (drift).
use rand::{Rng as _, SeedableRng as _};
use serde::{Deserialize, Serialize};

/// Figures of one metric in one cell.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Figures {
    pub n: usize,
    pub median: f64,
    pub q1: f64,
    pub q3: f64,
    pub iqr: f64,
    pub mean: f64,
    /// Sample standard deviation / mean (0 when the mean is 0).
    pub cv: f64,
    /// Bootstrap 95 % confidence interval of the median (2,000 resamples, seeded).
    pub ci_low: f64,
    pub ci_high: f64,
    /// Mann-Kendall S over the values in run order, and its two-sided p-value (normal
    /// approximation; 1 with fewer than 3 values).
    pub trend_s: i64,
    pub trend_p: f64,
}

/// Quantile `q` (0..=1) of sorted `v`, linear between closest ranks (type 7, as R and numpy).
pub fn quantile(sorted: &[f64], q: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let h = (sorted.len() - 1) as f64 * q.clamp(0.0, 1.0);
    let lo = h.floor() as usize;
    let hi = h.ceil() as usize;
    sorted[lo] + (h - lo as f64) * (sorted[hi] - sorted[lo])
}

fn sorted(v: &[f64]) -> Vec<f64> {
    let mut s: Vec<f64> = v.iter().copied().filter(|x| x.is_finite()).collect();
    s.sort_by(f64::total_cmp);
    s
}

pub fn median(v: &[f64]) -> f64 {
    quantile(&sorted(v), 0.5)
}

/// Mann-Kendall S and two-sided p (normal approximation with continuity correction; ties
/// ignored in the variance, which is conservative enough for a drift flag).
pub fn mann_kendall(v: &[f64]) -> (i64, f64) {
    let n = v.len();
    if n < 3 {
        return (0, 1.0);
    }
    let mut s = 0i64;
    for i in 0..n {
        for j in i + 1..n {
            s += match v[j].partial_cmp(&v[i]) {
                Some(std::cmp::Ordering::Greater) => 1,
                Some(std::cmp::Ordering::Less) => -1,
                _ => 0,
            };
        }
    }
    let nf = n as f64;
    let var = nf * (nf - 1.0) * (2.0 * nf + 5.0) / 18.0;
    let z = if s > 0 {
        (s as f64 - 1.0) / var.sqrt()
    } else if s < 0 {
        (s as f64 + 1.0) / var.sqrt()
    } else {
        0.0
    };
    (
        s,
        (2.0 * (1.0 - crate::util::normal_cdf(z.abs()))).clamp(0.0, 1.0),
    )
}

/// The figures of `values` (in the order the runs ran); `seed` makes the bootstrap
/// reproducible.
pub fn figures(values: &[f64], seed: u64) -> Figures {
    let s = sorted(values);
    let n = s.len();
    let mean = if n > 0 {
        s.iter().sum::<f64>() / n as f64
    } else {
        f64::NAN
    };
    let sd = if n > 1 {
        (s.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / (n - 1) as f64).sqrt()
    } else {
        0.0
    };
    let (ci_low, ci_high) = if n > 1 {
        let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
        let mut meds: Vec<f64> = (0..2000)
            .map(|_| {
                let mut r: Vec<f64> = (0..n).map(|_| s[rng.random_range(0..n)]).collect();
                r.sort_by(f64::total_cmp);
                quantile(&r, 0.5)
            })
            .collect();
        meds.sort_by(f64::total_cmp);
        (quantile(&meds, 0.025), quantile(&meds, 0.975))
    } else {
        let m = quantile(&s, 0.5);
        (m, m)
    };
    let finite: Vec<f64> = values.iter().copied().filter(|x| x.is_finite()).collect();
    let (trend_s, trend_p) = mann_kendall(&finite);
    let (q1, q3) = (quantile(&s, 0.25), quantile(&s, 0.75));
    Figures {
        n,
        median: quantile(&s, 0.5),
        q1,
        q3,
        iqr: q3 - q1,
        mean,
        cv: if mean.abs() > 0.0 {
            sd / mean.abs()
        } else {
            0.0
        },
        ci_low,
        ci_high,
        trend_s,
        trend_p,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantiles_as_numpy() {
        let v = [1.0, 2.0, 3.0, 4.0];
        assert_eq!(quantile(&v, 0.5), 2.5);
        assert_eq!(quantile(&v, 0.25), 1.75);
        assert_eq!(quantile(&v, 0.75), 3.25);
        assert_eq!(median(&[5.0, 1.0, 3.0]), 3.0);
    }

    #[test]
    fn figures_of_a_known_sample() {
        let f = figures(&[10.0, 12.0, 11.0, 13.0, 9.0], 1);
        assert_eq!(f.median, 11.0);
        assert_eq!(f.iqr, 2.0);
        assert!((f.cv - 1.5811 / 11.0).abs() < 1e-3, "{f:?}");
        assert!(f.ci_low <= 11.0 && f.ci_high >= 11.0 && f.ci_low >= 9.0 && f.ci_high <= 13.0);
        assert_eq!(figures(&[10.0, 12.0, 11.0, 13.0, 9.0], 1), f, "seeded");
    }

    #[test]
    fn trend_test_sees_drift_not_noise() {
        let rising: Vec<f64> = (0..12).map(|i| i as f64).collect();
        let (s, p) = mann_kendall(&rising);
        assert_eq!(s, 66);
        assert!(p < 0.001, "{p}");
        let flat = [5.0, 7.0, 4.0, 6.0, 5.5, 6.5, 4.5, 5.0];
        assert!(mann_kendall(&flat).1 > 0.3);
        assert_eq!(mann_kendall(&[1.0, 2.0]), (0, 1.0));
        // Φ(1.96) ≈ 0.975.
        assert!((crate::util::normal_cdf(1.96) - 0.975).abs() < 1e-4);
    }
}
