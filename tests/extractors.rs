//! The extractors' rejections, an application's own 401, typed data, and
//! serializable session lists, through a real Router.

mod common;

use axum::Json;
use axum::routing::get;
use common::{Harness, request, ring};
use http::{StatusCode, header};
use tower::ServiceExt as _;
use tower_hmac_session::{
    ActiveSession, ActiveSessionRecord, ActiveSessionRejection, MissingSessionLayer, Session,
    SessionConfig, SessionError, SessionLayer,
};

#[tokio::test]
async fn rejections_expose_their_status_and_body_like_axums() {
    let missing = MissingSessionLayer;
    assert_eq!(missing.status(), StatusCode::INTERNAL_SERVER_ERROR);
    assert!(missing.body_text().contains("SessionLayer"));
    let app = axum::Router::new().route(
        "/",
        get(
            |session: Result<ActiveSession, ActiveSessionRejection>| async move {
                let rejection = session.unwrap_err();
                format!("{} {}", rejection.status().as_u16(), rejection.body_text())
            },
        ),
    );
    let h = Harness::new();
    let res = common::TestResponse::from(
        app.layer(SessionLayer::new(h.manager.clone()))
            .oneshot(request("GET", "/", None))
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(res.body, "401 not signed in");
}

#[tokio::test]
async fn an_application_renders_its_own_401_with_the_original_path() {
    let config = SessionConfig::builder()
        .unauthenticated_response(|uri| {
            let back = uri.path_and_query().map_or("/", |p| p.as_str()).to_owned();
            axum::response::IntoResponse::into_response((
                StatusCode::SEE_OTHER,
                [(header::LOCATION, format!("/login?next={back}"))],
            ))
        })
        .build()
        .unwrap();
    let h = Harness::with(config, ring(1, &[1]));
    let res = h.call("GET", "/me?tab=2", None).await;
    assert_eq!(res.status, StatusCode::SEE_OTHER);
    assert_eq!(res.header("location"), Some("/login?next=/me?tab=2"));
    assert_eq!(res.header("vary"), Some("Cookie"));
    let secret = h.login("alice").await;
    assert_eq!(
        h.call("GET", "/me?tab=2", Some(&secret)).await.body,
        "alice"
    );
}

#[tokio::test]
async fn data_is_typed_on_the_way_in_and_out() {
    #[derive(serde::Serialize, serde::Deserialize, PartialEq, Debug)]
    struct Cart {
        items: Vec<u32>,
    }
    let h = Harness::new();
    let secret = h.login("alice").await;
    let app = axum::Router::new()
        .route(
            "/put",
            get(|s: Session| async move {
                s.insert("cart", Cart { items: vec![1, 2] })?;
                Ok::<_, SessionError>("ok")
            }),
        )
        .route(
            "/take",
            get(|s: Session| async move {
                let cart: Option<Cart> = s.remove("cart")?;
                let again: Option<Cart> = s.get("cart")?;
                assert_eq!(again, None);
                Ok::<_, SessionError>(format!("{cart:?}"))
            }),
        )
        .layer(SessionLayer::new(h.manager.clone()));
    let put = app
        .clone()
        .oneshot(request("GET", "/put", Some(&secret)))
        .await
        .unwrap();
    assert_eq!(put.status(), StatusCode::OK);
    let take = common::TestResponse::from(
        app.clone()
            .oneshot(request("GET", "/take", Some(&secret)))
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(take.body, "Some(Cart { items: [1, 2] })");
    let again = common::TestResponse::from(
        app.oneshot(request("GET", "/take", Some(&secret)))
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(again.body, "None");
}

#[tokio::test]
async fn a_devices_page_is_one_json_call() {
    let h = Harness::new();
    let secret = h.login("alice").await;
    let app = axum::Router::new()
        .route(
            "/devices",
            get(|s: Session| async move { s.devices().await.map(Json) }),
        )
        .layer(SessionLayer::new(h.manager.clone()));
    let res = common::TestResponse::from(
        app.oneshot(request("GET", "/devices", Some(&secret)))
            .await
            .unwrap(),
    )
    .await;
    let devices: Vec<ActiveSessionRecord> = serde_json::from_str(&res.body).unwrap();
    assert_eq!(devices.len(), 1);
    assert_eq!(devices[0].subject.as_deref(), Some("alice"));
    assert_eq!(devices[0].created_at, common::T0);
}

#[tokio::test]
async fn a_plain_tower_stack_keeps_its_own_body_type() {
    use bytes::Bytes;
    use http_body_util::{BodyExt as _, Full};
    use tower::ServiceBuilder;
    use tower_hmac_session::ResponseBody;

    let h = Harness::new();
    let service = ServiceBuilder::new()
        .layer(SessionLayer::new(h.manager.clone()))
        .service_fn(|req: http::Request<Full<Bytes>>| async move {
            let session = req.extensions().get::<Session>().cloned().unwrap();
            let body = match session.subject() {
                Some(subject) => subject,
                None => {
                    session.login("alice").await.unwrap();
                    "logged in".to_owned()
                }
            };
            Ok::<_, std::convert::Infallible>(http::Response::new(Full::new(Bytes::from(body))))
        });
    // The response body is the inner service's `Full<Bytes>`, wrapped, not
    // converted to axum's body.
    let res: http::Response<ResponseBody<Full<Bytes>>> = service
        .clone()
        .oneshot(http::Request::new(Full::new(Bytes::new())))
        .await
        .unwrap();
    let cookie = res.headers()[header::SET_COOKIE]
        .to_str()
        .unwrap()
        .to_owned();
    assert_eq!(
        res.into_body().collect().await.unwrap().to_bytes(),
        "logged in"
    );
    let pair = cookie.split(';').next().unwrap().to_owned();
    let req = http::Request::builder()
        .header(header::COOKIE, pair)
        .body(Full::new(Bytes::new()))
        .unwrap();
    let res = service.oneshot(req).await.unwrap();
    assert_eq!(res.into_body().collect().await.unwrap().to_bytes(), "alice");
}
