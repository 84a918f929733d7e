//! Markdown tables for the bench's output: cells padded into columns, figures rounded to what
//! the noise allows, and targets shown with whether they were met.

/// Renders `header` and `rows` as a markdown table, each column as wide as its widest cell.
pub fn markdown(header: &[String], rows: &[Vec<String>]) -> String {
    let width = |i: usize| {
        rows.iter().chain(std::iter::once(&header.to_vec())).map(|r| r.get(i).map_or(0, |c| c.chars().count())).max()
    };
    let widths: Vec<usize> = (0..header.len()).map(|i| width(i).unwrap_or(0).max(3)).collect();
    let line = |cells: &[String]| {
        let padded: Vec<String> = widths
            .iter()
            .enumerate()
            .map(|(i, w)| {
                let cell = cells.get(i).map_or("", String::as_str);
                format!("{cell}{}", " ".repeat(w - cell.chars().count()))
            })
            .collect();
        format!("| {} |", padded.join(" | "))
    };
    let mut out =
        vec![line(header), format!("|{}|", widths.iter().map(|w| "-".repeat(w + 2)).collect::<Vec<_>>().join("|"))];
    out.extend(rows.iter().map(|r| line(r)));
    out.join("\n")
}

/// A figure with as many decimals as are worth reading; a dash when there is none.
pub fn figure(value: f64) -> String {
    match value.abs() {
        v if v.is_nan() => "–".to_owned(),
        v if v < 10.0 => format!("{value:.2}"),
        v if v < 1000.0 => format!("{value:.1}"),
        _ => format!("{value:.0}"),
    }
}

/// A ratio, `1.07×`.
pub fn ratio(value: f64) -> String {
    if value.is_nan() {
        "–".to_owned()
    } else {
        format!("{value:.2}×")
    }
}

/// A bound a figure should keep.
#[derive(Clone, Copy, Debug)]
pub enum Goal {
    AtLeast(f64),
    AtMost(f64),
}

impl Goal {
    pub fn met(self, value: f64) -> bool {
        match self {
            Goal::AtLeast(bound) => value >= bound,
            Goal::AtMost(bound) => value <= bound,
        }
    }

    /// `≥ 1.1× ✓`: the bound (in `unit`) and whether `value` keeps it.
    pub fn show(self, value: f64, unit: &str) -> String {
        let (sign, bound) = match self {
            Goal::AtLeast(bound) => ("≥", bound),
            Goal::AtMost(bound) => ("≤", bound),
        };
        format!("{sign} {bound}{unit} {}", if self.met(value) { "✓" } else { "✗" })
    }
}
