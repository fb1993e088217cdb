//! MQTT alarms on `{prefix}/alarms/{camera}`.
