//! HTML building blocks of the dashboard: escaping, the page layout, forms and the
//! server-side SVG charts. Every dynamic text goes through [`escape`].

use solrouter_ledger::PicoUsd;
use std::fmt::Write;

/// Text safe inside an element or a double-quoted attribute.
pub fn escape(text: &str) -> String {
    let mut escaped = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => escaped.push_str("&amp;"),
            '<' => escaped.push_str("&lt;"),
            '>' => escaped.push_str("&gt;"),
            '"' => escaped.push_str("&quot;"),
            '\'' => escaped.push_str("&#39;"),
            _ => escaped.push(c),
        }
    }
    escaped
}

/// The dashboard's sections, in menu order: path and label.
pub const SECTIONS: [(&str, &str); 7] = [
    ("/dashboard", "Overview"),
    ("/dashboard/usage", "Usage"),
    ("/dashboard/activity", "Activity"),
    ("/dashboard/keys", "Keys"),
    ("/dashboard/models", "Models"),
    ("/dashboard/credits", "Credits"),
    ("/dashboard/members", "Members"),
];

/// A whole page. `nav` is the logged-in user's email and CSRF token (for the logout
/// form); `None` on the login and sign-up pages.
pub fn page(title: &str, current: &str, nav: Option<(&str, &str)>, body: &str) -> String {
    let mut html = String::new();
    let _ = write!(
        html,
        "<!doctype html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">\
         <meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\
         <title>{} · SolRouter</title>\
         <link rel=\"stylesheet\" href=\"/static/dashboard.css\">\
         <script src=\"/static/dashboard.js\" defer></script></head><body>\
         <header><a class=\"brand\" href=\"/dashboard\">SolRouter</a>",
        escape(title)
    );
    if let Some((email, csrf)) = nav {
        html.push_str("<nav aria-label=\"Dashboard\"><ul>");
        for (path, label) in SECTIONS {
            let aria = if path == current { " aria-current=\"page\"" } else { "" };
            let _ = write!(html, "<li><a href=\"{path}\"{aria}>{label}</a></li>");
        }
        let _ = write!(
            html,
            "</ul></nav><form class=\"logout\" method=\"post\" action=\"/logout\">{}\
             <span class=\"who\">{}</span> <button type=\"submit\">Log out</button></form>",
            csrf_field(csrf),
            escape(email)
        );
    }
    let _ = write!(html, "</header><main><h1>{}</h1>{body}</main></body></html>", escape(title));
    html
}

pub fn csrf_field(token: &str) -> String {
    format!("<input type=\"hidden\" name=\"csrf\" value=\"{}\">", escape(token))
}

/// A message box; `kind` is `error` or `notice`.
pub fn message(kind: &str, text: &str) -> String {
    let role = if kind == "error" { "alert" } else { "status" };
    format!("<p class=\"{kind}\" role=\"{role}\">{}</p>", escape(text))
}

/// A table with a header row; cells are HTML already.
pub fn table(caption: &str, headers: &[&str], rows: &[Vec<String>]) -> String {
    let mut html = format!(
        "<div class=\"table-wrap\"><table><caption>{}</caption><thead><tr>",
        escape(caption)
    );
    for header in headers {
        let _ = write!(html, "<th scope=\"col\">{}</th>", escape(header));
    }
    html.push_str("</tr></thead><tbody>");
    if rows.is_empty() {
        let _ = write!(html, "<tr><td colspan=\"{}\">Nothing yet.</td></tr>", headers.len());
    }
    for row in rows {
        html.push_str("<tr>");
        for cell in row {
            let _ = write!(html, "<td>{cell}</td>");
        }
        html.push_str("</tr>");
    }
    html.push_str("</tbody></table></div>");
    html
}

/// USD with up to 6 decimals (what a person reads; the exact figure is in the CSV).
pub fn usd(amount: PicoUsd) -> String {
    let micro = amount.0 / 1_000_000;
    format!("${}.{:06}", micro / 1_000_000, micro % 1_000_000)
}

/// The series colours, cycled (distinguishable for the common colour blindnesses).
const COLOURS: [&str; 8] =
    ["#0072b2", "#e69f00", "#009e73", "#cc79a7", "#56b4e9", "#d55e00", "#f0e442", "#000000"];
const CHART_WIDTH: u64 = 720;
const CHART_HEIGHT: u64 = 220;
const CHART_LEFT: u64 = 70;
const CHART_BOTTOM: u64 = 30;

/// One stacked series of a chart: its name and its value in each bucket.
pub struct Series {
    pub name: String,
    pub values: Vec<u128>,
}

/// A stacked bar chart as inline SVG: one bar per bucket (labelled by `labels`), one
/// colour per series, with a legend and an accessible title; heights in integers (money
/// never becomes a float). `format` prints an axis value.
pub fn stacked_bars(
    title: &str,
    labels: &[String],
    series: &[Series],
    format: impl Fn(u128) -> String,
) -> String {
    let totals: Vec<u128> =
        (0..labels.len()).map(|bucket| series.iter().map(|s| s.values[bucket]).sum()).collect();
    let top = totals.iter().copied().max().unwrap_or(0).max(1);
    let plot_height = (CHART_HEIGHT - CHART_BOTTOM - 10) as u128;
    let plot_width = CHART_WIDTH - CHART_LEFT - 10;
    let n = labels.len().max(1) as u64;
    let slot = plot_width / n;
    let bar = (slot * 7 / 10).max(1);
    let mut svg = format!(
        "<figure class=\"chart\"><h2>{title}</h2><svg role=\"img\" viewBox=\"0 0 {CHART_WIDTH} {CHART_HEIGHT}\" \
         width=\"{CHART_WIDTH}\" height=\"{CHART_HEIGHT}\" aria-labelledby=\"t-{id}\">\
         <title id=\"t-{id}\">{title}</title>",
        id = chart_id(title),
        title = escape(title)
    );
    let base = CHART_HEIGHT - CHART_BOTTOM;
    let _ = write!(
        svg,
        "<line x1=\"{CHART_LEFT}\" y1=\"{base}\" x2=\"{}\" y2=\"{base}\" class=\"axis\"/>\
         <text x=\"{}\" y=\"14\" class=\"tick\" text-anchor=\"end\">{}</text>\
         <text x=\"{}\" y=\"{base}\" class=\"tick\" text-anchor=\"end\">0</text>",
        CHART_WIDTH - 10,
        CHART_LEFT - 6,
        escape(&format(top)),
        CHART_LEFT - 6
    );
    for (bucket, label) in labels.iter().enumerate() {
        let x = CHART_LEFT + bucket as u64 * slot + (slot - bar) / 2;
        let mut y = base as u128;
        for (index, one) in series.iter().enumerate() {
            let value = one.values[bucket];
            if value == 0 {
                continue;
            }
            let height = (value * plot_height / top).max(1);
            y -= height;
            let _ = write!(
                svg,
                "<rect x=\"{x}\" y=\"{y}\" width=\"{bar}\" height=\"{height}\" fill=\"{}\">\
                 <title>{}: {}</title></rect>",
                COLOURS[index % COLOURS.len()],
                escape(&one.name),
                escape(&format(value))
            );
        }
        // Label every bucket when there are few, else every fourth.
        if n <= 16 || bucket % 4 == 0 {
            let _ = write!(
                svg,
                "<text x=\"{}\" y=\"{}\" class=\"tick\" text-anchor=\"middle\">{}</text>",
                x + bar / 2,
                base + 16,
                escape(label)
            );
        }
    }
    svg.push_str("</svg><figcaption><ul class=\"legend\">");
    for (index, one) in series.iter().enumerate() {
        let total: u128 = one.values.iter().sum();
        let _ = write!(
            svg,
            "<li><svg width=\"12\" height=\"12\" aria-hidden=\"true\"><rect width=\"12\" \
             height=\"12\" fill=\"{}\"/></svg> {} ({})</li>",
            COLOURS[index % COLOURS.len()],
            escape(&one.name),
            escape(&format(total))
        );
    }
    svg.push_str("</ul></figcaption></figure>");
    svg
}

fn chart_id(title: &str) -> String {
    title.chars().filter(char::is_ascii_alphanumeric).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escapes_markup() {
        assert_eq!(
            escape("<a href=\"x\">'&'</a>"),
            "&lt;a href=&quot;x&quot;&gt;&#39;&amp;&#39;&lt;/a&gt;"
        );
    }

    #[test]
    fn charts_scale_stacks_to_the_tallest_bucket() {
        let labels = vec!["a".to_string(), "b".to_string()];
        let series = vec![
            Series { name: "m<1>".into(), values: vec![1, 0] },
            Series { name: "m2".into(), values: vec![1, 4] },
        ];
        let svg = stacked_bars("Spend", &labels, &series, |v| v.to_string());
        // The tallest bucket (4) fills the plot; the first bucket's two parts share half.
        let plot = (CHART_HEIGHT - CHART_BOTTOM - 10) as u128;
        assert!(svg.contains(&format!("height=\"{plot}\"")), "{svg}");
        assert!(svg.contains(&format!("height=\"{}\"", plot / 4)), "{svg}");
        assert!(svg.contains("m&lt;1&gt; (1)") && svg.contains("m2 (5)"), "{svg}");
    }

    #[test]
    fn usd_prints_six_decimals() {
        assert_eq!(usd(PicoUsd::parse_usd("1.5").unwrap()), "$1.500000");
        assert_eq!(usd(PicoUsd(123_456_789)), "$0.000123");
    }
}
