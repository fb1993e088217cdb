//! Property tests: the alarm parser and the config loader never panic, and what they accept or
//! reject follows their contract, for arbitrary input.

use alarm_verifier::config::Config;
use alarm_verifier::intake::alarm::{self, AlarmError, MAX_PAYLOAD_BYTES};
use chrono::{TimeDelta, Utc};
use proptest::prelude::*;

const VALID_CONFIG: &str = include_str!("../config/example.toml");

fn known(c: &str) -> bool {
    c == "gate"
}

/// JSON values of any shape, a few levels deep.
fn json_value() -> impl Strategy<Value = serde_json::Value> {
    let leaf = prop_oneof![
        Just(serde_json::Value::Null),
        any::<bool>().prop_map(serde_json::Value::from),
        any::<i64>().prop_map(serde_json::Value::from),
        any::<f64>()
            .prop_filter("finite", |f| f.is_finite())
            .prop_map(serde_json::Value::from),
        ".{0,20}".prop_map(serde_json::Value::from),
    ];
    leaf.prop_recursive(3, 24, 6, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..4).prop_map(serde_json::Value::from),
            prop::collection::hash_map("[a-z_]{1,10}", inner, 0..4)
                .prop_map(|m| serde_json::Value::Object(m.into_iter().collect())),
        ]
    })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    #[test]
    fn alarm_parser_takes_any_bytes_without_panicking(bytes in prop::collection::vec(any::<u8>(), 0..512)) {
        let _ = alarm::parse("mqtt", "gate", &bytes, known, Utc::now());
    }

    #[test]
    fn alarm_parser_on_any_json_accepts_only_objects_with_valid_fields(value in json_value()) {
        let payload = serde_json::to_vec(&value).unwrap_or_default();
        match alarm::parse("mqtt", "gate", &payload, known, Utc::now()) {
            Ok(a) => {
                let obj = value.as_object();
                prop_assert!(obj.is_some(), "accepted a non-object: {value}");
                prop_assert!(!a.alarm_id.is_empty());
                if let Some(id) = obj.and_then(|o| o.get("alarm_id")).and_then(|v| v.as_str()) {
                    prop_assert_eq!(&a.alarm_id, id);
                }
            }
            Err(AlarmError::NotJson(_)) => prop_assert!(!value.is_object()),
            Err(AlarmError::Field { field, .. }) => prop_assert!(["alarm_id", "time", "source"].contains(&field.as_str()), "{field}"),
            Err(e) => prop_assert!(false, "unexpected error {e}"),
        }
    }

    #[test]
    fn well_formed_alarms_round_trip(id in "[A-Za-z0-9_.:-]{1,40}", offset_s in -3000i64..3000, source in proptest::option::of("[ -~]{0,30}")) {
        // "." and ".." are path steps, refused on purpose (ids become file names and links).
        prop_assume!(id != "." && id != "..");
        let now = Utc::now();
        let time = now + TimeDelta::seconds(offset_s);
        let payload = serde_json::json!({"alarm_id": id, "time": time.to_rfc3339(), "source": source});
        let a = alarm::parse("mqtt", "gate", payload.to_string().as_bytes(), known, now).expect("valid alarm");
        prop_assert_eq!(a.alarm_id, id);
        prop_assert_eq!(a.time.timestamp(), time.timestamp());
        let expected = match source.as_deref() {
            Some(s) if !s.is_empty() => format!("mqtt:{s}"),
            _ => "mqtt".to_owned(),
        };
        prop_assert_eq!(a.source, expected);
    }

    #[test]
    fn oversized_payloads_are_rejected_by_size(extra in 1usize..4096) {
        let payload = vec![b' '; MAX_PAYLOAD_BYTES + extra];
        prop_assert_eq!(alarm::parse("mqtt", "gate", &payload, known, Utc::now()).unwrap_err(), AlarmError::TooLarge(MAX_PAYLOAD_BYTES + extra));
    }

    #[test]
    fn config_loader_takes_any_text_without_panicking(text in ".{0,400}") {
        let _ = Config::parse(&text, "fuzz.toml");
    }

    /// A valid config with one line replaced by junk either still parses or fails naming the file.
    #[test]
    fn config_errors_name_the_file(line in 0usize..120, junk in "[a-z_]{1,8} = [0-9a-z\"\\[\\]]{0,6}") {
        let mut lines: Vec<&str> = VALID_CONFIG.lines().collect();
        let at = line.min(lines.len() - 1);
        lines[at] = junk.as_str();
        let text = lines.join("\n");
        if let Err(e) = Config::parse(&text, "fuzz.toml") {
            prop_assert!(e.to_string().starts_with("fuzz.toml"), "{e}");
        }
    }
}
