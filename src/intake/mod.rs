//! Intake: where alarms come from, all turned into one [`alarm::Alarm`] type.

pub mod alarm;
