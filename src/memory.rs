//! Giving back what only start-up used, once orchd is ready.
//!
//! Start-up runs code that steady state never runs again: argument and configuration parsing,
//! unit validation, the first spawn of every service. Its pages of orchd's binary (and of the
//! shared libraries) stay mapped, and on recent kernels a fault maps the whole (large)
//! page-cache folio around the page it needs, so a few touched functions keep megabytes of the
//! binary resident. Dropping orchd's mappings of read-only file pages (`MADV_DONTNEED`) unmaps
//! them; the page cache
//! keeps them, so code that runs again comes back with a minor fault, and nothing is read
//! from disk. The kernel does the same under memory pressure; this does it at a known
//! moment, so that `ps` and PSS show what orchd really uses. Freed heap memory goes back with
//! `malloc_trim`.
//!
//! Only file mappings that are read-only and hold no private (copy-on-write) page are touched: `MADV_DONTNEED` on a private page would discard it (relocated data, a debugger's
//! breakpoint).

use std::fs;

/// What [`shed_startup`] gave back, in KiB of resident memory.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Shed {
    pub file_kib: u64,
}

/// Unmap orchd's read-only, unmodified file pages (binary and libraries) and trim the heap.
/// Safe to call at any time (the pages come back on use); blocking (reads `/proc/self/smaps`).
pub fn shed_startup() -> Shed {
    let file_kib = match fs::read_to_string("/proc/self/smaps") {
        Ok(smaps) => shed_mappings(&smaps),
        Err(_) => 0,
    };
    trim_heap();
    Shed { file_kib }
}

/// One mapping of `/proc/self/smaps`, as far as shedding is concerned.
#[derive(Debug, PartialEq, Eq)]
struct Mapping {
    start: usize,
    end: usize,
    rss_kib: u64,
}

/// The read-only private file mappings with no anonymous (modified) page.
fn sheddable(smaps: &str) -> Vec<Mapping> {
    let mut out = Vec::new();
    let mut current: Option<(Mapping, bool)> = None;
    let flush = |m: Option<(Mapping, bool)>, out: &mut Vec<Mapping>| {
        if let Some((m, true)) = m {
            out.push(m);
        }
    };
    for line in smaps.lines() {
        let mut fields = line.split_whitespace();
        let first = fields.next().unwrap_or_default();
        if let Some((a, b)) = first.split_once('-')
            && let (Ok(start), Ok(end)) =
                (usize::from_str_radix(a, 16), usize::from_str_radix(b, 16))
        {
            // A new mapping: "start-end perms offset dev inode path".
            flush(current.take(), &mut out);
            let perms = fields.next().unwrap_or_default();
            let path = fields.nth(3).unwrap_or_default();
            // A regular file (not a device, memfd or [special] mapping) mapped in one piece.
            let file = path.starts_with('/')
                && !path.starts_with("/dev/")
                && !path.starts_with("/memfd:")
                && fields.next().is_none();
            let wanted = file
                && perms.starts_with('r')
                && perms.as_bytes().get(1) == Some(&b'-')
                && perms.ends_with('p');
            current = Some((
                Mapping {
                    start,
                    end,
                    rss_kib: 0,
                },
                wanted,
            ));
            continue;
        }
        let Some((m, wanted)) = current.as_mut() else {
            continue;
        };
        let value = fields.next().and_then(|v| v.parse::<u64>().ok());
        match (first, value) {
            ("Rss:", Some(v)) => m.rss_kib = v,
            ("Anonymous:", Some(v)) if v > 0 => *wanted = false,
            _ => {}
        }
    }
    flush(current.take(), &mut out);
    out
}

fn shed_mappings(smaps: &str) -> u64 {
    let mut shed = 0;
    for m in sheddable(smaps) {
        // SAFETY: [start, end) is a whole private file mapping that is read-only and holds
        // no private page (checked above: no `Anonymous` KiB), so its contents are exactly the
        // file's: dropping the page-table entries loses nothing, and the next access faults the
        // same bytes back in from the page cache. No Rust object owns this memory.
        let r = unsafe {
            libc::madvise(
                m.start as *mut libc::c_void,
                m.end - m.start,
                libc::MADV_DONTNEED,
            )
        };
        if r == 0 {
            shed += m.rss_kib;
        }
    }
    shed
}

#[cfg(target_env = "gnu")]
fn trim_heap() {
    // SAFETY: malloc_trim only returns free memory of glibc's arenas to the kernel.
    unsafe { libc::malloc_trim(0) };
}

#[cfg(not(target_env = "gnu"))]
fn trim_heap() {}

#[cfg(test)]
mod tests {
    use super::*;

    const SMAPS: &str = "\
55d000000000-55d000100000 r--p 00000000 fd:01 42 /usr/sbin/orchd
Size:               1024 kB
Rss:                 700 kB
Anonymous:             0 kB
55d000100000-55d000500000 r-xp 00100000 fd:01 42 /usr/sbin/orchd
Rss:                4000 kB
Anonymous:             0 kB
55d000500000-55d000540000 r--p 00500000 fd:01 42 /usr/sbin/orchd
Rss:                 200 kB
Anonymous:           200 kB
55d000540000-55d000550000 rw-p 00540000 fd:01 42 /usr/sbin/orchd
Rss:                  64 kB
Anonymous:            64 kB
7f0000000000-7f0000100000 r-xp 00000000 fd:01 43 /usr/lib/x86_64-linux-gnu/libc.so.6
Rss:                1000 kB
Anonymous:             0 kB
7f0000200000-7f0000300000 rw-p 00000000 00:00 0
Rss:                 100 kB
Anonymous:           100 kB
7f0000400000-7f0000401000 r--p 00000000 00:05 7 /dev/zero
Rss:                   4 kB
Anonymous:             0 kB
7f0000500000-7f0000501000 r--p 00000000 fd:01 44 /opt/with space/lib.so
Rss:                   4 kB
Anonymous:             0 kB
7ffd00000000-7ffd00002000 r-xp 00000000 00:00 0 [vdso]
Rss:                   8 kB
Anonymous:             0 kB
";

    #[test]
    fn only_read_only_unmodified_file_mappings() {
        let m = sheddable(SMAPS);
        assert_eq!(
            m,
            vec![
                Mapping {
                    start: 0x55d000000000,
                    end: 0x55d000100000,
                    rss_kib: 700
                },
                Mapping {
                    start: 0x55d000100000,
                    end: 0x55d000500000,
                    rss_kib: 4000
                },
                Mapping {
                    start: 0x7f0000000000,
                    end: 0x7f0000100000,
                    rss_kib: 1000
                },
            ]
        );
    }

    #[test]
    fn shedding_our_own_binary_keeps_it_running() {
        // This test binary's own text: shed it and go on calling into it.
        let before = shed_startup();
        assert!(before.file_kib > 0, "{before:?}");
        let v: Vec<u64> = (1..=1000).collect();
        assert_eq!(v.iter().sum::<u64>(), 500_500);
        let smaps = fs::read_to_string("/proc/self/smaps").unwrap();
        // Still mapped (the calls above faulted some of it back), still the same mappings.
        assert!(!sheddable(&smaps).is_empty());
    }
}
