//! Image commands end to end: images, tag, rmi, history, save/load round trips (also through
//! skopeo and umoci), outputs, stdin contexts, prune and system df.

use std::io::Write;
use std::process::{Command, Stdio};

use crate::build::Kiln;
use crate::util::{kiln, run, stdout};

fn tool(name: &str) -> bool {
    Command::new(name)
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

#[test]
fn images_tag_rmi_history() {
    let k = Kiln::new();
    let ctx = k.context(
        "img",
        "FROM scratch\nCOPY a /a\nLABEL x=1\n",
        &[("a", "hello")],
    );
    let id = k.build(&ctx, &["-t", "app:1"]);
    k.ok(&["tag", "app:1", "localhost:5000/team/app:v2"]);
    let table = k.ok(&["images"]);
    let lines: Vec<&str> = table.lines().collect();
    assert!(
        lines[0].starts_with("REPOSITORY")
            && lines[0].contains("IMAGE ID")
            && lines[0].ends_with("SIZE"),
        "{table}"
    );
    let short = &id["sha256:".len()..][..12];
    assert!(
        table
            .lines()
            .any(|l| l.starts_with("app ") && l.contains(" 1 ") && l.contains(short)),
        "{table}"
    );
    assert!(
        table
            .lines()
            .any(|l| l.starts_with("localhost:5000/team/app") && l.contains("v2")),
        "{table}"
    );
    assert_eq!(k.ok(&["images", "-q"]).trim(), short);
    let v = k.inspect("localhost:5000/team/app:v2");
    assert_eq!(v["Id"], id.as_str());
    let tags: Vec<&str> = v["RepoTags"]
        .as_array()
        .expect("tags")
        .iter()
        .filter_map(|t| t.as_str())
        .collect();
    assert_eq!(tags, vec!["app:1", "localhost:5000/team/app:v2"]);

    let h = k.ok(&["history", "app:1"]);
    assert!(
        h.lines().next().expect("header").starts_with("IMAGE"),
        "{h}"
    );
    assert!(h.contains("LABEL x=1") && h.contains("COPY a /a"), "{h}");

    // By ID with two tags: refused without -f, like docker.
    let (_, err) = k.expect(&["rmi", short], false);
    assert!(err.contains("must be forced"), "{err}");
    let out = k.ok(&["rmi", "app:1"]);
    assert_eq!(out.trim(), "Untagged: app:1");
    let out = k.ok(&["rmi", "localhost:5000/team/app:v2"]);
    assert!(
        out.contains("Untagged: localhost:5000/team/app:v2")
            && out.contains(&format!("Deleted: {id}")),
        "{out}"
    );
    assert!(k.ok(&["images", "-q"]).trim().is_empty());
    let (_, err) = k.expect(&["image", "inspect", "app:1"], false);
    assert!(err.contains("No such image: app:1"), "{err}");
}

#[test]
fn save_load_round_trip_and_interop() {
    let k = Kiln::new();
    let base = k.busybox();
    let ctx = k.context(
        "rt",
        &format!("FROM {base}\nCOPY f /f\n"),
        &[("f", "round trip")],
    );
    let id = k.build(&ctx, &["-t", "rt:latest"]);
    let archive = k.work.path().join("rt.tar");
    k.ok(&["save", "-o", archive.to_str().expect("utf8"), "rt"]);

    let other = Kiln::new();
    let out = other.ok(&["load", "-i", archive.to_str().expect("utf8")]);
    assert_eq!(out.trim(), "Loaded image: rt:latest");
    assert_eq!(other.inspect("rt")["Id"], id.as_str());
    // A loaded image is a base like any other.
    let child = other.context("child", "FROM rt\nCOPY g /g\n", &[("g", "x")]);
    let files = other.files(&child, &[]);
    assert_eq!(
        std::fs::read_to_string(files.join("f")).expect("f"),
        "round trip"
    );

    // zstd and uncompressed archives load back to the same image ID.
    for c in ["zstd", "uncompressed"] {
        let a = k.work.path().join(format!("rt-{c}.tar"));
        k.ok(&[
            "save",
            "--compression",
            c,
            "-o",
            a.to_str().expect("utf8"),
            "rt",
        ]);
        let fresh = Kiln::new();
        fresh.ok(&["load", "-i", a.to_str().expect("utf8")]);
        assert_eq!(fresh.inspect("rt")["Id"], id.as_str(), "{c}");
    }

    if !tool("skopeo") {
        println!("skipped: skopeo not installed");
        return;
    }
    // skopeo reads kiln's archive both as docker-archive and as OCI.
    let inspect = Command::new("skopeo")
        .args([
            "inspect",
            "--config",
            &format!("docker-archive:{}", archive.display()),
        ])
        .output()
        .expect("skopeo");
    assert!(
        inspect.status.success(),
        "{}",
        String::from_utf8_lossy(&inspect.stderr)
    );
    let cfg: serde_json::Value = serde_json::from_slice(&inspect.stdout).expect("config JSON");
    assert_eq!(cfg["config"]["Cmd"], serde_json::json!(["/bin/sh"]));
    // skopeo copies kiln's image to an OCI archive; kiln loads it back with the same ID.
    let oci = k.work.path().join("rt-oci.tar");
    let copy = Command::new("skopeo")
        .args([
            "copy",
            &format!("docker-archive:{}", archive.display()),
            &format!("oci-archive:{}:rt:latest", oci.display()),
        ])
        .output()
        .expect("skopeo copy");
    assert!(
        copy.status.success(),
        "{}",
        String::from_utf8_lossy(&copy.stderr)
    );
    let fresh = Kiln::new();
    fresh.ok(&["load", "-i", oci.to_str().expect("utf8")]);
    let loaded = stdout(&run(
        {
            let mut c = kiln(fresh.root.path());
            c.args(["images", "--no-trunc", "-q"]);
            c
        },
        None,
    ));
    assert_eq!(loaded.trim(), id, "same image ID after skopeo's round trip");

    if !tool("umoci") {
        println!("skipped: umoci not installed");
        return;
    }
    // umoci unpacks kiln's OCI output.
    let oci_out = k.work.path().join("rt-kiln-oci.tar");
    let spec = format!("type=oci,dest={}", oci_out.display());
    k.build(&ctx, &["-t", "rt:latest", "--output", &spec]);
    let layout = k.work.path().join("layout");
    std::fs::create_dir_all(&layout).expect("layout");
    let untar = Command::new("tar")
        .arg("-xf")
        .arg(&oci_out)
        .arg("-C")
        .arg(&layout)
        .status()
        .expect("tar");
    assert!(untar.success());
    let bundle = k.work.path().join("bundle");
    let unpack = Command::new("umoci")
        .args([
            "unpack",
            "--image",
            &format!("{}:latest", layout.display()),
            bundle.to_str().expect("utf8"),
        ])
        .output()
        .expect("umoci");
    assert!(
        unpack.status.success(),
        "{}",
        String::from_utf8_lossy(&unpack.stderr)
    );
    assert_eq!(
        std::fs::read_to_string(bundle.join("rootfs/f")).expect("f"),
        "round trip"
    );
    assert!(bundle.join("rootfs/bin/busybox").is_file());
}

#[test]
fn outputs_iidfile_and_stdin_context() {
    let k = Kiln::new();
    let ctx = k.context("out", "FROM scratch\nCOPY a /a\n", &[("a", "A")]);
    let iid = k.work.path().join("iid");
    let tar_out = k.work.path().join("fs.tar");
    let spec = format!("type=tar,dest={}", tar_out.display());
    k.ok(&[
        "build",
        "--iidfile",
        iid.to_str().expect("utf8"),
        "--output",
        &spec,
        ctx.to_str().expect("utf8"),
    ]);
    assert!(std::fs::read_to_string(&iid)
        .expect("iid")
        .starts_with("sha256:"));
    let list = Command::new("tar")
        .arg("-tf")
        .arg(&tar_out)
        .output()
        .expect("tar");
    assert!(String::from_utf8_lossy(&list.stdout)
        .lines()
        .any(|l| l.trim_start_matches("./") == "a"));

    // A tar on stdin as the context, with its Dockerfile inside.
    let mut data = Vec::new();
    {
        let mut b = tar::Builder::new(&mut data);
        for (name, body) in [
            ("Dockerfile", "FROM scratch\nCOPY x /x\n"),
            ("x", "from stdin"),
        ] {
            let mut h = tar::Header::new_gnu();
            h.set_size(body.len() as u64);
            h.set_mode(0o644);
            h.set_cksum();
            b.append_data(&mut h, name, body.as_bytes())
                .expect("append");
        }
        b.finish().expect("finish");
    }
    let dest = k.work.path().join("stdin-out");
    let spec = format!("type=local,dest={}", dest.display());
    let mut cmd = kiln(k.root.path());
    cmd.args(["build", "-q", "--output", &spec, "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = cmd.spawn().expect("kiln");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(&data)
        .expect("write");
    let out = child.wait_with_output().expect("wait");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        std::fs::read_to_string(dest.join("x")).expect("x"),
        "from stdin"
    );

    // Dockerfile.dockerignore beside a custom -f wins over .dockerignore.
    let ctx = k.context(
        "ignore",
        "FROM scratch\nCOPY . /c/\n",
        &[
            ("keep", "k"),
            ("drop", "d"),
            (".dockerignore", "keep\n"),
            ("build/app.Dockerfile", "FROM scratch\nCOPY . /c/\n"),
            ("build/app.Dockerfile.dockerignore", "drop\nbuild\n"),
        ],
    );
    let dest = k.work.path().join("ignore-out");
    let spec = format!("type=local,dest={}", dest.display());
    let file = ctx.join("build/app.Dockerfile");
    k.ok(&[
        "build",
        "-f",
        file.to_str().expect("utf8"),
        "--output",
        &spec,
        ctx.to_str().expect("utf8"),
    ]);
    assert!(dest.join("c/keep").exists() && !dest.join("c/drop").exists());
}

#[test]
fn prune_and_disk_usage() {
    let k = Kiln::new();
    let ctx = k.context(
        "p",
        "FROM scratch\nCOPY big /big\n",
        &[("big", &"x".repeat(100_000))],
    );
    k.build(&ctx, &["-t", "keep"]);
    std::fs::write(ctx.join("big"), "y".repeat(200_000)).expect("rewrite");
    k.build(&ctx, &[]);
    let df = k.ok(&["system", "df"]);
    assert!(df.starts_with("TYPE"), "{df}");
    let images_line = df
        .lines()
        .find(|l| l.starts_with("Images"))
        .expect("Images row");
    assert!(images_line.split_whitespace().nth(1) == Some("2"), "{df}");
    let out = k.ok(&["image", "prune", "-f"]);
    assert!(
        out.contains("Deleted Images:") && out.contains("deleted: sha256:"),
        "{out}"
    );
    // The 200 kB layer was built here: it exists only as a snapshot, which the build cache
    // still uses (as with docker, image prune leaves build cache alone).
    assert!(!out.contains("Total reclaimed space: 2"), "{out}");
    assert_eq!(k.ok(&["images", "-q"]).lines().count(), 1);
    let out = k.ok(&["builder", "prune", "-f"]);
    assert!(out.contains("Deleted build cache objects: 1"), "{out}");
    assert!(
        out.contains("Total:\t20") && out.trim_end().ends_with("kB"),
        "{out}"
    );
    // The kept image still works after GC.
    let child = k.context("after", "FROM keep\n", &[]);
    let files = k.files(&child, &[]);
    assert_eq!(
        std::fs::metadata(files.join("big")).expect("big").len(),
        100_000
    );
    let out = k.ok(&["image", "prune", "-a", "-f"]);
    assert!(out.contains("untagged: keep:latest"), "{out}");
    assert!(k.ok(&["images", "-q"]).trim().is_empty());
}

#[test]
fn builder_prune_drops_cache_only_data() {
    let k = Kiln::new();
    let ctx = k.context(
        "bp",
        "FROM scratch\nCOPY a /a\n",
        &[("a", &"z".repeat(50_000))],
    );
    k.build(&ctx, &["-t", "kept"]);
    std::fs::write(ctx.join("a"), "y".repeat(60_000)).expect("rewrite");
    let id = k.build(&ctx, &[]);
    k.ok(&["rmi", &id]);
    let df = k.ok(&["system", "df"]);
    let row = df
        .lines()
        .find(|l| l.starts_with("Build Cache"))
        .expect("row");
    assert_eq!(row.split_whitespace().nth(2), Some("2"), "{df}");
    let out = k.ok(&["builder", "prune", "-f"]);
    assert!(out.contains("Deleted build cache objects: 1"), "{out}");
    // The tagged image's step is still cached.
    let path = ctx.to_str().expect("utf8").to_string();
    std::fs::write(ctx.join("a"), "z".repeat(50_000)).expect("restore");
    let (_, err) = k.expect(&["build", "--progress", "plain", &path], true);
    assert!(err.contains("CACHED"), "{err}");
    let out = k.ok(&["builder", "prune", "--all", "-f"]);
    assert!(out.contains("Deleted build cache objects: 1"), "{out}");
}

#[test]
fn docker_output_with_zstd_loads_back() {
    let k = Kiln::new();
    let ctx = k.context(
        "dockerout",
        "FROM scratch\nCOPY a /a\n",
        &[("a", "zstd me")],
    );
    let dest = k.work.path().join("img.tar");
    let spec = format!("type=docker,dest={}", dest.display());
    let id = k.build(
        &ctx,
        &["-t", "zimg:1", "--output", &spec, "--compression", "zstd"],
    );
    let other = Kiln::new();
    let out = other.ok(&["load", "-i", dest.to_str().expect("utf8")]);
    assert_eq!(out.trim(), "Loaded image: zimg:1");
    let v = other.inspect("zimg:1");
    assert_eq!(v["Id"], id.as_str());
    assert!(v["Descriptor"]["digest"].is_string());
    // Both layouts are there, and the layer blob is zstd (magic 28 b5 2f fd).
    let mut archive = tar::Archive::new(std::fs::File::open(&dest).expect("open"));
    let mut names = Vec::new();
    let mut zstd_blobs = 0;
    for entry in archive.entries().expect("entries") {
        let mut entry = entry.expect("entry");
        let name = entry.path().expect("path").to_string_lossy().to_string();
        let mut head = [0u8; 4];
        if name.starts_with("blobs/sha256/")
            && std::io::Read::read_exact(&mut entry, &mut head).is_ok()
            && head == [0x28, 0xb5, 0x2f, 0xfd]
        {
            zstd_blobs += 1;
        }
        names.push(name);
    }
    assert!(
        names.iter().any(|n| n == "manifest.json") && names.iter().any(|n| n == "index.json"),
        "{names:?}"
    );
    assert_eq!(zstd_blobs, 1, "one zstd layer: {names:?}");
}

#[test]
fn dockerfile_from_stdin_with_a_context_dir() {
    let k = Kiln::new();
    let ctx = k.context("stdinfile", "FROM scratch\n", &[("a", "A")]);
    let dest = k.work.path().join("stdinfile-out");
    let spec = format!("type=local,dest={}", dest.display());
    let mut cmd = kiln(k.root.path());
    cmd.args([
        "build",
        "-q",
        "-f",
        "-",
        "--output",
        &spec,
        ctx.to_str().expect("utf8"),
    ]);
    let out = run(cmd, Some("FROM scratch\nCOPY a /from-stdin\n"));
    assert!(out.status.success(), "{}", crate::util::stderr(&out));
    assert_eq!(
        std::fs::read_to_string(dest.join("from-stdin")).expect("file"),
        "A"
    );
}
