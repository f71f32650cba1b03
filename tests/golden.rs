//! Golden cases beyond BuildKit's vectors:
//! - `testdata/parser/<case>/Dockerfile` → `expected.json`: the typed stage model (every flag,
//!   heredocs, directives, both forms of every instruction).
//! - `testdata/check/<case>/Dockerfile` → `expected`: the full rendered `kiln check` output,
//!   every error and warning with its line:col and caret.
//!
//! Set `KILN_BLESS=1` to rewrite the expected files after an intended change, then review
//! the diff.

use kiln::graph::{BuildOptions, Platform};
use kiln::lint::{self, render};
use kiln::parser::{self, SourceLines};

use crate::util::{golden, subdirs, testdata};

#[test]
fn typed_instruction_golden_cases() {
    let cases = subdirs(&testdata("parser"));
    assert!(cases.len() >= 6);
    let mut failures = Vec::new();
    for case in &cases {
        let text = std::fs::read_to_string(case.join("Dockerfile")).expect("Dockerfile");
        let parsed = parser::parse(&text).unwrap_or_else(|e| panic!("{}: {e}", case.display()));
        let actual = serde_json::to_string_pretty(&parsed).expect("serializes") + "\n";
        failures.extend(golden(&case.join("expected.json"), &actual));
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

/// Options fixed for the golden files, so they don't depend on the machine.
fn fixed_options() -> BuildOptions {
    let p = Platform::parse("linux/amd64").expect("platform");
    BuildOptions {
        build_args: Default::default(),
        build_platform: p.clone(),
        target_platform: p,
    }
}

#[test]
fn check_golden_cases() {
    let cases = subdirs(&testdata("check"));
    assert!(cases.len() >= 15);
    let mut failures = Vec::new();
    for case in &cases {
        let text = std::fs::read_to_string(case.join("Dockerfile")).expect("Dockerfile");
        let report = lint::check(&text, &fixed_options());
        let actual = render::text(&report, "Dockerfile", &SourceLines::new(&text));
        failures.extend(golden(&case.join("expected"), &actual));
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}
