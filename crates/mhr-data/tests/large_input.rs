//! The memory bound for large inputs: a task file far larger than the cap is streamed, not held.
//! Alone in its test binary (not in `integration`), so that the process's peak resident set measures this load only.

use std::io::{BufWriter, Write};

use mhr_data::SniTask;

const INSTANCES: usize = 1_000_000;
const CAP: usize = 100;

/// A `/proc/self/status` memory field in KiB (Linux; `VmRSS` now, `VmHWM` the peak so far), if known.
fn status_kib(field: &str) -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with(field))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

#[test]
fn a_huge_task_file_loads_in_bounded_memory() {
    let tmp = tempfile::tempdir().unwrap();
    let path = tmp.path().join("task999_huge.json");
    let mut out = BufWriter::new(std::fs::File::create(&path).unwrap());
    write!(
        out,
        "{{\"Definition\": [\"Copy the input.\"], \"Positive Examples\": [], \"Negative Examples\": [], \
         \"Input_language\": [\"English\"], \"Output_language\": [\"English\"], \
         \"Instruction_language\": [\"English\"], \"Instances\": ["
    )
    .unwrap();
    for i in 0..INSTANCES {
        let sep = if i == 0 { "" } else { "," };
        write!(
            out,
            "{sep}{{\"id\": \"task999-{i:032x}\", \"input\": \"Instance {i}: the quick brown fox jumps over the lazy \
             dog, again and again.\", \"output\": [\"fox {i}\", \"dog\"]}}"
        )
        .unwrap();
    }
    write!(out, "], \"Instance License\": [\"Unknown\"]}}").unwrap();
    out.flush().unwrap();
    drop(out);
    let file_mib = std::fs::metadata(&path).unwrap().len() as f64 / (1 << 20) as f64;

    // Peak after minus resident before: an upper bound on what the load added at its peak.
    let before = status_kib("VmRSS:");
    let task = SniTask::read(&path, Some(CAP)).unwrap();
    let after = status_kib("VmHWM:");

    assert_eq!((task.instances.len(), task.total_instances), (CAP, INSTANCES));
    assert_eq!(
        task.instances[CAP - 1].output,
        [format!("fox {}", CAP - 1), "dog".to_string()]
    );
    if let (Some(before), Some(after)) = (before, after) {
        let grown_mib = after.saturating_sub(before) as f64 / 1024.0;
        println!("file {file_mib:.0} MiB, cap {CAP}: peak RSS grew by {grown_mib:.2} MiB");
        assert!(
            grown_mib < 16.0,
            "peak RSS grew by {grown_mib:.1} MiB reading a {file_mib:.0} MiB file"
        );
    }
}
