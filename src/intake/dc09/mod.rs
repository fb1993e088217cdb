//! SIA DC-09 (SIA over IP): alarm panels report here as to a receiving centre ([`receiver`]), and
//! the frame codec ([`frame`]) that the ARC transmitter (`delivery::arc`) shares.

pub mod frame;
pub mod receiver;

use std::net::SocketAddr;
use std::sync::Arc;

use tokio_util::sync::CancellationToken;

use crate::config::{Config, ConfigError};
use crate::intake::AlarmSink;
use crate::service::ServiceError;
use crate::store::Store;

/// Resolves the panels' keys, binds `address` over TCP and UDP and returns the receiver's task.
pub async fn start(
    config: &Config,
    address: SocketAddr,
    sink: Arc<dyn AlarmSink>,
    store: Arc<Store>,
    stop: CancellationToken,
) -> Result<impl std::future::Future<Output = ()> + Send + 'static, ServiceError> {
    let mut keys = Vec::new();
    for (i, panel) in config.dc09.panels.iter().enumerate() {
        let key = match panel.resolve_key(i)? {
            Some(secret) => Some(
                frame::Key::from_hex(secret.expose()).map_err(|expected| ConfigError::Invalid {
                    path: "environment".into(),
                    key: format!("dc09.panel[{i}].key_env"),
                    expected,
                })?,
            ),
            None => None,
        };
        keys.push(key);
    }
    let listen = |source| ServiceError::Listen {
        key: "dc09.listen",
        address,
        source,
    };
    let tcp = tokio::net::TcpListener::bind(address).await.map_err(listen)?;
    let udp = tokio::net::UdpSocket::bind(address).await.map_err(listen)?;
    tracing::info!(key = "dc09.listen", %address, "listening (TCP and UDP)");
    let receiver = receiver::Receiver::new(&config.dc09, keys, &config.cameras, sink, store);
    Ok(receiver.serve(tcp, udp, stop))
}
