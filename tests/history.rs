//! Traffic history on every day, as a person reads it: stats records for
//! minutes on several past days (as workers flush them, two workers adding
//! to the same minute, a pair across midnight UTC, one just outside the kept
//! days) are read by the api, and every day of every series it shows, per
//! product and in aggregate, for org, product and sandbox integrations, the
//! lists' today and window sums, and the CLI's history table all match what
//! was counted.

mod common;

use chrono::{DateTime, Days, NaiveDate, TimeDelta, Utc};
use common::*;
use hookd::pipeline::traffic::{minute_of, StatsDelta};
use hyper::Method;
use serde_json::{json, Value};
use std::time::Duration;

/// One counted minute: (integration, product, minute, success, error, skipped).
type Counted = (String, Option<u32>, DateTime<Utc>, u64, u64, u64);

/// The sum of `counted` for `integration` on the days `day` admits, for
/// one product (`Some(p)`: only `p`; `None`: every product, and none).
fn summed(
    counted: &[Counted],
    integration: &str,
    product: Option<u32>,
    day: impl Fn(NaiveDate) -> bool,
) -> (u64, u64, u64) {
    counted
        .iter()
        .filter(|(i, p, at, ..)| {
            i == integration && day(at.date_naive()) && product.is_none_or(|want| Some(want) == *p)
        })
        .fold((0, 0, 0), |acc, (.., s, e, k)| {
            (acc.0 + s, acc.1 + e, acc.2 + k)
        })
}

/// The sum on `day`.
fn expected(
    counted: &[Counted],
    integration: &str,
    product: Option<u32>,
    day: NaiveDate,
) -> (u64, u64, u64) {
    summed(counted, integration, product, |d| d == day)
}

/// The sum from `since` on.
fn expected_since(
    counted: &[Counted],
    integration: &str,
    product: Option<u32>,
    since: NaiveDate,
) -> (u64, u64, u64) {
    summed(counted, integration, product, |d| d >= since)
}

fn triple(v: &Value) -> (u64, u64, u64) {
    (
        v["success"].as_u64().expect("success"),
        v["error"].as_u64().expect("error"),
        v["skipped"].as_u64().expect("skipped"),
    )
}

/// Every day of `series` is a consecutive day ending today and shows that
/// day's counts of `integration` (for `product`).
fn check_series(
    counted: &[Counted],
    integration: &str,
    product: Option<u32>,
    series: &Value,
    days: usize,
    what: &str,
) {
    let series = series
        .as_array()
        .unwrap_or_else(|| panic!("{what}: {series}"));
    assert_eq!(series.len(), days, "{what}: {series:?}");
    let today = Utc::now().date_naive();
    for (n, d) in series.iter().enumerate() {
        let day: NaiveDate = d["date"].as_str().unwrap().parse().unwrap();
        // Oldest first, no day missing; the last is today (or yesterday if
        // midnight passed since the answer).
        let want_day = series[0]["date"]
            .as_str()
            .unwrap()
            .parse::<NaiveDate>()
            .unwrap()
            + Days::new(n as u64);
        assert_eq!(day, want_day, "{what}: day {n}");
        assert_eq!(
            triple(d),
            expected(counted, integration, product, day),
            "{what} on {day}"
        );
        if n == days - 1 {
            assert!(
                day == today || day + Days::new(1) == today,
                "{what}: ends {day}"
            );
        }
    }
}

/// The counts a history table (`hookd integrations history`) shows: its
/// rows by (date, label).
fn table_rows(table: &str) -> Vec<(String, String, (u64, u64, u64))> {
    table
        .lines()
        .skip(1)
        .filter(|line| !line.trim().is_empty())
        .map(|line| {
            let words: Vec<&str> = line.split_whitespace().collect();
            let n = words.len();
            assert!(n >= 5, "row {line:?}");
            let num = |w: &str| w.parse::<u64>().unwrap_or_else(|_| panic!("row {line:?}"));
            (
                words[0].to_owned(),
                words[1..n - 3].join(" "),
                (num(words[n - 3]), num(words[n - 2]), num(words[n - 1])),
            )
        })
        .collect()
}

async fn cli(api: &str, token: &str, args: &[&str]) -> String {
    let (ok, out, err) = integrations_cli(api, token, args).await;
    assert!(ok, "{args:?}: {err}");
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_day_of_every_series_shows_what_was_counted() {
    let broker = Broker::start();
    let s = with_api(settings(&broker));
    create_topics(&broker, &s, 1).await;
    let api = start_api(&s).await;
    catalog(&api.client).await;
    let acme = api.as_token(ACME);
    let alice = api.as_token(ALICE);
    let created = |v: Value| v["id"].as_str().unwrap().to_owned();
    let org = created(
        acme.call(
            Method::POST,
            "/v1/orgs/acme/integrations",
            Some(&json!({"event": "t", "url": "https://example.com/o", "products": [1, 2]})),
        )
        .await
        .unwrap(),
    );
    let product = created(
        acme.call(
            Method::POST,
            "/v1/products/3/integrations",
            Some(&json!({"event": "t", "url": "https://example.com/p"})),
        )
        .await
        .unwrap(),
    );
    let sandbox = created(
        alice
            .call(
                Method::POST,
                "/v1/integrations",
                Some(&json!({"event": "t", "url": "https://example.com/u"})),
            )
            .await
            .unwrap(),
    );

    // Minutes counted on several days: today, yesterday's last minute and
    // today's first (across midnight UTC), days 2, 10 and 29 ago (the
    // oldest kept) and 30 ago (no longer kept). Two workers add to the same
    // minute. Alice's devices were under another org's product 9 and under
    // none.
    let now = minute_of(Utc::now());
    let midnight = now.date_naive().and_hms_opt(0, 0, 0).unwrap().and_utc();
    let ago = |days: u64, minutes: i64| now - Days::new(days) - TimeDelta::minutes(minutes);
    let counted: Vec<Counted> = vec![
        (org.clone(), Some(1), ago(0, 0), 5, 1, 0),
        (org.clone(), Some(1), ago(0, 0), 2, 0, 1),
        (org.clone(), Some(2), ago(0, 3), 3, 0, 0),
        (
            org.clone(),
            Some(1),
            midnight - TimeDelta::minutes(1),
            7,
            2,
            0,
        ),
        (org.clone(), Some(2), midnight, 11, 0, 4),
        (org.clone(), Some(2), ago(2, 0), 4, 4, 0),
        (org.clone(), Some(1), ago(10, 0), 6, 0, 0),
        (org.clone(), Some(2), ago(29, 0), 1, 0, 0),
        (org.clone(), Some(1), ago(30, 0), 100, 100, 100),
        (product.clone(), Some(3), ago(0, 0), 8, 0, 0),
        (product.clone(), Some(3), ago(1, 0), 0, 9, 0),
        (product.clone(), Some(3), ago(5, 0), 0, 0, 2),
        (sandbox.clone(), Some(9), ago(0, 0), 3, 0, 0),
        (sandbox.clone(), None, ago(0, 0), 1, 1, 1),
        (sandbox.clone(), Some(9), ago(3, 0), 0, 5, 0),
    ];
    let records: Vec<(String, String)> = counted
        .iter()
        .map(|(i, p, minute, success, error, skipped)| {
            let d = StatsDelta {
                integration: i.clone(),
                product: *p,
                minute: *minute,
                success: *success,
                error: *error,
                skipped: *skipped,
            };
            (i.clone(), serde_json::to_string(&d).unwrap())
        })
        .collect();
    produce(&broker, &s.kafka.stats_topic, &records).await;

    let kept = |counted: &[Counted]| -> u64 {
        let first = Utc::now().date_naive() - Days::new(29);
        counted
            .iter()
            .filter(|c| c.2.date_naive() >= first)
            .map(|c| c.3 + c.4 + c.5)
            .sum()
    };
    // The api reads the stats topic as it goes: wait until it has it all
    // (what is kept recomputed each time: midnight may pass meanwhile).
    let (mut shown, mut want_total) = (0, 0);
    for _ in 0..200 {
        want_total = kept(&counted);
        shown = 0;
        for (client, path) in [
            (&acme, format!("/v1/orgs/acme/integrations/{org}/history")),
            (
                &acme,
                format!("/v1/products/3/integrations/{product}/history"),
            ),
            (&alice, format!("/v1/integrations/{sandbox}/history")),
        ] {
            let h = client.call(Method::GET, &path, None).await.unwrap();
            for d in h["aggregate"].as_array().unwrap() {
                let (s, e, k) = triple(d);
                shown += s + e + k;
            }
        }
        if shown == want_total {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(shown, want_total, "the api never read every stats record");

    // The org integration, viewed by its org: aggregate and each product.
    let h = acme
        .call(
            Method::GET,
            &format!("/v1/orgs/acme/integrations/{org}/history"),
            None,
        )
        .await
        .unwrap();
    check_series(&counted, &org, None, &h["aggregate"], 30, "org aggregate");
    let per: Vec<&Value> = h["per_product"].as_array().unwrap().iter().collect();
    assert_eq!(per.len(), 2, "{h}");
    for p in per {
        let id = p["product"].as_u64().unwrap() as u32;
        assert_eq!(p["name"], format!("Product {id}"));
        assert_eq!(p["link"], format!("/v1/orgs/acme/products/{id}"));
        check_series(
            &counted,
            &org,
            Some(id),
            &p["days"],
            30,
            &format!("org, product {id}"),
        );
    }
    // Fewer days: the newest ones, the same counts.
    let week = acme
        .call(
            Method::GET,
            &format!("/v1/orgs/acme/integrations/{org}/history?days=7"),
            None,
        )
        .await
        .unwrap();
    check_series(&counted, &org, None, &week["aggregate"], 7, "org, 7 days");

    // The same shared integration under product 2: product 2's traffic only.
    let h2 = acme
        .call(
            Method::GET,
            &format!("/v1/products/2/integrations/{org}/history"),
            None,
        )
        .await
        .unwrap();
    check_series(&counted, &org, Some(2), &h2["aggregate"], 30, "org under 2");
    assert_eq!(h2["per_product"].as_array().unwrap().len(), 1, "{h2}");
    check_series(
        &counted,
        &org,
        Some(2),
        &h2["per_product"][0]["days"],
        30,
        "org under 2, per product",
    );

    // A product integration.
    let hp = acme
        .call(
            Method::GET,
            &format!("/v1/products/3/integrations/{product}/history"),
            None,
        )
        .await
        .unwrap();
    check_series(&counted, &product, None, &hp["aggregate"], 30, "product");
    check_series(
        &counted,
        &product,
        Some(3),
        &hp["per_product"][0]["days"],
        30,
        "product 3",
    );

    // A sandbox: the products its devices were under, by id only.
    let hs = alice
        .call(
            Method::GET,
            &format!("/v1/integrations/{sandbox}/history"),
            None,
        )
        .await
        .unwrap();
    check_series(&counted, &sandbox, None, &hs["aggregate"], 30, "sandbox");
    let sp = hs["per_product"].as_array().unwrap();
    assert_eq!(sp.len(), 1, "{hs}");
    assert_eq!(sp[0]["product"], 9);
    check_series(
        &counted,
        &sandbox,
        Some(9),
        &sp[0]["days"],
        30,
        "sandbox, 9",
    );
    let text = hs.to_string();
    assert!(
        sp[0]["name"].is_null()
            && sp[0]["link"].is_null()
            && !text.contains("Product 9")
            && !text.contains("other"),
        "a sandbox shows another org's product: {hs}"
    );

    // The lists: today and the kept days, summed over products or for the
    // product they are listed under.
    let today = Utc::now().date_naive();
    let first = today - Days::new(29);
    for (client, path, id, product) in [
        (&acme, "/v1/orgs/acme/integrations", &org, None),
        (&acme, "/v1/products/1/integrations", &org, Some(1)),
        (&acme, "/v1/products/2/integrations", &org, Some(2)),
        (&acme, "/v1/products/3/integrations", &product, None),
        (&alice, "/v1/integrations", &sandbox, None),
    ] {
        let list = client.call(Method::GET, path, None).await.unwrap();
        let line = list["integrations"]
            .as_array()
            .unwrap()
            .iter()
            .find(|l| l["id"] == **id)
            .unwrap_or_else(|| panic!("{path}: {list}"));
        assert_eq!(
            triple(&line["traffic"]["today"]),
            expected(&counted, id, product, today),
            "{path}: today"
        );
        assert_eq!(
            triple(&line["traffic"]["last_30_days"]),
            expected_since(&counted, id, product, first),
            "{path}: 30 days"
        );
    }

    // The CLI: its JSON is the api's answer; its table shows every day with
    // traffic, per product and in aggregate, and no other.
    let base = api.client.base().to_owned();
    let out = cli(&base, ACME, &["--org", "acme", "history", &org, "--json"]).await;
    let from_cli: Value = serde_json::from_str(&out).unwrap();
    check_series(
        &counted,
        &org,
        None,
        &from_cli["aggregate"],
        30,
        "cli aggregate",
    );
    check_series(
        &counted,
        &org,
        Some(1),
        &from_cli["per_product"][0]["days"],
        30,
        "cli product 1",
    );
    let table = cli(&base, ACME, &["--org", "acme", "history", &org]).await;
    let rows = table_rows(&table);
    let mut want = Vec::new();
    for (label, product) in [
        ("(all)".to_owned(), None),
        ("1 Product 1".to_owned(), Some(1)),
        ("2 Product 2".to_owned(), Some(2)),
    ] {
        for n in 0..30 {
            let day = first + Days::new(n);
            let c = expected(&counted, &org, product, day);
            if c != (0, 0, 0) {
                want.push((day.to_string(), label.clone(), c));
            }
        }
    }
    assert_eq!(rows, want, "{table}");
    let table = cli(&base, ALICE, &["history", &sandbox]).await;
    assert!(!table.contains("Product 9"), "{table}");
    assert_eq!(
        table_rows(&table)
            .iter()
            .map(|r| r.2 .0 + r.2 .1 + r.2 .2)
            .sum::<u64>(),
        // Each day's counts appear twice: in aggregate and under product 9
        // (or in aggregate only, for no product).
        expected_since(&counted, &sandbox, None, first).0
            + expected_since(&counted, &sandbox, None, first).1
            + expected_since(&counted, &sandbox, None, first).2
            + {
                let (s, e, k) = expected_since(&counted, &sandbox, Some(9), first);
                s + e + k
            },
        "{table}"
    );

    api.stop().await;
}
