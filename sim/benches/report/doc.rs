//! The machine, and BENCHMARKS.md: one section per CPU vendor. A run replaces its own vendor's
//! section and keeps the others as they were, each with the date and machine of its run.

use std::fmt::Write as _;
use std::time::{SystemTime, UNIX_EPOCH};

/// One line of a figure table.
pub struct Row {
    pub figure: &'static str,
    pub kepoch: String,
    pub peer: String,
    pub ratio: String,
    pub target: &'static str,
    pub pass: bool,
    /// Shown under the table when the row misses.
    pub why_missed: String,
}

/// What the report says about the machine it ran on.
pub struct Machine {
    /// `vendor_id` of /proc/cpuinfo (`AuthenticAMD`, `GenuineIntel`).
    pub vendor: String,
    /// The `model name`.
    pub model: String,
    /// Everything else: MHz, nproc, kernel, rustc, load.
    pub details: String,
}

fn cpuinfo_field(cpuinfo: &str, key: &str) -> Option<String> {
    cpuinfo.lines().find_map(|l| {
        let (k, v) = l.split_once(':')?;
        (k.trim() == key).then(|| v.trim().to_string())
    })
}

/// The 1-minute load average, to tell a busy machine in the report.
pub fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .ok()
        .and_then(|l| l.split_whitespace().next().map(str::to_string))
        .unwrap_or_else(|| "?".into())
}

impl Machine {
    /// The machine this process runs on.
    pub fn here() -> Machine {
        let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
        let field = |key| cpuinfo_field(&cpuinfo, key).unwrap_or_else(|| "unknown".into());
        let nproc = std::thread::available_parallelism().map_or(0, |n| n.get());
        let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
        let rustc = std::process::Command::new("rustc")
            .arg("--version")
            .output()
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
            .unwrap_or_default();
        Machine {
            vendor: field("vendor_id"),
            model: field("model name"),
            details: format!(
                "{} MHz, family {} model {}, nproc {nproc}, Linux {}, {rustc}",
                field("cpu MHz"),
                field("cpu family"),
                field("model"),
                kernel.trim()
            ),
        }
    }

    /// A short name of the vendor.
    pub fn vendor_name(&self) -> &str {
        match self.vendor.as_str() {
            "AuthenticAMD" => "AMD",
            "GenuineIntel" => "Intel",
            other => other,
        }
    }
}

/// UTC date and time of now, `YYYY-MM-DD HH:MM UTC`.
pub fn utc_now() -> String {
    let secs = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs()) as i64;
    let (days, rem) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
    // Civil-from-days (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02} {:02}:{:02} UTC",
        rem / 3600,
        rem % 3600 / 60
    )
}

/// The section of one run: heading, machine, table, misses, details.
pub fn section(
    rows: &[Row],
    extra: &str,
    header: &str,
    machine: &Machine,
    load: (&str, &str),
) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "{}\n## {} ({}): {}\n",
        begin_marker(&machine.vendor),
        machine.vendor_name(),
        machine.vendor,
        machine.model
    );
    let _ = writeln!(
        out,
        "{header} Machine: {}, {}; load average {} at the start, {} at the end.\n",
        machine.model, machine.details, load.0, load.1
    );
    let _ = writeln!(
        out,
        "| figure | kepoch | peer | ratio: median (min–max) | target | result |"
    );
    let _ = writeln!(out, "|---|---|---|---|---|---|");
    for row in rows {
        let _ = writeln!(
            out,
            "| {} | {} | {} | {} | {} | {} |",
            row.figure,
            row.kepoch,
            row.peer,
            row.ratio,
            row.target,
            if row.pass { "pass" } else { "**miss**" }
        );
    }
    let passed = rows.iter().filter(|r| r.pass).count();
    let _ = writeln!(out, "\n{passed} of {} targets met.\n", rows.len());
    let misses: Vec<_> = rows.iter().filter(|r| !r.pass).collect();
    if !misses.is_empty() {
        let _ = writeln!(out, "Misses:\n");
        for row in misses {
            let _ = writeln!(out, "- **{}**: {}", row.figure, row.why_missed);
        }
        let _ = writeln!(out);
    }
    let _ = writeln!(out, "{extra}");
    let _ = writeln!(out, "{}", end_marker(&machine.vendor));
    out
}

fn begin_marker(vendor: &str) -> String {
    format!("<!-- vendor: {vendor} -->")
}

fn end_marker(vendor: &str) -> String {
    format!("<!-- end vendor: {vendor} -->")
}

/// The vendor sections of an existing BENCHMARKS.md, as (vendor, text with markers).
fn sections_of(doc: &str) -> Vec<(String, String)> {
    let mut found = Vec::new();
    let mut rest = doc;
    while let Some(start) = rest.find("<!-- vendor: ") {
        let after = &rest[start + "<!-- vendor: ".len()..];
        let Some(close) = after.find(" -->") else {
            break;
        };
        let vendor = after[..close].to_string();
        let end = end_marker(&vendor);
        let Some(stop) = rest[start..].find(&end) else {
            break;
        };
        let stop = start + stop + end.len();
        found.push((vendor, rest[start..stop].to_string()));
        rest = &rest[stop..];
    }
    found
}

/// The whole document: `intro`, this run's section and the kept sections of other vendors from
/// `previous` (sorted by vendor), then `tail`.
pub fn document(intro: &str, current: (&str, &str), previous: &str, tail: &str) -> String {
    let mut sections: Vec<(String, String)> = sections_of(previous)
        .into_iter()
        .filter(|(vendor, _)| vendor != current.0)
        .collect();
    sections.push((current.0.to_string(), current.1.trim_end().to_string()));
    sections.sort_by(|a, b| a.0.cmp(&b.0));
    let mut out = format!("{}\n\n", intro.trim_end());
    for (_, text) in sections {
        let _ = writeln!(out, "{}\n", text.trim_end());
    }
    let _ = writeln!(out, "{}", tail.trim_end());
    out
}
