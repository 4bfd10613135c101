//! The node binary over HTTP: `after` and `limit` on `GET /tickets` and `GET /purchases`
//! answer pages that follow each other; without them the whole list, as before.

use cluster::{HttpClient, Process, seed_store, start_node};
use hyper::StatusCode;
use serde_json::{Value, json};

struct Fixture {
    _dir: tempfile::TempDir,
    _node: Process,
    url: String,
    http: HttpClient,
}

fn start() -> Fixture {
    let dir = tempfile::tempdir().expect("tempdir");
    seed_store(
        dir.path(),
        &[("concert", 5, 1500), ("theater-show", 2, 4000)],
    )
    .expect("seed");
    let node = start_node("n1", dir.path()).expect("node starts");
    let url = node.url();
    Fixture {
        _dir: dir,
        _node: node,
        url,
        http: HttpClient::new(),
    }
}

impl Fixture {
    async fn get(&self, path: &str) -> (StatusCode, Value) {
        let answer = self
            .http
            .get(&format!("{}{path}", self.url))
            .await
            .expect("answer");
        (answer.status, answer.json())
    }

    /// Follows the pages of `path` (which already has a `?`), `limit` at a time.
    async fn pages(&self, path: &str, limit: usize) -> Vec<Value> {
        let mut pages = Vec::new();
        let mut next = Value::Null;
        loop {
            let after = match &next {
                Value::Null => String::new(),
                Value::String(id) => format!("&after={id}"),
                other => format!("&after={other}"),
            };
            let (status, page) = self.get(&format!("{path}&limit={limit}{after}")).await;
            assert_eq!(status, StatusCode::OK, "{page}");
            next = page["next"].clone();
            pages.push(page["items"].clone());
            if next.is_null() {
                return pages;
            }
        }
    }
}

fn ids(items: &Value) -> Vec<u64> {
    items
        .as_array()
        .expect("items is a list")
        .iter()
        .map(|t| t["id"].as_u64().expect("id"))
        .collect()
}

#[tokio::test]
async fn ticket_pages_follow_each_other_and_together_are_the_whole_list() {
    let f = start();
    let (_, whole) = f.get("/tickets").await;
    assert_eq!(ids(&whole), [1, 2, 3, 4, 5, 6, 7]);

    let pages = f.pages("/tickets?", 3).await;
    let paged: Vec<Vec<u64>> = pages.iter().map(ids).collect();
    assert_eq!(paged, [vec![1, 2, 3], vec![4, 5, 6], vec![7]]);
    let all: Vec<Value> = pages
        .iter()
        .flat_map(|p| p.as_array().expect("list").clone())
        .collect();
    assert_eq!(Value::Array(all), whole);

    let (status, page) = f.get("/tickets?limit=2").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(page["next"], json!(2));
    let (_, last) = f.get("/tickets?after=7").await;
    assert_eq!(last, json!({"items": [], "next": null}));
}

#[tokio::test]
async fn ticket_pages_keep_the_event_and_sold_filters() {
    let f = start();
    let bought = f
        .http
        .buy(&f.url, "concert", 2, None)
        .await
        .expect("answer");
    assert_eq!(bought.status, StatusCode::CREATED);

    let pages = f.pages("/tickets?event=concert&sold=false", 2).await;
    let paged: Vec<Vec<u64>> = pages.iter().map(ids).collect();
    assert_eq!(paged, [vec![3, 4], vec![5]]);
    let (_, sold) = f.get("/tickets?sold=true&limit=10").await;
    assert_eq!(ids(&sold["items"]), [1, 2]);
    assert_eq!(sold["items"][0]["status"], "sold");
    assert_eq!(sold["next"], Value::Null);
    let (_, theater) = f.get("/tickets?event=theater-show&after=1").await;
    assert_eq!(ids(&theater["items"]), [6, 7]);
    assert_eq!(theater["items"][0]["status"], "available");
}

#[tokio::test]
async fn purchase_pages_are_in_commit_order_and_keep_the_event_filter() {
    let f = start();
    for event in ["concert", "theater-show", "concert"] {
        let bought = f.http.buy(&f.url, event, 1, None).await.expect("answer");
        assert_eq!(bought.status, StatusCode::CREATED);
    }
    let (_, whole) = f.get("/purchases").await;
    let whole = whole.as_array().expect("the whole list").clone();
    assert_eq!(whole.len(), 3);

    let pages = f.pages("/purchases?", 2).await;
    assert_eq!(pages.len(), 2);
    let all: Vec<Value> = pages
        .iter()
        .flat_map(|p| p.as_array().expect("list").clone())
        .collect();
    assert_eq!(all, whole);

    let (_, first) = f.get("/purchases?limit=1").await;
    assert_eq!(first["next"], whole[0]["purchase_id"]);
    let concert = f.pages("/purchases?event=concert", 1).await;
    let concert_ids: Vec<&Value> = concert.iter().map(|p| &p[0]["purchase_id"]).collect();
    assert_eq!(
        concert_ids,
        [&whole[0]["purchase_id"], &whole[2]["purchase_id"]]
    );
}

#[tokio::test]
async fn bad_paging_parameters_are_400_bad_request() {
    let f = start();
    for path in [
        "/tickets?limit=0",
        "/tickets?limit=10001",
        "/tickets?limit=ten",
        "/tickets?after=p-00000001",
        "/tickets?after=-1",
        "/purchases?limit=0",
        "/purchases?after=17",
        "/purchases?after=p-",
    ] {
        let (status, body) = f.get(path).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{path}: {body}");
        assert_eq!(body["error"], "bad_request", "{path}");
    }
    let (status, _) = f.get("/tickets?limit=10000").await;
    assert_eq!(status, StatusCode::OK);
}
