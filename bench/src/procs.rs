//! Memory of the processes under test, read from `/proc`.

/// A `kB` field of `/proc/<pid>/status` in MiB (NaN when unreadable).
fn status_mib(pid: u32, field: &str) -> f64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|status| {
            status
                .lines()
                .find(|l| l.starts_with(field))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|kb| kb.parse::<f64>().ok())
        })
        .map_or(f64::NAN, |kb| kb / 1024.0)
}

/// Resident memory now.
pub fn resident_mib(pid: u32) -> f64 {
    status_mib(pid, "VmRSS:")
}

/// The part of [`resident_mib`] that is anonymous memory: heap, stacks,
/// buffers (`RssAnon`). The rest is file-backed (`RssFile`): the pages of the
/// binary's code and read-only data the process has touched, shared with
/// every process running the same file and dropped first under memory
/// pressure; it grows with the binary.
pub fn anonymous_mib(pid: u32) -> f64 {
    status_mib(pid, "RssAnon:")
}

/// Peak resident memory since the process started.
pub fn peak_resident_mib(pid: u32) -> f64 {
    status_mib(pid, "VmHWM:")
}

/// Resets the peak (`VmHWM`) to the resident memory now, so that a later
/// [`peak_resident_mib`] is the peak of what came after (`/proc/<pid>/clear_refs`,
/// value 5). False when the kernel refused.
pub fn reset_peak(pid: u32) -> bool {
    std::fs::write(format!("/proc/{pid}/clear_refs"), "5").is_ok()
}
