//! Merchant availability (Knot `MERCHANT_STATUS_UPDATE`): one view per (merchant, product
//! type, platform, SDK version), where the update with the newest event time wins whatever the
//! arrival order.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::ids::{InvalidSessionId, SessionId};

/// Whether a merchant is available.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Availability {
    /// Available.
    Up,
    /// Unavailable.
    Down,
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

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    fn status(second: u32, status: Availability) -> MerchantStatus {
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
}
