//! The web console in headless Chromium, driven through WebDriver: sign in,
//! create an org integration on two products, send events, see the traffic
//! summed in the list and per product in the view, follow a product link,
//! edit for both products, separate on a product's page (refused unchanged,
//! then with a new name), test, and another org's token gets 404 on the
//! same pages; a form post without its CSRF token is refused. Each page
//! visited is saved as a screenshot under `target/console-screenshots/`.
//! Ignored in a plain `cargo test`: `scripts/browser` installs Chromium and
//! its driver and runs it (CHROMEDRIVER names the driver).

mod common;

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use common::*;
use fantoccini::{Client, ClientBuilder, Locator};
use serde_json::{json, Value};

struct Driver(Child);

impl Drop for Driver {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

async fn browser() -> (Driver, Client) {
    // Both rustls providers are in the build: the one hookd uses.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let driver = std::env::var("CHROMEDRIVER")
        .expect("CHROMEDRIVER: the WebDriver binary scripts/browser installs");
    let port = free_port();
    let child = Command::new(driver)
        .arg(format!("--port={port}"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start chromedriver");
    let driver = Driver(child);
    let caps: serde_json::Map<String, Value> = serde_json::from_value(json!({
        "goog:chromeOptions": {
            "binary": std::env::var("CHROMIUM").unwrap_or_else(|_| "/usr/bin/chromium".into()),
            "args": ["--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                     "--window-size=1280,1600"]
        }
    }))
    .unwrap();
    let url = format!("http://127.0.0.1:{port}");
    for attempt in 0.. {
        match ClientBuilder::rustls()
            .expect("rustls")
            .capabilities(caps.clone())
            .connect(&url)
            .await
        {
            Ok(c) => return (driver, c),
            Err(e) if attempt < 50 => {
                let _ = e;
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            Err(e) => panic!("chromedriver at {url}: {e}"),
        }
    }
    unreachable!()
}

/// Saves the page as `target/console-screenshots/<n>-<name>.png`.
struct Shots {
    dir: PathBuf,
    n: usize,
}

impl Shots {
    fn new() -> Shots {
        let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target/console-screenshots");
        // This run's pages only.
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        Shots { dir, n: 0 }
    }

    async fn take(&mut self, c: &Client, name: &str) {
        self.n += 1;
        let png = c.screenshot().await.expect("screenshot");
        std::fs::write(self.dir.join(format!("{:02}-{name}.png", self.n)), png).unwrap();
    }
}

/// The whole text of the page, hidden parts (closed details) included.
async fn text(c: &Client) -> String {
    c.execute("return document.body.textContent;", vec![])
        .await
        .unwrap()
        .as_str()
        .unwrap_or_default()
        .to_owned()
}

async fn title(c: &Client) -> String {
    c.title().await.unwrap()
}

async fn fill(c: &Client, id: &str, value: &str) {
    let e = c
        .find(Locator::Id(id))
        .await
        .unwrap_or_else(|_| panic!("#{id}"));
    e.clear().await.unwrap();
    e.send_keys(value).await.unwrap();
}

async fn submit(c: &Client, label: &str) {
    let button = c
        .find(Locator::XPath(&format!(
            "//button[normalize-space()='{label}']"
        )))
        .await
        .unwrap_or_else(|_| panic!("button {label}"));
    navigates(c, button).await;
}

/// Clicks `e` and waits until the next page has loaded.
async fn navigates(c: &Client, e: fantoccini::elements::Element) {
    c.execute("window.__hookd_old_page = true;", vec![])
        .await
        .unwrap();
    e.click().await.unwrap();
    for _ in 0..200 {
        let loaded = c
            .execute(
                "return window.__hookd_old_page !== true && document.readyState === 'complete';",
                vec![],
            )
            .await
            .unwrap_or(Value::Bool(false));
        if loaded == Value::Bool(true) {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("the page never changed");
}

async fn follow(c: &Client, link: &str) {
    let e = c
        .find(Locator::LinkText(link))
        .await
        .unwrap_or_else(|_| panic!("link {link}"));
    navigates(c, e).await;
}

async fn sign_in(c: &Client, base: &str, token: &str) {
    c.goto(&format!("{base}/sign-in")).await.unwrap();
    fill(c, "token", token).await;
    submit(c, "Sign in").await;
}

/// The numbers of the table whose first column is `day`, under `heading`.
async fn day_row(c: &Client, caption: &str, day: &str) -> Vec<u64> {
    let script = "const [caption, day] = arguments; \
        for (const d of document.querySelectorAll('details')) { \
          if (d.querySelector('summary').textContent.trim() === 'Numbers: ' + caption) { \
            for (const r of d.querySelectorAll('tbody tr')) { \
              if (r.querySelector('th').textContent.trim() === day) { \
                return Array.from(r.querySelectorAll('td')).map(t => Number(t.textContent)); } } } } \
        return null;";
    let v = c
        .execute(script, vec![json!(caption), json!(day)])
        .await
        .unwrap();
    serde_json::from_value(v.clone()).unwrap_or_else(|_| panic!("no row {day} in {caption}: {v}"))
}

fn event(product: u32, n: usize) -> (String, String) {
    let device = format!("{:024x}", u64::from(product) * 100 + n as u64);
    (
        device.clone(),
        json!({"name": "temp/c", "data": format!("{product}-{n}"), "coreid": device, "productID": product})
            .to_string(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs Chromium and chromedriver: run scripts/browser"]
async fn a_person_manages_org_integrations_in_the_console() {
    let broker = Broker::start();
    let s = with_api(settings(&broker));
    create_topics(&broker, &s, 1).await;
    let receiver = Receiver::start().await;
    let api = start_api(&s).await;
    catalog(&api.client).await;
    let worker = start_log_worker(&s).await;
    let base = api.client.base().to_owned();
    let (_driver, c) = browser().await;
    let mut shots = Shots::new();

    // Signed out: to the sign-in page; a wrong token is refused.
    c.goto(&format!("{base}/orgs/acme/integrations"))
        .await
        .unwrap();
    assert!(
        title(&c).await.starts_with("Sign in"),
        "{}",
        title(&c).await
    );
    sign_in(&c, &base, "not-a-token").await;
    assert!(text(&c).await.contains("unknown token"));
    sign_in(&c, &base, ACME).await;
    assert!(c
        .current_url()
        .await
        .unwrap()
        .path()
        .ends_with("/orgs/acme/integrations"));
    shots.take(&c, "list-empty").await;

    // Create on two products.
    c.goto(&format!("{base}/orgs/acme/integrations/new"))
        .await
        .unwrap();
    fill(&c, "name", "Fleet telemetry").await;
    fill(&c, "event", "temp").await;
    fill(&c, "url", &receiver.url("/v1")).await;
    c.execute(
        "for (const o of document.querySelectorAll('#products option')) { o.selected = ['1','2'].includes(o.value); }",
        vec![],
    )
    .await
    .unwrap();
    shots.take(&c, "create").await;
    submit(&c, "Create").await;
    let view_url = c.current_url().await.unwrap();
    let id = view_url.path().rsplit('/').next().unwrap().to_owned();
    let page = text(&c).await;
    assert!(
        page.contains("This integration is shared: it executes on Product 1 (1), Product 2 (2)"),
        "{page}"
    );
    shots.take(&c, "view-new").await;

    // A bad field: the api's message beside it.
    c.goto(&format!("{base}/orgs/acme/integrations/new"))
        .await
        .unwrap();
    fill(&c, "event", "temp*").await;
    fill(&c, "url", &receiver.url("/x")).await;
    c.execute(
        "document.querySelector('#products option[value=\"1\"]').selected = true;",
        vec![],
    )
    .await
    .unwrap();
    submit(&c, "Create").await;
    let err = match c.find(Locator::Id("error-event")).await {
        Ok(e) => e,
        Err(_) => panic!("the event's error beside it: {}", text(&c).await),
    };
    assert!(err.text().await.unwrap().contains("contains a wildcard"));
    shots.take(&c, "create-error").await;

    // Traffic: 3 events of product 1 and 2 of product 2.
    let mut events: Vec<(String, String)> = (0..3).map(|n| event(1, n)).collect();
    events.extend((0..2).map(|n| event(2, n)));
    produce(&broker, &s.kafka.events_topic, &events).await;
    wait_until("five deliveries", Duration::from_secs(30), || {
        receiver.count() >= 5
    })
    .await;
    let list_url = format!("{base}/orgs/acme/integrations");
    let mut shown = String::new();
    for _ in 0..100 {
        c.goto(&list_url).await.unwrap();
        let cells: Value = c
            .execute(
                "const r = document.querySelector('tbody tr'); return r ? Array.from(r.querySelectorAll('td')).map(t => t.textContent.trim()) : [];",
                vec![],
            )
            .await
            .unwrap();
        shown = cells.to_string();
        if cells[3] == "5" {
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(
        shown.contains("\"5\",\"0\",\"0\""),
        "today's traffic summed over products: {shown}"
    );
    assert!(
        shown.contains("shared: Product 1 (1), Product 2 (2)"),
        "{shown}"
    );
    shots.take(&c, "list-traffic").await;

    // The view: aggregate and per product, today's row of each.
    follow(&c, "Fleet telemetry").await;
    let today = chrono::Utc::now().date_naive().to_string();
    assert_eq!(day_row(&c, "All products", &today).await, [5, 0, 0]);
    assert_eq!(day_row(&c, "Product 1", &today).await, [3, 0, 0]);
    assert_eq!(day_row(&c, "Product 2", &today).await, [2, 0, 0]);
    let page = text(&c).await;
    assert!(
        page.contains("Request preview") && page.contains("\"method\": \"POST\""),
        "{page}"
    );
    shots.take(&c, "view-traffic").await;

    // Test: the outcome shown.
    submit(&c, "Test").await;
    let outcome = c
        .find(Locator::Id("test-outcome"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(outcome.contains("Test: success"), "{outcome}");
    shots.take(&c, "tested").await;

    // Follow a product link from the per-product history.
    c.goto(view_url.as_str()).await.unwrap();
    follow(&c, "Product 2 (2)").await;
    assert!(c
        .current_url()
        .await
        .unwrap()
        .path()
        .ends_with("/products/2/integrations"));
    assert!(text(&c)
        .await
        .contains("shared: Product 1 (1), Product 2 (2)"));
    shots.take(&c, "product-list").await;

    // Edit, from the product's page of the shared integration: the edit
    // link leads to the org's, whose banner names both products.
    c.goto(&format!("{base}/products/2/integrations/{id}"))
        .await
        .unwrap();
    follow(&c, "Edit").await;
    assert!(c
        .current_url()
        .await
        .unwrap()
        .path()
        .ends_with(&format!("/orgs/acme/integrations/{id}/edit")));
    assert!(text(&c).await.contains("Saving changes this integration for every product it executes on: Product 1 (1), Product 2 (2)"));
    // A bad headers JSON: the message beside it, and nothing typed is lost.
    fill(&c, "url", &receiver.url("/v2")).await;
    fill(&c, "headers", "{\"X-Team\": ").await;
    fill(&c, "auth_username", "team").await;
    fill(&c, "auth_password", "hunter2-pass").await;
    submit(&c, "Save").await;
    assert!(
        c.find(Locator::Id("error-headers")).await.is_ok(),
        "{}",
        text(&c).await
    );
    let kept: Value = c
        .execute(
            "return ['url','auth_username','auth_password'].map(i => document.getElementById(i).value);",
            vec![],
        )
        .await
        .unwrap();
    assert_eq!(kept, json!([receiver.url("/v2"), "team", "hunter2-pass"]));
    fill(&c, "headers", "{\"X-Team\": \"a\"}").await;
    shots.take(&c, "edit").await;
    // Meanwhile someone else changes it: saving this stale form is refused.
    let stale_url = c.current_url().await.unwrap();
    api.as_token(ACME)
        .call(
            hyper::Method::PUT,
            &format!("/v1/orgs/acme/integrations/{id}"),
            Some(&json!({"name": "Renamed meanwhile"})),
        )
        .await
        .unwrap();
    submit(&c, "Save").await;
    assert!(
        text(&c).await.contains("is at version"),
        "{}",
        text(&c).await
    );
    assert_eq!(
        c.current_url().await.unwrap(),
        stale_url,
        "still on the form"
    );
    // Reloaded, the form saves, keeping what the other edit did.
    c.goto(&format!("{}/edit", view_url.as_str()))
        .await
        .unwrap();
    fill(&c, "url", &receiver.url("/v2")).await;
    fill(&c, "headers", "{\"X-Team\": \"a\"}").await;
    fill(&c, "auth_username", "team").await;
    fill(&c, "auth_password", "hunter2-pass").await;
    submit(&c, "Save").await;
    let saved = api
        .as_token(ACME)
        .call(
            hyper::Method::GET,
            &format!("/v1/orgs/acme/integrations/{id}"),
            None,
        )
        .await
        .unwrap();
    assert_eq!(saved["name"], "Renamed meanwhile");
    assert_eq!(saved["config"]["headers"], json!({"X-Team": "a"}));
    assert_eq!(
        saved["config"]["auth"],
        json!({"username": "team", "password": "hunter2-pass"})
    );
    assert!(
        !text(&c).await.contains("hunter2-pass"),
        "the view masks the password"
    );
    for p in [1, 2] {
        c.goto(&format!("{base}/products/{p}/integrations/{id}"))
            .await
            .unwrap();
        assert!(
            text(&c).await.contains(&receiver.url("/v2")),
            "product {p} sees the edit"
        );
    }
    shots.take(&c, "product-view").await;

    // Separate on product 2: refused unchanged, then with a new name.
    follow(&c, "Separate integration").await;
    submit(&c, "Separate").await;
    let page = text(&c).await;
    assert!(
        page.contains("the separated config equals the shared one in every field"),
        "{page}"
    );
    shots.take(&c, "separate-refused").await;
    fill(&c, "name", "Product 2's own").await;
    submit(&c, "Separate").await;
    let own = c.current_url().await.unwrap();
    assert!(
        own.path().starts_with("/products/2/integrations/") && !own.path().ends_with(&id),
        "{own}: {}",
        text(&c).await
    );
    assert!(
        title(&c).await.contains("Product 2's own"),
        "{}",
        title(&c).await
    );
    shots.take(&c, "separated").await;
    let shared = api
        .as_token(ACME)
        .call(
            hyper::Method::GET,
            &format!("/v1/orgs/acme/integrations/{id}"),
            None,
        )
        .await
        .unwrap();
    assert_eq!(shared["products"], json!([1]));

    // Disable and enable again from the view.
    c.goto(view_url.as_str()).await.unwrap();
    submit(&c, "Disable").await;
    assert!(
        text(&c).await.contains("Statusdisabled"),
        "{}",
        text(&c).await
    );
    submit(&c, "Enable").await;
    assert!(text(&c).await.contains("Statusenabled"));

    // A product's own integration from a Particle export (Custom template).
    c.goto(&format!("{base}/products/3/integrations/new"))
        .await
        .unwrap();
    fill(
        &c,
        "template",
        &json!({"name": "From export", "event": "status", "url": receiver.url("/p3"), "template": "webhook",
                "integration_type": "Webhook", "json": {"s": "{{{PARTICLE_EVENT_VALUE}}}"}})
        .to_string(),
    )
    .await;
    submit(&c, "Create from template").await;
    assert!(c
        .current_url()
        .await
        .unwrap()
        .path()
        .starts_with("/products/3/integrations/"));
    assert!(
        title(&c).await.contains("From export"),
        "{}",
        title(&c).await
    );
    shots.take(&c, "product-own").await;

    // A form post without the session's CSRF token is refused.
    let cookie = c.get_named_cookie("hookd_session").await.unwrap();
    let status = tokio::task::spawn_blocking({
        let base = base.clone();
        let cookie = cookie.value().to_owned();
        move || post_without_csrf(&base, &cookie)
    })
    .await
    .unwrap();
    assert_eq!(status, 403);

    // Another org's token: the same pages are not found.
    c.delete_all_cookies().await.unwrap();
    sign_in(&c, &base, OTHER).await;
    for path in [
        "/orgs/acme/integrations".to_owned(),
        format!("/orgs/acme/integrations/{id}"),
        format!("/orgs/acme/integrations/{id}/edit"),
        "/products/1/integrations".to_owned(),
        format!("/products/1/integrations/{id}"),
    ] {
        c.goto(&format!("{base}{path}")).await.unwrap();
        assert_eq!(title(&c).await, "Not found · hookd", "{path}");
        assert!(!text(&c).await.contains("Fleet telemetry"), "{path}");
    }
    shots.take(&c, "foreign-404").await;

    // A free-plan org: the plan gate's message on its create page.
    api.client
        .call(
            hyper::Method::PUT,
            "/v1/orgs/cheap",
            Some(&json!({"name": "Cheap", "plan": "free"})),
        )
        .await
        .unwrap();
    api.client
        .call(
            hyper::Method::PUT,
            "/v1/orgs/cheap/products/7",
            Some(&json!({"name": "P7"})),
        )
        .await
        .unwrap();
    c.delete_all_cookies().await.unwrap();
    sign_in(&c, &base, OPERATOR).await;
    c.goto(&format!("{base}/orgs/cheap/integrations/new"))
        .await
        .unwrap();
    fill(&c, "event", "temp").await;
    fill(&c, "url", &receiver.url("/cheap")).await;
    c.execute(
        "document.querySelector('#products option[value=\"7\"]').selected = true;",
        vec![],
    )
    .await
    .unwrap();
    submit(&c, "Create").await;
    assert!(
        text(&c)
            .await
            .contains("is on the free plan; organization integrations come with the basic"),
        "{}",
        text(&c).await
    );
    shots.take(&c, "plan-gate").await;

    // A user's sandbox: create for one device, view.
    c.delete_all_cookies().await.unwrap();
    sign_in(&c, &base, ALICE).await;
    assert!(c
        .current_url()
        .await
        .unwrap()
        .path()
        .ends_with("/integrations"));
    c.goto(&format!("{base}/integrations/new")).await.unwrap();
    fill(&c, "name", "My lamp").await;
    fill(&c, "event", "motion").await;
    fill(&c, "url", &receiver.url("/mine")).await;
    fill(&c, "deviceID", "e00fce68aaaaaaaaaaaaaaaa").await;
    submit(&c, "Create").await;
    assert!(
        title(&c).await.contains("Sandbox → My lamp"),
        "{}",
        title(&c).await
    );
    assert!(text(&c).await.contains("e00fce68aaaaaaaaaaaaaaaa"));
    shots.take(&c, "sandbox").await;
    // Org pages are not hers.
    c.goto(&format!("{base}/orgs/acme/integrations"))
        .await
        .unwrap();
    assert_eq!(title(&c).await, "Not found · hookd");
    // The session cookie: HttpOnly, SameSite=Strict. Signing out ends the
    // session: the old cookie opens nothing.
    let session = c.get_named_cookie("hookd_session").await.unwrap();
    assert_eq!(session.http_only(), Some(true));
    assert_eq!(
        session.same_site().map(|s| format!("{s:?}")).as_deref(),
        Some("Strict")
    );
    let old = session.value().to_owned();
    c.goto(&format!("{base}/integrations")).await.unwrap();
    submit(&c, "Sign out").await;
    assert!(title(&c).await.starts_with("Sign in"));
    let (status, location) = tokio::task::spawn_blocking({
        let base = base.clone();
        move || get_with_cookie(&base, "/integrations", &old)
    })
    .await
    .unwrap();
    assert_eq!((status, location.as_str()), (303, "/sign-in"));

    c.close().await.unwrap();
    worker.stop().await;
    api.stop().await;
}

/// GETs `path` with a session cookie: the status and `Location`.
fn get_with_cookie(base: &str, path: &str, cookie: &str) -> (u16, String) {
    let addr = base.trim_start_matches("http://");
    let request = format!(
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nCookie: hookd_session={cookie}\r\nConnection: close\r\n\r\n"
    );
    let (status, head, _) = http_exchange(addr, &request).expect("the api answers");
    let location = head
        .lines()
        .find_map(|l| {
            l.strip_prefix("location: ")
                .or_else(|| l.strip_prefix("Location: "))
        })
        .unwrap_or_default()
        .trim()
        .to_owned();
    (status, location)
}

/// POSTs a create form with the session cookie and no CSRF field; the status.
fn post_without_csrf(base: &str, cookie: &str) -> u16 {
    let addr = base.trim_start_matches("http://");
    let body = "event=x&url=https%3A%2F%2Fexample.com%2F&products=1";
    let request = format!(
        "POST /orgs/acme/integrations HTTP/1.1\r\nHost: {addr}\r\nCookie: hookd_session={cookie}\r\n\
         Content-Type: application/x-www-form-urlencoded\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    http_exchange(addr, &request).expect("the api answers").0
}
