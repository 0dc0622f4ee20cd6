//! Output that fits the terminal: the width to fit ($COLUMNS, else the size of the
//! terminal on stdout, else none when stdout is a pipe or a file), tables whose columns
//! are cut short or left out to fit it, and lines cut instead of wrapped.

/// The width to fit: `$COLUMNS` when set to a number, else the terminal's on stdout;
/// `None` (no limit) when stdout is not a terminal, so `gvmctl status | grep` sees all.
pub fn width() -> Option<usize> {
    let columns = std::env::var("COLUMNS").ok().and_then(|c| c.trim().parse::<usize>().ok());
    columns
        .or_else(|| terminal_size::terminal_size_of(std::io::stdout()).map(|(w, _)| usize::from(w.0)))
        .filter(|w| *w > 0)
}

/// `text` cut to `max` characters, ending in `…` when cut.
pub fn cut(text: &str, max: usize) -> String {
    if text.chars().count() <= max {
        return text.to_string();
    }
    if max == 0 {
        return String::new();
    }
    let mut out: String = text.chars().take(max - 1).collect();
    out.push('…');
    out
}

/// A column of a fitted table.
#[derive(Debug, Clone, Copy)]
pub struct Column {
    pub name: &'static str,
    /// When the table is too wide, columns are left out lowest `drop` first; 0: never.
    pub drop: u8,
    /// Before any column is left out, this one may be cut down to `shrink` characters
    /// (ending in `…`); 0: never cut.
    pub shrink: usize,
}

impl Column {
    /// A column that is always shown whole (the name of a row, its state).
    pub const fn keep(name: &'static str) -> Column {
        Column { name, drop: 0, shrink: 0 }
    }

    pub const fn drop(name: &'static str, drop: u8) -> Column {
        Column { name, drop, shrink: 0 }
    }

    pub const fn shrink(name: &'static str, drop: u8, shrink: usize) -> Column {
        Column { name, drop, shrink }
    }
}

/// Column widths for the columns in `shown`: whole, then the cuttable ones cut (the
/// rightmost first) while the table is wider than `width`.
fn widths(columns: &[Column], rows: &[Vec<String>], shown: &[usize], width: Option<usize>) -> Vec<usize> {
    let mut w: Vec<usize> = shown
        .iter()
        .map(|&i| {
            let cells = rows.iter().filter_map(|r| r.get(i)).map(|c| c.chars().count());
            cells.chain([columns[i].name.chars().count()]).max().unwrap_or(0)
        })
        .collect();
    let Some(width) = width else { return w };
    let total = |w: &[usize]| w.iter().sum::<usize>() + 2 * w.len().saturating_sub(1);
    for k in (0..shown.len()).rev() {
        let over = total(&w).saturating_sub(width);
        let c = columns[shown[k]];
        if over == 0 {
            break;
        }
        if c.shrink > 0 && w[k] > c.shrink {
            w[k] -= over.min(w[k] - c.shrink);
        }
    }
    w
}

/// The table fitted to `width`: cuttable columns cut first, then columns left out by
/// their `drop` order, and if even that is too wide every line is cut. Columns are
/// separated by two spaces; the last one is not padded.
pub fn table(columns: &[Column], rows: &[Vec<String>], width: Option<usize>) -> String {
    let mut shown: Vec<usize> = (0..columns.len()).collect();
    let total = |w: &[usize]| w.iter().sum::<usize>() + 2 * w.len().saturating_sub(1);
    let droppable = |shown: &[usize], k: usize| columns[shown[k]].drop > 0;
    // First out, before anything is cut: columns that say nothing (every cell `-` or `0`).
    let says_nothing = |i: usize| rows.iter().all(|r| r.get(i).is_none_or(|c| c == "-" || c == "0"));
    while width.is_some_and(|l| total(&widths(columns, rows, &shown, None)) > l) {
        let Some(pos) = (0..shown.len()).find(|&k| droppable(&shown, k) && says_nothing(shown[k])) else {
            break;
        };
        shown.remove(pos);
    }
    let mut w = widths(columns, rows, &shown, width);
    while let Some(limit) = width.filter(|l| total(&w) > *l) {
        let Some(pos) = (0..shown.len()).filter(|&k| droppable(&shown, k)).min_by_key(|&k| columns[shown[k]].drop)
        else {
            break;
        };
        shown.remove(pos);
        w = widths(columns, rows, &shown, Some(limit));
    }
    let mut out = String::new();
    let mut line = |cells: Vec<&str>| {
        let mut text = String::new();
        for (k, cell) in cells.iter().enumerate() {
            let cell = cut(cell, w[k]);
            text.push_str(&cell);
            if k + 1 < cells.len() {
                text.push_str(&" ".repeat(w[k] - cell.chars().count() + 2));
            }
        }
        let text = text.trim_end();
        out.push_str(&width.map_or_else(|| text.to_string(), |l| cut(text, l)));
        out.push('\n');
    };
    line(shown.iter().map(|&i| columns[i].name).collect());
    for row in rows {
        line(shown.iter().map(|&i| row.get(i).map_or("", String::as_str)).collect());
    }
    out
}

/// `a, b, c, … 37 more` in at most `room` characters (at least the count).
pub fn names(names: &[&str], room: usize) -> String {
    let all = names.join(", ");
    if all.chars().count() <= room {
        return all;
    }
    let mut out = String::new();
    for (k, name) in names.iter().enumerate() {
        let sep = if k == 0 { "" } else { ", " };
        let left = names.len() - k - 1;
        let tail = if left == 0 { String::new() } else { format!(", … {left} more") };
        if out.chars().count() + sep.len() + name.chars().count() + tail.chars().count() > room {
            let left = names.len() - k;
            return if k == 0 { format!("{left} profiles") } else { format!("{out}, … {left} more") };
        }
        out.push_str(sep);
        out.push_str(name);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cols() -> Vec<Column> {
        vec![
            Column::keep("AGENT"),
            Column::keep("STATE"),
            Column::drop("PID", 1),
            Column::drop("RESTARTS", 2),
            Column::shrink("LAST DECISION", 3, 12),
        ]
    }

    fn rows() -> Vec<Vec<String>> {
        vec![
            ["researcher", "running", "4242", "0", "allow GET https://api.example.com/v1/search?q=long"],
            ["mailer", "failed", "-", "12", "deny POST https://smtp.example.com/send"],
        ]
        .into_iter()
        .map(|r| r.into_iter().map(String::from).collect())
        .collect()
    }

    #[test]
    fn without_a_width_nothing_is_cut() {
        let out = table(&cols(), &rows(), None);
        assert!(out.contains("allow GET https://api.example.com/v1/search?q=long"), "{out}");
        assert!(out.lines().next().unwrap().contains("RESTARTS"));
    }

    #[test]
    fn the_free_text_column_is_cut_before_any_column_is_left_out() {
        // AGENT 10 + STATE 7 + PID 4 + RESTARTS 8 + separators 8 = 37; 60 leaves 23.
        let out = table(&cols(), &rows(), Some(60));
        assert!(out.lines().all(|l| l.chars().count() <= 60), "{out}");
        assert!(out.lines().next().unwrap().contains("RESTARTS"), "{out}");
        assert!(out.contains("allow GET https://api.…"), "{out}");
        assert!(out.contains("deny POST https://smtp…"), "{out}");
    }

    #[test]
    fn columns_are_left_out_in_their_order_then_lines_are_cut() {
        // 40: the decision cut to 12 is not enough (10+7+4+8+12+8 = 49): PID goes first.
        let out = table(&cols(), &rows(), Some(40));
        let header = out.lines().next().unwrap();
        assert!(!header.contains("PID") && !header.contains("RESTARTS") && header.contains("LAST DEC"), "{out}");
        assert!(out.lines().all(|l| l.chars().count() <= 40), "{out}");
        // Narrower than the columns that are never left out: every line is cut.
        let out = table(&cols(), &rows(), Some(12));
        assert!(out.lines().all(|l| l.chars().count() <= 12), "{out}");
        assert!(out.lines().nth(1).unwrap().starts_with("researcher"), "{out}");
    }

    #[test]
    fn columns_that_say_nothing_are_left_out_first() {
        let mut rows = rows();
        rows[1][3] = "0".into();
        // RESTARTS is all 0: it goes before PID, and the decision keeps more room.
        let out = table(&cols(), &rows, Some(60));
        let header = out.lines().next().unwrap();
        assert!(header.contains("PID") && !header.contains("RESTARTS"), "{out}");
        assert!(out.contains("allow GET https://api.example.co…"), "{out}");
    }

    #[test]
    fn name_lists_fit_their_room_and_say_how_many_are_left() {
        let n = ["alpha", "beta", "gamma", "delta"];
        assert_eq!(names(&n, 100), "alpha, beta, gamma, delta");
        assert_eq!(names(&n, 25), "alpha, beta, gamma, delta");
        assert_eq!(names(&n, 24), "alpha, beta, … 2 more");
        assert_eq!(names(&n, 5), "4 profiles");
        assert_eq!(cut("abcdef", 4), "abc…");
        assert_eq!(cut("abc", 4), "abc");
    }
}
