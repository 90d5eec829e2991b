//! Merchant availability (Knot `MERCHANT_STATUS_UPDATE`): one view per (merchant, product
//! type, platform, SDK version), where the update with the newest event time wins whatever the
//! arrival order.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::compact::{Compact, CompactError, Input, Output};
use crate::ids::{InvalidSessionId, SessionId};

/// Whether a merchant is available.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Availability {
    /// Available.
    Up,
    /// Unavailable.
    Down,
    /// A status this build does not know; the provider's value is in the stored payload.
    Unknown,
}

/// Availability of one merchant for one product type, platform and SDK version.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MerchantStatus {
    /// The merchant's id.
    pub merchant_id: String,
    /// Its name.
    pub name: Option<String>,
    /// Its category.
    pub category: Option<String>,
    /// Its logo URL.
    pub logo: Option<String>,
    /// The product (`card_switcher`, `transaction_link`).
    #[serde(rename = "type")]
    pub product_type: String,
    /// The platform (`ios`, `android`, `web`).
    pub platform: String,
    /// The SDK version; `None` when the provider sends null.
    pub sdk: Option<String>,
    /// Up or down.
    pub status: Availability,
    /// The event time of this status.
    pub since: DateTime<Utc>,
}

impl MerchantStatus {
    /// The id of this availability's stream: `merchant:<id>:<type>:<platform>:<sdk or ->`.
    pub fn stream_id(&self) -> Result<SessionId, InvalidSessionId> {
        SessionId::new(format!(
            "merchant:{}:{}:{}:{}",
            self.merchant_id,
            self.product_type,
            self.platform,
            self.sdk.as_deref().unwrap_or("-")
        ))
    }

    /// Folds an update into the current view: the newest event time wins; on a tie the later
    /// arrival wins.
    pub fn fold_into(current: Option<MerchantStatus>, update: &MerchantStatus) -> MerchantStatus {
        match current {
            Some(current) if current.since > update.since => current,
            _ => update.clone(),
        }
    }
}

const AVAILABILITIES: [Availability; 3] =
    [Availability::Up, Availability::Down, Availability::Unknown];

impl Compact for MerchantStatus {
    fn encode_compact(&self, out: &mut Output) {
        out.str(&self.merchant_id);
        out.opt_str(self.name.as_deref());
        out.opt_str(self.category.as_deref());
        out.opt_str(self.logo.as_deref());
        out.str(&self.product_type);
        out.str(&self.platform);
        out.opt_str(self.sdk.as_deref());
        out.u8(self.status as u8);
        out.time(self.since, 0);
    }

    fn decode_compact(input: &mut Input<'_>) -> Result<Self, CompactError> {
        Ok(MerchantStatus {
            merchant_id: input.str("merchant id")?,
            name: input.opt_str("merchant name")?,
            category: input.opt_str("merchant category")?,
            logo: input.opt_str("merchant logo")?,
            product_type: input.str("product type")?,
            platform: input.str("platform")?,
            sdk: input.opt_str("sdk")?,
            status: input.choice("availability", &AVAILABILITIES)?,
            since: input.time("status time", 0)?,
        })
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use chrono::TimeZone;

    /// Uber's card switcher on iOS, `status` since 16:00:`second` on 2024-03-19 (also used by
    /// the event body tests).
    pub(crate) fn status(second: u32, status: Availability) -> MerchantStatus {
        MerchantStatus {
            merchant_id: "10".into(),
            name: Some("Uber".into()),
            category: None,
            logo: None,
            product_type: "card_switcher".into(),
            platform: "ios".into(),
            sdk: None,
            status,
            since: Utc.with_ymd_and_hms(2024, 3, 19, 16, 0, second).unwrap(),
        }
    }

    #[test]
    fn the_newest_event_time_wins_whatever_the_arrival_order() {
        let newer = status(10, Availability::Down);
        let older = status(5, Availability::Up);
        let view = MerchantStatus::fold_into(None, &newer);
        let view = MerchantStatus::fold_into(Some(view), &older);
        assert_eq!(view.status, Availability::Down);
        assert_eq!(
            newer.stream_id().unwrap().as_str(),
            "merchant:10:card_switcher:ios:-"
        );
    }

    #[test]
    fn a_status_round_trips_through_its_compact_form() {
        use crate::compact::{from_compact, to_compact};
        let mut full = status(7, Availability::Down);
        full.category = Some("rides".into());
        full.logo = Some("https://example.com/uber.png".into());
        full.sdk = Some("2.1.0".into());
        for value in [status(0, Availability::Up), full] {
            let bytes = to_compact(&value);
            assert_eq!(from_compact::<MerchantStatus>(&bytes).unwrap(), value);
            let mut damaged = bytes.clone();
            let mut time = crate::compact::Output::default();
            time.time(value.since, 0);
            let status_at = damaged.len() - time.into_bytes().len() - 1;
            damaged[status_at] = 9;
            let error = from_compact::<MerchantStatus>(&damaged).unwrap_err();
            assert_eq!(error.what, "availability", "{error}");
        }
    }
}
