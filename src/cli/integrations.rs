//! `hookd integrations …`: the command-line client of the REST API.
//!
//! The place is the caller's sandbox, `--product P` or `--org O`. Answers
//! print as tables for people, or as the api's JSON with `--json`; a refused
//! request exits non-zero with the api's error message.

use std::path::PathBuf;

use anyhow::{bail, Context as _};
use hyper::Method;
use serde_json::{Map, Value};

use crate::control::api::client::ApiClient;

#[derive(Debug, clap::Args)]
pub struct IntegrationsArgs {
    /// The api's base URL.
    #[arg(long, env = "HOOKCTL_API", default_value = "http://127.0.0.1:8480")]
    pub api: String,
    /// Bearer token (or HOOKCTL_TOKEN).
    #[arg(long, env = "HOOKCTL_TOKEN", hide_env_values = true)]
    pub token: String,
    /// A product's integrations (its own and the org's shared with it).
    #[arg(long, global = true, conflicts_with = "org")]
    pub product: Option<u32>,
    /// An organization's integrations.
    #[arg(long, global = true)]
    pub org: Option<String>,
    /// Print the api's JSON instead of a table.
    #[arg(long, global = true)]
    pub json: bool,
    #[command(subcommand)]
    pub command: IntegrationsCommand,
}

#[derive(Debug, clap::Subcommand)]
pub enum IntegrationsCommand {
    /// Create an integration from a JSON file of Particle fields.
    Create {
        #[arg(long)]
        file: PathBuf,
        /// Org integrations: the products it executes on.
        #[arg(long, value_delimiter = ',')]
        products: Vec<u32>,
    },
    /// List the place's integrations with today's and the kept days' traffic.
    List,
    /// One integration: config and history.
    Get {
        id: String,
    },
    /// Change an integration: `--set field=value` (value as JSON when it
    /// parses, else a string), or a whole config with `--file`.
    Edit {
        id: String,
        #[arg(long)]
        file: Option<PathBuf>,
        #[arg(long = "set", value_name = "FIELD=VALUE")]
        sets: Vec<String>,
    },
    /// Make `--product`'s own integration from a shared org integration, with
    /// the shared config changed by `--set` (or a whole config in `--file`).
    Separate {
        id: String,
        #[arg(long)]
        file: Option<PathBuf>,
        #[arg(long = "set", value_name = "FIELD=VALUE")]
        sets: Vec<String>,
    },
    Delete {
        id: String,
    },
    /// Send one sample event now and show the outcome.
    Test {
        id: String,
    },
    /// Daily counts, in aggregate and per product.
    History {
        id: String,
        #[arg(long)]
        days: Option<u32>,
    },
    /// The last 10 successes and 10 errors.
    Log {
        id: String,
    },
}

pub async fn run(args: IntegrationsArgs) -> anyhow::Result<String> {
    let client = ApiClient::new(&args.api, &args.token);
    let base = match (&args.product, &args.org) {
        (Some(p), _) => format!("/v1/products/{p}/integrations"),
        (_, Some(o)) => format!("/v1/orgs/{o}/integrations"),
        _ => "/v1/integrations".to_owned(),
    };
    use IntegrationsCommand as C;
    let answer = match &args.command {
        C::Create { file, products } => {
            let mut config = read_object(file)?;
            if !products.is_empty() {
                config.insert("products".into(), products.clone().into());
            }
            client
                .call(Method::POST, &base, Some(&Value::Object(config)))
                .await?
        }
        C::List => client.call(Method::GET, &base, None).await?,
        C::Get { id } => {
            client
                .call(Method::GET, &format!("{base}/{id}"), None)
                .await?
        }
        C::Edit { id, file, sets } => {
            let path = format!("{base}/{id}");
            let current = client.call(Method::GET, &path, None).await?;
            let mut config = edited(&current, file.as_ref(), sets)?;
            // An edit keeps the fields it does not carry: a whole config
            // from a file removes the ones it left out.
            if file.is_some() {
                for field in current["config"]
                    .as_object()
                    .into_iter()
                    .flatten()
                    .map(|(k, _)| k)
                    .filter(|k| *k != "created_at")
                {
                    config.entry(field.clone()).or_insert(Value::Null);
                }
            }
            config.insert("version".into(), current["version"].clone());
            if let Some(products) = current.get("products") {
                config.entry("products").or_insert(products.clone());
            }
            client
                .call(Method::PUT, &path, Some(&Value::Object(config)))
                .await?
        }
        C::Separate { id, file, sets } => {
            let Some(p) = args.product else {
                bail!("separate needs --product: the product that leaves the shared integration");
            };
            let current = client
                .call(Method::GET, &format!("{base}/{id}"), None)
                .await?;
            let config = edited(&current, file.as_ref(), sets)?;
            let path = format!("/v1/products/{p}/integrations/{id}/separate");
            client
                .call(Method::POST, &path, Some(&Value::Object(config)))
                .await?
        }
        C::Delete { id } => {
            client
                .call(Method::DELETE, &format!("{base}/{id}"), None)
                .await?;
            Value::String(format!("deleted {id}"))
        }
        C::Test { id } => {
            client
                .call(Method::POST, &format!("{base}/{id}/test"), None)
                .await?
        }
        C::History { id, days } => {
            let q = days.map(|d| format!("?days={d}")).unwrap_or_default();
            client
                .call(Method::GET, &format!("{base}/{id}/history{q}"), None)
                .await?
        }
        C::Log { id } => {
            client
                .call(Method::GET, &format!("{base}/{id}/log"), None)
                .await?
        }
    };
    if args.json {
        return Ok(serde_json::to_string_pretty(&answer)?);
    }
    Ok(match &args.command {
        C::List => table_of_list(&answer),
        C::History { .. } => table_of_history(&answer),
        C::Log { .. } => table_of_log(&answer),
        C::Delete { .. } => answer.as_str().unwrap_or_default().to_owned(),
        C::Test { .. } => format!(
            "{}  {}",
            answer["outcome"].as_str().unwrap_or("?"),
            answer
                .get("response")
                .map(|r| format!("status {} body {}", r["status"], r["body"]))
                .or_else(|| answer["error"].as_str().map(str::to_owned))
                .unwrap_or_default()
        ),
        _ => table_of_one(&answer),
    })
}

fn read_object(file: &PathBuf) -> anyhow::Result<Map<String, Value>> {
    let text = std::fs::read(file).with_context(|| format!("reading {}", file.display()))?;
    match serde_json::from_slice(&text)
        .with_context(|| format!("{} is not JSON", file.display()))?
    {
        Value::Object(m) => Ok(m),
        _ => bail!("{} must hold one JSON object", file.display()),
    }
}

/// The config to send: `file`, or the current config with `sets` applied.
fn edited(
    current: &Value,
    file: Option<&PathBuf>,
    sets: &[String],
) -> anyhow::Result<Map<String, Value>> {
    let mut config = match file {
        Some(f) => read_object(f)?,
        None => current["config"].as_object().cloned().unwrap_or_default(),
    };
    for set in sets {
        let (field, value) = set
            .split_once('=')
            .with_context(|| format!("--set {set:?}: expected FIELD=VALUE"))?;
        let value = serde_json::from_str(value).unwrap_or_else(|_| Value::String(value.to_owned()));
        config.insert(field.to_owned(), value);
    }
    Ok(config)
}

fn counts(v: &Value) -> String {
    format!("{}/{}/{}", v["success"], v["error"], v["skipped"])
}

fn table_of_list(answer: &Value) -> String {
    let mut out = format!(
        "{:<26} {:<28} {:<13} {:>8} {:>16} {:>16}\n",
        "ID", "NAME", "SCOPE", "PRODUCTS", "TODAY ok/err/skip", "LAST DAYS"
    );
    for i in answer["integrations"].as_array().into_iter().flatten() {
        let last = i["traffic"]
            .as_object()
            .and_then(|t| t.iter().find(|(k, _)| k.starts_with("last_")))
            .map(|(_, v)| counts(v))
            .unwrap_or_default();
        let scope = match (i["scope"].as_str(), i["shared"].as_bool()) {
            (Some("organization"), _) => "shared (org)",
            (Some(s), _) => s,
            _ => "?",
        };
        out.push_str(&format!(
            "{:<26} {:<28} {:<13} {:>8} {:>16} {:>16}\n",
            i["id"].as_str().unwrap_or_default(),
            i["name"].as_str().unwrap_or_default(),
            scope,
            i.get("executes_on")
                .map(Value::to_string)
                .unwrap_or_else(|| "1".into()),
            counts(&i["traffic"]["today"]),
            last,
        ));
    }
    out
}

fn table_of_one(i: &Value) -> String {
    let mut out = String::new();
    if i["shared"].as_bool() == Some(true) {
        out.push_str(&format!(
            "** Shared organization integration: executes on {} product(s) **\n",
            i["executes_on"]
        ));
    }
    for key in ["id", "name", "version", "scope", "event", "url", "disabled"] {
        out.push_str(&format!("{key:<10} {}\n", i[key]));
    }
    if let Some(p) = i.get("products") {
        out.push_str(&format!("{:<10} {p}\n", "products"));
    }
    out.push_str(&format!(
        "{:<10} {}\n",
        "today",
        counts(&i["traffic"]["today"])
    ));
    out.push_str(&format!(
        "config     {}\n",
        serde_json::to_string_pretty(&i["config"]).unwrap_or_default()
    ));
    out
}

fn table_of_history(h: &Value) -> String {
    let mut out = String::from("DATE        PRODUCT                        OK   ERR  SKIP\n");
    let mut rows = |label: &str, days: &Value| {
        for d in days.as_array().into_iter().flatten() {
            if d["success"] == 0 && d["error"] == 0 && d["skipped"] == 0 {
                continue;
            }
            out.push_str(&format!(
                "{:<11} {:<28} {:>5} {:>5} {:>5}\n",
                d["date"].as_str().unwrap_or_default(),
                label,
                d["success"],
                d["error"],
                d["skipped"]
            ));
        }
    };
    rows("(all)", &h["aggregate"]);
    for p in h["per_product"].as_array().into_iter().flatten() {
        let label = format!(
            "{} {}",
            p["product"],
            p["name"].as_str().unwrap_or_default()
        );
        rows(&label, &p["days"]);
    }
    out
}

fn table_of_log(l: &Value) -> String {
    let mut out = String::new();
    for kind in ["successes", "errors"] {
        out.push_str(&format!("{kind}:\n"));
        for e in l[kind].as_array().into_iter().flatten() {
            let what = e
                .get("response")
                .filter(|r| !r.is_null())
                .map(|r| format!("status {}", r["status"]))
                .or_else(|| e["error"].as_str().map(str::to_owned))
                .unwrap_or_default();
            out.push_str(&format!(
                "  {}  product {}  {} {}  {}\n",
                e["at"].as_str().unwrap_or_default(),
                e["product"],
                e["request"]["method"].as_str().unwrap_or_default(),
                e["request"]["url"].as_str().unwrap_or_default(),
                what
            ));
        }
    }
    out
}
