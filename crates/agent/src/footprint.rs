//! The daemon's resident memory once start-up is over: hand back what only start-up needed.
//!
//! Owns two things the daemon does once, a few seconds after it starts: `malloc_trim(0)` (glibc returns
//! the free heap that start-up's config parsing, TLS roots and first API calls left behind), and dropping
//! from this process's page tables the clean pages of its own executable (code and read-only data touched
//! while starting, or mapped around a touched page by the kernel's fault-around). Those pages stay in the
//! page cache; the ones the idle loop needs fault back in (minor faults, no I/O) and the rest no longer
//! count in its RSS. Only read-only mappings of the executable that hold no private (copied-on-write) page
//! are dropped, so nothing written is lost. It does not change what the daemon does.

use std::time::Duration;

/// How long after start the daemon trims: past READY, the first Sentinel answers and the first cloud read.
pub const TRIM_AFTER: Duration = Duration::from_secs(5);

/// One mapping from `/proc/self/smaps` that may be dropped.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CleanMapping {
    /// Start address.
    pub start: usize,
    /// End address (exclusive).
    pub end: usize,
}

/// The mappings of `exe` in `smaps` (the text of `/proc/self/smaps`) that are read-only, file-backed and
/// hold no anonymous page: dropping their pages loses nothing.
pub fn clean_exe_mappings(smaps: &str, exe: &str) -> Vec<CleanMapping> {
    let mut out = Vec::new();
    // The mapping being read, when it is a read-only one of `exe`; its `Anonymous:` line decides.
    let mut candidate: Option<CleanMapping> = None;
    for line in smaps.lines() {
        if let Some((range, perms, path)) = parse_header(line) {
            candidate = (!perms.contains('w') && path == exe).then_some(range);
        } else if let Some(v) = line.strip_prefix("Anonymous:")
            && let Some(m) = candidate.take()
            && v.split_whitespace().next() == Some("0")
        {
            out.push(m);
        }
    }
    out
}

/// `start-end perms offset dev inode path` → the range, the permissions and the path (empty when none).
fn parse_header(line: &str) -> Option<(CleanMapping, &str, &str)> {
    let mut parts = line.split_whitespace();
    let (start, end) = parts.next()?.split_once('-')?;
    let start = usize::from_str_radix(start, 16).ok()?;
    let end = usize::from_str_radix(end, 16).ok()?;
    let perms = parts.next()?;
    // offset, dev, inode
    parts.next()?;
    parts.next()?;
    parts.next()?;
    let path = parts.next().unwrap_or("");
    Some((CleanMapping { start, end }, perms, path))
}

/// Trims the heap and drops the executable's clean pages from this process's page tables (see the module
/// docs). Returns how many mappings were dropped. Call it once, when start-up is over, while no other
/// thread is loading code.
pub fn trim() -> std::io::Result<usize> {
    // SAFETY: malloc_trim(3) only returns free memory to the kernel; no pointer is invalidated.
    unsafe { libc::malloc_trim(0) };
    let exe = std::fs::read_link("/proc/self/exe")?;
    let smaps = std::fs::read_to_string("/proc/self/smaps")?;
    let mappings = clean_exe_mappings(&smaps, &exe.to_string_lossy());
    for m in &mappings {
        // SAFETY: the range is one whole read-only, file-backed mapping of our own executable without
        // private pages (checked just above; the loader's RELRO pages are private and are skipped). Its
        // contents are the file's, which a later access reads back from the page cache. (The kernel still
        // maps 64 KiB around each page faulted back in; `MADV_RANDOM` did not stop that, BENCHMARKS.md.)
        let dropped = unsafe {
            libc::madvise(
                m.start as *mut libc::c_void,
                m.end - m.start,
                libc::MADV_DONTNEED,
            )
        };
        if dropped != 0 {
            return Err(std::io::Error::last_os_error());
        }
    }
    Ok(mappings.len())
}

#[cfg(test)]
mod tests {
    use super::*;

    const SMAPS: &str = "\
55ca9028e000-55ca9041b000 r--p 00000000 fd:01 123 /usr/bin/havip-agent
Rss:                 896 kB
Anonymous:             0 kB
55ca9041b000-55ca9083c000 r-xp 0018d000 fd:01 123 /usr/bin/havip-agent
Rss:                4032 kB
Anonymous:             0 kB
55ca9083c000-55ca90873000 r--p 005ae000 fd:01 123 /usr/bin/havip-agent
Rss:                 220 kB
Anonymous:           220 kB
55ca90873000-55ca90875000 rw-p 005e5000 fd:01 123 /usr/bin/havip-agent
Rss:                   8 kB
Anonymous:             0 kB
7f8439e85000-7f8439fdb000 r-xp 00026000 fd:01 456 /usr/lib/x86_64-linux-gnu/libc.so.6
Rss:                1176 kB
Anonymous:             0 kB
7f8439d1b000-7f8439e5f000 rw-p 00000000 00:00 0
Rss:                1296 kB
Anonymous:          1296 kB
";

    #[test]
    fn only_clean_read_only_mappings_of_the_executable_are_dropped() {
        let got = clean_exe_mappings(SMAPS, "/usr/bin/havip-agent");
        assert_eq!(
            got,
            vec![
                CleanMapping {
                    start: 0x55ca9028e000,
                    end: 0x55ca9041b000
                },
                CleanMapping {
                    start: 0x55ca9041b000,
                    end: 0x55ca9083c000
                },
            ],
            "the RELRO mapping (private pages), the writable one and other files stay"
        );
        assert!(clean_exe_mappings(SMAPS, "/usr/bin/other").is_empty());
    }

    #[test]
    fn a_mapping_without_an_anonymous_line_is_not_dropped() {
        let smaps = "55ca9028e000-55ca9041b000 r--p 00000000 fd:01 123 /x\nRss: 4 kB\n";
        assert!(clean_exe_mappings(smaps, "/x").is_empty());
    }

    /// The `Rss:` of the mappings `clean_exe_mappings` picks, KiB.
    fn clean_rss_kib(smaps: &str, exe: &str) -> u64 {
        let picked = clean_exe_mappings(smaps, exe);
        let mut in_picked = false;
        let mut total = 0;
        for line in smaps.lines() {
            if let Some((range, _, _)) = parse_header(line) {
                in_picked = picked.contains(&range);
            } else if let Some(v) = line.strip_prefix("Rss:")
                && in_picked
            {
                total += v
                    .split_whitespace()
                    .next()
                    .and_then(|n| n.parse::<u64>().ok())
                    .unwrap_or(0);
            }
        }
        total
    }

    #[test]
    fn trimming_this_process_drops_its_clean_pages_and_keeps_it_working() {
        let exe = std::fs::read_link("/proc/self/exe").unwrap();
        let exe = exe.to_string_lossy();
        let smaps = || std::fs::read_to_string("/proc/self/smaps").unwrap();
        let before = clean_rss_kib(&smaps(), &exe);

        let dropped = trim().expect("trim");

        assert!(dropped > 0, "the test binary has read-only mappings");
        // Only what reading smaps and running this test touched since comes back: less than was resident
        // (compared with what was mapped, as before, it held without any trim: most of a test binary is
        // never paged in).
        let after = clean_rss_kib(&smaps(), &exe);
        assert!(
            after < before,
            "{after} KiB resident after the trim, {before} KiB before"
        );
        // Code and data still work: the pages come back from the page cache.
        let sum: u64 = (0..1000u64).sum();
        assert_eq!(sum, 499_500);
    }
}
