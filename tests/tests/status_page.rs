//! The balancer's status page in a real headless browser (Debian's `chromium`): it lists
//! every node of a running cluster and shows a purchase and a hold once they are made; a
//! screenshot is kept in `<target>/test-artifacts/status-page.png` for a person to look at.

use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

use cluster::{HttpClient, LocalCluster};
use hyper::StatusCode;

/// How long one headless browser run may take before the test fails.
const BROWSER_TIMEOUT: Duration = Duration::from_secs(90);
/// Page time the browser grants before dumping: the page polls every second, and virtual
/// time waits for pending fetches, so this covers the first polls however slow the machine.
const VIRTUAL_TIME_MS: u32 = 3_500;

/// The headless browser, which CI installs; its absence is a failure, not a skip.
fn chromium() -> PathBuf {
    let found = ["chromium", "chromium-browser"].iter().find_map(|name| {
        std::env::var_os("PATH").and_then(|paths| {
            std::env::split_paths(&paths)
                .map(|dir| dir.join(name))
                .find(|path| path.is_file())
        })
    });
    found.unwrap_or_else(|| {
        panic!(
            "chromium is not installed, and this test needs a headless browser: \
             `apt-get install -y chromium` (CI's .ci/run installs it)"
        )
    })
}

/// Runs headless chromium on `url` with `extra` flags and returns its standard output.
async fn browse(url: &str, extra: &[String]) -> String {
    let profile = tempfile::tempdir().expect("browser profile dir");
    let mut command = tokio::process::Command::new(chromium());
    command
        .args([
            "--headless=new",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-dev-shm-usage",
            "--no-first-run",
            "--hide-scrollbars",
            &format!("--user-data-dir={}", profile.path().display()),
            &format!("--virtual-time-budget={VIRTUAL_TIME_MS}"),
        ])
        .args(extra)
        .arg(url)
        .stdin(Stdio::null())
        .kill_on_drop(true);
    let output = tokio::time::timeout(BROWSER_TIMEOUT, command.output())
        .await
        .unwrap_or_else(|_| panic!("chromium did not finish on {url} within {BROWSER_TIMEOUT:?}"))
        .expect("chromium runs");
    assert!(
        output.status.success(),
        "chromium failed on {url}: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout).into_owned()
}

async fn dump_dom(url: &str) -> String {
    browse(url, &["--dump-dom".to_owned()]).await
}

/// The text inside the element with `id`, which holds no other element.
fn text_of_id<'a>(dom: &'a str, id: &str) -> &'a str {
    let marker = format!("id=\"{id}\"");
    let start = dom
        .find(&marker)
        .unwrap_or_else(|| panic!("no element #{id} in the page:\n{dom}"));
    let after = &dom[start..];
    let open = after.find('>').map(|i| i + 1).unwrap_or(0);
    let close = after[open..].find('<').map_or(after.len(), |i| open + i);
    after[open..close].trim()
}

/// The table row whose `attribute` is `value`.
fn row<'a>(dom: &'a str, attribute: &str, value: &str) -> &'a str {
    let marker = format!("{attribute}=\"{value}\"");
    let start = dom
        .find(&marker)
        .unwrap_or_else(|| panic!("no row with {marker} in the page:\n{dom}"));
    let end = dom[start..].find("</tr>").map_or(dom.len(), |i| start + i);
    &dom[start..end]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_status_page_lists_every_node_and_shows_a_purchase_and_a_hold_after_they_are_made() {
    let (_dir, cluster) = LocalCluster::seeded(
        3,
        &[
            ("concert", 40, 4500),
            ("sports-game", 25, 2000),
            ("theater-show", 10, 6000),
        ],
    )
    .expect("cluster starts");
    let page = format!("{}/balancer/", cluster.balancer_url());

    let before = dump_dom(&page).await;
    // Every node up and, among the balancer's own behaviours, in rotation.
    for node in &cluster.nodes {
        let address = node.addr.to_string();
        let shown = row(&before, "data-address", &address);
        assert!(
            shown.contains("badge up"),
            "node {address} is not shown up:\n{before}"
        );
        assert!(
            shown.contains("badge rotation up\">in<"),
            "node {address} is not shown in rotation:\n{before}"
        );
    }
    assert_eq!(text_of_id(&before, "nodes-up"), "3 / 3");
    // The balancer's own behaviours: no panic, the budget read.
    assert_eq!(text_of_id(&before, "panic"), "off");
    assert_eq!(text_of_id(&before, "budget-refused"), "0");
    assert_eq!(text_of_id(&before, "hedges-total"), "0");
    assert_eq!(text_of_id(&before, "sold-total"), "0");
    assert_eq!(text_of_id(&before, "left-total"), "75");
    assert_eq!(text_of_id(&before, "held-total"), "0");
    assert_eq!(text_of_id(&before, "state"), "live");

    let http = HttpClient::new();
    let bought = http
        .buy(&cluster.balancer_url(), "concert", 3, None)
        .await
        .expect("an answer");
    assert_eq!(bought.status, StatusCode::CREATED, "{:?}", bought.json());
    let held = http
        .post_json(
            &format!("{}/holds", cluster.balancer_url()),
            &serde_json::json!({"event": "concert", "quantity": 2}),
            Some("status-page-hold"),
        )
        .await
        .expect("an answer");
    assert_eq!(held.status, StatusCode::CREATED, "{:?}", held.json());

    let after = dump_dom(&page).await;
    assert_eq!(text_of_id(&after, "sold-total"), "3");
    assert_eq!(text_of_id(&after, "left-total"), "70");
    assert_eq!(text_of_id(&after, "held-total"), "2");
    let concert = row(&after, "data-event", "concert");
    assert!(
        concert.contains("<td class=\"num held\">2</td>"),
        "concert should show 2 held:\n{concert}"
    );
    assert!(
        concert.contains("<td class=\"num\">35</td>"),
        "concert should show 35 left:\n{concert}"
    );

    // A sold-out event, for the picture.
    let sold_out = http
        .buy(&cluster.balancer_url(), "theater-show", 10, None)
        .await
        .expect("an answer");
    assert_eq!(
        sold_out.status,
        StatusCode::CREATED,
        "{:?}",
        sold_out.json()
    );

    let artifacts = cluster::artifacts_dir();
    std::fs::create_dir_all(&artifacts).expect("artifacts dir");
    let shot = artifacts.join("status-page.png");
    let _ = std::fs::remove_file(&shot);
    browse(
        &page,
        &[
            format!("--screenshot={}", shot.display()),
            "--window-size=1280,900".to_owned(),
        ],
    )
    .await;
    let png = std::fs::read(&shot).expect("the screenshot was written");
    assert!(
        png.starts_with(b"\x89PNG"),
        "{} is not a PNG",
        shot.display()
    );
}
