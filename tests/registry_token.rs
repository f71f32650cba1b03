//! Registries under token authentication: Debian's `docker-registry` (Distribution 2.8) with
//! `auth: token`, and a small token server written here (Distribution ships none) that
//! speaks docker's token protocol (`GET realm?service=&scope=` with Basic credentials) and
//! its OAuth2 variant (`POST realm` with `grant_type=password|refresh_token`), signing ES256
//! JWTs with a key and self-signed certificate made by the `openssl` CLI at test time.
//!
//! Users: `alice` may pull and push everything; anonymous requests get tokens without
//! access. The server logs every request (method, grant, user, scopes; never a secret).

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use aws_lc_rs::rand::{SecureRandom, SystemRandom};
use aws_lc_rs::signature::{EcdsaKeyPair, ECDSA_P256_SHA256_FIXED_SIGNING};
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use base64::Engine;

use crate::build::Kiln;
use crate::registry::{app_image, pulled_digest, pushed_digest, TestRegistry};
use crate::util::{kiln, run, stderr, stdout};

pub const USER: &str = "alice";
pub const PASSWORD: &str = "Tok3n-Pa55word-xyz";
const SERVICE: &str = "kiln-test-registry";
const ISSUER: &str = "kiln-test-token-server";

/// State shared by the token server's threads.
struct State {
    key: EcdsaKeyPair,
    cert_der: Vec<u8>,
    rng: SystemRandom,
    /// Refresh tokens (identity tokens) it issued, and whose they are.
    refresh_tokens: Mutex<HashMap<String, String>>,
    /// One line per request: `METHOD grant=… user=… client_id=… scopes=…`.
    log: Mutex<Vec<String>>,
    /// Every access token it issued (to check none leaks into kiln's output).
    issued: Mutex<Vec<String>>,
    serial: AtomicU64,
    /// Whether it speaks the OAuth2 variant (`POST`); without, only `GET` and no refresh
    /// tokens, like token servers that predate it.
    oauth: bool,
}

/// A token server on 127.0.0.1 (random port), stopped on drop.
pub struct TokenServer {
    pub realm: String,
    pub cert_pem: PathBuf,
    state: Arc<State>,
    stop: Arc<AtomicBool>,
    addr: String,
    _dir: tempfile::TempDir,
}

fn openssl(args: &[&str]) {
    let out = Command::new("openssl")
        .args(args)
        .output()
        .expect("openssl must be installed (scripts/test.sh does it)");
    assert!(
        out.status.success(),
        "openssl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

impl TokenServer {
    pub fn start(oauth: bool) -> TokenServer {
        let dir = tempfile::tempdir().expect("token server dir");
        let p = |n: &str| dir.path().join(n).to_str().expect("utf8").to_string();
        openssl(&[
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
            "-days",
            "2",
            "-subj",
            "/CN=kiln-test-token-server",
            "-keyout",
            &p("key.pem"),
            "-out",
            &p("cert.pem"),
        ]);
        openssl(&[
            "pkcs8",
            "-topk8",
            "-nocrypt",
            "-in",
            &p("key.pem"),
            "-outform",
            "DER",
            "-out",
            &p("key.der"),
        ]);
        openssl(&[
            "x509",
            "-in",
            &p("cert.pem"),
            "-outform",
            "DER",
            "-out",
            &p("cert.der"),
        ]);
        let key = EcdsaKeyPair::from_pkcs8(
            &ECDSA_P256_SHA256_FIXED_SIGNING,
            &std::fs::read(p("key.der")).expect("key.der"),
        )
        .expect("PKCS#8 P-256 key");
        let state = Arc::new(State {
            key,
            cert_der: std::fs::read(p("cert.der")).expect("cert.der"),
            rng: SystemRandom::new(),
            refresh_tokens: Mutex::default(),
            log: Mutex::default(),
            issued: Mutex::default(),
            serial: AtomicU64::new(1),
            oauth,
        });
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind token server");
        listener.set_nonblocking(true).expect("nonblocking");
        let addr = listener.local_addr().expect("addr").to_string();
        let stop = Arc::new(AtomicBool::new(false));
        {
            let (state, stop) = (state.clone(), stop.clone());
            std::thread::spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    match listener.accept() {
                        Ok((conn, _)) => {
                            let state = state.clone();
                            std::thread::spawn(move || serve(&state, conn));
                        }
                        Err(_) => std::thread::sleep(Duration::from_millis(10)),
                    }
                }
            });
        }
        TokenServer {
            realm: format!("http://{addr}/token"),
            cert_pem: dir.path().join("cert.pem"),
            state,
            stop,
            addr,
            _dir: dir,
        }
    }

    /// The request log so far, one line per request.
    pub fn log(&self) -> Vec<String> {
        self.state.log.lock().map(|l| l.clone()).unwrap_or_default()
    }

    /// A refresh token for `user`, as `docker login` would have stored (`identitytoken`).
    pub fn issue_refresh_token(&self, user: &str) -> String {
        issue_refresh(&self.state, user)
    }

    /// Every access token issued so far.
    pub fn issued(&self) -> Vec<String> {
        self.state
            .issued
            .lock()
            .map(|l| l.clone())
            .unwrap_or_default()
    }
}

impl Drop for TokenServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        let _ = TcpStream::connect(&self.addr);
    }
}

fn random_string(state: &State) -> String {
    let mut b = [0u8; 24];
    state.rng.fill(&mut b).expect("random bytes");
    URL_SAFE_NO_PAD.encode(b)
}

fn issue_refresh(state: &State, user: &str) -> String {
    let t = format!("rt-{}", random_string(state));
    if let Ok(mut m) = state.refresh_tokens.lock() {
        m.insert(t.clone(), user.to_string());
    }
    t
}

/// `grant` actions of `scope` (`repository:name:a,b`) that `user` may have.
fn granted(user: Option<&str>, scope: &str) -> Option<serde_json::Value> {
    let mut parts = scope.splitn(3, ':');
    let (kind, name, actions) = (parts.next()?, parts.next()?, parts.next()?);
    let allowed: Vec<&str> = match user {
        Some(USER) => actions
            .split(',')
            .filter(|a| matches!(*a, "pull" | "push"))
            .collect(),
        _ => Vec::new(),
    };
    (!allowed.is_empty())
        .then(|| serde_json::json!({"type": kind, "name": name, "actions": allowed}))
}

/// An ES256 JWT for `user` (None: anonymous) granting what they may of `scopes`.
fn jwt(state: &State, user: Option<&str>, service: &str, scopes: &[String]) -> String {
    let header = serde_json::json!({
        "typ": "JWT",
        "alg": "ES256",
        "x5c": [STANDARD.encode(&state.cert_der)],
    });
    let t = now();
    let claims = serde_json::json!({
        "iss": ISSUER,
        "sub": user.unwrap_or(""),
        "aud": service,
        "exp": t + 300,
        "nbf": t - 10,
        "iat": t,
        "jti": format!("{}-{}", state.serial.fetch_add(1, Ordering::Relaxed), random_string(state)),
        "access": scopes.iter().filter_map(|s| granted(user, s)).collect::<Vec<_>>(),
    });
    let signing_input = format!(
        "{}.{}",
        URL_SAFE_NO_PAD.encode(header.to_string()),
        URL_SAFE_NO_PAD.encode(claims.to_string())
    );
    let sig = state
        .key
        .sign(&state.rng, signing_input.as_bytes())
        .expect("ES256 signature");
    let token = format!("{signing_input}.{}", URL_SAFE_NO_PAD.encode(sig.as_ref()));
    if let Ok(mut v) = state.issued.lock() {
        v.push(token.clone());
    }
    token
}

fn respond(conn: &mut TcpStream, status: &str, body: &serde_json::Value) {
    let body = body.to_string();
    let _ = write!(
        conn,
        "HTTP/1.1 {status}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
}

/// `(user, password)` of a `Basic` Authorization header.
fn basic(header: &str) -> Option<(String, String)> {
    let b64 = header.strip_prefix("Basic ")?;
    let raw = String::from_utf8(STANDARD.decode(b64.trim()).ok()?).ok()?;
    let (u, p) = raw.split_once(':')?;
    Some((u.to_string(), p.to_string()))
}

/// One request per connection.
fn serve(state: &State, conn: TcpStream) {
    let _ = conn.set_read_timeout(Some(Duration::from_secs(10)));
    let mut reader = BufReader::new(match conn.try_clone() {
        Ok(c) => c,
        Err(_) => return,
    });
    let mut conn = conn;
    let mut line = String::new();
    if reader.read_line(&mut line).is_err() {
        return;
    }
    let mut words = line.split_whitespace();
    let (method, target) = match (words.next(), words.next()) {
        (Some(m), Some(t)) => (m.to_string(), t.to_string()),
        _ => return,
    };
    let mut headers = HashMap::new();
    loop {
        let mut h = String::new();
        if reader.read_line(&mut h).is_err() || h.trim().is_empty() {
            break;
        }
        if let Some((k, v)) = h.split_once(':') {
            headers.insert(k.trim().to_ascii_lowercase(), v.trim().to_string());
        }
    }
    let len: usize = headers
        .get("content-length")
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    let mut body = vec![0u8; len.min(1 << 20)];
    if reader.read_exact(&mut body).is_err() {
        return;
    }
    let (path, query) = target.split_once('?').unwrap_or((&target, ""));
    if path != "/token" {
        respond(
            &mut conn,
            "404 Not Found",
            &serde_json::json!({"details": "no such endpoint"}),
        );
        return;
    }
    let params: Vec<(String, String)> = match method.as_str() {
        "GET" => form_urlencoded::parse(query.as_bytes())
            .into_owned()
            .collect(),
        "POST" if state.oauth => form_urlencoded::parse(&body).into_owned().collect(),
        _ => {
            if let Ok(mut log) = state.log.lock() {
                log.push(format!("{method} refused: method not allowed"));
            }
            respond(
                &mut conn,
                "405 Method Not Allowed",
                &serde_json::json!({"details": "GET or POST"}),
            );
            return;
        }
    };
    let param = |n: &str| params.iter().find(|(k, _)| k == n).map(|(_, v)| v.clone());
    let scopes: Vec<String> = params
        .iter()
        .filter(|(k, _)| k == "scope")
        .flat_map(|(_, v)| v.split(' ').map(str::to_string).collect::<Vec<_>>())
        .filter(|s| !s.is_empty())
        .collect();
    let service = param("service").unwrap_or_default();
    let grant = if method == "GET" {
        if headers.contains_key("authorization") {
            "basic".to_string()
        } else {
            "anonymous".to_string()
        }
    } else {
        param("grant_type").unwrap_or_default()
    };
    // Who is asking (Err: refused credentials).
    let user: Result<Option<String>, &str> = match grant.as_str() {
        "anonymous" => Ok(None),
        "basic" => match headers.get("authorization").and_then(|h| basic(h)) {
            Some((u, p)) if u == USER && p == PASSWORD => Ok(Some(u)),
            _ => Err("incorrect username or password"),
        },
        "password" => match (param("username"), param("password")) {
            (Some(u), Some(p)) if u == USER && p == PASSWORD => Ok(Some(u)),
            _ => Err("incorrect username or password"),
        },
        "refresh_token" => param("refresh_token")
            .and_then(|t| state.refresh_tokens.lock().ok()?.get(&t).cloned())
            .map(Some)
            .ok_or("unknown refresh token"),
        _ => Err("unsupported grant_type"),
    };
    let shown_user = match &user {
        Ok(Some(u)) => u.clone(),
        Ok(None) => "-".into(),
        Err(_) => "refused".into(),
    };
    if let Ok(mut log) = state.log.lock() {
        log.push(format!(
            "{method} grant={grant} user={shown_user} client_id={} offline={} service={service} scopes={}",
            param("client_id").unwrap_or_default(),
            param("access_type").as_deref() == Some("offline")
                || param("offline_token").as_deref() == Some("true"),
            scopes.join(" ")
        ));
    }
    let user = match user {
        Ok(u) => u,
        Err(why) => {
            let body = if method == "POST" {
                serde_json::json!({"error": "invalid_grant", "error_description": why})
            } else {
                serde_json::json!({"details": why})
            };
            respond(&mut conn, "401 Unauthorized", &body);
            return;
        }
    };
    let token = jwt(state, user.as_deref(), &service, &scopes);
    let mut answer = serde_json::json!({
        "token": token,
        "access_token": token,
        "expires_in": 300,
        "issued_at": "2026-01-01T00:00:00Z",
    });
    let offline = param("access_type").as_deref() == Some("offline")
        || param("offline_token").as_deref() == Some("true");
    if let (Some(u), true, true) = (&user, offline, state.oauth) {
        answer["refresh_token"] = serde_json::json!(issue_refresh(state, u));
    }
    if method == "POST" {
        if let Some(o) = answer.as_object_mut() {
            o.remove("token");
        }
    }
    respond(&mut conn, "200 OK", &answer);
}

/// A token server and a registry that trusts it.
pub struct TokenRegistry {
    pub tokens: TokenServer,
    pub reg: TestRegistry,
}

impl TokenRegistry {
    /// A registry behind a token server that speaks the OAuth2 variant too.
    pub fn start() -> TokenRegistry {
        Self::start_with(true)
    }

    pub fn start_with(oauth: bool) -> TokenRegistry {
        let tokens = TokenServer::start(oauth);
        let auth = format!(
            "auth:\n  token:\n    realm: {}\n    service: {SERVICE}\n    issuer: {ISSUER}\n    rootcertbundle: {}\n",
            tokens.realm,
            tokens.cert_pem.display()
        );
        let reg = TestRegistry::start_with_auth(&auth);
        TokenRegistry { tokens, reg }
    }

    /// Token server log lines that contain every one of `parts`.
    pub fn requests(&self, parts: &[&str]) -> Vec<String> {
        self.tokens
            .log()
            .into_iter()
            .filter(|l| parts.iter().all(|p| l.contains(p)))
            .collect()
    }

    /// Asserts that no password or token appears in `texts`.
    pub fn assert_no_secrets(&self, texts: &[String]) {
        let mut secrets = vec![PASSWORD.to_string()];
        secrets.extend(self.tokens.issued());
        secrets.extend(
            self.tokens
                .state
                .refresh_tokens
                .lock()
                .map(|m| m.keys().cloned().collect::<Vec<_>>())
                .unwrap_or_default(),
        );
        for text in texts {
            for s in &secrets {
                assert!(!text.contains(s.as_str()), "secret leaked:\n{text}");
            }
        }
    }
}

/// kiln with a private docker config and trace logging (so logs are checked for secrets).
fn k(kl: &Kiln, dc: &Path, args: &[&str], stdin: Option<&str>) -> Output {
    let mut cmd = kiln(kl.root.path());
    cmd.env("DOCKER_CONFIG", dc)
        .env("KILN_LOG", "trace")
        .args(args);
    run(cmd, stdin)
}

fn ok(tr: &TokenRegistry, kl: &Kiln, dc: &Path, args: &[&str]) -> String {
    let out = k(kl, dc, args, None);
    let (o, e) = (stdout(&out), stderr(&out));
    assert!(
        out.status.success(),
        "kiln {args:?}\nstdout:\n{o}\nstderr:\n{e}\ntoken server:\n{:#?}",
        tr.tokens.log()
    );
    tr.assert_no_secrets(&[o.clone(), e]);
    o
}

fn fails(tr: &TokenRegistry, kl: &Kiln, dc: &Path, args: &[&str]) -> String {
    let out = k(kl, dc, args, None);
    let (o, e) = (stdout(&out), stderr(&out));
    assert!(
        !out.status.success(),
        "kiln {args:?} should fail\nstdout:\n{o}"
    );
    tr.assert_no_secrets(&[o, e.clone()]);
    e
}

fn login(tr: &TokenRegistry, kl: &Kiln, dc: &Path, password: &str) -> Output {
    let out = k(
        kl,
        dc,
        &["login", "-u", USER, "--password-stdin", &tr.reg.addr],
        Some(&format!("{password}\n")),
    );
    tr.assert_no_secrets(&[stdout(&out), stderr(&out)]);
    out
}

#[test]
fn token_auth_login_push_pull_round_trip() {
    let tr = TokenRegistry::start();
    let dc = tempfile::tempdir().unwrap();
    let a = Kiln::new();
    let name = format!("{}/private/app:1", tr.reg.addr);
    app_image(&a, &name);

    // Anonymous: the token server grants nothing, the registry says why.
    let err = fails(&tr, &a, dc.path(), &["push", &name]);
    assert!(
        err.contains("requires authentication (HTTP 401)")
            && err.contains(&format!("kiln login {}", tr.reg.addr)),
        "{err}"
    );
    assert!(
        !tr.requests(&[
            "GET grant=anonymous",
            "scopes=repository:private/app:pull,push"
        ])
        .is_empty(),
        "{:#?}",
        tr.tokens.log()
    );

    // A wrong password: refused by the token server, nothing stored.
    let out = login(&tr, &a, dc.path(), "wrong-Pa55");
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("incorrect username or password"),
        "{}",
        stderr(&out)
    );
    assert!(!stderr(&out).contains("wrong-Pa55"), "{}", stderr(&out));
    assert!(!dc.path().join("config.json").exists());

    // The right one: like docker, the OAuth2 password grant (offline), and the refresh
    // token it returns is stored instead of the password.
    let out = login(&tr, &a, dc.path(), PASSWORD);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(stdout(&out).trim(), "Login Succeeded");
    assert!(
        !tr.requests(&["POST grant=password user=alice client_id=kiln offline=true"])
            .is_empty(),
        "{:#?}",
        tr.tokens.log()
    );
    let config: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dc.path().join("config.json")).unwrap()).unwrap();
    let entry = &config["auths"][&tr.reg.addr];
    let identity = entry["identitytoken"].as_str().unwrap_or_default();
    assert!(identity.starts_with("rt-"), "{config}");
    assert!(!config.to_string().contains(PASSWORD), "{config}");

    // Push and pull with it: access tokens come from the refresh-token grant.
    let out = ok(&tr, &a, dc.path(), &["push", &name]);
    assert!(out.contains(": Pushed"), "{out}");
    let digest = pushed_digest(&out);
    assert!(
        !tr.requests(&[
            "POST grant=refresh_token user=alice client_id=kiln",
            "scopes=repository:private/app:pull,push"
        ])
        .is_empty(),
        "{:#?}",
        tr.tokens.log()
    );
    let b = Kiln::new();
    let out = ok(&tr, &b, dc.path(), &["pull", &name]);
    assert_eq!(pulled_digest(&out), digest, "{out}");
    assert!(
        !tr.requests(&[
            "POST grant=refresh_token",
            "scopes=repository:private/app:pull"
        ])
        .is_empty(),
        "{:#?}",
        tr.tokens.log()
    );

    // Anonymous pull of the pushed image is refused with the registry's own error.
    let anon = tempfile::tempdir().unwrap();
    let c = Kiln::new();
    let err = fails(&tr, &c, anon.path(), &["pull", &name]);
    assert!(
        err.contains(&name)
            && err.contains("UNAUTHORIZED: authentication required")
            && err.contains("(HTTP 401)"),
        "{err}"
    );
    tr.assert_no_secrets(&[tr.reg.log()]);
}

#[test]
fn token_auth_wrong_stored_password_is_a_clear_error() {
    let tr = TokenRegistry::start();
    let dc = tempfile::tempdir().unwrap();
    let wrong = "Not-The-Pa55word";
    let auth = STANDARD.encode(format!("{USER}:{wrong}"));
    std::fs::write(
        dc.path().join("config.json"),
        serde_json::json!({"auths": {tr.reg.addr.clone(): {"auth": auth}}}).to_string(),
    )
    .unwrap();
    let a = Kiln::new();
    let err = fails(
        &tr,
        &a,
        dc.path(),
        &["pull", &format!("{}/private/app:1", tr.reg.addr)],
    );
    assert!(
        err.contains(&format!(
            "token server {} refused the stored credentials (HTTP 401)",
            tr.tokens.realm
        )) && err.contains("incorrect username or password"),
        "{err}"
    );
    assert!(!err.contains(wrong) && !err.contains(&auth), "{err}");
    assert!(
        !tr.requests(&["GET grant=basic user=refused"]).is_empty(),
        "{:#?}",
        tr.tokens.log()
    );
}

#[test]
fn token_auth_identity_token_only_config_and_credential_helper() {
    let tr = TokenRegistry::start();
    let a = Kiln::new();
    let name = format!("{}/idtok/app:1", tr.reg.addr);
    app_image(&a, &name);

    // config.json with nothing but an identity token.
    let dc = tempfile::tempdir().unwrap();
    let identity = tr.tokens.issue_refresh_token(USER);
    std::fs::write(
        dc.path().join("config.json"),
        serde_json::json!({"auths": {tr.reg.addr.clone(): {"identitytoken": identity}}})
            .to_string(),
    )
    .unwrap();
    let digest = pushed_digest(&ok(&tr, &a, dc.path(), &["push", &name]));
    let refresh = tr.requests(&[
        "POST grant=refresh_token user=alice client_id=kiln",
        &format!("service={SERVICE}"),
        "scopes=repository:idtok/app:pull,push",
    ]);
    assert!(!refresh.is_empty(), "{:#?}", tr.tokens.log());
    assert!(
        tr.requests(&["grant=basic"]).is_empty(),
        "the identity token must not be sent as a password: {:#?}",
        tr.tokens.log()
    );

    // A credential helper answering `<token>` as the username (docker's convention).
    let helper_dir = tempfile::tempdir().unwrap();
    let helper = helper_dir.path().join("docker-credential-kilntest");
    std::fs::write(
        &helper,
        format!(
            "#!/bin/sh\nread host\n[ \"$1\" = get ] || exit 1\nprintf '{{\"ServerURL\":\"%s\",\"Username\":\"<token>\",\"Secret\":\"{}\"}}' \"$host\"\n",
            tr.tokens.issue_refresh_token(USER)
        ),
    )
    .unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&helper, std::fs::Permissions::from_mode(0o755)).unwrap();
    let dc2 = tempfile::tempdir().unwrap();
    std::fs::write(
        dc2.path().join("config.json"),
        r#"{"credsStore":"kilntest"}"#,
    )
    .unwrap();
    let b = Kiln::new();
    let mut cmd = kiln(b.root.path());
    let path = format!(
        "{}:{}",
        helper_dir.path().display(),
        std::env::var("PATH").unwrap_or_default()
    );
    cmd.env("DOCKER_CONFIG", dc2.path())
        .env("KILN_LOG", "trace")
        .env("PATH", path)
        .args(["pull", &name]);
    let before = tr.requests(&["POST grant=refresh_token"]).len();
    let out = run(cmd, None);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(pulled_digest(&stdout(&out)), digest);
    assert!(tr.requests(&["POST grant=refresh_token"]).len() > before);
    tr.assert_no_secrets(&[stdout(&out), stderr(&out)]);
}

#[test]
fn token_auth_build_from_and_registry_cache() {
    let tr = TokenRegistry::start();
    let dc = tempfile::tempdir().unwrap();
    let a = Kiln::new();
    let out = login(&tr, &a, dc.path(), PASSWORD);
    assert!(out.status.success(), "{}", stderr(&out));
    let base = format!("{}/base/busybox:test", tr.reg.addr);
    a.busybox();
    ok(&tr, &a, dc.path(), &["tag", "busybox:test", &base]);
    ok(&tr, &a, dc.path(), &["push", &base]);

    // FROM pulls through token auth; the build cache goes to the registry.
    let cache = format!("{}/cache/app:buildcache", tr.reg.addr);
    let dockerfile = format!("FROM {base}\nRUN echo made > /made.txt\nCOPY app.txt /app.txt\n");
    let b = Kiln::new();
    let ctx = b.context("token-from", &dockerfile, &[("app.txt", "v1")]);
    let to = format!("type=registry,ref={cache},mode=max");
    let out = k(
        &b,
        dc.path(),
        &[
            "build",
            "--progress=plain",
            "--cache-to",
            &to,
            ctx.to_str().unwrap(),
        ],
        None,
    );
    let err = stderr(&out);
    assert!(out.status.success(), "{err}\n{:#?}", tr.tokens.log());
    assert!(err.contains(&format!("pulling {base}")), "{err}");
    tr.assert_no_secrets(&[stdout(&out), err]);
    assert!(!tr
        .requests(&["grant=refresh_token", "scopes=repository:base/busybox:pull"])
        .is_empty());
    assert!(!tr
        .requests(&[
            "grant=refresh_token",
            "scopes=repository:cache/app:pull,push"
        ])
        .is_empty());

    // A fresh root imports it: every step is cached.
    let c = Kiln::new();
    let ctx = c.context("token-from", &dockerfile, &[("app.txt", "v1")]);
    let from = format!("type=registry,ref={cache}");
    let out = k(
        &c,
        dc.path(),
        &[
            "build",
            "--progress=plain",
            "--cache-from",
            &from,
            ctx.to_str().unwrap(),
        ],
        None,
    );
    let err = stderr(&out);
    assert!(out.status.success(), "{err}");
    assert!(err.contains("imported build cache from"), "{err}");
    assert_eq!(err.matches("CACHED").count(), 2, "{err}");
    tr.assert_no_secrets(&[stdout(&out), err]);
}

#[test]
fn token_auth_cross_repository_mount_really_mounts() {
    let tr = TokenRegistry::start();
    let dc = tempfile::tempdir().unwrap();
    let a = Kiln::new();
    let out = login(&tr, &a, dc.path(), PASSWORD);
    assert!(out.status.success(), "{}", stderr(&out));
    let first = format!("{}/one/app:1", tr.reg.addr);
    app_image(&a, &first);
    ok(&tr, &a, dc.path(), &["push", &first]);
    let second = format!("{}/two/app:1", tr.reg.addr);
    let out = ok(&tr, &a, dc.path(), &["push", &first, &second]);
    assert!(out.contains("Mounted from one/app"), "{out}");
    assert!(!out.contains(": Pushed"), "{out}");

    // One token for both repositories, and the registry mounted instead of receiving.
    assert!(
        !tr.requests(&["repository:two/app:pull,push", "repository:one/app:pull"])
            .is_empty(),
        "{:#?}",
        tr.tokens.log()
    );
    let log = tr.reg.log();
    assert!(
        log.contains("POST /v2/two/app/blobs/uploads/?mount=sha256")
            && log.contains("from=one%2Fapp HTTP/1.1\" 201"),
        "registry log:\n{log}"
    );
    for upload in [
        "PATCH /v2/two/app/blobs/uploads/",
        "PUT /v2/two/app/blobs/uploads/",
    ] {
        assert!(
            !log.contains(upload),
            "{upload} in the registry log:\n{log}"
        );
    }
    let mounts = log
        .lines()
        .filter(|l| l.contains("POST /v2/two/app/blobs/uploads/?mount=") && l.contains("\" 201"))
        .count();
    assert_eq!(
        mounts,
        out.matches("Mounted from one/app").count(),
        "{out}\n{log}"
    );
}

/// A token server without the OAuth2 variant: `kiln login` falls back to the Basic `GET`,
/// stores the username and password (no refresh token), and push and pull fetch their
/// tokens with them.
#[test]
fn token_auth_without_oauth_uses_basic_token_requests() {
    let tr = TokenRegistry::start_with(false);
    let dc = tempfile::tempdir().unwrap();
    let a = Kiln::new();
    let out = login(&tr, &a, dc.path(), "wrong-Pa55");
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("incorrect username or password"),
        "{}",
        stderr(&out)
    );
    let out = login(&tr, &a, dc.path(), PASSWORD);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(
        !tr.requests(&["POST refused"]).is_empty()
            && !tr
                .requests(&["GET grant=basic user=alice client_id=kiln offline=true"])
                .is_empty(),
        "{:#?}",
        tr.tokens.log()
    );
    let config: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dc.path().join("config.json")).unwrap()).unwrap();
    let entry = &config["auths"][&tr.reg.addr];
    assert!(entry.get("identitytoken").is_none(), "{config}");
    assert_eq!(
        entry["auth"].as_str(),
        Some(STANDARD.encode(format!("{USER}:{PASSWORD}")).as_str())
    );

    let name = format!("{}/basic/app:1", tr.reg.addr);
    app_image(&a, &name);
    let digest = pushed_digest(&ok(&tr, &a, dc.path(), &["push", &name]));
    let b = Kiln::new();
    assert_eq!(
        pulled_digest(&ok(&tr, &b, dc.path(), &["pull", &name])),
        digest
    );
    for scope in [
        "repository:basic/app:pull,push",
        "repository:basic/app:pull",
    ] {
        assert!(
            !tr.requests(&["GET grant=basic user=alice", &format!("scopes={scope}")])
                .is_empty(),
            "{scope}: {:#?}",
            tr.tokens.log()
        );
    }
    assert!(tr.requests(&["grant=refresh_token"]).is_empty());
}
