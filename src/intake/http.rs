//! HTTP webhooks: `POST /api/alarms/{camera}`.
