//! What a worker knows of the end of its allocation: a deadline given on the command line
//! (`parse_deadline`), or the end time of the Slurm job it runs in (`slurm_end_time_now`), and
//! when to hand its leases back before that end (`hand_back_at`). Knows nothing of leases or of
//! the coordinator; the client loop decides what to do at that time.

use chrono::{DateTime, Local, NaiveDateTime, TimeZone};
use std::io::Read;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// How long before the allocation's end a worker stops and hands back. At its time limit Slurm
/// sends SIGTERM and, KillWait later (30 s by default), SIGKILL; a worker that waits for the
/// SIGTERM may not finish its step, upload a pack's checkpoints and hand its leases back in
/// that time, and a lease that is not handed back waits out its expiry on the coordinator
/// before another worker gets the trial. Two minutes covers that on an ordinary link.
pub const DEFAULT_HAND_BACK_MARGIN: Duration = Duration::from_secs(120);

/// How long `squeue` may take to answer before the end time is taken as unknown: a slow
/// slurmctld must not hold up a worker's start.
const SQUEUE_TIMEOUT: Duration = Duration::from_secs(5);

/// The forms `parse_deadline` accepts, for its errors.
const DEADLINE_FORMS: &str = "expected an RFC 3339 time (2026-12-01T23:00:00Z, 2026-12-01T23:00:00+01:00), unix seconds \
                              (@1796166000 or 1796166000) or a time from now (+90m, +2h, +3600s, +1h30m, +1d)";

/// The time `s` names: an RFC 3339 timestamp with `Z` or an offset, unix seconds (`@N` or
/// plain digits), or a duration from `now` (`+` then numbers with units d, h, m, s: `+1h30m`).
pub fn parse_deadline(s: &str, now: SystemTime) -> Result<SystemTime, String> {
    let s = s.trim();
    let bad = |why: &str| format!("deadline {s:?}: {why}; {DEADLINE_FORMS}");
    if let Some(relative) = s.strip_prefix('+') {
        let after = parse_duration(relative).ok_or_else(|| bad("not a duration"))?;
        return now.checked_add(after).ok_or_else(|| bad("too far ahead"));
    }
    let digits = s.strip_prefix('@').unwrap_or(s);
    if !digits.is_empty() && digits.bytes().all(|b| b.is_ascii_digit()) {
        let secs: u64 = digits.parse().map_err(|_| bad("too many seconds"))?;
        return UNIX_EPOCH.checked_add(Duration::from_secs(secs)).ok_or_else(|| bad("too far ahead"));
    }
    match DateTime::parse_from_rfc3339(s) {
        Ok(t) => Ok(t.into()),
        // a local time without a zone is the likeliest slip: say so rather than only "invalid"
        Err(_) if NaiveDateTime::parse_from_str(s, "%Y-%m-%dT%H:%M:%S").is_ok() => Err(bad("a time needs a zone (Z or +01:00)")),
        Err(e) => Err(bad(&e.to_string())),
    }
}

/// When a worker whose allocation ends at `deadline` hands back: `margin` earlier (at once,
/// in effect, where that lies before the clock's range).
pub fn hand_back_at(deadline: SystemTime, margin: Duration) -> SystemTime {
    deadline.checked_sub(margin).unwrap_or(UNIX_EPOCH)
}

/// The end time of the Slurm job this process runs in, or none outside Slurm, for a job
/// without a time limit, or when squeue cannot tell within 5 s. Blocks while squeue runs: call
/// it before the async runtime starts or on a blocking thread.
pub fn slurm_end_time_now() -> Option<SystemTime> {
    slurm_end_time(&|name| std::env::var(name).ok(), &squeue_end_time)
}

/// The job's end from `env`: SLURM_JOB_END_TIME (unix seconds, set by newer Slurm releases),
/// else `squeue(SLURM_JOB_ID)`, the output of `squeue -h -j JOBID -o %e`: a local time without
/// a zone (2026-12-01T23:00:00), or N/A, NONE (no time limit) or Unknown.
pub(crate) fn slurm_end_time(env: &dyn Fn(&str) -> Option<String>, squeue: &dyn Fn(&str) -> Option<String>) -> Option<SystemTime> {
    if let Some(secs) = env("SLURM_JOB_END_TIME").and_then(|v| v.trim().parse::<u64>().ok()) {
        return UNIX_EPOCH.checked_add(Duration::from_secs(secs));
    }
    let job = env("SLURM_JOB_ID")?;
    let job = job.trim();
    if job.is_empty() {
        return None;
    }
    let out = squeue(job)?;
    let end = out.lines().next()?.trim();
    let naive = NaiveDateTime::parse_from_str(end, "%Y-%m-%dT%H:%M:%S").ok()?;
    // `earliest`: a time a DST change makes ambiguous ends at its first occurrence, the safe side
    Local.from_local_datetime(&naive).earliest().map(SystemTime::from)
}

/// `squeue -h -j JOB -o %e`'s output; none where squeue is missing, fails or takes too long.
fn squeue_end_time(job: &str) -> Option<String> {
    let mut child = Command::new("squeue")
        .args(["-h", "-j", job, "-o", "%e"])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .ok()?;
    // the answer is one short line, far below a pipe's buffer: polling cannot deadlock on it
    let give_up = Instant::now() + SQUEUE_TIMEOUT;
    let status = loop {
        match child.try_wait() {
            Ok(Some(status)) => break status,
            Ok(None) if Instant::now() < give_up => std::thread::sleep(Duration::from_millis(20)),
            _ => {
                let _ = child.kill();
                let _ = child.wait();
                return None;
            }
        }
    };
    let mut out = String::new();
    child.stdout.take()?.read_to_string(&mut out).ok()?;
    status.success().then_some(out)
}

/// `1h30m`, `90m`, `3600s`, `2d`: numbers each followed by a unit; none for anything else.
fn parse_duration(s: &str) -> Option<Duration> {
    let mut total = Duration::ZERO;
    let mut rest = s;
    if rest.is_empty() {
        return None;
    }
    while !rest.is_empty() {
        let digits = rest.bytes().take_while(u8::is_ascii_digit).count();
        let (number, after) = rest.split_at(digits);
        let mut units = after.chars();
        let unit_secs = match units.next()? {
            'd' => 86_400,
            'h' => 3_600,
            'm' => 60,
            's' => 1,
            _ => return None,
        };
        let n: u64 = number.parse().ok()?;
        total = total.checked_add(Duration::from_secs(n.checked_mul(unit_secs)?))?;
        rest = units.as_str();
    }
    Some(total)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(secs: u64) -> SystemTime {
        UNIX_EPOCH + Duration::from_secs(secs)
    }

    /// 2026-12-01T23:00:00Z
    const END: u64 = 1_796_166_000;

    #[test]
    fn rfc3339_deadlines_with_a_zone_or_an_offset_are_read() {
        let now = at(0);
        assert_eq!(parse_deadline("2026-12-01T23:00:00Z", now), Ok(at(END)));
        assert_eq!(parse_deadline("2026-12-01T23:00:00+01:00", now), Ok(at(END - 3600)));
        assert_eq!(parse_deadline("2026-12-01T23:00:00-05:30", now), Ok(at(END + 5 * 3600 + 1800)));
        assert_eq!(parse_deadline(" 2026-12-01T23:00:00.5Z ", now), Ok(at(END) + Duration::from_millis(500)));
    }

    #[test]
    fn unix_second_deadlines_are_read_with_or_without_an_at() {
        assert_eq!(parse_deadline("@1796166000", at(0)), Ok(at(END)));
        assert_eq!(parse_deadline("1796166000", at(0)), Ok(at(END)));
        assert_eq!(parse_deadline("0", at(5)), Ok(at(0)));
    }

    #[test]
    fn relative_deadlines_count_from_now() {
        let now = at(1_000_000);
        assert_eq!(parse_deadline("+90m", now), Ok(at(1_000_000 + 5400)));
        assert_eq!(parse_deadline("+2h", now), Ok(at(1_000_000 + 7200)));
        assert_eq!(parse_deadline("+3600s", now), Ok(at(1_000_000 + 3600)));
        assert_eq!(parse_deadline("+1h30m", now), Ok(at(1_000_000 + 5400)));
        assert_eq!(parse_deadline("+1d2h3m4s", now), Ok(at(1_000_000 + 86_400 + 7200 + 180 + 4)));
    }

    #[test]
    fn bad_deadlines_name_the_value_and_the_accepted_forms() {
        for bad in ["", "soon", "+", "+90", "+1x", "+h", "@", "@12a", "2026-12-01", "2026-13-01T23:00:00Z", "+99999999999999999999d"] {
            let e = parse_deadline(bad, at(0)).unwrap_err();
            assert!(e.contains(&format!("{:?}", bad.trim())), "{e}");
            assert!(e.contains("RFC 3339") && e.contains("+1h30m") && e.contains("@1796166000"), "{e}");
        }
        let e = parse_deadline("2026-12-01T23:00:00", at(0)).unwrap_err();
        assert!(e.contains("needs a zone"), "{e}");
    }

    #[test]
    fn the_hand_back_comes_a_margin_before_the_deadline() {
        assert_eq!(hand_back_at(at(END), DEFAULT_HAND_BACK_MARGIN), at(END - 120));
        assert_eq!(hand_back_at(at(END), Duration::ZERO), at(END));
        assert!(hand_back_at(at(10), Duration::from_secs(60)) < at(10));
    }

    /// An environment of `vars`, and a squeue that answers `answer` for job 42 only.
    fn slurm(vars: &[(&str, &str)], answer: Option<&str>) -> Option<SystemTime> {
        let env = |name: &str| vars.iter().find(|(k, _)| *k == name).map(|(_, v)| v.to_string());
        let squeue = |job: &str| if job == "42" { answer.map(str::to_string) } else { None };
        slurm_end_time(&env, &squeue)
    }

    #[test]
    fn slurms_end_time_variable_is_taken_first() {
        assert_eq!(slurm(&[("SLURM_JOB_END_TIME", "1796166000"), ("SLURM_JOB_ID", "42")], Some("2030-01-01T00:00:00\n")), Some(at(END)));
    }

    #[test]
    fn without_the_variable_squeue_tells_the_end_in_local_time() {
        let local = Local.with_ymd_and_hms(2026, 12, 1, 23, 0, 0).earliest().map(SystemTime::from);
        assert!(local.is_some());
        assert_eq!(slurm(&[("SLURM_JOB_ID", "42")], Some("2026-12-01T23:00:00\n")), local);
        // an unreadable variable is no answer either
        assert_eq!(slurm(&[("SLURM_JOB_END_TIME", "soon"), ("SLURM_JOB_ID", "42")], Some("2026-12-01T23:00:00\n")), local);
    }

    #[test]
    fn no_job_or_no_time_limit_is_no_end_time() {
        assert_eq!(slurm(&[], Some("2026-12-01T23:00:00")), None);
        assert_eq!(slurm(&[("SLURM_JOB_ID", "")], Some("2026-12-01T23:00:00")), None);
        assert_eq!(slurm(&[("SLURM_JOB_ID", "42")], None), None);
        for answer in ["N/A\n", "NONE\n", "Unknown\n", "", "\n"] {
            assert_eq!(slurm(&[("SLURM_JOB_ID", "42")], Some(answer)), None, "{answer:?}");
        }
    }

    #[test]
    fn outside_slurm_the_real_lookup_finds_no_end_time() {
        if std::env::var_os("SLURM_JOB_ID").is_none() && std::env::var_os("SLURM_JOB_END_TIME").is_none() {
            assert_eq!(slurm_end_time_now(), None);
        }
        // a squeue that is missing (or has no such job) is no answer, not an error
        assert!(squeue_end_time("0").is_none_or(|out| out.trim().is_empty()));
    }
}
