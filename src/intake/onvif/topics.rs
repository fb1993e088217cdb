//! Which ONVIF events count: topic paths with their namespaces, how a camera's topic is matched
//! against a watched one, and the rules that name the boolean data item whose change to true
//! raises an alarm (motion, plus the topics in `config.topics`).

use std::fmt;

use super::messages::Notification;
use super::ns;
use super::xml::Element;

/// A topic path such as `tns1:RuleEngine/CellMotionDetector/Motion`, each step's prefix resolved
/// where it can be.
#[derive(Debug, Clone, PartialEq)]
pub(super) struct Topic {
    steps: Vec<TopicStep>,
}

#[derive(Debug, Clone, PartialEq)]
struct TopicStep {
    /// None when the step has no prefix, or one the document did not declare.
    ns: Option<String>,
    local: String,
    /// As written, prefix included.
    text: String,
}

impl Topic {
    /// A topic from the configuration: `tns1` means the ONVIF topic namespace, as in the
    /// ONVIF documents; other prefixes are unknown here and only the names are compared.
    fn from_config(text: &str) -> Self {
        Self::parse(text, |prefix| (prefix == "tns1").then(|| ns::TOPICS.to_owned()))
    }

    /// The topic of a `wsnt:Topic` element, its prefixes resolved with the element's bindings.
    pub(super) fn from_message(element: &Element) -> Self {
        Self::parse(element.text(), |prefix| element.namespace_of(prefix).map(str::to_owned))
    }

    fn parse(text: &str, resolve: impl Fn(&str) -> Option<String>) -> Self {
        let steps = text
            .trim()
            .split('/')
            .filter(|step| !step.is_empty())
            .map(|step| match step.split_once(':') {
                Some((prefix, local)) => TopicStep {
                    ns: resolve(prefix),
                    local: local.to_owned(),
                    text: step.to_owned(),
                },
                None => TopicStep {
                    ns: None,
                    local: step.to_owned(),
                    text: step.to_owned(),
                },
            })
            .collect();
        Self { steps }
    }

    /// Same names step by step, and the same namespaces where both sides know theirs: cameras
    /// bind the ONVIF topic namespace to `tns1` mostly, but not always.
    pub(super) fn matches(&self, other: &Topic) -> bool {
        self.steps.len() == other.steps.len()
            && self.steps.iter().zip(&other.steps).all(|(a, b)| {
                a.local == b.local
                    && match (&a.ns, &b.ns) {
                        (Some(a), Some(b)) => a == b,
                        _ => true,
                    }
            })
    }
}

impl fmt::Display for Topic {
    /// With the ONVIF topic namespace written `tns1:` whatever prefix the camera used.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, step) in self.steps.iter().enumerate() {
            if i > 0 {
                f.write_str("/")?;
            }
            match step.ns.as_deref() {
                Some(ns::TOPICS) => write!(f, "tns1:{}", step.local)?,
                _ => f.write_str(&step.text)?,
            }
        }
        Ok(())
    }
}

/// A watched topic and the data item whose false→true change raises an alarm.
pub(super) struct Rule {
    pub(super) topic: Topic,
    /// The named item; None (or when it is missing) takes the first boolean item.
    item: Option<&'static str>,
}

impl Rule {
    /// Motion (ONVIF's cell motion detector and video source motion alarm), and the configured
    /// topics.
    pub(super) fn all(configured: &[String]) -> Vec<Rule> {
        let mut rules = vec![
            Rule {
                topic: Topic::from_config("tns1:RuleEngine/CellMotionDetector/Motion"),
                item: Some("IsMotion"),
            },
            Rule {
                topic: Topic::from_config("tns1:VideoSource/MotionAlarm"),
                item: Some("State"),
            },
        ];
        rules.extend(configured.iter().map(|topic| Rule {
            topic: Topic::from_config(topic),
            item: None,
        }));
        rules
    }

    pub(super) fn value(&self, notification: &Notification) -> Option<bool> {
        self.item
            .and_then(|name| notification.data_item(name))
            .and_then(parse_bool)
            .or_else(|| notification.data.iter().find_map(|(_, value)| parse_bool(value)))
    }
}

/// An xs:boolean: `true`, `false`, `1` or `0`.
fn parse_bool(text: &str) -> Option<bool> {
    match text.trim() {
        "true" | "1" => Some(true),
        "false" | "0" => Some(false),
        other if other.eq_ignore_ascii_case("true") => Some(true),
        other if other.eq_ignore_ascii_case("false") => Some(false),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::super::messages::parse_notification;
    use super::super::xml::parse_xml;
    use super::*;

    #[test]
    fn configured_topics_match_by_path_and_use_the_first_boolean() {
        let rules = Rule::all(&["tns1:RuleEngine/FieldDetector/ObjectsInside".to_owned()]);
        let text = r#"<wsnt:NotificationMessage xmlns:wsnt="http://docs.oasis-open.org/wsn/b-2"
            xmlns:tt="http://www.onvif.org/ver10/schema" xmlns:x="http://www.onvif.org/ver10/topics">
            <wsnt:Topic>x:RuleEngine/FieldDetector/ObjectsInside</wsnt:Topic>
            <wsnt:Message><tt:Message UtcTime="2026-11-21T10:15:00Z" PropertyOperation="Changed">
              <tt:Data><tt:SimpleItem Name="Count" Value="3"/><tt:SimpleItem Name="IsInside" Value="1"/></tt:Data>
            </tt:Message></wsnt:Message></wsnt:NotificationMessage>"#;
        let element = parse_xml(text).expect("xml");
        let n = parse_notification(&element, text).expect("notification");
        let rule = rules
            .iter()
            .find(|r| r.topic.matches(&n.topic))
            .expect("configured topic matches");
        assert!(rule.item.is_none());
        assert_eq!(rule.value(&n), Some(true));
        assert_eq!(n.topic.to_string(), "tns1:RuleEngine/FieldDetector/ObjectsInside");

        // Another namespace under the same names is another topic.
        let other =
            parse_xml(r#"<t xmlns:v="http://vendor.example/topics">v:RuleEngine/FieldDetector/ObjectsInside</t>"#)
                .expect("xml");
        assert!(!rules[2].topic.matches(&Topic::from_message(&other)));
        // An undeclared prefix is compared by names alone.
        let unbound = parse_xml("<t>acme:VideoSource/MotionAlarm</t>").expect("xml");
        assert!(rules[1].topic.matches(&Topic::from_message(&unbound)));
    }
}
