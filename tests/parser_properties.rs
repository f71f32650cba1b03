//! Property tests: no input makes the frontend (parser, typed instructions, lints) panic, and
//! big inputs are handled in one pass. Timing is measured by `bench/parse.sh`, not here.

use kiln::graph::BuildOptions;
use proptest::prelude::*;

/// Fragments that exercise every lexical rule: keywords, flags, quotes, escapes, heredocs,
/// continuations, JSON, directives, variables, CRLF, unicode.
fn fragment() -> impl Strategy<Value = String> {
    prop_oneof![
        Just("FROM ".to_string()),
        Just("RUN ".to_string()),
        Just("COPY ".to_string()),
        Just("ADD ".to_string()),
        Just("ENV ".to_string()),
        Just("ARG ".to_string()),
        Just("LABEL ".to_string()),
        Just("ONBUILD ".to_string()),
        Just("HEALTHCHECK ".to_string()),
        Just("--mount=type=cache,target=/x ".to_string()),
        Just("--from=".to_string()),
        Just("<<EOF".to_string()),
        Just("<<-'EOF'".to_string()),
        Just("EOF".to_string()),
        Just("\\\n".to_string()),
        Just("`\n".to_string()),
        Just("\r\n".to_string()),
        Just("\n".to_string()),
        Just("# escape=`\n".to_string()),
        Just("# comment\n".to_string()),
        Just("[\"a\", \"b\"]".to_string()),
        Just("[".to_string()),
        Just("\"".to_string()),
        Just("'".to_string()),
        Just("${A:-b}".to_string()),
        Just("${A//x/y}".to_string()),
        Just("$A".to_string()),
        Just("${".to_string()),
        Just("=".to_string()),
        Just(" AS x".to_string()),
        Just("한국어".to_string()),
        "[a-z0-9 =/.:-]{0,12}",
        any::<char>().prop_map(|c| c.to_string()),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 2000, .. ProptestConfig::default() })]

    #[test]
    fn structured_input_never_panics(parts in prop::collection::vec(fragment(), 0..40)) {
        let text: String = parts.concat();
        let _ = kiln::parser::parse(&text);
        let _ = kiln::lint::check(&text, &BuildOptions::default());
    }

    #[test]
    fn arbitrary_text_never_panics(text in ".{0,400}") {
        let _ = kiln::parser::parse(&text);
        let _ = kiln::lint::check(&text, &BuildOptions::default());
    }
}

#[test]
fn a_hundred_thousand_lines_parse() {
    let mut text = String::from("FROM busybox AS base\n");
    for i in 0..25_000 {
        text.push_str(&format!(
            "ENV V{i}=value{i}\nRUN echo {i} \\\n  && true\nCOPY --chown=1:1 a{i} /b/\n"
        ));
    }
    let file = kiln::parser::parse(&text).expect("parses");
    assert_eq!(file.stages[0].instructions.len(), 75_000);
}
