//! Delay distributions as 4096-entry inverse-CDF tables in units of the standard deviation,
//! the form netem uses (`.dist` files hold the same thing scaled by 8192). A correlated uniform
//! random value picks an entry, so correlation works the same for every distribution.
use std::{path::Path, sync::Arc};

use anyhow::{bail, Context as _, Result};
use rand::{Rng as _, SeedableRng as _};
use rand_distr::{Distribution as _, Normal, Pareto};

use super::spec::Distribution;

pub const TABLE_SIZE: usize = 4096;
/// netem's table scale.
pub const NETEM_DIST_SCALE: f64 = 8192.0;
/// Tables are clipped to ±4 standard deviations, as netem's are.
const CLIP: f64 = 4.0;

pub type Table = Arc<Vec<f64>>;

fn from_samples(mut v: Vec<f64>) -> Vec<f64> {
    let n = v.len() as f64;
    let mean = v.iter().sum::<f64>() / n;
    let sd = (v.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / n).sqrt();
    for x in v.iter_mut() {
        *x = ((*x - mean) / sd).clamp(-CLIP, CLIP);
    }
    v.sort_by(|a, b| a.total_cmp(b));
    let step = v.len() / TABLE_SIZE;
    let mut t: Vec<f64> = (0..TABLE_SIZE).map(|i| v[i * step + step / 2]).collect();
    // Re-center so the table mean is exactly 0 and its deviation exactly 1 after clipping.
    let m = t.iter().sum::<f64>() / TABLE_SIZE as f64;
    let s = (t.iter().map(|x| (x - m).powi(2)).sum::<f64>() / TABLE_SIZE as f64).sqrt();
    for x in t.iter_mut() {
        *x = (*x - m) / s;
    }
    t
}

/// Built-in tables, made deterministically (fixed internal seed) once per process and shared.
pub fn builtin(d: &Distribution) -> Result<Option<Table>> {
    use std::sync::OnceLock;
    static NORMAL: OnceLock<Table> = OnceLock::new();
    static PARETO: OnceLock<Table> = OnceLock::new();
    static PARETONORMAL: OnceLock<Table> = OnceLock::new();
    let cell = match d {
        Distribution::Normal => &NORMAL,
        Distribution::Pareto => &PARETO,
        Distribution::Paretonormal => &PARETONORMAL,
        _ => return make(d),
    };
    if let Some(t) = cell.get() {
        return Ok(Some(t.clone()));
    }
    let t = make(d)?.ok_or_else(|| anyhow::anyhow!("no table for {d:?}"))?;
    Ok(Some(cell.get_or_init(|| t).clone()))
}

fn make(d: &Distribution) -> Result<Option<Table>> {
    const N: usize = TABLE_SIZE * 64;
    let mut rng = rand::rngs::StdRng::seed_from_u64(0x0057_4952_454c_4142);
    let normal = Normal::new(0.0, 1.0).expect("valid normal");
    // Shape 3 as iproute2's pareto table; finite variance.
    let pareto = Pareto::new(1.0, 3.0).expect("valid pareto");
    let v: Vec<f64> = match d {
        Distribution::Uniform => return Ok(None),
        Distribution::Normal => (0..N).map(|_| normal.sample(&mut rng)).collect(),
        Distribution::Pareto => (0..N).map(|_| pareto.sample(&mut rng)).collect(),
        Distribution::Paretonormal => (0..N)
            .map(|_| 0.25 * normal.sample(&mut rng) + 0.75 * pareto.sample(&mut rng))
            .collect(),
        Distribution::File(p) => return load_dist(p).map(Some),
    };
    let _ = rng.random::<u32>();
    Ok(Some(Arc::new(from_samples(v))))
}

/// Load a netem `.dist` file: whitespace-separated integers scaled by 8192, `#` comments.
pub fn load_dist(p: &Path) -> Result<Table> {
    let text = crate::util::read_user_file(p, crate::util::limit::DIST)?;
    let mut v = vec![];
    for (ln, line) in text.lines().enumerate() {
        let line = line.split('#').next().unwrap_or("");
        for w in line.split_whitespace() {
            let x: i64 = w
                .parse()
                .with_context(|| format!("{}:{}: {w:?} is not an integer", p.display(), ln + 1))?;
            v.push(x as f64 / NETEM_DIST_SCALE);
        }
    }
    if v.len() < 16 {
        bail!(
            "{}: a distribution table needs at least 16 entries, found {}",
            p.display(),
            v.len()
        );
    }
    // Resample to TABLE_SIZE entries.
    let t: Vec<f64> = (0..TABLE_SIZE)
        .map(|i| v[i * v.len() / TABLE_SIZE])
        .collect();
    Ok(Arc::new(t))
}

/// Sample offset (in standard deviations) for a uniform 32-bit value.
#[inline]
pub fn lookup(t: &[f64], u: u32) -> f64 {
    t[(u as usize * t.len()) >> 32]
}

/// [`lookup`], linear between neighbouring entries: continuous in `u`, for the smooth delay
/// process of `jitter-order keep` (a step would make neighbouring packets jump apart).
#[inline]
pub fn lookup_lerp(t: &[f64], u: u32) -> f64 {
    let x = u as f64 / (u32::MAX as f64 + 1.0) * t.len() as f64 - 0.5;
    if x <= 0.0 {
        return t[0];
    }
    let i = x.floor() as usize;
    if i + 1 >= t.len() {
        return t[t.len() - 1];
    }
    let f = x - i as f64;
    t[i] + (t[i + 1] - t[i]) * f
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tables_have_unit_deviation() {
        for d in [
            Distribution::Normal,
            Distribution::Pareto,
            Distribution::Paretonormal,
        ] {
            let t = builtin(&d).unwrap().unwrap();
            let m = t.iter().sum::<f64>() / t.len() as f64;
            let s = (t.iter().map(|x| (x - m).powi(2)).sum::<f64>() / t.len() as f64).sqrt();
            assert!(
                m.abs() < 1e-9 && (s - 1.0).abs() < 1e-9,
                "{d:?}: mean {m} sd {s}"
            );
            assert!(t.windows(2).all(|w| w[0] <= w[1]));
        }
    }

    #[test]
    fn reads_netem_tables() {
        // iproute2's tables, where Debian (multiarch) and others put them; the suite's strict
        // mode (CI) fails rather than skips when none is there.
        let arch = std::env::consts::ARCH;
        let places = [
            format!("/usr/lib/{arch}-linux-gnu/tc/normal.dist"),
            "/usr/lib/tc/normal.dist".into(),
            "/usr/lib64/tc/normal.dist".into(),
            "/lib/tc/normal.dist".into(),
        ];
        match places.iter().map(std::path::Path::new).find(|p| p.exists()) {
            Some(p) => {
                let t = load_dist(p).unwrap();
                let m = t.iter().sum::<f64>() / t.len() as f64;
                assert!(m.abs() < 0.05, "mean {m}");
            }
            None => assert!(
                std::env::var_os("WIRELAB_TEST_STRICT").is_none(),
                "no iproute2 netem table in {places:?}"
            ),
        }
        let dir = crate::util::test_dir("wl-dist");
        let f = dir.join("bad.dist");
        std::fs::write(&f, "1 2 x\n").unwrap();
        let e = format!("{:#}", load_dist(&f).unwrap_err());
        assert!(e.contains("bad.dist:1"), "{e}");
    }
}
