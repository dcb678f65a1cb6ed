//! The certificates of gateway-to-worker TLS (feature `pki`): a CA, serving
//! certificates it issues, and the checks that say when one must be issued
//! again.
//!
//! Why here: the operator issues every worker's serving certificate, and the
//! tests that prove the gateway refuses an impostor need certificates made
//! the same way (another CA, another name). Keys are ECDSA P-256 (rcgen on
//! ring); a CA brought by the user (a hospital's PKI, cert-manager) may hold
//! any key ring can sign with, in PKCS #8 PEM.
//!
//! A serving certificate is renewed ([`renewal`]) when less than a third of
//! its lifetime is left, when it was not signed by the current CA, when its
//! names differ from the wanted ones, or when it cannot be read at all.

use std::time::{Duration, SystemTime};

use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose, SerialNumber,
};
use x509_parser::extensions::GeneralName;
use x509_parser::pem::Pem;

/// Lifetime of a generated CA: ten years.
pub const CA_VALIDITY: Duration = Duration::from_secs(10 * 365 * 24 * 3600);
/// Lifetime of a worker's serving certificate: 90 days.
pub const SERVING_VALIDITY: Duration = Duration::from_secs(90 * 24 * 3600);
/// How far before `notBefore` "now" is backdated, for clocks that differ a
/// little between nodes.
const BACKDATE: Duration = Duration::from_secs(5 * 60);

/// Why a certificate could not be made or read.
#[derive(Debug, thiserror::Error)]
pub enum PkiError {
    /// rcgen refused (a key it cannot sign with, a bad name).
    #[error("certificate generation: {0}")]
    Generate(#[from] rcgen::Error),
    /// Not a PEM X.509 certificate.
    #[error("not a readable certificate: {0}")]
    Parse(String),
    /// The CA's key is not the key of the CA's certificate.
    #[error("the CA's private key does not belong to its certificate")]
    KeyMismatch,
}

/// A certificate and its private key, in PEM. `Debug` shows neither the key
/// nor the certificate.
#[derive(Clone, PartialEq, Eq)]
pub struct KeyedCert {
    /// The certificate (PEM).
    pub cert_pem: String,
    /// The private key (PKCS #8 PEM).
    pub key_pem: String,
}

impl std::fmt::Debug for KeyedCert {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KeyedCert")
            .field("cert_bytes", &self.cert_pem.len())
            .finish_non_exhaustive()
    }
}

/// A random positive 128-bit serial number.
fn serial() -> SerialNumber {
    let mut b = uuid::Uuid::new_v4().into_bytes();
    b[0] &= 0x7f;
    SerialNumber::from_slice(&b)
}

fn window(params: &mut CertificateParams, now: SystemTime, validity: Duration) {
    params.not_before = (now - BACKDATE).into();
    params.not_after = (now + validity).into();
}

/// A new self-signed CA with an ECDSA P-256 key, valid from `now` for
/// `validity`.
pub fn new_ca(
    common_name: &str,
    now: SystemTime,
    validity: Duration,
) -> Result<KeyedCert, PkiError> {
    let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)?;
    let mut params = CertificateParams::new(Vec::<String>::new())?;
    params
        .distinguished_name
        .push(DnType::CommonName, common_name);
    params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    params.serial_number = Some(serial());
    window(&mut params, now, validity);
    let cert = params.self_signed(&key)?;
    Ok(KeyedCert {
        cert_pem: cert.pem(),
        key_pem: key.serialize_pem(),
    })
}

/// A serving certificate for `names` (DNS names or IP addresses; the first
/// is also its common name), ECDSA P-256, signed by `ca`, valid from `now`
/// for `validity`.
pub fn issue(
    ca: &KeyedCert,
    names: &[String],
    now: SystemTime,
    validity: Duration,
) -> Result<KeyedCert, PkiError> {
    let ca_key = KeyPair::from_pem(&ca.key_pem)?;
    check_key(&ca.cert_pem, &ca_key)?;
    let issuer = Issuer::from_ca_cert_pem(&ca.cert_pem, ca_key)?;
    let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)?;
    let mut params = CertificateParams::new(names.to_vec())?;
    if let Some(first) = names.first() {
        params.distinguished_name.push(DnType::CommonName, first);
    }
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    params.use_authority_key_identifier_extension = true;
    params.serial_number = Some(serial());
    window(&mut params, now, validity);
    let cert = params.signed_by(&key, &issuer)?;
    Ok(KeyedCert {
        cert_pem: cert.pem(),
        key_pem: key.serialize_pem(),
    })
}

/// Checks that a CA brought by the user is usable: its certificate reads,
/// its key reads, and the key is the certificate's.
pub fn check_ca(ca: &KeyedCert) -> Result<(), PkiError> {
    let key = KeyPair::from_pem(&ca.key_pem)?;
    check_key(&ca.cert_pem, &key)
}

fn check_key(cert_pem: &str, key: &KeyPair) -> Result<(), PkiError> {
    let pem = first_pem(cert_pem)?;
    let cert = pem
        .parse_x509()
        .map_err(|e| PkiError::Parse(e.to_string()))?;
    if cert.public_key().subject_public_key.data.as_ref() != key.public_key_raw() {
        return Err(PkiError::KeyMismatch);
    }
    Ok(())
}

fn first_pem(pem: &str) -> Result<Pem, PkiError> {
    Pem::iter_from_buffer(pem.as_bytes())
        .next()
        .ok_or_else(|| PkiError::Parse("no PEM block".into()))?
        .map_err(|e| PkiError::Parse(e.to_string()))
}

/// What a certificate says about itself.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertInfo {
    /// Start of validity.
    pub not_before: SystemTime,
    /// End of validity.
    pub not_after: SystemTime,
    /// Its DNS names and IP addresses (subject alternative names), sorted.
    pub names: Vec<String>,
}

impl CertInfo {
    /// When it should be renewed: once two thirds of its lifetime are gone.
    pub fn renew_at(&self) -> SystemTime {
        let life = self
            .not_after
            .duration_since(self.not_before)
            .unwrap_or_default();
        self.not_after - life / 3
    }
}

fn time_of(t: x509_parser::time::ASN1Time) -> SystemTime {
    let secs = t.timestamp();
    if secs >= 0 {
        SystemTime::UNIX_EPOCH + Duration::from_secs(secs as u64)
    } else {
        SystemTime::UNIX_EPOCH
    }
}

/// Reads the first certificate of a PEM text.
pub fn inspect(cert_pem: &str) -> Result<CertInfo, PkiError> {
    let pem = first_pem(cert_pem)?;
    let cert = pem
        .parse_x509()
        .map_err(|e| PkiError::Parse(e.to_string()))?;
    let mut names = Vec::new();
    if let Ok(Some(san)) = cert.subject_alternative_name() {
        for n in &san.value.general_names {
            match n {
                GeneralName::DNSName(d) => names.push(d.to_string()),
                GeneralName::IPAddress(b) => match b.len() {
                    4 => names.push(
                        std::net::Ipv4Addr::from(<[u8; 4]>::try_from(*b).unwrap_or_default())
                            .to_string(),
                    ),
                    16 => names.push(
                        std::net::Ipv6Addr::from(<[u8; 16]>::try_from(*b).unwrap_or_default())
                            .to_string(),
                    ),
                    _ => {}
                },
                _ => {}
            }
        }
    }
    names.sort();
    Ok(CertInfo {
        not_before: time_of(cert.validity().not_before),
        not_after: time_of(cert.validity().not_after),
        names,
    })
}

/// Whether the certificate `cert_pem` carries a valid signature by the CA
/// certificate `ca_pem`.
pub fn signed_by(cert_pem: &str, ca_pem: &str) -> bool {
    let (Ok(c), Ok(a)) = (first_pem(cert_pem), first_pem(ca_pem)) else {
        return false;
    };
    let (Ok(cert), Ok(ca)) = (c.parse_x509(), a.parse_x509()) else {
        return false;
    };
    cert.issuer() == ca.subject() && cert.verify_signature(Some(ca.public_key())).is_ok()
}

/// Why a serving certificate must be issued again, if it must.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Renewal {
    /// None exists, or it cannot be read.
    Missing,
    /// Less than a third of its lifetime is left (or it has expired).
    Expiring,
    /// It was not signed by the current CA.
    CaChanged,
    /// Its names are not the wanted ones.
    NamesDiffer,
}

impl Renewal {
    /// The reason's name, for logs and events.
    pub fn as_str(self) -> &'static str {
        match self {
            Renewal::Missing => "missing",
            Renewal::Expiring => "expiring",
            Renewal::CaChanged => "CA changed",
            Renewal::NamesDiffer => "names differ",
        }
    }
}

/// Whether the serving certificate `cert_pem` (if any) must be issued again
/// for `names` under the CA certificate `ca_pem` at `now`.
pub fn renewal(
    cert_pem: Option<&str>,
    ca_pem: &str,
    names: &[String],
    now: SystemTime,
) -> Option<Renewal> {
    let Some(info) = cert_pem.and_then(|c| inspect(c).ok()) else {
        return Some(Renewal::Missing);
    };
    let cert_pem = cert_pem.unwrap_or_default();
    let mut wanted = names.to_vec();
    wanted.sort();
    if !signed_by(cert_pem, ca_pem) {
        Some(Renewal::CaChanged)
    } else if info.names != wanted {
        Some(Renewal::NamesDiffer)
    } else if now >= info.renew_at() {
        Some(Renewal::Expiring)
    } else {
        None
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    const DAY: Duration = Duration::from_secs(24 * 3600);

    fn names() -> Vec<String> {
        vec![
            "blue-worker.ns.svc".to_string(),
            "blue-worker.ns.svc.cluster.local".to_string(),
        ]
    }

    #[test]
    fn issued_certificates_carry_the_names_validity_and_signature() {
        let now = SystemTime::now();
        let ca = new_ca("medembed worker CA", now, CA_VALIDITY).unwrap();
        check_ca(&ca).unwrap();
        let ca_info = inspect(&ca.cert_pem).unwrap();
        assert!(ca_info.not_after >= now + CA_VALIDITY - DAY);
        let leaf = issue(&ca, &names(), now, SERVING_VALIDITY).unwrap();
        let info = inspect(&leaf.cert_pem).unwrap();
        assert_eq!(info.names, names());
        let life = info.not_after.duration_since(info.not_before).unwrap();
        assert!(life >= SERVING_VALIDITY && life <= SERVING_VALIDITY + DAY);
        assert!(signed_by(&leaf.cert_pem, &ca.cert_pem));
        assert!(!signed_by(&leaf.cert_pem, &leaf.cert_pem));
        // Another CA did not sign it.
        let other = new_ca("another CA", now, CA_VALIDITY).unwrap();
        assert!(!signed_by(&leaf.cert_pem, &other.cert_pem));
        // IP addresses are names too.
        let ip = issue(&ca, &["127.0.0.1".to_string()], now, DAY).unwrap();
        assert_eq!(inspect(&ip.cert_pem).unwrap().names, ["127.0.0.1"]);
    }

    #[test]
    fn renewal_decisions() {
        let now = SystemTime::now();
        let ca = new_ca("medembed worker CA", now, CA_VALIDITY).unwrap();
        let leaf = issue(&ca, &names(), now, SERVING_VALIDITY).unwrap();
        let r = |cert: Option<&str>, ca: &KeyedCert, names: &[String], at| {
            renewal(cert, &ca.cert_pem, names, at)
        };
        assert_eq!(r(Some(&leaf.cert_pem), &ca, &names(), now), None);
        assert_eq!(r(None, &ca, &names(), now), Some(Renewal::Missing));
        assert_eq!(r(Some("junk"), &ca, &names(), now), Some(Renewal::Missing));
        // Past two thirds of 90 days (60 days), not before.
        assert_eq!(r(Some(&leaf.cert_pem), &ca, &names(), now + 59 * DAY), None);
        assert_eq!(
            r(Some(&leaf.cert_pem), &ca, &names(), now + 61 * DAY),
            Some(Renewal::Expiring)
        );
        let other = new_ca("another CA", now, CA_VALIDITY).unwrap();
        assert_eq!(
            r(Some(&leaf.cert_pem), &other, &names(), now),
            Some(Renewal::CaChanged)
        );
        let renamed = vec!["green-worker.ns.svc".to_string()];
        assert_eq!(
            r(Some(&leaf.cert_pem), &ca, &renamed, now),
            Some(Renewal::NamesDiffer)
        );
        // The order of the names does not matter.
        let mut reversed = names();
        reversed.reverse();
        assert_eq!(r(Some(&leaf.cert_pem), &ca, &reversed, now), None);
    }

    #[test]
    fn a_ca_key_that_is_not_the_certificates_is_refused() {
        let now = SystemTime::now();
        let a = new_ca("a", now, DAY).unwrap();
        let b = new_ca("b", now, DAY).unwrap();
        let mixed = KeyedCert {
            cert_pem: a.cert_pem,
            key_pem: b.key_pem,
        };
        assert!(matches!(check_ca(&mixed), Err(PkiError::KeyMismatch)));
        assert!(issue(&mixed, &names(), now, DAY).is_err());
    }

    #[test]
    fn debug_shows_no_key() {
        let ca = new_ca("a", SystemTime::now(), DAY).unwrap();
        let d = format!("{ca:?}");
        assert!(
            !d.contains("PRIVATE") && !d.contains(&ca.key_pem[30..60]),
            "{d}"
        );
    }
}
