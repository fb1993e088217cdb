//! What the camera's replies say: the clock (GetSystemDateAndTime), where the event service is
//! (GetCapabilities, GetServices), the pull point made (CreatePullPointSubscription), its renewal
//! (Renew), and the notifications pulled (PullMessages), each read from the element in a reply's
//! SOAP Body.

use chrono::{DateTime, NaiveDate, NaiveDateTime, Utc};

use super::device::Service;
use super::topics::Topic;
use super::xml::{Element, excerpt};
use super::{OnvifError, Operation, ns};

/// A `wsnt:NotificationMessage` that cannot be read; the others in the reply still are.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub(super) enum NotificationError {
    #[error("a NotificationMessage without wsnt:Topic")]
    NoTopic,
    #[error("a NotificationMessage of {topic} without wsnt:Message/tt:Message")]
    NoMessage { topic: Topic },
}

pub(super) fn parse_system_date_and_time(payload: &Element) -> Result<DateTime<Utc>, OnvifError> {
    let op = Operation::GetSystemDateAndTime;
    let utc = payload
        .path(&[(ns::TDS, "SystemDateAndTime"), (ns::TT, "UTCDateTime")])
        .ok_or_else(|| OnvifError::missing(op, "tt:UTCDateTime"))?;
    let number = |path: &[(&str, &str)], what: &str| -> Result<u32, OnvifError> {
        utc.path(path)
            .and_then(|e| e.text().parse::<u32>().ok())
            .ok_or_else(|| OnvifError::missing(op, format!("number in tt:UTCDateTime/{what}")))
    };
    let date = NaiveDate::from_ymd_opt(
        number(&[(ns::TT, "Date"), (ns::TT, "Year")], "Date/Year")?
            .try_into()
            .unwrap_or(i32::MAX),
        number(&[(ns::TT, "Date"), (ns::TT, "Month")], "Date/Month")?,
        number(&[(ns::TT, "Date"), (ns::TT, "Day")], "Date/Day")?,
    );
    let time = date.and_then(|d| {
        d.and_hms_opt(
            number(&[(ns::TT, "Time"), (ns::TT, "Hour")], "Time/Hour").ok()?,
            number(&[(ns::TT, "Time"), (ns::TT, "Minute")], "Time/Minute").ok()?,
            number(&[(ns::TT, "Time"), (ns::TT, "Second")], "Time/Second").ok()?,
        )
    });
    time.map(|t| t.and_utc())
        .ok_or_else(|| OnvifError::missing(op, "valid date and time in tt:UTCDateTime"))
}

pub(super) fn parse_capabilities(payload: &Element) -> Result<String, OnvifError> {
    parse_capability_address(payload, Service::Events)
}

pub(super) fn parse_services(payload: &Element) -> Result<String, OnvifError> {
    parse_service_address(payload, Service::Events)
}

/// A service's `tt:XAddr` in a GetCapabilitiesResponse.
pub(super) fn parse_capability_address(payload: &Element, service: Service) -> Result<String, OnvifError> {
    let op = Operation::GetCapabilities;
    let category = service.category();
    let xaddr = payload
        .path(&[(ns::TDS, "Capabilities"), (ns::TT, category), (ns::TT, "XAddr")])
        .ok_or_else(|| OnvifError::missing(op, format!("tt:{category}/tt:XAddr")))?;
    http_url(op, xaddr.text(), &format!("tt:{category}/tt:XAddr"))
}

/// A service's `tds:XAddr` in a GetServicesResponse, found by its namespace.
pub(super) fn parse_service_address(payload: &Element, service: Service) -> Result<String, OnvifError> {
    let op = Operation::GetServices;
    let namespace = service.namespace();
    let found = payload
        .children_named(ns::TDS, "Service")
        .find(|s| s.child(ns::TDS, "Namespace").is_some_and(|n| n.text() == namespace))
        .ok_or_else(|| OnvifError::missing(op, format!("service of namespace {namespace}")))?;
    let xaddr = found
        .child(ns::TDS, "XAddr")
        .ok_or_else(|| OnvifError::missing(op, format!("tds:XAddr of the service {namespace}")))?;
    http_url(op, xaddr.text(), &format!("tds:XAddr of the service {namespace}"))
}

/// An address the camera gave, checked to be an http(s) URL.
fn http_url(op: Operation, text: &str, what: &str) -> Result<String, OnvifError> {
    match url::Url::parse(text) {
        Ok(url) if matches!(url.scheme(), "http" | "https") => Ok(text.to_owned()),
        _ => Err(OnvifError::missing(
            op,
            format!("http URL in {what} (got {:?})", excerpt(text)),
        )),
    }
}

pub(super) struct CreatedSubscription {
    pub(super) address: String,
    pub(super) reference_headers: String,
    pub(super) current: Option<DateTime<Utc>>,
    pub(super) termination: Option<DateTime<Utc>>,
}

pub(super) fn parse_subscription(payload: &Element) -> Result<CreatedSubscription, OnvifError> {
    let op = Operation::CreatePullPointSubscription;
    if !payload.is(ns::TEV, "CreatePullPointSubscriptionResponse") {
        return Err(OnvifError::missing(op, "tev:CreatePullPointSubscriptionResponse"));
    }
    let reference = payload
        .child(ns::TEV, "SubscriptionReference")
        .ok_or_else(|| OnvifError::missing(op, "tev:SubscriptionReference"))?;
    let address = reference
        .child(ns::WSA, "Address")
        .ok_or_else(|| OnvifError::missing(op, "wsa:Address in tev:SubscriptionReference"))?;
    let address = http_url(op, address.text(), "wsa:Address of the subscription")?;
    let reference_headers = reference
        .child(ns::WSA, "ReferenceParameters")
        .map(|parameters| parameters.children.iter().map(reference_header).collect())
        .unwrap_or_default();
    Ok(CreatedSubscription {
        address,
        reference_headers,
        current: time_of(payload.child(ns::WSNT, "CurrentTime")),
        termination: time_of(payload.child(ns::WSNT, "TerminationTime")),
    })
}

pub(super) struct Renewed {
    pub(super) current: Option<DateTime<Utc>>,
    pub(super) termination: DateTime<Utc>,
}

pub(super) fn parse_renew(payload: &Element) -> Result<Renewed, OnvifError> {
    let op = Operation::Renew;
    if !payload.is(ns::WSNT, "RenewResponse") {
        return Err(OnvifError::missing(op, "wsnt:RenewResponse"));
    }
    let termination = time_of(payload.child(ns::WSNT, "TerminationTime"))
        .ok_or_else(|| OnvifError::missing(op, "valid wsnt:TerminationTime"))?;
    Ok(Renewed {
        current: time_of(payload.child(ns::WSNT, "CurrentTime")),
        termination,
    })
}

pub(super) struct Pulled {
    pub(super) current: Option<DateTime<Utc>>,
    pub(super) termination: Option<DateTime<Utc>>,
    pub(super) notifications: Vec<Notification>,
    /// Why some notifications could not be read; the others are used.
    pub(super) skipped: Vec<NotificationError>,
}

/// A PullMessagesResponse; `text` is the whole reply, whose spans are each notification's raw XML.
pub(super) fn parse_pull(payload: &Element, text: &str) -> Result<Pulled, OnvifError> {
    let op = Operation::PullMessages;
    if !payload.is(ns::TEV, "PullMessagesResponse") {
        return Err(OnvifError::missing(op, "tev:PullMessagesResponse"));
    }
    let mut notifications = Vec::new();
    let mut skipped = Vec::new();
    for message in payload.children_named(ns::WSNT, "NotificationMessage") {
        match parse_notification(message, text) {
            Ok(notification) => notifications.push(notification),
            Err(e) => skipped.push(e),
        }
    }
    Ok(Pulled {
        current: time_of(payload.child(ns::TEV, "CurrentTime")),
        termination: time_of(payload.child(ns::TEV, "TerminationTime")),
        notifications,
        skipped,
    })
}

/// An xs:dateTime; without a zone it is taken as UTC, as cameras that omit it mean.
pub(super) fn parse_xml_time(text: &str) -> Option<DateTime<Utc>> {
    let text = text.trim();
    DateTime::parse_from_rfc3339(text)
        .map(|t| t.with_timezone(&Utc))
        .ok()
        .or_else(|| {
            NaiveDateTime::parse_from_str(text, "%Y-%m-%dT%H:%M:%S%.f")
                .ok()
                .map(|t| t.and_utc())
        })
}

fn time_of(element: Option<&Element>) -> Option<DateTime<Utc>> {
    element.and_then(|e| parse_xml_time(e.text()))
}

/// A reference parameter as a SOAP header block (WS-Addressing SOAP Binding, 2.3).
fn reference_header(parameter: &Element) -> String {
    let mut xml = String::new();
    write_element(parameter, &mut xml, true);
    xml
}

/// Writes `element` with a namespace declaration of its own, so that it stands anywhere.
fn write_element(element: &Element, xml: &mut String, is_reference_parameter: bool) {
    use quick_xml::escape::escape;
    let name = if element.ns.is_empty() {
        element.name.clone()
    } else {
        format!("rp:{}", element.name)
    };
    xml.push('<');
    xml.push_str(&name);
    if !element.ns.is_empty() {
        xml.push_str(&format!(" xmlns:rp=\"{}\"", escape(element.ns.as_str())));
    }
    if is_reference_parameter {
        xml.push_str(&format!(" xmlns:wsa=\"{}\" wsa:IsReferenceParameter=\"true\"", ns::WSA));
    }
    for attribute in element.attributes.iter().filter(|a| a.ns.is_empty()) {
        xml.push_str(&format!(" {}=\"{}\"", attribute.name, escape(attribute.value.as_str())));
    }
    xml.push('>');
    xml.push_str(&escape(element.text.as_str()));
    for child in &element.children {
        write_element(child, xml, false);
    }
    xml.push_str(&format!("</{name}>"));
}

// ---------------------------------------------------------------------------------------------
// Notifications

/// `PropertyOperation` of a `tt:Message`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum PropertyOperation {
    /// The property's value when the subscription starts: no change, no alarm.
    Initialized,
    /// A change; also messages without a PropertyOperation (plain events).
    Changed,
    /// The property is gone.
    Deleted,
}

/// A `wsnt:NotificationMessage`.
#[derive(Debug, Clone)]
pub(super) struct Notification {
    pub(super) topic: Topic,
    pub(super) operation: PropertyOperation,
    /// The camera's own time of the event, for the log.
    pub(super) utc_time: Option<String>,
    /// `tt:Source/tt:SimpleItem`s: which video source, rule, input.
    source: Vec<(String, String)>,
    /// `tt:Data/tt:SimpleItem`s.
    pub(super) data: Vec<(String, String)>,
    /// The NotificationMessage as received.
    pub(super) raw: Vec<u8>,
}

impl Notification {
    /// Per topic and source: one camera has a motion state per video source and rule.
    pub(super) fn state_key(&self, topic: &str) -> String {
        let mut source: Vec<String> = self.source.iter().map(|(n, v)| format!("{n}={v}")).collect();
        source.sort();
        format!("{topic}|{}", source.join(","))
    }

    pub(super) fn data_item(&self, name: &str) -> Option<&str> {
        self.data.iter().find(|(n, _)| n == name).map(|(_, v)| v.as_str())
    }
}

pub(super) fn parse_notification(message: &Element, text: &str) -> Result<Notification, NotificationError> {
    let topic = message.child(ns::WSNT, "Topic").ok_or(NotificationError::NoTopic)?;
    let topic = Topic::from_message(topic);
    let Some(inner) = message.path(&[(ns::WSNT, "Message"), (ns::TT, "Message")]) else {
        return Err(NotificationError::NoMessage { topic });
    };
    let operation = match inner.attr("PropertyOperation") {
        Some("Initialized") => PropertyOperation::Initialized,
        Some("Deleted") => PropertyOperation::Deleted,
        _ => PropertyOperation::Changed,
    };
    let items = |name: &str| -> Vec<(String, String)> {
        inner
            .child(ns::TT, name)
            .map(|list| {
                list.children_named(ns::TT, "SimpleItem")
                    .filter_map(|item| Some((item.attr("Name")?.to_owned(), item.attr("Value")?.to_owned())))
                    .collect()
            })
            .unwrap_or_default()
    };
    let raw = text.get(message.span.clone()).unwrap_or_default().as_bytes().to_vec();
    Ok(Notification {
        topic,
        operation,
        utc_time: inner.attr("UtcTime").map(str::to_owned),
        source: items("Source"),
        data: items("Data"),
        raw,
    })
}

#[cfg(test)]
pub(super) mod tests {
    use chrono::TimeDelta;

    use super::super::soap::{Envelope, parse_envelope};
    use super::*;

    pub(in super::super) const PULL_RESPONSE: &str = r#"<?xml version="1.0" encoding="UTF-8"?>
<SOAP-ENV:Envelope xmlns:SOAP-ENV="http://www.w3.org/2003/05/soap-envelope"
    xmlns:wsa="http://www.w3.org/2005/08/addressing" xmlns:wsnt="http://docs.oasis-open.org/wsn/b-2"
    xmlns:tev="http://www.onvif.org/ver10/events/wsdl" xmlns:tt="http://www.onvif.org/ver10/schema"
    xmlns:tns1="http://www.onvif.org/ver10/topics">
  <SOAP-ENV:Header>
    <wsa:Action>http://www.onvif.org/ver10/events/wsdl/PullPointSubscription/PullMessagesResponse</wsa:Action>
  </SOAP-ENV:Header>
  <SOAP-ENV:Body>
    <tev:PullMessagesResponse>
      <tev:CurrentTime>2026-11-21T10:15:00Z</tev:CurrentTime>
      <tev:TerminationTime>2026-11-21T10:15:08Z</tev:TerminationTime>
      <wsnt:NotificationMessage>
        <wsnt:Topic Dialect="http://www.onvif.org/ver10/tev/topicExpression/ConcreteSet">tns1:RuleEngine/CellMotionDetector/Motion</wsnt:Topic>
        <wsnt:Message>
          <tt:Message UtcTime="2026-11-21T10:14:58Z" PropertyOperation="Initialized">
            <tt:Source>
              <tt:SimpleItem Name="VideoSourceConfigurationToken" Value="VideoSourceToken"/>
              <tt:SimpleItem Name="VideoAnalyticsConfigurationToken" Value="VideoAnalyticsToken"/>
              <tt:SimpleItem Name="Rule" Value="MyMotionDetectorRule"/>
            </tt:Source>
            <tt:Data><tt:SimpleItem Name="IsMotion" Value="false"/></tt:Data>
          </tt:Message>
        </wsnt:Message>
      </wsnt:NotificationMessage>
      <wsnt:NotificationMessage xmlns:ons="http://www.onvif.org/ver10/topics">
        <wsnt:Topic Dialect="http://www.onvif.org/ver10/tev/topicExpression/ConcreteSet">ons:RuleEngine/CellMotionDetector/Motion</wsnt:Topic>
        <wsnt:Message>
          <tt:Message UtcTime="2026-11-21T10:15:00.250Z" PropertyOperation="Changed">
            <tt:Source>
              <tt:SimpleItem Name="Rule" Value="MyMotionDetectorRule"/>
              <tt:SimpleItem Name="VideoAnalyticsConfigurationToken" Value="VideoAnalyticsToken"/>
              <tt:SimpleItem Name="VideoSourceConfigurationToken" Value="VideoSourceToken"/>
            </tt:Source>
            <tt:Data><tt:SimpleItem Name="IsMotion" Value="true"/></tt:Data>
          </tt:Message>
        </wsnt:Message>
      </wsnt:NotificationMessage>
      <wsnt:NotificationMessage>
        <wsnt:Topic Dialect="http://www.onvif.org/ver10/tev/topicExpression/ConcreteSet">tns1:Device/Trigger/DigitalInput</wsnt:Topic>
        <wsnt:Message>
          <tt:Message UtcTime="2026-11-21T10:15:00Z" PropertyOperation="Changed">
            <tt:Source><tt:SimpleItem Name="InputToken" Value="DI_0"/></tt:Source>
            <tt:Data><tt:SimpleItem Name="LogicalState" Value="true"/></tt:Data>
          </tt:Message>
        </wsnt:Message>
      </wsnt:NotificationMessage>
    </tev:PullMessagesResponse>
  </SOAP-ENV:Body>
</SOAP-ENV:Envelope>"#;

    /// The element in a reply's SOAP Body.
    pub(in super::super) fn body_of(text: &str) -> Element {
        match parse_envelope(text) {
            Ok(Envelope::Body(Some(payload))) => payload,
            Ok(Envelope::Body(None)) => panic!("empty body"),
            Ok(Envelope::Fault(f)) => panic!("fault {f:?}"),
            Err(e) => panic!("{e}"),
        }
    }

    #[test]
    fn a_pull_response_gives_its_notifications_whatever_the_topic_prefix() {
        let payload = body_of(PULL_RESPONSE);
        let pulled = parse_pull(&payload, PULL_RESPONSE).expect("pull response");
        assert!(pulled.skipped.is_empty(), "{:?}", pulled.skipped);
        assert_eq!(
            pulled.termination.map(|t| t - pulled.current.unwrap_or_default()),
            Some(TimeDelta::seconds(8))
        );
        let [initialized, changed, input] = pulled.notifications.as_slice() else {
            panic!("{:?}", pulled.notifications);
        };
        assert_eq!(initialized.operation, PropertyOperation::Initialized);
        assert_eq!(changed.operation, PropertyOperation::Changed);
        assert_eq!(
            initialized.topic.to_string(),
            "tns1:RuleEngine/CellMotionDetector/Motion"
        );
        assert_eq!(changed.topic.to_string(), "tns1:RuleEngine/CellMotionDetector/Motion");
        assert_eq!(changed.utc_time.as_deref(), Some("2026-11-21T10:15:00.250Z"));
        assert_eq!(changed.data_item("IsMotion"), Some("true"));
        // The same source, listed in another order.
        assert_eq!(initialized.state_key("t"), changed.state_key("t"));
        let raw = String::from_utf8(changed.raw.clone()).expect("utf-8");
        assert!(raw.starts_with("<wsnt:NotificationMessage xmlns:ons="), "{raw}");
        assert!(raw.ends_with("</wsnt:NotificationMessage>"), "{raw}");
        assert!(raw.contains(r#"Name="IsMotion" Value="true""#), "{raw}");
        assert_eq!(input.topic.to_string(), "tns1:Device/Trigger/DigitalInput");
    }

    #[test]
    fn device_replies_give_the_clock_the_event_service_and_the_subscription() {
        let clock = r#"<s:Envelope xmlns:s="http://www.w3.org/2003/05/soap-envelope"
            xmlns:tds="http://www.onvif.org/ver10/device/wsdl" xmlns:tt="http://www.onvif.org/ver10/schema"><s:Body>
            <tds:GetSystemDateAndTimeResponse><tds:SystemDateAndTime>
              <tt:DateTimeType>NTP</tt:DateTimeType><tt:DaylightSavings>false</tt:DaylightSavings>
              <tt:UTCDateTime><tt:Time><tt:Hour>11</tt:Hour><tt:Minute>15</tt:Minute><tt:Second>7</tt:Second></tt:Time>
                <tt:Date><tt:Year>2026</tt:Year><tt:Month>11</tt:Month><tt:Day>21</tt:Day></tt:Date></tt:UTCDateTime>
            </tds:SystemDateAndTime></tds:GetSystemDateAndTimeResponse></s:Body></s:Envelope>"#;
        assert_eq!(
            parse_system_date_and_time(&body_of(clock)).ok(),
            parse_xml_time("2026-11-21T11:15:07Z")
        );
        let capabilities = r#"<s:Envelope xmlns:s="http://www.w3.org/2003/05/soap-envelope"
            xmlns:tds="http://www.onvif.org/ver10/device/wsdl" xmlns:tt="http://www.onvif.org/ver10/schema"><s:Body>
            <tds:GetCapabilitiesResponse><tds:Capabilities><tt:Events>
              <tt:XAddr>http://10.0.0.5/onvif/Events</tt:XAddr><tt:WSPullPointSupport>true</tt:WSPullPointSupport>
            </tt:Events></tds:Capabilities></tds:GetCapabilitiesResponse></s:Body></s:Envelope>"#;
        assert_eq!(
            parse_capabilities(&body_of(capabilities)).ok().as_deref(),
            Some("http://10.0.0.5/onvif/Events")
        );
        let services = r#"<s:Envelope xmlns:s="http://www.w3.org/2003/05/soap-envelope"
            xmlns:tds="http://www.onvif.org/ver10/device/wsdl"><s:Body><tds:GetServicesResponse>
            <tds:Service><tds:Namespace>http://www.onvif.org/ver10/device/wsdl</tds:Namespace>
              <tds:XAddr>http://10.0.0.5/onvif/device_service</tds:XAddr></tds:Service>
            <tds:Service><tds:Namespace>http://www.onvif.org/ver10/events/wsdl</tds:Namespace>
              <tds:XAddr>http://10.0.0.5/onvif/event_service</tds:XAddr></tds:Service>
            </tds:GetServicesResponse></s:Body></s:Envelope>"#;
        assert_eq!(
            parse_services(&body_of(services)).ok().as_deref(),
            Some("http://10.0.0.5/onvif/event_service")
        );
        let subscription = r#"<SOAP-ENV:Envelope xmlns:SOAP-ENV="http://www.w3.org/2003/05/soap-envelope"
            xmlns:wsa="http://www.w3.org/2005/08/addressing" xmlns:wsnt="http://docs.oasis-open.org/wsn/b-2"
            xmlns:tet="http://www.onvif.org/ver10/events/wsdl"><SOAP-ENV:Body>
            <tet:CreatePullPointSubscriptionResponse><tet:SubscriptionReference>
              <wsa:Address>http://160.10.64.10/Subscription?Idx=0</wsa:Address>
              <wsa:ReferenceParameters><dom0:SubscriptionId xmlns:dom0="http://www.axis.com/2009/event">7</dom0:SubscriptionId></wsa:ReferenceParameters>
            </tet:SubscriptionReference>
            <wsnt:CurrentTime>2008-10-09T13:52:59</wsnt:CurrentTime>
            <wsnt:TerminationTime>2008-10-09T13:53:59</wsnt:TerminationTime>
            </tet:CreatePullPointSubscriptionResponse></SOAP-ENV:Body></SOAP-ENV:Envelope>"#;
        let created = parse_subscription(&body_of(subscription)).expect("subscription");
        assert_eq!(created.address, "http://160.10.64.10/Subscription?Idx=0");
        assert_eq!(
            created.reference_headers,
            r#"<rp:SubscriptionId xmlns:rp="http://www.axis.com/2009/event" xmlns:wsa="http://www.w3.org/2005/08/addressing" wsa:IsReferenceParameter="true">7</rp:SubscriptionId>"#
        );
        // Times without a zone are UTC, as the camera means them.
        assert_eq!(created.current, parse_xml_time("2008-10-09T13:52:59Z"));
        assert_eq!(created.termination, parse_xml_time("2008-10-09T13:53:59Z"));
    }
}
