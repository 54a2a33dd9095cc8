//! The report's HTML: one file, inline CSS, inline SVG plots, a few lines of inline JS.
use std::{fmt::Write as _, path::Path};

use anyhow::Result;
use serde_json::Value;

use super::{plot::Chart, Run};
use crate::{
    fw::ReloadChange,
    record::{SourcedQuantity, Stamped},
    wan::ChangeEntry,
};

pub fn esc(s: &str) -> String {
    let mut o = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => o.push_str("&amp;"),
            '<' => o.push_str("&lt;"),
            '>' => o.push_str("&gt;"),
            '"' => o.push_str("&quot;"),
            '\'' => o.push_str("&#39;"),
            c => o.push(c),
        }
    }
    o
}

/// A table with id `id`: a header row, then rows whose first cell is text and the others
/// numbers (right-aligned).
pub fn table<const N: usize>(
    h: &mut String,
    id: &str,
    head: [&str; N],
    rows: &[[String; N]],
) -> Result<()> {
    use std::fmt::Write as _;
    writeln!(
        h,
        "<table id=\"{}\"><tr>{}</tr>",
        esc(id),
        head.map(|c| format!("<th>{}</th>", esc(c))).concat()
    )?;
    for r in rows {
        writeln!(
            h,
            "<tr><td>{}</td>{}</tr>",
            esc(&r[0]),
            r[1..]
                .iter()
                .map(|c| format!("<td class=n>{}</td>", esc(c)))
                .collect::<String>()
        )?;
    }
    writeln!(h, "</table>")?;
    Ok(())
}

fn when(unix: Option<f64>) -> String {
    match unix {
        // (humantime formats up to the end of year 9999; a record's time is the file's word.)
        Some(u) if u > 0.0 => match std::time::Duration::try_from_secs_f64(u)
            .ok()
            .filter(|d| d.as_secs() < 253_402_300_800)
            .and_then(|d| std::time::UNIX_EPOCH.checked_add(d))
        {
            Some(t) => humantime::format_rfc3339_seconds(t).to_string(),
            None => "-".into(),
        },
        _ => "-".into(),
    }
}

fn fmt_num(v: f64) -> String {
    if v == 0.0 {
        "0".into()
    } else if v.abs() >= 100.0 {
        format!("{v:.1}")
    } else if v.abs() >= 1.0 {
        format!("{v:.2}")
    } else {
        format!("{v:.3}")
    }
}

const CSS: &str = r#"
body{font-family:system-ui,-apple-system,"DejaVu Sans",sans-serif;margin:24px auto;max-width:1100px;color:#1b1f23;padding:0 16px}
h1{font-size:1.5em;margin-bottom:4px}h2{margin-top:32px;border-bottom:1px solid #ddd;padding-bottom:4px}
table{border-collapse:collapse;margin:8px 0;font-size:.92em}th,td{border:1px solid #ddd;padding:4px 8px;text-align:left;vertical-align:top}
th{background:#f4f6f8}td.n{text-align:right;font-variant-numeric:tabular-nums}
tr.dev td{background:#fde2e1}tr.dev td.flag{color:#b00020;font-weight:bold}tr.okrow td.flag{color:#1a7f37}
.banner{background:#fff3cd;border:1px solid #e0b84a;padding:10px 14px;margin:12px 0}
.banner.bad{background:#fde2e1;border-color:#d08080}
figure{margin:16px 0}figure svg{max-width:100%;height:auto;border:1px solid #eee}
figcaption{font-size:.85em;color:#555}pre{background:#f6f8fa;padding:8px;overflow:auto;font-size:.85em;max-height:420px}
.meta{color:#555;font-size:.9em}
"#;

const JS: &str = r#"
(function(){
  var n=document.querySelectorAll('figure.plot svg').length;
  var el=document.getElementById('plot-count');
  if(el){el.textContent=n+' plots';}
  document.body.setAttribute('data-plots',String(n));
  document.querySelectorAll('tr.dev').forEach(function(r){r.title='outside tolerance';});
  document.body.setAttribute('data-ready','1');
})();
"#;

fn sources_table(h: &mut String, run: &Run) -> Result<()> {
    writeln!(
        h,
        "<table><tr><th>source</th><th>tool</th><th>started</th><th>ended</th><th>duration</th><th>intervals</th><th>live changes</th><th>host / kernel</th><th>command</th></tr>"
    )?;
    for s in &run.sources {
        let c = &s.config;
        let f = s.fin.as_ref();
        writeln!(
            h,
            "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td class=n>{}</td><td class=n>{}</td><td class=n>{}</td><td>{} / {} (wirelab {})</td><td><code>{}</code></td></tr>",
            esc(&s.name),
            esc(&s.tool),
            when(Some(c.started_unix)),
            f.map(|f| when(Some(f.run.ended_unix))).unwrap_or_else(|| "<b>unfinished</b>".into()),
            f.map(|f| format!("{:.1} s", f.run.duration_s)).unwrap_or_default(),
            s.series.len(),
            s.changes.len(),
            esc(&c.host.hostname),
            esc(&c.host.kernel),
            esc(&c.host.wirelab_version),
            esc(&c.argv.join(" ")),
        )?;
    }
    writeln!(h, "</table>")?;
    Ok(())
}

fn comparisons_table(h: &mut String, run: &Run) -> Result<()> {
    let rows = &run.summary.comparisons;
    if rows.is_empty() {
        writeln!(
            h,
            "<p class=meta>No quantity was both configured and measured in this run (record a wan and a probe into the same directory to get this table).</p>"
        )?;
    } else {
        writeln!(
            h,
            "<table id=comparisons><tr><th>quantity</th><th>direction</th><th>configured</th><th>measured</th><th>measured by</th><th>deviation</th><th>tolerance</th><th></th><th>note</th></tr>"
        )?;
        for r in rows {
            let unit = esc(&r.unit);
            writeln!(
                h,
                "<tr class={}><td>{}</td><td>{}</td><td class=n>{} {unit}</td><td class=n>{} {unit}</td><td>{} <span class=meta>{}</span></td><td class=n>{}{}</td><td class=n>±{}</td><td class=flag>{}</td><td class=meta>{}</td></tr>",
                if r.ok { "okrow" } else { "dev" },
                esc(&r.quantity),
                esc(&r.direction),
                fmt_num(r.configured),
                fmt_num(r.measured),
                esc(&r.measured_by),
                esc(&r.what),
                fmt_num(r.deviation),
                r.deviation_pct.map(|p| format!(" ({p:+.1}%)")).unwrap_or_default(),
                fmt_num(r.tolerance),
                if r.ok { "ok" } else { "DEVIATES" },
                esc(&r.note),
            )?;
        }
        writeln!(h, "</table>")?;
    }
    let measured = &run.summary.measured;
    if !measured.is_empty() {
        writeln!(
            h,
            "<details><summary>All measured values ({})</summary><table><tr><th>source</th><th>quantity</th><th>direction</th><th>value</th><th>what</th></tr>",
            measured.len()
        )?;
        for m in measured {
            let q = &m.quantity;
            writeln!(
                h,
                "<tr><td>{}</td><td>{}</td><td>{}</td><td class=n>{} {}</td><td class=meta>{}</td></tr>",
                esc(&m.source),
                esc(&q.quantity),
                esc(&q.direction),
                fmt_num(q.value),
                esc(&q.unit),
                esc(&q.what),
            )?;
        }
        writeln!(h, "</table></details>")?;
    }
    Ok(())
}

fn config_section(h: &mut String, run: &Run) -> Result<()> {
    for s in &run.sources {
        writeln!(h, "<h3>{} ({})</h3>", esc(&s.name), esc(&s.tool))?;
        writeln!(
            h,
            "<pre>{}</pre>",
            esc(&serde_json::to_string_pretty(&s.config.config)?)
        )?;
        // An lb's changes have their own table (the load balancer section).
        match &s.typed {
            super::Typed::Wan(_, changes) if !changes.is_empty() => wan_changes(h, changes)?,
            super::Typed::Fw(_, reloads) if !reloads.is_empty() => fw_reloads(h, reloads)?,
            _ => {}
        }
    }
    Ok(())
}

/// A wan source's live changes, applied and refused.
fn wan_changes(h: &mut String, changes: &[ChangeEntry]) -> Result<()> {
    writeln!(
        h,
        "<p>Live changes (marked on the time plots):</p><table><tr><th>#</th><th>time</th><th>asked (s)</th><th>applied (s)</th><th>latency (ms)</th><th>source</th><th>step</th><th>applied</th></tr>"
    )?;
    let secs = |v: Option<f64>| v.map(|x| format!("{x:.3}")).unwrap_or_default();
    for (i, l) in changes.iter().enumerate() {
        let applied = match &l.error {
            Some(e) => format!("refused: {e}"),
            None => l.applied.clone(),
        };
        writeln!(
            h,
            "<tr><td class=n>{}</td><td>{}</td><td class=n>{}</td><td class=n>{}</td><td class=n>{}</td><td>{}</td><td>{}</td><td><code>{}</code></td></tr>",
            i + 1,
            when(Some(l.unix)),
            secs(l.requested_t),
            secs(Some(l.t)),
            secs(l.latency_ms),
            l.source,
            esc(l.label.as_deref().unwrap_or("")),
            esc(&applied),
        )?;
    }
    writeln!(h, "</table>")?;
    Ok(())
}

/// A firewall's reloads: the generation each put in force, and its rules.
fn fw_reloads(h: &mut String, reloads: &[Stamped<ReloadChange>]) -> Result<()> {
    writeln!(
        h,
        "<p>Reloads:</p><table><tr><th>#</th><th>time</th><th>at (s)</th><th>generation</th><th>rules</th></tr>"
    )?;
    for c in reloads {
        let rules: Vec<String> = c
            .line
            .rules
            .iter()
            .map(|r| format!("{} ({})", r.name, r.action))
            .collect();
        writeln!(
            h,
            "<tr><td class=n>{}</td><td>{}</td><td class=n>{:.3}</td><td class=n>{}</td><td>{}</td></tr>",
            c.seq,
            when(Some(c.unix)),
            c.line.t,
            c.line.generation,
            esc(&rules.join(", ")),
        )?;
    }
    writeln!(h, "</table>")?;
    Ok(())
}

fn flatten(prefix: &str, v: &Value, out: &mut Vec<(String, String)>) {
    match v {
        Value::Object(m) => {
            for (k, x) in m {
                flatten(&format!("{prefix}.{k}"), x, out);
            }
        }
        Value::Array(a) => {
            for (i, x) in a.iter().enumerate() {
                flatten(&format!("{prefix}[{i}]"), x, out);
            }
        }
        other => out.push((prefix.to_string(), other.to_string())),
    }
}

/// Rows of (what, A, B) that differ between two runs: configuration and measured values.
pub fn differences(a: &Run, b: &Run) -> (Vec<(String, String, String)>, Vec<MeasuredDiff>) {
    let conf = |r: &Run| {
        let mut v = vec![];
        for s in &r.sources {
            flatten(&s.name, &s.config.config, &mut v);
        }
        v
    };
    let (ca, cb) = (conf(a), conf(b));
    let mut cfg = vec![];
    for (k, va) in &ca {
        let vb = cb.iter().find(|(k2, _)| k2 == k).map(|x| x.1.clone());
        if vb.as_deref() != Some(va.as_str()) {
            cfg.push((
                k.clone(),
                va.clone(),
                vb.unwrap_or_else(|| "(absent)".into()),
            ));
        }
    }
    for (k, vb) in &cb {
        if !ca.iter().any(|(k2, _)| k2 == k) {
            cfg.push((k.clone(), "(absent)".into(), vb.clone()));
        }
    }
    let key = |m: &SourcedQuantity| {
        (
            m.source.clone(),
            m.quantity.quantity.clone(),
            m.quantity.direction.clone(),
            m.quantity.what.clone(),
        )
    };
    let (ma, mb) = (&a.summary.measured, &b.summary.measured);
    let mut rows = vec![];
    for m in ma {
        let vb = mb
            .iter()
            .find(|x| key(x) == key(m))
            .map(|o| o.quantity.value);
        rows.push(MeasuredDiff {
            quantity: m.clone(),
            a: Some(m.quantity.value),
            b: vb,
        });
    }
    for m in mb {
        if !ma.iter().any(|x| key(x) == key(m)) {
            rows.push(MeasuredDiff {
                quantity: m.clone(),
                a: None,
                b: Some(m.quantity.value),
            });
        }
    }
    (cfg, rows)
}

/// One measured quantity in runs A and B (`None`: that run did not measure it).
#[derive(Debug, Clone)]
pub struct MeasuredDiff {
    /// The quantity as the first run that has it measured it (its value is not used).
    pub quantity: SourcedQuantity,
    pub a: Option<f64>,
    pub b: Option<f64>,
}

impl MeasuredDiff {
    /// B − A where both measured it.
    pub fn diff(&self) -> Option<f64> {
        Some(self.b? - self.a?)
    }
}

pub fn render(runs: &[Run], charts: &[(Chart, String)], plot_dir: &Path) -> Result<String> {
    let mut h = String::new();
    let title = if runs.len() == 1 {
        format!("wirelab report: {}", runs[0].dir.display())
    } else {
        format!(
            "wirelab comparison: A = {} vs B = {}",
            runs[0].dir.display(),
            runs[1].dir.display()
        )
    };
    writeln!(
        h,
        "<!DOCTYPE html>\n<html lang=en><head><meta charset=utf-8><meta name=viewport content=\"width=device-width,initial-scale=1\"><title>{}</title><style>{CSS}</style></head><body>",
        esc(&title)
    )?;
    writeln!(h, "<h1>{}</h1>", esc(&title))?;
    writeln!(
        h,
        "<p class=meta>Written {} by wirelab {} &middot; <span id=plot-count>{} plots</span> &middot; plots also in <code>{}</code> (SVG and PNG)</p>",
        when(Some(crate::util::unix_now())),
        env!("CARGO_PKG_VERSION"),
        charts.len(),
        esc(&plot_dir.display().to_string())
    )?;
    // "A"/"B" when two runs are compared, nothing for one.
    let letter = |i: usize| (runs.len() > 1).then(|| ["A", "B"][i]);
    let in_run = |i: usize| {
        letter(i)
            .map(|l| format!(" in run {l}"))
            .unwrap_or_default()
    };
    let run_tag = |i: usize| letter(i).map(|l| format!("Run {l}: ")).unwrap_or_default();
    for (i, run) in runs.iter().enumerate() {
        if !run.problems.is_empty() {
            writeln!(
                h,
                "<div class=\"banner bad\" id=partial><b>PARTIAL DATA{}</b>: this report was made with --allow-partial from a run directory that is incomplete or damaged:<ul>{}</ul></div>",
                in_run(i),
                run.problems.iter().map(|p| format!("<li>{}</li>", esc(p))).collect::<String>()
            )?;
        }
        let dev = run.summary.deviations;
        if dev > 0 {
            writeln!(
                h,
                "<div class=banner>{dev} measured value(s) deviate from the configuration beyond tolerance{}.</div>",
                in_run(i)
            )?;
        }
    }
    for (i, run) in runs.iter().enumerate() {
        let tag = run_tag(i);
        writeln!(h, "<h2>{}What ran, where and when</h2>", esc(&tag))?;
        writeln!(
            h,
            "<p class=meta>Run directory <code>{}</code>, {} &ndash; {}</p>",
            esc(&run.dir.display().to_string()),
            when(run.summary.started_unix),
            when(Some(run.summary.ended_unix))
        )?;
        sources_table(&mut h, run)?;
        writeln!(h, "<h2>{}Configured vs measured</h2>", esc(&tag))?;
        comparisons_table(&mut h, run)?;
        super::lb::html(&mut h, run, &tag)?;
        super::flows::html(&mut h, run, &tag)?;
    }
    if runs.len() == 2 {
        let (cfg, rows) = differences(&runs[0], &runs[1]);
        writeln!(h, "<h2>Differences (B &minus; A)</h2>")?;
        writeln!(h, "<h3>Configuration</h3>")?;
        if cfg.is_empty() {
            writeln!(h, "<p class=meta>Same configuration.</p>")?;
        } else {
            writeln!(
                h,
                "<table id=config-diff><tr><th>setting</th><th>A</th><th>B</th></tr>"
            )?;
            for (k, a, b) in &cfg {
                writeln!(
                    h,
                    "<tr><td><code>{}</code></td><td>{}</td><td>{}</td></tr>",
                    esc(k),
                    esc(a),
                    esc(b)
                )?;
            }
            writeln!(h, "</table>")?;
        }
        writeln!(h, "<h3>Measured</h3><table id=measured-diff><tr><th>source</th><th>quantity</th><th>direction</th><th>A</th><th>B</th><th>B &minus; A</th><th>what</th></tr>")?;
        for r in &rows {
            let f = |v: Option<f64>| v.map(fmt_num).unwrap_or_else(|| "-".into());
            let q = &r.quantity.quantity;
            writeln!(
                h,
                "<tr><td>{}</td><td>{}</td><td>{}</td><td class=n>{}</td><td class=n>{}</td><td class=n>{}</td><td class=meta>{} {}</td></tr>",
                esc(&r.quantity.source),
                esc(&q.quantity),
                esc(&q.direction),
                f(r.a),
                f(r.b),
                f(r.diff()),
                esc(&q.unit),
                esc(&q.what),
            )?;
        }
        writeln!(h, "</table>")?;
    }
    writeln!(h, "<h2>Plots</h2>")?;
    if charts.is_empty() {
        writeln!(h, "<p class=meta>No interval data to plot.</p>")?;
    }
    for (c, svg) in charts {
        writeln!(
            h,
            "<figure class=plot id=\"plot-{}\">{}<figcaption>{} &middot; <code>{}.svg</code></figcaption></figure>",
            esc(&c.id),
            svg,
            esc(&c.title),
            esc(&c.id)
        )?;
    }
    for (i, run) in runs.iter().enumerate() {
        let tag = run_tag(i);
        writeln!(h, "<h2>{}Configuration in force</h2>", esc(&tag))?;
        config_section(&mut h, run)?;
    }
    writeln!(h, "<script>{JS}</script></body></html>")?;
    Ok(h)
}
