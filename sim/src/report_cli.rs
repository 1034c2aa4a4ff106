//! The `report` subcommand: reads `ab --json` files and guest stats (`kepochctl stats --json`, one
//! round per file), refuses what cannot be a measurement (impossible values, the same file twice,
//! rounds of different topologies unless told), and prints the same table, intervals and verdict as
//! `ab` (and the chart).

use kepoch_sim::lab::limits::{read_text_file, MAX_REPORT_BYTES};
use kepoch_sim::lab::{self, chart, table};
use serde_json::Value;
use std::collections::HashMap;
use std::path::PathBuf;
use std::process::ExitCode;

use crate::output::open_outputs;
use crate::usage_error;

#[derive(clap::Args)]
pub struct ReportArgs {
    /// `ab --json` outputs and/or `kepochctl stats --json` files.
    #[arg(required = true, value_name = "FILE")]
    files: Vec<PathBuf>,
    /// Write an SVG chart of the merged columns here.
    #[arg(long, value_name = "FILE")]
    svg: Option<PathBuf>,
    /// Write the merged JSON here.
    #[arg(long, value_name = "FILE")]
    json: Option<PathBuf>,
    /// Compare rounds from different guests or topologies (by default refused, naming the
    /// difference); columns are then strategy and source.
    #[arg(long)]
    allow_mixed: bool,
    /// Count files with the same content (the same JSON document) once per time given; by default
    /// a file that repeats another is refused, since its rounds would count twice and narrow every
    /// interval.
    #[arg(long)]
    allow_duplicates: bool,
}

/// Seed of the report's bootstrap: the same files give the same intervals.
const REPORT_BOOTSTRAP_SEED: u64 = 0x6b65_706f_6368;

/// Reads every file into rounds, refusing a file whose document repeats an earlier one's unless
/// `allow_duplicates`.
fn read_rounds(files: &[PathBuf], allow_duplicates: bool) -> Result<Vec<Value>, String> {
    let mut rounds = Vec::new();
    // The canonical text of every document read (serde_json writes object keys in order), by file.
    let mut seen: HashMap<String, String> = HashMap::new();
    for path in files {
        let origin = path.display().to_string();
        let text = read_text_file(path, MAX_REPORT_BYTES, "report input")?;
        let document: Value =
            serde_json::from_str(&text).map_err(|e| format!("{origin}: not valid JSON: {e}"))?;
        drop(text);
        let canonical = document.to_string();
        if let Some(first) = seen.get(&canonical) {
            if !allow_duplicates {
                return Err(format!(
                    "{origin} has the same content as {first}: its rounds would count twice and narrow the intervals; pass --allow-duplicates to count it again"
                ));
            }
        } else {
            seen.insert(canonical, origin.clone());
        }
        rounds.extend(lab::rounds_of(&document, &origin)?);
    }
    Ok(rounds)
}

/// `kepoch-sim report`.
pub fn report_command(args: ReportArgs) -> ExitCode {
    let [json_out, svg_out] =
        match open_outputs([("--json", args.json.as_ref()), ("--svg", args.svg.as_ref())]) {
            Ok(outputs) => outputs,
            Err(e) => return usage_error(&e),
        };
    let rounds = match read_rounds(&args.files, args.allow_duplicates) {
        Ok(rounds) => rounds,
        Err(e) => return usage_error(&e),
    };
    if !args.allow_mixed {
        if let Err(e) = lab::check_topology(&rounds) {
            return usage_error(&e);
        }
    }
    let files: Vec<String> = args.files.iter().map(|p| p.display().to_string()).collect();
    let n = rounds.len();
    let scenario = serde_json::json!({"name": "merged report", "source": "report", "files": files});
    let document = lab::document(scenario, rounds, REPORT_BOOTSTRAP_SEED);
    let results = document["results"].as_array().cloned().unwrap_or_default();
    println!(
        "report: {n} round(s) from {} file(s) in {} column(s); 95 % intervals from a bootstrap over rounds ({} resamples, seed {REPORT_BOOTSTRAP_SEED})\n",
        args.files.len(),
        results.len(),
        lab::bootstrap::RESAMPLES,
    );
    print!("{}", table::render(&results));
    println!();
    println!("{}", document["verdict"].as_str().unwrap_or(""));
    if let Some(out) = json_out {
        let path = out.path().display().to_string();
        let text = serde_json::to_string_pretty(&document).unwrap_or_default();
        if let Err(e) = out.write(&(text + "\n")) {
            return usage_error(&e);
        }
        println!("wrote {path}");
    }
    if let Some(out) = svg_out {
        let path = out.path().display().to_string();
        match chart::render(&document, "kepoch A/B report").and_then(|svg| out.write(&svg)) {
            Ok(()) => println!("wrote {path}"),
            Err(e) => return usage_error(&e),
        }
    }
    ExitCode::SUCCESS
}
