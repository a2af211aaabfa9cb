//! Simulated devices: realistic events for `hookd publish --simulate` and the
//! demo. Devices are spread over products; some are claimed by users.

use rand::Rng;
use serde_json::json;

/// One simulated fleet.
#[derive(Debug, Clone)]
pub struct Fleet {
    devices: Vec<Device>,
    /// Random per fleet, so event ids (and idempotency keys) of two runs differ.
    run: String,
}

#[derive(Debug, Clone)]
pub struct Device {
    /// 24 hex characters, like a Particle device id.
    pub id: String,
    pub product: Option<u32>,
    /// The claiming user; `None` for unclaimed devices.
    pub user: Option<String>,
}

/// Event names the simulated firmware publishes.
pub const EVENT_NAMES: [&str; 4] = ["temperature", "humidity", "status", "motion"];

impl Fleet {
    /// `count` devices, round-robin over `products`; every `claim_every`-th
    /// device is claimed by one of `users` (0: none claimed).
    pub fn new(count: usize, products: &[u32], users: &[&str], claim_every: usize) -> Fleet {
        let devices = (0..count)
            .map(|i| Device {
                id: format!("{:024x}", 0xd0_0000_0000_u64 + i as u64),
                product: (!products.is_empty()).then(|| products[i % products.len()]),
                user: (claim_every > 0 && i % claim_every == 0 && !users.is_empty())
                    .then(|| users[(i / claim_every) % users.len()].to_owned()),
            })
            .collect();
        Fleet {
            devices,
            run: format!("{:08x}", rand::random::<u32>()),
        }
    }

    /// The `n`th event of the fleet: device `n % count`, a rotating name, and
    /// JSON data of a few readings.
    pub fn event(&self, n: u64, rng: &mut impl Rng) -> (String, String) {
        let device = &self.devices[(n % self.devices.len() as u64) as usize];
        let name = EVENT_NAMES[(n / self.devices.len() as u64 % EVENT_NAMES.len() as u64) as usize];
        let data = json!({
            "t": (rng.random_range(150..350) as f64) / 10.0,
            "h": rng.random_range(20..90),
            "battery": rng.random_range(0..100),
            "seq": n,
        })
        .to_string();
        let mut event = json!({
            "name": name,
            "data": data,
            "published_at": chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
            "coreid": device.id,
            "userid": device.user.clone().unwrap_or_default(),
            "ttl": 60,
            "public": false,
            "id": format!("sim-{}-{n}", self.run),
        });
        if let Some(p) = device.product {
            event["productID"] = json!(p);
            event["version"] = json!(3);
        }
        (device.id.clone(), event.to_string())
    }
}
