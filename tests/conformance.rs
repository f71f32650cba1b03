//! BuildKit's own Dockerfile parser vectors (testdata/conformance/buildkit, see its README
//! and NOTICE): every positive case dumps exactly to its `result`, every negative case fails,
//! and instruction line ranges match. The shell-expansion vectors run as unit tests of
//! `parser::shell`.

use kiln::parser::ast;

use crate::util::{diff, subdirs, testdata};

#[test]
fn every_parser_case_dumps_to_its_result() {
    let cases = subdirs(&testdata("conformance/buildkit/parser/testfiles"));
    assert!(
        cases.len() >= 30,
        "expected BuildKit's ~33 cases, found {}",
        cases.len()
    );
    let mut failures = Vec::new();
    for case in &cases {
        let text = std::fs::read_to_string(case.join("Dockerfile")).expect("Dockerfile");
        let expected = std::fs::read_to_string(case.join("result")).expect("result");
        match ast::parse(&text) {
            Ok(tree) => {
                let actual = tree.dump();
                if actual != expected {
                    failures.push(format!("{}:\n{}", case.display(), diff(&expected, &actual)));
                }
            }
            Err(e) => failures.push(format!("{}: unexpected error: {e}", case.display())),
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {} cases failed:\n{}",
        failures.len(),
        cases.len(),
        failures.join("\n")
    );
}

#[test]
fn every_negative_case_is_rejected() {
    let cases = subdirs(&testdata("conformance/buildkit/parser/testfiles-negative"));
    assert!(cases.len() >= 4);
    for case in &cases {
        let text = std::fs::read_to_string(case.join("Dockerfile")).expect("Dockerfile");
        let result = kiln::parser::parse(&text);
        assert!(
            result.is_err(),
            "{} parsed but must fail: {:?}",
            case.display(),
            result
        );
    }
}

#[test]
fn line_ranges_match_buildkit() {
    let text = std::fs::read_to_string(testdata(
        "conformance/buildkit/parser/testfile-line/Dockerfile",
    ))
    .expect("Dockerfile");
    let tree = ast::parse(&text).expect("parses");
    let ranges: Vec<(usize, usize)> = tree
        .nodes
        .iter()
        .map(|n| (n.span.start_line, n.span.end_line))
        .collect();
    assert_eq!(ranges, vec![(5, 5), (11, 12), (17, 31)]);
    assert_eq!(tree.empty_continuation_lines, vec![19, 20, 24, 27]);
}
