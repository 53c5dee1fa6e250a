//! Hostile requests before authentication, over real sockets, against the
//! real listeners ([`hangar_server::listen::serve`]) and routers: the admin
//! surface behind a reverse proxy, metric labels from headers, memory held
//! by unauthenticated bodies, and stalled connections.
//!
//! The server runs in this process, so its memory is this process's
//! (`/proc/self/status`); the clients stream from one shared buffer and
//! hold almost nothing themselves.

use std::time::{Duration, Instant};

use hangar_github::WebhookSecret;
use hangar_server::{Bound, Limits, ServerState};
use hangar_store::Store;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

const SECRET: &str = "It's a Secret to Everybody";
const TOKEN: &str = "a-token-of-sufficient-length";
/// Well formed, and wrong: passes the header check, fails the HMAC.
const WRONG_SIGNATURE: &str =
    "sha256=0000000000000000000000000000000000000000000000000000000000000000";

struct Server {
    /// `host:port` of the public listener.
    public: String,
    /// `host:port` of the admin listener.
    admin: String,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<()>>,
    _dir: tempfile::TempDir,
}

impl Server {
    async fn start(token: Option<&str>, limits: Limits) -> Server {
        let dir = tempfile::tempdir().expect("temp dir");
        let store =
            Store::open(&Store::sqlite_url(&dir.path().join("h.db"))).await.expect("open store");
        let state =
            ServerState::new(store, Some(WebhookSecret::new(SECRET)), token).with_limits(&limits);
        let public = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let admin = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addrs = (public.local_addr().expect("addr"), admin.local_addr().expect("addr"));
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let task = tokio::spawn(async move {
            hangar_server::listen::serve_both(
                (Bound::Tcp(public), hangar_server::public_router(state.clone())),
                (Bound::Tcp(admin), hangar_server::admin_router(state)),
                &limits,
                async {
                    let _ = stopped.await;
                },
            )
            .await;
        });
        Server {
            public: addrs.0.to_string(),
            admin: addrs.1.to_string(),
            stop: Some(stop),
            task: Some(task),
            _dir: dir,
        }
    }

    async fn stop(mut self) {
        let _ = self.stop.take().expect("running").send(());
        self.task.take().expect("running").await.expect("server task");
    }
}

/// A TCP forwarder on loopback in front of `target`, as a reverse proxy on
/// the same host: every connection reaches hangar from 127.0.0.1.
async fn forwarder(target: String) -> String {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr").to_string();
    tokio::spawn(async move {
        while let Ok((mut client, _)) = listener.accept().await {
            let target = target.clone();
            tokio::spawn(async move {
                if let Ok(mut upstream) = TcpStream::connect(&target).await {
                    let _ = tokio::io::copy_bidirectional(&mut client, &mut upstream).await;
                }
            });
        }
    });
    addr
}

fn vm_rss_bytes() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").expect("/proc/self/status");
    let line = status.lines().find(|l| l.starts_with("VmRSS:")).expect("VmRSS");
    let kib: u64 = line.split_whitespace().nth(1).expect("value").parse().expect("a number");
    kib * 1024
}

/// Behind a proxy on the same host (the forwarder), the admin routes are
/// not there without a token, with or without forwarding headers; the
/// admin listener serves them; with a token the public listener serves them
/// to that token only.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn behind_a_loopback_proxy_the_admin_routes_need_the_admin_listener_or_the_token() {
    let http = reqwest::Client::new();
    let server = Server::start(None, Limits::default()).await;
    let proxy = forwarder(server.public.clone()).await;
    for path in ["/api/v1/jobs", "/api/v1/jobs/1", "/metrics"] {
        let url = format!("http://{proxy}{path}");
        let plain = http.get(&url).send().await.expect("get");
        assert_eq!(plain.status(), 404, "{path} through the proxy");
        let forwarded =
            http.get(&url).header("X-Forwarded-For", "203.0.113.9").send().await.expect("get");
        assert_eq!(forwarded.status(), 404, "{path} with X-Forwarded-For");
    }
    let health = http.get(format!("http://{proxy}/healthz")).send().await.expect("get");
    assert_eq!(health.status(), 200);
    let jobs = http.get(format!("http://{}/api/v1/jobs", server.admin)).send().await.expect("get");
    assert_eq!(jobs.status(), 200, "the admin listener serves the API");
    let metrics = http.get(format!("http://{}/metrics", server.admin)).send().await.expect("get");
    assert_eq!(metrics.status(), 200, "the admin listener serves metrics");
    let webhook = http.post(format!("http://{}/webhook", server.admin)).send().await.expect("post");
    assert_eq!(webhook.status(), 404, "the admin listener takes no webhooks");
    server.stop().await;

    let server = Server::start(Some(TOKEN), Limits::default()).await;
    let proxy = forwarder(server.public.clone()).await;
    for path in ["/api/v1/jobs", "/metrics"] {
        let url = format!("http://{proxy}{path}");
        assert_eq!(http.get(&url).send().await.expect("get").status(), 401, "{path}");
        let wrong = http.get(&url).bearer_auth("not-the-token-at-all").send().await.expect("get");
        assert_eq!(wrong.status(), 401, "{path} with a wrong token");
        let right = http.get(&url).bearer_auth(TOKEN).send().await.expect("get");
        assert_eq!(right.status(), 200, "{path} with the token");
    }
    server.stop().await;
}

/// Rejected deliveries never turn request text into metric labels: 10,000
/// unsigned posts with unique event names add at most a handful of series.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unique_event_names_from_unsigned_posts_add_no_series() {
    let server = Server::start(None, Limits::default()).await;
    let http = reqwest::Client::new();
    let series = |text: &str| {
        text.lines().filter(|l| l.starts_with("hangar_webhook_deliveries_total{")).count()
    };
    let metrics_url = format!("http://{}/metrics", server.admin);
    let before = http.get(&metrics_url).send().await.expect("get").text().await.expect("text");
    let rss_before = vm_rss_bytes();
    let mut senders = tokio::task::JoinSet::new();
    for worker in 0..8 {
        let (http, url) = (http.clone(), format!("http://{}/webhook", server.public));
        senders.spawn(async move {
            for n in 0..1250 {
                let mut request = http
                    .post(&url)
                    .header("X-GitHub-Event", format!("evil-{worker}-{n}-{}", "x".repeat(64)))
                    .header("X-GitHub-Delivery", format!("d-{worker}-{n}"))
                    .body("{}");
                // Half without a signature, half with a wrong one.
                if n % 2 == 0 {
                    request = request.header("X-Hub-Signature-256", WRONG_SIGNATURE);
                }
                let status = request.send().await.expect("post").status();
                assert!(status == 401 || status == 202, "{status}");
            }
        });
    }
    while let Some(done) = senders.join_next().await {
        done.expect("sender");
    }
    let after = http.get(&metrics_url).send().await.expect("get").text().await.expect("text");
    assert!(!after.contains("evil-"), "a header became a label");
    let added = series(&after).saturating_sub(series(&before));
    eprintln!(
        "10,000 unique event names: {added} new series, {} series in all; RSS {} -> {} MiB",
        series(&after),
        rss_before >> 20,
        vm_rss_bytes() >> 20
    );
    assert!(added <= 5, "{added} new series:\n{after}");
    server.stop().await;
}

/// Sends a `workflow_job` delivery with a well-formed, wrong signature and a
/// chunked body of `total` bytes from `chunk`; returns the status line
/// hangar answered with (it may answer before the body is all sent), or
/// `closed` when the connection was reset before the answer could be read.
async fn post_chunked(addr: &str, id: usize, chunk: &'static [u8], total: usize) -> String {
    let stream = TcpStream::connect(addr).await.expect("connect");
    let (mut reader, mut writer) = stream.into_split();
    let head = format!(
        "POST /webhook HTTP/1.1\r\nHost: {addr}\r\nX-GitHub-Event: workflow_job\r\n\
         X-GitHub-Delivery: big-{id}\r\nX-Hub-Signature-256: {WRONG_SIGNATURE}\r\n\
         Content-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n"
    );
    let sender = tokio::spawn(async move {
        writer.write_all(head.as_bytes()).await?;
        let mut sent = 0;
        while sent < total {
            writer.write_all(format!("{:x}\r\n", chunk.len()).as_bytes()).await?;
            writer.write_all(chunk).await?;
            writer.write_all(b"\r\n").await?;
            sent += chunk.len();
        }
        writer.write_all(b"0\r\n\r\n").await
    });
    let mut answer = vec![0u8; 256];
    let n = tokio::time::timeout(Duration::from_secs(60), reader.read(&mut answer))
        .await
        .expect("an answer within 60 s")
        .unwrap_or(0);
    sender.abort();
    let status = String::from_utf8_lossy(&answer[..n]).lines().next().unwrap_or("").to_owned();
    if status.is_empty() { "closed".to_owned() } else { status }
}

/// 100 clients at once each stream a 25 MB body with a well-formed, wrong
/// signature (it passes the header check): hangar holds at most
/// `webhook_unverified_bodies` bodies of at most `webhook_max_body_bytes`,
/// so its memory grows by far less than 100 MB (2.5 GB were sent).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hundred_concurrent_25_mb_unauthenticated_bodies_keep_memory_bounded() {
    static CHUNK: [u8; 256 * 1024] = [b' '; 256 * 1024];
    let server = Server::start(None, Limits::default()).await;
    let baseline = vm_rss_bytes();
    let sampling = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(true));
    let sampler = {
        let sampling = sampling.clone();
        tokio::spawn(async move {
            let mut peak = 0;
            while sampling.load(std::sync::atomic::Ordering::Relaxed) {
                peak = peak.max(vm_rss_bytes());
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            peak
        })
    };
    let mut clients = tokio::task::JoinSet::new();
    for id in 0..100 {
        let addr = server.public.clone();
        clients.spawn(async move { post_chunked(&addr, id, &CHUNK, 25 * 1024 * 1024).await });
    }
    let mut answers = std::collections::BTreeMap::<String, usize>::new();
    while let Some(answer) = clients.join_next().await {
        *answers.entry(answer.expect("client")).or_default() += 1;
    }
    sampling.store(false, std::sync::atomic::Ordering::Relaxed);
    let peak = sampler.await.expect("sampler");
    let growth = peak.saturating_sub(baseline);
    eprintln!(
        "RSS baseline {} MiB, peak {} MiB, growth {} MiB; answers {answers:?}",
        baseline >> 20,
        peak >> 20,
        growth >> 20
    );
    for status in answers.keys() {
        assert!(
            status.starts_with("HTTP/1.1 413")
                || status.starts_with("HTTP/1.1 503")
                || status == "closed",
            "{answers:?}"
        );
    }
    assert!(growth < 100 << 20, "RSS grew by {} MiB", growth >> 20);
    server.stop().await;
}

/// A delivery without a signature is refused before its body is read: the
/// answer comes while the declared 10 MB have not been sent.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_missing_signature_is_refused_before_the_body_is_read() {
    let server = Server::start(None, Limits::default()).await;
    let mut stream = TcpStream::connect(&server.public).await.expect("connect");
    let head = format!(
        "POST /webhook HTTP/1.1\r\nHost: x\r\nX-GitHub-Event: workflow_job\r\n\
         X-GitHub-Delivery: unsigned\r\nContent-Type: application/json\r\n\
         Content-Length: {}\r\n\r\n",
        10 * 1024 * 1024
    );
    stream.write_all(head.as_bytes()).await.expect("send");
    let mut answer = vec![0u8; 256];
    let n = tokio::time::timeout(Duration::from_secs(10), stream.read(&mut answer))
        .await
        .expect("an answer without the body")
        .expect("read");
    let answer = String::from_utf8_lossy(&answer[..n]);
    assert!(answer.starts_with("HTTP/1.1 401"), "{answer}");
    server.stop().await;
}

/// A body that trickles is cut off after `webhook_body_timeout` (408).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_body_times_out() {
    let limits = Limits { webhook_body_timeout: Duration::from_secs(1), ..Limits::default() };
    let server = Server::start(None, limits).await;
    let mut stream = TcpStream::connect(&server.public).await.expect("connect");
    let head = format!(
        "POST /webhook HTTP/1.1\r\nHost: x\r\nX-GitHub-Event: workflow_job\r\n\
         X-GitHub-Delivery: slow\r\nX-Hub-Signature-256: {WRONG_SIGNATURE}\r\n\
         Content-Type: application/json\r\nContent-Length: 1000\r\n\r\n{{\"a"
    );
    stream.write_all(head.as_bytes()).await.expect("send");
    let started = Instant::now();
    let mut answer = vec![0u8; 256];
    let n = tokio::time::timeout(Duration::from_secs(10), stream.read(&mut answer))
        .await
        .expect("an answer")
        .expect("read");
    let answer = String::from_utf8_lossy(&answer[..n]);
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
    assert!(started.elapsed() >= Duration::from_millis(900), "answered before the timeout");
    server.stop().await;
}

/// 2,000 connections that send nothing or half a request head are closed
/// by hangar (`header_read_timeout`, default 10 s) within 30 s, and
/// `/healthz` answers all along.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_thousand_stalled_connections_are_closed_while_health_answers() {
    let server = Server::start(None, Limits::default()).await;
    let baseline = vm_rss_bytes();
    let started = Instant::now();
    let mut stalled = Vec::with_capacity(2000);
    for n in 0..2000 {
        let mut stream = TcpStream::connect(&server.public).await.expect("connect");
        if n % 2 == 1 {
            stream.write_all(b"POST /webhook HTTP/1.1\r\nHost: x\r\n").await.expect("send");
        }
        stalled.push(stream);
    }
    let held = vm_rss_bytes();
    let closers: Vec<_> = stalled
        .into_iter()
        .map(|mut stream| {
            tokio::spawn(async move {
                let mut buf = [0u8; 512];
                // Closed: EOF, or a reset; hyper may write a 408 first.
                loop {
                    match stream.read(&mut buf).await {
                        Ok(0) | Err(_) => return Instant::now(),
                        Ok(_) => {}
                    }
                }
            })
        })
        .collect();
    let http = reqwest::Client::builder().pool_max_idle_per_host(0).build().expect("client");
    let health = format!("http://{}/healthz", server.public);
    let mut probes = 0;
    while closers.iter().any(|c| !c.is_finished()) {
        assert!(started.elapsed() < Duration::from_secs(30), "stalled connections still open");
        let answer = tokio::time::timeout(Duration::from_secs(2), http.get(&health).send()).await;
        let status = answer.expect("/healthz answers within 2 s").expect("get").status();
        assert_eq!(status, 200);
        probes += 1;
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    let mut last = started;
    for closer in closers {
        last = last.max(closer.await.expect("closer"));
    }
    eprintln!(
        "2,000 stalled connections closed after {:.1} s; /healthz answered {probes} probes; \
         RSS {} MiB before, {} MiB with them open",
        (last - started).as_secs_f64(),
        baseline >> 20,
        held >> 20
    );
    assert!(last - started < Duration::from_secs(30));
    server.stop().await;
}
