//! `results.json` (one row per measurement) and `results.md` (the paper-style table, beside the reference numbers).

use std::path::Path;

use mhr_train::TrainError;
use mhr_train::results::Results;
use mhr_train::trainer::write_json;

/// Writes `results.json` and `results.md`; `reference` gives published numbers per (method, k) to print
/// beside ours, with a note on where they come from.
pub fn write_results(
    out: &Path,
    results: &Results,
    method_order: &[&str],
    reference: &[(&str, usize, f64)],
    reference_note: &str,
) -> Result<String, TrainError> {
    write_json(&out.join("results.json"), results)?;
    let summary = results.summary();
    let mut ks: Vec<usize> = summary.keys().map(|(_, k)| *k).collect();
    ks.sort_unstable();
    ks.dedup();
    let metric = results.rows.first().map(|r| r.metric.as_str()).unwrap_or("score");
    let mut md = format!(
        "# {} preset: mean {metric} over held-out tasks\n\n",
        results.preset
    );
    let with_reference = !reference.is_empty();
    md += "| method |";
    for k in &ks {
        md += &if with_reference {
            format!(" k={k} (ours) | k={k} (reference) |")
        } else {
            format!(" k={k} |")
        };
    }
    md += "\n|---|";
    md += &(if with_reference { "---|---|" } else { "---|" }).repeat(ks.len());
    md += "\n";
    for method in method_order {
        if !ks.iter().any(|k| summary.contains_key(&(method.to_string(), *k))) {
            continue;
        }
        md += &format!("| {method} |");
        for k in &ks {
            let ours = summary
                .get(&(method.to_string(), *k))
                .map(|s| {
                    if s.n > 1 {
                        format!("{:.3} ± {:.3}", s.mean, s.std)
                    } else {
                        format!("{:.3}", s.mean)
                    }
                })
                .unwrap_or_else(|| "—".into());
            let theirs = reference
                .iter()
                .find(|(m, rk, _)| m == method && rk == k)
                .map(|(_, _, v)| format!("{v:.2}"))
                .unwrap_or_else(|| "—".into());
            md += &if with_reference {
                format!(" {ours} | {theirs} |")
            } else {
                format!(" {ours} |")
            };
        }
        md += "\n";
    }
    let seeds: std::collections::BTreeSet<u64> = results.rows.iter().map(|r| r.seed).collect();
    md += &format!(
        "\nSeeds: {seeds:?}; ± is the standard deviation over seeds of the per-seed mean.\n\n{reference_note}\n"
    );
    mhr_core::io::write_atomic(out.join("results.md"), md.as_bytes())?;
    Ok(md)
}
