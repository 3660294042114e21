//! Renders diagnostics with miette (colour on a terminal, plain for tests).

use losslang_compiler::diag::{Diagnostic, Report};
use losslang_compiler::sema::Source;

pub fn report(d: &Diagnostic, sources: &[Source]) -> Report {
    let src = sources.get(d.file).or(sources.first());
    let (name, text) = src
        .map(|s| (s.name.clone(), s.text.clone()))
        .unwrap_or_default();
    // Spans past the end (e.g. an empty file) are clamped so rendering never fails.
    let mut diag = d.clone();
    let len = text.len();
    diag.span.start = diag.span.start.min(len);
    diag.span.end = diag.span.end.clamp(diag.span.start, len);
    for (s, _) in &mut diag.related {
        s.start = s.start.min(len);
        s.end = s.end.clamp(s.start, len);
    }
    Report {
        diag,
        source: miette::NamedSource::new(name, text),
    }
}

/// Renders any miette diagnostic to a string.
pub fn render(d: &dyn miette::Diagnostic, color: bool, width: usize) -> String {
    let theme = if color {
        miette::GraphicalTheme::unicode()
    } else {
        miette::GraphicalTheme::unicode_nocolor()
    };
    let handler = miette::GraphicalReportHandler::new_themed(theme).with_width(width);
    let mut out = String::new();
    if handler.render_report(&mut out, d).is_err() {
        out = format!("{d}\n");
    }
    out
}

pub fn render_diag(d: &Diagnostic, sources: &[Source], color: bool, width: usize) -> String {
    render(&report(d, sources), color, width)
}
