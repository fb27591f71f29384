//! One full flow over a real hyper server on 127.0.0.1.

mod common;

use bytes::Bytes;
use http::{Request, StatusCode, header};
use http_body_util::{BodyExt as _, Empty};
use hyper_util::rt::TokioIo;
use tokio::net::{TcpListener, TcpStream};
use tower_hmac_session::{MemoryStore, SessionConfig, SessionLayer, SessionManager};

struct Reply {
    status: StatusCode,
    set_cookie: Option<String>,
    body: String,
}

async fn send(addr: std::net::SocketAddr, method: &str, path: &str, cookie: Option<&str>) -> Reply {
    let stream = TcpStream::connect(addr).await.unwrap();
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .unwrap();
    tokio::spawn(conn);
    let mut req = Request::builder()
        .method(method)
        .uri(path)
        .header(header::HOST, addr.to_string());
    if let Some(cookie) = cookie {
        req = req.header(header::COOKIE, cookie);
    }
    let res = sender
        .send_request(req.body(Empty::<Bytes>::new()).unwrap())
        .await
        .unwrap();
    let status = res.status();
    let set_cookie = res
        .headers()
        .get(header::SET_COOKIE)
        .map(|v| v.to_str().unwrap().to_owned());
    let body = res.into_body().collect().await.unwrap().to_bytes();
    Reply {
        status,
        set_cookie,
        body: String::from_utf8(body.to_vec()).unwrap(),
    }
}

/// `name=value` from a `Set-Cookie` line.
fn cookie_pair(set_cookie: &str) -> String {
    set_cookie.split(';').next().unwrap().to_owned()
}

#[tokio::test]
async fn login_me_logout_over_a_real_server() {
    let manager = SessionManager::new(
        MemoryStore::new(),
        common::ring(1, &[1]),
        SessionConfig::default(),
    );
    let app = common::app(tower_hmac_session::MockClock::new(common::T0))
        .layer(SessionLayer::new(manager));
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let server = tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });

    let login = send(addr, "POST", "/login?user=alice", None).await;
    assert_eq!(login.status, StatusCode::OK);
    let set_cookie = login.set_cookie.expect("login sets the cookie");
    assert!(set_cookie.starts_with("__Host-session="));
    assert!(set_cookie.contains("HttpOnly") && set_cookie.contains("Secure"));
    let cookie = cookie_pair(&set_cookie);

    let me = send(addr, "GET", "/me", Some(&format!("theme=dark; {cookie}"))).await;
    assert_eq!((me.status, me.body.as_str()), (StatusCode::OK, "alice"));

    let logout = send(addr, "POST", "/logout", Some(&cookie)).await;
    assert_eq!(logout.status, StatusCode::OK);
    assert!(logout.set_cookie.unwrap().contains("Max-Age=0"));

    let after = send(addr, "GET", "/me", Some(&cookie)).await;
    assert_eq!(after.status, StatusCode::UNAUTHORIZED);
    server.abort();
}
