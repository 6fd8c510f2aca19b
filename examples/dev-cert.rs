//! Makes a private CA and a certificate for `localhost`, `127.0.0.1` and `::1` signed by
//! it, for running `ocm-server --tls-cert --tls-key` locally (`scripts/dev-cert.sh` runs
//! this). Never for the open network: the CA key is written next to the certificates.
//!
//! ```text
//! cargo run --example dev-cert -- DIR [NAME...]
//! ```
//!
//! Writes `DIR/ca.pem` (give it to `ocm-client --ca`), `DIR/cert.pem` and `DIR/key.pem`
//! (give them to `ocm-server --tls-cert` and `--tls-key`). Extra NAMEs (host names or IP
//! addresses) are added to the certificate. The tests make theirs the same way.

use std::path::PathBuf;
use std::process::ExitCode;

use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair, KeyUsagePurpose};

fn main() -> ExitCode {
    let mut args = std::env::args_os().skip(1);
    let Some(dir) = args.next().map(PathBuf::from) else {
        eprintln!("usage: dev-cert DIR [NAME...]");
        return ExitCode::from(2);
    };
    let mut names: Vec<String> = ["localhost", "127.0.0.1", "::1"].map(String::from).into();
    names.extend(args.map(|a| a.to_string_lossy().into_owned()));
    match make(&dir, names) {
        Ok(()) => {
            println!(
                "wrote {0}/ca.pem, {0}/cert.pem and {0}/key.pem",
                dir.display()
            );
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("dev-cert: {e}");
            ExitCode::FAILURE
        }
    }
}

fn make(dir: &std::path::Path, names: Vec<String>) -> Result<(), Box<dyn std::error::Error>> {
    std::fs::create_dir_all(dir)?;
    let mut ca = CertificateParams::new(Vec::<String>::new())?;
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca.distinguished_name
        .push(DnType::CommonName, "OCM development CA");
    ca.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    let ca_key = KeyPair::generate()?;
    let ca_cert = ca.self_signed(&ca_key)?;
    let issuer = Issuer::new(ca, ca_key);

    let mut leaf = CertificateParams::new(names)?;
    leaf.distinguished_name
        .push(DnType::CommonName, "localhost");
    let leaf_key = KeyPair::generate()?;
    let leaf_cert = leaf.signed_by(&leaf_key, &issuer)?;

    std::fs::write(dir.join("ca.pem"), ca_cert.pem())?;
    std::fs::write(dir.join("cert.pem"), leaf_cert.pem())?;
    write_private(&dir.join("key.pem"), &leaf_key.serialize_pem())?;
    Ok(())
}

/// Writes a key readable by its owner only.
fn write_private(path: &std::path::Path, text: &str) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)?;
    f.write_all(text.as_bytes())
}
