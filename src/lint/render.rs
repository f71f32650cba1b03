//! Printing check results: compiler-style text with the source line and a caret, or JSON
//! for editors and CI.

use serde::Serialize;

use super::{Problem, Report, Severity};
use crate::parser::SourceLines;

/// The column range to underline on the problem's first line: (1-based start column, width).
fn underline(p: &Problem, src: &SourceLines) -> (usize, usize) {
    let text = src.line(p.span.start_line).unwrap_or("");
    if p.span.has_columns() && p.span.start_line == p.span.end_line {
        return (
            p.span.start_col,
            p.span.end_col.saturating_sub(p.span.start_col).max(1),
        );
    }
    if p.span.has_columns() {
        let len = text.chars().count();
        return (
            p.span.start_col,
            (len + 1).saturating_sub(p.span.start_col).max(1),
        );
    }
    let lead = text.chars().take_while(|c| c.is_whitespace()).count();
    let len = text.trim().chars().count();
    (lead + 1, len.max(1))
}

/// `Dockerfile:LINE:COL: severity: message [Rule]`, the source line, and a caret line.
pub fn text(report: &Report, file_name: &str, src: &SourceLines) -> String {
    let mut out = String::new();
    for p in &report.problems {
        out.push_str(&problem_text(p, file_name, src));
    }
    out.push_str(&summary(report));
    out.push('\n');
    out
}

/// One problem, rendered as by [`text`] (also used for build errors).
pub fn problem_text(p: &Problem, file_name: &str, src: &SourceLines) -> String {
    let mut out = String::new();
    let (col, width) = underline(p, src);
    let sev = match p.severity {
        Severity::Error => "error",
        Severity::Warning => "warning",
    };
    let line_no = p.span.start_line;
    out.push_str(&format!(
        "{file_name}:{line_no}:{col}: {sev}: {}",
        p.message
    ));
    if p.url.is_some() {
        out.push_str(&format!(" [{}]", p.rule));
    }
    out.push('\n');
    if let Some(text) = src.line(line_no) {
        let gutter = line_no.to_string().len();
        out.push_str(&format!(" {line_no} | {text}\n"));
        let pad: String = text
            .chars()
            .take(col.saturating_sub(1))
            .map(|c| if c == '\t' { '\t' } else { ' ' })
            .collect();
        out.push_str(&format!(
            " {} | {pad}{}\n",
            " ".repeat(gutter),
            "^".repeat(width)
        ));
    }
    if let Some(url) = &p.url {
        out.push_str(&format!("   = help: {url}\n"));
    }
    out
}

/// `2 errors, 1 warning` or `no problems found`.
pub fn summary(report: &Report) -> String {
    let plural = |n: usize, word: &str| format!("{n} {word}{}", if n == 1 { "" } else { "s" });
    match (report.errors(), report.warnings()) {
        (0, 0) => "check complete: no problems found".to_string(),
        (e, w) => format!(
            "check complete: {}, {}",
            plural(e, "error"),
            plural(w, "warning")
        ),
    }
}

#[derive(Serialize)]
struct JsonProblem<'a> {
    file: &'a str,
    line: usize,
    column: usize,
    end_line: usize,
    end_column: usize,
    severity: Severity,
    rule: &'a str,
    message: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    url: Option<&'a str>,
    source: &'a str,
}

#[derive(Serialize)]
struct JsonReport<'a> {
    file: &'a str,
    errors: usize,
    warnings: usize,
    problems: Vec<JsonProblem<'a>>,
}

/// The report as one JSON document.
pub fn json(report: &Report, file_name: &str, src: &SourceLines) -> String {
    let problems = report
        .problems
        .iter()
        .map(|p| {
            let (col, width) = underline(p, src);
            let end_line = p.span.end_line.max(p.span.start_line);
            JsonProblem {
                file: file_name,
                line: p.span.start_line,
                column: col,
                end_line,
                end_column: if end_line == p.span.start_line {
                    col + width
                } else {
                    p.span.end_col.max(1)
                },
                severity: p.severity,
                rule: &p.rule,
                message: &p.message,
                url: p.url.as_deref(),
                source: src.line(p.span.start_line).unwrap_or(""),
            }
        })
        .collect();
    let doc = JsonReport {
        file: file_name,
        errors: report.errors(),
        warnings: report.warnings(),
        problems,
    };
    serde_json::to_string_pretty(&doc)
        .unwrap_or_else(|e| format!("{{\"error\": {:?}}}", e.to_string()))
}
