//! `RedisStore` over TLS: a `rediss://` URL against a TLS-only Redis that
//! this test starts on a free loopback port, with a certificate authority it
//! makes with `openssl`.
#![cfg(all(feature = "redis-tls", feature = "memory"))]

mod common;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use common::{Harness, ring, unique};
use http::StatusCode;
use tower_hmac_session::SessionConfig;
use tower_hmac_session::store::RedisStore;

/// A TLS-only `redis-server` child, killed on drop, and its files.
struct TlsRedis {
    child: Child,
    dir: PathBuf,
    port: u16,
}

impl Drop for TlsRedis {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn run(dir: &Path, args: &[&str]) -> Result<(), String> {
    let out = Command::new(args[0])
        .args(&args[1..])
        .current_dir(dir)
        .output()
        .map_err(|e| format!("{}: {e}", args[0]))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "{args:?} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        ))
    }
}

/// A CA, a server certificate for 127.0.0.1 signed by it, and the server.
fn start() -> Result<TlsRedis, String> {
    let dir = std::env::temp_dir().join(unique("ths-tls"));
    std::fs::create_dir_all(&dir).map_err(|e| e.to_string())?;
    std::fs::write(dir.join("san.ext"), "subjectAltName=IP:127.0.0.1\n")
        .map_err(|e| e.to_string())?;
    for step in [
        &[
            "openssl",
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-keyout",
            "ca.key",
            "-out",
            "ca.pem",
            "-days",
            "2",
            "-subj",
            "/CN=tower-hmac-session test CA",
        ][..],
        &[
            "openssl",
            "req",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-keyout",
            "server.key",
            "-out",
            "server.csr",
            "-subj",
            "/CN=127.0.0.1",
        ],
        &[
            "openssl",
            "x509",
            "-req",
            "-in",
            "server.csr",
            "-CA",
            "ca.pem",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-out",
            "server.pem",
            "-days",
            "2",
            "-extfile",
            "san.ext",
        ],
    ] {
        run(&dir, step)?;
    }
    // A free port: bind, read it, release it.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map_err(|e| e.to_string())?
        .port();
    let child = Command::new("redis-server")
        .args([
            "--port",
            "0",
            "--tls-port",
            &port.to_string(),
            "--bind",
            "127.0.0.1",
            "--tls-cert-file",
            "server.pem",
            "--tls-key-file",
            "server.key",
            "--tls-ca-cert-file",
            "ca.pem",
            "--tls-auth-clients",
            "no",
            "--save",
            "",
            "--appendonly",
            "no",
        ])
        .current_dir(&dir)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .map_err(|e| format!("redis-server: {e}"))?;
    let server = TlsRedis { child, dir, port };
    // Wait (bounded) until it listens.
    for _ in 0..100 {
        if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
            return Ok(server);
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    Err("the TLS redis-server did not start listening".into())
}

#[tokio::test]
async fn a_rediss_url_connects_over_tls_and_serves_sessions() {
    let server = match start() {
        Ok(server) => server,
        Err(error) => return common::unreachable("a TLS redis-server", "127.0.0.1", &error),
    };
    let url = format!("rediss://127.0.0.1:{}", server.port);
    let ca = std::fs::read(server.dir.join("ca.pem")).unwrap();

    let store = RedisStore::builder(&url)
        .root_certificate_pem(ca)
        .connect()
        .await
        .expect("TLS connection with the test CA");
    store.ping().await.unwrap();
    let h = Harness::with_store(store, SessionConfig::default(), ring(1, &[1]));
    let secret = h.login("alice").await;
    let res = h.call("GET", "/me", Some(&secret)).await;
    assert_eq!((res.status, res.body.as_str()), (StatusCode::OK, "alice"));

    // Without the CA the server's certificate is not trusted: no session
    // traffic goes over an unverified connection.
    let untrusted = RedisStore::builder(&url).connect().await;
    assert!(untrusted.is_err(), "an untrusted certificate was accepted");

    // A plain redis:// URL to the TLS port does not get through either.
    let plain = RedisStore::builder(format!("redis://127.0.0.1:{}", server.port))
        .timeout(Duration::from_millis(500))
        .connect_timeout(Duration::from_millis(500))
        .connect()
        .await;
    assert!(plain.is_err(), "plain text reached a TLS-only server");
}
