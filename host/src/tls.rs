//! TLS on every network connection ferry opens, with libpq's conventions.
//!
//! A PostgreSQL URL's `sslmode`, `sslrootcert`, `sslcert` and `sslkey` (or
//! `PGSSLMODE`, `PGSSLROOTCERT`, `PGSSLCERT`, `PGSSLKEY`) are resolved here,
//! once, into a [`PgTls`] that the query connections (sqlx), the `COPY`
//! connections and the logical-replication connection (`pgwire-replication`)
//! all apply the same way, so one URL means one security level everywhere.
//! Handshake failures are explained here too ([`explain`]), for PostgreSQL
//! and NATS alike: what went wrong and which setting fixes it.
//!
//! The rules, as libpq has them (PostgreSQL 16's documentation, "SSL Support"):
//! - the default mode is `prefer` (TLS when the server offers it);
//! - `verify-ca` and `verify-full` need the CA that signed the server's
//!   certificate: `sslrootcert=/path/ca.pem`, else `~/.postgresql/root.crt`;
//!   `sslrootcert=system` trusts the operating system's store and then
//!   requires `verify-full` (any public CA could vouch for any host otherwise);
//! - `require` with a root certificate behaves as `verify-ca`;
//! - `allow` tries without TLS first and with TLS if the server refuses.
//!
//! All TLS is rustls (ring): no OpenSSL at build or run time. One difference
//! from libpq remains: sqlx, which makes the query connections, trusts the
//! public web roots beside `sslrootcert`, so `verify-ca` there also accepts
//! a publicly signed certificate; `verify-full` checks the host name too,
//! which is the guarantee to rely on. The replication connection trusts
//! `sslrootcert` only.

use std::fmt;
use std::path::{Path, PathBuf};

use serde::Serialize;

/// libpq's `sslmode`, weakest first.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum SslMode {
    Disable,
    Allow,
    Prefer,
    Require,
    VerifyCa,
    VerifyFull,
}

impl SslMode {
    const ALL: [(&'static str, SslMode); 6] = [
        ("disable", SslMode::Disable),
        ("allow", SslMode::Allow),
        ("prefer", SslMode::Prefer),
        ("require", SslMode::Require),
        ("verify-ca", SslMode::VerifyCa),
        ("verify-full", SslMode::VerifyFull),
    ];

    fn parse(text: &str) -> Result<SslMode, String> {
        SslMode::ALL.iter().find(|(name, _)| *name == text).map(|(_, mode)| *mode).ok_or_else(|| {
            format!("sslmode `{text}` is not one of disable, allow, prefer, require, verify-ca, verify-full")
        })
    }

    /// Whether the server's certificate chain is checked against a CA.
    pub fn verifies_chain(self) -> bool {
        self >= SslMode::VerifyCa
    }
}

impl fmt::Display for SslMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let name = SslMode::ALL.iter().find(|(_, mode)| mode == self).map_or("?", |(name, _)| name);
        f.write_str(name)
    }
}

/// Where the trusted CA certificates come from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RootCert {
    /// `sslrootcert=system`: the operating system's trust store.
    System,
    /// A PEM file of CA certificates.
    File(PathBuf),
}

/// The TLS settings of one PostgreSQL URL, resolved and checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PgTls {
    pub mode: SslMode,
    /// Set whenever `mode` verifies the chain.
    pub root_cert: Option<RootCert>,
    /// A client certificate and its key (`sslcert`, `sslkey`).
    pub client: Option<(PathBuf, PathBuf)>,
}

impl PgTls {
    /// Resolves the URL's parameters, falling back to the `PG*` environment
    /// variables as libpq does. Errors name the parameter and the fix.
    pub fn from_url(raw: &str) -> Result<PgTls, String> {
        PgTls::resolve(raw, |name| std::env::var(name).ok().filter(|v| !v.is_empty()), home_dir())
    }

    /// [`PgTls::from_url`] with the environment and home directory given.
    fn resolve(raw: &str, env: impl Fn(&str) -> Option<String>, home: Option<PathBuf>) -> Result<PgTls, String> {
        let url = url::Url::parse(raw).map_err(|e| format!("not a valid URL: {e}"))?;
        let param = |name: &str, var: &str| -> Option<String> {
            url.query_pairs().find(|(k, _)| k == name).map(|(_, v)| v.into_owned()).or_else(|| env(var))
        };
        let root_cert = match param("sslrootcert", "PGSSLROOTCERT") {
            None => None,
            Some(text) if text == "system" => Some(RootCert::System),
            Some(path) => Some(RootCert::File(existing_file("sslrootcert", &path)?)),
        };
        let mode = match param("sslmode", "PGSSLMODE") {
            Some(text) => SslMode::parse(&text)?,
            None if root_cert == Some(RootCert::System) => SslMode::VerifyFull,
            None => SslMode::Prefer,
        };
        if root_cert == Some(RootCert::System) && mode != SslMode::VerifyFull {
            return Err(format!(
                "sslrootcert=system needs sslmode=verify-full (it is {mode}): with the system's many CAs, \
                 any of them could vouch for any host unless the host name is checked"
            ));
        }
        // libpq: `require` with a root certificate file verifies the chain.
        let mode = if mode == SslMode::Require && matches!(root_cert, Some(RootCert::File(_))) {
            SslMode::VerifyCa
        } else {
            mode
        };
        let root_cert = match root_cert {
            Some(root) => Some(root),
            None if mode.verifies_chain() => {
                let default = home.map(|h| h.join(".postgresql/root.crt")).filter(|p| p.is_file());
                match default {
                    Some(path) => Some(RootCert::File(path)),
                    None => {
                        return Err(format!(
                            "sslmode={mode} needs the CA certificate that signed the server's certificate: add \
                             sslrootcert=/path/to/ca.pem (for a managed database, its provider's CA bundle), or \
                             sslrootcert=system if a public CA signed it"
                        ));
                    }
                }
            }
            None => None,
        };
        let client = match (param("sslcert", "PGSSLCERT"), param("sslkey", "PGSSLKEY")) {
            (None, None) => None,
            (Some(cert), Some(key)) => Some((existing_file("sslcert", &cert)?, existing_file("sslkey", &key)?)),
            (Some(_), None) => {
                return Err("sslcert is set without sslkey: give both (the key of the client certificate)".into());
            }
            (None, Some(_)) => return Err("sslkey is set without sslcert: give both".into()),
        };
        Ok(PgTls { mode, root_cert, client })
    }

    /// The CA file to hand to a driver (the system store's bundle for
    /// `sslrootcert=system`), or `None` when the chain is not verified.
    pub fn root_cert_file(&self) -> Result<Option<PathBuf>, String> {
        match &self.root_cert {
            None => Ok(None),
            Some(RootCert::File(path)) => Ok(Some(path.clone())),
            Some(RootCert::System) => system_bundle().map(Some),
        }
    }

    /// How the connection is protected, for `ferry check`: "verify-full (CA …)".
    pub fn describe(&self) -> String {
        match &self.root_cert {
            Some(RootCert::System) => format!("sslmode={} with the system's trust store", self.mode),
            Some(RootCert::File(path)) => format!("sslmode={}, CA {}", self.mode, path.display()),
            None => format!("sslmode={}", self.mode),
        }
    }
}

/// A certificate or key path that must exist.
fn existing_file(param: &str, path: &str) -> Result<PathBuf, String> {
    let expanded = match path.strip_prefix("~/") {
        Some(rest) => home_dir().map_or_else(|| PathBuf::from(path), |h| h.join(rest)),
        None => PathBuf::from(path),
    };
    if expanded.is_file() {
        Ok(expanded)
    } else {
        Err(format!("{param}={path}: no such file; give the path of a PEM file"))
    }
}

fn home_dir() -> Option<PathBuf> {
    std::env::var_os("HOME").filter(|h| !h.is_empty()).map(PathBuf::from)
}

/// The operating system's CA bundle (the file rustls-native-certs and
/// OpenSSL read; `SSL_CERT_FILE` overrides it).
pub fn system_bundle() -> Result<PathBuf, String> {
    openssl_probe::probe().cert_file.filter(|p| p.is_file()).ok_or_else(|| {
        "sslrootcert=system: this machine has no system CA bundle (install the ca-certificates package, \
         or set SSL_CERT_FILE or sslrootcert=/path/to/bundle.pem)"
            .to_string()
    })
}

/// How one open connection is protected, as the server reports it.
#[derive(Debug, Clone)]
pub struct Transport {
    pub encrypted: bool,
    /// "TLSv1.3 TLS_AES_256_GCM_SHA384" when encrypted.
    pub protocol: Option<String>,
    pub tls: PgTls,
    /// The host is this machine: plaintext crosses no network.
    pub local: bool,
}

impl Transport {
    /// `true` and the reason when a user should be warned: a connection
    /// over the network that is not encrypted, or encrypted to a server
    /// that was not verified.
    pub fn assess(&self) -> (bool, String) {
        let settings = self.tls.describe();
        let (risky, mut text) = if !self.encrypted {
            let why = match self.tls.mode {
                SslMode::Disable => "TLS is off".to_string(),
                mode => format!("sslmode={mode} fell back to plaintext, the server offers no TLS"),
            };
            (true, format!("not encrypted: {why} ({settings})"))
        } else {
            let protocol = self.protocol.as_deref().unwrap_or("TLS");
            match self.tls.mode {
                SslMode::VerifyFull => (
                    false,
                    format!("encrypted ({protocol}); server verified: certificate chain and host name ({settings})"),
                ),
                SslMode::VerifyCa => (
                    false,
                    format!("encrypted ({protocol}); certificate chain verified, host name not checked ({settings})"),
                ),
                _ => (
                    true,
                    format!(
                        "encrypted ({protocol}) but the server is not verified ({settings}): anyone on the path could pose as it"
                    ),
                ),
            }
        };
        if self.local {
            text.push_str("; local connection");
        } else if risky {
            text.push_str("; set sslmode=verify-full and sslrootcert=<the server's CA> (or system)");
        }
        (risky && !self.local, text)
    }
}

/// Whether a host is this machine (loopback, or a Unix socket directory):
/// plaintext there crosses no network.
pub fn is_local_host(host: &str) -> bool {
    let host = host.trim_start_matches('[').trim_end_matches(']');
    host.is_empty()
        || host.starts_with('/')
        || host.eq_ignore_ascii_case("localhost")
        || host.parse::<std::net::IpAddr>().is_ok_and(|ip| ip.is_loopback())
}

/// Makes ring the process's rustls crypto provider. Two providers are
/// compiled in (a dependency enables aws-lc-rs), and rustls refuses to pick
/// one by itself; every TLS connection ferry opens then uses ring.
pub fn install_crypto_provider() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}

/// Turns a TLS handshake failure into its cause and fix, or `None` if the
/// message is not about TLS. `host` is the host ferry dialled; `fix_param`
/// says which settings the fix names.
pub fn explain(message: &str, host: &str, fix_param: FixParam) -> Option<String> {
    let m = message.to_ascii_lowercase();
    let (ca, mode) = match fix_param {
        FixParam::Postgres => ("sslrootcert=", "sslmode="),
        FixParam::Nats => ("--nats-ca ", "a nats:// URL "),
    };
    let explained = if m.contains("unknownissuer") || m.contains("unknown issuer") || m.contains("badsignature") {
        format!(
            "the server's certificate is not signed by a CA ferry was told to trust; fix: {ca}<the CA that \
             signed it> (a managed database's CA bundle, or `system` for a public CA)"
        )
    } else if m.contains("notvalidforname") || m.contains("not valid for name") {
        let other = match fix_param {
            FixParam::Postgres => ", or sslmode=verify-ca to check the chain but not the name",
            FixParam::Nats => "",
        };
        format!(
            "the server's certificate is not valid for the host name `{host}`; fix: connect with a host name \
             the certificate names{other}"
        )
    } else if m.contains("expired") {
        "the server's certificate has expired; fix: renew it on the server (an expired certificate is never accepted)"
            .to_string()
    } else if m.contains("notvalidyet") || m.contains("not valid yet") {
        "the server's certificate is not valid yet; fix: check the clocks of this machine and the server".to_string()
    } else if m.contains("server does not support tls") || m.contains("sslrequest rejected") {
        format!(
            "the server does not accept TLS (ssl = off) but {mode}asks for it; fix: turn ssl on at the server, or \
             {mode}prefer (or disable) if the network between you is trusted"
        )
    } else if m.contains("no encryption") && m.contains("pg_hba") {
        format!("the server accepts only encrypted connections from here; fix: {mode}verify-full (or require)")
    } else if m.contains("certificate required")
        || m.contains("certificaterequired")
        || m.contains("requires a valid client certificate")
    {
        "the server asks for a client certificate; fix: sslcert=<client certificate> and sslkey=<its key>".to_string()
    } else if m.contains("tls") && (m.contains("handshake") || m.contains("certificate")) {
        format!("the TLS handshake failed; check {ca}and {mode}")
    } else {
        return None;
    };
    Some(explained)
}

/// Which settings an explanation names.
#[derive(Debug, Clone, Copy)]
pub enum FixParam {
    Postgres,
    Nats,
}

/// The host of a URL (for explanations and the local check).
pub fn url_host(raw: &str) -> String {
    url::Url::parse(raw).ok().and_then(|u| u.host_str().map(str::to_string)).unwrap_or_default()
}

/// `true` if `path` holds at least one PEM certificate (a `--nats-ca` check).
pub fn check_pem_file(param: &str, path: &Path) -> Result<(), String> {
    match std::fs::read_to_string(path) {
        Ok(text) if text.contains("-----BEGIN CERTIFICATE-----") => Ok(()),
        Ok(_) => Err(format!("{param} {}: no PEM certificate in the file", path.display())),
        Err(e) => Err(format!("{param} {}: {e}", path.display())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn resolve(url: &str, env: &[(&str, &str)]) -> Result<PgTls, String> {
        let env: Vec<(String, String)> = env.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        PgTls::resolve(url, |name| env.iter().find(|(k, _)| k == name).map(|(_, v)| v.clone()), None)
    }

    fn ca_file() -> (tempfile::NamedTempFile, String) {
        let file = tempfile::NamedTempFile::new().unwrap();
        std::fs::write(file.path(), "-----BEGIN CERTIFICATE-----\n").unwrap();
        let path = file.path().display().to_string();
        (file, path)
    }

    #[test]
    fn default_is_prefer_and_env_supplies_the_mode() {
        assert_eq!(resolve("postgres://h/db", &[]).unwrap().mode, SslMode::Prefer);
        assert_eq!(resolve("postgres://h/db", &[("PGSSLMODE", "disable")]).unwrap().mode, SslMode::Disable);
        // The URL wins over the environment.
        let t = resolve("postgres://h/db?sslmode=require", &[("PGSSLMODE", "disable")]).unwrap();
        assert_eq!(t.mode, SslMode::Require);
        assert!(resolve("postgres://h/db?sslmode=on", &[]).unwrap_err().contains("not one of"));
    }

    #[test]
    fn verification_needs_a_root_certificate() {
        let e = resolve("postgres://h/db?sslmode=verify-full", &[]).unwrap_err();
        assert!(e.contains("sslrootcert=/path/to/ca.pem") && e.contains("sslrootcert=system"), "{e}");
        let (_f, ca) = ca_file();
        let t = resolve(&format!("postgres://h/db?sslmode=verify-ca&sslrootcert={ca}"), &[]).unwrap();
        assert_eq!(t.root_cert, Some(RootCert::File(ca.clone().into())));
        assert!(
            resolve("postgres://h/db?sslmode=verify-ca&sslrootcert=/nope.pem", &[])
                .unwrap_err()
                .contains("no such file")
        );
    }

    #[test]
    fn require_with_a_root_certificate_verifies_the_chain() {
        let (_f, ca) = ca_file();
        let t = resolve(&format!("postgres://h/db?sslmode=require&sslrootcert={ca}"), &[]).unwrap();
        assert_eq!(t.mode, SslMode::VerifyCa);
        let t = resolve("postgres://h/db?sslmode=require", &[("PGSSLROOTCERT", &ca)]).unwrap();
        assert_eq!(t.mode, SslMode::VerifyCa);
    }

    #[test]
    fn system_roots_mean_verify_full() {
        let t = resolve("postgres://h/db?sslrootcert=system", &[]).unwrap();
        assert_eq!((t.mode, t.root_cert), (SslMode::VerifyFull, Some(RootCert::System)));
        let e = resolve("postgres://h/db?sslrootcert=system&sslmode=require", &[]).unwrap_err();
        assert!(e.contains("needs sslmode=verify-full"), "{e}");
    }

    #[test]
    fn client_certificates_come_in_pairs() {
        let (_f, cert) = ca_file();
        assert!(resolve(&format!("postgres://h/db?sslcert={cert}"), &[]).unwrap_err().contains("without sslkey"));
        let t = resolve(&format!("postgres://h/db?sslcert={cert}&sslkey={cert}"), &[]).unwrap();
        assert!(t.client.is_some());
    }

    #[test]
    fn network_connections_without_verification_warn() {
        let tls = |mode| PgTls { mode, root_cert: None, client: None };
        let t = |encrypted, mode, local| Transport { encrypted, protocol: None, tls: tls(mode), local }.assess();
        assert!(t(false, SslMode::Prefer, false).0 && t(false, SslMode::Prefer, false).1.contains("fell back"));
        assert!(t(false, SslMode::Disable, false).0);
        assert!(t(true, SslMode::Require, false).0 && t(true, SslMode::Require, false).1.contains("not verified"));
        assert!(!t(true, SslMode::VerifyFull, false).0);
        assert!(!t(true, SslMode::VerifyCa, false).0);
        // On this machine, plaintext is no risk.
        assert!(!t(false, SslMode::Prefer, true).0);
    }

    #[test]
    fn local_hosts() {
        for h in ["localhost", "127.0.0.1", "[::1]", "/var/run/postgresql", ""] {
            assert!(is_local_host(h), "{h}");
        }
        for h in ["db.example.com", "10.0.0.5", "[2001:db8::1]"] {
            assert!(!is_local_host(h), "{h}");
        }
    }

    #[test]
    fn handshake_failures_are_explained() {
        let e = |m: &str| explain(m, "db", FixParam::Postgres).unwrap_or_default();
        assert!(e("invalid peer certificate: UnknownIssuer").contains("sslrootcert="));
        assert!(e("invalid peer certificate: certificate not valid for name \"db\"").contains("verify-ca"));
        assert!(e("invalid peer certificate: certificate expired: verification time 1").contains("expired"));
        assert!(e("error with TLS: server does not support TLS").contains("ssl = off"));
        assert_eq!(explain("password authentication failed", "db", FixParam::Postgres), None);
    }
}
