//! Named presets: the calibrated emulators of the Pantheon paper (Yan et al., "Pantheon: the
//! training ground for Internet congestion-control research", USENIX ATC 2018, §4, the table
//! of calibrated emulators), with the rate, one-way delay, queue and loss as published. The
//! paper's emulators are Mahimahi shells (`mm-delay D mm-loss uplink L mm-link TRACE TRACE
//! --uplink-queue=droptail --uplink-queue-args=packets=Q`): the data flows on the uplink,
//! which alone has the loss and the drop-tail queue.
//!
//! In a SPEC, `preset NAME` stands for the uplink's words; `wan --preset NAME` gives A→B (the
//! client's data, the default lab's uplink) the uplink and B→A the same delay and rate without
//! loss or queue limit.
use super::spec::SpecError;

pub struct Preset {
    pub name: &'static str,
    /// The path as the paper names it.
    pub path: &'static str,
    /// The uplink (data direction): delay, rate, drop-tail queue, loss.
    pub words: &'static str,
    /// The other direction: delay and rate.
    pub reverse: &'static str,
}

/// Rates count IP bytes as Mahimahi does (`-14`: the Ethernet header is not counted), so a
/// full-size frame takes exactly what one of Mahimahi's 1500-byte opportunities carries.
pub const PRESETS: &[Preset] = &[
    Preset {
        name: "pantheon-nepal-india",
        path: "Nepal to AWS India (wireless)",
        words: "delay 28ms rate 0.57mbit -14 limit 14 link loss 4.77%",
        reverse: "delay 28ms rate 0.57mbit -14",
    },
    Preset {
        name: "pantheon-mexico-california",
        path: "Mexico (cellular) to AWS California",
        words: "delay 88ms rate 2.64mbit -14 limit 130 link",
        reverse: "delay 88ms rate 2.64mbit -14",
    },
    Preset {
        name: "pantheon-brazil-colombia",
        path: "AWS Brazil to Colombia (cellular)",
        words: "delay 130ms rate 3.04mbit -14 limit 426 link",
        reverse: "delay 130ms rate 3.04mbit -14",
    },
    Preset {
        name: "pantheon-india-india",
        path: "India to AWS India (wired)",
        words: "delay 27ms rate 100.42mbit -14 limit 173 link",
        reverse: "delay 27ms rate 100.42mbit -14",
    },
    Preset {
        name: "pantheon-korea-china",
        path: "AWS Korea to China (wired)",
        words: "delay 51ms rate 77.72mbit -14 limit 94 link loss 0.06%",
        reverse: "delay 51ms rate 77.72mbit -14",
    },
    Preset {
        name: "pantheon-california-mexico",
        path: "AWS California to Mexico (wired)",
        words: "delay 45ms rate 114.68mbit -14 limit 450 link",
        reverse: "delay 45ms rate 114.68mbit -14",
    },
];

pub fn find(name: &str) -> Option<&'static Preset> {
    PRESETS.iter().find(|p| p.name == name)
}

fn names() -> String {
    PRESETS
        .iter()
        .map(|p| p.name)
        .collect::<Vec<_>>()
        .join(", ")
}

/// Look up `--preset NAME`, naming the known ones when it is not one.
pub fn lookup(name: &str) -> anyhow::Result<&'static Preset> {
    find(name)
        .ok_or_else(|| anyhow::anyhow!("--preset {name:?}: unknown preset; known: {}", names()))
}

/// Replace `preset NAME` in a SPEC's words by the preset's words (at most one preset).
pub fn expand<'a>(given: &[&'a str]) -> Result<(Vec<&'a str>, Option<&'static Preset>), SpecError> {
    let Some(at) = given.iter().position(|w| *w == "preset") else {
        return Ok((given.to_vec(), None));
    };
    let bad = |word: &str, reason: String| SpecError {
        word: word.to_string(),
        reason,
    };
    let name = given
        .get(at + 1)
        .ok_or_else(|| bad("preset", format!("needs a name: {}", names())))?;
    let p = find(name).ok_or_else(|| bad(name, format!("unknown preset; known: {}", names())))?;
    if given[at + 2..].contains(&"preset") {
        return Err(bad("preset", "given twice".into()));
    }
    let mut words = given[..at].to_vec();
    words.extend(p.words.split_whitespace());
    words.extend(&given[at + 2..]);
    Ok((words, Some(p)))
}

/// `preset NAME = "words"` for `wan --check`.
pub fn explain(name: &str) -> String {
    match find(name) {
        Some(p) => format!("preset {} ({}, Pantheon) = \"{}\"", p.name, p.path, p.words),
        None => format!("preset {name}"),
    }
}

#[cfg(test)]
mod tests {
    use super::super::spec::{parse, Limit, Loss};

    #[test]
    fn presets_expand_to_the_published_numbers() {
        let s = parse("preset pantheon-nepal-india").unwrap();
        assert_eq!(s.delay.as_millis(), 28);
        assert_eq!(s.rate.as_ref().unwrap().bits_per_sec, 570_000);
        assert_eq!(s.rate.as_ref().unwrap().packet_overhead, -14);
        assert_eq!(s.limit, Some(Limit::Packets(14)));
        assert!(s.limit_link);
        assert!(matches!(s.loss, Some(Loss::Random { p, .. }) if (p - 0.0477).abs() < 1e-12));
        assert_eq!(s.preset.as_deref(), Some("pantheon-nepal-india"));
        assert_eq!(s.text, "preset pantheon-nepal-india");
        assert!(s.explain().contains("Nepal to AWS India"));
        // Every preset parses in both directions; words may be added, not given twice.
        for p in super::PRESETS {
            parse(p.words).unwrap();
            parse(p.reverse).unwrap();
        }
        let s = parse("preset pantheon-korea-china jitter-order fifo").unwrap();
        assert_eq!(s.limit, Some(Limit::Packets(94)));
        let e = parse("preset pantheon-korea-china delay 5ms").unwrap_err();
        assert!(e.word == "delay" && e.reason.contains("preset pantheon-korea-china sets"));
        assert_eq!(parse("preset mars").unwrap_err().word, "mars");
        assert_eq!(parse("preset").unwrap_err().word, "preset");
        let e = parse("preset pantheon-india-india preset pantheon-india-india").unwrap_err();
        assert!(e.reason.contains("twice"), "{e}");
    }
}
