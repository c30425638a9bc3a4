//! Identity tests: SAN round trips and strictness, certificates issued and read back, and
//! in-memory rustls handshakes for the hub, branch-peer and enrollment configs.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;

use rcgen::{CertifiedIssuer, KeyPair};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use rustls::{ClientConfig, ClientConnection, ServerConfig, ServerConnection};

use super::*;

/// Certificates start "now": rustls checks them against the real clock in these handshakes.
fn now() -> i64 {
    let since = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH);
    i64::try_from(since.unwrap().as_secs()).unwrap()
}

fn ids(n: u32) -> (ChainId, BranchId, DeviceId) {
    (
        ChainId::parse(&uuid_text(0x1000 + n)).unwrap(),
        BranchId::parse(&uuid_text(0x2000 + n)).unwrap(),
        DeviceId::parse(&uuid_text(0x3000 + n)).unwrap(),
    )
}

fn uuid_text(n: u32) -> String {
    format!("00000000-0000-0000-0000-{n:012x}")
}

struct Ca {
    issuer: CertifiedIssuer<'static, KeyPair>,
}

impl Ca {
    fn new(params: rcgen::CertificateParams) -> Self {
        Self {
            issuer: CertifiedIssuer::self_signed(params, KeyPair::generate().unwrap()).unwrap(),
        }
    }

    fn der(&self) -> CertificateDer<'static> {
        self.issuer.der().clone()
    }

    fn device(&self, identity: PeerIdentity, now: i64) -> DeviceCredentials {
        let key = KeyPair::generate().unwrap();
        let cert = device_cert_params(&identity, &[1, 2, 3], now)
            .unwrap()
            .signed_by(&key, &self.issuer)
            .unwrap();
        DeviceCredentials::from_pem(
            &cert.pem(),
            &key.serialize_pem(),
            &self.issuer.pem(),
            &self.issuer.pem(),
        )
        .unwrap()
    }
}

/// Runs a TLS handshake in memory; Ok when both sides finish.
fn handshake(client: ClientConfig, server: ServerConfig) -> Result<(), rustls::Error> {
    let name = ServerName::try_from(HUB_SERVER_NAME).unwrap();
    let mut client = ClientConnection::new(Arc::new(client), name)?;
    let mut server = ServerConnection::new(Arc::new(server))?;
    for _ in 0..10 {
        let mut buf = Vec::new();
        client.write_tls(&mut buf).unwrap();
        server.read_tls(&mut buf.as_slice()).unwrap();
        server.process_new_packets()?;
        let mut buf = Vec::new();
        server.write_tls(&mut buf).unwrap();
        client.read_tls(&mut buf.as_slice()).unwrap();
        client.process_new_packets()?;
        if !client.is_handshaking() && !server.is_handshaking() {
            let mut buf = Vec::new();
            client.write_tls(&mut buf).unwrap();
            server.read_tls(&mut buf.as_slice()).unwrap();
            server.process_new_packets()?;
            return Ok(());
        }
    }
    panic!("handshake did not finish");
}

fn hub(platform: &Ca) -> (Vec<CertificateDer<'static>>, PrivateKeyDer<'static>) {
    let key = KeyPair::generate().unwrap();
    let cert = hub_server_params(now())
        .unwrap()
        .signed_by(&key, &platform.issuer)
        .unwrap();
    (
        vec![cert.der().clone(), platform.der()],
        key_from_pem(&key.serialize_pem()).unwrap(),
    )
}

#[test]
fn san_round_trips_and_is_strict() {
    let (chain, branch, device) = ids(1);
    let identity = PeerIdentity::device(chain, branch, device);
    let san = identity.san();
    assert_eq!(
        san,
        "cartwise:chain/00000000-0000-0000-0000-000000001001/branch/\
         00000000-0000-0000-0000-000000002001/device/00000000-0000-0000-0000-000000003001"
    );
    assert_eq!(PeerIdentity::from_san(&san).unwrap(), identity);
    for bad in [
        san.to_uppercase(),
        san.replace("cartwise:", "cartwise://"),
        format!("{san}/extra"),
        san.replace("/device/", "/hub/"),
        san.replace("branch/", "brunch/"),
        "cartwise:".to_owned(),
    ] {
        assert!(PeerIdentity::from_san(&bad).is_err(), "{bad}");
    }
    let nil = san.replace(
        "00000000-0000-0000-0000-000000003001",
        "00000000-0000-0000-0000-000000000000",
    );
    assert!(matches!(
        PeerIdentity::from_san(&nil),
        Err(IdentityError::BadId(_))
    ));
}

#[test]
fn device_certificate_names_its_identity_and_life() {
    let (chain, branch, device) = ids(2);
    let ca = Ca::new(chain_ca_params(chain, now()).unwrap());
    let identity = PeerIdentity::device(chain, branch, device);
    let start = now();
    let credentials = ca.device(identity, start);
    assert_eq!(
        PeerIdentity::from_cert_der(&credentials.cert).unwrap(),
        identity
    );
    let info = inspect_certificate(&credentials.cert).unwrap();
    assert_eq!(info.serial_hex, "010203");
    assert_eq!(info.not_after_unix - start, DEVICE_CERT_VALIDITY_SECS);
    assert!(!info.renewal_due(start + 59 * 24 * 3600));
    assert!(info.renewal_due(start + 61 * 24 * 3600));
    // A CA certificate names no identity.
    assert_eq!(
        PeerIdentity::from_cert_der(&ca.der()),
        Err(IdentityError::NoIdentity)
    );
}

#[test]
fn fingerprints_parse_with_or_without_colons() {
    let hex = sha256_hex(b"x");
    let bytes = parse_sha256_fingerprint(&hex).unwrap();
    assert_eq!(to_hex(&bytes), hex);
    let colons: Vec<String> = bytes.iter().map(|b| format!("{b:02X}")).collect();
    assert_eq!(parse_sha256_fingerprint(&colons.join(":")).unwrap(), bytes);
    assert!(parse_sha256_fingerprint("abc").is_err());
    assert!(parse_sha256_fingerprint(&"zz".repeat(32)).is_err());
}

#[test]
fn hub_accepts_a_device_of_a_known_chain_and_refuses_a_forged_chain() {
    let platform = Ca::new(platform_ca_params(now()).unwrap());
    let (chain_a, branch_a, device_a) = ids(3);
    let (chain_b, branch_b, device_b) = ids(4);
    let ca_a = Ca::new(chain_ca_params(chain_a, now()).unwrap());
    let ca_b = Ca::new(chain_ca_params(chain_b, now()).unwrap());
    let registry = Arc::new(ChainCaRegistry::new());
    registry.insert(chain_a, ca_a.der()).unwrap();
    registry.insert(chain_b, ca_b.der()).unwrap();
    let (hub_chain, hub_key) = hub(&platform);
    let server =
        || hub_server_config(hub_chain.clone(), hub_key.clone_key(), registry.clone()).unwrap();

    let mut good = ca_a.device(PeerIdentity::device(chain_a, branch_a, device_a), now());
    good.platform_ca = platform.der();
    handshake(device_client_config(&good, ALPN_SYNC).unwrap(), server()).unwrap();

    // Chain A's CA signs a certificate claiming chain B: refused.
    let mut forged = ca_a.device(PeerIdentity::device(chain_b, branch_b, device_b), now());
    forged.platform_ca = platform.der();
    let error = handshake(device_client_config(&forged, ALPN_SYNC).unwrap(), server());
    assert!(error.is_err(), "{error:?}");

    // Enrollment: no client certificate, CA pinned by fingerprint.
    let pin: [u8; 32] = parse_sha256_fingerprint(&sha256_hex(&platform.der())).unwrap();
    handshake(enroll_client_config(pin).unwrap(), server()).unwrap();
    let wrong = parse_sha256_fingerprint(&sha256_hex(&ca_a.der())).unwrap();
    let error = handshake(enroll_client_config(wrong).unwrap(), server()).unwrap_err();
    assert!(format!("{error:?}").contains("PinMismatch"), "{error:?}");
}

#[test]
fn branch_peers_accept_their_branch_only() {
    let (chain, branch, device_1) = ids(5);
    let (_, other_branch, device_2) = ids(6);
    let (other_chain, _, device_3) = ids(7);
    let ca = Ca::new(chain_ca_params(chain, now()).unwrap());
    let other_ca = Ca::new(chain_ca_params(other_chain, now()).unwrap());
    let me = ca.device(PeerIdentity::device(chain, branch, device_1), now());
    let peer = ca.device(PeerIdentity::device(chain, branch, device_2), now());
    let other_branch_peer = ca.device(PeerIdentity::device(chain, other_branch, device_2), now());
    // A valid certificate of another chain, even claiming this chain and branch.
    let foreign = other_ca.device(PeerIdentity::device(chain, branch, device_3), now());

    let server = || branch_peer_server_config(&me);
    handshake(branch_peer_client_config(&peer).unwrap(), server().unwrap()).unwrap();
    assert!(
        handshake(
            branch_peer_client_config(&other_branch_peer).unwrap(),
            server().unwrap()
        )
        .is_err()
    );
    let mut foreign_client = foreign.clone();
    foreign_client.chain_ca = ca.der(); // it even trusts us
    assert!(
        handshake(
            branch_peer_client_config(&foreign_client).unwrap(),
            server().unwrap()
        )
        .is_err()
    );
    // And as a server, the foreign device is refused by our client.
    let foreign_server = branch_peer_server_config(&foreign).unwrap();
    assert!(handshake(branch_peer_client_config(&me).unwrap(), foreign_server).is_err());
}

#[test]
fn a_clock_behind_the_certificate_start_still_verifies() {
    // Certificates issued by a hub whose clock says 2100: this machine's clock is far behind,
    // as a Pi's is after an offline reboot. Each side raises "now" to its own certificate's
    // start, so branch peers still accept each other.
    let future = 4_102_444_800;
    let (chain, branch, device_1) = ids(8);
    let (_, _, device_2) = ids(9);
    let ca = Ca::new(chain_ca_params(chain, future).unwrap());
    let me = ca.device(PeerIdentity::device(chain, branch, device_1), future);
    let peer = ca.device(PeerIdentity::device(chain, branch, device_2), future);
    handshake(
        branch_peer_client_config(&peer).unwrap(),
        branch_peer_server_config(&me).unwrap(),
    )
    .unwrap();
}

#[test]
fn enrollment_messages_and_urls_round_trip() {
    let (chain, branch, device) = ids(10);
    let response = EnrollResponse::Granted(Granted {
        cert_chain_pem: "a".into(),
        platform_ca_pem: "b".into(),
        chain_id: chain,
        branch_id: branch,
        device_id: device,
    });
    let frame = encode_enroll_frame(&response).unwrap();
    let len = enroll_frame_len(frame[..4].try_into().unwrap()).unwrap();
    assert_eq!(len, frame.len() - 4);
    let back: EnrollResponse = decode_enroll_payload(&frame[4..]).unwrap();
    assert_eq!(back, response);
    assert!(enroll_frame_len(u32::MAX.to_be_bytes()).is_err());
    let big = EnrollRequest {
        code: String::new(),
        csr_pem: "x".repeat(ENROLL_FRAME_LEN_MAX),
    };
    assert!(encode_enroll_frame(&big).is_err());
    assert!(decode_enroll_payload::<EnrollRequest>(&[0xc1]).is_err());

    let url = EnrollUrl {
        hub: "hub.example.com:4433".into(),
        code: "K7Q2-9XWM".into(),
        ca_sha256: [0xab; 32],
    };
    let text = url.to_string();
    assert_eq!(text.parse::<EnrollUrl>().unwrap(), url);
    for bad in [
        "https://hub:1?code=a&ca=ab",
        "cartwise-enroll://hub:1?code=a",
        "cartwise-enroll://hub?code=a&ca=abab",
    ] {
        assert!(bad.parse::<EnrollUrl>().is_err(), "{bad}");
    }
}

#[test]
fn a_pi_admits_its_chains_technicians_at_the_handshake_whatever_their_branch_or_window() {
    let (chain, branch, device) = ids(8);
    let (_, other_branch, tech) = ids(9);
    let (other_chain, _, _) = ids(10);
    let ca = Ca::new(chain_ca_params(chain, now()).unwrap());
    let other_ca = Ca::new(chain_ca_params(other_chain, now()).unwrap());
    let me = ca.device(PeerIdentity::device(chain, branch, device), now());
    let technician = |ca: &Ca, chain, branch, issued: i64| {
        let identity = PeerIdentity {
            role: Role::Technician,
            chain,
            branch,
            device: tech,
        };
        let key = KeyPair::generate().unwrap();
        let cert = technician_cert_params(&identity, &[4, 5, 6], issued, 1)
            .unwrap()
            .signed_by(&key, &ca.issuer)
            .unwrap();
        let mut client = me.clone();
        client.identity = identity;
        client.cert = cert.der().clone();
        client.key = key_from_pem(&key.serialize_pem()).unwrap();
        client
    };
    let server = || branch_peer_server_config(&me).unwrap();
    // A laptop presenting `tech` that checks the Pi as a peer of the Pi's own branch.
    let laptop = |tech: &DeviceCredentials| {
        let mut presenting = tech.clone();
        presenting.identity = me.identity;
        presenting.chain_ca = ca.der();
        branch_peer_client_config(&presenting).unwrap()
    };
    // Another branch and long expired: admitted here, refused by the application with why.
    let expired = technician(&ca, chain, other_branch, now() - 10 * 86_400);
    handshake(laptop(&expired), server()).unwrap();
    // A technician certificate of another chain's CA is refused at the handshake.
    let foreign = technician(&other_ca, chain, branch, now());
    assert!(handshake(laptop(&foreign), server()).is_err());
    // A technician certificate naming another chain is admitted unverified, so the
    // application can refuse it with why and record it; the credential check refuses it.
    let other_chains = technician(&other_ca, other_chain, branch, now());
    handshake(laptop(&other_chains), server()).unwrap();
    assert_eq!(
        crate::technician::verify_credential(
            other_chains.cert.as_ref(),
            ca.der().as_ref(),
            branch,
            now() * 1000
        ),
        Err(crate::technician::CredentialError::WrongChain)
    );
    // A device of another branch is still refused.
    let other_device = ca.device(PeerIdentity::device(chain, other_branch, tech), now());
    assert!(handshake(laptop(&other_device), server()).is_err());
}
