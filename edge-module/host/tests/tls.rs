//! Delivery over TLS: an aggregator behind a TLS endpoint with a private CA, trusted with
//! `--aggregator-ca-cert`; without it the edge refuses the certificate and delivers nothing.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tempfile::TempDir;
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::TlsAcceptor;
use tokio_rustls::rustls::ServerConfig;
use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};

use crate::support::{aggregator, count, create_resources, edge, edge_config, send_hits};

/// A TLS endpoint for `target` with a fresh self-signed certificate for localhost; returns its
/// address and the certificate (the CA to trust) as PEM.
async fn tls_front(target: SocketAddr) -> (SocketAddr, String) {
    let certified = rcgen::generate_simple_self_signed(vec!["localhost".to_owned()]).unwrap();
    let pem = certified.cert.pem();
    let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(
        certified.signing_key.serialize_der(),
    ));
    let config = ServerConfig::builder_with_provider(Arc::new(
        tokio_rustls::rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_no_client_auth()
    .with_single_cert(
        vec![CertificateDer::from(certified.cert.der().to_vec())],
        key,
    )
    .unwrap();
    let acceptor = TlsAcceptor::from(Arc::new(config));
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((client, _)) = listener.accept().await {
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                let Ok(mut tls) = acceptor.accept(client).await else {
                    return;
                };
                let Ok(mut upstream) = TcpStream::connect(target).await else {
                    return;
                };
                let _ = tokio::io::copy_bidirectional(&mut tls, &mut upstream).await;
            });
        }
    });
    (address, pem)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deltas_travel_over_tls_to_a_trusted_aggregator_only() {
    let directory = TempDir::new().unwrap();
    let aggregator = aggregator(&directory, None).await;
    create_resources(&aggregator, 10).await;
    let (front, ca) = tls_front(aggregator.address).await;
    let url = format!("https://localhost:{}", front.port());

    let mut trusted = edge_config(&url);
    trusted.aggregator_ca_cert = Some(ca.into_bytes());
    // The read-your-writes token travels over TLS too.
    let trusting = edge(trusted).await;
    send_hits(&trusting, 2_000, 10, 500, 4).await;
    trusting.stop().await;
    for resource in 0..10 {
        assert_eq!(count(&aggregator, &format!("r{resource}")).await.0, 200);
    }

    // Without the CA the certificate is not trusted: nothing is delivered (and nothing lost:
    // the edge keeps retrying until its shutdown limit, then says so).
    let untrusting = edge(edge_config(&url)).await;
    send_hits(&untrusting, 100, 10, 50, 2).await;
    // Trusted, these would arrive within a few 200 ms windows.
    tokio::time::sleep(Duration::from_millis(1_500)).await;
    assert_eq!(
        count(&aggregator, "r0").await.0,
        200,
        "delivered to an untrusted endpoint"
    );
    untrusting.stop().await;
    aggregator.stop().await;
}
