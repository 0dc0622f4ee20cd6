//! Human output: aligned tables and short times. Scripts use `--json` instead.

/// Prints rows as a table with a header, columns separated by two spaces; the last
/// column is not padded.
pub fn table(header: &[&str], rows: &[Vec<String>]) {
    print!("{}", render(header, rows));
}

pub fn render(header: &[&str], rows: &[Vec<String>]) -> String {
    let mut widths: Vec<usize> = header.iter().map(|h| h.chars().count()).collect();
    for row in rows {
        for (i, cell) in row.iter().enumerate() {
            if i < widths.len() {
                widths[i] = widths[i].max(cell.chars().count());
            }
        }
    }
    let mut out = String::new();
    let mut line = |cells: Vec<&str>| {
        let last = cells.len().saturating_sub(1);
        let mut text = String::new();
        for (i, cell) in cells.iter().enumerate() {
            text.push_str(cell);
            if i < last {
                text.push_str(&" ".repeat(widths[i] - cell.chars().count() + 2));
            }
        }
        out.push_str(text.trim_end());
        out.push('\n');
    };
    line(header.to_vec());
    for row in rows {
        line(row.iter().map(String::as_str).collect());
    }
    out
}

/// `2026-11-23T05:01:02.123456789Z` → `2026-11-23 05:01:02`.
pub fn short_time(rfc3339: &str) -> String {
    let t = rfc3339.replacen('T', " ", 1);
    t.split('.').next().unwrap_or(&t).trim_end_matches('Z').to_string()
}

/// `3725` → `1h 2m 5s`.
pub fn duration(secs: u64) -> String {
    let (d, h, m, s) = (secs / 86_400, secs / 3600 % 24, secs / 60 % 60, secs % 60);
    match (d, h, m) {
        (0, 0, 0) => format!("{s}s"),
        (0, 0, _) => format!("{m}m {s}s"),
        (0, _, _) => format!("{h}h {m}m"),
        _ => format!("{d}d {h}h"),
    }
}

/// `1536` → `1.5 kB`, decimal units as `ls --si` shows them.
pub fn bytes(n: u64) -> String {
    const UNITS: [&str; 4] = ["kB", "MB", "GB", "TB"];
    if n < 1000 {
        return format!("{n} B");
    }
    let mut v = n as f64 / 1000.0;
    let mut unit = 0;
    while v >= 1000.0 && unit + 1 < UNITS.len() {
        v /= 1000.0;
        unit += 1;
    }
    format!("{v:.1} {}", UNITS[unit])
}

/// Text an agent chose (a file name, a URL) made safe for a terminal: control
/// characters — newlines, escape sequences that could rewrite the screen or the title —
/// are shown as `\n`, `\x1b`, and a backslash as `\\`.
pub fn safe(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\t' => out.push_str("\\t"),
            '\r' => out.push_str("\\r"),
            c if c.is_control() => out.push_str(&format!("\\x{:02x}", c as u32)),
            c => out.push(c),
        }
    }
    out
}

/// [`safe`] line by line, keeping the line breaks and tabs: for a diff of files the
/// agent wrote, whose content may carry escape sequences.
pub fn safe_lines(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for line in text.split_inclusive('\n') {
        let (body, end) = line.strip_suffix('\n').map_or((line, ""), |b| (b, "\n"));
        for part in body.split('\t').enumerate() {
            if part.0 > 0 {
                out.push('\t');
            }
            out.push_str(&safe(part.1));
        }
        out.push_str(end);
    }
    out
}

/// Prints a value as pretty JSON on stdout.
pub fn json<T: serde::Serialize>(value: &T) -> anyhow::Result<()> {
    println!("{}", serde_json::to_string_pretty(value)?);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn agent_chosen_text_cannot_drive_the_terminal() {
        assert_eq!(safe("reports/q3.csv"), "reports/q3.csv");
        assert_eq!(safe("a\nb"), "a\\nb");
        assert_eq!(safe("\u{1b}]0;pwned\u{7}x"), "\\x1b]0;pwned\\x07x");
        assert_eq!(safe("c:\\x1b"), "c:\\\\x1b", "a literal backslash cannot fake an escape");
        assert_eq!(safe("\u{9b}2J"), "\\x9b2J", "C1 controls too");
    }

    #[test]
    fn a_diff_keeps_its_lines_and_loses_its_escapes() {
        assert_eq!(safe_lines("-a\tb\n+\u{1b}[2Jc\n"), "-a\tb\n+\\x1b[2Jc\n");
        assert_eq!(safe_lines("no newline"), "no newline");
    }

    #[test]
    fn sizes_read_like_a_human_writes_them() {
        assert_eq!(bytes(0), "0 B");
        assert_eq!(bytes(999), "999 B");
        assert_eq!(bytes(1536), "1.5 kB");
        assert_eq!(bytes(10_000_000), "10.0 MB");
    }

    #[test]
    fn columns_align() {
        let out = render(&["A", "LONGER"], &[vec!["wide cell".into(), "x".into()], vec!["b".into(), "y".into()]]);
        assert_eq!(out, "A          LONGER\nwide cell  x\nb          y\n");
    }

    #[test]
    fn times_and_durations_are_short() {
        assert_eq!(short_time("2026-11-23T05:01:02.123456789Z"), "2026-11-23 05:01:02");
        assert_eq!(duration(3725), "1h 2m");
        assert_eq!(duration(65), "1m 5s");
    }
}
