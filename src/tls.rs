//! Certificates and keys for tonic's rustls transport.
//!
//! The PEM files are read and parsed here, before tonic sees them, so that a
//! missing file, a file with no certificate or a key that is not a key is
//! reported with its path and what was found in it, instead of as a handshake
//! failure minutes later.
//!
//! The throw-away CA of `trainwatch certs` and of the demo is made and written
//! here too ([`EphemeralPki`], [`write_pem_files`]), so both write PEM files
//! the same way: never over an existing file, keys readable by the owner only.

use std::path::{Path, PathBuf};

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tonic::transport::{Certificate, ClientTlsConfig, Identity, ServerTlsConfig};

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("{what} {path}: cannot read: {source}")]
    Read {
        what: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{what} {path}: {problem}")]
    Pem {
        what: &'static str,
        path: PathBuf,
        problem: String,
    },
}

fn read(what: &'static str, path: &Path) -> Result<Vec<u8>, TlsError> {
    std::fs::read(path).map_err(|source| TlsError::Read {
        what,
        path: path.to_path_buf(),
        source,
    })
}

/// Reads a PEM file that must hold at least one certificate.
fn read_certs(what: &'static str, path: &Path) -> Result<Vec<u8>, TlsError> {
    let pem = read(what, path)?;
    let certs: Result<Vec<_>, _> = CertificateDer::pem_slice_iter(&pem).collect();
    match certs {
        Ok(c) if !c.is_empty() => Ok(pem),
        Ok(_) => Err(TlsError::Pem {
            what,
            path: path.to_path_buf(),
            problem: format!(
                "no PEM certificate (\"-----BEGIN CERTIFICATE-----\") in its {} bytes",
                pem.len()
            ),
        }),
        Err(e) => Err(TlsError::Pem {
            what,
            path: path.to_path_buf(),
            problem: format!("malformed PEM: {e}"),
        }),
    }
}

/// Reads a PEM file that must hold a private key.
fn read_key(path: &Path) -> Result<Vec<u8>, TlsError> {
    let what = "private key";
    let pem = read(what, path)?;
    match PrivateKeyDer::from_pem_slice(&pem) {
        Ok(_) => Ok(pem),
        Err(e) => Err(TlsError::Pem {
            what,
            path: path.to_path_buf(),
            problem: format!("no usable PEM private key (PKCS#8, PKCS#1 or SEC1): {e}"),
        }),
    }
}

/// The server's TLS material; `None` in the server's settings means
/// plaintext, which only an explicit `insecure = true` allows.
#[derive(Clone, Debug, PartialEq)]
pub struct ServerTlsFiles {
    pub cert: PathBuf,
    pub key: PathBuf,
    /// When set, clients must present a certificate signed by this CA.
    pub client_ca: Option<PathBuf>,
}

/// The server's TLS configuration; with `client_ca`, clients must present a
/// certificate it signed (mutual TLS).
pub fn server_config(files: &ServerTlsFiles) -> Result<ServerTlsConfig, TlsError> {
    let cert = read_certs("certificate", &files.cert)?;
    let key = read_key(&files.key)?;
    let mut cfg = ServerTlsConfig::new().identity(Identity::from_pem(cert, key));
    if let Some(ca) = &files.client_ca {
        let ca = read_certs("client CA", ca)?;
        cfg = cfg
            .client_ca_root(Certificate::from_pem(ca))
            .client_auth_optional(false);
    }
    Ok(cfg)
}

/// Client-side TLS files: the CA that signed the server's certificate, and
/// optionally this client's own certificate and key for mutual TLS.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct ClientTlsFiles {
    pub ca_cert: Option<PathBuf>,
    pub client_cert: Option<PathBuf>,
    pub client_key: Option<PathBuf>,
}

/// The client's TLS configuration for a server reached as `domain`.
pub fn client_config(files: &ClientTlsFiles, domain: &str) -> Result<ClientTlsConfig, TlsError> {
    let mut cfg = ClientTlsConfig::new().domain_name(domain);
    cfg = match &files.ca_cert {
        Some(ca) => cfg.ca_certificate(Certificate::from_pem(read_certs("CA certificate", ca)?)),
        // A server with a publicly trusted certificate: the system's roots.
        None => cfg.with_native_roots(),
    };
    if let (Some(cert), Some(key)) = (&files.client_cert, &files.client_key) {
        let cert = read_certs("client certificate", cert)?;
        let key = read_key(key)?;
        cfg = cfg.identity(Identity::from_pem(cert, key));
    }
    Ok(cfg)
}

/// A throw-away certificate authority made in memory, with a server
/// certificate for `localhost`/127.0.0.1 and client certificates on demand:
/// what `trainwatch demo` and the tests use instead of files an operator
/// would provision.
pub struct EphemeralPki {
    ca: rcgen::Issuer<'static, rcgen::KeyPair>,
    pub ca_pem: String,
    pub ca_key_pem: String,
    pub server_cert_pem: String,
    pub server_key_pem: String,
}

/// PEM certificate and key of one client.
pub struct ClientIdentityPem {
    pub cert_pem: String,
    pub key_pem: String,
}

impl EphemeralPki {
    /// A CA and a server certificate for `localhost`, 127.0.0.1 and ::1.
    pub fn new(ca_name: &str) -> Result<Self, rcgen::Error> {
        Self::with_server_names(ca_name, &["localhost", "127.0.0.1", "::1"])
    }

    /// A CA and a server certificate for `names` (DNS names or IP addresses).
    pub fn with_server_names(ca_name: &str, names: &[&str]) -> Result<Self, rcgen::Error> {
        use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, KeyPair, KeyUsagePurpose};
        let mut params = CertificateParams::new(Vec::<String>::new())?;
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.distinguished_name.push(DnType::CommonName, ca_name);
        params.key_usages = vec![
            KeyUsagePurpose::DigitalSignature,
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
        ];
        let key = KeyPair::generate()?;
        let ca_pem = params.self_signed(&key)?.pem();
        let ca_key_pem = key.serialize_pem();
        let ca = rcgen::Issuer::new(params, key);
        let (server_cert_pem, server_key_pem) = leaf(
            &ca,
            names.iter().map(|n| n.to_string()).collect(),
            rcgen::ExtendedKeyUsagePurpose::ServerAuth,
        )?;
        Ok(EphemeralPki {
            ca,
            ca_pem,
            ca_key_pem,
            server_cert_pem,
            server_key_pem,
        })
    }

    /// A client certificate signed by this CA, for mutual TLS.
    pub fn client(&self, name: &str) -> Result<ClientIdentityPem, rcgen::Error> {
        let (cert_pem, key_pem) = leaf(
            &self.ca,
            vec![name.to_string()],
            rcgen::ExtendedKeyUsagePurpose::ClientAuth,
        )?;
        Ok(ClientIdentityPem { cert_pem, key_pem })
    }
}

fn leaf(
    ca: &rcgen::Issuer<'static, rcgen::KeyPair>,
    names: Vec<String>,
    usage: rcgen::ExtendedKeyUsagePurpose,
) -> Result<(String, String), rcgen::Error> {
    let mut params = rcgen::CertificateParams::new(names.clone())?;
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, names[0].clone());
    params.use_authority_key_identifier_extension = true;
    params.key_usages = vec![rcgen::KeyUsagePurpose::DigitalSignature];
    params.extended_key_usages = vec![usage];
    let key = rcgen::KeyPair::generate()?;
    let cert = params.signed_by(&key, ca)?;
    Ok((cert.pem(), key.serialize_pem()))
}

/// Where making or writing certificate files failed.
#[derive(Debug, thiserror::Error)]
pub enum PkiError {
    #[error("cannot make certificates for {hosts:?}: {source}")]
    Server {
        hosts: Vec<String>,
        #[source]
        source: rcgen::Error,
    },
    #[error("cannot make a client certificate for {name:?}: {source}")]
    Client {
        name: String,
        #[source]
        source: rcgen::Error,
    },
    #[error("cannot create {}: {source}", path.display())]
    Create {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{} exists; not overwriting certificates", path.display())]
    Exists { path: PathBuf },
    #[error("cannot write {}: {source}", path.display())]
    Write {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// One PEM file to write: its name in the directory, its text and its mode.
pub struct PemFile {
    pub name: String,
    pub pem: String,
    /// 0o600 for private keys; certificates may be 0o644.
    pub mode: u32,
}

/// Mode of a file only its owner may read (private keys).
pub const SECRET_MODE: u32 = 0o600;
/// Mode of a file anyone may read (certificates).
pub const PUBLIC_MODE: u32 = 0o644;

/// Writes `files` into `dir` (created when missing) and returns their paths.
/// Existing files are never overwritten: if any is there, nothing is written.
pub fn write_pem_files(dir: &Path, files: Vec<PemFile>) -> Result<Vec<PathBuf>, PkiError> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    std::fs::create_dir_all(dir).map_err(|source| PkiError::Create {
        path: dir.to_path_buf(),
        source,
    })?;
    if let Some(f) = files.iter().find(|f| dir.join(&f.name).exists()) {
        return Err(PkiError::Exists {
            path: dir.join(&f.name),
        });
    }
    let mut written = Vec::with_capacity(files.len());
    for f in files {
        let path = dir.join(&f.name);
        let mut file = match std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(f.mode)
            .open(&path)
        {
            Ok(file) => file,
            Err(source) => return Err(PkiError::Create { path, source }),
        };
        if let Err(source) = file.write_all(f.pem.as_bytes()) {
            return Err(PkiError::Write { path, source });
        }
        written.push(path);
    }
    Ok(written)
}

/// A new CA with a server certificate for `hosts` and a client certificate
/// per name in `clients`, written into `dir` as `ca.pem`, `ca.key`,
/// `server.pem`, `server.key` and `NAME.pem`/`NAME.key`: what
/// `trainwatch certs` makes.
pub fn write_pki(
    dir: &Path,
    hosts: &[String],
    clients: &[String],
) -> Result<Vec<PathBuf>, PkiError> {
    let names: Vec<&str> = hosts.iter().map(String::as_str).collect();
    let pki = EphemeralPki::with_server_names("trainwatch CA", &names).map_err(|source| {
        PkiError::Server {
            hosts: hosts.to_vec(),
            source,
        }
    })?;
    let file = |name: &str, pem: &str, mode| PemFile {
        name: name.to_string(),
        pem: pem.to_string(),
        mode,
    };
    let mut files = vec![
        file("ca.pem", &pki.ca_pem, PUBLIC_MODE),
        file("ca.key", &pki.ca_key_pem, SECRET_MODE),
        file("server.pem", &pki.server_cert_pem, PUBLIC_MODE),
        file("server.key", &pki.server_key_pem, SECRET_MODE),
    ];
    for name in clients {
        let id = pki.client(name).map_err(|source| PkiError::Client {
            name: name.clone(),
            source,
        })?;
        files.push(file(&format!("{name}.pem"), &id.cert_pem, PUBLIC_MODE));
        files.push(file(&format!("{name}.key"), &id.key_pem, SECRET_MODE));
    }
    write_pem_files(dir, files)
}
