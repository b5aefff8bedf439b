//! The kubelet API's streaming endpoints (issue 5): `kubectl exec`, `attach` and
//! `port-forward` through the test API server, which proxies the upgrade to this
//! node's kubelet API (dialled on 127.0.0.1) as kube-apiserver does — over SPDY/3.1
//! (`KUBECTL_REMOTE_COMMAND_WEBSOCKETS=false`) and over WebSocket (v5, kubectl's
//! default). Real containerd, a real busybox pod, real kubectl; traffic only on
//! loopback and into the test pod's own network namespace.

mod common;

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use common::api::*;
use common::*;
use rkubelet_test_apiserver::TestApiServer;

/// curl to the kubelet API: (HTTP code, body).
fn curl(url: &str, extra: &[&str]) -> (u16, String) {
    let out = Command::new("curl").args(["-sk", "--noproxy", "*", "--max-time", "10", "-w", "\n%{http_code}"]).args(extra).arg(url).output().expect("curl");
    let s = String::from_utf8_lossy(&out.stdout).to_string();
    let (body, code) = s.rsplit_once('\n').unwrap_or(("", "0"));
    (code.trim().parse().unwrap_or(0), body.to_string())
}

fn write_cert(srv: &TestApiServer, dir: &Path, cn: &str) -> Vec<String> {
    let (c, k) = srv.issue_client_cert(cn, &[], Duration::from_secs(3600)).unwrap();
    let (cp, kp) = (dir.join(format!("{cn}.crt")), dir.join(format!("{cn}.key")));
    std::fs::write(&cp, c).unwrap();
    std::fs::write(&kp, k).unwrap();
    vec!["--cert".into(), cp.display().to_string(), "--key".into(), kp.display().to_string()]
}

/// A kubelet-API test server, an agent `name` joined to it (its kubelet API
/// up, `extra` flags added), the guard that deletes its pods, and curl's
/// arguments for the allowed client certificate `apiserver-kubelet-client`.
struct Setup {
    srv: TestApiServer,
    admin: PathBuf,
    dir: PathBuf,
    agent: Agent,
    allowed: Vec<String>,
    _cleanup: DeletePods,
}

async fn setup(name: &str, dir: &str, extra: &[&str]) -> Setup {
    let dir = PathBuf::from("/var/lib/rkubelet-test/agents").join(dir);
    let KubeletApi { srv, admin, node, ca } = kubelet_api_server(&dir).await;
    let (node_s, ca_s) = (node.to_str().unwrap().to_string(), ca.to_str().unwrap().to_string());
    let mut args = vec!["--kubeconfig", &node_s, "--client-ca-file", &ca_s];
    args.extend_from_slice(extra);
    let agent = tokio::task::block_in_place(|| Agent::with_options(name, &[], &args));
    let allowed = write_cert(&srv, &dir, "apiserver-kubelet-client");
    tokio::task::block_in_place(|| agent.wait_until(Duration::from_secs(20), "kubelet API up", || curl("https://127.0.0.1:10250/healthz", &[]).0 != 0));
    Setup { srv, _cleanup: DeletePods(admin.clone()), admin, dir, agent, allowed }
}

/// `kubectl exec` with `env`: (exit code, stdout, stderr), killed after 30 s.
fn kubectl_exec(admin: &Path, env: &[(&str, &str)], args: &[&str], stdin: Option<&str>) -> (i32, String, String) {
    let mut cmd = Command::new("timeout");
    cmd.args(["30", "kubectl", "--kubeconfig", admin.to_str().unwrap(), "exec"]).args(args);
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd.stdin(if stdin.is_some() { Stdio::piped() } else { Stdio::null() }).stdout(Stdio::piped()).stderr(Stdio::piped());
    let mut child = cmd.spawn().expect("kubectl");
    if let Some(input) = stdin {
        use std::io::Write;
        let mut w = child.stdin.take().unwrap();
        w.write_all(input.as_bytes()).unwrap();
    }
    let out = child.wait_with_output().unwrap();
    (out.status.code().unwrap_or(-1), String::from_utf8_lossy(&out.stdout).to_string(), String::from_utf8_lossy(&out.stderr).to_string())
}

/// Direct clients: a v4 WebSocket exec gets upstream's Status with the exit code;
/// a broken SPDY frame ends only its own connection.
async fn direct_clients(allowed: &[&str]) {
    use futures::StreamExt;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio_tungstenite::tungstenite::{client::IntoClientRequest, Message};
    let mut req = "wss://127.0.0.1:10250/exec/default/shell/c?command=sh&command=-c&command=echo%20hi%3B%20exit%207&output=1".into_client_request().unwrap();
    req.headers_mut().insert("Sec-WebSocket-Protocol", "v4.channel.k8s.io".parse().unwrap());
    let (mut ws, resp) = tokio_tungstenite::client_async(req, kubelet_tls(allowed).await).await.expect("websocket handshake");
    assert_eq!(resp.headers().get("sec-websocket-protocol").unwrap(), "v4.channel.k8s.io");
    let mut got: Vec<(u8, Vec<u8>)> = Vec::new();
    let mut closed = false;
    for _ in 0..20 {
        match tokio::time::timeout(Duration::from_secs(20), ws.next()).await.expect("message in time") {
            Some(Ok(Message::Binary(b))) => got.push((b[0], b[1..].to_vec())),
            Some(Ok(Message::Close(_))) | None => {
                closed = true;
                break;
            }
            Some(Ok(_)) => {}
            Some(Err(e)) => panic!("{e}"),
        }
    }
    assert!(closed, "the server closes after the status: {got:?}");
    assert_eq!(got[0], (1, vec![]), "an empty stdout message first");
    let stdout: Vec<u8> = got.iter().filter(|(c, _)| *c == 1).flat_map(|(_, d)| d.clone()).collect();
    assert_eq!(stdout, b"hi\n", "{:?}", got.iter().map(|(c, d)| (c, String::from_utf8_lossy(d).to_string())).collect::<Vec<_>>());
    let status: serde_json::Value = serde_json::from_slice(&got.iter().find(|(c, _)| *c == 3).expect("a status").1).unwrap();
    assert_eq!((status["status"].as_str(), status["reason"].as_str()), (Some("Failure"), Some("NonZeroExitCode")), "{status}");
    assert_eq!(status["details"]["causes"][0], serde_json::json!({"reason": "ExitCode", "message": "7"}));

    // Port-forward over a WebSocket (v4 channels): both channels open with the
    // port (little-endian), then an HTTP request on the data channel gets httpd's answer.
    let mut req = "wss://127.0.0.1:10250/portForward/default/shell?port=8080".into_client_request().unwrap();
    req.headers_mut().insert("Sec-WebSocket-Protocol", "v4.channel.k8s.io".parse().unwrap());
    let (mut ws, _) = tokio_tungstenite::client_async(req, kubelet_tls(allowed).await).await.expect("websocket handshake");
    use futures::SinkExt;
    let mut opened = Vec::new();
    for _ in 0..2 {
        match tokio::time::timeout(Duration::from_secs(10), ws.next()).await.expect("port message") {
            Some(Ok(Message::Binary(b))) => opened.push(b.to_vec()),
            other => panic!("{other:?}"),
        }
    }
    assert_eq!(opened, vec![vec![0, 0x90, 0x1f], vec![1, 0x90, 0x1f]]);
    ws.send(Message::binary(b"\x00GET / HTTP/1.0\r\n\r\n".to_vec())).await.unwrap();
    let mut answer = Vec::new();
    for _ in 0..50 {
        match tokio::time::timeout(Duration::from_secs(10), ws.next()).await.expect("answer in time") {
            Some(Ok(Message::Binary(b))) if b[0] == 0 => answer.extend_from_slice(&b[1..]),
            Some(Ok(Message::Binary(b))) => panic!("error channel: {}", String::from_utf8_lossy(&b[1..])),
            Some(Ok(Message::Close(_))) | None => break,
            Some(Ok(_)) => {}
            Some(Err(e)) => panic!("{e}"),
        }
    }
    let answer = String::from_utf8_lossy(&answer).to_string();
    assert!(answer.starts_with("HTTP/1.") && answer.ends_with("hello-from-pod\n"), "{answer:?}");

    // SPDY: upgrade, then a frame of another SPDY version: GOAWAY and the end of this connection only.
    let mut tls = kubelet_tls(allowed).await;
    tls.write_all(b"POST /exec/default/shell/c?command=sleep&command=30&output=1 HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: Upgrade\r\nUpgrade: SPDY/3.1\r\nX-Stream-Protocol-Version: v4.channel.k8s.io\r\n\r\n").await.unwrap();
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") && head.len() < 4096 {
        tls.read_exact(&mut byte).await.unwrap();
        head.push(byte[0]);
    }
    let head = String::from_utf8_lossy(&head).to_string();
    assert!(head.starts_with("HTTP/1.1 101") && head.to_ascii_lowercase().contains("x-stream-protocol-version: v4.channel.k8s.io"), "{head}");
    tls.write_all(&[0x80, 0x02, 0x00, 0x01, 0x00, 0x00, 0x00, 0x04, 1, 2, 3, 4]).await.unwrap();
    let mut rest = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(10), tls.read_to_end(&mut rest)).await.expect("the server ends the connection");
    assert!(read.is_ok() || !rest.is_empty(), "{read:?}");
    // GOAWAY (control frame type 7) with status PROTOCOL_ERROR.
    assert!(rest.len() >= 16 && rest[..4] == [0x80, 0x03, 0x00, 0x07] && rest[12..16] == [0, 0, 0, 1], "{rest:?}");
}

/// A direct v5 WebSocket exec that sends nothing: the (channel, data) messages it
/// got and how long until the server ended the connection (at most 40 s).
async fn ws_exec(allowed: &[&str], path_and_query: &str) -> (Vec<(u8, Vec<u8>)>, Duration) {
    use futures::StreamExt;
    use tokio_tungstenite::tungstenite::{client::IntoClientRequest, Message};
    let mut req = format!("wss://127.0.0.1:10250{path_and_query}").into_client_request().unwrap();
    req.headers_mut().insert("Sec-WebSocket-Protocol", "v5.channel.k8s.io".parse().unwrap());
    let (mut ws, _) = tokio_tungstenite::client_async(req, kubelet_tls(allowed).await).await.expect("websocket handshake");
    let t = std::time::Instant::now();
    let mut got = Vec::new();
    while let Ok(Some(Ok(m))) = tokio::time::timeout(Duration::from_secs(40).saturating_sub(t.elapsed()), ws.next()).await {
        match m {
            Message::Binary(b) if !b.is_empty() => got.push((b[0], b[1..].to_vec())),
            Message::Close(_) => break,
            _ => {}
        }
    }
    (got, t.elapsed())
}

/// Runs the shell command `cmd` on a terminal (`script`, as kubectl -it needs one)
/// with `env`, typing each line of `keys` after its wait in seconds, and keeping
/// the keyboard open until it exits (killed after `timeout_s`). Its output, CRs removed.
fn in_terminal(cmd: &str, env: &[(&str, &str)], keys: &[(u64, &str)], timeout_s: u64) -> String {
    let mut child = Command::new("timeout")
        .args([&timeout_s.to_string(), "script", "-qec", cmd, "/dev/null"])
        .envs(env.iter().copied())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut keyboard = child.stdin.take().unwrap();
    let keys: Vec<(u64, String)> = keys.iter().map(|(w, l)| (*w, l.to_string())).collect();
    let (done_tx, done_rx) = std::sync::mpsc::channel::<()>();
    let typist = std::thread::spawn(move || {
        use std::io::Write;
        for (wait, line) in keys {
            std::thread::sleep(Duration::from_secs(wait));
            let _ = keyboard.write_all(line.as_bytes());
        }
        // Until the command has exited (the sender is dropped).
        let _ = done_rx.recv();
    });
    let out = child.wait_with_output().unwrap();
    drop(done_tx);
    let _ = typist.join();
    String::from_utf8_lossy(&out.stdout).replace('\r', "")
}

const SPDY: &[(&str, &str)] = &[("KUBECTL_REMOTE_COMMAND_WEBSOCKETS", "false")];
const WEBSOCKET: &[(&str, &str)] = &[("KUBECTL_REMOTE_COMMAND_WEBSOCKETS", "true")];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn x1_kubectl_exec_attach_and_port_forward_reach_the_pod_over_spdy_and_websocket() {
    let Setup { srv, admin, dir, agent, allowed, _cleanup } = setup("x1", "x1-exec", &[]).await;
    let allowed: Vec<&str> = allowed.iter().map(String::as_str).collect();
    let viewer = write_cert(&srv, &dir, "viewer");
    let viewer: Vec<&str> = viewer.iter().map(String::as_str).collect();
    tokio::task::block_in_place(|| {
        let api = "https://127.0.0.1:10250";
        let pod = format!(
            "apiVersion: v1\nkind: Pod\nmetadata: {{name: shell, namespace: default}}\nspec:\n  nodeName: {NODE}\n  terminationGracePeriodSeconds: 1\n  containers:\n  - name: c\n    image: {BUSYBOX}\n    command: [sleep, \"3600\"]\n    env: [{{name: GREETING, value: hello-env}}]\n  - name: web\n    image: {BUSYBOX}\n    command: [sh, -c, \"mkdir -p /www && echo hello-from-pod > /www/index.html && exec httpd -f -p 8080 -h /www\"]\n  - name: ticker\n    image: {BUSYBOX}\n    command: [sh, -c, \"i=0; while true; do i=$((i+1)); echo tick-$i; echo tock-$i >&2; sleep 0.3; done\"]\n"
        );
        create(&admin, &dir, "shell.yaml", &pod);
        wait_for(Duration::from_secs(60), "shell Running", &agent, || pod_phase(&admin, "shell").filter(|p| p["status"]["phase"] == "Running"));

        // (a) stdout, stderr and the exit code, over SPDY and over WebSocket.
        for (env, upgrade) in [(SPDY, "SPDY/3.1"), (WEBSOCKET, "websocket")] {
            let before = srv.requests().iter().filter(|r| r.subresource == "exec").count();
            let (code, out, err) = kubectl_exec(&admin, env, &["shell", "-c", "c", "--", "sh", "-c", "echo out; echo err >&2; echo $GREETING; exit 3"], None);
            assert_eq!(code, 3, "{upgrade}: exit code (stdout {out:?}, stderr {err:?})");
            assert_eq!(out, "out\nhello-env\n", "{upgrade}: stdout");
            assert!(err.starts_with("err\n"), "{upgrade}: stderr {err:?}");
            assert!(err.contains("command terminated with exit code 3"), "{upgrade}: {err:?}");
            let (code, out, _) = kubectl_exec(&admin, env, &["shell", "-c", "c", "--", "id", "-u"], None);
            assert_eq!((code, out.as_str()), (0, "0\n"), "{upgrade}: a successful command");
            let reqs = srv.requests();
            let execs: Vec<_> = reqs.iter().filter(|r| r.subresource == "exec").skip(before).collect();
            assert!(execs.len() == 2 && execs.iter().all(|r| r.upgrade.eq_ignore_ascii_case(upgrade) && r.code == 101), "{upgrade}: {execs:?}");
            // (b) stdin reaches the process, and its EOF ends it.
            let (code, out, err) = kubectl_exec(&admin, env, &["-i", "shell", "-c", "c", "--", "sh", "-c", "cat; echo done"], Some("line one\nline two\n"));
            assert_eq!((code, out.as_str()), (0, "line one\nline two\ndone\n"), "{upgrade}: stdin ({err})");
            // (c) a terminal: the size kubectl's terminal has reaches `stty size`, and
            // later resizes too (SIGWINCH inside).
            let script = format!(
                "stty rows 33 cols 111; {} kubectl --kubeconfig {} exec -it shell -c c -- sh -c 'stty size; trap \"stty size\" WINCH; echo ready; i=0; while [ $i -lt 50 ]; do sleep 0.1; i=$((i+1)); done' < /dev/tty & sleep 2; stty rows 44 cols 122; wait $!",
                env.iter().map(|(k, v)| format!("{k}={v}")).collect::<Vec<_>>().join(" "),
                admin.display()
            );
            // The pty's resize sends SIGWINCH to its foreground group: kubectl sends the new size.
            let tty = Command::new("timeout").args(["40", "script", "-qec", &script, "/dev/null"]).stdin(Stdio::null()).output().unwrap();
            let tty_out = String::from_utf8_lossy(&tty.stdout).replace('\r', "");
            assert!(tty_out.contains("33 111\n"), "{upgrade}: initial size: {tty_out:?}");
            assert!(tty_out.contains("44 122\n"), "{upgrade}: resized: {tty_out:?}");
        }
        // No stdin requested: stdin is empty to the process.
        let (code, out, _) = kubectl_exec(&admin, SPDY, &["shell", "-c", "c", "--", "sh", "-c", "cat; echo eof"], None);
        assert_eq!((code, out.as_str()), (0, "eof\n"));

        // A client that goes away mid-exec leaves no process behind.
        for env in [SPDY, WEBSOCKET] {
            let mut child = Command::new("kubectl")
                .args(["--kubeconfig", admin.to_str().unwrap(), "exec", "shell", "-c", "c", "--", "sh", "-c", "echo started; exec sleep 777"])
                .envs(env.iter().copied())
                .stdout(Stdio::piped())
                .stderr(Stdio::null())
                .spawn()
                .unwrap();
            let mut line = String::new();
            BufReader::new(child.stdout.take().unwrap()).read_line(&mut line).unwrap();
            assert_eq!(line, "started\n");
            let ps = || kubectl_exec(&admin, SPDY, &["shell", "-c", "c", "--", "ps", "-o", "args"], None).1;
            assert!(ps().contains("sleep 777"), "{}", ps());
            child.kill().unwrap();
            child.wait().unwrap();
            agent.wait_until(Duration::from_secs(20), "the abandoned exec process is killed", || !ps().contains("sleep 777"));
        }

        // Attach: the container's output from now on (stdout and stderr).
        let attach = Command::new("timeout").args(["4", "kubectl", "--kubeconfig", admin.to_str().unwrap(), "attach", "shell", "-c", "ticker"]).output().unwrap();
        let (aout, aerr) = (String::from_utf8_lossy(&attach.stdout).to_string(), String::from_utf8_lossy(&attach.stderr).to_string());
        assert!(aout.lines().filter(|l| l.starts_with("tick-")).count() >= 3, "attach stdout {aout:?} stderr {aerr:?}");
        assert!(aerr.lines().filter(|l| l.starts_with("tock-")).count() >= 3, "attach stderr {aerr:?}");
        assert!(!aout.contains("tick-1\n"), "attach starts at the current end of the output: {aout:?}");

        // (d) port-forward over SPDY to httpd inside the pod: asked for, and as
        // kubectl's fallback when its WebSocket tunnel (which kube-apiserver, not
        // the kubelet, terminates) is refused.
        for websockets in ["false", "true"] {
            let mut pf = Command::new("kubectl")
                .args(["--kubeconfig", admin.to_str().unwrap(), "port-forward", "pod/shell", ":8080"])
                .env("KUBECTL_PORT_FORWARD_WEBSOCKETS", websockets)
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .unwrap();
            let mut line = String::new();
            let mut pf_stdout = BufReader::new(pf.stdout.take().unwrap());
            pf_stdout.read_line(&mut line).unwrap();
            // Keep reading (kubectl reports each connection on stdout; a closed pipe would kill it).
            let pf_lines = std::thread::spawn(move || pf_stdout.lines().map_while(Result::ok).collect::<Vec<_>>());
            let local: u16 = line.trim().strip_prefix("Forwarding from 127.0.0.1:").and_then(|r| r.split(' ').next()).and_then(|p| p.parse().ok()).unwrap_or_else(|| panic!("{line:?}"));
            let mut answers = Vec::new();
            for _ in 0..3 {
                answers.push(curl(&format!("http://127.0.0.1:{local}/"), &[]));
            }
            let _ = pf.kill();
            let pf_out = pf.wait_with_output().unwrap();
            let pf_lines = pf_lines.join().unwrap();
            assert!(pf_lines.iter().filter(|l| l.starts_with("Handling connection for ")).count() == 3, "{pf_lines:?}");
            let pf_reqs: Vec<_> = srv.requests().into_iter().filter(|r| r.subresource == "portforward").collect();
            assert!(
                answers.iter().all(|a| *a == (200, "hello-from-pod\n".to_string())),
                "{answers:?}; kubectl port-forward said {:?}; API requests {pf_reqs:?}",
                String::from_utf8_lossy(&pf_out.stderr)
            );
            if websockets == "true" {
                // kubectl tried its WebSocket tunnel first; the kubelet has no such protocol and said so.
                assert!(pf_reqs.iter().any(|r| r.upgrade.eq_ignore_ascii_case("websocket") && r.code == 400), "{pf_reqs:?}");
            }
        }

        // (e) 401 without credentials, 403 for a denied user, upstream's answers to bad requests.
        let exec = format!("{api}/exec/default/shell/c?command=true&output=1");
        assert_eq!(curl(&exec, &["-X", "POST"]), (401, "Unauthorized\n".into()));
        assert_eq!(curl(&exec, &[&["-X", "POST"], &viewer[..]].concat()), (403, "Forbidden (user=viewer, verb=create, resource=nodes, subresource=proxy)\n".into()));
        assert_eq!(curl(&format!("{api}/portForward/default/shell"), &viewer).0, 403);
        assert_eq!(curl(&exec, &[&["-X", "POST"], &allowed[..]].concat()), (400, "unable to upgrade: missing upgrade headers in request\n".into()));
        assert_eq!(curl(&format!("{api}/exec/default/shell/c?output=1"), &[&["-X", "POST"], &allowed[..]].concat()).0, 400, "no command");
        assert_eq!(curl(&format!("{api}/exec/default/shell/c?command=true"), &[&["-X", "POST"], &allowed[..]].concat()), (400, "you must specify at least 1 of stdin, stdout, stderr\n".into()));
        assert_eq!(curl(&format!("{api}/exec/default/nope/c?command=true&output=1"), &[&["-X", "POST"], &allowed[..]].concat()), (404, "pod does not exist\n".into()));
        assert_eq!(curl(&format!("{api}/exec/default/shell/nope?command=true&output=1"), &[&["-X", "POST"], &allowed[..]].concat()), (500, "container not found (\"nope\")\n".into()));
        let spdy_v9 = ["-X", "POST", "-H", "Connection: Upgrade", "-H", "Upgrade: SPDY/3.1", "-H", "X-Stream-Protocol-Version: v9.channel.k8s.io"];
        let (code, body) = curl(&exec, &[&spdy_v9[..], &allowed[..]].concat());
        assert!(code == 403 && body.starts_with("unable to upgrade: unable to negotiate protocol"), "{code} {body}");
        tokio::runtime::Handle::current().block_on(direct_clients(&allowed));
        assert_eq!(curl(&format!("{api}/healthz"), &allowed), (200, "ok".into()), "the server survives a broken client");
        // Through the API server: kubectl's own errors for a missing container.
        let (code, _, err) = kubectl_exec(&admin, SPDY, &["shell", "-c", "nope", "--", "true"], None);
        assert!(code != 0 && err.contains("nope"), "{err}");
    });
    assert_api_clean(&srv);
}

/// `kubectl attach` with `-i` and `-it` (issue 5): the client's stdin reaches a
/// container created with `stdin: true` (a FIFO the shim holds), EOF with
/// `stdinOnce` ends its input, a terminal container gets TERM and the client's
/// size, and a container's stdin and logs outlive a `kill -9` of the agent.
/// `streamingConnectionIdleTimeout` ends a silent session, not a chatty one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn x2_kubectl_attach_with_stdin_and_a_terminal() {
    let Setup { srv, admin, dir, mut agent, allowed, _cleanup } = setup("x2", "x2-attach", &["--streaming-connection-idle-timeout", "6s"]).await;
    let allowed: Vec<&str> = allowed.iter().map(String::as_str).collect();
    tokio::task::block_in_place(|| {
        let pod = format!(
            "apiVersion: v1\nkind: Pod\nmetadata: {{name: interactive, namespace: default}}\nspec:\n  nodeName: {NODE}\n  restartPolicy: Never\n  terminationGracePeriodSeconds: 1\n  containers:\n  - name: once\n    image: {BUSYBOX}\n    stdin: true\n    stdinOnce: true\n    command: [sh, -c, \"while read l; do echo got-$l; echo err-$l >&2; done; echo stdin-closed; exit 5\"]\n  - name: term\n    image: {BUSYBOX}\n    stdin: true\n    tty: true\n    command: [sh]\n"
        );
        create(&admin, &dir, "interactive.yaml", &pod);
        let status = |c: &str| pod_phase(&admin, "interactive").and_then(|p| p["status"]["containerStatuses"].as_array()?.iter().find(|s| s["name"] == c).cloned());
        wait_for(Duration::from_secs(60), "both containers Running", &agent, || pod_phase(&admin, "interactive").filter(|p| p["status"]["phase"] == "Running"));

        // The agent dies and comes back: the shim still holds the stdin FIFO (no
        // EOF), and the logger of the FIFO outputs is not the agent's.
        agent.kill9();
        agent.start();
        agent.wait_until(Duration::from_secs(20), "kubelet API back", || curl("https://127.0.0.1:10250/healthz", &[]).0 != 0);
        std::thread::sleep(Duration::from_secs(1));
        assert!(status("once").is_some_and(|s| s["state"]["running"].is_object()), "stdin stayed open across the agent restart: {:?}", status("once"));

        // (a) -i without a terminal, over SPDY and over WebSocket: lines in, their
        // echo out on stdout and stderr. Each client's EOF closes the container's
        // stdin (stdinOnce): the loop ends and the container exits 5.
        let attach_i = |env: &[(&str, &str)], input: &str| {
            let mut cmd = Command::new("timeout");
            cmd.args(["30", "kubectl", "--kubeconfig", admin.to_str().unwrap(), "attach", "-i", "interactive", "-c", "once"]).envs(env.iter().copied());
            cmd.stdin(Stdio::piped()).stdout(Stdio::piped()).stderr(Stdio::piped());
            let mut child = cmd.spawn().unwrap();
            let mut w = child.stdin.take().unwrap();
            let input = input.to_string();
            std::thread::spawn(move || {
                use std::io::Write;
                // Give the session time to start following the output first.
                std::thread::sleep(Duration::from_secs(2));
                let _ = w.write_all(input.as_bytes());
                std::thread::sleep(Duration::from_secs(2));
            });
            let out = child.wait_with_output().unwrap();
            (String::from_utf8_lossy(&out.stdout).to_string(), String::from_utf8_lossy(&out.stderr).to_string())
        };
        let (out, err) = attach_i(WEBSOCKET, "one\ntwo\n");
        assert!(out.contains("got-one\ngot-two\n") && err.contains("err-one\nerr-two\n"), "attach -i: stdout {out:?} stderr {err:?}");
        assert!(out.contains("stdin-closed\n"), "the client's EOF closed stdin (stdinOnce): {out:?}");
        let done = wait_for(Duration::from_secs(30), "once terminated", &agent, || status("once").filter(|s| s["state"]["terminated"].is_object()));
        assert_eq!(done["state"]["terminated"]["exitCode"], 5, "{done}");
        // Everything it said is in its log.
        let (_, logs) = kubectl(&admin, &["logs", "interactive", "-c", "once"]);
        assert_eq!(logs.lines().filter(|l| l.starts_with("got-")).collect::<Vec<_>>(), ["got-one", "got-two"], "{logs}");

        // (b) -it over SPDY: a terminal with TERM=xterm and the client's size;
        // `exit 7` typed at it ends the shell. kubectl needs a terminal on its
        // stdin: `script` gives it one and forwards what we type (our pipe).
        let script = format!("stty rows 33 cols 111; kubectl --kubeconfig {} attach -it interactive -c term", admin.display());
        let tty_out = in_terminal(&script, SPDY, &[(3, "echo term=$TERM; stty size\n"), (2, "exit 7\n")], 40);
        let done = wait_for(Duration::from_secs(30), "term terminated", &agent, || status("term").filter(|s| s["state"]["terminated"].is_object()));
        assert_eq!(done["state"]["terminated"]["exitCode"], 7, "the shell read `exit 7` from the client's terminal: {done}; kubectl said {tty_out:?}");
        assert!(tty_out.contains("term=xterm\n") && tty_out.contains("33 111\n"), "{tty_out:?}");

        // (c) The idle timeout (6 s here). A direct client that sends nothing, for
        // a command that says nothing, is cut off (the command is killed); one
        // whose command keeps talking runs to its end. kubectl pings every 5 s,
        // which counts as traffic (as spdystream's idle timer counts every frame).
        let pod2 = format!("apiVersion: v1\nkind: Pod\nmetadata: {{name: idle, namespace: default}}\nspec:\n  nodeName: {NODE}\n  terminationGracePeriodSeconds: 1\n  containers:\n  - name: c\n    image: {BUSYBOX}\n    command: [sleep, \"3600\"]\n");
        create(&admin, &dir, "idle.yaml", &pod2);
        wait_for(Duration::from_secs(60), "idle Running", &agent, || pod_phase(&admin, "idle").filter(|p| p["status"]["phase"] == "Running"));
        let rt = tokio::runtime::Handle::current();
        let (got, took) = rt.block_on(ws_exec(&allowed, "/exec/default/idle/c?command=sleep&command=25&output=1"));
        assert!(took < Duration::from_secs(15) && !got.iter().any(|(c, _)| *c == 3), "a silent session is cut off at the idle timeout, before the command ends: after {took:?}: {got:?}");
        let ps = kubectl_exec(&admin, SPDY, &["idle", "-c", "c", "--", "ps", "-o", "args"], None).1;
        assert!(!ps.contains("sleep 25"), "the cut-off command was killed: {ps}");
        let (got, took) = rt.block_on(ws_exec(&allowed, "/exec/default/idle/c?command=sh&command=-c&command=i%3D0%3B%20while%20%5B%20%24i%20-lt%209%20%5D%3B%20do%20echo%20tick%3B%20sleep%201%3B%20i%3D%24((i%2B1))%3B%20done&output=1"));
        let status = got.iter().find(|(c, _)| *c == 3).map(|(_, d)| String::from_utf8_lossy(d).to_string());
        assert!(took > Duration::from_secs(8) && status.as_deref().is_some_and(|s| s.contains("Success")), "a talking session outlives the idle timeout: {took:?} {status:?}");
        let (code, out, err) = kubectl_exec(&admin, SPDY, &["idle", "-c", "c", "--", "sh", "-c", "sleep 10; echo finished"], None);
        assert_eq!((code, out.as_str()), (0, "finished\n"), "kubectl's pings keep a silent command's session open: {err}");

        // (d) The whole `kubectl run -it --rm` workflow (the test API server has no
        // scheduler: the override binds the pod to this node): kubectl creates the
        // pod with stdin, stdinOnce and tty, attaches, we type at the shell, its
        // exit code becomes kubectl's, and --rm deletes the pod.
        let script = format!(
            "stty rows 20 cols 90; kubectl --kubeconfig {} run rt -it --rm --restart=Never --image={BUSYBOX} --overrides='{{\"apiVersion\":\"v1\",\"spec\":{{\"nodeName\":\"{NODE}\",\"terminationGracePeriodSeconds\":1}}}}' -- sh; echo kubectl-exit=$?",
            admin.display()
        );
        let run_out = in_terminal(&script, &[], &[(8, "echo in-run-$((6*7)); stty size\n"), (2, "exit 3\n")], 90);
        assert!(run_out.contains("in-run-42\n") && run_out.contains("20 90\n"), "{run_out:?}");
        assert!(run_out.contains("kubectl-exit=3"), "the shell's exit code is kubectl's: {run_out:?}");
        assert!(run_out.contains("pod \"rt\" deleted"), "{run_out:?}");
        wait_for(Duration::from_secs(30), "rt gone", &agent, || pod_phase(&admin, "rt").is_none().then_some(()));
    });
    assert_api_clean(&srv);
}

/// Reads a log stream over a WebSocket on `tls` (at most 40 s): the decoded text
/// received, until the server closes or `enough` says so. `protocol` is the
/// `Sec-WebSocket-Protocol` asked for (none: binary); the answer must name it.
async fn ws_log<S>(tls: S, url: &str, protocol: Option<&str>, mut enough: impl FnMut(&str) -> bool) -> (String, bool)
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    use base64::Engine;
    use futures::StreamExt;
    use tokio_tungstenite::tungstenite::{client::IntoClientRequest, Message};
    let mut req = url.into_client_request().unwrap();
    if let Some(p) = protocol {
        req.headers_mut().insert("Sec-WebSocket-Protocol", p.parse().unwrap());
    }
    let (mut ws, resp) = tokio_tungstenite::client_async(req, tls).await.unwrap_or_else(|e| panic!("{url}: websocket handshake: {e}"));
    assert_eq!(resp.headers().get("sec-websocket-protocol").and_then(|v| v.to_str().ok()), protocol, "{url}: the negotiated protocol");
    let mut text = String::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(40);
    loop {
        let m = match tokio::time::timeout_at(deadline, ws.next()).await {
            Ok(m) => m,
            Err(_) => return (text, false),
        };
        match m {
            Some(Ok(Message::Binary(b))) => {
                assert!(protocol != Some("base64.binary.k8s.io"), "binary message on the base64 protocol");
                text.push_str(&String::from_utf8_lossy(&b));
            }
            Some(Ok(Message::Text(t))) => {
                assert_eq!(protocol, Some("base64.binary.k8s.io"), "text message on a binary protocol");
                text.push_str(&String::from_utf8_lossy(&base64::engine::general_purpose::STANDARD.decode(t.as_str()).unwrap()));
            }
            Some(Ok(Message::Close(_))) | None => return (text, true),
            Some(Ok(_)) => {}
            Some(Err(e)) => panic!("{url}: {e}"),
        }
        if enough(&text) {
            return (text, false);
        }
    }
}

/// The highest `line-N` in `text`.
fn last_line(text: &str) -> u32 {
    text.lines().filter_map(|l| l.strip_prefix("line-")?.trim().parse().ok()).max().unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn x3_container_logs_over_websocket_from_the_kubelet_and_through_the_api_server() {
    let Setup { srv, admin, dir, agent, allowed, _cleanup } = setup("x3", "x3-logs", &[]).await;
    let allowed: Vec<&str> = allowed.iter().map(String::as_str).collect();
    tokio::task::block_in_place(|| {
        let pod = format!(
            "apiVersion: v1\nkind: Pod\nmetadata: {{name: talker, namespace: default}}\nspec:\n  nodeName: {NODE}\n  terminationGracePeriodSeconds: 1\n  containers:\n  - name: c\n    image: {BUSYBOX}\n    command: [sh, -c, \"echo container is alive; i=0; while true; do i=$((i+1)); echo line-$i; sleep 0.2; done\"]\n"
        );
        create(&admin, &dir, "talker.yaml", &pod);
        wait_for(Duration::from_secs(60), "talker logging", &agent, || {
            pod_phase(&admin, "talker").filter(|p| p["status"]["phase"] == "Running")?;
            let (code, body) = curl("https://127.0.0.1:10250/containerLogs/default/talker/c", &allowed);
            (code == 200 && last_line(&body) >= 3).then_some(())
        });
    });
    // Straight from the kubelet, each of wsstream's reader protocols (none = binary).
    for protocol in [None, Some("binary.k8s.io"), Some("base64.binary.k8s.io")] {
        let url = "wss://127.0.0.1:10250/containerLogs/default/talker/c";
        let (text, closed) = ws_log(kubelet_tls(&allowed).await, url, protocol, |_| false).await;
        assert!(closed, "{protocol:?}: the whole log, then a close");
        assert!(text.starts_with("container is alive\nline-1\n"), "{protocol:?}: {text:?}");
        // follow: what is there, then lines written after the connection.
        let (now, _) = ws_log(kubelet_tls(&allowed).await, url, protocol, |_| false).await;
        let at_connect = last_line(&now);
        let (text, closed) = ws_log(kubelet_tls(&allowed).await, &format!("{url}?follow=true"), protocol, |t| last_line(t) >= at_connect + 5).await;
        assert!(!closed && last_line(&text) >= at_connect + 5, "{protocol:?}: new lines keep coming: {text:?}");
        assert!(text.starts_with("container is alive\n"), "{protocol:?}");
    }
    // Errors come before any upgrade, as plain answers.
    let (code, _) = tokio::task::block_in_place(|| curl("https://127.0.0.1:10250/containerLogs/default/talker/nope", &allowed));
    assert_eq!(code, 400);

    // Through the API server's pods/log, as the e2e framework and kubectl's clients read it.
    let (c, k) = srv.issue_client_cert("e2e-admin", &["system:masters"], Duration::from_secs(600)).unwrap();
    let tls_cfg = std::sync::Arc::new(rkubelet_test_apiserver::nodeproxy::kubelet_client_tls(c.as_bytes(), k.as_bytes()).unwrap());
    let api_tls = || async {
        let tcp = tokio::net::TcpStream::connect(("127.0.0.1", srv.port())).await.unwrap();
        tokio_rustls::TlsConnector::from(tls_cfg.clone()).connect(rustls::pki_types::ServerName::try_from("127.0.0.1").unwrap(), tcp).await.unwrap()
    };
    let base = format!("wss://127.0.0.1:{}/api/v1/namespaces/default/pods/talker/log?container=c", srv.port());
    for protocol in [Some("binary.k8s.io"), Some("base64.binary.k8s.io")] {
        let (text, closed) = ws_log(api_tls().await, &base, protocol, |_| false).await;
        assert!(closed && text.contains("container is alive"), "{protocol:?}: {text:?}");
        let at = last_line(&text);
        let (text, _) = ws_log(api_tls().await, &format!("{base}&follow=true"), protocol, |t| last_line(t) >= at + 5).await;
        assert!(last_line(&text) >= at + 5, "{protocol:?} through the API server: new lines: {text:?}");
    }
    assert!(srv.requests().iter().any(|r| r.subresource == "log" && r.upgrade == "websocket"), "the API server served the log as a WebSocket");
    assert_api_clean(&srv);
}
