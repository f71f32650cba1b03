//! `kiln check` end to end: the real binary, its exit codes, `-f`, stdin, JSON output, and
//! `--help` listing only commands that work.

use crate::util::{kiln, run, stderr, stdout, testdata};

fn root() -> tempfile::TempDir {
    tempfile::tempdir().expect("tempdir")
}

#[test]
fn clean_dockerfile_passes() {
    let r = root();
    let mut cmd = kiln(r.path());
    cmd.arg("check").arg(testdata("check/clean"));
    let out = run(cmd, None);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(stdout(&out), "check complete: no problems found\n");
}

#[test]
fn errors_fail_with_located_messages() {
    let r = root();
    let mut cmd = kiln(r.path());
    cmd.args(["check", "-f"])
        .arg(testdata("check/unknown-instruction/Dockerfile"))
        .arg(testdata("check"));
    let out = run(cmd, None);
    assert_eq!(out.status.code(), Some(1));
    let text = stdout(&out);
    assert!(
        text.contains("/Dockerfile:2:1: error: unknown instruction: RUNN (did you mean RUN?)"),
        "{text}"
    );
    assert!(text.contains(" 2 | RUNN echo hi\n   | ^^^^\n"), "{text}");
}

#[test]
fn warnings_alone_exit_zero_and_error_directive_fails() {
    let r = root();
    let mut cmd = kiln(r.path());
    cmd.args(["check", "-f", "-"]);
    let out = run(cmd, Some("FROM busybox\nCMD echo hi\n"));
    assert!(out.status.success());
    assert!(stdout(&out).starts_with("Dockerfile:2:1: warning: JSON arguments recommended"));

    let mut cmd = kiln(r.path());
    cmd.args(["check", "-f", "-"]);
    let out = run(cmd, Some("# check=error=true\nFROM busybox\nCMD echo hi\n"));
    assert_eq!(out.status.code(), Some(1));
}

#[test]
fn json_output_for_editors() {
    let r = root();
    let mut cmd = kiln(r.path());
    cmd.args(["check", "--format", "json", "-f", "-"]);
    let out = run(cmd, Some("FROM busybox AS Build\nCOPY --form=x a b\n"));
    assert_eq!(out.status.code(), Some(1));
    let doc: serde_json::Value = serde_json::from_str(&stdout(&out)).expect("valid JSON");
    assert_eq!(doc["errors"], 1);
    assert_eq!(doc["warnings"], 1);
    let problems = doc["problems"].as_array().expect("problems");
    assert_eq!(problems[0]["rule"], "StageNameCasing");
    assert_eq!(problems[0]["line"], 1);
    assert_eq!(problems[0]["column"], 17);
    assert_eq!(problems[0]["severity"], "warning");
    assert_eq!(problems[1]["rule"], "UnknownFlag");
    assert_eq!(problems[1]["column"], 6);
    assert_eq!(
        problems[1]["message"],
        "unknown flag: --form (did you mean --from?)"
    );
    assert_eq!(problems[1]["source"], "COPY --form=x a b");
}

#[test]
fn build_args_change_variable_checks() {
    let r = root();
    let text = "ARG A\nFROM scratch\nARG A\nCOPY ${A:?must-be-set} /x\n";
    let mut cmd = kiln(r.path());
    cmd.args(["check", "-f", "-"]);
    let out = run(cmd, Some(text));
    assert_eq!(out.status.code(), Some(1), "{}", stdout(&out));
    assert!(stdout(&out).contains("A: must-be-set"), "{}", stdout(&out));

    let mut cmd = kiln(r.path());
    cmd.args(["check", "--build-arg", "A=1", "-f", "-"]);
    let out = run(cmd, Some(text));
    assert!(out.status.success(), "{}", stdout(&out));
}

#[test]
fn missing_files_are_reported_clearly() {
    let r = root();
    let mut cmd = kiln(r.path());
    cmd.args(["check", "/nonexistent/context"]);
    let out = run(cmd, None);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).contains("path \"/nonexistent/context\" not found"),
        "{}",
        stderr(&out)
    );

    let mut cmd = kiln(r.path());
    cmd.args(["check", "-f", "/nonexistent/Dockerfile"]);
    let out = run(cmd, None);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).contains("cannot read Dockerfile /nonexistent/Dockerfile"),
        "{}",
        stderr(&out)
    );

    let mut cmd = kiln(r.path());
    cmd.args(["check", "-f", "-"]);
    let out = run(cmd, Some("FROM a\n\u{0}"));
    assert_eq!(out.status.code(), Some(1));
}

#[test]
fn help_lists_only_working_commands_and_global_options() {
    let r = root();
    let mut cmd = kiln(r.path());
    cmd.arg("--help");
    let out = run(cmd, None);
    assert!(out.status.success());
    let help = stdout(&out);
    assert!(help.contains("check"), "{help}");
    assert!(help.contains("--root <DIR>"), "{help}");
    assert!(help.contains("-D, --debug"), "{help}");
    assert!(help.contains("-H, --host <URL>"), "{help}");
    let commands: Vec<&str> = help
        .split("Commands:")
        .nth(1)
        .and_then(|s| s.split("Options:").next())
        .unwrap_or("")
        .lines()
        .filter_map(|l| l.split_whitespace().next())
        .collect();
    assert_eq!(
        commands,
        vec![
            "build",
            "check",
            "images",
            "image",
            "history",
            "tag",
            "rmi",
            "save",
            "load",
            "pull",
            "push",
            "login",
            "logout",
            "builder",
            "daemon",
            "network",
            "system",
            "run",
            "create",
            "start",
            "stop",
            "kill",
            "restart",
            "rm",
            "ps",
            "logs",
            "exec",
            "attach",
            "wait",
            "inspect",
            "port",
            "cp",
            "container",
            "volume",
            "help"
        ],
        "{help}"
    );
}

#[test]
fn base_images_in_the_store_make_variable_checks_exact() {
    let k = crate::build::Kiln::new();
    let ctx = k.context("baseenv", "FROM scratch\nENV GOPATH=/go\n", &[]);
    k.build(&ctx, &["-t", "gobase"]);
    let text = "FROM gobase\nCOPY x $GOPATH/src/\nCOPY y $NOPE/\n";
    let mut cmd = kiln(k.root.path());
    cmd.args(["check", "-f", "-"]);
    let out = run(cmd, Some(text));
    let report = stdout(&out);
    assert!(
        !report.contains("'$GOPATH'"),
        "ENV of the base image is known:\n{report}"
    );
    assert!(
        report.contains("Usage of undefined variable '$NOPE'"),
        "{report}"
    );
}
