//! The interception CA: `<ca_dir>/ca.key` (0600) and `<ca_dir>/ca.pem`, created on first
//! use, and leaf certificates minted from it, cached per host.
//!
//! Owns: the CA private key in memory. Must never: write the key anywhere but `ca_dir`,
//! or hand it to anything that reaches an agent. Trusts: the files in `ca_dir` (gvmd's
//! state directory, which no sandbox can see).
//!
//! The CA's distinguished name and key usages are constants, so the issuer is rebuilt
//! from the stored key alone (no X.509 parser needed): a leaf minted after a restart
//! chains to the same `ca.pem`.

use std::collections::HashMap;
use std::fs;
use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose,
};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use rustls::sign::CertifiedKey;

use crate::GatewayError;

const CA_CN: &str = "gvm interception CA";
/// Leaf certificates minted and kept; the oldest half is dropped when full.
const LEAF_CACHE_MAX: usize = 4096;

fn ca_params() -> CertificateParams {
    let mut p = CertificateParams::default();
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, CA_CN);
    dn.push(DnType::OrganizationName, "gvm");
    p.distinguished_name = dn;
    p.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    p.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign, KeyUsagePurpose::DigitalSignature];
    p.not_before = rcgen::date_time_ymd(2024, 1, 1);
    p.not_after = rcgen::date_time_ymd(2044, 1, 1);
    p
}

/// The CA and its leaf cache.
pub(crate) struct CertAuthority {
    issuer: Issuer<'static, KeyPair>,
    ca_pem: String,
    ca_der: CertificateDer<'static>,
    /// One key for every leaf: minting is then one signature, not a key generation.
    leaf_key: KeyPair,
    leaf_signing: Arc<dyn rustls::sign::SigningKey>,
    cache: Mutex<HashMap<String, Arc<CertifiedKey>>>,
}

impl std::fmt::Debug for CertAuthority {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CertAuthority").finish_non_exhaustive()
    }
}

fn io_err<'a>(path: &'a Path, what: &'static str) -> impl FnOnce(std::io::Error) -> GatewayError + 'a {
    move |source| GatewayError::Ca { path: path.to_path_buf(), what, source: Box::new(source) }
}

impl CertAuthority {
    /// Loads `ca_dir/ca.key`, or creates the directory (0700), the key (0600) and
    /// `ca.pem` when there is no key yet.
    pub(crate) fn load_or_create(ca_dir: &Path) -> Result<Self, GatewayError> {
        let key_path = ca_dir.join("ca.key");
        let pem_path = ca_dir.join("ca.pem");
        let key = if key_path.exists() {
            let meta = fs::metadata(&key_path).map_err(io_err(&key_path, "read"))?;
            if meta.permissions().mode() & 0o077 != 0 {
                return Err(GatewayError::CaKeyMode { path: key_path, mode: meta.permissions().mode() & 0o777 });
            }
            let text = fs::read_to_string(&key_path).map_err(io_err(&key_path, "read"))?;
            KeyPair::from_pem(&text)
                .map_err(|e| GatewayError::CaKey { path: key_path.clone(), reason: e.to_string() })?
        } else {
            fs::create_dir_all(ca_dir).map_err(io_err(ca_dir, "create"))?;
            fs::set_permissions(ca_dir, fs::Permissions::from_mode(0o700)).map_err(io_err(ca_dir, "chmod"))?;
            let key = KeyPair::generate()
                .map_err(|e| GatewayError::CaKey { path: key_path.clone(), reason: e.to_string() })?;
            write_new(&key_path, key.serialize_pem().as_bytes(), 0o600)?;
            key
        };
        let params = ca_params();
        // ca.pem is derived from the key; kept as written (ECDSA signatures differ on
        // every signing), recreated when missing.
        let ca_pem = match fs::read_to_string(&pem_path) {
            Ok(text) if text.contains("BEGIN CERTIFICATE") => text,
            _ => {
                let cert = params
                    .self_signed(&key)
                    .map_err(|e| GatewayError::CaKey { path: key_path.clone(), reason: e.to_string() })?;
                let tmp = PathBuf::from(format!("{}.tmp", pem_path.display()));
                let _ = fs::remove_file(&tmp);
                write_new(&tmp, cert.pem().as_bytes(), 0o644)?;
                fs::rename(&tmp, &pem_path).map_err(io_err(&pem_path, "write"))?;
                cert.pem()
            }
        };
        let ca_der = CertificateDer::from_pem_slice(ca_pem.as_bytes())
            .map_err(|e| GatewayError::CaKey { path: pem_path.clone(), reason: e.to_string() })?;
        let leaf_key =
            KeyPair::generate().map_err(|e| GatewayError::CaKey { path: key_path.clone(), reason: e.to_string() })?;
        let leaf_der = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(leaf_key.serialize_der()));
        let leaf_signing = rustls::crypto::ring::sign::any_supported_type(&leaf_der)
            .map_err(|e| GatewayError::CaKey { path: key_path.clone(), reason: e.to_string() })?;
        Ok(Self {
            issuer: Issuer::new(params, key),
            ca_pem,
            ca_der,
            leaf_key,
            leaf_signing,
            cache: Mutex::new(HashMap::new()),
        })
    }

    pub(crate) fn ca_pem(&self) -> &str {
        &self.ca_pem
    }

    /// The certificate chain and key presented to the agent for `host` (a normalised
    /// name or an IP literal), minted on first use.
    pub(crate) fn leaf(&self, host: &str) -> Result<Arc<CertifiedKey>, GatewayError> {
        if let Some(ck) = self.cache.lock().unwrap_or_else(|e| e.into_inner()).get(host) {
            return Ok(ck.clone());
        }
        let mint_err = |e: rcgen::Error| GatewayError::Mint { host: host.to_string(), reason: e.to_string() };
        let mut params = CertificateParams::new(vec![host.to_string()]).map_err(mint_err)?;
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CommonName, host);
        params.distinguished_name = dn;
        params.is_ca = IsCa::ExplicitNoCa;
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        params.use_authority_key_identifier_extension = true;
        let now = time::OffsetDateTime::now_utc();
        params.not_before = now - time::Duration::days(1);
        params.not_after = now + time::Duration::days(30);
        let cert = params.signed_by(&self.leaf_key, &self.issuer).map_err(mint_err)?;
        let ck = Arc::new(CertifiedKey::new(vec![cert.der().clone(), self.ca_der.clone()], self.leaf_signing.clone()));
        let mut cache = self.cache.lock().unwrap_or_else(|e| e.into_inner());
        if cache.len() >= LEAF_CACHE_MAX {
            let drop: Vec<String> = cache.keys().take(LEAF_CACHE_MAX / 2).cloned().collect();
            for k in drop {
                cache.remove(&k);
            }
        }
        cache.insert(host.to_string(), ck.clone());
        Ok(ck)
    }
}

fn write_new(path: &Path, bytes: &[u8], mode: u32) -> Result<(), GatewayError> {
    let mut f =
        fs::OpenOptions::new().write(true).create_new(true).mode(mode).open(path).map_err(io_err(path, "create"))?;
    f.write_all(bytes).map_err(io_err(path, "write"))?;
    f.sync_all().map_err(io_err(path, "write"))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ca_is_created_once_and_reloaded() {
        let dir = tempfile::tempdir().unwrap();
        let ca_dir = dir.path().join("ca");
        let a = CertAuthority::load_or_create(&ca_dir).unwrap();
        let mode = fs::metadata(ca_dir.join("ca.key")).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        let b = CertAuthority::load_or_create(&ca_dir).unwrap();
        assert_eq!(a.ca_pem(), b.ca_pem());
        let leaf = b.leaf("api.test.example").unwrap();
        assert_eq!(leaf.cert.len(), 2);
        assert!(Arc::ptr_eq(&leaf, &b.leaf("api.test.example").unwrap()));
    }

    #[test]
    fn group_readable_key_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let ca_dir = dir.path().join("ca");
        CertAuthority::load_or_create(&ca_dir).unwrap();
        fs::set_permissions(ca_dir.join("ca.key"), fs::Permissions::from_mode(0o640)).unwrap();
        let err = CertAuthority::load_or_create(&ca_dir).unwrap_err();
        assert!(err.to_string().contains("chmod 600"), "{err}");
    }
}
